use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{QueuePointers, RingMemory};
use crate::abi::Cqe;
use crate::bindings::{io_uring_cqe, io_uring_params, IORING_SQ_CQ_OVERFLOW};

/// The completion side of a ring: the CQ head, which we alone move, and the
/// kernel's indices and flags we read.
///
/// Invariants:
/// - every pointer points into the [`RingMemory`] the queue was created
///   from, which outlives it (see [`CompletionQueue::new`]);
/// - this is the only writer of the CQ head, and the caller serialises
///   access through `&mut self`.
pub(crate) struct CompletionQueue {
    indices: CqIndices,
    cqes: *const io_uring_cqe,
    mask: u32,
    /// The kernel's dropped-completion counter when last reported.
    dropped_reported: u32,
}

impl CompletionQueue {
    /// # Safety
    ///
    /// `memory` must be the mapping of the ring `params` describes, and the
    /// returned queue must not be used after `memory` is dropped.
    pub(crate) unsafe fn new(memory: &RingMemory, params: &io_uring_params) -> io::Result<Self> {
        let ring = QueuePointers::new(&memory.cq_ring);
        let off = &params.cq_off;
        let entries = ring.ring_size(off.ring_entries, off.ring_mask, params.cq_entries, "CQ")?;
        Ok(CompletionQueue {
            indices: CqIndices {
                head: ring.field::<AtomicU32>(off.head)?,
                tail: ring.field::<AtomicU32>(off.tail)?,
                overflow: ring.field::<AtomicU32>(off.overflow)?,
                sq_flags: QueuePointers::new(&memory.sq_ring)
                    .field::<AtomicU32>(params.sq_off.flags)?,
            },
            cqes: ring.array::<io_uring_cqe>(off.cqes, entries)?,
            mask: entries - 1,
            dropped_reported: 0,
        })
    }

    /// A reader of the queue's indices that needs no lock.
    pub(crate) fn indices(&self) -> CqIndices {
        self.indices
    }

    /// Our head and the kernel's tail.
    fn head_and_tail(&self) -> (u32, u32) {
        // SAFETY: `head` and `tail` point into live ring memory (type
        // invariant). Only we write the head, so Relaxed reads our own last
        // store. Acquire on the tail pairs with the kernel's
        // `smp_store_release` of the tail after it wrote the CQEs.
        unsafe {
            (
                (*self.indices.head).load(Ordering::Relaxed),
                (*self.indices.tail).load(Ordering::Acquire),
            )
        }
    }

    /// CQEs posted and not yet popped.
    pub(crate) fn ready(&self) -> u32 {
        let (head, tail) = self.head_and_tail();
        tail.wrapping_sub(head)
    }

    /// Whether the kernel dropped completions since the last call that
    /// returned true: each loss is reported once.
    pub(crate) fn take_new_drops(&mut self) -> bool {
        let dropped = self.indices.dropped();
        let new = dropped != self.dropped_reported;
        self.dropped_reported = dropped;
        new
    }

    /// The oldest CQE not yet popped, read but left in the ring.
    pub(crate) fn peek(&self) -> Option<Cqe> {
        let (head, tail) = self.head_and_tail();
        if head == tail {
            return None;
        }
        let index = (head & self.mask) as usize;
        // SAFETY: as in `pop_each`: the masked index is inside the CQE
        // array, and the kernel wrote this CQE before the tail we loaded
        // with Acquire covered it; it stays until we move the head.
        Some(unsafe { Cqe::read(self.cqes.add(index)) })
    }

    /// Pops up to `max` CQEs, oldest first, handing each to `each`, with
    /// one Acquire load of the tail and one Release store of the head for
    /// all; returns how many.
    #[inline]
    pub(crate) fn pop_each(&mut self, max: usize, mut each: impl FnMut(Cqe)) -> usize {
        let (head, tail) = self.head_and_tail();
        let take = (tail.wrapping_sub(head) as usize).min(max);
        for i in 0..take {
            let index = (head.wrapping_add(i as u32) & self.mask) as usize;
            // SAFETY: the masked index is inside the CQE array. The kernel
            // wrote this CQE before the tail we loaded with Acquire covered
            // it, and will not overwrite it until we move the head past it
            // below. `Cqe::read` copies the fields through the raw pointer.
            each(unsafe { Cqe::read(self.cqes.add(index)) });
        }
        if take > 0 {
            // SAFETY: `head` points into live ring memory. Release orders our
            // reads of the CQEs before the kernel can see their slots as
            // free (it reads the head before reusing a slot).
            unsafe {
                (*self.indices.head).store(head.wrapping_add(take as u32), Ordering::Release)
            };
        }
        take
    }
}

/// Reads the CQ indices, the overflow counter and the SQ flags without the
/// ring lock, for decisions that only need a recent value (whether to
/// wait, whether completions were lost).
///
/// Invariant: every pointer points into the ring memory of the
/// [`CompletionQueue`] it came from, and it is used only while that memory
/// lives (the context drops the memory last).
#[derive(Clone, Copy)]
pub(crate) struct CqIndices {
    head: *const AtomicU32,
    tail: *const AtomicU32,
    overflow: *const AtomicU32,
    sq_flags: *const AtomicU32,
}

impl CqIndices {
    /// CQEs posted and not yet popped, as of recent loads of both indices.
    pub(crate) fn ready(&self) -> u32 {
        // SAFETY: both point into live ring memory (type invariant). Acquire
        // on our head pairs with the Release store in `pop_each` made by
        // another thread; Acquire on the kernel's tail pairs with its
        // `smp_store_release`. The result is a hint: either may move on.
        let (head, tail) = unsafe {
            (
                (*self.head).load(Ordering::Acquire),
                (*self.tail).load(Ordering::Acquire),
            )
        };
        tail.wrapping_sub(head)
    }

    /// Completions the kernel dropped because the CQ ring was full and it
    /// could not keep them (only without `IORING_FEAT_NODROP`, or when the
    /// kernel could not allocate an overflow entry).
    pub(crate) fn dropped(&self) -> u32 {
        // SAFETY: `overflow` points into live ring memory (type invariant);
        // the kernel updates it atomically.
        unsafe { (*self.overflow).load(Ordering::Relaxed) }
    }
}

impl CqIndices {
    /// Whether the kernel holds completions that did not fit in the CQ ring
    /// (`IORING_SQ_CQ_OVERFLOW`). They move into the ring on the next
    /// `io_uring_enter` with `IORING_ENTER_GETEVENTS`.
    pub(crate) fn overflow_pending(&self) -> bool {
        // SAFETY: `sq_flags` points into live ring memory (type invariant).
        // The kernel sets and clears the bit with atomic RMWs; Acquire makes
        // what it did before setting it visible, though we only use it as a
        // hint to enter the kernel, which then does the real work.
        let flags = unsafe { (*self.sq_flags).load(Ordering::Acquire) };
        flags & IORING_SQ_CQ_OVERFLOW != 0
    }
}

// SAFETY: the indices only load atomics in ring memory, which has no thread
// affinity and outlives them (type invariant).
unsafe impl Send for CqIndices {}
// SAFETY: as above; `&CqIndices` only loads.
unsafe impl Sync for CqIndices {}

// SAFETY: the raw pointers point into ring memory that is not tied to a
// thread; all mutation goes through `&mut self` or atomics.
unsafe impl Send for CompletionQueue {}
