//! The iterator [`URingContext::wait`] returns.

use std::io;

use super::table::{Claimed, CLAIM_BATCH};
use super::{lock, URingContext};
use crate::abi::UserData;

/// Yields ready completions; see [`URingContext::wait`].
///
/// It claims completions under the context's lock: one on the first call
/// (the common `wait()?.next()` hands nothing back), then batches of up to
/// 65. The first completion of each claim is handed to the caller at once;
/// the rest go onto the context's claim board and are yielded without the
/// lock, each publishing the count yielded so far, so whoever next takes
/// the lock can release their operations. Dropped early, it hands the unyielded rest
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
    /// With a record, items `next..len` of its batch on the context's
    /// claim board are claimed and not yet yielded.
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
            next: 0,
            len: 0,
            record: None,
            claimed_before: false,
            exhausted: false,
        }
    }

    /// Ends the current batch, every completion of which has been yielded,
    /// claims the next, and yields its first completion.
    #[inline(never)]
    fn refill(&mut self) -> Option<(UserData, io::Result<u32>)> {
        if self.ring.check_process().is_err() {
            // An iterator carried across fork: the completions are the
            // parent's.
            self.exhausted = true;
            return None;
        }
        let board = &self.ring.claim_board;
        let mut guard = lock(&self.ring.state);
        let side = &mut *guard;
        if let Some(id) = self.record.take() {
            side.table.close_record(id, self.len, board);
        }
        // A batch needs a record; the first claim of an iterator takes one
        // completion only.
        let record = self
            .claimed_before
            .then(|| side.table.free_record())
            .flatten();
        let want = if record.is_some() { CLAIM_BATCH + 1 } else { 1 };
        self.claimed_before = true;
        // The first is yielded now; the rest go onto the board, for the
        // record.
        let mut first = None;
        let count = side
            .table
            .claim(&mut side.cq, want, |i, item| match (i, record) {
                (0, _) => first = Some(item),
                (_, Some(id)) => board.write(id, i - 1, item),
                (_, None) => unreachable!("claimed more than one without a record"),
            });
        self.exhausted = count < want || !side.table.has_unclaimed(&side.cq);
        if let Some(first) = &first {
            // The caller has the first one as soon as this returns.
            side.table.yielded(first);
        }
        if let (true, Some(id)) = (count > 1, record) {
            side.table.open_record(id, count - 1, board);
            (self.next, self.len, self.record) = (0, count - 1, Some(id));
        }
        self.ring.unlock(guard);
        first.as_ref().map(as_item)
    }
}

impl Iterator for Completions<'_> {
    type Item = (UserData, io::Result<u32>);

    // Inlined into the caller's loop: yielding from a batch is a few loads
    // and a store, less than a call's prologue and epilogue.
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.next < self.len {
            let id = self.record.expect("a batch has a record");
            let board = &self.ring.claim_board;
            let item = as_item(&board.read(id, self.next));
            self.next += 1;
            board.publish_yielded(id, self.next);
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
        if self.ring.check_process().is_err() {
            // Carried across fork: the lock may have been held by a parent
            // thread the child does not have. Leave the parent's state be.
            return;
        }
        let mut side = lock(&self.ring.state);
        let handed_back = side
            .table
            .close_record(id, self.next, &self.ring.claim_board);
        self.ring.unlock(side);
        if handed_back > 0 {
            self.ring.post_wake();
        }
    }
}
