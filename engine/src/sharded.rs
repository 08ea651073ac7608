//! A hash map that never stops its caller for long to grow.
//!
//! A `HashMap` grows by moving every entry into a table twice the size, in the insert that
//! found it full. At the DHCP server's scale (up to 2^20 addresses) that one insert rehashes a
//! few hundred thousand entries and touches tens of MiB of fresh memory: it was measured
//! holding the event loop for up to 28 ms, with every request queued behind it.
//!
//! [`ShardedMap`] splits the entries over [`SHARDS`] maps by a keyed hash of its own, so a
//! shard holds about 1/256 of them and growing it moves only those. Every shard also uses a
//! random key for its own buckets, so a sender who picks the keys (client identifiers, MACs)
//! can neither pile them into one shard nor into one bucket chain.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};

/// Shards per map: the largest pause is a resize of 1/256 of the entries, and an empty map
/// costs 256 empty `HashMap`s (12 KiB, nothing allocated inside them).
pub const SHARDS: usize = 256;

/// A `HashMap` of [`SHARDS`] shards; see the module documentation.
#[derive(Debug, Clone)]
pub struct ShardedMap<K, V> {
    shards: Box<[HashMap<K, V>]>,
    /// Picks the shard; independent of each shard's own hasher, so a shard's keys still
    /// spread over all of its buckets.
    pick: RandomState,
    len: usize,
}

impl<K: Hash + Eq, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
            pick: RandomState::new(),
            len: 0,
        }
    }

    fn index<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        // The top bits: the best mixed of SipHash's output.
        (self.pick.hash_one(key) >> (64 - SHARDS.trailing_zeros())) as usize
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.shards[self.index(key)].get(key)
    }

    pub fn get_key_value(&self, key: &K) -> Option<(&K, &V)> {
        self.shards[self.index(key)].get_key_value(key)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = self.index(key);
        self.shards[i].get_mut(key)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.shards[self.index(key)].contains_key(key)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let i = self.index(&key);
        let old = self.shards[i].insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.index(key);
        let old = self.shards[i].remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(HashMap::values)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(HashMap::iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The map behaves as a `HashMap` through inserts, replacements and removals, and its
    /// length stays exact.
    #[test]
    fn it_keeps_what_a_hash_map_keeps() {
        let mut map = ShardedMap::new();
        let mut reference = HashMap::new();
        for i in 0u32..20_000 {
            let key = i.wrapping_mul(2_654_435_761) % 5_000;
            match i % 3 {
                0 | 1 => assert_eq!(map.insert(key, i), reference.insert(key, i)),
                _ => assert_eq!(map.remove(&key), reference.remove(&key)),
            }
            assert_eq!(map.len(), reference.len());
        }
        for (k, v) in &reference {
            assert_eq!(map.get(k), Some(v));
            assert_eq!(map.get_key_value(k), Some((k, v)));
            assert!(map.contains_key(k));
        }
        assert_eq!(map.iter().count(), reference.len());
        assert_eq!(map.values().map(|v| u64::from(*v)).sum::<u64>(), {
            reference.values().map(|v| u64::from(*v)).sum::<u64>()
        });
        if let Some(v) = map.get_mut(&7) {
            *v = 1;
        }
        assert!(map.get(&7).is_none_or(|v| *v == 1));
    }

    /// Keys spread over the shards: with 256 × 100 keys no shard holds more than three times
    /// its share, so no shard's growth moves much more than 1/256 of the map.
    #[test]
    fn keys_spread_over_every_shard() {
        let mut map = ShardedMap::new();
        for i in 0u32..(SHARDS as u32 * 100) {
            map.insert(std::net::Ipv4Addr::from(0x0a00_0000 + i), ());
        }
        let largest = map.shards.iter().map(HashMap::len).max().unwrap_or(0);
        let empty = map.shards.iter().filter(|s| s.is_empty()).count();
        assert!(largest < 300, "largest shard {largest}");
        assert_eq!(empty, 0);
    }
}
