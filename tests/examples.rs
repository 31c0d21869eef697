//! The examples, run as a user runs them (`cargo run --example NAME`), in
//! a child process killed if it outlives [`TIMEOUT`]: each must exit with
//! status 0 and print the lines that say it did what its docs claim.
//!
//! `cargo run` builds them in the `dev` profile, as `cargo test` already
//! has (it builds the examples with the tests), so each run costs about
//! the example's own run time: the three take about 2 s here.
// Needs the real kernel: Miri cannot make io_uring syscalls.
#![cfg(not(miri))]

mod common;

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Longer than any example takes, cold build included.
const TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished example left behind.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs example `name` with `args` through `cargo run`, killing it after
/// [`TIMEOUT`] (the test then fails). `None` when io_uring is unusable
/// here (see `common::usable_or_skip`), or in a sanitizer run.
fn run_example(name: &str, args: &[&str]) -> Option<Run> {
    common::ring_or_skip(1, None)?;
    // Under `.ci/asan` the inherited RUSTFLAGS would build the examples
    // with the sanitizer but without its `--target` (which keeps it off
    // proc macros) and into the ordinary target directory; the examples
    // are not what that run checks.
    if std::env::var("RUSTFLAGS").is_ok_and(|flags| flags.contains("-Zsanitizer")) {
        eprintln!("skipping: the examples are not run under a sanitizer build");
        return None;
    }
    let mut child = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--example", name, "--"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start cargo");
    // Read both pipes as the child writes, so that it never blocks on a
    // full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).map(|_| text)
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for the example") {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            // `cargo run` execs the example, so this kills the example.
            let _ = child.kill();
            let _ = child.wait();
            panic!("example {name} {args:?} still running after {TIMEOUT:?}: killed");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let text = |reader: thread::JoinHandle<std::io::Result<String>>| {
        reader
            .join()
            .expect("the pipe reader panicked")
            .expect("the example's output is not UTF-8")
    };
    let run = Run {
        status,
        stdout: text(stdout),
        stderr: text(stderr),
    };
    assert!(
        run.status.success(),
        "example {name} {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    Some(run)
}

/// The line of `stdout` that starts with `prefix`, failing the test if
/// there is none.
fn line<'a>(run: &'a Run, prefix: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{}", run.stdout))
}

#[test]
fn blockdev_fixed_refuses_a_plain_descriptor_and_verifies_the_image() {
    let Some(run) = run_example("blockdev", &["--fixed", "--requests", "500"]) else {
        return;
    };
    let ring = line(&run, "ring: ");
    assert!(
        ring.ends_with("restricted to [Nop, Fsync, ReadFixed, WriteFixed, AsyncCancel]"),
        "{ring}"
    );
    assert!(line(&run, "served 500 requests").contains("fsync"));
    for expected in [
        "every read matched the shadow copy",
        "eventfd: ",
        "fsync of registered file 0: allowed, completed with 0",
    ] {
        line(&run, expected);
    }
    let refused = line(&run, "fsync of plain descriptor");
    assert!(
        refused.contains("EACCES (Permission denied (os error 13))")
            && refused.contains("requires registered files"),
        "{refused}"
    );
    for expected in [
        "fallocate (punch hole): not allowed, refused by the kernel with EACCES",
        "all 16777216 bytes of the image match the shadow copy",
        "fixed mode: all I/O went through registered file 0",
    ] {
        line(&run, expected);
    }
}

#[test]
fn blockdev_default_mode_is_unchanged() {
    let Some(run) = run_example("blockdev", &["--requests", "500"]) else {
        return;
    };
    let ring = line(&run, "ring: ");
    assert!(
        ring.ends_with("restricted to [Nop, Readv, Writev, Fsync, PollAdd, AsyncCancel]"),
        "{ring}"
    );
    for expected in [
        "nop: allowed, completed with 0",
        "fallocate (punch hole): not allowed, refused by the kernel with EACCES",
        "all 16777216 bytes of the image match the shadow copy",
    ] {
        line(&run, expected);
    }
    assert!(!run.stdout.contains("fixed"), "{}", run.stdout);
}

#[test]
fn echo_serves_every_client_and_stops_by_itself() {
    let Some(run) = run_example("echo", &["--clients", "4", "--messages", "50"]) else {
        return;
    };
    line(&run, "echo server on 127.0.0.1:");
    let summary = line(&run, "echo: ");
    assert!(
        summary.starts_with("echo: 4 connections, 200 messages, ")
            && summary.contains("pending accept cancelled, every message came back intact"),
        "{summary}"
    );
}
