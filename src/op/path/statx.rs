//! [`Statx`]: `statx(2)` by path, into a caller's buffer.

use std::path::{Path, PathBuf};

use super::{c_path, fill_dir, keep_dir};
use crate::abi::{Sqe, URingOperation};
use crate::op::{KeepAlive, KernelMemory, Operation, Prepared, Target};
use crate::Result;

/// `IORING_OP_STATX` (Linux 5.6, `io_uring_enter(2)`): `statx(2)` into a
/// caller's buffer.
///
/// Completes with 0 once the buffer is filled, or `statx(2)`'s errno
/// (`ENOENT`, `ENOTDIR`, `EACCES`, `EINVAL` for unknown flags...). Check
/// `stx_mask` for the fields the file system filled.
///
/// ```
/// use ringfence::op::Statx;
/// use ringfence::URingContext;
///
/// let ring = URingContext::new(4, None)?;
/// // SAFETY: all-zero bytes are a valid `statx`.
/// let mut buf: Box<libc::statx> = Box::new(unsafe { std::mem::zeroed() });
/// let ptr: *mut libc::statx = &mut *buf;
/// // SAFETY: `buf` outlives the operation, whose completion is reaped
/// // below, and nothing reads or writes it until then.
/// let statx = unsafe { Statx::new("/dev/null", 0, libc::STATX_TYPE, ptr) };
/// ring.add(statx, 1)?;
/// assert_eq!(ring.wait()?.next().expect("one completion").1?, 0);
/// assert_eq!(u32::from(buf.stx_mode) & libc::S_IFMT, libc::S_IFCHR);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Statx {
    dir: Option<Target>,
    path: PathBuf,
    flags: i32,
    mask: u32,
    buf: *mut libc::statx,
}

// SAFETY: the buffer pointer is only written into the SQE; the caller of
// `Statx::new` promised the memory is the kernel's until the completion,
// from whichever thread the operation is added.
unsafe impl Send for Statx {}

impl Statx {
    /// Queries `path` (relative to the working directory unless
    /// [`dir`](Self::dir) names another) for the fields `mask` asks
    /// (`libc::STATX_*`), with `flags` (`libc::AT_*`: `AT_EMPTY_PATH` with
    /// an empty path queries the directory's file itself), writing the
    /// answer into `*buf`.
    ///
    /// A path with a NUL byte fails the add with [`Error::NulInPath`](crate::Error::NulInPath).
    ///
    /// # Safety
    ///
    /// `buf` must be valid for a write of one `libc::statx`, and not be
    /// read or written through any other pointer, from the add until the
    /// operation's completion has been returned by
    /// [`wait`](crate::URingContext::wait) (or the context has been dropped
    /// or closed; if drop or close reports leaked operations, for the rest
    /// of the process).
    pub unsafe fn new(
        path: impl AsRef<Path>,
        flags: i32,
        mask: u32,
        buf: *mut libc::statx,
    ) -> Statx {
        Statx {
            dir: None,
            path: path.as_ref().to_path_buf(),
            flags,
            mask,
            buf,
        }
    }

    /// Resolves a relative path from `dir` rather than the working
    /// directory. `dir` must be a plain descriptor: a [`Target::fixed`]
    /// fails the add with [`Error::FixedFileNotSupported`](crate::Error::FixedFileNotSupported).
    pub fn dir(mut self, dir: impl Into<Target>) -> Statx {
        self.dir = Some(dir.into());
        self
    }
}

impl Operation for Statx {
    const OPCODE: URingOperation = URingOperation::Statx;
    const PINS_CALLER_MEMORY: bool = true;

    fn prepare(self) -> Result<Prepared> {
        let mut sqe = Sqe::new(Self::OPCODE);
        fill_dir::<Self>(&self.dir, &mut sqe)?;
        let (path, at) = KernelMemory::new(c_path(self.path)?);
        // The path in `addr`, the mask in `len`, the buffer in `addr2` and
        // the flags in `statx_flags` (`io_statx_prep`).
        sqe.set_addr(super::path_addr(at));
        sqe.set_len(self.mask);
        sqe.set_addr2(self.buf as usize as u64);
        sqe.set_op_flags(self.flags as u32);
        let keep_alive = KeepAlive {
            owned: Some(path),
            ..keep_dir(self.dir)
        };
        Ok(Prepared::new::<Self>(sqe, keep_alive))
    }
}
