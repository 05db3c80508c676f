//! The securechat terminal client.
//!
//! Usage: `cargo run --bin client -- [--server HOST:PORT] [--ca FILE] [--resolve HOST:PORT:ADDR]`
//!
//! Shows the `l` (log in) / `r` (register) / `c` (close) menu, then the chat with a line
//! editor (history kept unless `--no-history`). Trusts the public web PKI and, if present,
//! the development CA in `certs/ca.pem` (or `--ca FILE`), which vouches only for the names
//! its certificate is constrained to. Reconnects by itself when the connection is lost.
//! For scripts: `--user NAME --password-stdin [--register]`; the exit status is non-zero
//! if a message given to it was not sent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use securechat::client::screen::sanitize;
use securechat::client::terminal::{self, Options};
use securechat::e2e::Group;

/// A secure terminal chat client: TLS to the server, end-to-end encryption between users.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Server to connect to.
    #[arg(long, default_value = "localhost:7878")]
    server: String,
    /// HOST:PORT:ADDR — connect to ADDR when --server is HOST:PORT (as curl's --resolve);
    /// the certificate is still checked for HOST.
    #[arg(long, value_name = "HOST:PORT:ADDR")]
    resolve: Option<String>,
    /// CA certificate to trust besides the public web PKI (default: certs/ca.pem if present).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Where to keep identity keys and pinned peer keys
    /// (default: $XDG_DATA_HOME/securechat or ~/.local/share/securechat).
    #[arg(long)]
    home: Option<PathBuf>,
    /// Log in as this user, skipping the menu.
    #[arg(long)]
    user: Option<String>,
    /// With --user: read the password from the first line of standard input.
    #[arg(long, requires = "user")]
    password_stdin: bool,
    /// With --user: register the account first.
    #[arg(long, requires = "user")]
    register: bool,
    /// Explain every Diffie-Hellman exchange step by step (as /dh USER does for one user).
    #[arg(long)]
    explain: bool,
    /// Diffie-Hellman group for exchanges this client starts: ffdhe3072 or ffdhe2048.
    #[arg(long, default_value = "ffdhe3072", value_parser = parse_group)]
    group: Group,
    /// Seconds without sending anything after which the client pings the server (keep it
    /// below the server's idle timeout).
    #[arg(long, default_value_t = terminal::DEFAULT_KEEPALIVE.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    keepalive: u64,
    /// Keep no history of typed lines (by default it is kept, owner-only, beside the keys).
    #[arg(long)]
    no_history: bool,
}

fn parse_group(name: &str) -> Result<Group, String> {
    Group::from_name(name)
        .ok_or_else(|| format!("unknown group {name:?}: use ffdhe3072 or ffdhe2048"))
}

/// The address `--resolve HOST:PORT:ADDR` gives for `server`, which must be `HOST:PORT`.
fn resolve_for(server: &str, resolve: &str) -> Result<std::net::SocketAddr, String> {
    let mut parts = resolve.splitn(3, ':');
    let (Some(host), Some(port), Some(addr)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("--resolve {resolve:?}: expected HOST:PORT:ADDR"));
    };
    if format!("{host}:{port}") != server {
        return Err(format!(
            "--resolve {resolve:?} is for {host}:{port}, but --server is {server:?}"
        ));
    }
    let ip: std::net::IpAddr = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("--resolve {resolve:?}: {addr:?} is not an IP address"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("--resolve {resolve:?}: {port:?} is not a port"))?;
    Ok(std::net::SocketAddr::new(ip, port))
}

fn main() -> ExitCode {
    securechat::logging::init();
    let args = Args::parse();
    let resolve = match args
        .resolve
        .as_deref()
        .map(|r| resolve_for(&args.server, r))
    {
        Some(Ok(addr)) => Some(addr),
        Some(Err(problem)) => {
            eprintln!("error: {}", sanitize(&problem));
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let options = Options {
        server: args.server,
        resolve,
        ca: args.ca,
        home: args.home,
        user: args.user,
        password_stdin: args.password_stdin,
        register: args.register,
        explain: args.explain,
        group: args.group,
        keepalive: std::time::Duration::from_secs(args.keepalive),
        no_history: args.no_history,
    };
    match terminal::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", sanitize(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
