//! The sandbox: each ring's allowlist, the signal mask, and the seccomp
//! filter applied to every thread once all rings exist.

use std::collections::BTreeMap;

use ringfence::{URingAllowlist, URingOperation};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// The operations a worker's ring may run: the server's whole life, plus
/// the housekeeping pair (Nop, AsyncCancel) the context itself uses.
pub const WORKER_OPERATIONS: &[URingOperation] = &[
    URingOperation::Accept,
    URingOperation::Recv,
    URingOperation::Send,
    URingOperation::Sendmsg,
    URingOperation::Read,
    URingOperation::Write,
    URingOperation::Fsync,
    URingOperation::Fallocate,
    URingOperation::PollAdd,
    URingOperation::Close,
];

/// The operations of main's ring, which only flushes the image at exit.
pub const MAIN_OPERATIONS: &[URingOperation] = &[URingOperation::Fsync];

/// An allowlist of `ops` plus Nop and AsyncCancel.
pub fn allowlist(ops: &[URingOperation]) -> URingAllowlist {
    let mut allowlist = URingAllowlist::new();
    allowlist.allow_housekeeping();
    for &op in ops {
        allowlist.allow_submit_operation(op);
    }
    allowlist
}

/// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread
/// it spawns afterwards), and returns a signalfd that polls readable while
/// one is pending.
pub fn block_signals() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: `set` is a local sigset_t that sigemptyset initialises
    // before sigaddset and the two calls read it; pthread_sigmask only
    // reads it (the old mask is not asked for).
    let fd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let err = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err));
        }
        libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor, which nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The system calls the process makes once confined, each with why.
/// Everything else kills the process (`SECCOMP_RET_KILL_PROCESS`).
fn allowed_syscalls() -> Vec<(i64, Vec<SeccompRule>, &'static str)> {
    let no_exec = || {
        // `prot` (argument 2) without PROT_EXEC: no new executable memory.
        vec![rule(vec![cond(
            2,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )])]
    };
    vec![
        (
            libc::SYS_io_uring_enter,
            vec![],
            "submitting to and waiting on the rings",
        ),
        (
            libc::SYS_futex,
            vec![],
            "the rings' locks, mpsc channels and thread joins",
        ),
        (
            libc::SYS_write,
            vec![
                rule(vec![cond(0, SeccompCmpOp::Eq, 1)]),
                rule(vec![cond(0, SeccompCmpOp::Eq, 2)]),
            ],
            "the listening line (fd 1) and log lines (fd 2) only",
        ),
        (libc::SYS_mmap, no_exec(), "the allocator (no PROT_EXEC)"),
        (
            libc::SYS_mprotect,
            no_exec(),
            "the allocator growing an arena (no PROT_EXEC)",
        ),
        (
            libc::SYS_munmap,
            vec![],
            "the allocator; thread stacks at exit",
        ),
        (libc::SYS_mremap, vec![], "the allocator growing a block"),
        (libc::SYS_brk, vec![], "the allocator"),
        (libc::SYS_madvise, vec![], "the allocator returning memory"),
        (
            libc::SYS_close,
            vec![],
            "dropping a ring (its fd) after it is drained",
        ),
        (
            libc::SYS_sigaltstack,
            vec![],
            "Rust's thread exit removes the thread's signal stack",
        ),
        (
            libc::SYS_rt_sigprocmask,
            vec![],
            "glibc's thread exit blocks signals",
        ),
        (
            libc::SYS_fcntl,
            vec![rule(vec![cond(1, SeccompCmpOp::Eq, libc::F_GETFD as u64)])],
            "F_GETFD only: std's debug builds check a descriptor is open before closing it",
        ),
        (libc::SYS_exit, vec![], "a worker thread ending"),
        (libc::SYS_exit_group, vec![], "the process ending"),
        (libc::SYS_sched_yield, vec![], "lock back-off"),
    ]
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).expect("a valid condition")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a valid rule")
}

/// System calls that fail with `EACCES` instead of killing the process:
/// glibc's malloc opens `/proc/sys/vm/overcommit_memory` the first time it
/// shrinks a thread's heap, and takes a failure as "keep the pages
/// mapped", which is harmless. Nothing gets opened either way.
const REFUSED_SYSCALLS: &[i64] = &[libc::SYS_openat, libc::SYS_open];

/// Confines every thread of the process (`SECCOMP_FILTER_FLAG_TSYNC`) to
/// [`allowed_syscalls`]; [`REFUSED_SYSCALLS`] fail with `EACCES`, anything
/// else kills the process.
///
/// Two filters, because seccompiler gives one filter one action for its
/// matches: the first kills on anything outside the allowed list and the
/// refused ones, the second refuses those with `EACCES`. The kernel runs
/// both on every call and takes the stricter result.
pub fn confine() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let arch: seccompiler::TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: {e}"))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed_syscalls()
        .into_iter()
        .map(|(nr, rules, _)| (nr, rules))
        .collect();
    for &nr in REFUSED_SYSCALLS {
        rules.insert(nr, vec![]);
    }
    let kill = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )?;
    let refuse = SeccompFilter::new(
        REFUSED_SYSCALLS.iter().map(|&nr| (nr, vec![])).collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )?;
    for filter in [refuse, kill] {
        let program: BpfProgram = filter.try_into()?;
        seccompiler::apply_filter_all_threads(&program)?;
    }
    Ok(())
}
