//! Rules: the `[policy]` table as written ([`PolicySpec`]), validated into a [`Policy`] that
//! decides a classified request for a subject. Pure.
//!
//! A request is decided per action: each thing each statement does (a kind, and the object it
//! does it to) goes through the rules in order, and the first rule that matches decides it;
//! none matching, the default decides (for [`Kind::Unknown`] the default is always deny). A
//! statement takes the most restrictive verdict of its actions, a request the most restrictive
//! verdict of its statements: deny > review > allow. Masking profiles of every allowing rule
//! apply together.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::model::{Action, Classified, ClassifiedStatement, Kind, Limits, ObjectName, ObjectType, Refusal};
use super::names::{Namespace, ObjectGlobs, Resolution, resolve};

/// The longest review timeout a rule may set.
pub const REVIEW_TIMEOUT_SECS_MAX: u64 = 7 * 24 * 3600;

/// The most approvals a rule may require.
pub const REVIEW_APPROVALS_MAX: u32 = 10;

/// What a rule (or the default) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionName {
    /// Forward the statement.
    Allow,
    /// Refuse it with the rule's message.
    Deny,
    /// Park it until reviewers approve it.
    Review,
}

/// One rule as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// A short name, unique in the policy; recorded with every decision it makes.
    pub name: String,
    /// Identity groups the rule applies to (`"*"`: everyone).
    pub groups: Vec<String>,
    /// Statement kinds it applies to (`"*"`: every kind but `unknown`, which must be named).
    pub kinds: Vec<String>,
    /// Object types it applies to (empty: any).
    #[serde(default)]
    pub object_types: Vec<String>,
    /// Object name globs it applies to (empty: any).
    #[serde(default)]
    pub objects: Vec<String>,
    /// What it does.
    pub action: ActionName,
    /// Shown to the agent: required for `deny`, optional for `review`.
    #[serde(default)]
    pub message: Option<String>,
    /// `review` only: approvals needed (default 1).
    #[serde(default)]
    pub approvals: Option<u32>,
    /// `review` only: groups whose members may approve or deny.
    #[serde(default)]
    pub reviewer_groups: Vec<String>,
    /// `review` only: seconds after which an undecided statement is denied.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// `allow` and `review`: the masking profile applied to results.
    #[serde(default)]
    pub masking_profile: Option<String>,
}

/// The default action, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultSpec {
    /// What happens when no rule matches.
    pub action: ActionName,
    /// Shown to the agent.
    #[serde(default)]
    pub message: Option<String>,
    /// As in [`RuleSpec`].
    #[serde(default)]
    pub approvals: Option<u32>,
    /// As in [`RuleSpec`].
    #[serde(default)]
    pub reviewer_groups: Vec<String>,
    /// As in [`RuleSpec`].
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// As in [`RuleSpec`].
    #[serde(default)]
    pub masking_profile: Option<String>,
}

impl Default for DefaultSpec {
    fn default() -> DefaultSpec {
        DefaultSpec {
            action: ActionName::Deny,
            message: None,
            approvals: None,
            reviewer_groups: Vec::new(),
            timeout_secs: None,
            masking_profile: None,
        }
    }
}

fn one() -> usize {
    1
}

/// The `[policy]` table as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// What happens when no rule matches (default: deny).
    #[serde(default)]
    pub default: DefaultSpec,
    /// Most statements one request may hold (default 1); upstream `MULTI_STATEMENT_COUNT` is
    /// pinned to the count the gateway found.
    #[serde(default = "one")]
    pub max_statements_per_request: usize,
    /// Higher limits for some groups (the highest of a subject's groups applies).
    #[serde(default)]
    pub max_statements_by_group: BTreeMap<String, usize>,
    /// Classification limits.
    #[serde(default)]
    pub limits: Limits,
    /// The rules, in order: the first match wins.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

impl PolicySpec {
    /// Reads the `[policy]` table of a TOML document (other tables are ignored: they belong
    /// to other modules).
    pub fn from_document(text: &str) -> Result<PolicySpec, PolicyError> {
        #[derive(Deserialize)]
        struct Document {
            policy: PolicySpec,
        }
        toml::from_str::<Document>(text)
            .map(|d| d.policy)
            .map_err(|e| PolicyError { location: "policy".to_owned(), problem: e.message().to_owned() })
    }
}

/// A policy problem, naming where it is (`rules[3] "no drops".objects`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy: {location}: {problem}")]
pub struct PolicyError {
    /// Where: `default.action`, `rules[2] "name".kinds`, `max_statements_per_request`.
    pub location: String,
    /// What is wrong.
    pub problem: String,
}

/// Who is asking: the identity's `sub` and groups, from the validated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The identity.
    pub sub: String,
    /// Its groups.
    pub groups: Vec<String>,
}

impl Subject {
    /// Whom the statements it runs belong to.
    pub fn owner(&self) -> crate::session::statements::Owner<'_> {
        crate::session::statements::Owner { sub: &self.sub, groups: &self.groups }
    }
}

/// What a verdict does, ordered by restrictiveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictAction {
    /// Forward.
    Allow,
    /// Park for review.
    Review,
    /// Refuse.
    Deny,
}

/// The approvals a parked statement needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviewRequirement {
    /// How many distinct reviewers must approve.
    pub approvals: u32,
    /// Groups whose members may decide.
    pub reviewer_groups: Vec<String>,
    /// After this long undecided, the statement is denied.
    #[serde(rename = "timeout_secs", serialize_with = "serialize_secs")]
    pub timeout: Duration,
}

fn serialize_secs<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(duration.as_secs())
}

/// What decided a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum DecidedBy {
    /// A rule (its index in the policy and its name).
    Rule {
        /// Zero-based position in `rules`.
        index: usize,
        /// The rule's name.
        name: String,
    },
    /// The default action.
    Default,
    /// An unclassifiable statement no rule allowed.
    UnknownStatement,
    /// The request was refused before classification.
    Refusal {
        /// Why.
        reason: String,
    },
    /// More statements than the subject may send.
    StatementLimit {
        /// Statements in the request.
        statements: usize,
        /// The subject's limit.
        limit: usize,
    },
}

/// A decision on one statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementVerdict {
    /// What happens.
    pub action: VerdictAction,
    /// What decided it.
    pub decided_by: DecidedBy,
    /// The action (kind and object) that decided it.
    pub deciding_action: Option<Action>,
    /// The message for the agent.
    pub message: Option<String>,
    /// For review: what approval needs.
    pub review: Option<ReviewRequirement>,
    /// Masking profiles of the rules that allowed its actions.
    pub masking_profiles: Vec<String>,
}

/// A decision on a request (serializable for the recording).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// What happens to the request as a whole.
    pub action: VerdictAction,
    /// What decided it.
    pub decided_by: DecidedBy,
    /// Which statement decided it (zero-based), if one did.
    pub statement_index: Option<usize>,
    /// The message for the agent (for deny, always set).
    pub message: Option<String>,
    /// For review: what approval needs.
    pub review: Option<ReviewRequirement>,
    /// Every masking profile the results must go through (deduplicated, in rule order).
    pub masking_profiles: Vec<String>,
    /// Each statement's own verdict.
    pub statements: Vec<StatementVerdict>,
}

#[derive(Debug, Clone)]
struct Outcome {
    action: VerdictAction,
    message: Option<String>,
    review: Option<ReviewRequirement>,
    masking_profile: Option<String>,
}

#[derive(Debug, Clone)]
enum KindMatch {
    AnyButUnknown,
    Listed(HashSet<Kind>),
}

#[derive(Debug, Clone)]
struct Rule {
    index: usize,
    name: String,
    any_group: bool,
    groups: Vec<String>,
    kinds: KindMatch,
    object_types: Option<Vec<ObjectType>>,
    objects: Option<ObjectGlobs>,
    outcome: Outcome,
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    default: Outcome,
    max_statements_per_request: usize,
    max_statements_by_group: BTreeMap<String, usize>,
    limits: Limits,
}

const DEFAULT_DENY_MESSAGE: &str = "No snowgate policy rule allows this statement.";
const UNKNOWN_DENY_MESSAGE: &str =
    "snowgate could not classify this statement, and no policy rule allows unclassified statements.";

fn outcome_from(
    location: &str,
    action: ActionName,
    message: &Option<String>,
    approvals: Option<u32>,
    reviewer_groups: &[String],
    timeout_secs: Option<u64>,
    masking_profile: &Option<String>,
) -> Result<Outcome, PolicyError> {
    let err = |field: &str, problem: &str| PolicyError {
        location: format!("{location}.{field}"),
        problem: problem.to_owned(),
    };
    if let Some(message) = message
        && (message.trim().is_empty() || message.len() > 1000)
    {
        return Err(err("message", "must be 1 to 1000 bytes"));
    }
    if let Some(profile) = masking_profile
        && profile.trim().is_empty()
    {
        return Err(err("masking_profile", "must not be empty"));
    }
    let review_fields = approvals.is_some() || !reviewer_groups.is_empty() || timeout_secs.is_some();
    match action {
        ActionName::Allow => {
            if review_fields {
                return Err(err("action", "approvals, reviewer_groups and timeout_secs are only for review"));
            }
            Ok(Outcome {
                action: VerdictAction::Allow,
                message: message.clone(),
                review: None,
                masking_profile: masking_profile.clone(),
            })
        }
        ActionName::Deny => {
            if review_fields {
                return Err(err("action", "approvals, reviewer_groups and timeout_secs are only for review"));
            }
            if masking_profile.is_some() {
                return Err(err("masking_profile", "a denied statement has no result to mask"));
            }
            let Some(message) = message else { return Err(err("message", "deny needs a message for the agent")) };
            Ok(Outcome {
                action: VerdictAction::Deny,
                message: Some(message.clone()),
                review: None,
                masking_profile: None,
            })
        }
        ActionName::Review => {
            let approvals = approvals.unwrap_or(1);
            if approvals == 0 || approvals > REVIEW_APPROVALS_MAX {
                return Err(err("approvals", "must be 1 to 10"));
            }
            if reviewer_groups.is_empty() || reviewer_groups.iter().any(|g| g.trim().is_empty() || g == "*") {
                return Err(err("reviewer_groups", "review needs named reviewer groups (no \"*\")"));
            }
            let Some(timeout_secs) = timeout_secs else { return Err(err("timeout_secs", "review needs a timeout")) };
            if timeout_secs == 0 || timeout_secs > REVIEW_TIMEOUT_SECS_MAX {
                return Err(err("timeout_secs", "must be 1 to 604800 seconds"));
            }
            Ok(Outcome {
                action: VerdictAction::Review,
                message: message.clone(),
                review: Some(ReviewRequirement {
                    approvals,
                    reviewer_groups: reviewer_groups.to_vec(),
                    timeout: Duration::from_secs(timeout_secs),
                }),
                masking_profile: masking_profile.clone(),
            })
        }
    }
}

impl Policy {
    /// Validates a spec. Errors name the rule (index and name) and the field.
    pub fn from_spec(spec: &PolicySpec) -> Result<Policy, PolicyError> {
        let limits = spec.limits;
        let top =
            |location: &str, problem: &str| PolicyError { location: location.to_owned(), problem: problem.to_owned() };
        if limits.text_bytes_max == 0 || limits.tokens_max == 0 || limits.statements_max == 0 {
            return Err(top("limits", "text_bytes_max, tokens_max and statements_max must be positive"));
        }
        if limits.nesting_depth_max == 0 || limits.nesting_depth_max > 1000 {
            return Err(top("limits.nesting_depth_max", "must be 1 to 1000"));
        }
        if limits.parser_recursion_max < limits.nesting_depth_max {
            return Err(top("limits.parser_recursion_max", "must be at least nesting_depth_max"));
        }
        if spec.max_statements_per_request == 0 || spec.max_statements_per_request > limits.statements_max {
            return Err(top("max_statements_per_request", "must be 1 to limits.statements_max"));
        }
        for (group, max) in &spec.max_statements_by_group {
            if *max == 0 || *max > limits.statements_max {
                return Err(top(&format!("max_statements_by_group.{group}"), "must be 1 to limits.statements_max"));
            }
        }
        let d = &spec.default;
        let default = outcome_from(
            "default",
            d.action,
            &d.message,
            d.approvals,
            &d.reviewer_groups,
            d.timeout_secs,
            &d.masking_profile,
        )
        .or_else(|e| {
            // A default deny may omit its message: a generic one is used.
            if d.action == ActionName::Deny && d.message.is_none() && e.location == "default.message" {
                Ok(Outcome {
                    action: VerdictAction::Deny,
                    message: Some(DEFAULT_DENY_MESSAGE.to_owned()),
                    review: None,
                    masking_profile: None,
                })
            } else {
                Err(e)
            }
        })?;

        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(spec.rules.len());
        for (index, rule) in spec.rules.iter().enumerate() {
            let location = format!("rules[{index}] {:?}", rule.name);
            let err = |field: &str, problem: String| PolicyError { location: format!("{location}.{field}"), problem };
            if rule.name.trim().is_empty() {
                return Err(err("name", "must not be empty".into()));
            }
            if !names.insert(rule.name.clone()) {
                return Err(err("name", "is used by an earlier rule".into()));
            }
            if rule.groups.is_empty() || rule.groups.iter().any(|g| g.trim().is_empty()) {
                return Err(err("groups", "must list groups (\"*\" for everyone)".into()));
            }
            if rule.kinds.is_empty() {
                return Err(err("kinds", "must list kinds (\"*\" for every kind but unknown)".into()));
            }
            let kinds = if rule.kinds.iter().any(|k| k == "*") {
                if rule.kinds.len() > 1 {
                    return Err(err("kinds", "\"*\" stands alone".into()));
                }
                KindMatch::AnyButUnknown
            } else {
                let mut set = HashSet::new();
                for name in &rule.kinds {
                    let kind = Kind::from_name(name).ok_or_else(|| err("kinds", format!("unknown kind {name:?}")))?;
                    set.insert(kind);
                }
                KindMatch::Listed(set)
            };
            let object_types = if rule.object_types.is_empty() {
                None
            } else {
                let mut types = Vec::new();
                for name in &rule.object_types {
                    types.push(
                        ObjectType::from_name(name)
                            .ok_or_else(|| err("object_types", format!("unknown object type {name:?}")))?,
                    );
                }
                Some(types)
            };
            let objects = if rule.objects.is_empty() {
                None
            } else {
                Some(ObjectGlobs::compile(&rule.objects).map_err(|e| err("objects", e.to_string()))?)
            };
            let outcome = outcome_from(
                &location,
                rule.action,
                &rule.message,
                rule.approvals,
                &rule.reviewer_groups,
                rule.timeout_secs,
                &rule.masking_profile,
            )?;
            rules.push(Rule {
                index,
                name: rule.name.clone(),
                any_group: rule.groups.iter().any(|g| g == "*"),
                groups: rule.groups.clone(),
                kinds,
                object_types,
                objects,
                outcome,
            });
        }
        Ok(Policy {
            rules,
            default,
            max_statements_per_request: spec.max_statements_per_request,
            max_statements_by_group: spec.max_statements_by_group.clone(),
            limits,
        })
    }

    /// Every masking profile a rule (or the default) names, to check they exist.
    pub fn masking_profile_names(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .map(|rule| &rule.outcome)
            .chain(std::iter::once(&self.default))
            .filter_map(|outcome| outcome.masking_profile.as_deref())
    }

    /// The masking profiles of every rule (and the default) that could apply to `subject`,
    /// deduplicated in rule order. Answers the gateway cannot tie to one statement's verdict
    /// (result polls, chunks, SQL API partitions) are masked with all of them.
    pub fn masking_profiles_for(&self, subject: &Subject) -> Vec<String> {
        let mut profiles: Vec<String> = Vec::new();
        let rules = self
            .rules
            .iter()
            .filter(|rule| rule.any_group || rule.groups.iter().any(|g| subject.groups.contains(g)))
            .map(|rule| &rule.outcome);
        for outcome in rules.chain(std::iter::once(&self.default)) {
            if let Some(profile) = &outcome.masking_profile
                && !profiles.contains(profile)
            {
                profiles.push(profile.clone());
            }
        }
        profiles
    }

    /// The classification limits to classify with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Most statements `subject` may send in one request.
    pub fn max_statements(&self, subject: &Subject) -> usize {
        subject
            .groups
            .iter()
            .filter_map(|g| self.max_statements_by_group.get(g))
            .copied()
            .max()
            .unwrap_or(self.max_statements_per_request)
            .max(self.max_statements_per_request)
    }

    /// Decides a request with no current database or schema known: partial names are the
    /// worst case (they match deny and review globs, not allow globs).
    pub fn decide(&self, subject: &Subject, classified: &Classified) -> Verdict {
        self.decide_in(subject, &Namespace::default(), classified)
    }

    /// Decides a request, qualifying partial names with the session's `namespace`.
    pub fn decide_in(&self, subject: &Subject, namespace: &Namespace, classified: &Classified) -> Verdict {
        if let Some(refusal) = classified.refusal {
            return Verdict::refused(refusal);
        }
        let limit = self.max_statements(subject);
        if classified.statements.len() > limit {
            let statements = classified.statements.len();
            return Verdict {
                action: VerdictAction::Deny,
                decided_by: DecidedBy::StatementLimit { statements, limit },
                statement_index: None,
                message: Some(format!(
                    "The request holds {statements} statements; this identity may send at most {limit} per request."
                )),
                review: None,
                masking_profiles: Vec::new(),
                statements: Vec::new(),
            };
        }
        // A `USE` changes how the names of the statements after it resolve: they are decided
        // under the namespace it sets. A statement that changes the namespace and does more
        // (a block, an EXECUTE IMMEDIATE) is decided with no namespace at all. So are the
        // statements after one that may change it unseen: creating a database or a schema
        // makes it current, and a procedure, a block or dynamic SQL may run a `USE`.
        let mut current = namespace.clone();
        let mut statements = Vec::with_capacity(classified.statements.len());
        for statement in &classified.statements {
            let changes_namespace =
                statement.actions.iter().any(|a| matches!(a.kind, Kind::UseDatabase | Kind::UseSchema));
            let mixed = changes_namespace && !matches!(statement.kind, Kind::UseDatabase | Kind::UseSchema);
            let decided_under = if mixed { Namespace::default() } else { current.clone() };
            statements.push(self.decide_statement(subject, &decided_under, statement));
            if changes_namespace {
                current = if mixed { Namespace::default() } else { namespace_after_use(&current, statement) };
            } else if may_change_namespace(statement) {
                current = Namespace::default();
            }
        }
        let deciding = pick_most_restrictive(statements.iter().map(|s| (s.action, s.review.as_ref())));
        let mut masking_profiles = Vec::new();
        for statement in &statements {
            for profile in &statement.masking_profiles {
                if !masking_profiles.contains(profile) {
                    masking_profiles.push(profile.clone());
                }
            }
        }
        match deciding {
            Some(idx) => {
                let chosen = &statements[idx];
                Verdict {
                    action: chosen.action,
                    decided_by: chosen.decided_by.clone(),
                    statement_index: Some(idx),
                    message: chosen.message.clone(),
                    review: chosen.review.clone(),
                    masking_profiles,
                    statements,
                }
            }
            None => Verdict::refused(Refusal::Empty),
        }
    }

    fn decide_statement(
        &self,
        subject: &Subject,
        namespace: &Namespace,
        statement: &ClassifiedStatement,
    ) -> StatementVerdict {
        let decisions: Vec<(DecidedBy, &Outcome)> =
            statement.actions.iter().map(|action| self.decide_action(subject, namespace, action)).collect();
        let mut masking_profiles = Vec::new();
        for (_, outcome) in &decisions {
            if let Some(profile) = &outcome.masking_profile
                && !masking_profiles.contains(profile)
            {
                masking_profiles.push(profile.clone());
            }
        }
        match pick_most_restrictive(decisions.iter().map(|(_, o)| (o.action, o.review.as_ref()))) {
            Some(idx) => {
                let (decided_by, outcome) = &decisions[idx];
                let message = outcome.message.clone().or_else(|| {
                    (outcome.action == VerdictAction::Deny).then(|| match decided_by {
                        DecidedBy::UnknownStatement => UNKNOWN_DENY_MESSAGE.to_owned(),
                        _ => DEFAULT_DENY_MESSAGE.to_owned(),
                    })
                });
                StatementVerdict {
                    action: outcome.action,
                    decided_by: decided_by.clone(),
                    deciding_action: Some(statement.actions[idx].clone()),
                    message,
                    review: outcome.review.clone(),
                    masking_profiles,
                }
            }
            None => StatementVerdict {
                action: VerdictAction::Deny,
                decided_by: DecidedBy::UnknownStatement,
                deciding_action: None,
                message: Some(UNKNOWN_DENY_MESSAGE.to_owned()),
                review: None,
                masking_profiles: Vec::new(),
            },
        }
    }

    /// The first rule that matches decides; but a review rule that matches only because a
    /// name is known at run time alone (it could be in the rule's scope, or anywhere) sends
    /// the action for review unless a later rule or the default denies it: an account, a
    /// user or a role named by a variable is no sandbox table a review rule was written for.
    fn decide_action(&self, subject: &Subject, namespace: &Namespace, action: &Action) -> (DecidedBy, &Outcome) {
        let mut possible_review: Option<(DecidedBy, &Outcome)> = None;
        for rule in &self.rules {
            let decided = || (DecidedBy::Rule { index: rule.index, name: rule.name.clone() }, &rule.outcome);
            match rule.matches(subject, namespace, action) {
                Match::No => {}
                Match::Unknowable if rule.outcome.action == VerdictAction::Review => {
                    possible_review.get_or_insert_with(decided);
                }
                Match::Yes | Match::Unknowable => return stricter(possible_review, decided()),
            }
        }
        if action.kind == Kind::Unknown {
            return stricter(possible_review, (DecidedBy::UnknownStatement, &UNKNOWN_OUTCOME));
        }
        stricter(possible_review, (DecidedBy::Default, &self.default))
    }
}

/// A review found earlier for a name known at run time alone, unless `found` denies.
fn stricter<'o>(
    possible: Option<(DecidedBy, &'o Outcome)>,
    found: (DecidedBy, &'o Outcome),
) -> (DecidedBy, &'o Outcome) {
    match possible {
        Some(review) if found.1.action != VerdictAction::Deny => review,
        _ => found,
    }
}

/// Whether a rule matches an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    No,
    Yes,
    /// Only because the action's object is named at run time (a deny or review rule's scope).
    Unknowable,
}

static UNKNOWN_OUTCOME: Outcome =
    Outcome { action: VerdictAction::Deny, message: None, review: None, masking_profile: None };

impl Rule {
    fn matches(&self, subject: &Subject, namespace: &Namespace, action: &Action) -> Match {
        let yes = |matched: bool| if matched { Match::Yes } else { Match::No };
        if !self.any_group && !subject.groups.iter().any(|g| self.groups.contains(g)) {
            return Match::No;
        }
        let kind_matches = match &self.kinds {
            KindMatch::AnyButUnknown => action.kind != Kind::Unknown,
            KindMatch::Listed(kinds) => kinds.contains(&action.kind),
        };
        if !kind_matches {
            return Match::No;
        }
        if self.object_types.is_none() && self.objects.is_none() {
            return Match::Yes;
        }
        // An allow rule scoped to objects covers actions that touch nothing outside its scope;
        // a deny or review rule scoped to objects fires on actions that touch its scope.
        let allowing = self.outcome.action == VerdictAction::Allow;
        let Some(object) = &action.object else { return yes(allowing) };
        if !self.object_types.as_ref().is_none_or(|types| types.contains(&object.object_type)) {
            return Match::No;
        }
        let Some(globs) = &self.objects else { return Match::Yes };
        let resolution = resolve(object, namespace);
        match globs.matches_resolved(&resolution, allowing) {
            false => Match::No,
            // An allowing rule matches no name known at run time alone.
            true if resolution == Resolution::Unknowable => Match::Unknowable,
            true => Match::Yes,
        }
    }
}

/// Whether a statement that is not a `USE` may still change the current database or schema:
/// a `CREATE` of a database or a schema (which becomes current), or code the gateway does not
/// see run (a procedure, a task run, a block, dynamic SQL), which may run a `USE`.
fn may_change_namespace(statement: &ClassifiedStatement) -> bool {
    statement.actions.iter().any(|a| match a.kind {
        Kind::Call | Kind::ScriptingBlock | Kind::ExecuteImmediate | Kind::ExecuteImmediateDynamic => true,
        Kind::Create | Kind::CreateOrReplace => {
            a.object.as_ref().is_some_and(|o| matches!(o.object_type, ObjectType::Database | ObjectType::Schema))
        }
        _ => false,
    })
}

/// The namespace after a `USE DATABASE` or `USE SCHEMA` statement. `USE DATABASE` makes
/// `PUBLIC` the current schema; a name only known at run time leaves nothing known.
pub(crate) fn namespace_after_use(before: &Namespace, statement: &ClassifiedStatement) -> Namespace {
    let Some(object) = statement.actions.iter().find_map(|a| a.object.as_ref()) else { return Namespace::default() };
    match (&object.object_type, &object.name) {
        (ObjectType::Database, ObjectName::Parts(parts)) if parts.len() == 1 => {
            Namespace { database: Some(parts[0].clone()), schema: Some("PUBLIC".to_owned()) }
        }
        (ObjectType::Schema, ObjectName::Parts(parts)) if parts.len() == 2 => {
            Namespace { database: Some(parts[0].clone()), schema: Some(parts[1].clone()) }
        }
        (ObjectType::Schema, ObjectName::Parts(parts)) if parts.len() == 1 && before.database.is_some() => {
            Namespace { database: before.database.clone(), schema: Some(parts[0].clone()) }
        }
        _ => Namespace::default(),
    }
}

/// The index of the most restrictive decision (deny > review > allow; among reviews, the one
/// needing the most approvals); the first on ties.
fn pick_most_restrictive<'a>(
    decisions: impl Iterator<Item = (VerdictAction, Option<&'a ReviewRequirement>)>,
) -> Option<usize> {
    let mut best: Option<(usize, VerdictAction, u32)> = None;
    for (idx, (action, review)) in decisions.enumerate() {
        let approvals = review.map_or(0, |r| r.approvals);
        let better = match best {
            None => true,
            Some((_, best_action, best_approvals)) => (action, approvals) > (best_action, best_approvals),
        };
        if better {
            best = Some((idx, action, approvals));
        }
    }
    best.map(|(idx, _, _)| idx)
}

impl Verdict {
    fn refused(refusal: Refusal) -> Verdict {
        Verdict {
            action: VerdictAction::Deny,
            decided_by: DecidedBy::Refusal { reason: refusal.to_string() },
            statement_index: None,
            message: Some(format!("snowgate refused the request: {refusal}.")),
            review: None,
            masking_profiles: Vec::new(),
            statements: Vec::new(),
        }
    }

    /// The message to show the agent: the deciding rule's, or a generic one.
    pub fn agent_message(&self) -> &str {
        match (&self.message, self.action) {
            (Some(message), _) => message,
            (None, VerdictAction::Deny) => match self.decided_by {
                DecidedBy::UnknownStatement => UNKNOWN_DENY_MESSAGE,
                _ => DEFAULT_DENY_MESSAGE,
            },
            (None, VerdictAction::Review) => "This statement is waiting for a reviewer's approval.",
            (None, VerdictAction::Allow) => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify::classify;

    const SPEC: &str = r#"
[policy]
max_statements_per_request = 1
max_statements_by_group = { etl = 5 }
default = { action = "deny", message = "Not allowed by default." }

[[policy.rules]]
name = "no destruction"
groups = ["*"]
kinds = ["drop", "truncate", "delete_all", "create_or_replace"]
action = "deny"
message = "Destructive statements are blocked."

[[policy.rules]]
name = "writes need review"
groups = ["analysts"]
kinds = ["insert", "update", "delete", "merge"]
objects = ["sandbox.**"]
action = "review"
approvals = 2
reviewer_groups = ["dba"]
timeout_secs = 600

[[policy.rules]]
name = "hr is masked"
groups = ["analysts"]
kinds = ["select"]
objects = ["hr.**"]
action = "allow"
masking_profile = "pii"

[[policy.rules]]
name = "analysts read"
groups = ["analysts"]
kinds = ["select", "show", "describe"]
object_types = ["table"]
objects = ["analytics.**", "sandbox.**"]
action = "allow"
masking_profile = "standard"

[[policy.rules]]
name = "housekeeping"
groups = ["*"]
kinds = ["use_database", "use_schema", "execute_immediate"]
action = "allow"
"#;

    fn policy() -> Policy {
        Policy::from_spec(&PolicySpec::from_document(SPEC).unwrap()).unwrap()
    }

    fn analyst() -> Subject {
        Subject { sub: "agent-1".into(), groups: vec!["analysts".into()] }
    }

    fn decide(sql: &str) -> Verdict {
        let ns = Namespace::new(Some("ANALYTICS"), Some("PUBLIC"));
        policy().decide_in(&analyst(), &ns, &classify(sql, &Limits::default()))
    }

    fn rule_name(verdict: &Verdict) -> &str {
        match &verdict.decided_by {
            DecidedBy::Rule { name, .. } => name,
            _ => "",
        }
    }

    #[test]
    fn first_match_wins_and_objects_scope_allow_rules() {
        let v = decide("select * from orders");
        assert_eq!((v.action, rule_name(&v)), (VerdictAction::Allow, "analysts read"));
        assert_eq!(v.masking_profiles, ["standard"]);
        let v = decide("select * from orders join hr.public.pay on true");
        assert_eq!(v.action, VerdictAction::Allow);
        assert_eq!(v.masking_profiles, ["standard", "pii"]);
        let v = decide("select * from finance.public.ledger");
        assert_eq!((v.action, &v.decided_by), (VerdictAction::Deny, &DecidedBy::Default));
        assert_eq!(v.message.as_deref(), Some("Not allowed by default."));
        // Constant queries touch nothing outside the allow rule's scope.
        assert_eq!(decide("select current_date()").action, VerdictAction::Allow);
        // A stage is not a table: the table-scoped allow rule does not cover it.
        assert_eq!(decide("select $1 from @analytics.public.stg").action, VerdictAction::Deny);
    }

    #[test]
    fn deny_beats_review_beats_allow() {
        let v = decide("drop table analytics.public.orders");
        assert_eq!((v.action, rule_name(&v)), (VerdictAction::Deny, "no destruction"));
        assert_eq!(v.message.as_deref(), Some("Destructive statements are blocked."));
        let v = decide("insert into sandbox.s.t select * from orders");
        assert_eq!((v.action, rule_name(&v)), (VerdictAction::Review, "writes need review"));
        let review = v.review.unwrap();
        assert_eq!((review.approvals, review.timeout), (2, Duration::from_secs(600)));
        assert_eq!(decide("insert into sandbox.s.t select * from finance.x.y").action, VerdictAction::Deny);
        assert_eq!(decide("delete from sandbox.s.t").action, VerdictAction::Deny);
    }

    #[test]
    fn verdicts_serialize_for_the_recording() {
        let json = serde_json::to_value(decide("drop table analytics.public.orders")).unwrap();
        assert_eq!(json["action"], "deny");
        assert_eq!(json["decided_by"]["by"], "rule");
        assert_eq!(json["decided_by"]["name"], "no destruction");
        let action = &json["statements"][0]["deciding_action"];
        assert_eq!((&action["kind"], &action["object"]["name"]), (&"drop".into(), &"ANALYTICS.PUBLIC.ORDERS".into()));
        let review = serde_json::to_value(decide("insert into sandbox.s.t values (1)")).unwrap();
        assert_eq!(review["review"]["timeout_secs"], 600);
    }

    #[test]
    fn statement_limits_refusals_and_unknown() {
        let v = decide("select 1; select 2");
        assert_eq!(v.decided_by, DecidedBy::StatementLimit { statements: 2, limit: 1 });
        let etl = Subject { sub: "etl-1".into(), groups: vec!["etl".into(), "analysts".into()] };
        assert_eq!(policy().max_statements(&etl), 5);
        let v = decide("select 'open");
        assert!(matches!(v.decided_by, DecidedBy::Refusal { .. }));
        let v = decide("frobnicate");
        assert_eq!((v.action, &v.decided_by), (VerdictAction::Deny, &DecidedBy::UnknownStatement));
        assert!(!v.agent_message().is_empty());
    }

    #[test]
    fn use_in_a_batch_moves_the_names_after_it() {
        let etl = Subject { sub: "etl-1".into(), groups: vec!["analysts".into(), "etl".into()] };
        let ns = Namespace::new(Some("ANALYTICS"), Some("PUBLIC"));
        let decide = |sql: &str| policy().decide_in(&etl, &ns, &classify(sql, &Limits::default()));
        assert_eq!(decide("select * from orders; select * from customers").action, VerdictAction::Allow);
        let moved = decide("use database finance; select * from ledger");
        assert_eq!((moved.action, moved.statement_index), (VerdictAction::Deny, Some(1)));
        assert_eq!(decide("use schema finance.public; select * from ledger").action, VerdictAction::Deny);
        assert_eq!(decide("use schema analytics.marts; select * from orders").action, VerdictAction::Allow);
        assert_eq!(decide("use identifier($db); select * from orders").action, VerdictAction::Deny);
        assert_eq!(decide("execute immediate 'use database hr'; select * from orders").action, VerdictAction::Deny);
    }

    #[test]
    fn dynamic_names_never_satisfy_allow_globs() {
        assert_eq!(decide("select * from identifier($t)").action, VerdictAction::Deny);
        let no_namespace = policy().decide(&analyst(), &classify("select * from orders", &Limits::default()));
        assert_eq!(no_namespace.action, VerdictAction::Deny);
    }

    /// A review rule that fires only for a name known at run time reviews the action unless
    /// what would decide it otherwise denies: under a default that allows, it is reviewed.
    #[test]
    fn a_review_for_a_run_time_name_yields_to_a_deny_only() {
        let with_default = |default: &str| {
            let text = format!(
                "[policy]\ndefault = {default}\n[[policy.rules]]\nname = \"sandbox\"\ngroups = [\"*\"]\n\
                 kinds = [\"insert\"]\nobjects = [\"A.SANDBOX.**\"]\naction = \"review\"\n\
                 reviewer_groups = [\"dba\"]\ntimeout_secs = 60\n"
            );
            let policy = Policy::from_spec(&PolicySpec::from_document(&text).unwrap()).unwrap();
            policy.decide(&analyst(), &classify("insert into identifier($t) values (1)", &Limits::default())).action
        };
        assert_eq!(with_default(r#"{ action = "allow" }"#), VerdictAction::Review);
        assert_eq!(with_default(r#"{ action = "deny", message = "no" }"#), VerdictAction::Deny);
    }

    /// After a statement that may change the current schema unseen (a procedure may run a
    /// `USE`; creating a schema makes it current), partial names are not placed in the one
    /// before it.
    #[test]
    fn partial_names_after_a_possible_namespace_change_are_not_placed() {
        let etl = Subject { sub: "etl-1".into(), groups: vec!["etl".into(), "analysts".into()] };
        let ns = Namespace::new(Some("ANALYTICS"), Some("PUBLIC"));
        let decide = |sql: &str| policy().decide_in(&etl, &ns, &classify(sql, &Limits::default()));
        let read = |v: &Verdict| v.statements.last().unwrap().action;
        assert_eq!(read(&decide("use schema analytics.public; select * from orders")), VerdictAction::Allow);
        for before in ["call analytics.public.p()", "create schema hr.copy", "begin select 1; end"] {
            let v = decide(&format!("{before}; select * from orders"));
            assert_eq!(read(&v), VerdictAction::Deny, "{before}");
        }
    }

    #[test]
    fn errors_name_rule_and_field() {
        let bad = |extra: &str| {
            let text = format!("[policy]\n[[policy.rules]]\nname = \"r\"\ngroups = [\"*\"]\n{extra}");
            Policy::from_spec(&PolicySpec::from_document(&text).unwrap()).unwrap_err()
        };
        assert_eq!(bad("kinds = [\"selekt\"]\naction = \"allow\"").location, "rules[0] \"r\".kinds");
        assert_eq!(bad("kinds = [\"drop\"]\naction = \"deny\"").location, "rules[0] \"r\".message");
        assert_eq!(
            bad("kinds = [\"drop\"]\naction = \"review\"\nreviewer_groups = [\"dba\"]").location,
            "rules[0] \"r\".timeout_secs"
        );
        assert_eq!(
            bad("kinds = [\"select\"]\nobjects = [\"a..b\"]\naction = \"allow\"").location,
            "rules[0] \"r\".objects"
        );
        assert_eq!(
            bad("kinds = [\"select\"]\nobject_types = [\"tabel\"]\naction = \"allow\"").location,
            "rules[0] \"r\".object_types"
        );
        let unknown_field = PolicySpec::from_document("[policy]\ndefualt = 1\n").unwrap_err();
        assert!(unknown_field.problem.contains("defualt"));
    }

    #[test]
    fn unknown_needs_an_explicit_rule() {
        let text = r#"
[policy]
default = { action = "allow" }
[[policy.rules]]
name = "all"
groups = ["*"]
kinds = ["*"]
action = "allow"
"#;
        let permissive = Policy::from_spec(&PolicySpec::from_document(text).unwrap()).unwrap();
        let verdict = permissive.decide(&analyst(), &classify("frobnicate", &Limits::default()));
        assert_eq!(verdict.action, VerdictAction::Deny);
        let named = text.replace("kinds = [\"*\"]", "kinds = [\"unknown\"]");
        let allows_unknown = Policy::from_spec(&PolicySpec::from_document(&named).unwrap()).unwrap();
        assert_eq!(
            allows_unknown.decide(&analyst(), &classify("frobnicate", &Limits::default())).action,
            VerdictAction::Allow
        );
    }
}
