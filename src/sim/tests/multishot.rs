//! Multishot operations: a completion with `IORING_CQE_F_MORE` is yielded
//! but releases nothing; the last one, without MORE, releases the
//! operation, whether a cancellation, a full completion ring or drop ended
//! it.

use super::super::SimKernel;
use super::{errno, raw};
use crate::op::PollAdd;
use crate::{Completion, EventType, URingContext};

const POLLIN: u32 = libc::POLLIN as u32;

/// Adds and submits a multishot poll for readable on `pollable`.
fn multishot_poll(ring: &URingContext, pollable: i32, label: u64) {
    let poll = PollAdd::new(raw(pollable), EventType::Read).multishot();
    ring.add(poll, label).unwrap();
    ring.submit().unwrap();
}

/// Reaps exactly `count` completions with their flags, in the order they
/// are yielded; only call it when `count` will come (`wait` blocks).
fn reap_completions(ring: &URingContext, count: usize) -> Vec<Completion> {
    let mut reaped = Vec::new();
    for _ in 0..10 * count + 10 {
        if reaped.len() >= count {
            break;
        }
        reaped.extend(ring.wait_completions().unwrap());
    }
    assert_eq!(reaped.len(), count, "completions: {reaped:?}");
    reaped
}

#[test]
fn a_multishot_poll_stays_in_flight_through_completions_with_more_until_cancelled() {
    let kernel = SimKernel::new();
    let pollable = kernel.create_pollable();
    let ring = kernel.new_context(4, None).unwrap();
    multishot_poll(&ring, pollable, 1);
    for _ in 0..2 {
        kernel.set_ready(pollable, POLLIN);
        let [event] = reap_completions(&ring, 1)[..] else {
            unreachable!()
        };
        assert_eq!((event.user_data(), event.result().unwrap()), (1, POLLIN));
        assert!(event.more(), "{event:?}");
        assert_eq!(ring.in_flight(), 1, "a completion with MORE released it");
    }
    assert_eq!(kernel.pending(), 1, "the poll is still armed");

    ring.async_cancel(1, 2).unwrap();
    let mut done = reap_completions(&ring, 2);
    done.sort_by_key(Completion::user_data);
    assert_eq!(errno(&done[0].result()), Some(libc::ECANCELED));
    assert!(!done[0].more(), "the last completion says no more");
    assert_eq!(done[1].result().unwrap(), 0, "the cancellation found it");
    assert_eq!(ring.in_flight(), 0, "the last completion released it");
    assert_eq!(kernel.pending(), 0);
}

#[test]
fn a_multishot_poll_that_finds_the_completion_ring_full_ends_with_a_completion_without_more() {
    let kernel = SimKernel::new();
    let pollable = kernel.create_pollable();
    // Room for 4: the third and fourth completions with MORE are yielded
    // from the claim board, not straight from a claim.
    let ring = kernel.new_context(2, None).unwrap();
    let cq = ring.cq_entries() as usize;
    multishot_poll(&ring, pollable, 1);
    // One event more than the ring holds: the last has no room, so the
    // poll ends, its completion waiting on the overflow list.
    for _ in 0..=cq {
        kernel.set_ready(pollable, POLLIN);
    }
    assert_eq!(kernel.pending(), 0, "the poll ended itself");
    assert_eq!(ring.in_flight(), 1);
    let mut done = Vec::new();
    for _ in 0..10 {
        for completion in ring.wait_completions().unwrap() {
            let in_flight = usize::from(completion.more());
            assert_eq!(ring.in_flight(), in_flight, "after {completion:?}");
            done.push(completion);
        }
        if done.len() > cq {
            break;
        }
    }
    let more: Vec<bool> = done.iter().map(Completion::more).collect();
    let mut expected = vec![true; cq];
    expected.push(false);
    assert_eq!(more, expected);
    assert!(done.iter().all(|c| c.user_data() == 1), "{done:?}");
    assert_eq!(done[cq].result().unwrap(), POLLIN, "it carries the events");
}

#[test]
fn dropping_a_context_with_a_multishot_poll_cancels_it_and_waits_for_its_last_completion() {
    let kernel = SimKernel::new();
    let pollable = kernel.create_pollable();
    let ring = kernel.new_context(4, None).unwrap();
    multishot_poll(&ring, pollable, 1);
    kernel.set_ready(pollable, POLLIN);
    assert!(reap_completions(&ring, 1)[0].more());
    // Another event left in the ring for drop to find.
    kernel.set_ready(pollable, POLLIN);
    ring.close(std::time::Duration::from_secs(5)).unwrap();
    assert_eq!(kernel.pending(), 0, "the poll was cancelled");
    assert_eq!(kernel.stats().abandoned, 0);
}

#[test]
fn completions_with_more_handed_back_by_an_iterator_dropped_early_release_nothing() {
    let kernel = SimKernel::new();
    let pollable = kernel.create_pollable();
    let ring = kernel.new_context(4, None).unwrap();
    multishot_poll(&ring, pollable, 1);
    for _ in 0..3 {
        kernel.set_ready(pollable, POLLIN);
    }
    // The second claim takes the other two, yields one and hands the third
    // back when dropped.
    let taken: Vec<Completion> = ring.wait_completions().unwrap().take(2).collect();
    assert!(taken.iter().all(Completion::more), "{taken:?}");
    assert_eq!(ring.in_flight(), 1);
    let [handed_back] = reap_completions(&ring, 1)[..] else {
        unreachable!()
    };
    assert!(handed_back.more(), "{handed_back:?}");
    assert_eq!(ring.in_flight(), 1, "a completion handed back released it");

    ring.async_cancel(1, 2).unwrap();
    let last = reap_completions(&ring, 2);
    assert!(last.iter().all(|c| !c.more()), "{last:?}");
    assert_eq!(ring.in_flight(), 0);
}
