//! Shared test setup: an in-process gateway on 127.0.0.1 in front of the Rust Snowflake double,
//! agent tokens signed with the committed test IdP keys, and the captured log stream.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use snowgate::config::{Config, RecordingSettings, RuntimeSettings};
use snowgate::runtime::Running;
use snowgate_perf::client::{Client, ClientResponse};
use snowgate_perf::{RunningUpstream, UpstreamConfig};

pub const ISSUER: &str = "https://idp.test.snowgate";
pub const AUDIENCE: &str = "snowgate-test";
/// The recording key test gateways seal segment footers with.
pub const RECORDING_KEY_HEX: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A committed test key.
pub fn key_path(name: &str) -> PathBuf {
    root().join("tests/fixtures/keys").join(name)
}

/// Writes a secret the gateway reads (a key, a password) readable and writable by this user
/// only (mode 0600), as the gateway requires of its key files.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).and_then(|mut file| file.write_all(contents.as_ref())).unwrap();
}

/// A copy of the committed file at `path` with mode 0600, for a gateway to read as a key file:
/// git checks files out readable by everyone, which the gateway refuses for a key. Copies live
/// in the target directory, one per file, replaced atomically so tests may ask at once.
pub fn private_copy(path: &Path) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("private-fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let relative = path.strip_prefix(root()).unwrap_or(path);
    let name = relative.to_string_lossy().replace(['/', '\\'], "_");
    let copy = dir.join(&name);
    let staging = dir.join(format!(".{name}.{}.{:?}", std::process::id(), std::thread::current().id()));
    write_private(&staging, std::fs::read(path).unwrap());
    std::fs::rename(&staging, &copy).unwrap();
    copy
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Sleeps until the unix second `exp` has passed.
pub fn wait_past(exp: u64) {
    while now_unix() <= exp {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Tests run in parallel threads on two cores. Every test gateway holds this lock shared while
/// it runs; a test that compares timings takes it exclusively (see [`exclusive_section`]) so
/// that no other test's load lands in its measurement.
static TIMING: RwLock<()> = RwLock::new(());

/// Waits until no other test gateway runs, and keeps others from starting until dropped. Start
/// gateways inside it with `GatewayOptions { exclusive: true, .. }`.
pub fn exclusive_section() -> RwLockWriteGuard<'static, ()> {
    TIMING.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Everything the gateway logged in this test binary, for secret scans.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer_buffer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("snowgate=debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer_buffer.clone()))
            .try_init();
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Signs an agent token with test IdP key `a` (kid `key-a`), with `claims` merged over a valid
/// default set.
pub fn agent_token(overrides: Value) -> String {
    let now = now_unix();
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "agent-7", "groups": ["analysts"],
        "iat": now, "nbf": now - 5, "exp": now + 600,
    });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    sign_rs256("idp-a.pem", Some("key-a"), &claims)
}

pub fn sign_rs256(key_file: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(key_path(key_file)).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// How to set up a gateway for a test.
pub struct GatewayOptions {
    pub cores: usize,
    pub credential: Credential,
    /// Replaces the `[listen]` section's body (default: `127.0.0.1:0`, plaintext).
    pub listen: Option<String>,
    /// Extra lines for the `[upstream]` section (e.g. `ca_file = "..."`).
    pub upstream_extra: String,
    /// Replaces the `jwks_file = ...` line of `[identity]` (e.g. with `jwks_url = "..."`),
    /// and may add identity settings such as `refetch_interval_min_secs`.
    pub jwks: Option<String>,
    /// Lines for the `[limits]` section.
    pub limits: String,
    /// Open downstream connections allowed per core.
    pub max_connections: usize,
    /// The caller holds [`exclusive_section`]; the gateway must not wait for the shared lock.
    pub exclusive: bool,
    /// The `[policy]`, `[masking]` and `[approvals]` tables (default: [`PERMISSIVE_POLICY`]).
    pub policy: Option<String>,
    /// How the recorders write.
    pub recording: RecordingSettings,
}

/// A policy for tests about other things: everything classified is allowed but dropping a
/// database, moving data out and changing rights; no masking.
pub const PERMISSIVE_POLICY: &str = r#"
[policy]
max_statements_per_request = 1
default = { action = "deny", message = "No snowgate rule allows this statement." }

[[policy.rules]]
name = "no dropping databases"
groups = ["*"]
kinds = ["drop", "undrop"]
object_types = ["database"]
action = "deny"
message = "Dropping databases is blocked for agents."

[[policy.rules]]
name = "no exfiltration or privilege changes"
groups = ["*"]
kinds = ["copy_into_location", "get", "put", "grant", "revoke", "use_role", "use_secondary_roles",
         "alter_session_sensitive", "execute_immediate_dynamic"]
action = "deny"
message = "This statement could move data or rights out of policy."

[[policy.rules]]
name = "the rest"
groups = ["*"]
kinds = ["*"]
action = "allow"
"#;

pub enum Credential {
    KeyPair,
    Password(String),
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            cores: 1,
            credential: Credential::KeyPair,
            listen: None,
            upstream_extra: String::new(),
            jwks: None,
            limits: String::new(),
            max_connections: 1000,
            exclusive: false,
            policy: None,
            recording: RecordingSettings::default(),
        }
    }
}

/// Writes a gateway configuration (and the keys it names) into `dir`; returns its path.
pub fn write_config(dir: &Path, upstream_url: &str, options: &GatewayOptions) -> PathBuf {
    let seal_key: String = (0..32).map(|i| format!("{:02x}", (i * 7 + 3) as u8)).collect();
    write_private(&dir.join("seal.key"), seal_key);
    write_private(&dir.join("recording.key"), RECORDING_KEY_HEX);
    let credential = match &options.credential {
        Credential::KeyPair => {
            write_private(&dir.join("upstream.pem"), snowgate_perf::test_keys::TEST_PRIVATE_KEY_PEM);
            "private_key_file = \"upstream.pem\"".to_owned()
        }
        Credential::Password(password) => {
            write_private(&dir.join("password"), password);
            "password_file = \"password\"".to_owned()
        }
    };
    let config = format!(
        r#"
[listen]
{listen}

[upstream]
account = "TESTACCT"
url = "{upstream_url}"
user = "SNOWGATE"
{credential}
{upstream_extra}

[identity]
issuer = "{ISSUER}"
audience = ["{AUDIENCE}"]
{jwks}
roles = [{{ group = "analysts", role = "ANALYST" }}, {{ group = "admins", role = "SYSADMIN" }}]

[tokens]
seal_key_file = "seal.key"

[limits]
{limits}

[recording]
directory = "recordings"
key_file = "recording.key"

{policy}
"#,
        policy = options.policy.as_deref().unwrap_or(PERMISSIVE_POLICY),
        listen = options.listen.as_deref().unwrap_or("address = \"127.0.0.1:0\"\nplaintext = true"),
        upstream_extra = options.upstream_extra,
        jwks = options.jwks.clone().unwrap_or_else(default_jwks),
        limits = options.limits,
    );
    let config_path = dir.join("snowgate.toml");
    std::fs::File::create(&config_path).unwrap().write_all(config.as_bytes()).unwrap();
    config_path
}

/// A gateway running in this process; drains when dropped.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    running: Option<Running>,
    _shared: Option<RwLockReadGuard<'static, ()>>,
}

impl TestGateway {
    pub fn start(upstream_url: &str, options: GatewayOptions) -> TestGateway {
        log_buffer();
        let shared = (!options.exclusive).then(|| TIMING.read().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let dir = tempfile::tempdir().unwrap();
        let config_path = write_config(dir.path(), upstream_url, &options);
        let runtime = RuntimeSettings {
            cores: options.cores,
            pin_cpus: false,
            uring_entries: 256,
            read_buffer_bytes: 16 * 1024,
            upstream_pool_size: 8,
            max_connections: options.max_connections,
            drain_timeout: Duration::from_secs(5),
            classifier_threads: 1,
            recording: options.recording.clone(),
        };
        let config = Config::load(&config_path, runtime).unwrap();
        let running = snowgate::runtime::start(config).unwrap();
        TestGateway { addr: running.local_addr, dir, running: Some(running), _shared: shared }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr).unwrap()
    }

    /// Drains and waits for the cores to stop (flushing the recorders).
    pub fn stop(mut self) -> tempfile::TempDir {
        self.shutdown();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    fn shutdown(&mut self) {
        if let Some(running) = self.running.take() {
            running.drain();
            running.join();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A double trusting the committed upstream test key, with a unique token prefix.
pub fn double(configure: impl FnOnce(&mut UpstreamConfig)) -> RunningUpstream {
    let mut config = UpstreamConfig {
        public_key_pem: Some(snowgate_perf::test_keys::TEST_PUBLIC_KEY_PEM.to_owned()),
        ..Default::default()
    };
    configure(&mut config);
    snowgate_perf::start(config).unwrap()
}

/// The Python driver's login body, with `token` as the OIDC token.
pub fn login_body(token: &str) -> Value {
    json!({"data": {
        "CLIENT_APP_ID": "PythonConnector", "CLIENT_APP_VERSION": "3.12.0",
        "SVN_REVISION": null, "ACCOUNT_NAME": "agentacct", "LOGIN_NAME": "agent",
        "CLIENT_ENVIRONMENT": {"APPLICATION": "PythonConnector", "OS": "Linux", "LOGIN_TIMEOUT": null},
        "AUTHENTICATOR": "OAUTH", "TOKEN": token,
        "SESSION_PARAMETERS": {"CLIENT_PREFETCH_THREADS": 4}}})
}

pub const LOGIN_TARGET: &str =
    "/session/v1/login-request?request_id=0a4f7f0e-7d2a-4a8e-9d51-3f2f0b0c6a11&roleName=ACCOUNTADMIN";

/// Logs in through the gateway and returns the answer.
pub fn login(client: &mut Client, token: &str) -> ClientResponse {
    client.post_json(LOGIN_TARGET, &[("authorization", "Snowflake Token=\"None\"")], &login_body(token), true).unwrap()
}

/// Logs in and returns the sealed session and master tokens.
pub fn login_ok(client: &mut Client) -> (String, Option<String>) {
    login_ok_as(client, "agent-7")
}

/// Logs in as the agent `sub` and returns the sealed session and master tokens.
pub fn login_ok_as(client: &mut Client, sub: &str) -> (String, Option<String>) {
    let answer = login(client, &agent_token(json!({ "sub": sub })));
    let body = answer.json().unwrap();
    assert_eq!(body["success"], true, "login failed: {body}");
    let session = body["data"]["token"].as_str().unwrap().to_owned();
    let master = body["data"]["masterToken"].as_str().map(str::to_owned);
    (session, master)
}

/// The `[identity]` key lines every test gateway has unless told otherwise.
pub fn default_jwks() -> String {
    format!("jwks_file = \"{}\"", key_path("jwks.json").display())
}

/// [`default_jwks`] with no clock skew allowed on `exp`, for tests that wait for a token to end.
pub fn jwks_without_skew() -> String {
    format!("{}\nleeway_secs = 0", default_jwks())
}

/// Renews a session the way drivers do: `token-request` with `master` as the authorization and
/// the old session token in the body. Returns the answer.
pub fn renew(client: &mut Client, master: &str, old_session: &str) -> ClientResponse {
    client
        .post_json(
            "/session/token-request?requestId=1",
            &[("authorization", &authorization(master))],
            &json!({"oldSessionToken": old_session, "requestType": "RENEW"}),
            true,
        )
        .unwrap()
}

pub fn authorization(token: &str) -> String {
    format!("Snowflake Token=\"{token}\"")
}

pub const QUERY_TARGET: &str = "/queries/v1/query-request?requestId=6d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b44";

/// The Python driver's `query-request` body for `sql`.
pub fn query_body(sql: &str) -> Value {
    json!({"sqlText": sql, "asyncExec": false, "sequenceId": 1, "querySubmissionTime": 1,
        "isInternal": false, "describeOnly": false, "parameters": {}, "queryContextDTO": {"entries": []}})
}

/// Runs `sql` with a session token and returns the answer.
pub fn query(client: &mut Client, session: &str, sql: &str) -> ClientResponse {
    client.post_json(QUERY_TARGET, &[("authorization", &authorization(session))], &query_body(sql), true).unwrap()
}

/// Asserts a driver-shaped refusal with `code`.
#[track_caller]
pub fn assert_refused(answer: &ClientResponse, code: &str) {
    assert_eq!(answer.status, 200, "refusals are HTTP 200: {answer:?}");
    let body = answer.json().unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["data"].is_object(), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

/// Every record of a recording directory, read through the library's reader.
pub fn read_records(dir: &Path) -> Vec<snowgate::record::Record> {
    let recording = snowgate::record::Recording::open(dir).unwrap();
    recording.records().map(|record| record.unwrap()).collect()
}

/// Every field and body of every record as text, to search a recording for strings.
pub fn recording_text(dir: &Path) -> String {
    let mut out = String::new();
    for record in read_records(dir) {
        out.push_str(&format!("{:?}\n", record.frame));
        if let Some(body) = record.frame.body() {
            out.push_str(&String::from_utf8_lossy(body));
            out.push('\n');
        }
    }
    out
}

impl TestGateway {
    /// The gateway's counters.
    pub fn metrics(&self) -> &snowgate::proxy::Metrics {
        &self.running.as_ref().expect("the gateway is running").gateway.metrics
    }

    /// Where the admin API listens, when configured.
    pub fn admin_addr(&self) -> SocketAddr {
        self.running.as_ref().expect("the gateway is running").admin_addr.expect("no [approvals] admin_address")
    }

    /// Starts draining, as SIGTERM does, without waiting for the cores to stop: listeners stop
    /// accepting and in-flight requests finish. [`TestGateway::stop`] then waits for the cores.
    pub fn drain(&self) {
        if let Some(running) = &self.running {
            running.drain();
        }
    }
}

/// A TCP relay on 127.0.0.1 in front of `target` that keeps a copy of every byte `target`
/// sends back (everything an agent connected through it received) and of every byte sent to
/// `target` (everything a gateway behind it sent upstream).
pub struct Relay {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    pub fn start(target: SocketAddr) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let sent_sink = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(target) else { continue };
                let (mut client_read, mut server_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let sent_sink = sent_sink.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match std::io::Read::read(&mut client_read, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                sent_sink.lock().unwrap().extend_from_slice(&buf[..n]);
                                if server_write.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = server_write.shutdown(std::net::Shutdown::Write);
                });
                let sink = sink.clone();
                let (mut server_read, mut client_write) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match std::io::Read::read(&mut server_read, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                sink.lock().unwrap().extend_from_slice(&buf[..n]);
                                if client_write.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = client_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Relay { addr, received, sent }
    }

    /// Everything sent to the target so far, lossily as text.
    pub fn sent(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned()
    }

    /// Everything received so far, lossily as text.
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

/// Every `"token"`, `"masterToken"` and `"sessionToken"` value in `text` that is not a sealed
/// token: a Snowflake token that leaked.
pub fn unsealed_tokens(text: &str) -> Vec<String> {
    let mut leaks = Vec::new();
    for field in ["\"token\":\"", "\"masterToken\":\"", "\"sessionToken\":\""] {
        for (at, _) in text.match_indices(field) {
            let value: String = text[at + field.len()..].chars().take_while(|&c| c != '"').collect();
            if !value.starts_with("sg1.") {
                leaks.push(format!("{field}{value}"));
            }
        }
    }
    leaks
}

/// One request to the admin API (`Connection: close`): the status and the JSON body.
pub fn admin_request(addr: SocketAddr, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    use std::io::Read as _;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let json = text.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    (status, json)
}

/// The `snowgate` binary run as its own process (for kill -9 and resource limits).
pub struct GatewayProcess {
    pub addr: SocketAddr,
    pub child: std::process::Child,
}

impl GatewayProcess {
    /// Starts `snowgate --config <config> --cores 1 <flags>`, under `wrapper` (e.g. `prlimit
    /// ...`) when given, and waits for it to listen.
    pub fn start(config: &Path, flags: &[&str], wrapper: &[&str]) -> GatewayProcess {
        use std::io::BufRead as _;
        let binary = env!("CARGO_BIN_EXE_snowgate");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = std::process::Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => std::process::Command::new(binary),
        };
        let mut child = command
            .arg("--config")
            .arg(config)
            .args(["--cores", "1", "--classifier-threads", "1"])
            .args(flags)
            .env("SNOWGATE_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("snowgate listening on ")
            .unwrap_or_else(|| panic!("the gateway did not start: {line:?}"))
            .parse()
            .unwrap();
        GatewayProcess { addr, child }
    }

    /// SIGKILL, and reap.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM (drain), and wait for the exit.
    pub fn terminate(mut self) {
        // The shell's built-in kill: a minimal system may have no kill binary.
        let status =
            std::process::Command::new("sh").args(["-c", &format!("kill -TERM {}", self.child.id())]).status().unwrap();
        assert!(status.success());
        assert!(self.child.wait().unwrap().success(), "the gateway did not stop cleanly");
    }
}

impl Drop for GatewayProcess {
    /// A test that failed midway leaves no gateway running (a reaped child is left alone).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The workspace's `snowgate-tools` binary (built by the same `cargo test --workspace`).
pub fn tools_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let release = exe.parent().and_then(Path::parent).unwrap();
    let tools = release.join("snowgate-tools");
    assert!(tools.exists(), "{} is missing: run the tests with `cargo test --workspace`", tools.display());
    tools
}

/// Bearer headers for the SQL API.
pub fn sql_api_headers(bearer: &str) -> [(&'static str, &str); 2] {
    [("authorization", bearer), ("x-snowflake-authorization-token-type", "OAUTH")]
}

/// Fetches every partition of a SQL API statement through the gateway, checking each one's
/// row count against `partitionInfo`; returns partition 0's answer and all the rows.
pub fn sql_api_rows(client: &mut Client, bearer: &str, first: &Value) -> Vec<Value> {
    let handle = first["statementHandle"].as_str().unwrap();
    let info = first["resultSetMetaData"]["partitionInfo"].as_array().unwrap();
    let mut rows = first["data"].as_array().unwrap().clone();
    assert_eq!(rows.len() as u64, info[0]["rowCount"].as_u64().unwrap());
    for (n, partition) in info.iter().enumerate().skip(1) {
        let answer =
            client.get(&format!("/api/v2/statements/{handle}?partition={n}"), &sql_api_headers(bearer)).unwrap();
        assert_eq!(answer.status, 200, "partition {n}: {answer:?}");
        let data = answer.json().unwrap()["data"].as_array().unwrap().clone();
        assert_eq!(data.len() as u64, partition["rowCount"].as_u64().unwrap(), "partition {n}'s rows");
        rows.extend(data);
    }
    rows
}

/// Polls a SQL API statement while it answers 202 (at most ten times) and returns the last
/// answer, starting from `answer`.
pub fn sql_api_poll(client: &mut Client, bearer: &str, handle: &str, mut answer: ClientResponse) -> ClientResponse {
    for _ in 0..10 {
        if answer.status != 202 {
            break;
        }
        answer = client.get(&format!("/api/v2/statements/{handle}"), &sql_api_headers(bearer)).unwrap();
    }
    answer
}

/// Asserts that SQL API `rows` are the clear customer rows masked by the tests' profile: id
/// and name as they were, the e-mail all stars, the card keeping its last four, the SSN NULL.
#[track_caller]
pub fn assert_customers_masked(what: &str, clear: &[Vec<Option<String>>], rows: &[Value]) {
    assert_eq!(rows.len(), clear.len(), "{what}: every row must arrive");
    for (clear, row) in clear.iter().zip(rows) {
        let context = format!("{what}: clear {clear:?}, masked {row}");
        assert_eq!(row[0].as_str(), clear[0].as_deref(), "{context}");
        assert_eq!(row[1].as_str(), clear[1].as_deref(), "{context}");
        assert_eq!(row[2].as_str().unwrap(), "*".repeat(clear[2].as_ref().unwrap().len()), "{context}");
        let card = clear[3].as_deref().unwrap();
        let kept = format!("{}{}", "*".repeat(card.len() - 4), &card[card.len() - 4..]);
        assert_eq!(row[3].as_str().unwrap(), kept, "{context}");
        assert_eq!(row[4], Value::Null, "SSN must be NULL; {context}");
    }
}
