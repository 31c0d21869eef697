//! The seam between the ring core and the kernel: the three io_uring
//! syscalls, waiting for the ring fd, and the ring mappings. Nothing else in
//! the crate makes a syscall on a ring or maps ring memory.
//!
//! A [`Ring`] is either a real kernel ring or, in tests and with the `sim`
//! feature, a ring of the [simulated kernel](crate::sim). Everything above
//! this module is the same code for both.
//!
//! Each function is a thin, typed wrapper: it returns the kernel's errno
//! unchanged as an [`io::Error`] and leaves deciding what an errno means to
//! the layers above.

// Matches on `Ring` have a second arm in test and `sim` builds only.
#![allow(clippy::infallible_destructuring_match)]

mod mapping;

pub(crate) use mapping::Mapping;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::bindings::io_uring_params;
#[cfg(any(test, feature = "sim"))]
use crate::sim;

/// An io_uring instance: the file descriptor of a real ring, or a ring of
/// the simulated kernel.
pub(crate) enum Ring {
    Linux(OwnedFd),
    #[cfg(any(test, feature = "sim"))]
    Simulated(sim::SimRing),
}

impl Ring {
    /// The ring's file descriptor; -1 for a simulated ring, which has none.
    pub(crate) fn raw_fd(&self) -> RawFd {
        match self {
            Ring::Linux(fd) => fd.as_raw_fd(),
            #[cfg(any(test, feature = "sim"))]
            Ring::Simulated(_) => -1,
        }
    }
}

/// `io_uring_setup(2)`: creates a ring in the running kernel.
pub(crate) fn setup(entries: u32, params: &mut io_uring_params) -> io::Result<Ring> {
    linux_setup(entries, params).map(Ring::Linux)
}

fn linux_setup(entries: u32, params: &mut io_uring_params) -> io::Result<OwnedFd> {
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
    Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) })
}

/// `io_uring_enter(2)` without a signal mask or extended argument. Returns
/// the number of SQEs the kernel consumed.
pub(crate) fn enter(ring: &Ring, to_submit: u32, min_complete: u32, flags: u32) -> io::Result<u32> {
    let fd = match ring {
        Ring::Linux(fd) => fd,
        #[cfg(any(test, feature = "sim"))]
        Ring::Simulated(ring) => return ring.enter(to_submit, min_complete, flags),
    };
    // SAFETY: the call passes no pointers (the signal mask is null); it only
    // makes the kernel read the SQ ring and write the CQ ring, memory the
    // kernel owns and the caller reaches only through atomics and the
    // published-index protocol.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            fd.as_raw_fd(),
            to_submit as libc::c_long,
            min_complete as libc::c_long,
            flags as libc::c_long,
            std::ptr::null::<libc::sigset_t>(),
            0 as libc::c_long,
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
/// `arg` must point to whatever `opcode` expects for `nr_args` entries (or be
/// null where the opcode takes no argument), valid for the duration of the
/// call.
pub(crate) unsafe fn register(
    ring: &Ring,
    opcode: u32,
    arg: *const libc::c_void,
    nr_args: u32,
) -> io::Result<i32> {
    let fd = match ring {
        Ring::Linux(fd) => fd,
        // SAFETY: forwarded from the caller.
        #[cfg(any(test, feature = "sim"))]
        Ring::Simulated(ring) => return unsafe { ring.register(opcode, arg, nr_args) },
    };
    // SAFETY: the caller guarantees `arg` is what `opcode` expects.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd.as_raw_fd(),
            opcode as libc::c_long,
            arg,
            nr_args as libc::c_long,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as i32)
}

/// Waits up to `timeout_ms` for the ring to become readable (a completion
/// is posted or overflowed). Returns whether it did.
pub(crate) fn poll_readable(ring: &Ring, timeout_ms: i32) -> io::Result<bool> {
    let fd = match ring {
        Ring::Linux(fd) => fd,
        #[cfg(any(test, feature = "sim"))]
        Ring::Simulated(ring) => return Ok(ring.poll_readable(timeout_ms)),
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
