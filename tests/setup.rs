//! Kernel tests of ring set-up: [`URingBuilder`]'s options (completion
//! ring size, eventfd, registered files and buffers, setup flags, an
//! allowlist applied after registration), the fixed reads and writes, a
//! ring that requires registered files, and [`URingContext::probe`].
// Needs the real kernel: Miri cannot make io_uring syscalls.
#![cfg(not(miri))]

mod common;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{errno, eventfd, eventfd_count, leaked_buf, pattern, pinned, pipe, reap};
use ringfence::op::{
    Fsync, PollAdd, ReadFixed, Readv, ReadvFixed, Target, WriteFixed, WritevFixed,
};
use ringfence::{
    Error, EventType, FeatureFlags, IosqeFlags, RegisterOperation, RegisteredBuffer,
    URingAllowlist, URingBuilder, URingContext, URingOperation,
};

/// Builds `builder`'s ring, or skips the test where io_uring is unusable.
macro_rules! build {
    ($builder:expr) => {
        match common::usable_or_skip($builder.build()) {
            Some(ring) => ring,
            None => return,
        }
    };
}

/// Reaps exactly one completion, checks it is `user_data`'s, and returns
/// its result.
fn only(ring: &URingContext, user_data: u64) -> io::Result<u32> {
    let mut got = reap(ring, 1);
    assert_eq!(got.len(), 1, "expected only user_data {user_data}: {got:?}");
    let (ud, result) = got.pop().unwrap();
    assert_eq!(ud, user_data, "unexpected completion: {result:?}");
    result
}

/// A file holding `data` at offset 0.
fn file_with(data: &[u8]) -> File {
    let file = tempfile::tempfile().unwrap();
    file.write_all_at(data, 0).unwrap();
    file
}

/// Registered buffer `index`'s bytes, copied out.
///
/// The caller must have no fixed operation on it in flight.
fn buffer_bytes(ring: &URingContext, index: u16) -> Vec<u8> {
    let buffer = ring.registered_buffer(index).unwrap();
    // SAFETY: the context owns the memory for its life, and the caller
    // has no fixed operation on it in flight.
    unsafe { buffer.as_ptr().as_ref() }.to_vec()
}

/// Copies `data` into registered buffer `index` at `at`.
///
/// The caller must have no fixed operation on it in flight.
fn fill_buffer(ring: &URingContext, index: u16, at: usize, data: &[u8]) {
    let buffer = ring.registered_buffer(index).unwrap();
    // SAFETY: as for `buffer_bytes`; nothing else references the memory.
    unsafe { buffer.as_ptr().as_mut()[at..at + data.len()].copy_from_slice(data) };
}

#[test]
fn cq_entries_sizes_the_completion_ring_rounded_to_a_power_of_two() {
    let ring = build!(URingBuilder::new(8).cq_entries(100));
    assert_eq!((ring.sq_entries(), ring.cq_entries()), (8, 128));
    ring.add_nop(1).unwrap();
    assert_eq!(only(&ring, 1).unwrap(), 0);

    let plain = build!(URingBuilder::new(8));
    assert_eq!(plain.cq_entries(), 16, "without cq_entries: twice the SQ");

    for (entries, cq) in [(8, 4), (8, 0), (8, 1 << 17)] {
        let err = URingBuilder::new(entries)
            .cq_entries(cq)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, Error::CqEntriesOutOfRange { cq_entries, entries: e }
                if cq_entries == cq && e == entries),
            "{err:?}"
        );
    }
    let clamped = build!(URingBuilder::new(8).cq_entries(1 << 17).clamp(true));
    assert_eq!(
        clamped.cq_entries(),
        1 << 16,
        "CLAMP clamps to the kernel's limit"
    );
}

#[test]
fn a_builder_eventfd_is_signalled_for_a_completion_even_after_its_fd_is_closed() {
    let efd = eventfd();
    // A second descriptor for the same eventfd: the builder's is closed
    // below, and the kernel must keep its own reference.
    let reader = efd.try_clone().unwrap();
    let ring = build!(URingBuilder::new(8).eventfd(efd.as_fd()));
    drop(efd);
    assert_eq!(
        eventfd_count(&reader),
        None,
        "signalled before any completion"
    );
    ring.add_nop(1).unwrap();
    assert_eq!(only(&ring, 1).unwrap(), 0);
    assert!(
        eventfd_count(&reader).is_some_and(|n| n >= 1),
        "the nop's completion did not signal the eventfd"
    );
}

#[test]
fn registered_files_serve_fixed_targets_empty_slots_fail_ebadf_and_update_files_fills_them() {
    let first = pattern(4096, 1);
    let second = pattern(4096, 2);
    let file = file_with(&first);
    let other = file_with(&second);
    let ring = build!(URingBuilder::new(8).files(&[file.as_fd()]).sparse_files(4));
    // The kernel holds its own reference: closing ours leaves slot 0 open.
    drop(file);

    let read_slot = |slot: u32, ud: u64| {
        let (buf, view) = leaked_buf(4096, 0);
        ring.add(
            Readv::new(pinned(vec![buf]), Target::fixed(slot), Some(0)),
            ud,
        )
        .unwrap();
        (only(&ring, ud), view)
    };
    let (result, view) = read_slot(0, 1);
    assert_eq!(result.unwrap(), 4096);
    assert_eq!(view, &first[..], "slot 0 read other bytes");

    ring.add(Fsync::new(Target::fixed(2)), 2).unwrap();
    assert_eq!(errno(&only(&ring, 2)), Some(libc::EBADF), "an empty slot");

    assert_eq!(ring.update_files(2, &[Some(other.as_fd())]).unwrap(), 1);
    let (result, view) = read_slot(2, 3);
    assert_eq!(result.unwrap(), 4096);
    assert_eq!(
        view,
        &second[..],
        "slot 2 read other bytes after the update"
    );

    assert_eq!(ring.update_files(2, &[None]).unwrap(), 1);
    ring.add(Fsync::new(Target::fixed(2)), 4).unwrap();
    assert_eq!(errno(&only(&ring, 4)), Some(libc::EBADF), "a cleared slot");

    let no_table = build!(URingBuilder::new(8));
    let err = no_table.update_files(0, &[None]).unwrap_err();
    assert!(
        matches!(&err, Error::Register { call: RegisterOperation::FilesUpdate, source }
        if source.raw_os_error() == Some(libc::ENXIO)),
        "{err:?}"
    );

    // Past the table's four slots.
    let err = ring.update_files(4, &[Some(other.as_fd())]).unwrap_err();
    assert!(
        matches!(&err, Error::Register { call: RegisterOperation::FilesUpdate, source }
        if source.raw_os_error() == Some(libc::EINVAL)),
        "{err:?}"
    );
}

#[test]
fn write_fixed_then_read_fixed_round_trip_a_pattern_through_registered_buffers() {
    let file = Arc::new(tempfile::tempfile().unwrap());
    let ring = build!(URingBuilder::new(8).buffers(2, 8192));
    assert_eq!(ring.registered_buffers(), 2);
    assert!(ring.registered_buffer(2).is_none());
    let data = pattern(8192, 3);
    fill_buffer(&ring, 0, 0, &data);

    let buffer = ring.registered_buffer(0).unwrap();
    assert_eq!((buffer.index(), buffer.len()), (0, 8192));
    ring.add(
        WriteFixed::new(Arc::clone(&file), buffer, 0..8192, Some(0)).unwrap(),
        1,
    )
    .unwrap();
    assert_eq!(only(&ring, 1).unwrap(), 8192);
    let mut on_disk = vec![0; 8192];
    file.read_exact_at(&mut on_disk, 0).unwrap();
    assert_eq!(on_disk, data, "write_fixed wrote other bytes");

    // Into the middle of the other buffer, from the middle of the file.
    let target = ring.registered_buffer(1).unwrap();
    ring.add(
        ReadFixed::new(Arc::clone(&file), target, 100..4196, Some(1000)).unwrap(),
        2,
    )
    .unwrap();
    assert_eq!(only(&ring, 2).unwrap(), 4096);
    let got = buffer_bytes(&ring, 1);
    assert_eq!(
        &got[100..4196],
        &data[1000..5096],
        "read_fixed read other bytes"
    );
    assert!(
        got[..100].iter().chain(&got[4196..]).all(|b| *b == 0),
        "wrote outside the range"
    );
}

#[test]
fn a_fixed_range_past_its_registered_buffer_fails_efault() {
    let file = Arc::new(file_with(&pattern(8192, 4)));
    let ring = build!(URingBuilder::new(8).buffers(1, 4096));
    let buffer = ring.registered_buffer(0).unwrap();
    ring.add(
        ReadFixed::new(Arc::clone(&file), buffer, 1..4097, Some(0)).unwrap(),
        1,
    )
    .unwrap();
    assert_eq!(
        errno(&only(&ring, 1)),
        Some(libc::EFAULT),
        "one byte past the end"
    );

    // An index with no buffer behind it.
    let forged = RegisteredBuffer::from_raw_parts(3, buffer.as_ptr());
    ring.add(
        WriteFixed::new(Arc::clone(&file), forged, 0..16, Some(0)).unwrap(),
        2,
    )
    .unwrap();
    assert_eq!(
        errno(&only(&ring, 2)),
        Some(libc::EFAULT),
        "a missing index"
    );
    assert!(
        buffer_bytes(&ring, 0).iter().all(|b| *b == 0),
        "the buffer was written"
    );

    let (start, end) = (10, 5);
    let err = ReadFixed::new(Arc::clone(&file), buffer, start..end, None).unwrap_err();
    assert!(
        matches!(err, Error::InvalidBufferRange { start: 10, end: 5 }),
        "{err:?}"
    );
    let err = URingBuilder::new(8).buffers(1, 0).build().unwrap_err();
    assert!(
        matches!(err, Error::RegisteredBuffersOutOfRange { count: 1, len: 0 }),
        "{err:?}"
    );
}

/// Also the check that the hand-numbered opcodes 60 and 61 are the
/// kernel's: with another number the kernel would run another operation
/// (or none) and these bytes would not move.
#[test]
fn writev_fixed_and_readv_fixed_move_ranges_of_registered_buffers_in_order() {
    if common::kernel_version() < (6, 15) {
        eprintln!("skipping: the vectored fixed forms need Linux 6.15");
        return;
    }
    let file = Arc::new(tempfile::tempfile().unwrap());
    let ring = build!(URingBuilder::new(8).buffers(2, 8192));
    let data = pattern(8192, 5);
    fill_buffer(&ring, 0, 0, &data);
    let buffer = ring.registered_buffer(0).unwrap();
    // Two ranges, out of order: the file gets 6000..7000 then 0..500.
    ring.add(
        WritevFixed::new(Arc::clone(&file), buffer, &[6000..7000, 0..500], Some(10)).unwrap(),
        1,
    )
    .unwrap();
    assert_eq!(only(&ring, 1).unwrap(), 1500);
    let mut on_disk = vec![0; 1510];
    file.read_exact_at(&mut on_disk, 0).unwrap();
    let mut want = vec![0; 10];
    want.extend_from_slice(&data[6000..7000]);
    want.extend_from_slice(&data[..500]);
    assert_eq!(on_disk, want, "writev_fixed wrote other bytes");

    // Back into buffer 1, split differently: 700 bytes at 4000, then the
    // rest at 100.
    let target = ring.registered_buffer(1).unwrap();
    ring.add(
        ReadvFixed::new(Arc::clone(&file), target, &[4000..4700, 100..900], Some(10)).unwrap(),
        2,
    )
    .unwrap();
    assert_eq!(only(&ring, 2).unwrap(), 1500);
    let got = buffer_bytes(&ring, 1);
    assert_eq!(&got[4000..4700], &want[10..710], "first range");
    assert_eq!(&got[100..900], &want[710..1510], "second range");
    assert!(
        got[..100]
            .iter()
            .chain(&got[900..4000])
            .chain(&got[4700..])
            .all(|b| *b == 0),
        "wrote outside the ranges"
    );

    // A range one byte past the buffer fails the whole read, untouched.
    ring.add(
        ReadvFixed::new(Arc::clone(&file), target, &[0..16, 8000..8193], Some(0)).unwrap(),
        3,
    )
    .unwrap();
    assert_eq!(errno(&only(&ring, 3)), Some(libc::EFAULT), "past the end");
    let (start, end) = (5, 4);
    let err = ReadvFixed::new(Arc::clone(&file), target, &[0..1, start..end], None).unwrap_err();
    assert!(
        matches!(err, Error::InvalidBufferRange { start: 5, end: 4 }),
        "{err:?}"
    );
    // An empty range, which the kernel would fail the whole read for.
    let err = WritevFixed::new(Arc::clone(&file), target, &[0..1, 3..3], None).unwrap_err();
    assert!(
        matches!(err, Error::InvalidBufferRange { start: 3, end: 3 }),
        "{err:?}"
    );
}

/// An allowlist for a worker that reaches files only through the
/// registered table: fixed reads and writes, fsync and poll, plus
/// housekeeping, every SQE required to carry `FIXED_FILE`.
fn fixed_files_only() -> URingAllowlist {
    let mut list = URingAllowlist::new();
    list.allow_housekeeping()
        .allow_submit_operation(URingOperation::ReadFixed)
        .allow_submit_operation(URingOperation::WriteFixed)
        .allow_submit_operation(URingOperation::Fsync)
        .allow_submit_operation(URingOperation::PollAdd)
        .require_sqe_flags(IosqeFlags::FIXED_FILE);
    list
}

#[test]
fn a_fixed_files_only_ring_refuses_a_plain_fd_and_serves_a_registered_one() {
    let data = pattern(4096, 5);
    let file = Arc::new(file_with(&data));
    let efd = eventfd();
    let list = fixed_files_only();
    let ring = build!(URingBuilder::new(8)
        .files(&[file.as_fd()])
        .buffers(1, 4096)
        .eventfd(efd.as_fd())
        .allowlist(&list));

    ring.add(Fsync::new(Arc::clone(&file)), 1).unwrap();
    assert_eq!(errno(&only(&ring, 1)), Some(libc::EACCES), "a plain fd");
    let buffer = ring.registered_buffer(0).unwrap();
    ring.add(
        ReadFixed::new(Arc::clone(&file), buffer, 0..4096, Some(0)).unwrap(),
        2,
    )
    .unwrap();
    assert_eq!(errno(&only(&ring, 2)), Some(libc::EACCES), "a plain fd");
    assert!(
        buffer_bytes(&ring, 0).iter().all(|b| *b == 0),
        "a refused read wrote"
    );

    ring.add(Fsync::new(Target::fixed(0)), 3).unwrap();
    assert_eq!(only(&ring, 3).unwrap(), 0);
    ring.add(
        ReadFixed::new(Target::fixed(0), buffer, 0..4096, Some(0)).unwrap(),
        4,
    )
    .unwrap();
    assert_eq!(only(&ring, 4).unwrap(), 4096);
    assert_eq!(
        buffer_bytes(&ring, 0),
        data,
        "the registered file read other bytes"
    );
    // Registered before the restrictions, the eventfd works on the
    // restricted ring.
    assert!(eventfd_count(&efd).is_some_and(|n| n >= 4));

    // The table cannot grow behind the allowlist's back (before 7.0 the
    // register call is refused; from 7.0 it is open unless the allowlist
    // has a register-call entry).
    if common::kernel_version() < (7, 0) {
        let err = ring.update_files(0, &[None]).unwrap_err();
        assert!(
            matches!(&err, Error::Register { call: RegisterOperation::FilesUpdate, source }
            if source.raw_os_error() == Some(libc::EACCES)),
            "{err:?}"
        );
    }
}

#[test]
fn a_fixed_files_only_ring_allowing_files_update_lets_update_files_through() {
    let file = file_with(&pattern(16, 6));
    let mut list = fixed_files_only();
    list.allow_register_operation(RegisterOperation::FilesUpdate);
    let ring = build!(URingBuilder::new(8).sparse_files(2).allowlist(&list));
    ring.add(Fsync::new(Target::fixed(1)), 1).unwrap();
    assert_eq!(errno(&only(&ring, 1)), Some(libc::EBADF));
    assert_eq!(ring.update_files(1, &[Some(file.as_fd())]).unwrap(), 1);
    ring.add(Fsync::new(Target::fixed(1)), 2).unwrap();
    assert_eq!(only(&ring, 2).unwrap(), 0);
}

#[test]
fn the_contexts_own_sqes_carry_fixed_file_and_work_on_a_fixed_files_only_ring() {
    let (reader, _writer) = pipe();
    let list = fixed_files_only();
    let ring = build!(URingBuilder::new(8)
        .files(&[reader.as_fd()])
        .allowlist(&list));

    // The caller's nop gets FIXED_FILE from the context (it names no
    // file): it passes, and wakes a waiter.
    std::thread::scope(|s| {
        let waiter = s.spawn(|| ring.wait().unwrap().collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(50));
        ring.add_nop(1).unwrap();
        ring.submit().unwrap();
        let got = waiter.join().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].1.as_ref().ok()), (1, Some(&0)));
    });

    // Completions handed back: the context's own wake-up nop makes the
    // ring fd readable again.
    for ud in [2, 3] {
        ring.add_nop(ud).unwrap();
    }
    ring.submit().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !common::readable_within(ring.as_raw_fd(), 10) {
        assert!(Instant::now() < deadline, "the nops never completed");
    }
    let mut completions = ring.wait().unwrap();
    let _first = completions.next().unwrap();
    drop(completions);
    assert!(
        common::readable_within(ring.as_raw_fd(), 1000),
        "the ring fd is not readable for a completion handed back"
    );
    let rest = reap(&ring, 1);
    assert_eq!(rest.len(), 1);

    // A poll on the registered pipe never completes by itself: close must
    // cancel it with an AsyncCancel carrying FIXED_FILE.
    ring.add(PollAdd::new(Target::fixed(0), EventType::Read), 4)
        .unwrap();
    ring.submit().unwrap();
    let started = Instant::now();
    ring.close(Duration::from_secs(3))
        .expect("close could not cancel the poll on the registered pipe");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn coop_taskrun_and_submit_all_rings_complete_polls_and_reads() {
    let (reader, mut writer) = pipe();
    let reader = Arc::new(reader);
    for ring in [
        build!(URingBuilder::new(8).coop_taskrun(true)),
        build!(URingBuilder::new(8).submit_all(true)),
        build!(URingBuilder::new(8).submit_all(false)),
    ] {
        ring.add(PollAdd::new(Arc::clone(&reader), EventType::Read), 1)
            .unwrap();
        ring.submit().unwrap();
        writer.write_all(b"x").unwrap();
        assert_eq!(only(&ring, 1).unwrap(), libc::POLLIN as u32);
        let mut byte = [0];
        (&*reader).read_exact(&mut byte).unwrap();
        assert_eq!(byte, *b"x");
    }
}

#[test]
fn probe_agrees_with_the_operations_that_run_and_features_are_reported() {
    let Some(ring) = common::ring_or_skip(8, None) else {
        return;
    };
    let probe = URingContext::probe().unwrap();
    let kernel = common::kernel_version();
    for op in ringfence::op::ISSUABLE {
        assert_eq!(
            probe.supports(*op),
            op.since() <= kernel,
            "{op:?} (since {:?}) on {kernel:?}",
            op.since()
        );
    }
    // Linux 6.16 to 6.18 know every operation the crate names (the
    // bindings' and the hand-numbered ones after them), `IORING_OP_PIPE`
    // last: its number, 62, checks the end of the hand-numbered list.
    assert!(probe.supports(URingOperation::SendmsgZc));
    if ((6, 16)..=(6, 18)).contains(&kernel) {
        assert_eq!(probe.last_op(), URingOperation::Pipe as u8);
    }
    if let Some(past) = probe.last_op().checked_add(1) {
        assert!(!probe.supports_raw(past), "an opcode past last_op");
    }
    assert_eq!(URingContext::probe().unwrap(), probe, "the cached probe");

    let features = ring.features();
    assert!(
        features.contains(FeatureFlags::NODROP | FeatureFlags::RW_CUR_POS | FeatureFlags::EXT_ARG),
        "{features:?}"
    );
    // The allowlist check passes for every operation this kernel has.
    let mut list = URingAllowlist::new();
    for op in URingOperation::ALL {
        list.allow_submit_operation(*op);
    }
    build!(URingBuilder::new(8).allowlist(&list));
}

#[test]
fn a_built_ring_takes_submissions_from_a_second_thread_as_single_issuer_would_not() {
    // Nothing to build: the builder has no method for either (see
    // `URingBuilder::coop_taskrun`). What this pins down is that a ring
    // from the builder serves a second thread, which SINGLE_ISSUER would
    // refuse with EEXIST.
    let ring = build!(URingBuilder::new(8));
    ring.add_nop(1).unwrap();
    ring.submit().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            ring.add_nop(2).unwrap();
            ring.submit().unwrap();
        });
    });
    let mut got: Vec<_> = reap(&ring, 2)
        .into_iter()
        .map(|(ud, r)| (ud, r.unwrap()))
        .collect();
    got.sort();
    assert_eq!(got, [(1, 0), (2, 0)]);
}

#[test]
fn a_fixed_op_on_a_ring_without_buffers_fails_efault() {
    // What the fuzz targets expect of ReadFixed and WriteFixed.
    let ring = common::ring_or_skip(8, None);
    let Some(ring) = ring else { return };
    let mut memory = [0u8; 16];
    let handle = RegisteredBuffer::from_raw_parts(0, NonNull::from(&mut memory[..]));
    let file = Arc::new(tempfile::tempfile().unwrap());
    ring.add(
        ReadFixed::new(Arc::clone(&file), handle, 0..16, Some(0)).unwrap(),
        1,
    )
    .unwrap();
    assert_eq!(errno(&only(&ring, 1)), Some(libc::EFAULT));
    ring.add(WriteFixed::new(file, handle, 0..16, Some(0)).unwrap(), 2)
        .unwrap();
    assert_eq!(errno(&only(&ring, 2)), Some(libc::EFAULT));
    assert_eq!(memory, [0; 16]);
}
