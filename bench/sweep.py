#!/usr/bin/env python3
"""How cost grows with clients: `nexusd bench` at 1, 4, 16, 64, 256 and
1,024 clients (over min(8, clients) processes), for single-row durable
inserts and point reads, each point on a fresh daemon.

    python3 bench/sweep.py [--duration 5] [--nexusd target/release/nexusd]
                           [--json docs/results/sweep.json]
    python3 bench/sweep.py --chart docs/sweep.svg docs/results/sweep.json

Prints a table: throughput, p99, daemon CPU per request, daemon peak RSS.
--chart draws those four against clients (log scale) as one SVG, with the
standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
from html import escape

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLIENTS = [1, 4, 16, 64, 256, 1024]
WORKLOADS = ["insert", "point-read"]


def run(nexusd: str, workload: str, clients: int, duration: float) -> dict:
    processes = min(8, clients)
    out = subprocess.run(
        [nexusd, "bench", "--workload", workload, "--clients", str(clients),
         "--processes", str(processes), "--duration", str(duration), "--json"],
        capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])["runs"][0]
    ops = max(r["ops"], 1)
    return {
        "workload": workload, "clients": clients, "processes": processes,
        "ops_per_sec": r["ops_per_sec"], "p99_ms": r["p99_ms"], "errors": r["errors"],
        "daemon_cpu_us_per_op": r["daemon_cpu_s"] / ops * 1e6,
        "daemon_peak_rss_mib": r["daemon_peak_rss_mib"],
    }


def table(points: list) -> str:
    lines = ["| workload | clients | ops/s | p99 ms | errors | daemon CPU us/op | peak RSS MiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in points:
        lines.append(f"| {p['workload']} | {p['clients']:,} | {p['ops_per_sec']:,.0f} | "
                     f"{p['p99_ms']:.2f} | {p['errors']} | {p['daemon_cpu_us_per_op']:.1f} | "
                     f"{p['daemon_peak_rss_mib']:.1f} |")
    return "\n".join(lines)


def chart(points: list) -> str:
    """Four panels (ops/s, p99, CPU per op, RSS) against clients, one line
    per workload."""
    metrics = [("ops_per_sec", "requests/s"), ("p99_ms", "p99 latency, ms"),
               ("daemon_cpu_us_per_op", "daemon CPU per request, us"),
               ("daemon_peak_rss_mib", "daemon peak RSS, MiB")]
    colors = {"insert": "#2f6fb0", "point-read": "#d9822b"}
    pw, ph, pad = 360, 220, 48
    width, height = 2 * pw + 20, 2 * ph + 60
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    xs = [math.log(c) for c in CLIENTS]
    for i, (key, title) in enumerate(metrics):
        ox, oy = (i % 2) * (pw + 20), (i // 2) * (ph + 20) + 30
        top = max(p[key] for p in points) * 1.1 or 1
        svg.append(f'<text x="{ox + pad}" y="{oy - 8}" font-weight="bold">{escape(title)}</text>')
        svg.append(f'<rect x="{ox + pad}" y="{oy}" width="{pw - pad - 10}" height="{ph - 40}" '
                   f'fill="none" stroke="#ccc"/>')
        sx = lambda c: ox + pad + (math.log(c) - xs[0]) / (xs[-1] - xs[0]) * (pw - pad - 10)  # noqa: E731
        sy = lambda v: oy + (ph - 40) - v / top * (ph - 40)  # noqa: E731
        for c in CLIENTS:
            svg.append(f'<text x="{sx(c):.0f}" y="{oy + ph - 26}" text-anchor="middle">{c}</text>')
        svg.append(f'<text x="{ox + pad - 4}" y="{oy + 10}" text-anchor="end">{top:,.0f}</text>')
        svg.append(f'<text x="{ox + pad - 4}" y="{oy + ph - 40}" text-anchor="end">0</text>')
        for w in WORKLOADS:
            pts = sorted((p["clients"], p[key]) for p in points if p["workload"] == w)
            path = " ".join(f"{sx(c):.1f},{sy(v):.1f}" for c, v in pts)
            svg.append(f'<polyline points="{path}" fill="none" stroke="{colors[w]}" '
                       f'stroke-width="2"/>')
    svg.append(f'<text x="{pad}" y="{height - 8}">clients (log scale); '
               f'<tspan fill="{colors["insert"]}">insert</tspan>, '
               f'<tspan fill="{colors["point-read"]}">point read</tspan></text>')
    svg.append("</svg>")
    return "\n".join(svg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--nexusd", default=str(ROOT / "target" / "release" / "nexusd"))
    ap.add_argument("--json", type=pathlib.Path)
    ap.add_argument("--chart", nargs=2, metavar=("OUT_SVG", "SWEEP_JSON"))
    args = ap.parse_args()
    if args.chart:
        points = json.loads(pathlib.Path(args.chart[1]).read_text())["points"]
        pathlib.Path(args.chart[0]).write_text(chart(points))
        return
    points = []
    for w in WORKLOADS:
        for c in CLIENTS:
            print(f"{w}, {c} clients...", file=sys.stderr, flush=True)
            points.append(run(args.nexusd, w, c, args.duration))
    print(table(points))
    if args.json:
        args.json.write_text(json.dumps({"points": points}, indent=1))


if __name__ == "__main__":
    main()
