//! The segment file's fixed structures (segment header, batch header, footer, trailer), the
//! BLAKE3 hash chain and the footer MAC. Pure: encoding and decoding of byte slices only; the
//! writer and the reader do the I/O. Every decoder checks its CRC and limits before trusting
//! a length.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::limits;

/// The first eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SNOWGREC";
/// The format version this code writes.
pub const FORMAT_VERSION: u16 = 4;
/// The oldest format version this code still reads (and verifies, and recovers).
pub const OLDEST_READ_VERSION: u16 = 1;
/// Bytes in the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 96;
/// Marker of a batch frame.
pub const BATCH_MARKER: [u8; 4] = *b"SGB1";
/// Bytes in a batch header (format version 4: with its chain tag).
pub const BATCH_HEADER_BYTES: usize = 64;
/// Bytes in a batch header of format versions 1 to 3 (no chain tag).
pub const BATCH_HEADER_BYTES_UNTAGGED: usize = 32;
/// The batch header's bytes before its chain tag: what the keyed chain covers of it.
pub const BATCH_FIELDS_BYTES: usize = 28;
/// The first format version whose chain is keyed, each batch header carrying its value.
pub const FIRST_KEYED_CHAIN_VERSION: u16 = 4;

/// Bytes in a batch header of format `version`.
pub fn batch_header_bytes(version: u16) -> usize {
    if version >= FIRST_KEYED_CHAIN_VERSION { BATCH_HEADER_BYTES } else { BATCH_HEADER_BYTES_UNTAGGED }
}
/// Marker of the footer frame.
pub const FOOTER_MARKER: [u8; 4] = *b"SGF1";
/// Bytes in the footer frame's header.
pub const FOOTER_HEADER_BYTES: usize = 16;
/// The last eight bytes of a sealed segment.
pub const TRAILER_MAGIC: [u8; 8] = *b"SGSEALv1";
/// Bytes in the trailer.
pub const TRAILER_BYTES: usize = 56;
/// Bytes per entry of the footer's batch table.
pub const BATCH_ENTRY_BYTES: usize = 76;
/// Fixed bytes at the start of the footer body.
pub const FOOTER_FIXED_BYTES: usize = 80;

/// A BLAKE3 chain value.
pub type ChainHead = [u8; 32];

/// The chain value before a core's first record.
pub fn genesis(core_id: u16) -> ChainHead {
    blake3::derive_key("snowgate record v1 chain genesis", &core_id.to_le_bytes())
}

/// The key the chain over batches is computed with (format version 4 on), derived from the
/// configured 32-byte sealing key like [`mac_key`], for another purpose.
pub fn chain_key(sealing_key: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("snowgate record v4 batch chain", sealing_key)
}

/// The chain value after a batch (format version 4 on): keyed BLAKE3 over the previous value,
/// the batch header's fields (its first [`BATCH_FIELDS_BYTES`], lengths, counts and the
/// frame's CRC) and its zstd frame, the bytes on disk. The batch header carries the value
/// (its chain tag), so each batch of a segment not yet sealed is authenticated on its own:
/// rewriting one, or the chain after it, takes the key.
pub fn chain_next_keyed(
    chain_key: &[u8; 32],
    previous: &ChainHead,
    fields: &[u8; BATCH_FIELDS_BYTES],
    compressed: &[u8],
) -> ChainHead {
    let mut hasher = blake3::Hasher::new_keyed(chain_key);
    hasher.update(previous);
    hasher.update(fields);
    hasher.update(compressed);
    *hasher.finalize().as_bytes()
}

/// Format version 3's chain step, unkeyed: the chain value after a batch whose header is
/// `header` (its 32 bytes as written) and whose zstd frame is `compressed`. Read-only: kept so
/// that those segments still verify.
pub fn chain_next(previous: &ChainHead, header: &[u8; BATCH_HEADER_BYTES_UNTAGGED], compressed: &[u8]) -> ChainHead {
    let mut hasher = blake3::Hasher::new();
    hasher.update(previous);
    hasher.update(header);
    hasher.update(compressed);
    *hasher.finalize().as_bytes()
}

/// Format versions 1 and 2's chain step, `BLAKE3(previous ‖ decompressed)`: over each record
/// body in turn (version 1), or over each batch's decompressed payload, its records with their
/// length and CRC prefixes back to back (version 2). Read-only: kept so that those segments
/// still verify.
pub fn chain_next_decompressed(previous: &ChainHead, decompressed: &[u8]) -> ChainHead {
    let mut hasher = blake3::Hasher::new();
    hasher.update(previous);
    hasher.update(decompressed);
    *hasher.finalize().as_bytes()
}

/// The key the footer MAC is computed with, derived from the configured 32-byte sealing key
/// so that the same key material never serves two purposes.
pub fn mac_key(sealing_key: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("snowgate record v1 segment footer mac", sealing_key)
}

/// The footer MAC: keyed BLAKE3 over the segment header and the whole footer frame.
pub fn footer_mac(mac_key: &[u8; 32], segment_header: &[u8], footer_frame: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(mac_key);
    hasher.update(segment_header);
    hasher.update(footer_frame);
    *hasher.finalize().as_bytes()
}

/// Compares two MACs without an early exit.
pub fn mac_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("two bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

fn hash_at(bytes: &[u8], at: usize) -> ChainHead {
    bytes[at..at + 32].try_into().expect("thirty-two bytes")
}

/// Why a fixed structure does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StructureError {
    /// Fewer bytes than the structure needs.
    #[error("truncated")]
    Truncated,
    /// The magic or marker is wrong.
    #[error("bad magic")]
    BadMagic,
    /// The structure's CRC does not match.
    #[error("CRC mismatch")]
    BadCrc,
    /// A version this code does not read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    /// A length, count or reserved field is out of range.
    #[error("a field is out of range")]
    OutOfRange,
    /// A count or length is over the format's limit for it (the field is named).
    #[error("{0} is over the format's limit")]
    OverLimit(&'static str),
}

/// The segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The format version: [`FORMAT_VERSION`] for what this code writes; older segments read
    /// back with theirs (it decides how the chain is computed: [`chain_next_decompressed`]
    /// up to version 2, [`chain_next`] in version 3, [`chain_next_keyed`] from version 4).
    pub version: u16,
    /// The core whose chain this segment continues.
    pub core_id: u16,
    /// The segment's sequence number within its core (0, 1, 2...).
    pub sequence: u64,
    /// When the segment was created, in Unix microseconds.
    pub created_unix_us: u64,
    /// The record index of the segment's first record.
    pub first_record_index: u64,
    /// The chain value at the end of the previous segment (the genesis value for sequence 0).
    pub previous_chain_head: ChainHead,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..10].copy_from_slice(&self.version.to_le_bytes());
        out[10..12].copy_from_slice(&(SEGMENT_HEADER_BYTES as u16).to_le_bytes());
        out[12..14].copy_from_slice(&self.core_id.to_le_bytes());
        // 14..16: flags, zero in every version so far.
        out[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        out[24..32].copy_from_slice(&self.created_unix_us.to_le_bytes());
        out[32..40].copy_from_slice(&self.first_record_index.to_le_bytes());
        out[40..72].copy_from_slice(&self.previous_chain_head);
        // 72..92: reserved, zero.
        let crc = crc32c::crc32c(&out[..92]);
        out[92..96].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and checks a header.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, StructureError> {
        if bytes.len() < SEGMENT_HEADER_BYTES {
            return Err(StructureError::Truncated);
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(StructureError::BadMagic);
        }
        if crc32c::crc32c(&bytes[..92]) != u32_at(bytes, 92) {
            return Err(StructureError::BadCrc);
        }
        let version = u16_at(bytes, 8);
        if !(OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(StructureError::UnsupportedVersion(version));
        }
        if usize::from(u16_at(bytes, 10)) != SEGMENT_HEADER_BYTES
            || u16_at(bytes, 14) != 0
            || bytes[72..92].iter().any(|&b| b != 0)
        {
            return Err(StructureError::OutOfRange);
        }
        Ok(SegmentHeader {
            version,
            core_id: u16_at(bytes, 12),
            sequence: u64_at(bytes, 16),
            created_unix_us: u64_at(bytes, 24),
            first_record_index: u64_at(bytes, 32),
            previous_chain_head: hash_at(bytes, 40),
        })
    }
}

/// A batch header: one zstd frame of records follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Bytes of the zstd frame that follows.
    pub compressed_len: u32,
    /// Bytes of the records once decompressed.
    pub uncompressed_len: u32,
    /// Records in the batch.
    pub n_records: u32,
    /// The record index of the batch's first record.
    pub first_record_index: u64,
    /// CRC32C of the zstd frame.
    pub payload_crc: u32,
    /// The chain value after this batch ([`chain_next_keyed`]): present from format version
    /// 4, absent before.
    pub chain_tag: Option<ChainHead>,
}

impl BatchHeader {
    /// The header's fields before its chain tag, as written: what the keyed chain covers.
    pub fn fields(&self) -> [u8; BATCH_FIELDS_BYTES] {
        let mut out = [0u8; BATCH_FIELDS_BYTES];
        out[0..4].copy_from_slice(&BATCH_MARKER);
        out[4..8].copy_from_slice(&self.compressed_len.to_le_bytes());
        out[8..12].copy_from_slice(&self.uncompressed_len.to_le_bytes());
        out[12..16].copy_from_slice(&self.n_records.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_record_index.to_le_bytes());
        out[24..28].copy_from_slice(&self.payload_crc.to_le_bytes());
        out
    }

    /// The header's bytes: [`BATCH_HEADER_BYTES`] with a chain tag, the untagged 32 of
    /// versions 1 to 3 without.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BATCH_HEADER_BYTES);
        self.encode_into(&mut out);
        out
    }

    /// Appends the header's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.fields());
        if let Some(tag) = &self.chain_tag {
            out.extend_from_slice(tag);
        }
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Decodes and checks a header of format `version` (its marker must already have been
    /// seen).
    pub fn decode(bytes: &[u8], version: u16) -> Result<BatchHeader, StructureError> {
        let len = batch_header_bytes(version);
        if bytes.len() < len {
            return Err(StructureError::Truncated);
        }
        if bytes[0..4] != BATCH_MARKER {
            return Err(StructureError::BadMagic);
        }
        if crc32c::crc32c(&bytes[..len - 4]) != u32_at(bytes, len - 4) {
            return Err(StructureError::BadCrc);
        }
        let header = BatchHeader {
            compressed_len: u32_at(bytes, 4),
            uncompressed_len: u32_at(bytes, 8),
            n_records: u32_at(bytes, 12),
            first_record_index: u64_at(bytes, 16),
            payload_crc: u32_at(bytes, 24),
            chain_tag: (len == BATCH_HEADER_BYTES).then(|| hash_at(bytes, BATCH_FIELDS_BYTES)),
        };
        if header.n_records == 0 || header.compressed_len == 0 {
            return Err(StructureError::OutOfRange);
        }
        // Checked here, before any reader sizes a buffer by them: a hostile header's counts
        // must not decide how much memory a reader asks for.
        if header.n_records as usize > limits::BATCH_FRAMES_MAX {
            return Err(StructureError::OverLimit("records per batch"));
        }
        if header.uncompressed_len as usize > limits::BATCH_BYTES_MAX {
            return Err(StructureError::OverLimit("uncompressed batch length"));
        }
        if header.compressed_len as usize > limits::BATCH_BYTES_MAX {
            return Err(StructureError::OverLimit("compressed batch length"));
        }
        Ok(header)
    }
}

/// Why a segment was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealReason {
    /// Size or age: the next segment follows.
    Rotated,
    /// The recorder stopped cleanly: the core's chain ends here until the next start.
    Stopped,
    /// Sealed at start by recovery after a crash: the next segment follows.
    Recovered,
}

impl SealReason {
    fn code(self) -> u8 {
        match self {
            SealReason::Rotated => 1,
            SealReason::Stopped => 2,
            SealReason::Recovered => 3,
        }
    }

    fn from_code(code: u8) -> Option<SealReason> {
        match code {
            1 => Some(SealReason::Rotated),
            2 => Some(SealReason::Stopped),
            3 => Some(SealReason::Recovered),
            _ => None,
        }
    }

    /// Whether a segment with the next sequence number must exist.
    pub fn has_successor(self) -> bool {
        !matches!(self, SealReason::Stopped)
    }

    /// The reason's name.
    pub fn name(self) -> &'static str {
        match self {
            SealReason::Rotated => "rotated",
            SealReason::Stopped => "stopped",
            SealReason::Recovered => "recovered",
        }
    }
}

/// One batch in the footer's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntry {
    /// Offset of the batch header in the segment file.
    pub offset: u64,
    /// The batch's first record index.
    pub first_record_index: u64,
    /// Records in the batch.
    pub n_records: u32,
    /// Bytes of its zstd frame.
    pub compressed_len: u32,
    /// Bytes of its records.
    pub uncompressed_len: u32,
    /// Earliest record time in the batch.
    pub time_min_unix_us: u64,
    /// Latest record time in the batch.
    pub time_max_unix_us: u64,
    /// The chain value after the batch's last record.
    pub chain_head_after: ChainHead,
}

/// What the footer index maps: the kind of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IndexKind {
    /// An identity (`sub`).
    Identity,
    /// A Snowflake query id.
    QueryId,
    /// A driver request id.
    RequestId,
}

impl IndexKind {
    fn code(self) -> u8 {
        match self {
            IndexKind::Identity => 1,
            IndexKind::QueryId => 2,
            IndexKind::RequestId => 3,
        }
    }

    fn from_code(code: u8) -> Option<IndexKind> {
        match code {
            1 => Some(IndexKind::Identity),
            2 => Some(IndexKind::QueryId),
            3 => Some(IndexKind::RequestId),
            _ => None,
        }
    }
}

/// A footer index built in memory (verify, tests): for each key, the ordinals (in the batch
/// table) of the batches holding a record with that key, ascending. [`FooterIndex::from`]
/// encodes it.
pub type IndexMap = BTreeMap<(IndexKind, String), Vec<u32>>;

/// The footer index: for each key (an identity, query id or request id), the ordinals in the
/// batch table of the batches holding a record with it, ascending. Held as the footer encodes
/// it (keys sorted by kind, then bytes, each once), checked whole when decoded and then
/// searched where it lies: opening a sealed segment costs no allocation per key (search,
/// verify and recovery open every segment; a full one holds hundreds of thousands of keys).
/// The encoding is canonical, so two indexes are equal when their bytes are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FooterIndex {
    /// The entries as encoded: kind (1 byte), key length (2), key, ordinal count (4),
    /// ordinals (4 each), little-endian; a slice of the footer frame as read.
    bytes: Bytes,
    /// Where each entry starts in `bytes`, in key order.
    starts: Vec<u32>,
}

/// The ordinals of the batches holding one key, ascending, read from the index's bytes.
#[derive(Clone)]
pub struct Ordinals<'a>(&'a [u8]);

impl Iterator for Ordinals<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let (first, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*first))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.0.len() / 4, Some(self.0.len() / 4))
    }
}

impl ExactSizeIterator for Ordinals<'_> {}

impl std::fmt::Debug for Ordinals<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

impl FooterIndex {
    /// Keys in the index.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether the index holds no key.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The entry starting at `start`: its kind, key and ordinals (checked when decoded).
    fn entry_at(&self, start: u32) -> (IndexKind, &str, Ordinals<'_>) {
        let at = start as usize;
        let kind = IndexKind::from_code(self.bytes[at]).expect("checked when decoded");
        let key_end = at + 3 + usize::from(u16_at(&self.bytes, at + 1));
        let key = std::str::from_utf8(&self.bytes[at + 3..key_end]).expect("checked when decoded");
        let n_refs = u32_at(&self.bytes, key_end) as usize;
        (kind, key, Ordinals(&self.bytes[key_end + 4..key_end + 4 + 4 * n_refs]))
    }

    /// Every key with its ordinals, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (IndexKind, &str, Ordinals<'_>)> {
        self.starts.iter().map(|&start| self.entry_at(start))
    }

    /// The ordinals of the batches holding `key`, if any does.
    pub fn get(&self, kind: IndexKind, key: &str) -> Option<Ordinals<'_>> {
        let found = self.starts.binary_search_by(|&start| {
            let (k, key_here, _) = self.entry_at(start);
            (k, key_here).cmp(&(kind, key))
        });
        found.ok().map(|n| self.entry_at(self.starts[n]).2)
    }

    /// Whether a batch holds `key`.
    pub fn contains_key(&self, kind: IndexKind, key: &str) -> bool {
        self.get(kind, key).is_some()
    }

    /// Reads `n_keys` entries from the start of `bytes`, checking that they are what a
    /// writer writes: known kinds, UTF-8 keys, sorted and unique, each in at least one batch
    /// and at most every one, its ordinals ascending and inside the table of `n_batches`.
    /// Returns the index and the bytes it took.
    fn decode(body: &Bytes, from: usize, n_keys: usize, n_batches: usize) -> Result<FooterIndex, StructureError> {
        let bytes = &body[from..];
        if n_keys > limits::INDEX_KEYS_PER_SEGMENT_MAX {
            return Err(StructureError::OutOfRange);
        }
        let mut starts = Vec::with_capacity(n_keys.min(bytes.len() / 8));
        let mut previous: Option<(IndexKind, &str)> = None;
        let mut at = 0;
        for _ in 0..n_keys {
            if at + 3 > bytes.len() {
                return Err(StructureError::Truncated);
            }
            let kind = IndexKind::from_code(bytes[at]).ok_or(StructureError::OutOfRange)?;
            let key_len = usize::from(u16_at(bytes, at + 1));
            let key_at = at + 3;
            if key_len > limits::SHORT_FIELD_BYTES_MAX || key_at + key_len + 4 > bytes.len() {
                return Err(StructureError::Truncated);
            }
            let key = std::str::from_utf8(&bytes[key_at..key_at + key_len]).map_err(|_| StructureError::OutOfRange)?;
            if previous.is_some_and(|previous| previous >= (kind, key)) {
                return Err(StructureError::OutOfRange);
            }
            previous = Some((kind, key));
            let refs_at = key_at + key_len + 4;
            let n_refs = u32_at(bytes, key_at + key_len) as usize;
            let refs_end = n_refs
                .checked_mul(4)
                .and_then(|n| n.checked_add(refs_at))
                .filter(|&end| end <= bytes.len())
                .ok_or(StructureError::Truncated)?;
            if n_refs == 0 || n_refs > n_batches {
                return Err(StructureError::OutOfRange);
            }
            let mut last = None;
            for ordinal in Ordinals(&bytes[refs_at..refs_end]) {
                // Ascending, unique and inside the table: anything else is not what a writer writes.
                if ordinal as usize >= n_batches || last.is_some_and(|last| last >= ordinal) {
                    return Err(StructureError::OutOfRange);
                }
                last = Some(ordinal);
            }
            starts.push(u32::try_from(at).map_err(|_| StructureError::OutOfRange)?);
            at = refs_end;
        }
        Ok(FooterIndex { bytes: body.slice(from..from + at), starts })
    }
}

impl From<&IndexMap> for FooterIndex {
    /// Encodes a map's entries as they are (an empty list of ordinals included, which
    /// decoding refuses: tests build such footers on purpose). Panics on a key over 65,535
    /// bytes, which no frame holds (its keys are short fields).
    fn from(map: &IndexMap) -> FooterIndex {
        let (mut bytes, mut starts) = (Vec::new(), Vec::with_capacity(map.len()));
        for ((kind, key), ordinals) in map {
            starts.push(u32::try_from(bytes.len()).expect("an index map of less than 4 GiB"));
            u16::try_from(key.len()).expect("an index key of at most 64 KiB");
            let count = u32::try_from(ordinals.len()).expect("ordinals fit u32");
            encode_entry(&mut bytes, *kind, key.as_bytes(), count, ordinals.iter().copied());
        }
        FooterIndex { bytes: Bytes::from(bytes), starts }
    }
}

/// Appends one index entry as the footer holds it: kind, key length, key, ordinal count and
/// the `count` ordinals. The key's length must fit 16 bits.
#[inline]
fn encode_entry(out: &mut Vec<u8>, kind: IndexKind, key: &[u8], count: u32, ordinals: impl Iterator<Item = u32>) {
    out.push(kind.code());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&count.to_le_bytes());
    for ordinal in ordinals {
        out.extend_from_slice(&ordinal.to_le_bytes());
    }
}

impl std::fmt::Debug for FooterIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter().map(|(kind, key, ordinals)| ((kind, key), ordinals))).finish()
    }
}

/// Index keys a footer encoder handles between two calls of its `pause`: about a millisecond
/// of work. A seal runs on the recorder thread, which may share a CPU with a core at the same
/// real-time priority, where nothing preempts it: the writer yields there.
pub(crate) const PAUSE_EVERY_KEYS: usize = 16 * 1024;

/// One footer index entry as the encoder takes it, borrowed: a key and the ordinals of the
/// batches holding it, ascending: the first by value (the writer's index keeps it inline),
/// then the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry<'a> {
    pub(crate) kind: IndexKind,
    pub(crate) key: &'a [u8],
    pub(crate) first: u32,
    pub(crate) more: &'a [u32],
}

/// A sealed segment's footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Records in the segment.
    pub record_count: u64,
    /// The first record's index.
    pub first_record_index: u64,
    /// Earliest record time (0 when empty).
    pub time_min_unix_us: u64,
    /// Latest record time (0 when empty).
    pub time_max_unix_us: u64,
    /// The chain value after the last record.
    pub chain_head: ChainHead,
    /// When it was sealed, in Unix microseconds.
    pub sealed_unix_us: u64,
    /// Why it was sealed.
    pub seal_reason: SealReason,
    /// Every batch, in file order.
    pub batches: Vec<BatchEntry>,
    /// Identities, query ids and request ids, with the batches holding them.
    pub index: FooterIndex,
}

impl Footer {
    /// The footer body's bytes (without the footer frame header).
    pub fn encode_body(&self) -> Vec<u8> {
        self.encode_frame().split_off(FOOTER_HEADER_BYTES)
    }

    /// The whole footer frame: header and body.
    pub fn encode_frame(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(FOOTER_HEADER_BYTES + self.body_bytes(self.index.bytes.len()));
        frame.extend_from_slice(&[0u8; FOOTER_HEADER_BYTES]);
        self.encode_table_into(&mut frame);
        frame.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        frame.extend_from_slice(&self.index.bytes);
        Footer::finish_frame(frame)
    }

    /// Body bytes, the index's entries taking `index_bytes`.
    fn body_bytes(&self, index_bytes: usize) -> usize {
        FOOTER_FIXED_BYTES + self.batches.len() * BATCH_ENTRY_BYTES + 4 + index_bytes
    }

    /// The whole footer frame, its index being `index` (sorted by kind, then key bytes; each
    /// key once) instead of `self.index`: the writer encodes its open segment's index as it
    /// lies, without copying the keys into a map first. `pause` is called between slices of
    /// the work (see [`PAUSE_EVERY_KEYS`]).
    pub(crate) fn encode_frame_with_index(&self, index: &[IndexEntry<'_>], pause: &mut dyn FnMut()) -> Vec<u8> {
        debug_assert!(index.windows(2).all(|w| (w[0].kind, w[0].key) < (w[1].kind, w[1].key)), "index not sorted");
        let index_bytes: usize = index.iter().map(|e| 7 + e.key.len() + 4 * (1 + e.more.len())).sum();
        let mut frame = Vec::with_capacity(FOOTER_HEADER_BYTES + self.body_bytes(index_bytes));
        frame.extend_from_slice(&[0u8; FOOTER_HEADER_BYTES]);
        self.encode_table_into(&mut frame);
        frame.extend_from_slice(&(index.len() as u32).to_le_bytes());
        for (n, entry) in index.iter().enumerate() {
            if n > 0 && n % PAUSE_EVERY_KEYS == 0 {
                pause();
            }
            let ordinals = std::iter::once(entry.first).chain(entry.more.iter().copied());
            encode_entry(&mut frame, entry.kind, entry.key, 1 + entry.more.len() as u32, ordinals);
        }
        Footer::finish_frame(frame)
    }

    /// Fills in the header of a frame whose body follows its zeroed header.
    fn finish_frame(mut frame: Vec<u8>) -> Vec<u8> {
        let body_len = frame.len() - FOOTER_HEADER_BYTES;
        let body_crc = crc32c::crc32c(&frame[FOOTER_HEADER_BYTES..]);
        frame[0..4].copy_from_slice(&FOOTER_MARKER);
        frame[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
        frame[8..12].copy_from_slice(&body_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&frame[..12]);
        frame[12..16].copy_from_slice(&header_crc.to_le_bytes());
        frame
    }

    /// The body's fixed fields and batch table: everything before the index.
    fn encode_table_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.record_count.to_le_bytes());
        out.extend_from_slice(&self.first_record_index.to_le_bytes());
        out.extend_from_slice(&self.time_min_unix_us.to_le_bytes());
        out.extend_from_slice(&self.time_max_unix_us.to_le_bytes());
        out.extend_from_slice(&self.chain_head);
        out.extend_from_slice(&self.sealed_unix_us.to_le_bytes());
        out.push(self.seal_reason.code());
        out.extend_from_slice(&[0u8; 3]);
        out.extend_from_slice(&(self.batches.len() as u32).to_le_bytes());
        debug_assert_eq!(out.len() - start, FOOTER_FIXED_BYTES);
        for batch in &self.batches {
            out.extend_from_slice(&batch.offset.to_le_bytes());
            out.extend_from_slice(&batch.first_record_index.to_le_bytes());
            out.extend_from_slice(&batch.n_records.to_le_bytes());
            out.extend_from_slice(&batch.compressed_len.to_le_bytes());
            out.extend_from_slice(&batch.uncompressed_len.to_le_bytes());
            out.extend_from_slice(&batch.time_min_unix_us.to_le_bytes());
            out.extend_from_slice(&batch.time_max_unix_us.to_le_bytes());
            out.extend_from_slice(&batch.chain_head_after);
        }
    }

    /// Decodes the footer frame header: the body's length and CRC.
    pub fn decode_frame_header(bytes: &[u8]) -> Result<(u32, u32), StructureError> {
        if bytes.len() < FOOTER_HEADER_BYTES {
            return Err(StructureError::Truncated);
        }
        if bytes[0..4] != FOOTER_MARKER {
            return Err(StructureError::BadMagic);
        }
        if crc32c::crc32c(&bytes[..12]) != u32_at(bytes, 12) {
            return Err(StructureError::BadCrc);
        }
        let body_len = u32_at(bytes, 4);
        if body_len as usize > limits::FOOTER_BYTES_MAX || (body_len as usize) < FOOTER_FIXED_BYTES + 4 {
            return Err(StructureError::OutOfRange);
        }
        Ok((body_len, u32_at(bytes, 8)))
    }

    /// Decodes a footer body whose CRC was checked.
    pub fn decode_body(bytes: &[u8]) -> Result<Footer, StructureError> {
        Footer::decode_shared_body(&Bytes::copy_from_slice(bytes))
    }

    /// [`Footer::decode_body`] on a body held in `Bytes`, whose index then holds a slice of
    /// it rather than a copy.
    pub fn decode_shared_body(body: &Bytes) -> Result<Footer, StructureError> {
        let bytes = &body[..];
        if bytes.len() < FOOTER_FIXED_BYTES + 4 {
            return Err(StructureError::Truncated);
        }
        let seal_reason = SealReason::from_code(bytes[72]).ok_or(StructureError::OutOfRange)?;
        if bytes[73..76] != [0, 0, 0] {
            return Err(StructureError::OutOfRange);
        }
        let n_batches = u32_at(bytes, 76) as usize;
        if n_batches > limits::BATCHES_PER_SEGMENT_MAX {
            return Err(StructureError::OutOfRange);
        }
        let mut at = FOOTER_FIXED_BYTES;
        let table_end = n_batches
            .checked_mul(BATCH_ENTRY_BYTES)
            .and_then(|n| n.checked_add(at))
            .filter(|&end| end + 4 <= bytes.len())
            .ok_or(StructureError::Truncated)?;
        let mut batches = Vec::with_capacity(n_batches);
        while at < table_end {
            batches.push(BatchEntry {
                offset: u64_at(bytes, at),
                first_record_index: u64_at(bytes, at + 8),
                n_records: u32_at(bytes, at + 16),
                compressed_len: u32_at(bytes, at + 20),
                uncompressed_len: u32_at(bytes, at + 24),
                time_min_unix_us: u64_at(bytes, at + 28),
                time_max_unix_us: u64_at(bytes, at + 36),
                chain_head_after: hash_at(bytes, at + 44),
            });
            at += BATCH_ENTRY_BYTES;
        }
        let n_keys = u32_at(bytes, at) as usize;
        at += 4;
        let index = FooterIndex::decode(body, at, n_keys, n_batches)?;
        at += index.bytes.len();
        if at != bytes.len() {
            return Err(StructureError::OutOfRange);
        }
        let (record_count, first_record_index) = (u64_at(bytes, 0), u64_at(bytes, 8));
        // The index after the last record must exist: record indexes never wrap.
        if first_record_index.checked_add(record_count).is_none() {
            return Err(StructureError::OutOfRange);
        }
        Ok(Footer {
            record_count,
            first_record_index,
            time_min_unix_us: u64_at(bytes, 16),
            time_max_unix_us: u64_at(bytes, 24),
            chain_head: hash_at(bytes, 32),
            sealed_unix_us: u64_at(bytes, 64),
            seal_reason,
            batches,
            index,
        })
    }
}

/// The trailer: where the footer starts, and its MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Offset of the footer frame.
    pub footer_offset: u64,
    /// Bytes of the footer frame (header and body).
    pub footer_frame_len: u32,
    /// Keyed BLAKE3 over the segment header and the footer frame.
    pub mac: [u8; 32],
}

impl Trailer {
    /// The trailer's bytes.
    pub fn encode(&self) -> [u8; TRAILER_BYTES] {
        let mut out = [0u8; TRAILER_BYTES];
        out[0..8].copy_from_slice(&self.footer_offset.to_le_bytes());
        out[8..12].copy_from_slice(&self.footer_frame_len.to_le_bytes());
        // 12..16: reserved, zero.
        out[16..48].copy_from_slice(&self.mac);
        out[48..56].copy_from_slice(&TRAILER_MAGIC);
        out
    }

    /// Decodes a trailer; its MAC is checked by the caller, who has the key.
    pub fn decode(bytes: &[u8]) -> Result<Trailer, StructureError> {
        if bytes.len() < TRAILER_BYTES {
            return Err(StructureError::Truncated);
        }
        if bytes[48..56] != TRAILER_MAGIC {
            return Err(StructureError::BadMagic);
        }
        if bytes[12..16] != [0, 0, 0, 0] {
            return Err(StructureError::OutOfRange);
        }
        Ok(Trailer { footer_offset: u64_at(bytes, 0), footer_frame_len: u32_at(bytes, 8), mac: hash_at(bytes, 16) })
    }
}

/// A whole batch of the current format (header and zstd frame) holding these record bodies,
/// each given its `len | crc` prefix, chained from `previous` under `chain_key`; with the
/// chain value after it. The writer builds batches in its own reused buffers; this is for
/// tests and fuzzing, which need valid framing around arbitrary bodies.
pub fn encode_batch(
    chain_key: &[u8; 32],
    previous: &ChainHead,
    first_record_index: u64,
    bodies: &[&[u8]],
    zstd_level: i32,
) -> std::io::Result<(Vec<u8>, ChainHead)> {
    let mut payload = Vec::new();
    for body in bodies {
        payload.extend_from_slice(&(body.len() as u32).to_le_bytes());
        payload.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        payload.extend_from_slice(body);
    }
    let compressed = zstd::bulk::compress(&payload, zstd_level)?;
    let mut header = BatchHeader {
        compressed_len: compressed.len() as u32,
        uncompressed_len: payload.len() as u32,
        n_records: bodies.len() as u32,
        first_record_index,
        payload_crc: crc32c::crc32c(&compressed),
        chain_tag: None,
    };
    let chain = chain_next_keyed(chain_key, previous, &header.fields(), &compressed);
    header.chain_tag = Some(chain);
    let mut out = header.encode();
    out.extend_from_slice(&compressed);
    Ok((out, chain))
}

/// Bytes the footer of `n_batches` batches and these index keys will take, for rotation.
pub fn footer_bytes_estimate(n_batches: usize, index_key_bytes: usize, index_refs: usize) -> usize {
    FOOTER_HEADER_BYTES + FOOTER_FIXED_BYTES + 4 + n_batches * BATCH_ENTRY_BYTES + index_key_bytes + index_refs * 4
}

/// Which of the format's per-segment limits a segment holding this much is past, if any: the
/// writer rotates before any of them, so a segment past one was not written by it (recovery
/// and verify stop there, before its footer could not be read back or its index fill memory).
pub fn segment_over_limits(n_batches: usize, n_index_keys: usize, footer_bytes: usize) -> Option<&'static str> {
    if n_batches > limits::BATCHES_PER_SEGMENT_MAX {
        Some("batches")
    } else if n_index_keys > limits::INDEX_KEYS_PER_SEGMENT_MAX {
        Some("index keys")
    } else if footer_bytes > limits::FOOTER_BYTES_MAX {
        Some("index bytes")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            version: FORMAT_VERSION,
            core_id: 3,
            sequence: 9,
            created_unix_us: 1234,
            first_record_index: 55,
            previous_chain_head: genesis(3),
        }
    }

    #[test]
    fn segment_header_round_trips_and_every_bit_flip_is_caught() {
        let bytes = header().encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header()));
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&flipped).is_err(), "bit {bit} went unnoticed");
        }
    }

    #[test]
    fn batch_header_round_trips_and_bounds_lengths() {
        let header = BatchHeader {
            compressed_len: 10,
            uncompressed_len: 20,
            n_records: 2,
            first_record_index: 7,
            payload_crc: 99,
            chain_tag: Some([5; 32]),
        };
        let v = FORMAT_VERSION;
        assert_eq!(header.encode().len(), BATCH_HEADER_BYTES);
        assert_eq!(BatchHeader::decode(&header.encode(), v), Ok(header));
        let huge = BatchHeader { uncompressed_len: u32::MAX, ..header };
        assert_eq!(BatchHeader::decode(&huge.encode(), v), Err(StructureError::OverLimit("uncompressed batch length")));
        let most = BatchHeader { n_records: limits::BATCH_FRAMES_MAX as u32, ..header };
        assert_eq!(BatchHeader::decode(&most.encode(), v), Ok(most));
        let too_many = BatchHeader { n_records: limits::BATCH_FRAMES_MAX as u32 + 1, ..header };
        assert_eq!(BatchHeader::decode(&too_many.encode(), v), Err(StructureError::OverLimit("records per batch")));
        assert_eq!(BatchHeader::decode(&header.encode()[..63], v), Err(StructureError::Truncated));
        // Version 3's header has no tag, and each version reads only its own length.
        let untagged = BatchHeader { chain_tag: None, ..header };
        assert_eq!(untagged.encode().len(), BATCH_HEADER_BYTES_UNTAGGED);
        assert_eq!(BatchHeader::decode(&untagged.encode(), 3), Ok(untagged));
        assert_eq!(BatchHeader::decode(&untagged.encode(), v), Err(StructureError::Truncated));
        assert_eq!(BatchHeader::decode(&header.encode(), 3), Err(StructureError::BadCrc));
        // Every bit of a tagged header, the tag included, is under its CRC.
        let bytes = header.encode();
        for bit in 0..BATCH_HEADER_BYTES * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(BatchHeader::decode(&flipped, v).is_err(), "bit {bit} went unnoticed");
        }
    }

    #[test]
    fn the_keyed_chain_depends_on_the_key_and_every_input() {
        let key = chain_key(&[1; 32]);
        let fields = [3u8; BATCH_FIELDS_BYTES];
        let base = chain_next_keyed(&key, &[2; 32], &fields, b"frame");
        assert_ne!(base, chain_next_keyed(&chain_key(&[9; 32]), &[2; 32], &fields, b"frame"));
        assert_ne!(base, chain_next_keyed(&key, &[4; 32], &fields, b"frame"));
        assert_ne!(base, chain_next_keyed(&key, &[2; 32], &[4; BATCH_FIELDS_BYTES], b"frame"));
        assert_ne!(base, chain_next_keyed(&key, &[2; 32], &fields, b"frams"));
        assert_ne!(key, mac_key(&[1; 32]), "one key, two purposes, two derived keys");
    }

    #[test]
    fn footer_round_trips() {
        let index = FooterIndex::from(&IndexMap::from([
            ((IndexKind::Identity, "agent-7".into()), vec![0, 1]),
            ((IndexKind::QueryId, "01b2".into()), vec![1]),
        ]));
        let footer = Footer {
            record_count: 3,
            first_record_index: 10,
            time_min_unix_us: 1,
            time_max_unix_us: 2,
            chain_head: [7; 32],
            sealed_unix_us: 3,
            seal_reason: SealReason::Rotated,
            batches: vec![
                BatchEntry {
                    offset: 96,
                    first_record_index: 10,
                    n_records: 2,
                    compressed_len: 50,
                    uncompressed_len: 80,
                    time_min_unix_us: 1,
                    time_max_unix_us: 1,
                    chain_head_after: [1; 32],
                },
                BatchEntry {
                    offset: 178,
                    first_record_index: 12,
                    n_records: 1,
                    compressed_len: 20,
                    uncompressed_len: 30,
                    time_min_unix_us: 2,
                    time_max_unix_us: 2,
                    chain_head_after: [7; 32],
                },
            ],
            index,
        };
        let frame = footer.encode_frame();
        let (body_len, crc) = Footer::decode_frame_header(&frame).unwrap();
        let body = &frame[FOOTER_HEADER_BYTES..];
        assert_eq!(body_len as usize, body.len());
        assert_eq!(crc, crc32c::crc32c(body));
        assert_eq!(Footer::decode_body(body), Ok(footer.clone()));
        // Each key costs its kind, length and reference count (7 bytes) plus its text.
        assert_eq!(footer_bytes_estimate(2, (7 + 7) + (7 + 4), 3), frame.len());
    }

    /// A footer of `n_batches` placeholder batches and the index `map` encodes.
    fn footer_with(n_batches: usize, map: &IndexMap) -> Footer {
        let batch = BatchEntry {
            offset: 96,
            first_record_index: 0,
            n_records: 1,
            compressed_len: 1,
            uncompressed_len: 1,
            time_min_unix_us: 0,
            time_max_unix_us: 0,
            chain_head_after: [0; 32],
        };
        Footer {
            record_count: 0,
            first_record_index: 0,
            time_min_unix_us: 0,
            time_max_unix_us: 0,
            chain_head: [0; 32],
            sealed_unix_us: 0,
            seal_reason: SealReason::Stopped,
            batches: vec![batch; n_batches],
            index: FooterIndex::from(map),
        }
    }

    fn index_map() -> impl proptest::strategy::Strategy<Value = IndexMap> {
        use proptest::prelude::*;
        let kind = proptest::sample::select(vec![IndexKind::Identity, IndexKind::QueryId, IndexKind::RequestId]);
        let ordinals = proptest::collection::btree_set(0u32..8, 1..5).prop_map(|s| s.into_iter().collect::<Vec<_>>());
        proptest::collection::btree_map((kind, "[a-c\\x00é]{0,6}"), ordinals, 0..40)
    }

    proptest::proptest! {
        /// Searched where it lies, the decoded index answers as the map it was built from.
        #[test]
        fn a_decoded_index_answers_as_its_map(map in index_map(), probes in proptest::collection::vec("[a-c\\x00é]{0,6}", 0..20)) {
            let footer = footer_with(8, &map);
            let decoded = Footer::decode_body(&footer.encode_body()).unwrap();
            proptest::prop_assert_eq!(&decoded, &footer);
            let index = decoded.index;
            proptest::prop_assert_eq!(index.len(), map.len());
            let listed: Vec<(IndexKind, String, Vec<u32>)> =
                index.iter().map(|(kind, key, ordinals)| (kind, key.to_owned(), ordinals.collect())).collect();
            let expected: Vec<(IndexKind, String, Vec<u32>)> =
                map.iter().map(|((kind, key), ordinals)| (*kind, key.clone(), ordinals.clone())).collect();
            proptest::prop_assert_eq!(listed, expected);
            for kind in [IndexKind::Identity, IndexKind::QueryId, IndexKind::RequestId] {
                for key in map.keys().map(|(_, key)| key).chain(&probes) {
                    let found = index.get(kind, key).map(Iterator::collect::<Vec<u32>>);
                    proptest::prop_assert_eq!(found.as_ref(), map.get(&(kind, key.clone())));
                    proptest::prop_assert_eq!(index.contains_key(kind, key), found.is_some());
                }
            }
        }
    }

    #[test]
    fn footer_index_must_be_sorted_and_inside_the_table() {
        let outside = footer_with(0, &IndexMap::from([((IndexKind::QueryId, "q".into()), vec![0])]));
        assert_eq!(Footer::decode_body(&outside.encode_body()), Err(StructureError::OutOfRange));
        // Inside a table of two batches, each of these is refused too: unsorted keys, a key
        // twice, ordinals not ascending, a key in no batch.
        let valid = footer_with(
            2,
            &IndexMap::from([
                ((IndexKind::Identity, "b".into()), vec![0]),
                ((IndexKind::QueryId, "a".into()), vec![0, 1]),
            ]),
        );
        let body = valid.encode_body();
        assert_eq!(Footer::decode_body(&body), Ok(valid.clone()));
        let table_end = FOOTER_FIXED_BYTES + 2 * BATCH_ENTRY_BYTES + 4;
        // The entries are `1 0x01 0x00 b 1 0` and `2 0x01 0x00 a 2 0 1` (counts and ordinals
        // four bytes each).
        let second = table_end + 3 + 1 + 4 + 4;
        let mut swapped_kinds = body.clone();
        swapped_kinds[table_end] = 2;
        swapped_kinds[second] = 1;
        let mut same_key = body.clone();
        same_key[second] = 1;
        same_key[second + 3] = b'b';
        let mut descending = body.clone();
        descending[second + 3 + 1 + 4..second + 3 + 1 + 12].copy_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        let no_batch = footer_with(2, &IndexMap::from([((IndexKind::Identity, "b".into()), vec![])])).encode_body();
        for (what, body) in
            [("unsorted", swapped_kinds), ("twice", same_key), ("descending", descending), ("in no batch", no_batch)]
        {
            assert_eq!(Footer::decode_body(&body), Err(StructureError::OutOfRange), "{what}");
        }
    }

    #[test]
    fn trailer_round_trips() {
        let trailer = Trailer { footer_offset: 1000, footer_frame_len: 200, mac: [9; 32] };
        assert_eq!(Trailer::decode(&trailer.encode()), Ok(trailer));
    }

    #[test]
    fn the_mac_depends_on_the_key_and_every_byte() {
        let key = mac_key(&[1; 32]);
        let other = mac_key(&[2; 32]);
        let a = footer_mac(&key, b"header", b"footer");
        assert!(mac_equal(&a, &footer_mac(&key, b"header", b"footer")));
        assert!(!mac_equal(&a, &footer_mac(&other, b"header", b"footer")));
        assert!(!mac_equal(&a, &footer_mac(&key, b"header", b"footes")));
    }
}
