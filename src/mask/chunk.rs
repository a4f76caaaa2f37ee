//! Chunk bodies as cloud storage serves them: what kind of bytes they are (raw gzip without a
//! Content-Encoding, an Arrow IPC stream, JSON rows without enclosing brackets, a JSON object),
//! decided from the bytes alone. Inflating is the proxy's job (`http::gzip::gunzip_capped`);
//! masking is [`super::Masker::mask`]'s. No I/O.

use arrow_ipc::root_as_message;

/// What a chunk (or any result body) holds, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// Nothing but whitespace.
    Empty,
    /// A gzip member: inflate it (capped), then look again.
    Gzip,
    /// An Arrow IPC stream (with continuation markers, or the older form without).
    Arrow,
    /// JSON rows: `[...]` arrays separated by commas or newlines, no enclosing brackets.
    JsonRows,
    /// A JSON object: a query answer, a SQL API result or partition.
    JsonObject,
    /// Anything else: refuse it rather than pass it on unmasked.
    Unknown,
}

/// The largest metadata length accepted when sniffing an Arrow stream without continuation markers.
const LEGACY_METADATA_BYTES_MAX: u32 = 16 << 20;

/// Whether `body` starts with the gzip magic bytes (`1f 8b 08`).
pub fn is_gzip(body: &[u8]) -> bool {
    crate::http::gzip::is_gzip(body)
}

/// Decides what kind of bytes `body` holds.
pub fn detect(body: &[u8]) -> ChunkKind {
    if is_gzip(body) {
        return ChunkKind::Gzip;
    }
    if body.starts_with(&[0xFF; 4]) {
        return ChunkKind::Arrow;
    }
    match body.iter().find(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t')) {
        None => return ChunkKind::Empty,
        Some(b'[') => return ChunkKind::JsonRows,
        Some(b'{') => return ChunkKind::JsonObject,
        Some(_) => {}
    }
    // An Arrow stream from before continuation markers: a length, then a Message flatbuffer.
    if let Some(head) = body.get(..4) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if (8..=LEGACY_METADATA_BYTES_MAX).contains(&len)
            && let Some(meta) = body.get(4..4 + len as usize)
            && root_as_message(meta).is_ok()
        {
            return ChunkKind::Arrow;
        }
    }
    ChunkKind::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_kind() {
        assert_eq!(detect(b""), ChunkKind::Empty);
        assert_eq!(detect(b" \n"), ChunkKind::Empty);
        assert_eq!(detect(&crate::http::gzip::gzip(b"[\"a\"]")), ChunkKind::Gzip);
        assert_eq!(detect(b"[\"a\"],\n[\"b\"]"), ChunkKind::JsonRows);
        assert_eq!(detect(b" {\"data\":[]}"), ChunkKind::JsonObject);
        assert_eq!(detect(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]), ChunkKind::Arrow);
        assert_eq!(detect(b"<html>"), ChunkKind::Unknown);
        assert_eq!(detect(&[0x10, 0, 0, 0, 1, 2, 3]), ChunkKind::Unknown);
    }
}
