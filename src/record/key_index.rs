//! The open segment's search index: which batches hold each identity, query id and request
//! id. Kept in hash tables split into [`SHARDS`] shards, so that growing never rehashes more
//! than a shard at once. One table of a segment's ~900,000 query ids would rehash them all
//! when it doubles, tens of milliseconds on the recorder thread, during which no batch is
//! written (and, on a CPU shared with a core, nothing else runs). No I/O.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::format::{FooterIndex, IndexKind};

/// Shards per key kind. A shard holds about 1/256 of the keys, so its rehash is that much
/// shorter (a few hundred microseconds at the largest segment).
pub(crate) const SHARDS: usize = 256;

/// The key kinds, in the order of their tables.
pub(crate) const KINDS: [IndexKind; 3] = [IndexKind::Identity, IndexKind::QueryId, IndexKind::RequestId];

fn kind_slot(kind: IndexKind) -> usize {
    match kind {
        IndexKind::Identity => 0,
        IndexKind::QueryId => 1,
        IndexKind::RequestId => 2,
    }
}

/// A key and the ordinals of the batches that hold it, in increasing order.
type Entry = (Box<str>, Vec<u32>);

/// The index of an open segment, with the counts its footer's size limits need.
pub(crate) struct KeyIndex {
    /// Seeded per index: the keys come from agents and upstream, so their hashes must not be
    /// predictable.
    hasher: DefaultHashBuilder,
    /// `SHARDS` tables per kind, kind-major.
    tables: Vec<HashTable<Entry>>,
    /// Distinct keys.
    pub(crate) n_keys: usize,
    /// Bytes the distinct keys take in the footer (7 bytes of framing each).
    pub(crate) key_bytes: usize,
    /// (key, batch) references.
    pub(crate) refs: usize,
}

impl Default for KeyIndex {
    fn default() -> KeyIndex {
        KeyIndex {
            hasher: DefaultHashBuilder::default(),
            tables: (0..KINDS.len() * SHARDS).map(|_| HashTable::new()).collect(),
            n_keys: 0,
            key_bytes: 0,
            refs: 0,
        }
    }
}

impl KeyIndex {
    /// Notes that batch `ordinal` holds `key`. Ordinals arrive in increasing order.
    pub(crate) fn add(&mut self, kind: IndexKind, key: &str, ordinal: u32) {
        let hash = self.hasher.hash_one(key);
        // The table picks buckets with the low bits and tags them with the top seven: the
        // shard takes bits from the middle, which neither uses.
        let shard = (hash >> 32) as usize % SHARDS;
        let table = &mut self.tables[kind_slot(kind) * SHARDS + shard];
        match table.find_mut(hash, |(k, _)| &**k == key) {
            Some((_, ordinals)) => {
                if ordinals.last() != Some(&ordinal) {
                    ordinals.push(ordinal);
                    self.refs += 1;
                }
            }
            None => {
                let hasher = &self.hasher;
                table.insert_unique(hash, (key.into(), vec![ordinal]), |(k, _)| hasher.hash_one(&**k));
                self.n_keys += 1;
                self.key_bytes += 7 + key.len();
                self.refs += 1;
            }
        }
    }

    /// The footer's index. The keys are copied, not taken: a seal that fails to write leaves
    /// the segment open, index and all.
    pub(crate) fn footer_index(&self) -> FooterIndex {
        let mut index = FooterIndex::new();
        for (slot, table) in self.tables.iter().enumerate() {
            let kind = KINDS[slot / SHARDS];
            for (key, ordinals) in table {
                index.insert((kind, key.to_string()), ordinals.clone());
            }
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index a plain map builds from the same additions.
    fn reference(additions: &[(IndexKind, String, u32)]) -> FooterIndex {
        let mut index = FooterIndex::new();
        for (kind, key, ordinal) in additions {
            let ordinals: &mut Vec<u32> = index.entry((*kind, key.clone())).or_default();
            if ordinals.last() != Some(ordinal) {
                ordinals.push(*ordinal);
            }
        }
        index
    }

    proptest::proptest! {
        #[test]
        fn equals_a_plain_map(
            batches in proptest::collection::vec(
                proptest::collection::vec((0usize..3, 0u32..2_000), 0..40), 0..60),
        ) {
            let mut additions = Vec::new();
            for (ordinal, keys) in batches.iter().enumerate() {
                for &(kind, key) in keys {
                    additions.push((KINDS[kind], format!("key-{key}"), ordinal as u32));
                }
            }
            let mut index = KeyIndex::default();
            for (kind, key, ordinal) in &additions {
                index.add(*kind, key, *ordinal);
            }
            let expected = reference(&additions);
            proptest::prop_assert_eq!(index.n_keys, expected.len());
            proptest::prop_assert_eq!(index.refs, expected.values().map(Vec::len).sum::<usize>());
            proptest::prop_assert_eq!(
                index.key_bytes,
                expected.keys().map(|(_, key)| 7 + key.len()).sum::<usize>()
            );
            proptest::prop_assert_eq!(index.footer_index(), expected);
        }
    }

    #[test]
    fn spreads_keys_over_the_shards() {
        let mut index = KeyIndex::default();
        for i in 0..100_000u32 {
            index.add(IndexKind::QueryId, &format!("01b2c3d4-0000-4000-8000-{i:012}"), i / 8);
        }
        let sizes: Vec<usize> = index.tables[SHARDS..2 * SHARDS].iter().map(HashTable::len).collect();
        let largest = sizes.iter().copied().max().unwrap();
        // 390 keys a shard on average: no shard holds much more than that.
        assert!(largest < 2 * 100_000 / SHARDS, "largest shard {largest}");
        assert_eq!(sizes.iter().sum::<usize>(), 100_000);
    }
}
