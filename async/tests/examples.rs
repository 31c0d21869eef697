//! The examples, run as a user runs them (`cargo run -p ringfence-async
//! --example NAME`), in a child process killed if it outlives [`TIMEOUT`]:
//! each must exit with status 0 and print the lines that say it did what
//! its docs claim.
//!
//! `cargo test` has built the examples already; `cargo run` is given the
//! test's features, so it runs that build.
// Needs the real kernel: Miri cannot make io_uring syscalls.
#![cfg(not(miri))]

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Longer than any example takes, a build included.
const TIMEOUT: Duration = Duration::from_secs(180);

/// What a finished example left behind.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Whether io_uring is usable here. Under CI (`CI=true`) it must be: the
/// test fails instead of skipping, so a green CI run always ran the kernel
/// path.
fn io_uring_usable() -> bool {
    match ringfence::URingContext::new(1, None) {
        Ok(_) => true,
        Err(err) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "io_uring must be usable under CI: {err}"
            );
            eprintln!("skipping: io_uring is not usable here: {err}");
            false
        }
    }
}

/// Runs example `name` through `cargo run`, killing it after [`TIMEOUT`]
/// (the test then fails). `None` when io_uring is unusable here, or in a
/// sanitizer run.
fn run_example(name: &str) -> Option<Run> {
    if !io_uring_usable() {
        return None;
    }
    // Under a sanitizer run the inherited RUSTFLAGS would build the
    // example with the sanitizer but without its `--target`; the examples
    // are not what that run checks.
    if std::env::var("RUSTFLAGS").is_ok_and(|flags| flags.contains("-Zsanitizer")) {
        eprintln!("skipping: the examples are not run under a sanitizer build");
        return None;
    }
    // The features this test was built with: `cargo run` then runs the
    // example `cargo test` built, instead of building another.
    let features: Vec<&str> = [
        ("sim", cfg!(feature = "sim")),
        ("tokio", cfg!(feature = "tokio")),
    ]
    .into_iter()
    .filter_map(|(feature, on)| on.then_some(feature))
    .collect();
    let mut child = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "-p", env!("CARGO_PKG_NAME")])
        .args(["--features", &features.join(","), "--example", name])
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
            panic!("example {name} still running after {TIMEOUT:?}: killed");
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
        "example {name} failed with {}\nstdout:\n{}\nstderr:\n{}",
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
fn async_echo_serves_every_client_at_once_on_restricted_rings() {
    let Some(run) = run_example("async_echo") else {
        return;
    };
    assert_eq!(
        line(&run, "server ring: "),
        "server ring: restricted to [Nop, PollAdd, Accept, AsyncCancel, Send, Recv]"
    );
    assert_eq!(
        line(&run, "client ring: "),
        "client ring: restricted to [Nop, PollAdd, AsyncCancel, Connect, Send, Recv]"
    );
    assert!(line(&run, "server: listening on 127.0.0.1:").len() > 30);
    let echoed = line(&run, "echoed ");
    assert!(
        echoed.starts_with(
            "echoed 8 clients x 262144 bytes, all 8 connections open and echoing at once: \
             2097152 bytes back, every one matched (2097152 sent by the server) in "
        ),
        "{echoed}"
    );
    assert_eq!(
        line(&run, "a dropped accept: "),
        "a dropped accept: cancelled, operations in flight 0 -> 1 -> 0"
    );
    assert!(
        line(&run, "a file read on the server's ring: ").starts_with(
            "a file read on the server's ring: PermissionDenied, NotAllowed { op: Read }: \
             io_uring operation Read is not in this ring's allowlist"
        ),
        "{}",
        run.stdout
    );
}
