//! TLS configuration for both ends, and the development PKI the server makes on first start.
//!
//! One policy, built once and shared in an `Arc`: rustls's aws-lc-rs provider, TLS 1.3 and
//! 1.2 only, forward-secret AEAD cipher suites only, and the hybrid post-quantum
//! X25519MLKEM768 key exchange offered first (classical X25519 and the NIST curves follow
//! for peers that lack it).
//!
//! The development PKI is a private CA plus a server certificate for `localhost` and
//! `127.0.0.1`, written to `certs/` so that `cargo run --bin server` works on a fresh
//! clone and the client, started from the same directory, trusts it. Real deployments pass
//! `--cert`/`--key` instead and clients use the public web PKI.

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
    /// What happened: "created", "reissued server certificate", or "reused".
    pub action: &'static str,
}

/// Makes sure `dir` holds a development CA and a current server certificate for
/// `localhost` and `127.0.0.1`, creating or renewing them as needed.
pub fn ensure_dev_certificates(dir: &Path) -> Result<DevCertificates> {
    files::create_private_dir(dir).map_err(|e| {
        Error::Config(format!(
            "cannot create certificate directory {}: {e}",
            dir.display()
        ))
    })?;
    let ca_cert = dir.join(DEV_CA_CERT);
    let ca_key = dir.join(DEV_CA_KEY);
    let cert = dir.join(DEV_SERVER_CERT);
    let key = dir.join(DEV_SERVER_KEY);

    let mut action = "reused";
    let ca_key_pair = if ca_cert.exists() && ca_key.exists() {
        files::check_private(&ca_key)?;
        let pem = fs::read_to_string(&ca_key)?;
        rcgen::KeyPair::from_pem(&pem).map_err(|e| {
            Error::Config(format!(
                "{} is not a usable CA key ({e}); delete {} to make a new development PKI",
                ca_key.display(),
                dir.display()
            ))
        })?
    } else {
        let key_pair = generate_key()?;
        let ca = ca_params()?.self_signed(&key_pair).map_err(rcgen_error)?;
        files::write_atomically(&ca_key, key_pair.serialize_pem().as_bytes())?;
        fs::write(&ca_cert, ca.pem())?;
        // A new CA invalidates any old server certificate.
        let _ = fs::remove_file(&cert);
        action = "created";
        key_pair
    };

    if needs_reissue(&cert) || !key.exists() {
        let server_key = generate_key()?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(rcgen_error)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, DEV_SERVER_LIFETIME_DAYS);
        let issuer = rcgen::Issuer::new(ca_params()?, &ca_key_pair);
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
    })
}

/// The development CA's parameters. Deterministic (the key identifier is derived from the
/// key), so the saved key alone is enough to issue certificates that chain to the saved CA.
fn ca_params() -> Result<rcgen::CertificateParams> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
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
    use std::os::unix::fs::PermissionsExt;

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
}
