//! Timeouts and linked chains on the simulated kernel, whose clock moves
//! only when a test fires its timers: what each completes with, that a
//! chain's waiting members count as in flight, and that drop drains them.

use std::collections::HashMap;
use std::time::Duration;

use super::super::SimKernel;
use super::{errno, raw, reap, reap_in_order};
use crate::op::{Fsync, LinkTimeout, Nop, PollAdd, Timeout, TimeoutRemove};
use crate::{EventType, OpBatch};

#[test]
fn a_fired_link_timeout_cancels_the_pending_poll_it_bounds_and_releases_both() {
    let kernel = SimKernel::new();
    let pollable = kernel.create_pollable();
    let ring = kernel.new_context(8, None).unwrap();
    let mut chain = OpBatch::new();
    chain
        .add_linked(PollAdd::new(raw(pollable), EventType::Read), 1)
        .and_then(|chain| chain.add_linked(LinkTimeout::new(Duration::from_secs(1)), 2))
        .and_then(|chain| chain.add(Nop::new(), 3))
        .unwrap();
    ring.add_batch(&mut chain).unwrap();
    ring.submit().unwrap();
    // The poll waits; the link timeout and the nop after it (the link
    // timeout is linked too, so the chain goes on) wait with it.
    assert_eq!(kernel.pending(), 3);
    assert_eq!(ring.in_flight(), 3);
    assert_eq!(kernel.fire_timeouts(), 1);
    let done = reap(&ring, 3);
    assert_eq!(errno(&done[&1]), Some(libc::ECANCELED));
    assert_eq!(errno(&done[&2]), Some(libc::ETIME));
    // The poll failed, so the soft link cancels the rest.
    assert_eq!(errno(&done[&3]), Some(libc::ECANCELED));
    assert_eq!((kernel.pending(), ring.in_flight()), (0, 0));
}

#[test]
fn a_poll_that_fires_first_cancels_its_link_timeout_and_starts_the_rest() {
    let kernel = SimKernel::new();
    let pollable = kernel.create_pollable();
    let ring = kernel.new_context(8, None).unwrap();
    let mut chain = OpBatch::new();
    chain
        .add_linked(PollAdd::new(raw(pollable), EventType::Read), 1)
        .and_then(|chain| chain.add_linked(LinkTimeout::new(Duration::from_secs(1)), 2))
        .and_then(|chain| chain.add(Nop::new(), 3))
        .unwrap();
    ring.add_batch(&mut chain).unwrap();
    ring.submit().unwrap();
    kernel.set_ready(pollable, libc::POLLIN as u32);
    let done = reap(&ring, 3);
    assert_eq!(done[&1].as_ref().unwrap(), &(libc::POLLIN as u32));
    assert_eq!(errno(&done[&2]), Some(libc::ECANCELED));
    assert_eq!(done[&3].as_ref().unwrap(), &0);
    assert_eq!(kernel.fire_timeouts(), 0, "nothing left to fire");
}

#[test]
fn a_failed_soft_link_cancels_the_rest_and_a_failed_hard_link_does_not() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(8, None).unwrap();
    let no_file = 999;
    let mut chains = OpBatch::new();
    chains
        .add_linked(Fsync::new(raw(no_file)), 1)
        .and_then(|chain| chain.add(Nop::new(), 2))
        .and_then(|chain| chain.add_hardlinked(Fsync::new(raw(no_file)), 3))
        .and_then(|chain| chain.add(Nop::new(), 4))
        .unwrap();
    ring.add_batch(&mut chains).unwrap();
    let done = reap(&ring, 4);
    assert_eq!(errno(&done[&1]), Some(libc::EBADF));
    assert_eq!(errno(&done[&2]), Some(libc::ECANCELED));
    assert_eq!(errno(&done[&3]), Some(libc::EBADF));
    assert_eq!(done[&4].as_ref().unwrap(), &0);
}

#[test]
fn timeouts_fire_count_out_or_are_removed() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(8, None).unwrap();
    ring.add(Timeout::new(Duration::from_secs(1)), 1).unwrap();
    ring.add(Timeout::new(Duration::from_secs(1)).count(2), 2)
        .unwrap();
    ring.add(Timeout::new(Duration::from_secs(1)), 3).unwrap();
    ring.submit().unwrap();
    ring.add(TimeoutRemove::new(3), 4).unwrap();
    ring.add(Nop::new(), 5).unwrap();
    // The removal's completions count the second one out.
    let done: HashMap<_, _> = reap_in_order(&ring, 4).into_iter().collect();
    assert_eq!(errno(&done[&3]), Some(libc::ECANCELED));
    assert_eq!(done[&4].as_ref().unwrap(), &0);
    assert_eq!(done[&5].as_ref().unwrap(), &0);
    assert_eq!(done[&2].as_ref().unwrap(), &0);
    assert_eq!(kernel.fire_timeouts(), 1);
    let done = reap(&ring, 1);
    assert_eq!(errno(&done[&1]), Some(libc::ETIME));
}

#[test]
fn drop_drains_pending_timeouts_and_chains() {
    let kernel = SimKernel::new();
    let pollable = kernel.create_pollable();
    {
        let ring = kernel.new_context(8, None).unwrap();
        ring.add(Timeout::new(Duration::from_secs(1)), 1).unwrap();
        let mut chain = OpBatch::new();
        chain
            .add_hardlinked(PollAdd::new(raw(pollable), EventType::Read), 2)
            .and_then(|chain| chain.add(PollAdd::new(raw(pollable), EventType::Read), 3))
            .unwrap();
        ring.add_batch(&mut chain).unwrap();
        ring.submit().unwrap();
        assert_eq!(kernel.pending(), 3);
        ring.close(Duration::from_secs(5)).unwrap();
    }
    // The hard link started the second poll once the first was
    // cancelled; drain cancelled it in a later round.
    assert_eq!(kernel.pending(), 0);
    assert_eq!(kernel.stats().abandoned, 0);
}

/// Found by the `sim_ops` fuzz target: a `wait` with only a timeout in
/// flight blocked until the watchdog, as nothing moved the simulated
/// clock. A wait without a deadline now lets time pass.
#[test]
fn a_wait_with_only_a_timeout_in_flight_lets_it_fire() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(2, None).unwrap();
    ring.add(Timeout::new(Duration::from_secs(1)), 1).unwrap();
    let done: Vec<_> = ring.wait().unwrap().collect();
    assert_eq!(done.len(), 1);
    assert_eq!(errno(&done[0].1), Some(libc::ETIME));
    assert_eq!(kernel.pending(), 0);
}
