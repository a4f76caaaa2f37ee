//! The masking spec checked and compiled once: column globs, detector switches, the dictionary
//! searcher (packed Teddy when the pattern set fits it, else an Aho-Corasick automaton) and
//! mask styles. Errors name the profile and the rule. Nothing here reads result bytes.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickKind, Input, MatchKind, packed};
use globset::{GlobBuilder, GlobMatcher};

use super::AnswerOf;
use super::detect::DetectorKind;
use super::plan::{Column, ColumnPlan, PlannedColumn, ValueType};
use super::spec::{ColumnRuleSpec, DetectorMask, DetectorSwitch, MaskSpec, MaskingSpec, ProfileSpec};

/// The most profiles a spec may define.
pub const PROFILES_MAX: usize = 1024;
/// The most column rules in one profile.
pub const COLUMN_RULES_MAX: usize = 4096;
/// The most dictionary words in one profile.
pub const DICTIONARY_WORDS_MAX: usize = 100_000;
/// The shortest dictionary word, in bytes: shorter words would mask ordinary text.
pub const DICTIONARY_WORD_BYTES_MIN: usize = 3;
/// The longest dictionary word, in bytes.
pub const DICTIONARY_WORD_BYTES_MAX: usize = 256;
/// The longest fixed token, in bytes.
pub const TOKEN_BYTES_MAX: usize = 64;
/// The largest `keep` of a `keep_last` mask.
pub const KEEP_MAX: u32 = 1024;

/// Why a masking spec was refused: the policy author's fault, naming the profile and the rule.
#[derive(Debug, thiserror::Error)]
pub enum MaskConfigError {
    /// A rule is invalid.
    #[error("masking profile {profile:?}, {rule}: {reason}")]
    Rule {
        /// The profile name.
        profile: String,
        /// The rule, e.g. `columns[2] (name "EMAIL")`, `detectors.card`, `dictionary`.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A count or size is over its limit.
    #[error("masking: {what} is over the limit of {limit}")]
    Limit {
        /// What is counted.
        what: String,
        /// The limit.
        limit: usize,
    },
}

/// Which searcher a profile's dictionary (and detector anchors) runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearcherKind {
    /// No words and no anchored detectors: nothing to search.
    None,
    /// The packed SIMD searcher (Teddy).
    Teddy,
    /// An Aho-Corasick DFA (case-insensitive dictionaries, or too many patterns for Teddy).
    Dfa,
    /// An Aho-Corasick contiguous NFA.
    ContiguousNfa,
    /// An Aho-Corasick noncontiguous NFA.
    NoncontiguousNfa,
}

impl SearcherKind {
    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            SearcherKind::None => "none",
            SearcherKind::Teddy => "teddy",
            SearcherKind::Dfa => "aho-corasick-dfa",
            SearcherKind::ContiguousNfa => "aho-corasick-contiguous-nfa",
            SearcherKind::NoncontiguousNfa => "aho-corasick-noncontiguous-nfa",
        }
    }
}

/// A compiled mask style. Tokens live in the profile and are named by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Full,
    KeepLast(u32),
    Token(u16),
    TypeValid,
    Null,
}

impl Style {
    /// When matches with different styles overlap, the stronger style masks the union. The
    /// order is total so the result does not depend on the order matches were found in:
    /// `keep_last` (keeping fewer is stronger) < `token` (by bytes) < `full` < `type_valid` < `null`.
    pub(crate) fn stronger_than(self, other: Style, tokens: &[Box<[u8]>]) -> bool {
        let class = |s: Style| match s {
            Style::KeepLast(_) => 1,
            Style::Token(_) => 2,
            Style::Full => 3,
            Style::TypeValid => 4,
            Style::Null => 5,
        };
        match (self, other) {
            (Style::KeepLast(a), Style::KeepLast(b)) => a < b,
            (Style::Token(a), Style::Token(b)) => tokens[usize::from(a)] > tokens[usize::from(b)],
            _ => class(self) > class(other),
        }
    }
}

/// What masked a value, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RuleKind {
    Column,
    Dictionary,
    Detector(DetectorKind),
}

impl RuleKind {
    /// The bit of the first detector; detector `i`'s is this one shifted by `i`.
    pub(crate) const FIRST_DETECTOR_BIT: u32 = RuleKind::Detector(DetectorKind::ALL[0]).bit().trailing_zeros();

    /// A bit in a per-value set of kinds.
    pub(crate) const fn bit(self) -> u32 {
        match self {
            RuleKind::Column => 1,
            RuleKind::Dictionary => 2,
            RuleKind::Detector(kind) => 4 << kind.index(),
        }
    }
}

pub(crate) struct ColumnRule {
    name: GlobMatcher,
    table: GlobMatcher,
    table_is_any: bool,
    /// How many parts the table glob names: 1 (`table`), 2 (`schema.table`) or 3
    /// (`database.schema.table`).
    table_parts: usize,
    pub(crate) style: Style,
}

impl ColumnRule {
    fn matches(&self, column: &Column) -> bool {
        self.name.is_match(&column.name)
            && (self.table_is_any
                || match (&column.table, &column.schema, &column.database, self.table_parts) {
                    // An unknown table (or schema, or database, where the glob names it) cannot
                    // prove the rule does not apply: mask.
                    (None, ..) | (_, None, _, 2..) | (_, _, None, 3..) => true,
                    (Some(table), _, _, ..=1) => self.table.is_match(table),
                    (Some(table), Some(schema), _, 2) => self.table.is_match(format!("{schema}.{table}")),
                    (Some(table), Some(schema), Some(database), _) => {
                        self.table.is_match(format!("{database}.{schema}.{table}"))
                    }
                })
    }
}

/// The dictionary words and detector anchors, in one searcher so a value is searched once.
pub(crate) struct Dictionary {
    searcher: Searcher,
    /// The byte length of each pattern.
    pattern_len: Vec<u32>,
    /// For each pattern: `None` for a dictionary word, or the detector it anchors.
    anchor_of: Vec<Option<DetectorKind>>,
    /// For each pattern: the other patterns that are proper prefixes of it. Searching is
    /// leftmost-longest, so these match at the same place and are reported along with it.
    prefixes: Vec<Vec<u32>>,
    pub(crate) style: Style,
    /// Whether a word holds a space, which form encoding writes `+` (`Ada+Lovelace`): values
    /// holding a `+` are then searched with it read as a space too.
    pub(crate) spaced: bool,
}

enum Searcher {
    None,
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
}

/// A pattern found in a haystack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) pattern: u32,
}

impl Dictionary {
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self.searcher, Searcher::None)
    }

    pub(crate) fn kind(&self) -> SearcherKind {
        match &self.searcher {
            Searcher::None => SearcherKind::None,
            Searcher::Packed(_) => SearcherKind::Teddy,
            Searcher::Automaton(ac) => match ac.kind() {
                AhoCorasickKind::DFA => SearcherKind::Dfa,
                AhoCorasickKind::ContiguousNFA => SearcherKind::ContiguousNfa,
                AhoCorasickKind::NoncontiguousNFA => SearcherKind::NoncontiguousNfa,
                _ => SearcherKind::NoncontiguousNfa,
            },
        }
    }

    /// The leftmost-longest pattern starting in `from..to` and ending by `to`.
    #[inline]
    pub(crate) fn find(&self, haystack: &[u8], from: usize, to: usize) -> Option<Found> {
        if from >= to {
            return None;
        }
        let found = match &self.searcher {
            Searcher::None => None,
            Searcher::Packed(searcher) => searcher.find_in(haystack, aho_corasick::Span { start: from, end: to }),
            Searcher::Automaton(ac) => ac.find(Input::new(haystack).span(from..to)),
        }?;
        Some(Found { start: found.start(), end: found.end(), pattern: found.pattern().as_u32() })
    }

    pub(crate) fn anchor_of(&self, pattern: u32) -> Option<DetectorKind> {
        self.anchor_of[pattern as usize]
    }

    pub(crate) fn pattern_len(&self, pattern: u32) -> usize {
        self.pattern_len[pattern as usize] as usize
    }

    pub(crate) fn prefixes_of(&self, pattern: u32) -> &[u32] {
        &self.prefixes[pattern as usize]
    }
}

/// A compiled profile.
pub(crate) struct Profile {
    pub(crate) name: String,
    pub(crate) columns: Vec<ColumnRule>,
    /// The style of each enabled detector, by [`DetectorKind::index`].
    pub(crate) detectors: [Option<Style>; DetectorKind::COUNT],
    /// The enabled detectors, as bits by [`DetectorKind::index`].
    pub(crate) enabled_detectors: u32,
    pub(crate) dictionary: Dictionary,
    pub(crate) tokens: Vec<Box<[u8]>>,
    /// Where each profile's column rules end in `columns`: one group for a profile of its own,
    /// one per profile for a [merged](compile_merged) one.
    column_groups: Vec<usize>,
    /// For each group of a merged profile: a rule (after every group, never matched itself)
    /// with the strongest mask the group's profile gives what its detectors and dictionary
    /// find, if it has any on. A column another profile's rule masks whole is masked at least
    /// that strongly: that profile would have scanned it.
    group_floors: Vec<Option<usize>>,
}

impl Profile {
    pub(crate) fn detector_style(&self, kind: DetectorKind) -> Option<Style> {
        self.detectors[kind.index()]
    }

    pub(crate) fn token(&self, index: u16) -> &[u8] {
        &self.tokens[usize::from(index)]
    }

    /// The column rule masking a column, if any: the first matching one of each group (of
    /// each profile merged), the strongest of those, and at least as strong as the floor of
    /// each group none of whose rules match.
    pub(crate) fn rule_for(&self, column: &Column) -> Option<u16> {
        // The stronger of two rules (the first on a tie).
        let stronger = |a: Option<usize>, b: usize| match a {
            Some(a) if !self.columns[b].style.stronger_than(self.columns[a].style, &self.tokens) => a,
            _ => b,
        };
        let (mut chosen, mut floor) = (None, None);
        let mut start = 0;
        for (group, &end) in self.column_groups.iter().enumerate() {
            match self.columns[start..end].iter().position(|rule| rule.matches(column)) {
                Some(at) => chosen = Some(stronger(chosen, start + at)),
                None => {
                    if let Some(Some(rule)) = self.group_floors.get(group) {
                        floor = Some(stronger(floor, *rule));
                    }
                }
            }
            start = end;
        }
        let chosen = chosen?;
        Some(floor.map_or(chosen, |floor| stronger(Some(chosen), floor)) as u16)
    }

    pub(crate) fn plan(&self, fingerprint: u64, profile: u16, columns: &[Column], answer_of: AnswerOf) -> ColumnPlan {
        ColumnPlan {
            fingerprint,
            profile,
            columns: columns
                .iter()
                .map(|c| PlannedColumn {
                    // A query's column without a table may come from any table: unknown.
                    rule: match (&c.table, answer_of) {
                        (Some(table), AnswerOf::Query) if table.is_empty() => {
                            self.rule_for(&Column { table: None, ..c.clone() })
                        }
                        _ => self.rule_for(c),
                    },
                    value_type: ValueType::from_snowflake(&c.type_name, c.scale),
                    nullable: c.nullable,
                })
                .collect(),
        }
    }
}

fn rule_error(profile: &str, rule: impl Into<String>, reason: impl Into<String>) -> MaskConfigError {
    MaskConfigError::Rule { profile: profile.to_owned(), rule: rule.into(), reason: reason.into() }
}

fn compile_style(
    profile: &str,
    rule: &str,
    mask: &MaskSpec,
    tokens: &mut Vec<Box<[u8]>>,
) -> Result<Style, MaskConfigError> {
    Ok(match mask {
        MaskSpec::Full => Style::Full,
        MaskSpec::TypeValid => Style::TypeValid,
        MaskSpec::Null => Style::Null,
        MaskSpec::KeepLast { keep } => {
            if *keep > KEEP_MAX {
                return Err(rule_error(profile, rule, format!("keep is over {KEEP_MAX}")));
            }
            Style::KeepLast(*keep)
        }
        MaskSpec::Token { token } => {
            let bytes = token.as_bytes();
            if bytes.is_empty() || bytes.len() > TOKEN_BYTES_MAX {
                return Err(rule_error(profile, rule, format!("a token has 1 to {TOKEN_BYTES_MAX} bytes")));
            }
            // The token is written raw into JSON strings and Arrow text: keep it plain.
            if !bytes.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
                return Err(rule_error(profile, rule, "a token is printable ASCII without '\"' or '\\'"));
            }
            let index = match tokens.iter().position(|t| &t[..] == bytes) {
                Some(index) => index,
                None => {
                    tokens.push(bytes.into());
                    tokens.len() - 1
                }
            };
            Style::Token(index as u16)
        }
    })
}

/// How many parts of `database.schema.table` a table glob names (by its dots). Quotes are
/// refused: row types name tables without them, so a quoted glob would never match.
fn table_parts(profile: &str, rule: &str, glob: &str) -> Result<usize, MaskConfigError> {
    if glob.contains('"') {
        return Err(rule_error(
            profile,
            rule,
            "table is matched (case-insensitively) against names as the row type reports them: write it without quotes",
        ));
    }
    // Alternatives are matched against one form of the name: a dot inside one would name
    // another form than the dots outside say.
    let mut depth = 0usize;
    for c in glob.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            '.' if depth > 0 => {
                return Err(rule_error(
                    profile,
                    rule,
                    "table has a dot inside {…} or […]: write one rule for each qualified name",
                ));
            }
            _ => {}
        }
    }
    match glob.matches('.').count() {
        dots @ 0..=2 => Ok(dots + 1),
        _ => Err(rule_error(profile, rule, "table names at most database.schema.table (two dots)")),
    }
}

fn compile_glob(profile: &str, rule: &str, field: &str, glob: &str) -> Result<GlobMatcher, MaskConfigError> {
    GlobBuilder::new(glob)
        .case_insensitive(true)
        .literal_separator(false)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| rule_error(profile, rule, format!("{field} is not a valid glob: {}", e.kind())))
}

fn detector_switch(spec: &ProfileSpec, kind: DetectorKind) -> &DetectorSwitch {
    let d = &spec.detectors;
    match kind {
        DetectorKind::Card => &d.card,
        DetectorKind::Email => &d.email,
        DetectorKind::Ssn => &d.ssn,
        DetectorKind::Iban => &d.iban,
        DetectorKind::AwsAccessKey => &d.aws_access_key,
        DetectorKind::GcpApiKey => &d.gcp_api_key,
        DetectorKind::GithubToken => &d.github_token,
        DetectorKind::SlackToken => &d.slack_token,
        DetectorKind::Jwt => &d.jwt,
        DetectorKind::PemPrivateKey => &d.pem_private_key,
    }
}

fn detector_switch_mut(spec: &mut ProfileSpec, kind: DetectorKind) -> &mut DetectorSwitch {
    let d = &mut spec.detectors;
    match kind {
        DetectorKind::Card => &mut d.card,
        DetectorKind::Email => &mut d.email,
        DetectorKind::Ssn => &mut d.ssn,
        DetectorKind::Iban => &mut d.iban,
        DetectorKind::AwsAccessKey => &mut d.aws_access_key,
        DetectorKind::GcpApiKey => &mut d.gcp_api_key,
        DetectorKind::GithubToken => &mut d.github_token,
        DetectorKind::SlackToken => &mut d.slack_token,
        DetectorKind::Jwt => &mut d.jwt,
        DetectorKind::PemPrivateKey => &mut d.pem_private_key,
    }
}

/// The mask a profile gives a detector's matches, if the detector is on.
fn detector_mask(spec: &ProfileSpec, kind: DetectorKind) -> Option<&MaskSpec> {
    match detector_switch(spec, kind) {
        DetectorSwitch::Enabled(false) => None,
        DetectorSwitch::Enabled(true) => Some(&spec.detectors.mask),
        DetectorSwitch::Masked(m) => Some(&m.mask),
    }
}

/// The stronger of two checked masks ([`Style::stronger_than`]; the first on a tie).
fn stronger<'m>(a: &'m MaskSpec, b: &'m MaskSpec) -> &'m MaskSpec {
    let mut tokens = Vec::new();
    let style = |m: &MaskSpec, tokens: &mut Vec<Box<[u8]>>| compile_style("", "", m, tokens).unwrap_or(Style::Null);
    let (sa, sb) = (style(a, &mut tokens), style(b, &mut tokens));
    if sb.stronger_than(sa, &tokens) { b } else { a }
}

/// The most column rules a merged profile may hold (rules are named by a `u16`).
const MERGED_COLUMN_RULES_MAX: usize = u16::MAX as usize;

/// One profile that masks what each of `specs` (checked profiles) masks, at least as strongly,
/// for an identity several profiles apply to. Masking with each in turn instead lets the
/// first hide from the next what it would have masked more strongly (a `keep_last` of an SSN
/// leaves no SSN for a `null` to find) and match column names the first already masked. A
/// column takes the strongest of each profile's first matching rule, and where some profile
/// has none and would scan it, at least the strongest mask that profile's detectors and
/// dictionary give; a detector is on if any profile has it on, with the strongest of their
/// masks; the dictionary holds every word, matched case-insensitively if any profile's is,
/// with the strongest of their masks.
pub(crate) fn compile_merged(name: &str, specs: &[&ProfileSpec]) -> Result<Profile, MaskConfigError> {
    let mut merged = ProfileSpec::default();
    let mut column_groups = Vec::with_capacity(specs.len());
    for spec in specs {
        merged.columns.extend(spec.columns.iter().cloned());
        column_groups.push(merged.columns.len());
    }
    let mut group_floors = Vec::with_capacity(specs.len());
    for spec in specs {
        let words = (!spec.dictionary.words.is_empty()).then_some(&spec.dictionary.mask);
        let scans = DetectorKind::ALL.iter().filter_map(|&kind| detector_mask(spec, kind)).chain(words);
        group_floors.push(scans.reduce(stronger).map(|mask| {
            merged.columns.push(ColumnRuleSpec { name: "*".into(), table: "*".into(), mask: mask.clone() });
            merged.columns.len() - 1
        }));
    }
    if merged.columns.len() > MERGED_COLUMN_RULES_MAX {
        return Err(MaskConfigError::Limit {
            what: format!("the column rules of profiles {name:?} together"),
            limit: MERGED_COLUMN_RULES_MAX,
        });
    }
    for kind in DetectorKind::ALL {
        let mask = specs.iter().filter_map(|spec| detector_mask(spec, kind)).reduce(stronger);
        *detector_switch_mut(&mut merged, kind) = match mask {
            Some(mask) => DetectorSwitch::Masked(DetectorMask { mask: mask.clone() }),
            None => DetectorSwitch::Enabled(false),
        };
    }
    let with_words = || specs.iter().filter(|spec| !spec.dictionary.words.is_empty());
    merged.dictionary.words = with_words().flat_map(|spec| spec.dictionary.words.iter().cloned()).collect();
    merged.dictionary.case_insensitive = with_words().any(|spec| spec.dictionary.case_insensitive);
    if let Some(mask) = with_words().map(|spec| &spec.dictionary.mask).reduce(stronger) {
        merged.dictionary.mask = mask.clone();
    }
    let mut profile = compile_unbounded(name, &merged)?;
    profile.column_groups = column_groups;
    profile.group_floors = group_floors;
    Ok(profile)
}

pub(crate) fn compile_profile(name: &str, spec: &ProfileSpec) -> Result<Profile, MaskConfigError> {
    if spec.columns.len() > COLUMN_RULES_MAX {
        return Err(MaskConfigError::Limit {
            what: format!("the column rules of profile {name:?}"),
            limit: COLUMN_RULES_MAX,
        });
    }
    if spec.dictionary.words.len() > DICTIONARY_WORDS_MAX {
        return Err(MaskConfigError::Limit {
            what: format!("the dictionary words of profile {name:?}"),
            limit: DICTIONARY_WORDS_MAX,
        });
    }
    compile_unbounded(name, spec)
}

/// Compiles a profile without the limits on its number of rules and words.
fn compile_unbounded(name: &str, spec: &ProfileSpec) -> Result<Profile, MaskConfigError> {
    let mut tokens = Vec::new();
    let mut columns = Vec::with_capacity(spec.columns.len());
    for (i, rule) in spec.columns.iter().enumerate() {
        let label = format!("columns[{i}] (name {:?})", rule.name);
        columns.push(ColumnRule {
            name: compile_glob(name, &label, "name", &rule.name)?,
            table: compile_glob(name, &label, "table", &rule.table)?,
            table_is_any: rule.table == "*",
            table_parts: table_parts(name, &label, &rule.table)?,
            style: compile_style(name, &label, &rule.mask, &mut tokens)?,
        });
    }
    let default_style = compile_style(name, "detectors.mask", &spec.detectors.mask, &mut tokens)?;
    let mut detectors = [None; DetectorKind::COUNT];
    for kind in DetectorKind::ALL {
        detectors[kind.index()] = match detector_switch(spec, kind) {
            DetectorSwitch::Enabled(false) => None,
            DetectorSwitch::Enabled(true) => Some(default_style),
            DetectorSwitch::Masked(m) => {
                Some(compile_style(name, &format!("detectors.{}", kind.name()), &m.mask, &mut tokens)?)
            }
        };
    }
    let dictionary_style = compile_style(name, "dictionary.mask", &spec.dictionary.mask, &mut tokens)?;
    let dictionary = compile_dictionary(name, spec, &detectors, dictionary_style)?;
    let enabled_detectors =
        DetectorKind::ALL.iter().filter(|k| detectors[k.index()].is_some()).fold(0, |bits, k| bits | 1 << k.index());
    let column_groups = vec![columns.len()];
    Ok(Profile {
        name: name.to_owned(),
        columns,
        detectors,
        enabled_detectors,
        dictionary,
        tokens,
        column_groups,
        group_floors: Vec::new(),
    })
}

fn compile_dictionary(
    profile: &str,
    spec: &ProfileSpec,
    detectors: &[Option<Style>; DetectorKind::COUNT],
    style: Style,
) -> Result<Dictionary, MaskConfigError> {
    let words = &spec.dictionary.words;
    let case_insensitive = spec.dictionary.case_insensitive;
    let fold = |p: &[u8]| -> Vec<u8> { if case_insensitive { p.to_ascii_lowercase() } else { p.to_vec() } };
    let mut patterns: Vec<Vec<u8>> = Vec::new();
    let mut anchor_of = Vec::new();
    let mut seen: HashMap<Vec<u8>, u32> = HashMap::new();
    for (i, word) in words.iter().enumerate() {
        let len = word.len();
        if !(DICTIONARY_WORD_BYTES_MIN..=DICTIONARY_WORD_BYTES_MAX).contains(&len) {
            return Err(rule_error(
                profile,
                format!("dictionary.words[{i}]"),
                format!("a word has {DICTIONARY_WORD_BYTES_MIN} to {DICTIONARY_WORD_BYTES_MAX} bytes"),
            ));
        }
        if seen.insert(fold(word.as_bytes()), patterns.len() as u32).is_none() {
            patterns.push(word.as_bytes().to_vec());
            anchor_of.push(None);
        }
    }
    for kind in DetectorKind::ALL {
        if detectors[kind.index()].is_none() {
            continue;
        }
        for anchor in kind.anchors() {
            // An anchor equal to a word still needs its own id to trigger the detector.
            patterns.push(anchor.as_bytes().to_vec());
            anchor_of.push(Some(kind));
        }
    }
    // Proper prefixes, found through a map of every pattern (folded when case-insensitive).
    let mut by_bytes: HashMap<Vec<u8>, Vec<u32>> = HashMap::new();
    for (id, p) in patterns.iter().enumerate() {
        by_bytes.entry(fold(p)).or_default().push(id as u32);
    }
    let prefixes = patterns
        .iter()
        .enumerate()
        .map(|(id, p)| {
            let folded = fold(p);
            let mut out = Vec::new();
            for len in 1..=folded.len() {
                if let Some(ids) = by_bytes.get(&folded[..len]) {
                    out.extend(ids.iter().copied().filter(|&other| other != id as u32));
                }
            }
            out
        })
        .collect();
    let pattern_len = patterns.iter().map(|p| p.len() as u32).collect();
    let searcher = if patterns.is_empty() {
        Searcher::None
    } else {
        let packed = if case_insensitive {
            None
        } else {
            packed::Config::new().match_kind(packed::MatchKind::LeftmostLongest).builder().extend(&patterns).build()
        };
        match packed {
            Some(searcher) => Searcher::Packed(searcher),
            None => {
                let build = |kind| {
                    AhoCorasick::builder()
                        .match_kind(MatchKind::LeftmostLongest)
                        .ascii_case_insensitive(case_insensitive)
                        .kind(kind)
                        .build(&patterns)
                };
                // A DFA is the fastest automaton; it is refused past its size limit.
                let ac = build(Some(AhoCorasickKind::DFA))
                    .or_else(|_| build(None))
                    .map_err(|e| rule_error(profile, "dictionary", format!("cannot build the searcher: {e}")))?;
                Searcher::Automaton(ac)
            }
        }
    };
    let spaced = words.iter().any(|w| w.contains(' '));
    Ok(Dictionary { searcher, pattern_len, anchor_of, prefixes, style, spaced })
}

pub(crate) fn compile(spec: &MaskingSpec) -> Result<Vec<Profile>, MaskConfigError> {
    if spec.profiles.len() > PROFILES_MAX {
        return Err(MaskConfigError::Limit { what: "masking profiles".into(), limit: PROFILES_MAX });
    }
    let mut profiles = Vec::with_capacity(spec.profiles.len());
    for (name, profile) in &spec.profiles {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(rule_error(name, "name", "a profile name has 1 to 128 bytes and no control characters"));
        }
        profiles.push(compile_profile(name, profile)?);
    }
    Ok(profiles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::spec::DictionarySpec;

    fn profile_with(words: &[&str], case_insensitive: bool) -> Profile {
        let spec = ProfileSpec {
            dictionary: DictionarySpec {
                words: words.iter().map(|w| w.to_string()).collect(),
                case_insensitive,
                mask: MaskSpec::Full,
            },
            ..ProfileSpec::default()
        };
        compile_profile("p", &spec).unwrap()
    }

    fn words(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("secret-word-{i:04}")).collect()
    }

    #[test]
    fn searcher_kind_follows_the_pattern_set() {
        assert_eq!(profile_with(&["Falcon"], false).dictionary.kind(), SearcherKind::Teddy);
        let sixteen = words(16);
        let refs: Vec<&str> = sixteen.iter().map(String::as_str).collect();
        assert_eq!(profile_with(&refs, false).dictionary.kind(), SearcherKind::Teddy);
        let many = words(256);
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(profile_with(&refs, false).dictionary.kind(), SearcherKind::Dfa);
        assert_eq!(profile_with(&["Falcon"], true).dictionary.kind(), SearcherKind::Dfa);
        let mut quiet = ProfileSpec::default();
        for kind in DetectorKind::ALL {
            *detector_switch_mut(&mut quiet, kind) = DetectorSwitch::Enabled(false);
        }
        let compiled = compile_profile("quiet", &quiet).unwrap();
        assert_eq!(compiled.dictionary.kind(), SearcherKind::None);
        assert_eq!(compiled.enabled_detectors, 0);
    }

    #[test]
    fn finds_longest_and_reports_prefixes() {
        let profile = profile_with(&["Ada", "Ada Lovelace", "love"], false);
        let d = &profile.dictionary;
        let hay = b"xx Ada Lovelace";
        let found = d.find(hay, 0, hay.len()).unwrap();
        assert_eq!(&hay[found.start..found.end], b"Ada Lovelace");
        assert_eq!(d.prefixes_of(found.pattern), [0]);
        let ci = profile_with(&["ada lovelace"], true);
        let found = ci.dictionary.find(b"ADA LOVELACE", 0, 12).unwrap();
        assert_eq!((found.start, found.end), (0, 12));
    }

    #[test]
    fn errors_name_profile_and_rule() {
        let mut spec = ProfileSpec::default();
        spec.columns.push(ColumnRuleSpec { name: "ok".into(), table: "*".into(), mask: MaskSpec::Full });
        spec.columns.push(ColumnRuleSpec { name: "[".into(), table: "*".into(), mask: MaskSpec::Full });
        let err = compile_profile("analysts", &spec).err().unwrap().to_string();
        assert!(err.contains("\"analysts\"") && err.contains("columns[1]"), "{err}");

        let mut spec = ProfileSpec::default();
        spec.detectors.card = DetectorSwitch::Masked(DetectorMask { mask: MaskSpec::Token { token: "a\"b".into() } });
        let err = compile_profile("p", &spec).err().unwrap().to_string();
        assert!(err.contains("detectors.card"), "{err}");

        let err = profile_err(&["ok!", "no"]);
        assert!(err.contains("dictionary.words[1]"), "{err}");
    }

    fn profile_err(words: &[&str]) -> String {
        let spec = ProfileSpec {
            dictionary: DictionarySpec { words: words.iter().map(|w| w.to_string()).collect(), ..Default::default() },
            ..ProfileSpec::default()
        };
        compile_profile("p", &spec).err().unwrap().to_string()
    }

    #[test]
    fn column_rules_match_case_insensitively_and_unknown_tables_fail_closed() {
        let mut spec = ProfileSpec::default();
        spec.columns.push(ColumnRuleSpec { name: "*ssn*".into(), table: "*".into(), mask: MaskSpec::Null });
        spec.columns.push(ColumnRuleSpec { name: "email".into(), table: "CUST*".into(), mask: MaskSpec::Full });
        let profile = compile_profile("p", &spec).unwrap();
        assert_eq!(profile.rule_for(&column("CUSTOMER_SSN", Some("X"))), Some(0));
        assert_eq!(profile.rule_for(&column("EMAIL", Some("customers"))), Some(1));
        assert_eq!(profile.rule_for(&column("EMAIL", Some("ORDERS"))), None);
        // A computed column's table is empty, as are those of `SHOW` and `DESCRIBE` answers,
        // whose names a table-scoped rule must not hide (ARCHITECTURE.md, Known gaps).
        assert_eq!(profile.rule_for(&column("EMAIL", Some(""))), None);
        assert_eq!(profile.rule_for(&column("EMAIL", None)), Some(1));
    }

    /// A query's column without a table (computed, or read through `RESULT_SCAN`, a set
    /// operation, a table function) may come from a rule's table: the rule masks it. Only in
    /// a `SHOW` or `DESCRIBE` answer is it no table's.
    #[test]
    fn a_querys_column_without_a_table_is_masked_by_table_scoped_rules() {
        let mut spec = ProfileSpec::default();
        spec.columns.push(ColumnRuleSpec { name: "email".into(), table: "CUST*".into(), mask: MaskSpec::Full });
        let profile = compile_profile("p", &spec).unwrap();
        let columns = [column("EMAIL", Some("")), column("EMAIL", Some("ORDERS")), column("NAME", Some(""))];
        let rules =
            |answer_of| profile.plan(0, 0, &columns, answer_of).columns.iter().map(|c| c.rule).collect::<Vec<_>>();
        assert_eq!(rules(AnswerOf::Query), [Some(0), None, None]);
        assert_eq!(rules(AnswerOf::Metadata), [None, None, None]);
    }

    fn column(name: &str, table: Option<&str>) -> Column {
        Column {
            name: name.into(),
            table: table.map(Into::into),
            schema: None,
            database: None,
            type_name: "text".into(),
            scale: None,
            nullable: true,
        }
    }

    /// A table glob with dots names the schema (and the database) too, as authors write
    /// qualified names; before, it was matched against the bare table name and never matched.
    #[test]
    fn table_globs_may_name_the_schema_and_database() {
        let mut spec = ProfileSpec::default();
        for table in ["PROD.CRM.CUSTOMERS", "crm.orders", "*.HR.*"] {
            spec.columns.push(ColumnRuleSpec { name: "EMAIL".into(), table: table.into(), mask: MaskSpec::Full });
        }
        let profile = compile_profile("p", &spec).unwrap();
        let at = |database: Option<&str>, schema: Option<&str>, table: &str| Column {
            database: database.map(Into::into),
            schema: schema.map(Into::into),
            ..column("EMAIL", Some(table))
        };
        assert_eq!(profile.rule_for(&at(Some("PROD"), Some("CRM"), "CUSTOMERS")), Some(0));
        assert_eq!(profile.rule_for(&at(Some("DEV"), Some("CRM"), "CUSTOMERS")), None);
        assert_eq!(profile.rule_for(&at(Some("DEV"), Some("CRM"), "ORDERS")), Some(1));
        assert_eq!(profile.rule_for(&at(Some("ANY"), Some("HR"), "STAFF")), Some(2));
        assert_eq!(profile.rule_for(&at(Some("ANY"), Some("OPS"), "STAFF")), None);
        // The row type does not say: the rule cannot be proved not to apply.
        assert_eq!(profile.rule_for(&at(None, None, "CUSTOMERS")), Some(0));
        assert_eq!(profile.rule_for(&column("EMAIL", None)), Some(0));

        // Columns as a query answer's row type lists them.
        let rowtype = br#"[{"name":"EMAIL","database":"PROD","schema":"CRM","table":"CUSTOMERS","type":"text"}]"#;
        let columns = Column::from_rowtype_json(rowtype).unwrap();
        assert_eq!(profile.rule_for(&columns[0]), Some(0));

        for (table, reason) in [
            ("\"customers\"", "without quotes"),
            ("a.b.c.d", "at most database.schema.table"),
            ("{CRM.CUSTOMERS,ORDERS}", "one rule for each qualified name"),
        ] {
            let mut spec = ProfileSpec::default();
            spec.columns.push(ColumnRuleSpec { name: "EMAIL".into(), table: table.into(), mask: MaskSpec::Full });
            let err = compile_profile("p", &spec).err().unwrap().to_string();
            assert!(err.contains(reason) && err.contains("columns[0]"), "{err}");
        }
    }
}
