//! Registered (fixed) files and buffers: the memory the context owns for
//! registered buffers, and the register calls for both.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;

use super::URingContext;
use crate::abi::RegisterOperation;
use crate::bindings::io_uring_files_update;
use crate::error::{Error, Result};
use crate::op::RegisteredBuffer;
use crate::sys::{self, Mapping};

/// The most buffers one ring registers: the kernel's
/// `IORING_MAX_REG_BUFFERS` (`io_uring/rsrc.c`, 1 << 14).
pub const MAX_REGISTERED_BUFFERS: usize = 1 << 14;

/// The largest registered buffer, in bytes: the kernel refuses larger ones
/// with `EFAULT` (`io_buffer_validate` in `io_uring/rsrc.c`, `SZ_1G`).
pub const MAX_REGISTERED_BUFFER_LEN: usize = 1 << 30;

/// The memory of a ring's registered buffers: one anonymous private
/// mapping, `count` buffers of `len` bytes, each starting on a page.
///
/// Invariant: `mapping` is `count * stride` bytes, unmapped on drop (see
/// the drop order in [`URingContext`]). Rust code reaches it only through
/// raw pointers ([`RegisteredBuffer::as_ptr`]), so the kernel writing it
/// never aliases a Rust reference unless the caller's `unsafe` code made
/// one.
pub(super) struct BufferMemory {
    mapping: Mapping,
    stride: usize,
    count: usize,
    len: usize,
}

impl BufferMemory {
    /// Maps `count` zeroed buffers of `len` bytes.
    pub(super) fn new(count: usize, len: usize) -> Result<BufferMemory> {
        if !(1..=MAX_REGISTERED_BUFFERS).contains(&count)
            || !(1..=MAX_REGISTERED_BUFFER_LEN).contains(&len)
        {
            return Err(Error::RegisteredBuffersOutOfRange { count, len });
        }
        let page = sys::page_size();
        let stride = len.div_ceil(page) * page;
        let map_len = stride
            .checked_mul(count)
            .ok_or(Error::RegisteredBuffersOutOfRange { count, len })?;
        let mapping = Mapping::anonymous(map_len).map_err(Error::Mmap)?;
        Ok(BufferMemory {
            mapping,
            stride,
            count,
            len,
        })
    }

    /// Buffer `index`, if there is one.
    pub(super) fn buffer(&self, index: u16) -> Option<RegisteredBuffer> {
        let i = usize::from(index);
        (i < self.count).then(|| {
            // SAFETY: `i * stride` is inside the mapping (invariant), as
            // `i < count` and the mapping is `count * stride` bytes.
            let base = unsafe { self.mapping.as_ptr().add(i * self.stride) };
            // `Mapping` never holds a null pointer.
            let base = NonNull::new(base).expect("a mapping is never at null");
            RegisteredBuffer::from_raw_parts(index, NonNull::slice_from_raw_parts(base, self.len))
        })
    }

    /// The iovecs `IORING_REGISTER_BUFFERS` takes for them.
    pub(super) fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count as u16)
            .filter_map(|i| self.buffer(i))
            .map(|buf| libc::iovec {
                iov_base: buf.as_ptr().cast::<libc::c_void>().as_ptr(),
                iov_len: buf.len(),
            })
            .collect()
    }
}

// Unmapping (when `mapping` drops) is safe even if the kernel may still
// write a buffer (a drain that gave up): registration pinned the pages
// (`io_sqe_buffer_register`, `io_uring/rsrc.c`), and the kernel reaches them
// through those pins, not through our addresses; once unmapped they belong
// to no mapping of ours, and stay allocated until the kernel unpins them
// when the ring is freed.

impl URingContext {
    /// Buffer `index` of the buffers registered by
    /// [`URingBuilder::buffers`](crate::URingBuilder::buffers), or `None`
    /// past the last (or when the ring has none).
    ///
    /// The context owns that memory (zeroed at first, page aligned) until
    /// it is dropped; see [`RegisteredBuffer`] for when reading or writing
    /// it is sound.
    pub fn registered_buffer(&self, index: u16) -> Option<RegisteredBuffer> {
        self.buffers.as_ref()?.buffer(index)
    }

    /// How many buffers are registered (0 without
    /// [`URingBuilder::buffers`](crate::URingBuilder::buffers)).
    pub fn registered_buffers(&self) -> usize {
        self.buffers.as_ref().map_or(0, |b| b.count)
    }

    /// Replaces registered files `offset..offset + fds.len()` of the
    /// table [`URingBuilder::files`](crate::URingBuilder::files) or
    /// [`sparse_files`](crate::URingBuilder::sparse_files) made
    /// (`IORING_REGISTER_FILES_UPDATE`, Linux 5.5, `io_uring_register(2)`):
    /// `Some(fd)` registers that file in the slot, `None` empties it (the
    /// kernel's -1). Returns how many slots were updated.
    ///
    /// The kernel takes its own reference to each file: closing `fd`
    /// afterwards leaves the registered file open until its slot is
    /// emptied or replaced, or the ring is closed. An operation in flight
    /// on a slot keeps the old file until it completes.
    ///
    /// Fails with [`Error::Register`]: `ENXIO` when the ring has no file
    /// table, `EINVAL` past its end or for an empty `fds`, `EBADF` for a bad descriptor, and
    /// `EACCES` on a restricted ring (before Linux 7.0) unless the
    /// allowlist allows
    /// [`RegisterOperation::FilesUpdate`]: register every file before the
    /// ring is enabled instead, or allow the call, knowing that it lets the
    /// process put any file it has into the table (see
    /// [`URingBuilder`](crate::URingBuilder#what-a-fixed-files-only-ring-protects)).
    pub fn update_files(&self, offset: u32, fds: &[Option<BorrowedFd<'_>>]) -> Result<usize> {
        let raw: Vec<RawFd> = fds
            .iter()
            .map(|fd| fd.map_or(-1, |fd| fd.as_raw_fd()))
            .collect();
        let update = io_uring_files_update {
            offset,
            resv: 0,
            fds: raw.as_ptr() as u64,
        };
        // SAFETY: FILES_UPDATE reads one `io_uring_files_update`, on our
        // stack, and `raw.len()` descriptors at `fds`, alive for the call.
        let updated = unsafe {
            self.register_value(
                RegisterOperation::FilesUpdate,
                (&update as *const io_uring_files_update).cast(),
                raw.len() as u32,
            )
        }?;
        Ok(updated as usize)
    }

    /// Registers the file table: `fds`, -1 for an empty slot
    /// (`IORING_REGISTER_FILES`, Linux 5.1; empty slots Linux 5.5).
    pub(super) fn register_files(&self, fds: &[RawFd]) -> Result<()> {
        // SAFETY: FILES reads `fds.len()` ints, alive for the call.
        unsafe {
            self.register_value(
                RegisterOperation::Files,
                fds.as_ptr().cast(),
                fds.len() as u32,
            )
        }
        .map(drop)
    }

    /// Registers `memory`'s buffers (`IORING_REGISTER_BUFFERS`, Linux 5.1)
    /// and keeps the memory.
    pub(super) fn register_buffers(&mut self, memory: BufferMemory) -> Result<()> {
        let iovecs = memory.iovecs();
        // SAFETY: BUFFERS reads `iovecs.len()` iovecs, alive for the call;
        // each describes memory of `memory`, which the context keeps (and
        // the kernel pins) for as long as the ring may use it.
        unsafe {
            self.register_value(
                RegisterOperation::Buffers,
                iovecs.as_ptr().cast(),
                iovecs.len() as u32,
            )
        }?;
        self.buffers = Some(memory);
        Ok(())
    }
}
