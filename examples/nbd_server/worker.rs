//! One worker: a thread, its ring, and the connections it serves, in one
//! event loop (see the crate docs in `main.rs` for the design).

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringfence::op::{Accept, AsyncCancel, PollAdd, SocketFlags};
use ringfence::{EventType, URingContext};

use crate::conn::Conn;
use crate::proto;

/// `user_data` of the worker's accept (one in flight at most).
const ACCEPT: u64 = u64::MAX;
/// `user_data` of the poll on the signalfd.
const SIGNAL: u64 = u64::MAX - 1;
/// `user_data` of every cancellation (they pin nothing, so they share it).
pub(crate) const CANCEL: u64 = u64::MAX - 2;

/// What an operation of a connection is, in bits 24..32 of its label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The connection's one receive.
    Recv = 1,
    /// The connection's one send (or sendmsg).
    Send = 2,
    /// A request's read, write or fallocate on the image.
    Disk = 3,
    /// A request's fsync (FLUSH, or the sync after a FUA write).
    Sync = 4,
    /// The close of the connection's socket.
    Close = 5,
}

/// The label of an operation of connection `conn` (its index in the
/// worker's table): `(conn + 1) << 32 | kind << 24 | slot`. Every
/// operation that pins memory has its own (one receive and one send per
/// connection, one disk operation per request slot at a time).
pub(crate) fn label(conn: usize, kind: Kind, slot: u32) -> u64 {
    ((conn as u64 + 1) << 32) | ((kind as u64) << 24) | u64::from(slot)
}

/// How long a stopping worker waits for its clients to take their
/// replies before it drops the rest (a client that stopped reading must not
/// hold the server up for good).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the worker's ring may take to drain at exit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections opened by all workers, for their numbers in log lines.
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

pub(crate) type BoxError = Box<dyn std::error::Error + std::marker::Send + Sync>;

/// The open connections of every worker, and each one's share of
/// `--max-connections`, for balancing accepts.
pub struct Balance {
    open: Vec<AtomicUsize>,
    shares: Vec<usize>,
}

impl Balance {
    pub fn new(shares: Vec<usize>) -> Balance {
        Balance {
            open: shares.iter().map(|_| AtomicUsize::new(0)).collect(),
            shares,
        }
    }

    /// Whether worker `me` should take the next connection: no other
    /// worker with room has fewer open.
    fn my_turn(&self, me: usize) -> bool {
        let mine = self.open[me].load(Ordering::SeqCst);
        (0..self.shares.len()).all(|other| {
            let open = self.open[other].load(Ordering::SeqCst);
            other == me || open >= self.shares[other] || open >= mine
        })
    }
}

/// How often a worker that left its accept to a less busy one looks
/// again (that one may have filled up meanwhile).
const BALANCE_RECHECK: Duration = Duration::from_millis(20);

/// The descriptors every worker uses, open for the life of the process
/// (main leaks their owners).
#[derive(Clone, Copy)]
pub struct Shared {
    pub listener: BorrowedFd<'static>,
    pub image: BorrowedFd<'static>,
    pub signal: BorrowedFd<'static>,
    /// The export's size in bytes.
    pub size: u64,
}

/// One worker's state.
pub struct Worker {
    ring: URingContext,
    index: usize,
    shared: Shared,
    balance: Arc<Balance>,
    /// The worker left the next connection to a less busy one.
    deferring: bool,
    /// The connection table: at most `conns.len()` at once.
    conns: Vec<Option<Conn>>,
    open: usize,
    accepting: bool,
    signal_armed: bool,
    stopping: bool,
    /// When a stopping worker gives up on replies not yet sent; `None`
    /// once it has.
    stop_deadline: Option<Instant>,
    /// Cancellations in flight.
    cancels: usize,
    /// Operations added since the last submit (to submit before the SQ is
    /// full).
    queued: usize,
    completions: Vec<(u64, io::Result<u32>)>,
    touched: Vec<usize>,
}

impl Worker {
    /// A worker on `ring` serving up to `max_connections` connections.
    pub fn new(ring: URingContext, index: usize, shared: Shared, balance: Arc<Balance>) -> Worker {
        let max_connections = balance.shares[index];
        Worker {
            ring,
            index,
            shared,
            balance,
            deferring: false,
            conns: (0..max_connections).map(|_| None).collect(),
            open: 0,
            accepting: false,
            signal_armed: false,
            stopping: false,
            stop_deadline: None,
            cancels: 0,
            queued: 0,
            completions: Vec::with_capacity(256),
            touched: Vec::with_capacity(max_connections),
        }
    }

    /// Serves until SIGINT or SIGTERM, then finishes the requests received
    /// and returns once every connection is closed and the ring drained.
    pub fn run(mut self) -> Result<(), BoxError> {
        self.ring
            .add(PollAdd::new(self.shared.signal, EventType::Read), SIGNAL)?;
        self.signal_armed = true;
        self.arm_accept()?;
        while !(self.stopping
            && self.open == 0
            && !self.accepting
            && !self.signal_armed
            && self.cancels == 0)
        {
            let mut completions = std::mem::take(&mut self.completions);
            match self.stop_deadline {
                None if self.deferring => {
                    completions.extend(self.ring.wait_timeout(BALANCE_RECHECK)?);
                }
                None => completions.extend(self.ring.wait()?),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    completions.extend(self.ring.wait_timeout(left)?);
                    if Instant::now() >= deadline {
                        self.give_up_replies()?;
                    }
                }
            }
            self.queued = 0;
            if self.deferring {
                self.arm_accept()?;
            }
            for (user_data, result) in completions.drain(..) {
                self.complete(user_data, result)?;
            }
            self.completions = completions;
            let mut touched = std::mem::take(&mut self.touched);
            touched.sort_unstable();
            touched.dedup();
            for conn in touched.drain(..) {
                self.pump(conn)?;
            }
            self.touched = touched;
        }
        self.ring.close(DRAIN_TIMEOUT)?;
        Ok(())
    }

    /// Handles one completion.
    fn complete(&mut self, user_data: u64, result: io::Result<u32>) -> Result<(), BoxError> {
        match user_data {
            ACCEPT => {
                self.accepting = false;
                match result {
                    Ok(fd) => {
                        // SAFETY: an accept completes with the descriptor of
                        // a new connection, which the caller owns.
                        let socket = unsafe { OwnedFd::from_raw_fd(fd as i32) };
                        self.open(socket)?;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
                    Err(e) => log!("worker {}: accept failed: {e}", self.index),
                }
                self.arm_accept()?;
            }
            SIGNAL => {
                self.signal_armed = false;
                if let Err(e) = result {
                    log!("worker {}: poll on the signalfd failed: {e}", self.index);
                }
                self.stop()?;
            }
            CANCEL => self.cancels -= 1,
            _ => {
                let conn = ((user_data >> 32) - 1) as usize;
                let slot = (user_data & 0xff_ffff) as u32;
                let kind = match (user_data >> 24) & 0xff {
                    1 => Kind::Recv,
                    2 => Kind::Send,
                    3 => Kind::Disk,
                    4 => Kind::Sync,
                    5 => Kind::Close,
                    other => return Err(format!("completion of unknown kind {other}").into()),
                };
                if kind == Kind::Close {
                    let closed = self.conns[conn].take().expect("a closing connection");
                    self.set_open(self.open - 1);
                    log!(
                        "connection {} (worker {}): closed{}",
                        closed.id,
                        self.index,
                        result.err().map(|e| format!(" ({e})")).unwrap_or_default()
                    );
                    self.arm_accept()?;
                    return Ok(());
                }
                let (mut cx, c) = self.split(conn);
                match kind {
                    Kind::Recv => c.recv_done(&mut cx, result)?,
                    Kind::Send => c.send_done(&mut cx, result)?,
                    Kind::Disk => c.disk_done(&mut cx, slot, result)?,
                    Kind::Sync => c.sync_done(&mut cx, slot, result)?,
                    Kind::Close => unreachable!(),
                }
                self.touched.push(conn);
            }
        }
        Ok(())
    }

    /// The context for connection `conn`'s methods, and the connection.
    fn split(&mut self, conn: usize) -> (Cx<'_>, &mut Conn) {
        let c = self.conns[conn].as_mut().expect("an open connection");
        let cx = Cx {
            ring: &self.ring,
            shared: self.shared,
            conn,
            queued: &mut self.queued,
            cancels: &mut self.cancels,
            stopping: self.stopping,
        };
        (cx, c)
    }

    /// Arms an accept if there is room for a connection and none is armed.
    /// Connections arriving together are spread: a worker leaves the next
    /// one to another with room and fewer open (and looks again every
    /// [`BALANCE_RECHECK`], in case that one fills up).
    fn arm_accept(&mut self) -> Result<(), BoxError> {
        self.deferring = false;
        if self.accepting || self.stopping || self.open == self.conns.len() {
            return Ok(());
        }
        if !self.balance.my_turn(self.index) {
            self.deferring = true;
            return Ok(());
        }
        let accept = Accept::new(self.shared.listener).flags(SocketFlags::CLOEXEC);
        self.ring.add(accept, ACCEPT)?;
        self.queued += 1;
        self.accepting = true;
        Ok(())
    }

    fn set_open(&mut self, open: usize) {
        self.open = open;
        self.balance.open[self.index].store(open, Ordering::SeqCst);
    }

    /// Takes a new connection and starts its handshake.
    fn open(&mut self, socket: OwnedFd) -> Result<(), BoxError> {
        let slot = self
            .conns
            .iter()
            .position(Option::is_none)
            .ok_or("an accept completed with every connection slot taken")?;
        let id = CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1;
        log!("connection {id} (worker {}): opened", self.index);
        let mut conn = Conn::new(id, socket);
        if self.stopping {
            // Accepted as the stop came: close it at once.
            conn.input_done = true;
            conn.parse_done = true;
        } else {
            conn.ctl.extend_from_slice(&proto::greeting());
        }
        self.conns[slot] = Some(conn);
        self.set_open(self.open + 1);
        self.touched.push(slot);
        Ok(())
    }

    /// SIGINT or SIGTERM: stop accepting, stop receiving, finish.
    fn stop(&mut self) -> Result<(), BoxError> {
        if self.stopping {
            return Ok(());
        }
        self.stopping = true;
        self.stop_deadline = Some(Instant::now() + STOP_GRACE);
        log!(
            "worker {}: stopping: finishing the requests received on {} connection(s)",
            self.index,
            self.open
        );
        if self.accepting {
            self.ring.add(AsyncCancel::new(ACCEPT), CANCEL)?;
            self.queued += 1;
            self.cancels += 1;
        }
        for conn in 0..self.conns.len() {
            if self.conns[conn].is_some() {
                let (mut cx, c) = self.split(conn);
                c.stop(&mut cx)?;
                self.touched.push(conn);
            }
        }
        Ok(())
    }

    /// The stop's grace time is over: cancel the sends still in flight
    /// and drop every reply not sent.
    fn give_up_replies(&mut self) -> Result<(), BoxError> {
        self.stop_deadline = None;
        for conn in 0..self.conns.len() {
            if self.conns[conn].is_some() {
                let (mut cx, c) = self.split(conn);
                if c.abort(&mut cx)? {
                    log!(
                        "connection {}: replies not taken in {STOP_GRACE:?}: dropped",
                        c.id
                    );
                }
                self.touched.push(conn);
            }
        }
        Ok(())
    }

    /// Moves connection `conn` on: parses what it received, receives
    /// more, sends replies, closes it when it is done.
    fn pump(&mut self, conn: usize) -> Result<(), BoxError> {
        if self.conns[conn].is_none() {
            return Ok(());
        }
        let (mut cx, c) = self.split(conn);
        c.pump(&mut cx)
    }
}

/// What a connection's methods need of their worker.
pub(crate) struct Cx<'a> {
    pub(crate) ring: &'a URingContext,
    pub(crate) shared: Shared,
    pub(crate) conn: usize,
    pub(crate) queued: &'a mut usize,
    pub(crate) cancels: &'a mut usize,
    pub(crate) stopping: bool,
}

impl Cx<'_> {
    /// Queues `op` under `kind` and `slot`, submitting first if the
    /// submission queue is full.
    pub(crate) fn add<O: ringfence::op::Operation>(
        &mut self,
        op: O,
        kind: Kind,
        slot: u32,
    ) -> Result<(), BoxError> {
        self.add_labelled(op, label(self.conn, kind, slot))
    }

    pub(crate) fn add_labelled<O: ringfence::op::Operation>(
        &mut self,
        op: O,
        user_data: u64,
    ) -> Result<(), BoxError> {
        if *self.queued >= self.ring.sq_entries() as usize {
            self.ring.submit()?;
            *self.queued = 0;
        }
        self.ring.add(op, user_data)?;
        *self.queued += 1;
        Ok(())
    }
}
