//! What each operation does on the simulated kernel, restrictions, register
//! calls, and batches.

use std::time::Duration;

use super::super::SimKernel;
use super::{errno, iovecs, labels, raw, reap, reap_in_order};
use crate::abi::{IosqeFlags, Sqe};
use crate::op::{self, Fadvise, KeepAlive, Nop, Prepared, Read, Readv, Resolve, Write};
use crate::{Error, EventType, IoBufMut, OpBatch, SqeFlags, URingAllowlist, URingOperation};

#[test]
fn reads_and_writes_move_data_between_buffers_and_simulated_files() {
    let kernel = SimKernel::new();
    let fd = kernel.create_file(b"hello, simulated world".to_vec());
    let (mut first, mut second) = (vec![0u8; 5], vec![0u8; 6]);
    let mut upper = b"HELLO".to_vec();
    let ring = kernel.new_context(8, None).unwrap();
    // SAFETY: the buffers outlive the ring, which reaps both operations.
    unsafe {
        ring.add_readv(iovecs(&mut [&mut first, &mut second]), fd, Some(7), 1)
            .unwrap();
        ring.add_writev(iovecs(&mut [&mut upper]), fd, Some(0), 2)
            .unwrap();
    }
    ring.add_fsync(fd, 3).unwrap();
    ring.add_nop(4).unwrap();
    let done = reap(&ring, 4);
    assert_eq!(done[&1].as_ref().unwrap(), &11);
    assert_eq!(done[&2].as_ref().unwrap(), &5);
    assert_eq!(done[&3].as_ref().unwrap(), &0);
    assert_eq!(done[&4].as_ref().unwrap(), &0);
    assert_eq!((&first[..], &second[..]), (&b"simul"[..], &b"ated w"[..]));
    assert_eq!(kernel.file_contents(fd).unwrap(), b"HELLO, simulated world");
}

#[test]
fn reads_and_writes_without_an_offset_use_and_advance_the_file_position() {
    let kernel = SimKernel::new();
    let fd = kernel.create_file(Vec::new());
    let (mut one, mut two) = (b"one ".to_vec(), b"two".to_vec());
    let mut back = vec![0u8; 16];
    let ring = kernel.new_context(4, None).unwrap();
    // SAFETY: the buffers outlive the ring, which reaps every operation.
    unsafe {
        ring.add_writev(iovecs(&mut [&mut one]), fd, None, 1)
            .unwrap();
        ring.add_writev(iovecs(&mut [&mut two]), fd, None, 2)
            .unwrap();
        ring.add_readv(iovecs(&mut [&mut back]), fd, Some(0), 3)
            .unwrap();
    }
    let done = reap(&ring, 3);
    assert_eq!(kernel.file_contents(fd).unwrap(), b"one two");
    assert_eq!(
        done[&3].as_ref().unwrap(),
        &7,
        "a read stops at end of file"
    );
    assert_eq!(&back[..7], b"one two");
}

#[test]
fn one_buffer_reads_and_writes_move_data_at_an_offset_and_at_the_file_position() {
    let kernel = SimKernel::new();
    let fd = kernel.create_file(b"0123456789".to_vec());
    let (mut at_offset, mut at_position) = (vec![0u8; 4], vec![0u8; 3]);
    let (mut patch, mut appended) = (b"ab".to_vec(), b"XYZ".to_vec());
    let ring = kernel.new_context(8, None).unwrap();
    let buf = |bytes: &mut Vec<u8>| {
        // SAFETY: every buffer outlives the ring, which reaps each
        // operation before the buffer is read.
        unsafe { IoBufMut::from_raw_parts(bytes.as_mut_ptr(), bytes.len()) }
    };
    ring.add(Read::new(buf(&mut at_offset), raw(fd), Some(6)), 1)
        .unwrap();
    ring.add(Write::new(buf(&mut patch), raw(fd), Some(1)), 2)
        .unwrap();
    let done = reap(&ring, 2);
    assert_eq!(
        (done[&1].as_ref().unwrap(), done[&2].as_ref().unwrap()),
        (&4, &2)
    );
    assert_eq!(at_offset, b"6789");
    assert_eq!(kernel.file_contents(fd).unwrap(), b"0ab3456789");
    // None: the file position (0), then advanced past what was read.
    ring.add(Read::new(buf(&mut at_position), raw(fd), None), 3)
        .unwrap();
    assert_eq!(reap(&ring, 1)[&3].as_ref().unwrap(), &3);
    ring.add(Write::new(buf(&mut appended), raw(fd), None), 4)
        .unwrap();
    assert_eq!(reap(&ring, 1)[&4].as_ref().unwrap(), &3);
    assert_eq!(at_position, b"0ab");
    assert_eq!(kernel.file_contents(fd).unwrap(), b"0abXYZ6789");
    // What the model does not run completes with EOPNOTSUPP.
    ring.add(Fadvise::new(raw(fd), 0, 0, libc::POSIX_FADV_NORMAL), 5)
        .unwrap();
    assert_eq!(errno(&reap(&ring, 1)[&5]), Some(libc::EOPNOTSUPP));
}

#[test]
fn a_poll_completes_once_its_pollable_becomes_ready() {
    let kernel = SimKernel::new();
    let pollable = kernel.create_pollable();
    let ring = kernel.new_context(4, None).unwrap();
    ring.add_poll_fd(pollable, EventType::Read, 1).unwrap();
    ring.submit().unwrap();
    assert_eq!(kernel.pending(), 1);
    assert_eq!(
        ring.wait_timeout(Duration::from_millis(1)).unwrap().count(),
        0
    );
    kernel.set_ready(pollable, libc::POLLIN as u32);
    let done = reap(&ring, 1);
    assert_eq!(done[&1].as_ref().unwrap(), &(libc::POLLIN as u32));
}

#[test]
fn poll_remove_and_async_cancel_end_pending_polls_with_ecanceled() {
    let kernel = SimKernel::new();
    let pollable = kernel.create_pollable();
    let ring = kernel.new_context(8, None).unwrap();
    ring.add_poll_fd(pollable, EventType::Read, 1).unwrap();
    ring.add_poll_fd(pollable, EventType::Write, 2).unwrap();
    ring.submit().unwrap();
    ring.remove_poll_fd(1, 10).unwrap();
    ring.async_cancel(2, 20).unwrap();
    ring.async_cancel(99, 30).unwrap();
    let done = reap(&ring, 5);
    assert_eq!(errno(&done[&1]), Some(libc::ECANCELED));
    assert_eq!(errno(&done[&2]), Some(libc::ECANCELED));
    assert_eq!(done[&10].as_ref().unwrap(), &0);
    assert_eq!(done[&20].as_ref().unwrap(), &0);
    assert_eq!(errno(&done[&30]), Some(libc::ENOENT));
    assert_eq!(kernel.pending(), 0);
}

#[test]
fn a_restricted_ring_refuses_operations_flags_and_register_calls_outside_its_allowlist() {
    let kernel = SimKernel::new();
    let fd = kernel.create_file(Vec::new());
    let mut allowlist = URingAllowlist::new();
    allowlist.allow_submit_operation(URingOperation::Nop);
    let ring = kernel.new_context(8, Some(&allowlist)).unwrap();
    ring.add_nop(1).unwrap();
    ring.add_fsync(fd, 2).unwrap();
    ring.add_nop_with_flags(SqeFlags::ASYNC, 3).unwrap();
    let done = reap(&ring, 3);
    assert_eq!(done[&1].as_ref().unwrap(), &0);
    assert_eq!(errno(&done[&2]), Some(libc::EACCES));
    assert_eq!(errno(&done[&3]), Some(libc::EACCES));
    match ring.register_eventfd(0) {
        Err(Error::Register { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EACCES))
        }
        other => panic!("register_eventfd on a restricted ring: {other:?}"),
    }
}

#[test]
fn registering_follows_the_disabled_ring_rules() {
    let kernel = SimKernel::new();
    let register_errno = |result: crate::Result<()>| match result {
        Err(Error::Register { source, .. }) => source.raw_os_error(),
        other => panic!("expected a register error, got {other:?}"),
    };
    let enabled = kernel.new_context(4, None).unwrap();
    let allowlist = URingAllowlist::new();
    assert_eq!(
        register_errno(enabled.register_restrictions(&allowlist)),
        Some(libc::EBADFD)
    );
    enabled.register_eventfd(3).unwrap();
    assert_eq!(
        register_errno(enabled.register_eventfd(3)),
        Some(libc::EBUSY)
    );
    enabled.unregister_eventfd().unwrap();
    assert_eq!(
        register_errno(enabled.unregister_eventfd()),
        Some(libc::ENXIO)
    );

    let disabled = kernel.new_disabled_context(4).unwrap();
    disabled.add_nop(1).unwrap();
    match disabled.submit() {
        Err(Error::Enter(e)) => assert_eq!(e.raw_os_error(), Some(libc::EBADFD)),
        other => panic!("submit on a disabled ring: {other:?}"),
    }
    disabled.register_restrictions(&allowlist).unwrap();
    assert_eq!(
        register_errno(disabled.register_restrictions(&allowlist)),
        Some(libc::EBUSY)
    );
    disabled.enable().unwrap();
    assert_eq!(register_errno(disabled.enable()), Some(libc::EACCES));
}

#[test]
fn a_batch_is_queued_whole_or_not_at_all() {
    let kernel = SimKernel::new();
    let fd = kernel.create_file(b"batched".to_vec());
    let mut buf = vec![0u8; 7];
    let ring = kernel.new_context(4, None).unwrap();
    ring.add_nop(1).unwrap();
    let mut batch = OpBatch::new();
    // 1 is in flight, and the read pins memory: they may not share it.
    // SAFETY: `buf` outlives the ring; this read is never queued.
    let read = unsafe { Readv::new(iovecs(&mut [&mut buf]), raw(fd), Some(0)) };
    batch.add(Nop::new(), 2).unwrap().add(read, 1).unwrap();
    assert!(matches!(
        ring.add_batch(&mut batch),
        Err(Error::DuplicateUserData(1))
    ));
    assert_eq!(
        (batch.len(), ring.in_flight()),
        (2, 1),
        "nothing queued, batch intact"
    );
    batch.clear();
    // SAFETY: as above.
    let read = unsafe { Readv::new(iovecs(&mut [&mut buf]), raw(fd), Some(0)) };
    batch.add(Nop::new(), 2).unwrap().add(read, 2).unwrap();
    assert!(matches!(
        ring.add_batch(&mut batch),
        Err(Error::DuplicateUserData(2))
    ));
    assert_eq!(ring.in_flight(), 1);
    batch.clear();
    for user_data in 10..14 {
        batch.add(Nop::new(), user_data).unwrap();
    }
    assert!(
        matches!(ring.add_batch(&mut batch), Err(Error::NoSpace)),
        "3 free slots"
    );
    assert_eq!((batch.len(), ring.in_flight()), (4, 1));
    ring.submit().unwrap();
    batch.clear();
    // SAFETY: `buf` outlives the ring, which reaps the read.
    let read = unsafe { Readv::new(iovecs(&mut [&mut buf]), raw(fd), Some(0)) };
    batch.add(read, 3).unwrap().add(Nop::new(), 4).unwrap();
    ring.add_batch(&mut batch).unwrap();
    assert!(batch.is_empty());
    let done = reap(&ring, 3);
    assert_eq!(done[&3].as_ref().unwrap(), &7);
    assert_eq!(buf, b"batched");
}

/// `model::ops::models` says which opcodes the simulated kernel runs, but
/// its module is private to `sim::model`, so this checks the same fact by
/// behaviour: every kernel opcode is issued with a zeroed SQE (no file, no
/// target), which an operation the model runs fails with `EBADF` or
/// `ENOENT` (or a nop completes), and any other fails with `EINVAL`.
#[test]
fn every_issuable_operation_is_run_by_the_simulated_kernel_and_any_other_opcode_completes_with_einval(
) {
    let all = URingOperation::ALL;
    let kernel = SimKernel::new();
    let ring = kernel.new_context(all.len(), None).unwrap();
    // The public API issues only operations of `op::ISSUABLE`; an SQE for
    // any other opcode goes through the same batch path, built by hand.
    let mut batch = OpBatch::new();
    let as_is = |sqe: Sqe| Prepared {
        sqe,
        keep_alive: KeepAlive::default(),
        pins_caller_memory: false,
        resolve: Resolve::Nothing,
    };
    const LINK_HEAD: u64 = 1000;
    for &op in all {
        if op == URingOperation::LinkTimeout {
            // Only valid after a linked SQE.
            let mut head = Sqe::new(URingOperation::Nop);
            head.set_flags(IosqeFlags::IO_LINK);
            batch.ops_mut().push((as_is(head), LINK_HEAD));
        }
        batch.ops_mut().push((as_is(Sqe::new(op)), op as u64));
    }
    ring.add_batch(&mut batch).unwrap();
    ring.submit().unwrap();
    // The timeout waits for the simulated clock.
    assert_eq!(kernel.fire_timeouts(), 1);
    let done = reap(&ring, all.len() + 1);
    assert_eq!(done[&LINK_HEAD].as_ref().unwrap(), &0);
    for &op in all {
        let result = &done[&(op as u64)];
        if op::ISSUABLE.contains(&op) {
            assert_ne!(errno(result), Some(libc::EINVAL), "{op:?} is not modelled");
        } else {
            assert_eq!(errno(result), Some(libc::EINVAL), "{op:?}: {result:?}");
        }
    }
    assert!(
        all.len() > op::ISSUABLE.len(),
        "no opcode left to check EINVAL on"
    );
    assert_eq!(kernel.stats().sqes_consumed, all.len() as u64 + 1);
}

#[test]
fn cancelling_by_a_label_several_polls_share_cancels_each_and_a_label_without_operations_finds_none(
) {
    let kernel = SimKernel::new();
    let pollable = kernel.create_pollable();
    let ring = kernel.new_context(16, None).unwrap();
    for _ in 0..3 {
        ring.add_poll_fd(pollable, EventType::Read, 7).unwrap();
    }
    for _ in 0..2 {
        ring.add_poll_fd(pollable, EventType::Write, 8).unwrap();
    }
    // A poll under another label, which nothing below may touch.
    ring.add_poll_fd(pollable, EventType::Read, 9).unwrap();
    ring.submit().unwrap();
    assert_eq!(kernel.pending(), 6);

    ring.async_cancel(7, 70).unwrap();
    ring.remove_poll_fd(8, 80).unwrap();
    ring.submit().unwrap();
    assert_eq!(
        kernel.pending(),
        1,
        "every poll under 7 and 8, and only those"
    );
    let mut done = reap_in_order(&ring, 7);
    done.sort_by_key(|(label, _)| *label);
    assert_eq!(labels(&done), [7, 7, 7, 8, 8, 70, 80]);
    for (label, result) in &done[..5] {
        assert_eq!(errno(result), Some(libc::ECANCELED), "{label}");
    }
    assert_eq!(done[5].1.as_ref().unwrap(), &0);
    assert_eq!(done[6].1.as_ref().unwrap(), &0);
    assert_eq!(ring.in_flight(), 1);

    // Nothing in flight under 7 any more, nor under 10.
    ring.async_cancel(7, 71).unwrap();
    ring.remove_poll_fd(10, 100).unwrap();
    let done = reap_in_order(&ring, 2);
    for (label, result) in &done {
        assert_eq!(errno(result), Some(libc::ENOENT), "{label}");
    }
    assert_eq!(kernel.pending(), 1, "the poll under 9 is untouched");
    assert_eq!(ring.in_flight(), 1);
    kernel.set_ready(pollable, libc::POLLIN as u32);
    let done = reap(&ring, 1);
    assert_eq!(done[&9].as_ref().unwrap(), &(libc::POLLIN as u32));
}

#[test]
fn a_write_or_allocation_past_the_largest_simulated_file_fails_with_efbig() {
    let kernel = SimKernel::new();
    let fd = kernel.create_file(vec![1; 16]);
    let ring = kernel.new_context(8, None).unwrap();
    let mut buf = vec![0u8; 32];
    let near_max = i64::MAX as u64 - 100;
    // SAFETY: `buf` outlives the ring, which reaps the write.
    unsafe { ring.add_writev(iovecs(&mut [&mut buf]), fd, Some(near_max), 1) }.unwrap();
    ring.add_fallocate(fd, near_max, 64, 0, 2).unwrap();
    let done = reap(&ring, 2);
    assert_eq!(errno(&done[&1]), Some(libc::EFBIG));
    assert_eq!(errno(&done[&2]), Some(libc::EFBIG));
    assert_eq!(kernel.file_contents(fd).unwrap(), vec![1; 16]);
}
