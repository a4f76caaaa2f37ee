//! Tokenizing a request with sqlparser's Snowflake tokenizer, the lexical checks and limits
//! that run before any parsing, and the split into top-level statements.
//!
//! The split must agree with Snowflake's, or a statement could hide inside another one. It
//! respects strings (with `\` escapes), `$$` strings, quoted identifiers, `--`, `//` and `#`
//! comments and flat `/* */` comments (they close at the first `*/`, as in Snowflake), all of
//! which the tokenizer already knows. On top of the tokens it ends a statement at a `;` outside
//! parentheses and outside Snowflake Scripting blocks (`BEGIN … END`, `DECLARE … BEGIN … END`),
//! whose inner `;` do not end the statement. Whatever the tokenizer might read differently from
//! Snowflake (tagged `$tag$` strings, line comments holding a carriage return, characters that
//! are not ASCII outside strings) is refused rather than guessed, and so is the flow operator
//! `->>`, which chains statements without a `;`. The gateway also pins
//! `MULTI_STATEMENT_COUNT` upstream to the count found here, so any remaining disagreement
//! makes Snowflake refuse the request instead of running it.

use std::ops::Range;

use sqlparser::dialect::SnowflakeDialect;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace, Word};

use super::model::{Limits, Refusal};

/// A tokenized request.
pub(crate) struct Lexed<'t> {
    /// The request text.
    pub text: &'t str,
    /// Every token, whitespace and comments included.
    pub tokens: Vec<TokenWithSpan>,
    /// Byte offset of each token's start, then the text's length (`tokens.len() + 1` entries).
    pub offsets: Vec<usize>,
    /// Indices (into `tokens`) of the tokens that are not whitespace or comments.
    pub significant: Vec<usize>,
}

impl Lexed<'_> {
    /// The byte range of token `token_idx`.
    pub fn token_bytes(&self, token_idx: usize) -> Range<usize> {
        self.offsets[token_idx]..self.offsets[token_idx + 1]
    }
}

/// Whether `token` is the unquoted keyword `keyword` (case-insensitive). A quoted identifier
/// such as `"DROP"` is a name, never a keyword.
pub(crate) fn is_keyword(token: &Token, keyword: &str) -> bool {
    matches!(token, Token::Word(Word { value, quote_style: None, .. }) if value.eq_ignore_ascii_case(keyword))
}

/// The unquoted word `token` is, if it is one.
pub(crate) fn bare_word(token: &Token) -> Option<&str> {
    match token {
        Token::Word(Word { value, quote_style: None, .. }) => Some(value),
        _ => None,
    }
}

fn is_opener(token: &Token) -> bool {
    matches!(token, Token::LParen | Token::LBracket | Token::LBrace)
}

fn is_closer(token: &Token) -> bool {
    matches!(token, Token::RParen | Token::RBracket | Token::RBrace)
}

/// Characters that end a line for some engine but not for the tokenizer's line comments.
fn is_line_separator(c: char) -> bool {
    matches!(c, '\r' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// Tokenizes `text` and runs every check that must pass before parsing: size, NUL, tokens,
/// nesting depth, characters and constructs Snowflake could read differently.
pub(crate) fn lex<'t>(text: &'t str, limits: &Limits) -> Result<Lexed<'t>, Refusal> {
    if text.len() > limits.text_bytes_max {
        return Err(Refusal::TooLarge);
    }
    // A NUL may end the text early for one reader and not for another: refused anywhere.
    if memchr::memchr(0, text.as_bytes()).is_some() {
        return Err(Refusal::ForbiddenCharacter);
    }
    let dialect = SnowflakeDialect {};
    let tokens = Tokenizer::new(&dialect, text).tokenize_with_location().map_err(|_| Refusal::Unlexable)?;

    // Depth first: 100,000 nested parentheses are refused as too deep, whatever their count.
    let mut depth = 0usize;
    for token in &tokens {
        if is_opener(&token.token) {
            depth += 1;
            if depth > limits.nesting_depth_max {
                return Err(Refusal::TooDeep);
            }
        } else if is_closer(&token.token) {
            depth = depth.saturating_sub(1);
        }
    }
    if tokens.len() > limits.tokens_max {
        return Err(Refusal::TooManyTokens);
    }

    let offsets = byte_offsets(text, &tokens).ok_or(Refusal::Unlexable)?;
    let mut significant = Vec::with_capacity(tokens.len() / 2 + 1);
    for (token_idx, token) in tokens.iter().enumerate() {
        let raw = &text[offsets[token_idx]..offsets[token_idx + 1]];
        match &token.token {
            Token::Whitespace(Whitespace::Space | Whitespace::Tab | Whitespace::Newline) => {
                // The tokenizer takes any Unicode space as a separator; Snowflake may not.
                if !raw.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
                    return Err(Refusal::ForbiddenCharacter);
                }
            }
            Token::Whitespace(Whitespace::SingleLineComment { comment, .. }) => {
                // The tokenizer ends a line comment at `\n` only: a `\r` (or another line
                // separator) inside it could end it earlier for Snowflake and reveal code.
                if comment.chars().any(is_line_separator) {
                    return Err(Refusal::AmbiguousLexing);
                }
            }
            Token::Whitespace(Whitespace::MultiLineComment(_)) => {}
            Token::Char(_) => return Err(Refusal::ForbiddenCharacter),
            // Snowflake's flow operator runs the statement after it on the one before: two
            // statements in one, which the split cannot see. Snowflake has no other `->>`.
            Token::LongArrow => return Err(Refusal::FlowOperator),
            Token::DollarQuotedString(quoted) if quoted.tag.is_some() => {
                // Snowflake has no `$tag$ … $tag$` strings: `$a$` may be a variable there.
                return Err(Refusal::AmbiguousLexing);
            }
            Token::Word(Word { quote_style: Some(quote), .. }) if *quote != '"' => {
                return Err(Refusal::AmbiguousLexing);
            }
            _ => significant.push(token_idx),
        }
    }
    if significant.is_empty() {
        return Err(Refusal::Empty);
    }
    Ok(Lexed { text, tokens, offsets, significant })
}

/// Byte offsets of token boundaries, from the tokenizer's line and column (columns count
/// characters, lines count `\n`). Tokens are contiguous, so each token's end is the next
/// one's start. `None` if the positions do not add up to the whole text.
fn byte_offsets(text: &str, tokens: &[TokenWithSpan]) -> Option<Vec<usize>> {
    let mut offsets = Vec::with_capacity(tokens.len() + 1);
    offsets.push(0);
    let mut chars = text.char_indices();
    let (mut line, mut column, mut byte) = (1u64, 1u64, 0usize);
    for token in tokens {
        let end = token.span.end;
        while (line, column) != (end.line, end.column) {
            let (idx, c) = chars.next()?;
            byte = idx + c.len_utf8();
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        offsets.push(byte);
    }
    (byte == text.len() || tokens.is_empty()).then_some(offsets)
}

/// Whether a `BEGIN` followed by `next` starts a transaction rather than a block.
pub(crate) fn begin_starts_transaction(next: Option<&Token>) -> bool {
    match next {
        None | Some(Token::SemiColon) => true,
        Some(token) => ["TRANSACTION", "WORK", "NAME"].iter().any(|kw| is_keyword(token, kw)),
    }
}

/// The most tokens before a routine definition's `PROCEDURE`, `TASK` or `ALERT` (`CREATE OR
/// REPLACE SECURE TEMPORARY PROCEDURE`).
const ROUTINE_HEADER_MAX: usize = 6;

/// The words that name a routine: code whose body may be a block.
const ROUTINE_WORDS: [&str; 3] = ["PROCEDURE", "TASK", "ALERT"];

/// Whether the statement whose tokens start with `tokens` defines or changes a routine: one of
/// [`ROUTINE_WORDS`] among its first [`ROUTINE_HEADER_MAX`] tokens ends a header
/// [`defines_routine`] knows.
pub(crate) fn starts_routine<'t>(tokens: impl IntoIterator<Item = &'t Token>) -> bool {
    let first: Vec<&Token> = tokens.into_iter().take(ROUTINE_HEADER_MAX).collect();
    (0..first.len()).any(|end| {
        bare_word(first[end]).is_some_and(|word| ROUTINE_WORDS.iter().any(|kw| word.eq_ignore_ascii_case(kw)))
            && defines_routine(&first[..=end])
    })
}

/// Whether a statement starting with `header` (its first tokens, up to one of
/// [`ROUTINE_WORDS`]) defines or changes a procedure, a task or an alert, whose body may be a
/// block (after `AS`, an alert's `THEN` or `MODIFY ACTION`): `CREATE [OR REPLACE|OR ALTER]
/// [SECURE] [TEMPORARY|TEMP] PROCEDURE|TASK|ALERT`, `ALTER TASK|ALERT`, or an anonymous
/// procedure, `WITH name AS PROCEDURE`.
fn defines_routine(header: &[&Token]) -> bool {
    let word = |t: &Token| bare_word(t).map(str::to_ascii_uppercase);
    let words: Vec<Option<String>> = header.iter().map(|t| word(t)).collect();
    let is = |w: &Option<String>, kw: &str| w.as_deref() == Some(kw);
    let routine = |w: &Option<String>| ROUTINE_WORDS.iter().any(|kw| is(w, kw));
    match words.as_slice() {
        [first, middle @ .., last] if is(first, "CREATE") && routine(last) => {
            middle.iter().all(|w| ["OR", "REPLACE", "ALTER", "SECURE", "TEMPORARY", "TEMP"].iter().any(|kw| is(w, kw)))
        }
        [first, last] if is(first, "ALTER") && routine(last) => true,
        [first, _, as_, last] => is(first, "WITH") && is(as_, "AS") && is(last, "PROCEDURE"),
        _ => false,
    }
}

/// Whether a `BEGIN` after `previous` (`None` at a statement's start) can open a block: at a
/// statement's start, or where a block's statement starts (after `;` inside a block or a
/// `DECLARE` section, or after `THEN`, `ELSE`, `DO`, `LOOP`, `REPEAT` or `BEGIN` inside a
/// block), or as a routine's body (after `AS`, or an alert's `THEN` or `MODIFY ACTION`).
/// Anywhere else `BEGIN` is a name (it is not reserved: `SELECT begin FROM t`), and counting
/// it would hide the statements after it.
fn begin_opens_block(previous: Option<&Token>, in_block: bool, procedure: bool) -> bool {
    let Some(previous) = previous else { return true };
    if matches!(previous, Token::SemiColon) {
        return in_block;
    }
    let Some(word) = bare_word(previous) else { return false };
    let is = |kw: &str| word.eq_ignore_ascii_case(kw);
    (in_block && ["THEN", "ELSE", "DO", "LOOP", "REPEAT", "BEGIN"].iter().any(|kw| is(kw)))
        || (procedure && ["AS", "THEN", "ACTION"].iter().any(|kw| is(kw)))
}

/// The byte ranges of a request's top-level statements (first token to last, `;` and
/// surrounding comments excluded), or why the request is refused before classification.
pub fn statement_ranges(text: &str, limits: &Limits) -> Result<Vec<Range<usize>>, Refusal> {
    let lexed = lex(text, limits)?;
    let ranges: Vec<Range<usize>> = split(&lexed)
        .into_iter()
        .map(|range| {
            let first = lexed.significant[range.start];
            let last = lexed.significant[range.end - 1];
            lexed.offsets[first]..lexed.offsets[last + 1]
        })
        .collect();
    // Only semicolons: no statement, as `classify` says.
    if ranges.is_empty() { Err(Refusal::Empty) } else { Ok(ranges) }
}

/// Splits a lexed request into top-level statements: ranges of indices into
/// `lexed.significant`, without the `;`. Empty statements (`;;`) are skipped.
pub(crate) fn split(lexed: &Lexed<'_>) -> Vec<Range<usize>> {
    split_significant(&lexed.tokens, &lexed.significant)
}

/// [`split`] over any list of significant token indices.
pub(crate) fn split_significant(tokens: &[TokenWithSpan], significant: &[usize]) -> Vec<Range<usize>> {
    let token = |idx: usize| &tokens[significant[idx]].token;
    let mut statements = Vec::new();
    let mut start = 0;
    let mut paren_depth = 0usize;
    let mut block_depth = 0usize;
    let mut declare_pending = false;
    let mut skip_next_case = false;
    // The statement defines or changes a routine, whose body (one) may be a block.
    let mut procedure = starts_routine(significant.iter().map(|&t| &tokens[t].token));
    for idx in 0..significant.len() {
        let current = token(idx);
        if is_opener(current) {
            paren_depth += 1;
            continue;
        }
        if is_closer(current) {
            paren_depth = paren_depth.saturating_sub(1);
            continue;
        }
        if matches!(current, Token::SemiColon) {
            if paren_depth == 0 && block_depth == 0 && !declare_pending {
                if idx > start {
                    statements.push(start..idx);
                }
                start = idx + 1;
                procedure = starts_routine(significant[start..].iter().map(|&t| &tokens[t].token));
            }
            continue;
        }
        let Some(word) = bare_word(current) else { continue };
        let next = (idx + 1 < significant.len()).then(|| token(idx + 1));
        if idx == start && word.eq_ignore_ascii_case("DECLARE") {
            declare_pending = true;
        } else if word.eq_ignore_ascii_case("BEGIN") {
            let previous = (idx > start).then(|| token(idx - 1));
            let opens = begin_opens_block(previous, block_depth > 0 || declare_pending, procedure);
            if paren_depth == 0 && opens && !begin_starts_transaction(next) {
                // One body a routine: an `AS begin` inside it is a name again.
                procedure = false;
                block_depth += 1;
                declare_pending = false;
            }
        } else if block_depth > 0 && word.eq_ignore_ascii_case("CASE") {
            if skip_next_case {
                skip_next_case = false;
            } else {
                block_depth += 1;
            }
        } else if block_depth > 0 && word.eq_ignore_ascii_case("END") {
            // `END IF`, `END FOR`… close constructs whose openers are not counted; `END` and
            // `END CASE` close a counted `BEGIN` or `CASE`.
            let qualifier = next.and_then(bare_word).map(str::to_ascii_uppercase);
            match qualifier.as_deref() {
                Some("IF" | "FOR" | "LOOP" | "WHILE" | "REPEAT") => {}
                Some("CASE") => {
                    block_depth -= 1;
                    skip_next_case = true;
                }
                _ => block_depth -= 1,
            }
        }
    }
    if start < significant.len() {
        statements.push(start..significant.len());
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<String> {
        let lexed = lex(sql, &Limits::default()).unwrap();
        split(&lexed)
            .into_iter()
            .map(|range| {
                let first = lexed.significant[range.start];
                let last = lexed.significant[range.end - 1];
                sql[lexed.offsets[first]..lexed.offsets[last + 1]].to_owned()
            })
            .collect()
    }

    #[test]
    fn splits_at_top_level_semicolons_only() {
        assert_eq!(texts("select 1; select 2;"), ["select 1", "select 2"]);
        assert_eq!(texts("select ';' ; select \"a;b\""), ["select ';'", "select \"a;b\""]);
        assert_eq!(texts("select $$a;b$$; drop table t"), ["select $$a;b$$", "drop table t"]);
        assert_eq!(texts("select 'it''s;' , 'a\\';' ; x"), ["select 'it''s;' , 'a\\';'", "x"]);
        assert_eq!(texts("select (1; 2)"), ["select (1; 2)"]);
        assert_eq!(texts(";; select 1 ;;"), ["select 1"]);
    }

    #[test]
    fn comments_hide_semicolons_and_block_comments_are_flat() {
        assert_eq!(texts("select 1 -- ; drop\n; select 2"), ["select 1", "select 2"]);
        assert_eq!(texts("select 1 // ; drop\n"), ["select 1"]);
        assert_eq!(texts("select 1 # ; drop\n"), ["select 1"]);
        // Flat: the comment ends at the first `*/`, so the DROP is real code.
        assert_eq!(texts("select 1 /* /* */ ; drop table t; /* */"), ["select 1", "drop table t"]);
    }

    #[test]
    fn blocks_are_one_statement() {
        assert_eq!(
            texts("begin drop table t; select 1; end; select 2"),
            ["begin drop table t; select 1; end", "select 2"]
        );
        assert_eq!(
            texts("declare x int default 1; begin if (x > 0) then return 1; end if; end; select 3"),
            ["declare x int default 1; begin if (x > 0) then return 1; end if; end", "select 3"]
        );
        assert_eq!(
            texts("begin let y := case when true then 1 else 2 end; begin select 1; end; end; x"),
            ["begin let y := case when true then 1 else 2 end; begin select 1; end; end", "x"]
        );
        assert_eq!(texts("begin; select 1; commit"), ["begin", "select 1", "commit"]);
        assert_eq!(
            texts("create procedure p() returns int language sql as begin select 1; return 1; end; select 2"),
            ["create procedure p() returns int language sql as begin select 1; return 1; end", "select 2"]
        );
        assert_eq!(
            texts("create or alter task t as begin select 1; end; alter task t modify as begin select 2; end; x"),
            ["create or alter task t as begin select 1; end", "alter task t modify as begin select 2; end", "x"]
        );
        assert_eq!(
            texts("create alert a if (exists (select 1)) then begin select 1; end; x"),
            ["create alert a if (exists (select 1)) then begin select 1; end", "x"]
        );
        assert_eq!(
            texts("create task t as begin select 1 as begin from x; end; select 2"),
            ["create task t as begin select 1 as begin from x; end", "select 2"]
        );
        assert_eq!(
            texts("begin if (true) then begin select 1; end; else begin select 2; end; end if; end; x"),
            ["begin if (true) then begin select 1; end; else begin select 2; end; end if; end", "x"]
        );
        assert_eq!(texts("begin transaction; select 1"), ["begin transaction", "select 1"]);
    }

    /// `BEGIN` is not reserved: a column or alias of that name opens no block, and the
    /// statements after it are statements.
    #[test]
    fn begin_as_a_name_opens_no_block() {
        assert_eq!(
            texts("explain select begin from t; drop database analytics"),
            ["explain select begin from t", "drop database analytics"]
        );
        assert_eq!(texts("select 1 as begin from t; drop table u"), ["select 1 as begin from t", "drop table u"]);
        assert_eq!(
            texts("create table c as select 1 as begin from t; drop table u"),
            ["create table c as select 1 as begin from t", "drop table u"]
        );
        assert_eq!(texts("call p(1) begin x; drop table u"), ["call p(1) begin x", "drop table u"]);
        assert_eq!(
            texts("create table procedure as select 1 as begin from t; drop table u"),
            ["create table procedure as select 1 as begin from t", "drop table u"]
        );
        assert_eq!(
            texts("declare c cursor for select begin from t; begin open c; end; x"),
            ["declare c cursor for select begin from t; begin open c; end", "x"]
        );
    }

    #[test]
    fn refuses_what_snowflake_could_read_differently() {
        let limits = Limits::default();
        let refusal = |sql: &str| lex(sql, &limits).err();
        assert_eq!(refusal("select $a$ ; drop table t; $a$"), Some(Refusal::AmbiguousLexing));
        assert_eq!(refusal("select 1 -- x\rdrop table t"), Some(Refusal::AmbiguousLexing));
        assert_eq!(refusal("show tables ->> drop table t"), Some(Refusal::FlowOperator));
        assert_eq!(refusal("select 1->>drop table t"), Some(Refusal::FlowOperator));
        // A lambda's `->` is not the flow operator.
        assert_eq!(refusal("select filter(a, x -> x > 1) from t"), None);
        assert_eq!(refusal("select '->>' -- ->>\n"), None);
        assert_eq!(refusal("dr\u{200b}op table t"), Some(Refusal::ForbiddenCharacter));
        assert_eq!(refusal("dr\u{41e}p table t"), Some(Refusal::ForbiddenCharacter));
        assert_eq!(refusal("select\u{a0}1"), Some(Refusal::ForbiddenCharacter));
        assert_eq!(refusal("select 'a\0b'"), Some(Refusal::ForbiddenCharacter));
        assert_eq!(refusal("select 'abc"), Some(Refusal::Unlexable));
        assert_eq!(refusal("select 1 /* open"), Some(Refusal::Unlexable));
        assert_eq!(refusal("select \"open"), Some(Refusal::Unlexable));
        assert_eq!(refusal("  -- nothing\n"), Some(Refusal::Empty));
        assert_eq!(statement_ranges(";;", &limits), Err(Refusal::Empty));
        // Inside strings, comments and quoted identifiers anything but NUL is data.
        assert_eq!(refusal("select 'é\u{200b}', \"ü\" /* ∑ */"), None);
    }

    #[test]
    fn limits_apply_before_parsing() {
        let limits = Limits { text_bytes_max: 100, ..Limits::default() };
        assert_eq!(lex(&"x".repeat(101), &limits).err(), Some(Refusal::TooLarge));
        let deep = format!("select {}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert_eq!(lex(&deep, &Limits::default()).err(), Some(Refusal::TooDeep));
        let limits = Limits { tokens_max: 10, ..Limits::default() };
        assert_eq!(lex("select 1, 2, 3, 4, 5", &limits).err(), Some(Refusal::TooManyTokens));
    }

    #[test]
    fn byte_offsets_follow_multibyte_text() {
        let sql = "select 'é✓' as \"ü\"\n, 2";
        let lexed = lex(sql, &Limits::default()).unwrap();
        let last = *lexed.significant.last().unwrap();
        assert_eq!(&sql[lexed.token_bytes(last)], "2");
        assert_eq!(lexed.offsets.last(), Some(&sql.len()));
    }
}
