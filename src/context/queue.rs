//! Queueing: the generic add path every operation takes, batches, and the
//! context's own SQEs (wake-up nops, drain's cancellations).

use std::sync::atomic::Ordering;

use super::table::{OpTable, Refusal};
use super::{lock, URingContext};
use crate::abi::{IosqeFlags, Sqe, URingOperation, UserData};
use crate::op::{OpBatch, Operation, Prepared, Resolve, UnderRequiredFlags};
use crate::{Error, Result};

impl URingContext {
    /// Queues `op` under the label `user_data`; [`submit`](Self::submit)
    /// or [`wait`](Self::wait) sends it to the kernel.
    ///
    /// The context keeps what the operation needs (its iovec array, a file
    /// held by [`Target`](crate::op::Target)) until its completion has been
    /// handed to the caller.
    ///
    /// Fails, queueing nothing, with:
    /// - [`Error::NoSpace`]: the submission queue is full, or the in-flight
    ///   cap is reached: as many operations are in flight as the ring allows
    ///   (16 times [`cq_entries`](Self::cq_entries) with
    ///   `IORING_FEAT_NODROP`, one fewer than `cq_entries` without it),
    ///   counting the context's own (wake-up nops, the extra cancellations of
    ///   a cancel by label). `submit` and retry for a full queue; reap
    ///   completions with [`wait`](Self::wait) for the cap;
    /// - [`Error::DuplicateUserData`]: `op` pins caller memory and an
    ///   operation with this label is in flight, or one in flight with this
    ///   label pins caller memory (see [User data](Self#user-data));
    /// - [`Error::FixedFileNotSupported`]: the ring's allowlist requires
    ///   `FIXED_FILE` and the kernel refuses it on `op` (see
    ///   [`require_sqe_flags`](crate::URingAllowlist::require_sqe_flags));
    /// - [`Error::InvalidChain`]: `op` is a
    ///   [`LinkTimeout`](crate::op::LinkTimeout), which only works right
    ///   after a linked operation of the same [`OpBatch`];
    /// - the operation's own errors ([`Error::InvalidOffset`],
    ///   [`Error::TooManyIovecs`]).
    ///
    /// ```
    /// use ringfence::op::Nop;
    /// use ringfence::URingContext;
    ///
    /// let ring = URingContext::new(8, None)?;
    /// // Nops pin nothing, so they may share a label.
    /// ring.add(Nop::new(), 7)?;
    /// ring.add(Nop::new(), 7)?;
    /// let mut labels = Vec::new();
    /// while labels.len() < 2 {
    ///     labels.extend(ring.wait()?.map(|(user_data, _)| user_data));
    /// }
    /// assert_eq!(labels, [7, 7]);
    /// # Ok::<(), ringfence::Error>(())
    /// ```
    pub fn add<O: Operation>(&self, op: O, user_data: UserData) -> Result<()> {
        let prepared = op.prepare()?;
        crate::op::check_chains([&prepared])?;
        self.check_required_flags([&prepared])?;
        if prepared.resolve != Resolve::Nothing {
            return self.queue(&mut [(prepared, user_data)]);
        }
        self.queue_one(prepared, user_data)
    }

    /// Queues every operation in `batch` under one lock, or none of them:
    /// the way to add many operations at the cost of one. On success the
    /// batch is left empty (keeping its capacity, so reusing it allocates
    /// nothing); on failure it is left as it was.
    ///
    /// Fails as [`add`](Self::add) does, for any operation of the batch
    /// (the label rule also applies between operations of the batch);
    /// [`Error::NoSpace`] if the submission queue lacks room for the whole
    /// batch (submit, then retry; a batch larger than
    /// [`sq_entries`](Self::sq_entries) never fits), or the batch would take
    /// the operations in flight past the in-flight cap (see
    /// [`add`](Self::add); reap completions, then retry);
    /// [`Error::InvalidChain`] if a chain of the batch is not whole (see
    /// [Chains](OpBatch#chains)).
    pub fn add_batch(&self, batch: &mut OpBatch) -> Result<()> {
        crate::op::check_chains(batch.ops_mut().iter().map(|(op, _)| op))?;
        self.check_required_flags(batch.ops_mut().iter().map(|(op, _)| op))?;
        self.queue(batch.ops_mut())?;
        batch.clear();
        Ok(())
    }

    /// Queues every operation in `ops`, or none. Queued ones are left
    /// without what they keep alive (the context holds it now); refused ones
    /// keep theirs.
    ///
    /// Operations are tracked before their SQEs are published, so a
    /// completion always finds its record, and both happen under the
    /// lock, so a refusal leaves nothing behind.
    fn queue(&self, ops: &mut [(Prepared, UserData)]) -> Result<()> {
        let cap = self.in_flight_cap;
        self.check_process()?;
        // Files released while settling; declared before the guard, so
        // dropped after it is released.
        let _released_files;
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let table = &mut state.table;
        // Cancellations by label aimed at more than one operation: one
        // extra SQE of the context's own for each further target.
        let mut extra: Vec<Sqe> = Vec::new();
        let mut tracked = 0;
        let mut failure = None;
        let mut settled = false;
        for (prepared, label) in ops.iter_mut() {
            if let Resolve::TargetLabel(target) = prepared.resolve {
                // Completions the caller already has are no targets: settle
                // once per batch (this call holds the lock throughout).
                if !settled {
                    table.settle_all(&self.claim_board);
                    settled = true;
                }
                let targets = table.identities_with_label(target);
                let first = targets.first().copied();
                prepared.sqe.set_addr(first.unwrap_or(table.no_identity()));
                for &further in targets.iter().skip(1) {
                    let Some(identity) = table.track_internal(Some(further), cap) else {
                        failure = Some(Error::NoSpace);
                        break;
                    };
                    let mut sqe = prepared.sqe.clone();
                    sqe.set_addr(further);
                    sqe.set_user_data(identity);
                    sqe.set_flags(self.own_sqe_flags());
                    extra.push(sqe);
                }
                if failure.is_some() {
                    break;
                }
            }
            match self.track(table, prepared, *label) {
                Ok(identity) => {
                    prepared.sqe.set_user_data(identity);
                    tracked += 1;
                }
                Err(refusal) => {
                    failure = Some(refusal.error(*label));
                    break;
                }
            }
        }
        _released_files = table.take_released();
        let count = u32::try_from(ops.len() + extra.len()).ok();
        let slots = match failure {
            None => count.and_then(|count| state.sq.free_slots(count)),
            Some(_) => None,
        };
        let Some(slots) = slots else {
            // Undo this call's tracking: none of `ops` goes.
            for (prepared, _) in &mut ops[..tracked] {
                prepared.keep_alive = table.untrack(prepared.sqe.user_data());
            }
            for sqe in &extra {
                table.untrack(sqe.user_data());
            }
            return Err(failure.unwrap_or(Error::NoSpace));
        };
        if !extra.is_empty() {
            self.publish_hints(table);
        }
        for (prepared, _) in ops.iter_mut() {
            self.carry_required_flags(prepared);
        }
        let sqes = ops.iter().map(|(op, _)| &op.sqe).chain(&extra);
        state.sq.publish(slots, sqes);
        Ok(())
    }

    /// [`queue`](Self::queue) for one operation that needs no resolving:
    /// the path of every single add.
    fn queue_one(&self, mut prepared: Prepared, label: UserData) -> Result<()> {
        self.check_process()?;
        // Files released while settling; declared before the guard, so
        // dropped after it is released.
        let released_files;
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        // Refusals in the order `queue` gives them: the cap and the label
        // rule, then the submission queue's room.
        let tracked = self.track(&mut state.table, &mut prepared, label);
        released_files = state.table.take_released();
        let identity = tracked.map_err(|refusal| refusal.error(label))?;
        let Some(slots) = state.sq.free_slots(1) else {
            prepared.keep_alive = state.table.untrack(identity);
            return Err(Error::NoSpace);
        };
        prepared.sqe.set_user_data(identity);
        self.carry_required_flags(&mut prepared);
        state.sq.publish(slots, std::iter::once(&prepared.sqe));
        drop(guard);
        drop(released_files);
        Ok(())
    }

    /// Tracks a caller's operation in `table` (see
    /// [`OpTable::track_caller`]), taking what it keeps alive from
    /// `prepared`; returns its identity.
    ///
    /// When the label rule refuses, the operation in the way may have been
    /// handed to the caller already by an iterator whose progress is not
    /// yet settled: settle and try once more. Files that releases set aside
    /// stay in the table, for the caller to take and drop once unlocked.
    // Inlined into both callers: the one-op path is the hot one.
    #[inline(always)]
    fn track(
        &self,
        table: &mut OpTable,
        prepared: &mut Prepared,
        label: UserData,
    ) -> std::result::Result<u64, Refusal> {
        let (pins, cap) = (prepared.pins_caller_memory, self.in_flight_cap);
        let keep_alive = &mut prepared.keep_alive;
        let mut result = table.track_caller(label, pins, keep_alive, cap);
        if result == Err(Refusal::SharedLabel) {
            table.settle_all(&self.claim_board);
            result = table.track_caller(label, pins, keep_alive, cap);
        }
        result
    }

    /// Refuses operations that cannot run on a ring whose allowlist
    /// requires `FIXED_FILE` ([`Error::FixedFileNotSupported`]), if this
    /// ring's does.
    #[inline]
    fn check_required_flags<'a>(&self, ops: impl IntoIterator<Item = &'a Prepared>) -> Result<()> {
        if !self.own_sqe_flags().contains(IosqeFlags::FIXED_FILE) {
            return Ok(());
        }
        for prepared in ops {
            if UnderRequiredFlags::of(prepared) == UnderRequiredFlags::Refused {
                return Err(Error::FixedFileNotSupported(prepared.opcode()));
            }
        }
        Ok(())
    }

    /// Gives a caller's operation that names no file `FIXED_FILE` when
    /// this ring's allowlist requires it, so that it passes the
    /// restriction: the kernel ignores it on such an operation. (A
    /// required `ASYNC` is not given: it changes how an operation runs,
    /// and the caller sets it with [`SqeFlags`](crate::SqeFlags).)
    #[inline]
    fn carry_required_flags(&self, prepared: &mut Prepared) {
        if !self.own_sqe_flags().contains(IosqeFlags::FIXED_FILE) {
            return;
        }
        if UnderRequiredFlags::of(prepared) == UnderRequiredFlags::Carries {
            let flags = prepared.sqe.flags() | IosqeFlags::FIXED_FILE;
            prepared.sqe.set_flags(flags);
        }
    }

    /// Queues an SQE of the context's own (a wake-up nop, or with `target`
    /// a cancellation of that identity), carrying the flags the allowlist
    /// requires; refused past `cap` operations tracked or without room in
    /// the submission queue.
    pub(super) fn queue_own(&self, mut sqe: Sqe, target: Option<u64>, cap: usize) -> Result<()> {
        self.check_process()?;
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let slots = state.sq.free_slots(1).ok_or(Error::NoSpace)?;
        let identity = state
            .table
            .track_internal(target, cap)
            .ok_or(Error::NoSpace)?;
        self.publish_hints(&state.table);
        if let Some(target) = target {
            sqe.set_addr(target);
        }
        sqe.set_user_data(identity);
        sqe.set_flags(self.own_sqe_flags());
        state.sq.publish(slots, std::iter::once(&sqe));
        Ok(())
    }

    /// Makes the ring fd poll readable for completions an iterator handed
    /// back: their CQEs left the ring when they were claimed, so a nop of
    /// the context's own posts one that wakes pollers and waiters, and is
    /// swallowed when claimed. If it cannot be queued now (no room), the
    /// next `submit` queues it.
    pub(super) fn post_wake(&self) {
        self.wake_owed.store(true, Ordering::Relaxed);
        let _ = self.submit();
    }

    /// Queues the wake-up nop owed, if one is.
    #[inline]
    pub(super) fn pay_wake_owed(&self) {
        if self.wake_owed.load(Ordering::Relaxed) {
            self.pay_wake_owed_now();
        }
    }

    /// [`pay_wake_owed`](Self::pay_wake_owed) once one is owed.
    #[cold]
    fn pay_wake_owed_now(&self) {
        if !self.wake_owed.swap(false, Ordering::Relaxed) {
            return;
        }
        if self
            .queue_own(Sqe::new(URingOperation::Nop), None, self.in_flight_cap)
            .is_err()
        {
            self.wake_owed.store(true, Ordering::Relaxed);
        }
    }
}
