//! The bookkeeping of operations in flight: labels that may or may not be
//! shared, completions claimed from the CQ ring but not yet handed to the
//! caller (in a live iterator, handed back by a dropped one, or kept by a
//! forgotten one), and completions the context did not issue.

use std::os::fd::RawFd;
use std::time::Duration;

use super::super::{SimConfig, SimKernel};
use super::{
    add_without_reaping, held_back_identities, iovecs, labels, post_foreign_cqe, reap,
    reap_in_order, ring_fd_readable, scaled,
};
use crate::op::Nop;
use crate::{Error, EventType, URingContext};

/// Queues a read of `buf.len()` bytes of `fd` at `offset` into `buf`,
/// labelled `label`.
///
/// # Safety
///
/// `buf` must outlive the read and not be used until its completion has
/// been reaped or the ring closed.
unsafe fn read_into(
    ring: &URingContext,
    fd: RawFd,
    buf: &mut Vec<u8>,
    offset: u64,
    label: u64,
) -> crate::Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { ring.add_readv(iovecs(&mut [buf]), fd, Some(offset), label) }
}

/// A file whose byte at offset `i` is `i + 1`.
fn counting_file(kernel: &SimKernel, len: u8) -> RawFd {
    kernel.create_file((1..=len).collect())
}

#[test]
fn a_completion_not_yet_handed_to_the_caller_counts_in_flight_and_keeps_its_label() {
    let kernel = SimKernel::new();
    let fd = counting_file(&kernel, 8);
    let mut bufs = vec![vec![0u8; 1]; 6];
    let ring = kernel.new_context(8, None).unwrap();
    for label in 1..=5 {
        // SAFETY: `bufs` outlives the ring, which reaps every read; each
        // buffer is read only after its completion.
        unsafe { read_into(&ring, fd, &mut bufs[label as usize], label, label) }.unwrap();
    }
    ring.submit().unwrap();
    let duplicate = |bufs: &mut Vec<Vec<u8>>, label: u64| {
        // SAFETY: a refused add queues nothing, so the kernel never sees
        // this iovec.
        let added = unsafe { read_into(&ring, fd, &mut bufs[label as usize], 0, label) };
        assert!(
            matches!(added, Err(Error::DuplicateUserData(l)) if l == label),
            "a read with label {label}: {added:?}"
        );
    };

    // Taking one completion leaves the others in flight, labels held.
    let (first, _) = ring.wait().unwrap().next().unwrap();
    assert_eq!(first, 1);
    assert_eq!(ring.in_flight(), 4);
    duplicate(&mut bufs, 2);

    // In a live iterator: 3, 4 and 5 are claimed, 3 yielded.
    let mut iterator = ring.wait().unwrap();
    assert_eq!(iterator.next().unwrap().0, 2);
    assert_eq!(iterator.next().unwrap().0, 3);
    assert_eq!(ring.in_flight(), 2, "4 and 5 are not the caller's yet");
    duplicate(&mut bufs, 4);
    assert_eq!(iterator.next().unwrap().0, 4);
    assert_eq!(ring.in_flight(), 1);
    // Once yielded, a label is free: 3 and 4 go again, at offset 6.
    for label in [3, 4] {
        // SAFETY: as above; the first read into this buffer has completed.
        unsafe { read_into(&ring, fd, &mut bufs[label as usize], 6, label) }.unwrap();
    }

    // Handed back by a dropped iterator: 5 is still in flight.
    drop(iterator);
    assert_eq!(ring.in_flight(), 3);
    duplicate(&mut bufs, 5);
    let rest = reap_in_order(&ring, 3);
    assert_eq!(labels(&rest), [5, 3, 4], "the handed-back one first");
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(bufs, [[0], [2], [3], [7], [7], [6]]);
}

#[test]
fn a_label_yielded_inside_the_for_loop_is_free_for_a_new_read_at_once() {
    const READS: usize = 6;
    let kernel = SimKernel::new();
    let fd = counting_file(&kernel, 2 * READS as u8);
    let mut bufs = vec![vec![0u8; 1]; READS];
    let ring = kernel.new_context(2 * READS, None).unwrap();
    for label in 0..READS as u64 {
        // SAFETY: `bufs` outlives the ring, which reaps every read; each
        // buffer is read only after its completion.
        unsafe { read_into(&ring, fd, &mut bufs[label as usize], label, label) }.unwrap();
    }
    ring.submit().unwrap();
    let mut again = Vec::new();
    // One wait claims all six: the first alone, then the rest as a batch,
    // whose later items are yielded without the ring lock.
    for (label, result) in ring.wait().unwrap() {
        assert_eq!(result.unwrap(), 1);
        let buf = &mut bufs[label as usize];
        assert_eq!(buf[0], label as u8 + 1);
        let offset = label + READS as u64;
        // SAFETY: as above; this buffer's first read has completed.
        match unsafe { read_into(&ring, fd, buf, offset, label) } {
            Ok(()) => again.push(label),
            Err(e) => panic!("label {label}, just yielded, is refused: {e}"),
        }
    }
    assert_eq!(again, (0..READS as u64).collect::<Vec<_>>());
    reap(&ring, READS);
    for (i, buf) in bufs.iter().enumerate() {
        assert_eq!(buf[0], (i + READS) as u8 + 1);
    }
}

#[test]
fn operations_that_pin_nothing_share_a_label_and_a_read_shares_its_label_with_nothing() {
    let kernel = SimKernel::new();
    let fd = counting_file(&kernel, 8);
    let pollable = kernel.create_pollable();
    let (mut five, mut six) = (vec![0u8; 2], vec![0u8; 2]);
    let ring = kernel.new_context(8, None).unwrap();
    ring.add_nop(5).unwrap();
    ring.add(Nop::new(), 5).unwrap();
    ring.add_poll_fd(pollable, EventType::Read, 5).unwrap();
    // SAFETY: refused, so never queued.
    let read = unsafe { read_into(&ring, fd, &mut five, 0, 5) };
    assert!(matches!(read, Err(Error::DuplicateUserData(5))), "{read:?}");

    // SAFETY: `six` outlives the ring, which reaps the read.
    unsafe { read_into(&ring, fd, &mut six, 2, 6) }.unwrap();
    let nop = ring.add_nop(6);
    assert!(matches!(nop, Err(Error::DuplicateUserData(6))), "{nop:?}");
    let poll = ring.add_poll_fd(pollable, EventType::Read, 6);
    assert!(matches!(poll, Err(Error::DuplicateUserData(6))), "{poll:?}");
    // SAFETY: refused, so never queued.
    let read = unsafe { read_into(&ring, fd, &mut five, 0, 6) };
    assert!(matches!(read, Err(Error::DuplicateUserData(6))), "{read:?}");
    assert_eq!(ring.in_flight(), 4);

    ring.submit().unwrap();
    kernel.set_ready(pollable, libc::POLLIN as u32);
    let mut done = reap_in_order(&ring, 4);
    done.sort_by_key(|(label, _)| *label);
    assert_eq!(labels(&done), [5, 5, 5, 6]);
    assert_eq!(six, [3, 4]);
    // With the nops and the poll done, 5 is free for a read.
    // SAFETY: `five` outlives the ring, which reaps the read.
    unsafe { read_into(&ring, fd, &mut five, 0, 5) }.unwrap();
    reap(&ring, 1);
    assert_eq!(five, [1, 2]);
}

#[test]
fn taking_only_the_first_completion_of_a_wait_loses_none_of_the_rest_and_keeps_their_order() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(2, None).unwrap();
    let cq = u64::from(ring.cq_entries());
    // More than the CQ ring holds: two wait on the overflow list.
    add_without_reaping(&ring, cq + 2);
    assert_eq!(kernel.stats().overflowed, 2);
    for expected in 0..2 {
        let (label, result) = ring.wait().unwrap().next().unwrap();
        result.unwrap();
        assert_eq!(label, expected, "the oldest completion, none skipped");
        assert_eq!(ring.in_flight() as u64, cq + 1 - expected);
    }
    let rest = reap_in_order(&ring, cq as usize);
    assert_eq!(
        labels(&rest),
        (2..cq + 2).collect::<Vec<_>>(),
        "each once, in order"
    );
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn an_iterator_dropped_mid_batch_hands_the_rest_back_first_and_the_ring_fd_stays_readable() {
    let kernel = SimKernel::new();
    let ring = kernel.new_context(8, None).unwrap();
    for user_data in 0..6 {
        ring.add_nop(user_data).unwrap();
    }
    // `wait` submits them itself.
    let first: Vec<_> = ring.wait().unwrap().take(2).collect();
    assert_eq!(labels(&first), [0, 1]);
    // 2 to 5 left the CQ ring when they were claimed; the context's wake-up
    // nop keeps the ring fd readable (an epoll loop must not sleep now).
    assert_eq!(ring.in_flight(), 4);
    assert!(ring_fd_readable(&kernel), "completions are ready");
    // Newer completions queue up behind the handed-back ones.
    ring.add_nop(6).unwrap();
    ring.add_nop(7).unwrap();
    ring.submit().unwrap();
    let rest: Vec<_> = ring.wait_timeout(Duration::ZERO).unwrap().collect();
    assert_eq!(
        labels(&rest),
        [2, 3, 4, 5, 6, 7],
        "handed back first, in order, and no wake-up nop"
    );
    assert_eq!(ring.in_flight(), 0);
    assert!(!ring_fd_readable(&kernel), "nothing is left to read");
    assert_eq!(
        kernel.stats().sqes_consumed,
        9,
        "the caller's eight and one wake-up nop"
    );
}

#[test]
fn a_forgotten_iterator_never_stalls_the_ring_and_close_releases_what_it_held() {
    let kernel = SimKernel::new();
    let fd = counting_file(&kernel, 8);
    let mut bufs = vec![vec![0u8; 1]; 6];
    let ring = kernel.new_context(8, None).unwrap();
    for label in 0..6 {
        // SAFETY: `bufs` outlives the ring; `close` returning Ok below
        // means the kernel and the context are done with every read.
        unsafe { read_into(&ring, fd, &mut bufs[label as usize], label, label) }.unwrap();
    }
    ring.submit().unwrap();
    let mut iterator = ring.wait().unwrap();
    assert_eq!(iterator.next().unwrap().0, 0);
    assert_eq!(iterator.next().unwrap().0, 1);
    // 2 to 5 are claimed by this iterator, never to be yielded.
    std::mem::forget(iterator);
    assert_eq!(ring.in_flight(), 4, "forgotten completions stay in flight");
    // SAFETY: refused, so never queued.
    let read = unsafe { read_into(&ring, fd, &mut bufs[2], 0, 2) };
    assert!(matches!(read, Err(Error::DuplicateUserData(2))), "{read:?}");

    // The ring keeps working: a nop, and a read under a label yielded.
    ring.add_nop(100).unwrap();
    // SAFETY: as above; the first read into `bufs[0]` has completed.
    unsafe { read_into(&ring, fd, &mut bufs[0], 7, 0) }.unwrap();
    let mut after = reap_in_order(&ring, 2);
    after.sort_by_key(|(label, _)| *label);
    assert_eq!(labels(&after), [0, 100]);
    assert_eq!(ring.in_flight(), 4);

    // Drain counts what the forgotten iterator held as done: the kernel
    // completed those reads, and their iovec arrays are freed now (Miri
    // reports a leak or a double free otherwise).
    ring.close(Duration::from_secs(2)).unwrap();
    assert_eq!(bufs, [[8], [2], [3], [4], [5], [6]]);
}

#[test]
fn forgetting_more_iterators_than_there_are_claim_records_never_stalls_the_ring() {
    // Well past the context's claim records (32), each kept by one
    // forgotten iterator; then iterators claim one at a time.
    let rounds = scaled(64, 40) as u64;
    let kernel = SimKernel::new();
    let ring = kernel.new_context(64, None).unwrap();
    let mut yielded = 0u64;
    for round in 0..rounds {
        for i in 0..3 {
            ring.add_nop(3 * round + i).unwrap();
        }
        let mut iterator = ring.wait().unwrap();
        yielded += iterator.next().is_some() as u64;
        yielded += iterator.next().is_some() as u64;
        std::mem::forget(iterator);
    }
    yielded += ring.wait_timeout(Duration::ZERO).unwrap().count() as u64;
    let forgotten = ring.in_flight() as u64;
    assert_eq!(yielded + forgotten, 3 * rounds, "none lost");
    assert!(forgotten > 0 && forgotten < rounds, "{forgotten} forgotten");
    ring.add_nop(u64::MAX).unwrap();
    assert_eq!(labels(&reap_in_order(&ring, 1)), [u64::MAX]);
    ring.close(Duration::from_secs(2)).unwrap();
}

#[test]
fn a_completion_the_context_did_not_issue_is_yielded_as_is_and_releases_nothing() {
    let kernel = SimKernel::with_config(SimConfig {
        defer_completions: true,
        ..SimConfig::default()
    });
    let fd = counting_file(&kernel, 8);
    let mut buf = vec![0u8; 8];
    let ring = kernel.new_context(4, None).unwrap();
    ring.add_nop(1).unwrap();
    ring.submit().unwrap();
    let stale = held_back_identities(&kernel)[0];
    kernel.complete_deferred(1);
    reap(&ring, 1);
    // SAFETY: `buf` outlives the ring, which reaps the read.
    unsafe { read_into(&ring, fd, &mut buf, 0, 42) }.unwrap();
    ring.submit().unwrap();
    let live = held_back_identities(&kernel)[0];
    assert_ne!(live, stale);
    assert_eq!(live as u32, stale as u32, "the read reuses the nop's slot");

    // Another ring's msg_ring could post these: the finished nop's
    // identity (a stale generation of the read's slot), and the read's
    // label as a raw user_data.
    post_foreign_cqe(&kernel, stale, 11);
    post_foreign_cqe(&kernel, 42, 12);
    let foreign: Vec<_> = ring.wait_timeout(Duration::ZERO).unwrap().collect();
    assert_eq!(labels(&foreign), [stale, 42]);
    assert_eq!(foreign[0].1.as_ref().unwrap(), &11);
    assert_eq!(foreign[1].1.as_ref().unwrap(), &12);
    assert_eq!(ring.in_flight(), 1, "the read is still in flight");
    // SAFETY: refused, so never queued.
    let again = unsafe { read_into(&ring, fd, &mut buf, 0, 42) };
    assert!(
        matches!(again, Err(Error::DuplicateUserData(42))),
        "{again:?}"
    );

    kernel.complete_deferred(1);
    let done = reap(&ring, 1);
    assert_eq!(done[&42].as_ref().unwrap(), &8);
    assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8]);
}
