//! Kernel tests for operations on rings and what is in flight: msg_ring
//! between contexts, files_update from the ring, cancellation by file and
//! of everything, and a poll's events updated in place.
// Needs the real kernel: Miri cannot make io_uring syscalls.
#![cfg(not(miri))]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::{errno, pipe, reap_by_user_data, scratch_file};
use ringfence::op::{AsyncCancel, FilesUpdate, Fsync, MsgRing, Nop, PollAdd, PollRemove, Target};
use ringfence::{EventType, URingBuilder};

#[test]
fn msg_ring_posts_a_completion_the_target_yields_as_foreign_and_releases_nothing() {
    let sender = ring!(4);
    let target = Arc::new(ring!(4));
    target.add(Nop::new(), 5).expect("add nop");
    let before = target.in_flight();
    sender
        .add(MsgRing::data(target.as_target(), 0xfeed, 42), 1)
        .expect("add msg_ring");
    assert_eq!(reap_by_user_data(&sender, 1)[&1].as_ref().ok(), Some(&0));
    let got = reap_by_user_data(&target, 2);
    assert_eq!(got[&0xfeed].as_ref().ok(), Some(&42));
    assert_eq!(got[&5].as_ref().ok(), Some(&0));
    assert_eq!(before, 1);
    assert_eq!(
        target.in_flight(),
        0,
        "the foreign completion released nothing"
    );
}

#[test]
fn msg_ring_passes_cqe_flags_from_linux_6_3() {
    let sender = ring!(4);
    let target = Arc::new(ring!(4));
    let flags = 1 << 20;
    sender
        .add(MsgRing::data(target.as_target(), 9, 3).cqe_flags(flags), 1)
        .expect("add msg_ring");
    assert_eq!(reap_by_user_data(&sender, 1)[&1].as_ref().ok(), Some(&0));
    let completion = target
        .wait_timeout_completions(Duration::from_secs(5))
        .expect("wait")
        .next()
        .expect("the message");
    assert_eq!(completion.user_data(), 9);
    assert_eq!(completion.raw_flags() & flags, flags);
}

#[test]
fn msg_ring_to_a_file_that_is_no_ring_fails_with_ebadfd() {
    let sender = ring!(4);
    let file = Arc::new(scratch_file(0));
    sender.add(MsgRing::data(file, 1, 0), 1).expect("add");
    assert_eq!(
        errno(&reap_by_user_data(&sender, 1)[&1]),
        Some(libc::EBADFD)
    );
}

#[test]
fn files_update_fills_a_sparse_slot_that_then_serves_a_fixed_operation() {
    let Some(ring) = common::usable_or_skip(URingBuilder::new(4).sparse_files(2).build()) else {
        return;
    };
    // The slot is empty: a fixed fsync on it fails.
    ring.add(Fsync::new(Target::fixed(1)), 1).expect("add");
    assert_eq!(errno(&reap_by_user_data(&ring, 1)[&1]), Some(libc::EBADF));
    let file = Arc::new(scratch_file(0));
    ring.add(FilesUpdate::new(1, [Some(Target::from(file))]), 2)
        .expect("add files_update");
    assert_eq!(reap_by_user_data(&ring, 1)[&2].as_ref().ok(), Some(&1));
    ring.add(Fsync::new(Target::fixed(1)), 3).expect("add");
    assert_eq!(reap_by_user_data(&ring, 1)[&3].as_ref().ok(), Some(&0));
    // And `None` clears it again.
    ring.add(FilesUpdate::new(1, [None]), 4).expect("add");
    assert_eq!(reap_by_user_data(&ring, 1)[&4].as_ref().ok(), Some(&1));
    ring.add(Fsync::new(Target::fixed(1)), 5).expect("add");
    assert_eq!(errno(&reap_by_user_data(&ring, 1)[&5]), Some(libc::EBADF));
}

#[test]
fn cancel_by_file_stops_only_the_operations_on_that_file() {
    let ring = ring!(8);
    let (first, _first_writer) = pipe();
    let (second, mut second_writer) = pipe();
    let first = Arc::new(first);
    ring.add(PollAdd::new(Arc::clone(&first), EventType::Read), 1)
        .expect("add");
    ring.add(PollAdd::new(Arc::clone(&first), EventType::Read), 2)
        .expect("add");
    ring.add(PollAdd::new(Arc::new(second), EventType::Read), 3)
        .expect("add");
    ring.submit().expect("submit");
    ring.add(AsyncCancel::fd(first), 4).expect("add cancel");
    let got = reap_by_user_data(&ring, 3);
    assert_eq!(got[&4].as_ref().ok(), Some(&2), "two operations cancelled");
    assert_eq!(errno(&got[&1]), Some(libc::ECANCELED));
    assert_eq!(errno(&got[&2]), Some(libc::ECANCELED));
    assert_eq!(ring.in_flight(), 1, "the poll on the other pipe stays");
    second_writer.write_all(b"x").expect("write");
    let got = reap_by_user_data(&ring, 1);
    assert_eq!(got[&3].as_ref().ok(), Some(&(libc::POLLIN as u32)));
}

#[test]
fn cancel_all_stops_everything_in_flight() {
    let ring = ring!(8);
    let (reader, _writer) = pipe();
    let reader = Arc::new(reader);
    for ud in 1..=3 {
        ring.add(PollAdd::new(Arc::clone(&reader), EventType::Read), ud)
            .expect("add");
    }
    ring.add(ringfence::op::Timeout::new(Duration::from_secs(600)), 4)
        .expect("add");
    ring.submit().expect("submit");
    ring.add(AsyncCancel::all(), 5).expect("add cancel");
    let got = reap_by_user_data(&ring, 5);
    assert_eq!(got[&5].as_ref().ok(), Some(&4));
    for ud in 1..=4 {
        assert_eq!(errno(&got[&ud]), Some(libc::ECANCELED), "user_data {ud}");
    }
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn a_poll_update_changes_what_a_pending_poll_waits_for() {
    let ring = ring!(8);
    // An empty socket is writable but not readable.
    let (socket, _peer) = std::os::unix::net::UnixStream::pair().expect("pair");
    ring.add(PollAdd::new(Arc::new(socket), EventType::Read), 1)
        .expect("add");
    ring.submit().expect("submit");
    assert!(ring
        .wait_timeout(Duration::from_millis(20))
        .expect("wait")
        .next()
        .is_none());
    ring.add(PollRemove::update_events(1, EventType::Write), 2)
        .expect("add update");
    let got: HashMap<_, _> = reap_by_user_data(&ring, 2);
    assert_eq!(got[&2].as_ref().ok(), Some(&0));
    assert_eq!(got[&1].as_ref().ok(), Some(&(libc::POLLOUT as u32)));
}

#[test]
fn msg_ring_refuses_a_user_data_a_context_uses_for_its_own_identities() {
    let sender = ring!(4);
    let target = Arc::new(ring!(4));
    match sender.add(MsgRing::data(target.as_target(), 1 << 63, 0), 1) {
        Err(ringfence::Error::ReservedUserData(user_data)) => assert_eq!(user_data, 1 << 63),
        other => panic!("a message with bit 63 set: {other:?}"),
    }
    assert_eq!(sender.in_flight(), 0);
}

#[test]
fn files_update_refuses_the_kernel_picked_slot_form() {
    let ring = ring!(4);
    let file = Arc::new(scratch_file(0));
    match ring.add(FilesUpdate::new(u32::MAX, [Some(Target::from(file))]), 1) {
        Err(ringfence::Error::FixedSlotOutOfRange(u32::MAX)) => {}
        other => panic!("files_update at u32::MAX: {other:?}"),
    }
}

/// A file a splice holds as its input is dropped once the context's lock
/// is released, as a target file is: its drop may use the same context.
#[test]
fn a_splice_input_whose_drop_uses_the_ring_is_dropped_outside_the_lock() {
    use ringfence::op::Splice;
    use ringfence::{SpliceFlags, URingContext};
    use std::os::fd::{AsFd, BorrowedFd};

    struct AddsOnDrop {
        file: std::fs::File,
        ring: std::sync::Weak<URingContext>,
    }
    impl AsFd for AddsOnDrop {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.file.as_fd()
        }
    }
    impl Drop for AddsOnDrop {
        fn drop(&mut self) {
            if let Some(ring) = self.ring.upgrade() {
                ring.add(Nop::new(), 99).expect("add from a drop");
            }
        }
    }
    let ring = Arc::new(ring!(8));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = {
        let ring = Arc::clone(&ring);
        std::thread::spawn(move || {
            let input = Arc::new(AddsOnDrop {
                file: scratch_file(0),
                ring: Arc::downgrade(&ring),
            });
            let (_reader, writer) = pipe();
            let splice = Splice::new(
                input,
                Some(0),
                Arc::new(writer),
                None,
                0,
                SpliceFlags::empty(),
            );
            ring.add(splice, 1).expect("add splice");
            let got: Vec<_> = ring.wait().expect("wait").map(|(ud, _)| ud).collect();
            done_tx.send(got).expect("send");
        })
    };
    let got = done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the splice's release deadlocked");
    worker.join().expect("worker");
    assert_eq!(got, [1]);
    // The nop the drop added is in flight, and completes.
    assert_eq!(reap_by_user_data(&ring, 1)[&99].as_ref().ok(), Some(&0));
}
