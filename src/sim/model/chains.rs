//! Linked chains and timers: what the kernel does with `IOSQE_IO_LINK`,
//! `IOSQE_IO_HARDLINK`, `IORING_OP_TIMEOUT` and `IORING_OP_LINK_TIMEOUT`.
//!
//! The model has no clock: timers fire when a test calls
//! [`SimKernel::fire_timeouts`](crate::sim::SimKernel::fire_timeouts), when
//! a thread waits in `io_uring_enter` without a deadline and nothing else
//! can complete (time passes while it sleeps), or (a
//! [`Timeout`](crate::op::Timeout) with a count) once that many other
//! completions have been posted.

use std::collections::VecDeque;

use super::{cancel, ops, post, ring_mut, World};
use crate::abi::{IosqeFlags, Sqe, URingOperation};

/// A chain whose head has started: the rest waits for the head's
/// completion.
pub(in crate::sim) struct Chain {
    /// The head's user_data (the context's identity for it).
    head: u64,
    /// Whether the head is hard-linked: the rest starts whatever its result.
    hard: bool,
    /// The link timeout bounding the head, if one follows it.
    link_timeout: Option<u64>,
    /// The members after the head (and its link timeout), not yet started.
    rest: VecDeque<Sqe>,
}

impl Chain {
    /// Operations the chain holds besides its head (which is counted
    /// wherever it waits).
    pub(super) fn held(&self) -> usize {
        self.rest.len() + usize::from(self.link_timeout.is_some())
    }
}

/// A pending [`Timeout`](crate::op::Timeout).
pub(in crate::sim) struct PendingTimeout {
    pub(super) user_data: u64,
    /// Completions still to be posted before it completes with 0; 0 when
    /// only the time counts.
    count_left: u64,
}

/// Whether `sqe` joins the next SQE to it.
pub(super) fn links_next(sqe: &Sqe) -> bool {
    sqe.flags()
        .intersects(IosqeFlags::IO_LINK | IosqeFlags::IO_HARDLINK)
}

/// Issues the consumed SQEs `chain` (a single SQE, or a chain in submission
/// order). As `io_submit_sqes` does, a member the kernel refuses fails with
/// its error, the others with `ECANCELED`, and submission stops (`Err`).
pub(super) fn issue(world: &mut World, id: usize, chain: Vec<Sqe>) -> Result<(), ()> {
    let refused = chain
        .iter()
        .enumerate()
        .find_map(|(i, sqe)| ops::check(world, id, sqe).err().map(|errno| (i, errno)));
    if let Some((bad, errno)) = refused {
        for (i, sqe) in chain.iter().enumerate() {
            let res = if i == bad { -errno } else { -libc::ECANCELED };
            post(world, id, sqe.user_data(), res);
        }
        return Err(());
    }
    start(world, id, chain.into());
    Ok(())
}

/// Starts the head of `members`; the rest waits in a [`Chain`] for its
/// completion.
fn start(world: &mut World, id: usize, mut members: VecDeque<Sqe>) {
    let Some(head) = members.pop_front() else {
        return;
    };
    let is_link_timeout = |sqe: &Sqe| sqe.opcode() == URingOperation::LinkTimeout as u8;
    if links_next(&head) && !members.is_empty() {
        let link_timeout = members
            .front()
            .is_some_and(is_link_timeout)
            .then(|| members.pop_front())
            .flatten()
            .map(|sqe| sqe.user_data());
        ring_mut(world, id).chains.push(Chain {
            head: head.user_data(),
            hard: head.flags().contains(IosqeFlags::IO_HARDLINK),
            link_timeout,
            rest: members,
        });
    }
    ops::start(world, id, head);
}

/// After a completion of `user_data` with `res` was posted: continues the
/// chain it heads, if any, and counts it for the timeouts waiting on a
/// count.
pub(super) fn on_posted(world: &mut World, id: usize, user_data: u64, res: i32) {
    let ring = ring_mut(world, id);
    let mut counted_out = Vec::new();
    ring.timeouts.retain_mut(|timeout| {
        if timeout.count_left == 0 || timeout.user_data == user_data {
            return true;
        }
        timeout.count_left -= 1;
        let done = timeout.count_left == 0;
        if done {
            counted_out.push(timeout.user_data);
        }
        !done
    });
    for timeout in counted_out {
        post(world, id, timeout, 0);
    }
    let ring = ring_mut(world, id);
    let Some(i) = ring.chains.iter().position(|chain| chain.head == user_data) else {
        return;
    };
    let chain = ring.chains.swap_remove(i);
    // The head finished before its deadline.
    if let Some(timeout) = chain.link_timeout {
        post(world, id, timeout, -libc::ECANCELED);
    }
    if res < 0 && !chain.hard {
        for sqe in chain.rest {
            post(world, id, sqe.user_data(), -libc::ECANCELED);
        }
    } else {
        start(world, id, chain.rest);
    }
}

/// Starts a timeout: it waits until fired, counted out or removed.
pub(super) fn start_timeout(world: &mut World, id: usize, sqe: &Sqe) {
    let timeout = PendingTimeout {
        user_data: sqe.user_data(),
        count_left: sqe.offset(),
    };
    ring_mut(world, id).timeouts.push(timeout);
}

/// Fires every timer of ring `id`: timeouts complete with `ETIME`, and each
/// link timeout cancels the head it bounds (which completes with
/// `ECANCELED`) and completes with `ETIME`. Returns how many fired.
pub(super) fn fire_timeouts(world: &mut World, id: usize) -> usize {
    let Some(ring) = world.rings[id].as_mut() else {
        return 0;
    };
    let timeouts: Vec<u64> = ring.timeouts.drain(..).map(|t| t.user_data).collect();
    let mut bounded = Vec::new();
    for chain in &mut ring.chains {
        if let Some(timeout) = chain.link_timeout.take() {
            bounded.push((chain.head, timeout));
        }
    }
    let fired = timeouts.len() + bounded.len();
    for timeout in timeouts {
        post(world, id, timeout, -libc::ETIME);
    }
    for (head, timeout) in bounded {
        post(world, id, timeout, -libc::ETIME);
        if cancel::remove_pending(world, id, head, cancel::Finder::ANY) {
            post(world, id, head, -libc::ECANCELED);
        }
    }
    fired
}
