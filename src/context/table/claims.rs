//! Claims: completions taken from the CQ ring for an iterator, the
//! records of batches a live iterator yields from, and completions handed
//! back. See the parent module's docs.

use std::sync::atomic::{AtomicU32, Ordering};

use super::{OpTable, Owner, CLAIM_BATCH, MAX_CLAIMS};
use crate::abi::{Cqe, CqeFlags, UserData};
use crate::ring::CompletionQueue;

/// A completion claimed from the ring, as the caller will see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claimed {
    /// The caller's label (a foreign completion's own user_data).
    pub(crate) label: UserData,
    pub(crate) res: i32,
    /// The slot to release once the caller has the completion: `None` for
    /// a foreign completion, or one that says more will follow.
    release: Option<u32>,
}

impl Claimed {
    pub(crate) const EMPTY: Claimed = Claimed {
        label: 0,
        res: 0,
        release: None,
    };
}

/// A claimed batch that a live iterator yields from.
pub(super) struct Record {
    /// An iterator holds this record (otherwise its id is free).
    pub(super) in_use: bool,
    items: [Claimed; CLAIM_BATCH],
    len: usize,
    /// `items[..settled]` have been released.
    settled: usize,
}

impl Record {
    pub(super) const FREE: Record = Record {
        in_use: false,
        items: [Claimed::EMPTY; CLAIM_BATCH],
        len: 0,
        settled: 0,
    };
}

impl OpTable {
    /// What a popped CQE means: a caller's completion (released once
    /// yielded, unless more will follow), a foreign one (released never), or
    /// one of the context's own, which is released here and swallowed.
    pub(super) fn classify(&mut self, cqe: Cqe) -> Option<Claimed> {
        let Some(slot) = self.decode(cqe.user_data) else {
            return Some(Claimed {
                label: cqe.user_data,
                res: cqe.res,
                release: None,
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
        // A multishot operation stays in flight until its last completion,
        // the one without IORING_CQE_F_MORE.
        let release = (!cqe.flags.contains(CqeFlags::MORE)).then_some(slot);
        Some(Claimed {
            label,
            res: cqe.res,
            release,
        })
    }

    /// Claims up to `out.len()` completions into `out`: those handed back
    /// first, then the CQ ring's. Swallows the context's own completions.
    /// Returns how many it claimed.
    pub(crate) fn claim(&mut self, cq: &mut CompletionQueue, out: &mut [Claimed]) -> usize {
        let mut claimed = 0;
        while claimed < out.len() {
            let Some(item) = self.returned.pop_front() else {
                break;
            };
            out[claimed] = item;
            claimed += 1;
        }
        let mut cqes = [Cqe {
            user_data: 0,
            res: 0,
            flags: CqeFlags::empty(),
        }; CLAIM_BATCH];
        while claimed < out.len() {
            let want = (out.len() - claimed).min(CLAIM_BATCH);
            let popped = cq.pop_batch(&mut cqes[..want]);
            for cqe in &cqes[..popped] {
                if let Some(item) = self.classify(*cqe) {
                    out[claimed] = item;
                    claimed += 1;
                }
            }
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
    pub(crate) fn swallow_own_at_front(&mut self, cq: &mut CompletionQueue) {
        if self.internal_ops() == 0 || !self.returned.is_empty() {
            return;
        }
        while let Some(cqe) = cq.peek() {
            let own = self.decode(cqe.user_data).is_some_and(|slot| {
                matches!(self.slots[slot as usize].owner, Owner::Internal { .. })
            });
            if !own {
                return;
            }
            let mut popped = [cqe];
            cq.pop_batch(&mut popped);
            let swallowed = self.classify(cqe);
            debug_assert!(swallowed.is_none());
        }
    }

    /// Whether completions wait to be claimed: handed back, or in the ring.
    pub(crate) fn has_unclaimed(&self, cq: &CompletionQueue) -> bool {
        !self.returned.is_empty() || cq.ready() > 0
    }

    /// Completions handed back and not yet claimed again.
    pub(crate) fn returned(&self) -> usize {
        self.returned.len()
    }

    /// Releases the operation of a completion handed to the caller now.
    pub(crate) fn yielded(&mut self, item: &Claimed) {
        if let Some(slot) = item.release {
            self.release(slot);
        }
    }

    /// A free record id, for a claim that may then take a batch; `None`
    /// when [`MAX_CLAIMS`] are outstanding.
    pub(crate) fn free_record(&self) -> Option<usize> {
        self.records.iter().position(|record| !record.in_use)
    }

    /// Records `items` in record `id` (from [`free_record`](Self::free_record))
    /// as a batch a live iterator yields from.
    pub(crate) fn open_record(&mut self, id: usize, items: &[Claimed]) {
        let record = &mut self.records[id];
        debug_assert!(!record.in_use, "record {id} is in use");
        record.items[..items.len()].copy_from_slice(items);
        (record.in_use, record.len, record.settled) = (true, items.len(), 0);
    }

    /// Releases the operations of record `id`'s first `yielded` items that
    /// are not yet released.
    fn settle(&mut self, id: usize, yielded: usize) {
        let record = &mut self.records[id];
        if !record.in_use {
            return;
        }
        let yielded = yielded.min(record.len);
        let from = record.settled.min(yielded);
        record.settled = record.settled.max(yielded);
        for i in from..yielded {
            if let Some(slot) = self.records[id].items[i].release {
                self.release(slot);
            }
        }
    }

    /// Settles every outstanding record up to what its iterator has
    /// published as yielded in `progress`.
    pub(crate) fn settle_all(&mut self, progress: &[AtomicU32; MAX_CLAIMS]) {
        for (id, progress) in progress.iter().enumerate() {
            if self.records[id].in_use {
                // Acquire pairs with the iterator's Release store after it
                // handed the item out: the caller has it.
                let yielded = progress.load(Ordering::Acquire) as usize;
                self.settle(id, yielded);
            }
        }
    }

    /// Ends record `id`: releases what was yielded and hands the rest back,
    /// to be claimed again first, in order. Returns how many it handed
    /// back.
    pub(crate) fn close_record(&mut self, id: usize, yielded: usize) -> usize {
        self.settle(id, yielded);
        let record = &mut self.records[id];
        assert!(record.in_use, "closed a free record");
        record.in_use = false;
        let rest = yielded.min(record.len)..record.len;
        for i in rest.clone().rev() {
            self.returned.push_front(self.records[id].items[i]);
        }
        rest.len()
    }

    /// Releases every claimed completion, yielded or not, and frees every
    /// record: for drain, when no iterator can be alive (the context is
    /// borrowed mutably), so none of them will ever be yielded.
    pub(crate) fn release_all_claims(&mut self) {
        for id in 0..self.records.len() {
            if self.records[id].in_use {
                let len = self.records[id].len;
                self.settle(id, len);
                self.records[id].in_use = false;
            }
        }
        while let Some(item) = self.returned.pop_front() {
            self.yielded(&item);
        }
    }
}
