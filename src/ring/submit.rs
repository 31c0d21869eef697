use std::io;
use std::sync::atomic::{fence, AtomicU32, Ordering};

use super::{QueuePointers, RingMemory};
use crate::abi::{Sqe, URingOperation};
use crate::bindings::{io_uring_params, io_uring_sqe, IORING_SQ_NEED_WAKEUP};

/// The submission side of a ring.
///
/// Invariants:
/// - every pointer points into the [`RingMemory`] the queue was created from,
///   which outlives it (see [`SubmissionQueue::new`]);
/// - `tail` is the last value stored to the shared SQ tail: this queue is the
///   only writer of the tail and of the SQE slots, and the caller serialises
///   access through `&mut self`;
/// - the slots from the kernel's head up to `tail` belong to the kernel until
///   it advances its head past them; we only write slots outside that range.
pub(crate) struct SubmissionQueue {
    /// The shared head and tail.
    indices: SqIndices,
    sqes: *mut io_uring_sqe,
    mask: u32,
    entries: u32,
    tail: u32,
    /// The kernel's head when last loaded: at or behind the real one, as
    /// the kernel only moves it forward. Loading the real one touches a
    /// cache line the kernel writes, so adds use this until the queue looks
    /// full.
    cached_head: u32,
}

/// Proof that the `count` SQE slots from `tail` on are free, handed out by
/// [`SubmissionQueue::free_slots`] and consumed by
/// [`SubmissionQueue::publish`]. It stays valid while the ring lock is
/// held: only the kernel moves the head, and only forward, which frees slots
/// and never takes one back.
#[must_use]
pub(crate) struct FreeSlots {
    tail: u32,
    count: u32,
}

impl SubmissionQueue {
    /// # Safety
    ///
    /// `memory` must be the mapping of the ring `params` describes, and the
    /// returned queue must not be used after `memory` is dropped.
    pub(crate) unsafe fn new(memory: &RingMemory, params: &io_uring_params) -> io::Result<Self> {
        let ring = QueuePointers::new(&memory.sq_ring);
        let off = &params.sq_off;
        let entries = ring.ring_size(off.ring_entries, off.ring_mask, params.sq_entries, "SQ")?;
        let array = ring.array::<u32>(off.array, entries)?;
        for i in 0..entries {
            // SAFETY: `array` holds `entries` u32s (checked by `array`). The
            // kernel reads the index array only for slots between its head and
            // our published tail, and nothing is published yet.
            unsafe { array.add(i as usize).write(i) };
        }
        let head = ring.field::<AtomicU32>(off.head)?;
        let tail_ptr = ring.field::<AtomicU32>(off.tail)?;
        // SAFETY: in bounds and aligned (checked above); nothing is
        // published yet, so the kernel does not touch the tail.
        let tail = unsafe { (*tail_ptr).load(Ordering::Relaxed) };
        Ok(SubmissionQueue {
            indices: SqIndices {
                head,
                tail: tail_ptr,
                flags: ring.field::<AtomicU32>(off.flags)?,
            },
            sqes: QueuePointers::new(&memory.sqes).array(0, entries)?,
            mask: entries - 1,
            entries,
            tail,
            cached_head: tail,
        })
    }

    /// A reader of the queue's indices that needs no lock.
    pub(crate) fn indices(&self) -> SqIndices {
        self.indices
    }

    /// The next `count` free slots, or `None` when fewer than `count` are
    /// free (the rest still wait for the kernel).
    pub(crate) fn free_slots(&mut self, count: u32) -> Option<FreeSlots> {
        let free = |queue: &Self| queue.entries - queue.tail.wrapping_sub(queue.cached_head);
        if free(self) < count {
            self.cached_head = self.indices.kernel_head();
        }
        (free(self) >= count).then_some(FreeSlots {
            tail: self.tail,
            count,
        })
    }

    /// Turns every SQE published but not yet consumed into a nop with the
    /// same user_data, so that it completes without doing anything.
    ///
    /// # Safety
    ///
    /// No `io_uring_enter` on this ring may run until this returns, and the
    /// ring must not have a kernel thread polling its SQ (SQPOLL): the
    /// kernel reads published SQEs only inside an enter, and the caller
    /// must be sure none is in progress (drop and `close` have the context
    /// to themselves).
    pub(crate) unsafe fn replace_queued_with_nops(&mut self) {
        let head = self.indices.kernel_head();
        for i in 0..self.tail.wrapping_sub(head) {
            let index = (head.wrapping_add(i) & self.mask) as usize;
            // SAFETY: the masked index is inside the SQE array. The slot is
            // published, but the caller guarantees the kernel is not reading
            // it (no enter runs), and `&mut self` that no other thread
            // writes it. A whole new SQE is written, because a nop reads its
            // flags from fields an operation may have set.
            unsafe {
                let slot = self.sqes.add(index);
                let mut nop = Sqe::new(URingOperation::Nop);
                nop.set_user_data((*slot).user_data);
                slot.write(nop.into_raw());
            }
        }
    }

    /// Writes `sqes` into `slots` and publishes them to the kernel with one
    /// store of the tail.
    pub(crate) fn publish<'a>(&mut self, slots: FreeSlots, sqes: impl Iterator<Item = &'a Sqe>) {
        assert_eq!(slots.tail, self.tail, "FreeSlots were used twice");
        let mut tail = self.tail;
        for sqe in sqes {
            // Checked per SQE rather than trusting `len`: a slot past the
            // proven ones may still belong to the kernel.
            assert!(
                tail.wrapping_sub(self.tail) < slots.count,
                "more SQEs than FreeSlots"
            );
            let index = (tail & self.mask) as usize;
            // SAFETY: `index < entries` (masked), so the slot is inside the
            // SQE array. `FreeSlots` proves the slot is outside the kernel's
            // range (checked just above) and `&mut self` that no other
            // thread writes it. `sqe` is a valid SQE that cannot overlap
            // ring memory (it is a Rust reference).
            unsafe { std::ptr::copy_nonoverlapping(sqe.as_raw(), self.sqes.add(index), 1) };
            tail = tail.wrapping_add(1);
        }
        assert_eq!(
            tail.wrapping_sub(self.tail),
            slots.count,
            "fewer SQEs than FreeSlots"
        );
        self.tail = tail;
        // SAFETY: the tail points into live ring memory (type invariant).
        // Release pairs with the kernel's `smp_load_acquire` of the tail in
        // `io_sqring_entries`: the SQEs written above are visible to it
        // before the new tail is.
        unsafe { (*self.indices.tail).store(self.tail, Ordering::Release) };
    }
}

/// Reads the SQ indices without the ring lock, for decisions that only
/// need a recent value: the kernel's head and the tail we published.
///
/// Invariant: every pointer points into the ring memory of the
/// [`SubmissionQueue`] it came from, and it is used only while that memory
/// lives (the context drops the memory last).
#[derive(Clone, Copy)]
pub(crate) struct SqIndices {
    head: *const AtomicU32,
    tail: *const AtomicU32,
    /// The SQ ring's flags (`IORING_SQ_*`), which the kernel writes.
    flags: *const AtomicU32,
}

impl SqIndices {
    /// The kernel's SQ head: every slot before it has been consumed.
    pub(crate) fn kernel_head(&self) -> u32 {
        // SAFETY: `head` points into live ring memory (type invariant).
        // Acquire pairs with the kernel's `smp_store_release` of the head in
        // `io_commit_sqring`: its reads of the slots it consumed happen
        // before we overwrite them.
        unsafe { (*self.head).load(Ordering::Acquire) }
    }

    /// Whether the kernel's SQ polling thread has gone to sleep
    /// (`IORING_SQ_NEED_WAKEUP`): SQEs published now wait until an enter
    /// with `IORING_ENTER_SQ_WAKEUP` wakes it. Only meaningful on an
    /// `IORING_SETUP_SQPOLL` ring.
    pub(crate) fn sq_thread_sleeps(&self) -> bool {
        // A full fence between our Release store of the tail (in `publish`,
        // or another thread's) and this load, as liburing's
        // `sq_ring_needs_enter` has: the SQ thread sets NEED_WAKEUP, then
        // runs `smp_mb` and looks at the tail once more before it sleeps.
        // Either it sees our tail, or we see its flag; never neither.
        fence(Ordering::SeqCst);
        // SAFETY: `flags` points into live ring memory (type invariant).
        let flags = unsafe { (*self.flags).load(Ordering::Relaxed) };
        flags & IORING_SQ_NEED_WAKEUP != 0
    }

    /// SQEs published and not yet consumed by the kernel, as of the last
    /// publish that happened before this call, and the kernel's head they
    /// were counted from (one load, so the two agree).
    pub(crate) fn queued(&self) -> (u32, u32) {
        let head = self.kernel_head();
        // SAFETY: `tail` points into live ring memory (type invariant); only
        // the submission queue writes it, with Release, so Acquire sees
        // every publish that happened before this call.
        let tail = unsafe { (*self.tail).load(Ordering::Acquire) };
        (tail.wrapping_sub(head), head)
    }
}

// SAFETY: the indices only load atomics in ring memory, which has no thread
// affinity and outlives them (type invariant).
unsafe impl Send for SqIndices {}
// SAFETY: as above; `&SqIndices` only loads.
unsafe impl Sync for SqIndices {}

// SAFETY: the raw pointers point into ring memory that is not tied to a
// thread; all mutation goes through `&mut self` (so it is serialised by the
// owner's lock) or through atomics.
unsafe impl Send for SubmissionQueue {}
