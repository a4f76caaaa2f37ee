//! Fuzz target `verify_segments`: a valid sealed recording (two cores, rotated segments) is
//! built once; the input is a list of damages (byte flips, cuts, insertions, deletions,
//! duplicates, swaps, stray files). Invariant: `verify`, told the core count, passes exactly
//! when the files are unchanged: any change at all is caught, and every problem names the
//! directory or a file in it. Reading the damaged recording never panics.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use snowgate::record::storage::{SimulatedStorage, Storage};
use snowgate::record::{
    Decision, EventKind, Frame, Principal, RecorderConfig, Recording, RequestFrame, SealReason, SegmentName,
    SegmentWriter, VerifyOptions, verify,
};

const KEY: [u8; 32] = [0x5a; 32];

fn dir() -> PathBuf {
    PathBuf::from("/recordings")
}

fn request(n: u64) -> Frame {
    Frame::Request(RequestFrame {
        time_unix_us: 1_750_000_000_000_000 + n,
        endpoint: "query-request".into(),
        principal: Principal { sub: Some(format!("agent-{}", n % 2)), role: None, groups: vec![] },
        session_id: Some(n as i64),
        request_id: Some(format!("r{n}")),
        query_id: Some(format!("q{n}")),
        statement: Some(format!("select {n}")),
        bindings: None,
        agent_context: None,
        query_tag: None,
        decision: if n.is_multiple_of(3) { Decision::Blocked { rule: "r".into() } } else { Decision::Allowed },
        body: Bytes::from(format!("{{\"sqlText\":\"select {n}\"}}")),
    })
}

/// The untouched recording: (file name, bytes).
fn base() -> &'static Vec<(String, Vec<u8>)> {
    static BASE: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    BASE.get_or_init(|| {
        let storage = SimulatedStorage::new();
        for core_id in 0..2u16 {
            let config = RecorderConfig::new(dir(), core_id, KEY);
            let (mut writer, _) = SegmentWriter::open(Arc::new(storage.clone()), &config, 1).unwrap();
            for n in 0..6 {
                writer.append(&[request(n), request(n + 100)], 2 + n).unwrap();
                if n == 2 {
                    writer.rotate("size", 10).unwrap();
                }
            }
            writer.append_event(EventKind::GatewayStop, String::new(), 20).unwrap();
            writer.seal(SealReason::Stopped, 21).unwrap();
        }
        let mut files: Vec<(String, Vec<u8>)> = storage
            .list(&dir())
            .unwrap()
            .into_iter()
            .map(|name| {
                let bytes = storage.read(&dir().join(&name)).unwrap();
                (name, bytes)
            })
            .collect();
        files.sort();
        files
    })
}

fuzz_target!(|data: &[u8]| {
    let mut files = base().clone();
    for op in data.chunks_exact(6).take(8) {
        if files.is_empty() {
            break;
        }
        let file_idx = usize::from(op[1]) % files.len();
        let at = usize::from(u16::from_le_bytes([op[2], op[3]]));
        let value = op[4];
        match op[0] % 8 {
            0 | 1 => {
                let bytes = &mut files[file_idx].1;
                if !bytes.is_empty() {
                    let at = at % bytes.len();
                    bytes[at] ^= value.max(1);
                }
            }
            2 => {
                let bytes = &mut files[file_idx].1;
                let at = at % (bytes.len() + 1);
                bytes.truncate(at);
            }
            3 => {
                let bytes = &mut files[file_idx].1;
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, std::iter::repeat_n(value, usize::from(op[5] % 16) + 1));
            }
            4 => {
                files.remove(file_idx);
            }
            5 => {
                let name = SegmentName::parse(&files[file_idx].0).unwrap_or(SegmentName { core_id: 0, sequence: 0 });
                let copy = SegmentName { core_id: name.core_id, sequence: name.sequence + 1 + u64::from(value % 3) };
                let bytes = files[file_idx].1.clone();
                files.retain(|(n, _)| *n != copy.file_name());
                files.push((copy.file_name(), bytes));
            }
            6 => {
                let other = usize::from(value) % files.len();
                let (a, b) = (files[file_idx].1.clone(), files[other].1.clone());
                files[file_idx].1 = b;
                files[other].1 = a;
            }
            _ => files.push((format!("stray-{value}"), vec![value; usize::from(op[5])])),
        }
    }
    files.sort();
    let changed = files != *base();
    let storage = SimulatedStorage::new();
    storage.create_dir_all(&dir()).unwrap();
    for (name, bytes) in &files {
        storage.write(&dir().join(name), bytes.clone());
    }
    let recording = Recording::open_with(Arc::new(storage), &dir(), Default::default()).unwrap();
    let options = VerifyOptions { expected_cores: Some(2), ..VerifyOptions::default() };
    let report = verify(&recording, &KEY, &options, &mut |_| {});
    assert_eq!(report.is_ok(), !changed, "changed: {changed}; problems: {:?}", report.problems);
    for problem in &report.problems {
        assert!(problem.path == dir() || problem.path.parent() == Some(Path::new("/recordings")));
    }
    for record in recording.records() {
        let _ = record;
    }
});
