//! Object names: how an identifier written in a statement becomes a canonical name, how a
//! partial name is qualified with the session's current database and schema, and how rule
//! globs match names. Pure.
//!
//! Canonical names follow Snowflake: unquoted parts are upper-cased, quoted parts are kept as
//! written, and a part is written back bare only when it reads back as itself. Globs match the
//! canonical name with `.` as the separator (`*` stays within a part, `**` crosses parts);
//! unquoted pattern parts are upper-cased too. A pattern containing `://` matches URLs
//! (external locations) instead, with `/` as the separator.
//!
//! Matching leans to the safe side: allow rules match exactly (case-sensitive) and need every
//! possible reading of a name to match; deny and review rules match without regard to case and
//! fire if any possible reading matches. A name only known at run time matches every deny and
//! review glob and no allow glob.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use sqlparser::dialect::SnowflakeDialect;
use sqlparser::tokenizer::{Token, Tokenizer, Word};

use super::model::{ObjectName, ObjectRef, ObjectType, write_part};

/// The canonical form of one identifier token.
pub(crate) fn canonical_word(word: &Word) -> String {
    canonical(&word.value, word.quote_style)
}

/// An identifier as Snowflake resolves it: unquoted ones in upper case, quoted ones as written
/// (a token's [`canonical_word`], a parsed tree's identifier alike).
pub(crate) fn canonical(value: &str, quote_style: Option<char>) -> String {
    match quote_style {
        None => value.to_ascii_uppercase(),
        Some(_) => value.to_owned(),
    }
}

/// Reads the name held in a string literal (`IDENTIFIER('db.schema."T"')`, `TABLE('t')`) the
/// way Snowflake reads it: as identifier syntax. Anything else is [`ObjectName::Dynamic`].
pub(crate) fn name_from_literal(literal: &str) -> ObjectName {
    let dialect = SnowflakeDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, literal).tokenize() else { return ObjectName::Dynamic };
    let mut parts = Vec::new();
    let mut expect_part = true;
    for token in tokens {
        match token {
            Token::Word(word) if expect_part => {
                parts.push(canonical_word(&word));
                expect_part = false;
            }
            Token::Period if !expect_part => expect_part = true,
            Token::Period if expect_part && !parts.is_empty() => parts.push("PUBLIC".to_owned()),
            _ => return ObjectName::Dynamic,
        }
    }
    if parts.is_empty() || expect_part { ObjectName::Dynamic } else { ObjectName::Parts(parts) }
}

/// The session's current database and schema, canonical (as Snowflake reports them in
/// `finalDatabaseName` / `finalSchemaName`, or as set by `USE`). Partial names are qualified
/// with them; without them a partial name cannot be placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    /// The current database.
    pub database: Option<String>,
    /// The current schema.
    pub schema: Option<String>,
}

impl Namespace {
    /// A namespace from names as Snowflake reports them (already canonical).
    pub fn new(database: Option<&str>, schema: Option<&str>) -> Namespace {
        Namespace { database: database.map(str::to_owned), schema: schema.map(str::to_owned) }
    }
}

/// What a name can be when the statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// One of these canonical names (their parts).
    Names(Vec<Vec<String>>),
    /// An external location URL.
    Url(String),
    /// Unknown until run time.
    Unknowable,
}

/// The glob path of a name for exact matching: parts as Snowflake would write them back
/// (quoted when needed), joined by `/`.
fn exact_path(parts: &[String]) -> String {
    let mut path = String::new();
    for (idx, part) in parts.iter().enumerate() {
        if idx > 0 {
            path.push('/');
        }
        let mut rendered = String::new();
        write_part(&mut rendered, part);
        path.push_str(&rendered.replace('/', "%2F"));
    }
    path
}

/// The glob path of a name for case-blind matching: bare parts, joined by `/`.
fn loose_path(parts: &[String]) -> String {
    parts.iter().map(|part| part.replace('/', "%2F")).collect::<Vec<_>>().join("/")
}

/// Every canonical name `object` can resolve to under `namespace`. An unqualified name can
/// resolve to the current schema or, through Snowflake's default search path, to `PUBLIC`.
pub(crate) fn resolve(object: &ObjectRef, namespace: &Namespace) -> Resolution {
    let parts = match &object.name {
        ObjectName::Dynamic => return Resolution::Unknowable,
        ObjectName::Flat(name) if object.object_type == ObjectType::Location => return Resolution::Url(name.clone()),
        ObjectName::Flat(name) => return Resolution::Names(vec![vec![name.clone()]]),
        ObjectName::Parts(parts) => parts,
    };
    let Some(full) = object.object_type.qualified_parts() else { return Resolution::Names(vec![parts.clone()]) };
    if parts.len() == 1 && parts[0] == "~" {
        return Resolution::Names(vec![parts.clone()]);
    }
    if parts.len() > full || parts.is_empty() {
        return Resolution::Unknowable;
    }
    let qualified = |prefix: &[&String]| -> Vec<String> {
        prefix.iter().map(|p| (*p).clone()).chain(parts.iter().cloned()).collect()
    };
    match full - parts.len() {
        0 => Resolution::Names(vec![parts.clone()]),
        1 => match &namespace.database {
            Some(database) => Resolution::Names(vec![qualified(&[database])]),
            None => Resolution::Unknowable,
        },
        2 => match (&namespace.database, &namespace.schema) {
            (Some(database), Some(schema)) => {
                let public = "PUBLIC".to_owned();
                let mut names = vec![qualified(&[database, schema])];
                if schema != "PUBLIC" {
                    names.push(qualified(&[database, &public]));
                }
                Resolution::Names(names)
            }
            _ => Resolution::Unknowable,
        },
        _ => Resolution::Unknowable,
    }
}

/// A problem with one glob pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("glob {pattern:?}: {problem}")]
pub struct GlobError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Turns a name pattern (`analytics.*.orders_*`, `"My DB".**`) into glob paths over names:
/// split at `.` outside double quotes, unquoted segments upper-cased. Returns the exact path
/// (parts quoted as Snowflake writes them) and the loose one (bare parts).
fn name_pattern_to_paths(pattern: &str) -> Result<(String, String), GlobError> {
    let err = |problem: &str| GlobError { pattern: pattern.to_owned(), problem: problem.to_owned() };
    let mut exact: Vec<String> = Vec::new();
    let mut loose: Vec<String> = Vec::new();
    let mut current_exact = String::new();
    let mut current_loose = String::new();
    let mut chars = pattern.chars().peekable();
    let mut quoted_segment = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if current_exact.is_empty() && !quoted_segment => {
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            value.push('"');
                        }
                        Some('"') => break,
                        Some(other) => value.push(other),
                        None => return Err(err("unterminated quoted part")),
                    }
                }
                if value.is_empty() {
                    return Err(err("empty part"));
                }
                write_part(&mut current_exact, &value);
                current_loose.push_str(&value);
                quoted_segment = true;
            }
            '.' => {
                if current_exact.is_empty() {
                    return Err(err("empty part"));
                }
                exact.push(std::mem::take(&mut current_exact).replace('/', "%2F"));
                loose.push(std::mem::take(&mut current_loose).replace('/', "%2F"));
                quoted_segment = false;
            }
            _ if quoted_segment => return Err(err("text after a quoted part")),
            other => {
                current_exact.push(other.to_ascii_uppercase());
                current_loose.push(other.to_ascii_uppercase());
            }
        }
    }
    if current_exact.is_empty() {
        return Err(err("empty part"));
    }
    exact.push(current_exact.replace('/', "%2F"));
    loose.push(current_loose.replace('/', "%2F"));
    Ok((exact.join("/"), loose.join("/")))
}

fn build_glob(pattern: &str, path: &str, case_insensitive: bool) -> Result<Glob, GlobError> {
    GlobBuilder::new(path)
        .literal_separator(true)
        .case_insensitive(case_insensitive)
        .build()
        .map_err(|e| GlobError { pattern: pattern.to_owned(), problem: e.kind().to_string() })
}

/// A rule's compiled object globs.
#[derive(Debug, Clone)]
pub(crate) struct ObjectGlobs {
    names_exact: GlobSet,
    names_any_case: GlobSet,
    urls_exact: GlobSet,
    urls_any_case: GlobSet,
}

impl ObjectGlobs {
    /// Compiles patterns as written in a rule.
    pub fn compile(patterns: &[String]) -> Result<ObjectGlobs, GlobError> {
        let mut names_exact = GlobSetBuilder::new();
        let mut names_any_case = GlobSetBuilder::new();
        let mut urls_exact = GlobSetBuilder::new();
        let mut urls_any_case = GlobSetBuilder::new();
        for pattern in patterns {
            if pattern.contains("://") {
                urls_exact.add(build_glob(pattern, pattern, false)?);
                urls_any_case.add(build_glob(pattern, pattern, true)?);
            } else {
                let (exact, loose) = name_pattern_to_paths(pattern)?;
                names_exact.add(build_glob(pattern, &exact, false)?);
                names_any_case.add(build_glob(pattern, &loose, true)?);
            }
        }
        let build = |builder: GlobSetBuilder| {
            builder.build().map_err(|e| GlobError { pattern: patterns.join(", "), problem: e.kind().to_string() })
        };
        Ok(ObjectGlobs {
            names_exact: build(names_exact)?,
            names_any_case: build(names_any_case)?,
            urls_exact: build(urls_exact)?,
            urls_any_case: build(urls_any_case)?,
        })
    }

    /// [`ObjectGlobs::matches_resolved`] of `object` resolved in `namespace`.
    #[cfg(test)]
    fn matches(&self, object: &ObjectRef, namespace: &Namespace, allowing: bool) -> bool {
        self.matches_resolved(&resolve(object, namespace), allowing)
    }

    /// Whether an object whose name resolved to `resolution` ([`resolve`]) matches, for a rule
    /// that allows (`allowing`) or one that denies or sends for review. See the module header
    /// for the asymmetry.
    pub(crate) fn matches_resolved(&self, resolution: &Resolution, allowing: bool) -> bool {
        match resolution {
            Resolution::Unknowable => !allowing,
            Resolution::Url(url) => {
                if allowing {
                    self.urls_exact.is_match(url)
                } else {
                    self.urls_any_case.is_match(url)
                }
            }
            Resolution::Names(names) => {
                if allowing {
                    names.iter().all(|parts| self.names_exact.is_match(exact_path(parts)))
                } else {
                    names.iter().any(|parts| self.names_any_case.is_match(loose_path(parts)))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(parts: &[&str]) -> ObjectRef {
        ObjectRef { object_type: ObjectType::Table, name: ObjectName::parts(parts.iter().copied()) }
    }

    fn globs(patterns: &[&str]) -> ObjectGlobs {
        ObjectGlobs::compile(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn literal_names_read_as_identifiers() {
        assert_eq!(name_from_literal("db.sch.t"), ObjectName::parts(["DB", "SCH", "T"]));
        assert_eq!(name_from_literal("\"My T\""), ObjectName::parts(["My T"]));
        assert_eq!(name_from_literal("db..t"), ObjectName::parts(["DB", "PUBLIC", "T"]));
        assert_eq!(name_from_literal("t; drop table x"), ObjectName::Dynamic);
        assert_eq!(name_from_literal(""), ObjectName::Dynamic);
        assert_eq!(name_from_literal("a."), ObjectName::Dynamic);
    }

    #[test]
    fn partial_names_take_the_namespace_and_the_public_fallback() {
        let ns = Namespace::new(Some("ANALYTICS"), Some("MARTS"));
        let names = |sets: &[&[&str]]| {
            Resolution::Names(sets.iter().map(|s| s.iter().map(|p| p.to_string()).collect()).collect())
        };
        assert_eq!(
            resolve(&table(&["ORDERS"]), &ns),
            names(&[&["ANALYTICS", "MARTS", "ORDERS"], &["ANALYTICS", "PUBLIC", "ORDERS"]])
        );
        assert_eq!(resolve(&table(&["S", "T"]), &ns), names(&[&["ANALYTICS", "S", "T"]]));
        assert_eq!(resolve(&table(&["T"]), &Namespace::default()), Resolution::Unknowable);
        assert_eq!(resolve(&table(&["A", "B", "C", "D"]), &ns), Resolution::Unknowable);
        assert_eq!(exact_path(&["DB".into(), "S".into(), "a/b.c".into()]), "DB/S/\"a%2Fb.c\"");
        assert_eq!(loose_path(&["DB".into(), "S".into(), "a/b.c".into()]), "DB/S/a%2Fb.c");
    }

    #[test]
    fn allow_globs_are_exact_and_deny_globs_ignore_case() {
        let ns = Namespace::new(Some("ANALYTICS"), Some("PUBLIC"));
        let analytics = globs(&["analytics.**"]);
        assert!(analytics.matches(&table(&["ANALYTICS", "S", "T"]), &ns, true));
        assert!(analytics.matches(&table(&["T"]), &ns, true));
        assert!(!analytics.matches(&table(&["analytics", "S", "T"]), &ns, true));
        assert!(analytics.matches(&table(&["analytics", "S", "T"]), &ns, false));
        assert!(!analytics.matches(&table(&["HR", "S", "T"]), &ns, true));
        // A quoted part holding dots cannot pose as several parts.
        assert!(!analytics.matches(&table(&["ANALYTICS.S.T"]), &Namespace::default(), true));
        let dynamic = ObjectRef { object_type: ObjectType::Table, name: ObjectName::Dynamic };
        assert!(!analytics.matches(&dynamic, &ns, true));
        assert!(analytics.matches(&dynamic, &ns, false));
    }

    #[test]
    fn single_star_stays_within_a_part() {
        let ns = Namespace::default();
        let one_level = globs(&["ANALYTICS.PUBLIC.*"]);
        assert!(one_level.matches(&table(&["ANALYTICS", "PUBLIC", "T"]), &ns, true));
        assert!(!one_level.matches(&table(&["ANALYTICS", "OTHER", "T"]), &ns, true));
        let quoted = globs(&["\"My DB\".*.*"]);
        assert!(quoted.matches(&table(&["My DB", "S", "T"]), &ns, true));
        assert!(!quoted.matches(&table(&["MY DB", "S", "T"]), &ns, true));
    }

    #[test]
    fn url_patterns_match_locations_only() {
        let ns = Namespace::default();
        let urls = globs(&["s3://corp-exports/**"]);
        let location =
            ObjectRef { object_type: ObjectType::Location, name: ObjectName::Flat("s3://corp-exports/x/y.csv".into()) };
        assert!(urls.matches(&location, &ns, true));
        let elsewhere =
            ObjectRef { object_type: ObjectType::Location, name: ObjectName::Flat("s3://attacker/x".into()) };
        assert!(!urls.matches(&elsewhere, &ns, true));
        assert!(!urls.matches(&table(&["S3", "X", "Y"]), &ns, false));
    }

    #[test]
    fn bad_patterns_are_named() {
        assert!(ObjectGlobs::compile(&["a..b".into()]).is_err());
        assert!(ObjectGlobs::compile(&["\"open".into()]).is_err());
        assert!(ObjectGlobs::compile(&["a.[".into()]).is_err());
    }
}
