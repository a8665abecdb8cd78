# Shared by the benchmark scripts: messages, sizes, GNU time, the scenarios and their data.
# Expects BENCH_DIR, DATA and GENERATE to be set by the sourcing script.

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Bytes of a size such as 256M or 10G (binary units, as the processor reads them).
size_bytes() {
    local text=$1 number unit
    number=${text%%[!0-9]*}
    unit=${text#"$number"}
    [[ -n $number ]] || die "invalid size: $text"
    case ${unit^^} in
        '' | B) echo "$number" ;;
        K | KB | KIB) echo $((number << 10)) ;;
        M | MB | MIB) echo $((number << 20)) ;;
        G | GB | GIB) echo $((number << 30)) ;;
        *) die "invalid size: $text" ;;
    esac
}

ensure_time() {
    [[ -x /usr/bin/time ]] && return
    say "GNU time is missing: installing the Debian package 'time' to measure peak RSS"
    if ! apt-get install -y -q time >/dev/null 2>&1; then
        apt-get update -q >/dev/null && apt-get install -y -q time >/dev/null ||
            die "cannot install 'time'; install it (apt-get install time) and run again"
    fi
}

# Reads file $1 into the page cache before a timed run, so that every run starts from a cached
# input: memory reclaim (DAMON on these machines) pages out a file left idle for about a
# minute, and a run that reads it back from the disk measures the disk. Files over 2 GiB are
# left as they are.
warm() {
    local size
    size=$(stat -c %s "$1")
    if ((size <= 2 << 30)); then cat "$1" >/dev/null; fi
}

# Sets SIZE_OF, GEN_ARGS, LIMIT (memory limit for all tools, empty for none), RSS_LIMIT (what
# the processor's peak RSS is checked against, empty for nothing), SCENARIO_RUNS,
# SCENARIO_TOOLS for scenario $1.
scenario() {
    LIMIT=""
    SCENARIO_RUNS=${RUNS:-3}
    SCENARIO_TOOLS=${TOOLS:-processor duckdb polars}
    case $1 in
        skewed)
            SIZE_OF=${SIZE:-1G}
            GEN_ARGS=(--songs 100000 --days 30 --skew zipf)
            ;;
        wide)
            SIZE_OF=${SIZE:-1G}
            GEN_ARGS=(--songs 2000000 --days 365 --skew uniform)
            LIMIT=256M
            ;;
        huge)
            SIZE_OF=${SIZE:-10G}
            GEN_ARGS=(--songs 2000000 --days 365 --skew uniform)
            LIMIT=512M
            SCENARIO_RUNS=${RUNS:-1}
            SCENARIO_TOOLS=${TOOLS:-processor}
            ;;
        tricky)
            SIZE_OF=${SIZE:-20M}
            GEN_ARGS=(--songs 20000 --days 30 --skew zipf --tricky-names)
            ;;
        *) die "unknown scenario '$1' (skewed, wide, huge, tricky, all)" ;;
    esac
    # MEMORY_LIMIT=default: every tool on its own default, the processor's being a 1G budget.
    case ${MEMORY_LIMIT:-} in
        "") RSS_LIMIT=$LIMIT ;;
        default) LIMIT="" RSS_LIMIT=1G ;;
        *) LIMIT=$MEMORY_LIMIT RSS_LIMIT=$MEMORY_LIMIT ;;
    esac
}

# Generates bench/data/<scenario>-<size>.csv unless it exists with the same parameters.
dataset() {
    local name=$1 file params
    file=$DATA/$name-$SIZE_OF.csv
    mkdir -p "$DATA"
    params="--size $SIZE_OF ${GEN_ARGS[*]} --seed 42"
    if [[ -f $file && -f $file.params && $(cat "$file.params") == "$params" ]]; then
        say "using $file"
    else
        say "generating $file ($params)"
        # shellcheck disable=SC2086
        "$GENERATE" $params -o "$file" || die "generate failed"
        echo "$params" >"$file.params"
    fi
    echo "$file"
}
