//! Classification of a request's statements: what each does, and to which objects.
//!
//! The leading keywords decide the kind, read from the token stream (sqlparser's parser does
//! not know every Snowflake statement: `GET`, `PUT`, `UNDROP`, `UNSET`, most DDL). Statements
//! that read data through a query (`SELECT`, `INSERT`, `UPDATE`, `DELETE`, `MERGE`, `SET`, and
//! any other holding a `SELECT`) must also parse with `Parser::parse_sql`'s machinery into
//! exactly the statement their keywords announce, holding no other (sqlparser also reads
//! `(DELETE …)` where a query stands), or they are [`Kind::Unknown`]: the parse
//! guarantees the tokens are a well-formed statement, in which table references sit where the
//! reader below looks for them (after `FROM`, `JOIN`, a `,` in a `FROM` list, `USING`, inside
//! `TABLE(…)` or `IDENTIFIER(…)`), and every table in sqlparser's tree must be among what
//! that reader found, or the statement is [`Kind::Unknown`] (`check_tables_found`: a
//! construct the reader misreads cannot hide a table). CTE names are scoped and not reported
//! as tables. A name,
//! stage or URL in a string whose escapes Snowflake decodes otherwise than sqlparser (`\x52`,
//! `\122`, `\u0052`) is only known when it runs. A call of a function named with its schema
//! (`db.sch.f(…)`) is a read of the function; an unqualified one cannot be told from a
//! built-in's and is not reported. A stage
//! (`@stage`) anywhere is read (an external table's `LOCATION` too), and so is one named to a
//! file function; a built-in that makes
//! a URL to a staged file (`GET_PRESIGNED_URL`) is a `get`. `RESULT_SCAN` (quoted in upper case
//! too) and `DESCRIBE RESULT` read a query result. Statements read by their keywords alone
//! (`SHOW`, `DESCRIBE`, `USE`, `UNSET`, `ALTER SESSION`, transactions) are unknown when
//! followed by anything those keywords do not take.
//!
//! `EXECUTE IMMEDIATE` of a literal or `$$` string classifies the inner text (bounded depth);
//! of anything else it is [`Kind::ExecuteImmediateDynamic`]. The statement a task, alert or
//! pipe runs is classified too, and so is an alert's condition (same bound), and so is the body
//! of a SQL function or procedure (a body in another language is not read). Scripting blocks are
//! [`Kind::ScriptingBlock`] plus whatever their statements do, read best effort (what is not
//! understood inside is [`Kind::Unknown`]), statements in parentheses or after `CURSOR FOR` in
//! their expressions included (`LET r RESULTSET := (DELETE …)`). `SYSTEM$` calls anywhere add a
//! [`Kind::SystemFunction`] action. Nothing here panics on any input: every index is checked.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{ObjectNamePart, Statement as AstStatement, TableFactor, Visit, Visitor, visit_statements};
use sqlparser::dialect::SnowflakeDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use super::lexer::{Lexed, bare_word, begin_starts_transaction, is_keyword, lex, split, starts_routine};
use super::model::{Action, Classified, ClassifiedStatement, Kind, Limits, ObjectName, ObjectType, Refusal};
use super::names::{canonical_word, name_from_literal};
use super::parameters::session_parameter_is_benign;
use super::result_scan::{ScanTarget, is_result_scan, read_target};

/// Classifies a request's text under `limits`. Never fails: a request that cannot be read is
/// [`Classified::refusal`], a statement that cannot be read is [`Kind::Unknown`].
pub fn classify(text: &str, limits: &Limits) -> Classified {
    classify_nested(text, limits, 0)
}

fn classify_nested(text: &str, limits: &Limits, depth: usize) -> Classified {
    let lexed = match lex(text, limits) {
        Ok(lexed) => lexed,
        Err(refusal) => return Classified::refused(refusal),
    };
    let ranges = split(&lexed);
    if ranges.is_empty() {
        return Classified::refused(Refusal::Empty);
    }
    if ranges.len() > limits.statements_max {
        return Classified::refused(Refusal::TooManyStatements);
    }
    let cx = Cx { lexed: &lexed, limits, depth };
    let statements = ranges
        .into_iter()
        .map(|range| classify_statement(&cx, View { lexed: &lexed, sig: &lexed.significant[range] }))
        .collect();
    Classified { statements, refusal: None }
}

struct Cx<'a> {
    lexed: &'a Lexed<'a>,
    limits: &'a Limits,
    depth: usize,
}

/// A run of significant tokens (a statement or part of one).
#[derive(Clone, Copy)]
struct View<'a> {
    lexed: &'a Lexed<'a>,
    sig: &'a [usize],
}

impl<'a> View<'a> {
    fn len(&self) -> usize {
        self.sig.len()
    }

    fn tok(&self, idx: usize) -> Option<&'a Token> {
        self.sig.get(idx).map(|&t| &self.lexed.tokens[t].token)
    }

    fn is(&self, idx: usize, token: &Token) -> bool {
        self.tok(idx) == Some(token)
    }

    fn kw(&self, idx: usize, keyword: &str) -> bool {
        self.tok(idx).is_some_and(|t| is_keyword(t, keyword))
    }

    fn upper(&self, idx: usize) -> Option<String> {
        self.tok(idx).and_then(bare_word).map(str::to_ascii_uppercase)
    }

    fn sub(&self, range: std::ops::Range<usize>) -> View<'a> {
        let end = range.end.min(self.sig.len());
        let start = range.start.min(end);
        View { lexed: self.lexed, sig: &self.sig[start..end] }
    }

    fn token_bytes(&self, idx: usize) -> std::ops::Range<usize> {
        self.lexed.token_bytes(self.sig[idx])
    }

    /// Whether the single-quoted string at `idx` decodes in Snowflake as sqlparser decoded it.
    /// A name, stage or URL in one that does not (`'H\x52.PAY'` is `HR.PAY` to Snowflake,
    /// `HX52.PAY` to sqlparser) is only known when the statement runs.
    fn decodes_alike(&self, idx: usize) -> bool {
        escapes_decode_alike(&self.lexed.text[self.token_bytes(idx)])
    }

    fn byte_range(&self) -> std::ops::Range<usize> {
        match (self.sig.first(), self.sig.last()) {
            (Some(&first), Some(&last)) => self.lexed.offsets[first]..self.lexed.offsets[last + 1],
            _ => 0..0,
        }
    }

    /// Whether tokens `a` and `b` touch (no whitespace or comment between them).
    fn adjacent(&self, a: usize, b: usize) -> bool {
        b < self.len() && self.token_bytes(a).end == self.token_bytes(b).start
    }

    /// Nesting depth before each token.
    fn depths(&self) -> Vec<usize> {
        let mut depth = 0usize;
        let mut depths = Vec::with_capacity(self.len());
        for idx in 0..self.len() {
            depths.push(depth);
            match self.tok(idx) {
                Some(Token::LParen | Token::LBracket | Token::LBrace) => depth += 1,
                Some(Token::RParen | Token::RBracket | Token::RBrace) => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        depths
    }

    /// The index of the closer matching the opener at `open`. It scans only the bracketed
    /// run, so repeated calls cost at most the nesting depth times the length.
    fn matching_close(&self, open: usize) -> Option<usize> {
        let mut depth = 0usize;
        for idx in open..self.len() {
            match self.tok(idx) {
                Some(Token::LParen | Token::LBracket | Token::LBrace) => depth += 1,
                Some(Token::RParen | Token::RBracket | Token::RBrace) => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return Some(idx);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// The first index at or after `from` at depth `depth` whose token satisfies `stop`.
    fn find_at_depth(&self, depths: &[usize], from: usize, depth: usize, stop: impl Fn(&Token) -> bool) -> usize {
        (from..self.len()).find(|&idx| depths[idx] == depth && self.tok(idx).is_some_and(&stop)).unwrap_or(self.len())
    }

    fn contains_keyword(&self, keyword: &str) -> bool {
        (0..self.len()).any(|idx| self.kw(idx, keyword))
    }
}

/// Accumulates what one statement does.
struct Builder {
    byte_range: std::ops::Range<usize>,
    kind: Kind,
    actions: Vec<Action>,
    unknown_reason: Option<&'static str>,
}

impl Builder {
    fn push(&mut self, action: Action) {
        self.actions.push(action);
    }

    fn on(&mut self, kind: Kind, object_type: ObjectType, name: ObjectName) {
        self.actions.push(Action::on(kind, object_type, name));
    }

    /// A part of the statement could not be read: it adds an unknown action.
    fn unknown(&mut self, reason: &'static str) {
        self.actions.push(Action::bare(Kind::Unknown));
        self.unknown_reason.get_or_insert(reason);
    }

    /// The statement as a whole could not be read.
    fn become_unknown(&mut self, reason: &'static str) {
        self.kind = Kind::Unknown;
        self.actions.clear();
        self.unknown(reason);
    }

    fn absorb(&mut self, inner: ClassifiedStatement) {
        self.actions.extend(inner.actions);
        if let Some(reason) = inner.unknown_reason {
            self.unknown_reason.get_or_insert(reason);
        }
    }

    fn finish(mut self) -> ClassifiedStatement {
        if self.kind != Kind::Unknown && !self.actions.iter().any(|a| a.kind == self.kind) {
            self.actions.insert(0, Action::bare(self.kind));
        }
        let mut seen = HashSet::new();
        self.actions.retain(|a| seen.insert(a.clone()));
        ClassifiedStatement {
            byte_range: self.byte_range,
            kind: self.kind,
            actions: self.actions,
            unknown_reason: self.unknown_reason,
        }
    }
}

fn classify_statement(cx: &Cx<'_>, v: View<'_>) -> ClassifiedStatement {
    let mut b = Builder { byte_range: v.byte_range(), kind: Kind::Unknown, actions: Vec::new(), unknown_reason: None };
    let lead = v.upper(0);
    match lead.as_deref() {
        Some("SELECT" | "WITH" | "VALUES") => query(cx, v, &mut b),
        None if v.is(0, &Token::LParen) => query(cx, v, &mut b),
        Some("INSERT") => insert(cx, v, &mut b),
        Some("UPDATE") => update(cx, v, &mut b),
        Some("DELETE") => delete(cx, v, &mut b),
        Some("MERGE") => merge(cx, v, &mut b),
        Some("COPY") => copy(cx, v, &mut b),
        Some("CREATE") => create(cx, v, &mut b),
        Some("ALTER") => alter(cx, v, &mut b),
        Some("DROP") => drop_like(v, &mut b, Kind::Drop),
        Some("UNDROP") => drop_like(v, &mut b, Kind::Undrop),
        Some("TRUNCATE") => truncate(v, &mut b),
        Some("COMMENT") => comment(v, &mut b),
        Some("GRANT") => grant(v, &mut b, Kind::Grant),
        Some("REVOKE") => grant(v, &mut b, Kind::Revoke),
        Some("GET") => file_transfer(cx, v, &mut b, Kind::Get),
        Some("PUT") => file_transfer(cx, v, &mut b, Kind::Put),
        Some("LIST" | "LS") => stage_command(v, &mut b, Kind::List),
        Some("REMOVE" | "RM") => stage_command(v, &mut b, Kind::Remove),
        Some("USE") => use_statement(v, &mut b),
        Some("SET") => set_variables(cx, v, &mut b),
        Some("UNSET") => unset_variables(v, &mut b),
        Some("CALL") => call(v, &mut b),
        Some("EXECUTE") => execute(cx, v, &mut b),
        Some("BEGIN") if begin_starts_transaction(v.tok(1)) => transaction(v, &mut b, Kind::Begin),
        Some("BEGIN" | "DECLARE") => block(cx, v, &mut b),
        Some("START") if v.kw(1, "TRANSACTION") => transaction(v, &mut b, Kind::Begin),
        Some("COMMIT") => transaction(v, &mut b, Kind::Commit),
        Some("ROLLBACK") => transaction(v, &mut b, Kind::Rollback),
        Some("SHOW") => show(v, &mut b),
        Some("DESC" | "DESCRIBE") => describe(v, &mut b),
        Some("EXPLAIN") => explain(v, &mut b),
        _ => b.become_unknown("the statement does not start with a keyword the gateway classifies"),
    }
    // Only a block (or a routine's body) holds a `;`: anywhere else the split and Snowflake may
    // disagree, and what follows it would not have been classified.
    let semicolon = (0..v.len()).any(|idx| v.is(idx, &Token::SemiColon));
    let routine = starts_routine((0..v.len()).filter_map(|idx| v.tok(idx)));
    if semicolon && b.kind != Kind::ScriptingBlock && !routine {
        b.become_unknown("the statement holds a `;` outside a Snowflake Scripting block");
    }
    if !matches!(b.kind, Kind::Get | Kind::Put) {
        system_functions(v, &mut b);
    }
    b.finish()
}

/// Parses the statement with sqlparser; `Some` only for exactly one statement holding no other.
fn parse_single(cx: &Cx<'_>, v: View<'_>) -> Option<AstStatement> {
    let (&first, &last) = (v.sig.first()?, v.sig.last()?);
    let tokens = cx.lexed.tokens[first..=last].to_vec();
    let dialect = SnowflakeDialect {};
    let mut parser =
        Parser::new(&dialect).with_recursion_limit(cx.limits.parser_recursion_max).with_tokens_with_locations(tokens);
    let mut statements = parser.parse_statements().ok()?;
    if statements.len() == 1 { statements.pop().filter(holds_one_statement) } else { None }
}

fn query(cx: &Cx<'_>, v: View<'_>, b: &mut Builder) {
    b.kind = Kind::Select;
    let ast = match parse_single(cx, v) {
        Some(ast @ AstStatement::Query(_)) => ast,
        Some(_) => return b.become_unknown("the statement is not the query its keywords announce"),
        None => return b.become_unknown("the query does not parse"),
    };
    scan_reads(v, b, Kind::Select, ScanOptions::default());
    check_tables_found(&ast, b);
}

/// A second reading of the tables a parsed statement names: every table sqlparser's tree
/// holds (a plain name in a table position: not a table function's, a stage's, nor a one-part
/// name of a CTE in scope) must be among the tables the token scan reported, whole name for
/// whole name, or the statement is [`Kind::Unknown`]. The scan finds tables by their position
/// among the tokens; a construct it misreads (a `CASE … WHEN` in a join condition once ended a
/// `FROM` list early) must not hide a table from the rules.
fn check_tables_found(ast: &AstStatement, b: &mut Builder) {
    fn canonical(ident: &sqlparser::ast::Ident) -> String {
        super::names::canonical(&ident.value, ident.quote_style)
    }
    /// The tables named, and the CTE names of the queries being walked (innermost last).
    #[derive(Default)]
    struct Tables {
        found: Vec<Vec<String>>,
        ctes: Vec<Vec<String>>,
    }
    impl Visitor for Tables {
        type Break = ();
        fn pre_visit_query(&mut self, query: &sqlparser::ast::Query) -> ControlFlow<()> {
            let names = query.with.iter().flat_map(|with| &with.cte_tables).map(|cte| canonical(&cte.alias.name));
            self.ctes.push(names.collect());
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _query: &sqlparser::ast::Query) -> ControlFlow<()> {
            self.ctes.pop();
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            let TableFactor::Table { name, args: None, .. } = factor else { return ControlFlow::Continue(()) };
            let Some(idents) = name.0.iter().map(ObjectNamePart::as_ident).collect::<Option<Vec<_>>>() else {
                return ControlFlow::Continue(());
            };
            if idents.iter().any(|i| i.value.starts_with(['@', '$'])) {
                return ControlFlow::Continue(());
            }
            let mut parts: Vec<String> = idents.into_iter().map(canonical).collect();
            // `db..t` is the schema PUBLIC's table, as the scan names it.
            if parts.len() == 3 && parts[1].is_empty() {
                parts[1] = "PUBLIC".to_owned();
            }
            let cte = parts.len() == 1 && self.ctes.iter().flatten().any(|name| *name == parts[0]);
            if !cte {
                self.found.push(parts);
            }
            ControlFlow::Continue(())
        }
    }
    let mut tables = Tables::default();
    let _ = ast.visit(&mut tables);
    let reported = |table: &[String]| {
        b.actions.iter().any(|action| match &action.object {
            Some(object) if matches!(object.object_type, ObjectType::Table | ObjectType::View) => {
                matches!(&object.name, ObjectName::Parts(parts) if parts == table)
            }
            _ => false,
        })
    };
    if tables.found.iter().any(|table| !reported(table)) {
        b.become_unknown("a table the statement names was not found where the gateway reads tables");
    }
}

/// Whether `statement` holds no statement but itself: sqlparser reads DML wherever a query may
/// stand (`(DELETE …)`, `WITH c AS (…) DELETE …`, a set operation's operand, a derived table).
fn holds_one_statement(statement: &AstStatement) -> bool {
    let mut seen = 0;
    let flow = visit_statements(statement, |_| {
        seen += 1;
        if seen > 1 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    flow.is_continue()
}

/// `… STREAM s ON { TABLE | VIEW | EXTERNAL TABLE | DYNAMIC TABLE | EVENT TABLE | STAGE } <name>`:
/// the stream reads its source's rows (`SHOW_INITIAL_ROWS` even those already there), so the
/// source is read.
fn stream_source(v: View<'_>, depths: &[usize], from: usize, b: &mut Builder) {
    let on = v.find_at_depth(depths, from, 0, |t| is_keyword(t, "ON"));
    let mut idx = on + 1;
    let object_type = match v.upper(idx).as_deref() {
        Some("TABLE") => ObjectType::Table,
        Some("VIEW") => ObjectType::View,
        Some("STAGE") => ObjectType::Stage,
        Some("EXTERNAL" | "DYNAMIC" | "EVENT") if v.kw(idx + 1, "TABLE") => {
            idx += 1;
            ObjectType::Table
        }
        _ => return b.become_unknown("a stream whose source the gateway does not read"),
    };
    let source = read_name(v, idx + 1).map_or(ObjectName::Dynamic, |(name, _)| name);
    b.on(Kind::Select, object_type, source);
}

fn insert(cx: &Cx<'_>, v: View<'_>, b: &mut Builder) {
    b.kind = Kind::Insert;
    let Some(ast @ AstStatement::Insert(_)) = parse_single(cx, v) else {
        return b.become_unknown("the INSERT does not parse");
    };
    let mut idx = 1;
    let overwrite = v.kw(idx, "OVERWRITE");
    if overwrite {
        idx += 1;
    }
    let mut targets = Vec::new();
    if v.kw(idx, "ALL") || v.kw(idx, "FIRST") {
        let depths = v.depths();
        for into in (idx..v.len()).filter(|&j| depths[j] == 0 && v.kw(j, "INTO")) {
            targets.push(read_name(v, into + 1).map_or(ObjectName::Dynamic, |(name, _)| name));
        }
    } else {
        if v.kw(idx, "INTO") {
            idx += 1;
        }
        targets.push(read_name(v, idx).map_or(ObjectName::Dynamic, |(name, _)| name));
    }
    for target in targets {
        b.on(Kind::Insert, ObjectType::Table, target.clone());
        if overwrite {
            b.on(Kind::DeleteAll, ObjectType::Table, target);
        }
    }
    scan_reads(v, b, Kind::Select, ScanOptions::default());
    check_tables_found(&ast, b);
}

fn update(cx: &Cx<'_>, v: View<'_>, b: &mut Builder) {
    let Some(ast @ AstStatement::Update(_)) = parse_single(cx, v) else {
        return b.become_unknown("the UPDATE does not parse");
    };
    let AstStatement::Update(update) = &ast else { unreachable!("matched above") };
    let kind = if update.selection.is_some() && where_names_a_column(v) { Kind::Update } else { Kind::UpdateAll };
    b.kind = kind;
    b.on(kind, ObjectType::Table, read_name(v, 1).map_or(ObjectName::Dynamic, |(name, _)| name));
    scan_reads(v, b, Kind::Select, ScanOptions::default());
    check_tables_found(&ast, b);
}

fn delete(cx: &Cx<'_>, v: View<'_>, b: &mut Builder) {
    let Some(ast @ AstStatement::Delete(_)) = parse_single(cx, v) else {
        return b.become_unknown("the DELETE does not parse");
    };
    let AstStatement::Delete(delete) = &ast else { unreachable!("matched above") };
    if !v.kw(1, "FROM") {
        return b.become_unknown("the DELETE has no FROM");
    }
    let kind = if delete.selection.is_some() && where_names_a_column(v) { Kind::Delete } else { Kind::DeleteAll };
    b.kind = kind;
    b.on(kind, ObjectType::Table, read_name(v, 2).map_or(ObjectName::Dynamic, |(name, _)| name));
    scan_reads(v, b, Kind::Select, ScanOptions { skip_from_at: Some(1), using_is_from: true });
    check_tables_found(&ast, b);
}

fn merge(cx: &Cx<'_>, v: View<'_>, b: &mut Builder) {
    b.kind = Kind::Merge;
    let Some(ast @ AstStatement::Merge(_)) = parse_single(cx, v) else {
        return b.become_unknown("the MERGE does not parse");
    };
    if !v.kw(1, "INTO") {
        return b.become_unknown("the MERGE does not parse");
    }
    b.on(Kind::Merge, ObjectType::Table, read_name(v, 2).map_or(ObjectName::Dynamic, |(name, _)| name));
    scan_reads(v, b, Kind::Select, ScanOptions { skip_from_at: None, using_is_from: true });
    check_tables_found(&ast, b);
}

fn copy(cx: &Cx<'_>, v: View<'_>, b: &mut Builder) {
    if !v.kw(1, "INTO") {
        return b.become_unknown("COPY without INTO");
    }
    let ast = if v.contains_keyword("SELECT") {
        match parse_single(cx, v) {
            Some(ast @ AstStatement::CopyIntoSnowflake { .. }) => Some(ast),
            _ => return b.become_unknown("the COPY INTO with a query does not parse"),
        }
    } else {
        None
    };
    // The target is written to, not read: the scan for reads starts after it.
    let after_target = match v.tok(2) {
        Some(Token::AtSign) => {
            b.kind = Kind::CopyIntoLocation;
            let (name, next) = read_stage(v, 2);
            b.on(Kind::CopyIntoLocation, ObjectType::Stage, name);
            next
        }
        // A string (quoted either way) names a stage or an external location.
        Some(token @ (Token::SingleQuotedString(_) | Token::DollarQuotedString(_))) => {
            b.kind = Kind::CopyIntoLocation;
            let target = match token {
                Token::SingleQuotedString(target) if v.decodes_alike(2) => Some(target),
                Token::DollarQuotedString(quoted) if quoted.tag.is_none() => Some(&quoted.value),
                _ => None,
            };
            match target.map(|target| (target, target.strip_prefix('@'))) {
                None => {
                    b.on(Kind::CopyIntoLocation, ObjectType::Stage, ObjectName::Dynamic);
                    b.on(Kind::CopyIntoLocation, ObjectType::Location, ObjectName::Dynamic);
                }
                Some((_, Some(stage))) => b.on(Kind::CopyIntoLocation, ObjectType::Stage, stage_from_text(stage)),
                Some((target, None)) => {
                    b.on(Kind::CopyIntoLocation, ObjectType::Location, ObjectName::Flat(target.clone()))
                }
            }
            3
        }
        Some(Token::Word(_)) => {
            b.kind = Kind::CopyIntoTable;
            b.on(Kind::CopyIntoTable, ObjectType::Table, read_name(v, 2).map_or(ObjectName::Dynamic, |(name, _)| name));
            2
        }
        // Anything else (a variable, a bind) may be a location: the worst case.
        _ => {
            b.kind = Kind::CopyIntoLocation;
            b.on(Kind::CopyIntoLocation, ObjectType::Stage, ObjectName::Dynamic);
            b.on(Kind::CopyIntoLocation, ObjectType::Location, ObjectName::Dynamic);
            3
        }
    };
    scan_reads(v.sub(after_target..v.len()), b, Kind::Select, ScanOptions::default());
    if let Some(ast) = ast {
        check_tables_found(&ast, b);
    }
}

fn create(cx: &Cx<'_>, v: View<'_>, b: &mut Builder) {
    let mut idx = 1;
    let mut kind = Kind::Create;
    if v.kw(idx, "OR") && (v.kw(idx + 1, "REPLACE") || v.kw(idx + 1, "ALTER")) {
        kind = Kind::CreateOrReplace;
        idx += 2;
    }
    b.kind = kind;
    let (object_type, after_type) = read_object_type(v, idx, true, true).unwrap_or((ObjectType::Other, idx));
    let after_exists = skip_if_exists(v, after_type);
    let (name, after_name) = read_name(v, after_exists).unwrap_or((ObjectName::Dynamic, after_exists));
    b.on(kind, object_type, name);
    let depths = v.depths();
    let clone_at = v.find_at_depth(&depths, after_exists, 0, |t| is_keyword(t, "CLONE"));
    if let Some((source, _)) = read_name(v, clone_at + 1) {
        b.on(Kind::Select, object_type, source);
    }
    if object_type == ObjectType::Stream && clone_at == v.len() {
        stream_source(v, &depths, after_name, b);
    }
    if object_type == ObjectType::Stage {
        stage_urls(v, &depths, after_name, kind, b);
    }
    if matches!(object_type, ObjectType::Task | ObjectType::Alert | ObjectType::Pipe) {
        // Cloned, it holds its source's statement; otherwise it must say which it runs.
        if clone_at == v.len() {
            create_stored_code(cx, v, &depths, after_name, object_type, b);
        }
        return;
    }
    options_read_stages(v, after_name, b);
    if matches!(object_type, ObjectType::Function | ObjectType::Procedure) {
        return sql_body(cx, v, &depths, after_name, b);
    }
    if v.contains_keyword("SELECT") {
        let Some(ast) = parse_single(cx, v) else {
            return b.become_unknown("the CREATE with a query does not parse");
        };
        scan_reads(v, b, Kind::Select, ScanOptions::default());
        check_tables_found(&ast, b);
    }
}

fn alter(cx: &Cx<'_>, v: View<'_>, b: &mut Builder) {
    if v.kw(1, "SESSION") {
        return alter_session(v, b);
    }
    b.kind = Kind::Alter;
    let (object_type, after_type) = read_object_type(v, 1, true, true).unwrap_or((ObjectType::Other, 1));
    let after_exists = skip_if_exists(v, after_type);
    let (name, after_name) = match read_name(v, after_exists) {
        Some((name, next))
            if object_type != ObjectType::Account || !(v.kw(after_exists, "SET") || v.kw(after_exists, "UNSET")) =>
        {
            (name, next)
        }
        _ => (ObjectName::Dynamic, after_exists),
    };
    b.on(Kind::Alter, object_type, name);
    let depths = v.depths();
    if object_type == ObjectType::Stage {
        stage_urls(v, &depths, after_name, Kind::Alter, b);
    }
    for (first, second) in [("RENAME", "TO"), ("SWAP", "WITH")] {
        let at = v.find_at_depth(&depths, after_exists, 0, |t| is_keyword(t, first));
        if v.kw(at + 1, second)
            && let Some((other, _)) = read_name(v, at + 2)
        {
            b.on(Kind::Alter, object_type, other);
        }
    }
    if matches!(object_type, ObjectType::Task | ObjectType::Alert)
        && alter_stored_code(cx, v, &depths, after_name, object_type, b)
    {
        return;
    }
    options_read_stages(v, after_name, b);
    if v.contains_keyword("SELECT") {
        if parse_single(cx, v).is_none() {
            return b.become_unknown("the ALTER with a query does not parse");
        }
        scan_reads(v, b, Kind::Select, ScanOptions::default());
    }
}

fn alter_session(v: View<'_>, b: &mut Builder) {
    let setting = if v.kw(2, "SET") {
        true
    } else if v.kw(2, "UNSET") {
        false
    } else {
        return b.become_unknown("ALTER SESSION without SET or UNSET");
    };
    let Some(parameters) = session_parameters(v, 3, setting) else {
        return b.become_unknown("ALTER SESSION followed by text the gateway does not read as parameters");
    };
    if parameters.is_empty() {
        return b.become_unknown("ALTER SESSION names no parameter");
    }
    b.kind = Kind::AlterSession;
    for parameter in parameters {
        let kind =
            if session_parameter_is_benign(&parameter) { Kind::AlterSession } else { Kind::AlterSessionSensitive };
        if kind == Kind::AlterSessionSensitive {
            b.kind = Kind::AlterSessionSensitive;
        }
        b.on(kind, ObjectType::Parameter, ObjectName::Flat(parameter));
    }
}

/// The parameters of `ALTER SESSION SET p = value [, p2 = value …]` or `ALTER SESSION UNSET p
/// [, p2 …]`, from `idx` to the end; `None` if anything else is there. A value is one literal,
/// word or variable, or a signed number.
fn session_parameters(v: View<'_>, mut idx: usize, setting: bool) -> Option<Vec<String>> {
    let mut parameters = Vec::new();
    while idx < v.len() {
        let Some(Token::Word(word)) = v.tok(idx) else { return None };
        parameters.push(canonical_word(word));
        idx += 1;
        if setting {
            if !v.is(idx, &Token::Eq) {
                return None;
            }
            idx += 1;
            let signed = matches!(v.tok(idx), Some(Token::Minus | Token::Plus));
            if signed {
                idx += 1;
            }
            let value_is_readable = match v.tok(idx) {
                Some(Token::Number(..)) => true,
                Some(Token::SingleQuotedString(_) | Token::Word(_) | Token::Placeholder(_)) => !signed,
                _ => false,
            };
            if !value_is_readable {
                return None;
            }
            idx += 1;
        }
        if v.is(idx, &Token::Comma) {
            idx += 1;
        }
    }
    Some(parameters)
}

fn drop_like(v: View<'_>, b: &mut Builder, kind: Kind) {
    b.kind = kind;
    let (object_type, after_type) = read_object_type(v, 1, true, true).unwrap_or((ObjectType::Other, 1));
    let mut idx = skip_if_exists(v, after_type);
    let mut named = false;
    while let Some((name, next)) = read_name(v, idx) {
        b.on(kind, object_type, name);
        named = true;
        idx = next;
        // Functions and procedures are named with their argument types: `f(INT, VARCHAR)`.
        if v.is(idx, &Token::LParen) {
            idx = v.matching_close(idx).map_or(v.len(), |close| close + 1);
        }
        if v.is(idx, &Token::Comma) {
            idx += 1;
        } else {
            break;
        }
    }
    if !named {
        b.on(kind, object_type, ObjectName::Dynamic);
    }
}

fn truncate(v: View<'_>, b: &mut Builder) {
    b.kind = Kind::Truncate;
    let (object_type, after_type) = read_object_type(v, 1, true, false).unwrap_or((ObjectType::Table, 1));
    let idx = skip_if_exists(v, after_type);
    b.on(Kind::Truncate, object_type, read_name(v, idx).map_or(ObjectName::Dynamic, |(name, _)| name));
}

fn comment(v: View<'_>, b: &mut Builder) {
    b.kind = Kind::Alter;
    let mut idx = skip_if_exists(v, 1);
    if !v.kw(idx, "ON") {
        return b.become_unknown("COMMENT without ON");
    }
    idx += 1;
    if v.kw(idx, "COLUMN") {
        let name = match read_name(v, idx + 1) {
            Some((ObjectName::Parts(mut parts), _)) if parts.len() > 1 => {
                parts.pop();
                ObjectName::Parts(parts)
            }
            _ => ObjectName::Dynamic,
        };
        return b.on(Kind::Alter, ObjectType::Table, name);
    }
    let (object_type, after_type) = read_object_type(v, idx, true, true).unwrap_or((ObjectType::Other, idx));
    b.on(Kind::Alter, object_type, read_name(v, after_type).map_or(ObjectName::Dynamic, |(name, _)| name));
}

fn grant(v: View<'_>, b: &mut Builder, kind: Kind) {
    b.kind = kind;
    let depths = v.depths();
    let grantee_keyword = if kind == Kind::Grant { "TO" } else { "FROM" };
    let on_at = v.find_at_depth(&depths, 1, 0, |t| is_keyword(t, "ON"));
    let grantee_at = v.find_at_depth(&depths, 1, 0, |t| is_keyword(t, grantee_keyword));
    if on_at < grantee_at {
        let idx = on_at + 1;
        if v.kw(idx, "ACCOUNT") {
            b.on(kind, ObjectType::Account, ObjectName::Dynamic);
        } else if v.kw(idx, "ALL") || v.kw(idx, "FUTURE") {
            let in_at = v.find_at_depth(&depths, idx, 0, |t| is_keyword(t, "IN"));
            if let Some((object_type, after)) = read_object_type(v, in_at + 1, false, false) {
                b.on(kind, object_type, read_name(v, after).map_or(ObjectName::Dynamic, |(name, _)| name));
            }
        } else if let Some((object_type, after)) = read_object_type(v, idx, true, true) {
            b.on(kind, object_type, read_name(v, after).map_or(ObjectName::Dynamic, |(name, _)| name));
        }
    } else if let Some((object_type @ (ObjectType::Role | ObjectType::DatabaseRole), after)) =
        read_object_type(v, 1, false, false)
    {
        b.on(kind, object_type, read_name(v, after).map_or(ObjectName::Dynamic, |(name, _)| name));
    }
    if let Some((object_type, after)) = read_object_type(v, grantee_at + 1, false, false) {
        b.on(kind, object_type, read_name(v, after).map_or(ObjectName::Dynamic, |(name, _)| name));
    }
}

/// `GET` and `PUT` take unquoted file URLs (`file:///tmp/x`) whose `//` the tokenizer reads
/// as a comment, so they are read from the raw text: the keyword, two arguments, `KEY = value`
/// options, an optional `;`, then nothing but whitespace to the end of the request.
fn file_transfer(cx: &Cx<'_>, v: View<'_>, b: &mut Builder, kind: Kind) {
    b.kind = kind;
    let rest = &cx.lexed.text[v.token_bytes(0).end..];
    let Some((first, second, options)) = two_arguments(rest) else {
        return b.become_unknown("GET or PUT arguments the gateway cannot read");
    };
    if !only_options(options) {
        return b.become_unknown("GET or PUT followed by text other than options");
    }
    // The statement runs to the end of the request (an optional `;` aside).
    let tail = rest.trim_end_matches([' ', '\t', '\n', '\r']);
    let tail = tail.strip_suffix(';').unwrap_or(tail).trim_end_matches([' ', '\t', '\n', '\r']);
    b.byte_range.end = v.token_bytes(0).end + tail.len();
    let stage = if kind == Kind::Put { second } else { first };
    let stage = stage.trim_matches('\'');
    match stage.strip_prefix('@') {
        // An escape in a quoted stage may read otherwise to Snowflake (`'@h\x52.stg'`).
        Some(stage) if stage.contains('\\') => b.on(kind, ObjectType::Stage, ObjectName::Dynamic),
        Some(stage) => b.on(kind, ObjectType::Stage, stage_from_text(stage)),
        None => b.become_unknown("GET or PUT without a stage"),
    }
}

fn next_argument(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start_matches([' ', '\t', '\n', '\r']);
    if text.is_empty() {
        return None;
    }
    if let Some(quoted) = text.strip_prefix('\'') {
        let end = quoted.find('\'')?;
        return Some((&text[..end + 2], &quoted[end + 1..]));
    }
    let end = text.find([' ', '\t', '\n', '\r', ';']).unwrap_or(text.len());
    Some((&text[..end], &text[end..]))
}

fn two_arguments(text: &str) -> Option<(&str, &str, &str)> {
    let (first, rest) = next_argument(text)?;
    let (second, rest) = next_argument(rest)?;
    Some((first, second, rest))
}

/// Whether `text` is only `KEY = value` pairs (value a word, number or quoted string), an
/// optional `;`, and whitespace.
fn only_options(text: &str) -> bool {
    let mut rest = text.trim_start_matches([' ', '\t', '\n', '\r']);
    loop {
        if rest.is_empty() {
            return true;
        }
        if let Some(after) = rest.strip_prefix(';') {
            return after.trim_matches([' ', '\t', '\n', '\r']).is_empty();
        }
        let key_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if key_end == 0 {
            return false;
        }
        rest = rest[key_end..].trim_start_matches([' ', '\t']);
        let Some(after_eq) = rest.strip_prefix('=') else { return false };
        rest = after_eq.trim_start_matches([' ', '\t']);
        if let Some(quoted) = rest.strip_prefix('\'') {
            let Some(end) = quoted.find('\'') else { return false };
            rest = &quoted[end + 1..];
        } else {
            let value_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            if value_end == 0 {
                return false;
            }
            rest = &rest[value_end..];
        }
        rest = rest.trim_start_matches([' ', '\t', '\n', '\r']);
    }
}

/// A stage name written as text after its `@` (`db.sch.st/path`, `~/x`, `%t`).
fn stage_from_text(text: &str) -> ObjectName {
    let name = text.split('/').next().unwrap_or_default();
    if name == "~" {
        return ObjectName::parts(["~"]);
    }
    if let Some(table) = name.strip_prefix('%') {
        return match name_from_literal(table) {
            ObjectName::Parts(mut parts) => {
                if let Some(last) = parts.last_mut() {
                    last.insert(0, '%');
                }
                ObjectName::Parts(parts)
            }
            other => other,
        };
    }
    name_from_literal(name)
}

fn stage_command(v: View<'_>, b: &mut Builder, kind: Kind) {
    b.kind = kind;
    match v.tok(1) {
        Some(Token::AtSign) => {
            let (name, _) = read_stage(v, 1);
            b.on(kind, ObjectType::Stage, name);
        }
        Some(Token::SingleQuotedString(text)) if text.starts_with('@') && v.decodes_alike(1) => {
            b.on(kind, ObjectType::Stage, stage_from_text(&text[1..]));
        }
        Some(Token::SingleQuotedString(_)) => b.on(kind, ObjectType::Stage, ObjectName::Dynamic),
        _ => b.become_unknown("LIST or REMOVE without a stage"),
    }
}

fn use_statement(v: View<'_>, b: &mut Builder) {
    let target = v.upper(1);
    let (kind, object_type, at) = match target.as_deref() {
        Some("ROLE") => (Kind::UseRole, ObjectType::Role, 2),
        Some("WAREHOUSE") => (Kind::UseWarehouse, ObjectType::Warehouse, 2),
        Some("DATABASE") => (Kind::UseDatabase, ObjectType::Database, 2),
        Some("SCHEMA") => (Kind::UseSchema, ObjectType::Schema, 2),
        Some("SECONDARY") => {
            b.kind = Kind::UseSecondaryRoles;
            let mut idx = if v.kw(2, "ROLES") { 3 } else { 2 };
            if v.kw(idx, "ALL") {
                // Every role granted to the gateway's user: no allow rule's role globs cover it.
                b.on(Kind::UseSecondaryRoles, ObjectType::Role, ObjectName::Dynamic);
                idx += 1;
            } else if v.kw(idx, "NONE") {
                idx += 1;
            } else {
                while let Some((name, next)) = read_name(v, idx) {
                    b.on(Kind::UseSecondaryRoles, ObjectType::Role, name);
                    idx = next;
                    if !v.is(idx, &Token::Comma) {
                        break;
                    }
                    idx += 1;
                }
            }
            if idx != v.len() {
                b.become_unknown("USE SECONDARY ROLES followed by text the gateway does not read");
            }
            return;
        }
        _ => match read_name(v, 1) {
            Some((ObjectName::Parts(parts), _)) if parts.len() == 2 => (Kind::UseSchema, ObjectType::Schema, 1),
            _ => (Kind::UseDatabase, ObjectType::Database, 1),
        },
    };
    b.kind = kind;
    match read_name(v, at) {
        Some((name, next)) if next == v.len() => b.on(kind, object_type, name),
        Some(_) => b.become_unknown("USE followed by text the gateway does not read"),
        None => b.become_unknown("USE without a name"),
    }
}

fn set_variables(cx: &Cx<'_>, v: View<'_>, b: &mut Builder) {
    b.kind = Kind::SetVariable;
    let Some(ast @ AstStatement::Set(_)) = parse_single(cx, v) else {
        return b.become_unknown("the SET does not parse");
    };
    for name in variable_names(v).map(|(names, _)| names).unwrap_or_default() {
        b.on(Kind::SetVariable, ObjectType::Variable, ObjectName::Flat(name));
    }
    scan_reads(v, b, Kind::Select, ScanOptions::default());
    check_tables_found(&ast, b);
}

fn unset_variables(v: View<'_>, b: &mut Builder) {
    b.kind = Kind::UnsetVariable;
    match variable_names(v) {
        Some((names, end)) if end == v.len() => {
            for name in names {
                b.on(Kind::UnsetVariable, ObjectType::Variable, ObjectName::Flat(name));
            }
        }
        _ => b.become_unknown("UNSET followed by text the gateway does not read as variables"),
    }
}

/// `SET x = …`, `SET (a, b) = …`, `UNSET x`, `UNSET (a, b)`: the variable names and the index
/// after them, or `None` if there is no name or the list is not closed.
fn variable_names(v: View<'_>) -> Option<(Vec<String>, usize)> {
    if !v.is(1, &Token::LParen) {
        return match v.tok(1) {
            Some(Token::Word(word)) => Some((vec![canonical_word(word)], 2)),
            _ => None,
        };
    }
    let mut names = Vec::new();
    let mut idx = 2;
    loop {
        let Some(Token::Word(word)) = v.tok(idx) else { return None };
        names.push(canonical_word(word));
        idx += 1;
        if !v.is(idx, &Token::Comma) {
            return v.is(idx, &Token::RParen).then_some((names, idx + 1));
        }
        idx += 1;
    }
}

fn call(v: View<'_>, b: &mut Builder) {
    b.kind = Kind::Call;
    b.on(Kind::Call, ObjectType::Procedure, read_name(v, 1).map_or(ObjectName::Dynamic, |(name, _)| name));
    scan_reads(v, b, Kind::Select, ScanOptions::default());
}

fn execute(cx: &Cx<'_>, v: View<'_>, b: &mut Builder) {
    if v.kw(1, "IMMEDIATE") {
        return execute_immediate(cx, v, b);
    }
    let object_type = if v.kw(1, "TASK") {
        ObjectType::Task
    } else if v.kw(1, "ALERT") {
        ObjectType::Alert
    } else {
        return b.become_unknown("EXECUTE of something other than IMMEDIATE, TASK or ALERT");
    };
    b.kind = Kind::Call;
    b.on(Kind::Call, object_type, read_name(v, 2).map_or(ObjectName::Dynamic, |(name, _)| name));
}

/// The escapes sqlparser and Snowflake decode alike inside a single-quoted string.
pub(crate) fn escapes_decode_alike(raw: &str) -> bool {
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && !matches!(chars.next(), Some('\'' | '"' | '\\' | 'n' | 't' | 'r' | 'b' | 'f')) {
            return false;
        }
    }
    true
}

fn execute_immediate(cx: &Cx<'_>, v: View<'_>, b: &mut Builder) {
    let ends_after_target = v.len() == 3 || v.kw(3, "USING");
    let literal = match v.tok(2) {
        Some(Token::SingleQuotedString(text)) if ends_after_target => {
            Some((text.as_str(), escapes_decode_alike(&cx.lexed.text[v.token_bytes(2)])))
        }
        Some(Token::DollarQuotedString(quoted)) if ends_after_target && quoted.tag.is_none() => {
            Some((quoted.value.as_str(), true))
        }
        _ => None,
    };
    match literal {
        Some((text, decodes_alike)) => {
            b.kind = Kind::ExecuteImmediate;
            b.push(Action::bare(Kind::ExecuteImmediate));
            if !decodes_alike {
                b.unknown("an escape in the EXECUTE IMMEDIATE string the gateway does not decode as Snowflake does");
            } else if cx.depth + 1 > cx.limits.execute_immediate_depth_max {
                b.unknown("EXECUTE IMMEDIATE nested deeper than the limit");
            } else {
                let inner = classify_nested(text, cx.limits, cx.depth + 1);
                if inner.refusal.is_some() {
                    b.unknown("the text EXECUTE IMMEDIATE runs was refused");
                } else if inner.statements.len() != 1 {
                    b.unknown("EXECUTE IMMEDIATE of several statements");
                } else {
                    for statement in inner.statements {
                        b.absorb(statement);
                    }
                }
            }
        }
        None => {
            b.kind = Kind::ExecuteImmediateDynamic;
            let variable = match (v.tok(2), v.tok(3)) {
                (Some(Token::Placeholder(p)), _) if p.starts_with('$') && p.len() > 1 => {
                    Some(p[1..].to_ascii_uppercase())
                }
                (Some(Token::Colon), Some(Token::Word(word))) => Some(canonical_word(word)),
                (Some(Token::Word(word)), _) if v.len() == 3 || v.kw(3, "USING") => Some(canonical_word(word)),
                _ => None,
            };
            match variable {
                Some(name) => b.on(Kind::ExecuteImmediateDynamic, ObjectType::Variable, ObjectName::Flat(name)),
                None => b.push(Action::bare(Kind::ExecuteImmediateDynamic)),
            }
        }
    }
    scan_reads(v.sub(3..v.len()), b, Kind::Select, ScanOptions::default());
}

/// An anonymous block: what its statements do, best effort. Separators (`BEGIN`, `END …`,
/// `THEN`, `ELSE`, `DO`…) are skipped, conditions and assignments are scanned for reads,
/// everything else is classified as a statement of its own.
fn block(cx: &Cx<'_>, v: View<'_>, b: &mut Builder) {
    b.kind = Kind::ScriptingBlock;
    b.push(Action::bare(Kind::ScriptingBlock));
    let depths = v.depths();
    let mut in_declare = false;
    let mut idx = 0;
    while idx < v.len() {
        if v.is(idx, &Token::SemiColon) {
            idx += 1;
            continue;
        }
        let word = v.upper(idx);
        let depth = depths[idx];
        match word.as_deref() {
            Some("DECLARE") => {
                in_declare = true;
                idx += 1;
                continue;
            }
            // After a DECLARE section, BEGIN opens the body whatever follows it (`BEGIN name
            // := …` is not a transaction there).
            Some("BEGIN") if in_declare || !begin_starts_transaction(v.tok(idx + 1)) => {
                in_declare = false;
                idx += 1;
                continue;
            }
            Some("END") => {
                idx += 1;
                if matches!(v.upper(idx).as_deref(), Some("IF" | "FOR" | "LOOP" | "WHILE" | "REPEAT" | "CASE")) {
                    idx += 1;
                }
                continue;
            }
            Some("EXCEPTION" | "ELSE" | "LOOP" | "REPEAT" | "DO" | "THEN") => {
                idx += 1;
                continue;
            }
            Some("IF" | "ELSEIF" | "WHILE" | "FOR" | "WHEN" | "UNTIL" | "CASE") => {
                let end = v.find_at_depth(&depths, idx + 1, depth, |t| {
                    matches!(t, Token::SemiColon)
                        || ["THEN", "DO", "LOOP", "WHEN", "END"].iter().any(|kw| is_keyword(t, kw))
                });
                expression(cx, v.sub(idx + 1..end), b);
                idx = end;
                continue;
            }
            _ => {}
        }
        let end = v.find_at_depth(&depths, idx, depth, |t| matches!(t, Token::SemiColon));
        let assignment = matches!(v.tok(idx), Some(Token::Word(_))) && v.is(idx + 1, &Token::Assignment);
        let control = matches!(
            word.as_deref(),
            Some("LET" | "RETURN" | "RAISE" | "BREAK" | "CONTINUE" | "OPEN" | "CLOSE" | "FETCH" | "NULL")
        );
        if in_declare || assignment || control {
            expression(cx, v.sub(idx..end), b);
        } else {
            b.absorb(classify_statement(cx, v.sub(idx..end)));
        }
        idx = end;
    }
}

/// An expression inside a block: its reads, any `EXECUTE IMMEDIATE` it holds, and any other
/// statement in it: a `RESULTSET`'s or `CURSOR`'s query may be any statement Snowflake runs
/// (`LET r RESULTSET := (DELETE FROM t)`, `DEFAULT ASYNC (…)`, `CURSOR FOR …`).
fn expression(cx: &Cx<'_>, v: View<'_>, b: &mut Builder) {
    scan_reads(v, b, Kind::Select, ScanOptions::default());
    let depths = v.depths();
    let mut idx = 0;
    while idx < v.len() {
        // Each is classified up to the end of its parenthesis level or statement; a nested one
        // is part of it, and skipping keeps the walk linear.
        if v.kw(idx, "EXECUTE") && v.kw(idx + 1, "IMMEDIATE") {
            let end = v.find_at_depth(&depths, idx, depths[idx], |t| matches!(t, Token::RParen | Token::SemiColon));
            b.absorb(classify_statement(cx, v.sub(idx..end)));
            idx = end.max(idx + 1);
        } else if v.is(idx, &Token::LParen) && starts_statement(v, idx + 1) {
            let end = v.matching_close(idx).unwrap_or(v.len());
            b.absorb(classify_statement(cx, v.sub(idx + 1..end)));
            idx = end.max(idx + 1);
        } else if v.kw(idx, "FOR") && idx > 0 && v.kw(idx - 1, "CURSOR") && starts_statement(v, idx + 1) {
            let end = v.find_at_depth(&depths, idx, depths[idx], |t| matches!(t, Token::RParen | Token::SemiColon));
            b.absorb(classify_statement(cx, v.sub(idx + 1..end)));
            idx = end.max(idx + 1);
        } else {
            idx += 1;
        }
    }
}

/// Keywords that lead a statement other than a plain `SELECT` or `VALUES` (whose reads
/// [`scan_reads`] finds where they stand), with what must follow them: many are also common
/// names (`start`, `comment`, `set`), so `(start IS NULL)` must stay an expression.
const STATEMENT_LEADS: &[(&str, Follows)] = &[
    ("WITH", Follows::Name),
    ("INSERT", Follows::Keyword(&["INTO", "OVERWRITE", "ALL", "FIRST"])),
    ("UPDATE", Follows::Name),
    ("DELETE", Follows::Keyword(&["FROM"])),
    ("MERGE", Follows::Keyword(&["INTO"])),
    ("COPY", Follows::Keyword(&["INTO"])),
    ("CREATE", Follows::Name),
    ("ALTER", Follows::Name),
    ("DROP", Follows::Name),
    ("UNDROP", Follows::Name),
    ("TRUNCATE", Follows::Name),
    ("COMMENT", Follows::Keyword(&["ON", "IF"])),
    ("GRANT", Follows::Name),
    ("REVOKE", Follows::Name),
    ("GET", Follows::Stage),
    ("PUT", Follows::Name),
    ("LIST", Follows::Stage),
    ("LS", Follows::Stage),
    ("REMOVE", Follows::Stage),
    ("RM", Follows::Stage),
    ("USE", Follows::Name),
    ("CALL", Follows::Name),
    ("EXECUTE", Follows::Keyword(&["IMMEDIATE", "TASK", "ALERT"])),
    ("SHOW", Follows::Name),
    ("DESCRIBE", Follows::Name),
    ("EXPLAIN", Follows::Name),
];

/// What follows a statement's leading keyword in [`STATEMENT_LEADS`].
enum Follows {
    /// A word that is not an operator's (`IS`, `IN`, `AND`…).
    Name,
    /// One of these keywords.
    Keyword(&'static [&'static str]),
    /// `@stage` or a string.
    Stage,
}

/// Words that continue an expression after a name.
const OPERATOR_WORDS: &[&str] =
    &["IS", "IN", "NOT", "AND", "OR", "LIKE", "ILIKE", "RLIKE", "REGEXP", "BETWEEN", "AS", "COLLATE", "ESCAPE"];

/// Whether a statement other than a plain query starts at `idx` (`(DELETE FROM t)`), not an
/// expression using a name or function (`(comment || x)`, `(get(a, 0))`, `(start IS NULL)`).
fn starts_statement(v: View<'_>, idx: usize) -> bool {
    let Some(lead) = v.upper(idx) else { return false };
    let Some((_, follows)) = STATEMENT_LEADS.iter().find(|(word, _)| *word == lead) else { return false };
    match follows {
        // Any name, quoted too (`(UPDATE "T" SET …)`), or what stands for one.
        Follows::Name => match v.tok(idx + 1) {
            Some(Token::Word(word)) if word.quote_style.is_some() => true,
            Some(Token::Word(_)) => v.upper(idx + 1).is_some_and(|next| !OPERATOR_WORDS.contains(&next.as_str())),
            Some(
                Token::Placeholder(_)
                | Token::Colon
                | Token::AtSign
                | Token::SingleQuotedString(_)
                | Token::DollarQuotedString(_),
            ) => true,
            _ => false,
        },
        Follows::Keyword(keywords) => keywords.iter().any(|keyword| v.kw(idx + 1, keyword)),
        Follows::Stage => matches!(v.tok(idx + 1), Some(Token::AtSign | Token::SingleQuotedString(_))),
    }
}

/// `BEGIN [WORK | TRANSACTION] [NAME <name>]`, `START TRANSACTION [NAME <name>]`, `COMMIT
/// [WORK]`, `ROLLBACK [WORK]`: anything after them is not understood.
fn transaction(v: View<'_>, b: &mut Builder, kind: Kind) {
    b.kind = kind;
    let mut idx = 1;
    if v.kw(0, "START") || v.kw(1, "WORK") || (kind == Kind::Begin && v.kw(1, "TRANSACTION")) {
        idx = 2;
    }
    if kind == Kind::Begin && v.kw(idx, "NAME") && matches!(v.tok(idx + 1), Some(Token::Word(_))) {
        idx += 2;
    }
    if idx != v.len() {
        b.become_unknown("a transaction statement followed by text the gateway does not read");
    }
}

/// Whether every token from `from` on is one a `SHOW` or `DESCRIBE` is made of: words, names
/// (dotted, quoted, `IDENTIFIER($v)`), literals, and the `(`, `,`, `)` and `=` of signatures
/// and options. An operator or anything else after them is not understood.
fn only_names_and_options(v: View<'_>, from: usize) -> bool {
    (from..v.len()).all(|idx| {
        matches!(
            v.tok(idx),
            Some(
                Token::Word(_)
                    | Token::Period
                    | Token::SingleQuotedString(_)
                    | Token::Number(..)
                    | Token::Placeholder(_)
                    | Token::Colon
                    | Token::LParen
                    | Token::RParen
                    | Token::Comma
                    | Token::Eq
            )
        )
    })
}

fn show(v: View<'_>, b: &mut Builder) {
    b.kind = Kind::Show;
    if !only_names_and_options(v, 1) {
        b.become_unknown("SHOW followed by text the gateway does not read");
    }
}

fn describe(v: View<'_>, b: &mut Builder) {
    b.kind = Kind::Describe;
    if !only_names_and_options(v, 1) {
        return b.become_unknown("DESCRIBE followed by text the gateway does not read");
    }
    if v.kw(1, "RESULT") {
        // `DESCRIBE RESULT '<id>'` reads an earlier query's result, as `RESULT_SCAN` does.
        let target = read_target(v.tok(2), v.tok(3), v.len() == 3);
        return b.on(Kind::Describe, ObjectType::QueryResult, target_name(target));
    }
    // A type word the gateway does not know, then a name (`DESCRIBE SERVICE db.s.svc`): an
    // object of another type, not a table named like the type word.
    let (object_type, at) = match read_object_type(v, 1, true, false) {
        Some(found) => found,
        None if read_name(v, 2).is_some() && !v.is(3, &Token::Eq) => (ObjectType::Other, 2),
        None => (ObjectType::Table, 1),
    };
    if let Some((name, _)) = read_name(v, at) {
        b.on(Kind::Describe, object_type, name);
    }
}

/// A query result's name: its id, or only known when the statement runs.
fn target_name(target: ScanTarget) -> ObjectName {
    match target {
        ScanTarget::QueryId(id) => ObjectName::Flat(id),
        ScanTarget::LastQueryId | ScanTarget::Unknown => ObjectName::Dynamic,
    }
}

/// The body of `CREATE FUNCTION|PROCEDURE … AS '<body>'` (or `$$<body>$$`) in SQL, the default
/// language: what it reads and runs, each time it is called, with its owner's rights. A query
/// or a scripting block is classified as such; a scalar expression as `SELECT <expression>`.
/// A body in another language (`LANGUAGE PYTHON`…) cannot be read and adds nothing: the policy
/// decides on creating the function itself. A SQL body that cannot be read is unknown.
fn sql_body(cx: &Cx<'_>, v: View<'_>, depths: &[usize], from: usize, b: &mut Builder) {
    let language_at = v.find_at_depth(depths, from, 0, |t| is_keyword(t, "LANGUAGE"));
    let external = (1..from).any(|at| v.kw(at, "EXTERNAL"));
    if (language_at < v.len() && !v.kw(language_at + 1, "SQL")) || external {
        // An external function's body is its service's URL.
        return;
    }
    let body_at = (from..v.len()).rev().find(|&at| {
        depths.get(at) == Some(&0)
            && v.kw(at, "AS")
            && matches!(v.tok(at + 1), Some(Token::SingleQuotedString(_) | Token::DollarQuotedString(_)))
    });
    let body = match body_at.and_then(|at| v.tok(at + 1).map(|token| (at + 1, token))) {
        Some((at, Token::SingleQuotedString(text))) => {
            if !escapes_decode_alike(&cx.lexed.text[v.token_bytes(at)]) {
                return b.unknown("an escape in a SQL function body the gateway does not decode as Snowflake does");
            }
            text.as_str()
        }
        Some((_, Token::DollarQuotedString(quoted))) if quoted.tag.is_none() => quoted.value.as_str(),
        // Without a body it is a declaration the gateway does not know (or an `AS` it did not find).
        _ => return b.unknown("a SQL function or procedure whose body the gateway does not find"),
    };
    if cx.depth + 1 > cx.limits.execute_immediate_depth_max {
        return b.unknown("a SQL function body nested deeper than the limit");
    }
    let head = body.trim_start().trim_start_matches('(').trim_start();
    let starts = |word: &str| {
        head.get(..word.len()).is_some_and(|h| h.eq_ignore_ascii_case(word))
            && !head.as_bytes().get(word.len()).is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
    };
    let statement_body = ["SELECT", "WITH", "BEGIN", "DECLARE"].iter().any(|word| starts(word));
    let text = if statement_body { body.to_owned() } else { format!("SELECT {body}") };
    let inner = classify_nested(&text, cx.limits, cx.depth + 1);
    if inner.refusal.is_some() || inner.statements.len() != 1 {
        return b.unknown("a SQL function body that is not one readable statement or expression");
    }
    for mut statement in inner.statements {
        if !statement_body {
            // The `SELECT` the expression was wrapped in is not the body's: what it reads is.
            statement.actions.retain(|action| action.kind != Kind::Select || action.object.is_some());
        }
        b.absorb(statement);
    }
}

/// Every stage a CREATE or ALTER names from `from` on, outside a query (those are read with
/// the query): `CREATE EXTERNAL TABLE … LOCATION = @stage` reads the stage's files into a
/// table the agent may select from, so the stage is read as any `@stage` is.
fn options_read_stages(v: View<'_>, from: usize, b: &mut Builder) {
    let mut idx = from;
    while idx < v.len() {
        if v.is(idx, &Token::AtSign) {
            let (name, next) = read_stage(v, idx);
            b.on(Kind::Select, ObjectType::Stage, name);
            idx = next.max(idx + 1);
        } else {
            idx += 1;
        }
    }
}

/// `URL = '<url>'` at the top level of a stage's options from `from` on: the external location
/// it points to (a value other than a string literal is only known when it runs).
fn stage_urls(v: View<'_>, depths: &[usize], from: usize, kind: Kind, b: &mut Builder) {
    for (idx, depth) in depths.iter().enumerate().skip(from) {
        if *depth == 0 && v.kw(idx, "URL") && v.is(idx + 1, &Token::Eq) {
            let url = match v.tok(idx + 2) {
                Some(Token::SingleQuotedString(url)) if v.decodes_alike(idx + 2) => ObjectName::Flat(url.clone()),
                _ => ObjectName::Dynamic,
            };
            b.on(kind, ObjectType::Location, url);
        }
    }
}

/// A statement held in another one, run later by its owner (a task's, alert's or pipe's):
/// classified on its own one level deeper (the `EXECUTE IMMEDIATE` depth limit bounds both),
/// its actions added.
fn nested_statement(cx: &Cx<'_>, v: View<'_>, b: &mut Builder) {
    if v.len() == 0 {
        return b.unknown("a task, alert or pipe without the statement it runs");
    }
    if cx.depth + 1 > cx.limits.execute_immediate_depth_max {
        return b.unknown("a task, alert or pipe statement nested deeper than the limit");
    }
    let inner = Cx { lexed: cx.lexed, limits: cx.limits, depth: cx.depth + 1 };
    b.absorb(classify_statement(&inner, v));
}

/// `EXISTS (<statement>)` at `at` (an alert's condition): the statement, if that is what is there.
fn exists_statement<'a>(v: View<'a>, at: usize) -> Option<View<'a>> {
    if !v.kw(at, "EXISTS") || !v.is(at + 1, &Token::LParen) {
        return None;
    }
    let close = v.matching_close(at + 1)?;
    Some(v.sub(at + 2..close))
}

/// What `CREATE TASK … AS <statement>`, `CREATE PIPE … AS <statement>` and `CREATE ALERT … IF
/// (EXISTS (<statement>)) THEN <statement>` run, from `from` (after the name) on. The options
/// before are scanned for reads; a body that cannot be found is unknown.
fn create_stored_code(
    cx: &Cx<'_>,
    v: View<'_>,
    depths: &[usize],
    from: usize,
    object_type: ObjectType,
    b: &mut Builder,
) {
    let keyword = if object_type == ObjectType::Alert { "THEN" } else { "AS" };
    let body_at = v.find_at_depth(depths, from, 0, |t| is_keyword(t, keyword));
    if body_at == v.len() {
        return b.unknown("a task, alert or pipe without the statement it runs");
    }
    scan_reads(v.sub(from..body_at), b, Kind::Select, ScanOptions::default());
    if object_type == ObjectType::Alert {
        // `IF ( EXISTS ( <statement> ) )` right before `THEN`.
        let if_at = v.find_at_depth(depths, from, 0, |t| is_keyword(t, "IF"));
        let wrapped = v.is(if_at + 1, &Token::LParen) && v.matching_close(if_at + 1) == Some(body_at - 1);
        match exists_statement(v, if_at + 2) {
            Some(condition) if wrapped && if_at < body_at => nested_statement(cx, condition, b),
            _ => b.unknown("an alert condition the gateway does not read"),
        }
    }
    nested_statement(cx, v.sub(body_at + 1..v.len()), b);
}

/// What `ALTER TASK … MODIFY AS <statement>`, `ALTER ALERT … MODIFY ACTION <statement>` and
/// `ALTER ALERT … MODIFY CONDITION EXISTS (<statement>)` make it run. `false` for any other
/// change, which is read as an ordinary `ALTER`.
fn alter_stored_code(
    cx: &Cx<'_>,
    v: View<'_>,
    depths: &[usize],
    from: usize,
    object_type: ObjectType,
    b: &mut Builder,
) -> bool {
    let modify_at = v.find_at_depth(depths, from, 0, |t| is_keyword(t, "MODIFY"));
    let task = object_type == ObjectType::Task;
    if (task && v.kw(modify_at + 1, "AS")) || (!task && v.kw(modify_at + 1, "ACTION")) {
        nested_statement(cx, v.sub(modify_at + 2..v.len()), b);
    } else if !task && v.kw(modify_at + 1, "CONDITION") {
        match exists_statement(v, modify_at + 2) {
            Some(condition) => nested_statement(cx, condition, b),
            None => b.unknown("an alert condition the gateway does not read"),
        }
    } else {
        return false;
    }
    true
}

fn explain(v: View<'_>, b: &mut Builder) {
    b.kind = Kind::Explain;
    scan_reads(v, b, Kind::Explain, ScanOptions::default());
}

/// `SYSTEM$…(` anywhere in the statement.
fn system_functions(v: View<'_>, b: &mut Builder) {
    for idx in 0..v.len() {
        if let Some(Token::Word(word)) = v.tok(idx)
            && word.value.to_ascii_uppercase().starts_with("SYSTEM$")
            && v.is(idx + 1, &Token::LParen)
        {
            b.on(Kind::SystemFunction, ObjectType::Function, ObjectName::Flat(word.value.to_ascii_uppercase()));
        }
    }
}

/// Multi-word object type names, longest first so `EXTERNAL ACCESS INTEGRATION` wins over the
/// `EXTERNAL` modifier.
const OBJECT_TYPES: &[(&[&str], ObjectType)] = &[
    (&["EXTERNAL", "ACCESS", "INTEGRATION"], ObjectType::Integration),
    (&["ROW", "ACCESS", "POLICY"], ObjectType::Policy),
    (&["CORTEX", "SEARCH", "SERVICE"], ObjectType::Other),
    (&["DATA", "METRIC", "FUNCTION"], ObjectType::Function),
    (&["MATERIALIZED", "VIEWS"], ObjectType::View),
    (&["FILE", "FORMATS"], ObjectType::FileFormat),
    (&["DATABASE", "ROLE"], ObjectType::DatabaseRole),
    (&["APPLICATION", "ROLE"], ObjectType::Role),
    (&["APPLICATION", "PACKAGE"], ObjectType::Other),
    (&["FILE", "FORMAT"], ObjectType::FileFormat),
    (&["MATERIALIZED", "VIEW"], ObjectType::View),
    (&["SEMANTIC", "VIEW"], ObjectType::View),
    (&["STORAGE", "INTEGRATION"], ObjectType::Integration),
    (&["API", "INTEGRATION"], ObjectType::Integration),
    (&["NOTIFICATION", "INTEGRATION"], ObjectType::Integration),
    (&["SECURITY", "INTEGRATION"], ObjectType::Integration),
    (&["CATALOG", "INTEGRATION"], ObjectType::Integration),
    (&["MASKING", "POLICY"], ObjectType::Policy),
    (&["NETWORK", "POLICY"], ObjectType::Policy),
    (&["PASSWORD", "POLICY"], ObjectType::Policy),
    (&["SESSION", "POLICY"], ObjectType::Policy),
    (&["AUTHENTICATION", "POLICY"], ObjectType::Policy),
    (&["AGGREGATION", "POLICY"], ObjectType::Policy),
    (&["PROJECTION", "POLICY"], ObjectType::Policy),
    (&["PACKAGES", "POLICY"], ObjectType::Policy),
    (&["JOIN", "POLICY"], ObjectType::Policy),
    (&["PRIVACY", "POLICY"], ObjectType::Policy),
    (&["NETWORK", "RULE"], ObjectType::Other),
    (&["RESOURCE", "MONITOR"], ObjectType::Other),
    (&["COMPUTE", "POOL"], ObjectType::Other),
    (&["REPLICATION", "GROUP"], ObjectType::Other),
    (&["FAILOVER", "GROUP"], ObjectType::Other),
    (&["IMAGE", "REPOSITORY"], ObjectType::Other),
    (&["GIT", "REPOSITORY"], ObjectType::Other),
    (&["EXTERNAL", "VOLUME"], ObjectType::Other),
    (&["TABLE"], ObjectType::Table),
    (&["TABLES"], ObjectType::Table),
    (&["VIEW"], ObjectType::View),
    (&["VIEWS"], ObjectType::View),
    (&["SCHEMA"], ObjectType::Schema),
    (&["SCHEMAS"], ObjectType::Schema),
    (&["DATABASE"], ObjectType::Database),
    (&["DATABASES"], ObjectType::Database),
    (&["WAREHOUSE"], ObjectType::Warehouse),
    (&["ROLE"], ObjectType::Role),
    (&["USER"], ObjectType::User),
    (&["STAGE"], ObjectType::Stage),
    (&["STAGES"], ObjectType::Stage),
    (&["SEQUENCE"], ObjectType::Sequence),
    (&["SEQUENCES"], ObjectType::Sequence),
    (&["STREAM"], ObjectType::Stream),
    (&["STREAMS"], ObjectType::Stream),
    (&["TASK"], ObjectType::Task),
    (&["TASKS"], ObjectType::Task),
    (&["PIPE"], ObjectType::Pipe),
    (&["PIPES"], ObjectType::Pipe),
    (&["FUNCTION"], ObjectType::Function),
    (&["FUNCTIONS"], ObjectType::Function),
    (&["PROCEDURE"], ObjectType::Procedure),
    (&["PROCEDURES"], ObjectType::Procedure),
    (&["INTEGRATION"], ObjectType::Integration),
    (&["SHARE"], ObjectType::Share),
    (&["TAG"], ObjectType::Tag),
    (&["SECRET"], ObjectType::Secret),
    (&["ALERT"], ObjectType::Alert),
    (&["ACCOUNT"], ObjectType::Account),
    (&["POLICY"], ObjectType::Policy),
];

/// Words that may stand between `CREATE`/`DROP`/`ALTER` and the object type.
const TYPE_MODIFIERS: &[&str] = &[
    "TEMPORARY",
    "TEMP",
    "TRANSIENT",
    "VOLATILE",
    "LOCAL",
    "GLOBAL",
    "SECURE",
    "RECURSIVE",
    "EXTERNAL",
    "DYNAMIC",
    "HYBRID",
    "ICEBERG",
    "EVENT",
];

/// Reads an object type at `idx`, after optional modifiers. With `fallback_other`, an
/// unrecognised word is taken as an [`ObjectType::Other`] type name.
fn read_object_type(
    v: View<'_>,
    idx: usize,
    allow_modifiers: bool,
    fallback_other: bool,
) -> Option<(ObjectType, usize)> {
    let mut at = idx;
    loop {
        for (words, object_type) in OBJECT_TYPES {
            if words.iter().enumerate().all(|(offset, word)| v.kw(at + offset, word)) {
                return Some((*object_type, at + words.len()));
            }
        }
        match v.upper(at) {
            Some(word) if allow_modifiers && TYPE_MODIFIERS.contains(&word.as_str()) => at += 1,
            Some(_) if fallback_other => return Some((ObjectType::Other, at + 1)),
            _ => return None,
        }
    }
}

fn skip_if_exists(v: View<'_>, idx: usize) -> usize {
    if v.kw(idx, "IF") && v.kw(idx + 1, "EXISTS") {
        idx + 2
    } else if v.kw(idx, "IF") && v.kw(idx + 1, "NOT") && v.kw(idx + 2, "EXISTS") {
        idx + 3
    } else {
        idx
    }
}

/// Reads an object name at `idx`: a dotted name (`db..t` meaning `db.PUBLIC.t`),
/// `IDENTIFIER('…')`, or a variable or bind (a name only known at run time).
fn read_name(v: View<'_>, idx: usize) -> Option<(ObjectName, usize)> {
    match v.tok(idx)? {
        Token::Word(word)
            if word.quote_style.is_none()
                && word.value.eq_ignore_ascii_case("IDENTIFIER")
                && v.is(idx + 1, &Token::LParen) =>
        {
            let close = v.matching_close(idx + 1)?;
            let name = match v.tok(idx + 2) {
                Some(Token::SingleQuotedString(literal)) if close == idx + 3 && v.decodes_alike(idx + 2) => {
                    name_from_literal(literal)
                }
                _ => ObjectName::Dynamic,
            };
            Some((name, close + 1))
        }
        Token::Word(_) => {
            let mut parts = Vec::new();
            let mut at = idx;
            loop {
                match v.tok(at) {
                    Some(Token::Word(word)) => parts.push(canonical_word(word)),
                    _ => return Some((ObjectName::Dynamic, at)),
                }
                at += 1;
                if !v.is(at, &Token::Period) {
                    break;
                }
                at += 1;
                while v.is(at, &Token::Period) {
                    parts.push("PUBLIC".to_owned());
                    at += 1;
                }
            }
            Some((ObjectName::Parts(parts), at))
        }
        Token::Placeholder(_) => Some((ObjectName::Dynamic, idx + 1)),
        Token::Colon if matches!(v.tok(idx + 1), Some(Token::Word(_))) => Some((ObjectName::Dynamic, idx + 2)),
        _ => None,
    }
}

/// Reads a stage reference at `idx` (the `@`): `@name`, `@db.sch.name`, `@~`, `@%table`,
/// with an optional path glued to it. Returns the name and the index after the path.
fn read_stage(v: View<'_>, idx: usize) -> (ObjectName, usize) {
    let mut at = idx + 1;
    let name = match v.tok(at) {
        Some(Token::Tilde) => {
            at += 1;
            ObjectName::parts(["~"])
        }
        Some(Token::Mod) => match read_name(v, at + 1) {
            Some((ObjectName::Parts(mut parts), next)) => {
                at = next;
                if let Some(last) = parts.last_mut() {
                    last.insert(0, '%');
                }
                ObjectName::Parts(parts)
            }
            _ => ObjectName::Dynamic,
        },
        _ => match read_name(v, at) {
            Some((name, next)) => {
                at = next;
                name
            }
            None => ObjectName::Dynamic,
        },
    };
    if v.is(at, &Token::Div) && at > 0 && v.adjacent(at - 1, at) {
        while at < v.len() && v.adjacent(at - 1, at) {
            at += 1;
        }
    }
    (name, at)
}

#[derive(Default, Clone, Copy)]
struct ScanOptions {
    /// The `FROM` of `DELETE FROM <target>`: its table is the target, not a read.
    skip_from_at: Option<usize>,
    /// `USING` at the top level lists tables (`DELETE … USING`, `MERGE … USING`).
    using_is_from: bool,
}

struct Cte {
    name: String,
    visible: std::ops::Range<usize>,
}

/// CTE names and where each is visible: from the end of its definition (from its name for
/// `WITH RECURSIVE`) to the end of the parenthesis level holding the `WITH`.
fn find_ctes(v: View<'_>) -> Vec<Cte> {
    // Where the parenthesis level holding each `WITH` ends, in one pass.
    let mut level_ends: Vec<(usize, usize)> = Vec::new();
    let mut open_levels: Vec<Vec<usize>> = vec![Vec::new()];
    for idx in 0..v.len() {
        match v.tok(idx) {
            Some(Token::LParen | Token::LBracket | Token::LBrace) => open_levels.push(Vec::new()),
            Some(Token::RParen | Token::RBracket | Token::RBrace) if open_levels.len() > 1 => {
                for with_at in open_levels.pop().unwrap_or_default() {
                    level_ends.push((with_at, idx));
                }
            }
            _ if v.kw(idx, "WITH") => open_levels.last_mut().map_or((), |level| level.push(idx)),
            _ => {}
        }
    }
    for with_at in open_levels.into_iter().flatten() {
        level_ends.push((with_at, v.len()));
    }
    level_ends.sort_unstable();
    let mut ctes = Vec::new();
    for (with_at, level_end) in level_ends {
        let mut at = with_at + 1;
        let recursive = v.kw(at, "RECURSIVE");
        if recursive {
            at += 1;
        }
        while let Some(Token::Word(word)) = v.tok(at) {
            let (name, name_at) = (canonical_word(word), at);
            at += 1;
            if v.is(at, &Token::LParen) {
                match v.matching_close(at) {
                    Some(close) => at = close + 1,
                    None => break,
                }
            }
            if !v.kw(at, "AS") {
                break;
            }
            at += 1;
            if v.kw(at, "NOT") {
                at += 1;
            }
            if v.kw(at, "MATERIALIZED") {
                at += 1;
            }
            if !v.is(at, &Token::LParen) {
                break;
            }
            let Some(close) = v.matching_close(at) else { break };
            let from = if recursive { name_at } else { close + 1 };
            ctes.push(Cte { name, visible: from..level_end });
            at = close + 1;
            if !v.is(at, &Token::Comma) {
                break;
            }
            at += 1;
        }
    }
    ctes
}

struct Level {
    from_list: bool,
    opener: Option<String>,
    /// `CASE`s open at this level: their `WHEN`s and `END`s are not clause words.
    cases: usize,
}

/// Words that end a `FROM` list at their level.
const FROM_LIST_ENDS: &[&str] = &[
    "WHERE",
    "GROUP",
    "HAVING",
    "QUALIFY",
    "ORDER",
    "LIMIT",
    "OFFSET",
    "FETCH",
    "UNION",
    "EXCEPT",
    "MINUS",
    "INTERSECT",
    "WINDOW",
    "SELECT",
    "SET",
    "WHEN",
    "CONNECT",
    "START",
    "RETURNING",
];

/// Functions in whose parentheses `FROM` is not a clause (`EXTRACT(YEAR FROM d)`).
const FROM_IN_FUNCTION: &[&str] =
    &["EXTRACT", "TRIM", "LTRIM", "RTRIM", "SUBSTRING", "SUBSTR", "POSITION", "OVERLAY", "DATE_PART", "CEIL", "FLOOR"];

/// Finds every table, stage, location and query result the tokens read, and adds a
/// `read_kind` action for each.
fn scan_reads(v: View<'_>, b: &mut Builder, read_kind: Kind, options: ScanOptions) {
    let ctes = find_ctes(v);
    let mut levels = vec![Level { from_list: false, opener: None, cases: 0 }];
    let mut expect_table = false;
    let mut used_using = false;
    let mut row_commas = HashSet::new();
    // The call the last `)` closed (`NTH_VALUE(x, 2) FROM FIRST` is not a FROM clause).
    let mut closed: Option<String> = None;
    let mut idx = 0;
    while idx < v.len() {
        if expect_table {
            expect_table = false;
            if let Some(next) =
                table_factor(v, idx, read_kind, &ctes, b, &mut levels, &mut expect_table, &mut row_commas)
            {
                idx = next;
                continue;
            }
        }
        let Some(token) = v.tok(idx) else { break };
        match token {
            Token::LParen | Token::LBracket | Token::LBrace => {
                // A query as a function's argument (`LTRIM(SELECT … FROM t)`) is a query: its
                // FROM is a clause whatever the function.
                let query = v.kw(idx + 1, "SELECT") || v.kw(idx + 1, "WITH");
                let opener = idx.checked_sub(1).and_then(|prev| v.upper(prev)).filter(|_| !query);
                levels.push(Level { from_list: false, opener, cases: 0 });
            }
            Token::RParen | Token::RBracket | Token::RBrace if levels.len() > 1 => {
                closed = levels.pop().and_then(|level| level.opener);
            }
            Token::Comma if !row_commas.contains(&idx) && levels.last().is_some_and(|level| level.from_list) => {
                expect_table = true;
            }
            Token::AtSign => {
                // A stage named anywhere (`GET_PRESIGNED_URL(@s, …)`, `DIRECTORY(@s)`) is read.
                let (name, next) = read_stage(v, idx);
                b.on(read_kind, ObjectType::Stage, name);
                idx = next.max(idx + 1);
                continue;
            }
            Token::Word(word) if v.is(idx + 1, &Token::LParen) && word.quote_style.is_some() => {
                builtin_read(v, idx, &canonical_word(word), read_kind, b);
                qualified_call(v, idx, read_kind, b);
            }
            Token::Word(word) if word.quote_style.is_none() => {
                let upper = word.value.to_ascii_uppercase();
                if v.is(idx + 1, &Token::LParen) {
                    builtin_read(v, idx, &upper, read_kind, b);
                    qualified_call(v, idx, read_kind, b);
                }
                match upper.as_str() {
                    "FROM"
                        if Some(idx) != options.skip_from_at
                            && !from_is_not_a_clause(v, idx, &levels, closed.as_deref()) =>
                    {
                        set_from_list(&mut levels, true);
                        expect_table = true;
                    }
                    "JOIN" => {
                        set_from_list(&mut levels, true);
                        expect_table = true;
                    }
                    "USING" if options.using_is_from && levels.len() == 1 && !used_using => {
                        used_using = true;
                        set_from_list(&mut levels, true);
                        expect_table = true;
                    }
                    // A `CASE` in a join condition (`ON CASE WHEN … END, t`) does not end the
                    // list with its `WHEN`.
                    "CASE" if !is_name_part(v, idx) => {
                        if let Some(level) = levels.last_mut() {
                            level.cases += 1;
                        }
                    }
                    "END" if levels.last().is_some_and(|level| level.cases > 0) && !is_name_part(v, idx) => {
                        if let Some(level) = levels.last_mut() {
                            level.cases -= 1;
                        }
                    }
                    // A clause word after `AS`, or before a comma, is an alias (`FROM t AS
                    // window, u`), one beside a `.` is part of a name (`ON b.fetch = 1, u`),
                    // and one inside a `CASE` is the CASE's: the list goes on.
                    other
                        if FROM_LIST_ENDS.contains(&other)
                            && !(idx >= 1 && v.kw(idx - 1, "AS"))
                            && !(v.is(idx + 1, &Token::Comma) || is_name_part(v, idx))
                            && levels.last().is_none_or(|level| level.cases == 0) =>
                    {
                        set_from_list(&mut levels, false)
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        idx += 1;
    }
}

/// Built-ins that make a URL to a staged file: whoever holds it can download the file, so the
/// call is a `get` from the stage.
const STAGE_URL_FUNCTIONS: &[&str] = &["GET_PRESIGNED_URL", "BUILD_SCOPED_FILE_URL", "BUILD_STAGE_FILE_URL"];

/// Built-ins that read a stage's location, its files' paths or a file.
const STAGE_PATH_FUNCTIONS: &[&str] = &["GET_STAGE_LOCATION", "GET_RELATIVE_PATH", "GET_ABSOLUTE_PATH", "TO_FILE"];

/// A call at `idx` of a built-in that reads an earlier result or a stage, by its canonical
/// name (a quoted upper-case name is the built-in too): what it reads.
fn builtin_read(v: View<'_>, idx: usize, name: &str, read_kind: Kind, b: &mut Builder) {
    if v.tok(idx).is_some_and(is_result_scan) {
        let target = read_target(v.tok(idx + 2), v.tok(idx + 3), v.is(idx + 3, &Token::RParen));
        b.on(read_kind, ObjectType::QueryResult, target_name(target));
    } else if STAGE_URL_FUNCTIONS.contains(&name) {
        // Under `EXPLAIN` nothing runs, so no URL is made.
        let kind = if read_kind == Kind::Explain { read_kind } else { Kind::Get };
        b.on(kind, ObjectType::Stage, stage_argument(v, idx + 2));
    } else if STAGE_PATH_FUNCTIONS.contains(&name) {
        b.on(read_kind, ObjectType::Stage, stage_argument(v, idx + 2));
    }
}

/// The stage a file function names in its first argument at `at`: `@stage` or `'@stage/path'`;
/// anything else (a column, a variable) is only known when it runs.
fn stage_argument(v: View<'_>, at: usize) -> ObjectName {
    match v.tok(at) {
        Some(Token::AtSign) => read_stage(v, at).0,
        Some(Token::SingleQuotedString(text)) if v.decodes_alike(at) => {
            text.strip_prefix('@').map_or(ObjectName::Dynamic, stage_from_text)
        }
        _ => ObjectName::Dynamic,
    }
}

/// Whether the word at `idx` is one part of a dotted name (`b.fetch`, `fetch.x`), which is
/// never a clause word.
fn is_name_part(v: View<'_>, idx: usize) -> bool {
    (idx >= 1 && v.is(idx - 1, &Token::Period)) || v.is(idx + 1, &Token::Period)
}

fn set_from_list(levels: &mut [Level], on: bool) {
    if let Some(level) = levels.last_mut() {
        level.from_list = on;
    }
}

/// Whether the `FROM` at `idx` is part of an expression: inside `EXTRACT(… FROM …)` and kin,
/// in `IS [NOT] DISTINCT FROM`, or right after `NTH_VALUE(…)` as `FROM FIRST|LAST` (`closed`
/// is the call the last `)` closed). Anywhere else `FIRST` and `LAST` are names (`FROM first,
/// hr.t` reads both).
fn from_is_not_a_clause(v: View<'_>, idx: usize, levels: &[Level], closed: Option<&str>) -> bool {
    let in_function = levels.len() > 1
        && levels.last().and_then(|l| l.opener.as_deref()).is_some_and(|opener| FROM_IN_FUNCTION.contains(&opener));
    let distinct_from = idx >= 2 && v.kw(idx - 1, "DISTINCT") && (v.kw(idx - 2, "IS") || v.kw(idx - 2, "NOT"));
    let from_first = idx >= 1
        && v.is(idx - 1, &Token::RParen)
        && closed == Some("NTH_VALUE")
        && (v.kw(idx + 1, "FIRST") || v.kw(idx + 1, "LAST"));
    in_function || distinct_from || from_first
}

/// Keywords after which a name followed by `(` is an object's, not a call's.
const OBJECT_NAME_LEADS: &[&str] = &["INTO", "TABLE", "VIEW", "FUNCTION", "PROCEDURE", "EXISTS", "CALL", "REFERENCES"];

/// A call at `idx` of a function named with its schema (`db.sch.f(…)`, `sch.f(…)`): a
/// user-defined or external function, which reads what its owner may read and may send its
/// arguments out, so the call is a read of the function. (An unqualified call is not reported:
/// it cannot be told from a built-in's.)
fn qualified_call(v: View<'_>, idx: usize, read_kind: Kind, b: &mut Builder) {
    let mut parts = Vec::new();
    let mut at = idx;
    while let Some(Token::Word(word)) = v.tok(at) {
        parts.push(canonical_word(word));
        if at < 2 || !v.is(at - 1, &Token::Period) {
            break;
        }
        at -= 2;
    }
    // A name before a column list or a signature names no call (`INSERT INTO s.t (a)`,
    // `CREATE FUNCTION s.f(x INT)`, `REFERENCES s.t (a)`), and `CALL p(…)` reports its
    // procedure itself.
    // (A name opening the scanned text is a statement's target: `COPY INTO` scans from it.)
    let names_an_object = at == 0 || OBJECT_NAME_LEADS.iter().any(|lead| v.kw(at - 1, lead));
    if parts.len() > 1 && !names_an_object {
        parts.reverse();
        b.on(read_kind, ObjectType::Function, ObjectName::Parts(parts));
    }
}

/// A table function read: its name is the object (unqualified names are built-ins and stay
/// flat; `RESULT_SCAN` is reported as a query result by the scan instead).
fn function_read(b: &mut Builder, read_kind: Kind, name: ObjectName) {
    let name = match name {
        ObjectName::Parts(parts) if parts.len() == 1 => {
            if parts[0] == "RESULT_SCAN" {
                return;
            }
            ObjectName::Flat(parts.into_iter().next().unwrap_or_default())
        }
        other => other,
    };
    b.on(read_kind, ObjectType::Function, name);
}

/// Reads the table factor at `idx`. Returns the index to continue from when it consumed
/// tokens, or `None` to let the scan process `idx` normally (parentheses must be counted).
#[allow(clippy::too_many_arguments)]
fn table_factor(
    v: View<'_>,
    idx: usize,
    read_kind: Kind,
    ctes: &[Cte],
    b: &mut Builder,
    levels: &mut Vec<Level>,
    expect_table: &mut bool,
    row_commas: &mut HashSet<usize>,
) -> Option<usize> {
    match v.tok(idx)? {
        Token::LParen => {
            // A subquery reads through its own FROM; a parenthesised join is a FROM list.
            let subquery = matches!(v.upper(idx + 1).as_deref(), Some("SELECT" | "WITH" | "VALUES"));
            levels.push(Level { from_list: !subquery, opener: None, cases: 0 });
            *expect_table = !subquery;
            Some(idx + 1)
        }
        Token::AtSign => {
            let (name, next) = read_stage(v, idx);
            b.on(read_kind, ObjectType::Stage, name);
            Some(next)
        }
        Token::SingleQuotedString(text) => {
            match text.strip_prefix('@') {
                _ if !v.decodes_alike(idx) => {
                    b.on(read_kind, ObjectType::Stage, ObjectName::Dynamic);
                    b.on(read_kind, ObjectType::Location, ObjectName::Dynamic);
                }
                Some(stage) => b.on(read_kind, ObjectType::Stage, stage_from_text(stage)),
                None => b.on(read_kind, ObjectType::Location, ObjectName::Flat(text.clone())),
            }
            Some(idx + 1)
        }
        Token::Placeholder(_) => {
            b.on(read_kind, ObjectType::Table, ObjectName::Dynamic);
            Some(idx + 1)
        }
        Token::Colon if matches!(v.tok(idx + 1), Some(Token::Word(_))) => {
            b.on(read_kind, ObjectType::Table, ObjectName::Dynamic);
            Some(idx + 2)
        }
        Token::Word(word) => {
            let upper = word.quote_style.is_none().then(|| word.value.to_ascii_uppercase());
            match upper.as_deref() {
                Some("LATERAL") => {
                    // A table function or a subquery follows.
                    *expect_table = true;
                    return Some(idx + 1);
                }
                Some("VALUES") => {
                    // Rows `(…), (…)`: the commas between them do not continue the FROM list.
                    let mut at = idx + 1;
                    while v.is(at, &Token::LParen) {
                        let Some(close) = v.matching_close(at) else { break };
                        if v.is(close + 1, &Token::Comma) && v.is(close + 2, &Token::LParen) {
                            row_commas.insert(close + 1);
                            at = close + 2;
                        } else {
                            break;
                        }
                    }
                    return Some(idx + 1);
                }
                Some(keyword @ ("TABLE" | "IDENTIFIER")) if v.is(idx + 1, &Token::LParen) => {
                    // `TABLE('t')`, `TABLE($v)`, `IDENTIFIER(…)` name a table; `TABLE(f(…))`
                    // calls a table function. The scan then walks the parentheses as usual.
                    let close = v.matching_close(idx + 1).unwrap_or(v.len());
                    match v.tok(idx + 2) {
                        Some(Token::SingleQuotedString(literal)) if close == idx + 3 && v.decodes_alike(idx + 2) => {
                            b.on(read_kind, ObjectType::Table, name_from_literal(literal));
                        }
                        Some(Token::Word(_)) if keyword == "TABLE" => match read_name(v, idx + 2) {
                            Some((name, next)) if v.is(next, &Token::LParen) => function_read(b, read_kind, name),
                            _ => b.on(read_kind, ObjectType::Table, ObjectName::Dynamic),
                        },
                        _ => b.on(read_kind, ObjectType::Table, ObjectName::Dynamic),
                    }
                    return None;
                }
                _ => {}
            }
            let (name, next) = read_name(v, idx)?;
            if v.is(next, &Token::LParen) {
                if v.tok(idx).is_some_and(is_result_scan) {
                    // The scan reports what it reads.
                    return None;
                }
                // A table function (`FLATTEN(…)`, `GENERATOR(…)`): its name is the object; the
                // scan then counts the parenthesis.
                function_read(b, read_kind, name);
                return Some(next);
            }
            let is_cte = match &name {
                ObjectName::Parts(parts) if parts.len() == 1 => {
                    ctes.iter().any(|cte| cte.name == parts[0] && cte.visible.contains(&idx))
                }
                _ => false,
            };
            if !is_cte {
                b.on(read_kind, ObjectType::Table, name);
            }
            Some(next)
        }
        _ => None,
    }
}

/// Whether the top-level `WHERE` mentions a column: a `WHERE` made only of literals,
/// functions without columns and constants (`WHERE 1 = 1`, `WHERE TRUE`) is treated as none.
fn where_names_a_column(v: View<'_>) -> bool {
    const NOT_COLUMNS: &[&str] = &[
        "TRUE",
        "FALSE",
        "NULL",
        "AND",
        "OR",
        "NOT",
        "IS",
        "IN",
        "BETWEEN",
        "LIKE",
        "ILIKE",
        "RLIKE",
        "REGEXP",
        "ESCAPE",
        "CASE",
        "WHEN",
        "THEN",
        "ELSE",
        "END",
        "EXISTS",
        "ANY",
        "ALL",
        "SOME",
        "SELECT",
        "DISTINCT",
        "AS",
        "WHERE",
        "ON",
        "CURRENT_DATE",
        "CURRENT_TIME",
        "CURRENT_TIMESTAMP",
        "LOCALTIME",
        "LOCALTIMESTAMP",
        "CURRENT_USER",
        "CURRENT_ROLE",
        "SYSDATE",
        "DATE",
        "TIME",
        "TIMESTAMP",
        "INTERVAL",
    ];
    let depths = v.depths();
    let where_at = v.find_at_depth(&depths, 1, 0, |t| is_keyword(t, "WHERE"));
    let mut idx = where_at + 1;
    while idx < v.len() {
        if v.kw(idx, "FROM") || v.kw(idx, "JOIN") {
            // The table of a subquery is not a column.
            idx += 1;
            while matches!(v.tok(idx), Some(Token::Word(_))) {
                idx += 1;
                if v.is(idx, &Token::Period) {
                    idx += 1;
                } else {
                    break;
                }
            }
            continue;
        }
        if let Some(Token::Word(word)) = v.tok(idx) {
            let after_cast = idx > 0 && v.is(idx - 1, &Token::DoubleColon);
            let function = v.is(idx + 1, &Token::LParen);
            let constant =
                word.quote_style.is_none() && NOT_COLUMNS.contains(&word.value.to_ascii_uppercase().as_str());
            if !after_cast && !function && !constant {
                return true;
            }
        }
        idx += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_default(sql: &str) -> Classified {
        classify(sql, &Limits::default())
    }

    fn one(sql: &str) -> ClassifiedStatement {
        let classified = classify_default(sql);
        assert_eq!(classified.refusal, None, "{sql}");
        assert_eq!(classified.statements.len(), 1, "{sql}");
        classified.statements.into_iter().next().unwrap()
    }

    fn kinds(sql: &str) -> Vec<String> {
        one(sql)
            .actions
            .iter()
            .map(|a| match &a.object {
                Some(object) => format!("{} {} {}", a.kind, object.object_type, object.name),
                None => a.kind.to_string(),
            })
            .collect()
    }

    /// A `;` left inside a statement that is not a block (a `BEGIN` the split took for a
    /// block's where Snowflake reads a name) makes the statement unknown: what follows the `;`
    /// was never classified. Here the statement is a task's body, classified on its own.
    #[test]
    fn a_semicolon_outside_a_block_is_unknown() {
        let body = one("create task t as call p(1) as begin x; drop table u");
        assert_eq!(body.unknown_reason, Some("the statement holds a `;` outside a Snowflake Scripting block"));
        assert!(one("create task t as begin delete from a.b.c; end").unknown_reason.is_none());
        assert!(one("begin select 1; end").unknown_reason.is_none());
    }

    #[test]
    fn selects_report_their_tables_not_their_ctes() {
        assert_eq!(kinds("select 1"), ["select"]);
        assert_eq!(kinds("SELECT * FROM db.sch.t"), ["select table DB.SCH.T"]);
        assert_eq!(
            kinds("select a from t1 join \"x y\".t2 on t1.a = t2.a, t3"),
            ["select table T1", "select table \"x y\".T2", "select table T3"]
        );
        assert_eq!(
            kinds("with c as (select * from src) select * from c join c2 on true"),
            ["select table SRC", "select table C2"]
        );
        // A non-recursive CTE body reads the real table of the same name.
        assert_eq!(kinds("with t as (select * from t) select * from t"), ["select table T"]);
        assert_eq!(
            kinds("select * from (select * from a) x, lateral flatten(input => x.v) f"),
            ["select table A", "select function FLATTEN"]
        );
        assert_eq!(kinds("select * from values (1), (2) v (a), hr.s"), ["select table HR.S"]);
        assert_eq!(kinds("select * from values (1) v, (hr.s)"), ["select table HR.S"]);
        assert_eq!(kinds("select * from values ((select max(x) from hr.s))"), ["select table HR.S"]);
        assert_eq!(
            kinds("select * from table(information_schema.query_history())"),
            ["select function INFORMATION_SCHEMA.QUERY_HISTORY"]
        );
        assert_eq!(kinds("select extract(year from d), a is distinct from b from t"), ["select table T"]);
        assert_eq!(kinds("select * from ((a join b on true))"), ["select table A", "select table B"]);
        assert_eq!(kinds("select * from db..t"), ["select table DB.PUBLIC.T"]);
    }

    #[test]
    fn a_case_or_a_qualified_clause_word_in_a_join_condition_does_not_end_the_from_list() {
        assert_eq!(
            kinds("select s.* from a join b on case when true then true end, hr.payroll.salaries s"),
            ["select table A", "select table B", "select table HR.PAYROLL.SALARIES"]
        );
        assert_eq!(
            kinds("select * from a join b on case when x then case when y then 1 end end = 1, hr.s where true"),
            ["select table A", "select table B", "select table HR.S"]
        );
        for word in ["fetch", "window", "limit", "offset", "start"] {
            assert_eq!(
                kinds(&format!("select * from a join b on b.{word} = 1, hr.s")),
                ["select table A", "select table B", "select table HR.S"],
                "{word}"
            );
        }
        // A MERGE's WHEN still ends its USING list after a CASE in its condition.
        assert_eq!(
            kinds("merge into t using s on case when s.a then true end when matched then delete"),
            ["merge table T", "select table S"]
        );
    }

    #[test]
    fn a_table_the_parser_sees_but_the_scan_misses_makes_the_statement_unknown() {
        let limits = Limits::default();
        let mut b = Builder { byte_range: 0..0, kind: Kind::Select, actions: Vec::new(), unknown_reason: None };
        let lexed = lex("select * from a, hr.s", &limits).unwrap();
        let range = split(&lexed).remove(0);
        let cx = Cx { lexed: &lexed, limits: &limits, depth: 0 };
        let v = View { lexed: &lexed, sig: &lexed.significant[range] };
        let ast = parse_single(&cx, v).unwrap();
        // As if the scan had found only `a`.
        b.on(Kind::Select, ObjectType::Table, ObjectName::parts(["A"]));
        check_tables_found(&ast, &mut b);
        assert_eq!(b.kind, Kind::Unknown);
        // Found, both pass; CTEs, table functions and stages are not tables.
        let mut b = Builder { byte_range: 0..0, kind: Kind::Select, actions: Vec::new(), unknown_reason: None };
        b.on(Kind::Select, ObjectType::Table, ObjectName::parts(["A"]));
        b.on(Kind::Select, ObjectType::Table, ObjectName::parts(["HR", "S"]));
        check_tables_found(&ast, &mut b);
        assert_eq!(b.kind, Kind::Select);
        assert_eq!(
            kinds(
                "with c as (select 1) select * from c, table(generator(rowcount => 1)), lateral flatten(input => c.v), @st"
            ),
            ["select function GENERATOR", "select function FLATTEN", "select stage ST"]
        );
    }

    #[test]
    fn a_table_the_scan_misses_cannot_be_excused_by_a_namesake() {
        // The scan ends the FROM list at an unquoted `fetch` (a column name here); the tree
        // holds the table after it, in every statement that carries a query.
        let hidden =
            "select s.* from (select 1 as fetch) a join analytics.public.b on fetch = 1, hr.payroll.salaries s";
        for sql in [
            hidden.to_owned(),
            format!("create table scratch.x as {hidden}"),
            format!("copy into @st from ({hidden})"),
            format!("set v = ({hidden})"),
            // A CTE, a table of the same last name elsewhere, or a function of that name
            // does not stand for it.
            format!("with salaries as (select 1) {hidden}"),
            format!("{hidden} join analytics.public.salaries x on true"),
        ] {
            assert!(kinds(&sql).contains(&"unknown".to_owned()), "{sql}: {:?}", kinds(&sql));
        }
        // A CTE in scope is not a table; one out of scope does not excuse a table of its name.
        assert_eq!(kinds("with c as (select 1) select * from c"), ["select"]);
        assert!(
            kinds("select * from (with t as (select 1) select * from t) x join b on fetch = 1, t")
                .contains(&"unknown".to_owned())
        );
    }

    #[test]
    fn blocks_read_their_bodies_whatever_the_first_word_after_begin() {
        // After a DECLARE section, BEGIN opens the body even before `name`, `work` or
        // `transaction` (variables may have those names).
        for first in ["name", "work", "transaction"] {
            let sql = format!("declare {first} varchar; begin {first} := 'x'; drop database prod; end;");
            assert!(kinds(&sql).contains(&"drop database PROD".to_owned()), "{sql}: {:?}", kinds(&sql));
        }
        // A statement in a block's expression is found with its name quoted.
        for (sql, expected) in [
            (
                r#"begin let r resultset := (update "ORDERS" set amount = 0); return table(r); end;"#,
                "update_all table ORDERS",
            ),
            (r#"begin let r resultset := (truncate "T"); end;"#, "truncate table T"),
            (r#"begin let c cursor for (call "P"()); end;"#, "call"),
        ] {
            let found = kinds(sql);
            assert!(found.iter().any(|k| k.starts_with(expected)), "{sql}: {found:?}");
        }
    }

    #[test]
    fn copy_into_a_string_or_a_variable_is_a_copy_to_a_location() {
        assert_eq!(
            kinds("copy into $$s3://bucket/out/$$ from t"),
            ["copy_into_location location s3://bucket/out/", "select table T"]
        );
        assert_eq!(kinds("copy into $$@st/out/$$ from t"), ["copy_into_location stage ST", "select table T"]);
        assert_eq!(
            kinds("copy into $target from t"),
            ["copy_into_location stage <dynamic>", "copy_into_location location <dynamic>", "select table T"]
        );
        assert_eq!(kinds("copy into t from @st"), ["copy_into_table table T", "select stage ST"]);
    }

    #[test]
    fn names_that_look_like_clause_words_do_not_hide_the_tables_after_them() {
        // FIRST and LAST are names but after NTH_VALUE(…).
        assert_eq!(
            kinds("with first as (select 1) select * from first, hr.payroll.salaries"),
            ["select table HR.PAYROLL.SALARIES"]
        );
        assert_eq!(kinds("select * from last.x.y, hr.s"), ["select table LAST.X.Y", "select table HR.S"]);
        // A clause word as an alias does not end the FROM list.
        assert_eq!(
            kinds("select * from analytics.pub.t as window, hr.payroll.salaries"),
            ["select table ANALYTICS.PUB.T", "select table HR.PAYROLL.SALARIES"]
        );
        assert_eq!(kinds("select * from a fetch, hr.s"), ["select table A", "select table HR.S"]);
        assert_eq!(kinds("select * from a where x = 1"), ["select table A"]);
        // A query as a function's argument has a FROM clause of its own.
        assert_eq!(
            kinds("select ltrim(select listagg(ssn, ',') from hr.payroll.salaries)"),
            ["select table HR.PAYROLL.SALARIES"]
        );
        assert_eq!(kinds("select trim(both 'x' from a) from t"), ["select table T"]);
    }

    #[test]
    fn names_in_strings_whose_escapes_snowflake_decodes_otherwise_are_dynamic() {
        // Snowflake reads `\x52` as `R`, `\122` as `R`, `\u0052` as `R`; sqlparser as `x52`...
        for escape in ["\\x52", "\\122", "\\u0052"] {
            let name = format!("h{escape}.pay");
            assert_eq!(kinds(&format!("select * from identifier('{name}')")), ["select table <dynamic>"], "{name}");
            assert_eq!(kinds(&format!("select * from table('{name}')")), ["select table <dynamic>"], "{name}");
            assert_eq!(kinds(&format!("list '@{name}'")), ["list stage <dynamic>"], "{name}");
            assert_eq!(
                kinds(&format!("select $1 from '@{name}/f.csv'")),
                ["select stage <dynamic>", "select location <dynamic>"]
            );
            assert_eq!(
                kinds(&format!("copy into '@{name}/out' from t")),
                ["copy_into_location stage <dynamic>", "copy_into_location location <dynamic>", "select table T"]
            );
            assert_eq!(
                kinds(&format!("select get_presigned_url('@{name}', 'f.csv')")),
                ["select", "get stage <dynamic>"]
            );
        }
        assert_eq!(
            kinds("alter stage s set url = 's3:\\x2f\\x2fattacker/'"),
            ["alter stage S", "alter location <dynamic>"]
        );
        // Escapes both decode alike are read as before.
        assert_eq!(kinds("select * from identifier('\\\"hr\\\".pay')"), ["select table \"hr\".PAY"]);
    }

    #[test]
    fn dynamic_names_stages_and_results() {
        assert_eq!(kinds("select * from identifier($t)"), ["select table <dynamic>"]);
        assert_eq!(kinds("select * from identifier('hr.pay')"), ["select table HR.PAY"]);
        assert_eq!(kinds("select * from table('hr.pay')"), ["select table HR.PAY"]);
        assert_eq!(kinds("select * from table(result_scan(last_query_id()))"), ["select query_result <dynamic>"]);
        assert_eq!(kinds("select $1 from @db.s.stg/path/f.csv"), ["select stage DB.S.STG"]);
        assert_eq!(kinds("select * from table(flatten(input => parse_json('[1]')))"), ["select function FLATTEN"]);
        assert_eq!(kinds("select * from table(my_var)"), ["select table <dynamic>"]);
    }

    #[test]
    fn dml_kinds_and_targets() {
        assert_eq!(kinds("delete from t"), ["delete_all table T"]);
        assert_eq!(kinds("delete from t where 1 = 1"), ["delete_all table T"]);
        assert_eq!(kinds("delete from t where id = 3"), ["delete table T"]);
        assert_eq!(kinds("delete from t using u where t.id = u.id"), ["delete table T", "select table U"]);
        assert_eq!(kinds("update t set a = 1"), ["update_all table T"]);
        assert_eq!(kinds("update t set a = 1 from u where t.id = u.id"), ["update table T", "select table U"]);
        assert_eq!(kinds("insert into t select * from u"), ["insert table T", "select table U"]);
        assert_eq!(kinds("insert overwrite into t values (1)"), ["insert table T", "delete_all table T"]);
        assert_eq!(
            kinds("merge into t using s on t.id = s.id when matched then delete"),
            ["merge table T", "select table S"]
        );
    }

    #[test]
    fn ddl_dcl_and_data_movement() {
        assert_eq!(kinds("create or replace table t (a int)"), ["create_or_replace table T"]);
        assert_eq!(kinds("create table if not exists s.t clone s.u"), ["create table S.T", "select table S.U"]);
        assert_eq!(kinds("drop database if exists prod"), ["drop database PROD"]);
        assert_eq!(kinds("undrop schema a.b"), ["undrop schema A.B"]);
        assert_eq!(kinds("truncate table if exists t"), ["truncate table T"]);
        assert_eq!(kinds("grant role accountadmin to user agent"), ["grant role ACCOUNTADMIN", "grant user AGENT"]);
        assert_eq!(kinds("grant select on all tables in schema a.b to role r"), ["grant schema A.B", "grant role R"]);
        assert_eq!(
            kinds("copy into @s/out from (select * from hr.pay)"),
            ["copy_into_location stage S", "select table HR.PAY"]
        );
        assert_eq!(kinds("copy into 's3://b/x' from t"), ["copy_into_location location s3://b/x", "select table T"]);
        assert_eq!(
            kinds("copy into t from @s file_format = (type = csv)"),
            ["copy_into_table table T", "select stage S"]
        );
        assert_eq!(kinds("put file:///tmp/x.csv @my_stage auto_compress = true"), ["put stage MY_STAGE"]);
        assert_eq!(kinds("get @%orders 'file:///tmp/'"), ["get stage %ORDERS"]);
        assert_eq!(kinds("list @~"), ["list stage ~"]);
    }

    #[test]
    fn session_and_code() {
        assert_eq!(kinds("use role accountadmin"), ["use_role role ACCOUNTADMIN"]);
        assert_eq!(kinds("use db.sch"), ["use_schema schema DB.SCH"]);
        assert_eq!(kinds("alter session set query_tag = 'x'"), ["alter_session parameter QUERY_TAG"]);
        assert_eq!(
            kinds("alter session set multi_statement_count = 0"),
            ["alter_session_sensitive parameter MULTI_STATEMENT_COUNT"]
        );
        assert_eq!(
            kinds("set (a, b) = (1, (select max(x) from t))"),
            ["set_variable variable A", "set_variable variable B", "select table T"]
        );
        assert_eq!(kinds("call p(1)"), ["call procedure P"]);
        assert_eq!(kinds("execute immediate 'drop table t'"), ["execute_immediate", "drop table T"]);
        assert_eq!(kinds("execute immediate $q"), ["execute_immediate_dynamic variable Q"]);
        assert_eq!(kinds("execute immediate 'select ' || 'x'"), ["execute_immediate_dynamic"]);
        assert_eq!(
            kinds("select system$cancel_all_queries(1)"),
            ["select", "system_function function SYSTEM$CANCEL_ALL_QUERIES"]
        );
        assert_eq!(kinds("begin drop table t; end"), ["scripting_block", "drop table T"]);
    }

    #[test]
    fn statements_in_a_blocks_resultsets_and_cursors_are_classified() {
        // A RESULTSET's query may be any statement Snowflake runs, DML included.
        for sql in [
            "begin let r resultset := (delete from hr.pay); return table(r); end",
            "declare r resultset default (delete from hr.pay); begin return table(r); end",
            "begin r := async (delete from hr.pay); return table(r); end",
            "declare c cursor for delete from hr.pay; begin open c; end",
        ] {
            let classified = kinds(sql);
            // (The expression's scan for reads also counts the DELETE's FROM as a read.)
            assert!(classified.contains(&"delete_all table HR.PAY".to_owned()), "{sql}: {classified:?}");
        }
        assert_eq!(
            kinds("begin let r resultset := (drop table hr.pay); end"),
            ["scripting_block", "drop table HR.PAY"]
        );
        assert_eq!(
            kinds("begin let r resultset := (select * from hr.pay); return table(r); end"),
            ["scripting_block", "select table HR.PAY"]
        );
        // Keywords used as names or functions in expressions are not statements.
        assert_eq!(kinds("begin let x := (comment || 'a'); let y := (get(arr, 0)); end"), ["scripting_block"]);
        for expression in ["start is null", "comment is not null", "set in (1, 2)", "show and use", "list like 'a%'"] {
            let sql = format!("begin if ({expression}) then return 1; end if; end");
            assert_eq!(kinds(&sql), ["scripting_block"], "{sql}");
        }
        assert!(is_unknown("begin let r resultset := (with c as (select 1) delete from hr.pay); end"));
    }

    #[test]
    fn calls_of_functions_named_with_their_schema_are_reads_of_the_function() {
        assert_eq!(kinds("select finance.public.ledger_total()"), ["select function FINANCE.PUBLIC.LEDGER_TOTAL"]);
        assert_eq!(
            kinds("select analytics.public.ext_post(ssn) from hr.public.pay"),
            ["select function ANALYTICS.PUBLIC.EXT_POST", "select table HR.PUBLIC.PAY"]
        );
        assert_eq!(kinds("select sch.\"f\"(1)"), ["select function SCH.\"f\""]);
        assert_eq!(kinds("delete from t where a = db.sch.f(b)"), ["delete table T", "select function DB.SCH.F"]);
        // Names before column lists and signatures are objects, not calls.
        assert_eq!(kinds("insert into sandbox.t (id, amt) values (1, 2)"), ["insert table SANDBOX.T"]);
        assert_eq!(kinds("create table if not exists s.t (a int)"), ["create table S.T"]);
        assert!(!kinds("copy into s.t (a, b) from @st").iter().any(|k| k.contains("function")));
        assert!(!kinds("create table s.t (a int references s.u (b))").iter().any(|k| k.contains("function")));
        // Unqualified calls cannot be told from built-ins.
        assert_eq!(kinds("select upper(a), my_udf(b) from t"), ["select table T"]);
    }

    #[test]
    fn a_stream_reads_its_source() {
        assert_eq!(
            kinds("create stream sandbox.s on table hr.pay show_initial_rows = true"),
            ["create stream SANDBOX.S", "select table HR.PAY"]
        );
        assert_eq!(
            kinds("create or replace stream s copy grants on view hr.v at (offset => -60)"),
            ["create_or_replace stream S", "select view HR.V"]
        );
        assert_eq!(kinds("create stream s on external table hr.ext"), ["create stream S", "select table HR.EXT"]);
        assert_eq!(kinds("create stream s on stage hr.stg"), ["create stream S", "select stage HR.STG"]);
        assert_eq!(kinds("create stream s clone hr.s0"), ["create stream S", "select stream HR.S0"]);
        assert!(is_unknown("create stream s on something hr.pay"));
    }

    #[test]
    fn a_query_holding_another_statement_is_unknown() {
        // sqlparser reads DML where a query may stand; a query must hold nothing but queries.
        for sql in [
            "(delete from hr.pay)",
            "((delete from hr.pay))",
            "select 1 union all (delete from hr.pay)",
            "select * from (delete from hr.pay)",
            "with c as (select 1) delete from hr.pay",
        ] {
            assert!(is_unknown(sql), "{sql}: {:?}", kinds(sql));
        }
        assert_eq!(kinds("(select * from hr.pay)"), ["select table HR.PAY"]);
        assert_eq!(kinds("select 1 union all (select a from t)"), ["select table T"]);
    }

    fn is_unknown(sql: &str) -> bool {
        one(sql).actions.iter().any(|a| a.kind == Kind::Unknown)
    }

    #[test]
    fn keyword_statements_refuse_what_their_keywords_do_not_take() {
        assert_eq!(kinds("commit work"), ["commit"]);
        assert_eq!(kinds("begin transaction name t1"), ["begin"]);
        assert_eq!(kinds("start transaction"), ["begin"]);
        assert_eq!(kinds("show terse tables like 'X%' in schema a.b starts with 'X' limit 10"), ["show"]);
        assert_eq!(kinds("describe function a.b.f(number, varchar)"), ["describe function A.B.F"]);
        assert_eq!(kinds("desc table identifier($t) type = stage"), ["describe table <dynamic>"]);
        // A type word the gateway does not know names no table.
        assert_eq!(kinds("describe service hr.payroll.svc"), ["describe other HR.PAYROLL.SVC"]);
        assert_eq!(kinds("describe orders"), ["describe table ORDERS"]);
        assert_eq!(kinds("describe orders type = stage"), ["describe table ORDERS"]);
        assert_eq!(kinds("use secondary roles all"), ["use_secondary_roles role <dynamic>"]);
        assert_eq!(kinds("use secondary roles none"), ["use_secondary_roles"]);
        assert_eq!(kinds("use secondary roles r1, r2"), ["use_secondary_roles role R1", "use_secondary_roles role R2"]);
        assert_eq!(kinds("unset (a, b)"), ["unset_variable variable A", "unset_variable variable B"]);
        assert_eq!(
            kinds("alter session set query_tag = 'x' lock_timeout = -1"),
            ["alter_session parameter QUERY_TAG", "alter_session parameter LOCK_TIMEOUT"]
        );
        assert_eq!(
            kinds("alter session unset query_tag, timezone"),
            ["alter_session parameter QUERY_TAG", "alter_session parameter TIMEZONE"]
        );
        for sql in [
            "commit drop table t",
            "rollback work and chain",
            "begin transaction work",
            "show tables * from t",
            "describe table t - 1",
            "use role r drop table t",
            "use warehouse w, x",
            "use secondary roles all, r",
            "unset a b",
            "unset (a, b",
            "alter session set query_tag = 'x' drop table t",
            "alter session set query_tag = ('x')",
            "alter session unset query_tag = 1",
        ] {
            assert!(is_unknown(sql), "{sql}");
        }
    }

    #[test]
    fn the_flow_operator_is_refused_even_inside_execute_immediate() {
        assert_eq!(classify_default("show tables ->> drop table t").refusal, Some(Refusal::FlowOperator));
        assert!(is_unknown("execute immediate 'show tables ->> drop table t'"));
        assert!(is_unknown("execute immediate $$alter session set query_tag = 'x' ->> grant role r to user u$$"));
    }

    #[test]
    fn quoted_result_scan_and_describe_result_read_results() {
        assert_eq!(kinds("select * from table(\"RESULT_SCAN\"('q1'))"), ["select query_result q1"]);
        assert_eq!(kinds("select * from table(result_scan('q1'))"), ["select query_result q1"]);
        assert_eq!(
            kinds("select 1 from t where x in (select a from table(\"RESULT_SCAN\"($q)))"),
            ["select table T", "select query_result <dynamic>"]
        );
        // Quoted in lower case, it is some other function.
        assert_eq!(kinds("select * from table(\"result_scan\"('q1'))"), ["select function result_scan"]);
        assert_eq!(kinds("desc result 'q1'"), ["describe query_result q1"]);
        assert_eq!(kinds("DESCRIBE RESULT LAST_QUERY_ID()"), ["describe query_result <dynamic>"]);
    }

    #[test]
    fn stages_are_read_anywhere_and_file_urls_are_downloads() {
        assert_eq!(kinds("select get_presigned_url(@stg, 'export.csv', 3600)"), ["get stage STG", "select stage STG"]);
        assert_eq!(
            kinds("select \"BUILD_SCOPED_FILE_URL\"(@db.s.stg, 'x.csv')"),
            ["get stage DB.S.STG", "select stage DB.S.STG"]
        );
        assert_eq!(kinds("select build_stage_file_url(s.path, 'x')"), ["select", "get stage <dynamic>"]);
        assert_eq!(kinds("select get_stage_location(@stg)"), ["select stage STG"]);
        assert_eq!(kinds("select get_relative_path(@stg, 's3://b/x')"), ["select stage STG"]);
        assert_eq!(kinds("select fl_get_size(to_file('@db.s.stg/a.png'))"), ["select stage DB.S.STG"]);
        assert_eq!(kinds("explain select get_presigned_url(@stg, 'x')"), ["explain stage STG"]);
        // A stage written to is not read.
        assert_eq!(kinds("copy into @s/out/ from hr.pay"), ["copy_into_location stage S", "select table HR.PAY"]);
    }

    #[test]
    fn tasks_alerts_and_pipes_are_read_with_what_they_run() {
        assert_eq!(
            kinds("create task t warehouse = wh schedule = '1 minute' as copy into 's3://x/' from hr.pay"),
            ["create task T", "copy_into_location location s3://x/", "select table HR.PAY"]
        );
        assert_eq!(
            kinds("create or replace task t as begin delete from hr.pay; end"),
            ["create_or_replace task T", "scripting_block", "delete_all table HR.PAY"]
        );
        assert_eq!(
            kinds(
                "create alert a warehouse = w schedule = '1 minute' if (exists (select * from hr.pay)) then drop table t"
            ),
            ["create alert A", "select table HR.PAY", "drop table T"]
        );
        assert_eq!(
            kinds("alter task t modify as grant role r to user u"),
            ["alter task T", "grant role R", "grant user U"]
        );
        assert_eq!(kinds("alter alert a modify action truncate table t"), ["alter alert A", "truncate table T"]);
        assert_eq!(
            kinds("alter alert a modify condition exists (select * from hr.pay)"),
            ["alter alert A", "select table HR.PAY"]
        );
        assert_eq!(kinds("alter task t resume"), ["alter task T"]);
        assert_eq!(kinds("create task t2 clone t1"), ["create task T2", "select task T1"]);
        assert_eq!(
            kinds("create pipe p auto_ingest = true as copy into t from @s"),
            ["create pipe P", "copy_into_table table T", "select stage S"]
        );
        for sql in [
            "create task t warehouse = w schedule = '1 minute'",
            "create task t as",
            "create alert a if (select 1) then drop table t",
            "alter alert a modify condition (select 1)",
            "create task a as create task b as create task c as create task d as create task e as select 1",
        ] {
            assert!(is_unknown(sql), "{sql}");
        }
    }

    #[test]
    fn sql_function_bodies_are_read() {
        assert_eq!(
            kinds("create function analytics.sandbox.f() returns table (a int) as 'select * from hr.pay'"),
            ["create function ANALYTICS.SANDBOX.F", "select table HR.PAY"]
        );
        assert_eq!(
            kinds(
                "create or replace secure function f(x number) returns number as $$ x * (select max(amount) from hr.pay) $$"
            ),
            ["create_or_replace function F", "select table HR.PAY"]
        );
        assert_eq!(kinds("create function f(a number) returns number language sql as 'a * 2'"), ["create function F"]);
        // An argument named like a keyword is an expression, not a statement.
        assert_eq!(
            kinds("create function f(withdrawn number) returns number as 'withdrawn * 2'"),
            ["create function F"]
        );
        assert_eq!(
            kinds("create external function f(a int) returns variant api_integration = api as 'https://x.example/f'"),
            ["create function F"]
        );
        assert_eq!(
            kinds(
                "create procedure p() returns varchar language sql as $$ begin delete from hr.pay; return 'x'; end $$"
            ),
            ["create procedure P", "scripting_block", "delete_all table HR.PAY"]
        );
        // Another language cannot be read: the policy decides on creating it.
        assert_eq!(
            kinds(
                "create function f() returns int language python runtime_version = '3.11' handler = 'h' as 'def h(): return 1'"
            ),
            ["create function F"]
        );
        for sql in [
            "create function f() returns int as 'select 1; drop table t'",
            "create function f() returns int as 'not sql at all ((('",
            "create function f() returns int",
        ] {
            assert!(is_unknown(sql), "{sql}");
        }
    }

    #[test]
    fn external_tables_read_their_stage() {
        assert_eq!(
            kinds(
                "create external table et (c varchar as (value:c::varchar)) location=@hr_stage/pay/ file_format=(type=csv)"
            ),
            ["create table ET", "select stage HR_STAGE"]
        );
        assert_eq!(
            kinds("create or replace external table et with location = @db.s.stg auto_refresh = false"),
            ["create_or_replace table ET", "select stage DB.S.STG"]
        );
        assert_eq!(kinds("alter external table et add partition (d = '1') location '@stg/x/'"), ["alter table ET"]);
        assert_eq!(kinds("alter external table et refresh"), ["alter table ET"]);
        // A stage a query reads is reported by the query's reader, once.
        assert_eq!(kinds("create table t as select $1 from @stg"), ["create table T", "select stage STG"]);
    }

    #[test]
    fn stage_urls_are_locations_when_created_or_altered() {
        assert_eq!(
            kinds("alter stage s set url = 's3://attacker/'"),
            ["alter stage S", "alter location s3://attacker/"]
        );
        assert_eq!(
            kinds("create stage s storage_integration = url url = 's3://b/'"),
            ["create stage S", "create location s3://b/"]
        );
    }

    #[test]
    fn unreadable_statements_are_unknown() {
        assert_eq!(one("\"DROP\" TABLE t").kind, Kind::Unknown);
        assert_eq!(one("select from where").kind, Kind::Unknown);
        assert_eq!(one("frobnicate the warehouse").kind, Kind::Unknown);
        let nested = "execute immediate 'execute immediate ''execute immediate ''''execute immediate ''''''''select 1'''''''''''' '''";
        assert!(one(nested).actions.iter().any(|a| a.kind == Kind::Unknown));
        let escaped = one(r"execute immediate 'select 1 --\x0adrop table t'");
        assert!(escaped.actions.iter().any(|a| a.kind == Kind::Unknown));
    }
}
