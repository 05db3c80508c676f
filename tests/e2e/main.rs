//! The end-to-end layer's security claims, each tested against the attack it is meant to
//! stop: the server (or anyone between the clients) must never read a private message, and
//! must not get one read or accepted under a key, a value or a counter of its choosing.
//!
//! Three kinds of harness, from the outside in, one file each (with the tests that use it):
//! - `binaries.rs`: the real `server` and `client` binaries, to look at everything the server
//!   keeps (its database and its log) after a conversation;
//! - `party.rs`, [`Party`]: the client library (`EndToEnd`, the client's end-to-end state machine) over
//!   real TLS to an in-process server, where the test sees every payload as routed and can
//!   rewrite the server's database underneath;
//! - `relay.rs`, [`Relay`]: two `EndToEnd` state machines joined by the test itself playing a malicious
//!   server, which alters, replays, reorders and reflects payloads;
//! - `first_contact.rs`, [`Mallory`]: the [`Relay`] with a server that substitutes both keys at
//!   first contact and runs its own exchange with each side, the attack that works until the
//!   users compare safety numbers (`cargo test --test e2e first_contact -- --nocapture`
//!   narrates it).
//! - `stolen_mailbox.rs`: offline delivery's mailbox file copied from a client, against
//!   the payloads the server relayed (forward secrecy and healing on the real file).

mod binaries;
#[path = "../common/mod.rs"]
mod common;
mod first_contact;
mod party;
mod relay;
mod stolen_mailbox;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use num_bigint::BigUint;
use regex::Regex;
use rexpect::session::StreamSession;

use common::{contains, files_under, ok, ServerProcess, TestClient, TestServer, PASSWORD, WAIT};
use securechat::client::end_to_end::{Action, EndToEnd, Notice, CONSENT_DELAY, EXCHANGE_TIMEOUT};
use securechat::client::screen::{private_label, ROOM_LABEL};
use securechat::e2e::{
    safety_number, EphemeralSecret, Group, IdentityKey, IdentityPublicKey, Payload, PinStatus,
    PinStore, Trust,
};
use securechat::protocol::ServerLine;

/// How long one poll of a connection waits before trying the other one.
const POLL: Duration = Duration::from_millis(20);

/// The group the library-driven clients start exchanges in: the smaller one, for speed.
const GROUP: Group = Group::Ffdhe2048;

/// Label of a private message under a key pinned on first use, as the client prints it.
fn first_use_label() -> String {
    private_label(Trust::FirstUse)
}

/// The texts of the private messages among `notices`, as shown received.
fn received_texts(notices: &[Notice]) -> Vec<&str> {
    notices
        .iter()
        .filter_map(|notice| match notice {
            Notice::Received { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// Whether one of `notices` is a warning that contains every one of `parts`.
fn warns(notices: &[Notice], parts: &[&str]) -> bool {
    notices.iter().any(|notice| {
        matches!(notice, Notice::Warning(text) if parts.iter().all(|part| text.contains(part)))
    })
}

/// The 12 groups of 5 digits in a safety-number notice for `user` among `notices`.
fn shown_safety_number(notices: &[Notice], user: &str) -> Option<String> {
    let pattern = Regex::new(&format!(
        r"safety number with {user}: ((?:\d{{5}} ){{11}}\d{{5}})"
    ))
    .expect("test regex");
    notices.iter().find_map(|notice| match notice {
        Notice::Info(text) => pattern.captures(text).map(|c| c[1].to_owned()),
        _ => None,
    })
}

fn is_e2e_message(payload: &str) -> bool {
    payload.starts_with("E2E ")
}
