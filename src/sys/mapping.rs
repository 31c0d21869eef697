use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use super::Ring;

/// A mapping of ring memory (or of memory the context registers with the
/// kernel), unmapped (or released) on drop.
///
/// Invariant: `ptr..ptr + len` is live ring memory that stays mapped (for
/// another backend: allocated) at least until this value is dropped.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
}

/// What keeps a mapping's memory alive.
enum Backing {
    /// A mapping this value alone owns: of a ring fd (`MAP_SHARED`), or
    /// anonymous.
    Mmap,
    /// Memory of another backend, kept alive by this handle (never read:
    /// it is held for its drop).
    #[allow(dead_code)]
    Other(Box<dyn Send + Sync>),
}

impl Mapping {
    /// Maps `len` bytes of `ring` at the kernel's magic `offset`
    /// (`IORING_OFF_SQ_RING`, `IORING_OFF_CQ_RING` or `IORING_OFF_SQES`).
    pub(crate) fn new(ring: &Ring, offset: u64, len: usize) -> io::Result<Mapping> {
        let fd = match ring {
            Ring::Linux(fd) => fd,
            Ring::Other(backend) => return backend.map(offset, len),
        };
        // SAFETY: a fresh mapping at an address the kernel chooses cannot
        // alias any Rust object; the arguments are plain values.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        Self::mapped(ptr, len)
    }

    /// `len` bytes of fresh, zeroed, page-aligned private memory
    /// (`MAP_PRIVATE | MAP_ANONYMOUS`), for memory the context registers
    /// with the kernel (registered buffers, provided-buffer rings).
    pub(crate) fn anonymous(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping at an address the kernel chooses cannot
        // alias any Rust object; the arguments are plain values.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        Self::mapped(ptr, len)
    }

    /// The mapping `mmap` returned as `ptr`, or its error.
    fn mapped(ptr: *mut libc::c_void, len: usize) -> io::Result<Mapping> {
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Mapping {
            ptr,
            len,
            backing: Backing::Mmap,
        })
    }

    /// `len` bytes at `ptr` that another backend provides, kept alive by
    /// `owner`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` must be one allocation, valid for reads and writes
    /// through raw pointers and atomics, for as long as `owner` lives.
    #[cfg_attr(not(any(test, feature = "sim")), allow(dead_code))]
    pub(crate) unsafe fn from_backend(
        ptr: NonNull<u8>,
        len: usize,
        owner: Box<dyn Send + Sync>,
    ) -> Mapping {
        Mapping {
            ptr,
            len,
            backing: Backing::Other(owner),
        }
    }

    /// The first byte of the mapping.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The mapping's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if matches!(self.backing, Backing::Mmap) {
            // SAFETY: by the type invariant this value owns the mapping;
            // after drop nothing can reach `ptr`. A failure would mean the
            // range is not mapped, which the invariant rules out, so the
            // result is ignored.
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), self.len);
            }
        }
    }
}

// SAFETY: the mapping is plain memory with no thread affinity; all access to
// its contents goes through the ring types, which do their own
// synchronisation; the owner of another backend's memory is `Send + Sync`.
unsafe impl Send for Mapping {}
// SAFETY: `&Mapping` only hands out the base pointer and length.
unsafe impl Sync for Mapping {}

/// The system's page size, in bytes.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}
