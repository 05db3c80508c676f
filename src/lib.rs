//! securechat: a secure terminal chat — a TLS server and a terminal client, with
//! end-to-end encrypted private messages.
//!
//! The layers, from the wire up (each module opens with what it is for):
//!
//! | module | concern |
//! |---|---|
//! | [`frame`] | splitting bytes into line frames; pure, no I/O |
//! | [`protocol`] | what each frame means, both directions (spec: `report/protocol.md`) |
//! | [`connection`] | a TLS stream one thread reads while another writes |
//! | [`outbox`] | a client's outbound queue, bounded in bytes |
//! | [`router`] | the thread that owns who is online and routes frames |
//! | [`session`] | one client connection on the server: reader and writer threads |
//! | [`server`] | limits, accept loop, admission, shutdown |
//! | [`tls`] | TLS policy for both ends; the development CA |
//! | [`accounts`] | user-name rule, bcrypt, bounded bcrypt work |
//! | [`password`] | the password policy, shared by server and client |
//! | [`throttle`] | brute-force and flood defences: login back-off, registration and frame rates |
//! | [`store`] | the SQLite account database |
//! | [`e2e`] | end-to-end encryption: signed Diffie-Hellman, keys, AEAD, pinned keys |
//! | [`files`] | private (0600) files written atomically |
//! | [`logging`] | timestamped stderr logging |
//! | [`client`] | the client: connection, terminal interface, end-to-end layer |
//!
//! The binaries in `src/bin/` only parse arguments and call into these modules.

pub mod accounts;
pub mod client;
pub mod connection;
pub mod e2e;
pub mod error;
pub mod files;
pub mod frame;
pub mod logging;
pub mod outbox;
pub mod password;
pub mod protocol;
pub mod router;
pub mod server;
pub mod session;
pub mod store;
pub mod throttle;
pub mod tls;

pub use error::{Error, Result};
