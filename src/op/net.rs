//! Socket operations: [`Send`], [`Recv`], [`Sendmsg`], [`Recvmsg`],
//! [`Accept`], [`Connect`], [`Shutdown`] and [`Socket`], and the
//! [`SockAddr`] that [`Connect`] and [`Sendmsg`] name a peer with.
//!
//! Each is the socket call of the same name, run by the kernel: it
//! completes with what the call returns (a byte count, a new descriptor,
//! 0), or with the errno the call would give. The socket may be blocking:
//! the kernel waits for readiness itself (on a poll from Linux 5.7, on a
//! worker thread before), so the ring's thread never blocks.
//!
//! [`Send`] shows a round trip.
//!
//! Control messages (`SCM_RIGHTS`, `SCM_CREDENTIALS`, ancillary data of any
//! kind) are not supported: [`Sendmsg`] and [`Recvmsg`] send a `msghdr`
//! without a control buffer.

mod addr;
mod conn;
mod io;
mod msg;
mod recv_multi;
#[cfg(test)]
mod tests;

pub use addr::SockAddr;
pub use conn::{Accept, Connect, Shutdown, Socket};
pub use io::{Recv, Send};
pub use msg::{Recvmsg, Sendmsg};
pub use recv_multi::BufferGroup;
pub(crate) use recv_multi::CompletedBuffers;

use bitflags::bitflags;

bitflags! {
    /// Flags of the descriptor [`Accept`] or [`Socket`] creates: the
    /// `SOCK_*` flags of `accept4(2)` and `socket(2)`.
    ///
    /// None by default, as in the kernel. `std` opens every descriptor
    /// with `CLOEXEC`; pass it to do the same. With a fixed slot
    /// ([`Accept::fixed_slot`], [`Socket::fixed_slot`]) the kernel refuses
    /// `CLOEXEC` with `EINVAL`: a registered file has no descriptor to
    /// close on exec.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SocketFlags: u32 {
        /// `SOCK_CLOEXEC`: close the descriptor on `execve`.
        const CLOEXEC = libc::SOCK_CLOEXEC as u32;
        /// `SOCK_NONBLOCK`: the new file is non-blocking (`O_NONBLOCK`).
        const NONBLOCK = libc::SOCK_NONBLOCK as u32;
    }
}

/// Where [`Accept`] or [`Socket`] puts the file it creates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum FileSlot {
    /// A new descriptor in the process's table.
    #[default]
    Descriptor,
    /// This slot of the ring's registered file table.
    Fixed(u32),
    /// A free slot of the registered file table, which the kernel picks
    /// (`IORING_FILE_INDEX_ALLOC`).
    Any,
}

impl FileSlot {
    /// The SQE's `file_index`: 0 for a descriptor, the slot plus one, or
    /// `IORING_FILE_INDEX_ALLOC` (`u32::MAX`).
    ///
    /// Slots `u32::MAX - 1` and `u32::MAX` have no `file_index` of their
    /// own (plus one is `IORING_FILE_INDEX_ALLOC`, or overflows): they are
    /// sent as slot `u32::MAX - 2`, which is past any table (the kernel
    /// allows at most 2^20 registered files, `IORING_MAX_FIXED_FILES`) and
    /// fails the same way, with `EINVAL`.
    fn file_index(self) -> u32 {
        match self {
            FileSlot::Descriptor => 0,
            FileSlot::Fixed(slot) => slot.saturating_add(1).min(u32::MAX - 1),
            FileSlot::Any => crate::bindings::IORING_FILE_INDEX_ALLOC as u32,
        }
    }
}
