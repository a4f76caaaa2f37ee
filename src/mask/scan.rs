//! Bit maps of 64-byte blocks of a JSON body (which bytes are `"`, `\`, ASCII digits, `@`),
//! so that the row walker finds a string's end and its detector statistics with a few bit
//! operations per value instead of a loop over its bytes. Each byte is classified once, 16 at a
//! time with SSE2 on x86_64 (eight at a time with SWAR elsewhere). Reads only.

use super::text::Stats;

/// The bit maps of one block: bit `i` stands for the byte at `base + i`. Bytes past the end of
/// the body read as zero (in no class).
///
/// A block is a snapshot: the walker masks a value only at or before its closing quote and
/// asks only about bytes after it, so bytes changed after the snapshot are never asked about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Block {
    base: usize,
    stops: u64,
    digits: u64,
    at: u64,
}

impl Default for Block {
    fn default() -> Block {
        // `at.wrapping_sub(base)` is at least 64 for every offset: nothing is covered.
        Block { base: usize::MAX - 63, stops: 0, digits: 0, at: 0 }
    }
}

impl Block {
    /// The first `"` or `\` at or after `from`, with the statistics of the bytes before it when
    /// `want_stats` (as `json::scan_string` finds them, byte for byte), except that digits are
    /// counted only when there are at least `digits_len_min` bytes (shorter values trigger no
    /// digit detector: the count stays 0).
    #[inline(always)]
    pub(crate) fn scan(
        &mut self,
        body: &[u8],
        from: usize,
        want_stats: bool,
        digits_len_min: usize,
    ) -> Option<(usize, Stats)> {
        let mut stats = Stats::default();
        let mut at = from;
        loop {
            let mut shift = at.wrapping_sub(self.base);
            if shift >= 64 {
                if at >= body.len() {
                    return None;
                }
                self.fill(body, at);
                shift = 0;
            }
            let stops = self.stops >> shift;
            if stops != 0 {
                let n = stops.trailing_zeros();
                let end = at + n as usize;
                if want_stats {
                    let before = (1u64 << n) - 1;
                    if end - from >= digits_len_min {
                        stats.digits += ((self.digits >> shift) & before).count_ones();
                    }
                    stats.at |= (self.at >> shift) & before != 0;
                }
                return Some((end, stats));
            }
            if want_stats {
                stats.digits += (self.digits >> shift).count_ones();
                stats.at |= self.at >> shift != 0;
            }
            at = self.base + 64;
        }
    }

    /// Classifies the 64 bytes from `at` (zeros past the end of `body`).
    #[inline(never)]
    fn fill(&mut self, body: &[u8], at: usize) {
        let mut padded = [0u8; 64];
        let bytes: &[u8; 64] = match body.get(at..at + 64) {
            Some(full) => full.try_into().unwrap_or(&padded),
            None => {
                let tail = &body[at..];
                padded[..tail.len()].copy_from_slice(tail);
                &padded
            }
        };
        let (stops, digits, at_signs) = classify(bytes);
        *self = Block { base: at, stops, digits, at: at_signs };
    }
}

/// The `"`-or-`\`, digit and `@` bit maps of 64 bytes.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline(always)]
fn classify(bytes: &[u8; 64]) -> (u64, u64, u64) {
    use std::arch::x86_64::{
        _mm_add_epi8, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let (mut stops, mut digits, mut at) = (0u64, 0u64, 0u64);
    for lane in 0..4 {
        // SAFETY: SSE2 is part of the x86_64 baseline, so these intrinsics are always
        // available; the unaligned load reads 16 bytes inside `bytes` (lane * 16 + 16 <= 64).
        let (s, d, a) = unsafe {
            let v = _mm_loadu_si128(bytes.as_ptr().add(lane * 16).cast());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let slash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // '0'..='9' + 0x50 is 0x80..=0x89: the only bytes below -118 as signed.
            let digit = _mm_cmplt_epi8(_mm_add_epi8(v, _mm_set1_epi8(0x50)), _mm_set1_epi8(-118));
            let at_sign = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'@' as i8));
            (
                _mm_movemask_epi8(_mm_or_si128(quote, slash)) as u32 as u64,
                _mm_movemask_epi8(digit) as u32 as u64,
                _mm_movemask_epi8(at_sign) as u32 as u64,
            )
        };
        stops |= s << (lane * 16);
        digits |= d << (lane * 16);
        at |= a << (lane * 16);
    }
    (stops, digits, at)
}

/// The `"`-or-`\`, digit and `@` bit maps of 64 bytes (SWAR, eight bytes at a time).
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn classify(bytes: &[u8; 64]) -> (u64, u64, u64) {
    classify_swar(bytes)
}

/// The portable classifier, also the reference the SSE2 one is tested against.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn classify_swar(bytes: &[u8; 64]) -> (u64, u64, u64) {
    use super::text::{digit_bytes, eq_bytes, load_word};
    // Gathers the high bit of each byte into the low eight bits.
    let gather = |flags: u64| ((flags >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) & 0xFF;
    let (mut stops, mut digits, mut at) = (0u64, 0u64, 0u64);
    for word_index in 0..8 {
        let word = load_word(bytes, word_index * 8);
        let shift = word_index * 8;
        stops |= gather(eq_bytes(word, b'"') | eq_bytes(word, b'\\')) << shift;
        digits |= gather(digit_bytes(word)) << shift;
        at |= gather(eq_bytes(word, b'@')) << shift;
    }
    (stops, digits, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifiers_agree_on_every_byte() {
        for byte in 0..=255u8 {
            let mut bytes = [b'x'; 64];
            for i in (byte as usize % 3..64).step_by(3) {
                bytes[i] = byte;
            }
            let (stops, digits, at) = classify_swar(&bytes);
            assert_eq!(classify(&bytes), (stops, digits, at), "byte {byte:#x}");
            let expect = |hit: bool| {
                if hit { bytes.iter().enumerate().fold(0u64, |m, (i, &b)| m | (u64::from(b == byte) << i)) } else { 0 }
            };
            assert_eq!(stops, expect(byte == b'"' || byte == b'\\'), "byte {byte:#x}");
            assert_eq!(digits, expect(byte.is_ascii_digit()), "byte {byte:#x}");
            assert_eq!(at, expect(byte == b'@'), "byte {byte:#x}");
        }
    }

    proptest::proptest! {
        /// The block scanner finds what the byte-at-a-time definition finds, across blocks.
        #[test]
        fn block_scan_equals_bytewise(
            body in proptest::collection::vec(proptest::sample::select(b"a1@\"\\ 9x".to_vec()), 0..300),
            starts in proptest::collection::vec(0usize..300, 1..20),
        ) {
            let mut block = Block::default();
            let mut starts = starts;
            starts.sort_unstable();
            for from in starts {
                let expected = (from..body.len()).find(|&i| body[i] == b'"' || body[i] == b'\\').map(|end| {
                    let text = &body[from..end];
                    let digits = text.iter().filter(|b| b.is_ascii_digit()).count() as u32;
                    (end, Stats { digits, at: text.contains(&b'@') })
                });
                proptest::prop_assert_eq!(block.scan(&body, from, true, 0), expected);
                if let Some((end, stats)) = expected {
                    proptest::prop_assert_eq!(block.scan(&body, from, false, 0).map(|(e, _)| e), Some(end));
                    // Digits are counted from `len_min` bytes on (and may be counted below it).
                    let len_min = 1 + (from % 13);
                    let got = block.scan(&body, from, true, len_min).unwrap();
                    proptest::prop_assert_eq!(got.1.at, stats.at);
                    if end - from >= len_min {
                        proptest::prop_assert_eq!(got.1.digits, stats.digits);
                    }
                }
            }
        }
    }
}
