//! Faults the simulated kernel injects (interrupted, short and refused
//! enters, dropped completions), the CQ overflow list, and completions held
//! back and released in a random order.

use std::time::{Duration, Instant};

use super::super::{Fault, SimConfig, SimKernel};
use super::{add_without_reaping, errno, iovecs, reap, scaled};
use crate::{Error, EventType};

#[test]
fn interrupted_enters_are_retried_by_submit_and_wait() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(8, None).unwrap();
    for fault in [
        Fault::Interrupted,
        Fault::Interrupted,
        Fault::InterruptedWait,
        Fault::Interrupted,
        Fault::InterruptedWait,
    ] {
        kernel.inject(fault);
    }
    ring.add_nop(1).unwrap();
    ring.submit().unwrap();
    ring.add_nop(2).unwrap();
    reap(&ring, 2);
    assert_eq!(kernel.stats().faults_injected, 5);
}

#[test]
fn short_submits_are_offered_again_until_every_sqe_is_consumed() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(8, None).unwrap();
    for n in [1, 2, 1] {
        kernel.inject(Fault::ShortSubmit(n));
    }
    for user_data in 0..6 {
        ring.add_nop(user_data).unwrap();
    }
    ring.submit().unwrap();
    let stats = kernel.stats();
    assert_eq!(stats.sqes_consumed, 6);
    assert_eq!(stats.faults_injected, 3);
    // 1 + 2 + 1 consumed under the faults, then the last 2 in one enter.
    assert_eq!(stats.enters, 4);
    reap(&ring, 6);
}

#[test]
fn a_busy_kernel_makes_submit_fail_with_the_operations_still_queued() {
    for (fault, errno) in [(Fault::Again, libc::EAGAIN), (Fault::Busy, libc::EBUSY)] {
        let kernel = SimKernel::new();
        let ring = kernel.new_context(4, None).unwrap();
        ring.add_nop(1).unwrap();
        kernel.inject(fault);
        match ring.submit() {
            Err(Error::KernelBusy(e)) => assert_eq!(e.raw_os_error(), Some(errno)),
            other => panic!("submit under {fault:?}: {other:?}"),
        }
        assert_eq!(kernel.stats().sqes_consumed, 0);
        assert_eq!(ring.in_flight(), 1);
        reap(&ring, 1);
    }
}

#[test]
fn wait_with_nothing_in_the_kernel_reports_a_busy_kernel_and_keeps_the_operations() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(4, None).unwrap();
    ring.add_nop(1).unwrap();
    kernel.inject(Fault::Again);
    assert!(matches!(ring.wait(), Err(Error::KernelBusy(_))));
    assert_eq!(ring.in_flight(), 1);
    reap(&ring, 1);
}

#[test]
fn wait_with_work_in_the_kernel_backs_off_then_submits_again_after_ebusy() {
    let kernel = SimKernel::new();
    let pollable = kernel.create_pollable();
    let ring = kernel.new_context(4, None).unwrap();
    ring.add_poll_fd(pollable, EventType::Read, 1).unwrap();
    ring.submit().unwrap();
    ring.add_nop(2).unwrap();
    kernel.inject(Fault::Busy);
    let started = Instant::now();
    let first: Vec<_> = ring.wait().unwrap().map(|(ud, _)| ud).collect();
    // The back-off is wait.rs's KERNEL_BUSY_BACKOFF, 10 ms: a poll of the
    // ring that nothing makes readable runs for all of it.
    assert!(
        started.elapsed() >= Duration::from_millis(10),
        "submitted again without backing off"
    );
    assert_eq!(first, [2], "the nop, submitted after the back-off");
    assert_eq!(kernel.stats().faults_injected, 1);
    kernel.set_ready(pollable, libc::POLLIN as u32);
    reap(&ring, 1);
}

#[test]
fn completions_past_the_cq_ring_wait_on_the_overflow_list_and_each_arrives_once() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(4, None).unwrap();
    let cq = u64::from(ring.cq_entries());
    add_without_reaping(&ring, 5 * cq / 2);
    assert_eq!(kernel.stats().overflowed, 3 * cq / 2);
    reap(&ring, (5 * cq / 2) as usize);
    assert_eq!(ring.dropped_completions(), 0);
    assert_eq!(kernel.stats().completions_posted, 5 * cq / 2);
}

#[test]
fn a_dropped_completion_is_reported_once_and_the_ring_keeps_working() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(4, None).unwrap();
    let cq = u64::from(ring.cq_entries());
    kernel.inject(Fault::DropOverflow);
    add_without_reaping(&ring, cq + 2); // The first overflow is dropped.
    assert!(matches!(ring.wait(), Err(Error::CompletionsLost)));
    let mut reaped = 0;
    for _ in 0..100 {
        reaped += ring.wait().expect("a loss is reported only once").count();
        if ring.in_flight() == 1 {
            break;
        }
    }
    assert_eq!(reaped as u64, cq + 1);
    assert_eq!(ring.dropped_completions(), 1);
    // The kernel now fails every waiting enter with EBADR; wait still works.
    ring.add_nop(1000).unwrap();
    let after: Vec<_> = ring.wait().unwrap().map(|(ud, _)| ud).collect();
    assert_eq!(after, [1000]);
    // The lost operation never completes, so a drain cannot finish.
    match ring.close(Duration::from_millis(200)) {
        Err(Error::DrainTimedOut(1)) => {}
        other => panic!("close with a lost completion: {other:?}"),
    }
}

#[test]
fn without_nodrop_operations_in_flight_stop_one_short_of_the_cq_size_and_none_is_dropped() {
    let kernel = SimKernel::with_config(SimConfig {
        nodrop: false,
        ..SimConfig::default()
    });
    let ring = kernel.new_context(4, None).unwrap();
    let cap = ring.cq_entries() as usize - 1;
    let mut added = 0;
    loop {
        match ring.add_nop(added) {
            Ok(()) => added += 1,
            Err(Error::NoSpace) if ring.in_flight() < cap => ring.submit().unwrap(),
            Err(Error::NoSpace) => break,
            Err(e) => panic!("add_nop: {e}"),
        }
    }
    assert_eq!(added as usize, cap);
    ring.submit().unwrap();
    reap(&ring, cap);
    assert_eq!(kernel.stats().dropped, 0);
    assert_eq!(ring.dropped_completions(), 0);
}

#[test]
fn completions_released_in_random_order_each_arrive_once_with_their_data() {
    const OPS: usize = scaled(24, 6);
    let mut reordered = false;
    for seed in 1..=scaled(8, 2) as u64 {
        let kernel = SimKernel::with_config(SimConfig {
            defer_completions: true,
            seed,
            ..SimConfig::default()
        });
        let contents: Vec<u8> = (0..OPS as u8).collect();
        let fd = kernel.create_file(contents.clone());
        let mut bufs = vec![vec![0xffu8; 1]; OPS];
        let ring = kernel.new_context(OPS, None).unwrap();
        for (i, buf) in bufs.iter_mut().enumerate() {
            // SAFETY: `bufs` outlives the ring, which reaps every operation.
            unsafe { ring.add_readv(iovecs(&mut [buf]), fd, Some(i as u64), i as u64) }.unwrap();
        }
        let mut order = Vec::new();
        while ring.in_flight() > 0 {
            order.extend(ring.wait().unwrap().map(|(ud, result)| {
                assert_eq!(result.unwrap(), 1);
                ud
            }));
        }
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..OPS as u64).collect::<Vec<_>>(),
            "each exactly once"
        );
        reordered |= order != sorted;
        for (i, buf) in bufs.iter().enumerate() {
            assert_eq!(buf[0], contents[i], "read {i} got another's data");
        }
    }
    assert!(reordered, "no seed changed the completion order");
}

#[test]
fn cancelling_held_back_work_completes_it_with_ecanceled_and_leaves_its_buffer_alone() {
    let kernel = SimKernel::with_config(SimConfig {
        defer_completions: true,
        ..SimConfig::default()
    });
    let fd = kernel.create_file(vec![7; 8]);
    let mut buf = vec![0u8; 8];
    let ring = kernel.new_context(4, None).unwrap();
    // SAFETY: `buf` outlives the ring, which reaps the operation.
    unsafe { ring.add_readv(iovecs(&mut [&mut buf]), fd, Some(0), 1) }.unwrap();
    ring.submit().unwrap();
    assert_eq!(kernel.pending(), 1);
    ring.async_cancel(1, 2).unwrap();
    let done = reap(&ring, 2);
    assert_eq!(errno(&done[&1]), Some(libc::ECANCELED));
    assert_eq!(done[&2].as_ref().unwrap(), &0);
    assert_eq!(buf, [0; 8]);
}

/// A kernel without `IORING_FEAT_EXT_ARG` (before 5.11) cannot time a
/// wait: `wait_timeout` polls the ring fd instead, and still returns on
/// time, and at once when a completion is ready.
#[test]
fn wait_timeout_polls_where_the_kernel_cannot_time_a_wait() {
    for ext_arg in [false, true] {
        let kernel = SimKernel::with_config(SimConfig {
            ext_arg,
            ..SimConfig::default()
        });
        let ring = kernel.new_context(4, None).unwrap();
        let timeout = Duration::from_millis(5);
        let start = Instant::now();
        assert_eq!(ring.wait_timeout(timeout).unwrap().count(), 0);
        assert!(start.elapsed() >= timeout, "ext_arg {ext_arg}");
        let enters = kernel.stats().enters;
        ring.add_nop(1).unwrap();
        let got: Vec<_> = ring
            .wait_timeout(Duration::from_secs(10))
            .unwrap()
            .collect();
        assert_eq!(got.len(), 1, "ext_arg {ext_arg}: {got:?}");
        assert!(kernel.stats().enters > enters);
    }
}
