#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker + controller in one JVM) run from Maven Central jars.
# usage: infra/services/kafka.sh {fetch|fetch-tools|start|stop|status|logs [-f]}
# env: KAFKA_HOST (127.0.0.1), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093),
#      KAFKA_HEAP (512m), KAFKA_START_TIMEOUT (90), ATLAS_STATE_DIR (<repo>/.local),
#      KAFKA_LIBS_DIR (the broker's jars; $ATLAS_STATE_DIR/kafka/libs: a test's own broker reuses
#      the stack's jars through it)
set -euo pipefail
SERVICE=kafka
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KAFKA_HOST="${KAFKA_HOST:-127.0.0.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_DIR="$ATLAS_STATE_DIR/kafka"
LIBS="${KAFKA_LIBS_DIR:-$KAFKA_DIR/libs}"
TOOLS_LIBS="$KAFKA_DIR/tools-libs"
DATA="$KAFKA_DIR/data"
CONF="$KAFKA_DIR/server.properties"
LOG="$STATE_LOG_DIR/kafka.log"
PIDFILE="$STATE_RUN_DIR/kafka.pid"
POM="$INFRA_DIR/kafka/pom.xml"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
# java.io.tmpdir in the state dir: zstd/snappy/lz4 unpack native libraries there (works if /tmp is noexec).
JVM_OPTS=(-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true -Djava.io.tmpdir="$KAFKA_DIR/tmp"
  -Dkafka.logs.dir="$STATE_LOG_DIR" -Dlog4j2.configurationFile="$INFRA_DIR/kafka/log4j2.properties")

answers() { python3 "$INFRA_DIR/kafka/wait_ready.py" "$KAFKA_HOST" "$KAFKA_PORT" --timeout "${1:-0}" "${@:2}"; }
our_pid() { local pid; pid="$(cat "$PIDFILE" 2>/dev/null)" || return 1; pid_alive "$pid" kafka.Kafka && echo "$pid"; }

# fetch_into DIR [mvn args]: copy the jars once. The stamp (pom checksum + args) is written last,
# so a changed pom or an interrupted download fetches again into a clean folder.
fetch_into() {
  local dir="$1" stamp out; shift
  stamp="$(sha256sum "$POM" | cut -d' ' -f1) $*"
  if [[ "$(cat "$dir/.fetched" 2>/dev/null)" == "$stamp" ]]; then say "jars already present in $dir"; return; fi
  command -v "$JAVA" >/dev/null || apt_install default-jre-headless
  command -v mvn >/dev/null || apt_install maven
  if [[ "$dir" == "$LIBS" ]] && our_pid >/dev/null; then die "the broker runs from $dir: stop it before fetching again"; fi
  say "fetching Kafka jars with Maven into $dir ..."
  rm -rf "$dir"
  # Output is kept for errors only (Maven 3.8 prints stray colour codes even with -q -B).
  if ! out="$(mvn -q -B -f "$POM" "$@" dependency:copy-dependencies -Dkafka.libs.dir="$dir" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "mvn could not fetch the Kafka jars"
  fi
  echo "$stamp" > "$dir/.fetched"
}

start() {
  local pid rc=0 msg
  if pid="$(our_pid)"; then
    msg="$(answers "${KAFKA_START_TIMEOUT:-90}" --pid "$pid" 2>&1)" || die "pid $pid runs but does not answer ($msg); see $LOG"
    say "already running (ours, pid $pid); $msg"
    return
  fi
  msg="$(answers 0 2>&1)" || rc=$?
  case $rc in
    0) say "a broker $msg, not started by this script: using it"; return ;;
    2) die "something that is not a ready Kafka broker listens on $KAFKA_HOST:$KAFKA_PORT ($msg)" ;;
  esac

  fetch_into "$LIBS"
  mkdir -p "$DATA" "$KAFKA_DIR/tmp"
  sed -e "s|@KAFKA_HOST@|$KAFKA_HOST|g" -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
      -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" -e "s|@KAFKA_DATA_DIR@|$DATA|g" \
      "$INFRA_DIR/kafka/server.properties.in" > "$CONF"

  # Format the log dir only once: the broker refuses an unformatted dir, and formatting again
  # would need the same cluster id (--ignore-formatted also keeps an existing dir untouched).
  if [[ ! -f "$DATA/meta.properties" ]]; then
    local cluster_id
    # A random id as Kafka's own Uuid.randomUuid() makes it: base64url of 16 random bytes, never
    # starting with '-' (StorageTool's argument parser would read such an id as an option).
    cluster_id="$(python3 -c '
import base64, uuid
while (cid := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
    pass
print(cid)')"
    say "formatting $DATA (cluster id $cluster_id)"
    "$JAVA" -Xmx256m "${JVM_OPTS[@]}" -cp "$LIBS/*" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$CONF" --ignore-formatted >>"$LOG" 2>&1 || { show_log "$LOG"; die "formatting failed"; }
  fi

  say "starting broker on $KAFKA_HOST:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT), log $LOG"
  # setsid: the JVM gets its own session and process group, so it outlives this shell and its Ctrl-C.
  setsid "$JAVA" -Xms"${KAFKA_HEAP:-512m}" -Xmx"${KAFKA_HEAP:-512m}" "${JVM_OPTS[@]}" -cp "$LIBS/*" kafka.Kafka "$CONF" >>"$LOG" 2>&1 </dev/null &
  pid=$!
  echo "$pid" > "$PIDFILE"
  if msg="$(answers "${KAFKA_START_TIMEOUT:-90}" --pid "$pid" 2>&1)"; then
    say "ready (pid $pid); $msg"
  else
    say "broker not ready: $msg; last log lines (stack frames left out):" >&2
    grep -v '^[[:space:]]' "$LOG" | tail -n 25 >&2
    stop
    exit 1
  fi
}

stop() {
  local pid i
  if ! pid="$(our_pid)"; then
    rm -f "$PIDFILE"
    if answers 0 >/dev/null 2>&1; then say "a broker answers on $KAFKA_HOST:$KAFKA_PORT but was not started by this script: leaving it alone"
    else say "not running"; fi
    return
  fi
  say "stopping broker (pid $pid) ..."
  kill -TERM "$pid" 2>/dev/null || true   # controlled shutdown, flushes the logs
  for ((i = 0; i < 60; i++)); do pid_alive "$pid" kafka.Kafka || break; sleep 0.5; done
  if pid_alive "$pid" kafka.Kafka; then
    say "still running after 30 s: sending SIGKILL to pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
  say "stopped"
}

status() {
  local pid state msg rc=0
  if pid="$(our_pid)"; then state="running (ours, pid $pid)"; else state="not running (no broker of ours)"; fi
  msg="$(answers 0 2>&1)" || rc=$?
  say "$state; $([[ $rc -eq 0 ]] && echo "$msg" || echo "no answer: $msg")"
  [[ $rc -eq 0 ]] || return 3
}

case "${1:-}" in
  fetch) fetch_into "$LIBS" ;;
  # kafka-tools (ConsumerGroupCommand, TopicCommand) with its own classpath; not needed to run the broker:
  #   java -cp "$ATLAS_STATE_DIR/kafka/tools-libs/*" org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ...
  fetch-tools) fetch_into "$TOOLS_LIBS" -P tools ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  logs) show_log "$LOG" "${2:-}" ;;
  *) echo "usage: $0 {fetch|fetch-tools|start|stop|status|logs [-f]}" >&2; exit 2 ;;
esac
