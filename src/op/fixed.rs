//! [`ReadFixed`] and [`WriteFixed`]: reads and writes through a registered
//! buffer; [`ReadvFixed`] and [`WritevFixed`], their vectored forms.

use std::ops::Range;
use std::ptr::NonNull;

use super::{KeepAlive, KernelMemory, Operation, Prepared, Target};
use crate::abi::{Sqe, URingOperation, MAX_IOVECS};
use crate::{Error, Result};

/// One buffer in a ring's registered buffer table: its index, where it is
/// and how long. [`URingContext::registered_buffer`](crate::URingContext::registered_buffer) hands them out;
/// [`ReadFixed`] and [`WriteFixed`] take one.
///
/// It is an address, not a borrow: the memory belongs to the context and
/// is valid until the context is dropped. Reading or writing it
/// ([`as_ptr`](Self::as_ptr)) is `unsafe` and yours to keep sound: not
/// while a fixed read or write on an overlapping range is in flight (from
/// its add until the caller has its completion), since the kernel reads
/// or writes that range meanwhile, and not after the context is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisteredBuffer {
    index: u16,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a `RegisteredBuffer` is an index and an address; it gives no
// access to the memory without `unsafe` code of the caller's.
unsafe impl Send for RegisteredBuffer {}
// SAFETY: as above.
unsafe impl Sync for RegisteredBuffer {}

impl RegisteredBuffer {
    /// A handle naming buffer `index` at `memory`, for memory registered
    /// some other way (or for tests). Safe: the kernel checks each fixed
    /// operation's range against the buffer really registered at `index`
    /// and fails it with `EFAULT` outside it (`io_import_fixed`,
    /// `io_uring/rsrc.c`), so a wrong handle cannot make it touch other
    /// memory.
    pub fn from_raw_parts(index: u16, memory: NonNull<[u8]>) -> RegisteredBuffer {
        RegisteredBuffer {
            index,
            base: memory.cast(),
            len: memory.len(),
        }
    }

    /// Its index in the ring's registered buffer table (the SQE's
    /// `buf_index`).
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Its length, in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is zero bytes long.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer's memory. Dereferencing it is the caller's `unsafe`: see
    /// the type's docs for when that is sound.
    pub fn as_ptr(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.base, self.len)
    }
}

/// A read or write through a registered buffer: the two differ only in
/// opcode.
#[derive(Debug)]
struct Fixed {
    target: Target,
    index: u16,
    addr: u64,
    len: u32,
    offset: u64,
}

impl Fixed {
    fn new(
        target: Target,
        buffer: RegisteredBuffer,
        range: Range<usize>,
        offset: Option<u64>,
    ) -> Result<Fixed> {
        let bad_range = || Error::InvalidBufferRange {
            start: range.start,
            end: range.end,
        };
        let len = range.end.checked_sub(range.start).ok_or_else(bad_range)?;
        let len = u32::try_from(len).map_err(|_| bad_range())?;
        let offset = super::offset_or_current(offset)?;
        // The address, not a pointer: the kernel checks it against the
        // buffer registered at `index`, so it need not be in bounds here.
        let base = buffer.as_ptr().cast::<u8>().as_ptr() as u64;
        Ok(Fixed {
            target,
            index: buffer.index(),
            addr: base.wrapping_add(range.start as u64),
            len,
            offset,
        })
    }

    fn prepare<O: Operation>(self) -> Result<Prepared> {
        let mut sqe = Sqe::new(O::OPCODE);
        self.target.fill(&mut sqe);
        sqe.set_offset(self.offset);
        sqe.set_addr(self.addr);
        sqe.set_len(self.len);
        sqe.set_buf_index(self.index);
        Ok(Prepared::new::<O>(sqe, KeepAlive::target(self.target)))
    }
}

/// `IORING_OP_READ_FIXED` (Linux 5.1, `io_uring_enter(2)`): `pread(2)` into
/// a range of a registered buffer
/// ([`URingBuilder::buffers`](crate::URingBuilder::buffers)).
///
/// Completes with the number of bytes read (0 at end of file), or the
/// errno `pread` would give; `EFAULT` when the range is not inside the
/// buffer registered at the handle's index (the kernel checks it:
/// `io_import_fixed`, `io_uring/rsrc.c`), so no range can reach other
/// memory.
///
/// Safe to build and add: the buffer's memory belongs to the context, and
/// Rust code reaches it only through the raw pointer of
/// [`RegisteredBuffer::as_ptr`]. What is `unsafe` is reading that range
/// through it before this operation's completion has been returned (the
/// kernel writes it meanwhile): see [`RegisteredBuffer`].
#[derive(Debug)]
pub struct ReadFixed(Fixed);

impl ReadFixed {
    /// Reads `range` bytes (offsets into `buffer`) from `target` at byte
    /// `offset`, or with `None` at the file's current position.
    ///
    /// Fails with [`Error::InvalidBufferRange`] for a range that ends
    /// before it starts or is 4 GiB or longer, and with
    /// [`Error::InvalidOffset`] past [`MAX_FILE_OFFSET`](crate::MAX_FILE_OFFSET).
    pub fn new(
        target: impl Into<Target>,
        buffer: RegisteredBuffer,
        range: Range<usize>,
        offset: Option<u64>,
    ) -> Result<ReadFixed> {
        Fixed::new(target.into(), buffer, range, offset).map(ReadFixed)
    }
}

impl Operation for ReadFixed {
    const OPCODE: URingOperation = URingOperation::ReadFixed;
    // Its completion says when the range may be read again: it must be
    // told apart from any other's.
    const PINS_CALLER_MEMORY: bool = true;

    fn prepare(self) -> Result<Prepared> {
        self.0.prepare::<Self>()
    }
}

/// `IORING_OP_WRITE_FIXED` (Linux 5.1, `io_uring_enter(2)`): `pwrite(2)`
/// from a range of a registered buffer. Completes with the number of bytes
/// written, or the errno `pwrite` would give; `EFAULT` as for
/// [`ReadFixed`]. Writing that range through
/// [`RegisteredBuffer::as_ptr`] before its completion has been returned is
/// unsound (the kernel reads it meanwhile).
#[derive(Debug)]
pub struct WriteFixed(Fixed);

impl WriteFixed {
    /// Writes `range` bytes (offsets into `buffer`) to `target` at byte
    /// `offset`, or with `None` at the file's current position. Fails as
    /// [`ReadFixed::new`] does.
    pub fn new(
        target: impl Into<Target>,
        buffer: RegisteredBuffer,
        range: Range<usize>,
        offset: Option<u64>,
    ) -> Result<WriteFixed> {
        Fixed::new(target.into(), buffer, range, offset).map(WriteFixed)
    }
}

impl Operation for WriteFixed {
    const OPCODE: URingOperation = URingOperation::WriteFixed;
    const PINS_CALLER_MEMORY: bool = true;

    fn prepare(self) -> Result<Prepared> {
        self.0.prepare::<Self>()
    }
}

/// One iovec of a vectored fixed operation, laid out as the kernel's
/// `struct iovec`: an address it checks against the registered buffer,
/// never dereferenced by Rust code, so a plain integer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct FixedIovec {
    base: usize,
    len: usize,
}

const _: () = assert!(std::mem::size_of::<FixedIovec>() == std::mem::size_of::<libc::iovec>());

/// A vectored read or write through one registered buffer: iovecs that
/// each name a range of it, and the buffer's index.
#[derive(Debug)]
struct VectoredFixed {
    target: Target,
    index: u16,
    iovecs: Vec<FixedIovec>,
    offset: Option<u64>,
}

impl VectoredFixed {
    fn new(
        target: Target,
        buffer: RegisteredBuffer,
        ranges: &[Range<usize>],
        offset: Option<u64>,
    ) -> Result<VectoredFixed> {
        if ranges.len() > MAX_IOVECS {
            return Err(Error::TooManyIovecs(ranges.len()));
        }
        let base = buffer.as_ptr().cast::<u8>().as_ptr() as usize;
        let iovecs = ranges
            .iter()
            .map(|range| match range.end.checked_sub(range.start) {
                // The kernel fails a whole operation with EFAULT for one
                // empty range: refused here, where it says which.
                Some(len) if len > 0 => Ok(FixedIovec {
                    // The kernel checks it against the buffer: it need not
                    // be inside.
                    base: base.wrapping_add(range.start),
                    len,
                }),
                _ => Err(Error::InvalidBufferRange {
                    start: range.start,
                    end: range.end,
                }),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(VectoredFixed {
            target,
            index: buffer.index(),
            iovecs,
            offset,
        })
    }

    fn prepare<O: Operation>(self) -> Result<Prepared> {
        let offset = super::offset_or_current(self.offset)?;
        let mut sqe = Sqe::new(O::OPCODE);
        self.target.fill(&mut sqe);
        sqe.set_offset(offset);
        // The array's heap block stays where it is when the `Vec` moves
        // into the memory the context keeps until the completion.
        sqe.set_addr(self.iovecs.as_ptr() as u64);
        sqe.set_len(self.iovecs.len() as u32);
        sqe.set_buf_index(self.index);
        let keep_alive = KeepAlive {
            owned: Some(KernelMemory::new(self.iovecs).0),
            ..KeepAlive::target(self.target)
        };
        Ok(Prepared::new::<O>(sqe, keep_alive))
    }
}

/// `IORING_OP_READV_FIXED` (Linux 6.15): `preadv2(2)` into several ranges
/// of one registered buffer.
///
/// Completes with the number of bytes read (0 at end of file, and for no
/// ranges), or the errno `preadv2` would give; `EFAULT` when a range is not
/// inside the buffer registered at the handle's index
/// (`io_import_reg_vec`, `io_uring/rsrc.c`); `EINVAL` when the ranges add
/// up to more than `MAX_RW_COUNT` (2 GiB less a page), and on kernels
/// before 6.15 (see [`URingContext::probe`](crate::URingContext::probe)). Safe to build
/// and add for the reasons [`ReadFixed`] is; reading a range through
/// [`RegisteredBuffer::as_ptr`] before the completion is returned is the
/// caller's `unsafe` to avoid.
///
/// Source: kernel commit "io_uring/rw: implement vectored registered rw"
/// (Pavel Begunkov, merged for 6.15); `io_uring_prep_readv_fixed(3)`.
#[derive(Debug)]
pub struct ReadvFixed(VectoredFixed);

impl ReadvFixed {
    /// Reads from `target` at byte `offset` (or with `None` at the file's
    /// current position) into `ranges` of `buffer` (offsets into it), in
    /// order.
    ///
    /// Fails with [`Error::TooManyIovecs`] for more than
    /// [`MAX_IOVECS`](crate::MAX_IOVECS) ranges, with
    /// [`Error::InvalidBufferRange`] for a range that is empty or ends
    /// before it starts (the kernel would fail the whole operation with
    /// `EFAULT` for an empty one), and at add with [`Error::InvalidOffset`] past
    /// [`MAX_FILE_OFFSET`](crate::MAX_FILE_OFFSET).
    pub fn new(
        target: impl Into<Target>,
        buffer: RegisteredBuffer,
        ranges: &[Range<usize>],
        offset: Option<u64>,
    ) -> Result<ReadvFixed> {
        VectoredFixed::new(target.into(), buffer, ranges, offset).map(ReadvFixed)
    }
}

impl Operation for ReadvFixed {
    const OPCODE: URingOperation = URingOperation::ReadvFixed;
    const PINS_CALLER_MEMORY: bool = true;

    fn prepare(self) -> Result<Prepared> {
        self.0.prepare::<Self>()
    }
}

/// `IORING_OP_WRITEV_FIXED` (Linux 6.15): `pwritev2(2)` from several
/// ranges of one registered buffer. Completes with the number of bytes
/// written, or the errno `pwritev2` would give; `EFAULT` and `EINVAL` as
/// for [`ReadvFixed`]. Writing a range through
/// [`RegisteredBuffer::as_ptr`] before the completion is returned is
/// unsound (the kernel reads it meanwhile).
#[derive(Debug)]
pub struct WritevFixed(VectoredFixed);

impl WritevFixed {
    /// Writes `ranges` of `buffer` (offsets into it), in order, to `target`
    /// at byte `offset`, or with `None` at the file's current position.
    /// Fails as [`ReadvFixed::new`] does.
    pub fn new(
        target: impl Into<Target>,
        buffer: RegisteredBuffer,
        ranges: &[Range<usize>],
        offset: Option<u64>,
    ) -> Result<WritevFixed> {
        VectoredFixed::new(target.into(), buffer, ranges, offset).map(WritevFixed)
    }
}

impl Operation for WritevFixed {
    const OPCODE: URingOperation = URingOperation::WritevFixed;
    const PINS_CALLER_MEMORY: bool = true;

    fn prepare(self) -> Result<Prepared> {
        self.0.prepare::<Self>()
    }
}
