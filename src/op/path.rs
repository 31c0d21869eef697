//! Operations that name files by path or by plain descriptor: [`Openat`],
//! [`Openat2`], [`Close`] and [`Statx`].
//!
//! None of them can take a registered file: the kernel refuses
//! `IOSQE_FIXED_FILE` on all four with `EBADF` (`__io_openat_prep` and
//! `io_close_prep` in `io_uring/openclose.c`, `io_statx_prep` in
//! `io_uring/statx.c`), so a [`Target::fixed`] directory fails the add with
//! [`Error::FixedFileNotSupported`]. Opens can instead install the new
//! file into the registered table ([`Openat::fixed_slot`]), and [`Close`]
//! can empty a slot of it.

use std::ffi::CString;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::ptr::{addr_of, NonNull};

use super::{KeepAlive, KernelMemory, Operation, Prepared, Target};
use crate::abi::{ResolveFlags, Sqe, URingOperation};
use crate::{Error, Result};

/// The directory a relative path starts from: a file the caller gave, or
/// the process's working directory (`AT_FDCWD`).
fn fill_dir<O: Operation>(dir: &Option<Target>, sqe: &mut Sqe) -> Result<()> {
    match dir {
        Some(dir) if dir.is_fixed() => Err(Error::FixedFileNotSupported(O::OPCODE)),
        Some(dir) => {
            dir.fill(sqe);
            Ok(())
        }
        None => {
            sqe.set_fd(libc::AT_FDCWD);
            Ok(())
        }
    }
}

/// `path` as the kernel reads it, NUL-terminated, or [`Error::NulInPath`].
fn c_path(path: PathBuf) -> Result<CString> {
    CString::new(path.into_os_string().into_vec()).map_err(|e| {
        let bytes = e.into_vec();
        Error::NulInPath(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
    })
}

/// Where an open puts the file it opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Install {
    /// A new plain descriptor (`file_index` 0).
    Descriptor,
    /// This slot of the registered file table (`file_index` slot + 1).
    Slot(u32),
    /// A free slot the kernel picks (`IORING_FILE_INDEX_ALLOC`).
    AnySlot,
}

impl Install {
    /// The SQE's `file_index` (`__io_openat_prep`: slot + 1, 0 for a
    /// descriptor, `IORING_FILE_INDEX_ALLOC` for any slot).
    fn file_index(self) -> Result<u32> {
        const ALLOC: u32 = crate::bindings::IORING_FILE_INDEX_ALLOC as u32;
        match self {
            Install::Descriptor => Ok(0),
            Install::AnySlot => Ok(ALLOC),
            Install::Slot(index) => match index.checked_add(1) {
                Some(encoded) if encoded != ALLOC => Ok(encoded),
                _ => Err(Error::FixedSlotOutOfRange(index)),
            },
        }
    }
}

/// What both opens share: the directory, the path and where the file goes.
#[derive(Debug)]
struct OpenCommon {
    dir: Option<Target>,
    path: PathBuf,
    install: Install,
}

impl OpenCommon {
    /// `path`, relative to the working directory, into a plain descriptor.
    fn new(path: &Path) -> OpenCommon {
        OpenCommon {
            dir: None,
            path: path.to_path_buf(),
            install: Install::Descriptor,
        }
    }

    /// Fills the directory and `file_index`.
    fn fill<O: Operation>(&self, sqe: &mut Sqe) -> Result<()> {
        fill_dir::<O>(&self.dir, sqe)?;
        sqe.set_file_index(self.install.file_index()?);
        Ok(())
    }
}

/// The docs both opens share, on where the file goes.
macro_rules! install_methods {
    ($op:ident) => {
        impl $op {
            /// Opens relative to `dir` rather than the working directory
            /// (an absolute path ignores it). `dir` must be a plain
            /// descriptor: a [`Target::fixed`] fails the add with
            /// [`Error::FixedFileNotSupported`].
            pub fn dir(mut self, dir: impl Into<Target>) -> $op {
                self.common.dir = Some(dir.into());
                self
            }

            /// Installs the file into slot `index` of the ring's registered
            /// file table (replacing what is there) instead of giving a
            /// descriptor: the SQE's `file_index` is `index + 1` (Linux
            /// 5.15, `io_uring_enter(2)`). The completion is then 0.
            ///
            /// The table must be registered (sparse slots are fine), else
            /// the completion is `ENXIO`; an index past its end gives
            /// `EINVAL`, and so does `O_CLOEXEC` in the flags (a slot has
            /// no descriptor to close on exec). An `index` of `u32::MAX - 1`
            /// or more cannot be encoded: the add fails with
            /// [`Error::FixedSlotOutOfRange`].
            pub fn fixed_slot(mut self, index: u32) -> $op {
                self.common.install = Install::Slot(index);
                self
            }

            /// Installs the file into a free slot of the registered file
            /// table that the kernel picks (`IORING_FILE_INDEX_ALLOC`,
            /// Linux 5.19). The completion is the slot's index, or
            /// `ENFILE` when no slot is free; `O_CLOEXEC` gives `EINVAL`.
            pub fn fixed_slot_alloc(mut self) -> $op {
                self.common.install = Install::AnySlot;
                self
            }
        }
    };
}

/// `IORING_OP_OPENAT` (Linux 5.6, `io_uring_enter(2)`): `openat(2)`.
///
/// Completes with the new descriptor, which the caller then owns: wrap it
/// at once with [`OwnedFd::from_raw_fd`](std::os::fd::FromRawFd::from_raw_fd)
/// (or `File::from_raw_fd`) so that it is closed. With
/// [`fixed_slot`](Self::fixed_slot) the completion is 0, with
/// [`fixed_slot_alloc`](Self::fixed_slot_alloc) the slot's index. The
/// errors are `openat(2)`'s (`ENOENT`, `EACCES`, `EEXIST`, `ENOTDIR`,
/// `EMFILE`...). The kernel copies the path when it consumes the SQE; the
/// operation keeps its copy alive until then.
///
/// ```
/// use std::os::fd::{FromRawFd, OwnedFd};
/// use ringfence::op::Openat;
/// use ringfence::URingContext;
///
/// let ring = URingContext::new(4, None)?;
/// ring.add(Openat::new("/dev/null", libc::O_RDONLY | libc::O_CLOEXEC, 0), 1)?;
/// let (_, result) = ring.wait()?.next().expect("one completion");
/// // SAFETY: the completion of an open is a new descriptor nobody owns.
/// let file = unsafe { OwnedFd::from_raw_fd(result? as i32) };
/// # drop(file);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Openat {
    common: OpenCommon,
    flags: i32,
    mode: libc::mode_t,
}

impl Openat {
    /// Opens `path` (relative to the working directory, `AT_FDCWD`, unless
    /// [`dir`](Self::dir) names another) with `flags` (`libc::O_*`; add
    /// `O_CLOEXEC` for a plain descriptor) and, when `flags` create a file,
    /// permission bits `mode`.
    ///
    /// A path with a NUL byte fails the add with [`Error::NulInPath`].
    pub fn new(path: impl AsRef<Path>, flags: i32, mode: libc::mode_t) -> Openat {
        Openat {
            common: OpenCommon::new(path.as_ref()),
            flags,
            mode,
        }
    }
}

install_methods!(Openat);

impl Operation for Openat {
    const OPCODE: URingOperation = URingOperation::Openat;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let mut sqe = Sqe::new(Self::OPCODE);
        self.common.fill::<Self>(&mut sqe)?;
        let (path, at) = KernelMemory::new(c_path(self.common.path)?);
        sqe.set_addr(path_addr(at));
        // `open_flags` and, in `len`, the mode (`io_openat_prep`).
        sqe.set_op_flags(self.flags as u32);
        sqe.set_len(self.mode);
        let keep_alive = KeepAlive {
            owned: Some(path),
            ..keep_dir(self.common.dir)
        };
        Ok(Prepared::new::<Self>(sqe, keep_alive))
    }
}

/// What an operation on a directory keeps alive: the directory's file, if
/// the target holds it open.
fn keep_dir(dir: Option<Target>) -> KeepAlive {
    dir.map(KeepAlive::target).unwrap_or_default()
}

/// `struct open_how` (`include/uapi/linux/openat2.h`): the kernel copies
/// `len` bytes of it, at least `OPEN_HOW_SIZE_VER0` (24).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const _: () = assert!(size_of::<OpenHow>() == 24);

/// The address the SQE carries for the path at `at` (the bytes of a
/// `CString` the operation keeps); the cast exposes its provenance.
pub(super) fn path_addr(at: std::ptr::NonNull<CString>) -> u64 {
    // SAFETY: `at` points at a live `CString` that only the kernel reads
    // from now on; a shared borrow to find its bytes changes nothing.
    unsafe { at.as_ref() }.as_ptr() as usize as u64
}

/// `IORING_OP_OPENAT2` (Linux 5.6, `io_uring_enter(2)`): `openat2(2)`,
/// an open that can restrict how its path resolves.
///
/// Completes as [`Openat`] does (a descriptor the caller must wrap with
/// [`OwnedFd::from_raw_fd`](std::os::fd::FromRawFd::from_raw_fd), 0 for a
/// [`fixed_slot`](Self::fixed_slot), the index for
/// [`fixed_slot_alloc`](Self::fixed_slot_alloc)), with `openat2(2)`'s
/// errors besides `openat`'s: `EXDEV` for a path that leaves the tree
/// [`ResolveFlags::BENEATH`] allows, `ELOOP` for a forbidden symlink,
/// `EAGAIN` for [`ResolveFlags::CACHED`] missing the cache, `EINVAL` for
/// unknown flags or a `mode` without `O_CREAT`/`O_TMPFILE`. The operation
/// keeps the path and the `open_how` alive until the completion.
#[derive(Debug)]
pub struct Openat2 {
    common: OpenCommon,
    flags: i32,
    mode: libc::mode_t,
    resolve: ResolveFlags,
}

impl Openat2 {
    /// Opens `path` (relative to the working directory unless
    /// [`dir`](Self::dir) names another) with `flags` (`libc::O_*`),
    /// `mode` (which must be 0 unless `flags` create a file) and the
    /// path-resolution rules `resolve`.
    ///
    /// A path with a NUL byte fails the add with [`Error::NulInPath`].
    pub fn new(
        path: impl AsRef<Path>,
        flags: i32,
        mode: libc::mode_t,
        resolve: ResolveFlags,
    ) -> Openat2 {
        Openat2 {
            common: OpenCommon::new(path.as_ref()),
            flags,
            mode,
            resolve,
        }
    }
}

install_methods!(Openat2);

impl Operation for Openat2 {
    const OPCODE: URingOperation = URingOperation::Openat2;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let mut sqe = Sqe::new(Self::OPCODE);
        self.common.fill::<Self>(&mut sqe)?;
        let how = OpenHow {
            // Zero-extended: openat2 refuses unknown bits in all 64.
            flags: u64::from(self.flags as u32),
            mode: u64::from(self.mode),
            resolve: self.resolve.bits(),
        };
        let (owned, at) = KernelMemory::new((c_path(self.common.path)?, how));
        let at = at.as_ptr();
        // SAFETY: `at` points at the pair `owned` keeps, which nothing else
        // reaches; the projections stay inside it and make no reference.
        let (path_at, how_at) = unsafe { (addr_of!((*at).0), addr_of!((*at).1)) };
        // The path in `addr`, the `open_how` in `addr2` and its size in
        // `len` (`io_openat2_prep`); the casts expose the provenance.
        let path_at = NonNull::new(path_at.cast_mut()).expect("inside a live allocation");
        sqe.set_addr(path_addr(path_at));
        sqe.set_addr2(how_at as usize as u64);
        sqe.set_len(size_of::<OpenHow>() as u32);
        let keep_alive = KeepAlive {
            owned: Some(owned),
            ..keep_dir(self.common.dir)
        };
        Ok(Prepared::new::<Self>(sqe, keep_alive))
    }
}

/// What a [`Close`] closes.
#[derive(Debug)]
enum Closing {
    Descriptor(OwnedFd),
    Slot(u32),
}

/// `IORING_OP_CLOSE` (Linux 5.6, `io_uring_enter(2)`): `close(2)` of a
/// plain descriptor, or (Linux 5.15) the emptying of a registered file
/// table slot.
///
/// Completes with 0, or `close(2)`'s errno (`EBADF` if there was nothing
/// to close, `EIO`...; after `EIO`, as with `close(2)`, the descriptor is
/// gone). The kernel refuses to close an io_uring's own descriptor
/// (`EBADF`), which then stays open, and leaked. Never with `IOSQE_FIXED_FILE`, which the kernel refuses on close
/// (`EBADF`): [`fixed_slot`](Self::fixed_slot) is how a registered file is
/// closed.
#[derive(Debug)]
pub struct Close(Closing);

impl Close {
    /// Closes `fd`: its ownership passes to the kernel, so nothing else
    /// closes it (the descriptor number may be reused as soon as the close
    /// has run).
    ///
    /// If the operation never reaches the kernel (the add fails, the ring
    /// is dropped before submitting it, an [`OpBatch`](crate::OpBatch)
    /// holding it is dropped, or the allowlist refuses it with `EACCES`),
    /// the descriptor stays open and is leaked: it is never closed twice.
    pub fn new(fd: OwnedFd) -> Close {
        Close(Closing::Descriptor(fd))
    }

    /// Empties slot `index` of the ring's registered file table (the SQE's
    /// `file_index` is `index + 1`, its `fd` 0; Linux 5.15). Completes with
    /// 0, `EBADF` for an empty slot, `EINVAL` for one past the table's
    /// end, `ENXIO` without a table. An `index` of `u32::MAX` cannot be
    /// encoded and fails the add with [`Error::FixedSlotOutOfRange`].
    pub fn fixed_slot(index: u32) -> Close {
        Close(Closing::Slot(index))
    }
}

impl Operation for Close {
    const OPCODE: URingOperation = URingOperation::Close;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let mut sqe = Sqe::new(Self::OPCODE);
        match self.0 {
            Closing::Slot(index) => {
                let encoded = index
                    .checked_add(1)
                    .ok_or(Error::FixedSlotOutOfRange(index))?;
                // `io_close_prep` refuses a slot and a descriptor together.
                sqe.set_fd(0);
                sqe.set_file_index(encoded);
            }
            // From here the kernel owns the descriptor: if the SQE never
            // runs, it leaks rather than be closed twice.
            Closing::Descriptor(fd) => sqe.set_fd(fd.into_raw_fd()),
        }
        Ok(Prepared::new::<Self>(sqe, KeepAlive::default()))
    }
}

mod statx;

pub use statx::Statx;

#[cfg(test)]
mod tests;
