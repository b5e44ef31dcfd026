# shellcheck shell=bash
# Shared helpers for infra/services/*.sh and infra/stack.sh (sourced, not run).
# Sets REPO_ROOT, INFRA_DIR, ATLAS_STATE_DIR (absolute), STATE_LOG_DIR, STATE_RUN_DIR.

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "$INFRA_DIR/.." && pwd)"

say() { printf '[%s] %s\n' "${SERVICE:-stack}" "$*"; }
die() { printf '[%s] ERROR: %s\n' "${SERVICE:-stack}" "$*" >&2; exit 1; }

# Load <repo>/.env: KEY=VALUE lines (optionally "export KEY=VALUE", optionally quoted).
# Variables already set in the environment win. Values are taken literally, never eval'ed.
load_dotenv() {
  local file="$REPO_ROOT/.env" line key val
  [[ -f "$file" ]] || return 0
  while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line%$'\r'}"
    [[ "$line" =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
    key="${BASH_REMATCH[2]}" val="${BASH_REMATCH[3]}"
    if [[ "$val" =~ ^\"(.*)\"[[:space:]]*$ || "$val" =~ ^\'(.*)\'[[:space:]]*$ ]]; then
      val="${BASH_REMATCH[1]}"
    fi
    [[ -n "${!key+x}" ]] || export "$key=$val"
  done < "$file"
}
load_dotenv

ATLAS_STATE_DIR="${ATLAS_STATE_DIR:-$REPO_ROOT/.local}"
[[ "$ATLAS_STATE_DIR" = /* ]] || ATLAS_STATE_DIR="$REPO_ROOT/$ATLAS_STATE_DIR"
export ATLAS_STATE_DIR
STATE_LOG_DIR="$ATLAS_STATE_DIR/log"
STATE_RUN_DIR="$ATLAS_STATE_DIR/run"
mkdir -p "$STATE_LOG_DIR" "$STATE_RUN_DIR"

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# Install Debian packages when root; otherwise tell the user what is missing.
apt_install() {
  is_root || die "'$*' is not installed and we are not root: install the Debian package(s) '$*' (sudo apt-get install $*)."
  command -v apt-get >/dev/null || die "'$*' is not installed and apt-get is not available: install it by hand."
  say "installing $* with apt-get ..."
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# pid_alive PID PATTERN: the process exists and its command line contains PATTERN
# (guards against a stale pid file whose number now belongs to another process).
pid_alive() {
  [[ -n "$1" && -r "/proc/$1/cmdline" ]] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -qF -- "$2"
}

# Print the last lines of a log file (used by `logs` and on start failures).
show_log() {
  local file="$1" follow="${2:-}"
  [[ -f "$file" ]] || { say "no log yet at $file"; return 0; }
  if [[ "$follow" == "-f" ]]; then tail -n 50 -F "$file"; else tail -n "${TAIL_LINES:-50}" "$file"; fi
}

# port_open HOST PORT: something accepts TCP connections there.
# shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash
port_open() { timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null; }

# Decode %XX escapes of a URL part (e.g. a password with special characters).
urldecode() { printf '%b' "${1//%/\\x}"; }
