//! [`SimRing`]: a simulated ring as the context's `sys` layer sees it.

use std::io;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::super::{Fault, Shared, World};
use super::{bit_set, release_some, ring_mut, set_bit, Restrictions, OP_LAST};
use crate::abi::{IosqeFlags, RegisterOperation, Restriction, RestrictionKind, URingOperation};
use crate::bindings::*;
use crate::sys::{Backend, Mapping};

/// How long a simulated `io_uring_enter` or poll may block before the
/// simulation calls it a hang: a test that waits for a completion that can
/// never come fails instead of blocking forever.
const WATCHDOG: Duration = Duration::from_secs(30);

/// The context's handle on a simulated ring: what a ring fd is to the real
/// kernel. Dropping it closes the ring; the kernel forgets its pending
/// work without posting completions.
pub(crate) struct SimRing {
    shared: Arc<Shared>,
    id: usize,
}

impl SimRing {
    pub(in crate::sim) fn new(shared: Arc<Shared>, id: usize) -> SimRing {
        SimRing { shared, id }
    }

    /// Blocks on the kernel's condition variable until `deadline`; panics
    /// past the watchdog, which only a test waiting for the impossible
    /// reaches.
    fn block<'a>(
        &'a self,
        world: MutexGuard<'a, World>,
        deadline: Option<Instant>,
        started: Instant,
    ) -> MutexGuard<'a, World> {
        let now = Instant::now();
        let watchdog = started + WATCHDOG;
        assert!(
            now < watchdog,
            "simulated kernel: blocked for {WATCHDOG:?} waiting for a completion that cannot come"
        );
        let until = deadline.map_or(watchdog, |d| d.min(watchdog));
        let (world, _) = self
            .shared
            .posted
            .wait_timeout(world, until.saturating_duration_since(now))
            .unwrap_or_else(PoisonError::into_inner);
        world
    }
}

impl Backend for SimRing {
    /// `mmap` of the ring at one of the magic offsets.
    fn map(&self, offset: u64, len: usize) -> io::Result<Mapping> {
        let mut world = self.shared.world();
        let ring = ring_mut(&mut world, self.id);
        let region = match u32::try_from(offset) {
            Ok(IORING_OFF_SQ_RING) => &ring.sq_ring,
            Ok(IORING_OFF_CQ_RING) => &ring.cq_ring,
            Ok(IORING_OFF_SQES) => &ring.sqes,
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        if len > region.len() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let ptr = region.ptr();
        // SAFETY: a region is one allocation of at least `len` bytes (checked
        // above), reached only through raw pointers and atomics, and it lives
        // as long as the `Arc` handed over as its owner.
        Ok(unsafe { Mapping::from_backend(ptr, len, Box::new(Arc::clone(region))) })
    }

    /// `io_uring_enter`.
    unsafe fn enter(
        &self,
        to_submit: u32,
        min_complete: u32,
        flags: u32,
        timeout: Option<Duration>,
    ) -> io::Result<u32> {
        let errno = |e| Err(io::Error::from_raw_os_error(e));
        let mut world = self.shared.world();
        world.stats.enters += 1;
        if ring_mut(&mut world, self.id).disabled {
            return errno(libc::EBADFD);
        }
        let fault = world.enter_faults.pop_front();
        if fault.is_some() {
            world.stats.faults_injected += 1;
        }
        let limit = match fault {
            Some(Fault::Interrupted) => return errno(libc::EINTR),
            Some(Fault::Again) => return errno(libc::EAGAIN),
            Some(Fault::Busy) => return errno(libc::EBUSY),
            Some(Fault::ShortSubmit(n)) => n,
            _ => u32::MAX,
        };
        let submitted = super::ops::submit(&mut world, self.id, to_submit.min(limit));
        self.shared.posted.notify_all();
        if flags & IORING_ENTER_GETEVENTS == 0 {
            return Ok(submitted);
        }
        let ring = ring_mut(&mut world, self.id);
        let wanted = min_complete.min(ring.cq_entries);
        let flushed = ring.flush_overflow();
        world.stats.completions_posted += flushed;
        let started = Instant::now();
        // `IORING_ENTER_EXT_ARG`'s timeout: `ETIME` once it passes, unless
        // something was submitted.
        let deadline = timeout.and_then(|timeout| started.checked_add(timeout));
        while ring_mut(&mut world, self.id).cq_ready() < wanted {
            // Only a wait reports dropped completions and signals, and only
            // when nothing was submitted.
            let dropped = ring_mut(&mut world, self.id).dropped;
            if dropped || fault == Some(Fault::InterruptedWait) {
                return match submitted {
                    0 if dropped => errno(libc::EBADR),
                    0 => errno(libc::EINTR),
                    n => Ok(n),
                };
            }
            if release_some(&mut world, self.id) > 0 {
                continue;
            }
            // Waiting for good with nothing else to complete: time passes
            // until the next timer, so the timers fire.
            if deadline.is_none() && super::fire_timeouts(&mut world, self.id) > 0 {
                continue;
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return match submitted {
                    0 => errno(libc::ETIME),
                    n => Ok(n),
                };
            }
            world = self.block(world, deadline, started);
            let flushed = ring_mut(&mut world, self.id).flush_overflow();
            world.stats.completions_posted += flushed;
        }
        Ok(submitted)
    }

    /// `poll` of the ring fd for `POLLIN`, for up to `timeout_ms` (negative:
    /// no limit). Returns whether it became readable.
    fn poll_readable(&self, timeout_ms: i32) -> io::Result<bool> {
        let started = Instant::now();
        let deadline = u64::try_from(timeout_ms)
            .ok()
            .map(|ms| started + Duration::from_millis(ms));
        let mut world = self.shared.world();
        loop {
            if ring_mut(&mut world, self.id).readable() {
                return Ok(true);
            }
            if release_some(&mut world, self.id) > 0 {
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            world = self.block(world, deadline, started);
        }
    }

    /// `io_uring_register`.
    ///
    /// # Safety
    ///
    /// `arg` must point to what `opcode` expects for `nr_args` entries, as
    /// for the real syscall.
    unsafe fn register(
        &self,
        call: RegisterOperation,
        arg: *const libc::c_void,
        nr_args: u32,
    ) -> io::Result<i32> {
        let errno = |e| Err(io::Error::from_raw_os_error(e));
        let mut world = self.shared.world();
        let ring = ring_mut(&mut world, self.id);
        if ring.restricted() {
            let allowed = ring
                .restrictions
                .as_ref()
                .is_some_and(|r| bit_set(r.register_ops, call as u32));
            if !allowed {
                return errno(libc::EACCES);
            }
        }
        match call {
            RegisterOperation::Restrictions => {
                if !ring.disabled {
                    return errno(libc::EBADFD);
                }
                if ring.restrictions.is_some() {
                    return errno(libc::EBUSY);
                }
                if arg.is_null() {
                    return errno(libc::EINVAL);
                }
                // SAFETY: the caller passes `nr_args` restriction entries at
                // `arg` (`Restriction` is `repr(transparent)` over the
                // kernel's struct).
                let entries = unsafe {
                    std::slice::from_raw_parts(arg.cast::<Restriction>(), nr_args as usize)
                };
                let mut parsed = Restrictions::default();
                for entry in entries {
                    let (kind, value) = entry.parts();
                    let ok = match kind {
                        Some(RestrictionKind::RegisterOp) => {
                            set_bit(&mut parsed.register_ops, value, IORING_REGISTER_LAST)
                        }
                        Some(RestrictionKind::SqeOp) => {
                            set_bit(&mut parsed.sqe_ops, value, OP_LAST)
                        }
                        Some(RestrictionKind::SqeFlagsAllowed) => {
                            parsed.sqe_flags_allowed = IosqeFlags::from_bits_retain(value);
                            true
                        }
                        Some(RestrictionKind::SqeFlagsRequired) => {
                            parsed.sqe_flags_required = IosqeFlags::from_bits_retain(value);
                            true
                        }
                        None => false,
                    };
                    if !ok {
                        return errno(libc::EINVAL);
                    }
                }
                ring.restrictions = Some(parsed);
                Ok(0)
            }
            RegisterOperation::EnableRings => {
                if !ring.disabled {
                    return errno(libc::EBADFD);
                }
                ring.disabled = false;
                Ok(0)
            }
            RegisterOperation::Eventfd => {
                if nr_args != 1 || arg.is_null() {
                    return errno(libc::EINVAL);
                }
                if ring.eventfd.is_some() {
                    return errno(libc::EBUSY);
                }
                // SAFETY: the caller passes one `int` at `arg`.
                ring.eventfd = Some(unsafe { arg.cast::<i32>().read() });
                Ok(0)
            }
            RegisterOperation::Probe => {
                if arg.is_null() {
                    return errno(libc::EFAULT);
                }
                // As `io_probe` does: one entry per opcode the kernel
                // knows, up to `nr_args`, flagged if it runs them (this
                // kernel runs exactly the issuable operations).
                let header = arg.cast_mut().cast::<io_uring_probe>();
                let ops_len = nr_args.min(OP_LAST);
                // SAFETY: the caller passes an `io_uring_probe` followed by
                // `nr_args` entries, writable (its pointer came from a
                // mutable borrow) for the call.
                unsafe {
                    (*header).last_op = (OP_LAST - 1) as u8;
                    (*header).ops_len = ops_len as u8;
                }
                // SAFETY: as above; the entries follow the 16-byte header.
                let ops = unsafe { header.add(1) }.cast::<io_uring_probe_op>();
                for n in 0..ops_len as u8 {
                    let supported = URingOperation::from_raw(n).is_some_and(super::ops::models);
                    let entry = io_uring_probe_op {
                        op: n,
                        flags: if supported {
                            IO_URING_OP_SUPPORTED as u16
                        } else {
                            0
                        },
                        ..Default::default()
                    };
                    // SAFETY: entry `n` < `nr_args` of the caller's array.
                    unsafe { ops.add(usize::from(n)).write(entry) };
                }
                Ok(0)
            }
            RegisterOperation::UnregisterEventfd => match ring.eventfd.take() {
                Some(_) => Ok(0),
                None => errno(libc::ENXIO),
            },
            _ => errno(libc::EINVAL),
        }
    }
}

impl Drop for SimRing {
    fn drop(&mut self) {
        // Closing the ring: the kernel tears down what is pending without
        // posting anything, and frees the rings once unmapped.
        let mut world = self.shared.world();
        let abandoned = world.rings[self.id].take().map_or(0, |ring| ring.pending());
        world.stats.abandoned += abandoned as u64;
        drop(world);
        self.shared.posted.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use crate::{Error, URingAllowlist, URingOperation};

    #[test]
    fn a_ring_refuses_an_allowlist_naming_an_operation_its_kernel_lacks() {
        // The simulated kernel's probe reports the issuable operations
        // only: SendZc (Linux 6.0) is one it lacks.
        let kernel = crate::sim::SimKernel::new();
        let mut list = URingAllowlist::new();
        list.allow_housekeeping();
        let ring = kernel.new_context(8, Some(&list)).unwrap();
        ring.add_nop(1).unwrap();
        assert_eq!(ring.wait().unwrap().next().unwrap().1.unwrap(), 0);
        list.allow_submit_operation(URingOperation::SendZc);
        let err = kernel.new_context(8, Some(&list)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OperationNotSupported {
                    op: URingOperation::SendZc,
                    since: (6, 0)
                }
            ),
            "{err:?}"
        );
    }
}
