//! The operations the I/O types share: their owned-buffer plumbing, and
//! the socket operations.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::pin::Pin;

use ringfence::op::{self, SocketFlags, Target};
use ringfence::IoBufMut;

use crate::buf::{OwnedBuf, OwnedBufMut};
use crate::op::OpSpec;

/// A count as `usize`.
pub(crate) fn count(result: io::Result<u32>) -> io::Result<usize> {
    result.map(|count| count as usize)
}

/// An operation that owns nothing of the caller's and returns nothing; made
/// anew by `make` for each try (a ring out of room refuses the first).
pub(crate) struct Plain<F, K> {
    make: F,
    kernel: std::marker::PhantomData<fn() -> K>,
}

impl<F: FnMut() -> K + Send + 'static, K: op::Operation + 'static> Plain<F, K> {
    pub(crate) fn new(make: F) -> Plain<F, K> {
        Plain {
            make,
            kernel: std::marker::PhantomData,
        }
    }
}

impl<F: FnMut() -> K + Send + 'static, K: op::Operation + 'static> OpSpec for Plain<F, K> {
    type Kernel = K;
    type Output = io::Result<()>;

    unsafe fn kernel_op(&mut self) -> ringfence::Result<K> {
        Ok((self.make)())
    }

    fn finish(self, result: io::Result<u32>) -> io::Result<()> {
        result.map(drop)
    }
}

/// `buf`'s bytes for the kernel to fill.
///
/// # Safety
///
/// `buf` is not moved, touched or dropped until the kernel is done with the
/// operation the result is handed to ([`OpSpec::kernel_op`]'s contract).
pub(crate) unsafe fn fill<B: OwnedBufMut>(buf: &mut B) -> IoBufMut<'static> {
    let len = buf.bytes_total();
    // SAFETY: by `OwnedBufMut`'s contract the pointer is valid for `len`
    // bytes, and stays so while `buf` is neither moved nor touched, which
    // the caller promises until the kernel is done.
    unsafe { IoBufMut::from_raw_parts(buf.stable_mut_ptr(), len) }
}

/// `buf`'s initialised bytes, from `start`, for the kernel to read.
///
/// # Safety
///
/// As for [`fill`]. The kernel only reads through the result.
pub(crate) unsafe fn contents<B: OwnedBuf>(buf: &B, start: usize) -> IoBufMut<'static> {
    let (ptr, len) = crate::buf::tail(buf, start);
    // SAFETY: by `OwnedBuf`'s contract the bytes are valid for reads and
    // unchanged while `buf` lives untouched, which the caller promises
    // until the kernel is done; operations built from this only read.
    unsafe { IoBufMut::from_raw_parts(ptr.cast_mut(), len) }
}

/// `bufs`' buffers, to fill in turn.
///
/// # Safety
///
/// As for [`fill`], for every buffer.
pub(crate) unsafe fn fill_all<B: OwnedBufMut>(bufs: &mut [B]) -> Pin<Box<[IoBufMut<'static>]>> {
    // SAFETY: the caller's promise covers each buffer.
    bufs.iter_mut()
        .map(|buf| unsafe { fill(buf) })
        .collect::<Box<[_]>>()
        .into()
}

/// Records how much of each buffer a vectored read filled.
pub(crate) fn filled_all<B: OwnedBufMut>(bufs: &mut [B], mut count: usize) {
    for buf in bufs {
        let here = count.min(buf.bytes_total());
        // SAFETY: the kernel wrote `count` bytes across the buffers in
        // order, so the first `here` of this one.
        unsafe { buf.set_init(here) };
        count -= here;
    }
}

/// `IORING_OP_SEND` of `buf[from..]`.
pub(crate) struct SendBuf<B> {
    pub(crate) buf: B,
    pub(crate) from: usize,
    pub(crate) target: Target,
}

impl<B: OwnedBuf> OpSpec for SendBuf<B> {
    type Kernel = op::Send;
    type Output = (io::Result<usize>, B);

    unsafe fn kernel_op(&mut self) -> ringfence::Result<op::Send> {
        // SAFETY: forwarded from this function's contract.
        let buf = unsafe { contents(&self.buf, self.from) };
        // MSG_NOSIGNAL: a peer gone fails the send with EPIPE instead of
        // killing the process with SIGPIPE.
        Ok(op::Send::new(buf, self.target.clone()).msg_flags(libc::MSG_NOSIGNAL))
    }

    fn finish(self, result: io::Result<u32>) -> Self::Output {
        (count(result), self.buf)
    }
}

/// `IORING_OP_RECV` into `buf`.
pub(crate) struct RecvBuf<B> {
    pub(crate) buf: B,
    pub(crate) target: Target,
}

impl<B: OwnedBufMut> OpSpec for RecvBuf<B> {
    type Kernel = op::Recv;
    type Output = (io::Result<usize>, B);

    unsafe fn kernel_op(&mut self) -> ringfence::Result<op::Recv> {
        let len = self.buf.bytes_total();
        // SAFETY: by `OwnedBufMut`'s contract the pointer is valid for
        // `len` bytes while `self.buf` is untouched, which this function's
        // contract promises until the kernel is done.
        let buf = unsafe { ringfence::IoBufMut::from_raw_parts(self.buf.stable_mut_ptr(), len) };
        Ok(op::Recv::new(buf, self.target.clone()))
    }

    fn finish(mut self, result: io::Result<u32>) -> Self::Output {
        let result = count(result);
        if let Ok(count) = result {
            // SAFETY: the kernel wrote `count` bytes from the start.
            unsafe { self.buf.set_init(count) };
        }
        (result, self.buf)
    }
}

/// `IORING_OP_ACCEPT`: its result is a new descriptor.
pub(crate) struct Accept {
    pub(crate) target: Target,
}

impl Accept {
    fn take(result: io::Result<u32>) -> io::Result<OwnedFd> {
        // SAFETY: an accept's result is a descriptor the kernel just made
        // for this process, owned by no one else.
        result.map(|fd| unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

impl OpSpec for Accept {
    type Kernel = op::Accept;
    type Output = io::Result<OwnedFd>;

    unsafe fn kernel_op(&mut self) -> ringfence::Result<op::Accept> {
        Ok(op::Accept::new(self.target.clone()).flags(SocketFlags::CLOEXEC))
    }

    fn finish(self, result: io::Result<u32>) -> io::Result<OwnedFd> {
        Accept::take(result)
    }

    /// The future was dropped but the kernel had accepted: the connection
    /// is closed (the client sees it reset or ended).
    fn abandoned(self, result: io::Result<u32>) {
        drop(Accept::take(result));
    }
}
