//! [`PollAdd`] and [`PollRemove`].

use super::{KeepAlive, Operation, Prepared, Target};
use crate::abi::{Sqe, URingOperation};
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
/// `POLL*` events that are ready, once one of those asked for is.
#[derive(Debug)]
pub struct PollAdd {
    target: Target,
    events: EventType,
}

impl PollAdd {
    /// Waits until `target` is ready for `events`.
    pub fn new(target: impl Into<Target>, events: EventType) -> PollAdd {
        PollAdd {
            target: target.into(),
            events,
        }
    }
}

impl Operation for PollAdd {
    const OPCODE: URingOperation = URingOperation::PollAdd;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let mut sqe = Sqe::new(Self::OPCODE);
        self.target.fill(&mut sqe);
        sqe.set_poll_events(self.events.poll_events());
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
#[derive(Clone, Copy, Debug)]
pub struct PollRemove {
    target_user_data: u64,
}

impl PollRemove {
    /// Removes the polls added with user_data `target_user_data`.
    pub fn new(target_user_data: u64) -> PollRemove {
        PollRemove { target_user_data }
    }
}

impl Operation for PollRemove {
    const OPCODE: URingOperation = URingOperation::PollRemove;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        Ok(Prepared::targeting_label::<Self>(self.target_user_data))
    }
}
