//! Provided-buffer rings (`IORING_REGISTER_PBUF_RING`, Linux 5.19): the
//! memory the context owns for them, handing a buffer the kernel filled to
//! the caller, and giving it back.
//!
//! Who owns what: a [`BufferRing`] owns, through an `Arc`'d [`RingMemory`],
//! one anonymous mapping holding the ring of `io_uring_buf` entries (page
//! aligned, as the kernel requires) followed by the `count` buffers. The
//! context holds one share; every operation that selects buffers from the
//! group ([`Recv::multishot`](crate::op::Recv::multishot), the only one
//! that sets `IOSQE_BUFFER_SELECT`: callers cannot) holds another in what
//! it keeps alive, until its last completion. The kernel writes a buffer
//! only on behalf of such an operation, so the buffers outlive every write:
//! if drop's drain gives up on that operation, its share is leaked with
//! the rest of its state, and the mapping with it.
//!
//! Group ids are the context's to choose, and unique in the process
//! while their memory exists: an operation carries the memory of the group
//! it names, so if it is added to another context's ring, that ring has no
//! group of that id (the receive fails with `ENOBUFS`) and the kernel can
//! never write a buffer whose memory the operation does not keep.
//!
//! The ring's entries are different: the kernel pins the ring's pages at
//! registration and reads them through its own mapping until the group is
//! unregistered or the ring is freed (`io_register_pbuf_ring` and
//! `io_create_region`, `io_uring/kbuf.c` and `io_uring/memmap.c`), so
//! unmapping them never lets the kernel reach memory we reuse. The context
//! does not unregister the group itself: closing the ring frees it
//! (`io_destroy_buffers`, `io_uring/kbuf.c`), and on a restricted ring
//! before Linux 7.0 the kernel would refuse the call anyway.
//!
//! Lending is safe (`provided_buffer`) because it lends only a buffer the
//! kernel has completed with: claiming a completion that carries
//! `IORING_CQE_F_BUFFER` of an operation holding the group marks the
//! buffer it names ([`CompletedBuffers`]), and lending takes the mark. A
//! buffer still in the ring, which the kernel may write at any moment, is
//! never marked. The ring's head could not say this: on a worker thread
//! the kernel commits a buffer (moves the head past it) before it writes
//! it (`io_should_commit`, `io_uring/kbuf.c`). The marks rest on the
//! CQE's user_data being the operation's identity, whose bit 63 is always
//! set: [`MsgRing`](crate::op::MsgRing) refuses to post a CQE with such a
//! user_data, so safe code cannot forge one (code outside the crate that
//! holds the ring fd can, as `MsgRing`'s docs say).

use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{lock, URingContext};
use crate::abi::{
    buf_ring_tail, write_buf_entry, BufReg, RegisterOperation, BUF_RING_ENTRY_LEN,
    MAX_BUF_RING_ENTRIES,
};
use crate::error::{Error, Result};
use crate::op::{BufferGroup, CompletedBuffers};
use crate::sys::{self, Mapping};

/// The buffer group ids in use in the process, a bit each: one is taken
/// from the creation of a group's memory to its unmapping (for ever if the
/// memory is leaked). Atomics, not a lock: a forked child may drop its copy
/// of a context, and a lock another thread of the parent held at fork would
/// never be released there.
static GROUP_IDS: [AtomicU64; 65536 / 64] = [const { AtomicU64::new(0) }; 65536 / 64];

/// Takes the lowest free group id, if any is left.
fn take_group_id() -> Option<u16> {
    for (word, ids) in GROUP_IDS.iter().enumerate() {
        // Relaxed: the bits guard no other memory; an id is taken by
        // exactly one caller because the read-modify-write is atomic.
        let mut seen = ids.load(Ordering::Relaxed);
        while seen != u64::MAX {
            let bit = seen.trailing_ones();
            match ids.compare_exchange(seen, seen | 1 << bit, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some((word * 64) as u16 + bit as u16),
                Err(now) => seen = now,
            }
        }
    }
    None
}

/// Gives group id `id` back.
fn free_group_id(id: u16) {
    // Relaxed, as in `take_group_id`.
    GROUP_IDS[usize::from(id) / 64].fetch_and(!(1 << (id % 64)), Ordering::Relaxed);
}

/// One mapping: the ring's entries, then the buffers.
///
/// Invariant: `mapping` is unmapped on drop; the ring takes its first
/// `ring_len` bytes (a whole number of pages, so the ring is page
/// aligned), buffer `i` the `len` bytes from `ring_len + i * len` on.
/// Rust code reaches the mapping only through raw pointers, except a
/// buffer lent to a [`ProvidedBuffer`].
struct RingMemory {
    /// The group's id, taken from [`GROUP_IDS`] for the life of the value.
    group: u16,
    mapping: Mapping,
    ring_len: usize,
    count: u16,
    len: u32,
}

impl RingMemory {
    /// Maps a ring of `count` entries and `count` zeroed buffers of `len`
    /// bytes.
    fn new(count: u16, len: u32) -> Result<RingMemory> {
        let out_of_range = Error::BufferRingOutOfRange { count, len };
        let entries = usize::from(count);
        if !entries.is_power_of_two() || entries > MAX_BUF_RING_ENTRIES || len == 0 {
            return Err(out_of_range);
        }
        let page = sys::page_size();
        let ring_len = (entries * BUF_RING_ENTRY_LEN).div_ceil(page) * page;
        let map_len = (len as usize)
            .checked_mul(entries)
            .and_then(|buffers| buffers.checked_add(ring_len))
            .ok_or(out_of_range)?;
        let mapping = Mapping::anonymous(map_len).map_err(Error::Mmap)?;
        let group = take_group_id().ok_or(Error::BufferGroupsExhausted)?;
        Ok(RingMemory {
            group,
            mapping,
            ring_len,
            count,
            len,
        })
    }

    /// Where buffer `bid` starts (`bid < count`).
    fn buffer(&self, bid: u16) -> NonNull<u8> {
        debug_assert!(bid < self.count);
        // SAFETY: inside the mapping (invariant), as `bid < count`.
        let at = unsafe {
            self.mapping
                .as_ptr()
                .add(self.ring_len + usize::from(bid) * self.len as usize)
        };
        NonNull::new(at).expect("a mapping is never at null")
    }
}

impl Drop for RingMemory {
    fn drop(&mut self) {
        // The last share is gone, so no operation that may select a buffer
        // is in flight, and no `ProvidedBuffer` (it borrows the context,
        // which holds a share): the mapping goes once this returns, and no
        // operation names the group any more, so another may take its id.
        free_group_id(self.group);
    }
}

/// A registered group: its memory and our side of its ring.
pub(super) struct BufferRing {
    memory: Arc<RingMemory>,
    /// Which buffers the kernel completed with and are not lent: shared
    /// with every operation that selects from the group, whose completions
    /// mark them.
    completed: Arc<CompletedBuffers>,
    producer: Mutex<Producer>,
}

/// What the lock serialises: our copy of the ring's tail (only we write
/// it).
struct Producer {
    tail: u16,
}

impl BufferRing {
    /// Maps a group's memory and puts every buffer in its ring.
    pub(super) fn new(count: u16, len: u32) -> Result<BufferRing> {
        let memory = Arc::new(RingMemory::new(count, len)?);
        let ring = BufferRing {
            memory,
            completed: Arc::new(CompletedBuffers::new(count)),
            producer: Mutex::new(Producer { tail: 0 }),
        };
        let mut producer = lock(&ring.producer);
        (0..count).for_each(|bid| ring.publish(&mut producer, bid));
        drop(producer);
        Ok(ring)
    }

    /// Puts buffer `bid` at the ring's tail and publishes it, under the
    /// producer lock: the kernel may pick it from then on.
    fn publish(&self, producer: &mut Producer, bid: u16) {
        let memory = &*self.memory;
        let mask = usize::from(memory.count) - 1;
        let index = usize::from(producer.tail) & mask;
        // SAFETY: the ring is live and page aligned (invariant of
        // `RingMemory`) and has `count` entries, so `index` is in it. The
        // entry is outside the kernel's `head..tail`: every buffer is in
        // the ring at most once and `bid` is not in it (it is new, or the
        // kernel completed with it), so at most `count - 1` entries are
        // live and the one at the tail is free. Only the producer lock's
        // holder writes entries.
        unsafe {
            write_buf_entry(
                memory.mapping.as_ptr(),
                index,
                memory.buffer(bid).as_ptr() as u64,
                memory.len,
                bid,
            )
        };
        producer.tail = producer.tail.wrapping_add(1);
        // SAFETY: the ring outlives this borrow (we hold the memory), and
        // its tail is only ever accessed atomically, here.
        let tail = unsafe { buf_ring_tail(memory.mapping.as_ptr()) };
        // Release: the entry written above must be visible before the
        // kernel sees the new tail, which it reads with `smp_load_acquire`
        // (`io_ring_buffer_select`, `io_uring/kbuf.c`).
        tail.store(producer.tail, Ordering::Release);
    }
}

/// A provided buffer the kernel filled and completed with, lent to the
/// caller: it derefs to the bytes received, and gives the buffer back to
/// the ring (where the kernel may pick it again) when dropped.
///
/// Only one exists per buffer at a time. `mem::forget` of one only keeps
/// its buffer out of the ring for the life of the context.
pub struct ProvidedBuffer<'a> {
    context: &'a URingContext,
    ring: &'a BufferRing,
    bid: u16,
    len: usize,
}

impl Deref for ProvidedBuffer<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `len` is at most the buffer's length, inside the mapping
        // the context keeps while `self` borrows it. The kernel completed
        // with the buffer (its mark, which `provided_buffer` took for
        // `self` alone) and does not write it until we publish it again,
        // which only `self`'s drop does; until then no completion can mark
        // it again, so no second guard exists.
        unsafe { std::slice::from_raw_parts(self.ring.memory.buffer(self.bid).as_ptr(), self.len) }
    }
}

impl Drop for ProvidedBuffer<'_> {
    fn drop(&mut self) {
        if self.context.check_process().is_err() {
            // A guard carried across fork: the ring is the parent's, and
            // its lock may have been held by a thread the child lacks.
            return;
        }
        let mut producer = lock(&self.ring.producer);
        self.ring.publish(&mut producer, self.bid);
    }
}

impl std::fmt::Debug for ProvidedBuffer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvidedBuffer")
            .field("group", &self.ring.memory.group)
            .field("id", &self.bid)
            .field("len", &self.len)
            .finish()
    }
}

impl URingContext {
    /// The `index`th group of provided buffers the builder registered
    /// ([`URingBuilder::buffer_ring`](crate::URingBuilder::buffer_ring), 0
    /// for the first call), for
    /// [`Recv::multishot`](crate::op::Recv::multishot) and
    /// [`provided_buffer`](Self::provided_buffer); `None` past the last (or
    /// in a forked child).
    pub fn buffer_group(&self, index: usize) -> Option<BufferGroup> {
        self.check_process().ok()?;
        let ring = self.buffer_rings.get(index)?;
        Some(BufferGroup::new(
            ring.memory.group,
            ring.memory.clone(),
            ring.completed.clone(),
        ))
    }

    /// Lends buffer `id` of `group`, the first `len` bytes of which
    /// the kernel filled: the `buffer_id` and result of a completion
    /// ([`Completion::buffer_id`](crate::Completion::buffer_id),
    /// [`Completion::result`](crate::Completion::result)). Dropping the
    /// returned guard gives the buffer back to the ring, where the kernel
    /// may pick it again: do so for every completion that carries a
    /// buffer, or the group runs dry (`ENOBUFS`).
    ///
    /// `None` unless the kernel has completed with buffer `id` (a
    /// completion naming it has been claimed, by
    /// [`wait_completions`](Self::wait_completions) or
    /// [`wait`](Self::wait)) and it has not been lent since: a buffer
    /// still in the ring, which the kernel may write at any moment, is
    /// never lent, nor one buffer twice. The mark is the buffer's, set
    /// when any thread claims the completion: lend it from the thread that
    /// took that completion, or another thread asking for the same id may
    /// get it first (and once it has gone round the ring again, hold
    /// another receive's bytes). Also `None` if `group` is another
    /// context's, `id` is not one of its buffers, `len` is longer than its
    /// buffers, or in a forked child (a guard carried into one gives
    /// nothing back when dropped there).
    pub fn provided_buffer(
        &self,
        group: &BufferGroup,
        id: u16,
        len: u32,
    ) -> Option<ProvidedBuffer<'_>> {
        // Ids are unique while `group` holds its memory: the same id is the
        // same group.
        self.check_process().ok()?;
        let ring = (self.buffer_rings.iter()).find(|ring| ring.memory.group == group.id())?;
        if id >= ring.memory.count || len > ring.memory.len || !ring.completed.take(id) {
            return None;
        }
        Some(ProvidedBuffer {
            context: self,
            ring,
            bid: id,
            len: len as usize,
        })
    }

    /// Registers `ring` (`IORING_REGISTER_PBUF_RING`, Linux 5.19) and keeps
    /// it.
    pub(super) fn register_buffer_ring(&mut self, ring: BufferRing) -> Result<()> {
        let memory = &ring.memory;
        let reg = BufReg::new(
            memory.mapping.as_ptr() as u64,
            u32::from(memory.count),
            memory.group,
        );
        // SAFETY: PBUF_RING reads one `io_uring_buf_reg`, alive for the
        // call. The ring it names is `memory`'s, page aligned, which the
        // kernel pins while registered; the buffers the entries name are
        // kept alive by the context and by every operation that may select
        // them (see the module's documentation).
        unsafe { self.register_value(RegisterOperation::PbufRing, reg.as_ptr(), 1) }?;
        self.buffer_rings.push(ring);
        Ok(())
    }
}
