//! Content detectors: card numbers (Luhn), e-mail addresses, US SSNs, IBANs (mod 97), cloud and
//! SaaS keys, JWTs and PEM private keys, each finding byte spans in a decoded value. They only
//! read text; deciding when to run them (cheap triggers, anchors in the dictionary searcher) and
//! masking what they find is the callers' job.

use memchr::memmem;

use super::simd::EmailClasses;

/// A content detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DetectorKind {
    /// Card numbers: 13 to 19 digits, optionally grouped by single spaces or dashes, or by
    /// dots in groups of four, Luhn-valid.
    Card,
    /// E-mail addresses.
    Email,
    /// US social security numbers, `123-45-6789` or `123 45 6789`.
    Ssn,
    /// IBANs, compact or grouped by four, in either case, with a valid mod-97 check.
    Iban,
    /// AWS access key ids: `AKIA` or `ASIA` and 16 uppercase letters or digits.
    AwsAccessKey,
    /// Google Cloud API keys: `AIza` and 35 characters.
    GcpApiKey,
    /// GitHub tokens: `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` and 36 characters, or `github_pat_…`.
    GithubToken,
    /// Slack tokens: `xoxb-`, `xoxp-`, `xoxa-`, `xoxr-`, `xoxs-`, `xoxe-` and `xoxe.` (refresh
    /// and rotating tokens) or `xoxc-` and `xoxd-` (a browser session's), and at least 10
    /// characters.
    SlackToken,
    /// JSON Web Tokens: `eyJ…` header, payload and signature in base64url.
    Jwt,
    /// PEM private keys, from the BEGIN line to the END line (or the end of the value).
    PemPrivateKey,
}

/// How a detector is triggered on the fast paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The value holds an `@`.
    At,
    /// The value holds at least this many ASCII digits (and at least `len_min` bytes).
    Digits { digits_min: u32, len_min: u32 },
    /// One of the detector's anchors was found by the dictionary searcher.
    Anchor,
}

impl DetectorKind {
    /// Every detector, in report order.
    pub const ALL: [DetectorKind; 10] = [
        DetectorKind::Card,
        DetectorKind::Email,
        DetectorKind::Ssn,
        DetectorKind::Iban,
        DetectorKind::AwsAccessKey,
        DetectorKind::GcpApiKey,
        DetectorKind::GithubToken,
        DetectorKind::SlackToken,
        DetectorKind::Jwt,
        DetectorKind::PemPrivateKey,
    ];
    /// How many detectors there are.
    pub const COUNT: usize = DetectorKind::ALL.len();

    /// The detector's name in the policy file and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Card => "card",
            DetectorKind::Email => "email",
            DetectorKind::Ssn => "ssn",
            DetectorKind::Iban => "iban",
            DetectorKind::AwsAccessKey => "aws_access_key",
            DetectorKind::GcpApiKey => "gcp_api_key",
            DetectorKind::GithubToken => "github_token",
            DetectorKind::SlackToken => "slack_token",
            DetectorKind::Jwt => "jwt",
            DetectorKind::PemPrivateKey => "pem_private_key",
        }
    }

    /// The detector's position in [`DetectorKind::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Literal prefixes whose presence triggers the detector (searched with the dictionary).
    pub(crate) fn anchors(self) -> &'static [&'static str] {
        match self {
            DetectorKind::AwsAccessKey => &["AKIA", "ASIA"],
            DetectorKind::GcpApiKey => &["AIza"],
            DetectorKind::GithubToken => &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
            DetectorKind::SlackToken => &["xox"],
            DetectorKind::Jwt => &["eyJ"],
            DetectorKind::PemPrivateKey => &["-----BEGIN"],
            DetectorKind::Card | DetectorKind::Email | DetectorKind::Ssn | DetectorKind::Iban => &[],
        }
    }

    pub(crate) fn trigger(self) -> Trigger {
        match self {
            DetectorKind::Email => Trigger::At,
            DetectorKind::Card => Trigger::Digits { digits_min: 13, len_min: 13 },
            DetectorKind::Ssn => Trigger::Digits { digits_min: 9, len_min: 11 },
            DetectorKind::Iban => Trigger::Digits { digits_min: 8, len_min: 15 },
            _ => Trigger::Anchor,
        }
    }

    /// A cheap necessary condition for a match in `text`, checked before running a detector
    /// that its trigger let through: an SSN has a `-` or space separator, an IBAN starts with
    /// two letters. Eight bytes at a time; `true` when there is nothing to check.
    #[inline]
    pub(crate) fn may_match(self, text: &[u8]) -> bool {
        use super::text::{eq_bytes, letter_bytes, load_word};
        let any = |class: &dyn Fn(u64) -> u64| (0..text.len()).step_by(8).any(|at| class(load_word(text, at)) != 0);
        match self {
            // Bytes past the end load as zero: neither a separator nor a letter.
            DetectorKind::Ssn => any(&|w| eq_bytes(w, b'-') | eq_bytes(w, b' ')),
            DetectorKind::Iban => any(&letter_bytes),
            _ => true,
        }
    }

    /// Calls `found(start, end)` for every match in `text`, left to right within a detector
    /// (matches of different anchors, and cards grouped by dots, may come out of order).
    pub(crate) fn find(self, text: &[u8], found: &mut dyn FnMut(usize, usize)) {
        match self {
            DetectorKind::Card => find_cards(text, found),
            DetectorKind::Email => find_emails(text, found),
            DetectorKind::Ssn => find_ssns(text, found),
            DetectorKind::Iban => find_ibans(text, found),
            DetectorKind::AwsAccessKey => find_prefixed(
                text,
                &["AKIA", "ASIA"],
                |b| b.is_ascii_uppercase() || b.is_ascii_digit(),
                16,
                Some(16),
                found,
            ),
            DetectorKind::GcpApiKey => find_prefixed(text, &["AIza"], is_url_safe, 35, Some(35), found),
            DetectorKind::GithubToken => {
                find_prefixed(
                    text,
                    &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
                    |b| b.is_ascii_alphanumeric(),
                    36,
                    Some(36),
                    found,
                );
                find_prefixed(text, &["github_pat_"], |b| b.is_ascii_alphanumeric() || b == b'_', 22, None, found);
            }
            // A browser session's `xoxd-` token is URL-encoded base64 (`%2F`, `%2B`): its
            // escapes are part of it.
            DetectorKind::SlackToken => find_prefixed(
                text,
                &["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe-", "xoxe.", "xoxc-", "xoxd-"],
                |b| b.is_ascii_alphanumeric() || b == b'-' || b == b'%',
                10,
                None,
                found,
            ),
            DetectorKind::Jwt => find_jwts(text, found),
            DetectorKind::PemPrivateKey => find_pem_keys(text, found),
        }
    }
}

const DIGIT: u8 = 1;
const UPPER: u8 = 2;
const LOWER: u8 = 4;
const ALNUM: u8 = DIGIT | UPPER | LOWER;
/// `.` `_` `%` `+` `-` `'`: besides alphanumerics, in the local part of an e-mail address
/// (`o'brien@…`; leading dots and apostrophes are not part of it, see [`find_emails`]); and
/// the UTF-8 bytes of two-byte characters, `0x80..=0xDF` (leads and continuations): Latin
/// letters with diacritics, Greek, Cyrillic... are e-mail characters (`josé@example.com`,
/// `ada@bücher.de`). Characters of three bytes or more (CJK, most symbols) are not, so an
/// address in text without spaces around it (`連絡先ada@example.comまで`) is not taken for longer.
const EMAIL_LOCAL: u8 = 8;
/// `.` `-`: besides alphanumerics, in an e-mail domain; and the UTF-8 bytes of two-byte
/// characters, as in [`EMAIL_LOCAL`].
const EMAIL_DOMAIN: u8 = 16;
/// `_` `-`: besides alphanumerics, in base64url.
const URL_SAFE: u8 = 32;

/// Byte classes, one table lookup instead of a chain of comparisons in the detectors' loops.
static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = if c.is_ascii_digit() {
            DIGIT
        } else if c.is_ascii_uppercase() {
            UPPER
        } else if c.is_ascii_lowercase() {
            LOWER
        } else {
            match c {
                b'.' => EMAIL_LOCAL | EMAIL_DOMAIN,
                b'-' => EMAIL_LOCAL | EMAIL_DOMAIN | URL_SAFE,
                b'_' => EMAIL_LOCAL | URL_SAFE,
                b'%' | b'+' | b'\'' => EMAIL_LOCAL,
                0x80..=0xDF => EMAIL_LOCAL | EMAIL_DOMAIN,
                _ => 0,
            }
        };
        b += 1;
    }
    table
};

#[inline(always)]
fn has(b: u8, class: u8) -> bool {
    CLASS[usize::from(b)] & class != 0
}

fn is_url_safe(b: u8) -> bool {
    has(b, ALNUM | URL_SAFE)
}

/// A digit doubled as the Luhn check does (digits of the product summed).
const LUHN_DOUBLED: [u8; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];

/// Whether a Luhn check passes over the ASCII digits of `text` (other bytes are skipped).
/// One running sum in a register: the doubled digit comes from a table, picked without a branch.
pub(crate) fn luhn_valid(text: &[u8]) -> bool {
    let (mut sum, mut digits) = (0u32, 0u32);
    for &b in text.iter().rev() {
        let d = b.wrapping_sub(b'0');
        if d < 10 {
            let value = if digits & 1 == 1 { LUHN_DOUBLED[usize::from(d)] } else { d };
            sum += u32::from(value);
            digits += 1;
        }
    }
    digits > 0 && sum.is_multiple_of(10)
}

/// Card numbers: a run of digit groups separated by single spaces or dashes, bounded by
/// non-alphanumerics, with 13 to 19 digits in all and a valid Luhn check. When the whole run is
/// not a card (a longer number, or a card next to other numbers), consecutive groups are tried.
/// Cards grouped by dots are found apart ([`find_dotted_cards`]): a dot also ends decimals.
fn find_cards(text: &[u8], found: &mut dyn FnMut(usize, usize)) {
    let n = text.len();
    // A value that is one run of digits (a card column's usual value) is a card exactly when
    // it has 13 to 19 digits and passes Luhn: eight digits at a time.
    if let Some(luhn) = all_digits_luhn(text) {
        if (13..=19).contains(&n) && luhn {
            found(0, n);
        }
        return;
    }
    let mut i = 0;
    while i < n {
        if !has(text[i], DIGIT) {
            i += 1;
            continue;
        }
        let preceded_by_word = i > 0 && has(text[i - 1], ALNUM);
        // The run: digit groups joined by single spaces or dashes. Its Luhn sums are taken on
        // the way, by digit position parity, plain and doubled: which parity is doubled depends
        // on the digit count, known at the end.
        let (mut j, mut digits, mut groups) = (i, 0usize, 0usize);
        let (mut plain, mut doubled) = ([0u32; 2], [0u32; 2]);
        loop {
            while j < n && has(text[j], DIGIT) {
                let d = usize::from(text[j] - b'0');
                let (p, q) = (u32::from(d as u8), u32::from(LUHN_DOUBLED[d]));
                if digits & 1 == 0 {
                    plain[0] += p;
                    doubled[0] += q;
                } else {
                    plain[1] += p;
                    doubled[1] += q;
                }
                j += 1;
                digits += 1;
            }
            groups += 1;
            if j + 1 < n && (text[j] == b' ' || text[j] == b'-') && has(text[j + 1], DIGIT) {
                j += 1;
                continue;
            }
            break;
        }
        let followed_by_word = j < n && has(text[j], ALNUM);
        // The common case: the whole run is the card.
        // The last digit (parity of digits - 1) is not doubled, the one before it is, and so on.
        let last = (digits + 1) & 1;
        let luhn = digits > 0 && (plain[last] + doubled[1 - last]).is_multiple_of(10);
        // What a card's span takes is skipped: its digits are masked already, and scanning the
        // groups joined to it once per card would be quadratic on a value of many cards.
        let mut reach = j;
        if !preceded_by_word && !followed_by_word && (13..=19).contains(&digits) && luhn {
            reach = digits_after(text, j);
            found(i, reach);
        } else if groups > 1 {
            reach = cards_in_groups(text, i, j, preceded_by_word, followed_by_word, found).unwrap_or(j);
        }
        i = reach.max(i + 1);
    }
    if memchr::memchr(b'.', text).is_some() {
        find_dotted_cards(text, found);
    }
}

/// Card numbers grouped by dots, `4111.1111.1111.1111`: in a run of digit groups joined by
/// single dots, consecutive groups of four and a last one of one to four, 13 to 19 digits in
/// all, Luhn-valid; leftmost first, longest first, as [`cards_in_groups`] does (a group glued
/// to a word cannot start or end one). Stricter than the space and dash grouping, because dots
/// also write decimals and thousands (`1700000000.000000000`, `1.000.000.000.000.000` are not
/// cards). What is found is one span, from the card to the end of the groups joined to it.
fn find_dotted_cards(text: &[u8], found: &mut dyn FnMut(usize, usize)) {
    let n = text.len();
    let digit_at = |i: usize| i < n && has(text[i], DIGIT);
    // The group starting at `at`, when it is one (five digits or more are never read whole).
    let short_group = |at: usize| {
        let mut end = at;
        while end < at + 5 && digit_at(end) {
            end += 1;
        }
        end
    };
    let joined = |end: usize| end + 1 < n && text[end] == b'.' && digit_at(end + 1);
    // The card whose first group starts at `from`: where it ends.
    let card_from = |from: usize| {
        let (mut at, mut digits) = (from, 0);
        for _ in 0..5 {
            let end = short_group(at);
            let len = end - at;
            digits += len;
            if len > 4 || digits > 19 {
                return None;
            }
            let bounded = end == n || !has(text[end], ALNUM);
            if digits >= 13 && bounded && luhn_valid(&text[from..end]) {
                return Some(end);
            }
            if len != 4 || !joined(end) {
                return None;
            }
            at = end + 1;
        }
        None
    };
    let mut i = 0;
    while i < n {
        if !digit_at(i) {
            i += 1;
            continue;
        }
        let preceded_by_word = i > 0 && has(text[i - 1], ALNUM);
        let mut group = i;
        i = loop {
            if !(group == i && preceded_by_word)
                && let Some(end) = card_from(group)
            {
                let reach = digits_after(text, end);
                found(group, reach);
                break reach;
            }
            let mut end = group;
            while digit_at(end) {
                end += 1;
            }
            if !joined(end) {
                break end;
            }
            group = end + 1;
        };
    }
}

/// For text made only of ASCII digits (at most 24), whether its Luhn check passes; `None` for
/// anything else. SWAR: per eight digits, the doubled ones (every second from the right) are
/// doubled in their bytes, 9 is taken from those over 9, and the bytes are summed by a multiply.
fn all_digits_luhn(text: &[u8]) -> Option<bool> {
    use super::text::{digit_bytes, load_word};
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let n = text.len();
    if n == 0 || n > 24 {
        return None;
    }
    // Digit `i` (from the left) is doubled when `n - 1 - i` is odd: within a word, by the
    // parity of its byte, the same in every word.
    let doubled = if (n - 1).is_multiple_of(2) { 0xFF00_FF00_FF00_FF00u64 } else { 0x00FF_00FF_00FF_00FFu64 };
    let mut sum = 0u64;
    let mut at = 0;
    while at < n {
        let lanes = (n - at).min(8);
        let valid = if lanes == 8 { u64::MAX } else { (1u64 << (8 * lanes)) - 1 };
        let word = load_word(text, at);
        if digit_bytes(word) & valid & HIGHS != valid & HIGHS {
            return None;
        }
        let x = word.wrapping_sub(ONES * u64::from(b'0')) & valid;
        let y = x + (x & doubled);
        let over_nine = ((y + ONES * 0x76) & (ONES * 0x80)) >> 7;
        let y = y - over_nine * 9;
        sum += y.wrapping_mul(ONES) >> 56;
        at += 8;
    }
    Some(sum.is_multiple_of(10))
}

/// Where the digit groups that follow a card end (`end` itself when none do), joined to it and
/// each other by single dots, spaces or dashes: they are masked with it, so what a keep-last
/// style leaves visible (its last digits) can never join them into another card
/// (`…4111.1111.1111.1111`, `4111.1111.1111.1111-…`) that only a second pass would find.
fn digits_after(text: &[u8], mut end: usize) -> usize {
    while end + 1 < text.len() && matches!(text[end], b'.' | b' ' | b'-') && has(text[end + 1], DIGIT) {
        end += 1;
        while end < text.len() && has(text[end], DIGIT) {
            end += 1;
        }
    }
    end
}

/// Cards among consecutive groups of a run that is not a card as a whole: leftmost first,
/// longest first. A group glued to a word cannot start or end a card; groups after a
/// separator can. What is found is one span, from the first card's start to the run's end
/// (and the digits after it across dots): the digits after a card are masked with it, so
/// what a keep-last style leaves visible (its last digits) can never join the groups that
/// follow into another card, and masking a masked value finds nothing more. Returns where
/// the span it found ends.
fn cards_in_groups(
    text: &[u8],
    start: usize,
    end: usize,
    preceded_by_word: bool,
    followed_by_word: bool,
    found: &mut dyn FnMut(usize, usize),
) -> Option<usize> {
    // The groups are single separators apart, and a card spans at most 19 digits, so each
    // first group is tried with the few after it, however many groups the run has.
    let group_end = |mut at: usize| {
        while at < end && has(text[at], DIGIT) {
            at += 1;
        }
        at
    };
    let mut first = start;
    while first < end {
        let first_end = group_end(first);
        if !(first == start && preceded_by_word) {
            let (mut digits, mut last) = (0, first);
            loop {
                let last_end = group_end(last);
                digits += last_end - last;
                if digits > 19 {
                    break;
                }
                let bounded = last_end < end || !followed_by_word;
                if digits >= 13 && bounded && luhn_valid(&text[first..last_end]) {
                    let reach = digits_after(text, end);
                    found(first, reach);
                    return Some(reach);
                }
                if last_end >= end {
                    break;
                }
                last = last_end + 1;
            }
        }
        first = first_end + 1;
    }
    None
}

/// The first `@` at or after `from`: eight bytes at a time (values are short, a call to
/// memchr costs more than the search).
#[inline(always)]
fn next_at_sign(text: &[u8], from: usize) -> Option<usize> {
    use super::text::{eq_bytes, load_word};
    let mut at = from;
    while at < text.len() {
        // Bytes past the end load as zero: never `@`.
        let hits = eq_bytes(load_word(text, at), b'@');
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    None
}

/// E-mail addresses: a local part (not starting with a dot or an apostrophe, so a quoted
/// address `'ada@example.com'` leaves its quotes), `@`, and a dotted domain whose last label is
/// at least two ASCII letters, both with the characters of [`EMAIL_LOCAL`] and [`EMAIL_DOMAIN`]
/// (two-byte UTF-8 ones included): the longest such start of the run of domain characters after the `@`
/// (what follows it, `-2024` or `.1`, is not the address's). The local part is the whole run
/// of its characters before the `@`, however long (a longer one than the 64 characters of RFC
/// 5321 is masked whole, not cut). An address run into the one before it
/// (`ada@example.com.bob@example.org`: `bob` went to the first one's domain) is found from its
/// `@`, so its domain is masked too.
fn find_emails(text: &[u8], found: &mut dyn FnMut(usize, usize)) {
    let mut next_free = 0;
    let mut from = 0;
    while let Some(at) = next_at_sign(text, from) {
        from = at + 1;
        if at < next_free {
            continue;
        }
        let ceiling = text.len().min(at + 256);
        let mut run_end = at + 1;
        while run_end < ceiling && has(text[run_end], ALNUM | EMAIL_DOMAIN) {
            run_end += 1;
        }
        let domain = &text[at + 1..run_end];
        if domain.first().is_none_or(|&b| b == b'.' || b == b'-') {
            continue;
        }
        // The longest start of the run that is a domain: after its last dot, two letters or
        // more (`ada@example.com-2024`, `ada@example.com.1` are `ada@example.com`). The
        // letters after each dot, the last dot first: a later dot ends a longer domain.
        let tld_end = domain.iter().enumerate().rev().filter(|&(_, &b)| b == b'.').find_map(|(dot, _)| {
            let letters = domain[dot + 1..].iter().take_while(|&&b| has(b, UPPER | LOWER)).count();
            (letters >= 2).then_some(dot + 1 + letters)
        });
        let Some(tld_end) = tld_end else { continue };
        let end = at + 1 + tld_end;
        // The local part, back to the previous address: each byte is walked back over once.
        let mut start = at;
        while start > next_free && has(text[start - 1], ALNUM | EMAIL_LOCAL) {
            start -= 1;
        }
        // Nor from inside a character: the walk stops after a three-byte one's lead.
        while start < at && matches!(text[start], b'.' | b'\'' | 0x80..=0xBF) {
            start += 1;
        }
        if start == at && !(at > 0 && at == next_free) {
            continue;
        }
        found(start, end);
        next_free = end;
    }
}

/// Bits `0..n` set (all 64 when `n >= 64`).
#[inline(always)]
pub(crate) fn low_bits(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// The e-mail address around the only `@` (at `at`) of a value of at most 64 bytes, from the
/// value's byte classes: what [`find_emails`] finds there, with bit scans instead of byte
/// loops. The bounds of 64 bytes of local part and 256 of domain cannot bind in such a value.
#[inline(always)]
pub(crate) fn email_around(len: usize, at: usize, c: &EmailClasses) -> Option<(usize, usize)> {
    debug_assert!(len <= 64 && at < len);
    // The local part: the run of local bytes ending at the `@`, without leading dots and
    // apostrophes.
    let not_local = !c.local & low_bits(at);
    let mut start = if not_local == 0 { 0 } else { 64 - not_local.leading_zeros() as usize };
    start += ((c.not_first >> start).trailing_ones() as usize).min(at - start);
    if start == at {
        return None;
    }
    // The domain: in the run of domain bytes after it, not starting with a dot or dash, up to
    // the end of the letters after its last dot that has two or more.
    let after = !low_bits(at + 1);
    if at + 1 >= len {
        return None;
    }
    let run_end = ((!c.domain | !low_bits(len)) & after).trailing_zeros() as usize;
    if c.dot_dash >> (at + 1) & 1 == 1 {
        return None;
    }
    let mut dots = c.dot & low_bits(run_end) & after;
    while dots != 0 {
        let dot = 63 - dots.leading_zeros() as usize;
        // Bytes past the value are not letters, so the run stops there (and at the 64th).
        let letters = (c.letter & low_bits(len)).checked_shr(dot as u32 + 1).unwrap_or(0).trailing_ones() as usize;
        if letters >= 2 {
            return Some((start, dot + 1 + letters));
        }
        dots &= !(1u64 << dot);
    }
    None
}

/// US SSNs written `AAA-GG-SSSS` or `AAA GG SSSS`, with the area not 000, 666 or 9xx, the group
/// not 00 and the serial not 0000, bounded by non-alphanumerics.
fn find_ssns(text: &[u8], found: &mut dyn FnMut(usize, usize)) {
    let n = text.len();
    if n < 11 {
        return;
    }
    let digit = |i: usize| has(text[i], DIGIT);
    let mut i = 0;
    while i + 11 <= n {
        if !digit(i) || (i > 0 && (has(text[i - 1], ALNUM) || text[i - 1] == b'-')) {
            i += 1;
            continue;
        }
        let sep = text[i + 3];
        let shaped = (sep == b'-' || sep == b' ')
            && digit(i + 1)
            && digit(i + 2)
            && digit(i + 4)
            && digit(i + 5)
            && text[i + 6] == sep
            && (i + 7..i + 11).all(digit)
            && (i + 11 == n || !(has(text[i + 11], ALNUM) || text[i + 11] == b'-'));
        if shaped {
            let area = &text[i..i + 3];
            let valid = area != b"000"
                && area != b"666"
                && area[0] != b'9'
                && &text[i + 4..i + 6] != b"00"
                && &text[i + 7..i + 11] != b"0000";
            if valid {
                found(i, i + 11);
                i += 11;
                continue;
            }
        }
        i += 1;
    }
}

/// The mod-97 check of ISO 13616 over an IBAN's characters (letters of either case and digits).
pub(crate) fn iban_checksum_valid(chars: &[u8]) -> bool {
    if chars.len() < 15 || chars.len() > 34 {
        return false;
    }
    let mut remainder = 0u32;
    for &c in chars[4..].iter().chain(&chars[..4]) {
        remainder = match c {
            b'0'..=b'9' => (remainder * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' | b'a'..=b'z' => (remainder * 100 + u32::from((c & !0x20) - b'A') + 10) % 97,
            _ => return false,
        };
    }
    remainder == 1
}

/// IBANs: two letters, two digits, then letters and digits up to 34 in all (in either case:
/// a lower-case IBAN is the same account), compact or in groups of four separated by single spaces; the longest candidate with a
/// valid checksum wins.
fn find_ibans(text: &[u8], found: &mut dyn FnMut(usize, usize)) {
    let n = text.len();
    let is_body = |b: u8| b.is_ascii_alphanumeric();
    let mut i = 0;
    while i + 15 <= n {
        let head = text[i].is_ascii_alphabetic()
            && text[i + 1].is_ascii_alphabetic()
            && text[i + 2].is_ascii_digit()
            && text[i + 3].is_ascii_digit()
            && (i == 0 || !text[i - 1].is_ascii_alphanumeric());
        if !head {
            i += 1;
            continue;
        }
        // Gather up to 34 characters, remembering where each candidate length ends.
        let mut chars = [0u8; 34];
        let mut ends = [0usize; 35];
        let mut count = 0;
        let mut j = i;
        while j < n && count < 34 {
            if is_body(text[j]) {
                chars[count] = text[j];
                count += 1;
                j += 1;
                ends[count] = j;
            } else if text[j] == b' ' && count % 4 == 0 && j + 1 < n && is_body(text[j + 1]) {
                j += 1;
            } else {
                break;
            }
        }
        let mut matched = None;
        for len in (15..=count).rev() {
            let end = ends[len];
            let bounded = end == n || !text[end].is_ascii_alphanumeric();
            // Every IBAN has at least eight digits: the fast paths rely on it to skip values.
            let digits = chars[..len].iter().filter(|c| c.is_ascii_digit()).count();
            if bounded && digits >= 8 && iban_checksum_valid(&chars[..len]) {
                matched = Some(end);
                break;
            }
        }
        if let Some(end) = matched {
            found(i, end);
        }
        // On, not past the match: a start passes mod-97 by chance about once in thirty over
        // the lengths its groups allow, and a real IBAN may start inside such a match and end
        // after it (`ID09 DE89 3704 …`). Overlapping spans are merged by the masker; inside a
        // compact IBAN no position is a start (each follows a letter or digit).
        i += 1;
    }
}

/// Tokens made of a literal prefix and `tail_min..=tail_max` characters of a class (any number
/// from `tail_min` when `tail_max` is `None`: a token of a variable length is masked whole, however
/// long its run), not preceded by an alphanumeric (`aws_key_AKIA…` is found, `xAKIA…` is not)
/// and not followed by another character of the class. Linear: a prefix whose tail would start
/// inside the match before is not looked at again (its tail would end where that match does;
/// the tail of `xoxe.` found at a match's end starts past it, and is read).
fn find_prefixed(
    text: &[u8],
    prefixes: &[&str],
    is_tail: fn(u8) -> bool,
    tail_min: usize,
    tail_max: Option<usize>,
    found: &mut dyn FnMut(usize, usize),
) {
    for prefix in prefixes {
        let prefix = prefix.as_bytes();
        let mut next_free = 0;
        for start in memmem::find_iter(text, prefix) {
            let tail_start = start + prefix.len();
            if tail_start <= next_free || (start > 0 && text[start - 1].is_ascii_alphanumeric()) {
                continue;
            }
            let tail = &text[tail_start..];
            let tail_len =
                tail.iter().take(tail_max.map_or(usize::MAX, |max| max + 1)).take_while(|&&b| is_tail(b)).count();
            if tail_len >= tail_min && tail_max.is_none_or(|max| tail_len <= max) {
                found(start, tail_start + tail_len);
                next_free = tail_start + tail_len;
            }
        }
    }
}

/// JWTs: `eyJ` and a base64url header of at least 10 characters, a payload of at least 2, and
/// a signature that may be empty (unsigned tokens), separated by dots, and any more segments
/// joined by dots (a JWE's five, or tokens run together); not preceded by an alphanumeric
/// (`jwt_eyJ…` and `token-eyJ…` are found).
fn find_jwts(text: &[u8], found: &mut dyn FnMut(usize, usize)) {
    let segment = |from: usize| text[from..].iter().take_while(|&&b| is_url_safe(b)).count();
    let mut next_free = 0;
    for start in memmem::find_iter(text, b"eyJ") {
        if start < next_free || (start > 0 && text[start - 1].is_ascii_alphanumeric()) {
            continue;
        }
        let header = segment(start);
        let dot1 = start + header;
        if header < 10 || text.get(dot1) != Some(&b'.') {
            continue;
        }
        let payload = segment(dot1 + 1);
        let dot2 = dot1 + 1 + payload;
        if payload < 2 || text.get(dot2) != Some(&b'.') {
            continue;
        }
        let mut end = dot2 + 1 + segment(dot2 + 1);
        while text.get(end) == Some(&b'.') && segment(end + 1) > 0 {
            end += 1 + segment(end + 1);
        }
        found(start, end);
        next_free = end;
    }
}

/// PEM private keys: from `-----BEGIN … PRIVATE KEY-----` (or an OpenPGP armored `-----BEGIN
/// PGP PRIVATE KEY BLOCK-----`) to the end of the matching END line, or to the end of the value
/// when the END line is missing (a truncated key is still a secret).
fn find_pem_keys(text: &[u8], found: &mut dyn FnMut(usize, usize)) {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const KEY_LINE_ENDS: [&[u8]; 2] = [b"PRIVATE KEY-----", b"PRIVATE KEY BLOCK-----"];
    let mut from = 0;
    while let Some(offset) = memmem::find(&text[from..], BEGIN) {
        let start = from + offset;
        let label_window = &text[start + BEGIN.len()..text.len().min(start + BEGIN.len() + 48)];
        let Some((label_end, line_end)) = KEY_LINE_ENDS
            .iter()
            .find_map(|line_end| memmem::find(label_window, line_end).map(|at| (at, line_end.len())))
        else {
            from = start + BEGIN.len();
            continue;
        };
        let after_begin = start + BEGIN.len() + label_end + line_end;
        let end = match memmem::find(&text[after_begin..], b"-----END ") {
            Some(end_offset) => {
                let end_line = after_begin + end_offset + 9;
                match memmem::find(&text[end_line..], b"-----") {
                    Some(close) => end_line + close + 5,
                    None => text.len(),
                }
            }
            None => text.len(),
        };
        found(start, end);
        from = end;
        if from >= text.len() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(kind: DetectorKind, text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        kind.find(text.as_bytes(), &mut |s, e| out.push((s, e)));
        out.sort();
        out.into_iter().map(|(s, e)| &text[s..e]).collect()
    }

    #[test]
    fn cards() {
        use DetectorKind::Card;
        assert_eq!(spans(Card, "4111111111111111"), ["4111111111111111"]);
        assert_eq!(spans(Card, "pay 4111 1111 1111 1111 now"), ["4111 1111 1111 1111"]);
        assert_eq!(spans(Card, "4111-1111-1111-1111"), ["4111-1111-1111-1111"]);
        assert_eq!(spans(Card, "378282246310005 and 5555555555554444"), ["378282246310005", "5555555555554444"]);
        assert!(spans(Card, "4111111111111112").is_empty(), "Luhn");
        assert!(spans(Card, "41111111111111110000").is_empty(), "20 digits");
        assert!(spans(Card, "x4111111111111111").is_empty(), "glued to a word");
        assert!(spans(Card, "1700000000.000000000").is_empty());
        // A card followed by another group, or after a group glued to a word, is still found.
        // The digits after it go with it (see `cards_in_groups`).
        assert_eq!(spans(Card, "4111 1111 1111 1111 12"), ["4111 1111 1111 1111 12"]);
        assert_eq!(spans(Card, "12 4111 1111 1111 1111 34"), ["4111 1111 1111 1111 34"]);
        assert_eq!(spans(Card, "DE89370400440532013000 4532015112830366"), ["4532015112830366"]);
        assert!(spans(Card, "4111111111111111x").is_empty());
        // Grouped by dots: fours and a last group of one to four.
        assert_eq!(spans(Card, "card 4111.1111.1111.1111."), ["4111.1111.1111.1111"]);
        assert_eq!(spans(Card, "(4532.0151.1283.0366)"), ["4532.0151.1283.0366"]);
        assert_eq!(spans(Card, "3782.8224.6310.005"), ["3782.8224.6310.005"]);
        // Next to other groups, as a card grouped by spaces is: the groups after it go with it.
        assert_eq!(spans(Card, "1.4111.1111.1111.1111"), ["4111.1111.1111.1111"]);
        assert_eq!(spans(Card, "4111.1111.1111.1111.25"), ["4111.1111.1111.1111.25"]);
        assert_eq!(spans(Card, "4111.1111.1111.1111.12345"), ["4111.1111.1111.1111.12345"]);
        assert_eq!(spans(Card, "x1.4111.1111.1111.1111"), ["4111.1111.1111.1111"]);
        // After another detector's match, whose mask would otherwise free it on a second pass.
        assert_eq!(spans(Card, "123-45-6789.4111.1111.1111.1111"), ["6789.4111.1111.1111.1111"]);
        assert_eq!(spans(Card, "DE89370400440532013000.4111.1111.1111.1111"), ["4111.1111.1111.1111"]);
        assert!(spans(Card, "4111.1111.1111.1112").is_empty(), "Luhn");
        assert!(spans(Card, "4111.111111111111").is_empty(), "a decimal");
        assert!(spans(Card, "1.000.000.000.000.000").is_empty(), "thousands");
        assert!(spans(Card, "4111.1111.1111.1111x").is_empty());
        // Digits after a card across dots are masked with it: a kept tail could otherwise
        // start a dotted card the next pass finds.
        assert_eq!(spans(Card, "4111111111111111.00"), ["4111111111111111.00"]);
        assert_eq!(spans(Card, "5784000000094111.1111.1111.1111"), ["5784000000094111.1111.1111.1111"]);
    }

    #[test]
    fn many_joined_cards_are_one_span_found_once() {
        // Each card's span takes the groups joined after it; the search goes on after them, so a
        // value of many joined cards is read once, not once per card.
        for joiner in [".", " ", "-"] {
            let text = format!("4111111111111111{joiner}").repeat(20_000);
            let mut found = Vec::new();
            DetectorKind::Card.find(text.as_bytes(), &mut |s, e| found.push((s, e)));
            assert_eq!(found, [(0, text.len() - 1)], "joined by {joiner:?}");
        }
        let text = "4111.1111.1111.1111 ".repeat(20_000);
        let mut found = Vec::new();
        DetectorKind::Card.find(text.as_bytes(), &mut |s, e| found.push((s, e)));
        assert_eq!(found, [(0, text.len() - 1)]);
    }

    #[test]
    fn emails() {
        use DetectorKind::Email;
        assert_eq!(spans(Email, "ada.lovelace42@example.com"), ["ada.lovelace42@example.com"]);
        assert_eq!(spans(Email, "mail <a+b@mail.example.net>."), ["a+b@mail.example.net"]);
        assert_eq!(spans(Email, "x@y.io, z@w.org"), ["x@y.io", "z@w.org"]);
        assert!(spans(Email, "@handle").is_empty());
        assert!(spans(Email, "user@localhost").is_empty());
        assert!(spans(Email, "a@b.c1").is_empty());
        // An apostrophe inside the local part belongs to it; quotes around an address do not.
        assert_eq!(spans(Email, "o'brien@example.com"), ["o'brien@example.com"]);
        assert_eq!(spans(Email, "value 'ada@example.com' is"), ["ada@example.com"]);
        assert_eq!(spans(Email, "it's x@y.io"), ["x@y.io"]);
        // What follows the address in the same run of domain characters is not its own: the
        // address is still found (these were missed whole).
        assert_eq!(spans(Email, "ada@example.com-2024"), ["ada@example.com"]);
        assert_eq!(spans(Email, "mail ada@example.com.1 sent"), ["ada@example.com"]);
        assert_eq!(spans(Email, "ada@example.com.I"), ["ada@example.com"]);
        assert_eq!(spans(Email, "ada@mail.example.co.uk-x"), ["ada@mail.example.co.uk"]);
        assert!(spans(Email, "ada@example.c0m").is_empty());
        assert!(spans(Email, "ada@-example.com").is_empty());
        // A local part over 64 characters is masked whole (its first characters were left).
        let long = format!("{}@example.com", "ada.lovelace".repeat(10));
        assert_eq!(spans(Email, &format!("to: {long}")), [long.as_str()]);
        // Two addresses run together: the second one's domain is masked too.
        let run = "ada@example.com.bob@example.org";
        assert_eq!(spans(Email, run), ["ada@example.com.bob", "@example.org"]);
        assert!(spans(Email, "@example.org").is_empty());
        assert!(spans(Email, "x @example.org").is_empty());
        // Letters beyond ASCII (two-byte UTF-8 characters) are part of an address; CJK text
        // glued to one is not (these were missed whole, or left the domain out).
        assert_eq!(spans(Email, "to josé@example.com"), ["josé@example.com"]);
        assert_eq!(spans(Email, "ada@bücher.de."), ["ada@bücher.de"]);
        assert_eq!(spans(Email, "Ελένη@example.gr"), ["Ελένη@example.gr"]);
        assert_eq!(spans(Email, "連絡先ada@example.comまで"), ["ada@example.com"]);
        assert_eq!(spans(Email, "ada@example.comé"), ["ada@example.com"]);
    }

    #[test]
    fn ssns() {
        use DetectorKind::Ssn;
        assert_eq!(spans(Ssn, "123-45-6789"), ["123-45-6789"]);
        assert_eq!(spans(Ssn, "ssn 123 45 6789."), ["123 45 6789"]);
        assert!(spans(Ssn, "000-45-6789").is_empty());
        assert!(spans(Ssn, "666-45-6789").is_empty());
        assert!(spans(Ssn, "923-45-6789").is_empty());
        assert!(spans(Ssn, "123-00-6789").is_empty());
        assert!(spans(Ssn, "123-45-0000").is_empty());
        assert!(spans(Ssn, "123-45 6789").is_empty());
        assert!(spans(Ssn, "1123-45-6789").is_empty());
        assert!(spans(Ssn, "555-123-45-6789").is_empty());
    }

    #[test]
    fn ibans() {
        use DetectorKind::Iban;
        assert_eq!(spans(Iban, "DE89370400440532013000"), ["DE89370400440532013000"]);
        assert_eq!(spans(Iban, "iban: DE89 3704 0044 0532 0130 00 paid"), ["DE89 3704 0044 0532 0130 00"]);
        assert_eq!(spans(Iban, "GB82WEST12345698765432"), ["GB82WEST12345698765432"]);
        assert_eq!(spans(Iban, "NO9386011117947"), ["NO9386011117947"]);
        assert!(spans(Iban, "DE89370400440532013001").is_empty(), "checksum");
        assert!(spans(Iban, "XDE89370400440532013000").is_empty(), "glued");
        // Lower or mixed case is the same account.
        assert_eq!(spans(Iban, "de89370400440532013000"), ["de89370400440532013000"]);
        assert_eq!(spans(Iban, "gb82 west 1234 5698 7654 32"), ["gb82 west 1234 5698 7654 32"]);
        assert_eq!(spans(Iban, "Gb82West12345698765432"), ["Gb82West12345698765432"]);
        assert!(spans(Iban, "de89370400440532013001").is_empty(), "checksum");
    }

    /// Whether every byte of `inner` (found in `text`) is inside a span `kind` finds there.
    fn covered(kind: DetectorKind, text: &str, inner: &str) -> bool {
        let mut found = Vec::new();
        kind.find(text.as_bytes(), &mut |s, e| found.push((s, e)));
        memchr::memmem::find_iter(text.as_bytes(), inner.as_bytes())
            .all(|at| (at..at + inner.len()).all(|b| found.iter().any(|&(s, e)| s <= b && b < e)))
    }

    #[test]
    fn an_iban_after_a_chance_match_is_still_found() {
        // `ID09` and the groups after it pass mod-97 by chance (about one start in thirty
        // does, over the lengths the groups allow): the real IBAN, starting inside that
        // match, must be masked whole, not left in clear after where it ends.
        let text = "ID09 DE89 3704 0044 0532 0130 00";
        assert!(covered(DetectorKind::Iban, text, "DE89 3704 0044 0532 0130 00"), "{text}");
        let two = "BE68 5390 0754 7034 BE09 7474 7835 8557";
        for iban in ["BE68 5390 0754 7034", "BE09 7474 7835 8557"] {
            assert!(covered(DetectorKind::Iban, two, iban), "{iban} in {two}");
        }
    }

    #[test]
    fn keys_and_tokens() {
        assert_eq!(spans(DetectorKind::AwsAccessKey, "key=AKIAIOSFODNN7EXAMPLE;"), ["AKIAIOSFODNN7EXAMPLE"]);
        assert_eq!(spans(DetectorKind::AwsAccessKey, "ASIAY34FZKBOKMUTVV7A"), ["ASIAY34FZKBOKMUTVV7A"]);
        assert!(spans(DetectorKind::AwsAccessKey, "AKIAIOSFODNN7EXAMPLEX").is_empty(), "too long");
        assert!(spans(DetectorKind::AwsAccessKey, "xAKIAIOSFODNN7EXAMPLE").is_empty());
        // A `_` or `-` before a token is a separator, as in a variable name.
        assert_eq!(spans(DetectorKind::AwsAccessKey, "aws_key_AKIAIOSFODNN7EXAMPLE"), ["AKIAIOSFODNN7EXAMPLE"]);
        assert_eq!(spans(DetectorKind::AwsAccessKey, "key-AKIAIOSFODNN7EXAMPLE"), ["AKIAIOSFODNN7EXAMPLE"]);
        let gcp = "AIzaSyA-1234567890abcdefghijklmnopqrstu";
        assert_eq!(spans(DetectorKind::GcpApiKey, gcp), [gcp]);
        let ghp = format!("ghp_{}", "a1B2".repeat(9));
        assert_eq!(spans(DetectorKind::GithubToken, &format!("t {ghp} x")), [ghp.as_str()]);
        assert_eq!(
            spans(DetectorKind::SlackToken, "xoxb-123456789012-abcdefABCDEF"),
            ["xoxb-123456789012-abcdefABCDEF"]
        );
        assert!(spans(DetectorKind::SlackToken, "xoxo").is_empty());
        // Refresh, rotating and browser-session tokens; a session's is URL-encoded.
        for token in [
            "xoxe-1-My0xLTEwMzk5NjM5NzI1OC0xMjM0NTY3ODkw",
            "xoxe.xoxp-1-Mi0yLTEwMzk5NjM5NzI1OC0xMjM0NTY3",
            "xoxc-1234567890-1234567890-abcdef",
            "xoxd-abc%2Fdef%2Bghijklmnop%3D",
        ] {
            // (`xoxe.xoxp-…` is also found from its `xoxp-`, inside the longer match.)
            assert!(spans(DetectorKind::SlackToken, &format!("token={token}&x=1")).contains(&token), "{token}");
        }
        // A token of a variable length is masked whole however long (one over 255 characters
        // was left whole in clear), and a run of prefixes is read once.
        let long = format!("xoxp-{}", "a1".repeat(200));
        assert_eq!(spans(DetectorKind::SlackToken, &long), [long.as_str()]);
        let pat = format!("github_pat_{}", "A_1".repeat(100));
        assert_eq!(spans(DetectorKind::GithubToken, &pat), [pat.as_str()]);
        let prefixes = "xoxb-".repeat(20_000);
        assert_eq!(spans(DetectorKind::SlackToken, &prefixes), [prefixes.as_str()]);
        // A prefix ending in a byte its tail cannot hold ends the match before it, and starts
        // its own (the second tail was skipped as inside the first match, and left in clear).
        let (first, second) = ("xoxe.abcdefghij-xoxe", "xoxe.SECRETSECRET12");
        assert_eq!(spans(DetectorKind::SlackToken, "xoxe.abcdefghij-xoxe.SECRETSECRET12"), [first, second]);
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
        assert_eq!(spans(DetectorKind::Jwt, &format!("Bearer {jwt}")), [jwt]);
        assert_eq!(spans(DetectorKind::Jwt, &format!("jwt_{jwt}")), [jwt]);
        assert_eq!(spans(DetectorKind::Jwt, &format!("token-{jwt}")), [jwt]);
        assert!(spans(DetectorKind::Jwt, &format!("x{jwt}")).is_empty());
        // More segments joined by dots are the token's (two tokens run together left the
        // second one's payload in clear); a sentence's full stop is not.
        let two = format!("{jwt}.{jwt}");
        assert_eq!(spans(DetectorKind::Jwt, &format!("x-{two}")), [two.as_str()]);
        assert_eq!(spans(DetectorKind::Jwt, &format!("{jwt}. Next")), [jwt]);
        assert!(spans(DetectorKind::Jwt, "eyJhbGciOiJ").is_empty());
    }

    #[test]
    fn pem_keys() {
        let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----";
        assert_eq!(spans(DetectorKind::PemPrivateKey, &format!("k: {key}\nmore")), [key]);
        let pgp = "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF\n-----END PGP PRIVATE KEY BLOCK-----";
        assert_eq!(spans(DetectorKind::PemPrivateKey, &format!("k: {pgp}\nmore")), [pgp]);
        let public = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINB\n-----END PGP PUBLIC KEY BLOCK-----";
        assert!(spans(DetectorKind::PemPrivateKey, public).is_empty());
        let truncated = "-----BEGIN PRIVATE KEY-----\nMIIEv";
        assert_eq!(spans(DetectorKind::PemPrivateKey, truncated), [truncated]);
        assert!(spans(DetectorKind::PemPrivateKey, "-----BEGIN CERTIFICATE-----\nMII").is_empty());
    }

    #[test]
    fn luhn_and_mod97() {
        assert!(luhn_valid(b"4539578763621486"));
        assert!(!luhn_valid(b"4539578763621487"));
        assert!(!luhn_valid(b""));
        assert!(iban_checksum_valid(b"GB82WEST12345698765432"));
        assert!(iban_checksum_valid(b"gb82west12345698765432"));
        assert!(!iban_checksum_valid(b"GB82WEST12345698765433"));
        assert!(!iban_checksum_valid(b"GB82WEST1234569876543_"));
    }

    /// The detectors as first written, before the fast paths: what the optimised ones must
    /// still find, compared on generated text below.
    mod reference {
        use super::super::{ALNUM, DIGIT, EMAIL_DOMAIN, EMAIL_LOCAL, LOWER, UPPER, has};

        pub(super) fn luhn_valid(text: &[u8]) -> bool {
            const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
            let mut sums = [0u32; 2];
            let mut digits = 0;
            for &b in text.iter().rev() {
                let d = b.wrapping_sub(b'0');
                if d < 10 {
                    sums[digits & 1] += if digits & 1 == 1 { DOUBLED[usize::from(d)] } else { u32::from(d) };
                    digits += 1;
                }
            }
            digits > 0 && (sums[0] + sums[1]).is_multiple_of(10)
        }

        pub(super) fn find_cards(text: &[u8], found: &mut dyn FnMut(usize, usize)) {
            let n = text.len();
            let mut i = 0;
            while i < n {
                if !has(text[i], DIGIT) {
                    i += 1;
                    continue;
                }
                let preceded_by_word = i > 0 && has(text[i - 1], ALNUM);
                // The run: digit groups joined by single spaces or dashes.
                let (mut j, mut digits, mut groups) = (i, 0usize, 0usize);
                loop {
                    while j < n && has(text[j], DIGIT) {
                        j += 1;
                        digits += 1;
                    }
                    groups += 1;
                    if j + 1 < n && (text[j] == b' ' || text[j] == b'-') && has(text[j + 1], DIGIT) {
                        j += 1;
                        continue;
                    }
                    break;
                }
                let followed_by_word = j < n && has(text[j], ALNUM);
                // The common case: the whole run is the card.
                // The digits joined after it go with it, and the search goes on after them.
                let mut reach = j;
                if !preceded_by_word && !followed_by_word && (13..=19).contains(&digits) && luhn_valid(&text[i..j]) {
                    reach = groups_after(text, j);
                    found(i, reach);
                } else if groups > 1 {
                    reach = grouped_cards(text, i, j, preceded_by_word, followed_by_word, found).unwrap_or(j);
                }
                i = reach.max(i + 1);
            }
            find_dotted_cards(text, found);
        }

        /// Cards among the groups of the run `text[i..j]` (digits joined by single spaces or
        /// dashes) that is not one as a whole: the leftmost window of consecutive groups of 13
        /// to 19 digits that passes Luhn, not starting at the run's first group when it is
        /// glued to a word before nor ending at its last when glued to one after; masked from
        /// its start to the end of the groups joined after the run. Where that ends.
        fn grouped_cards(
            text: &[u8],
            i: usize,
            j: usize,
            glued_before: bool,
            glued_after: bool,
            found: &mut dyn FnMut(usize, usize),
        ) -> Option<usize> {
            let mut groups = Vec::new();
            let mut at = i;
            for group in text[i..j].split(|b| !b.is_ascii_digit()) {
                groups.push((at, at + group.len()));
                at += group.len() + 1;
            }
            for first in usize::from(glued_before)..groups.len() {
                for last in first..groups.len() {
                    let digits: usize = groups[first..=last].iter().map(|(s, e)| e - s).sum();
                    let bounded = last + 1 < groups.len() || !glued_after;
                    let (from, to) = (groups[first].0, groups[last].1);
                    if (13..=19).contains(&digits) && bounded && luhn_valid(&text[from..to]) {
                        let reach = groups_after(text, j);
                        found(from, reach);
                        return Some(reach);
                    }
                }
            }
            None
        }

        /// The end of the digit groups joined to `end` by single separators of any kind.
        fn groups_after(text: &[u8], mut end: usize) -> usize {
            let sep = |b: Option<&u8>| matches!(b, Some(b'.' | b' ' | b'-'));
            while sep(text.get(end)) && text.get(end + 1).is_some_and(u8::is_ascii_digit) {
                end += 1;
                while text.get(end).is_some_and(u8::is_ascii_digit) {
                    end += 1;
                }
            }
            end
        }

        /// Dotted cards by their shape: split the text into runs of digit groups joined by
        /// single dots; in each, the leftmost, then longest, window of consecutive groups that
        /// are fours but the last (one to four), 13 to 19 digits, Luhn-valid, not starting at a
        /// run glued to a word before nor ending at one glued after; masked to the end of
        /// the groups joined after it, where the search goes on.
        fn find_dotted_cards(text: &[u8], found: &mut dyn FnMut(usize, usize)) {
            let digit = |i: usize| i < text.len() && text[i].is_ascii_digit();
            let mut i = 0;
            'runs: while i < text.len() {
                if !digit(i) {
                    i += 1;
                    continue;
                }
                let mut j = i;
                while digit(j) || (text.get(j) == Some(&b'.') && digit(j - 1) && digit(j + 1)) {
                    j += 1;
                }
                let mut groups = Vec::new();
                let mut at = i;
                for group in text[i..j].split(|&b| b == b'.') {
                    groups.push((at, at + group.len()));
                    at += group.len() + 1;
                }
                let glued_before = i > 0 && text[i - 1].is_ascii_alphanumeric();
                let glued_after = j < text.len() && text[j].is_ascii_alphanumeric();
                for first in usize::from(glued_before)..groups.len() {
                    for last in first..groups.len() {
                        let window = &groups[first..=last];
                        let digits: usize = window.iter().map(|(s, e)| e - s).sum();
                        let shaped = window[..window.len() - 1].iter().all(|(s, e)| e - s == 4)
                            && (1..=4).contains(&(window[window.len() - 1].1 - window[window.len() - 1].0));
                        let bounded = last + 1 < groups.len() || !glued_after;
                        let (from, to) = (groups[first].0, groups[last].1);
                        if shaped && bounded && (13..=19).contains(&digits) && luhn_valid(&text[from..to]) {
                            let reach = groups_after(text, to);
                            found(from, reach);
                            i = reach;
                            continue 'runs;
                        }
                    }
                }
                i = j;
            }
        }

        pub(super) fn find_emails(text: &[u8], found: &mut dyn FnMut(usize, usize)) {
            let mut next_free = 0;
            let mut from = 0;
            while let Some(offset) = memchr::memchr(b'@', &text[from..]) {
                let at = from + offset;
                from = at + 1;
                if at < next_free {
                    continue;
                }
                let mut start = at;
                while start > next_free && has(text[start - 1], ALNUM | EMAIL_LOCAL) {
                    start -= 1;
                }
                while start < at
                    && (text[start] == b'.' || text[start] == b'\'' || (0x80..=0xBF).contains(&text[start]))
                {
                    start += 1;
                }
                // No local part of its own: an address only when run into the one before.
                let glued = at > 0 && at == next_free;
                if start == at && !glued {
                    continue;
                }
                let mut run_end = at + 1;
                while run_end < text.len() && run_end - at <= 255 && has(text[run_end], ALNUM | EMAIL_DOMAIN) {
                    run_end += 1;
                }
                // The longest domain the run starts with: a dot, and after the last one two
                // letters or more and nothing else.
                let is_domain = |domain: &[u8]| {
                    let Some(last_dot) = domain.iter().rposition(|&b| b == b'.') else { return false };
                    let tld = &domain[last_dot + 1..];
                    domain[0] != b'.'
                        && domain[0] != b'-'
                        && tld.len() >= 2
                        && tld.iter().all(|&b| has(b, UPPER | LOWER))
                };
                let Some(end) = (at + 2..=run_end).rev().find(|&end| is_domain(&text[at + 1..end])) else {
                    continue;
                };
                found(start, end);
                next_free = end;
            }
        }
    }

    /// Text made of pieces the detectors care about: digit runs, separators, `@`, dots, letters.
    fn detector_text() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            proptest::collection::vec(b'0'..=b'9', 1..20),
            proptest::sample::select(vec![
                b"@".to_vec(),
                b".".to_vec(),
                b"-".to_vec(),
                b" ".to_vec(),
                b"_".to_vec(),
                b"+".to_vec(),
                b"4111 1111 1111 1111".to_vec(),
                b"4532015112830366".to_vec(),
                b"ada.lovelace42@example.com".to_vec(),
                "josé".as_bytes().to_vec(),
                "bücher.de".as_bytes().to_vec(),
                "日本".as_bytes().to_vec(),
                vec![0xC3],
                b"x@y.io".to_vec(),
                b"a".repeat(70),
                b"123-45-6789".to_vec(),
                b"078 05 1120".to_vec(),
                b"DE89370400440532013000".to_vec(),
                b"DE89 3704 0044 0532 0130 00".to_vec(),
                b"GB82WEST12345698765432".to_vec(),
                b"gb82west12345698765432".to_vec(),
                b"4111.1111.1111.1111".to_vec(),
                b"3782.8224.6310.005".to_vec(),
                b"1111.".to_vec(),
                b"o'brien@example.com".to_vec(),
                b"'".to_vec(),
                "\u{e9}".as_bytes().to_vec(),
            ]),
            proptest::collection::vec(proptest::sample::select(b"abcXYZ.-@'".to_vec()), 1..12),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|parts| parts.concat())
    }

    /// Masks each card found as the keep-last style does (every digit but the last `keep`
    /// becomes `*`), the way the masker writes it.
    fn mask_cards(text: &[u8], keep: usize) -> Vec<u8> {
        let mut out = text.to_vec();
        find_cards(text, &mut |start, end| {
            let mut kept = 0;
            for b in out[start..end].iter_mut().rev() {
                if b.is_ascii_digit() {
                    if kept < keep {
                        kept += 1;
                    } else {
                        *b = b'*';
                    }
                }
            }
        });
        out
    }

    #[test]
    fn a_card_after_many_short_groups_is_found() {
        // A run of digit groups may be as long as the value: a card after its 24th group
        // must be found like one after its first.
        for sep in [" ", "-"] {
            for groups_before in [1, 23, 24, 25, 40, 200] {
                let text = format!("{}{sep}4111{sep}1111{sep}1111{sep}1111", vec!["7"; groups_before].join(sep));
                let mut spans = Vec::new();
                find_cards(text.as_bytes(), &mut |s, e| spans.push((s, e)));
                // Leftmost first: the card may start among the sevens (a window of them and
                // the card's first groups can pass Luhn too); either way it is all covered.
                let card = 2 * groups_before;
                assert!(
                    matches!(spans[..], [(start, end)] if start <= card && end == text.len()),
                    "{groups_before} groups before, {sep:?}: {spans:?}"
                );
            }
        }
    }

    #[test]
    fn a_kept_card_tail_does_not_start_another_card() {
        // Found by the `mask_json` fuzz target: the last group kept visible joined the
        // digits after it into a second card, which only a second pass found.
        let text = b"1441 4111 1111 1111 1111 11111714567890";
        let once = mask_cards(b"1441 4111 1111 1111 1111 1714567890", 4);
        assert_eq!(mask_cards(&once, 4), once);
        assert_eq!(mask_cards(text, 4), mask_cards(&mask_cards(text, 4), 4));
        // The same across dots and dashes, found by `masked_cards_are_not_found_again`.
        for text in [&b"5784000000094111.1111.1111.1111"[..], b"4111.1111.1111.1111.5784000000094111"] {
            for keep in 0..=4 {
                assert_eq!(mask_cards(text, keep), mask_cards(&mask_cards(text, keep), keep), "{keep}");
            }
        }
    }

    #[test]
    fn luhn_on_digit_runs_eight_at_a_time_equals_the_plain_one() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for n in 1..=24 {
            for _ in 0..2000 {
                let digits: Vec<u8> = (0..n)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        b'0' + (rng % 10) as u8
                    })
                    .collect();
                assert_eq!(
                    all_digits_luhn(&digits),
                    Some(luhn_valid(&digits)),
                    "{:?}",
                    String::from_utf8_lossy(&digits)
                );
            }
        }
        assert_eq!(all_digits_luhn(b""), None);
        assert_eq!(all_digits_luhn(b"4111111111111111"), Some(true));
        assert_eq!(all_digits_luhn(b"4111111111111112"), Some(false));
        assert_eq!(all_digits_luhn(b"4111 1111 1111 1111"), None);
        assert_eq!(all_digits_luhn(b"411111111111111a"), None);
        assert_eq!(all_digits_luhn(&[b'1'; 25]), None);
    }

    /// Long runs of short digit groups joined by spaces or dashes, some of them cards: random
    /// groups, or one digit repeated (which forms no card for some digits, so that a card
    /// after many of them is the first one in its run).
    fn grouped_digits() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let card = proptest::sample::select(vec![b"4111 1111 1111 1111".to_vec(), b"4532-0151-1283-0366".to_vec()]);
        let random = prop_oneof![4 => proptest::collection::vec(b'0'..=b'9', 1..6), 1 => card.clone()];
        let repeated = (b'0'..=b'9', 0usize..60, card)
            .prop_map(|(digit, n, card)| std::iter::repeat_n(vec![digit], n).chain([card]).collect::<Vec<_>>());
        let group = prop_oneof![random.prop_map(|g| vec![g]), repeated];
        let edge = proptest::sample::select(vec![Vec::new(), b"x".to_vec(), b" ".to_vec()]);
        (edge.clone(), proptest::collection::vec((group, proptest::sample::select(vec![b' ', b'-'])), 1..40), edge)
            .prop_map(|(before, pieces, after)| {
                let mut text = before;
                let groups = pieces.iter().flat_map(|(groups, sep)| groups.iter().map(move |g| (g, *sep)));
                for (i, (group, sep)) in groups.enumerate() {
                    if i > 0 {
                        text.push(sep);
                    }
                    text.extend_from_slice(group);
                }
                text.extend_from_slice(&after);
                text
            })
    }

    proptest::proptest! {
        #[test]
        fn cards_in_long_runs_of_groups_equal_the_reference(text in grouped_digits()) {
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            find_cards(&text, &mut |s, e| fast.push((s, e)));
            reference::find_cards(&text, &mut |s, e| slow.push((s, e)));
            proptest::prop_assert_eq!(&fast, &slow);
            // Every whole card in the text not glued to a word is inside what is found.
            for card in [&b"4111 1111 1111 1111"[..], b"4532-0151-1283-0366"] {
                for at in memchr::memmem::find_iter(&text, card) {
                    let end = at + card.len();
                    if (at > 0 && text[at - 1] == b'x') || text.get(end) == Some(&b'x') {
                        continue;
                    }
                    proptest::prop_assert!(
                        fast.iter().any(|&(s, e)| s <= at && at + card.len() <= e),
                        "{:?} at {} not in {:?}", String::from_utf8_lossy(&text), at, fast
                    );
                }
            }
        }

        #[test]
        fn masked_cards_are_not_found_again(text in detector_text(), keep in 0usize..=4) {
            let once = mask_cards(&text, keep);
            proptest::prop_assert_eq!(mask_cards(&once, keep), once);
        }

        #[test]
        fn fast_detectors_equal_the_reference(text in detector_text()) {
            proptest::prop_assert_eq!(luhn_valid(&text), reference::luhn_valid(&text));
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            find_emails(&text, &mut |s, e| fast.push((s, e)));
            reference::find_emails(&text, &mut |s, e| slow.push((s, e)));
            proptest::prop_assert_eq!(fast, slow);
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            find_cards(&text, &mut |s, e| fast.push((s, e)));
            reference::find_cards(&text, &mut |s, e| slow.push((s, e)));
            // Cards grouped by dots come after the others.
            proptest::prop_assert_eq!(fast, slow);
            // On a value of at most 64 bytes with one `@`, the bit-scan finder agrees.
            let value = &text[..text.len().min(64)];
            if memchr::memchr_iter(b'@', value).count() == 1 {
                let at = memchr::memchr(b'@', value).unwrap();
                let mut padded = [0u8; 64];
                padded[..value.len()].copy_from_slice(value);
                let classes = crate::mask::simd::email_classes(&padded);
                let mut slow = Vec::new();
                reference::find_emails(value, &mut |s, e| slow.push((s, e)));
                proptest::prop_assert_eq!(email_around(value.len(), at, &classes), slow.first().copied());
            }
            // The pre-check never hides a match.
            for kind in DetectorKind::ALL {
                let mut hit = false;
                kind.find(&text, &mut |_, _| hit = true);
                proptest::prop_assert!(!hit || kind.may_match(&text), "{:?} on {:?}", kind, text);
            }
        }
    }
}
