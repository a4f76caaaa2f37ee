//! Byte classes as bit maps, sixteen bytes at a time: bit `i` of a map is set when byte `i`
//! is in the class. The rows walker finds string ends with them ([`quotes_and_backslashes`]),
//! the text path decides which detectors can fire ([`Triggers`]), and the e-mail detector finds
//! an address's bounds with bit scans instead of byte loops ([`EmailClasses`]).
//!
//! On x86_64 the maps come from SSE2, which is part of that target's baseline; elsewhere, and
//! as the reference the tests compare the SSE2 code with, from a byte loop. The masker's
//! `unsafe` is here (the SSE2 intrinsics are `target_feature` functions, and their loads take
//! pointers) and in the two calls of x86-64-v3 copies after [`features::x86_64_v3`] said yes
//! (`RowsWalker::walk`, `arrow::scan_text`). Measured need: see BENCHMARKS.md (masking).

/// Which CPU features the maskers' hot loops may be compiled for, detected once.
#[cfg(target_arch = "x86_64")]
pub(crate) mod features {
    /// Whether this CPU is x86-64-v3 as far as the masker cares: AVX2, BMI1, BMI2, LZCNT, POPCNT.
    #[inline]
    pub(crate) fn x86_64_v3() -> bool {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("bmi1")
            && std::is_x86_feature_detected!("bmi2")
            && std::is_x86_feature_detected!("lzcnt")
            && std::is_x86_feature_detected!("popcnt")
    }
}

/// Which bytes of a text value can start a detector: digits, `@`, `%` and `\` (which may start
/// an escaped `@`, or an escape hiding another detector's separator or boundary), and
/// separators (`-`, space).
/// (Letters, which an IBAN starts with, are looked for only in the few values with enough
/// digits for one.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Triggers {
    pub(crate) digit: u64,
    pub(crate) at_or_escape: u64,
    pub(crate) separator: u64,
}

/// The classes the e-mail detector reads: bytes of a local part (letters, digits, `._%+-'` and
/// the UTF-8 bytes of two-byte characters, `0x80..=0xDF`), of a domain (letters, digits, `.-`
/// and those UTF-8 bytes), dots, dots and dashes, what a local part does not start with (dots,
/// apostrophes and UTF-8 continuation bytes, `0x80..=0xBF`), and ASCII letters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EmailClasses {
    pub(crate) local: u64,
    pub(crate) domain: u64,
    pub(crate) dot: u64,
    pub(crate) dot_dash: u64,
    pub(crate) not_first: u64,
    pub(crate) letter: u64,
}

/// The quote and backslash maps of 64 bytes.
#[inline(always)]
pub(crate) fn quotes_and_backslashes(block: &[u8; 64]) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::quotes_and_backslashes(block)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        bytewise::quotes_and_backslashes(block)
    }
}

/// The trigger classes of `N` bytes (16, 32, 48 or 64).
#[inline(always)]
pub(crate) fn triggers<const N: usize>(bytes: &[u8; N]) -> Triggers {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::triggers(bytes)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        bytewise::triggers(bytes)
    }
}

/// The e-mail classes of `N` bytes (16, 32, 48 or 64).
#[inline(always)]
pub(crate) fn email_classes<const N: usize>(bytes: &[u8; N]) -> EmailClasses {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::email_classes(bytes)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        bytewise::email_classes(bytes)
    }
}

/// Whether the first `len` bytes of `bytes` (`len <= N`, every one an ASCII digit) pass the
/// Luhn check. Bytes past `len` are ignored.
#[inline(always)]
pub(crate) fn luhn_digits<const N: usize>(bytes: &[u8; N], len: usize) -> bool {
    debug_assert!(len <= N && N <= 64 && bytes[..len].iter().all(u8::is_ascii_digit));
    #[cfg(target_arch = "x86_64")]
    {
        sse2::luhn_digits(bytes, len)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        bytewise::luhn_digits(bytes, len)
    }
}

/// One byte at a time: the version off x86_64, and the reference for the SSE2 one.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub(crate) mod bytewise {
    use super::{EmailClasses, Triggers};

    fn map(bytes: &[u8], class: impl Fn(u8) -> bool) -> u64 {
        bytes.iter().enumerate().fold(0, |bits, (i, &b)| bits | u64::from(class(b)) << i)
    }

    pub(crate) fn quotes_and_backslashes(block: &[u8; 64]) -> (u64, u64) {
        (map(block, |b| b == b'"'), map(block, |b| b == b'\\'))
    }

    pub(crate) fn luhn_digits<const N: usize>(bytes: &[u8; N], len: usize) -> bool {
        crate::mask::detect::luhn_valid(&bytes[..len])
    }

    pub(crate) fn triggers<const N: usize>(bytes: &[u8; N]) -> Triggers {
        Triggers {
            digit: map(bytes, |b| b.is_ascii_digit()),
            at_or_escape: map(bytes, |b| matches!(b, b'@' | b'%' | b'\\')),
            separator: map(bytes, |b| b == b'-' || b == b' '),
        }
    }

    pub(crate) fn email_classes<const N: usize>(bytes: &[u8; N]) -> EmailClasses {
        EmailClasses {
            local: map(bytes, |b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'' | 0x80..=0xDF)
            }),
            domain: map(bytes, |b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | 0x80..=0xDF)),
            dot: map(bytes, |b| b == b'.'),
            dot_dash: map(bytes, |b| b == b'.' || b == b'-'),
            not_first: map(bytes, |b| matches!(b, b'.' | b'\'' | 0x80..=0xBF)),
            letter: map(bytes, |b| b.is_ascii_alphabetic()),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi8, _mm_add_epi64, _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_cvtsi128_si64,
        _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_sad_epu8, _mm_set1_epi8, _mm_setr_epi8,
        _mm_setzero_si128, _mm_sub_epi8, _mm_unpackhi_epi64,
    };

    use super::{EmailClasses, Triggers};

    /// The sixteen bytes at `16 * block` of `bytes`.
    #[inline(always)]
    fn load<const N: usize>(bytes: &[u8; N], block: usize) -> __m128i {
        assert!(16 * block + 16 <= N);
        // SAFETY: the assert keeps the sixteen bytes inside the array; loadu takes any alignment.
        // SSE2 is part of the x86_64 baseline.
        unsafe { _mm_loadu_si128(bytes.as_ptr().add(16 * block).cast::<__m128i>()) }
    }

    /// The bit map of a byte mask's sixteen lanes.
    #[inline(always)]
    fn bits(mask: __m128i) -> u64 {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        u64::from(unsafe { _mm_movemask_epi8(mask) } as u16)
    }

    /// Lanes equal to `byte`.
    #[inline(always)]
    fn eq(v: __m128i, byte: u8) -> __m128i {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe { _mm_cmpeq_epi8(v, _mm_set1_epi8(byte as i8)) }
    }

    /// Lanes in `low..=low + span` (unsigned: below `low` wraps past `span`).
    #[inline(always)]
    fn in_range(v: __m128i, low: u8, span: u8) -> __m128i {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe {
            let shifted = _mm_sub_epi8(v, _mm_set1_epi8(low as i8));
            _mm_cmpeq_epi8(_mm_min_epu8(shifted, _mm_set1_epi8(span as i8)), shifted)
        }
    }

    /// Lanes in `0x80..=high` (`high >= 0x80`): one signed compare, bytes from 0x80 on being
    /// the negative ones.
    #[inline(always)]
    fn high_up_to(v: __m128i, high: u8) -> __m128i {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe { _mm_cmpgt_epi8(_mm_set1_epi8((high as i8).wrapping_add(1)), v) }
    }

    #[inline(always)]
    fn or(a: __m128i, b: __m128i) -> __m128i {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe { _mm_or_si128(a, b) }
    }

    #[inline(always)]
    pub(super) fn quotes_and_backslashes(block: &[u8; 64]) -> (u64, u64) {
        let (mut quotes, mut backslashes) = (0u64, 0u64);
        for i in 0..4 {
            let v = load(block, i);
            quotes |= bits(eq(v, b'"')) << (16 * i);
            backslashes |= bits(eq(v, b'\\')) << (16 * i);
        }
        (quotes, backslashes)
    }

    #[inline(always)]
    pub(super) fn luhn_digits<const N: usize>(bytes: &[u8; N], len: usize) -> bool {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe {
            let zero = _mm_setzero_si128();
            let nine = _mm_set1_epi8(9);
            let lanes = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            // Digit `i` is doubled when `len - 1 - i` is odd: when `i` has the parity of `len`.
            let even = _mm_setr_epi8(-1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0);
            let doubled = if len.is_multiple_of(2) { even } else { _mm_cmpeq_epi8(even, zero) };
            let mut sums = zero;
            for i in 0..N / 16 {
                let inside = _mm_cmpgt_epi8(_mm_set1_epi8((len as i32 - 16 * i as i32).clamp(0, 16) as i8), lanes);
                let digits = _mm_and_si128(_mm_sub_epi8(load(bytes, i), _mm_set1_epi8(b'0' as i8)), inside);
                let twice = _mm_add_epi8(digits, _mm_and_si128(digits, doubled));
                let luhn = _mm_sub_epi8(twice, _mm_and_si128(_mm_cmpgt_epi8(twice, nine), nine));
                sums = _mm_add_epi64(sums, _mm_sad_epu8(luhn, zero));
            }
            let total = _mm_cvtsi128_si64(sums) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums));
            len > 0 && total % 10 == 0
        }
    }

    #[inline(always)]
    pub(super) fn triggers<const N: usize>(bytes: &[u8; N]) -> Triggers {
        let mut t = Triggers::default();
        for i in 0..N / 16 {
            let v = load(bytes, i);
            t.digit |= bits(in_range(v, b'0', 9)) << (16 * i);
            t.at_or_escape |= bits(or(or(eq(v, b'@'), eq(v, b'%')), eq(v, b'\\'))) << (16 * i);
            t.separator |= bits(or(eq(v, b'-'), eq(v, b' '))) << (16 * i);
        }
        t
    }

    #[inline(always)]
    pub(super) fn email_classes<const N: usize>(bytes: &[u8; N]) -> EmailClasses {
        let mut c = EmailClasses::default();
        for i in 0..N / 16 {
            let v = load(bytes, i);
            // SAFETY: SSE2 is part of the x86_64 baseline.
            let letter = in_range(or(v, unsafe { _mm_set1_epi8(0x20) }), b'a', 25);
            let alnum = or(letter, in_range(v, b'0', 9));
            let dot = eq(v, b'.');
            let dot_dash = or(dot, eq(v, b'-'));
            let domain = or(or(alnum, dot_dash), high_up_to(v, 0xDF));
            let quote = eq(v, b'\'');
            let local = or(or(domain, quote), or(eq(v, b'_'), or(eq(v, b'%'), eq(v, b'+'))));
            let shift = 16 * i;
            c.local |= bits(local) << shift;
            c.domain |= bits(domain) << shift;
            c.dot |= bits(dot) << shift;
            c.dot_dash |= bits(dot_dash) << shift;
            c.not_first |= bits(or(or(dot, quote), high_up_to(v, 0xBF))) << shift;
            c.letter |= bits(letter) << shift;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_block(seed: u64) -> [u8; 64] {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut block = [0u8; 64];
        for b in &mut block {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Every byte value, and often the ones next to each class's edges.
            const EDGES: &[u8] = b"\"\\@-. _%+'/09:AZ[`az{\x1f\x7f\x80\xff\xc1\xe1\xbf\xc0\xdf\xe0";
            *b = if x.is_multiple_of(3) { (x >> 8) as u8 } else { EDGES[(x >> 16) as usize % EDGES.len()] };
        }
        block
    }

    #[test]
    fn the_vector_classes_equal_the_bytewise_ones() {
        for seed in 0..4_000 {
            let block = random_block(seed);
            assert_eq!(quotes_and_backslashes(&block), bytewise::quotes_and_backslashes(&block));
            assert_eq!(triggers(&block), bytewise::triggers(&block));
            assert_eq!(email_classes(&block), bytewise::email_classes(&block));
            let half: &[u8; 32] = block[..32].try_into().unwrap();
            assert_eq!(triggers(half), bytewise::triggers(half));
            assert_eq!(email_classes(half), bytewise::email_classes(half));
        }
        for seed in 0..20_000u64 {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut digits = [0u8; 64];
            for d in &mut digits {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *d = b'0' + (x % 10) as u8;
            }
            let len = (seed % 33) as usize;
            let half: &[u8; 32] = digits[..32].try_into().unwrap();
            assert_eq!(luhn_digits(half, len), bytewise::luhn_digits(half, len), "{:?}", &half[..len]);
            let len = (seed % 65) as usize;
            assert_eq!(luhn_digits(&digits, len), bytewise::luhn_digits(&digits, len), "{:?}", &digits[..len]);
        }
        for byte in 0..=255u8 {
            let block = [byte; 64];
            assert_eq!(triggers(&block), bytewise::triggers(&block), "byte {byte:#x}");
            assert_eq!(email_classes(&block), bytewise::email_classes(&block), "byte {byte:#x}");
        }
    }
}
