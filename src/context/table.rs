//! [`OpTable`]: every operation the context has queued and not yet handed
//! to the caller (its identity, its caller label, what it keeps alive), and
//! the completions claimed from the CQ ring but not yet yielded.
//!
//! Pure bookkeeping: no unsafe code, no ring memory. The context keeps it
//! under the completion lock.
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
//! completion. A completions iterator claims a batch under the lock and
//! yields from it without the lock, publishing how many it has yielded
//! through an atomic ([`settle_all`](OpTable::settle_all) reads it); the
//! batch is recorded here, so the yielded part can be released by whoever
//! next holds the lock, and the rest handed back if the iterator is dropped.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use super::labels::LabelTable;
use crate::abi::UserData;
use crate::iobuf::KernelIovecs;
use crate::op::{KeepAlive, SharedFd};

mod claims;

pub(crate) use claims::Claimed;
use claims::Record;

/// The most completions one claim takes.
pub(crate) const CLAIM_BATCH: usize = 16;

/// The most claims that may be outstanding at once (live iterators with a
/// batch). Past it, iterators claim one completion at a time, which needs
/// no record.
pub(crate) const MAX_CLAIMS: usize = 32;

/// Why an operation could not be tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The label rule: this operation or one in flight with its label pins
    /// caller memory.
    SharedLabel,
    /// The cap on operations in flight is reached.
    Full,
}

/// Who an operation is for.
enum Owner {
    /// The caller, under `label`.
    Caller { label: UserData },
    /// The context itself (a wake-up nop, drain's cancellation of
    /// `target`): its completion is swallowed.
    Internal { target: Option<u64> },
}

struct Tracked {
    owner: Owner,
    keep_alive: KeepAlive,
    /// When it was tracked: operations sharing a label are ordered by it.
    added: u64,
}

#[derive(Default)]
struct Slot {
    generation: u16,
    op: Option<Tracked>,
}

/// What the label rule needs to know of one label.
struct LabelUse {
    /// Operations in flight with this label.
    count: u32,
    /// One of them pins caller memory (then it is the only one).
    pinned: bool,
    /// The slot of the only one, while no other has shared the label: what
    /// cancelling by label aims at without searching.
    only: Option<u32>,
}

/// The operations in flight and the completions claimed; see the module
/// docs.
pub(crate) struct OpTable {
    /// The top 16 bits of every identity this table hands out.
    tag: u64,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    labels: LabelTable<LabelUse>,
    caller_ops: usize,
    internal_ops: usize,
    /// Operations tracked so far, for their `added` order.
    added: u64,
    /// Outstanding claims by id; `None` is a free id.
    records: Vec<Option<Record>>,
    /// Completions handed back by an iterator dropped before yielding
    /// them, served before the ring's.
    returned: VecDeque<Claimed>,
    /// Files of released operations, not yet dropped (see `release`).
    released_files: Vec<SharedFd>,
}

const SLOT_BITS: u32 = 32;
const GENERATION_BITS: u32 = 16;

/// What contexts leaked because the kernel might still use it (iovec
/// arrays, files held open), kept for the life of the process. Holding it
/// here rather than forgetting it keeps it reachable, so leak checkers
/// (LeakSanitizer, Miri) tell these deliberate leaks from real ones.
static LEAKED: std::sync::Mutex<Vec<KernelIovecs>> = std::sync::Mutex::new(Vec::new());

/// An identity no operation ever has: its slot index is never allocated.
/// A cancellation aimed at it finds nothing (`ENOENT`).
const NO_SLOT: u64 = u32::MAX as u64;

impl OpTable {
    pub(crate) fn new() -> OpTable {
        let random = std::collections::hash_map::RandomState::new().hash_one(0x7a6u64);
        OpTable {
            // The top bit set: a tag is never 0, so small user_data values
            // another ring posts (`msg_ring`) never look like ours.
            tag: (0x8000 | (random & 0x7fff)) << (SLOT_BITS + GENERATION_BITS),
            slots: Vec::new(),
            free_slots: Vec::new(),
            labels: LabelTable::new(),
            caller_ops: 0,
            internal_ops: 0,
            added: 0,
            records: (0..MAX_CLAIMS).map(|_| None).collect(),
            returned: VecDeque::new(),
            released_files: Vec::new(),
        }
    }

    fn identity(&self, slot: u32) -> u64 {
        let generation = u64::from(self.slots[slot as usize].generation);
        self.tag | generation << SLOT_BITS | u64::from(slot)
    }

    /// The identity a cancellation carries to find nothing.
    pub(crate) fn no_identity(&self) -> u64 {
        self.tag | NO_SLOT
    }

    /// The slot `identity` names, if it is an operation of this table in
    /// flight.
    pub(super) fn decode(&self, identity: u64) -> Option<u32> {
        let tag_mask = !0u64 << (SLOT_BITS + GENERATION_BITS);
        if identity & tag_mask != self.tag {
            return None;
        }
        let slot = identity as u32;
        let entry = self.slots.get(slot as usize)?;
        let generation = (identity >> SLOT_BITS) as u16;
        (entry.op.is_some() && entry.generation == generation).then_some(slot)
    }

    fn allocate(&mut self, owner: Owner, keep_alive: KeepAlive) -> u32 {
        self.added += 1;
        let tracked = Tracked {
            owner,
            keep_alive,
            added: self.added,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot::default());
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 operations in flight")
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.generation = entry.generation.wrapping_add(1);
        entry.op = Some(tracked);
        slot
    }

    /// Operations tracked, the caller's and the context's own.
    pub(crate) fn tracked(&self) -> usize {
        self.caller_ops + self.internal_ops
    }

    /// The caller's operations in flight: not yet handed to the caller.
    /// Call [`settle_all`](Self::settle_all) first for an exact count.
    pub(crate) fn caller_ops(&self) -> usize {
        self.caller_ops
    }

    /// The context's own operations in flight.
    pub(crate) fn internal_ops(&self) -> usize {
        self.internal_ops
    }

    /// Tracks a caller's operation under `label` unless `cap` operations
    /// are tracked or the label rule refuses it; returns its identity. A
    /// refusal hands `keep_alive` back.
    pub(crate) fn track_caller(
        &mut self,
        label: UserData,
        pins: bool,
        keep_alive: KeepAlive,
        cap: usize,
    ) -> Result<u64, (Refusal, KeepAlive)> {
        if self.tracked() >= cap {
            return Err((Refusal::Full, keep_alive));
        }
        if let Some(used) = self.labels.get_mut(label) {
            if pins || used.pinned {
                return Err((Refusal::SharedLabel, keep_alive));
            }
            used.count += 1;
            used.only = None;
        }
        let slot = self.allocate(Owner::Caller { label }, keep_alive);
        if !self.labels.contains(label) {
            let used = LabelUse {
                count: 1,
                pinned: pins,
                only: Some(slot),
            };
            // Cannot fail: the label is absent.
            let _ = self.labels.insert(label, used);
        }
        self.caller_ops += 1;
        Ok(self.identity(slot))
    }

    /// Tracks an operation of the context's own (cancelling `target`, if
    /// any) unless `cap` operations are tracked; returns its identity.
    pub(crate) fn track_internal(&mut self, target: Option<u64>, cap: usize) -> Option<u64> {
        if self.tracked() >= cap {
            return None;
        }
        let slot = self.allocate(Owner::Internal { target }, KeepAlive::default());
        self.internal_ops += 1;
        Some(self.identity(slot))
    }

    /// Stops tracking `slot`, whose operation is done: frees its iovec
    /// array and sets aside the file it held, which may run the caller's
    /// code when dropped: [`take_released_files`](Self::take_released_files)
    /// hands those over to be dropped once the lock is released.
    pub(super) fn release(&mut self, slot: u32) {
        let keep_alive = self.stop_tracking(slot);
        if let Some(file) = keep_alive.file {
            self.released_files.push(file);
        }
    }

    /// The files of operations released since the last call, to drop
    /// outside the completion lock. Allocates nothing when there are none.
    pub(crate) fn take_released_files(&mut self) -> Vec<SharedFd> {
        if self.released_files.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut self.released_files)
    }

    /// Stops tracking `slot`, returning what it kept alive.
    fn stop_tracking(&mut self, slot: u32) -> KeepAlive {
        let tracked = self.slots[slot as usize]
            .op
            .take()
            .expect("released a slot that holds no operation");
        self.free_slots.push(slot);
        match tracked.owner {
            Owner::Caller { label, .. } => {
                self.caller_ops -= 1;
                let used = self
                    .labels
                    .get_mut(label)
                    .expect("a tracked label is in the label table");
                used.count -= 1;
                if used.count == 0 {
                    self.labels.remove(label);
                }
            }
            Owner::Internal { .. } => self.internal_ops -= 1,
        }
        tracked.keep_alive
    }

    /// Undoes [`track_caller`](Self::track_caller) or
    /// [`track_internal`](Self::track_internal) for an operation that will
    /// not be published after all; returns what it kept alive.
    pub(crate) fn untrack(&mut self, identity: u64) -> KeepAlive {
        let slot = self
            .decode(identity)
            .expect("untracked an unknown identity");
        self.stop_tracking(slot)
    }

    /// The identities of every caller operation in flight with `label`,
    /// oldest first.
    pub(crate) fn identities_with_label(&self, label: UserData) -> Vec<u64> {
        let Some(used) = self.labels.get(label) else {
            return Vec::new();
        };
        if let Some(slot) = used.only {
            return vec![self.identity(slot)];
        }
        let mut found: Vec<(u64, u32)> = (0..self.slots.len() as u32)
            .filter_map(|slot| match &self.slots[slot as usize].op {
                Some(Tracked {
                    owner: Owner::Caller { label: l },
                    added,
                    ..
                }) if *l == label => Some((*added, slot)),
                _ => None,
            })
            .collect();
        found.sort_unstable();
        found
            .into_iter()
            .map(|(_, slot)| self.identity(slot))
            .collect()
    }

    /// The identities of the caller's operations in flight that no
    /// cancellation of the context's own is aimed at.
    pub(crate) fn uncancelled(&self) -> Vec<u64> {
        let targeted: std::collections::HashSet<u64> = self
            .slots
            .iter()
            .filter_map(|entry| match &entry.op {
                Some(Tracked {
                    owner: Owner::Internal { target },
                    ..
                }) => *target,
                _ => None,
            })
            .collect();
        (0..self.slots.len() as u32)
            .filter(|&slot| {
                matches!(
                    &self.slots[slot as usize].op,
                    Some(Tracked {
                        owner: Owner::Caller { .. },
                        ..
                    })
                )
            })
            .map(|slot| self.identity(slot))
            .filter(|identity| !targeted.contains(identity))
            .collect()
    }

    /// Releases every operation, dropping what it keeps alive: for a ring
    /// the kernel never consumed an SQE of (it is still disabled).
    pub(crate) fn release_everything(&mut self) {
        self.release_all_claims();
        for slot in 0..self.slots.len() as u32 {
            if self.slots[slot as usize].op.is_some() {
                self.release(slot);
            }
        }
    }

    /// Stops tracking every operation without freeing the memory the
    /// kernel may still use: the iovec arrays go to [`LEAKED`], where they
    /// stay for the life of the process. Files held open are closed (the
    /// kernel holds its own reference to a file it uses).
    pub(crate) fn leak_all(&mut self) {
        let mut leaked = LEAKED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for entry in &mut self.slots {
            if let Some(tracked) = entry.op.take() {
                if let Some(iovecs) = tracked.keep_alive.iovecs {
                    leaked.push(iovecs);
                }
            }
        }
        drop(leaked);
        self.clear();
    }

    /// Forgets every operation, dropping nothing it keeps alive and taking
    /// no lock: for a forked child's copy, whose state is the parent's.
    pub(crate) fn forget_all(&mut self) {
        for entry in &mut self.slots {
            if let Some(tracked) = entry.op.take() {
                std::mem::forget(tracked.keep_alive);
            }
        }
        self.clear();
    }

    /// Empties the table once every slot has been taken care of.
    fn clear(&mut self) {
        self.slots.clear();
        self.free_slots.clear();
        self.labels = LabelTable::new();
        self.caller_ops = 0;
        self.internal_ops = 0;
        self.records.iter_mut().for_each(|record| *record = None);
        self.returned.clear();
    }

    /// How many caller operations in flight carry `label`; for tests.
    #[cfg(test)]
    fn label_count(&self, label: UserData) -> u32 {
        self.labels.get(label).map_or(0, |used| used.count)
    }
}

#[cfg(test)]
mod tests;
