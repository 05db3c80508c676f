//! One client connection on the server: its reading threads and its writer thread.
//!
//! A *login thread* runs the TLS handshake and the anonymous phase: it answers by itself
//! (register, log in, ping, quit) and refuses everything else, so the connection receives
//! no chat traffic and learns nothing about who is online. Once the client has logged in,
//! a fresh *reader thread* takes over (see `serve` for why) and sends every request to
//! the router, so replies and deliveries reach the client in one order. The *writer
//! thread* writes the socket: it drains the client's [`Outbox`] and sends each batch as
//! one TLS write. (While it sleeps with nothing queued, the router may write a single frame
//! itself without blocking, and the reader the odd TLS alert; see [`crate::connection`].)
//!
//! The sender of every routed frame is the session's authenticated user, written by this
//! module into the `FROM`/`ROOM` line; nothing the client sends can change it.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::accounts::{is_canonical_username, normalize_username, Busy, LoginError, RegisterError};
use crate::connection::{ReadOutcome, TlsStream};
use crate::error::{Error, Result};
use crate::frame::{FrameError, LineBuffer};
use crate::outbox::{outbox, Line, Outbox, OutboxReceiver};
use crate::protocol::{hello_line, Command, ErrorCode, ProtocolError, Request};
use crate::router::{ConnId, Direct, Event, Routed};
use crate::server::Shared;
use crate::throttle::{AddressPrefix, TokenBucket};

/// Stack for writer threads. A writer only encrypts and writes; what it touches of its
/// stack stays resident for the connection's lifetime, so it is kept small.
pub const WRITER_STACK_BYTES: usize = 64 * 1024;

/// Stack for login threads, which run the TLS handshake (with its post-quantum key
/// exchange) and wait for bcrypt on the worker pool.
pub const LOGIN_STACK_BYTES: usize = 256 * 1024;

/// Stack for the reader threads of logged-in clients. Their deepest path is an SQLite
/// query (`GETKEY`/`SETKEY`); only the pages actually touched cost memory.
pub const READER_STACK_BYTES: usize = 128 * 1024;

/// Plaintext at which the writer stops packing and writes: a batch is at least this (or
/// everything queued) and at most this plus one frame. 16 KiB is one full TLS record.
const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// Bytes taken from the socket per read.
const READ_SCRATCH_BYTES: usize = 4096;

/// How long a connection may be silent before its read buffers are given back.
const BUFFER_RELEASE_AFTER: Duration = Duration::from_secs(1);

/// How long a closing reader waits for its writer to send what is queued before cutting
/// the socket (a peer that stopped reading would otherwise hold the writer forever).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The login throttle's record for every malformed user name (it cannot be a user name).
const MALFORMED_NAME: &str = "(malformed name)";

/// Length of an Ed25519 public key, the only identity key accepted by `SETKEY`.
const IDENTITY_KEY_BYTES: usize = 32;

/// What a connection holds on to for its whole life, on whichever thread is serving it:
/// its admission slot and its registration for shutdown. Dropping it releases both.
pub(crate) struct ConnectionSlot {
    /// Server-wide state.
    pub shared: Arc<Shared>,
    /// The connection's id.
    pub id: ConnId,
    /// The client's address, as counted by admission control.
    pub peer: SocketAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
        self.shared.release(self.peer.ip());
    }
}

/// Serves one accepted connection: the TLS handshake and everything up to login run on
/// this thread (the *login thread*), which then hands the session to a fresh reader
/// thread and exits.
///
/// Why two threads: the handshake (post-quantum key exchange) runs deep in the stack and
/// churns the allocator. On a thread that lives as long as the connection, those
/// stack pages and the allocator's per-thread cache of freed blocks would stay resident
/// for hours; a new thread starts with neither, which keeps an idle logged-in connection
/// small. A connection that never logs in never gets a second thread.
///
/// A panic (a bug) ends this connection only: the session's `Drop` tells the router and
/// closes the queue, and the slot's `Drop` releases admission, so nothing is left behind.
pub(crate) fn serve(slot: ConnectionSlot, socket: TcpStream) {
    let (id, peer) = (slot.id, slot.peer);
    let opened = panic::catch_unwind(AssertUnwindSafe(|| {
        open_connection(&slot.shared, socket, peer, id)
    }));
    let mut conn = match opened {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return log::info!("conn#{id} {peer}: closed: {e}"),
        Err(_) => return log::error!("conn#{id} {peer}: closed after an internal error (a bug)"),
    };
    let login = panic::catch_unwind(AssertUnwindSafe(|| {
        let buffered = conn.stream.take_buffered(&mut conn.lines);
        conn.read_loop(buffered, true)
    }));
    match login {
        Ok(Ended::Closed(reason, farewell)) => {
            conn.close(farewell);
            log::info!("conn#{id} {peer}: closed: {reason}");
        }
        Ok(Ended::LoggedIn) => {
            let spawned = thread::Builder::new()
                .name(format!("reader-{id}"))
                .stack_size(READER_STACK_BYTES)
                .spawn(move || chat(slot, conn));
            if let Err(e) = spawned {
                // The closure (and with it the session) was dropped: the router is told.
                log::error!("conn#{id} {peer}: cannot start a reader thread: {e}");
            }
        }
        Err(_) => log::error!("conn#{id} {peer}: closed after an internal error (a bug)"),
    }
}

/// The rest of a logged-in connection, on its long-lived reader thread.
fn chat(slot: ConnectionSlot, mut conn: Connection) {
    release_inherited_stack();
    let (id, peer) = (slot.id, slot.peer);
    let served = panic::catch_unwind(AssertUnwindSafe(|| {
        let ended = conn.read_loop(Ok(ReadOutcome::Open), false);
        let Ended::Closed(reason, farewell) = ended else {
            unreachable!("read_loop(_, false) only ends with Closed")
        };
        conn.close(farewell);
        reason
    }));
    match served {
        Ok(reason) => log::info!("conn#{id} {peer}: closed: {reason}"),
        Err(_) => log::error!("conn#{id} {peer}: closed after an internal error (a bug)"),
    }
}

/// Runs the TLS handshake and starts the writer thread.
fn open_connection(
    shared: &Arc<Shared>,
    socket: TcpStream,
    peer: SocketAddr,
    id: ConnId,
) -> Result<Connection> {
    let accepted = Instant::now();
    socket.set_nodelay(true)?;
    let limits = &shared.limits;
    let tls = rustls::ServerConnection::new(shared.tls.clone())?;
    let stream = Arc::new(
        TlsStream::handshake(tls, socket, accepted + limits.handshake_timeout).map_err(
            |e| match e {
                Error::Tls(e) => Error::Protocol(format!("TLS handshake failed: {e}")),
                other => other,
            },
        )?,
    );
    log::debug!("conn#{id} {peer}: TLS established ({})", stream.describe());
    // Bounds every socket write: the writer's, and the reader's rare alert or key update.
    let send_timeout = Some(limits.send_timeout).filter(|t| !t.is_zero());
    stream.socket().set_write_timeout(send_timeout)?;

    let (outbox, receiver) = outbox(limits.outbound_queue_bytes, stream.clone());
    let writer_stream = stream.clone();
    let writer = thread::Builder::new()
        .name(format!("writer-{id}"))
        .stack_size(WRITER_STACK_BYTES)
        .spawn(move || {
            release_inherited_stack();
            if let Err(e) = write_loop(&writer_stream, receiver) {
                match e {
                    Error::Io(e) if is_timeout(&e) => log::info!(
                        "conn#{id} {peer}: disconnecting: the client accepted no data for the \
                         send timeout (it stopped reading)"
                    ),
                    // Usually the client is simply gone; its reader logs why.
                    other => log::debug!("conn#{id} {peer}: cannot send: {other}"),
                }
                writer_stream.shutdown_socket();
            }
        })?;
    shared.register(id, outbox.clone());
    let session = Session {
        id,
        peer,
        bucket: TokenBucket::new(limits.message_rate, limits.message_burst),
        shared: shared.clone(),
        outbox,
        user: None,
        login_deadline: accepted + limits.login_timeout,
        last_frame: Instant::now(),
        batch: Vec::new(),
        batch_hint: 0,
        finished: false,
    };
    if session.outbox.push(Line::from(hello_line())).is_err() {
        return Err(Error::Protocol("could not queue the greeting".into()));
    }
    session.set_tick(&stream)?;
    Ok(Connection {
        lines: LineBuffer::new(limits.max_frame),
        session,
        stream,
        writer,
    })
}

/// A connection past its handshake: the reader's state, and the writer thread.
struct Connection {
    /// Requests, login state, limits.
    session: Session,
    /// The TLS stream, shared with the writer.
    stream: Arc<TlsStream>,
    /// Bytes received and not yet handled (a partial frame may carry over the hand-off
    /// from the login thread to the reader thread).
    lines: LineBuffer,
    /// The writer thread, joined when the connection closes.
    writer: JoinHandle<()>,
}

/// Why a read loop returned.
enum Ended {
    /// The connection is over: the reason for the log, and the `BYE` text if any.
    Closed(String, Option<String>),
    /// The client logged in (only when the loop was asked to stop there).
    LoggedIn,
}

impl Connection {
    /// Handles what `first` brought, then reads and handles frames until the connection
    /// should close — or, with `until_login`, until the client has logged in.
    fn read_loop(&mut self, first: Result<ReadOutcome>, until_login: bool) -> Ended {
        // The read buffer exists only while data is flowing: after BUFFER_RELEASE_AFTER of
        // silence it is dropped (with the line buffer's memory) and the next wait happens
        // without one, so thousands of idle connections hold no read buffers. A busy
        // connection keeps its buffers and pays no extra system call per read.
        let mut scratch: Option<Vec<u8>> = None;
        let mut outcome = first;
        loop {
            let closed = match outcome {
                Ok(ReadOutcome::Open) => false,
                Ok(ReadOutcome::Closed) => true,
                Err(Error::Io(e)) if is_timeout(&e) => {
                    scratch = None;
                    self.lines.release_if_empty();
                    false
                }
                Err(e) => return Ended::Closed(e.to_string(), None),
            };
            // Frames that arrived together with the close are still carried out.
            if let Flow::Stop(reason, bye) =
                self.session.handle_lines(&mut self.lines, &self.stream)
            {
                return Ended::Closed(reason, bye);
            }
            if closed {
                return Ended::Closed("client closed the connection".into(), None);
            }
            if let Flow::Stop(reason, bye) = self.session.check_deadlines() {
                return Ended::Closed(reason, bye);
            }
            if until_login && self.session.user.is_some() {
                return Ended::LoggedIn;
            }
            if scratch.is_none() {
                match self.stream.wait_readable(self.session.tick()) {
                    Ok(true) => {}
                    Ok(false) => {
                        outcome = Err(Error::Io(io::ErrorKind::TimedOut.into()));
                        continue;
                    }
                    Err(e) => {
                        outcome = Err(e.into());
                        continue;
                    }
                }
            }
            let buffer = scratch.get_or_insert_with(|| vec![0u8; READ_SCRATCH_BYTES]);
            // Blocks at most the socket's read timeout (see `set_tick`).
            outcome = self.stream.read_some(buffer, &mut self.lines);
        }
    }

    /// Says goodbye, lets the writer send what is queued (cutting the socket if the peer
    /// is not taking it), and waits for the writer thread.
    fn close(mut self, farewell: Option<String>) {
        self.session.finish(farewell);
        if !self.session.outbox.wait_writer_gone(CLOSE_GRACE) {
            self.stream.shutdown_socket();
        }
        let _ = self.writer.join();
    }
}

/// The reader's view of one connection.
struct Session {
    /// This connection's id, for the router and logs.
    id: ConnId,
    /// The client's address, for per-address throttling and logs.
    peer: SocketAddr,
    /// Limits how fast this client may send frames.
    bucket: TokenBucket,
    /// Server-wide state: limits, accounts, the router.
    shared: Arc<Shared>,
    /// This client's outbound queue. Before login the reader pushes replies here itself;
    /// after login replies go through the router so they stay in order with deliveries.
    outbox: Outbox,
    /// The authenticated user, once logged in.
    user: Option<Arc<str>>,
    /// When an anonymous connection is dropped for not logging in.
    login_deadline: Instant,
    /// When the last complete frame arrived; a logged-in client silent for longer than
    /// the idle timeout is disconnected. A trickle of bytes without a newline does not
    /// count, so a slowloris peer cannot hold the connection.
    last_frame: Instant,
    /// Requests parsed from the current read, sent to the router in one event.
    batch: Vec<Routed>,
    /// How many requests the last batch held: the next batch starts with that capacity
    /// instead of growing one reallocation at a time.
    batch_hint: usize,
    /// Set once `finish` ran, so `Drop` does not run it again.
    finished: bool,
}

/// What the reader loop does after a frame.
enum Flow {
    Continue,
    /// Close the connection: the reason for the log and the `BYE` text, if any.
    Stop(String, Option<String>),
}

impl Session {
    /// Handles every complete line in `lines`, then hands the batch to the router.
    fn handle_lines(&mut self, lines: &mut LineBuffer, stream: &TlsStream) -> Flow {
        let mut flow = Flow::Continue;
        let was_anonymous = self.user.is_none();
        let now = Instant::now();
        self.bucket.refill(now);
        let drained = lines.drain_lines(|line| {
            flow = match line {
                Ok(text) => {
                    self.last_frame = now;
                    self.handle_frame(text)
                }
                // Unreadable lines cost a token too: garbage is no way around the limit.
                Err(_) if !self.bucket.take() => self.rate_limited(None),
                Err(e) => self.reply_error(&ProtocolError::unattributed(
                    ErrorCode::BadFrame,
                    format!("{e}; the line was ignored"),
                )),
            };
            matches!(flow, Flow::Continue)
        });
        if let Err(e @ FrameError::TooLong { .. }) = drained {
            let error = ProtocolError::unattributed(ErrorCode::TooLong, format!("{e}; closing"));
            let _ = self.reply_error(&error);
            flow = Flow::Stop(format!("client sent a {e}"), None);
        } else if let Err(e) = drained {
            flow = Flow::Stop(e.to_string(), None);
        }
        self.flush_batch();
        if was_anonymous && self.user.is_some() {
            // Logged in: from now on silence is judged by the idle timeout.
            if let Err(e) = self.set_tick(stream) {
                return Flow::Stop(format!("socket error: {e}"), None);
            }
        }
        flow
    }

    /// Closes connections that did not log in in time or went silent.
    fn check_deadlines(&self) -> Flow {
        let now = Instant::now();
        let limits = &self.shared.limits;
        if self.user.is_none() && now >= self.login_deadline {
            return Flow::Stop(
                "did not log in in time".into(),
                Some(format!(
                    "timeout: no login within {} s",
                    limits.login_timeout.as_secs()
                )),
            );
        }
        if self.user.is_some() && now.duration_since(self.last_frame) >= limits.idle_timeout {
            return Flow::Stop(
                "idle timeout".into(),
                Some(format!(
                    "timeout: nothing received for {} s (send PING to stay connected)",
                    limits.idle_timeout.as_secs()
                )),
            );
        }
        Flow::Continue
    }

    /// How often a waiting reader wakes up to check the deadlines: a quarter of the
    /// timeout that applies, so a deadline is noticed at most 25% late.
    fn tick(&self) -> Duration {
        let limits = &self.shared.limits;
        let timeout = if self.user.is_some() {
            limits.idle_timeout
        } else {
            limits.login_timeout
        };
        (timeout / 4).max(Duration::from_millis(10))
    }

    /// Sets the socket's read timeout: how long a read with buffers in hand waits before
    /// the buffers are given back (never longer than the tick, so deadlines are still
    /// checked in time).
    fn set_tick(&self, stream: &TlsStream) -> io::Result<()> {
        let timeout = self.tick().min(BUFFER_RELEASE_AFTER);
        stream.socket().set_read_timeout(Some(timeout))
    }

    fn handle_frame(&mut self, text: &str) -> Flow {
        let parsed = Request::parse(text);
        // Every frame but QUIT costs a token, malformed ones included.
        if parsed != Ok(Request::Quit) && !self.bucket.take() {
            return self.rate_limited(parsed.ok().map(|r| r.command()));
        }
        let request = match parsed {
            Ok(request) => request,
            Err(error) => return self.reply_error(&error),
        };
        match (&self.user, request) {
            (_, Request::Quit) => Flow::Stop("client quit".into(), Some("goodbye".into())),
            (_, Request::Ping { token }) => self.reply(pong_line(token)),
            (None, Request::Register { user, password }) => self.register(user, password),
            (None, Request::Login { user, password }) => self.login(user, password),
            (None, request) => self.reply_error(&ProtocolError::new(
                request.command(),
                ErrorCode::NotLoggedIn,
                "log in first: LOGIN <user> <password>, or REGISTER <user> <password>",
            )),
            (Some(_), Request::Register { .. } | Request::Login { .. }) => {
                self.reply_error(&ProtocolError::new(
                    request.command(),
                    ErrorCode::AlreadyLoggedIn,
                    "this connection is already logged in",
                ))
            }
            (Some(user), request) => {
                let user = user.clone();
                self.logged_in_request(&user, request)
            }
        }
    }

    fn register(&mut self, user: &str, password: &str) -> Flow {
        let command = Command::Register;
        let ip = self.peer.ip();
        let throttle = &self.shared.throttle;
        let from = AddressPrefix::of(ip);
        let admit = || throttle.allow_registration(ip);
        let registered = self.shared.accounts.register(user, password, from, admit);
        let error = match registered {
            Ok(name) => {
                log::info!("conn#{}: registered {name}", self.id);
                return self.reply(format!("OK REGISTER {name}\n"));
            }
            Err(RegisterError::BadUsername(rule)) => {
                ProtocolError::new(command, ErrorCode::BadUsername, rule)
            }
            Err(RegisterError::WeakPassword(problems)) => ProtocolError::new(
                command,
                ErrorCode::WeakPassword,
                format!("password needs: {}", problems.join("; ")),
            ),
            Err(RegisterError::Exists) => ProtocolError::new(
                command,
                ErrorCode::UserExists,
                "that user name is taken; choose another",
            ),
            Err(RegisterError::Throttled(wait)) => {
                log::warn!("conn#{}: registration refused: too many from {ip}", self.id);
                ProtocolError::new(
                    command,
                    ErrorCode::Throttled,
                    format!(
                        "too many registrations from your address; try again in {} s",
                        wait.as_secs().max(1)
                    ),
                )
            }
            Err(RegisterError::Busy(busy)) => {
                log::warn!("conn#{}: registration from {ip} refused: {busy:?}", self.id);
                busy_error(command, busy)
            }
            Err(RegisterError::Storage(e)) => {
                log::error!("conn#{}: registration not stored: {e}", self.id);
                ProtocolError::new(
                    command,
                    ErrorCode::Storage,
                    "the server could not store the account; try again later",
                )
            }
        };
        self.reply_error(&error)
    }

    fn login(&mut self, user: &str, password: &str) -> Flow {
        let ip = self.peer.ip();
        let account = throttle_key(user);
        // A handle of its own, so the attempt's borrow does not hold `self`.
        let shared = self.shared.clone();
        let attempt = match shared.throttle.check_login(&account, ip) {
            Ok(attempt) => attempt,
            Err(throttled) => {
                log::warn!(
                    "conn#{}: login for {account:?} from {ip} refused: throttled",
                    self.id
                );
                return self.reply_error(&ProtocolError::new(
                    Command::Login,
                    ErrorCode::Throttled,
                    format!(
                        "too many failed logins; try again in {} s",
                        throttled.retry_after.as_secs().max(1)
                    ),
                ));
            }
        };
        match shared.accounts.login(user, password, AddressPrefix::of(ip)) {
            Ok(name) => {
                attempt.succeeded(&name);
                let name: Arc<str> = Arc::from(name);
                log::info!("conn#{}: logged in as {name}", self.id);
                self.user = Some(name.clone());
                let event = Event::LoggedIn {
                    id: self.id,
                    user: name,
                    outbox: self.outbox.clone(),
                };
                if self.shared.router.send(event).is_err() {
                    return Flow::Stop("server is shutting down".into(), None);
                }
                Flow::Continue
            }
            Err(LoginError::Invalid) => {
                match attempt.failed() {
                    Some(wait) => log::warn!(
                        "conn#{}: failed login for {account:?} from {ip}; further attempts wait {} s",
                        self.id,
                        wait.as_secs()
                    ),
                    None => log::info!("conn#{}: failed login for {account:?} from {ip}", self.id),
                }
                self.reply_error(&ProtocolError::new(
                    Command::Login,
                    ErrorCode::AuthFailed,
                    "invalid username or password",
                ))
            }
            Err(LoginError::Busy(busy)) => {
                log::warn!("conn#{}: login from {ip} refused: {busy:?}", self.id);
                self.reply_error(&busy_error(Command::Login, busy))
            }
            Err(LoginError::Storage(e)) => {
                log::error!("conn#{}: login failed on storage: {e}", self.id);
                self.reply_error(&ProtocolError::new(
                    Command::Login,
                    ErrorCode::Storage,
                    "the server could not check the account; try again later",
                ))
            }
        }
    }

    fn logged_in_request(&mut self, user: &Arc<str>, request: Request<'_>) -> Flow {
        match request {
            Request::List => self.route(Routed::List),
            Request::Say { text } => {
                let line = format!("ROOM {user} {text}\n");
                self.route(Routed::Room {
                    line: Arc::from(line.into_bytes()),
                });
            }
            Request::Msg { to, payload } => {
                let to = match recipient(to) {
                    Ok(to) => to,
                    Err(error) => return self.reply_error(&error),
                };
                if *to == **user {
                    return self.reply_error(&ProtocolError::new(
                        Command::Msg,
                        ErrorCode::SelfMessage,
                        "you cannot send a private message to yourself",
                    ));
                }
                self.route(Routed::Direct(Direct::new(user, &to, payload)));
            }
            Request::SetKey { key } => return self.set_key(user, key),
            Request::GetKey { user: wanted } => return self.get_key(wanted),
            Request::Register { .. }
            | Request::Login { .. }
            | Request::Quit
            | Request::Ping { .. } => {
                // Handled before a session is known to be logged in.
            }
        }
        Flow::Continue
    }

    fn set_key(&mut self, user: &str, key: &str) -> Flow {
        let decoded = base64::engine::general_purpose::STANDARD.decode(key);
        if !matches!(&decoded, Ok(bytes) if bytes.len() == IDENTITY_KEY_BYTES) {
            return self.reply_error(&ProtocolError::new(
                Command::SetKey,
                ErrorCode::BadKey,
                "an identity key is 32 bytes (Ed25519), base64-encoded",
            ));
        }
        match self.shared.accounts.store().set_identity_key(user, key) {
            Ok(true) => {
                log::info!("conn#{}: {user} set its identity key", self.id);
                self.reply("OK SETKEY\n".to_owned())
            }
            Ok(false) | Err(_) => self.reply_error(&ProtocolError::new(
                Command::SetKey,
                ErrorCode::Storage,
                "the server could not store the key; try again later",
            )),
        }
    }

    fn get_key(&mut self, wanted: &str) -> Flow {
        let command = Command::GetKey;
        let Ok(wanted) = normalize_username(wanted) else {
            return self.reply_error(&no_such_user(command, wanted));
        };
        match self.shared.accounts.store().identity_key(&wanted) {
            Ok(Some(Some(key))) => self.reply(format!("OK GETKEY {wanted} {key}\n")),
            Ok(Some(None)) => self.reply_error(&ProtocolError::new(
                command,
                ErrorCode::NoKey,
                format!("{wanted} has not published an identity key yet"),
            )),
            Ok(None) => self.reply_error(&no_such_user(command, &wanted)),
            Err(e) => {
                log::error!("conn#{}: key lookup failed: {e}", self.id);
                self.reply_error(&ProtocolError::new(
                    command,
                    ErrorCode::Storage,
                    "the server could not read the key; try again later",
                ))
            }
        }
    }

    /// Refuses a frame over the client's rate limit.
    fn rate_limited(&mut self, command: Option<Command>) -> Flow {
        let limits = &self.shared.limits;
        self.reply_error(&ProtocolError {
            command,
            code: ErrorCode::RateLimited,
            message: format!(
                "more than {} frames per second (bursts of {}); this one was dropped, slow down",
                limits.message_rate, limits.message_burst
            ),
        })
    }

    fn reply_error(&mut self, error: &ProtocolError) -> Flow {
        self.reply(error.to_line())
    }

    /// Sends a reply: directly before login, through the router after it (to keep order).
    fn reply(&mut self, line: String) -> Flow {
        if self.user.is_some() {
            self.route(Routed::Reply(Line::from(line)));
            return Flow::Continue;
        }
        match self.outbox.push(Line::from(line)) {
            Ok(()) => Flow::Continue,
            Err(full) => Flow::Stop(
                format!(
                    "outbound queue full ({} bytes) before login: the client is not reading",
                    full.queued
                ),
                None,
            ),
        }
    }

    /// Adds a request to the batch for the router.
    fn route(&mut self, request: Routed) {
        if self.batch.capacity() == 0 {
            self.batch.reserve(self.batch_hint);
        }
        self.batch.push(request);
    }

    /// Sends the requests parsed from one read to the router as one event.
    fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if let Some(user) = &self.user {
            let requests = std::mem::take(&mut self.batch);
            self.batch_hint = requests.len();
            let _ = self.shared.router.send(Event::Requests {
                id: self.id,
                user: user.clone(),
                requests,
            });
        }
    }

    /// Ends the session: says goodbye and tells the router, which closes the outbox after
    /// anything still on its way; before login the reader closes it itself.
    fn finish(&mut self, farewell: Option<String>) {
        self.finished = true;
        let bye = farewell.map(|text| Line::from(format!("BYE {text}\n")));
        if let Some(user) = self.user.take() {
            let event = Event::LoggedOut {
                id: self.id,
                user,
                outbox: self.outbox.clone(),
                farewell: bye.clone(),
            };
            if self.shared.router.send(event).is_ok() {
                return;
            }
        }
        if let Some(bye) = bye {
            let _ = self.outbox.push(bye);
        }
        self.outbox.close();
    }
}

impl Drop for Session {
    /// Makes sure the router forgets this session and the writer stops, even when the
    /// reader unwinds from a panic.
    fn drop(&mut self) {
        if !self.finished {
            self.finish(None);
        }
    }
}

/// Validates a `MSG` recipient and returns its canonical name (borrowed when the client
/// already sent it in canonical form, as clients do).
fn recipient(to: &str) -> std::result::Result<Cow<'_, str>, ProtocolError> {
    if is_canonical_username(to) {
        return Ok(Cow::Borrowed(to));
    }
    normalize_username(to)
        .map(Cow::Owned)
        .map_err(|_| no_such_user(Command::Msg, to))
}

/// The login throttle's record for `user`. Unknown names are throttled like real ones:
/// nothing is revealed. Malformed names (which no account can have) share one record, so
/// they cannot fill the throttle's memory with frame-sized keys.
fn throttle_key(user: &str) -> String {
    normalize_username(user).unwrap_or_else(|_| MALFORMED_NAME.to_owned())
}

/// `ERR <command> throttled …` for a login or registration the password workers had no
/// room for: it was not checked, and may simply be sent again later.
fn busy_error(command: Command, busy: Busy) -> ProtocolError {
    let why = match busy {
        Busy::Network { .. } => "too many logins from your network are being checked",
        Busy::Server { .. } => "the server is busy checking passwords",
    };
    ProtocolError::new(
        command,
        ErrorCode::Throttled,
        format!(
            "{why}; try again in {} s",
            busy.retry_after().as_secs_f64().ceil()
        ),
    )
}

/// `ERR <command> no-such-user <name> no such user`; a name that breaks the rules is cut to
/// 32 bytes (the longest valid name), so the reply stays short.
fn no_such_user(command: Command, name: &str) -> ProtocolError {
    ProtocolError::new(
        command,
        ErrorCode::NoSuchUser,
        format!("{} no such user", crate::protocol::truncate(name, 32)),
    )
}

fn pong_line(token: &str) -> String {
    if token.is_empty() {
        "PONG\n".to_owned()
    } else {
        format!("PONG {token}\n")
    }
}

/// Returns to the OS whatever is resident in this thread's stack below the current frame.
///
/// Called first thing by the threads that live as long as a connection. glibc reuses the
/// stacks of exited threads, and a reused stack arrives with the pages its last owner
/// left resident (glibc keeps 16 KiB below the exit frame, on top of the frames
/// themselves): a new reader would inherit a login thread's handshake pages, for hours.
/// Releasing them makes every long-lived thread cost only what it touches itself.
fn release_inherited_stack() {
    /// Kept below the current frame: enough for the calls made here (only `madvise`'s
    /// own frame is live while the range is released).
    const MARGIN: usize = 4096;
    const PAGE: usize = 4096;
    // SAFETY: the attribute calls only fill in the locals passed to them. The range given
    // to madvise lies inside this thread's own stack mapping and wholly below the current
    // frame minus MARGIN. The stack grows down, so nothing live is stored there: no frame
    // of ours, and the only callee running meanwhile (the madvise wrapper) sits within
    // MARGIN. MADV_DONTNEED on private anonymous memory makes those pages read as zero
    // when next touched, which is how fresh stack pages look.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return;
        }
        let mut low: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let got = libc::pthread_attr_getstack(&attr, &mut low, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if got != 0 {
            return;
        }
        let marker = 0u8;
        let here = std::hint::black_box(std::ptr::addr_of!(marker)) as usize;
        let (low, high) = (low as usize, low as usize + size);
        if here <= low || here >= high {
            return;
        }
        let start = (low + PAGE - 1) & !(PAGE - 1);
        let end = here.saturating_sub(MARGIN) & !(PAGE - 1);
        if end > start {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The writer thread: takes everything queued, encrypts it in batches of about 16 KiB,
/// writes each batch once. After [`Outbox::close`], or when every producer is gone, it
/// closes the connection with a TLS goodbye, which also wakes the reader. When the socket
/// fails (or accepts nothing for the send timeout) it returns the error, and the caller
/// shuts the socket down without a goodbye: nobody would read it.
fn write_loop(stream: &TlsStream, queue: OutboxReceiver) -> Result<()> {
    let mut batch = VecDeque::new();
    let mut plain = Vec::new();
    let mut records = Vec::new();
    loop {
        let more = queue.take(&mut batch);
        // Woken with nothing queued: records of the router's non-blocking write wait in
        // the stream (or the queue is closing), and `send` writes them first.
        let flush_only = batch.is_empty();
        for line in batch.drain(..) {
            plain.extend_from_slice(line.as_bytes());
            if plain.len() >= WRITE_BATCH_BYTES {
                send(stream, &mut plain, &mut records)?;
            }
        }
        if !plain.is_empty() || flush_only {
            send(stream, &mut plain, &mut records)?;
        }
        if !more {
            stream.close();
            return Ok(());
        }
        if batch.capacity() > 256 || plain.capacity() > 2 * WRITE_BATCH_BYTES {
            // A burst is over; idle connections should not keep burst-sized buffers.
            batch = VecDeque::new();
            plain = Vec::new();
            records = Vec::new();
        }
    }
}

/// Sends `plain` as TLS and clears it.
fn send(stream: &TlsStream, plain: &mut Vec<u8>, records: &mut Vec<u8>) -> Result<()> {
    let sent = stream.send(plain, records);
    plain.clear();
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_names_share_one_throttle_record_and_others_are_canonical() {
        let long = "x".repeat(10_000);
        assert_eq!(throttle_key(&long), MALFORMED_NAME);
        assert_eq!(throttle_key("no spaces allowed"), MALFORMED_NAME);
        assert_eq!(throttle_key("Alice"), "alice");
        assert_eq!(throttle_key("nobody_here"), "nobody_here");
        // The shared record cannot be anyone's account.
        assert!(normalize_username(MALFORMED_NAME).is_err());
    }

    /// Shrinks a socket's kernel buffer so that a peer that does not read fills it soon.
    fn small_buffer(socket: &TcpStream, option: libc::c_int) {
        let size: libc::c_int = 16 * 1024;
        // SAFETY: setsockopt reads `size`, an int as the option expects, for the call only.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(socket),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0);
    }

    /// A real TLS connection over loopback with small socket buffers: the server's end
    /// and the client's.
    fn tls_pair() -> (TlsStream, TlsStream) {
        let dir = tempfile::tempdir().unwrap();
        let dev = crate::tls::ensure_dev_certificates(dir.path()).unwrap();
        let (chain, key) = crate::tls::load_identity(&dev.cert, &dev.key).unwrap();
        let server_config = crate::tls::server_config(chain, key).unwrap();
        let client_config = crate::tls::client_config(Some(&dev.ca)).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client_socket = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        small_buffer(&client_socket, libc::SO_RCVBUF);
        let (server_socket, _) = listener.accept().unwrap();
        small_buffer(&server_socket, libc::SO_SNDBUF);
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = thread::spawn(move || {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let conn = rustls::ClientConnection::new(client_config, name).unwrap();
            TlsStream::handshake(conn, client_socket, deadline).unwrap()
        });
        let conn = rustls::ServerConnection::new(server_config).unwrap();
        let server = TlsStream::handshake(conn, server_socket, deadline).unwrap();
        (server, client.join().unwrap())
    }

    #[test]
    fn frames_written_at_once_and_queued_arrive_in_order_when_the_socket_fills() {
        use crate::outbox::Delivery;
        let (server, client) = tls_pair();
        let server = Arc::new(server);
        let (producer, receiver) = outbox(64 * 1024 * 1024, server.clone());
        let writer = {
            let server = server.clone();
            thread::spawn(move || write_loop(&server, receiver))
        };
        let mut sent = Vec::new();
        let mut push = |seen: &mut Vec<Delivery>| {
            let line = format!("FROM alice {:05} {}\n", sent.len(), "x".repeat(1_000));
            sent.push(line.clone());
            seen.push(producer.push_or_write(Line::from(line)).unwrap());
        };
        // While the client does not read, frames are written at once until the socket
        // fills mid-frame; `then_queue` frames follow while the writer sends the rest.
        let mut fill = |then_queue: usize| {
            let mut seen = Vec::new();
            while !seen.contains(&Delivery::WrittenInPart) {
                assert!(seen.len() < 5_000, "the socket never filled: {seen:?}");
                // Let the writer go back to sleep, so the next frame may be written at once.
                thread::sleep(Duration::from_millis(2));
                push(&mut seen);
            }
            for _ in 0..then_queue {
                push(&mut seen);
            }
            seen
        };
        let mut lines = LineBuffer::new(64 * 1024);
        let mut scratch = vec![0u8; 64 * 1024];
        let mut received = Vec::new();
        client
            .socket()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut read_until = |count: usize, received: &mut Vec<String>| {
            while received.len() < count {
                let outcome = client
                    .read_some(&mut scratch, &mut lines)
                    .expect("frames stopped arriving: one was left half-sent");
                lines
                    .drain_lines(|line| {
                        received.push(format!("{}\n", line.unwrap()));
                        true
                    })
                    .unwrap();
                assert_eq!(outcome, ReadOutcome::Open);
            }
        };

        // Nothing follows the partly written frame: the writer alone must finish it.
        let seen = fill(0);
        assert!(seen.contains(&Delivery::Written), "{seen:?}");
        let count = seen.len();
        read_until(count, &mut received);

        // Frames queued behind a partly written one leave after it.
        let seen = fill(20);
        let (direct, queued) = seen.split_at(seen.len() - 20);
        assert_eq!(direct.last(), Some(&Delivery::WrittenInPart), "{seen:?}");
        assert!(queued.iter().all(|d| *d == Delivery::Queued), "{seen:?}");
        read_until(count + seen.len(), &mut received);

        assert!(received == sent, "frames lost, repeated or out of order");
        drop(producer);
        writer.join().unwrap().unwrap();
    }
}
