//! [`OpBatch`]: operations gathered without any lock, queued together by
//! [`URingContext::add_batch`](crate::URingContext::add_batch).

use super::{Operation, Prepared};
use crate::abi::UserData;
use crate::Result;

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

impl std::fmt::Debug for OpBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpBatch")
            .field("len", &self.ops.len())
            .finish()
    }
}
