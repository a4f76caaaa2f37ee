//! Chunked bodies fed in arbitrary slices decode to the same result as fed whole, never
//! exceed the limit, and never panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use snowgate::http::ChunkedDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&split, wire)) = data.split_first() else { return };
    let limit = 4096;
    let whole = {
        let mut decoder = ChunkedDecoder::new(limit);
        let mut input = BytesMut::from(wire);
        let mut out = BytesMut::new();
        decoder.decode(&mut input, &mut out).map(|done| (done, out, input.len()))
    };
    // The same bytes in two reads, as a slow peer sends them.
    let split = (split as usize) % (wire.len() + 1);
    let pieces = {
        let mut decoder = ChunkedDecoder::new(limit);
        let mut input = BytesMut::from(&wire[..split]);
        let mut out = BytesMut::new();
        let first = decoder.decode(&mut input, &mut out);
        match first {
            Ok(true) => {
                let rest = input.len() + wire.len() - split;
                Ok((true, out, rest))
            }
            Ok(false) => {
                input.extend_from_slice(&wire[split..]);
                decoder.decode(&mut input, &mut out).map(|done| (done, out, input.len()))
            }
            Err(e) => Err(e),
        }
    };
    if let (Ok(a), Ok(b)) = (&whole, &pieces) {
        assert_eq!(a, b);
        assert!(a.1.len() <= limit);
    }
    if whole.is_ok() && pieces.is_err() || whole.is_err() && pieces.as_ref().is_ok_and(|p| p.0) {
        panic!("splitting the input changed the verdict");
    }
});
