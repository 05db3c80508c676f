//! TLS configuration for both ends, and the development PKI the server makes on first start.
//!
//! One policy, built once and shared in an `Arc`: rustls's aws-lc-rs provider, TLS 1.3 and
//! 1.2 only, forward-secret AEAD cipher suites only, and the hybrid post-quantum
//! X25519MLKEM768 key exchange offered first (classical X25519 and the NIST curves follow
//! for peers that lack it).
//!
//! The development PKI is a private CA plus a server certificate for `localhost`,
//! `127.0.0.1`, `::1` and any `--hostname` the server is given, written to `certs/` so that
//! `cargo run --bin server` works on a fresh clone and the client, started from the same
//! directory, trusts it. Real deployments pass `--cert`/`--key` instead and clients use the
//! public web PKI.
//!
//! The development CA is tied to the server it was made for: it carries X.509 name
//! constraints permitting exactly the names it certifies (DNS names and single IP
//! addresses), and rustls (webpki) enforces them. So a `certs/ca.pem` that a client picks
//! up from its working directory vouches for those names only, never for `example.com`,
//! whoever holds `ca.key`. A CA without constraints (made by an older version) or made for
//! other names is replaced by a new one, with a new key, at server start; the log says so.
//!
//! The server-to-server port has its own configurations, mutual authentication and a
//! separate, unconstrained development federation CA: see [`federation`].

pub mod federation;
pub mod stream;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::aws_lc_rs::{self as provider, cipher_suite, kx_group};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::{Error, Result};
use crate::files;

/// File names inside the development certificate directory.
pub const DEV_CA_CERT: &str = "ca.pem";
const DEV_CA_KEY: &str = "ca.key";
const DEV_SERVER_CERT: &str = "server.pem";
const DEV_SERVER_KEY: &str = "server.key";

/// Lifetime of a development server certificate. Mozilla's intermediate profile (which the
/// CI scan checks) wants server certificates valid for at most 366 days.
const DEV_SERVER_LIFETIME_DAYS: u64 = 365;

/// Reissue the development server certificate once it is this old, well before it expires.
const DEV_SERVER_RENEW_AFTER_DAYS: u64 = 300;

/// Lifetime of the development CA: long, because every client trusts it by file.
const DEV_CA_LIFETIME_DAYS: u64 = 10 * 365;

/// Subject of the development CA. Constant, so the server certificate can be reissued from
/// the saved CA key without parsing the CA certificate.
const DEV_CA_NAME: &str = "securechat development CA";

/// The names the development CA and certificate were issued for, one a line: compared at
/// start to decide whether they must be made again (and absent for an older, unconstrained
/// CA, which is then replaced).
const DEV_NAMES_FILE: &str = "names";

/// Names every development certificate covers, whatever `--hostname` adds.
pub const DEV_DEFAULT_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// The crypto policy shared by server and client: aws-lc-rs, AEAD suites with forward
/// secrecy only, hybrid post-quantum key exchange preferred.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        // Every suite here is ECDHE (or TLS 1.3) with an AEAD: no CBC, no static RSA.
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
            kx_group::SECP384R1,
        ],
        ..provider::default_provider()
    })
}

/// The protocol versions both ends accept.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Builds the server configuration from a certificate chain and its private key.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>> {
    let config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Reads a PEM certificate chain (leaf first) and a PEM private key.
pub fn load_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = load_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        Error::Config(format!(
            "cannot read a private key from {}: {e}",
            key.display()
        ))
    })?;
    Ok((chain, key))
}

/// Reads every certificate in a PEM file; an empty or unreadable file is an error.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let unreadable =
        |e: &dyn std::fmt::Display| Error::Config(format!("cannot read {}: {e}", path.display()));
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(&e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    if chain.is_empty() {
        return Err(Error::Config(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(chain)
}

/// The client configuration: the public web PKI (webpki-roots) plus, if given, the CAs in
/// `extra_ca` (the development CA). Honours `SSLKEYLOGFILE` for debugging with Wireshark.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for cert in load_certificates(path)? {
            roots.add(cert).map_err(|e| {
                Error::Config(format!("{} is not a usable CA: {e}", path.display()))
            })?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Writes TLS secrets only when SSLKEYLOGFILE is set, as curl and browsers do.
    config.key_log = Arc::new(rustls::KeyLogFile::new());
    Ok(Arc::new(config))
}

/// The SHA-256 fingerprint of a DER certificate, as colon-separated hex (the format
/// `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What a failed TLS handshake means for the user, in words that say what to do. A
/// certificate made for other names lists the names it holds (escaped: they come from the
/// peer) and the two ways out.
pub fn explain_handshake_error(server: &str, error: &rustls::Error) -> String {
    use rustls::CertificateError;
    match error {
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            presented,
            ..
        }) => {
            let names: Vec<String> = presented.iter().map(|name| presented_name(name)).collect();
            format!(
                "the certificate of {server} is not valid for that name: it is for {}. Reach \
                 the server by one of those names (--server NAME:PORT), or restart the server \
                 with --hostname for the name you use (a development certificate), then copy \
                 its new certs/ca.pem. Never disable verification.",
                names.join(", ")
            )
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the certificate of {server} is signed by a CA this client does not trust. For a \
             development server, pass its CA with --ca FILE (the server prints where it is and \
             its fingerprint); never disable verification."
        ),
        rustls::Error::InvalidCertificate(CertificateError::Other(other))
            if other.to_string().contains("NameConstraintViolation") =>
        {
            format!(
                "the certificate of {server} is refused: the CA that signed it may certify \
                 only the names it was made for, and this is not one of them (a development CA \
                 cannot vouch for other servers). Never disable verification."
            )
        }
        other => format!("TLS with {server} failed: {other}. Never disable verification."),
    }
}

/// One name as rustls reports it (`DnsName("host")`, `IpAddress(127.0.0.1)`), as the user
/// would type it, with anything unprintable escaped: the names come from the peer.
fn presented_name(presented: &str) -> String {
    let inner = ["DnsName(", "IpAddress("]
        .iter()
        .find_map(|prefix| presented.strip_prefix(prefix))
        .and_then(|rest| rest.strip_suffix(')'))
        .map(|name| name.trim_matches('"'))
        .unwrap_or(presented);
    inner
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() {
                c.to_string()
            } else {
                c.escape_default().to_string()
            }
        })
        .collect()
}

/// Where the development PKI lives and what was done to it at start-up.
#[derive(Debug)]
pub struct DevCertificates {
    /// The server certificate chain file (leaf, then CA).
    pub cert: PathBuf,
    /// The server private key file (mode 0600).
    pub key: PathBuf,
    /// The CA certificate clients must trust.
    pub ca: PathBuf,
    /// SHA-256 fingerprint of the CA certificate, for users to check out of band.
    pub ca_fingerprint: String,
    /// What happened: "created", "reused", "reissued server certificate", or why the CA
    /// was made again.
    pub action: &'static str,
    /// The names (DNS names and addresses) the certificate and the CA's constraints hold.
    pub names: Vec<String>,
}

/// [`ensure_dev_certificates_for`] with only the [`DEV_DEFAULT_NAMES`].
pub fn ensure_dev_certificates(dir: &Path) -> Result<DevCertificates> {
    ensure_dev_certificates_for(dir, &[])
}

/// Creates a development CA's directory (owner-only) if needed and takes its lock: two
/// servers (or issuers) started at once on one directory would each make a CA and overwrite
/// the other's files; they take turns, and the second reuses what the first made.
fn open_ca_dir(dir: &Path, what: &str) -> Result<files::DirLock> {
    files::create_private_dir(dir)
        .map_err(|e| Error::Config(format!("cannot create the {what} {}: {e}", dir.display())))?;
    Ok(files::lock_dir(dir)?)
}

/// A development CA's private key from `path`, which must be owner-only; `remedy` says
/// what to do when it cannot be read as a key.
fn load_ca_key(path: &Path, remedy: &str) -> Result<rcgen::KeyPair> {
    files::check_private(path)?;
    let pem = fs::read_to_string(path)?;
    rcgen::KeyPair::from_pem(&pem).map_err(|e| {
        Error::Config(format!(
            "{} is not a usable CA key ({e}); {remedy}",
            path.display()
        ))
    })
}

/// Makes sure `dir` holds a development CA, name-constrained to [`DEV_DEFAULT_NAMES`] plus
/// `hostnames`, and a current server certificate for those names, creating, renewing or
/// replacing them as needed.
pub fn ensure_dev_certificates_for(dir: &Path, hostnames: &[String]) -> Result<DevCertificates> {
    let names = dev_names(hostnames)?;
    let _lock = open_ca_dir(dir, "certificate directory")?;
    let ca_cert = dir.join(DEV_CA_CERT);
    let ca_key = dir.join(DEV_CA_KEY);
    let cert = dir.join(DEV_SERVER_CERT);
    let key = dir.join(DEV_SERVER_KEY);

    let names_file = dir.join(DEV_NAMES_FILE);
    let issued_for = fs::read_to_string(&names_file).ok();
    let ca_exists = ca_cert.exists() && ca_key.exists();
    let mut action = "reused";
    let ca_key_pair = if ca_exists && issued_for.as_deref() == Some(&names_text(&names)) {
        load_ca_key(
            &ca_key,
            &format!("delete {} to make a new development PKI", dir.display()),
        )?
    } else {
        // A new key too: copies of an old CA (unconstrained, or for other names) must stop
        // vouching for anything this server issues from now on.
        let key_pair = generate_key()?;
        let ca = ca_params(&names)?
            .self_signed(&key_pair)
            .map_err(rcgen_error)?;
        files::write_atomically(&ca_key, key_pair.serialize_pem().as_bytes())?;
        fs::write(&ca_cert, ca.pem())?;
        fs::write(&names_file, names_text(&names))?;
        // A new CA invalidates any old server certificate.
        let _ = fs::remove_file(&cert);
        action = match (ca_exists, issued_for) {
            (false, _) => "created",
            (true, None) => {
                "made a new CA with a new key: the old one had no name constraints; clients \
                 need the new ca.pem"
            }
            (true, Some(_)) => {
                "made a new CA with a new key for a new set of names; clients need the new ca.pem"
            }
        };
        key_pair
    };

    if action != "reused" || needs_reissue(&cert) || !key.exists() {
        let server_key = generate_key()?;
        let mut params = rcgen::CertificateParams::new(names.clone()).map_err(rcgen_error)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, DEV_SERVER_LIFETIME_DAYS);
        let issuer = rcgen::Issuer::new(ca_params(&names)?, &ca_key_pair);
        let leaf = params
            .signed_by(&server_key, &issuer)
            .map_err(rcgen_error)?;
        files::write_atomically(&key, server_key.serialize_pem().as_bytes())?;
        let ca_pem = fs::read_to_string(&ca_cert)?;
        fs::write(&cert, format!("{}{}", leaf.pem(), ca_pem))?;
        if action == "reused" {
            action = "reissued server certificate";
        }
    }
    files::check_private(&key)?;

    let ca_der = load_certificates(&ca_cert)?;
    Ok(DevCertificates {
        ca_fingerprint: fingerprint(&ca_der[0]),
        cert,
        key,
        ca: ca_cert,
        action,
        names,
    })
}

/// The default names and `hostnames`, each checked to be a DNS name or an IP address, in
/// order, without repeats.
fn dev_names(hostnames: &[String]) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for name in DEV_DEFAULT_NAMES
        .iter()
        .map(|name| (*name).to_owned())
        .chain(hostnames.iter().map(|name| name.to_ascii_lowercase()))
    {
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            return Err(Error::Config(format!(
                "--hostname {}: not a host name or IP address",
                name.escape_default()
            )));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// The names file's contents for `names`.
fn names_text(names: &[String]) -> String {
    names.iter().map(|name| format!("{name}\n")).collect()
}

/// The development CA's parameters for `names`. Deterministic (the key identifier is derived
/// from the key), so the saved key alone is enough to issue certificates that chain to the
/// saved CA. Its name constraints permit exactly `names`: each DNS name (and names below
/// it) and each address alone. There is always an address among them, so no address is
/// left unconstrained.
fn ca_params(names: &[String]) -> Result<rcgen::CertificateParams> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.name_constraints = Some(rcgen::NameConstraints {
        permitted_subtrees: names
            .iter()
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_addr_prefix(
                    ip,
                    if ip.is_ipv4() { 32 } else { 128 },
                )),
                Err(_) => rcgen::GeneralSubtree::DnsName(name.clone()),
            })
            .collect(),
        excluded_subtrees: Vec::new(),
    });
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, DEV_CA_NAME);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "securechat");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, DEV_CA_LIFETIME_DAYS);
    Ok(params)
}

/// Valid from an hour ago (clock skew) for `days` days.
fn set_validity(params: &mut rcgen::CertificateParams, days: u64) {
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(days * 86_400)).into();
}

/// Whether the server certificate is missing or old enough to renew (judged by file age,
/// which is when it was issued).
fn needs_reissue(cert: &Path) -> bool {
    let age = fs::metadata(cert)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    match age {
        Some(age) => age > Duration::from_secs(DEV_SERVER_RENEW_AFTER_DAYS * 86_400),
        None => true,
    }
}

/// A new ECDSA P-256 key: small, fast, and what Mozilla's profiles recommend.
fn generate_key() -> Result<rcgen::KeyPair> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_error)
}

fn rcgen_error(e: rcgen::Error) -> Error {
    Error::Config(format!("cannot create the development certificates: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn servers_started_at_once_on_one_directory_share_one_development_ca() {
        let dir = tempfile::tempdir().unwrap();
        let starts = 8;
        let barrier = std::sync::Barrier::new(starts);
        let made: Vec<DevCertificates> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..starts)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        ensure_dev_certificates_for(dir.path(), &[]).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // One CA, made once: every start reports it, and the server certificate on disk
        // carries it (a start that made its own CA over another's would break this).
        assert_eq!(made.iter().filter(|m| m.action == "created").count(), 1);
        let on_disk = load_certificates(&dir.path().join(DEV_CA_CERT)).unwrap();
        for m in &made {
            assert_eq!(m.ca_fingerprint, fingerprint(&on_disk[0]));
        }
        let chain = load_certificates(&dir.path().join(DEV_SERVER_CERT)).unwrap();
        assert_eq!(chain.last(), on_disk.first(), "the server certificate's CA");
    }

    #[test]
    fn dev_pki_is_created_once_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_dev_certificates(dir.path()).unwrap();
        assert_eq!(first.action, "created");
        for key in [&first.key, &dir.path().join(DEV_CA_KEY)] {
            let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let second = ensure_dev_certificates(dir.path()).unwrap();
        assert_eq!(second.action, "reused");
        assert_eq!(first.ca_fingerprint, second.ca_fingerprint);
        let (chain, key) = load_identity(&second.cert, &second.key).unwrap();
        assert_eq!(chain.len(), 2, "leaf and CA");
        server_config(chain, key).unwrap();
    }

    #[test]
    fn a_missing_server_certificate_is_reissued_under_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_dev_certificates(dir.path()).unwrap();
        fs::remove_file(&first.cert).unwrap();
        let second = ensure_dev_certificates(dir.path()).unwrap();
        assert_eq!(second.action, "reissued server certificate");
        assert_eq!(first.ca_fingerprint, second.ca_fingerprint);
    }

    #[test]
    fn an_empty_certificate_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        fs::write(&path, "").unwrap();
        let err = load_certificates(&path).unwrap_err().to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }

    #[test]
    fn the_policy_prefers_hybrid_post_quantum_key_exchange() {
        // Every group, in order: the hybrid first, then the classical fallbacks.
        let provider = crypto_provider();
        let names: Vec<_> = provider.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(
            names,
            [
                rustls::NamedGroup::X25519MLKEM768,
                rustls::NamedGroup::X25519,
                rustls::NamedGroup::secp256r1,
                rustls::NamedGroup::secp384r1,
            ]
        );
    }

    /// A certificate for `name` signed with the development CA's key in `dir`, as whoever
    /// holds `ca.key` could make one, and whether a client trusting `ca.pem` accepts it.
    fn forged_certificate_is_accepted(dir: &Path, names: &[String], name: &str) -> bool {
        let ca_key =
            rcgen::KeyPair::from_pem(&fs::read_to_string(dir.join(DEV_CA_KEY)).unwrap()).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, 30);
        let issuer = rcgen::Issuer::new(ca_params(names).unwrap(), &ca_key);
        let leaf = params.signed_by(&generate_key().unwrap(), &issuer).unwrap();
        let mut roots = RootCertStore::empty();
        for cert in load_certificates(&dir.join(DEV_CA_CERT)).unwrap() {
            roots.add(cert).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crypto_provider(),
        )
        .build()
        .unwrap();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        verifier
            .verify_server_cert(
                leaf.der(),
                &[],
                &server_name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .is_ok()
    }

    #[test]
    fn the_development_ca_vouches_only_for_the_names_it_was_made_for() {
        let dir = tempfile::tempdir().unwrap();
        let dev = ensure_dev_certificates_for(dir.path(), &["laptop.local".to_owned()]).unwrap();
        assert_eq!(dev.names, ["localhost", "127.0.0.1", "::1", "laptop.local"]);
        for name in ["localhost", "laptop.local", "127.0.0.1"] {
            assert!(
                forged_certificate_is_accepted(dir.path(), &dev.names, name),
                "{name}"
            );
        }
        for name in [
            "example.com",
            "accounts.google.com",
            "10.0.0.1",
            "laptop.local.evil",
        ] {
            assert!(
                !forged_certificate_is_accepted(dir.path(), &dev.names, name),
                "a development CA must not vouch for {name}"
            );
        }
    }

    #[test]
    fn an_unconstrained_ca_is_replaced_and_a_new_hostname_reissues_everything() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_dev_certificates(dir.path()).unwrap();
        // An older version's PKI: the same files, no record of names, no constraints.
        fs::remove_file(dir.path().join(DEV_NAMES_FILE)).unwrap();
        let replaced = ensure_dev_certificates(dir.path()).unwrap();
        assert!(
            replaced.action.contains("no name constraints"),
            "{}",
            replaced.action
        );
        assert_ne!(first.ca_fingerprint, replaced.ca_fingerprint);
        let again = ensure_dev_certificates(dir.path()).unwrap();
        assert_eq!(again.action, "reused");

        let wider = ensure_dev_certificates_for(dir.path(), &["Other.Test".to_owned()]).unwrap();
        assert!(
            wider.action.contains("new set of names"),
            "{}",
            wider.action
        );
        assert!(wider.names.contains(&"other.test".to_owned()));
        let (chain, _) = load_identity(&wider.cert, &wider.key).unwrap();
        let server_name = rustls::pki_types::ServerName::try_from("other.test").unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(chain[1].clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crypto_provider(),
        )
        .build()
        .unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &[],
                &server_name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("the reissued certificate holds the new name");
        assert!(ensure_dev_certificates_for(dir.path(), &["bad name".to_owned()]).is_err());
    }

    #[test]
    fn a_name_mismatch_lists_the_certificate_names_escaped_and_what_to_do() {
        let error =
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
                expected: rustls::pki_types::ServerName::try_from("laptop.local").unwrap(),
                presented: vec!["localhost".to_owned(), "evil\u{1b}]52;c;x\u{7}".to_owned()],
            });
        let text = explain_handshake_error("laptop.local:7878", &error);
        assert!(text.contains("it is for localhost, evil"), "{text}");
        assert!(text.contains("--hostname"), "{text}");
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text}"
        );
    }
}
