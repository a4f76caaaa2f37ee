//! `snowgate-tools dev`: everything a loopback development setup needs, generated locally: an
//! identity provider key and its JWKS, the gateway's upstream key pair, a sealing key, a config
//! file, and signed agent tokens. None of it is fit for production.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Subcommand;
use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;

/// The issuer of dev tokens.
pub const DEV_ISSUER: &str = "https://idp.snowgate.dev";
/// The audience of dev agent tokens.
pub const DEV_AUDIENCE: &str = "snowgate";
/// The audience of dev reviewer tokens (the admin API), kept apart from the agents'.
pub const DEV_REVIEWER_AUDIENCE: &str = "snowgate-review";
/// The key id of the dev identity provider key.
pub const DEV_KID: &str = "dev-1";

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Writes idp.pem, jwks.json, upstream.pem, seal.key, recording.key and snowgate.toml
    /// into DIR (the keys readable by this user only).
    Init {
        /// Directory to write into (created if missing).
        #[arg(long, env = "SNOWGATE_DEV_DIR", default_value = ".dev")]
        dir: PathBuf,
        /// Where the gateway listens.
        #[arg(long, env = "SNOWGATE_DEV_LISTEN", default_value = "127.0.0.1:8443")]
        listen: String,
        /// The upstream (an emulator on loopback).
        #[arg(long, env = "SNOWGATE_DEV_UPSTREAM", default_value = "http://127.0.0.1:8081")]
        upstream_url: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Prints an agent token (or with --reviewer a reviewer's) signed by the dev identity
    /// provider in DIR.
    Token {
        /// Directory holding idp.pem.
        #[arg(long, env = "SNOWGATE_DEV_DIR", default_value = ".dev")]
        dir: PathBuf,
        /// The agent's identity (`sub`).
        #[arg(long, default_value = "agent-dev")]
        sub: String,
        /// Comma-separated groups.
        #[arg(long, default_value = "analysts")]
        groups: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// A reviewer's token for the admin API (its audience is the reviewers', not the agents').
        #[arg(long)]
        reviewer: bool,
    },
}

pub fn run(command: DevCommand) -> anyhow::Result<()> {
    match command {
        DevCommand::Init { dir, listen, upstream_url, force } => init(&dir, &listen, &upstream_url, force),
        DevCommand::Token { dir, sub, groups, ttl_secs, reviewer } => {
            let groups: Vec<&str> = groups.split(',').filter(|g| !g.is_empty()).collect();
            let audience = if reviewer { DEV_REVIEWER_AUDIENCE } else { DEV_AUDIENCE };
            println!("{}", mint_token(&dir.join("idp.pem"), audience, &sub, &groups, ttl_secs)?);
            Ok(())
        }
    }
}

fn new_rsa_key() -> anyhow::Result<rsa::RsaPrivateKey> {
    rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).context("generating an RSA key")
}

fn write_new(path: &Path, contents: &str, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        return Ok(());
    }
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// [`write_new`] for a secret (a private key, a sealing or recording key): readable and
/// writable by this user only (mode 0600), as the gateway requires of its key files. One kept
/// from an earlier `dev init` is made private too.
fn write_new_secret(path: &Path, contents: &str, force: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let context = || format!("writing {}", path.display());
    if path.exists() && !force {
        #[cfg(unix)]
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).with_context(context)?;
        return Ok(());
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(context)?;
    // The mode above applies only to a file created now.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600)).with_context(context)?;
    file.write_all(contents.as_bytes()).with_context(context)
}

/// The JWKS document for a public key.
pub fn jwks_for(public: &rsa::RsaPublicKey, kid: &str) -> serde_json::Value {
    serde_json::json!({"keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
        "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
    }]})
}

fn init(dir: &Path, listen: &str, upstream_url: &str, force: bool) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let idp_path = dir.join("idp.pem");
    if force || !idp_path.exists() {
        let idp = new_rsa_key()?;
        write_new_secret(&idp_path, &idp.to_pkcs8_pem(LineEnding::LF)?, true)?;
        let jwks = jwks_for(&idp.to_public_key(), DEV_KID);
        write_new(&dir.join("jwks.json"), &serde_json::to_string_pretty(&jwks)?, true)?;
    }
    let upstream_path = dir.join("upstream.pem");
    if force || !upstream_path.exists() {
        write_new_secret(&upstream_path, &new_rsa_key()?.to_pkcs8_pem(LineEnding::LF)?, true)?;
    }
    let mut seal = [0u8; 32];
    rsa::rand_core::RngCore::fill_bytes(&mut rsa::rand_core::OsRng, &mut seal);
    let seal_hex: String = seal.iter().map(|b| format!("{b:02x}")).collect();
    write_new_secret(&dir.join("seal.key"), &seal_hex, force)?;
    let mut recording_key = [0u8; 32];
    rsa::rand_core::RngCore::fill_bytes(&mut rsa::rand_core::OsRng, &mut recording_key);
    let recording_hex: String = recording_key.iter().map(|b| format!("{b:02x}")).collect();
    write_new_secret(&dir.join("recording.key"), &recording_hex, force)?;
    let config = format!(
        r#"# snowgate development config, written by `snowgate-tools dev init`. Loopback only.
[listen]
address = "{listen}"
plaintext = true

[upstream]
account = "DEVACCT"
url = "{upstream_url}"
user = "SNOWGATE"
private_key_file = "upstream.pem"

[identity]
issuer = "{DEV_ISSUER}"
audience = ["{DEV_AUDIENCE}"]
jwks_file = "jwks.json"
groups_claim = "groups"
roles = [{{ group = "analysts", role = "ANALYST" }}, {{ group = "admins", role = "SYSADMIN" }}]

[tokens]
seal_key_file = "seal.key"

[recording]
directory = "recordings"
key_file = "recording.key"          # snowgate-tools verify --key-file .dev/recording.key

[approvals]
admin_address = "127.0.0.1:8444"    # snowgate-tools approvals list
admin_groups = ["dba"]
reviewer_audience = ["{DEV_REVIEWER_AUDIENCE}"]   # snowgate-tools dev token --reviewer
poll_hold_ms = 10000

# First match wins; see src/policy/mod.rs for every kind and field.
[policy]
default = {{ action = "deny", message = "No snowgate rule allows this statement." }}

[[policy.rules]]
name = "no destruction"
groups = ["*"]
kinds = ["drop", "truncate", "delete_all", "update_all", "create_or_replace", "undrop"]
action = "deny"
message = "Destructive statements are blocked for agents."

[[policy.rules]]
name = "no exfiltration or privilege changes"
groups = ["*"]
kinds = ["copy_into_location", "get", "put", "grant", "revoke", "use_role", "use_secondary_roles",
         "alter_session_sensitive", "execute_immediate_dynamic", "system_function"]
action = "deny"
message = "This statement could move data or rights out of policy."

[[policy.rules]]
name = "writes need a DBA"
groups = ["*"]
kinds = ["insert", "update", "delete", "merge", "call"]
action = "review"
approvals = 1
reviewer_groups = ["dba"]
timeout_secs = 600
message = "Waiting for a DBA to approve this write."

[[policy.rules]]
name = "reads and setup, masked"
groups = ["*"]
kinds = ["*"]
action = "allow"
masking_profile = "standard"

[masking.profiles.standard.detectors]
card = {{ mask = {{ style = "keep_last", keep = 4 }} }}

[[masking.profiles.standard.columns]]
name = "*SSN*"
mask = {{ style = "full" }}
"#
    );
    write_new(&dir.join("snowgate.toml"), &config, force)?;
    println!("{}", dir.join("snowgate.toml").display());
    Ok(())
}

/// Signs a token for `audience` with the dev identity provider key at `idp_pem`.
pub fn mint_token(idp_pem: &Path, audience: &str, sub: &str, groups: &[&str], ttl_secs: u64) -> anyhow::Result<String> {
    if sub.is_empty() {
        bail!("--sub must not be empty");
    }
    let pem = fs::read(idp_pem).with_context(|| format!("reading {}", idp_pem.display()))?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).context("the identity provider key is not RSA PEM")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "iss": DEV_ISSUER, "aud": audience, "sub": sub, "groups": groups,
        "iat": now, "nbf": now, "exp": now + ttl_secs,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(DEV_KID.to_owned());
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_loadable_config_and_tokens_verify() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "127.0.0.1:0", "http://127.0.0.1:9", false).unwrap();
        let runtime = snowgate::config::RuntimeSettings {
            cores: 1,
            pin_cpus: false,
            uring_entries: 64,
            read_buffer_bytes: 4096,
            upstream_pool_size: 1,
            max_connections: 10,
            drain_timeout: std::time::Duration::from_secs(1),
            classifier_threads: 1,
            recording: Default::default(),
        };
        #[cfg(unix)]
        for secret in ["idp.pem", "upstream.pem", "seal.key", "recording.key"] {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(secret)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{secret} has mode {mode:o}");
        }
        let config = snowgate::config::Config::load(&dir.path().join("snowgate.toml"), runtime).unwrap();
        let verifier =
            snowgate::identity::Verifier::new(config.identity.verifier.clone(), config.identity.jwks.clone()).unwrap();
        let token = mint_token(&dir.path().join("idp.pem"), DEV_AUDIENCE, "alice", &["analysts"], 60).unwrap();
        let identity = verifier.verify(&token, std::time::Instant::now()).unwrap();
        assert_eq!(identity.sub, "alice");
        assert_eq!(config.identity.role_for(&identity.groups), Some("ANALYST"));
        // Reviewers' tokens are for the admin API only.
        let reviewer = mint_token(&dir.path().join("idp.pem"), DEV_REVIEWER_AUDIENCE, "dba-1", &["dba"], 60).unwrap();
        let now = std::time::Instant::now();
        assert!(verifier.verify_for(&reviewer, now, snowgate::identity::TokenUse::Reviewer).is_ok());
        assert!(verifier.verify(&reviewer, now).is_err());
        assert!(verifier.verify_for(&token, now, snowgate::identity::TokenUse::Reviewer).is_err());
    }
}
