"""Helpers of compare.sh: run DuckDB or Polars on a CSV, compare outputs, print the table.

    tools.py duckdb IN OUT [--memory-limit 256MB] [--temp-dir DIR]
    tools.py polars IN OUT [--streaming]
    tools.py first-diff A B
    tools.py table RESULTS.tsv
"""

import argparse
import statistics
import sys

SCHEMA_SQL = "{'Song': 'VARCHAR', 'Date': 'DATE', 'Number of Plays': 'UBIGINT'}"


def run_duckdb(args):
    import duckdb

    con = duckdb.connect()
    if args.memory_limit:
        con.execute(f"SET memory_limit = '{args.memory_limit}'")
    if args.temp_dir:
        con.execute(f"SET temp_directory = '{args.temp_dir}'")
    # Types are forced so that nothing depends on the sniffer: Song VARCHAR, Date DATE,
    # plays UBIGINT (summed as HUGEINT, printed as digits).
    con.execute(
        f"""COPY (
            SELECT Song, Date, sum("Number of Plays") AS "Number of Plays"
            FROM read_csv('{args.input}', header = true, columns = {SCHEMA_SQL})
            GROUP BY ALL ORDER BY Song, Date
        ) TO '{args.output}' (HEADER, DELIMITER ',')"""
    )


def run_polars(args):
    import polars as pl

    schema = {"Song": pl.String, "Date": pl.Date, "Number of Plays": pl.UInt64}
    query = (
        pl.scan_csv(args.input, schema=schema)
        .group_by(["Song", "Date"])
        .agg(pl.col("Number of Plays").sum())
        # Polars sorts strings by their UTF-8 bytes, like the processor and DuckDB.
        .sort(["Song", "Date"])
    )
    if args.streaming:
        query.sink_csv(args.output, engine="streaming")
    else:
        query.collect().write_csv(args.output)


def first_diff(args):
    """Prints the first differing lines of two files; exit 1 when they differ."""
    with open(args.a, "rb") as a, open(args.b, "rb") as b:
        number = 0
        while True:
            number += 1
            line_a, line_b = a.readline(), b.readline()
            if line_a != line_b:
                print(f"first difference at line {number}:")
                print(f"  {args.a}: {line_a!r}")
                print(f"  {args.b}: {line_b!r}")
                for _ in range(2):
                    print(f"  next: {a.readline()!r} | {b.readline()!r}")
                return 1
            if not line_a:
                return 0


def summarize(path):
    """The table's figures from `scenario tool run seconds rss_kb` lines, in order of first
    appearance: one dict per (scenario, tool) with runs, median, min and max seconds, the peak
    RSS in MB (the highest of the runs) and the median time divided by the processor's (None
    without a processor run)."""
    runs = {}
    with open(path) as f:
        for line in f:
            scenario, tool, _run, seconds, rss_kb = line.split()
            runs.setdefault((scenario, tool), []).append((float(seconds), int(rss_kb)))
    base = {}
    for (scenario, tool), samples in runs.items():
        if tool.startswith("processor") and scenario not in base:
            base[scenario] = statistics.median(s for s, _ in samples)
    rows = []
    for (scenario, tool), samples in runs.items():
        seconds = [s for s, _ in samples]
        median = statistics.median(seconds)
        rows.append({
            "scenario": scenario,
            "tool": tool,
            "runs": len(samples),
            "median": median,
            "min": min(seconds),
            "max": max(seconds),
            "rss_mb": max(r for _, r in samples) / 1024,
            "ratio": median / base[scenario] if base.get(scenario) else None,
        })
    return rows


def table(args):
    """Medians per tool, with time ratios."""
    print(f"{'scenario':<10} {'tool':<22} {'runs':>4} {'median s':>9} {'min s':>7} "
          f"{'max s':>7} {'peak RSS MB':>11} {'time / processor':>16}")
    for row in summarize(args.results):
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] else "-"
        print(f"{row['scenario']:<10} {row['tool']:<22} {row['runs']:>4} {row['median']:>9.2f} "
              f"{row['min']:>7.2f} {row['max']:>7.2f} {row['rss_mb']:>11.0f} {ratio:>16}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    duck = commands.add_parser("duckdb")
    duck.add_argument("input")
    duck.add_argument("output")
    duck.add_argument("--memory-limit")
    duck.add_argument("--temp-dir")
    polars = commands.add_parser("polars")
    polars.add_argument("input")
    polars.add_argument("output")
    polars.add_argument("--streaming", action="store_true")
    diff = commands.add_parser("first-diff")
    diff.add_argument("a")
    diff.add_argument("b")
    tab = commands.add_parser("table")
    tab.add_argument("results")
    args = parser.parse_args()
    handlers = {"duckdb": run_duckdb, "polars": run_polars, "first-diff": first_diff, "table": table}
    sys.exit(handlers[args.command](args) or 0)


if __name__ == "__main__":
    main()
