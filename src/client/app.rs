//! The logged-in client: turns what the user types into requests, and what the server
//! sends into lines on the screen, with the end-to-end layer in between for private
//! messages. Single-threaded: the terminal code feeds it events one at a time, and tells
//! it when the connection is lost and when it is back.
//!
//! Rules it keeps:
//! * Every frame leaves through the [`Pacer`], in order, at the rate the server allows;
//!   a message is shown as sent (`you ...`) only once its frame was written.
//! * A line longer than the server takes is refused before sending, with the limit in
//!   words; long private text is split into messages that fit.
//! * While the connection is down, messages typed (and those that were waiting) are kept,
//!   up to [`MAX_WAITING`], and sent after the reconnect; anything that cannot be kept
//!   is reported as not sent, and so is anything still waiting when the user leaves.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::client::commands::{self, Input, HELP};
use crate::client::end_to_end::{Action, EndToEnd, Notice};
use crate::client::link::Link;
use crate::client::offline::{Offline, Step};
use crate::client::pacing::{Message, Pacer};
use crate::client::screen::{sanitize, Screen, ROOM_LABEL};
use crate::e2e::MAX_PLAINTEXT_LEN;
use crate::error::Result;
use crate::protocol::name::{is_canonical_address, server_of};
use crate::protocol::{AnnouncedLimits, Command, ErrorCode, MailboxLimits, Request, ServerLine};

/// Messages kept while the connection is down, to send after the reconnect. Enough for
/// someone who keeps typing through a short outage; beyond it, typing is refused with a
/// warning rather than remembered without bound.
pub const MAX_WAITING: usize = 100;

/// Where `/dh-practice` writes its script: the current directory, where the user runs it.
const PRACTICE_FILE: &str = "dh-practice.py";
/// Where `/dh-offline` writes its script, beside `/dh-practice`'s.
const OFFLINE_PRACTICE_FILE: &str = "dh-offline.py";

/// A paste that leaves this many frames waiting gets a progress line.
const PROGRESS_FROM: usize = 20;

/// Room for the `MSG <user> ` header and the payload's framing around the sealed text,
/// which base64 makes 4/3 as long.
const PRIVATE_OVERHEAD: usize = 512;

/// How long a keep-alive `PING` may go unanswered before the connection counts as lost:
/// the keep-alive interval itself, and at least [`MIN_PONG_TIMEOUT`].
pub fn pong_timeout(keepalive: Duration) -> Duration {
    keepalive.max(MIN_PONG_TIMEOUT)
}

/// A server under load may take a moment to answer; a few seconds never mean a dead link.
pub const MIN_PONG_TIMEOUT: Duration = Duration::from_secs(3);

/// Names the user can complete with Tab: whoever was seen online.
pub type OnlineNames = Arc<Mutex<BTreeSet<String>>>;

/// One `LIST` asked and not yet answered: how its answer is taken. The server answers
/// requests in order, so the oldest one asked is the one an `OK LIST` or `ERR LIST` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ListAsked {
    /// Our own, at login, for completion: not shown.
    Quiet,
    /// `/list`: who is online here, shown.
    Here,
    /// `/list SERVER`: who is online on that linked server, shown; its names add to
    /// completion without replacing those of this server.
    On(String),
}

/// Whether the session goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// Leave.
    Quit,
}

/// A logged-in chat session.
pub struct Chat {
    /// Our user name.
    me: String,
    /// Where requests go; `None` while the connection is down.
    link: Option<Link>,
    /// Frames waiting for their turn.
    pacer: Pacer,
    /// The longest frame the server takes.
    max_frame: usize,
    /// Where lines go.
    screen: Screen,
    /// The end-to-end layer.
    secure: EndToEnd,
    /// Offline delivery: messages to and from users who are not online.
    offline: Offline,
    /// The `/chat` partner plain lines go to; `None` means the public room.
    talking_to: Option<String>,
    /// Messages to send once connected again, oldest first (at most [`MAX_WAITING`]).
    resend: VecDeque<Message>,
    /// Who was seen online, for completion.
    online: OnlineNames,
    /// Messages the user typed (a split private text counts each part).
    typed: usize,
    /// Of those, how many were written to the server.
    sent: usize,
    /// Set by a `/quit` that found messages still waiting: the next one leaves anyway.
    quit_warned: bool,
    /// Set while a paste is being sent at the server's rate and its progress shown.
    backlog: bool,
    /// `LIST` requests sent and not yet answered, oldest first.
    lists: VecDeque<ListAsked>,
    /// When the server was last heard from (any frame).
    last_heard: Instant,
    /// When a keep-alive `PING` went out that nothing has answered yet.
    ping_sent: Option<Instant>,
}

impl Chat {
    /// A chat for `me`, not yet connected ([`Chat::connected`] follows).
    pub fn new(
        me: &str,
        screen: Screen,
        secure: EndToEnd,
        offline: Offline,
        online: OnlineNames,
    ) -> Chat {
        Chat {
            me: me.to_owned(),
            link: None,
            pacer: Pacer::new(0, 0),
            max_frame: 0,
            screen,
            secure,
            offline,
            talking_to: None,
            resend: VecDeque::new(),
            online,
            typed: 0,
            sent: 0,
            quit_warned: false,
            backlog: false,
            lists: VecDeque::new(),
            last_heard: Instant::now(),
            ping_sent: None,
        }
    }

    /// The connection is up (first time, or again): adopts the server's limits,
    /// publishes our identity key (and, when the connection opted in to offline delivery,
    /// `mailbox`, our prekeys), asks who is online, and queues what waited.
    pub fn connected(
        &mut self,
        link: Link,
        limits: AnnouncedLimits,
        mailbox: Option<MailboxLimits>,
        first: bool,
    ) -> Result<()> {
        self.link = Some(link);
        self.last_heard = Instant::now();
        self.ping_sent = None;
        self.max_frame = limits.max_frame;
        self.pacer = Pacer::new(limits.rate, limits.burst);
        let key = self.secure.identity_public().to_base64();
        self.pacer.push(Request::SetKey { key: &key }.to_string());
        self.pacer.push(Request::List { server: None }.to_string());
        self.lists.push_back(ListAsked::Quiet);
        if first {
            self.screen.event(&format!(
                "logged in as {}. Plain lines go to the public room {ROOM_LABEL}: TLS to the \
                 server only, so the server can read them. /msg USER TEXT is private and \
                 end-to-end encrypted. Your own lines are marked (you). /help lists the commands.",
                self.me
            ));
        } else {
            self.screen.event(&format!(
                "* reconnected and logged in again as {}; {} waiting message(s) follow",
                self.me,
                self.resend.len()
            ));
        }
        let steps = self.offline.connected(mailbox);
        self.carry(steps);
        for message in std::mem::take(&mut self.resend) {
            match message {
                Message::Room(text) => self.say(text),
                Message::Private { to, text } => self.private(&to, &text)?,
            }
        }
        Ok(())
    }

    /// The connection is gone: every message not yet written waits for the reconnect
    /// (sessions are gone too: the peers closed theirs when we went offline).
    pub fn disconnected(&mut self) {
        self.lists.clear();
        if let Some(link) = self.link.take() {
            link.close();
        }
        let mut waiting: Vec<Message> = Vec::new();
        waiting.extend(
            self.pacer
                .take_all()
                .into_iter()
                .filter_map(|outgoing| outgoing.message),
        );
        waiting.extend(
            self.secure
                .connection_lost()
                .into_iter()
                .chain(self.offline.connection_lost())
                .map(|(to, text)| Message::Private { to, text }),
        );
        // Oldest first: what was queued before the loss goes before what was typed since.
        for message in waiting.into_iter().rev() {
            self.resend.push_front(message);
        }
        self.backlog = false;
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.link.is_some()
    }

    /// The prompt: where a plain line goes, and how far that peer is trusted. (Not the
    /// connection's state: the editor shows a prompt until the line is done, and that
    /// state changes meanwhile; it is told in lines of its own.)
    pub fn prompt(&self) -> String {
        match &self.talking_to {
            Some(peer) => format!(
                "[to {peer}, private ({})] > ",
                self.secure.trust_words(peer)
            ),
            None => "[to the room] > ".to_owned(),
        }
    }

    /// Handles what the user typed: one line, or several at once (a paste).
    pub fn input(&mut self, typed: &str) -> Result<Flow> {
        for line in typed.split('\n') {
            if self.input_line(line)? == Flow::Quit {
                return Ok(Flow::Quit);
            }
        }
        Ok(Flow::Continue)
    }

    fn input_line(&mut self, line: &str) -> Result<Flow> {
        let input = match commands::parse(line) {
            Ok(input) => input,
            Err(problem) => {
                self.screen.warn(&problem);
                return Ok(Flow::Continue);
            }
        };
        if !matches!(input, Input::Quit) {
            self.quit_warned = false;
        }
        match input {
            Input::Nothing => {}
            Input::Text(text) => match self.talking_to.clone() {
                Some(peer) => self.typed_private(&peer, &text)?,
                None => self.typed_room(text),
            },
            Input::Msg { to, text } => self.typed_private(&to, &text)?,
            Input::Chat(Some(peer)) if peer == self.me => {
                self.screen.warn("you cannot chat with yourself");
            }
            Input::Chat(Some(peer)) => {
                self.screen.event(&format!(
                    "* now talking to {peer} [private, end-to-end encrypted]; /chat alone returns to the room \
                     (the prompt shows where a plain line goes)"
                ));
                self.talking_to = Some(peer);
            }
            Input::Chat(None) => self.back_to_the_room(),
            Input::Exit if self.talking_to.is_some() => self.back_to_the_room(),
            Input::Help => self.screen.print(HELP),
            Input::Practice => self.practice(),
            Input::OfflinePractice => self.offline_practice(),
            Input::Quit | Input::Exit => return Ok(self.quit()),
            _ if !self.is_connected() => self
                .screen
                .warn("not connected: that needs the server; try again once reconnected"),
            Input::List(server) => self.ask_list(server),
            Input::Fingerprint(user) => {
                let actions = self.secure.fingerprint(user.as_deref());
                self.apply(actions)?;
            }
            Input::Verify(user) => {
                let actions = self.secure.verify(&user);
                self.apply(actions)?;
            }
            Input::Accept(user) => {
                // Mail that waited as a message request, and whatever waits in the live
                // layer; the live layer answers "nothing waiting" only if neither did.
                let mail = self.offline.accept(&user);
                if mail.is_none() || self.secure.awaits_accept(&user) {
                    let actions = self.secure.accept(&user);
                    self.apply(actions)?;
                }
                if let Some(steps) = mail {
                    self.carry(steps);
                }
            }
            Input::Explain(Some(user)) => {
                let actions = self.secure.explain(&user);
                self.apply(actions)?;
            }
            Input::Explain(None) => {
                let actions = self.secure.explain_every_exchange();
                self.apply(actions)?;
            }
        }
        Ok(Flow::Continue)
    }

    /// `/list [SERVER]`: asks who is online here, or on the linked server `server`, and
    /// remembers how to show the answer.
    fn ask_list(&mut self, server: Option<String>) {
        self.pacer.push(
            Request::List {
                server: server.as_deref(),
            }
            .to_string(),
        );
        self.lists.push_back(match server {
            Some(server) => ListAsked::On(server),
            None => ListAsked::Here,
        });
    }

    /// `/dh-practice`: writes a throwaway exchange, every value in full, as a Python script
    /// that checks each equation. Its secrets belong to no session.
    fn practice(&self) {
        let script = match crate::e2e::practice_exchange(self.secure.group()) {
            Ok(script) => script,
            Err(e) => return self.screen.warn(&format!("practice exchange failed: {e}")),
        };
        self.write_script(
            PRACTICE_FILE,
            &script,
            &format!(
                "a practice exchange in {} (throwaway values, used for nothing else) is in \
                 {PRACTICE_FILE}: p, g, both secret exponents, both public values and the \
                 shared secret in full.",
                self.secure.group().name()
            ),
        );
    }

    /// `/dh-offline`: tells a throwaway offline session step by step (X3DH, the first message
    /// key, one ratchet step), values abbreviated, and writes every value in full as a Python
    /// script that checks each equation. Its secrets belong to no session.
    fn offline_practice(&self) {
        let practice = match crate::e2e::practice_offline_session(self.secure.group()) {
            Ok(practice) => practice,
            Err(e) => {
                return self
                    .screen
                    .warn(&format!("practice offline session failed: {e}"))
            }
        };
        self.screen.print(&practice.narration.join("\n"));
        self.write_script(
            OFFLINE_PRACTICE_FILE,
            &practice.script,
            &format!(
                "the same session, every value in full, is in {OFFLINE_PRACTICE_FILE}: it \
                 checks that DH1..DH4 combine into SK and that the ratchet step changes the \
                 root key."
            ),
        );
    }

    /// Writes a practice `script` to `file` and says what is in it (`what`) and how to run it.
    fn write_script(&self, file: &str, script: &str, what: &str) {
        match std::fs::write(file, script) {
            Ok(()) => self
                .screen
                .info(&format!("{what} Check them with: python3 {file}")),
            Err(e) => self.screen.warn(&format!("cannot write {file}: {e}")),
        }
    }

    /// Ends `/chat`: plain lines go to the room again.
    fn back_to_the_room(&mut self) {
        self.talking_to = None;
        self.screen
            .event(&format!("* back in the public room {ROOM_LABEL}"));
    }

    /// `/quit`: leaves, unless messages still wait; then it says so once, and a second
    /// `/quit` leaves without them (reported by [`Chat::leave`]).
    fn quit(&mut self) -> Flow {
        let waiting = self.waiting();
        if waiting > 0 && !self.quit_warned {
            self.quit_warned = true;
            self.screen.warn(&format!(
                "{waiting} message(s) are not sent yet (waiting for the connection, a key \
                 exchange or their turn). Wait for them, or /quit again to leave without them"
            ));
            return Flow::Continue;
        }
        Flow::Quit
    }

    /// Messages typed and not yet written to the server (and still to be).
    pub fn waiting(&self) -> usize {
        self.resend.len() + self.pacer.messages() + self.secure.waiting()
    }

    /// Whether anything at all still waits to go out (frames, exchanges, messages).
    pub fn busy(&self) -> bool {
        !self.pacer.is_empty() || !self.resend.is_empty() || self.secure.next_deadline().is_some()
    }

    /// Leaves: says goodbye to the server if connected, and reports every message typed
    /// that never reached it. Returns how many those were.
    pub fn leave(&mut self) -> usize {
        if let Some(link) = self.link.take() {
            // QUIT goes after everything already written, so those are handled first.
            let _ = link.send(&Request::Quit);
            link.close();
        }
        let not_sent = self.typed.saturating_sub(self.sent);
        if not_sent > 0 {
            self.screen.warn(&format!(
                "{not_sent} message(s) you typed were NOT sent (see the warnings above)"
            ));
        }
        not_sent
    }

    fn typed_room(&mut self, text: String) {
        self.typed += 1;
        let frame = Request::Say { text: &text }.to_string().len() + 1;
        if frame > self.max_frame {
            self.screen.warn(&format!(
                "not sent: that line is {frame} bytes with its header, and the server takes \
                 lines of at most {} bytes. Split it, or send it privately (/msg splits \
                 long private text)",
                self.max_frame
            ));
            return;
        }
        if self.is_connected() {
            self.say(text);
        } else {
            self.keep(Message::Room(text));
        }
    }

    fn say(&mut self, text: String) {
        self.pacer.push(Request::Say { text: &text }.to_string());
        self.pacer.mark_last(Message::Room(text));
    }

    /// A private message typed by the user: split into parts that fit in a frame.
    fn typed_private(&mut self, to: &str, text: &str) -> Result<()> {
        let limit = MAX_PLAINTEXT_LEN.min(self.max_frame.saturating_sub(PRIVATE_OVERHEAD) * 3 / 4);
        let parts = split_at_chars(text, limit.max(1));
        if parts.len() > 1 {
            self.screen.event(&format!(
                "* that text is {} bytes; it goes as {} private messages of at most {limit} bytes",
                text.len(),
                parts.len()
            ));
        }
        for part in parts {
            self.typed += 1;
            if self.is_connected() {
                self.private(to, part)?;
            } else {
                self.keep(Message::Private {
                    to: to.to_owned(),
                    text: part.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Keeps a message typed while disconnected, or says it was not kept.
    fn keep(&mut self, message: Message) {
        if self.resend.len() >= MAX_WAITING {
            self.screen.warn(&format!(
                "not connected and {MAX_WAITING} messages already wait: this one was NOT kept"
            ));
            return;
        }
        self.resend.push_back(message);
        self.screen.event(&format!(
            "* not connected: kept, {} message(s) will be sent after the reconnect",
            self.resend.len()
        ));
    }

    /// A private message: under the live session if there is one, else under an offline
    /// session if there is one, else through a new live exchange (which turns to offline
    /// delivery if the server says `to` is offline).
    fn private(&mut self, to: &str, text: &str) -> Result<()> {
        if !self.secure.is_established(to) && self.offline.has_session(to) {
            let steps = self.offline.send(to, vec![text.to_owned()]);
            self.carry(steps);
            return Ok(());
        }
        let actions = self.secure.send_text(to, text);
        self.apply(actions)
    }

    /// Writes the frames whose turn has come; shows each message as sent once written.
    /// A failed write means the connection is lost: the frames not written stay queued,
    /// and the error is returned for the caller to reconnect ([`Chat::disconnected`]).
    pub fn flush(&mut self, now: Instant) -> std::result::Result<(), String> {
        let Some(link) = self.link.clone() else {
            return Ok(());
        };
        let before = self.pacer.len();
        let mut due = self.pacer.due(now).into_iter();
        while let Some(outgoing) = due.next() {
            if let Err(e) = link.send_line(&outgoing.line) {
                for unsent in std::iter::once(outgoing).chain(due).rev() {
                    self.pacer.put_back(unsent);
                }
                return Err(e.to_string());
            }
            if let Some(message) = outgoing.message {
                self.sent += 1;
                self.show_sent(&message);
            }
        }
        let left = self.pacer.len();
        if left >= PROGRESS_FROM && !self.backlog {
            self.backlog = true;
            self.screen.event(&format!(
                "* sending at the server's limit of {} per second: {left} waiting (about {} s)",
                self.pacer.rate(),
                left as u32 / self.pacer.rate().max(1) + 1
            ));
        } else if self.backlog && left == 0 {
            self.backlog = false;
            self.screen.event("* everything waiting was sent");
        } else if self.backlog && before / 100 != left / 100 {
            self.screen.event(&format!("* sending: {left} waiting"));
        }
        Ok(())
    }

    /// When [`Chat::flush`] next has something to write, if anything waits.
    pub fn next_flush(&self) -> Option<Duration> {
        self.link.as_ref().and(self.pacer.next_due())
    }

    /// Queues a keep-alive `PING` when nothing was sent, or nothing heard, for
    /// `keepalive`. Returns `false` when a `PING` went unanswered for
    /// [`pong_timeout`]`(keepalive)`: the connection is dead even if no socket error said
    /// so (a laptop that changed networks, a peer host that vanished).
    pub fn keep_alive(&mut self, keepalive: Duration, now: Instant) -> bool {
        let Some(link) = &self.link else {
            return true;
        };
        if let Some(sent) = self.ping_sent {
            return now.saturating_duration_since(sent) < pong_timeout(keepalive);
        }
        let quiet = link.idle_for() >= keepalive
            || now.saturating_duration_since(self.last_heard) >= keepalive;
        if quiet && self.pacer.is_empty() {
            self.pacer.push(Request::Ping { token: "" }.to_string());
            self.ping_sent = Some(now);
        }
        true
    }

    /// How long until [`Chat::keep_alive`] has something to do.
    pub fn until_keep_alive(&self, keepalive: Duration, now: Instant) -> Duration {
        let Some(link) = &self.link else {
            return keepalive;
        };
        if let Some(sent) = self.ping_sent {
            return pong_timeout(keepalive).saturating_sub(now.saturating_duration_since(sent));
        }
        let heard = now.saturating_duration_since(self.last_heard);
        keepalive
            .saturating_sub(link.idle_for())
            .min(keepalive.saturating_sub(heard))
    }

    fn show_sent(&self, message: &Message) {
        match message {
            Message::Room(text) => self.screen.own_room(text),
            Message::Private { to, text } => {
                self.screen.private_to(to, self.secure.trust(to), text)
            }
        }
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
        // Anything from the server shows the connection is alive.
        self.last_heard = Instant::now();
        self.ping_sent = None;
        if let Some(name) = names_in(&line).find(|name| !is_canonical_address(name)) {
            // A name outside the rule can only come from a broken or malicious server (a
            // look-alike such as `bоb` with a Cyrillic о): a protocol error, never a line.
            let shown = name.escape_default().to_string();
            log::warn!("frame with a user name outside the rule refused: {shown}");
            self.screen.warn(&format!(
                "the server sent a user name that breaks the user-name rule ({shown}); \
                 that frame was ignored. Someone may be imitating another user"
            ));
            return Ok(Flow::Continue);
        }
        match line {
            ServerLine::Room { user, text } => {
                self.seen(&user, true);
                self.screen.room(&user, &text)
            }
            // Replayed at login; its sender may have left since, so it is not taken as
            // a sign of who is online.
            ServerLine::History { time, user, text } if user == self.me => {
                self.screen.own_history(time, &text)
            }
            ServerLine::History { time, user, text } => self.screen.history(time, &user, &text),
            ServerLine::From { user, payload } => {
                self.seen(&user, true);
                let actions = self.secure.payload_arrived(&user, &payload);
                self.apply(actions)?;
            }
            ServerLine::Offline { user } => {
                self.seen(&user, false);
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
            ServerLine::Bye { reason } if reason.starts_with("replaced") => {
                self.screen.warn(&format!(
                    "the server closed the connection: {}. Not reconnecting: that would \
                     push the other session out in turn",
                    sanitize(&reason)
                ));
                return Ok(Flow::Quit);
            }
            ServerLine::Bye { reason } => {
                self.screen
                    .warn(&format!("the server closed the connection: {reason}"));
            }
            ServerLine::Pong { .. } | ServerLine::Hello { .. } => {}
            ServerLine::Prekeys { count } => {
                let steps = self.offline.prekeys(count as usize, self.max_frame);
                self.carry(steps);
            }
            ServerLine::Bundle {
                user,
                record,
                one_time,
            } => {
                let steps = self
                    .offline
                    .bundle_arrived(&user, &record, one_time.as_ref());
                self.carry(steps);
            }
            ServerLine::Mail {
                id,
                sender,
                time,
                payload,
            } => {
                let steps = self.offline.mail(id, &sender, time, payload, &self.secure);
                self.carry(steps);
            }
            ServerLine::Status {
                reference,
                state,
                user,
            } => {
                let steps = self.offline.status(&reference, state, &user);
                self.carry(steps);
            }
        }
        Ok(Flow::Continue)
    }

    /// Keeps the completion names up to date.
    fn seen(&self, user: &str, online: bool) {
        let mut names = self.online.lock().unwrap_or_else(PoisonError::into_inner);
        if online {
            names.insert(user.to_owned());
        } else {
            names.remove(user);
        }
    }

    fn ok(&mut self, command: Command, detail: &str) -> Result<()> {
        match command {
            Command::List => {
                let mut words = detail.split(' ');
                let total = words.next().unwrap_or("0");
                let listed: Vec<&str> = words.collect();
                let asked = self.lists.pop_front().unwrap_or(ListAsked::Here);
                if let ListAsked::On(server) = &asked {
                    return self.remote_list(server, total, &listed);
                }
                {
                    let mut names = self.online.lock().unwrap_or_else(PoisonError::into_inner);
                    names.retain(|name| name.contains('@'));
                    names.extend(listed.iter().map(|name| (*name).to_owned()));
                }
                if asked == ListAsked::Quiet {
                    return Ok(());
                }
                self.screen
                    .event(&list_line(&format!("{total} online"), total, &listed));
            }
            Command::GetKey => {
                let (user, key) = detail.split_once(' ').unwrap_or((detail, ""));
                if self.offline.wants_key(user) {
                    let steps = self.offline.key_arrived(user, key, &mut self.secure);
                    self.carry(steps);
                }
                let actions = self.secure.key_arrived(user, key);
                self.apply(actions)?;
            }
            Command::SetPrekey => {
                let on_server = detail.trim().parse::<usize>().ok();
                let steps = self.offline.record_stored(on_server, self.max_frame);
                self.carry(steps);
            }
            Command::AddPrekeys => {
                if let Ok(on_server) = detail.trim().parse::<usize>() {
                    let steps = self.offline.prekeys_added(on_server, self.max_frame);
                    self.carry(steps);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `OK LIST` answering `/list SERVER`: shown with the server named; its names join
    /// completion. A name that is not of that server (a bare name would read as a user of
    /// ours) is left out with a warning.
    fn remote_list(&mut self, server: &str, total: &str, listed: &[&str]) -> Result<()> {
        let suffix = format!("@{server}");
        let (theirs, strays): (Vec<&str>, Vec<&str>) =
            listed.iter().partition(|name| name.ends_with(&suffix));
        if !strays.is_empty() {
            self.screen.warn(&format!(
                "the answer about {server} also named users of other servers ({}); they \
                 were left out",
                strays.join(", ")
            ));
        }
        {
            let mut names = self.online.lock().unwrap_or_else(PoisonError::into_inner);
            names.retain(|name| !name.ends_with(&suffix));
            names.extend(theirs.iter().map(|name| (*name).to_owned()));
        }
        self.screen.event(&list_line(
            &format!("{total} online on {server}"),
            total,
            &theirs,
        ));
        Ok(())
    }

    fn error(&mut self, command: Option<Command>, code: ErrorCode, text: &str) -> Result<()> {
        // For these codes the first word of the text is the user concerned.
        let user = text.split(' ').next().unwrap_or("");
        if command == Some(Command::List) {
            self.lists.pop_front();
        }
        let unreachable;
        let reason = if code == ErrorCode::Unreachable {
            unreachable = format!(
                "{} cannot be reached now: {text}",
                server_of(user).unwrap_or("their server")
            );
            unreachable.as_str()
        } else {
            text
        };
        let mut steps = Vec::new();
        let actions = match (command, code) {
            (Some(Command::Msg), ErrorCode::Offline) if self.offline.is_on() => {
                let texts = self.secure.take_for_offline(user);
                steps = self.offline.send(user, texts);
                Vec::new()
            }
            (Some(Command::Msg), ErrorCode::Offline | ErrorCode::NoSuchUser) => {
                self.secure.peer_gone(user)
            }
            (
                Some(Command::GetKey),
                ErrorCode::NoKey | ErrorCode::NoSuchUser | ErrorCode::Unreachable,
            ) => {
                steps = self.offline.key_unavailable(user, reason);
                self.secure.key_unavailable(user, reason)
            }
            (Some(Command::Bundle), _) => {
                steps = self.offline.bundle_unavailable(user, reason);
                Vec::new()
            }
            _ => Vec::new(),
        };
        let handled = !steps.is_empty();
        self.carry(steps);
        if actions.is_empty() && !handled {
            self.screen
                .warn(&format!("server: {text} ({})", code.as_str()));
        }
        self.apply(actions)
    }

    /// Carries out what the end-to-end layer asked for: frames join the queue; a message
    /// it reports as sealed marks the frame just queued, and is shown once that is sent.
    fn apply(&mut self, actions: Vec<Action>) -> Result<()> {
        for action in actions {
            match action {
                Action::Send { to, payload } => self.pacer.push(
                    Request::Msg {
                        to: &to,
                        payload: &payload,
                    }
                    .to_string(),
                ),
                Action::FetchKey(user) => {
                    self.pacer.push(Request::GetKey { user: &user }.to_string())
                }
                Action::Show(Notice::Sent { to, text, .. }) => {
                    self.pacer.mark_last(Message::Private { to, text })
                }
                Action::Show(notice) => self.show(notice),
            }
        }
        Ok(())
    }

    /// Carries out what offline delivery asked for, like [`Chat::apply`].
    fn carry(&mut self, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Frame(frame) => self.pacer.push(frame),
                Step::Sent { frame, to, text } => {
                    self.pacer.push(frame);
                    self.pacer.mark_last(Message::Private { to, text });
                }
                Step::Show(notice) => self.show(notice),
                Step::Received {
                    from,
                    text,
                    trust,
                    time,
                } => self.screen.offline_from(&from, trust, time, &text),
                Step::Delivery { to, state } => self.screen.delivery(&to, &state),
            }
        }
    }

    fn show(&self, notice: Notice) {
        match notice {
            Notice::Received { from, text, trust } => self.screen.private_from(&from, trust, &text),
            Notice::Sent { to, text, trust } => self.screen.private_to(&to, trust, &text),
            Notice::Info(text) => self.screen.info(&text),
            Notice::Warning(text) => self.screen.warn(&text),
            Notice::Explain { peer, line } => self.screen.event(&format!("[dh {peer}] {line}")),
            Notice::Request { from } => self.screen.info(&format!(
                "message request: {from} asks to start an end-to-end encrypted conversation \
                 with you; nothing was answered. /accept {from} to answer, or ignore it"
            )),
        }
    }
}

/// The `/list` line: `what` (`N online`, `N online on SERVER`), the names, and how many
/// more the server did not name.
fn list_line(what: &str, total: &str, names: &[&str]) -> String {
    let mut text = format!("* {what}: {}", names.join(", "));
    if let Ok(total) = total.parse::<usize>() {
        if total > names.len() {
            text.push_str(&format!(" and {} more", total - names.len()));
        }
    }
    text
}

/// Every user a frame from the server names: each must be a canonical address, a bare
/// name for a user of this server or `user@server` for a user of another, so that
/// `bob@a.test` can never be shown as, or stand for, `bob@b.test` or a local `bob`.
/// (`ERR` texts name a user only as their first word, and are shown as text either way.)
fn names_in(line: &ServerLine) -> Box<dyn Iterator<Item = &str> + '_> {
    match line {
        ServerLine::Room { user, .. }
        | ServerLine::History { user, .. }
        | ServerLine::From { user, .. }
        | ServerLine::Offline { user }
        | ServerLine::Bundle { user, .. }
        | ServerLine::Status { user, .. }
        | ServerLine::Mail { sender: user, .. } => Box::new(std::iter::once(user.as_str())),
        ServerLine::Ok {
            command: Command::GetKey,
            detail,
        } => Box::new(detail.split(' ').take(1)),
        ServerLine::Ok {
            command: Command::List,
            detail,
        } => Box::new(detail.split(' ').skip(1)),
        _ => Box::new(std::iter::empty()),
    }
}

/// Splits `text` into pieces of at most `limit` bytes, never inside a character.
fn split_at_chars(text: &str, limit: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > limit {
        let mut cut = limit;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            break; // one character longer than the limit: send it whole
        }
        let (part, tail) = rest.split_at(cut);
        parts.push(part);
        rest = tail;
    }
    parts.push(rest);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::mailbox::Mailbox;
    use crate::e2e::{Group, IdentityKey, PinStore};

    /// Alice's chat, writing to a captured screen, with her own pins in `dir` and the
    /// given view of who is online.
    fn alice(dir: &tempfile::TempDir, online: OnlineNames) -> (Chat, Screen) {
        let pins = PinStore::open(&dir.path().join("pins")).unwrap();
        let secure = EndToEnd::new(
            "alice",
            IdentityKey::generate().unwrap(),
            pins,
            Group::Ffdhe2048,
            false,
        );
        let screen = Screen::capture();
        let (mailbox, _) = Mailbox::load_or_create(
            &dir.path().join("mailbox"),
            &IdentityKey::generate().unwrap(),
            "alice",
            None,
            Group::Ffdhe2048,
            0,
        )
        .unwrap();
        let chat = Chat::new(
            "alice",
            screen.clone(),
            secure,
            Offline::new(mailbox),
            online,
        );
        (chat, screen)
    }

    #[test]
    fn skipped_room_lines_are_shown_as_a_status_line() {
        let dir = tempfile::tempdir().unwrap();
        let (mut chat, screen) = alice(&dir, OnlineNames::default());
        let flow = chat.server(ServerLine::Skipped { count: 87 }).unwrap();
        assert!(matches!(flow, Flow::Continue));
        let lines = screen.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].ends_with("] 87 room lines skipped: this terminal was reading more slowly than the room was talking"), "{lines:?}");
    }

    #[test]
    fn history_lines_are_marked_with_their_time_and_own_lines_with_you() {
        let dir = tempfile::tempdir().unwrap();
        let online = OnlineNames::default();
        let (mut chat, screen) = alice(&dir, online.clone());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        for (user, text) in [("bob", "hi\x1b[2J [room]"), ("alice", "mine"), ("Bob", "x")] {
            let line = ServerLine::History {
                time: now,
                user: user.into(),
                text: text.into(),
            };
            assert_eq!(chat.server(line).unwrap(), Flow::Continue);
        }
        let lines = screen.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].ends_with("] bob [room, history]: hi\u{FFFD}[2J [room]"),
            "{lines:?}"
        );
        assert!(
            lines[1].ends_with("] (you) [room, history]: mine"),
            "{lines:?}"
        );
        assert!(lines[2].contains("breaks the user-name rule"), "{lines:?}");
        assert!(
            online.lock().unwrap().is_empty(),
            "a history line says nothing of who is online"
        );
    }

    /// Feeds `frame` to `chat` as the server's.
    fn from_server(chat: &mut Chat, frame: &str) {
        let line = ServerLine::parse(frame).unwrap();
        assert_eq!(chat.server(line).unwrap(), Flow::Continue);
    }

    #[test]
    fn users_of_other_servers_are_shown_by_full_address_and_bad_addresses_refused() {
        let dir = tempfile::tempdir().unwrap();
        let online = OnlineNames::default();
        let (mut chat, screen) = alice(&dir, online.clone());
        from_server(&mut chat, "ROOM alice@a.test hi");
        from_server(&mut chat, "ROOM bob hello");
        for refused in [
            "ROOM alice@A.test hi",
            "ROOM alice@127.0.0.1 hi",
            "ROOM alice@ hi",
            "ROOM alice@a.test@b.test hi",
        ] {
            from_server(&mut chat, refused);
        }
        let lines = screen.lines();
        assert_eq!(lines.len(), 6, "{lines:?}");
        assert!(lines[0].ends_with("] alice@a.test [room]: hi"), "{lines:?}");
        assert!(lines[1].ends_with("] bob [room]: hello"), "{lines:?}");
        for line in &lines[2..] {
            assert!(line.contains("breaks the user-name rule"), "{lines:?}");
        }
        let names: Vec<String> = online.lock().unwrap().iter().cloned().collect();
        assert_eq!(
            names,
            ["alice@a.test", "bob"],
            "completion offers addresses seen"
        );
    }

    #[test]
    fn list_of_a_linked_server_is_asked_and_shown_with_full_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let online = OnlineNames::default();
        let (mut chat, screen) = alice(&dir, online.clone());
        online.lock().unwrap().insert("carol".to_owned());
        chat.ask_list(Some("b.test".to_owned()));
        let sent: Vec<String> = chat.pacer.take_all().into_iter().map(|o| o.line).collect();
        assert_eq!(sent, ["LIST b.test"]);
        from_server(&mut chat, "OK LIST 3 bob@b.test dave@b.test mallory@c.test");
        chat.ask_list(None);
        from_server(&mut chat, "OK LIST 1 alice");
        chat.ask_list(Some("c.test".to_owned()));
        from_server(&mut chat, "ERR LIST unreachable c.test is not linked");
        chat.ask_list(None);
        from_server(&mut chat, "OK LIST 2 alice erin");
        let lines = screen.lines();
        // A name of another server in b.test's answer is left out, and said so.
        assert!(
            lines[0].ends_with(
                "the answer about b.test also named users of other servers (mallory@c.test); \
                 they were left out"
            ),
            "{lines:?}"
        );
        let lines = &lines[1..];
        assert!(
            lines[0].ends_with("] * 3 online on b.test: bob@b.test, dave@b.test and 1 more"),
            "{lines:?}"
        );
        assert!(lines[1].ends_with("] * 1 online: alice"), "{lines:?}");
        assert!(
            lines[2].contains("c.test is not linked (unreachable)"),
            "{lines:?}"
        );
        assert!(lines[3].ends_with("] * 2 online: alice, erin"), "{lines:?}");
        let names: Vec<String> = online.lock().unwrap().iter().cloned().collect();
        assert_eq!(names, ["alice", "bob@b.test", "dave@b.test", "erin"]);
    }

    #[test]
    fn an_unreachable_server_is_a_message_not_sent_never_a_protocol_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut chat, screen) = alice(&dir, OnlineNames::default());
        let actions = chat.secure.send_text("bob@b.test", "hi");
        assert!(
            actions
                .iter()
                .any(|action| matches!(action, Action::FetchKey(user) if user == "bob@b.test")),
            "{actions:?}"
        );
        from_server(
            &mut chat,
            "ERR GETKEY unreachable bob@b.test b.test cannot be reached now",
        );
        let lines = screen.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0]
                .contains("bob@b.test: no identity key available (b.test cannot be reached now"),
            "{lines:?}"
        );
        assert!(lines[0].ends_with("1 message(s) not sent"), "{lines:?}");
    }

    #[test]
    fn exit_inside_chat_returns_to_the_room_and_quits_only_from_the_room() {
        let dir = tempfile::tempdir().unwrap();
        let (mut chat, screen) = alice(&dir, OnlineNames::default());
        assert_eq!(chat.input("/chat bob").unwrap(), Flow::Continue);
        assert!(chat.prompt().contains("to bob"), "{}", chat.prompt());
        assert_eq!(chat.input("exit").unwrap(), Flow::Continue);
        assert!(chat.prompt().contains("to the room"), "{}", chat.prompt());
        assert!(screen
            .lines()
            .last()
            .unwrap()
            .contains("back in the public room"));
        assert_eq!(chat.input("exit").unwrap(), Flow::Quit);
    }

    #[test]
    fn long_text_splits_between_characters() {
        assert_eq!(split_at_chars("abcdef", 4), ["abcd", "ef"]);
        assert_eq!(split_at_chars("ééé", 3), ["é", "é", "é"]);
        assert_eq!(split_at_chars("short", 100), ["short"]);
        let long = "ab€".repeat(3000);
        let parts = split_at_chars(&long, MAX_PLAINTEXT_LEN);
        assert!(parts.iter().all(|part| part.len() <= MAX_PLAINTEXT_LEN));
        assert_eq!(parts.concat(), long);
    }
}
