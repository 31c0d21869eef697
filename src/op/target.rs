//! [`Target`]: the file an operation works on, held in an I/O-safe way.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

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
#[derive(Clone)]
pub struct Target(Inner);

#[derive(Clone)]
enum Inner {
    /// A descriptor the caller keeps open.
    Raw(RawFd),
    /// A descriptor kept open by the operation.
    Shared(SharedFd),
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

    /// The descriptor the SQE carries.
    pub(crate) fn raw_fd(&self) -> RawFd {
        match &self.0 {
            Inner::Raw(fd) => *fd,
            Inner::Shared(file) => file.as_fd().as_raw_fd(),
        }
    }

    /// What the context must hold until the completion: the shared file,
    /// if any.
    pub(crate) fn keep_alive(self) -> Option<SharedFd> {
        match self.0 {
            Inner::Raw(_) => None,
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
        };
        f.debug_struct("Target")
            .field("fd", &self.raw_fd())
            .field("kind", &kind)
            .finish()
    }
}
