//! The operations in flight: what each one owns until its completion, and
//! who waits for it.
//!
//! Each operation gets a slot, named by a key that is the operation's
//! user_data. A slot is freed only after the kernel's completion for it
//! has arrived: when the future takes the result, or, for a future dropped
//! before its completion, when the driver hands the completion in. So what
//! a slot owns (buffers, files) outlives the kernel's use of it, and a key
//! names one operation for as long as that operation can complete.

use std::any::Any;
use std::io;
use std::task::Waker;

/// An operation's user_data: the slot's generation (31 bits) above its
/// index (32 bits). Always below `1 << 63`, which the context reserves.
pub(crate) type Key = u64;

/// Slot indices stop short of `u32::MAX`: the driver's own labels use it.
const MAX_SLOTS: usize = u32::MAX as usize - 1;
const GENERATION_MASK: u32 = 0x7fff_ffff;

/// The driver's own operations' labels, which no slot's key can equal.
pub(crate) const DOORBELL: Key = u32::MAX as u64;
pub(crate) const CANCEL: Key = (1 << 32) | u32::MAX as u64;

/// What an operation owns while in flight.
pub(crate) trait InFlight: Send + 'static {
    /// The completion arrived after the future that started the
    /// operation was dropped: release what it produced (a descriptor an
    /// accept returned, say). What it owns is dropped after.
    fn abandoned(self: Box<Self>, result: io::Result<u32>);
    /// For the future to take its own type back.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

enum State {
    Free,
    /// In the kernel; `waker` is the future's.
    Waiting {
        keep: Box<dyn InFlight>,
        waker: Waker,
    },
    /// Completed; the future has not taken the result yet.
    Done {
        keep: Box<dyn InFlight>,
        result: io::Result<u32>,
    },
    /// In the kernel, its future gone: freed when the completion arrives.
    Abandoned {
        keep: Box<dyn InFlight>,
    },
}

struct Slot {
    generation: u32,
    state: State,
}

/// What [`Table::abandon`] found.
pub(crate) enum Abandoned {
    /// Still in the kernel: cancel it; the slot is freed on completion.
    /// The future's waker, to drop outside the lock.
    InKernel(Waker),
    /// Already completed: release this now (outside the lock).
    Completed(Box<dyn InFlight>, io::Result<u32>),
    /// Nothing under that key (the future had taken its result).
    Unknown,
}

#[derive(Default)]
pub(crate) struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots not free.
    used: usize,
    /// Slots whose operation is in the kernel (waiting or abandoned).
    in_kernel: usize,
}

fn index(key: Key) -> usize {
    (key & u64::from(u32::MAX)) as usize
}

impl Table {
    /// Takes a slot for an operation about to be added under the key
    /// returned; gives `keep` back when `max_in_kernel` operations are in
    /// the kernel already, or every slot is taken.
    pub(crate) fn insert(
        &mut self,
        keep: Box<dyn InFlight>,
        waker: Waker,
        max_in_kernel: usize,
    ) -> Result<Key, Box<dyn InFlight>> {
        if self.in_kernel >= max_in_kernel {
            return Err(keep);
        }
        let index = match self.free.pop() {
            Some(index) => index as usize,
            None if self.slots.len() < MAX_SLOTS => {
                self.slots.push(Slot {
                    generation: 0,
                    state: State::Free,
                });
                self.slots.len() - 1
            }
            None => return Err(keep),
        };
        let slot = &mut self.slots[index];
        slot.state = State::Waiting { keep, waker };
        self.used += 1;
        self.in_kernel += 1;
        Ok((u64::from(slot.generation) << 32) | index as u64)
    }

    /// The slot `key` names, if that operation still has one.
    fn slot(&mut self, key: Key) -> Option<&mut Slot> {
        let slot = self.slots.get_mut(index(key))?;
        let live = u64::from(slot.generation) == key >> 32 && !matches!(slot.state, State::Free);
        live.then_some(slot)
    }

    fn free(&mut self, key: Key) -> State {
        let index = index(key);
        let slot = &mut self.slots[index];
        slot.generation = slot.generation.wrapping_add(1) & GENERATION_MASK;
        self.free.push(index as u32);
        self.used -= 1;
        std::mem::replace(&mut slot.state, State::Free)
    }

    /// Gives back what `key`'s operation owns, and the future's waker (to
    /// drop outside the lock), for an add the context refused (the kernel
    /// never saw it).
    pub(crate) fn remove_unsubmitted(&mut self, key: Key) -> (Box<dyn InFlight>, Waker) {
        self.in_kernel -= 1;
        match self.free(key) {
            State::Waiting { keep, waker } => (keep, waker),
            _ => unreachable!("an operation whose add failed is waiting"),
        }
    }

    /// The kernel's completion for `key`. Returns the waker to wake, or
    /// what an abandoned operation owned, to release outside the lock.
    /// Completions under no live key (none is expected) are ignored.
    pub(crate) fn complete(&mut self, key: Key, result: io::Result<u32>) -> Completed {
        let Some(slot) = self.slot(key) else {
            return Completed::Nobody;
        };
        match std::mem::replace(&mut slot.state, State::Free) {
            State::Waiting { keep, waker } => {
                slot.state = State::Done { keep, result };
                self.in_kernel -= 1;
                Completed::Wake(waker)
            }
            State::Abandoned { keep } => {
                self.in_kernel -= 1;
                self.free(key);
                Completed::Release(keep, result)
            }
            other @ (State::Done { .. } | State::Free) => {
                // A second completion for a one-shot operation: keep the
                // first.
                slot.state = other;
                Completed::Nobody
            }
        }
    }

    /// The future's poll: its result and what it owned once completed;
    /// else its waker is replaced, and the one it replaced is returned, to
    /// drop outside the lock (dropping a waker can drop a task, whose
    /// futures' drops take this lock).
    pub(crate) fn poll(&mut self, key: Key, waker: &Waker) -> Polled {
        let slot = self.slot(key).expect("a future polls its own live slot");
        match &mut slot.state {
            State::Waiting { waker: old, .. } if old.will_wake(waker) => Polled::Pending(None),
            State::Waiting { waker: old, .. } => {
                Polled::Pending(Some(std::mem::replace(old, waker.clone())))
            }
            State::Done { .. } => match self.free(key) {
                State::Done { keep, result } => Polled::Ready(result, keep),
                _ => unreachable!(),
            },
            State::Abandoned { .. } | State::Free => unreachable!("only a dropped future abandons"),
        }
    }

    /// The future of `key` is dropped.
    pub(crate) fn abandon(&mut self, key: Key) -> Abandoned {
        let Some(slot) = self.slot(key) else {
            return Abandoned::Unknown;
        };
        match std::mem::replace(&mut slot.state, State::Free) {
            State::Waiting { keep, waker } => {
                slot.state = State::Abandoned { keep };
                Abandoned::InKernel(waker)
            }
            State::Done { keep, result } => {
                self.free(key);
                Abandoned::Completed(keep, result)
            }
            other => {
                slot.state = other;
                Abandoned::Unknown
            }
        }
    }

    /// Operations with a slot: in the kernel, or completed and not taken.
    pub(crate) fn len(&self) -> usize {
        self.used
    }

    /// Operations in the kernel.
    pub(crate) fn in_kernel(&self) -> usize {
        self.in_kernel
    }
}

/// What [`Table::poll`] found.
pub(crate) enum Polled {
    Ready(io::Result<u32>, Box<dyn InFlight>),
    /// Not yet; the waker it replaced, if another.
    Pending(Option<Waker>),
}

/// What a completion does, decided under the table's lock.
pub(crate) enum Completed {
    Wake(Waker),
    Release(Box<dyn InFlight>, io::Result<u32>),
    Nobody,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counted(Arc<AtomicUsize>);
    impl InFlight for Counted {
        fn abandoned(self: Box<Self>, _: io::Result<u32>) {}
        fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
            self
        }
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_reused_slot_has_a_new_key_and_a_stale_completion_touches_nothing() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut table = Table::default();
        let waker = futures::task::noop_waker();
        let first = table
            .insert(Box::new(Counted(drops.clone())), waker.clone(), usize::MAX)
            .ok()
            .unwrap();
        assert!(matches!(table.complete(first, Ok(1)), Completed::Wake(_)));
        let Polled::Ready(result, keep) = table.poll(first, &waker) else {
            panic!("completed");
        };
        assert_eq!(result.unwrap(), 1);
        drop(keep);
        let second = table
            .insert(Box::new(Counted(drops.clone())), waker.clone(), usize::MAX)
            .ok()
            .unwrap();
        assert_eq!(index(first), index(second));
        assert_ne!(first, second);
        assert!(matches!(table.complete(first, Ok(2)), Completed::Nobody));
        assert!(matches!(table.abandon(first), Abandoned::Unknown));
        assert!(
            matches!(table.poll(second, &waker), Polled::Pending(None)),
            "the stale completion went nowhere"
        );
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_ne!(
            index(second),
            index(DOORBELL),
            "no slot takes the labels of the driver"
        );
    }

    #[test]
    fn an_abandoned_operation_is_released_by_its_completion_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut table = Table::default();
        let waker = futures::task::noop_waker();
        let key = table
            .insert(Box::new(Counted(drops.clone())), waker, usize::MAX)
            .ok()
            .unwrap();
        assert!(matches!(table.abandon(key), Abandoned::InKernel(_)));
        assert_eq!(drops.load(Ordering::SeqCst), 0, "kept while in the kernel");
        match table.complete(key, Ok(0)) {
            Completed::Release(keep, _) => drop(keep),
            _ => panic!("the completion releases it"),
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(matches!(table.complete(key, Ok(0)), Completed::Nobody));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn no_slot_is_taken_past_the_limit_of_operations_in_the_kernel() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut table = Table::default();
        let waker = futures::task::noop_waker();
        let first = table.insert(Box::new(Counted(drops.clone())), waker.clone(), 2);
        let second = table.insert(Box::new(Counted(drops.clone())), waker.clone(), 2);
        let (first, second) = (first.ok().unwrap(), second.ok().unwrap());
        assert!(table
            .insert(Box::new(Counted(drops.clone())), waker.clone(), 2)
            .is_err());
        // An abandoned operation is still in the kernel.
        assert!(matches!(table.abandon(first), Abandoned::InKernel(_)));
        assert!(table
            .insert(Box::new(Counted(drops.clone())), waker.clone(), 2)
            .is_err());
        // A completed one is not, though its future has not taken it yet.
        assert!(matches!(table.complete(second, Ok(0)), Completed::Wake(_)));
        let third = table.insert(Box::new(Counted(drops.clone())), waker.clone(), 2);
        assert!(third.is_ok());
        assert_eq!(
            drops.load(Ordering::SeqCst),
            2,
            "the refused two were given back"
        );
    }
}
