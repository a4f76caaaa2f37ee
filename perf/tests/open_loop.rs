//! The open loop's saturation measure against the Snowflake double over real sockets: a load
//! one agent cannot carry finds it busy at nearly every due time, a light load on several
//! agents almost never does.

use std::time::Duration;

use snowgate_perf::UpstreamConfig;
use snowgate_perf::harness::loadgen::{self, AgentPlan, LoadSpec, LoginKind, Mode, Target};
use snowgate_perf::test_keys::TEST_PUBLIC_KEY_PEM;

fn busy_share(connections: usize, rate_per_sec: f64, duration: Duration) -> f64 {
    let double = snowgate_perf::start(UpstreamConfig {
        public_key_pem: Some(TEST_PUBLIC_KEY_PEM.into()),
        ..UpstreamConfig::default()
    })
    .expect("the double starts");
    let target = Target { addr: double.addr, login: LoginKind::KeyPair, sql: "select * from small".into() };
    let plan = AgentPlan::new(&target, std::path::Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
    let spec = LoadSpec {
        mode: Mode::OpenLoop { rate_per_sec },
        connections,
        warmup: Duration::from_millis(50),
        duration,
        cpu: None,
        realtime: false,
    };
    let result = loadgen::run(&plan, &spec, Vec::new()).expect("the open loop runs");
    assert_eq!(result.errors, 0, "{:?}", result.first_error);
    let (busy, due) = result.busy_at_due.expect("an open loop counts its due queries");
    // The pacer schedules every query of the window, answered or not.
    let expected = rate_per_sec * spec.duration.as_secs_f64();
    assert!((due as f64 - expected).abs() <= 2.0, "{due} queries due, expected {expected}");
    busy as f64 / due as f64
}

#[test]
fn an_overloaded_open_loop_reads_as_saturated() {
    // One connection cannot answer a query every 10 µs: nearly every due query waits for it.
    let share = busy_share(1, 100_000.0, Duration::from_millis(100));
    assert!(share > 0.9, "only {share} of the queries found the agent busy");
}

#[test]
fn a_light_open_loop_does_not() {
    // Eight agents, a query every 5 ms: all eight busy at once would take a 40 ms stall.
    let share = busy_share(8, 200.0, Duration::from_millis(400));
    assert!(share < 0.2, "{share} of the queries found every agent busy");
}
