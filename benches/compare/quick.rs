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
//!
//! `quick fixed [ROUNDS]` and `quick sqpoll [--pinned] [ROUNDS]` (ROUNDS
//! defaults to 12) compare more contenders the same way, in rounds that
//! rotate their order, each contender's share sized to about 150 ms at its
//! own speed, at batch 1 and 32, and print the median wall time and process
//! CPU time per operation of each, and medians of per-round ratios (the
//! README's "What a VMM needs" section quotes them):
//!
//! - `fixed`: 4 KiB reads at random offsets of a 64 MiB tmpfs file, readv
//!   against read_fixed on registered buffers and a registered file,
//!   ringfence against the `io-uring` crate (`common::FixedReads`, which
//!   `benches/fixed.rs` also runs);
//! - `sqpoll`: the nop round trip (`OpBatch`, `submit`, wait for all) on an
//!   SQPOLL ring against a plain one, ringfence against the `io-uring`
//!   crate (`common::NopRings`, which `benches/sqpoll.rs` also runs), and
//!   on the SQPOLL ring also reaping by spinning on the completion queue
//!   instead of blocking in the kernel (six contenders). After each SQPOLL
//!   share it sleeps 150 ms, so that the ring's kernel thread, which polls
//!   for 100 ms after its last work, is asleep before the next contender
//!   starts; it prints the CPU time burnt during those pauses.
//!   `quick sqpoll --pinned` pins this thread to CPU 0 and both SQ threads
//!   to CPU 1 (`sqpoll_cpu`), so that neither can take the other's CPU.

use std::error::Error;
use std::time::{Duration, Instant};

use io_uring::{opcode, IoUring};
use ringfence::URingContext;

#[path = "../common/mod.rs"]
mod common;

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
    /// `quick fixed`: readv against read_fixed, over this many rounds.
    Fixed(usize),
    /// `quick sqpoll [--pinned]`: SQPOLL against a plain ring, over this
    /// many rounds; pinned: this thread on CPU 0, the SQ threads on CPU 1.
    Sqpoll { rounds: usize, pinned: bool },
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
                 quick fixed [ROUNDS]  (ROUNDS >= 1, default 12)\n       \
                 quick sqpoll [--pinned] [ROUNDS]  (ROUNDS >= 1, default 12)\n       \
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
        [mode, rest @ ..] if mode == "sqpoll" => {
            let (pinned, rest) = match rest {
                [flag, rest @ ..] if flag == "--pinned" => (true, rest),
                rest => (false, rest),
            };
            let rounds = match rest {
                [] => DEFAULT_CONTEST_ROUNDS,
                [rounds] => count(rounds)?,
                _ => return Err(usage.into()),
            };
            Ok(Command::Sqpoll { rounds, pinned })
        }
        [mode] if mode == "fixed" => Ok(Command::Fixed(DEFAULT_CONTEST_ROUNDS)),
        [rounds] => Ok(Command::Compare(count(rounds)?)),
        [mode, rounds] if mode == "fixed" => Ok(Command::Fixed(count(rounds)?)),
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

/// Measures both batch sizes and prints the table (or runs another mode).
fn run() -> Result<()> {
    let rounds = match command_from_args()? {
        Command::Compare(rounds) => rounds,
        Command::Fixed(rounds) => return run_fixed(rounds),
        Command::Sqpoll { rounds, pinned } => return run_sqpoll(rounds, pinned),
        Command::Only {
            library,
            batch,
            rounds,
        } => {
            Rings::new()?.time(library, batch, batch * rounds)?;
            return Ok(());
        }
    };
    let mut rings = Rings::new()?;
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

// ---------------------------------------------------------------------
// `quick fixed` and `quick sqpoll`: more than two contenders, interleaved.

/// Rounds per batch size of `quick fixed` and `quick sqpoll` unless the
/// command line says otherwise: three full rotations of `fixed`'s four
/// contenders, two of `sqpoll`'s six.
const DEFAULT_CONTEST_ROUNDS: usize = 12;

/// Contenders measured against each other in rotating rounds: in each
/// round every contender runs once, for the same number of operations.
trait Contest {
    /// The contenders' names, as the table's columns.
    fn names(&self) -> &'static [&'static str];

    /// One round trip of `batch` operations with contender `which`.
    fn round_trip(&mut self, which: usize, batch: usize) -> Result<()>;

    /// Called after each share of contender `which`, before the next
    /// contender starts.
    fn settle(&mut self, _which: usize) {}
}

/// CPU time of the whole process (every thread, the kernel's io_uring
/// threads `iou-sqp-*` and `iou-wrk-*` included: they belong to its thread
/// group), in ns.
fn process_cpu_ns() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

/// One contender's share of one round, per operation.
#[derive(Clone, Copy)]
struct Share {
    /// Wall time, ns.
    wall: f64,
    /// The process's CPU time, ns.
    cpu: f64,
}

/// Runs `ops / batch` round trips of contender `which` and returns its
/// share per operation.
fn time_share(contest: &mut dyn Contest, which: usize, batch: usize, ops: usize) -> Result<Share> {
    let rounds = (ops / batch).max(1);
    let (cpu, start) = (process_cpu_ns(), Instant::now());
    for _ in 0..rounds {
        contest.round_trip(which, batch)?;
    }
    let wall = start.elapsed().as_nanos() as f64;
    let cpu = process_cpu_ns() - cpu;
    let n = (rounds * batch) as f64;
    Ok(Share {
        wall: wall / n,
        cpu: cpu / n,
    })
}

/// Warms up every contender for [`WARM_UP`] and sizes its share of a
/// round to about [`ROUND_NS`] at the speed it showed (contenders here
/// differ by orders of magnitude, so one count for all would leave the
/// fast ones a share too short to time), then runs `rounds` rounds. Round
/// `r` starts with contender `r % k` (of `k`) and goes up, or down in every
/// other rotation, so each contender runs at each position and after each
/// of its neighbours. Returns, per contender, the operations of its share
/// and its share of each round.
fn interleave(
    contest: &mut dyn Contest,
    batch: usize,
    rounds: usize,
) -> Result<(Vec<usize>, Vec<Vec<Share>>)> {
    let k = contest.names().len();
    let mut ops = Vec::with_capacity(k);
    for which in 0..k {
        let start = Instant::now();
        let mut done = 0;
        while start.elapsed() < WARM_UP {
            contest.round_trip(which, batch)?;
            done += batch;
        }
        let ns = start.elapsed().as_nanos() as f64 / done as f64;
        ops.push(((ROUND_NS / ns) as usize / batch).max(1) * batch);
        contest.settle(which);
    }
    let mut shares = vec![Vec::with_capacity(rounds); k];
    for round in 0..rounds {
        let up = (round / k) % 2 == 0;
        for j in 0..k {
            let which = if up {
                (round + j) % k
            } else {
                (round + k - j) % k
            };
            shares[which].push(time_share(contest, which, batch, ops[which])?);
            contest.settle(which);
        }
    }
    Ok((ops, shares))
}

/// The median of the per-round ratios `a / b` of wall time, with their
/// range, as a table cell.
fn ratio_cell(shares: &[Vec<Share>], a: usize, b: usize) -> String {
    let ratios: Vec<f64> = shares[a]
        .iter()
        .zip(&shares[b])
        .map(|(a, b)| a.wall / b.wall)
        .collect();
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    format!("{:.2} [{lo:.2}–{hi:.2}]", median(&ratios))
}

/// A markdown table: a header row and one row per batch size.
fn print_table(header: &[String], rows: &[Vec<String>]) {
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
    println!();
}

/// Runs `contest` at each of [`BATCHES`] and prints the median wall and
/// CPU ns per operation of each contender and the median per-round ratios
/// `ratios` (label, numerator, denominator) with their range.
fn run_contest(
    contest: &mut dyn Contest,
    what: &str,
    rounds: usize,
    ratios: &[(&str, usize, usize)],
) -> Result<()> {
    let names = contest.names();
    let (mut wall_rows, mut cpu_rows, mut ratio_rows, mut sizes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for batch in BATCHES {
        let (ops, shares) = interleave(contest, batch, rounds)?;
        let ops: Vec<String> = ops.iter().map(usize::to_string).collect();
        sizes.push(format!("batch {batch}: {}", ops.join(", ")));
        let column = |f: fn(&Share) -> f64| -> Vec<String> {
            std::iter::once(batch.to_string())
                .chain(shares.iter().map(|s| {
                    let values: Vec<f64> = s.iter().map(f).collect();
                    format!("{:.0}", median(&values))
                }))
                .collect()
        };
        wall_rows.push(column(|s| s.wall));
        cpu_rows.push(column(|s| s.cpu));
        ratio_rows.push(
            std::iter::once(batch.to_string())
                .chain(ratios.iter().map(|&(_, a, b)| ratio_cell(&shares, a, b)))
                .collect(),
        );
    }
    println!(
        "{what}, {rounds} rotating rounds per batch size; operations per contender per round \
         (in table order; each share sized to about {} ms): {}.\nMedians over the rounds; \
         ratios: median of the per-round ratios of wall time [min–max].\n",
        ROUND_NS / 1e6,
        sizes.join("; "),
    );
    let header = |unit: &str| -> Vec<String> {
        std::iter::once("batch".to_string())
            .chain(names.iter().map(|n| format!("{n}, {unit}")))
            .collect()
    };
    println!("Wall time per operation:\n");
    print_table(&header("ns/op"), &wall_rows);
    println!("CPU time of the whole process per operation (every thread, the kernel's io_uring threads included):\n");
    print_table(&header("CPU ns/op"), &cpu_rows);
    let header: Vec<String> = std::iter::once("batch".to_string())
        .chain(ratios.iter().map(|(label, _, _)| label.to_string()))
        .collect();
    print_table(&header, &ratio_rows);
    Ok(())
}

/// `quick fixed`: see [`common::FixedReads`].
struct Fixed(common::FixedReads);

impl Contest for Fixed {
    fn names(&self) -> &'static [&'static str] {
        &[
            "ringfence `Readv`",
            "ringfence `ReadFixed`",
            "`io-uring` `Readv`",
            "`io-uring` `ReadFixed`",
        ]
    }

    fn round_trip(&mut self, which: usize, batch: usize) -> Result<()> {
        match which {
            0 => self.0.ringfence_readv(batch)?,
            1 => self.0.ringfence_read_fixed(batch)?,
            2 => self.0.io_uring_readv(batch)?,
            _ => self.0.io_uring_read_fixed(batch)?,
        }
        Ok(())
    }
}

fn run_fixed(rounds: usize) -> Result<()> {
    let mut contest = Fixed(common::FixedReads::new("quick fixed")?);
    run_contest(
        &mut contest,
        &format!(
            "4 KiB reads at random offsets of a 64 MiB tmpfs file, rings of {RING_ENTRIES} \
             entries with the file and {} buffers of 4 KiB registered",
            common::FIXED_BUFFERS
        ),
        rounds,
        &[
            ("readv: ringfence / io-uring", 0, 2),
            ("read_fixed: ringfence / io-uring", 1, 3),
            ("ringfence: read_fixed / readv", 1, 0),
            ("io-uring: read_fixed / readv", 3, 2),
        ],
    )
}

/// `quick sqpoll`: see [`common::NopRings`]. After each share of an SQPOLL
/// contender it sleeps until that ring's kernel thread has gone idle
/// (1.5 × [`common::SQPOLL_IDLE`]), so the thread's idle polling does not
/// run into the next contender's share, and records the process's CPU
/// time meanwhile: the cost of that idle polling.
struct Sqpoll {
    rings: common::NopRings,
    /// CPU time burnt while sleeping after an SQPOLL share, ns.
    idle_cpu: Vec<f64>,
}

impl Sqpoll {
    /// Whether contender `which` uses an SQPOLL ring.
    fn polls(which: usize) -> bool {
        which % 3 != 0
    }
}

impl Contest for Sqpoll {
    fn names(&self) -> &'static [&'static str] {
        &[
            "ringfence",
            "ringfence SQPOLL",
            "ringfence SQPOLL, polling",
            "`io-uring`",
            "`io-uring` SQPOLL",
            "`io-uring` SQPOLL, polling",
        ]
    }

    fn round_trip(&mut self, which: usize, batch: usize) -> Result<()> {
        let rings = &mut self.rings;
        match which {
            0 => common::ringfence_submit_round(&rings.plain, &mut rings.ops, batch)?,
            1 => common::ringfence_submit_round(&rings.sqpoll, &mut rings.ops, batch)?,
            2 => common::ringfence_polling_round(&rings.sqpoll, &mut rings.ops, batch)?,
            3 => common::io_uring_nop_round(&mut rings.io_uring, batch)?,
            4 => common::io_uring_nop_round(&mut rings.io_uring_sqpoll, batch)?,
            _ => common::io_uring_polling_round(&mut rings.io_uring_sqpoll, batch)?,
        }
        Ok(())
    }

    fn settle(&mut self, which: usize) {
        if Self::polls(which) {
            let cpu = process_cpu_ns();
            std::thread::sleep(common::SQPOLL_IDLE.mul_f64(1.5));
            self.idle_cpu.push(process_cpu_ns() - cpu);
        }
    }
}

/// `quick sqpoll --pinned`: this thread on CPU 0, the SQ threads on CPU 1.
const PINNED: (usize, u32) = (0, 1);

/// Pins the calling thread to `cpu` (`sched_setaffinity`).
fn pin_this_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and CPU_SET writes
    // only inside it (`cpu` is checked against its size).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("CPU {cpu} is past CPU_SETSIZE").into());
    }
    // SAFETY: as above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 names the
    // calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("pinning this thread to CPU {cpu}: {e}").into());
    }
    Ok(())
}

fn run_sqpoll(rounds: usize, pinned: bool) -> Result<()> {
    let sq_cpu = if pinned {
        pin_this_thread(PINNED.0)?;
        Some(PINNED.1)
    } else {
        None
    };
    let mut contest = Sqpoll {
        rings: common::NopRings::new(sq_cpu)?,
        idle_cpu: Vec::new(),
    };
    run_contest(
        &mut contest,
        &format!(
            "nop round trip (`OpBatch`, submit, wait for all), rings of {RING_ENTRIES} entries, \
             SQPOLL with {} ms idle{}",
            common::SQPOLL_IDLE.as_millis(),
            if pinned {
                format!(
                    ", this thread pinned to CPU {}, the SQ threads to CPU {}",
                    PINNED.0, PINNED.1
                )
            } else {
                String::new()
            }
        ),
        rounds,
        &[
            ("ringfence: SQPOLL / plain", 1, 0),
            ("ringfence: SQPOLL polling / plain", 2, 0),
            ("io-uring: SQPOLL / plain", 4, 3),
            ("io-uring: SQPOLL polling / plain", 5, 3),
            ("plain: ringfence / io-uring", 0, 3),
            ("SQPOLL: ringfence / io-uring", 1, 4),
            ("SQPOLL polling: ringfence / io-uring", 2, 5),
        ],
    )?;
    println!(
        "CPU time of the process while it slept for {} ms after each SQPOLL share (the SQ \
         thread polling an empty queue until its idle time ran out): median {:.1} ms over {} \
         pauses [{:.1}–{:.1}].",
        common::SQPOLL_IDLE.mul_f64(1.5).as_millis(),
        median(&contest.idle_cpu) / 1e6,
        contest.idle_cpu.len(),
        contest.idle_cpu.iter().copied().fold(f64::MAX, f64::min) / 1e6,
        contest.idle_cpu.iter().copied().fold(f64::MIN, f64::max) / 1e6,
    );
    Ok(())
}
