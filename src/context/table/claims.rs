//! Claims: completions taken from the CQ ring for an iterator, the
//! records of batches a live iterator yields from, and completions handed
//! back. See the parent module's docs.
//!
//! A claimed batch is written once, into the context's [`ClaimBoard`],
//! where its iterator reads it without the lock and the table (under the
//! lock) reads what it must release or hand back; the iterator itself
//! stays a few words, cheap to return from `wait`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::{OpTable, CLAIM_BATCH, MAX_CLAIMS, NO_SLOT};
use crate::abi::{Cqe, CqeFlags, UserData};
use crate::ring::CompletionQueue;

/// A completion claimed from the ring, as the caller will see it: 24
/// bytes (the CQE's flags made it grow from 16).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claimed {
    /// The caller's label (a foreign completion's own user_data).
    pub(crate) label: UserData,
    pub(crate) res: i32,
    /// The CQE's flags, as the kernel wrote them (`IORING_CQE_F_*`, and a
    /// provided buffer's id in the upper 16 bits).
    pub(crate) flags: u32,
    /// The slot to release once the caller has the completion, or
    /// [`NO_SLOT`] for a foreign completion, or one that says more will
    /// follow.
    release: u32,
}

const _: () = assert!(std::mem::size_of::<Claimed>() == 24);

impl Claimed {
    /// The slot to release once the caller has it, if any.
    #[inline]
    fn release(&self) -> Option<u32> {
        (self.release != NO_SLOT).then_some(self.release)
    }
}

/// The table's record of a claimed batch that a live iterator yields
/// from; the batch itself is on the [`ClaimBoard`] under the same id.
pub(super) struct Record {
    /// An iterator holds this record (otherwise its id is free).
    pub(super) in_use: bool,
    len: usize,
    /// The batch's first `settled` items have been released.
    settled: usize,
}

impl Record {
    pub(super) const FREE: Record = Record {
        in_use: false,
        len: 0,
        settled: 0,
    };
}

/// The claimed batches of live iterators, one per record id, and how far
/// each iterator has yielded: shared by the iterators, which read their
/// own batch and publish their progress without the lock, and the table,
/// which reads both under the lock.
///
/// Ordering: a batch is written under the lock by the thread whose
/// iterator then holds its record, and rewritten only after that record
/// was closed and reopened, both under the lock. So the iterator's reads
/// happen after the writes: on the same thread, or on another one it was
/// moved to, through whatever synchronised the move (safe code cannot move
/// it otherwise); and a thread reading under the lock sees them through the
/// lock. Relaxed loads and stores suffice for the
/// items; the progress is published with Release and read with Acquire,
/// because it says the caller has the items before it.
pub(crate) struct ClaimBoard {
    records: [BoardRecord; MAX_CLAIMS],
}

/// One record's batch and progress, on cache lines of its own: a reaper
/// writes them for every completion it yields.
///
/// The items' flags are an array apart, so that the items stay two words
/// (four to a cache line) and a batch adds a word of flags for every
/// sixteen completions: 1344 bytes a record.
#[repr(align(64))]
struct BoardRecord {
    /// How many of the batch's items the iterator has handed to the caller.
    yielded: AtomicU32,
    items: [SharedClaimed; CLAIM_BATCH],
    /// Each item's [`Claimed::flags`].
    flags: [AtomicU32; CLAIM_BATCH],
}

const _: () = assert!(std::mem::size_of::<BoardRecord>() == 1344);

/// A [`Claimed`] but its flags in two atomic words: the label, and the
/// result with the slot to release.
struct SharedClaimed {
    label: AtomicU64,
    res_and_release: AtomicU64,
}

impl ClaimBoard {
    pub(crate) fn new() -> ClaimBoard {
        ClaimBoard {
            records: std::array::from_fn(|_| BoardRecord {
                yielded: AtomicU32::new(0),
                items: std::array::from_fn(|_| SharedClaimed {
                    label: AtomicU64::new(0),
                    res_and_release: AtomicU64::new(0),
                }),
                flags: std::array::from_fn(|_| AtomicU32::new(0)),
            }),
        }
    }

    /// Writes item `i` of record `id`'s batch; under the lock, by the
    /// thread that opens the record.
    #[inline]
    pub(crate) fn write(&self, id: usize, i: usize, item: Claimed) {
        let record = &self.records[id];
        let shared = &record.items[i];
        shared.label.store(item.label, Ordering::Relaxed);
        let packed = u64::from(item.res as u32) | u64::from(item.release) << 32;
        shared.res_and_release.store(packed, Ordering::Relaxed);
        record.flags[i].store(item.flags, Ordering::Relaxed);
    }

    /// Item `i` of record `id`'s batch; see the type's docs for who may
    /// read it.
    #[inline]
    pub(crate) fn read(&self, id: usize, i: usize) -> Claimed {
        let record = &self.records[id];
        let shared = &record.items[i];
        let packed = shared.res_and_release.load(Ordering::Relaxed);
        Claimed {
            label: shared.label.load(Ordering::Relaxed),
            res: packed as u32 as i32,
            flags: record.flags[i].load(Ordering::Relaxed),
            release: (packed >> 32) as u32,
        }
    }

    /// Publishes that the caller has the first `yielded` items of record
    /// `id`'s batch. Release: whoever settles the record with an Acquire
    /// load sees that the caller has them.
    #[inline]
    pub(crate) fn publish_yielded(&self, id: usize, yielded: usize) {
        self.records[id]
            .yielded
            .store(yielded as u32, Ordering::Release);
    }

    /// How many of record `id`'s items the caller has, as published.
    fn yielded(&self, id: usize) -> usize {
        self.records[id].yielded.load(Ordering::Acquire) as usize
    }
}

impl OpTable {
    /// What a popped CQE means: a caller's completion (released once
    /// yielded, unless more will follow), a foreign one (released never), or
    /// one of the context's own, which is released here and swallowed.
    #[inline]
    pub(super) fn classify(&mut self, cqe: Cqe) -> Option<Claimed> {
        let Some(slot) = self.decode(cqe.user_data) else {
            return Some(Claimed {
                label: cqe.user_data,
                res: cqe.res,
                flags: cqe.flags.bits(),
                release: NO_SLOT,
            });
        };
        let label = match self.slots[slot as usize].caller() {
            Some((label, _)) => label,
            None => {
                if !cqe.flags.contains(CqeFlags::MORE) {
                    self.release(slot);
                }
                return None;
            }
        };
        if cqe.flags.contains(CqeFlags::BUFFER) {
            self.mark_completed_buffer(slot, cqe.flags);
        }
        // A multishot operation stays in flight until its last completion,
        // the one without IORING_CQE_F_MORE (see the parent module's docs).
        let more = cqe.flags.contains(CqeFlags::MORE);
        let release = if more { NO_SLOT } else { slot };
        Some(Claimed {
            label,
            res: cqe.res,
            flags: cqe.flags.bits(),
            release,
        })
    }

    /// Claims up to `max` completions, handing each to `take` with its
    /// index: those handed back first, then the CQ ring's. Swallows the
    /// context's own completions. Returns how many it claimed.
    pub(crate) fn claim(
        &mut self,
        cq: &mut CompletionQueue,
        max: usize,
        mut take: impl FnMut(usize, Claimed),
    ) -> usize {
        let mut claimed = 0;
        while claimed < max {
            let Some(item) = self.returned.pop_front() else {
                break;
            };
            take(claimed, item);
            claimed += 1;
        }
        // The context's own completions are swallowed, so a pop may yield
        // fewer than it took: pop again for the rest.
        while claimed < max {
            let want = max - claimed;
            let popped = cq.pop_each(want, |cqe| {
                if let Some(item) = self.classify(cqe) {
                    take(claimed, item);
                    claimed += 1;
                }
            });
            if popped < want {
                break;
            }
        }
        // A wake-up of the context's own left at the front would keep the
        // ring fd readable with nothing there for the caller.
        self.swallow_own_at_front(cq);
        claimed
    }

    /// Pops and releases the context's own completions at the front of the
    /// CQ ring, up to the first that is for the caller; none while
    /// completions handed back wait, for whose sake a wake-up's completion
    /// keeps the ring fd readable.
    #[inline]
    pub(crate) fn swallow_own_at_front(&mut self, cq: &mut CompletionQueue) {
        if self.internal_ops() == 0 || !self.returned.is_empty() {
            return;
        }
        self.swallow_own_at_front_of_ring(cq);
    }

    /// [`swallow_own_at_front`](Self::swallow_own_at_front) once some of
    /// the context's own operations are in flight.
    #[cold]
    fn swallow_own_at_front_of_ring(&mut self, cq: &mut CompletionQueue) {
        while let Some(cqe) = cq.peek() {
            let own = self
                .decode(cqe.user_data)
                .is_some_and(|slot| self.slots[slot as usize].owner.is_internal());
            if !own {
                return;
            }
            cq.pop_each(1, |cqe| {
                let swallowed = self.classify(cqe);
                debug_assert!(swallowed.is_none());
            });
        }
    }

    /// Whether completions wait to be claimed: handed back, or in the ring.
    #[inline]
    pub(crate) fn has_unclaimed(&self, cq: &CompletionQueue) -> bool {
        !self.returned.is_empty() || cq.ready() > 0
    }

    /// Completions handed back and not yet claimed again.
    pub(crate) fn returned(&self) -> usize {
        self.returned.len()
    }

    /// Releases the operation of a completion handed to the caller now.
    #[inline]
    pub(crate) fn yielded(&mut self, item: &Claimed) {
        if let Some(slot) = item.release() {
            self.release(slot);
        }
    }

    /// A free record id, for a claim that may then take a batch; `None`
    /// when [`MAX_CLAIMS`] are outstanding.
    pub(crate) fn free_record(&self) -> Option<usize> {
        self.records.iter().position(|record| !record.in_use)
    }

    /// Opens record `id` (from [`free_record`](Self::free_record)) over
    /// the `len` items of its batch on `board`, none yielded yet.
    pub(crate) fn open_record(&mut self, id: usize, len: usize, board: &ClaimBoard) {
        let record = &mut self.records[id];
        debug_assert!(!record.in_use, "record {id} is in use");
        (record.in_use, record.len, record.settled) = (true, len, 0);
        // Under the lock, before anyone can settle this record.
        board.publish_yielded(id, 0);
    }

    /// Releases the operations of record `id`'s first `yielded` items that
    /// are not yet released.
    fn settle(&mut self, id: usize, yielded: usize, board: &ClaimBoard) {
        let record = &mut self.records[id];
        if !record.in_use {
            return;
        }
        let yielded = yielded.min(record.len);
        let from = record.settled.min(yielded);
        record.settled = record.settled.max(yielded);
        for i in from..yielded {
            if let Some(slot) = board.read(id, i).release() {
                self.release(slot);
            }
        }
    }

    /// Settles every outstanding record up to what its iterator has
    /// published on `board` as yielded.
    pub(crate) fn settle_all(&mut self, board: &ClaimBoard) {
        for id in 0..MAX_CLAIMS {
            if self.records[id].in_use {
                self.settle(id, board.yielded(id), board);
            }
        }
    }

    /// Ends record `id`: releases what was yielded and hands the rest back,
    /// to be claimed again first, in order. Returns how many it handed
    /// back.
    pub(crate) fn close_record(&mut self, id: usize, yielded: usize, board: &ClaimBoard) -> usize {
        self.settle(id, yielded, board);
        let record = &mut self.records[id];
        assert!(record.in_use, "closed a free record");
        record.in_use = false;
        let rest = yielded.min(record.len)..record.len;
        for i in rest.clone().rev() {
            self.returned.push_front(board.read(id, i));
        }
        rest.len()
    }

    /// Releases every claimed completion, yielded or not, and frees every
    /// record: for drain, when no iterator can be alive (the context is
    /// borrowed mutably), so none of them will ever be yielded.
    pub(crate) fn release_all_claims(&mut self, board: &ClaimBoard) {
        for id in 0..self.records.len() {
            if self.records[id].in_use {
                let len = self.records[id].len;
                self.settle(id, len, board);
                self.records[id].in_use = false;
            }
        }
        while let Some(item) = self.returned.pop_front() {
            self.yielded(&item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_board_keeps_every_field_of_a_claimed_completion() {
        let board = ClaimBoard::new();
        let cases = [
            (u64::MAX, -libc::ECANCELED, u32::MAX, NO_SLOT),
            (0, i32::MIN, 0, 0),
            (7, i32::MAX, 0xbeef_0003, NO_SLOT - 1),
        ];
        for (label, res, flags, release) in cases {
            let item = Claimed {
                label,
                res,
                flags,
                release,
            };
            board.write(MAX_CLAIMS - 1, CLAIM_BATCH - 1, item);
            let read = board.read(MAX_CLAIMS - 1, CLAIM_BATCH - 1);
            assert_eq!(
                (read.label, read.res, read.flags, read.release),
                (label, res, flags, release)
            );
        }
    }
}
