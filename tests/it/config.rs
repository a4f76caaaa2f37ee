//! The `snowgate` binary's configuration check as operators run it: `--check-config` accepts a
//! good file, refuses a broken one with a non-zero exit and an error that names the key at
//! fault, and `--help` documents every flag with its environment variable.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::support::*;

/// A directory holding a configuration file and the files it names.
struct ConfigDir {
    dir: tempfile::TempDir,
}

/// The 64-hex-digit sealing key the good configuration uses.
const SEAL_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

impl ConfigDir {
    fn new() -> ConfigDir {
        let dir = tempfile::tempdir().unwrap();
        write_private(&dir.path().join("seal.key"), SEAL_KEY);
        write_private(&dir.path().join("recording.key"), RECORDING_KEY_HEX);
        write_private(&dir.path().join("upstream.pem"), snowgate_perf::test_keys::TEST_PRIVATE_KEY_PEM);
        ConfigDir { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A configuration `--check-config` accepts, its paths relative to the directory.
    fn good(&self) -> String {
        format!(
            r#"[listen]
address = "127.0.0.1:0"
plaintext = true

[upstream]
account = "TESTACCT"
url = "http://127.0.0.1:9"
user = "SNOWGATE"
private_key_file = "upstream.pem"

[identity]
issuer = "{ISSUER}"
audience = ["{AUDIENCE}"]
jwks_file = "{jwks}"
roles = [{{ group = "analysts", role = "ANALYST" }}]

[tokens]
seal_key_file = "seal.key"

[limits]
header_timeout_ms = 1000

[recording]
directory = "recordings"
key_file = "recording.key"

[policy]
default = {{ action = "deny", message = "not allowed" }}

[[policy.rules]]
name = "reads"
groups = ["*"]
kinds = ["select"]
action = "allow"
masking_profile = "standard"

[masking.profiles.standard.detectors]
jwt = false
"#,
            jwks = key_path("jwks.json").display()
        )
    }

    /// Writes `config` and runs `snowgate --check-config` on it, with a clean environment.
    fn check(&self, config: &str) -> Output {
        let path = self.path("snowgate.toml");
        std::fs::write(&path, config).unwrap();
        run_snowgate(&["--config", path.to_str().unwrap(), "--check-config"])
    }
}

/// Runs the binary with no environment, so that no `SNOWGATE_*` variable of the test's own
/// environment changes what it does.
fn run_snowgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snowgate")).args(args).env_clear().output().unwrap()
}

/// `text` with the line `from` replaced by `to` (which may be several lines, or none).
fn replace_line(text: &str, from: &str, to: &str) -> String {
    assert!(text.lines().any(|line| line == from), "no line {from:?} in the configuration");
    text.lines().map(|line| if line == from { to } else { line }).collect::<Vec<_>>().join("\n")
}

/// `text` with `extra` inserted after the line `after`.
fn insert_after(text: &str, after: &str, extra: &str) -> String {
    replace_line(text, after, &format!("{after}\n{extra}"))
}

/// `text` without the section `[name]` (up to the next section).
fn without_section(text: &str, name: &str) -> String {
    let start = text.find(&format!("[{name}]")).unwrap();
    let end = text[start + 1..].find("\n[").map_or(text.len(), |i| start + 1 + i + 1);
    format!("{}{}", &text[..start], &text[end..])
}

/// Why `output` is not a refusal naming every one of `needles`, if it is not.
fn refusal_problem(output: &Output, case: &str, needles: &[&str]) -> Option<String> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() || String::from_utf8_lossy(&output.stdout).contains("configuration ok") {
        return Some(format!("{case}: --check-config accepted it ({:?}); stderr: {stderr}", output.status));
    }
    let missing: Vec<&&str> = needles.iter().filter(|needle| !stderr.contains(**needle)).collect();
    (!missing.is_empty()).then(|| format!("{case}: stderr does not name {missing:?}: {}", stderr.trim_end()))
}

#[track_caller]
fn assert_refused_naming(output: &Output, case: &str, needles: &[&str]) {
    if let Some(problem) = refusal_problem(output, case, needles) {
        panic!("{problem}");
    }
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = ConfigDir::new();
    let output = dir.check(&dir.good());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("configuration ok"), "{stdout}");
    assert!(stdout.contains(dir.path("snowgate.toml").to_str().unwrap()), "{stdout}");
    // Checking binds nothing and starts nothing: the recording directory is not even created.
    assert!(!dir.path("recordings").exists());
}

/// A path that names something other than a regular file (a FIFO, whose open would wait for a
/// writer; a device, read forever) is refused at once, naming the key.
#[test]
fn check_config_refuses_a_key_that_is_not_a_regular_file() {
    let dir = ConfigDir::new();
    let fifo = dir.path("seal.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let jwks_line = format!("jwks_file = \"{}\"", key_path("jwks.json").display());
    let cases = [
        ("a FIFO", r#"seal_key_file = "seal.key""#, "seal_key_file", fifo.to_str().unwrap(), "tokens.seal_key_file"),
        ("a device", r#"seal_key_file = "seal.key""#, "seal_key_file", "/dev/zero", "tokens.seal_key_file"),
        ("a directory", r#"seal_key_file = "seal.key""#, "seal_key_file", "/", "tokens.seal_key_file"),
        ("a FIFO of keys", jwks_line.as_str(), "jwks_file", fifo.to_str().unwrap(), "seal.fifo"),
    ];
    for (name, line, field, path, named) in cases {
        let config = replace_line(&dir.good(), line, &format!("{field} = \"{path}\""));
        let config_path = dir.path("snowgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_snowgate"))
            .args(["--config", config_path.to_str().unwrap(), "--check-config"])
            .env_clear()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{name}: the check did not end");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let output = child.wait_with_output().unwrap();
        assert_refused_naming(&output, name, &[named, "not a regular file"]);
    }
}

/// The start creates the recording directory and writes in it: a path that cannot be a
/// directory is refused by the check, as the start would refuse it.
#[test]
fn check_config_refuses_a_recording_directory_that_cannot_be_one() {
    let dir = ConfigDir::new();
    std::fs::write(dir.path("recordings"), "a file where the recordings go").unwrap();
    assert_refused_naming(&dir.check(&dir.good()), "a file", &["recording directory", "recordings", "not a directory"]);
    let nested = replace_line(&dir.good(), r#"directory = "recordings""#, r#"directory = "recordings/live""#);
    assert_refused_naming(&dir.check(&nested), "under a file", &["recordings/live", "recordings is not a directory"]);
    std::fs::remove_file(dir.path("recordings")).unwrap();
    // Not there yet, under a directory: the start creates it.
    let output = dir.check(&nested);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!dir.path("recordings").exists(), "the check must not create the directory");
}

#[test]
fn check_config_refuses_broken_files_naming_the_key() {
    let dir = ConfigDir::new();
    let good = dir.good();
    let jwks_line = format!("jwks_file = \"{}\"", key_path("jwks.json").display());
    write_private(&dir.path("short.key"), &SEAL_KEY[..62]);
    write_private(&dir.path("not-hex.key"), "zz".repeat(32));
    write_private(&dir.path("not-a-key.pem"), "-----BEGIN NOTHING-----\nAAAA\n-----END NOTHING-----\n");
    std::fs::write(dir.path("empty-jwks.json"), r#"{"keys": []}"#).unwrap();
    let missing_key = dir.path("no-such-upstream.pem");
    let config_path = dir.path("snowgate.toml");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("an unknown key", insert_after(&good, "user = \"SNOWGATE\"", "colour = \"blue\""), vec!["colour"]),
        ("an unknown section", format!("{good}\n[policy]\nmode = \"strict\"\n"), vec!["policy"]),
        ("a missing [identity]", without_section(&good, "identity"), vec!["identity"]),
        (
            "a bad upstream.url",
            replace_line(&good, "url = \"http://127.0.0.1:9\"", "url = \"ftp://snowflake.example\""),
            vec!["upstream.url"],
        ),
        (
            "an upstream.url in clear to another machine",
            replace_line(&good, "url = \"http://127.0.0.1:9\"", "url = \"http://snowflake.example\""),
            vec!["upstream.url", "https://"],
        ),
        (
            "an upstream.url with a path",
            replace_line(&good, "url = \"http://127.0.0.1:9\"", "url = \"https://acct.example.com/api\""),
            vec!["upstream.url"],
        ),
        (
            "a seal key of the wrong length",
            replace_line(&good, "seal_key_file = \"seal.key\"", "seal_key_file = \"short.key\""),
            vec!["tokens.seal_key_file", "64 hex digits"],
        ),
        (
            "a seal key that is not hex",
            replace_line(&good, "seal_key_file = \"seal.key\"", "seal_key_file = \"not-hex.key\""),
            vec!["tokens.seal_key_file"],
        ),
        (
            "a seal key variable that is not set",
            replace_line(&good, "seal_key_file = \"seal.key\"", "seal_key_env = \"SNOWGATE_TEST_NO_SUCH_VAR\""),
            vec!["tokens.seal_key_env", "SNOWGATE_TEST_NO_SUCH_VAR"],
        ),
        ("no recording key", replace_line(&good, "key_file = \"recording.key\"", ""), vec!["recording.key_file"]),
        (
            "the recording key reusing the sealing key",
            replace_line(&good, "key_file = \"recording.key\"", "key_file = \"seal.key\""),
            vec!["recording.key_file", "differ"],
        ),
        (
            "a rule naming a masking profile that does not exist",
            replace_line(&good, "masking_profile = \"standard\"", "masking_profile = \"strict\""),
            vec!["policy", "strict"],
        ),
        (
            "a rule with an unknown kind",
            replace_line(&good, "kinds = [\"select\"]", "kinds = [\"selekt\"]"),
            vec!["policy", "selekt"],
        ),
        ("an unknown detector", replace_line(&good, "jwt = false", "jwtt = false"), vec!["jwtt"]),
        (
            "an admin listener without admin groups",
            format!("{good}\n[approvals]\nadmin_address = \"127.0.0.1:0\"\n"),
            vec!["approvals.admin_groups"],
        ),
        (
            "an admin listener off the loopback network",
            format!("{good}\n[approvals]\nadmin_address = \"0.0.0.0:8444\"\nadmin_groups = [\"dba\"]\n"),
            vec!["approvals.admin_address", "loopback"],
        ),
        (
            "a reviewer audience that is also the agents'",
            format!("{good}\n[approvals]\nreviewer_audience = [\"{AUDIENCE}\"]\n"),
            vec!["approvals.reviewer_audience"],
        ),
        (
            "both jwks_file and jwks_url",
            insert_after(&good, &jwks_line, "jwks_url = \"https://idp.example.com/jwks.json\""),
            vec!["identity.jwks_file", "jwks_url"],
        ),
        ("neither jwks_file nor jwks_url", replace_line(&good, &jwks_line, ""), vec!["identity.jwks_file"]),
        (
            "a jwks_url that is not http(s)",
            replace_line(&good, &jwks_line, "jwks_url = \"file:///etc/jwks.json\""),
            vec!["identity.jwks_url"],
        ),
        (
            "a nonexistent private key file",
            replace_line(
                &good,
                "private_key_file = \"upstream.pem\"",
                &format!("private_key_file = \"{}\"", missing_key.display()),
            ),
            vec!["upstream.private_key_file", missing_key.to_str().unwrap()],
        ),
        (
            "a private key file that holds no key",
            replace_line(&good, "private_key_file = \"upstream.pem\"", "private_key_file = \"not-a-key.pem\""),
            vec!["upstream.private_key_file"],
        ),
        (
            "two credentials",
            insert_after(&good, "private_key_file = \"upstream.pem\"", "password_env = \"SNOWFLAKE_PASSWORD\""),
            vec!["upstream.private_key_file", "exactly one"],
        ),
        (
            "an HMAC algorithm",
            insert_after(&good, &jwks_line, "algorithms = [\"HS256\"]"),
            vec!["identity.algorithms", "HS256"],
        ),
        (
            "neither TLS nor plaintext",
            replace_line(&good, "plaintext = true", ""),
            vec!["listen.tls_cert_file", "plaintext"],
        ),
        (
            "an empty issuer",
            replace_line(&good, &format!("issuer = \"{ISSUER}\""), "issuer = \"\""),
            vec!["identity.issuer"],
        ),
        (
            "no roles",
            replace_line(&good, "roles = [{ group = \"analysts\", role = \"ANALYST\" }]", ""),
            vec!["identity.roles"],
        ),
        (
            "a zero header timeout",
            replace_line(&good, "header_timeout_ms = 1000", "header_timeout_ms = 0"),
            vec!["limits.header_timeout_ms"],
        ),
        (
            "a zero idle timeout",
            replace_line(&good, "header_timeout_ms = 1000", "idle_timeout_ms = 0"),
            vec!["limits.idle_timeout_ms"],
        ),
        (
            "a zero body timeout",
            replace_line(&good, "header_timeout_ms = 1000", "body_timeout_ms = 0"),
            vec!["limits.body_timeout_ms"],
        ),
        (
            "a zero upstream response timeout",
            insert_after(&good, "private_key_file = \"upstream.pem\"", "response_timeout_ms = 0"),
            vec!["upstream.response_timeout_ms"],
        ),
        (
            "plaintext beyond loopback",
            replace_line(&good, "address = \"127.0.0.1:0\"", "address = \"0.0.0.0:0\""),
            vec!["listen.plaintext", "loopback"],
        ),
        (
            "an idle timeout that would overflow deadlines",
            replace_line(&good, "header_timeout_ms = 1000", "idle_timeout_ms = 18446744073709551615"),
            vec!["limits.idle_timeout_ms", "3600000"],
        ),
        (
            "an upstream connect timeout over an hour",
            insert_after(&good, "private_key_file = \"upstream.pem\"", "connect_timeout_ms = 3600001"),
            vec!["upstream.connect_timeout_ms"],
        ),
        (
            "a day of clock skew for tokens",
            insert_after(&good, &jwks_line, "leeway_secs = 86400"),
            vec!["identity.leeway_secs", "300"],
        ),
        (
            "chunk URLs living a year",
            replace_line(&good, "header_timeout_ms = 1000", "chunk_url_ttl_secs = 31536000"),
            vec!["limits.chunk_url_ttl_secs"],
        ),
        (
            "a zero JWKS refetch interval",
            insert_after(&good, &jwks_line, "refetch_interval_min_secs = 0"),
            vec!["identity.refetch_interval_min_secs"],
        ),
        (
            "a JWKS cache shorter than the refetch interval",
            insert_after(&good, &jwks_line, "refetch_interval_min_secs = 60\ncache_ttl_secs = 30"),
            vec!["identity.cache_ttl_secs"],
        ),
        (
            "a nonexistent JWKS file",
            replace_line(&good, &jwks_line, "jwks_file = \"no-such-jwks.json\""),
            vec!["identity.jwks_file", "no-such-jwks.json"],
        ),
        (
            "a JWKS file without usable keys",
            replace_line(&good, &jwks_line, "jwks_file = \"empty-jwks.json\""),
            vec!["identity.jwks_file", "empty-jwks.json"],
        ),
        (
            "TLS files that hold no certificate or key",
            replace_line(
                &good,
                "plaintext = true",
                "tls_cert_file = \"not-a-key.pem\"\ntls_key_file = \"not-a-key.pem\"",
            ),
            vec!["TLS certificate file"],
        ),
        ("not TOML", "[listen\naddress = ".to_owned(), vec![config_path.to_str().unwrap()]),
    ];
    let problems: Vec<String> =
        cases.iter().filter_map(|(case, config, needles)| refusal_problem(&dir.check(config), case, needles)).collect();
    assert!(problems.is_empty(), "{} of {} cases failed:\n{}", problems.len(), cases.len(), problems.join("\n"));
}

#[test]
fn check_config_refuses_out_of_range_flags_naming_the_flag() {
    let dir = ConfigDir::new();
    let path = dir.path("snowgate.toml");
    std::fs::write(&path, dir.good()).unwrap();
    // Each of these once passed the check and then aborted the start (an allocation per core,
    // a ring the kernel refuses, a deadline that overflows, core ids past a u16), or named
    // another flag.
    let cases = [
        ("--upstream-pool-size", "1000000000000"),
        ("--read-buffer-bytes", "1099511627776"),
        ("--read-buffer-bytes", "512"),
        ("--uring-entries", "65536"),
        ("--drain-timeout-secs", "18446744073709551615"),
        ("--cores", "65536"),
        ("--max-connections", "0"),
        ("--classifier-threads", "1000000000000"),
        ("--recording-segment-mib", "0"),
    ];
    let problems: Vec<String> = cases
        .iter()
        .filter_map(|(flag, value)| {
            let output = run_snowgate(&["--config", path.to_str().unwrap(), flag, value, "--check-config"]);
            refusal_problem(&output, &format!("{flag} {value}"), &[flag])
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The largest values allowed pass.
    let output = run_snowgate(&[
        "--config",
        path.to_str().unwrap(),
        "--cores=1024",
        "--uring-entries=32768",
        "--read-buffer-bytes=67108864",
        "--upstream-pool-size=65536",
        "--drain-timeout-secs=86400",
        "--recording-segment-mib=4096",
        "--check-config",
    ]);
    assert!(output.status.success(), "{output:?}");
}

#[cfg(unix)]
#[test]
fn check_config_refuses_a_key_file_others_may_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = ConfigDir::new();
    let seal_key = dir.path("seal.key");
    std::fs::set_permissions(&seal_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = dir.check(&dir.good());
    assert_refused_naming(
        &output,
        "a seal key of mode 0644",
        &["tokens.seal_key_file", seal_key.to_str().unwrap(), "0644"],
    );
}

#[cfg(unix)]
#[test]
fn a_key_variable_that_is_not_utf8_is_not_called_unset() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = ConfigDir::new();
    let path = dir.path("snowgate.toml");
    let config = replace_line(&dir.good(), "seal_key_file = \"seal.key\"", "seal_key_env = \"SNOWGATE_TEST_SEAL_KEY\"");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_snowgate"))
        .env_clear()
        .env("SNOWGATE_TEST_SEAL_KEY", std::ffi::OsStr::from_bytes(b"\xff\xfe"))
        .args(["--config", path.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert_refused_naming(&output, "a non-UTF-8 seal key variable", &["tokens.seal_key_env", "not valid UTF-8"]);
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = ConfigDir::new();
    let path = dir.path("absent.toml");
    let output = run_snowgate(&["--config", path.to_str().unwrap(), "--check-config"]);
    assert_refused_naming(&output, "a missing file", &[path.to_str().unwrap()]);
    let output = run_snowgate(&["--check-config"]);
    assert_refused_naming(&output, "no --config", &["--config"]);
}

/// The lines of `--help` that document `flag`: from its line up to the next option's.
fn help_entry(help: &str, flag: &str) -> String {
    let is_option = |line: &str| line.starts_with("  ") && line.trim_start().starts_with('-');
    let lines: Vec<&str> = help.lines().collect();
    let start = lines
        .iter()
        .position(|line| is_option(line) && line.split([' ', ',']).any(|word| word == flag))
        .unwrap_or_else(|| panic!("--help does not document {flag}: {help}"));
    let end = lines[start + 1..].iter().position(|line| is_option(line)).map_or(lines.len(), |i| start + 1 + i);
    lines[start..end].join("\n")
}

#[test]
fn help_documents_every_flag_with_its_environment_variable() {
    let output = run_snowgate(&["--help"]);
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    let flags = [
        ("--config", "SNOWGATE_CONFIG"),
        ("--cores", "SNOWGATE_CORES"),
        ("--pin-cpus", "SNOWGATE_PIN_CPUS"),
        ("--uring-entries", "SNOWGATE_URING_ENTRIES"),
        ("--read-buffer-bytes", "SNOWGATE_READ_BUFFER_BYTES"),
        ("--upstream-pool-size", "SNOWGATE_UPSTREAM_POOL_SIZE"),
        ("--max-connections", "SNOWGATE_MAX_CONNECTIONS"),
        ("--drain-timeout-secs", "SNOWGATE_DRAIN_TIMEOUT_SECS"),
        ("--classifier-threads", "SNOWGATE_CLASSIFIER_THREADS"),
        ("--durability", "SNOWGATE_DURABILITY"),
        ("--fsync-interval-ms", "SNOWGATE_FSYNC_INTERVAL_MS"),
        ("--recording-zstd-level", "SNOWGATE_RECORDING_ZSTD_LEVEL"),
        ("--recording-queue-depth", "SNOWGATE_RECORDING_QUEUE_DEPTH"),
        ("--recording-queue-mib", "SNOWGATE_RECORDING_QUEUE_MIB"),
        ("--recording-batch-frames", "SNOWGATE_RECORDING_BATCH_FRAMES"),
        ("--recording-segment-mib", "SNOWGATE_RECORDING_SEGMENT_MIB"),
        ("--recording-segment-age-secs", "SNOWGATE_RECORDING_SEGMENT_AGE_SECS"),
        ("--recording-linger-us", "SNOWGATE_RECORDING_LINGER_US"),
        ("--log-format", "SNOWGATE_LOG_FORMAT"),
        ("--check-config", "SNOWGATE_CHECK_CONFIG"),
    ];
    for (flag, env) in flags {
        let entry = help_entry(&help, flag);
        assert!(entry.contains(&format!("[env: {env}=")), "{flag} does not name {env}: {entry}");
        // Every flag says what it does, beyond its name and variable.
        let description = entry.lines().nth(1).unwrap_or_default().trim();
        assert!(!description.is_empty() && !description.starts_with('['), "{flag} has no description: {entry}");
    }
    let documented = help.lines().filter(|line| line.trim_start().starts_with("--")).count();
    assert_eq!(documented, flags.len(), "a flag is undocumented here, or this list is stale: {help}");
}

#[test]
fn flags_are_read_from_the_environment() {
    let dir = ConfigDir::new();
    let path = dir.path("snowgate.toml");
    std::fs::write(&path, dir.good()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_snowgate"))
        .env_clear()
        .env("SNOWGATE_CONFIG", &path)
        .env("SNOWGATE_CHECK_CONFIG", "true")
        .env("SNOWGATE_CORES", "0")
        .output()
        .unwrap();
    // Zero cores is refused by the check, which shows that both variables were read.
    assert_refused_naming(&output, "SNOWGATE_CORES=0", &["--cores"]);
    let output = Command::new(env!("CARGO_BIN_EXE_snowgate"))
        .env_clear()
        .env("SNOWGATE_CONFIG", &path)
        .env("SNOWGATE_CHECK_CONFIG", "true")
        .env("SNOWGATE_CORES", "2")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration ok"), "{output:?}");
}
