//! Which earlier results a request reads with `RESULT_SCAN`: the query ids it names, so the
//! gateway can check they were answered to the same identity (every agent is the gateway's one
//! Snowflake user, which may read any of its queries' results). Pure, on the policy's lexer.

use sqlparser::tokenizer::Token;

use super::lexer::{is_keyword, lex};
use super::model::{Limits, Refusal};

/// What a `RESULT_SCAN(…)` call reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanTarget {
    /// A query id given as a string literal.
    QueryId(String),
    /// `LAST_QUERY_ID(…)`: a query of the same session, so of the same identity.
    LastQueryId,
    /// Anything else (a variable, an expression): which result it reads cannot be known before
    /// it runs.
    Unknown,
}

/// Whether `text` may call `RESULT_SCAN` at all (a cheap test before lexing): the word
/// `result_scan`, in any case, somewhere in it.
pub fn may_scan_results(text: &str) -> bool {
    const WORD: &[u8] = b"result_scan";
    let bytes = text.as_bytes();
    memchr::memchr_iter(b'_', bytes)
        .any(|at| at >= 6 && bytes.get(at - 6..at - 6 + WORD.len()).is_some_and(|w| w.eq_ignore_ascii_case(WORD)))
}

/// Every `RESULT_SCAN(…)` call in `text`, by what it reads.
pub fn scan_targets(text: &str, limits: &Limits) -> Result<Vec<ScanTarget>, Refusal> {
    let lexed = lex(text, limits)?;
    let tokens: Vec<&Token> = lexed.significant.iter().map(|&i| &lexed.tokens[i].token).collect();
    let mut targets = Vec::new();
    for (at, token) in tokens.iter().enumerate() {
        if !is_keyword(token, "RESULT_SCAN") || tokens.get(at + 1) != Some(&&Token::LParen) {
            continue;
        }
        let target = match (tokens.get(at + 2), tokens.get(at + 3)) {
            (Some(Token::SingleQuotedString(id)), Some(Token::RParen)) => ScanTarget::QueryId(id.clone()),
            (Some(word), Some(Token::LParen)) if is_keyword(word, "LAST_QUERY_ID") => ScanTarget::LastQueryId,
            _ => ScanTarget::Unknown,
        };
        targets.push(target);
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QID: &str = "01b2c3d4-0000-4000-8000-00000000000a";

    fn targets(text: &str) -> Vec<ScanTarget> {
        scan_targets(text, &Limits::default()).unwrap()
    }

    #[test]
    fn finds_what_each_result_scan_reads() {
        let text = format!(
            "select * from table(result_scan('{QID}')) join table(RESULT_SCAN(last_query_id(-2))) \
             join table(Result_Scan($q))"
        );
        assert!(may_scan_results(&text));
        assert_eq!(targets(&text), [ScanTarget::QueryId(QID.into()), ScanTarget::LastQueryId, ScanTarget::Unknown]);
        assert_eq!(targets(&format!("select * from table(result_scan('{QID}' || ''))")), [ScanTarget::Unknown]);
    }

    #[test]
    fn strings_comments_and_names_are_not_calls() {
        for text in [
            "select 'result_scan(x)'",
            "select 1 -- result_scan('x')",
            "select 1 /* result_scan('x') */",
            "select \"RESULT_SCAN\" from t",
            "select result_scan from t",
        ] {
            assert!(targets(text).is_empty(), "{text}");
        }
        assert!(!may_scan_results("select 1 from t_scan"));
        assert!(!may_scan_results("select 1"));
        assert!(may_scan_results("SELECT RESULT_SCAN"));
    }
}
