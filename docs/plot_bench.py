#!/usr/bin/env python3
"""Draws target/bench-throughput.json (written by `cargo bench --bench
throughput`) as an SVG: per broker, each case's rate against its ceiling and
its peak memory, with the goal lines of issue #18. No dependencies.

    python3 docs/plot_bench.py [target/bench-throughput.json] [docs/bench-throughput.svg]
"""
import json
import sys
from html import escape

src = sys.argv[1] if len(sys.argv) > 1 else "target/bench-throughput.json"
out = sys.argv[2] if len(sys.argv) > 2 else "docs/bench-throughput.svg"
runs = json.load(open(src))

ROW_H, LABEL_W, BAR_W, GAP = 22, 300, 330, 40
rows = sum(len(r["cases"]) + 2 for r in runs)
width = LABEL_W + 2 * BAR_W + GAP + 40
height = rows * ROW_H + 116
svg = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
    'font-family="sans-serif" font-size="12">',
    f'<rect width="{width}" height="{height}" fill="white"/>',
]
x_ratio = LABEL_W
x_mem = LABEL_W + BAR_W + GAP
svg.append(f'<text x="{x_ratio}" y="20" font-weight="bold">rate / ceiling (1.0 = ceiling; latency: p99 / bound)</text>')
svg.append(f'<text x="{x_mem}" y="20" font-weight="bold">peak RSS, MiB (goal 64)</text>')
# null when a row measured nothing (NaN in Rust).
max_ratio = max(2.0, max(c["ratio_to_ceiling"] or 0.0 for r in runs for c in r["cases"]))
max_mem = 160.0
y = 40
for run in runs:
    svg.append(f'<text x="8" y="{y + 15}" font-weight="bold">{escape(run["broker"])}</text>')
    y += ROW_H
    for case in run["cases"]:
        label = f'{case["topic"]}: {case["case"]}'
        met = case.get("met")
        colour = "#4c9f50" if met else ("#d9534f" if met is False else "#8a8a8a")
        ratio = case["ratio_to_ceiling"] or 0.0
        svg.append(f'<text x="8" y="{y + 15}">{escape(label)}</text>')
        w = BAR_W * min(ratio, max_ratio) / max_ratio
        svg.append(f'<rect x="{x_ratio}" y="{y + 4}" width="{w:.1f}" height="{ROW_H - 8}" fill="{colour}"/>')
        svg.append(f'<text x="{x_ratio + w + 4:.1f}" y="{y + 15}">{ratio:.2f}</text>')
        mem = case.get("peak_rss_mib")
        if mem:
            w = BAR_W * min(mem, max_mem) / max_mem
            svg.append(f'<rect x="{x_mem}" y="{y + 4}" width="{w:.1f}" height="{ROW_H - 8}" fill="#5b8bd0"/>')
            svg.append(f'<text x="{x_mem + w + 4:.1f}" y="{y + 15}">{mem:.0f}</text>')
        y += ROW_H
    y += ROW_H
# The ceiling (ratio 1) and the memory goal as lines over the whole height.
one = x_ratio + BAR_W / max_ratio
goal = x_mem + BAR_W * 64 / max_mem
for x in (one, goal):
    svg.append(f'<line x1="{x:.1f}" y1="28" x2="{x:.1f}" y2="{y}" stroke="black" stroke-dasharray="4 3"/>')
svg.append(
    f'<text x="8" y="{height - 56}" fill="#555">green: the row met its goal of issue #18; '
    "red: not met; grey: a ceiling, or a row with no goal.</text>"
)
svg.append(
    f'<text x="8" y="{height - 40}" fill="#555">Ratios: daemon rows against the plain consumer '
    "on the same topic; API-bound against the API ceiling; replicas against one replica;</text>"
)
svg.append(
    f'<text x="8" y="{height - 24}" fill="#555">latency: p99 from produce to the API call '
    "against its bound (linger + 2 x API latency), 1.0 at most to meet it;</text>"
)
svg.append(
    f'<text x="8" y="{height - 8}" fill="#555">outage: the drain after the API came back '
    "against the plain consumer (its goal: memory flat while the API was down).</text>"
)
svg.append("</svg>")
open(out, "w").write("\n".join(svg) + "\n")
print(f"written: {out}")
