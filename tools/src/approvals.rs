//! `snowgate-tools approvals`: a reviewer's client for the gateway's admin API (`snowgate::admin`):
//! list the statements waiting for review, approve or deny one with a reason. It speaks plain
//! HTTP/1.1 over a `std` socket, one request per connection, with a deadline and a cap on the
//! answer; it refuses `https` URLs, because the admin listener is local (reach a remote one
//! through an SSH tunnel). It never prints the token, and it escapes control and invisible
//! characters in what the server sends (statement text comes from agents) before printing to a
//! terminal: the table replaces them, `--json` writes them as `\uXXXX` (`crate::terminal`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Subcommand;
use serde_json::Value;
use snowgate::http::{self, BodyFraming, Method};

use crate::terminal::{escape_text, to_json_line};

/// The largest answer read, in bytes: the gateway's ledger holds at most 64 MiB of statements.
const RESPONSE_BYTES_MAX: usize = 128 << 20;

/// The longest answer head read, in bytes.
const RESPONSE_HEAD_BYTES_MAX: usize = 64 * 1024;

/// The largest token file read, in bytes.
const TOKEN_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Characters of statement text shown per row of `list`.
const STATEMENT_CHARS_SHOWN: usize = 60;

/// Characters shown of other free-text columns (identity, rule).
const NAME_CHARS_SHOWN: usize = 24;

/// Characters shown of where a statement runs and of its bindings (`--json` has them whole).
const SETTINGS_CHARS_SHOWN: usize = 40;

/// The longest `--timeout-secs` accepted: an hour (a larger one would only hide a hung server,
/// and `u64::MAX` seconds from now is past what `Instant` can hold).
const TIMEOUT_SECS_MAX: u64 = 3600;

/// Where the admin API is and who is asking.
#[derive(Debug, clap::Args)]
pub struct ApprovalsArgs {
    /// The admin API's base URL. Plain `http://` only: the admin listener is local to the
    /// gateway's host (use an SSH tunnel to reach a remote one).
    #[arg(long, env = "SNOWGATE_ADMIN_URL", default_value = "http://127.0.0.1:8444", global = true)]
    admin_url: String,
    /// The reviewer's OIDC token. Prefer the environment variable or `--token-file`: a flag
    /// is visible to other users of the host in the process list.
    #[arg(long, env = "SNOWGATE_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A file holding the reviewer's OIDC token (surrounding whitespace is ignored).
    #[arg(long, env = "SNOWGATE_ADMIN_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Seconds allowed for the whole exchange (connect, send, answer), 1 to 3600.
    #[arg(
        long,
        env = "SNOWGATE_ADMIN_TIMEOUT_SECS",
        default_value_t = 10,
        global = true,
        value_parser = clap::value_parser!(u64).range(1..=TIMEOUT_SECS_MAX),
    )]
    timeout_secs: u64,
    #[command(subcommand)]
    command: ApprovalsCommand,
}

#[derive(Debug, Subcommand)]
enum ApprovalsCommand {
    /// Lists the statements waiting for your review, oldest first.
    List {
        /// Print the admin API's JSON answer (invisible and control characters as `\uXXXX`).
        #[arg(long)]
        json: bool,
    },
    /// Shows one waiting statement whole: its text line by line, its bindings, where it would
    /// run and the agent's context (`list` cuts them to fit a row).
    Show {
        /// The parked statement's query id (from `list`).
        query_id: String,
        /// Print the admin API's JSON for it (invisible and control characters as `\uXXXX`).
        #[arg(long)]
        json: bool,
    },
    /// Approves a parked statement (one of the approvals it needs).
    Approve {
        /// The parked statement's query id (from `list`).
        query_id: String,
        /// Why; recorded with the decision.
        #[arg(long)]
        reason: String,
        /// Print the admin API's JSON answer (invisible and control characters as `\uXXXX`).
        #[arg(long)]
        json: bool,
    },
    /// Denies a parked statement: the agent's driver gets an error.
    Deny {
        /// The parked statement's query id (from `list`).
        query_id: String,
        /// Why; the agent sees it, and it is recorded with the decision.
        #[arg(long)]
        reason: String,
        /// Print the admin API's JSON answer (invisible and control characters as `\uXXXX`).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ApprovalsArgs) -> anyhow::Result<()> {
    let token = token(&args)?;
    let endpoint = Endpoint::parse(&args.admin_url)?;
    let timeout = Duration::from_secs(args.timeout_secs.clamp(1, TIMEOUT_SECS_MAX));
    match args.command {
        ApprovalsCommand::List { json } => {
            let body = endpoint.call(Method::Get, "/v1/approvals", &token, None, timeout)?;
            if json {
                println!("{}", to_json_line(&body)?);
            } else {
                print!("{}", render_list(&body)?);
            }
        }
        ApprovalsCommand::Show { query_id, json } => {
            check_query_id(&query_id)?;
            let body = endpoint.call(Method::Get, "/v1/approvals", &token, None, timeout)?;
            let item = find_pending(&body, &query_id)?;
            if json {
                println!("{}", to_json_line(item)?);
            } else {
                print!("{}", render_item(item));
            }
        }
        ApprovalsCommand::Approve { query_id, reason, json } => {
            decide(&endpoint, &token, timeout, &query_id, "approve", &reason, json)?;
        }
        ApprovalsCommand::Deny { query_id, reason, json } => {
            decide(&endpoint, &token, timeout, &query_id, "deny", &reason, json)?;
        }
    }
    Ok(())
}

fn decide(
    endpoint: &Endpoint,
    token: &str,
    timeout: Duration,
    query_id: &str,
    action: &str,
    reason: &str,
    json: bool,
) -> anyhow::Result<()> {
    check_query_id(query_id)?;
    if reason.trim().is_empty() {
        bail!("--reason must not be empty");
    }
    let request = serde_json::json!({ "reason": reason }).to_string();
    let path = format!("/v1/approvals/{query_id}/{action}");
    let body = endpoint.call(Method::Post, &path, token, Some(&request), timeout)?;
    if json {
        println!("{}", to_json_line(&body)?);
    } else {
        println!("{}", render_decision(action, query_id, &body)?);
    }
    Ok(())
}

/// Refuses a query id that is not one `list` shows (it goes into a request path).
fn check_query_id(query_id: &str) -> anyhow::Result<()> {
    if query_id.is_empty() || query_id.len() > 64 || !query_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        bail!("the query id must be letters, digits and dashes (as `approvals list` shows it)");
    }
    Ok(())
}

/// The pending item with this query id in the admin API's list.
fn find_pending<'a>(body: &'a Value, query_id: &str) -> anyhow::Result<&'a Value> {
    body.get("pending")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("the admin API's list has no `pending` array"))?
        .iter()
        .find(|item| item.get("query_id").and_then(Value::as_str) == Some(query_id))
        .ok_or_else(|| {
            anyhow!("no statement {query_id} is waiting for your review (decided, timed out, or not yours to review)")
        })
}

/// The token from `--token` or `--token-file`, checked to be one header-safe word.
fn token(args: &ApprovalsArgs) -> anyhow::Result<String> {
    let token = match (&args.token, &args.token_file) {
        (Some(_), Some(_)) => {
            bail!("give the token once: --token (SNOWGATE_ADMIN_TOKEN) or --token-file (SNOWGATE_ADMIN_TOKEN_FILE)")
        }
        (Some(token), None) => token.trim().to_owned(),
        (None, Some(path)) => {
            let mut text = String::new();
            std::fs::File::open(path)
                .and_then(|file| file.take(TOKEN_FILE_BYTES_MAX + 1).read_to_string(&mut text))
                .with_context(|| format!("reading the token file {}", path.display()))?;
            if text.len() as u64 > TOKEN_FILE_BYTES_MAX {
                bail!("the token file {} is larger than {TOKEN_FILE_BYTES_MAX} bytes", path.display());
            }
            text.trim().to_owned()
        }
        (None, None) => bail!(
            "the admin API needs the reviewer's token: set SNOWGATE_ADMIN_TOKEN, or pass --token-file (or --token)"
        ),
    };
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("the token must be one word of printable ASCII");
    }
    Ok(token)
}

/// A parsed `http://host[:port][/prefix]`.
#[derive(Debug, PartialEq, Eq)]
struct Endpoint {
    /// What goes in the Host field.
    authority: String,
    host: String,
    port: u16,
    /// A path prefix, without a trailing `/` (empty for none).
    prefix: String,
}

impl Endpoint {
    fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let scheme_end = url.find("://").ok_or_else(|| anyhow!("the admin URL must start with http://"))?;
        let scheme = &url[..scheme_end];
        if scheme.eq_ignore_ascii_case("https") {
            bail!(
                "https admin URLs are not supported: the admin API is plain HTTP on a listener local to the \
                 gateway; reach a remote one through an SSH tunnel and use http://127.0.0.1:PORT"
            );
        }
        if !scheme.eq_ignore_ascii_case("http") {
            bail!("the admin URL must start with http://");
        }
        let rest = &url[scheme_end + 3..];
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty()
            || authority.contains('@')
            || !authority.bytes().all(|b| b.is_ascii_graphic())
            || prefix.contains(['?', '#'])
            || !prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            bail!("the admin URL must look like http://HOST[:PORT][/PATH], without credentials, query or fragment");
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) =
                bracketed.split_once(']').ok_or_else(|| anyhow!("the admin URL has an unclosed [IPv6 address]"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        // The reviewer's token crosses in clear: only to this machine, as the gateway's admin
        // listener is bound.
        if !(host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
        {
            bail!(
                "the admin URL's host {host} is not this machine: the admin API is plain HTTP and carries your token \
                 in clear; reach a remote gateway through an SSH tunnel and use http://127.0.0.1:PORT"
            );
        }
        let port = match port {
            Some(port) => port.parse().with_context(|| format!("the admin URL's port {port:?} is not a number"))?,
            None => 80,
        };
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() { String::new() } else { format!("/{prefix}") };
        Ok(Endpoint { authority: authority.to_owned(), host: host.to_owned(), port, prefix })
    }

    /// Sends one request and returns the JSON body of a 2xx answer; any other answer is an
    /// error carrying the server's message.
    fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = deadline_after(timeout)?;
        let mut stream = self.connect(deadline)?;
        let mut request = format!(
            "{} {}{path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {token}\r\naccept: application/json\r\nuser-agent: snowgate-tools/{}\r\nconnection: close\r\n",
            method.as_str(),
            self.prefix,
            self.authority,
            env!("CARGO_PKG_VERSION"),
        );
        if let Some(body) = body {
            request.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or_default());
        stream.set_write_timeout(Some(remaining(deadline)?))?;
        stream.write_all(request.as_bytes()).context("sending the request to the admin API")?;
        let raw = read_to_end_capped(&mut stream, deadline)?;
        let (status, body) = parse_answer(&raw, method)?;
        let json: Option<Value> = serde_json::from_slice(body).ok();
        if !(200..300).contains(&status) {
            let message = json
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(Value::as_str)
                .map(|message| escape_text(message).into_owned())
                .unwrap_or_else(|| "no error message".to_owned());
            let fault = json.as_ref().and_then(|v| v.get("fault")).and_then(Value::as_str);
            let whose = match fault {
                Some("caller") => " (the request's fault)",
                Some("server") => " (the gateway's fault)",
                _ => "",
            };
            bail!("the admin API answered HTTP {status}{whose}: {message}");
        }
        json.ok_or_else(|| anyhow!("the admin API answered HTTP {status} with a body that is not JSON"))
    }

    fn connect(&self, deadline: Instant) -> anyhow::Result<TcpStream> {
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving the admin API's host {}", self.host))?
            .collect();
        let mut last_error = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, remaining(deadline)?) {
                Ok(stream) => return Ok(stream),
                Err(error) => last_error = Some(error),
            }
        }
        match last_error {
            Some(error) => Err(error).with_context(|| format!("connecting to the admin API at {}", self.authority)),
            None => bail!("the admin API's host {} has no address", self.host),
        }
    }
}

/// The instant `timeout` from now, or an error when the clock cannot represent it.
fn deadline_after(timeout: Duration) -> anyhow::Result<Instant> {
    Instant::now()
        .checked_add(timeout)
        .ok_or_else(|| anyhow!("the timeout of {} seconds is too long", timeout.as_secs()))
}

fn remaining(deadline: Instant) -> anyhow::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("the admin API did not answer in time");
    }
    Ok(left)
}

/// Reads until the server closes (it always does, after one answer), within the deadline and
/// the size cap.
fn read_to_end_capped(stream: &mut TcpStream, deadline: Instant) -> anyhow::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(raw),
            Ok(n) => {
                if raw.len() + n > RESPONSE_BYTES_MAX {
                    bail!("the admin API's answer is larger than {RESPONSE_BYTES_MAX} bytes");
                }
                raw.extend_from_slice(&chunk[..n]);
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                bail!("the admin API did not answer in time")
            }
            Err(error) => return Err(error).context("reading the admin API's answer"),
        }
    }
}

/// The status and body of the final answer in `raw` (interim 1xx answers skipped).
fn parse_answer(mut raw: &[u8], method: Method) -> anyhow::Result<(u16, &[u8])> {
    let limits = http::Limits {
        head_bytes_max: RESPONSE_HEAD_BYTES_MAX,
        body_bytes_max: RESPONSE_BYTES_MAX,
        ..http::Limits::default()
    };
    loop {
        let head = http::parse_response_head(raw, method, &limits)
            .map_err(|error| anyhow!("the admin API's answer is malformed: {error}"))?
            .ok_or_else(|| anyhow!("the admin API closed the connection before a whole answer"))?;
        let rest = &raw[head.head_len..];
        if (100..200).contains(&head.status) {
            raw = rest;
            continue;
        }
        let body = match head.framing {
            BodyFraming::Empty => &rest[..0],
            BodyFraming::Length(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                rest.get(..n).ok_or_else(|| anyhow!("the admin API's answer was cut short"))?
            }
            BodyFraming::UntilClose => rest,
            BodyFraming::Chunked => bail!("the admin API sent a chunked answer, which this client does not read"),
        };
        return Ok((head.status, body));
    }
}

/// Flattens whitespace runs (newlines, tabs) to one space, escapes the control and invisible
/// characters left (terminal escapes, bidirectional overrides, zero-width characters) as
/// `\u{202e}` so untrusted text prints on one line, reads as it is, and cannot drive the
/// terminal, and cuts to `chars_max` characters with `…`.
fn cell(text: &str, chars_max: usize) -> String {
    let flat = escape_text(&text.split_whitespace().collect::<Vec<_>>().join(" ")).into_owned();
    if flat.chars().count() <= chars_max {
        return flat;
    }
    let mut cut: String = flat.chars().take(chars_max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `42s`, `3m05s`, `2h10m`, `3d04h`.
fn age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

fn render_list(body: &Value) -> anyhow::Result<String> {
    let pending = body
        .get("pending")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("the admin API's list has no `pending` array"))?;
    if pending.is_empty() {
        return Ok("No statements are waiting for your review.\n".to_owned());
    }
    let text = |item: &Value, key: &str| item.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    // Where it would run: the role, and the database (and schema) a SQL API body names.
    let runs_as = |item: &Value| {
        let setting = |key: &str| item.get("settings").and_then(|s| s.get(key)).and_then(Value::as_str);
        let place = match (setting("database"), setting("schema")) {
            (Some(database), Some(schema)) => format!(" in {database}.{schema}"),
            (Some(database), None) => format!(" in {database}"),
            (None, Some(schema)) => format!(" in schema {schema}"),
            (None, None) => String::new(),
        };
        format!("{}{place}", setting("role").unwrap_or("?"))
    };
    let rows: Vec<[String; 8]> = pending
        .iter()
        .map(|item| {
            let approvals = item.get("approvals").and_then(Value::as_array).map_or(0, Vec::len);
            let required = item.get("approvals_required").and_then(Value::as_u64).unwrap_or(0);
            [
                cell(&text(item, "query_id"), 64),
                age(item.get("age_ms").and_then(Value::as_u64).unwrap_or(0)),
                cell(&text(item, "sub"), NAME_CHARS_SHOWN),
                cell(&text(item, "rule_name"), NAME_CHARS_SHOWN),
                format!("{approvals}/{required}"),
                cell(&runs_as(item), SETTINGS_CHARS_SHOWN),
                cell(&text(item, "bindings"), SETTINGS_CHARS_SHOWN),
                cell(&text(item, "statement_text"), STATEMENT_CHARS_SHOWN),
            ]
        })
        .collect();
    let header = ["QUERY ID", "AGE", "SUB", "RULE", "APPROVALS", "RUNS AS", "BINDINGS", "STATEMENT"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (idx, (value, width)) in row.iter().zip(widths).enumerate() {
            if idx + 1 == row.len() {
                line.push_str(value);
            } else {
                let pad = width - value.chars().count();
                line.push_str(value);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// One pending item whole, a field a line, the statement last and line by line: agent-chosen
/// text is escaped as in [`cell`], but never cut or flattened.
fn render_item(item: &Value) -> String {
    let text = |key: &str| escape_text(item.get(key).and_then(Value::as_str).unwrap_or("")).into_owned();
    let list = |key: &str| {
        let values: Vec<String> = item
            .get(key)
            .and_then(Value::as_array)
            .map(|values| values.iter().filter_map(Value::as_str).map(|v| escape_text(v).into_owned()).collect())
            .unwrap_or_default();
        values.join(", ")
    };
    let number = |key: &str| item.get(key).and_then(Value::as_u64).unwrap_or(0);
    let approvers: Vec<String> = item
        .get("approvals")
        .and_then(Value::as_array)
        .map(|all| {
            all.iter()
                .filter_map(|a| a.get("reviewer").and_then(Value::as_str))
                .map(|r| escape_text(r).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let settings: Vec<String> = item
        .get("settings")
        .and_then(Value::as_object)
        .map(|all| {
            all.iter().map(|(k, v)| format!("{}={}", escape_text(k), escape_text(v.as_str().unwrap_or("")))).collect()
        })
        .unwrap_or_default();
    let mut out = String::new();
    let mut field = |name: &str, value: String| out.push_str(&format!("{name:<12}{value}\n"));
    field("Query id:", text("query_id"));
    field("Agent:", format!("{} (groups: {})", text("sub"), list("groups")));
    field(
        "Session:",
        format!("{} (request {})", item.get("session_id").and_then(Value::as_i64).unwrap_or(0), text("request_id")),
    );
    field("Rule:", text("rule_name"));
    field(
        "Approvals:",
        format!(
            "{} of {} ({}); reviewers: {}",
            approvers.len(),
            number("approvals_required"),
            approvers.join(", "),
            list("reviewer_groups")
        ),
    );
    field("Waiting:", age(number("age_ms")));
    field("Runs as:", settings.join(", "));
    field("Context:", text("agent_context"));
    field("Bindings:", text("bindings"));
    field("Hash:", text("statement_hash"));
    out.push_str("Statement:\n");
    for line in item.get("statement_text").and_then(Value::as_str).unwrap_or("").split('\n') {
        out.push_str("  ");
        out.push_str(&escape_text(line));
        out.push('\n');
    }
    out
}

fn render_decision(action: &str, query_id: &str, body: &Value) -> anyhow::Result<String> {
    let state = body.get("state").ok_or_else(|| anyhow!("the admin API's answer has no `state`"))?;
    let name = state.get("state").and_then(Value::as_str).unwrap_or("unknown");
    let verb = if action == "approve" { "Approved" } else { "Denied" };
    Ok(match name {
        "pending" => {
            let approvals = state.get("approvals").and_then(Value::as_u64).unwrap_or(0);
            let required = state.get("approvals_required").and_then(Value::as_u64).unwrap_or(0);
            format!("{verb} {query_id}: {approvals} of {required} approvals so far; still pending.")
        }
        "approved" => format!("{verb} {query_id}: approved; it runs when the agent's driver polls next."),
        "denied" => format!("{verb} {query_id}: denied; the agent's driver gets the reason as an error."),
        other => format!("{verb} {query_id}: now {}.", escape_text(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::terminal::is_invisible_or_control;

    #[test]
    fn parses_admin_urls() {
        let endpoint = Endpoint::parse("http://127.0.0.1:8444").unwrap();
        assert_eq!((endpoint.host.as_str(), endpoint.port, endpoint.prefix.as_str()), ("127.0.0.1", 8444, ""));
        let endpoint = Endpoint::parse("HTTP://[::1]:9000/admin/").unwrap();
        assert_eq!((endpoint.host.as_str(), endpoint.port, endpoint.prefix.as_str()), ("::1", 9000, "/admin"));
        assert_eq!(Endpoint::parse("http://localhost").unwrap().port, 80);
        let https = Endpoint::parse("https://gateway:8444").unwrap_err().to_string();
        assert!(https.contains("https admin URLs are not supported"), "{https}");
        assert_eq!(Endpoint::parse("http://127.8.9.10:1").unwrap().host, "127.8.9.10");
        for bad in ["127.0.0.1:8444", "ftp://x", "http://user:pw@x", "http://x:port", "http://x/a?b", "http://"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        // Plain HTTP with a bearer token: not off this machine.
        for remote in
            ["http://gateway.corp:8444", "http://10.0.0.5:8444", "http://[2001:db8::1]:8444", "http://0.0.0.0:1"]
        {
            let error = Endpoint::parse(remote).unwrap_err().to_string();
            assert!(error.contains("is not this machine"), "{remote}: {error}");
        }
    }

    #[test]
    fn cells_are_flat_short_and_free_of_control_characters() {
        assert_eq!(cell("delete\n  from\tt", 60), "delete from t");
        assert_eq!(cell("select \u{1b}[31mred", 60), r"select \u{1b}[31mred");
        // A right-to-left override would show `delete … where 1=1` reordered: escaped, visibly.
        let bidi = cell("ok\u{202E}1=1 erehw\u{2066}x\u{200B}y\u{FEFF}\u{9B}2J", 80);
        assert_eq!(bidi, r"ok\u{202e}1=1 erehw\u{2066}x\u{200b}y\u{feff}\u{9b}2J");
        assert!(!bidi.chars().any(is_invisible_or_control), "{bidi}");
        assert_eq!(cell("héllo → 世界 🦀", 60), "héllo → 世界 🦀");
        assert_eq!(cell("abcdefghij", 5), "abcd…");
        assert_eq!(
            (age(59_999), age(65_000), age(7_260_000), age(90_000_000)),
            ("59s".into(), "1m05s".into(), "2h01m".into(), "1d01h".into())
        );
    }

    /// Parses `snowgate-tools approvals ARGS` as the binary does (flags only, no environment).
    fn parse(args: &[&str]) -> Result<ApprovalsArgs, clap::Error> {
        use clap::{Args as _, FromArgMatches as _};
        let command = ApprovalsArgs::augment_args(clap::Command::new("approvals").no_binary_name(true));
        let matches = command.try_get_matches_from(args)?;
        ApprovalsArgs::from_arg_matches(&matches)
    }

    #[test]
    fn timeouts_are_bounded_so_the_deadline_cannot_overflow() {
        assert_eq!(parse(&["list"]).unwrap().timeout_secs, 10);
        assert_eq!(parse(&["list", "--timeout-secs", "1"]).unwrap().timeout_secs, 1);
        assert_eq!(parse(&["list", "--timeout-secs", "3600"]).unwrap().timeout_secs, 3600);
        for bad in ["0", "3601", "18446744073709551615", "ten"] {
            let error = parse(&["list", "--timeout-secs", bad]).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation, "{bad}: {error}");
        }
        // The deadline itself is checked too: a duration past what `Instant` holds is an error.
        assert!(deadline_after(Duration::from_secs(TIMEOUT_SECS_MAX)).is_ok());
        let error = deadline_after(Duration::from_secs(u64::MAX)).unwrap_err().to_string();
        assert!(error.contains("too long"), "{error}");
    }

    #[test]
    fn json_answers_are_printed_with_invisible_characters_escaped() {
        let body = serde_json::json!({"pending": [{
            "statement_text": "delete from t \u{202E}1=1 erehw\u{202C} -- \u{9B}2J\u{7F}",
            "bindings": "{\"1\":\"\u{2066}x\u{2069}\"}",
            "agent_context": "ctx\u{200E}\u{200F}\u{85}\u{1b}[0m",
        }]});
        let line = to_json_line(&body).unwrap();
        assert!(!line.chars().any(is_invisible_or_control), "{line}");
        assert!(line.contains(r"\u202e") && line.contains(r"\u009b") && line.contains(r"\u001b"), "{line}");
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), body);
    }

    #[test]
    fn answers_skip_interim_heads_and_respect_content_length() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}trailing";
        assert_eq!(parse_answer(raw, Method::Post).unwrap(), (200, &b"{}"[..]));
        let short = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}";
        assert!(parse_answer(short, Method::Get).is_err());
    }
}
