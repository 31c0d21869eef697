//! [`Recv::multishot`] and the [`BufferGroup`] it receives into.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::io::{Recv, RecvKind};
use crate::abi::{IosqeFlags, Sqe, URingOperation, RECV_MULTISHOT};
use crate::op::{KeepAlive, KernelMemory, Prepared, Target};
use crate::Result;

/// A group of provided buffers registered with the ring
/// ([`URingBuilder::buffer_ring`](crate::URingBuilder::buffer_ring)), as
/// [`URingContext::buffer_group`](crate::URingContext::buffer_group) hands
/// it out: its group id, and a share of the memory its buffers live in.
///
/// An operation that selects buffers from the group holds that share until
/// its last completion, so the buffers outlive every write the kernel may
/// make into them: if dropping the context gives up waiting for such an
/// operation, the memory is leaked with the rest of its state. Its id is
/// unique in the process meanwhile, so an operation given a group of
/// another context finds no such group in its ring (`ENOBUFS`).
#[derive(Clone)]
pub struct BufferGroup {
    id: u16,
    memory: Arc<dyn std::marker::Send + Sync>,
    completed: Arc<CompletedBuffers>,
}

impl BufferGroup {
    /// The group `id`, whose buffers live in `memory`, and which of them
    /// the kernel has completed with (`completed`, shared with the
    /// context's side of the ring).
    pub(crate) fn new(
        id: u16,
        memory: Arc<dyn std::marker::Send + Sync>,
        completed: Arc<CompletedBuffers>,
    ) -> BufferGroup {
        BufferGroup {
            id,
            memory,
            completed,
        }
    }

    /// The group's id (the SQE's `buf_group`), chosen by the context,
    /// unique in the process while this value (or an operation holding the
    /// group) exists.
    pub fn id(&self) -> u16 {
        self.id
    }
}

impl std::fmt::Debug for BufferGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferGroup").field("id", &self.id).finish()
    }
}

/// The buffers of a group that the kernel has completed with and that
/// have not been lent since: a bit per buffer id.
///
/// A bit is set when the context claims a completion carrying
/// `IORING_CQE_F_BUFFER` of an operation that holds the group (so the
/// kernel took the buffer out of the ring, wrote it, and posted the CQE;
/// it will not touch the buffer again until it is published anew), and
/// cleared when the buffer is lent. Lending only a set bit is what makes
/// [`URingContext::provided_buffer`](crate::URingContext::provided_buffer)
/// safe: the ring's head cannot say the same, since on a worker thread the
/// kernel moves the head past a buffer before it writes it
/// (`io_should_commit`, `io_uring/kbuf.c`).
pub(crate) struct CompletedBuffers {
    bits: Box<[AtomicU64]>,
}

impl CompletedBuffers {
    /// No buffer completed yet, of `count`.
    pub(crate) fn new(count: u16) -> CompletedBuffers {
        let words = usize::from(count).div_ceil(64);
        CompletedBuffers {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Marks buffer `bid` completed (ids past the group are ignored: the
    /// kernel never names one).
    pub(crate) fn mark(&self, bid: u16) {
        if let Some(word) = self.bits.get(usize::from(bid) / 64) {
            // Release: pairs with `take`'s Acquire, so that whoever lends
            // the buffer sees the kernel's writes, which the claim saw
            // through its Acquire load of the CQ tail.
            word.fetch_or(1 << (bid % 64), Ordering::Release);
        }
    }

    /// Clears buffer `bid`'s mark; whether it was set.
    pub(crate) fn take(&self, bid: u16) -> bool {
        let bit = 1 << (bid % 64);
        self.bits
            .get(usize::from(bid) / 64)
            // Acquire: pairs with `mark`'s Release (see there).
            .is_some_and(|word| word.fetch_and(!bit, Ordering::Acquire) & bit != 0)
    }
}

/// A multishot receive, as [`Recv::multishot`] builds it.
#[derive(Debug)]
pub(super) struct Multishot {
    target: Target,
    group: BufferGroup,
    msg_flags: libc::c_int,
}

impl Recv {
    /// A multishot receive (`IORING_RECV_MULTISHOT` in the SQE's `ioprio`,
    /// Linux 6.0, `io_uring_enter(2)` and `io_uring_prep_recv_multishot(3)`):
    /// one add that completes once for every chunk of data the socket
    /// receives, each into a buffer the kernel picks from `group`
    /// (`IOSQE_BUFFER_SELECT`, which this sets itself; provided-buffer
    /// rings are Linux 5.19).
    ///
    /// Every completion but the last carries `IORING_CQE_F_MORE`
    /// ([`Completion::more`](crate::Completion::more)), the byte count,
    /// and the id of the buffer holding the bytes
    /// ([`Completion::buffer_id`](crate::Completion::buffer_id)): read it
    /// and give it back with
    /// [`URingContext::provided_buffer`](crate::URingContext::provided_buffer),
    /// which lends it once that completion has been claimed.
    /// The last completion, without MORE, ends the receive: 0 when the peer
    /// shut down its side (end of stream), `ENOBUFS` when the group had no
    /// buffer left (give buffers back and add the receive again), `ECANCELED`
    /// when cancelled, or any errno of [`Recv`]; a full completion ring also
    /// ends it (as for other multishot operations). Only the context's
    /// memory is written, so it pins no caller memory (it may share its
    /// user_data), and it holds `group`'s memory until its last completion.
    ///
    /// On a restricted ring the allowlist must allow `BUFFER_SELECT`
    /// ([`URingAllowlist::allow_sqe_flags`](crate::URingAllowlist::allow_sqe_flags)):
    /// the kernel refuses it with `EACCES` otherwise. A kernel before 6.0
    /// refuses it with `EINVAL`.
    ///
    /// ```
    /// use std::io::Write;
    /// use std::os::unix::net::UnixStream;
    /// use std::sync::Arc;
    /// use ringfence::op::Recv;
    /// use ringfence::URingBuilder;
    ///
    /// let ring = URingBuilder::new(8).buffer_ring(8, 4096).build()?;
    /// let group = ring.buffer_group(0).unwrap();
    /// let (mut tx, rx) = UnixStream::pair()?;
    /// ring.add(Recv::multishot(Arc::new(rx), &group), 7)?;
    /// tx.write_all(b"hello")?;
    /// let completion = ring.wait_completions()?.next().unwrap();
    /// assert!(completion.more());
    /// let (id, len) = (completion.buffer_id().unwrap(), completion.result()?);
    /// let buffer = ring.provided_buffer(&group, id, len).unwrap();
    /// assert_eq!(&*buffer, b"hello");
    /// drop(buffer); // Back in the ring.
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn multishot(target: impl Into<Target>, group: &BufferGroup) -> Recv {
        Recv(RecvKind::Multishot(Multishot {
            target: target.into(),
            group: group.clone(),
            msg_flags: 0,
        }))
    }
}

impl Multishot {
    pub(super) fn msg_flags(self, msg_flags: libc::c_int) -> Multishot {
        Multishot { msg_flags, ..self }
    }

    pub(super) fn prepare(self) -> Result<Prepared> {
        let mut sqe = Sqe::new(URingOperation::Recv);
        self.target.fill(&mut sqe);
        // No address or length: the kernel takes both from the buffer it
        // selects (`io_uring_prep_recv_multishot(3)` leaves them 0). Not a
        // bundle (`IORING_RECVSEND_BUNDLE`), whose one completion covers
        // several buffers: the lending marks (`CompletedBuffers`) take a
        // completion to name one buffer it is done with.
        sqe.set_flags(sqe.flags() | IosqeFlags::BUFFER_SELECT);
        sqe.set_buf_group(self.group.id);
        sqe.set_ioprio(RECV_MULTISHOT);
        sqe.set_op_flags(self.msg_flags as u32);
        let keep_alive = KeepAlive {
            owned: Some(KernelMemory::new(self.group.memory).0),
            completed: Some(self.group.completed),
            ..KeepAlive::target(self.target)
        };
        Ok(Prepared {
            pins_caller_memory: false,
            ..Prepared::new::<Recv>(sqe, keep_alive)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::CompletedBuffers;

    #[test]
    fn a_mark_is_taken_once_and_ids_past_the_group_are_never_marked() {
        let completed = CompletedBuffers::new(70);
        assert!(!completed.take(3), "nothing is marked at first");
        completed.mark(3);
        completed.mark(69);
        assert!(completed.take(3));
        assert!(!completed.take(3), "taken twice");
        assert!(completed.take(69), "the second word");
        // An id past the bitmap (the kernel never names one) is ignored.
        completed.mark(200);
        assert!(!completed.take(200));
    }
}
