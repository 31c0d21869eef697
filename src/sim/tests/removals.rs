//! Removals beyond one user_data: cancelling by file or everything, and a
//! poll's events updated in place.

use super::super::SimKernel;
use super::{errno, raw, reap, reap_in_order};
use crate::op::{AsyncCancel, PollAdd, PollRemove, Timeout};
use crate::EventType;

#[test]
fn cancel_by_file_and_cancel_all_stop_what_they_match_and_count_it() {
    let kernel = SimKernel::new();
    let (first, second) = (kernel.create_pollable(), kernel.create_pollable());
    let ring = kernel.new_context(8, None).unwrap();
    ring.add(PollAdd::new(raw(first), EventType::Read), 1)
        .unwrap();
    ring.add(PollAdd::new(raw(first), EventType::Read), 2)
        .unwrap();
    ring.add(PollAdd::new(raw(second), EventType::Read), 3)
        .unwrap();
    ring.add(Timeout::new(std::time::Duration::from_secs(1)), 4)
        .unwrap();
    ring.submit().unwrap();
    ring.add(AsyncCancel::fd(raw(first)), 5).unwrap();
    let done: std::collections::HashMap<_, _> = reap_in_order(&ring, 3).into_iter().collect();
    assert_eq!(done[&5].as_ref().unwrap(), &2);
    assert_eq!(errno(&done[&1]), Some(libc::ECANCELED));
    assert_eq!(errno(&done[&2]), Some(libc::ECANCELED));
    assert_eq!((ring.in_flight(), kernel.pending()), (2, 2));
    ring.add(AsyncCancel::all(), 6).unwrap();
    let done = reap(&ring, 3);
    assert_eq!(done[&6].as_ref().unwrap(), &2);
    assert_eq!(errno(&done[&3]), Some(libc::ECANCELED));
    assert_eq!(errno(&done[&4]), Some(libc::ECANCELED));
    assert_eq!(kernel.pending(), 0);
}

#[test]
fn a_poll_update_changes_the_events_a_pending_poll_waits_for() {
    let kernel = SimKernel::new();
    let pollable = kernel.create_pollable();
    let ring = kernel.new_context(8, None).unwrap();
    ring.add(PollAdd::new(raw(pollable), EventType::Read), 1)
        .unwrap();
    ring.submit().unwrap();
    ring.add(PollRemove::update_events(1, EventType::Write), 2)
        .unwrap();
    let done: std::collections::HashMap<_, _> = reap_in_order(&ring, 1).into_iter().collect();
    assert_eq!(done[&2].as_ref().unwrap(), &0);
    // Readable no longer completes it; writable does.
    kernel.set_ready(pollable, libc::POLLIN as u32);
    assert_eq!(kernel.pending(), 1);
    kernel.set_ready(pollable, libc::POLLOUT as u32);
    let done = reap(&ring, 1);
    assert_eq!(done[&1].as_ref().unwrap(), &(libc::POLLOUT as u32));
    ring.add(PollRemove::update_events(1, EventType::Write), 3)
        .unwrap();
    assert_eq!(errno(&reap(&ring, 1)[&3]), Some(libc::ENOENT));
}
