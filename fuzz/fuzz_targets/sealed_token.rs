//! Fuzz target `sealed_token`: sealed tokens from agents. The first byte chooses: the rest is a
//! token string to open; or claims to seal, open and tamper with (the rest is the upstream
//! token, then a tamper position and mask). Invariants: opening never panics; no string the
//! fuzzer makes opens (it holds no key); sealed claims open to exactly themselves, under their
//! own kind only, not under another key; any changed character makes the token fail to open.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use snowgate::session::token::{Sealer, TokenClaims, TokenKind};

fn sealer() -> &'static Sealer {
    static SEALER: OnceLock<Sealer> = OnceLock::new();
    SEALER.get_or_init(|| Sealer::new(&[vec![9; 32], vec![10; 32]]).unwrap())
}

fn other_sealer() -> &'static Sealer {
    static SEALER: OnceLock<Sealer> = OnceLock::new();
    SEALER.get_or_init(|| Sealer::new(&[vec![11; 32]]).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else { return };
        for kind in [TokenKind::Session, TokenKind::Master] {
            assert!(sealer().open_ignoring_expiry(kind, text).is_err(), "forged a sealed token");
        }
        return;
    }
    let (tamper, upstream) = rest.split_at(rest.len().min(3));
    let claims = TokenClaims {
        upstream_token: String::from_utf8_lossy(upstream).into_owned(),
        sub: "agent-1".into(),
        groups: vec!["analysts".into()],
        role: "ANALYST".into(),
        session_id: tamper.first().map(|&b| i64::from(b) - 128),
        expires_at_unix_ms: 4_102_444_800_000,
        identity_expires_at_unix_ms: 4_102_444_800_000,
    };
    let kind = if mode & 2 == 0 { TokenKind::Session } else { TokenKind::Master };
    let other_kind = if kind == TokenKind::Session { TokenKind::Master } else { TokenKind::Session };
    let token = sealer().seal(kind, &claims);
    match sealer().open(kind, &token, 1_000) {
        Ok(opened) => assert_eq!(opened, claims),
        // Tokens are capped: a large upstream token seals into one that will not open.
        Err(_) => assert!(token.len() > snowgate::session::token::SEALED_BYTES_MAX, "a sealed token did not open"),
    }
    assert!(sealer().open_ignoring_expiry(other_kind, &token).is_err(), "opened under the other kind");
    assert!(other_sealer().open_ignoring_expiry(kind, &token).is_err(), "opened under another key");
    if let [at_low, at_high, mask] = *tamper
        && mask != 0
    {
        let mut bytes = token.into_bytes();
        let at = usize::from(u16::from_le_bytes([at_low, at_high])) % bytes.len();
        bytes[at] ^= mask;
        if let Ok(tampered) = String::from_utf8(bytes) {
            assert!(sealer().open_ignoring_expiry(kind, &tampered).is_err(), "a tampered token opened");
        }
    }
});
