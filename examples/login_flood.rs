//! One-off measurement for issue 13: how long an honest login takes while four networks
//! flood the server with `LOGIN`s for unknown names, at the production bcrypt cost.
//!
//! Usage: `cargo run --example login_flood [COST] [PER_NETWORK]` (defaults 12 and 64).
//! Starts a server in this process on 127.0.0.1, opens PER_NETWORK connections from each of
//! 127.0.1.1 .. 127.0.4.1 (four /24 networks; all of 127/8 is loopback on Linux), sends one
//! `LOGIN` on each at once, then times one honest `LOGIN` from 127.0.5.1, and prints it with
//! how many flood attempts were checked and refused.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use securechat::server::ThrottlePolicy;
use securechat::server::{Config, Limits, Server};
use securechat::tls;

/// A TLS stream read a line at a time.
type Stream = BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let cost: u32 = args.next().map_or(Ok(12), |a| a.parse())?;
    let per_network: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let certs = tls::ensure_dev_certificates(&dir.path().join("certs"))?;
    let (chain, key) = tls::load_identity(&certs.cert, &certs.key)?;
    let server = Server::start(Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().join("data"),
        tls: tls::server_config(chain, key)?,
        bcrypt_cost: cost,
        limits: Limits {
            max_connections_per_ip: 0,
            throttle: ThrottlePolicy {
                registrations_burst: 0,
                ..ThrottlePolicy::default()
            },
            ..Limits::default()
        },
        federation: None,
    })?;
    let client = tls::client_config(Some(&certs.ca))?;
    let connect = |from: IpAddr| -> Result<Stream, Box<dyn std::error::Error>> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&SocketAddr::new(from, 0).into())?;
        socket.connect(&server.local_addr().into())?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let conn = rustls::ClientConnection::new(client.clone(), name)?;
        let mut stream = BufReader::new(rustls::StreamOwned::new(conn, TcpStream::from(socket)));
        stream.read_line(&mut String::new())?; // the greeting
        Ok(stream)
    };
    let request = |stream: &mut Stream, line: &str| -> std::io::Result<String> {
        stream.get_mut().write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        stream.read_line(&mut reply)?;
        Ok(reply)
    };
    let password = "Sturdy pass 1";
    let mut honest = connect([127, 0, 5, 1].into())?;
    request(&mut honest, &format!("REGISTER honest {password}"))?;

    let quiet = Instant::now();
    request(&mut honest, &format!("LOGIN honest {password}"))?;
    let quiet = quiet.elapsed();
    let mut honest = connect([127, 0, 5, 1].into())?;

    let mut flood = Vec::new();
    for n in 1..=4u8 {
        for _ in 0..per_network {
            flood.push(connect([127, 0, n, 1].into())?);
        }
    }
    let (checked, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let readers: Vec<_> = flood
        .into_iter()
        .enumerate()
        .map(|(i, mut stream)| {
            let (checked, refused) = (checked.clone(), refused.clone());
            std::thread::spawn(move || {
                match request(&mut stream, &format!("LOGIN ghost{i} {password}")) {
                    Ok(reply) if reply.contains(" auth-failed ") => checked.fetch_add(1, SeqCst),
                    _ => refused.fetch_add(1, SeqCst),
                };
            })
        })
        .collect();
    // Let the flood's lines reach the server before the honest login.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let reply = request(&mut honest, &format!("LOGIN honest {password}"))?;
    let during = started.elapsed();
    let checked_then = checked.load(SeqCst);
    for reader in readers {
        let _ = reader.join();
    }
    println!(
        "cost {cost}, {per_network} LOGINs from each of 4 networks: honest login {:.2} s \
         during the flood ({:.2} s without it); reply {:?}; flood attempts checked before the honest \
         reply: {checked_then}; in all {} checked, {} refused at once; whole flood {:.1} s",
        during.as_secs_f64(),
        quiet.as_secs_f64(),
        reply.trim_end(),
        checked.load(SeqCst),
        refused.load(SeqCst),
        started.elapsed().as_secs_f64(),
    );
    server.shutdown();
    Ok(())
}
