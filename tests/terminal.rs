//! The terminal client as a person uses it: the real `client` binary in a pseudo-terminal
//! (the `rexpect` crate), against a real server running in this process.
//!
//! Hidden password entry opens `/dev/tty`, so only a pseudo-terminal exercises it. The
//! terminal is put back into its normal mode (echo on) before the client starts, so that
//! anything the client failed to hide would show up in the transcript, as it would on a
//! real screen. Typed lines therefore appear in transcripts too.

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
use securechat::client::screen::{private_label, ROOM_LABEL};
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
        Terminal {
            name: name.to_owned(),
            session,
            transcript: String::new(),
            pending: String::new(),
        }
    }

    /// Moves whatever the terminal has printed into `pending`.
    fn pull(&mut self) {
        while let Some(c) = self.session.try_read() {
            self.pending.push(c);
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

    fn fail(&mut self, what: &str) -> ! {
        self.pull();
        panic!(
            "{}: {what}\n--- transcript ---\n{}\n--- not yet matched ---\n{}",
            self.name, self.transcript, self.pending
        )
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

/// The user's key directory the client uses for `server`.
fn user_dir(home: &Path, server: &TestServer, user: &str) -> std::path::PathBuf {
    paths::user_dir(home, &server.address(), user)
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
    client.expect("c) close");

    client.expect("> ");
    client.send_line("r");
    client.expect("choose a username: ");
    client.send_line("alice");
    client.expect("choose a password: ");
    client.send_hidden(PASSWORD);
    client.expect("repeat the password: ");
    client.send_hidden("Sturdy pass 2");
    client.expect("the two passwords differ; nothing was registered");
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
    let (alice_home, bob_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut alice = Terminal::spawn("alice", &server, alice_home.path());
    alice.menu_login("alice", PASSWORD, true);
    let mut bob = Terminal::spawn("bob", &server, bob_home.path());
    bob.menu_login("bob", PASSWORD, true);
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
    let (alice_home, bob_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut alice = Terminal::spawn("alice", &server, alice_home.path());
    alice.menu_login("alice", PASSWORD, true);
    let mut bob = Terminal::spawn("bob", &server, bob_home.path());
    bob.menu_login("bob", PASSWORD, true);

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
            command: "LIST".into(),
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
