//! The seam between the ring core and the kernel: the three io_uring
//! syscalls, waiting for the ring fd, and the ring mappings. Nothing else in
//! the crate makes a syscall on a ring or maps ring memory.
//!
//! A [`Ring`] is either a real kernel ring or another [`Backend`] (the
//! simulated kernel implements it from outside this module, which never
//! names it). Everything above this module is the same code for both.
//!
//! Each function is a thin, typed wrapper: it returns the kernel's errno
//! unchanged as an [`io::Error`] and leaves deciding what an errno means to
//! the layers above.

mod mapping;

pub(crate) use mapping::{page_size, Mapping};

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::abi::RegisterOperation;
use crate::bindings::{
    __kernel_timespec, io_uring_getevents_arg, io_uring_params, IORING_ENTER_EXT_ARG,
};

/// A kernel other than the running one: what a [`Ring`] calls instead of
/// the syscalls. The simulated kernel implements it.
pub(crate) trait Backend: Send + Sync {
    /// `io_uring_enter(2)`; see [`enter`].
    ///
    /// # Safety
    ///
    /// As for [`enter`].
    unsafe fn enter(
        &self,
        to_submit: u32,
        min_complete: u32,
        flags: u32,
        timeout: Option<Duration>,
    ) -> io::Result<u32>;

    /// `io_uring_register(2)`; see [`register`].
    ///
    /// # Safety
    ///
    /// As for [`register`].
    unsafe fn register(
        &self,
        call: RegisterOperation,
        arg: *const libc::c_void,
        nr_args: u32,
    ) -> io::Result<i32>;

    /// `poll(2)` of the ring fd for `POLLIN`; see [`poll_readable`].
    fn poll_readable(&self, timeout_ms: i32) -> io::Result<bool>;

    /// `mmap(2)` of the ring at one of the magic offsets.
    fn map(&self, offset: u64, len: usize) -> io::Result<Mapping>;
}

/// An io_uring instance: the file descriptor of a real ring, or a ring of
/// another [`Backend`].
pub(crate) enum Ring {
    Linux(OwnedFd),
    #[cfg_attr(not(any(test, feature = "sim")), allow(dead_code))]
    Other(Box<dyn Backend>),
}

/// `io_uring_setup(2)`, in the running kernel or another [`Backend`].
pub(crate) type Setup<'a> = &'a dyn Fn(u32, &mut io_uring_params) -> io::Result<Ring>;

impl Ring {
    /// The ring's file descriptor; -1 for a ring of another backend, which
    /// has none.
    pub(crate) fn raw_fd(&self) -> RawFd {
        match self {
            Ring::Linux(fd) => fd.as_raw_fd(),
            Ring::Other(_) => -1,
        }
    }

    /// The ring's file descriptor, if it is a real kernel ring.
    pub(crate) fn as_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            Ring::Linux(fd) => Some(fd.as_fd()),
            Ring::Other(_) => None,
        }
    }
}

/// `io_uring_setup(2)`: creates a ring in the running kernel.
pub(crate) fn setup(entries: u32, params: &mut io_uring_params) -> io::Result<Ring> {
    // SAFETY: `params` is a valid, exclusively borrowed `io_uring_params` for
    // the duration of the call; the kernel reads and writes only that struct.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            entries as libc::c_long,
            params as *mut io_uring_params,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success the kernel returned a new file descriptor that
    // nothing else owns.
    Ok(Ring::Linux(unsafe {
        OwnedFd::from_raw_fd(ret as libc::c_int)
    }))
}

/// `io_uring_enter(2)`: submits up to `to_submit` published SQEs and, with
/// `IORING_ENTER_GETEVENTS`, waits until `min_complete` completions are
/// ready, or with a `timeout` (`IORING_ENTER_EXT_ARG`, Linux 5.11: the
/// caller checks `IORING_FEAT_EXT_ARG`) at most that long, failing with
/// `ETIME` if it passes with nothing submitted. Returns the number of SQEs
/// the kernel consumed.
///
/// # Safety
///
/// The kernel reads every SQE published on this ring (from its SQ head to
/// our SQ tail) during this call, and everything those SQEs point at: each
/// must point only at memory (iovec arrays and the buffers they describe,
/// and whatever else an operation names by address) that stays valid, and
/// that nothing else writes while the kernel reads it, until that
/// operation's completion has been posted.
pub(crate) unsafe fn enter(
    ring: &Ring,
    to_submit: u32,
    min_complete: u32,
    flags: u32,
    timeout: Option<Duration>,
) -> io::Result<u32> {
    let fd = match ring {
        Ring::Linux(fd) => fd,
        Ring::Other(backend) => {
            // SAFETY: forwarded from the caller.
            return unsafe { backend.enter(to_submit, min_complete, flags, timeout) };
        }
    };
    // The extended argument and the timespec it points at live on this
    // stack frame for the whole call; the kernel copies both in.
    let timespec = timeout.map(|timeout| __kernel_timespec {
        // Waits past i64::MAX seconds saturate: they never end either way.
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    });
    let ext_arg = timespec.as_ref().map(|timespec| io_uring_getevents_arg {
        ts: std::ptr::from_ref(timespec) as u64,
        ..Default::default()
    });
    let (flags, arg, arg_size) = match &ext_arg {
        Some(ext_arg) => (
            flags | IORING_ENTER_EXT_ARG,
            std::ptr::from_ref(ext_arg).cast::<libc::c_void>(),
            size_of::<io_uring_getevents_arg>(),
        ),
        // No extended argument: a null signal mask.
        None => (flags, std::ptr::null(), 0),
    };
    // SAFETY: `arg` is null or points at `ext_arg`, whose `ts` points at
    // `timespec`, both alive until the call returns; the memory the kernel
    // reads through published SQEs is the caller's obligation.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            fd.as_raw_fd(),
            to_submit as libc::c_long,
            min_complete as libc::c_long,
            flags as libc::c_long,
            arg,
            arg_size as libc::c_long,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as u32)
}

/// `io_uring_register(2)`.
///
/// # Safety
///
/// `arg` must point to whatever `call` expects for `nr_args` entries (or be
/// null where the call takes no argument), valid for the duration of the
/// call.
pub(crate) unsafe fn register(
    ring: &Ring,
    call: RegisterOperation,
    arg: *const libc::c_void,
    nr_args: u32,
) -> io::Result<i32> {
    let fd = match ring {
        Ring::Linux(fd) => fd,
        // SAFETY: forwarded from the caller.
        Ring::Other(backend) => return unsafe { backend.register(call, arg, nr_args) },
    };
    // SAFETY: the caller guarantees `arg` is what `call` expects.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd.as_raw_fd(),
            call as u8 as libc::c_long,
            arg,
            nr_args as libc::c_long,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as i32)
}

/// Waits up to `timeout_ms` (negative: no limit) for the ring fd to poll
/// readable (a completion is in the CQ ring or overflowed). Returns whether
/// it did.
pub(crate) fn poll_readable(ring: &Ring, timeout_ms: i32) -> io::Result<bool> {
    let fd = match ring {
        Ring::Linux(fd) => fd,
        Ring::Other(backend) => return backend.poll_readable(timeout_ms),
    };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid `pollfd`, borrowed for the call.
    let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret > 0)
}
