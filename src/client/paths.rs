//! Where the client keeps its secrets: one directory per server and user, holding the
//! identity private key and the pinned keys of peers.
//!
//! `--home DIR` if given, else `$XDG_DATA_HOME/securechat`, else
//! `~/.local/share/securechat` (the XDG default). Inside it: `<server>/<user>/`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The identity private key file inside a user directory.
pub const IDENTITY_FILE: &str = "identity.key";

/// The pinned peer keys file inside a user directory.
pub const PINS_FILE: &str = "known_keys";

/// The base directory for all servers and users.
pub fn base_dir(home_override: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = home_override {
        return Ok(dir.to_path_buf());
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("securechat"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/securechat")),
        None => Err(Error::Config(
            "cannot find a data directory: set HOME or XDG_DATA_HOME, or pass --home DIR".into(),
        )),
    }
}

/// The directory for `user` on `server` (`host:port`).
pub fn user_dir(base: &Path, server: &str, user: &str) -> PathBuf {
    base.join(path_component(server)).join(path_component(user))
}

/// Makes a string safe as one path component: keeps letters, digits, `.`, `-`, `_`, and
/// writes a `:` as `_`; anything else becomes `%XX`. `..` cannot arise as a whole name.
fn path_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => out.push(b as char),
            b'.' if !out.is_empty() => out.push('.'),
            b':' => out.push('_'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_safe() {
        assert_eq!(path_component("localhost:7878"), "localhost_7878");
        assert_eq!(path_component("../etc"), "%2E.%2Fetc");
        assert_eq!(path_component("[::1]:7878"), "%5B__1%5D_7878");
        let dir = user_dir(Path::new("/b"), "chat.example.org:7878", "alice");
        assert_eq!(dir, Path::new("/b/chat.example.org_7878/alice"));
    }

    #[test]
    fn an_explicit_home_wins() {
        assert_eq!(
            base_dir(Some(Path::new("/tmp/x"))).unwrap(),
            Path::new("/tmp/x")
        );
    }
}
