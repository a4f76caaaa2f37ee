//! The SQL classifier on untrusted text: it never panics, splitting is stable (the statements
//! it found, joined again with `;`, split into the same statements), every statement range lies
//! inside the text, and anything it could not classify is denied by a policy that allows every
//! kind it may name with `"*"` (only a rule naming `unknown` may allow the unknown). The
//! `RESULT_SCAN` finder never panics, and its cheap pre-check never hides a call.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snowgate::policy::lexer::statement_ranges;
use snowgate::policy::result_scan::{may_scan_results, scan_targets};
use snowgate::policy::{Kind, Limits, Policy, PolicySpec, Subject, VerdictAction, classify};

fn permissive_policy() -> Policy {
    let text = "[policy]\nmax_statements_per_request = 100\ndefault = { action = \"allow\" }\n\
                [[policy.rules]]\nname = \"all\"\ngroups = [\"*\"]\nkinds = [\"*\"]\naction = \"allow\"\n";
    Policy::from_spec(&PolicySpec::from_document(text).unwrap()).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Smaller limits than production keep each run fast; the invariants do not depend on them.
    let limits = Limits { text_bytes_max: 64 << 10, tokens_max: 20_000, ..Limits::default() };
    let classified = classify(text, &limits);
    if let Ok(targets) = scan_targets(text, &limits, &classified) {
        assert!(targets.is_empty() || may_scan_results(text), "the pre-check hid a RESULT_SCAN: {text:?}");
    }
    let mut previous_end = 0;
    for statement in &classified.statements {
        assert!(statement.byte_range.start >= previous_end && statement.byte_range.end <= text.len());
        assert!(statement.byte_range.start < statement.byte_range.end);
        assert!(!statement.actions.is_empty());
        previous_end = statement.byte_range.end;
    }

    let verdict = permissive_policy().decide(&Subject { sub: "fuzz".into(), groups: vec![] }, &classified);
    if classified.has_unknown() {
        assert_eq!(verdict.action, VerdictAction::Deny, "an unknown part was not denied");
    }
    for statement in &classified.statements {
        if statement.actions.iter().any(|a| a.kind == Kind::Unknown) {
            assert!(statement.unknown_reason.is_some(), "an unknown part without a reason");
        }
    }

    if let Ok(ranges) = statement_ranges(text, &limits) {
        let pieces: Vec<&str> = ranges.iter().map(|r| &text[r.clone()]).collect();
        let joined = pieces.join(";\n");
        // The separators add a few tokens and bytes: room for them.
        let roomier = Limits { text_bytes_max: 2 * limits.text_bytes_max, tokens_max: 2 * limits.tokens_max, ..limits };
        let again = statement_ranges(&joined, &roomier).expect("the joined statements lex again");
        let again_pieces: Vec<&str> = again.iter().map(|r| &joined[r.clone()]).collect();
        assert_eq!(pieces, again_pieces, "splitting is not stable");
    }
});
