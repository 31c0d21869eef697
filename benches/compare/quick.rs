//! A quick side-by-side of the nop round trip, for a reviewer with a minute:
//! ringfence against the `io-uring` crate 0.7, interleaved in one process.
//!
//! `quick [ROUNDS]` (ROUNDS defaults to 11). At batch 1 and batch 32, each
//! round times a fixed number of nops with each library, the order
//! alternating from round to round, and the program prints per batch size
//! the median ns per nop of each library and the median of the per-round
//! ratios ringfence / io-uring with their range, as a markdown table. One
//! nop's time (ns/op) is its share of a round trip: queue `batch` nops,
//! submit, wait until all `batch` completions are back, each checked to be
//! a success with result 0.
//!
//! - ringfence, crosvm-style: `add_nop(user_data)` per nop, then
//!   `wait()` in a loop until the batch is back.
//! - `io-uring` crate: `push` each nop, `submit_and_wait(batch)`, drain the
//!   completion queue until the batch is back.
//!
//! Both rings have 128 entries. A round takes about [`ROUND_NS`] per
//! library (the count of nops is fixed per batch size from a warm-up), so
//! the default run takes 5 to 10 s. The full criterion suite
//! (`cargo bench -p ringfence-benches`) measures more points and more
//! carefully; this is for a first look, and only ratios within one run mean
//! anything on a shared machine.
//!
//! `quick ringfence|io-uring BATCH ROUNDS` runs one library's round trip
//! ROUNDS times and prints nothing: under `valgrind --tool=callgrind`, the
//! difference between two round counts is the user-space instructions of
//! the extra round trips, set-up cancelled out.

use std::error::Error;
use std::time::{Duration, Instant};

use io_uring::{opcode, IoUring};
use ringfence::URingContext;

/// Entries of both rings.
const RING_ENTRIES: u32 = 128;

/// The batch sizes measured: one nop per submission, and a batch of 32.
const BATCHES: [usize; 2] = [1, 32];

/// Rounds per batch size unless the command line says otherwise.
const DEFAULT_ROUNDS: usize = 11;

/// The time one library's share of a round should take, in ns (150 ms).
const ROUND_NS: f64 = 150e6;

/// How long each library runs before a batch size's rounds, to warm up and
/// to measure how many nops fill [`ROUND_NS`].
const WARM_UP: Duration = Duration::from_millis(100);

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The two contenders.
#[derive(Clone, Copy)]
enum Library {
    Ringfence,
    IoUring,
}

/// Both rings, each created once and reused by every round.
struct Rings {
    ringfence: URingContext,
    io_uring: IoUring,
}

impl Rings {
    fn new() -> Result<Rings> {
        Ok(Rings {
            ringfence: URingContext::new(RING_ENTRIES as usize, None)?,
            io_uring: IoUring::new(RING_ENTRIES)?,
        })
    }

    /// Runs `ops / batch` round trips of `batch` nops with `library` and
    /// returns the wall time per nop, in ns.
    fn time(&mut self, library: Library, batch: usize, ops: usize) -> Result<f64> {
        let rounds = ops / batch;
        let start = Instant::now();
        for _ in 0..rounds {
            match library {
                Library::Ringfence => ringfence_round(&self.ringfence, batch)?,
                Library::IoUring => io_uring_round(&mut self.io_uring, batch)?,
            }
        }
        Ok(start.elapsed().as_nanos() as f64 / (rounds * batch) as f64)
    }

    /// Runs `library` for [`WARM_UP`] and returns its ns per nop.
    fn warm_up(&mut self, library: Library, batch: usize) -> Result<f64> {
        let start = Instant::now();
        let mut ops = 0;
        while start.elapsed() < WARM_UP {
            self.time(library, batch, batch)?;
            ops += batch;
        }
        Ok(start.elapsed().as_nanos() as f64 / ops as f64)
    }
}

/// One round trip with ringfence's crosvm-shaped API: `add_nop` per nop,
/// then `wait` until all `batch` completions are back, each `Ok(0)`.
fn ringfence_round(ring: &URingContext, batch: usize) -> Result<()> {
    for user_data in 0..batch as u64 {
        ring.add_nop(user_data)?;
    }
    let mut reaped = 0;
    while reaped < batch {
        for (user_data, result) in ring.wait()? {
            match result {
                Ok(0) => reaped += 1,
                other => return Err(format!("ringfence nop {user_data}: {other:?}").into()),
            }
        }
    }
    Ok(())
}

/// One round trip with the `io-uring` crate: push `batch` nops,
/// `submit_and_wait(batch)`, drain the completion queue until all `batch`
/// are back, each with result 0.
fn io_uring_round(ring: &mut IoUring, batch: usize) -> Result<()> {
    {
        let mut sq = ring.submission();
        for user_data in 0..batch as u64 {
            let nop = opcode::Nop::new().build().user_data(user_data);
            // SAFETY: a nop references no memory, so there is nothing that
            // must stay valid until its completion.
            unsafe { sq.push(&nop) }?;
        }
    }
    ring.submit_and_wait(batch)?;
    let mut reaped = 0;
    while reaped < batch {
        for cqe in ring.completion() {
            if cqe.result() != 0 {
                let user_data = cqe.user_data();
                return Err(format!("io-uring nop {user_data}: result {}", cqe.result()).into());
            }
            reaped += 1;
        }
    }
    Ok(())
}

/// The median of `values`, which must not be empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// What the command line asks for.
enum Command {
    /// Compare both libraries over this many rounds.
    Compare(usize),
    /// Run one library's round trip `rounds` times at `batch`, untimed:
    /// for `valgrind --tool=callgrind`, which counts its instructions.
    Only {
        library: Library,
        batch: usize,
        rounds: usize,
    },
}

fn command_from_args() -> Result<Command> {
    let usage = "usage: quick [ROUNDS]  (ROUNDS >= 1, default 11)\n       \
                 quick ringfence|io-uring BATCH ROUNDS  (one library, untimed)";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |arg: &str| match arg.parse() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("not a count: {arg:?}\n{usage}")),
    };
    match args.as_slice() {
        [] => Ok(Command::Compare(DEFAULT_ROUNDS)),
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{usage}");
            std::process::exit(0);
        }
        [rounds] => Ok(Command::Compare(count(rounds)?)),
        [library, batch, rounds] => {
            let library = match library.as_str() {
                "ringfence" => Library::Ringfence,
                "io-uring" => Library::IoUring,
                _ => return Err(format!("not a library: {library:?}\n{usage}").into()),
            };
            let (batch, rounds) = (count(batch)?, count(rounds)?);
            if batch > RING_ENTRIES as usize {
                return Err(format!("BATCH is at most {RING_ENTRIES}").into());
            }
            Ok(Command::Only {
                library,
                batch,
                rounds,
            })
        }
        _ => Err(usage.into()),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("quick: {e}");
        std::process::exit(1);
    }
}

/// Measures both batch sizes and prints the table.
fn run() -> Result<()> {
    let mut rings = Rings::new()?;
    let rounds = match command_from_args()? {
        Command::Compare(rounds) => rounds,
        Command::Only {
            library,
            batch,
            rounds,
        } => {
            rings.time(library, batch, batch * rounds)?;
            return Ok(());
        }
    };
    let mut table = Vec::new();
    let mut ops_per_round = Vec::new();
    for batch in BATCHES {
        // Both warm up; the slower one sets the count, so neither's
        // share of a round is longer than ROUND_NS by much.
        let slower = rings
            .warm_up(Library::Ringfence, batch)?
            .max(rings.warm_up(Library::IoUring, batch)?);
        let ops = ((ROUND_NS / slower) as usize / batch).max(1) * batch;
        ops_per_round.push(format!("{ops} at batch {batch}"));
        let (mut ringfence, mut io_uring, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (rf, iou) = if round % 2 == 0 {
                let rf = rings.time(Library::Ringfence, batch, ops)?;
                (rf, rings.time(Library::IoUring, batch, ops)?)
            } else {
                let iou = rings.time(Library::IoUring, batch, ops)?;
                (rings.time(Library::Ringfence, batch, ops)?, iou)
            };
            ringfence.push(rf);
            io_uring.push(iou);
            ratios.push(rf / iou);
        }
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        table.push(format!(
            "| {batch} | {:.0} | {:.0} | {:.2} [{lo:.2}–{hi:.2}] |",
            median(&ringfence),
            median(&io_uring),
            median(&ratios),
        ));
    }
    println!(
        "nop round trip, rings of {RING_ENTRIES} entries, {rounds} alternating rounds per batch \
         size; nops per library per round: {}.\nns per nop: median over the rounds; ratio: \
         median of the per-round ratios [min–max].\n",
        ops_per_round.join(", "),
    );
    println!(
        "| batch | ringfence `add_nop`, ns/op | `io-uring` 0.7, ns/op | ringfence / io-uring |"
    );
    println!("|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
    Ok(())
}
