//! Several threads on one ring: producers adding while completions are
//! posted from another thread, a reaper that sees them only through the CQ
//! ring protocol, and waiters blocked in `wait` that another thread wakes.
//! `.ci/miri` runs the tests named `another_thread` under many scheduler
//! seeds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::super::{SimConfig, SimKernel};
use super::{add_without_reaping, iovecs, labels, scaled, TEST_DEADLINE};
use crate::{Error, EventType};

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
    let enters = kernel.stats().enters;
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
    assert_eq!(
        kernel.stats().enters,
        enters,
        "the reaper entered the kernel, whose lock would order the accesses"
    );
    for (user_data, result) in reaped {
        assert_eq!(result.unwrap(), 1);
        assert_eq!(bufs[user_data as usize][0], user_data as u8);
    }
}

#[test]
fn wait_with_nothing_in_flight_blocks_until_another_thread_submits_a_nop() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(4, None).unwrap();
    let woken = std::thread::scope(|s| {
        let waiter = s.spawn(|| ring.wait().unwrap().collect::<Vec<_>>());
        // Nothing is in flight: the waiter must block in the kernel, not
        // return (the old semantics) nor spin outside it.
        let deadline = Instant::now() + TEST_DEADLINE;
        while kernel.stats().enters == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !waiter.is_finished(),
            "wait returned with nothing to wait for"
        );
        assert_eq!(
            kernel.stats().enters,
            1,
            "wait is not blocked in the kernel"
        );
        ring.add_nop(7).unwrap();
        ring.submit().unwrap();
        waiter.join().unwrap()
    });
    assert_eq!(labels(&woken), [7]);
    assert_eq!(woken[0].1.as_ref().unwrap(), &0);
}

#[test]
fn completions_handed_back_wake_a_waiter_blocked_on_another_thread() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(8, None).unwrap();
    add_without_reaping(&ring, 4);
    let mut iterator = ring.wait().unwrap();
    // The first call claims one; the second claims the rest as a batch and
    // yields its first: 2 and 3 are now this iterator's, and the CQ ring is
    // empty.
    assert_eq!(iterator.next().unwrap().0, 0);
    assert_eq!(iterator.next().unwrap().0, 1);
    let woken = std::thread::scope(|s| {
        // Nothing is ready for it, so it blocks in the kernel; only the
        // hand-back (and the wake-up nop it posts) can end that wait before
        // the simulated kernel's watchdog fails the test.
        let enters = kernel.stats().enters;
        let waiter = s.spawn(|| ring.wait().unwrap().collect::<Vec<_>>());
        let deadline = Instant::now() + TEST_DEADLINE;
        while kernel.stats().enters == enters && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !waiter.is_finished(),
            "the waiter did not block, so nothing here wakes it"
        );
        drop(iterator);
        waiter.join().unwrap()
    });
    assert_eq!(
        labels(&woken),
        [2, 3],
        "handed back, in order, nothing else"
    );
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn a_batch_yielded_on_another_thread_is_settled_on_this_one_exactly_as_far_as_yielded() {
    use std::sync::atomic::AtomicUsize;
    const OPS: usize = scaled(48, 20);
    let kernel = SimKernel::new();
    let ring = kernel.new_context(64, None).unwrap();
    add_without_reaping(&ring, OPS as u64);
    // Lockstep: the reaper holds `held` completions (its iterator published
    // them as yielded before handing them over) and waits until this
    // thread has `checked` that count.
    let (held, checked) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let deadline = Instant::now() + TEST_DEADLINE;
    std::thread::scope(|s| {
        let reaper = s.spawn(|| {
            let mut seen = Vec::new();
            // One iterator yields the whole ring: the first item alone, then
            // batches from the claim board, without the lock.
            for (user_data, result) in ring.wait().unwrap() {
                assert_eq!(result.unwrap(), 0);
                seen.push(user_data);
                held.store(seen.len(), Ordering::Release);
                while checked.load(Ordering::Acquire) < seen.len() {
                    assert!(Instant::now() < deadline, "the checker stopped");
                    std::thread::yield_now();
                }
            }
            seen
        });
        // This thread settles the reaper's records under the lock: what it
        // counts in flight is exactly what the caller does not hold yet.
        let mut done = 0;
        while done < OPS {
            assert!(Instant::now() < deadline, "the reaper stopped at {done}");
            let now_held = held.load(Ordering::Acquire);
            if now_held == done {
                std::thread::yield_now();
                continue;
            }
            assert_eq!(ring.in_flight(), OPS - now_held, "with {now_held} held");
            done = now_held;
            checked.store(done, Ordering::Release);
        }
        assert_each_once(reaper.join().unwrap(), OPS);
    });
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn an_iterator_moved_to_another_thread_mid_batch_yields_the_rest_there_once() {
    const OPS: usize = scaled(40, 20);
    let kernel = SimKernel::new();
    let ring = kernel.new_context(64, None).unwrap();
    add_without_reaping(&ring, OPS as u64);
    let mut completions = ring.wait().unwrap();
    // The first claim takes one; the second puts a batch on the claim
    // board, written by this thread, which the other thread then reads.
    let mut seen: Vec<u64> = completions.by_ref().take(3).map(|(ud, _)| ud).collect();
    let rest: Vec<u64> = std::thread::scope(|s| {
        s.spawn(move || completions.map(|(user_data, _)| user_data).collect())
            .join()
            .unwrap()
    });
    seen.extend(rest);
    assert_each_once(seen, OPS);
    assert_eq!(ring.in_flight(), 0);
}

/// Asserts that `seen` holds each of the labels `0..count` exactly once.
fn assert_each_once(mut seen: Vec<u64>, count: usize) {
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..count as u64).collect::<Vec<_>>(),
        "each exactly once"
    );
}
