#!/usr/bin/env bash
# Beam's Flink job server (embedded local Flink cluster) on 127.0.0.1, assembled from Beam's
# runner jars on Maven Central (no job-server jar is published there for these versions).
#
#   flink.sh fetch     download the runner jars with Maven (once)
#   flink.sh start     fetch if needed, start, wait until the job port answers; prints the job
#                      endpoint (127.0.0.1:PORT) as its last line
#   flink.sh stop      stop it
#
# Use: lineage-guard run … --runner PortableRunner -- --job_endpoint=127.0.0.1:PORT
#      (the guard adds --streaming and --environment_type=LOOPBACK for the endless mode)
# Flink's REST API: each job runs in a Flink mini cluster of its own ('[local]'), whose REST
# endpoint takes the first free port of FLINK_REST_PORTS (18100-18119) on 127.0.0.1 and closes
# with the job; `lineage-guard run --flink-rest 127.0.0.1:18100-18119` cancels there the job a
# killed guard of its group left (Beam's job server keeps such a job RUNNING in its own list).
# Environment: BEAM_FLINK_VERSION (2.62.0, the newest runner on Maven Central), FLINK_JOB_PORT
# (18099), FLINK_ARTIFACT_PORT (18098), FLINK_REST_PORTS (18100-18119),
# LINEAGE_GUARD_CACHE (~/.cache/lineage-guard; the run
# folder is FLINK_RUN_DIR, default $LINEAGE_GUARD_CACHE/beam-flink-run-$FLINK_JOB_PORT, so job
# servers on different ports do not share a pid file), FLINK_START_TIMEOUT (120 s).
# Ports: fixed and configurable (above), never random; the expansion service (cross-language
# transforms, which the guard does not use) is off. Beam's Java servers bind their ports on
# every interface whatever the host (Beam 2.62's ServerFactory builds them with
# NettyServerBuilder.forPort; --job-host only names the address it reports), and so does the
# Python LOOPBACK worker pool ('[::]:0' in worker_pool_main): Beam offers no way to bind them
# to 127.0.0.1, so keep these ports behind a firewall on a shared machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="${BEAM_FLINK_VERSION:-2.62.0}"   # keep in step with pom.xml
port="${FLINK_JOB_PORT:-18099}"
artifact_port="${FLINK_ARTIFACT_PORT:-18098}"
rest_ports="${FLINK_REST_PORTS:-18100-18119}"
cache="${LINEAGE_GUARD_CACHE:-$HOME/.cache/lineage-guard}"
libs="$cache/beam-flink-$version/libs"
run_dir="${FLINK_RUN_DIR:-$cache/beam-flink-run-$port}"
pid_file="$run_dir/job-server.pid"

die() { echo "flink.sh: $*" >&2; exit 1; }

# shellcheck source=../maven.sh
source "$here/../maven.sh"

fetch() {
    fetch_jars "$libs" "org.apache.beam:beam-runners-flink-1.19:$version" "$here/pom.xml" \
        -Dbeam.version="$version" -DincludeScope=runtime
}

running_pid() {
    local pid
    pid="$(cat "$pid_file" 2>/dev/null)" || return 0
    if [[ -n "$pid" ]] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q 'FlinkJobServerDriver'; then
        echo "$pid"
    fi
}

start() {
    fetch
    mkdir -p "$run_dir/conf"
    cat >"$run_dir/conf/config.yaml" <<EOF
rest.address: 127.0.0.1
rest.bind-address: 127.0.0.1
rest.bind-port: $rest_ports
EOF
    if [[ -z "$(running_pid)" ]]; then
        (exec 3>&- ; nohup java -cp "$libs/*" org.apache.beam.runners.flink.FlinkJobServerDriver \
            --job-host=127.0.0.1 --job-port="$port" --artifact-port="$artifact_port" \
            --expansion-port=-1 --flink-conf-dir="$run_dir/conf" \
            --flink-master='[local]' >"$run_dir/job-server.log" 2>&1 </dev/null &
         echo $! >"$pid_file")
    fi
    local deadline=$((SECONDS + ${FLINK_START_TIMEOUT:-120}))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        [[ -n "$(running_pid)" ]] || { tail -20 "$run_dir/job-server.log" >&2; die "the job server exited"; }
        ((SECONDS < deadline)) || die "the job server did not answer on 127.0.0.1:$port"
        sleep 1
    done
    echo "127.0.0.1:$port"
}

stop() {
    local pid
    pid="$(running_pid)"
    [[ -n "$pid" ]] || return 0
    kill "$pid"
    for _ in $(seq 30); do [[ -z "$(running_pid)" ]] && return 0; sleep 1; done
    kill -9 "$pid"
}

case "${1:-}" in
    fetch) fetch ;;
    start) start ;;
    stop) stop ;;
    *) die "usage: flink.sh fetch|start|stop" ;;
esac
