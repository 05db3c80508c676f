//! What a client's request does when it names a user of another server (`bob@b.test`):
//! the federated half of `requests.rs`.
//!
//! - `MSG` to another server is answered `ERR MSG offline`: private messages across servers
//!   always travel as offline messages (durable, acknowledged hop by hop), and the client
//!   turns to `SEND` on that answer as it does for a local user who is away.
//! - `SEND` is committed to the peer's queue in the store before `STATUS … queued`; the
//!   peer's connector is woken to relay it.
//! - `GETKEY`, `BUNDLE` and `LIST <server>` are asked of the peer while the client's reader
//!   waits (only that client waits, at most the query deadline); the answer names the user
//!   by full address, so the client keys pins and sessions on it.
//! - A server this one is not linked with gets `unreachable` (or `refused no-such-server`
//!   for a `SEND`); so does a linked peer that is down, for queries that need it now.

use super::history::unix_now;
use super::requests::{storage_error, RequestHandler, Step};
use super::router::Routed;
use super::store::Enqueued;
use crate::protocol::name::{Address, ServerName, UserName};
use crate::protocol::peer::{PeerReply, PeerRequest};
use crate::protocol::{Command, DeliveryState, ErrorCode, ProtocolError, Refusal, ServerLine};

/// Where a name with an `@` points.
pub(super) enum Away {
    /// `user@<this server>`: the local user.
    Home(UserName),
    /// A user of a linked server.
    Peer {
        /// The peer.
        peer: ServerName,
        /// The full address, as replies show it.
        address: Address,
    },
    /// A user of a server this one is not linked with (or any address, when this server
    /// does not federate).
    Unlinked(String),
}

impl RequestHandler {
    /// Where `to` points if it is a full address; `None` for a bare name (or text that is
    /// no address at all), which takes the local path and its checks.
    pub(super) fn away(&self, to: &str) -> Option<Away> {
        if !to.contains('@') {
            return None;
        }
        let address = Address::parse(to).ok()?;
        let Some(federation) = &self.context.federation else {
            return Some(Away::Unlinked(address.to_string()));
        };
        Some(match address.relative_to(federation.name()).server {
            None => Away::Home(address.user),
            Some(peer) if federation.is_linked(&peer) => Away::Peer { peer, address },
            Some(_) => Away::Unlinked(address.to_string()),
        })
    }

    /// `ERR <command> unreachable <address> …`.
    fn unreachable(&mut self, command: Command, address: &str, why: &str) -> Step {
        self.reply_error(&ProtocolError::new(
            command,
            ErrorCode::Unreachable,
            format!("{address} {why}"),
        ))
    }

    /// `ERR <command> unreachable <address> …` for a user of a server this one is not
    /// linked with.
    pub(super) fn unlinked(&mut self, command: Command, address: &str) -> Step {
        self.unreachable(
            command,
            address,
            "is on a server this server is not linked with",
        )
    }

    /// `MSG` to another server: the client should send it as an offline message.
    pub(super) fn remote_msg(&mut self, away: &Away) -> Step {
        match away {
            Away::Home(_) => Step::Continue,
            Away::Peer { address, .. } => self.reply_error(&ProtocolError::new(
                Command::Msg,
                ErrorCode::Offline,
                format!(
                    "{address} is on another server: private messages to other servers travel as offline messages (SEND)"
                ),
            )),
            Away::Unlinked(address) => self.unlinked(Command::Msg, address),
        }
    }

    /// Asks `peer` and maps a `FAIL` or no answer to `ERR <command> …`.
    fn ask(
        &mut self,
        command: Command,
        peer: &ServerName,
        address: &Address,
        request: PeerRequest,
    ) -> Result<PeerReply, Step> {
        let Some(federation) = self.context.federation.clone() else {
            return Err(self.unreachable(command, &address.to_string(), "is on another server"));
        };
        match federation.query(peer, request) {
            Some(PeerReply::Fail { code, text, .. }) => Err(self.reply_error(&ProtocolError::new(
                command,
                code,
                format!("{address} {text}"),
            ))),
            Some(reply) => Ok(reply),
            None => Err(self.unreachable(
                command,
                &address.to_string(),
                &format!("is on {peer}, which cannot be reached now; try again later"),
            )),
        }
    }

    /// `GETKEY user@peer`.
    pub(super) fn remote_get_key(&mut self, peer: &ServerName, address: &Address) -> Step {
        let command = Command::GetKey;
        let request = PeerRequest::GetKey {
            qid: 0,
            user: address.clone(),
        };
        match self.ask(command, peer, address, request) {
            Ok(PeerReply::Key { key, .. }) => self.reply(ServerLine::Ok {
                command,
                detail: format!("{address} {key}"),
            }),
            Ok(_) => self.unreachable(
                command,
                &address.to_string(),
                "got an answer that is no key",
            ),
            Err(step) => step,
        }
    }

    /// `BUNDLE user@peer` (the requester's budget was already charged).
    pub(super) fn remote_bundle(
        &mut self,
        requester: &UserName,
        peer: &ServerName,
        address: &Address,
    ) -> Step {
        let command = Command::Bundle;
        let Some(home) = self.context.federation.as_ref().map(|f| f.name().clone()) else {
            return self.unreachable(command, &address.to_string(), "is on another server");
        };
        let request = PeerRequest::Bundle {
            qid: 0,
            requester: Address {
                user: requester.clone(),
                server: Some(home),
            },
            user: address.clone(),
        };
        match self.ask(command, peer, address, request) {
            Ok(PeerReply::Bundle {
                record, one_time, ..
            }) => self.reply(ServerLine::Bundle {
                user: address.to_string(),
                record,
                one_time,
            }),
            Ok(_) => self.unreachable(
                command,
                &address.to_string(),
                "got an answer that is no bundle",
            ),
            Err(step) => step,
        }
    }

    /// `SEND user@peer ref payload`: committed to the peer's queue, then relayed.
    pub(super) fn remote_send(
        &mut self,
        user: &UserName,
        away: &Away,
        reference: &str,
        payload: &str,
    ) -> Step {
        let status = |state, to: String| ServerLine::Status {
            reference: reference.to_owned(),
            state,
            user: to,
        };
        let (peer, address) = match away {
            Away::Home(_) => return Step::Continue,
            Away::Unlinked(address) => {
                return self.reply(status(
                    DeliveryState::Refused(Refusal::NoSuchServer),
                    address.clone(),
                ))
            }
            Away::Peer { peer, address } => (peer, address),
        };
        let Some(federation) = self.context.federation.clone() else {
            return self.reply(status(
                DeliveryState::Refused(Refusal::NoSuchServer),
                address.to_string(),
            ));
        };
        let stored = self.store().enqueue_for_peer(
            user,
            peer,
            &address.user,
            reference,
            payload,
            unix_now(),
            federation.queue_max_bytes(),
        );
        let state = match stored {
            Ok(Enqueued::Queued(id) | Enqueued::AlreadyQueued(id)) => DeliveryState::Queued { id },
            Ok(Enqueued::Resolved(outcome)) => super::mailbox::final_state(outcome),
            Ok(Enqueued::NoSuchUser) => DeliveryState::Refused(Refusal::NoSuchUser),
            Ok(Enqueued::Quota) => DeliveryState::Refused(Refusal::Quota),
            Err(e) => {
                log::error!("conn#{}: message for {address} not stored: {e}", self.id);
                return self.reply_error(&storage_error(Command::Send));
            }
        };
        let step = self.reply(status(state, address.to_string()));
        federation.wake(peer);
        step
    }

    /// `LIST <server>`: who is online on a linked server that shares it.
    pub(super) fn remote_list(&mut self, server: &str) -> Step {
        let command = Command::List;
        let linked = ServerName::parse(server)
            .ok()
            .zip(self.context.federation.clone());
        let (peer, federation) = match linked {
            Some((name, federation)) if name == *federation.name() => {
                self.route(Routed::List);
                return Step::Continue;
            }
            Some((name, federation)) if federation.is_linked(&name) => (name, federation),
            _ => {
                let shown = crate::protocol::truncate(server, 253).to_owned();
                return self.unreachable(
                    command,
                    &shown,
                    "is not a server this server is linked with",
                );
            }
        };
        if !federation.shares_presence(&peer) {
            return self.unreachable(
                command,
                peer.as_str(),
                "does not share who is online there (or cannot be reached now)",
            );
        }
        match federation.query(&peer, PeerRequest::List { qid: 0 }) {
            Some(PeerReply::List { total, names, .. }) => {
                let names: Vec<String> = names
                    .iter()
                    .filter_map(|n| UserName::parse(n).ok())
                    .map(|user| {
                        Address {
                            user,
                            server: Some(peer.clone()),
                        }
                        .to_string()
                    })
                    .collect();
                self.reply(ServerLine::Ok {
                    command,
                    detail: format!("{total} {}", names.join(" ")),
                })
            }
            Some(PeerReply::Fail { text, .. }) => self.unreachable(command, peer.as_str(), &text),
            _ => self.unreachable(
                command,
                peer.as_str(),
                "cannot be reached now; try again later",
            ),
        }
    }
}
