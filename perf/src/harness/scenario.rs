//! The scenarios, as data: what sits between the load generator and the double. Adding a
//! gateway configuration to the comparison is one entry in [`SCENARIOS`]: a name, the TOML
//! appended to the harness's gateway configuration, and extra gateway flags. A scenario whose
//! configuration or flags the gateway binary rejects (`--check-config`) is skipped with the
//! gateway's complaint in the report, so entries can be added before the gateway has the knob.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::loadgen::LoginKind;
use super::measure::Probe;
use super::procs::{self, ChildProcess, Listener, ProxyPlacement};

/// What stands between the agents and the double.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    /// Nothing: agents talk to the double.
    Direct,
    /// nginx as a plain reverse proxy (the fair peer).
    Nginx,
    /// snowgate with a configuration.
    Snowgate {
        /// TOML appended to the harness's gateway configuration (`{recordings}` is replaced
        /// by the recording directory of the run).
        config_extra: &'static str,
        /// Extra command-line flags.
        flags: &'static [&'static str],
        /// Run the `bench-unrecorded` build ([`Environment::unrecorded_bin`]), which records
        /// nothing: the "recording off" side of what recording costs.
        unrecorded: bool,
    },
}

/// One scenario of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// Its name in tables and on the command line.
    pub name: &'static str,
    /// The proxy.
    pub proxy: Proxy,
    /// One line for the report.
    pub about: &'static str,
}

/// Every scenario, in report order.
pub const SCENARIOS: &[Scenario] = &[
    Scenario { name: "direct", proxy: Proxy::Direct, about: "agents talk to the double" },
    Scenario { name: "nginx", proxy: Proxy::Nginx, about: "nginx proxy_pass, upstream keepalive, HTTP/1.1, logs off" },
    Scenario {
        name: "snowgate-forward",
        proxy: Proxy::Snowgate { config_extra: FORWARD_POLICY, flags: &["--durability", "none"], unrecorded: false },
        about: "policy (classification) + token swap + recording (durability none), no masking",
    },
    Scenario {
        name: "snowgate-full-unrecorded",
        proxy: Proxy::Snowgate { config_extra: FULL_MASKING, flags: &[], unrecorded: true },
        about: "masking (perf profile), recording off (the bench-unrecorded build): what recording costs",
    },
    Scenario {
        name: "snowgate-full-none",
        proxy: Proxy::Snowgate { config_extra: FULL_MASKING, flags: &["--durability", "none"], unrecorded: false },
        about: "masking (perf profile) + recording, durability none (page cache)",
    },
    Scenario {
        name: "snowgate-full-batch",
        proxy: Proxy::Snowgate { config_extra: FULL_MASKING, flags: &["--durability", "batch"], unrecorded: false },
        about: "masking (perf profile) + recording, durability batch (group commit)",
    },
    Scenario {
        name: "snowgate-full-strict",
        proxy: Proxy::Snowgate { config_extra: FULL_MASKING, flags: &["--durability", "strict"], unrecorded: false },
        about: "masking (perf profile) + recording, durability strict (request record durable before forwarding)",
    },
];

/// The rule of the forwarding scenario: every statement allowed, nothing masked.
const FORWARD_POLICY: &str = r#"
[[policy.rules]]
name = "perf"
groups = ["*"]
kinds = ["*"]
action = "allow"
"#;

/// The rules of the full scenarios: every statement allowed and masked with the perf profile
/// (the corpus's card and SSN columns by name, every detector, a 16-word dictionary).
const FULL_MASKING: &str = r#"
[[policy.rules]]
name = "perf"
groups = ["*"]
kinds = ["*"]
action = "allow"
masking_profile = "perf"

[masking.profiles.perf.detectors]
card = { mask = { style = "keep_last", keep = 4 } }

[masking.profiles.perf.dictionary]
words = ["Project Falcon", "ACME-7731", "Blue Harbor", "Northwind", "Contoso", "Fabrikam", "Tailspin",
         "Wingtip", "Litware", "Proseware", "Adatum", "Lucerne", "Margie", "Relecloud", "Woodgrove", "Trey Research"]
mask = { style = "token", token = "[SECRET]" }

[[masking.profiles.perf.columns]]
name = "SSN"
mask = { style = "null" }
"#;

/// Looks scenarios up by name; `None` names every scenario.
pub fn select(names: Option<&[String]>) -> anyhow::Result<Vec<Scenario>> {
    let Some(names) = names else { return Ok(SCENARIOS.to_vec()) };
    names
        .iter()
        .map(|name| {
            SCENARIOS.iter().find(|s| s.name == name).copied().ok_or_else(|| {
                let known: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                anyhow::anyhow!("unknown scenario {name:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

impl Scenario {
    /// How agents log in under this scenario.
    pub fn login(&self) -> LoginKind {
        match self.proxy {
            Proxy::Snowgate { .. } => LoginKind::Oidc,
            Proxy::Direct | Proxy::Nginx => LoginKind::KeyPair,
        }
    }

    /// Whether a snowgate process is measured.
    pub fn is_snowgate(&self) -> bool {
        matches!(self.proxy, Proxy::Snowgate { .. })
    }
}

/// Where the processes run and what they are.
#[derive(Debug, Clone)]
pub struct Environment {
    /// The snowgate binary.
    pub gateway_bin: PathBuf,
    /// The `bench-unrecorded` build of it (`perf/run.sh` builds it).
    pub unrecorded_bin: PathBuf,
    /// The nginx binary, when installed.
    pub nginx_bin: Option<PathBuf>,
    /// The repository (committed keys and certificates).
    pub repo_root: PathBuf,
    /// A scratch directory for configurations and recordings.
    pub scratch: PathBuf,
}

impl Environment {
    /// The gateway binary `scenario` runs.
    pub fn binary(&self, scenario: &Scenario) -> &Path {
        match scenario.proxy {
            Proxy::Snowgate { unrecorded: true, .. } => &self.unrecorded_bin,
            _ => &self.gateway_bin,
        }
    }
}

/// A running scenario: the proxy process (none when direct) and where agents connect.
#[derive(Debug)]
pub struct Running {
    /// Where the load goes.
    pub addr: SocketAddr,
    /// The proxy process, killed on drop.
    pub process: Option<ChildProcess>,
    /// The gateway's recording directory (snowgate only).
    pub recordings: Option<PathBuf>,
}

impl Running {
    /// The probe of the proxy process, if any.
    pub fn probe(&self) -> Option<Probe> {
        self.process.as_ref().map(|p| Probe::Process(p.pid()))
    }
}

fn gateway_files(
    env: &Environment,
    scenario: &Scenario,
    tag: &str,
    upstream: SocketAddr,
    listener: Listener,
) -> anyhow::Result<(PathBuf, PathBuf, Vec<String>)> {
    let Proxy::Snowgate { config_extra, flags, .. } = scenario.proxy else {
        anyhow::bail!("{} is not a snowgate scenario", scenario.name);
    };
    let dir = env.scratch.join(format!("{}-{tag}", scenario.name));
    let _ = std::fs::remove_dir_all(&dir);
    let extra = config_extra.replace("{repo}", &env.repo_root.display().to_string());
    let config = procs::write_gateway_config(&dir, &env.repo_root, upstream, listener, &extra)?;
    Ok((config, dir.join("recordings"), flags.iter().map(|f| (*f).to_owned()).collect()))
}

/// Whether `scenario` can run here; the reason when it cannot.
pub fn check(env: &Environment, scenario: &Scenario) -> Result<(), String> {
    match scenario.proxy {
        Proxy::Direct => Ok(()),
        Proxy::Nginx => match &env.nginx_bin {
            Some(_) => Ok(()),
            None => Err("nginx is not installed (apt-get install nginx-light, or set SNOWGATE_PERF_NGINX)".into()),
        },
        Proxy::Snowgate { unrecorded, .. } => {
            let bin = env.binary(scenario);
            if !bin.is_file() {
                let how = if unrecorded {
                    "cargo build --release -p snowgate --features bench-unrecorded, then copy target/release/snowgate \
                     to that name; perf/run.sh does this"
                } else {
                    "cargo build --release -p snowgate"
                };
                return Err(format!("{} is not built ({how})", bin.display()));
            }
            if procs::gateway_is_unrecorded(bin)? != unrecorded {
                let what = if unrecorded { "records" } else { "is the bench-unrecorded build, which records nothing" };
                return Err(format!("{} {what}; rebuild it (perf/run.sh)", bin.display()));
            }
            let placeholder: SocketAddr = "127.0.0.1:9".parse().map_err(|_| "address".to_owned())?;
            let (config, _, flags) =
                gateway_files(env, scenario, "check", placeholder, Listener::Plain).map_err(|e| e.to_string())?;
            procs::gateway_accepts(bin, &config, &flags)
        }
    }
}

/// Starts `scenario`'s proxy in front of the double at `upstream`, as placed.
pub fn start(
    env: &Environment,
    scenario: &Scenario,
    tag: &str,
    upstream: SocketAddr,
    placement: &ProxyPlacement,
    listener: Listener,
) -> anyhow::Result<Running> {
    match scenario.proxy {
        Proxy::Direct => Ok(Running { addr: upstream, process: None, recordings: None }),
        Proxy::Nginx => {
            let nginx = env.nginx_bin.as_deref().ok_or_else(|| anyhow::anyhow!("nginx is not installed"))?;
            let dir = env.scratch.join(format!("nginx-{tag}"));
            let _ = std::fs::remove_dir_all(&dir);
            let (process, addr) = procs::start_nginx(nginx, &dir, upstream, placement)?;
            Ok(Running { addr, process: Some(process), recordings: None })
        }
        Proxy::Snowgate { .. } => {
            let (config, recordings, flags) = gateway_files(env, scenario, tag, upstream, listener)?;
            let (process, addr) = procs::start_gateway(env.binary(scenario), &config, placement, &flags)?;
            Ok(Running { addr, process: Some(process), recordings: Some(recordings) })
        }
    }
}

/// The repository root, from this package's manifest directory (the harness reads committed
/// keys, certificates and policies from it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_selectable() {
        let mut names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
        let picked = select(Some(&["nginx".to_owned(), "direct".to_owned()])).unwrap();
        assert_eq!(picked.iter().map(|s| s.name).collect::<Vec<_>>(), ["nginx", "direct"]);
        assert!(select(Some(&["nope".to_owned()])).is_err());
        assert_eq!(select(None).unwrap().len(), SCENARIOS.len());
    }

    #[test]
    fn logins_follow_the_proxy() {
        assert_eq!(SCENARIOS[0].login(), LoginKind::KeyPair);
        assert_eq!(select(Some(&["snowgate-forward".to_owned()])).unwrap()[0].login(), LoginKind::Oidc);
    }
}
