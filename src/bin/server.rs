//! The securechat server.
//!
//! Usage: `cargo run --bin server -- [--listen ADDR] [--data-dir DIR] [--cert FILE --key FILE]
//! [--hostname NAME]...`
//!
//! With no certificate given it uses (and on first start creates) a development CA and
//! server certificate in `certs/`, for `localhost`, `127.0.0.1`, `::1` and each `--hostname`;
//! clients started from the same directory trust that CA for those names only.
//! Stops cleanly on Ctrl-C or SIGTERM. `--help` lists every limit.
//!
//! Federation: `--name a.test --federation-listen 127.0.0.1:7101 --peers peers.conf` links
//! this server with the servers in the peers file (see `securechat::server::federation::peers`);
//! `--issue-federation-cert NAME...` makes (or reuses) a development federation CA in
//! `certs/federation/` and issues a certificate for each NAME there, then exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use securechat::protocol::name::ServerName;
use securechat::server::ThrottlePolicy;
use securechat::server::{self, Config, Limits, Server};
use securechat::{logging, tls};

/// A TLS chat server with end-to-end encrypted private messages.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Directory for the account database.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// PEM certificate chain (leaf first). Without it a development certificate is used.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Where the development CA and certificate live (made on first start).
    #[arg(long, default_value = "certs")]
    certs_dir: PathBuf,
    /// A further name or address for the development certificate (repeatable), besides
    /// localhost, 127.0.0.1 and ::1: for example the laptop's LAN name. Changing the set
    /// makes a new development CA, which clients must copy again.
    #[arg(long = "hostname", value_name = "NAME")]
    hostnames: Vec<String>,
    /// bcrypt cost for new password hashes (each step doubles the work).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(4..=31))]
    bcrypt_cost: u32,
    /// Largest frame (line) a client may send, in bytes.
    #[arg(long, default_value_t = Limits::default().max_frame)]
    max_frame: usize,
    /// Seconds allowed for the TLS handshake.
    #[arg(long, default_value_t = Limits::default().handshake_timeout.as_secs())]
    handshake_timeout: u64,
    /// Seconds allowed from connecting to logging in.
    #[arg(long, default_value_t = Limits::default().login_timeout.as_secs())]
    login_timeout: u64,
    /// Seconds a logged-in client may stay silent (clients ping to stay connected).
    #[arg(long, default_value_t = Limits::default().idle_timeout.as_secs())]
    idle_timeout: u64,
    /// Seconds a client's socket may accept no data before it is disconnected as not
    /// reading (0 = never).
    #[arg(long, default_value_t = Limits::default().send_timeout.as_secs())]
    send_timeout: u64,
    /// Connections served at once.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Connections from one IP address at once (0 = no limit).
    #[arg(long, default_value_t = Limits::default().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Connections that have not logged in yet, server-wide (0 = no limit).
    #[arg(long, default_value_t = Limits::default().max_anonymous)]
    max_anonymous: usize,
    /// Connections that have not logged in yet from one network, a /24 or /64 (0 = no
    /// limit).
    #[arg(long, default_value_t = Limits::default().max_anonymous_per_network)]
    max_anonymous_per_network: usize,
    /// Bytes of replies and private messages that may wait for one client before it is
    /// disconnected as not reading.
    #[arg(long, default_value_t = Limits::default().outbound_queue_bytes)]
    queue_bytes: usize,
    /// Kernel send buffer per client socket, in bytes (0 = the kernel's choice).
    #[arg(long, default_value_t = Limits::default().socket_send_buffer)]
    socket_send_buffer: usize,
    /// Bytes of room lines that may wait for one client; lines beyond are skipped and the
    /// client is told how many.
    #[arg(long, default_value_t = Limits::default().room_queue_bytes)]
    room_queue_bytes: usize,
    /// bcrypt computations at once (default: the number of CPU cores).
    #[arg(long, default_value_t = Limits::default().bcrypt_concurrency)]
    bcrypt_concurrency: usize,
    /// Frames per second one client may send on average (0 = no limit).
    #[arg(long, default_value_t = Limits::default().message_rate)]
    rate_limit: u32,
    /// Frames one client may send at once above the average.
    #[arg(long, default_value_t = Limits::default().message_burst)]
    rate_burst: u32,
    /// Room bytes times recipients one user may cause per second (0 = no limit).
    #[arg(long, default_value_t = Limits::default().room_fanout_rate)]
    room_fanout_rate: u32,
    /// Room lines kept (in the database) and replayed at login to clients that ask;
    /// 0 turns room history off and deletes what was kept.
    #[arg(long, default_value_t = Limits::default().room_history as u64,
          value_parser = clap::value_parser!(u64).range(0..=server::MAX_ROOM_HISTORY as u64))]
    room_history: u64,
    /// Seconds a message stored for an offline recipient is kept before it expires.
    #[arg(long, default_value_t = Limits::default().queue_ttl.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    queue_ttl: u64,
    /// Messages stored for one offline recipient; more are refused (quota).
    #[arg(long, default_value_t = Limits::default().queue_max)]
    queue_max: u64,
    /// Payload bytes stored for one offline recipient; more are refused (quota). (Not
    /// `--queue-bytes`, which bounds a connected client's outbound queue.)
    #[arg(long, default_value_t = Limits::default().queue_max_bytes)]
    queue_max_bytes: u64,
    /// Key exchanges (DH-INIT) one user may start with another per minute (0 = no limit).
    #[arg(long, default_value_t = Limits::default().exchange_starts)]
    exchange_starts: u32,
    /// Registrations one address may make in a burst; one more per minute after that
    /// (0 = no limit).
    #[arg(long, default_value_t = ThrottlePolicy::default().registrations_burst)]
    registrations_per_ip: u32,
    /// Logins and registrations from one network (an IPv4 /24, an IPv6 /64) that may wait
    /// for or run bcrypt at once; more are told to retry (0 = no limit).
    #[arg(long, default_value_t = ThrottlePolicy::default().logins_per_prefix)]
    logins_per_prefix: usize,
    /// This server's name in a federation: its users are `user@NAME` to other servers,
    /// and its federation certificate must be valid for it. Default: the first DNS name of
    /// --federation-cert, else localhost.
    #[arg(long)]
    name: Option<String>,
    /// Where the server-to-server port listens; with --peers, this server federates.
    #[arg(long, requires = "peers")]
    federation_listen: Option<SocketAddr>,
    /// The peers file: one linked server per line, `name address ca-file`.
    #[arg(long, requires = "federation_listen")]
    peers: Option<PathBuf>,
    /// This server's federation certificate chain (default: the development one for
    /// --name in certs/federation/).
    #[arg(long, requires = "federation_key")]
    federation_cert: Option<PathBuf>,
    /// Its private key.
    #[arg(long, requires = "federation_cert")]
    federation_key: Option<PathBuf>,
    /// Do not share the public room with peers (this server's lines stay here, and peers'
    /// lines are not shown).
    #[arg(long)]
    no_shared_room: bool,
    /// Do not tell peers who is online here (`/list SERVER` from their users).
    #[arg(long)]
    no_shared_presence: bool,
    /// Payload bytes queued for one peer while it is unreachable; more are refused.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    peer_queue_max_bytes: u64,
    /// Issue a development federation certificate for each NAME (and the federation CA, on
    /// first use) in certs/federation/, then exit: one command for a whole test federation.
    #[arg(long, value_name = "NAME", num_args = 1..)]
    issue_federation_cert: Vec<String>,
}

/// The development federation CA's directory, below --certs-dir.
const FEDERATION_DIR: &str = "federation";

fn main() -> ExitCode {
    logging::init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `path` as an absolute path, for log lines an operator can act on; as given if the
/// working directory cannot be read.
fn real_path(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `text` as a server name, or the rule it breaks as a configuration error.
fn server_name(text: &str) -> securechat::Result<ServerName> {
    ServerName::parse(text).map_err(|e| securechat::Error::Config(e.to_string()))
}

/// `--issue-federation-cert NAME`: issues, says where, and what to put in a peers file.
fn issue_federation_cert(certs_dir: &std::path::Path, name: &str) -> securechat::Result<()> {
    let name = server_name(name)?;
    let dir = certs_dir.join(FEDERATION_DIR);
    let files = tls::federation::issue_federation_certificate(&dir, &name)?;
    let pin = tls::load_certificates(&files.cert)?
        .first()
        .map(tls::federation::KeyPin::of_certificate)
        .transpose()
        .map_err(securechat::Error::Config)?;
    println!(
        "federation certificate for {name}: {} (key {})\ntrust anchor for peers files: {}",
        real_path(&files.cert).display(),
        real_path(&files.key).display(),
        real_path(&files.ca).display()
    );
    if let Some(pin) = pin {
        println!("or trust {name} by its key alone, in a peers file: {pin}");
    }
    Ok(())
}

/// The federation settings, if `--federation-listen` and `--peers` were given.
fn federation(args: &Args) -> securechat::Result<Option<server::FederationConfig>> {
    let (Some(listen), Some(peers)) = (args.federation_listen, &args.peers) else {
        return Ok(None);
    };
    let (name, chain, key) = match (&args.federation_cert, &args.federation_key) {
        (Some(cert), Some(key)) => {
            let (chain, key) = tls::load_identity(cert, key)?;
            let held = chain
                .first()
                .map(tls::federation::dns_names)
                .unwrap_or_default();
            let name = match &args.name {
                Some(name) => server_name(name)?,
                None => server_name(held.first().map_or("localhost", String::as_str))?,
            };
            if !held.iter().any(|n| n.eq_ignore_ascii_case(name.as_str())) {
                log::warn!(
                    "federation: {} holds {}, not {name}: peers that trust it by a CA will \
                     refuse it (a peer that pins its key will not)",
                    cert.display(),
                    if held.is_empty() {
                        "no DNS name".to_owned()
                    } else {
                        held.join(", ")
                    }
                );
            }
            (name, chain, key)
        }
        _ => {
            let name = server_name(args.name.as_deref().unwrap_or("localhost"))?;
            let dir = args.certs_dir.join(FEDERATION_DIR);
            let cert = dir.join(format!("{name}.pem"));
            if !cert.exists() {
                return Err(securechat::Error::Config(format!(
                    "no federation certificate for {name}: run the server once with \
                     --issue-federation-cert {name}, or give --federation-cert/--federation-key"
                )));
            }
            let (chain, key) = tls::load_identity(&cert, &dir.join(format!("{name}.key")))?;
            (name, chain, key)
        }
    };
    let peers = server::federation::peers::load(peers)?;
    if peers.iter().any(|p| p.name == name) {
        return Err(securechat::Error::Config(format!(
            "{name} lists itself as a peer"
        )));
    }
    Ok(Some(server::FederationConfig {
        name,
        listen,
        chain,
        key,
        peers,
        share_room: !args.no_shared_room,
        share_presence: !args.no_shared_presence,
        queue_max_bytes: args.peer_queue_max_bytes,
    }))
}

fn run(args: Args) -> securechat::Result<()> {
    if !args.issue_federation_cert.is_empty() {
        for name in &args.issue_federation_cert {
            issue_federation_cert(&args.certs_dir, name)?;
        }
        return Ok(());
    }
    let federation = federation(&args)?;
    let (cert, key) = match (args.cert, args.key) {
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            let dev = tls::ensure_dev_certificates_for(&args.certs_dir, &args.hostnames)?;
            log::info!(
                "development certificate ({}) for {}: {}; clients trust the CA {} \
                 (SHA-256 fingerprint {}), which vouches for these names only",
                dev.action,
                dev.names.join(", "),
                real_path(&dev.cert).display(),
                real_path(&dev.ca).display(),
                dev.ca_fingerprint
            );
            (dev.cert, dev.key)
        }
    };
    let (chain, key) = tls::load_identity(&cert, &key)?;
    let limits = Limits {
        max_frame: args.max_frame,
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        login_timeout: Duration::from_secs(args.login_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        send_timeout: Duration::from_secs(args.send_timeout),
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        max_anonymous: args.max_anonymous,
        max_anonymous_per_network: args.max_anonymous_per_network,
        outbound_queue_bytes: args.queue_bytes,
        room_queue_bytes: args.room_queue_bytes,
        socket_send_buffer: args.socket_send_buffer,
        exchange_starts: args.exchange_starts,
        room_fanout_rate: args.room_fanout_rate,
        bcrypt_concurrency: args.bcrypt_concurrency,
        message_rate: args.rate_limit,
        message_burst: args.rate_burst,
        room_history: args.room_history as usize,
        queue_ttl: Duration::from_secs(args.queue_ttl),
        queue_max: args.queue_max,
        queue_max_bytes: args.queue_max_bytes,
        throttle: ThrottlePolicy {
            registrations_burst: args.registrations_per_ip,
            logins_per_prefix: args.logins_per_prefix,
            ..ThrottlePolicy::default()
        },
        ..Limits::default()
    };
    match server::raise_open_file_limit() {
        Ok(n) if (n as usize) < limits.max_connections + 64 => log::warn!(
            "open-file limit is {n}: fewer than --max-connections {} allows",
            limits.max_connections
        ),
        Ok(_) => {}
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
    let server = Server::start(Config {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        tls: tls::server_config(chain, key)?,
        bcrypt_cost: args.bcrypt_cost,
        limits,
        federation,
    })?;
    log::info!(
        "securechat listening on {} (TLS 1.3/1.2; data in {})",
        server.local_addr(),
        real_path(&args.data_dir).display()
    );
    let handle = server.shutdown_handle();
    ctrlc::set_handler(move || {
        log::info!("shutdown requested");
        handle.trigger();
    })
    .map_err(|e| securechat::Error::Config(format!("cannot install signal handler: {e}")))?;
    server.wait();
    Ok(())
}
