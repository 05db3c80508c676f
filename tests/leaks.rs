//! Abrupt client death at every stage leaves nothing behind: after 1,000 clients that
//! vanish mid-handshake, mid-login, mid-key-exchange or mid-message, the server's threads
//! and open file descriptors are back to where they started.
//!
//! One test in its own binary, because it counts this process's threads and descriptors
//! and other tests running alongside would disturb the count.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{TestServer, PASSWORD};
use securechat::client::link;
use securechat::protocol::ServerLine;

/// Threads of this process, and its open sockets. (The account database's pooled
/// connections also hold descriptors; the pool is bounded and is checked separately.)
fn threads_and_sockets() -> (usize, usize) {
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    (
        threads,
        fds_matching(|target| target.starts_with("socket:")),
    )
}

fn fds_matching(pred: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|entries| {
            entries
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| pred(&target.to_string_lossy()))
                .count()
        })
        .unwrap_or(0)
}

/// The first bytes of a real ClientHello, then the connection is dropped.
fn vanish_mid_handshake(server: &TestServer, config: &Arc<rustls::ClientConfig>) {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    if let Ok(mut socket) = TcpStream::connect(server.addr) {
        let _ = socket.write_all(&hello[..hello.len() / 2]);
    }
}

#[test]
fn a_thousand_abrupt_clients_leave_no_thread_or_descriptor_behind() {
    const CLIENTS: usize = 1000;
    const WORKERS: usize = 8;
    const ACCOUNTS: usize = 10;
    let server = Arc::new(TestServer::start());
    let config = server.client_config();
    {
        let mut setup = server.connect();
        for i in 0..ACCOUNTS {
            setup.register_ok(&format!("ghost{i}"));
        }
        setup.register_ok("peer");
    }
    // A peer for the key-exchange and message cases; a thread keeps its queue drained.
    let mut peer = server.connect();
    peer.login_ok("peer");
    thread::spawn(move || while peer.reader.recv().is_ok() {});
    thread::sleep(Duration::from_millis(200));
    let before = threads_and_sockets();
    // Clients that got as far as a logged-in session before vanishing mid-key-exchange
    // and mid-message: the stages must really be reached, not skipped on an error.
    let reached = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let server = server.clone();
            let config = config.clone();
            let reached = reached.clone();
            thread::spawn(move || {
                for i in (w..CLIENTS).step_by(WORKERS) {
                    let user = format!("ghost{}", i % ACCOUNTS);
                    match i % 6 {
                        // A port scan: connect and close.
                        0 => drop(TcpStream::connect(server.addr)),
                        1 => vanish_mid_handshake(&server, &config),
                        // TLS up, then gone without a word.
                        2 => drop(link::connect(&server.address(), config.clone())),
                        // Mid-login: the reply has nowhere to go.
                        3 => {
                            if let Ok((link, _, _)) =
                                link::connect(&server.address(), config.clone())
                            {
                                let _ = link.send_line(&format!("LOGIN {user} {PASSWORD}"));
                            }
                        }
                        // Mid-key-exchange and mid-message: half a frame, then gone.
                        stage => {
                            let Ok((link, mut reader, _)) =
                                link::connect(&server.address(), config.clone())
                            else {
                                continue;
                            };
                            let _ = link.send_line(&format!("LOGIN {user} {PASSWORD}"));
                            if let Ok(Some(ServerLine::Ok { command, .. })) =
                                reader.recv_timeout(common::WAIT)
                            {
                                if command == securechat::protocol::Command::Login {
                                    reached[stage - 4].fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            let half = if stage == 4 {
                                "MSG peer DH-INIT AAAAAAAAAAAAAAAAAAAAAA== ffdhe3072 AAEC"
                            } else {
                                "MSG peer E2E AAAAAAAAAAAAAAAAAAAAAA== 1 AAAA"
                            };
                            let _ = link.send_raw(half.as_bytes());
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let reached: Vec<usize> = reached.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    assert!(
        reached.iter().all(|&n| n > 0),
        "logged-in clients that vanished mid-key-exchange and mid-message: {reached:?}"
    );

    // Every connection winds down on its own (handshake timeouts included); wait for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut now = threads_and_sockets();
    while now != before && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        now = threads_and_sockets();
    }
    assert_eq!(
        now, before,
        "(threads, open sockets) before and after {CLIENTS} abrupt clients"
    );
    // The database pool keeps at most 8 idle connections (database, WAL and shared-memory
    // descriptors each), however many clients came and went.
    let database = fds_matching(|target| target.contains("securechat.db"));
    assert!(database <= 3 * 8, "{database} database descriptors open");
    // And the server still works.
    let mut check = server.connect();
    check.login_ok("ghost0");
}
