//! Where the client keeps its secrets: one directory per server and user, holding the
//! identity private key and the pinned keys of peers (and the input history).
//!
//! `--home DIR` if given, else `$XDG_DATA_HOME/securechat`, else
//! `~/.local/share/securechat` (the XDG default). Inside it: `<server>/<user>/`.
//!
//! One identity per account and server, however the server was spelled: the directory is
//! named after [`canonical_server`], so `127.0.0.1:7878`, `[::1]:7878`, `localhost:7878`
//! and `LOCALHOST.:7878` all mean `localhost_7878`. (Otherwise each spelling would create
//! a new identity key, and every switch would warn the peers that the key changed.)
//! Directories made by older clients under the literal spelling are moved to the canonical
//! name the first time they are used ([`user_dir`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The identity private key file inside a user directory.
pub const IDENTITY_FILE: &str = "identity.key";

/// The pinned peer keys file inside a user directory.
pub const PINS_FILE: &str = "known_keys";

/// The input history file inside a user directory (never holds a password: passwords
/// are read by a separate hidden prompt, not the line editor).
pub const HISTORY_FILE: &str = "history";

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

/// The one spelling of a server `host:port` that names its key directory: the host in
/// lower case without a trailing dot and without brackets, and every loopback name or
/// address (`localhost`, `127.0.0.0/8`, `::1`) as `localhost`. The port is kept: two
/// servers on one machine are two servers.
pub fn canonical_server(server: &str) -> String {
    let (host, port) = server.rsplit_once(':').unwrap_or((server, ""));
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let loopback = host == "localhost"
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback());
    if loopback {
        format!("localhost:{port}")
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The directory for `user` on `server` (`host:port`, any spelling), and whether it was
/// just moved there from where an older client kept it (the literal spelling of
/// `server`, or another loopback spelling of the same port). Nothing is moved when the
/// canonical directory already exists.
pub fn user_dir(base: &Path, server: &str, user: &str) -> Result<(PathBuf, Option<PathBuf>)> {
    let canonical = canonical_server(server);
    let dir = base
        .join(path_component(&canonical))
        .join(path_component(user));
    if dir.exists() {
        return Ok((dir, None));
    }
    let port = canonical.rsplit_once(':').map_or("", |(_, port)| port);
    let mut spellings = vec![server.to_owned()];
    if canonical.starts_with("localhost:") {
        for host in ["127.0.0.1", "[::1]", "localhost"] {
            spellings.push(format!("{host}:{port}"));
        }
    }
    for spelling in spellings {
        let old = base
            .join(path_component(&spelling))
            .join(path_component(user));
        if old != dir && old.join(IDENTITY_FILE).exists() {
            if let Some(parent) = dir.parent() {
                crate::files::create_private_dir(parent)?;
            }
            std::fs::rename(&old, &dir).map_err(|e| {
                Error::Config(format!(
                    "cannot move your keys from {} to {}: {e}",
                    old.display(),
                    dir.display()
                ))
            })?;
            return Ok((dir, Some(old)));
        }
    }
    Ok((dir, None))
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
        let (dir, moved) =
            user_dir(Path::new("/nonexistent"), "chat.example.org:7878", "alice").unwrap();
        assert_eq!(dir, Path::new("/nonexistent/chat.example.org_7878/alice"));
        assert_eq!(moved, None);
    }

    #[test]
    fn every_spelling_of_a_server_is_one_name() {
        for spelling in [
            "localhost:7878",
            "LocalHost:7878",
            "localhost.:7878",
            "127.0.0.1:7878",
            "127.1.2.3:7878",
            "[::1]:7878",
        ] {
            assert_eq!(canonical_server(spelling), "localhost:7878", "{spelling}");
        }
        assert_eq!(
            canonical_server("Chat.Example.org.:443"),
            "chat.example.org:443"
        );
        assert_eq!(canonical_server("[2001:DB8::1]:7878"), "[2001:db8::1]:7878");
        assert_ne!(canonical_server("localhost:7879"), "localhost:7878");
    }

    #[test]
    fn an_old_directory_under_another_spelling_is_moved_once() {
        let base = tempfile::tempdir().unwrap();
        let old = base.path().join("127.0.0.1_7878").join("alice");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join(IDENTITY_FILE), "key").unwrap();

        let (dir, moved) = user_dir(base.path(), "localhost:7878", "alice").unwrap();
        assert_eq!(dir, base.path().join("localhost_7878").join("alice"));
        assert_eq!(moved, Some(old.clone()));
        assert_eq!(
            std::fs::read_to_string(dir.join(IDENTITY_FILE)).unwrap(),
            "key"
        );
        assert!(!old.exists());
        // Used again under either spelling: the same directory, nothing more to move.
        assert_eq!(
            user_dir(base.path(), "127.0.0.1:7878", "alice").unwrap(),
            (dir, None)
        );
    }

    #[test]
    fn an_explicit_home_wins() {
        assert_eq!(
            base_dir(Some(Path::new("/tmp/x"))).unwrap(),
            Path::new("/tmp/x")
        );
    }
}
