//! The masking spec the masking fuzz targets share (each target includes this file): an
//! `agents` profile that uses every mask style, every detector and a dictionary, and an `open`
//! profile that masks nothing, so passing through untouched can be asserted. No I/O.

// Each target includes this file and uses only part of it.
#![allow(dead_code)]

use std::sync::OnceLock;

use snowgate::mask::{Column, ColumnPlan, Masker, MaskingSpec, ProfileId};

/// The spec, as the `[masking]` table of a policy file would give it (in JSON).
const SPEC: &str = r#"{"profiles": {
  "agents": {
    "columns": [
      {"name": "ssn", "mask": {"style": "null"}},
      {"name": "AMOUNT", "table": "CUSTOMERS", "mask": {"style": "type_valid"}},
      {"name": "*_AT", "mask": {"style": "type_valid"}},
      {"name": "NOTES", "mask": {"style": "keep_last", "keep": 3}},
      {"name": "SECRET*", "mask": {"style": "token", "token": "[REDACTED-LONG-TOKEN]"}},
      {"name": "CREATED", "mask": {"style": "null"}}
    ],
    "detectors": {"card": {"mask": {"style": "keep_last", "keep": 4}}, "email": {"mask": {"style": "token", "token": "[EMAIL]"}}},
    "dictionary": {"words": ["Lovelace", "Project Falcon", "ACME-7731"], "mask": {"style": "token", "token": "[NAME]"}}
  },
  "open": {
    "detectors": {"card": false, "email": false, "ssn": false, "iban": false, "aws_access_key": false,
      "gcp_api_key": false, "github_token": false, "slack_token": false, "jwt": false, "pem_private_key": false}
  }
}}"#;

pub fn masker() -> &'static Masker {
    static MASKER: OnceLock<Masker> = OnceLock::new();
    MASKER.get_or_init(|| Masker::new(&serde_json::from_str::<MaskingSpec>(SPEC).unwrap()).unwrap())
}

pub fn agents() -> ProfileId {
    masker().profile("agents").unwrap()
}

pub fn open() -> ProfileId {
    masker().profile("open").unwrap()
}

/// Columns of the shape of `tests/fixtures/mask/query_answer.json`, for bodies that carry no
/// row type (JSON chunks, SQL API partitions): `n` of them, cycling through the types.
pub fn columns(n: usize) -> Vec<Column> {
    const SHAPES: [(&str, &str, Option<u32>); 8] = [
        ("ID", "fixed", Some(0)),
        ("NAME", "text", None),
        ("SSN", "text", None),
        ("AMOUNT", "fixed", Some(2)),
        ("CREATED", "date", None),
        ("UPDATED_AT", "timestamp_tz", Some(9)),
        ("NOTES", "variant", None),
        ("ACTIVE", "boolean", None),
    ];
    (0..n)
        .map(|i| {
            let (name, type_name, scale) = SHAPES[i % SHAPES.len()];
            Column {
                name: name.into(),
                table: Some("CUSTOMERS".into()),
                schema: Some("CRM".into()),
                database: Some("PROD".into()),
                type_name: type_name.into(),
                scale,
                nullable: i % 3 != 0,
            }
        })
        .collect()
}

pub fn plan(profile: ProfileId, n: usize) -> ColumnPlan {
    masker().plan(profile, &columns(n))
}
