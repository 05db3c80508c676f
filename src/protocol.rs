//! The commands of the wire protocol, in both directions, shared by server and client.
//!
//! A frame is one line (see [`crate::frame`]); this module gives each line a meaning.
//! Client requests are [`Request`]s; everything the server sends is a [`ServerLine`].
//! Parsing borrows from the line and never allocates, so the server's hot path (a `MSG`)
//! costs one scan of the line. `report/protocol.md` is the normative description; the two
//! must change together.

use std::fmt::{self, Write as _};

/// Protocol version announced in the greeting. A client refuses a server with another one.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// `REGISTER <user> <password>`: create an account. Allowed before login only.
    Register { user: &'a str, password: &'a str },
    /// `LOGIN <user> <password>`: authenticate. Allowed before login only.
    Login { user: &'a str, password: &'a str },
    /// `QUIT`: leave. Allowed in every state.
    Quit,
    /// `PING [token]`: liveness check, answered with `PONG [token]`. Allowed in every state.
    Ping { token: &'a str },
    /// `LIST`: who is online.
    List,
    /// `SAY <text>`: a message to the public room (protected by TLS only).
    Say { text: &'a str },
    /// `MSG <user> <payload>`: route an opaque payload to one user.
    Msg { to: &'a str, payload: &'a str },
    /// `SETKEY <key>`: publish the caller's identity public key (base64).
    SetKey { key: &'a str },
    /// `GETKEY <user>`: fetch a user's identity public key.
    GetKey { user: &'a str },
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
                    "unknown command {:?}; expected one of REGISTER, LOGIN, QUIT, PING, LIST, SAY, MSG, SETKEY, GETKEY",
                    truncate(verb, 32)
                ),
            )
        })?;
        let missing = |what: &str| {
            ProtocolError::new(
                command,
                ErrorCode::BadFrame,
                format!("usage: {}; {what} is missing", command.usage()),
            )
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
            Command::List => Request::List,
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
            Command::SetKey => {
                let (key, extra) = split_word(rest);
                if key.is_empty() {
                    return Err(missing("the key"));
                }
                if !extra.is_empty() {
                    return Err(ProtocolError::new(
                        command,
                        ErrorCode::BadFrame,
                        format!("usage: {}; unexpected text after the key", command.usage()),
                    ));
                }
                Request::SetKey { key }
            }
            Command::GetKey => {
                let (user, extra) = split_word(rest);
                if user.is_empty() {
                    return Err(missing("the user name"));
                }
                if !extra.is_empty() {
                    return Err(ProtocolError::new(
                        command,
                        ErrorCode::BadFrame,
                        format!(
                            "usage: {}; unexpected text after the user name",
                            command.usage()
                        ),
                    ));
                }
                Request::GetKey { user }
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
            Request::List => Command::List,
            Request::Say { .. } => Command::Say,
            Request::Msg { .. } => Command::Msg,
            Request::SetKey { .. } => Command::SetKey,
            Request::GetKey { .. } => Command::GetKey,
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
            Request::Quit | Request::List => f.write_str(verb),
            Request::Ping { token: "" } => f.write_str(verb),
            Request::Ping { token } => write!(f, "{verb} {token}"),
            Request::Say { text } => write!(f, "{verb} {text}"),
            Request::Msg { to, payload } => write!(f, "{verb} {to} {payload}"),
            Request::SetKey { key } => write!(f, "{verb} {key}"),
            Request::GetKey { user } => write!(f, "{verb} {user}"),
        }
    }
}

/// The request kinds, named as on the wire. Replies name the command they answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Register,
    Login,
    Quit,
    Ping,
    List,
    Say,
    Msg,
    SetKey,
    GetKey,
}

impl Command {
    const ALL: [Command; 9] = [
        Command::Register,
        Command::Login,
        Command::Quit,
        Command::Ping,
        Command::List,
        Command::Say,
        Command::Msg,
        Command::SetKey,
        Command::GetKey,
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
        }
    }

    /// One-line usage, quoted in errors.
    pub fn usage(self) -> &'static str {
        match self {
            Command::Register => "REGISTER <user> <password>",
            Command::Login => "LOGIN <user> <password>",
            Command::Quit => "QUIT",
            Command::Ping => "PING [token]",
            Command::List => "LIST",
            Command::Say => "SAY <text>",
            Command::Msg => "MSG <user> <payload>",
            Command::SetKey => "SETKEY <base64 identity key>",
            Command::GetKey => "GETKEY <user>",
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
}

impl ErrorCode {
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

    /// The `ERR` frame, with its line ending.
    pub fn to_line(&self) -> String {
        let mut line = String::with_capacity(16 + self.message.len());
        // Writing to a String cannot fail.
        let _ = writeln!(
            line,
            "ERR {} {} {}",
            self.command.map_or("-", Command::verb),
            self.code.as_str(),
            self.message
        );
        line
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
        version: u32,
        limits: Option<AnnouncedLimits>,
    },
    /// `OK <command> [detail]`: a request succeeded.
    Ok { command: String, detail: String },
    /// `ERR <command> <code> <text>`: a request failed.
    Err {
        command: String,
        code: String,
        text: String,
    },
    /// `PONG [token]`: answer to `PING`.
    Pong { token: String },
    /// `FROM <user> <payload>`: a private payload routed from `user`.
    From { user: String, payload: String },
    /// `ROOM <user> <text>`: a public room message from `user`.
    Room { user: String, text: String },
    /// `OFFLINE <user>`: a user you exchanged private messages with left (or logged in
    /// again elsewhere): any end-to-end session with them is over.
    Offline { user: String },
    /// `BYE <reason>`: the server is closing this connection.
    Bye { reason: String },
}

impl ServerLine {
    /// Parses one frame from the server. Unknown verbs are an error the client reports.
    pub fn parse(line: &str) -> Result<ServerLine, String> {
        let (verb, rest) = split_word(line);
        let owned = |s: &str| s.to_owned();
        let parsed = match verb {
            "HELLO" => {
                let (name, rest) = split_word(rest);
                if name != "securechat" {
                    return Err(format!("not a securechat server: {line:?}"));
                }
                let mut words = rest.split_whitespace();
                let version = words
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("bad protocol version in greeting {line:?}"))?;
                let limits = AnnouncedLimits::parse(words)
                    .map_err(|word| format!("bad limit {word:?} in greeting {line:?}"))?;
                ServerLine::Hello { version, limits }
            }
            "OK" => {
                let (command, detail) = split_word(rest);
                ServerLine::Ok {
                    command: owned(command),
                    detail: owned(detail),
                }
            }
            "ERR" => {
                let (command, rest) = split_word(rest);
                let (code, text) = split_word(rest);
                ServerLine::Err {
                    command: owned(command),
                    code: owned(code),
                    text: owned(text),
                }
            }
            "PONG" => ServerLine::Pong { token: owned(rest) },
            "FROM" | "ROOM" => {
                let (user, body) = split_word(rest);
                if user.is_empty() {
                    return Err(format!("{verb} without a sender: {line:?}"));
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
            "OFFLINE" => ServerLine::Offline { user: owned(rest) },
            "BYE" => ServerLine::Bye {
                reason: owned(rest),
            },
            _ => {
                return Err(format!(
                    "unexpected line from server: {:?}",
                    truncate(line, 80)
                ))
            }
        };
        Ok(parsed)
    }
}

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

/// The greeting line the server sends first, announcing its limits.
pub fn hello_line(limits: &AnnouncedLimits) -> String {
    format!(
        "HELLO securechat {PROTOCOL_VERSION} max-frame={} rate={} burst={}\n",
        limits.max_frame, limits.rate, limits.burst
    )
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
        assert_eq!(Request::parse("LIST"), Ok(Request::List));
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
            "SAY hi there",
            "MSG bob payload with spaces",
            "SETKEY k",
            "GETKEY bob",
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
            err.to_line().split(' ').take(3).collect::<Vec<_>>(),
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
        assert_eq!(
            hello_line(&limits),
            "HELLO securechat 1 max-frame=16384 rate=20 burst=100\n"
        );
        assert_eq!(
            ServerLine::parse(hello_line(&limits).trim_end()),
            Ok(ServerLine::Hello {
                version: PROTOCOL_VERSION,
                limits: Some(limits)
            })
        );
        assert_eq!(
            ServerLine::parse("ERR MSG offline bob bob is not online"),
            Ok(ServerLine::Err {
                command: "MSG".into(),
                code: "offline".into(),
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
                limits: None
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
                })
            })
        );
        // A partial announcement is no announcement.
        assert_eq!(
            ServerLine::parse("HELLO securechat 1 max-frame=100"),
            Ok(ServerLine::Hello {
                version: 1,
                limits: None
            })
        );
        // A known key with a value that is not a number is refused, not guessed at.
        assert!(ServerLine::parse("HELLO securechat 1 max-frame=big rate=1 burst=1").is_err());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
