//! The crate-wide error type.
//!
//! Ordinary outcomes that callers branch on (a rejected password, a clean close) have their
//! own small enums next to the code that produces them; this type is for failures that end
//! an operation: I/O, TLS, storage, configuration, the end-to-end layer. Every variant renders
//! as a sentence a user can act on.

use std::fmt;
use std::io;

use crate::e2e::E2eError;

/// A failure that ends the current operation.
#[derive(Debug)]
pub enum Error {
    /// A socket or file operation failed.
    Io(io::Error),
    /// The TLS layer refused the peer or the configuration.
    Tls(rustls::Error),
    /// The account database failed.
    Storage(rusqlite::Error),
    /// A setting or a file given by the user is unusable; the text says which and why.
    Config(String),
    /// The peer broke the protocol; the text says how.
    Protocol(String),
    /// The end-to-end layer failed: an identity key or pin file, a key exchange, a message.
    /// Kept typed (not flattened into text) so callers can still tell, say, a refused key file
    /// from a forged signature.
    E2e(E2eError),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Tls(e) => write!(f, "TLS error: {e}"),
            Error::Storage(e) => write!(f, "database error: {e}"),
            Error::Config(msg) => f.write_str(msg),
            Error::Protocol(msg) => write!(f, "protocol error: {msg}"),
            // Already a sentence that names its subject ("identity key file: …").
            Error::E2e(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Tls(e) => Some(e),
            Error::Storage(e) => Some(e),
            Error::E2e(e) => Some(e),
            Error::Config(_) | Error::Protocol(_) => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Error {
        Error::Tls(e)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::Storage(e)
    }
}

impl From<E2eError> for Error {
    fn from(e: E2eError) -> Error {
        Error::E2e(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn end_to_end_errors_stay_typed_and_keep_their_words() {
        let error = Error::from(E2eError::BadSignature);
        assert!(matches!(error, Error::E2e(E2eError::BadSignature)));
        assert_eq!(error.to_string(), E2eError::BadSignature.to_string());
        let source = error.source().map(ToString::to_string);
        assert_eq!(source, Some(E2eError::BadSignature.to_string()));
    }
}
