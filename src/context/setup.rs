//! Creating a context, and the register calls it makes.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::table::{ClaimBoard, OpTable};
use super::{RingState, URingBuilder, URingContext};
use crate::abi::{
    FeatureFlags, IosqeFlags, RegisterOperation, SetupFlags, URingOperation, MAX_ENTRIES,
};
use crate::bindings::{io_uring_params, IORING_FEAT_NODROP, IORING_SETUP_SQPOLL};
use crate::error::{setup_error, Error, Result};
use crate::ring::{CompletionQueue, RingMemory, SubmissionQueue};
use crate::sys::{self, Setup};
use crate::URingAllowlist;

/// The required SQE flags the context's own SQEs (wake-up nops, drain's
/// cancellations) may carry: others would break them (`CQE_SKIP_SUCCESS`
/// posts no completion, `IO_DRAIN` waits for everything before it, links
/// chain them to the caller's SQEs, `BUFFER_SELECT` needs a buffer group).
const OWN_SQE_FLAGS: IosqeFlags = IosqeFlags::FIXED_FILE.union(IosqeFlags::ASYNC);

/// How many operations may be in flight on a ring with these parameters,
/// the context's own included (see `URingContext::in_flight_cap`).
///
/// With `IORING_FEAT_NODROP` the kernel keeps every completion that does
/// not fit in the CQ ring on an overflow list, in kernel memory without a
/// limit of its own: capping what is in flight at a multiple of the CQ
/// ring bounds that memory (a process that never reaps gets `NoSpace`
/// instead of exhausting the kernel's). Without NODROP the kernel drops
/// such completions, so never have more in flight than the CQ ring holds,
/// keeping one slot for drain's cancellations: it can always cancel one
/// more.
fn in_flight_cap(params: &io_uring_params) -> usize {
    let cq_entries = params.cq_entries as usize;
    if params.features & IORING_FEAT_NODROP != 0 {
        IN_FLIGHT_PER_CQ_ENTRY * cq_entries
    } else {
        cq_entries - 1
    }
}

/// With `IORING_FEAT_NODROP`, operations in flight per CQ ring entry.
const IN_FLIGHT_PER_CQ_ENTRY: usize = 16;

impl URingContext {
    /// Creates a ring with room for `num_entries` queued operations (rounded
    /// up to a power of two; the completion ring gets twice as many).
    ///
    /// With an `allowlist`, the ring is created disabled, the allowlist is
    /// registered as its restrictions, and then it is enabled: from then on
    /// the kernel refuses anything outside it (see [`URingAllowlist`];
    /// Linux 5.10). Without one, the ring is unrestricted (Linux 5.1).
    ///
    /// The same as [`URingBuilder::new(num_entries)`](URingBuilder::new),
    /// with [`allowlist`](URingBuilder::allowlist) if given, built: so
    /// `IORING_SETUP_SUBMIT_ALL` is on where the kernel has it (Linux
    /// 5.18), and an allowlist naming an operation the kernel lacks fails
    /// with [`Error::OperationNotSupported`].
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
        let builder = URingBuilder::new(num_entries);
        match allowlist {
            Some(allowlist) => builder.allowlist(allowlist),
            None => builder,
        }
        .build_in(setup)
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
        let params = io_uring_params {
            flags: setup_flags.bits(),
            ..Default::default()
        };
        Self::create_with(setup, num_entries, params)
    }

    /// [`create`](Self::create), with the setup parameters `params`: its
    /// flags and what they read (`cq_entries` with `CQSIZE`,
    /// `sq_thread_idle` with `SQPOLL`, `sq_thread_cpu` with `SQ_AFF`).
    pub(crate) fn create_with(
        setup: Setup<'_>,
        num_entries: usize,
        mut params: io_uring_params,
    ) -> Result<URingContext> {
        if num_entries == 0 || num_entries > MAX_ENTRIES {
            return Err(Error::EntriesOutOfRange(num_entries));
        }
        let ring = setup(num_entries as u32, &mut params).map_err(setup_error)?;
        let memory = RingMemory::map(&ring, &params).map_err(Error::Mmap)?;
        let in_flight_cap = in_flight_cap(&params);
        // SAFETY: `memory` maps the ring `params` describes; the context
        // built below owns it and drops it after the queues (field order).
        let sq = unsafe { SubmissionQueue::new(&memory, &params) }.map_err(Error::Mmap)?;
        // SAFETY: as above.
        let cq = unsafe { CompletionQueue::new(&memory, &params) }.map_err(Error::Mmap)?;
        Ok(URingContext {
            sq: sq.indices(),
            cq: cq.indices(),
            state: Mutex::new(RingState {
                sq,
                cq,
                table: OpTable::new(),
            }),
            claim_board: ClaimBoard::new(),
            returned: AtomicUsize::new(0),
            internal_ops: AtomicUsize::new(0),
            wake_owed: AtomicBool::new(false),
            required_flags: AtomicU8::new(0),
            can_cancel: AtomicBool::new(true),
            _memory: memory,
            ring,
            sq_entries: params.sq_entries,
            sqpoll: params.flags & IORING_SETUP_SQPOLL != 0,
            cq_entries: params.cq_entries,
            in_flight_cap,
            fork_generation: super::fork::generation(),
            features: FeatureFlags::from_bits_retain(params.features),
            buffers: None,
            buffer_rings: Vec::new(),
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
        // The context's own SQEs carry what the allowlist requires, but
        // only flags that leave them working; a ring that requires another
        // refuses them, and so cannot cancel.
        let required = allowlist.required_sqe_flags();
        let carried = required & OWN_SQE_FLAGS;
        self.required_flags.store(carried.bits(), Ordering::Relaxed);
        self.can_cancel.store(
            allowlist.allows_submit_operation(URingOperation::AsyncCancel) && carried == required,
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
    /// The eventfd counts the kernel's posts, the context's own included:
    /// after an iterator hands completions back, the wake-up nop the
    /// context posts for them signals it too.
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
        unsafe { self.register_value(call, arg, nr_args) }.map(drop)
    }

    /// A register call, returning the kernel's non-negative result.
    ///
    /// # Safety
    ///
    /// `arg` must be what `call` expects for `nr_args` entries, valid for the
    /// duration of the call.
    pub(super) unsafe fn register_value(
        &self,
        call: RegisterOperation,
        arg: *const libc::c_void,
        nr_args: u32,
    ) -> Result<i32> {
        self.check_process()?;
        // SAFETY: forwarded from the caller.
        unsafe { sys::register(&self.ring, call, arg, nr_args) }
            .map_err(|source| Error::Register { call, source })
    }
}
