//! The iterator [`URingContext::wait`] and
//! [`URingContext::wait_completions`] return, and [`Completion`].

use std::io;

use super::table::{Claimed, CLAIM_BATCH};
use super::{lock, URingContext};
use crate::abi::{CqeFlags, UserData, CQE_BUFFER_SHIFT};

/// One completion with its flags, as
/// [`wait_completions`](URingContext::wait_completions) yields it.
///
/// The flags are the CQE's `flags` field (`io_uring_enter(2)`, "IO
/// completion data structure").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    user_data: UserData,
    res: i32,
    flags: u32,
}

impl Completion {
    /// The user_data the operation was added with.
    pub fn user_data(&self) -> UserData {
        self.user_data
    }

    /// The result: the kernel's non-negative result (bytes transferred, a
    /// poll's ready `POLL*` events, 0), or its negative result `-errno` as
    /// `io::Error::from_raw_os_error(errno)`.
    pub fn result(&self) -> io::Result<u32> {
        if self.res < 0 {
            Err(io::Error::from_raw_os_error(-self.res))
        } else {
            Ok(self.res as u32)
        }
    }

    /// `IORING_CQE_F_MORE` (Linux 5.13): the operation will complete again,
    /// so it is still in flight (its user_data taken, what it keeps alive
    /// kept). Its last completion, the one that releases it, is the first
    /// without MORE: for a multishot operation, when it is cancelled,
    /// fails, or finds no room in the completion ring (`io_uring_enter(2)`,
    /// `IORING_POLL_ADD_MULTI`; the full ring measured on Linux 6.18,
    /// `tests/multishot.rs`); for a zero-copy send, its notification
    /// (`io_uring_enter(2)`, `IORING_OP_SEND_ZC`).
    pub fn more(&self) -> bool {
        self.flags & CqeFlags::MORE.bits() != 0
    }

    /// With `IORING_CQE_F_BUFFER` (Linux 5.7), the id of the provided
    /// buffer the kernel picked for this completion's data, from the flags'
    /// upper 16 bits (`IORING_CQE_BUFFER_SHIFT`); `None` without.
    pub fn buffer_id(&self) -> Option<u16> {
        (self.flags & CqeFlags::BUFFER.bits() != 0)
            .then_some((self.flags >> CQE_BUFFER_SHIFT) as u16)
    }

    /// `IORING_CQE_F_SOCK_NONEMPTY` (Linux 5.19): the socket still had data
    /// to read when this receive completed.
    pub fn sock_nonempty(&self) -> bool {
        self.flags & CqeFlags::SOCK_NONEMPTY.bits() != 0
    }

    /// `IORING_CQE_F_NOTIF` (Linux 6.0): this is a zero-copy send's
    /// notification that the kernel no longer uses the buffer, not the
    /// send's own completion.
    pub fn notification(&self) -> bool {
        self.flags & CqeFlags::NOTIF.bits() != 0
    }

    /// The CQE's flags as the kernel wrote them: `IORING_CQE_F_*` bits
    /// below bit 16, a provided buffer's id above; for flags this type has
    /// no method for.
    pub fn raw_flags(&self) -> u32 {
        self.flags
    }
}

impl From<Claimed> for Completion {
    #[inline]
    fn from(claimed: Claimed) -> Completion {
        Completion {
            user_data: claimed.label,
            res: claimed.res,
            flags: claimed.flags,
        }
    }
}

/// Yields ready completions as the table claimed them; [`URingContext::wait`]
/// maps each to `(user_data, result)` with [`as_item`], and
/// [`URingContext::wait_completions`] to a [`Completion`].
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

/// A claimed completion as `wait`'s caller sees it.
#[inline]
pub(super) fn as_item(claimed: Claimed) -> (UserData, io::Result<u32>) {
    let completion = Completion::from(claimed);
    (completion.user_data, completion.result())
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
    fn refill(&mut self) -> Option<Claimed> {
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
        first
    }
}

impl Iterator for Completions<'_> {
    type Item = Claimed;

    // Inlined into the caller's loop: yielding from a batch is a few loads
    // and a store, less than a call's prologue and epilogue.
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.next < self.len {
            let id = self.record.expect("a batch has a record");
            let board = &self.ring.claim_board;
            let item = board.read(id, self.next);
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
