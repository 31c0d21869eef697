//! The iterator [`URingContext::wait`] returns.

use std::io;
use std::sync::atomic::Ordering;

use super::table::{Claimed, CLAIM_BATCH};
use super::{lock, URingContext};
use crate::abi::UserData;

/// Yields ready completions; see [`URingContext::wait`].
///
/// It claims completions under the completion lock: one on the first call
/// (the common `wait()?.next()` hands nothing back), then batches. The
/// first completion of each claim is handed to the caller at once; the rest
/// are yielded without the lock, each publishing the count yielded so far
/// through the context's `claim_progress`, so whoever next takes the lock
/// can release their operations. Dropped early, it hands the unyielded rest
/// back, to be claimed again first, and posts a wake-up so the ring fd
/// polls readable for them. It ends after a claim that found nothing more
/// to claim rather than lock again for completions that arrived since.
///
/// `mem::forget` of an iterator leaks its unyielded completions (their
/// operations stay in flight until drop or `close`) and one of the
/// context's claim records; it never stalls the ring, whose head the claim
/// already moved.
pub(super) struct Completions<'a> {
    ring: &'a URingContext,
    /// `batch[next..len]` are claimed and not yet yielded; with a record,
    /// it holds `batch[1..len]` (`batch[0]` was yielded as it was claimed).
    batch: [Claimed; CLAIM_BATCH],
    next: usize,
    len: usize,
    /// The record of the current batch, when it has one.
    record: Option<usize>,
    /// A claim has been made: the next takes a batch.
    claimed_before: bool,
    /// The last claim took everything there was.
    exhausted: bool,
}

/// A claimed completion as the caller sees it.
fn as_item(claimed: &Claimed) -> (UserData, io::Result<u32>) {
    let result = if claimed.res < 0 {
        Err(io::Error::from_raw_os_error(-claimed.res))
    } else {
        Ok(claimed.res as u32)
    };
    (claimed.label, result)
}

impl<'a> Completions<'a> {
    pub(super) fn new(ring: &'a URingContext) -> Completions<'a> {
        Completions {
            ring,
            batch: [Claimed::EMPTY; CLAIM_BATCH],
            next: 0,
            len: 0,
            record: None,
            claimed_before: false,
            exhausted: false,
        }
    }

    /// Ends the current batch, every completion of which has been yielded,
    /// claims the next, and yields its first completion.
    fn refill(&mut self) -> Option<(UserData, io::Result<u32>)> {
        if self.ring.check_process().is_err() {
            // An iterator carried across fork: the completions are the
            // parent's.
            self.exhausted = true;
            return None;
        }
        let mut guard = lock(&self.ring.state);
        let side = &mut *guard;
        if let Some(id) = self.record.take() {
            side.table.close_record(id, self.len - 1);
        }
        // A batch needs a record; the first claim of an iterator takes one
        // completion only.
        let record = self
            .claimed_before
            .then(|| side.table.free_record())
            .flatten();
        let want = if record.is_some() { CLAIM_BATCH } else { 1 };
        self.claimed_before = true;
        // Claimed straight into the batch: the first is yielded now, the
        // rest from `batch[1..]`.
        let count = side.table.claim(&mut side.cq, &mut self.batch[..want]);
        self.exhausted = count < want || !side.table.has_unclaimed(&side.cq);
        let first = self.batch[..count].first().copied();
        if let Some(first) = &first {
            // The caller has the first one as soon as this returns.
            side.table.yielded(first);
        }
        if let (true, Some(id)) = (count > 1, record) {
            side.table.open_record(id, &self.batch[1..count]);
            // Under the lock, before anyone can settle this record.
            self.ring.claim_progress[id].store(0, Ordering::Relaxed);
            (self.next, self.len, self.record) = (1, count, Some(id));
        }
        self.ring.unlock(guard);
        first.as_ref().map(as_item)
    }
}

impl Iterator for Completions<'_> {
    type Item = (UserData, io::Result<u32>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next < self.len {
            let item = as_item(&self.batch[self.next]);
            self.next += 1;
            let id = self.record.expect("a batch has a record");
            // Release: whoever settles this record with an Acquire load
            // sees that the caller has every completion of it before
            // `next` (the record holds `batch[1..len]`).
            self.ring.claim_progress[id].store(self.next as u32 - 1, Ordering::Release);
            return Some(item);
        }
        if self.exhausted {
            return None;
        }
        self.refill()
    }
}

impl Drop for Completions<'_> {
    fn drop(&mut self) {
        let Some(id) = self.record.take() else {
            return;
        };
        let mut side = lock(&self.ring.state);
        let handed_back = side.table.close_record(id, self.next - 1);
        self.ring.unlock(side);
        if handed_back > 0 {
            self.ring.post_wake();
        }
    }
}
