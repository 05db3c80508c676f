//! TLS for the server-to-server (federation) port, and the development federation CA.
//!
//! Servers of a federation have names (`a.test`, `b.test`) and talk over a port of their
//! own, with a certificate on **both** sides. Every peer is configured explicitly with a
//! name, an address and a trust anchor (its CA certificate file): there is no trust by IP
//! address, no plaintext and no fallback to either.
//!
//! Three steps, in this order, decide who is on the other end of a CA-trusted link:
//!
//! 1. [`federation_server_config`] (the acceptor) requires a client certificate that chains
//!    to the union of every configured peer's CA, and [`federation_client_config`] (the
//!    connector) trusts only the dialled peer's CA. The protocol policy is the client
//!    port's ([`super::crypto_provider`], TLS 1.3 and 1.2).
//! 2. The handshake alone does not say **which** peer connected: the acceptor's chain check
//!    accepts any peer's certificate, whatever name it holds, and a peer's CA may sign a
//!    certificate for another peer's name. So after the handshake
//!    [`check_peer_certificate`] checks the chain again against the claimed (acceptor) or
//!    dialled (connector) peer's **own** CA only, and that the certificate is valid for that
//!    peer's configured name.
//! 3. Only then does the connection speak for that peer.
//!
//! The explicit check requires the **serverAuth** extended key usage, on both sides: it is
//! rustls's server-certificate verifier (webpki), the one that checks a certificate against
//! a DNS name, so no extra dependency is needed. A federation certificate is both a server
//! and a client certificate (it dials and it accepts), and the development federation CA
//! issues every certificate with serverAuth and clientAuth, so the acceptor's handshake
//! checks clientAuth and the explicit check serverAuth: a peer certificate must carry both.
//! (As everywhere in webpki, a certificate with no extended key usage extension at all
//! counts as valid for every usage.)
//!
//! A peer may instead be trusted by its **key** ([`PeerTrust::Pin`], a [`KeyPin`]: the
//! SHA-256 of its certificate's SubjectPublicKeyInfo), as an SSH known host: the acceptor's
//! verifier then also accepts a client certificate holding a pinned key, the connector's
//! accepts only the pinned key (whatever signed the certificate, whatever names it holds),
//! and the explicit check compares the key. Both still verify the handshake signature with
//! the provider's algorithms, so the peer proves it holds the private key. No CA can stand
//! in for a pinned peer — not even one the acceptor trusts for another peer.
//!
//! The development federation CA ([`issue_federation_certificate`]) is separate from the
//! client-facing development CA of [`super::ensure_dev_certificates_for`], and unlike that
//! one it carries **no** name constraints: one federation CA issues the certificates of a
//! whole test federation (`a.test`, `b.test`, `c.test`, ... added over time), so
//! constraining it to the names known when it was made would stop it issuing for the next
//! server. It does not need them either: it is never a root for clients or for the web PKI,
//! only a trust anchor on the federation port, configured per peer, and the explicit name
//! check ties each connection to the one peer whose CA vouched for it. A client-facing CA
//! needs constraints because a client trusts it for any name it dials; nothing trusts the
//! federation CA that way.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::{
    crypto_provider, generate_key, load_ca_key, load_certificates, open_ca_dir, set_validity,
    VERSIONS,
};
use crate::error::{Error, Result};
use crate::files;
use crate::protocol::name::ServerName;

/// The development federation CA's certificate, in the CA directory.
pub const FEDERATION_CA_CERT: &str = "federation-ca.pem";

/// The development federation CA's private key (mode 0600), in the CA directory.
pub const FEDERATION_CA_KEY: &str = "federation-ca.key";

/// The one server name whose certificate files would be the CA's own
/// (`federation-ca.pem`, `federation-ca.key`): never issued, or the CA would be overwritten.
const RESERVED_FILE_STEM: &str = "federation-ca";

/// Subject of the development federation CA, followed by the start of its key's SHA-256
/// fingerprint ([`federation_ca_params`]): derived from the key alone, so certificates can
/// be issued from the saved key without parsing the CA certificate (the issuer name must
/// match), and yet two federation CAs never share a name, so a certificate from another
/// one is reported as from an unknown issuer rather than as a bad signature.
const FEDERATION_CA_NAME: &str = "securechat development federation CA";

/// Lifetime of the development federation CA: long, because every peer trusts it by file.
const FEDERATION_CA_LIFETIME_DAYS: u64 = 10 * 365;

/// Lifetime of a development federation certificate: a year, like the client port's
/// development certificate (each call issues a fresh one anyway).
const FEDERATION_CERT_LIFETIME_DAYS: u64 = 365;

/// TLS for the server-to-server port: certificates required on both sides.
///
/// The client certificate must chain to one of `trusted` (the union of every configured
/// peer's CA certificates) and carry the clientAuth usage, or hold one of the `pinned`
/// keys (peers trusted by key, [`KeyPin`]); which peer it is, is decided afterwards by
/// [`PeerTrust::check`]. Neither a CA nor a pin is a configuration error: no peer could
/// ever be verified.
pub fn federation_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    trusted: &[CertificateDer<'static>],
    pinned: &[KeyPin],
) -> Result<Arc<ServerConfig>> {
    if trusted.is_empty() && pinned.is_empty() {
        return Err(Error::Config(
            "the federation port needs at least one peer's CA certificate or key pin: \
             without one no peer can be verified; configure a peer with its CA file or pin"
                .to_owned(),
        ));
    }
    let by_ca = match trusted.is_empty() {
        true => None,
        false => {
            let roots = root_store(trusted).map_err(Error::Config)?;
            Some(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
                    .build()
                    .map_err(|e| Error::Config(format!("cannot verify federation peers: {e}")))?,
            )
        }
    };
    let verifier = Arc::new(PeerClientVerifier {
        by_ca,
        pinned: pinned.to_vec(),
        schemes: crypto_provider().signature_verification_algorithms,
    });
    let config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// TLS for connecting to one peer: its CA as the only root, our certificate presented.
///
/// Never the web PKI: a federation is explicit trust, and a public CA vouching for a
/// peer's name says nothing about whether we federate with it. Unlike the client's
/// configuration this one ignores `SSLKEYLOGFILE`: a variable in a server's environment
/// must not quietly expose the traffic of every peer.
pub fn federation_client_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    peer_roots: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>> {
    if peer_roots.is_empty() {
        return Err(Error::Config(
            "a federation peer needs its CA certificate: without one it cannot be verified"
                .to_owned(),
        ));
    }
    let roots = root_store(peer_roots).map_err(Error::Config)?;
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The explicit check: `chain` (end entity first, as from `conn.peer_certificates()`)
/// chains to one of `roots` (that peer's own CA, not the union) and its end-entity
/// certificate is valid for the DNS name `name`.
///
/// Requires the serverAuth extended key usage (see the module documentation), on both the
/// accepting and the connecting side. The error is a sentence for the log, with anything
/// unprintable from the peer's certificate escaped.
pub fn check_peer_certificate(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'static>],
    name: &ServerName,
) -> std::result::Result<(), String> {
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Err(format!(
            "the peer claiming to be {name} presented no certificate"
        ));
    };
    if roots.is_empty() {
        return Err(format!(
            "no CA certificate is configured for the peer {name}"
        ));
    }
    let roots = root_store(roots)?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .build()
        .map_err(|e| format!("cannot verify the peer {name}: {e}"))?;
    let dns_name = rustls::pki_types::ServerName::try_from(name.as_str())
        .map_err(|e| format!("{name} is not a name a certificate can hold: {e}"))?;
    verifier
        .verify_server_cert(end_entity, intermediates, &dns_name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| {
            let why = match &e {
                // BadSignature: a CA with the same name as the configured one signed it.
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                    | rustls::CertificateError::BadSignature,
                ) => {
                    format!("it is not signed by the CA configured for {name}")
                }
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. },
                ) => format!("it is not valid for the name {name}"),
                other => other.to_string(),
            };
            escape(&format!(
                "the certificate of the peer claiming to be {name} is refused: {why} ({e})"
            ))
        })
}

/// How one peer is recognised: by a CA and its name, or by its key alone.
#[derive(Debug, Clone)]
pub enum PeerTrust {
    /// Its certificate chains to one of these CA certificates (this peer's own) and is valid
    /// for its configured name ([`check_peer_certificate`]).
    Ca(Vec<CertificateDer<'static>>),
    /// Its certificate holds this public key ([`KeyPin`]): the key is the identity, as an
    /// SSH known host, and no CA can vouch for anyone else under the peer's name.
    Pin(KeyPin),
}

impl PeerTrust {
    /// TLS for dialling this peer, showing `chain`.
    pub fn client_config(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<ClientConfig>> {
        match self {
            PeerTrust::Ca(roots) => federation_client_config(chain, key, roots),
            PeerTrust::Pin(pin) => {
                let verifier = Arc::new(PinnedServerVerifier {
                    pin: pin.clone(),
                    schemes: crypto_provider().signature_verification_algorithms,
                });
                let config = ClientConfig::builder_with_provider(crypto_provider())
                    .with_protocol_versions(VERSIONS)?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_client_auth_cert(chain, key)?;
                Ok(Arc::new(config))
            }
        }
    }

    /// The explicit check after a handshake: `chain` is this peer's, named `name`.
    pub fn check(
        &self,
        chain: &[CertificateDer<'_>],
        name: &ServerName,
    ) -> std::result::Result<(), String> {
        match self {
            PeerTrust::Ca(roots) => check_peer_certificate(chain, roots, name),
            PeerTrust::Pin(pin) => {
                let Some(end_entity) = chain.first() else {
                    return Err(format!(
                        "the peer claiming to be {name} presented no certificate"
                    ));
                };
                match KeyPin::of_certificate(end_entity) {
                    Ok(seen) if seen == *pin => Ok(()),
                    Ok(seen) => Err(format!(
                        "the peer claiming to be {name} holds the key {seen}, not the key \
                         pinned for {name}"
                    )),
                    Err(e) => Err(escape(&e)),
                }
            }
        }
    }
}

/// A peer's public key, pinned: the SHA-256 of its certificate's DER SubjectPublicKeyInfo,
/// written `sha256:<base64>` (HPKP's and curl's `--pinnedpubkey` form). Survives a renewed
/// certificate with the same key; [`issue_federation_certificate`] and the server's start-up
/// log print a server's own.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPin([u8; 32]);

impl KeyPin {
    /// Reads `sha256:<base64 of 32 bytes>`.
    pub fn parse(text: &str) -> std::result::Result<KeyPin, String> {
        use base64::Engine as _;
        let bad = || format!("{text:?} is not a key pin: sha256:<base64 of 32 bytes>");
        let encoded = text.strip_prefix("sha256:").ok_or_else(bad)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| bad())?;
        Ok(KeyPin(bytes.try_into().map_err(|_| bad())?))
    }

    /// The pin of the key `certificate` holds.
    pub fn of_certificate(certificate: &CertificateDer<'_>) -> std::result::Result<KeyPin, String> {
        let parsed = rustls::server::ParsedCertificate::try_from(certificate)
            .map_err(|e| format!("the certificate cannot be read: {e}"))?;
        let spki = parsed.subject_public_key_info();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki.as_ref());
        let mut pin = [0u8; 32];
        pin.copy_from_slice(digest.as_ref());
        Ok(KeyPin(pin))
    }
}

impl std::fmt::Display for KeyPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use base64::Engine as _;
        write!(
            f,
            "sha256:{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

impl std::fmt::Debug for KeyPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The acceptor's check of client certificates: a configured CA's chain, or a pinned key.
/// The handshake signature is verified either way (the peer proves it holds the key).
#[derive(Debug)]
struct PeerClientVerifier {
    /// The CA peers' verifier; `None` when every peer is pinned.
    by_ca: Option<Arc<dyn ClientCertVerifier>>,
    /// The pinned peers' keys.
    pinned: Vec<KeyPin>,
    /// How handshake signatures are checked.
    schemes: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PeerClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.by_ca.as_ref().map_or(&[], |v| v.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        if KeyPin::of_certificate(end_entity).is_ok_and(|pin| self.pinned.contains(&pin)) {
            return Ok(ClientCertVerified::assertion());
        }
        match &self.by_ca {
            Some(verifier) => verifier.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.schemes)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.schemes)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.supported_schemes()
    }
}

/// The connector's check of a pinned peer: its certificate holds the pinned key (whoever
/// signed it, whatever names it holds), and the handshake signature is made with it.
#[derive(Debug)]
struct PinnedServerVerifier {
    /// The peer's key.
    pin: KeyPin,
    /// How handshake signatures are checked.
    schemes: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match KeyPin::of_certificate(end_entity) {
            Ok(pin) if pin == self.pin => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.schemes)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.schemes)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.supported_schemes()
    }
}

/// The DNS names `certificate` holds (its subject alternative names), in order; none if it
/// cannot be read. For choosing a default server name and warning about a mismatch only:
/// whether a certificate is valid for a name is [`check_peer_certificate`]'s to say.
pub fn dns_names(certificate: &CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(certificate)
        .map(|cert| cert.valid_dns_names().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A root store holding `certificates`, or why one of them cannot be a trust anchor.
fn root_store(
    certificates: &[CertificateDer<'static>],
) -> std::result::Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate.clone())
            .map_err(|e| format!("a configured federation CA certificate is not usable: {e}"))?;
    }
    Ok(roots)
}

/// `text` with every character that is not printable ASCII (or a space) escaped: parts of
/// it come from the peer's certificate and end up in logs and on terminals.
fn escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c.to_string()
            } else {
                c.escape_default().to_string()
            }
        })
        .collect()
}

/// Files of a dev federation certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationFiles {
    /// The federation CA certificate: the trust anchor every peer configures for this one.
    pub ca: PathBuf,
    /// The certificate chain (the certificate for the name, then the CA), to present.
    pub cert: PathBuf,
    /// The certificate's private key (mode 0600).
    pub key: PathBuf,
}

/// The development federation CA (made in `ca_dir` on first use: `federation-ca.pem`,
/// `federation-ca.key` 0600, dir 0700) issues a certificate for `name` (SAN: DNS `name`;
/// EKU serverAuth + clientAuth), written to `ca_dir/<name>.pem` and `ca_dir/<name>.key`
/// (0600). Reissued each call (fresh key). Returns the paths.
///
/// A directory that already exists keeps its mode (the keys in it are 0600 whatever it
/// is). The name `federation-ca` is refused: its files would be the CA's own. Processes
/// issuing at once in one directory take turns (a lock file, `.lock`).
pub fn issue_federation_certificate(ca_dir: &Path, name: &ServerName) -> Result<FederationFiles> {
    if name.as_str() == RESERVED_FILE_STEM {
        return Err(Error::Config(format!(
            "{name} cannot have a development federation certificate: its files would \
             overwrite the federation CA's; choose another server name"
        )));
    }
    let _lock = open_ca_dir(ca_dir, "federation CA directory")?;
    let ca = ca_dir.join(FEDERATION_CA_CERT);
    let ca_key_file = ca_dir.join(FEDERATION_CA_KEY);

    let ca_key = if ca.exists() && ca_key_file.exists() {
        load_ca_key(
            &ca_key_file,
            &format!(
                "delete {} and {} to make a new development federation CA (every peer then \
                 needs the new CA certificate)",
                ca_key_file.display(),
                ca.display()
            ),
        )?
    } else {
        let key = generate_key()?;
        let certificate = federation_ca_params(&key)?
            .self_signed(&key)
            .map_err(rcgen_error)?;
        files::write_atomically(&ca_key_file, key.serialize_pem().as_bytes())?;
        files::write_atomically(&ca, certificate.pem().as_bytes())?;
        key
    };

    let leaf_key = generate_key()?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.as_str().to_owned()]).map_err(rcgen_error)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name.as_str());
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    // Both: a federation server accepts peers (server) and dials them (client).
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    set_validity(&mut params, FEDERATION_CERT_LIFETIME_DAYS);
    let issuer = rcgen::Issuer::new(federation_ca_params(&ca_key)?, &ca_key);
    let leaf = params.signed_by(&leaf_key, &issuer).map_err(rcgen_error)?;

    let cert = ca_dir.join(format!("{name}.pem"));
    let key = ca_dir.join(format!("{name}.key"));
    // The key first: a certificate is never left beside a key it does not match for long,
    // and a reader that sees the new chain finds its key already in place.
    files::write_atomically(&key, leaf_key.serialize_pem().as_bytes())?;
    let ca_pem = fs::read_to_string(&ca)?;
    files::write_atomically(&cert, format!("{}{}", leaf.pem(), ca_pem).as_bytes())?;
    // A CA file that is not PEM (edited, truncated) is reported now, not at the first peer.
    load_certificates(&ca)?;
    Ok(FederationFiles { ca, cert, key })
}

/// The parameters of the development federation CA whose key is `key`. Deterministic apart
/// from its validity (the name and the key identifier are derived from the key), so the
/// saved key alone issues certificates that chain to the saved CA certificate. No name
/// constraints: see the module documentation.
fn federation_ca_params(key: &rcgen::KeyPair) -> Result<rcgen::CertificateParams> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.public_key_raw());
    let tag: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{FEDERATION_CA_NAME} {tag}"),
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "securechat");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, FEDERATION_CA_LIFETIME_DAYS);
    Ok(params)
}

/// An rcgen failure, as a configuration error that says what was being made.
fn rcgen_error(e: rcgen::Error) -> Error {
    Error::Config(format!(
        "cannot create the development federation certificates: {e}"
    ))
}

#[cfg(test)]
mod tests {
    //! Real TLS over real loopback sockets: an acceptor thread with the federation server
    //! configuration, a connector in the test thread.

    use super::*;
    use std::io::Write;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::super::load_identity;

    /// What the acceptor saw: the client's certificate chain, or why the handshake failed.
    type Accepted = std::result::Result<Vec<CertificateDer<'static>>, String>;

    /// Long enough for a debug build on a busy machine; a test never waits on it otherwise.
    const TIMEOUT: Duration = Duration::from_secs(10);

    fn name(text: &str) -> ServerName {
        ServerName::parse(text).unwrap()
    }

    /// A server's identity: its certificate chain and key, as a server loads them.
    fn identity(files: &FederationFiles) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        load_identity(&files.cert, &files.key).unwrap()
    }

    fn ca(files: &FederationFiles) -> Vec<CertificateDer<'static>> {
        load_certificates(&files.ca).unwrap()
    }

    /// Accepts one connection on 127.0.0.1:0 in a thread, completes the handshake with
    /// `config` and reports the client's certificates or the handshake error.
    fn accept_one(config: Arc<ServerConfig>) -> (SocketAddr, mpsc::Receiver<Accepted>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (report, reports) = mpsc::channel();
        std::thread::spawn(move || {
            let result = (|| -> Accepted {
                let (socket, _) = listener.accept().map_err(|e| e.to_string())?;
                socket
                    .set_read_timeout(Some(TIMEOUT))
                    .map_err(|e| e.to_string())?;
                let connection =
                    rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
                let mut stream = rustls::StreamOwned::new(connection, socket);
                while stream.conn.is_handshaking() {
                    stream
                        .conn
                        .complete_io(&mut stream.sock)
                        .map_err(|e| e.to_string())?;
                }
                Ok(stream
                    .conn
                    .peer_certificates()
                    .unwrap_or_default()
                    .iter()
                    .map(|c| c.clone().into_owned())
                    .collect())
            })();
            let _ = report.send(result);
        });
        (addr, reports)
    }

    /// Dials `addr` as `peer` with `config` and completes the handshake; returns the
    /// server's certificates or the error. The socket is returned so that it stays open
    /// until the acceptor has reported.
    fn connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        peer: &ServerName,
    ) -> (
        std::result::Result<Vec<CertificateDer<'static>>, String>,
        TcpStream,
    ) {
        let mut socket = TcpStream::connect(addr).unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        let server_name =
            rustls::pki_types::ServerName::try_from(peer.as_str().to_owned()).unwrap();
        let mut connection = rustls::ClientConnection::new(config, server_name).unwrap();
        let mut result = Ok(());
        while connection.is_handshaking() {
            if let Err(e) = connection.complete_io(&mut socket) {
                result = Err(e.to_string());
                break;
            }
        }
        let certificates = result.map(|()| {
            connection
                .peer_certificates()
                .unwrap_or_default()
                .iter()
                .map(|c| c.clone().into_owned())
                .collect()
        });
        (certificates, socket)
    }

    /// The acceptor's verdict.
    fn accepted(reports: &mpsc::Receiver<Accepted>) -> Accepted {
        reports.recv_timeout(TIMEOUT * 2).unwrap()
    }

    /// The key pin of the certificate issued in `files`.
    fn pin(files: &FederationFiles) -> KeyPin {
        KeyPin::of_certificate(&identity(files).0[0]).unwrap()
    }

    #[test]
    fn a_federation_certificate_holds_its_servers_name() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue_federation_certificate(dir.path(), &name("a.test")).unwrap();
        assert_eq!(dns_names(&identity(&a).0[0]), ["a.test"]);
        assert!(dns_names(&CertificateDer::from(vec![0u8; 8])).is_empty());
    }

    #[test]
    fn a_key_pin_reads_back_as_written_and_nothing_else_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue_federation_certificate(dir.path(), &name("a.test")).unwrap();
        let pin = pin(&a);
        assert_eq!(KeyPin::parse(&pin.to_string()).unwrap(), pin);
        assert!(pin.to_string().starts_with("sha256:"));
        // A new certificate for the same name has a new key, so a new pin.
        let again = issue_federation_certificate(dir.path(), &name("a.test")).unwrap();
        assert_ne!(super::tests::pin(&again), pin);
        for bad in [
            "",
            "sha256:",
            "sha1:AAAA",
            "sha256:AAAA",
            "sha256:!!!",
            &pin.to_string()[7..],
        ] {
            assert!(KeyPin::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_pinned_peer_links_by_its_key_and_no_other_key_passes_on_either_side() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue_federation_certificate(dir.path(), &name("a.test")).unwrap();
        let b = issue_federation_certificate(dir.path(), &name("b.test")).unwrap();
        let (a_pin, b_pin) = (pin(&a), pin(&b));
        let (a_chain, a_key) = identity(&a);
        let (b_chain, b_key) = identity(&b);

        // a.test trusts b.test by key alone (no CA at all); b.test trusts a.test by key.
        let server = federation_server_config(
            a_chain.clone(),
            a_key.clone_key(),
            &[],
            std::slice::from_ref(&b_pin),
        )
        .unwrap();
        let (addr, reports) = accept_one(server.clone());
        let client = PeerTrust::Pin(a_pin.clone())
            .client_config(b_chain.clone(), b_key.clone_key())
            .unwrap();
        let (seen_by_b, _socket) = connect(addr, client, &name("a.test"));
        let seen_by_a = accepted(&reports).expect("a.test accepts b.test's key");
        let seen_by_b = seen_by_b.expect("b.test accepts a.test's key");
        PeerTrust::Pin(b_pin.clone())
            .check(&seen_by_a, &name("b.test"))
            .unwrap();
        PeerTrust::Pin(a_pin.clone())
            .check(&seen_by_b, &name("a.test"))
            .unwrap();

        // Another key, even under b.test's name and from the same CA, is refused by the
        // acceptor (nothing but the pin is trusted)...
        let impostor = tempfile::tempdir().unwrap();
        let forged = issue_federation_certificate(impostor.path(), &name("b.test")).unwrap();
        let (f_chain, f_key) = identity(&forged);
        let (addr, reports) = accept_one(server);
        let client = PeerTrust::Pin(a_pin)
            .client_config(f_chain.clone(), f_key.clone_key())
            .unwrap();
        let (_, _socket) = connect(addr, client, &name("a.test"));
        assert!(accepted(&reports).is_err(), "another key got in");
        let error = PeerTrust::Pin(b_pin)
            .check(&f_chain, &name("b.test"))
            .unwrap_err();
        assert!(error.contains("not the key pinned for b.test"), "{error}");

        // ...and by the connector: b.test dialling a server that shows another key.
        let (addr, _reports) =
            accept_one(federation_server_config(f_chain, f_key, &[], &[pin(&b)]).unwrap());
        let client = PeerTrust::Pin(pin(&a))
            .client_config(b_chain, b_key)
            .unwrap();
        let (seen, _socket) = connect(addr, client, &name("a.test"));
        assert!(seen.is_err(), "b.test linked to a key that is not a.test's");
    }

    #[test]
    fn two_servers_of_one_federation_authenticate_each_other_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue_federation_certificate(dir.path(), &name("a.test")).unwrap();
        let b = issue_federation_certificate(dir.path(), &name("b.test")).unwrap();
        let (a_chain, a_key) = identity(&a);
        let (b_chain, b_key) = identity(&b);
        let roots = ca(&a);
        assert_eq!(roots, ca(&b), "one CA for the whole federation");

        // a.test accepts; b.test dials it.
        let (addr, reports) =
            accept_one(federation_server_config(a_chain, a_key, &roots, &[]).unwrap());
        let client = federation_client_config(b_chain, b_key, &roots).unwrap();
        let (seen_by_b, _socket) = connect(addr, client, &name("a.test"));
        let seen_by_a = accepted(&reports).expect("a.test accepts b.test");
        let seen_by_b = seen_by_b.expect("b.test accepts a.test");

        check_peer_certificate(&seen_by_a, &roots, &name("b.test")).expect("a.test checks b.test");
        check_peer_certificate(&seen_by_b, &roots, &name("a.test")).expect("b.test checks a.test");
    }

    #[test]
    fn a_client_that_presents_no_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue_federation_certificate(dir.path(), &name("a.test")).unwrap();
        let (a_chain, a_key) = identity(&a);
        let roots = ca(&a);
        let (addr, reports) =
            accept_one(federation_server_config(a_chain, a_key, &roots, &[]).unwrap());

        let mut store = RootCertStore::empty();
        store.add(roots[0].clone()).unwrap();
        let anonymous = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(VERSIONS)
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
        let (_, _socket) = connect(addr, Arc::new(anonymous), &name("a.test"));
        let error = accepted(&reports).expect_err("no certificate, no session");
        assert!(error.contains("certificate"), "{error}");
    }

    #[test]
    fn a_client_certificate_from_an_unknown_ca_is_refused() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        let a = issue_federation_certificate(ours.path(), &name("a.test")).unwrap();
        let stranger = issue_federation_certificate(theirs.path(), &name("b.test")).unwrap();
        assert_ne!(ca(&a), ca(&stranger), "two different CAs");
        let (a_chain, a_key) = identity(&a);
        let (s_chain, s_key) = identity(&stranger);
        let (addr, reports) =
            accept_one(federation_server_config(a_chain, a_key, &ca(&a), &[]).unwrap());

        // The stranger trusts a.test's CA, so only a.test's verdict can stop it.
        let client = federation_client_config(s_chain, s_key, &ca(&a)).unwrap();
        let (_, _socket) = connect(addr, client, &name("a.test"));
        let error = accepted(&reports).expect_err("an unknown CA is refused");
        assert!(error.contains("UnknownIssuer"), "{error}");
    }

    #[test]
    fn a_certificate_for_another_name_passes_the_handshake_but_not_the_explicit_check() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue_federation_certificate(dir.path(), &name("a.test")).unwrap();
        let b = issue_federation_certificate(dir.path(), &name("b.test")).unwrap();
        let (a_chain, a_key) = identity(&a);
        let (b_chain, b_key) = identity(&b);
        let roots = ca(&a);
        let (addr, reports) =
            accept_one(federation_server_config(a_chain, a_key, &roots, &[]).unwrap());
        let client = federation_client_config(b_chain, b_key, &roots).unwrap();
        let (_, _socket) = connect(addr, client, &name("a.test"));

        // b.test claims to be c.test (another peer whose CA is the same one).
        let chain = accepted(&reports).expect("the chain check alone accepts b.test");
        check_peer_certificate(&chain, &roots, &name("b.test")).expect("it is b.test");
        let error = check_peer_certificate(&chain, &roots, &name("c.test"))
            .expect_err("b.test must not pass for c.test");
        assert!(error.contains("not valid for the name c.test"), "{error}");
    }

    #[test]
    fn a_certificate_from_a_ca_trusted_for_another_peer_is_refused() {
        let b_dir = tempfile::tempdir().unwrap();
        let c_dir = tempfile::tempdir().unwrap();
        let a = issue_federation_certificate(b_dir.path(), &name("a.test")).unwrap();
        let b_roots = ca(&issue_federation_certificate(b_dir.path(), &name("b.test")).unwrap());
        // c.test's CA signs a certificate with b.test's name: whoever runs c.test could.
        let forged = issue_federation_certificate(c_dir.path(), &name("b.test")).unwrap();
        let c_roots = ca(&forged);
        let (a_chain, a_key) = identity(&a);
        let (f_chain, f_key) = identity(&forged);
        let union: Vec<_> = b_roots.iter().chain(&c_roots).cloned().collect();
        let (addr, reports) =
            accept_one(federation_server_config(a_chain, a_key, &union, &[]).unwrap());
        let client = federation_client_config(f_chain, f_key, &b_roots).unwrap();
        let (_, _socket) = connect(addr, client, &name("a.test"));

        let chain = accepted(&reports).expect("the union of peer CAs accepts it");
        check_peer_certificate(&chain, &c_roots, &name("b.test"))
            .expect("it does chain to c.test's CA and hold the name b.test");
        let error = check_peer_certificate(&chain, &b_roots, &name("b.test"))
            .expect_err("b.test's own CA did not sign it");
        assert!(
            error.contains("not signed by the CA configured for b.test"),
            "{error}"
        );
    }

    #[test]
    fn plaintext_to_the_federation_port_ends_in_a_handshake_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue_federation_certificate(dir.path(), &name("a.test")).unwrap();
        let (a_chain, a_key) = identity(&a);
        let (addr, reports) =
            accept_one(federation_server_config(a_chain, a_key, &ca(&a), &[]).unwrap());
        let mut socket = TcpStream::connect(addr).unwrap();
        socket.write_all(b"PEER 1 a.test\n").unwrap();
        let error = accepted(&reports).expect_err("plaintext is never a session");
        assert!(!error.is_empty());
        drop(socket);
    }

    #[test]
    fn an_empty_chain_or_no_roots_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue_federation_certificate(dir.path(), &name("a.test")).unwrap();
        let (a_chain, a_key) = identity(&a);
        let roots = ca(&a);
        let error = check_peer_certificate(&[], &roots, &name("a.test")).unwrap_err();
        assert!(error.contains("presented no certificate"), "{error}");
        let error = check_peer_certificate(&a_chain, &[], &name("a.test")).unwrap_err();
        assert!(error.contains("no CA certificate is configured"), "{error}");
        let error =
            federation_server_config(a_chain.clone(), a_key.clone_key(), &[], &[]).unwrap_err();
        assert!(error.to_string().contains("at least one peer"), "{error}");
        assert!(federation_client_config(a_chain, a_key, &[]).is_err());
    }

    #[test]
    fn the_federation_ca_is_made_once_private_and_each_certificate_is_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("federation");
        let first = issue_federation_certificate(&ca_dir, &name("A.Test")).unwrap();
        assert_eq!(first.cert, ca_dir.join("a.test.pem"));
        assert_eq!(first.key, ca_dir.join("a.test.key"));
        assert_eq!(first.ca, ca_dir.join(FEDERATION_CA_CERT));
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca_dir), 0o700);
        assert_eq!(mode(&ca_dir.join(FEDERATION_CA_KEY)), 0o600);
        assert_eq!(mode(&first.key), 0o600);
        let first_ca = fs::read(&first.ca).unwrap();
        let first_key = fs::read(&first.key).unwrap();

        let again = issue_federation_certificate(&ca_dir, &name("a.test")).unwrap();
        assert_eq!(fs::read(&again.ca).unwrap(), first_ca, "the CA is reused");
        assert_ne!(
            fs::read(&again.key).unwrap(),
            first_key,
            "a fresh key each call"
        );
        let (chain, _) = identity(&again);
        assert_eq!(chain.len(), 2, "the certificate, then the CA");
        check_peer_certificate(&chain, &ca(&again), &name("a.test")).unwrap();

        let error = issue_federation_certificate(&ca_dir, &name("federation-ca")).unwrap_err();
        assert!(error.to_string().contains("overwrite"), "{error}");
        assert_eq!(
            fs::read(&first.ca).unwrap(),
            first_ca,
            "the CA is untouched"
        );
    }
}
