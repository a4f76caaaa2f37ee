//! Response heads from an untrusted upstream: parsing never panics and never accepts
//! ambiguous framing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snowgate::http::{Limits, Method, parse_response_head};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { head_bytes_max: 4096, body_bytes_max: 1 << 20, decompressed_bytes_max: 1 << 20 };
    for method in [Method::Get, Method::Post, Method::Head] {
        if let Ok(Some(head)) = parse_response_head(data, method, &limits) {
            assert!(head.head_len <= data.len());
            assert!(head.headers.count("content-length") + head.headers.count("transfer-encoding") <= 1);
        }
    }
});
