//! Test-only RSA key pairs, embedded from `perf/tests/fixtures/` (see the README there).
//! They protect nothing and must never be registered with a real Snowflake account.

/// The private key the tests sign key-pair JWTs with (PKCS#8 PEM).
pub const TEST_PRIVATE_KEY_PEM: &str = include_str!("../tests/fixtures/test_key.p8");
/// The public half of [`TEST_PRIVATE_KEY_PEM`] (SubjectPublicKeyInfo PEM): the double's
/// trusted key in tests.
pub const TEST_PUBLIC_KEY_PEM: &str = include_str!("../tests/fixtures/test_key.pub");
/// An untrusted private key, for JWTs the double must refuse (PKCS#8 PEM).
pub const OTHER_PRIVATE_KEY_PEM: &str = include_str!("../tests/fixtures/other_key.p8");
/// The public half of [`OTHER_PRIVATE_KEY_PEM`].
pub const OTHER_PUBLIC_KEY_PEM: &str = include_str!("../tests/fixtures/other_key.pub");
