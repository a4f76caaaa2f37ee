//! The open segment's search index: which batches hold each identity, query id and request
//! id. Kept in hash tables split into [`SHARDS`] shards, so that growing never rehashes more
//! than a shard at once. One table of a segment's ~900,000 query ids would rehash them all
//! when it doubles, tens of milliseconds on the recorder thread, during which no batch is
//! written (and, on a CPU shared with a core, nothing else runs). Keys live in one arena;
//! the seal reads the index as sorted, borrowed entries, not a copy. No I/O.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::format::{IndexEntry, IndexKind};

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

/// A key (its bytes in the index's arena) and the ordinals of the batches that hold it, in
/// increasing order.
struct Entry {
    /// The key's first 16 bytes, zero-padded, big-endian: sorting by it orders keys as their
    /// bytes do, except between keys it cannot tell apart, so the seal's sort compares keys
    /// themselves only on a tie, and reads no key from memory to compare.
    prefix: u128,
    /// Where the key's bytes start in the arena.
    at: u32,
    /// The key's length.
    len: u32,
    /// The first batch holding the key; most keys (query and request ids) are in one batch,
    /// so they need no allocation, and dropping the index frees none.
    first: u32,
    /// The batches after the first, ascending.
    more: Vec<u32>,
}

impl Entry {
    /// The key's bytes in `arena`.
    fn key<'a>(&self, arena: &'a [u8]) -> &'a [u8] {
        &arena[self.at as usize..self.at as usize + self.len as usize]
    }

    fn last(&self) -> u32 {
        self.more.last().copied().unwrap_or(self.first)
    }
}

/// A key's sort prefix (see [`Entry::prefix`]).
fn prefix(key: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let n = key.len().min(16);
    bytes[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(bytes)
}

/// The index of an open segment, with the counts its footer's size limits need.
pub(crate) struct KeyIndex {
    /// Seeded per index: the keys come from agents and upstream, so their hashes must not be
    /// predictable.
    hasher: DefaultHashBuilder,
    /// `SHARDS` tables per kind, kind-major.
    tables: Vec<HashTable<Entry>>,
    /// Every key's bytes, back to back: one growing buffer instead of an allocation per key,
    /// and the seal reads keys from one place. At most the footer's size (32 MiB soft), so
    /// offsets fit a `u32`.
    arena: Vec<u8>,
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
            arena: Vec::new(),
            n_keys: 0,
            key_bytes: 0,
            refs: 0,
        }
    }
}

impl KeyIndex {
    /// Notes that batch `ordinal` holds `key`. Ordinals arrive in increasing order.
    pub(crate) fn add(&mut self, kind: IndexKind, key: &str, ordinal: u32) {
        let key = key.as_bytes();
        let hash = self.hasher.hash_one(key);
        // The table picks buckets with the low bits and tags them with the top seven: the
        // shard takes bits from the middle, which neither uses.
        let shard = (hash >> 32) as usize % SHARDS;
        let table = &mut self.tables[kind_slot(kind) * SHARDS + shard];
        let arena = &self.arena;
        match table.find_mut(hash, |e| e.key(arena) == key) {
            Some(entry) => {
                if entry.last() != ordinal {
                    entry.more.push(ordinal);
                    self.refs += 1;
                }
            }
            None => {
                // The writer rotates long before the footer (and so the arena) nears 4 GiB.
                let at = u32::try_from(self.arena.len()).expect("the index arena stays under 4 GiB");
                let entry = Entry { prefix: prefix(key), at, len: key.len() as u32, first: ordinal, more: Vec::new() };
                self.arena.extend_from_slice(key);
                let (hasher, arena) = (&self.hasher, &self.arena);
                table.insert_unique(hash, entry, |e| hasher.hash_one(e.key(arena)));
                self.n_keys += 1;
                self.key_bytes += 7 + key.len();
                self.refs += 1;
            }
        }
    }

    /// The footer's index entries, sorted by kind, then key bytes (the footer's order), each
    /// once. Borrowed, not copied: a seal that fails to write leaves the index as it was.
    /// `pause` is called between slices of the work (a key kind gathered, a kind sorted).
    pub(crate) fn sorted_entries(&self, pause: &mut dyn FnMut()) -> Vec<IndexEntry<'_>> {
        let mut out = Vec::with_capacity(self.n_keys);
        // What the footer needs of each entry, read once from the tables in their order:
        // sorting and encoding then never go back to the tables (a cache miss per key).
        let mut kind_entries: Vec<(u128, IndexEntry<'_>)> = Vec::new();
        for (slot, &kind) in KINDS.iter().enumerate() {
            kind_entries.clear();
            for table in &self.tables[slot * SHARDS..(slot + 1) * SHARDS] {
                kind_entries.extend(
                    table.iter().map(|e| {
                        (e.prefix, IndexEntry { kind, key: e.key(&self.arena), first: e.first, more: &e.more })
                    }),
                );
            }
            pause();
            // By prefix, then (on a tie) by the keys themselves.
            kind_entries.sort_unstable_by(|(pa, a), (pb, b)| pa.cmp(pb).then_with(|| a.key.cmp(b.key)));
            pause();
            out.extend(kind_entries.iter().map(|(_, entry)| *entry));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::format::{Footer, FooterIndex, IndexMap, PAUSE_EVERY_KEYS, SealReason};

    /// Key stems: none, short, one longer than the 16-byte sort prefix (keys that tie on it),
    /// and ones with a NUL and a prefix of another (where zero-padding could mislead).
    const STEMS: [&str; 5] = ["", "key-", "01b2c3d4-0000-4000-8000-", "a\0", "a"];

    /// The index a plain map builds from the same additions.
    fn reference(additions: &[(IndexKind, String, u32)]) -> IndexMap {
        let mut index = IndexMap::new();
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
                proptest::collection::vec((0usize..3, 0u32..2_000, 0usize..STEMS.len()), 0..40), 0..60),
        ) {
            let mut additions = Vec::new();
            for (ordinal, keys) in batches.iter().enumerate() {
                for &(kind, key, stem) in keys {
                    additions.push((KINDS[kind], format!("{}{key}", STEMS[stem]), ordinal as u32));
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
            // Same entries, in the same order: the plain map's order is the footer's.
            let sorted: Vec<(IndexKind, String, Vec<u32>)> = index
                .sorted_entries(&mut || {})
                .into_iter()
                .map(|e| (e.kind, String::from_utf8(e.key.to_vec()).unwrap(), [&[e.first][..], e.more].concat()))
                .collect();
            let expected: Vec<(IndexKind, String, Vec<u32>)> =
                expected.into_iter().map(|((kind, key), ordinals)| (kind, key, ordinals)).collect();
            proptest::prop_assert_eq!(sorted, expected);
            // And the footer the writer encodes from the index is the one a map would give.
            let mut footer = Footer {
                record_count: 1,
                first_record_index: 0,
                time_min_unix_us: 1,
                time_max_unix_us: 2,
                chain_head: [7; 32],
                sealed_unix_us: 3,
                seal_reason: SealReason::Rotated,
                batches: Vec::new(),
                index: FooterIndex::default(),
            };
            let mut pauses = 0;
            let from_index = footer.encode_frame_with_index(&index.sorted_entries(&mut || {}), &mut || pauses += 1);
            proptest::prop_assert_eq!(pauses, index.n_keys.saturating_sub(1) / PAUSE_EVERY_KEYS);
            footer.index = FooterIndex::from(&reference(&additions));
            proptest::prop_assert_eq!(from_index, footer.encode_frame());
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
