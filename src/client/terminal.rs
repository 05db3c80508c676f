//! The interactive terminal client: connect, the `l`/`r`/`c` menu with hidden password
//! entry, then the chat loop.
//!
//! Threads after login: the main thread runs the [`Chat`]; a reader thread turns frames
//! from the server into events; an input thread ([`crate::client::editor`]) turns typed
//! lines into events. Both feed one channel, so the chat state has a single owner. The
//! main thread also sends queued frames at the server's pace, pings when the session has
//! been quiet (so the server's idle timeout never closes a session that is merely
//! quiet), and wakes when a key exchange has waited too long, to tell the user.
//!
//! The session survives the network: when the connection is lost the main thread
//! reconnects with a backoff that doubles up to [`MAX_BACKOFF`], logs in again with the
//! credentials it keeps in memory for the session (never on disk), and the chat sends
//! what was typed meanwhile. The input line is untouched throughout. A server that says
//! `BYE replaced` (the account logged in elsewhere) is not reconnected to. At exit the
//! terminal is restored and unread typed input discarded, so none of it reaches the shell.
//!
//! For scripts and tests, `--user NAME --password-stdin [--register]` logs in without the
//! menu, reading the password from the first line of standard input. At the end of its
//! input the client waits up to [`SCRIPT_DRAIN`] for messages still being sent (a key
//! exchange in progress), and exits with an error if any message was not sent.

use std::collections::VecDeque;
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::client::app::{pong_timeout, Chat, Flow, OnlineNames};
use crate::client::editor::{Input, Typed};
use crate::client::end_to_end::EndToEnd;
use crate::client::link::{self, Link, LinkReader};
use crate::client::mailbox::{Mailbox, MAILBOX_FILE};
use crate::client::offline::Offline;
use crate::client::paths;
use crate::client::screen::{sanitize, Screen};
use crate::e2e::{Group, IdentityKey, PinStore};
use crate::error::{Error, Result};
use crate::password::{password_problems, rules_text};
use crate::protocol::name::{normalize_username, ServerName};
use crate::protocol::{AnnouncedLimits, Command, ErrorCode, MailboxLimits, Request, ServerLine};
use crate::tls;

/// How long the client may go without sending before it pings, by default: well under
/// the server's default idle timeout (300 s).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);

/// The development CA file looked for when `--ca` is not given (next to where the server
/// keeps it when both run from the repository).
pub const DEFAULT_DEV_CA: &str = "certs/ca.pem";

/// What the user asked for on the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// `host:port` of the server.
    pub server: String,
    /// Connect here instead of where the server's host resolves to (`--resolve`); the
    /// certificate is still checked for the host.
    pub resolve: Option<std::net::SocketAddr>,
    /// Extra CA to trust (the development CA); the public web PKI is always trusted.
    pub ca: Option<PathBuf>,
    /// Overrides where identity keys and pins are kept.
    pub home: Option<PathBuf>,
    /// Log in as this user without the menu.
    pub user: Option<String>,
    /// Read the password from the first line of standard input.
    pub password_stdin: bool,
    /// Register `user` before logging in.
    pub register: bool,
    /// Explain every key exchange step by step.
    pub explain: bool,
    /// The Diffie-Hellman group for exchanges this client starts.
    pub group: Group,
    /// Ping after this long without sending anything (below the server's idle timeout).
    pub keepalive: Duration,
    /// Keep no input history on disk.
    pub no_history: bool,
}

/// How long script mode waits at the end of its input for private messages still in a
/// key exchange (one exchange step may take up to `end_to_end::EXCHANGE_TIMEOUT`, also 30 s).
pub const SCRIPT_DRAIN: Duration = Duration::from_secs(30);

/// The first wait before reconnecting; it doubles after each failed attempt.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The longest wait between reconnection attempts: short enough that the chat is back
/// soon after the server is, long enough not to hammer a server that is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// After a failed write, how long the client waits for the server's last lines (a `BYE`
/// saying why it closed) before reconnecting. The server has closed by then, so they are
/// already in the socket or in flight: a moment is enough.
const LAST_WORDS: Duration = Duration::from_millis(500);

/// Events for the chat loop.
enum Event {
    /// A frame from the server, on the connection of that generation.
    Server(u64, ServerLine),
    /// The connection of that generation ended (with why).
    Disconnected(u64, String),
    /// Input from the user.
    Typed(Typed),
    /// SIGTERM, SIGHUP (a closed terminal), or Ctrl-C outside the line editor.
    Interrupted,
}

/// The account, kept in memory (never on disk) for logging in again after a reconnect.
struct Credentials {
    /// The canonical user name.
    user: String,
    /// The password as typed.
    password: String,
}

/// Runs the client until the user leaves. Returns an error for failures the user must see
/// (cannot connect, certificate refused, login refused in scripted mode, messages typed
/// that were never sent).
pub fn run(options: Options) -> Result<()> {
    let terminal = *SAVED_TERMINAL.get_or_init(TerminalState::save);
    let result = session(options, terminal);
    // However the client ends, the terminal is as it was, and nothing typed into it and
    // not read (a line typed ahead of the exit) is left for the shell to run.
    terminal.restore();
    terminal.discard_typeahead();
    result
}

/// Everything from connecting to leaving.
fn session(options: Options, terminal: TerminalState) -> Result<()> {
    let chat_events: Arc<Mutex<Option<Sender<Event>>>> = Arc::new(Mutex::new(None));
    {
        let chat_events = chat_events.clone();
        // Before the chat starts, an interrupt restores the terminal (echo may be off at a
        // password prompt) and exits; during the chat it leaves cleanly with QUIT.
        let handler = ctrlc::set_handler(move || {
            let sender = chat_events
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            match sender {
                Some(sender) => {
                    let _ = sender.send(Event::Interrupted);
                }
                None => leave_interrupted(&terminal),
            }
        });
        if let Err(e) = handler {
            log::warn!("cannot catch Ctrl-C: {e}");
        }
    }

    let screen = Screen::stdout();
    let ca = options.ca.clone().or_else(|| {
        let dev = PathBuf::from(DEFAULT_DEV_CA);
        dev.exists().then_some(dev)
    });
    let config = tls::client_config(ca.as_deref())?;
    let mut connection =
        Connection::open(&options.server, options.resolve, config.clone(), &screen)?;

    let credentials = match &options.user {
        Some(user) => scripted_login(&mut connection, &options, user, &screen)?,
        None => match menu(&mut connection, &screen)? {
            Some(credentials) => credentials,
            None => {
                connection.link.close();
                return Ok(());
            }
        },
    };
    let user = credentials.user.clone();

    let (dir, moved) = paths::user_dir(
        &paths::base_dir(options.home.as_deref())?,
        &options.server,
        &user,
    )?;
    if let Some(old) = moved {
        screen.event(&format!(
            "* moved your keys from {} to {} (one identity per server, however it is spelled)",
            old.display(),
            dir.display()
        ));
    }
    crate::files::check_directory_chain(&dir)?;
    let (identity, created) = IdentityKey::load_or_create(&dir.join(paths::IDENTITY_FILE))?;
    if created {
        screen.event(&format!(
            "* created your identity key in {} (fingerprint {})",
            dir.display(),
            identity.public_key().fingerprint()
        ));
    }
    let pins = PinStore::open_for_identity(&dir.join(paths::PINS_FILE), created)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    // The server's federation name, if it announced one: the names bound into end-to-end
    // cryptography are qualified with it (`src/client/end_to_end.rs`), for as long as this
    // client runs (a reconnect that announces another name is refused, see `relogin`).
    let home = connection.home.clone();
    let (mailbox, problem) = Mailbox::load_or_create(
        &dir.join(MAILBOX_FILE),
        &identity,
        &user,
        home.as_ref(),
        options.group,
        now,
    )?;
    if let Some(problem) = problem {
        screen.warn(&problem);
    }
    let secure = EndToEnd::new(&user, identity, pins, options.group, options.explain)
        .with_home(home.clone());

    let (tx, rx) = crossbeam_channel::unbounded();
    *chat_events.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx.clone());
    let online: OnlineNames = Arc::default();
    let history = (!options.no_history).then(|| dir.join(paths::HISTORY_FILE));
    let input = {
        let tx = tx.clone();
        Input::start(
            options.user.is_none() || !options.password_stdin,
            history,
            online.clone(),
            "[to the room] > ".to_owned(),
            move |typed| tx.send(Event::Typed(typed)).is_ok(),
        )?
    };
    let mut chat = Chat::new(&user, input.screen(), secure, Offline::new(mailbox), online);
    let Connection {
        link,
        reader,
        limits,
        mailbox,
        ..
    } = connection;
    let mut generation = 0;
    spawn_reader(generation, reader, tx.clone())?;
    chat.connected(link, limits, mailbox, true)?;

    let result = chat_loop(
        &options,
        &config,
        &credentials,
        home.as_ref(),
        &mut chat,
        &input,
        &rx,
        &tx,
        &mut generation,
    );
    // The editor may be reading a line: from here on lines go straight to the terminal,
    // so that none is left in the editor's queue when the process ends.
    input.finish();
    let not_sent = chat.leave();
    terminal.restore();
    input.screen().event("* bye");
    result?;
    if not_sent > 0 {
        return Err(Error::Config(format!(
            "{not_sent} message(s) you typed were not sent"
        )));
    }
    Ok(())
}

/// The chat until the user leaves: events, the pacer, keep-alive pings, key-exchange
/// time-outs, reconnecting, and (for scripts) the wait at the end of input.
#[allow(clippy::too_many_arguments)]
fn chat_loop(
    options: &Options,
    config: &Arc<rustls::ClientConfig>,
    credentials: &Credentials,
    home: Option<&ServerName>,
    chat: &mut Chat,
    input: &Input,
    rx: &Receiver<Event>,
    tx: &Sender<Event>,
    generation: &mut u64,
) -> Result<()> {
    let screen = input.screen();
    // While disconnected: when to try again, and the wait after that.
    let mut reconnect: Option<(Instant, Duration)> = None;
    // Set when a script's input ended: leave once nothing waits, or at this deadline.
    let mut draining: Option<Instant> = None;
    // Events read early (while looking for the server's last lines), handled first.
    let mut early: VecDeque<Event> = VecDeque::new();
    loop {
        // Checked on every turn, not only when the channel is quiet: in a busy room it
        // never is.
        chat.expire_stalled()?;
        let now = Instant::now();
        if let Some((at, backoff)) = reconnect {
            if now >= at {
                match relogin(&options.server, config, credentials, home) {
                    Ok(Ok((link, reader, limits, mailbox))) => {
                        *generation += 1;
                        spawn_reader(*generation, reader, tx.clone())?;
                        chat.connected(link, limits, mailbox, false)?;
                        reconnect = None;
                    }
                    Ok(Err(refused)) => {
                        return Err(Error::Config(format!(
                            "logging in again after the reconnect was refused: {refused}"
                        )))
                    }
                    Err(e) => {
                        let next = (backoff * 2).min(MAX_BACKOFF);
                        screen.warn(&format!(
                            "still not connected ({e}); trying again in {:.1} s",
                            backoff.as_secs_f64()
                        ));
                        reconnect = Some((Instant::now() + backoff, next));
                    }
                }
            }
        }
        if let Err(e) = chat.flush(Instant::now()) {
            // The server may have said why it closed (`BYE replaced`: a login elsewhere,
            // which a reconnect would push out in turn) just before the write failed.
            if last_words(chat, rx, *generation, &mut early)? == Flow::Quit {
                return Ok(());
            }
            reconnect = Some(lost(chat, &screen, &e));
        } else if !chat.keep_alive(options.keepalive, Instant::now()) {
            reconnect = Some(lost(
                chat,
                &screen,
                &format!(
                    "no answer from the server for {} s",
                    pong_timeout(options.keepalive).as_secs()
                ),
            ));
        }
        if let Some(deadline) = draining {
            if !chat.busy() || Instant::now() >= deadline {
                return Ok(());
            }
        }
        // Sleep until the next thing due: a frame's turn, a ping, an exchange deadline,
        // a reconnection attempt, the end of the script's wait.
        let mut wait = chat.until_keep_alive(options.keepalive, Instant::now());
        if let Some(due) = chat.next_flush() {
            wait = wait.min(due);
        }
        for at in [chat.next_deadline(), reconnect.map(|(at, _)| at), draining]
            .into_iter()
            .flatten()
        {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        let event = match early.pop_front().map_or_else(|| rx.recv_timeout(wait), Ok) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        match event {
            Event::Server(from, line) if from == *generation && chat.is_connected() => {
                if chat.server(line)? == Flow::Quit {
                    return Ok(());
                }
            }
            Event::Disconnected(from, reason) if from == *generation && chat.is_connected() => {
                reconnect = Some(lost(chat, &screen, &reason));
            }
            Event::Server(..) | Event::Disconnected(..) => {} // an older connection's
            Event::Typed(Typed::End) if !input.is_editor() => {
                // End of a script: finish sending what it asked for, then leave.
                if chat.busy() {
                    screen.event(&format!(
                        "* end of input: waiting up to {} s for {} message(s) still being sent",
                        SCRIPT_DRAIN.as_secs(),
                        chat.waiting()
                    ));
                }
                draining = Some(Instant::now() + SCRIPT_DRAIN);
            }
            Event::Typed(typed) => {
                // Ctrl-C, and Ctrl-D on an empty line, leave as /quit does.
                let line = match &typed {
                    Typed::Line(line) => line.as_str(),
                    Typed::End | Typed::Interrupted => "/quit",
                };
                if chat.input(line)? == Flow::Quit {
                    // No next prompt: the editor stays out of the terminal, so the last
                    // lines are printed straight to it.
                    return Ok(());
                }
                input.next_line(chat.prompt());
            }
            Event::Interrupted => return Ok(()),
        }
    }
}

/// A write failed: handles the lines this connection's reader still delivers, until it
/// reports the end or [`LAST_WORDS`] passed. Other events are kept in `early`, in order.
fn last_words(
    chat: &mut Chat,
    rx: &Receiver<Event>,
    generation: u64,
    early: &mut VecDeque<Event>,
) -> Result<Flow> {
    let deadline = Instant::now() + LAST_WORDS;
    while let Ok(event) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        match event {
            Event::Server(from, line) if from == generation => {
                if chat.server(line)? == Flow::Quit {
                    return Ok(Flow::Quit);
                }
            }
            Event::Disconnected(from, _) if from == generation => break,
            other => early.push_back(other),
        }
    }
    Ok(Flow::Continue)
}

/// The connection is lost: the chat keeps what waits, the user is told, and the first
/// reconnection attempt is scheduled. Returns when to try, and the wait after that.
fn lost(chat: &mut Chat, screen: &Screen, reason: &str) -> (Instant, Duration) {
    chat.disconnected();
    screen.warn(&format!(
        "disconnected: {reason}. Reconnecting; what you type meanwhile is kept and sent \
         after the reconnect"
    ));
    (Instant::now() + FIRST_BACKOFF, FIRST_BACKOFF * 2)
}

/// What a new connection's login gives: the link, its reader, the server's limits, and
/// the mailbox limits when the server accepted `MAILBOX`.
type LoggedIn = (Link, LinkReader, AnnouncedLimits, Option<MailboxLimits>);

/// Connects again and logs in with the kept credentials (opting in to offline delivery
/// again: the opt-in is per connection). The outer error is worth another attempt (no
/// connection, no answer, throttled); the inner one is a refusal of the credentials
/// themselves, which trying again cannot change, or a server that now announces another
/// federation name than `home`, the one this client binds into its end-to-end cryptography
/// (carrying on would silently change every name it signs and every safety number).
fn relogin(
    server: &str,
    config: &Arc<rustls::ClientConfig>,
    credentials: &Credentials,
    home: Option<&ServerName>,
) -> Result<std::result::Result<LoggedIn, String>> {
    let (link, mut reader, info) = link::connect(server, config.clone())?;
    if info.home.as_ref() != home {
        link.close();
        let name = |home: Option<&ServerName>| {
            home.map_or_else(
                || "no federation name".to_owned(),
                |home| format!("the name {home}"),
            )
        };
        return Ok(Err(format!(
            "the server now announces {} (it announced {} when this client started), which \
             changes the names your end-to-end encryption binds: start the client again",
            name(info.home.as_ref()),
            name(home)
        )));
    }
    let mut mailbox = None;
    link.send(&Request::Mailbox)?;
    link.send(&Request::Login {
        user: &credentials.user,
        password: &credentials.password,
    })?;
    let deadline = Instant::now() + link::CONNECT_TIMEOUT;
    while Instant::now() < deadline {
        match reader.recv_timeout(deadline.saturating_duration_since(Instant::now()))? {
            Some(ServerLine::Ok {
                command: Command::Login,
                ..
            }) => return Ok(Ok((link, reader, info.limits, mailbox))),
            Some(ServerLine::Ok {
                command: Command::Mailbox,
                detail,
            }) => mailbox = MailboxLimits::from_detail(&detail),
            Some(ServerLine::Err {
                command: Some(Command::Login),
                code,
                text,
            }) => {
                if matches!(code, ErrorCode::AuthFailed | ErrorCode::BadUsername) {
                    return Ok(Err(text));
                }
                return Err(Error::Protocol(format!("login not possible now: {text}")));
            }
            Some(_) | None => {}
        }
    }
    Err(Error::Protocol("no answer to the login in time".into()))
}

/// A connection before login, re-opened if the server closed it (for example after the
/// login timeout while the user was at the menu).
struct Connection {
    /// Sends requests.
    link: Link,
    /// Reads replies (on this thread until login).
    reader: LinkReader,
    /// For reconnecting.
    server: String,
    /// For reconnecting.
    resolve: Option<std::net::SocketAddr>,
    /// For reconnecting.
    config: Arc<rustls::ClientConfig>,
    /// What the server's greeting allows.
    limits: AnnouncedLimits,
    /// The server's federation name, from its greeting (`None`: it does not federate).
    home: Option<ServerName>,
    /// The server's offline-delivery limits, once it accepted `MAILBOX` before the login;
    /// `None` for a server without offline delivery (it answers `ERR - unknown-command`).
    mailbox: Option<MailboxLimits>,
}

impl Connection {
    fn open(
        server: &str,
        resolve: Option<std::net::SocketAddr>,
        config: Arc<rustls::ClientConfig>,
        screen: &Screen,
    ) -> Result<Connection> {
        let (link, reader, info) = link::connect_to(server, resolve, config.clone())?;
        screen.print(&format!(
            "connected to {server} ({}) over {}",
            info.addr, info.tls
        ));
        Ok(Connection {
            link,
            reader,
            limits: info.limits,
            home: info.home,
            mailbox: None,
            server: server.to_owned(),
            resolve,
            config,
        })
    }

    /// Sends an authentication request and waits for its `OK` or `ERR`. If the server had
    /// closed the connection meanwhile, reconnects once and tries again.
    fn authenticate(
        &mut self,
        request: &Request<'_>,
        screen: &Screen,
    ) -> Result<std::result::Result<String, String>> {
        for attempt in 0..2 {
            if attempt == 1 {
                screen.print("(the server closed the idle connection; reconnecting)");
                let (link, reader, info) =
                    link::connect_to(&self.server, self.resolve, self.config.clone())?;
                self.link = link;
                self.reader = reader;
                self.limits = info.limits;
                self.home = info.home;
            }
            let verb = request.command();
            // Ask for the room's recent lines before logging in: history is an opt-in, so
            // that clients that cannot read `HISTORY` frames never get one. Its `OK
            // HISTORY` (or an older server's `ERR - unknown-command`) is passed over below.
            // Only here, before the session starts: after a reconnect (`relogin`) it would
            // repeat lines already on the screen.
            // `MAILBOX` likewise opts in to offline delivery (section 11.10); an old server's
            // `ERR - unknown-command` leaves it off.
            if verb == Command::Login
                && (self.link.send(&Request::Mailbox).is_err()
                    || self.link.send(&Request::History).is_err())
            {
                continue;
            }
            if self.link.send(request).is_err() {
                continue;
            }
            loop {
                match self.reader.recv()? {
                    Some(ServerLine::Ok { command, detail }) if command == verb => {
                        return Ok(Ok(detail))
                    }
                    Some(ServerLine::Err { command, text, .. }) if command == Some(verb) => {
                        return Ok(Err(text))
                    }
                    Some(ServerLine::Ok {
                        command: Command::Mailbox,
                        detail,
                    }) => self.mailbox = MailboxLimits::from_detail(&detail),
                    Some(ServerLine::Bye { .. }) | None => break,
                    Some(_) => {}
                }
            }
        }
        Err(Error::Protocol(
            "the server keeps closing the connection".into(),
        ))
    }
}

/// The `l`/`r`/`c` menu. Returns the logged-in account, or `None` if the user chose to
/// close.
fn menu(connection: &mut Connection, screen: &Screen) -> Result<Option<Credentials>> {
    loop {
        screen.print("");
        screen.print("  l) log in    r) register    c) close");
        let Some(choice) = prompt_line("> ")? else {
            return Ok(None);
        };
        match choice.trim().to_lowercase().as_str() {
            "l" => {
                let Some(user) = prompt_line("username: ")? else {
                    return Ok(None);
                };
                let password = read_hidden("password: ")?;
                if let Some(credentials) = login(connection, user.trim(), password, screen)? {
                    return Ok(Some(credentials));
                }
            }
            "r" => {
                let Some(user) = prompt_line("choose a username: ")? else {
                    return Ok(None);
                };
                let user = user.trim();
                let canonical = match normalize_username(user) {
                    Ok(name) => name,
                    Err(rule) => {
                        screen.print(&rule.to_string());
                        continue;
                    }
                };
                let Some(password) = choose_password(&canonical, screen)? else {
                    continue;
                };
                let request = Request::Register {
                    user,
                    password: &password,
                };
                match connection.authenticate(&request, screen)? {
                    Ok(name) => screen.print(&format!("account {} created", sanitize(&name))),
                    Err(text) => {
                        screen.print(&format!("registration refused: {}", sanitize(&text)));
                        continue;
                    }
                }
                if let Some(credentials) = login(connection, user, password, screen)? {
                    return Ok(Some(credentials));
                }
            }
            "c" | "q" => return Ok(None),
            "" => {}
            _ => screen.print("type l, r or c"),
        }
    }
}

/// Asks for a new password until one follows the rules (shown first) and is typed the
/// same twice; `None` if the user gives up with an empty password.
fn choose_password(user: &str, screen: &Screen) -> Result<Option<String>> {
    screen.print(&format!(
        "{}\n(Enter alone goes back to the menu)",
        rules_text()
    ));
    loop {
        let password = read_hidden("choose a password: ")?;
        if password.is_empty() {
            screen.print("nothing was registered");
            return Ok(None);
        }
        let problems = password_problems(user, &password);
        if !problems.is_empty() {
            screen.print(&format!(
                "password needs: {}. Type another one",
                problems.join("; ")
            ));
            continue;
        }
        let again = read_hidden("repeat the password: ")?;
        if again != password {
            screen.print("the two passwords differ; choose it again");
            continue;
        }
        return Ok(Some(password));
    }
}

/// Logs in; `None` (after telling the user why) if refused.
fn login(
    connection: &mut Connection,
    user: &str,
    password: String,
    screen: &Screen,
) -> Result<Option<Credentials>> {
    if user.is_empty() || password.is_empty() {
        screen.print("both a username and a password are needed");
        return Ok(None);
    }
    let request = Request::Login {
        user,
        password: &password,
    };
    match connection.authenticate(&request, screen)? {
        Ok(user) => Ok(Some(Credentials { user, password })),
        Err(text) => {
            screen.print(&format!("login refused: {}", sanitize(&text)));
            Ok(None)
        }
    }
}

/// `--user NAME` without the menu: the password comes from standard input
/// (`--password-stdin`) or a hidden prompt.
fn scripted_login(
    connection: &mut Connection,
    options: &Options,
    user: &str,
    screen: &Screen,
) -> Result<Credentials> {
    let password = if options.password_stdin {
        prompt_line("")?
            .map(|line| line.trim_end_matches(['\r', '\n']).to_owned())
            .ok_or_else(|| Error::Config("no password on standard input".into()))?
    } else {
        read_hidden("password: ")?
    };
    if options.register {
        match connection.authenticate(
            &Request::Register {
                user,
                password: &password,
            },
            screen,
        )? {
            Ok(name) => screen.print(&format!("account {} created", sanitize(&name))),
            Err(text) => return Err(Error::Config(format!("registration refused: {text}"))),
        }
    }
    login(connection, user, password, screen)?.ok_or_else(|| Error::Config("login refused".into()))
}

/// The terminal's settings when the client started.
static SAVED_TERMINAL: OnceLock<TerminalState> = OnceLock::new();

/// Restores the terminal and exits with the conventional status for an interrupt.
fn leave_interrupted(terminal: &TerminalState) -> ! {
    terminal.restore();
    println!();
    std::process::exit(130);
}

/// Reads a password without echoing it. Ctrl-C here leaves the program the same way as
/// anywhere before login: terminal restored, exit status 130. (rpassword reads the key
/// itself and reports it as an interrupted read.)
fn read_hidden(prompt: &str) -> Result<String> {
    match rpassword::prompt_password(prompt) {
        Ok(password) => Ok(password),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            leave_interrupted(SAVED_TERMINAL.get_or_init(TerminalState::save))
        }
        Err(e) => Err(e.into()),
    }
}

/// Prints `prompt` and reads one line from standard input; `None` at end of input.
fn prompt_line(prompt: &str) -> Result<Option<String>> {
    if !prompt.is_empty() {
        print!("{prompt}");
        io::stdout().flush()?;
    }
    let mut line = String::new();
    if io::stdin().lock().read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()))
}

/// Reads frames from the server on a thread of its own; `generation` tells the chat loop
/// which connection they came from (after a reconnect, the old reader's farewell must
/// not count).
fn spawn_reader(generation: u64, mut reader: LinkReader, events: Sender<Event>) -> Result<()> {
    thread::Builder::new()
        .name("server-reader".into())
        .spawn(move || loop {
            let event = match reader.recv() {
                Ok(Some(line)) => Event::Server(generation, line),
                Ok(None) => {
                    Event::Disconnected(generation, "the server closed the connection".into())
                }
                Err(e) => Event::Disconnected(generation, e.to_string()),
            };
            let last = matches!(event, Event::Disconnected(..));
            if events.send(event).is_err() || last {
                return;
            }
        })?;
    Ok(())
}

/// The terminal's settings at start, restored if the user interrupts a hidden-password
/// prompt (which turns echo off).
#[derive(Clone, Copy)]
struct TerminalState {
    /// `None` when standard input is not a terminal.
    saved: Option<libc::termios>,
}

impl TerminalState {
    fn save() -> TerminalState {
        // SAFETY: `isatty` and `tcgetattr` only read the descriptor's state into `termios`.
        unsafe {
            if libc::isatty(libc::STDIN_FILENO) != 1 {
                return TerminalState { saved: None };
            }
            let mut termios: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut termios) != 0 {
                return TerminalState { saved: None };
            }
            TerminalState {
                saved: Some(termios),
            }
        }
    }

    /// Throws away whatever was typed and not read yet, so that nothing typed into the
    /// chat reaches the shell after the client exits.
    fn discard_typeahead(&self) {
        if self.saved.is_some() {
            // SAFETY: tcflush only discards the terminal's pending input.
            unsafe {
                libc::tcflush(libc::STDIN_FILENO, libc::TCIFLUSH);
            }
        }
    }

    fn restore(&self) {
        if let Some(termios) = &self.saved {
            // SAFETY: restores settings previously read from the same descriptor.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, termios);
            }
        }
    }
}
