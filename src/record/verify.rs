//! Verification of a directory of segments: every CRC, every record's place, each core's
//! BLAKE3 chain within and across segments (keyed from format version 4, each batch's chain
//! tag checked), every footer's MAC and its agreement with what the segment holds, and
//! completeness (no segment missing before, between, or after a segment that promised a
//! successor). Reads through [`Recording`] only; reports every problem with its file, byte
//! offset and first untrustworthy record, first problem first.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::format::{
    BatchEntry, ChainHead, FIRST_KEYED_CHAIN_VERSION, FooterIndex, IndexMap, SEGMENT_HEADER_BYTES, SealReason,
    chain_key, footer_bytes_estimate, genesis, mac_equal, mac_key, segment_over_limits,
};
use super::key_index::KeyIndex;
use super::reader::{Batch, ReadError, ReadErrorKind, ReaderOptions, Recording, SegmentName, index_keys};

/// How strict to be.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// Accept each core's last segment unsealed (a live gateway writes it), an incomplete
    /// batch at its end included. Its records are checked, and from format version 4 each
    /// whole batch is authenticated by its chain tag; whether batches were cut off its end
    /// cannot be known until it is sealed.
    pub allow_open: bool,
    /// Accept a core whose earliest segments were removed (retention): the chain is checked
    /// from the first segment present.
    pub allow_partial_start: bool,
    /// The gateway's number of cores, when known: each of cores `0..n` must have segments
    /// (a core whose every segment was deleted leaves no trace in the others' files).
    pub expected_cores: Option<u16>,
    /// With `expected_cores = Some(n)`: the gateway runs the reviewers' admin listener
    /// (approvals on), whose recorder keeps a chain of its own under core number `n`, so
    /// core `n` must have segments too. Without it, segments for core `n` are a problem
    /// like those of any core past the expected ones.
    pub admin_chain: bool,
    /// Reader limits.
    pub reader: ReaderOptions,
}

/// One finding: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or the directory).
    pub path: PathBuf,
    /// Byte offset in the file, when it applies.
    pub offset: Option<u64>,
    /// The first record that cannot be trusted, when known.
    pub record_index: Option<u64>,
    /// What is wrong.
    pub description: String,
    /// Whether the file could not be read (an I/O error: permissions, a failing disk, a link
    /// to storage that is gone, a FIFO in a segment's place) rather than read and found wrong:
    /// what it holds is not known, so the recording is not verified, but nothing was found
    /// wrong in it.
    pub unreadable: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(offset) = self.offset {
            write!(f, " at byte {offset}")?;
        }
        if let Some(index) = self.record_index {
            write!(f, " (record {index})")?;
        }
        write!(f, ": {}", self.description)
    }
}

impl From<ReadError> for Problem {
    fn from(error: ReadError) -> Problem {
        let mut description = error.kind.to_string();
        if error.torn_tail {
            description.push_str(" (the damage runs to the end of the file: a torn write or a cut)");
        }
        Problem {
            path: error.path,
            offset: Some(error.offset),
            record_index: error.record_index,
            description,
            unreadable: matches!(error.kind, ReadErrorKind::Io(_)),
        }
    }
}

/// What verification saw of one core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreSummary {
    /// Segments.
    pub segments: u64,
    /// Records read.
    pub records: u64,
    /// The chain head after the last good record: an anchor to keep elsewhere.
    pub chain_head: Option<ChainHead>,
    /// The index the next record would get.
    pub next_record_index: Option<u64>,
}

/// The outcome.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Failures, first first. Empty means verified.
    pub problems: Vec<Problem>,
    /// Accepted conditions worth saying (an open segment under `allow_open`).
    pub notes: Vec<Problem>,
    /// Segments seen.
    pub segments: u64,
    /// Records read.
    pub records: u64,
    /// Per core.
    pub cores: BTreeMap<u16, CoreSummary>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Whether verification could not finish only because files could not be read: every
    /// problem is [`Problem::unreadable`] (and there is one). Nothing read was found wrong.
    pub fn is_only_unreadable(&self) -> bool {
        !self.problems.is_empty() && self.problems.iter().all(|problem| problem.unreadable)
    }

    fn problem(&mut self, path: PathBuf, offset: Option<u64>, record_index: Option<u64>, description: String) {
        self.problems.push(Problem { path, offset, record_index, description, unreadable: false });
    }
}

/// Where the chain stands after a segment.
struct Continuation {
    chain_head: Option<ChainHead>,
    next_record_index: Option<u64>,
    seal: Option<SealReason>,
}

/// Verifies every segment of `recording` with `sealing_key`. `progress` receives the bytes
/// of each batch or segment as they are checked.
pub fn verify(
    recording: &Recording,
    sealing_key: &[u8; 32],
    options: &VerifyOptions,
    progress: &mut dyn FnMut(u64),
) -> VerifyReport {
    let mut report = VerifyReport::default();
    for other in recording.other_files() {
        let path = recording.directory().join(other);
        report.problem(path, None, None, "not a segment file (segments are named seg-<core>-<sequence>.sgr)".into());
    }
    if recording.segments().is_empty() {
        report.problem(recording.directory().to_owned(), None, None, "no segments".into());
    }
    let mut by_core: BTreeMap<u16, Vec<&SegmentName>> = BTreeMap::new();
    for segment in recording.segments() {
        by_core.entry(segment.core_id).or_default().push(segment);
    }
    if let Some(n_cores) = options.expected_cores {
        // The admin listener's chain is numbered after the cores: core `n_cores`.
        let admin_core = options.admin_chain.then_some(n_cores);
        for core_id in (0..n_cores).chain(admin_core) {
            if !by_core.contains_key(&core_id) {
                let description = if admin_core == Some(core_id) {
                    format!("no segments for the admin listener's chain (core {core_id}, after {n_cores} cores)")
                } else {
                    format!("no segments for core {core_id} (expected {n_cores} cores)")
                };
                report.problem(recording.directory().to_owned(), None, None, description);
            }
        }
        let expected_end = u32::from(n_cores) + u32::from(options.admin_chain);
        for &core_id in by_core.keys().filter(|&&core_id| u32::from(core_id) >= expected_end) {
            let mut description = format!("segments for core {core_id}, but only {n_cores} cores were expected");
            if core_id == n_cores {
                description.push_str(" (the admin listener's chain, when approvals are on: say so to expect it)");
            }
            report.problem(recording.directory().to_owned(), None, None, description);
        }
    }
    let verifier =
        Verifier { recording, mac_key: mac_key(sealing_key), chain_key: chain_key(sealing_key), options: *options };
    for (core_id, segments) in by_core {
        verifier.core(core_id, &segments, &mut report, progress);
    }
    report
}

/// The time range a footer records for these batches (zeros when there are none).
fn time_range(batches: &[BatchEntry]) -> (u64, u64) {
    if batches.is_empty() {
        return (0, 0);
    }
    let min = batches.iter().map(|b| b.time_min_unix_us).min().unwrap_or(0);
    let max = batches.iter().map(|b| b.time_max_unix_us).max().unwrap_or(0);
    (min, max)
}

/// What a segment's footer should say, rebuilt from its batches as they are read.
#[derive(Default)]
struct Rebuilt {
    /// The batch table.
    batches: Vec<BatchEntry>,
    /// The index, kept and counted as the writer keeps it (recovery too): the per-segment
    /// limits are checked on the same counts, framing bytes included.
    index: KeyIndex,
}

impl Rebuilt {
    /// Adds `batch`, after which the chain is `chain_after`.
    fn add(&mut self, batch: &Batch, chain_after: ChainHead) {
        let ordinal = self.batches.len() as u32;
        for record in &batch.records {
            for (kind, key) in index_keys(&record.frame) {
                self.index.add(kind, key, ordinal);
            }
        }
        self.batches.push(batch.entry(chain_after));
    }

    /// The bytes the footer of what was added takes.
    fn footer_bytes(&self) -> usize {
        footer_bytes_estimate(self.batches.len(), self.index.key_bytes, self.index.refs)
    }

    /// Which of the format's per-segment limits what was added is past, if any.
    fn over_limits(&self) -> Option<&'static str> {
        segment_over_limits(self.batches.len(), self.index.n_keys, self.footer_bytes())
    }

    /// The footer index of what was added.
    fn footer_index(&self) -> FooterIndex {
        let map: IndexMap = self
            .index
            .sorted_entries(&mut || {})
            .into_iter()
            // Keys are added as text, so they read back as the same text.
            .map(|e| ((e.kind, String::from_utf8_lossy(e.key).into_owned()), [&[e.first][..], e.more].concat()))
            .collect();
        FooterIndex::from(&map)
    }
}

struct Verifier<'a> {
    recording: &'a Recording,
    mac_key: [u8; 32],
    chain_key: [u8; 32],
    options: VerifyOptions,
}

impl Verifier<'_> {
    fn core(&self, core_id: u16, segments: &[&SegmentName], report: &mut VerifyReport, progress: &mut dyn FnMut(u64)) {
        let partial = self.options.allow_partial_start;
        let mut expected_sequence = if partial { segments[0].sequence } else { 0 };
        let mut continuation = Continuation {
            chain_head: (!partial).then(|| genesis(core_id)),
            next_record_index: (!partial).then_some(0),
            seal: None,
        };
        let mut summary = CoreSummary::default();
        // Format versions only grow along a core's chain: an older one after a newer one is
        // a segment rewritten in a format whose chain needs no key.
        let mut newest_version = 0;
        for (position, segment) in segments.iter().enumerate() {
            let path = self.recording.path(segment);
            if segment.sequence != expected_sequence {
                let description = if expected_sequence.checked_add(1) == Some(segment.sequence) {
                    format!("segment {expected_sequence} of core {core_id} is missing")
                } else {
                    format!(
                        "segments {expected_sequence} to {} of core {core_id} are missing",
                        segment.sequence.saturating_sub(1)
                    )
                };
                report.problem(path.clone(), None, None, description);
                continuation.chain_head = None;
                continuation.next_record_index = None;
            }
            // A sequence number no successor can follow is not one a writer gives.
            let Some(next_sequence) = segment.sequence.checked_add(1) else {
                let description = "the sequence number is out of range (no segment can follow it)";
                report.problem(path.clone(), None, None, description.into());
                continue;
            };
            expected_sequence = next_sequence;
            let last = position + 1 == segments.len();
            let records_before = report.records;
            continuation = self.segment(segment, &continuation, last, &mut newest_version, report, progress);
            summary.segments += 1;
            summary.records += report.records - records_before;
            report.segments += 1;
            if last && let Some(seal) = continuation.seal.filter(|seal| seal.has_successor()) {
                let description = format!(
                    "sealed as {}: segment {next_sequence} should follow and is missing (the recording was cut)",
                    seal.name(),
                );
                report.problem(path, None, None, description);
            }
        }
        summary.chain_head = continuation.chain_head;
        summary.next_record_index = continuation.next_record_index;
        report.cores.insert(core_id, summary);
    }

    fn segment(
        &self,
        segment: &SegmentName,
        expected: &Continuation,
        last: bool,
        newest_version: &mut u16,
        report: &mut VerifyReport,
        progress: &mut dyn FnMut(u64),
    ) -> Continuation {
        let path = self.recording.path(segment);
        let unknown = Continuation { chain_head: None, next_record_index: None, seal: None };
        let reader = match self.recording.segment(segment) {
            Ok(reader) => reader,
            Err(error) => {
                let open_allowed = last && self.options.allow_open && error.torn_tail;
                if open_allowed {
                    report.notes.push(error.into());
                } else {
                    report.problems.push(error.into());
                }
                return unknown;
            }
        };
        progress(SEGMENT_HEADER_BYTES as u64);
        let header = reader.header().clone();
        if header.core_id != segment.core_id || header.sequence != segment.sequence {
            let description = format!(
                "the header says core {} segment {}: renamed, duplicated or moved",
                header.core_id, header.sequence
            );
            report.problem(path, Some(0), None, description);
            return unknown;
        }
        if header.version < *newest_version {
            let description = format!(
                "format version {} after a version {} segment: versions only grow, so this segment was \
                 rewritten (in a format whose chain needs no key)",
                header.version, *newest_version
            );
            report.problem(path.clone(), Some(0), Some(header.first_record_index), description);
        }
        *newest_version = (*newest_version).max(header.version);
        if expected.chain_head.is_some_and(|head| head != header.previous_chain_head) {
            let description = "does not continue the chain of the segment before it \
                (a segment was replaced, reordered or removed)";
            report.problem(path.clone(), Some(0), Some(header.first_record_index), description.into());
        }
        if let Some(index) = expected.next_record_index.filter(|&index| index != header.first_record_index) {
            let description =
                format!("starts at record {}; the segment before ends at {index}", header.first_record_index);
            report.problem(path.clone(), Some(0), Some(header.first_record_index), description);
        }

        // Recompute everything the footer claims from what the segment holds.
        let mut chain = header.previous_chain_head;
        let mut rebuilt = Rebuilt::default();
        let mut scan = reader.scan();
        let mut scan_error = None;
        let mut bad_tag_seen = false;
        for batch in &mut scan {
            let batch = match batch {
                Ok(batch) => batch,
                Err(error) => {
                    scan_error = Some(error);
                    break;
                }
            };
            let computed = batch.chain_after(header.version, &chain, &self.chain_key);
            chain = match batch.header.chain_tag {
                Some(tag) if !batch.tag_holds(&computed) => {
                    // The first in a segment is reported; the chain goes on from the tag, so
                    // that one batch rewritten does not make every later one look rewritten.
                    if !bad_tag_seen {
                        let last_record = batch.header.first_record_index + u64::from(batch.header.n_records) - 1;
                        let description = format!(
                            "batch (records {} to {last_record}): its chain tag does not authenticate: the batch \
                             or the chain before it was written without the key (or with another key)",
                            batch.header.first_record_index
                        );
                        report.problem(
                            path.clone(),
                            Some(batch.offset),
                            Some(batch.header.first_record_index),
                            description,
                        );
                        bad_tag_seen = true;
                    }
                    tag
                }
                _ => computed,
            };
            rebuilt.add(&batch, chain);
            report.records += u64::from(batch.header.n_records);
            progress(batch.end_offset - batch.offset);
            // Past a limit no writer of the format reaches, the index rebuilt here would only
            // grow (a hostile open segment could fill memory).
            if let Some(what) = rebuilt.over_limits() {
                let description = ReadErrorKind::SegmentLimit(what).to_string();
                report.problem(path.clone(), Some(batch.offset), None, description);
                break;
            }
        }
        let next_index = scan.next_index();
        let sealed = reader.sealed();
        // Open, in a format without keyed tags: its batches cannot be told from a rewrite, with
        // `allow_open` or not. (An authentic sealed segment of its format before it proves
        // nothing: the segments after that one can be deleted and a new one forged in its
        // place.) An older gateway's live segment is named too; the sealed ones verify.
        if sealed.is_none() && header.version < FIRST_KEYED_CHAIN_VERSION {
            let kind = ReadErrorKind::UnvouchedOpen { version: header.version };
            report.problem(path.clone(), Some(0), Some(header.first_record_index), kind.to_string());
        }
        let authentic = sealed.filter(|sealed| {
            mac_equal(
                &sealed.trailer.mac,
                &super::format::footer_mac(&self.mac_key, reader.header_bytes(), &sealed.footer_frame),
            )
        });
        if let Some(error) = scan_error {
            if error.torn_tail && last && self.options.allow_open && sealed.is_none() {
                report.notes.push(error.into());
                return Continuation { chain_head: Some(chain), next_record_index: Some(next_index), seal: None };
            }
            report.problems.push(error.into());
            // An authentic footer still anchors the next segment's link.
            return match authentic {
                Some(sealed) => Continuation {
                    chain_head: Some(sealed.footer.chain_head),
                    next_record_index: Some(sealed.footer.first_record_index + sealed.footer.record_count),
                    seal: Some(sealed.footer.seal_reason),
                },
                None => unknown,
            };
        }
        let Some(sealed) = sealed else {
            let n_records = next_index - header.first_record_index;
            let description = if header.version >= FIRST_KEYED_CHAIN_VERSION {
                format!(
                    "open segment: {n_records} records not sealed (each batch authenticated by its chain tag; \
                     batches cut off its end would not show until it is sealed)"
                )
            } else {
                format!("open segment: {n_records} records not sealed, so not authenticated")
            };
            let problem = Problem {
                path,
                offset: Some(reader.len()),
                record_index: Some(next_index),
                description,
                unreadable: false,
            };
            if last && self.options.allow_open {
                report.notes.push(problem);
            } else {
                report.problems.push(problem);
            }
            return Continuation { chain_head: Some(chain), next_record_index: Some(next_index), seal: None };
        };
        progress(reader.len() - sealed.footer_offset);
        let footer_offset = Some(sealed.footer_offset);
        if authentic.is_none() {
            let description = "footer MAC mismatch: the footer or header was altered, or sealed with another key";
            report.problem(path, footer_offset, None, description.into());
            return Continuation { chain_head: Some(chain), next_record_index: Some(next_index), seal: None };
        }
        let footer = &sealed.footer;
        let batches = &rebuilt.batches;
        // The footer is authentic: where the segment disagrees with it, the segment changed.
        let mut mismatch = |record_index: Option<u64>, offset: Option<u64>, description: String| {
            report.problem(path.clone(), offset, record_index, description);
        };
        let first_bad_batch =
            batches.iter().zip(&footer.batches).position(|(found, sealed_entry)| found != sealed_entry);
        if let Some(position) = first_bad_batch {
            let found = &batches[position];
            let last_record = found.first_record_index + u64::from(found.n_records).saturating_sub(1);
            let what = if found.chain_head_after != footer.batches[position].chain_head_after {
                "its records were altered (the chain differs from the sealed one)"
            } else {
                "its place, size or time range differs from the sealed one"
            };
            let description =
                format!("batch {position} (records {} to {last_record}): {what}", found.first_record_index);
            mismatch(Some(found.first_record_index), Some(found.offset), description);
        } else if batches.len() != footer.batches.len() {
            let description = format!("holds {} batches; the footer seals {}", batches.len(), footer.batches.len());
            mismatch(Some(next_index.min(footer.first_record_index + footer.record_count)), footer_offset, description);
        } else if footer.chain_head != chain
            || footer.first_record_index != header.first_record_index
            || footer.record_count != next_index - header.first_record_index
            || (footer.time_min_unix_us, footer.time_max_unix_us) != time_range(batches)
        {
            mismatch(None, footer_offset, "the footer's totals do not match the segment".into());
        } else if footer.index != rebuilt.footer_index() {
            mismatch(None, footer_offset, "the footer's index does not match the records".into());
        } else if sealed.trailer.footer_offset != sealed.footer_offset {
            let description = "the trailer does not point at the footer (bytes were inserted or removed)";
            mismatch(None, footer_offset, description.into());
        }
        Continuation {
            chain_head: Some(footer.chain_head),
            next_record_index: Some(footer.first_record_index + footer.record_count),
            seal: Some(footer.seal_reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::record::storage::{SimulatedStorage, Storage};
    use crate::record::{Decision, Frame, Principal, RecorderConfig, RequestFrame, SegmentWriter};

    const T0: u64 = 1_750_000_000_000_000;

    fn request(n: u64) -> Frame {
        Frame::Request(RequestFrame {
            time_unix_us: T0 + n,
            endpoint: std::borrow::Cow::Borrowed("query-request"),
            principal: Principal { sub: Some(format!("agent-{}", n % 2)), role: None, groups: vec![] },
            session_id: Some(7),
            request_id: Some(format!("req-{n}")),
            query_id: Some(format!("01b2c3d4-{n:04}")),
            statement: Some(format!("select {n}")),
            bindings: None,
            agent_context: None,
            query_tag: None,
            decision: Decision::Allowed,
            body: bytes::Bytes::from(format!("{{\"n\":{n}}}")),
        })
    }

    #[test]
    fn the_rebuilt_footer_is_counted_as_the_writer_counts_it() {
        // Regression: verify counted an index key's bytes without the 7 bytes that frame it
        // in the footer (the writer and recovery count them), so its footer size limit let
        // through segments whose footers are larger than the format allows.
        let storage = SimulatedStorage::new();
        let directory = Path::new("/recordings");
        let config = RecorderConfig::new(directory, 0, [1; 32]);
        let (mut writer, _) = SegmentWriter::open(Arc::new(storage.clone()), &config, T0).unwrap();
        for n in 0..6 {
            writer.append(&[request(n), request(n + 100)], T0 + n).unwrap();
        }
        writer.seal(SealReason::Stopped, T0 + 10).unwrap();
        let recording = Recording::open_with(Arc::new(storage), directory, ReaderOptions::default()).unwrap();
        let reader = recording.segment(&SegmentName { core_id: 0, sequence: 0 }).unwrap();
        let mut rebuilt = Rebuilt::default();
        for batch in reader.scan() {
            rebuilt.add(&batch.unwrap(), [0; 32]);
        }
        let sealed = reader.sealed().unwrap();
        assert_eq!(rebuilt.index.n_keys, 2 + 2 * 12, "two identities, a query and a request id per request");
        assert_eq!(rebuilt.footer_bytes(), sealed.footer_frame.len());
        assert!(rebuilt.footer_index() == sealed.footer.index);
        assert_eq!(rebuilt.over_limits(), None);
    }

    #[test]
    fn a_segment_that_cannot_be_read_is_unreadable_not_wrong() {
        let temp = tempfile::tempdir().unwrap();
        // A link to a segment on storage that is gone (not mounted, say): opening it for
        // reading fails, as root too.
        let name = SegmentName { core_id: 0, sequence: 0 };
        std::os::unix::fs::symlink(temp.path().join("cold").join(name.file_name()), temp.path().join(name.file_name()))
            .unwrap();
        let report = verify(&Recording::open(temp.path()).unwrap(), &[1; 32], &VerifyOptions::default(), &mut |_| {});
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].unreadable, "{:?}", report.problems);
        assert_eq!(report.problems[0].path, temp.path().join(name.file_name()));
        assert!(report.is_only_unreadable());
        // Something wrong besides: not only unreadable.
        std::fs::write(temp.path().join(SegmentName { core_id: 0, sequence: 1 }.file_name()), [0; 200]).unwrap();
        let report = verify(&Recording::open(temp.path()).unwrap(), &[1; 32], &VerifyOptions::default(), &mut |_| {});
        assert!(report.problems.iter().any(|p| !p.unreadable), "{:?}", report.problems);
        assert!(!report.is_only_unreadable());
    }

    #[test]
    fn a_sequence_number_no_successor_can_follow_is_out_of_range_not_a_panic() {
        let storage = SimulatedStorage::new();
        let directory = Path::new("/recordings");
        storage.create_dir_all(directory).unwrap();
        let name = SegmentName { core_id: 0, sequence: u64::MAX };
        assert_eq!(name.file_name(), "seg-000-18446744073709551615.sgr");
        storage.write(&directory.join(name.file_name()), vec![0; 200]);
        let recording = Recording::open_with(Arc::new(storage), directory, ReaderOptions::default()).unwrap();
        let options = VerifyOptions { allow_partial_start: true, ..VerifyOptions::default() };
        let report = verify(&recording, &[1; 32], &options, &mut |_| {});
        assert!(
            report.problems.iter().any(|p| p.description.contains("sequence number is out of range")),
            "{:?}",
            report.problems
        );
    }
}
