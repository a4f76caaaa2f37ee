//! The perf harness in its tiny mode, so it cannot rot: every scenario (direct, nginx, snowgate
//! forwarding, full in each durability mode, and full unrecorded when its build is there) runs its closed and open loops for a fraction of a
//! second against the real gateway binary, the scale figures run on a few connections, and the
//! report is written. The figures mean nothing here; that each part works does.
//!
//! nginx must be installed (`.ci/run` installs it; `apt-get install nginx-light` elsewhere).

use snowgate_perf::harness::{self, RunSpec};

#[test]
fn the_harness_runs_every_existing_scenario_and_writes_its_report() {
    let spec = RunSpec::tiny(env!("CARGO_BIN_EXE_snowgate").into());
    let report = harness::run(&spec, "perf_smoke").expect("the tiny comparison runs");
    // Only the recording-off scenario may be missing, and only when its build is (tests/run.sh
    // builds it).
    for (name, why) in &report.skipped {
        let unbuilt = *name == "snowgate-full-unrecorded" && !spec.unrecorded_bin.exists();
        assert!(unbuilt, "{name} was skipped: {why}");
    }
    let payload = &report.payloads[0];
    let closed: Vec<&str> = payload.closed.iter().map(|(name, _)| *name).collect();
    assert_eq!(&closed[..3], ["direct", "nginx", "snowgate-forward"]);
    for (name, runs) in &payload.closed {
        for run in runs {
            assert!(run.requests_per_sec > 0.0, "{name}: no queries completed");
            assert_eq!(run.errors, 0, "{name}: {:?}", run.first_error);
            // Every completed query was answered by the double: no proxy answered on its own.
            assert!((0.99..=1.01).contains(&run.hop_ratio), "{name}: hop ratio {}", run.hop_ratio);
            assert!(run.upstream_cpu_us > 0.0 && run.loadgen_cpu_us > 0.0, "{name}: CPU not measured");
            if *name != "direct" {
                assert!(run.proxy_cpu_us > 0.0 && run.proxy_rss_bytes > 0, "{name}: proxy not measured");
            }
        }
    }
    let forward = &payload.closed[2].1[0];
    assert!(forward.recording_bytes_per_query.is_some_and(|b| b > 0.0), "the gateway's recording was not measured");
    for (name, runs) in &payload.closed {
        let recorded = runs[0].recording_bytes_per_query;
        if *name == "snowgate-full-unrecorded" {
            // Its recorder still writes the lifecycle events (a gateway start), never an exchange,
            // which would be at least a hundred bytes per query.
            assert!(recorded.is_some_and(|b| b < 1.0), "the bench-unrecorded build recorded exchanges: {recorded:?}");
        } else if name.starts_with("snowgate-full") {
            assert!(recorded.is_some_and(|b| b > 0.0), "{name}: nothing recorded");
        }
    }
    assert!(payload.open_rate > 0.0);
    for (name, run) in &payload.open {
        assert!(run.achieved_rate > 0.0 && run.p99_us >= run.p50_us && run.p50_us > 0.0, "{name}: {run:?}");
        assert_eq!(run.errors, 0, "{name}");
    }
    let idle: Vec<(&str, usize)> = report.idle_memory.iter().map(|m| (m.what.as_str(), m.connections)).collect();
    assert_eq!(idle, [("snowgate, plain", 50), ("snowgate, TLS", 50), ("nginx, plain", 50)]);
    assert_eq!(report.cores.len(), 4);
    assert!(report.cores.iter().all(|c| c.requests_per_sec > 0.0), "{:?}", report.cores);

    let dir = tempfile::tempdir().unwrap();
    let md = harness::report::write(&report, spec.runs, dir.path(), "smoke").unwrap();
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.contains("| nginx |") && text.contains("## Goals"), "{text}");
    let svg = std::fs::read_to_string(md.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("snowgate-forward"));
}
