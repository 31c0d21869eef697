//! The doorbell: how a thread that queued an operation wakes the driver,
//! which may be blocked in `io_uring_enter` waiting for completions.
//!
//! The driver keeps a multishot poll of an eventfd in the ring (Linux
//! 5.13); ringing is a write to the eventfd, which wakes the poll, whose
//! completion ends the driver's wait. The eventfd is never read: each
//! write wakes a multishot poll, readable or not, and its counter would
//! take 2^64 rings to fill. The ringing thread makes no `io_uring_enter` call: the operations
//! it queued are submitted by the driver's thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use ringfence::op::PollAdd;
use ringfence::EventType;

pub(crate) enum Doorbell {
    /// A non-blocking eventfd.
    EventFd(Arc<OwnedFd>),
    /// A pollable of the simulated kernel.
    #[cfg(feature = "sim")]
    Sim {
        kernel: ringfence::sim::SimKernel,
        fd: std::os::fd::RawFd,
    },
}

impl Doorbell {
    pub(crate) fn eventfd() -> io::Result<Doorbell> {
        // SAFETY: eventfd(2) takes no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd just returned this descriptor, owned by no one else.
        Ok(Doorbell::EventFd(Arc::new(unsafe {
            OwnedFd::from_raw_fd(fd)
        })))
    }

    #[cfg(feature = "sim")]
    pub(crate) fn sim(kernel: &ringfence::sim::SimKernel) -> Doorbell {
        Doorbell::Sim {
            kernel: kernel.clone(),
            fd: kernel.create_pollable(),
        }
    }

    /// The poll the driver keeps in the ring.
    pub(crate) fn poll(&self) -> PollAdd {
        match self {
            // The operation holds the eventfd open until its completion.
            Doorbell::EventFd(fd) => PollAdd::new(Arc::clone(fd), EventType::Read),
            #[cfg(feature = "sim")]
            Doorbell::Sim { fd, .. } => {
                // SAFETY: the pollable lives as long as the simulated
                // kernel, which `self` (and the context) keep.
                PollAdd::new(
                    unsafe { ringfence::op::Target::from_raw_fd(*fd) },
                    EventType::Read,
                )
            }
        }
    }

    /// Wakes the driver.
    pub(crate) fn ring(&self) {
        match self {
            Doorbell::EventFd(fd) => {
                let one = 1u64.to_ne_bytes();
                // SAFETY: writes 8 bytes from a live local array. It can
                // only fail with EAGAIN, when the counter is near its
                // maximum: the doorbell is ringing already.
                let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
            }
            #[cfg(feature = "sim")]
            Doorbell::Sim { kernel, fd } => kernel.set_ready(*fd, libc::POLLIN as u32),
        }
    }
}
