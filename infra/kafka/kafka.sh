#!/usr/bin/env bash
# A single-node Kafka (KRaft, broker+controller in one JVM) on 127.0.0.1, without Docker.
#
#   kafka.sh fetch            download the broker's jars from Maven Central (once)
#   kafka.sh start            fetch if needed, format storage once, start, wait until ready;
#                             prints the bootstrap address (127.0.0.1:PORT) as its last line
#   kafka.sh stop [--wipe]    stop the broker; --wipe also deletes its data dir
#   kafka.sh status           exit 0 and print the address while it runs, exit 1 otherwise
#
# A second listener, SASL_PLAINTEXT with the PLAIN mechanism on KAFKA_SASL_PORT (KAFKA_PORT+2),
# takes the test user `guard` with the password `guard-secret`: the secrets tests log in there.
#
# Environment: KAFKA_VERSION, KAFKA_PORT (19092), KAFKA_CONTROLLER_PORT (19093), KAFKA_SASL_PORT,
# LINEAGE_GUARD_CACHE (~/.cache/lineage-guard), KAFKA_DATA_DIR (<cache>/kafka-data),
# KAFKA_HEAP_OPTS (-Xmx512m), KAFKA_START_TIMEOUT (90 s), PYTHON (python3, with confluent-kafka).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="${KAFKA_VERSION:-4.3.1}"   # keep in step with pom.xml and ../compose.yaml
port="${KAFKA_PORT:-19092}"
controller_port="${KAFKA_CONTROLLER_PORT:-19093}"
sasl_port="${KAFKA_SASL_PORT:-$((port + 2))}"
cache="${LINEAGE_GUARD_CACHE:-$HOME/.cache/lineage-guard}"
libs="$cache/kafka-$version/libs"
data="${KAFKA_DATA_DIR:-$cache/kafka-data}"
pid_file="$data/kafka.pid"
log_file="$data/kafka.log"

die() { echo "kafka.sh: $*" >&2; exit 1; }

# shellcheck source=../maven.sh
source "$here/../maven.sh"

fetch() {
    fetch_jars "$libs" "org.apache.kafka:kafka_2.13:$version" "$here/pom.xml" \
        -Dkafka.version="$version" -DincludeScope=runtime
}

# The pid of our running broker, or nothing (a stale pid file or a reused pid gives nothing).
running_pid() {
    local pid
    pid="$(cat "$pid_file" 2>/dev/null)" || return 0
    if [[ -n "$pid" ]] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q ' kafka\.Kafka '; then
        echo "$pid"
    fi
}

write_config() {
    mkdir -p "$data/logs"
    cat >"$data/server.properties" <<EOF
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port,SASL_PLAINTEXT://127.0.0.1:$sasl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port,SASL_PLAINTEXT://127.0.0.1:$sasl_port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_guard="guard-secret";
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
log.dirs=$data/logs
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
# One partition (not 50) per internal topic: they are created faster on first use.
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
EOF
    cat >"$data/log4j2.properties" <<EOF
rootLogger.level=INFO
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.state-change.name=state.change.logger
logger.state-change.level=WARN
EOF
}

# shellcheck disable=SC2206  # KAFKA_HEAP_OPTS holds several options
java_opts=(${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m} -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$data/log4j2.properties" -Dkafka.logs.dir="$data" -cp "$libs/*")

# Ready means a real client gets metadata from our broker (our cluster id, not another's).
wait_ready() {
    local pid="$1" cluster_id
    cluster_id="$(sed -n 's/^cluster.id=//p' "$data/logs/meta.properties")"
    "${PYTHON:-python3}" - "127.0.0.1:$port" "$pid" "${KAFKA_START_TIMEOUT:-90}" "$cluster_id" <<'EOF'
import os, sys, time
from confluent_kafka.admin import AdminClient

bootstrap, pid, timeout, cluster_id = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
# log_level 0 keeps librdkafka quiet about "connection refused" while the broker boots.
admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"the broker (pid {pid}) exited during startup")
    try:
        metadata = admin.list_topics(timeout=2)
    except Exception:
        time.sleep(0.5)
        continue
    if metadata.cluster_id != cluster_id:
        sys.exit(f"{bootstrap} is another Kafka cluster ({metadata.cluster_id}), not ours")
    if metadata.brokers:
        sys.exit(0)
sys.exit(f"no answer from {bootstrap} within {timeout:g} s")
EOF
}

start() {
    local pid
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        echo "kafka.sh: already running (pid $pid)" >&2
        wait_ready "$pid" && echo "127.0.0.1:$port"
        return
    fi
    local p
    for p in "$port" "$controller_port" "$sasl_port"; do   # fail fast, before another broker answers for us
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            die "127.0.0.1:$p is in use: stop that server, or choose KAFKA_PORT / KAFKA_CONTROLLER_PORT / KAFKA_SASL_PORT"
        fi
    done
    fetch
    write_config
    if [[ ! -f "$data/logs/meta.properties" ]]; then   # format once; restarts keep the data
        local cluster_id
        cluster_id="$(java "${java_opts[@]}" kafka.tools.StorageTool random-uuid | tail -n 1)" \
            || die "Kafka's storage tool did not run: check java -version (17 or newer)"
        java "${java_opts[@]}" kafka.tools.StorageTool format --standalone --cluster-id "$cluster_id" \
            --config "$data/server.properties" >>"$log_file" 2>&1 \
            || { tail -n 40 "$log_file" >&2; die "formatting $data/logs failed"; }
    fi
    # setsid: the broker outlives this script and its caller's Ctrl-C. It does not fork
    # here (a background job is no group leader), so $! is the broker's pid.
    setsid java "${java_opts[@]}" kafka.Kafka "$data/server.properties" >"$log_file" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pid_file"
    if ! wait_ready "$pid"; then
        echo "--- last lines of $log_file ---" >&2
        tail -n 60 "$log_file" >&2
        stop
        die "Kafka did not start on 127.0.0.1:$port"
    fi
    echo "127.0.0.1:$port" | tee "$data/bootstrap"
}

stop() {
    local pid
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        kill -TERM "$pid"
        for _ in $(seq 1 60); do   # a clean shutdown takes a few seconds
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file"
    if [[ "${1:-}" == "--wipe" ]]; then
        rm -rf "$data"
    fi
}

status() {
    local pid
    pid="$(running_pid)"
    [[ -n "$pid" ]] || { echo "stopped"; return 1; }
    echo "running (pid $pid) at $(cat "$data/bootstrap" 2>/dev/null || echo "127.0.0.1:$port")"
}

case "${1:-}" in
    fetch) fetch ;;
    start) start ;;
    stop) stop "${2:-}" ;;
    status) status ;;
    *) die "usage: kafka.sh fetch | start | stop [--wipe] | status" ;;
esac
