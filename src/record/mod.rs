//! Recording: the [`Frame`]s every exchange becomes, the per-core [`Recorder`] they are handed
//! to, the segment files it writes, and the reader and verifier `snowgate-tools` uses. Frames
//! and the format are pure; the recorder thread and the reader do file I/O only through
//! [`storage::Storage`], never network I/O.
//!
//! # Using it from a core
//!
//! ```text
//! let recorder = Recorder::start(RecorderConfig::new(dir, core_id, sealing_key))?;   // recovers first
//! // Before forwarding: the request record must be accepted (and in `strict` mode durable).
//! let request = recorder.submit(Frame::Request(..)).map_err(refuse)?;       // non-blocking
//! let link = request.link();
//! if recorder.durability().hold_request_until_durable() { request.durable().await.map_err(refuse)?; }
//! // ... forward, read the answer ...
//! let response = recorder.submit(Frame::Response(ResponseFrame { request: Some(link), .. }))?;
//! if recorder.durability().hold_answer_until_durable() { response.durable().await?; }   // `batch`, `strict`
//! // ... write the answer downstream ...
//! ```
//! `submit` fails (`RecordUnavailable`) when the queue is full, the disk is failing (writes are
//! retried: service resumes when space returns), the recorder has failed (an fsync error:
//! never retried, the recorder must be restarted) or a field is over its limit. The gateway
//! then refuses the statement. Dropping a [`Recorder`] drains its queue and seals its segment.
//!
//! # Durability modes
//! - `none`: records reach the page cache; a ticket is durable once written.
//! - `batch`: group commit: the writer fsyncs at most every `interval`; tickets complete after
//!   the fsync that covers them. The gateway releases an answer once its record is durable.
//! - `strict`: the writer fsyncs after every write; the gateway forwards a statement only
//!   once its request record is durable.
//!
//! An fsync error is never retried as if it succeeded (after a writeback error Linux may have
//! dropped the dirty pages, and a second fsync reports success without them): the recorder
//! fails every waiting ticket, refuses every later frame, and logs it. A write error
//! (ENOSPC, EFBIG, EIO on write) cuts the file back to the last whole batch, fails that
//! batch's tickets, refuses frames, and retries by writing a `recorder_error` event (which
//! records how many accepted records were lost); once that is written, service resumes.
//!
//! # Rotation
//! A segment is sealed with a promise of a successor (`rotated`, or `recovered` at start) only
//! once that successor exists: its header written, the file and the directory fsynced. A
//! crash in between leaves the segment open and its successor without records; a sealed
//! segment promising a successor that is missing can only mean segments were removed.
//!
//! # Recovery
//! On start, each core's last segment is checked. A sealed `stopped` one is left alone, and
//! the next segment follows it. A sealed one promising a successor is left alone too, but its
//! successor is missing: segments were removed after it. Recording goes on (availability),
//! from its footer's chain head, at the sequence number after the missing one, so the gap
//! stays for `verify` to report after any number of restarts, and a `recovery_performed`
//! event names it (logged as an error). A last segment with no records (a torn header, or a
//! header alone: a crash while creating it) is rewritten to follow the one before it, which
//! is recovered first if it is open (a crash between creating a successor and sealing).
//! Sealed means its batch headers, walked from the segment header, lead exactly to the footer
//! its trailer names (bodies are agents' bytes, stored raw when incompressible, so a trailer's
//! shape at the end of an open segment proves nothing). An open one is scanned: a torn tail (damage
//! running to the end of the file: a batch cut short, or one whose payload fails its CRC with
//! no writer's frame at its declared end) is cut back to the last whole batch, the segment is
//! sealed (`recovered`), and a `recovery_performed` event opens the next segment. Damage with
//! the writer's frames after it is corruption: [`Recorder::start`] returns it
//! ([`RecordError::Corrupt`]) and nothing is cut. So is a whole batch whose chain tag does not
//! hold under the key (written by someone without it: sealing it would authenticate it), and
//! an open segment in a format before version 4 (no keyed tags), wherever it lies: it cannot
//! be told from a rewrite (a sealed segment of its format before it proves nothing, since the
//! segments after that one can be deleted and an open one forged in their place), so the
//! version that wrote it must seal it first (an upgrade after a crash starts and stops that
//! version once). One exception: a last segment whose batch
//! headers do not lead to its footer, but whose trailer names a footer that authenticates under
//! the key, was sealed by the recorder and damaged afterwards. Its footer's chain head is the
//! one sealed, so the chain goes on from it; the damage (the first error a scan meets, with
//! its file and offset) is logged as an error and recorded in a `recovery_performed` event,
//! and the segment is left as it is, for `verify` to report.
//!
//! # Limits (format version 4)
//! Fields are refused, never truncated, when over their limit.
//!
//! | what | limit |
//! |---|---|
//! | short text fields (endpoint, sub, role, group, ids, tag, code, rule, approver, event) | 4 KiB each |
//! | groups per request | 256 |
//! | `agent_context` | 64 KiB |
//! | statement | 16 MiB |
//! | bindings | 64 MiB |
//! | event detail | 64 KiB |
//! | body (request or response) | 256 MiB (the gateway's inflated-body cap) |
//! | record (encoded body) | 337 MiB |
//! | batch, uncompressed or compressed | 512 MiB |
//! | records per batch (the config's frames per batch may not exceed it) | 4096 |
//! | batches per segment | 65 536 |
//! | footer body | 128 MiB (the writer rotates once its footer passes 32 MiB) |
//! | index keys per segment | 16 Mi |
//! | queue depth (config) | 1 Mi frames |
//! | segment size (config) | 4 GiB (a segment may pass it by one batch) |
//!
//! # Byte layout (format version 4)
//! All integers are little-endian. CRCs are CRC32C (Castagnoli).
//!
//! A core writes segment files `seg-<core, 3+ digits>-<sequence, 10+ digits>.sgr`, sequence
//! 0, 1, 2... A segment is:
//! ```text
//! segment header (96 bytes)
//! batch*                        one zstd frame of records each
//! [footer frame, trailer]       present once sealed
//! ```
//! **Segment header**: `magic "SNOWGREC" (8) | version u16 = 4 | header length u16 = 96 |
//! core u16 | flags u16 = 0 | sequence u64 | created unix µs u64 | first record index u64 |
//! previous chain head [32] | reserved [20] = 0 | crc32c u32` (over bytes 0..92).
//!
//! **Batch**: `marker "SGB1" (4) | compressed length u32 | uncompressed length u32 |
//! records u32 (≥ 1) | first record index u64 | crc32c of the zstd frame u32 | chain tag [32] |
//! crc32c u32` (over bytes 0..60; 64 bytes in all), then one zstd frame (its content size set)
//! which decompresses to the records, back to back:
//!
//! **Record**: `body length u32 | crc32c of body u32 | body`, where the body is
//! `record index u64 | kind u8 (1 request, 2 response, 3 event) | time unix µs u64 | field*`
//! and a field is `tag u8 | value length (LEB128) | value`. Text is UTF-8; integers in values
//! are LEB128 (a session id zig-zag first). Fields appear in ascending tag order, at most once
//! (groups repeat), absent when `None` or an empty body; the encoding is canonical (minimal
//! LEB128, no empty body field), so decoding then encoding gives back the same bytes.
//!
//! | tag | field | kinds |
//! |---|---|---|
//! | 1 | endpoint | request, response (required) |
//! | 2, 3, 4 | sub, role, group (repeated) | request |
//! | 5 | session id (zig-zag) | request |
//! | 6, 7 | request id, query id | request; query id also response |
//! | 8, 9, 10, 11 | statement, bindings, agent context, query tag | request |
//! | 12 | decision: 0 allowed, 1 blocked, 2 parked, 3 approved, 4 refused (required) | request |
//! | 13, 14, 15 | decision rule (blocked, parked, approved), approver (approved), code (refused) | request |
//! | 16 | body (bytes) | request, response |
//! | 20 | request record index | response |
//! | 21 | HTTP status (required) | response |
//! | 22, 23, 24 | Snowflake code, success (0/1), rows | response |
//! | 25, 26 | upstream µs, total µs (required) | response |
//! | 30, 31 | event name, detail (required) | event |
//!
//! **Chain**: per core, over batches, keyed: `head₀ = BLAKE3-derive-key("snowgate record v1
//! chain genesis", core u16)` and `headᵢ₊₁ = BLAKE3-keyed(chain key, headᵢ ‖ batch
//! headerᵢ[0..28] ‖ zstd frameᵢ)`, over the batch header's fields (up to its chain tag) and
//! its compressed frame as they are on disk, with the chain key `BLAKE3-derive-key("snowgate
//! record v4 batch chain", sealing key)`. Each batch header's chain tag is `headᵢ₊₁`, so every
//! batch is authenticated on its own, before any seal: rewriting one, or the chain after it,
//! takes the key. Every record is covered, in order, with its CRC, inside the frame; hashing
//! the compressed bytes costs a tenth of hashing the records or less, and checking the chain
//! needs no decompression. Record indexes count from 0 per core and never restart; a segment
//! header carries the head and index its first record continues. Format versions only grow
//! along a core's chain. Older versions, still read, verified and recovered (the key is not
//! needed for their chain): version 3 chained the same bytes unkeyed, the whole 32-byte
//! header included, with no tag (`BLAKE3(headᵢ ‖ batch headerᵢ ‖ zstd frameᵢ)`); version 2
//! over each batch's decompressed payload (`BLAKE3(headᵢ ‖ payloadᵢ)`, its records with their
//! prefixes); version 1 record by record (`BLAKE3(headᵢ ‖ bodyᵢ)`).
//!
//! **Footer frame**: `marker "SGF1" (4) | body length u32 | crc32c of body u32 | crc32c u32`
//! (over bytes 0..12), then the body: `record count u64 | first record index u64 | time min
//! u64 | time max u64 | chain head [32] | sealed unix µs u64 | seal reason u8 (1 rotated, 2
//! stopped, 3 recovered) | reserved [3] = 0 | batches u32`, then per batch (76 bytes) `offset
//! u64 | first record index u64 | records u32 | compressed length u32 | uncompressed length
//! u32 | time min u64 | time max u64 | chain head after it [32]`, then `keys u32` and per key,
//! sorted by (kind, key), `kind u8 (1 identity, 2 query id, 3 request id) | length u16 | key |
//! references u32 (≥ 1) | batch ordinal u32*` (ascending, unique).
//!
//! **Trailer** (the last 56 bytes): `footer offset u64 | footer frame length u32 | reserved
//! u32 = 0 | MAC [32] | magic "SGSEALv1"`. The MAC is keyed BLAKE3, with the key
//! `BLAKE3-derive-key("snowgate record v1 segment footer mac", sealing key)`, over the
//! segment header's 96 bytes followed by the footer frame.
//!
//! # What a verified recording proves, and what it cannot
//! Sealed segments cannot be altered, reordered, dropped from the middle, duplicated, or
//! moved between cores without the key. A rotated or recovered segment promises a successor,
//! so dropping the last segments is caught unless the cut lands exactly after a clean stop,
//! and a restart does not hide it (recovery leaves the missing sequence number unused). Cutting
//! the last segment's own tail (its seal stripped, whole batches removed, down to its header)
//! looks like a crash to recovery, which keeps what remains.
//! The batches of an open segment cannot be altered either (from format version 4, each
//! carries its keyed chain value): a segment whose seal was stripped can be cut back to fewer
//! whole batches, which is what a crash leaves, but not rewritten, and neither verify nor the
//! next start accepts a rewrite (nor one in an older format, whose chain needs no key: an open
//! segment before format 4 is never accepted). Nothing in the files can catch a rollback to an older,
//! complete state, or the recording's tail cut off at a batch boundary (the last segments
//! deleted and the seal of the one left stripped): that takes an anchor kept elsewhere (the
//! chain head of the last sealed segment, shipped off the host). An open segment's header fields other than its chain link
//! (its creation time) are unauthenticated until it is sealed.

pub mod format;
pub mod frame;
mod key_index;
pub mod reader;
mod recorder;
pub mod storage;
pub mod verify;
mod writer;

#[cfg(test)]
mod tests;

pub use format::{IndexKind, SealReason};
pub use frame::{
    Decision, EventFrame, EventKind, Frame, Principal, RequestFrame, RequestLink, ResponseFrame, detail_value,
};
pub use reader::{ReadError, Record, Recording, SegmentName, SegmentReader};
pub use recorder::{
    Clock, Durability, Durable, ManualClock, RecordUnavailable, Recorder, RecorderConfig, RecorderHealth,
    RecorderStats, SystemClock, Ticket,
};
pub use verify::{VerifyOptions, VerifyReport, verify};
pub use writer::{Appended, RecordError, RecoveryReport, SegmentWriter, WriteError};

/// The format's limits (see the module header).
pub mod limits {
    /// Short text fields: endpoint, sub, role, group, ids, tag, code, rule, approver, event.
    pub const SHORT_FIELD_BYTES_MAX: usize = 4 * 1024;
    /// Groups per request.
    pub const GROUPS_MAX: usize = 256;
    /// The agent's context header.
    pub const AGENT_CONTEXT_BYTES_MAX: usize = 64 * 1024;
    /// A statement.
    pub const STATEMENT_BYTES_MAX: usize = 16 * 1024 * 1024;
    /// Bindings.
    pub const BINDINGS_BYTES_MAX: usize = 64 * 1024 * 1024;
    /// An event's detail.
    pub const EVENT_DETAIL_BYTES_MAX: usize = 64 * 1024;
    /// A request or response body (the gateway's inflated-body cap).
    pub const BODY_BYTES_MAX: usize = 256 * 1024 * 1024;
    /// An encoded record body.
    pub const RECORD_BYTES_MAX: usize = BODY_BYTES_MAX + STATEMENT_BYTES_MAX + BINDINGS_BYTES_MAX + 1024 * 1024;
    /// A batch, uncompressed or compressed.
    pub const BATCH_BYTES_MAX: usize = 512 * 1024 * 1024;
    /// Frames per batch (a config value may not exceed it).
    pub const BATCH_FRAMES_MAX: usize = 4096;
    /// The most a config may set for a batch's bytes.
    pub const BATCH_BYTES_CONFIG_MAX: usize = 64 * 1024 * 1024;
    /// Longest configurable recorder linger.
    pub const LINGER_MAX: std::time::Duration = std::time::Duration::from_millis(100);
    /// Batches per segment.
    pub const BATCHES_PER_SEGMENT_MAX: usize = 65_536;
    /// A footer body.
    pub const FOOTER_BYTES_MAX: usize = 128 * 1024 * 1024;
    /// Footer size after which the writer rotates.
    pub const FOOTER_BYTES_SOFT_MAX: usize = 32 * 1024 * 1024;
    /// Index keys per segment.
    pub const INDEX_KEYS_PER_SEGMENT_MAX: usize = 1 << 24;
    /// Queue depth (config).
    pub const QUEUE_DEPTH_MAX: usize = 1 << 20;
    /// Bytes a queue holds (config).
    pub const QUEUE_BYTES_CONFIG_MAX: usize = 64 << 30;
    /// Segment size (config).
    pub const SEGMENT_BYTES_CONFIG_MAX: u64 = 4 * 1024 * 1024 * 1024;
    /// Longest a stop waits for the recorder thread to write what it holds, seal and sync:
    /// a hung disk must not hang the gateway's exit with it.
    pub const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
}
