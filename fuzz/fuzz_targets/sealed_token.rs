//! Sealed tokens from agents: opening arbitrary strings never panics and never succeeds unless
//! the string is a token this key sealed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snowgate::session::token::{Sealer, TokenKind};

fuzz_target!(|data: &[u8]| {
    let sealer = Sealer::new(&[vec![9; 32]]).unwrap();
    let Ok(text) = std::str::from_utf8(data) else { return };
    for kind in [TokenKind::Session, TokenKind::Master] {
        assert!(sealer.open_ignoring_expiry(kind, text).is_err(), "forged a sealed token");
    }
});
