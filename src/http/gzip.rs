//! Gzip for message bodies: detection by magic bytes, a gunzip capped in decompressed bytes
//! (a 10 MB body can inflate to 10 GB), and compression for clients that accept it. No I/O.

use std::io::{Read, Write};

/// The first three bytes of every gzip member (magic plus the deflate method).
pub const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

/// Why a gzip body was refused. Both are the sender's fault.
#[derive(Debug, thiserror::Error)]
pub enum GunzipError {
    /// The body is not a single valid gzip member.
    #[error("body is not valid gzip: {0}")]
    Invalid(String),
    /// The body inflates past the limit.
    #[error("body inflates to more than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

/// Whether `body` starts with the gzip magic bytes.
pub fn is_gzip(body: &[u8]) -> bool {
    body.starts_with(&GZIP_MAGIC)
}

/// Inflates one gzip member, refusing output larger than `limit` bytes and trailing bytes.
/// Memory is bounded by `limit`, however large the input claims to inflate.
pub fn gunzip_capped(body: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    let mut rest = body;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit).min(1 << 20));
    {
        let decoder = flate2::bufread::GzDecoder::new(&mut rest);
        // One byte past the limit tells "exactly at the limit" apart from "over it".
        let ceiling = limit.saturating_add(1);
        let mut capped = decoder.take(ceiling as u64);
        // The buffer doubles up to the ceiling, never past it (`read_to_end` alone would double
        // a buffer of `limit` bytes to twice that before the cap is seen).
        loop {
            let want = out.capacity().saturating_mul(2).max(8192).min(ceiling);
            out.reserve_exact(want.saturating_sub(out.len()));
            let room = (out.capacity().min(ceiling) - out.len()) as u64;
            let read =
                (&mut capped).take(room).read_to_end(&mut out).map_err(|e| GunzipError::Invalid(e.to_string()))?;
            if read == 0 {
                break;
            }
        }
    }
    if out.len() > limit {
        return Err(GunzipError::TooLarge { limit });
    }
    if !rest.is_empty() {
        return Err(GunzipError::Invalid("trailing bytes after the gzip member".into()));
    }
    Ok(out)
}

/// Compresses `body` as one gzip member at a fast level.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 3 + 64), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let body = br#"{"data":{"TOKEN":"x"}}"#;
        let z = gzip(body);
        assert!(is_gzip(&z));
        assert_eq!(gunzip_capped(&z, 1024).unwrap(), body);
    }

    #[test]
    fn caps_decompressed_size() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 10 << 20]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        assert!(matches!(gunzip_capped(&bomb, 1 << 20), Err(GunzipError::TooLarge { limit }) if limit == 1 << 20));
        let exact = gunzip_capped(&bomb, 10 << 20).unwrap();
        assert_eq!(exact.len(), 10 << 20);
        // The buffer never grew past the limit (doubling from 1 MiB would have made it 16 MiB).
        assert!(exact.capacity() <= (10 << 20) + 1, "{}", exact.capacity());
    }

    #[test]
    fn rejects_broken_and_trailing_input() {
        let mut z = gzip(b"hello");
        assert!(gunzip_capped(&z[..z.len() - 3], 1024).is_err());
        z.extend_from_slice(b"junk");
        assert!(gunzip_capped(&z, 1024).is_err());
        assert!(gunzip_capped(b"\x1f\x8b\x08garbage", 1024).is_err());
    }
}
