//! Fuzz target `mask_json`: result bodies from an untrusted upstream through the masker (query
//! answers, SQL API results and partitions, JSON chunks; anything else it must refuse). The
//! first byte chooses the profile and how many columns the plan given has (none: the body's
//! own row type). Invariants: masking never panics; the `open` profile changes no byte and
//! counts nothing; a body that changed was counted as masked; valid JSON stays valid JSON;
//! what the masker wrote it accepts again, as the same kind of body, and masking it again
//! changes nothing (a masked value never needs a second pass); the rows walker's fast path and
//! its byte walk give the same bytes and counts. The SQL API handle reader runs
//! on the same bodies and must read what serde_json reads.
#![no_main]

#[path = "common/masking.rs"]
mod masking;

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use snowgate::mask::{ResultFormat, Scratch};

/// Whether `bytes` are JSON text, or JSON rows without their enclosing brackets for a chunk.
fn is_json(bytes: &[u8], format: ResultFormat) -> bool {
    if format == ResultFormat::JsonChunk {
        let mut wrapped = Vec::with_capacity(bytes.len() + 2);
        wrapped.push(b'[');
        wrapped.extend_from_slice(bytes);
        wrapped.push(b']');
        return serde_json::from_slice::<IgnoredAny>(&wrapped).is_ok();
    }
    serde_json::from_slice::<IgnoredAny>(bytes).is_ok()
}

/// What serde_json reads as a SQL API answer's handles, where it reads the body as an object.
fn reference_handles(input: &[u8]) -> Option<Vec<String>> {
    let serde_json::Value::Object(top) = serde_json::from_slice(input).ok()? else { return None };
    let mut handles: Vec<String> =
        top.get("statementHandle").and_then(|h| h.as_str()).map(String::from).into_iter().collect();
    if let Some(serde_json::Value::Array(children)) = top.get("statementHandles") {
        handles.extend(children.iter().map_while(|c| c.as_str().map(String::from)));
    }
    Some(handles)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else { return };
    // The proxy reads SQL API handles from the same untrusted bodies: never a panic, and where
    // serde_json reads the body too (one object, each key once), the same handles.
    if let (Ok(ours), Some(reference)) = (snowgate::mask::statement_handles(input), reference_handles(input)) {
        assert_eq!(ours, reference, "statement handles differ: {:?}", String::from_utf8_lossy(input));
    }
    let masker = masking::masker();
    let profile = if flags & 1 == 0 { masking::agents() } else { masking::open() };
    let columns = usize::from((flags >> 1) & 7);
    let plan = (columns > 0).then(|| masking::plan(profile, columns));
    let mut scratch = Scratch::default();
    let mut body = input.to_vec();
    let mut by_walk = input.to_vec();
    let walked = masker.mask(profile, &mut by_walk, plan.as_ref(), &mut Scratch::byte_walk_only());
    let Ok(masked) = masker.mask(profile, &mut body, plan.as_ref(), &mut scratch) else {
        assert!(walked.is_err(), "the byte walk masked what the fast path refused");
        return;
    };
    assert_eq!(body.len(), input.len());
    // The rows walker's fast path and its byte walk agree, byte for byte and count for count.
    let walked = walked.unwrap_or_else(|e| panic!("the byte walk refused what the fast path masked ({e})"));
    assert_eq!(by_walk, body, "the fast path and the byte walk differ on {:?}", String::from_utf8_lossy(input));
    assert_eq!(walked.report, masked.report);

    if profile == masking::open() {
        assert_eq!(body, input, "the open profile changed the body");
        assert_eq!(masked.report.values_masked, 0);
        return;
    }
    if body != input {
        assert!(masked.report.values_masked > 0, "the body changed but nothing was counted as masked");
    }
    if masked.format != ResultFormat::QueryArrow && is_json(input, masked.format) {
        assert!(is_json(&body, masked.format), "masking broke the JSON: {:?}", String::from_utf8_lossy(&body));
    }

    let mut again = body.clone();
    let second = masker
        .mask(profile, &mut again, masked.plan.as_ref().or(plan.as_ref()), &mut scratch)
        .unwrap_or_else(|e| panic!("the masker refused its own output ({e}): {:?}", String::from_utf8_lossy(&body)));
    assert_eq!(second.format, masked.format);
    assert_eq!(again, body, "masking the masked body changed it again");
});
