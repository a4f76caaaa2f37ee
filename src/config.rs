//! Configuration: the TOML file (upstream, identity, tokens, listener, limits, recording,
//! policy, masking, approvals) and
//! the per-core flags, validated once into a [`Config`]. A problem names its key.
//!
//! Rules and secrets live in the file (or in files and environment variables it names); flags
//! only tune the runtime. Secrets are read here, at start, and wrapped so they never print.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::http::Limits;
use crate::identity::{IdentityConfig, JwksSource, Verifier};
use crate::mask::{Masker, MaskingSpec};
use crate::policy::approvals::LedgerLimits;
use crate::policy::{Policy, PolicySpec};
use crate::record::{Durability, RecorderConfig};
use crate::session::credential::{KeyPair, Secret, UpstreamCredential};
use crate::session::statements::BookLimits;

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("config: {key}: {problem}")]
pub struct ConfigError {
    /// The dotted key (`upstream.private_key_file`), or the file for syntax errors.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

fn problem(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), problem: problem.into() }
}

/// Longest wait any `*_timeout_ms` may set: a longer one is a typo, and a huge one would
/// overflow the deadlines computed from it.
const TIMEOUT_MS_MAX: u64 = 3_600_000;
/// Most clock skew a token's `exp` and `nbf` are allowed: more would quietly accept tokens
/// long expired, and sessions would outlive their identity by as much.
const LEEWAY_SECS_MAX: u64 = 300;
/// The most `[identity] token_lifetime_max_secs` may be.
const TOKEN_LIFETIME_MAX_SECS_MAX: u64 = 366 * 86_400;
/// The most `[identity] session_max_secs` may be.
const SESSION_MAX_SECS_MAX: u64 = 7 * 24 * 3600;
/// Longest lifetime any `*_ttl_secs` or interval may set (a week).
const TTL_SECS_MAX: u64 = 7 * 86_400;

/// Most cores (`--cores`): each core's recording chain is numbered by a `u16`, and the admin
/// listener's chain takes the number after the last core's.
pub const CORES_MAX: usize = 1024;
/// Most io_uring submission entries (`--uring-entries`): the kernel refuses a larger ring
/// (`IORING_MAX_ENTRIES`). It rounds a count up to a power of two itself, and monoio raises a
/// count below 256 to 256.
pub const URING_ENTRIES_MAX: u32 = 32_768;
/// Least initial read buffer per connection (`--read-buffer-bytes`).
pub const READ_BUFFER_BYTES_MIN: usize = 1024;
/// Largest initial read buffer per connection: each open connection, downstream and upstream,
/// allocates one.
pub const READ_BUFFER_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most idle upstream connections kept per core (`--upstream-pool-size`; the pool is allocated
/// at start).
pub const UPSTREAM_POOL_SIZE_MAX: usize = 65_536;
/// Most classifier threads (`--classifier-threads`), each with an 8 MiB stack.
pub const CLASSIFIER_THREADS_MAX: usize = 256;
/// Longest drain on SIGTERM (`--drain-timeout-secs`): a day. A huge one would overflow the
/// drain deadline.
pub const DRAIN_TIMEOUT_SECS_MAX: u64 = 86_400;

/// Each `(key, value)` must be in `1..=max`.
fn within(max: u64, values: &[(&str, u64)]) -> Result<(), ConfigError> {
    for &(key, value) in values {
        if value == 0 || value > max {
            return Err(problem(key, format!("must be between 1 and {max}")));
        }
    }
    Ok(())
}

/// The configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[listen]`
    pub listen: ListenSection,
    /// `[upstream]`
    pub upstream: UpstreamSection,
    /// `[identity]`
    pub identity: IdentitySection,
    /// `[tokens]`
    pub tokens: TokensSection,
    /// `[limits]`
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[recording]`
    pub recording: RecordingSection,
    /// `[policy]`: the statement rules (required: a gateway without a policy does not start).
    pub policy: PolicySpec,
    /// `[masking]`: the masking profiles the policy's rules name.
    #[serde(default)]
    pub masking: MaskingSpec,
    /// `[approvals]`: the reviewers' admin listener and how parked statements wait.
    #[serde(default)]
    pub approvals: ApprovalsSection,
}

/// `[listen]`: where agents connect.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// Address to listen on.
    pub address: SocketAddr,
    /// TLS certificate chain (PEM).
    pub tls_cert_file: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// Serve plain HTTP: must be said explicitly, and only on a loopback address.
    #[serde(default)]
    pub plaintext: bool,
}

/// `[upstream]`: the Snowflake account and the gateway's credential.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Account identifier (`myorg-myacct` or a locator).
    pub account: String,
    /// Base URL; defaults to `https://<account>.snowflakecomputing.com`. `http://` only for
    /// loopback emulators.
    pub url: Option<String>,
    /// The gateway's Snowflake user.
    pub user: String,
    /// RSA private key (PEM) for key-pair login (preferred).
    pub private_key_file: Option<PathBuf>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// CA bundle (PEM) to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// TCP+TLS connect timeout.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for an upstream answer.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_response_timeout_ms() -> u64 {
    300_000
}

/// One group-to-role mapping; the first whose group the agent has wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleMapping {
    /// The identity group.
    pub group: String,
    /// The Snowflake role for it.
    pub role: String,
}

/// `[identity]`: how agents prove who they are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values.
    pub audience: Vec<String>,
    /// JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL (fetched on unknown `kid`, rate limited, cached): https, or http to a loopback address.
    pub jwks_url: Option<String>,
    /// Allowed JWT algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim that lists the agent's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Clock skew allowed on `exp`, `nbf`, `iat` and the lifetime (at most 300 s).
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Longest an agent's or reviewer's token may be valid, from its `iat` (or from the
    /// login, without one) to its `exp`: a token for months is a static credential again.
    #[serde(default = "default_token_lifetime_max_secs")]
    pub token_lifetime_max_secs: u64,
    /// Longest a session lasts from its login, whatever the OIDC token's `exp` (a long-lived
    /// token must not keep a session, with the groups and role of its login, open for days):
    /// past it the agent logs in again, with a token checked afresh.
    #[serde(default = "default_session_max_secs")]
    pub session_max_secs: u64,
    /// Least time between two JWKS fetches.
    #[serde(default = "default_refetch_interval_min_secs")]
    pub refetch_interval_min_secs: u64,
    /// Age after which fetched keys stop verifying.
    #[serde(default = "default_cache_ttl_secs")]
    pub cache_ttl_secs: u64,
    /// Group-to-role mappings, in order.
    #[serde(default)]
    pub roles: Vec<RoleMapping>,
    /// Role for identities no mapping matches; without it they are refused.
    pub default_role: Option<String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_token_lifetime_max_secs() -> u64 {
    24 * 3600
}
fn default_session_max_secs() -> u64 {
    12 * 3600
}
fn default_refetch_interval_min_secs() -> u64 {
    10
}
fn default_cache_ttl_secs() -> u64 {
    3600
}

/// `[tokens]`: the keys that seal the tokens agents hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensSection {
    /// File holding the sealing key (64 hex digits).
    pub seal_key_file: Option<PathBuf>,
    /// Environment variable holding the sealing key (64 hex digits).
    pub seal_key_env: Option<String>,
    /// Files holding previous keys, still accepted when opening tokens.
    #[serde(default)]
    pub previous_key_files: Vec<PathBuf>,
}

/// `[limits]`: sizes and timeouts for every wait.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Longest message head.
    pub head_bytes_max: usize,
    /// Largest body on the wire.
    pub body_bytes_max: usize,
    /// Largest body after gunzip.
    pub decompressed_bytes_max: usize,
    /// Largest statement request body (query request, SQL API submit) after gunzip. The
    /// gateway reads these bodies into a JSON tree (several times their size in memory: at
    /// most four times, or 64 MiB where that is more: `json::tree_bytes_max`), so this is well below
    /// `decompressed_bytes_max`, which also bounds result bodies. Session
    /// control bodies (login, renewal, logout, heartbeat, aborts) and telemetry have fixed,
    /// smaller caps (`Endpoint::request_bytes_max`).
    pub statement_request_bytes_max: usize,
    /// Time allowed for a complete request head once its first byte arrived (every
    /// `*_timeout_ms` is at most an hour).
    pub header_timeout_ms: u64,
    /// Time a keep-alive connection may sit idle between requests.
    pub idle_timeout_ms: u64,
    /// Time allowed to receive a request body.
    pub body_timeout_ms: u64,
    /// Largest `X-Agent-Context` header kept in the recording.
    pub agent_context_bytes_max: usize,
    /// How long a rewritten result chunk URL is honoured, in seconds (every `*_ttl_secs` is at
    /// most a week).
    pub chunk_url_ttl_secs: u64,
    /// Statement ids (driver query ids, SQL API handles) each core keeps with their owner, and
    /// masking plans for SQL API partitions; the least recently used goes first, and an id no
    /// core keeps is refused.
    pub statement_ids_max: usize,
    /// Statement ids one identity holds at most per core: past it, its own least recently used
    /// go first, so one agent cannot push the others' ids out.
    pub statement_ids_per_identity_max: usize,
    /// How long a statement id is honoured after its last use (its answer, a poll), in seconds.
    pub statement_idle_ttl_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let http = Limits::default();
        LimitsSection {
            head_bytes_max: http.head_bytes_max,
            body_bytes_max: http.body_bytes_max,
            decompressed_bytes_max: http.decompressed_bytes_max,
            statement_request_bytes_max: 16 * 1024 * 1024,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            body_timeout_ms: 60_000,
            agent_context_bytes_max: 4096,
            chunk_url_ttl_secs: 3600,
            statement_ids_max: 200_000,
            statement_ids_per_identity_max: 50_000,
            statement_idle_ttl_secs: 86_400,
        }
    }
}

/// `[recording]`: where segments go and the key their footers are sealed with. How they are
/// written (durability, zstd level, rotation, queue) are per-host flags ([`RecordingSettings`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingSection {
    /// Directory for recording segments.
    pub directory: PathBuf,
    /// File holding the recording key (64 hex digits), which `snowgate-tools verify` needs.
    /// Batches are chained under it as they are written: after a crash the gateway starts only
    /// with the key the open segment was written with (change it after a clean stop).
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the recording key (64 hex digits).
    pub key_env: Option<String>,
}

/// `[approvals]`: the admin listener reviewers use, and how a parked statement waits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsSection {
    /// Where the admin API listens: a loopback address (it speaks plain HTTP and carries
    /// reviewers' bearer tokens; remote reviewers come through an SSH tunnel). None: no admin
    /// API, and parked statements time out.
    pub admin_address: Option<SocketAddr>,
    /// Groups whose members may use the admin API at all (each rule names who may decide).
    pub admin_groups: Vec<String>,
    /// The `aud` values of reviewers' tokens, none of them an `[identity] audience`. Empty:
    /// reviewers use tokens of the agents' audience, so a token that names a reviewer group is
    /// also an agent's. Set: the admin API takes only these, and agents never.
    pub reviewer_audience: Vec<String>,
    /// How long the gateway holds a driver's result poll of a parked statement before
    /// answering "still running" (drivers poll again at once: this is what keeps them calm).
    pub poll_hold_ms: u64,
    /// Statements one identity may have parked at once.
    pub pending_per_identity_max: usize,
    /// Statements parked or recently decided, in all; one identity holds at most half of them.
    pub items_max: usize,
}

impl Default for ApprovalsSection {
    fn default() -> Self {
        ApprovalsSection {
            admin_address: None,
            admin_groups: Vec::new(),
            reviewer_audience: Vec::new(),
            poll_hold_ms: 10_000,
            pending_per_identity_max: 16,
            items_max: 4096,
        }
    }
}

/// How parked statements are kept and reviewed, validated.
#[derive(Debug, Clone)]
pub struct Approvals {
    /// The admin listener's address.
    pub admin_address: Option<SocketAddr>,
    /// Who may use the admin API.
    pub admin_groups: Vec<String>,
    /// How long a poll of a parked statement is held.
    pub poll_hold: Duration,
    /// The ledger's bounds.
    pub ledger: LedgerLimits,
}

/// The recorder's per-host settings, from flags.
#[derive(Debug, Clone)]
pub struct RecordingSettings {
    /// When a record counts as durable.
    pub durability: Durability,
    /// zstd level.
    pub zstd_level: i32,
    /// Frames each core's queue holds before statements are refused.
    pub queue_depth: usize,
    /// Bytes each core's queue holds before statements are refused.
    pub queue_bytes_max: usize,
    /// Most frames per zstd batch.
    pub batch_frames_max: usize,
    /// A segment is sealed at this size.
    pub segment_bytes_max: u64,
    /// A segment holding records is sealed at this age.
    pub segment_age_max: Duration,
    /// How long a woken recorder waits for more frames (`none` and `batch` modes).
    pub linger: Duration,
    /// Longest wait for a record to become durable before the exchange is refused.
    pub durable_timeout: Duration,
}

impl RecordingSettings {
    /// The recorder configuration of chain `core_id` (a core, or the admin listener's).
    pub fn recorder_config(&self, directory: impl Into<PathBuf>, core_id: u16, key: [u8; 32]) -> RecorderConfig {
        let mut recorder = RecorderConfig::new(directory, core_id, key);
        recorder.durability = self.durability;
        recorder.zstd_level = self.zstd_level;
        recorder.queue_depth = self.queue_depth;
        recorder.queue_bytes_max = self.queue_bytes_max;
        recorder.batch_frames_max = self.batch_frames_max;
        recorder.segment_bytes_max = self.segment_bytes_max;
        recorder.segment_age_max = self.segment_age_max;
        recorder.linger = self.linger;
        recorder
    }
}

impl Default for RecordingSettings {
    fn default() -> Self {
        let defaults = RecorderConfig::new("", 0, [0; 32]);
        RecordingSettings {
            durability: defaults.durability,
            zstd_level: defaults.zstd_level,
            queue_depth: defaults.queue_depth,
            queue_bytes_max: defaults.queue_bytes_max,
            batch_frames_max: defaults.batch_frames_max,
            segment_bytes_max: defaults.segment_bytes_max,
            segment_age_max: defaults.segment_age_max,
            linger: defaults.linger,
            durable_timeout: Duration::from_secs(10),
        }
    }
}

/// Per-core runtime settings, from flags.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Number of cores (one runtime and listener each).
    pub cores: usize,
    /// Pin core N's thread to CPU N.
    pub pin_cpus: bool,
    /// io_uring submission queue entries per core.
    pub uring_entries: u32,
    /// Initial read buffer per connection.
    pub read_buffer_bytes: usize,
    /// Idle upstream connections kept per core.
    pub upstream_pool_size: usize,
    /// Open downstream connections allowed per core.
    pub max_connections: usize,
    /// How long SIGTERM waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Classifier threads (shared by all cores).
    pub classifier_threads: usize,
    /// The recorders.
    pub recording: RecordingSettings,
}

impl RuntimeSettings {
    /// Checks every setting against its range; a problem names the flag it came from.
    pub fn validate(&self) -> Result<(), ConfigError> {
        within(CORES_MAX as u64, &[("--cores", self.cores as u64)])?;
        within(URING_ENTRIES_MAX.into(), &[("--uring-entries", self.uring_entries.into())])?;
        if !(READ_BUFFER_BYTES_MIN..=READ_BUFFER_BYTES_MAX).contains(&self.read_buffer_bytes) {
            return Err(problem(
                "--read-buffer-bytes",
                format!("must be between {READ_BUFFER_BYTES_MIN} and {READ_BUFFER_BYTES_MAX} (64 MiB)"),
            ));
        }
        if self.upstream_pool_size > UPSTREAM_POOL_SIZE_MAX {
            return Err(problem("--upstream-pool-size", format!("must be at most {UPSTREAM_POOL_SIZE_MAX}")));
        }
        if self.max_connections == 0 {
            return Err(problem("--max-connections", "must be greater than zero"));
        }
        if self.drain_timeout > Duration::from_secs(DRAIN_TIMEOUT_SECS_MAX) {
            return Err(problem("--drain-timeout-secs", format!("must be at most {DRAIN_TIMEOUT_SECS_MAX} (a day)")));
        }
        within(CLASSIFIER_THREADS_MAX as u64, &[("--classifier-threads", self.classifier_threads as u64)])?;
        self.recording.validate()
    }
}

impl RecordingSettings {
    /// Checks each setting against the recorder's limits, naming the flag it came from (the
    /// recorder's own check, run after this one, names none).
    pub fn validate(&self) -> Result<(), ConfigError> {
        use crate::record::limits;
        if let Durability::Batch { interval } = self.durability
            && interval > Duration::from_secs(1)
        {
            return Err(problem("--fsync-interval-ms", "must be at most 1000"));
        }
        if !zstd::compression_level_range().contains(&self.zstd_level) {
            let range = zstd::compression_level_range();
            return Err(problem(
                "--recording-zstd-level",
                format!("must be between {} and {}", range.start(), range.end()),
            ));
        }
        within(limits::QUEUE_DEPTH_MAX as u64, &[("--recording-queue-depth", self.queue_depth as u64)])?;
        if !((1 << 20)..=limits::QUEUE_BYTES_CONFIG_MAX).contains(&self.queue_bytes_max) {
            return Err(problem(
                "--recording-queue-mib",
                format!("must be between 1 and {} (MiB)", limits::QUEUE_BYTES_CONFIG_MAX >> 20),
            ));
        }
        within(limits::BATCH_FRAMES_MAX as u64, &[("--recording-batch-frames", self.batch_frames_max as u64)])?;
        if !(4096..=limits::SEGMENT_BYTES_CONFIG_MAX).contains(&self.segment_bytes_max) {
            return Err(problem(
                "--recording-segment-mib",
                format!("must be between 1 and {} (MiB)", limits::SEGMENT_BYTES_CONFIG_MAX >> 20),
            ));
        }
        if self.segment_age_max < Duration::from_millis(1) || self.segment_age_max > Duration::from_secs(TTL_SECS_MAX) {
            return Err(problem(
                "--recording-segment-age-secs",
                format!("must be between 1 and {TTL_SECS_MAX} (a week)"),
            ));
        }
        if self.linger > limits::LINGER_MAX {
            return Err(problem(
                "--recording-linger-us",
                format!("must be at most {} (100 ms)", limits::LINGER_MAX.as_micros()),
            ));
        }
        Ok(())
    }
}

/// Where the upstream is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// Whether to speak TLS.
    pub tls: bool,
    /// Host name (for SNI, certificate checks and the Host header).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl UpstreamUrl {
    /// Parses `https://host[:port]` or `http://host[:port]` (no path).
    pub fn parse(url: &str) -> Option<UpstreamUrl> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            (false, url.strip_prefix("http://")?)
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return None;
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
            _ => (rest, if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return None;
        }
        Some(UpstreamUrl { tls, host: host.to_owned(), port })
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => self.host.clone(),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// The upstream side, validated.
#[derive(Debug)]
pub struct Upstream {
    /// Account identifier, as sent in `ACCOUNT_NAME`.
    pub account: String,
    /// The gateway's user.
    pub user: String,
    /// Where Snowflake is.
    pub url: UpstreamUrl,
    /// Custom CA (PEM bytes), if any.
    pub ca_pem: Option<Vec<u8>>,
    /// The gateway's credential.
    pub credential: UpstreamCredential,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Answer timeout.
    pub response_timeout: Duration,
}

/// The listener, validated.
pub struct Listen {
    /// Address.
    pub address: SocketAddr,
    /// Certificate chain and key (PEM bytes); `None` for explicit plaintext.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
}

/// Timeouts for every wait on a downstream connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Complete head once started.
    pub header: Duration,
    /// Idle keep-alive.
    pub idle: Duration,
    /// Request body.
    pub body: Duration,
}

/// The identity side, validated.
#[derive(Debug)]
pub struct Identity {
    /// Verifier settings.
    pub verifier: IdentityConfig,
    /// Where the keys come from.
    pub jwks: JwksSource,
    /// Group-to-role mappings in order.
    pub roles: Vec<RoleMapping>,
    /// Fallback role.
    pub default_role: Option<String>,
    /// Longest a session lasts from its login.
    pub session_max: Duration,
}

impl Identity {
    /// The role for an identity with these groups: the first mapping that matches, else the
    /// default, else none (refused).
    pub fn role_for(&self, groups: &[String]) -> Option<&str> {
        self.roles
            .iter()
            .find(|m| groups.iter().any(|g| g == &m.group))
            .map(|m| m.role.as_str())
            .or(self.default_role.as_deref())
    }
}

/// Everything the gateway needs, validated. Its `Debug` leaves out every key.
pub struct Config {
    /// Listener.
    pub listen: Listen,
    /// Upstream.
    pub upstream: Upstream,
    /// Identity.
    pub identity: Identity,
    /// Sealing keys, the first one sealing.
    pub seal_keys: Vec<Vec<u8>>,
    /// HTTP size limits.
    pub limits: Limits,
    /// Downstream timeouts.
    pub timeouts: Timeouts,
    /// Largest `X-Agent-Context` kept.
    pub agent_context_bytes_max: usize,
    /// Largest statement request body after gunzip.
    pub statement_request_bytes_max: usize,
    /// How long a rewritten chunk URL is honoured.
    pub chunk_url_ttl: Duration,
    /// The statement ids each core keeps, and for how long.
    pub statement_book: BookLimits,
    /// Recording directory.
    pub recording_dir: PathBuf,
    /// The key recording footers are sealed with.
    pub recording_key: [u8; 32],
    /// The statement policy.
    pub policy: Policy,
    /// The masking profiles.
    pub masker: Masker,
    /// Parked statements and their review.
    pub approvals: Approvals,
    /// Per-core settings.
    pub runtime: RuntimeSettings,
}

impl std::fmt::Debug for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listen")
            .field("address", &self.address)
            .field("tls", &self.tls.as_ref().map(|_| "<certificate chain and private key>"))
            .finish()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .field("identity", &self.identity)
            .field("seal_keys", &format_args!("<{} keys>", self.seal_keys.len()))
            .field("limits", &self.limits)
            .field("timeouts", &self.timeouts)
            .field("agent_context_bytes_max", &self.agent_context_bytes_max)
            .field("statement_request_bytes_max", &self.statement_request_bytes_max)
            .field("chunk_url_ttl", &self.chunk_url_ttl)
            .field("statement_book", &self.statement_book)
            .field("recording_dir", &self.recording_dir)
            .field("recording_key", &"<key>")
            .field("policy", &self.policy)
            .field("masker", &self.masker)
            .field("approvals", &self.approvals)
            .field("runtime", &self.runtime)
            .finish()
    }
}

/// The most bytes a file the configuration names (a certificate chain, a CA bundle, a key,
/// the configuration itself with its dictionaries) may hold: a path that names something else
/// by mistake is refused, not read until memory runs out.
pub const CONFIG_FILE_BYTES_MAX: usize = 16 << 20;

/// Opens `path` for reading, refusing anything but a regular file (opened without waiting: a
/// FIFO would block the open until a writer came), and reads it whole, up to
/// [`CONFIG_FILE_BYTES_MAX`]. Returns the open file's metadata with the bytes.
fn read_regular(path: &Path) -> Result<(std::fs::Metadata, Vec<u8>), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let cannot_read = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(cannot_read)?;
    // The metadata is the open file's, so it is that of what is read.
    let metadata = file.metadata().map_err(cannot_read)?;
    if !metadata.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let bytes = read_capped(file).map_err(cannot_read)?;
    let bytes = bytes.ok_or_else(|| format!("{} is over {} MiB", path.display(), CONFIG_FILE_BYTES_MAX >> 20))?;
    Ok((metadata, bytes))
}

/// All of `file`, or `None` when it holds more than [`CONFIG_FILE_BYTES_MAX`] bytes (of which
/// one more is read, no further).
fn read_capped(file: std::fs::File) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    file.take(CONFIG_FILE_BYTES_MAX as u64 + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() <= CONFIG_FILE_BYTES_MAX).then_some(bytes))
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    read_regular(path).map(|(_, bytes)| bytes).map_err(|message| problem(key, message))
}

/// Reads a file holding a secret (a private key, a sealing or recording key, a password). On
/// Unix a file others may read, or group or others may write, is refused: whoever can read it
/// holds the secret too, and whoever can write it chooses it. Group read is allowed (a key
/// shared with a key group, `root:ssl-cert 0640`, or a Kubernetes secret with `defaultMode`
/// 0440 and an `fsGroup`).
fn read_secret_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let (metadata, bytes) = read_regular(path).map_err(|message| problem(key, message))?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o027 != 0 {
        return Err(problem(
            key,
            format!(
                "{} has mode {mode:04o}: a key file must not be readable by others nor writable by group or others \
                 (chmod 600 {})",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(bytes)
}

/// A TOML error fit for a log line: where it is, the key there when it is one (a bare word
/// first on its line and followed by `=`, or alone in a table's brackets), and its message
/// with every quoted value cut out; never the excerpt of the file the `toml` crate's own
/// rendering quotes nor the value serde names (`invalid type: string "…"`): a dictionary's
/// words are secrets. Columns count bytes.
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let mut message = String::with_capacity(e.message().len());
    let mut chars = e.message().chars().peekable();
    let mut last = None;
    while let Some(c) = chars.next() {
        // A quote character named in backticks (toml's expected `"`) is no value.
        if c == '"' && !(last == Some('`') && chars.peek() == Some(&'`')) {
            message.push_str("\"…\"");
            // The value, with serde's `\"` escapes inside it, up to its closing quote.
            while let Some(c) = chars.next() {
                match c {
                    '\\' => drop(chars.next()),
                    '"' => break,
                    _ => {}
                }
            }
            last = Some('"');
            continue;
        }
        message.push(c);
        last = Some(c);
    }
    let Some(span) = e.span() else { return message };
    let bytes = text.as_bytes();
    let (start, end) = (span.start.min(bytes.len()), span.end.min(bytes.len()));
    let line_start = bytes[..start].iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1);
    let line = bytes[..start].iter().filter(|&&b| b == b'\n').count() + 1;
    let column = start - line_start + 1;
    let lead = &bytes[line_start..start];
    let next = bytes[end..].iter().copied().find(|&b| b != b' ' && b != b'\t');
    let key = text.get(start..end).filter(|key| {
        (1..=64).contains(&key.len())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
            && match lead.iter().copied().filter(|&b| b != b' ' && b != b'\t').collect::<Vec<u8>>().as_slice() {
                [] => next == Some(b'='),
                [b'['] | [b'[', b'['] => next == Some(b']'),
                _ => false,
            }
    });
    match key {
        Some(key) => format!("line {line}, column {column} (`{key}`): {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

/// The value of the environment variable `var`, which configuration key `key` names.
fn read_env(key: &str, var: &str) -> Result<String, ConfigError> {
    std::env::var(var).map_err(|e| env_problem(key, var, &e))
}

fn env_problem(key: &str, var: &str, error: &std::env::VarError) -> ConfigError {
    match error {
        std::env::VarError::NotPresent => problem(key, format!("environment variable {var} is not set")),
        std::env::VarError::NotUnicode(_) => problem(key, format!("environment variable {var} is not valid UTF-8")),
    }
}

/// A 32-byte key written as 64 hex digits; `what` names it in the problem ("the recording key").
fn parse_hex_key(key: &str, what: &str, text: &str) -> Result<Vec<u8>, ConfigError> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(problem(key, format!("{what} must be 64 hex digits (32 bytes)")));
    }
    Ok((0..32).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or(0)).collect())
}

/// A 32-byte key from exactly one of a file (already resolved) or an environment variable,
/// each given with the configuration key it came from.
fn read_hex_key(
    what: &str,
    (file_key, file): (&'static str, Option<PathBuf>),
    (env_key, env): (&'static str, Option<&str>),
) -> Result<Vec<u8>, ConfigError> {
    match (file, env) {
        (Some(path), None) => {
            let bytes = read_secret_file(file_key, &path)?;
            parse_hex_key(file_key, what, &String::from_utf8_lossy(&bytes))
        }
        (None, Some(var)) => parse_hex_key(env_key, what, &read_env(env_key, var)?),
        _ => {
            // The field names without their section: "set exactly one of key_file and key_env".
            let field = |key: &'static str| key.rsplit('.').next().unwrap_or(key);
            Err(problem(file_key, format!("set exactly one of {} and {}", field(file_key), field(env_key))))
        }
    }
}

fn parse_algorithm(key: &str, name: &str) -> Result<jsonwebtoken::Algorithm, ConfigError> {
    use jsonwebtoken::Algorithm::*;
    Ok(match name {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        other => return Err(problem(key, format!("{other:?} is not an allowed asymmetric algorithm"))),
    })
}

impl Config {
    /// Reads, parses and validates the file at `path`, with `runtime` from the flags.
    pub fn load(path: &Path, runtime: RuntimeSettings) -> Result<Config, ConfigError> {
        // The operator's own choice of file, which may be a pipe (`--config /dev/stdin`): read
        // whatever it is, up to the cap.
        let cannot_read = |e: std::io::Error| problem(&path.display().to_string(), format!("cannot read: {e}"));
        let bytes = read_capped(std::fs::File::open(path).map_err(cannot_read)?).map_err(cannot_read)?;
        let bytes = bytes.ok_or_else(|| {
            problem(&path.display().to_string(), format!("is over {} MiB", CONFIG_FILE_BYTES_MAX >> 20))
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| problem(&path.display().to_string(), "is not UTF-8 text".to_owned()))?;
        let file: FileConfig =
            toml::from_str(&text).map_err(|e| problem(&path.display().to_string(), toml_problem(&text, &e)))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_file(file, base, runtime)
    }

    /// Validates a parsed file; relative paths are taken from `base`.
    pub fn from_file(file: FileConfig, base: &Path, runtime: RuntimeSettings) -> Result<Config, ConfigError> {
        let resolve = |p: &Path| if p.is_absolute() { p.to_owned() } else { base.join(p) };

        let listen = {
            let l = &file.listen;
            let tls = match (&l.tls_cert_file, &l.tls_key_file, l.plaintext) {
                (Some(cert), Some(key), false) => Some((
                    read_file("listen.tls_cert_file", &resolve(cert))?,
                    read_secret_file("listen.tls_key_file", &resolve(key))?,
                )),
                // Session tokens and chunk URLs are bearer credentials: in clear they stay on
                // this host.
                (None, None, true) if !l.address.ip().is_loopback() => {
                    return Err(problem(
                        "listen.plaintext",
                        "plaintext is for a loopback address; elsewhere set tls_cert_file and tls_key_file",
                    ));
                }
                (None, None, true) => None,
                (_, _, true) => {
                    return Err(problem("listen.plaintext", "plaintext = true cannot be combined with TLS files"));
                }
                _ => {
                    return Err(problem(
                        "listen.tls_cert_file",
                        "set both tls_cert_file and tls_key_file, or plaintext = true explicitly",
                    ));
                }
            };
            Listen { address: l.address, tls }
        };

        let upstream = {
            let u = &file.upstream;
            if u.account.is_empty() || !u.account.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return Err(problem(
                    "upstream.account",
                    "must be a non-empty account identifier (letters, digits, - _ .)",
                ));
            }
            if u.user.is_empty() {
                return Err(problem("upstream.user", "must not be empty"));
            }
            let url_text = u.url.clone().unwrap_or_else(|| format!("https://{}.snowflakecomputing.com", u.account));
            let url = UpstreamUrl::parse(&url_text).ok_or_else(|| {
                problem("upstream.url", "must be https://host[:port] or http://host[:port], without a path")
            })?;
            // The login carries the gateway's credential, and answers carry results and `qrmk`.
            if !url.tls && !loopback_http(&url_text) {
                return Err(problem(
                    "upstream.url",
                    "http:// is only for an emulator on this machine (127.0.0.0/8, [::1], localhost); use https://",
                ));
            }
            let credential = match (&u.private_key_file, &u.password_file, &u.password_env) {
                (Some(key_file), None, None) => {
                    let pem = read_secret_file("upstream.private_key_file", &resolve(key_file))?;
                    let pem =
                        String::from_utf8(pem).map_err(|_| problem("upstream.private_key_file", "is not PEM text"))?;
                    UpstreamCredential::KeyPair(
                        KeyPair::from_pem(&pem, &u.account, &u.user)
                            .map_err(|e| problem("upstream.private_key_file", e.to_string()))?,
                    )
                }
                (None, Some(file), None) => {
                    let bytes = read_secret_file("upstream.password_file", &resolve(file))?;
                    let text =
                        String::from_utf8(bytes).map_err(|_| problem("upstream.password_file", "is not UTF-8"))?;
                    UpstreamCredential::Password(Secret::new(text.trim_end_matches(['\r', '\n']).to_owned()))
                }
                (None, None, Some(var)) => {
                    UpstreamCredential::Password(Secret::new(read_env("upstream.password_env", var)?))
                }
                _ => {
                    return Err(problem(
                        "upstream.private_key_file",
                        "set exactly one of private_key_file, password_file, password_env",
                    ));
                }
            };
            let ca_pem = u.ca_file.as_ref().map(|p| read_file("upstream.ca_file", &resolve(p))).transpose()?;
            within(
                TIMEOUT_MS_MAX,
                &[
                    ("upstream.connect_timeout_ms", u.connect_timeout_ms),
                    ("upstream.response_timeout_ms", u.response_timeout_ms),
                ],
            )?;
            Upstream {
                account: u.account.clone(),
                user: u.user.clone(),
                url,
                ca_pem,
                credential,
                connect_timeout: Duration::from_millis(u.connect_timeout_ms),
                response_timeout: Duration::from_millis(u.response_timeout_ms),
            }
        };

        let identity = {
            let i = &file.identity;
            if i.issuer.is_empty() {
                return Err(problem("identity.issuer", "must not be empty"));
            }
            if i.audience.is_empty() || i.audience.iter().any(String::is_empty) {
                return Err(problem("identity.audience", "list at least one non-empty audience"));
            }
            let jwks = match (&i.jwks_file, &i.jwks_url) {
                (Some(f), None) => JwksSource::File(resolve(f)),
                (None, Some(u)) if u.starts_with("https://") || loopback_http(u) => JwksSource::Url(u.clone()),
                (None, Some(_)) => {
                    // The keys it serves decide who is who: fetched in clear, anyone on the path
                    // could add their own.
                    return Err(problem(
                        "identity.jwks_url",
                        "must be an https:// URL (http:// only to a loopback address)",
                    ));
                }
                _ => return Err(problem("identity.jwks_file", "set exactly one of jwks_file and jwks_url")),
            };
            if i.algorithms.is_empty() {
                return Err(problem("identity.algorithms", "list at least one algorithm"));
            }
            let algorithms = i
                .algorithms
                .iter()
                .map(|a| parse_algorithm("identity.algorithms", a))
                .collect::<Result<Vec<_>, _>>()?;
            if i.roles.is_empty() && i.default_role.is_none() {
                return Err(problem("identity.roles", "map at least one group to a role, or set default_role"));
            }
            // An empty role would go upstream as `roleName=`, and Snowflake would log the session
            // in with the gateway user's default role: whatever that is, not the one mapped.
            for (n, mapping) in i.roles.iter().enumerate() {
                if mapping.group.trim().is_empty() {
                    return Err(problem(&format!("identity.roles[{n}].group"), "must not be empty"));
                }
                if mapping.role.trim().is_empty() {
                    return Err(problem(&format!("identity.roles[{n}].role"), "must not be empty"));
                }
            }
            if i.default_role.as_deref().is_some_and(|role| role.trim().is_empty()) {
                return Err(problem(
                    "identity.default_role",
                    "must not be empty (leave it out to refuse identities no mapping matches)",
                ));
            }
            within(
                TTL_SECS_MAX,
                &[
                    ("identity.refetch_interval_min_secs", i.refetch_interval_min_secs),
                    ("identity.cache_ttl_secs", i.cache_ttl_secs),
                ],
            )?;
            if i.leeway_secs > LEEWAY_SECS_MAX {
                return Err(problem("identity.leeway_secs", format!("must be at most {LEEWAY_SECS_MAX}")));
            }
            if !(60..=TOKEN_LIFETIME_MAX_SECS_MAX).contains(&i.token_lifetime_max_secs) {
                return Err(problem(
                    "identity.token_lifetime_max_secs",
                    format!("must be between 60 and {TOKEN_LIFETIME_MAX_SECS_MAX} (a year)"),
                ));
            }
            if !(60..=SESSION_MAX_SECS_MAX).contains(&i.session_max_secs) {
                return Err(problem(
                    "identity.session_max_secs",
                    format!("must be between 60 and {SESSION_MAX_SECS_MAX} (7 days)"),
                ));
            }
            if i.cache_ttl_secs < i.refetch_interval_min_secs {
                return Err(problem("identity.cache_ttl_secs", "must not be shorter than refetch_interval_min_secs"));
            }
            Identity {
                verifier: {
                    let mut v = IdentityConfig::new(i.issuer.clone(), i.audience.clone());
                    let reviewer_audience = &file.approvals.reviewer_audience;
                    if reviewer_audience.iter().any(|aud| aud.is_empty() || i.audience.contains(aud)) {
                        return Err(problem(
                            "approvals.reviewer_audience",
                            "list audiences that are not empty and not in identity.audience",
                        ));
                    }
                    v.reviewer_audiences = reviewer_audience.clone();
                    v.algorithms = algorithms;
                    v.groups_claim = i.groups_claim.clone();
                    v.leeway = Duration::from_secs(i.leeway_secs);
                    v.lifetime_max = Duration::from_secs(i.token_lifetime_max_secs);
                    v.refetch_interval_min = Duration::from_secs(i.refetch_interval_min_secs);
                    v.cache_ttl = Duration::from_secs(i.cache_ttl_secs);
                    v.validate().map_err(|e| problem("identity", e.to_string()))?;
                    // A JWKS file is loaded at start and must hold a usable key; loading it here
                    // too makes a broken file a configuration error that names its key.
                    if let JwksSource::File(_) = &jwks {
                        Verifier::new(v.clone(), jwks.clone())
                            .map_err(|e| problem("identity.jwks_file", e.to_string()))?;
                    }
                    v
                },
                jwks,
                roles: i.roles.clone(),
                default_role: i.default_role.clone(),
                session_max: Duration::from_secs(i.session_max_secs),
            }
        };

        let seal_keys = {
            let t = &file.tokens;
            let current = read_hex_key(
                "a sealing key",
                ("tokens.seal_key_file", t.seal_key_file.as_deref().map(&resolve)),
                ("tokens.seal_key_env", t.seal_key_env.as_deref()),
            )?;
            let mut keys = vec![current];
            for f in &t.previous_key_files {
                let bytes = read_secret_file("tokens.previous_key_files", &resolve(f))?;
                keys.push(parse_hex_key(
                    "tokens.previous_key_files",
                    "a sealing key",
                    &String::from_utf8_lossy(&bytes),
                )?);
            }
            keys
        };

        let recording_key = {
            let r = &file.recording;
            let key = read_hex_key(
                "the recording key",
                ("recording.key_file", r.key_file.as_deref().map(&resolve)),
                ("recording.key_env", r.key_env.as_deref()),
            )?;
            if seal_keys.contains(&key) {
                return Err(problem("recording.key_file", "the recording key must differ from the token sealing keys"));
            }
            let mut out = [0u8; 32];
            out.copy_from_slice(&key);
            out
        };
        let policy = Policy::from_spec(&file.policy).map_err(|e| problem("policy", e.to_string()))?;
        let masker = Masker::new(&file.masking).map_err(|e| problem("masking", e.to_string()))?;
        for name in policy.masking_profile_names() {
            if masker.profile(name).is_none() {
                return Err(problem(
                    "policy",
                    format!("a rule names masking profile {name:?}, which [masking] does not define"),
                ));
            }
        }
        let approvals = {
            let a = &file.approvals;
            if a.poll_hold_ms == 0 || a.poll_hold_ms > 50_000 {
                return Err(problem(
                    "approvals.poll_hold_ms",
                    "must be between 1 and 50000 (drivers time out a poll after 60 s)",
                ));
            }
            if a.admin_address.is_some_and(|address| !address.ip().is_loopback()) {
                return Err(problem(
                    "approvals.admin_address",
                    "must be a loopback address: the admin API speaks plain HTTP and carries reviewers' tokens \
                     (reach it from elsewhere through an SSH tunnel)",
                ));
            }
            if a.admin_groups.iter().any(|group| group.trim().is_empty()) {
                return Err(problem("approvals.admin_groups", "must not list an empty group"));
            }
            if a.admin_address.is_some() && a.admin_groups.is_empty() {
                return Err(problem("approvals.admin_groups", "name the groups that may use the admin API"));
            }
            if a.pending_per_identity_max == 0 || a.items_max == 0 {
                return Err(problem("approvals", "pending_per_identity_max and items_max must be > 0"));
            }
            Approvals {
                admin_address: a.admin_address,
                admin_groups: a.admin_groups.clone(),
                poll_hold: Duration::from_millis(a.poll_hold_ms),
                ledger: LedgerLimits {
                    pending_per_subject_max: a.pending_per_identity_max,
                    items_max: a.items_max,
                    ..LedgerLimits::default()
                },
            }
        };

        let l = &file.limits;
        if l.head_bytes_max < 1024 || l.body_bytes_max == 0 || l.decompressed_bytes_max < l.body_bytes_max.min(1 << 20)
        {
            return Err(problem(
                "limits",
                "head_bytes_max >= 1024, body_bytes_max > 0, decompressed_bytes_max >= 1 MiB",
            ));
        }
        within(
            TIMEOUT_MS_MAX,
            &[
                ("limits.header_timeout_ms", l.header_timeout_ms),
                ("limits.idle_timeout_ms", l.idle_timeout_ms),
                ("limits.body_timeout_ms", l.body_timeout_ms),
            ],
        )?;
        within(
            TTL_SECS_MAX,
            &[
                ("limits.chunk_url_ttl_secs", l.chunk_url_ttl_secs),
                ("limits.statement_idle_ttl_secs", l.statement_idle_ttl_secs),
            ],
        )?;
        for (key, value) in [
            ("limits.statement_ids_max", l.statement_ids_max as u64),
            ("limits.statement_ids_per_identity_max", l.statement_ids_per_identity_max as u64),
            ("limits.statement_request_bytes_max", l.statement_request_bytes_max as u64),
        ] {
            if value == 0 {
                return Err(problem(key, "must be greater than zero"));
            }
        }
        runtime.validate()?;
        runtime
            .recording
            .recorder_config(resolve(&file.recording.directory), 0, recording_key)
            .validate()
            .map_err(|e| problem("--recording-*", e.to_string()))?;

        Ok(Config {
            listen,
            upstream,
            identity,
            seal_keys,
            limits: Limits {
                head_bytes_max: l.head_bytes_max,
                body_bytes_max: l.body_bytes_max,
                decompressed_bytes_max: l.decompressed_bytes_max,
            },
            timeouts: Timeouts {
                header: Duration::from_millis(l.header_timeout_ms),
                idle: Duration::from_millis(l.idle_timeout_ms),
                body: Duration::from_millis(l.body_timeout_ms),
            },
            agent_context_bytes_max: l.agent_context_bytes_max,
            statement_request_bytes_max: l.statement_request_bytes_max,
            chunk_url_ttl: Duration::from_secs(l.chunk_url_ttl_secs),
            statement_book: BookLimits {
                ids_max: l.statement_ids_max,
                ids_per_identity_max: l.statement_ids_per_identity_max,
                idle_ttl: Duration::from_secs(l.statement_idle_ttl_secs),
            },
            recording_dir: resolve(&file.recording.directory),
            recording_key,
            policy,
            masker,
            approvals: approvals.fit_largest_request(l.statement_request_bytes_max),
            runtime,
        })
    }
}

impl Approvals {
    /// Makes room in the ledger for the largest statement request: a parked one holds its
    /// text, its bindings and its whole body, up to twice the body's size, and one agent may
    /// hold half the ledger, which must take at least one such request.
    fn fit_largest_request(mut self, statement_request_bytes_max: usize) -> Approvals {
        let largest_item = statement_request_bytes_max.saturating_mul(2).saturating_add(64 << 10);
        let ledger = &mut self.ledger;
        ledger.stored_bytes_per_subject_max = ledger.stored_bytes_per_subject_max.max(largest_item);
        ledger.stored_bytes_max = ledger.stored_bytes_max.max(ledger.stored_bytes_per_subject_max.saturating_mul(2));
        self
    }
}

/// An `http://` URL to this machine (`127.0.0.0/8`, `[::1]`, `localhost`).
pub(crate) fn loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return false;
    }
    // The host, and what follows it, which must be a port or nothing: `[::1]x.evil` is a host
    // name to the URL parser (`UpstreamUrl::parse`), whatever its first characters say.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']').unwrap_or((v6, "?")),
        None => authority.split_once(':').map_or((authority, ""), |(host, _)| (host, &authority[host.len()..])),
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok
        && (host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory holding a configuration file and the secrets it names, each private to
    /// this user (mode 0600).
    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            let files = Files { dir: tempfile::tempdir().unwrap() };
            files.write("seal.key", &"5e".repeat(32), 0o600);
            files.write("previous.key", &"9e".repeat(32), 0o600);
            files.write("recording.key", &"7c".repeat(32), 0o600);
            files.write("password", "not-a-real-password", 0o600);
            files
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Writes `name` with `contents` and sets its mode.
        fn write(&self, name: &str, contents: &str, mode: u32) {
            std::fs::write(self.path(name), contents).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(self.path(name), std::fs::Permissions::from_mode(mode)).unwrap();
            }
            #[cfg(not(unix))]
            let _ = mode;
        }

        /// A configuration that loads, its paths relative to the directory.
        fn good(&self) -> String {
            let jwks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/jwks.json");
            format!(
                r#"[listen]
address = "127.0.0.1:0"
plaintext = true

[upstream]
account = "TESTACCT"
url = "http://127.0.0.1:9"
user = "SNOWGATE"
password_file = "password"

[identity]
issuer = "https://idp.test"
audience = ["snowgate-test"]
jwks_file = "{jwks}"
roles = [{{ group = "analysts", role = "ANALYST" }}]
default_role = "READER"

[tokens]
seal_key_file = "seal.key"
previous_key_files = ["previous.key"]

[recording]
directory = "recordings"
key_file = "recording.key"

[policy]
default = {{ action = "deny", message = "not allowed" }}
"#,
                jwks = jwks.display()
            )
        }

        fn load_with(&self, text: &str, runtime: RuntimeSettings) -> Result<Config, ConfigError> {
            let path = self.path("snowgate.toml");
            std::fs::write(&path, text).unwrap();
            Config::load(&path, runtime)
        }

        fn load(&self, text: &str) -> Result<Config, ConfigError> {
            self.load_with(text, runtime())
        }
    }

    /// The flags' defaults, on one core.
    fn runtime() -> RuntimeSettings {
        RuntimeSettings {
            cores: 1,
            pin_cpus: false,
            uring_entries: 1024,
            read_buffer_bytes: 16 * 1024,
            upstream_pool_size: 64,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
            classifier_threads: 2,
            recording: RecordingSettings::default(),
        }
    }

    /// `text` with `from` (which must be there) replaced by `to`.
    fn replaced(text: &str, from: &str, to: &str) -> String {
        assert!(text.contains(from), "no {from:?} in the configuration");
        text.replacen(from, to, 1)
    }

    #[track_caller]
    fn assert_refused(result: Result<Config, ConfigError>, key: &str, needles: &[&str]) {
        let error = result.err().unwrap_or_else(|| panic!("accepted; expected a problem with {key}"));
        assert_eq!(error.key, key, "{error}");
        let text = error.to_string();
        assert!(text.starts_with(&format!("config: {key}: ")), "{text}");
        for needle in needles {
            assert!(text.contains(needle), "{text} does not say {needle:?}");
        }
    }

    #[test]
    fn toml_errors_name_the_place_but_quote_no_value() {
        let files = Files::new();
        // A dictionary's words are secrets: neither a typo nor a wrong type nor a missing quote
        // may echo them (or a part of one, past a quote inside it). The line is the table's,
        // or the one after it that holds the word.
        for (table, lines_in) in [
            ("word = [\"Project Osprey\"]", 0),
            ("words = \"Project Osprey\"", 0),
            ("words = [Osprey]", 0),
            ("words = [\n  \"Project Osprey\",\n  Osprey,\n]", 2),
            ("words = \"Osp\\\"rey\"", 0),
        ] {
            let text = format!("{}\n[masking.profiles.p.dictionary]\n{table}\n", files.good());
            let error = files.load(&text).unwrap_err().to_string();
            let error = error.replace(&files.dir.path().display().to_string(), "DIR");
            assert!(!error.contains("Osp") && !error.contains("rey"), "{error}");
            let line = text[..text.find(table).unwrap()].matches('\n').count() + 1 + lines_in;
            assert!(error.contains(&format!("line {line}, column ")), "{error}");
        }
        // A key is named; so is a table's.
        let error = files.load(&format!("{}\n[masking.profiles.p.dictionary]\nword = []\n", files.good()));
        assert!(error.unwrap_err().to_string().contains("(`word`)"));
    }

    #[test]
    fn the_test_configuration_loads() {
        let files = Files::new();
        let config = files.load(&files.good()).unwrap();
        assert_eq!(config.seal_keys.len(), 2);
        assert_eq!(config.identity.role_for(&["analysts".into()]), Some("ANALYST"));
        assert_eq!(config.identity.role_for(&["other".into()]), Some("READER"));
    }

    #[test]
    fn the_approvals_ledger_fits_the_largest_statement_request() {
        let files = Files::new();
        let ledger = files.load(&files.good()).unwrap().approvals.ledger;
        // 16 MiB bodies by default: a parked one may hold 32 MiB (text and bindings, then the body).
        assert!(ledger.stored_bytes_per_subject_max >= 32 << 20, "{ledger:?}");
        assert!(ledger.stored_bytes_max >= 2 * ledger.stored_bytes_per_subject_max, "{ledger:?}");
        let raised = format!("{}\n[limits]\nstatement_request_bytes_max = {}\n", files.good(), 64 << 20);
        let ledger = files.load(&raised).unwrap().approvals.ledger;
        assert!(ledger.stored_bytes_per_subject_max > 128 << 20, "{ledger:?}");
        assert!(ledger.stored_bytes_max >= 2 * ledger.stored_bytes_per_subject_max, "{ledger:?}");
    }

    #[test]
    fn tokens_live_at_most_token_lifetime_max_secs() {
        let files = Files::new();
        let good = files.good();
        let lifetime_max = |config: Config| config.identity.verifier.lifetime_max;
        assert_eq!(lifetime_max(files.load(&good).unwrap()), Duration::from_secs(86_400));
        let default_role = r#"default_role = "READER""#;
        let with =
            |secs: u64| replaced(&good, default_role, &format!("{default_role}\ntoken_lifetime_max_secs = {secs}"));
        assert_eq!(lifetime_max(files.load(&with(900)).unwrap()), Duration::from_secs(900));
        for secs in [0, 59, 366 * 86_400 + 1] {
            assert_refused(files.load(&with(secs)), "identity.token_lifetime_max_secs", &["between 60 and"]);
        }
    }

    #[test]
    fn sessions_last_at_most_session_max_secs() {
        let files = Files::new();
        let good = files.good();
        assert_eq!(files.load(&good).unwrap().identity.session_max, Duration::from_secs(12 * 3600));
        let default_role = r#"default_role = "READER""#;
        let with = |secs: u64| replaced(&good, default_role, &format!("{default_role}\nsession_max_secs = {secs}"));
        assert_eq!(files.load(&with(600)).unwrap().identity.session_max, Duration::from_secs(600));
        for secs in [0, 59, 7 * 24 * 3600 + 1] {
            assert_refused(files.load(&with(secs)), "identity.session_max_secs", &["between 60 and"]);
        }
    }

    #[test]
    fn empty_roles_and_groups_are_refused_naming_the_key() {
        let files = Files::new();
        let good = files.good();
        let mapping = r#"roles = [{ group = "analysts", role = "ANALYST" }]"#;
        let cases = [
            (replaced(&good, r#"default_role = "READER""#, r#"default_role = """#), "identity.default_role"),
            (replaced(&good, r#"default_role = "READER""#, r#"default_role = "  ""#), "identity.default_role"),
            (replaced(&good, mapping, r#"roles = [{ group = "analysts", role = "" }]"#), "identity.roles[0].role"),
            (
                replaced(&good, mapping, r#"roles = [{ group = "a", role = "A" }, { group = "", role = "B" }]"#),
                "identity.roles[1].group",
            ),
            (format!("{good}\n[approvals]\nadmin_groups = [\"dba\", \"\"]\n"), "approvals.admin_groups"),
        ];
        for (text, key) in cases {
            assert_refused(files.load(&text), key, &["empty"]);
        }
    }

    #[test]
    fn runtime_flags_out_of_range_are_refused_naming_the_flag() {
        let files = Files::new();
        let good = files.good();
        type Change = fn(&mut RuntimeSettings);
        let refused: [(&str, Change); 18] = [
            ("--cores", |r| r.cores = 0),
            ("--cores", |r| r.cores = 65_536),
            ("--cores", |r| r.cores = CORES_MAX + 1),
            ("--uring-entries", |r| r.uring_entries = 0),
            ("--uring-entries", |r| r.uring_entries = 65_536),
            ("--read-buffer-bytes", |r| r.read_buffer_bytes = 512),
            ("--read-buffer-bytes", |r| r.read_buffer_bytes = 1 << 40),
            ("--upstream-pool-size", |r| r.upstream_pool_size = 1_000_000_000_000),
            ("--max-connections", |r| r.max_connections = 0),
            ("--drain-timeout-secs", |r| r.drain_timeout = Duration::from_secs(u64::MAX)),
            ("--classifier-threads", |r| r.classifier_threads = 0),
            ("--classifier-threads", |r| r.classifier_threads = 1 << 40),
            ("--recording-segment-mib", |r| r.recording.segment_bytes_max = 0),
            ("--recording-segment-mib", |r| r.recording.segment_bytes_max = 4097 << 20),
            ("--recording-queue-depth", |r| r.recording.queue_depth = 0),
            ("--recording-queue-mib", |r| r.recording.queue_bytes_max = 0),
            ("--recording-zstd-level", |r| r.recording.zstd_level = 1000),
            ("--recording-linger-us", |r| r.recording.linger = Duration::from_secs(1)),
        ];
        for (flag, change) in refused {
            let mut settings = runtime();
            change(&mut settings);
            assert_refused(files.load_with(&good, settings), flag, &[]);
        }
        // The size flags name their unit.
        let mut settings = runtime();
        settings.recording.segment_bytes_max = 0;
        assert_refused(files.load_with(&good, settings), "--recording-segment-mib", &["MiB", "4096"]);
        // Every bound itself is accepted.
        let mut most = runtime();
        most.cores = CORES_MAX;
        most.uring_entries = URING_ENTRIES_MAX;
        most.read_buffer_bytes = READ_BUFFER_BYTES_MAX;
        most.upstream_pool_size = UPSTREAM_POOL_SIZE_MAX;
        most.drain_timeout = Duration::from_secs(DRAIN_TIMEOUT_SECS_MAX);
        most.classifier_threads = CLASSIFIER_THREADS_MAX;
        most.recording.segment_bytes_max = 4096 << 20;
        files.load_with(&good, most).unwrap();
        let mut least = runtime();
        least.read_buffer_bytes = READ_BUFFER_BYTES_MIN;
        least.upstream_pool_size = 0;
        least.drain_timeout = Duration::ZERO;
        least.recording.segment_bytes_max = 1 << 20;
        files.load_with(&good, least).unwrap();
    }

    #[test]
    fn a_bad_recording_key_is_called_the_recording_key() {
        let files = Files::new();
        files.write("short.key", &"7c".repeat(31), 0o600);
        let text = replaced(&files.good(), r#"key_file = "recording.key""#, r#"key_file = "short.key""#);
        let error = files.load(&text).err().unwrap();
        assert_eq!(error.key, "recording.key_file");
        assert!(error.problem.contains("recording key must be 64 hex digits"), "{error}");
        assert!(!error.problem.contains("sealing"), "{error}");
        let text = replaced(&files.good(), r#"seal_key_file = "seal.key""#, r#"seal_key_file = "short.key""#);
        assert_refused(files.load(&text), "tokens.seal_key_file", &["sealing key must be 64 hex digits"]);
    }

    #[test]
    fn an_environment_variable_that_is_not_utf8_is_not_called_unset() {
        let not_unicode = std::env::VarError::NotUnicode(std::ffi::OsString::from("x"));
        let error = env_problem("tokens.seal_key_env", "SEAL", &not_unicode);
        assert_eq!(error.to_string(), "config: tokens.seal_key_env: environment variable SEAL is not valid UTF-8");
        let error = env_problem("upstream.password_env", "PW", &std::env::VarError::NotPresent);
        assert_eq!(error.to_string(), "config: upstream.password_env: environment variable PW is not set");
    }

    #[cfg(unix)]
    #[test]
    fn key_files_open_to_group_or_others_are_refused() {
        let files = Files::new();
        let good = files.good();
        // Readable by others (0644, 0604, 0444), writable by group or others (0620, 0602, 0660).
        for mode in [0o644, 0o604, 0o444, 0o620, 0o602, 0o660, 0o777] {
            files.write("open.key", &"3a".repeat(32), mode);
            let cases = [
                (
                    replaced(&good, r#"seal_key_file = "seal.key""#, r#"seal_key_file = "open.key""#),
                    "tokens.seal_key_file",
                ),
                (replaced(&good, r#"["previous.key"]"#, r#"["open.key"]"#), "tokens.previous_key_files"),
                (replaced(&good, r#"key_file = "recording.key""#, r#"key_file = "open.key""#), "recording.key_file"),
                (
                    replaced(&good, r#"password_file = "password""#, r#"password_file = "open.key""#),
                    "upstream.password_file",
                ),
                (
                    replaced(&good, r#"password_file = "password""#, r#"private_key_file = "open.key""#),
                    "upstream.private_key_file",
                ),
                (
                    replaced(
                        &good,
                        "plaintext = true",
                        r#"tls_cert_file = "open.key"
tls_key_file = "open.key""#,
                    ),
                    "listen.tls_key_file",
                ),
            ];
            let path = files.path("open.key");
            for (text, key) in cases {
                assert_refused(files.load(&text), key, &[path.to_str().unwrap(), &format!("mode {mode:04o}")]);
            }
        }
        // Owner-only and group-read modes pass the check (the hex key then loads).
        for mode in [0o600, 0o400, 0o640, 0o440] {
            let name = format!("owner-{mode:o}.key");
            files.write(&name, &"3a".repeat(32), mode);
            files.load(&replaced(&good, r#"key_file = "recording.key""#, &format!("key_file = \"{name}\""))).unwrap();
        }
    }

    #[test]
    fn parses_upstream_urls() {
        let u = UpstreamUrl::parse("https://acct.snowflakecomputing.com").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "acct.snowflakecomputing.com", 443));
        assert_eq!(u.host_header(), "acct.snowflakecomputing.com");
        let u = UpstreamUrl::parse("http://127.0.0.1:8081/").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 8081));
        assert_eq!(u.host_header(), "127.0.0.1:8081");
        assert!(UpstreamUrl::parse("ftp://x").is_none());
        assert!(UpstreamUrl::parse("https://x/path").is_none());
        assert!(UpstreamUrl::parse("https://user@x").is_none());
        assert!(UpstreamUrl::parse("http://x:notaport").is_none());
    }

    #[test]
    fn jwks_urls_in_clear_only_to_this_machine() {
        for ok in ["http://127.0.0.1:8080/jwks", "http://localhost/jwks", "http://[::1]:9/k", "http://127.9.9.9"] {
            assert!(loopback_http(ok), "{ok}");
        }
        for refused in [
            "http://idp.example.com/jwks",
            "http://10.0.0.1/jwks",
            "http://127.0.0.1.evil.example/jwks",
            "http://localhost.evil.example/",
            "http://127.0.0.1@evil.example/",
            "https://127.0.0.1/",
            // What follows the host must be a port: the URL parser reads these as host names.
            "http://[::1]x.evil:80/",
            "http://[::1]x.evil/",
            "http://[::1/",
            "http://127.0.0.1:80:90/",
            "http://localhost:x/",
        ] {
            assert!(!loopback_http(refused), "{refused}");
        }
    }

    #[test]
    fn hex_keys() {
        assert_eq!(parse_hex_key("k", "a key", &"ab".repeat(32)).unwrap(), vec![0xab; 32]);
        assert!(parse_hex_key("k", "a key", "abc").is_err());
        assert!(parse_hex_key("k", "a key", &"zz".repeat(32)).is_err());
    }

    #[test]
    fn role_mapping_is_ordered_with_a_default() {
        let identity = Identity {
            verifier: IdentityConfig::new("https://idp", vec!["snowgate".into()]),
            jwks: JwksSource::Url("https://idp/jwks".into()),
            roles: vec![
                RoleMapping { group: "admins".into(), role: "ADMIN".into() },
                RoleMapping { group: "analysts".into(), role: "ANALYST".into() },
            ],
            default_role: None,
            session_max: Duration::from_secs(3600),
        };
        assert_eq!(identity.role_for(&["analysts".into(), "admins".into()]), Some("ADMIN"));
        assert_eq!(identity.role_for(&["analysts".into()]), Some("ANALYST"));
        assert_eq!(identity.role_for(&["other".into()]), None);
    }
}
