//! [`LabelTable`]: a value per caller label (user_data) in flight.
//!
//! An open-addressing table with linear probing and backward-shift
//! deletion, kept at most half full. It does exactly what the label rule
//! needs (find, insert, remove) with one hash and a short probe, where
//! `std`'s map cost about a sixth of a nop's round trip. The hash is a
//! folded multiply of the label with a per-table random key, so a caller's
//! choice of labels cannot line up collisions on purpose.

use std::hash::BuildHasher;

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
        const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
        // The full 128-bit product, folded, so every input bit reaches the
        // low bits that pick the slot.
        let product = u128::from(user_data ^ self.key) * u128::from(MULTIPLIER);
        ((product as u64) ^ ((product >> 64) as u64)) as usize & self.mask()
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

    #[cfg(test)]
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

    /// The value under `user_data`, if any, to change in place.
    #[inline]
    pub(crate) fn get_mut(&mut self, user_data: u64) -> Option<&mut T> {
        let i = self.find(user_data)?;
        self.slots[i].as_mut().map(|(_, value)| value)
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
        for spread in [16u64, 1 << 20] {
            let mut table = LabelTable::new();
            let mut model = HashMap::new();
            let mut x = 0x2545_f491_4f6c_dd1du64 ^ spread;
            for step in 0..steps {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let user_data = (x % spread) << 40 | (x % spread);
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
}
