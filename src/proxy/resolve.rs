//! Host names resolved off the cores: the system resolver blocks (`getaddrinfo`), and a core
//! that waited on it would stall every connection and timer it serves. A few threads, started
//! on the first name that needs one, run the lookups from a bounded queue; the core awaits the
//! answer under a deadline. An address literal is parsed in place and never queued.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::oneshot;

/// Resolver threads.
const THREADS: usize = 2;
/// Lookups waiting for a thread; past it a lookup fails at once.
const QUEUE_MAX: usize = 256;

type Outcome = io::Result<Vec<SocketAddr>>;

struct Lookup {
    host: String,
    port: u16,
    reply: oneshot::Sender<Outcome>,
}

fn resolver_gone() -> Outcome {
    Err(io::Error::other("the resolver thread stopped"))
}

fn queue() -> &'static SyncSender<Lookup> {
    static QUEUE: OnceLock<SyncSender<Lookup>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, receiver) = sync_channel::<Lookup>(QUEUE_MAX);
        let receiver = Arc::new(Mutex::new(receiver));
        for n in 0..THREADS {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new().name(format!("snowgate-resolver-{n}")).spawn(move || {
                loop {
                    let next = receiver.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
                    let Ok(lookup) = next else { return };
                    let outcome = lookup_now(&lookup.host, lookup.port);
                    lookup.reply.send(outcome);
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "A resolver thread could not start.");
            }
        }
        sender
    })
}

fn lookup_now(host: &str, port: u16) -> Outcome {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "the host has no address"));
    }
    Ok(addrs)
}

/// The addresses of `host` (a name, or an IPv4 or bracketed IPv6 literal), within `deadline`.
pub async fn resolve(host: &str, port: u16, deadline: Duration) -> Outcome {
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (reply, answer) = oneshot::channel(resolver_gone);
    match queue().try_send(Lookup { host: host.to_owned(), port, reply }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "too many host name lookups are waiting"));
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err(io::Error::other("no resolver thread is running"));
        }
    }
    match monoio::time::timeout(deadline, answer).await {
        Ok(outcome) => outcome,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the host name lookup timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(future: impl Future<Output = T>) -> T {
        let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
        runtime.block_on(future)
    }

    #[test]
    fn literals_are_parsed_in_place_and_names_looked_up_off_the_core() {
        let second = Duration::from_secs(5);
        assert_eq!(run(resolve("127.0.0.1", 80, second)).unwrap(), vec![SocketAddr::from(([127, 0, 0, 1], 80))]);
        assert_eq!(run(resolve("[::1]", 443, second)).unwrap(), vec!["[::1]:443".parse().unwrap()]);
        let local = run(resolve("localhost", 8080, second)).unwrap();
        assert!(!local.is_empty() && local.iter().all(|a| a.ip().is_loopback() && a.port() == 8080), "{local:?}");
        // Looked up on a resolver thread (the one that answered has named itself by now; the
        // other may not have started yet).
        let threads = std::fs::read_dir("/proc/self/task").unwrap().filter_map(Result::ok).filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|name| name.starts_with("snowgate-resolv"))
        });
        assert!((1..=THREADS).contains(&threads.count()));
        assert!(run(resolve("no-such-host.invalid", 80, second)).is_err());
    }
}
