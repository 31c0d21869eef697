//! [`FixedBuf`]: a registered buffer of the ring, owned while held, for
//! reads and writes the kernel needs not map page by page.

use std::io;
use std::ops::{Deref, DerefMut};

use ringfence::op::{self, Target};
use ringfence::RegisteredBuffer;

use crate::op::OpSpec;
use crate::spec::count;
use crate::Driver;

/// One of the ring's registered buffers (`IORING_REGISTER_BUFFERS`), held
/// alone: [`Driver::fixed_buffer`] hands it out, dropping it gives it back.
///
/// Like a `Vec<u8>` of fixed capacity (the registered length): it derefs to
/// its first `len()` bytes (its length). [`File::read_fixed`](crate::File::read_fixed)
/// fills it from the start and sets the length to the count read;
/// [`File::write_fixed`](crate::File::write_fixed) writes its first `len`
/// bytes.
///
/// ```
/// use ringfence::URingContext;
/// use ringfence_async::{Driver, File};
///
/// let ctx = URingContext::builder(8).buffers(2, 4096).build()?;
/// let driver = Driver::builder(ctx).spawn()?;
/// let file = File::from_std(&driver, tempfile::tempfile()?);
/// let mut buf = driver.fixed_buffer().expect("two are registered");
/// buf.extend_from_slice(b"registered");
/// futures::executor::block_on(async {
///     let (written, mut buf) = file.write_fixed(buf, 0).await;
///     assert_eq!(written?, 10);
///     buf.clear();
///     let (read, buf) = file.read_fixed(buf, 0).await;
///     assert_eq!(read?, 10);
///     assert_eq!(&buf[..], b"registered");
///     Ok::<(), std::io::Error>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FixedBuf {
    /// Keeps the ring, and so the registered memory, alive.
    driver: Driver,
    buffer: RegisteredBuffer,
    len: usize,
}

impl FixedBuf {
    pub(crate) fn new(driver: Driver, buffer: RegisteredBuffer) -> FixedBuf {
        FixedBuf {
            driver,
            buffer,
            len: 0,
        }
    }

    /// Its index in the ring's registered buffer table.
    pub fn index(&self) -> u16 {
        self.buffer.index()
    }

    /// The registered length, in bytes: the most a read fills.
    pub fn capacity(&self) -> usize {
        self.buffer.len()
    }

    /// Sets the length to `len` bytes (at most the capacity; registered
    /// memory is always initialised, zeroed at first).
    ///
    /// # Panics
    ///
    /// If `len` is above [`capacity`](Self::capacity).
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity(),
            "{len} bytes is past the registered buffer"
        );
        self.len = len;
    }

    /// Empties it (length 0).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `bytes`.
    ///
    /// # Panics
    ///
    /// If they do not fit in the capacity.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let start = self.len;
        self.set_len(start + bytes.len());
        self[start..].copy_from_slice(bytes);
    }

    /// The whole registered memory.
    fn memory(&self) -> *mut [u8] {
        self.buffer.as_ptr().as_ptr()
    }
}

impl Deref for FixedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the memory is the context's, alive while `self.driver`
        // keeps the ring; this value alone holds the index (the pool hands
        // it out once), and while a fixed operation uses it this value
        // sits untouched in the driver's table, so no operation writes it
        // now. `len` is within the registered length (`set_len`).
        unsafe { &(&*self.memory())[..self.len] }
    }
}

impl DerefMut for FixedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`, and `&mut self` makes this the only
        // access.
        unsafe { &mut (&mut *self.memory())[..self.len] }
    }
}

impl Drop for FixedBuf {
    fn drop(&mut self) {
        self.driver.shared().give_back_fixed(self.index());
    }
}

impl std::fmt::Debug for FixedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedBuf")
            .field("index", &self.index())
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// `IORING_OP_READ_FIXED` into a held buffer.
pub(crate) struct ReadFixed {
    pub(crate) buf: FixedBuf,
    pub(crate) target: Target,
    pub(crate) offset: u64,
}

impl OpSpec for ReadFixed {
    type Kernel = op::ReadFixed;
    type Output = (io::Result<usize>, FixedBuf);

    unsafe fn kernel_op(&mut self) -> ringfence::Result<op::ReadFixed> {
        let range = 0..self.buf.capacity();
        op::ReadFixed::new(
            self.target.clone(),
            self.buf.buffer,
            range,
            Some(self.offset),
        )
    }

    fn finish(mut self, result: io::Result<u32>) -> Self::Output {
        let result = count(result);
        if let Ok(count) = result {
            self.buf.set_len(count);
        }
        (result, self.buf)
    }
}

/// `IORING_OP_WRITE_FIXED` from a held buffer.
pub(crate) struct WriteFixed {
    pub(crate) buf: FixedBuf,
    pub(crate) target: Target,
    pub(crate) offset: u64,
}

impl OpSpec for WriteFixed {
    type Kernel = op::WriteFixed;
    type Output = (io::Result<usize>, FixedBuf);

    unsafe fn kernel_op(&mut self) -> ringfence::Result<op::WriteFixed> {
        let range = 0..self.buf.len();
        op::WriteFixed::new(
            self.target.clone(),
            self.buf.buffer,
            range,
            Some(self.offset),
        )
    }

    fn finish(self, result: io::Result<u32>) -> Self::Output {
        (count(result), self.buf)
    }
}
