//! How records look outside the gateway: the stable JSON export schema (documented in
//! `tools/README.md`; a field is never renamed or retyped, only added), the one-line human
//! form (recorded text escaped by `crate::terminal`), time as RFC 3339, and the key file.
//! Reads records only through `snowgate::record`.

use std::borrow::Cow;
use std::path::Path;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use snowgate::record::{Decision, Frame, Record};

use crate::terminal::{escape_text, quote_text};

/// The export schema's version, in every JSON line.
pub const SCHEMA: &str = "snowgate.record.v1";

/// Days since 1970-01-01 for a civil date (proleptic Gregorian).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2025-06-15T12:34:56.789012Z`.
pub fn rfc3339(unix_us: u64) -> String {
    let seconds = (unix_us / 1_000_000) as i64;
    let micros = unix_us % 1_000_000;
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Parses a time bound: Unix seconds, `YYYY-MM-DD`, or `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`.
pub fn parse_time(text: &str) -> anyhow::Result<u64> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(seconds.saturating_mul(1_000_000));
    }
    let bad = || anyhow::anyhow!("{text:?} is not a time (Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[.ffffff]Z)");
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z').ok_or_else(bad)?)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    // Four-digit years: the recording's times are Unix microseconds, and a year far out would
    // overflow them.
    let year: i64 = parts.next().filter(|p| p.len() == 4).and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let month: u32 = parts.next().and_then(|p| p.parse().ok()).filter(|m| (1..=12).contains(m)).ok_or_else(bad)?;
    let day: Option<u32> =
        parts.next().and_then(|p| p.parse().ok()).filter(|&d| d >= 1 && d <= days_in_month(year, month));
    let day = day.ok_or_else(bad)?;
    let mut micros_of_day: i64 = 0;
    if let Some(time) = time {
        let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
        let fields: Vec<i64> = clock.split(':').map(|f| f.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
        let [hours, minutes, seconds] = fields[..] else { return Err(bad()) };
        if !(0..24).contains(&hours) || !(0..60).contains(&minutes) || !(0..61).contains(&seconds) {
            return Err(bad());
        }
        if fraction.len() > 6 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let fraction_us: i64 = format!("{fraction:0<6}").parse().map_err(|_| bad())?;
        micros_of_day = ((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + fraction_us;
    }
    let micros = days_from_civil(year, month, day) * 86_400_000_000 + micros_of_day;
    u64::try_from(micros).map_err(|_| bad())
}

/// Days in a month of the proleptic Gregorian calendar.
fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Reads a 32-byte key: 64 hex digits (surrounding whitespace ignored) or 32 raw bytes.
pub fn read_key_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    let bytes = std::fs::read(path).with_context(|| format!("reading the key file {}", path.display()))?;
    if bytes.len() == 32 && std::str::from_utf8(&bytes).is_err() {
        return Ok(bytes.try_into().expect("32 bytes"));
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("the key file {} must hold 64 hex digits or 32 raw bytes", path.display());
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(key)
}

fn text(value: &Option<String>) -> Value {
    value.as_ref().map_or(Value::Null, |v| Value::String(v.clone()))
}

/// The export object for a record (schema [`SCHEMA`]); bodies only when asked.
pub fn to_json(record: &Record, with_bodies: bool) -> Value {
    let mut out = Map::new();
    let time = record.frame.time_unix_us();
    out.insert("schema".into(), json!(SCHEMA));
    out.insert("time".into(), json!(rfc3339(time)));
    out.insert("time_unix_us".into(), json!(time));
    out.insert("core".into(), json!(record.core_id));
    out.insert("segment".into(), json!(record.segment_sequence));
    out.insert("record".into(), json!(record.index));
    out.insert("kind".into(), json!(record.frame.kind_name()));
    let body = match &record.frame {
        Frame::Request(r) => {
            out.insert("endpoint".into(), json!(r.endpoint));
            out.insert("sub".into(), text(&r.principal.sub));
            out.insert("role".into(), text(&r.principal.role));
            out.insert("groups".into(), json!(r.principal.groups));
            out.insert("session_id".into(), json!(r.session_id));
            out.insert("request_id".into(), text(&r.request_id));
            out.insert("query_id".into(), text(&r.query_id));
            out.insert("statement".into(), text(&r.statement));
            out.insert("bindings".into(), text(&r.bindings));
            out.insert("agent_context".into(), text(&r.agent_context));
            out.insert("query_tag".into(), text(&r.query_tag));
            out.insert("decision".into(), json!(r.decision.name()));
            let (rule, approver, code) = match &r.decision {
                Decision::Allowed => (None, None, None),
                Decision::Blocked { rule } | Decision::Parked { rule } => (Some(rule), None, None),
                Decision::Approved { rule, approver } => (Some(rule), Some(approver), None),
                Decision::Refused { code } => (None, None, Some(code)),
            };
            out.insert("decision_rule".into(), json!(rule));
            out.insert("decision_approver".into(), json!(approver));
            out.insert("decision_code".into(), json!(code));
            out.insert("request_bytes".into(), json!(r.body.len()));
            Some(&r.body)
        }
        Frame::Response(r) => {
            out.insert("endpoint".into(), json!(r.endpoint));
            out.insert("request_record".into(), json!(r.request.as_ref().and_then(|l| l.record_index())));
            out.insert("query_id".into(), text(&r.query_id));
            out.insert("status".into(), json!(r.status));
            out.insert("code".into(), text(&r.code));
            out.insert("success".into(), json!(r.success));
            out.insert("rows".into(), json!(r.rows));
            out.insert("upstream_us".into(), json!(r.upstream_us));
            out.insert("total_us".into(), json!(r.total_us));
            out.insert("response_bytes".into(), json!(r.body.len()));
            Some(&r.body)
        }
        Frame::Event(e) => {
            out.insert("event".into(), json!(e.kind.name()));
            out.insert("detail".into(), json!(e.detail));
            None
        }
    };
    if with_bodies && let Some(body) = body {
        match std::str::from_utf8(body) {
            Ok(text) => out.insert("body".into(), json!(text)),
            Err(_) => out.insert("body_base64".into(), json!(base64::engine::general_purpose::STANDARD.encode(body))),
        };
    }
    Value::Object(out)
}

/// Cuts `text` to at most `max` characters, marking the cut.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// One line for a human. Every string the recording holds (what agents sent, and whatever a
/// damaged or forged recording says) goes through [`escape_text`] or [`quote_text`], so a
/// control or bidi character an agent chose shows as `\u{202e}` rather than acting on the terminal.
pub fn to_line(record: &Record) -> String {
    let head = format!(
        "{} core {} #{} {}",
        rfc3339(record.frame.time_unix_us()),
        record.core_id,
        record.index,
        record.frame.kind_name()
    );
    match &record.frame {
        Frame::Request(r) => {
            let sub = r.principal.sub.as_deref().map_or(Cow::Borrowed("-"), escape_text);
            let mut line = format!("{head} {} sub={sub}", escape_text(&r.endpoint));
            if let Some(role) = &r.principal.role {
                line.push_str(&format!(" role={}", escape_text(role)));
            }
            line.push_str(&format!(" decision={}", r.decision.name()));
            match &r.decision {
                Decision::Blocked { rule } | Decision::Parked { rule } => {
                    line.push_str(&format!(" rule={}", escape_text(rule)))
                }
                Decision::Approved { rule, approver } => {
                    line.push_str(&format!(" rule={} approver={}", escape_text(rule), escape_text(approver)))
                }
                Decision::Refused { code } => line.push_str(&format!(" code={}", escape_text(code))),
                Decision::Allowed => {}
            }
            for (name, value) in
                [("request_id", &r.request_id), ("query_id", &r.query_id), ("context", &r.agent_context)]
            {
                if let Some(value) = value {
                    line.push_str(&format!(" {name}={}", escape_text(&clip(value, 80))));
                }
            }
            if let Some(statement) = &r.statement {
                line.push_str(&format!(" statement={}", quote_text(&clip(statement, 200))));
            }
            line
        }
        Frame::Response(r) => {
            let request = r.request.as_ref().and_then(|l| l.record_index()).map_or("-".into(), |i| format!("#{i}"));
            let mut line = format!("{head} {} to={request} status={}", escape_text(&r.endpoint), r.status);
            if let Some(code) = &r.code {
                line.push_str(&format!(" code={}", escape_text(code)));
            }
            if let Some(success) = r.success {
                line.push_str(&format!(" success={success}"));
            }
            if let Some(rows) = r.rows {
                line.push_str(&format!(" rows={rows}"));
            }
            if let Some(query_id) = &r.query_id {
                line.push_str(&format!(" query_id={}", escape_text(query_id)));
            }
            line.push_str(&format!(" upstream_us={} total_us={} bytes={}", r.upstream_us, r.total_us, r.body.len()));
            line
        }
        Frame::Event(e) => format!("{head} {} {}", escape_text(e.kind.name()), quote_text(&e.detail)),
    }
}

#[cfg(test)]
mod tests {
    use snowgate::record::{EventFrame, EventKind, Principal, RequestFrame, ResponseFrame};

    use super::*;
    use crate::terminal::is_invisible_or_control;

    #[test]
    fn times_format_and_parse_both_ways() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(1_750_000_000_123_456), "2025-06-15T15:06:40.123456Z");
        assert_eq!(parse_time("2025-06-15T15:06:40.123456Z").unwrap(), 1_750_000_000_123_456);
        assert_eq!(parse_time("2024-02-29").unwrap(), 1_709_164_800_000_000);
        assert_eq!(parse_time("1750000000").unwrap(), 1_750_000_000_000_000);
        assert_eq!(parse_time("2025-06-15T15:06:40.5Z").unwrap(), 1_750_000_000_500_000);
        assert_eq!(parse_time("2000-02-29").unwrap(), 951_782_400_000_000);
        // Days a month does not have (they rolled over into the next), and years past four
        // digits (they overflowed the microseconds and wrapped to some other bound).
        for bad in ["2025-02-29", "2025-02-30", "1900-02-29", "2025-04-31", "300000-01-01", "99999999999-01-01"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        for bad in ["2025-13-01", "2025-06-15T25:00:00Z", "2025-06-15T15:06:40", "yesterday"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        for days in [-1000, 0, 59, 60, 19_000, 60_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn clipping_respects_characters() {
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("hi", 5), "hi");
    }

    fn record(frame: Frame) -> Record {
        Record { core_id: 0, segment_sequence: 1, batch_offset: 0, index: 7, encoded_bytes: 0, frame }
    }

    /// Terminal escapes (ESC, CSI U+009B), bidi override and isolate, zero-width space, DEL, newline.
    const BAD: &str = "\u{1b}[2J\u{9b}31m\u{202E}\u{2066}\u{200B}\u{7F}\n";
    const BAD_ESCAPED: &str = r"\u{1b}[2J\u{9b}31m\u{202e}\u{2066}\u{200b}\u{7f}\n";

    fn bad(name: &str) -> String {
        format!("{name}{BAD}")
    }

    fn hostile_request(decision: Decision) -> RequestFrame {
        RequestFrame {
            time_unix_us: 0,
            endpoint: bad("query-request").into(),
            principal: Principal { sub: Some(bad("sub")), role: Some(bad("role")), groups: vec![] },
            session_id: None,
            request_id: Some(bad("req")),
            query_id: Some(bad("qid")),
            statement: Some(format!("select \"x\\y\" héllo {BAD}")),
            bindings: None,
            agent_context: Some(bad("ctx")),
            query_tag: None,
            decision,
            body: bytes::Bytes::new(),
        }
    }

    #[test]
    fn human_lines_escape_every_string_the_recording_holds() {
        let approved = hostile_request(Decision::Approved { rule: bad("rule"), approver: bad("dba") });
        let response = ResponseFrame {
            time_unix_us: 0,
            endpoint: bad("query-request").into(),
            request: None,
            query_id: Some(bad("qid")),
            status: 200,
            code: Some(bad("code")),
            success: None,
            rows: None,
            upstream_us: 0,
            total_us: 0,
            body: bytes::Bytes::new(),
        };
        let frames = [
            Frame::Request(approved.clone()),
            Frame::Request(hostile_request(Decision::Refused { code: bad("code") })),
            Frame::Request(hostile_request(Decision::Parked { rule: bad("rule") })),
            Frame::Response(response),
            Frame::Event(EventFrame { time_unix_us: 0, kind: EventKind::Other(bad("kind")), detail: bad("why") }),
        ];
        for frame in frames {
            let line = to_line(&record(frame));
            assert!(!line.chars().any(is_invisible_or_control), "{line:?}");
            assert!(line.contains(BAD_ESCAPED), "{line}");
        }
        let line = to_line(&record(Frame::Request(approved)));
        for field in [
            "query-request",
            " sub=sub",
            " role=role",
            " rule=rule",
            " approver=dba",
            " request_id=req",
            " query_id=qid",
        ] {
            assert!(line.contains(&format!("{field}{BAD_ESCAPED} ")), "{field} in {line}");
        }
        assert!(line.contains(&format!(" context=ctx{BAD_ESCAPED} statement=")), "{line}");
        // The statement stays quoted as `{:?}` quoted it, with the bidi and format characters escaped too.
        assert!(line.ends_with(&format!(r#" statement="select \"x\\y\" héllo {BAD_ESCAPED}""#)), "{line}");
    }
}
