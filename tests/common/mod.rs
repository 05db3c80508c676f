//! Shared test fixtures: a real server on `127.0.0.1:0` with its own data directory and
//! development CA, and clients built on the library's own connection code.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use securechat::client::link::{self, Link, LinkReader};
use securechat::protocol::ServerLine;
use securechat::server::{Config, Limits, Server};
use securechat::throttle::ThrottlePolicy;
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

/// Limits for tests: the defaults without the per-address caps (every test client comes
/// from 127.0.0.1) and without the frame rate limit (tests send bursts). Tests of those
/// defences turn them back on.
pub fn test_limits() -> Limits {
    Limits {
        max_connections_per_ip: 0,
        message_rate: 0,
        throttle: ThrottlePolicy {
            registrations_burst: 0,
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
        command: command.into(),
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
        } => (command, code, text),
        other => panic!("expected ERR, got {other:?}"),
    }
}
