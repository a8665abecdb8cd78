#!/usr/bin/env bash
# The service path against the CLI on the same file: upload + process + download with
# `processor upload` through the task manager, divided by the wall time of `processor aggregate`
# alone, the CPU time each side used (the client's, the task manager's and the worker's against
# the CLI's: on a machine with few cores, their sum bounds the service's wall time from below),
# and the task manager's peak RSS while it receives the upload. With SYNC_UPLOADS=1 it also
# times writing as many bytes durably to the storage directory's disk (direct writes, then
# fsync): the floor of a synced upload's time, whatever the service does.
#
#   bench/service.sh [MODE...]       MODE: embedded distributed bucket (default: the first two)
#
#   embedded     the task manager on its embedded default (SQLite, engine in-process)
#   distributed  the task manager on MariaDB + RabbitMQ with one `processor worker`
#   bucket       the task manager on PostgreSQL + RabbitMQ + an S3 bucket (moto's server, from
#                scripts/install-test-tools) with one worker that shares no directory with it;
#                also prints both processes' peak RSS over the runs
#
# Environment:
#   SCENARIO=skewed  data set (see bench/compare.sh; default skewed, 1 GB)
#   SIZE=100M        other data size
#   RUNS=3           runs of each (rounds interleave the CLI and the service)
#   AMQP_URL         default amqp://guest:guest@127.0.0.1:5672/%2f
#   MARIADB_URL      server URL without database, default mysql://root@127.0.0.1:3306
#                    (a database bench_service is created and dropped)
#   POSTGRES_URL     the same for the bucket mode, default postgres://postgres@127.0.0.1:5432
#   SYNC_UPLOADS=1   the task manager's setting: 0 accepts uploads before they are on the disk
#   EARLY_AGGREGATION=1  the task manager's setting: 0 starts processing once the upload is complete
#   RATE=200M        upload with curl at this rate (a network slower than loopback) instead of
#                    `processor upload`, and report the time from the end of the upload to the
#                    downloaded result, against the CLI alone
#
# Builds the binaries (profile dist: the shipped build), writes data into bench/data/ and
# results into bench/results/service-<UTC time>/.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
DATA=$BENCH_DIR/data
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PROCESSOR=$TARGET/dist/processor
TASK_MANAGER=$TARGET/dist/task-manager
GENERATE=$TARGET/dist/generate
# shellcheck source=bench/common.sh
source "$BENCH_DIR/common.sh"

AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
MARIADB_URL=${MARIADB_URL:-mysql://root@127.0.0.1:3306}
POSTGRES_URL=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
MOTO_SERVER=${TEST_MOTO_SERVER:-$TARGET/test-tools/venv/bin/moto_server}
DATABASE=bench_service
PIDS=()

build() {
    say "building processor, task-manager and generate (profile dist)"
    (cd "$ROOT" && cargo build -q --profile dist -p processor -p task-manager -p fixtures) ||
        die "cargo build failed"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts the task manager (and a worker in distributed mode) for MODE; sets TM_PID and URL.
start_service() {
    local mode=$1 port storage=$WORK/$1
    port=$(free_port)
    URL=http://127.0.0.1:$port
    mkdir -p "$storage"
    local -a env=(PORT="$port" BIND=127.0.0.1 STORAGE_DIR="$storage" RUST_LOG=warn
        SYNC_UPLOADS="${SYNC_UPLOADS:-1}" EARLY_AGGREGATION="${EARLY_AGGREGATION:-1}")
    local -a worker_env=()
    if [[ $mode == distributed ]]; then
        mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DATABASE; CREATE DATABASE $DATABASE" ||
            die "cannot reach MariaDB at $MARIADB_URL"
        env+=(DATABASE_URL="$MARIADB_URL/$DATABASE" AMQP_URL="$AMQP_URL" QUEUE_NAME="bench_service_$$")
    fi
    if [[ $mode == bucket ]]; then
        psql "$POSTGRES_URL/postgres" -qc "DROP DATABASE IF EXISTS $DATABASE" -c "CREATE DATABASE $DATABASE" ||
            die "cannot reach PostgreSQL at $POSTGRES_URL"
        start_s3
        env+=(DATABASE_URL="$POSTGRES_URL/$DATABASE" AMQP_URL="$AMQP_URL" QUEUE_NAME="bench_service_$$"
            STORAGE_URL="s3://bench/tasks" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
            AWS_REGION=us-east-1 AWS_ENDPOINT_URL="$S3_URL" AWS_ALLOW_HTTP=true)
        # The worker's own directories: nothing of the task manager's.
        mkdir -p "$WORK/bucket-worker/spill"
        worker_env=(STORAGE_DIR="$WORK/bucket-worker" ENGINE_TEMP_DIR="$WORK/bucket-worker/spill")
    fi
    # From the work directory: a developer's .env must not change the set-up.
    (cd "$WORK" && exec env "${env[@]}" "$TASK_MANAGER" >"$WORK/$mode.tm.log" 2>&1) &
    TM_PID=$!
    PIDS+=("$TM_PID")
    SERVICE_PIDS=("$TM_PID")
    if [[ $mode != embedded ]]; then
        (cd "$WORK" && exec env "${env[@]}" "${worker_env[@]}" TASK_MANAGER_URL="$URL" "$PROCESSOR" worker \
            >"$WORK/$mode.worker.log" 2>&1) &
        WORKER_PID=$!
        PIDS+=("$WORKER_PID")
        SERVICE_PIDS+=("$WORKER_PID")
    fi
    for _ in $(seq 1 100); do
        curl -fsS "$URL/health" >/dev/null 2>&1 && return
        kill -0 "$TM_PID" 2>/dev/null || { cat "$WORK/$mode.tm.log" >&2; die "the task manager stopped"; }
        sleep 0.1
    done
    die "the task manager did not come up (see $WORK/$mode.tm.log)"
}

# Starts moto's S3 server on a free port with a bucket `bench`; sets S3_URL.
start_s3() {
    [[ -x $MOTO_SERVER ]] || die "moto_server is missing at $MOTO_SERVER: run scripts/install-test-tools"
    local port
    port=$(free_port)
    S3_URL=http://127.0.0.1:$port
    "$MOTO_SERVER" -H 127.0.0.1 -p "$port" >"$WORK/moto.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 200); do
        curl -fsS -o /dev/null "$S3_URL/moto-api/" 2>/dev/null && break
        sleep 0.1
    done
    # moto routes a request by the service its Authorization header names.
    curl -fsS -X PUT -o /dev/null "$S3_URL/bench" -H 'Authorization: AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0' ||
        die "cannot create the bucket on moto (see $WORK/moto.log)"
}

# Peak resident MB of process $1 since it started.
peak_mb() {
    local key value _
    while read -r key value _; do
        [[ $key == VmHWM: ]] && { echo $((value / 1024)); return; }
    done <"/proc/$1/status" 2>/dev/null
    echo 0
}

stop_service() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}

# Drops the database and queues of the distributed mode (MODE $1).
cleanup_distributed() {
    local queue
    [[ $1 != embedded ]] || return 0
    if [[ $1 == bucket ]]; then
        psql "$POSTGRES_URL/postgres" -qc "DROP DATABASE IF EXISTS $DATABASE" || true
    else
        mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DATABASE" || true
    fi
    for queue in "bench_service_$$" "bench_service_$$.dead"; do
        rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
    done
}

# Resident KB of process $1 (0 when gone), without forking.
rss_kb() {
    local key value _
    while read -r key value _; do
        [[ $key == VmRSS: ]] && { echo "$value"; return; }
    done <"/proc/$1/status" 2>/dev/null
    echo 0
}

# CPU seconds (user + system) the processes $@ have used so far.
cpu_seconds() {
    local pid stat ticks=0
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        # Fields 14 and 15 (utime, stime), counted after the command name's closing parenthesis.
        read -r -a stat <<<"${stat##*) }"
        ticks=$((ticks + stat[11] + stat[12]))
    done
    echo "$ticks / $(getconf CLK_TCK)" | bc -l
}

# seconds COMMAND...: runs COMMAND, prints its wall time and CPU time (user + system) in seconds.
seconds() {
    /usr/bin/time -f '%e %U %S' -o "$WORK/time" "$@" >"$WORK/stdout" 2>"$WORK/stderr" ||
        { cat "$WORK/stderr" >&2; die "failed: $*"; }
    local wall user system
    read -r wall user system < <(tail -n 1 "$WORK/time")
    echo "$wall $(echo "$user + $system" | bc -l)"
}

# Uploads INPUT through the service into OUTPUT; prints "seconds peak_rss_kb_during_upload
# client_cpu_seconds service_cpu_seconds".
service_run() {
    local input=$1 output=$2 start end peak=0 rss pid served
    : >"$WORK/upload.out"
    served=$(cpu_seconds "${SERVICE_PIDS[@]}")
    start=$(date +%s.%N)
    /usr/bin/time -f '%U %S' -o "$WORK/client.time" \
        "$PROCESSOR" upload "$input" -o "$output" --url "$URL" --quiet >"$WORK/upload.out" 2>"$WORK/upload.err" &
    pid=$!
    # The client prints "task <id>" once the upload is accepted.
    while kill -0 "$pid" 2>/dev/null && ! grep -q '^task ' "$WORK/upload.out"; do
        rss=$(rss_kb "$TM_PID")
        ((rss > peak)) && peak=$rss
        sleep 0.02
    done
    wait "$pid" || { cat "$WORK/upload.err" >&2; die "processor upload failed"; }
    end=$(date +%s.%N)
    served=$(echo "$(cpu_seconds "${SERVICE_PIDS[@]}") - $served" | bc -l)
    echo "$(echo "$end - $start" | bc -l) $peak $(tail -n 1 "$WORK/client.time" | tr ' ' '+' | bc -l) $served"
}

# Uploads INPUT with curl at RATE, waits, downloads into OUTPUT; prints "upload_seconds
# result_seconds_after_the_upload".
rated_run() {
    local input=$1 output=$2 start uploaded end id
    start=$(date +%s.%N)
    curl -fsS --limit-rate "$RATE" -X POST -T "$input" -H 'Content-Type: text/csv' \
        -o "$WORK/upload.json" "$URL/v1/data_processor/upload" || die "upload failed"
    uploaded=$(date +%s.%N)
    id=$(sed -n 's/.*"task_id":"\([^"]*\)".*/\1/p' "$WORK/upload.json")
    [[ -n $id ]] || die "no task id in $(cat "$WORK/upload.json")"
    until curl -fsS "$URL/v1/tasks/status/$id?wait=60" | grep -q '"status":"\(DONE\|FAILED\|CANCELLED\)"'; do :; done
    curl -fsS -o "$output" "$URL/v1/data_processor/download/$id" || die "download failed (task $id)"
    end=$(date +%s.%N)
    echo "$(echo "$uploaded - $start" | bc -l) $(echo "$end - $uploaded" | bc -l)"
}

# Seconds to write $1 bytes durably into directory $2 (4 MiB direct writes, then fsync).
durable_write() {
    local file=$2/durable-write.tmp wall _
    read -r wall _ < <(seconds dd if=/dev/zero of="$file" bs=4M count=$((($1 + (4 << 20) - 1) >> 22)) \
        oflag=direct conv=fsync status=none)
    rm -f "$file"
    echo "$wall"
}

# Who serves in MODE $1, for the CPU figures.
server_side() {
    if [[ $1 == embedded ]]; then echo "task manager"; else echo "task manager + worker"; fi
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

main() {
    local -a modes=()
    local arg
    for arg in "$@"; do
        case $arg in
            -h | --help) sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
            embedded | distributed | bucket) modes+=("$arg") ;;
            *) die "unknown mode '$arg' (embedded, distributed, bucket)" ;;
        esac
    done
    ((${#modes[@]})) || modes=(embedded distributed)
    command -v bc >/dev/null || die "bc is missing (apt-get install bc)"
    command -v curl >/dev/null || die "curl is missing (apt-get install curl)"
    ensure_time

    build
    WORK=$(mktemp -d)
    trap 'stop_service; rm -rf "$WORK"' EXIT
    local name=${SCENARIO:-skewed} input
    scenario "$name"
    input=$(dataset "$name")
    RESULTS=$BENCH_DIR/results/service-$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$RESULTS"
    local runs=${RUNS:-3} mode run file cli cli_cpu service peak client_cpu service_cpu upload after disk
    say "$name: $(du -h "$input" | cut -f1), $runs run(s), modes: ${modes[*]}, SYNC_UPLOADS=${SYNC_UPLOADS:-1}"
    for mode in "${modes[@]}"; do
        start_service "$mode"
        for file in cli cli_cpu service peak client_cpu service_cpu after disk; do : >"$WORK/$file"; done
        for ((run = 1; run <= runs; run++)); do
            warm "$input"
            read -r cli cli_cpu < <(seconds "$PROCESSOR" aggregate "$input" -o "$WORK/cli.csv" --quiet)
            warm "$input"
            if [[ -n ${RATE:-} ]]; then
                read -r upload after < <(rated_run "$input" "$WORK/service.csv")
                cmp -s "$WORK/cli.csv" "$WORK/service.csv" || die "$mode: the service's result differs from the CLI's"
                printf '    %-12s run %s: CLI %6.2f s, upload at %s %6.2f s, result %5.2f s after it\n' \
                    "$mode" "$run" "$cli" "$RATE" "$upload" "$after" >&2
                echo "$cli" >>"$WORK/cli" && echo "$after" >>"$WORK/after"
                rm -f "$WORK/cli.csv" "$WORK/service.csv" "$WORK/$mode"/raw_data/*.csv "$WORK/$mode"/processed_data/*.csv
                continue
            fi
            if [[ ${SYNC_UPLOADS:-1} == 1 && $mode != bucket ]]; then
                durable_write "$(stat -c %s "$input")" "$WORK/$mode" >>"$WORK/disk"
                warm "$input"
            fi
            read -r service peak client_cpu service_cpu < <(service_run "$input" "$WORK/service.csv")
            cmp -s "$WORK/cli.csv" "$WORK/service.csv" || die "$mode: the service's result differs from the CLI's"
            printf '    %-12s run %s: CLI %6.2f s (%.2f CPU-s), service %6.2f s (%.2f CPU-s: client %.2f, %s %.2f), task manager %4d MB during the upload\n' \
                "$mode" "$run" "$cli" "$cli_cpu" "$service" "$(echo "$client_cpu + $service_cpu" | bc -l)" \
                "$client_cpu" "$(server_side "$mode")" "$service_cpu" $((peak / 1024)) >&2
            for file in cli cli_cpu service peak client_cpu service_cpu; do echo "${!file}" >>"$WORK/$file"; done
            rm -f "$WORK/cli.csv" "$WORK/service.csv"
            rm -f "$WORK/$mode"/raw_data/*.csv "$WORK/$mode"/processed_data/*.csv
        done
        cli=$(median <"$WORK/cli")
        if [[ -n ${RATE:-} ]]; then
            after=$(median <"$WORK/after")
            printf '%s, upload at %s: result %.2f s after the upload, CLI alone %.2f s (%.2fx)\n' \
                "$mode" "$RATE" "$after" "$cli" "$(echo "$after / $cli" | bc -l)" | tee -a "$RESULTS/table.txt"
            stop_service
            cleanup_distributed "$mode"
            continue
        fi
        service=$(median <"$WORK/service")
        peak=$(sort -n "$WORK/peak" | tail -n 1)
        cli_cpu=$(median <"$WORK/cli_cpu")
        client_cpu=$(median <"$WORK/client_cpu")
        service_cpu=$(median <"$WORK/service_cpu")
        printf '%s: CLI %.2f s, service %.2f s (%.2fx), task manager peak RSS during uploads %d MB; CPU-s: CLI %.2f, service %.2f (%.2fx: client %.2f, %s %.2f)\n' \
            "$mode" "$cli" "$service" "$(echo "$service / $cli" | bc -l)" $((peak / 1024)) \
            "$cli_cpu" "$(echo "$client_cpu + $service_cpu" | bc -l)" \
            "$(echo "($client_cpu + $service_cpu) / $cli_cpu" | bc -l)" "$client_cpu" \
            "$(server_side "$mode")" "$service_cpu" | tee -a "$RESULTS/table.txt"
        if [[ $mode == bucket ]]; then
            printf '%s: peak RSS over the runs: task manager %d MB, worker %d MB\n' \
                "$mode" "$(peak_mb "$TM_PID")" "$(peak_mb "$WORKER_PID")" | tee -a "$RESULTS/table.txt"
        fi
        if [[ -s $WORK/disk ]]; then
            disk=$(median <"$WORK/disk")
            printf '%s: writing the input durably to the disk alone takes %.2f s (%.2fx the CLI): a synced upload cannot take less\n' \
                "$mode" "$disk" "$(echo "$disk / $cli" | bc -l)" | tee -a "$RESULTS/table.txt"
        fi
        stop_service
        cleanup_distributed "$mode"
    done
    say "results in $RESULTS"
}

main "$@"
