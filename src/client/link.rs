//! The client's connection to a server: TCP, the TLS handshake with certificate and host
//! name verification, the greeting, then frames in both directions.
//!
//! [`Link`] sends requests and can be shared between threads; [`LinkReader`] receives
//! [`ServerLine`]s and belongs to one thread (the terminal client's reader thread, or a
//! test that reads and writes from one thread).

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::error::{Error, Result};
use crate::protocol::frame::LineBuffer;
use crate::protocol::name::ServerName as FederationName;
use crate::protocol::{AnnouncedLimits, Request, ServerLine, PROTOCOL_VERSION};
use crate::tls::stream::{ReadOutcome, TlsStream};

/// Largest line the client accepts from a server. Larger than the server's client limit:
/// a routed frame adds a header to what a client sent, and `OK LIST` can be long.
pub const CLIENT_MAX_FRAME: usize = 1024 * 1024;

/// Time allowed to connect, finish the TLS handshake and receive the greeting.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The sending half of a connection to a server. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    /// The TLS connection, shared with the reader.
    stream: Arc<TlsStream>,
    /// When something was last sent, so a quiet client knows when to ping.
    last_sent: Arc<Mutex<Instant>>,
}

/// The receiving half: buffers frames and hands them out one at a time.
pub struct LinkReader {
    /// The TLS connection, shared with the sender.
    stream: Arc<TlsStream>,
    /// Bytes received and not yet split into lines.
    lines: LineBuffer,
    /// Complete frames received and not yet handed out.
    ready: VecDeque<String>,
    /// Raw bytes of one socket read.
    scratch: Vec<u8>,
    /// Set when the server closed the connection.
    closed: bool,
}

/// What the TLS handshake negotiated, for the user to see.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    /// Where we connected.
    pub addr: SocketAddr,
    /// Version, cipher suite and key exchange, for example
    /// `TLSv1_3, TLS13_AES_256_GCM_SHA384, X25519MLKEM768`.
    pub tls: String,
    /// What the server allows this client, as its greeting announced; from a server that
    /// announces nothing (an older one), the defaults of this crate's server.
    pub limits: AnnouncedLimits,
    /// The server's federation name, when it announced one (it federates): the client's
    /// *home*, with which it qualifies the names bound into end-to-end cryptography
    /// (`src/client/end_to_end.rs`). `None` for a server that does not federate.
    pub home: Option<FederationName>,
}

/// Connects to `server` (`host:port`), verifying its certificate for `host` with `config`,
/// and waits for the greeting.
pub fn connect(
    server: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<(Link, LinkReader, LinkInfo)> {
    connect_to(server, None, config)
}

/// [`connect`], but to `address` when given instead of what `host` resolves to (curl's
/// `--resolve`): the certificate is still checked for `host`.
pub fn connect_to(
    server: &str,
    address: Option<SocketAddr>,
    config: Arc<rustls::ClientConfig>,
) -> Result<(Link, LinkReader, LinkInfo)> {
    let (host, _) = server.rsplit_once(':').ok_or_else(|| {
        Error::Config(format!(
            "server {server:?} should be HOST:PORT, like localhost:7878"
        ))
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| Error::Config(format!("{host:?} is not a valid host name or address")))?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let (socket, addr) = match address {
        Some(addr) => (
            TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                .map_err(|e| Error::Config(format!("cannot connect to {addr}: {e}")))?,
            addr,
        ),
        None => connect_tcp(server)?,
    };
    socket.set_nodelay(true)?;
    let tls = rustls::ClientConnection::new(config, name)?;
    let stream = TlsStream::handshake(tls, socket, deadline).map_err(|e| match e {
        Error::Tls(e) => Error::Config(crate::tls::explain_handshake_error(server, &e)),
        other => other,
    })?;
    let stream = Arc::new(stream);
    let mut reader = LinkReader {
        stream: stream.clone(),
        lines: LineBuffer::new(CLIENT_MAX_FRAME),
        ready: VecDeque::new(),
        scratch: vec![0; 16 * 1024],
        closed: false,
    };
    reader.stream.take_buffered(&mut reader.lines)?;
    reader.split_lines()?;
    stream
        .socket()
        .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))?;
    let greeting = reader.recv()?;
    stream.socket().set_read_timeout(None)?;
    let (limits, home) = match greeting {
        Some(ServerLine::Hello {
            version,
            limits,
            name,
        }) if version == PROTOCOL_VERSION => (limits.unwrap_or(AnnouncedLimits::DEFAULT), name),
        Some(ServerLine::Hello { version, .. }) => {
            return Err(Error::Protocol(format!(
                "server speaks protocol version {version}; this client speaks {PROTOCOL_VERSION}"
            )))
        }
        Some(other) => {
            return Err(Error::Protocol(format!(
                "expected a greeting, got {other:?}"
            )))
        }
        None => return Err(Error::Protocol("server closed the connection".into())),
    };
    let info = LinkInfo {
        addr,
        tls: stream.describe(),
        limits,
        home,
    };
    let link = Link {
        stream,
        last_sent: Arc::new(Mutex::new(Instant::now())),
    };
    Ok((link, reader, info))
}

/// Tries each address `server` resolves to, as `TcpStream::connect` does, but with a
/// timeout on each.
fn connect_tcp(server: &str) -> Result<(TcpStream, SocketAddr)> {
    let addrs = server
        .to_socket_addrs()
        .map_err(|e| Error::Config(format!("cannot resolve {server}: {e}")))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(socket) => return Ok((socket, addr)),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Config(match last {
        Some(e) => format!("cannot connect to {server}: {e}"),
        None => format!("{server} resolves to no address"),
    }))
}

impl Link {
    /// Sends one request.
    pub fn send(&self, request: &Request<'_>) -> Result<()> {
        self.send_line(&request.to_string())
    }

    /// Sends one raw line (a newline is added). For requests built elsewhere, and for
    /// tests that need to send malformed frames.
    pub fn send_line(&self, line: &str) -> Result<()> {
        let mut frame = Vec::with_capacity(line.len() + 1);
        frame.extend_from_slice(line.as_bytes());
        frame.push(b'\n');
        self.send_raw(&frame)
    }

    /// Sends bytes as they are, inside TLS.
    pub fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        let mut records = Vec::new();
        self.stream.send(bytes, &mut records)?;
        *self
            .last_sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        Ok(())
    }

    /// How long since anything was sent.
    pub fn idle_for(&self) -> Duration {
        self.last_sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }

    /// Says goodbye at the TLS level and closes the socket.
    pub fn close(&self) {
        self.stream.close();
    }
}

impl LinkReader {
    /// The next frame from the server, or `None` once it closed the connection.
    pub fn recv(&mut self) -> Result<Option<ServerLine>> {
        match self.recv_line()? {
            Some(line) => ServerLine::parse(&line)
                .map(Some)
                .map_err(|e| Error::Protocol(e.to_string())),
            None => Ok(None),
        }
    }

    /// The next raw frame, or `None` once the server closed the connection.
    pub fn recv_line(&mut self) -> Result<Option<String>> {
        loop {
            if let Some(line) = self.ready.pop_front() {
                return Ok(Some(line));
            }
            if self.closed {
                return Ok(None);
            }
            match self.stream.read_some(&mut self.scratch, &mut self.lines) {
                Ok(ReadOutcome::Open) => {}
                Ok(ReadOutcome::Closed) => self.closed = true,
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.closed = true
                }
                Err(e) => return Err(e),
            }
            self.split_lines()?;
        }
    }

    /// Waits at most `timeout` for the next frame: `Ok(None)` if none came in time. A closed
    /// connection is an error here, so callers polling with a timeout notice it.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<ServerLine>> {
        self.stream.socket().set_read_timeout(Some(timeout))?;
        let result = self.recv();
        self.stream.socket().set_read_timeout(None)?;
        match result {
            Ok(Some(line)) => Ok(Some(line)),
            Ok(None) => Err(Error::Protocol("server closed the connection".into())),
            Err(Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn split_lines(&mut self) -> Result<()> {
        let ready = &mut self.ready;
        let mut bad = None;
        self.lines
            .drain_lines(|line| {
                match line {
                    Ok(text) => ready.push_back(text.to_owned()),
                    Err(e) => bad = Some(e),
                }
                true
            })
            .map_err(|e| Error::Protocol(format!("server sent a {e}")))?;
        match bad {
            Some(e) => Err(Error::Protocol(format!("server sent a bad frame: {e}"))),
            None => Ok(()),
        }
    }
}
