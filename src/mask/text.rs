//! Value-level masking shared by the JSON and Arrow paths: cheap per-value statistics for the
//! detector triggers (SWAR, eight bytes at a time), finding a value's matches (in its
//! percent- and backslash-decoded form, and with `+` read as a space, too), merging spans, and
//! writing masks over decoded text in place.
//! Knows nothing of a JSON rowset's escapes (its callers decode a cell first) nor of Arrow
//! buffers; never allocates per value (callers lend the span vector and the [`Views`]).

use super::detect::{DetectorKind, Trigger, email_around, low_bits};
use super::plan::ValueType;
use super::rules::{Dictionary, Found, Profile, RuleKind, Style};
use super::simd::{email_classes, luhn_digits, triggers};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const LOWS: u64 = !HIGHS;

/// High bit of each byte of `word` equal to `byte`, exactly (no carries between bytes).
#[inline(always)]
pub(crate) fn eq_bytes(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    !(((x & LOWS).wrapping_add(LOWS)) | x | LOWS)
}

/// High bit of each byte of `word` that is an ASCII digit, exactly.
#[inline(always)]
pub(crate) fn digit_bytes(word: u64) -> u64 {
    let low = word & LOWS;
    let at_least_0 = low.wrapping_add(0x5050_5050_5050_5050);
    let at_least_colon = low.wrapping_add(0x4646_4646_4646_4646);
    at_least_0 & !at_least_colon & !word & HIGHS
}

/// High bit of each byte of `word` that is an ASCII uppercase letter, exactly.
#[inline(always)]
pub(crate) fn upper_bytes(word: u64) -> u64 {
    let low = word & LOWS;
    let at_least_a = low.wrapping_add(0x3F3F_3F3F_3F3F_3F3F);
    let past_z = low.wrapping_add(0x2525_2525_2525_2525);
    at_least_a & !past_z & !word & HIGHS
}

/// High bit of each byte of `word` that is an ASCII letter of either case, exactly: clearing
/// bit 5 turns only lower-case letters into upper-case ones.
#[inline(always)]
pub(crate) fn letter_bytes(word: u64) -> u64 {
    upper_bytes(word & !(ONES * 0x20))
}

/// How many bytes of a word have their high bit flagged (the flags SWAR classes return).
/// A multiply instead of `count_ones`, which is a dozen instructions without POPCNT.
#[inline(always)]
pub(crate) fn count_flags(flags: u64) -> u32 {
    ((flags >> 7).wrapping_mul(ONES) >> 56) as u32
}

#[inline(always)]
pub(crate) fn load_word(bytes: &[u8], at: usize) -> u64 {
    match bytes.get(at..at + 8) {
        Some(eight) => {
            u64::from_le_bytes([eight[0], eight[1], eight[2], eight[3], eight[4], eight[5], eight[6], eight[7]])
        }
        None => {
            let mut padded = [0u8; 8];
            let tail = &bytes[at.min(bytes.len())..];
            padded[..tail.len()].copy_from_slice(tail);
            u64::from_le_bytes(padded)
        }
    }
}

/// Writes `byte` over all of `out` with plain stores. A masked value is short, and `memset`
/// writes it with wide masked stores: a later, wider load over those bytes (the next cell's
/// window, the row's last bytes) cannot take its data from a masked store and waits for it to
/// land, where plain stores would have been forwarded. Up to 64 bytes are two overlapping stores.
#[inline(always)]
pub(crate) fn fill(out: &mut [u8], byte: u8) {
    let n = out.len();
    match n {
        0 => {}
        1..=3 => {
            out[0] = byte;
            out[n / 2] = byte;
            out[n - 1] = byte;
        }
        4..=7 => {
            out[..4].copy_from_slice(&[byte; 4]);
            out[n - 4..].copy_from_slice(&[byte; 4]);
        }
        8..=15 => {
            out[..8].copy_from_slice(&[byte; 8]);
            out[n - 8..].copy_from_slice(&[byte; 8]);
        }
        16..=32 => {
            out[..16].copy_from_slice(&[byte; 16]);
            out[n - 16..].copy_from_slice(&[byte; 16]);
        }
        33..=64 => {
            out[..32].copy_from_slice(&[byte; 32]);
            out[n - 32..].copy_from_slice(&[byte; 32]);
        }
        _ => out.fill(byte),
    }
}

/// What the detector triggers need to know about a value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    pub(crate) digits: u32,
    pub(crate) at: bool,
}

impl Stats {
    #[inline(always)]
    pub(crate) fn add_word(&mut self, word: u64) {
        self.digits += count_flags(digit_bytes(word));
        self.at |= eq_bytes(word, b'@') != 0;
    }
}

/// Counts digits and looks for `@` in `bytes`.
#[inline]
pub(crate) fn stats(bytes: &[u8]) -> Stats {
    let mut stats = Stats::default();
    let mut at = 0;
    while at < bytes.len() {
        // Bytes past the end load as zero: neither a digit nor `@`.
        stats.add_word(load_word(bytes, at));
        at += 8;
    }
    stats
}

/// A span of decoded text to mask, with the style that masks it and the rule kinds that found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) style: Style,
    pub(crate) kinds: u32,
}

/// Sorts spans and merges overlapping ones; the stronger style masks a union.
pub(crate) fn merge_spans(profile: &Profile, spans: &mut Vec<Span>) {
    if spans.len() < 2 {
        return;
    }
    spans.sort_unstable_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
    let mut kept = 0;
    for i in 1..spans.len() {
        let next = spans[i];
        let last = &mut spans[kept];
        if next.start < last.end {
            last.end = last.end.max(next.end);
            if next.style.stronger_than(last.style, &profile.tokens) {
                last.style = next.style;
            }
            last.kinds |= next.kinds;
        } else {
            kept += 1;
            spans[kept] = next;
        }
    }
    spans.truncate(kept + 1);
}

/// Where the kept tail of `text[start..end]` begins (UTF-8 boundaries): its last `keep`
/// characters, but never more than half of them (rounded down), so a `keep_last` mask always
/// masks at least half of what it covers: an SSN under `keep = 11`, or a four-digit PIN under
/// `keep = 4`, would otherwise pass in clear while counted as masked.
pub(crate) fn keep_from(text: &[u8], start: usize, end: usize, keep: u32) -> usize {
    let part = &text[start..end];
    // ASCII (card digits, most keys): one byte a character.
    if part.is_ascii() {
        return end - (keep as usize).min(part.len() / 2);
    }
    let chars = part.iter().filter(|&&b| (b & 0xC0) != 0x80).count();
    let keep = (keep as usize).min(chars / 2);
    let mut at = end;
    let mut kept = 0;
    while at > start && kept < keep {
        at -= 1;
        while at > start && (text[at] & 0xC0) == 0x80 {
            at -= 1;
        }
        kept += 1;
    }
    at
}

/// Runs the enabled detectors a value's statistics (and anchors found in it) trigger, adding
/// their spans; a value holding a percent or backslash escape is searched in its decoded form
/// too, by the dictionary as well (any byte of a word may be written as an escape:
/// `Jos%C3%A9`, `Jos\u00e9`), and a
/// value holding a `+` with it read as a space ([`Views`], [`plus_as_space`]). `text` is the
/// decoded value; `anchored` is a bit set of detectors whose anchors were found in it. The
/// triggers make a bit set first, so a value that triggers nothing costs a few compares (and
/// a search for `%`, and for `+` when a word holds a space).
pub(crate) fn detect_spans(
    profile: &Profile,
    text: &[u8],
    stats: Stats,
    anchored: u32,
    spans: &mut Vec<Span>,
    views: &mut Views,
) {
    let run = triggered(text, stats, anchored) & profile.enabled_detectors;
    run_detectors(profile, text, run, spans);
    plus_as_space(profile, text, run, spans, &mut views.spaced);
    if profile.enabled_detectors == 0 && profile.dictionary.is_empty() {
        return;
    }
    let Some(mut first) = first_escape(text) else { return };
    views.decode(text, first);
    for level in 1..=ESCAPE_LEVELS {
        if level > 1 {
            let Some(next) = first_escape(&views.text) else { return };
            first = next;
            views.decode_again(first);
        }
        let decoded = &views.text[..];
        // An anchor may be encoded too (`%41KIA…`): in decoded text every detector that has
        // anchors looks for them itself.
        let run = triggered(decoded, self::stats(decoded), !0) & profile.enabled_detectors;
        let before = spans.len();
        // The anchors found here are ignored: every detector that has anchors ran.
        dictionary_spans(&profile.dictionary, decoded, &mut 0, spans);
        run_detectors(profile, decoded, run, spans);
        plus_as_space(profile, decoded, run, spans, &mut views.spaced);
        for span in &mut spans[before..] {
            span.start = views.raw_of[span.start] as usize;
            span.end = views.raw_of[span.end] as usize;
        }
    }
}

/// How many times [`settle_spans`] reads a value as masked before masking it whole.
const SETTLE_ROUNDS: usize = 4;

/// Makes a value's masks final. Masking one match can free another that was glued to it: in
/// `4111111111111111%3211116789` the card's mask cuts the longer run of digits the decoded
/// form read; after `x@ada.coma4111…` is masked the card no longer follows a letter; the last
/// characters a keep-last mask leaves can start a match with what follows (`…comghp` and
/// `_a1B2…` a token, `…DE89` and ` 3704 0044…` an IBAN). A second pass over the masked value
/// would mask more. So when a mask borders a character that can continue a match
/// ([`borders_word`]), the detectors read the value as masked (the spans applied at fixed
/// length, as Arrow writes them) and what they find there is added, until nothing new is
/// found; after [`SETTLE_ROUNDS`] rounds the whole value is masked in the strongest style
/// found. `anchored` are the anchors found in the value: a mask does not make more, but the
/// characters a keep-last mask leaves might, with what follows them. Sorts and merges `spans`
/// ([`merge_spans`]). A value whose masks border none (the usual one: a whole value, or a match
/// between spaces) costs a look at each mask's two ends.
pub(crate) fn settle_spans(profile: &Profile, text: &[u8], anchored: u32, spans: &mut Vec<Span>, views: &mut Views) {
    merge_spans(profile, spans);
    for _ in 0..SETTLE_ROUNDS {
        if !spans.iter().any(|s| borders_word(text, s)) {
            return;
        }
        let kept = spans.iter().any(|s| matches!(s.style, Style::KeepLast(keep) if keep > 0));
        let anchored = if kept { !0 } else { anchored };
        let mut masked = std::mem::take(&mut views.masked);
        masked.clear();
        masked.extend_from_slice(text);
        apply_spans_fixed_len(profile, &mut masked, spans);
        let before = spans.len();
        detect_spans(profile, &masked, stats(&masked), anchored, spans, views);
        views.masked = masked;
        // `found` is merged: sorted and apart, so the one that may hold a new span is the last
        // starting by it (a search, not a scan: a value of many matches stays near linear).
        let (found, new) = spans.split_at(before);
        let covered = |n: &Span| {
            let at = found.partition_point(|f| f.start <= n.start);
            at > 0 && n.end <= found[at - 1].end
        };
        if new.iter().all(covered) {
            spans.truncate(before);
            return;
        }
        merge_spans(profile, spans);
    }
    // Still finding more: the whole value.
    let strongest =
        spans.iter().copied().reduce(|a, b| if b.style.stronger_than(a.style, &profile.tokens) { b } else { a });
    if let Some(strongest) = strongest {
        let kinds = spans.iter().fold(0, |k, s| k | s.kinds);
        spans.clear();
        spans.push(Span { start: 0, end: text.len(), style: strongest.style, kinds });
    }
}

/// Whether the span's mask borders a byte that can continue a match (a letter or digit, a
/// byte of a UTF-8 character, or one of `%_-.@'+`), which a match it cut off may have been
/// glued to, or leaves its last characters in clear before more text, which they may start a
/// match with (`…DE89 3704 0044…`, an IBAN the mask's `*`s no longer glue to a word): see
/// [`settle_spans`].
#[inline(always)]
pub(crate) fn borders_word(text: &[u8], span: &Span) -> bool {
    let glue =
        |b: u8| b.is_ascii_alphanumeric() || b >= 0x80 || matches!(b, b'%' | b'_' | b'-' | b'.' | b'@' | b'\'' | b'+');
    // A mask over a whole value (the usual one) borders nothing: two compares.
    if span.start > 0 && glue(text[span.start - 1]) {
        return true;
    }
    match text.get(span.end) {
        None => false,
        Some(&after) => glue(after) || matches!(span.style, Style::KeepLast(keep) if keep > 0),
    }
}

/// How many times a value is decoded, at most: a URL carried in a parameter of another is
/// percent-encoded twice (`next%3D%252Fpay%253Fcard%253D4111…`), a third time in a redirect's;
/// a JSON document held as a string in another is backslash-escaped twice (`\\n`).
const ESCAPE_LEVELS: usize = 3;

/// The detectors whose matches may hold a space (bits by [`DetectorKind::index`]): a grouped
/// card number, SSN or IBAN, a PEM key's lines.
const SPACED: u32 = 1 << DetectorKind::Card.index()
    | 1 << DetectorKind::Ssn.index()
    | 1 << DetectorKind::Iban.index()
    | 1 << DetectorKind::PemPrivateKey.index();

/// Form encoding (`application/x-www-form-urlencoded`, Python's `urlencode`) writes a space as
/// `+`: `card=4111+1111+1111+1111`, `ssn=123+45+6789`, `-----BEGIN+PRIVATE+KEY-----`,
/// `name=Ada+Lovelace`. So the detectors of `run` whose matches may hold a space ([`SPACED`]),
/// and the dictionary when a word holds one, read a value holding a `+` again with each `+`
/// as a space, in `buf` (same length: a match masks the bytes it lies on). A `+` first in the
/// value stays as written: it stands between nothing (`+14155550100`, a phone number). The
/// e-mail detector does not read it so: `+` is a character of an address
/// (`ada+tag@example.com`), and what it finds in the value as written covers what it would
/// find here.
fn plus_as_space(profile: &Profile, text: &[u8], run: u32, spans: &mut Vec<Span>, buf: &mut Vec<u8>) {
    let run = run & SPACED;
    let words = profile.dictionary.spaced;
    if run == 0 && !words {
        return;
    }
    let Some(first) = plus_after_first(text) else { return };
    buf.clear();
    buf.extend_from_slice(text);
    for b in &mut buf[first..] {
        if *b == b'+' {
            *b = b' ';
        }
    }
    if words {
        dictionary_spans(&profile.dictionary, buf, &mut 0, spans);
    }
    run_detectors(profile, buf, run, spans);
}

/// Where the first `+` of `text` after its first byte is ([`plus_as_space`]).
#[inline]
fn plus_after_first(text: &[u8]) -> Option<usize> {
    memchr::memchr(b'+', text.get(1..)?).map(|at| at + 1)
}

/// Runs the detectors of the bit set `run` on `text`, adding their spans.
fn run_detectors(profile: &Profile, text: &[u8], mut run: u32, spans: &mut Vec<Span>) {
    while run != 0 {
        let index = run.trailing_zeros() as usize;
        run &= run - 1;
        let kind = DetectorKind::ALL[index];
        let Some(style) = profile.detectors[index] else { continue };
        if !kind.may_match(text) {
            continue;
        }
        let kinds = RuleKind::Detector(kind).bit();
        kind.find(text, &mut |start, end| spans.push(Span { start, end, style, kinds }));
    }
}

/// Where the first escape ([`escape_at`]) of `text` is.
#[inline]
pub(crate) fn first_escape(text: &[u8]) -> Option<usize> {
    memchr::memchr2_iter(b'%', b'\\', text).find(|&at| escape_at(text, at).is_some())
}

/// An escape ([`escape_at`]): the UTF-8 bytes it stands for (the first `len` of `bytes`) and
/// how many bytes of the text it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Escape {
    bytes: [u8; 4],
    len: u8,
    pub(crate) taken: u8,
}

impl Escape {
    /// The bytes it stands for.
    pub(crate) fn decoded(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The escape at `at` in `text`, if one starts there. A percent escape is `%` and two hex
/// digits, one byte. A backslash escape is JSON's: `\n` `\t` `\r` `\b` `\f` `\/` `\\` `\"`,
/// or `\u` and four hex digits (a surrogate pair as the character it makes, a lone surrogate
/// as U+FFFD).
fn escape_at(text: &[u8], at: usize) -> Option<Escape> {
    match text.get(at..at + 3) {
        Some(&[b'%', high, low]) => Some(one_byte(hex_value(high)? << 4 | hex_value(low)?, 3)),
        _ => backslash_escape(text, at),
    }
}

fn one_byte(byte: u8, taken: u8) -> Escape {
    Escape { bytes: [byte, 0, 0, 0], len: 1, taken }
}

/// The JSON escape at `at` in `text`, if one starts there (what a JSON string's decoder reads,
/// `json::decode_string`, and the detectors' decoded views).
pub(crate) fn backslash_escape(text: &[u8], at: usize) -> Option<Escape> {
    let one = |byte: u8, taken: u8| Some(one_byte(byte, taken));
    match *text.get(at..at + 2)? {
        [b'\\', kind] => match kind {
            b'n' => one(b'\n', 2),
            b't' => one(b'\t', 2),
            b'r' => one(b'\r', 2),
            b'b' => one(0x08, 2),
            b'f' => one(0x0C, 2),
            b'/' | b'\\' | b'"' => one(kind, 2),
            b'u' => {
                let unit = hex_unit(text, at + 2)?;
                let (c, taken) = match unit {
                    0xD800..=0xDBFF => {
                        match hex_unit(text, at + 8).filter(|_| text.get(at + 6..at + 8) == Some(&b"\\u"[..])) {
                            Some(low @ 0xDC00..=0xDFFF) => {
                                (char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)), 12)
                            }
                            _ => (None, 6),
                        }
                    }
                    _ => (char::from_u32(unit), 6),
                };
                let mut bytes = [0u8; 4];
                let len = c.unwrap_or(char::REPLACEMENT_CHARACTER).encode_utf8(&mut bytes).len() as u8;
                Some(Escape { bytes, len, taken })
            }
            _ => None,
        },
        _ => None,
    }
}

/// Four hex digits at `at` in `text`, as a UTF-16 code unit.
pub(crate) fn hex_unit(text: &[u8], at: usize) -> Option<u32> {
    text.get(at..at + 4)?.iter().try_fold(0u32, |unit, &b| Some(unit << 4 | u32::from(hex_value(b)?)))
}

/// The other forms of a value the detectors read, in buffers lent by the caller and reused
/// (nothing is allocated once they have grown): its decoded levels, each with `+` read as a
/// space ([`plus_as_space`]), and its text as masked ([`settle_spans`]).
///
/// Escapes hide what the detectors key on. URL-encoding: `q%3Dcard%3D4111…` glues the card to
/// a word (`3D`), `ada%40example.com` has no `@`, `123%2045%206789` no separator. JSON text (a
/// VARIANT, OBJECT or ARRAY value, or a document kept in a string column): `paid\n4111…`
/// glues the card to the `n` of the newline's escape, `\tAKIA…` a key to a `t`. So a value
/// holding an escape ([`escape_at`]) is also searched with each escape read as what it stands
/// for, and again while escapes remain, up to [`ESCAPE_LEVELS`] times (`%253D` reads as `%3D`,
/// then `=`; `+` stays `+`, as in an e-mail address). What is found at any level masks the
/// bytes of the value it came from, escapes whole. A backslash in a plain string is read as an
/// escape too (`C:\new\4111…`): it can only mask more.
#[derive(Debug, Default)]
pub(crate) struct Views {
    /// The value as masked, for [`settle_spans`].
    masked: Vec<u8>,
    /// A value or decoded level with `+` read as a space, for [`plus_as_space`].
    spaced: Vec<u8>,
    text: Vec<u8>,
    /// Where each decoded byte starts in the value, and one more entry: the value's length
    /// (32 bits: `Masker::mask` refuses bodies of 4 GiB or more).
    raw_of: Vec<u32>,
    /// The level before, while the next one is decoded from it.
    before: Vec<u8>,
    before_raw_of: Vec<u32>,
}

impl Views {
    /// Decodes the value `text`, whose first escape is at `first`.
    fn decode(&mut self, text: &[u8], first: usize) {
        // The value's own bytes start where they are.
        self.before_raw_of.clear();
        self.before_raw_of.extend(0..=text.len() as u32);
        decode_level(text, &self.before_raw_of, first, &mut self.text, &mut self.raw_of);
    }

    /// Decodes the decoded text once more, its first escape at `first`.
    fn decode_again(&mut self, first: usize) {
        std::mem::swap(&mut self.text, &mut self.before);
        std::mem::swap(&mut self.raw_of, &mut self.before_raw_of);
        decode_level(&self.before, &self.before_raw_of, first, &mut self.text, &mut self.raw_of);
    }
}

/// Decodes the escapes of `text` (the first at `first`) into `out`, with where each byte of
/// `out` starts in the value: `raw_of[i]` is where byte `i` of `text` does (one more entry, its
/// end). Every byte an escape stands for starts where the escape does.
fn decode_level(text: &[u8], raw_of: &[u32], first: usize, out: &mut Vec<u8>, out_raw_of: &mut Vec<u32>) {
    out.clear();
    out_raw_of.clear();
    out.extend_from_slice(&text[..first]);
    out_raw_of.extend_from_slice(&raw_of[..first]);
    let mut at = first;
    while at < text.len() {
        match escape_at(text, at) {
            Some(escape) => {
                out.extend_from_slice(escape.decoded());
                out_raw_of.extend(std::iter::repeat_n(raw_of[at], escape.decoded().len()));
                at += usize::from(escape.taken);
            }
            None => {
                out.push(text[at]);
                out_raw_of.push(raw_of[at]);
                at += 1;
            }
        }
    }
    out_raw_of.push(raw_of[text.len()]);
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Runs the detectors on a value of at most 64 bytes (`len`) whose 64-byte `window` (the value
/// and what follows it) can be read at once: its byte classes, sixteen bytes at a time, decide
/// which detectors can fire (the triggers of [`detect_spans`] and [`DetectorKind::may_match`]
/// in one pass). When `spans` (the dictionary's) is empty and exactly one detector can fire,
/// and it is the card detector on a value that is all digits or the e-mail detector on a value
/// with one `@`, its match (if any) is returned and `spans` left alone: those are found with bit
/// scans, so the usual value costs no loop over its bytes. Otherwise the matches are added to
/// `spans`. A value with a `%` or `\`, or with a `+` where a match may hold a space, takes
/// [`detect_spans`], which searches its decoded form (and with `+` as a space) too.
#[inline(always)]
pub(crate) fn detect_short(
    profile: &Profile,
    window: &[u8; 64],
    len: usize,
    anchored: u32,
    spans: &mut Vec<Span>,
    views: &mut Views,
) -> Option<Span> {
    debug_assert!(len <= 64);
    let valid = low_bits(len);
    let first_32: &[u8; 32] = window[..32].try_into().expect("32 bytes");
    let mut t = if len <= 32 { triggers(first_32) } else { triggers(window) };
    t.digit &= valid;
    t.at_or_escape &= valid;
    t.separator &= valid;
    // The digit detectors need eight digits or more (without a popcount instruction, as in
    // the x86_64 baseline, counting costs a dozen: count only when there can be enough).
    let digits = if len >= 11 { t.digit.count_ones() } else { 0 };
    // A `%` or `\` may hide what the detectors key on, and a `+` may stand for a space where a
    // match may hold one: such a value takes `detect_spans`, which reads it decoded and so too
    // (`Views`, `plus_as_space`). An e-mail address has one `@` and no `%` outside its local
    // part: one bit, usually.
    let (mut marks, mut escaped) = (t.at_or_escape, false);
    while marks != 0 && !escaped {
        escaped = window[marks.trailing_zeros() as usize] != b'@';
        marks &= marks - 1;
    }
    let plus = (digits >= 8 || anchored & SPACED != 0 || profile.dictionary.spaced)
        && t.digit != valid
        && plus_after_first(&window[..len]).is_some();
    if escaped || plus {
        let text = &window[..len];
        detect_spans(profile, text, stats(text), anchored, spans, views);
        return None;
    }
    let may = |on: bool, kind: DetectorKind| u32::from(on) << kind.index();
    let mut run = may(t.at_or_escape != 0, DetectorKind::Email) | anchored;
    if digits >= 8 {
        run |= may(digits >= 13 && len >= 13, DetectorKind::Card)
            | may(digits >= 9 && t.separator != 0, DetectorKind::Ssn)
            | may(
                // An IBAN starts with two letters: not in a value of digits and separators only
                // (a card number's), and looked for only when the detector is on.
                len >= 15
                    && (t.digit | t.separator) != valid
                    && profile.enabled_detectors & (1 << DetectorKind::Iban.index()) != 0
                    && DetectorKind::Iban.may_match(&window[..len]),
                DetectorKind::Iban,
            );
    }
    run &= profile.enabled_detectors;
    if run == 0 {
        return None;
    }
    if spans.is_empty() && run.is_power_of_two() {
        let index = run.trailing_zeros() as usize;
        let kind = DetectorKind::ALL[index];
        let found = match kind {
            // One run of digits: a card exactly when 13 to 19 digits pass Luhn.
            DetectorKind::Card if t.digit == valid => {
                Some(((13..=19).contains(&len) && luhn_digits(first_32, len)).then_some((0, len)))
            }
            DetectorKind::Email if t.at_or_escape.is_power_of_two() => {
                let classes = if len <= 32 { email_classes(first_32) } else { email_classes(window) };
                Some(email_around(len, t.at_or_escape.trailing_zeros() as usize, &classes))
            }
            _ => None,
        };
        if let Some(found) = found {
            let style = profile.detectors[index]?;
            let (start, end) = found?;
            return Some(Span { start, end, style, kinds: RuleKind::Detector(kind).bit() });
        }
    }
    let text = &window[..len];
    while run != 0 {
        let index = run.trailing_zeros() as usize;
        run &= run - 1;
        let kind = DetectorKind::ALL[index];
        let Some(style) = profile.detectors[index] else { continue };
        let kinds = RuleKind::Detector(kind).bit();
        kind.find(text, &mut |start, end| spans.push(Span { start, end, style, kinds }));
    }
    None
}

/// The detectors (bits by [`DetectorKind::index`]) whose triggers a value meets.
#[inline(always)]
fn triggered(text: &[u8], stats: Stats, anchored: u32) -> u32 {
    let mut bits = 0;
    for kind in DetectorKind::ALL {
        let hit = match kind.trigger() {
            Trigger::At => stats.at,
            Trigger::Digits { digits_min, len_min } => stats.digits >= digits_min && text.len() >= len_min as usize,
            Trigger::Anchor => anchored & (1 << kind.index()) != 0,
        };
        bits |= u32::from(hit) << kind.index();
    }
    bits
}

/// Handles one pattern found in a value: a word becomes a span, an anchor triggers its detector.
#[inline]
pub(crate) fn take_found(
    dictionary: &Dictionary,
    pattern: u32,
    start: usize,
    end: usize,
    anchored: &mut u32,
    spans: &mut Vec<Span>,
) {
    match dictionary.anchor_of(pattern) {
        Some(kind) => *anchored |= 1 << kind.index(),
        None => spans.push(Span { start, end, style: dictionary.style, kinds: RuleKind::Dictionary.bit() }),
    }
}

/// Handles a found pattern and the shorter patterns that match at the same place, keeping only
/// those that end by `limit` (a pattern may run past the value it starts in).
#[inline]
pub(crate) fn take_found_with_prefixes(
    dictionary: &Dictionary,
    found: Found,
    limit: usize,
    anchored: &mut u32,
    spans: &mut Vec<Span>,
) {
    if found.end <= limit {
        take_found(dictionary, found.pattern, found.start, found.end, anchored, spans);
    }
    for &prefix in dictionary.prefixes_of(found.pattern) {
        let end = found.start + dictionary.pattern_len(prefix);
        if end <= limit {
            take_found(dictionary, prefix, found.start, end, anchored, spans);
        }
    }
}

/// The spans to mask in free text an answer carries beside its rows: an error message, which
/// may quote the value that failed, or a column name, which a dynamic `PIVOT` makes of values
/// (`'ada@example.com'`). What the dictionary and the detectors find and, when the profile has
/// column rules (whose values could be anywhere in such text), what lies in quotes: single, the
/// way Snowflake quotes a value, or double, the way a JSON parser's or a UDF's error may.
/// Returns the dictionary's anchors, for [`settle_spans`].
pub(crate) fn free_text_spans(profile: &Profile, text: &[u8], spans: &mut Vec<Span>, views: &mut Views) -> u32 {
    spans.clear();
    let mut anchored = 0u32;
    dictionary_spans(&profile.dictionary, text, &mut anchored, spans);
    detect_spans(profile, text, stats(text), anchored, spans, views);
    if !profile.columns.is_empty() {
        // A value may hold quotes itself ("'Miles O'Brien'") beside apostrophes outside any
        // value ("Can't parse 'x' as date with format '…'"), so quotes cannot be paired: one
        // span runs from the first quote that can open one (no letter or digit before it) to
        // the last that can close one (none after it), or to the end when none does. Two
        // values are masked with what lies between them: more than needed, never less.
        let word =
            |at: Option<usize>| at.and_then(|i| text.get(i)).is_some_and(|&b| b.is_ascii_alphanumeric() || b >= 0x80);
        // Each kind of quote on its own: a pair of one kind does not close a value the other
        // opened (`Column "NOTES": Numeric value 'Miles O'Brien`).
        for quote in [b'\'', b'"'] {
            let Some(start) = memchr::memchr_iter(quote, text).find(|&i| !word(i.checked_sub(1))) else { continue };
            let last = memchr::memrchr_iter(quote, text).find(|&i| !word(Some(i + 1)));
            let end = last.filter(|&end| end > start).unwrap_or(text.len());
            if end > start + 1 {
                spans.push(Span { start: start + 1, end, style: Style::Full, kinds: RuleKind::Column.bit() });
            }
        }
    }
    anchored
}

/// Every dictionary match and anchor in `text` (a whole decoded value), overlapping ones included.
pub(crate) fn dictionary_spans(dictionary: &Dictionary, text: &[u8], anchored: &mut u32, spans: &mut Vec<Span>) {
    let mut from = 0;
    while let Some(found) = dictionary.find(text, from, text.len()) {
        take_found_with_prefixes(dictionary, found, text.len(), anchored, spans);
        from = found.start + 1;
    }
}

/// The dictionary searcher's position in a walk over many values in one haystack: the next
/// match (found on bytes not yet masked), searched up to `end` as soon as the one before is
/// taken, restarting one byte after each match so that overlapping matches are all seen. A
/// value with no match in it costs one compare.
pub(crate) struct MatchCursor {
    /// The next match; its start is `usize::MAX` when there is none left.
    next: Found,
    end: usize,
}

const NO_MATCH: Found = Found { start: usize::MAX, end: usize::MAX, pattern: 0 };

impl MatchCursor {
    pub(crate) fn new(dictionary: &Dictionary, haystack: &[u8], from: usize, end: usize) -> MatchCursor {
        let mut cursor = MatchCursor { next: NO_MATCH, end };
        cursor.search(dictionary, haystack, from);
        cursor
    }

    /// The first match at or after `from`.
    #[inline]
    fn search(&mut self, dictionary: &Dictionary, haystack: &[u8], from: usize) {
        self.next = dictionary.find(haystack, from, self.end).unwrap_or(NO_MATCH);
    }

    /// Drops matches that start before `at` (they lie in values not scanned here).
    #[inline]
    pub(crate) fn advance_to(&mut self, dictionary: &Dictionary, haystack: &[u8], at: usize) {
        if self.next.start < at {
            self.search(dictionary, haystack, at);
        }
    }

    /// Adds the spans and anchors of the value `haystack[start..end]`, relative to `start`.
    #[inline(always)]
    pub(crate) fn collect(
        &mut self,
        dictionary: &Dictionary,
        haystack: &[u8],
        start: usize,
        end: usize,
        anchored: &mut u32,
        spans: &mut Vec<Span>,
    ) {
        if self.next.start < end {
            self.collect_matches(dictionary, haystack, start, end, anchored, spans);
        }
    }

    #[inline(never)]
    fn collect_matches(
        &mut self,
        dictionary: &Dictionary,
        haystack: &[u8],
        start: usize,
        end: usize,
        anchored: &mut u32,
        spans: &mut Vec<Span>,
    ) {
        self.advance_to(dictionary, haystack, start);
        while self.next.start < end {
            let found = self.next;
            let relative = Found { start: found.start - start, end: found.end - start, pattern: found.pattern };
            take_found_with_prefixes(dictionary, relative, end - start, anchored, spans);
            self.search(dictionary, haystack, found.start + 1);
        }
    }
}

/// Masks spans of a value in place without changing its length (Arrow text, and JSON text
/// without escapes when no token shrinks it): `*` per byte, the last characters kept, or a
/// token padded with spaces (or `*` when it does not fit).
pub(crate) fn apply_spans_fixed_len(profile: &Profile, value: &mut [u8], spans: &[Span]) {
    for span in spans {
        let (start, end) = (span.start, span.end);
        match span.style {
            Style::Full | Style::TypeValid | Style::Null => fill(&mut value[start..end], b'*'),
            Style::KeepLast(keep) => {
                let from = keep_from(value, start, end, keep);
                fill(&mut value[start..from], b'*');
            }
            Style::Token(index) => {
                let token = profile.token(index);
                if token.len() <= end - start {
                    value[start..start + token.len()].copy_from_slice(token);
                    fill(&mut value[start + token.len()..end], b' ');
                } else {
                    fill(&mut value[start..end], b'*');
                }
            }
        }
    }
}

/// The decoded text a value would read as once its spans are masked (JSON semantics: tokens
/// exact), written into `out`, to check that masked JSON values stay JSON.
pub(crate) fn masked_preview(profile: &Profile, text: &[u8], spans: &[Span], out: &mut Vec<u8>) {
    out.clear();
    let mut at = 0;
    for span in spans {
        out.extend_from_slice(&text[at..span.start]);
        let part = &text[span.start..span.end];
        match span.style {
            Style::KeepLast(keep) => {
                let from = keep_from(text, span.start, span.end, keep);
                out.resize(out.len() + (from - span.start), b'*');
                out.extend_from_slice(&text[from..span.end]);
            }
            Style::Token(index) if profile.token(index).len() <= part.len() => {
                out.extend_from_slice(profile.token(index));
            }
            _ => out.resize(out.len() + part.len(), b'*'),
        }
        at = span.end;
    }
    out.extend_from_slice(&text[at..]);
}

/// A type-valid value written over `content` (decoded text of the value type), returning the
/// new length (never longer). Numbers, dates and times keep their shape with every digit zero
/// (`-12.50` → `000.00`; a TIMESTAMP_TZ keeps its offset); booleans become `0`; binary hex
/// becomes `0`s; JSON becomes the same kind of value, empty (`{}`, `[]`, else `null`; `0` when
/// too short); text becomes `*`s.
pub(crate) fn type_valid_text(value_type: ValueType, content: &mut [u8]) -> usize {
    let len = content.len();
    if len == 0 {
        return 0;
    }
    match value_type {
        ValueType::Text => {
            fill(content, b'*');
            len
        }
        ValueType::Json => {
            // The same kind of JSON value, empty: drivers parse it, and a structured OBJECT or
            // ARRAY must stay one (the Node driver reads an object's keys).
            let empty: &[u8] = match content.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') => b"{}",
                Some(b'[') => b"[]",
                _ => b"null",
            };
            if len >= empty.len() {
                content[..empty.len()].copy_from_slice(empty);
                empty.len()
            } else {
                content[0] = b'0';
                1
            }
        }
        ValueType::Boolean => {
            content[0] = b'0';
            1
        }
        ValueType::Binary => {
            fill(content, b'0');
            len
        }
        ValueType::TimestampTz => {
            let numeric_end = memchr::memchr(b' ', content).unwrap_or(len);
            zero_number_shape(&mut content[..numeric_end]);
            len
        }
        ValueType::Fixed { .. }
        | ValueType::Real
        | ValueType::Date
        | ValueType::Time
        | ValueType::Timestamp
        | ValueType::Interval => {
            zero_number_shape(content);
            len
        }
    }
}

/// Every byte other than `.`, `e`, `E` and `+` becomes `0`: `-1.5e-3` → `00.0e00`, `NaN` → `000`.
fn zero_number_shape(content: &mut [u8]) {
    for b in content {
        if !matches!(*b, b'.' | b'e' | b'E' | b'+') {
            *b = b'0';
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swar_classes_are_exact() {
        for byte in 0..=255u8 {
            let word = u64::from_le_bytes([b'x', byte, b'y', byte, 0x80, byte, b'"', byte]);
            let digits = digit_bytes(word);
            let expected = if byte.is_ascii_digit() { 4 } else { 0 };
            assert_eq!(digits.count_ones(), expected, "byte {byte:#x}");
            let upper = upper_bytes(word).count_ones();
            assert_eq!(upper, if byte.is_ascii_uppercase() { 4 } else { 0 }, "byte {byte:#x}");
            let letters = letter_bytes(word).count_ones();
            // `x` and `y` are letters too.
            assert_eq!(letters, if byte.is_ascii_alphabetic() { 6 } else { 2 }, "byte {byte:#x}");
            let at = eq_bytes(word, b'@').count_ones();
            assert_eq!(at, if byte == b'@' { 4 } else { 0 });
            let quotes = eq_bytes(word, b'"').count_ones();
            assert_eq!(quotes, if byte == b'"' { 5 } else { 1 });
        }
    }

    #[test]
    fn stats_count_digits_and_at() {
        assert_eq!(stats(b""), Stats { digits: 0, at: false });
        assert_eq!(stats(b"ada42@example.com"), Stats { digits: 2, at: true });
        assert_eq!(stats("4111 1111 1111 1111é".as_bytes()), Stats { digits: 16, at: false });
    }

    #[test]
    fn merges_overlaps_with_the_stronger_style() {
        let profile = crate::mask::rules::compile_profile("p", &Default::default()).unwrap();
        let span = |start, end, style| Span { start, end, style, kinds: 1 << start };
        let mut spans = vec![span(5, 9, Style::KeepLast(2)), span(0, 3, Style::Full), span(2, 6, Style::KeepLast(1))];
        merge_spans(&profile, &mut spans);
        assert_eq!(spans.len(), 1);
        assert_eq!((spans[0].start, spans[0].end, spans[0].style), (0, 9, Style::Full));
        assert_eq!(spans[0].kinds, 1 | 4 | 32);
        let mut apart = vec![span(4, 6, Style::Full), span(0, 4, Style::Full)];
        merge_spans(&profile, &mut apart);
        assert_eq!(apart.len(), 2);
    }

    #[test]
    fn fill_writes_exactly_its_bytes() {
        for n in 0..200 {
            let mut bytes = vec![b'x'; n + 8];
            fill(&mut bytes[4..4 + n], b'*');
            assert_eq!(&bytes[..4], b"xxxx");
            assert!(bytes[4..4 + n].iter().all(|&b| b == b'*'), "{n}");
            assert_eq!(&bytes[4 + n..], b"xxxx");
        }
    }

    #[test]
    fn keep_from_counts_characters_and_keeps_at_most_half() {
        let text = "abcdé".as_bytes();
        assert_eq!(keep_from(text, 0, text.len(), 1), 4);
        assert_eq!(keep_from(text, 0, text.len(), 2), 3);
        // Five characters: at most two stay in clear, whatever `keep` says.
        assert_eq!(keep_from(text, 0, text.len(), 3), 3);
        assert_eq!(keep_from(text, 0, text.len(), 10), 3);
        assert_eq!(keep_from(text, 2, text.len(), 10), 4);
        // An SSN under a `keep` as long as it, and a PIN as long as its `keep`: half masked.
        let ssn = b"123-45-6789";
        assert_eq!(keep_from(ssn, 0, ssn.len(), 11), 6);
        assert_eq!(keep_from(b"1234", 0, 4, 4), 2);
        assert_eq!(keep_from(b"7", 0, 1, 4), 1);
        // The ASCII shortcut and the character walk agree with a reference on characters.
        let text = "é4111é1111";
        for start in [0, 2, 3] {
            for keep in 0..12 {
                let chars: Vec<(usize, char)> = text[start..].char_indices().collect();
                let kept = keep.min(chars.len() / 2);
                let expected = chars.get(chars.len() - kept).map_or(text.len(), |&(at, _)| start + at);
                let got = keep_from(text.as_bytes(), start, text.len(), keep as u32);
                assert_eq!(got, expected, "start {start} keep {keep}");
            }
        }
    }

    #[test]
    fn type_valid_values_keep_their_shape() {
        let check = |vt, input: &str| {
            let mut bytes = input.as_bytes().to_vec();
            let len = type_valid_text(vt, &mut bytes);
            String::from_utf8(bytes[..len].to_vec()).unwrap()
        };
        assert_eq!(check(ValueType::Fixed { scale: 2 }, "-12.50"), "000.00");
        assert_eq!(check(ValueType::Real, "1.5e-3"), "0.0e00");
        assert_eq!(check(ValueType::Real, "NaN"), "000");
        assert_eq!(check(ValueType::Date, "18262"), "00000");
        assert_eq!(check(ValueType::Timestamp, "1700000000.123456789"), "0000000000.000000000");
        assert_eq!(check(ValueType::TimestampTz, "1700000000.000000000 1500"), "0000000000.000000000 1500");
        assert_eq!(check(ValueType::Boolean, "true"), "0");
        assert_eq!(check(ValueType::Binary, "DEADBEEF"), "00000000");
        assert_eq!(check(ValueType::Json, "{\"a\":1}"), "{}");
        assert_eq!(check(ValueType::Json, " [1, 2]"), "[]");
        assert_eq!(check(ValueType::Json, "\"text\""), "null");
        assert_eq!(check(ValueType::Json, "12"), "0");
        assert_eq!(check(ValueType::Text, "abc"), "***");
    }
}
