//! [`KernelBuf`]: a heap block lent to the kernel for one operation at a
//! time, as `examples/echo.rs` does it.

use std::ops::Range;
use std::ptr::NonNull;

use ringfence::IoBufMut;

/// A heap buffer that can be lent to the kernel as an `IoBufMut<'static>`.
///
/// It holds its block through a raw pointer, not a `Box`: the block never
/// moves when the `KernelBuf` does (connections and request slots live in
/// `Vec`s that grow), and moving a `Box` would assert that it is the only
/// way to the block while the kernel holds its address.
///
/// Invariant: `block` comes from `Box::into_raw` and is freed only by drop
/// or [`reserve`](Self::reserve), and only if it is not lent; while `lent`,
/// nothing but the kernel reads or writes it.
pub struct KernelBuf {
    block: NonNull<[u8]>,
    lent: bool,
}

// SAFETY: a `KernelBuf` owns its block as a `Box<[u8]>` would (the raw
// pointer only keeps the block from being asserted unique while lent), so
// moving it to another thread moves plain bytes. Workers build their
// connections on their own thread; this is for the `Send` bound of values
// created before the threads start.
unsafe impl Send for KernelBuf {}

impl KernelBuf {
    /// A zeroed block of `len` bytes.
    pub fn new(len: usize) -> KernelBuf {
        let block = Box::into_raw(vec![0u8; len].into_boxed_slice());
        KernelBuf {
            // SAFETY: `Box::into_raw` never returns null.
            block: unsafe { NonNull::new_unchecked(block) },
            lent: false,
        }
    }

    /// The block's length in bytes.
    pub fn len(&self) -> usize {
        self.block.len()
    }

    /// Whether the block is lent to an operation in flight.
    pub fn is_lent(&self) -> bool {
        self.lent
    }

    /// Makes the block at least `len` bytes long (a new zeroed block if it
    /// is shorter; the contents are not kept). Panics if it is lent.
    pub fn reserve(&mut self, len: usize) {
        if self.len() < len {
            assert!(!self.lent, "a lent buffer cannot be replaced");
            // The old block is dropped here, not lent (checked above).
            *self = KernelBuf::new(len);
        }
    }

    /// Replaces a block longer than `keep` with an empty one (so that a
    /// request slot that once served a 32 MiB read does not hold it).
    pub fn shrink(&mut self, keep: usize) {
        if self.len() > keep && !self.lent {
            *self = KernelBuf::new(0);
        }
    }

    /// The block, for the program to read or write. Panics if it is lent.
    pub fn bytes(&mut self) -> &mut [u8] {
        assert!(!self.lent, "a lent buffer is the kernel's");
        // SAFETY: by the type invariant the block is allocated and, not
        // being lent, reached only through this `KernelBuf`, which `&mut
        // self` borrows for the slice's life.
        unsafe { self.block.as_mut() }
    }

    /// Lends `range` of the block to one operation, until
    /// [`give_back`](Self::give_back). Panics if it is lent already.
    pub fn lend(&mut self, range: Range<usize>) -> IoBufMut<'static> {
        assert!(!self.lent, "the buffer is already lent to an operation");
        assert!(range.start <= range.end && range.end <= self.block.len());
        self.lent = true;
        // SAFETY: by the type invariant the block stays allocated while it
        // is lent (drop and `reserve` never free a lent block), and nothing
        // else touches it until `give_back`, whose caller says the kernel is
        // done. `range` lies inside the block (checked above).
        unsafe {
            let start = self.block.cast::<u8>().as_ptr().add(range.start);
            IoBufMut::from_raw_parts(start, range.len())
        }
    }

    /// Ends the loan.
    ///
    /// # Safety
    ///
    /// The operation the buffer was lent to must be finished: its
    /// completion has been yielded by the ring's `wait` iterator.
    pub unsafe fn give_back(&mut self) {
        self.lent = false;
    }
}

impl Drop for KernelBuf {
    fn drop(&mut self) {
        if self.lent {
            // Only on an error path, with the operation perhaps still in
            // the kernel: leak the block rather than free memory it may
            // still write.
            return;
        }
        // SAFETY: by the type invariant the block came from `Box::into_raw`
        // and is not lent, so this frees it once, with nothing using it.
        drop(unsafe { Box::from_raw(self.block.as_ptr()) });
    }
}
