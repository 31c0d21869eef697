//! One connection: its receive buffer and parser (handshake, then
//! requests), its request slots and their disk operations, its replies
//! and the one send in flight, and its close.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use ringfence::op::{AsyncCancel, Close, Fallocate, Fsync, Read, Recv, Send, Sendmsg, Write};
use ringfence::{FallocateMode, FsyncFlags, IoBufMut};

use crate::buf::KernelBuf;
use crate::proto::{self, Request};
use crate::worker::{label, BoxError, Cx, Kind, CANCEL};

/// The receive buffer of each connection.
const RECV_BUFFER: usize = 256 << 10;
/// Compact the receive buffer when less than this is left at its end.
const MIN_RECV_ROOM: usize = 64 << 10;
/// A write payload's rest at least this long is received straight into
/// the request's buffer instead of through the receive buffer.
const DIRECT_PAYLOAD: usize = 32 << 10;
/// Requests in flight per connection at most; more wait, unparsed, in
/// the receive buffer (and the client's socket).
pub const MAX_REQUESTS: usize = 128;
/// Bytes of READ and WRITE data a connection holds buffers for at most
/// (beyond one request): requests past it wait, unparsed, so a client
/// pipelining 32 MiB reads cannot make the server allocate without bound.
const MAX_DATA_IN_FLIGHT: usize = 64 << 20;
/// Replies gathered into one sendmsg at most.
const MAX_REPLIES_PER_SEND: usize = 64;
/// A request slot keeps a buffer up to this long for the next request.
const KEEP_BUFFER: usize = (1 << 20) + proto::REPLY_LEN;
/// WRITE_ZEROES with NO_HOLE writes zeros in pieces of this length.
const ZERO_CHUNK: usize = 1 << 20;
/// Where the connection's receive in flight writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RecvInto {
    /// The receive buffer, from `rend`.
    Buffer,
    /// The request slot whose write payload is arriving.
    Payload,
}

/// The handshake's progress, then the transmission phase.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    ClientFlags,
    Options,
    Transmission,
}

/// A write payload being received.
#[derive(Clone, Copy)]
struct Payload {
    slot: u32,
    got: usize,
    /// The request is refused: its payload is read and thrown away.
    discard: bool,
}

/// Why parsing stopped.
#[derive(PartialEq, Eq)]
enum Parsed {
    /// More bytes are needed.
    NeedData,
    /// Every request slot is busy, or the connection holds as much data
    /// as it may.
    NoSlot,
    /// No more parsing on this connection.
    Done,
}

/// A request slot's stage.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    Free,
    /// Its write payload is arriving.
    Payload,
    /// Its read, write or fallocate is in flight.
    Disk,
    /// Its fsync is in flight.
    Sync,
    /// A FLUSH waiting for the writes before it.
    WaitFlush,
    /// Its reply is ready to send.
    Ready,
    /// Its reply is in the send in flight.
    Sending,
}

/// One request in flight, and the buffer of its reply.
struct Slot {
    /// `[0..16]` the reply header, `[16..16 + len]` the data read or to
    /// write (or zeros).
    buf: KernelBuf,
    req: Request,
    stage: Stage,
    /// Bytes of the data done (reads and writes may be short).
    done: usize,
    /// WRITE_ZEROES by writing zeros (NO_HOLE, or no hole punching).
    zeroing: bool,
    /// The NBD error of a request refused at parse time.
    error: u32,
    /// The write epoch (see [`Barriers`]) when this write-like request
    /// counts in one.
    epoch: Option<u64>,
    /// The reply's length: 16, or 16 + len for a successful READ.
    reply_len: usize,
    /// What the request counts in the connection's `data_in_flight`.
    charge: usize,
}

/// The bytes of data buffer a request needs: its length for a READ or
/// WRITE the server takes, else none.
fn data_charge(req: &Request) -> usize {
    match req.command {
        proto::CMD_READ | proto::CMD_WRITE if req.len <= proto::MAX_REQUEST => req.len as usize,
        _ => 0,
    }
}

/// Writes in flight per epoch; a FLUSH opens a new epoch and waits until
/// every write of the epochs before it has completed.
struct Barriers {
    /// The epoch of `counts[0]`.
    base: u64,
    /// Writes in flight per epoch, from `base`; the last is the current.
    counts: VecDeque<u32>,
}

impl Barriers {
    fn new() -> Barriers {
        Barriers {
            base: 0,
            counts: VecDeque::from([0]),
        }
    }

    /// A write starts: it counts in the current epoch, returned.
    fn begin_write(&mut self) -> u64 {
        *self.counts.back_mut().expect("never empty") += 1;
        self.base + self.counts.len() as u64 - 1
    }

    /// A write of `epoch` completed.
    fn end_write(&mut self, epoch: u64) {
        self.counts[(epoch - self.base) as usize] -= 1;
        self.settle();
    }

    /// A FLUSH arrives: returns the epoch whose writes (and those before)
    /// it waits for, and opens a new one.
    fn begin_flush(&mut self) -> u64 {
        let barrier = self.base + self.counts.len() as u64 - 1;
        self.counts.push_back(0);
        self.settle();
        barrier
    }

    /// Whether every write up to epoch `barrier` has completed.
    fn passed(&self, barrier: u64) -> bool {
        barrier < self.base
    }

    fn settle(&mut self) {
        while self.counts.len() > 1 && self.counts[0] == 0 {
            self.counts.pop_front();
            self.base += 1;
        }
    }
}

/// One connection.
pub(crate) struct Conn {
    pub(crate) id: u64,
    /// `None` once handed to the kernel to close.
    socket: Option<Arc<OwnedFd>>,
    phase: Phase,
    no_zeroes: bool,
    rbuf: KernelBuf,
    /// Unparsed bytes are `rbuf[rstart..rend]`.
    rstart: usize,
    rend: usize,
    recv: Option<RecvInto>,
    recv_cancelled: bool,
    /// No more receives (end of stream, error, DISC, stop, bad input).
    pub(crate) input_done: bool,
    /// No more parsing (DISC, bad input, stop in the handshake).
    pub(crate) parse_done: bool,
    /// Why the input ended, for the log.
    payload: Option<Payload>,
    /// Handshake bytes to send, then those being sent.
    pub(crate) ctl: Vec<u8>,
    ctl_out: KernelBuf,
    ctl_out_len: usize,
    ctl_out_sent: usize,
    /// A send is in flight: of `ctl_out` (`sending` empty) or of the
    /// replies of the slots in `sending`.
    send_in_flight: bool,
    sending: Vec<u32>,
    /// Slots whose reply is ready, in order; `partial` bytes of the first
    /// are sent already.
    ready: VecDeque<u32>,
    partial: usize,
    /// Sends failed: replies are dropped.
    broken: bool,
    slots: Vec<Slot>,
    free: Vec<u32>,
    busy: usize,
    /// The sum of the busy slots' `charge`.
    data_in_flight: usize,
    barriers: Barriers,
    flushes_waiting: Vec<u32>,
    closing: bool,
}

impl Conn {
    pub(crate) fn new(id: u64, socket: OwnedFd) -> Conn {
        Conn {
            id,
            socket: Some(Arc::new(socket)),
            phase: Phase::ClientFlags,
            no_zeroes: false,
            rbuf: KernelBuf::new(RECV_BUFFER),
            rstart: 0,
            rend: 0,
            recv: None,
            recv_cancelled: false,
            input_done: false,
            parse_done: false,
            payload: None,
            ctl: Vec::new(),
            ctl_out: KernelBuf::new(0),
            ctl_out_len: 0,
            ctl_out_sent: 0,
            send_in_flight: false,
            sending: Vec::with_capacity(MAX_REPLIES_PER_SEND),
            ready: VecDeque::with_capacity(MAX_REQUESTS),
            partial: 0,
            broken: false,
            slots: Vec::new(),
            free: Vec::new(),
            busy: 0,
            data_in_flight: 0,
            barriers: Barriers::new(),
            flushes_waiting: Vec::new(),
            closing: false,
        }
    }

    fn socket(&self) -> Arc<OwnedFd> {
        Arc::clone(self.socket.as_ref().expect("a socket not closing"))
    }

    /// Ends the input: no more receives; cancels the one in flight.
    fn end_input(&mut self, cx: &mut Cx<'_>) -> Result<(), BoxError> {
        self.input_done = true;
        if self.recv.is_some() && !self.recv_cancelled {
            self.recv_cancelled = true;
            cx.add_labelled(AsyncCancel::new(label(cx.conn, Kind::Recv, 0)), CANCEL)?;
            *cx.cancels += 1;
        }
        Ok(())
    }

    /// Stops parsing and receiving: after bad input, DISC or ABORT.
    fn end_parsing(&mut self, cx: &mut Cx<'_>) -> Result<(), BoxError> {
        self.parse_done = true;
        self.end_input(cx)
    }

    /// The worker is stopping: requests received are still served.
    pub(crate) fn stop(&mut self, cx: &mut Cx<'_>) -> Result<(), BoxError> {
        if self.phase != Phase::Transmission {
            self.parse_done = true;
        }
        self.end_input(cx)
    }

    /// Cancels the send in flight and drops every reply; whether there
    /// was anything to drop.
    pub(crate) fn abort(&mut self, cx: &mut Cx<'_>) -> Result<bool, BoxError> {
        let pending = self.send_in_flight || !self.ready.is_empty();
        if self.send_in_flight {
            cx.add_labelled(AsyncCancel::new(label(cx.conn, Kind::Send, 0)), CANCEL)?;
            *cx.cancels += 1;
        }
        self.end_input(cx)?;
        self.break_sends();
        Ok(pending)
    }

    // --- Receiving -------------------------------------------------------

    pub(crate) fn recv_done(
        &mut self,
        cx: &mut Cx<'_>,
        result: io::Result<u32>,
    ) -> Result<(), BoxError> {
        let into = self.recv.take().expect("a receive in flight");
        match into {
            RecvInto::Buffer => {
                // SAFETY: this is the completion of the connection's one
                // receive, the only operation the receive buffer was lent to.
                unsafe { self.rbuf.give_back() }
            }
            RecvInto::Payload => {
                let slot = self.payload.expect("a payload").slot;
                // SAFETY: this is the completion of the connection's one
                // receive, the only operation the payload slot's buffer was
                // lent to (its write is queued only once this is back).
                unsafe { self.slots[slot as usize].buf.give_back() }
            }
        }
        self.recv_cancelled = false;
        match result {
            Ok(0) => {
                if !self.input_done {
                    log!("connection {}: the client closed its side", self.id);
                }
                self.input_done = true;
            }
            Ok(n) => match into {
                RecvInto::Buffer => self.rend += n as usize,
                RecvInto::Payload => {
                    let payload = self.payload.as_mut().expect("a payload");
                    payload.got += n as usize;
                    let slot = &self.slots[payload.slot as usize];
                    if payload.got == slot.req.len as usize {
                        let slot = payload.slot;
                        self.payload = None;
                        self.payload_complete(cx, slot)?;
                    }
                }
            },
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => self.input_done = true,
            Err(e) => {
                log!("connection {}: receive failed: {e}", self.id);
                self.input_done = true;
                self.break_sends();
            }
        }
        Ok(())
    }

    /// Arms a receive: into the payload slot for a long payload's rest,
    /// else into the receive buffer (compacted first if short of room).
    fn arm_recv(&mut self, cx: &mut Cx<'_>) -> Result<(), BoxError> {
        if let Some(payload) = self.payload {
            let slot = &mut self.slots[payload.slot as usize];
            let len = slot.req.len as usize;
            if !payload.discard && self.rstart == self.rend && len - payload.got >= DIRECT_PAYLOAD {
                let start = proto::REPLY_LEN + payload.got;
                let buf = slot.buf.lend(start..proto::REPLY_LEN + len);
                cx.add(Recv::new(buf, self.socket()), Kind::Recv, 0)?;
                self.recv = Some(RecvInto::Payload);
                return Ok(());
            }
        }
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rbuf.len() - self.rend < MIN_RECV_ROOM {
            let (start, end) = (self.rstart, self.rend);
            self.rbuf.bytes().copy_within(start..end, 0);
            self.rend -= start;
            self.rstart = 0;
        }
        if self.rend == self.rbuf.len() {
            return Ok(());
        }
        let buf = self.rbuf.lend(self.rend..self.rbuf.len());
        cx.add(Recv::new(buf, self.socket()), Kind::Recv, 0)?;
        self.recv = Some(RecvInto::Buffer);
        Ok(())
    }

    // --- Parsing ---------------------------------------------------------

    pub(crate) fn pump(&mut self, cx: &mut Cx<'_>) -> Result<(), BoxError> {
        if self.closing {
            return Ok(());
        }
        if self.recv.is_none() {
            let parsed = if self.parse_done {
                Parsed::Done
            } else {
                self.parse(cx)?
            };
            if parsed == Parsed::NeedData && !self.input_done {
                self.arm_recv(cx)?;
            } else if self.input_done && self.recv.is_none() && parsed != Parsed::NoSlot {
                // Nothing more will arrive: a request left incomplete is
                // dropped (a write not wholly received is never applied).
                self.parse_done = true;
                if let Some(payload) = self.payload.take() {
                    log!(
                        "connection {}: input ended in the middle of a NBD_CMD_WRITE payload \
                         ({} of {} bytes): the write is not applied",
                        self.id,
                        payload.got,
                        self.slots[payload.slot as usize].req.len
                    );
                    self.free_slot(payload.slot);
                }
            }
        }
        self.start_send(cx)?;
        self.maybe_close(cx)
    }

    fn parse(&mut self, cx: &mut Cx<'_>) -> Result<Parsed, BoxError> {
        loop {
            if self.parse_done {
                return Ok(Parsed::Done);
            }
            let parsed = match self.phase {
                Phase::ClientFlags => self.parse_client_flags(cx)?,
                Phase::Options => self.parse_option(cx)?,
                Phase::Transmission => self.parse_request(cx)?,
            };
            if let Some(stop) = parsed {
                return Ok(stop);
            }
        }
    }

    /// The unparsed bytes.
    fn unparsed(&self) -> usize {
        self.rend - self.rstart
    }

    fn parse_client_flags(&mut self, cx: &mut Cx<'_>) -> Result<Option<Parsed>, BoxError> {
        if self.unparsed() < 4 {
            return Ok(Some(Parsed::NeedData));
        }
        let start = self.rstart;
        let bytes = self.rbuf.bytes();
        let flags = u32::from_be_bytes(bytes[start..start + 4].try_into().expect("4 bytes"));
        self.rstart += 4;
        if flags & proto::C_FIXED_NEWSTYLE == 0
            || flags & !(proto::C_FIXED_NEWSTYLE | proto::C_NO_ZEROES) != 0
        {
            log!(
                "connection {}: client flags {flags:#x} refused (fixed newstyle only): closing",
                self.id
            );
            self.end_parsing(cx)?;
            return Ok(Some(Parsed::Done));
        }
        self.no_zeroes = flags & proto::C_NO_ZEROES != 0;
        self.phase = Phase::Options;
        Ok(None)
    }

    fn parse_option(&mut self, cx: &mut Cx<'_>) -> Result<Option<Parsed>, BoxError> {
        if self.unparsed() < proto::OPTION_HEADER_LEN {
            return Ok(Some(Parsed::NeedData));
        }
        let start = self.rstart;
        let bytes = self.rbuf.bytes();
        let header = &bytes[start..start + proto::OPTION_HEADER_LEN];
        let magic = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
        let option = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(header[12..16].try_into().expect("4 bytes"));
        if magic != proto::IHAVEOPT {
            log!(
                "connection {}: bad option magic {magic:#x}: closing",
                self.id
            );
            self.end_parsing(cx)?;
            return Ok(Some(Parsed::Done));
        }
        if len > proto::MAX_OPTION_LEN {
            log!(
                "connection {}: option {option} with {len} bytes of data (at most {}): closing",
                self.id,
                proto::MAX_OPTION_LEN
            );
            self.end_parsing(cx)?;
            return Ok(Some(Parsed::Done));
        }
        let total = proto::OPTION_HEADER_LEN + len as usize;
        if self.rend - start < total {
            return Ok(Some(Parsed::NeedData));
        }
        let data = &bytes[start + proto::OPTION_HEADER_LEN..start + total];
        let outcome =
            proto::answer_option(option, data, cx.shared.size, self.no_zeroes, &mut self.ctl);
        self.rstart += total;
        match outcome {
            proto::OptionOutcome::Continue(reply) => {
                log!(
                    "connection {}: {}: {reply}",
                    self.id,
                    proto::option_name(option)
                );
                Ok(None)
            }
            proto::OptionOutcome::Transmission => {
                log!(
                    "connection {}: {}: transmission phase ({} bytes)",
                    self.id,
                    proto::option_name(option),
                    cx.shared.size
                );
                self.phase = Phase::Transmission;
                if cx.stopping {
                    self.end_parsing(cx)?;
                }
                Ok(None)
            }
            proto::OptionOutcome::Close(why) => {
                log!("connection {}: {why}: closing", self.id);
                self.end_parsing(cx)?;
                Ok(Some(Parsed::Done))
            }
        }
    }

    /// Parses one request (or moves a payload on); `None` to go on.
    fn parse_request(&mut self, cx: &mut Cx<'_>) -> Result<Option<Parsed>, BoxError> {
        if let Some(mut payload) = self.payload {
            let slot = &mut self.slots[payload.slot as usize];
            let len = slot.req.len as usize;
            let take = (len - payload.got).min(self.rend - self.rstart);
            if !payload.discard {
                let at = proto::REPLY_LEN + payload.got;
                slot.buf.bytes()[at..at + take]
                    .copy_from_slice(&self.rbuf.bytes()[self.rstart..self.rstart + take]);
            }
            self.rstart += take;
            payload.got += take;
            if payload.got < len {
                self.payload = Some(payload);
                return Ok(Some(Parsed::NeedData));
            }
            self.payload = None;
            self.payload_complete(cx, payload.slot)?;
            return Ok(None);
        }
        if self.unparsed() < proto::REQUEST_LEN {
            return Ok(Some(Parsed::NeedData));
        }
        if self.free.is_empty() && self.slots.len() == MAX_REQUESTS {
            return Ok(Some(Parsed::NoSlot));
        }
        let start = self.rstart;
        let header: &[u8; proto::REQUEST_LEN] = self.rbuf.bytes()
            [start..start + proto::REQUEST_LEN]
            .try_into()
            .expect("a request header");
        let Some(req) = Request::parse(header) else {
            log!("connection {}: wrong request magic: closing", self.id);
            self.end_parsing(cx)?;
            return Ok(Some(Parsed::Done));
        };
        let charge = data_charge(&req);
        if self.data_in_flight > 0 && self.data_in_flight + charge > MAX_DATA_IN_FLIGHT {
            return Ok(Some(Parsed::NoSlot));
        }
        self.rstart += proto::REQUEST_LEN;
        let size = cx.shared.size;
        let len = req.len as usize;
        match req.command {
            proto::CMD_READ => {
                if req.len > proto::MAX_REQUEST || !req.in_bounds(size) {
                    self.refuse(&req, proto::EINVAL, "past the export's end or over 32 MiB");
                    return Ok(None);
                }
                let s = self.take_slot(req);
                if len == 0 {
                    self.finish(s, 0);
                    return Ok(None);
                }
                self.slots[s as usize].buf.reserve(proto::REPLY_LEN + len);
                self.issue(cx, s)?;
            }
            proto::CMD_WRITE => {
                if req.len > proto::MAX_REQUEST {
                    log!(
                        "connection {}: NBD_CMD_WRITE of {len} bytes (over 32 MiB): closing",
                        self.id
                    );
                    self.end_parsing(cx)?;
                    return Ok(Some(Parsed::Done));
                }
                let s = self.take_slot(req);
                let discard = !req.in_bounds(size);
                if discard {
                    log!(
                        "connection {}: NBD_CMD_WRITE at {} + {len} past the export's end: ENOSPC",
                        self.id,
                        req.offset
                    );
                    self.slots[s as usize].error = proto::ENOSPC;
                } else {
                    self.slots[s as usize].buf.reserve(proto::REPLY_LEN + len);
                }
                self.slots[s as usize].stage = Stage::Payload;
                self.payload = Some(Payload {
                    slot: s,
                    got: 0,
                    discard,
                });
            }
            proto::CMD_WRITE_ZEROES | proto::CMD_TRIM => {
                if !req.in_bounds(size) {
                    let error = if req.command == proto::CMD_TRIM {
                        proto::EINVAL
                    } else {
                        proto::ENOSPC
                    };
                    self.refuse(&req, error, "past the export's end");
                    return Ok(None);
                }
                let s = self.take_slot(req);
                if len == 0 {
                    self.finish(s, 0);
                    return Ok(None);
                }
                let slot = &mut self.slots[s as usize];
                if req.command == proto::CMD_WRITE_ZEROES
                    && req.flags & proto::CMD_FLAG_NO_HOLE != 0
                {
                    slot.zeroing = true;
                }
                slot.epoch = Some(self.barriers.begin_write());
                self.issue(cx, s)?;
            }
            proto::CMD_FLUSH => {
                let s = self.take_slot(req);
                let barrier = self.barriers.begin_flush();
                let slot = &mut self.slots[s as usize];
                slot.epoch = Some(barrier);
                if self.barriers.passed(barrier) {
                    self.flush(cx, s)?;
                } else {
                    slot.stage = Stage::WaitFlush;
                    self.flushes_waiting.push(s);
                }
            }
            proto::CMD_DISC => {
                log!("connection {}: NBD_CMD_DISC", self.id);
                self.end_parsing(cx)?;
                return Ok(Some(Parsed::Done));
            }
            _ => self.refuse(&req, proto::EINVAL, "unknown command type"),
        }
        Ok(None)
    }

    /// Answers `req` with `error` at once, logging why.
    fn refuse(&mut self, req: &Request, error: u32, why: &str) {
        log!(
            "connection {}: {} (type {}) at {} + {}: {why}: error {error}",
            self.id,
            proto::command_name(req.command),
            req.command,
            req.offset,
            req.len
        );
        let s = self.take_slot(*req);
        self.finish(s, error);
    }

    /// A write's payload has wholly arrived.
    fn payload_complete(&mut self, cx: &mut Cx<'_>, s: u32) -> Result<(), BoxError> {
        let slot = &mut self.slots[s as usize];
        if slot.error != 0 {
            let error = slot.error;
            self.finish(s, error);
            return Ok(());
        }
        if slot.req.len == 0 {
            self.finish(s, 0);
            return Ok(());
        }
        slot.epoch = Some(self.barriers.begin_write());
        self.issue(cx, s)
    }

    // --- Requests --------------------------------------------------------

    fn take_slot(&mut self, req: Request) -> u32 {
        let s = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot {
                    buf: KernelBuf::new(0),
                    req,
                    stage: Stage::Free,
                    done: 0,
                    zeroing: false,
                    error: 0,
                    epoch: None,
                    reply_len: 0,
                    charge: 0,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[s as usize];
        debug_assert_eq!(slot.stage, Stage::Free);
        slot.req = req;
        slot.stage = Stage::Disk;
        slot.done = 0;
        slot.zeroing = false;
        slot.error = 0;
        slot.epoch = None;
        slot.charge = data_charge(&req);
        self.data_in_flight += slot.charge;
        self.busy += 1;
        s
    }

    fn free_slot(&mut self, s: u32) {
        let slot = &mut self.slots[s as usize];
        slot.stage = Stage::Free;
        slot.buf.shrink(KEEP_BUFFER);
        self.data_in_flight -= std::mem::take(&mut slot.charge);
        self.free.push(s);
        self.busy -= 1;
    }

    /// Queues the disk operation of slot `s` for its next piece.
    fn issue(&mut self, cx: &mut Cx<'_>, s: u32) -> Result<(), BoxError> {
        let image = cx.shared.image;
        let slot = &mut self.slots[s as usize];
        slot.stage = Stage::Disk;
        let req = slot.req;
        let (len, done) = (req.len as usize, slot.done);
        let at = req.offset + done as u64;
        let data = proto::REPLY_LEN + done..proto::REPLY_LEN + len;
        match req.command {
            proto::CMD_READ => {
                let buf = slot.buf.lend(data);
                cx.add(Read::new(buf, image, Some(at)), Kind::Disk, s)?;
            }
            proto::CMD_WRITE => {
                let buf = slot.buf.lend(data);
                cx.add(Write::new(buf, image, Some(at)), Kind::Disk, s)?;
            }
            proto::CMD_WRITE_ZEROES if slot.zeroing => {
                let chunk = (len - done).min(ZERO_CHUNK);
                slot.buf.reserve(proto::REPLY_LEN + chunk);
                slot.buf.bytes()[proto::REPLY_LEN..proto::REPLY_LEN + chunk].fill(0);
                let buf = slot.buf.lend(proto::REPLY_LEN..proto::REPLY_LEN + chunk);
                cx.add(Write::new(buf, image, Some(at)), Kind::Disk, s)?;
            }
            proto::CMD_WRITE_ZEROES | proto::CMD_TRIM => {
                let mode = FallocateMode::PUNCH_HOLE | FallocateMode::KEEP_SIZE;
                let punch = Fallocate::new(image, req.offset, u64::from(req.len), mode);
                cx.add(punch, Kind::Disk, s)?;
            }
            other => unreachable!("no disk operation for command {other}"),
        }
        Ok(())
    }

    /// Queues a FLUSH's fsync.
    fn flush(&mut self, cx: &mut Cx<'_>, s: u32) -> Result<(), BoxError> {
        self.slots[s as usize].stage = Stage::Sync;
        let fsync = Fsync::new(cx.shared.image).flags(FsyncFlags::DATASYNC);
        cx.add(fsync, Kind::Sync, s)
    }

    pub(crate) fn disk_done(
        &mut self,
        cx: &mut Cx<'_>,
        s: u32,
        result: io::Result<u32>,
    ) -> Result<(), BoxError> {
        let id = self.id;
        let slot = &mut self.slots[s as usize];
        if slot.buf.is_lent() {
            // SAFETY: this is the completion of the slot's one disk
            // operation, the only one its buffer was lent to.
            unsafe { slot.buf.give_back() };
        }
        let req = slot.req;
        let n = match result {
            Ok(n) => n as usize,
            Err(e) => {
                let code = e.raw_os_error();
                let unsupported = code == Some(libc::EOPNOTSUPP);
                if req.command == proto::CMD_TRIM && unsupported {
                    // TRIM is advisory: no hole punching, no trim.
                    return self.data_done(cx, s);
                }
                if req.command == proto::CMD_WRITE_ZEROES && !slot.zeroing && unsupported {
                    slot.zeroing = true;
                    return self.issue(cx, s);
                }
                log!(
                    "connection {id}: {} at {} + {}: {e}",
                    proto::command_name(req.command),
                    req.offset,
                    req.len
                );
                self.end_write(cx, s)?;
                self.finish(s, proto::nbd_error(&e));
                return Ok(());
            }
        };
        match req.command {
            proto::CMD_READ | proto::CMD_WRITE | proto::CMD_WRITE_ZEROES
                if req.command != proto::CMD_WRITE_ZEROES || slot.zeroing =>
            {
                if n == 0 {
                    log!(
                        "connection {id}: {} at {} + {}: no progress (image shrunk?)",
                        proto::command_name(req.command),
                        req.offset,
                        req.len
                    );
                    self.end_write(cx, s)?;
                    self.finish(s, proto::EIO);
                    return Ok(());
                }
                slot.done += n;
                if slot.done < req.len as usize {
                    return self.issue(cx, s);
                }
                if req.command == proto::CMD_READ {
                    self.finish(s, 0);
                    return Ok(());
                }
                self.data_done(cx, s)
            }
            _ => self.data_done(cx, s),
        }
    }

    /// A write-like request's data is in the image: FUA syncs it first.
    fn data_done(&mut self, cx: &mut Cx<'_>, s: u32) -> Result<(), BoxError> {
        self.end_write(cx, s)?;
        let slot = &mut self.slots[s as usize];
        if slot.req.flags & proto::CMD_FLAG_FUA != 0 {
            slot.stage = Stage::Sync;
            let fsync = Fsync::new(cx.shared.image).flags(FsyncFlags::DATASYNC);
            return cx.add(fsync, Kind::Sync, s);
        }
        self.finish(s, 0);
        Ok(())
    }

    /// A write-like request no longer counts against FLUSHes: start those
    /// it held back.
    fn end_write(&mut self, cx: &mut Cx<'_>, s: u32) -> Result<(), BoxError> {
        let Some(epoch) = self.slots[s as usize].epoch.take() else {
            return Ok(());
        };
        self.barriers.end_write(epoch);
        let mut i = 0;
        while i < self.flushes_waiting.len() {
            let f = self.flushes_waiting[i];
            let barrier = self.slots[f as usize].epoch.expect("a flush's barrier");
            if self.barriers.passed(barrier) {
                self.flushes_waiting.swap_remove(i);
                self.flush(cx, f)?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    pub(crate) fn sync_done(
        &mut self,
        _cx: &mut Cx<'_>,
        s: u32,
        result: io::Result<u32>,
    ) -> Result<(), BoxError> {
        let error = match result {
            Ok(_) => 0,
            Err(e) => {
                let req = self.slots[s as usize].req;
                log!(
                    "connection {}: fsync for {}: {e}",
                    self.id,
                    proto::command_name(req.command)
                );
                proto::nbd_error(&e)
            }
        };
        self.slots[s as usize].epoch = None;
        self.finish(s, error);
        Ok(())
    }

    /// Slot `s`'s reply is ready: queue it (or drop it on a broken
    /// connection).
    fn finish(&mut self, s: u32, error: u32) {
        if self.broken {
            self.free_slot(s);
            return;
        }
        let slot = &mut self.slots[s as usize];
        slot.buf.reserve(proto::REPLY_LEN);
        proto::simple_reply(slot.buf.bytes(), error, slot.req.cookie);
        slot.reply_len = if slot.req.command == proto::CMD_READ && error == 0 {
            proto::REPLY_LEN + slot.req.len as usize
        } else {
            proto::REPLY_LEN
        };
        slot.stage = Stage::Ready;
        self.ready.push_back(s);
    }

    // --- Sending ---------------------------------------------------------

    fn start_send(&mut self, cx: &mut Cx<'_>) -> Result<(), BoxError> {
        if self.send_in_flight || self.broken {
            return Ok(());
        }
        if self.ctl_out_sent == self.ctl_out_len && !self.ctl.is_empty() {
            self.ctl_out.reserve(self.ctl.len());
            self.ctl_out.bytes()[..self.ctl.len()].copy_from_slice(&self.ctl);
            self.ctl_out_len = self.ctl.len();
            self.ctl_out_sent = 0;
            self.ctl.clear();
        }
        if self.ctl_out_sent < self.ctl_out_len {
            let buf = self.ctl_out.lend(self.ctl_out_sent..self.ctl_out_len);
            cx.add(Send::new(buf, self.socket()), Kind::Send, 0)?;
            self.send_in_flight = true;
            return Ok(());
        }
        if self.ready.is_empty() {
            return Ok(());
        }
        let count = self.ready.len().min(MAX_REPLIES_PER_SEND);
        if count == 1 {
            let s = self.ready.pop_front().expect("one reply");
            let slot = &mut self.slots[s as usize];
            slot.stage = Stage::Sending;
            let buf = slot.buf.lend(self.partial..slot.reply_len);
            cx.add(Send::new(buf, self.socket()), Kind::Send, 0)?;
            self.sending.push(s);
        } else {
            let mut iovecs: Vec<IoBufMut<'static>> = Vec::with_capacity(count);
            for k in 0..count {
                let s = self.ready.pop_front().expect("counted");
                let slot = &mut self.slots[s as usize];
                slot.stage = Stage::Sending;
                let start = if k == 0 { self.partial } else { 0 };
                iovecs.push(slot.buf.lend(start..slot.reply_len));
                self.sending.push(s);
            }
            let iovecs = Box::into_pin(iovecs.into_boxed_slice());
            cx.add(Sendmsg::new(iovecs, self.socket()), Kind::Send, 0)?;
        }
        self.send_in_flight = true;
        Ok(())
    }

    pub(crate) fn send_done(
        &mut self,
        _cx: &mut Cx<'_>,
        result: io::Result<u32>,
    ) -> Result<(), BoxError> {
        self.send_in_flight = false;
        if self.sending.is_empty() {
            // SAFETY: this is the completion of the connection's one send,
            // the only operation `ctl_out` was lent to.
            unsafe { self.ctl_out.give_back() };
        } else {
            for &s in &self.sending {
                // SAFETY: this is the completion of the connection's one
                // send, the only operation these slots' buffers were lent
                // to (their disk operations completed before).
                unsafe { self.slots[s as usize].buf.give_back() };
            }
        }
        let sent = match result {
            Ok(0) => Err(io::Error::from_raw_os_error(libc::EPIPE)),
            other => other,
        };
        let mut left = match sent {
            Ok(n) => n as usize,
            Err(e) => {
                log!("connection {}: send failed: {e}: dropping replies", self.id);
                for s in std::mem::take(&mut self.sending) {
                    self.free_slot(s);
                }
                self.input_done = true;
                self.break_sends();
                return Ok(());
            }
        };
        if self.sending.is_empty() {
            self.ctl_out_sent += left;
            return Ok(());
        }
        let mut unsent: Vec<(u32, usize)> = Vec::new();
        let sending = std::mem::take(&mut self.sending);
        for (k, &s) in sending.iter().enumerate() {
            let start = if k == 0 { self.partial } else { 0 };
            let need = self.slots[s as usize].reply_len - start;
            if unsent.is_empty() && left >= need {
                left -= need;
                self.free_slot(s);
            } else {
                unsent.push((s, start + left));
                left = 0;
            }
        }
        self.sending = sending;
        self.sending.clear();
        if self.broken {
            // The connection broke while this send was in flight (a stop
            // that gave up on it): what it did not send is dropped too.
            for (s, _) in unsent {
                self.free_slot(s);
            }
            return Ok(());
        }
        self.partial = unsent.first().map_or(0, |&(_, at)| at);
        for &(s, _) in unsent.iter().rev() {
            self.slots[s as usize].stage = Stage::Ready;
            self.ready.push_front(s);
        }
        Ok(())
    }

    /// Sends failed (or the connection broke): drop every reply ready,
    /// and those to come.
    fn break_sends(&mut self) {
        self.broken = true;
        while let Some(s) = self.ready.pop_front() {
            self.free_slot(s);
        }
        self.partial = 0;
    }

    // --- Closing ---------------------------------------------------------

    /// Closes the socket once nothing is left to do on the connection.
    fn maybe_close(&mut self, cx: &mut Cx<'_>) -> Result<(), BoxError> {
        if self.closing || !self.input_done || !self.parse_done || self.recv.is_some() {
            return Ok(());
        }
        if self.busy > 0 || self.send_in_flight {
            return Ok(());
        }
        if !self.broken && (self.ctl_out_sent < self.ctl_out_len || !self.ctl.is_empty()) {
            return Ok(());
        }
        let socket = self.socket.take().expect("not closing yet");
        match Arc::try_unwrap(socket) {
            Ok(socket) => cx.add(Close::new(socket), Kind::Close, 0)?,
            Err(_) => return Err("a connection's socket is still shared at close".into()),
        }
        self.closing = true;
        Ok(())
    }
}
