//! Structural bit maps of JSON bytes for the rows walker: one bit per byte for `"` and for `\`,
//! 64 bytes to a word, over a window of the body. A string's closing quote is then a bit scan
//! away, with no loop over the string's bytes whose exit the branch predictor would miss once
//! a cell. Pure: reads the bytes it is lent, keeps its words for reuse.

use super::simd::quotes_and_backslashes;

/// Bytes a window maps at most: 256 words a class, 4 KiB of maps, which stay in L1.
pub(crate) const WINDOW_BYTES: usize = 16 * 1024;

/// The maps of `body[base..end]`: bit `i % 64` of word `i / 64` stands for byte `base + i`.
/// Bits past `end` are zero.
#[derive(Debug, Default)]
pub(crate) struct StructureMap {
    base: usize,
    end: usize,
    quotes: Vec<u64>,
    backslashes: Vec<u64>,
    /// Whether any mapped byte is a `\`.
    any_backslash: bool,
}

/// The quotes of a map one after another, from a position on.
pub(crate) struct Quotes<'m> {
    words: &'m [u64],
    /// The offset of the current word's bit 0.
    offset: usize,
    word: usize,
    bits: u64,
}

impl Quotes<'_> {
    /// The next quote's offset; `None` past the map's end. Each quote costs a bit scan and
    /// clearing its bit: quotes are found one after another without waiting on the bytes.
    #[inline(always)]
    pub(crate) fn next(&mut self) -> Option<usize> {
        while self.bits == 0 {
            self.word += 1;
            self.offset += 64;
            self.bits = *self.words.get(self.word)?;
        }
        let at = self.offset + self.bits.trailing_zeros() as usize;
        self.bits &= self.bits - 1;
        Some(at)
    }
}

impl StructureMap {
    /// Forgets what was mapped: a map describes one body, and the scratch it lives in is lent
    /// for many.
    pub(crate) fn clear(&mut self) {
        self.base = 0;
        self.end = 0;
        self.any_backslash = false;
    }

    /// Maps `body[from..to]`, replacing what was mapped before.
    #[inline(always)]
    pub(crate) fn fill(&mut self, body: &[u8], from: usize, to: usize) {
        debug_assert!(from <= to && to <= body.len());
        self.base = from;
        self.end = to;
        let bytes = &body[from..to];
        let words = bytes.len().div_ceil(64);
        self.quotes.resize(words, 0);
        self.backslashes.resize(words, 0);
        let mut blocks = bytes.chunks_exact(64);
        let mut any = 0;
        for ((block, quotes), backslashes) in (&mut blocks).zip(&mut self.quotes).zip(&mut self.backslashes) {
            let block: &[u8; 64] = block.try_into().expect("64 bytes");
            (*quotes, *backslashes) = quotes_and_backslashes(block);
            any |= *backslashes;
        }
        let tail = blocks.remainder();
        if !tail.is_empty() {
            // Zero is neither a quote nor a backslash: bits past the end stay clear.
            let mut padded = [0u8; 64];
            padded[..tail.len()].copy_from_slice(tail);
            let (quotes, backslashes) = quotes_and_backslashes(&padded);
            self.quotes[words - 1] = quotes;
            self.backslashes[words - 1] = backslashes;
            any |= backslashes;
        }
        self.any_backslash = any != 0;
    }

    /// Where the map starts.
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// Where the map ends (exclusive).
    pub(crate) fn end(&self) -> usize {
        self.end
    }

    /// Whether `at` is mapped.
    pub(crate) fn covers(&self, at: usize) -> bool {
        at >= self.base && at < self.end
    }

    /// The quotes at or after `at` (mapped), in order.
    #[inline(always)]
    pub(crate) fn quotes_from(&self, at: usize) -> Quotes<'_> {
        debug_assert!(self.covers(at));
        let relative = at - self.base;
        let word = relative / 64;
        Quotes {
            words: &self.quotes,
            offset: self.base + word * 64,
            word,
            bits: self.quotes[word] & (u64::MAX << (relative % 64)),
        }
    }

    /// Whether any byte of `from..to` (mapped) is a `\`.
    #[inline]
    pub(crate) fn any_backslash(&self, from: usize, to: usize) -> bool {
        debug_assert!(from >= self.base && to <= self.end);
        if !self.any_backslash || from >= to {
            return false;
        }
        let (first, last) = (from - self.base, to - 1 - self.base);
        let (first_word, last_word) = (first / 64, last / 64);
        let head = u64::MAX << (first % 64);
        let tail = u64::MAX >> (63 - last % 64);
        if first_word == last_word {
            return self.backslashes[first_word] & head & tail != 0;
        }
        self.backslashes[first_word] & head != 0
            || self.backslashes[first_word + 1..last_word].iter().any(|&w| w != 0)
            || self.backslashes[last_word] & tail != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(bytes: &[u8], byte: u8) -> Vec<usize> {
        bytes.iter().enumerate().filter(|(_, b)| **b == byte).map(|(i, _)| i).collect()
    }

    #[test]
    fn finds_quotes_and_backslashes_in_a_window() {
        let body: Vec<u8> = (0..300)
            .map(|i| {
                if i % 37 == 5 {
                    b'"'
                } else if i == 250 {
                    b'\\'
                } else {
                    b'x'
                }
            })
            .collect();
        let mut map = StructureMap::default();
        map.fill(&body, 3, 290);
        assert!(map.covers(3) && map.covers(289) && !map.covers(290) && !map.covers(2));
        let quotes = reference(&body[..290], b'"');
        for at in 3..290 {
            let mut iter = map.quotes_from(at);
            let listed: Vec<usize> = std::iter::from_fn(|| iter.next()).collect();
            assert_eq!(listed, quotes.iter().copied().filter(|&q| q >= at).collect::<Vec<_>>(), "from {at}");
        }
        for from in (3..290).step_by(7) {
            for to in (from..=290).step_by(11) {
                assert_eq!(map.any_backslash(from, to), (from..to).contains(&250), "{from}..{to}");
            }
        }
    }
}
