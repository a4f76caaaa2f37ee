//! Reading segments: [`SegmentReader`] (one file: header, footer, batches, records, lookups
//! through the footer index) and [`Recording`] (a directory of them, by core and sequence).
//!
//! The reader trusts nothing it has not checked: every structure's CRC before its lengths,
//! every length against the format's limits, decompression capped at the batch's declared
//! size. It does not check MACs or the chain across segments; that is [`super::verify`]'s job.
//! It tells a torn tail (damage that runs to the end of the file, with nothing the writer wrote
//! after it: a crash in mid-write) from corruption (the writer's frames after the damage).
//! Bodies are the agents' bytes, stored raw when incompressible, so the end of an open
//! segment can look like anything: a segment is sealed only when its batch headers, walked
//! from the start, lead to the footer its trailer names, and a torn batch's bytes are looked
//! into only as a last resort (see `SegmentReader::read_sealed_footer` and `is_torn_tail`).

use std::cell::RefCell;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use super::format::{
    BATCH_FIELDS_BYTES, BATCH_MARKER, BatchEntry, BatchHeader, ChainHead, FOOTER_HEADER_BYTES, FOOTER_MARKER, Footer,
    IndexKind, SEGMENT_HEADER_BYTES, SegmentHeader, StructureError, TRAILER_BYTES, Trailer, batch_header_bytes,
    chain_next, chain_next_decompressed, chain_next_keyed, mac_equal,
};
use super::frame::{DecodeError, Frame, RECORD_PREFIX_BYTES, decode_body};
use super::limits;
use super::storage::{FileSystem, ReadAt, Storage};

/// A batch's decompression buffer starts at this many times its compressed size (zstd on
/// records: five to ten times is usual)...
const DECOMPRESS_START_RATIO: usize = 8;
/// ...and at least this, unless the batch declares less.
const DECOMPRESS_START_BYTES_MIN: usize = 64 * 1024;

/// Reader limits, lower than the format's in fuzzing.
#[derive(Debug, Clone, Copy)]
pub struct ReaderOptions {
    /// Largest batch decompressed.
    pub batch_bytes_max: usize,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions { batch_bytes_max: limits::BATCH_BYTES_MAX }
    }
}

/// What is wrong at a place in a segment file.
#[derive(Debug, thiserror::Error)]
pub enum ReadErrorKind {
    /// The file could not be read.
    #[error("read failed: {0}")]
    Io(#[source] io::Error),
    /// The segment header is unusable.
    #[error("segment header: {0}")]
    SegmentHeader(StructureError),
    /// Neither a batch nor the footer starts here.
    #[error("no batch or footer marker")]
    UnknownMarker,
    /// A batch header is unusable.
    #[error("batch header: {0}")]
    BatchHeader(StructureError),
    /// The batch's records start at another index than expected.
    #[error("batch starts at record {found}, expected {expected}")]
    BatchIndex {
        /// The index the chain expects.
        expected: u64,
        /// The index the batch header claims.
        found: u64,
    },
    /// The file ends inside a batch.
    #[error("the file ends inside a batch")]
    BatchTruncated,
    /// The segment holds more than the format lets one segment hold (batches, index keys or
    /// footer bytes): no writer of this format made it.
    #[error("the segment holds more {0} than a segment may")]
    SegmentLimit(&'static str),
    /// The zstd frame's CRC does not match.
    #[error("batch CRC mismatch")]
    PayloadCrc,
    /// The zstd frame does not decompress to its declared size.
    #[error("batch does not decompress to its declared size")]
    Decompress,
    /// The records do not fill the batch exactly.
    #[error("records do not fill the batch")]
    RecordFraming,
    /// A record's CRC does not match.
    #[error("record CRC mismatch")]
    RecordCrc,
    /// A record's CRC matches but its body is not a canonical record.
    #[error("record does not decode: {0}")]
    RecordDecode(DecodeError),
    /// A record carries another index than its place.
    #[error("record index {found} where {expected} was expected")]
    RecordIndex {
        /// The index its place gives it.
        expected: u64,
        /// The index it carries.
        found: u64,
    },
    /// The footer frame is unusable.
    #[error("footer: {0}")]
    Footer(StructureError),
    /// The footer body's CRC does not match.
    #[error("footer CRC mismatch")]
    FooterCrc,
    /// The trailer is unusable or does not point at the footer.
    #[error("trailer: {0}")]
    Trailer(StructureError),
    /// The footer's MAC does not match: the footer or header was altered, or sealed with
    /// another key.
    #[error("footer MAC mismatch (altered, or sealed with another key)")]
    FooterMac,
    /// The footer disagrees with the segment's content.
    #[error("the footer's {0} does not match the segment")]
    FooterMismatch(&'static str),
    /// The segment header names another core or sequence than the file name.
    #[error("the segment header does not match the file name")]
    Misnamed,
    /// The segment has no footer where one was required.
    #[error("the segment is not sealed")]
    NotSealed,
    /// A batch's chain tag (format version 4 on) is not the keyed chain value after it: the
    /// batch, or the chain before it, was written without the key, or with another key.
    #[error("the batch's chain tag does not authenticate (written without the key, or with another key)")]
    ChainTag,
    /// An open segment in a format before version 4 (no keyed tags): it cannot be told from a
    /// rewrite, so neither recovery nor verify vouches for it. Seal it with the snowgate version
    /// that wrote it (start and stop that version once), or move it aside.
    #[error(
        "open segment in format version {version}, whose batches carry no keyed tags: it cannot be told from a \
         rewrite (seal it by starting and stopping the snowgate version that wrote it, or move it aside)"
    )]
    UnvouchedOpen {
        /// The segment's version.
        version: u16,
    },
    /// A segment in an older format version than the one before it: versions only grow, so it
    /// was rewritten, in a format whose chain needs no key.
    #[error("format version {version} after a version {before} segment (rewritten)")]
    Downgraded {
        /// This segment's version.
        version: u16,
        /// The version of the segment before it.
        before: u16,
    },
}

/// A problem at a place in a segment file: the file, the byte offset, and the first record
/// that cannot be trusted when it is known.
#[derive(Debug)]
pub struct ReadError {
    /// The segment file.
    pub path: PathBuf,
    /// Byte offset of the structure at fault.
    pub offset: u64,
    /// The first record index that cannot be trusted, when known.
    pub record_index: Option<u64>,
    /// Whether the damage runs to the end of the file with no valid frame after it (a crash in
    /// mid-write, which recovery truncates) rather than corruption.
    pub torn_tail: bool,
    /// What is wrong.
    pub kind: ReadErrorKind,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.path.display(), self.offset)?;
        if let Some(index) = self.record_index {
            write!(f, " (record {index})")?;
        }
        write!(f, ": {}", self.kind)?;
        if self.torn_tail {
            write!(f, " (torn tail)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.kind)
    }
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The core whose chain holds it.
    pub core_id: u16,
    /// The segment's sequence number.
    pub segment_sequence: u64,
    /// Offset of its batch in the segment file.
    pub batch_offset: u64,
    /// Its index in the core's chain.
    pub index: u64,
    /// Bytes of its encoded body (uncompressed).
    pub encoded_bytes: u32,
    /// The content.
    pub frame: Frame,
}

/// A batch read back: its records and their encoded bodies (for the chain).
#[derive(Debug, Clone)]
pub struct Batch {
    /// Offset of the batch header.
    pub offset: u64,
    /// Offset just after the batch.
    pub end_offset: u64,
    /// The header.
    pub header: BatchHeader,
    /// The header's bytes as read (the chain covers them from version 3, all 32 of them in
    /// version 3, the fields before the chain tag from version 4).
    pub header_bytes: Vec<u8>,
    /// The zstd frame as read (the chain covers it from version 3).
    pub compressed: Bytes,
    /// The decompressed records.
    pub payload: Bytes,
    /// The records, in order.
    pub records: Vec<Record>,
    body_ranges: Vec<Range<usize>>,
}

impl Batch {
    /// Its entry in a footer's batch table, the chain being `chain_head_after` past it (what
    /// the writer wrote for it; recovery and `verify` rebuild footers from these).
    pub(crate) fn entry(&self, chain_head_after: ChainHead) -> BatchEntry {
        let times = self.records.iter().map(|r| r.frame.time_unix_us());
        let (time_min, time_max) = times.fold((u64::MAX, 0), |(lo, hi), t| (lo.min(t), hi.max(t)));
        BatchEntry {
            offset: self.offset,
            first_record_index: self.header.first_record_index,
            n_records: self.header.n_records,
            compressed_len: self.header.compressed_len,
            uncompressed_len: self.header.uncompressed_len,
            time_min_unix_us: time_min,
            time_max_unix_us: time_max,
            chain_head_after,
        }
    }

    /// Each record's canonical body bytes, in order.
    pub fn record_bodies(&self) -> impl Iterator<Item = &[u8]> {
        self.body_ranges.iter().map(|range| &self.payload[range.clone()])
    }

    /// The chain value after this batch, from `previous`, as format `version` defines it: one
    /// keyed step over the header's fields and zstd frame under `chain_key` (version 4, see
    /// [`super::format::chain_key`]), one unkeyed step over the header and zstd frame (version
    /// 3), over the decompressed payload (version 2), or one per record body (version 1).
    pub fn chain_after(&self, version: u16, previous: &ChainHead, chain_key: &[u8; 32]) -> ChainHead {
        match version {
            1 => self.record_bodies().fold(*previous, |chain, body| chain_next_decompressed(&chain, body)),
            2 => chain_next_decompressed(previous, &self.payload),
            3 => chain_next(
                previous,
                self.header_bytes[..].try_into().expect("a version 3 header's length"),
                &self.compressed,
            ),
            _ => chain_next_keyed(
                chain_key,
                previous,
                self.header_bytes[..BATCH_FIELDS_BYTES].try_into().expect("the fields' length"),
                &self.compressed,
            ),
        }
    }

    /// Whether the header's chain tag (from version 4) is `chain`, the value
    /// [`Batch::chain_after`] computed: if not, the batch, or the chain before it, was
    /// written without the key. Always true before version 4 (no tag).
    pub fn tag_holds(&self, chain: &ChainHead) -> bool {
        self.header.chain_tag.is_none_or(|tag| mac_equal(&tag, chain))
    }
}

/// A sealed segment's footer and trailer, unauthenticated until checked with the key.
#[derive(Debug, Clone)]
pub struct SealedFooter {
    /// The decoded footer.
    pub footer: Footer,
    /// The trailer.
    pub trailer: Trailer,
    /// Where the footer frame is (right before the trailer); the trailer's `footer_offset`
    /// must be the same, and verify checks it.
    pub footer_offset: u64,
    /// The footer frame's bytes (what the MAC covers, with the segment header).
    pub footer_frame: Bytes,
}

/// How a sequential scan of a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// At the end of the file with no footer: an open segment.
    Open {
        /// The file's length (where the next batch would go).
        offset: u64,
    },
    /// At the footer of a sealed segment.
    Footer {
        /// The footer frame's offset.
        offset: u64,
    },
}

/// Reads one segment file.
pub struct SegmentReader {
    path: PathBuf,
    file: Box<dyn ReadAt>,
    len: u64,
    header: SegmentHeader,
    header_bytes: [u8; SEGMENT_HEADER_BYTES],
    sealed: Option<SealedFooter>,
    options: ReaderOptions,
    decompressor: RefCell<Option<Decoder<'static>>>,
}

impl std::fmt::Debug for SegmentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentReader")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("header", &self.header)
            .field("sealed", &self.sealed.is_some())
            .finish()
    }
}

impl SegmentReader {
    /// Opens a segment file on the real filesystem.
    pub fn open(path: &Path) -> Result<SegmentReader, ReadError> {
        SegmentReader::open_with(&FileSystem, path, ReaderOptions::default())
    }

    /// Opens a segment file through `storage`.
    pub fn open_with(storage: &dyn Storage, path: &Path, options: ReaderOptions) -> Result<SegmentReader, ReadError> {
        let file = storage.open_read(path).map_err(|e| ReadError {
            path: path.to_owned(),
            offset: 0,
            record_index: None,
            torn_tail: false,
            kind: ReadErrorKind::Io(e),
        })?;
        SegmentReader::from_read_at(path.to_owned(), file, options)
    }

    /// Reads a segment held in memory (fuzzing, tests); `path` only names it in errors.
    pub fn from_bytes(path: PathBuf, bytes: Bytes, options: ReaderOptions) -> Result<SegmentReader, ReadError> {
        SegmentReader::from_read_at(path, Box::new(bytes), options)
    }

    fn from_read_at(path: PathBuf, file: Box<dyn ReadAt>, options: ReaderOptions) -> Result<SegmentReader, ReadError> {
        let len = file.size();
        let mut header_bytes = [0u8; SEGMENT_HEADER_BYTES];
        let error =
            |offset, torn_tail, kind| ReadError { path: path.clone(), offset, record_index: None, torn_tail, kind };
        if len < SEGMENT_HEADER_BYTES as u64 {
            return Err(error(0, true, ReadErrorKind::SegmentHeader(StructureError::Truncated)));
        }
        file.read_exact_at(0, &mut header_bytes).map_err(|e| error(0, false, ReadErrorKind::Io(e)))?;
        let header = SegmentHeader::decode(&header_bytes).map_err(|e| {
            // A header that is all there is was being written when the crash came.
            error(0, len == SEGMENT_HEADER_BYTES as u64, ReadErrorKind::SegmentHeader(e))
        })?;
        let mut reader = SegmentReader {
            path,
            file,
            len,
            header,
            header_bytes,
            sealed: None,
            options,
            decompressor: RefCell::new(None),
        };
        reader.sealed = reader.read_sealed_footer()?;
        Ok(reader)
    }

    fn error(&self, offset: u64, record_index: Option<u64>, kind: ReadErrorKind) -> ReadError {
        ReadError { path: self.path.clone(), offset, record_index, torn_tail: false, kind }
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(offset, &mut buf).map_err(|e| self.error(offset, None, ReadErrorKind::Io(e)))?;
        Ok(buf)
    }

    /// The footer, when the segment is sealed: its last bytes are a trailer, and the batch
    /// headers, walked by their lengths from the segment header, lead exactly to a footer
    /// frame right before it. Bodies are the agents' bytes, stored raw inside a zstd frame
    /// when incompressible, and an open segment may end inside one (a crash): the shape of a
    /// trailer there proves nothing, and taking it for a seal would make recovery refuse to
    /// start. The walk only reads headers the writer wrote, at places it chose, so it cannot
    /// be led into a body. A trailer the walk does not reach leaves the segment open (its
    /// scan then tells a torn tail from corruption). A footer the walk does reach and that
    /// does not decode is an error: it was written whole, so this is not a torn write.
    fn read_sealed_footer(&self) -> Result<Option<SealedFooter>, ReadError> {
        let Some((trailer, footer_offset, frame_len)) = self.footer_place()? else {
            return Ok(None);
        };
        if !self.batches_lead_to_footer(footer_offset)? {
            return Ok(None);
        }
        let footer_frame = Bytes::from(self.read_at(footer_offset, frame_len)?);
        let footer = decode_footer_frame(&footer_frame).map_err(|kind| self.error(footer_offset, None, kind))?;
        Ok(Some(SealedFooter { footer, trailer, footer_offset, footer_frame }))
    }

    /// The trailer at the end of the file, if one decodes, and the place and length of the
    /// footer frame it names.
    fn footer_place(&self) -> Result<Option<(Trailer, u64, usize)>, ReadError> {
        let minimum = (SEGMENT_HEADER_BYTES + FOOTER_HEADER_BYTES + TRAILER_BYTES) as u64;
        if self.len < minimum {
            return Ok(None);
        }
        let trailer_offset = self.len - TRAILER_BYTES as u64;
        let trailer_bytes = self.read_at(trailer_offset, TRAILER_BYTES)?;
        let Ok(trailer) = Trailer::decode(&trailer_bytes) else {
            return Ok(None);
        };
        // The footer sits right before the trailer: its place follows from its length, so a
        // change of size earlier in the file (its headers' CRCs fixed) still leaves the
        // (authenticated) footer readable, and verify can name the batch that changed. The
        // trailer's own offset must agree; verify and recovery check it.
        let frame_len = u64::from(trailer.footer_frame_len);
        let footer_offset = trailer_offset
            .checked_sub(frame_len)
            .filter(|&offset| offset >= SEGMENT_HEADER_BYTES as u64)
            .filter(|_| {
                (FOOTER_HEADER_BYTES as u64..=(limits::FOOTER_BYTES_MAX + FOOTER_HEADER_BYTES) as u64)
                    .contains(&frame_len)
            });
        Ok(footer_offset.map(|offset| (trailer, offset, frame_len as usize)))
    }

    /// The footer the trailer names, read without walking the batch headers to it, when the
    /// walk does not reach it ([`SegmentReader::sealed`] is `None`) and it decodes. A sealed
    /// segment with a damaged batch header looks open to the walk, but so may an open one
    /// that ends in an agent's bytes shaped like a trailer: this footer proves nothing until
    /// its MAC is checked (recovery does, and then continues the chain from it).
    pub fn footer_named_by_trailer(&self) -> Option<SealedFooter> {
        if self.sealed.is_some() {
            return None;
        }
        let (trailer, footer_offset, frame_len) = self.footer_place().ok()??;
        let footer_frame = Bytes::from(self.read_at(footer_offset, frame_len).ok()?);
        let footer = decode_footer_frame(&footer_frame).ok()?;
        Some(SealedFooter { footer, trailer, footer_offset, footer_frame })
    }

    /// Whether the batch headers, each checked and followed by its length from the segment
    /// header on, end exactly at `footer_offset`, where a footer marker is. One header read
    /// per batch, no payload, and at most the format's batches per segment: a file of tiny
    /// batches would otherwise cost a read for every few bytes of it at every open. More
    /// batches before the footer than a segment may hold is corruption (no writer made them),
    /// reported at the first batch past the limit.
    fn batches_lead_to_footer(&self, footer_offset: u64) -> Result<bool, ReadError> {
        let header_len = self.batch_header_len();
        let mut offset = SEGMENT_HEADER_BYTES as u64;
        let mut batches = 0usize;
        while offset < footer_offset {
            if offset + header_len as u64 > footer_offset {
                return Ok(false);
            }
            if batches == limits::BATCHES_PER_SEGMENT_MAX {
                return Err(self.error(offset, None, ReadErrorKind::SegmentLimit("batches")));
            }
            batches += 1;
            let Ok(header) = BatchHeader::decode(&self.read_at(offset, header_len)?, self.header.version) else {
                return Ok(false);
            };
            offset += header_len as u64 + u64::from(header.compressed_len);
        }
        Ok(offset == footer_offset && self.read_at(footer_offset, FOOTER_MARKER.len())?[..] == FOOTER_MARKER)
    }

    /// Bytes in a batch header of this segment's format version.
    fn batch_header_len(&self) -> usize {
        batch_header_bytes(self.header.version)
    }

    /// The segment file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file holds only a header.
    pub fn is_empty(&self) -> bool {
        self.len == SEGMENT_HEADER_BYTES as u64
    }

    /// The segment header.
    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// The segment header's bytes (what the MAC covers, with the footer).
    pub fn header_bytes(&self) -> &[u8; SEGMENT_HEADER_BYTES] {
        &self.header_bytes
    }

    /// The footer, if the segment is sealed (not yet authenticated).
    pub fn sealed(&self) -> Option<&SealedFooter> {
        self.sealed.as_ref()
    }

    /// Reads and checks the batch at `offset`. `expected_first_index`, when given, is the
    /// record index its place in the chain gives it.
    pub fn read_batch(&self, offset: u64, expected_first_index: Option<u64>) -> Result<Batch, ReadError> {
        let limit = self.sealed.as_ref().map_or(self.len, |s| s.footer_offset);
        let at_fault = |kind| self.error(offset, expected_first_index, kind);
        let header_len = self.batch_header_len();
        if offset.checked_add(header_len as u64).is_none_or(|end| end > limit) {
            return Err(at_fault(ReadErrorKind::BatchTruncated));
        }
        let header_bytes = self.read_at(offset, header_len)?;
        let header = BatchHeader::decode(&header_bytes, self.header.version)
            .map_err(|e| at_fault(ReadErrorKind::BatchHeader(e)))?;
        let first_index = expected_first_index.unwrap_or(header.first_record_index);
        let at_fault = |kind| self.error(offset, Some(first_index), kind);
        if header.first_record_index != first_index {
            return Err(at_fault(ReadErrorKind::BatchIndex {
                expected: first_index,
                found: header.first_record_index,
            }));
        }
        // Record indexes are u64 and never wrap: a batch whose last would pass u64::MAX is
        // not one a writer wrote.
        if header.uncompressed_len as usize > self.options.batch_bytes_max
            || header.first_record_index.checked_add(u64::from(header.n_records)).is_none()
        {
            return Err(at_fault(ReadErrorKind::BatchHeader(StructureError::OutOfRange)));
        }
        let payload_offset = offset + header_len as u64;
        let end_offset = payload_offset + u64::from(header.compressed_len);
        if end_offset > limit {
            return Err(at_fault(ReadErrorKind::BatchTruncated));
        }
        let compressed = self.read_at(payload_offset, header.compressed_len as usize)?;
        if crc32c::crc32c(&compressed) != header.payload_crc {
            return Err(at_fault(ReadErrorKind::PayloadCrc));
        }
        let payload = self.decompress(&compressed, header.uncompressed_len as usize).map_err(at_fault)?;
        let (records, body_ranges) = self.parse_records(&payload, offset, &header).map_err(|(index, kind)| {
            ReadError { path: self.path.clone(), offset, record_index: Some(index), torn_tail: false, kind }
        })?;
        Ok(Batch {
            offset,
            end_offset,
            header,
            header_bytes,
            compressed: Bytes::from(compressed),
            payload,
            records,
            body_ranges,
        })
    }

    fn decompress(&self, compressed: &[u8], declared: usize) -> Result<Bytes, ReadErrorKind> {
        // The frame must declare the same size as the batch header, so `declared` is the most
        // decompression can ever produce.
        match zstd::zstd_safe::get_frame_content_size(compressed) {
            Ok(Some(size)) if size == declared as u64 => {}
            _ => return Err(ReadErrorKind::Decompress),
        }
        let mut slot = self.decompressor.borrow_mut();
        if slot.is_none() {
            *slot = Some(Decoder::new().map_err(|_| ReadErrorKind::Decompress)?);
        }
        let decoder = slot.as_mut().expect("just set");
        decoder.reinit().map_err(|_| ReadErrorKind::Decompress)?;
        // The declared size is the header's word, not the data's: a frame of a few bytes may
        // declare hundreds of MiB. The buffer starts at what the compressed size makes likely
        // and doubles as output actually arrives, never past the declared size; a frame that
        // would write more fails (the buffer is full and the frame is not done).
        let likely = compressed.len().saturating_mul(DECOMPRESS_START_RATIO).max(DECOMPRESS_START_BYTES_MIN);
        let mut out = Vec::with_capacity(declared.min(likely));
        // One byte past the declared size: a frame that writes it is longer than it says.
        let limit = declared + 1;
        let mut input = InBuffer::around(compressed);
        loop {
            if out.len() == out.capacity() {
                let room = limit - out.len();
                if room == 0 {
                    return Err(ReadErrorKind::Decompress);
                }
                out.reserve_exact(out.capacity().clamp(1, room));
            }
            let (read_before, written_before) = (input.pos(), out.len());
            let mut output = OutBuffer::around_pos(&mut out, written_before);
            let hint = decoder.run(&mut input, &mut output).map_err(|_| ReadErrorKind::Decompress)?;
            if hint == 0 {
                break; // The frame is complete.
            }
            if input.pos() == read_before && out.len() == written_before {
                // Room to write and nothing read or written: the frame is cut short.
                return Err(ReadErrorKind::Decompress);
            }
        }
        // Bytes after the frame, or a frame shorter than declared, are not a writer's batch.
        if input.pos() != compressed.len() || out.len() != declared {
            return Err(ReadErrorKind::Decompress);
        }
        Ok(Bytes::from(out))
    }

    #[allow(clippy::type_complexity)]
    fn parse_records(
        &self,
        payload: &Bytes,
        batch_offset: u64,
        header: &BatchHeader,
    ) -> Result<(Vec<Record>, Vec<Range<usize>>), (u64, ReadErrorKind)> {
        let n_records = header.n_records as usize;
        // Every record takes at least its prefix and body header: a count beyond that is a lie.
        if n_records > payload.len() / (RECORD_PREFIX_BYTES + 17) {
            return Err((header.first_record_index, ReadErrorKind::RecordFraming));
        }
        // `BatchHeader::decode` bounds the count by `BATCH_FRAMES_MAX`; the capacity is
        // bounded again here so that no count read from a file sizes an allocation alone.
        let capacity = n_records.min(limits::BATCH_FRAMES_MAX);
        let mut records = Vec::with_capacity(capacity);
        let mut ranges = Vec::with_capacity(capacity);
        let mut at = 0usize;
        for i in 0..n_records {
            // `read_batch` checked that `first_record_index + n_records` does not overflow.
            let expected = header.first_record_index + i as u64;
            if payload.len() - at < RECORD_PREFIX_BYTES {
                return Err((expected, ReadErrorKind::RecordFraming));
            }
            let len = u32::from_le_bytes(payload[at..at + 4].try_into().expect("four bytes")) as usize;
            let crc = u32::from_le_bytes(payload[at + 4..at + 8].try_into().expect("four bytes"));
            let start = at + RECORD_PREFIX_BYTES;
            if len > limits::RECORD_BYTES_MAX || payload.len() - start < len {
                return Err((expected, ReadErrorKind::RecordFraming));
            }
            let end = start + len;
            if crc32c::crc32c(&payload[start..end]) != crc {
                return Err((expected, ReadErrorKind::RecordCrc));
            }
            let decoded = decode_body(payload, start, end).map_err(|e| (expected, ReadErrorKind::RecordDecode(e)))?;
            if decoded.record_index != expected {
                return Err((expected, ReadErrorKind::RecordIndex { expected, found: decoded.record_index }));
            }
            records.push(Record {
                core_id: self.header.core_id,
                segment_sequence: self.header.sequence,
                batch_offset,
                index: expected,
                encoded_bytes: len as u32,
                frame: decoded.frame,
            });
            ranges.push(start..end);
            at = end;
        }
        // Bytes past the last record: the batch's framing is wrong, so none of its records
        // can be trusted, and the first is named.
        if at != payload.len() {
            return Err((header.first_record_index, ReadErrorKind::RecordFraming));
        }
        Ok((records, ranges))
    }

    /// Reads the batches in file order, checking that record indexes continue from the
    /// segment header. Stops after the first error.
    pub fn scan(&self) -> Scan<'_> {
        Scan {
            reader: self,
            offset: SEGMENT_HEADER_BYTES as u64,
            next_index: self.header.first_record_index,
            end: None,
            failed: false,
        }
    }

    /// Every batch, in file order, by scanning ([`SegmentReader::scan`]). In a sealed segment
    /// a damaged batch is reported and the scan resumes at the next batch its footer's table
    /// lists (the footer taken as it is, not authenticated: that is `verify`'s job), so one bad
    /// batch does not hide the rest; an open segment's end at the first error (nothing there
    /// says where the next batch starts).
    pub fn batches(&self) -> Batches<'_> {
        Batches { reader: self, scan: self.scan() }
    }

    /// Every record, in order ([`SegmentReader::batches`]: past a damaged batch of a sealed
    /// segment, the next ones; an open segment's end at the first error).
    pub fn records(&self) -> impl Iterator<Item = Result<Record, ReadError>> + '_ {
        self.batches().flat_map(|batch| match batch {
            Ok(batch) => batch.records.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
    }

    /// The records carrying `key`: through the footer index when sealed (decompressing only
    /// the batches it names), by scanning when open.
    pub fn find(&self, kind: IndexKind, key: &str) -> Result<Vec<Record>, ReadError> {
        let mut found = Vec::new();
        match &self.sealed {
            Some(sealed) => {
                let Some(ordinals) = sealed.footer.index.get(kind, key) else {
                    return Ok(found);
                };
                for ordinal in ordinals {
                    let entry = &sealed.footer.batches[ordinal as usize];
                    let batch = self.read_batch(entry.offset, Some(entry.first_record_index))?;
                    found.extend(batch.records.into_iter().filter(|r| has_key(&r.frame, kind, key)));
                }
            }
            None => {
                for batch in self.scan() {
                    found.extend(batch?.records.into_iter().filter(|r| has_key(&r.frame, kind, key)));
                }
            }
        }
        Ok(found)
    }

    /// Whether damage a scan met at `offset` is a torn tail: damage a crash in mid-write
    /// leaves, in a segment not yet sealed, with nothing the writer wrote after it. Anything
    /// else is corruption, reported and never cut. Bodies are the agents' bytes (stored raw
    /// when incompressible), so the bytes of a torn batch may look like anything, frames
    /// included: they are looked into only when nothing better is known.
    /// - A batch or footer cut short by the end of the file is torn by definition.
    /// - A frame whose header holds but whose content fails its CRC: torn unless a frame
    ///   header starts right at the frame's declared end (the writer got past it).
    /// - A header that is itself damaged (no marker, or its CRC fails): torn unless a whole
    ///   frame (header and content CRCs holding) starts anywhere after it.
    /// - A whole footer with no trailer pointing at it: a seal torn before its trailer, if at
    ///   most a trailer's bytes follow it.
    fn is_torn_tail(&self, offset: u64, kind: &ReadErrorKind) -> Result<bool, ReadError> {
        if self.sealed.is_some() {
            // Its batches were all written, and the walk checked their headers, before the seal.
            return Ok(false);
        }
        match kind {
            ReadErrorKind::BatchTruncated => Ok(true),
            ReadErrorKind::PayloadCrc | ReadErrorKind::BatchHeader(_) | ReadErrorKind::UnknownMarker => {
                let header_len = self.batch_header_len();
                let available = (self.len - offset).min(header_len as u64) as usize;
                match BatchHeader::decode(&self.read_at(offset, available)?, self.header.version) {
                    Ok(header) => {
                        let end = offset + header_len as u64 + u64::from(header.compressed_len);
                        Ok(!self.frame_header_at(end)?)
                    }
                    Err(_) => Ok(!self.whole_frame_after(offset)?),
                }
            }
            ReadErrorKind::Footer(_) => {
                let available = (self.len - offset).min(FOOTER_HEADER_BYTES as u64) as usize;
                let Ok((body_len, crc)) = Footer::decode_frame_header(&self.read_at(offset, available)?) else {
                    return Ok(available < FOOTER_HEADER_BYTES || !self.whole_frame_after(offset)?);
                };
                let end = offset + (FOOTER_HEADER_BYTES as u64) + u64::from(body_len);
                if end > self.len {
                    return Ok(true);
                }
                let body = self.read_at(offset + FOOTER_HEADER_BYTES as u64, body_len as usize)?;
                if crc32c::crc32c(&body) != crc {
                    return Ok(!self.frame_header_at(end)?);
                }
                Ok(self.len - end <= TRAILER_BYTES as u64)
            }
            _ => Ok(false),
        }
    }

    /// Whether a valid batch or footer header (its own CRC holding) starts at `offset`.
    fn frame_header_at(&self, offset: u64) -> Result<bool, ReadError> {
        if offset >= self.len {
            return Ok(false);
        }
        let bytes = self.read_at(offset, (self.len - offset).min(self.batch_header_len() as u64) as usize)?;
        Ok(BatchHeader::decode(&bytes, self.header.version).is_ok() || Footer::decode_frame_header(&bytes).is_ok())
    }

    /// Whether a whole frame starts after `from`: a batch or footer whose header and content
    /// CRCs both hold, and which ends inside the file. The contents checked may add up to four
    /// times what follows `from` (and 1 MiB): headers forged to each claim the rest of the file
    /// would otherwise cost its length squared. Past that, the look gives up as if it had
    /// found one: what is not known to be a torn tail is reported as corruption, never cut.
    fn whole_frame_after(&self, from: u64) -> Result<bool, ReadError> {
        const WINDOW_BYTES: u64 = 1 << 20;
        let header_len = self.batch_header_len();
        let mut budget = (self.len - from).saturating_mul(4).saturating_add(WINDOW_BYTES);
        let mut start = from + 1;
        while start < self.len {
            let window_len = (self.len - start).min(WINDOW_BYTES + header_len as u64);
            let window = self.read_at(start, window_len as usize)?;
            for marker in [&BATCH_MARKER, &FOOTER_MARKER] {
                for at in memchr::memmem::find_iter(&window, marker) {
                    let candidate = &window[at..];
                    let content = if marker == &BATCH_MARKER {
                        BatchHeader::decode(candidate, self.header.version)
                            .ok()
                            .map(|h| (header_len as u64, u64::from(h.compressed_len), h.payload_crc))
                    } else {
                        Footer::decode_frame_header(candidate)
                            .ok()
                            .map(|(len, crc)| (FOOTER_HEADER_BYTES as u64, u64::from(len), crc))
                    };
                    let Some((header_len, content_len, crc)) = content else {
                        continue;
                    };
                    let content_offset = start + at as u64 + header_len;
                    if content_offset + content_len > self.len {
                        continue;
                    }
                    let Some(left) = budget.checked_sub(content_len) else {
                        return Ok(true);
                    };
                    budget = left;
                    if self.crc_of(content_offset, content_len)? == crc {
                        return Ok(true);
                    }
                }
            }
            start += WINDOW_BYTES;
        }
        Ok(false)
    }

    /// The CRC32C of `len` bytes at `offset`, read a megabyte at a time.
    fn crc_of(&self, offset: u64, len: u64) -> Result<u32, ReadError> {
        const PIECE_BYTES: u64 = 1 << 20;
        let mut crc = 0;
        let mut done = 0;
        while done < len {
            let piece = (len - done).min(PIECE_BYTES);
            crc = crc32c::crc32c_append(crc, &self.read_at(offset + done, piece as usize)?);
            done += piece;
        }
        Ok(crc)
    }
}

fn decode_footer_frame(frame: &Bytes) -> Result<Footer, ReadErrorKind> {
    let (body_len, crc) = Footer::decode_frame_header(frame).map_err(ReadErrorKind::Footer)?;
    let body = frame.slice(FOOTER_HEADER_BYTES..);
    if body.len() != body_len as usize {
        return Err(ReadErrorKind::Footer(StructureError::OutOfRange));
    }
    if crc32c::crc32c(&body) != crc {
        return Err(ReadErrorKind::FooterCrc);
    }
    Footer::decode_shared_body(&body).map_err(ReadErrorKind::Footer)
}

/// The keys a frame is indexed under in the footer.
pub fn index_keys(frame: &Frame) -> impl Iterator<Item = (IndexKind, &str)> {
    let (sub, query_id, request_id) = match frame {
        Frame::Request(r) => (r.principal.sub.as_deref(), r.query_id.as_deref(), r.request_id.as_deref()),
        Frame::Response(r) => (None, r.query_id.as_deref(), None),
        Frame::Event(_) => (None, None, None),
    };
    [(IndexKind::Identity, sub), (IndexKind::QueryId, query_id), (IndexKind::RequestId, request_id)]
        .into_iter()
        .filter_map(|(kind, key)| key.map(|key| (kind, key)))
}

fn has_key(frame: &Frame, kind: IndexKind, key: &str) -> bool {
    index_keys(frame).any(|(k, v)| k == kind && v == key)
}

/// A sequential scan of a segment's batches.
pub struct Scan<'a> {
    reader: &'a SegmentReader,
    offset: u64,
    next_index: u64,
    end: Option<ScanEnd>,
    failed: bool,
}

impl Scan<'_> {
    /// How the scan ended: `None` while running or after an error.
    pub fn end(&self) -> Option<ScanEnd> {
        self.end
    }

    /// The offset just after the last good batch.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The record index the next batch must start at.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    fn fail(&mut self, mut error: ReadError) -> Option<Result<Batch, ReadError>> {
        self.failed = true;
        // Only damage a crash can cause may be a torn tail (see `is_torn_tail`). A batch whose
        // CRC holds but whose content is wrong was written that way (or edited), wherever it is.
        error.torn_tail = match self.reader.is_torn_tail(error.offset, &error.kind) {
            Ok(torn) => torn,
            Err(io_error) => return Some(Err(io_error)),
        };
        Some(Err(error))
    }
}

impl Iterator for Scan<'_> {
    type Item = Result<Batch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.end.is_some() {
            return None;
        }
        let reader = self.reader;
        let footer_offset = reader.sealed.as_ref().map(|s| s.footer_offset);
        if Some(self.offset) == footer_offset {
            self.end = Some(ScanEnd::Footer { offset: self.offset });
            return None;
        }
        if self.offset == reader.len {
            self.end = Some(ScanEnd::Open { offset: self.offset });
            return None;
        }
        let remaining = footer_offset.unwrap_or(reader.len) - self.offset;
        if remaining < 4 {
            let kind = ReadErrorKind::BatchTruncated;
            return self.fail(reader.error(self.offset, Some(self.next_index), kind));
        }
        let marker = match reader.read_at(self.offset, 4) {
            Ok(marker) => marker,
            Err(e) => return self.fail(e),
        };
        if marker[..] == FOOTER_MARKER {
            // A footer where no trailer points: the seal was torn, or bytes were inserted.
            let kind = ReadErrorKind::Footer(StructureError::Truncated);
            return self.fail(reader.error(self.offset, Some(self.next_index), kind));
        }
        if marker[..] != BATCH_MARKER {
            return self.fail(reader.error(self.offset, Some(self.next_index), ReadErrorKind::UnknownMarker));
        }
        match reader.read_batch(self.offset, Some(self.next_index)) {
            Ok(batch) => {
                self.offset = batch.end_offset;
                // `read_batch` checked that the batch's indexes do not pass u64::MAX.
                self.next_index = batch.header.first_record_index + u64::from(batch.header.n_records);
                Some(Ok(batch))
            }
            Err(e) => self.fail(e),
        }
    }
}

/// [`SegmentReader::batches`].
pub struct Batches<'a> {
    reader: &'a SegmentReader,
    scan: Scan<'a>,
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.scan.next()?;
        if let (Err(error), Some(sealed)) = (&item, &self.reader.sealed) {
            // Past the damage, at a batch before the footer: always further on, so this ends.
            let resume =
                sealed.footer.batches.iter().find(|e| e.offset > error.offset && e.offset < sealed.footer_offset);
            if let Some(entry) = resume {
                self.scan = Scan {
                    reader: self.reader,
                    offset: entry.offset,
                    next_index: entry.first_record_index,
                    end: None,
                    failed: false,
                };
            }
        }
        Some(item)
    }
}

/// A segment file's name, parsed: `seg-<core>-<sequence>.sgr`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    /// The core.
    pub core_id: u16,
    /// The sequence number.
    pub sequence: u64,
}

impl SegmentName {
    /// The file name, zero-padded so that names sort like sequences.
    pub fn file_name(&self) -> String {
        format!("seg-{:03}-{:010}.sgr", self.core_id, self.sequence)
    }

    /// Parses a canonical file name; anything else (other padding included) is `None`.
    pub fn parse(name: &str) -> Option<SegmentName> {
        let rest = name.strip_prefix("seg-")?.strip_suffix(".sgr")?;
        let (core, sequence) = rest.split_once('-')?;
        if !core.bytes().all(|b| b.is_ascii_digit()) || !sequence.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let parsed = SegmentName { core_id: core.parse().ok()?, sequence: sequence.parse().ok()? };
        (parsed.file_name() == name).then_some(parsed)
    }
}

/// A directory of segments, for reading.
pub struct Recording {
    storage: Arc<dyn Storage>,
    directory: PathBuf,
    segments: Vec<SegmentName>,
    other_files: Vec<String>,
    options: ReaderOptions,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording").field("directory", &self.directory).field("segments", &self.segments.len()).finish()
    }
}

impl Recording {
    /// Lists a directory on the real filesystem.
    pub fn open(directory: &Path) -> io::Result<Recording> {
        Recording::open_with(Arc::new(FileSystem), directory, ReaderOptions::default())
    }

    /// Lists a directory through `storage`.
    pub fn open_with(storage: Arc<dyn Storage>, directory: &Path, options: ReaderOptions) -> io::Result<Recording> {
        let mut segments = Vec::new();
        let mut other_files = Vec::new();
        for name in storage.list(directory)? {
            match SegmentName::parse(&name) {
                Some(segment) => segments.push(segment),
                None => other_files.push(name),
            }
        }
        segments.sort();
        Ok(Recording { storage, directory: directory.to_owned(), segments, other_files, options })
    }

    /// The directory.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Every segment, by core then sequence.
    pub fn segments(&self) -> &[SegmentName] {
        &self.segments
    }

    /// Files in the directory that are not segments.
    pub fn other_files(&self) -> &[String] {
        &self.other_files
    }

    /// The path of a segment.
    pub fn path(&self, segment: &SegmentName) -> PathBuf {
        self.directory.join(segment.file_name())
    }

    /// Opens one segment.
    pub fn segment(&self, segment: &SegmentName) -> Result<SegmentReader, ReadError> {
        SegmentReader::open_with(self.storage.as_ref(), &self.path(segment), self.options)
    }

    /// The storage it reads through.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Every record of every segment, by core then index. A segment that fails yields its
    /// error after its good records; the next segment follows.
    pub fn records(&self) -> impl Iterator<Item = Result<Record, ReadError>> + '_ {
        self.segments.iter().flat_map(move |segment| match self.segment(segment) {
            Ok(reader) => reader.records().collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
    }

    /// Record `index` of core `core_id` (a response's request, say): through footers where
    /// sealed, decompressing one batch; by scanning an open segment. Segments are looked at
    /// newest first, since the one holding a record is the last whose first index is not past
    /// it (a response's request is usually in its segment or the one before). A segment that
    /// cannot be opened is passed over for the ones before it, and its error is returned when
    /// none of them holds the record (the record may be in it).
    pub fn record(&self, core_id: u16, index: u64) -> Result<Option<Record>, ReadError> {
        let mut unreadable = None;
        for segment in self.segments.iter().rev().filter(|s| s.core_id == core_id) {
            let reader = match self.segment(segment) {
                Ok(reader) => reader,
                Err(e) => {
                    unreadable.get_or_insert(e);
                    continue;
                }
            };
            let first = reader.header().first_record_index;
            if index < first {
                continue;
            }
            let found = match reader.sealed() {
                Some(sealed) => {
                    let footer = &sealed.footer;
                    let position = footer.batches.partition_point(|b| b.first_record_index <= index);
                    match position.checked_sub(1).map(|p| &footer.batches[p]) {
                        Some(entry) if index - first < footer.record_count => {
                            let batch = reader.read_batch(entry.offset, Some(entry.first_record_index))?;
                            batch.records.into_iter().find(|r| r.index == index)
                        }
                        _ => None,
                    }
                }
                // The first record read with the index, or the first error.
                None => reader
                    .records()
                    .find(|r| r.as_ref().is_err() || r.as_ref().is_ok_and(|r| r.index == index))
                    .transpose()?,
            };
            return match (found, unreadable) {
                (None, Some(e)) => Err(e),
                (found, _) => Ok(found),
            };
        }
        unreadable.map_or(Ok(None), Err)
    }

    /// The records carrying `key`, in every segment, through footer indexes where sealed.
    pub fn find(&self, kind: IndexKind, key: &str) -> Result<Vec<Record>, ReadError> {
        let mut found = Vec::new();
        for segment in &self.segments {
            found.extend(self.segment(segment)?.find(kind, key)?);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use super::*;
    use crate::record::format::{BATCH_HEADER_BYTES, Footer, SealReason, Trailer};
    use crate::record::storage::{SimulatedStorage, SplitMix64, Storage};
    use crate::record::{Decision, Principal, RecordError, RecorderConfig, RequestFrame, SegmentWriter, verify};

    const KEY: [u8; 32] = [9; 32];
    const T0: u64 = 1_750_000_000_000_000;

    fn directory() -> PathBuf {
        PathBuf::from("/recordings")
    }

    fn segment_path(sequence: u64) -> PathBuf {
        directory().join(SegmentName { core_id: 0, sequence }.file_name())
    }

    fn noise(rng: &mut SplitMix64, n: usize) -> Vec<u8> {
        (0..n).map(|_| rng.next_u64() as u8).collect()
    }

    fn request(n: u64, body: Vec<u8>) -> Frame {
        Frame::Request(RequestFrame {
            time_unix_us: T0 + n,
            endpoint: Cow::Borrowed("query-request"),
            principal: Principal { sub: Some("agent".into()), role: None, groups: vec![] },
            session_id: Some(7),
            request_id: Some(format!("req-{n}")),
            query_id: None,
            statement: Some(format!("select {n}")),
            bindings: None,
            agent_context: None,
            query_tag: None,
            decision: Decision::Allowed,
            body: Bytes::from(body),
        })
    }

    /// A fake seal as an agent can write one: a footer frame whose CRCs hold and a trailer
    /// pointing at it (its MAC made up), with the trailer at its end.
    fn fake_seal(rng: &mut SplitMix64) -> Vec<u8> {
        let footer = Footer {
            record_count: rng.next_u64() >> 8,
            first_record_index: rng.next_u64() >> 8,
            time_min_unix_us: rng.next_u64(),
            time_max_unix_us: rng.next_u64(),
            chain_head: noise(rng, 32).try_into().unwrap(),
            sealed_unix_us: rng.next_u64(),
            seal_reason: SealReason::Stopped,
            batches: vec![],
            index: Default::default(),
        };
        let mut seal = footer.encode_frame();
        let mac = noise(rng, 32).try_into().unwrap();
        let trailer = Trailer { footer_offset: rng.next_u64() >> 40, footer_frame_len: seal.len() as u32, mac };
        seal.extend_from_slice(&trailer.encode());
        seal
    }

    /// A batch header an agent can write: its own CRC holds; its payload CRC does not.
    fn fake_batch_header(rng: &mut SplitMix64) -> Vec<u8> {
        let header = BatchHeader {
            compressed_len: 64,
            uncompressed_len: 200,
            n_records: 1,
            first_record_index: 3,
            payload_crc: rng.next_u64() as u32,
            chain_tag: Some([rng.next_u64() as u8; 32]),
        };
        header.encode()
    }

    /// An agent's incompressible body holding what a reader might take for frames: a fake
    /// seal, a fake batch header, optionally a whole fake batch (its payload CRC holding),
    /// and the seal's magic at its very end.
    fn hostile_body(seed: u64, whole_fake_batch: bool, tail: &[u8]) -> Vec<u8> {
        let mut rng = SplitMix64(seed);
        // Long enough that zstd's least gain for a block is more than the fake frames' few
        // repeated bytes would save: the block is stored raw.
        let mut body = noise(&mut rng, 8000);
        body.extend(fake_seal(&mut rng));
        body.extend(noise(&mut rng, 300));
        body.extend(fake_batch_header(&mut rng));
        body.extend(noise(&mut rng, 300));
        if whole_fake_batch {
            let record = noise(&mut rng, 40);
            body.extend(crate::record::format::encode_batch(&[7; 32], &[0; 32], 3, &[&record], 1).unwrap().0);
            body.extend(noise(&mut rng, 300));
        }
        body.extend_from_slice(tail);
        body
    }

    /// An open segment (a crash before the seal): three ordinary batches, then one request
    /// whose body is `body`. Returns the file's bytes and where the last batch starts.
    fn open_segment_ending_in(body: Vec<u8>) -> (Vec<u8>, u64) {
        let storage = SimulatedStorage::new();
        let config = RecorderConfig::new(directory(), 0, KEY);
        let (mut writer, _) = SegmentWriter::open(Arc::new(storage.clone()), &config, T0).unwrap();
        for n in 0..3 {
            writer.append(&[request(n, format!("{{\"n\":{n}}}").into_bytes())], T0 + n).unwrap();
        }
        let last_batch = writer.current_len().unwrap();
        writer.append(&[request(3, body.clone())], T0 + 3).unwrap();
        let bytes = storage.read(&segment_path(0)).unwrap();
        // The body is stored raw, last in the file: what the reader sees is the agent's.
        assert!(bytes.ends_with(&body), "the body was not stored raw at the end");
        (bytes, last_batch)
    }

    /// Recovers a core whose only segment holds `bytes`; the recovery report and the records
    /// read back afterwards (the recovered segment sealed, and a fresh one opened).
    fn recover(bytes: &[u8]) -> Result<(crate::record::RecoveryReport, SimulatedStorage), RecordError> {
        let storage = SimulatedStorage::new();
        storage.create_dir_all(&directory()).unwrap();
        storage.write(&segment_path(0), bytes.to_vec());
        let config = RecorderConfig::new(directory(), 0, KEY);
        let (_, report) = SegmentWriter::open(Arc::new(storage.clone()), &config, T0 + 100)?;
        Ok((report, storage))
    }

    fn assert_recovers_keeping(bytes: &[u8], kept: u64, kept_end: u64, case: &str) {
        let (report, storage) = recover(bytes).unwrap_or_else(|e| panic!("{case}: recovery refused: {e}"));
        assert_eq!(report.records_kept, kept, "{case}");
        let cut = kept_end != bytes.len() as u64;
        assert_eq!(report.truncated_at, cut.then_some(kept_end), "{case}");
        let recovered = storage.read(&segment_path(0)).unwrap();
        assert_eq!(recovered[..kept_end as usize], bytes[..kept_end as usize], "{case}");
        let recording = Recording::open_with(Arc::new(storage), &directory(), ReaderOptions::default()).unwrap();
        let indexes: Vec<u64> = recording
            .records()
            .map(|r| r.unwrap_or_else(|e| panic!("{case}: {e}")))
            .filter(|r| matches!(r.frame, Frame::Request(_)))
            .map(|r| r.index)
            .collect();
        assert_eq!(indexes, (0..kept).collect::<Vec<_>>(), "{case}");
    }

    #[test]
    fn an_open_segment_cut_anywhere_in_a_body_full_of_fake_frames_keeps_the_whole_batches_before_it() {
        // Regression: a cut right after the body's fake seal looked sealed (recovery then
        // refused its MAC), and a cut after its fake batch header looked like corruption.
        let body = hostile_body(1, true, &crate::record::format::TRAILER_MAGIC);
        let (bytes, last_batch) = open_segment_ending_in(body);
        for cut in last_batch..bytes.len() as u64 {
            assert_recovers_keeping(&bytes[..cut as usize], 3, last_batch, &format!("cut at {cut}"));
        }
        // Uncut, the file ends in the magic: still open, every batch kept.
        assert_eq!(bytes[bytes.len() - 8..], crate::record::format::TRAILER_MAGIC);
        assert_recovers_keeping(&bytes, 4, bytes.len() as u64, "uncut");
        let reader = SegmentReader::from_bytes("x".into(), Bytes::from(bytes), ReaderOptions::default()).unwrap();
        assert!(reader.sealed().is_none());
    }

    /// A batch whose records, each whole, do not fill its payload is named by its first
    /// record, not by the one after it (the next batch's first).
    #[test]
    fn bytes_after_a_batch_s_last_record_name_its_first_record() {
        let header = SegmentHeader {
            version: crate::record::format::FORMAT_VERSION,
            core_id: 0,
            sequence: 0,
            created_unix_us: T0,
            first_record_index: 5,
            previous_chain_head: crate::record::format::genesis(0),
        };
        let reader =
            SegmentReader::from_bytes("x".into(), Bytes::from(header.encode().to_vec()), Default::default()).unwrap();
        let mut body = Vec::new();
        request(5, b"select 1".to_vec()).encode_body(5, &mut body);
        let mut payload = Vec::new();
        payload.extend_from_slice(&(body.len() as u32).to_le_bytes());
        payload.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        payload.extend_from_slice(&body);
        let batch = BatchHeader {
            compressed_len: 0,
            uncompressed_len: payload.len() as u32,
            n_records: 1,
            first_record_index: 5,
            payload_crc: 0,
            chain_tag: None,
        };
        let whole = Bytes::from(payload.clone());
        assert_eq!(reader.parse_records(&whole, 64, &batch).unwrap().0.len(), 1);
        payload.push(0);
        let error = reader.parse_records(&Bytes::from(payload), 64, &batch).expect_err("a trailing byte");
        assert!(matches!(error, (5, ReadErrorKind::RecordFraming)), "{error:?}");
    }

    #[test]
    fn a_body_ending_in_a_fake_seal_does_not_seal_an_open_segment() {
        let mut rng = SplitMix64(2);
        let seal = fake_seal(&mut rng);
        let (bytes, last_batch) = open_segment_ending_in(hostile_body(2, false, &seal));
        assert_recovers_keeping(&bytes, 4, bytes.len() as u64, "a valid-looking footer and trailer");
        assert_recovers_keeping(&bytes[..bytes.len() - 1], 3, last_batch, "cut by one byte");
    }

    #[test]
    fn a_body_whose_trailer_points_at_its_own_batch_does_not_seal_an_open_segment() {
        // The trailer's footer length is made to land on the last batch's header, a place
        // the header walk reaches: the walk must find a batch there, not a footer.
        let mac = noise(&mut SplitMix64(33), 32).try_into().unwrap();
        let mut tail = Trailer { footer_offset: 0, footer_frame_len: 0, mac }.encode().to_vec();
        let (first, last_batch) = open_segment_ending_in(hostile_body(3, false, &tail));
        let frame_len = first.len() as u64 - TRAILER_BYTES as u64 - last_batch;
        tail = Trailer { footer_offset: last_batch, footer_frame_len: frame_len as u32, mac }.encode().to_vec();
        let (bytes, again) = open_segment_ending_in(hostile_body(3, false, &tail));
        assert_eq!((bytes.len(), again), (first.len(), last_batch));
        assert_recovers_keeping(&bytes, 4, bytes.len() as u64, "trailer pointing at the last batch");
    }

    #[test]
    fn a_hole_in_the_last_batch_is_a_torn_tail_whatever_its_body_holds() {
        // A crash may leave the file's length written but a block of it not: the last
        // batch's header holds, its payload CRC does not, and nothing follows its end.
        let (mut bytes, last_batch) = open_segment_ending_in(hostile_body(4, true, b"tail"));
        let hole = last_batch as usize + 100..last_batch as usize + 400;
        bytes[hole].fill(0);
        assert_recovers_keeping(&bytes, 3, last_batch, "hole");
    }

    #[test]
    fn a_damaged_last_batch_header_is_a_torn_tail_unless_a_whole_frame_follows() {
        // Only frames whose content CRC holds count after a damaged header: a header alone
        // (an agent's) does not. (An agent's whole fake frame would: the scan cannot tell it
        // from the writer's, and that damage is not what a crash leaves in the tail.)
        let mut rng = SplitMix64(5);
        let mut body = noise(&mut rng, 3000);
        body.extend(fake_batch_header(&mut rng));
        body.extend(noise(&mut rng, 300));
        let (mut bytes, last_batch) = open_segment_ending_in(body.clone());
        let header = last_batch as usize..last_batch as usize + BATCH_HEADER_BYTES;
        bytes[header.clone()].fill(0);
        assert_recovers_keeping(&bytes, 3, last_batch, "header zeroed, a fake header in the body");
        // The same damage to the second batch's header, whole batches after it: corruption.
        let (mut bytes, _) = open_segment_ending_in(body);
        let reader = SegmentReader::from_bytes("x".into(), Bytes::from(bytes.clone()), ReaderOptions::default());
        let second = reader.unwrap().scan().nth(1).unwrap().unwrap().offset as usize;
        bytes[second..second + BATCH_HEADER_BYTES].fill(0);
        let Err(RecordError::Corrupt(error)) = recover(&bytes) else { panic!("not reported as corruption") };
        assert_eq!((error.offset, error.record_index, error.torn_tail), (second as u64, Some(1), false));
    }

    #[test]
    fn a_sealed_segment_still_reads_as_sealed_and_verifies() {
        let (bytes, _) = open_segment_ending_in(hostile_body(6, true, &crate::record::format::TRAILER_MAGIC));
        let (_, storage) = recover(&bytes).unwrap();
        let recording = Recording::open_with(Arc::new(storage), &directory(), ReaderOptions::default()).unwrap();
        let reader = recording.segment(&SegmentName { core_id: 0, sequence: 0 }).unwrap();
        assert_eq!(reader.sealed().unwrap().footer.record_count, 4);
        let options = verify::VerifyOptions { allow_open: true, ..Default::default() };
        let report = verify(&recording, &KEY, &options, &mut |_| {});
        assert!(report.is_ok(), "{:?}", report.problems);
    }

    #[test]
    fn record_indexes_that_would_pass_u64_max_are_out_of_range() {
        let header = SegmentHeader {
            version: crate::record::format::FORMAT_VERSION,
            core_id: 0,
            sequence: 0,
            created_unix_us: T0,
            first_record_index: u64::MAX - 1,
            previous_chain_head: crate::record::format::genesis(0),
        };
        let mut bytes = header.encode().to_vec();
        let body = [0u8; 40];
        bytes.extend(
            crate::record::format::encode_batch(&[7; 32], &[0; 32], u64::MAX - 1, &[&body, &body, &body], 1).unwrap().0,
        );
        let reader = SegmentReader::from_bytes("x".into(), Bytes::from(bytes), ReaderOptions::default()).unwrap();
        let error = reader.scan().next().unwrap().unwrap_err();
        assert!(matches!(error.kind, ReadErrorKind::BatchHeader(StructureError::OutOfRange)), "{error}");
    }

    /// A zstd frame declaring `declared` bytes whose content is `blocks` RLE blocks of 128 KiB
    /// of zeros (four bytes each): a few KiB that claim, or hold, hundreds of MiB.
    fn rle_frame(declared: u32, blocks: u32) -> Vec<u8> {
        // Magic; descriptor: single segment, four-byte content size; the content size.
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xa0];
        frame.extend_from_slice(&declared.to_le_bytes());
        for n in 0..blocks {
            let last = u32::from(n + 1 == blocks);
            let block_header = last | (1 << 1) | ((128 * 1024) << 3);
            frame.extend_from_slice(&block_header.to_le_bytes()[..3]);
            frame.push(0);
        }
        frame
    }

    fn segment_header() -> [u8; SEGMENT_HEADER_BYTES] {
        let header = SegmentHeader {
            version: crate::record::format::FORMAT_VERSION,
            core_id: 0,
            sequence: 0,
            created_unix_us: T0,
            first_record_index: 0,
            previous_chain_head: crate::record::format::genesis(0),
        };
        header.encode()
    }

    /// A segment header and one batch with this header's counts around `frame`.
    fn segment_with_batch(n_records: u32, declared: u32, frame: &[u8]) -> Bytes {
        let mut bytes = segment_header().to_vec();
        let batch = BatchHeader {
            compressed_len: frame.len() as u32,
            uncompressed_len: declared,
            n_records,
            first_record_index: 0,
            payload_crc: crc32c::crc32c(frame),
            chain_tag: Some([0; 32]),
        };
        bytes.extend_from_slice(&batch.encode());
        bytes.extend_from_slice(frame);
        Bytes::from(bytes)
    }

    #[test]
    fn a_batch_declaring_huge_counts_is_refused_cleanly() {
        let mib = 1024 * 1024;
        // Regression: 16 KiB of zstd that really holds 512 MiB, with a count of u32::MAX
        // records, decompressed whole and then sized the record table by the payload
        // (20 million entries, gigabytes). The count is now refused with the header.
        let bomb = rle_frame(512 * mib, 4096);
        assert!(bomb.len() <= 16 * 1024 + 9);
        let bytes = segment_with_batch(u32::MAX, 512 * mib, &bomb);
        let reader = SegmentReader::from_bytes("x".into(), bytes, ReaderOptions::default()).unwrap();
        let error = reader.scan().next().unwrap().unwrap_err();
        assert!(
            matches!(error.kind, ReadErrorKind::BatchHeader(StructureError::OverLimit("records per batch"))),
            "{error}"
        );
        let named = "x at byte 96 (record 0): batch header: records per batch is over the format's limit";
        assert!(error.to_string().starts_with(named), "{error}");
        // The most records a batch may hold, and a frame of four bytes declaring 512 MiB: the
        // declared size is not reserved up front, and the frame fails as the short frame it is.
        let liar = rle_frame(512 * mib, 1);
        let bytes = segment_with_batch(limits::BATCH_FRAMES_MAX as u32, 512 * mib, &liar);
        let reader = SegmentReader::from_bytes("x".into(), bytes, ReaderOptions::default()).unwrap();
        let error = reader.scan().next().unwrap().unwrap_err();
        assert!(matches!(error.kind, ReadErrorKind::Decompress), "{error}");
        // A frame writing more than it declares fails too (its one block writes 128 KiB).
        let bytes = segment_with_batch(1, 64 * 1024, &rle_frame(64 * 1024, 1));
        let reader = SegmentReader::from_bytes("x".into(), bytes, ReaderOptions::default()).unwrap();
        let error = reader.scan().next().unwrap().unwrap_err();
        assert!(matches!(error.kind, ReadErrorKind::Decompress), "{error}");
    }

    #[test]
    fn a_batch_that_compresses_well_reads_back_through_a_growing_buffer() {
        // 4 MiB of records in a frame of a few KiB: the buffer starts at 64 KiB and doubles.
        let bodies: Vec<Vec<u8>> =
            (0..4u64).map(|n| [n.to_le_bytes().to_vec(), vec![b'x'; 1024 * 1024]].concat()).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let (batch, _) = crate::record::format::encode_batch(&[7; 32], &[0; 32], 0, &refs, 1).unwrap();
        let header = BatchHeader::decode(&batch, crate::record::format::FORMAT_VERSION).unwrap();
        assert!(header.compressed_len < 64 * 1024 / 8, "{}", header.compressed_len);
        let header_only = Bytes::copy_from_slice(&segment_header());
        let reader = SegmentReader::from_bytes("x".into(), header_only, ReaderOptions::default()).unwrap();
        let payload = reader.decompress(&batch[BATCH_HEADER_BYTES..], header.uncompressed_len as usize).unwrap();
        let expected: Vec<u8> = refs
            .iter()
            .flat_map(|body| {
                let prefix = [(body.len() as u32).to_le_bytes(), crc32c::crc32c(body).to_le_bytes()].concat();
                [prefix, body.to_vec()].concat()
            })
            .collect();
        assert!(payload[..] == expected[..]);
    }

    /// A segment header, `n_batches` batches of one byte (their headers' CRCs holding, the
    /// rest not checked by the walk), a footer and a trailer pointing at it.
    fn segment_of_tiny_batches(n_batches: usize) -> (Bytes, u64) {
        let mut bytes = segment_header().to_vec();
        let batch = BatchHeader {
            compressed_len: 1,
            uncompressed_len: 1,
            n_records: 1,
            first_record_index: 0,
            payload_crc: 0,
            chain_tag: Some([0; 32]),
        };
        let mut one = batch.encode();
        one.push(0);
        for _ in 0..n_batches {
            bytes.extend_from_slice(&one);
        }
        let footer_offset = bytes.len() as u64;
        let footer = Footer {
            record_count: 0,
            first_record_index: 0,
            time_min_unix_us: 0,
            time_max_unix_us: 0,
            chain_head: [0; 32],
            sealed_unix_us: T0,
            seal_reason: SealReason::Stopped,
            batches: vec![],
            index: Default::default(),
        };
        let frame = footer.encode_frame();
        bytes.extend_from_slice(&frame);
        let trailer = Trailer { footer_offset, footer_frame_len: frame.len() as u32, mac: [0; 32] };
        bytes.extend_from_slice(&trailer.encode());
        (Bytes::from(bytes), footer_offset)
    }

    #[test]
    fn the_walk_to_the_footer_stops_at_the_most_batches_a_segment_may_hold() {
        // Regression: every open walked every batch header before the footer, with no cap: a
        // file of 4 GiB in batches of one byte took some 66 million reads to open.
        let (bytes, footer_offset) = segment_of_tiny_batches(limits::BATCHES_PER_SEGMENT_MAX);
        let reader = SegmentReader::from_bytes("x".into(), bytes, ReaderOptions::default()).unwrap();
        assert_eq!(reader.sealed().map(|s| s.footer_offset), Some(footer_offset), "the most batches are sealed");
        let (bytes, _) = segment_of_tiny_batches(limits::BATCHES_PER_SEGMENT_MAX + 1);
        let error = SegmentReader::from_bytes("x".into(), bytes, ReaderOptions::default()).unwrap_err();
        let past = SEGMENT_HEADER_BYTES + limits::BATCHES_PER_SEGMENT_MAX * (BATCH_HEADER_BYTES + 1);
        assert_eq!((error.offset, error.torn_tail), (past as u64, false), "{error}");
        assert!(matches!(error.kind, ReadErrorKind::SegmentLimit("batches")), "{error}");
        let named = format!("x at byte {past}: the segment holds more batches than a segment may");
        assert_eq!(error.to_string(), named);
    }

    #[test]
    fn segment_names_are_canonical() {
        let name = SegmentName { core_id: 2, sequence: 41 };
        assert_eq!(name.file_name(), "seg-002-0000000041.sgr");
        assert_eq!(SegmentName::parse("seg-002-0000000041.sgr"), Some(name));
        for other in ["seg-2-41.sgr", "seg-002-0000000041.sgr.tmp", "seg-002-+000000041.sgr", "core-0.jsonl"] {
            assert_eq!(SegmentName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_header_alone_is_a_torn_creation() {
        let error =
            SegmentReader::from_bytes("x".into(), Bytes::from_static(&[0; 40]), ReaderOptions::default()).unwrap_err();
        assert!(error.torn_tail);
        assert!(matches!(error.kind, ReadErrorKind::SegmentHeader(StructureError::Truncated)));
    }
}
