//! Random operation sequences with random faults against the simulated
//! kernel (`ringfence::sim`), checking the context against a model: an add
//! succeeds exactly when its user_data is free, every operation completes
//! exactly once with a result its kind allows, reads return the file's
//! bytes, `in_flight()` always agrees, and closing drains everything.
//!
//! Faults: EINTR before and during the wait, EAGAIN, EBUSY, short submits,
//! completions held back and released in random order, CQ overflow (small
//! rings, reaping only when the input says). Dropped overflow entries are
//! left to the unit tests: they strand an operation by design, and the
//! leak that follows would be reported by LeakSanitizer.
#![no_main]

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ringfence::sim::{Fault, SimConfig, SimKernel};
use ringfence::{Error, EventType, IoBufMut, URingContext};

/// Distinct user_data values: few, so that inputs hit duplicates often.
const USER_DATA_SPACE: u64 = 16;
const BUF_LEN: usize = 32;
/// The read-only file: byte `i` is `i as u8`.
const SOURCE_LEN: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Nop,
    Read { offset: usize },
    Write,
    Fsync,
    Fallocate,
    Poll,
    Remove,
    Cancel,
}

struct Harness {
    kernel: SimKernel,
    ring: URingContext,
    source: RawFd,
    sink: RawFd,
    pollable: RawFd,
    in_flight: HashMap<u64, Kind>,
}

impl Harness {
    fn check_completion(&mut self, user_data: u64, result: std::io::Result<u32>, bufs: &[Vec<u8>]) {
        let kind = self
            .in_flight
            .remove(&user_data)
            .unwrap_or_else(|| panic!("completion for {user_data}, which is not in flight"));
        let errno = result.as_ref().err().and_then(|e| e.raw_os_error());
        let canceled = errno == Some(libc::ECANCELED);
        match kind {
            Kind::Nop | Kind::Fsync | Kind::Fallocate => {
                assert!(
                    result.as_ref().is_ok_and(|&n| n == 0) || canceled,
                    "{kind:?}: {result:?}"
                )
            }
            Kind::Read { offset } => match result {
                Ok(n) => {
                    let n = n as usize;
                    assert_eq!(n, BUF_LEN.min(SOURCE_LEN.saturating_sub(offset)));
                    let buf = &bufs[user_data as usize];
                    for (i, &byte) in buf[..n].iter().enumerate() {
                        assert_eq!(byte, (offset + i) as u8, "read at {offset} byte {i}");
                    }
                }
                Err(_) => assert!(canceled, "read: {result:?}"),
            },
            Kind::Write => {
                assert!(result.as_ref().is_ok_and(|&n| n as usize == BUF_LEN) || canceled)
            }
            Kind::Poll => assert!(result.is_ok() || canceled, "poll: {result:?}"),
            Kind::Remove | Kind::Cancel => assert!(
                matches!(result, Ok(0)) || errno == Some(libc::ENOENT),
                "{kind:?}: {result:?}"
            ),
        }
    }

    /// Reaps what `wait` returns, with the pollable ready so that every
    /// poll can complete and nothing waits for what cannot come.
    fn reap(&mut self, bufs: &[Vec<u8>]) {
        self.kernel.set_ready(self.pollable, libc::POLLIN as u32);
        let completions: Vec<_> = match self.ring.wait() {
            Ok(completions) => completions.collect(),
            Err(Error::KernelBusy(_)) => Vec::new(),
            Err(e) => panic!("wait: {e}"),
        };
        for (user_data, result) in completions {
            self.check_completion(user_data, result, bufs);
        }
        self.kernel.set_ready(self.pollable, 0);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, ops)) = data.split_first() else {
        return;
    };
    let kernel = SimKernel::with_config(SimConfig {
        nodrop: config & 1 == 0,
        defer_completions: config & 2 != 0,
        seed: u64::from(config),
    });
    let source = kernel.create_file((0..SOURCE_LEN).map(|i| i as u8).collect());
    let sink = kernel.create_file(Vec::new());
    let pollable = kernel.create_pollable();
    // One buffer per user_data: only the operation holding that user_data
    // (at most one in flight) uses it. Declared before the ring, so it
    // outlives it.
    let mut bufs = vec![vec![0u8; BUF_LEN]; USER_DATA_SPACE as usize];
    let entries = 1 << (config >> 2 & 3); // 1 to 8: small rings overflow.
    let ring = kernel.new_context(entries, None).expect("simulated setup");
    let mut h = Harness {
        kernel,
        ring,
        source,
        sink,
        pollable,
        in_flight: HashMap::new(),
    };

    for pair in ops.chunks(2) {
        let op = pair[0] % 13;
        let arg = pair.get(1).copied().unwrap_or(0);
        let user_data = u64::from(arg) % USER_DATA_SPACE;
        let target = (user_data + 1) % USER_DATA_SPACE;
        if !h.in_flight.contains_key(&user_data) {
            // A sentinel, so a read whose data never lands cannot pass for
            // one that did (no operation uses this buffer now).
            bufs[user_data as usize].fill(0xee);
        }
        let buf = bufs[user_data as usize].as_mut_ptr();
        // SAFETY: the buffer of this user_data is used by no other
        // operation in flight (the context refuses a duplicate user_data),
        // and outlives the ring.
        let iov = || unsafe { Box::pin([IoBufMut::from_raw_parts(buf, BUF_LEN)]) };
        let offset = usize::from(arg) * 7 % (SOURCE_LEN + BUF_LEN);
        let (kind, added) = match op {
            0 => (Kind::Nop, h.ring.add_nop(user_data)),
            // SAFETY: see `iov`.
            1 => (Kind::Read { offset }, unsafe {
                h.ring
                    .add_readv(iov(), h.source, Some(offset as u64), user_data)
            }),
            // SAFETY: see `iov`.
            2 => (Kind::Write, unsafe {
                h.ring.add_writev(iov(), h.sink, None, user_data)
            }),
            3 => (
                Kind::Poll,
                h.ring.add_poll_fd(h.pollable, EventType::Read, user_data),
            ),
            4 => (Kind::Remove, h.ring.remove_poll_fd(target, user_data)),
            5 => (Kind::Cancel, h.ring.async_cancel(target, user_data)),
            6 => (Kind::Fsync, h.ring.add_fsync(h.sink, user_data)),
            7 => (
                Kind::Fallocate,
                h.ring.add_fallocate(h.sink, 0, 64, 0, user_data),
            ),
            8 => {
                match h.ring.submit() {
                    Ok(()) | Err(Error::KernelBusy(_)) => {}
                    Err(e) => panic!("submit: {e}"),
                }
                continue;
            }
            9 => {
                h.reap(&bufs);
                continue;
            }
            10 => {
                let fault = match arg % 5 {
                    0 => Fault::Interrupted,
                    1 => Fault::InterruptedWait,
                    2 => Fault::Again,
                    3 => Fault::Busy,
                    _ => Fault::ShortSubmit(1 + u32::from(arg) / 5 % 4),
                };
                h.kernel.inject(fault);
                continue;
            }
            11 => {
                h.kernel
                    .set_ready(h.pollable, u32::from(arg & 1) * libc::POLLIN as u32);
                continue;
            }
            _ => {
                h.kernel.complete_deferred(usize::from(arg % 4));
                continue;
            }
        };
        match added {
            Ok(()) => assert!(
                h.in_flight.insert(user_data, kind).is_none(),
                "duplicate {user_data} accepted"
            ),
            Err(Error::DuplicateUserData(ud)) => assert!(h.in_flight.contains_key(&ud)),
            Err(Error::NoSpace) => match h.ring.submit() {
                Ok(()) | Err(Error::KernelBusy(_)) => {}
                Err(e) => panic!("submit: {e}"),
            },
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert_eq!(h.ring.in_flight(), h.in_flight.len());
    }
    // Every operation here can be cancelled or completes by itself, so
    // closing must drain them all, and the kernel must hold nothing.
    let Harness { kernel, ring, .. } = h;
    // Faults left over would each cost close a 100 ms round: it handles
    // them, but the fuzzer would crawl.
    kernel.clear_faults();
    ring.close(Duration::from_secs(5))
        .expect("close left operations in the kernel");
    assert_eq!(kernel.pending(), 0);
    drop(bufs);
});
