#!/usr/bin/env bash
# Install the Debian packages Atlas's stack and tests use, when missing.
# PostgreSQL and Redis are the services; prometheus brings promtool; kcat is a non-Python
# Kafka client used to test the payment contract; wrk is the HTTP benchmark's load generator.
# As non-root, say what is missing and stop.
set -euo pipefail

declare -A need=(
  [postgresql]="pg_ctl initdb"
  [redis-server]="redis-server"
  [redis-tools]="redis-cli"
  [prometheus]="promtool"
  [kcat]="kcat"
  [wrk]="wrk"
  [chromium]="chromium"
)

have() { command -v "$1" >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/"$1" >/dev/null 2>&1; }

missing=()
for pkg in "${!need[@]}"; do
  for cmd in ${need[$pkg]}; do
    have "$cmd" || { missing+=("$pkg"); break; }
  done
done
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  missing+=(openjdk-17-jre-headless maven)
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
