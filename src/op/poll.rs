//! [`PollAdd`] and [`PollRemove`].

use super::{KeepAlive, Operation, Prepared, Target};
use crate::abi::{Sqe, URingOperation};
use crate::bindings::{IORING_POLL_ADD_MULTI, IORING_POLL_UPDATE_EVENTS};
use crate::Result;

/// Which way a poll waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventType {
    /// Readable (`POLLIN`).
    Read,
    /// Writable (`POLLOUT`).
    Write,
    /// Readable or writable.
    ReadWrite,
}

impl EventType {
    fn poll_events(self) -> u32 {
        let events = match self {
            EventType::Read => libc::POLLIN,
            EventType::Write => libc::POLLOUT,
            EventType::ReadWrite => libc::POLLIN | libc::POLLOUT,
        };
        events as u32
    }
}

/// `IORING_OP_POLL_ADD` (Linux 5.1): a one-shot poll. Completes with the
/// `POLL*` events that are ready, once one of those asked for is; or, made
/// [`multishot`](Self::multishot), once per readiness event until
/// cancelled.
#[derive(Debug)]
pub struct PollAdd {
    target: Target,
    events: EventType,
    multishot: bool,
}

impl PollAdd {
    /// Waits until `target` is ready for `events`.
    pub fn new(target: impl Into<Target>, events: EventType) -> PollAdd {
        PollAdd {
            target: target.into(),
            events,
            multishot: false,
        }
    }

    /// Makes the poll multishot (`IORING_POLL_ADD_MULTI` in the SQE's
    /// `len`, Linux 5.13; `io_uring_enter(2)`): it stays armed and
    /// completes, with the ready `POLL*` events and `IORING_CQE_F_MORE`
    /// ([`Completion::more`](crate::Completion::more); read the flags with
    /// [`wait_completions`](crate::URingContext::wait_completions)), once
    /// at once if the target is ready when the kernel arms it, and then
    /// once each time the target is woken ready for `events`: edge
    /// triggered, so an eventfd or socket that stays readable completes
    /// again only when written to again.
    ///
    /// It ends with one last completion without MORE: `ECANCELED` when
    /// cancelled ([`AsyncCancel`](super::AsyncCancel) or
    /// [`PollRemove`](PollRemove) by its user_data, or dropping the
    /// context), an error if polling fails, or the ready events when the
    /// kernel had no room in the completion ring for a completion with
    /// MORE (measured on Linux 6.18, `tests/multishot.rs`; reap, then add
    /// it again). Until that last completion has been yielded it counts as
    /// in flight, keeps its target open, and keeps its user_data, which it
    /// may share with other operations that pin no memory. Older kernels
    /// fail it with `EINVAL` (they require `len` to be 0, `io_poll_add_prep`
    /// in `fs/io_uring.c` before 5.13).
    pub fn multishot(mut self) -> PollAdd {
        self.multishot = true;
        self
    }
}

impl Operation for PollAdd {
    const OPCODE: URingOperation = URingOperation::PollAdd;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let mut sqe = Sqe::new(Self::OPCODE);
        self.target.fill(&mut sqe);
        sqe.set_poll_events(self.events.poll_events());
        if self.multishot {
            // The poll's flags go in `len` (`io_uring_prep_poll_multishot`).
            sqe.set_len(IORING_POLL_ADD_MULTI);
        }
        Ok(Prepared::new::<Self>(sqe, KeepAlive::target(self.target)))
    }
}

/// `IORING_OP_POLL_REMOVE` (Linux 5.1): removes the polls added with a
/// given user_data.
///
/// Acts on every poll in flight with that user_data. Completes with 0 if a
/// poll was removed (the poll then completes with `ECANCELED`), `ENOENT` if
/// none is pending in the kernel, or `EALREADY` if it is already
/// completing; with several polls under one user_data, the result is the
/// oldest one's, and the others are removed alongside.
///
/// [`update_events`](Self::update_events) changes what the polls wait for
/// instead. No form re-keys a poll to another user_data
/// (`IORING_POLL_UPDATE_USER_DATA`): the context's identity for the
/// operation is what lets its completion release it, and only it.
#[derive(Clone, Copy, Debug)]
pub struct PollRemove {
    target_user_data: u64,
    update: Option<EventType>,
}

impl PollRemove {
    /// Removes the polls added with user_data `target_user_data`.
    pub fn new(target_user_data: u64) -> PollRemove {
        PollRemove {
            target_user_data,
            update: None,
        }
    }

    /// Makes the polls added with user_data `target_user_data` wait for
    /// `events` instead, leaving them in flight
    /// (`IORING_POLL_UPDATE_EVENTS`, Linux 5.13, `io_uring_enter(2)`).
    /// Completes with 0 if a poll was updated, `ENOENT` if none is
    /// pending. An updated poll is one-shot from then on, multishot ones
    /// too: the kernel reads the update's flags as a new poll's, and this
    /// update does not carry `IORING_POLL_ADD_MULTI` (`io_poll_parse_events`).
    pub fn update_events(target_user_data: u64, events: EventType) -> PollRemove {
        PollRemove {
            target_user_data,
            update: Some(events),
        }
    }
}

impl Operation for PollRemove {
    const OPCODE: URingOperation = URingOperation::PollRemove;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let mut prepared = Prepared::targeting_label::<Self>(self.target_user_data);
        if let Some(events) = self.update {
            // The update's flags go in `len` (`io_uring_prep_poll_update`).
            prepared.sqe.set_len(IORING_POLL_UPDATE_EVENTS);
            prepared.sqe.set_poll_events(events.poll_events());
        }
        Ok(prepared)
    }
}
