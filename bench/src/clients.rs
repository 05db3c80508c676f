//! Benchmark clients: one TLS connection each, used by one thread, built on the library's
//! own [`TlsStream`] and [`LineBuffer`] rather than `client::link`.
//!
//! Why not `Link`/`LinkReader`: the generator shares two cores with the server, so its
//! cost per message matters. Here a receiver reads up to 64 KiB per socket read and sees
//! each line as a borrowed `&str` (no allocation per line, no parsing into `ServerLine`),
//! and a sender encrypts a whole batch of lines in one TLS write, reusing one buffer.
//!
//! [`open_many`] opens, registers and logs in many connections with a bounded number of
//! handshakes in flight, and times each connect + login.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use securechat::protocol::frame::LineBuffer;
use securechat::protocol::{Command, MailboxLimits, ServerLine};
use securechat::tls::stream::{ReadOutcome, TlsStream};
use securechat::{Error, Result};

use crate::results::{Percentiles, SetupStats};
use crate::target::Target;

/// The password of every benchmark account: it passes the server's password rules.
pub const PASSWORD: &str = "Bench pass 1";

/// Time allowed to connect, finish the handshake and read the greeting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Time allowed for the reply to `REGISTER`/`LOGIN` (bcrypt queues behind a permit pool,
/// so a burst of logins on a slow server can take a while).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes taken from the socket per read: big, so a busy receiver makes few system calls.
const READ_BYTES: usize = 64 * 1024;

/// Largest line accepted from the server.
const MAX_LINE: usize = 1024 * 1024;

/// Stack for the threads that run handshakes (aws-lc's ML-KEM wants some room).
pub const SETUP_STACK_BYTES: usize = 256 * 1024;

/// One logged-in (or about to be) connection.
pub struct Conn {
    /// The TLS connection.
    stream: TlsStream,
    /// Decrypted bytes not yet split into lines.
    lines: LineBuffer,
    /// Raw bytes of one socket read.
    scratch: Vec<u8>,
    /// Encrypted records between encryption and the socket write, reused.
    records: Vec<u8>,
    /// The server closed the connection.
    closed: bool,
}

/// Why [`Conn::read_lines`] returned without lines.
#[derive(Debug)]
pub enum ReadError {
    /// Nothing arrived within the read timeout.
    Timeout,
    /// The server closed the connection.
    Closed,
    /// Anything else.
    Failed(Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Timeout => f.write_str("timed out waiting for the server"),
            ReadError::Closed => f.write_str("the server closed the connection"),
            ReadError::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Error {
        match e {
            ReadError::Failed(e) => e,
            other => Error::Protocol(other.to_string()),
        }
    }
}

impl Conn {
    /// Connects, runs the TLS handshake and reads the `HELLO` greeting.
    pub fn connect(target: &Target) -> Result<Conn> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut last_error = None;
        let mut connected = None;
        for addr in &target.sockets {
            match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
                Ok(socket) => {
                    connected = Some(socket);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let socket = connected.ok_or_else(|| {
            Error::Config(format!(
                "cannot connect to {}: {}",
                target.addr,
                last_error.map_or_else(|| "no address".into(), |e| e.to_string())
            ))
        })?;
        socket.set_nodelay(true)?;
        let name = ServerName::try_from(target.host.clone())
            .map_err(|_| Error::Config(format!("{:?} is not a valid host name", target.host)))?;
        let tls = rustls::ClientConnection::new(target.tls.clone(), name)?;
        let stream = TlsStream::handshake(tls, socket, deadline)?;
        let mut conn = Conn {
            stream,
            lines: LineBuffer::new(MAX_LINE),
            scratch: Vec::new(),
            records: Vec::new(),
            closed: false,
        };
        if conn.stream.take_buffered(&mut conn.lines)? == ReadOutcome::Closed {
            conn.closed = true;
        }
        let greeting = conn.next_line(deadline.saturating_duration_since(Instant::now()))?;
        if !greeting.starts_with("HELLO securechat ") {
            return Err(Error::Protocol(format!(
                "expected the HELLO greeting, got {greeting:?}"
            )));
        }
        Ok(conn)
    }

    /// Sends bytes (one or more complete lines) in one TLS write.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.send(bytes, &mut self.records)
    }

    /// Sets how long [`Conn::read_lines`] waits (`None`: forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        // A zero timeout means "forever" to the OS: round up.
        let timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
        Ok(self.stream.socket().set_read_timeout(timeout)?)
    }

    /// Calls `handle` for every complete line already buffered, or else waits for one
    /// socket read and calls it for every line that completed. Returns the number of lines.
    pub fn read_lines(
        &mut self,
        mut handle: impl FnMut(&str),
    ) -> std::result::Result<usize, ReadError> {
        loop {
            let mut count = 0;
            let mut bad = None;
            self.lines
                .drain_lines(|line| {
                    match line {
                        Ok(text) => {
                            count += 1;
                            handle(text);
                        }
                        Err(e) => bad = Some(e),
                    }
                    true
                })
                .map_err(|e| ReadError::Failed(Error::Protocol(format!("server sent a {e}"))))?;
            if let Some(e) = bad {
                return Err(ReadError::Failed(Error::Protocol(format!(
                    "server sent a bad line: {e}"
                ))));
            }
            if count > 0 {
                return Ok(count);
            }
            if self.closed {
                return Err(ReadError::Closed);
            }
            self.read_more()?;
        }
    }

    /// One socket read into the line buffer. `Timeout` when the socket's read timeout
    /// passed with nothing; an end of stream or a reset marks the connection closed.
    fn read_more(&mut self) -> std::result::Result<(), ReadError> {
        if self.scratch.is_empty() {
            self.scratch = vec![0; READ_BYTES];
        }
        match self.stream.read_some(&mut self.scratch, &mut self.lines) {
            Ok(ReadOutcome::Open) => Ok(()),
            Ok(ReadOutcome::Closed) => {
                self.closed = true;
                Ok(())
            }
            Err(Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ReadError::Timeout)
            }
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(ReadError::Failed(e)),
        }
    }

    /// The next line, waiting at most `timeout`. Lines after it stay buffered.
    pub fn next_line(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut first = None;
            let mut count = 0;
            self.lines
                .drain_lines(|line| {
                    count += 1;
                    first = Some(line.map(str::to_owned));
                    false
                })
                .map_err(|e| Error::Protocol(format!("server sent a {e}")))?;
            match first {
                Some(Ok(line)) => return Ok(line),
                Some(Err(e)) => {
                    return Err(Error::Protocol(format!("server sent a bad line: {e}")))
                }
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Protocol(format!(
                    "no reply from the server within {timeout:?}"
                )));
            }
            if self.closed {
                return Err(Error::Protocol("the server closed the connection".into()));
            }
            self.set_read_timeout(Some(left))?;
            let read = self.read_more();
            self.set_read_timeout(None)?;
            match read {
                Ok(()) | Err(ReadError::Timeout | ReadError::Closed) => {}
                Err(ReadError::Failed(e)) => return Err(e),
            }
        }
    }

    /// Sends one request line and returns the reply line.
    pub fn request(&mut self, line: &str) -> Result<String> {
        let mut frame = Vec::with_capacity(line.len() + 1);
        frame.extend_from_slice(line.as_bytes());
        frame.push(b'\n');
        self.send(&frame)?;
        self.next_line(REPLY_TIMEOUT)
    }

    /// `REGISTER` (an existing account is fine when `exists_ok`).
    pub fn register(&mut self, user: &str, exists_ok: bool) -> Result<()> {
        let reply = self.request(&format!("REGISTER {user} {PASSWORD}"))?;
        if reply.starts_with("OK REGISTER") || (exists_ok && reply.contains(" user-exists ")) {
            Ok(())
        } else {
            Err(Error::Protocol(format!(
                "registering {user} failed: {reply}"
            )))
        }
    }

    /// `MAILBOX` (the offline-delivery opt-in, before `LOGIN`), expecting
    /// `OK MAILBOX <ttl> <max-messages> <max-bytes>`; returns the server's queue limits.
    pub fn mailbox(&mut self) -> Result<MailboxLimits> {
        let reply = self.request("MAILBOX")?;
        match ServerLine::parse(&reply) {
            Ok(ServerLine::Ok {
                command: Command::Mailbox,
                detail,
            }) => MailboxLimits::from_detail(&detail)
                .ok_or_else(|| Error::Protocol(format!("bad OK MAILBOX limits: {reply}"))),
            _ => Err(Error::Protocol(format!("MAILBOX failed: {reply}"))),
        }
    }

    /// `LOGIN`, expecting `OK LOGIN <user>`.
    pub fn login(&mut self, user: &str) -> Result<()> {
        let reply = self.request(&format!("LOGIN {user} {PASSWORD}"))?;
        if reply.starts_with("OK LOGIN") {
            Ok(())
        } else {
            Err(Error::Protocol(format!(
                "logging in {user} failed: {reply}"
            )))
        }
    }

    /// Gives back the read and write buffers (64 KiB of them after the first read), for a
    /// connection that is only held open: 10,000 idle connections would otherwise keep
    /// 640 MiB of scratch space in the generator.
    pub fn release_buffers(&mut self) {
        self.scratch = Vec::new();
        self.records = Vec::new();
        self.lines.release_if_empty();
    }

    /// Says goodbye at the TLS level and closes the socket.
    pub fn close(&self) {
        self.stream.close();
    }
}

/// What [`open_many`] does on each connection after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// `REGISTER` then `LOGIN`: the normal case, on a fresh server.
    RegisterAndLogin,
    /// `REGISTER` only (an existing account is fine), then close: `--prepare-accounts`.
    RegisterOnly,
    /// `REGISTER`, `MAILBOX` (the offline-delivery opt-in), then `LOGIN`: `--offline`.
    RegisterMailboxAndLogin,
    /// Nothing after the greeting: `--offline`'s recipients, who log in all at once later.
    ConnectOnly,
}

/// Connections [`open_many`] opened, and what it took.
pub struct Opened {
    /// The connections, in the order of the names given.
    pub conns: Vec<Conn>,
    /// Each connection's connect + login time, nanoseconds.
    pub nanos: Vec<u64>,
    /// Each connection's `REGISTER` round trip, nanoseconds.
    pub register_nanos: Vec<u64>,
    /// Connections opened at once.
    pub concurrency: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl Opened {
    /// The summary for a result file.
    pub fn stats(&self) -> SetupStats {
        SetupStats {
            connections: self.conns.len(),
            concurrency: self.concurrency,
            seconds: self.seconds,
            connect_login_ms: Percentiles::of_nanos(&mut self.nanos.clone()),
            register_ms: Percentiles::of_nanos(&mut self.register_nanos.clone()),
        }
    }
}

/// Opens one connection per name, `concurrency` at a time, and logs each in (see
/// [`Setup`]).
pub fn open_many(
    target: &Target,
    names: &[String],
    setup: Setup,
    concurrency: usize,
) -> Result<Opened> {
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let opened: Mutex<Vec<(usize, Conn, Timing)>> = Mutex::new(Vec::with_capacity(names.len()));
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let workers = concurrency.clamp(1, names.len().max(1));
    thread::scope(|scope| -> Result<()> {
        for _ in 0..workers {
            thread::Builder::new()
                .name("bench-setup".into())
                .stack_size(SETUP_STACK_BYTES)
                .spawn_scoped(scope, || {
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(name) = names.get(i) else { break };
                        match open_one(target, name, setup) {
                            Ok((conn, timing)) => {
                                lock(&opened).push((i, conn, timing));
                            }
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                lock(&first_error)
                                    .get_or_insert(Error::Protocol(format!("{name}: {e}")));
                            }
                        }
                    }
                })?;
        }
        Ok(())
    })?;
    if let Some(e) = lock(&first_error).take() {
        return Err(e);
    }
    let mut opened = std::mem::take(&mut *lock(&opened));
    opened.sort_unstable_by_key(|(i, _, _)| *i);
    let nanos = opened.iter().map(|(_, _, t)| t.connect_login).collect();
    let register_nanos = opened.iter().map(|(_, _, t)| t.register).collect();
    Ok(Opened {
        conns: opened.into_iter().map(|(_, c, _)| c).collect(),
        nanos,
        register_nanos,
        concurrency: workers,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// How long opening one connection took, nanoseconds.
struct Timing {
    /// Connect + handshake + greeting + `LOGIN` round trip.
    connect_login: u64,
    /// The `REGISTER` round trip.
    register: u64,
}

/// Opens one connection and times it.
fn open_one(target: &Target, name: &str, setup: Setup) -> Result<(Conn, Timing)> {
    let t0 = Instant::now();
    let mut conn = Conn::connect(target)?;
    let connected = t0.elapsed();
    if setup == Setup::ConnectOnly {
        let connect_login = connected.as_nanos() as u64;
        return Ok((
            conn,
            Timing {
                connect_login,
                register: 0,
            },
        ));
    }
    let t1 = Instant::now();
    conn.register(name, setup == Setup::RegisterOnly)?;
    let register = t1.elapsed().as_nanos() as u64;
    if setup == Setup::RegisterOnly {
        conn.close();
        let connect_login = connected.as_nanos() as u64;
        return Ok((
            conn,
            Timing {
                connect_login,
                register,
            },
        ));
    }
    let t2 = Instant::now();
    if setup == Setup::RegisterMailboxAndLogin {
        conn.mailbox()?;
    }
    conn.login(name)?;
    let connect_login = (connected + t2.elapsed()).as_nanos() as u64;
    Ok((
        conn,
        Timing {
            connect_login,
            register,
        },
    ))
}

/// Locks a mutex, ignoring poisoning (a panicking worker is reported by the scope).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
