//! [`SegmentWriter`]: one core's chain of segment files, written by one thread. It encodes
//! batches into zstd frames, appends them, rotates and seals segments, and on open recovers
//! the core's last segment. It never decides when to fsync (the recorder thread does, per
//! durability mode) and takes the time as an argument, so tests drive rotation by age.
//!
//! After an append fails the file is cut back to the last whole batch and nothing of the
//! batch is kept ([`WriteError::Io`]: retry later). After an fsync fails, or a cut-back fails,
//! nothing on disk can be trusted ([`WriteError::Fatal`]): the writer must not be used again.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::format::{
    BATCH_HEADER_BYTES, BatchEntry, BatchHeader, ChainHead, FIRST_KEYED_CHAIN_VERSION, FORMAT_VERSION, Footer,
    FooterIndex, IndexKind, SEGMENT_HEADER_BYTES, SealReason, SegmentHeader, Trailer, chain_key, chain_next_keyed,
    footer_bytes_estimate, footer_mac, genesis, mac_equal, mac_key, segment_over_limits,
};
use super::frame::{EventFrame, EventKind, Frame, RECORD_PREFIX_BYTES, encode_body};
use super::key_index::{self, KeyIndex};
use super::limits;
use super::reader::{ReadError, ReadErrorKind, ReaderOptions, SealedFooter, SegmentName, SegmentReader, index_keys};
use super::recorder::RecorderConfig;
use super::storage::{SegmentFile, Storage};

/// The recorder could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The configuration is unusable (the operator's to fix).
    #[error("recording configuration: {0}")]
    Config(String),
    /// The directory could not be listed or created (the environment's fault).
    #[error("recording directory {}: {source}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The last segment is damaged other than by a torn tail (the disk's fault, or
    /// tampering): nothing was cut, and an operator must look before recording resumes.
    #[error("recording is corrupt, nothing was cut: {0}")]
    Corrupt(#[source] Box<ReadError>),
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Stopping did not finish in time (the disk's fault: a write or fsync that does not
    /// return). The recorder thread is left behind; what it had not written when the process
    /// ends is lost, its segment is unsealed, and the next start recovers it.
    #[error("the recorder did not finish writing within {0:?} of being told to stop (is the disk hung?)")]
    StopTimedOut(std::time::Duration),
}

/// Writing a batch, a header or a footer failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Nothing of the write was kept: the file is back at its last whole batch. The disk may
    /// be full; trying again later is safe.
    #[error("writing {} failed: {source}", path.display())]
    Io {
        /// The segment file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// What is on disk is unknown (an fsync failed, or a cut-back after a failed write
    /// failed). The writer must not be used again; never retry an fsync as if it succeeded.
    #[error("{what} of {} failed, the recorder stops: {source}", path.display())]
    Fatal {
        /// The operation.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A frame is over the format's limits (the caller should have checked).
    #[error("a frame's {field} is over the recording format's limit")]
    TooLarge {
        /// The field.
        field: &'static str,
    },
}

impl WriteError {
    /// Whether the writer must stop.
    pub fn is_fatal(&self) -> bool {
        matches!(self, WriteError::Fatal { .. })
    }
}

/// What recovery found and did on open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The core's last segment, if any.
    pub last_segment: Option<PathBuf>,
    /// It was sealed: nothing to do.
    pub was_sealed: bool,
    /// It was open (a crash): it was checked, cut back if torn, and sealed as `recovered`.
    pub sealed_open_segment: bool,
    /// Records it holds.
    pub records_kept: u64,
    /// Where a torn tail was cut.
    pub truncated_at: Option<u64>,
    /// Bytes cut.
    pub bytes_truncated: u64,
    /// Its header was torn (created, never written): it was rewritten.
    pub header_rewritten: bool,
    /// The sealed segment the chain continues from (the last, or the one before a torn
    /// header) is damaged: its footer authenticates under the key, but its batch headers do
    /// not lead to it. What is wrong, and where. The chain continues from the footer's head;
    /// the segment is left as it is, for verify to report.
    pub damage: Option<String>,
    /// The last segment was sealed with a promise of a successor (`rotated`, `recovered`)
    /// and the successor, this sequence number, is missing. The writer creates a successor
    /// before it seals with that promise, so this means segments were removed: the sequence
    /// number is left unused, and verify keeps reporting the gap.
    pub missing_successor: Option<u64>,
}

impl RecoveryReport {
    /// Whether recovery changed anything (and so records an event).
    pub fn performed(&self) -> bool {
        self.sealed_open_segment || self.header_rewritten || self.damage.is_some() || self.missing_successor.is_some()
    }

    /// Whether what recovery found is evidence of damage or removal (logged as an error),
    /// rather than what a crash leaves.
    pub fn found_damage(&self) -> bool {
        self.damage.is_some() || self.missing_successor.is_some()
    }

    /// A sentence for the `recovery_performed` event and the log.
    pub fn describe(&self) -> String {
        let name = self
            .last_segment
            .as_deref()
            .and_then(Path::file_name)
            .map_or_else(|| "none".into(), |n| n.to_string_lossy().into_owned());
        if let Some(missing) = self.missing_successor {
            let damage = self.damage.as_ref().map_or_else(String::new, |d| format!(" It is also damaged ({d})."));
            return format!(
                "segment {name} was sealed promising segment {missing}, which is missing: segments were removed \
                 (the writer creates a successor before it seals with that promise). Segment {missing} is left \
                 unused so that verify keeps reporting the gap; the chain continues from {name}'s footer.{damage}"
            );
        }
        if let Some(damage) = &self.damage {
            let torn = if self.header_rewritten {
                format!("segment {name} had a torn header and was rewritten; ")
            } else {
                String::new()
            };
            return format!(
                "{torn}the sealed segment the chain continues from is damaged ({damage}); its authenticated footer \
                 gives the chain head, and it was left as it is for verify to report"
            );
        }
        if self.header_rewritten && self.sealed_open_segment {
            let kept = match self.truncated_at {
                Some(at) => format!(
                    "cut a torn tail of {} bytes at byte {at}, kept {} records",
                    self.bytes_truncated, self.records_kept
                ),
                None => format!("kept all {} records", self.records_kept),
            };
            return format!(
                "a crash while rotating: the segment before {name} was not sealed ({kept}, sealed it); {name} held \
                 no records and was rewritten to follow it"
            );
        }
        if self.header_rewritten {
            return format!("segment {name} had a torn header or no records; it was rewritten");
        }
        match self.truncated_at {
            Some(at) => format!(
                "segment {name} was not sealed: cut a torn tail of {} bytes at byte {at}, kept {} records, sealed it",
                self.bytes_truncated, self.records_kept
            ),
            None => format!("segment {name} was not sealed: kept all {} records, sealed it", self.records_kept),
        }
    }
}

/// What one append wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// The first record's index.
    pub first_record_index: u64,
    /// Records written.
    pub n_records: u32,
    /// Bytes of the records, uncompressed.
    pub bytes_uncompressed: u64,
    /// Bytes appended to the file (batch header and zstd frame).
    pub bytes_on_disk: u64,
}

/// The frames of one batch, and where their record indexes go.
pub(super) trait BatchItems {
    fn n_items(&self) -> usize;
    fn frame(&self, item_idx: usize) -> &Frame;
    /// Tells the item's ticket its record index (`u64::MAX`: unassigned again).
    fn assign(&self, item_idx: usize, record_index: u64);
}

impl BatchItems for [Frame] {
    fn n_items(&self) -> usize {
        self.len()
    }

    fn frame(&self, item_idx: usize) -> &Frame {
        &self[item_idx]
    }

    fn assign(&self, _: usize, _: u64) {}
}

struct OpenSegment {
    file: Box<dyn SegmentFile>,
    path: PathBuf,
    header: SegmentHeader,
    header_bytes: [u8; SEGMENT_HEADER_BYTES],
    /// Bytes of whole structures written: where the next batch goes.
    len: u64,
    batches: Vec<BatchEntry>,
    index: KeyIndex,
    record_count: u64,
    time_min_unix_us: u64,
    time_max_unix_us: u64,
}

impl OpenSegment {
    fn new(file: Box<dyn SegmentFile>, path: PathBuf, header: SegmentHeader) -> OpenSegment {
        let header_bytes = header.encode();
        OpenSegment {
            file,
            path,
            header,
            header_bytes,
            len: SEGMENT_HEADER_BYTES as u64,
            batches: Vec::new(),
            index: KeyIndex::default(),
            record_count: 0,
            time_min_unix_us: u64::MAX,
            time_max_unix_us: 0,
        }
    }

    /// Adds a written batch to the footer's table and index.
    fn add_batch<'a>(&mut self, entry: BatchEntry, keys: impl Iterator<Item = (IndexKind, &'a str)>) {
        let ordinal = self.batches.len() as u32;
        self.record_count += u64::from(entry.n_records);
        self.time_min_unix_us = self.time_min_unix_us.min(entry.time_min_unix_us);
        self.time_max_unix_us = self.time_max_unix_us.max(entry.time_max_unix_us);
        self.batches.push(entry);
        for (kind, key) in keys {
            self.index.add(kind, key, ordinal);
        }
    }

    /// Why the segment must be sealed before another batch, if it must: a batch of the most
    /// frames and keys must still fit the format's per-segment limits.
    fn full(&self) -> Option<&'static str> {
        let keys_per_batch_max = limits::BATCH_FRAMES_MAX * key_index::KINDS.len();
        if self.batches.len() + 1 >= limits::BATCHES_PER_SEGMENT_MAX {
            Some("batch count")
        } else if self.index.n_keys + keys_per_batch_max > limits::INDEX_KEYS_PER_SEGMENT_MAX
            || footer_bytes_estimate(self.batches.len(), self.index.key_bytes, self.index.refs)
                >= limits::FOOTER_BYTES_SOFT_MAX
        {
            Some("footer size")
        } else {
            None
        }
    }
}

/// The highest segment sequence number recovery continues after (a segment a second would
/// take millions of years to reach it; sequences are added to without overflow checks below).
const SEQUENCE_MAX: u64 = 1 << 48;

/// Bytes of a footer written between two yields of the sealing recorder thread.
const FOOTER_WRITE_SLICE_BYTES: usize = 1024 * 1024;

/// Endpoints whose bodies carry credentials on the wire; the proxy strips them, and the
/// writer scrubs them again by key name before encoding.
const CREDENTIAL_ENDPOINTS: &[&str] = &["login", "token-request", "logout", "authenticator-request"];

/// Key names (lowercased, as substrings) whose values never reach a segment.
const CREDENTIAL_KEY_PARTS: &[&str] =
    &["password", "passcode", "token", "secret", "private", "credential", "authorization", "assertion"];

fn scrub_value(value: &mut serde_json::Value) -> bool {
    let mut changed = false;
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                let lower = key.to_ascii_lowercase();
                if CREDENTIAL_KEY_PARTS.iter().any(|part| lower.contains(part)) {
                    if !inner.is_null() {
                        *inner = serde_json::Value::String("[redacted]".into());
                        changed = true;
                    }
                } else {
                    changed |= scrub_value(inner);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for inner in items {
                changed |= scrub_value(inner);
            }
        }
        _ => {}
    }
    changed
}

/// A copy of `body` with every credential-named value replaced; a body that is not JSON is
/// dropped whole, since it cannot be checked.
fn scrub_credentials(body: &Bytes) -> Option<Bytes> {
    if body.is_empty() {
        return None;
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut value) => {
            scrub_value(&mut value).then(|| Bytes::from(serde_json::to_vec(&value).expect("a JSON value serialises")))
        }
        Err(_) => Some(Bytes::new()),
    }
}

/// Endpoints whose answers may carry cloud storage secrets: a `PUT` or `GET` answer's stage
/// credentials and encryption key, a result's chunk key (`qrmk`), SSE-C headers and presigned
/// chunk URLs (an answer the gateway did not mask; a masked one is rebuilt without them).
const STORAGE_SECRET_ENDPOINTS: &[&str] = &["query-request", "query-result"];

/// Keys (exact, as the answer spells them) whose values are storage secrets: each is
/// redacted wherever it is in the answer. `url` is redacted in `chunks` only.
const STORAGE_SECRET_KEYS: &[&str] =
    &["creds", "queryStageMasterKey", "qrmk", "chunkHeaders", "presignedUrl", "presignedUrls"];

/// What every answer holding a storage secret names: a stage's answer its `stageInfo` (the
/// credentials, key and presigned URLs are in it or beside it), a chunked result its `qrmk`
/// or `chunkHeaders`. An answer naming none, nearly all of them, is not parsed: a search for
/// each (memchr's `memmem`, on rare bytes) costs far less than a multi-pattern search whose
/// patterns share the JSON quote.
static STORAGE_SECRET_MARKERS: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 3]> =
    std::sync::LazyLock::new(|| ["qrmk", "stageInfo", "chunkHeaders"].map(memchr::memmem::Finder::new));

fn redact(value: &mut serde_json::Value) -> bool {
    let redacted = match value {
        serde_json::Value::Null => return false,
        // Nothing to hide, or hidden already (the gateway's own chunk headers are recorded so).
        serde_json::Value::String(text) if text.is_empty() || text == "[redacted]" => return false,
        serde_json::Value::Object(map) => {
            let mut changed = false;
            for inner in map.values_mut() {
                changed |= redact(inner);
            }
            return changed;
        }
        serde_json::Value::Array(items) => {
            let mut changed = false;
            for inner in items {
                changed |= redact(inner);
            }
            return changed;
        }
        _ => serde_json::Value::String("[redacted]".into()),
    };
    *value = redacted;
    true
}

fn scrub_storage_value(value: &mut serde_json::Value) -> bool {
    let mut changed = false;
    match value {
        serde_json::Value::Object(map) => {
            // Chunks beside a chunk key or SSE-C headers are the upstream's, presigned; a
            // masked answer's (the gateway's own URLs) come with only an `Authorization` in
            // its `chunkHeaders` (recorded as `[redacted]`).
            let upstream_headers = map
                .get("chunkHeaders")
                .and_then(serde_json::Value::as_object)
                .is_some_and(|headers| headers.keys().any(|name| !name.eq_ignore_ascii_case("authorization")));
            let presigned_chunks = map.contains_key("qrmk") || upstream_headers;
            for (key, inner) in map.iter_mut() {
                if STORAGE_SECRET_KEYS.contains(&key.as_str()) {
                    changed |= redact(inner);
                } else if key == "chunks"
                    && presigned_chunks
                    && let serde_json::Value::Array(chunks) = inner
                {
                    for chunk in chunks {
                        if let Some(url) = chunk.as_object_mut().and_then(|c| c.get_mut("url")) {
                            changed |= redact(url);
                        }
                    }
                } else {
                    changed |= scrub_storage_value(inner);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for inner in items {
                changed |= scrub_storage_value(inner);
            }
        }
        _ => {}
    }
    changed
}

/// A copy of a query answer with its storage secrets redacted, if it holds any (see
/// [`STORAGE_SECRET_KEYS`]; beside a `qrmk` or `chunkHeaders`, the chunks' presigned `url`s
/// too); a body naming one that is not JSON is dropped whole, since it cannot be checked.
fn scrub_storage_secrets(body: &Bytes) -> Option<Bytes> {
    STORAGE_SECRET_MARKERS.iter().find_map(|marker| marker.find(body))?;
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut value) => scrub_storage_value(&mut value)
            .then(|| Bytes::from(serde_json::to_vec(&value).expect("a JSON value serialises"))),
        Err(_) => Some(Bytes::new()),
    }
}

/// The frame to encode: `frame` itself, or a scrubbed copy for credential endpoints and for
/// query answers holding storage secrets.
fn scrubbed(frame: &Frame) -> Option<Frame> {
    scrubbed_within(frame, limits::BODY_BYTES_MAX)
}

/// [`scrubbed`], with the body cap as a parameter. Written again, a body can grow (a number
/// under a secret's key becomes `"[redacted]"`, `1e5` becomes `100000.0`): one grown past
/// the cap is dropped whole (as one that cannot be read is), since readers refuse a record
/// holding it.
fn scrubbed_within(frame: &Frame, body_bytes_max: usize) -> Option<Frame> {
    let endpoint = frame.endpoint()?;
    let body = if CREDENTIAL_ENDPOINTS.contains(&endpoint) {
        scrub_credentials(frame.body()?)?
    } else if STORAGE_SECRET_ENDPOINTS.contains(&endpoint) && matches!(frame, Frame::Response(_)) {
        scrub_storage_secrets(frame.body()?)?
    } else {
        return None;
    };
    let body = if body.len() > body_bytes_max { Bytes::new() } else { body };
    let mut copy = frame.clone();
    match &mut copy {
        Frame::Request(r) => r.body = body,
        Frame::Response(r) => r.body = body,
        Frame::Event(_) => {}
    }
    Some(copy)
}

/// Cuts back a seal whose footer or trailer could not be written, so the segment ends at its
/// last batch again, and with `durable` makes the cut durable (a footer already on disk must
/// not stay under the batches that follow): the write's error, or a fatal one when the file
/// cannot be cut or synced.
fn cut_back_seal(segment: &mut OpenSegment, source: io::Error, durable: bool) -> WriteError {
    let fatal = |what, source| WriteError::Fatal { what, path: segment.path.clone(), source };
    if let Err(e) = segment.file.truncate(segment.len) {
        return fatal("cutting back a failed seal", e);
    }
    if durable && let Err(e) = segment.file.sync() {
        return fatal("fsync after cutting back a seal", e);
    }
    WriteError::Io { path: segment.path.clone(), source }
}

/// One core's segment writer.
pub struct SegmentWriter {
    storage: Arc<dyn Storage>,
    directory: PathBuf,
    core_id: u16,
    mac_key: [u8; 32],
    chain_key: [u8; 32],
    compressor: zstd::bulk::Compressor<'static>,
    segment_bytes_max: u64,
    segment_age_max_us: u64,
    next_record_index: u64,
    chain_head: ChainHead,
    next_sequence: u64,
    current: Option<OpenSegment>,
    /// Segments this writer has sealed (rotations, whichever call made them, and stops).
    sealed: u64,
    payload: Vec<u8>,
    compressed: Vec<u8>,
    out: Vec<u8>,
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("directory", &self.directory)
            .field("core_id", &self.core_id)
            .field("next_record_index", &self.next_record_index)
            .field("next_sequence", &self.next_sequence)
            .finish()
    }
}

/// Where the chain stands after a sealed segment, from its authenticated footer.
struct SealedState {
    chain_head: ChainHead,
    next_index: u64,
    seal_reason: SealReason,
    /// What is damaged in the segment, if anything (see `authenticated_footer`).
    damage: Option<String>,
}

fn corrupt(error: ReadError) -> RecordError {
    RecordError::Corrupt(Box::new(error))
}

impl SegmentWriter {
    /// Opens core `config.core_id`'s chain in `config.directory`: recovers its last segment
    /// (see the module header of `record`) and opens the next one.
    pub fn open(
        storage: Arc<dyn Storage>,
        config: &RecorderConfig,
        now_unix_us: u64,
    ) -> Result<(SegmentWriter, RecoveryReport), RecordError> {
        config.validate()?;
        let directory = config.directory.clone();
        let io_error = |source| RecordError::Io { path: directory.clone(), source };
        storage.create_dir_all(&directory).map_err(io_error)?;
        let mut sequences: Vec<u64> = storage
            .list(&directory)
            .map_err(io_error)?
            .iter()
            .filter_map(|name| SegmentName::parse(name))
            .filter(|name| name.core_id == config.core_id)
            .map(|name| name.sequence)
            .collect();
        sequences.sort_unstable();
        let mut compressor = zstd::bulk::Compressor::new(config.zstd_level).map_err(io_error)?;
        compressor.include_checksum(false).map_err(io_error)?;
        compressor.include_contentsize(true).map_err(io_error)?;
        let mut writer = SegmentWriter {
            storage,
            directory: directory.clone(),
            core_id: config.core_id,
            mac_key: mac_key(&config.sealing_key),
            chain_key: chain_key(&config.sealing_key),
            compressor,
            segment_bytes_max: config.segment_bytes_max,
            segment_age_max_us: config.segment_age_max.as_micros().min(u128::from(u64::MAX)) as u64,
            next_record_index: 0,
            chain_head: genesis(config.core_id),
            next_sequence: 0,
            current: None,
            sealed: 0,
            payload: Vec::new(),
            compressed: Vec::new(),
            out: Vec::new(),
        };
        let mut report = RecoveryReport::default();
        if let Some(&last) = sequences.last() {
            // The next sequence numbers must exist: a name this high was not written here.
            if last > SEQUENCE_MAX {
                return Err(corrupt(ReadError {
                    path: writer.segment_path(last),
                    offset: 0,
                    record_index: None,
                    torn_tail: false,
                    kind: ReadErrorKind::SegmentHeader(super::format::StructureError::OutOfRange),
                }));
            }
            writer.recover_last(last, &mut report, now_unix_us)?;
        }
        if writer.current.is_none() {
            writer.open_next(now_unix_us)?;
        }
        Ok((writer, report))
    }

    fn segment_path(&self, sequence: u64) -> PathBuf {
        self.directory.join(SegmentName { core_id: self.core_id, sequence }.file_name())
    }

    /// A reader of segment `sequence`; a torn header (a creation cut short) is `None`.
    fn open_reader(&self, sequence: u64) -> Result<Option<SegmentReader>, RecordError> {
        let path = self.segment_path(sequence);
        let reader = match SegmentReader::open_with(self.storage.as_ref(), &path, ReaderOptions::default()) {
            Ok(reader) => reader,
            Err(error) if error.torn_tail => return Ok(None),
            Err(error) => return Err(corrupt(error)),
        };
        let header = reader.header();
        if header.core_id != self.core_id || header.sequence != sequence {
            return Err(corrupt(ReadError {
                path,
                offset: 0,
                record_index: None,
                torn_tail: false,
                kind: ReadErrorKind::Misnamed,
            }));
        }
        Ok(Some(reader))
    }

    /// Where the chain stands after a segment sealed under this key (from its footer), and
    /// what is damaged in it, if anything. A sealed segment ([`SegmentReader::sealed`]) must
    /// authenticate (else it is corrupt).
    /// One whose batch headers do not lead to its footer looks open, but if the footer its
    /// trailer names authenticates, this writer sealed it and it was damaged afterwards: its
    /// chain head is still the one sealed, so the chain can go on from it, and the damage is
    /// returned to be reported (the first error a scan meets, naming its offset). `None`: not
    /// sealed.
    fn authenticated_footer(&self, reader: &SegmentReader, path: &Path) -> Result<Option<SealedState>, RecordError> {
        let state = |footer: &Footer, damage| SealedState {
            chain_head: footer.chain_head,
            next_index: footer.first_record_index + footer.record_count,
            seal_reason: footer.seal_reason,
            damage,
        };
        if let Some(sealed) = reader.sealed() {
            self.check_sealed(reader, sealed, path)?;
            return Ok(Some(state(&sealed.footer, None)));
        }
        let Some(named) = reader.footer_named_by_trailer() else { return Ok(None) };
        if self.check_sealed(reader, &named, path).is_err() {
            return Ok(None);
        }
        let damage = match reader.scan().find_map(Result::err) {
            Some(error) => error.to_string(),
            None => format!("{}: its batch headers do not lead to its footer", path.display()),
        };
        Ok(Some(state(&named.footer, Some(damage))))
    }

    fn check_sealed(&self, reader: &SegmentReader, sealed: &SealedFooter, path: &Path) -> Result<(), RecordError> {
        let mac = footer_mac(&self.mac_key, reader.header_bytes(), &sealed.footer_frame);
        let error = |kind| {
            corrupt(ReadError {
                path: path.to_owned(),
                offset: sealed.footer_offset,
                record_index: None,
                torn_tail: false,
                kind,
            })
        };
        if !mac_equal(&mac, &sealed.trailer.mac) {
            return Err(error(ReadErrorKind::FooterMac));
        }
        if sealed.trailer.footer_offset != sealed.footer_offset {
            return Err(error(ReadErrorKind::Trailer(super::format::StructureError::OutOfRange)));
        }
        if sealed.footer.first_record_index != reader.header().first_record_index {
            return Err(error(ReadErrorKind::FooterMismatch("first record index")));
        }
        Ok(())
    }

    /// Recovers the core's last segment, `sequence`. Its possible states, and what each means:
    /// - sealed `stopped`: a clean stop; the next segment follows it.
    /// - sealed `rotated` or `recovered`: its successor was created (header written, file and
    ///   directory fsynced) before the seal, so a missing successor means segments were
    ///   removed: the gap is left for verify to report ([`RecoveryReport::missing_successor`]).
    /// - open with batches: a crash; cut back to its whole batches, then sealed `recovered`
    ///   (its successor created first).
    /// - no records (a torn header, or a header alone): a crash while it was being created, by
    ///   a rotation or a start. It is rewritten to follow the segment before it, which is
    ///   sealed, or open if the crash came between creating this one and sealing that one
    ///   (that one is then recovered as above first).
    fn recover_last(&mut self, sequence: u64, report: &mut RecoveryReport, now: u64) -> Result<(), RecordError> {
        let path = self.segment_path(sequence);
        report.last_segment = Some(path.clone());
        let reader = self.open_reader(sequence)?;
        if let Some(reader) = reader.as_ref().filter(|reader| !reader.is_empty()) {
            if let Some(state) = self.authenticated_footer(reader, &path)? {
                report.was_sealed = true;
                self.continue_after(sequence, state, report);
                return Ok(());
            }
            // An open segment: a crash. Rebuild its footer state from its whole batches.
            self.recover_open(sequence, reader, report)?;
            self.advance(SealReason::Recovered, now)?;
            return Ok(());
        }
        // No records: rewritten (by `open_next`, which reuses a file holding no record) to
        // follow the segment before it.
        report.header_rewritten = true;
        if sequence > 0 {
            let before = sequence - 1;
            let before_path = self.segment_path(before);
            let Some(reader) = self.open_reader(before)? else {
                return Err(corrupt(ReadError {
                    path: before_path,
                    offset: 0,
                    record_index: None,
                    torn_tail: false,
                    kind: ReadErrorKind::NotSealed,
                }));
            };
            match self.authenticated_footer(&reader, &before_path)? {
                Some(state) => {
                    report.damage = state.damage;
                    self.chain_head = state.chain_head;
                    self.next_record_index = state.next_index;
                }
                None => {
                    // A crash between creating this segment and sealing the one before.
                    self.recover_open(before, &reader, report)?;
                    debug_assert_eq!(self.next_sequence, sequence);
                    self.advance(SealReason::Recovered, now)?;
                    return Ok(());
                }
            }
        }
        self.next_sequence = sequence;
        Ok(())
    }

    /// Continues the chain after sealed segment `sequence`, leaving a gap after it if it
    /// promised a successor (see [`SegmentWriter::recover_last`]).
    fn continue_after(&mut self, sequence: u64, state: SealedState, report: &mut RecoveryReport) {
        self.chain_head = state.chain_head;
        self.next_record_index = state.next_index;
        self.next_sequence = sequence + 1;
        report.damage = state.damage;
        if state.seal_reason.has_successor() {
            // Continuing at the promised successor's number would hide the removal: verify
            // would see an unbroken sequence. Skipping it leaves a gap no restart can close.
            report.missing_successor = Some(sequence + 1);
            self.next_sequence = sequence + 2;
        }
    }

    /// Makes open segment `sequence` current again, cut back to its whole batches: the
    /// footer's table and index rebuilt, the chain and record index after its last batch.
    fn recover_open(
        &mut self,
        sequence: u64,
        reader: &SegmentReader,
        report: &mut RecoveryReport,
    ) -> Result<(), RecordError> {
        let path = self.segment_path(sequence);
        let header = reader.header().clone();
        // Before format 4 a batch carries no keyed tag: such an open segment cannot be told
        // from a rewrite in a format whose chain needs no key, wherever it lies (after an
        // authentic sealed segment of its format too: the segments after that one can be
        // deleted and this one forged), and sealing it would authenticate it. The version that
        // wrote it seals it (an upgrade after a crash starts and stops that version first).
        // Versions only grow along a chain: one older than the segment before it was rewritten.
        if header.version < FIRST_KEYED_CHAIN_VERSION {
            let before = sequence
                .checked_sub(1)
                .and_then(|before| Some(self.open_reader(before).ok().flatten()?.header().version));
            let kind = match before {
                Some(before) if before > header.version => {
                    ReadErrorKind::Downgraded { version: header.version, before }
                }
                _ => ReadErrorKind::UnvouchedOpen { version: header.version },
            };
            let record_index = Some(header.first_record_index);
            return Err(corrupt(ReadError { path, offset: 0, record_index, torn_tail: false, kind }));
        }
        let file = self.storage.open_append(&path).map_err(|source| RecordError::Io { path: path.clone(), source })?;
        let mut segment = OpenSegment::new(file, path.clone(), header.clone());
        let mut chain = header.previous_chain_head;
        let mut torn_at = None;
        for batch in reader.scan() {
            match batch {
                Ok(batch) => {
                    chain = batch.chain_after(header.version, &chain, &self.chain_key);
                    // A whole batch whose tag does not hold was not written by a writer with
                    // this key: sealing it would authenticate what someone else wrote.
                    if !batch.tag_holds(&chain) {
                        return Err(corrupt(ReadError {
                            path,
                            offset: batch.offset,
                            record_index: Some(batch.header.first_record_index),
                            torn_tail: false,
                            kind: ReadErrorKind::ChainTag,
                        }));
                    }
                    segment.add_batch(batch.entry(chain), batch.records.iter().flat_map(|r| index_keys(&r.frame)));
                    segment.len = batch.end_offset;
                    let footer_bytes =
                        footer_bytes_estimate(segment.batches.len(), segment.index.key_bytes, segment.index.refs);
                    if let Some(what) = segment_over_limits(segment.batches.len(), segment.index.n_keys, footer_bytes) {
                        return Err(corrupt(ReadError {
                            path,
                            offset: batch.offset,
                            record_index: None,
                            torn_tail: false,
                            kind: ReadErrorKind::SegmentLimit(what),
                        }));
                    }
                }
                Err(error) if error.torn_tail => {
                    torn_at = Some(error.offset);
                    break;
                }
                Err(error) => return Err(corrupt(error)),
            }
        }
        let keep = segment.len;
        if torn_at.is_some() {
            debug_assert_eq!(torn_at, Some(keep));
            segment.file.truncate(keep).map_err(|source| RecordError::Io { path: path.clone(), source })?;
            segment.file.sync().map_err(|source| WriteError::Fatal {
                what: "fsync after cutting a torn tail",
                path: path.clone(),
                source,
            })?;
            report.truncated_at = Some(keep);
            report.bytes_truncated = reader.len() - keep;
        }
        report.records_kept = segment.record_count;
        report.sealed_open_segment = true;
        self.chain_head = chain;
        self.next_record_index = header.first_record_index + segment.record_count;
        self.next_sequence = sequence + 1;
        self.current = Some(segment);
        Ok(())
    }

    /// Opens the next segment (after a seal, or when opening failed before).
    fn open_next(&mut self, now: u64) -> Result<(), WriteError> {
        debug_assert!(self.current.is_none());
        let segment = self.create_segment(now)?;
        self.current = Some(segment);
        self.next_sequence += 1;
        Ok(())
    }

    /// Creates segment `next_sequence`, continuing the chain from where it stands: its header
    /// written, the file and the directory fsynced, so that once this returns the segment
    /// exists after any crash. Does not make it current.
    fn create_segment(&mut self, now: u64) -> Result<OpenSegment, WriteError> {
        let sequence = self.next_sequence;
        let path = self.segment_path(sequence);
        let io = |source| WriteError::Io { path: path.clone(), source };
        let file = match self.storage.create_new(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Left by a failed attempt or a torn creation: reusable only if it holds no record.
                let mut file = self.storage.open_append(&path).map_err(io)?;
                if file.size().map_err(io)? > SEGMENT_HEADER_BYTES as u64 {
                    let source = io::Error::new(io::ErrorKind::AlreadyExists, "a segment with records is in the way");
                    return Err(WriteError::Fatal { what: "opening the next segment", path, source });
                }
                file.truncate(0).map_err(io)?;
                file
            }
            Err(e) => return Err(io(e)),
        };
        let header = SegmentHeader {
            version: FORMAT_VERSION,
            core_id: self.core_id,
            sequence,
            created_unix_us: now,
            first_record_index: self.next_record_index,
            previous_chain_head: self.chain_head,
        };
        let segment = OpenSegment::new(file, path.clone(), header);
        let mut file = segment.file;
        if let Err(source) = file.append(&segment.header_bytes) {
            let _ = file.truncate(0);
            return Err(WriteError::Io { path, source });
        }
        file.sync().map_err(|source| WriteError::Fatal { what: "fsync", path: path.clone(), source })?;
        self.storage.sync_dir(&self.directory).map_err(|source| WriteError::Fatal {
            what: "directory fsync",
            path: self.directory.clone(),
            source,
        })?;
        Ok(OpenSegment { file, ..segment })
    }

    /// Seals the open segment with a reason that promises a successor, after creating that
    /// successor, which becomes the open segment. In this order a sealed segment whose
    /// successor is missing can only mean the successor was removed (a crash in between
    /// leaves the segment open and its successor without records, which recovery knows).
    ///
    /// When the seal fails and is cut back, the successor (a header alone, which recovery
    /// would rewrite) is removed: the segment stays open and takes more records, so the
    /// successor's header no longer follows it, and a stop that sealed the segment as the last
    /// would leave it there for verify to read as a replaced segment. The next rotation
    /// creates it afresh.
    fn advance(&mut self, reason: SealReason, now: u64) -> Result<(), WriteError> {
        debug_assert!(reason.has_successor() && self.current.is_some());
        let next = self.create_segment(now)?;
        if let Err(e) = self.seal(reason, now) {
            // A fatal error may have left the seal on disk (the trailer written, its fsync
            // failed): the successor it promises stays, and this writer writes no more.
            if e.is_fatal() {
                return Err(e);
            }
            let path = next.path.clone();
            drop(next);
            if self.storage.remove(&path).and_then(|()| self.storage.sync_dir(&self.directory)).is_err() {
                // Left there, it is rewritten by the next rotation or start (it holds no record).
                tracing::warn!(path = %path.display(), "A failed rotation's next segment could not be removed.");
            }
            return Err(e);
        }
        self.current = Some(next);
        self.next_sequence += 1;
        Ok(())
    }

    /// Appends `frames` as one batch (a public entry for tests, tools and benchmarks; the
    /// recorder thread uses the same path).
    pub fn append(&mut self, frames: &[Frame], now_unix_us: u64) -> Result<Appended, WriteError> {
        self.append_items(frames, now_unix_us)
    }

    /// Appends an event record as its own batch.
    pub fn append_event(&mut self, kind: EventKind, detail: String, now_unix_us: u64) -> Result<Appended, WriteError> {
        let frame = Frame::Event(EventFrame { time_unix_us: now_unix_us, kind, detail });
        self.append_items(std::slice::from_ref(&frame), now_unix_us)
    }

    pub(super) fn append_items(
        &mut self,
        items: &(impl BatchItems + ?Sized),
        now: u64,
    ) -> Result<Appended, WriteError> {
        let n_items = items.n_items();
        if n_items == 0 {
            return Ok(Appended { first_record_index: self.next_record_index, ..Appended::default() });
        }
        if n_items > limits::BATCH_FRAMES_MAX {
            // Readers refuse such a batch's header: never write one.
            return Err(WriteError::TooLarge { field: "frames per batch" });
        }
        if self.current.is_none() {
            self.open_next(now)?;
        }
        if let Some(why) = self.current.as_ref().and_then(OpenSegment::full) {
            self.rotate(why, now)?;
        }
        let first_record_index = self.next_record_index;
        let (mut time_min, mut time_max) = (u64::MAX, 0u64);
        self.payload.clear();
        for item_idx in 0..n_items {
            let original = items.frame(item_idx);
            let copy = scrubbed(original);
            let frame = copy.as_ref().unwrap_or(original);
            let record_index = first_record_index + item_idx as u64;
            let request_record = match frame {
                Frame::Response(r) => r.request.as_ref().and_then(|link| link.record_index()),
                _ => None,
            };
            let start = self.payload.len();
            self.payload.extend_from_slice(&[0u8; RECORD_PREFIX_BYTES]);
            encode_body(frame, record_index, request_record, &mut self.payload);
            let body_len = self.payload.len() - start - RECORD_PREFIX_BYTES;
            if body_len > limits::RECORD_BYTES_MAX || self.payload.len() > limits::BATCH_BYTES_MAX {
                for assigned_idx in 0..item_idx {
                    items.assign(assigned_idx, u64::MAX);
                }
                return Err(WriteError::TooLarge { field: "record" });
            }
            let body = &self.payload[start + RECORD_PREFIX_BYTES..];
            let crc = crc32c::crc32c(body);
            self.payload[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
            self.payload[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
            time_min = time_min.min(frame.time_unix_us());
            time_max = time_max.max(frame.time_unix_us());
            // Later frames of this batch (a response to a request in it) read this index.
            items.assign(item_idx, record_index);
        }
        match self.write_batch(first_record_index, n_items as u32) {
            Ok((bytes_on_disk, chain)) => {
                let segment = self.current.as_mut().expect("opened above");
                let entry = BatchEntry {
                    offset: segment.len,
                    first_record_index,
                    n_records: n_items as u32,
                    compressed_len: (bytes_on_disk - BATCH_HEADER_BYTES as u64) as u32,
                    uncompressed_len: self.payload.len() as u32,
                    time_min_unix_us: time_min,
                    time_max_unix_us: time_max,
                    chain_head_after: chain,
                };
                segment.len += bytes_on_disk;
                segment.add_batch(entry, (0..n_items).flat_map(|item_idx| index_keys(items.frame(item_idx))));
                self.chain_head = chain;
                self.next_record_index += n_items as u64;
                Ok(Appended {
                    first_record_index,
                    n_records: n_items as u32,
                    bytes_uncompressed: self.payload.len() as u64,
                    bytes_on_disk,
                })
            }
            Err(error) => {
                for item_idx in 0..n_items {
                    items.assign(item_idx, u64::MAX);
                }
                Err(error)
            }
        }
    }

    /// Compresses the payload and appends it as a batch; returns the bytes appended and the
    /// chain value after the batch.
    fn write_batch(&mut self, first_record_index: u64, n_records: u32) -> Result<(u64, ChainHead), WriteError> {
        let segment = self.current.as_mut().expect("opened by the caller");
        let path = segment.path.clone();
        self.compressed.clear();
        self.compressed.reserve(zstd::zstd_safe::compress_bound(self.payload.len()));
        let compressed_len = self
            .compressor
            .compress_to_buffer(&self.payload, &mut self.compressed)
            .map_err(|source| WriteError::Io { path: path.clone(), source })?;
        debug_assert_eq!(compressed_len, self.compressed.len());
        let mut header = BatchHeader {
            compressed_len: compressed_len as u32,
            uncompressed_len: self.payload.len() as u32,
            n_records,
            first_record_index,
            payload_crc: crc32c::crc32c(&self.compressed),
            chain_tag: None,
        };
        let chain = chain_next_keyed(&self.chain_key, &self.chain_head, &header.fields(), &self.compressed);
        header.chain_tag = Some(chain);
        self.out.clear();
        header.encode_into(&mut self.out);
        self.out.extend_from_slice(&self.compressed);
        if let Err(source) = segment.file.append(&self.out) {
            segment.file.truncate(segment.len).map_err(|truncate_error| WriteError::Fatal {
                what: "cutting back a failed write",
                path: path.clone(),
                source: truncate_error,
            })?;
            return Err(WriteError::Io { path, source });
        }
        Ok((self.out.len() as u64, chain))
    }

    /// Makes everything appended durable. Any error is fatal.
    pub fn sync(&mut self) -> Result<(), WriteError> {
        match &mut self.current {
            Some(segment) => segment.file.sync().map_err(|source| WriteError::Fatal {
                what: "fsync",
                path: segment.path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// Why the open segment should be rotated now (size, age, or a per-segment limit).
    pub fn needs_rotation(&self, now_unix_us: u64) -> Option<&'static str> {
        let segment = self.current.as_ref()?;
        if segment.record_count == 0 {
            return None;
        }
        if segment.len >= self.segment_bytes_max {
            Some("size")
        } else if now_unix_us >= segment.header.created_unix_us.saturating_add(self.segment_age_max_us) {
            Some("age")
        } else {
            segment.full()
        }
    }

    /// When the open segment reaches its age limit, if it holds records.
    pub fn age_deadline_unix_us(&self) -> Option<u64> {
        let segment = self.current.as_ref().filter(|s| s.record_count > 0)?;
        Some(segment.header.created_unix_us.saturating_add(self.segment_age_max_us))
    }

    /// Creates the next segment, seals the open one (`rotated`) and records the rotation in
    /// the next. The seal's fsync makes everything appended before durable.
    pub fn rotate(&mut self, why: &'static str, now_unix_us: u64) -> Result<(), WriteError> {
        let Some(sealed_sequence) = self.current.as_ref().map(|s| s.header.sequence) else {
            return self.open_next(now_unix_us);
        };
        self.advance(SealReason::Rotated, now_unix_us)?;
        let detail = format!("segment {sealed_sequence} sealed ({why}); segment {} opened", sealed_sequence + 1);
        self.append_event(EventKind::SegmentRotated, detail, now_unix_us)?;
        Ok(())
    }

    /// Seals the open segment: fsync, footer (with its MAC), fsync, trailer, fsync. With no
    /// open segment (opening one failed), one is opened first so the seal exists. A seal
    /// promising a successor (`rotated`, `recovered`) is for [`SegmentWriter::rotate`] and
    /// recovery, which create the successor first; sealed so directly, with no successor
    /// following, the segment reads as the last of a cut recording.
    pub fn seal(&mut self, reason: SealReason, now_unix_us: u64) -> Result<(), WriteError> {
        if self.current.is_none() {
            self.open_next(now_unix_us)?;
        }
        let segment = self.current.as_mut().expect("opened above");
        // The batches are made durable before the seal is written: a crash during one fsync
        // of both could keep the seal's page and lose a batch's (writeback is unordered), and
        // a sealed segment with a hole reads as tampered with, not as a crash.
        segment.file.sync().map_err(|source| WriteError::Fatal {
            what: "fsync before the seal",
            path: segment.path.clone(),
            source,
        })?;
        let empty = segment.record_count == 0;
        let footer = Footer {
            record_count: segment.record_count,
            first_record_index: segment.header.first_record_index,
            time_min_unix_us: if empty { 0 } else { segment.time_min_unix_us },
            time_max_unix_us: if empty { 0 } else { segment.time_max_unix_us },
            chain_head: self.chain_head,
            sealed_unix_us: now_unix_us,
            seal_reason: reason,
            batches: segment.batches.clone(),
            index: FooterIndex::default(),
        };
        // A large index takes tens of milliseconds to sort and encode; yielding between
        // slices lets a core sharing this CPU at the same real-time priority run meanwhile.
        let mut pause = std::thread::yield_now;
        let bytes = footer.encode_frame_with_index(&segment.index.sorted_entries(&mut pause), &mut pause);
        pause();
        let mac = footer_mac(&self.mac_key, &segment.header_bytes, &bytes);
        pause();
        let trailer = Trailer { footer_offset: segment.len, footer_frame_len: bytes.len() as u32, mac };
        // Written in slices too: page cache writes of a large footer take milliseconds.
        let written = bytes.chunks(FOOTER_WRITE_SLICE_BYTES).enumerate().try_for_each(|(n, slice)| {
            if n > 0 {
                pause();
            }
            segment.file.append(slice)
        });
        if let Err(source) = written {
            return Err(cut_back_seal(segment, source, false));
        }
        // The footer is durable before the trailer, which commits the seal, is written: one
        // fsync of both could keep the trailer and lose a page of the footer (writeback is
        // unordered), a damaged seal that reads as corruption. A footer with no trailer after
        // it reads as a seal torn by a crash, and is recovered.
        segment.file.sync().map_err(|source| WriteError::Fatal {
            what: "fsync of the footer",
            path: segment.path.clone(),
            source,
        })?;
        if let Err(source) = segment.file.append(&trailer.encode()) {
            // The footer is on disk: the cut must be too before more batches follow it, or a
            // crash could leave them over a stale footer (read as corruption, not a torn tail).
            return Err(cut_back_seal(segment, source, true));
        }
        segment.file.sync().map_err(|source| WriteError::Fatal {
            what: "fsync",
            path: segment.path.clone(),
            source,
        })?;
        self.current = None;
        self.sealed += 1;
        Ok(())
    }

    /// How many segments this writer has sealed.
    pub fn segments_sealed(&self) -> u64 {
        self.sealed
    }

    /// The index the next record gets.
    pub fn next_record_index(&self) -> u64 {
        self.next_record_index
    }

    /// The chain head after the last record written.
    pub fn chain_head(&self) -> ChainHead {
        self.chain_head
    }

    /// The open segment's path, if one is open.
    pub fn current_path(&self) -> Option<&Path> {
        self.current.as_ref().map(|s| s.path.as_path())
    }

    /// The open segment's length, if one is open.
    pub fn current_len(&self) -> Option<u64> {
        self.current.as_ref().map(|s| s.len)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::record::frame::ResponseFrame;

    #[test]
    fn a_scrubbed_body_grown_past_the_cap_is_dropped_whole() {
        // Written again, every `1e5` is `100000.0`: the body about doubles.
        let numbers = vec!["1e5"; 100].join(",");
        let text = format!(r#"{{"data":{{"qrmk":"SECRET","rowset":[[{numbers}]]}}}}"#);
        let frame = Frame::Response(ResponseFrame {
            time_unix_us: 1,
            endpoint: Cow::Borrowed("query-request"),
            request: None,
            query_id: None,
            status: 200,
            code: None,
            success: Some(true),
            rows: Some(1),
            upstream_us: 1,
            total_us: 1,
            body: Bytes::from(text.clone()),
        });
        let within = scrubbed_within(&frame, text.len() * 4).unwrap();
        let body = within.body().unwrap();
        assert!(body.len() > text.len() && !body.is_empty(), "the body did not grow: {body:?}");
        assert!(!String::from_utf8_lossy(body).contains("SECRET"));
        let over = scrubbed_within(&frame, text.len()).unwrap();
        assert!(over.body().unwrap().is_empty(), "a body over the cap was kept");
    }
}
