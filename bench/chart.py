#!/usr/bin/env python3
"""Draws throughput bars (log scale) from `nexusd bench --json` output or
from bench/compare.sh's compare.json, as one SVG with a panel per file.

    python3 bench/chart.py OUT.svg RESULT.json [RESULT.json ...]

No dependencies beyond the standard library, so it runs wherever the
benchmarks do. docs/performance.svg is made this way from the files in
docs/results/.
"""

import json
import math
import sys
from html import escape

WIDTH = 760
LABEL_W = 150
VALUE_W = 110
BAR_H = 22
GAP = 6
PANEL_TITLE_H = 28
COLORS = {"nexusd": "#2f6fb0"}
OTHER = "#9aa5b1"


def short(setup):
    return setup.split(":")[0].strip()


def load(path):
    with open(path) as f:
        data = json.load(f)
    runs = [(short(r["setup"]), float(r["ops_per_sec"]), r.get("errors", 0)) for r in data["runs"]]
    title = data.get("workload", path)
    bits = [f"{title}"]
    if title == "batch" and "batch_size" in data:
        bits = [f"batch of {data['batch_size']} inserts (an op is a batch)"]
    if "clients" in data:
        bits.append(f"{data['clients']} clients")
    if "processes" in data:
        bits.append(f"over {data['processes']} processes")
    return ", ".join(bits), runs


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    out, paths = argv[1], argv[2:]
    panels = [load(p) for p in paths]
    top = max(v for _, runs in panels for _, v, _ in runs)
    low = min(v for _, runs in panels for _, v, _ in runs if v > 0)
    lo_exp = math.floor(math.log10(max(low, 1)))
    hi_exp = math.ceil(math.log10(top))
    plot_w = WIDTH - LABEL_W - VALUE_W

    def x(v):
        v = max(v, 10**lo_exp)
        return LABEL_W + plot_w * (math.log10(v) - lo_exp) / max(hi_exp - lo_exp, 1)

    parts = []
    y = 40
    for title, runs in panels:
        parts.append(f'<text x="8" y="{y + 18}" font-weight="bold">{escape(title)}</text>')
        y += PANEL_TITLE_H
        for name, v, errors in runs:
            color = COLORS.get(name, OTHER)
            parts.append(f'<text x="{LABEL_W - 8}" y="{y + 16}" text-anchor="end">{escape(name)}</text>')
            parts.append(f'<rect x="{LABEL_W}" y="{y}" width="{x(v) - LABEL_W:.1f}" height="{BAR_H}" fill="{color}"/>')
            note = f"{v:,.0f}/s" + (f" ({errors:,} errors)" if errors else "")
            parts.append(f'<text x="{x(v) + 6:.1f}" y="{y + 16}">{escape(note)}</text>')
            y += BAR_H + GAP
        y += 14
    axis_y = y
    for e in range(lo_exp, hi_exp + 1):
        gx = x(10**e)
        parts.append(f'<line x1="{gx:.1f}" y1="34" x2="{gx:.1f}" y2="{axis_y}" stroke="#ddd"/>')
        parts.append(f'<text x="{gx:.1f}" y="{axis_y + 16}" text-anchor="middle" fill="#555">{10**e:,}</text>')
    height = axis_y + 30
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="13">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        '<text x="8" y="22" font-size="15" font-weight="bold">operations per second '
        "(log scale; longer is better)</text>",
    ]
    # Grid lines first, so bars and labels draw over them.
    grid = [p for p in parts if p.startswith("<line")]
    rest = [p for p in parts if not p.startswith("<line")]
    svg += grid + rest + ["</svg>"]
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main(sys.argv)
