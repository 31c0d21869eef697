//! [`URingAllowlist`]: what a restricted ring may ever do, enforced by the
//! kernel through `IORING_REGISTER_RESTRICTIONS`.

use std::collections::BTreeSet;

use crate::abi::{
    restriction, IosqeFlags, RegisterOperation, Restriction, RestrictionKind, URingOperation,
};

/// The operations, register calls and SQE flags a ring may ever use.
///
/// Passed to [`URingContext::new`](crate::URingContext::new), it is
/// registered with `IORING_REGISTER_RESTRICTIONS` while the ring is still
/// disabled, and the kernel enforces it from then on, for the life of the
/// ring, whatever the process does later (Linux 5.10, which added
/// restrictions and disabled rings):
///
/// - an operation outside the allowlist is still consumed, but completes
///   with `EACCES`;
/// - an SQE that carries a flag outside [`allow_sqe_flags`](Self::allow_sqe_flags),
///   or lacks one of [`require_sqe_flags`](Self::require_sqe_flags), completes
///   with `EACCES`. The context's own SQEs (drain's cancellations, its
///   wake-up nops) carry the required flags only within
///   `FIXED_FILE | ASYNC`: a ring that requires any other flag refuses
///   them, and cannot cancel on drop (see
///   [`require_sqe_flags`](Self::require_sqe_flags));
/// - a register call outside the allowlist fails with `EACCES` (from Linux
///   7.0, only if the allowlist has a register-call entry: see
///   [Linux 7.0 and allowlists](crate#linux-70-and-allowlists)).
///
/// [`URingAllowlist::new`] allows nothing, as crosvm's does. Start from
/// [`allow_housekeeping`](Self::allow_housekeeping) unless you have a reason
/// not to: it allows the two operations the context itself issues, `Nop`
/// (another thread's nop is how a thread blocked in
/// [`wait`](crate::URingContext::wait) is woken for shutdown; a refused
/// nop still wakes it, but with an `EACCES` completion rather than 0) and
/// `AsyncCancel` (how drop and [`close`](crate::URingContext::close) stop
/// what is still in flight). Without `AsyncCancel`, dropping a context with
/// operations in flight cannot stop them: it leaks their state at once
/// instead of waiting for completions that may never come, and `close`
/// reports [`Error::CancelNotAllowed`](crate::Error::CancelNotAllowed).
///
/// ```
/// use ringfence::{URingAllowlist, URingOperation};
///
/// let mut allowlist = URingAllowlist::new();
/// allowlist
///     .allow_housekeeping()
///     .allow_submit_operation(URingOperation::Readv)
///     .allow_submit_operation(URingOperation::Writev);
/// assert!(allowlist.allows_submit_operation(URingOperation::Readv));
/// assert!(allowlist.allows_submit_operation(URingOperation::AsyncCancel));
/// assert!(!allowlist.allows_submit_operation(URingOperation::Openat));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct URingAllowlist {
    submit_operations: BTreeSet<URingOperation>,
    register_operations: BTreeSet<RegisterOperation>,
    allowed_sqe_flags: IosqeFlags,
    required_sqe_flags: IosqeFlags,
}

impl URingAllowlist {
    /// An allowlist that allows nothing: not even the nops and
    /// cancellations the context issues itself (see
    /// [`allow_housekeeping`](Self::allow_housekeeping)).
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows the two operations the context issues itself: `Nop`, to wake
    /// a thread blocked in [`wait`](crate::URingContext::wait), and
    /// `AsyncCancel`, which drop and [`close`](crate::URingContext::close)
    /// use to stop what is still in flight.
    pub fn allow_housekeeping(&mut self) -> &mut Self {
        self.allow_submit_operation(URingOperation::Nop)
            .allow_submit_operation(URingOperation::AsyncCancel)
    }

    /// Allows SQEs with opcode `op`.
    pub fn allow_submit_operation(&mut self, op: URingOperation) -> &mut Self {
        self.submit_operations.insert(op);
        self
    }

    /// Allows the register call `op` on the enabled ring.
    pub fn allow_register_operation(&mut self, op: RegisterOperation) -> &mut Self {
        self.register_operations.insert(op);
        self
    }

    /// Allows SQEs to carry `flags` (added to those allowed before).
    pub fn allow_sqe_flags(&mut self, flags: IosqeFlags) -> &mut Self {
        self.allowed_sqe_flags |= flags;
        self
    }

    /// Requires every SQE to carry `flags` (added to those required
    /// before).
    ///
    /// The context's own SQEs (wake-up nops, drop's cancellations) carry
    /// the required `FIXED_FILE` and `ASYNC`, but no other flag: requiring
    /// `IO_DRAIN`, `IO_LINK`, `IO_HARDLINK`, `BUFFER_SELECT` or
    /// `CQE_SKIP_SUCCESS` makes the kernel refuse them, so such a ring
    /// cannot cancel on drop (it leaks at once, as without `AsyncCancel`).
    ///
    /// The caller's operations that name no file (nops, cancellations,
    /// poll removals, timeouts, link timeouts) get a required `FIXED_FILE`
    /// from the context too, which the kernel ignores on them (measured on
    /// Linux 6.18); a required `ASYNC` they must carry themselves
    /// ([`SqeFlags::ASYNC`](crate::SqeFlags::ASYNC) on a nop). Those the kernel refuses
    /// with `FIXED_FILE` (openat, openat2, close, statx, files_update,
    /// timeout_remove) fail at add time with
    /// [`Error::FixedFileNotSupported`](crate::Error::FixedFileNotSupported)
    /// on a ring that requires it; every other operation names its file
    /// itself and runs only on a registered one
    /// ([`Target::fixed`](crate::op::Target::fixed)): a plain descriptor
    /// completes with `EACCES`.
    pub fn require_sqe_flags(&mut self, flags: IosqeFlags) -> &mut Self {
        self.required_sqe_flags |= flags;
        self
    }

    /// Whether SQEs with opcode `op` are allowed.
    pub fn allows_submit_operation(&self, op: URingOperation) -> bool {
        self.submit_operations.contains(&op)
    }

    /// Whether the register call `op` is allowed.
    pub fn allows_register_operation(&self, op: RegisterOperation) -> bool {
        self.register_operations.contains(&op)
    }

    /// Whether an SQE with these flags passes the flag restrictions: it
    /// carries every required flag and none outside allowed | required.
    pub fn allows_sqe_flags(&self, flags: IosqeFlags) -> bool {
        flags.contains(self.required_sqe_flags)
            && (self.allowed_sqe_flags | self.required_sqe_flags).contains(flags)
    }

    /// The flags every SQE must carry.
    pub fn required_sqe_flags(&self) -> IosqeFlags {
        self.required_sqe_flags
    }

    /// The restriction entries the kernel takes for this allowlist.
    pub(crate) fn restrictions(&self) -> Vec<Restriction> {
        let ops = self
            .submit_operations
            .iter()
            .map(|op| restriction(RestrictionKind::SqeOp, *op as u8));
        let registers = self
            .register_operations
            .iter()
            .map(|op| restriction(RestrictionKind::RegisterOp, *op as u8));
        // From Linux 7.0 the kernel restricts SQEs only if the set has an
        // SQE entry (see the crate docs' "Linux 7.0 and allowlists"). An
        // allowed-flags entry, even an empty one, changes nothing before
        // 7.0, so one goes with any register-call entry: an allowlist of
        // register calls alone then still allows no operation on 7.0.
        let sqe_entry_needed = !self.register_operations.is_empty();
        let flags = [
            (
                RestrictionKind::SqeFlagsAllowed,
                self.allowed_sqe_flags,
                sqe_entry_needed,
            ),
            (
                RestrictionKind::SqeFlagsRequired,
                self.required_sqe_flags,
                false,
            ),
        ]
        .into_iter()
        .filter(|(_, flags, needed)| *needed || !flags.is_empty())
        .map(|(kind, flags, _)| restriction(kind, flags.bits()));
        ops.chain(registers).chain(flags).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restrictions_encode_every_entry() {
        let mut list = URingAllowlist::new();
        list.allow_submit_operation(URingOperation::Readv)
            .allow_register_operation(RegisterOperation::Eventfd)
            .allow_sqe_flags(IosqeFlags::ASYNC)
            .require_sqe_flags(IosqeFlags::FIXED_FILE);
        let decoded: Vec<_> = list.restrictions().iter().map(Restriction::parts).collect();
        assert_eq!(
            decoded,
            [
                (Some(RestrictionKind::SqeOp), URingOperation::Readv as u8),
                (
                    Some(RestrictionKind::RegisterOp),
                    RegisterOperation::Eventfd as u8
                ),
                (
                    Some(RestrictionKind::SqeFlagsAllowed),
                    IosqeFlags::ASYNC.bits()
                ),
                (
                    Some(RestrictionKind::SqeFlagsRequired),
                    IosqeFlags::FIXED_FILE.bits()
                ),
            ]
        );
        assert!(URingAllowlist::new().restrictions().is_empty());
    }

    #[test]
    fn register_calls_alone_still_carry_an_sqe_entry() {
        let mut list = URingAllowlist::new();
        list.allow_register_operation(RegisterOperation::Eventfd);
        let decoded: Vec<_> = list.restrictions().iter().map(Restriction::parts).collect();
        assert_eq!(
            decoded,
            [
                (
                    Some(RestrictionKind::RegisterOp),
                    RegisterOperation::Eventfd as u8
                ),
                (Some(RestrictionKind::SqeFlagsAllowed), 0),
            ]
        );
    }

    #[test]
    fn housekeeping_allows_nop_and_async_cancel_only() {
        let mut list = URingAllowlist::new();
        list.allow_housekeeping();
        let allowed: Vec<_> = URingOperation::ALL
            .iter()
            .copied()
            .filter(|op| list.allows_submit_operation(*op))
            .collect();
        assert_eq!(allowed, [URingOperation::Nop, URingOperation::AsyncCancel]);
    }

    #[test]
    fn sqe_flag_checks_match_the_kernel_rule() {
        let mut list = URingAllowlist::new();
        assert!(list.allows_sqe_flags(IosqeFlags::empty()));
        assert!(!list.allows_sqe_flags(IosqeFlags::ASYNC));
        list.allow_sqe_flags(IosqeFlags::ASYNC);
        assert!(list.allows_sqe_flags(IosqeFlags::ASYNC));
        list.require_sqe_flags(IosqeFlags::IO_HARDLINK);
        assert!(!list.allows_sqe_flags(IosqeFlags::empty()));
        assert!(list.allows_sqe_flags(IosqeFlags::IO_HARDLINK | IosqeFlags::ASYNC));
        assert!(!list.allows_sqe_flags(IosqeFlags::IO_HARDLINK | IosqeFlags::IO_LINK));
    }
}
