//! [`Target`]: the file an operation works on, held in an I/O-safe way.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::abi::{IosqeFlags, Sqe};

/// A file kept open by shared ownership while an operation uses it.
pub(crate) type SharedFd = Arc<dyn AsFd + Send + Sync>;

/// The file an operation works on.
///
/// The kernel looks the descriptor up when it consumes the SQE, which may be
/// during another thread's `submit` or `wait`, well after the add. A
/// `Target` built from an `Arc` keeps the file open until the operation's
/// completion has been handed to the caller, so the descriptor cannot be
/// closed, or reused for another file, under it:
///
/// ```
/// use std::sync::Arc;
/// use ringfence::op::{Fsync, Target};
///
/// let file = Arc::new(tempfile::tempfile()?);
/// let target: Target = Arc::clone(&file).into();
/// let fsync = Fsync::new(target);
/// # let _ = fsync;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// [`from_raw_fd`](Self::from_raw_fd) takes a bare descriptor, as crosvm's
/// API does; the caller then keeps it open itself.
///
/// [`fixed`](Self::fixed) addresses a file in the ring's registered file
/// table by its index: the operation then sets `IOSQE_FIXED_FILE` itself,
/// and the kernel holds the file for as long as it stays registered.
#[derive(Clone)]
pub struct Target(Inner);

#[derive(Clone)]
enum Inner {
    /// A descriptor the caller keeps open.
    Raw(RawFd),
    /// A descriptor kept open by the operation.
    Shared(SharedFd),
    /// An index into the ring's registered file table.
    Fixed(u32),
}

impl Target {
    /// A bare descriptor, which the context does not keep open.
    ///
    /// # Safety
    ///
    /// `fd` must stay open, and refer to the same file, until the
    /// operation's completion has been returned by
    /// [`wait`](crate::URingContext::wait) (or the context has been
    /// dropped or closed). This is I/O safety, not memory safety: a
    /// descriptor closed and reused meanwhile makes the kernel act on
    /// whatever file then holds the number, never on memory the operation
    /// was not given.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Target {
        Target(Inner::Raw(fd))
    }

    /// The crosvm-shaped methods' form of [`from_raw_fd`](Self::from_raw_fd):
    /// those methods take `RawFd` in safe signatures, as crosvm's do, and
    /// document the same contract for their callers.
    pub(crate) fn raw_for_crosvm_api(fd: RawFd) -> Target {
        Target(Inner::Raw(fd))
    }

    /// The file at `index` in the ring's registered file table
    /// (`IOSQE_FIXED_FILE`, Linux 5.1).
    ///
    /// Safe: the kernel holds a registered file itself, and an index with no
    /// file behind it fails the operation with `EBADF`. The operations that
    /// cannot address a registered file (openat, openat2, close and statx
    /// name files by path or by a plain descriptor) fail to build with
    /// [`Error::FixedFileNotSupported`](crate::Error::FixedFileNotSupported).
    pub fn fixed(index: u32) -> Target {
        Target(Inner::Fixed(index))
    }

    /// Whether this is a registered file's index.
    pub fn is_fixed(&self) -> bool {
        matches!(self.0, Inner::Fixed(_))
    }

    /// The number the SQE's `fd` carries: a descriptor, or a registered
    /// file's index.
    pub(crate) fn raw_fd(&self) -> RawFd {
        match &self.0 {
            Inner::Raw(fd) => *fd,
            Inner::Shared(file) => file.as_fd().as_raw_fd(),
            // The kernel reads the index from the same field, as an
            // unsigned number; indices past i32::MAX are past any table
            // (at most 2^20 files on 6.18) and fail there.
            Inner::Fixed(index) => *index as RawFd,
        }
    }

    /// Writes the target into `sqe`: its `fd`, and `IOSQE_FIXED_FILE` for a
    /// registered file.
    pub(crate) fn fill(&self, sqe: &mut Sqe) {
        sqe.set_fd(self.raw_fd());
        if self.is_fixed() {
            let flags = sqe.flags() | IosqeFlags::FIXED_FILE;
            sqe.set_flags(flags);
        }
    }

    /// What the context must hold until the completion: the shared file,
    /// if any.
    pub(crate) fn keep_alive(self) -> Option<SharedFd> {
        match self.0 {
            Inner::Raw(_) | Inner::Fixed(_) => None,
            Inner::Shared(file) => Some(file),
        }
    }
}

impl<T: AsFd + Send + Sync + 'static> From<Arc<T>> for Target {
    /// Keeps `file` open until the operation's completion.
    fn from(file: Arc<T>) -> Target {
        Target(Inner::Shared(file))
    }
}

impl From<OwnedFd> for Target {
    /// Takes `fd`, closing it once the operation's completion has been
    /// handed to the caller.
    fn from(fd: OwnedFd) -> Target {
        Target(Inner::Shared(Arc::new(fd)))
    }
}

impl From<BorrowedFd<'static>> for Target {
    /// A descriptor open for the life of the process (stdin, say).
    fn from(fd: BorrowedFd<'static>) -> Target {
        Target(Inner::Raw(fd.as_raw_fd()))
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.0 {
            Inner::Raw(_) => "raw",
            Inner::Shared(_) => "shared",
            Inner::Fixed(_) => "fixed",
        };
        f.debug_struct("Target")
            .field("fd", &self.raw_fd())
            .field("kind", &kind)
            .finish()
    }
}
