//! Random operation sequences against the real kernel, on a pipe and
//! /dev/zero and /dev/null, checking the context's bookkeeping against a
//! model: an add succeeds exactly when its user_data is free, every
//! operation completes exactly once, and `in_flight()` always agrees.
#![no_main]

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ringfence::{Error, EventType, IoBufMut, URingContext};

/// Distinct user_data values: few, so that inputs hit duplicates often.
const USER_DATA_SPACE: u64 = 16;
const BUF_LEN: usize = 256;

/// One buffer per user_data, living for the whole process. Only the
/// operation holding that user_data (at most one in flight) uses it.
fn buffer(user_data: u64) -> IoBufMut<'static> {
    static POOL: OnceLock<usize> = OnceLock::new();
    let base = *POOL.get_or_init(|| {
        let pool = vec![0u8; BUF_LEN * USER_DATA_SPACE as usize].into_boxed_slice();
        Box::leak(pool).as_mut_ptr() as usize
    });
    let ptr = (base + BUF_LEN * user_data as usize) as *mut u8;
    // SAFETY: the pool is leaked, so the slot lives forever; the context
    // refuses a second operation with the same user_data while one is in
    // flight, so no two operations use one slot at a time.
    unsafe { IoBufMut::from_raw_parts(ptr, BUF_LEN) }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(ret, 0, "pipe2 failed");
    // SAFETY: pipe2 succeeded, so both descriptors are new and ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn poke(writer: &OwnedFd) {
    // SAFETY: writes one byte from a live local; EAGAIN (pipe full) is fine.
    unsafe { libc::write(writer.as_raw_fd(), b"x".as_ptr().cast(), 1) };
}

fn drain(reader: &OwnedFd) {
    let mut scratch = [0u8; 4096];
    // SAFETY: reads into a live local buffer of the stated length; the pipe
    // is non-blocking.
    while unsafe {
        libc::read(
            reader.as_raw_fd(),
            scratch.as_mut_ptr().cast(),
            scratch.len(),
        )
    } > 0
    {}
}

fuzz_target!(|data: &[u8]| {
    let Ok(ring) = URingContext::new(8, None) else {
        return;
    };
    let zero = File::open("/dev/zero").unwrap();
    let null: File = OpenOptions::new().write(true).open("/dev/null").unwrap();
    let (reader, writer) = pipe();
    let mut in_flight = HashSet::new();

    let reap = |ring: &URingContext, in_flight: &mut HashSet<u64>| {
        // Every pending operation can complete once the pipe has data.
        poke(&writer);
        for (user_data, _) in ring.wait().expect("wait") {
            assert!(
                in_flight.remove(&user_data),
                "completion for {user_data} not in flight"
            );
        }
        drain(&reader);
    };

    for pair in data.chunks(2) {
        let op = pair[0] % 9;
        let user_data = u64::from(pair.get(1).copied().unwrap_or(0)) % USER_DATA_SPACE;
        let target = (user_data + 1) % USER_DATA_SPACE;
        let added = match op {
            0 => ring.add_nop(user_data),
            // SAFETY: `buffer` hands out the slot of this user_data, which
            // no other operation in flight uses (see `buffer`).
            1 => unsafe {
                ring.add_readv(
                    Box::pin([buffer(user_data)]),
                    zero.as_raw_fd(),
                    Some(0),
                    user_data,
                )
            },
            // SAFETY: as above.
            2 => unsafe {
                ring.add_writev(
                    Box::pin([buffer(user_data)]),
                    null.as_raw_fd(),
                    None,
                    user_data,
                )
            },
            3 => ring.add_poll_fd(reader.as_raw_fd(), EventType::Read, user_data),
            4 => ring.remove_poll_fd(target, user_data),
            5 => ring.async_cancel(target, user_data),
            6 => ring.add_fsync(null.as_raw_fd(), user_data),
            7 => {
                ring.submit().expect("submit");
                continue;
            }
            _ => {
                reap(&ring, &mut in_flight);
                continue;
            }
        };
        match added {
            Ok(()) => assert!(
                in_flight.insert(user_data),
                "duplicate {user_data} accepted"
            ),
            Err(Error::DuplicateUserData(ud)) => assert!(in_flight.contains(&ud)),
            Err(Error::NoSpace) => ring.submit().expect("submit"),
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert_eq!(ring.in_flight(), in_flight.len());
    }
    // Every operation here can be cancelled, so closing must drain them all.
    ring.close(std::time::Duration::from_secs(5))
        .expect("close left operations in the kernel");
});
