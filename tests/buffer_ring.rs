//! Kernel tests for provided-buffer rings (`IORING_REGISTER_PBUF_RING`,
//! Linux 5.19) and multishot receives into them (`IORING_RECV_MULTISHOT`,
//! Linux 6.0): each chunk received lands in a buffer the kernel picks, is
//! read through a [`ringfence::ProvidedBuffer`] and given back when that
//! guard drops.
// Needs the real kernel: Miri cannot make io_uring syscalls.
#![cfg(not(miri))]

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{errno, kernel_version, usable_or_skip};
use ringfence::op::Recv;
use ringfence::{
    Completion, Error, IosqeFlags, URingAllowlist, URingBuilder, URingContext, URingOperation,
};

/// Bounds every wait: a test that takes this long is broken, not slow.
const BOUND: Duration = Duration::from_secs(5);

/// A ring with one group of `count` provided buffers of `len` bytes,
/// or `None` (skipping) where io_uring is unusable or older than Linux 6.0.
fn ring_with_buffers(
    count: u16,
    len: u32,
    allowlist: Option<&URingAllowlist>,
) -> Option<URingContext> {
    if kernel_version() < (6, 0) {
        eprintln!("skipping: multishot receive needs Linux 6.0");
        return None;
    }
    let mut builder = URingBuilder::new(16).buffer_ring(count, len);
    if let Some(allowlist) = allowlist {
        builder = builder.allowlist(allowlist);
    }
    usable_or_skip(builder.build())
}

/// Adds and submits a multishot receive on `socket` from `ring`'s group.
fn recv_multishot(ring: &URingContext, socket: &Arc<UnixStream>, label: u64) {
    let group = ring.buffer_group(0).expect("the group is registered");
    ring.add(Recv::multishot(Arc::clone(socket), &group), label)
        .expect("add a multishot recv");
    ring.submit().expect("submit");
}

/// The next completion, within [`BOUND`].
fn next_completion(ring: &URingContext) -> Completion {
    let start = Instant::now();
    while start.elapsed() < BOUND {
        let mut completions = ring
            .wait_timeout_completions(Duration::from_millis(100))
            .expect("wait");
        if let Some(completion) = completions.next() {
            assert!(completions.next().is_none(), "one completion at a time");
            return completion;
        }
    }
    panic!("no completion within {BOUND:?}");
}

/// The bytes a completion with a provided buffer carries; gives the buffer
/// back.
fn received(ring: &URingContext, completion: &Completion) -> Vec<u8> {
    let len = completion.result().expect("a receive succeeds");
    let id = completion.buffer_id().expect("a provided buffer");
    let group = ring.buffer_group(0).unwrap();
    let buffer = ring.provided_buffer(&group, id, len).expect("not lent yet");
    buffer.to_vec()
}

#[test]
fn multishot_recv_receives_each_message_into_a_provided_buffer_until_eof() {
    let Some(ring) = ring_with_buffers(4, 64, None) else {
        return;
    };
    let (mut tx, rx) = UnixStream::pair().unwrap();
    let rx = Arc::new(rx);
    recv_multishot(&ring, &rx, 1);
    // More messages than buffers: each is given back before the next.
    for i in 0..10u8 {
        let message = [i; 5];
        tx.write_all(&message).unwrap();
        let completion = next_completion(&ring);
        assert_eq!(completion.user_data(), 1);
        assert!(completion.more(), "{completion:?}");
        assert_eq!(received(&ring, &completion), message);
        assert_eq!(ring.in_flight(), 1);
    }
    drop(tx);
    let last = next_completion(&ring);
    assert!(!last.more(), "end of stream ends the receive: {last:?}");
    assert_eq!(last.result().unwrap(), 0);
    assert_eq!(last.buffer_id(), None);
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(Arc::strong_count(&rx), 1, "the socket is released");
}

#[test]
fn a_dry_group_ends_the_receive_with_enobufs_and_giving_back_lets_it_rearm() {
    let Some(ring) = ring_with_buffers(2, 16, None) else {
        return;
    };
    let (mut tx, rx) = UnixStream::pair().unwrap();
    let rx = Arc::new(rx);
    let group = ring.buffer_group(0).unwrap();
    recv_multishot(&ring, &rx, 1);
    let mut held = Vec::new();
    for i in 0..2u8 {
        tx.write_all(&[i; 3]).unwrap();
        let completion = next_completion(&ring);
        assert!(completion.more(), "{completion:?}");
        let id = completion.buffer_id().unwrap();
        let buffer = ring.provided_buffer(&group, id, 3).unwrap();
        assert_eq!(&*buffer, &[i; 3]);
        held.push(buffer);
    }
    tx.write_all(b"late").unwrap();
    let dry = next_completion(&ring);
    assert!(!dry.more(), "{dry:?}");
    assert_eq!(errno(&dry.result()), Some(libc::ENOBUFS));
    assert_eq!(ring.in_flight(), 0);
    drop(held); // Both buffers go back to the ring.
    recv_multishot(&ring, &rx, 2);
    let again = next_completion(&ring);
    assert_eq!(again.user_data(), 2);
    assert!(again.more(), "{again:?}");
    assert_eq!(received(&ring, &again), b"late");
}

#[test]
fn only_a_buffer_the_kernel_completed_with_is_lent_and_only_once() {
    let Some(ring) = ring_with_buffers(2, 16, None) else {
        return;
    };
    let (mut tx, rx) = UnixStream::pair().unwrap();
    let rx = Arc::new(rx);
    let group = ring.buffer_group(0).unwrap();
    // Before any completion every buffer is in the ring, where the
    // kernel may write it: none is lent.
    for id in 0..2 {
        assert!(ring.provided_buffer(&group, id, 3).is_none(), "{id}");
    }
    recv_multishot(&ring, &rx, 1);
    tx.write_all(b"abc").unwrap();
    let completion = next_completion(&ring);
    let id = completion.buffer_id().unwrap();
    // The other buffer is still in the ring: not lent.
    assert!(ring.provided_buffer(&group, 1 - id, 3).is_none());
    // Longer than a buffer, out of range, another context's group: none.
    assert!(ring.provided_buffer(&group, id, 17).is_none());
    assert!(ring.provided_buffer(&group, 2, 3).is_none());
    let Some(other) = ring_with_buffers(2, 16, None) else {
        return;
    };
    let foreign = other.buffer_group(0).unwrap();
    assert!(ring.provided_buffer(&foreign, id, 3).is_none());
    // The one completed with is lent once.
    let first = ring.provided_buffer(&group, id, 3).expect("lent once");
    assert!(ring.provided_buffer(&group, id, 3).is_none(), "lent twice");
    assert_eq!(&*first, b"abc");
    // Given back, it is in the ring again: not lent until the kernel
    // completes with it again.
    drop(first);
    assert!(ring.provided_buffer(&group, id, 3).is_none(), "given back");
}

#[test]
fn dropping_the_context_with_a_multishot_recv_in_flight_is_prompt_and_releases_the_socket() {
    let Some(ring) = ring_with_buffers(4, 64, None) else {
        return;
    };
    let (mut tx, rx) = UnixStream::pair().unwrap();
    let rx = Arc::new(rx);
    recv_multishot(&ring, &rx, 1);
    tx.write_all(b"x").unwrap();
    assert!(next_completion(&ring).more());
    assert_eq!(Arc::strong_count(&rx), 2, "the receive holds the socket");
    let start = Instant::now();
    drop(ring);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(Arc::strong_count(&rx), 1, "the socket is released");
}

#[test]
fn a_restricted_ring_runs_a_multishot_recv_only_if_buffer_select_is_allowed() {
    for allow_buffer_select in [true, false] {
        let mut allowlist = URingAllowlist::new();
        allowlist
            .allow_housekeeping()
            .allow_submit_operation(URingOperation::Recv);
        if allow_buffer_select {
            allowlist.allow_sqe_flags(IosqeFlags::BUFFER_SELECT);
        }
        let Some(ring) = ring_with_buffers(2, 16, Some(&allowlist)) else {
            return;
        };
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let rx = Arc::new(rx);
        recv_multishot(&ring, &rx, 1);
        tx.write_all(b"ok").unwrap();
        let completion = next_completion(&ring);
        if allow_buffer_select {
            assert!(completion.more(), "{completion:?}");
            assert_eq!(received(&ring, &completion), b"ok");
        } else {
            assert!(!completion.more());
            assert_eq!(errno(&completion.result()), Some(libc::EACCES));
        }
    }
}

#[test]
fn buffer_ring_sizes_the_kernel_refuses_are_refused_first() {
    for (count, len) in [(3, 16), (0, 16), (4, 0)] {
        let built = URingBuilder::new(4).buffer_ring(count, len).build();
        assert!(
            matches!(built, Err(Error::BufferRingOutOfRange { .. })),
            "{count} x {len}: {built:?}"
        );
    }
}

/// Whether every page of `len` bytes from `addr` is mapped (`mincore`
/// fails with `ENOMEM` for a range with a hole).
fn mapped(addr: usize, len: usize) -> bool {
    let page = 4096;
    let start = addr / page * page;
    let pages = (addr + len).div_ceil(page) - start / page;
    let mut residency = vec![0u8; pages];
    // SAFETY: `residency` has a byte for every page of the range; mincore
    // only reads the page tables.
    let ret = unsafe { libc::mincore(start as *mut _, pages * page, residency.as_mut_ptr()) };
    ret == 0
}

#[test]
fn the_buffers_stay_mapped_while_an_operation_that_may_write_them_is_leaked() {
    // One large buffer: a hole in it after it is unmapped cannot be
    // filled by the small mappings other tests make meanwhile.
    const LEN: u32 = 16 << 20;
    for leak in [true, false] {
        let mut allowlist = URingAllowlist::new();
        allowlist
            .allow_submit_operation(URingOperation::Recv)
            .allow_sqe_flags(IosqeFlags::BUFFER_SELECT);
        if !leak {
            allowlist.allow_housekeeping();
        }
        let Some(ring) = ring_with_buffers(1, LEN, Some(&allowlist)) else {
            return;
        };
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let group = ring.buffer_group(0).unwrap();
        recv_multishot(&ring, &Arc::new(rx), 1);
        tx.write_all(b"x").unwrap();
        let completion = next_completion(&ring);
        assert!(completion.more(), "{completion:?}");
        let buffer = ring.provided_buffer(&group, 0, 1).unwrap();
        let addr = buffer.as_ptr() as usize;
        drop(buffer); // Back in the ring: the receive may write it again.
        drop(group); // A handle keeps the memory too.
        assert!(mapped(addr, LEN as usize));
        // Without AsyncCancel drop cannot stop the receive: it leaks it,
        // and with it the buffers the kernel may still write.
        drop(ring);
        assert_eq!(mapped(addr, LEN as usize), leak, "leak: {leak}");
    }
}

#[test]
fn a_group_given_to_another_contexts_operation_is_not_found_there() {
    let (Some(ring), Some(other)) = (
        ring_with_buffers(2, 16, None),
        ring_with_buffers(2, 16, None),
    ) else {
        return;
    };
    let group = ring.buffer_group(0).unwrap();
    assert_ne!(group.id(), other.buffer_group(0).unwrap().id());
    assert!(ring.buffer_group(1).is_none());
    let (mut tx, rx) = UnixStream::pair().unwrap();
    // `other` has no group of this id: its buffers are never written for an
    // operation that keeps only `ring`'s memory.
    other.add(Recv::multishot(Arc::new(rx), &group), 1).unwrap();
    other.submit().unwrap();
    tx.write_all(b"x").unwrap();
    let completion = next_completion(&other);
    assert!(!completion.more(), "{completion:?}");
    assert_eq!(errno(&completion.result()), Some(libc::ENOBUFS));
}
