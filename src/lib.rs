//! securechat: a secure terminal chat — a TLS server and a terminal client, with
//! end-to-end encrypted private messages.
//!
//! The layers, from the wire up (each module opens with what it is for). Imports point
//! one way: the binaries use `server` and `client`; those use `tls` and `protocol`;
//! `protocol` uses nothing else in the crate.
//!
//! | module | concern |
//! |---|---|
//! | [`protocol`] | every frame, both directions: requests and server lines parsed and encoded in one place; [`protocol::frame`] splits bytes into lines; [`protocol::name`] is the user-name rule (spec: `report/protocol.md`); pure, no I/O |
//! | [`tls`] | TLS policy for both ends, the development CA, and [`tls::stream`]: a TLS stream one thread reads while another writes |
//! | [`server`] | the server, one file per role: accept loop and shutdown, limits, admission, a connection's life, requests, the router, outboxes and their writers, accounts, throttles, the room's history, the SQLite store (the threads, sockets and locks table opens `src/server/mod.rs`) |
//! | [`password`] | the password policy, shared by server and client |
//! | [`rate`] | the token bucket: the server's frame limit and the client's pacing |
//! | [`client`] | the client: connection, terminal interface, end-to-end layer, offline delivery |
//! | [`e2e`] | end-to-end encryption: signed Diffie-Hellman, keys, AEAD, pinned keys |
//! | [`files`] | private (0600) files written atomically |
//! | [`logging`] | timestamped stderr logging (env_logger) for the binaries |
//! | [`error`] | the crate's error type |
//!
//! The binaries in `src/bin/` only parse arguments and call into these modules.

pub mod client;
pub mod e2e;
pub mod error;
pub mod files;
pub mod logging;
pub mod password;
pub mod protocol;
pub mod rate;
pub mod server;
mod sync;
pub mod tls;

pub use error::{Error, Result};
