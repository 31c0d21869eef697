//! [`OpTable`]: every operation the context has queued and not yet handed
//! to the caller (its identity, its caller label, what it keeps alive), and
//! the completions claimed from the CQ ring but not yet yielded.
//!
//! Pure bookkeeping: no unsafe code, no ring memory. The context keeps it
//! under its lock.
//!
//! **Identity.** The SQE's user_data is the context's own: a per-context
//! tag, a generation and a slot index. A completion releases the state of
//! the slot it names only if tag and generation match, so it can only ever
//! release the operation it belongs to, whatever labels callers chose; a
//! completion the context did not issue (another ring's `msg_ring`) is
//! recognised as foreign and releases nothing.
//!
//! **Labels.** The caller's user_data is a label. Operations that pin no
//! caller memory may share one; an operation that pins caller memory may
//! share its label with no other operation in flight.
//!
//! **Claims.** An operation is in flight until the caller has its
//! completion. A completions iterator claims a batch under the lock, onto
//! the context's [`ClaimBoard`], and yields from it without the lock,
//! publishing how many it has yielded ([`settle_all`](OpTable::settle_all)
//! reads that); the table records the batch's length and how far it is
//! settled, so the yielded part can be released by whoever next holds the
//! lock, and the rest handed back if the iterator is dropped.
//!
//! **Multishot.** An operation is released by its last completion, the
//! first whose flags lack `IORING_CQE_F_MORE`; one with MORE is claimed,
//! yielded and handed back like any other but releases nothing (its
//! [`Claimed`] names no slot), whatever the operation. So a multishot
//! operation keeps its label, its file and its count in flight until the
//! caller has its last completion, and drain (which cancels what is in
//! flight and reaps until nothing is) waits for that one too. The kernel
//! also ends a multishot operation, without MORE, when the CQ ring has no
//! room (kernel patch "io_uring: terminate multishot poll for CQ ring
//! overflow", 5.13; measured on 6.18, `tests/multishot.rs`): the same
//! rule covers it.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use super::labels::{LabelTable, UnpinnedCounts};
use crate::abi::UserData;
use crate::op::KeepAlive;

mod buffers;
mod claims;
mod slot;
mod teardown;

use claims::Record;
pub(crate) use claims::{ClaimBoard, Claimed};
use slot::{Owner, Slot};

/// The most completions of one claim that go onto the claim board (the
/// claim's first is handed to the caller at once, so a claim takes up to
/// one more). Large, so that a reaper behind producers catches up in few
/// lock holds: with two producers and a reaper, 64 took about a fifth
/// less time than 16 (`benches/threads.rs`).
pub(crate) const CLAIM_BATCH: usize = 64;

/// The most claims that may be outstanding at once (live iterators with a
/// batch). Past it, iterators claim one completion at a time, which needs
/// no record. With [`CLAIM_BATCH`], the claim board is 21 KiB.
pub(crate) const MAX_CLAIMS: usize = 16;

/// Why an operation could not be tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The label rule: this operation or one in flight with its label pins
    /// caller memory.
    SharedLabel,
    /// The cap on operations in flight is reached.
    Full,
}

impl Refusal {
    /// The error an add of an operation with `label` fails with.
    pub(crate) fn error(self, label: UserData) -> crate::Error {
        match self {
            Refusal::SharedLabel => crate::Error::DuplicateUserData(label),
            Refusal::Full => crate::Error::NoSpace,
        }
    }
}

/// The operations in flight and the completions claimed; see the module
/// docs.
pub(crate) struct OpTable {
    /// The top 16 bits of every identity this table hands out.
    tag: u64,
    slots: Vec<Slot>,
    /// What each slot's operation keeps alive, where its `keeps` is set
    /// (empty otherwise); as long as `slots`.
    kept: Vec<KeepAlive>,
    /// The first free slot, [`NO_SLOT`] if none: free slots are a list
    /// linked through their `link`, newest first.
    free_head: u32,
    /// Operations tracked, the caller's and the context's own.
    tracked: usize,
    /// Labels of operations that pin caller memory, with their slots.
    pinned: LabelTable<u32>,
    /// Labels of the caller's other operations, counted by bucket.
    unpinned: UnpinnedCounts,
    /// For each slot, when its operation was tracked (the count of adds
    /// then): operations sharing a label are ordered by it.
    added: Vec<u64>,
    /// Operations tracked so far.
    adds: u64,
    /// Claim records by id; one not `in_use` is free.
    records: Vec<Record>,
    /// Completions handed back by an iterator dropped before yielding
    /// them, served before the ring's.
    returned: VecDeque<Claimed>,
    /// Files of released operations, not yet dropped (see `release`).
    released: Vec<KeepAlive>,
}

const SLOT_BITS: u32 = 32;
const GENERATION_BITS: u32 = 16;

/// An identity no operation ever has: its slot index is never allocated.
/// A cancellation aimed at it finds nothing (`ENOENT`).
const NO_SLOT: u32 = u32::MAX;

impl OpTable {
    pub(crate) fn new() -> OpTable {
        let random = std::collections::hash_map::RandomState::new().hash_one(0x7a6u64);
        OpTable {
            // The top bit set: a tag is never 0, so small user_data values
            // another ring posts (`msg_ring`) never look like ours.
            tag: (0x8000 | (random & 0x7fff)) << (SLOT_BITS + GENERATION_BITS),
            slots: Vec::new(),
            kept: Vec::new(),
            free_head: NO_SLOT,
            tracked: 0,
            pinned: LabelTable::new(),
            unpinned: UnpinnedCounts::new(),
            added: Vec::new(),
            adds: 0,
            records: (0..MAX_CLAIMS).map(|_| Record::FREE).collect(),
            returned: VecDeque::new(),
            released: Vec::new(),
        }
    }

    #[inline]
    fn identity(&self, slot: u32) -> u64 {
        let generation = u64::from(self.slots[slot as usize].generation);
        self.tag | generation << SLOT_BITS | u64::from(slot)
    }

    /// The identity a cancellation carries to find nothing.
    pub(crate) fn no_identity(&self) -> u64 {
        self.tag | u64::from(NO_SLOT)
    }

    /// The slot `identity` names, if it is an operation of this table in
    /// flight.
    #[inline]
    pub(super) fn decode(&self, identity: u64) -> Option<u32> {
        let tag_mask = !0u64 << (SLOT_BITS + GENERATION_BITS);
        if identity & tag_mask != self.tag {
            return None;
        }
        let slot = identity as u32;
        let entry = self.slots.get(slot as usize)?;
        let generation = (identity >> SLOT_BITS) as u16;
        (entry.owner != Owner::Free && entry.generation == generation).then_some(slot)
    }

    /// Takes a free slot for an operation, taking what it keeps alive
    /// from `keep_alive` (only when there is something).
    #[inline(always)]
    fn allocate(&mut self, owner: Owner, label: u64, keep_alive: &mut KeepAlive) -> u32 {
        self.adds += 1;
        self.tracked += 1;
        if self.free_head == NO_SLOT {
            self.grow();
        }
        let slot = self.free_head;
        let keeps = !keep_alive.is_empty();
        debug_assert!(
            self.kept[slot as usize].is_empty(),
            "a free slot keeps something"
        );
        if keeps {
            self.kept[slot as usize] = std::mem::take(keep_alive);
        }
        let entry = &mut self.slots[slot as usize];
        self.free_head = entry.link;
        *entry = Slot {
            label,
            link: 0,
            generation: entry.generation.wrapping_add(1),
            owner,
            keeps,
        };
        self.added[slot as usize] = self.adds;
        slot
    }

    /// Adds a free slot, when none is left.
    #[cold]
    fn grow(&mut self) {
        let slot = u32::try_from(self.slots.len())
            .ok()
            .filter(|&slot| slot != NO_SLOT)
            .expect("fewer than 2^32 - 1 operations in flight");
        self.slots.push(Slot {
            link: self.free_head,
            ..Slot::default()
        });
        self.kept.push(KeepAlive::default());
        self.added.push(0);
        self.free_head = slot;
    }

    /// Operations tracked, the caller's and the context's own.
    pub(crate) fn tracked(&self) -> usize {
        self.tracked
    }

    /// The caller's operations in flight: not yet handed to the caller.
    /// Call [`settle_all`](Self::settle_all) first for an exact count.
    pub(crate) fn caller_ops(&self) -> usize {
        self.pinned.len() + self.unpinned.len()
    }

    /// The context's own operations in flight.
    pub(crate) fn internal_ops(&self) -> usize {
        self.tracked() - self.caller_ops()
    }

    /// Tracks a caller's operation under `label`, taking what it keeps
    /// alive from `keep_alive`, unless `cap` operations are tracked or the
    /// label rule refuses it (then `keep_alive` is left as it was); returns
    /// its identity.
    #[inline]
    pub(crate) fn track_caller(
        &mut self,
        label: UserData,
        pins: bool,
        keep_alive: &mut KeepAlive,
        cap: usize,
    ) -> Result<u64, Refusal> {
        if self.tracked() >= cap {
            return Err(Refusal::Full);
        }
        // Operations that pin no memory pay a lookup only while some that
        // do are in flight, and a count; the others pay the exact checks.
        let shared = self.pinned.len() > 0 && self.pinned.contains(label)
            || pins
                && self.unpinned.may_contain(label)
                && self.unpinned_with(label).next().is_some();
        if shared {
            return Err(Refusal::SharedLabel);
        }
        let slot = self.allocate(Owner::caller(pins), label, keep_alive);
        if pins {
            // Cannot fail: the label is absent.
            let _ = self.pinned.insert(label, slot);
        } else {
            let (bucket, too_full) = self.unpinned.add(label);
            self.slots[slot as usize].link = bucket;
            if too_full {
                self.rebuild_unpinned();
            }
        }
        Ok(self.identity(slot))
    }

    /// Tracks an operation of the context's own (cancelling `target`, if
    /// any) unless `cap` operations are tracked; returns its identity.
    pub(crate) fn track_internal(&mut self, target: Option<u64>, cap: usize) -> Option<u64> {
        if self.tracked() >= cap {
            return None;
        }
        let owner = match target {
            Some(_) => Owner::InternalCancel,
            None => Owner::Internal,
        };
        let slot = self.allocate(owner, target.unwrap_or(0), &mut KeepAlive::default());
        Some(self.identity(slot))
    }

    /// Stops tracking `slot`, whose operation is done: frees its iovec
    /// array, and sets aside what holds a file (its target, or its own
    /// memory, which may hold a splice's input), whose drop may run the
    /// caller's code: [`take_released`](Self::take_released) hands those
    /// over to be dropped once the lock is released.
    #[inline]
    pub(super) fn release(&mut self, slot: u32) {
        if let Some(kept) = self.stop_tracking(slot) {
            if kept.file.is_some() || kept.owned.is_some() {
                self.released.push(kept);
            }
        }
    }

    /// What operations released since the last call held a file with, to
    /// drop outside the lock. Allocates nothing when there is none.
    #[inline]
    pub(crate) fn take_released(&mut self) -> Vec<KeepAlive> {
        if self.released.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut self.released)
    }

    /// Stops tracking `slot`, returning what it kept alive, if anything.
    #[inline(always)]
    fn stop_tracking(&mut self, slot: u32) -> Option<KeepAlive> {
        let entry = &mut self.slots[slot as usize];
        let Slot {
            owner,
            label,
            keeps,
            ..
        } = *entry;
        // Checked before anything changes: a second release must not put
        // the slot on the free list twice (two operations would share it).
        assert!(
            owner != Owner::Free,
            "released a slot that holds no operation"
        );
        let bucket = entry.link;
        entry.owner = Owner::Free;
        entry.link = self.free_head;
        self.free_head = slot;
        self.tracked -= 1;
        match owner {
            Owner::CallerPinning => {
                self.pinned.remove(label);
            }
            Owner::Caller => self.unpinned.remove(bucket),
            Owner::Internal | Owner::InternalCancel | Owner::Free => {}
        }
        keeps.then(|| std::mem::take(&mut self.kept[slot as usize]))
    }

    /// Undoes [`track_caller`](Self::track_caller) or
    /// [`track_internal`](Self::track_internal) for an operation that will
    /// not be published after all; returns what it kept alive.
    pub(crate) fn untrack(&mut self, identity: u64) -> KeepAlive {
        let slot = self
            .decode(identity)
            .expect("untracked an unknown identity");
        self.stop_tracking(slot).unwrap_or_default()
    }

    /// The slots of the caller's operations in flight with `label` that pin
    /// no memory.
    fn unpinned_with(&self, label: UserData) -> impl Iterator<Item = u32> + '_ {
        (0..self.slots.len() as u32)
            .filter(move |&slot| self.slots[slot as usize].caller() == Some((label, false)))
    }

    /// Counts the labels of the caller's operations in flight that pin no
    /// memory again, in twice the buckets, noting each one's new bucket.
    #[cold]
    fn rebuild_unpinned(&mut self) {
        self.unpinned.clear_and_grow();
        for entry in &mut self.slots {
            if let Some((label, false)) = entry.caller() {
                entry.link = self.unpinned.add(label).0;
            }
        }
    }

    /// The identities of every caller operation in flight with `label`,
    /// oldest first.
    pub(crate) fn identities_with_label(&self, label: UserData) -> Vec<u64> {
        if let Some(&slot) = self.pinned.get(label) {
            return vec![self.identity(slot)];
        }
        if !self.unpinned.may_contain(label) {
            return Vec::new();
        }
        let mut found: Vec<(u64, u32)> = self
            .unpinned_with(label)
            .map(|slot| (self.added[slot as usize], slot))
            .collect();
        found.sort_unstable();
        found
            .into_iter()
            .map(|(_, slot)| self.identity(slot))
            .collect()
    }

    /// How many caller operations in flight carry `label`; for tests.
    #[cfg(test)]
    fn label_count(&self, label: UserData) -> u32 {
        let pinned = u32::from(self.pinned.contains(label));
        pinned + self.unpinned_with(label).count() as u32
    }
}

#[cfg(test)]
mod tests;
