//! Creating a context, and the register calls it makes.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::table::OpTable;
use super::{CompletionSide, URingContext};
use crate::abi::{RegisterOperation, SetupFlags, URingOperation, MAX_ENTRIES};
use crate::bindings::{io_uring_params, IORING_FEAT_NODROP};
use crate::error::{setup_error, Error, Result};
use crate::ring::{CompletionQueue, RingMemory, SubmissionQueue};
use crate::sys::{self, Setup};
use crate::URingAllowlist;

impl URingContext {
    /// Creates a ring with room for `num_entries` queued operations (rounded
    /// up to a power of two; the completion ring gets twice as many).
    ///
    /// With an `allowlist`, the ring is created disabled, the allowlist is
    /// registered as its restrictions, and then it is enabled: from then on
    /// the kernel refuses anything outside it (see [`URingAllowlist`];
    /// Linux 5.10). Without one, the ring is unrestricted (Linux 5.1).
    ///
    /// Fails with [`Error::EntriesOutOfRange`] for 0 or more than
    /// [`MAX_ENTRIES`] entries, and with [`Error::IoUringUnavailable`],
    /// [`Error::IoUringDisabled`] or [`Error::OutOfLockedMemory`] when the
    /// kernel cannot give this process a ring.
    pub fn new(num_entries: usize, allowlist: Option<&URingAllowlist>) -> Result<URingContext> {
        Self::new_in(&sys::setup, num_entries, allowlist)
    }

    /// [`new`](Self::new), with the ring created by `setup`: the running
    /// kernel's or another backend's.
    pub(crate) fn new_in(
        setup: Setup<'_>,
        num_entries: usize,
        allowlist: Option<&URingAllowlist>,
    ) -> Result<URingContext> {
        let Some(allowlist) = allowlist else {
            return Self::create(setup, num_entries, SetupFlags::empty());
        };
        let ring = Self::create(setup, num_entries, SetupFlags::R_DISABLED)?;
        ring.register_restrictions(allowlist)?;
        ring.enable()?;
        Ok(ring)
    }

    /// Creates a ring that stays disabled (`IORING_SETUP_R_DISABLED`,
    /// Linux 5.10) until [`enable`](Self::enable): the window in which a
    /// sandboxed process registers what it needs (an eventfd,
    /// restrictions) before the kernel locks the ring down. Submitting to a
    /// disabled ring fails with `EBADFD`.
    ///
    /// ```
    /// use ringfence::{URingAllowlist, URingContext, URingOperation};
    ///
    /// let ring = URingContext::new_disabled(8)?;
    /// let mut allowlist = URingAllowlist::new();
    /// allowlist.allow_housekeeping();
    /// ring.register_restrictions(&allowlist)?;
    /// ring.enable()?;
    /// ring.add_nop(1)?;
    /// assert_eq!(ring.wait()?.next().unwrap().1.unwrap(), 0);
    /// # Ok::<(), ringfence::Error>(())
    /// ```
    pub fn new_disabled(num_entries: usize) -> Result<URingContext> {
        Self::create(&sys::setup, num_entries, SetupFlags::R_DISABLED)
    }

    /// Creates a ring with `setup` and maps it.
    pub(crate) fn create(
        setup: Setup<'_>,
        num_entries: usize,
        setup_flags: SetupFlags,
    ) -> Result<URingContext> {
        if num_entries == 0 || num_entries > MAX_ENTRIES {
            return Err(Error::EntriesOutOfRange(num_entries));
        }
        let mut params = io_uring_params {
            flags: setup_flags.bits(),
            ..Default::default()
        };
        let ring = setup(num_entries as u32, &mut params).map_err(setup_error)?;
        let memory = RingMemory::map(&ring, &params).map_err(Error::Mmap)?;
        // Without NODROP the kernel drops completions that do not fit in the
        // CQ ring, so never have more in flight than it holds, keeping one
        // slot for drain's cancellations: it can always cancel one more.
        let in_flight_cap = if params.features & IORING_FEAT_NODROP != 0 {
            usize::MAX - 1
        } else {
            params.cq_entries as usize - 1
        };
        // SAFETY: `memory` maps the ring `params` describes; the context
        // built below owns it and drops it after the queues (field order).
        let submit = unsafe { SubmissionQueue::new(&memory, &params) }.map_err(Error::Mmap)?;
        // SAFETY: as above.
        let cq = unsafe { CompletionQueue::new(&memory, &params) }.map_err(Error::Mmap)?;
        Ok(URingContext {
            sq: submit.indices(),
            submit: Mutex::new(submit),
            cq: cq.indices(),
            completion: Mutex::new(CompletionSide {
                cq,
                table: OpTable::new(),
            }),
            claim_progress: std::array::from_fn(|_| AtomicU32::new(0)),
            returned: AtomicUsize::new(0),
            internal_ops: AtomicUsize::new(0),
            wake_owed: AtomicBool::new(false),
            required_flags: AtomicU8::new(0),
            can_cancel: AtomicBool::new(true),
            _memory: memory,
            ring,
            sq_entries: params.sq_entries,
            cq_entries: params.cq_entries,
            in_flight_cap,
            owner_pid: std::process::id(),
        })
    }

    /// Registers `allowlist` as the ring's restrictions
    /// (`IORING_REGISTER_RESTRICTIONS`, Linux 5.10). Only on a ring from
    /// [`new_disabled`](Self::new_disabled), once, before
    /// [`enable`](Self::enable): otherwise the kernel refuses with `EBADFD`
    /// (already enabled) or `EBUSY` (already registered).
    pub fn register_restrictions(&self, allowlist: &URingAllowlist) -> Result<()> {
        let entries = allowlist.restrictions();
        // SAFETY: `entries` is an array of `entries.len()` restriction
        // entries (`Restriction` is `repr(transparent)` over the kernel's
        // struct), alive for the whole call.
        unsafe {
            self.register(
                RegisterOperation::Restrictions,
                entries.as_ptr().cast(),
                entries.len() as u32,
            )
        }?;
        self.required_flags
            .store(allowlist.required_sqe_flags().bits(), Ordering::Relaxed);
        self.can_cancel.store(
            allowlist.allows_submit_operation(URingOperation::AsyncCancel),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Enables a ring created with [`new_disabled`](Self::new_disabled)
    /// (`IORING_REGISTER_ENABLE_RINGS`). Restrictions registered before
    /// take effect now.
    pub fn enable(&self) -> Result<()> {
        // SAFETY: ENABLE_RINGS takes no argument.
        unsafe { self.register(RegisterOperation::EnableRings, std::ptr::null(), 0) }
    }

    /// Makes the kernel signal `eventfd` whenever it posts a completion
    /// (`IORING_REGISTER_EVENTFD`, Linux 5.2), for event loops that wait on
    /// an eventfd rather than the ring fd.
    ///
    /// The eventfd counts the kernel's own posts only: it is not signalled
    /// again for completions an iterator hands back (the ring fd is, see
    /// [`AsRawFd`](std::os::fd::AsRawFd)).
    pub fn register_eventfd(&self, eventfd: std::os::fd::RawFd) -> Result<()> {
        // SAFETY: REGISTER_EVENTFD reads one `int`, which lives on our stack
        // for the whole call.
        unsafe {
            self.register(
                RegisterOperation::Eventfd,
                (&eventfd as *const std::os::fd::RawFd).cast(),
                1,
            )
        }
    }

    /// Stops signalling the eventfd registered with
    /// [`register_eventfd`](Self::register_eventfd).
    pub fn unregister_eventfd(&self) -> Result<()> {
        // SAFETY: UNREGISTER_EVENTFD takes no argument.
        unsafe { self.register(RegisterOperation::UnregisterEventfd, std::ptr::null(), 0) }
    }

    /// # Safety
    ///
    /// `arg` must be what `call` expects for `nr_args` entries, valid for the
    /// duration of the call.
    unsafe fn register(
        &self,
        call: RegisterOperation,
        arg: *const libc::c_void,
        nr_args: u32,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { sys::register(&self.ring, call, arg, nr_args) }
            .map(drop)
            .map_err(|source| Error::Register { call, source })
    }
}
