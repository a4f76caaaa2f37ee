//! `snowgate-tools cat | search | verify | export | stats`: reading a recording directory
//! through `snowgate::record` only. Progress bars go to stderr (and only to a terminal);
//! records go to stdout; every error names its file and byte offset. Recorded text comes from
//! agents: JSON output writes control and invisible characters as `\uXXXX`, plain text as
//! `\u{202e}` (`crate::terminal`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use snowgate::record::{
    Frame, IndexKind, ReadError, Record, Recording, SegmentReader, VerifyOptions, VerifyReport, verify,
};

use crate::render::{parse_time, read_key_file, rfc3339, to_json, to_line};
use crate::terminal::{escape_text, to_json_line, to_json_pretty};

/// The recording directory.
#[derive(Debug, Args)]
pub struct DirectoryArgs {
    /// The recording directory (the gateway's `[recording] directory`).
    pub dir: PathBuf,
}

fn open(dir: &Path) -> anyhow::Result<Recording> {
    Recording::open(dir).with_context(|| format!("listing the recording directory {}", dir.display()))
}

/// A progress bar over the segments' bytes (of one core's, or all); hidden unless stderr is
/// a terminal.
fn progress(recording: &Recording, what: &str, core: Option<u16>) -> ProgressBar {
    let total: u64 = recording
        .segments()
        .iter()
        .filter(|s| core.is_none_or(|core| core == s.core_id))
        .filter_map(|s| std::fs::metadata(recording.path(s)).ok())
        .map(|m| m.len())
        .sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Whether standard output is a regular file (not a terminal, a pipe or a pager).
fn stdout_is_a_file() -> bool {
    use std::os::fd::AsFd as _;
    let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() else { return false };
    std::fs::File::from(fd).metadata().is_ok_and(|m| m.is_file())
}

/// Tells the user about an unreadable part and carries on; the command fails at the end.
/// Damage running to the end of a core's last segment (a torn tail) is where a running gateway
/// is writing, or where a crash stopped it (the next start cuts it back): the records before
/// it are whole, so it is noted, not failed (`verify --allow-open` judges it).
fn report_read_error(bar: &ProgressBar, recording: &Recording, error: &ReadError, failures: &mut usize) {
    if is_live_end(recording, error) {
        let note = format!("{}: ends inside a batch at offset {}", error.path.display(), error.offset);
        bar.suspend(|| eprintln!("note: {} (still being written, or cut by a crash)", escape_text(&note)));
        return;
    }
    *failures += 1;
    bar.suspend(|| eprintln!("error: {}", escape_text(&error.to_string())));
}

/// Whether `error` is a torn tail of the last segment of its core.
fn is_live_end(recording: &Recording, error: &ReadError) -> bool {
    let segments = recording.segments();
    error.torn_tail
        && segments
            .iter()
            .find(|s| recording.path(s) == error.path)
            .is_some_and(|torn| !segments.iter().any(|s| s.core_id == torn.core_id && s.sequence > torn.sequence))
}

/// Options shared by `cat` and `search` output.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// JSON lines (the export schema) instead of one line per record.
    #[arg(long)]
    pub json: bool,
    /// Include bodies (JSON output only).
    #[arg(long, requires = "json")]
    pub bodies: bool,
}

fn emit(out: &mut impl Write, record: &Record, output: &OutputArgs) -> anyhow::Result<()> {
    if output.json {
        writeln!(out, "{}", to_json_line(&to_json(record, output.bodies))?)?;
    } else {
        writeln!(out, "{}", to_line(record))?;
    }
    Ok(())
}

/// `cat`: every record, by core then index.
#[derive(Debug, Args)]
pub struct CatArgs {
    #[command(flatten)]
    dir: DirectoryArgs,
    /// Only this core.
    #[arg(long)]
    core: Option<u16>,
    #[command(flatten)]
    output: OutputArgs,
}

pub fn cat(args: CatArgs) -> anyhow::Result<()> {
    let recording = open(&args.dir.dir)?;
    let stdout = std::io::stdout().lock();
    let mut out = BufWriter::new(stdout);
    let mut failures = 0;
    // Records written to a terminal, or piped to a pager, would be torn by a bar drawn between
    // them: it shows when they go to a file (and stderr is a terminal).
    let bar = if stdout_is_a_file() { progress(&recording, "reading", args.core) } else { ProgressBar::hidden() };
    for segment in recording.segments().iter().filter(|s| args.core.is_none_or(|core| core == s.core_id)) {
        let reader = match recording.segment(segment) {
            Ok(reader) => reader,
            Err(e) => {
                report_read_error(&bar, &recording, &e, &mut failures);
                continue;
            }
        };
        for record in reader.records() {
            match record {
                Ok(record) => emit(&mut out, &record, &args.output)?,
                Err(e) => report_read_error(&bar, &recording, &e, &mut failures),
            }
        }
        bar.inc(reader.len());
    }
    bar.finish_and_clear();
    out.flush()?;
    if failures > 0 {
        bail!("{failures} part(s) of the recording could not be read");
    }
    Ok(())
}

/// `search`: records matching every filter given. A response matches when its request did.
#[derive(Debug, Args)]
pub struct SearchArgs {
    #[command(flatten)]
    dir: DirectoryArgs,
    /// The agent's identity (`sub`).
    #[arg(long)]
    sub: Option<String>,
    /// From this time: Unix seconds, YYYY-MM-DD or RFC 3339 (UTC, `Z`).
    #[arg(long)]
    since: Option<String>,
    /// Until this time (exclusive), same forms.
    #[arg(long)]
    until: Option<String>,
    /// Text in the statement (case-insensitive).
    #[arg(long)]
    text: Option<String>,
    /// A table named in the statement (`orders`, `sales.orders`, `"Orders"`; a word match,
    /// not a SQL parse).
    #[arg(long)]
    table: Option<String>,
    /// A Snowflake query id (found through segment footers, without decompressing segments;
    /// footers are read as they are, not authenticated: `verify` does that). Only responses
    /// carry it: each is printed with its request. With request filters (`--sub`, `--text`,
    /// `--table`, `--request-id`, `--decision`), a response's request must pass them, and both
    /// records must be in the time range.
    #[arg(long)]
    query_id: Option<String>,
    /// A driver request id.
    #[arg(long)]
    request_id: Option<String>,
    /// The decision: allowed, blocked, parked, approved or refused.
    #[arg(long, value_parser = ["allowed", "blocked", "parked", "approved", "refused"])]
    decision: Option<String>,
    /// The endpoint (`query-request`, `login`...).
    #[arg(long)]
    endpoint: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
}

struct Filters {
    sub: Option<String>,
    since_us: u64,
    until_us: u64,
    text_lower: Option<String>,
    table: Option<Vec<String>>,
    query_id: Option<String>,
    request_id: Option<String>,
    decision: Option<String>,
    endpoint: Option<String>,
}

impl Filters {
    fn from_args(args: &SearchArgs) -> anyhow::Result<Filters> {
        let since_us = args.since.as_deref().map(parse_time).transpose()?.unwrap_or(0);
        let until_us = args.until.as_deref().map(parse_time).transpose()?.unwrap_or(u64::MAX);
        Ok(Filters {
            sub: args.sub.clone(),
            since_us,
            until_us,
            text_lower: args.text.as_ref().map(|t| t.to_lowercase()),
            table: args.table.as_deref().map(table_path).transpose()?,
            query_id: args.query_id.clone(),
            request_id: args.request_id.clone(),
            decision: args.decision.clone(),
            endpoint: args.endpoint.clone(),
        })
    }

    /// Whether any filter concerns only requests (so responses match through them).
    fn has_request_filters(&self) -> bool {
        self.sub.is_some()
            || self.text_lower.is_some()
            || self.table.is_some()
            || self.request_id.is_some()
            || self.decision.is_some()
    }

    fn in_time(&self, time_us: u64) -> bool {
        self.since_us <= time_us && time_us < self.until_us
    }

    /// Whether `frame` is on the endpoint asked for: any without `--endpoint`; an event is on
    /// none.
    fn endpoint_matches(&self, frame: &Frame) -> bool {
        let endpoint = match frame {
            Frame::Request(request) => Some(&request.endpoint),
            Frame::Response(response) => Some(&response.endpoint),
            Frame::Event(_) => None,
        };
        self.endpoint.as_ref().is_none_or(|wanted| endpoint.is_some_and(|endpoint| endpoint == wanted))
    }

    fn request_matches(&self, request: &snowgate::record::RequestFrame) -> bool {
        self.request_side_matches(request)
            && self.query_id.as_ref().is_none_or(|id| request.query_id.as_ref() == Some(id))
    }

    /// The request filters alone, without the query id (which a query's request does not
    /// carry: its response does).
    fn request_side_matches(&self, request: &snowgate::record::RequestFrame) -> bool {
        let statement = request.statement.as_deref().unwrap_or("");
        self.sub.as_ref().is_none_or(|sub| request.principal.sub.as_ref() == Some(sub))
            && self.text_lower.as_ref().is_none_or(|text| statement.to_lowercase().contains(text.as_str()))
            && self.table.as_ref().is_none_or(|table| names_table(statement, table))
            && self.request_id.as_ref().is_none_or(|id| request.request_id.as_ref() == Some(id))
            && self.decision.as_ref().is_none_or(|d| d == request.decision.name())
    }
}

/// The identifier paths in `text`, each part lowercased and unquoted: `Sales."Order Items"`
/// → `["sales", "order items"]`. A quoted part may hold anything (`""` is a quote in it); an
/// unquoted one is letters, digits, `_` and `$`; parts joined by dots make a path. Comments
/// (`--`, `//` and `#` to the end of the line; `/* */`, closed by the first `*/`: they do not
/// nest), string literals (`''` or `\'` inside them) and `$$` strings name nothing, and a
/// quote inside them opens nothing: the gateway's lexer (`snowgate::policy::lexer`) reads them
/// so. An opening that nothing closes (`'`, `/*`, `$$`, or `"` with no name closing within a
/// name's length) is passed over, and what follows it is read as names. A word scan, not a
/// SQL parse, in time linear in the text however many openings never close.
fn identifier_paths(text: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    any_identifier_path(text, &mut |path| {
        paths.push(path.to_vec());
        false
    });
    paths
}

/// Hands `found` each identifier path of `text` ([`identifier_paths`]) as it is read, until it
/// returns true; whether it did. A statement's paths are not all held at once.
fn any_identifier_path(text: &str, found: &mut dyn FnMut(&[String]) -> bool) -> bool {
    let bytes = text.as_bytes();
    let closes = Closes::of(text);
    let mut block_comment_end = NextMatch::new(b"*/");
    let mut dollar_string_end = NextMatch::new(b"$$");
    let mut path: Vec<String> = Vec::new();
    let mut at = 0;
    while let Some(c) = text[at..].chars().next() {
        let rest = &bytes[at..];
        // The part found at `at`, if any, and where reading goes on.
        // `//` after a `:` is a URL's (`PUT file:///tmp/x.csv @%orders`), not a comment: the
        // gateway reads `GET` and `PUT` arguments from the raw text for the same reason.
        let url = rest.starts_with(b"//") && at > 0 && bytes[at - 1] == b':';
        let (part, next) = if url {
            // All its slashes (`file:///tmp`): the last two must not start a comment either.
            (None, at + rest.iter().take_while(|&&b| b == b'/').count())
        } else if rest.starts_with(b"--") || rest.starts_with(b"//") || rest.starts_with(b"#") {
            (None, rest.iter().position(|&b| b == b'\n').map_or(bytes.len(), |n| at + n))
        } else if let Some(end) = rest.starts_with(b"/*").then(|| block_comment_end.find(bytes, at + 2)).flatten() {
            (None, end + 2)
        } else if let Some(end) = rest.starts_with(b"$$").then(|| dollar_string_end.find(bytes, at + 2)).flatten() {
            (None, end + 2)
        } else {
            match c {
                '\'' if closes.string[at + 1] => (None, string_end(text, at + 1)),
                '"' if closes.name[at + 1] != NO_NAME => {
                    let (part, end) = quoted_name(text, at + 1);
                    (Some(part), end)
                }
                c if is_name_char(c) => {
                    let end = text[at..].find(|c: char| !is_name_char(c)).map_or(text.len(), |n| at + n);
                    (Some(text[at..end].to_owned()), end)
                }
                c => (None, at + c.len_utf8()),
            }
        };
        at = next;
        // Anything but a name ends the path.
        let Some(part) = part else {
            if !path.is_empty() && found(&path) {
                return true;
            }
            path.clear();
            continue;
        };
        path.push(part.to_lowercase());
        if bytes.get(at) != Some(&b'.') {
            if found(&path) {
                return true;
            }
            path.clear();
            continue;
        }
        at += 1;
        if !text[at..].chars().next().is_some_and(|c| c == '"' || is_name_char(c)) {
            // A dot leading nowhere ends the path with an empty part.
            path.push(String::new());
            if found(&path) {
                return true;
            }
            path.clear();
        }
    }
    !path.is_empty() && found(&path)
}

/// A character of an unquoted name.
fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '$')
}

/// The longest quoted name, in characters (Snowflake's identifiers have at most 255).
const QUOTED_NAME_CHARS_MAX: usize = 255;

/// In [`Closes::name`]: no quoted name closes.
const NO_NAME: u16 = u16::MAX;

/// For each byte offset of a text, what an opening quote right before it leads to. Worked out
/// from the end of the text in one pass, so the scan decides each opening quote at once
/// instead of reading ahead from it: reading ahead from each of a statement's quotes that
/// never close would take time quadratic in its length.
struct Closes {
    /// Whether a string literal whose content starts here closes.
    string: Vec<bool>,
    /// The length in characters of the quoted name whose content starts here, or [`NO_NAME`]
    /// when none closes within [`QUOTED_NAME_CHARS_MAX`] characters.
    name: Vec<u16>,
}

impl Closes {
    fn of(text: &str) -> Closes {
        let bytes = text.as_bytes();
        let len = bytes.len();
        // Two places past the end, so that each step may look two bytes on.
        let mut string = vec![false; len + 2];
        let mut name = vec![NO_NAME; len + 2];
        let one_more = |chars: u16| if usize::from(chars) < QUOTED_NAME_CHARS_MAX { chars + 1 } else { NO_NAME };
        for at in (0..len).rev() {
            let doubled = bytes.get(at + 1) == Some(&bytes[at]);
            string[at] = match bytes[at] {
                // A backslash escapes the character after it, whatever its length.
                b'\\' => text[at + 1..].chars().next().is_some_and(|c| string[at + 1 + c.len_utf8()]),
                b'\'' if doubled => string[at + 2],
                b'\'' => true,
                _ => string[at + 1],
            };
            name[at] = match bytes[at] {
                b'"' if doubled => one_more(name[at + 2]),
                b'"' => 0,
                // A character counts once, at its first byte.
                byte if byte & 0xc0 == 0x80 => name[at + 1],
                _ => one_more(name[at + 1]),
            };
        }
        Closes { string, name }
    }
}

/// Where the string literal whose content starts at `at` ends, just after its closing quote
/// ([`Closes::string`] says it closes).
fn string_end(text: &str, mut at: usize) -> usize {
    let bytes = text.as_bytes();
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 1 + text[at + 1..].chars().next().map_or(0, char::len_utf8),
            b'\'' if bytes.get(at + 1) == Some(&b'\'') => at += 2,
            b'\'' => return at + 1,
            _ => at += 1,
        }
    }
    at
}

/// The quoted name whose content starts at `at` (`""` read as `"`), and where it ends, just
/// after its closing quote ([`Closes::name`] says it closes).
fn quoted_name(text: &str, at: usize) -> (String, usize) {
    let bytes = text.as_bytes();
    let mut end = at;
    while end < bytes.len() && !(bytes[end] == b'"' && bytes.get(end + 1) != Some(&b'"')) {
        end += if bytes[end] == b'"' { 2 } else { 1 };
    }
    (text[at..end].replace("\"\"", "\""), end + 1)
}

/// The first place of `needle` at or after a place, asked for places that never go back: a
/// search that found nothing answers every later question, and one that found a place every
/// question before it, so a text full of openings that never close is searched once, not once
/// per opening.
struct NextMatch {
    needle: &'static [u8],
    /// The last search: from where, and what it found.
    last: Option<(usize, Option<usize>)>,
}

impl NextMatch {
    fn new(needle: &'static [u8]) -> NextMatch {
        NextMatch { needle, last: None }
    }

    fn find(&mut self, haystack: &[u8], from: usize) -> Option<usize> {
        if let Some((searched_from, found)) = self.last
            && searched_from <= from
            && found.is_none_or(|place| place >= from)
        {
            return found;
        }
        let found = haystack[from..].windows(self.needle.len()).position(|w| w == self.needle).map(|n| from + n);
        self.last = Some((from, found));
        found
    }
}

/// The `--table` argument as one identifier path.
fn table_path(text: &str) -> anyhow::Result<Vec<String>> {
    match &identifier_paths(text)[..] {
        [path] if path.iter().all(|part| !part.is_empty()) && !text.trim_start().starts_with('.') => Ok(path.clone()),
        _ => bail!("--table {:?} is not a table name (table, schema.table or \"Quoted Name\")", text),
    }
}

/// Whether `statement` names the table `table` (its last path components).
fn names_table(statement: &str, table: &[String]) -> bool {
    any_identifier_path(statement, &mut |path| path.len() >= table.len() && path[path.len() - table.len()..] == *table)
}

pub fn search(args: SearchArgs) -> anyhow::Result<()> {
    let filters = Filters::from_args(&args)?;
    let recording = open(&args.dir.dir)?;
    let stdout = std::io::stdout().lock();
    let mut out = BufWriter::new(stdout);
    let mut failures = 0;
    let bar = progress(&recording, "searching", None);
    let mut matcher = Matcher::new(&filters);
    for segment in recording.segments() {
        let reader = match recording.segment(segment) {
            Ok(reader) => reader,
            Err(e) => {
                report_read_error(&bar, &recording, &e, &mut failures);
                continue;
            }
        };
        let unanswered = matcher.unanswered.get(&segment.core_id).is_some_and(|set| !set.is_empty());
        // Each batch is filtered as it is read and dropped before the next: only what
        // matches is written out, so a segment of any size takes one batch of memory.
        let mut visit = |records: Vec<Record>| -> anyhow::Result<()> {
            for record in records.iter().filter(|record| matcher.matches(record)) {
                bar.suspend(|| emit(&mut out, record, &args.output))?;
            }
            Ok(())
        };
        let mut on_error = |e: &ReadError| report_read_error(&bar, &recording, e, &mut failures);
        visit_batches(&reader, &filters, unanswered, &mut visit, &mut on_error)?;
        bar.inc(reader.len());
    }
    bar.finish_and_clear();
    // A query id also finds the request of each response found (in an earlier segment, say).
    for (core_id, index) in std::mem::take(&mut matcher.requests_of_responses) {
        if matcher.matched.get(&core_id).is_some_and(|set| set.contains(&index)) {
            continue;
        }
        match recording.record(core_id, index) {
            Ok(Some(request))
                if filters.in_time(request.frame.time_unix_us()) && filters.endpoint_matches(&request.frame) =>
            {
                emit(&mut out, &request, &args.output)?
            }
            Ok(_) => {}
            Err(e) => report_read_error(&bar, &recording, &e, &mut failures),
        }
    }
    // A query id with request filters: each response found by the query id is printed with
    // its request when the request passes them.
    for (response, index) in std::mem::take(&mut matcher.pending_pairs) {
        let core_id = response.core_id;
        match recording.record(core_id, index) {
            Ok(Some(request)) if matcher.request_of_pair_matches(&request) => {
                emit(&mut out, &request, &args.output)?;
                emit(&mut out, &response, &args.output)?;
            }
            Ok(_) => {}
            Err(e) => report_read_error(&bar, &recording, &e, &mut failures),
        }
    }
    out.flush()?;
    if failures > 0 {
        bail!("{failures} part(s) of the recording could not be read");
    }
    Ok(())
}

/// What `search` has seen so far: the requests that matched, so that their responses match
/// too, wherever they landed.
struct Matcher<'a> {
    filters: &'a Filters,
    /// Requests that matched, per core, until their response is read (kept for good with a
    /// query id, whose matches are few, to print each request once).
    matched: BTreeMap<u16, BTreeSet<u64>>,
    /// Of those, the ones whose response has not been read yet: while a core has any, its
    /// later segments are read even when their footers say they cannot match.
    unanswered: BTreeMap<u16, BTreeSet<u64>>,
    /// (core, request index) of each response matched by its query id, whose request may not
    /// carry the query id itself.
    requests_of_responses: Vec<(u16, u64)>,
    /// With a query id and request filters: each response carrying the query id whose
    /// request has not matched (yet), with its request's index. Its request is read and
    /// checked after the scan (it may lie in a segment the query id did not lead to).
    pending_pairs: Vec<(Record, u64)>,
}

impl<'a> Matcher<'a> {
    /// A matcher with nothing matched yet.
    fn new(filters: &'a Filters) -> Matcher<'a> {
        Matcher {
            filters,
            matched: BTreeMap::new(),
            unanswered: BTreeMap::new(),
            requests_of_responses: Vec::new(),
            pending_pairs: Vec::new(),
        }
    }
}

impl Matcher<'_> {
    fn matches(&mut self, record: &Record) -> bool {
        let filters = self.filters;
        let linked = match &record.frame {
            Frame::Response(response) => response.request.as_ref().and_then(|l| l.record_index()),
            _ => None,
        };
        // A response answers its request whatever its time: while a request is unanswered,
        // `--sub` cannot skip the core's later segments.
        if let Some(index) = linked
            && let Some(unanswered) = self.unanswered.get_mut(&record.core_id)
        {
            unanswered.remove(&index);
        }
        if !filters.in_time(record.frame.time_unix_us()) {
            return false;
        }
        match &record.frame {
            Frame::Request(request) => {
                let matches = filters.endpoint_matches(&record.frame) && filters.request_matches(request);
                if matches {
                    self.matched.entry(record.core_id).or_default().insert(record.index);
                    self.unanswered.entry(record.core_id).or_default().insert(record.index);
                }
                matches
            }
            Frame::Response(response) => {
                let via_request =
                    linked.is_some_and(|i| self.matched.get(&record.core_id).is_some_and(|set| set.contains(&i)));
                if via_request
                    && filters.query_id.is_none()
                    && let (Some(index), Some(set)) = (linked, self.matched.get_mut(&record.core_id))
                {
                    // A request has one response: once it is read, the request is done with
                    // (the set would otherwise grow with every match of a long search).
                    set.remove(&index);
                }
                let endpoint_ok = filters.endpoint_matches(&record.frame);
                let own_query_id = filters.query_id.as_ref().is_none_or(|id| response.query_id.as_ref() == Some(id));
                let own = !filters.has_request_filters() && own_query_id;
                let matches = endpoint_ok && (via_request || own);
                if !matches
                    && endpoint_ok
                    && own_query_id
                    && filters.query_id.is_some()
                    && filters.has_request_filters()
                    && let Some(index) = linked
                {
                    // Decided once its request is read: the request filters are the request's.
                    // Its body is copied out of the batch's buffer, which would otherwise stay
                    // in memory (up to 512 MiB) for as long as the search runs.
                    let mut pending = record.clone();
                    if let Frame::Response(response) = &mut pending.frame {
                        response.body = response.body.to_vec().into();
                    }
                    self.pending_pairs.push((pending, index));
                    return false;
                }
                if matches
                    && filters.query_id.is_some()
                    && let Some(index) = linked
                {
                    self.requests_of_responses.push((record.core_id, index));
                }
                matches
            }
            Frame::Event(_) => {
                !filters.has_request_filters() && filters.query_id.is_none() && filters.endpoint.is_none()
            }
        }
    }
}

impl Matcher<'_> {
    /// Whether the request of a pending pair (a response found by its query id) passes the
    /// request filters, the endpoint and the time range.
    fn request_of_pair_matches(&self, request: &Record) -> bool {
        let filters = self.filters;
        let Frame::Request(frame) = &request.frame else { return false };
        filters.in_time(frame.time_unix_us)
            && filters.endpoint_matches(&request.frame)
            && filters.request_side_matches(frame)
    }
}

/// Hands `visit` each batch's records of a segment that can hold a match, one batch at a
/// time: through the footer's index and time ranges when sealed (the footer is read as it
/// is, not authenticated: that is `verify`'s job), every batch otherwise. `unanswered`: the
/// core has matched requests whose responses are still to come, so `--sub` cannot skip the
/// segment. A read error goes to `on_error`: in a sealed segment the next batch is read (the
/// footer says where it is), in an open one it ends the segment. An error of `visit`
/// (writing the output) is returned.
fn visit_batches(
    reader: &SegmentReader,
    filters: &Filters,
    unanswered: bool,
    visit: &mut dyn FnMut(Vec<Record>) -> anyhow::Result<()>,
    on_error: &mut dyn FnMut(&ReadError),
) -> anyhow::Result<()> {
    let Some(sealed) = reader.sealed() else {
        for batch in reader.scan() {
            match batch {
                Ok(batch) => visit(batch.records)?,
                Err(e) => on_error(&e),
            }
        }
        return Ok(());
    };
    let footer = &sealed.footer;
    if footer.record_count > 0
        && (footer.time_max_unix_us < filters.since_us || footer.time_min_unix_us >= filters.until_us)
    {
        return Ok(());
    }
    let ordinals: Vec<usize> = if let Some(query_id) = &filters.query_id {
        footer.index.get(IndexKind::QueryId, query_id).map(|o| o.map(|o| o as usize).collect()).unwrap_or_default()
    } else if let Some(sub) = &filters.sub
        && !unanswered
        && !footer.index.contains_key(IndexKind::Identity, sub)
    {
        Vec::new()
    } else {
        (0..footer.batches.len()).collect()
    };
    for ordinal in ordinals {
        let Some(entry) = footer.batches.get(ordinal) else { continue };
        if entry.time_max_unix_us < filters.since_us || entry.time_min_unix_us >= filters.until_us {
            continue;
        }
        // A damaged batch is reported; the footer still says where the next one is.
        match reader.read_batch(entry.offset, Some(entry.first_record_index)) {
            Ok(batch) => visit(batch.records)?,
            Err(e) => on_error(&e),
        }
    }
    Ok(())
}

/// `verify`: integrity and completeness; exits non-zero on any problem.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    dir: DirectoryArgs,
    /// The recording key (64 hex digits or 32 raw bytes) the footers were sealed with.
    #[arg(long, env = "SNOWGATE_RECORDING_KEY_FILE")]
    key_file: PathBuf,
    /// Accept each core's last segment unsealed (a running gateway's), torn tail included.
    #[arg(long)]
    allow_open: bool,
    /// Accept a directory whose earliest segments were removed (retention).
    #[arg(long)]
    allow_partial_start: bool,
    /// The gateway's number of cores: each core must have segments, and no other core may.
    #[arg(long)]
    cores: Option<u16>,
    /// With `--cores N`: the gateway runs the reviewers' admin listener (`[approvals]
    /// admin_address`), whose decisions are recorded in a chain of its own, core N; it must
    /// have segments too.
    #[arg(long, requires = "cores")]
    admin_chain: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let key = read_key_file(&args.key_file)?;
    let recording = open(&args.dir.dir)?;
    let bar = progress(&recording, "verifying", None);
    let options = VerifyOptions {
        allow_open: args.allow_open,
        allow_partial_start: args.allow_partial_start,
        expected_cores: args.cores,
        admin_chain: args.admin_chain,
        ..Default::default()
    };
    let report = verify(&recording, &key, &options, &mut |bytes| bar.inc(bytes));
    bar.finish_and_clear();
    if args.json {
        println!("{}", to_json_pretty(&verify_json(&report))?);
    } else {
        print_verify(&report);
    }
    // Files that could not be read, and nothing found wrong: an I/O error (exit status 2), not
    // a verdict on the recording.
    if report.is_only_unreadable() {
        let (count, first) = (report.problems.len(), &report.problems[0]);
        bail!("{count} file(s) could not be read, so the recording is not verified; the first: {first}");
    }
    Ok(report.is_ok())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn verify_json(report: &VerifyReport) -> serde_json::Value {
    let problem = |p: &snowgate::record::verify::Problem| {
        serde_json::json!({
            "file": p.path.display().to_string(), "offset": p.offset, "record": p.record_index,
            "problem": p.description, "unreadable": p.unreadable,
        })
    };
    let cores: serde_json::Map<String, serde_json::Value> = report
        .cores
        .iter()
        .map(|(core, summary)| {
            let value = serde_json::json!({
                "segments": summary.segments, "records": summary.records,
                "chain_head": summary.chain_head.map(|h| hex(&h)), "next_record": summary.next_record_index,
            });
            (core.to_string(), value)
        })
        .collect();
    serde_json::json!({
        "ok": report.is_ok(),
        "segments": report.segments,
        "records": report.records,
        "problems": report.problems.iter().map(problem).collect::<Vec<_>>(),
        "notes": report.notes.iter().map(problem).collect::<Vec<_>>(),
        "cores": cores,
    })
}

fn print_verify(report: &VerifyReport) {
    for problem in &report.problems {
        println!("FAIL {}", escape_text(&problem.to_string()));
    }
    for note in &report.notes {
        println!("note {}", escape_text(&note.to_string()));
    }
    for (core, summary) in &report.cores {
        let head = summary.chain_head.map_or_else(|| "unknown".into(), |h| hex(&h));
        println!("core {core}: {} segments, {} records, chain head {head}", summary.segments, summary.records);
    }
    match report.problems.first() {
        None => println!("OK: {} segments, {} records verified", report.segments, report.records),
        Some(first) => {
            println!("FAILED: {} problem(s); the first: {}", report.problems.len(), escape_text(&first.to_string()))
        }
    }
}

/// `export`: JSON lines for a SIEM (schema in tools/README.md).
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    dir: DirectoryArgs,
    /// Include request and response bodies (`body`, or `body_base64` when not UTF-8).
    #[arg(long)]
    bodies: bool,
    /// Write here instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let recording = open(&args.dir.dir)?;
    let mut out: Box<dyn Write> = match &args.output {
        // What it holds is the recording's (statements, with `--bodies` answers): a file it
        // creates is private to this user, as the recording is (an existing one keeps its mode).
        Some(path) => Box::new(BufWriter::new(
            std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new().write(true).create(true).truncate(true),
                0o600,
            )
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    // As for `cat`: no bar between records written to a terminal or a pager.
    let to_file = args.output.is_some() || stdout_is_a_file();
    let bar = if to_file { progress(&recording, "exporting", None) } else { ProgressBar::hidden() };
    let mut failures = 0;
    for segment in recording.segments() {
        let reader = match recording.segment(segment) {
            Ok(reader) => reader,
            Err(e) => {
                report_read_error(&bar, &recording, &e, &mut failures);
                continue;
            }
        };
        for batch in reader.batches() {
            match batch {
                Ok(batch) => {
                    for record in &batch.records {
                        out.write_all(to_json_line(&to_json(record, args.bodies))?.as_bytes())?;
                        out.write_all(b"\n")?;
                    }
                    bar.inc(batch.end_offset - batch.offset);
                }
                Err(e) => report_read_error(&bar, &recording, &e, &mut failures),
            }
        }
    }
    bar.finish_and_clear();
    out.flush()?;
    if failures > 0 {
        bail!("{failures} part(s) of the recording could not be read");
    }
    Ok(())
}

/// `stats`: queries per identity, bytes, compression.
#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    dir: DirectoryArgs,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, serde::Serialize)]
struct IdentityStats {
    requests: u64,
    queries: u64,
    decisions: BTreeMap<&'static str, u64>,
    request_body_bytes: u64,
}

pub fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let recording = open(&args.dir.dir)?;
    let bar = progress(&recording, "counting", None);
    let mut failures = 0;
    let (mut records, mut requests, mut responses, mut events) = (0u64, 0u64, 0u64, 0u64);
    let (mut bytes_on_disk, mut bytes_uncompressed, mut body_bytes) = (0u64, 0u64, 0u64);
    let (mut time_min, mut time_max) = (u64::MAX, 0u64);
    let mut identities: BTreeMap<String, IdentityStats> = BTreeMap::new();
    for segment in recording.segments() {
        let reader = match recording.segment(segment) {
            Ok(reader) => reader,
            Err(e) => {
                report_read_error(&bar, &recording, &e, &mut failures);
                continue;
            }
        };
        bytes_on_disk += reader.len();
        for batch in reader.batches() {
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    report_read_error(&bar, &recording, &e, &mut failures);
                    continue;
                }
            };
            bar.inc(batch.end_offset - batch.offset);
            bytes_uncompressed += u64::from(batch.header.uncompressed_len);
            for record in &batch.records {
                records += 1;
                time_min = time_min.min(record.frame.time_unix_us());
                time_max = time_max.max(record.frame.time_unix_us());
                match &record.frame {
                    Frame::Request(r) => {
                        requests += 1;
                        body_bytes += r.body.len() as u64;
                        let sub = r.principal.sub.clone().unwrap_or_else(|| "(none)".into());
                        let entry = identities.entry(sub).or_default();
                        entry.requests += 1;
                        entry.queries += u64::from(r.statement.is_some());
                        *entry.decisions.entry(r.decision.name()).or_default() += 1;
                        entry.request_body_bytes += r.body.len() as u64;
                    }
                    Frame::Response(r) => {
                        responses += 1;
                        body_bytes += r.body.len() as u64;
                    }
                    Frame::Event(_) => events += 1,
                }
            }
        }
    }
    bar.finish_and_clear();
    let ratio = if bytes_uncompressed == 0 { 0.0 } else { bytes_on_disk as f64 / bytes_uncompressed as f64 };
    let (first, last) = if records == 0 { (None, None) } else { (Some(rfc3339(time_min)), Some(rfc3339(time_max))) };
    if args.json {
        let value = serde_json::json!({
            "segments": recording.segments().len(), "records": records, "requests": requests,
            "responses": responses, "events": events, "bytes_on_disk": bytes_on_disk,
            "bytes_uncompressed": bytes_uncompressed, "body_bytes": body_bytes,
            "disk_bytes_per_raw_byte": ratio, "first": first, "last": last, "identities": identities,
        });
        println!("{}", to_json_pretty(&value)?);
    } else {
        println!(
            "segments {}, records {records} ({requests} requests, {responses} responses, {events} events)",
            recording.segments().len()
        );
        println!("from {} to {}", first.as_deref().unwrap_or("-"), last.as_deref().unwrap_or("-"));
        println!(
            "bytes on disk {bytes_on_disk}, records uncompressed {bytes_uncompressed}, bodies {body_bytes}; {ratio:.3} bytes on disk per raw byte"
        );
        println!("{:<40} {:>10} {:>10}  decisions", "identity", "requests", "queries");
        for (sub, s) in &identities {
            let decisions: Vec<String> = s.decisions.iter().map(|(d, n)| format!("{d}={n}")).collect();
            println!("{:<40} {:>10} {:>10}  {}", escape_text(sub), s.requests, s.queries, decisions.join(" "));
        }
    }
    if failures > 0 {
        bail!("{failures} part(s) of the recording could not be read");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_match_by_name_not_by_substring() {
        let orders = table_path("orders").unwrap();
        assert!(names_table("select * from orders where x=1", &orders));
        assert!(names_table("SELECT * FROM sales.public.\"ORDERS\"", &orders));
        assert!(!names_table("select * from orders_archive", &orders));
        assert!(!names_table("select 'no' from preorders", &orders));
        assert!(names_table("select * from sales.orders", &table_path("sales.orders").unwrap()));
        assert!(!names_table("select * from hr.orders", &table_path("sales.orders").unwrap()));
        // Quoted names hold spaces, dashes, dots and quotes.
        let items = table_path("\"Order Items\"").unwrap();
        assert_eq!(items, ["order items"]);
        assert!(names_table("insert into sales.\"Order Items\" values (1)", &items));
        assert!(!names_table("select * from \"Order\" join items", &items));
        let dotted = table_path("s.\"a.b\"").unwrap();
        assert!(names_table("select * from db.S.\"A.B\"", &dotted));
        assert!(!names_table("select * from s.a.b", &dotted));
        assert!(names_table("select 1 from \"say \"\"hi\"\"\"", &table_path("\"say \"\"hi\"\"\"").unwrap()));
        // A quote inside a string literal opens no name, nor does a quote no name closes.
        assert!(names_table("SELECT REPLACE(name, '\"', '') FROM orders", &orders));
        assert!(names_table("select 'it''s \"' from orders", &orders));
        assert!(names_table("select '\\' \"' from orders", &orders));
        assert!(!names_table("select 'orders' from t", &orders));
        let stray = format!("select x\" from orders where {} = \"c\"", "z".repeat(300));
        assert!(names_table(&stray, &orders));
        for bad in ["", "a b", "a.", ".a", "\"\""] {
            assert!(table_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_quote_in_a_comment_or_dollar_string_hides_no_table_after_it() {
        // Regression: a `'` in a comment opened a string literal that ran to the end, so the
        // statement an agent wrote could keep its table from `search --table`.
        let customers = table_path("customers").unwrap();
        let found = [
            "-- don't cache\nSELECT ssn FROM customers",
            "// don't cache\nSELECT ssn FROM customers",
            "# don't cache\nSELECT ssn FROM customers",
            "/* ' */ SELECT ssn FROM customers",
            "/* \" */ SELECT ssn FROM customers",
            "SELECT $$it's$$, ssn FROM customers",
            "SELECT 'it''s' -- '\nFROM customers",
            // Block comments do not nest: the first `*/` closes.
            "SELECT 1 /* /* */ FROM customers */",
            // Openings nothing closes are passed over.
            "SELECT 'oops, ssn FROM customers",
            "SELECT ssn /* ' FROM customers",
            "SELECT $$ ssn FROM customers",
            "SELECT \"ssn FROM customers",
        ];
        for statement in found {
            assert!(names_table(statement, &customers), "{statement:?}");
        }
        let not_found = [
            "SELECT 1 -- FROM customers",
            "SELECT 1 // FROM customers",
            "SELECT 1 # FROM customers",
            "SELECT 1 /* FROM customers */ FROM t",
            "SELECT $$ FROM customers $$ FROM t",
            "SELECT 'FROM customers' FROM t",
            "SELECT '\\' FROM customers' FROM t",
        ];
        for statement in not_found {
            assert!(!names_table(statement, &customers), "{statement:?}");
        }
        // A comment ends the path it follows; a name after it starts another.
        assert_eq!(identifier_paths("a.b/* x */c -- d\ne"), [vec!["a", "b"], vec!["c"], vec!["e"]]);
        // A file URL's `//` is no comment: the stage after it is found.
        let put = identifier_paths("PUT file:///tmp/x.csv @%orders");
        assert!(put.contains(&vec!["orders".to_owned()]), "{put:?}");
        let get = identifier_paths("GET @%orders file://C:\\tmp\\");
        assert!(get.contains(&vec!["orders".to_owned()]), "{get:?}");
        assert_eq!(identifier_paths("s.\"T\"\"1\"$$x$$"), [vec!["s", "t\"1"]]);
    }

    /// The largest statement the format holds, made of openings that never close, still has
    /// its table found after them. (Each `"` once read ahead from a copy of the iterator, 9 s
    /// for such a statement; now one pass, about a tenth of a second. Speed is not asserted
    /// here: a test's timing is the machine's.)
    #[test]
    fn quotes_that_never_close_hide_no_table_after_them() {
        let customers = table_path("customers").unwrap();
        let size = snowgate::record::limits::STATEMENT_BYTES_MAX;
        for unit in ["\"", "\"\"a", "'\\", "/* ", "$$ "] {
            let statement = format!("{} FROM customers", unit.repeat(size / unit.len()));
            assert!(names_table(&statement, &customers), "{unit:?}");
        }
    }

    fn record(index: u64, frame: Frame) -> Record {
        Record { core_id: 0, segment_sequence: 0, batch_offset: 96, index, encoded_bytes: 100, frame }
    }

    fn request(time_unix_us: u64) -> Frame {
        Frame::Request(snowgate::record::RequestFrame {
            time_unix_us,
            endpoint: "query-request".into(),
            principal: snowgate::record::Principal { sub: Some("agent-7".into()), role: None, groups: vec![] },
            session_id: None,
            request_id: None,
            query_id: None,
            statement: Some("select 1".into()),
            bindings: None,
            agent_context: None,
            query_tag: None,
            decision: snowgate::record::Decision::Allowed,
            body: Default::default(),
        })
    }

    fn response(time_unix_us: u64, request_index: u64) -> Frame {
        Frame::Response(snowgate::record::ResponseFrame {
            time_unix_us,
            endpoint: "query-request".into(),
            request: Some(snowgate::record::RequestLink::to_record(request_index)),
            query_id: None,
            status: 200,
            code: None,
            success: Some(true),
            rows: None,
            upstream_us: 1,
            total_us: 2,
            body: Default::default(),
        })
    }

    #[test]
    fn a_response_outside_the_time_range_still_answers_its_request() {
        // Regression: the time range was checked first, so a matched request whose response
        // lay past `--until` stayed unanswered, and `--sub` then read every later segment of
        // its core in full.
        let filters = Filters {
            sub: Some("agent-7".into()),
            since_us: 1_000_000_000,
            until_us: 2_000_000_000,
            text_lower: None,
            table: None,
            query_id: None,
            request_id: None,
            decision: None,
            endpoint: None,
        };
        let mut matcher = Matcher::new(&filters);
        assert!(matcher.matches(&record(5, request(1_500_000_000))));
        assert_eq!(matcher.unanswered[&0], BTreeSet::from([5]));
        assert!(!matcher.matches(&record(6, response(2_500_000_000, 5))), "out of the range: not printed");
        assert!(matcher.unanswered[&0].is_empty(), "but answered");
    }
}
