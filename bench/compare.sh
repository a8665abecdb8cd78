#!/usr/bin/env bash
# Side-by-side comparison of `processor aggregate` with DuckDB and Polars on generated files:
# wall time and peak RSS (median of RUNS runs each), time ratios, a byte-for-byte check of the
# processor's output against DuckDB's (and Polars'), and a chart of the times and memory.
#
#   bench/compare.sh [SCENARIO...]        SCENARIO: skewed wide huge tricky all (default: skewed wide tricky)
#   bench/compare.sh chart RESULTS_DIR    draws the chart of an earlier run again (bench/chart.py)
#
# Environment:
#   SIZE=100M    data size for every chosen scenario (default: skewed 1G, wide 1G, huge 10G, tricky 20M)
#   RUNS=3       runs per tool (default 3; huge 1)
#   TOOLS="processor duckdb polars"   tools to run (default all; huge: processor only)
#   MEMORY_LIMIT=1G  memory limit for every tool instead of the scenario's (wide 256M, huge 512M);
#                    "default" runs each tool on its own default (the processor's 1G budget,
#                    against which its peak RSS is still checked)
#   KEEP_OUTPUTS=1   keep the result CSVs in bench/data/out/
#   BASELINE=PATH    another `processor` binary (an older build, another profile) run as the tool
#                    "baseline" in the same rounds, its output checked against the processor's
#   PYTHON=python3   interpreter for the venv
#
# Installs into bench/.venv (pinned in bench/requirements.txt), builds the binaries (profile
# dist: the shipped build), writes data into bench/data/ and results into
# bench/results/<UTC time>/: runs.tsv, table.txt, checks.txt, system.txt, and chart.svg and
# chart.png (wall time and peak RSS per scenario and tool, as in table.txt).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
DATA=$BENCH_DIR/data
VENV=$BENCH_DIR/.venv
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PROCESSOR=$TARGET/dist/processor
GENERATE=$TARGET/dist/generate
PY=$VENV/bin/python
TOOLS_PY=$BENCH_DIR/tools.py
CHART_PY=$BENCH_DIR/chart.py
# shellcheck source=bench/common.sh
source "$BENCH_DIR/common.sh"

usage() {
    # The comment block at the top of this file, from its second line.
    awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
}

ensure_venv() {
    if [[ ! -x $PY ]]; then
        say "creating $VENV"
        "${PYTHON:-python3}" -m venv "$VENV" || die "cannot create a venv (is python3-venv installed?)"
    fi
    say "installing DuckDB, Polars and matplotlib (bench/requirements.txt) into the venv"
    "$PY" -m pip install -q --disable-pip-version-check -r "$BENCH_DIR/requirements.txt" ||
        die "pip install failed"
}

build() {
    say "building processor and generate (profile dist)"
    (cd "$ROOT" &&
        cargo build -q --profile dist -p processor --no-default-features --bin processor &&
        cargo build -q --profile dist -p fixtures --bin generate) || die "cargo build failed"
}

# measure SCENARIO TOOL RUN COMMAND...: runs COMMAND under /usr/bin/time, appends a result line.
measure() {
    local scenario=$1 tool=$2 run=$3 seconds rss
    shift 3
    if ! /usr/bin/time -f '%e %M' -o "$WORK/time" "$@" >"$WORK/stdout" 2>"$WORK/stderr"; then
        cat "$WORK/stderr" >&2
        die "$tool failed on $scenario: $*"
    fi
    read -r seconds rss < <(tail -n 1 "$WORK/time")
    printf '%s %s %s %s %s\n' "$scenario" "$tool" "$run" "$seconds" "$rss" >>"$RUNS_TSV"
    printf '    %-22s run %s: %6.2f s, %6d MB\n' "$tool" "$run" "$seconds" $((rss / 1024)) >&2
}

# The commands of each tool; the output goes to $OUT/<scenario>.<tool>.csv.
run_tool() {
    local scenario=$1 tool=$2 run=$3 input=$4 out=$OUT/$1.$2.csv
    local -a limit_args=()
    warm "$input"
    case $tool in
        processor | baseline)
            local binary=$PROCESSOR
            [[ $tool == baseline ]] && binary=$BASELINE
            [[ -n $LIMIT ]] && limit_args=(--memory-limit "$LIMIT" --temp-dir "$DATA/tmp")
            measure "$scenario" "$tool" "$run" "$binary" aggregate "$input" -o "$out" --quiet "${limit_args[@]}"
            ;;
        processor-spill)
            measure "$scenario" "$tool" "$run" "$PROCESSOR" aggregate "$input" -o "$out" --quiet \
                --memory-limit 1M --temp-dir "$DATA/tmp"
            ;;
        duckdb)
            [[ -n $LIMIT ]] && limit_args=(--memory-limit "${LIMIT%[MG]}${LIMIT: -1}iB" --temp-dir "$DATA/tmp/duckdb")
            measure "$scenario" "$tool" "$run" "$PY" "$TOOLS_PY" duckdb "$input" "$out" "${limit_args[@]}"
            ;;
        polars)
            [[ -n $LIMIT ]] && limit_args=(--streaming)
            measure "$scenario" "$tool" "$run" "$PY" "$TOOLS_PY" polars "$input" "$out" "${limit_args[@]}"
            ;;
        *) die "unknown tool '$tool' (processor, baseline, duckdb, polars)" ;;
    esac
}

# Compares the processor's output with the others'; records the verdicts in checks.txt.
check_outputs() {
    local scenario=$1 tool reference=$OUT/$1.processor.csv
    shift
    for tool in "$@"; do
        [[ $tool == processor ]] && continue
        if cmp -s "$reference" "$OUT/$scenario.$tool.csv"; then
            echo "$scenario: processor output is byte-identical to $tool's" | tee -a "$CHECKS"
        else
            {
                echo "$scenario: processor output DIFFERS from $tool's"
                "$PY" "$TOOLS_PY" first-diff "$reference" "$OUT/$scenario.$tool.csv" || true
            } | tee -a "$CHECKS"
            FAILED=1
        fi
    done
}

# Checks the processor's peak RSS against its memory limit plus 64 MB.
check_rss() {
    local scenario=$1 limit_kb max_kb
    limit_kb=$(($(size_bytes "$RSS_LIMIT") / 1024 + 64 * 1024))
    max_kb=$(awk -v s="$scenario" '$1 == s && $2 == "processor" && $5 > m { m = $5 } END { print m + 0 }' "$RUNS_TSV")
    if ((max_kb <= limit_kb)); then
        echo "$scenario: processor peak RSS $((max_kb / 1024)) MB within --memory-limit $RSS_LIMIT + 64 MB" | tee -a "$CHECKS"
    else
        echo "$scenario: processor peak RSS $((max_kb / 1024)) MB EXCEEDS --memory-limit $RSS_LIMIT + 64 MB" | tee -a "$CHECKS"
        FAILED=1
    fi
}

# draw_chart DIR: chart.svg and chart.png of the results in DIR.
draw_chart() {
    "$PY" "$CHART_PY" "$1"
}

main() {
    local -a scenarios=()
    local arg
    if [[ ${1:-} == chart ]]; then
        (($# == 2)) || die "usage: bench/compare.sh chart RESULTS_DIR"
        [[ -f $2/runs.tsv ]] || die "$2 has no runs.tsv"
        ensure_venv
        draw_chart "$2"
        return
    fi
    for arg in "$@"; do
        case $arg in
            -h | --help) usage; exit 0 ;;
            all) scenarios+=(skewed wide huge tricky) ;;
            *) scenarios+=("$arg") ;;
        esac
    done
    ((${#scenarios[@]})) || scenarios=(skewed wide tricky)
    for arg in "${scenarios[@]}"; do scenario "$arg"; done # validate names early

    [[ -z ${BASELINE:-} || -x $BASELINE ]] || die "BASELINE=$BASELINE is not an executable"
    ensure_time
    ensure_venv
    build
    mkdir -p "$DATA/tmp/duckdb" "$DATA/out"
    RESULTS=$BENCH_DIR/results/$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$RESULTS"
    RUNS_TSV=$RESULTS/runs.tsv
    CHECKS=$RESULTS/checks.txt
    OUT=$DATA/out
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    : >"$RUNS_TSV"
    : >"$CHECKS"
    FAILED=0
    {
        echo "date: $(date -u)"
        echo "machine: $(nproc) cores, $(awk '/MemTotal/ { print int($2 / 1024) " MB" }' /proc/meminfo)"
        echo "processor: $("$PROCESSOR" --version)"
        [[ -z ${BASELINE:-} ]] || echo "baseline: $BASELINE"
        echo "duckdb: $("$PY" -c 'import duckdb; print(duckdb.__version__)')"
        echo "polars: $("$PY" -c 'import polars; print(polars.__version__)')"
    } >"$RESULTS/system.txt"

    local scenario input run limit_mb count i
    for scenario in "${scenarios[@]}"; do
        scenario "$scenario"
        local -a tools
        read -r -a tools <<<"$SCENARIO_TOOLS"
        [[ $scenario == tricky && " ${tools[*]} " == *" processor "* ]] && tools+=(processor-spill)
        [[ -n ${BASELINE:-} && " ${tools[*]} " != *" baseline "* ]] && tools+=(baseline)
        # For the chart's labels, with the date and the machine above.
        limit_mb=""
        [[ -z $LIMIT ]] || limit_mb=$(($(size_bytes "$LIMIT") >> 20))
        echo "scenario $scenario: data $SIZE_OF${limit_mb:+, memory limit $limit_mb MB}" >>"$RESULTS/system.txt"
        input=$(dataset "$scenario")
        say "$scenario: $(du -h "$input" | cut -f1), ${SCENARIO_RUNS} run(s) of: ${tools[*]}${LIMIT:+, memory limit $LIMIT}"
        # Rounds interleave the tools so that a slow phase of the machine hits them all, and
        # each round starts one tool later: a run is faster right after one that freed much
        # memory (Polars' gigabytes), so no tool may always follow the same one.
        count=${#tools[@]}
        for ((run = 1; run <= SCENARIO_RUNS; run++)); do
            for ((i = 0; i < count; i++)); do
                run_tool "$scenario" "${tools[(i + run - 1) % count]}" "$run" "$input"
            done
        done
        if [[ " ${tools[*]} " == *" processor "* ]]; then
            check_outputs "$scenario" "${tools[@]}"
            [[ -n $RSS_LIMIT ]] && check_rss "$scenario"
        fi
        [[ ${KEEP_OUTPUTS:-0} == 1 ]] || rm -f "$OUT/$scenario".*.csv
    done

    "$PY" "$TOOLS_PY" table "$RUNS_TSV" | tee "$RESULTS/table.txt"
    echo
    cat "$CHECKS"
    draw_chart "$RESULTS" || say "warning: no chart (bench/compare.sh chart $RESULTS draws it again)"
    say "results in $RESULTS"
    return "$FAILED"
}

main "$@"
