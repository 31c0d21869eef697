//! [`Sendmsg`] and [`Recvmsg`]: moving bytes through a socket with a
//! `msghdr` (scatter-gather, and an address).

use std::pin::Pin;

use super::addr::{SockAddr, Storage, STORAGE_LEN};
use crate::abi::{Sqe, URingOperation, MAX_IOVECS};
use crate::iobuf::{IoBufMut, KernelIovecs};
use crate::op::{KeepAlive, KernelMemory, Operation, Prepared, Target};
use crate::{Error, Result};

/// The `msghdr` a sendmsg or recvmsg points the kernel at, and the address
/// it names, in one heap block the operation owns: the SQE points into it,
/// and `msg_name` may point at `addr`.
#[repr(C)]
struct MsgHeader {
    msghdr: libc::msghdr,
    addr: Storage,
}

// SAFETY: the raw pointers in `msghdr` point into this value's own
// allocation, into the iovec array the same operation keeps alive, or into
// caller memory an `IoBufMut<'static>` described; the value never reads
// through them (only the kernel does), so sending it to another thread, as
// the context does with what it keeps alive, shares nothing.
unsafe impl std::marker::Send for MsgHeader {}

/// A vectored send or receive, the `msghdr` built at prepare time.
struct Vectored {
    iovecs: Pin<Box<[IoBufMut<'static>]>>,
    target: Target,
    msg_flags: libc::c_int,
}

impl Vectored {
    /// Builds the `msghdr` over the iovecs and `name` (a pointer and
    /// length, or null and 0) and the SQE pointing at it.
    fn prepare<O: Operation>(self, name: Name) -> Result<Prepared> {
        if self.iovecs.len() > MAX_IOVECS {
            return Err(Error::TooManyIovecs(self.iovecs.len()));
        }
        let iovecs = KernelIovecs::new(self.iovecs);
        // SAFETY: `msghdr` is integers and raw pointers (and, on some
        // targets, integer padding), for which all-zero bytes are a valid
        // value: null pointers and zero lengths, no control buffer.
        let msghdr: libc::msghdr = unsafe { std::mem::zeroed() };
        let own_addr = match &name {
            Name::Own(addr) => *addr.storage(),
            _ => Storage([0; STORAGE_LEN]),
        };
        let (header, at) = KernelMemory::new(MsgHeader {
            msghdr,
            addr: own_addr,
        });
        let at = at.as_ptr();
        // SAFETY: `at` points at the header `header` owns, which nothing
        // else reaches until the SQE is published; the projections stay
        // inside it, and no reference to it is made.
        let own_name = unsafe { std::ptr::addr_of_mut!((*at).addr.0) }.cast::<u8>();
        let (name, name_len) = match name {
            Name::None => (std::ptr::null_mut(), 0),
            Name::Own(addr) => (own_name, addr.len()),
            Name::Caller(buf) => (buf.as_ptr(), buf.len().min(STORAGE_LEN) as u32),
        };
        // SAFETY: as above; these writes are the last Rust makes to it.
        unsafe {
            (*at).msghdr.msg_name = name.cast();
            (*at).msghdr.msg_namelen = name_len;
            (*at).msghdr.msg_iov = iovecs.addr() as usize as *mut libc::iovec;
            (*at).msghdr.msg_iovlen = iovecs.len() as _;
        }
        let mut sqe = Sqe::new(O::OPCODE);
        self.target.fill(&mut sqe);
        // `msghdr` is the header's first field; the cast exposes the
        // address's provenance.
        sqe.set_addr(at as usize as u64);
        // One message, as liburing's io_uring_prep_sendmsg and
        // io_uring_prep_recvmsg set it.
        sqe.set_len(1);
        sqe.set_op_flags(self.msg_flags as u32);
        let keep_alive = KeepAlive {
            iovecs: Some(iovecs),
            owned: Some(header),
            ..KeepAlive::target(self.target)
        };
        Ok(Prepared::new::<O>(sqe, keep_alive))
    }
}

/// What `msg_name` points at.
enum Name {
    None,
    /// A destination of the operation's own, copied into its header.
    Own(SockAddr),
    /// Caller memory the kernel writes a source address into.
    Caller(IoBufMut<'static>),
}

/// `IORING_OP_SENDMSG` (Linux 5.3, `io_uring_enter(2)`): `sendmsg(2)` of
/// `iovecs`, gathered in order, optionally to a destination address.
///
/// Completes with the number of bytes sent, or the errno `sendmsg(2)`
/// gives: `ENOTSOCK`, `EPIPE`, `EISCONN` for a destination on a connected
/// stream socket, `EDESTADDRREQ` for none on an unconnected datagram
/// socket, `EMSGSIZE` for a datagram too long for the socket, `EAGAIN` as
/// for [`Send`](super::Send). At most [`MAX_IOVECS`](crate::MAX_IOVECS) iovecs
/// ([`Error::TooManyIovecs`] otherwise). Control messages (`SCM_RIGHTS`,
/// any ancillary data) are out of scope: the `msghdr` has no control
/// buffer.
///
/// The `msghdr` and the destination are the operation's own memory, kept
/// until the completion; the iovecs pin caller memory.
pub struct Sendmsg {
    inner: Vectored,
    to: Option<SockAddr>,
}

impl Sendmsg {
    /// Sends `iovecs` on `target` (a connected socket), with no `MSG_*`
    /// flags.
    pub fn new(iovecs: Pin<Box<[IoBufMut<'static>]>>, target: impl Into<Target>) -> Sendmsg {
        Sendmsg {
            inner: Vectored {
                iovecs,
                target: target.into(),
                msg_flags: 0,
            },
            to: None,
        }
    }

    /// The same, to `addr` (`msg_name`): a datagram socket's destination.
    pub fn to(self, addr: impl Into<SockAddr>) -> Sendmsg {
        Sendmsg {
            to: Some(addr.into()),
            ..self
        }
    }

    /// The same, with `sendmsg(2)`'s `MSG_*` flags.
    pub fn msg_flags(mut self, msg_flags: libc::c_int) -> Sendmsg {
        self.inner.msg_flags = msg_flags;
        self
    }
}

impl Operation for Sendmsg {
    const OPCODE: URingOperation = URingOperation::Sendmsg;
    const PINS_CALLER_MEMORY: bool = true;

    fn prepare(self) -> Result<Prepared> {
        let name = self.to.map_or(Name::None, Name::Own);
        self.inner.prepare::<Self>(name)
    }
}

/// `IORING_OP_RECVMSG` (Linux 5.3, `io_uring_enter(2)`): `recvmsg(2)` into
/// `iovecs`, filled in order, optionally with the sender's address.
///
/// Completes as [`Recv`](super::Recv) does: the number of bytes received (0 at the end
/// of a stream), or the errno `recvmsg(2)` gives. At most
/// [`MAX_IOVECS`](crate::MAX_IOVECS) iovecs. Control messages are out of
/// scope, as for [`Sendmsg`]: ancillary data the sender attached is
/// dropped (`MSG_CTRUNC`, which the caller does not see).
///
/// What `recvmsg(2)` writes back into its `msghdr` (the address's length,
/// `msg_flags` such as `MSG_TRUNC`) goes to the operation's own `msghdr`,
/// which the caller never sees: a completion carries only a number. The
/// sender's address is returned only through caller memory, with
/// [`source_into`](Self::source_into); a truncated datagram shows only if
/// `MSG_TRUNC` is passed in [`msg_flags`](Self::msg_flags) (the result is
/// then the datagram's real length).
pub struct Recvmsg {
    inner: Vectored,
    source: Option<IoBufMut<'static>>,
}

impl Recvmsg {
    /// Receives into `iovecs` from `target`, with no `MSG_*` flags, not
    /// asking for the sender's address.
    pub fn new(iovecs: Pin<Box<[IoBufMut<'static>]>>, target: impl Into<Target>) -> Recvmsg {
        Recvmsg {
            inner: Vectored {
                iovecs,
                target: target.into(),
                msg_flags: 0,
            },
            source: None,
        }
    }

    /// The same, the kernel writing the sender's address into `buf`
    /// (`msg_name`): a `sockaddr_in`, `sockaddr_in6` or `sockaddr_un`, the
    /// family (`AF_*`, native endian) in its first two bytes, cut to
    /// `buf.len()` bytes (at most 128, `sizeof(struct sockaddr_storage)`,
    /// are used; 128 hold any family).
    ///
    /// The length the kernel wrote is not returned: zero `buf` first, and
    /// read the family to know the layout ([`SockAddr::decode_inet`] reads
    /// IPv4 and IPv6). A connected stream socket writes nothing. `buf` is
    /// caller memory the kernel writes until the completion, under the
    /// same contract as the iovecs ([`IoBufMut`]).
    pub fn source_into(self, buf: IoBufMut<'static>) -> Recvmsg {
        Recvmsg {
            source: Some(buf),
            ..self
        }
    }

    /// The same, with `recvmsg(2)`'s `MSG_*` flags (`MSG_WAITALL`,
    /// `MSG_PEEK`, `MSG_TRUNC`, `MSG_DONTWAIT`, ...).
    pub fn msg_flags(mut self, msg_flags: libc::c_int) -> Recvmsg {
        self.inner.msg_flags = msg_flags;
        self
    }
}

impl Operation for Recvmsg {
    const OPCODE: URingOperation = URingOperation::Recvmsg;
    const PINS_CALLER_MEMORY: bool = true;

    fn prepare(self) -> Result<Prepared> {
        let name = self.source.map_or(Name::None, Name::Caller);
        self.inner.prepare::<Self>(name)
    }
}

impl std::fmt::Debug for Vectored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vectored")
            .field("iovecs", &self.iovecs.len())
            .field("target", &self.target)
            .field("msg_flags", &self.msg_flags)
            .finish()
    }
}

impl std::fmt::Debug for Sendmsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sendmsg")
            .field("inner", &self.inner)
            .field("to", &self.to)
            .finish()
    }
}

impl std::fmt::Debug for Recvmsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recvmsg")
            .field("inner", &self.inner)
            .field("source", &self.source)
            .finish()
    }
}
