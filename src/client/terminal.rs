//! The interactive terminal client: connect, the `l`/`r`/`c` menu with hidden password
//! entry, then the chat loop.
//!
//! Threads after login: the main thread runs the [`Chat`]; a reader thread turns frames
//! from the server into events; an input thread turns typed lines into events. Both feed
//! one channel, so the chat state has a single owner. While idle the main thread sends
//! `PING` so the server's idle timeout never closes a session that is merely quiet, and it
//! wakes when a key exchange has waited too long, to tell the user.
//!
//! For scripts and tests, `--user NAME --password-stdin [--register]` logs in without the
//! menu, reading the password from the first line of standard input.

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};

use crate::accounts::{normalize_username, password_problems};
use crate::client::app::{Chat, Flow};
use crate::client::link::{self, Link, LinkReader};
use crate::client::paths;
use crate::client::screen::{sanitize, Screen};
use crate::client::secure::Secure;
use crate::e2e::{Group, IdentityKey, PinStore};
use crate::error::{Error, Result};
use crate::protocol::{Request, ServerLine};
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
}

/// Events for the chat loop.
enum Event {
    /// A frame from the server.
    Server(ServerLine),
    /// The connection ended (with why).
    Disconnected(String),
    /// A line typed by the user.
    Typed(String),
    /// Standard input ended.
    InputClosed,
    /// Ctrl-C, SIGTERM or a closed terminal.
    Interrupted,
}

/// Runs the client until the user leaves. Returns an error for failures the user must see
/// (cannot connect, certificate refused, login refused in scripted mode).
pub fn run(options: Options) -> Result<()> {
    let terminal = *SAVED_TERMINAL.get_or_init(TerminalState::save);
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
    let mut connection = Connection::open(&options.server, options.resolve, config, &screen)?;

    let user = match &options.user {
        Some(user) => scripted_login(&mut connection, &options, user, &screen)?,
        None => match menu(&mut connection, &screen)? {
            Some(user) => user,
            None => {
                connection.link.close();
                return Ok(());
            }
        },
    };

    let dir = paths::user_dir(
        &paths::base_dir(options.home.as_deref())?,
        &options.server,
        &user,
    );
    crate::files::check_directory_chain(&dir).map_err(|e| Error::Config(e.to_string()))?;
    let (identity, created) = IdentityKey::load_or_create(&dir.join(paths::IDENTITY_FILE))
        .map_err(|e| Error::Config(e.to_string()))?;
    if created {
        screen.event(&format!(
            "* created your identity key in {} (fingerprint {})",
            dir.display(),
            identity.public_key().fingerprint()
        ));
    }
    let pins = PinStore::open_for_identity(&dir.join(paths::PINS_FILE), created)
        .map_err(|e| Error::Config(e.to_string()))?;
    let secure = Secure::new(&user, identity, pins, options.group, options.explain);
    let Connection { link, reader, .. } = connection;
    let mut chat = Chat::new(&user, link.clone(), screen.clone(), secure);
    chat.start()?;

    let (tx, rx) = crossbeam_channel::unbounded();
    *chat_events.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx.clone());
    spawn_reader(reader, tx.clone())?;
    spawn_input(tx)?;
    loop {
        // Checked on every turn, not only when the channel is quiet: in a busy room it
        // never is.
        chat.expire_stalled()?;
        // Ping when nothing was *sent* for a while: a user who only reads a busy room
        // must not be cut off by the server's idle timeout. Wake earlier if a key
        // exchange would time out first.
        let keepalive = options.keepalive;
        let until_ping = keepalive.saturating_sub(link.idle_for());
        let wait = chat.next_deadline().map_or(until_ping, |deadline| {
            until_ping.min(deadline.saturating_duration_since(Instant::now()))
        });
        let event = match rx.recv_timeout(wait) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => {
                if link.idle_for() >= keepalive {
                    link.send(&Request::Ping { token: "" })?;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let flow = match event {
            Event::Server(line) => chat.server(line)?,
            Event::Typed(line) => chat.input(&line)?,
            Event::Disconnected(reason) => {
                screen.warn(&format!("disconnected: {reason}"));
                break;
            }
            Event::InputClosed | Event::Interrupted => {
                let _ = link.send(&Request::Quit);
                Flow::Quit
            }
        };
        if flow == Flow::Quit {
            break;
        }
    }
    link.close();
    screen.event("* bye");
    Ok(())
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
                let (link, reader, _) =
                    link::connect_to(&self.server, self.resolve, self.config.clone())?;
                self.link = link;
                self.reader = reader;
            }
            if self.link.send(request).is_err() {
                continue;
            }
            let verb = request.command().verb();
            loop {
                match self.reader.recv()? {
                    Some(ServerLine::Ok { command, detail }) if command == verb => {
                        return Ok(Ok(detail))
                    }
                    Some(ServerLine::Err { command, text, .. }) if command == verb => {
                        return Ok(Err(text))
                    }
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

/// The `l`/`r`/`c` menu. Returns the logged-in user, or `None` if the user chose to close.
fn menu(connection: &mut Connection, screen: &Screen) -> Result<Option<String>> {
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
                match login(connection, user.trim(), &password, screen)? {
                    Some(user) => return Ok(Some(user)),
                    None => continue,
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
                        screen.print(&rule);
                        continue;
                    }
                };
                let password = read_hidden("choose a password: ")?;
                let problems = password_problems(&canonical, &password);
                if !problems.is_empty() {
                    screen.print(&format!("password needs: {}", problems.join("; ")));
                    continue;
                }
                let again = read_hidden("repeat the password: ")?;
                if again != password {
                    screen.print("the two passwords differ; nothing was registered");
                    continue;
                }
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
                if let Some(user) = login(connection, user, &password, screen)? {
                    return Ok(Some(user));
                }
            }
            "c" | "q" => return Ok(None),
            "" => {}
            _ => screen.print("type l, r or c"),
        }
    }
}

/// Logs in; `None` (after telling the user why) if refused.
fn login(
    connection: &mut Connection,
    user: &str,
    password: &str,
    screen: &Screen,
) -> Result<Option<String>> {
    if user.is_empty() || password.is_empty() {
        screen.print("both a username and a password are needed");
        return Ok(None);
    }
    match connection.authenticate(&Request::Login { user, password }, screen)? {
        Ok(name) => Ok(Some(name)),
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
) -> Result<String> {
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
    login(connection, user, &password, screen)?.ok_or_else(|| Error::Config("login refused".into()))
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

fn spawn_reader(mut reader: LinkReader, events: Sender<Event>) -> Result<()> {
    thread::Builder::new()
        .name("server-reader".into())
        .spawn(move || loop {
            let event = match reader.recv() {
                Ok(Some(line)) => Event::Server(line),
                Ok(None) => Event::Disconnected("the server closed the connection".into()),
                Err(e) => Event::Disconnected(e.to_string()),
            };
            let last = matches!(event, Event::Disconnected(_));
            if events.send(event).is_err() || last {
                return;
            }
        })?;
    Ok(())
}

fn spawn_input(events: Sender<Event>) -> Result<()> {
    thread::Builder::new().name("input".into()).spawn(move || {
        for line in io::stdin().lock().lines() {
            match line {
                Ok(line) => {
                    if events.send(Event::Typed(line)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = events.send(Event::InputClosed);
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

    fn restore(&self) {
        if let Some(termios) = &self.saved {
            // SAFETY: restores settings previously read from the same descriptor.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, termios);
            }
        }
    }
}
