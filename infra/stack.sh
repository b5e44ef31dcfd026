#!/usr/bin/env bash
# Local service stack without Docker: PostgreSQL, Redis and Kafka as plain processes.
# usage: infra/stack.sh {up|down|status|logs [-f]} [postgres|redis|kafka ...]
# Settings come from the environment, then from <repo>/.env (DATABASE_URL, REDIS_URL, KAFKA_HOST,
# KAFKA_PORT, KAFKA_CONTROLLER_PORT, ATLAS_STATE_DIR); state and logs live in $ATLAS_STATE_DIR.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/services/common.sh"   # also loads <repo>/.env

ALL=(postgres redis kafka)   # start order; Kafka last because it is the slowest
cmd="${1:-}"
if [[ $# -gt 0 ]]; then shift; fi
follow=""
if [[ "${1:-}" == "-f" ]]; then follow="-f"; shift; fi

# Requested services in canonical order (all by default).
services=()
for s in "$@"; do [[ " ${ALL[*]} " == *" $s "* ]] || die "unknown service '$s' (known: ${ALL[*]})"; done
for s in "${ALL[@]}"; do
  if [[ $# -eq 0 || " $* " == *" $s "* ]]; then services+=("$s"); fi
done

run() { "$INFRA_DIR/services/$1.sh" "${@:2}"; }

case "$cmd" in
  up)
    for s in "${services[@]}"; do run "$s" start; done
    say "up: ${services[*]} (state in $ATLAS_STATE_DIR)" ;;
  down)
    for ((i = ${#services[@]} - 1; i >= 0; i--)); do run "${services[i]}" stop; done ;;
  status)
    rc=0
    for s in "${services[@]}"; do run "$s" status || rc=1; done
    exit "$rc" ;;
  logs)
    files=()
    for s in "${services[@]}"; do
      if [[ -f "$STATE_LOG_DIR/$s.log" ]]; then files+=("$STATE_LOG_DIR/$s.log"); fi
    done
    [[ ${#files[@]} -gt 0 ]] || die "no logs yet in $STATE_LOG_DIR"
    if [[ -n "$follow" ]]; then tail -n 20 -F "${files[@]}"; else tail -n "${TAIL_LINES:-30}" "${files[@]}"; fi ;;
  *)
    echo "usage: $0 {up|down|status|logs [-f]} [postgres|redis|kafka ...]" >&2; exit 2 ;;
esac
