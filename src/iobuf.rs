//! [`IoBufMut`]: an iovec that borrows the memory it describes.

use std::marker::PhantomData;

/// A buffer for readv/writev: a `libc::iovec` with the lifetime of the
/// memory it points to.
///
/// It has the layout of `libc::iovec`, so a slice of them is the iovec array
/// the kernel reads.
///
/// ```
/// use ringfence::IoBufMut;
///
/// let mut block = [0u8; 512];
/// let buf = IoBufMut::new(&mut block);
/// assert_eq!(buf.len(), 512);
/// assert!(!buf.is_empty());
/// ```
#[repr(transparent)]
pub struct IoBufMut<'a> {
    iov: libc::iovec,
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> IoBufMut<'a> {
    /// Describes `buf`, borrowing it mutably for `'a`.
    pub fn new(buf: &'a mut [u8]) -> IoBufMut<'a> {
        IoBufMut {
            iov: libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
            _borrow: PhantomData,
        }
    }

    /// The start of the buffer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.iov.iov_base.cast()
    }

    /// The buffer's length in bytes.
    pub fn len(&self) -> usize {
        self.iov.iov_len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.iov.iov_len == 0
    }

    /// The underlying iovec.
    pub fn as_iovec(&self) -> libc::iovec {
        self.iov
    }
}

impl IoBufMut<'static> {
    /// Describes `len` bytes at `ptr`, with no lifetime attached.
    ///
    /// # Safety
    ///
    /// For as long as the returned value (or any operation it is handed to)
    /// is used, `ptr..ptr + len` must be valid for reads and writes and not
    /// be accessed through any other pointer while the kernel may use it.
    /// Memory valid for reads only (read-only data, a shared slice) will
    /// do if every operation it is handed to only reads it (writev, write,
    /// send, sendmsg, write_fixed), and nothing writes it meanwhile.
    pub unsafe fn from_raw_parts(ptr: *mut u8, len: usize) -> IoBufMut<'static> {
        IoBufMut {
            iov: libc::iovec {
                iov_base: ptr.cast(),
                iov_len: len,
            },
            _borrow: PhantomData,
        }
    }
}

impl std::fmt::Debug for IoBufMut<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBufMut")
            .field("ptr", &self.as_ptr())
            .field("len", &self.len())
            .finish()
    }
}

// SAFETY: an `IoBufMut<'a>` stands for a `&'a mut [u8]` (or, from
// `from_raw_parts`, memory the caller promised is exclusively ours), and
// `&mut [u8]` is `Send`.
unsafe impl Send for IoBufMut<'_> {}
// SAFETY: `&IoBufMut` only reads the pointer and length, never the memory.
unsafe impl Sync for IoBufMut<'_> {}

/// An iovec array the kernel reads while its operation is in flight, owned
/// through a raw pointer from submission to completion.
///
/// Not a `Box`: moving a `Box` asserts that it is the only way to reach its
/// contents, which would invalidate the address already written into the
/// SQE (Miri's aliasing models reject the kernel's later read, and the
/// compiler may assume it). A raw pointer makes no such claim, and the array
/// stays where it is until this value frees it.
///
/// Invariant: `ptr` comes from `Box::into_raw` and is freed only by drop.
pub(crate) struct KernelIovecs {
    ptr: std::ptr::NonNull<[IoBufMut<'static>]>,
}

impl KernelIovecs {
    pub(crate) fn new(iovecs: std::pin::Pin<Box<[IoBufMut<'static>]>>) -> KernelIovecs {
        let raw = Box::into_raw(std::pin::Pin::into_inner(iovecs));
        // SAFETY: `Box::into_raw` never returns null.
        let ptr = unsafe { std::ptr::NonNull::new_unchecked(raw) };
        KernelIovecs { ptr }
    }

    /// The array's address, as an SQE carries it. The cast exposes the
    /// pointer's provenance, which a simulated kernel needs to turn the
    /// address back into a pointer.
    pub(crate) fn addr(&self) -> u64 {
        self.ptr.as_ptr().cast::<IoBufMut<'static>>() as u64
    }

    /// The number of iovecs.
    pub(crate) fn len(&self) -> usize {
        self.ptr.len()
    }
}

impl Drop for KernelIovecs {
    fn drop(&mut self) {
        // SAFETY: by the type invariant `ptr` came from `Box::into_raw` and
        // this is the only place that frees it.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

// SAFETY: the array is plain data (iovecs) owned by this value; sending it
// to another thread moves that ownership, as for `Box<[IoBufMut]>`, which
// is `Send`.
unsafe impl Send for KernelIovecs {}
