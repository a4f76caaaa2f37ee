//! Fuzz target `segment_reader`: one segment file, built from the input in one of three ways
//! (the first byte chooses): the raw bytes; a valid segment header and batch framing (CRCs,
//! zstd) around record bodies taken from the input, so the record decoder sees arbitrary
//! bodies; or a valid sealed segment with input bytes patched in. Invariants: reading never
//! panics or allocates past its limits; every record returned sits at its place in the chain
//! (consecutive indexes from the header's); every record body is canonical (encoding the
//! decoded frame gives back the stored bytes); errors point inside the file; footer lookups
//! return only records carrying the key; a footer named by the trailer alone is offered only
//! when the walk did not find one, and sits inside the file.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use snowgate::record::format::{FORMAT_VERSION, SegmentHeader, chain_key, encode_batch, genesis};
use snowgate::record::reader::{ReaderOptions, index_keys};
use snowgate::record::storage::SimulatedStorage;
use snowgate::record::{
    Decision, Frame, Principal, RecorderConfig, RequestFrame, SealReason, SegmentName, SegmentReader, SegmentWriter,
};

/// A valid sealed segment with a few records, built once.
fn sealed_segment() -> &'static Vec<u8> {
    static SEGMENT: OnceLock<Vec<u8>> = OnceLock::new();
    SEGMENT.get_or_init(|| {
        let storage = SimulatedStorage::new();
        let config = RecorderConfig::new("/r", 0, [3; 32]);
        let (mut writer, _) = SegmentWriter::open(Arc::new(storage.clone()), &config, 1).unwrap();
        for n in 0..4u64 {
            let frame = Frame::Request(RequestFrame {
                time_unix_us: n,
                endpoint: "query-request".into(),
                principal: Principal { sub: Some(format!("a{n}")), role: Some("R".into()), groups: vec!["g".into()] },
                session_id: Some(-(n as i64)),
                request_id: Some(format!("r{n}")),
                query_id: Some(format!("q{n}")),
                statement: Some("select 1".into()),
                bindings: Some("{}".into()),
                agent_context: Some("c".into()),
                query_tag: Some("t".into()),
                decision: Decision::Approved { rule: "x".into(), approver: "y".into() },
                body: Bytes::from_static(b"{}"),
            });
            writer.append(&[frame], 2).unwrap();
        }
        writer.seal(SealReason::Stopped, 3).unwrap();
        storage.read(&std::path::Path::new("/r").join(SegmentName { core_id: 0, sequence: 0 }.file_name())).unwrap()
    })
}

/// A segment header and one batch holding `input` cut into record bodies (two-byte length
/// prefixes), each body's first eight bytes set to its record index so it reaches decoding.
fn framed_bodies(input: &[u8]) -> Vec<u8> {
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut rest = input;
    while rest.len() >= 2 && bodies.len() < 64 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let mut body = rest[2..2 + len].to_vec();
        if body.len() >= 8 {
            body[..8].copy_from_slice(&(bodies.len() as u64).to_le_bytes());
        }
        bodies.push(body);
        rest = &rest[2 + len..];
    }
    let header = SegmentHeader {
        version: FORMAT_VERSION,
        core_id: 0,
        sequence: 0,
        created_unix_us: 0,
        first_record_index: 0,
        previous_chain_head: genesis(0),
    };
    let mut out = header.encode().to_vec();
    if !bodies.is_empty() {
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        out.extend_from_slice(&encode_batch(&chain_key(&[3; 32]), &genesis(0), 0, &refs, 1).unwrap().0);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    let segment = match mode % 3 {
        0 => input.to_vec(),
        1 => framed_bodies(input),
        _ => {
            let mut segment = sealed_segment().clone();
            if input.len() >= 2 {
                let at = usize::from(u16::from_le_bytes([input[0], input[1]])) % segment.len();
                for (offset, byte) in input[2..].iter().enumerate().take(segment.len() - at) {
                    segment[at + offset] = *byte;
                }
            }
            segment
        }
    };
    let len = segment.len() as u64;
    let options = ReaderOptions { batch_bytes_max: 4 << 20 };
    let reader = match SegmentReader::from_bytes("fuzz.sgr".into(), Bytes::from(segment), options) {
        Ok(reader) => reader,
        Err(error) => {
            assert!(error.offset <= len);
            return;
        }
    };
    let mut expected = reader.header().first_record_index;
    let mut reencoded = Vec::new();
    for batch in reader.scan() {
        match batch {
            Ok(batch) => {
                assert_eq!(batch.header.first_record_index, expected);
                assert!(batch.offset < batch.end_offset && batch.end_offset <= len);
                assert_eq!(batch.records.len(), batch.header.n_records as usize);
                for (record, body) in batch.records.iter().zip(batch.record_bodies()) {
                    assert_eq!(record.index, expected);
                    reencoded.clear();
                    record.frame.encode_body(record.index, &mut reencoded);
                    assert_eq!(reencoded.as_slice(), body, "a record body is not canonical");
                    expected += 1;
                }
            }
            Err(error) => {
                assert!(error.offset <= len);
                break;
            }
        }
    }
    if let Some(named) = reader.footer_named_by_trailer() {
        assert!(reader.sealed().is_none());
        assert!(named.footer_offset + named.footer_frame.len() as u64 <= len);
    }
    if let Some(sealed) = reader.sealed() {
        let index = &sealed.footer.index;
        for (kind, key, ordinals) in index.iter().take(4) {
            // The index searched where it lies finds each key it lists, with its ordinals.
            assert!(index.get(kind, key).is_some_and(|found| found.eq(ordinals)));
            if let Ok(found) = reader.find(kind, key) {
                assert!(found.iter().all(|r| index_keys(&r.frame).any(|(k, v)| k == kind && v == key)));
            }
        }
    }
});
