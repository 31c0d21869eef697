use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use super::in_flight::InFlightTable;
use super::{QueuePointers, RingMemory};
use crate::bindings::{io_uring_cqe, io_uring_params, IORING_SQ_CQ_OVERFLOW};

/// Why an operation could not be registered as in flight.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InFlight {
    /// Another operation in flight already has this user_data.
    Duplicate,
    /// The cap on operations in flight is reached.
    Full,
}

/// The completion side of a ring, and the state of every operation in
/// flight keyed by its user_data.
///
/// Invariants:
/// - every pointer points into the [`RingMemory`] the state was created from,
///   which outlives it (see [`CompleteQueueState::new`]);
/// - this is the only writer of the CQ head, and the caller serialises
///   access through `&mut self`;
/// - `in_flight` holds exactly the operations added whose completion has
///   not been popped from the CQ ring, so two of them never share a
///   user_data.
pub(crate) struct CompleteQueueState<T> {
    head: *const AtomicU32,
    tail: *const AtomicU32,
    overflow: *const AtomicU32,
    sq_flags: *const AtomicU32,
    cqes: *const io_uring_cqe,
    mask: u32,
    in_flight: InFlightTable<T>,
    /// Completions popped from the ring and handed back unconsumed (see
    /// [`CompleteQueueState::unpop`]); their operations still count as in
    /// flight until popped again.
    unpopped: VecDeque<(u64, i32)>,
    /// The kernel's dropped-completion counter when last reported.
    dropped_reported: u32,
}

impl<T> CompleteQueueState<T> {
    /// # Safety
    ///
    /// `memory` must be the mapping of the ring `params` describes, and the
    /// returned state must not be used after `memory` is dropped.
    pub(crate) unsafe fn new(memory: &RingMemory, params: &io_uring_params) -> io::Result<Self> {
        let ring = QueuePointers::new(&memory.cq_ring);
        let off = &params.cq_off;
        let entries = ring.constant(off.ring_entries)?;
        let mask = ring.constant(off.ring_mask)?;
        if !entries.is_power_of_two() || mask != entries - 1 || entries != params.cq_entries {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "inconsistent CQ ring size",
            ));
        }
        Ok(CompleteQueueState {
            sq_flags: QueuePointers::new(&memory.sq_ring)
                .field::<AtomicU32>(params.sq_off.flags)?,
            head: ring.field::<AtomicU32>(off.head)?,
            tail: ring.field::<AtomicU32>(off.tail)?,
            overflow: ring.field::<AtomicU32>(off.overflow)?,
            cqes: ring.array::<io_uring_cqe>(off.cqes, entries)?,
            mask,
            in_flight: InFlightTable::new(),
            unpopped: VecDeque::new(),
            dropped_reported: 0,
        })
    }

    /// Records `state` as in flight under `user_data`, unless `cap`
    /// operations already are; a refusal hands `state` back.
    pub(crate) fn register(
        &mut self,
        user_data: u64,
        state: T,
        cap: usize,
    ) -> Result<(), (InFlight, T)> {
        if self.in_flight() >= cap {
            return Err((InFlight::Full, state));
        }
        self.in_flight
            .insert(user_data, state)
            .map_err(|state| (InFlight::Duplicate, state))
    }

    /// Undoes [`register`](Self::register), for an operation that will not
    /// be published after all; returns its state.
    pub(crate) fn unregister(&mut self, user_data: u64) -> Option<T> {
        self.in_flight.remove(user_data)
    }

    /// Operations added and not yet popped.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len() + self.unpopped.len()
    }

    /// Whether `user_data` belongs to an operation in flight.
    pub(crate) fn is_in_flight(&self, user_data: u64) -> bool {
        self.in_flight.contains(user_data)
    }

    /// The user_data of every operation in flight, in no particular order.
    pub(crate) fn in_flight_user_data(&self) -> impl Iterator<Item = u64> + '_ {
        self.in_flight.keys()
    }

    /// Removes every in-flight state without dropping any of it: for when the
    /// kernel may still use the memory it pins.
    pub(crate) fn leak_all(&mut self) {
        self.in_flight.drain(std::mem::forget);
    }

    /// CQEs posted and not yet popped.
    pub(crate) fn ready(&self) -> u32 {
        // SAFETY: `head` and `tail` point into live ring memory (type
        // invariant). Only we write the head, so Relaxed reads our own last
        // store. Acquire on the tail pairs with the kernel's
        // `smp_store_release` of the tail after it wrote the CQEs.
        let (head, tail) = unsafe {
            (
                (*self.head).load(Ordering::Relaxed),
                (*self.tail).load(Ordering::Acquire),
            )
        };
        tail.wrapping_sub(head)
    }

    /// Whether a completion is in the CQ ring or on the kernel's overflow
    /// list.
    pub(crate) fn has_completion(&self) -> bool {
        self.ready() > 0 || !self.unpopped.is_empty() || self.overflow_pending()
    }

    /// Completions the kernel dropped because the CQ ring was full and it
    /// could not keep them (only without `IORING_FEAT_NODROP`, or when the
    /// kernel could not allocate an overflow entry).
    pub(crate) fn dropped(&self) -> u32 {
        // SAFETY: `overflow` points into live ring memory (type invariant);
        // the kernel updates it atomically.
        unsafe { (*self.overflow).load(Ordering::Relaxed) }
    }

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

    /// Whether the kernel dropped completions since the last call that
    /// returned true: each loss is reported once.
    pub(crate) fn take_new_drops(&mut self) -> bool {
        let dropped = self.dropped();
        let new = dropped != self.dropped_reported;
        self.dropped_reported = dropped;
        new
    }

    /// Pops up to `out.len()` completions into `out` as `(user_data,
    /// result)`, oldest first, and drops the state each operation kept in
    /// flight; returns how many. Completions handed back with
    /// [`unpop`](Self::unpop) come first, then the CQ ring's, with one
    /// Acquire load of the tail and one Release store of the head for all.
    pub(crate) fn pop_batch(&mut self, out: &mut [(u64, i32)]) -> usize {
        let mut popped = 0;
        while popped < out.len() {
            let Some(completion) = self.unpopped.pop_front() else {
                break;
            };
            out[popped] = completion;
            popped += 1;
        }
        // SAFETY: as in `ready`: Relaxed for our own head, Acquire on the
        // kernel's tail so the CQE contents are visible.
        let head = unsafe { (*self.head).load(Ordering::Relaxed) };
        // SAFETY: see above.
        let tail = unsafe { (*self.tail).load(Ordering::Acquire) };
        let take = (tail.wrapping_sub(head) as usize).min(out.len() - popped);
        for i in 0..take {
            let index = (head.wrapping_add(i as u32) & self.mask) as usize;
            // SAFETY: the masked index is inside the CQE array. The kernel
            // wrote this CQE before the tail we loaded with Acquire covered
            // it, and will not overwrite it until we move the head past it
            // below. The fields are copied out through the raw pointer; no
            // reference to ring memory is created.
            let (user_data, result) = unsafe {
                let cqe = self.cqes.add(index);
                ((*cqe).user_data, (*cqe).res)
            };
            out[popped] = (user_data, result);
            popped += 1;
            self.in_flight.remove(user_data);
        }
        if take > 0 {
            // SAFETY: `head` points into live ring memory. Release orders our
            // reads of the CQEs before the kernel can see their slots as
            // free (it reads the head before reusing a slot).
            unsafe { (*self.head).store(head.wrapping_add(take as u32), Ordering::Release) };
        }
        popped
    }

    /// Takes back completions [`pop_batch`](Self::pop_batch) returned but
    /// nobody consumed, to be popped again first, in the same order.
    pub(crate) fn unpop(&mut self, completions: &[(u64, i32)]) {
        for &completion in completions.iter().rev() {
            self.unpopped.push_front(completion);
        }
    }
}

// SAFETY: the raw pointers point into ring memory that is not tied to a
// thread; all mutation goes through `&mut self` or atomics. The in-flight
// states move between threads with the value, hence `T: Send`.
unsafe impl<T: Send> Send for CompleteQueueState<T> {}
