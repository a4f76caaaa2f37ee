//! The capped gunzip never returns more than its limit and never panics, whatever it is fed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snowgate::http::gzip::{gunzip_capped, gzip};

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = gunzip_capped(data, 64 * 1024) {
        assert!(out.len() <= 64 * 1024);
    }
    // Round trip: what we compress, we inflate back.
    assert_eq!(gunzip_capped(&gzip(data), data.len()).unwrap(), data);
});
