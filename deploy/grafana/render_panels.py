#!/usr/bin/env python3
"""Draws each panel of the Grafana dashboard from a Prometheus, roughly as
Grafana would: one PNG per panel plus a contact sheet of them all, so a
person can look at what the dashboard shows without a Grafana.

    # after LIVE_PROMETHEUS_KEEP=1 cargo test --test live_prometheus:
    render_panels.py --run target/tmp/live_prometheus/run.json --out /tmp/panels
    # against any Prometheus, the last hour:
    render_panels.py --prometheus http://localhost:9090 --last 3600 --out /tmp/panels

With --run, a Prometheus is started on the test's kept TSDB (Debian's
`prometheus` binary) and the phases of the run are marked on every graph.

What is honoured from the dashboard: the queries and legends, the unit
(s, ops, reqps, percentunit, bytes, short), stacking, a right axis from
overrides, step lines, fixed colours and dashes from overrides, threshold
lines (thresholdsStyle), min/max, and for stat panels the last value with its
threshold colour. Grafana variables: $region is `.*`, $__rate_interval is
--rate-interval (default 5s, Grafana's for a 1 s scrape), $__range the range.
Needs matplotlib (pip install matplotlib).
"""

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

COLORS = {"green": "#56a64b", "red": "#e02f44", "yellow": "#f2cc0c", "orange": "#ff9830",
          "blue": "#3274d9", "purple": "#a352cc"}


def fetch(base, path, params):
    url = base + path + "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError("%s: %s" % (url, body))
    return body["data"]


def legend(fmt, labels, expr):
    if not fmt:
        return "{" + ",".join('%s="%s"' % kv for kv in sorted(labels.items())) + "}" if labels else expr[:40]
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def human(v, unit):
    """A value as Grafana shows it for the unit."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    if unit == "percentunit":
        return "%.1f%%" % (v * 100)
    if unit == "s":
        a = abs(v)
        if a == 0:
            return "0 s"
        if a < 1:
            return "%.0f ms" % (v * 1000)
        if a < 60:
            return "%.1f s" % v
        if a < 3600:
            return "%.1f min" % (v / 60)
        if a < 86400:
            return "%.1f hour" % (v / 3600)
        return "%.1f day" % (v / 86400)
    if unit == "bytes":
        for n, u in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(v) >= n:
                return "%.1f %s" % (v / n, u)
        return "%.0f B" % v
    suffix = {"ops": " ops/s", "reqps": " req/s"}.get(unit, "")
    a = abs(v)
    if a >= 1e6:
        return "%.1fM%s" % (v / 1e6, suffix)
    if a >= 1e3:
        return "%.1fK%s" % (v / 1e3, suffix)
    if a == int(a):
        return "%d%s" % (v, suffix)
    return "%.2f%s" % (v, suffix)


def override_props(panel, name):
    out = {}
    for o in panel.get("fieldConfig", {}).get("overrides", []):
        m = o.get("matcher", {})
        hit = (m.get("id") == "byName" and m.get("options") == name) or (
            m.get("id") == "byRegexp" and re.fullmatch(m.get("options", ""), name))
        if hit:
            for p in o.get("properties", []):
                out[p["id"]] = p["value"]
    return out


def threshold_color(steps, v):
    color = "green"
    for s in steps:
        if s.get("value") is None or (v is not None and not math.isnan(v) and v >= s["value"]):
            color = s["color"]
    return COLORS.get(color, color)


def draw_panel(ax, panel, series, start, end, phases):
    title = panel["title"]
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit", "short")
    custom = defaults.get("custom", {})
    fmt = FuncFormatter(lambda v, _: human(v, unit))
    if panel["type"] == "stat":
        steps = defaults.get("thresholds", {}).get("steps", [])
        text_mode = panel.get("options", {}).get("textMode", "auto")
        lines = []
        for name, points in series:
            vals = [v for _, v in points if not math.isnan(v)]
            last = vals[-1] if vals else float("nan")
            lines.append((name, last, [t for t, _ in points], [v for _, v in points]))
        color = threshold_color(steps, lines[0][1] if lines else float("nan"))
        ax.set_facecolor(color)
        for _, _, ts, vs in lines[:1]:
            ax2 = ax.twinx()
            ax2.fill_between(ts, vs, alpha=0.25, color="white", step="post")
            ax2.set_axis_off()
        shown = "\n".join(
            (name if text_mode == "name" else human(last, unit)) for name, last, _, _ in lines) or "No data"
        ax.text(0.5, 0.5, shown, ha="center", va="center", fontsize=20 if len(lines) <= 1 else 12,
                color="white", weight="bold", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    stacked = custom.get("stacking", {}).get("mode", "none") == "normal"
    right = None
    right_max = None
    base = None
    handles = []
    for i, (name, points) in enumerate(series):
        props = override_props(panel, name)
        target = ax
        if props.get("custom.axisPlacement") == "right":
            if right is None:
                right = ax.twinx()
                right_unit = props.get("unit", "short")
                right.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v, right_unit)))
                right_max = props.get("max")
            target = right
        ts = [t for t, _ in points]
        vs = [v for _, v in points]
        color = None
        c = props.get("color", {})
        if c.get("mode") == "fixed":
            color = COLORS.get(c.get("fixedColor"), c.get("fixedColor"))
        style = "--" if props.get("custom.lineStyle", {}).get("fill") == "dash" else "-"
        step = props.get("custom.lineInterpolation") == "stepAfter"
        vals = [v for v in vs if not math.isnan(v)]
        u = props.get("unit", unit)
        label = "%s  (last %s, max %s)" % (
            name, human(vals[-1], u) if vals else "-", human(max(vals), u) if vals else "-")
        if stacked and target is ax:
            if base is None:
                base = {t: 0.0 for t in ts}
            lower = [base.get(t, 0.0) for t in ts]
            upper = [lo + (0.0 if math.isnan(v) else v) for lo, v in zip(lower, vs)]
            line, = target.plot(ts, upper, style, lw=1, color=color, label=label)
            target.fill_between(ts, lower, upper, alpha=0.3, color=line.get_color())
            for t, u in zip(ts, upper):
                base[t] = u
        else:
            line, = target.plot(ts, vs, style, lw=1.2, color=color, label=label,
                                drawstyle="steps-post" if step else "default")
            fill = props.get("custom.fillOpacity", custom.get("fillOpacity", 0))
            if fill:
                target.fill_between(ts, vs, alpha=fill / 100.0 * 0.5, color=line.get_color(),
                                    step="post" if step else None)
        handles.append(line)
    if right is not None:
        # After plotting: set_ylim stops autoscaling.
        right.set_ylim(bottom=0, top=right_max * 1.05 if right_max is not None else None)
    if custom.get("thresholdsStyle", {}).get("mode") == "line":
        for s in defaults.get("thresholds", {}).get("steps", []):
            if s.get("value") is not None:
                ax.axhline(s["value"], ls="--", lw=1, color=COLORS.get(s["color"], s["color"]))
    left_max = [override_props(panel, n).get("max") for n, _ in series
                if override_props(panel, n).get("custom.axisPlacement") != "right"]
    if left_max and all(m is not None for m in left_max):
        ax.set_ylim(top=max(left_max) * 1.05)
    if "min" in defaults:
        ax.set_ylim(bottom=defaults["min"])
    if "max" in defaults:
        ax.set_ylim(top=defaults["max"])
    for name, at in phases:
        if start < at < end:
            ax.axvline(at, color="grey", lw=0.6, ls=":")
            ax.text(at, 1.0, " " + name, transform=ax.get_xaxis_transform(), fontsize=6,
                    va="top", color="grey", rotation=90)
    ax.yaxis.set_major_formatter(fmt)
    ax.set_xlim(start, end)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "%+.0fs" % (v - start)))
    ax.set_title(title + (" (stacked)" if stacked else ""), fontsize=10)
    ax.grid(alpha=0.3)
    if handles:
        ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.08 if right else 1.01, 1),
                  borderaxespad=0, ncol=1 + len(handles) // 22)
    else:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", transform=ax.transAxes)


def start_prometheus(data_dir):
    binary = shutil.which("prometheus")
    if not binary:
        sys.exit("prometheus is not installed (apt-get install --no-install-recommends prometheus)")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    conf = tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False)
    conf.write("global:\n  scrape_interval: 1m\n")
    conf.close()
    proc = subprocess.Popen(
        [binary, "--config.file=" + conf.name, "--storage.tsdb.path=" + data_dir,
         "--web.listen-address=127.0.0.1:%d" % port, "--log.level=error",
         "--storage.tsdb.retention.time=3650d"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = "http://127.0.0.1:%d" % port
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/-/ready", timeout=1)
            return proc, base
        except Exception:
            time.sleep(0.2)
    proc.kill()
    sys.exit("prometheus did not start on " + data_dir)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dashboard", default=os.path.join(os.path.dirname(__file__), "clevertap-deleter.json"))
    p.add_argument("--prometheus", help="base URL of a running Prometheus")
    p.add_argument("--run", help="run.json of tests/live_prometheus.rs (LIVE_PROMETHEUS_KEEP=1)")
    p.add_argument("--last", type=float, default=3600, help="seconds before now (without --run)")
    p.add_argument("--rate-interval", default="5s")
    p.add_argument("--step", type=float, default=0, help="query step in seconds (default: range / 300)")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    proc = None
    phases = []
    if a.run:
        run = json.load(open(a.run))
        start, end = run["start"], run["end"]
        phases = [(n, t) for n, t in run["phases"] if n not in ("start", "end")]
        if not a.prometheus:
            proc, a.prometheus = start_prometheus(run["prometheus_data"])
    else:
        if not a.prometheus:
            sys.exit("--prometheus or --run")
        end = time.time()
        start = end - a.last
    step = a.step or max(1.0, (end - start) / 300)
    dashboard = json.load(open(a.dashboard))
    os.makedirs(a.out, exist_ok=True)
    panels = [x for x in dashboard["panels"] if x["type"] != "row"]
    try:
        rendered = []
        for panel in panels:
            series = []
            for t in panel.get("targets", []):
                expr = (t["expr"].replace("$__rate_interval", a.rate_interval)
                        .replace("$__range", "%ds" % math.ceil(end - start))
                        .replace("$region", ".*"))
                data = fetch(a.prometheus, "/api/v1/query_range",
                             {"query": expr, "start": start, "end": end, "step": step})
                for r in data["result"]:
                    pts = [(float(ts), float(v)) for ts, v in r["values"]]
                    series.append((legend(t.get("legendFormat"), r["metric"], expr), pts))
            rendered.append((panel, series))
            fig, ax = plt.subplots(figsize=(11, 3.6) if panel["type"] != "stat" else (3.2, 2.2))
            draw_panel(ax, panel, series, start, end, phases)
            fig.tight_layout()
            name = "%02d-%s.png" % (panel["id"], re.sub(r"[^a-z0-9]+", "-", panel["title"].lower()).strip("-"))
            fig.savefig(os.path.join(a.out, name), dpi=90)
            plt.close(fig)
        # A contact sheet: the stats, then the graphs two by two.
        stats = [r for r in rendered if r[0]["type"] == "stat"]
        graphs = [r for r in rendered if r[0]["type"] != "stat"]
        rows = math.ceil(len(stats) / 6) + math.ceil(len(graphs) / 2)
        fig = plt.figure(figsize=(24, 3.4 * rows))
        grid = fig.add_gridspec(rows, 6, hspace=0.6, wspace=0.9)
        for i, (panel, series) in enumerate(stats):
            draw_panel(fig.add_subplot(grid[i // 6, i % 6]), panel, series, start, end, phases)
        first = math.ceil(len(stats) / 6)
        for i, (panel, series) in enumerate(graphs):
            r, c = first + i // 2, (i % 2) * 3
            draw_panel(fig.add_subplot(grid[r, c:c + 2]), panel, series, start, end, phases)
        fig.savefig(os.path.join(a.out, "dashboard.png"), dpi=60, bbox_inches="tight")
        plt.close(fig)
        print("%d panels drawn in %s" % (len(rendered), a.out))
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
