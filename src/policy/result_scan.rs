//! Which earlier results a request reads, with `RESULT_SCAN(…)` or `DESCRIBE RESULT …`: the
//! query ids it names, so the gateway can check they were answered to the same identity (every
//! agent is the gateway's one Snowflake user, which may read any of its queries' results).
//! Pure, on the policy's lexer.
//!
//! Every token of the request is looked at, and the text of every `EXECUTE IMMEDIATE` literal
//! in it (as deep as the classifier reads them). The classifier's own query-result actions
//! are checked against what that finds: an id only the classifier saw is added, and a result
//! it could not name, where none was found here, is [`ScanTarget::Unknown`].

use sqlparser::tokenizer::Token;

use super::classify::escapes_decode_alike;
use super::lexer::{Lexed, is_keyword, lex};
use super::model::{Classified, Limits, ObjectName, ObjectType, Refusal};
use super::names::canonical_word;

/// What a `RESULT_SCAN(…)` call or a `DESCRIBE RESULT` reads.
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

/// Whether `text` may read an earlier result at all (a cheap test before lexing, true for
/// every text in which [`scan_targets`] finds something): the word `result_scan` somewhere in
/// it, or `desc` or `describe` followed by `result` with only whitespace and comments between
/// them, in any case.
pub fn may_scan_results(text: &str) -> bool {
    contains_ignoring_case(text, b"result_scan") || describes_a_result(text.as_bytes())
}

/// Whether `DESC` or `DESCRIBE`, then whitespace and comments (`--`, `//`, `/* */`; an
/// unclosed one counts as a yes), then `RESULT` appear in `text`, in any case. Every `desc` is
/// looked at, inside strings and comments too (a superset of what the lexer finds), in time
/// linear in the text: an agent's statement is read on its core.
fn describes_a_result(text: &[u8]) -> bool {
    let mut walk = Walk::new(text);
    memchr::memchr2_iter(b'd', b'D', text).any(|at| {
        if !walk.starts(at, b"desc") {
            return false;
        }
        walk.leads_to_result(at + if walk.starts(at, b"describe") { 8 } else { 4 })
    })
}

/// The walks from each `desc` over whitespace and comments, sharing what earlier walks found:
/// many `desc`s before one long comment (or one long run of comments) would otherwise each
/// read it again, quadratic in the text.
struct Walk<'t> {
    text: &'t [u8],
    /// Where walks through a comment's end went on to: whether they reached `RESULT`.
    known: std::collections::HashMap<usize, bool>,
    /// The last search for `*/` and for a newline: where it started, where it found one.
    block_end: Option<(usize, Option<usize>)>,
    line_end: Option<(usize, Option<usize>)>,
    /// Comment ends the current walk passed, to note its outcome for.
    passed: Vec<usize>,
    /// Bytes the searches read, for the tests.
    searched: usize,
}

impl<'t> Walk<'t> {
    fn new(text: &'t [u8]) -> Walk<'t> {
        Walk {
            text,
            known: std::collections::HashMap::new(),
            block_end: None,
            line_end: None,
            passed: Vec::new(),
            searched: 0,
        }
    }

    fn starts(&self, at: usize, word: &[u8]) -> bool {
        self.text.get(at..at + word.len()).is_some_and(|w| w.eq_ignore_ascii_case(word))
    }

    /// Whether whitespace and comments from `at` lead to `RESULT`.
    fn leads_to_result(&mut self, mut at: usize) -> bool {
        self.passed.clear();
        let outcome = loop {
            while self.text.get(at).is_some_and(u8::is_ascii_whitespace) {
                at += 1;
            }
            let next = if self.starts(at, b"/*") {
                match self.find(at + 2, Search::BlockEnd) {
                    Some(end) => end + 2,
                    None => break true,
                }
            } else if self.starts(at, b"--") || self.starts(at, b"//") {
                match self.find(at + 2, Search::LineEnd) {
                    Some(end) => end + 1,
                    None => break false,
                }
            } else {
                break self.starts(at, b"result");
            };
            if let Some(&known) = self.known.get(&next) {
                break known;
            }
            self.passed.push(next);
            at = next;
        };
        for &end in &self.passed {
            self.known.insert(end, outcome);
        }
        outcome
    }

    /// Where the first `*/` or newline at or after `from` starts. A search from inside the span
    /// the last one read has its answer.
    fn find(&mut self, from: usize, search: Search) -> Option<usize> {
        let cache = match search {
            Search::BlockEnd => &mut self.block_end,
            Search::LineEnd => &mut self.line_end,
        };
        if let Some((started, found)) = *cache
            && from >= started
            && found.is_none_or(|found| from <= found)
        {
            return found;
        }
        let rest = self.text.get(from..).unwrap_or_default();
        let found = match search {
            Search::BlockEnd => memchr::memmem::find(rest, b"*/"),
            Search::LineEnd => memchr::memchr(b'\n', rest),
        };
        self.searched += found.map_or(rest.len(), |at| at + 1);
        let found = found.map(|at| from + at);
        *cache = Some((from, found));
        found
    }
}

#[derive(Clone, Copy)]
enum Search {
    BlockEnd,
    LineEnd,
}

/// Whether `text` holds `word` (lower-case ASCII), in any case.
fn contains_ignoring_case(text: &str, word: &[u8]) -> bool {
    let bytes = text.as_bytes();
    let Some(&first) = word.first() else { return true };
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), bytes)
        .any(|at| bytes.get(at..at + word.len()).is_some_and(|w| w.eq_ignore_ascii_case(word)))
}

/// Whether `token` names the `RESULT_SCAN` built-in: unquoted in any case, or quoted in upper
/// case (Snowflake resolves `"RESULT_SCAN"` to the built-in too).
pub(crate) fn is_result_scan(token: &Token) -> bool {
    matches!(token, Token::Word(word) if canonical_word(word) == "RESULT_SCAN")
}

/// What a `RESULT_SCAN(` or `DESCRIBE RESULT` reads, from its argument's first token `arg`, the
/// token after it, and whether the argument ends after `arg` (`arg_ends`).
pub(crate) fn read_target(arg: Option<&Token>, next: Option<&Token>, arg_ends: bool) -> ScanTarget {
    match (arg, next) {
        (Some(Token::SingleQuotedString(id)), _) if arg_ends => ScanTarget::QueryId(id.clone()),
        (Some(word), Some(Token::LParen)) if is_keyword(word, "LAST_QUERY_ID") => ScanTarget::LastQueryId,
        _ => ScanTarget::Unknown,
    }
}

/// The results a classification reads: by id where the classifier names one, else
/// [`ScanTarget::Unknown`] (`LAST_QUERY_ID()` and a variable look alike to it).
fn classified_targets(classified: &Classified) -> impl Iterator<Item = ScanTarget> + '_ {
    classified
        .statements
        .iter()
        .flat_map(|statement| &statement.actions)
        .filter_map(|action| action.object.as_ref().filter(|o| o.object_type == ObjectType::QueryResult))
        .map(|object| match &object.name {
            ObjectName::Flat(id) => ScanTarget::QueryId(id.clone()),
            _ => ScanTarget::Unknown,
        })
}

/// Every earlier result `text` reads, by what it reads: what its tokens say, and what its
/// classification (`classified`, of this text) names that they do not.
pub fn scan_targets(text: &str, limits: &Limits, classified: &Classified) -> Result<Vec<ScanTarget>, Refusal> {
    let mut targets = lexical_targets(text, limits, 0)?;
    // The lexer tells LAST_QUERY_ID() from a variable; the classifier's unnamed result is one
    // of those the lexer already saw.
    let lexer_saw_unnamed = targets.iter().any(|t| !matches!(t, ScanTarget::QueryId(_)));
    for target in classified_targets(classified) {
        if (target == ScanTarget::Unknown && lexer_saw_unnamed) || targets.contains(&target) {
            continue;
        }
        targets.push(target);
    }
    Ok(targets)
}

/// The targets found in the tokens of `text`, and in the `EXECUTE IMMEDIATE` literals it holds
/// (`depth` of them deep already).
fn lexical_targets(text: &str, limits: &Limits, depth: usize) -> Result<Vec<ScanTarget>, Refusal> {
    let lexed = lex(text, limits)?;
    let tokens: Vec<&Token> = lexed.significant.iter().map(|&i| &lexed.tokens[i].token).collect();
    let mut targets = Vec::new();
    for (at, token) in tokens.iter().enumerate() {
        let after = |offset: usize| tokens.get(at + offset).copied();
        if is_result_scan(token) && after(1) == Some(&Token::LParen) {
            targets.push(read_target(after(2), after(3), after(3) == Some(&Token::RParen)));
        } else if (is_keyword(token, "DESC") || is_keyword(token, "DESCRIBE"))
            && after(1).is_some_and(|t| is_keyword(t, "RESULT"))
        {
            targets.push(read_target(after(2), after(3), matches!(after(3), None | Some(Token::SemiColon))));
        } else if is_keyword(token, "IMMEDIATE")
            && at > 0
            && is_keyword(tokens[at - 1], "EXECUTE")
            && let Some(inner) = executed_literal(&lexed, at + 1)
            && may_scan_results(inner)
        {
            if depth + 1 > limits.execute_immediate_depth_max {
                targets.push(ScanTarget::Unknown);
            } else {
                match lexical_targets(inner, limits, depth + 1) {
                    Ok(inner_targets) => targets.extend(inner_targets),
                    Err(_) => targets.push(ScanTarget::Unknown),
                }
            }
        }
    }
    Ok(targets)
}

/// The text a literal at significant index `at` holds, when the classifier reads it as the
/// text `EXECUTE IMMEDIATE` runs: a string whose escapes sqlparser decodes as Snowflake does,
/// or an untagged `$$` string. (Any other literal is unknown to the classifier, so denied.)
fn executed_literal<'t>(lexed: &'t Lexed<'_>, at: usize) -> Option<&'t str> {
    let token_idx = *lexed.significant.get(at)?;
    match &lexed.tokens[token_idx].token {
        Token::SingleQuotedString(text) if escapes_decode_alike(&lexed.text[lexed.token_bytes(token_idx)]) => {
            Some(text)
        }
        Token::DollarQuotedString(quoted) if quoted.tag.is_none() => Some(&quoted.value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify::classify;

    const QID: &str = "01b2c3d4-0000-4000-8000-00000000000a";

    fn targets(text: &str) -> Vec<ScanTarget> {
        let limits = Limits::default();
        scan_targets(text, &limits, &classify(text, &limits)).unwrap()
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
    fn a_quoted_upper_case_result_scan_is_the_builtin() {
        let text = format!("SELECT * FROM TABLE(\"RESULT_SCAN\"('{QID}'))");
        assert!(may_scan_results(&text));
        assert_eq!(targets(&text), [ScanTarget::QueryId(QID.into())]);
        // Quoted in lower case it is another function, which the policy decides.
        assert!(targets("select * from table(\"result_scan\"('x'))").is_empty());
    }

    #[test]
    fn describe_result_reads_a_result() {
        assert_eq!(targets(&format!("desc result '{QID}'")), [ScanTarget::QueryId(QID.into())]);
        assert_eq!(targets("DESCRIBE RESULT LAST_QUERY_ID()"), [ScanTarget::LastQueryId]);
        assert_eq!(targets("describe result $q"), [ScanTarget::Unknown]);
        assert!(may_scan_results(&format!("DESC RESULT '{QID}'")));
    }

    #[test]
    fn results_read_inside_execute_immediate_are_found() {
        let quoted = format!("execute immediate 'select * from table(result_scan(''{QID}''))'");
        assert_eq!(targets(&quoted), [ScanTarget::QueryId(QID.into())]);
        let dollar = format!("EXECUTE IMMEDIATE $$desc result '{QID}'$$");
        assert_eq!(targets(&dollar), [ScanTarget::QueryId(QID.into())]);
        // A block: the statement's own LAST_QUERY_ID does not hide the inner variable.
        let block = "begin select * from table(result_scan(last_query_id())); \
                     execute immediate 'select * from table(result_scan($q))'; end";
        assert_eq!(targets(block), [ScanTarget::LastQueryId, ScanTarget::Unknown]);
        let wrap = |text: String| format!("execute immediate '{}'", text.replace('\'', "''"));
        let mut nested = format!("select * from table(result_scan('{QID}'))");
        for _ in 0..3 {
            nested = wrap(nested);
        }
        assert_eq!(targets(&nested), [ScanTarget::QueryId(QID.into())]);
        // Deeper than the classifier reads: unknown.
        assert_eq!(targets(&wrap(nested)), [ScanTarget::Unknown]);
    }

    #[test]
    fn strings_comments_and_names_are_not_calls() {
        for text in [
            "select 'result_scan(x)'",
            "select 1 -- result_scan('x')",
            "select 1 /* result_scan('x') */",
            "select \"RESULT_SCAN\" from t",
            "select result_scan from t",
            "select result from results order by x desc",
        ] {
            assert!(targets(text).is_empty(), "{text}");
        }
        assert!(!may_scan_results("select 1 from t_scan"));
        assert!(!may_scan_results("select 1"));
        assert!(!may_scan_results("select result from results order by x"));
        assert!(!may_scan_results("select result from results order by x desc, y describes"));
        assert!(may_scan_results("desc/* a */ /* b */result 'x'"));
        assert!(may_scan_results("DeSc // c\n\tReSuLt 'x'"));
        assert!(may_scan_results("desc /* never closed"));
        assert!(may_scan_results("SELECT RESULT_SCAN"));
        assert!(may_scan_results("DESCRIBE -- c\n RESULT 'x'"));
    }

    /// The walk as it was first written: from each `desc`, over whitespace and comments, on
    /// its own. Quadratic on some texts; the reference the shared walk must agree with.
    fn describes_a_result_alone(text: &[u8]) -> bool {
        let starts =
            |at: usize, word: &[u8]| text.get(at..at + word.len()).is_some_and(|w| w.eq_ignore_ascii_case(word));
        memchr::memchr2_iter(b'd', b'D', text).any(|at| {
            if !starts(at, b"desc") {
                return false;
            }
            let mut at = at + if starts(at, b"describe") { 8 } else { 4 };
            loop {
                while text.get(at).is_some_and(u8::is_ascii_whitespace) {
                    at += 1;
                }
                if starts(at, b"/*") {
                    match memchr::memmem::find(&text[at + 2..], b"*/") {
                        Some(end) => at += 2 + end + 2,
                        None => return true,
                    }
                } else if starts(at, b"--") || starts(at, b"//") {
                    match memchr::memchr(b'\n', &text[at..]) {
                        Some(end) => at += end + 1,
                        None => return false,
                    }
                } else {
                    return starts(at, b"result");
                }
            }
        })
    }

    /// How many bytes the walks' searches read in all.
    fn searched(text: &[u8]) -> usize {
        let mut walk = Walk::new(text);
        for at in memchr::memchr2_iter(b'd', b'D', text) {
            if walk.starts(at, b"desc") {
                walk.leads_to_result(at + 4);
            }
        }
        walk.searched
    }

    /// Texts an agent could send to make each `desc` read the rest of the text again: the
    /// searches read each byte a bounded number of times however many `desc`s there are.
    #[test]
    fn many_descs_before_long_comments_are_read_in_linear_time() {
        let texts = [
            "desc --".repeat(20_000),
            "desc /*".repeat(20_000),
            format!("{}*/", "desc /*".repeat(20_000)),
            format!("{}*/{}x", "desc /*".repeat(10_000), " /**/".repeat(10_000)),
            format!("{}\n{}result", "desc // ".repeat(10_000), "-- c\n".repeat(10_000)),
            "desc /* */ ".repeat(20_000),
        ];
        for text in &texts {
            assert_eq!(describes_a_result(text.as_bytes()), describes_a_result_alone(text.as_bytes()));
            let read = searched(text.as_bytes());
            assert!(read <= 3 * text.len(), "{read} bytes searched in a text of {}", text.len());
        }
    }

    proptest::proptest! {
        /// The shared walk answers as each `desc`'s own walk does.
        #[test]
        fn the_shared_walk_agrees_with_each_walk_alone(
            parts in proptest::collection::vec(
                proptest::sample::select(vec!["desc", "DESCRIBE", "result", " ", "\n", "/*", "*/", "--", "//", "x", "d"]),
                0..40,
            )
        ) {
            let text = parts.concat();
            proptest::prop_assert_eq!(describes_a_result(text.as_bytes()), describes_a_result_alone(text.as_bytes()));
        }
    }
}
