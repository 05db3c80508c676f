//! User names: the one rule every user name follows, checked in one place for the server
//! and the client alike, and [`UserName`], a name that has passed it.

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

#[cfg(test)]
mod tests {
    use super::*;

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
