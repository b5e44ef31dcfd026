#!/usr/bin/env bash
# PostgreSQL for development and tests, configured from DATABASE_URL.
# usage: infra/services/postgres.sh {start|stop|status|logs [-f]}
# A server that already answers at the URL's host:port is used as it is; otherwise a project-local
# one is created under $ATLAS_STATE_DIR/postgres and only that one is ever stopped.
set -euo pipefail
SERVICE=postgres
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATABASE_URL="${DATABASE_URL:-postgresql://atlas:atlas@127.0.0.1:5433/atlas}"
# postgres[ql]://user:password@host[:port]/dbname[?options]
if [[ ! "$DATABASE_URL" =~ ^postgres(ql)?://([^:@/]+)(:([^@/]*))?@([^:/?]+)(:([0-9]+))?/([^?]+) ]]; then
  die "cannot parse DATABASE_URL='$DATABASE_URL' (expected postgresql://user:password@host:port/dbname)"
fi
DB_USER="$(urldecode "${BASH_REMATCH[2]}")"
DB_PASSWORD="$(urldecode "${BASH_REMATCH[4]}")"
DB_HOST="${BASH_REMATCH[5]}"
DB_PORT="${BASH_REMATCH[7]:-5432}"
DB_NAME="$(urldecode "${BASH_REMATCH[8]}")"

PG_DIR="$ATLAS_STATE_DIR/postgres"
DATA="$PG_DIR/data"
SOCK="$PG_DIR/run"          # unix socket directory of our server
LOG="$STATE_LOG_DIR/postgres.log"

# Server binaries (initdb, pg_ctl, ...): pg_config's bindir, else the newest /usr/lib/postgresql/*/bin.
pg_bindir() {
  local d
  d="$(pg_config --bindir 2>/dev/null || true)"
  [[ -x "$d/initdb" ]] || d="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  [[ -n "$d" && -x "$d/initdb" ]] && echo "$d"
}
BIN="$(pg_bindir || true)"

# initdb, pg_ctl and postgres refuse to run as root: as root, run them as the 'postgres' system user.
as_pg() {
  if is_root; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}
ours_running() { [[ -n "$BIN" && -f "$DATA/postmaster.pid" ]] && as_pg "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; }
answers() {
  if [[ -n "$BIN" ]]; then "$BIN/pg_isready" -q -h "$DB_HOST" -p "$DB_PORT"; else port_open "$DB_HOST" "$DB_PORT"; fi
}
url_works() { "${BIN:+$BIN/}psql" "$DATABASE_URL" -X -q -t -c 'select 1' >/dev/null 2>&1; }

# ensure_role_db SOCKET_DIR: as superuser over a unix socket (peer auth), create or update the
# role from the URL and create its database. Names and password are quoted by format().
ensure_role_db() {
  as_pg "${BIN:+$BIN/}psql" -X -q -v ON_ERROR_STOP=1 -h "$1" -p "$DB_PORT" -d postgres \
    -v user="$DB_USER" -v pass="$DB_PASSWORD" -v db="$DB_NAME" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', :'user', :'pass')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'user', :'pass') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
-- The benchmarks run CHECKPOINT before each measured row, so that none lands inside one
-- (PostgreSQL 15 and later; a performance command only, it reads and changes no data).
SELECT format('GRANT pg_checkpoint TO %I', :'user') FROM pg_roles r
  WHERE r.rolname = 'pg_checkpoint' AND NOT EXISTS (
    SELECT 1 FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member
    WHERE m.roleid = r.oid AND u.rolname = :'user') \gexec
SQL
}

# A server we did not start: check the URL works; if not, try to create role and database as the
# local superuser over the usual socket directories (works for Debian's packaged server as root).
use_existing() {
  say "a server already answers at $DB_HOST:$DB_PORT (not started by this script): using it"
  url_works && { say "connected as $DB_USER to $DB_NAME"; return; }
  local dir
  for dir in /var/run/postgresql /tmp; do
    if ensure_role_db "$dir" >/dev/null 2>&1 && url_works; then
      say "created/updated role '$DB_USER' and database '$DB_NAME' on it"; return
    fi
  done
  die "cannot connect with DATABASE_URL and cannot create the role as superuser. On that server run:
  CREATE ROLE \"$DB_USER\" LOGIN CREATEDB PASSWORD '...';  CREATE DATABASE \"$DB_NAME\" OWNER \"$DB_USER\";
or point DATABASE_URL at another port to get a project-local server."
}

# Give the postgres system user what it needs to reach our state dir.
prepare_dirs() {
  mkdir -p "$PG_DIR" "$SOCK"
  touch "$LOG"
  (( ${#SOCK} < 90 )) || die "socket path $SOCK is too long for a unix socket: set a shorter ATLAS_STATE_DIR"
  is_root || return 0
  id postgres >/dev/null 2>&1 || die "the 'postgres' system user is missing (install the 'postgresql' package)"
  chown postgres:postgres "$PG_DIR" "$SOCK" "$LOG"
  local d="" part parts
  IFS=/ read -ra parts <<< "${PG_DIR#/}"
  for part in "${parts[@]}"; do
    d="$d/$part"
    if ! runuser -u postgres -- test -x "$d"; then
      chmod o+x "$d"
      say "added search permission (o+x) to $d so the postgres user can reach its data"
    fi
  done
}

start() {
  if ours_running; then
    say "already running (ours, data $DATA)"
    ensure_role_db "$SOCK"
    return
  fi
  if answers; then use_existing; return; fi
  [[ -n "$DB_PASSWORD" ]] || die "DATABASE_URL has no password: the local server uses password auth over TCP"

  [[ -n "$BIN" ]] || { apt_install postgresql; BIN="$(pg_bindir)" || die "PostgreSQL binaries still not found"; }
  prepare_dirs
  if [[ ! -f "$DATA/PG_VERSION" ]]; then
    say "initdb $DATA"
    # peer auth on the unix socket (superuser = the OS user), passwords on TCP.
    as_pg "$BIN/initdb" -D "$DATA" -E UTF8 --locale=C.UTF-8 --auth-local=peer --auth-host=scram-sha-256 \
      >>"$LOG" 2>&1 || { show_log "$LOG"; die "initdb failed"; }
    echo "include_if_exists = 'atlas.conf'" >> "$DATA/postgresql.conf"
  fi
  # Rewritten on every start so a changed DATABASE_URL host/port takes effect.
  cat > "$DATA/atlas.conf" <<EOF
# Written by infra/services/postgres.sh from DATABASE_URL on every start; edits are lost.
listen_addresses = '$DB_HOST'
port = $DB_PORT
unix_socket_directories = '$SOCK'
unix_socket_permissions = 0700
max_connections = 200
password_encryption = 'scram-sha-256'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  if is_root; then chown postgres:postgres "$DATA/atlas.conf"; fi

  say "starting local server on $DB_HOST:$DB_PORT (data $DATA, log $LOG)"
  if ! as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 -s start; then
    TAIL_LINES=30 show_log "$LOG" >&2
    die "the server did not start"
  fi
  ensure_role_db "$SOCK"
  url_works || die "started, but cannot connect with DATABASE_URL"
  say "ready: $DB_USER@$DB_HOST:$DB_PORT/$DB_NAME"
}

stop() {
  if ours_running; then
    say "stopping local server (data $DATA) ..."
    as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 -s stop
    say "stopped"
  elif answers; then
    say "the server at $DB_HOST:$DB_PORT was not started by this script: leaving it alone"
  else
    say "not running"
  fi
}

status() {
  local state
  if ours_running; then state="running (ours, pid $(head -n 1 "$DATA/postmaster.pid"))"
  else state="not running (no server of ours)"; fi
  if answers; then say "$state; answers at $DB_HOST:$DB_PORT"
  else say "$state; no answer at $DB_HOST:$DB_PORT"; return 3; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  logs) show_log "$LOG" "${2:-}" ;;
  *) echo "usage: $0 {start|stop|status|logs [-f]}" >&2; exit 2 ;;
esac
