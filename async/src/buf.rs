//! Buffers an operation owns while the kernel uses them: [`OwnedBuf`] for
//! the kernel to read (writes, sends), [`OwnedBufMut`] for it to fill
//! (reads, receives).

/// A buffer the kernel may read from while its operation is in flight.
///
/// The operation takes the buffer by value and gives it back with its
/// result, so nothing else can reach the bytes meanwhile.
///
/// # Safety
///
/// An implementor promises, for as long as the value is neither dropped
/// nor accessed through `&mut`:
///
/// - `stable_ptr()` points to `bytes_init()` initialised bytes, and the
///   same pointer stays valid for reads when the value is moved: the bytes
///   live in an allocation of their own (on the heap, or `'static`), never
///   inside the value itself;
/// - the bytes do not change, and are not freed, while the value is alive.
pub unsafe trait OwnedBuf: Send + 'static {
    /// The first byte.
    fn stable_ptr(&self) -> *const u8;
    /// How many bytes from [`stable_ptr`](Self::stable_ptr) hold data: a
    /// write sends these.
    fn bytes_init(&self) -> usize;
}

/// A buffer the kernel may write into while its operation is in flight.
///
/// A read fills it from its first byte, up to
/// [`bytes_total`](Self::bytes_total) bytes; the operation then calls
/// [`set_init`](Self::set_init) with the count.
///
/// # Safety
///
/// An implementor promises, for as long as the value is neither dropped
/// nor accessed through a reference:
///
/// - `stable_mut_ptr()` points to `bytes_total()` bytes valid for reads and
///   writes, and the same pointer stays valid when the value is moved: the
///   bytes live in an allocation of their own (on the heap), never inside
///   the value itself;
/// - nothing else reads, writes or frees those bytes while the value is
///   alive.
pub unsafe trait OwnedBufMut: Send + 'static {
    /// The first byte.
    fn stable_mut_ptr(&mut self) -> *mut u8;
    /// How many bytes a read may write: a `Vec`'s capacity, a boxed
    /// slice's length.
    fn bytes_total(&self) -> usize;
    /// Records that a read wrote the first `len` bytes.
    ///
    /// # Safety
    ///
    /// The first `len` bytes (at most [`bytes_total`](Self::bytes_total))
    /// have been written.
    unsafe fn set_init(&mut self, len: usize);
}

// SAFETY: a `Vec`'s elements live in its heap allocation (or, with no
// capacity, at a dangling pointer for zero bytes), which moving the `Vec`
// does not move; the `Vec` owns it alone.
unsafe impl OwnedBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as for `OwnedBuf`; the whole capacity is allocated and writable.
unsafe impl OwnedBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }

    /// The capacity: a read fills the `Vec` from its start and leaves its
    /// length at the count read. Reserve room first (`Vec::with_capacity`).
    fn bytes_total(&self) -> usize {
        self.capacity()
    }

    unsafe fn set_init(&mut self, len: usize) {
        debug_assert!(len <= self.capacity());
        // SAFETY: the caller promises the first `len` bytes were written,
        // and `len` is within the capacity.
        unsafe { self.set_len(len) }
    }
}

// SAFETY: a boxed slice's bytes live in its heap allocation, which moving
// the `Box` does not move; the `Box` owns it alone.
unsafe impl OwnedBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as for `OwnedBuf`; every byte is initialised and writable.
unsafe impl OwnedBufMut for Box<[u8]> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }

    fn bytes_total(&self) -> usize {
        self.len()
    }

    /// A boxed slice is initialised throughout: nothing to record; the
    /// count comes back with the result.
    unsafe fn set_init(&mut self, _len: usize) {}
}

// SAFETY: `'static` bytes are never freed, and shared bytes never change.
unsafe impl OwnedBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len()
    }
}

/// The bytes of `buf` from `start`, as an operation sends them.
pub(crate) fn tail(buf: &impl OwnedBuf, start: usize) -> (*const u8, usize) {
    let start = start.min(buf.bytes_init());
    // `wrapping_add`: in bounds (checked above), and no `unsafe` needed.
    (
        buf.stable_ptr().wrapping_add(start),
        buf.bytes_init() - start,
    )
}
