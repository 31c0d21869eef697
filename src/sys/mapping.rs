use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;

/// A shared mapping of ring memory, unmapped on drop.
///
/// Invariant: `ptr..ptr + len` is a live `MAP_SHARED` mapping owned by this
/// value and by nothing else, from `new` until drop.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of the ring `fd` at the kernel's magic `offset`
    /// (`IORING_OFF_SQ_RING`, `IORING_OFF_CQ_RING` or `IORING_OFF_SQES`).
    pub(crate) fn new(fd: &OwnedFd, offset: u64, len: usize) -> io::Result<Mapping> {
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
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Mapping { ptr, len })
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
        // SAFETY: by the type invariant this value owns the mapping; after
        // drop nothing can reach `ptr`. A failure would mean the range is not
        // mapped, which the invariant rules out, so the result is ignored.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

// SAFETY: the mapping is plain memory with no thread affinity; all access to
// its contents goes through the ring types, which do their own
// synchronisation.
unsafe impl Send for Mapping {}
// SAFETY: `&Mapping` only hands out the base pointer and length.
unsafe impl Sync for Mapping {}
