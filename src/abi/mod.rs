//! The typed kernel ABI: limits, the opcode and register-call enums, flag
//! types, and the ring entries ([`Sqe`], [`Cqe`], restriction entries).
//!
//! Everything above this module speaks these types; only `entries.rs` (and,
//! for the provided-buffer ring, `buf_ring.rs`) names bindgen's unions.

mod buf_ring;
mod entries;
mod flags;
mod opcode;
mod versions;

pub use buf_ring::MAX_BUF_RING_ENTRIES;
pub use flags::{
    FallocateMode, FeatureFlags, FsyncFlags, IosqeFlags, ResolveFlags, SpliceFlags, SqeFlags,
    SyncFileRangeFlags,
};
pub use opcode::{RegisterOperation, URingOperation};

pub(crate) use buf_ring::{
    buf_ring_tail, write_buf_entry, BufReg, BUF_RING_ENTRY_LEN, RECV_MULTISHOT,
};

pub(crate) use entries::{restriction, Cqe, Restriction, RestrictionKind, Sqe};
pub(crate) use flags::{CqeFlags, SetupFlags, CQE_BUFFER_SHIFT, SPLICE_F_FD_IN_FIXED};

/// The largest ring `io_uring_setup` accepts: the kernel's
/// `IORING_MAX_ENTRIES` (`io_uring/io_uring.h`).
pub const MAX_ENTRIES: usize = 32768;

/// The most iovecs one readv or writev takes: the kernel's `UIO_MAXIOV`
/// (`include/uapi/linux/uio.h`); more fail with `EINVAL`.
pub const MAX_IOVECS: usize = 1024;

/// The largest file offset an operation may name, in bytes: the kernel reads
/// the SQE's offset as a signed `loff_t`, so anything above `i64::MAX` is
/// negative to it, and -1 (`u64::MAX`) means "the file's current position".
pub const MAX_FILE_OFFSET: u64 = i64::MAX as u64;

/// The value an operation carries from [`URingContext::add_nop`] and
/// friends to its completion in [`URingContext::wait`]: the caller's label
/// for the operation. Operations that pin no caller memory may share one;
/// see [`URingContext::add`] for the rule.
///
/// [`URingContext::add_nop`]: crate::URingContext::add_nop
/// [`URingContext::wait`]: crate::URingContext::wait
/// [`URingContext::add`]: crate::URingContext::add
pub type UserData = u64;
