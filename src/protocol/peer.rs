//! The server-to-server protocol: the frames two linked servers exchange, parsed and
//! written here and nowhere else (`report/protocol.md` §13 is the normative text).
//!
//! Each direction of a federation link is its own TLS connection, like XMPP's
//! server-to-server streams: the server that has something to send dials the other (the
//! *connector*) and sends [`PeerRequest`]s; the one that accepted (the *acceptor*)
//! answers each with a [`PeerReply`]. So a connection has one client and one server role,
//! and the acceptor never sends a request.
//!
//! Users in peer frames are always full addresses (`alice@a.test`): the acceptor checks
//! that every user a frame speaks *for* belongs to the server its certificate proved
//! (`invalid-from`, RFC 6120 §4.9.3.9's rule) and that every user it speaks *to* is one of
//! its own (no relaying for a third server). The checks live in the server; this module
//! only reads and writes the frames, with the same line rules as the client protocol (one
//! UTF-8 line, no control characters, a size limit).

use std::fmt;

use super::name::{Address, ServerName};
use super::{split_word, valid_reference, ErrorCode, OneTimePrekey, Refusal};

/// The server-to-server protocol version, the first word after `PEER`.
pub const PEER_PROTOCOL_VERSION: u32 = 1;

/// A frame from the connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRequest {
    /// `PEER <version> <name>`: the first frame: "I am server `name`". The acceptor checks
    /// the name against the client certificate and its peer list before anything else.
    Hello {
        /// The protocol version the connector speaks.
        version: u32,
        /// The server name it claims (checked against its certificate).
        name: ServerName,
    },
    /// `RELAY <id> <sender> <recipient> <ref> <payload>`: a message from one of the
    /// connector's users for one of the acceptor's, to queue for the recipient. Answered
    /// with `RACK <id> …` once stored (or refused for good); until then the connector keeps
    /// it and sends it again after a reconnect, and the acceptor stores a repeat once
    /// (same sender and reference).
    Relay {
        /// The connector's id for it in its queue for this peer.
        id: u64,
        /// Who sent it: a user of the connector.
        sender: Address,
        /// Who it is for: a user of the acceptor.
        recipient: Address,
        /// The sender's reference (as in `SEND`), the de-duplication key.
        reference: String,
        /// The end-to-end payload, opaque to both servers.
        payload: String,
    },
    /// `RECEIPT <id> <sender> <ref> <recipient> <state>`: what became of a message a user
    /// of the acceptor (`sender`) relayed to one of the connector's users (`recipient`).
    /// Answered with `RACK <id> ok` once stored.
    Receipt {
        /// The connector's receipt id.
        id: u64,
        /// The message's sender: a user of the acceptor.
        sender: Address,
        /// The sender's reference.
        reference: String,
        /// The message's recipient: a user of the connector.
        recipient: Address,
        /// `delivered`, `expired` or `unreadable` (a refusal is a `RACK`, not a receipt).
        state: ReceiptState,
    },
    /// `ROOM <sender> <text>`: a line one of the connector's users said in its public
    /// room. Not answered (room lines are not stored or acknowledged, as locally).
    Room {
        /// Who said it: a user of the connector.
        sender: Address,
        /// The line.
        text: String,
    },
    /// `GETKEY <qid> <user>`: the identity key of one of the acceptor's users.
    GetKey {
        /// The connector's query id, echoed in the answer.
        qid: u64,
        /// Whose key: a user of the acceptor.
        user: Address,
    },
    /// `BUNDLE <qid> <requester> <user>`: a prekey bundle of one of the acceptor's users,
    /// for `requester` (a user of the connector). Hands out a one-time prekey.
    Bundle {
        /// The query id.
        qid: u64,
        /// Who asks: a user of the connector.
        requester: Address,
        /// Whose bundle: a user of the acceptor.
        user: Address,
    },
    /// `LIST <qid>`: who is online on the acceptor (answered only if it shares presence).
    List {
        /// The query id.
        qid: u64,
    },
    /// `PING <token>`: liveness, answered with `PONG <token>`.
    Ping {
        /// Echoed.
        token: String,
    },
}

/// The final states a `RECEIPT` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptState {
    /// The recipient's client acknowledged it.
    Delivered,
    /// It expired in the recipient's queue.
    Expired,
    /// The recipient's client could not open it.
    Unreadable,
}

impl ReceiptState {
    /// Every state.
    pub const ALL: [ReceiptState; 3] = [
        ReceiptState::Delivered,
        ReceiptState::Expired,
        ReceiptState::Unreadable,
    ];

    /// The state as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptState::Delivered => "delivered",
            ReceiptState::Expired => "expired",
            ReceiptState::Unreadable => "unreadable",
        }
    }

    fn from_wire(word: &str) -> Option<ReceiptState> {
        ReceiptState::ALL.into_iter().find(|s| s.as_str() == word)
    }
}

/// What a `RACK` says of a relayed message or receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOutcome {
    /// `queued`: stored durably for the recipient (or a receipt: stored for the sender),
    /// or already stored from an earlier copy. The connector may forget it.
    Stored,
    /// `refused <reason>`: not stored, and never will be (no such user, quota): the
    /// connector forgets it and tells the sender.
    Refused(Refusal),
}

/// A frame from the acceptor: every one answers a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerReply {
    /// `OK PEER <name> room=<on|off> list=<on|off>`: the link is up; the acceptor is
    /// `name` and says whether it takes room lines and answers `LIST`.
    Welcome {
        /// The acceptor's name.
        name: ServerName,
        /// It shows the connector's room lines to its users (and shares its own).
        room: bool,
        /// It answers `LIST`.
        list: bool,
    },
    /// `RACK <id> queued|refused <reason>`: a `RELAY` or `RECEIPT` was handled.
    Rack {
        /// The id from the request.
        id: u64,
        /// What became of it.
        outcome: RelayOutcome,
    },
    /// `KEY <qid> <b64 key>`: the answer to `GETKEY`.
    Key {
        /// The query id.
        qid: u64,
        /// The identity public key, base64.
        key: String,
    },
    /// `BUNDLE <qid> <b64 record> <id>:<b64 key>|-`: the answer to `BUNDLE`.
    Bundle {
        /// The query id.
        qid: u64,
        /// The signed-prekey record, base64.
        record: String,
        /// The one-time prekey handed out, if any was left (`<id>:<b64>` or `-` on the wire).
        one_time: Option<OneTimePrekey>,
    },
    /// `LIST <qid> <total> [<user> …]`: the answer to `LIST` (bare names of the
    /// acceptor's users).
    List {
        /// The query id.
        qid: u64,
        /// How many are online.
        total: u64,
        /// Names, at most a few hundred.
        names: Vec<String>,
    },
    /// `FAIL <qid> <code> <text>`: a query that has no answer (`no-such-user`, `no-key`,
    /// `no-prekeys`, `rate-limited`, `storage`, `unreachable`: the client protocol's codes).
    Fail {
        /// The query id.
        qid: u64,
        /// Why, for programs: a client protocol error code, passed on to the client.
        code: ErrorCode,
        /// Why, for people.
        text: String,
    },
    /// `PONG <token>`.
    Pong {
        /// The `PING`'s token.
        token: String,
    },
    /// `ERR <code> <text>`: the acceptor closes the link after this (`invalid-from`,
    /// `not-authorized`, `bad-frame`, `too-long`, `version`).
    Error {
        /// Why, for programs.
        code: LinkError,
        /// Why, for people.
        text: String,
    },
}

/// Why an acceptor ends a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// A frame spoke for a user of another server than the one the link authenticated.
    InvalidFrom,
    /// The certificate does not prove the claimed name, or the name is no configured peer.
    NotAuthorized,
    /// A frame that cannot be read, or one out of place.
    BadFrame,
    /// A frame over the size limit.
    TooLong,
    /// A protocol version this server does not speak.
    Version,
    /// The link was idle past its deadline.
    Timeout,
}

impl LinkError {
    /// Every code.
    pub const ALL: [LinkError; 6] = [
        LinkError::InvalidFrom,
        LinkError::NotAuthorized,
        LinkError::BadFrame,
        LinkError::TooLong,
        LinkError::Version,
        LinkError::Timeout,
    ];

    /// The code as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkError::InvalidFrom => "invalid-from",
            LinkError::NotAuthorized => "not-authorized",
            LinkError::BadFrame => "bad-frame",
            LinkError::TooLong => "too-long",
            LinkError::Version => "version",
            LinkError::Timeout => "timeout",
        }
    }

    fn from_wire(word: &str) -> Option<LinkError> {
        LinkError::ALL.into_iter().find(|c| c.as_str() == word)
    }
}

/// A peer frame that could not be read: what was wrong, for the log and the `ERR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPeerFrame(pub String);

impl fmt::Display for BadPeerFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadPeerFrame {}

fn bad(what: impl Into<String>) -> BadPeerFrame {
    BadPeerFrame(what.into())
}

/// Splits off one word that must be present.
fn word<'a>(rest: &'a str, what: &str) -> Result<(&'a str, &'a str), BadPeerFrame> {
    let (word, rest) = split_word(rest);
    if word.is_empty() {
        return Err(bad(format!("{what} is missing")));
    }
    Ok((word, rest))
}

fn number(word: &str, what: &str) -> Result<u64, BadPeerFrame> {
    word.parse()
        .map_err(|_| bad(format!("{what} is not a number")))
}

/// A full address: peer frames never carry a bare name.
fn full_address(word: &str, what: &str) -> Result<Address, BadPeerFrame> {
    match Address::parse(word) {
        Ok(address) if address.server.is_some() && address.to_string() == word => Ok(address),
        _ => Err(bad(format!(
            "{what} is not a canonical user@server address"
        ))),
    }
}

fn reference(word: &str) -> Result<String, BadPeerFrame> {
    if valid_reference(word) {
        Ok(word.to_owned())
    } else {
        Err(bad("the reference is not 1 to 32 of A-Z a-z 0-9 _ -"))
    }
}

/// Nothing may follow the last word.
fn end(rest: &str) -> Result<(), BadPeerFrame> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(bad("unexpected text at the end of the frame"))
    }
}

impl PeerRequest {
    /// Parses one frame (verbs are upper case: peers are programs).
    pub fn parse(line: &str) -> Result<PeerRequest, BadPeerFrame> {
        let (verb, rest) = split_word(line);
        let request = match verb {
            "PEER" => {
                let (version, rest) = word(rest, "the version")?;
                let (name, rest) = word(rest, "the server name")?;
                end(rest)?;
                PeerRequest::Hello {
                    version: number(version, "the version")? as u32,
                    name: ServerName::parse(name)
                        .ok()
                        .filter(|n| n.as_str() == name)
                        .ok_or_else(|| bad("the server name is not a canonical DNS name"))?,
                }
            }
            "RELAY" => {
                let (id, rest) = word(rest, "the id")?;
                let (sender, rest) = word(rest, "the sender")?;
                let (recipient, rest) = word(rest, "the recipient")?;
                let (reference_word, payload) = word(rest, "the reference")?;
                if payload.is_empty() {
                    return Err(bad("the payload is missing"));
                }
                PeerRequest::Relay {
                    id: number(id, "the id")?,
                    sender: full_address(sender, "the sender")?,
                    recipient: full_address(recipient, "the recipient")?,
                    reference: reference(reference_word)?,
                    payload: payload.to_owned(),
                }
            }
            "RECEIPT" => {
                let (id, rest) = word(rest, "the id")?;
                let (sender, rest) = word(rest, "the sender")?;
                let (reference_word, rest) = word(rest, "the reference")?;
                let (recipient, rest) = word(rest, "the recipient")?;
                let (state, rest) = word(rest, "the state")?;
                end(rest)?;
                PeerRequest::Receipt {
                    id: number(id, "the id")?,
                    sender: full_address(sender, "the sender")?,
                    reference: reference(reference_word)?,
                    recipient: full_address(recipient, "the recipient")?,
                    state: ReceiptState::from_wire(state)
                        .ok_or_else(|| bad("the state is not delivered, expired or unreadable"))?,
                }
            }
            "ROOM" => {
                let (sender, text) = word(rest, "the sender")?;
                if text.trim().is_empty() {
                    return Err(bad("the text is missing"));
                }
                PeerRequest::Room {
                    sender: full_address(sender, "the sender")?,
                    text: text.to_owned(),
                }
            }
            "GETKEY" => {
                let (qid, rest) = word(rest, "the query id")?;
                let (user, rest) = word(rest, "the user")?;
                end(rest)?;
                PeerRequest::GetKey {
                    qid: number(qid, "the query id")?,
                    user: full_address(user, "the user")?,
                }
            }
            "BUNDLE" => {
                let (qid, rest) = word(rest, "the query id")?;
                let (requester, rest) = word(rest, "the requester")?;
                let (user, rest) = word(rest, "the user")?;
                end(rest)?;
                PeerRequest::Bundle {
                    qid: number(qid, "the query id")?,
                    requester: full_address(requester, "the requester")?,
                    user: full_address(user, "the user")?,
                }
            }
            "LIST" => {
                let (qid, rest) = word(rest, "the query id")?;
                end(rest)?;
                PeerRequest::List {
                    qid: number(qid, "the query id")?,
                }
            }
            "PING" => PeerRequest::Ping {
                token: rest.to_owned(),
            },
            _ => return Err(bad("not a peer request")),
        };
        Ok(request)
    }

    /// The query id of a query (`GETKEY`, `BUNDLE`, `LIST`), for the connector to number
    /// it; `None` for other requests.
    pub fn query_id_mut(&mut self) -> Option<&mut u64> {
        match self {
            PeerRequest::GetKey { qid, .. }
            | PeerRequest::Bundle { qid, .. }
            | PeerRequest::List { qid } => Some(qid),
            _ => None,
        }
    }

    /// The users this frame speaks *for*: each must belong to the server the link
    /// authenticated (the acceptor ends the link with `invalid-from` otherwise).
    pub fn speaks_for(&self) -> Option<&Address> {
        match self {
            PeerRequest::Relay { sender, .. }
            | PeerRequest::Room { sender, .. }
            | PeerRequest::Bundle {
                requester: sender, ..
            } => Some(sender),
            PeerRequest::Receipt { recipient, .. } => Some(recipient),
            _ => None,
        }
    }

    /// The user this frame is *about* or *for* on the acceptor: each must be one of the
    /// acceptor's own users (servers never relay for a third server).
    pub fn speaks_to(&self) -> Option<&Address> {
        match self {
            PeerRequest::Relay { recipient, .. } => Some(recipient),
            PeerRequest::Receipt { sender, .. } => Some(sender),
            PeerRequest::GetKey { user, .. } | PeerRequest::Bundle { user, .. } => Some(user),
            _ => None,
        }
    }
}

impl fmt::Display for PeerRequest {
    /// The frame, without its line ending: the one place peer requests are written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerRequest::Hello { version, name } => write!(f, "PEER {version} {name}"),
            PeerRequest::Relay {
                id,
                sender,
                recipient,
                reference,
                payload,
            } => write!(f, "RELAY {id} {sender} {recipient} {reference} {payload}"),
            PeerRequest::Receipt {
                id,
                sender,
                reference,
                recipient,
                state,
            } => write!(
                f,
                "RECEIPT {id} {sender} {reference} {recipient} {}",
                state.as_str()
            ),
            PeerRequest::Room { sender, text } => write!(f, "ROOM {sender} {text}"),
            PeerRequest::GetKey { qid, user } => write!(f, "GETKEY {qid} {user}"),
            PeerRequest::Bundle {
                qid,
                requester,
                user,
            } => write!(f, "BUNDLE {qid} {requester} {user}"),
            PeerRequest::List { qid } => write!(f, "LIST {qid}"),
            PeerRequest::Ping { token } if token.is_empty() => f.write_str("PING"),
            PeerRequest::Ping { token } => write!(f, "PING {token}"),
        }
    }
}

fn on_off(word: &str, key: &str) -> Result<bool, BadPeerFrame> {
    match word.strip_prefix(key).and_then(|w| w.strip_prefix('=')) {
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        _ => Err(bad(format!("expected {key}=on or {key}=off"))),
    }
}

fn on_off_word(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

impl PeerReply {
    /// The query id an answer is for (`KEY`, `BUNDLE`, `LIST`, `FAIL`); `None` for others.
    pub fn query_id(&self) -> Option<u64> {
        match self {
            PeerReply::Key { qid, .. }
            | PeerReply::Bundle { qid, .. }
            | PeerReply::List { qid, .. }
            | PeerReply::Fail { qid, .. } => Some(*qid),
            _ => None,
        }
    }

    /// Parses one frame from the acceptor.
    pub fn parse(line: &str) -> Result<PeerReply, BadPeerFrame> {
        let (verb, rest) = split_word(line);
        let reply = match verb {
            "OK" => {
                let (what, rest) = word(rest, "PEER")?;
                if what != "PEER" {
                    return Err(bad("OK for something other than PEER"));
                }
                let (name, rest) = word(rest, "the server name")?;
                let (room, rest) = word(rest, "room=")?;
                let (list, rest) = word(rest, "list=")?;
                end(rest)?;
                PeerReply::Welcome {
                    name: ServerName::parse(name)
                        .ok()
                        .filter(|n| n.as_str() == name)
                        .ok_or_else(|| bad("the server name is not a canonical DNS name"))?,
                    room: on_off(room, "room")?,
                    list: on_off(list, "list")?,
                }
            }
            "RACK" => {
                let (id, rest) = word(rest, "the id")?;
                let (state, rest) = word(rest, "the outcome")?;
                let outcome = match state {
                    "queued" => {
                        end(rest)?;
                        RelayOutcome::Stored
                    }
                    "refused" => {
                        let (reason, rest) = word(rest, "the reason")?;
                        end(rest)?;
                        RelayOutcome::Refused(
                            Refusal::from_wire(reason)
                                .ok_or_else(|| bad("an unknown refusal reason"))?,
                        )
                    }
                    _ => return Err(bad("RACK is not queued or refused")),
                };
                PeerReply::Rack {
                    id: number(id, "the id")?,
                    outcome,
                }
            }
            "KEY" => {
                let (qid, rest) = word(rest, "the query id")?;
                let (key, rest) = word(rest, "the key")?;
                end(rest)?;
                PeerReply::Key {
                    qid: number(qid, "the query id")?,
                    key: key.to_owned(),
                }
            }
            "BUNDLE" => {
                let (qid, rest) = word(rest, "the query id")?;
                let (record, rest) = word(rest, "the record")?;
                let (one_time, rest) = word(rest, "the one-time prekey")?;
                end(rest)?;
                PeerReply::Bundle {
                    qid: number(qid, "the query id")?,
                    record: record.to_owned(),
                    one_time: OneTimePrekey::from_word(one_time).map_err(bad)?,
                }
            }
            "LIST" => {
                let (qid, rest) = word(rest, "the query id")?;
                let (total, rest) = word(rest, "the total")?;
                PeerReply::List {
                    qid: number(qid, "the query id")?,
                    total: number(total, "the total")?,
                    names: rest
                        .split(' ')
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect(),
                }
            }
            "FAIL" => {
                let (qid, rest) = word(rest, "the query id")?;
                let (code, text) = word(rest, "the code")?;
                PeerReply::Fail {
                    qid: number(qid, "the query id")?,
                    code: ErrorCode::from_wire(code).ok_or_else(|| bad("an unknown FAIL code"))?,
                    text: text.to_owned(),
                }
            }
            "PONG" => PeerReply::Pong {
                token: rest.to_owned(),
            },
            "ERR" => {
                let (code, text) = word(rest, "the code")?;
                PeerReply::Error {
                    code: LinkError::from_wire(code).ok_or_else(|| bad("an unknown ERR code"))?,
                    text: text.to_owned(),
                }
            }
            _ => return Err(bad("not a peer reply")),
        };
        Ok(reply)
    }
}

impl fmt::Display for PeerReply {
    /// The frame, without its line ending: the one place peer replies are written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerReply::Welcome { name, room, list } => write!(
                f,
                "OK PEER {name} room={} list={}",
                on_off_word(*room),
                on_off_word(*list)
            ),
            PeerReply::Rack {
                id,
                outcome: RelayOutcome::Stored,
            } => write!(f, "RACK {id} queued"),
            PeerReply::Rack {
                id,
                outcome: RelayOutcome::Refused(reason),
            } => write!(f, "RACK {id} refused {}", reason.as_str()),
            PeerReply::Key { qid, key } => write!(f, "KEY {qid} {key}"),
            PeerReply::Bundle {
                qid,
                record,
                one_time,
            } => write!(
                f,
                "BUNDLE {qid} {record} {}",
                OneTimePrekey::word(one_time.as_ref())
            ),
            PeerReply::List { qid, total, names } => {
                write!(f, "LIST {qid} {total}")?;
                for name in names {
                    write!(f, " {name}")?;
                }
                Ok(())
            }
            PeerReply::Fail { qid, code, text } => {
                write!(f, "FAIL {qid} {} {text}", code.as_str())
            }
            PeerReply::Pong { token } if token.is_empty() => f.write_str("PONG"),
            PeerReply::Pong { token } => write!(f, "PONG {token}"),
            PeerReply::Error { code, text } => write!(f, "ERR {} {text}", code.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> Address {
        Address::parse(text).unwrap()
    }

    #[test]
    fn every_frame_reads_back_as_written() {
        let requests = [
            PeerRequest::Hello {
                version: 1,
                name: ServerName::parse("a.test").unwrap(),
            },
            PeerRequest::Relay {
                id: 7,
                sender: address("alice@a.test"),
                recipient: address("bob@b.test"),
                reference: "r-1".into(),
                payload: "OFFLINE-1 abc def".into(),
            },
            PeerRequest::Receipt {
                id: 9,
                sender: address("alice@a.test"),
                reference: "r-1".into(),
                recipient: address("bob@b.test"),
                state: ReceiptState::Unreadable,
            },
            PeerRequest::Room {
                sender: address("alice@a.test"),
                text: "hello  there".into(),
            },
            PeerRequest::GetKey {
                qid: 1,
                user: address("bob@b.test"),
            },
            PeerRequest::Bundle {
                qid: 2,
                requester: address("alice@a.test"),
                user: address("bob@b.test"),
            },
            PeerRequest::List { qid: 3 },
            PeerRequest::Ping { token: "x".into() },
            PeerRequest::Ping {
                token: String::new(),
            },
        ];
        for request in requests {
            let line = request.to_string();
            assert_eq!(PeerRequest::parse(&line), Ok(request), "{line}");
        }
        let replies = [
            PeerReply::Welcome {
                name: ServerName::parse("b.test").unwrap(),
                room: true,
                list: false,
            },
            PeerReply::Rack {
                id: 7,
                outcome: RelayOutcome::Stored,
            },
            PeerReply::Rack {
                id: 8,
                outcome: RelayOutcome::Refused(Refusal::NoSuchUser),
            },
            PeerReply::Key {
                qid: 1,
                key: "AAAA".into(),
            },
            PeerReply::Bundle {
                qid: 2,
                record: "rec".into(),
                one_time: None,
            },
            PeerReply::Bundle {
                qid: 3,
                record: "rec".into(),
                one_time: Some(OneTimePrekey {
                    id: 7,
                    key: "AAAA".into(),
                }),
            },
            PeerReply::List {
                qid: 3,
                total: 2,
                names: vec!["bob".into(), "carol".into()],
            },
            PeerReply::Fail {
                qid: 4,
                code: ErrorCode::NoSuchUser,
                text: "bob@b.test has no account".into(),
            },
            PeerReply::Pong { token: "x".into() },
            PeerReply::Error {
                code: LinkError::InvalidFrom,
                text: "mallory@c.test is not yours".into(),
            },
        ];
        for reply in replies {
            let line = reply.to_string();
            assert_eq!(PeerReply::parse(&line), Ok(reply), "{line}");
        }
    }

    #[test]
    fn peer_frames_name_users_by_full_canonical_address_only() {
        for bad in [
            "RELAY 1 alice bob@b.test r payload",
            "RELAY 1 alice@a.test bob r payload",
            "RELAY 1 Alice@a.test bob@b.test r payload",
            "RELAY 1 alice@A.test bob@b.test r payload",
            "RELAY 1 alice@127.0.0.1 bob@b.test r payload",
            "RELAY 1 alice@a.test bob@b.test r",
            "RELAY x alice@a.test bob@b.test r payload",
            "RELAY 1 alice@a.test bob@b.test bad/ref payload",
            "ROOM alice hi",
            "PEER 1 A.test",
            "PEER 1 a.test extra",
            "RECEIPT 1 alice@a.test r bob@b.test read",
            "GETKEY 1 bob",
            "HELLO",
        ] {
            assert!(PeerRequest::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_answer_that_cannot_be_read_is_refused() {
        for bad in [
            "BUNDLE 1 rec 7:",
            "BUNDLE 1 rec x:AAAA",
            "BUNDLE 1 rec AAAA",
            "BUNDLE 1 rec",
            "RACK 1 refused because",
            "RACK x queued",
            "OK PEER b.test room=maybe list=on",
            "ERR nonsense text",
            "FAIL 1 not-a-code text",
            "KEY 1",
        ] {
            assert!(PeerReply::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn who_a_frame_speaks_for_and_to() {
        let relay = PeerRequest::parse("RELAY 1 alice@a.test bob@b.test r x").unwrap();
        assert_eq!(relay.speaks_for(), Some(&address("alice@a.test")));
        assert_eq!(relay.speaks_to(), Some(&address("bob@b.test")));
        // A receipt comes from the recipient's server, about the sender's message.
        let receipt = PeerRequest::parse("RECEIPT 1 alice@a.test r bob@b.test delivered").unwrap();
        assert_eq!(receipt.speaks_for(), Some(&address("bob@b.test")));
        assert_eq!(receipt.speaks_to(), Some(&address("alice@a.test")));
        let bundle = PeerRequest::parse("BUNDLE 1 alice@a.test bob@b.test").unwrap();
        assert_eq!(bundle.speaks_for(), Some(&address("alice@a.test")));
        assert_eq!(bundle.speaks_to(), Some(&address("bob@b.test")));
    }
}
