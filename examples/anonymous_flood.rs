//! One-off measurement for issue 13: the server memory an anonymous connection can pin by
//! pushing everything it can before login and never reading.
//!
//! Usage: `cargo run --example anonymous_flood [SERVER_BINARY] [CONNECTIONS] [PINGS]`
//! (defaults `target/debug/server`, 512 and 250). Runs the server binary twice as a child
//! (so its RSS is its own), each time opening CONNECTIONS connections spread over
//! 127.0.0.2 .. 127.0.0.9 that never log in and never read:
//! 1. *idle*: each completes the TLS handshake and sends nothing;
//! 2. *pushing*: each sends PINGS `PING`s with the longest token allowed before login, then
//!    a line one byte short of the frame limit without its line ending.
//!
//! It prints the server's RSS over its RSS before the connections for both runs, the
//! difference per connection, and how many pushing connections the server cut off. The
//! per-network cap on connections not logged in is turned off (all eight addresses are
//! one /24), so that every connection is measured.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use securechat::tls;

/// Source addresses: eight, as an attacker with a handful of hosts would have.
const SOURCES: u8 = 8;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let binary = args.next().unwrap_or_else(|| "target/debug/server".into());
    let connections: usize = args.next().map_or(Ok(512), |a| a.parse())?;
    let pings: usize = args.next().map_or(Ok(250), |a| a.parse())?;
    let idle = run(&binary, connections, None)?;
    let pushing = run(&binary, connections, Some(pings))?;
    let kib = |bytes: i64| bytes as f64 / 1024.0;
    println!(
        "idle:    {connections} connections, +{:.0} KiB RSS ({:.1} KiB each)",
        kib(idle.grown),
        kib(idle.grown) / connections as f64
    );
    println!(
        "pushing: {connections} connections, +{:.0} KiB RSS ({:.1} KiB each); {} still open",
        kib(pushing.grown),
        kib(pushing.grown) / connections as f64,
        pushing.open
    );
    println!(
        "beyond an idle anonymous connection: {:.1} KiB each",
        kib(pushing.grown - idle.grown) / connections as f64
    );
    Ok(())
}

/// What one run measured.
struct Measured {
    /// Server RSS with the connections open, less its RSS before, in bytes.
    grown: i64,
    /// Connections the server had not closed when RSS was read.
    open: usize,
}

/// Starts the server, opens `connections` anonymous connections (pushing `pings` PINGs
/// and a partial frame each, if given), and reads the server's RSS.
fn run(
    binary: &str,
    connections: usize,
    pings: Option<usize>,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = Server(
        Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--certs-dir")
            .arg(dir.path().join("certs"))
            .args(["--max-anonymous-per-network", "0"])
            .args(["--max-connections-per-ip", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("the server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ca = dir.path().join("certs").join(tls::DEV_CA_CERT);
    let client = tls::client_config(Some(&ca))?;
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    // Let the server settle after its first connection test.
    std::thread::sleep(Duration::from_millis(500));
    let before = rss(server.0.id())?;
    let threads_before = status_field(server.0.id(), "Threads:")?;
    let mut open = Vec::with_capacity(connections);
    for i in 0..connections {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES as usize) as u8));
        let mut tls = connect(&client, from, to)?;
        if let Some(pings) = pings {
            push(&mut tls, pings);
        }
        open.push(tls);
    }
    std::thread::sleep(Duration::from_secs(3));
    let after = rss(server.0.id())?;
    // Each connection the server still holds has two threads (login and writer).
    let threads = status_field(server.0.id(), "Threads:")?;
    drop(open);
    Ok(Measured {
        grown: after as i64 - before as i64,
        open: (threads.saturating_sub(threads_before) / 2) as usize,
    })
}

/// A TLS connection from `from` with a small receive buffer, handshake done.
fn connect(
    client: &std::sync::Arc<rustls::ClientConfig>,
    from: IpAddr,
    to: SocketAddr,
) -> Result<Tls, Box<dyn std::error::Error>> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_recv_buffer_size(4096)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect(&to.into())?;
    let tcp = TcpStream::from(socket);
    tcp.set_write_timeout(Some(Duration::from_millis(200)))?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let conn = rustls::ClientConnection::new(client.clone(), name)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.conn.complete_io(&mut tls.sock)?;
    Ok(tls)
}

/// Sends `pings` PINGs with 64-byte tokens, then 16,383 bytes of a line that never ends;
/// stops early if the server stops taking data.
fn push(tls: &mut Tls, pings: usize) {
    let ping = format!("PING {}\n", "p".repeat(64));
    for _ in 0..pings {
        if tls.write_all(ping.as_bytes()).is_err() {
            return;
        }
    }
    let _ = tls.write_all("x".repeat(16 * 1024 - 1).as_bytes());
    let _ = tls.flush();
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> Result<u64, Box<dyn std::error::Error>> {
    Ok(status_field(pid, "VmRSS:")? * 1024)
}

/// A number from `/proc/<pid>/status` (`VmRSS:` is in KiB).
fn status_field(pid: u32, field: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))?;
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(value)
}

/// The server child, killed when the run ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
