//! [`File`]: positional reads and writes, vectored forms, fsync and
//! fallocate, each a future that owns its buffers.

use std::future::Future;
use std::io;

use ringfence::op::{self, Target};
use ringfence::{FallocateMode, IoBufMut};

use crate::buf::{OwnedBuf, OwnedBufMut};
use crate::fixed::{FixedBuf, ReadFixed, WriteFixed};
use crate::op::{Op, OpSpec};
use crate::spec::{contents, count, fill, fill_all, filled_all, Plain};
use crate::Driver;

/// A file whose I/O goes through a [`Driver`]'s ring.
///
/// Every method takes `&self` and returns a future that owns what the
/// kernel uses: several reads and writes may be in flight at once. A read
/// or write future gives its buffer back with the result,
/// `(io::Result<usize>, buffer)`, also on error. Dropping a future before
/// it completes cancels its operation; see the crate docs for what that
/// means for each.
///
/// ```
/// use ringfence_async::{Driver, File};
///
/// let driver = Driver::new(32)?;
/// let file = File::from_std(&driver, tempfile::tempfile()?);
/// futures::executor::block_on(async {
///     let (written, _) = file.writev_at(vec![b"ab".to_vec(), b"cd".to_vec()], 0).await;
///     assert_eq!(written?, 4);
///     file.fsync().await?;
///     let bufs = vec![Vec::with_capacity(1), Vec::with_capacity(8)];
///     let (read, bufs) = file.readv_at(bufs, 0).await;
///     assert_eq!(read?, 4);
///     assert_eq!(bufs, [b"a".to_vec(), b"bcd".to_vec()]);
///     Ok::<(), std::io::Error>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// Each future's `io::Result` is, besides the kernel's errno for the
/// operation (`EBADF`, `EINVAL`, `ENOSPC`...):
///
/// - `InvalidInput` for an offset above
///   [`MAX_FILE_OFFSET`](ringfence::MAX_FILE_OFFSET), a buffer over
///   `u32::MAX` bytes, or more than [`MAX_IOVECS`](ringfence::MAX_IOVECS)
///   buffers; the operation never reached the kernel;
/// - `PermissionDenied` carrying [`NotAllowed`](crate::NotAllowed), for an
///   operation the ring's allowlist does not allow;
/// - `ECANCELED` if the thread that turned a
///   [`ManualDriver`](crate::ManualDriver) for it exited meanwhile.
///
/// # As a stream
///
/// It is also a byte stream with one position, as `std::fs::File` is:
/// the futures-io [`AsyncRead`](futures_io::AsyncRead),
/// [`AsyncWrite`](futures_io::AsyncWrite) and
/// [`AsyncSeek`](futures_io::AsyncSeek) traits, over buffers of its own
/// (64 KiB each way; reads read ahead). The positional methods neither use
/// nor move that position. Bytes `poll_write` took and did not send yet
/// are lost if the `File` is dropped before `flush` or `close`.
pub struct File {
    pub(crate) driver: Driver,
    pub(crate) target: Target,
    /// The file, when made from one: for its size when seeking from the end.
    pub(crate) std: Option<std::sync::Arc<std::fs::File>>,
    pub(crate) cursor: crate::file_io::Cursor,
}

impl Clone for File {
    /// Another handle to the same file, for positional I/O from another
    /// task. Its stream position is its own, and starts at 0 (the stream
    /// traits keep their position in this value, not in the kernel's file
    /// offset).
    fn clone(&self) -> File {
        File {
            driver: self.driver.clone(),
            target: self.target.clone(),
            std: self.std.clone(),
            cursor: crate::file_io::Cursor::default(),
        }
    }
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File")
            .field("target", &self.target)
            .field("position", &self.cursor.position())
            .finish()
    }
}

impl File {
    /// Does its I/O through `driver`'s ring; the file stays open while any
    /// of its operations is in flight, whatever happens to this value.
    pub fn from_std(driver: &Driver, file: std::fs::File) -> File {
        let file = std::sync::Arc::new(file);
        let mut this = File::from_target(driver, std::sync::Arc::clone(&file));
        this.std = Some(file);
        this
    }

    /// Opens `path` read-only (with `std`'s blocking open).
    pub fn open(driver: &Driver, path: impl AsRef<std::path::Path>) -> io::Result<File> {
        Ok(File::from_std(driver, std::fs::File::open(path)?))
    }

    /// Creates or truncates `path` for writing (with `std`'s blocking
    /// open).
    pub fn create(driver: &Driver, path: impl AsRef<std::path::Path>) -> io::Result<File> {
        Ok(File::from_std(driver, std::fs::File::create(path)?))
    }

    /// Any [`Target`]: a file shared through an `Arc`, a registered file's
    /// index ([`Target::fixed`]), or a simulated kernel's file.
    pub fn from_target(driver: &Driver, target: impl Into<Target>) -> File {
        File {
            driver: driver.clone(),
            target: target.into(),
            std: None,
            cursor: crate::file_io::Cursor::default(),
        }
    }

    /// Reads into `buf` from byte `offset` (`IORING_OP_READ`, Linux 5.6):
    /// up to [`bytes_total`](OwnedBufMut::bytes_total) bytes, from the
    /// buffer's start. Returns the count (0 at end of file; fewer than asked
    /// is not an error) and the buffer, whose length a `Vec` then has.
    pub fn read_at<B: OwnedBufMut>(
        &self,
        buf: B,
        offset: u64,
    ) -> impl Future<Output = (io::Result<usize>, B)> + Send + Unpin + 'static {
        Op::new(
            &self.driver,
            ReadAt {
                buf,
                target: self.target.clone(),
                offset,
            },
        )
    }

    /// Writes the initialised bytes of `buf` at byte `offset`
    /// (`IORING_OP_WRITE`, Linux 5.6). Returns the count written (a short
    /// write is not an error) and the buffer.
    pub fn write_at<B: OwnedBuf>(
        &self,
        buf: B,
        offset: u64,
    ) -> impl Future<Output = (io::Result<usize>, B)> + Send + Unpin + 'static {
        Op::new(
            &self.driver,
            WriteAt {
                buf,
                from: 0,
                target: self.target.clone(),
                offset,
            },
        )
    }

    /// Reads into the buffers in turn, from byte `offset`
    /// (`IORING_OP_READV`, Linux 5.1; at most
    /// [`MAX_IOVECS`](ringfence::MAX_IOVECS) buffers). Returns the total
    /// count; each `Vec` then holds what landed in it.
    pub fn readv_at<B: OwnedBufMut>(
        &self,
        bufs: Vec<B>,
        offset: u64,
    ) -> impl Future<Output = (io::Result<usize>, Vec<B>)> + Send + Unpin + 'static {
        Op::new(
            &self.driver,
            ReadvAt {
                bufs,
                target: self.target.clone(),
                offset,
            },
        )
    }

    /// Writes the buffers in turn, from byte `offset` (`IORING_OP_WRITEV`,
    /// Linux 5.1; at most [`MAX_IOVECS`](ringfence::MAX_IOVECS) buffers).
    pub fn writev_at<B: OwnedBuf>(
        &self,
        bufs: Vec<B>,
        offset: u64,
    ) -> impl Future<Output = (io::Result<usize>, Vec<B>)> + Send + Unpin + 'static {
        Op::new(
            &self.driver,
            WritevAt {
                bufs,
                target: self.target.clone(),
                offset,
            },
        )
    }

    /// `fsync(2)` (`IORING_OP_FSYNC`, Linux 5.1).
    pub fn fsync(&self) -> impl Future<Output = io::Result<()>> + Send + Unpin + 'static {
        let target = self.target.clone();
        Op::new(
            &self.driver,
            Plain::new(move || op::Fsync::new(target.clone())),
        )
    }

    /// `fallocate(2)` of `len` bytes at `offset` (`IORING_OP_FALLOCATE`,
    /// Linux 5.6); `mode` as the syscall's (empty: allocate and extend).
    pub fn fallocate(
        &self,
        offset: u64,
        len: u64,
        mode: FallocateMode,
    ) -> impl Future<Output = io::Result<()>> + Send + Unpin + 'static {
        let target = self.target.clone();
        let make = move || op::Fallocate::new(target.clone(), offset, len, mode);
        Op::new(&self.driver, Plain::new(make))
    }

    /// Reads into the registered buffer `buf` from byte `offset`
    /// (`IORING_OP_READ_FIXED`, Linux 5.1): up to its capacity, from its
    /// start; its length is then the count read. Returns the count and
    /// the buffer. `buf` must come from this file's driver (another ring's
    /// fails with `EFAULT`).
    pub fn read_fixed(
        &self,
        buf: FixedBuf,
        offset: u64,
    ) -> impl Future<Output = (io::Result<usize>, FixedBuf)> + Send + Unpin + 'static {
        Op::new(
            &self.driver,
            ReadFixed {
                buf,
                target: self.target.clone(),
                offset,
            },
        )
    }

    /// Writes the first `buf.len()` bytes of the registered
    /// buffer `buf` at byte `offset` (`IORING_OP_WRITE_FIXED`, Linux 5.1).
    /// Returns the count written and the buffer.
    pub fn write_fixed(
        &self,
        buf: FixedBuf,
        offset: u64,
    ) -> impl Future<Output = (io::Result<usize>, FixedBuf)> + Send + Unpin + 'static {
        Op::new(
            &self.driver,
            WriteFixed {
                buf,
                target: self.target.clone(),
                offset,
            },
        )
    }

    /// The target its operations name.
    pub fn target(&self) -> &Target {
        &self.target
    }
}

pub(crate) struct ReadAt<B> {
    pub(crate) buf: B,
    pub(crate) target: Target,
    pub(crate) offset: u64,
}

impl<B: OwnedBufMut> OpSpec for ReadAt<B> {
    type Kernel = op::Read;
    type Output = (io::Result<usize>, B);

    unsafe fn kernel_op(&mut self) -> ringfence::Result<op::Read> {
        // SAFETY: forwarded from this function's contract.
        let buf = unsafe { fill(&mut self.buf) };
        Ok(op::Read::new(buf, self.target.clone(), Some(self.offset)))
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

/// Writes `buf[from..]` at `offset`.
pub(crate) struct WriteAt<B> {
    pub(crate) buf: B,
    pub(crate) from: usize,
    pub(crate) target: Target,
    pub(crate) offset: u64,
}

impl<B: OwnedBuf> OpSpec for WriteAt<B> {
    type Kernel = op::Write;
    type Output = (io::Result<usize>, B);

    unsafe fn kernel_op(&mut self) -> ringfence::Result<op::Write> {
        // SAFETY: forwarded from this function's contract.
        let buf = unsafe { contents(&self.buf, self.from) };
        Ok(op::Write::new(buf, self.target.clone(), Some(self.offset)))
    }

    fn finish(self, result: io::Result<u32>) -> Self::Output {
        (count(result), self.buf)
    }
}

struct ReadvAt<B> {
    bufs: Vec<B>,
    target: Target,
    offset: u64,
}

impl<B: OwnedBufMut> OpSpec for ReadvAt<B> {
    type Kernel = op::Readv;
    type Output = (io::Result<usize>, Vec<B>);

    unsafe fn kernel_op(&mut self) -> ringfence::Result<op::Readv> {
        // SAFETY: forwarded from this function's contract (the buffers
        // live in the `Vec`'s heap allocation, which stays put with it).
        let iovecs = unsafe { fill_all(&mut self.bufs) };
        Ok(op::Readv::new(
            iovecs,
            self.target.clone(),
            Some(self.offset),
        ))
    }

    fn finish(mut self, result: io::Result<u32>) -> Self::Output {
        let result = count(result);
        if let Ok(count) = result {
            filled_all(&mut self.bufs, count);
        }
        (result, self.bufs)
    }
}

struct WritevAt<B> {
    bufs: Vec<B>,
    target: Target,
    offset: u64,
}

impl<B: OwnedBuf> OpSpec for WritevAt<B> {
    type Kernel = op::Writev;
    type Output = (io::Result<usize>, Vec<B>);

    unsafe fn kernel_op(&mut self) -> ringfence::Result<op::Writev> {
        let iovecs: Box<[IoBufMut<'static>]> = self
            .bufs
            .iter()
            // SAFETY: forwarded from this function's contract.
            .map(|buf| unsafe { contents(buf, 0) })
            .collect();
        Ok(op::Writev::new(
            iovecs.into(),
            self.target.clone(),
            Some(self.offset),
        ))
    }

    fn finish(self, result: io::Result<u32>) -> Self::Output {
        (count(result), self.bufs)
    }
}
