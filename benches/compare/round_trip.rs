//! One round-trip timing through the crosvm-shaped API that the code before
//! Core v2 and after it share, so the same file builds against both:
//!
//! `round_trip KIND BATCH ROUNDS` (KIND `nop` or `readv`) queues BATCH
//! operations with `add_nop`, or `add_readv` of 4 KiB at random block
//! offsets of a 64 MiB tmpfs file, waits until all are back, ROUNDS times,
//! and prints nanoseconds per operation.
//!
//! `compare_commits.sh` copies it into each commit's `examples/` and runs
//! the two builds alternately, so it may use only what both commits' root
//! packages offer (ringfence and tempfile).
use std::os::fd::AsRawFd;
use std::time::Instant;

use ringfence::{IoBufMut, URingContext};

const BLOCK: usize = 4096;
const FILE_LEN: u64 = 64 << 20;
const RING_ENTRIES: usize = 128;

fn main() {
    let usage = "usage: round_trip nop|readv BATCH ROUNDS";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, batch, rounds] = args.as_slice() else {
        panic!("{usage}");
    };
    let readv = match kind.as_str() {
        "nop" => false,
        "readv" => true,
        _ => panic!("{usage}"),
    };
    let batch: usize = batch.parse().expect(usage);
    let rounds: usize = rounds.parse().expect(usage);
    assert!(batch <= RING_ENTRIES, "BATCH is at most {RING_ENTRIES}");

    let ring = URingContext::new(RING_ENTRIES, None).unwrap();
    let file = tempfile::tempfile_in("/dev/shm").unwrap();
    file.set_len(FILE_LEN).unwrap();
    // Leaked, so the kernel may write it at any time: read `i` of every
    // round goes to block `i`, and a round ends only when all are back.
    let pool: &'static mut [u8] = vec![0u8; BLOCK * batch].leak();
    let pool = pool.as_mut_ptr();
    let mut offset = 0x9e37_79b9_7f4a_7c15u64;

    let start = Instant::now();
    for round in 0..rounds {
        for i in 0..batch {
            let user_data = (round * batch + i) as u64;
            if !readv {
                ring.add_nop(user_data).unwrap();
                continue;
            }
            // xorshift64 by hand, not fastrand: this file must also build
            // against commits that lack fastrand.
            offset ^= offset << 13;
            offset ^= offset >> 7;
            offset ^= offset << 17;
            let at = offset % (FILE_LEN / BLOCK as u64) * BLOCK as u64;
            // SAFETY: block `i` of the leaked pool is in bounds (i < batch)
            // and lives for the rest of the process; nothing but this read
            // touches it until its completion is reaped below.
            let iovec = unsafe { IoBufMut::from_raw_parts(pool.add(i * BLOCK), BLOCK) };
            // SAFETY: as above, for the one iovec this read writes.
            unsafe { ring.add_readv(Box::pin([iovec]), file.as_raw_fd(), Some(at), user_data) }
                .unwrap();
        }
        let mut reaped = 0;
        while reaped < batch {
            for (_, result) in ring.wait().unwrap() {
                result.unwrap();
                reaped += 1;
            }
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / (rounds * batch) as f64;
    println!("{ns:.1}");
}
