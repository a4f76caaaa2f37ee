//! Fuzz target `chunk_framing`: how result chunks are framed between upstream, gateway and
//! agent. The first byte chooses: sniffing a chunk's kind (`mask::chunk::detect`), as fetched
//! and after a gzip round trip; a query answer's envelope, rebuilt with the gateway's chunk
//! URLs (`rebuild_envelope`); or a column plan carried in a chunk URL (`ColumnPlan::decode`).
//! Invariants: nothing panics; the kind agrees with the first bytes (gzip magic, whitespace,
//! `[`, `{`) and survives gzip and back; gzip is never masked; a rebuilt answer lists the
//! gateway's URLs in order, holds no `qrmk` or `chunkHeaders`, stays valid JSON, and reads back
//! with the same chunk counts and sizes; a plan decodes only from exactly its own encoding.
#![no_main]

#[path = "common/masking.rs"]
mod masking;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use snowgate::http::gzip::{gunzip_capped, gzip};
use snowgate::mask::chunk::{ChunkKind, detect};
use snowgate::mask::{ColumnPlan, MaskError, Scratch, rebuild_envelope};

fn is_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

fn sniff(data: &[u8]) {
    let kind = detect(data);
    let first = data.iter().find(|b| !is_space(b));
    let gzip_magic = data.starts_with(&[0x1f, 0x8b, 0x08]);
    match kind {
        ChunkKind::Gzip => assert!(gzip_magic),
        ChunkKind::Empty => assert!(first.is_none()),
        ChunkKind::JsonRows => assert_eq!(first, Some(&b'[')),
        ChunkKind::JsonObject => assert_eq!(first, Some(&b'{')),
        ChunkKind::Arrow | ChunkKind::Unknown => {
            assert!(!gzip_magic && first.is_some() && first != Some(&b'[') && first != Some(&b'{'))
        }
    }
    if gzip_magic {
        assert_eq!(kind, ChunkKind::Gzip);
        let mut body = data.to_vec();
        let result = masking::masker().mask(masking::agents(), &mut body, None, &mut Scratch::default());
        assert_eq!(result.unwrap_err(), MaskError::Compressed, "a gzip chunk was not refused");
    }
    // Cloud storage may serve a chunk gzipped without saying so: inflated, it is what it was.
    let compressed = gzip(data);
    assert_eq!(detect(&compressed), ChunkKind::Gzip);
    let inflated = gunzip_capped(&compressed, data.len()).expect("our own gzip inflates");
    assert_eq!(detect(&inflated), kind);
}

fn envelope(data: &[u8]) {
    let mut body = data.to_vec();
    let Ok(masked) = masking::masker().mask(masking::agents(), &mut body, None, &mut Scratch::default()) else {
        return;
    };
    let Some(envelope) = masked.envelope else { return };
    let urls: Vec<String> =
        (0..envelope.chunks.len()).map(|i| format!("https://gateway.test/chunk/{i}?p=\"x\"")).collect();
    let url_refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    assert_eq!(
        rebuild_envelope(&body, &envelope, &url_refs[..url_refs.len().saturating_sub(1)], None).is_err(),
        !urls.is_empty()
    );
    let rebuilt = rebuild_envelope(&body, &envelope, &url_refs, None).expect("the envelope rebuilds its own body");
    if serde_json::from_slice::<Value>(&body).is_ok() {
        let value: Value = serde_json::from_slice(&rebuilt).expect("the rebuilt answer is JSON");
        let data = &value["data"];
        assert!(data.get("qrmk").is_none() && data.get("chunkHeaders").is_none(), "chunk keys reached the agent");
        if !urls.is_empty() {
            let listed: Vec<&str> =
                data["chunks"].as_array().unwrap().iter().map(|c| c["url"].as_str().unwrap()).collect();
            assert_eq!(listed, url_refs);
        }
    }
    let mut again = rebuilt.clone();
    let reread = masking::masker()
        .mask(masking::agents(), &mut again, None, &mut Scratch::default())
        .expect("the rebuilt answer masks");
    let reread = reread.envelope.expect("the rebuilt answer has an envelope");
    assert_eq!(reread.chunks.len(), envelope.chunks.len());
    for ((chunk, before), url) in reread.chunks.iter().zip(&envelope.chunks).zip(&urls) {
        assert_eq!(&chunk.url, url);
        assert_eq!(
            (chunk.row_count, chunk.uncompressed_size, chunk.compressed_size),
            (before.row_count, before.uncompressed_size, before.compressed_size)
        );
    }
    assert_eq!(reread.qrmk, None);
    assert!(reread.chunk_headers.is_empty());
    assert_eq!((reread.total, reread.returned), (envelope.total, envelope.returned));
}

fn plan(data: &[u8]) {
    if let Ok(plan) = ColumnPlan::decode(data) {
        assert_eq!(plan.encode(), data, "a plan decoded from bytes other than its encoding");
    }
    // A plan the masker made round-trips.
    let columns = usize::from(data.first().copied().unwrap_or(0) % 17);
    let made = masking::plan(masking::agents(), columns);
    assert_eq!(ColumnPlan::decode(&made.encode()).unwrap(), made);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => sniff(rest),
        1 => envelope(rest),
        _ => plan(rest),
    }
});
