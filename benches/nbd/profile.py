#!/usr/bin/env python3
"""Where one NBD server's time goes in one cell of benches/nbd/run.py:
syscalls and io_uring events per request (perf stat on the server's
tracepoints), and its hottest functions (perf record).

    python3 benches/nbd/profile.py --server ringfence --workers 2 randread 1
    python3 benches/nbd/profile.py --server nbdkit randwrite 64 --jobs 4
    python3 benches/nbd/profile.py --server ringfence --record-only randread 64

Starts the server on a fresh tmpfs image (as run.py does), runs the cell
twice with fio's nbd engine: once under `perf stat -p PID` (the counts are
divided by the requests fio completed in that run), once under
`perf record -g -p PID` (the report: self time per function, and per
thread name, so io_uring's io-wq workers show as iou-wrk-*). Needs perf
(Debian: linux-perf) and root or perf_event_paranoid <= 0; tracepoints
need tracefs. The counts include the handshake of each fio connection
(a few syscalls per connection: negligible over thousands of requests).
Standard library only; reuses run.py's server start/stop.
"""
import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import run  # noqa: E402

# The events counted, in the order printed: every syscall, then the ones
# an NBD server might use per request, then io_uring's own events.
EVENTS = [
    ("raw_syscalls:sys_enter", "syscalls (all)"),
    ("syscalls:sys_enter_io_uring_enter", "io_uring_enter"),
    ("syscalls:sys_enter_futex", "futex"),
    ("syscalls:sys_enter_ppoll", "ppoll"),
    ("syscalls:sys_enter_poll", "poll"),
    ("syscalls:sys_enter_epoll_wait", "epoll_wait"),
    ("syscalls:sys_enter_recvfrom", "recvfrom"),
    ("syscalls:sys_enter_recvmsg", "recvmsg"),
    ("syscalls:sys_enter_sendto", "sendto"),
    ("syscalls:sys_enter_sendmsg", "sendmsg"),
    ("syscalls:sys_enter_read", "read"),
    ("syscalls:sys_enter_write", "write"),
    ("syscalls:sys_enter_pread64", "pread64"),
    ("syscalls:sys_enter_pwrite64", "pwrite64"),
    ("syscalls:sys_enter_preadv", "preadv"),
    ("syscalls:sys_enter_pwritev", "pwritev"),
    ("io_uring:io_uring_submit_req", "io_uring SQEs submitted"),
    ("io_uring:io_uring_queue_async_work", "io_uring punts to io-wq"),
    ("io_uring:io_uring_poll_arm", "io_uring poll arms (socket not ready)"),
    ("io_uring:io_uring_task_add", "io_uring task_work adds"),
    ("io_uring:io_uring_cqring_wait", "io_uring waits for CQEs"),
    ("context-switches", "context switches"),
    ("cpu-migrations", "CPU migrations"),
    ("task-clock", "task-clock (ms)"),
]


def fio_once(args, server, image, scratch, wrap=None):
    """Runs the cell once against `server`; `wrap` (argv prefix, attached
    to the server) runs meanwhile and is stopped with SIGINT after fio.
    Returns (requests completed, fio's IOPS)."""
    out = os.path.join(scratch, "fio.json")
    argv = run.fio_argv(args, server.name, server.socket_path, image, args.pattern,
                        args.depth, args.jobs, out)
    tool = None
    if wrap:
        tool = subprocess.Popen(wrap, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(0.5)  # perf attaches
    try:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL,
                       timeout=args.runtime + args.ramp + 60)
    finally:
        if tool:
            tool.send_signal(signal.SIGINT)
            text = tool.communicate(timeout=120)[0].decode(errors="replace")
    text_json = pathlib.Path(out).read_text()
    job = json.loads(text_json[text_json.index("{"):])["jobs"][0]
    side = job["read" if args.pattern == "randread" else "write"]
    return side["total_ios"], side["iops"], (text if tool else "")


def parse_perf_stat(text):
    """{event: count} from `perf stat -x ,` (value,unit,event,...)."""
    counts = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) >= 3:
            try:
                counts[fields[2]] = float(fields[0])
            except ValueError:
                pass  # "<not counted>", "<not supported>"
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pattern", choices=run.PATTERNS)
    parser.add_argument("depth", type=int)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--server", default="ringfence",
                        choices=["ringfence", "qemu-nbd", "nbdkit"])
    parser.add_argument("--ringfence", type=pathlib.Path, default=run.DEFAULT_BINARY)
    parser.add_argument("--workers", default="2")
    parser.add_argument("--ringfence-args", default="")
    parser.add_argument("--runtime", type=int, default=5)
    parser.add_argument("--image-size", default="1G")
    parser.add_argument("--image-dir", default="/dev/shm")
    parser.add_argument("--record-only", action="store_true")
    parser.add_argument("--top", type=int, default=25, help="functions shown")
    args = parser.parse_args()
    args.ramp = 0  # every request fio counts falls in perf's window
    args.servers = args.server
    if shutil.which("perf") is None:
        sys.exit("perf is not installed (apt-get install linux-perf)")
    (name, build), = run.server_variants(args)
    scratch = tempfile.mkdtemp(prefix="ringfence-nbd-profile-")
    image = os.path.join(args.image_dir, f"ringfence-nbd-profile-{os.getpid()}.img")
    sock = os.path.join(scratch, "nbd.sock")
    try:
        run.make_image(image, run.parse_size(args.image_size))
        with run.Server(name, build(sock, image), sock,
                        os.path.join(scratch, "server.log")) as server:
            pid = str(server.proc.pid)
            print(f"{name}: {server.argv[0]} pid {pid}; cell {args.pattern} depth "
                  f"{args.depth} × {args.jobs} job(s), {args.runtime} s")
            if not args.record_only:
                stat = ["perf", "stat", "-p", pid, "-x", ",", "-e",
                        ",".join(e for e, _ in EVENTS)]
                ios, iops, text = fio_once(args, server, image, scratch, stat)
                counts = parse_perf_stat(text)
                print(f"\n{ios} requests at {iops:.0f} IOPS; per request:")
                for event, label in EVENTS:
                    if event in counts and (counts[event] or event.startswith("raw")):
                        print(f"  {counts[event] / ios:8.3f}  {label}")
                if "task-clock" in counts:
                    print(f"  {1000 * counts['task-clock'] / ios:8.2f}  µs of server CPU")
            data = os.path.join(scratch, "perf.data")
            record = ["perf", "record", "-q", "-F", "2999", "-g", "-p", pid, "-o", data]
            ios, iops, _ = fio_once(args, server, image, scratch, record)
            print(f"\nperf record: {ios} requests at {iops:.0f} IOPS")
        for sort, limit in [("comm", 1), ("dso,sym", 0.7)]:
            report = subprocess.run(
                ["perf", "report", "-i", data, "--no-children", "--stdio", "-g", "none",
                 "--sort", sort, "--percent-limit", str(limit)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.decode(errors="replace")
            lines = [x for x in report.splitlines() if x.strip() and not x.startswith("#")]
            print(f"\nself time by {sort}:")
            print("\n".join(lines[:args.top]))
    finally:
        if os.path.exists(image):
            os.unlink(image)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
