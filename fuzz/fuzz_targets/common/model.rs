//! The model all three targets check the context against, and the input
//! types they share.
//!
//! **Operations.** A target takes the operation an input names from
//! `op::ISSUABLE` (see [`OpInput::opcode`]) and builds it in one `match`
//! (its `Model::build`), pushing the operation value and what its completion
//! may look like into an [`Adder`]. Whether it pins caller memory and which
//! opcode it is come from the operation's own definition
//! (`Operation::PINS_CALLER_MEMORY`, `Operation::OPCODE`). [`check_arms`]
//! builds every issuable operation once per process, so an operation added
//! to `op::ISSUABLE` without an arm fails at the first input.
//!
//! **Labels.** The caller's user_data is a label. Operations that pin no
//! caller memory may share one; an add is refused with `DuplicateUserData`
//! exactly when the new operation, or one in flight with its label, pins
//! caller memory. A cancellation or poll removal aims at every operation in
//! flight with its target label when it is added (the context resolves the
//! label then, one SQE per target: the extra ones are the context's own and
//! take room in the submission queue), and at no operation added later.
//!
//! **Completions.** Completions with a shared label cannot be told apart, so
//! the model does not guess which operation one belongs to: it keeps, per
//! label, the operations and the results received, and checks after every
//! completion that each result can go to a different operation added before
//! it arrived that allows it (a bipartite matching). Once every operation of
//! a label has completed, the label's group is closed and each operation's
//! effects are applied (`Model::finished`). An operation that pins caller
//! memory is alone under its label, so its own result, data included, is
//! checked at once.
//!
//! **Reaping.** `wait` blocks until a completion is ready, so the model calls
//! it only when something in flight will complete (after the target's
//! `unblock`), and `wait_timeout` otherwise. A reap takes every completion,
//! or takes a few and drops the iterator (the rest are handed back to a
//! later wait), or adds an operation while the iterator is alive, or
//! `mem::forget`s the iterator (its claimed completions then stay in flight
//! until close).
//!
//! **Counts.** `in_flight()` must equal the operations added minus the
//! completions received; the submission queue's fill is tracked so that
//! `NoSpace` is returned exactly when the queue lacks room or the in-flight
//! cap is reached (the context's own operations count there too, and the
//! model only bounds how many of those there are).

use std::collections::HashMap;
use std::fmt::Debug;
use std::io;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use ringfence::op::{OpBatch, Operation, ISSUABLE};
use ringfence::{Error, IosqeFlags, SqeFlags, URingContext, URingOperation};

use super::pool::Completed;

/// A completion's result, with the errno of a failure.
pub type Res = Result<u32, i32>;

pub fn res_of(result: io::Result<u32>) -> Res {
    result.map_err(|e| {
        e.raw_os_error()
            .unwrap_or_else(|| panic!("completion error without an errno: {e}"))
    })
}

/// The labels an input can name: few, so that inputs share them often,
/// and some with high bits set, which the context must not confuse with
/// the identities it puts in SQEs.
pub const LABELS: [u64; 16] = [
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    1 << 63,
    0xffff_0000_0000_0001,
    u64::MAX - 1,
    u64::MAX,
];

/// The index of `label` in [`LABELS`].
pub fn label_index(label: u64) -> usize {
    LABELS
        .iter()
        .position(|l| *l == label)
        .unwrap_or_else(|| panic!("label {label:#x} is not one of LABELS"))
}

/// One of [`LABELS`].
#[derive(Arbitrary, Clone, Copy, Debug, Default)]
pub struct Label(u8);

impl Label {
    pub fn value(self) -> u64 {
        LABELS[usize::from(self.0) % LABELS.len()]
    }
}

/// The largest offset the kernel takes: it reads the SQE's offset as a
/// signed `loff_t`.
pub const MAX_OFFSET: u64 = i64::MAX as u64;

/// A file offset, as an input names it.
#[derive(Arbitrary, Clone, Copy, Debug, Default)]
pub enum Offset {
    /// `None`: the file's current position.
    #[default]
    Current,
    /// `step * n`, inside the target's files.
    At(u8),
    /// `i64::MAX - k`: valid, past the end of every file.
    NearMax(u16),
    /// `i64::MAX + 1 + k`: the add must fail with `InvalidOffset`.
    AboveMax(u16),
    /// `u64::MAX`, which the kernel would read as -1 (the current position):
    /// the add must fail with `InvalidOffset`.
    Max,
}

impl Offset {
    /// The offset, `At(n)` counting in `step`s.
    pub fn value(self, step: u64) -> Option<u64> {
        match self {
            Offset::Current => None,
            Offset::At(n) => Some(u64::from(n) * step),
            Offset::NearMax(k) => Some(MAX_OFFSET - u64::from(k)),
            Offset::AboveMax(k) => Some(MAX_OFFSET + 1 + u64::from(k)),
            Offset::Max => Some(u64::MAX),
        }
    }

    /// The offset, if the add must fail with `InvalidOffset` for it.
    #[allow(dead_code)] // Used by some targets only.
    pub fn refused(self) -> Option<u64> {
        match self {
            Offset::AboveMax(_) | Offset::Max => self.value(1),
            _ => None,
        }
    }
}

/// One operation an input adds.
#[derive(Arbitrary, Clone, Copy, Debug, Default)]
pub struct OpInput {
    /// Which operation of `op::ISSUABLE`: the one with this kernel opcode
    /// number if there is one (so that seeds keep their meaning as the list
    /// grows), else the one at this index modulo the list's length.
    pub which: u8,
    pub label: Label,
    /// Which file or variant; each target says.
    pub file: u8,
    pub offset: Offset,
    /// `SqeFlags` bits, for the operations that carry flags.
    pub flags: u8,
    /// The label a cancellation or poll removal aims at.
    pub target: Label,
}

impl OpInput {
    pub fn opcode(&self) -> URingOperation {
        let numbered = ISSUABLE.iter().find(|op| **op as u8 == self.which);
        let op = *numbered.unwrap_or(&ISSUABLE[usize::from(self.which) % ISSUABLE.len()]);
        // A link timeout exists only inside a chain, which the targets do
        // not build yet: in its place, a timeout.
        if op == URingOperation::LinkTimeout {
            return URingOperation::Timeout;
        }
        op
    }

    pub fn sqe_flags(&self) -> SqeFlags {
        SqeFlags::from_bits_truncate(self.flags)
    }
}

/// Up to three operations added with one `add_batch`, perhaps as a chain.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct BatchInput {
    /// 1 + count % 3 of `ops`.
    pub count: u8,
    /// Bit `i` (0, 1, 2): operation `i` is linked to the next
    /// (`add_linked`, or `add_hardlinked` with bit 3), where both are
    /// [`chainable`]. A link from the last operation leaves the chain open,
    /// which `add_batch` must refuse.
    pub links: u8,
    pub ops: [OpInput; 3],
}

impl BatchInput {
    pub fn ops(&self) -> &[OpInput] {
        &self.ops[..1 + usize::from(self.count % 3)]
    }

    /// How operation `i` joins the next, if it does.
    fn link(&self, i: usize) -> Option<Link> {
        let ops = self.ops();
        let next_chainable = ops.get(i + 1).is_none_or(|next| chainable(next.opcode()));
        let linked = self.links & (1 << i) != 0 && chainable(ops[i].opcode()) && next_chainable;
        linked.then_some(if self.links & 8 != 0 {
            Link::Hard
        } else {
            Link::Soft
        })
    }
}

/// How an operation of a batch joins the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// `IOSQE_IO_LINK`: the next runs only if this one succeeds.
    Soft,
    /// `IOSQE_IO_HARDLINK`: the next runs once this one completes.
    Hard,
}

/// Whether the targets chain `opcode`: the operations that complete
/// promptly in every target (a poll or timeout that never fires would hold
/// the rest of its chain until drain, which the targets' checks of what is
/// still in flight do not expect). Every member of a chain may complete
/// with `ECANCELED`: a failed (or short) one cancels the rest of a soft
/// chain, and a member the kernel refuses at submission (outside the
/// allowlist) fails the whole chain.
fn chainable(opcode: URingOperation) -> bool {
    matches!(
        opcode,
        URingOperation::Nop
            | URingOperation::Readv
            | URingOperation::Writev
            | URingOperation::Fsync
            | URingOperation::Read
            | URingOperation::Write
            | URingOperation::Fallocate
            | URingOperation::SyncFileRange
            | URingOperation::Fadvise
            | URingOperation::ReadFixed
            | URingOperation::WriteFixed
            | URingOperation::ReadvFixed
            | URingOperation::WritevFixed
    )
}

/// A cancellation, poll removal or timeout removal: the operations it may
/// stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aim {
    /// The label whose operations it aims at.
    pub target: u64,
    /// A poll or timeout removal: it stops operations with this opcode
    /// only.
    pub only: Option<URingOperation>,
}

/// What a target says about an operation it pushes.
pub struct Spec<K> {
    /// The target's own description, which checks the completion.
    pub kind: K,
    pub aim: Option<Aim>,
    /// The SQE flags it carries.
    pub flags: SqeFlags,
    /// It hands the kernel its label's buffer slot: sound only if it pins
    /// caller memory (then the label rule keeps the slot its own).
    pub uses_slot: bool,
    /// The absolute offset it names, if any: above `MAX_OFFSET` the add must
    /// fail with `InvalidOffset`.
    pub offset: Option<u64>,
}

impl<K> Spec<K> {
    pub fn new(kind: K) -> Spec<K> {
        Spec {
            kind,
            aim: None,
            flags: SqeFlags::empty(),
            uses_slot: false,
            offset: None,
        }
    }

    pub fn aim(self, aim: Aim) -> Spec<K> {
        Spec {
            aim: Some(aim),
            ..self
        }
    }

    pub fn flags(self, flags: SqeFlags) -> Spec<K> {
        Spec { flags, ..self }
    }

    pub fn slot(self) -> Spec<K> {
        Spec {
            uses_slot: true,
            ..self
        }
    }

    pub fn offset(self, offset: Option<u64>) -> Spec<K> {
        Spec { offset, ..self }
    }
}

enum Mode<'a> {
    Add(&'a URingContext),
    /// Into the batch, linked to the next operation or not.
    Batch(&'a mut OpBatch, Option<Link>),
    /// Builds and drops: see [`check_arms`].
    Probe,
}

/// Where a target's `build` puts the one operation it builds.
pub struct Adder<'a, K> {
    mode: Mode<'a>,
    opcode: URingOperation,
    label: u64,
    slot_free: bool,
    pushed: Option<Pushed<K>>,
}

struct Pushed<K> {
    spec: Spec<K>,
    pins: bool,
    result: Option<ringfence::Result<()>>,
    /// In a chain of a batch: it may complete with `ECANCELED`.
    chained: bool,
    /// The link flag its SQE carries (which an allowlist must allow).
    link: IosqeFlags,
}

impl<'a, K> Adder<'a, K> {
    fn new(mode: Mode<'a>, opcode: URingOperation, label: u64, slot_free: bool) -> Self {
        Adder {
            mode,
            opcode,
            label,
            slot_free,
            pushed: None,
        }
    }

    /// The label the operation is added with.
    pub fn label(&self) -> u64 {
        self.label
    }

    /// Whether the target may write the label's buffer slot now: no
    /// operation that pins it is in flight.
    pub fn slot_free(&self) -> bool {
        self.slot_free
    }

    /// Adds the removal `opcode` (a poll removal, timeout removal or
    /// cancellation) aimed at the label `target`, whose completion the
    /// target checks as `control`.
    fn push_removal(&mut self, opcode: URingOperation, target: u64, control: K) {
        let only = match opcode {
            URingOperation::PollRemove => Some(URingOperation::PollAdd),
            URingOperation::TimeoutRemove => Some(URingOperation::Timeout),
            _ => None,
        };
        let spec = Spec::new(control).aim(Aim { target, only });
        match opcode {
            URingOperation::PollRemove => self.push(ringfence::op::PollRemove::new(target), spec),
            URingOperation::TimeoutRemove => {
                self.push(ringfence::op::TimeoutRemove::new(target), spec)
            }
            _ => self.push(ringfence::op::AsyncCancel::new(target), spec),
        }
    }

    /// Adds `op` (with `URingContext::add`, or to the batch).
    pub fn push<O: Operation>(&mut self, op: O, spec: Spec<K>) {
        assert!(
            self.pushed.is_none(),
            "the arm for {:?} pushed twice",
            self.opcode
        );
        assert_eq!(
            O::OPCODE,
            self.opcode,
            "the arm for {:?} built another operation",
            self.opcode
        );
        assert!(
            !spec.uses_slot || O::PINS_CALLER_MEMORY,
            "{:?} hands the kernel a buffer slot but does not pin caller memory: the label \
             rule would not keep the slot to it",
            O::OPCODE
        );
        let result = match &mut self.mode {
            Mode::Add(ring) => Some(ring.add(op, self.label)),
            Mode::Batch(batch, None) => Some(batch.add(op, self.label).map(drop)),
            Mode::Batch(batch, Some(Link::Soft)) => {
                Some(batch.add_linked(op, self.label).map(drop))
            }
            Mode::Batch(batch, Some(Link::Hard)) => {
                Some(batch.add_hardlinked(op, self.label).map(drop))
            }
            Mode::Probe => None,
        };
        self.pushed = Some(Pushed {
            spec,
            pins: O::PINS_CALLER_MEMORY,
            result,
            chained: false,
            link: IosqeFlags::empty(),
        });
    }

    fn finish(self) -> Pushed<K> {
        self.pushed
            .unwrap_or_else(|| panic!("the arm for {:?} pushed nothing", self.opcode))
    }
}

/// Builds the operation `input` names into `adder`: a poll removal or a
/// cancellation aimed at a label the same way for every target, anything
/// else with the target's [`Model::build`].
fn build<M: Model>(model: &M, input: &OpInput, adder: &mut Adder<'_, M::Kind>) {
    match input.opcode() {
        removal @ (URingOperation::PollRemove
        | URingOperation::TimeoutRemove
        | URingOperation::AsyncCancel) => {
            adder.push_removal(removal, input.target.value(), M::CONTROL)
        }
        _ => model.build(input, adder),
    }
}

/// What a target knows of its operations and files.
pub trait Model {
    /// The target's description of an operation in flight.
    type Kind: Debug;

    /// The kind of a poll removal or cancellation by label, which
    /// [`build`] adds for every target alike.
    const CONTROL: Self::Kind;

    /// Builds the operation `input` names and pushes it into `adder`: the
    /// one `match` over opcodes (with a loud arm for any opcode it lacks),
    /// except the operations on a label, which [`build`] adds.
    fn build(&self, input: &OpInput, adder: &mut Adder<'_, Self::Kind>);

    /// Whether `kind` may complete with `res`; `ECANCELED` and `EACCES` are
    /// the model's to decide, not this.
    fn accepts(&self, kind: &Self::Kind, res: Res) -> bool;

    /// A new operation was accepted while `others` are in the model.
    fn on_add(&mut self, _new: &mut Self::Kind, _others: Vec<&mut Self::Kind>) {}

    /// The operation has completed, and so has every other one under its
    /// label (`done`, which reads the label's buffer slot). `res` is its
    /// result when its label had no other operation (always so for one that
    /// pins caller memory); with several, which result was whose is not
    /// known. `may_cancel`: it may have been cancelled.
    fn finished(
        &mut self,
        _done: &Completed,
        _kind: Self::Kind,
        _res: Option<Res>,
        _may_cancel: bool,
    ) {
    }

    /// Whether the kernel refuses an SQE with this opcode and these flags
    /// (a restricted ring).
    fn refuses(&self, _opcode: URingOperation, _flags: IosqeFlags) -> bool {
        false
    }

    /// Whether the context refuses `opcode` at add time
    /// (`Error::FixedFileNotSupported`: a ring that requires `FIXED_FILE`).
    fn refused_at_add(&self, _opcode: URingOperation) -> bool {
        false
    }

    /// The SQE flags the context adds to `opcode`'s SQE on this ring (a
    /// required `FIXED_FILE`, on operations that name no file).
    fn carried_flags(&self, _opcode: URingOperation) -> IosqeFlags {
        IosqeFlags::empty()
    }

    /// Makes every operation in flight able to complete (readiness for the
    /// polls), before a reap.
    fn unblock(&mut self) {}

    /// After a reap.
    fn reaped(&mut self) {}

    /// How long one round of `drain` waits.
    fn drain_round(&self) -> Duration {
        Duration::from_millis(50)
    }

    /// Whether the kernel holds nothing pending, if the target can tell (the
    /// simulated kernel can).
    fn kernel_idle(&self) -> Option<bool> {
        None
    }
}

/// Builds each operation of `op::ISSUABLE` once, without adding it, so that
/// an opcode without an arm fails now rather than when an input picks it.
pub fn check_arms<M: Model>(model: &M) {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(|| {
        for &issuable in ISSUABLE {
            let input = OpInput {
                which: issuable as u8,
                ..OpInput::default()
            };
            // Every opcode but the link timeout's, which stands in for it.
            let opcode = input.opcode();
            assert!(opcode == issuable || issuable == URingOperation::LinkTimeout);
            let mut adder = Adder::new(Mode::Probe, opcode, input.label.value(), false);
            build(model, &input, &mut adder);
            adder.finish();
        }
    });
}

/// What the model knows of one operation it has seen accepted.
#[derive(Debug)]
pub struct Op<K> {
    pub kind: K,
    pub opcode: URingOperation,
    #[allow(dead_code)] // Read by some targets only.
    pub flags: SqeFlags,
    pins: bool,
    /// Outside the allowlist: completes with `EACCES`.
    pub refused: bool,
    /// Aimed at by a cancellation (or, a poll, a poll removal), or in a link
    /// chain: may complete with `ECANCELED`.
    pub may_cancel: bool,
    /// When it was added, on the model's clock.
    added: u64,
}

#[derive(Debug)]
struct Received {
    res: Res,
    at: u64,
}

/// The operations with one label since the label last had none in flight,
/// and the results received for them.
#[derive(Debug)]
struct Group<K> {
    ops: Vec<Op<K>>,
    received: Vec<Received>,
    /// The result each operation is matched with.
    op_match: Vec<Option<usize>>,
}

impl<K> Group<K> {
    fn in_flight(&self) -> usize {
        self.ops.len() - self.received.len()
    }

    fn pinned(&self) -> bool {
        self.ops.iter().any(|op| op.pins)
    }

    /// Finds an operation for result `r`, moving earlier matches along an
    /// augmenting path if need be.
    fn augment(
        &mut self,
        r: usize,
        allows: &dyn Fn(&Op<K>, Res) -> bool,
        seen: &mut [bool],
    ) -> bool {
        let at = self.received[r].at;
        let res = self.received[r].res;
        for o in 0..self.ops.len() {
            if seen[o] || self.ops[o].added >= at || !allows(&self.ops[o], res) {
                continue;
            }
            seen[o] = true;
            let free = match self.op_match[o] {
                None => true,
                Some(other) => self.augment(other, allows, seen),
            };
            if free {
                self.op_match[o] = Some(r);
                return true;
            }
        }
        false
    }
}

/// What the context's answer to an add should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Queued,
    Duplicate(u64),
    NoSpace,
    /// `Error::FixedFileNotSupported`: refused before anything else is
    /// looked at.
    Refused(URingOperation),
}

/// How a ring behaves, for the model.
pub struct RingConfig {
    /// The most operations the context tracks, its own included (see
    /// [`in_flight_cap`]).
    pub cap: usize,
}

/// The most operations `ring` keeps in flight, as `Error::NoSpace`
/// documents it: 16 times the completion ring's entries with
/// `IORING_FEAT_NODROP`, one short of them without.
pub fn in_flight_cap(ring: &URingContext, nodrop: bool) -> usize {
    let cq_entries = ring.cq_entries() as usize;
    match nodrop {
        true => 16 * cq_entries,
        false => cq_entries - 1,
    }
}

/// The model: the target's own state plus the operations in flight, by
/// label, and the submission queue's fill.
pub struct Book<M: Model> {
    pub model: M,
    groups: HashMap<u64, Group<M::Kind>>,
    in_flight: usize,
    /// SQEs published and not yet consumed (all caller operations and their
    /// extra SQEs), or `None` when a submit stopped short and it is not known.
    queued: Option<usize>,
    sq_entries: usize,
    config: RingConfig,
    /// How many of the context's own operations may be tracked at most.
    own_ops: usize,
    clock: u64,
    /// An iterator was forgotten while it may have held claimed
    /// completions: those operations stay in flight until close, and
    /// nothing says which they are.
    pub stranded: bool,
}

impl<M: Model> Book<M> {
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Every operation the model holds, with its label (including ones
    /// whose label's group is not closed yet, so possibly completed).
    #[allow(dead_code)] // Used by some targets only.
    pub fn ops(&self) -> impl Iterator<Item = (u64, &Op<M::Kind>)> {
        self.groups
            .iter()
            .flat_map(|(label, group)| group.ops.iter().map(move |op| (*label, op)))
    }

    fn slot_free(&self, label: u64) -> bool {
        !self.groups.get(&label).is_some_and(Group::pinned)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// What adding `ops` (label, pins, aim) should give, with `own` of the
    /// context's own operations tracked; and how many extra SQEs the
    /// cancellations among them take.
    fn predict(&self, ops: &[(u64, bool, Option<Aim>)], own: usize) -> (Outcome, usize) {
        let mut labels: HashMap<u64, (usize, bool)> = HashMap::new();
        let use_of = |labels: &mut HashMap<u64, (usize, bool)>, label: u64| {
            *labels.entry(label).or_insert_with(|| {
                self.groups
                    .get(&label)
                    .map_or((0, false), |g| (g.in_flight(), g.pinned()))
            })
        };
        let full = |tracked: usize| tracked >= self.config.cap;
        let mut tracked = self.in_flight + own;
        let mut extras = 0;
        for &(label, pins, aim) in ops {
            if let Some(aim) = aim {
                let (targets, _) = use_of(&mut labels, aim.target);
                for _ in 1..targets {
                    if full(tracked) {
                        return (Outcome::NoSpace, 0);
                    }
                    tracked += 1;
                    extras += 1;
                }
            }
            if full(tracked) {
                return (Outcome::NoSpace, 0);
            }
            let (count, pinned) = use_of(&mut labels, label);
            if count > 0 && (pins || pinned) {
                return (Outcome::Duplicate(label), 0);
            }
            labels.insert(label, (count + 1, pinned || pins));
            tracked += 1;
        }
        if let Some(queued) = self.queued {
            if queued + ops.len() + extras > self.sq_entries {
                return (Outcome::NoSpace, 0);
            }
        }
        (Outcome::Queued, extras)
    }

    /// Checks the context's answer to adding `ops` against the model and
    /// records them if accepted. Returns whether the queue was full.
    fn added(
        &mut self,
        ops: Vec<(u64, URingOperation, Pushed<M::Kind>)>,
        result: &ringfence::Result<()>,
    ) -> bool {
        let plan: Vec<_> = ops
            .iter()
            .map(|(label, _, pushed)| (*label, pushed.pins, pushed.spec.aim))
            .collect();
        let refused = ops
            .iter()
            .map(|(_, opcode, _)| *opcode)
            .find(|opcode| self.model.refused_at_add(*opcode));
        let (exact, extras, bounded) = match refused {
            Some(opcode) => (Outcome::Refused(opcode), 0, Outcome::Refused(opcode)),
            None => {
                let (exact, extras) = self.predict(&plan, 0);
                (exact, extras, self.predict(&plan, self.own_ops).0)
            }
        };
        let allowed = |outcome: Outcome| {
            outcome == exact
                // Some of the context's own operations may hold the cap.
                || (outcome == Outcome::NoSpace && bounded != exact)
                // The queue's fill is not known.
                || (outcome == Outcome::NoSpace && exact == Outcome::Queued && self.queued.is_none())
        };
        let what = || {
            let ops: Vec<_> = ops
                .iter()
                .map(|(label, opcode, _)| (*label, *opcode))
                .collect();
            format!(
                "adding {ops:x?} with {} in flight, {:?} of {} SQEs queued, by label: {:?}",
                self.in_flight,
                self.queued,
                self.sq_entries,
                self.labels_in_flight()
            )
        };
        let outcome = match result {
            Ok(()) => Outcome::Queued,
            Err(Error::NoSpace) => Outcome::NoSpace,
            Err(Error::DuplicateUserData(label)) => Outcome::Duplicate(*label),
            Err(Error::FixedFileNotSupported(opcode)) => Outcome::Refused(*opcode),
            Err(e) => panic!("{}: unexpected error {e}", what()),
        };
        assert!(
            allowed(outcome),
            "{}: got {outcome:?}, expected {exact:?}",
            what()
        );
        if outcome != Outcome::Queued {
            return outcome == Outcome::NoSpace;
        }
        let count = ops.len();
        for (label, opcode, pushed) in ops {
            self.record(label, opcode, pushed);
        }
        self.own_ops += extras;
        self.queued = self.queued.map(|queued| queued + count + extras);
        false
    }

    fn record(&mut self, label: u64, opcode: URingOperation, pushed: Pushed<M::Kind>) {
        let Pushed {
            spec:
                Spec {
                    mut kind,
                    aim,
                    flags,
                    ..
                },
            pins,
            chained,
            link,
            ..
        } = pushed;
        if let Some(aim) = aim {
            if let Some(group) = self.groups.get_mut(&aim.target) {
                for op in &mut group.ops {
                    if aim.only.is_none_or(|only| op.opcode == only) {
                        op.may_cancel = true;
                    }
                }
            }
        }
        // Besides a cancellation aimed at its label (above), only its chain
        // can cancel an operation (see `chainable`).
        let may_cancel = chained;
        let sent = IosqeFlags::from(flags) | self.model.carried_flags(opcode) | link;
        let refused = self.model.refuses(opcode, sent);
        let others: Vec<_> = self
            .groups
            .values_mut()
            .flat_map(|group| group.ops.iter_mut().map(|op| &mut op.kind))
            .collect();
        self.model.on_add(&mut kind, others);
        let added = self.tick();
        let group = self.groups.entry(label).or_insert_with(|| Group {
            ops: Vec::new(),
            received: Vec::new(),
            op_match: Vec::new(),
        });
        group.ops.push(Op {
            kind,
            opcode,
            flags,
            pins,
            refused,
            may_cancel,
            added,
        });
        group.op_match.push(None);
        self.in_flight += 1;
    }

    /// The labels with operations in flight, and how many each has.
    pub fn labels_in_flight(&self) -> Vec<(u64, usize)> {
        let mut labels: Vec<_> = self
            .groups
            .iter()
            .map(|(label, group)| (*label, group.in_flight()))
            .filter(|(_, n)| *n > 0)
            .collect();
        labels.sort();
        labels
    }

    /// Adds one operation to `ring` with `URingContext::add`.
    fn add(&mut self, ring: &URingContext, input: &OpInput) {
        let label = input.label.value();
        let opcode = input.opcode();
        let slot_free = self.slot_free(label);
        let mut adder = Adder::new(Mode::Add(ring), opcode, label, slot_free);
        build(&self.model, input, &mut adder);
        let mut pushed = adder.finish();
        let result = pushed.result.take().expect("added");
        if let Some(offset) = pushed.spec.offset.filter(|o| *o > MAX_OFFSET) {
            assert!(
                matches!(result, Err(Error::InvalidOffset(o)) if o == offset),
                "{opcode:?} at offset {offset:#x}: {result:?}"
            );
            return;
        }
        if self.added(vec![(label, opcode, pushed)], &result) {
            self.submit(ring);
        }
    }

    fn submit(&mut self, ring: &URingContext) {
        self.queued = match ring.submit() {
            Ok(()) => Some(0),
            Err(Error::KernelBusy(_)) => None,
            Err(e) => panic!("submit: {e}"),
        };
    }

    /// Checks one completion, and closes its label's group if that was the
    /// last operation in flight with the label.
    pub fn received(&mut self, label: u64, result: io::Result<u32>) {
        let res = res_of(result);
        let at = self.tick();
        let Some(group) = self.groups.get_mut(&label) else {
            panic!("completion {res:?} for label {label:#x}, which has nothing in flight");
        };
        assert!(
            group.in_flight() > 0,
            "completion {res:?} for label {label:#x}, whose operations have all completed: {group:?}"
        );
        group.received.push(Received { res, at });
        let model = &self.model;
        let allows = |op: &Op<M::Kind>, res: Res| {
            if op.refused {
                // Refused at submission; in a chain an earlier member's
                // refusal may cancel it first.
                return res == Err(libc::EACCES) || (op.may_cancel && res == Err(libc::ECANCELED));
            }
            match res {
                Err(libc::EACCES) => false,
                Err(libc::ECANCELED) => op.may_cancel,
                res => model.accepts(&op.kind, res),
            }
        };
        let r = group.received.len() - 1;
        // An operation without a result yet that allows it, or else move
        // earlier results along.
        let direct = (0..group.ops.len()).find(|&o| {
            group.op_match[o].is_none() && group.ops[o].added < at && allows(&group.ops[o], res)
        });
        let matched = match direct {
            Some(o) => {
                group.op_match[o] = Some(r);
                true
            }
            None => {
                let mut seen = vec![false; group.ops.len()];
                group.augment(r, &allows, &mut seen)
            }
        };
        assert!(
            matched,
            "completion {res:?} for label {label:#x} fits no operation in flight with it \
             (a wrong result, or a completion delivered twice): {group:#?}"
        );
        self.in_flight -= 1;
        if group.in_flight() == 0 {
            let group = self.groups.remove(&label).expect("the group is there");
            let alone = group.ops.len() == 1;
            // SAFETY: every operation added with `label` has completed (its
            // group is closed), and no `Adder` is made before `done` is
            // dropped at the end of this block (adds need `&mut self`, which
            // this call holds).
            let done = unsafe { Completed::new(label) };
            for (op, r) in group.ops.into_iter().zip(group.op_match) {
                let res = group.received[r.expect("every operation is matched")].res;
                self.model
                    .finished(&done, op.kind, alone.then_some(res), op.may_cancel);
            }
        }
    }
}

/// How long draining may take before a target calls it a hang.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// The steps every target takes; each target's `Step` has them as its
/// first variant, `Common`, beside its own.
#[derive(Arbitrary, Debug)]
pub enum CommonStep {
    /// `URingContext::add`.
    Add(OpInput),
    /// `OpBatch` + `add_batch`.
    Batch(BatchInput),
    Submit,
    /// One `wait` (`wait_timeout` when nothing is sure to complete), every
    /// completion taken.
    Reap,
    /// One `wait`, at most `n % 4` completions taken, the iterator dropped.
    ReapSome(u8),
    /// One wait; after `n % 4` completions (or all there are, if fewer),
    /// with the iterator alive, `in_flight()` is checked and the operation
    /// added; then the rest are taken.
    ReapAndAdd(u8, OpInput),
    /// Reaps until nothing is in flight.
    Drain,
}

/// One input's ring and its model.
pub struct World<M: Model> {
    pub ring: URingContext,
    pub book: Book<M>,
}

/// How a reap ends.
#[derive(Clone, Copy, Debug)]
pub enum Reap {
    /// Takes every completion the iterator yields.
    All,
    /// Takes at most this many, then drops the iterator (handing the rest
    /// back).
    Take(usize),
    /// Takes at most this many, then (the iterator still alive) checks
    /// `in_flight()` and adds an operation, as a crosvm-style loop that
    /// resubmits while reaping does, then takes the rest.
    AddAfter(usize, OpInput),
    /// Takes at most this many, then `mem::forget`s the iterator.
    #[allow(dead_code)] // Used by sim_ops only.
    Forget(usize),
}

impl<M: Model> World<M> {
    /// Takes one of the steps every target shares.
    pub fn step(&mut self, step: &CommonStep) {
        match step {
            CommonStep::Add(op) => self.add(op),
            CommonStep::Batch(batch) => self.add_batch(&batch),
            CommonStep::Submit => self.submit(),
            CommonStep::Reap => {
                self.reap(Reap::All);
            }
            CommonStep::ReapSome(n) => {
                self.reap(Reap::Take(usize::from(n % 4)));
            }
            CommonStep::ReapAndAdd(n, op) => {
                self.reap(Reap::AddAfter(usize::from(n % 4), *op));
            }
            CommonStep::Drain => self.drain(DRAIN_DEADLINE),
        }
    }

    pub fn new(ring: URingContext, model: M, config: RingConfig) -> World<M> {
        check_arms(&model);
        let sq_entries = ring.sq_entries() as usize;
        World {
            ring,
            book: Book {
                model,
                groups: HashMap::new(),
                in_flight: 0,
                queued: Some(0),
                sq_entries,
                config,
                own_ops: 0,
                clock: 0,
                stranded: false,
            },
        }
    }

    /// Adds one operation with `URingContext::add`.
    pub fn add(&mut self, input: &OpInput) {
        self.book.add(&self.ring, input);
    }

    /// Adds up to three operations with one `add_batch`, chained as
    /// `input` says.
    pub fn add_batch(&mut self, input: &BatchInput) {
        let mut batch = OpBatch::new();
        let mut ops = Vec::new();
        // Whether the last operation in the batch links to the next.
        let mut open = false;
        for (i, op_input) in input.ops().iter().enumerate() {
            let label = op_input.label.value();
            let opcode = op_input.opcode();
            let slot_free = self.book.slot_free(label);
            let before = batch.len();
            let link = input.link(i);
            let mode = Mode::Batch(&mut batch, link);
            let mut adder = Adder::new(mode, opcode, label, slot_free);
            build(&self.book.model, op_input, &mut adder);
            let mut pushed = adder.finish();
            let result = pushed.result.take().expect("batched");
            match pushed.spec.offset.filter(|o| *o > MAX_OFFSET) {
                Some(offset) => {
                    assert!(
                        matches!(result, Err(Error::InvalidOffset(o)) if o == offset),
                        "batching {opcode:?} at offset {offset:#x}: {result:?}"
                    );
                    assert_eq!(
                        batch.len(),
                        before,
                        "a refused operation stayed in the batch"
                    );
                }
                None => {
                    assert!(result.is_ok(), "batching {opcode:?}: {result:?}");
                    pushed.chained = open || link.is_some();
                    pushed.link = match link {
                        None => IosqeFlags::empty(),
                        Some(Link::Soft) => IosqeFlags::IO_LINK,
                        Some(Link::Hard) => IosqeFlags::IO_HARDLINK,
                    };
                    open = link.is_some();
                    ops.push((label, opcode, pushed));
                }
            }
        }
        let count = batch.len();
        let result = self.ring.add_batch(&mut batch);
        match &result {
            Ok(()) => assert!(
                batch.is_empty(),
                "add_batch left {} operations",
                batch.len()
            ),
            Err(_) => assert_eq!(batch.len(), count, "a failed add_batch changed the batch"),
        }
        if open {
            // A chain must end inside its batch: refused, nothing queued.
            assert!(
                matches!(result, Err(Error::InvalidChain(_))),
                "an open chain: {result:?}"
            );
            return;
        }
        if self.book.added(ops, &result) {
            self.submit();
        }
    }

    pub fn submit(&mut self) {
        self.book.submit(&self.ring);
    }

    pub fn check_in_flight(&self) {
        assert_eq!(
            self.ring.in_flight(),
            self.book.in_flight(),
            "in_flight() disagrees with the model, which has by label: {:?}",
            self.book.labels_in_flight()
        );
    }

    /// Reaps once: with `wait` when something in flight can complete, else
    /// with `wait_timeout`; takes what `how` says. Returns how many
    /// completions it took.
    pub fn reap(&mut self, how: Reap) -> usize {
        self.book.model.unblock();
        self.submit();
        // `wait` blocks until a completion is ready: only when one will be.
        let blocking = self.book.in_flight > 0 && !self.book.stranded;
        let taken = if blocking {
            match self.ring.wait() {
                Ok(completions) => {
                    let taken = consume(&self.ring, &mut self.book, completions, how);
                    if !matches!(how, Reap::Take(0) | Reap::Forget(0)) {
                        assert!(taken > 0, "wait returned no completion");
                    }
                    taken
                }
                Err(Error::KernelBusy(_)) => 0,
                Err(e) => panic!("wait: {e}"),
            }
        } else {
            let timeout = match self.book.in_flight {
                0 => Duration::ZERO,
                _ => self.book.model.drain_round(),
            };
            match self.ring.wait_timeout(timeout) {
                Ok(completions) => consume(&self.ring, &mut self.book, completions, how),
                Err(Error::KernelBusy(_)) => 0,
                Err(e) => panic!("wait_timeout: {e}"),
            }
        };
        if let Reap::Take(_) = how {
            // A hand-back queues a wake-up nop of the context's own and
            // submits; submit again to know the queue's fill.
            self.book.own_ops += 1;
            self.submit();
        }
        self.book.model.reaped();
        taken
    }

    /// Reaps until nothing is in flight (or, after an iterator was
    /// forgotten with completions in it, until nothing more comes).
    pub fn drain(&mut self, deadline: Duration) {
        let give_up = Instant::now() + deadline;
        while self.book.in_flight > 0 {
            assert!(
                Instant::now() < give_up,
                "operations never completed: by label {:?}",
                self.book.labels_in_flight()
            );
            self.book.model.unblock();
            self.submit();
            let round = self.book.model.drain_round();
            let completions = match self.ring.wait_timeout(round) {
                Ok(completions) => completions,
                Err(Error::KernelBusy(_)) => continue,
                Err(e) => panic!("wait_timeout: {e}"),
            };
            let mut taken = 0;
            for (label, result) in completions {
                self.book.received(label, result);
                taken += 1;
            }
            self.book.model.reaped();
            if taken == 0
                && self.book.queued == Some(0)
                && self.book.model.kernel_idle() == Some(true)
            {
                // Nothing queued, nothing in the kernel, nothing ready: what
                // is left can only be in a forgotten iterator.
                assert!(
                    self.book.stranded,
                    "operations in flight that the kernel does not hold: by label {:?}",
                    self.book.labels_in_flight()
                );
                break;
            }
        }
    }
}

/// Takes completions from `completions` as `how` says, then drops or
/// forgets it; returns how many it took.
fn consume<M: Model>(
    ring: &URingContext,
    book: &mut Book<M>,
    mut completions: impl Iterator<Item = (u64, io::Result<u32>)>,
    how: Reap,
) -> usize {
    let (limit, add_after) = match how {
        Reap::All => (usize::MAX, None),
        Reap::AddAfter(n, input) => (usize::MAX, Some((n, input))),
        Reap::Take(n) | Reap::Forget(n) => (n, None),
    };
    let mut add_after = add_after;
    let mut taken = 0;
    while taken < limit {
        if add_after.is_some_and(|(n, _)| n == taken) {
            add_while_alive(ring, book, &mut add_after, taken);
        }
        let Some((label, result)) = completions.next() else {
            break;
        };
        book.received(label, result);
        taken += 1;
    }
    // Fewer completions than asked for: add now, the iterator still alive.
    add_while_alive(ring, book, &mut add_after, taken);
    if let Reap::Forget(_) = how {
        // Its claimed and unyielded completions stay in flight until close.
        // The first claim is one completion, handed out at once, so only a
        // second claim can strand any.
        if taken == limit && taken >= 2 {
            book.stranded = true;
        }
        std::mem::forget(completions);
    }
    taken
}

/// The add of `Reap::AddAfter`, if still `pending`, while the iterator is
/// alive.
fn add_while_alive<M: Model>(
    ring: &URingContext,
    book: &mut Book<M>,
    pending: &mut Option<(usize, OpInput)>,
    taken: usize,
) {
    let Some((_, input)) = pending.take() else {
        return;
    };
    // The completions the live iterator handed out are no longer in flight;
    // those it holds still are. (`in_flight()` also settles the iterator's
    // claim record: until the context does that before resolving a cancel
    // by label, such a cancel added first would count, and queue SQEs for,
    // operations already handed out.)
    let what = "in_flight() with an iterator alive";
    assert_eq!(
        ring.in_flight(),
        book.in_flight(),
        "{what} after {taken} completions"
    );
    book.add(ring, &input);
    assert_eq!(ring.in_flight(), book.in_flight(), "{what}, after an add");
}
