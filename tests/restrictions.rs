//! Kernel tests of restricted rings: what a [`URingAllowlist`] lets through,
//! what the kernel refuses and how (`EACCES` completions, `EBADFD`, `EBUSY`),
//! and that ringfence keeps submitting past a refused SQE.
//!
//! Register calls on a restricted ring behave differently from Linux 7.0
//! (see [`URingAllowlist`]); the tests that depend on it ask
//! [`common::kernel_version`] which rule applies.
// Needs the real kernel: Miri cannot make io_uring syscalls (the
// simulated-kernel tests in src/sim run under Miri instead).
#![cfg(not(miri))]

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::{eventfd, eventfd_count};
use ringfence::op::{LinkTimeout, Nop, Timeout, TimeoutRemove};
use ringfence::{
    Error, IosqeFlags, OpBatch, RegisterOperation, SqeFlags, URingAllowlist, URingContext,
    URingOperation,
};

/// Whether this kernel applies the pre-7.0 rule: any registered restriction
/// set blocks every register call it does not allow.
fn restrictions_block_register_calls() -> bool {
    common::kernel_version() < (7, 0)
}

/// An allowlist of exactly these operations (no register calls, no flags).
fn allowing(ops: &[URingOperation]) -> URingAllowlist {
    let mut list = URingAllowlist::new();
    for op in ops {
        list.allow_submit_operation(*op);
    }
    list
}

/// A completion result reduced to something comparable: the value, or the
/// errno.
fn outcome(result: &io::Result<u32>) -> Result<u32, i32> {
    match result {
        Ok(value) => Ok(*value),
        Err(e) => Err(e
            .raw_os_error()
            .unwrap_or_else(|| panic!("completion error without errno: {e}"))),
    }
}

/// Reaps `count` completions and returns them by user_data, asserting that no
/// user_data came back twice and that nothing else is left in flight.
fn reap_all(ring: &URingContext, count: usize) -> HashMap<u64, Result<u32, i32>> {
    let by_user_data = common::reap_by_user_data(ring, count)
        .iter()
        .map(|(user_data, result)| (*user_data, outcome(result)))
        .collect();
    assert_eq!(
        ring.in_flight(),
        0,
        "operations left in flight after {count} completions"
    );
    assert_eq!(
        ring.wait_timeout(Duration::from_millis(20))
            .expect("wait_timeout")
            .count(),
        0,
        "a completion arrived after the last one"
    );
    by_user_data
}

/// The single completion of a ring with one operation in flight.
fn reap_one(ring: &URingContext) -> (u64, Result<u32, i32>) {
    let completions = reap_all(ring, 1);
    completions.into_iter().next().expect("one completion")
}

/// Asserts that `result` is the failure of register call `want` with `errno`.
fn assert_register_fails(result: Result<(), Error>, want: RegisterOperation, errno: i32) {
    match result {
        Err(Error::Register { call, source }) => {
            assert_eq!(call, want, "wrong register call in the error");
            assert_eq!(
                source.raw_os_error(),
                Some(errno),
                "{want:?}: expected errno {errno}, got {source}"
            );
        }
        other => panic!("{want:?}: expected Error::Register with errno {errno}, got {other:?}"),
    }
}

/// `struct io_uring_getevents_arg` (IORING_ENTER_EXT_ARG).
#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// `struct __kernel_timespec`.
#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

const IORING_ENTER_GETEVENTS: u32 = 1 << 0;
const IORING_ENTER_EXT_ARG: u32 = 1 << 3;

/// Waits, without submitting anything, until the completion ring of `ring`
/// holds at least `count` completions or `timeout` has passed. Returns
/// whether they arrived. Reaps nothing: `ring.wait()` still returns them.
///
/// On a timeout the kernel returns 0 rather than `ETIME` when the ring holds
/// any completion at all, so the return value alone cannot tell; but a
/// kernel timeout never fires early, so a return before `timeout` has
/// elapsed means the wait condition (`count` completions) was met.
fn completions_posted(ring: &URingContext, count: u32, timeout: Duration) -> bool {
    let ts = KernelTimespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let arg = GeteventsArg {
        sigmask: 0,
        sigmask_sz: 0,
        min_wait_usec: 0,
        ts: &ts as *const KernelTimespec as u64,
    };
    let start = std::time::Instant::now();
    loop {
        assert!(
            start.elapsed() < timeout * 3,
            "io_uring_enter kept being interrupted"
        );
        // SAFETY: io_uring_enter with to_submit 0 touches no SQE; with
        // EXT_ARG it reads `arg` (of the size passed) and the timespec it
        // points to, both alive on this stack for the whole call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                ring.as_raw_fd(),
                0u32,
                count,
                IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
                &arg as *const GeteventsArg,
                std::mem::size_of::<GeteventsArg>(),
            )
        };
        if ret >= 0 {
            return start.elapsed() < timeout;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ETIME) => return false,
            _ => panic!("io_uring_enter(GETEVENTS | EXT_ARG): {err}"),
        }
    }
}

#[test]
fn allowed_nop_and_readv_complete_normally() {
    let list = allowing(&[URingOperation::Nop, URingOperation::Readv]);
    let ring = ring!(8, Some(&list));

    ring.add_nop(1).expect("add_nop");
    assert_eq!(reap_one(&ring), (1, Ok(0)));

    let zero = File::open("/dev/zero").expect("open /dev/zero");
    let (first, first_view) = common::leaked_buf(512, 0xa5);
    let (second, second_view) = common::leaked_buf(256, 0x5a);
    // SAFETY: both buffers are leaked, so they outlive the operation, and
    // they are only read after its completion has been reaped.
    unsafe {
        ring.add_readv(
            common::pinned(vec![first, second]),
            zero.as_raw_fd(),
            Some(0),
            2,
        )
    }
    .expect("add_readv");
    assert_eq!(reap_one(&ring), (2, Ok(768)));
    assert!(
        first_view.iter().chain(second_view).all(|b| *b == 0),
        "readv did not fill the buffers"
    );
}

#[test]
fn disallowed_ops_get_eacces_and_the_rest_of_the_batch_still_runs() {
    let list = allowing(&[URingOperation::Nop]);
    let ring = ring!(16, Some(&list));
    let file = common::scratch_file(4096);
    let fd = file.as_raw_fd();

    // user_data -> what the kernel must answer. Refused SQEs at the start,
    // in the middle, back to back and at the end of one batch.
    let mut expected = HashMap::new();
    let add_refused = |ud: u64, which: usize| match which % 3 {
        0 => ring.add_fsync(fd, ud),
        1 => ring.add_fallocate(fd, 0, 4096, 0, ud),
        _ => ring.add_poll_fd(fd, ringfence::EventType::Read, ud),
    };
    let pattern = [
        false, true, true, false, true, false, false, true, false, true,
    ];
    for (i, allowed) in pattern.iter().enumerate() {
        let ud = 100 + i as u64;
        if *allowed {
            ring.add_nop(ud).expect("add_nop");
            expected.insert(ud, Ok(0));
        } else {
            add_refused(ud, i).expect("add refused op");
            expected.insert(ud, Err(libc::EACCES));
        }
    }
    assert_eq!(reap_all(&ring, pattern.len()), expected);
}

#[test]
fn submit_alone_pushes_every_sqe_past_a_refused_one() {
    let list = allowing(&[URingOperation::Nop]);
    let ring = ring!(16, Some(&list));
    let file = common::scratch_file(0);

    // The kernel stops consuming at the fsync; submit() itself must offer
    // the rest again, before anyone calls wait().
    ring.add_nop(1).expect("add_nop");
    ring.add_fsync(file.as_raw_fd(), 2).expect("add_fsync");
    for ud in 3..=8 {
        ring.add_nop(ud).expect("add_nop");
    }
    ring.submit().expect("submit");
    assert!(
        completions_posted(&ring, 8, Duration::from_secs(5)),
        "submit() left SQEs behind the refused fsync unsubmitted"
    );

    let mut expected: HashMap<u64, Result<u32, i32>> = (1..=8).map(|ud| (ud, Ok(0))).collect();
    expected.insert(2, Err(libc::EACCES));
    assert_eq!(reap_all(&ring, 8), expected);
}

#[test]
fn empty_allowlist_refuses_even_nop() {
    let ring = ring!(8, Some(&URingAllowlist::new()));
    ring.add_nop(9).expect("add_nop");
    assert_eq!(reap_one(&ring), (9, Err(libc::EACCES)));
}

#[test]
fn registering_restrictions_on_an_unrestricted_enabled_ring_is_ebadfd() {
    let ring = ring!(8);
    let list = allowing(&[URingOperation::Nop]);
    let result = ring.register_restrictions(&list);
    if let Err(err) = &result {
        assert!(err.to_string().contains("created disabled"), "{err}");
    }
    assert_register_fails(result, RegisterOperation::Restrictions, libc::EBADFD);
    // Refused, so the ring is as unrestricted as before.
    let file = common::scratch_file(0);
    ring.add_fsync(file.as_raw_fd(), 1).expect("add_fsync");
    assert_eq!(reap_one(&ring), (1, Ok(0)));
}

#[test]
fn registering_restrictions_again_on_a_restricted_ring_is_refused() {
    // Without the Restrictions register call allowed, kernels before 7.0
    // refuse any register call first (EACCES); from 7.0 an SQE-only set
    // leaves register calls open and the kernel says the ring is enabled.
    let list = allowing(&[URingOperation::Nop]);
    let ring = ring!(8, Some(&list));
    let errno = if restrictions_block_register_calls() {
        libc::EACCES
    } else {
        libc::EBADFD
    };
    assert_register_fails(
        ring.register_restrictions(&list),
        RegisterOperation::Restrictions,
        errno,
    );

    // With the call allowed, every kernel gets as far as the state check.
    let mut open = allowing(&[URingOperation::Nop]);
    open.allow_register_operation(RegisterOperation::Restrictions);
    let ring = ring!(8, Some(&open));
    assert_register_fails(
        ring.register_restrictions(&open),
        RegisterOperation::Restrictions,
        libc::EBADFD,
    );
}

#[test]
fn second_registration_on_a_disabled_ring_is_ebusy_and_changes_nothing() {
    let ring = disabled_ring!(8);
    ring.register_restrictions(&allowing(&[URingOperation::Nop]))
        .expect("first registration");
    let wider = allowing(&[URingOperation::Nop, URingOperation::Fsync]);
    assert_register_fails(
        ring.register_restrictions(&wider),
        RegisterOperation::Restrictions,
        libc::EBUSY,
    );
    ring.enable().expect("enable");

    // The first set is the one in force: fsync is still refused.
    let file = common::scratch_file(0);
    ring.add_nop(1).expect("add_nop");
    ring.add_fsync(file.as_raw_fd(), 2).expect("add_fsync");
    assert_eq!(
        reap_all(&ring, 2),
        HashMap::from([(1, Ok(0)), (2, Err(libc::EACCES))])
    );
}

#[test]
fn submitting_to_a_disabled_ring_is_ebadfd_until_enabled() {
    let ring = disabled_ring!(8);
    ring.add_nop(5).expect("add_nop");
    let zero = File::open("/dev/zero").expect("/dev/zero");
    let (buf, view) = common::leaked_buf(32, 0x11);
    // SAFETY: the buffer is leaked and read only after the completion.
    unsafe { ring.add_readv(common::pinned(vec![buf]), zero.as_raw_fd(), Some(0), 6) }
        .expect("add_readv");
    let assert_ebadfd = |what: &str, result: Result<(), Error>| match result {
        Err(err @ Error::Enter(_)) => {
            assert!(err.to_string().contains("enable"), "{what}: {err}");
            assert_eq!(
                io::Error::from(err).raw_os_error(),
                Some(libc::EBADFD),
                "{what}"
            );
        }
        other => panic!("{what} on a disabled ring: expected Error::Enter(EBADFD), got {other:?}"),
    };
    assert_ebadfd("submit", ring.submit());
    assert_ebadfd("wait", ring.wait().map(drop));
    // Both stayed queued through both failures, and nothing ran.
    assert_eq!(ring.in_flight(), 2);
    assert!(
        view.iter().all(|b| *b == 0x11),
        "the disabled ring ran the readv"
    );

    let list = allowing(&[URingOperation::Nop, URingOperation::Readv]);
    ring.register_restrictions(&list)
        .expect("register_restrictions");
    ring.enable().expect("enable");
    assert_eq!(reap_all(&ring, 2), HashMap::from([(5, Ok(0)), (6, Ok(32))]));
    assert!(
        view.iter().all(|b| *b == 0),
        "the readv did not fill its buffer"
    );
}

#[test]
fn register_eventfd_follows_the_kernel_rule_for_sqe_only_allowlists() {
    let list = allowing(&[URingOperation::Nop]);
    let ring = ring!(8, Some(&list));
    let efd = eventfd();
    let result = ring.register_eventfd(efd.as_raw_fd());
    if restrictions_block_register_calls() {
        assert_register_fails(result, RegisterOperation::Eventfd, libc::EACCES);
    } else {
        result.expect("register_eventfd on >= 7.0 with an SQE-only allowlist");
    }
}

#[test]
fn allowed_register_eventfd_works_and_is_signalled() {
    let mut list = allowing(&[URingOperation::Nop]);
    list.allow_register_operation(RegisterOperation::Eventfd);
    let ring = ring!(8, Some(&list));
    let efd = eventfd();
    ring.register_eventfd(efd.as_raw_fd())
        .expect("register_eventfd");
    assert_eq!(
        eventfd_count(&efd),
        None,
        "eventfd signalled before any completion"
    );

    ring.add_nop(3).expect("add_nop");
    assert_eq!(reap_one(&ring), (3, Ok(0)));
    assert_eq!(
        eventfd_count(&efd),
        Some(1),
        "the nop's completion should signal the eventfd once"
    );
}

#[test]
fn sqe_flags_outside_the_allowlist_are_refused() {
    // No flags allowed: ASYNC is refused, a plain nop is not.
    let list = allowing(&[URingOperation::Nop]);
    let ring = ring!(8, Some(&list));
    ring.add_nop_with_flags(SqeFlags::ASYNC, 1)
        .expect("add_nop_with_flags");
    ring.add_nop(2).expect("add_nop");
    assert_eq!(
        reap_all(&ring, 2),
        HashMap::from([(1, Err(libc::EACCES)), (2, Ok(0))])
    );

    // ASYNC allowed: ASYNC passes, HARDLINK does not: the refused head of
    // a hard-linked chain fails, and takes the rest of its chain with it.
    let mut list = allowing(&[URingOperation::Nop]);
    list.allow_sqe_flags(IosqeFlags::ASYNC);
    let ring = ring!(8, Some(&list));
    ring.add_nop_with_flags(SqeFlags::ASYNC, 1)
        .expect("add_nop_with_flags");
    ring.add_nop(3).expect("add_nop");
    let mut chain = OpBatch::new();
    chain
        .add_hardlinked(Nop::new(), 2)
        .and_then(|chain| chain.add(Nop::new(), 4))
        .expect("chain");
    ring.add_batch(&mut chain).expect("add_batch");
    assert_eq!(
        reap_all(&ring, 4),
        HashMap::from([
            (1, Ok(0)),
            (2, Err(libc::EACCES)),
            (3, Ok(0)),
            (4, Err(libc::ECANCELED))
        ])
    );
}

#[test]
fn required_sqe_flags_refuse_sqes_without_them() {
    let mut list = allowing(&[URingOperation::Nop]);
    list.require_sqe_flags(IosqeFlags::ASYNC);
    let ring = ring!(8, Some(&list));
    ring.add_nop(1).expect("add_nop");
    ring.add_nop_with_flags(SqeFlags::ASYNC, 2)
        .expect("add_nop_with_flags");
    assert_eq!(
        reap_all(&ring, 2),
        HashMap::from([(1, Err(libc::EACCES)), (2, Ok(0))])
    );
}

#[test]
fn allows_sqe_flags_agrees_with_the_kernel() {
    let async_ = IosqeFlags::ASYNC;
    let hardlink = IosqeFlags::IO_HARDLINK;
    let link = IosqeFlags::IO_LINK;
    let none = IosqeFlags::empty();
    // (allowed, required) restriction pairs.
    let rules = [
        (none, none),
        (async_, none),
        (async_ | hardlink, none),
        (none, async_),
        (hardlink, async_),
        (link, hardlink),
    ];
    // Flags on a nop, and whether it heads a chain (soft or hard link):
    // links exist only inside a batch, so a linked probe is followed by a
    // plain nop that ends its chain.
    let probes = [
        (SqeFlags::empty(), none),
        (SqeFlags::ASYNC, none),
        (SqeFlags::empty(), hardlink),
        (SqeFlags::empty(), link),
        (SqeFlags::ASYNC, hardlink),
        (SqeFlags::ASYNC, link),
    ];
    const CHAIN_END: u64 = 100;
    let (mut passed, mut refused) = (0, 0);
    for (allowed, required) in rules {
        let mut list = allowing(&[URingOperation::Nop]);
        list.allow_sqe_flags(allowed).require_sqe_flags(required);
        let ring = ring!(8, Some(&list));
        for (i, (flags, joins)) in probes.iter().enumerate() {
            let ud = i as u64;
            let probe = Nop::new().flags(*flags);
            let mut batch = OpBatch::new();
            let added = if *joins == link {
                batch.add_linked(probe, ud)
            } else if *joins == hardlink {
                batch.add_hardlinked(probe, ud)
            } else {
                batch.add(probe, ud)
            };
            added.expect("probe");
            if !joins.is_empty() {
                batch.add(Nop::new(), CHAIN_END).expect("chain end");
            }
            ring.add_batch(&mut batch).expect("add_batch");
            let got = reap_all(&ring, batch_len(joins));
            let sent = IosqeFlags::from(*flags) | *joins;
            let predicted = list.allows_sqe_flags(sent);
            let end_refused = !joins.is_empty() && !list.allows_sqe_flags(IosqeFlags::empty());
            // A head the kernel accepts still fails when a later member of
            // its chain is refused (`io_submit_fail_init`).
            let want = match (predicted, end_refused) {
                (false, _) => Err(libc::EACCES),
                (true, true) => Err(libc::ECANCELED),
                (true, false) => Ok(0),
            };
            assert_eq!(
                got[&ud], want,
                "allowed {allowed:?}, required {required:?}, flags {sent:?}: allows_sqe_flags says {predicted}"
            );
            if !predicted && !joins.is_empty() {
                // A refused chain head takes the rest of its chain with it,
                // unless the kernel refuses that member for itself.
                let end = if list.allows_sqe_flags(IosqeFlags::empty()) {
                    libc::ECANCELED
                } else {
                    libc::EACCES
                };
                assert_eq!(got[&CHAIN_END], Err(end));
            }
            if predicted {
                passed += 1;
            } else {
                refused += 1;
            }
        }
    }
    assert!(
        passed > 0 && refused > 0,
        "the probes must cover both outcomes"
    );
}

/// Completions a probe of `allows_sqe_flags_agrees_with_the_kernel` makes:
/// one, or two for a chain.
fn batch_len(joins: &IosqeFlags) -> usize {
    if joins.is_empty() {
        1
    } else {
        2
    }
}

/// The operations ringfence can issue that this kernel has (the crate's
/// own list, less those newer than the kernel, whose opcodes it would
/// refuse in an allowlist with `EINVAL`).
fn issuable() -> &'static [URingOperation] {
    static HERE: std::sync::OnceLock<Vec<URingOperation>> = std::sync::OnceLock::new();
    HERE.get_or_init(|| {
        let kernel = common::kernel_version();
        (ringfence::op::ISSUABLE.iter())
            .filter(|op| op.since() <= kernel)
            .copied()
            .collect()
    })
}

/// The files the property test's operations work on.
struct Targets {
    /// A scratch file for writev, fsync and fallocate.
    file: File,
    /// `/dev/zero`, for readv.
    zero: File,
    /// The read end of a pipe that holds unread data, so it polls readable.
    readable: File,
}

/// The user_data of the nop a link timeout recipe bounds.
const LINK_TIMEOUT_HEAD: u64 = 1000;

/// What the nop a link timeout bounds completes with under `list`: refused
/// itself, cancelled by its refused link timeout (`io_submit_fail_init`
/// fails a chain's head when a later member is refused), or done.
fn link_timeout_head_result(list: &URingAllowlist) -> Result<u32, i32> {
    if !list.allows_submit_operation(URingOperation::Nop) {
        Err(libc::EACCES)
    } else if !list.allows_submit_operation(URingOperation::LinkTimeout) {
        Err(libc::ECANCELED)
    } else {
        Ok(0)
    }
}

/// A path that exists nowhere, for the path operations.
const MISSING: &str = "/nonexistent/ringfence-test";

/// `file` as a target the ring does not keep open.
fn borrowed(file: &File) -> ringfence::op::Target {
    // SAFETY: the property test's files outlive every ring it creates
    // (each ring is reaped, and dropped, inside the loop).
    unsafe { ringfence::op::Target::from_raw_fd(file.as_raw_fd()) }
}

/// Queues one `op` with user_data `ud`, returning what it must complete with
/// when allowed.
fn issue(ring: &URingContext, op: URingOperation, ud: u64, targets: &Targets) -> Result<u32, i32> {
    let file = targets.file.as_raw_fd();
    match op {
        URingOperation::Nop => {
            ring.add_nop(ud).expect("add_nop");
            Ok(0)
        }
        URingOperation::Readv => {
            let (buf, _) = common::leaked_buf(16, 1);
            // SAFETY: the buffer is leaked, so it outlives the operation.
            unsafe {
                ring.add_readv(
                    common::pinned(vec![buf]),
                    targets.zero.as_raw_fd(),
                    Some(0),
                    ud,
                )
            }
            .expect("add_readv");
            Ok(16)
        }
        URingOperation::Writev => {
            let (buf, _) = common::leaked_buf(16, 2);
            // SAFETY: the buffer is leaked, so it outlives the operation.
            unsafe { ring.add_writev(common::pinned(vec![buf]), file, Some(0), ud) }
                .expect("add_writev");
            Ok(16)
        }
        URingOperation::Fsync => {
            ring.add_fsync(file, ud).expect("add_fsync");
            Ok(0)
        }
        URingOperation::Fallocate => {
            ring.add_fallocate(file, 0, 4096, 0, ud)
                .expect("add_fallocate");
            Ok(0)
        }
        URingOperation::PollAdd => {
            ring.add_poll_fd(targets.readable.as_raw_fd(), ringfence::EventType::Read, ud)
                .expect("add_poll_fd");
            Ok(libc::POLLIN as u32)
        }
        URingOperation::PollRemove => {
            // No poll with this user_data is pending.
            ring.remove_poll_fd(u64::MAX - 1, ud)
                .expect("remove_poll_fd");
            Err(libc::ENOENT)
        }
        URingOperation::AsyncCancel => {
            // No operation with this user_data is in the kernel.
            ring.async_cancel(u64::MAX - 2, ud).expect("async_cancel");
            Err(libc::ENOENT)
        }
        URingOperation::Timeout => {
            // A zero timeout fires at once.
            ring.add(Timeout::new(Duration::ZERO), ud)
                .expect("add Timeout");
            Err(libc::ETIME)
        }
        URingOperation::TimeoutRemove => {
            // No timeout with this user_data is pending.
            ring.add(TimeoutRemove::new(u64::MAX - 3), ud)
                .expect("add TimeoutRemove");
            Err(libc::ENOENT)
        }
        URingOperation::LinkTimeout => {
            // Bounding a nop, which completes first (or is refused): the
            // link timeout is cancelled either way. The nop's own result is
            // `link_timeout_head_result`'s.
            let mut chain = OpBatch::new();
            chain
                .add_linked(Nop::new(), LINK_TIMEOUT_HEAD)
                .and_then(|chain| chain.add(LinkTimeout::new(Duration::from_secs(10)), ud))
                .expect("chain");
            ring.add_batch(&mut chain).expect("add_batch");
            Err(libc::ECANCELED)
        }
        // The socket operations on the scratch file, which is not a
        // socket: the kernel runs them (past the allowlist) and fails them.
        URingOperation::Send
        | URingOperation::Recv
        | URingOperation::Sendmsg
        | URingOperation::Recvmsg
        | URingOperation::Accept
        | URingOperation::Connect
        | URingOperation::Shutdown => {
            add_socket_op(ring, op, ud, &targets.file);
            Err(libc::ENOTSOCK)
        }
        URingOperation::Socket => {
            // AF_UNIX has no protocol 99: no descriptor is made.
            let socket = ringfence::op::Socket::new(libc::AF_UNIX, libc::SOCK_STREAM, 99);
            ring.add(socket, ud).expect("add socket");
            Err(libc::EPROTONOSUPPORT)
        }
        URingOperation::ReadFixed
        | URingOperation::WriteFixed
        | URingOperation::ReadvFixed
        | URingOperation::WritevFixed => {
            // No buffer is registered on this ring: allowed, the kernel
            // fails each with EFAULT and touches no memory.
            use ringfence::op::{ReadFixed, ReadvFixed, WriteFixed, WritevFixed};
            let memory = std::ptr::NonNull::slice_from_raw_parts(std::ptr::NonNull::dangling(), 16);
            let buffer = ringfence::RegisteredBuffer::from_raw_parts(0, memory);
            // SAFETY: the scratch file outlives the ring.
            let target = unsafe { ringfence::op::Target::from_raw_fd(file) };
            let added = match op {
                URingOperation::ReadFixed => {
                    ring.add(ReadFixed::new(target, buffer, 0..16, Some(0)).unwrap(), ud)
                }
                URingOperation::WriteFixed => {
                    ring.add(WriteFixed::new(target, buffer, 0..16, Some(0)).unwrap(), ud)
                }
                URingOperation::ReadvFixed => ring.add(
                    ReadvFixed::new(target, buffer, &[0..8, 8..16], Some(0)).unwrap(),
                    ud,
                ),
                _ => ring.add(
                    WritevFixed::new(target, buffer, &[0..8, 8..16], Some(0)).unwrap(),
                    ud,
                ),
            };
            added.expect("add a fixed read or write");
            Err(libc::EFAULT)
        }
        URingOperation::Read => {
            let (buf, _) = common::leaked_buf(16, 3);
            let op = ringfence::op::Read::new(buf, borrowed(&targets.zero), Some(0));
            ring.add(op, ud).expect("add Read");
            Ok(16)
        }
        URingOperation::Write => {
            let (buf, _) = common::leaked_buf(16, 4);
            let op = ringfence::op::Write::new(buf, borrowed(&targets.file), Some(0));
            ring.add(op, ud).expect("add Write");
            Ok(16)
        }
        URingOperation::SyncFileRange => {
            let flags = ringfence::SyncFileRangeFlags::WRITE;
            let op = ringfence::op::SyncFileRange::new(borrowed(&targets.file), 0, 0, flags);
            ring.add(op, ud).expect("add SyncFileRange");
            Ok(0)
        }
        URingOperation::Fadvise => {
            let advice = libc::POSIX_FADV_NORMAL;
            let op = ringfence::op::Fadvise::new(borrowed(&targets.file), 0, 0, advice);
            ring.add(op, ud).expect("add Fadvise");
            Ok(0)
        }
        // Paths that do not exist: nothing opened, nothing written.
        URingOperation::Openat => {
            let op = ringfence::op::Openat::new(MISSING, libc::O_RDONLY | libc::O_CLOEXEC, 0);
            ring.add(op, ud).expect("add Openat");
            Err(libc::ENOENT)
        }
        URingOperation::Openat2 => {
            let resolve = ringfence::ResolveFlags::empty();
            let op = ringfence::op::Openat2::new(MISSING, libc::O_RDONLY, 0, resolve);
            ring.add(op, ud).expect("add Openat2");
            Err(libc::ENOENT)
        }
        URingOperation::Statx => {
            // SAFETY: all-zero bytes are a valid statx; leaked, it outlives
            // the operation.
            let buf: &'static mut libc::statx = common::leak_value(unsafe { std::mem::zeroed() });
            // SAFETY: the buffer is leaked and never touched again.
            let op = unsafe { ringfence::op::Statx::new(MISSING, 0, libc::STATX_SIZE, buf) };
            ring.add(op, ud).expect("add Statx");
            Err(libc::ENOENT)
        }
        URingOperation::Close => {
            // No registered file table.
            ring.add(ringfence::op::Close::fixed_slot(0), ud)
                .expect("add Close");
            Err(libc::ENXIO)
        }
        // Neither end a pipe.
        URingOperation::Splice => {
            let (file, flags) = (borrowed(&targets.file), ringfence::SpliceFlags::empty());
            let op = ringfence::op::Splice::new(file.clone(), Some(0), file, Some(0), 1, flags);
            ring.add(op, ud).expect("add Splice");
            Err(libc::EINVAL)
        }
        URingOperation::Tee => {
            let (file, flags) = (borrowed(&targets.file), ringfence::SpliceFlags::empty());
            ring.add(ringfence::op::Tee::new(file.clone(), file, 1, flags), ud)
                .expect("add Tee");
            Err(libc::EINVAL)
        }
        URingOperation::MsgRing => {
            // The scratch file is no ring.
            let op = ringfence::op::MsgRing::data(borrowed(&targets.file), 1, 0);
            ring.add(op, ud).expect("add MsgRing");
            Err(libc::EBADFD)
        }
        URingOperation::FilesUpdate => {
            // This ring has no registered file table.
            let op = ringfence::op::FilesUpdate::new(0, [None]);
            ring.add(op, ud).expect("add FilesUpdate");
            Err(libc::ENXIO)
        }
        other => panic!("no recipe for {other:?}: add one to `issue` in tests/restrictions.rs"),
    }
}

/// Adds the socket operation `op` on `file` (not a socket).
fn add_socket_op(ring: &URingContext, op: URingOperation, ud: u64, file: &File) {
    use ringfence::op::{Accept, Connect, Recv, Recvmsg, Send, Sendmsg, Shutdown};
    let fd = file.as_raw_fd();
    // SAFETY: `file` lives in the test's `Targets`, past the ring, which
    // reaps every operation before it is dropped.
    let target = || unsafe { ringfence::op::Target::from_raw_fd(fd) };
    let buf = || common::leaked_buf(16, 3).0;
    let to: std::net::SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 9).into();
    let added = match op {
        URingOperation::Send => ring.add(Send::new(buf(), target()), ud),
        URingOperation::Recv => ring.add(Recv::new(buf(), target()), ud),
        URingOperation::Sendmsg => {
            ring.add(Sendmsg::new(common::pinned(vec![buf()]), target()), ud)
        }
        URingOperation::Recvmsg => {
            ring.add(Recvmsg::new(common::pinned(vec![buf()]), target()), ud)
        }
        URingOperation::Accept => ring.add(Accept::new(target()), ud),
        URingOperation::Connect => ring.add(Connect::new(target(), to), ud),
        URingOperation::Shutdown => ring.add(Shutdown::new(target(), std::net::Shutdown::Both), ud),
        other => panic!("{other:?} is not a socket operation on a file"),
    };
    added.unwrap_or_else(|e| panic!("add {op:?}: {e}"));
}

#[test]
fn allowlists_over_the_issuable_ops_are_enforced_exactly() {
    let (readable, mut write_end) = common::pipe();
    // Data that nobody reads: the read end stays readable, so an allowed
    // poll completes at once.
    write_end.write_all(b"x").expect("write to pipe");
    let targets = Targets {
        file: common::scratch_file(4096),
        zero: File::open("/dev/zero").expect("open /dev/zero"),
        readable,
    };

    for mask in allowlist_masks() {
        let allowed: Vec<URingOperation> = issuable()
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, op)| *op)
            .collect();
        let mut list = allowing(&allowed);
        // The link timeout recipe's chain: its head carries IO_LINK.
        list.allow_sqe_flags(IosqeFlags::IO_LINK);
        // Room for one SQE per issuable operation, plus the link timeout's
        // head, queued before any is submitted.
        let ring = ring!(64, Some(&list));
        let mut expected = HashMap::new();
        for (i, op) in issuable().iter().enumerate() {
            let ud = i as u64;
            let when_allowed = issue(&ring, *op, ud, &targets);
            assert_eq!(list.allows_submit_operation(*op), allowed.contains(op));
            let want = if allowed.contains(op) {
                assert_ne!(
                    when_allowed,
                    Err(libc::EACCES),
                    "{op:?} expects EACCES when allowed"
                );
                when_allowed
            } else {
                Err(libc::EACCES)
            };
            expected.insert(ud, want);
            if *op == URingOperation::LinkTimeout {
                expected.insert(LINK_TIMEOUT_HEAD, link_timeout_head_result(&list));
            }
        }
        let got = reap_all(&ring, expected.len());
        for (ud, want) in &expected {
            let op = issuable().get(*ud as usize).unwrap_or(&URingOperation::Nop);
            assert_eq!(
                got[ud], *want,
                "{op:?} (user_data {ud}) with allowlist {allowed:?} (mask {mask:#x})"
            );
        }
    }
}

/// The allowlists the property test tries, as bitmasks over [`issuable`]:
/// none, all, every single operation, all but each one, and random subsets
/// (every subset would be 2^n rings).
fn allowlist_masks() -> Vec<u64> {
    assert!(issuable().len() < 64, "masks are u64");
    let all = (1u64 << issuable().len()) - 1;
    let mut masks = vec![0, all];
    for i in 0..issuable().len() {
        masks.push(1 << i);
        masks.push(all & !(1 << i));
    }
    let mut rng = fastrand::Rng::with_seed(0x5eed_0a11);
    masks.extend((0..64).map(|_| rng.u64(..) & all));
    masks
}

/// On a ring that requires registered files, the caller's operations that
/// name no file get the flag from the context and run, those the kernel
/// refuses it on are refused at add time, and a plain descriptor is
/// refused by the kernel.
#[test]
fn a_ring_requiring_fixed_files_runs_fileless_operations_and_refuses_the_rest_early() {
    use ringfence::op::{Fsync, LinkTimeout, Openat, PollRemove, Timeout, TimeoutRemove};
    let mut list = allowing(&[
        URingOperation::Timeout,
        URingOperation::LinkTimeout,
        URingOperation::PollRemove,
        URingOperation::Fsync,
        URingOperation::Openat,
        URingOperation::TimeoutRemove,
    ]);
    list.allow_housekeeping()
        .allow_sqe_flags(IosqeFlags::IO_LINK)
        .require_sqe_flags(IosqeFlags::FIXED_FILE);
    let ring = ring!(8, Some(&list));
    ring.add(Nop::new(), 1).expect("nop");
    ring.add(Timeout::new(Duration::ZERO), 2).expect("timeout");
    ring.add(PollRemove::new(999), 3).expect("poll remove");
    ring.add(ringfence::op::AsyncCancel::new(999), 4)
        .expect("cancel");
    let mut chain = OpBatch::new();
    chain
        .add_linked(Nop::new(), 5)
        .and_then(|chain| chain.add(LinkTimeout::new(Duration::from_secs(5)), 6))
        .expect("chain");
    ring.add_batch(&mut chain).expect("add_batch");
    let file = std::sync::Arc::new(common::scratch_file(0));
    ring.add(Fsync::new(file), 7).expect("fsync");
    assert_eq!(
        reap_all(&ring, 7),
        HashMap::from([
            (1, Ok(0)),
            (2, Err(libc::ETIME)),
            (3, Err(libc::ENOENT)),
            (4, Err(libc::ENOENT)),
            (5, Ok(0)),
            (6, Err(libc::ECANCELED)),
            (7, Err(libc::EACCES)),
        ])
    );
    for refused in [
        ring.add(Openat::new("/dev/null", libc::O_RDONLY, 0), 8),
        ring.add(TimeoutRemove::new(2), 9),
    ] {
        assert!(
            matches!(refused, Err(Error::FixedFileNotSupported(_))),
            "{refused:?}"
        );
    }
    assert_eq!(ring.in_flight(), 0);
}

/// A cancellation by plain descriptor names a file: on a ring that requires
/// registered files it does not get FIXED_FILE (the kernel would read the
/// number as a slot and cancel whatever that slot's file has in flight),
/// and the kernel refuses it.
#[test]
fn a_cancel_by_plain_descriptor_on_a_fixed_files_only_ring_is_refused_not_read_as_a_slot() {
    use ringfence::op::{AsyncCancel, PollAdd, Target};
    use std::os::fd::AsFd;
    let (socket, _peer) = std::os::unix::net::UnixStream::pair().expect("pair");
    let file = common::scratch_file(0);
    let number = std::os::fd::AsRawFd::as_raw_fd(&file) as usize;
    let mut list = allowing(&[URingOperation::PollAdd]);
    list.allow_housekeeping()
        .require_sqe_flags(IosqeFlags::FIXED_FILE);
    // The socket in every slot up to the file's descriptor number.
    let slots = vec![socket.as_fd(); number + 1];
    let ring = match common::usable_or_skip(
        ringfence::URingBuilder::new(8)
            .files(&slots)
            .allowlist(&list)
            .build(),
    ) {
        Some(ring) => ring,
        None => return,
    };
    ring.add(
        PollAdd::new(Target::fixed(number as u32), ringfence::EventType::Read),
        1,
    )
    .expect("poll");
    ring.submit().expect("submit");
    ring.add(AsyncCancel::fd(std::sync::Arc::new(file)), 2)
        .expect("cancel");
    let got = common::reap_by_user_data(&ring, 1);
    assert_eq!(common::errno(&got[&2]), Some(libc::EACCES), "{got:?}");
    assert_eq!(ring.in_flight(), 1, "the poll on that slot is untouched");
}
