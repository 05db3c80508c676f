//! The logged-in client: turns what the user types into requests, and what the server
//! sends into lines on the screen, with the end-to-end layer in between for private
//! messages. Single-threaded: the terminal code feeds it events one at a time.

use std::time::Instant;

use crate::client::commands::{self, Input, HELP};
use crate::client::link::Link;
use crate::client::screen::{sanitize, Screen};
use crate::client::secure::{Action, Notice, Secure};
use crate::error::Result;
use crate::protocol::{Command, ErrorCode, Request, ServerLine};

/// Label for the public room, shown on every room line.
const ROOM_LABEL: &str = "[room, TLS only - the server can read this]";

/// Label for private messages.
const E2E_LABEL: &str = "[private, end-to-end encrypted]";

/// Whether the session goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// The session is over.
    Quit,
}

/// A logged-in chat session.
pub struct Chat {
    /// Our user name.
    me: String,
    /// Where requests go.
    link: Link,
    /// Where lines go.
    screen: Screen,
    /// The end-to-end layer.
    secure: Secure,
    /// The `/chat` partner plain lines go to; `None` means the public room.
    talking_to: Option<String>,
}

impl Chat {
    /// A chat session for `me` over `link`.
    pub fn new(me: &str, link: Link, screen: Screen, secure: Secure) -> Chat {
        Chat {
            me: me.to_owned(),
            link,
            screen,
            secure,
            talking_to: None,
        }
    }

    /// Publishes our identity key and greets the user.
    pub fn start(&mut self) -> Result<()> {
        let key = self.secure.identity_public().to_base64();
        self.link.send(&Request::SetKey { key: &key })?;
        self.screen.event(&format!(
            "logged in as {}. Plain lines go to the public room {ROOM_LABEL}; /msg USER TEXT is \
             private and end-to-end encrypted. /help lists the commands.",
            self.me
        ));
        Ok(())
    }

    /// Handles one line typed by the user.
    pub fn input(&mut self, line: &str) -> Result<Flow> {
        let input = match commands::parse(line) {
            Ok(input) => input,
            Err(problem) => {
                self.screen.warn(&problem);
                return Ok(Flow::Continue);
            }
        };
        match input {
            Input::Nothing => {}
            Input::Text(text) => match self.talking_to.clone() {
                Some(peer) => self.private(&peer, &text)?,
                None => {
                    self.link.send(&Request::Say { text: &text })?;
                    self.screen
                        .event(&format!("you {ROOM_LABEL}: {}", sanitize(&text)));
                }
            },
            Input::Msg { to, text } => self.private(&to, &text)?,
            Input::Chat(Some(peer)) if peer == self.me => {
                self.screen.warn("you cannot chat with yourself");
            }
            Input::Chat(Some(peer)) => {
                self.screen.event(&format!(
                    "* now talking to {peer} {E2E_LABEL}; /chat alone returns to the room"
                ));
                self.talking_to = Some(peer);
            }
            Input::Chat(None) => {
                self.talking_to = None;
                self.screen
                    .event(&format!("* back in the public room {ROOM_LABEL}"));
            }
            Input::List => self.link.send(&Request::List)?,
            Input::Fingerprint(user) => {
                let actions = self.secure.fingerprint(user.as_deref());
                self.apply(actions)?;
            }
            Input::Verify(user) => {
                let actions = self.secure.verify(&user);
                self.apply(actions)?;
            }
            Input::Accept(user) => {
                let actions = self.secure.accept(&user);
                self.apply(actions)?;
            }
            Input::Explain(user) => {
                let actions = self.secure.explain(&user);
                self.apply(actions)?;
            }
            Input::Help => self.screen.print(HELP),
            Input::Quit => {
                self.link.send(&Request::Quit)?;
                return Ok(Flow::Quit);
            }
        }
        Ok(Flow::Continue)
    }

    fn private(&mut self, to: &str, text: &str) -> Result<()> {
        let actions = self.secure.send_text(to, text);
        self.apply(actions)
    }

    /// Abandons key exchanges that waited too long for an answer, telling the user which
    /// messages were not sent.
    pub fn expire_stalled(&mut self) -> Result<()> {
        let actions = self.secure.expire_stalled(Instant::now());
        self.apply(actions)
    }

    /// When [`Chat::expire_stalled`] next has something to do, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.secure.next_deadline()
    }

    /// Handles one frame from the server.
    pub fn server(&mut self, line: ServerLine) -> Result<Flow> {
        match line {
            ServerLine::Room { user, text } => self.screen.event(&format!(
                "{} {ROOM_LABEL}: {}",
                sanitize(&user),
                sanitize(&text)
            )),
            ServerLine::From { user, payload } => {
                let actions = self.secure.payload_arrived(&user, &payload);
                self.apply(actions)?;
            }
            ServerLine::Offline { user } => {
                let actions = self.secure.peer_gone(&user);
                self.apply(actions)?;
            }
            ServerLine::Ok { command, detail } => self.ok(command, &detail)?,
            ServerLine::Err {
                command,
                code,
                text,
            } => self.error(command, code, &text)?,
            ServerLine::Skipped { count } => self.screen.event(&format!(
                "{count} room lines skipped: this terminal was reading more slowly than the \
                 room was talking"
            )),
            ServerLine::Bye { reason } => {
                self.screen.warn(&format!(
                    "the server closed the connection: {}",
                    sanitize(&reason)
                ));
                return Ok(Flow::Quit);
            }
            ServerLine::Pong { .. } | ServerLine::Hello { .. } => {}
        }
        Ok(Flow::Continue)
    }

    fn ok(&mut self, command: Command, detail: &str) -> Result<()> {
        match command {
            Command::List => {
                let mut words = detail.split(' ');
                let total = words.next().unwrap_or("0");
                let names: Vec<String> = words.map(sanitize).collect();
                let mut text = format!("* {total} online: {}", names.join(", "));
                if let Ok(total) = total.parse::<usize>() {
                    if total > names.len() {
                        text.push_str(&format!(" and {} more", total - names.len()));
                    }
                }
                self.screen.event(&text);
            }
            Command::GetKey => {
                let (user, key) = detail.split_once(' ').unwrap_or((detail, ""));
                let actions = self.secure.key_arrived(user, key);
                self.apply(actions)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn error(&mut self, command: Option<Command>, code: ErrorCode, text: &str) -> Result<()> {
        // For these codes the first word of the text is the user concerned.
        let user = text.split(' ').next().unwrap_or("");
        let actions = match (command, code) {
            (Some(Command::Msg), ErrorCode::Offline | ErrorCode::NoSuchUser) => {
                self.secure.peer_gone(user)
            }
            (Some(Command::GetKey), ErrorCode::NoKey | ErrorCode::NoSuchUser) => {
                self.secure.key_unavailable(user, text)
            }
            _ => Vec::new(),
        };
        if actions.is_empty() {
            self.screen
                .warn(&format!("server: {} ({})", sanitize(text), code.as_str()));
        }
        self.apply(actions)
    }

    /// Carries out what the end-to-end layer asked for.
    fn apply(&mut self, actions: Vec<Action>) -> Result<()> {
        for action in actions {
            match action {
                Action::Send { to, payload } => {
                    self.link.send(&Request::Msg {
                        to: &to,
                        payload: &payload,
                    })?;
                }
                Action::FetchKey(user) => self.link.send(&Request::GetKey { user: &user })?,
                Action::Show(notice) => self.show(notice),
            }
        }
        Ok(())
    }

    fn show(&self, notice: Notice) {
        match notice {
            Notice::Received { from, text } => self.screen.event(&format!(
                "{} -> you {E2E_LABEL}: {}",
                sanitize(&from),
                sanitize(&text)
            )),
            Notice::Sent { to, text } => self.screen.event(&format!(
                "you -> {} {E2E_LABEL}: {}",
                sanitize(&to),
                sanitize(&text)
            )),
            Notice::Info(text) => {
                for line in text.lines() {
                    self.screen.event(&format!("* {}", sanitize(line)));
                }
            }
            Notice::Warning(text) => {
                for line in text.lines() {
                    self.screen.warn(&sanitize(line));
                }
            }
            Notice::Explain { peer, line } => {
                self.screen
                    .event(&format!("[dh {}] {}", sanitize(&peer), sanitize(&line)))
            }
        }
    }
}
