//! What the server does with each request of one connection: the anonymous phase
//! (register, log in) answered by the reader itself, and everything after login handed
//! to the router in order.
//!
//! The sender of every routed frame is the session's authenticated user, written here
//! into the `FROM`/`ROOM` line; nothing the client sends can change it.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::accounts::{Busy, LoginError, RegisterError};
use super::admission::Context;
use super::history::unix_now;
use super::mailbox::{self, Notice, BUNDLE_FETCHES_PER_MINUTE};
use super::outbox::{Line, Outbox};
use super::remote::Away;
use super::router::{room_line, ConnId, Direct, Event, Routed};
use super::store::{BundleLookup, Enqueued, KeyLookup, Outcome, Quota, Storage, StoredMail};
use super::throttle::AddressPrefix;
use crate::e2e::{Group, PrekeyBundle};
use crate::protocol::frame::{FrameError, LineBuffer};
use crate::protocol::name::{is_canonical_username, normalize_username, UserName};
use crate::protocol::{
    Command, DeliveryState, ErrorCode, MailboxLimits, OneTimePrekey, PrekeyList, ProtocolError,
    Refusal, Request, ServerLine,
};
use crate::rate::TokenBucket;
use crate::tls::stream::TlsStream;

/// How long a connection may be silent before its read buffers are given back.
const BUFFER_RELEASE_AFTER: Duration = Duration::from_secs(1);

/// The login throttle's record for every malformed user name (it cannot be a user name).
const MALFORMED_NAME: &str = "(malformed name)";

/// Length of an Ed25519 public key, the only identity key accepted by `SETKEY`.
const IDENTITY_KEY_BYTES: usize = 32;

/// Largest signed-prekey record `SETPREKEY` stores (decoded): a prekey bundle is a few
/// hundred bytes; 4 KiB leaves room and bounds what a user can make the server keep.
const MAX_PREKEY_RECORD_BYTES: usize = 4096;

/// Largest one-time prekey `ADDPREKEYS` stores (decoded): an X25519 or group element is
/// at most a few hundred bytes.
const MAX_ONE_TIME_PREKEY_BYTES: usize = 512;

/// What the reader knows of its connection, and how it answers each request.
pub(super) struct RequestHandler {
    /// This connection's id, for the router and logs.
    pub(super) id: ConnId,
    /// The client's address, for per-address throttling and logs.
    pub(super) peer: SocketAddr,
    /// Limits how fast this client may send frames.
    pub(super) bucket: TokenBucket,
    /// Server-wide state: limits, accounts, the router.
    pub(super) context: Arc<Context>,
    /// This client's outbound queue. Before login the reader pushes replies here itself;
    /// after login replies go through the router so they stay in order with deliveries.
    pub(super) outbox: Outbox,
    /// The authenticated user, once logged in.
    pub(super) user: Option<UserName>,
    /// The client asked (`HISTORY`, before login) for the room's recent lines at login.
    pub(super) wants_history: bool,
    /// The client opted in to offline delivery (`MAILBOX`, before login): only then is it
    /// sent mailbox lines and may it use the mailbox requests.
    pub(super) wants_mailbox: bool,
    /// When an anonymous connection is dropped for not logging in.
    pub(super) login_deadline: Instant,
    /// When the last complete frame arrived; a logged-in client silent for longer than
    /// the idle timeout is disconnected. A trickle of bytes without a newline does not
    /// count, so a slowloris peer cannot hold the connection.
    pub(super) last_frame: Instant,
    /// Requests parsed from the current read, sent to the router in one event.
    pub(super) batch: Vec<Routed>,
    /// How many requests the last batch held: the next batch starts with that capacity
    /// instead of growing one reallocation at a time.
    pub(super) batch_hint: usize,
    /// Set once `finish` ran, so `Drop` does not run it again.
    pub(super) finished: bool,
}

/// What the reader does after a frame.
pub(super) enum Step {
    /// Go on reading.
    Continue,
    /// Close the connection: the reason for the log and the `BYE` text, if any.
    Stop(String, Option<String>),
}

impl RequestHandler {
    /// Handles every complete line in `lines`, then hands the batch to the router.
    pub(super) fn handle_lines(&mut self, lines: &mut LineBuffer, stream: &TlsStream) -> Step {
        let mut flow = Step::Continue;
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
            matches!(flow, Step::Continue)
        });
        if let Err(e @ FrameError::TooLong { .. }) = drained {
            let error = ProtocolError::unattributed(ErrorCode::TooLong, format!("{e}; closing"));
            let _ = self.reply_error(&error);
            flow = Step::Stop(format!("client sent a {e}"), None);
        } else if let Err(e) = drained {
            flow = Step::Stop(e.to_string(), None);
        }
        self.flush_batch();
        if was_anonymous && self.user.is_some() {
            // Logged in: from now on silence is judged by the idle timeout.
            if let Err(e) = self.set_tick(stream) {
                return Step::Stop(format!("socket error: {e}"), None);
            }
        }
        flow
    }

    /// Closes connections that did not log in in time or went silent.
    pub(super) fn check_deadlines(&self) -> Step {
        let now = Instant::now();
        let limits = &self.context.limits;
        if self.user.is_none() && now >= self.login_deadline {
            return Step::Stop(
                "did not log in in time".into(),
                Some(format!(
                    "timeout: no login within {} s",
                    limits.login_timeout.as_secs()
                )),
            );
        }
        if self.user.is_some() && now.duration_since(self.last_frame) >= limits.idle_timeout {
            return Step::Stop(
                "idle timeout".into(),
                Some(format!(
                    "timeout: nothing received for {} s (send PING to stay connected)",
                    limits.idle_timeout.as_secs()
                )),
            );
        }
        Step::Continue
    }

    /// How often a waiting reader wakes up to check the deadlines: a quarter of the
    /// timeout that applies, so a deadline is noticed at most 25% late.
    pub(super) fn tick(&self) -> Duration {
        let limits = &self.context.limits;
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
    pub(super) fn set_tick(&self, stream: &TlsStream) -> io::Result<()> {
        let timeout = self.tick().min(BUFFER_RELEASE_AFTER);
        stream.socket().set_read_timeout(Some(timeout))
    }

    fn handle_frame(&mut self, text: &str) -> Step {
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
            (_, Request::Quit) => Step::Stop("client quit".into(), Some("goodbye".into())),
            (None, Request::Ping { token })
                if token.len() > self.context.limits.anonymous_ping_token =>
            {
                let limit = self.context.limits.anonymous_ping_token;
                self.reply_error(&ProtocolError::new(
                    Command::Ping,
                    ErrorCode::BadFrame,
                    format!("a PING token before login is at most {limit} bytes"),
                ))
            }
            (_, Request::Ping { token }) => self.reply(ServerLine::Pong {
                token: token.to_owned(),
            }),
            (None, Request::Register { user, password }) => self.register(user, password),
            (None, Request::History) => {
                self.wants_history = true;
                self.reply(ServerLine::Ok {
                    command: Command::History,
                    detail: self.context.limits.room_history.to_string(),
                })
            }
            (None, Request::Mailbox) if !self.wants_mailbox => {
                self.wants_mailbox = true;
                let limits = &self.context.limits;
                self.reply(
                    MailboxLimits {
                        ttl_seconds: limits.queue_ttl.as_secs(),
                        max_messages: limits.queue_max,
                        max_bytes: limits.queue_max_bytes,
                    }
                    .reply(),
                )
            }
            (None, Request::Mailbox) => self.reply_error(&ProtocolError::new(
                Command::Mailbox,
                ErrorCode::AlreadyLoggedIn,
                "MAILBOX was already sent on this connection",
            )),
            (None, Request::Login { user, password }) => self.login(user, password),
            (None, request) => self.reply_error(&ProtocolError::new(
                request.command(),
                ErrorCode::NotLoggedIn,
                "log in first: LOGIN <user> <password>, or REGISTER <user> <password>",
            )),
            (
                Some(_),
                Request::Register { .. }
                | Request::Login { .. }
                | Request::History
                | Request::Mailbox,
            ) => self.reply_error(&ProtocolError::new(
                request.command(),
                ErrorCode::AlreadyLoggedIn,
                "this connection is already logged in",
            )),
            (Some(user), request) => {
                let user = user.clone();
                self.logged_in_request(&user, request)
            }
        }
    }

    fn register(&mut self, user: &str, password: &str) -> Step {
        let command = Command::Register;
        let ip = self.peer.ip();
        let throttle = &self.context.throttle;
        let from = AddressPrefix::of(ip);
        let admit = || throttle.allow_registration(ip);
        let registered = self.context.accounts.register(user, password, from, admit);
        let error = match registered {
            Ok(name) => {
                log::info!("conn#{}: registered {name}", self.id);
                return self.reply(ServerLine::Ok {
                    command,
                    detail: name.to_string(),
                });
            }
            Err(RegisterError::BadUsername(rule)) => {
                ProtocolError::new(command, ErrorCode::BadUsername, rule.to_string())
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

    fn login(&mut self, user: &str, password: &str) -> Step {
        let ip = self.peer.ip();
        let account = throttle_key(user);
        // A handle of its own, so the attempt's borrow does not hold `self`.
        let context = self.context.clone();
        let attempt = match context.throttle.check_login(&account, ip) {
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
        match context
            .accounts
            .login(user, password, AddressPrefix::of(ip))
        {
            Ok(name) => {
                attempt.succeeded(name.as_str());
                log::info!("conn#{}: logged in as {name}", self.id);
                self.user = Some(name.clone());
                // Set before the router can queue anything for the session.
                self.outbox
                    .set_limit(self.context.limits.outbound_queue_bytes);
                let event = Event::LoggedIn {
                    id: self.id,
                    user: name.clone(),
                    outbox: self.outbox.clone(),
                    history: self.wants_history,
                    mailbox: self.wants_mailbox,
                };
                if self.context.router.send(event).is_err() {
                    return Step::Stop("server is shutting down".into(), None);
                }
                if self.wants_mailbox {
                    self.send_backlog(&name);
                }
                Step::Continue
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

    fn logged_in_request(&mut self, user: &UserName, request: Request<'_>) -> Step {
        match request {
            Request::List { server: None } => self.route(Routed::List),
            Request::List {
                server: Some(server),
            } => return self.remote_list(server),
            Request::Say { text } => self.route(Routed::Room(room_line(user, text))),
            Request::Msg { to, payload } => {
                let away = self.away(to);
                let to = match &away {
                    Some(Away::Home(user)) => user.as_str(),
                    Some(away) => return self.remote_msg(away),
                    None => to,
                };
                let to = match recipient(to) {
                    Ok(to) => to,
                    Err(error) => return self.reply_error(&error),
                };
                if *to == *user.as_str() {
                    return self.reply_error(&ProtocolError::new(
                        Command::Msg,
                        ErrorCode::SelfMessage,
                        "you cannot send a private message to yourself",
                    ));
                }
                self.route(Routed::Direct(Direct::new(user, &to, payload)));
            }
            Request::SetKey { key } => return self.set_key(user, key),
            Request::GetKey { user: wanted } => match self.away(wanted) {
                Some(Away::Peer { peer, address }) => return self.remote_get_key(&peer, &address),
                Some(Away::Unlinked(address)) => return self.unlinked(Command::GetKey, &address),
                Some(Away::Home(user)) => return self.get_key(user.as_str()),
                None => return self.get_key(wanted),
            },
            Request::SetPrekey { .. }
            | Request::AddPrekeys { .. }
            | Request::Bundle { .. }
            | Request::Send { .. }
            | Request::Ack { .. }
            | Request::AckStatus { .. }
                if !self.wants_mailbox =>
            {
                return self.reply_error(&ProtocolError::new(
                    request.command(),
                    ErrorCode::BadFrame,
                    "send MAILBOX before LOGIN to use the mailbox",
                ))
            }
            Request::SetPrekey { record } => return self.set_prekey(user, record),
            Request::AddPrekeys { prekeys } => return self.add_prekeys(user, prekeys),
            Request::Bundle { user: owner } => return self.bundle(user, owner),
            Request::Send {
                to,
                reference,
                payload,
            } => match self.away(to) {
                Some(Away::Home(local)) => {
                    return self.send_mail(user, local.as_str(), reference, payload)
                }
                Some(away) => return self.remote_send(user, &away, reference, payload),
                None => return self.send_mail(user, to, reference, payload),
            },
            Request::Ack { id, unreadable } => self.ack(user, id, unreadable),
            Request::AckStatus { reference } => {
                if let Err(e) = self.store().delete_receipts(user, reference) {
                    log::error!("conn#{}: receipts not deleted: {e}", self.id);
                    return self.reply_error(&storage_error(Command::AckStatus));
                }
            }
            Request::Register { .. }
            | Request::Login { .. }
            | Request::Quit
            | Request::History
            | Request::Mailbox
            | Request::Ping { .. } => {
                // Handled before a session is known to be logged in.
            }
        }
        Step::Continue
    }

    fn set_key(&mut self, user: &UserName, key: &str) -> Step {
        let decoded = base64::engine::general_purpose::STANDARD.decode(key);
        if !matches!(&decoded, Ok(bytes) if bytes.len() == IDENTITY_KEY_BYTES) {
            return self.reply_error(&ProtocolError::new(
                Command::SetKey,
                ErrorCode::BadKey,
                "an identity key is 32 bytes (Ed25519), base64-encoded",
            ));
        }
        match self.context.accounts.store().set_identity_key(user, key) {
            Ok(true) => {
                log::info!("conn#{}: {user} set its identity key", self.id);
                self.reply(ServerLine::Ok {
                    command: Command::SetKey,
                    detail: String::new(),
                })
            }
            Ok(false) | Err(_) => self.reply_error(&ProtocolError::new(
                Command::SetKey,
                ErrorCode::Storage,
                "the server could not store the key; try again later",
            )),
        }
    }

    fn get_key(&mut self, wanted: &str) -> Step {
        let command = Command::GetKey;
        let Ok(wanted) = UserName::parse(wanted) else {
            return self.reply_error(&no_such_user(command, wanted));
        };
        match self.context.accounts.store().identity_key(&wanted) {
            Ok(KeyLookup::Key(key)) => self.reply(ServerLine::Ok {
                command,
                detail: format!("{wanted} {key}"),
            }),
            Ok(KeyLookup::NoKey) => self.reply_error(&ProtocolError::new(
                command,
                ErrorCode::NoKey,
                format!("{wanted} has not published an identity key yet"),
            )),
            Ok(KeyLookup::NoSuchUser) => self.reply_error(&no_such_user(command, wanted.as_str())),
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

    pub(super) fn store(&self) -> &dyn Storage {
        self.context.accounts.store()
    }

    /// After an opted-in login: expires what is due, reads what the user is owed and hands
    /// it to the router (see `mailbox.rs` for why this follows `LoggedIn`). The outbound
    /// bound is raised by the backlog's size, so replaying it never evicts the client.
    fn send_backlog(&mut self, user: &UserName) {
        mailbox::expire(
            self.store(),
            self.context.limits.queue_ttl,
            &self.context.router,
        );
        let (lines, mail_through, receipts_through) = match self.store().backlog(user) {
            Ok(backlog) => {
                let (lines, bytes) = mailbox::backlog_lines(&backlog);
                self.outbox
                    .set_limit(self.context.limits.outbound_queue_bytes + bytes);
                (lines, backlog.mail_through, backlog.receipts_through)
            }
            Err(e) => {
                // Nothing is lost: it is all sent at the next login.
                log::error!("conn#{}: mailbox backlog not read: {e}", self.id);
                (Vec::new(), 0, 0)
            }
        };
        let _ = self.context.router.send(Event::Backlog {
            id: self.id,
            user: user.clone(),
            lines,
            mail_through,
            receipts_through,
        });
    }

    /// `SEND`: stores the message (committed) before answering `STATUS … queued`, then
    /// hands the router its `MAIL` for the recipient.
    fn send_mail(&mut self, user: &UserName, to: &str, reference: &str, payload: &str) -> Step {
        let status = |state, to: &str| ServerLine::Status {
            reference: reference.to_owned(),
            state,
            user: to.to_owned(),
        };
        let Ok(recipient) = UserName::parse(to) else {
            let to = crate::protocol::truncate(to, 32);
            return self.reply(status(DeliveryState::Refused(Refusal::NoSuchUser), to));
        };
        if recipient == *user {
            return self.reply(status(
                DeliveryState::Refused(Refusal::ToSelf),
                recipient.as_str(),
            ));
        }
        let limits = &self.context.limits;
        let quota = Quota {
            messages: limits.queue_max,
            bytes: limits.queue_max_bytes,
        };
        let now = unix_now();
        let stored = self.store().enqueue(
            user.as_str(),
            recipient.as_str(),
            reference,
            payload,
            now,
            quota,
        );
        let state = match &stored {
            Ok(Enqueued::Queued(id) | Enqueued::AlreadyQueued(id)) => {
                DeliveryState::Queued { id: *id }
            }
            Ok(Enqueued::Resolved(outcome)) => mailbox::final_state(*outcome),
            Ok(Enqueued::NoSuchUser) => DeliveryState::Refused(Refusal::NoSuchUser),
            Ok(Enqueued::Quota) => DeliveryState::Refused(Refusal::Quota),
            Err(e) => {
                log::error!("conn#{}: message not stored: {e}", self.id);
                return self.reply_error(&storage_error(Command::Send));
            }
        };
        let step = self.reply(status(state, recipient.as_str()));
        if let Ok(Enqueued::Queued(id)) = stored {
            let mail = StoredMail {
                id,
                sender: user.to_string(),
                time: now,
                payload: payload.to_owned(),
            };
            self.route(Routed::Notice(Notice::mail(recipient, &mail)));
        }
        step
    }

    /// `ACK`: deletes the message and records its receipt (one transaction), then hands
    /// the router the sender's `STATUS … delivered`. No reply, whatever happened.
    fn ack(&mut self, user: &UserName, id: u64, unreadable: bool) {
        let outcome = if unreadable {
            Outcome::Unreadable
        } else {
            Outcome::Delivered
        };
        match self.store().ack(user, id, outcome, unix_now()) {
            Ok(Some(receipt)) => match Notice::receipt(&receipt) {
                Some(notice) => self.route(Routed::Notice(notice)),
                // The sender is a user of another server: its link forwards the receipt.
                None => {
                    if let Some(federation) = &self.context.federation {
                        federation.receipt_for(&receipt.sender);
                    }
                }
            },
            Ok(None) => {}
            Err(e) => log::error!("conn#{}: ACK {id} not stored: {e}", self.id),
        }
    }

    fn set_prekey(&mut self, user: &UserName, record: &str) -> Step {
        let command = Command::SetPrekey;
        let decoded = base64::engine::general_purpose::STANDARD.decode(record);
        let bytes = match decoded {
            Ok(bytes) if bytes.len() <= MAX_PREKEY_RECORD_BYTES => bytes,
            _ => {
                return self.reply_error(&ProtocolError::new(
                    command,
                    ErrorCode::BadKey,
                    format!("a prekey record is base64 of at most {MAX_PREKEY_RECORD_BYTES} bytes"),
                ))
            }
        };
        let mailbox_key = mailbox_key(&bytes);
        let same_mailbox = |previous: &str| {
            previous == record
                || mailbox_key.is_some() && previous_mailbox_key(previous) == mailbox_key
        };
        match self.store().set_signed_prekey(user, record, &same_mailbox) {
            Ok(one_time) => self.reply(ServerLine::Ok {
                command,
                detail: one_time.to_string(),
            }),
            Err(e) => {
                log::error!("conn#{}: prekey record not stored: {e}", self.id);
                self.reply_error(&storage_error(command))
            }
        }
    }

    fn add_prekeys(&mut self, user: &UserName, prekeys: PrekeyList<'_>) -> Step {
        let command = Command::AddPrekeys;
        let engine = base64::engine::general_purpose::STANDARD;
        let valid =
            |key: &str| matches!(engine.decode(key), Ok(b) if b.len() <= MAX_ONE_TIME_PREKEY_BYTES);
        if !prekeys.iter().all(|(_, key)| valid(key)) {
            return self.reply_error(&ProtocolError::new(
                command,
                ErrorCode::BadKey,
                format!(
                    "a one-time prekey is base64 of at most {MAX_ONE_TIME_PREKEY_BYTES} bytes; none was stored"
                ),
            ));
        }
        let items: Vec<(u32, &str)> = prekeys.iter().collect();
        match self.store().add_one_time_prekeys(user, &items) {
            Ok(count) => self.reply(ServerLine::Ok {
                command,
                detail: count.to_string(),
            }),
            Err(e) => {
                log::error!("conn#{}: one-time prekeys not stored: {e}", self.id);
                self.reply_error(&storage_error(command))
            }
        }
    }

    /// `BUNDLE`: the owner's record and one one-time prekey (handed out once), within
    /// the requesting account's fetch budget; tells the owner to refill when few are left.
    fn bundle(&mut self, requester: &UserName, owner: &str) -> Step {
        let command = Command::Bundle;
        let shown = crate::protocol::truncate(owner, 32);
        if !self.context.bundle_budgets.take(requester) {
            return self.reply_error(&ProtocolError::new(
                command,
                ErrorCode::RateLimited,
                format!(
                    "{shown} more than {BUNDLE_FETCHES_PER_MINUTE} prekey fetches a minute; try again later"
                ),
            ));
        }
        let owner = match self.away(owner) {
            Some(Away::Peer { peer, address }) => {
                return self.remote_bundle(requester, &peer, &address)
            }
            Some(Away::Unlinked(address)) => return self.unlinked(command, &address),
            Some(Away::Home(user)) => user,
            None => match UserName::parse(owner) {
                Ok(owner) => owner,
                Err(_) => return self.reply_error(&no_such_user(command, owner)),
            },
        };
        match self.store().take_bundle(&owner) {
            Ok(BundleLookup::Found {
                record,
                one_time,
                left,
            }) => {
                let step = self.reply(ServerLine::Bundle {
                    user: owner.to_string(),
                    record,
                    one_time: one_time.map(|(id, key)| OneTimePrekey { id, key }),
                });
                if let Some(notice) = Notice::refill(&owner, left) {
                    self.route(Routed::Notice(notice));
                }
                step
            }
            Ok(BundleLookup::NoRecord) => self.reply_error(&ProtocolError::new(
                command,
                ErrorCode::NoPrekeys,
                format!("{owner} {owner} has not set up offline messages"),
            )),
            Ok(BundleLookup::NoSuchUser) => {
                self.reply_error(&no_such_user(command, owner.as_str()))
            }
            Err(e) => {
                log::error!("conn#{}: prekey fetch failed: {e}", self.id);
                self.reply_error(&storage_error(command))
            }
        }
    }

    /// Refuses a frame over the client's rate limit.
    fn rate_limited(&mut self, command: Option<Command>) -> Step {
        let limits = &self.context.limits;
        self.reply_error(&ProtocolError {
            command,
            code: ErrorCode::RateLimited,
            message: format!(
                "more than {} frames per second (bursts of {}); this one was dropped, slow down",
                limits.message_rate, limits.message_burst
            ),
        })
    }

    pub(super) fn reply_error(&mut self, error: &ProtocolError) -> Step {
        self.reply(ServerLine::from(error.clone()))
    }

    /// Sends a reply: directly before login, through the router after it (to keep order).
    pub(super) fn reply(&mut self, line: ServerLine) -> Step {
        let line = Line::from(&line);
        if self.user.is_some() {
            self.route(Routed::Reply(line));
            return Step::Continue;
        }
        match self.outbox.push(line) {
            Ok(()) => Step::Continue,
            Err(full) => Step::Stop(
                format!(
                    "outbound queue full ({} bytes) before login: the client is not reading",
                    full.queued
                ),
                None,
            ),
        }
    }

    /// Adds a request to the batch for the router.
    pub(super) fn route(&mut self, request: Routed) {
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
            let _ = self.context.router.send(Event::Requests {
                id: self.id,
                user: user.clone(),
                requests,
            });
        }
    }

    /// Ends the session: says goodbye and tells the router, which closes the outbox after
    /// anything still on its way; before login the reader closes it itself.
    pub(super) fn finish(&mut self, farewell: Option<String>) {
        self.finished = true;
        let bye = farewell.map(|reason| Line::from(&ServerLine::Bye { reason }));
        if let Some(user) = self.user.take() {
            let event = Event::LoggedOut {
                id: self.id,
                user,
                outbox: self.outbox.clone(),
                farewell: bye.clone(),
            };
            if self.context.router.send(event).is_ok() {
                return;
            }
        }
        if let Some(bye) = bye {
            let _ = self.outbox.push(bye);
        }
        self.outbox.close();
    }
}

impl Drop for RequestHandler {
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

/// `ERR <command> storage …`: the request was not carried out.
pub(super) fn storage_error(command: Command) -> ProtocolError {
    ProtocolError::new(
        command,
        ErrorCode::Storage,
        "the server could not store or read that; try again later",
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

/// What identifies the client mailbox a signed-prekey record (decoded) comes from: its
/// group and identity DH key. Two records from one mailbox (a rotated signed prekey) name
/// the same; the server reads no other part of a record, and one that is not a bundle names
/// none (it then matches only itself, byte for byte).
fn mailbox_key(record: &[u8]) -> Option<(Group, Vec<u8>)> {
    let bundle = PrekeyBundle::from_bytes(record).ok()?;
    Some((bundle.group, bundle.identity_dh))
}

/// [`mailbox_key`] of a stored record (base64).
fn previous_mailbox_key(record: &str) -> Option<(Group, Vec<u8>)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(record)
        .ok()?;
    mailbox_key(&bytes)
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
}
