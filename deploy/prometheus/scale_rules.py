#!/usr/bin/env python3
"""Time-scaled copy of a Prometheus rule file, for watching the rules fire
against a live daemon in seconds instead of hours (tests/live_prometheus.rs).

    scale_rules.py --factor 60 alerts.yaml OUT.yaml   # write the copy, then check it
    scale_rules.py --factor 60 --check alerts.yaml OUT.yaml   # only check

Every duration is divided by FACTOR: `for:`, range selectors (`[15m]`),
subqueries (`[30m:1m]`) and `offset`; so are the thresholds of expressions
about a `*_seconds` metric (`... _age_seconds) > 900`), which are durations
too. With --factor 60, minutes become seconds.

The check parses both files and fails unless they differ only there: same
groups, same rules in the same order, same names, labels and annotations,
every duration exactly scaled, and the expressions equal once durations are
normalized.
"""

import argparse
import re
import sys

import yaml

UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 604_800_000, "y": 31_536_000_000}
DURATION = r"(?:\d+(?:ms|s|m|h|d|w|y))+"
DURATION_RE = re.compile(r"^" + DURATION + r"$")
# A range selector or subquery `[5m]`, `[30m:1m]`, `[1h:]`, or `offset 1h`.
RANGE_RE = re.compile(r"\[(" + DURATION + r")(?::(" + DURATION + r")?)?\]")
OFFSET_RE = re.compile(r"\boffset\s+(" + DURATION + r")\b")
# A number compared with: `> 900`, `>= 3600`, `< 0.5` (not `==`, `!=`).
THRESHOLD_RE = re.compile(r"((?<![=!<>])(?:>=|<=|>|<)(?:\s*bool)?\s*)(\d+(?:\.\d+)?)(?![\w.])")


def to_ms(text):
    if not DURATION_RE.match(text):
        raise ValueError("not a duration: %r" % text)
    return sum(int(n) * UNITS_MS[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text))


def from_ms(ms):
    if ms % 1000 == 0:
        return "%ds" % (ms // 1000)
    return "%dms" % ms


def scale_duration(text, factor):
    ms = to_ms(text)
    if ms % factor:
        raise ValueError("%s is not a whole number of ms when divided by %d" % (text, factor))
    return from_ms(ms // factor)


def about_seconds(expr):
    return re.search(r"_seconds(?:_bucket|_sum|_count)?\b", expr) is not None


def scale_expr(expr, factor):
    def ranges(m):
        out = "[" + scale_duration(m.group(1), factor)
        if m.group(0).find(":") >= 0:
            out += ":" + (scale_duration(m.group(2), factor) if m.group(2) else "")
        return out + "]"

    expr = RANGE_RE.sub(ranges, expr)
    expr = OFFSET_RE.sub(lambda m: "offset " + scale_duration(m.group(1), factor), expr)
    if about_seconds(expr):
        def threshold(m):
            value = float(m.group(2)) / factor
            text = ("%d" % value) if value == int(value) else repr(value)
            return m.group(1) + text
        expr = THRESHOLD_RE.sub(threshold, expr)
    return expr


def scale(doc, factor):
    for group in doc["groups"]:
        if "interval" in group:
            group["interval"] = scale_duration(str(group["interval"]), factor)
        for rule in group["rules"]:
            rule["expr"] = scale_expr(rule["expr"], factor)
            if "for" in rule:
                rule["for"] = scale_duration(str(rule["for"]), factor)
            if "keep_firing_for" in rule:
                rule["keep_firing_for"] = scale_duration(str(rule["keep_firing_for"]), factor)
    return doc


def normalize(expr):
    """An expression with its durations (and duration thresholds) replaced."""
    seconds = about_seconds(expr)
    expr = RANGE_RE.sub("[D]", expr)
    expr = OFFSET_RE.sub("offset D", expr)
    if seconds:
        expr = THRESHOLD_RE.sub(lambda m: m.group(1) + "N", expr)
    return " ".join(expr.split())


def durations(expr):
    out = [to_ms(d) for m in RANGE_RE.finditer(expr) for d in m.groups() if d]
    out += [to_ms(m.group(1)) for m in OFFSET_RE.finditer(expr)]
    if about_seconds(expr):
        out += [float(m.group(2)) for m in THRESHOLD_RE.finditer(expr)]
    return out


def check(original, scaled, factor):
    """Problems found, as text; empty when `scaled` is `original` scaled."""
    problems = []
    og, sg = original.get("groups", []), scaled.get("groups", [])
    if [g.get("name") for g in og] != [g.get("name") for g in sg]:
        return ["the groups differ: %s / %s" % ([g.get("name") for g in og], [g.get("name") for g in sg])]
    for o_group, s_group in zip(og, sg):
        o_rules, s_rules = o_group.get("rules", []), s_group.get("rules", [])
        if len(o_rules) != len(s_rules):
            problems.append("group %s: %d rules, %d scaled" % (o_group["name"], len(o_rules), len(s_rules)))
            continue
        for o, s in zip(o_rules, s_rules):
            name = o.get("alert") or o.get("record")
            if set(o) != set(s):
                problems.append("%s: fields %s / %s" % (name, sorted(o), sorted(s)))
            for field in set(o) | set(s):
                a, b = o.get(field), s.get(field)
                if field in ("for", "keep_firing_for"):
                    if to_ms(str(a)) != to_ms(str(b)) * factor:
                        problems.append("%s: %s %s is not %s / %d" % (name, field, b, a, factor))
                elif field == "expr":
                    if normalize(a) != normalize(b):
                        problems.append("%s: expressions differ beyond durations:\n  %s\n  %s" % (name, a, b))
                    elif [x / factor for x in durations(a)] != durations(b):
                        problems.append("%s: durations %s are not %s / %d" % (name, durations(b), durations(a), factor))
                elif a != b:
                    problems.append("%s: %s differs: %r / %r" % (name, field, a, b))
    return problems


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions stay readable block scalars."""


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--factor", type=int, required=True)
    p.add_argument("--check", action="store_true", help="only check OUT against RULES")
    p.add_argument("rules")
    p.add_argument("out")
    a = p.parse_args()
    if a.factor < 1:
        sys.exit("--factor must be at least 1")
    with open(a.rules) as f:
        original = yaml.safe_load(f)
    if not a.check:
        scaled = scale(yaml.safe_load(open(a.rules)), a.factor)
        with open(a.out, "w") as f:
            f.write("# Generated by deploy/prometheus/scale_rules.py --factor %d from %s:\n"
                    "# every duration divided by %d. Do not edit.\n" % (a.factor, a.rules, a.factor))
            yaml.dump(scaled, f, Dumper=_Dumper, sort_keys=False, width=1000)
    with open(a.out) as f:
        scaled = yaml.safe_load(f)
    problems = check(original, scaled, a.factor)
    if problems:
        sys.exit("%s is not %s with durations divided by %d:\n%s" % (a.out, a.rules, a.factor, "\n".join(problems)))
    n = sum(len(g["rules"]) for g in scaled["groups"])
    print("%s: %d rules, durations divided by %d, nothing else changed" % (a.out, n, a.factor))


if __name__ == "__main__":
    main()
