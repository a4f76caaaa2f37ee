//! Printing text that agents chose: which characters can drive a terminal or change how the
//! text around them reads, JSON output with those characters escaped as `\uXXXX`, and plain
//! text with them escaped as `\u{202e}` ([`escape_text`], [`quote_text`]).
//!
//! `serde_json` escapes only `"`, `\` and U+0000–U+001F; DEL, the C1 controls (U+009B is a
//! CSI on some terminals), bidirectional overrides and isolates, and zero-width characters
//! pass through raw. [`to_json_line`] and [`to_json_pretty`] escape those as well: the output
//! is still JSON and decodes to the same values, so scripts (and a SIEM) read what they read
//! before, while a reviewer's terminal shows `\u202e` instead of reordering the line.
//!
//! Plain-text output (`cat`, `search`, `stats`, `verify`, the `approvals` table, error messages)
//! passes every string a recording or an agent chose through [`escape_text`] (or [`quote_text`]
//! for a quoted statement): ESC, CSI (U+009B), bidi overrides and the like show as `\u{1b}`,
//! `\u{9b}`, `\u{202e}`, newlines, tabs and carriage returns as `\n`, `\t`, `\r`, and all other
//! text (any script, emoji, a literal backslash) is printed as it is.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Serialize;

/// Whether `c` is a control character (C0, DEL, C1) or an invisible format character:
/// bidirectional marks, embeddings, overrides and isolates, zero-width characters, line and
/// paragraph separators, tag characters and the other characters of Unicode category Cf.
/// Agents choose statement text, bindings and context, so one could make a line read otherwise.
pub fn is_invisible_or_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
        )
}

/// Whether a character of serialised JSON must be escaped. Below U+0020 nothing is: inside
/// strings `serde_json` has escaped those already, so a raw one is the layout's whitespace.
fn needs_escape(c: char) -> bool {
    u32::from(c) >= 0x7F && is_invisible_or_control(c)
}

/// `json` (as `serde_json` wrote it) with every invisible or control character from U+007F up
/// written as `\uXXXX` (a surrogate pair above U+FFFF). Such characters can only stand inside
/// strings (outside them JSON has only ASCII punctuation, literals, numbers and whitespace), so
/// the result is valid JSON of the same value.
pub fn escape_json(json: &str) -> Cow<'_, str> {
    let Some(first) = json.find(needs_escape) else { return Cow::Borrowed(json) };
    let mut out = String::with_capacity(json.len() + 16);
    out.push_str(&json[..first]);
    for c in json[first..].chars() {
        if needs_escape(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(out, "\\u{unit:04x}").expect("writing to a String");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Appends `c` as a human reads it: itself, or, when it is a control or invisible character, a
/// visible escape (`\n`, `\r`, `\t`, otherwise `\u{hex}` as in Rust source).
fn push_visible(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if is_invisible_or_control(c) => write!(out, "{}", c.escape_unicode()).expect("writing to a String"),
        c => out.push(c),
    }
}

/// `text` safe to print to a terminal in plain-text output: every control or invisible
/// character (see [`is_invisible_or_control`]) replaced by a visible escape (`\u{1b}`,
/// `\u{202e}`, `\n`), so the text stays on its line, reads as it is stored, and cannot drive
/// the terminal. Everything else, non-ASCII letters included, is unchanged (borrowed when
/// nothing needed escaping). The one function for agent- or recording-controlled text outside
/// JSON.
pub fn escape_text(text: &str) -> Cow<'_, str> {
    let Some(first) = text.find(is_invisible_or_control) else { return Cow::Borrowed(text) };
    let mut out = String::with_capacity(text.len() + 16);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        push_visible(&mut out, c);
    }
    Cow::Owned(out)
}

/// `text` in double quotes, escaped as [`escape_text`] does, with `"` and `\` escaped as well
/// so the quoted text ends where it seems to (as Rust's `{:?}` quotes a string, but with bidi
/// and other format characters escaped too).
pub fn quote_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => push_visible(&mut out, c),
        }
    }
    out.push('"');
    out
}

/// `value` as compact JSON on one line (no newline), safe to print to a terminal.
pub fn to_json_line<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let json = serde_json::to_string(value)?;
    Ok(match escape_json(&json) {
        Cow::Borrowed(_) => json,
        Cow::Owned(escaped) => escaped,
    })
}

/// `value` as indented JSON, safe to print to a terminal.
pub fn to_json_pretty<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let json = serde_json::to_string_pretty(value)?;
    Ok(match escape_json(&json) {
        Cow::Borrowed(_) => json,
        Cow::Owned(escaped) => escaped,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// Every character the review named, and more of the same kinds.
    const HOSTILE: &[char] = &[
        '\u{7F}',
        '\u{80}',
        '\u{85}',
        '\u{9B}',
        '\u{9F}',
        '\u{AD}',
        '\u{61C}',
        '\u{200B}',
        '\u{200C}',
        '\u{200D}',
        '\u{200E}',
        '\u{200F}',
        '\u{2028}',
        '\u{2029}',
        '\u{202A}',
        '\u{202B}',
        '\u{202C}',
        '\u{202D}',
        '\u{202E}',
        '\u{2060}',
        '\u{2066}',
        '\u{2067}',
        '\u{2068}',
        '\u{2069}',
        '\u{FEFF}',
        '\u{E0001}',
        '\u{E0041}',
        '\u{E007F}',
    ];

    fn hostile_value() -> Value {
        let text: String = HOSTILE.iter().flat_map(|c| ['a', *c]).chain("\u{1b}[31m\n\t\"\\z".chars()).collect();
        json!({
            "pending": [{
                "statement_text": format!("delete from t where 1=1 \u{202E}-- safe\u{202C}{text}"),
                "bindings": "{\"1\":{\"type\":\"TEXT\",\"value\":\"\u{9B}2J\"}}",
                "agent_context": text,
                "settings": {"role\u{2066}": "ANALYST\u{7F}"},
                "age_ms": 65000,
            }],
            "plain": "héllo → 世界 🦀",
        })
    }

    fn assert_safe(output: &str) {
        for c in output.chars() {
            assert!(!is_invisible_or_control(c) || matches!(c, '\n' | ' '), "raw {:?} in {output}", c);
        }
    }

    #[test]
    fn json_output_escapes_invisible_and_control_characters_and_round_trips() {
        let value = hostile_value();
        let line = to_json_line(&value).unwrap();
        assert_safe(&line);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(r"\u202e") && line.contains(r"\u009b") && line.contains(r"\u007f"), "{line}");
        assert!(line.contains(r"\udb40\udc01"), "a tag character is a surrogate pair: {line}");
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), value);

        let pretty = to_json_pretty(&value).unwrap();
        assert_safe(&pretty);
        assert_eq!(serde_json::from_str::<Value>(&pretty).unwrap(), value);
        // Each hostile character on its own, in a key and in a value.
        for c in HOSTILE {
            let value = json!({ format!("k{c}"): format!("v{c}") });
            let line = to_json_line(&value).unwrap();
            assert_safe(&line);
            assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), value, "{c:?}");
        }
    }

    #[test]
    fn json_without_such_characters_is_unchanged() {
        let value = json!({"a": "héllo → 世界 🦀", "b": [1, 2.5, null, true], "c": "tab\tline\n"});
        assert_eq!(to_json_line(&value).unwrap(), serde_json::to_string(&value).unwrap());
        assert_eq!(to_json_pretty(&value).unwrap(), serde_json::to_string_pretty(&value).unwrap());
        assert!(matches!(escape_json("{\"a\":\"é\"}"), Cow::Borrowed(_)));
    }

    #[test]
    fn plain_text_escapes_every_invisible_or_control_character_visibly() {
        for c in HOSTILE.iter().copied().chain(['\u{0}', '\u{1b}', '\u{7}', '\u{8}']) {
            let text = format!("a{c}b");
            let escaped = escape_text(&text);
            assert_safe(&escaped);
            assert!(!escaped.contains('\n'), "{escaped}");
            assert_eq!(escaped, format!("a\\u{{{:x}}}b", u32::from(c)), "{c:?}");
            let quoted = quote_text(&text);
            assert_safe(&quoted);
            assert_eq!(quoted, format!("\"{escaped}\""), "{c:?}");
        }
        assert_eq!(escape_text("\u{1b}[31mred\u{9b}2J"), r"\u{1b}[31mred\u{9b}2J");
        assert_eq!(escape_text("delete \u{202E}1=1 erehw\u{202C}"), r"delete \u{202e}1=1 erehw\u{202c}");
        assert_eq!(escape_text("line\none\r\ttab"), r"line\none\r\ttab");
        assert_eq!(escape_text("\u{E0041}"), r"\u{e0041}");
        let text: String = HOSTILE.iter().flat_map(|c| ['x', *c]).chain("\u{1b}[2J\n\t".chars()).collect();
        assert_safe(&escape_text(&text));
        assert_safe(&quote_text(&text));
    }

    #[test]
    fn plain_text_without_such_characters_is_unchanged() {
        for text in ["", "agent-7", "héllo → 世界 🦀", "ANALYST", r"CORP\alice said \u{202e}", "العربية עברית"]
        {
            assert!(matches!(escape_text(text), Cow::Borrowed(t) if t == text), "{text}");
        }
        // Quoted: only `"` and `\` gain a backslash, as in Rust's `{:?}` of the same text.
        for text in ["select * from t where a = 'x'", r#"say "hi" \ bye"#, "héllo → 世界 🦀"] {
            assert_eq!(quote_text(text), format!("{text:?}"));
        }
    }
}
