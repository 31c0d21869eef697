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
