//! A least-recently-used order of weighted entries, bounded by their total weight: the one
//! behind every cache of the workspace (the FUSE view's verified chunks, each tier of the
//! spoke's chunk cache).
//!
//! Each entry has a key, a value and a weight (bytes, for chunks). Inserting or reading an
//! entry ([`Lru::insert`], [`Lru::get`], [`Lru::touch`]) makes it the most recently used; an
//! insertion that takes the total weight above the capacity evicts the least recently used
//! entries, other than the one inserted, until the total is within it again (so an entry
//! heavier than the capacity is kept alone rather than refused). A cache whose eviction follows
//! a policy of its own (watermarks, entries that must stay) makes an unbounded one
//! ([`Lru::unbounded`]) and picks victims from [`Lru::iter`], oldest first.
//!
//! Operations take O(log n): a hash map from key to entry, and a B-tree from the moment of each
//! entry's last use to its key. No `unsafe`, no linked list. Not synchronised: callers hold it
//! under their own lock, with whatever else that lock guards.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Entries in least-recently-used order, their total weight bounded by a capacity.
#[derive(Debug, Clone)]
pub struct Lru<K, V> {
    capacity: u64,
    weight: u64,
    /// Counts uses: each use of an entry gets the next number.
    tick: u64,
    entries: HashMap<K, Entry<V>>,
    /// Moment of last use -> key, oldest first.
    order: BTreeMap<u64, K>,
}

#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    weight: u64,
    tick: u64,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// An empty order whose entries together weigh at most `capacity` (but for one entry
    /// heavier than that, kept alone).
    pub fn new(capacity: u64) -> Self {
        Self { capacity, weight: 0, tick: 0, entries: HashMap::new(), order: BTreeMap::new() }
    }

    /// An empty order that never evicts by itself: its owner decides what leaves, and when.
    pub fn unbounded() -> Self {
        Self::new(u64::MAX)
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The total weight of the entries.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` has an entry (not a use: the order does not change).
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// The value of `key`, without marking it used.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|e| &e.value)
    }

    /// The value of `key` to change in place, without marking it used.
    pub fn peek_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|e| &mut e.value)
    }

    /// The weight of `key`'s entry.
    pub fn weight_of(&self, key: &K) -> Option<u64> {
        self.entries.get(key).map(|e| e.weight)
    }

    /// The value of `key`, marked as just used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.touch(key);
        self.peek(key)
    }

    /// Marks `key` as just used; false if it has no entry.
    pub fn touch(&mut self, key: &K) -> bool {
        self.tick += 1;
        let tick = self.tick;
        let Some(entry) = self.entries.get_mut(key) else { return false };
        let old = std::mem::replace(&mut entry.tick, tick);
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(tick, k);
        }
        true
    }

    /// Puts `value` under `key` with `weight`, as the most recently used entry (replacing the
    /// entry `key` had), then evicts the least recently used others while the total weight is
    /// above the capacity. Returns what was evicted, oldest first (not the replaced value).
    pub fn insert(&mut self, key: K, value: V, weight: u64) -> Vec<(K, V, u64)> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(old) = self.entries.insert(key.clone(), Entry { value, weight, tick }) {
            self.order.remove(&old.tick);
            self.weight -= old.weight;
        }
        self.order.insert(tick, key);
        self.weight += weight;
        let mut evicted = Vec::new();
        // The newest entry (the one just inserted) is last in the order: it never goes.
        while self.weight > self.capacity && self.entries.len() > 1 {
            match self.pop_oldest() {
                Some(gone) => evicted.push(gone),
                None => break,
            }
        }
        evicted
    }

    /// Removes `key`'s entry; returns its value and weight.
    pub fn remove(&mut self, key: &K) -> Option<(V, u64)> {
        let entry = self.entries.remove(key)?;
        self.order.remove(&entry.tick);
        self.weight -= entry.weight;
        Some((entry.value, entry.weight))
    }

    /// Removes the least recently used entry.
    pub fn pop_oldest(&mut self) -> Option<(K, V, u64)> {
        let (_, key) = self.order.pop_first()?;
        let entry = self.entries.remove(&key)?;
        self.weight -= entry.weight;
        Some((key, entry.value, entry.weight))
    }

    /// The entries with their weights, least recently used first.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V, u64)> {
        self.order.values().filter_map(|k| self.entries.get_key_value(k).map(|(k, e)| (k, &e.value, e.weight)))
    }
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    fn keys<V>(lru: &Lru<u8, V>) -> Vec<u8> {
        lru.iter().map(|(k, _, _)| *k).collect()
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_bound_holds() {
        let mut lru = Lru::new(250);
        assert!(lru.insert(0, "a", 100).is_empty());
        assert!(lru.insert(1, "b", 100).is_empty());
        assert_eq!(lru.get(&0), Some(&"a"));
        // 0 was used after 1: 1 goes.
        assert_eq!(lru.insert(2, "c", 100), vec![(1, "b", 100)]);
        assert_eq!(keys(&lru), [0, 2]);
        assert_eq!(lru.weight(), 200);
        // Peeking is not using.
        assert_eq!(lru.peek(&0), Some(&"a"));
        assert_eq!(lru.insert(3, "d", 100), vec![(0, "a", 100)]);
        assert!(!lru.contains(&0) && lru.contains(&2) && lru.contains(&3));
    }

    #[test]
    fn an_entry_heavier_than_the_capacity_is_kept_alone() {
        let mut lru = Lru::new(10);
        lru.insert(1, (), 4);
        lru.insert(2, (), 4);
        assert_eq!(lru.insert(3, (), 50), vec![(1, (), 4), (2, (), 4)]);
        assert_eq!((keys(&lru), lru.weight()), (vec![3], 50));
        // The next insertion evicts it.
        assert_eq!(lru.insert(4, (), 1), vec![(3, (), 50)]);
    }

    #[test]
    fn replacing_an_entry_counts_its_new_weight_and_makes_it_the_newest() {
        let mut lru = Lru::unbounded();
        lru.insert(1, 'a', 10);
        lru.insert(2, 'b', 10);
        lru.insert(1, 'c', 3);
        assert_eq!((lru.weight(), lru.len(), keys(&lru)), (13, 2, vec![2, 1]));
        assert_eq!(lru.peek(&1), Some(&'c'));
        *lru.peek_mut(&1).unwrap() = 'd';
        assert_eq!(lru.remove(&1), Some(('d', 3)));
        assert_eq!(lru.remove(&1), None);
        assert_eq!((lru.weight(), lru.pop_oldest(), lru.pop_oldest()), (10, Some((2, 'b', 10)), None));
        assert!(lru.is_empty() && lru.weight() == 0 && !lru.touch(&2));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, u64),
        Get(u8),
        Peek(u8),
        Remove(u8),
        PopOldest,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..12u8, 0..60u64).prop_map(|(k, w)| Op::Insert(k, w)),
            3 => (0..12u8).prop_map(Op::Get),
            1 => (0..12u8).prop_map(Op::Peek),
            2 => (0..12u8).prop_map(Op::Remove),
            1 => Just(Op::PopOldest),
        ]
    }

    proptest! {
        #![proptest_config(fuzz::config(2000))]

        /// The LRU against the plainest model there is: a list in order of use, oldest first,
        /// searched from end to end. After every operation both hold the same entries in the
        /// same order with the same weights, and say the same.
        #[test]
        fn fuzz_lru_against_a_model(capacity in 0..200u64, ops in proptest::collection::vec(op(), 0..120)) {
            let mut lru = Lru::new(capacity);
            let mut model: Vec<(u8, u64, u64)> = Vec::new(); // key, value, weight
            for (n, op) in ops.into_iter().enumerate() {
                let value = n as u64;
                match op {
                    Op::Insert(k, w) => {
                        model.retain(|e| e.0 != k);
                        model.push((k, value, w));
                        let mut evicted = Vec::new();
                        while model.iter().map(|e| e.2).sum::<u64>() > capacity && model.len() > 1 {
                            evicted.push(model.remove(0));
                        }
                        prop_assert_eq!(lru.insert(k, value, w), evicted);
                    }
                    Op::Get(k) => {
                        let found = model.iter().position(|e| e.0 == k).map(|i| model.remove(i));
                        if let Some(e) = found {
                            model.push(e);
                        }
                        prop_assert_eq!(lru.get(&k).copied(), found.map(|e| e.1));
                    }
                    Op::Peek(k) => {
                        prop_assert_eq!(lru.peek(&k).copied(), model.iter().find(|e| e.0 == k).map(|e| e.1));
                        prop_assert_eq!(lru.contains(&k), model.iter().any(|e| e.0 == k));
                    }
                    Op::Remove(k) => {
                        let found = model.iter().position(|e| e.0 == k).map(|i| model.remove(i));
                        prop_assert_eq!(lru.remove(&k), found.map(|e| (e.1, e.2)));
                    }
                    Op::PopOldest => {
                        let oldest = (!model.is_empty()).then(|| model.remove(0));
                        prop_assert_eq!(lru.pop_oldest(), oldest);
                    }
                }
                let held: Vec<(u8, u64, u64)> = lru.iter().map(|(k, v, w)| (*k, *v, w)).collect();
                prop_assert_eq!(&held, &model);
                prop_assert_eq!(lru.weight(), model.iter().map(|e| e.2).sum::<u64>());
                prop_assert_eq!(lru.len(), model.len());
            }
        }
    }
}
