//! The `[masking]` table as written in the policy file: named profiles of column rules, content
//! detectors and a literal dictionary, each with a mask style. Shapes and serde only: checking
//! and compiling them is `rules`' job, and nothing here touches result bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `[masking]` table: named profiles. The policy picks one profile per identity group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingSpec {
    /// Profiles by name (`[masking.profiles.<name>]`).
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileSpec>,
}

/// One profile: what to mask for the identities it applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// Column rules, tried in order; the first whose globs match a column masks the whole column.
    #[serde(default)]
    pub columns: Vec<ColumnRuleSpec>,
    /// Content detectors, run on the text of columns no column rule masks.
    #[serde(default)]
    pub detectors: DetectorsSpec,
    /// Literal words to mask wherever they appear in text.
    #[serde(default)]
    pub dictionary: DictionarySpec,
}

/// A column rule: a column-name glob and a table glob, matched case-insensitively against the
/// result's row type, and the mask for every value of the matching columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRuleSpec {
    /// Glob over the column name (`*`, `?`, `[a-z]`, `{a,b}`).
    pub name: String,
    /// Glob over the table name; `*` (the default) matches every table, including none. With one
    /// dot it is matched against `schema.table`, with two against `database.schema.table`
    /// (unquoted, as the row type names them); where the row type does not say, it matches.
    #[serde(default = "any_table")]
    pub table: String,
    /// How the values are masked.
    #[serde(default)]
    pub mask: MaskSpec,
}

fn any_table() -> String {
    "*".to_owned()
}

/// A mask style, written as an inline table: `{ style = "keep_last", keep = 4 }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MaskWire", into = "MaskWire")]
pub enum MaskSpec {
    /// Every byte of the value (or of the matched text) becomes `*`.
    #[default]
    Full,
    /// Like `full`, but the last `keep` characters stay in clear: at most half of the value's
    /// (or the match's) characters, rounded down, so a value no longer than twice `keep` shows
    /// fewer and a match is never left whole (`keep = 11` on an SSN keeps its last five).
    KeepLast {
        /// How many trailing characters stay visible (at most half of them).
        keep: u32,
    },
    /// The value (or matched text) is replaced by a fixed token.
    Token {
        /// The token: 1 to 64 printable ASCII characters, no `"` nor `\`.
        token: String,
    },
    /// A value of the column's own type (zero, the epoch, false, `*`s for text).
    TypeValid,
    /// NULL where the column is nullable, else a type-valid value.
    Null,
}

/// The written form of a [`MaskSpec`]: one table whatever the style, so that a field that
/// does not belong to the style (`keep` on `full`) is refused rather than ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaskWire {
    style: StyleName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keep: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StyleName {
    Full,
    KeepLast,
    Token,
    TypeValid,
    Null,
}

impl TryFrom<MaskWire> for MaskSpec {
    type Error = String;

    fn try_from(wire: MaskWire) -> Result<MaskSpec, String> {
        match (wire.style, wire.keep, wire.token) {
            (StyleName::Full, None, None) => Ok(MaskSpec::Full),
            (StyleName::TypeValid, None, None) => Ok(MaskSpec::TypeValid),
            (StyleName::Null, None, None) => Ok(MaskSpec::Null),
            (StyleName::KeepLast, Some(keep), None) => Ok(MaskSpec::KeepLast { keep }),
            (StyleName::Token, None, Some(token)) => Ok(MaskSpec::Token { token }),
            (StyleName::KeepLast, _, _) => Err("style \"keep_last\" takes `keep` and nothing else".into()),
            (StyleName::Token, _, _) => Err("style \"token\" takes `token` and nothing else".into()),
            _ => Err("styles \"full\", \"type_valid\" and \"null\" take no other field".into()),
        }
    }
}

impl From<MaskSpec> for MaskWire {
    fn from(spec: MaskSpec) -> MaskWire {
        let (style, keep, token) = match spec {
            MaskSpec::Full => (StyleName::Full, None, None),
            MaskSpec::KeepLast { keep } => (StyleName::KeepLast, Some(keep), None),
            MaskSpec::Token { token } => (StyleName::Token, None, Some(token)),
            MaskSpec::TypeValid => (StyleName::TypeValid, None, None),
            MaskSpec::Null => (StyleName::Null, None, None),
        };
        MaskWire { style, keep, token }
    }
}

/// The content detectors of a profile. Every detector is on unless switched off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorsSpec {
    /// The mask for detected text, unless the detector names its own.
    #[serde(default)]
    pub mask: MaskSpec,
    /// Card numbers: 13 to 19 digits, optionally grouped by spaces or dashes, Luhn-valid.
    #[serde(default)]
    pub card: DetectorSwitch,
    /// E-mail addresses.
    #[serde(default)]
    pub email: DetectorSwitch,
    /// US social security numbers written `123-45-6789` (or with spaces).
    #[serde(default)]
    pub ssn: DetectorSwitch,
    /// IBANs, compact or grouped by four, with a valid mod-97 check.
    #[serde(default)]
    pub iban: DetectorSwitch,
    /// AWS access key ids (`AKIA…`, `ASIA…`).
    #[serde(default)]
    pub aws_access_key: DetectorSwitch,
    /// Google Cloud API keys (`AIza…`).
    #[serde(default)]
    pub gcp_api_key: DetectorSwitch,
    /// GitHub tokens (`ghp_…`, `gho_…`, `ghu_…`, `ghs_…`, `ghr_…`, `github_pat_…`).
    #[serde(default)]
    pub github_token: DetectorSwitch,
    /// Slack tokens (`xoxb-…`, `xoxp-…`, `xoxa-…`, `xoxr-…`, `xoxs-…`, `xoxe-…`, `xoxe.…`,
    /// `xoxc-…`, `xoxd-…`).
    #[serde(default)]
    pub slack_token: DetectorSwitch,
    /// JSON Web Tokens (`eyJ….….…`).
    #[serde(default)]
    pub jwt: DetectorSwitch,
    /// PEM private keys (`-----BEGIN … PRIVATE KEY-----` to its END line).
    #[serde(default)]
    pub pem_private_key: DetectorSwitch,
}

impl Default for DetectorsSpec {
    fn default() -> DetectorsSpec {
        DetectorsSpec {
            mask: MaskSpec::Full,
            card: DetectorSwitch::default(),
            email: DetectorSwitch::default(),
            ssn: DetectorSwitch::default(),
            iban: DetectorSwitch::default(),
            aws_access_key: DetectorSwitch::default(),
            gcp_api_key: DetectorSwitch::default(),
            github_token: DetectorSwitch::default(),
            slack_token: DetectorSwitch::default(),
            jwt: DetectorSwitch::default(),
            pem_private_key: DetectorSwitch::default(),
        }
    }
}

/// A detector switch: `card = false`, `card = true`, or `card = { mask = { style = "keep_last", keep = 4 } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DetectorSwitch {
    /// On (with the detectors' mask) or off.
    Enabled(bool),
    /// On, with its own mask.
    Masked(DetectorMask),
}

/// The table form of a [`DetectorSwitch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorMask {
    /// The mask for this detector's matches.
    pub mask: MaskSpec,
}

impl Default for DetectorSwitch {
    fn default() -> DetectorSwitch {
        DetectorSwitch::Enabled(true)
    }
}

/// Literal words (known secrets, customer names...) masked wherever they appear in text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DictionarySpec {
    /// The words: each 3 to 256 bytes. Duplicates are ignored.
    #[serde(default)]
    pub words: Vec<String>,
    /// Whether ASCII letters match regardless of case (forces an automaton instead of Teddy).
    #[serde(default)]
    pub case_insensitive: bool,
    /// The mask for matched words.
    #[serde(default)]
    pub mask: MaskSpec,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        masking: MaskingSpec,
    }

    #[test]
    fn parses_the_documented_example() {
        let text = r#"
[masking.profiles.agents]
dictionary = { words = ["Project Falcon", "ACME-7731"], mask = { style = "token", token = "[SECRET]" } }

[masking.profiles.agents.detectors]
mask = { style = "full" }
card = { mask = { style = "keep_last", keep = 4 } }
jwt = false

[[masking.profiles.agents.columns]]
name = "*SSN*"
mask = { style = "null" }

[[masking.profiles.agents.columns]]
name = "amount"
table = "ORDERS"
mask = { style = "type_valid" }
"#;
        let file: File = toml::from_str(text).unwrap();
        let agents = &file.masking.profiles["agents"];
        assert_eq!(agents.columns.len(), 2);
        assert_eq!(agents.columns[0].table, "*");
        assert_eq!(agents.columns[0].mask, MaskSpec::Null);
        assert_eq!(agents.columns[1].mask, MaskSpec::TypeValid);
        assert_eq!(agents.detectors.jwt, DetectorSwitch::Enabled(false));
        assert_eq!(agents.detectors.email, DetectorSwitch::Enabled(true));
        assert_eq!(
            agents.detectors.card,
            DetectorSwitch::Masked(DetectorMask { mask: MaskSpec::KeepLast { keep: 4 } })
        );
        assert_eq!(agents.dictionary.mask, MaskSpec::Token { token: "[SECRET]".into() });
    }

    #[test]
    fn rejects_unknown_fields_everywhere() {
        for text in [
            "[masking]\nprofile = 1",
            "[masking.profiles.a]\ncolumn = []",
            "[[masking.profiles.a.columns]]\nname = \"x\"\ntabel = \"y\"",
            "[[masking.profiles.a.columns]]\nname = \"x\"\nmask = { style = \"full\", keep = 2 }",
            "[[masking.profiles.a.columns]]\nname = \"x\"\nmask = { style = \"blur\" }",
            "[[masking.profiles.a.columns]]\nname = \"x\"\nmask = { style = \"keep_last\" }",
            "[[masking.profiles.a.columns]]\nname = \"x\"\nmask = { style = \"token\", keep = 1 }",
            "[masking.profiles.a.detectors]\npassport = true",
            "[masking.profiles.a.detectors]\ncard = { mask = { style = \"full\" }, extra = 1 }",
            "[masking.profiles.a.dictionary]\nword = [\"x\"]",
        ] {
            assert!(toml::from_str::<File>(text).is_err(), "accepted: {text}");
        }
    }
}
