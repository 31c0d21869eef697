//! Removals: `ASYNC_CANCEL` (by user_data, by file, or of everything),
//! `POLL_REMOVE` (and its events update) and `TIMEOUT_REMOVE`.

use super::{post, ring_mut, World};
use crate::abi::{Sqe, URingOperation};
use crate::bindings::{
    IORING_ASYNC_CANCEL_ANY, IORING_ASYNC_CANCEL_FD, IORING_ASYNC_CANCEL_FD_FIXED,
    IORING_POLL_UPDATE_EVENTS,
};

/// Runs the removal `sqe` (of opcode `op`).
pub(super) fn start(world: &mut World, id: usize, op: URingOperation, sqe: &Sqe) {
    let user_data = sqe.user_data();
    if op == URingOperation::PollRemove && sqe.len() & IORING_POLL_UPDATE_EVENTS != 0 {
        return update_poll(world, id, sqe);
    }
    let flags = sqe.op_flags();
    if op == URingOperation::AsyncCancel
        && flags & (IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ANY) != 0
    {
        return cancel_matching(world, id, sqe);
    }
    let finder = match op {
        URingOperation::PollRemove => Finder::POLLS,
        URingOperation::TimeoutRemove => Finder::TIMEOUTS,
        _ => Finder::ANY,
    };
    let target = sqe.addr();
    if remove_pending(world, id, target, finder) {
        // The kernel does not order the two completions; neither does the
        // simulation.
        if world.random() % 2 == 0 {
            post(world, id, target, -libc::ECANCELED);
            post(world, id, user_data, 0);
        } else {
            post(world, id, user_data, 0);
            post(world, id, target, -libc::ECANCELED);
        }
    } else {
        post(world, id, user_data, -libc::ENOENT);
    }
}

/// `IORING_POLL_UPDATE_EVENTS`: the pending poll waits for the new events,
/// one-shot from now on (`io_poll_parse_events` without
/// `IORING_POLL_ADD_MULTI`).
fn update_poll(world: &mut World, id: usize, sqe: &Sqe) {
    let ring = ring_mut(world, id);
    let found = ring
        .polls
        .iter_mut()
        .find(|poll| poll.user_data == sqe.addr());
    let res = match found {
        Some(poll) => {
            poll.events = sqe.poll_events();
            poll.multishot = false;
            0
        }
        None => -libc::ENOENT,
    };
    post(world, id, sqe.user_data(), res);
}

/// `IORING_ASYNC_CANCEL_FD` / `_ANY` (with `_ALL`): cancels every pending
/// operation on the file, or every one, and completes with how many. A
/// registered file's index (`_FD_FIXED`) names nothing here: the model has
/// no file table.
fn cancel_matching(world: &mut World, id: usize, sqe: &Sqe) {
    let flags = sqe.op_flags();
    let on_fd = |fd: i32| {
        flags & IORING_ASYNC_CANCEL_ANY != 0
            || (flags & IORING_ASYNC_CANCEL_FD_FIXED == 0 && fd == sqe.fd())
    };
    let ring = ring_mut(world, id);
    let mut cancelled = Vec::new();
    ring.polls.retain(|poll| {
        let hit = on_fd(poll.fd);
        if hit {
            cancelled.push(poll.user_data);
        }
        !hit
    });
    ring.deferred.retain(|op| {
        let hit = on_fd(op.fd());
        if hit {
            cancelled.push(op.user_data());
        }
        !hit
    });
    if flags & IORING_ASYNC_CANCEL_ANY != 0 {
        cancelled.extend(ring.timeouts.drain(..).map(|timeout| timeout.user_data));
    }
    let count = cancelled.len() as i32;
    for target in cancelled {
        post(world, id, target, -libc::ECANCELED);
    }
    post(world, id, sqe.user_data(), count);
}

/// Where [`remove_pending`] looks for its target.
#[derive(Clone, Copy)]
pub(super) struct Finder {
    polls: bool,
    deferred: bool,
    timeouts: bool,
}

impl Finder {
    /// `IORING_OP_ASYNC_CANCEL`: anything pending.
    pub(super) const ANY: Finder = Finder {
        polls: true,
        deferred: true,
        timeouts: true,
    };
    /// `IORING_OP_POLL_REMOVE`: polls only.
    pub(super) const POLLS: Finder = Finder {
        polls: true,
        deferred: false,
        timeouts: false,
    };
    /// `IORING_OP_TIMEOUT_REMOVE`: timeouts only.
    pub(super) const TIMEOUTS: Finder = Finder {
        polls: false,
        deferred: false,
        timeouts: true,
    };
}

/// Removes the pending operation `target` of ring `id` from where `finder`
/// looks; whether it was there.
pub(super) fn remove_pending(world: &mut World, id: usize, target: u64, finder: Finder) -> bool {
    let ring = ring_mut(world, id);
    if let Some(i) = ring.polls.iter().position(|p| p.user_data == target) {
        if finder.polls {
            ring.polls.swap_remove(i);
            return true;
        }
    }
    if let Some(i) = ring.deferred.iter().position(|d| d.user_data() == target) {
        if finder.deferred {
            ring.deferred.swap_remove(i);
            return true;
        }
    }
    if let Some(i) = ring.timeouts.iter().position(|t| t.user_data == target) {
        if finder.timeouts {
            ring.timeouts.swap_remove(i);
            return true;
        }
    }
    false
}
