"""Draws a results directory of compare.sh as a bar chart: chart.svg and chart.png beside it.

    chart.py RESULTS_DIR

Two panels side by side, median wall time and peak RSS per scenario, one bar per tool: the
figures of table.txt (tools.summarize). The title takes the date and the machine from
system.txt, the scenario labels their data size and memory limit ("scenario NAME: ..." lines).
"""

import argparse
import re
import sys
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display needed
matplotlib.rcParams["svg.hashsalt"] = "chart"  # the same SVG for the same results
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from tools import summarize  # noqa: E402

COLORS = {
    "processor": "tab:blue",
    "processor-spill": "lightsteelblue",
    "baseline": "tab:gray",
    "duckdb": "tab:orange",
    "polars": "tab:green",
}
NAMES = {"duckdb": "DuckDB", "polars": "Polars"}


def read_system(path):
    """system.txt as {key: value}, plus {scenario: (data size, limit MB or None)}."""
    fields, scenarios = {}, {}
    if path.exists():
        for line in path.read_text().splitlines():
            match = re.fullmatch(r"scenario (\S+): data (\S+)(?:, memory limit (\d+) MB)?", line)
            if match:
                name, size, limit = match.groups()
                scenarios[name] = (size, int(limit) if limit else None)
            elif ": " in line:
                key, value = line.split(": ", 1)
                fields[key] = value
    return fields, scenarios


def title_of(fields, rows):
    date = fields.get("date", "")
    try:
        date = datetime.strptime(" ".join(date.split()), "%a %b %d %H:%M:%S %Z %Y").strftime(
            "%Y-%m-%d %H:%M UTC")
    except ValueError:
        pass
    counts = sorted({row["runs"] for row in rows})
    runs = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    bases = (row["tool"].split("-")[0] for row in rows)  # processor-spill: processor
    names = list(dict.fromkeys(NAMES.get(base, base) for base in bases))
    tools = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    head = ", ".join(part for part in (date, fields.get("machine")) if part)
    return (f"{tools}{': ' if head else ''}{head}\n"
            f"wall time: median of {runs} run{'s' if counts[-1] > 1 else ''}; "
            f"peak RSS: highest of the runs")


def tool_label(tool, fields):
    version = fields.get(tool, "").split()[-1:] if tool in ("processor", "duckdb", "polars") else []
    return " ".join([NAMES.get(tool, tool), *version])


def value_label(value, unit):
    if unit == "MB" or value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def draw(results):
    rows = summarize(results / "runs.tsv")
    if not rows:
        sys.exit(f"chart.py: no runs in {results / 'runs.tsv'}")
    fields, scenarios = read_system(results / "system.txt")
    names = list(dict.fromkeys(row["scenario"] for row in rows))
    tools = list(dict.fromkeys(row["tool"] for row in rows))
    by_scenario = {name: [row for row in rows if row["scenario"] == name] for name in names}
    widest = max(len(group) for group in by_scenario.values())
    width = 0.8 / widest

    ticks = []
    for name in names:
        size, limit = scenarios.get(name, (None, None))
        ticks.append(name + (f" ({limit} MB limit)" if limit else "") + (f"\n{size} of data" if size else ""))

    figure = Figure(figsize=(4 + 2.4 * len(names), 5), layout="constrained")
    panels = figure.subplots(1, 2)
    handles = {}
    for axes, key, unit, heading in (
        (panels[0], "median", "s", "Wall time (median)"),
        (panels[1], "rss_mb", "MB", "Peak RSS"),
    ):
        for x, name in enumerate(names):
            group = by_scenario[name]
            for i, row in enumerate(group):
                position = x + (i - (len(group) - 1) / 2) * width
                bars = axes.bar(position, row[key], width * 0.92, color=COLORS.get(row["tool"]),
                                label=tool_label(row["tool"], fields))
                handles.setdefault(row["tool"], bars)
                # On a white ground, above the limit line that may pass behind them.
                axes.bar_label(bars, [value_label(row[key], unit)], padding=2, fontsize=8, zorder=4,
                               bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
            limit = scenarios.get(name, (None, None))[1]
            if unit == "MB" and limit:
                handles["limit"] = axes.hlines(limit, x - 0.45, x + 0.45, colors="black",
                                               linestyles="dashed", linewidth=1,
                                               label="memory limit")
        axes.set_title(heading)
        axes.set_ylabel("seconds" if unit == "s" else unit)
        axes.set_xticks(range(len(names)), ticks)
        axes.margins(y=0.1)
        axes.set_ylim(bottom=0)
        axes.grid(axis="y", alpha=0.3)
        axes.set_axisbelow(True)
        axes.spines[["top", "right"]].set_visible(False)

    order = [tool for tool in tools if tool in handles] + (["limit"] if "limit" in handles else [])
    figure.legend([handles[key] for key in order],
                  [handles[key].get_label() for key in order],
                  loc="outside lower center", ncols=len(order), frameon=False)
    figure.suptitle(title_of(fields, rows))
    for suffix, options in ((".svg", {"metadata": {"Date": None}}), (".png", {"dpi": 150})):
        path = results / f"chart{suffix}"
        figure.savefig(path, **options)
        print(path)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a bench/results/<UTC time> directory")
    args = parser.parse_args()
    if not (args.results / "runs.tsv").is_file():
        parser.error(f"{args.results} has no runs.tsv")
    sys.exit(draw(args.results))


if __name__ == "__main__":
    main()
