//! The terminal client as a person uses it: the real `client` binary in a pseudo-terminal
//! (the `rexpect` crate), against a real server running in this process.
//!
//! Hidden password entry opens `/dev/tty`, so only a pseudo-terminal exercises it. The
//! terminal is put back into its normal mode (echo on) before the client starts, so that
//! anything the client failed to hide would show up in the transcript, as it would on a
//! real screen. Typed lines therefore appear in transcripts too.
//!
//! After login the line editor owns the terminal; what it shows is read back with a
//! terminal emulator (the `vt100` crate), row by row, as a person would see it.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use regex::Regex;
use rexpect::process::WaitStatus;
use rexpect::session::PtySession;

use common::{contains, files_under, ServerProcess, TestServer, PASSWORD};
use securechat::client::paths;
use securechat::client::screen::{offline_label, private_label, ROOM_LABEL};
use securechat::e2e::{safety_number, IdentityKey, Trust};
use securechat::protocol::ServerLine;

/// Longest wait for anything the client should print. Generous: liveness only.
const TIMEOUT: Duration = Duration::from_secs(15);

/// How often the pseudo-terminal is polled while waiting for output.
const POLL: Duration = Duration::from_millis(20);

/// Label of a private message under a key pinned on first use, as the client prints it.
fn first_use() -> String {
    private_label(Trust::FirstUse)
}

/// Turns echo back on (rexpect turns it off), makes the terminal wide enough that no line
/// here wraps, and runs the client in place of the shell.
const RUN_WITH_ECHO: &str = r#"stty echo cols 250 && exec "$0" "$@""#;

/// Like [`RUN_WITH_ECHO`], but a shell stays to report the client's process id, how it
/// ended, and whether the terminal echoes input afterwards.
const RUN_THEN_REPORT: &str = r#"stty echo cols 250 || exit 9
trap : INT
sh -c 'echo "client pid $$"; exec "$0" "$@"' "$0" "$@"
echo "client exit status $?"
echo "terminal mode after exit: $(stty -a | tr ' ;' '\n\n' | grep -x -e echo -e -echo)"
"#;

/// The size of the test terminals.
const ROWS: u16 = 40;
const COLUMNS: u16 = 120;

/// Like [`RUN_WITH_ECHO`], but after the client exits the shell reads whatever is left
/// typed on the terminal, as an interactive shell would run it, and shows it.
const RUN_THEN_SHELL_READS: &str = r#"stty echo || exit 9
"$0" "$@"
echo "client exit status $?"
stty -icanon min 0 time 5
echo "shell read: [$(head -c 200)]"
"#;

/// Like [`RUN_WITH_ECHO`], on a terminal the line editor cannot drive.
const RUN_ON_DUMB_TERMINAL: &str = r#"stty echo && TERM=dumb exec "$0" "$@""#;

/// One client in a pseudo-terminal, and everything it has printed so far.
struct Terminal {
    /// Which client this is, for failure messages.
    name: String,
    /// The client process and its terminal.
    session: PtySession,
    /// Everything read from the terminal and already matched.
    transcript: String,
    /// Read from the terminal but not yet matched.
    pending: String,
    /// The screen as a terminal shows it, fed everything read.
    screen: vt100::Parser,
}

impl Terminal {
    /// Starts the client in a fresh terminal, with its key store in `home`.
    fn spawn(name: &str, server: &TestServer, home: &Path) -> Terminal {
        Terminal::spawn_script(name, server, home, RUN_WITH_ECHO)
    }

    fn spawn_script(name: &str, server: &TestServer, home: &Path, script: &str) -> Terminal {
        Terminal::spawn_at(name, &server.address(), &server.ca, home, script)
    }

    /// The client against the server at `address` that `ca` vouches for.
    fn spawn_at(name: &str, address: &str, ca: &Path, home: &Path, script: &str) -> Terminal {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_client"))
            .arg("--server")
            .arg(address)
            .arg("--ca")
            .arg(ca)
            .arg("--home")
            .arg(home);
        let session = rexpect::session::spawn_command(command, Some(TIMEOUT.as_millis() as u64))
            .expect("start the client in a pseudo-terminal");
        set_window_size(&session);
        Terminal {
            name: name.to_owned(),
            session,
            transcript: String::new(),
            pending: String::new(),
            screen: vt100::Parser::new(ROWS, COLUMNS, 0),
        }
    }

    /// Moves whatever the terminal has printed into `pending`, and onto the screen.
    fn pull(&mut self) {
        while let Some(c) = self.session.try_read() {
            self.pending.push(c);
            self.screen.process(c.encode_utf8(&mut [0; 4]).as_bytes());
        }
    }

    /// Types `keys` as they are (no line end added): text, or escape sequences for keys.
    fn type_keys(&mut self, keys: &str) {
        self.session.send(keys).expect("type into the terminal");
        self.session.flush().expect("type into the terminal");
    }

    /// The screen's rows, as shown.
    fn rows(&mut self) -> Vec<String> {
        self.pull();
        self.screen.screen().rows(0, COLUMNS).collect()
    }

    /// The row the cursor is on: the input line.
    fn input_row(&mut self) -> String {
        self.pull();
        let (row, _) = self.screen.screen().cursor_position();
        self.rows()[usize::from(row)].trim_end().to_owned()
    }

    /// Waits until the input line shows exactly `shown`.
    fn wait_input_row(&mut self, shown: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while self.input_row() != shown {
            if Instant::now() > deadline {
                let rows = self.rows().join("\n");
                let input = self.input_row();
                self.fail(&format!(
                    "the input line is {input:?}, not {shown:?}; the screen:\n{rows}"
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until `needle` is printed; returns the text before it.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.pull();
            if let Some(at) = self.pending.find(needle) {
                let before: String = self.pending.drain(..at).collect();
                self.pending.drain(..needle.len());
                self.transcript.push_str(&before);
                self.transcript.push_str(needle);
                return before;
            }
            if Instant::now() > deadline {
                self.fail(&format!("nothing like {needle:?} within {TIMEOUT:?}"));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until `pattern` matches; returns the match's capture groups (0 = whole match).
    fn expect_regex(&mut self, pattern: &str) -> Vec<String> {
        let regex = Regex::new(pattern).expect("test regex");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.pull();
            if let Some(captures) = regex.captures(&self.pending) {
                let groups: Vec<String> = captures
                    .iter()
                    .map(|group| group.map_or_else(String::new, |m| m.as_str().to_owned()))
                    .collect();
                let end = captures.get(0).map_or(0, |m| m.end());
                let matched: String = self.pending.drain(..end).collect();
                self.transcript.push_str(&matched);
                return groups;
            }
            if Instant::now() > deadline {
                self.fail(&format!("nothing matching /{pattern}/ within {TIMEOUT:?}"));
            }
            thread::sleep(POLL);
        }
    }

    /// Reads for `window` and asserts that `needle` was not printed in that time (nor
    /// before, since the last match).
    fn assert_not_printed_within(&mut self, needle: &str, window: Duration) {
        let deadline = Instant::now() + window;
        while Instant::now() < deadline {
            self.pull();
            thread::sleep(POLL);
        }
        self.pull();
        if self.pending.contains(needle) || self.transcript.contains(needle) {
            self.fail(&format!("{needle:?} was printed, and must not be"));
        }
    }

    fn send_line(&mut self, line: &str) {
        self.session
            .send_line(line)
            .expect("type into the terminal");
    }

    /// Types a secret at a hidden prompt, once the client has really turned echo off,
    /// as a person would (typing earlier would be echoed by the terminal).
    fn send_hidden(&mut self, secret: &str) {
        self.wait_for_echo(false);
        self.send_line(secret);
    }

    /// Waits until the terminal's echo flag is `on`. Linux reports the terminal's
    /// settings through the controlling side too, which is what this reads.
    fn wait_for_echo(&mut self, on: bool) {
        let deadline = Instant::now() + TIMEOUT;
        while echo_is_on(&self.session) != on {
            if Instant::now() > deadline {
                self.fail(&format!("terminal echo never turned {on}"));
            }
            thread::sleep(POLL);
        }
    }

    fn send_ctrl_c(&mut self) {
        self.session.send_control('c').expect("send Ctrl-C");
    }

    /// Waits for the process to end; returns its exit code. Everything it printed is then
    /// in the transcript.
    fn wait_exit(&mut self) -> i32 {
        self.pull();
        match self.session.exp_eof() {
            Ok(rest) => {
                let pending = std::mem::take(&mut self.pending);
                self.transcript.push_str(&pending);
                self.transcript.push_str(&rest);
            }
            Err(e) => self.fail(&format!("the client did not exit: {e}")),
        }
        match self.session.process().wait() {
            Ok(WaitStatus::Exited(_, code)) => code,
            other => self.fail(&format!("the client ended abnormally: {other:?}")),
        }
    }

    /// Logs in (or registers and logs in) through the menu, then waits until the server
    /// has taken the identity key (a `/list` answered after it proves that).
    fn menu_login(&mut self, user: &str, password: &str, register: bool) {
        self.expect("c) close");
        self.expect("> ");
        if register {
            self.send_line("r");
            self.expect("choose a username: ");
            self.send_line(user);
            self.expect("choose a password: ");
            self.send_hidden(password);
            self.expect("repeat the password: ");
            self.send_hidden(password);
            self.expect(&format!("account {user} created"));
        } else {
            self.send_line("l");
            self.expect("username: ");
            self.send_line(user);
            self.expect("password: ");
            self.send_hidden(password);
        }
        self.expect(&format!("logged in as {user}."));
        self.online();
    }

    /// `/list`: the names online, as printed.
    fn online(&mut self) -> Vec<String> {
        self.send_line("/list");
        let groups = self.expect_regex(r"\* (\d+) online: ([^\r\n]*)\r?\n");
        groups[2].split(", ").map(str::to_owned).collect()
    }

    /// `/fingerprint USER`: the 12 groups of 5 digits shown.
    fn safety_number(&mut self, user: &str) -> String {
        self.send_line(&format!("/fingerprint {user}"));
        let groups = self.expect_regex(&format!(
            r"safety number with {user}: ((?:\d{{5}} ){{11}}\d{{5}})\r?\n"
        ));
        groups[1].clone()
    }

    /// `/quit`, then the exit code.
    fn quit(&mut self) -> i32 {
        self.send_line("/quit");
        self.wait_exit()
    }

    /// Everything read so far, matched or not: for what may already have been passed over
    /// by an earlier `expect` (logging in waits for the prompt).
    fn seen(&mut self) -> String {
        self.pull();
        format!("{}{}", self.transcript, self.pending)
    }

    /// Waits until everything read so far satisfies `done`, or fails naming `what`.
    fn wait_until(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !done(&self.seen()) {
            if Instant::now() > deadline {
                self.fail(what);
            }
            thread::sleep(POLL);
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        self.pull();
        panic!(
            "{}: {what}\n--- transcript ---\n{}\n--- not yet matched ---\n{}",
            self.name, self.transcript, self.pending
        )
    }
}

/// Gives the pseudo-terminal a size (a fresh one has none), the same as the emulator's.
fn set_window_size(session: &PtySession) {
    let master = session
        .process()
        .get_file_handle()
        .expect("terminal handle");
    let size = libc::winsize {
        ws_row: ROWS,
        ws_col: COLUMNS,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ only reads `size` and sets the terminal's size.
    unsafe {
        assert_eq!(libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size), 0);
    }
}

/// Whether the terminal behind `session` echoes input now.
fn echo_is_on(session: &PtySession) -> bool {
    let master = session
        .process()
        .get_file_handle()
        .expect("terminal handle");
    // SAFETY: tcgetattr only writes the settings of a descriptor we own into `termios`.
    unsafe {
        let mut termios: libc::termios = std::mem::zeroed();
        assert_eq!(
            libc::tcgetattr(master.as_raw_fd(), &mut termios),
            0,
            "tcgetattr on the terminal"
        );
        termios.c_lflag & libc::ECHO != 0
    }
}

/// alice and bob, registered and logged in, each in a terminal with a key store of their
/// own.
struct Pair {
    alice: Terminal,
    bob: Terminal,
    alice_home: tempfile::TempDir,
    bob_home: tempfile::TempDir,
}

fn alice_and_bob(server: &TestServer) -> Pair {
    let (alice_home, bob_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut alice = Terminal::spawn("alice", server, alice_home.path());
    alice.menu_login("alice", PASSWORD, true);
    let mut bob = Terminal::spawn("bob", server, bob_home.path());
    bob.menu_login("bob", PASSWORD, true);
    Pair {
        alice,
        bob,
        alice_home,
        bob_home,
    }
}

/// The user's key directory the client uses for `server`.
fn user_dir(home: &Path, server: &TestServer, user: &str) -> std::path::PathBuf {
    paths::user_dir(home, &server.address(), user)
        .expect("the key directory")
        .0
}

#[test]
fn close_leaves_cleanly_and_unknown_choices_are_explained() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    let mut client = Terminal::spawn("client", &server, home.path());
    client.expect("connected to ");
    client.expect("  l) log in    r) register    c) close");
    client.expect("> ");
    client.send_line("x");
    client.expect("type l, r or c");
    client.expect("> ");
    client.send_line("c");
    assert_eq!(client.wait_exit(), 0, "closing from the menu is a success");
    assert!(
        !client.transcript.contains("error"),
        "{}",
        client.transcript
    );
}

#[test]
fn registration_refuses_weak_and_mismatched_passwords_and_creates_nothing() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    let mut client = Terminal::spawn("client", &server, home.path());

    client.expect("> ");
    client.send_line("r");
    client.expect("choose a username: ");
    client.send_line("alice");
    // The rules are shown before the user types.
    client.expect("a passphrase of 15 or more characters (a few words) needs nothing else");
    client.expect("choose a password: ");
    client.send_hidden("abc");
    let rules = client.expect_regex(r"password needs: ([^\r\n]*)\r?\n");
    for rule in ["at least 8 characters", "an upper-case letter", "a digit"] {
        assert!(
            rules[1].contains(rule),
            "{:?} does not name {rule:?}",
            rules[1]
        );
    }
    // Another password, without starting over; Enter alone goes back to the menu.
    client.expect("choose a password: ");
    client.send_hidden("");
    client.expect("nothing was registered");
    client.expect("c) close");

    client.expect("> ");
    client.send_line("r");
    client.expect("choose a username: ");
    client.send_line("alice");
    client.expect("choose a password: ");
    client.send_hidden(PASSWORD);
    client.expect("repeat the password: ");
    client.send_hidden("Sturdy pass 2");
    client.expect("the two passwords differ; choose it again");
    client.expect("choose a password: ");
    client.send_hidden("");
    client.expect("c) close");
    client.expect("> ");
    client.send_line("c");
    assert_eq!(client.wait_exit(), 0);
    assert!(!client.transcript.contains("account alice created"));

    // Neither attempt reached the server: the name is still free.
    let mut other = server.connect();
    other.register_ok("alice");
}

#[test]
fn registering_logs_in_and_the_password_never_shows_or_is_stored() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    let password = "Hidden Typed 4711";
    let mut client = Terminal::spawn("alice", &server, home.path());
    client.menu_login("alice", password, true);
    let online = client.online();
    assert_eq!(online, ["alice"]);
    assert_eq!(client.quit(), 0);

    // The terminal echoes what is typed (the user name shows after its prompt), so a
    // password that was not hidden would be in the transcript.
    assert!(
        client.transcript.contains("choose a username: alice"),
        "typed input is not echoed, so this test proves nothing:\n{}",
        client.transcript
    );
    assert!(
        !client.transcript.contains(password),
        "the password appeared on screen:\n{}",
        client.transcript
    );

    // Not on the server's disk (database and its write-ahead log) ...
    let stored = files_under(&server.data_dir());
    assert!(stored.iter().any(|(_, bytes)| contains(bytes, "alice")));
    for (path, bytes) in &stored {
        assert!(!contains(bytes, password), "password in {}", path.display());
    }
    // ... nor in the client's key store, which holds a private key file only the user
    // can read.
    let dir = user_dir(home.path(), &server, "alice");
    let key_file = dir.join(paths::IDENTITY_FILE);
    let mode = fs::metadata(&key_file)
        .expect("identity key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key_file.display());
    for (path, bytes) in files_under(home.path()) {
        assert!(
            !contains(&bytes, password),
            "password in {}",
            path.display()
        );
    }
}

#[test]
fn a_wrong_password_is_refused_then_the_right_one_logs_in() {
    let server = TestServer::start();
    let mut setup = server.connect();
    setup.register_ok("alice");
    let home = tempfile::tempdir().unwrap();
    let mut client = Terminal::spawn("alice", &server, home.path());

    client.expect("> ");
    client.send_line("l");
    client.expect("username: ");
    client.send_line("alice");
    client.expect("password: ");
    client.send_hidden("Sturdy pass 2");
    client.expect("login refused: invalid username or password");
    assert!(!client.transcript.contains("logged in as"));

    client.menu_login("alice", PASSWORD, false);
    assert_eq!(client.quit(), 0);
}

#[test]
fn private_messages_are_end_to_end_and_room_messages_are_labelled_as_such() {
    let server = TestServer::start();
    let Pair {
        mut alice,
        mut bob,
        alice_home: _alice_home,
        bob_home: _bob_home,
    } = alice_and_bob(&server);
    assert_eq!(alice.online(), ["alice", "bob"]);
    assert_eq!(bob.online(), ["alice", "bob"]);

    alice.send_line("/msg bob meet me at the usual place");
    bob.expect("message request: alice asks");
    bob.send_line("/accept alice");
    bob.expect(&format!(
        "alice -> (you) {}: meet me at the usual place",
        first_use()
    ));
    alice.expect(&format!(
        "(you) -> bob {}: meet me at the usual place",
        first_use()
    ));

    bob.send_line("/msg alice see you there");
    alice.expect(&format!("bob -> (you) {}: see you there", first_use()));

    // /chat makes plain lines private too.
    bob.send_line("/chat alice");
    bob.expect("now talking to alice");
    bob.send_line("this one is private as well");
    alice.expect(&format!(
        "bob -> (you) {}: this one is private as well",
        first_use()
    ));

    // Back in the room, a plain line is public, and says so.
    bob.send_line("/chat");
    bob.expect("back in the public room");
    bob.send_line("hello everyone");
    alice.expect(&format!("bob {ROOM_LABEL}: hello everyone"));
    bob.expect(&format!("(you) {ROOM_LABEL}: hello everyone"));

    assert!(!alice.transcript.contains("!!!"), "{}", alice.transcript);
    assert!(!bob.transcript.contains("!!!"), "{}", bob.transcript);
    assert_eq!(alice.quit(), 0);
    assert_eq!(bob.quit(), 0);
}

#[test]
fn both_sides_show_the_same_safety_number_and_verify_marks_the_pin() {
    let server = TestServer::start();
    let Pair {
        mut alice,
        mut bob,
        alice_home,
        bob_home,
    } = alice_and_bob(&server);

    let seen_by_alice = alice.safety_number("bob");
    alice.expect("not pinned yet");
    let seen_by_bob = bob.safety_number("alice");
    assert_eq!(seen_by_alice, seen_by_bob);

    // It is the number of the two keys the clients hold on disk.
    let key_of = |home: &Path, user: &str| {
        let file = user_dir(home, &server, user).join(paths::IDENTITY_FILE);
        let (key, created) = IdentityKey::load_or_create(&file).expect("identity key");
        assert!(!created, "{} should exist", file.display());
        key.public_key()
    };
    let expected = safety_number(
        "alice",
        &key_of(alice_home.path(), "alice"),
        "bob",
        &key_of(bob_home.path(), "bob"),
    );
    assert_eq!(seen_by_alice, expected);

    // Nothing is pinned before the first conversation, so there is nothing to verify.
    alice.send_line("/verify bob");
    alice.expect("no key is pinned for bob");

    alice.send_line("/msg bob hello");
    bob.expect("message request: alice asks");
    bob.send_line("/accept alice");
    bob.expect(&format!("alice -> (you) {}: hello", first_use()));
    alice.send_line("/verify bob");
    alice.expect("bob: key marked as verified");
    assert_eq!(alice.safety_number("bob"), expected);
    alice.expect("(pinned, verified)");

    let pins =
        fs::read_to_string(user_dir(alice_home.path(), &server, "alice").join(paths::PINS_FILE))
            .expect("alice's pinned keys");
    let bob_key = key_of(bob_home.path(), "bob").to_base64();
    assert!(
        pins.lines()
            .any(|line| line == format!("bob {bob_key} verified")),
        "{pins}"
    );
    assert_eq!(alice.quit(), 0);
    assert_eq!(bob.quit(), 0);
}

#[test]
fn a_changed_identity_key_holds_messages_until_accepted() {
    let server = TestServer::start();
    let alice_home = tempfile::tempdir().unwrap();
    let (bob_home, bob_new_device) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut alice = Terminal::spawn("alice", &server, alice_home.path());
    alice.menu_login("alice", PASSWORD, true);
    let mut bob = Terminal::spawn("bob", &server, bob_home.path());
    bob.menu_login("bob", PASSWORD, true);

    // A first conversation pins bob's key at alice's.
    alice.send_line("/msg bob before the change");
    bob.expect("message request: alice asks");
    bob.send_line("/accept alice");
    bob.expect(&format!(
        "alice -> (you) {}: before the change",
        first_use()
    ));
    assert_eq!(bob.quit(), 0);
    alice.expect("bob is offline; the end-to-end session with them is closed");

    // bob on a new device: a new identity key, published at login.
    let mut bob = Terminal::spawn("bob (new device)", &server, bob_new_device.path());
    bob.menu_login("bob", PASSWORD, false);
    assert!(
        bob.transcript.contains("created your identity key"),
        "{}",
        bob.transcript
    );

    alice.send_line("/msg bob after the change");
    alice.expect("IDENTITY KEY HAS CHANGED");
    alice.send_line("/fingerprint bob");
    alice.expect("DIFFERENT from the pinned key");
    // The number shown is the pinned key's; nothing can be verified while the key differs.
    alice.send_line("/verify bob");
    alice.expect("bob: not verified: the server offers a key different from the pinned one");

    // Anything alice sent bob before this room line would reach him before it.
    alice.send_line("marker after the warning");
    bob.expect(&format!("alice {ROOM_LABEL}: marker after the warning"));
    bob.assert_not_printed_within("after the change", Duration::from_secs(1));
    assert!(
        !alice.transcript.contains(
            "-> bob [private, e2e, key changed, accepted, not verified]: after the change"
        ),
        "{}",
        alice.transcript
    );

    alice.send_line("/accept bob");
    alice.expect("bob: new key");
    // To bob's new device, alice is someone new: a message request again.
    bob.expect("message request: alice asks");
    bob.send_line("/accept alice");
    bob.expect(&format!("alice -> (you) {}: after the change", first_use()));
    alice.expect(&format!(
        "(you) -> bob {}: after the change",
        private_label(Trust::Accepted)
    ));
    assert_eq!(alice.quit(), 0);
    assert_eq!(bob.quit(), 0);
    assert_eq!(
        bob.transcript.matches("after the change").count(),
        1,
        "delivered exactly once:\n{}",
        bob.transcript
    );
}

#[test]
fn ctrl_c_in_the_chat_logs_out_cleanly() {
    // The real server binary, so that its log shows how the session ended.
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(dir.path(), &[]);
    let home = tempfile::tempdir().unwrap();
    let mut watcher = server.connect();
    watcher.register_ok("watcher");
    watcher.login_ok("watcher");
    let mut client = Terminal::spawn_at(
        "alice",
        &server.address(),
        &server.ca,
        home.path(),
        RUN_WITH_ECHO,
    );
    client.menu_login("alice", PASSWORD, true);
    assert_eq!(client.online(), ["alice", "watcher"]);

    client.send_ctrl_c();
    client.expect("* bye");
    assert_eq!(client.wait_exit(), 0);

    // The server saw a goodbye (QUIT), not a lost connection, and alice is gone.
    let deadline = Instant::now() + TIMEOUT;
    while !server.log().contains("closed: client quit") {
        assert!(
            Instant::now() < deadline,
            "no QUIT in the server's log:\n{}",
            server.log()
        );
        thread::sleep(POLL);
    }
    assert_eq!(
        watcher.request("LIST"),
        ServerLine::Ok {
            command: securechat::protocol::Command::List,
            detail: "1 watcher".into()
        }
    );
}

/// Starts the client under [`RUN_THEN_REPORT`] and logs in up to the hidden password
/// prompt, checking that the prompt turned echo off. Returns the client's process id.
fn at_hidden_password_prompt(client: &mut Terminal) -> libc::pid_t {
    let pid = client.expect_regex(r"client pid (\d+)")[1]
        .parse()
        .expect("a process id");
    client.expect("> ");
    client.send_line("l");
    client.expect("username: ");
    client.send_line("alice");
    client.expect("password: ");
    client.wait_for_echo(false);
    pid
}

#[test]
fn ctrl_c_at_a_hidden_password_prompt_exits_and_restores_echo() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    let mut client = Terminal::spawn_script("client", &server, home.path(), RUN_THEN_REPORT);
    at_hidden_password_prompt(&mut client);
    client.send_ctrl_c();
    let status = client.expect_regex(r"client exit status (\d+)");
    client.expect("terminal mode after exit: echo\r\n");
    assert_eq!(client.wait_exit(), 0, "the reporting shell ends normally");
    // Whichever notices the interrupt first (the signal handler, or the password prompt
    // that read the key), the client leaves the same way.
    assert_eq!(status[1], "130", "exit status after Ctrl-C");
}

#[test]
fn termination_at_a_hidden_password_prompt_restores_echo() {
    // A signal (here SIGTERM; a closed terminal sends SIGHUP) never reaches the password
    // prompt's own clean-up: only the client's handler can turn echo back on.
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    let mut client = Terminal::spawn_script("client", &server, home.path(), RUN_THEN_REPORT);
    let pid = at_hidden_password_prompt(&mut client);
    // SAFETY: kill only sends a signal to the client this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    client.expect("client exit status 130\r\n");
    client.expect("terminal mode after exit: echo\r\n");
    assert_eq!(client.wait_exit(), 0, "the reporting shell ends normally");
}

/// Keys as a terminal sends them.
const LEFT: &str = "\x1b[D";
const HOME: &str = "\x1b[H";
const END: &str = "\x1b[F";
const UP: &str = "\x1b[A";
const BACKSPACE: &str = "\x7f";
const ENTER: &str = "\r";

/// The next room line `client` receives.
fn next_room_line(client: &mut common::TestClient) -> ServerLine {
    client.recv_until(|line| matches!(line, ServerLine::Room { .. }))
}

#[test]
fn a_half_typed_line_survives_a_hundred_incoming_messages_and_edits_are_sent_as_shown() {
    let server = TestServer::start();
    let mut talker = server.login("talker");
    let home = tempfile::tempdir().unwrap();
    let mut alice = Terminal::spawn("alice", &server, home.path());
    alice.menu_login("alice", PASSWORD, true);

    alice.type_keys("abcdef");
    alice.wait_input_row("[to the room] > abcdef");
    for i in 0..100 {
        talker.send(&format!("SAY incoming {i}"));
    }
    alice.expect(&format!("talker {ROOM_LABEL}: incoming 99"));
    // Every incoming line is on a row of its own, above the input line, which is whole.
    alice.wait_input_row("[to the room] > abcdef");
    let rows = alice.rows();
    assert!(
        rows.iter().any(|row| row
            .trim_end()
            .ends_with(&format!("talker {ROOM_LABEL}: incoming 99"))),
        "{rows:#?}"
    );
    assert_eq!(
        rows.iter().filter(|row| row.contains("abcdef")).count(),
        1,
        "{rows:#?}"
    );

    // Edit in the middle, at the start and at the end: what is shown is what is sent.
    alice.type_keys(&format!("{LEFT}{LEFT}{LEFT}{BACKSPACE}XYZ{HOME}<{END}>"));
    alice.wait_input_row("[to the room] > <abXYZdef>");
    alice.type_keys(ENTER);
    let sent = ServerLine::Room {
        user: "alice".into(),
        text: "<abXYZdef>".into(),
    };
    assert_eq!(next_room_line(&mut talker), sent);
    alice.expect(&format!("(you) {ROOM_LABEL}: <abXYZdef>"));

    // Up recalls it, exactly.
    alice.wait_input_row("[to the room] >");
    alice.type_keys(UP);
    alice.wait_input_row("[to the room] > <abXYZdef>");
    alice.type_keys(ENTER);
    assert_eq!(next_room_line(&mut talker), sent);

    // Tab completes a command, then a name seen online.
    alice.type_keys("/ms\tta\t");
    alice.wait_input_row("[to the room] > /msg talker");
    alice.type_keys("\x15"); // Ctrl-U: clear the line
    alice.wait_input_row("[to the room] >");

    // The prompt says where a plain line goes.
    alice.type_keys(&format!("/chat talker{ENTER}"));
    alice.wait_input_row("[to talker, private (not pinned yet)] >");
    alice.type_keys(&format!("/chat{ENTER}"));
    alice.wait_input_row("[to the room] >");

    alice.type_keys(&format!("/quit{ENTER}"));
    assert_eq!(alice.wait_exit(), 0);

    // The history is kept for the user alone, and holds no password.
    let history = user_dir(home.path(), &server, "alice").join(paths::HISTORY_FILE);
    let mode = fs::metadata(&history)
        .expect("history file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let kept = fs::read_to_string(&history).unwrap();
    assert!(kept.contains("<abXYZdef>"), "{kept}");
    assert!(!kept.contains(PASSWORD), "{kept}");
}

/// Starts the real server binary, each time on the same port and data directory: a
/// restart after `kill -9` is the same server to its clients (whose key directories are
/// per address).
fn same_port_server(dir: &Path) -> impl Fn() -> ServerProcess + '_ {
    let port = common::free_port();
    move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_server"));
        command.args(common::server_args(
            port,
            &dir.join("data"),
            &dir.join("certs"),
        ));
        let ca = dir.join("certs").join(securechat::tls::DEV_CA_CERT);
        ServerProcess::start(&mut command, port, ca, dir)
    }
}

#[test]
fn after_kill_9_and_a_restart_the_client_reconnects_with_the_typed_line_intact() {
    let dir = tempfile::tempdir().unwrap();
    let start = same_port_server(dir.path());
    let mut server = start();
    let home = tempfile::tempdir().unwrap();
    let mut alice = Terminal::spawn_at(
        "alice",
        &server.address(),
        &server.ca,
        home.path(),
        RUN_THEN_SHELL_READS,
    );
    alice.menu_login("alice", PASSWORD, true);

    server.kill9();
    alice.expect("disconnected:");
    // Typed while the server is away: kept, and sent once it is back.
    alice.type_keys(&format!("typed while away{ENTER}"));
    alice.expect("not connected: kept, 1 message(s) will be sent after the reconnect");
    alice.type_keys("see you at 5");
    alice.wait_input_row("[to the room] > see you at 5");
    let server = start(); // the same port and data
    let mut bob = server.connect();
    bob.register_ok("bob");
    bob.login_ok("bob");
    alice.expect("reconnected and logged in again as alice; 1 waiting message(s) follow");
    alice.expect(&format!("(you) {ROOM_LABEL}: typed while away"));
    alice.wait_input_row("[to the room] > see you at 5");

    alice.type_keys(&format!("; echo TYPED_INTO_SHELL{ENTER}"));
    // (The line kept while away may reach bob first, if he was back before alice.)
    let typed = ServerLine::Room {
        user: "alice".into(),
        text: "see you at 5; echo TYPED_INTO_SHELL".into(),
    };
    bob.recv_until(|line| *line == typed);
    // Typed ahead of the exit: never run by the shell.
    alice.type_keys(&format!("/quit{ENTER}echo TYPED_AFTER_QUIT{ENTER}"));
    alice.expect("client exit status 0");
    alice.expect("shell read: []");
    assert_eq!(alice.wait_exit(), 0);
}

#[test]
fn lines_typed_ahead_of_closing_never_reach_the_shell() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    let mut client = Terminal::spawn_script("client", &server, home.path(), RUN_THEN_SHELL_READS);
    client.expect("c) close");
    client.expect("> ");
    // Typed at once: the terminal hands the client one line per read, so the second one
    // is still waiting in the terminal when the client exits.
    client.type_keys("c\necho TYPED_AHEAD\n");
    client.expect("client exit status 0");
    client.expect("shell read: []");
    assert_eq!(client.wait_exit(), 0);
}

#[test]
fn on_a_dumb_terminal_the_client_falls_back_to_plain_lines() {
    let server = TestServer::start();
    let mut watcher = server.login("watcher");
    let home = tempfile::tempdir().unwrap();
    let mut alice = Terminal::spawn_script("alice", &server, home.path(), RUN_ON_DUMB_TERMINAL);
    alice.menu_login("alice", PASSWORD, true);
    alice.send_line("plain but working");
    assert_eq!(
        next_room_line(&mut watcher),
        ServerLine::Room {
            user: "alice".into(),
            text: "plain but working".into()
        }
    );
    alice.expect(&format!("(you) {ROOM_LABEL}: plain but working"));
    // No editor: no prompt drawn, no escape sequences.
    assert!(
        !alice.transcript.contains("[to the room] >"),
        "{}",
        alice.transcript
    );
    assert!(!alice.transcript.contains('\x1b'), "{}", alice.transcript);
    assert_eq!(alice.quit(), 0);
}

#[test]
fn a_passphrase_is_accepted_and_a_common_password_refused_without_starting_over() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    let mut client = Terminal::spawn("alice", &server, home.path());
    client.expect("> ");
    client.send_line("r");
    client.expect("choose a username: ");
    client.send_line("alice");
    client.expect("choose a password: ");
    // Passes every composition rule, and is among the first an attacker tries.
    client.send_hidden("Password123");
    client.expect("not a common password or an easy variation of one");
    // Short: composition still required.
    client.expect("choose a password: ");
    client.send_hidden("horse battery");
    client.expect("an upper-case letter; a digit");
    // A passphrase needs none of it.
    client.expect("choose a password: ");
    client.send_hidden("correct horse battery staple");
    client.expect("repeat the password: ");
    client.send_hidden("correct horse battery staple");
    client.expect("account alice created");
    client.expect("logged in as alice.");
    assert_eq!(client.quit(), 0);
}

#[test]
fn a_dh_walk_through_shows_on_both_screens_when_the_peer_opts_in_and_ends_with_the_exchange() {
    let server = TestServer::start();
    let Pair {
        mut alice,
        mut bob,
        alice_home,
        bob_home: _bob_home,
    } = alice_and_bob(&server);

    // alice opts in with one command; bob asks for the walk-through with her.
    alice.send_line("/dh");
    alice.expect("every key exchange is explained step by step from now on");
    bob.send_line("/dh alice");
    // bob is a stranger to alice: his exchange is a message request until she accepts.
    alice.expect("message request: bob asks");
    alice.send_line("/accept bob");
    let mut fingerprints = Vec::new();
    for (screen, peer) in [(&mut bob, "alice"), (&mut alice, "bob")] {
        screen.expect(&format!("[dh {peer}] "));
        screen.expect("q = (p-1)/2 is prime too");
        screen.expect("The secret fingerprint is a short hash of the shared secret");
        // The claim matches the trust state: a first-use pin, not a verified key.
        screen.expect(&format!(
            "the key you hold for {peer}, which is pinned on first use, not verified"
        ));
        screen.expect("The walk-through ends with this exchange");
        let found = screen.expect_regex(&format!(
            r"{peer}: end-to-end encrypted session established \(secret fingerprint ([^;]+);"
        ));
        fingerprints.push(found[1].clone());
    }
    assert_eq!(
        fingerprints[0], fingerprints[1],
        "both computed the same secret"
    );

    // The mode ended with that exchange: bob's next one is not explained.
    assert_eq!(alice.quit(), 0);
    bob.expect("alice is offline");
    let mut alice = Terminal::spawn("alice again", &server, alice_home.path());
    alice.menu_login("alice", PASSWORD, false);
    let before = bob.transcript.len();
    bob.send_line("/msg alice after the walk-through");
    alice.expect(&format!(
        "bob -> (you) {}: after the walk-through",
        first_use()
    ));
    bob.expect(&format!(
        "(you) -> alice {}: after the walk-through",
        first_use()
    ));
    assert!(
        !bob.transcript[before..].contains("[dh alice]"),
        "{}",
        &bob.transcript[before..]
    );
    assert_eq!(alice.quit(), 0);
    assert_eq!(bob.quit(), 0);
}

#[test]
fn quitting_with_a_message_still_in_a_key_exchange_warns_first_and_reports_it() {
    let server = TestServer::start();
    // bob publishes a key but never answers a key exchange.
    let mut bob = server.login("bob");
    let key = IdentityKey::load_or_create(&tempfile::tempdir().unwrap().path().join("k"))
        .expect("a key")
        .0
        .public_key()
        .to_base64();
    assert_eq!(
        bob.request(&format!("SETKEY {key}")),
        common::ok("SETKEY", "")
    );
    let home = tempfile::tempdir().unwrap();
    let mut alice = Terminal::spawn_script("alice", &server, home.path(), RUN_THEN_SHELL_READS);
    alice.menu_login("alice", PASSWORD, true);
    alice.send_line("/msg bob are you there?");
    alice.expect("setting up end-to-end encryption");
    alice.send_line("/quit");
    alice.expect("1 message(s) are not sent yet");
    alice.expect("/quit again to leave without them");
    alice.send_line("/quit");
    alice.expect("1 message(s) you typed were NOT sent");
    alice.expect("client exit status 1");
    assert_eq!(alice.wait_exit(), 0, "the reporting shell ends normally");
}

#[test]
fn a_200_line_paste_into_the_input_line_is_delivered_in_order_with_progress_shown() {
    // The server's default rate limits, announced in its greeting.
    let server = TestServer::with_limits(securechat::server::Limits {
        message_rate: 20,
        message_burst: 100,
        ..common::test_limits()
    });
    let mut watcher = server.login("watcher");
    let home = tempfile::tempdir().unwrap();
    let mut alice = Terminal::spawn("alice", &server, home.path());
    alice.menu_login("alice", PASSWORD, true);
    let lines: Vec<String> = (0..200).map(|i| format!("pasted {i}")).collect();
    // A terminal wraps a paste in bracketed-paste marks; the editor shows it, Enter sends.
    alice.type_keys(&format!("\x1b[200~{}\x1b[201~", lines.join("\n")));
    alice.type_keys(ENTER);
    alice.expect("sending at the server's limit of 20 per second");
    for line in &lines {
        assert_eq!(
            next_room_line(&mut watcher),
            ServerLine::Room {
                user: "alice".into(),
                text: line.clone()
            }
        );
    }
    alice.expect("everything waiting was sent");
    assert!(
        !alice.transcript.contains("rate-limited"),
        "{}",
        alice.transcript
    );
    assert_eq!(alice.quit(), 0);
}

/// Matches the three `texts` from alice shown in order as offline mail (from first use).
fn three_offline_messages_in_order(texts: &[&str; 3]) -> Regex {
    let label = regex::escape(&offline_label(Trust::FirstUse));
    Regex::new(&format!(
        r"(?s)alice -> \(you\) {label} sent \d\d:\d\d: {}\r?\n.*{label} sent \d\d:\d\d: {}\r?\n.*{label} sent \d\d:\d\d: {}\r?\n",
        texts[0], texts[1], texts[2]
    ))
    .unwrap()
}

#[test]
fn messages_to_an_offline_user_wait_on_the_server_and_are_read_in_order_after_a_restart() {
    let server = TestServer::start();
    let (alice_home, bob_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Bob registers (his client publishes its prekeys) and leaves.
    let mut bob = Terminal::spawn("bob", &server, bob_home.path());
    bob.menu_login("bob", PASSWORD, true);
    assert_eq!(bob.online(), ["bob"]);
    assert!(
        bob.transcript.contains("offline delivery is on"),
        "{}",
        bob.transcript
    );
    thread::sleep(Duration::from_millis(500)); // the one-time prekeys go out at the frame rate
    assert_eq!(bob.quit(), 0);

    let mut alice = Terminal::spawn("alice", &server, alice_home.path());
    alice.menu_login("alice", PASSWORD, true);
    let texts = ["first while away", "second while away", "third while away"];
    for text in texts {
        alice.send_line(&format!("/msg bob {text}"));
        alice.expect(&format!("to bob: queued (offline delivery) (\"{text}\")"));
    }

    // Bob's client starts again: keys and sessions come back from its mailbox file.
    let mut bob = Terminal::spawn("bob", &server, bob_home.path());
    bob.menu_login("bob", PASSWORD, false);
    // Alice is a stranger to bob: her mail is a message request, read only once he accepts,
    // and not one text of it is on his screen before that.
    bob.wait_until("the message request", |seen| {
        seen.contains("message request: alice wrote to you while you were offline")
    });
    thread::sleep(Duration::from_millis(300));
    let (bob_saw, alice_saw) = (bob.seen(), alice.seen());
    for text in texts {
        assert!(!bob_saw.contains(text), "{bob_saw}");
        assert!(
            !alice_saw.contains(&format!("to bob: delivered (\"{text}\")")),
            "{alice_saw}"
        );
    }
    bob.send_line("/accept alice");
    let in_order = three_offline_messages_in_order(&texts);
    bob.wait_until("the three messages, in order", |seen| {
        in_order.is_match(seen)
    });
    for text in texts {
        alice.expect(&format!("to bob: delivered (\"{text}\")"));
    }
    assert!(
        !alice.transcript.contains("no one-time prekeys"),
        "{}",
        alice.transcript
    );
    assert!(!bob.transcript.contains("!!!"), "{}", bob.transcript);
    let mode = fs::metadata(user_dir(bob_home.path(), &server, "bob").join("mailbox"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(alice.quit(), 0);
    assert_eq!(bob.quit(), 0);
}

/// The issue's scenario with every part real: alice writes to offline bob and quits; the
/// server binary is killed with `kill -9` and started again on the same database; bob's
/// client starts again from its mailbox file, accepts the message request and reads all three
/// in order; alice's client, started again too, learns at login that each was delivered.
#[test]
fn offline_messages_survive_kill_9_of_the_server_and_restarts_of_both_clients() {
    let dir = tempfile::tempdir().unwrap();
    let start = same_port_server(dir.path());
    let mut server = start();
    let (address, ca) = (server.address(), server.ca.clone());
    let (alice_home, bob_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let client =
        |name: &str, home: &Path| Terminal::spawn_at(name, &address, &ca, home, RUN_WITH_ECHO);
    let mut bob = client("bob", bob_home.path());
    bob.menu_login("bob", PASSWORD, true);
    thread::sleep(Duration::from_millis(500)); // the one-time prekeys go out at the frame rate
    assert_eq!(bob.quit(), 0);

    let texts = [
        "before the crash 1",
        "before the crash 2",
        "before the crash 3",
    ];
    let mut alice = client("alice", alice_home.path());
    alice.menu_login("alice", PASSWORD, true);
    for text in texts {
        alice.send_line(&format!("/msg bob {text}"));
        alice.expect(&format!("to bob: queued (offline delivery) (\"{text}\")"));
    }
    assert_eq!(alice.quit(), 0);

    server.kill9();
    let _server = start();

    let mut bob = client("bob", bob_home.path());
    bob.menu_login("bob", PASSWORD, false);
    bob.wait_until("the message request", |seen| {
        seen.contains("message request: alice wrote to you while you were offline")
    });
    bob.send_line("/accept alice");
    let in_order = three_offline_messages_in_order(&texts);
    bob.wait_until("the three messages, in order", |seen| {
        in_order.is_match(seen)
    });
    let shown = bob.seen();
    for text in texts {
        assert_eq!(shown.matches(text).count(), 1, "each once: {shown}");
    }

    let mut alice = client("alice", alice_home.path());
    alice.menu_login("alice", PASSWORD, false);
    alice.wait_until("three delivered receipts", |seen| {
        seen.matches("to bob: delivered").count() == 3
    });
    assert_eq!(alice.quit(), 0);
    assert_eq!(bob.quit(), 0);
}

/// bob registers (his client publishes its prekeys) and leaves: offline from then on.
fn bob_registers_and_leaves(server: &TestServer, home: &Path) {
    let mut bob = Terminal::spawn("bob", server, home);
    bob.menu_login("bob", PASSWORD, true);
    thread::sleep(Duration::from_millis(500)); // the one-time prekeys go out at the frame rate
    assert_eq!(bob.quit(), 0);
}

/// Waits until the screen (as the terminal shows it) holds a row containing `words`.
fn wait_on_screen(terminal: &mut Terminal, words: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !terminal.rows().iter().any(|row| row.contains(words)) {
        if Instant::now() > deadline {
            let rows = terminal.rows().join("\n");
            terminal.fail(&format!("{words:?} is not on the screen:\n{rows}"));
        }
        thread::sleep(POLL);
    }
}

/// The recovery path end to end, with a restart of the sender's client in it: alice queues
/// a message for offline bob and quits; bob loses his keys (his mailbox file is deleted),
/// logs in and accepts alice's message request, and his client acknowledges the message as
/// unreadable; alice's client, started again, is told at login, says on her screen that bob
/// could not read it and that it is sent again, and sends it (the text came from her mailbox
/// file) in a new session, which bob's fresh keys open.
#[test]
fn a_message_bob_could_not_read_after_losing_his_keys_is_sent_again_by_alices_restarted_client() {
    let server = TestServer::start();
    let (alice_home, bob_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    bob_registers_and_leaves(&server, bob_home.path());

    let text = "read me after the loss";
    let mut alice = Terminal::spawn("alice", &server, alice_home.path());
    alice.menu_login("alice", PASSWORD, true);
    alice.send_line(&format!("/msg bob {text}"));
    alice.expect(&format!("to bob: queued (offline delivery) (\"{text}\")"));
    assert_eq!(alice.quit(), 0);

    // bob "lost his keys".
    fs::remove_file(user_dir(bob_home.path(), &server, "bob").join("mailbox"))
        .expect("delete bob's mailbox file");
    let mut bob = Terminal::spawn("bob", &server, bob_home.path());
    bob.menu_login("bob", PASSWORD, false);
    bob.wait_until("the message request", |seen| {
        seen.contains("message request: alice wrote to you while you were offline")
    });
    bob.send_line("/accept alice");
    bob.expect("alice: a message they sent while you were offline could not be read");
    thread::sleep(Duration::from_millis(500)); // his new one-time prekeys go out

    let mut alice = Terminal::spawn("alice", &server, alice_home.path());
    alice.menu_login("alice", PASSWORD, false);
    wait_on_screen(
        &mut alice,
        &format!("to bob: NOT readable by bob's client (it lost or damaged its offline session) (\"{text}\")"),
    );
    wait_on_screen(
        &mut alice,
        "bob: sending it again in a new end-to-end session",
    );

    // bob, online, reads it at once, under alice's key pinned when he accepted.
    let read = Regex::new(&format!(
        r"alice -> \(you\) {} sent \d\d:\d\d: {text}",
        regex::escape(&offline_label(Trust::FirstUse))
    ))
    .unwrap();
    bob.wait_until("the message sent again", |seen| read.is_match(seen));
    alice.wait_until("the message sent again, delivered", |seen| {
        seen.contains(&format!("to bob: delivered (\"{text}\")"))
    });
    let alice_saw = alice.seen();
    assert!(
        alice_saw.contains("the new session starts from their current signed prekey only"),
        "{alice_saw}"
    );
    assert!(!alice_saw.contains("no longer has the text"), "{alice_saw}");
    assert_eq!(
        alice_saw.matches("sending it again").count(),
        1,
        "once: {alice_saw}"
    );
    assert_eq!(bob.seen().matches(text).count(), 1, "{}", bob.transcript);
    assert_eq!(alice.quit(), 0);
    assert_eq!(bob.quit(), 0);
}

/// A full offline queue refuses the second message, and the sender's screen says which one
/// was NOT delivered.
#[test]
fn a_message_refused_for_quota_is_shown_as_not_delivered_on_the_senders_screen() {
    let mut limits = common::test_limits();
    limits.queue_max = 1;
    let server = TestServer::with_limits(limits);
    let (alice_home, bob_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    bob_registers_and_leaves(&server, bob_home.path());

    let mut alice = Terminal::spawn("alice", &server, alice_home.path());
    alice.menu_login("alice", PASSWORD, true);
    alice.send_line("/msg bob the first fits");
    alice.expect("to bob: queued (offline delivery) (\"the first fits\")");
    alice.send_line("/msg bob the second does not");
    wait_on_screen(
        &mut alice,
        "to bob: refused: quota (bob's offline queue is full), NOT delivered (\"the second does not\")",
    );
    assert_eq!(alice.quit(), 0);
}

/// A message not fetched within the server's time limit (`--queue-ttl`, here 1 second, the
/// least it takes) expires; the sender, whose client was restarted meanwhile, is told at
/// login, on screen, with the text from its mailbox file.
#[test]
fn an_expired_message_is_shown_as_not_delivered_on_the_restarted_senders_screen() {
    let mut limits = common::test_limits();
    limits.queue_ttl = Duration::from_secs(1);
    let server = TestServer::with_limits(limits);
    let (alice_home, bob_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    bob_registers_and_leaves(&server, bob_home.path());

    let mut alice = Terminal::spawn("alice", &server, alice_home.path());
    alice.menu_login("alice", PASSWORD, true);
    alice.send_line("/msg bob too late for bob");
    alice.expect("to bob: queued (offline delivery) (\"too late for bob\")");
    assert_eq!(alice.quit(), 0);
    thread::sleep(Duration::from_secs(3)); // past the time limit, and the expiry's next run

    let mut alice = Terminal::spawn("alice", &server, alice_home.path());
    alice.menu_login("alice", PASSWORD, false);
    wait_on_screen(
        &mut alice,
        "to bob: expired: not fetched before the server's time limit, NOT delivered (\"too late for bob\")",
    );
    assert_eq!(alice.quit(), 0);
}

/// Lines arriving in bursts while the user keeps pressing Enter never stop the client: the
/// line editor's printer holds one row between two `readline`s, and a chat that printed on
/// its own thread blocked on the second row until the next `readline`, which it alone could
/// start (`editor.rs`, `print_rows`). Bob floods the room while alice sends line after line;
/// she must still get an answer to `/list` at the end.
#[test]
fn bursts_of_incoming_lines_while_the_user_presses_enter_never_stop_the_client() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    let mut alice = Terminal::spawn("alice", &server, home.path());
    alice.menu_login("alice", PASSWORD, true);
    let mut bob = server.connect();
    bob.register_ok("bob");
    bob.login_ok("bob");
    let flood = thread::spawn(move || {
        for burst in 0..60 {
            for n in 0..8 {
                bob.send(&format!("SAY burst {burst} line {n}"));
            }
            thread::sleep(Duration::from_millis(15));
        }
        bob
    });
    for n in 0..60 {
        alice.type_keys(&format!("reply {n}{ENTER}"));
        thread::sleep(Duration::from_millis(12));
    }
    let _bob = flood.join().unwrap();
    alice.online();
    assert_eq!(alice.quit(), 0);
}
