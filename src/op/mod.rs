//! Operations as data: one definition per operation, saying which opcode
//! it is, how it fills its SQE, what the context must keep alive until its
//! completion, and whether it pins caller memory.
//!
//! The crosvm-named `add_*` methods of [`URingContext`](crate::URingContext)
//! are one line each over [`URingContext::add`](crate::URingContext::add),
//! which takes any of these values; [`OpBatch`] takes the same values.
//!
//! ```
//! use ringfence::op::{Fsync, Nop};
//! use ringfence::URingContext;
//!
//! let ring = URingContext::new(8, None)?;
//! ring.add(Nop::new(), 1)?;
//! let file = std::sync::Arc::new(tempfile::tempfile()?);
//! ring.add(Fsync::new(file), 2)?;
//! let mut done: Vec<u64> = Vec::new();
//! while done.len() < 2 {
//!     done.extend(ring.wait()?.map(|(user_data, result)| {
//!         result.expect("nop and fsync succeed");
//!         user_data
//!     }));
//! }
//! done.sort();
//! assert_eq!(done, [1, 2]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Socket operations ([`Send`], [`Recv`], [`Sendmsg`], [`Recvmsg`],
//! [`Accept`], [`Connect`], [`Shutdown`], [`Socket`]) run the socket call
//! of the same name; [`Connect`] and [`Sendmsg`] name peers with a
//! [`SockAddr`], and [`Accept`] and [`Socket`] can put what they create in
//! the registered file table. Control messages are out of scope.
//!
//! To add an operation, write one block in the family's file: a struct, its
//! constructor, and an [`Operation`] impl (with `prepare`), then add it to
//! the `operations!` list below; tests, fuzz targets and the simulated
//! kernel iterate [`ISSUABLE`].

mod batch;
mod cancel;
mod file;
mod fixed;
mod memory;
mod net;
mod nop;
mod path;
mod pipe;
mod poll;
mod ring;
mod rw;
mod sync;
mod target;
mod time;

pub(crate) use batch::check_chains;
pub use batch::OpBatch;
pub use cancel::AsyncCancel;
pub use file::{Fadvise, Read, SyncFileRange, Write};
pub use fixed::{ReadFixed, ReadvFixed, RegisteredBuffer, WriteFixed, WritevFixed};
pub(crate) use net::CompletedBuffers;
pub use net::{
    Accept, BufferGroup, Connect, Recv, Recvmsg, Send, Sendmsg, Shutdown, SockAddr, Socket,
    SocketFlags,
};
pub use nop::Nop;
pub use path::{Close, Openat, Openat2, Statx};
pub use pipe::{Splice, Tee};
pub use poll::{EventType, PollAdd, PollRemove};
pub use ring::{FilesUpdate, MsgRing};
pub use rw::{Readv, Writev};
pub use sync::{Fallocate, Fsync};
pub use target::Target;
pub use time::{Clock, LinkTimeout, Timeout, TimeoutRemove};

pub(crate) use memory::KernelMemory;
pub(crate) use rw::pin_raw_iovecs;
pub(crate) use target::SharedFd;

use crate::abi::{IosqeFlags, Sqe, URingOperation};
use crate::iobuf::KernelIovecs;
use crate::Result;

/// An operation the context can queue: a value that knows its opcode, how
/// to fill its SQE, and what must stay alive until its completion.
///
/// Implemented by the types in this module only (the trait is sealed).
pub trait Operation: std::marker::Send + sealed::Sealed {
    /// The operation's opcode: what an allowlist must allow for it to run.
    const OPCODE: URingOperation;

    /// Whether the SQE points at memory the caller must keep alive until
    /// the completion (iovec buffers). An operation that does may not share
    /// its user_data with any other operation in flight; others may share
    /// one with each other.
    const PINS_CALLER_MEMORY: bool;

    /// Checks the operation and builds its SQE (all but the user_data the
    /// context assigns).
    #[doc(hidden)]
    fn prepare(self) -> Result<Prepared>;
}

mod sealed {
    pub trait Sealed {}
}

/// `offset` if the kernel can take it as a file offset (its `loff_t` is
/// signed), else [`Error::InvalidOffset`](crate::Error::InvalidOffset).
fn file_offset(offset: u64) -> Result<u64> {
    if offset > crate::abi::MAX_FILE_OFFSET {
        return Err(crate::Error::InvalidOffset(offset));
    }
    Ok(offset)
}

/// An SQE's offset for a read or write at `offset`, or with `None` at the
/// file's current position (-1, `u64::MAX`, which the kernel reads as
/// that, and a pipe needs); checked as [`file_offset`] checks it.
fn offset_or_current(offset: Option<u64>) -> Result<u64> {
    offset.map_or(Ok(u64::MAX), file_offset)
}

/// What the context keeps alive for an operation until its completion has
/// been handed to the caller (or drop has drained the ring): each field is
/// held for its drop, or leaked by `leak_all` when the kernel may still
/// use it.
#[derive(Default)]
pub(crate) struct KeepAlive {
    /// The iovec array the kernel reads.
    pub(crate) iovecs: Option<KernelIovecs>,
    /// The file the operation works on, held open.
    pub(crate) file: Option<target::SharedFd>,
    /// Memory of the operation's own that the SQE points into (a
    /// timespec, a socket address, a path, a `msghdr`).
    pub(crate) owned: Option<KernelMemory>,
    /// The completed-buffer marks of the provided-buffer group the
    /// operation selects from: its completions with
    /// `IORING_CQE_F_BUFFER` mark the buffer they name. Bookkeeping the
    /// kernel never touches.
    pub(crate) completed: Option<std::sync::Arc<CompletedBuffers>>,
}

impl KeepAlive {
    /// Whether it keeps nothing alive (a nop's, a poll's on a raw fd).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        // Every field by name: a new one must be counted here, or an
        // operation keeping only it would be freed at once.
        let KeepAlive {
            iovecs,
            file,
            owned,
            completed,
        } = self;
        iovecs.is_none() && file.is_none() && owned.is_none() && completed.is_none()
    }

    /// What an operation on `target` and no caller memory keeps: the file,
    /// if the target holds it open.
    pub(crate) fn target(target: Target) -> KeepAlive {
        KeepAlive {
            file: target.keep_alive(),
            ..KeepAlive::default()
        }
    }
}

/// What the context does to resolve an operation at queue time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resolve {
    /// The SQE is complete.
    Nothing,
    /// The SQE targets the operations in flight with this label: the
    /// context puts their identities in `addr` (one SQE each).
    TargetLabel(u64),
}

/// An operation, checked and encoded: what [`Operation::prepare`] returns
/// and [`OpBatch`] holds.
#[doc(hidden)]
pub struct Prepared {
    pub(crate) sqe: Sqe,
    pub(crate) keep_alive: KeepAlive,
    pub(crate) pins_caller_memory: bool,
    pub(crate) resolve: Resolve,
}

impl Prepared {
    /// An operation whose SQE is `sqe` as it stands.
    pub(crate) fn new<O: Operation>(sqe: Sqe, keep_alive: KeepAlive) -> Prepared {
        debug_assert_eq!(sqe.opcode(), O::OPCODE as u8);
        Prepared {
            sqe,
            keep_alive,
            pins_caller_memory: O::PINS_CALLER_MEMORY,
            resolve: Resolve::Nothing,
        }
    }

    /// An operation on the operations in flight with `label` (a cancel or
    /// a poll removal): the context resolves its SQE at queue time.
    pub(crate) fn targeting_label<O: Operation>(label: u64) -> Prepared {
        Prepared {
            resolve: Resolve::TargetLabel(label),
            ..Prepared::new::<O>(Sqe::new(O::OPCODE), KeepAlive::default())
        }
    }

    /// The operation's opcode.
    pub(crate) fn opcode(&self) -> URingOperation {
        URingOperation::from_raw(self.sqe.opcode()).expect("an SQE built from a known opcode")
    }

    /// Whether the SQE joins the next one to it (`IO_LINK` or
    /// `IO_HARDLINK`).
    #[inline]
    pub(crate) fn links_next(&self) -> bool {
        self.sqe
            .flags()
            .intersects(IosqeFlags::IO_LINK | IosqeFlags::IO_HARDLINK)
    }

    /// The same, adding SQE `flags` the caller asked for.
    pub(crate) fn with_flags(mut self, flags: IosqeFlags) -> Prepared {
        let flags = self.sqe.flags() | flags;
        self.sqe.set_flags(flags);
        self
    }
}

/// What becomes of an operation on a ring whose allowlist requires
/// `IOSQE_FIXED_FILE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnderRequiredFlags {
    /// It names no file, and the kernel ignores the flag on it (measured
    /// on Linux 6.18: a nop, a cancellation, a poll removal, a timeout and
    /// a link timeout complete as without it): the context adds it, so it
    /// passes the restriction.
    Carries,
    /// The kernel refuses it with `IOSQE_FIXED_FILE` (openat, openat2,
    /// close and statx with `EBADF`; files_update and timeout_remove with
    /// `EINVAL`): it cannot run on such a ring.
    Refused,
    /// It names its file itself, through [`Target`]: a registered one
    /// passes, a plain descriptor is refused by the kernel (`EACCES`).
    AsIs,
}

impl UnderRequiredFlags {
    /// The case of `prepared`.
    pub(crate) fn of(prepared: &Prepared) -> UnderRequiredFlags {
        use URingOperation as Op;
        match prepared.opcode() {
            // A cancellation by descriptor names a file: with
            // `IOSQE_FIXED_FILE` the kernel would read the number as a
            // registered file's index (`io_uring/cancel.c`), so only the
            // registered form may get it.
            Op::AsyncCancel if cancel::names_plain_fd(&prepared.sqe) => UnderRequiredFlags::AsIs,
            Op::Nop | Op::AsyncCancel | Op::PollRemove | Op::Timeout | Op::LinkTimeout => {
                UnderRequiredFlags::Carries
            }
            Op::Openat
            | Op::Openat2
            | Op::Close
            | Op::Statx
            | Op::FilesUpdate
            | Op::TimeoutRemove => UnderRequiredFlags::Refused,
            _ => UnderRequiredFlags::AsIs,
        }
    }
}

/// Declares the list of operations the context can issue.
macro_rules! operations {
    ($($op:ident),* $(,)?) => {
        $(impl sealed::Sealed for $op {})*

        /// Every operation this crate can issue, in kernel numbering: the
        /// one list tests, fuzz targets and the simulated kernel iterate.
        pub const ISSUABLE: &[URingOperation] = &[$(<$op as Operation>::OPCODE,)*];
    };
}

operations!(
    Nop,
    Readv,
    Writev,
    Fsync,
    ReadFixed,
    WriteFixed,
    PollAdd,
    PollRemove,
    SyncFileRange,
    Sendmsg,
    Recvmsg,
    Timeout,
    TimeoutRemove,
    Accept,
    AsyncCancel,
    LinkTimeout,
    Connect,
    Fallocate,
    Openat,
    Close,
    FilesUpdate,
    Statx,
    Read,
    Write,
    Fadvise,
    Send,
    Recv,
    Openat2,
    Splice,
    Tee,
    Shutdown,
    MsgRing,
    Socket,
    ReadvFixed,
    WritevFixed,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issuable_list_is_in_kernel_order_without_repeats() {
        assert!(ISSUABLE.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(ISSUABLE.contains(&URingOperation::Nop));
        assert!(ISSUABLE.contains(&URingOperation::AsyncCancel));
    }
}
