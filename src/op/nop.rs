//! [`Nop`].

use super::{KeepAlive, Operation, Prepared};
use crate::abi::{Sqe, SqeFlags, URingOperation};
use crate::Result;

/// `IORING_OP_NOP` (Linux 5.1): does nothing and completes with 0.
///
/// A nop submitted by one thread wakes a thread blocked in
/// [`wait`](crate::URingContext::wait): the way to stop a reaper.
#[derive(Clone, Copy, Debug, Default)]
pub struct Nop {
    flags: SqeFlags,
}

impl Nop {
    /// A nop.
    pub fn new() -> Nop {
        Nop::default()
    }

    /// The same nop carrying SQE `flags` (`ASYNC`), to see what a
    /// restricted ring allows.
    pub fn flags(self, flags: SqeFlags) -> Nop {
        Nop { flags }
    }
}

impl Operation for Nop {
    const OPCODE: URingOperation = URingOperation::Nop;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        Ok(
            Prepared::new::<Self>(Sqe::new(Self::OPCODE), KeepAlive::default())
                .with_flags(self.flags.into()),
        )
    }
}
