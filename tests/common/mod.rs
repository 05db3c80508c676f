//! Shared test fixtures: a real server on `127.0.0.1:0` with its own data directory and
//! development CA, and clients built on the library's own connection code.
#![allow(dead_code)] // each test binary uses a different subset
#![allow(unreachable_pub)] // `pub` here is for the test binaries that include this module

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use securechat::client::link::{self, Link, LinkReader};
use securechat::protocol::{Command, ServerLine};
use securechat::server::ThrottlePolicy;
use securechat::server::{Config, Limits, Server};
use securechat::tls;

/// A password that passes every rule.
pub const PASSWORD: &str = "Sturdy pass 1";

/// How long a test waits for a frame before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process, with a temporary data directory.
pub struct TestServer {
    /// The running server (taken on restart).
    server: Option<Server>,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Holds the database and certificates; removed when the test ends.
    pub dir: tempfile::TempDir,
    /// The development CA clients trust.
    pub ca: PathBuf,
    /// The limits it runs with (kept for restarts).
    pub limits: Limits,
    /// The bcrypt cost it runs with (kept for restarts).
    pub bcrypt_cost: u32,
}

/// Limits for tests: the defaults without the per-address and per-prefix caps (every
/// test client comes from 127.0.0.1), without the frame rate limit and the room's fan-out
/// budget (tests send bursts)
/// and without the tiny pre-login budgets (tests fill the server's send path with long
/// `PING`s before login). Tests of those defences turn them back on.
pub fn test_limits() -> Limits {
    Limits {
        max_connections_per_ip: 0,
        message_rate: 0,
        anonymous_queue_bytes: 1 << 30,
        anonymous_ping_token: usize::MAX,
        max_anonymous: 0,
        max_anonymous_per_network: 0,
        room_fanout_rate: 0,
        throttle: ThrottlePolicy {
            registrations_burst: 0,
            logins_per_prefix: 0,
            ..ThrottlePolicy::default()
        },
        ..Limits::default()
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::with_limits(test_limits())
    }

    pub fn with_limits(limits: Limits) -> TestServer {
        TestServer::with(limits, 4)
    }

    /// A server with these limits and bcrypt cost (tests use 4, the minimum, unless the
    /// cost itself is what they measure).
    pub fn with(limits: Limits, bcrypt_cost: u32) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = tls::ensure_dev_certificates(&dir.path().join("certs")).expect("dev certs");
        let server = start_server(
            dir.path(),
            &certs,
            limits.clone(),
            bcrypt_cost,
            "127.0.0.1:0",
        );
        TestServer {
            addr: server.local_addr(),
            server: Some(server),
            ca: certs.ca,
            dir,
            limits,
            bcrypt_cost,
        }
    }

    /// Stops the server and starts a new one on the same data directory and port.
    pub fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
        let certs = tls::ensure_dev_certificates(&self.dir.path().join("certs")).unwrap();
        let server = start_server(
            self.dir.path(),
            &certs,
            self.limits.clone(),
            self.bcrypt_cost,
            &self.addr.to_string(),
        );
        self.addr = server.local_addr();
        self.server = Some(server);
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `host:port` for clients.
    pub fn address(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        tls::client_config(Some(&self.ca)).expect("client config")
    }

    /// A connected, anonymous client (greeting already read).
    pub fn connect(&self) -> TestClient {
        let (link, reader, _) =
            link::connect(&self.address(), self.client_config()).expect("connect");
        TestClient { link, reader }
    }

    /// A client registered and logged in as `user`.
    pub fn login(&self, user: &str) -> TestClient {
        let mut client = self.connect();
        client.register_ok(user);
        client.login_ok(user);
        client
    }
}

fn start_server(
    dir: &Path,
    certs: &tls::DevCertificates,
    limits: Limits,
    bcrypt_cost: u32,
    listen: &str,
) -> Server {
    let (chain, key) = tls::load_identity(&certs.cert, &certs.key).unwrap();
    Server::start(Config {
        listen: listen.parse().unwrap(),
        data_dir: dir.join("data"),
        tls: tls::server_config(chain, key).unwrap(),
        bcrypt_cost,
        limits,
        federation: None,
    })
    .expect("server starts")
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test's connection to the server.
pub struct TestClient {
    pub link: Link,
    pub reader: LinkReader,
}

impl TestClient {
    pub fn send(&self, line: &str) {
        self.link.send_line(line).expect("send");
    }

    /// The next frame; fails the test if none arrives within [`WAIT`].
    pub fn recv(&mut self) -> ServerLine {
        match self.reader.recv_timeout(WAIT) {
            Ok(Some(line)) => line,
            Ok(None) => panic!("no frame within {WAIT:?}"),
            Err(e) => panic!("connection failed while waiting for a frame: {e}"),
        }
    }

    /// Frames until one matches `pred`, which is returned; fails after [`WAIT`].
    pub fn recv_until(&mut self, mut pred: impl FnMut(&ServerLine) -> bool) -> ServerLine {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let line = self.recv();
            if pred(&line) {
                return line;
            }
        }
        panic!("no matching frame within {WAIT:?}");
    }

    /// Sends a request and returns the reply.
    pub fn request(&mut self, line: &str) -> ServerLine {
        self.send(line);
        self.recv()
    }

    pub fn register_ok(&mut self, user: &str) {
        let reply = self.request(&format!("REGISTER {user} {PASSWORD}"));
        assert_eq!(
            reply,
            ok("REGISTER", user),
            "registering {user} should succeed"
        );
    }

    pub fn login_ok(&mut self, user: &str) {
        let reply = self.request(&format!("LOGIN {user} {PASSWORD}"));
        assert_eq!(reply, ok("LOGIN", user), "logging in {user} should succeed");
    }

    /// Asserts that nothing arrives for `quiet`.
    pub fn assert_silent(&mut self, quiet: Duration) {
        match self.reader.recv_timeout(quiet) {
            Ok(None) => {}
            Ok(Some(line)) => panic!("expected silence, got {line:?}"),
            Err(e) => panic!("connection failed: {e}"),
        }
    }

    /// Sends `bytes` every 100 ms, never a complete line, until the server ends the
    /// connection; returns the frames received before that. Fails the test if the
    /// connection is still open after `limit`: the trickle kept it alive.
    pub fn trickle_until_cut(&mut self, bytes: &[u8], limit: Duration) -> Vec<ServerLine> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if self.link.send_raw(bytes).is_err() {
                return seen;
            }
            match self.reader.recv_timeout(Duration::from_millis(100)) {
                Ok(Some(line)) => seen.push(line),
                Ok(None) => {}
                Err(_) => return seen,
            }
        }
        panic!("the connection stayed open through {limit:?} of trickling; saw {seen:?}");
    }

    /// Waits until the server closes the connection; returns the frames before that.
    pub fn drain_until_closed(&mut self) -> Vec<ServerLine> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            match self.reader.recv_timeout(Duration::from_millis(200)) {
                Ok(Some(line)) => seen.push(line),
                Ok(None) => {}
                Err(_) => return seen,
            }
        }
        panic!("server did not close the connection within {WAIT:?}; saw {seen:?}");
    }
}

/// `OK <command> <detail>`.
pub fn ok(command: &str, detail: &str) -> ServerLine {
    ServerLine::Ok {
        command: Command::from_verb(command).expect("a command's verb"),
        detail: detail.into(),
    }
}

/// The code of an `ERR` line, or a panic naming what came instead.
pub fn err_code(line: &ServerLine) -> (&str, &str, &str) {
    match line {
        ServerLine::Err {
            command,
            code,
            text,
        } => (command.map_or("-", Command::verb), code.as_str(), text),
        other => panic!("expected ERR, got {other:?}"),
    }
}

/// A free loopback port (bound, then released for a server process to take: the server
/// binary cannot report a port the OS chose).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The server binary's arguments for a test instance on `port`: fast bcrypt, and none of
/// the per-address or rate limits (all test clients come from 127.0.0.1, in bursts).
pub fn server_args(port: u16, data: &Path, certs: &Path) -> Vec<String> {
    [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        &data.display().to_string(),
        "--certs-dir",
        &certs.display().to_string(),
        "--bcrypt-cost",
        "4",
        "--max-connections-per-ip",
        "0",
        "--registrations-per-ip",
        "0",
        "--rate-limit",
        "0",
        "--logins-per-prefix",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The real server binary as a child process (in a process group of its own, so that a
/// wrapper such as `unshare` goes down with it), its standard error kept in a log file.
pub struct ServerProcess {
    /// The process; `None` once stopped.
    child: Option<std::process::Child>,
    /// Where it listens.
    pub port: u16,
    /// The CA its clients trust.
    pub ca: PathBuf,
    /// Its standard error.
    log: PathBuf,
}

impl ServerProcess {
    /// The server binary with [`server_args`], its data and certificates under `dir`
    /// (`dir/data`, `dir/certs`), `env` added to its environment.
    pub fn spawn(dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
        let port = free_port();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_server"));
        command
            .args(server_args(port, &dir.join("data"), &dir.join("certs")))
            .envs(env.iter().copied());
        ServerProcess::start(
            &mut command,
            port,
            dir.join("certs").join(tls::DEV_CA_CERT),
            dir,
        )
    }

    /// Runs `command` (the server binary, or a wrapper that execs it) and waits until
    /// something listens on `port`. The log goes to `log_dir/server.log`.
    pub fn start(
        command: &mut std::process::Command,
        port: u16,
        ca: PathBuf,
        log_dir: &Path,
    ) -> ServerProcess {
        use std::os::unix::process::CommandExt;
        let log = log_dir.join("server.log");
        let child = command
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the server");
        let mut server = ServerProcess {
            child: Some(child),
            port,
            ca,
            log,
        };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!("the server did not start ({exited:?}):\n{}", server.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `host:port` for clients.
    pub fn address(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// What the server wrote to standard error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A connected, anonymous client.
    pub fn connect(&self) -> TestClient {
        let config = tls::client_config(Some(&self.ca)).expect("client config");
        let (link, reader, _) = link::connect(&self.address(), config).expect("connect");
        TestClient { link, reader }
    }

    /// Stops the server as an operator would (SIGTERM) and checks that it exits cleanly.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill only sends a signal to the process we started.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    assert!(status.success(), "server exit: {status}\n{}", self.log());
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the server did not stop on SIGTERM:\n{}", self.log());
                }
            }
        }
    }

    /// SIGKILL to the whole process group: no clean-up code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's process group.
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Every regular file under `dir` (recursively), read as bytes: to check that a secret is
/// nowhere on disk.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            found.push((path, bytes));
        }
    }
    found
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// A client-side TLS stream over a socket the test can also write to directly.
pub type RawTls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A raw TLS connection to `server` (handshake done) whose socket the test writes to
/// directly, and which never reads: the server's replies pile up in the kernel until its
/// writer thread blocks on a full socket.
pub fn connect_and_stop_reading(server: &TestServer) -> RawTls {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(server.client_config(), name).unwrap();
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    // A small fixed receive buffer: Linux would otherwise grow it to tens of MB, and the
    // server's writer would block only much later.
    let size: libc::c_int = 64 * 1024;
    // SAFETY: setsockopt reads `size` (an int, as SO_RCVBUF expects) for the call only.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&tcp),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::addr_of!(size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "setsockopt(SO_RCVBUF)");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.conn.complete_io(&mut tls.sock).unwrap();
    tls
}

/// Sends `PING`s with 16 KB tokens until the server's writer must be blocked: 16 MB of
/// replies, four times what the server's socket buffer (at most 4 MB) and this side's 64 KiB
/// hold, while this side reads nothing; then gives the server time to get there. The
/// outbound queue limit must be large enough that the server keeps queueing.
pub fn fill_the_servers_send_path(tls: &mut RawTls) {
    let ping = format!("PING {}\n", "x".repeat(16_000));
    for _ in 0..1_000 {
        if tls.write_all(ping.as_bytes()).is_err() {
            break;
        }
    }
    let _ = tls.flush();
    std::thread::sleep(Duration::from_secs(2));
}
