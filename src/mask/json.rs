//! JSON results masked in place: row arrays (`rowset`, SQL API `data`, JSON chunks) walked
//! on bit maps of quotes and backslashes (or byte by byte where a row is unusual), cells masked without changing the body's length (a shorter
//! value moves its closing quote left and pads with spaces, which JSON allows between tokens),
//! and the answer envelope skimmed for what the proxy rewrites (chunk URLs, `qrmk`,
//! `chunkHeaders`). Only reads and writes the body it is lent; allocates per answer, never per row.

use std::ops::Range;

use super::arrow;
use super::plan::{Column, ColumnPlan, PlannedColumn, ValueType};
use super::rules::{Profile, RuleKind, Style};
use super::scan::{Quotes, StructureMap, WINDOW_BYTES};
#[cfg(target_arch = "x86_64")]
use super::simd::features;
use super::text::{
    MatchCursor, Span, Stats, apply_spans_fixed_len, backslash_escape, borders_word, count_flags, detect_short,
    detect_spans, dictionary_spans, digit_bytes, eq_bytes, fill, free_text_spans, hex_unit, keep_from, load_word,
    masked_preview, settle_spans, stats, type_valid_text,
};
use super::{AnswerOf, ChunkRef, Envelope, MaskError, MaskReport, ResultFormat, Scratch};
use crate::mask::detect::DetectorKind;

/// The deepest nesting the envelope skimmer follows.
const DEPTH_MAX: u32 = 128;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

#[inline(always)]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

#[inline(always)]
fn skip_ws(body: &[u8], mut at: usize) -> usize {
    while at < body.len() && is_ws(body[at]) {
        at += 1;
    }
    at
}

fn bad(offset: usize, what: &'static str) -> MaskError {
    MaskError::upstream_json(offset, what)
}

/// The first `"` or `\` at or after `from`, with the statistics of the bytes before it when
/// `want_stats`. Eight bytes at a time; the first flagged byte of a word is exact.
#[inline(always)]
fn scan_string(body: &[u8], from: usize, want_stats: bool) -> Option<(usize, Stats)> {
    let mut stats = Stats::default();
    let mut at = from;
    while at + 8 <= body.len() {
        let word = load_word(body, at);
        let quote = word ^ (ONES * u64::from(b'"'));
        let slash = word ^ (ONES * u64::from(b'\\'));
        let stop = (quote.wrapping_sub(ONES) & !quote | slash.wrapping_sub(ONES) & !slash) & HIGHS;
        if stop != 0 {
            let index = (stop.trailing_zeros() / 8) as usize;
            if want_stats && index > 0 {
                let before = u64::MAX >> (64 - 8 * index);
                stats.digits += count_flags(digit_bytes(word) & before);
                stats.at |= eq_bytes(word, b'@') & before != 0;
            }
            return Some((at + index, stats));
        }
        if want_stats {
            stats.add_word(word);
        }
        at += 8;
    }
    while at < body.len() {
        let b = body[at];
        if b == b'"' || b == b'\\' {
            return Some((at, stats));
        }
        if want_stats {
            stats.digits += u32::from(b.is_ascii_digit());
            stats.at |= b == b'@';
        }
        at += 1;
    }
    None
}

/// The closing quote of a string whose first `\` is at `from`.
fn close_after_escape(body: &[u8], mut from: usize) -> Result<usize, MaskError> {
    loop {
        match memchr::memchr2(b'"', b'\\', &body[from..]) {
            Some(offset) => {
                let at = from + offset;
                if body[at] == b'"' {
                    return Ok(at);
                }
                if at + 1 >= body.len() {
                    return Err(bad(at, "unterminated string"));
                }
                from = at + 2;
            }
            None => return Err(bad(body.len(), "unterminated string")),
        }
    }
}

/// A string token: quotes at `open` and `close`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StrTok {
    pub(crate) open: usize,
    pub(crate) close: usize,
    pub(crate) escaped: bool,
}

fn string_token(body: &[u8], open: usize) -> Result<StrTok, MaskError> {
    if body.get(open) != Some(&b'"') {
        return Err(bad(open, "expected a string"));
    }
    match scan_string(body, open + 1, false) {
        Some((at, _)) if body[at] == b'"' => Ok(StrTok { open, close: at, escaped: false }),
        Some((at, _)) => Ok(StrTok { open, close: close_after_escape(body, at)?, escaped: true }),
        None => Err(bad(body.len(), "unterminated string")),
    }
}

/// Decodes a JSON string's raw content into `out`, and for every decoded byte the raw offset
/// of the character it comes from, plus `raw.len()` at the end. Lone surrogates decode to
/// U+FFFD, as lenient readers do.
pub(crate) fn decode_string(raw: &[u8], out: &mut Vec<u8>, raw_of: &mut Vec<u32>) -> Result<(), MaskError> {
    out.clear();
    raw_of.clear();
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' {
            out.push(b);
            raw_of.push(i as u32);
            i += 1;
            continue;
        }
        let Some(escape) = backslash_escape(raw, i) else {
            let problem = if raw.get(i + 1) == Some(&b'u') { "invalid \\u escape" } else { "invalid escape" };
            return Err(bad(i, problem));
        };
        for &byte in escape.decoded() {
            out.push(byte);
            raw_of.push(i as u32);
        }
        i += usize::from(escape.taken);
    }
    raw_of.push(raw.len() as u32);
    Ok(())
}

/// A replacement inside a JSON string, in raw offsets from the content start: `stars` stars,
/// then the raw bytes `keep_from..end` kept, or a token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Repl {
    start: usize,
    end: usize,
    stars: usize,
    keep_from: usize,
    token: Option<u16>,
}

/// Writes `"` at `at` and spaces up to and including `close`: the string ends early.
#[inline]
fn close_early(body: &mut [u8], at: usize, close: usize) {
    if at < close {
        body[at] = b'"';
        fill(&mut body[at + 1..=close], b' ');
    }
}

#[inline(always)]
fn write_null(body: &mut [u8], open: usize, close: usize) {
    body[open..open + 4].copy_from_slice(b"null");
    fill(&mut body[open + 4..=close], b' ');
}

/// Per-walk state: the profile, the columns and what to do with each, the dictionary cursor
/// and the counts.
pub(crate) struct RowsWalker<'a> {
    profile: &'a Profile,
    columns: &'a [PlannedColumn],
    /// The columns the fast path does anything with, and what.
    actions: Vec<(usize, Action)>,
    cursor: MatchCursor,
    scratch: &'a mut Scratch,
    report: &'a mut MaskReport,
}

/// What the fast path does with a column's cells, decided once per walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// A column rule masks every value with this style.
    Whole(Style),
    /// A FIXED number of scale 0, which the card detector checks (with this style).
    CardNumber(Style),
    /// Text the dictionary and the detectors scan.
    Text,
}

impl Action {
    /// What to do with a column; `None` when nothing can ever change its values.
    fn of(profile: &Profile, planned: PlannedColumn) -> Option<Action> {
        if let Some(rule) = planned.rule {
            return Some(Action::Whole(profile.columns[usize::from(rule)].style));
        }
        if planned.value_type.is_text() {
            let scans = !profile.dictionary.is_empty() || profile.enabled_detectors != 0;
            return scans.then_some(Action::Text);
        }
        match (planned.value_type, profile.detector_style(DetectorKind::Card)) {
            (ValueType::Fixed { scale: 0 }, Some(style)) => Some(Action::CardNumber(style)),
            _ => None,
        }
    }
}

/// Row arrays come as a JSON array (`rowset`, `data`) or as a chunk: rows separated by commas
/// or newlines, with no enclosing brackets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowsShape {
    Array,
    Chunk,
}

impl<'a> RowsWalker<'a> {
    pub(crate) fn new(
        profile: &'a Profile,
        columns: &'a [PlannedColumn],
        scratch: &'a mut Scratch,
        report: &'a mut MaskReport,
    ) -> RowsWalker<'a> {
        let actions = (0..columns.len())
            .filter_map(|column| Action::of(profile, columns[column]).map(|action| (column, action)))
            .collect();
        RowsWalker {
            profile,
            columns,
            actions,
            cursor: MatchCursor::new(&profile.dictionary, &[], 0, 0),
            scratch,
            report,
        }
    }

    /// Masks the rows starting at `start`; returns the offset just past them.
    pub(crate) fn walk(&mut self, body: &mut [u8], start: usize, shape: RowsShape) -> Result<usize, MaskError> {
        self.cursor = MatchCursor::new(&self.profile.dictionary, body, start, body.len());
        // The map in the scratch may be of another body (or of this one before it changed).
        self.scratch.map.clear();
        #[cfg(target_arch = "x86_64")]
        if features::x86_64_v3() {
            // SAFETY: the CPU has every feature `walk_v3` is compiled for (checked just above).
            #[allow(unsafe_code)]
            return unsafe { self.walk_v3(body, start, shape) };
        }
        self.walk_rows(body, start, shape)
    }

    /// [`RowsWalker::walk_rows`] compiled for x86-64-v3 CPUs (AVX2, BMI1/2, LZCNT, POPCNT):
    /// bit counts and scans are one instruction each there, shifts need no `cl` register, and
    /// the SSE2 code gets three-operand forms. The walk is the same code.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,popcnt")]
    fn walk_v3(&mut self, body: &mut [u8], start: usize, shape: RowsShape) -> Result<usize, MaskError> {
        self.walk_rows(body, start, shape)
    }

    #[inline(always)]
    fn walk_rows(&mut self, body: &mut [u8], start: usize, shape: RowsShape) -> Result<usize, MaskError> {
        let mut at = skip_ws(body, start);
        if shape == RowsShape::Array {
            if body.get(at) != Some(&b'[') {
                return Err(bad(at, "expected an array of rows"));
            }
            at = skip_ws(body, at + 1);
            if body.get(at) == Some(&b']') {
                return Ok(at + 1);
            }
        } else if at == body.len() {
            return Ok(at);
        }
        loop {
            at = match self.row_fast(body, at) {
                Some(end) => end,
                None => self.row(body, at)?,
            };
            at = skip_ws(body, at);
            match (body.get(at), shape) {
                (Some(b','), _) => at = skip_ws(body, at + 1),
                (Some(b']'), RowsShape::Array) => return Ok(at + 1),
                (Some(b'['), RowsShape::Chunk) => {}
                (None, RowsShape::Chunk) => return Ok(at),
                _ => return Err(bad(at, "expected ',' or the end of the rows")),
            }
        }
    }

    /// Masks the row at `start` when it has the usual shape (`[`, strings without escapes and
    /// `null`s, separated by single commas, `]`, as wide as the plan), finding its cells on the
    /// structure map first; returns the offset past it. `None` (nothing touched): the row is
    /// not of that shape, or not within one window; the byte walker takes it, and says why
    /// when it is wrong.
    #[inline(always)]
    fn row_fast(&mut self, body: &mut [u8], start: usize) -> Option<usize> {
        let n_columns = self.columns.len();
        if n_columns == 0 || body.get(start) != Some(&b'[') || self.scratch.byte_walk_only {
            return None;
        }
        let end = {
            let Scratch { map, cells, .. } = &mut *self.scratch;
            cells.resize(n_columns, (NULL_CELL, NULL_CELL));
            let cells = &mut cells[..n_columns];
            if !map.covers(start) {
                map.fill(body, start, body.len().min(start + WINDOW_BYTES));
            }
            match row_cells(map, body, start, cells) {
                Cells::Row(end) => end,
                Cells::Unusual => return None,
                Cells::PastMap => {
                    if map.end() == body.len() || map.base() == start {
                        return None;
                    }
                    // The row runs past the window: map from the row on, once.
                    map.fill(body, start, body.len().min(start + WINDOW_BYTES));
                    match row_cells(map, body, start, cells) {
                        Cells::Row(end) => end,
                        Cells::Unusual | Cells::PastMap => return None,
                    }
                }
            }
        };
        self.report.rows += 1;
        for i in 0..self.actions.len() {
            let (column, action) = self.actions[i];
            let (open, close) = self.scratch.cells[column];
            if open == NULL_CELL {
                continue;
            }
            match action {
                Action::Whole(style) => {
                    let planned = self.columns[column];
                    if style == Style::Null && planned.nullable && close - open + 1 >= 4 {
                        write_null(body, open, close);
                    } else {
                        // Without escapes there is nothing to decode: this cannot fail.
                        let _ = self.mask_whole(body, open, close, false, planned, style);
                    }
                    self.report.count(RuleKind::Column.bit());
                }
                Action::CardNumber(style) => {
                    if close - open > 13 {
                        let stats = stats(&body[open + 1..close]);
                        let _ = self.card_in_number(body, open, close, false, stats, self.columns[column], style);
                    }
                }
                Action::Text => self.text_unescaped(body, open, close, self.columns[column]),
            }
        }
        Some(end)
    }

    /// Masks a text cell without escapes, quotes at `open` and `close`: its dictionary matches
    /// and what the detectors its byte classes let through find.
    #[inline(always)]
    fn text_unescaped(&mut self, body: &mut [u8], open: usize, close: usize, planned: PlannedColumn) {
        let content = open + 1;
        let len = close - content;
        // The value's first 64 bytes (and what follows it) are read as one window; a value
        // over 64 bytes, or too near the body's end for the window, takes the byte walk's
        // cell routine (`text_fast`).
        let Some(window) = body.get(content..content + 64).filter(|_| len <= 64) else {
            let stats = stats(&body[content..close]);
            self.text_fast(body, open, close, stats, planned);
            return;
        };
        let window: &[u8; 64] = window.try_into().expect("64 bytes");
        let profile = self.profile;
        let Scratch { spans, views, .. } = &mut *self.scratch;
        spans.clear();
        let mut anchored = 0u32;
        self.cursor.collect(&profile.dictionary, body, content, close, &mut anchored, spans);
        match detect_short(profile, window, len, anchored, spans, views) {
            Some(span) if planned.value_type == ValueType::Text && !borders_word(&window[..len], &span) => {
                self.mask_one(body, open, close, planned, span)
            }
            Some(span) => {
                spans.push(span);
                self.mask_spans(body, open, close, planned, anchored);
            }
            None if !spans.is_empty() => self.mask_spans(body, open, close, planned, anchored),
            None => {}
        }
    }

    fn row(&mut self, body: &mut [u8], start: usize) -> Result<usize, MaskError> {
        if body.get(start) != Some(&b'[') {
            return Err(bad(start, "expected a row"));
        }
        self.report.rows += 1;
        let n_columns = self.columns.len();
        let mut at = skip_ws(body, start + 1);
        if body.get(at) == Some(&b']') {
            return if n_columns == 0 {
                Ok(at + 1)
            } else {
                Err(MaskError::ColumnCount { expected: n_columns, found: 0 })
            };
        }
        let mut column = 0;
        loop {
            if column >= n_columns {
                return Err(MaskError::ColumnCount { expected: n_columns, found: column + 1 });
            }
            at = match body.get(at) {
                Some(b'"') => self.cell(body, at, column)?,
                Some(b'n') if body.get(at..at + 4) == Some(b"null") => at + 4,
                _ => return Err(bad(at, "expected a string or null value")),
            };
            at = skip_ws(body, at);
            match body.get(at) {
                Some(b',') => {
                    at = skip_ws(body, at + 1);
                    column += 1;
                }
                Some(b']') => break,
                _ => return Err(bad(at, "expected ',' or ']' in a row")),
            }
        }
        if column + 1 != n_columns {
            return Err(MaskError::ColumnCount { expected: n_columns, found: column + 1 });
        }
        Ok(at + 1)
    }

    /// Masks one string cell whose opening quote is at `open`; returns the offset past it.
    #[inline]
    fn cell(&mut self, body: &mut [u8], open: usize, column: usize) -> Result<usize, MaskError> {
        let planned = self.columns[column];
        let profile = self.profile;
        let card_style = profile.detector_style(DetectorKind::Card);
        let scan_text = planned.rule.is_none() && planned.value_type.is_text();
        let scan_card =
            planned.rule.is_none() && planned.value_type == ValueType::Fixed { scale: 0 } && card_style.is_some();
        // Any detector wants them: a percent escape has a digit (`%41KIA…` is an AWS key).
        let want_stats = (scan_text && profile.enabled_detectors != 0) || scan_card;
        let (stop, stats) = scan_string(body, open + 1, want_stats).ok_or_else(|| bad(open, "unterminated string"))?;
        let (close, escaped) = if body[stop] == b'"' { (stop, false) } else { (close_after_escape(body, stop)?, true) };
        if let Some(rule) = planned.rule {
            let style = profile.columns[usize::from(rule)].style;
            self.mask_whole(body, open, close, escaped, planned, style)?;
            self.report.count(RuleKind::Column.bit());
        } else if scan_text {
            if escaped {
                self.text_escaped(body, open, close, planned)?;
            } else {
                self.text_fast(body, open, close, stats, planned);
            }
        } else if scan_card && let Some(style) = card_style {
            self.card_in_number(body, open, close, escaped, stats, planned, style)?;
        }
        Ok(close + 1)
    }

    fn text_fast(&mut self, body: &mut [u8], open: usize, close: usize, stats: Stats, planned: PlannedColumn) {
        let content = open + 1;
        let profile = self.profile;
        let dictionary = &profile.dictionary;
        let Scratch { spans, views, .. } = &mut *self.scratch;
        spans.clear();
        let mut anchored = 0u32;
        self.cursor.collect(dictionary, body, content, close, &mut anchored, spans);
        let text = &body[content..close];
        // A percent escape of an ASCII byte has a digit (`%3D`, `%40`, `%20`); the dictionary's
        // words are looked for in decoded values whatever their escapes (`Jos%C3%A9`).
        if stats.at || stats.digits > 0 || anchored != 0 || !dictionary.is_empty() {
            detect_spans(profile, text, stats, anchored, spans, views);
        }
        if spans.is_empty() {
            return;
        }
        self.mask_spans(body, open, close, planned, anchored);
    }

    /// Masks the one match in a text cell without escapes: where it lies.
    #[inline(always)]
    fn mask_one(&mut self, body: &mut [u8], open: usize, close: usize, planned: PlannedColumn, span: Span) {
        debug_assert_eq!(planned.value_type, ValueType::Text);
        self.report.count(span.kinds);
        let (start, end) = (open + 1 + span.start, open + 1 + span.end);
        match span.style {
            Style::Null if planned.nullable && close - open + 1 >= 4 => write_null(body, open, close),
            Style::Full | Style::TypeValid | Style::Null => fill(&mut body[start..end], b'*'),
            Style::KeepLast(keep) => {
                let from = keep_from(body, start, end, keep);
                fill(&mut body[start..from], b'*');
            }
            Style::Token(index) => {
                let token = self.profile.token(index);
                if token.len() > end - start {
                    fill(&mut body[start..end], b'*');
                } else {
                    // The token, then the rest of the value moved left to it, then the
                    // closing quote and spaces where the value was longer.
                    body[start..start + token.len()].copy_from_slice(token);
                    body.copy_within(end..close, start + token.len());
                    close_early(body, close - (end - start - token.len()), close);
                }
            }
        }
    }

    /// Masks the spans found in a cell without escapes (in `Scratch::spans`, not empty), whose
    /// anchors found were `anchored`.
    fn mask_spans(&mut self, body: &mut [u8], open: usize, close: usize, planned: PlannedColumn, anchored: u32) {
        let content = open + 1;
        let profile = self.profile;
        if let [span] = self.scratch.spans[..]
            && planned.value_type == ValueType::Text
            && !borders_word(&body[content..close], &span)
        {
            self.mask_one(body, open, close, planned, span);
            return;
        }
        let Scratch { spans, views, .. } = &mut *self.scratch;
        settle_spans(profile, &body[content..close], anchored, spans, views);
        let spans = &self.scratch.spans;
        let kinds = spans.iter().fold(0, |k, s| k | s.kinds);
        self.report.count(kinds);
        let null = planned.nullable && close - open + 1 >= 4 && spans.iter().any(|s| s.style == Style::Null);
        if null {
            write_null(body, open, close);
            return;
        }
        if planned.value_type == ValueType::Json {
            let preview = &mut self.scratch.preview;
            masked_preview(profile, &body[content..close], spans, preview);
            if !is_json_text(preview) {
                let token = StrTok { open, close, escaped: false };
                // Not escaped: no decoding, so this cannot fail.
                let _ = mask_whole_string(profile, body, token, planned, Style::TypeValid, self.scratch);
                return;
            }
        }
        let shrinks =
            spans.iter().any(|s| matches!(s.style, Style::Token(t) if profile.token(t).len() < s.end - s.start));
        if !shrinks {
            apply_spans_fixed_len(profile, &mut body[content..close], spans);
            return;
        }
        let repls = &mut self.scratch.repls;
        plan_repls(profile, &body[content..close], None, spans, repls);
        rewrite(body, open, close, repls, profile);
    }

    fn text_escaped(
        &mut self,
        body: &mut [u8],
        open: usize,
        close: usize,
        planned: PlannedColumn,
    ) -> Result<(), MaskError> {
        let content = open + 1;
        let profile = self.profile;
        // Skip dictionary matches inside this cell: they were found on escaped bytes.
        self.cursor.advance_to(&profile.dictionary, body, close);
        let Scratch { spans, views, decoded, raw_of, repls, preview, .. } = &mut *self.scratch;
        decode_string(&body[content..close], decoded, raw_of)?;
        spans.clear();
        let mut anchored = 0u32;
        dictionary_spans(&profile.dictionary, decoded, &mut anchored, spans);
        detect_spans(profile, decoded, stats(decoded), anchored, spans, views);
        if spans.is_empty() {
            return Ok(());
        }
        settle_spans(profile, decoded, anchored, spans, views);
        let kinds = spans.iter().fold(0, |k, s| k | s.kinds);
        self.report.count(kinds);
        if planned.nullable && close - open + 1 >= 4 && spans.iter().any(|s| s.style == Style::Null) {
            write_null(body, open, close);
            return Ok(());
        }
        if planned.value_type == ValueType::Json {
            masked_preview(profile, decoded, spans, preview);
            if !is_json_text(preview) {
                let token = StrTok { open, close, escaped: true };
                return mask_whole_string(profile, body, token, planned, Style::TypeValid, self.scratch);
            }
        }
        plan_repls(profile, decoded, Some(raw_of), spans, repls);
        rewrite(body, open, close, repls, profile);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn card_in_number(
        &mut self,
        body: &mut [u8],
        open: usize,
        close: usize,
        escaped: bool,
        stats: Stats,
        planned: PlannedColumn,
        style: Style,
    ) -> Result<(), MaskError> {
        let content = open + 1;
        let mut hit = false;
        if escaped {
            let Scratch { decoded, raw_of, .. } = &mut *self.scratch;
            decode_string(&body[content..close], decoded, raw_of)?;
            if super::text::stats(decoded).digits >= 13 {
                DetectorKind::Card.find(decoded, &mut |_, _| hit = true);
            }
        } else if stats.digits >= 13 {
            DetectorKind::Card.find(&body[content..close], &mut |_, _| hit = true);
        }
        if hit {
            let style = if style == Style::Null { Style::Null } else { Style::TypeValid };
            self.mask_whole(body, open, close, escaped, planned, style)?;
            self.report.count(RuleKind::Detector(DetectorKind::Card).bit());
        }
        Ok(())
    }

    /// Masks a whole value with a style under its column's type.
    fn mask_whole(
        &mut self,
        body: &mut [u8],
        open: usize,
        close: usize,
        escaped: bool,
        planned: PlannedColumn,
        style: Style,
    ) -> Result<(), MaskError> {
        mask_whole_string(self.profile, body, StrTok { open, close, escaped }, planned, style, self.scratch)
    }
}

/// A null cell in [`Scratch::cells`].
const NULL_CELL: usize = usize::MAX;

/// What [`row_cells`] found.
enum Cells {
    /// The row is of the usual shape and ends before this offset; its cells are listed.
    Row(usize),
    /// Something else is there (whitespace, escapes, other values, another width...).
    Unusual,
    /// The row runs past the map.
    PastMap,
}

/// Lists the cells of the row at `start` (its `[`), if it has the usual shape: strings without
/// escapes or `null`s, separated by single commas, one for each of `cells`, then `]`.
#[inline(always)]
fn row_cells(map: &StructureMap, body: &[u8], start: usize, cells: &mut [(usize, usize)]) -> Cells {
    let Some((last, cells)) = cells.split_last_mut() else { return Cells::Unusual };
    let mut at = start + 1;
    if !map.covers(at) {
        return Cells::PastMap;
    }
    // Every quote from here on opens or closes a cell, in order: each cell's quotes come off
    // the map one after another, never waiting on the bytes read to check the shape.
    let mut quotes = map.quotes_from(at);
    for cell in cells {
        let after = match cell_at(&mut quotes, body, at, cell) {
            Ok(after) => after,
            Err(unusual) => return unusual,
        };
        match body.get(after) {
            Some(b',') => at = after + 1,
            Some(_) => return Cells::Unusual,
            None => return Cells::PastMap,
        }
    }
    let after = match cell_at(&mut quotes, body, at, last) {
        Ok(after) => after,
        Err(unusual) => return unusual,
    };
    match body.get(after) {
        Some(b']') => {}
        Some(_) => return Cells::Unusual,
        None => return Cells::PastMap,
    }
    let end = after + 1;
    if end > map.end() {
        return Cells::PastMap;
    }
    if map.any_backslash(start, end) {
        return Cells::Unusual;
    }
    Cells::Row(end)
}

/// Reads the value at `at` into `cell` (a string's quotes, or `NULL_CELL` for `null`);
/// returns the offset past it.
#[inline(always)]
fn cell_at(quotes: &mut Quotes<'_>, body: &[u8], at: usize, cell: &mut (usize, usize)) -> Result<usize, Cells> {
    match body.get(at) {
        Some(b'"') => {
            // The next quote is this one: every quote before it opened or closed a cell.
            let (Some(open), Some(close)) = (quotes.next(), quotes.next()) else { return Err(Cells::PastMap) };
            // Holds while the map matches the body; should it not, the byte walk takes the
            // row rather than pairing the wrong quotes (a cell left unmasked).
            if open != at {
                return Err(Cells::Unusual);
            }
            *cell = (open, close);
            Ok(close + 1)
        }
        Some(b'n') if body.get(at..at + 4) == Some(b"null") => {
            *cell = (NULL_CELL, NULL_CELL);
            Ok(at + 4)
        }
        _ => Err(Cells::Unusual),
    }
}

/// Masks a whole string value with a style under its column's type (shared with the envelope).
fn mask_whole_string(
    profile: &Profile,
    body: &mut [u8],
    token: StrTok,
    planned: PlannedColumn,
    style: Style,
    scratch: &mut Scratch,
) -> Result<(), MaskError> {
    let StrTok { open, close, escaped } = token;
    let content = open + 1;
    if style == Style::Null && planned.nullable && close - open + 1 >= 4 {
        write_null(body, open, close);
        return Ok(());
    }
    let Scratch { spans, decoded, raw_of, repls, .. } = scratch;
    // Stars or a token in JSON text (VARIANT, OBJECT, ARRAY) would not parse: those get a
    // type-valid value.
    let text_style =
        planned.value_type == ValueType::Text && matches!(style, Style::Full | Style::KeepLast(_) | Style::Token(_));
    if text_style {
        spans.clear();
        if escaped {
            decode_string(&body[content..close], decoded, raw_of)?;
            spans.push(Span { start: 0, end: decoded.len(), style, kinds: 0 });
            plan_repls(profile, decoded, Some(raw_of), spans, repls);
        } else {
            spans.push(Span { start: 0, end: close - content, style, kinds: 0 });
            plan_repls(profile, &body[content..close], None, spans, repls);
        }
        rewrite(body, open, close, repls, profile);
        return Ok(());
    }
    // A type-valid value (also for `null` where the column is not nullable).
    let value_type = if planned.value_type == ValueType::Text { ValueType::Text } else { planned.value_type };
    if escaped {
        decode_string(&body[content..close], decoded, raw_of)?;
        let len = decoded.len();
        body[content..content + len].copy_from_slice(decoded);
        let new_len = type_valid_text(value_type, &mut body[content..content + len]);
        // What a type-valid mask keeps (a TIMESTAMP_TZ offset) is decoded text now: a quote,
        // backslash or control character in it would end or break the string, so it becomes
        // `0` (an offset is digits; anything else was never a valid one).
        for byte in &mut body[content..content + new_len] {
            if *byte == b'"' || *byte == b'\\' || *byte < 0x20 {
                *byte = b'0';
            }
        }
        close_early(body, content + new_len, close);
    } else {
        let new_len = type_valid_text(value_type, &mut body[content..close]);
        close_early(body, content + new_len, close);
    }
    Ok(())
}

/// Turns spans (decoded offsets) into raw replacements. `raw_of` maps decoded offsets to raw
/// ones; `None` means the content has no escapes.
fn plan_repls(profile: &Profile, decoded: &[u8], raw_of: Option<&[u32]>, spans: &[Span], repls: &mut Vec<Repl>) {
    let raw = |d: usize| raw_of.map_or(d, |map| map[d] as usize);
    repls.clear();
    for span in spans {
        let decoded_len = span.end - span.start;
        let (stars, keep_decoded, token) = match span.style {
            Style::Full | Style::TypeValid | Style::Null => (decoded_len, span.end, None),
            Style::KeepLast(keep) => {
                let from = keep_from(decoded, span.start, span.end, keep);
                (from - span.start, from, None)
            }
            Style::Token(index) if profile.token(index).len() <= decoded_len => (0, span.end, Some(index)),
            Style::Token(_) => (decoded_len, span.end, None),
        };
        repls.push(Repl { start: raw(span.start), end: raw(span.end), stars, keep_from: raw(keep_decoded), token });
    }
}

/// Applies replacements to the string with quotes at `open` and `close`, compacting when the
/// content shrinks: the closing quote moves left and spaces fill the rest.
fn rewrite(body: &mut [u8], open: usize, close: usize, repls: &[Repl], profile: &Profile) {
    let content = open + 1;
    let mut write = content;
    let mut read = content;
    for repl in repls {
        let start = content + repl.start;
        if write != read {
            body.copy_within(read..start, write);
        }
        write += start - read;
        match repl.token {
            Some(index) => {
                let token = profile.token(index);
                body[write..write + token.len()].copy_from_slice(token);
                write += token.len();
            }
            None => {
                fill(&mut body[write..write + repl.stars], b'*');
                write += repl.stars;
                let (keep_start, keep_end) = (content + repl.keep_from, content + repl.end);
                if keep_start < keep_end {
                    if write != keep_start {
                        body.copy_within(keep_start..keep_end, write);
                    }
                    write += keep_end - keep_start;
                }
            }
        }
        read = content + repl.end;
    }
    if write != read {
        body.copy_within(read..close, write);
    }
    write += close - read;
    close_early(body, write, close);
}

// ---------------------------------------------------------------------------------------------
// The envelope.
// ---------------------------------------------------------------------------------------------

/// Skips one JSON value starting at `at` (after whitespace); returns the offset past it.
fn skip_value(body: &[u8], at: usize, depth: u32) -> Result<usize, MaskError> {
    if depth > DEPTH_MAX {
        return Err(MaskError::Limit { what: "JSON nesting depth" });
    }
    match body.get(at) {
        Some(b'"') => {
            let token = string_token(body, at)?;
            if token.escaped && !escapes_valid(&body[token.open + 1..token.close]) {
                return Err(bad(at, "invalid escape"));
            }
            Ok(token.close + 1)
        }
        Some(b'{') => {
            let mut p = skip_ws(body, at + 1);
            if body.get(p) == Some(&b'}') {
                return Ok(p + 1);
            }
            loop {
                p = string_token(body, p)?.close + 1;
                p = skip_ws(body, p);
                if body.get(p) != Some(&b':') {
                    return Err(bad(p, "expected ':'"));
                }
                p = skip_value(body, skip_ws(body, p + 1), depth + 1)?;
                p = skip_ws(body, p);
                match body.get(p) {
                    Some(b',') => p = skip_ws(body, p + 1),
                    Some(b'}') => return Ok(p + 1),
                    _ => return Err(bad(p, "expected ',' or '}'")),
                }
            }
        }
        Some(b'[') => {
            let mut p = skip_ws(body, at + 1);
            if body.get(p) == Some(&b']') {
                return Ok(p + 1);
            }
            loop {
                p = skip_value(body, p, depth + 1)?;
                p = skip_ws(body, p);
                match body.get(p) {
                    Some(b',') => p = skip_ws(body, p + 1),
                    Some(b']') => return Ok(p + 1),
                    _ => return Err(bad(p, "expected ',' or ']'")),
                }
            }
        }
        Some(b't') if body.get(at..at + 4) == Some(b"true") => Ok(at + 4),
        Some(b'f') if body.get(at..at + 5) == Some(b"false") => Ok(at + 5),
        Some(b'n') if body.get(at..at + 4) == Some(b"null") => Ok(at + 4),
        Some(b'-' | b'0'..=b'9') => number_end(body, at).ok_or_else(|| bad(at, "invalid number")),
        _ => Err(bad(at, "expected a JSON value")),
    }
}

/// The end of the number at `at`, per JSON's grammar: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn number_end(body: &[u8], at: usize) -> Option<usize> {
    let digits = |mut p: usize| {
        let start = p;
        while body.get(p).is_some_and(u8::is_ascii_digit) {
            p += 1;
        }
        (p > start).then_some(p)
    };
    let mut p = at + usize::from(body.get(at) == Some(&b'-'));
    p = match body.get(p) {
        Some(b'0') => p + 1,
        Some(b'1'..=b'9') => digits(p)?,
        _ => return None,
    };
    if body.get(p) == Some(&b'.') {
        p = digits(p + 1)?;
    }
    if matches!(body.get(p), Some(b'e' | b'E')) {
        p += 1;
        if matches!(body.get(p), Some(b'+' | b'-')) {
            p += 1;
        }
        p = digits(p)?;
    }
    Some(p)
}

/// Whether every escape in a string's raw content is one JSON allows.
fn escapes_valid(raw: &[u8]) -> bool {
    let mut i = 0;
    while let Some(offset) = memchr::memchr(b'\\', &raw[i..]) {
        let at = i + offset;
        match raw.get(at + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i = at + 2,
            Some(b'u') if hex_unit(raw, at + 2).is_some() => i = at + 6,
            _ => return false,
        }
    }
    true
}

/// Whether `text` is one JSON value (with whitespace around it): masked VARIANT, OBJECT and
/// ARRAY values must stay readable as JSON.
pub(crate) fn is_json_text(text: &[u8]) -> bool {
    let at = skip_ws(text, 0);
    matches!(skip_value(text, at, 0), Ok(end) if skip_ws(text, end) == text.len())
}

/// Whether a key token spells `name` once decoded.
fn key_is(body: &[u8], key: StrTok, name: &str) -> bool {
    let raw = &body[key.open + 1..key.close];
    if !key.escaped {
        return raw == name.as_bytes();
    }
    let (mut decoded, mut map) = (Vec::new(), Vec::new());
    decode_string(raw, &mut decoded, &mut map).is_ok() && decoded == name.as_bytes()
}

fn decoded_string(body: &[u8], token: StrTok) -> Result<String, MaskError> {
    let raw = &body[token.open + 1..token.close];
    if !token.escaped {
        return Ok(String::from_utf8_lossy(raw).into_owned());
    }
    let (mut decoded, mut map) = (Vec::new(), Vec::new());
    decode_string(raw, &mut decoded, &mut map)?;
    Ok(String::from_utf8_lossy(&decoded).into_owned())
}

fn number_value(body: &[u8], range: Range<usize>) -> Option<u64> {
    std::str::from_utf8(&body[range]).ok()?.parse().ok()
}

/// An object member: the key token and the value's range.
#[derive(Debug, Clone)]
struct Member {
    key: StrTok,
    value: Range<usize>,
}

/// What a member hook did with a value.
type Hooked = Result<Option<usize>, MaskError>;

/// Walks the object at `at`: for each member, `hook(body, key, value_start)` may handle the
/// value and return its end (`Some`), or leave it to be skipped (`None`). Returns the members
/// and the offset past the object.
fn walk_object(
    body: &mut [u8],
    at: usize,
    mut hook: impl FnMut(&mut [u8], StrTok, usize) -> Hooked,
) -> Result<(Vec<Member>, usize), MaskError> {
    if body.get(at) != Some(&b'{') {
        return Err(bad(at, "expected an object"));
    }
    let mut out = Vec::new();
    let mut p = skip_ws(body, at + 1);
    if body.get(p) == Some(&b'}') {
        return Ok((out, p + 1));
    }
    loop {
        let key = string_token(body, p)?;
        p = skip_ws(body, key.close + 1);
        if body.get(p) != Some(&b':') {
            return Err(bad(p, "expected ':'"));
        }
        let value_start = skip_ws(body, p + 1);
        let value_end = match hook(body, key, value_start)? {
            Some(end) => end,
            None => skip_value(body, value_start, 1)?,
        };
        out.push(Member { key, value: value_start..value_end });
        p = skip_ws(body, value_end);
        match body.get(p) {
            Some(b',') => p = skip_ws(body, p + 1),
            Some(b'}') => return Ok((out, p + 1)),
            _ => return Err(bad(p, "expected ',' or '}'")),
        }
    }
}

/// The members of the object at `at` (read only).
fn members(body: &[u8], at: usize) -> Result<(Vec<Member>, usize), MaskError> {
    if body.get(at) != Some(&b'{') {
        return Err(bad(at, "expected an object"));
    }
    let mut out = Vec::new();
    let mut p = skip_ws(body, at + 1);
    if body.get(p) == Some(&b'}') {
        return Ok((out, p + 1));
    }
    loop {
        let key = string_token(body, p)?;
        p = skip_ws(body, key.close + 1);
        if body.get(p) != Some(&b':') {
            return Err(bad(p, "expected ':'"));
        }
        let value_start = skip_ws(body, p + 1);
        let value_end = skip_value(body, value_start, 1)?;
        out.push(Member { key, value: value_start..value_end });
        p = skip_ws(body, value_end);
        match body.get(p) {
            Some(b',') => p = skip_ws(body, p + 1),
            Some(b'}') => return Ok((out, p + 1)),
            _ => return Err(bad(p, "expected ',' or '}'")),
        }
    }
}

fn unique<'m>(members: &'m [Member], body: &[u8], name: &str) -> Result<Option<&'m Member>, MaskError> {
    let mut found = None;
    for member in members {
        if key_is(body, member.key, name) {
            if found.is_some() {
                return Err(MaskError::upstream_json(member.key.open, "duplicate key in a result envelope"));
            }
            found = Some(member);
        }
    }
    Ok(found)
}

/// The statement handles a SQL API answer names: its `statementHandle`, then the
/// `statementHandles` of a multi-statement request's children, as sent (the caller checks
/// their shape). Read only; the answer must be one JSON object with each key at most once.
pub fn statement_handles(body: &[u8]) -> Result<Vec<String>, MaskError> {
    let (top, end) = members(body, skip_ws(body, 0))?;
    if skip_ws(body, end) != body.len() {
        return Err(bad(end, "trailing bytes after the JSON object"));
    }
    let mut handles = Vec::new();
    if let Some(handle) = unique(&top, body, "statementHandle")?
        && body.get(handle.value.start) == Some(&b'"')
    {
        handles.push(decoded_string(body, string_token(body, handle.value.start)?)?);
    }
    if let Some(children) = unique(&top, body, "statementHandles")?
        && body.get(children.value.start) == Some(&b'[')
    {
        // The array was checked whole by `members`: strings and commas until `]`.
        let mut p = skip_ws(body, children.value.start + 1);
        while body.get(p) == Some(&b'"') {
            let token = string_token(body, p)?;
            handles.push(decoded_string(body, token)?);
            p = skip_ws(body, token.close + 1);
            if body.get(p) == Some(&b',') {
                p = skip_ws(body, p + 1);
            }
        }
    }
    Ok(handles)
}

/// What masking a JSON object found.
pub(crate) struct JsonOutcome {
    pub(crate) format: ResultFormat,
    pub(crate) envelope: Option<Envelope>,
    pub(crate) plan: Option<ColumnPlan>,
}

/// The per-answer context: the profile and how to make plans for it.
pub(crate) struct MaskCtx<'a> {
    pub(crate) profile: &'a Profile,
    pub(crate) profile_id: u16,
    pub(crate) fingerprint: u64,
    /// How a column without a table is read ([`AnswerOf`]).
    pub(crate) answer_of: AnswerOf,
}

impl MaskCtx<'_> {
    /// The plan for an answer's columns, from its row type.
    pub(crate) fn plan(&self, columns: &[Column]) -> ColumnPlan {
        self.profile.plan(self.fingerprint, self.profile_id, columns, self.answer_of)
    }

    fn check(&self, plan: &ColumnPlan) -> Result<(), MaskError> {
        if plan.fingerprint != self.fingerprint || plan.profile != self.profile_id {
            return Err(MaskError::PlanMismatch);
        }
        Ok(())
    }

    fn walk_rows(
        &self,
        body: &mut [u8],
        at: usize,
        shape: RowsShape,
        plan: &ColumnPlan,
        scratch: &mut Scratch,
        report: &mut MaskReport,
    ) -> Result<usize, MaskError> {
        self.check(plan)?;
        RowsWalker::new(self.profile, &plan.columns, scratch, report).walk(body, at, shape)
    }
}

/// The plan in a SQL API `resultSetMetaData` object, refusing formats other than `jsonv2`.
fn metadata_plan(
    ctx: &MaskCtx<'_>,
    body: &mut [u8],
    at: usize,
    scratch: &mut Scratch,
    report: &mut MaskReport,
) -> Result<(ColumnPlan, usize), MaskError> {
    let (inner, end) = members(body, at)?;
    if let Some(format) = unique(&inner, body, "format")? {
        let token = string_token(body, format.value.start)?;
        if !key_is(body, token, "jsonv2") {
            return Err(MaskError::Unrecognized { what: "a SQL API result format other than jsonv2" });
        }
    }
    let row_type =
        unique(&inner, body, "rowType")?.ok_or(MaskError::upstream_json(at, "resultSetMetaData without rowType"))?;
    let plan = ctx.plan(&Column::from_rowtype_json(&body[row_type.value.clone()])?);
    mask_column_names(ctx.profile, body, row_type.value.start, scratch, report)?;
    Ok((plan, end))
}

/// Masks a JSON object body: a query answer (JSON or Arrow rows), a SQL API result, or a SQL
/// API partition (which needs the `given` plan). Objects without rows are left alone. Rows are
/// masked while the envelope is skimmed when their row type comes first (it does in
/// Snowflake's answers), so the rows are walked once.
pub(crate) fn mask_object(
    ctx: &MaskCtx<'_>,
    body: &mut [u8],
    at: usize,
    given: Option<&ColumnPlan>,
    scratch: &mut Scratch,
    report: &mut MaskReport,
) -> Result<JsonOutcome, MaskError> {
    let mut metadata_seen = false;
    let mut plan: Option<ColumnPlan> = None;
    let mut rows_masked = false;
    let mut query: Option<QueryData> = None;
    let (top, end) = walk_object(body, at, |body, key, value| {
        if key_is(body, key, "resultSetMetaData") && body.get(value) == Some(&b'{') {
            if metadata_seen {
                return Err(MaskError::upstream_json(key.open, "duplicate key in a result envelope"));
            }
            metadata_seen = true;
            let (metadata, end) = metadata_plan(ctx, body, value, scratch, report)?;
            plan = Some(metadata);
            return Ok(Some(end));
        }
        if !key_is(body, key, "data") {
            return Ok(None);
        }
        match body.get(value) {
            Some(b'[') => match &plan {
                Some(known) => {
                    let end = ctx.walk_rows(body, value, RowsShape::Array, known, scratch, report)?;
                    rows_masked = true;
                    Ok(Some(end))
                }
                None => Ok(None),
            },
            Some(b'{') => {
                let (data, end) = mask_query_data(ctx, body, value, given, scratch, report)?;
                query = Some(data);
                Ok(Some(end))
            }
            _ => Ok(None),
        }
    })?;
    if skip_ws(body, end) != body.len() {
        return Err(bad(end, "trailing bytes after the JSON object"));
    }
    let data = unique(&top, body, "data")?.cloned();
    unique(&top, body, "resultSetMetaData")?;
    if let Some(message) = unique(&top, body, "message")?
        && body.get(message.value.start) == Some(&b'"')
    {
        let token = string_token(body, message.value.start)?;
        mask_message(ctx.profile, body, token, scratch, report)?;
    }
    if let Some(query) = query {
        return Ok(JsonOutcome { format: query.format, envelope: Some(query.envelope), plan: query.plan });
    }
    match data {
        Some(data) if body.get(data.value.start) == Some(&b'[') => {
            // SQL API: rows in `data`; partitions carry no `resultSetMetaData`.
            let plan = match plan {
                Some(plan) => plan,
                None => given.cloned().ok_or(MaskError::ColumnsRequired)?,
            };
            if !rows_masked {
                ctx.walk_rows(body, data.value.start, RowsShape::Array, &plan, scratch, report)?;
            }
            let format = if metadata_seen { ResultFormat::SqlApi } else { ResultFormat::SqlApiPartition };
            Ok(JsonOutcome { format, envelope: None, plan: Some(plan) })
        }
        _ => Ok(JsonOutcome { format: ResultFormat::NoRows, envelope: None, plan: None }),
    }
}

/// Masks an answer's `message` (an error's, which may quote the value that failed: "Numeric
/// value '123-45-6789' is not recognized") or a column's name (which a dynamic `PIVOT` makes
/// of values) as free text: the dictionary and the detectors mask what they find; where the
/// profile has column rules, whose values no detector can tell, what lies in single quotes is
/// masked too (the agent still sees which error it was). See [`free_text_spans`].
fn mask_message(
    profile: &Profile,
    body: &mut [u8],
    token: StrTok,
    scratch: &mut Scratch,
    report: &mut MaskReport,
) -> Result<(), MaskError> {
    // What one pass masks can change what the next finds: a token ending in `]` before an
    // apostrophe (`v@example.com'` → `[EMAIL]'`) makes a quote that could not open a value
    // one that can. The message is masked again until a pass changes nothing, so that
    // masking stays idempotent; one still changing after a few passes is masked whole.
    const PASSES_MAX: usize = 4;
    let mut token = token;
    let mut kinds = 0;
    for _ in 0..PASSES_MAX {
        let before = body[token.open..=token.close].to_vec();
        let found = mask_message_once(profile, body, token, scratch)?;
        token = string_token(body, token.open)?;
        if body[token.open..=token.close] == before[..] {
            if kinds != 0 {
                report.count(kinds);
            }
            return Ok(());
        }
        kinds |= found;
    }
    fill(&mut body[token.open + 1..token.close], b'*');
    report.count(kinds | RuleKind::Column.bit());
    Ok(())
}

/// One pass of [`mask_message`]; returns the kinds of what it masked.
fn mask_message_once(
    profile: &Profile,
    body: &mut [u8],
    token: StrTok,
    scratch: &mut Scratch,
) -> Result<u32, MaskError> {
    let StrTok { open, close, .. } = token;
    let Scratch { spans, views, decoded, raw_of, repls, .. } = scratch;
    decode_string(&body[open + 1..close], decoded, raw_of)?;
    let anchored = free_text_spans(profile, decoded, spans, views);
    if spans.is_empty() {
        return Ok(0);
    }
    settle_spans(profile, decoded, anchored, spans, views);
    plan_repls(profile, decoded, Some(raw_of), spans, repls);
    rewrite(body, open, close, repls, profile);
    Ok(spans.iter().fold(0, |k, s| k | s.kinds))
}

/// A monitoring answer's `queries` (`GET /monitoring/queries/<id>`, which drivers read for a
/// query's status): each status's `errorMessage` may quote the value that failed, as an error
/// answer's `message` does, and is masked the same way. Returns the offset past the array.
fn mask_query_statuses(
    profile: &Profile,
    body: &mut [u8],
    at: usize,
    scratch: &mut Scratch,
    report: &mut MaskReport,
) -> Result<usize, MaskError> {
    mask_text_members(profile, body, at, "errorMessage", scratch, report)
}

/// A row type (`rowtype`, or the SQL API's `rowType`): the array of column descriptions at
/// `at`, whose `name`s are masked as free text ([`mask_message`]) once the plan has been made
/// from them: a dynamic `PIVOT` (`FOR email IN (ANY)`) names columns after the values it
/// finds. Returns the offset past the array.
fn mask_column_names(
    profile: &Profile,
    body: &mut [u8],
    at: usize,
    scratch: &mut Scratch,
    report: &mut MaskReport,
) -> Result<usize, MaskError> {
    mask_text_members(profile, body, at, "name", scratch, report)
}

/// The array of objects at `at`: each object's `name` member, when a string, is masked as free
/// text ([`mask_message`]); it may appear once in each. Returns the offset past the array.
fn mask_text_members(
    profile: &Profile,
    body: &mut [u8],
    at: usize,
    name: &str,
    scratch: &mut Scratch,
    report: &mut MaskReport,
) -> Result<usize, MaskError> {
    if body.get(at) != Some(&b'[') {
        return Err(bad(at, "expected an array"));
    }
    let mut p = skip_ws(body, at + 1);
    if body.get(p) == Some(&b']') {
        return Ok(p + 1);
    }
    loop {
        let end = if body.get(p) == Some(&b'{') {
            let (members, end) = walk_object(body, p, |body, key, value| {
                if key_is(body, key, name) && body.get(value) == Some(&b'"') {
                    let token = string_token(body, value)?;
                    mask_message(profile, body, token, scratch, report)?;
                    return Ok(Some(token.close + 1));
                }
                Ok(None)
            })?;
            unique(&members, body, name)?;
            end
        } else {
            skip_value(body, p, 2)?
        };
        p = skip_ws(body, end);
        match body.get(p) {
            Some(b',') => p = skip_ws(body, p + 1),
            Some(b']') => return Ok(p + 1),
            _ => return Err(bad(p, "expected ',' or ']'")),
        }
    }
}

struct QueryData {
    format: ResultFormat,
    envelope: Envelope,
    plan: Option<ColumnPlan>,
}

/// The `data` members of an answer that sends the driver to a stage itself (`GET`, `PUT`):
/// cloud credentials (`stageInfo`, and the `uploadInfo` the Go driver reads), the stage's
/// encryption keys, presigned URLs. Files moved so never pass
/// the gateway, which could neither mask nor record them.
const STAGE_ACCESS_KEYS: [&str; 5] = ["stageInfo", "uploadInfo", "encryptionMaterial", "presignedUrl", "presignedUrls"];

/// A query answer's `data` object: `rowtype`, `rowset` or `rowsetBase64`, chunks and keys.
fn mask_query_data(
    ctx: &MaskCtx<'_>,
    body: &mut [u8],
    at: usize,
    given: Option<&ColumnPlan>,
    scratch: &mut Scratch,
    report: &mut MaskReport,
) -> Result<(QueryData, usize), MaskError> {
    let mut plan: Option<ColumnPlan> = None;
    let mut rowtype_seen = false;
    let mut rowset_masked = false;
    let (data, end) = walk_object(body, at, |body, key, value| {
        if key_is(body, key, "rowtype") && body.get(value) == Some(&b'[') {
            if rowtype_seen {
                return Err(MaskError::upstream_json(key.open, "duplicate key in a result envelope"));
            }
            rowtype_seen = true;
            let end = skip_value(body, value, 1)?;
            plan = Some(ctx.plan(&Column::from_rowtype_json(&body[value..end])?));
            let masked_end = mask_column_names(ctx.profile, body, value, scratch, report)?;
            debug_assert_eq!(masked_end, end);
            return Ok(Some(end));
        }
        if key_is(body, key, "queries") && body.get(value) == Some(&b'[') {
            return mask_query_statuses(ctx.profile, body, value, scratch, report).map(Some);
        }
        if key_is(body, key, "rowset")
            && body.get(value) == Some(&b'[')
            && let Some(known) = &plan
        {
            let end = ctx.walk_rows(body, value, RowsShape::Array, known, scratch, report)?;
            rowset_masked = true;
            return Ok(Some(end));
        }
        Ok(None)
    })?;
    if data.iter().any(|m| STAGE_ACCESS_KEYS.iter().any(|&name| key_is(body, m.key, name))) {
        return Err(MaskError::StageAccess);
    }
    let rowset = unique(&data, body, "rowset")?.filter(|m| body.get(m.value.start) == Some(&b'['));
    let rowset_base64 = unique(&data, body, "rowsetBase64")?.filter(|m| body.get(m.value.start) == Some(&b'"'));
    unique(&data, body, "rowtype")?;
    if plan.is_none() {
        plan = given.cloned();
    }
    let mut format = ResultFormat::NoRows;
    if let Some(rowset) = rowset {
        let known = plan.as_ref().ok_or(MaskError::ColumnsRequired)?;
        if !rowset_masked {
            ctx.walk_rows(body, rowset.value.start, RowsShape::Array, known, scratch, report)?;
        }
        format = ResultFormat::QueryJson;
    }
    if let Some(base64) = rowset_base64 {
        let token = string_token(body, base64.value.start)?;
        if token.close > token.open + 1 {
            let known = plan.as_ref().ok_or(MaskError::ColumnsRequired)?;
            ctx.check(known)?;
            mask_rowset_base64(ctx, body, token, known, scratch, report)?;
            format = ResultFormat::QueryArrow;
        }
    }
    let envelope = envelope(body, at..end, &data)?;
    // Chunks are masked by this answer's plan: without one they could not be.
    if plan.is_none() && !envelope.chunks.is_empty() {
        return Err(MaskError::ColumnsRequired);
    }
    Ok((QueryData { format, envelope, plan }, end))
}

/// Decodes `rowsetBase64`, masks the Arrow stream, and encodes it back over the same bytes.
fn mask_rowset_base64(
    ctx: &MaskCtx<'_>,
    body: &mut [u8],
    token: StrTok,
    plan: &ColumnPlan,
    scratch: &mut Scratch,
    report: &mut MaskReport,
) -> Result<(), MaskError> {
    let content = token.open + 1..token.close;
    let mut ipc = std::mem::take(&mut scratch.base64);
    ipc.clear();
    let result = (|| {
        let text_len = if token.escaped {
            let Scratch { decoded, raw_of, .. } = &mut *scratch;
            decode_string(&body[content.clone()], decoded, raw_of)?;
            let len = decoded.len();
            body[content.start..content.start + len].copy_from_slice(decoded);
            len
        } else {
            content.len()
        };
        let text = content.start..content.start + text_len;
        let engine = if text_len % 4 == 0 { base64_simd::STANDARD } else { base64_simd::STANDARD_NO_PAD };
        engine
            .decode_append(&body[text.clone()], &mut ipc)
            .map_err(|_| MaskError::upstream_json(token.open, "rowsetBase64 is not base64"))?;
        if engine.encoded_length(ipc.len()) != text_len {
            return Err(MaskError::upstream_json(token.open, "rowsetBase64 is not canonical base64"));
        }
        arrow::mask_stream(ctx, &mut ipc, Some(plan), scratch, report)?;
        let _ = engine.encode(&ipc, base64_simd::Out::from_slice(&mut body[text.clone()]));
        close_early(body, text.end, content.end);
        Ok(())
    })();
    scratch.base64 = ipc;
    result
}

/// Reads what the proxy needs from a query answer's `data` members.
fn envelope(body: &[u8], data_object: Range<usize>, data: &[Member]) -> Result<Envelope, MaskError> {
    let string_of = |m: Option<&Member>| -> Result<Option<String>, MaskError> {
        match m {
            Some(m) if body.get(m.value.start) == Some(&b'"') => {
                Ok(Some(decoded_string(body, string_token(body, m.value.start)?)?))
            }
            _ => Ok(None),
        }
    };
    let member_range = |m: &Member| m.key.open..m.value.end;
    let qrmk = unique(data, body, "qrmk")?;
    let chunk_headers = unique(data, body, "chunkHeaders")?;
    let mut headers = Vec::new();
    if let Some(m) = chunk_headers.filter(|m| body.get(m.value.start) == Some(&b'{')) {
        let (inner, _) = members(body, m.value.start)?;
        for member in inner {
            let value = match body.get(member.value.start) {
                Some(b'"') => decoded_string(body, string_token(body, member.value.start)?)?,
                _ => String::from_utf8_lossy(&body[member.value.clone()]).into_owned(),
            };
            headers.push((decoded_string(body, member.key)?, value));
        }
    }
    let mut chunks = Vec::new();
    let chunks_member = unique(data, body, "chunks")?;
    if let Some(m) = chunks_member.filter(|m| body.get(m.value.start) == Some(&b'[')) {
        let mut p = skip_ws(body, m.value.start + 1);
        if body.get(p) != Some(&b']') {
            loop {
                let (fields, end) = members(body, p)?;
                let url = unique(&fields, body, "url")?.ok_or(MaskError::upstream_json(p, "a chunk without url"))?;
                let url_token = string_token(body, url.value.start)?;
                let number = |name: &str| -> Result<Option<u64>, MaskError> {
                    Ok(unique(&fields, body, name)?.and_then(|m| number_value(body, m.value.clone())))
                };
                chunks.push(ChunkRef {
                    url: decoded_string(body, url_token)?,
                    url_range: url_token.open..url_token.close + 1,
                    row_count: number("rowCount")?,
                    uncompressed_size: number("uncompressedSize")?,
                    compressed_size: number("compressedSize")?,
                });
                p = skip_ws(body, end);
                match body.get(p) {
                    Some(b',') => p = skip_ws(body, p + 1),
                    Some(b']') => break,
                    _ => return Err(bad(p, "expected ',' or ']' in chunks")),
                }
            }
        }
    }
    let number_of = |name: &str| -> Result<Option<u64>, MaskError> {
        Ok(unique(data, body, name)?.and_then(|m| number_value(body, m.value.clone())))
    };
    Ok(Envelope {
        query_result_format: string_of(unique(data, body, "queryResultFormat")?)?,
        total: number_of("total")?,
        returned: number_of("returned")?,
        chunks,
        qrmk: string_of(qrmk)?,
        qrmk_member: qrmk.map(member_range),
        chunk_headers: headers,
        chunk_headers_member: chunk_headers.map(member_range),
        body_len: body.len(),
        data_object,
        data_members: data.iter().map(member_range).collect(),
    })
}

/// Rebuilds a query answer with each chunk URL replaced (in order) and `qrmk` and
/// `chunkHeaders` removed, using the positions its [`Envelope`] recorded; `chunk_headers`,
/// when given, becomes the new `chunkHeaders` (headers the driver sends with every chunk
/// download: the gateway's own, never upstream's). Allocates the new body; runs once per answer.
pub fn rebuild_envelope(
    body: &[u8],
    envelope: &Envelope,
    chunk_urls: &[&str],
    chunk_headers: Option<&[(&str, &str)]>,
) -> Result<Vec<u8>, MaskError> {
    if body.len() != envelope.body_len {
        return Err(MaskError::EnvelopeMismatch);
    }
    if chunk_urls.len() != envelope.chunks.len() {
        return Err(MaskError::ChunkUrlCount);
    }
    let removed = |range: &Range<usize>| {
        envelope.qrmk_member.as_ref() == Some(range) || envelope.chunk_headers_member.as_ref() == Some(range)
    };
    let extra: usize = chunk_urls.iter().map(|u| u.len() + 8).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    out.extend_from_slice(&body[..envelope.data_object.start]);
    out.push(b'{');
    let mut urls = envelope.chunks.iter().zip(chunk_urls).peekable();
    let mut first = true;
    if let Some(headers) = chunk_headers {
        let map: serde_json::Map<String, serde_json::Value> =
            headers.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect();
        out.extend_from_slice(b"\"chunkHeaders\":");
        serde_json::to_writer(&mut out, &map).map_err(|_| MaskError::ChunkUrlCount)?;
        first = false;
    }
    for member in &envelope.data_members {
        if removed(member) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        let mut copied = member.start;
        while let Some((chunk, url)) = urls.peek() {
            if chunk.url_range.start >= member.end {
                break;
            }
            out.extend_from_slice(&body[copied..chunk.url_range.start]);
            serde_json::to_writer(&mut out, url).map_err(|_| MaskError::ChunkUrlCount)?;
            copied = chunk.url_range.end;
            urls.next();
        }
        out.extend_from_slice(&body[copied..member.end]);
    }
    out.push(b'}');
    out.extend_from_slice(&body[envelope.data_object.end..]);
    Ok(out)
}

/// Masks a JSON chunk (rows without enclosing brackets) with a plan.
pub(crate) fn mask_chunk(
    ctx: &MaskCtx<'_>,
    body: &mut [u8],
    plan: &ColumnPlan,
    scratch: &mut Scratch,
    report: &mut MaskReport,
) -> Result<(), MaskError> {
    ctx.walk_rows(body, 0, RowsShape::Chunk, plan, scratch, report)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_statement_handles_of_a_sql_api_answer() {
        let handles = |body: &str| statement_handles(body.as_bytes());
        let answer = r#" {"resultSetMetaData":{"rowType":[]},"data":[["a"]],"statementHandle":"h-1",
            "statementStatusUrl":"/api/v2/statements/h-1"} "#;
        assert_eq!(handles(answer).unwrap(), ["h-1"]);
        let multi = r#"{"statementHandle":"p","statementHandles":["c\u002d1", "c-2"],"code":"090001"}"#;
        assert_eq!(handles(multi).unwrap(), ["p", "c-1", "c-2"]);
        // Handles only at the top level, and only strings.
        assert!(handles(r#"{"data":{"statementHandle":"inner"},"statementHandle":7}"#).unwrap().is_empty());
        assert!(handles("{}").unwrap().is_empty());
        for refused in [
            r#"{"statementHandle":"a","statementHandle":"b"}"#,
            r#"{"statementHandle":"a"} trailing"#,
            r#"["statementHandle","a"]"#,
            r#"{"statementHandle":"a""#,
            "",
        ] {
            assert!(handles(refused).is_err(), "read: {refused}");
        }
    }

    #[test]
    fn decodes_escapes_with_raw_offsets() {
        let (mut out, mut map) = (Vec::new(), Vec::new());
        decode_string(br#"a\u0040b\n\u00e9\ud83d\ude00\udc00"#, &mut out, &mut map).unwrap();
        assert_eq!(String::from_utf8(out.clone()).unwrap(), "a@b\né😀\u{FFFD}");
        assert_eq!(&map[..4], [0, 1, 7, 8]);
        assert_eq!(map[4], 10);
        assert_eq!(map[5], 10);
        assert_eq!(map[6], 16);
        assert_eq!(*map.last().unwrap(), 34);
        assert!(decode_string(br#"\x"#, &mut out, &mut map).is_err());
        assert!(decode_string(br#"\u12"#, &mut out, &mut map).is_err());
    }

    #[test]
    fn scans_strings_with_stats() {
        let body = br#"abc@12""#;
        assert_eq!(scan_string(body, 0, true), Some((6, Stats { digits: 2, at: true })));
        let body = br#"0123456789012345678@x\"y""#;
        let (at, stats) = scan_string(body, 0, true).unwrap();
        assert_eq!((at, stats.digits, stats.at), (21, 19, true));
        assert_eq!(scan_string(b"nothing", 0, false), None);
    }

    #[test]
    fn skips_values_and_limits_depth() {
        let body = br#"{"a":[1,-2.5e3,true,false,null,"x\"y",{}],"b":{}} tail"#;
        assert_eq!(skip_value(body, 0, 0).unwrap(), 49);
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(matches!(skip_value(deep.as_bytes(), 0, 0), Err(MaskError::Limit { .. })));
        assert!(skip_value(b"[1,", 0, 0).is_err());
        for bad_number in ["01", "1.", "-", "1e", ".5", "1-2", "+1"] {
            assert!(!is_json_text(bad_number.as_bytes()), "{bad_number}");
        }
        for good in ["0", "-0.5e+3", " {\"a\":[1,\"\\u00e9\"]} ", "null"] {
            assert!(is_json_text(good.as_bytes()), "{good}");
        }
        assert!(!is_json_text(br#""\x""#));
        assert!(!is_json_text(b"{\"a\":1} x"));
        assert!(skip_value(b"tru", 0, 0).is_err());
    }
}
