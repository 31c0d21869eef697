//! [`Readv`] and [`Writev`].

use std::pin::Pin;

use super::{KeepAlive, Operation, Prepared, Target};
use crate::abi::{Sqe, URingOperation, MAX_IOVECS};
use crate::iobuf::{IoBufMut, KernelIovecs};
use crate::{Error, Result};

/// A vectored read or write: the two differ only in opcode.
struct Vectored {
    iovecs: Pin<Box<[IoBufMut<'static>]>>,
    target: Target,
    offset: Option<u64>,
}

impl Vectored {
    /// Checks the iovec count and the offset, and encodes the SQE; the
    /// iovec array goes into the state kept alive until the completion.
    fn prepare<O: Operation>(self) -> Result<Prepared> {
        if self.iovecs.len() > MAX_IOVECS {
            return Err(Error::TooManyIovecs(self.iovecs.len()));
        }
        let offset = super::offset_or_current(self.offset)?;
        let iovecs = KernelIovecs::new(self.iovecs);
        let mut sqe = Sqe::new(O::OPCODE);
        self.target.fill(&mut sqe);
        sqe.set_offset(offset);
        // `IoBufMut` is `repr(transparent)` over `iovec`, and the array
        // stays put while the context keeps it.
        sqe.set_addr(iovecs.addr());
        sqe.set_len(iovecs.len() as u32);
        let keep_alive = KeepAlive {
            iovecs: Some(iovecs),
            ..KeepAlive::target(self.target)
        };
        Ok(Prepared::new::<O>(sqe, keep_alive))
    }
}

/// `IORING_OP_READV` (Linux 5.1): `preadv2(2)` into `iovecs`.
///
/// Completes with the number of bytes read (0 at end of file), or the
/// errno `preadv2` would give. At most [`MAX_IOVECS`](crate::MAX_IOVECS)
/// iovecs ([`Error::TooManyIovecs`] otherwise).
pub struct Readv(Vectored);

impl Readv {
    /// Reads from `target` into `iovecs`, at byte `offset`, or with `None`
    /// at the file's current position (which the read then advances).
    ///
    /// `offset` is absolute: above [`MAX_FILE_OFFSET`](crate::MAX_FILE_OFFSET)
    /// the add fails with [`Error::InvalidOffset`]. The iovecs' own
    /// contract ([`IoBufMut`]) keeps their memory valid for as long as the
    /// kernel may write it; the context keeps the array itself alive until
    /// the completion.
    pub fn new(
        iovecs: Pin<Box<[IoBufMut<'static>]>>,
        target: impl Into<Target>,
        offset: Option<u64>,
    ) -> Readv {
        Readv(Vectored {
            iovecs,
            target: target.into(),
            offset,
        })
    }
}

impl Operation for Readv {
    const OPCODE: URingOperation = URingOperation::Readv;
    const PINS_CALLER_MEMORY: bool = true;

    fn prepare(self) -> Result<Prepared> {
        self.0.prepare::<Self>()
    }
}

/// `IORING_OP_WRITEV` (Linux 5.1): `pwritev2(2)` from `iovecs`.
///
/// Completes with the number of bytes written, or the errno `pwritev2`
/// would give. At most [`MAX_IOVECS`](crate::MAX_IOVECS) iovecs.
pub struct Writev(Vectored);

impl Writev {
    /// Writes `iovecs` to `target` at byte `offset`, or with `None` at the
    /// file's current position (which the write then advances). The rules
    /// of [`Readv::new`] apply.
    pub fn new(
        iovecs: Pin<Box<[IoBufMut<'static>]>>,
        target: impl Into<Target>,
        offset: Option<u64>,
    ) -> Writev {
        Writev(Vectored {
            iovecs,
            target: target.into(),
            offset,
        })
    }
}

impl Operation for Writev {
    const OPCODE: URingOperation = URingOperation::Writev;
    const PINS_CALLER_MEMORY: bool = true;

    fn prepare(self) -> Result<Prepared> {
        self.0.prepare::<Self>()
    }
}

impl std::fmt::Debug for Readv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.debug("Readv", f)
    }
}

impl std::fmt::Debug for Writev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.debug("Writev", f)
    }
}

impl Vectored {
    fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("iovecs", &self.iovecs.len())
            .field("target", &self.target)
            .field("offset", &self.offset)
            .finish()
    }
}

/// Turns raw iovecs into the pinned array [`Readv`] and [`Writev`] take
/// (which check the count when prepared).
///
/// # Safety
///
/// Each iovec must describe memory that stays valid, and is not accessed
/// through any other pointer, for as long as the kernel may use it, as
/// [`IoBufMut::from_raw_parts`] requires: until the operation it goes to
/// has completed and its completion has been returned.
pub(crate) unsafe fn pin_raw_iovecs(
    iovecs: impl Iterator<Item = libc::iovec>,
) -> Pin<Box<[IoBufMut<'static>]>> {
    iovecs
        // SAFETY: forwarded from the caller, iovec by iovec.
        .map(|iov| unsafe { IoBufMut::from_raw_parts(iov.iov_base.cast(), iov.iov_len) })
        .collect::<Box<[_]>>()
        .into()
}
