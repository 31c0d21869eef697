//! [`OpBatch`]: operations gathered without any lock, queued together by
//! [`URingContext::add_batch`](crate::URingContext::add_batch).

use super::{Operation, Prepared};
use crate::abi::{IosqeFlags, URingOperation, UserData};
use crate::{Error, Result};

/// Operations to queue together with
/// [`URingContext::add_batch`](crate::URingContext::add_batch): one lock for
/// the lot instead of one per operation, and all or none of them queued.
///
/// [`add`](Self::add) takes the same operation values as
/// [`URingContext::add`](crate::URingContext::add) and checks them at once
/// (a bad offset or too many iovecs fail here); errors that depend on the
/// ring (no room, a user_data that may not be shared) come from
/// `add_batch`. A batch keeps its capacity when `add_batch` empties it, so
/// one reused batch allocates nothing after the first round.
///
/// # Chains
///
/// [`add_linked`](Self::add_linked) and
/// [`add_hardlinked`](Self::add_hardlinked) join an operation to the next
/// one of the batch (`IOSQE_IO_LINK`, Linux 5.3; `IOSQE_IO_HARDLINK`, 5.5):
/// the kernel starts the next only when this one has completed, and after
/// a plain link only if it succeeded (otherwise the rest of the chain
/// completes with `ECANCELED`). A [`LinkTimeout`](crate::op::LinkTimeout)
/// added right after a linked operation bounds it: a read with a deadline.
/// A chain lives inside one batch, whose SQEs the context publishes
/// together and always submits whole, so no other thread's operation can
/// slip into it; a batch, and so a chain, holds at most
/// [`sq_entries`](crate::URingContext::sq_entries) operations. On a
/// restricted ring the links are SQE flags like any other: the allowlist
/// must allow `IO_LINK` or `IO_HARDLINK`
/// ([`allow_sqe_flags`](crate::URingAllowlist::allow_sqe_flags)), or the
/// kernel refuses the chain's head with `EACCES` (and the rest of the chain
/// with `ECANCELED`).
///
/// ```
/// use std::time::Duration;
/// use ringfence::op::{LinkTimeout, PollAdd, Target};
/// use ringfence::{EventType, OpBatch, URingContext};
///
/// let ring = URingContext::new(8, None)?;
/// let (reader, _writer) = std::os::unix::net::UnixStream::pair()?;
/// let reader = std::sync::Arc::new(reader);
/// // Wait at most 10 ms for the socket to become readable.
/// let mut batch = OpBatch::new();
/// batch
///     .add_linked(PollAdd::new(reader, EventType::Read), 1)?
///     .add(LinkTimeout::new(Duration::from_millis(10)), 2)?;
/// ring.add_batch(&mut batch)?;
/// let mut results = std::collections::HashMap::new();
/// while results.len() < 2 {
///     for (user_data, result) in ring.wait()? {
///         results.insert(user_data, result.map_err(|e| e.raw_os_error()));
///     }
/// }
/// assert_eq!(results[&1], Err(Some(libc::ECANCELED))); // the poll, cut short
/// assert_eq!(results[&2], Err(Some(libc::ETIME))); // the timeout fired
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// ```
/// use ringfence::op::Nop;
/// use ringfence::{OpBatch, URingContext};
///
/// let ring = URingContext::new(32, None)?;
/// let mut batch = OpBatch::with_capacity(32);
/// for user_data in 0..32 {
///     batch.add(Nop::new(), user_data)?;
/// }
/// ring.add_batch(&mut batch)?;
/// assert!(batch.is_empty());
/// let mut reaped = 0;
/// while reaped < 32 {
///     reaped += ring.wait()?.count();
/// }
/// # Ok::<(), ringfence::Error>(())
/// ```
#[derive(Default)]
pub struct OpBatch {
    ops: Vec<(Prepared, UserData)>,
}

impl OpBatch {
    /// An empty batch.
    pub fn new() -> OpBatch {
        OpBatch::default()
    }

    /// An empty batch with room for `capacity` operations.
    pub fn with_capacity(capacity: usize) -> OpBatch {
        OpBatch {
            ops: Vec::with_capacity(capacity),
        }
    }

    /// Appends `op` with `user_data`. Fails, leaving the batch as it was,
    /// if the operation itself is invalid (see its constructor).
    pub fn add<O: Operation>(&mut self, op: O, user_data: UserData) -> Result<&mut Self> {
        self.ops.push((op.prepare()?, user_data));
        Ok(self)
    }

    /// Appends `op` with `user_data`, linked to the operation added next
    /// (`IOSQE_IO_LINK`): that one starts only after `op` has succeeded,
    /// and completes with `ECANCELED` if `op` fails (a short read or write
    /// counts as a failure). See [Chains](Self#chains).
    pub fn add_linked<O: Operation>(&mut self, op: O, user_data: UserData) -> Result<&mut Self> {
        self.add_joined(op, user_data, IosqeFlags::IO_LINK)
    }

    /// Appends `op` with `user_data`, hard-linked to the operation added
    /// next (`IOSQE_IO_HARDLINK`, Linux 5.5): that one starts once `op` has
    /// completed, whatever its result. See [Chains](Self#chains).
    pub fn add_hardlinked<O: Operation>(
        &mut self,
        op: O,
        user_data: UserData,
    ) -> Result<&mut Self> {
        self.add_joined(op, user_data, IosqeFlags::IO_HARDLINK)
    }

    fn add_joined<O: Operation>(
        &mut self,
        op: O,
        user_data: UserData,
        link: IosqeFlags,
    ) -> Result<&mut Self> {
        let prepared = op.prepare()?.with_flags(link);
        self.ops.push((prepared, user_data));
        Ok(self)
    }

    /// Operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Drops every operation in the batch (and what they hold, which the
    /// kernel never saw).
    pub fn clear(&mut self) {
        self.ops.clear();
    }

    pub(crate) fn ops_mut(&mut self) -> &mut Vec<(Prepared, UserData)> {
        &mut self.ops
    }
}

/// Checks that the chains among `ops`, in queue order, are whole: each
/// ends inside `ops`, and each link timeout follows a linked operation.
pub(crate) fn check_chains<'a>(ops: impl IntoIterator<Item = &'a Prepared>) -> Result<()> {
    let mut previous_links = false;
    for prepared in ops {
        if prepared.sqe.opcode() == URingOperation::LinkTimeout as u8 && !previous_links {
            return Err(Error::InvalidChain(
                "a LinkTimeout must come right after the linked operation it bounds \
                 (OpBatch::add_linked, then OpBatch::add the LinkTimeout)",
            ));
        }
        previous_links = prepared.links_next();
    }
    if previous_links {
        return Err(Error::InvalidChain(
            "the last operation queued is linked to nothing: a chain must end inside its \
             batch (add its last operation with OpBatch::add)",
        ));
    }
    Ok(())
}

impl std::fmt::Debug for OpBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpBatch")
            .field("len", &self.ops.len())
            .finish()
    }
}
