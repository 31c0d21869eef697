use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

/// Zeroed memory that stands in for one ring mapping, shared by the
/// simulated kernel and the `sys::Mapping` that maps it.
///
/// Invariant: `ptr` is an allocation of `layout` (at least 1 byte, aligned
/// to 64), owned by this value until drop. Its contents are only reached
/// through raw pointers and atomics, never through references to `u8`s, so
/// both sides may write it.
pub(crate) struct Region {
    ptr: NonNull<u8>,
    layout: Layout,
}

/// Alignment of a region: an SQE's cache line, and more than any ring
/// field needs.
const REGION_ALIGN: usize = 64;

impl Region {
    pub(crate) fn new(len: usize) -> Region {
        let layout = Layout::from_size_align(len.max(1), REGION_ALIGN).expect("region size");
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout);
        };
        Region { ptr, layout }
    }

    /// The first byte.
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }

    /// A pointer to a `T` at byte `offset`, which must lie inside the
    /// region and be aligned for `T`.
    pub(crate) fn at<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset + size_of::<T>() <= self.len() && offset % align_of::<T>() == 0,
            "simulated ring access out of bounds or misaligned"
        );
        // SAFETY: `offset` is inside the allocation (checked above).
        unsafe { self.ptr.as_ptr().add(offset) }.cast()
    }

    /// The atomic `u32` at byte `offset` (a ring index or flag word).
    pub(crate) fn atomic(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `at` checked bounds and alignment; the memory lives as
        // long as `&self`; `AtomicU32` may be shared, and every access to a
        // ring index or flag word, on both sides, is atomic.
        unsafe { &*self.at::<AtomicU32>(offset) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: by the type invariant, `ptr` was allocated with `layout`
        // and is freed only here.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

// SAFETY: a region is plain memory with no thread affinity; both sides reach
// its contents only through raw pointers under their own synchronisation
// (the simulated kernel's lock, the context's locks, and the ring's
// Acquire/Release protocol).
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` hands out pointers and atomics only.
unsafe impl Sync for Region {}
