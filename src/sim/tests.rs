//! The ring core on the simulated kernel: every operation the model knows,
//! every fault it injects, and threads posting completions while others
//! add. These run natively with `cargo test` and under Miri (`cargo +nightly
//! miri test`), which checks the core's pointer arithmetic, its memory
//! ordering against the simulated kernel's, and that every pinned iovec
//! array is freed exactly once and nothing leaks.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Fault, SimConfig, SimKernel};
use crate::{
    Error, EventType, IoBufMut, OpBatch, SqeFlags, URingAllowlist, URingContext, URingOperation,
};

/// `native` iterations natively, `miri` under Miri, which is far slower.
const fn scaled(native: usize, miri: usize) -> usize {
    if cfg!(miri) {
        miri
    } else {
        native
    }
}

/// How long a threaded test may take before it fails instead of hanging.
const TEST_DEADLINE: Duration = Duration::from_secs(30);

/// Pins iovecs over `bufs` the way `add_readv` / `add_writev` take them.
///
/// # Safety
///
/// Each buffer must outlive the operation the iovecs go to and not be used
/// until its completion is reaped.
unsafe fn iovecs(bufs: &mut [&mut Vec<u8>]) -> Pin<Box<[IoBufMut<'static>]>> {
    let iovecs: Vec<_> = bufs
        .iter_mut()
        // SAFETY: forwarded from the caller.
        .map(|buf| unsafe { IoBufMut::from_raw_parts(buf.as_mut_ptr(), buf.len()) })
        .collect();
    Box::into_pin(iovecs.into_boxed_slice())
}

/// Reaps exactly `count` completions, keyed by user_data; each must come
/// once. Gives up after a bounded number of waits rather than hang.
fn reap(ring: &URingContext, count: usize) -> HashMap<u64, io::Result<u32>> {
    let mut reaped = HashMap::new();
    for _ in 0..10 * count + 10 {
        if reaped.len() >= count {
            break;
        }
        for (user_data, result) in ring.wait().expect("wait") {
            assert!(
                reaped.insert(user_data, result).is_none(),
                "user_data {user_data} completed twice"
            );
        }
    }
    assert_eq!(reaped.len(), count, "completions: {reaped:?}");
    assert_eq!(ring.in_flight(), 0);
    reaped
}

fn errno(result: &io::Result<u32>) -> Option<i32> {
    result.as_ref().err().and_then(io::Error::raw_os_error)
}

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
    ring.add_nop_with_flags(SqeFlags::LINK, 3).unwrap();
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
fn completions_a_caller_stops_short_of_are_kept_for_the_next_wait() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(8, None).unwrap();
    for user_data in 0..6 {
        ring.add_nop(user_data).unwrap();
    }
    let first: Vec<_> = ring.wait().unwrap().take(2).map(|(ud, _)| ud).collect();
    assert_eq!(first, [0, 1]);
    assert_eq!(ring.in_flight(), 4, "the rest still count as in flight");
    let rest: Vec<_> = ring.wait().unwrap().map(|(ud, _)| ud).collect();
    assert_eq!(rest, [2, 3, 4, 5], "in order, none lost");
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn a_batch_is_queued_whole_or_not_at_all() {
    let kernel = SimKernel::new();
    let fd = kernel.create_file(b"batched".to_vec());
    let mut buf = vec![0u8; 7];
    let ring = kernel.new_context(4, None).unwrap();
    ring.add_nop(1).unwrap();
    let mut batch = OpBatch::new();
    batch.add_nop(2).add_nop(1); // 1 is in flight.
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
    batch.add_nop(2).add_nop(2);
    assert!(matches!(
        ring.add_batch(&mut batch),
        Err(Error::DuplicateUserData(2))
    ));
    assert_eq!(ring.in_flight(), 1);
    batch.clear();
    for user_data in 10..14 {
        batch.add_nop(user_data);
    }
    assert!(
        matches!(ring.add_batch(&mut batch), Err(Error::NoSpace)),
        "3 free slots"
    );
    assert_eq!((batch.len(), ring.in_flight()), (4, 1));
    ring.submit().unwrap();
    batch.clear();
    // SAFETY: `buf` outlives the ring, which reaps the read.
    unsafe { batch.add_readv(iovecs(&mut [&mut buf]), fd, Some(0), 3) }.unwrap();
    batch.add_nop(4);
    ring.add_batch(&mut batch).unwrap();
    assert!(batch.is_empty());
    let done = reap(&ring, 3);
    assert_eq!(done[&3].as_ref().unwrap(), &7);
    assert_eq!(buf, b"batched");
}

#[test]
fn wait_with_nothing_in_flight_returns_an_empty_iterator_without_entering_the_kernel() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(4, None).unwrap();
    // Blocking here would hit the simulated kernel's watchdog and panic.
    assert_eq!(ring.wait().unwrap().count(), 0);
    assert_eq!(kernel.stats().enters, 0);
}

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
    let first: Vec<_> = ring.wait().unwrap().map(|(ud, _)| ud).collect();
    assert_eq!(first, [2], "the nop, submitted after the back-off");
    assert_eq!(kernel.stats().faults_injected, 1);
    kernel.set_ready(pollable, libc::POLLIN as u32);
    reap(&ring, 1);
}

/// Adds nops `0..count` without reaping, submitting one SQ-full at a time.
fn add_without_reaping(ring: &URingContext, count: u64) {
    for user_data in 0..count {
        if let Err(Error::NoSpace) = ring.add_nop(user_data) {
            ring.submit().unwrap();
            ring.add_nop(user_data).unwrap();
        }
    }
    ring.submit().unwrap();
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
    assert_eq!(kernel.pending(), 0);
    assert_eq!(kernel.stats().dropped, 0);
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

#[test]
fn completions_posted_by_another_thread_while_producers_add_are_each_reaped_once() {
    const PRODUCERS: u64 = 2;
    const PER_PRODUCER: u64 = scaled(400, 12) as u64;
    let kernel = SimKernel::with_config(SimConfig {
        defer_completions: true,
        ..SimConfig::default()
    });
    let pollable = kernel.create_pollable();
    let ring = kernel.new_context(8, None).unwrap();
    let total = PRODUCERS * PER_PRODUCER;
    let done = AtomicBool::new(false);
    let reaped = std::thread::scope(|s| {
        for producer in 0..PRODUCERS {
            let ring = &ring;
            s.spawn(move || {
                for i in 0..PER_PRODUCER {
                    let user_data = producer * PER_PRODUCER + i;
                    loop {
                        // Every other operation is a poll that only the
                        // kernel thread's readiness completes.
                        let added = if i % 2 == 0 {
                            ring.add_nop(user_data)
                        } else {
                            ring.add_poll_fd(pollable, EventType::Read, user_data)
                        };
                        match added {
                            Ok(()) => break,
                            Err(Error::NoSpace) => match ring.submit() {
                                Ok(()) | Err(Error::KernelBusy(_)) => std::thread::yield_now(),
                                Err(e) => panic!("submit: {e}"),
                            },
                            Err(e) => panic!("add: {e}"),
                        }
                    }
                }
                ring.submit().unwrap();
            });
        }
        // The "kernel": completes held-back work and fires the polls from
        // its own thread, while the producers add and the reaper pops.
        let kernel_thread = {
            let (kernel, done) = (&kernel, &done);
            s.spawn(move || {
                let mut ready = false;
                while !done.load(Ordering::Acquire) {
                    kernel.complete_deferred(3);
                    ready = !ready;
                    kernel.set_ready(pollable, if ready { libc::POLLIN as u32 } else { 0 });
                    std::thread::yield_now();
                }
            })
        };
        let mut reaped = HashMap::new();
        let deadline = Instant::now() + TEST_DEADLINE;
        while (reaped.len() as u64) < total && Instant::now() < deadline {
            std::thread::yield_now();
            // A zero timeout never enters the kernel when nothing is queued:
            // the reaper then sees the kernel thread's completions only
            // through the CQ ring's Acquire/Release protocol, which is what
            // Miri's data-race detector checks here.
            for (user_data, result) in ring.wait_timeout(Duration::ZERO).unwrap() {
                assert!(result.is_ok(), "{user_data}: {result:?}");
                assert!(
                    reaped.insert(user_data, ()).is_none(),
                    "user_data {user_data} completed twice"
                );
            }
        }
        done.store(true, Ordering::Release);
        kernel_thread.join().unwrap();
        reaped
    });
    assert_eq!(reaped.len() as u64, total, "every operation completes");
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn completions_posted_by_another_thread_are_read_through_the_cq_ring_protocol_alone() {
    const OPS: usize = scaled(64, 12);
    let kernel = SimKernel::with_config(SimConfig {
        defer_completions: true,
        ..SimConfig::default()
    });
    let fd = kernel.create_file((0..OPS as u8).collect());
    let mut bufs = vec![vec![0u8; 1]; OPS];
    let ring = kernel.new_context(OPS, None).unwrap();
    for (i, buf) in bufs.iter_mut().enumerate() {
        // SAFETY: `bufs` outlives the ring, which reaps every operation.
        unsafe { ring.add_readv(iovecs(&mut [buf]), fd, Some(i as u64), i as u64) }.unwrap();
    }
    ring.submit().unwrap();
    let reaped = std::thread::scope(|s| {
        // The kernel's side runs the reads and posts their completions on
        // its own thread. The reaper never enters the kernel (nothing is
        // queued, and a zero timeout does not wait), so the only thing
        // ordering the kernel's writes (the buffer, the CQE) before the
        // reaper's reads is the CQ tail's Release/Acquire pair: with a
        // weaker ordering Miri reports a data race here.
        s.spawn(|| {
            while kernel.pending() > 0 {
                kernel.complete_deferred(1);
                std::thread::yield_now();
            }
        });
        let mut reaped = Vec::new();
        let deadline = Instant::now() + TEST_DEADLINE;
        while reaped.len() < OPS && Instant::now() < deadline {
            reaped.extend(ring.wait_timeout(Duration::ZERO).unwrap());
            std::thread::yield_now();
        }
        reaped
    });
    assert_eq!(reaped.len(), OPS);
    for (user_data, result) in reaped {
        assert_eq!(result.unwrap(), 1);
        assert_eq!(bufs[user_data as usize][0], user_data as u8);
    }
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
    assert_eq!(kernel.pending(), 0);
}

#[test]
fn close_gives_up_on_a_poll_it_may_not_cancel_and_says_so() {
    let kernel = SimKernel::new();
    let pollable = kernel.create_pollable();
    let mut allowlist = URingAllowlist::new();
    allowlist.allow_submit_operation(URingOperation::PollAdd);
    let ring = kernel.new_context(4, Some(&allowlist)).unwrap();
    ring.add_poll_fd(pollable, EventType::Read, 1).unwrap();
    ring.submit().unwrap();
    match ring.close(Duration::from_millis(300)) {
        Err(Error::DrainTimedOut(1)) => {}
        other => panic!("close without AsyncCancel: {other:?}"),
    }
}
