#!/usr/bin/env python3
"""Turns criterion's results (target/criterion) into the README's tables and
chart: ns per operation (median of the samples, divided by the operations
per iteration) and ratios against the comparator measured in the same run.

    python3 benches/report.py                      # tables of the last run
    python3 benches/report.py --save run1.json     # keep the last run's figures
    python3 benches/report.py --runs run*.json --svg benches/chart.svg
                                                   # median of several runs

Each ratio is the quotient of the two medians shown, with the range of
the per-run ratios beside it. The fixed and sqpoll groups (fixed.rs,
sqpoll.rs) have no single comparator: their pairs of contenders (PAIRS)
get a ratio table of their own.
Standard library only.
"""
import argparse
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def medians():
    """{(group, function, param): median ns per operation}, where the
    operations per iteration are the benchmark's declared throughput."""
    out = {}
    for est in ROOT.glob("*/*/*/new/estimates.json"):
        bench = json.loads((est.parent / "benchmark.json").read_text())
        ops = (bench.get("throughput") or {}).get("Elements", 1)
        median = json.loads(est.read_text())["median"]["point_estimate"]
        out[(bench["group_id"], bench["function_id"], bench["value_str"])] = median / ops
    return out


# The chart: ns/op against batch size, one panel per benchmark group.
PANELS = [
    ("nop", "nop", ["ringfence", "ringfence-batch", "io-uring", "syscall"]),
    ("readv", "4 KiB readv, tmpfs",
     ["ringfence", "ringfence-batch", "io-uring", "io-uring-reused", "preadv"]),
]
COLORS = {
    "ringfence": "#d62728",
    "ringfence-batch": "#ff7f0e",
    "io-uring": "#1f77b4",
    "io-uring-reused": "#17becf",
    "syscall": "#7f7f7f",
    "preadv": "#7f7f7f",
}
LABELS = {
    "ringfence": "ringfence, add_* per op",
    "ringfence-batch": "ringfence, OpBatch",
    "io-uring": "io-uring crate 0.7",
    "io-uring-reused": "io-uring crate, iovecs reused",
    "syscall": "blocking syscall (getppid)",
    "preadv": "blocking preadv",
}


def svg_chart(results):
    import math

    width, height, pad = 460, 320, 56
    parts = []
    for n, (group, title, functions) in enumerate(PANELS):
        x0 = n * width
        params = sorted({int(p) for g, _, p in results if g == group})
        values = [results[(group, f, str(p))] for f in functions for p in params
                  if (group, f, str(p)) in results]
        if not params or not values:
            continue
        lo, hi = math.log10(min(values) * 0.8), math.log10(max(values) * 1.25)
        xs = {p: x0 + pad + i * (width - 2 * pad) / max(len(params) - 1, 1)
              for i, p in enumerate(params)}

        def y(v):
            return height - pad - (math.log10(v) - lo) / (hi - lo) * (height - 2 * pad)

        parts.append(f'<text x="{x0 + width / 2}" y="24" text-anchor="middle" '
                     f'font-weight="bold">{title}</text>')
        parts.append(f'<line x1="{x0 + pad}" y1="{height - pad}" x2="{x0 + width - pad}" '
                     f'y2="{height - pad}" stroke="black"/>')
        parts.append(f'<line x1="{x0 + pad}" y1="{pad}" x2="{x0 + pad}" y2="{height - pad}" '
                     f'stroke="black"/>')
        for p, x in xs.items():
            parts.append(f'<text x="{x}" y="{height - pad + 18}" text-anchor="middle">{p}</text>')
        parts.append(f'<text x="{x0 + width / 2}" y="{height - 12}" text-anchor="middle">'
                     f'batch size (operations per submit)</text>')
        for tick in [50, 100, 200, 500, 1000, 2000]:
            if lo <= math.log10(tick) <= hi:
                parts.append(f'<text x="{x0 + pad - 6}" y="{y(tick) + 4}" text-anchor="end">'
                             f'{tick}</text>')
                parts.append(f'<line x1="{x0 + pad}" y1="{y(tick)}" x2="{x0 + width - pad}" '
                             f'y2="{y(tick)}" stroke="#ddd"/>')
        parts.append(f'<text x="{x0 + 14}" y="{height / 2}" transform="rotate(-90 {x0 + 14} '
                     f'{height / 2})" text-anchor="middle">ns per operation (log)</text>')
        for k, f in enumerate(functions):
            points = [(xs[p], y(results[(group, f, str(p))])) for p in params
                      if (group, f, str(p)) in results]
            if not points:
                continue
            color = COLORS[f]
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                         f'stroke-width="2"/>')
            for px, py in points:
                parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}"/>')
            ly = pad - 14 + k * 14
            parts.append(f'<line x1="{x0 + width - pad - 150}" y1="{ly}" '
                         f'x2="{x0 + width - pad - 135}" y2="{ly}" stroke="{color}" '
                         f'stroke-width="2"/>')
            parts.append(f'<text x="{x0 + width - pad - 130}" y="{ly + 4}" font-size="10">'
                         f'{LABELS[f]}</text>')
    body = "\n".join(parts)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * len(PANELS)}" '
            f'height="{height}" font-family="sans-serif" font-size="11">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n')


# The comparator of each group, for the ratio columns. For readv it is the
# io-uring crate doing ringfence's work (a boxed iovec array per read);
# io-uring-reused, with one array for every round, is shown against it too.
COMPARATOR = {"nop": "io-uring", "readv": "io-uring", "in_flight": "io-uring",
              "threads": "io-uring-mutex"}


# Groups whose contenders are compared pairwise rather than against one
# comparator: (label, numerator, denominator), printed as a second table.
# fixed.rs: each form against the io-uring crate's, and read_fixed against
# readv within each library. sqpoll.rs: each SQPOLL loop against the plain
# ring of its library, and each loop against the io-uring crate's.
PAIRS = {
    "fixed": [
        ("readv: ringfence / io-uring", "ringfence-readv", "io-uring-readv"),
        ("read_fixed: ringfence / io-uring", "ringfence-read-fixed", "io-uring-read-fixed"),
        ("ringfence: read_fixed / readv", "ringfence-read-fixed", "ringfence-readv"),
        ("io-uring: read_fixed / readv", "io-uring-read-fixed", "io-uring-readv"),
    ],
    "sqpoll": [
        ("ringfence: SQPOLL / plain", "ringfence-sqpoll", "ringfence"),
        ("ringfence: SQPOLL polling / plain", "ringfence-sqpoll-polling", "ringfence"),
        ("io-uring: SQPOLL / plain", "io-uring-sqpoll", "io-uring"),
        ("io-uring: SQPOLL polling / plain", "io-uring-sqpoll-polling", "io-uring"),
        ("plain: ringfence / io-uring", "ringfence", "io-uring"),
        ("SQPOLL: ringfence / io-uring", "ringfence-sqpoll", "io-uring-sqpoll"),
        ("SQPOLL polling: ringfence / io-uring", "ringfence-sqpoll-polling",
         "io-uring-sqpoll-polling"),
    ],
}


def print_pairs(group, params, runs, results):
    """The ratio table of a group in PAIRS: per parameter, the quotient of
    the two medians shown, with the range of the per-run ratios."""
    pairs = PAIRS[group]
    print(f"\n{group} ratios (quotient of the medians, [per-run range])")
    print("| param | " + " | ".join(label for label, _, _ in pairs) + " |")
    print("|---" * (len(pairs) + 1) + "|")
    for p in params:
        cells = []
        for _, a, b in pairs:
            ka, kb = (group, a, p), (group, b, p)
            if ka not in results or kb not in results:
                cells.append("")
                continue
            per_run = [r[ka] / r[kb] for r in runs if ka in r and kb in r]
            cells.append(f"{results[ka] / results[kb]:.2f} "
                         f"[{min(per_run):.2f}–{max(per_run):.2f}]")
        print(f"| {p} | " + " | ".join(cells) + " |")


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--svg")
    parser.add_argument("--save")
    parser.add_argument("--runs", nargs="*")
    args = parser.parse_args()
    if args.runs:
        runs = [{tuple(k.split("/")): v for k, v in json.loads(pathlib.Path(f).read_text()).items()}
                for f in args.runs]
    else:
        runs = [medians()]
    if args.save:
        pathlib.Path(args.save).write_text(json.dumps({"/".join(k): v for k, v in runs[0].items()}))
    keys = set().union(*runs)
    results = {k: median([r[k] for r in runs if k in r]) for k in keys}
    # Ratios of the medians shown, and the range of the per-run ratios.
    ratios = {}
    for (g, f, p) in keys:
        base = COMPARATOR.get(g)
        if base and f != base and (g, base, p) in results:
            per_run = [r[(g, f, p)] / r[(g, base, p)] for r in runs
                       if (g, f, p) in r and (g, base, p) in r]
            ratios[(g, f, p)] = (results[(g, f, p)] / results[(g, base, p)],
                                 min(per_run), max(per_run))
    print(f"median of {len(runs)} run(s); ratio = median over the {'/'.join(sorted(set(COMPARATOR.values())))} median, [per-run range]")
    groups = sorted({g for g, _, _ in results})
    for group in groups:
        functions = sorted({f for g, f, _ in results if g == group})
        params = sorted({p for g, _, p in results if g == group}, key=lambda p: (len(p), p))
        print(f"\n{group} (ns/op, median)")
        print("| param | " + " | ".join(functions) + " |")
        print("|---" * (len(functions) + 1) + "|")
        for p in params:
            cells = []
            for f in functions:
                v = results.get((group, f, p))
                ratio = ratios.get((group, f, p))
                cell = "" if v is None else f"{v:.1f}"
                if ratio is not None:
                    cell += f" ({ratio[0]:.2f}× [{ratio[1]:.2f}–{ratio[2]:.2f}])"
                cells.append(cell)
            print(f"| {p} | " + " | ".join(cells) + " |")
        if group in PAIRS:
            print_pairs(group, params, runs, results)
    if args.svg:
        pathlib.Path(args.svg).write_text(svg_chart(results))


if __name__ == "__main__":
    main()
