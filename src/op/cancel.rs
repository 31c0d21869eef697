//! [`AsyncCancel`].

use super::{KeepAlive, Operation, Prepared, Target};
use crate::abi::{Sqe, URingOperation};
use crate::bindings::{
    IORING_ASYNC_CANCEL_ALL, IORING_ASYNC_CANCEL_ANY, IORING_ASYNC_CANCEL_FD,
    IORING_ASYNC_CANCEL_FD_FIXED,
};
use crate::Result;

/// `IORING_OP_ASYNC_CANCEL` (Linux 5.5): cancels operations in flight.
///
/// By user_data ([`new`](Self::new)), it acts on every operation in flight
/// with that user_data. It completes with 0 if one was cancelled (it then
/// completes with `ECANCELED`), `ENOENT` if none is in the kernel, or
/// `EALREADY` if it is already running and cannot be stopped (it then
/// completes normally); with several operations under one user_data, the
/// result is the oldest one's, and the others are cancelled alongside.
///
/// By file ([`fd`](Self::fd)) or all at once ([`all`](Self::all)), the
/// kernel matches the operations itself (Linux 5.19,
/// `IORING_ASYNC_CANCEL_FD`, `IORING_ASYNC_CANCEL_ANY` and
/// `IORING_ASYNC_CANCEL_ALL` in `io_uring_prep_cancel(3)`), and completes
/// with the number it cancelled. Older kernels fail those with `EINVAL`.
/// What a cancellation stops completes as above, and is released as any
/// completion is, so no state is freed early.
#[derive(Debug)]
pub struct AsyncCancel(Aim);

#[derive(Debug)]
enum Aim {
    /// The operations added with this user_data.
    Label(u64),
    /// Every operation on this file.
    File(Target),
    /// Every operation in flight.
    Everything,
}

impl AsyncCancel {
    /// Cancels the operations added with user_data `target_user_data`.
    pub fn new(target_user_data: u64) -> AsyncCancel {
        AsyncCancel(Aim::Label(target_user_data))
    }

    /// Cancels every operation in flight on `target`, a descriptor or a
    /// registered file (`IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL`,
    /// Linux 5.19; a registered file needs `IORING_ASYNC_CANCEL_FD_FIXED`,
    /// Linux 6.0). Completes with how many it cancelled (0 for none).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use ringfence::op::{AsyncCancel, PollAdd};
    /// use ringfence::{EventType, URingContext};
    ///
    /// let ring = URingContext::new(8, None)?;
    /// let (reader, _writer) = std::os::unix::net::UnixStream::pair()?;
    /// let reader = Arc::new(reader);
    /// ring.add(PollAdd::new(Arc::clone(&reader), EventType::Read), 1)?;
    /// ring.add(PollAdd::new(Arc::clone(&reader), EventType::Read), 2)?;
    /// ring.submit()?;
    /// ring.add(AsyncCancel::fd(reader), 3)?;
    /// let mut results = std::collections::HashMap::new();
    /// while results.len() < 3 {
    ///     for (user_data, result) in ring.wait()? {
    ///         results.insert(user_data, result.map_err(|e| e.raw_os_error()));
    ///     }
    /// }
    /// assert_eq!(results[&3], Ok(2)); // both polls cancelled
    /// assert_eq!(results[&1], Err(Some(libc::ECANCELED)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fd(target: impl Into<Target>) -> AsyncCancel {
        AsyncCancel(Aim::File(target.into()))
    }

    /// Cancels every operation in flight on the ring
    /// (`IORING_ASYNC_CANCEL_ANY`, which implies `IORING_ASYNC_CANCEL_ALL`,
    /// Linux 5.19),
    /// the context's own included (they are nops and cancellations, and
    /// come to no harm). Completes with how many it cancelled.
    pub fn all() -> AsyncCancel {
        AsyncCancel(Aim::Everything)
    }
}

impl Operation for AsyncCancel {
    const OPCODE: URingOperation = URingOperation::AsyncCancel;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let (flags, target) = match self.0 {
            Aim::Label(label) => return Ok(Prepared::targeting_label::<Self>(label)),
            Aim::Everything => (IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL, None),
            Aim::File(target) => {
                // The cancellation's own flag marks a registered file (the
                // kernel also reads the number as one under
                // IOSQE_FIXED_FILE, which the context gives only to this
                // form on a ring that requires it: `names_plain_fd`).
                let fixed = if target.is_fixed() {
                    IORING_ASYNC_CANCEL_FD_FIXED
                } else {
                    0
                };
                let flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL | fixed;
                (flags, Some(target))
            }
        };
        let mut sqe = Sqe::new(Self::OPCODE);
        sqe.set_op_flags(flags);
        let keep_alive = match target {
            Some(target) => {
                sqe.set_fd(target.raw_fd());
                KeepAlive::target(target)
            }
            None => KeepAlive::default(),
        };
        Ok(Prepared::new::<Self>(sqe, keep_alive))
    }
}

/// Whether `sqe`, a cancellation, names a plain descriptor (by file, and not
/// a registered one).
pub(super) fn names_plain_fd(sqe: &Sqe) -> bool {
    let flags = sqe.op_flags();
    flags & IORING_ASYNC_CANCEL_FD != 0 && flags & IORING_ASYNC_CANCEL_FD_FIXED == 0
}
