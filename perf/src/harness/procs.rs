//! The processes under test: snowgate and nginx as pinned child processes (killed on drop),
//! their generated configuration files, and the open-files limit they need.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

/// How long a proxy may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A child process, killed (and reaped) on drop.
#[derive(Debug)]
pub struct ChildProcess {
    child: Child,
    /// What it is, for messages.
    pub name: String,
}

impl ChildProcess {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

/// How long a stopping process may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

impl Drop for ChildProcess {
    /// Stops the process gracefully (SIGTERM: nginx's master then stops its workers, snowgate
    /// drains), then kills it and any descendant left behind, so no worker outlives a run.
    fn drop(&mut self) {
        let pid = self.pid();
        let descendants: Vec<u32> = super::measure::process_tree(pid).into_iter().skip(1).collect();
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).stderr(Stdio::null()).status();
        let started = Instant::now();
        while !self.exited() && started.elapsed() < STOP_TIMEOUT {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for descendant in descendants {
            if Path::new(&format!("/proc/{descendant}")).exists() {
                let _ = Command::new("kill").arg("-KILL").arg(descendant.to_string()).stderr(Stdio::null()).status();
            }
        }
    }
}

/// `taskset -c <cpus>` as a prefix, so the process and its children stay on those CPUs; with
/// `realtime`, under `chrt -f 1` too (see [`realtime_allowed`]).
fn pinned_command(cpus: &str, program: &Path, realtime: bool) -> Command {
    let mut command = if realtime {
        let mut chrt = Command::new("chrt");
        chrt.args(["-f", "1", "taskset"]);
        chrt
    } else {
        Command::new("taskset")
    };
    command.arg("-c").arg(cpus).arg(program);
    command
}

/// Whether this process may start real-time (SCHED_FIFO) processes. The open loop runs the
/// double and the proxy at the lowest real-time priority when it may: on a CPU shared with
/// other work, the kernel's fair scheduler lets a running task finish its slice (milliseconds)
/// before a woken one runs, whatever their nice values, which would measure the neighbours'
/// builds instead of the proxy. Real-time tasks preempt at once; the kernel's real-time
/// throttling still leaves the others 5% of each second.
pub fn realtime_allowed() -> bool {
    Command::new("chrt")
        .args(["-f", "1", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes threads of this process real-time (SCHED_FIFO, priority 1). Returns how many were.
pub fn make_threads_realtime(tids: &[u32]) -> usize {
    tids.iter()
        .filter(|tid| {
            Command::new("chrt")
                .args(["-f", "-p", "1", &tid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .count()
}

/// A `--cpu-list` string for taskset (`0`, `0,1`).
pub fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

/// Raises this process's soft RLIMIT_NOFILE to `wanted` (up to its hard limit) with
/// `prlimit`, since the harness may not use unsafe code to call setrlimit itself. Children
/// inherit the limit. Returns the soft limit now in force.
pub fn raise_open_files_limit(wanted: u64) -> u64 {
    let current = open_files_limit();
    if current.0 >= wanted {
        return current.0;
    }
    let target = wanted.min(current.1);
    let _ = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={target}:{}", current.1))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    open_files_limit().0
}

/// The (soft, hard) open-files limit of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> (u64, u64) {
    let parse = |s: &str| if s == "unlimited" { Some(u64::MAX) } else { s.parse().ok() };
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            let mut fields = line["Max open files".len()..].split_whitespace();
            Some((parse(fields.next()?)?, parse(fields.next()?)?))
        })
        .unwrap_or((1024, 1024))
}

/// The nice value the harness asks for: the highest priority short of real time.
pub const NICE: i32 = -20;

/// Raises the calling thread's priority to [`NICE`] with `renice` (on Linux, nice is per
/// thread, and threads and processes started afterwards inherit it), so that the double, the
/// load generator and the proxies win their CPUs from other work on a shared machine while
/// still leaving it time (unlike real-time scheduling). Returns the nice value in force; a
/// caller without the privilege keeps its own.
pub fn raise_priority() -> i32 {
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|link| link.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u32>().ok()))
        .unwrap_or_else(std::process::id);
    let _ = Command::new("renice")
        .args(["-n", &NICE.to_string(), "-p", &tid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = &stat[stat.rfind(')')? + 1..];
            // Fields after the name: state is 3rd overall, nice is the 19th.
            after_name.split_whitespace().nth(16)?.parse().ok()
        })
        .unwrap_or(0)
}

/// A free TCP port on 127.0.0.1 (bound and released; nginx needs a port in its file).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts connections on `addr`.
fn wait_listening(addr: SocketAddr, process: &mut ChildProcess) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if process.exited() {
            bail!("{} exited before listening on {addr}", process.name);
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("{} did not listen on {addr} within {START_TIMEOUT:?}", process.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where a proxy runs: its CPUs, its cores (snowgate `--cores`, nginx workers), and whether
/// it runs real-time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPlacement {
    /// CPUs it is pinned to.
    pub cpus: Vec<usize>,
    /// Gateway cores or nginx workers.
    pub cores: usize,
    /// SCHED_FIFO priority 1 (see [`realtime_allowed`]).
    pub realtime: bool,
}

/// How the gateway under test listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Plain HTTP.
    Plain,
    /// TLS with the committed test certificate (`tests/fixtures/tls/localhost.pem`).
    Tls,
}

/// Writes the gateway's configuration into `dir`: upstream = the double at `upstream` with
/// the committed key-pair test key, identity = the committed test IdP, recordings in
/// `dir/recordings`, then `extra` (a scenario's additional TOML) appended.
pub fn write_gateway_config(
    dir: &Path,
    repo_root: &Path,
    upstream: SocketAddr,
    listener: Listener,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let seal_key = dir.join("seal.key");
    write_private(&seal_key, b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")?;
    let recording_key = dir.join("recording.key");
    write_private(&recording_key, b"ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100")?;
    // The committed keys are checked out readable by everyone, which the gateway refuses for a
    // key file: it reads private copies.
    let upstream_key = dir.join("upstream.p8");
    write_private(&upstream_key, &std::fs::read(repo_root.join("perf/tests/fixtures/test_key.p8"))?)?;
    let listen = match listener {
        Listener::Plain => "plaintext = true".to_owned(),
        Listener::Tls => {
            let tls_key = dir.join("localhost.key");
            write_private(&tls_key, &std::fs::read(repo_root.join("tests/fixtures/tls/localhost.key"))?)?;
            format!(
                "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
                repo_root.join("tests/fixtures/tls/localhost.pem").display(),
                tls_key.display()
            )
        }
    };
    let config = format!(
        r#"[listen]
address = "127.0.0.1:0"
{listen}

[upstream]
account = "TESTACCT"
url = "http://{upstream}"
user = "SNOWGATE"
private_key_file = "{key}"

[identity]
issuer = "https://idp.perf.snowgate"
audience = ["snowgate-perf"]
jwks_file = "{jwks}"
roles = [{{ group = "analysts", role = "ANALYST" }}]

[tokens]
seal_key_file = "{seal}"

[limits]
idle_timeout_ms = 600000

[recording]
directory = "{recordings}"
key_file = "{recording_key}"

[policy]
default = {{ action = "deny", message = "not in the perf policy" }}

{extra}
"#,
        recording_key = recording_key.display(),
        key = upstream_key.display(),
        jwks = repo_root.join("tests/fixtures/keys/jwks.json").display(),
        seal = seal_key.display(),
        recordings = dir.join("recordings").display(),
    );
    let path = dir.join("snowgate.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// Writes a key file readable and writable by this user only (mode 0600), as the gateway
/// requires.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    // A file left by an earlier run keeps its mode through the open above.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(contents)
}

/// Asks the gateway binary whether it accepts `config` and `flags` (`--check-config`);
/// `Err` carries its complaint. This is how scenarios needing knobs the gateway does not have
/// yet are skipped rather than failed.
pub fn gateway_accepts(gateway_bin: &Path, config: &Path, flags: &[String]) -> Result<(), String> {
    let output = Command::new(gateway_bin)
        .arg("--config")
        .arg(config)
        .args(flags)
        .arg("--check-config")
        .env("SNOWGATE_LOG", "error")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", gateway_bin.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("rejected").trim();
    Err(line.chars().take(200).collect())
}

/// Whether `gateway_bin` is the `bench-unrecorded` build (its `--version` says so), so that a
/// run never measures the wrong build under a scenario's name.
pub fn gateway_is_unrecorded(gateway_bin: &Path) -> Result<bool, String> {
    let output = Command::new(gateway_bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", gateway_bin.display()))?;
    if !output.status.success() {
        return Err(format!("{} --version failed", gateway_bin.display()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).contains("bench-unrecorded"))
}

/// Starts the gateway as placed, with `--cores <cores>`, and waits for its address
/// (it prints `snowgate listening on <addr>` on stdout).
pub fn start_gateway(
    gateway_bin: &Path,
    config: &Path,
    placement: &ProxyPlacement,
    flags: &[String],
) -> anyhow::Result<(ChildProcess, SocketAddr)> {
    let cores = placement.cores;
    let mut command = pinned_command(&cpu_list(&placement.cpus), gateway_bin, placement.realtime);
    command
        .arg("--config")
        .arg(config)
        .arg("--cores")
        .arg(cores.to_string())
        .arg("--max-connections")
        .arg("100000")
        .args(flags)
        .env("SNOWGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {} (are taskset and the gateway built?)", gateway_bin.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let process = ChildProcess { child, name: "snowgate".into() };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr: SocketAddr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("snowgate printed no address: {line:?}"))?;
    Ok((process, addr))
}

/// The nginx binary: `$SNOWGATE_PERF_NGINX`, else `nginx` on the PATH or in `/usr/sbin`.
pub fn find_nginx() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SNOWGATE_PERF_NGINX") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
}

/// The nginx configuration of the fair peer: `proxy_pass` to an `upstream` block with
/// `keepalive`, HTTP/1.1 upstream with the `Connection` header cleared, access log off,
/// `workers` worker processes, keep-alive limits high enough never to close a benchmark
/// connection, and every temporary path inside `dir` so it runs unprivileged.
pub fn nginx_config(dir: &Path, listen_port: u16, upstream: SocketAddr, workers: usize) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 65536;

events {{
    worker_connections 20000;
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    client_body_buffer_size 64k;
    client_max_body_size 64m;

    upstream snowflake {{
        server {upstream};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}

    server {{
        listen 127.0.0.1:{listen_port};
        location / {{
            proxy_pass http://snowflake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 16k;
            proxy_buffers 16 16k;
        }}
    }}
}}
"#
    )
}

/// Starts nginx as placed (`cores` workers) in front of `upstream`, as a child
/// process (`-p <dir> -c <dir>/nginx.conf -g 'daemon off;'`), and waits until it listens.
pub fn start_nginx(
    nginx: &Path,
    dir: &Path,
    upstream: SocketAddr,
    placement: &ProxyPlacement,
) -> anyhow::Result<(ChildProcess, SocketAddr)> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_config(dir, port, upstream, placement.cores))?;
    let mut command = pinned_command(&cpu_list(&placement.cpus), nginx, placement.realtime);
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-g")
        .arg("daemon off;")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = command.spawn().with_context(|| format!("starting {}", nginx.display()))?;
    let mut process = ChildProcess { child, name: "nginx".into() };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr, &mut process)?;
    Ok((process, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_config_is_the_fair_peer() {
        let conf = nginx_config(Path::new("/tmp/x"), 8080, "127.0.0.1:9000".parse().unwrap(), 1);
        for needle in [
            "worker_processes 1;",
            "keepalive 64;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "access_log off;",
            "server 127.0.0.1:9000;",
            "listen 127.0.0.1:8080;",
            "proxy_pass http://snowflake;",
        ] {
            assert!(conf.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn open_files_limit_reads_proc() {
        let (soft, hard) = open_files_limit();
        assert!(soft >= 16 && hard >= soft, "{soft} {hard}");
        assert_eq!(cpu_list(&[0, 1]), "0,1");
    }
}
