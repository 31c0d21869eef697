//! The simulated kernel's side of a ring: setup, consuming SQEs, running
//! operations and posting CQEs.

use std::collections::VecDeque;
use std::io;
use std::mem::size_of;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Fault, Region, Shared, World};
use crate::bindings::*;
use crate::context::{MAX_ENTRIES, MAX_IOVECS};
use crate::sys::Mapping;

/// How long a simulated `io_uring_enter` or poll may block before the
/// simulation calls it a hang: a test that waits for a completion that can
/// never come fails instead of blocking forever.
const WATCHDOG: Duration = Duration::from_secs(30);

// The simulated layout: deliberately not the kernel's order, so that code
// which ignored the offsets `io_uring_setup` reports would break.
const SQ_FLAGS: u32 = 0;
const SQ_DROPPED: u32 = 4;
const SQ_RING_ENTRIES: u32 = 8;
const SQ_RING_MASK: u32 = 12;
const SQ_TAIL: u32 = 64;
const SQ_HEAD: u32 = 128;
const SQ_ARRAY: u32 = 192;

const CQ_OVERFLOW: u32 = 0;
const CQ_RING_ENTRIES: u32 = 4;
const CQ_RING_MASK: u32 = 8;
const CQ_FLAGS: u32 = 12;
const CQ_HEAD: u32 = 64;
const CQ_TAIL: u32 = 128;
const CQES: u32 = 192;

/// The SQE flags the kernel knows (`IOSQE_FIXED_FILE` to
/// `IOSQE_CQE_SKIP_SUCCESS`).
const KNOWN_SQE_FLAGS: u8 = (1 << (IOSQE_CQE_SKIP_SUCCESS_BIT + 1)) - 1;

/// Restrictions registered on a ring (`IORING_REGISTER_RESTRICTIONS`).
#[derive(Default)]
struct Restrictions {
    /// Bit `n`: opcode `n` is allowed (`IORING_OP_LAST` <= 64).
    sqe_ops: u64,
    /// Bit `n`: register call `n` is allowed (`IORING_REGISTER_LAST` <= 64).
    register_ops: u64,
    sqe_flags_allowed: u8,
    sqe_flags_required: u8,
}

/// A poll waiting for its pollable to become ready.
struct PendingPoll {
    user_data: u64,
    fd: i32,
    events: u32,
}

/// The kernel's state of one ring.
pub(super) struct RingModel {
    sq_ring: Arc<Region>,
    cq_ring: Arc<Region>,
    sqes: Arc<Region>,
    sq_entries: u32,
    cq_entries: u32,
    /// The kernel's copy of the SQ head (it is the only writer).
    sq_head: u32,
    /// The kernel's copy of the CQ tail (it is the only writer).
    cq_tail: u32,
    disabled: bool,
    restrictions: Option<Restrictions>,
    /// Restrictions registered and the ring enabled: they are enforced.
    restricted: bool,
    eventfd: Option<i32>,
    polls: Vec<PendingPoll>,
    /// Consumed SQEs whose work is held back (see `defer_completions`).
    deferred: Vec<io_uring_sqe>,
    /// Completions that did not fit in the CQ ring (`IORING_FEAT_NODROP`).
    overflow: VecDeque<(u64, i32)>,
    /// A completion was dropped (the kernel's `IO_CHECK_CQ_DROPPED_BIT`):
    /// from then on every enter that would wait fails with `EBADR`. The
    /// kernels this was written against never clear it; neither does the
    /// simulation.
    dropped: bool,
}

impl RingModel {
    /// `io_uring_setup`: sizes the rings, lays them out and reports the
    /// layout in `params`.
    pub(super) fn new(
        entries: u32,
        params: &mut io_uring_params,
        nodrop: bool,
    ) -> io::Result<Self> {
        if entries == 0 || entries as usize > MAX_ENTRIES {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if params.flags & !IORING_SETUP_R_DISABLED != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let sq_entries = entries.next_power_of_two();
        let cq_entries = 2 * sq_entries;
        let sq_ring = Region::new(SQ_ARRAY as usize + sq_entries as usize * size_of::<u32>());
        let cq_ring = Region::new(CQES as usize + cq_entries as usize * size_of::<io_uring_cqe>());
        let sqes = Region::new(sq_entries as usize * size_of::<io_uring_sqe>());
        for (region, offset, value) in [
            (&sq_ring, SQ_RING_ENTRIES, sq_entries),
            (&sq_ring, SQ_RING_MASK, sq_entries - 1),
            (&cq_ring, CQ_RING_ENTRIES, cq_entries),
            (&cq_ring, CQ_RING_MASK, cq_entries - 1),
        ] {
            // SAFETY: `at` checks bounds and alignment; nothing else can
            // reach the region yet.
            unsafe { region.at::<u32>(offset as usize).write(value) };
        }
        params.sq_entries = sq_entries;
        params.cq_entries = cq_entries;
        params.features = if nodrop { IORING_FEAT_NODROP } else { 0 };
        params.sq_off = io_sqring_offsets {
            head: SQ_HEAD,
            tail: SQ_TAIL,
            ring_mask: SQ_RING_MASK,
            ring_entries: SQ_RING_ENTRIES,
            flags: SQ_FLAGS,
            dropped: SQ_DROPPED,
            array: SQ_ARRAY,
            ..Default::default()
        };
        params.cq_off = io_cqring_offsets {
            head: CQ_HEAD,
            tail: CQ_TAIL,
            ring_mask: CQ_RING_MASK,
            ring_entries: CQ_RING_ENTRIES,
            overflow: CQ_OVERFLOW,
            cqes: CQES,
            flags: CQ_FLAGS,
            ..Default::default()
        };
        Ok(RingModel {
            sq_ring: Arc::new(sq_ring),
            cq_ring: Arc::new(cq_ring),
            sqes: Arc::new(sqes),
            sq_entries,
            cq_entries,
            sq_head: 0,
            cq_tail: 0,
            disabled: params.flags & IORING_SETUP_R_DISABLED != 0,
            restrictions: None,
            restricted: false,
            eventfd: None,
            polls: Vec::new(),
            deferred: Vec::new(),
            overflow: VecDeque::new(),
            dropped: false,
        })
    }

    /// Pending polls and held-back work.
    pub(super) fn pending(&self) -> usize {
        self.polls.len() + self.deferred.len()
    }

    /// CQEs posted and not yet consumed by the application.
    fn cq_ready(&self) -> u32 {
        // Acquire pairs with the application's Release store of the head
        // after it read the CQEs: those slots may now be reused.
        let head = self
            .cq_ring
            .atomic(CQ_HEAD as usize)
            .load(Ordering::Acquire);
        self.cq_tail.wrapping_sub(head)
    }

    /// Whether the ring fd would poll readable.
    fn readable(&self) -> bool {
        self.cq_ready() > 0 || !self.overflow.is_empty()
    }

    /// Writes one CQE into the CQ ring, which must have room.
    fn write_cqe(&mut self, user_data: u64, res: i32) {
        let index = (self.cq_tail & (self.cq_entries - 1)) as usize;
        let offset = CQES as usize + index * size_of::<io_uring_cqe>();
        let cqe = io_uring_cqe {
            user_data,
            res,
            ..Default::default()
        };
        // SAFETY: `at` checks bounds and alignment. The slot is outside the
        // range the application may read (`cq_ready` < entries, loaded with
        // Acquire after it last read this slot), so no one else touches it.
        unsafe { self.cq_ring.at::<io_uring_cqe>(offset).write(cqe) };
        self.cq_tail = self.cq_tail.wrapping_add(1);
        // Release: the CQE is visible before the tail that covers it.
        self.cq_ring
            .atomic(CQ_TAIL as usize)
            .store(self.cq_tail, Ordering::Release);
    }

    /// Moves overflowed completions into the CQ ring while it has room;
    /// returns how many.
    fn flush_overflow(&mut self) -> u64 {
        let mut flushed = 0;
        while self.cq_ready() < self.cq_entries {
            let Some((user_data, res)) = self.overflow.pop_front() else {
                break;
            };
            self.write_cqe(user_data, res);
            flushed += 1;
        }
        if self.overflow.is_empty() {
            self.sq_ring
                .atomic(SQ_FLAGS as usize)
                .fetch_and(!IORING_SQ_CQ_OVERFLOW, Ordering::Release);
        }
        flushed
    }

    /// `EACCES` if the restrictions forbid `sqe`.
    fn check_restrictions(&self, sqe: &io_uring_sqe) -> Result<(), i32> {
        let Some(restrictions) = self.restrictions.as_ref().filter(|_| self.restricted) else {
            return Ok(());
        };
        let allowed_op = bit_set(restrictions.sqe_ops, sqe.opcode.into());
        let required = restrictions.sqe_flags_required;
        let permitted = restrictions.sqe_flags_allowed | required;
        if !allowed_op || sqe.flags & required != required || sqe.flags & !permitted != 0 {
            return Err(libc::EACCES);
        }
        Ok(())
    }
}

const _: () = assert!(IORING_OP_LAST <= 64 && IORING_REGISTER_LAST <= 64);

fn bit_set(bits: u64, n: u32) -> bool {
    n < 64 && bits & (1 << n) != 0
}

/// Sets bit `n` of `bits` if `n` is below `last`; returns whether it was.
fn set_bit(bits: &mut u64, n: u8, last: u32) -> bool {
    let valid = u32::from(n) < last;
    if valid {
        *bits |= 1 << n;
    }
    valid
}

/// The ring `id`; panics if it was closed, which the context's drop order
/// rules out while it can still make calls.
fn ring_mut(world: &mut World, id: usize) -> &mut RingModel {
    world.rings[id]
        .as_mut()
        .expect("simulated ring used after close")
}

/// Posts a completion: into the CQ ring, onto the overflow list, or
/// dropped, as the kernel would.
fn post(world: &mut World, id: usize, user_data: u64, res: i32) {
    let nodrop = world.config.nodrop;
    let drop_this = world.overflow_drops > 0;
    let ring = ring_mut(world, id);
    if ring.overflow.is_empty() && ring.cq_ready() < ring.cq_entries {
        ring.write_cqe(user_data, res);
        world.stats.completions_posted += 1;
        return;
    }
    if nodrop && !drop_this {
        ring.overflow.push_back((user_data, res));
        ring.sq_ring
            .atomic(SQ_FLAGS as usize)
            .fetch_or(IORING_SQ_CQ_OVERFLOW, Ordering::Release);
        world.stats.overflowed += 1;
        return;
    }
    ring.cq_ring
        .atomic(CQ_OVERFLOW as usize)
        .fetch_add(1, Ordering::Release);
    if nodrop {
        ring.dropped = true;
        world.overflow_drops -= 1;
        world.stats.faults_injected += 1;
    }
    world.stats.dropped += 1;
}

/// Completes every pending poll of ring `id` on `fd` that waits for one of
/// `ready`.
pub(super) fn fire_polls(world: &mut World, id: usize, fd: i32, ready: u32) {
    let Some(ring) = world.rings[id].as_mut() else {
        return;
    };
    let mut fired = Vec::new();
    ring.polls.retain(|poll| {
        let hit = poll.fd == fd && poll.events & ready != 0;
        if hit {
            fired.push((poll.user_data, (poll.events & ready) as i32));
        }
        !hit
    });
    for (user_data, events) in fired {
        post(world, id, user_data, events);
    }
}

/// Runs up to `max` held-back operations of ring `id`, in a random order;
/// returns how many.
pub(super) fn release_deferred(world: &mut World, id: usize, max: usize) -> usize {
    let mut released = 0;
    while released < max {
        let Some(ring) = world.rings[id].as_mut() else {
            break;
        };
        if ring.deferred.is_empty() {
            break;
        }
        let len = ring.deferred.len();
        let pick = world.random_below(len);
        let sqe = ring_mut(world, id).deferred.swap_remove(pick);
        let res = run(world, &sqe).unwrap_or_else(|errno| -errno);
        post(world, id, sqe.user_data, res);
        released += 1;
    }
    released
}

/// Releases a random, non-zero number of held-back operations of ring `id`,
/// if it has any: the simulation's "the work finished meanwhile".
fn release_some(world: &mut World, id: usize) -> usize {
    let held = ring_mut(world, id).deferred.len();
    if held == 0 {
        return 0;
    }
    let count = 1 + world.random_below(held);
    release_deferred(world, id, count)
}

/// Consumes up to `limit` SQEs of ring `id`; returns how many. Like the
/// kernel, it stops after an SQE it refuses (its completion carries the
/// error).
fn submit(world: &mut World, id: usize, limit: u32) -> u32 {
    let ring = ring_mut(world, id);
    // Acquire pairs with the application's Release store of the tail: the
    // SQEs (and index array entries) it covers are visible.
    let tail = ring
        .sq_ring
        .atomic(SQ_TAIL as usize)
        .load(Ordering::Acquire);
    let available = tail.wrapping_sub(ring.sq_head).min(limit);
    let mask = ring.sq_entries - 1;
    let mut consumed = 0;
    while consumed < available {
        let ring = ring_mut(world, id);
        let position = ring.sq_head & mask;
        let array_offset = SQ_ARRAY as usize + position as usize * size_of::<u32>();
        // SAFETY: `at` checks bounds and alignment; the application wrote
        // this entry before the tail we loaded with Acquire.
        let index = unsafe { ring.sq_ring.at::<u32>(array_offset).read() };
        ring.sq_head = ring.sq_head.wrapping_add(1);
        consumed += 1;
        if index >= ring.sq_entries {
            ring.sq_ring
                .atomic(SQ_DROPPED as usize)
                .fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let sqe_offset = index as usize * size_of::<io_uring_sqe>();
        // SAFETY: as above for the SQE slot; the application does not
        // rewrite it until our Release store of the head below passes it.
        let sqe = unsafe { ring.sqes.at::<io_uring_sqe>(sqe_offset).read() };
        world.stats.sqes_consumed += 1;
        let user_data = sqe.user_data;
        if let Err(errno) = issue(world, id, sqe) {
            post(world, id, user_data, -errno);
            break;
        }
    }
    let ring = ring_mut(world, id);
    // Release: our reads of the consumed SQEs happen before the application
    // may reuse their slots.
    ring.sq_ring
        .atomic(SQ_HEAD as usize)
        .store(ring.sq_head, Ordering::Release);
    consumed
}

/// Checks one consumed SQE as `io_init_req` does and starts it: completes
/// it, holds it back, or leaves it pending. An `Err` is a refusal that
/// stops submission.
fn issue(world: &mut World, id: usize, sqe: io_uring_sqe) -> Result<(), i32> {
    if sqe.opcode as u32 >= IORING_OP_LAST || sqe.flags & !KNOWN_SQE_FLAGS != 0 {
        return Err(libc::EINVAL);
    }
    ring_mut(world, id).check_restrictions(&sqe)?;
    let user_data = sqe.user_data;
    // SAFETY: every variant of these unions is a plain integer.
    let (addr, poll_events) = unsafe {
        (
            sqe.__bindgen_anon_2.addr,
            sqe.__bindgen_anon_3.poll32_events,
        )
    };
    match sqe.opcode as u32 {
        IORING_OP_POLL_ADD => {
            let ready = if world.files.contains_key(&sqe.fd) {
                (libc::POLLIN | libc::POLLOUT) as u32
            } else if let Some(&ready) = world.pollables.get(&sqe.fd) {
                ready
            } else {
                post(world, id, user_data, -libc::EBADF);
                return Ok(());
            };
            if ready & poll_events != 0 {
                post(world, id, user_data, (ready & poll_events) as i32);
            } else {
                ring_mut(world, id).polls.push(PendingPoll {
                    user_data,
                    fd: sqe.fd,
                    events: poll_events,
                });
            }
        }
        IORING_OP_POLL_REMOVE | IORING_OP_ASYNC_CANCEL => {
            let polls_only = sqe.opcode as u32 == IORING_OP_POLL_REMOVE;
            let ring = ring_mut(world, id);
            let found = if let Some(i) = ring.polls.iter().position(|p| p.user_data == addr) {
                ring.polls.swap_remove(i);
                true
            } else if let Some(i) = ring
                .deferred
                .iter()
                .position(|d| !polls_only && d.user_data == addr)
            {
                ring.deferred.swap_remove(i);
                true
            } else {
                false
            };
            if found {
                // The kernel does not order the two completions; neither
                // does the simulation.
                if world.random() % 2 == 0 {
                    post(world, id, addr, -libc::ECANCELED);
                    post(world, id, user_data, 0);
                } else {
                    post(world, id, user_data, 0);
                    post(world, id, addr, -libc::ECANCELED);
                }
            } else {
                post(world, id, user_data, -libc::ENOENT);
            }
        }
        IORING_OP_NOP | IORING_OP_READV | IORING_OP_WRITEV | IORING_OP_FSYNC
        | IORING_OP_FALLOCATE => {
            let forced_async = sqe.flags & (1 << IOSQE_ASYNC_BIT) != 0;
            if world.config.defer_completions || forced_async {
                ring_mut(world, id).deferred.push(sqe);
            } else {
                let res = run(world, &sqe).unwrap_or_else(|errno| -errno);
                post(world, id, user_data, res);
            }
        }
        _ => post(world, id, user_data, -libc::EINVAL),
    }
    Ok(())
}

/// Does the work of a nop, readv, writev, fsync or fallocate; returns its
/// result.
fn run(world: &mut World, sqe: &io_uring_sqe) -> Result<i32, i32> {
    if sqe.opcode as u32 == IORING_OP_NOP {
        return Ok(0);
    }
    // SAFETY: every variant of these unions is a plain integer.
    let (offset, addr) = unsafe { (sqe.__bindgen_anon_1.off, sqe.__bindgen_anon_2.addr) };
    let file = world.files.get_mut(&sqe.fd).ok_or(libc::EBADF)?;
    match sqe.opcode as u32 {
        IORING_OP_FSYNC => Ok(0),
        IORING_OP_FALLOCATE => {
            // For fallocate, `len` carries the mode and `addr` the length.
            let end = offset.checked_add(addr).ok_or(libc::EINVAL)?;
            let end = usize::try_from(end).map_err(|_| libc::EFBIG)?;
            let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
            match sqe.len {
                0 if end > file.data.len() => file.data.resize(end, 0),
                0 => {}
                mode if mode == punch => {
                    let start = (offset as usize).min(file.data.len());
                    let end = end.min(file.data.len());
                    file.data[start..end].fill(0);
                }
                _ => return Err(libc::EOPNOTSUPP),
            }
            Ok(0)
        }
        opcode => {
            if sqe.len as usize > MAX_IOVECS {
                return Err(libc::EINVAL);
            }
            let at_position = offset == u64::MAX;
            let start = if at_position { file.position } else { offset };
            let start = usize::try_from(start).map_err(|_| libc::EINVAL)?;
            // The address in the SQE is the only link back to the iovec
            // array: turning it into a pointer takes the provenance the
            // context exposed when it wrote the address.
            let iovecs = addr as usize as *const libc::iovec;
            let mut done = 0usize;
            for i in 0..sqe.len as usize {
                // SAFETY: the context keeps the iovec array of `len` entries
                // alive and unmoved until this operation's completion is
                // reaped, which happens after this runs.
                let iov = unsafe { iovecs.add(i).read() };
                let at = start + done;
                let base = iov.iov_base.cast::<u8>();
                if opcode == IORING_OP_READV {
                    let n = iov.iov_len.min(file.data.len().saturating_sub(at));
                    // SAFETY: the caller of `add_readv` promised that each
                    // iovec is valid for writes and untouched by anything
                    // else until the completion; `n` is within both it and
                    // the file's data, a separate allocation.
                    unsafe { std::ptr::copy_nonoverlapping(file.data.as_ptr().add(at), base, n) };
                    done += n;
                    if n < iov.iov_len {
                        break; // End of file.
                    }
                } else {
                    let end = at + iov.iov_len;
                    if end > file.data.len() {
                        file.data.resize(end, 0);
                    }
                    // SAFETY: the caller of `add_writev` promised that each
                    // iovec is valid for reads until the completion; the
                    // destination was just sized to hold it.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            base,
                            file.data.as_mut_ptr().add(at),
                            iov.iov_len,
                        )
                    };
                    done += iov.iov_len;
                }
            }
            if at_position {
                file.position += done as u64;
            }
            Ok(done as i32)
        }
    }
}

/// The context's handle on a simulated ring: what a ring fd is to the real
/// kernel. Dropping it closes the ring; the kernel forgets its pending
/// work without posting completions.
pub(crate) struct SimRing {
    shared: Arc<Shared>,
    id: usize,
}

impl SimRing {
    pub(super) fn new(shared: Arc<Shared>, id: usize) -> SimRing {
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

    /// `mmap` of the ring at one of the magic offsets.
    pub(crate) fn map(&self, offset: u64, len: usize) -> io::Result<Mapping> {
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
        Ok(Mapping::simulated(Arc::clone(region), len))
    }

    /// `io_uring_enter`.
    pub(crate) fn enter(&self, to_submit: u32, min_complete: u32, flags: u32) -> io::Result<u32> {
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
        let submitted = submit(&mut world, self.id, to_submit.min(limit));
        self.shared.posted.notify_all();
        if flags & IORING_ENTER_GETEVENTS == 0 {
            return Ok(submitted);
        }
        let ring = ring_mut(&mut world, self.id);
        let wanted = min_complete.min(ring.cq_entries);
        let flushed = ring.flush_overflow();
        world.stats.completions_posted += flushed;
        let started = Instant::now();
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
            world = self.block(world, None, started);
            let flushed = ring_mut(&mut world, self.id).flush_overflow();
            world.stats.completions_posted += flushed;
        }
        Ok(submitted)
    }

    /// `poll` of the ring fd for `POLLIN`, for up to `timeout_ms` (negative:
    /// no limit). Returns whether it became readable.
    pub(crate) fn poll_readable(&self, timeout_ms: i32) -> bool {
        let started = Instant::now();
        let deadline = u64::try_from(timeout_ms)
            .ok()
            .map(|ms| started + Duration::from_millis(ms));
        let mut world = self.shared.world();
        loop {
            if ring_mut(&mut world, self.id).readable() {
                return true;
            }
            if release_some(&mut world, self.id) > 0 {
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
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
    pub(crate) unsafe fn register(
        &self,
        opcode: u32,
        arg: *const libc::c_void,
        nr_args: u32,
    ) -> io::Result<i32> {
        let errno = |e| Err(io::Error::from_raw_os_error(e));
        let mut world = self.shared.world();
        let ring = ring_mut(&mut world, self.id);
        if ring.restricted {
            let allowed = ring
                .restrictions
                .as_ref()
                .is_some_and(|r| bit_set(r.register_ops, opcode));
            if opcode >= IORING_REGISTER_LAST {
                return errno(libc::EINVAL);
            }
            if !allowed {
                return errno(libc::EACCES);
            }
        }
        match opcode {
            IORING_REGISTER_RESTRICTIONS => {
                if !ring.disabled {
                    return errno(libc::EBADFD);
                }
                if ring.restrictions.is_some() {
                    return errno(libc::EBUSY);
                }
                if arg.is_null() {
                    return errno(libc::EINVAL);
                }
                // SAFETY: the caller passes `nr_args` restrictions at `arg`.
                let entries = unsafe {
                    std::slice::from_raw_parts(arg.cast::<io_uring_restriction>(), nr_args as usize)
                };
                let mut parsed = Restrictions::default();
                for entry in entries {
                    // SAFETY: every variant of this union is a `u8`.
                    let value = unsafe { entry.__bindgen_anon_1.register_op };
                    let ok = match u32::from(entry.opcode) {
                        IORING_RESTRICTION_REGISTER_OP => {
                            set_bit(&mut parsed.register_ops, value, IORING_REGISTER_LAST)
                        }
                        IORING_RESTRICTION_SQE_OP => {
                            set_bit(&mut parsed.sqe_ops, value, IORING_OP_LAST)
                        }
                        IORING_RESTRICTION_SQE_FLAGS_ALLOWED => {
                            parsed.sqe_flags_allowed = value;
                            true
                        }
                        IORING_RESTRICTION_SQE_FLAGS_REQUIRED => {
                            parsed.sqe_flags_required = value;
                            true
                        }
                        _ => false,
                    };
                    if !ok {
                        return errno(libc::EINVAL);
                    }
                }
                ring.restrictions = Some(parsed);
                Ok(0)
            }
            IORING_REGISTER_ENABLE_RINGS => {
                if !ring.disabled {
                    return errno(libc::EBADFD);
                }
                ring.restricted = ring.restrictions.is_some();
                ring.disabled = false;
                Ok(0)
            }
            IORING_REGISTER_EVENTFD => {
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
            IORING_UNREGISTER_EVENTFD => match ring.eventfd.take() {
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
        self.shared.world().rings[self.id] = None;
        self.shared.posted.notify_all();
    }
}
