//! `snowgate-tools` against real recordings written by the library's recorder: the output of
//! `cat`, `search`, `export` and `stats`, and a tamper matrix in which every case must make
//! `verify` exit non-zero and name the segment at fault.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use snowgate::record::format::{
    BATCH_HEADER_BYTES, BatchHeader, Footer, SegmentHeader, Trailer, chain_key, footer_mac, mac_key,
};
use snowgate::record::storage::FileSystem;
use snowgate::record::{
    Decision, Durability, EventKind, Frame, Principal, Recorder, RecorderConfig, RequestFrame, RequestLink,
    ResponseFrame, SealReason, SegmentName, SegmentReader, SegmentWriter,
};

const KEY_HEX: &str = "3f1e5d0c9b8a7f6e5d4c3b2a19080706f5e4d3c2b1a09f8e7d6c5b4a39281706";
const T0: u64 = 1_750_000_000_000_000;

fn key() -> [u8; 32] {
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&KEY_HEX[2 * i..2 * i + 2], 16).unwrap();
    }
    key
}

fn tools(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snowgate-tools")).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn request(n: u64, sub: &str, statement: &str, decision: Decision) -> Frame {
    Frame::Request(RequestFrame {
        time_unix_us: T0 + n * 1_000_000,
        endpoint: Cow::Borrowed("query-request"),
        principal: Principal { sub: Some(sub.into()), role: Some("ANALYST".into()), groups: vec!["analysts".into()] },
        session_id: Some(77),
        request_id: Some(format!("req-{n}")),
        query_id: None,
        statement: Some(statement.into()),
        bindings: None,
        agent_context: Some(format!("prompt-{n}")),
        query_tag: None,
        decision,
        body: Bytes::from(format!(r#"{{"sqlText":"{statement}","pad":"{}"}}"#, noise(n, (n as usize * 13) % 700))),
    })
}

/// `len` hex digits that do not compress away, so segments fill and rotate.
fn noise(seed: u64, len: usize) -> String {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from_digit((state % 16) as u32, 16).unwrap()
        })
        .collect()
}

fn response(n: u64, link: snowgate::record::RequestLink) -> Frame {
    Frame::Response(ResponseFrame {
        time_unix_us: T0 + n * 1_000_000 + 500,
        endpoint: Cow::Borrowed("query-request"),
        request: Some(link),
        query_id: Some(format!("01b2c3d4-0000-4000-8000-{n:012}")),
        status: 200,
        code: None,
        success: Some(true),
        rows: Some(n),
        upstream_us: 900,
        total_us: 1000,
        body: Bytes::from(format!(r#"{{"data":{{"rowset":[["{n}","row"]]}},"success":true}}"#)),
    })
}

/// A recording of two cores, several segments each, sealed on stop.
fn recording(dir: &Path) {
    for core_id in 0..2u16 {
        let mut config = RecorderConfig::new(dir, core_id, key());
        config.segment_bytes_max = 4096;
        config.batch_frames_max = 2;
        config.durability = Durability::Strict;
        let recorder = Recorder::start(config).unwrap();
        recorder.submit_event(EventKind::GatewayStart, "test").unwrap();
        for n in 0..30u64 {
            let (sub, statement, decision) = match n % 3 {
                0 => ("agent-7", format!("select * from sales.orders where id = {n}"), Decision::Allowed),
                1 => ("agent-9", format!("select name from customers limit {n}"), Decision::Allowed),
                _ => ("agent-7", "delete from orders".to_owned(), Decision::Blocked { rule: "no-deletes".into() }),
            };
            let ticket = recorder.submit(request(n + 100 * u64::from(core_id), sub, &statement, decision)).unwrap();
            let link = ticket.link();
            let answer = recorder.submit(response(n + 100 * u64::from(core_id), link)).unwrap();
            assert_eq!(answer.wait_durable(Duration::from_secs(5)), Some(Ok(())));
        }
        recorder.stop().unwrap();
    }
}

fn segment(dir: &Path, core_id: u16, sequence: u64) -> PathBuf {
    dir.join(SegmentName { core_id, sequence }.file_name())
}

fn segment_count(dir: &Path, core_id: u16) -> u64 {
    (0..).take_while(|&sequence| segment(dir, core_id, sequence).exists()).count() as u64
}

struct Fixture {
    _temp: tempfile::TempDir,
    dir: PathBuf,
    key_file: PathBuf,
}

fn fixture() -> Fixture {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("recordings");
    recording(&dir);
    let key_file = temp.path().join("recording.key");
    std::fs::write(&key_file, KEY_HEX).unwrap();
    Fixture { _temp: temp, dir, key_file }
}

fn verify(fixture: &Fixture) -> Output {
    tools(&["verify", fixture.dir.to_str().unwrap(), "--key-file", fixture.key_file.to_str().unwrap()])
}

#[test]
fn cat_search_export_and_stats_read_a_real_recording() {
    let fixture = fixture();
    let dir = fixture.dir.to_str().unwrap();
    assert!(segment_count(&fixture.dir, 0) >= 3, "the recording rotated");

    let cat = tools(&["cat", dir]);
    assert!(cat.status.success());
    let text = stdout(&cat);
    assert_eq!(text.lines().filter(|l| l.contains(" request ")).count(), 60);
    assert!(text.contains("sub=agent-9 role=ANALYST decision=allowed"), "{text}");
    assert!(text.contains("decision=blocked rule=no-deletes"));

    let blocked = stdout(&tools(&["search", dir, "--decision", "blocked", "--json"]));
    let lines: Vec<serde_json::Value> = blocked.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Twenty blocked requests and their twenty responses.
    assert_eq!(lines.len(), 40);
    assert!(lines.iter().filter(|l| l["kind"] == "request").all(|l| l["decision_rule"] == "no-deletes"));

    let by_table = stdout(&tools(&["search", dir, "--table", "orders", "--sub", "agent-7"]));
    assert_eq!(by_table.lines().filter(|l| l.contains(" request ")).count(), 40);
    let qualified = stdout(&tools(&["search", dir, "--table", "sales.orders"]));
    assert_eq!(qualified.lines().filter(|l| l.contains(" request ")).count(), 20);
    let text = stdout(&tools(&["search", dir, "--text", "LIMIT 4"]));
    assert_eq!(text.lines().filter(|l| l.contains(" request ")).count(), 2, "{text}");

    // A query id: the response through the footer index, and its request.
    let query = stdout(&tools(&["search", dir, "--query-id", "01b2c3d4-0000-4000-8000-000000000104", "--json"]));
    let found: Vec<serde_json::Value> = query.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(found.len(), 2, "{query}");
    assert_eq!(found[0]["kind"], "response");
    assert_eq!(found[1]["kind"], "request");
    assert_eq!(found[1]["record"], found[0]["request_record"]);
    assert_eq!(found[1]["agent_context"], "prompt-104");

    let since = stdout(&tools(&["search", dir, "--since", "2025-06-15T15:06:50Z", "--until", "1750000015"]));
    assert_eq!(since.lines().filter(|l| l.contains(" request ")).count(), 5, "{since}");

    let export_path = fixture.dir.parent().unwrap().join("export.jsonl");
    let export = tools(&["export", dir, "--bodies", "--output", export_path.to_str().unwrap()]);
    assert!(export.status.success());
    // The export holds what the recording does: private to this user, as the recording is.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&export_path).unwrap().permissions().mode() & 0o777, 0o600);
    let exported = std::fs::read_to_string(&export_path).unwrap();
    let first_request: serde_json::Value = exported
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["kind"] == "request")
        .unwrap();
    for field in ["schema", "time", "time_unix_us", "core", "segment", "record", "endpoint", "sub", "role", "groups"] {
        assert!(first_request.get(field).is_some(), "{field} missing");
    }
    assert_eq!(first_request["schema"], "snowgate.record.v1");
    assert!(first_request["body"].as_str().unwrap().contains("sqlText"));

    let stats = stdout(&tools(&["stats", dir, "--json"]));
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["requests"], 60);
    assert_eq!(stats["identities"]["agent-7"]["requests"], 40);
    assert_eq!(stats["identities"]["agent-7"]["decisions"]["blocked"], 20);
    assert!(stats["disk_bytes_per_raw_byte"].as_f64().unwrap() > 0.0);
}

/// A query id with request filters: only the response carries the query id, so the filters
/// are applied to its request, and the pair is printed. Regression: nothing was found.
#[test]
fn search_by_query_id_applies_request_filters_to_the_responses_request() {
    let fixture = fixture();
    let dir = fixture.dir.to_str().unwrap();
    // Record 104 (core 1, n = 4): agent-9's "select name from customers limit 4", allowed.
    let id = "01b2c3d4-0000-4000-8000-000000000104";
    let matching: [&[&str]; 5] = [
        &["--sub", "agent-9"],
        &["--decision", "allowed", "--text", "LIMIT 4"],
        &["--table", "customers"],
        &["--request-id", "req-104"],
        &["--sub", "agent-9", "--endpoint", "query-request", "--since", "1750000000"],
    ];
    for filters in matching {
        let mut args = vec!["search", dir, "--query-id", id, "--json"];
        args.extend_from_slice(filters);
        let output = tools(&args);
        assert!(output.status.success(), "{filters:?}: {}", String::from_utf8_lossy(&output.stderr));
        let text = stdout(&output);
        let found: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(found.len(), 2, "{filters:?}: {text}");
        assert_eq!((&found[0]["kind"], &found[1]["kind"]), (&"request".into(), &"response".into()), "{filters:?}");
        assert_eq!(found[0]["record"], found[1]["request_record"], "{filters:?}");
        assert_eq!(found[0]["sub"], "agent-9");
        assert_eq!(found[1]["query_id"], id);
    }
    let not_matching: [&[&str]; 4] =
        [&["--sub", "agent-7"], &["--decision", "blocked"], &["--text", "delete"], &["--request-id", "req-105"]];
    for filters in not_matching {
        let mut args = vec!["search", dir, "--query-id", id, "--json"];
        args.extend_from_slice(filters);
        let output = tools(&args);
        assert!(output.status.success());
        assert_eq!(stdout(&output), "", "{filters:?}");
    }
}

#[test]
fn verify_passes_an_untouched_recording_and_reports_chain_heads() {
    let fixture = fixture();
    let output = verify(&fixture);
    assert!(output.status.success(), "{}", stdout(&output));
    let text = stdout(&output);
    assert!(text.contains("OK: "), "{text}");
    assert!(text.contains("core 1: "), "{text}");
}

/// Runs `tamper` on a fresh recording; verify must fail and name `expected_file`.
fn assert_detected(case: &str, tamper: impl FnOnce(&Path) -> PathBuf) {
    let fixture = fixture();
    let expected_file = tamper(&fixture.dir);
    let output = verify(&fixture);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{case}: verify passed\n{text}");
    let first = text.lines().find(|l| l.starts_with("FAIL ")).unwrap_or_else(|| panic!("{case}: {text}"));
    let name = expected_file.file_name().unwrap().to_str().unwrap();
    assert!(first.contains(name), "{case}: the first problem does not name {name}: {first}");
}

#[test]
fn a_deleted_segment_is_detected() {
    assert_detected("deleted", |dir| {
        std::fs::remove_file(segment(dir, 0, 1)).unwrap();
        segment(dir, 0, 2)
    });
}

#[test]
fn reordered_segments_are_detected() {
    assert_detected("reordered", |dir| {
        let scratch = dir.join("scratch");
        std::fs::rename(segment(dir, 0, 1), &scratch).unwrap();
        std::fs::rename(segment(dir, 0, 2), segment(dir, 0, 1)).unwrap();
        std::fs::rename(&scratch, segment(dir, 0, 2)).unwrap();
        segment(dir, 0, 1)
    });
}

#[test]
fn a_duplicated_segment_is_detected() {
    assert_detected("duplicated", |dir| {
        let next = segment_count(dir, 0);
        std::fs::copy(segment(dir, 0, 1), segment(dir, 0, next)).unwrap();
        segment(dir, 0, next)
    });
}

#[test]
fn a_segment_swapped_between_cores_is_detected() {
    assert_detected("swapped", |dir| {
        let scratch = dir.join("scratch");
        std::fs::rename(segment(dir, 0, 1), &scratch).unwrap();
        std::fs::rename(segment(dir, 1, 1), segment(dir, 0, 1)).unwrap();
        std::fs::rename(&scratch, segment(dir, 1, 1)).unwrap();
        segment(dir, 0, 1)
    });
}

#[test]
fn a_dropped_last_segment_is_detected() {
    assert_detected("dropped last", |dir| {
        let last = segment_count(dir, 1) - 1;
        std::fs::remove_file(segment(dir, 1, last)).unwrap();
        segment(dir, 1, last - 1)
    });
}

#[test]
fn a_truncated_middle_segment_is_detected() {
    assert_detected("truncated", |dir| {
        let path = segment(dir, 0, 1);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        path
    });
}

#[test]
fn a_record_edited_with_its_crc_fixed_is_detected_and_named() {
    let fixture = fixture();
    let path = segment(&fixture.dir, 0, 1);
    let (bytes, batch_offset, _) = edit_first_statement(&path);
    let first_record = SegmentReader::open(&path)
        .unwrap()
        .sealed()
        .unwrap()
        .footer
        .batches
        .iter()
        .find(|b| b.offset == batch_offset)
        .unwrap()
        .first_record_index;
    std::fs::write(&path, bytes).unwrap();
    let output = verify(&fixture);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let first = text.lines().find(|l| l.starts_with("FAIL ")).unwrap();
    assert!(first.contains(&SegmentName { core_id: 0, sequence: 1 }.file_name()), "{first}");
    assert!(first.contains(&format!("at byte {batch_offset} (record {first_record})")), "{first}");
    assert!(first.contains("chain tag does not authenticate"), "{first}");
}

#[test]
fn a_chain_rebuilt_without_the_key_is_detected() {
    assert_detected("rechained", |dir| {
        let path = segment(dir, 0, 1);
        std::fs::write(&path, rechain_with(&path, &[0x42; 32])).unwrap();
        path
    });
}

#[test]
fn a_last_segment_with_its_seal_stripped_and_a_record_rewritten_fails_even_as_open() {
    // Without the seal, only the batches' chain tags stand between a rewrite and a recording
    // that verifies with `--allow-open` (and that the next start would seal).
    let fixture = fixture();
    let last = (0..).take_while(|&n| segment(&fixture.dir, 0, n).exists()).last().unwrap();
    let path = segment(&fixture.dir, 0, last);
    let footer_offset = SegmentReader::open(&path).unwrap().sealed().unwrap().footer_offset;
    let (edited, batch_offset, delta) = edit_first_statement(&path);
    let open_end = (footer_offset as i64 + delta) as usize;
    std::fs::write(&path, &edited[..open_end]).unwrap();
    let args = ["verify", fixture.dir.to_str().unwrap(), "--key-file", fixture.key_file.to_str().unwrap()];
    let output = tools(&[&args[..], &["--allow-open"]].concat());
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let first = text.lines().find(|l| l.starts_with("FAIL ")).unwrap();
    assert!(first.contains(path.file_name().unwrap().to_str().unwrap()), "{first}");
    assert!(first.contains(&format!("at byte {batch_offset} ")), "{first}");
    assert!(first.contains("chain tag does not authenticate"), "{first}");
    // The seal stripped alone (no record changed) is only an open segment.
    let fixture = fixture_with_last_seal_stripped();
    let args = ["verify", fixture.dir.to_str().unwrap(), "--key-file", fixture.key_file.to_str().unwrap()];
    let output = tools(&[&args[..], &["--allow-open"]].concat());
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

/// A running gateway's recording: its last segment open, read while a batch is half
/// written. The reading tools show every whole record and note the end; the same cut in a
/// segment with others after it is damage, and fails them.
#[test]
fn the_reading_tools_read_a_live_recording_up_to_its_half_written_batch() {
    let fixture = fixture_with_last_seal_stripped();
    let dir = fixture.dir.to_str().unwrap();
    let whole: Vec<String> = stdout(&tools(&["export", dir])).lines().map(str::to_owned).collect();
    let last = (0..).take_while(|&n| segment(&fixture.dir, 0, n).exists()).last().unwrap();
    let path = segment(&fixture.dir, 0, last);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    for command in [&["export", dir][..], &["cat", dir], &["search", dir, "--sub", "agent-7"], &["stats", dir]] {
        let output = tools(command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{command:?}: {stderr}");
        assert!(stderr.contains("note:") && stderr.contains(path.file_name().unwrap().to_str().unwrap()), "{stderr}");
    }
    let exported: Vec<String> = stdout(&tools(&["export", dir])).lines().map(str::to_owned).collect();
    assert!(exported.len() < whole.len() && !exported.is_empty());
    assert!(exported.iter().all(|line| whole.contains(line)), "the records before the cut, as they were");

    // Cut the same way, a segment with one after it is damage.
    let middle = segment(&fixture.dir, 1, 0);
    let reader = SegmentReader::open(&middle).unwrap();
    let footer_offset = reader.sealed().unwrap().footer_offset;
    std::fs::OpenOptions::new().write(true).open(&middle).unwrap().set_len(footer_offset - 5).unwrap();
    let output = tools(&["export", dir]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("error:") && stderr.contains(middle.file_name().unwrap().to_str().unwrap()), "{stderr}");
}

/// A damaged batch of a sealed segment is named, and the batches after it are still read
/// (the footer says where they are): one flipped bit does not take a segment out of an export.
#[test]
fn a_damaged_batch_of_a_sealed_segment_hides_none_of_the_others() {
    let fixture = fixture();
    let dir = fixture.dir.to_str().unwrap();
    let whole = stdout(&tools(&["export", dir])).lines().count();
    let path = segment(&fixture.dir, 0, 0);
    let first_batch = SegmentReader::open(&path).unwrap().sealed().unwrap().footer.batches[0].clone();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[first_batch.offset as usize + BATCH_HEADER_BYTES + 2] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    for command in [&["export", dir][..], &["cat", dir], &["stats", dir], &["search", dir, "--sub", "agent-7"]] {
        let output = tools(command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_ne!(output.status.code(), Some(0), "{command:?}");
        assert!(stderr.contains("error:") && stderr.contains(path.file_name().unwrap().to_str().unwrap()), "{stderr}");
    }
    let exported = stdout(&tools(&["export", dir])).lines().count();
    assert_eq!(exported, whole - first_batch.n_records as usize, "only the damaged batch's records are missing");
}

fn fixture_with_last_seal_stripped() -> Fixture {
    let fixture = fixture();
    let last = (0..).take_while(|&n| segment(&fixture.dir, 0, n).exists()).last().unwrap();
    let path = segment(&fixture.dir, 0, last);
    let footer_offset = SegmentReader::open(&path).unwrap().sealed().unwrap().footer_offset;
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(footer_offset).unwrap();
    fixture
}

#[test]
fn a_rechained_segment_breaks_the_link_to_the_next_one_even_with_the_key() {
    // The segment itself verifies (the key holder rewrote it), but its successor's header
    // still carries the old chain head: a rewrite shows unless every later segment is redone.
    let fixture = fixture();
    let path = segment(&fixture.dir, 0, 1);
    std::fs::write(&path, rechain_with(&path, &key())).unwrap();
    let output = verify(&fixture);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let first = text.lines().find(|l| l.starts_with("FAIL ")).unwrap();
    assert!(first.contains(&SegmentName { core_id: 0, sequence: 2 }.file_name()), "{first}");
    assert!(first.contains("does not continue the chain"), "{first}");
}

#[test]
fn an_unreadable_key_is_a_usage_error_not_a_verdict() {
    let fixture = fixture();
    std::fs::write(&fixture.key_file, "not a key").unwrap();
    let output = verify(&fixture);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("recording.key"));
}

#[test]
fn a_wrong_key_or_a_stray_file_fails() {
    let fixture = fixture();
    std::fs::write(&fixture.key_file, "00".repeat(32)).unwrap();
    assert_eq!(verify(&fixture).status.code(), Some(1));
    let fixture = fixture_with_stray_file();
    assert_eq!(verify(&fixture).status.code(), Some(1));
}

fn fixture_with_stray_file() -> Fixture {
    let fixture = fixture();
    std::fs::write(fixture.dir.join("notes.txt"), "hello").unwrap();
    fixture
}

/// Rewrites the first batch of a segment with one statement byte changed and every CRC
/// fixed, as someone without the key would (the batch's chain tag left as it was). Returns
/// the file's new bytes, the batch's offset, and the size change.
fn edit_first_statement(path: &Path) -> (Vec<u8>, u64, i64) {
    let original = std::fs::read(path).unwrap();
    let reader = SegmentReader::open(path).unwrap();
    let sealed = reader.sealed().unwrap();
    // The first batch with a statement in it: records are `len u32 | crc u32 | body`.
    let (entry, batch, mut payload, at, found) = sealed
        .footer
        .batches
        .iter()
        .find_map(|entry| {
            let batch = reader.read_batch(entry.offset, Some(entry.first_record_index)).unwrap();
            let payload = batch.payload.to_vec();
            let mut at = 0;
            while at < payload.len() {
                let len = u32::from_le_bytes(payload[at..at + 4].try_into().unwrap()) as usize;
                if let Some(found) = find(&payload[at + 8..at + 8 + len], b"select") {
                    return Some((entry, batch, payload, at, found));
                }
                at += 8 + len;
            }
            None
        })
        .unwrap();
    let len = u32::from_le_bytes(payload[at..at + 4].try_into().unwrap()) as usize;
    let body = at + 8..at + 8 + len;
    payload[body.start + found] = b'S';
    let crc = crc32c::crc32c(&payload[body]);
    payload[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    let compressed = zstd::bulk::compress(&payload, 1).unwrap();
    let header = BatchHeader {
        compressed_len: compressed.len() as u32,
        uncompressed_len: payload.len() as u32,
        n_records: batch.header.n_records,
        first_record_index: batch.header.first_record_index,
        payload_crc: crc32c::crc32c(&compressed),
        chain_tag: batch.header.chain_tag,
    };
    let mut bytes = original[..entry.offset as usize].to_vec();
    bytes.extend_from_slice(&header.encode());
    bytes.extend_from_slice(&compressed);
    bytes.extend_from_slice(&original[batch.end_offset as usize..]);
    let delta = (BATCH_HEADER_BYTES + compressed.len()) as i64 - (batch.end_offset - entry.offset) as i64;
    (bytes, entry.offset, delta)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The edited segment with its chain (every batch's tag) and whole footer (batch table, chain,
/// MAC) rebuilt under `key`.
fn rechain_with(path: &Path, key: &[u8; 32]) -> Vec<u8> {
    let reader = SegmentReader::open(path).unwrap();
    let sealed = reader.sealed().unwrap().clone();
    let (mut edited, _, delta) = edit_first_statement(path);
    let footer_offset = (sealed.footer_offset as i64 + delta) as u64;
    let body = Bytes::from(edited[..footer_offset as usize].to_vec());
    let edited_reader = SegmentReader::from_bytes(path.to_owned(), body, Default::default()).unwrap();
    let header = SegmentHeader::decode(&edited[..96]).unwrap();
    let mut chain = header.previous_chain_head;
    let mut footer: Footer = sealed.footer.clone();
    for (entry, batch) in footer.batches.iter_mut().zip(edited_reader.scan()) {
        let batch = batch.unwrap();
        chain = batch.chain_after(header.version, &chain, &chain_key(key));
        let retagged = BatchHeader { chain_tag: Some(chain), ..batch.header };
        edited[batch.offset as usize..][..BATCH_HEADER_BYTES].copy_from_slice(&retagged.encode());
        entry.offset = batch.offset;
        entry.compressed_len = batch.header.compressed_len;
        entry.chain_head_after = chain;
    }
    footer.chain_head = chain;
    let frame = footer.encode_frame();
    let mac = footer_mac(&mac_key(key), &edited[..96], &frame);
    let trailer = Trailer { footer_offset, footer_frame_len: frame.len() as u32, mac };
    let mut bytes = edited[..footer_offset as usize].to_vec();
    bytes.extend_from_slice(&frame);
    bytes.extend_from_slice(&trailer.encode());
    bytes
}

/// A recording written segment by segment through the writer: `build` appends and rotates.
fn written_recording(dir: &Path, build: impl FnOnce(&mut SegmentWriter)) {
    let config = RecorderConfig::new(dir, 0, key());
    let (mut writer, _) = SegmentWriter::open(Arc::new(FileSystem), &config, T0).unwrap();
    build(&mut writer);
    writer.seal(SealReason::Stopped, T0 + 1_000_000_000).unwrap();
}

fn query_response(n: u64, request_index: u64) -> Frame {
    match response(n, RequestLink::to_record(request_index)) {
        Frame::Response(mut response) => {
            response.request = Some(RequestLink::to_record(request_index));
            Frame::Response(response)
        }
        _ => unreachable!(),
    }
}

#[test]
fn search_by_identity_finds_a_response_several_segments_after_its_request() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("recordings");
    written_recording(&dir, |writer| {
        let late = writer.append(&[request(0, "agent-late", "select 1", Decision::Allowed)], T0).unwrap();
        for n in 1..5 {
            writer.rotate("test", T0 + n).unwrap();
            let other = writer.append(&[request(n, "agent-other", "select 2", Decision::Allowed)], T0 + n).unwrap();
            writer.append(&[query_response(n, other.first_record_index)], T0 + n).unwrap();
        }
        writer.append(&[query_response(9, late.first_record_index)], T0 + 9).unwrap();
    });
    let output = tools(&["search", dir.to_str().unwrap(), "--sub", "agent-late", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let found: Vec<serde_json::Value> = stdout(&output).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = found.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["request", "response"], "{found:?}");
    assert_eq!(found[1]["segment"], 4);
}

#[test]
fn search_fails_naming_the_file_when_a_request_it_needs_cannot_be_read() {
    // The response is found through the second segment's footer; its request, in the first
    // segment, lies in a damaged batch: search must say so, not print the response alone.
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("recordings");
    let mut request_batch = 0;
    written_recording(&dir, |writer| {
        request_batch = writer.current_len().unwrap();
        let request = writer.append(&[request(4, "agent-7", "select 4", Decision::Allowed)], T0).unwrap();
        writer.rotate("test", T0 + 1).unwrap();
        writer.append(&[query_response(4, request.first_record_index)], T0 + 2).unwrap();
    });
    let first = segment(&dir, 0, 0);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[request_batch as usize + BATCH_HEADER_BYTES + 10] ^= 0x01;
    std::fs::write(&first, bytes).unwrap();
    let output = tools(&["search", dir.to_str().unwrap(), "--query-id", "01b2c3d4-0000-4000-8000-000000000004"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let name = first.file_name().unwrap().to_str().unwrap();
    assert!(stderr.contains(&format!("{name} at byte {request_batch}")), "{stderr}");
    assert_eq!(stdout(&output).lines().count(), 1, "the response is still printed");
}

#[test]
fn search_keeps_one_batch_in_memory_whatever_the_segment_size() {
    // Forty batches of 4 MiB each once decompressed (they compress to almost nothing), in
    // one segment; search runs under a 96 MiB address-space limit, so it must not hold them
    // all at once.
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("recordings");
    written_recording(&dir, |writer| {
        for n in 0..40 {
            let Frame::Request(mut frame) = request(n, "agent-7", "select 1", Decision::Allowed) else {
                unreachable!()
            };
            frame.body = Bytes::from(vec![b'x'; 4 << 20]);
            writer.append(&[Frame::Request(frame)], T0 + n).unwrap();
        }
    });
    assert_eq!(segment_count(&dir, 0), 1);
    let tools_path = env!("CARGO_BIN_EXE_snowgate-tools");
    let script = format!("ulimit -v 98304 && exec '{tools_path}' search '{}' --sub agent-7", dir.display());
    let output = Command::new("sh").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout(&output).lines().filter(|l| l.contains(" request ")).count(), 40);
}

#[test]
fn verify_expects_the_admin_chain_after_the_cores_only_when_told() {
    // The fixture's two chains stand in for one core (0) and the admin listener's (1).
    let fixture = fixture();
    let dir = fixture.dir.to_str().unwrap();
    let key_file = fixture.key_file.to_str().unwrap();
    let with_admin = tools(&["verify", dir, "--key-file", key_file, "--cores", "1", "--admin-chain"]);
    assert!(with_admin.status.success(), "{}", stdout(&with_admin));
    let without = tools(&["verify", dir, "--key-file", key_file, "--cores", "1"]);
    assert_eq!(without.status.code(), Some(1));
    assert!(stdout(&without).contains("segments for core 1, but only 1 cores were expected"), "{}", stdout(&without));
    assert!(stdout(&without).contains("admin listener"), "{}", stdout(&without));
    let missing = tools(&["verify", dir, "--key-file", key_file, "--cores", "2", "--admin-chain"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stdout(&missing).contains("no segments for the admin listener's chain (core 2"), "{}", stdout(&missing));
}

/// Text an agent could send to drive a reviewer's terminal or make a line read otherwise:
/// a right-to-left override, bidi marks and isolates, C1 controls (U+009B is a CSI), DEL,
/// zero-width and tag characters, and a C0 escape.
const HOSTILE: &str = "delete from t \u{202E}1=1 erehw\u{202C}\u{200E}\u{200F}\u{2066}\u{2069}\u{202A}\u{9B}2J\u{85}\u{7F}\u{200B}\u{FEFF}\u{E0041}\u{1b}[31m";

/// Whether `c` may stand raw in JSON output: anything but a control character, a bidi control
/// or another invisible format character (newlines end the lines).
fn printable(c: char) -> bool {
    c == '\n'
        || !(c.is_control()
            || matches!(c, '\u{AD}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}')
            || matches!(c, '\u{FEFF}' | '\u{E0000}'..='\u{E007F}'))
}

#[test]
fn json_output_escapes_control_and_bidi_characters_that_agents_sent() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("recordings");
    written_recording(&dir, |writer| {
        let Frame::Request(mut frame) = request(0, "agent\u{202E}7", HOSTILE, Decision::Allowed) else {
            unreachable!()
        };
        frame.bindings = Some(format!(r#"{{"1":{{"type":"TEXT","value":"{HOSTILE}"}}}}"#));
        frame.agent_context = Some(HOSTILE.into());
        frame.body = Bytes::from(format!(r#"{{"sqlText":"{HOSTILE}"}}"#));
        writer.append(&[Frame::Request(frame)], T0).unwrap();
    });
    let dir = dir.to_str().unwrap();
    let export_path = temp.path().join("export.jsonl");
    let outputs = [
        tools(&["cat", dir, "--json", "--bodies"]),
        tools(&["search", dir, "--text", "erehw", "--json", "--bodies"]),
        tools(&["export", dir, "--bodies"]),
        tools(&["export", dir, "--bodies", "--output", export_path.to_str().unwrap()]),
    ];
    for (n, output) in outputs.iter().enumerate() {
        assert!(output.status.success(), "{n}: {}", String::from_utf8_lossy(&output.stderr));
        let text = if n == 3 { std::fs::read_to_string(&export_path).unwrap() } else { stdout(output) };
        assert!(text.chars().all(printable), "{n}: raw character in {text:?}");
        assert!(text.contains(r"\u202e") && text.contains(r"\u009b") && text.contains(r"\u007f"), "{n}: {text}");
        let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let request = records.iter().find(|r| r["kind"] == "request").unwrap();
        // Still JSON of the same strings, under the same field names.
        assert_eq!(request["sub"], "agent\u{202E}7", "{n}");
        assert_eq!(request["statement"], HOSTILE, "{n}");
        assert_eq!(request["agent_context"], HOSTILE, "{n}");
        assert_eq!(request["bindings"], format!(r#"{{"1":{{"type":"TEXT","value":"{HOSTILE}"}}}}"#), "{n}");
        assert_eq!(request["body"], format!(r#"{{"sqlText":"{HOSTILE}"}}"#), "{n}");
    }
    let stats = stdout(&tools(&["stats", dir, "--json"]));
    assert!(stats.chars().all(printable), "raw character in {stats:?}");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["identities"]["agent\u{202E}7"]["requests"], 1);
}

/// The plain-text outputs a reviewer reads in a terminal (`cat` and `search` without `--json`,
/// `stats`, `verify`) show what an agent chose with its control and invisible characters as
/// visible escapes (`\u{202e}`), never raw.
#[test]
fn text_output_escapes_control_and_bidi_characters_that_agents_sent() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("recordings");
    let sub = "agent\u{202E}7\u{1b}[2J";
    written_recording(&dir, |writer| {
        let Frame::Request(mut frame) = request(0, sub, HOSTILE, Decision::Blocked { rule: format!("rule {HOSTILE}") })
        else {
            unreachable!()
        };
        frame.principal.role = Some("ANALYST\u{9B}2J\u{2066}".into());
        frame.request_id = Some(format!("req-{HOSTILE}"));
        frame.query_id = Some(format!("qid-{HOSTILE}"));
        frame.bindings = Some(format!(r#"{{"1":{{"type":"TEXT","value":"{HOSTILE}"}}}}"#));
        frame.agent_context = Some(format!("ctx\n{HOSTILE}"));
        writer.append(&[Frame::Request(frame)], T0).unwrap();
    });
    let dir = dir.to_str().unwrap();
    let outputs = [
        ("cat", tools(&["cat", dir])),
        ("search --text", tools(&["search", dir, "--text", "erehw"])),
        ("search --sub", tools(&["search", dir, "--sub", sub])),
        ("search --decision", tools(&["search", dir, "--decision", "blocked"])),
    ];
    for (name, output) in &outputs {
        assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
        let text = stdout(output);
        assert_eq!(text.lines().count(), 1, "{name}: one record on one line: {text:?}");
        assert!(text.chars().all(printable), "{name}: raw character in {text:?}");
        for escaped in
            [r"\u{202e}", r"\u{9b}", r"\u{7f}", r"\u{1b}", r"\u{2066}", r"\u{200b}", r"\u{feff}", r"\u{e0041}"]
        {
            assert!(text.contains(escaped), "{name}: no {escaped} in {text}");
        }
        // Each field the reviewer reads, escaped where it stands.
        for field in [
            r"sub=agent\u{202e}7\u{1b}[2J ",
            r" role=ANALYST\u{9b}2J\u{2066} ",
            r" rule=rule delete from t \u{202e}1=1 erehw\u{202c}",
            r" request_id=req-delete from t \u{202e}1=1 erehw\u{202c}",
            r" query_id=qid-delete from t \u{202e}",
            r" context=ctx\ndelete from t \u{202e}1=1 erehw\u{202c}\u{200e}\u{200f}\u{2066}\u{2069}\u{202a}\u{9b}2J\u{85}\u{7f}",
            r#" statement="delete from t \u{202e}1=1 erehw\u{202c}"#,
            r#"\u{200b}\u{feff}\u{e0041}\u{1b}[31m""#,
        ] {
            assert!(text.contains(field), "{name}: no {field} in {text}");
        }
    }

    let stats = tools(&["stats", dir]);
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
    let stats = stdout(&stats);
    assert!(stats.chars().all(printable), "raw character in {stats:?}");
    assert!(stats.lines().any(|l| l.starts_with(r"agent\u{202e}7\u{1b}[2J ")), "{stats}");

    // A file name in the directory reaches `verify`'s report (and the error on stderr) escaped.
    std::fs::write(Path::new(dir).join("notes\u{1b}]0;owned\u{7}\u{202E}txt"), "hello").unwrap();
    let key_file = temp.path().join("recording.key");
    std::fs::write(&key_file, KEY_HEX).unwrap();
    let verify = tools(&["verify", dir, "--key-file", key_file.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(1));
    let report = stdout(&verify);
    assert!(report.chars().all(printable), "raw character in {report:?}");
    assert!(report.contains(r"notes\u{1b}]0;owned\u{7}\u{202e}txt"), "{report}");
    // Error messages, which quote file names, are escaped too.
    let missing = Path::new(dir).join("gone\u{1b}[2J\u{202E}");
    let cat = tools(&["cat", missing.to_str().unwrap()]);
    assert_eq!(cat.status.code(), Some(2));
    let errors = String::from_utf8_lossy(&cat.stderr);
    assert!(errors.chars().all(printable), "raw character in {errors:?}");
    assert!(errors.contains(r"gone\u{1b}[2J\u{202e}"), "{errors}");
}

#[test]
fn verify_exits_2_naming_the_segment_it_cannot_read() {
    // Regression: a segment that could not be read was a problem like a tampered one (exit
    // status 1), though 2 is for I/O errors. Here it was moved to colder storage, linked to,
    // and that storage is gone (not mounted, say): it fails to read as root too.
    let fixture = fixture();
    let unreadable = segment(&fixture.dir, 0, 1);
    std::fs::remove_file(&unreadable).unwrap();
    std::os::unix::fs::symlink(fixture.dir.parent().unwrap().join("cold/gone.sgr"), &unreadable).unwrap();
    let output = verify(&fixture);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{}\n{stderr}", stdout(&output));
    let name = unreadable.file_name().unwrap().to_str().unwrap();
    assert!(stderr.contains("could not be read") && stderr.contains(name), "{stderr}");
    assert!(stdout(&output).lines().any(|l| l.starts_with("FAIL ") && l.contains(name)), "{}", stdout(&output));
    let json =
        tools(&["verify", fixture.dir.to_str().unwrap(), "--key-file", fixture.key_file.to_str().unwrap(), "--json"]);
    assert_eq!(json.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["problems"][0]["unreadable"], true, "{report}");
    // Something found wrong as well: that is the verdict.
    std::fs::write(fixture.dir.join("notes.txt"), "hello").unwrap();
    assert_eq!(verify(&fixture).status.code(), Some(1));
}

#[test]
fn search_by_query_id_prints_the_request_only_on_the_endpoint_asked_for() {
    // Regression: the request of a response found by its query id was printed whatever its
    // endpoint.
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("recordings");
    written_recording(&dir, |writer| {
        let request = writer.append(&[request(4, "agent-7", "select 4", Decision::Allowed)], T0).unwrap();
        let Frame::Response(mut response) = query_response(4, request.first_record_index) else { unreachable!() };
        response.endpoint = Cow::Borrowed("query-result");
        writer.append(&[Frame::Response(response)], T0 + 1).unwrap();
    });
    let id = "01b2c3d4-0000-4000-8000-000000000004";
    let search = |endpoint: &str| {
        let output = tools(&["search", dir.to_str().unwrap(), "--query-id", id, "--endpoint", endpoint, "--json"]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        stdout(&output).lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<serde_json::Value>>()
    };
    let found = search("query-result");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((&found[0]["kind"], &found[0]["endpoint"]), (&"response".into(), &"query-result".into()));
    assert_eq!(search("query-request"), Vec::<serde_json::Value>::new());
}

#[test]
fn export_draws_no_progress_bar_between_records_on_a_terminal() {
    // Regression: the bar was drawn when records went to the terminal too (`cat` did not).
    // `script` runs the tool on a pseudo-terminal, its stderr and (without `--output`) its
    // records on it.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` to run the tool on a terminal");
        return;
    }
    let fixture = fixture();
    let tools_path = env!("CARGO_BIN_EXE_snowgate-tools");
    let on_terminal = |args: &str| {
        let command = format!("'{tools_path}' export '{}' {args}", fixture.dir.display());
        let output = Command::new("script").args(["-qec", &command, "/dev/null"]).output().unwrap();
        assert!(output.status.success(), "{command}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let export_path = fixture.dir.parent().unwrap().join("export.jsonl");
    let to_file = on_terminal(&format!("--output '{}'", export_path.display()));
    assert!(to_file.contains("exporting"), "records to a file: the bar shows on the terminal\n{to_file}");
    let to_terminal = on_terminal("");
    assert!(to_terminal.contains("snowgate.record.v1"), "{to_terminal}");
    assert!(!to_terminal.contains("exporting"), "a bar among the records:\n{to_terminal}");
}
