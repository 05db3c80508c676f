//! The peers file: which servers this one is linked with, where to reach them, and which
//! CA vouches for each.
//!
//! One peer per line, three words, `#` starts a comment:
//!
//! ```text
//! # name    address            trust
//! b.test    127.0.0.1:7101     federation-ca.pem
//! c.test    c.example:7101     sha256:Zt0k1UjQz2…
//! ```
//!
//! The trust is either a CA certificate file (PEM, relative to this file): the peer's
//! certificate must chain to it and be valid for the peer's name; or a key pin
//! (`sha256:<base64>`, which `--issue-federation-cert` and the peer's start-up log print):
//! the peer's certificate must hold that key, and no CA can vouch for anyone else under its
//! name. The address only says where to connect; who is there is decided by the
//! certificate alone. An address never vouches for anything: a peer may connect from
//! anywhere, and a connection from a peer's address without its certificate is refused.

use std::collections::HashSet;
use std::path::Path;

use crate::error::{Error, Result};
use crate::protocol::name::ServerName;
use crate::tls::federation::{KeyPin, PeerTrust};

/// One linked server.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Its name: the domain of its users, and what its certificate must be valid for.
    pub name: ServerName,
    /// Where its federation port listens (`host:port`), resolved at each connect.
    pub address: String,
    /// How its certificate is recognised: this peer's own CA, or its pinned key.
    pub trust: PeerTrust,
}

/// Reads a peers file; the error names the line.
pub fn load(path: &Path) -> Result<Vec<PeerConfig>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "cannot read the peers file {}: {e}",
            path.display()
        ))
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut peers = Vec::new();
    let mut names = HashSet::new();
    for (number, line) in text.lines().enumerate() {
        let at = |problem: String| {
            Error::Config(format!("{} line {}: {problem}", path.display(), number + 1))
        };
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let [name, address, trust] = words[..] else {
            return Err(at(
                "expected three words: name, address (host:port), trust (a CA file)".into(),
            ));
        };
        let name = ServerName::parse(name).map_err(|e| at(e.to_string()))?;
        if !address.contains(':') {
            return Err(at(format!("{address:?} is not host:port")));
        }
        let trust = if trust.starts_with("sha256:") {
            PeerTrust::Pin(KeyPin::parse(trust).map_err(at)?)
        } else {
            let trust_path = base.join(trust);
            PeerTrust::Ca(
                crate::tls::load_certificates(&trust_path)
                    .map_err(|e| at(format!("trust anchor {}: {e}", trust_path.display())))?,
            )
        };
        if !names.insert(name.clone()) {
            return Err(at(format!("{name} is listed twice")));
        }
        peers.push(PeerConfig {
            name,
            address: address.to_owned(),
            trust,
        });
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_file_names_each_peer_once_with_a_ca_file_or_a_key_pin() {
        let dir = tempfile::tempdir().unwrap();
        let fed = dir.path().join("fed");
        let files = crate::tls::federation::issue_federation_certificate(
            &fed,
            &ServerName::parse("b.test").unwrap(),
        )
        .unwrap();
        let chain = crate::tls::load_certificates(&files.cert).unwrap();
        let pin = KeyPin::of_certificate(&chain[0]).unwrap();
        let path = fed.join("peers.conf");
        let write = |text: &str| std::fs::write(&path, text).unwrap();

        write(&format!(
            "# a comment\n\nb.test 127.0.0.1:7102 federation-ca.pem   # the CA, beside this file\nC.Test c.example:7101 {pin}\n"
        ));
        let peers = load(&path).unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].name.as_str(), "b.test");
        assert!(matches!(&peers[0].trust, PeerTrust::Ca(roots) if roots.len() == 1));
        assert_eq!(peers[1].name.as_str(), "c.test");
        assert!(matches!(&peers[1].trust, PeerTrust::Pin(p) if *p == pin));

        for (text, says) in [
            ("b.test 127.0.0.1:7102\n", "line 1: expected three words"),
            (
                "b.test 127.0.0.1 federation-ca.pem\n",
                "line 1: \"127.0.0.1\" is not host:port",
            ),
            (
                "127.0.0.1 127.0.0.1:7102 federation-ca.pem\n",
                "line 1: server name must be",
            ),
            (
                "b.test 127.0.0.1:7102 missing.pem\n",
                "line 1: trust anchor",
            ),
            (
                "b.test 127.0.0.1:7102 sha256:AAAA\n",
                "line 1: \"sha256:AAAA\" is not a key pin",
            ),
            (
                "b.test h:1 federation-ca.pem\nB.test h:2 federation-ca.pem\n",
                "line 2: b.test is listed twice",
            ),
        ] {
            write(text);
            let error = load(&path).unwrap_err().to_string();
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }
}
