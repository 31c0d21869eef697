#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/: python3 fuzz/seeds.py
(or under DIR/<target>/ with --out DIR, which .ci/fuzz uses to check that
the committed seeds are what this writes; other files in fuzz/corpus, such as
inputs kept from a crash, are left alone).

The targets decode their input with the `arbitrary` crate (1.x), whose
format this encodes: integers little-endian in their own width, a bool as
one byte (bit 0), an enum as a u32 `x` picking variant `(x * variants) >> 32`
followed by the variant's fields (a target's `Step::Common(CommonStep)` is
two such choices), structs and arrays field by field, and the
input's last field (the step list) as elements each preceded by a 1 byte.

Kept because the seeds must follow the input types: when a target's `Input`,
`Step` or the shared `OpInput` or `CommonStep` (fuzz_targets/common/model.rs)
changes, change
the matching definitions here and run it again. Check what a seed decodes to
with `RUST_LIBFUZZER_DEBUG_PATH=/tmp/decoded cargo +nightly fuzz run
--fuzz-dir fuzz TARGET SEED_FILE`.
"""

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")

# Kernel opcode numbers (OpInput::which picks the issuable operation with
# this number).
NOP, READV, WRITEV, FSYNC, POLL_ADD, POLL_REMOVE, ASYNC_CANCEL, FALLOCATE = (
    0, 1, 2, 3, 6, 7, 14, 17)
OPENAT = 18  # Not issuable: for allowlists only.
# SqeFlags / IosqeFlags bits.
FIXED_FILE, LINK, HARDLINK, ASYNC = 1, 4, 8, 16
# Indices into model::LABELS.
HIGH_LABEL = 12  # 1 << 63
MAX_LABEL = 15  # u64::MAX


def u8(v): return struct.pack("<B", v)
def u16(v): return struct.pack("<H", v)
def u32(v): return struct.pack("<I", v)
def u64(v): return struct.pack("<Q", v)
def boolean(v): return u8(1 if v else 0)


def variant(index, count):
    """The u32 that picks variant `index` of an enum of `count`."""
    assert 0 <= index < count
    return u32(-(-(index << 32) // count))


def steps(*encoded):
    return b"".join(b"\x01" + step for step in encoded) + b"\x00"


# model::Offset
OFFSET_VARIANTS = 5
def current(): return variant(0, OFFSET_VARIANTS)
def at(n): return variant(1, OFFSET_VARIANTS) + u8(n)
def near_max(k): return variant(2, OFFSET_VARIANTS) + u16(k)
def above_max(k): return variant(3, OFFSET_VARIANTS) + u16(k)
def max_offset(): return variant(4, OFFSET_VARIANTS)


def op(which, label=0, file=0, offset=None, flags=0, target=0):
    """model::OpInput"""
    return (u8(which) + u8(label) + u8(file) + (offset or current()) + u8(flags)
            + u8(target))


# model::BatchInput::links: bit i links operation i to the next; HARD
# makes those links hard ones.
HARD = 8


def batch(*ops, links=0):
    """model::BatchInput: 1 to 3 operations, chained as `links` says."""
    assert 1 <= len(ops) <= 3
    padded = list(ops) + [op(NOP)] * (3 - len(ops))
    return u8(len(ops) - 1) + u8(links) + b"".join(padded)


class Steps:
    """A target's `Step` enum: names in declaration order."""

    def __init__(self, *names):
        self.names = names

    def __getattr__(self, name):
        index = self.names.index(name)
        return lambda *fields: variant(index, len(self.names)) + b"".join(fields)


# model::CommonStep: the steps every target shares.
COMMON_STEPS = Steps("Add", "Batch", "Submit", "Reap", "ReapSome", "ReapAndAdd", "Drain")


class TargetSteps:
    """A target's `Step` enum: `Common(CommonStep)` first, then its own
    variants, named in declaration order. A common step's name encodes the
    `Common` variant followed by the `CommonStep`."""

    def __init__(self, *own):
        self.own = Steps("Common", *own)

    def __getattr__(self, name):
        if name in COMMON_STEPS.names:
            common = getattr(COMMON_STEPS, name)
            return lambda *fields: self.own.Common(common(*fields))
        return getattr(self.own, name)


def write(target, name, data):
    folder = os.path.join(OUT, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def sim_ops():
    s = TargetSteps("Forget", "Fault", "SetReady", "CompleteDeferred")
    faults = Steps("Interrupted", "InterruptedWait", "Again", "Busy", "ShortSubmit")

    def input(nodrop, defer, seed, entries_log2, *body, ext_arg=True):
        return (boolean(nodrop) + boolean(defer) + boolean(ext_arg) + u8(seed)
                + u8(entries_log2) + steps(*body))

    write("sim_ops", "plain_ops", input(True, False, 1, 3,
        s.Add(op(NOP, 0)), s.Add(op(READV, 1, offset=at(10))),
        s.Add(op(WRITEV, 2)), s.Add(op(FSYNC, 3)), s.Add(op(FALLOCATE, 4, file=1, offset=at(3))),
        s.Add(op(POLL_ADD, 5)), s.Add(op(READV, 6, offset=current())),
        s.Submit(), s.Reap(), s.Add(op(READV, 7, offset=at(250))), s.Drain()))
    write("sim_ops", "shared_labels", input(True, False, 2, 3,
        s.Add(op(NOP, 3)), s.Add(op(NOP, 3)), s.Add(op(POLL_ADD, 3)),
        s.Add(op(FSYNC, 3)), s.Add(op(READV, 3)),  # refused: 3 is in use
        s.Add(op(READV, 4)), s.Add(op(NOP, 4)),  # refused: 4 pins memory
        s.Add(op(ASYNC_CANCEL, 3, target=3)), s.Submit(), s.Reap(), s.Drain(),
        s.Add(op(READV, 3)), s.Drain()))
    write("sim_ops", "hand_back_and_forget", input(True, False, 3, 3,
        *[s.Add(op(NOP, i)) for i in range(6)], s.Submit(),
        s.ReapSome(u8(2)), s.Add(op(NOP, 9)), s.Forget(u8(3)),
        s.Add(op(READV, 10)), s.Add(op(POLL_ADD, 11)), s.Reap(), s.Drain()))
    # A crosvm-style loop: resubmit (here: a readv under the label just
    # completed) while the iterator is alive.
    write("sim_ops", "resubmit_while_reaping", input(True, False, 9, 3,
        *[s.Add(op(READV, i, offset=at(i))) for i in range(4)], s.Submit(),
        s.ReapAndAdd(u8(1), op(READV, 0, offset=at(9))),
        s.ReapAndAdd(u8(2), op(NOP, 1)), s.ReapAndAdd(u8(3), op(READV, 2)), s.Drain()))
    write("sim_ops", "faults_and_deferred", input(True, True, 4, 2,
        s.Fault(faults.Interrupted()), s.Add(op(NOP, 1)), s.Add(op(READV, 2, offset=at(5))),
        s.Fault(faults.ShortSubmit(u8(0))), s.Add(op(NOP, 3, flags=ASYNC)),
        s.Fault(faults.Again()), s.Submit(), s.Fault(faults.InterruptedWait()),
        s.Add(op(ASYNC_CANCEL, 4, target=2)), s.CompleteDeferred(u8(1)),
        s.Fault(faults.Busy()), s.Reap(), s.Add(op(POLL_ADD, 5)), s.SetReady(boolean(True)),
        s.Drain()))
    write("sim_ops", "no_nodrop_cap", input(False, False, 5, 0,
        s.Add(op(NOP, 1)), s.Add(op(NOP, 2)), s.Submit(), s.Add(op(NOP, 3)),
        s.Batch(batch(op(NOP, 4), op(NOP, 5))), s.ReapSome(u8(1)),
        s.Add(op(NOP, 6)), s.Reap(), s.Drain()))
    # Without EXT_ARG, `wait_timeout` polls the ring fd.
    write("sim_ops", "overflow", input(True, False, 6, 0,
        *[x for i in range(6) for x in (s.Add(op(NOP, i)), s.Submit())],
        s.Reap(), s.Reap(), s.Drain(), ext_arg=False))
    write("sim_ops", "offsets", input(True, False, 7, 3,
        s.Add(op(READV, 1, offset=near_max(0))), s.Add(op(READV, 2, offset=near_max(300))),
        s.Add(op(READV, 3, offset=above_max(0))), s.Add(op(READV, 4, offset=max_offset())),
        s.Add(op(WRITEV, 5, offset=max_offset())), s.Add(op(FALLOCATE, 6, offset=above_max(7))),
        s.Add(op(FALLOCATE, 7, offset=near_max(1))),
        s.Batch(batch(op(NOP, 8), op(READV, 9, offset=max_offset()), op(READV, 10, offset=at(0)))),
        # Past the largest simulated file: EFBIG.
        s.Add(op(WRITEV, 11, offset=near_max(0))),
        s.Add(op(FALLOCATE, HIGH_LABEL, file=1, offset=near_max(300))),
        s.Drain()))
    write("sim_ops", "cancel_by_label", input(True, False, 8, 3,
        s.Add(op(POLL_ADD, 5)), s.Add(op(POLL_ADD, 5)), s.Add(op(POLL_ADD, 5)),
        s.Submit(), s.Add(op(POLL_REMOVE, 6, target=5)), s.Submit(),
        s.Add(op(POLL_ADD, 5)), s.Add(op(ASYNC_CANCEL, 7, target=5)),
        s.Batch(batch(op(POLL_ADD, 8), op(ASYNC_CANCEL, 9, target=8))), s.Reap(), s.Drain()))
    # Chains: a read past the largest file fails and cancels the rest of a
    # soft chain; a hard chain runs on; a chain left open is refused.
    write("sim_ops", "chains", input(True, True, 10, 3,
        s.Batch(batch(op(WRITEV, 1, offset=near_max(0)), op(NOP, 2), op(READV, 3, offset=at(1)),
                      links=0b011)),
        s.Batch(batch(op(WRITEV, 4, offset=near_max(0)), op(NOP, 5), links=0b001 | HARD)),
        s.Batch(batch(op(NOP, 6), op(NOP, 7), links=0b011)), s.Submit(),
        s.CompleteDeferred(u8(3)), s.Reap(), s.Drain()))


def real_kernel_ops():
    s = TargetSteps("PollFd")

    def input(*body):
        return steps(*body)

    write("real_kernel_ops", "plain_ops", input(
        s.Add(op(NOP, 0)), s.Add(op(READV, 1, file=0)), s.Add(op(WRITEV, 2, file=0)),
        s.Add(op(READV, 3, file=2, offset=at(7))), s.Add(op(FSYNC, 4, file=0)),
        s.Add(op(FSYNC, 5, file=1)), s.Submit(), s.Reap(),
        s.Add(op(WRITEV, 6, file=2, offset=at(4))), s.Add(op(FALLOCATE, 7, file=0, offset=at(40))),
        s.Add(op(FALLOCATE, 8, file=1, offset=at(2))), s.Drain(),
        s.Add(op(READV, 9, file=3, offset=at(4))), s.Add(op(READV, 10, file=3, offset=at(40))),
        s.Drain()))
    write("real_kernel_ops", "shared_labels_and_cancel", input(
        s.Add(op(POLL_ADD, 5)), s.Add(op(POLL_ADD, 5)), s.Add(op(NOP, 5)),
        s.Add(op(READV, 5)), s.Submit(),
        s.Add(op(ASYNC_CANCEL, 6, target=5)), s.Add(op(POLL_REMOVE, 6, target=5)),
        s.Submit(), s.Reap(), s.Add(op(POLL_ADD, HIGH_LABEL)), s.Add(op(POLL_ADD, HIGH_LABEL)),
        s.Batch(batch(op(POLL_ADD, MAX_LABEL), op(ASYNC_CANCEL, MAX_LABEL, target=HIGH_LABEL))),
        s.Drain()))
    write("real_kernel_ops", "hand_back_poll_fd", input(
        s.Add(op(NOP, 1)), s.Add(op(NOP, 2)), s.Add(op(NOP, 3)), s.Submit(),
        s.ReapSome(u8(2)), s.PollFd(), s.Add(op(NOP, 4)), s.Add(op(NOP, 5)), s.Add(op(NOP, 6)),
        s.Submit(), s.ReapSome(u8(1)), s.PollFd(), s.Drain()))
    # The first fault: three reads of /dev/zero, one taken, then a
    # read under a label whose completion is still unreturned is refused,
    # and in_flight() counts it with the iterator alive.
    write("real_kernel_ops", "unreturned_completions", input(
        s.Add(op(READV, 1, file=0)), s.Add(op(READV, 2, file=0)), s.Add(op(READV, 3, file=0)),
        s.Submit(), s.ReapSome(u8(1)), s.Add(op(READV, 2, file=0)),
        s.ReapAndAdd(u8(1), op(READV, 3, file=0)), s.Drain()))
    write("real_kernel_ops", "offsets", input(
        s.Add(op(READV, 1, file=2, offset=near_max(0))),
        s.Add(op(READV, 2, file=3, offset=near_max(1000))),
        s.Add(op(READV, 3, file=0, offset=max_offset())),
        s.Add(op(READV, 4, file=2, offset=above_max(0))),
        s.Add(op(WRITEV, 5, file=2, offset=near_max(10))),
        s.Add(op(WRITEV, 6, file=0, offset=max_offset())),
        s.Add(op(FALLOCATE, 7, file=0, offset=near_max(3))),
        s.Add(op(FALLOCATE, 8, file=0, offset=near_max(4000))),
        s.Add(op(FALLOCATE, 9, file=0, offset=above_max(1))),
        s.Batch(batch(op(NOP, 10), op(READV, 11, offset=max_offset()))), s.Drain()))
    write("real_kernel_ops", "duplicates_and_full_queue", input(
        s.Add(op(READV, 1, file=2, offset=at(1))), s.Add(op(READV, 1, file=2, offset=at(2))),
        *[s.Add(op(NOP, 2)) for _ in range(8)],
        s.Batch(batch(op(NOP, 3), op(WRITEV, 3), op(NOP, 4))), s.Submit(),
        s.Batch(batch(op(NOP, 3), op(NOP, 3), op(NOP, 4))), s.Reap(), s.Drain()))
    # Chains: a read past the end of the zero-length file is short and
    # cancels the rest of a soft chain; a hard chain runs on; an open chain
    # is refused.
    write("real_kernel_ops", "chains", input(
        s.Batch(batch(op(READV, 1, file=3, offset=near_max(0)), op(NOP, 2),
                      op(WRITEV, 3, file=2, offset=at(1)), links=0b011)),
        s.Batch(batch(op(READV, 4, file=0), op(FSYNC, 5, file=0), links=0b001 | HARD)),
        s.Batch(batch(op(NOP, 6), links=0b001)), s.Submit(), s.Reap(), s.Drain()))
    write("real_kernel_ops", "pending_at_close", input(
        s.Add(op(POLL_ADD, 1)), s.Add(op(POLL_ADD, 2)), s.Add(op(READV, 3, file=1)),
        s.Add(op(NOP, 4, flags=ASYNC)), s.Submit()))


def restricted_ring():
    s = TargetSteps("RegisterEventfd", "UnregisterEventfd")
    sets = Steps("Mask", "Only", "AllBut")

    def input(ops, housekeeping=False, allowed=0, required=0, register=False,
              unregister=False, close_early=False, body=()):
        policy = (ops + boolean(housekeeping) + u8(allowed) + u8(required)
                  + boolean(register) + boolean(unregister))
        return policy + boolean(close_early) + steps(*body)

    def mask(*opcodes):
        return sets.Mask(u64(sum(1 << o for o in opcodes)))

    every_kind = (
        s.Add(op(NOP, 0)), s.Add(op(READV, 1, file=0)), s.Add(op(READV, 2, file=1, offset=at(9))),
        s.Add(op(WRITEV, 3, file=0)), s.Add(op(WRITEV, 4, file=1, offset=at(2))),
        s.Add(op(FSYNC, 5)), s.Add(op(FALLOCATE, 6, offset=at(1))), s.Add(op(POLL_ADD, 7)),
        s.Submit(), s.Add(op(POLL_REMOVE, 8, target=7)), s.Add(op(ASYNC_CANCEL, 9, target=7)),
        s.Reap(), s.RegisterEventfd(), s.UnregisterEventfd(), s.Drain())
    write("restricted_ring", "everything_allowed", input(
        sets.AllBut(u8(OPENAT)), housekeeping=True, allowed=LINK | HARDLINK | ASYNC,
        register=True, unregister=True, body=every_kind))
    write("restricted_ring", "nothing_allowed", input(mask(), body=every_kind))
    # The README's virtio-blk set: no Nop, no AsyncCancel; polls left at close.
    write("restricted_ring", "readv_writev_only", input(
        mask(READV, WRITEV, FSYNC, POLL_ADD), close_early=True, body=(
            s.Add(op(READV, 1, file=1, offset=at(3))), s.Add(op(WRITEV, 2, file=1)),
            s.Add(op(NOP, 3)), s.Add(op(POLL_ADD, 4)), s.Add(op(POLL_ADD, 4)),
            s.Submit(), s.ReapSome(u8(2)), s.Reap(), s.Add(op(POLL_ADD, 5)))))
    write("restricted_ring", "housekeeping_close_early", input(
        mask(POLL_ADD), housekeeping=True, close_early=True, body=(
            s.Add(op(POLL_ADD, 1)), s.Add(op(POLL_ADD, 1)), s.Add(op(NOP, 1)), s.Submit(),
            s.ReapSome(u8(1)))))
    # Chains in batches: one broken by a member outside the allowlist, a
    # hard one, one whose head's ASYNC flag is refused.
    write("restricted_ring", "link_chains", input(
        mask(NOP, READV, POLL_ADD), allowed=LINK | HARDLINK, body=(
            s.Batch(batch(op(NOP, 1), op(FSYNC, 2), op(NOP, 3), links=0b011)),
            s.Batch(batch(op(NOP, 4), op(READV, 5, file=0), links=0b001 | HARD)),
            s.Batch(batch(op(NOP, 6, flags=ASYNC), op(NOP, 7), links=0b001)),
            s.Submit(), s.Reap(), s.Drain())))
    # Link flags the allowlist does not allow: every linked SQE refused.
    write("restricted_ring", "links_not_allowed", input(
        mask(NOP, READV), body=(
            s.Batch(batch(op(NOP, 1), op(NOP, 2), links=0b001)),
            s.Batch(batch(op(NOP, 3), op(READV, 4, file=0), links=0b001 | HARD)),
            s.Submit(), s.Reap(), s.Drain())))
    write("restricted_ring", "async_required", input(
        sets.Mask(u64(2**64 - 1)), required=ASYNC, body=(
            s.Add(op(NOP, 1, flags=ASYNC)), s.Add(op(NOP, 2)), s.Add(op(READV, 3)),
            s.Add(op(ASYNC_CANCEL, 4, target=1)), s.Submit(), s.ReapSome(u8(2)), s.Drain())))
    # The VMM issue's ring: every SQE must address a registered file.
    write("restricted_ring", "fixed_file_required", input(
        sets.AllBut(u8(OPENAT)), housekeeping=True, required=FIXED_FILE, body=(
            s.Add(op(NOP, 1)), s.Add(op(READV, 2)), s.Add(op(POLL_ADD, 3)), s.Submit(),
            s.ReapSome(u8(2)), s.Drain())))
    write("restricted_ring", "only_readv", input(
        sets.Only(u8(READV)), body=(
            s.Add(op(READV, 1, file=1, offset=near_max(2))),
            s.Add(op(READV, 2, file=1, offset=max_offset())), s.Add(op(NOP, 3)),
            s.Batch(batch(op(READV, 4), op(READV, 4))), s.Drain())))
    write("restricted_ring", "resubmit_while_reaping", input(
        mask(NOP, READV), body=(
            s.Add(op(NOP, 1)), s.Add(op(NOP, 1)), s.Add(op(READV, 2)), s.Add(op(FSYNC, 3)),
            s.Submit(), s.ReapAndAdd(u8(2), op(READV, 2)), s.Drain())))
    write("restricted_ring", "eventfd", input(
        mask(NOP), register=True, body=(
            s.RegisterEventfd(), s.RegisterEventfd(), s.UnregisterEventfd(),
            s.UnregisterEventfd(), s.Add(op(NOP, 1)), s.Reap())))


def async_ops():
    s = Steps("Start", "Poll", "Drop", "Forget", "Turn", "Release", "Fault")
    ops = Steps("Read", "Write", "Readv", "Writev", "Fsync")
    faults = Steps("Interrupted", "Again", "Busy", "ShortSubmit")

    def input(seed, entries_log2, nodrop, cancel, *body):
        return u8(seed) + u8(entries_log2) + boolean(nodrop) + boolean(cancel) + steps(*body)

    def read_op(offset, n): return s.Start(ops.Read(u8(offset), u8(n - 1)))
    def write_op(offset, n): return s.Start(ops.Write(u8(offset), u8(n - 1)))
    def readv_op(offset, a, b): return s.Start(ops.Readv(u8(offset), u8(a - 1), u8(b - 1)))
    def writev_op(offset, a, b): return s.Start(ops.Writev(u8(offset), u8(a - 1), u8(b - 1)))
    def poll(which, times=1): return s.Poll(u8(which), u8(times - 1))

    # Dropped while the kernel holds the read (no cancellation): freed only
    # after the release and the turn that reaps it.
    write("async_ops", "drop_in_kernel", input(1, 3, True, False,
        read_op(0, 16), poll(0), s.Turn(), s.Drop(u8(0)), s.Turn(), s.Release(u8(1)), s.Turn()))
    # The same with cancellation: the cancel takes the held write out.
    write("async_ops", "cancel_in_kernel", input(2, 3, True, True,
        write_op(4, 8), readv_op(10, 3, 20), poll(0), poll(1), s.Turn(), s.Drop(u8(0)),
        s.Drop(u8(0)), s.Turn(), s.Release(u8(3)), s.Turn()))
    # One SQ entry, one CQ slot's worth in flight: adds refused, futures
    # waiting for room, one dropped while waiting.
    write("async_ops", "no_room", input(3, 0, False, False,
        read_op(0, 8), readv_op(200, 32, 32), write_op(0, 4), poll(0), poll(1), poll(2), s.Drop(u8(1)),
        s.Turn(), s.Release(u8(3)), s.Turn(), poll(0, 3), poll(1, 3), s.Turn(), s.Release(u8(3)),
        s.Turn(), poll(0, 3)))
    # Forgotten in the kernel; the ring keeps working for the next ones.
    write("async_ops", "forget", input(4, 2, True, False,
        read_op(5, 5), poll(0), s.Turn(), s.Forget(u8(0)), s.Release(u8(1)), s.Turn(),
        writev_op(60, 4, 9), poll(0), s.Turn(), s.Release(u8(1)), s.Turn(), poll(0)))
    # Completed, reaped, then dropped; a completed write returned.
    write("async_ops", "completed_then_dropped", input(5, 3, True, True,
        read_op(250, 32), poll(0), s.Turn(), s.Release(u8(1)), s.Turn(), s.Drop(u8(0)),
        write_op(63, 32), poll(0), s.Turn(), s.Release(u8(1)), s.Turn(), poll(0)))
    # Faults on enter around an fsync and reads.
    write("async_ops", "faults", input(6, 1, True, False,
        s.Fault(faults.Busy()), s.Start(ops.Fsync()), poll(0), s.Turn(),
        s.Fault(faults.ShortSubmit(u8(0))), read_op(1, 2), read_op(2, 3), poll(1), poll(2),
        s.Fault(faults.Again()), s.Turn(), s.Fault(faults.Interrupted()), s.Turn(),
        s.Release(u8(3)), s.Turn(), poll(0), poll(0), poll(1)))


TARGETS = {"sim_ops": sim_ops, "real_kernel_ops": real_kernel_ops,
           "restricted_ring": restricted_ring, "async_ops": async_ops}

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--out"] and len(args) >= 2:
        OUT = os.path.abspath(args[1])
        args = args[2:]
    for name in args or TARGETS:
        TARGETS[name]()
