//! What `async_read` and `async_echo` share: contenders timed in rounds
//! whose order rotates, printed as markdown tables of medians and of
//! per-round ratios to a reference contender, and an executor loop for a
//! manually driven ring.
//!
//! The interleaving is `compare/quick.rs`'s (`quick fixed`): on a shared
//! machine only ratios of contenders measured side by side in one run mean
//! anything, so every contender runs once in each round, for a share sized
//! to about [`SHARE_NS`] at its own speed, and a round's ratios compare
//! shares that ran within a second of each other.
#![allow(dead_code)]

use std::error::Error;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::ArcWake;
use ringfence_async::ManualDriver;

pub type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// About how long one contender's share of a round takes, in ns (100 ms).
pub const SHARE_NS: f64 = 100e6;

/// How long each contender runs before the rounds at a point, to warm up
/// and to measure how many operations fill [`SHARE_NS`].
pub const WARM_UP: Duration = Duration::from_millis(100);

/// Contenders measured against each other at a few points (batch sizes,
/// message sizes).
pub trait Contest {
    /// The contenders' names, as the table's columns.
    fn names(&self) -> Vec<String>;

    /// Whether contender `which` runs at `point` (a contender with no
    /// form at a point gets "–").
    fn runs(&self, _which: usize, _point: usize) -> bool {
        true
    }

    /// One unit of work of contender `which` at `point`: returns how many
    /// operations it did (the table is per operation).
    fn once(&mut self, which: usize, point: usize) -> Result<usize>;
}

/// CPU time of the whole process (every thread: the driver thread,
/// tokio's blocking pool and the kernel's io_uring workers included), ns.
pub fn process_cpu_ns() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

/// One contender's share of one round, per operation, in ns.
#[derive(Clone, Copy)]
pub struct Share {
    pub wall: f64,
    pub cpu: f64,
}

/// Runs units of `which` until at least `ops` operations are done.
fn time_share(contest: &mut dyn Contest, which: usize, point: usize, ops: usize) -> Result<Share> {
    let (cpu, start) = (process_cpu_ns(), Instant::now());
    let mut done = 0;
    while done < ops {
        done += contest.once(which, point)?;
    }
    let (wall, cpu) = (start.elapsed().as_nanos() as f64, process_cpu_ns() - cpu);
    Ok(Share {
        wall: wall / done as f64,
        cpu: cpu / done as f64,
    })
}

/// Warms up each contender that runs at `point` and sizes its share, then
/// runs `rounds` rounds: round `r` starts with contender `r % k` and goes
/// up, or down in every other rotation. Returns each contender's shares
/// (empty for one that does not run at `point`).
pub fn interleave(
    contest: &mut dyn Contest,
    point: usize,
    rounds: usize,
) -> Result<Vec<Vec<Share>>> {
    let k = contest.names().len();
    let mut ops = vec![0; k];
    for (which, ops) in ops.iter_mut().enumerate() {
        if !contest.runs(which, point) {
            continue;
        }
        let start = Instant::now();
        let mut done = 0;
        while start.elapsed() < WARM_UP {
            done += contest.once(which, point)?;
        }
        let ns = start.elapsed().as_nanos() as f64 / done as f64;
        *ops = ((SHARE_NS / ns) as usize).max(1);
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
            if contest.runs(which, point) {
                shares[which].push(time_share(contest, which, point, ops[which])?);
            }
        }
    }
    Ok(shares)
}

/// The median of `values`, which must not be empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// A markdown table.
pub fn print_table(header: &[String], rows: &[Vec<String>]) {
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
    println!();
}

/// Runs `contest` at each of `points` (labelled in the tables' first
/// column by `label`) over `rounds` rounds, and prints the median wall and
/// CPU ns per operation of every contender, and the median of the per-round
/// wall-time ratios of each contender to contender `reference`, with their
/// range.
pub fn run_contest(
    contest: &mut dyn Contest,
    points: &[usize],
    label: &str,
    rounds: usize,
    reference: usize,
) -> Result<()> {
    let names = contest.names();
    let (mut wall_rows, mut cpu_rows, mut ratio_rows) = (Vec::new(), Vec::new(), Vec::new());
    for &point in points {
        let shares = interleave(contest, point, rounds)?;
        let column = |f: fn(&Share) -> f64| -> Vec<String> {
            std::iter::once(point.to_string())
                .chain(shares.iter().map(|s| {
                    if s.is_empty() {
                        return "–".to_string();
                    }
                    let values: Vec<f64> = s.iter().map(f).collect();
                    format!("{:.0}", median(&values))
                }))
                .collect()
        };
        wall_rows.push(column(|s| s.wall));
        cpu_rows.push(column(|s| s.cpu));
        ratio_rows.push(
            std::iter::once(point.to_string())
                .chain(shares.iter().map(|s| {
                    if s.is_empty() || shares[reference].is_empty() {
                        return "–".to_string();
                    }
                    let ratios: Vec<f64> = s
                        .iter()
                        .zip(&shares[reference])
                        .map(|(a, b)| a.wall / b.wall)
                        .collect();
                    let (lo, hi) = ratios
                        .iter()
                        .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
                    format!("{:.2} [{lo:.2}–{hi:.2}]", median(&ratios))
                }))
                .collect(),
        );
    }
    let header = |unit: &str| -> Vec<String> {
        std::iter::once(label.to_string())
            .chain(names.iter().map(|n| format!("{n}, {unit}")))
            .collect()
    };
    println!(
        "{rounds} rotating rounds per {label}, each contender's share about {} ms.\n\
         Medians over the rounds; ratios: median of the per-round ratios of wall time to \
         {} [min–max].\n",
        SHARE_NS / 1e6,
        names[reference],
    );
    println!("Wall time per operation:\n");
    print_table(&header("ns/op"), &wall_rows);
    println!("CPU time of the whole process per operation (every thread):\n");
    print_table(&header("CPU ns/op"), &cpu_rows);
    println!("Wall time / {}:\n", names[reference]);
    let header: Vec<String> = std::iter::once(label.to_string())
        .chain(names.iter().cloned())
        .collect();
    print_table(&header, &ratio_rows);
    Ok(())
}

/// Rounds from the command line (`cargo bench --bench NAME -- ROUNDS`),
/// ignoring the `--bench` flag cargo passes to a harness-less bench.
pub fn rounds_from_args(default: usize) -> Result<usize> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    match args.as_slice() {
        [] => Ok(default),
        [n] => match n.parse() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!("not a count of rounds: {n:?}").into()),
        },
        _ => Err("usage: [ROUNDS]".into()),
    }
}

/// The longest one turn of a manual driver blocks.
pub const TURN_LIMIT: Duration = Duration::from_secs(1);

/// A waker that records that it was woken (`futures::task::waker` of an
/// `Arc<Flag>`); starts set, so that the first poll happens.
pub struct Flag(pub AtomicBool);

impl Flag {
    pub fn new() -> Flag {
        Flag(AtomicBool::new(true))
    }
}

impl ArcWake for Flag {
    fn wake_by_ref(flag: &Arc<Self>) {
        flag.0.store(true, Ordering::Release);
    }
}

/// Runs `future` to completion on this thread, driving the ring with
/// `manual.turn` in between polls: no thread besides this one (and the
/// kernel's) takes part. Polls whenever the future was woken; otherwise
/// turns the driver, which blocks until a completion arrives (or for
/// [`TURN_LIMIT`], so that a lost wake-up shows as slowness, not a hang).
pub fn run_manual<F: Future>(manual: &ManualDriver, future: F) -> Result<F::Output> {
    let flag = Arc::new(Flag::new());
    let waker = futures::task::waker(Arc::clone(&flag));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if flag.0.swap(false, Ordering::Acquire) {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return Ok(output);
            }
            continue;
        }
        manual.turn(Some(TURN_LIMIT))?;
    }
}
