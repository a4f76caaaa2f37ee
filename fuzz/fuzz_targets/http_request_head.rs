//! Request heads from untrusted bytes: parsing never panics, a parsed head never claims more
//! bytes than it was given, and every accepted head has unambiguous framing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snowgate::http::{BodyFraming, Limits, parse_request_head};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { head_bytes_max: 4096, body_bytes_max: 1 << 20, decompressed_bytes_max: 1 << 20 };
    if let Ok(Some(head)) = parse_request_head(data, &limits) {
        assert!(head.head_len <= data.len());
        assert!(head.head_len <= limits.head_bytes_max);
        assert!(head.target.starts_with('/'));
        let n_cl = head.headers.count("content-length");
        let n_te = head.headers.count("transfer-encoding");
        assert!(n_cl + n_te <= 1, "ambiguous framing accepted");
        assert!(head.framing != BodyFraming::UntilClose, "a request body never runs until close");
        if let BodyFraming::Length(n) = head.framing {
            assert!(n as usize <= limits.body_bytes_max);
        }
        assert!(!data[..head.head_len].contains(&0));
    }
});
