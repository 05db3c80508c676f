//! The peers file: which servers this one is linked with, where to reach them, and which
//! CA vouches for each.
//!
//! One peer per line, three words, `#` starts a comment:
//!
//! ```text
//! # name    address            trust (a CA certificate, PEM; relative to this file)
//! b.test    127.0.0.1:7101     federation-ca.pem
//! ```
//!
//! The address only says where to connect; who is there is decided by the certificate
//! alone (chain to *this* CA, valid for *this* name). An address never vouches for
//! anything: a peer may connect from anywhere, and a connection from a peer's address
//! without its certificate is refused.

use std::collections::HashSet;
use std::path::Path;

use rustls::pki_types::CertificateDer;

use crate::error::{Error, Result};
use crate::protocol::name::ServerName;

/// One linked server.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Its name: the domain of its users, and what its certificate must be valid for.
    pub name: ServerName,
    /// Where its federation port listens (`host:port`), resolved at each connect.
    pub address: String,
    /// The CA certificates its certificate must chain to (this peer's only).
    pub roots: Vec<CertificateDer<'static>>,
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
        let trust_path = base.join(trust);
        let roots = crate::tls::load_certificates(&trust_path)
            .map_err(|e| at(format!("trust anchor {}: {e}", trust_path.display())))?;
        if !names.insert(name.clone()) {
            return Err(at(format!("{name} is listed twice")));
        }
        peers.push(PeerConfig {
            name,
            address: address.to_owned(),
            roots,
        });
    }
    Ok(peers)
}
