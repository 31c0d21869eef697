//! Futures over [ringfence]'s io_uring context: operations own their
//! buffers, run on any executor, and are cancelled without ever freeing
//! memory the kernel still uses.
//!
//! ```
//! use ringfence_async::{Driver, File};
//!
//! let driver = Driver::new(64)?;
//! let file = File::from_std(&driver, tempfile::tempfile()?);
//! futures::executor::block_on(async {
//!     let (written, _) = file.write_at(vec![7u8; 4096], 0).await;
//!     assert_eq!(written?, 4096);
//!     // The buffer is given back with the result: reuse it.
//!     let (read, buf) = file.read_at(Vec::with_capacity(4096), 0).await;
//!     assert_eq!(read?, 4096);
//!     assert!(buf.iter().all(|&byte| byte == 7));
//!     Ok::<(), std::io::Error>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Ownership and cancellation
//!
//! The design is ringbahn's (withoutboats), as crosvm's `cros_async` has
//! it above crosvm's `URingContext`:
//!
//! - **An operation owns its buffers while the kernel has them.** A read
//!   or write takes its buffer by value ([`OwnedBufMut`], [`OwnedBuf`]:
//!   `Vec<u8>`, `Box<[u8]>`, and types that opt in through these unsafe
//!   traits) and gives it back with the result, `(io::Result<usize>,
//!   buffer)`. No `unsafe` is needed to call any of it.
//! - **The completion is shared** by the future and the driver: while the
//!   operation is in flight, what it owns sits in the driver's table under
//!   the operation's user_data, and whichever of the two loses interest
//!   last frees it.
//! - **Dropping a future early cancels its operation**
//!   (`IORING_OP_ASYNC_CANCEL`, where the allowlist allows it) and leaves
//!   what it owns in the table until the kernel's completion arrives; only
//!   then is it freed. `mem::forget` of a future leaks its buffer (and
//!   its handle to the driver, so the ring and its thread live on), and
//!   never frees it early (the rio advisory, RUSTSEC-2020-0021, was that
//!   bug). A completion goes to the operation its user_data names, which
//!   carries a generation, so a late cancellation never reaches a newer
//!   operation in the same slot.
//! - **The driver makes every `io_uring_enter` call**, on a thread of its
//!   own ([`Driver::new`]) or on the caller's ([`DriverBuilder::manual`]):
//!   the kernel ties an operation to the thread that submitted it and
//!   cancels it when that thread exits, so a future polled on a
//!   short-lived thread must not submit. Futures only queue SQEs, and ring
//!   the driver's doorbell (an eventfd it polls in the ring) when it
//!   sleeps.
//! - **A full ring makes a future wait**, not fail: it is woken when the
//!   driver has submitted or reaped, and tries again.
//! - **Dropping the last handle** ([`Driver`], and every file, socket and
//!   future holds one) stops the driver, closes the ring (cancelling what
//!   is in flight and waiting up to 5 s), and frees what the operations
//!   owned, or leaks it if the kernel was not done.
//!
//! What cancelling loses, per operation:
//!
//! | Operation | Dropped before completion |
//! |---|---|
//! | `read_at`, `readv_at`, `recv` | Bytes the kernel read into the buffer are lost with it; for a file, read again. The [`AsyncRead`](futures_io::AsyncRead) impls keep their receive in flight across polls, so they lose nothing. |
//! | `write_at`, `writev_at`, `send` | The write may have happened, in part or whole, with its count lost. |
//! | `fsync`, `fallocate` | May have happened. |
//! | `accept` | A connection the kernel accepted is closed. Keep one accept future across `select!` turns, or accept in a task of its own. |
//! | `connect` | The socket is closed with the future. |
//!
//! # Restricted rings
//!
//! [`Driver::with_allowlist`] makes a ring the kernel restricts to an
//! [`URingAllowlist`](ringfence::URingAllowlist). An operation outside it
//! fails before it reaches the kernel, with an `io::Error` of kind
//! `PermissionDenied` carrying [`NotAllowed`], which names the operation.
//! The driver needs `PollAdd` for its doorbell (without it, it looks for
//! new work every millisecond) and `AsyncCancel` to cancel dropped futures
//! (without it, their operations run to their end);
//! [`allow_housekeeping`](ringfence::URingAllowlist::allow_housekeeping)
//! adds `AsyncCancel` and `Nop`.
//!
//! # Executors
//!
//! The futures need nothing from an executor: they run on `futures`'
//! executors, tokio's runtimes (current-thread and multi-thread) or any
//! other. Streams implement the `futures-io` traits, and tokio's with the
//! `tokio` feature.

#![cfg(target_os = "linux")]

mod buf;
mod doorbell;
mod driver;
mod error;
mod file_io;
mod fixed;
mod fs;
mod net;
mod op;
mod shared;
mod spec;
mod stream;
mod table;
mod tokio_io;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use buf::{OwnedBuf, OwnedBufMut};
pub use driver::{Driver, DriverBuilder, ManualDriver};
pub use error::NotAllowed;
pub use fixed::FixedBuf;
pub use fs::File;
pub use net::{TcpListener, TcpStream, UnixListener, UnixStream};
