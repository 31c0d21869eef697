use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{QueuePointers, RingMemory};
use crate::bindings::{io_uring_cqe, io_uring_params, IORING_SQ_CQ_OVERFLOW};

/// One completion popped from the CQ ring, with the state its operation
/// kept alive while it was in flight.
pub(crate) struct Completion<T> {
    pub(crate) user_data: u64,
    pub(crate) result: i32,
    /// The operation's pinned state; `None` only for a CQE whose user_data
    /// was never registered, which the context never lets happen.
    pub(crate) state: Option<T>,
}

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
/// - `in_flight` holds exactly the operations added and not yet popped, so
///   two of them never share a user_data.
pub(crate) struct CompleteQueueState<T> {
    head: *const AtomicU32,
    tail: *const AtomicU32,
    overflow: *const AtomicU32,
    sq_flags: *const AtomicU32,
    cqes: *const io_uring_cqe,
    mask: u32,
    in_flight: HashMap<u64, T>,
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
            in_flight: HashMap::new(),
            dropped_reported: 0,
        })
    }

    /// Records `state` as in flight under `user_data`, unless `cap`
    /// operations already are.
    pub(crate) fn register(
        &mut self,
        user_data: u64,
        state: T,
        cap: usize,
    ) -> Result<(), InFlight> {
        if self.in_flight.len() >= cap {
            return Err(InFlight::Full);
        }
        match self.in_flight.entry(user_data) {
            std::collections::hash_map::Entry::Occupied(_) => Err(InFlight::Duplicate),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(state);
                Ok(())
            }
        }
    }

    /// Operations added and not yet popped.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether `user_data` belongs to an operation in flight.
    pub(crate) fn is_in_flight(&self, user_data: u64) -> bool {
        self.in_flight.contains_key(&user_data)
    }

    /// The user_data of every operation in flight, in no particular order.
    pub(crate) fn in_flight_user_data(&self) -> impl Iterator<Item = u64> + '_ {
        self.in_flight.keys().copied()
    }

    /// Removes every in-flight state without dropping any of it: for when the
    /// kernel may still use the memory it pins.
    pub(crate) fn leak_all(&mut self) {
        for (_, state) in self.in_flight.drain() {
            std::mem::forget(state);
        }
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

    /// Pops the oldest CQE, if any, and hands back the state its operation
    /// kept in flight.
    pub(crate) fn pop(&mut self) -> Option<Completion<T>> {
        // SAFETY: as in `ready`: Relaxed for our own head, Acquire on the
        // kernel's tail so the CQE contents are visible.
        let head = unsafe { (*self.head).load(Ordering::Relaxed) };
        // SAFETY: see above.
        let tail = unsafe { (*self.tail).load(Ordering::Acquire) };
        if head == tail {
            return None;
        }
        let index = (head & self.mask) as usize;
        // SAFETY: the masked index is inside the CQE array. The kernel wrote
        // this CQE before the tail we loaded with Acquire covered it, and will
        // not overwrite it until we move the head past it below.
        // The fields are copied out through the raw pointer; no reference
        // to ring memory is created.
        let (user_data, result) = unsafe {
            let cqe = self.cqes.add(index);
            ((*cqe).user_data, (*cqe).res)
        };
        // SAFETY: `head` points into live ring memory. Release orders our
        // read of the CQE before the kernel can see the slot as free (it
        // reads the head before reusing a slot).
        unsafe { (*self.head).store(head.wrapping_add(1), Ordering::Release) };
        Some(Completion {
            user_data,
            result,
            state: self.in_flight.remove(&user_data),
        })
    }
}

// SAFETY: the raw pointers point into ring memory that is not tied to a
// thread; all mutation goes through `&mut self` or atomics. The in-flight
// states move between threads with the value, hence `T: Send`.
unsafe impl<T: Send> Send for CompleteQueueState<T> {}
