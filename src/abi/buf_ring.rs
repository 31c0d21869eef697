//! The provided-buffer ring's ABI (`IORING_REGISTER_PBUF_RING`, Linux 5.19,
//! `io_uring_register(2)`): its entries, its tail, and the registration
//! argument. The only code that names bindgen's `io_uring_buf`,
//! `io_uring_buf_ring` and `io_uring_buf_reg`.

use std::mem::{offset_of, size_of};
use std::sync::atomic::AtomicU16;

use crate::bindings::{
    io_uring_buf, io_uring_buf_reg, io_uring_buf_ring__bindgen_ty_1__bindgen_ty_1,
    IORING_RECV_MULTISHOT,
};

/// The bytes one ring entry (`struct io_uring_buf`) takes.
pub(crate) const BUF_RING_ENTRY_LEN: usize = size_of::<io_uring_buf>();

/// The most entries a buffer ring takes: the kernel refuses a
/// `ring_entries` of 65536 or more, and any that is not a power of two, with
/// `EINVAL` (`io_register_pbuf_ring`, `io_uring/kbuf.c`).
pub const MAX_BUF_RING_ENTRIES: usize = 32768;

/// `IORING_RECV_MULTISHOT`, as the SQE's `ioprio` carries it for a receive
/// (Linux 6.0, `io_uring_enter(2)`).
pub(crate) const RECV_MULTISHOT: u16 = IORING_RECV_MULTISHOT as u16;

// The ring's tail is the `resv` field of entry 0 (the header overlays the
// first entry): the union in `io_uring_buf_ring` says so, checked here.
const TAIL_OFFSET: usize = offset_of!(io_uring_buf_ring__bindgen_ty_1__bindgen_ty_1, tail);
const _: () = assert!(TAIL_OFFSET == offset_of!(io_uring_buf, resv));
const _: () = assert!(TAIL_OFFSET % std::mem::align_of::<AtomicU16>() == 0);

/// Writes entry `index` of the buffer ring at `ring`: buffer `bid`, `len`
/// bytes at `addr`. Leaves the entry's `resv` alone: in entry 0 that is
/// the ring's tail.
///
/// # Safety
///
/// `ring` must point to a live buffer ring of more than `index` entries,
/// aligned to 8 bytes, and entry `index` must not be one the kernel may
/// read (it is outside `head..tail`): no other thread writes it meanwhile.
pub(crate) unsafe fn write_buf_entry(ring: *mut u8, index: usize, addr: u64, len: u32, bid: u16) {
    // SAFETY: in bounds and aligned by the caller's promise.
    let entry = unsafe { ring.cast::<io_uring_buf>().add(index) };
    // SAFETY: the entry is ours to write (the caller's promise); writing
    // field by field through the raw pointer makes no reference that would
    // cover the tail in entry 0's `resv`, which the kernel reads.
    unsafe {
        std::ptr::addr_of_mut!((*entry).addr).write(addr);
        std::ptr::addr_of_mut!((*entry).len).write(len);
        std::ptr::addr_of_mut!((*entry).bid).write(bid);
    }
}

/// The tail of the buffer ring at `ring`, which the kernel reads with
/// `smp_load_acquire` (`io_ring_buffer_select` and `io_ring_buffers_peek`,
/// `io_uring/kbuf.c`).
///
/// # Safety
///
/// `ring` must point to a live buffer ring, aligned to 8 bytes, that
/// outlives `'a`; the tail must be written only through atomics while
/// `'a` lasts.
pub(crate) unsafe fn buf_ring_tail<'a>(ring: *mut u8) -> &'a AtomicU16 {
    // SAFETY: the tail lies at `TAIL_OFFSET`, inside entry 0, aligned for a
    // u16 (checked above); the caller promises it is live and only
    // accessed atomically for `'a`.
    unsafe { AtomicU16::from_ptr(ring.add(TAIL_OFFSET).cast()) }
}

/// The argument of `IORING_REGISTER_PBUF_RING` and
/// `IORING_UNREGISTER_PBUF_RING`.
pub(crate) struct BufReg(io_uring_buf_reg);

impl BufReg {
    /// A ring of `entries` at `ring_addr` (page aligned), for group
    /// `group`; no flags (the ring's memory is the caller's, not mmapped
    /// from the kernel with `IOU_PBUF_RING_MMAP`). Not `IOU_PBUF_RING_INC`
    /// either: with incremental consumption a completion names a buffer
    /// the kernel goes on writing, and the context's lending
    /// (`CompletedBuffers`) takes a completion's buffer to be done with.
    pub(crate) fn new(ring_addr: u64, entries: u32, group: u16) -> BufReg {
        BufReg(io_uring_buf_reg {
            ring_addr,
            ring_entries: entries,
            bgid: group,
            ..Default::default()
        })
    }

    /// The pointer `io_uring_register` takes.
    pub(crate) fn as_ptr(&self) -> *const libc::c_void {
        (&self.0 as *const io_uring_buf_reg).cast()
    }
}
