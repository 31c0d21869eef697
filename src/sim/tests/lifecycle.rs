//! Dropping and closing a context: what was only queued is never carried
//! out, what is in the kernel is cancelled, and a ring that may not cancel
//! gives up at once and says so.

use std::time::{Duration, Instant};

use super::super::{SimConfig, SimKernel};
use super::iovecs;
use crate::{Error, EventType, URingAllowlist, URingContext, URingOperation};

/// A ring of `kernel` restricted to `allowlist` (plus PollAdd), with one
/// poll pending that nothing will make ready.
fn ring_with_a_pending_poll(kernel: &SimKernel, mut allowlist: URingAllowlist) -> URingContext {
    let pollable = kernel.create_pollable();
    allowlist.allow_submit_operation(URingOperation::PollAdd);
    let ring = kernel.new_context(4, Some(&allowlist)).unwrap();
    ring.add_poll_fd(pollable, EventType::Read, 1).unwrap();
    ring.submit().unwrap();
    assert_eq!(kernel.pending(), 1);
    ring
}

/// Found by the `sim_ops` fuzz target: with a ring full of pending polls on
/// a kernel without NODROP, drain had no room left to cancel them.
#[test]
fn without_nodrop_close_can_cancel_polls_that_fill_every_slot() {
    let kernel = SimKernel::with_config(SimConfig {
        nodrop: false,
        ..SimConfig::default()
    });
    let pollable = kernel.create_pollable();
    let ring = kernel.new_context(1, None).unwrap();
    let mut added = 0;
    while ring.add_poll_fd(pollable, EventType::Read, added).is_ok() {
        added += 1;
        ring.submit().unwrap();
    }
    assert_eq!(kernel.pending(), added as usize);
    ring.close(Duration::from_secs(5)).unwrap();
    assert_eq!(kernel.stats().abandoned, 0, "every poll was cancelled");
    assert_eq!(kernel.stats().dropped, 0);
}

#[test]
fn drop_never_carries_out_writes_that_were_only_queued() {
    let kernel = SimKernel::new();
    let fd = kernel.create_file(b"untouched".to_vec());
    let mut data = b"OVERWRITE".to_vec();
    {
        let ring = kernel.new_context(4, None).unwrap();
        // SAFETY: `data` outlives the ring, whose drop drains the write.
        unsafe { ring.add_writev(iovecs(&mut [&mut data]), fd, Some(0), 1) }.unwrap();
    }
    assert_eq!(kernel.file_contents(fd).unwrap(), b"untouched");
    assert_eq!(kernel.stats().sqes_consumed, 1, "consumed as a nop");
}

#[test]
fn close_cancels_pending_polls_and_held_back_work_so_the_kernel_holds_nothing() {
    let kernel = SimKernel::with_config(SimConfig {
        defer_completions: true,
        ..SimConfig::default()
    });
    let pollable = kernel.create_pollable();
    let fd = kernel.create_file(vec![1; 4]);
    let mut buf = vec![0u8; 4];
    let ring = kernel.new_context(4, None).unwrap();
    ring.add_poll_fd(pollable, EventType::Read, 1).unwrap();
    // SAFETY: `buf` outlives the ring; `close` returning Ok means the kernel
    // is done with it.
    unsafe { ring.add_readv(iovecs(&mut [&mut buf]), fd, Some(0), 2) }.unwrap();
    ring.submit().unwrap();
    assert_eq!(kernel.pending(), 2);
    ring.close(Duration::from_secs(5)).unwrap();
    assert_eq!(kernel.stats().abandoned, 0);
}

#[test]
fn close_gives_up_on_a_poll_it_may_not_cancel_and_says_so() {
    // Long enough that waiting for it could not pass for prompt.
    const TIMEOUT: Duration = Duration::from_secs(10);
    let kernel = SimKernel::new();
    let ring = ring_with_a_pending_poll(&kernel, URingAllowlist::new());
    let started = Instant::now();
    match ring.close(TIMEOUT) {
        Err(Error::CancelNotAllowed(1)) => {}
        other => panic!("close without AsyncCancel: {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took < TIMEOUT / 10,
        "close waited {took:?} for what cannot come"
    );
    assert_eq!(
        kernel.stats().abandoned,
        1,
        "the poll was left to the ring's close"
    );
}

#[test]
fn drop_of_a_ring_that_may_not_cancel_leaks_at_once_instead_of_waiting() {
    let kernel = SimKernel::new();
    let ring = ring_with_a_pending_poll(&kernel, URingAllowlist::new());
    let started = Instant::now();
    drop(ring);
    // Drop would wait up to 5 s for cancellations on a ring that can send
    // them.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "drop waited {took:?}");
    assert_eq!(kernel.stats().abandoned, 1);
}

#[test]
fn close_cancels_a_poll_on_a_ring_whose_allowlist_has_the_housekeeping_pair() {
    let kernel = SimKernel::new();
    let mut allowlist = URingAllowlist::new();
    allowlist.allow_housekeeping();
    let ring = ring_with_a_pending_poll(&kernel, allowlist);
    ring.close(Duration::from_secs(5)).unwrap();
    assert_eq!(kernel.stats().abandoned, 0, "the poll was cancelled");
    assert!(
        kernel.stats().sqes_consumed >= 2,
        "the poll and its cancellation"
    );
}

#[test]
fn dropping_a_ring_with_nothing_of_the_callers_in_flight_enters_the_kernel_no_more() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(4, None).unwrap();
    ring.add_nop(1).unwrap();
    assert_eq!(ring.wait().unwrap().count(), 1);
    let enters = kernel.stats().enters;
    drop(ring);
    assert_eq!(kernel.stats().enters, enters, "drop drained an idle ring");
}
