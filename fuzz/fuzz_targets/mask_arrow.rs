//! Fuzz target `mask_arrow`: Arrow IPC streams from an untrusted upstream through the masker,
//! as chunks (with no plan, the answer's plan, or a plan for other columns) or inside a query
//! answer's `rowsetBase64`. The first byte chooses the profile and the framing. Invariants:
//! masking never panics and never changes the length; the `open` profile changes no byte and
//! counts nothing; a stream that changed was counted as masked; what the masker wrote it
//! accepts again, as the same kind of body, and masking it again changes nothing.
#![no_main]

#[path = "common/masking.rs"]
mod masking;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use snowgate::mask::{Column, ColumnPlan, Scratch};

/// The row type of `tests/fixtures/mask/fakesnow_customers.arrows` (the seed corpus).
const ROWTYPE: &str = r#"[
  {"name":"ID","table":"CUSTOMERS","type":"fixed","precision":38,"scale":0,"nullable":false},
  {"name":"NAME","table":"CUSTOMERS","type":"text","length":100,"nullable":false},
  {"name":"EMAIL","table":"CUSTOMERS","type":"text","length":256,"nullable":true},
  {"name":"CARD","table":"CUSTOMERS","type":"text","length":19,"nullable":false},
  {"name":"AMOUNT","table":"CUSTOMERS","type":"fixed","precision":12,"scale":2,"nullable":false},
  {"name":"CREATED","table":"CUSTOMERS","type":"date","nullable":true},
  {"name":"UPDATED_AT","table":"CUSTOMERS","type":"timestamp_ntz","scale":9,"nullable":true},
  {"name":"SEEN","table":"CUSTOMERS","type":"timestamp_tz","scale":9,"nullable":true}]"#;

fn answer_plan(profile: snowgate::mask::ProfileId) -> ColumnPlan {
    masking::masker().plan(profile, &Column::from_rowtype_json(ROWTYPE.as_bytes()).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, stream)) = data.split_first() else { return };
    let masker = masking::masker();
    let profile = if flags & 1 == 0 { masking::agents() } else { masking::open() };
    let (input, plan) = if flags & 2 == 0 {
        let plan = match (flags >> 2) & 3 {
            0 => None,
            1 => Some(answer_plan(profile)),
            2 => Some(masking::plan(profile, 8)),
            _ => Some(masking::plan(profile, 3)),
        };
        (stream.to_vec(), plan)
    } else {
        let answer = format!(
            r#"{{"data":{{"rowtype":{ROWTYPE},"rowsetBase64":"{}","total":3,"returned":3,"queryResultFormat":"arrow"}},"success":true}}"#,
            STANDARD.encode(stream)
        );
        (answer.into_bytes(), None)
    };
    let mut scratch = Scratch::default();
    let mut body = input.clone();
    let Ok(masked) = masker.mask(profile, &mut body, plan.as_ref(), &mut scratch) else { return };
    assert_eq!(body.len(), input.len());

    if profile == masking::open() {
        assert_eq!(body, input, "the open profile changed the stream");
        assert_eq!(masked.report.values_masked, 0);
        return;
    }
    if body != input {
        assert!(masked.report.values_masked > 0, "the stream changed but nothing was counted as masked");
    }
    let mut again = body.clone();
    let second = masker
        .mask(profile, &mut again, masked.plan.as_ref().or(plan.as_ref()), &mut scratch)
        .unwrap_or_else(|e| panic!("the masker refused its own output ({e}): {:?}", String::from_utf8_lossy(&body)));
    assert_eq!(second.format, masked.format);
    assert_eq!(again, body, "masking the masked stream changed it again");
});
