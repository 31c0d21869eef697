//! What the real-kernel fuzz targets (`real_kernel_ops`, `restricted_ring`)
//! share: the files and the pipe their operations use, ring creation and
//! the model (`model`, which `sim_ops` uses too) with the buffer pool
//! (`pool`), and the builders of the socket and registered-buffer
//! operations (`net`, `fixed`: `sim_ops`'s too).
//!
//! Not a fuzz target: each target includes it with `mod common;`.

pub mod fixed;
pub mod model;
pub mod net;
pub mod pool;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use ringfence::{Error, URingAllowlist, URingContext};

use model::Res;
use pool::BUF_LEN;

/// readv/writev offsets in the memfds are multiples of this, so regions of
/// different operations overlap partly and often.
pub const OFFSET_STEP: u64 = 16;
/// Every memfd is this long: a region `[n * OFFSET_STEP, + BUF_LEN)` fits
/// for every `n` a byte can name.
pub const MEMFD_LEN: usize = 256 * OFFSET_STEP as usize + BUF_LEN;
/// Submission queue entries of every ring.
const ENTRIES: usize = 8;

/// What the fixed memfd holds at `offset`. The period (251) is prime, so
/// reading at the wrong offset shows.
pub fn fixed_byte(offset: usize) -> u8 {
    (offset % 251) as u8
}

/// A memfd of `MEMFD_LEN` bytes holding `byte(offset)` at each offset.
pub fn memfd(byte: fn(usize) -> u8) -> File {
    // SAFETY: the name is a NUL-terminated literal; memfd_create returns a
    // new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"ringfence-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    let content: Vec<u8> = (0..MEMFD_LEN).map(byte).collect();
    std::os::unix::fs::FileExt::write_all_at(&file, &content, 0).expect("filling a memfd");
    file
}

/// Whether `data` is what the fixed memfd holds at `offset`.
pub fn is_fixed_data(offset: u64, data: &[u8]) -> bool {
    data.iter()
        .enumerate()
        .all(|(i, b)| *b == fixed_byte(offset as usize + i))
}

/// Files that stay the same for every input.
pub struct Files {
    pub zero: File,
    /// Opened for writing.
    pub null: File,
    /// Holds `fixed_byte` everywhere; nothing ever writes it, and nothing
    /// reads it at its file position (which other inputs would move).
    pub fixed: File,
}

pub fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| Files {
        zero: File::open("/dev/zero").expect("/dev/zero"),
        null: OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null"),
        fixed: memfd(fixed_byte),
    })
}

/// A non-blocking pipe: polls and readv wait on `reader`, and writing to
/// `writer` wakes them. Operations hold an `Arc` of the end they use, which
/// keeps it open until their completion (`op::Target`).
pub struct Pipe {
    pub reader: Arc<OwnedFd>,
    pub writer: Arc<OwnedFd>,
}

impl Pipe {
    pub fn new() -> Pipe {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        assert_eq!(ret, 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: pipe2 succeeded, so both descriptors are new and ours.
        let (reader, writer) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Pipe {
            reader: Arc::new(reader),
            writer: Arc::new(writer),
        }
    }

    /// Makes the reader readable.
    pub fn poke(&self) {
        // SAFETY: writes one byte from a live literal; EAGAIN (pipe full) is
        // fine, the pipe is readable either way.
        unsafe { libc::write(self.writer.as_raw_fd(), b"x".as_ptr().cast(), 1) };
    }

    /// Empties the pipe.
    pub fn drain(&self) {
        let mut scratch = [0u8; 4096];
        // SAFETY: reads into a live local buffer of the stated length; the
        // pipe is non-blocking.
        while unsafe {
            libc::read(
                self.reader.as_raw_fd(),
                scratch.as_mut_ptr().cast(),
                scratch.len(),
            )
        } > 0
        {}
    }
}

/// A ring of `ENTRIES` entries, restricted by `allowlist`, or `None` when
/// the machine is out of memory or descriptors for now: not what these
/// targets test.
pub fn new_ring(allowlist: Option<&URingAllowlist>) -> Option<URingContext> {
    match URingContext::new(ENTRIES, allowlist) {
        Ok(ring) => Some(ring),
        Err(Error::OutOfLockedMemory) => None,
        Err(Error::Setup(e))
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOMEM | libc::EMFILE | libc::ENFILE)
            ) =>
        {
            None
        }
        Err(e) => panic!("creating a ring with {allowlist:?}: {e}"),
    }
}

/// A poll of the pipe for input: the events that are ready, `POLLIN`
/// among them.
pub fn poll_result_ok(res: Res) -> bool {
    matches!(res, Ok(events) if events & libc::POLLIN as u32 != 0)
}

/// A cancellation or poll removal: 0 (found and stopped), `ENOENT` (nothing
/// to stop) or `EALREADY` (already running).
pub fn control_result_ok(res: Res) -> bool {
    matches!(res, Ok(0) | Err(libc::ENOENT | libc::EALREADY))
}

/// What a read at `offset` past the end of a memfd gives: `EINVAL` when
/// `offset + len` overflows `loff_t` (`rw_verify_area`), else 0 bytes.
pub fn past_end_read(offset: u64, len: usize) -> Res {
    match (offset as i64).checked_add(len as i64) {
        None => Err(libc::EINVAL),
        Some(_) => Ok(0),
    }
}
