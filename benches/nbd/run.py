#!/usr/bin/env python3
"""The NBD comparison of issue 11: ringfence's `nbd_server` against
qemu-nbd and nbdkit, with fio's own io_uring engine on the image file as
the protocol-free reference, all in one run.

    cargo build --release --example nbd_server
    python3 benches/nbd/run.py                  # 3 rounds, 5 s per cell
    python3 benches/nbd/run.py --quick          # 1 round, 2 s: a smoke check
    python3 benches/nbd/run.py --workers 1,2    # ring sharing: one variant each
    python3 benches/nbd/run.py --servers qemu-nbd,nbdkit,fio-io_uring
    python3 benches/nbd/run.py --report benches/results/nbd-DATE.json
                                                # tables and chart again, no run

What runs. One image on tmpfs (/dev/shm, 1 GiB, filled with data so that
every read hits a page). Each round starts every server, each on its own
socket, waits until each answers with the NBD greeting, then runs each cell
against each server in turn with fio's nbd engine (one NBD connection per
fio job), and stops them all. The servers alternate cell by cell, in an
order that rotates from cell to cell and round to round, so that the
measurements one ratio compares are seconds apart and share the machine's
noise; the idle servers wait in the kernel meanwhile. A cell is a pattern
(4 KiB randread or randwrite) at an iodepth (1, 16, 64) with one fio job,
plus the multi-connection cells (default 4 jobs at depth 16). The reference
`fio-io_uring` runs the same cells on the image file itself, buffered, with
no server and no protocol: the ceiling for this machine.

What is recorded. Per server, cell and round: IOPS, the p50 and p99 of the
total latency (fio's lat percentiles: submission + completion) and of the
completion latency alone (clat), all jobs merged, fio's CPU, and
the server's CPU time over the cell (/proc/PID/stat, all its threads,
io_uring's io-wq workers included) as a share of one CPU and per request.

The judgement (issue 11). Per (pattern, depth, jobs) and round: ringfence's
IOPS over the better of qemu-nbd and nbdkit in that round, and ringfence's
p99 over the lower p99 of the two; reported as the median over the rounds
with the range (min-max). The goal is an IOPS ratio >= 1 and a p99 ratio
<= 1 in every cell. The p99 judged is the total latency's: with the nbd
engine, fio's submission time (slat) holds libnbd sending the request
(20 µs and more here), and a reply that arrives meanwhile shows a clat of
a few µs (seen: a clat p50 of 3.5 µs for a whole round trip), so clat
alone flatters whichever server answers while the request is still being
sent. The clat ratio is reported beside it.

Writes benches/results/<name>.json (every measurement and the set-up),
<name>.md (the tables and the command that reproduces them) and <name>.svg
(median IOPS per server and depth, whiskers = range over rounds); <name>
is nbd-<UTC date> (nbd-<date>-quick with --quick).

Servers are always stopped (SIGTERM, then SIGKILL after 10 s) and the image
and sockets removed, also on an error or Ctrl-C. Timings on a shared
machine are noisy: compare ratios within one run, never across runs.
Standard library only.
"""
import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent.parent
RESULTS = REPO / "benches" / "results"
DEFAULT_BINARY = REPO / "target" / "release" / "examples" / "nbd_server"
PEERS = ["qemu-nbd", "nbdkit"]
REFERENCE = "fio-io_uring"
PATTERNS = ["randread", "randwrite"]
NBD_MAGIC = b"NBDMAGIC"
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


# ---------------------------------------------------------------- servers

class Server:
    """One server process on a unix socket, started and stopped around
    one round. `argv` None means no server (the fio-io_uring
    reference reads the image file itself)."""

    def __init__(self, name, argv, socket_path, log_path):
        self.name = name
        self.argv = argv
        self.socket_path = socket_path
        self.log_path = log_path
        self.proc = None

    def __enter__(self):
        if self.argv is None:
            return self
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        log = open(self.log_path, "ab")
        log.write(f"\n=== {shlex.join(self.argv)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log)
        log.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def wait_ready(self):
        """Until the socket accepts a connection and the server sends the
        NBD greeting (bounded by READY_TIMEOUT)."""
        deadline = time.monotonic() + READY_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before "
                                   f"accepting connections; its log: {self.log_path}\n"
                                   f"{tail(self.log_path)}")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(2.0)
                    s.connect(self.socket_path)
                    greeting = b""
                    while len(greeting) < len(NBD_MAGIC):
                        chunk = s.recv(len(NBD_MAGIC) - len(greeting))
                        if not chunk:
                            break
                        greeting += chunk
                    if greeting == NBD_MAGIC:
                        return
                    last = f"greeting {greeting!r}"
            except OSError as e:
                last = str(e)
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer on {self.socket_path} within "
                           f"{READY_TIMEOUT:.0f} s ({last}); its log: {self.log_path}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} ignored SIGTERM for {STOP_TIMEOUT:.0f} s: SIGKILL",
                      file=sys.stderr)
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def cpu_seconds(self):
        """User + system CPU time of the whole process so far (threads that
        have exited included), or None without a server."""
        if self.proc is None:
            return None
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # Fields 14 and 15 of stat(5); fields[0] here is field 3.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tail(path, lines=20):
    try:
        return "\n".join(pathlib.Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def server_variants(args):
    """[(name, argv builder or None)] in the order of --servers; ringfence
    expands to one variant per --workers value."""
    workers = [int(w) for w in args.workers.split(",")]
    extra = shlex.split(args.ringfence_args)
    out = []
    for name in args.servers.split(","):
        if name == "ringfence":
            for w in workers:
                label = "ringfence" if len(workers) == 1 else f"ringfence-w{w}"
                out.append((label, lambda sock, img, w=w: [
                    str(args.ringfence), "--socket", sock, "--workers", str(w),
                    *extra, img]))
        elif name == "qemu-nbd":
            # -t: keep serving after the last client leaves (one server per
            # round serves many fio runs); -e: as many clients at once as the
            # multi-connection cells open (default 1).
            out.append((name, lambda sock, img: [
                "qemu-nbd", "--aio=io_uring", "--cache=writeback", "-f", "raw",
                "-k", sock, "-t", "-e", "16", img]))
        elif name == "nbdkit":
            # -f: foreground, so that we own the process; its default is 16
            # threads, parallel thread model for the file plugin.
            out.append((name, lambda sock, img: [
                "nbdkit", "-f", "--exit-with-parent", "-U", sock, "file", img]))
        elif name == REFERENCE:
            out.append((name, None))
        else:
            sys.exit(f"unknown server {name!r}: choose from ringfence, qemu-nbd, nbdkit, "
                     f"{REFERENCE}")
    return out


# ---------------------------------------------------------------- fio

def cells(args):
    """[(pattern, depth, jobs)] measured for every server."""
    out = [(p, d, 1) for p in PATTERNS for d in args.depths]
    for spec in filter(None, args.multi.split(",")):
        jobs, depth = (int(x) for x in spec.split("x"))
        out += [(p, depth, jobs) for p in PATTERNS]
    return out


def fio_argv(args, server, sock, image, pattern, depth, jobs, out_path):
    argv = ["fio", f"--name={pattern}-d{depth}-j{jobs}", f"--rw={pattern}", "--bs=4k",
            f"--iodepth={depth}", f"--numjobs={jobs}", "--group_reporting",
            "--time_based", f"--runtime={args.runtime}", f"--ramp_time={args.ramp}",
            f"--size={args.image_size}", "--norandommap", "--randrepeat=1",
            "--lat_percentiles=1", "--clat_percentiles=1",
            "--output-format=json", f"--output={out_path}"]
    if server == REFERENCE:
        argv += ["--ioengine=io_uring", f"--filename={image}", "--direct=0"]
    else:
        argv += ["--ioengine=nbd", f"--uri=nbd+unix:///?socket={sock}"]
    return argv


def run_cell(args, server, image, pattern, depth, jobs, scratch):
    """One fio run of the cell against `server`: its record."""
    out_path = os.path.join(scratch, "fio.json")
    argv = fio_argv(args, server.name, server.socket_path, image, pattern, depth, jobs,
                    out_path)
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=args.runtime + args.ramp + 60)
    cpu1, t1 = server.cpu_seconds(), time.monotonic()
    if done.returncode != 0:
        raise RuntimeError(f"fio failed ({done.returncode}) on {server.name}: "
                           f"{shlex.join(argv)}\n{done.stdout.decode(errors='replace')}")
    text = pathlib.Path(out_path).read_text()
    job = json.loads(text[text.index("{"):])["jobs"][0]
    if job["error"]:
        raise RuntimeError(f"fio reported error {job['error']} on {server.name}")
    side = job["read" if pattern == "randread" else "write"]
    lat, clat = side["lat_ns"]["percentile"], side["clat_ns"]["percentile"]
    record = {
        "iops": side["iops"],
        "p50_us": lat["50.000000"] / 1000,
        "p99_us": lat["99.000000"] / 1000,
        "clat_p50_us": clat["50.000000"] / 1000,
        "clat_p99_us": clat["99.000000"] / 1000,
        "mean_us": side["lat_ns"]["mean"] / 1000,
        "fio_cpu_pct": job["usr_cpu"] + job["sys_cpu"],
        # Runnable tasks on the machine (1-minute average) as the cell ends:
        # how much else competed for the CPUs.
        "loadavg": os.getloadavg()[0],
    }
    if cpu0 is not None:
        share = (cpu1 - cpu0) / (t1 - t0)
        record["server_cpu_pct"] = 100 * share
        record["server_cpu_us_per_io"] = 1e6 * share / side["iops"] if side["iops"] else None
    return record


# ---------------------------------------------------------------- the run

def make_image(path, size):
    """A raw image of `size` bytes, every page written with non-zero data
    (tmpfs would otherwise serve holes without touching a page)."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def parse_size(text):
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().rstrip("ib")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def versions(args, names):
    def first_line(argv):
        try:
            done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=10)
            return done.stdout.decode(errors="replace").splitlines()[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    out = {"fio": first_line(["fio", "--version"]), "kernel": platform.release(),
           "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        out["cpu_model"] = next(line.split(":", 1)[1].strip()
                                for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if "qemu-nbd" in names:
        out["qemu-nbd"] = first_line(["qemu-nbd", "--version"])
    if "nbdkit" in names:
        out["nbdkit"] = first_line(["nbdkit", "--version"])
    if any(n.startswith("ringfence") for n in names):
        out["ringfence_binary"] = str(args.ringfence)
        src = args.ringfence.resolve()
        out["ringfence_binary_mtime"] = datetime.datetime.fromtimestamp(
            src.stat().st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")
        if args.ringfence_commit:
            out["ringfence_commit"] = args.ringfence_commit
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out["harness_commit"] = commit.stdout.decode().strip() or None
    return out


def interrupted(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def measure(args):
    variants = server_variants(args)
    names = [n for n, _ in variants]
    if any(n.startswith("ringfence") for n in names) and not args.ringfence.exists():
        sys.exit(f"no nbd_server at {args.ringfence}: build it with `cargo build --release "
                 f"--example nbd_server`, point --ringfence at it, or leave ringfence out "
                 f"of --servers")
    for tool in {"fio"} | {n for n in names if n in PEERS}:
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install fio qemu-utils nbdkit)")
    size = parse_size(args.image_size)
    scratch = tempfile.mkdtemp(prefix="ringfence-nbd-bench-")
    image = os.path.join(args.image_dir, f"ringfence-nbd-bench-{os.getpid()}.img")
    data = {"meta": {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python3 benches/nbd/run.py " + shlex.join(sys.argv[1:]),
        "rounds": args.rounds, "runtime_s": args.runtime, "ramp_s": args.ramp,
        "image_size": size, "image_dir": args.image_dir, "block_size": 4096,
        "servers": names, "cells": [list(c) for c in cells(args)],
        "server_argv": {n: (shlex.join(b("SOCKET", "IMAGE")) if b else None)
                        for n, b in variants},
        "versions": versions(args, names),
        "note": (f"{os.cpu_count()} CPUs shared by fio and the server (and anything else "
                 "on the machine): every figure includes fio's own CPU cost competing "
                 "with the server's; compare ratios within this run only."),
    }, "records": []}
    # Ctrl-C or SIGTERM: unwind through the finally blocks below.
    signal.signal(signal.SIGTERM, interrupted)
    try:
        print(f"image {image} ({size >> 20} MiB), scratch {scratch}", file=sys.stderr)
        make_image(image, size)
        for rnd in range(args.rounds):
            with contextlib.ExitStack() as running:
                servers = []
                for i, (name, build) in enumerate(variants):
                    sock = os.path.join(scratch, f"nbd{i}.sock")
                    log = os.path.join(scratch, f"{name}.log")
                    argv = build(sock, image) if build else None
                    servers.append(running.enter_context(Server(name, argv, sock, log)))
                for c, (pattern, depth, jobs) in enumerate(cells(args)):
                    k = (rnd + c) % len(servers)
                    for server in servers[k:] + servers[:k]:
                        rec = run_cell(args, server, image, pattern, depth, jobs, scratch)
                        rec.update(round=rnd, server=server.name, pattern=pattern,
                                   depth=depth, jobs=jobs)
                        data["records"].append(rec)
                        print(f"round {rnd + 1}/{args.rounds} {server.name:14} {pattern:9} "
                              f"d{depth:<3} j{jobs}: {rec['iops']:9.0f} IOPS  "
                              f"p50 {rec['p50_us']:7.1f} µs  p99 {rec['p99_us']:7.1f} µs",
                              file=sys.stderr)
    finally:
        if os.path.exists(image):
            os.unlink(image)
        if args.keep_logs:
            print(f"server logs kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return data


# ---------------------------------------------------------------- the report

def summarize(data):
    """Medians per (server, pattern, depth, jobs) and, per ringfence
    variant, the per-round ratios against the better peer."""
    recs = data["records"]
    keys = sorted({(r["server"], r["pattern"], r["depth"], r["jobs"]) for r in recs},
                  key=lambda k: (k[1], k[3], k[2], data["meta"]["servers"].index(k[0])))
    medians = {}
    for key in keys:
        rows = [r for r in recs if (r["server"], r["pattern"], r["depth"], r["jobs"]) == key]
        m = {f: statistics.median(r[f] for r in rows)
             for f in ["iops", "p50_us", "p99_us", "clat_p50_us", "clat_p99_us",
                       "server_cpu_pct", "server_cpu_us_per_io"]
             if all(r.get(f) is not None for r in rows)}
        m["iops_min"] = min(r["iops"] for r in rows)
        m["iops_max"] = max(r["iops"] for r in rows)
        m["rounds"] = len(rows)
        medians[key] = m
    by = {(r["round"], r["server"], r["pattern"], r["depth"], r["jobs"]): r for r in recs}
    rounds = sorted({r["round"] for r in recs})
    ratios = {}
    for server in data["meta"]["servers"]:
        if not server.startswith("ringfence"):
            continue
        for (_, pattern, depth, jobs) in [k for k in keys if k[0] == server]:
            iops, p99, clat99, ceiling = [], [], [], []
            for rnd in rounds:
                ours = by.get((rnd, server, pattern, depth, jobs))
                peers = [by[k] for k in [(rnd, p, pattern, depth, jobs) for p in PEERS]
                         if k in by]
                if ours is None:
                    continue
                if peers:
                    iops.append(ours["iops"] / max(p["iops"] for p in peers))
                    p99.append(ours["p99_us"] / min(p["p99_us"] for p in peers))
                    clat99.append(ours["clat_p99_us"] / min(p["clat_p99_us"] for p in peers))
                ref = by.get((rnd, REFERENCE, pattern, depth, jobs))
                if ref:
                    ceiling.append(ours["iops"] / ref["iops"])
            entry = {}
            for name, values in [("iops", iops), ("p99", p99), ("clat_p99", clat99),
                                 ("of_reference", ceiling)]:
                if values:
                    entry[name] = {"median": statistics.median(values), "min": min(values),
                                   "max": max(values), "per_round": values}
            if "iops" in entry and "p99" in entry:
                entry["goal_met"] = entry["iops"]["median"] >= 1 and entry["p99"]["median"] <= 1
            ratios[(server, pattern, depth, jobs)] = entry
    return medians, ratios, variant_ratios(data, keys, by, rounds)


def variant_ratios(data, keys, by, rounds):
    """Ring sharing: each ringfence variant after the first (e.g. --workers
    2 after 1) against the first, per round: IOPS and p99 ratios."""
    ours = [s for s in data["meta"]["servers"] if s.startswith("ringfence")]
    out = {}
    for server in ours[1:]:
        for (_, pattern, depth, jobs) in [k for k in keys if k[0] == server]:
            pairs = [(by[(r, server, pattern, depth, jobs)],
                      by[(r, ours[0], pattern, depth, jobs)])
                     for r in rounds if (r, server, pattern, depth, jobs) in by
                     and (r, ours[0], pattern, depth, jobs) in by]
            entry = {}
            for name, field in [("iops", "iops"), ("p99", "p99_us")]:
                values = [a[field] / b[field] for a, b in pairs]
                if values:
                    entry[name] = {"median": statistics.median(values), "min": min(values),
                                   "max": max(values), "per_round": values}
            out[(server, ours[0], pattern, depth, jobs)] = entry
    return out


def cell_label(depth, jobs):
    return f"{depth}" if jobs == 1 else f"{depth} × {jobs} jobs"


def fmt_ratio(x):
    return "–" if not x else f"{x['median']:.2f} [{x['min']:.2f}–{x['max']:.2f}]"


def markdown(data, medians, ratios, variants, svg_name):
    meta = data["meta"]
    v = meta["versions"]
    out = [f"# NBD servers: 4 KiB random I/O over a unix socket ({meta['date'][:10]})", ""]
    out += ["Reproduce (from the repository root):", "", "```"]
    if any(s.startswith("ringfence") for s in meta["servers"]):
        out.append("cargo build --release --example nbd_server")
    out += [meta["command"], "```", ""]
    if v.get("ringfence_binary"):
        out += [f"nbd_server: `{v['ringfence_binary']}`"
                + (f", built from commit `{v['ringfence_commit']}`"
                   if v.get("ringfence_commit") else "")
                + " (`--ringfence` defaults to target/release/examples/nbd_server).", ""]
    out += [f"{meta['rounds']} round(s); each round starts every server (each on its own "
            f"socket, idle ones waiting in the kernel) and runs each cell against each server "
            f"in turn, in an order rotated from cell to cell, for {meta['runtime_s']} s after "
            f"{meta['ramp_s']} s of ramp. fio's nbd engine (libnbd), one NBD connection "
            f"per fio job; `fio-io_uring` is fio's io_uring engine on the image file itself "
            f"(buffered, no server, no protocol): the ceiling. Image: "
            f"{meta['image_size'] >> 20} MiB raw on tmpfs ({meta['image_dir']}), every "
            f"page filled with data. Latencies are fio's "
            f"percentiles, all jobs merged. Latency is fio's total latency (lat = slat + clat, "
            f"from before the request is sent to its reply): for the nbd engine clat alone "
            f"leaves out libnbd's send; the clat p99 is shown too.", ""]
    out += [f"Machine: {v.get('cpu_model', '?')}, {v.get('cpus')} CPUs, Linux "
            f"{v.get('kernel')}. **{meta['note']}**", ""]
    out += ["Versions: " + "; ".join(f"{k} `{v[k]}`" for k in
                                     ["fio", "qemu-nbd", "nbdkit", "ringfence_commit",
                                      "harness_commit"] if v.get(k)), ""]
    out += ["Servers:", ""]
    for name, argv in meta["server_argv"].items():
        out.append(f"- {name}: " + (f"`{argv}`" if argv else "fio `--ioengine=io_uring "
                                    "--direct=0 --filename=IMAGE` (no server)"))
    out.append("")
    if ratios:
        out += ["## ringfence against the better of qemu-nbd and nbdkit", "",
                "Per round: ringfence's IOPS / the higher IOPS of the two peers, and "
                "ringfence's p99 / the lower p99 of the two (total latency; clat p99 beside "
                "it); median over the rounds [min–max]. Goal (issue 11): IOPS ratio ≥ 1 and "
                "p99 ratio ≤ 1 at every depth (medians). Last column: ringfence's IOPS as a "
                "share of fio-io_uring's.", "",
                "| variant | pattern | depth | IOPS ratio | p99 ratio | clat p99 ratio | goal "
                "| of fio-io_uring |",
                "|---|---|---|---|---|---|---|---|"]
        for (server, pattern, depth, jobs), e in ratios.items():
            def fmt(name):
                return fmt_ratio(e.get(name))
            goal = {True: "met", False: "**not met**", None: "–"}[e.get("goal_met")]
            out.append(f"| {server} | {pattern} | {cell_label(depth, jobs)} | {fmt('iops')} "
                       f"| {fmt('p99')} | {fmt('clat_p99')} | {goal} | {fmt('of_reference')} |")
        out.append("")
    if variants:
        out += ["## Ring sharing: ringfence variants against each other", "",
                "Per round: the variant's IOPS (and p99) over the other's; median over the "
                "rounds [min–max]. Above 1 in IOPS (below 1 in p99): the variant is faster.",
                "", "| variant / against | pattern | depth | IOPS ratio | p99 ratio |",
                "|---|---|---|---|---|"]
        for (server, base, pattern, depth, jobs), e in variants.items():
            out.append(f"| {server} / {base} | {pattern} | {cell_label(depth, jobs)} | "
                       f"{fmt_ratio(e.get('iops'))} | {fmt_ratio(e.get('p99'))} |")
        out.append("")
    loads = [r["loadavg"] for r in data["records"] if "loadavg" in r]
    if loads:
        out += [f"Machine load (1-minute load average as each cell ended, {v.get('cpus')} "
                f"CPUs): median {statistics.median(loads):.1f}, range {min(loads):.1f}–"
                f"{max(loads):.1f}.", ""]
    out += ["## Medians per server", "",
            "IOPS: median over the rounds [min–max]. Server CPU: the server's user + system "
            "time over the cell (all threads, io-wq workers included) as % of one CPU, and "
            "per request.", "",
            "| pattern | depth | server | IOPS | p50 µs | p99 µs | clat p50 µs | clat p99 µs "
            "| server CPU % | CPU µs/IO |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for (server, pattern, depth, jobs), m in medians.items():
        cpu = f"{m['server_cpu_pct']:.0f}" if "server_cpu_pct" in m else "–"
        per = f"{m['server_cpu_us_per_io']:.1f}" if m.get("server_cpu_us_per_io") else "–"
        out.append(f"| {pattern} | {cell_label(depth, jobs)} | {server} | {m['iops']:.0f} "
                   f"[{m['iops_min']:.0f}–{m['iops_max']:.0f}] | {m['p50_us']:.1f} | "
                   f"{m['p99_us']:.1f} | {m['clat_p50_us']:.1f} | {m['clat_p99_us']:.1f} | "
                   f"{cpu} | {per} |")
    out += ["", f"![median IOPS per server and depth]({svg_name})", ""]
    return "\n".join(out)


COLORS = {"ringfence": "#d62728", "ringfence-w1": "#ff7f0e", "ringfence-w2": "#d62728",
          "qemu-nbd": "#1f77b4", "nbdkit": "#2ca02c", REFERENCE: "#7f7f7f"}
EXTRA_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]


def svg_chart(data, medians):
    """One panel per pattern: groups of bars (one per server) per depth,
    median IOPS, whiskers from the lowest to the highest round."""
    servers = data["meta"]["servers"]
    colors = dict(COLORS)
    for s in servers:
        if s not in colors:
            colors[s] = EXTRA_COLORS[len(colors) % len(EXTRA_COLORS)]
    groups = sorted({(d, j) for (_, _, d, j) in medians}, key=lambda c: (c[1], c[0]))
    width, height, pad, top = 520, 340, 64, 44
    bar = (width - 2 * pad) / max(len(groups), 1) / (len(servers) + 1)
    peak = max(m["iops_max"] for m in medians.values()) * 1.1
    step = nice_step(peak / 5)
    parts = []
    for n, pattern in enumerate(PATTERNS):
        x0 = n * width

        def y(v):
            return height - pad - v / peak * (height - pad - top)

        parts.append(f'<text x="{x0 + width / 2}" y="20" text-anchor="middle" '
                     f'font-weight="bold">{pattern}, 4 KiB, IOPS (median, whiskers: '
                     f'min–max over rounds)</text>')
        tick = 0
        while tick <= peak:
            parts.append(f'<line x1="{x0 + pad}" y1="{y(tick):.1f}" x2="{x0 + width - 12}" '
                         f'y2="{y(tick):.1f}" stroke="#ddd"/>')
            label = f"{tick / 1000:g}k" if tick else "0"
            parts.append(f'<text x="{x0 + pad - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                         f'{label}</text>')
            tick += step
        parts.append(f'<line x1="{x0 + pad}" y1="{height - pad}" x2="{x0 + width - 12}" '
                     f'y2="{height - pad}" stroke="black"/>')
        for g, (depth, jobs) in enumerate(groups):
            gx = x0 + pad + g * (len(servers) + 1) * bar + bar / 2
            parts.append(f'<text x="{gx + len(servers) * bar / 2:.1f}" y="{height - pad + 16}" '
                         f'text-anchor="middle">{"depth " if g == 0 else ""}'
                         f'{cell_label(depth, jobs)}</text>')
            for k, server in enumerate(servers):
                m = medians.get((server, pattern, depth, jobs))
                if not m:
                    continue
                bx = gx + k * bar
                parts.append(f'<rect x="{bx:.1f}" y="{y(m["iops"]):.1f}" width="{bar * 0.9:.1f}" '
                             f'height="{height - pad - y(m["iops"]):.1f}" '
                             f'fill="{colors[server]}"><title>{server} {pattern} '
                             f'{cell_label(depth, jobs)}: {m["iops"]:.0f} IOPS</title></rect>')
                cx = bx + bar * 0.45
                parts.append(f'<line x1="{cx:.1f}" y1="{y(m["iops_min"]):.1f}" x2="{cx:.1f}" '
                             f'y2="{y(m["iops_max"]):.1f}" stroke="black"/>')
        for k, server in enumerate(servers):
            lx, ly = x0 + pad + (k % 3) * 150, height - 28 + (k // 3) * 14
            parts.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" '
                         f'fill="{colors[server]}"/>')
            parts.append(f'<text x="{lx + 14}" y="{ly}">{server}</text>')
    body = "\n".join(parts)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * len(PATTERNS)}" '
            f'height="{height + 14 * ((len(servers) - 1) // 3)}" font-family="sans-serif" '
            f'font-size="11">\n<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n')


def nice_step(raw):
    import math
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in [1, 2, 2.5, 5, 10] if m * mag >= raw)


def write_report(data, base):
    medians, ratios, variants = summarize(data)
    data["summary"] = {
        "medians": [dict(server=s, pattern=p, depth=d, jobs=j, **m)
                    for (s, p, d, j), m in medians.items()],
        "ratios": [dict(server=s, pattern=p, depth=d, jobs=j, **e)
                   for (s, p, d, j), e in ratios.items()],
        "variant_ratios": [dict(server=s, against=b, pattern=p, depth=d, jobs=j, **e)
                           for (s, b, p, d, j), e in variants.items()],
    }
    json_path, md_path, svg_path = (base.with_suffix(s) for s in [".json", ".md", ".svg"])
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    svg_path.write_text(svg_chart(data, medians))
    md_path.write_text(markdown(data, medians, ratios, variants, svg_path.name))
    print(md_path.read_text())
    print(f"wrote {json_path}, {md_path}, {svg_path}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=f"ringfence,qemu-nbd,nbdkit,{REFERENCE}",
                        help="comma list from ringfence, qemu-nbd, nbdkit, " + REFERENCE)
    parser.add_argument("--ringfence", type=pathlib.Path, default=DEFAULT_BINARY,
                        help="the nbd_server binary (default %(default)s)")
    parser.add_argument("--ringfence-commit", default=None,
                        help="the commit the binary was built from, recorded in the results")
    parser.add_argument("--workers", default="2",
                        help="nbd_server --workers; a comma list (1,2) measures one variant "
                             "per value (ringfence-w1, ringfence-w2)")
    parser.add_argument("--ringfence-args", default="",
                        help="more nbd_server options, e.g. --ringfence-args=--no-seccomp")
    parser.add_argument("--rounds", type=int, help="default 3 (--quick: 1)")
    parser.add_argument("--runtime", type=int,
                        help="seconds measured per cell, default 5 (--quick: 2)")
    parser.add_argument("--ramp", type=int,
                        help="seconds of ramp before each cell, default 1 (--quick: 0)")
    parser.add_argument("--depths", default="1,16,64",
                        type=lambda s: [int(d) for d in s.split(",")])
    parser.add_argument("--multi", default="4x16",
                        help="multi-connection cells JOBSxDEPTH, comma list ('' for none)")
    parser.add_argument("--image-size", default="1G")
    parser.add_argument("--image-dir", default="/dev/shm")
    parser.add_argument("--name", help="output base name (default nbd-DATE[-quick])")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke check: 1 round, 2 s, no ramp (unless given)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the servers' stdout/stderr log")
    parser.add_argument("--report", type=pathlib.Path,
                        help="rewrite the .md and .svg of a saved .json, no measurement")
    args = parser.parse_args()
    if args.report:
        data = json.loads(args.report.read_text())
        write_report(data, args.report.with_suffix(""))
        return
    for field, normal, quick in [("rounds", 3, 1), ("runtime", 5, 2), ("ramp", 1, 0)]:
        if getattr(args, field) is None:
            setattr(args, field, quick if args.quick else normal)
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    name = args.name or f"nbd-{date}" + ("-quick" if args.quick else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        data = measure(args)
    except KeyboardInterrupt as e:
        sys.exit(f"interrupted ({e or 'Ctrl-C'}): servers stopped, image removed, nothing written")
    write_report(data, RESULTS / name)


if __name__ == "__main__":
    main()
