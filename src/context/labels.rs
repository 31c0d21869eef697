//! The label rule's bookkeeping: which labels (caller user_data values) are
//! in flight, paid in full only by operations that pin caller memory.
//!
//! - [`LabelTable`]: the labels of operations that pin memory, exactly,
//!   with the slot of each (such a label has one operation in flight). An
//!   open-addressing table with linear probing and backward-shift deletion,
//!   kept at most half full: one hash and a short probe, where `std`'s map
//!   cost about a sixth of a nop's round trip. The hash is a folded
//!   multiply of the label with a per-table random key, so a caller's
//!   choice of labels cannot line up collisions on purpose.
//! - [`UnpinnedCounts`]: for every other operation, a count per hash
//!   bucket of its label (a counting filter): adding a nop costs a hash
//!   and an increment, releasing it a decrement (its slot keeps the
//!   bucket). A zero means no such operation has the label; a non-zero may
//!   be another label's. Only an operation that
//!   pins memory, and a cancellation or poll removal by label, read the
//!   filter, and on a non-zero they scan every slot of the table for the
//!   label. The filter is kept at most half full, so
//!   with many other operations in flight that scan can run for up to about
//!   two fifths of pinning adds (1 − e^-load, at load ½): the price of
//!   giving nops no exact table.

use std::hash::BuildHasher;

/// Hashes a label with a per-table random `key`: a folded multiply, the
/// full 128-bit product folded so every input bit reaches the low bits that
/// pick a slot or bucket, and a caller's choice of labels cannot line up
/// collisions without knowing the key.
#[inline]
fn fold_hash(label: u64, key: u64) -> usize {
    const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
    let product = u128::from(label ^ key) * u128::from(MULTIPLIER);
    ((product as u64) ^ ((product >> 64) as u64)) as usize
}

/// Slots in a new table; it doubles when more than half full.
const INITIAL_SLOTS: usize = 64;

pub(crate) struct LabelTable<T> {
    /// `None` is an empty slot. Every key sits at or after its home slot
    /// (cyclically), with no empty slot in between: what linear probing
    /// needs to find it.
    slots: Box<[Option<(u64, T)>]>,
    len: usize,
    key: u64,
}

impl<T> LabelTable<T> {
    pub(crate) fn new() -> Self {
        LabelTable {
            slots: Self::empty_slots(INITIAL_SLOTS),
            len: 0,
            key: std::collections::hash_map::RandomState::new().hash_one(0u64),
        }
    }

    fn empty_slots(count: usize) -> Box<[Option<(u64, T)>]> {
        std::iter::repeat_with(|| None).take(count).collect()
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot where probing for `user_data` starts.
    #[inline]
    fn home(&self, user_data: u64) -> usize {
        fold_hash(user_data, self.key) & self.mask()
    }

    /// The slot holding `user_data`, if any.
    #[inline]
    fn find(&self, user_data: u64) -> Option<usize> {
        let mut i = self.home(user_data);
        loop {
            match &self.slots[i] {
                None => return None,
                Some((k, _)) if *k == user_data => return Some(i),
                Some(_) => i = (i + 1) & self.mask(),
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, user_data: u64) -> bool {
        self.find(user_data).is_some()
    }

    /// The value under `user_data`, if any.
    #[inline]
    pub(crate) fn get(&self, user_data: u64) -> Option<&T> {
        let i = self.find(user_data)?;
        self.slots[i].as_ref().map(|(_, value)| value)
    }

    /// Inserts `state` under `user_data`, unless that key is present: then
    /// hands `state` back.
    #[inline]
    pub(crate) fn insert(&mut self, user_data: u64, state: T) -> Result<(), T> {
        if 2 * (self.len + 1) > self.slots.len() {
            self.grow();
        }
        let mut i = self.home(user_data);
        loop {
            match &self.slots[i] {
                None => break,
                Some((k, _)) if *k == user_data => return Err(state),
                Some(_) => i = (i + 1) & self.mask(),
            }
        }
        self.slots[i] = Some((user_data, state));
        self.len += 1;
        Ok(())
    }

    /// Removes `user_data`, returning its state.
    #[inline]
    pub(crate) fn remove(&mut self, user_data: u64) -> Option<T> {
        let mut hole = self.find(user_data)?;
        let (_, state) = self.slots[hole].take()?;
        self.len -= 1;
        // Close the hole: move back each later key of the run that may not
        // sit after it (its home is not cyclically within (hole, j]).
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask();
            let Some((k, _)) = &self.slots[j] else {
                break;
            };
            let home = self.home(*k);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = self.slots[j].take();
                hole = j;
            }
        }
        Some(state)
    }

    fn grow(&mut self) {
        let doubled = Self::empty_slots(2 * self.slots.len());
        let old = std::mem::replace(&mut self.slots, doubled);
        self.len = 0;
        for (user_data, state) in old.into_vec().into_iter().flatten() {
            // Keys are unique, so this cannot fail.
            let _ = self.insert(user_data, state);
        }
    }

    /// Every key, in no particular order.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots.iter().flatten().map(|(k, _)| *k)
    }
}

/// Per-bucket counts of the labels of operations in flight that pin no
/// memory; see the module docs. Kept at least twice as many buckets as
/// counted operations (rebuilt at twice the size when more than half
/// full).
pub(crate) struct UnpinnedCounts {
    counts: Box<[u32]>,
    /// Operations counted.
    total: usize,
    key: u64,
}

/// Buckets in a new filter.
const INITIAL_BUCKETS: usize = 256;

impl UnpinnedCounts {
    pub(crate) fn new() -> UnpinnedCounts {
        UnpinnedCounts {
            counts: vec![0; INITIAL_BUCKETS].into_boxed_slice(),
            total: 0,
            key: std::collections::hash_map::RandomState::new().hash_one(1u64),
        }
    }

    #[inline]
    fn bucket(&self, label: u64) -> usize {
        fold_hash(label, self.key) & (self.counts.len() - 1)
    }

    /// Operations counted.
    pub(crate) fn len(&self) -> usize {
        self.total
    }

    /// Whether an operation with `label` may be counted: `false` means
    /// certainly not.
    #[inline]
    pub(crate) fn may_contain(&self, label: u64) -> bool {
        self.counts[self.bucket(label)] != 0
    }

    /// Counts one more operation with `label`. Returns its bucket, for
    /// [`remove`](Self::remove), and whether the filter is now too full:
    /// then count every operation again after
    /// [`clear_and_grow`](Self::clear_and_grow).
    #[inline]
    pub(crate) fn add(&mut self, label: u64) -> (u32, bool) {
        let bucket = self.bucket(label);
        self.counts[bucket] += 1;
        self.total += 1;
        (bucket as u32, 2 * self.total > self.counts.len())
    }

    /// Counts one operation fewer in `bucket`, which [`add`](Self::add)
    /// returned for it (since the last [`clear_and_grow`](Self::clear_and_grow)).
    #[inline]
    pub(crate) fn remove(&mut self, bucket: u32) {
        self.counts[bucket as usize] -= 1;
        self.total -= 1;
    }

    /// Empties the filter and doubles its buckets, for every operation to
    /// be counted again.
    pub(crate) fn clear_and_grow(&mut self) {
        self.counts = vec![0; 2 * self.counts.len()].into_boxed_slice();
        self.total = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Random inserts and removes, checked against `HashMap`, on keys that
    /// share home slots often (few distinct values) and on keys that differ
    /// only in their high bits.
    #[test]
    fn agrees_with_a_hash_map_under_random_inserts_and_removes() {
        let steps = if cfg!(miri) { 2_000 } else { 200_000 };
        for (spread, shift) in [(16u64, 0), (1 << 20, 40)] {
            let mut table = LabelTable::new();
            let mut model = HashMap::new();
            let mut x = 0x2545_f491_4f6c_dd1du64 ^ spread;
            for step in 0..steps {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let user_data = (x % spread) << shift;
                if x % 3 == 0 {
                    assert_eq!(
                        table.remove(user_data),
                        model.remove(&user_data),
                        "step {step}"
                    );
                } else {
                    let fresh = !model.contains_key(&user_data);
                    assert_eq!(table.insert(user_data, step).is_ok(), fresh, "step {step}");
                    model.entry(user_data).or_insert(step);
                }
                assert_eq!(table.len(), model.len());
            }
            for (&k, v) in &model {
                assert!(table.contains(k));
                assert_eq!(table.remove(k), Some(*v));
            }
            assert_eq!(table.len(), 0);
            assert_eq!(table.keys().count(), 0);
        }
    }

    #[test]
    fn the_unpinned_counts_never_miss_a_label_they_hold() {
        let mut counts = UnpinnedCounts::new();
        let labels: Vec<u64> = (0..2000).map(|i| i * 0x1_0000_0001).collect();
        let mut buckets = Vec::new();
        for (i, &label) in labels.iter().enumerate() {
            let (bucket, too_full) = counts.add(label);
            buckets.push(bucket);
            if too_full {
                counts.clear_and_grow();
                buckets = labels[..=i].iter().map(|&l| counts.add(l).0).collect();
            }
        }
        assert!(counts.counts.len() >= 2 * labels.len());
        assert!(labels.iter().all(|&label| counts.may_contain(label)));
        for bucket in buckets {
            counts.remove(bucket);
        }
        assert_eq!(counts.len(), 0);
        assert!(labels.iter().all(|&label| !counts.may_contain(label)));
    }
}
