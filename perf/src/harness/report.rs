//! The comparison's report: a markdown document (tables per payload, the goals with today's
//! ratios, the scale figures) and a hand-written SVG plot (max req/s and open-loop p99 per
//! scenario and payload). Pure: strings in, strings out; the caller writes the files.

use std::fmt::Write as _;
use std::path::Path;

use super::{ClosedRun, OpenRun, PayloadReport, Report, median};

/// `YYYY-MM-DD` (UTC) of a time.
pub fn utc_date(time: std::time::SystemTime) -> String {
    let days = time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400) as i64;
    date_from_days(days)
}

/// `YYYY-MM-DD` of the day `days` after 1970-01-01 (Howard Hinnant's days-to-civil
/// algorithm); Snowflake's DATE values are such day counts.
pub fn date_from_days(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The short commit of the repository, or `unknown`.
pub fn git_commit(repo_root: &Path) -> String {
    std::process::Command::new("git")
        .arg("-C")
        .arg(repo_root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn closed_median(runs: &[ClosedRun], f: impl Fn(&ClosedRun) -> f64) -> f64 {
    median(runs.iter().map(f))
}

/// The median max rate of a scenario for a payload.
pub fn max_rate(payload: &PayloadReport, scenario: &str) -> Option<f64> {
    payload.closed.iter().find(|(n, _)| *n == scenario).map(|(_, runs)| closed_median(runs, |r| r.requests_per_sec))
}

fn open_of<'a>(payload: &'a PayloadReport, scenario: &str) -> Option<&'a OpenRun> {
    payload.open.iter().find(|(n, _)| *n == scenario).map(|(_, r)| r)
}

fn recording_ratio(runs: &[ClosedRun]) -> Option<f64> {
    let per_query: Vec<f64> = runs.iter().filter_map(|r| r.recording_bytes_per_query).collect();
    if per_query.is_empty() {
        return None;
    }
    let raw = closed_median(runs, |r| r.raw_bytes_per_query);
    Some(median(per_query) / raw.max(1.0))
}

fn payload_section(out: &mut String, payload: &PayloadReport, runs: usize) {
    let _ = writeln!(
        out,
        "## {} result (`{}`, answer body {} bytes)\n\n### Max throughput (closed loop, median of {runs} run(s))\n",
        payload.name, payload.sql, payload.answer_bytes
    );
    out.push_str(
        "| scenario | req/s | min–max | × nginx | CPU µs/req double | CPU µs/req proxy | CPU µs/req load gen | proxy RSS MiB | recording bytes/query | recording bytes/raw byte | upstream answers/completions | errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let nginx = max_rate(payload, "nginx");
    for (name, runs) in &payload.closed {
        let rps: Vec<f64> = runs.iter().map(|r| r.requests_per_sec).collect();
        let (lo, hi) = (rps.iter().copied().fold(f64::MAX, f64::min), rps.iter().copied().fold(0.0, f64::max));
        let rate = median(rps);
        let ratio = nginx.map_or("–".into(), |n| format!("{:.2}", rate / n.max(1.0)));
        let recording =
            runs.iter().filter_map(|r| r.recording_bytes_per_query).reduce(f64::max).map_or("–".into(), |_| {
                format!("{:.0}", median(runs.iter().filter_map(|r| r.recording_bytes_per_query)))
            });
        let per_raw = recording_ratio(runs).map_or("–".into(), |r| format!("{r:.3}"));
        let rss = closed_median(runs, |r| r.proxy_rss_bytes as f64);
        let _ = writeln!(
            out,
            "| {name} | {rate:.0} | {lo:.0}–{hi:.0} | {ratio} | {:.1} | {:.1} | {:.1} | {} | {recording} | {per_raw} | {:.3} | {} |",
            closed_median(runs, |r| r.upstream_cpu_us),
            closed_median(runs, |r| r.proxy_cpu_us),
            closed_median(runs, |r| r.loadgen_cpu_us),
            if rss > 0.0 { format!("{:.1}", mib(rss as u64)) } else { "–".into() },
            closed_median(runs, |r| r.hop_ratio),
            runs.iter().map(|r| r.errors).sum::<u64>(),
        );
    }
    let errors: Vec<String> = payload
        .closed
        .iter()
        .flat_map(|(n, runs)| runs.iter().filter_map(move |r| r.first_error.as_ref().map(|e| format!("{n}: {e}"))))
        .collect();
    for error in errors.iter().take(3) {
        let _ = writeln!(out, "\nFirst error seen: {error}");
    }
    let _ = writeln!(
        out,
        "\n### Latency (open loop at {:.0} req/s, from each query's intended send time)\n",
        payload.open_rate
    );
    out.push_str(
        "| scenario | achieved req/s | p50 µs | p99 µs | p99.9 µs | max µs | added p50 µs | added p99 µs | added p99.9 µs | CPU µs/req double | CPU µs/req proxy | send lag p99 µs | due with every agent busy | recording bytes/query | recording bytes/raw byte | errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let direct = open_of(payload, "direct");
    for (name, run) in &payload.open {
        let added = |f: fn(&OpenRun) -> f64| direct.map_or("–".into(), |d| format!("{:+.0}", f(run) - f(d)));
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {}{} | {} | {} | {} |",
            run.achieved_rate,
            run.p50_us,
            run.p99_us,
            run.p999_us,
            run.max_us,
            added(|r| r.p50_us),
            added(|r| r.p99_us),
            added(|r| r.p999_us),
            run.upstream_cpu_us,
            run.proxy_cpu_us,
            run.send_lag_p99_us,
            percent(run.busy_at_due),
            if run.saturated() { " (saturated)" } else { "" },
            run.recording_bytes_per_query.map_or("–".into(), |b| format!("{b:.0}")),
            run.recording_ratio().map_or("–".into(), |r| format!("{r:.3}")),
            run.errors,
        );
    }
    out.push('\n');
}

/// One row of the goals table.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    /// What the goal says.
    pub goal: String,
    /// Today's figure.
    pub today: String,
    /// Met, missed, or not measurable yet.
    pub verdict: &'static str,
}

/// A share (0 to 1) as a percentage for the tables.
fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

/// The issue's goals against today's figures. Goals whose scenarios did not run say so.
pub fn goals(report: &Report) -> Vec<Goal> {
    let mut goals = Vec::new();
    let saturated = |name: &str, run: &OpenRun| {
        format!(
            "{name}'s open loop was saturated ({} of its queries found every agent busy): its p99 is the load generator's queue",
            percent(run.busy_at_due)
        )
    };
    let payload = |name: &str| report.payloads.iter().find(|p| p.name == name);
    let full_names = ["snowgate-full-none", "snowgate-full-batch", "snowgate-full-strict"];
    let unmeasured = |goal: String, why: &str| Goal { goal, today: why.to_owned(), verdict: "not measurable yet" };
    for (payload_name, target) in [("1KB", 1.0), ("18KB", 0.7)] {
        let goal = format!("snowgate full ≥ {target:.1}× nginx max req/s, {payload_name} result");
        let Some(p) = payload(payload_name) else { continue };
        let nginx = max_rate(p, "nginx");
        let fulls: Vec<(&str, f64)> = full_names.iter().filter_map(|n| max_rate(p, n).map(|r| (*n, r))).collect();
        match (nginx, fulls.is_empty()) {
            (Some(n), false) => {
                for (name, rate) in fulls {
                    let ratio = rate / n.max(1.0);
                    goals.push(Goal {
                        goal: format!("{goal} ({name})"),
                        today: format!("{ratio:.2}×"),
                        verdict: verdict(ratio >= target),
                    });
                }
            }
            _ => goals.push(unmeasured(
                goal,
                "no snowgate-full scenario ran (the gateway lacks masking and durability knobs)",
            )),
        }
    }
    for p in &report.payloads {
        let goal = format!("snowgate forwarding only ≥ 1.1× nginx max req/s, {} result", p.name);
        match (max_rate(p, "snowgate-forward"), max_rate(p, "nginx")) {
            (Some(g), Some(n)) => {
                let ratio = g / n.max(1.0);
                goals.push(Goal { goal, today: format!("{ratio:.2}×"), verdict: verdict(ratio >= 1.1) });
            }
            _ => goals.push(unmeasured(goal, "nginx or snowgate-forward did not run")),
        }
    }
    for p in &report.payloads {
        let (Some(direct), Some(nginx)) = (open_of(p, "direct"), open_of(p, "nginx")) else { continue };
        let nginx_added = nginx.p99_us - direct.p99_us;
        let baseline_saturated = [("direct", direct), ("nginx", nginx)].into_iter().find(|(_, run)| run.saturated());
        for name in std::iter::once("snowgate-forward").chain(full_names) {
            let Some(run) = open_of(p, name) else { continue };
            let goal = format!("added p99 ≤ nginx's added p99 + 20 µs, {} result, {name}", p.name);
            if let Some((baseline, run)) = baseline_saturated {
                goals.push(unmeasured(goal, &saturated(baseline, run)));
                continue;
            }
            let added = run.p99_us - direct.p99_us;
            goals.push(Goal {
                goal,
                today: format!("{added:+.0} µs vs nginx {nginx_added:+.0} µs (at {:.0} req/s)", p.open_rate),
                verdict: verdict(added <= nginx_added + 20.0),
            });
        }
    }
    for p in &report.payloads {
        let off = open_of(p, "snowgate-full-unrecorded");
        let ons: Vec<(&str, &OpenRun)> = full_names.iter().filter_map(|n| open_of(p, n).map(|r| (*n, r))).collect();
        match (off, ons.is_empty()) {
            (Some(off), false) if off.saturated() => {
                for (name, _) in ons {
                    goals.push(unmeasured(
                        format!("p99 with recording ≤ 1.1× without, {} result, {name}", p.name),
                        &saturated("snowgate-full-unrecorded", off),
                    ));
                }
            }
            (Some(off), false) => {
                for (name, on) in ons {
                    let ratio = on.p99_us / off.p99_us.max(1.0);
                    goals.push(Goal {
                        goal: format!("p99 with recording ≤ 1.1× without, {} result, {name}", p.name),
                        today: format!("{ratio:.2}× ({:.0} µs vs {:.0} µs unrecorded)", on.p99_us, off.p99_us),
                        verdict: verdict(ratio <= 1.1),
                    });
                }
            }
            _ => goals.push(unmeasured(
                format!("p99 with recording ≤ 1.1× without, {} result", p.name),
                "needs a snowgate-full scenario and snowgate-full-unrecorded (perf/run.sh builds it)",
            )),
        }
    }
    for p in &report.payloads {
        for (name, runs) in &p.closed {
            if name.ends_with("-unrecorded") {
                continue;
            }
            let Some(ratio) = recording_ratio(runs) else { continue };
            goals.push(Goal {
                goal: format!("recording ≤ 0.25 bytes on disk per raw byte, {} result, {name}", p.name),
                today: format!("{ratio:.3}"),
                verdict: verdict(ratio <= 0.25),
            });
        }
        // The open loop's batches are one linger window's frames: compression's worse case.
        for (name, run) in p.open.iter().filter(|(name, _)| !name.ends_with("-unrecorded")) {
            let Some(ratio) = run.recording_ratio() else { continue };
            goals.push(Goal {
                goal: format!("recording ≤ 0.25 bytes on disk per raw byte, {} result, {name}, open loop", p.name),
                today: format!("{ratio:.3}"),
                verdict: verdict(ratio <= 0.25),
            });
        }
    }
    match report.idle_memory.iter().find(|m| m.what == "snowgate, TLS") {
        Some(m) => {
            let kib = m.bytes_per_connection() / 1024.0;
            goals.push(Goal {
                goal: "≤ 32 KiB per idle TLS connection".into(),
                today: format!("{kib:.1} KiB ({} connections)", m.connections),
                verdict: verdict(kib <= 32.0),
            });
        }
        None => goals.push(unmeasured("≤ 32 KiB per idle TLS connection".into(), "not measured in this run")),
    }
    goals
}

/// The markdown report.
pub fn markdown(report: &Report, runs: usize, svg_name: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# snowgate perf comparison, {}\n", report.date);
    let _ = writeln!(
        out,
        "Commit `{}`. Command: `{}`. Load average before: {}; after: {}. Took {:.0} s.\n\n{}.\n",
        report.commit,
        report.command,
        report.load_before,
        report.load_after,
        report.elapsed.as_secs_f64(),
        report.settings
    );
    let _ = writeln!(out, "![max req/s and open-loop p99 per scenario]({svg_name})\n");
    for payload in &report.payloads {
        payload_section(&mut out, payload, runs);
    }
    out.push_str("## Goals\n\n| goal | today | verdict |\n|---|---|---|\n");
    for goal in goals(report) {
        let _ = writeln!(out, "| {} | {} | {} |", goal.goal, goal.today, goal.verdict);
    }
    if !report.idle_memory.is_empty() {
        out.push_str("\n## Memory per idle connection (RSS delta of the proxy)\n\n| proxy | connections | RSS before MiB | RSS with them MiB | per connection KiB |\n|---|---|---|---|---|\n");
        for m in &report.idle_memory {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {:.1} | {:.1} |",
                m.what,
                m.connections,
                mib(m.rss_before_bytes),
                mib(m.rss_with_bytes),
                m.bytes_per_connection() / 1024.0
            );
        }
    }
    if !report.cores.is_empty() {
        out.push_str("\n## Throughput by cores (closed loop; one core = CPU 1 alone, two = both CPUs shared with the load generator and the double)\n\n| proxy | req/s | proxy CPU µs/req |\n|---|---|---|\n");
        for c in &report.cores {
            let _ = writeln!(out, "| {} | {:.0} | {:.1} |", c.what, c.requests_per_sec, c.proxy_cpu_us);
        }
    }
    if !report.skipped.is_empty() {
        out.push_str("\n## Skipped scenarios\n\n| scenario | why |\n|---|---|\n");
        for (name, why) in &report.skipped {
            let _ = writeln!(out, "| {name} | {} |", why.replace('|', "\\|"));
        }
    }
    out
}

const COLORS: [&str; 6] = ["#8d99ae", "#2a9d8f", "#e76f51", "#f4a261", "#e9c46a", "#264653"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A "nice" axis maximum at or above `value`.
fn nice_max(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|m| *m >= value).unwrap_or(10.0 * magnitude)
}

/// One grouped bar panel: groups along x (payloads), one bar per series (scenario).
fn panel(
    out: &mut String,
    x0: f64,
    title: &str,
    unit: &str,
    groups: &[String],
    series: &[&str],
    value: &dyn Fn(usize, usize) -> Option<f64>,
) {
    let (width, top, bottom) = (440.0, 50.0, 360.0);
    let max = (0..groups.len()).flat_map(|g| (0..series.len()).filter_map(move |s| value(g, s))).fold(0.0, f64::max);
    let axis_max = nice_max(max);
    let _ = writeln!(out, r#"<text x="{:.0}" y="30" font-size="15" font-weight="bold">{}</text>"#, x0, escape(title));
    for tick in 0..=4 {
        let v = axis_max * f64::from(tick) / 4.0;
        let y = bottom - (bottom - top) * f64::from(tick) / 4.0;
        let _ = writeln!(out, r##"<line x1="{x0:.0}" y1="{y:.1}" x2="{:.0}" y2="{y:.1}" stroke="#ddd"/>"##, x0 + width);
        let _ = writeln!(
            out,
            r#"<text x="{:.0}" y="{:.1}" font-size="11" text-anchor="end">{v:.0}</text>"#,
            x0 - 4.0,
            y + 4.0
        );
    }
    let _ = writeln!(out, r#"<text x="{:.0}" y="{:.0}" font-size="11">{}</text>"#, x0, top - 8.0, escape(unit));
    let group_width = width / groups.len().max(1) as f64;
    let bar_width = (group_width * 0.8 / series.len().max(1) as f64).min(40.0);
    for (g, group) in groups.iter().enumerate() {
        let gx = x0 + g as f64 * group_width + group_width * 0.1;
        for s in 0..series.len() {
            let Some(v) = value(g, s) else { continue };
            let h = (bottom - top) * v / axis_max;
            let x = gx + s as f64 * bar_width;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{} {}: {v:.0}</title></rect>"#,
                bottom - h,
                bar_width - 2.0,
                COLORS[s % COLORS.len()],
                escape(series[s]),
                escape(group)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.0}" font-size="12" text-anchor="middle">{}</text>"#,
            gx + group_width * 0.4,
            bottom + 16.0,
            escape(group)
        );
    }
    let _ = writeln!(
        out,
        r##"<line x1="{x0:.0}" y1="{bottom:.0}" x2="{:.0}" y2="{bottom:.0}" stroke="#333"/>"##,
        x0 + width
    );
}

/// The SVG plot: max req/s (closed loop) and p99 latency (open loop) per scenario and payload.
pub fn svg(report: &Report) -> String {
    let groups: Vec<String> = report.payloads.iter().map(|p| p.name.clone()).collect();
    let mut series: Vec<&str> = Vec::new();
    for p in &report.payloads {
        for (name, _) in &p.closed {
            if !series.contains(name) {
                series.push(name);
            }
        }
    }
    let mut out = String::from(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="1020" height="440" font-family="sans-serif">
<rect width="1020" height="440" fill="white"/>
"#,
    );
    let rate = |g: usize, s: usize| max_rate(&report.payloads[g], series[s]);
    panel(&mut out, 60.0, "Max throughput (closed loop)", "req/s", &groups, &series, &rate);
    let p99 = |g: usize, s: usize| open_of(&report.payloads[g], series[s]).map(|r| r.p99_us);
    panel(&mut out, 560.0, "p99 latency, open loop (same rate per payload)", "µs", &groups, &series, &p99);
    for (s, name) in series.iter().enumerate() {
        let x = 60.0 + s as f64 * 160.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x:.0}" y="405" width="12" height="12" fill="{}"/><text x="{:.0}" y="416" font-size="12">{}</text>"#,
            COLORS[s % COLORS.len()],
            x + 16.0,
            escape(name)
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="60" y="436" font-size="10" fill="#555">{} · commit {} · load {} → {}</text>"##,
        report.date, report.commit, report.load_before, report.load_after
    );
    out.push_str("</svg>\n");
    out
}

/// Writes `<dir>/<date>-<name>.md` and `.svg`; returns the markdown's path.
pub fn write(report: &Report, runs: usize, dir: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let stem = format!("{}-{name}", report.date);
    let svg_name = format!("{stem}.svg");
    std::fs::write(dir.join(&svg_name), svg(report))?;
    let md = dir.join(format!("{stem}.md"));
    std::fs::write(&md, markdown(report, runs, &svg_name))?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{ClosedRun, IdleMemory, OpenRun, PayloadReport};

    fn closed(rate: f64, recording: Option<f64>) -> Vec<ClosedRun> {
        vec![ClosedRun {
            requests_per_sec: rate,
            recording_bytes_per_query: recording,
            raw_bytes_per_query: 1000.0,
            ..Default::default()
        }]
    }

    fn open(p99: f64) -> OpenRun {
        OpenRun { p99_us: p99, ..Default::default() }
    }

    fn sample() -> Report {
        Report {
            date: "2026-11-22".into(),
            payloads: vec![PayloadReport {
                name: "1KB".into(),
                sql: "select * from small".into(),
                answer_bytes: 1500,
                closed: vec![
                    ("direct", closed(70_000.0, None)),
                    ("nginx", closed(50_000.0, None)),
                    ("snowgate-forward", closed(40_000.0, Some(300.0))),
                ],
                open_rate: 25_000.0,
                open: vec![("direct", open(100.0)), ("nginx", open(130.0)), ("snowgate-forward", open(170.0))],
            }],
            idle_memory: vec![IdleMemory {
                what: "snowgate, TLS".into(),
                connections: 10,
                rss_before_bytes: 0,
                rss_with_bytes: 10 * 40 * 1024,
            }],
            ..Report::default()
        }
    }

    #[test]
    fn dates_are_civil() {
        let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        assert_eq!(utc_date(at(0)), "1970-01-01");
        assert_eq!(utc_date(at(951_782_400)), "2000-02-29");
        assert_eq!(utc_date(at(1_795_305_600)), "2026-11-22");
    }

    #[test]
    fn goals_compare_against_nginx() {
        let goals = goals(&sample());
        let find = |prefix: &str| goals.iter().find(|g| g.goal.starts_with(prefix)).unwrap().clone();
        let forward = find("snowgate forwarding only");
        assert_eq!((forward.today.as_str(), forward.verdict), ("0.80×", "missed"));
        let added = find("added p99");
        assert_eq!(added.today, "+70 µs vs nginx +30 µs (at 25000 req/s)");
        assert_eq!(added.verdict, "missed");
        assert_eq!(find("snowgate full ≥ 1.0×").verdict, "not measurable yet");
        let recording = find("recording ≤ 0.25");
        assert!(recording.today.starts_with("0.300"), "{}", recording.today);
        assert_eq!(find("≤ 32 KiB").verdict, "missed");
        assert_eq!(find("p99 with recording").verdict, "not measurable yet", "no unrecorded run in the sample");
    }

    #[test]
    fn recording_cost_compares_against_the_unrecorded_build() {
        let mut report = sample();
        report.payloads[0]
            .open
            .extend([("snowgate-full-unrecorded", open(200.0)), ("snowgate-full-batch", open(260.0))]);
        let goals = goals(&report);
        let cost = goals.iter().find(|g| g.goal.starts_with("p99 with recording")).unwrap();
        assert_eq!(cost.goal, "p99 with recording ≤ 1.1× without, 1KB result, snowgate-full-batch");
        assert_eq!((cost.today.as_str(), cost.verdict), ("1.30× (260 µs vs 200 µs unrecorded)", "missed"));
    }

    #[test]
    fn a_saturated_baseline_gives_no_p99_verdict() {
        let mut report = sample();
        let saturated = |p99: f64| OpenRun { busy_at_due: 0.3, ..open(p99) };
        report.payloads[0]
            .open
            .extend([("snowgate-full-unrecorded", saturated(25_000.0)), ("snowgate-full-none", saturated(37_000.0))]);
        report.payloads[0].open[1].1.busy_at_due = 0.02;
        let goals = goals(&report);
        let find = |prefix: &str| goals.iter().find(|g| g.goal.starts_with(prefix)).unwrap().clone();
        let cost = find("p99 with recording");
        assert_eq!(cost.goal, "p99 with recording ≤ 1.1× without, 1KB result, snowgate-full-none");
        assert_eq!(cost.verdict, "not measurable yet");
        assert!(
            cost.today.starts_with("snowgate-full-unrecorded's open loop was saturated (30.0% of"),
            "{}",
            cost.today
        );
        let added = find("added p99");
        assert_eq!(added.verdict, "not measurable yet");
        assert!(added.today.starts_with("nginx's open loop was saturated (2.0% of"), "{}", added.today);
    }

    #[test]
    fn a_saturated_scenario_against_a_steady_baseline_is_a_miss() {
        let mut report = sample();
        report.payloads[0].open.extend([
            ("snowgate-full-unrecorded", OpenRun { busy_at_due: 0.01, ..open(200.0) }),
            ("snowgate-full-none", OpenRun { busy_at_due: 0.5, ..open(30_000.0) }),
        ]);
        let goals = goals(&report);
        let cost = goals.iter().find(|g| g.goal.starts_with("p99 with recording")).unwrap();
        assert_eq!((cost.today.as_str(), cost.verdict), ("150.00× (30000 µs vs 200 µs unrecorded)", "missed"));
    }

    #[test]
    fn the_open_loops_recording_ratio_is_a_goal_of_its_own() {
        let mut report = sample();
        let forward = &mut report.payloads[0].open[2].1;
        (forward.recording_bytes_per_query, forward.raw_bytes_per_query) = (Some(400.0), 1250.0);
        // The unrecorded build has an empty recordings directory: not a ratio of anything.
        let unrecorded = OpenRun { recording_bytes_per_query: Some(0.0), raw_bytes_per_query: 1250.0, ..open(200.0) };
        report.payloads[0].open.push(("snowgate-full-unrecorded", unrecorded));
        let goals = goals(&report);
        let ratios: Vec<(&str, &str, &str)> = goals
            .iter()
            .filter(|g| g.goal.starts_with("recording ≤ 0.25"))
            .map(|g| (g.goal.as_str(), g.today.as_str(), g.verdict))
            .collect();
        assert_eq!(
            ratios,
            [
                ("recording ≤ 0.25 bytes on disk per raw byte, 1KB result, snowgate-forward", "0.300", "missed"),
                (
                    "recording ≤ 0.25 bytes on disk per raw byte, 1KB result, snowgate-forward, open loop",
                    "0.320",
                    "missed"
                ),
            ]
        );
        let md = markdown(&report, 1, "x.svg");
        assert!(md.contains("| 400 | 0.320 | 0 |"), "the open-loop row shows bytes a query and the ratio: {md}");
        assert!(md.contains("| – | – | 0 |"), "scenarios without a recording show dashes: {md}");
    }

    #[test]
    fn markdown_and_svg_name_every_scenario() {
        let report = sample();
        let md = markdown(&report, 1, "x.svg");
        assert!(md.contains("| nginx | 50000 | 50000–50000 | 1.00 |"), "{md}");
        assert!(md.contains("| snowgate-forward | 0 | 0 | 170 |"), "{md}");
        assert!(md.contains("| +0 | +70 | +0 |"), "added p50, p99, p99.9 of snowgate vs direct: {md}");
        let svg = svg(&report);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 1 + 3 + 3 + 3, "background, 3 rate bars, 3 p99 bars, 3 legend keys");
    }

    #[test]
    fn axis_maxima_are_round() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(73_000.0), 100_000.0);
        assert_eq!(nice_max(180.0), 200.0);
        assert_eq!(nice_max(2_100.0), 2_500.0);
    }
}
