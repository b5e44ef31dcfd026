#!/usr/bin/env bash
# Redis for development and tests, configured from REDIS_URL.
# usage: infra/services/redis.sh {start|stop|status|logs [-f]}
# A server that already answers at the URL's host:port is used as it is; otherwise a project-local
# one is started (state in $ATLAS_STATE_DIR/redis) and only that one is ever stopped.
set -euo pipefail
SERVICE=redis
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6380/0}"
# redis://[[user]:password@]host[:port][/db]
if [[ ! "$REDIS_URL" =~ ^redis://(([^:@/]*)(:([^@/]*))?@)?([^:/?]+)(:([0-9]+))?(/[0-9]*)?([?].*)?$ ]]; then
  die "cannot parse REDIS_URL='$REDIS_URL' (expected redis://host:port/db)"
fi
REDIS_HOST="${BASH_REMATCH[5]}"
REDIS_PORT="${BASH_REMATCH[7]:-6379}"
REDIS_PASSWORD="$(urldecode "${BASH_REMATCH[4]}")"
[[ -z "$REDIS_PASSWORD" ]] || export REDISCLI_AUTH="$REDIS_PASSWORD"   # redis-cli reads it; not shown in ps

REDIS_DIR="$ATLAS_STATE_DIR/redis"
CONF="$REDIS_DIR/redis.conf"
LOG="$STATE_LOG_DIR/redis.log"
PIDFILE="$STATE_RUN_DIR/redis.pid"

cli() { redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" "$@"; }
answers() {
  if command -v redis-cli >/dev/null; then [[ "$(cli ping 2>/dev/null)" == PONG ]]
  else port_open "$REDIS_HOST" "$REDIS_PORT"; fi
}
our_pid() { local pid; pid="$(cat "$PIDFILE" 2>/dev/null)" || return 1; pid_alive "$pid" redis-server && echo "$pid"; }

start() {
  local pid i
  if pid="$(our_pid)"; then say "already running (ours, pid $pid)"; return; fi
  if answers; then say "a server already answers at $REDIS_HOST:$REDIS_PORT (not started by this script): using it"; return; fi
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then apt_install redis-server; fi

  mkdir -p "$REDIS_DIR"
  # Rewritten on every start from REDIS_URL. No persistence: this is a disposable dev/test cache.
  cat > "$CONF" <<EOF
# Written by infra/services/redis.sh from REDIS_URL on every start; edits are lost.
bind $REDIS_HOST
port $REDIS_PORT
daemonize yes
pidfile "$PIDFILE"
dir "$REDIS_DIR"
logfile "$LOG"
appendonly no
save ""
EOF
  [[ -z "$REDIS_PASSWORD" ]] || echo "requirepass \"$REDIS_PASSWORD\"" >> "$CONF"
  chmod 600 "$CONF"

  say "starting local server on $REDIS_HOST:$REDIS_PORT (log $LOG)"
  redis-server "$CONF" >/dev/null || { show_log "$LOG" >&2; die "redis-server failed to start"; }
  for ((i = 0; i < 50; i++)); do answers && break; sleep 0.2; done
  answers || { TAIL_LINES=20 show_log "$LOG" >&2; die "redis does not answer on $REDIS_HOST:$REDIS_PORT"; }
  say "ready (pid $(cat "$PIDFILE" 2>/dev/null || echo '?'))"
}

stop() {
  local pid i
  if ! pid="$(our_pid)"; then
    rm -f "$PIDFILE"
    if answers; then say "the server at $REDIS_HOST:$REDIS_PORT was not started by this script: leaving it alone"
    else say "not running"; fi
    return
  fi
  say "stopping local server (pid $pid) ..."
  # Only send SHUTDOWN if the server on this port really is our process (REDIS_URL may have changed).
  if [[ "$(cli info server 2>/dev/null | tr -d '\r' | sed -n 's/^process_id://p')" == "$pid" ]]; then
    cli shutdown nosave >/dev/null 2>&1 || true
  else
    kill -TERM "$pid" 2>/dev/null || true
  fi
  for ((i = 0; i < 50; i++)); do pid_alive "$pid" redis-server || break; sleep 0.2; done
  if pid_alive "$pid" redis-server; then say "still running after 10 s: sending SIGKILL to pid $pid"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$PIDFILE"
  say "stopped"
}

status() {
  local pid state
  if pid="$(our_pid)"; then state="running (ours, pid $pid)"; else state="not running (no server of ours)"; fi
  if answers; then say "$state; answers PONG at $REDIS_HOST:$REDIS_PORT"
  else say "$state; no answer at $REDIS_HOST:$REDIS_PORT"; return 3; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  logs) show_log "$LOG" "${2:-}" ;;
  *) echo "usage: $0 {start|stop|status|logs [-f]}" >&2; exit 2 ;;
esac
