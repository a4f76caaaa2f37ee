//! Property tests: masking in place equals a simple allocating reference (decode every value,
//! find matches naively, mask strings, compare decoded results) on generated JSON rowsets with
//! random escaping and generated Arrow batches; lengths are kept, masked values decode under
//! their types, and no canary survives a profile that detects everything.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Value, json};

use super::fixtures::{decodes_as, ipc_stream, masker, read_arrow};
use crate::mask::detect::{DetectorKind, luhn_valid};
use crate::mask::{Column, Scratch};

/// The config of each property: `PROPTEST_CASES` cases when set (for long runs), else the
/// default given; failing cases are kept beside this file (`properties.proptest-regressions`).
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::with_cases(cases)
    }
}

/// A mask style as the generator picks it.
#[derive(Debug, Clone, PartialEq)]
enum StyleSpec {
    Full,
    KeepLast(u32),
    Token(&'static str),
    TypeValid,
    Null,
}

impl StyleSpec {
    fn toml(&self) -> String {
        match self {
            StyleSpec::Full => r#"{ style = "full" }"#.into(),
            StyleSpec::KeepLast(k) => format!(r#"{{ style = "keep_last", keep = {k} }}"#),
            StyleSpec::Token(t) => format!(r#"{{ style = "token", token = "{t}" }}"#),
            StyleSpec::TypeValid => r#"{ style = "type_valid" }"#.into(),
            StyleSpec::Null => r#"{ style = "null" }"#.into(),
        }
    }

    /// The merge order of overlapping matches: the greatest wins.
    fn rank(&self) -> (u8, u32) {
        match self {
            StyleSpec::KeepLast(k) => (1, u32::MAX - k),
            StyleSpec::Token(t) => (2, TOKENS.iter().position(|x| x == t).unwrap() as u32),
            StyleSpec::Full => (3, 0),
            StyleSpec::TypeValid => (4, 0),
            StyleSpec::Null => (5, 0),
        }
    }
}

/// Sorted: overlapping token matches keep the greater token.
const TOKENS: [&str; 2] = ["[REDACTED-LONG-TOKEN]", "[X]"];
/// The dictionary; the last word, which holds a space, only when a case says so (without it the
/// masker skips reading `+` as a space for words).
const WORDS: [&str; 5] = ["Lovelace", "Falcon", "Fal", "acme-secret", "Grace Hopper"];

fn style() -> impl Strategy<Value = StyleSpec> {
    prop_oneof![
        Just(StyleSpec::Full),
        (0u32..6).prop_map(StyleSpec::KeepLast),
        prop::sample::select(TOKENS.to_vec()).prop_map(StyleSpec::Token),
        Just(StyleSpec::TypeValid),
        Just(StyleSpec::Null),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    Text,
    Variant,
    Fixed0,
    Fixed2,
    Real,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Boolean,
    Binary,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Text => "text",
            Ty::Variant => "variant",
            Ty::Fixed0 | Ty::Fixed2 => "fixed",
            Ty::Real => "real",
            Ty::Date => "date",
            Ty::Time => "time",
            Ty::Timestamp => "timestamp_ntz",
            Ty::TimestampTz => "timestamp_tz",
            Ty::Boolean => "boolean",
            Ty::Binary => "binary",
        }
    }

    fn is_text(self) -> bool {
        matches!(self, Ty::Text | Ty::Variant)
    }
}

#[derive(Debug, Clone)]
struct ColSpec {
    ty: Ty,
    nullable: bool,
    rule: Option<StyleSpec>,
}

#[derive(Debug, Clone)]
struct Case {
    columns: Vec<ColSpec>,
    detectors: Vec<Option<StyleSpec>>,
    dictionary: StyleSpec,
    /// Whether the dictionary holds its word with a space.
    spaced_word: bool,
    /// Cells: the value and, per character, whether to write it as a `\u` escape.
    rows: Vec<Vec<Option<(String, u64)>>>,
    chunk: bool,
}

const FRAGMENTS: &[&str] = &[
    "hello",
    " ",
    ", ",
    "é",
    "日本",
    "😀",
    "\"",
    "\\",
    "\n",
    "\t",
    "Lovelace",
    "Falcon",
    "Falcon Lovelace",
    "acme-secret",
    "ada@example.com",
    "x.y+z@mail.example.org",
    "@",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4532015112830366",
    "4532015112830367",
    "123-45-6789",
    "078 05 1120",
    "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432",
    "AKIAIOSFODNN7EXAMPLE",
    "AIzaSyA-1234567890abcdefghijklmnopqrstu",
    "ghp_a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2",
    "xoxb-123456789012-abcdef",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
    "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
    "1234567890123",
    "4222222222222",
    "6011000990139420007",
    "0",
    "%3D",
    "%41KIAIOSFODNN7EXAMPLE",
    "%3211116789",
    "%253D",
    "%2540",
    "%40",
    "%20",
    "%2",
    "%",
    "q%3D4532015112830366",
    "ada%40example.com",
    "123%2045%206789",
    "+",
    "%2B",
    "4111+1111+1111+1111",
    "123+45+6789",
    "DE89+3704+0044+0532+0130+00",
    "-----BEGIN+PRIVATE+KEY-----%0AMIIE%0A-----END+PRIVATE+KEY-----",
    "Grace Hopper",
    "Grace+Hopper",
    "Grace%20Hopper",
    "%46alcon",
    "Lovel%61ce",
    "xoxe-1-My0xLTEwMzk5NjM5NzI1OC0x",
    "xoxd-abc%2Fdef%2Bghijklmnop%3D",
    // JSON text's escapes (a VARIANT's strings, a document in a string column).
    r"\n",
    r"\t",
    r"\\",
    r"\u0040",
    r"\u00e9",
    r"\ud83d\ude00",
    r"\ud83d",
    r"\u00",
    r"\x",
    r"paid\n4532015112830366",
    r"\tAKIAIOSFODNN7EXAMPLE",
    r"ada\u0040example.com",
    r"n\\n123-45-6789",
];

fn text_value() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS.to_vec()), 0..6).prop_map(|parts| parts.concat())
}

fn typed_value(ty: Ty) -> BoxedStrategy<String> {
    match ty {
        Ty::Text => text_value().boxed(),
        Ty::Variant => prop_oneof![
            text_value().prop_map(|t| serde_json::to_string(&json!({"note": t})).unwrap()),
            Just("12".to_string()),
            Just("[1,2]".to_string()),
        ]
        .boxed(),
        Ty::Fixed0 => prop_oneof![
            any::<i32>().prop_map(|v| v.to_string()),
            Just("4532015112830366".to_string()),
            Just("-4111111111111111".to_string()),
            Just("4532015112830367".to_string()),
        ]
        .boxed(),
        Ty::Fixed2 => (any::<i32>(), 0u8..100).prop_map(|(a, b)| format!("{a}.{b:02}")).boxed(),
        Ty::Real => {
            prop_oneof![any::<f64>().prop_map(|f| f.to_string()), Just("NaN".into()), Just("-inf".into())].boxed()
        }
        Ty::Date => (-100_000i32..100_000).prop_map(|d| d.to_string()).boxed(),
        Ty::Time => (0u32..86_400, 0u32..1_000_000_000).prop_map(|(s, f)| format!("{s}.{f:09}")).boxed(),
        Ty::Timestamp => (-1i64 << 40..1 << 40, 0u32..1_000_000_000).prop_map(|(s, f)| format!("{s}.{f:09}")).boxed(),
        Ty::TimestampTz => {
            (0i64..1 << 34, 0u32..1_000_000_000, 600u32..2280).prop_map(|(s, f, z)| format!("{s}.{f:09} {z}")).boxed()
        }
        Ty::Boolean => prop::sample::select(vec!["1", "0", "true", "false"]).prop_map(String::from).boxed(),
        Ty::Binary => prop::collection::vec(any::<u8>(), 0..6)
            .prop_map(|b| b.iter().map(|x| format!("{x:02X}")).collect())
            .boxed(),
    }
}

fn ty() -> impl Strategy<Value = Ty> {
    prop::sample::select(vec![
        Ty::Text,
        Ty::Text,
        Ty::Text,
        Ty::Variant,
        Ty::Fixed0,
        Ty::Fixed2,
        Ty::Real,
        Ty::Date,
        Ty::Time,
        Ty::Timestamp,
        Ty::TimestampTz,
        Ty::Boolean,
        Ty::Binary,
    ])
}

fn case() -> impl Strategy<Value = Case> {
    let column = (ty(), any::<bool>(), prop::option::weighted(0.3, style())).prop_map(|(ty, nullable, rule)| ColSpec {
        ty,
        nullable,
        rule,
    });
    (
        prop::collection::vec(column, 1..6),
        prop::collection::vec(prop::option::weighted(0.8, style()), DetectorKind::COUNT),
        (style(), any::<bool>()),
        any::<bool>(),
    )
        .prop_flat_map(|(columns, detectors, dictionary, chunk)| {
            let cells: Vec<BoxedStrategy<Option<(String, u64)>>> = columns
                .iter()
                // Half the cells without `\u` escapes: rows of plain cells take the walker's
                // fast path, the others its byte walk.
                .map(|c| {
                    prop::option::weighted(0.85, (typed_value(c.ty), prop_oneof![Just(0u64), any::<u64>()])).boxed()
                })
                .collect();
            let rows = prop::collection::vec(cells, 0..6);
            (Just(columns), Just(detectors), Just(dictionary), rows, Just(chunk))
        })
        .prop_map(|(columns, detectors, (dictionary, spaced_word), rows, chunk)| Case {
            columns,
            detectors,
            dictionary,
            spaced_word,
            rows,
            chunk,
        })
}

impl Case {
    fn words(&self) -> &'static [&'static str] {
        if self.spaced_word { &WORDS } else { &WORDS[..WORDS.len() - 1] }
    }

    fn policy(&self) -> String {
        let mut text = String::from("[masking.profiles.p.detectors]\n");
        for (kind, style) in DetectorKind::ALL.iter().zip(&self.detectors) {
            match style {
                None => text.push_str(&format!("{} = false\n", kind.name())),
                Some(style) => text.push_str(&format!("{} = {{ mask = {} }}\n", kind.name(), style.toml())),
            }
        }
        let words: Vec<String> = self.words().iter().map(|w| format!("{w:?}")).collect();
        text.push_str(&format!(
            "[masking.profiles.p.dictionary]\nwords = [{}]\nmask = {}\n",
            words.join(", "),
            self.dictionary.toml()
        ));
        for (i, column) in self.columns.iter().enumerate() {
            if let Some(rule) = &column.rule {
                text.push_str(&format!("[[masking.profiles.p.columns]]\nname = \"C{i}\"\nmask = {}\n", rule.toml()));
            }
        }
        text
    }

    fn rowtype(&self) -> Value {
        Value::Array(
            self.columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let scale = if c.ty == Ty::Fixed2 { 2 } else { 0 };
                    json!({"name": format!("C{i}"), "table": "T", "type": c.ty.name(), "scale": scale, "nullable": c.nullable})
                })
                .collect(),
        )
    }
}

/// Encodes a string as a JSON string token, writing characters as `\u` escapes where `bits` says
/// (and always where JSON requires an escape).
fn encode(value: &str, bits: u64) -> String {
    let mut out = String::from("\"");
    for (i, c) in value.chars().enumerate() {
        let escape = bits >> (i % 64) & 1 == 1;
        match c {
            '"' => out.push_str(if escape { "\\u0022" } else { "\\\"" }),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str(if escape { "\\u000a" } else { "\\n" }),
            '\t' => out.push_str("\\t"),
            c if escape => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Json,
    Arrow,
}

/// Spans of a decoded value, merged: every occurrence of every word and every detector's
/// matches; then settled: while a mask borders a letter, a digit, a non-ASCII byte or one of
/// `%_-.@'+`, or keeps its last characters before more text, the detectors read
/// the value as masked (at fixed length, as Arrow writes it) and what they find is added, and
/// after four rounds that found more, the whole value is masked.
fn reference_spans(case: &Case, value: &str) -> Vec<(usize, usize, StyleSpec)> {
    let bytes = value.as_bytes();
    let mut spans = Vec::new();
    for word in case.words() {
        for start in 0..bytes.len() {
            if bytes[start..].starts_with(word.as_bytes()) {
                spans.push((start, start + word.len(), case.dictionary.clone()));
            }
        }
    }
    spans.extend(detector_spans(case, bytes));
    let mut spans = merged(spans);
    let glue = |b: u8| b.is_ascii_alphanumeric() || b >= 0x80 || "%_-.@'+".as_bytes().contains(&b);
    for _ in 0..4 {
        let borders = |(s, e, style): &(usize, usize, StyleSpec)| {
            let kept = matches!(style, StyleSpec::KeepLast(keep) if *keep > 0);
            (*s > 0 && glue(bytes[s - 1])) || bytes.get(*e).is_some_and(|&b| kept || glue(b))
        };
        if !spans.iter().any(borders) {
            return spans;
        }
        let masked = reference_masked_text(value, &spans, Format::Arrow);
        let more = detector_spans(case, masked.as_bytes());
        if more.iter().all(|(s, e, _)| spans.iter().any(|(fs, fe, _)| fs <= s && e <= fe)) {
            return spans;
        }
        spans.extend(more);
        spans = merged(spans);
    }
    let strongest = spans.iter().fold(None::<&StyleSpec>, |best, (_, _, style)| match best {
        Some(best) if style.rank() <= best.rank() => Some(best),
        _ => Some(style),
    });
    strongest.map(|style| vec![(0, value.len(), style.clone())]).unwrap_or_default()
}

/// Every enabled detector's matches in a value and in its decoded levels (percent and JSON
/// backslash escapes read as what they stand for, again while it holds escapes, up to three
/// times), and every word's in those levels, as
/// spans of the value; the detectors whose matches may hold a space (card, SSN, IBAN, PEM key)
/// and the words read each of the value and its levels with `+` (but a first one) as a space
/// too. (The words in the value as written are [`reference_spans`]'s.)
fn detector_spans(case: &Case, bytes: &[u8]) -> Vec<(usize, usize, StyleSpec)> {
    let mut levels: Vec<(Vec<u8>, Vec<usize>)> = Vec::new();
    let mut level = (bytes.to_vec(), (0..=bytes.len()).collect::<Vec<usize>>());
    while levels.len() < 3
        && let Some((text, from)) = escapes_decoded(&level.0)
    {
        level = (text, from.iter().map(|&i| level.1[i]).collect());
        levels.push(level.clone());
    }
    levels.insert(0, (bytes.to_vec(), (0..=bytes.len()).collect()));
    let spaced_kinds = [DetectorKind::Card, DetectorKind::Ssn, DetectorKind::Iban, DetectorKind::PemPrivateKey];
    let mut spans = Vec::new();
    // What is found in a decoded level masks the bytes it came from.
    for (level, (text, from)) in levels.iter().enumerate() {
        let spaced: Vec<u8> =
            text.iter().enumerate().map(|(i, &b)| if b == b'+' && i > 0 { b' ' } else { b }).collect();
        for (kind, style) in DetectorKind::ALL.iter().zip(&case.detectors) {
            if let Some(style) = style {
                kind.find(text, &mut |s, e| spans.push((from[s], from[e], style.clone())));
                if spaced_kinds.contains(kind) {
                    kind.find(&spaced, &mut |s, e| spans.push((from[s], from[e], style.clone())));
                }
            }
        }
        let forms: Vec<&[u8]> = if level > 0 { vec![text, &spaced] } else { vec![&spaced] };
        for form in forms {
            for word in case.words() {
                for start in 0..form.len() {
                    if form[start..].starts_with(word.as_bytes()) {
                        spans.push((from[start], from[start + word.len()], case.dictionary.clone()));
                    }
                }
            }
        }
    }
    spans
}

/// Spans sorted and merged where they overlap, the stronger style masking the union.
fn merged(mut spans: Vec<(usize, usize, StyleSpec)>) -> Vec<(usize, usize, StyleSpec)> {
    spans.sort_by_key(|s| s.0);
    let mut merged: Vec<(usize, usize, StyleSpec)> = Vec::new();
    for (start, end, style) in spans {
        match merged.last_mut() {
            Some(last) if start < last.1 => {
                last.1 = last.1.max(end);
                if style.rank() > last.2.rank() {
                    last.2 = style;
                }
            }
            _ => merged.push((start, end, style)),
        }
    }
    merged
}

/// A value holding an escape, decoded: each `%` and two hex digits as the byte they encode,
/// each JSON escape (`\n`, `\u00e9`, a surrogate pair; a lone surrogate as U+FFFD) as the
/// UTF-8 of what it stands for; with where each decoded byte starts in the value and its
/// length last. `None` without an escape.
fn escapes_decoded(bytes: &[u8]) -> Option<(Vec<u8>, Vec<usize>)> {
    let hex = |at: usize, n: usize| {
        let digits = bytes.get(at..at + n)?;
        digits
            .iter()
            .all(u8::is_ascii_hexdigit)
            .then(|| u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok())?
    };
    let utf8 = |c: char| c.to_string().into_bytes();
    // What the escape at `i` stands for and how long it is.
    let escape = |i: usize| -> Option<(Vec<u8>, usize)> {
        match (bytes[i], bytes.get(i + 1)?) {
            (b'%', _) => Some((vec![hex(i + 1, 2)? as u8], 3)),
            (b'\\', b'u') => {
                let unit = hex(i + 2, 4)?;
                let low = (bytes.get(i + 6..i + 8) == Some(b"\\u".as_slice())).then(|| hex(i + 8, 4)).flatten();
                let text = match (unit, low) {
                    (0xD800..=0xDBFF, Some(low @ 0xDC00..=0xDFFF)) => {
                        let c = char::from_u32(0x10000 + (unit - 0xD800) * 0x400 + (low - 0xDC00)).unwrap();
                        return Some((utf8(c), 12));
                    }
                    _ => utf8(char::from_u32(unit).unwrap_or('\u{FFFD}')),
                };
                Some((text, 6))
            }
            (b'\\', &c) => {
                let decoded = match c {
                    b'n' => '\n',
                    b't' => '\t',
                    b'r' => '\r',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'/' | b'\\' | b'"' => c as char,
                    _ => return None,
                };
                Some((utf8(decoded), 2))
            }
            _ => None,
        }
    };
    let (mut text, mut from, mut i) = (Vec::new(), Vec::new(), 0);
    let mut any = false;
    while i < bytes.len() {
        match escape(i) {
            Some((decoded, len)) => {
                from.extend(std::iter::repeat_n(i, decoded.len()));
                text.extend(decoded);
                i += len;
                any = true;
            }
            None => {
                from.push(i);
                text.push(bytes[i]);
                i += 1;
            }
        }
    }
    from.push(bytes.len());
    any.then_some((text, from))
}

fn reference_masked_text(value: &str, spans: &[(usize, usize, StyleSpec)], format: Format) -> String {
    let mut out = String::new();
    let mut at = 0;
    for (start, end, style) in spans {
        out.push_str(&value[at..*start]);
        let part = &value[*start..*end];
        match style {
            StyleSpec::KeepLast(k) => {
                let chars: Vec<char> = part.chars().collect();
                // At most half the characters stay in clear, whatever `keep` says.
                let kept_chars = (*k as usize).min(chars.len() / 2);
                let kept: String = chars[chars.len() - kept_chars..].iter().collect();
                out.push_str(&"*".repeat(part.len() - kept.len()));
                out.push_str(&kept);
            }
            StyleSpec::Token(t) if t.len() <= part.len() => {
                out.push_str(t);
                if format == Format::Arrow {
                    out.push_str(&" ".repeat(part.len() - t.len()));
                }
            }
            _ => out.push_str(&"*".repeat(part.len())),
        }
        at = *end;
    }
    out.push_str(&value[at..]);
    out
}

fn reference_type_valid(ty: Ty, value: &str) -> String {
    if value.is_empty() {
        return String::new();
    }
    let zero =
        |v: &str| v.chars().map(|c| if matches!(c, '.' | 'e' | 'E' | '+') { c } else { '0' }).collect::<String>();
    match ty {
        Ty::Text => "*".repeat(value.len()),
        // The same kind of JSON value, empty.
        Ty::Variant => match value.trim_start().as_bytes().first() {
            Some(b'{') if value.len() >= 2 => "{}".into(),
            Some(b'[') if value.len() >= 2 => "[]".into(),
            _ if value.len() >= 4 => "null".into(),
            _ => "0".into(),
        },
        Ty::Boolean => "0".into(),
        Ty::Binary => "0".repeat(value.len()),
        Ty::TimestampTz => match value.split_once(' ') {
            Some((seconds, zone)) => format!("{} {zone}", zero(seconds)),
            None => zero(value),
        },
        _ => zero(value),
    }
}

/// What one JSON cell should decode to after masking. `raw_len` is its token's length.
fn reference_json_cell(case: &Case, column: &ColSpec, value: &str, raw_len: usize) -> Option<String> {
    let fits_null = column.nullable && raw_len >= 4;
    let whole = |style: &StyleSpec| -> Option<String> {
        if *style == StyleSpec::Null && fits_null {
            return None;
        }
        // Text masks on JSON text would not parse: a type-valid value instead.
        let text_style = matches!(style, StyleSpec::Full | StyleSpec::KeepLast(_) | StyleSpec::Token(_));
        if column.ty == Ty::Text && text_style {
            Some(reference_masked_text(value, &[(0, value.len(), style.clone())], Format::Json))
        } else {
            Some(reference_type_valid(column.ty, value))
        }
    };
    if let Some(rule) = &column.rule {
        return whole(rule);
    }
    if column.ty.is_text() {
        let spans = reference_spans(case, value);
        if spans.iter().any(|s| s.2 == StyleSpec::Null) && fits_null {
            return None;
        }
        let masked = reference_masked_text(value, &spans, Format::Json);
        // A VARIANT whose masks broke its JSON gets the type-valid mask instead.
        if column.ty == Ty::Variant && !spans.is_empty() && serde_json::from_str::<Value>(&masked).is_err() {
            return Some(reference_type_valid(column.ty, value));
        }
        return Some(masked);
    }
    let card = &case.detectors[DetectorKind::Card.index()];
    if column.ty == Ty::Fixed0
        && let Some(style) = card
    {
        let mut hit = false;
        DetectorKind::Card.find(value.as_bytes(), &mut |_, _| hit = true);
        if hit {
            return whole(if *style == StyleSpec::Null { &StyleSpec::Null } else { &StyleSpec::TypeValid });
        }
    }
    Some(value.to_owned())
}

fn check_json_case(case: &Case) -> Result<(), TestCaseError> {
    let masker = masker(&case.policy());
    let p = masker.profile("p").unwrap();
    let rows_raw: Vec<String> = case
        .rows
        .iter()
        .map(|row| {
            let cells: Vec<String> =
                row.iter().map(|c| c.as_ref().map_or("null".into(), |(v, bits)| encode(v, *bits))).collect();
            format!("[{}]", cells.join(","))
        })
        .collect();
    let rowtype = case.rowtype();
    let (mut body, plan) = if case.chunk {
        let columns = Column::from_rowtype_json(&serde_json::to_vec(&rowtype).unwrap()).unwrap();
        (rows_raw.join(",\n").into_bytes(), Some(masker.plan(p, &columns)))
    } else {
        let text = format!(r#"{{"data":{{"rowtype":{},"rowset":[{}]}},"success":true}}"#, rowtype, rows_raw.join(","));
        (text.into_bytes(), None)
    };
    let len = body.len();
    let mut walked = body.clone();
    let masked = masker.mask(p, &mut body, plan.as_ref(), &mut Scratch::default());
    let masked = masked.map_err(|e| TestCaseError::fail(format!("{e}")))?;
    // The fast path over the structure map and the byte walk agree, byte for byte and count
    // for count.
    let by_walk = masker.mask(p, &mut walked, plan.as_ref(), &mut Scratch::byte_walk_only());
    let by_walk = by_walk.map_err(|e| TestCaseError::fail(format!("byte walk: {e}")))?;
    prop_assert_eq!(String::from_utf8_lossy(&walked), String::from_utf8_lossy(&body));
    prop_assert_eq!(&by_walk.report, &masked.report);
    prop_assert_eq!(body.len(), len);
    prop_assert_eq!(masked.report.rows, case.rows.len() as u64);
    // What was masked needs no second pass.
    let mut again = body.clone();
    masker
        .mask(p, &mut again, plan.as_ref(), &mut Scratch::default())
        .map_err(|e| TestCaseError::fail(format!("again: {e}")))?;
    prop_assert_eq!(String::from_utf8_lossy(&again), String::from_utf8_lossy(&body), "a second pass masked more");
    let got: Vec<Vec<Option<String>>> = if case.chunk {
        super::fixtures::chunk_rows(&body)
    } else {
        super::fixtures::decoded_rows(&body, "/data/rowset")
    };
    for (r, row) in case.rows.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let column = &case.columns[c];
            let expected = cell
                .as_ref()
                .and_then(|(value, bits)| reference_json_cell(case, column, value, encode(value, *bits).len()));
            prop_assert_eq!(&got[r][c], &expected, "row {} column {} ({:?}) from {:?}", r, c, column, cell);
            // Masked values decode under their type.
            if let (Some(value), Some((original, _))) = (&got[r][c], cell)
                && decodes_as(column.ty.name(), original)
            {
                prop_assert!(
                    decodes_as(column.ty.name(), value),
                    "{:?} no longer decodes as {}",
                    value,
                    column.ty.name()
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn json_in_place_equals_the_reference(case in case()) {
        check_json_case(&case)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Arrow.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ArrowCase {
    columns: Vec<ColSpec>,
    detectors: Vec<Option<StyleSpec>>,
    dictionary: StyleSpec,
    spaced_word: bool,
    rows: Vec<Vec<Option<String>>>,
}

fn arrow_ty() -> impl Strategy<Value = Ty> {
    prop::sample::select(vec![Ty::Text, Ty::Text, Ty::Fixed0, Ty::Date, Ty::Boolean, Ty::Real])
}

fn arrow_value(ty: Ty) -> BoxedStrategy<String> {
    match ty {
        Ty::Text => text_value().boxed(),
        Ty::Fixed0 => prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            Just("4532015112830366".into()),
            Just("-4111111111111111".into())
        ]
        .boxed(),
        Ty::Date => (-100_000i32..100_000).prop_map(|d| d.to_string()).boxed(),
        Ty::Boolean => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        _ => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()).boxed(),
    }
}

fn arrow_case() -> impl Strategy<Value = ArrowCase> {
    let column = (arrow_ty(), any::<bool>(), prop::option::weighted(0.3, style()))
        .prop_map(|(ty, nullable, rule)| ColSpec { ty, nullable, rule });
    (
        prop::collection::vec(column, 1..6),
        prop::collection::vec(prop::option::weighted(0.8, style()), DetectorKind::COUNT),
        (style(), any::<bool>()),
    )
        .prop_flat_map(|(columns, detectors, dictionary)| {
            let cells: Vec<BoxedStrategy<Option<String>>> = columns
                .iter()
                .map(|c| {
                    if c.nullable {
                        prop::option::weighted(0.8, arrow_value(c.ty)).boxed()
                    } else {
                        arrow_value(c.ty).prop_map(Some).boxed()
                    }
                })
                .collect();
            (Just(columns), Just(detectors), Just(dictionary), prop::collection::vec(cells, 0..8))
        })
        .prop_map(|(columns, detectors, (dictionary, spaced_word), rows)| ArrowCase {
            columns,
            detectors,
            dictionary,
            spaced_word,
            rows,
        })
}

impl ArrowCase {
    fn as_case(&self) -> Case {
        Case {
            columns: self.columns.clone(),
            detectors: self.detectors.clone(),
            dictionary: self.dictionary.clone(),
            spaced_word: self.spaced_word,
            rows: Vec::new(),
            chunk: true,
        }
    }

    fn stream(&self) -> Vec<u8> {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let dt = match c.ty {
                    Ty::Text => DataType::Utf8,
                    Ty::Fixed0 => DataType::Int64,
                    Ty::Date => DataType::Date32,
                    Ty::Boolean => DataType::Boolean,
                    _ => DataType::Float64,
                };
                Field::new(format!("C{i}"), dt, c.nullable)
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter()
            .enumerate()
            .map(|(c, column)| {
                let cells = self.rows.iter().map(|row| row[c].as_deref());
                let array: ArrayRef = match column.ty {
                    Ty::Text => Arc::new(StringArray::from_iter(cells)),
                    Ty::Fixed0 => Arc::new(Int64Array::from_iter(cells.map(|v| v.map(|v| v.parse::<i64>().unwrap())))),
                    Ty::Date => Arc::new(Date32Array::from_iter(cells.map(|v| v.map(|v| v.parse::<i32>().unwrap())))),
                    Ty::Boolean => Arc::new(BooleanArray::from_iter(cells.map(|v| v.map(|v| v == "true")))),
                    _ => Arc::new(Float64Array::from_iter(cells.map(|v| v.map(|v| v.parse::<f64>().unwrap())))),
                };
                array
            })
            .collect();
        ipc_stream(&RecordBatch::try_new(schema, arrays).unwrap())
    }

    /// What a cell should read as after masking: `None` for NULL.
    fn expected(&self, c: usize, value: &Option<String>) -> Option<String> {
        let column = &self.columns[c];
        let value = value.as_ref()?;
        // NULL is writable only where arrow-rs wrote a validity bitmap: when the batch has nulls.
        let has_bitmap = self.rows.iter().any(|row| row[c].is_none());
        let can_null = column.nullable && has_bitmap;
        let zero = || match column.ty {
            Ty::Boolean => "false".to_string(),
            _ => "0".to_string(),
        };
        let whole = |style: &StyleSpec| -> Option<String> {
            if *style == StyleSpec::Null && can_null {
                return None;
            }
            if column.ty != Ty::Text {
                return Some(zero());
            }
            match style {
                StyleSpec::TypeValid | StyleSpec::Null => Some("*".repeat(value.len())),
                style => Some(reference_masked_text(value, &[(0, value.len(), style.clone())], Format::Arrow)),
            }
        };
        if let Some(rule) = &column.rule {
            return whole(rule);
        }
        match column.ty {
            Ty::Text => {
                let spans = reference_spans(&self.as_case(), value);
                if spans.iter().any(|s| s.2 == StyleSpec::Null) && can_null {
                    return None;
                }
                Some(reference_masked_text(value, &spans, Format::Arrow))
            }
            Ty::Fixed0 => {
                let number: i64 = value.parse().unwrap();
                let digits = number.unsigned_abs().to_string();
                let card = (13..=19).contains(&digits.len()) && luhn_valid(digits.as_bytes());
                match &self.detectors[DetectorKind::Card.index()] {
                    Some(style) if card => {
                        if *style == StyleSpec::Null && can_null {
                            None
                        } else {
                            Some("0".into())
                        }
                    }
                    _ => Some(value.clone()),
                }
            }
            _ => Some(value.clone()),
        }
    }
}

fn arrow_cell(array: &ArrayRef, row: usize) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    let any = array.as_any();
    Some(if let Some(a) = any.downcast_ref::<StringArray>() {
        a.value(row).to_owned()
    } else if let Some(a) = any.downcast_ref::<Int64Array>() {
        a.value(row).to_string()
    } else if let Some(a) = any.downcast_ref::<Date32Array>() {
        a.value(row).to_string()
    } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
        a.value(row).to_string()
    } else {
        any.downcast_ref::<Float64Array>().unwrap().value(row).to_string()
    })
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn arrow_in_place_equals_the_reference(case in arrow_case()) {
        let masker = masker(&case.as_case().policy());
        let p = masker.profile("p").unwrap();
        let mut stream = case.stream();
        let len = stream.len();
        let rowtype = case.as_case().rowtype();
        let columns = Column::from_rowtype_json(&serde_json::to_vec(&rowtype).unwrap()).unwrap();
        let masked = masker.mask(p, &mut stream, Some(&masker.plan(p, &columns)), &mut Scratch::default());
        let masked = masked.map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(stream.len(), len);
        // What was masked needs no second pass.
        let mut again = stream.clone();
        let second = masker.mask(p, &mut again, Some(&masker.plan(p, &columns)), &mut Scratch::default());
        second.map_err(|e| TestCaseError::fail(format!("again: {e}")))?;
        prop_assert!(again == stream, "a second pass masked more");
        prop_assert_eq!(masked.report.rows, case.rows.len() as u64);
        // arrow-rs decodes (and validates: UTF-8, null counts) the masked stream.
        let batches = read_arrow(&stream);
        let batch = &batches[0];
        for (r, row) in case.rows.iter().enumerate() {
            for (c, value) in row.iter().enumerate() {
                let got = arrow_cell(batch.column(c), r);
                let expected = case.expected(c, value);
                let expected = match (&expected, case.columns[c].ty) {
                    (Some(v), Ty::Real) => Some(v.parse::<f64>().unwrap().to_string()),
                    _ => expected,
                };
                prop_assert_eq!(got, expected, "row {} column {} ({:?}) from {:?}", r, c, case.columns[c], value);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Canaries.
// ---------------------------------------------------------------------------------------------

const CANARY_POLICY: &str = r#"
[masking.profiles.p.dictionary]
words = ["Lovelace", "acme-secret", "Grace Hopper"]
"#;

const CANARY_FRAGMENTS: &[&str] = &[
    "Lovelace",
    "acme-secret",
    "ada@example.com",
    "4532015112830366",
    "4111 1111 1111 1111",
    "123-45-6789",
    "DE89370400440532013000",
    "AKIAIOSFODNN7EXAMPLE",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    // Percent-encoded: found in the decoded value.
    "q%3D4532015112830366",
    "ada%40example.com",
    "X-Amz-Credential%3DAKIAIOSFODNN7EXAMPLE",
    // Form-encoded: `+` read as a space.
    "card=4532+0151+1283+0366",
    "ssn=123+45+6789",
    "Grace+Hopper",
    "xoxe-1-My0xLTEwMzk5NjM5NzI1OC0x",
];

fn canary_cell() -> impl Strategy<Value = (String, u64)> {
    (
        prop::collection::vec(
            prop_oneof![prop::sample::select(CANARY_FRAGMENTS.to_vec()), prop::sample::select(FRAGMENTS.to_vec())],
            1..5,
        ),
        any::<u64>(),
    )
        .prop_map(|(parts, bits)| (parts.join(" "), bits))
}

/// Every string anywhere in a JSON value, decoded.
fn strings_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings_in(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings_in(v, out)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn no_canary_survives(rows in prop::collection::vec(prop::collection::vec(canary_cell(), 3), 1..6), shape in 0u8..3) {
        let masker = masker(CANARY_POLICY);
        let p = masker.profile("p").unwrap();
        let rowtype = json!([
            {"name": "A", "type": "text", "nullable": true},
            {"name": "B", "type": "variant", "nullable": true},
            {"name": "C", "type": "text", "nullable": false},
        ]);
        let raw_rows: Vec<String> = rows
            .iter()
            .map(|row| format!("[{}]", row.iter().map(|(v, b)| encode(v, *b)).collect::<Vec<_>>().join(",")))
            .collect();
        let mut body = match shape {
            0 => format!(r#"{{"data":{{"rowtype":{rowtype},"rowset":[{}]}}}}"#, raw_rows.join(",")).into_bytes(),
            1 => format!(r#"{{"resultSetMetaData":{{"rowType":{rowtype}}},"data":[{}]}}"#, raw_rows.join(",")).into_bytes(),
            _ => {
                let schema = Arc::new(Schema::new(vec![
                    Field::new("A", DataType::Utf8, true),
                    Field::new("B", DataType::Utf8, true),
                    Field::new("C", DataType::Utf8, false),
                ]));
                let arrays: Vec<ArrayRef> = (0..3)
                    .map(|c| Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r[c].0.clone()))) as ArrayRef)
                    .collect();
                ipc_stream(&RecordBatch::try_new(schema, arrays).unwrap())
            }
        };
        masker.mask(p, &mut body, None, &mut Scratch::default()).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let mut texts = vec![String::from_utf8_lossy(&body).into_owned()];
        if shape < 2 {
            strings_in(&serde_json::from_slice(&body).unwrap(), &mut texts);
        }
        for text in &texts {
            for canary in CANARY_FRAGMENTS {
                prop_assert!(!text.contains(canary), "{} survived in {}", canary, text);
            }
        }
    }
}
