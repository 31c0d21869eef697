//! One-buffer I/O and hints on a file's range: [`Read`], [`Write`],
//! [`SyncFileRange`] and [`Fadvise`].

use super::{KeepAlive, Operation, Prepared, Target};
use crate::abi::{Sqe, SyncFileRangeFlags, URingOperation};
use crate::iobuf::IoBufMut;
use crate::{Error, Result};

/// `len` as the SQE's 32-bit `len` field carries it, or
/// [`Error::LengthTooLong`].
fn sqe_len(len: u64) -> Result<u32> {
    u32::try_from(len).map_err(|_| Error::LengthTooLong(len))
}

/// A one-buffer read or write: the two differ only in opcode.
#[derive(Debug)]
struct OneBuffer {
    buf: IoBufMut<'static>,
    target: Target,
    offset: Option<u64>,
}

impl OneBuffer {
    fn prepare<O: Operation>(self) -> Result<Prepared> {
        let len = sqe_len(self.buf.len() as u64)?;
        let offset = super::offset_or_current(self.offset)?;
        let mut sqe = Sqe::new(O::OPCODE);
        self.target.fill(&mut sqe);
        sqe.set_offset(offset);
        // The cast exposes the pointer's provenance, which a simulated
        // kernel needs to turn the address back into a pointer. The memory
        // stays valid by `IoBufMut`'s contract; nothing of ours to keep.
        sqe.set_addr(self.buf.as_ptr() as usize as u64);
        sqe.set_len(len);
        Ok(Prepared::new::<O>(sqe, KeepAlive::target(self.target)))
    }
}

/// `IORING_OP_READ` (Linux 5.6, `io_uring_enter(2)`): `pread(2)` into one
/// buffer, without the iovec array [`Readv`](super::Readv) needs.
///
/// Completes with the number of bytes read (0 at end of file; fewer than
/// asked is not an error), or the errno `pread` would give (`EBADF`,
/// `EINVAL`, `EISDIR`, `EFAULT`...).
///
/// ```
/// use std::os::unix::fs::FileExt;
/// use std::sync::Arc;
/// use ringfence::op::Read;
/// use ringfence::{IoBufMut, URingContext};
///
/// let file = Arc::new(tempfile::tempfile()?);
/// file.write_all_at(b"hello", 0)?;
/// let buf: &'static mut [u8] = Box::leak(vec![0u8; 5].into_boxed_slice());
/// let ring = URingContext::new(4, None)?;
/// ring.add(Read::new(IoBufMut::new(buf), file, Some(0)), 1)?;
/// let (user_data, result) = ring.wait()?.next().expect("one completion");
/// assert_eq!((user_data, result?), (1, 5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Read(OneBuffer);

impl Read {
    /// Reads from `target` into `buf`, at byte `offset`, or with `None` at
    /// the file's current position (which the read then advances; a pipe
    /// or socket needs `None`).
    ///
    /// The add fails with [`Error::InvalidOffset`] for an `offset` above
    /// [`MAX_FILE_OFFSET`](crate::MAX_FILE_OFFSET), and with
    /// [`Error::LengthTooLong`] for a buffer above `u32::MAX` bytes (the
    /// SQE's length is 32 bits). `buf`'s own contract ([`IoBufMut`]) keeps
    /// its memory valid for as long as the kernel may write it.
    pub fn new(buf: IoBufMut<'static>, target: impl Into<Target>, offset: Option<u64>) -> Read {
        Read(OneBuffer {
            buf,
            target: target.into(),
            offset,
        })
    }
}

impl Operation for Read {
    const OPCODE: URingOperation = URingOperation::Read;
    const PINS_CALLER_MEMORY: bool = true;

    fn prepare(self) -> Result<Prepared> {
        self.0.prepare::<Self>()
    }
}

/// `IORING_OP_WRITE` (Linux 5.6, `io_uring_enter(2)`): `pwrite(2)` from
/// one buffer.
///
/// Completes with the number of bytes written (a short write is not an
/// error), or the errno `pwrite` would give (`EBADF`, `EFBIG`, `ENOSPC`,
/// `EPIPE`...). On a file opened with `O_APPEND` the kernel writes at the
/// end whatever the offset.
#[derive(Debug)]
pub struct Write(OneBuffer);

impl Write {
    /// Writes `buf` to `target` at byte `offset`, or with `None` at the
    /// file's current position (which the write then advances). The rules
    /// of [`Read::new`] apply; the kernel only reads `buf`.
    pub fn new(buf: IoBufMut<'static>, target: impl Into<Target>, offset: Option<u64>) -> Write {
        Write(OneBuffer {
            buf,
            target: target.into(),
            offset,
        })
    }
}

impl Operation for Write {
    const OPCODE: URingOperation = URingOperation::Write;
    const PINS_CALLER_MEMORY: bool = true;

    fn prepare(self) -> Result<Prepared> {
        self.0.prepare::<Self>()
    }
}

/// `IORING_OP_SYNC_FILE_RANGE` (Linux 5.2, `io_uring_enter(2)`):
/// `sync_file_range(2)`. Completes with 0, or its errno (`EINVAL` for an
/// unknown flag, `ESPIPE` on a pipe, `EIO`).
///
/// It writes back data only, never metadata or the disk's cache: it makes
/// nothing durable. Use [`Fsync`](super::Fsync) for that.
#[derive(Debug)]
pub struct SyncFileRange {
    target: Target,
    offset: u64,
    len: u64,
    flags: SyncFileRangeFlags,
}

impl SyncFileRange {
    /// Writes back `len` bytes of `target` from byte `offset` as `flags`
    /// say; a `len` of 0 means "to the end of the file".
    ///
    /// The kernel reads the length from the SQE's 32-bit `len`
    /// (`io_sfr_prep` in `io_uring/sync.c`): a `len` above `u32::MAX`
    /// fails the add with [`Error::LengthTooLong`] (split the range, or
    /// pass 0), an `offset` above [`MAX_FILE_OFFSET`](crate::MAX_FILE_OFFSET)
    /// with [`Error::InvalidOffset`].
    pub fn new(
        target: impl Into<Target>,
        offset: u64,
        len: u64,
        flags: SyncFileRangeFlags,
    ) -> SyncFileRange {
        SyncFileRange {
            target: target.into(),
            offset,
            len,
            flags,
        }
    }
}

impl Operation for SyncFileRange {
    const OPCODE: URingOperation = URingOperation::SyncFileRange;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let offset = super::file_offset(self.offset)?;
        let len = sqe_len(self.len)?;
        let mut sqe = Sqe::new(Self::OPCODE);
        self.target.fill(&mut sqe);
        sqe.set_offset(offset);
        sqe.set_len(len);
        // `sync_range_flags`.
        sqe.set_op_flags(self.flags.bits());
        Ok(Prepared::new::<Self>(sqe, KeepAlive::target(self.target)))
    }
}

/// `IORING_OP_FADVISE` (Linux 5.6, `io_uring_enter(2)`):
/// `posix_fadvise(2)`. Completes with 0, or its errno (`EINVAL` for an
/// unknown advice, `ESPIPE` on a pipe).
#[derive(Debug)]
pub struct Fadvise {
    target: Target,
    offset: u64,
    len: u64,
    advice: i32,
}

impl Fadvise {
    /// Advises the kernel how `len` bytes of `target` from byte `offset`
    /// will be used (`advice`: one of `libc::POSIX_FADV_*`); a `len` of 0
    /// means "to the end of the file".
    ///
    /// A `len` up to `u32::MAX` goes in the SQE's `len`, which every kernel
    /// with the opcode reads. A longer one goes in `addr`, which only Linux
    /// 6.11 and later read (patch "io_uring/advise: support 64-bit
    /// lengths"; `io_fadvise_prep` in `io_uring/advise.c` takes `addr` when
    /// it is not 0, else `len`): older kernels complete it with `EINVAL`.
    /// An `offset` above [`MAX_FILE_OFFSET`](crate::MAX_FILE_OFFSET) fails
    /// the add with [`Error::InvalidOffset`].
    pub fn new(target: impl Into<Target>, offset: u64, len: u64, advice: i32) -> Fadvise {
        Fadvise {
            target: target.into(),
            offset,
            len,
            advice,
        }
    }
}

impl Operation for Fadvise {
    const OPCODE: URingOperation = URingOperation::Fadvise;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let offset = super::file_offset(self.offset)?;
        let mut sqe = Sqe::new(Self::OPCODE);
        self.target.fill(&mut sqe);
        sqe.set_offset(offset);
        match u32::try_from(self.len) {
            Ok(len) => sqe.set_len(len),
            Err(_) => sqe.set_addr(self.len),
        }
        // `fadvise_advice`; the cast keeps the bits of a negative value,
        // which the kernel refuses.
        sqe.set_op_flags(self.advice as u32);
        Ok(Prepared::new::<Self>(sqe, KeepAlive::target(self.target)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(fd: i32) -> Target {
        Target::raw_for_crosvm_api(fd)
    }

    #[test]
    fn one_buffer_reads_and_writes_carry_the_buffer_itself() {
        let mut bytes = [0u8; 12];
        let ptr = bytes.as_mut_ptr() as u64;
        // SAFETY: the SQE is only inspected, never submitted.
        let buf = unsafe { IoBufMut::from_raw_parts(ptr as *mut u8, 12) };
        let sqe = Read::new(buf, raw(5), None).prepare().unwrap().sqe;
        assert_eq!(sqe.opcode(), URingOperation::Read as u8);
        assert_eq!((sqe.fd(), sqe.addr(), sqe.len()), (5, ptr, 12));
        assert_eq!(sqe.offset(), u64::MAX, "None is the current position");
        // SAFETY: as above.
        let buf = unsafe { IoBufMut::from_raw_parts(ptr as *mut u8, 12) };
        let sqe = Write::new(buf, raw(5), Some(9)).prepare().unwrap().sqe;
        assert_eq!(
            (sqe.opcode(), sqe.offset()),
            (URingOperation::Write as u8, 9)
        );
    }

    #[test]
    fn lengths_past_32_bits_are_refused_or_moved() {
        let too_long = u64::from(u32::MAX) + 1;
        // SAFETY: never dereferenced: the add is refused before any SQE.
        let huge = unsafe { IoBufMut::from_raw_parts(std::ptr::null_mut(), too_long as usize) };
        assert!(matches!(
            Read::new(huge, raw(3), Some(0)).prepare(),
            Err(Error::LengthTooLong(n)) if n == too_long
        ));
        let sfr = SyncFileRange::new(raw(3), 0, too_long, SyncFileRangeFlags::WRITE);
        assert!(matches!(sfr.prepare(), Err(Error::LengthTooLong(_))));
        let sqe = SyncFileRange::new(raw(3), 7, 4096, SyncFileRangeFlags::all())
            .prepare()
            .unwrap()
            .sqe;
        assert_eq!((sqe.offset(), sqe.len(), sqe.op_flags()), (7, 4096, 7));
        // fadvise: 32-bit lengths in `len`, longer ones in `addr`.
        let short = Fadvise::new(raw(3), 1, 4096, libc::POSIX_FADV_DONTNEED)
            .prepare()
            .unwrap()
            .sqe;
        assert_eq!((short.len(), short.addr()), (4096, 0));
        assert_eq!(short.op_flags(), libc::POSIX_FADV_DONTNEED as u32);
        let long = Fadvise::new(raw(3), 1, too_long, 0).prepare().unwrap().sqe;
        assert_eq!((long.len(), long.addr()), (0, too_long));
    }
}
