//! The simulated kernel's side of a ring: its memory and layout, posting
//! CQEs, and its overflow list (`ops.rs` consumes SQEs and runs operations;
//! `backend.rs` is the ring as the context's `sys` layer sees it).

mod backend;
mod cancel;
mod chains;
mod ops;

pub(crate) use backend::SimRing;

use std::collections::VecDeque;
use std::io;
use std::mem::size_of;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Region, World};
use crate::abi::{Cqe, CqeFlags, IosqeFlags, Sqe, URingOperation, MAX_ENTRIES};
use crate::bindings::*;

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

/// Restrictions registered on a ring (`IORING_REGISTER_RESTRICTIONS`).
#[derive(Default)]
pub(super) struct Restrictions {
    /// Bit `n`: opcode `n` is allowed ([`OP_LAST`] <= 64).
    pub(super) sqe_ops: u64,
    /// Bit `n`: register call `n` is allowed (`IORING_REGISTER_LAST` <= 64).
    pub(super) register_ops: u64,
    pub(super) sqe_flags_allowed: IosqeFlags,
    pub(super) sqe_flags_required: IosqeFlags,
}

/// A poll waiting for its pollable to become ready.
pub(super) struct PendingPoll {
    pub(super) user_data: u64,
    pub(super) fd: i32,
    pub(super) events: u32,
    /// `IORING_POLL_ADD_MULTI`: it stays pending after it fires.
    pub(super) multishot: bool,
}

/// The kernel's state of one ring.
pub(super) struct RingModel {
    pub(super) sq_ring: Arc<Region>,
    pub(super) cq_ring: Arc<Region>,
    pub(super) sqes: Arc<Region>,
    pub(super) sq_entries: u32,
    pub(super) cq_entries: u32,
    /// The kernel's copy of the SQ head (it is the only writer).
    pub(super) sq_head: u32,
    /// The kernel's copy of the CQ tail (it is the only writer).
    pub(super) cq_tail: u32,
    pub(super) disabled: bool,
    pub(super) restrictions: Option<Restrictions>,
    pub(super) eventfd: Option<i32>,
    pub(super) polls: Vec<PendingPoll>,
    /// Consumed SQEs whose work is held back (see `defer_completions`).
    pub(super) deferred: Vec<Sqe>,
    /// Chains whose head has started, the rest waiting for it.
    pub(super) chains: Vec<chains::Chain>,
    /// Pending timeouts.
    pub(super) timeouts: Vec<chains::PendingTimeout>,
    /// Completions that did not fit in the CQ ring (`IORING_FEAT_NODROP`).
    pub(super) overflow: VecDeque<(u64, i32)>,
    /// A completion was dropped (the kernel's `IO_CHECK_CQ_DROPPED_BIT`):
    /// from then on every enter that would wait fails with `EBADR`. The
    /// kernels this was written against never clear it; neither does the
    /// simulation.
    pub(super) dropped: bool,
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
            eventfd: None,
            polls: Vec::new(),
            deferred: Vec::new(),
            chains: Vec::new(),
            timeouts: Vec::new(),
            overflow: VecDeque::new(),
            dropped: false,
        })
    }

    /// Pending polls and held-back work.
    pub(super) fn pending(&self) -> usize {
        let chained: usize = self.chains.iter().map(chains::Chain::held).sum();
        self.polls.len() + self.deferred.len() + self.timeouts.len() + chained
    }

    /// CQEs posted and not yet consumed by the application.
    pub(super) fn cq_ready(&self) -> u32 {
        // Acquire pairs with the application's Release store of the head
        // after it read the CQEs: those slots may now be reused.
        let head = self
            .cq_ring
            .atomic(CQ_HEAD as usize)
            .load(Ordering::Acquire);
        self.cq_tail.wrapping_sub(head)
    }

    /// Whether the ring fd would poll readable.
    pub(super) fn readable(&self) -> bool {
        self.cq_ready() > 0 || !self.overflow.is_empty()
    }

    /// Whether a CQE can go straight into the CQ ring: it has room, and
    /// no overflowed completion waits to go first.
    fn cq_has_room(&self) -> bool {
        self.overflow.is_empty() && self.cq_ready() < self.cq_entries
    }

    /// Writes one CQE into the CQ ring, which must have room.
    fn write_cqe(&mut self, user_data: u64, res: i32, flags: CqeFlags) {
        let index = (self.cq_tail & (self.cq_entries - 1)) as usize;
        let offset = CQES as usize + index * size_of::<io_uring_cqe>();
        let cqe = Cqe {
            user_data,
            res,
            flags,
        };
        // SAFETY: `at` checks bounds and alignment. The slot is outside the
        // range the application may read (`cq_ready` < entries, loaded with
        // Acquire after it last read this slot), so no one else touches it.
        unsafe { self.cq_ring.at::<io_uring_cqe>(offset).write(cqe.to_raw()) };
        self.cq_tail = self.cq_tail.wrapping_add(1);
        // Release: the CQE is visible before the tail that covers it.
        self.cq_ring
            .atomic(CQ_TAIL as usize)
            .store(self.cq_tail, Ordering::Release);
    }

    /// Moves overflowed completions into the CQ ring while it has room;
    /// returns how many.
    pub(super) fn flush_overflow(&mut self) -> u64 {
        let mut flushed = 0;
        while self.cq_ready() < self.cq_entries {
            let Some((user_data, res)) = self.overflow.pop_front() else {
                break;
            };
            self.write_cqe(user_data, res, CqeFlags::empty());
            flushed += 1;
        }
        if self.overflow.is_empty() {
            self.sq_ring
                .atomic(SQ_FLAGS as usize)
                .fetch_and(!IORING_SQ_CQ_OVERFLOW, Ordering::Release);
        }
        flushed
    }

    /// Whether restrictions are enforced: registered, and the ring enabled
    /// (they can only be registered while it is disabled).
    pub(super) fn restricted(&self) -> bool {
        !self.disabled && self.restrictions.is_some()
    }

    /// `EACCES` if the restrictions forbid `sqe`.
    pub(super) fn check_restrictions(&self, sqe: &Sqe) -> Result<(), i32> {
        let Some(restrictions) = self.restrictions.as_ref().filter(|_| self.restricted()) else {
            return Ok(());
        };
        let allowed_op = bit_set(restrictions.sqe_ops, sqe.opcode().into());
        let required = restrictions.sqe_flags_required;
        let permitted = restrictions.sqe_flags_allowed | required;
        if !allowed_op || !sqe.flags().contains(required) || !permitted.contains(sqe.flags()) {
            return Err(libc::EACCES);
        }
        Ok(())
    }
}

/// One past the highest opcode the simulated kernel knows: every one the
/// crate names, as a kernel of Linux 6.16 or later knows them.
pub(super) const OP_LAST: u32 = URingOperation::ALL.len() as u32;

const _: () = assert!(OP_LAST <= 64 && IORING_REGISTER_LAST <= 64);

pub(super) fn bit_set(bits: u64, n: u32) -> bool {
    n < 64 && bits & (1 << n) != 0
}

/// Sets bit `n` of `bits` if `n` is below `last`; returns whether it was.
pub(super) fn set_bit(bits: &mut u64, n: u8, last: u32) -> bool {
    let valid = u32::from(n) < last;
    if valid {
        *bits |= 1 << n;
    }
    valid
}

/// The ring `id`; panics if it was closed, which the context's drop order
/// rules out while it can still make calls.
pub(super) fn ring_mut(world: &mut World, id: usize) -> &mut RingModel {
    world.rings[id]
        .as_mut()
        .expect("simulated ring used after close")
}

/// Completes an operation: posts its completion, then continues the chain
/// it heads and counts it for timeouts waiting on a count.
pub(super) fn post(world: &mut World, id: usize, user_data: u64, res: i32) {
    post_cqe(world, id, user_data, res);
    chains::on_posted(world, id, user_data, res);
}

/// Posts a completion: into the CQ ring, onto the overflow list, or
/// dropped, as the kernel would.
fn post_cqe(world: &mut World, id: usize, user_data: u64, res: i32) {
    let nodrop = world.config.nodrop;
    let drop_this = world.overflow_drops > 0;
    let ring = ring_mut(world, id);
    if ring.cq_has_room() {
        ring.write_cqe(user_data, res, CqeFlags::empty());
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

/// Posts a multishot operation's completion with `IORING_CQE_F_MORE`, if
/// the CQ ring has room for it; returns whether it did. Like the kernel
/// (measured on Linux 6.18, `tests/multishot.rs`), it never overflows one:
/// without room, the operation ends with a completion without MORE.
pub(super) fn post_more(world: &mut World, id: usize, user_data: u64, res: i32) -> bool {
    let ring = ring_mut(world, id);
    if !ring.cq_has_room() {
        return false;
    }
    ring.write_cqe(user_data, res, CqeFlags::MORE);
    world.stats.completions_posted += 1;
    true
}

/// Completes every pending poll of ring `id` on `fd` that waits for one of
/// `ready`. A multishot poll posts a completion with MORE and stays
/// pending, unless the CQ ring has no room: then it ends, with a
/// completion without MORE.
pub(super) fn fire_polls(world: &mut World, id: usize, fd: i32, ready: u32) {
    let Some(ring) = world.rings[id].as_mut() else {
        return;
    };
    let mut fired = Vec::new();
    ring.polls.retain(|poll| {
        let hit = poll.fd == fd && poll.events & ready != 0;
        if hit {
            let events = (poll.events & ready) as i32;
            fired.push((poll.user_data, events, poll.multishot));
        }
        !hit || poll.multishot
    });
    for (user_data, events, multishot) in fired {
        if multishot {
            if post_more(world, id, user_data, events) {
                continue;
            }
            let ring = ring_mut(world, id);
            ring.polls.retain(|poll| poll.user_data != user_data);
        }
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
        let res = ops::run(world, &sqe).unwrap_or_else(|errno| -errno);
        post(world, id, sqe.user_data(), res);
        released += 1;
    }
    released
}

/// Releases a random, non-zero number of held-back operations of ring `id`,
/// if it has any: the simulation's "the work finished meanwhile".
pub(super) fn release_some(world: &mut World, id: usize) -> usize {
    let held = ring_mut(world, id).deferred.len();
    if held == 0 {
        return 0;
    }
    let count = 1 + world.random_below(held);
    release_deferred(world, id, count)
}

/// Fires every timer of ring `id` (see [`chains::fire_timeouts`]).
pub(super) fn fire_timeouts(world: &mut World, id: usize) -> usize {
    chains::fire_timeouts(world, id)
}
