//! The password policy, one definition for the server (which enforces it at `REGISTER`)
//! and the client (which shows it before the user types, and checks a choice before
//! sending it).
//!
//! It keeps the project's regex rules and follows NIST SP 800-63B where they differ:
//! * every password has at least [`MIN_CHARS`] characters, no space at either end, does
//!   not contain the user name, and fits bcrypt's 72 bytes (longer input would be silently
//!   ignored by bcrypt, so it is refused);
//! * a passphrase of [`PASSPHRASE_CHARS`] or more characters needs nothing else: length
//!   is what makes a password hard to guess, and composition rules push people to
//!   `Password1!`. Shorter passwords still need an upper-case letter, a lower-case letter
//!   and a digit, as before;
//! * no password may be a common one or an easy variation of one. The zxcvbn estimator
//!   (Dropbox's, with its lists of the most used passwords, names and words, and its
//!   patterns: keyboard walks, sequences, dates, l33t spellings) must put it beyond
//!   [`MIN_GUESSES_LOG10`] guesses.
//!
//! Each rule is a simple regex where one fits (the `regex` crate has no look-ahead), and a
//! rejection lists every rule that failed.

use std::sync::LazyLock;

use regex::Regex;

/// bcrypt's input limit in bytes; anything after it would be ignored.
pub const BCRYPT_MAX_PASSWORD_BYTES: usize = 72;

/// Shortest password accepted, in characters (NIST SP 800-63B's minimum).
pub const MIN_CHARS: usize = 8;

/// From this many characters on, a password is a passphrase and needs no particular
/// kinds of character (NIST SP 800-63B: length, not composition).
pub const PASSPHRASE_CHARS: usize = 15;

/// A password an attacker would find within 10^6 guesses (zxcvbn's estimate) is refused
/// as common. That is the top of the breached-password lists and their simple variations;
/// logins are throttled on the server, so more guesses than that are not on offer.
pub const MIN_GUESSES_LOG10: f64 = 6.0;

/// What a password that is too easy to guess is told.
pub const COMMON: &str = "not a common password or an easy variation of one";

/// Which passwords a rule applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Applies {
    /// Every password.
    Always,
    /// Only passwords shorter than [`PASSPHRASE_CHARS`]: composition rules.
    BelowPassphrase,
}

/// A password rule: a pattern that must (or must not) match, and what it means.
struct PasswordRule {
    /// The simple regex checked against the whole password.
    pattern: Regex,
    /// Whether the password must match `pattern` (or must not).
    must_match: bool,
    /// Which passwords the rule is checked for.
    applies: Applies,
    /// The rule in words, as listed before typing and on rejection.
    description: &'static str,
}

/// The regex rules, checked in order.
static PASSWORD_RULES: LazyLock<Vec<PasswordRule>> = LazyLock::new(|| {
    let rule = |pattern: &str, must_match, applies, description| PasswordRule {
        pattern: Regex::new(pattern).unwrap_or_else(|e| panic!("bad built-in regex: {e}")),
        must_match,
        applies,
        description,
    };
    use Applies::{Always, BelowPassphrase};
    vec![
        rule(r"^.{8,}$", true, Always, "at least 8 characters"),
        rule(r"\p{Lu}", true, BelowPassphrase, "an upper-case letter"),
        rule(r"\p{Ll}", true, BelowPassphrase, "a lower-case letter"),
        rule(r"\p{Nd}", true, BelowPassphrase, "a digit"),
        rule(r"^\s|\s$", false, Always, "no space at the start or end"),
    ]
});

/// The rules in words, one per line, shown before the user chooses a password.
pub fn rules_text() -> String {
    format!(
        "password rules:\n\
         - at least {MIN_CHARS} characters; a passphrase of {PASSPHRASE_CHARS} or more \
         characters (a few words) needs nothing else\n\
         - shorter than that: an upper-case letter, a lower-case letter and a digit\n\
         - no space at the start or end, not your user name, at most \
         {BCRYPT_MAX_PASSWORD_BYTES} bytes\n\
         - not a common password or an easy variation of one"
    )
}

/// Every rule that `password` breaks for the (canonical) user name `user`; empty when the
/// password is acceptable.
pub fn password_problems(user: &str, password: &str) -> Vec<&'static str> {
    let passphrase = password.chars().count() >= PASSPHRASE_CHARS;
    let mut problems: Vec<&'static str> = PASSWORD_RULES
        .iter()
        .filter(|rule| rule.applies == Applies::Always || !passphrase)
        .filter(|rule| rule.pattern.is_match(password) != rule.must_match)
        .map(|rule| rule.description)
        .collect();
    if !user.is_empty() && password.to_lowercase().contains(&user.to_lowercase()) {
        problems.push("must not contain the user name");
    }
    if password.len() > BCRYPT_MAX_PASSWORD_BYTES {
        problems.push("at most 72 bytes (bcrypt ignores anything longer)");
    } else if zxcvbn::zxcvbn(password, &[]).guesses_log10() < MIN_GUESSES_LOG10 {
        // Only within bcrypt's limit: the estimate's cost grows with the length.
        problems.push(COMMON);
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_password_passes() {
        assert!(password_problems("alice", "Correct horse 9").is_empty());
    }

    #[test]
    fn a_long_passphrase_needs_no_composition() {
        assert!(password_problems("alice", "correct horse battery staple").is_empty());
        // The same words, shorter than a passphrase, still need the composition rules.
        assert_eq!(
            password_problems("alice", "horse battery"),
            vec!["an upper-case letter", "a digit"]
        );
    }

    #[test]
    fn common_passwords_and_their_variations_are_refused() {
        for common in [
            "Password1",
            "P@ssw0rd123",
            "Qwerty123",
            "Welcome2024",
            "Iloveyou1",
            "passwordpassword",
            "123456789012345",
            "qwertyuiopasdfgh",
        ] {
            assert!(
                password_problems("bob", common).contains(&COMMON),
                "{common:?} accepted"
            );
        }
    }

    #[test]
    fn every_broken_rule_is_listed() {
        let problems = password_problems("alice", "abc");
        assert_eq!(
            problems,
            vec![
                "at least 8 characters",
                "an upper-case letter",
                "a digit",
                COMMON
            ]
        );
        assert!(password_problems("alice", "ABCDEFGH1").contains(&"a lower-case letter"));
        assert!(password_problems("alice", "xAlice123").contains(&"must not contain the user name"));
        assert_eq!(
            password_problems("bob", " Padded sky 9"),
            vec!["no space at the start or end"]
        );
        let long = format!("Aa1{}", "x".repeat(70));
        assert_eq!(
            password_problems("bob", &long),
            vec!["at most 72 bytes (bcrypt ignores anything longer)"]
        );
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        // Seven characters, more than eight bytes.
        assert!(password_problems("bob", "Ééééé1x").contains(&"at least 8 characters"));
    }

    #[test]
    fn the_rules_text_names_every_rule() {
        let text = rules_text();
        for part in [
            "8 characters",
            "15 or more",
            "upper-case",
            "72 bytes",
            "common",
        ] {
            assert!(text.contains(part), "{text}");
        }
    }
}
