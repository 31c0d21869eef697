//! [`Send`], [`Recv`], [`Sendmsg`] and [`Recvmsg`]: moving bytes through a
//! socket.

use std::pin::Pin;

use super::addr::{SockAddr, Storage, STORAGE_LEN};
use crate::abi::{Sqe, URingOperation, MAX_IOVECS};
use crate::iobuf::{IoBufMut, KernelIovecs};
use crate::op::{KeepAlive, Operation, Prepared, Target};
use crate::{Error, Result};

/// A send or receive of one buffer: the two differ only in opcode.
#[derive(Debug)]
pub(super) struct OneBuffer {
    buf: IoBufMut<'static>,
    target: Target,
    msg_flags: libc::c_int,
}

impl OneBuffer {
    fn prepare<O: Operation>(self) -> Result<Prepared> {
        let len =
            u32::try_from(self.buf.len()).map_err(|_| Error::BufferTooLong(self.buf.len()))?;
        let mut sqe = Sqe::new(O::OPCODE);
        self.target.fill(&mut sqe);
        // The cast exposes the pointer's provenance, as `KernelIovecs::addr`
        // does.
        sqe.set_addr(self.buf.as_ptr() as u64);
        sqe.set_len(len);
        sqe.set_op_flags(self.msg_flags as u32);
        Ok(Prepared::new::<O>(sqe, KeepAlive::target(self.target)))
    }
}

/// `IORING_OP_SEND` (Linux 5.6, `io_uring_enter(2)`): `send(2)` of `buf`
/// on a connected socket.
///
/// Completes with the number of bytes sent (which a stream socket may make
/// fewer than `buf.len()`), or the errno `send(2)` gives: `ENOTSOCK` for a
/// file that is not a socket, `EPIPE` after the peer shut down (recent
/// kernels add `MSG_NOSIGNAL` to io_uring sends themselves; pass it on
/// older ones if `SIGPIPE` is not ignored, as Rust programs ignore it),
/// `ECONNRESET`, `EAGAIN` for a non-blocking socket (or `MSG_DONTWAIT`)
/// with no room. A buffer longer than
/// `u32::MAX` bytes fails the add with [`Error::BufferTooLong`].
///
/// It pins caller memory: the kernel reads `buf` until the completion, so
/// the operation shares its user_data with nothing in flight. The socket
/// may be blocking: the kernel waits for it without blocking the ring's
/// thread.
///
/// ```
/// use std::os::unix::net::UnixStream;
/// use std::sync::Arc;
/// use ringfence::op::{Recv, Send};
/// use ringfence::{IoBufMut, URingContext};
///
/// let ring = URingContext::new(8, None)?;
/// let (a, b) = UnixStream::pair()?;
/// let out: &'static mut [u8] = Box::leak(b"ping".to_vec().into_boxed_slice());
/// let into: &'static mut [u8] = Box::leak(vec![0u8; 16].into_boxed_slice());
/// ring.add(Send::new(IoBufMut::new(out), Arc::new(a)), 1)?;
/// ring.add(Recv::new(IoBufMut::new(into), Arc::new(b)), 2)?;
/// let mut done = Vec::new();
/// while done.len() < 2 {
///     done.extend(ring.wait()?.map(|(user_data, result)| (user_data, result.unwrap())));
/// }
/// done.sort();
/// assert_eq!(done, [(1, 4), (2, 4)]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Send(OneBuffer);

impl Send {
    /// Sends the bytes of `buf` on `target`, with no `MSG_*` flags.
    pub fn new(buf: IoBufMut<'static>, target: impl Into<Target>) -> Send {
        Send(OneBuffer {
            buf,
            target: target.into(),
            msg_flags: 0,
        })
    }

    /// The same, with `send(2)`'s `MSG_*` flags (`MSG_DONTWAIT`,
    /// `MSG_MORE`, `MSG_NOSIGNAL`, ...).
    pub fn msg_flags(self, msg_flags: libc::c_int) -> Send {
        Send(OneBuffer {
            msg_flags,
            ..self.0
        })
    }
}

impl Operation for Send {
    const OPCODE: URingOperation = URingOperation::Send;
    const PINS_CALLER_MEMORY: bool = true;

    fn prepare(self) -> Result<Prepared> {
        self.0.prepare::<Self>()
    }
}

/// `IORING_OP_RECV` (Linux 5.6, `io_uring_enter(2)`): `recv(2)` into `buf`.
///
/// Completes with the number of bytes received, 0 once the peer has shut
/// down its side (an orderly end of stream) or for an empty datagram, or
/// the errno `recv(2)` gives: `ENOTSOCK`, `ECONNRESET`, `EAGAIN` for a
/// non-blocking socket (or `MSG_DONTWAIT`) with nothing to read. A datagram
/// longer than `buf` is cut to it (pass `MSG_TRUNC` to get its real length
/// instead). Waits for data otherwise: keep a way to end the wait (a
/// shutdown of the socket, [`AsyncCancel`](crate::op::AsyncCancel), a
/// receive timeout on the socket). A buffer longer than `u32::MAX` bytes
/// fails the add with [`Error::BufferTooLong`].
///
/// It pins caller memory: the kernel writes `buf` until the completion.
/// [`Recv::multishot`] receives into the ring's provided buffers instead.
#[derive(Debug)]
pub struct Recv(pub(super) RecvKind);

/// A receive into one caller buffer, or a multishot one into provided
/// buffers.
#[derive(Debug)]
pub(super) enum RecvKind {
    One(OneBuffer),
    Multishot(super::recv_multi::Multishot),
}

impl Recv {
    /// Receives into `buf` from `target`, with no `MSG_*` flags.
    pub fn new(buf: IoBufMut<'static>, target: impl Into<Target>) -> Recv {
        Recv(RecvKind::One(OneBuffer {
            buf,
            target: target.into(),
            msg_flags: 0,
        }))
    }

    /// The same, with `recv(2)`'s `MSG_*` flags (`MSG_WAITALL`, `MSG_PEEK`,
    /// `MSG_TRUNC`, `MSG_DONTWAIT`, ...).
    pub fn msg_flags(self, msg_flags: libc::c_int) -> Recv {
        Recv(match self.0 {
            RecvKind::One(one) => RecvKind::One(OneBuffer { msg_flags, ..one }),
            RecvKind::Multishot(multi) => RecvKind::Multishot(multi.msg_flags(msg_flags)),
        })
    }
}

impl Operation for Recv {
    const OPCODE: URingOperation = URingOperation::Recv;
    /// True for [`Recv::new`]; [`Recv::multishot`] writes only the
    /// context's provided buffers, and its prepared form says it pins none.
    const PINS_CALLER_MEMORY: bool = true;

    fn prepare(self) -> Result<Prepared> {
        match self.0 {
            RecvKind::One(one) => one.prepare::<Self>(),
            RecvKind::Multishot(multi) => multi.prepare(),
        }
    }
}

/// The `msghdr` a sendmsg or recvmsg points the kernel at, and the address
/// it names, in one heap block the operation owns: the SQE points into it,
/// and `msg_name` may point at `addr`.
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
        let mut header = Box::new(MsgHeader {
            msghdr,
            addr: Storage([0; STORAGE_LEN]),
        });
        let (name, name_len) = match name {
            Name::None => (std::ptr::null_mut(), 0),
            Name::Own(addr) => {
                header.addr = *addr.storage();
                (header.addr.0.as_mut_ptr(), addr.len())
            }
            Name::Caller(buf) => (buf.as_ptr(), buf.len().min(STORAGE_LEN) as u32),
        };
        header.msghdr.msg_name = name.cast();
        header.msghdr.msg_namelen = name_len;
        header.msghdr.msg_iov = iovecs.addr() as usize as *mut libc::iovec;
        header.msghdr.msg_iovlen = iovecs.len() as _;
        let mut sqe = Sqe::new(O::OPCODE);
        self.target.fill(&mut sqe);
        // The header is boxed: moving the box into the `KeepAlive` leaves
        // it where this address says.
        sqe.set_addr(&header.msghdr as *const libc::msghdr as u64);
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
/// for [`Send`]. At most [`MAX_IOVECS`](crate::MAX_IOVECS) iovecs
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
/// Completes as [`Recv`] does: the number of bytes received (0 at the end
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
