//! One client connection on the server: its reader thread and its writer thread.
//!
//! The reader thread runs the TLS handshake, then reads frames and acts on them. Before
//! login it answers by itself (register, log in, ping, quit) and refuses everything else;
//! the connection receives no chat traffic and learns nothing about who is online. After
//! login every request goes to the router, so replies and deliveries reach the client in
//! one order. The writer thread is the only one that writes the socket: it drains the
//! client's [`Outbox`] in batches and sends each batch as one TLS write.
//!
//! The sender of every routed frame is the session's authenticated user, written by this
//! module into the `FROM`/`ROOM` line; nothing the client sends can change it.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use crossbeam_channel::RecvTimeoutError;

use crate::accounts::{normalize_username, LoginError, RegisterError};
use crate::connection::{ReadOutcome, TlsStream};
use crate::error::{Error, Result};
use crate::frame::{FrameError, LineBuffer};
use crate::outbox::{outbox, Line, Outbox, OutboxReceiver, Outgoing};
use crate::protocol::{hello_line, Command, ErrorCode, ProtocolError, Request};
use crate::router::{ConnId, Event, Routed};
use crate::server::Shared;
use crate::throttle::TokenBucket;

/// Stack for writer threads. A writer only encrypts and writes; what it touches of its
/// stack stays resident for the connection's lifetime, so it is kept small.
pub const WRITER_STACK_BYTES: usize = 64 * 1024;

/// Stack for reader threads, which also run the TLS handshake and bcrypt.
pub const READER_STACK_BYTES: usize = 256 * 1024;

/// Largest plaintext the writer packs into one TLS write. 16 KiB is one full TLS record.
const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// Bytes taken from the socket per read.
const READ_SCRATCH_BYTES: usize = 4096;

/// How long a closing reader waits for its writer to send what is queued before cutting
/// the socket (a peer that stopped reading would otherwise hold the writer forever).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Length of an Ed25519 public key, the only identity key accepted by `SETKEY`.
const IDENTITY_KEY_BYTES: usize = 32;

/// Serves one accepted connection until it ends. Logs how it ended.
///
/// A panic here (a bug) ends this connection only: the session's `Drop` tells the router
/// and closes the queue, so no thread, queue or online entry is left behind.
pub(crate) fn serve(shared: Arc<Shared>, socket: TcpStream, peer: SocketAddr, id: ConnId) {
    let accepted = Instant::now();
    let served = panic::catch_unwind(AssertUnwindSafe(|| {
        serve_connection(&shared, socket, peer, id, accepted)
    }));
    match served {
        Ok(Ok(reason)) => log::info!("conn#{id} {peer}: closed: {reason}"),
        Ok(Err(e)) => log::info!("conn#{id} {peer}: closed: {e}"),
        Err(_) => log::error!("conn#{id} {peer}: closed after an internal error (a bug)"),
    }
    shared.unregister(id);
}

fn serve_connection(
    shared: &Arc<Shared>,
    socket: TcpStream,
    peer: SocketAddr,
    id: ConnId,
    accepted: Instant,
) -> Result<String> {
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

    let (outbox, receiver) = outbox(limits.outbound_queue_bytes, stream.clone());
    let (writer_done, writer_finished) = crossbeam_channel::bounded::<()>(0);
    let writer_stream = stream.clone();
    let writer = thread::Builder::new()
        .name(format!("writer-{id}"))
        .stack_size(WRITER_STACK_BYTES)
        .spawn(move || {
            let _done = writer_done;
            write_loop(&writer_stream, receiver);
        })?;
    shared.register(id, outbox.clone());

    let mut session = Session {
        id,
        peer,
        bucket: TokenBucket::new(limits.message_rate, limits.message_burst),
        shared: shared.clone(),
        outbox,
        user: None,
        login_deadline: accepted + limits.login_timeout,
        last_frame: Instant::now(),
        batch: Vec::new(),
        finished: false,
    };
    let (reason, farewell) = session.run(&stream);
    session.finish(farewell);

    // Let the writer send what is queued; cut the socket if the peer is not taking it.
    if let Err(RecvTimeoutError::Timeout) = writer_finished.recv_timeout(CLOSE_GRACE) {
        stream.shutdown_socket();
    }
    let _ = writer.join();
    Ok(reason)
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
    /// Reads and handles frames until the connection should close. Returns the reason for
    /// the log and the goodbye to send.
    fn run(&mut self, stream: &TlsStream) -> (String, Option<String>) {
        if self.outbox.push(Line::from(hello_line())).is_err() {
            return ("could not queue the greeting".into(), None);
        }
        let limits = &self.shared.limits;
        let mut lines = LineBuffer::new(limits.max_frame);
        let mut scratch = vec![0u8; READ_SCRATCH_BYTES];
        if let Err(e) = self.set_tick(stream) {
            return (format!("socket error: {e}"), None);
        }
        let mut outcome = stream.take_buffered(&mut lines);
        loop {
            let closed = match outcome {
                Ok(ReadOutcome::Open) => false,
                Ok(ReadOutcome::Closed) => true,
                Err(Error::Io(e)) if is_timeout(&e) => false,
                Err(e) => return (e.to_string(), None),
            };
            // Frames that arrived together with the close are still carried out.
            if let Flow::Stop(reason, bye) = self.handle_lines(&mut lines, stream) {
                return (reason, bye);
            }
            if closed {
                return ("client closed the connection".into(), None);
            }
            if let Flow::Stop(reason, bye) = self.check_deadlines() {
                return (reason, bye);
            }
            outcome = stream.read_some(&mut scratch, &mut lines);
        }
    }

    /// Handles every complete line in `lines`, then hands the batch to the router.
    fn handle_lines(&mut self, lines: &mut LineBuffer, stream: &TlsStream) -> Flow {
        let mut flow = Flow::Continue;
        let was_anonymous = self.user.is_none();
        self.bucket.refill(Instant::now());
        let drained = lines.drain_lines(|line| {
            flow = match line {
                Ok(text) => {
                    self.last_frame = Instant::now();
                    self.handle_frame(text)
                }
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

    /// Sets how often a blocked read wakes up to check the deadlines: a quarter of the
    /// timeout that applies, so a deadline is noticed at most 25% late.
    fn set_tick(&self, stream: &TlsStream) -> io::Result<()> {
        let limits = &self.shared.limits;
        let timeout = if self.user.is_some() {
            limits.idle_timeout
        } else {
            limits.login_timeout
        };
        let tick = (timeout / 4).max(Duration::from_millis(10));
        stream.socket().set_read_timeout(Some(tick))
    }

    fn handle_frame(&mut self, text: &str) -> Flow {
        let request = match Request::parse(text) {
            Ok(request) => request,
            Err(error) => return self.reply_error(&error),
        };
        if request != Request::Quit && !self.bucket.take() {
            let limits = &self.shared.limits;
            return self.reply_error(&ProtocolError::new(
                request.command(),
                ErrorCode::RateLimited,
                format!(
                    "more than {} frames per second (bursts of {}); this one was dropped, slow down",
                    limits.message_rate, limits.message_burst
                ),
            ));
        }
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
        let registered = self
            .shared
            .accounts
            .register(user, password, || throttle.allow_registration(ip));
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
        // Unknown and malformed names are throttled like real ones: nothing is revealed.
        let account = normalize_username(user).unwrap_or_else(|_| user.to_lowercase());
        if let Err(throttled) = self.shared.throttle.check_login(&account, ip) {
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
        match self.shared.accounts.login(user, password) {
            Ok(name) => {
                self.shared.throttle.login_succeeded(&name, ip);
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
                match self.shared.throttle.login_failed(&account, ip) {
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
            Request::List => self.batch.push(Routed::List),
            Request::Say { text } => {
                let line = format!("ROOM {user} {text}\n");
                self.batch.push(Routed::Room {
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
                let mut line = Vec::with_capacity(6 + user.len() + payload.len());
                line.extend_from_slice(b"FROM ");
                line.extend_from_slice(user.as_bytes());
                line.push(b' ');
                line.extend_from_slice(payload.as_bytes());
                line.push(b'\n');
                self.batch.push(Routed::Direct {
                    to: to.into_boxed_str(),
                    line,
                });
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
            return self.reply_error(&ProtocolError::new(
                command,
                ErrorCode::NoSuchUser,
                format!("{wanted} no such user"),
            ));
        };
        match self.shared.accounts.store().identity_key(&wanted) {
            Ok(Some(Some(key))) => self.reply(format!("OK GETKEY {wanted} {key}\n")),
            Ok(Some(None)) => self.reply_error(&ProtocolError::new(
                command,
                ErrorCode::NoKey,
                format!("{wanted} has not published an identity key yet"),
            )),
            Ok(None) => self.reply_error(&ProtocolError::new(
                command,
                ErrorCode::NoSuchUser,
                format!("{wanted} no such user"),
            )),
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

    fn reply_error(&mut self, error: &ProtocolError) -> Flow {
        self.reply(error.to_line())
    }

    /// Sends a reply: directly before login, through the router after it (to keep order).
    fn reply(&mut self, line: String) -> Flow {
        if self.user.is_some() {
            self.batch.push(Routed::Reply(Line::from(line)));
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

    /// Sends the requests parsed from one read to the router as one event.
    fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if let Some(user) = &self.user {
            let requests = std::mem::take(&mut self.batch);
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

/// Validates a `MSG` recipient and returns its canonical name.
fn recipient(to: &str) -> std::result::Result<String, ProtocolError> {
    normalize_username(to).map_err(|_| {
        ProtocolError::new(
            Command::Msg,
            ErrorCode::NoSuchUser,
            format!("{} no such user", crate::protocol::truncate(to, 32)),
        )
    })
}

fn pong_line(token: &str) -> String {
    if token.is_empty() {
        "PONG\n".to_owned()
    } else {
        format!("PONG {token}\n")
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The writer thread: takes everything queued, encrypts it as one batch, writes it once.
/// Ends on `Close`, when every producer is gone, or when the socket fails; then closes
/// the connection, which also wakes the reader.
fn write_loop(stream: &TlsStream, queue: OutboxReceiver) {
    let mut plain = Vec::new();
    let mut records = Vec::new();
    while let Some(first) = queue.recv() {
        let mut closing = false;
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Outgoing::Line(line) => plain.extend_from_slice(line.as_bytes()),
                Outgoing::Close => {
                    closing = true;
                    break;
                }
            }
            if plain.len() >= WRITE_BATCH_BYTES {
                break;
            }
            next = queue.try_recv();
        }
        if !plain.is_empty() {
            if let Err(e) = stream.send(&plain, &mut records) {
                log::debug!("writer: {e}");
                break;
            }
            plain.clear();
        }
        if closing {
            break;
        }
        if plain.capacity() > 2 * WRITE_BATCH_BYTES {
            // A burst is over; idle connections should not keep burst-sized buffers.
            plain = Vec::new();
            records = Vec::new();
        }
    }
    stream.close();
}
