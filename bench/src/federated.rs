//! `--federated`: private messages between users of two linked servers, beside the same
//! between users of one server, in one sitting.
//!
//! Two servers (`a.test`, `b.test`) run in this process, linked over the real federation
//! port (mutual TLS, development federation CA), each with its own data directory. For each
//! layout, `--pairs` senders on `a.test` each send `--federated-messages` offline messages
//! (`SEND`, the path every cross-server message takes) to their own recipient, who is online
//! with `MAILBOX` and `ACK`s each `MAIL` as it comes:
//! - *one server*: the recipients are users of `a.test` too (one durable commit per hop);
//! - *two servers*: the recipients are users of `b.test` (`a.test` commits to its queue for
//!   the peer, relays, `b.test` commits to the recipient's queue, `a.test` deletes on
//!   `RACK`).
//!
//! Each sender sends its next message when the previous one reached its recipient (a closed
//! loop: the rate is what the path sustains at that concurrency, and each latency is from
//! the `SEND` write to the `MAIL` read). Layouts alternate over `--federated-rounds` rounds so
//! both see the same machine noise. Reported per round: messages/s, and latency p50 / p99.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use securechat::client::link::{self, Link, LinkReader};
use securechat::protocol::name::ServerName;
use securechat::protocol::ServerLine;
use securechat::server::{Config, FederationConfig, PeerConfig, Server};
use securechat::{tls, Error, Result};

use crate::target::bench_limits;

/// One `--federated` run.
#[derive(Debug, Clone)]
pub struct FederatedConfig {
    /// Sender-recipient pairs at once.
    pub pairs: usize,
    /// Messages each sender sends per round.
    pub messages: usize,
    /// Rounds of each layout, alternating.
    pub rounds: usize,
}

/// What one round of one layout measured.
#[derive(Debug, Clone)]
pub struct RoundResult {
    /// Messages delivered per second.
    pub msgs_per_s: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th-percentile latency, ms.
    pub p99_ms: f64,
}

/// How long a client waits for a line before the run fails.
const STALL: Duration = Duration::from_secs(30);

/// A port that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The two linked servers and what clients need to reach them.
struct Pair {
    /// The senders' server, `a.test`.
    a: Server,
    /// The remote recipients' server, `b.test`.
    b: Server,
    /// TLS for the bench's clients (the development CA both servers share).
    client_tls: Arc<rustls::ClientConfig>,
    /// Their data and certificates, removed at the end.
    dir: PathBuf,
}

fn start(dir: &Path) -> Result<Pair> {
    let certs = tls::ensure_dev_certificates(&dir.join("certs"))?;
    let fed_dir = dir.join("certs").join("federation");
    let names = [ServerName::parse("a.test"), ServerName::parse("b.test")];
    let [Ok(a_name), Ok(b_name)] = names else {
        return Err(Error::Config("bad server names".into()));
    };
    let a_files = tls::federation::issue_federation_certificate(&fed_dir, &a_name)?;
    let b_files = tls::federation::issue_federation_certificate(&fed_dir, &b_name)?;
    let roots = tls::load_certificates(&a_files.ca)?;
    let (a_port, b_port) = (free_port()?, free_port()?);
    let start_one = |name: &ServerName,
                     files: &tls::federation::FederationFiles,
                     port: u16,
                     peer: &ServerName,
                     peer_port: u16|
     -> Result<Server> {
        let (chain, key) = tls::load_identity(&certs.cert, &certs.key)?;
        let (fed_chain, fed_key) = tls::load_identity(&files.cert, &files.key)?;
        Server::start(Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.join(name.as_str()),
            tls: tls::server_config(chain, key)?,
            bcrypt_cost: 4,
            limits: bench_limits(),
            federation: Some(FederationConfig {
                name: name.clone(),
                listen: SocketAddr::from(([127, 0, 0, 1], port)),
                chain: fed_chain,
                key: fed_key,
                peers: vec![PeerConfig {
                    name: peer.clone(),
                    address: format!("127.0.0.1:{peer_port}"),
                    trust: tls::federation::PeerTrust::Ca(roots.clone()),
                }],
                share_room: true,
                share_presence: true,
                queue_max_bytes: 1 << 30,
            }),
        })
    };
    let a = start_one(&a_name, &a_files, a_port, &b_name, b_port)?;
    let b = start_one(&b_name, &b_files, b_port, &a_name, a_port)?;
    Ok(Pair {
        a,
        b,
        client_tls: tls::client_config(Some(&certs.ca))?,
        dir: dir.to_path_buf(),
    })
}

/// A logged-in mailbox client.
fn user(
    server: &Server,
    config: &Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<(Link, LinkReader)> {
    let address = format!("localhost:{}", server.local_addr().port());
    let (link, mut reader, _) = link::connect(&address, config.clone())?;
    for request in [
        "MAILBOX".to_owned(),
        format!("REGISTER {name} {}", crate::clients::PASSWORD),
        format!("LOGIN {name} {}", crate::clients::PASSWORD),
    ] {
        link.send_line(&request)?;
        match reader.recv_timeout(STALL)? {
            Some(ServerLine::Ok { .. }) => {}
            other => return Err(Error::Config(format!("{request:?} answered {other:?}"))),
        }
    }
    Ok((link, reader))
}

/// Runs every round of both layouts and prints them side by side.
pub fn run(cfg: &FederatedConfig) -> Result<Vec<(String, RoundResult)>> {
    let dir =
        std::env::temp_dir().join(format!("securechat-bench-federated-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let servers = start(&dir)?;
    // Let the links come up (each connector dials at start).
    thread::sleep(Duration::from_millis(500));
    let mut results = Vec::new();
    for round in 0..cfg.rounds {
        for remote in [false, true] {
            let layout = if remote { "two servers" } else { "one server" };
            let result = round_trip(&servers, cfg, round, remote)?;
            println!(
                "  federated round {round} {layout:>11}: {:>7.0} msgs/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
                result.msgs_per_s, result.p50_ms, result.p99_ms
            );
            results.push((layout.to_owned(), result));
        }
    }
    let Pair { a, b, dir, .. } = servers;
    a.shutdown();
    b.shutdown();
    let _ = std::fs::remove_dir_all(dir);
    Ok(results)
}

/// One round: `pairs` closed loops of `messages` each.
fn round_trip(
    servers: &Pair,
    cfg: &FederatedConfig,
    round: usize,
    remote: bool,
) -> Result<RoundResult> {
    let tag = format!("r{round}{}", if remote { "f" } else { "l" });
    let mut loops = Vec::new();
    for i in 0..cfg.pairs {
        let sender = user(&servers.a, &servers.client_tls, &format!("s{tag}n{i}"))?;
        let recipient_server = if remote { &servers.b } else { &servers.a };
        let recipient_name = format!("d{tag}n{i}");
        let recipient = user(recipient_server, &servers.client_tls, &recipient_name)?;
        let address = if remote {
            format!("{recipient_name}@b.test")
        } else {
            recipient_name
        };
        loops.push((sender, recipient, address));
    }
    let messages = cfg.messages;
    let started = Instant::now();
    let threads: Vec<_> = loops
        .into_iter()
        .map(
            |((sender, mut sender_reader), (recipient, mut reader), address)| {
                thread::spawn(move || -> Result<Vec<Duration>> {
                    // The sender's STATUS lines are read and dropped on their own thread, so
                    // its connection never backs up.
                    let drain =
                        thread::spawn(
                            move || while let Ok(Some(_)) = sender_reader.recv_timeout(STALL) {},
                        );
                    let mut latencies = Vec::with_capacity(messages);
                    for m in 0..messages {
                        let sent = Instant::now();
                        sender.send_line(&format!(
                            "SEND {address} m{m} RATCHET payload-{m}-{}",
                            "x".repeat(64)
                        ))?;
                        loop {
                            match reader.recv_timeout(STALL)? {
                                Some(ServerLine::Mail { id, .. }) => {
                                    latencies.push(sent.elapsed());
                                    recipient.send_line(&format!("ACK {id}"))?;
                                    break;
                                }
                                Some(_) => {}
                                None => {
                                    return Err(Error::Config(format!(
                                        "no MAIL for {address} within {STALL:?}"
                                    )))
                                }
                            }
                        }
                    }
                    sender.close();
                    recipient.close();
                    let _ = drain.join();
                    Ok(latencies)
                })
            },
        )
        .collect();
    let mut all = Vec::new();
    for thread in threads {
        let latencies = thread
            .join()
            .map_err(|_| Error::Config("a bench loop panicked".into()))??;
        all.extend(latencies);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let at = |q: f64| {
        let i = ((all.len() as f64 * q).ceil() as usize).clamp(1, all.len().max(1)) - 1;
        all.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(RoundResult {
        msgs_per_s: all.len() as f64 / elapsed,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    })
}
