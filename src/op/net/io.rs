//! [`Send`] and [`Recv`]: moving bytes of one buffer through a socket.

use crate::abi::{Sqe, URingOperation};
use crate::iobuf::IoBufMut;
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
