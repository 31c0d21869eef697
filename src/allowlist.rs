//! [`URingAllowlist`]: what a restricted ring may ever do, enforced by the
//! kernel through `IORING_REGISTER_RESTRICTIONS`.

use std::collections::BTreeSet;

use crate::bindings::*;

/// Declares a fieldless `u8` enum over kernel constants, in kernel
/// numbering, with `ALL` (every variant, in order) and `from_raw`.
macro_rules! kernel_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $value:ident,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* #[doc = concat!("`", stringify!($value), "`")] $variant = $value as u8,)*
        }

        impl $name {
            /// Every variant, in kernel numbering.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The variant with kernel number `raw`, if the bindings know it.
            pub fn from_raw(raw: u8) -> Option<$name> {
                Self::ALL.iter().copied().find(|op| *op as u8 == raw)
            }
        }
    };
}

kernel_enum! {
    /// An io_uring operation (an SQE opcode): the kernel's `IORING_OP_*`
    /// without the prefix, in CamelCase.
    pub enum URingOperation {
        Nop = IORING_OP_NOP,
        Readv = IORING_OP_READV,
        Writev = IORING_OP_WRITEV,
        Fsync = IORING_OP_FSYNC,
        ReadFixed = IORING_OP_READ_FIXED,
        WriteFixed = IORING_OP_WRITE_FIXED,
        PollAdd = IORING_OP_POLL_ADD,
        PollRemove = IORING_OP_POLL_REMOVE,
        SyncFileRange = IORING_OP_SYNC_FILE_RANGE,
        Sendmsg = IORING_OP_SENDMSG,
        Recvmsg = IORING_OP_RECVMSG,
        Timeout = IORING_OP_TIMEOUT,
        TimeoutRemove = IORING_OP_TIMEOUT_REMOVE,
        Accept = IORING_OP_ACCEPT,
        AsyncCancel = IORING_OP_ASYNC_CANCEL,
        LinkTimeout = IORING_OP_LINK_TIMEOUT,
        Connect = IORING_OP_CONNECT,
        Fallocate = IORING_OP_FALLOCATE,
        Openat = IORING_OP_OPENAT,
        Close = IORING_OP_CLOSE,
        FilesUpdate = IORING_OP_FILES_UPDATE,
        Statx = IORING_OP_STATX,
        Read = IORING_OP_READ,
        Write = IORING_OP_WRITE,
        Fadvise = IORING_OP_FADVISE,
        Madvise = IORING_OP_MADVISE,
        Send = IORING_OP_SEND,
        Recv = IORING_OP_RECV,
        Openat2 = IORING_OP_OPENAT2,
        EpollCtl = IORING_OP_EPOLL_CTL,
        Splice = IORING_OP_SPLICE,
        ProvideBuffers = IORING_OP_PROVIDE_BUFFERS,
        RemoveBuffers = IORING_OP_REMOVE_BUFFERS,
        Tee = IORING_OP_TEE,
        Shutdown = IORING_OP_SHUTDOWN,
        Renameat = IORING_OP_RENAMEAT,
        Unlinkat = IORING_OP_UNLINKAT,
        Mkdirat = IORING_OP_MKDIRAT,
        Symlinkat = IORING_OP_SYMLINKAT,
        Linkat = IORING_OP_LINKAT,
        MsgRing = IORING_OP_MSG_RING,
        Fsetxattr = IORING_OP_FSETXATTR,
        Setxattr = IORING_OP_SETXATTR,
        Fgetxattr = IORING_OP_FGETXATTR,
        Getxattr = IORING_OP_GETXATTR,
        Socket = IORING_OP_SOCKET,
        UringCmd = IORING_OP_URING_CMD,
        SendZc = IORING_OP_SEND_ZC,
        SendmsgZc = IORING_OP_SENDMSG_ZC,
    }
}

kernel_enum! {
    /// An `io_uring_register` call: the kernel's `IORING_REGISTER_*` without
    /// the prefix (`IORING_UNREGISTER_*` keep `Unregister`), in CamelCase.
    pub enum RegisterOperation {
        Buffers = IORING_REGISTER_BUFFERS,
        UnregisterBuffers = IORING_UNREGISTER_BUFFERS,
        Files = IORING_REGISTER_FILES,
        UnregisterFiles = IORING_UNREGISTER_FILES,
        Eventfd = IORING_REGISTER_EVENTFD,
        UnregisterEventfd = IORING_UNREGISTER_EVENTFD,
        FilesUpdate = IORING_REGISTER_FILES_UPDATE,
        EventfdAsync = IORING_REGISTER_EVENTFD_ASYNC,
        Probe = IORING_REGISTER_PROBE,
        Personality = IORING_REGISTER_PERSONALITY,
        UnregisterPersonality = IORING_UNREGISTER_PERSONALITY,
        Restrictions = IORING_REGISTER_RESTRICTIONS,
        EnableRings = IORING_REGISTER_ENABLE_RINGS,
        Files2 = IORING_REGISTER_FILES2,
        FilesUpdate2 = IORING_REGISTER_FILES_UPDATE2,
        Buffers2 = IORING_REGISTER_BUFFERS2,
        BuffersUpdate = IORING_REGISTER_BUFFERS_UPDATE,
        IowqAff = IORING_REGISTER_IOWQ_AFF,
        UnregisterIowqAff = IORING_UNREGISTER_IOWQ_AFF,
        IowqMaxWorkers = IORING_REGISTER_IOWQ_MAX_WORKERS,
        RingFds = IORING_REGISTER_RING_FDS,
        UnregisterRingFds = IORING_UNREGISTER_RING_FDS,
        PbufRing = IORING_REGISTER_PBUF_RING,
        UnregisterPbufRing = IORING_UNREGISTER_PBUF_RING,
        SyncCancel = IORING_REGISTER_SYNC_CANCEL,
        FileAllocRange = IORING_REGISTER_FILE_ALLOC_RANGE,
    }
}

// The header defines the IOSQE_* masks as shifts of enum values, which
// bindgen cannot evaluate, so they are built here from the `_BIT` values.

/// SQE flags (`IOSQE_*`) that operations may carry, for
/// [`URingAllowlist::allow_sqe_flags`] and
/// [`URingContext::add_nop_with_flags`](crate::URingContext::add_nop_with_flags).
///
/// Only flags that cannot break the context's bookkeeping are offered:
/// not `IOSQE_CQE_SKIP_SUCCESS` (an operation would never complete), nor
/// `IOSQE_FIXED_FILE` or `IOSQE_BUFFER_SELECT` (nothing is registered), nor
/// `IOSQE_IO_DRAIN`, which holds back every later SQE, including the
/// cancellations drop relies on, until everything before it has completed.
/// `allow_sqe_flags` takes any `u8`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SqeFlags(u8);

impl SqeFlags {
    /// No flags.
    pub const NONE: SqeFlags = SqeFlags(0);
    /// `IOSQE_IO_LINK`: start the next SQE only after this one succeeded.
    pub const LINK: SqeFlags = SqeFlags(1 << IOSQE_IO_LINK_BIT);
    /// `IOSQE_IO_HARDLINK`: like `LINK`, whatever this one's result.
    pub const HARDLINK: SqeFlags = SqeFlags(1 << IOSQE_IO_HARDLINK_BIT);
    /// `IOSQE_ASYNC`: always run from a kernel worker thread.
    pub const ASYNC: SqeFlags = SqeFlags(1 << IOSQE_ASYNC_BIT);

    /// The raw `IOSQE_*` bits.
    pub const fn bits(self) -> u8 {
        self.0
    }
}

impl std::ops::BitOr for SqeFlags {
    type Output = SqeFlags;
    fn bitor(self, rhs: SqeFlags) -> SqeFlags {
        SqeFlags(self.0 | rhs.0)
    }
}

/// The operations, register calls and SQE flags a ring may ever use.
///
/// Passed to [`URingContext::new`](crate::URingContext::new), it is
/// registered with `IORING_REGISTER_RESTRICTIONS` while the ring is still
/// disabled, and the kernel enforces it from then on, for the life of the
/// ring, whatever the process does later:
///
/// - an operation outside the allowlist is still consumed, but completes
///   with `EACCES`;
/// - an SQE that carries a flag outside [`allow_sqe_flags`](Self::allow_sqe_flags),
///   or lacks one of [`require_sqe_flags`](Self::require_sqe_flags), completes
///   with `EACCES` (ringfence's own operations carry no flags, so a required
///   flag refuses every one of them);
/// - a register call outside the allowlist fails with `EACCES`.
///
/// **Register calls and Linux 7.0.** Before Linux 7.0, any restriction set
/// makes every later `io_uring_register` call on the ring fail with `EACCES`
/// unless its opcode was allowed with
/// [`allow_register_operation`](Self::allow_register_operation). From 7.0, a
/// set with only operation entries leaves register calls open. Do all
/// registration before the ring is enabled (see
/// [`URingContext::new_disabled`](crate::URingContext::new_disabled)), and
/// allow the register calls you need afterwards explicitly, to behave the
/// same on both.
///
/// Allow [`URingOperation::AsyncCancel`] if operations may still be in flight
/// when the context is dropped: drop cancels them with it, and without it
/// can only wait for them to finish.
///
/// ```
/// use ringfence::{URingAllowlist, URingOperation};
///
/// let mut allowlist = URingAllowlist::new();
/// allowlist
///     .allow_submit_operation(URingOperation::Readv)
///     .allow_submit_operation(URingOperation::Writev)
///     .allow_submit_operation(URingOperation::AsyncCancel);
/// assert!(allowlist.allows_submit_operation(URingOperation::Readv));
/// assert!(!allowlist.allows_submit_operation(URingOperation::Openat));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct URingAllowlist {
    submit_operations: BTreeSet<URingOperation>,
    register_operations: BTreeSet<RegisterOperation>,
    allowed_sqe_flags: u8,
    required_sqe_flags: u8,
}

impl URingAllowlist {
    /// An allowlist that allows nothing.
    pub fn new() -> Self {
        Self::default()
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

    /// Allows SQEs to carry the `IOSQE_*` bits in `flags` (added to those
    /// allowed before).
    pub fn allow_sqe_flags(&mut self, flags: u8) -> &mut Self {
        self.allowed_sqe_flags |= flags;
        self
    }

    /// Requires every SQE to carry the `IOSQE_*` bits in `flags` (added to
    /// those required before).
    pub fn require_sqe_flags(&mut self, flags: u8) -> &mut Self {
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

    /// Whether an SQE with these flags passes the flag restrictions.
    pub fn allows_sqe_flags(&self, flags: u8) -> bool {
        flags & self.required_sqe_flags == self.required_sqe_flags
            && flags & !(self.allowed_sqe_flags | self.required_sqe_flags) == 0
    }

    /// The restriction entries the kernel takes for this allowlist.
    pub(crate) fn restrictions(&self) -> Vec<io_uring_restriction> {
        let entry = |opcode: u32, value: u8| {
            // `Default` zeroes the reserved fields, as the kernel requires.
            io_uring_restriction {
                opcode: opcode as u16,
                // All three union members are the same byte.
                __bindgen_anon_1: io_uring_restriction__bindgen_ty_1 { sqe_op: value },
                ..Default::default()
            }
        };
        let ops = self
            .submit_operations
            .iter()
            .map(|op| entry(IORING_RESTRICTION_SQE_OP, *op as u8));
        let registers = self
            .register_operations
            .iter()
            .map(|op| entry(IORING_RESTRICTION_REGISTER_OP, *op as u8));
        let flags = [
            (IORING_RESTRICTION_SQE_FLAGS_ALLOWED, self.allowed_sqe_flags),
            (
                IORING_RESTRICTION_SQE_FLAGS_REQUIRED,
                self.required_sqe_flags,
            ),
        ]
        .into_iter()
        .filter(|(_, bits)| *bits != 0)
        .map(|(opcode, bits)| entry(opcode, bits));
        ops.chain(registers).chain(flags).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_follow_kernel_numbering() {
        assert_eq!(URingOperation::ALL.len(), IORING_OP_LAST as usize);
        for (i, op) in URingOperation::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i);
            assert_eq!(URingOperation::from_raw(i as u8), Some(*op));
        }
        assert_eq!(URingOperation::AsyncCancel as u32, IORING_OP_ASYNC_CANCEL);
        assert_eq!(URingOperation::from_raw(IORING_OP_LAST as u8), None);
        assert_eq!(RegisterOperation::ALL.len(), IORING_REGISTER_LAST as usize);
        assert_eq!(
            RegisterOperation::EnableRings as u32,
            IORING_REGISTER_ENABLE_RINGS
        );
    }

    #[test]
    fn restrictions_encode_every_entry() {
        let mut list = URingAllowlist::new();
        list.allow_submit_operation(URingOperation::Readv)
            .allow_register_operation(RegisterOperation::Eventfd)
            .allow_sqe_flags(SqeFlags::ASYNC.bits());
        let entries = list.restrictions();
        let decoded: Vec<(u32, u8)> = entries
            .iter()
            // SAFETY: every member of the union is a u8 at the same offset.
            .map(|r| (r.opcode.into(), unsafe { r.__bindgen_anon_1.sqe_op }))
            .collect();
        assert_eq!(
            decoded,
            [
                (IORING_RESTRICTION_SQE_OP, IORING_OP_READV as u8),
                (
                    IORING_RESTRICTION_REGISTER_OP,
                    IORING_REGISTER_EVENTFD as u8
                ),
                (IORING_RESTRICTION_SQE_FLAGS_ALLOWED, 1 << IOSQE_ASYNC_BIT),
            ]
        );
        assert!(URingAllowlist::new().restrictions().is_empty());
    }

    #[test]
    fn sqe_flag_checks_match_the_kernel_rule() {
        let mut list = URingAllowlist::new();
        assert!(list.allows_sqe_flags(0));
        assert!(!list.allows_sqe_flags(SqeFlags::ASYNC.bits()));
        list.allow_sqe_flags(SqeFlags::ASYNC.bits());
        assert!(list.allows_sqe_flags(SqeFlags::ASYNC.bits()));
        list.require_sqe_flags(SqeFlags::HARDLINK.bits());
        assert!(!list.allows_sqe_flags(0));
        assert!(list.allows_sqe_flags((SqeFlags::HARDLINK | SqeFlags::ASYNC).bits()));
    }
}
