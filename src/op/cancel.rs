//! [`AsyncCancel`].

use super::{Operation, Prepared};
use crate::abi::URingOperation;
use crate::Result;

/// `IORING_OP_ASYNC_CANCEL` (Linux 5.5): cancels the operations added with
/// a given user_data.
///
/// Acts on every operation in flight with that user_data. Completes with 0
/// if one was cancelled (it then completes with `ECANCELED`), `ENOENT` if
/// none is in the kernel, or `EALREADY` if it is already running and
/// cannot be stopped (it then completes normally); with several operations
/// under one user_data, the result is the oldest one's, and the others are
/// cancelled alongside.
#[derive(Clone, Copy, Debug)]
pub struct AsyncCancel {
    target_user_data: u64,
}

impl AsyncCancel {
    /// Cancels the operations added with user_data `target_user_data`.
    pub fn new(target_user_data: u64) -> AsyncCancel {
        AsyncCancel { target_user_data }
    }
}

impl Operation for AsyncCancel {
    const OPCODE: URingOperation = URingOperation::AsyncCancel;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        Ok(Prepared::targeting_label::<Self>(self.target_user_data))
    }
}
