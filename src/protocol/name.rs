//! User names: the one rule every user name follows, checked in one place for the server
//! and the client alike, and [`UserName`], a name that has passed it; server names
//! ([`ServerName`]) and the full addresses (`user@server`) that name a user of another
//! server in a federation.
//!
//! A bare name is a user of the server the client is connected to; `bob@chat.example` is
//! `bob` of the server named `chat.example`. Both halves follow their rule and are lower
//! case, so one address has one spelling: the screen, the pins and the safety numbers all
//! key on it, and `bob@a.test` can never be taken for `bob@b.test` or for a local `bob`.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// A canonical user name: lower case and following the rule. The only way to make one is
/// [`UserName::parse`], so a function that takes a `UserName` needs no check of its own;
/// the server's router and store take them, and the sender of every routed frame is the
/// `UserName` its connection logged in as. Cheap to clone (shared, not copied).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(Arc<str>);

impl UserName {
    /// Lower-cases `user` and checks it against the rule.
    pub fn parse(user: &str) -> Result<UserName, BadUserName> {
        normalize_username(user).map(|name| UserName(Arc::from(name)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Look-ups by `&str` in maps keyed by `UserName` (hashing and equality are the text's).
impl Borrow<str> for UserName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Human description of the user-name rule, shown on rejection.
pub const USERNAME_RULE: &str = "3-32 characters: a letter first, then letters, digits or \
     underscores; not one of the names the client uses for itself (you, server, system, …)";

/// Names nobody may have: the client's own words for itself and for the server, so that no
/// user's line can read as the local user's or as a notice.
pub const RESERVED_USERNAMES: &[&str] = &[
    "you",
    "yourself",
    "server",
    "system",
    "admin",
    "root",
    "securechat",
    "room",
    "everyone",
    "notice",
];

/// A user name that breaks the rule; says the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadUserName;

impl fmt::Display for BadUserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user name must be {USERNAME_RULE}")
    }
}

impl std::error::Error for BadUserName {}

/// Lower-cases and checks a user name against the rule `^[a-z][a-z0-9_]{2,31}$` (after
/// lower-casing): short enough to show in a chat line, ASCII so that look-alike names
/// cannot be registered. Returns the canonical name, or the rule it broke.
///
/// Written out rather than as a regex because it runs for every routed message.
pub fn normalize_username(user: &str) -> Result<String, BadUserName> {
    if is_canonical_username(user) {
        return Ok(user.to_owned());
    }
    let lower = user.to_ascii_lowercase();
    if is_canonical_username(&lower) {
        Ok(lower)
    } else {
        Err(BadUserName)
    }
}

/// Whether `name` already is a canonical user name (lower case, follows the rule, not
/// reserved). The client checks every name the server sends with it.
pub fn is_canonical_username(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=32).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !RESERVED_USERNAMES.contains(&name)
}

/// A server's name in a federation: a lower-case DNS name (`chat.example`, `localhost`),
/// the name its federation certificate is checked against. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerName(Arc<str>);

impl ServerName {
    /// Lower-cases `name` and checks it against [`SERVER_NAME_RULE`].
    pub fn parse(name: &str) -> Result<ServerName, BadServerName> {
        let lower = name.to_ascii_lowercase();
        if is_canonical_server_name(&lower) {
            Ok(ServerName(Arc::from(lower)))
        } else {
            Err(BadServerName)
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for ServerName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Human description of the server-name rule.
pub const SERVER_NAME_RULE: &str = "a DNS name: labels of 1-63 letters, digits or hyphens \
     (not first or last), separated by dots, at most 253 characters, the last label not all \
     digits (an IP address is not a server name)";

/// A server name that breaks the rule; says the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadServerName;

impl fmt::Display for BadServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server name must be {SERVER_NAME_RULE}")
    }
}

impl std::error::Error for BadServerName {}

/// Whether `name` already is a canonical server name: lower case and following
/// [`SERVER_NAME_RULE`].
pub fn is_canonical_server_name(name: &str) -> bool {
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        (1..=63).contains(&bytes.len())
            && bytes
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    };
    (1..=253).contains(&name.len())
        && name.split('.').all(label_ok)
        && name
            .rsplit('.')
            .next()
            .is_some_and(|last| !last.bytes().all(|b| b.is_ascii_digit()))
}

/// A user named by a client or a peer: a bare name (a user of this server) or a full
/// address `user@server`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// The user's name on its own server.
    pub user: UserName,
    /// Its server; `None` for a bare name.
    pub server: Option<ServerName>,
}

impl Address {
    /// Lower-cases and checks `text`: `user` or `user@server`, each half following its rule.
    pub fn parse(text: &str) -> Result<Address, BadAddress> {
        let (user, server) = match text.split_once('@') {
            Some((user, server)) => (user, Some(server)),
            None => (text, None),
        };
        Ok(Address {
            user: UserName::parse(user).map_err(|_| BadAddress)?,
            server: server
                .map(ServerName::parse)
                .transpose()
                .map_err(|_| BadAddress)?,
        })
    }

    /// The address as seen from `home`: the bare name for a user of `home` (so that
    /// `bob@home` and `bob` are one user), the full address otherwise.
    pub fn relative_to(&self, home: &ServerName) -> Address {
        match &self.server {
            Some(server) if server == home => Address {
                user: self.user.clone(),
                server: None,
            },
            _ => self.clone(),
        }
    }
}

/// The one rule for names that enter end-to-end cryptography (handshake transcripts,
/// prekey signatures and associated data, safety numbers, who wins a simultaneous key
/// exchange).
impl Address {
    /// `text` (a user name as this client spells it: bare for a user of its own server,
    /// `user@server` otherwise) as the cryptography binds it, given `home`, the name the
    /// client's server announced in its greeting: a bare `bob` becomes `bob@home`, a full
    /// address stays as it is. Without a home (a server that does not federate) `text` is
    /// returned unchanged, so that sessions and safety numbers made on such a server stay
    /// what they always were.
    ///
    /// Why: across servers the two ends spell the same users differently (alice on
    /// `a.test` says `bob@b.test` and `alice`; bob on `b.test` says `bob` and
    /// `alice@a.test`). Signatures, keys and safety numbers over those spellings would
    /// never agree; over full addresses both ends bind the same bytes. Only the binding is
    /// qualified: the screen, the pins and the mailbox keep this client's spelling.
    ///
    /// `text` is expected to be a name the client already checked; it is not checked again
    /// (a name with an `@` is taken to be full already).
    pub fn qualified(text: &str, home: Option<&ServerName>) -> String {
        match home {
            Some(home) if !text.contains('@') => format!("{text}@{home}"),
            _ => text.to_owned(),
        }
    }
}

/// A user of this server, as an address (no server part).
impl From<UserName> for Address {
    fn from(user: UserName) -> Address {
        Address { user, server: None }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.server {
            Some(server) => write!(f, "{}@{server}", self.user),
            None => write!(f, "{}", self.user),
        }
    }
}

/// Text that is neither a user name nor `user@server`; says the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAddress;

impl fmt::Display for BadAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a user is NAME or NAME@SERVER: the name {USERNAME_RULE}; the server {SERVER_NAME_RULE}"
        )
    }
}

impl std::error::Error for BadAddress {}

/// The server part of a full address (`b.test` of `bob@b.test`); `None` for a bare name (a
/// user of the server one is connected to).
pub fn server_of(address: &str) -> Option<&str> {
    address.split_once('@').map(|(_, server)| server)
}

/// Whether `text` is a canonical address: a canonical user name, or one followed by `@`
/// and a canonical server name. The client checks every name the server sends with it.
pub fn is_canonical_address(text: &str) -> bool {
    match text.split_once('@') {
        Some((user, server)) => is_canonical_username(user) && is_canonical_server_name(server),
        None => is_canonical_username(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_dns_names_in_lower_case() {
        for good in ["localhost", "a.test", "chat-1.example.org", "x1.y2"] {
            assert_eq!(ServerName::parse(good).unwrap().as_str(), good);
        }
        assert_eq!(
            ServerName::parse("Chat.Example").unwrap().as_str(),
            "chat.example"
        );
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "-a.test",
            "a-.test",
            "a_b.test",
            "127.0.0.1",
            "10.0.0.1",
            "a b",
            "a@b",
            "bоb.test",
            &"a".repeat(64),
        ] {
            assert!(ServerName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_address_has_one_spelling_and_home_users_are_bare() {
        let home = ServerName::parse("a.test").unwrap();
        let bob = Address::parse("Bob@B.Test").unwrap();
        assert_eq!(bob.to_string(), "bob@b.test");
        assert!(is_canonical_address("bob@b.test"));
        assert!(!is_canonical_address("Bob@b.test"));
        assert!(!is_canonical_address("bob@b.test@c.test"));
        assert!(!is_canonical_address("bob@"));
        assert_eq!(bob.relative_to(&home), bob);
        let local = Address::parse("bob@a.test").unwrap().relative_to(&home);
        assert_eq!(local.to_string(), "bob");
        assert_eq!(local, Address::parse("bob").unwrap());
        assert_ne!(
            Address::parse("bob@a.test").unwrap(),
            Address::parse("bob@b.test").unwrap()
        );
        for bad in [
            "bob@",
            "@b.test",
            "bob@b.test@c.test",
            "bob@127.0.0.1",
            "you@b.test",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_bound_into_cryptography_are_full_addresses_once_the_server_has_a_name() {
        let a = ServerName::parse("a.test").unwrap();
        let b = ServerName::parse("b.test").unwrap();
        // alice on a.test and bob on b.test spell each other differently, and bind the same.
        assert_eq!(Address::qualified("alice", Some(&a)), "alice@a.test");
        assert_eq!(Address::qualified("alice@a.test", Some(&b)), "alice@a.test");
        assert_eq!(Address::qualified("bob@b.test", Some(&a)), "bob@b.test");
        assert_eq!(Address::qualified("bob", Some(&b)), "bob@b.test");
        // A home user named in full binds as the bare name does.
        assert_eq!(Address::qualified("bob@a.test", Some(&a)), "bob@a.test");
        // Without a name (a server that does not federate) nothing changes.
        assert_eq!(Address::qualified("alice", None), "alice");
        assert_eq!(Address::qualified("bob@b.test", None), "bob@b.test");
    }

    #[test]
    fn user_names_are_lower_cased_and_checked() {
        assert_eq!(normalize_username("Alice_1").unwrap(), "alice_1");
        assert_eq!(UserName::parse("Alice_1").unwrap().as_str(), "alice_1");
        for bad in [
            "al",
            "1alice",
            "alice!",
            "",
            "a".repeat(33).as_str(),
            "élise",
            "you",
            "Server",
            "SYSTEM",
        ] {
            assert!(normalize_username(bad).is_err(), "{bad:?} accepted");
            assert_eq!(UserName::parse(bad), Err(BadUserName), "{bad:?} accepted");
        }
    }
}
