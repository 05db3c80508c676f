//! User names: the one rule every user name follows, checked in one place for the server
//! and the client alike.

use std::fmt;

/// Human description of the user-name rule, shown on rejection.
pub const USERNAME_RULE: &str =
    "3-32 characters: a letter first, then letters, digits or underscores";

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

/// Whether `name` already is a canonical user name (lower case, and follows the rule).
pub fn is_canonical_username(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=32).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
