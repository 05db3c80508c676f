//! The commands of the wire protocol, in both directions, shared by server and client.
//!
//! A frame is one line (see [`crate::protocol::frame`]); this module gives each line a meaning.
//! Client requests are [`Request`]s; everything the server sends is a [`ServerLine`].
//! Parsing borrows from the line and never allocates, so the server's hot path (a `MSG`)
//! costs one scan of the line. `report/protocol.md` is the normative description; the two
//! must change together.

pub mod frame;
pub mod name;
pub mod peer;

use std::fmt;
use std::io::Write as _;

use name::{is_canonical_server_name, ServerName};

/// Protocol version announced in the greeting. A client refuses a server with another one.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// `REGISTER <user> <password>`: create an account. Allowed before login only.
    Register {
        /// The name wanted, as typed.
        user: &'a str,
        /// The password, to the end of the line.
        password: &'a str,
    },
    /// `LOGIN <user> <password>`: authenticate. Allowed before login only.
    Login {
        /// The account's name, as typed.
        user: &'a str,
        /// The password, to the end of the line.
        password: &'a str,
    },
    /// `QUIT`: leave. Allowed in every state.
    Quit,
    /// `PING [token]`: liveness check, answered with `PONG [token]`. Allowed in every state.
    Ping {
        /// Echoed in the `PONG` (may be empty).
        token: &'a str,
    },
    /// `LIST [server]`: who is online here, or (federation) on the linked server named.
    List {
        /// The linked server asked about; `None` for this server. Taken as one word,
        /// unchecked: the server answers a name it is not linked with by `ERR LIST
        /// unreachable`, a bad one included.
        server: Option<&'a str>,
    },
    /// `SAY <text>`: a message to the public room (protected by TLS only).
    Say {
        /// The message, to the end of the line.
        text: &'a str,
    },
    /// `MSG <user> <payload>`: route an opaque payload to one user.
    Msg {
        /// The recipient's name.
        to: &'a str,
        /// Opaque to the server (an end-to-end frame), to the end of the line.
        payload: &'a str,
    },
    /// `SETKEY <key>`: publish the caller's identity public key (base64).
    SetKey {
        /// The base64 Ed25519 public key.
        key: &'a str,
    },
    /// `GETKEY <user>`: fetch a user's identity public key.
    GetKey {
        /// Whose key.
        user: &'a str,
    },
    /// `HISTORY`: after this connection logs in, replay the room's recent lines as
    /// `HISTORY` frames before any live room line. Allowed before login only: it is an
    /// opt-in, so that clients that cannot read `HISTORY` frames never get one.
    History,
    /// `MAILBOX`: this connection speaks offline delivery (section 6.12 of the spec). Allowed
    /// before login only, like `HISTORY`: only a connection that sent it is ever sent `MAIL`,
    /// `STATUS`, `BUNDLE` or `PREKEYS`, and only it may use the requests below.
    Mailbox,
    /// `SETPREKEY <b64 record>`: store the caller's signed-prekey record (opaque to the
    /// server), replacing the previous one.
    SetPrekey {
        /// The base64 record: the caller's prekey bundle without a one-time prekey.
        record: &'a str,
    },
    /// `ADDPREKEYS <id>:<b64> [<id>:<b64> …]`: add one-time prekeys.
    AddPrekeys {
        /// The prekeys, in the order sent.
        prekeys: PrekeyList<'a>,
    },
    /// `BUNDLE <user>`: fetch `user`'s signed-prekey record and one of its one-time prekeys.
    Bundle {
        /// Whose prekeys.
        user: &'a str,
    },
    /// `SEND <user> <ref> <payload>`: a message the server stores until `user` acknowledges it.
    Send {
        /// The recipient's name.
        to: &'a str,
        /// The sender's reference for it, echoed in every `STATUS` about it
        /// (checked by [`valid_reference`]).
        reference: &'a str,
        /// Opaque to the server, to the end of the line.
        payload: &'a str,
    },
    /// `ACK <id> [unreadable]`: the recipient has durably processed `MAIL <id>`; the server
    /// forgets it and tells the sender `delivered`, or `unreadable` when the recipient's
    /// client could not open it (so the sender's client can start a new session and send it
    /// again).
    Ack {
        /// The server's message id, from the `MAIL` line.
        id: u64,
        /// The recipient's client could not open it.
        unreadable: bool,
    },
    /// `ACKSTATUS <ref>`: the sender has seen the stored `STATUS` lines for `ref`; the server
    /// forgets them.
    AckStatus {
        /// The sender's reference (checked by [`valid_reference`]).
        reference: &'a str,
    },
}

/// Longest message reference a `SEND` may carry.
pub const MAX_REFERENCE_LEN: usize = 32;

/// Whether `reference` is a message reference: 1 to [`MAX_REFERENCE_LEN`] characters of
/// `A-Z a-z 0-9 _ -`.
pub fn valid_reference(reference: &str) -> bool {
    (1..=MAX_REFERENCE_LEN).contains(&reference.len())
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The one-time prekeys of an `ADDPREKEYS` request: `<u32 id>:<b64 key>` items separated by
/// single spaces, checked when parsed and read with [`PrekeyList::iter`].
///
/// Invariant: `items` is non-empty and every space-separated word in it is
/// `<u32>:<non-empty key without ':'>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrekeyList<'a> {
    /// The items as they appear on the wire.
    items: &'a str,
}

impl<'a> PrekeyList<'a> {
    /// Checks `items` (the text after `ADDPREKEYS `); the error says what is wrong.
    pub fn parse(items: &'a str) -> Result<PrekeyList<'a>, &'static str> {
        if items.is_empty() {
            return Err("no prekeys");
        }
        for item in items.split(' ') {
            OneTimePrekey::split(item)?;
        }
        Ok(PrekeyList { items })
    }

    /// The items text for `prekeys`, to [`parse`](PrekeyList::parse) into a request.
    pub fn join<'k>(prekeys: impl IntoIterator<Item = (u32, &'k str)>) -> String {
        let words: Vec<String> = prekeys
            .into_iter()
            .map(|(id, key)| format!("{id}:{key}"))
            .collect();
        words.join(" ")
    }

    /// Every `(id, base64 key)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &'a str)> {
        self.items
            .split(' ')
            .filter_map(|item| OneTimePrekey::split(item).ok())
    }

    /// The items as they appear on the wire.
    pub fn as_str(&self) -> &'a str {
        self.items
    }
}

/// One one-time prekey as the server hands it out in a `BUNDLE` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneTimePrekey {
    /// The owner's id for it (the initiator names it in its first message).
    pub id: u32,
    /// The public value, base64.
    pub key: String,
}

impl OneTimePrekey {
    /// Reads the prekey word of a `BUNDLE` line (a client's or a peer's): `<id>:<key>`, or
    /// `-` for none.
    pub fn from_word(word: &str) -> Result<Option<OneTimePrekey>, &'static str> {
        if word == "-" {
            return Ok(None);
        }
        let (id, key) = OneTimePrekey::split(word)?;
        Ok(Some(OneTimePrekey {
            id,
            key: key.to_owned(),
        }))
    }

    /// The prekey word of a `BUNDLE` line for `prekey` (see [`OneTimePrekey::from_word`]).
    pub fn word(prekey: Option<&OneTimePrekey>) -> String {
        prekey.map_or_else(|| "-".to_owned(), |k| format!("{}:{}", k.id, k.key))
    }

    /// Splits `<u32 id>:<key>`, the key non-empty and without `:` or spaces.
    fn split(item: &str) -> Result<(u32, &str), &'static str> {
        let (id, key) = item
            .split_once(':')
            .ok_or("a prekey is not <id>:<base64 key>")?;
        let id = id.parse().map_err(|_| "a prekey id is not a number")?;
        if key.is_empty() || key.contains([':', ' ']) {
            return Err("a prekey value is empty or not one word");
        }
        Ok((id, key))
    }
}

/// The queue limits in `OK MAILBOX <ttl-seconds> <max-messages> <max-bytes>`: how long the
/// server keeps a message and how much it queues for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Seconds a queued message is kept before it expires.
    pub ttl_seconds: u64,
    /// Most messages queued for one recipient.
    pub max_messages: u64,
    /// Most payload bytes queued for one recipient.
    pub max_bytes: u64,
}

impl MailboxLimits {
    /// The `OK MAILBOX` reply announcing these limits.
    pub fn reply(&self) -> ServerLine {
        ServerLine::Ok {
            command: Command::Mailbox,
            detail: format!(
                "{} {} {}",
                self.ttl_seconds, self.max_messages, self.max_bytes
            ),
        }
    }

    /// Reads the detail of an `OK MAILBOX` line.
    pub fn from_detail(detail: &str) -> Option<MailboxLimits> {
        let mut words = detail.split(' ').map(str::parse);
        let limits = MailboxLimits {
            ttl_seconds: words.next()?.ok()?,
            max_messages: words.next()?.ok()?,
            max_bytes: words.next()?.ok()?,
        };
        words.next().is_none().then_some(limits)
    }
}

/// What happened to a message sent with `SEND`, as a `STATUS` line tells its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// `queued <id>`: stored durably; the recipient will be sent `MAIL <id> …`.
    Queued {
        /// The server's message id.
        id: u64,
    },
    /// `delivered`: the recipient's client acknowledged it.
    Delivered,
    /// `expired`: its time to live passed before the recipient acknowledged it.
    Expired,
    /// `unreadable`: the recipient's client received it but could not open it (it lost or
    /// damaged its offline session, or the payload was not the sender's).
    Unreadable,
    /// `refused <reason>`: nothing was stored.
    Refused(Refusal),
}

/// Why a `SEND` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `no-such-user`: the recipient has no account.
    NoSuchUser,
    /// `quota`: the recipient's queue is at its message or byte limit.
    Quota,
    /// `self`: a message to oneself.
    ToSelf,
    /// `no-such-server`: the recipient's server is not one this server is linked with.
    NoSuchServer,
}

impl Refusal {
    /// Every reason.
    pub const ALL: [Refusal; 4] = [
        Refusal::NoSuchUser,
        Refusal::Quota,
        Refusal::ToSelf,
        Refusal::NoSuchServer,
    ];

    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoSuchUser => "no-such-user",
            Refusal::Quota => "quota",
            Refusal::ToSelf => "self",
            Refusal::NoSuchServer => "no-such-server",
        }
    }

    /// The reason named `word` on the wire, if it is one.
    pub fn from_wire(word: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.as_str() == word)
    }
}

impl<'a> Request<'a> {
    /// Parses one frame. Verbs are case-insensitive so that a person typing into
    /// `openssl s_client` is not tripped up; arguments are taken as they are.
    pub fn parse(line: &'a str) -> Result<Request<'a>, ProtocolError> {
        let (verb, rest) = split_word(line);
        let command = Command::from_verb(verb).ok_or_else(|| {
            ProtocolError::unattributed(
                ErrorCode::UnknownCommand,
                format!(
                    "unknown command {:?}; expected one of REGISTER, LOGIN, QUIT, PING, LIST, SAY, MSG, SETKEY, GETKEY, HISTORY, MAILBOX, SETPREKEY, ADDPREKEYS, BUNDLE, SEND, ACK, ACKSTATUS",
                    truncate(verb, 32)
                ),
            )
        })?;
        let bad_reference = || {
            ProtocolError::new(
                command,
                ErrorCode::BadFrame,
                format!(
                    "usage: {}; a reference is 1 to {MAX_REFERENCE_LEN} of A-Z a-z 0-9 _ -",
                    command.usage()
                ),
            )
        };
        let missing = |what: &str| {
            ProtocolError::new(
                command,
                ErrorCode::BadFrame,
                format!("usage: {}; {what} is missing", command.usage()),
            )
        };
        // The whole rest of the line as one word, for commands that take exactly one.
        let one_word = |rest: &'a str, what: &str| {
            let (word, extra) = split_word(rest);
            if word.is_empty() {
                return Err(missing(what));
            }
            if !extra.is_empty() {
                return Err(ProtocolError::new(
                    command,
                    ErrorCode::BadFrame,
                    format!("usage: {}; unexpected text after {what}", command.usage()),
                ));
            }
            Ok(word)
        };
        let request = match command {
            Command::Register | Command::Login => {
                let (user, password) = split_word(rest);
                if user.is_empty() {
                    return Err(missing("the user name"));
                }
                if password.is_empty() {
                    return Err(missing("the password"));
                }
                if command == Command::Register {
                    Request::Register { user, password }
                } else {
                    Request::Login { user, password }
                }
            }
            Command::Quit => Request::Quit,
            Command::Ping => Request::Ping { token: rest },
            Command::List => match split_word(rest) {
                ("", _) => Request::List { server: None },
                _ => Request::List {
                    server: Some(one_word(rest, "the server name")?),
                },
            },
            Command::Say => {
                if rest.trim().is_empty() {
                    return Err(missing("the text"));
                }
                Request::Say { text: rest }
            }
            Command::Msg => {
                let (to, payload) = split_word(rest);
                if to.is_empty() {
                    return Err(missing("the recipient"));
                }
                if payload.is_empty() {
                    return Err(missing("the payload"));
                }
                Request::Msg { to, payload }
            }
            Command::SetKey => Request::SetKey {
                key: one_word(rest, "the key")?,
            },
            Command::GetKey => Request::GetKey {
                user: one_word(rest, "the user name")?,
            },
            Command::History => Request::History,
            Command::Mailbox => Request::Mailbox,
            Command::SetPrekey => Request::SetPrekey {
                record: one_word(rest, "the record")?,
            },
            Command::AddPrekeys => Request::AddPrekeys {
                prekeys: PrekeyList::parse(rest).map_err(|problem| {
                    ProtocolError::new(
                        command,
                        ErrorCode::BadFrame,
                        format!("usage: {}; {problem}", command.usage()),
                    )
                })?,
            },
            Command::Bundle => Request::Bundle {
                user: one_word(rest, "the user name")?,
            },
            Command::Send => {
                let (to, rest) = split_word(rest);
                let (reference, payload) = split_word(rest);
                if to.is_empty() {
                    return Err(missing("the recipient"));
                }
                if reference.is_empty() {
                    return Err(missing("the reference"));
                }
                if payload.is_empty() {
                    return Err(missing("the payload"));
                }
                if !valid_reference(reference) {
                    return Err(bad_reference());
                }
                Request::Send {
                    to,
                    reference,
                    payload,
                }
            }
            Command::Ack => {
                let (id, flag) = split_word(rest);
                let unreadable = match flag {
                    "" => false,
                    "unreadable" => true,
                    _ => {
                        return Err(ProtocolError::new(
                            command,
                            ErrorCode::BadFrame,
                            format!("usage: {}; unexpected text after the id", command.usage()),
                        ))
                    }
                };
                Request::Ack {
                    id: one_word(id, "the message id")?.parse().map_err(|_| {
                        ProtocolError::new(
                            command,
                            ErrorCode::BadFrame,
                            format!("usage: {}; the id is not a number", command.usage()),
                        )
                    })?,
                    unreadable,
                }
            }
            Command::AckStatus => {
                let reference = one_word(rest, "the reference")?;
                if !valid_reference(reference) {
                    return Err(bad_reference());
                }
                Request::AckStatus { reference }
            }
        };
        Ok(request)
    }

    /// The command this request belongs to, for replies.
    pub fn command(&self) -> Command {
        match self {
            Request::Register { .. } => Command::Register,
            Request::Login { .. } => Command::Login,
            Request::Quit => Command::Quit,
            Request::Ping { .. } => Command::Ping,
            Request::List { .. } => Command::List,
            Request::Say { .. } => Command::Say,
            Request::Msg { .. } => Command::Msg,
            Request::SetKey { .. } => Command::SetKey,
            Request::GetKey { .. } => Command::GetKey,
            Request::History => Command::History,
            Request::Mailbox => Command::Mailbox,
            Request::SetPrekey { .. } => Command::SetPrekey,
            Request::AddPrekeys { .. } => Command::AddPrekeys,
            Request::Bundle { .. } => Command::Bundle,
            Request::Send { .. } => Command::Send,
            Request::Ack { .. } => Command::Ack,
            Request::AckStatus { .. } => Command::AckStatus,
        }
    }
}

impl fmt::Display for Request<'_> {
    /// The frame for this request, without the line ending.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = self.command().verb();
        match self {
            Request::Register { user, password } | Request::Login { user, password } => {
                write!(f, "{verb} {user} {password}")
            }
            Request::Quit
            | Request::List { server: None }
            | Request::History
            | Request::Mailbox => f.write_str(verb),
            Request::List {
                server: Some(server),
            } => write!(f, "{verb} {server}"),
            Request::Ping { token: "" } => f.write_str(verb),
            Request::Ping { token } => write!(f, "{verb} {token}"),
            Request::Say { text } => write!(f, "{verb} {text}"),
            Request::Msg { to, payload } => write!(f, "{verb} {to} {payload}"),
            Request::SetKey { key } => write!(f, "{verb} {key}"),
            Request::GetKey { user } | Request::Bundle { user } => write!(f, "{verb} {user}"),
            Request::SetPrekey { record } => write!(f, "{verb} {record}"),
            Request::AddPrekeys { prekeys } => write!(f, "{verb} {}", prekeys.as_str()),
            Request::Send {
                to,
                reference,
                payload,
            } => write!(f, "{verb} {to} {reference} {payload}"),
            Request::Ack {
                id,
                unreadable: false,
            } => write!(f, "{verb} {id}"),
            Request::Ack {
                id,
                unreadable: true,
            } => write!(f, "{verb} {id} unreadable"),
            Request::AckStatus { reference } => write!(f, "{verb} {reference}"),
        }
    }
}

/// The request kinds, named as on the wire. Replies name the command they answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `REGISTER`
    Register,
    /// `LOGIN`
    Login,
    /// `QUIT`
    Quit,
    /// `PING`
    Ping,
    /// `LIST`
    List,
    /// `SAY`
    Say,
    /// `MSG`
    Msg,
    /// `SETKEY`
    SetKey,
    /// `GETKEY`
    GetKey,
    /// `HISTORY`
    History,
    /// `MAILBOX`
    Mailbox,
    /// `SETPREKEY`
    SetPrekey,
    /// `ADDPREKEYS`
    AddPrekeys,
    /// `BUNDLE`
    Bundle,
    /// `SEND`
    Send,
    /// `ACK`
    Ack,
    /// `ACKSTATUS`
    AckStatus,
}

impl Command {
    /// Every command.
    pub const ALL: [Command; 17] = [
        Command::Register,
        Command::Login,
        Command::Quit,
        Command::Ping,
        Command::List,
        Command::Say,
        Command::Msg,
        Command::SetKey,
        Command::GetKey,
        Command::History,
        Command::Mailbox,
        Command::SetPrekey,
        Command::AddPrekeys,
        Command::Bundle,
        Command::Send,
        Command::Ack,
        Command::AckStatus,
    ];

    /// The verb as it appears on the wire.
    pub fn verb(self) -> &'static str {
        match self {
            Command::Register => "REGISTER",
            Command::Login => "LOGIN",
            Command::Quit => "QUIT",
            Command::Ping => "PING",
            Command::List => "LIST",
            Command::Say => "SAY",
            Command::Msg => "MSG",
            Command::SetKey => "SETKEY",
            Command::GetKey => "GETKEY",
            Command::History => "HISTORY",
            Command::Mailbox => "MAILBOX",
            Command::SetPrekey => "SETPREKEY",
            Command::AddPrekeys => "ADDPREKEYS",
            Command::Bundle => "BUNDLE",
            Command::Send => "SEND",
            Command::Ack => "ACK",
            Command::AckStatus => "ACKSTATUS",
        }
    }

    /// One-line usage, quoted in errors.
    pub fn usage(self) -> &'static str {
        match self {
            Command::Register => "REGISTER <user> <password>",
            Command::Login => "LOGIN <user> <password>",
            Command::Quit => "QUIT",
            Command::Ping => "PING [token]",
            Command::List => "LIST [server]",
            Command::Say => "SAY <text>",
            Command::Msg => "MSG <user> <payload>",
            Command::SetKey => "SETKEY <base64 identity key>",
            Command::GetKey => "GETKEY <user>",
            Command::History => "HISTORY",
            Command::Mailbox => "MAILBOX",
            Command::SetPrekey => "SETPREKEY <base64 signed-prekey record>",
            Command::AddPrekeys => "ADDPREKEYS <id>:<base64 key> [<id>:<base64 key> ...]",
            Command::Bundle => "BUNDLE <user>",
            Command::Send => "SEND <user> <ref> <payload>",
            Command::Ack => "ACK <id> [unreadable]",
            Command::AckStatus => "ACKSTATUS <ref>",
        }
    }

    /// Case-insensitive lookup of a verb.
    pub fn from_verb(verb: &str) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|c| c.verb().eq_ignore_ascii_case(verb))
    }
}

/// Machine-readable error codes, the second word of an `ERR` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame could not be read (bad UTF-8, control characters, missing arguments).
    BadFrame,
    /// The frame exceeded the size limit; the server closes the connection.
    TooLong,
    /// The verb is not a command.
    UnknownCommand,
    /// The command needs a logged-in session.
    NotLoggedIn,
    /// `REGISTER`/`LOGIN` on a session that is already logged in.
    AlreadyLoggedIn,
    /// Wrong user name or password (deliberately not saying which).
    AuthFailed,
    /// The user name breaks the naming rule.
    BadUsername,
    /// The password breaks one or more strength rules (listed in the text).
    WeakPassword,
    /// The user name is taken.
    UserExists,
    /// `MSG` to a user who is not online. The first word of the text is the user name.
    Offline,
    /// No such account. The first word of the text is the user name.
    NoSuchUser,
    /// The user has not published an identity key. The first word of the text is the user.
    NoKey,
    /// The key is not a valid identity public key.
    BadKey,
    /// `MSG` addressed to oneself.
    SelfMessage,
    /// Too many requests; slow down (the text says for how long where it is known).
    RateLimited,
    /// Too many failed logins or registrations from this source; wait and retry.
    Throttled,
    /// A storage failure; the request was not carried out.
    Storage,
    /// `BUNDLE` for a user who has not stored a signed-prekey record (has not set up offline
    /// messages). The first word of the text is the user name.
    NoPrekeys,
    /// The user named is on another server that this server is not linked with, or cannot
    /// reach now. The first word of the text is the user's address.
    Unreachable,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::BadFrame,
        ErrorCode::TooLong,
        ErrorCode::UnknownCommand,
        ErrorCode::NotLoggedIn,
        ErrorCode::AlreadyLoggedIn,
        ErrorCode::AuthFailed,
        ErrorCode::BadUsername,
        ErrorCode::WeakPassword,
        ErrorCode::UserExists,
        ErrorCode::Offline,
        ErrorCode::NoSuchUser,
        ErrorCode::NoKey,
        ErrorCode::BadKey,
        ErrorCode::SelfMessage,
        ErrorCode::RateLimited,
        ErrorCode::Throttled,
        ErrorCode::Storage,
        ErrorCode::NoPrekeys,
        ErrorCode::Unreachable,
    ];

    /// The code named `word` on the wire, if it is one.
    pub fn from_wire(word: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == word)
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad-frame",
            ErrorCode::TooLong => "too-long",
            ErrorCode::UnknownCommand => "unknown-command",
            ErrorCode::NotLoggedIn => "not-logged-in",
            ErrorCode::AlreadyLoggedIn => "already-logged-in",
            ErrorCode::AuthFailed => "auth-failed",
            ErrorCode::BadUsername => "bad-username",
            ErrorCode::WeakPassword => "weak-password",
            ErrorCode::UserExists => "user-exists",
            ErrorCode::Offline => "offline",
            ErrorCode::NoSuchUser => "no-such-user",
            ErrorCode::NoKey => "no-key",
            ErrorCode::BadKey => "bad-key",
            ErrorCode::SelfMessage => "self-message",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::Throttled => "throttled",
            ErrorCode::Storage => "storage",
            ErrorCode::NoPrekeys => "no-prekeys",
            ErrorCode::Unreachable => "unreachable",
        }
    }
}

/// A request that gets an `ERR` reply instead of being carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// The command being answered; `None` when the line had no recognisable verb
    /// (shown as `-` on the wire).
    pub command: Option<Command>,
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people: what to do instead.
    pub message: String,
}

impl ProtocolError {
    /// An error answering `command`.
    pub fn new(command: Command, code: ErrorCode, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            command: Some(command),
            code,
            message: message.into(),
        }
    }

    /// An error about a line that is not any command (unreadable, or an unknown verb).
    pub fn unattributed(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            command: None,
            code,
            message: message.into(),
        }
    }
}

impl From<ProtocolError> for ServerLine {
    fn from(error: ProtocolError) -> ServerLine {
        ServerLine::Err {
            command: error.command,
            code: error.code,
            text: error.message,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code.as_str())
    }
}

impl std::error::Error for ProtocolError {}

/// A line from the server, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerLine {
    /// `HELLO securechat <version> [key=value…]`: the greeting, first line after the TLS
    /// handshake. `limits` is `None` when the server announced none (an older server).
    Hello {
        /// The protocol version the server speaks.
        version: u32,
        /// Its limits, if it announced them.
        limits: Option<AnnouncedLimits>,
        /// Its federation name (`name=`), announced only by a server that federates: the
        /// client qualifies the names it binds into end-to-end cryptography with it, so
        /// that both ends of a conversation between servers bind the same full addresses
        /// (`src/client/end_to_end.rs`). Canonical only: a greeting with a name that is not
        /// a canonical server name is refused, never used in some other spelling.
        name: Option<ServerName>,
    },
    /// `OK <command> [detail]`: a request succeeded.
    Ok {
        /// The command answered.
        command: Command,
        /// The rest of the line (section 7.2 of the spec), possibly empty.
        detail: String,
    },
    /// `ERR <command|-> <code> <text>`: a request failed (`command` is `None` for `-`).
    Err {
        /// The command answered; `None` for a line that was no command.
        command: Option<Command>,
        /// What went wrong, for programs.
        code: ErrorCode,
        /// What went wrong, for people.
        text: String,
    },
    /// `PONG [token]`: answer to `PING`.
    Pong {
        /// The `PING`'s token.
        token: String,
    },
    /// `FROM <user> <payload>`: a private payload routed from `user`.
    From {
        /// The sender: the authenticated user of the sending connection.
        user: String,
        /// The payload, as the sender wrote it.
        payload: String,
    },
    /// `ROOM <user> <text>`: a public room message from `user`.
    Room {
        /// The sender: the authenticated user of the sending connection.
        user: String,
        /// The message.
        text: String,
    },
    /// `HISTORY <time> <user> <text>`: a room line `user` sent before this client logged
    /// in, replayed at login (only to a client that asked with the `HISTORY` request).
    History {
        /// When the server relayed it: seconds since the Unix epoch, UTC.
        time: u64,
        /// The sender: the authenticated user of the connection that sent it.
        user: String,
        /// The message.
        text: String,
    },
    /// `OFFLINE <user>`: a user you exchanged private messages with left (or logged in
    /// again elsewhere): any end-to-end session with them is over.
    Offline {
        /// Who left.
        user: String,
    },
    /// `SKIPPED <n>`: `n` room lines were not sent to this client because it was reading
    /// more slowly than the room was talking; the room lines after this one follow on.
    /// Private messages and replies are never skipped.
    Skipped {
        /// How many room lines were left out, just before this line.
        count: u64,
    },
    /// `PREKEYS <n>`: the user has `n` one-time prekeys left on the server (sent at login
    /// and when a fetch leaves fewer than the refill mark); the client tops them up.
    Prekeys {
        /// One-time prekeys left.
        count: u32,
    },
    /// `BUNDLE <user> <b64 record> <id>:<b64 key>|-`: the answer to a `BUNDLE` request.
    Bundle {
        /// Whose prekeys.
        user: String,
        /// Their signed-prekey record, base64, as they stored it.
        record: String,
        /// One of their one-time prekeys, handed out to no one else; `None` (`-`) when they
        /// have run out.
        one_time: Option<OneTimePrekey>,
    },
    /// `MAIL <id> <sender> <time> <payload>`: a stored message. Sent again (same id) at every
    /// login until acknowledged with `ACK <id>`, so clients de-duplicate by id.
    Mail {
        /// The server's message id: unique, increasing.
        id: u64,
        /// The authenticated user who sent it.
        sender: String,
        /// When the server queued it: seconds since the Unix epoch, UTC.
        time: u64,
        /// The payload, as the sender wrote it.
        payload: String,
    },
    /// `STATUS <ref> <state> <user> [<detail>]`: what happened to a message this client sent
    /// with `SEND`.
    Status {
        /// The sender's reference from the `SEND`.
        reference: String,
        /// What happened (with its detail: the id of a queued message, the reason for a refusal).
        state: DeliveryState,
        /// The recipient.
        user: String,
    },
    /// `BYE <reason>`: the server is closing this connection.
    Bye {
        /// Why, for people.
        reason: String,
    },
}

impl ServerLine {
    /// Parses one frame from the server. Unknown verbs are an error the client reports.
    pub fn parse(line: &str) -> Result<ServerLine, BadServerLine> {
        let (verb, rest) = split_word(line);
        let owned = |s: &str| s.to_owned();
        let parsed = match verb {
            "HELLO" => {
                let (name, rest) = split_word(rest);
                if name != "securechat" {
                    return Err(BadServerLine::new(line, "not a securechat server"));
                }
                let mut words = rest.split_whitespace();
                let version = words.next().and_then(|v| v.parse().ok()).ok_or_else(|| {
                    BadServerLine::new(line, "bad protocol version in the greeting")
                })?;
                let limits = AnnouncedLimits::parse(words.clone()).map_err(|_| {
                    BadServerLine::new(line, "a limit in the greeting is not a number")
                })?;
                let name = announced_name(words).map_err(|_| {
                    BadServerLine::new(
                        line,
                        "the server name in the greeting is not a canonical server name",
                    )
                })?;
                ServerLine::Hello {
                    version,
                    limits,
                    name,
                }
            }
            "OK" => {
                let (command, detail) = split_word(rest);
                let command = Command::from_verb(command)
                    .ok_or_else(|| BadServerLine::new(line, "OK for an unknown command"))?;
                ServerLine::Ok {
                    command,
                    detail: owned(detail),
                }
            }
            "ERR" => {
                let (command, rest) = split_word(rest);
                let (code, text) = split_word(rest);
                let command =
                    match command {
                        "-" => None,
                        verb => Some(Command::from_verb(verb).ok_or_else(|| {
                            BadServerLine::new(line, "ERR for an unknown command")
                        })?),
                    };
                let code = ErrorCode::from_wire(code)
                    .ok_or_else(|| BadServerLine::new(line, "ERR with an unknown code"))?;
                ServerLine::Err {
                    command,
                    code,
                    text: owned(text),
                }
            }
            "PONG" => ServerLine::Pong { token: owned(rest) },
            "FROM" | "ROOM" => {
                let (user, body) = split_word(rest);
                if user.is_empty() {
                    return Err(BadServerLine::new(line, "a message without a sender"));
                }
                if verb == "FROM" {
                    ServerLine::From {
                        user: owned(user),
                        payload: owned(body),
                    }
                } else {
                    ServerLine::Room {
                        user: owned(user),
                        text: owned(body),
                    }
                }
            }
            "HISTORY" => {
                let (time, rest) = split_word(rest);
                let time = time
                    .parse()
                    .map_err(|_| BadServerLine::new(line, "HISTORY without a time"))?;
                let (user, text) = split_word(rest);
                if user.is_empty() {
                    return Err(BadServerLine::new(line, "a message without a sender"));
                }
                ServerLine::History {
                    time,
                    user: owned(user),
                    text: owned(text),
                }
            }
            "OFFLINE" => ServerLine::Offline { user: owned(rest) },
            "SKIPPED" => ServerLine::Skipped {
                count: rest
                    .parse()
                    .map_err(|_| BadServerLine::new(line, "SKIPPED without a count"))?,
            },
            "BYE" => ServerLine::Bye {
                reason: owned(rest),
            },
            "PREKEYS" => ServerLine::Prekeys {
                count: rest
                    .parse()
                    .map_err(|_| BadServerLine::new(line, "PREKEYS without a count"))?,
            },
            "BUNDLE" => {
                let mut words = rest.split(' ');
                let (Some(user), Some(record), Some(one_time), None) =
                    (words.next(), words.next(), words.next(), words.next())
                else {
                    return Err(BadServerLine::new(
                        line,
                        "BUNDLE is not <user> <record> <opk>",
                    ));
                };
                if user.is_empty() || record.is_empty() {
                    return Err(BadServerLine::new(line, "BUNDLE without a user or record"));
                }
                let one_time = OneTimePrekey::from_word(one_time)
                    .map_err(|problem| BadServerLine::new(line, problem))?;
                ServerLine::Bundle {
                    user: owned(user),
                    record: owned(record),
                    one_time,
                }
            }
            "MAIL" => {
                let (id, rest) = split_word(rest);
                let (sender, rest) = split_word(rest);
                let (time, payload) = split_word(rest);
                let id = id
                    .parse()
                    .map_err(|_| BadServerLine::new(line, "MAIL without an id"))?;
                if sender.is_empty() {
                    return Err(BadServerLine::new(line, "a message without a sender"));
                }
                let time = time
                    .parse()
                    .map_err(|_| BadServerLine::new(line, "MAIL without a time"))?;
                ServerLine::Mail {
                    id,
                    sender: owned(sender),
                    time,
                    payload: owned(payload),
                }
            }
            "STATUS" => {
                let mut words = rest.split(' ');
                let (Some(reference), Some(state), Some(user)) =
                    (words.next(), words.next(), words.next())
                else {
                    return Err(BadServerLine::new(
                        line,
                        "STATUS is not <ref> <state> <user>",
                    ));
                };
                if reference.is_empty() || user.is_empty() {
                    return Err(BadServerLine::new(line, "STATUS without a ref or user"));
                }
                let detail = words.next();
                if words.next().is_some() {
                    return Err(BadServerLine::new(line, "STATUS with more than one detail"));
                }
                let state = match (state, detail) {
                    ("queued", Some(id)) => DeliveryState::Queued {
                        id: id
                            .parse()
                            .map_err(|_| BadServerLine::new(line, "STATUS queued without an id"))?,
                    },
                    // A detail the spec does not define for these states is ignored.
                    ("delivered", _) => DeliveryState::Delivered,
                    ("expired", _) => DeliveryState::Expired,
                    ("unreadable", _) => DeliveryState::Unreadable,
                    ("refused", Some(reason)) => {
                        DeliveryState::Refused(Refusal::from_wire(reason).ok_or_else(|| {
                            BadServerLine::new(line, "STATUS refused for an unknown reason")
                        })?)
                    }
                    _ => return Err(BadServerLine::new(line, "STATUS with an unknown state")),
                };
                ServerLine::Status {
                    reference: owned(reference),
                    state,
                    user: owned(user),
                }
            }
            _ => return Err(BadServerLine::new(line, "not a server frame")),
        };
        Ok(parsed)
    }
}

impl ServerLine {
    /// The frame for this line, with its line ending: the only place server frames are
    /// written (the router's hot paths use [`write_from`], [`write_room`] and
    /// [`write_history`], which this calls too).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            ServerLine::Hello {
                version,
                limits,
                name,
            } => {
                let _ = write!(out, "HELLO securechat {version}");
                if let Some(l) = limits {
                    let _ = write!(
                        out,
                        " max-frame={} rate={} burst={}",
                        l.max_frame, l.rate, l.burst
                    );
                }
                if let Some(name) = name {
                    let _ = write!(out, " name={name}");
                }
                out.push(b'\n');
            }
            ServerLine::Ok { command, detail } => {
                write_words(&mut out, &["OK", command.verb(), detail]);
            }
            ServerLine::Err {
                command,
                code,
                text,
            } => {
                let command = command.map_or("-", Command::verb);
                write_words(&mut out, &["ERR", command, code.as_str(), text]);
            }
            ServerLine::Pong { token } => write_words(&mut out, &["PONG", token]),
            ServerLine::From { user, payload } => write_from(&mut out, user, payload),
            ServerLine::Room { user, text } => write_room(&mut out, user, text),
            ServerLine::History { time, user, text } => write_history(&mut out, *time, user, text),
            ServerLine::Offline { user } => write_words(&mut out, &["OFFLINE", user]),
            ServerLine::Skipped { count } => {
                let _ = writeln!(out, "SKIPPED {count}");
            }
            ServerLine::Bye { reason } => write_words(&mut out, &["BYE", reason]),
            ServerLine::Prekeys { count } => {
                let _ = writeln!(out, "PREKEYS {count}");
            }
            ServerLine::Bundle {
                user,
                record,
                one_time,
            } => {
                let one_time = OneTimePrekey::word(one_time.as_ref());
                write_words(&mut out, &["BUNDLE", user, record, &one_time]);
            }
            ServerLine::Mail {
                id,
                sender,
                time,
                payload,
            } => write_mail(&mut out, *id, sender, *time, payload),
            ServerLine::Status {
                reference,
                state,
                user,
            } => {
                let (state, detail) = match state {
                    DeliveryState::Queued { id } => ("queued", id.to_string()),
                    DeliveryState::Delivered => ("delivered", String::new()),
                    DeliveryState::Expired => ("expired", String::new()),
                    DeliveryState::Unreadable => ("unreadable", String::new()),
                    DeliveryState::Refused(reason) => ("refused", reason.as_str().to_owned()),
                };
                write_words(&mut out, &["STATUS", reference, state, user, &detail]);
            }
        }
        out
    }
}

/// Appends `words` separated by single spaces, leaving out empty trailing ones (`PONG`,
/// `OK SETKEY`), then the line ending.
fn write_words(out: &mut Vec<u8>, words: &[&str]) {
    let used = words
        .iter()
        .rposition(|w| !w.is_empty())
        .map_or(0, |i| i + 1);
    for (i, word) in words[..used].iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(word.as_bytes());
    }
    out.push(b'\n');
}

/// Appends `FROM <user> <payload>\n`: a private payload from `user`.
pub fn write_from(out: &mut Vec<u8>, user: &str, payload: &str) {
    out.reserve("FROM ".len() + user.len() + payload.len() + 2);
    write_words(out, &["FROM", user, payload]);
}

/// Appends `ROOM <user> <text>\n`: a room line from `user`.
pub fn write_room(out: &mut Vec<u8>, user: &str, text: &str) {
    out.reserve("ROOM ".len() + user.len() + text.len() + 2);
    write_words(out, &["ROOM", user, text]);
}

/// Appends `HISTORY <time> <user> <text>\n`: a room line from `user`, relayed at `time`
/// (Unix seconds), replayed at login.
pub fn write_history(out: &mut Vec<u8>, time: u64, user: &str, text: &str) {
    let time = time.to_string();
    out.reserve("HISTORY ".len() + time.len() + user.len() + text.len() + 3);
    write_words(out, &["HISTORY", &time, user, text]);
}

/// Appends `MAIL <id> <sender> <time> <payload>\n`: a stored message for this client.
pub fn write_mail(out: &mut Vec<u8>, id: u64, sender: &str, time: u64, payload: &str) {
    let (id, time) = (id.to_string(), time.to_string());
    out.reserve("MAIL ".len() + id.len() + sender.len() + time.len() + payload.len() + 4);
    write_words(out, &["MAIL", &id, sender, &time, payload]);
}

/// A line from the server that this client cannot read: what is wrong, and the start of
/// the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadServerLine {
    /// What is wrong with it.
    pub problem: &'static str,
    /// Its first 80 bytes, for the report.
    pub line: String,
}

impl BadServerLine {
    fn new(line: &str, problem: &'static str) -> BadServerLine {
        BadServerLine {
            problem,
            line: truncate(line, 80).to_owned(),
        }
    }
}

impl fmt::Display for BadServerLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}", self.problem, self.line)
    }
}

impl std::error::Error for BadServerLine {}

/// The limits a server announces in its greeting, so that a client can stay inside them
/// instead of learning them from `too-long` and `rate-limited` errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnouncedLimits {
    /// Largest frame the server accepts, in bytes (`max-frame=`).
    pub max_frame: usize,
    /// Frames per second a client may send on average, 0 for no limit (`rate=`).
    pub rate: u32,
    /// Frames a client may send at once above the average (`burst=`).
    pub burst: u32,
}

impl AnnouncedLimits {
    /// What a server that announces nothing (an older one) is taken to enforce: this
    /// crate's own server defaults, which are built from these values.
    pub const DEFAULT: AnnouncedLimits = AnnouncedLimits {
        max_frame: 16 * 1024,
        rate: 20,
        burst: 100,
    };

    /// Reads the `key=value` words after the version. Words it does not know are ignored
    /// (a newer server may announce more); a known key with a value that is not a number
    /// is an error, returned as the offending word. `None` unless all three are present.
    fn parse<'a>(words: impl Iterator<Item = &'a str>) -> Result<Option<AnnouncedLimits>, &'a str> {
        let (mut max_frame, mut rate, mut burst) = (None, None, None);
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "max-frame" => max_frame = Some(value.parse().map_err(|_| word)?),
                "rate" => rate = Some(value.parse().map_err(|_| word)?),
                "burst" => burst = Some(value.parse().map_err(|_| word)?),
                _ => {}
            }
        }
        Ok(match (max_frame, rate, burst) {
            (Some(max_frame), Some(rate), Some(burst)) => Some(AnnouncedLimits {
                max_frame,
                rate,
                burst,
            }),
            _ => None,
        })
    }
}

/// Reads the `name=` word among the greeting's `key=value` words: `None` when there is none
/// (a server that does not federate, or an older one), the name when it is a canonical
/// server name, and an error (the offending word) otherwise: a name in another spelling
/// would make the client bind other names than its peers do, so it is refused, not fixed.
/// Older clients ignore the word (they skip keys they do not know, see
/// [`AnnouncedLimits::parse`]), so announcing it breaks none of them.
fn announced_name<'a>(
    mut words: impl Iterator<Item = &'a str>,
) -> Result<Option<ServerName>, &'a str> {
    let Some(word) = words.find(|word| word.starts_with("name=")) else {
        return Ok(None);
    };
    let value = &word["name=".len()..];
    if !is_canonical_server_name(value) {
        return Err(word);
    }
    ServerName::parse(value).map(Some).map_err(|_| word)
}

/// Splits off the first space-separated word. The rest starts after exactly one space, so
/// a password or a message keeps any further spaces it has.
pub fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(' ') {
        Some((word, rest)) => (word, rest),
        None => (s, ""),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary, for quoting input in errors.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_request() {
        assert_eq!(
            Request::parse("LOGIN alice Secret pass 1"),
            Ok(Request::Login {
                user: "alice",
                password: "Secret pass 1"
            })
        );
        assert_eq!(
            Request::parse("register bob Pw12345678"),
            Ok(Request::Register {
                user: "bob",
                password: "Pw12345678"
            })
        );
        assert_eq!(Request::parse("QUIT"), Ok(Request::Quit));
        assert_eq!(Request::parse("PING"), Ok(Request::Ping { token: "" }));
        assert_eq!(Request::parse("PING 42"), Ok(Request::Ping { token: "42" }));
        assert_eq!(Request::parse("LIST"), Ok(Request::List { server: None }));
        assert_eq!(
            Request::parse("LIST b.test"),
            Ok(Request::List {
                server: Some("b.test")
            })
        );
        assert_eq!(
            Request::parse("LIST b.test c.test").map_err(|e| e.code),
            Err(ErrorCode::BadFrame),
            "one server at most"
        );
        assert_eq!(
            Request::parse("SAY hello  world"),
            Ok(Request::Say {
                text: "hello  world"
            })
        );
        assert_eq!(
            Request::parse("MSG bob E2E abc def"),
            Ok(Request::Msg {
                to: "bob",
                payload: "E2E abc def"
            })
        );
        assert_eq!(
            Request::parse("SETKEY AAAA"),
            Ok(Request::SetKey { key: "AAAA" })
        );
        assert_eq!(
            Request::parse("GETKEY bob"),
            Ok(Request::GetKey { user: "bob" })
        );
        assert_eq!(Request::parse("history"), Ok(Request::History));
        assert_eq!(Request::parse("MAILBOX"), Ok(Request::Mailbox));
        assert_eq!(
            Request::parse("SETPREKEY cmVj"),
            Ok(Request::SetPrekey { record: "cmVj" })
        );
        let Ok(Request::AddPrekeys { prekeys }) = Request::parse("ADDPREKEYS 1:AAA= 7:BBB=") else {
            panic!("ADDPREKEYS did not parse");
        };
        assert_eq!(
            prekeys.iter().collect::<Vec<_>>(),
            [(1, "AAA="), (7, "BBB=")]
        );
        assert_eq!(
            Request::parse("BUNDLE bob"),
            Ok(Request::Bundle { user: "bob" })
        );
        assert_eq!(
            Request::parse("SEND bob r-1_x RATCHET a b"),
            Ok(Request::Send {
                to: "bob",
                reference: "r-1_x",
                payload: "RATCHET a b"
            })
        );
        assert_eq!(
            Request::parse("ACK 42"),
            Ok(Request::Ack {
                id: 42,
                unreadable: false
            })
        );
        assert_eq!(
            Request::parse("ACK 42 unreadable"),
            Ok(Request::Ack {
                id: 42,
                unreadable: true
            })
        );
        assert!(Request::parse("ACK 42 unread").is_err());
        assert_eq!(
            Request::parse("ACKSTATUS r1"),
            Ok(Request::AckStatus { reference: "r1" })
        );
    }

    #[test]
    fn mailbox_requests_refuse_what_the_spec_does_not_allow() {
        for line in [
            "SEND bob",
            "SEND bob r1",
            "SEND bob r.1 x",
            "SEND bob 012345678901234567890123456789012 x",
            "ACK x",
            "ACK -1",
            "ACK",
            "ACKSTATUS a/b",
            "ACKSTATUS",
            "ADDPREKEYS",
            "ADDPREKEYS 1:",
            "ADDPREKEYS x:AAA",
            "ADDPREKEYS 1:AAA  2:BBB",
            "ADDPREKEYS 4294967296:AAA",
            "BUNDLE a b",
            "SETPREKEY",
        ] {
            let err = Request::parse(line).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadFrame, "{line}");
            assert!(!err.message.is_empty());
        }
        let items = PrekeyList::join([(3, "QQ=="), (4, "Rg==")]);
        assert_eq!(items, "3:QQ== 4:Rg==");
        assert_eq!(PrekeyList::parse(&items).map(|p| p.iter().count()), Ok(2));
    }

    #[test]
    fn mailbox_server_lines_parse_and_encode() {
        let cases = [
            ("PREKEYS 34", ServerLine::Prekeys { count: 34 }),
            (
                "BUNDLE bob UkVD 7:T1BL",
                ServerLine::Bundle {
                    user: "bob".into(),
                    record: "UkVD".into(),
                    one_time: Some(OneTimePrekey {
                        id: 7,
                        key: "T1BL".into(),
                    }),
                },
            ),
            (
                "BUNDLE bob UkVD -",
                ServerLine::Bundle {
                    user: "bob".into(),
                    record: "UkVD".into(),
                    one_time: None,
                },
            ),
            (
                "MAIL 12 alice 1700000000 X3DH abc  def",
                ServerLine::Mail {
                    id: 12,
                    sender: "alice".into(),
                    time: 1_700_000_000,
                    payload: "X3DH abc  def".into(),
                },
            ),
            (
                "STATUS r1 queued bob 12",
                ServerLine::Status {
                    reference: "r1".into(),
                    state: DeliveryState::Queued { id: 12 },
                    user: "bob".into(),
                },
            ),
            (
                "STATUS r1 delivered bob",
                ServerLine::Status {
                    reference: "r1".into(),
                    state: DeliveryState::Delivered,
                    user: "bob".into(),
                },
            ),
            (
                "STATUS r1 expired bob",
                ServerLine::Status {
                    reference: "r1".into(),
                    state: DeliveryState::Expired,
                    user: "bob".into(),
                },
            ),
            (
                "STATUS r1 refused bob quota",
                ServerLine::Status {
                    reference: "r1".into(),
                    state: DeliveryState::Refused(Refusal::Quota),
                    user: "bob".into(),
                },
            ),
            (
                "STATUS r1 refused bob self",
                ServerLine::Status {
                    reference: "r1".into(),
                    state: DeliveryState::Refused(Refusal::ToSelf),
                    user: "bob".into(),
                },
            ),
        ];
        for (text, line) in cases {
            assert_eq!(ServerLine::parse(text), Ok(line.clone()), "{text}");
            assert_eq!(line.encode(), format!("{text}\n").into_bytes());
        }
        for bad in [
            "PREKEYS",
            "PREKEYS -1",
            "BUNDLE bob UkVD",
            "BUNDLE bob UkVD 7",
            "BUNDLE bob UkVD - extra",
            "MAIL x alice 1 p",
            "MAIL 1 alice soon p",
            "STATUS r1 queued bob",
            "STATUS r1 queued bob x",
            "STATUS r1 refused bob tired",
            "STATUS r1 lost bob",
            "STATUS r1",
        ] {
            assert!(ServerLine::parse(bad).is_err(), "{bad}");
        }
        let limits = MailboxLimits {
            ttl_seconds: 1_209_600,
            max_messages: 1000,
            max_bytes: 4 << 20,
        };
        assert_eq!(
            limits.reply().encode(),
            b"OK MAILBOX 1209600 1000 4194304\n"
        );
        assert_eq!(
            MailboxLimits::from_detail("1209600 1000 4194304"),
            Some(limits)
        );
        assert_eq!(MailboxLimits::from_detail("1 2"), None);
        assert_eq!(MailboxLimits::from_detail("1 2 3 4"), None);
    }

    #[test]
    fn requests_round_trip_through_display() {
        for line in [
            "REGISTER alice Pw 1 x",
            "LOGIN alice pw",
            "QUIT",
            "PING",
            "PING t",
            "LIST",
            "LIST b.test",
            "SAY hi there",
            "MSG bob payload with spaces",
            "SETKEY k",
            "GETKEY bob",
            "HISTORY",
            "MAILBOX",
            "SETPREKEY cmVj",
            "ADDPREKEYS 1:AAA= 2:BBB=",
            "BUNDLE bob",
            "SEND bob r1 X3DH a b",
            "ACK 9",
            "ACKSTATUS r1",
        ] {
            assert_eq!(Request::parse(line).unwrap().to_string(), line);
        }
    }

    #[test]
    fn missing_fields_are_errors_that_say_what_is_missing() {
        let err = Request::parse("LOGIN alice").unwrap_err();
        assert_eq!(err.code, ErrorCode::BadFrame);
        assert!(err.message.contains("password is missing"), "{err}");
        let err = Request::parse("LOGIN alice ").unwrap_err();
        assert!(err.message.contains("password is missing"), "{err}");
        let err = Request::parse("LOGIN").unwrap_err();
        assert!(err.message.contains("user name is missing"), "{err}");
        let err = Request::parse("MSG bob").unwrap_err();
        assert!(err.message.contains("payload is missing"), "{err}");
        let err = Request::parse("SAY    ").unwrap_err();
        assert!(err.message.contains("text is missing"), "{err}");
        assert_eq!(
            Request::parse("SETKEY a b").unwrap_err().code,
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn unknown_verbs_are_named_in_the_error() {
        let err = Request::parse("GET / HTTP/1.1").unwrap_err();
        assert_eq!(err.command, None);
        assert_eq!(err.code, ErrorCode::UnknownCommand);
        assert_eq!(
            String::from_utf8(ServerLine::from(err).encode())
                .unwrap()
                .split(' ')
                .take(3)
                .collect::<Vec<_>>(),
            ["ERR", "-", "unknown-command"]
        );
    }

    #[test]
    fn parses_server_lines() {
        let limits = AnnouncedLimits {
            max_frame: 16384,
            rate: 20,
            burst: 100,
        };
        let hello = ServerLine::Hello {
            version: PROTOCOL_VERSION,
            limits: Some(limits),
            name: None,
        };
        assert_eq!(
            hello.encode(),
            b"HELLO securechat 1 max-frame=16384 rate=20 burst=100\n"
        );
        assert_eq!(
            ServerLine::parse(std::str::from_utf8(&hello.encode()).unwrap().trim_end()),
            Ok(hello)
        );
        assert_eq!(
            ServerLine::parse("ERR MSG offline bob bob is not online"),
            Ok(ServerLine::Err {
                command: Some(Command::Msg),
                code: ErrorCode::Offline,
                text: "bob bob is not online".into()
            })
        );
        assert_eq!(
            ServerLine::parse("FROM alice E2E x y"),
            Ok(ServerLine::From {
                user: "alice".into(),
                payload: "E2E x y".into()
            })
        );
        assert_eq!(
            ServerLine::parse("HISTORY 1700000000 alice hi  there"),
            Ok(ServerLine::History {
                time: 1_700_000_000,
                user: "alice".into(),
                text: "hi  there".into()
            })
        );
        assert!(ServerLine::parse("HISTORY soon alice hi").is_err());
        assert!(ServerLine::parse("HISTORY 1700000000").is_err());
        assert!(ServerLine::parse("HELLO ircd 1").is_err());
        assert!(ServerLine::parse("WHAT").is_err());
        assert!(ServerLine::parse("FROM").is_err());
    }

    #[test]
    fn greetings_without_limits_or_with_unknown_words_still_parse() {
        // An older server announces nothing.
        assert_eq!(
            ServerLine::parse("HELLO securechat 1"),
            Ok(ServerLine::Hello {
                version: 1,
                limits: None,
                name: None
            })
        );
        // Words a client does not know are ignored, wherever they stand.
        assert_eq!(
            ServerLine::parse("HELLO securechat 1 colour=blue max-frame=100 rate=0 burst=5 x"),
            Ok(ServerLine::Hello {
                version: 1,
                limits: Some(AnnouncedLimits {
                    max_frame: 100,
                    rate: 0,
                    burst: 5
                }),
                name: None
            })
        );
        // A partial announcement is no announcement.
        assert_eq!(
            ServerLine::parse("HELLO securechat 1 max-frame=100"),
            Ok(ServerLine::Hello {
                version: 1,
                limits: None,
                name: None
            })
        );
        // A known key with a value that is not a number is refused, not guessed at.
        assert!(ServerLine::parse("HELLO securechat 1 max-frame=big rate=1 burst=1").is_err());
    }

    #[test]
    fn a_federating_server_announces_its_name_in_canonical_spelling_only() {
        let a_test = ServerName::parse("a.test").unwrap();
        let hello = ServerLine::Hello {
            version: PROTOCOL_VERSION,
            limits: Some(AnnouncedLimits::DEFAULT),
            name: Some(a_test.clone()),
        };
        assert_eq!(
            hello.encode(),
            b"HELLO securechat 1 max-frame=16384 rate=20 burst=100 name=a.test\n"
        );
        assert_eq!(
            ServerLine::parse("HELLO securechat 1 max-frame=16384 rate=20 burst=100 name=a.test"),
            Ok(hello)
        );
        // Wherever it stands, and without limits.
        assert_eq!(
            ServerLine::parse("HELLO securechat 1 name=a.test"),
            Ok(ServerLine::Hello {
                version: 1,
                limits: None,
                name: Some(a_test)
            })
        );
        // A server that does not federate announces none.
        assert!(matches!(
            ServerLine::parse("HELLO securechat 1 max-frame=16384 rate=20 burst=100"),
            Ok(ServerLine::Hello { name: None, .. })
        ));
        // Another spelling, an address, an empty or odd name: refused, never fixed up.
        for bad in [
            "name=A.test",
            "name=127.0.0.1",
            "name=",
            "name=a..test",
            "name=bob@a.test",
            "name=-a.test",
        ] {
            let line = format!("HELLO securechat 1 max-frame=16384 rate=20 burst=100 {bad}");
            assert!(ServerLine::parse(&line).is_err(), "{line:?} accepted");
        }
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
