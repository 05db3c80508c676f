//! What the user types after logging in, parsed into commands. Pure: no I/O.
//!
//! A mistake here can put a private message in the public room, so the parser errs on
//! the side of asking: leading whitespace never hides a command (` /msg bob x` is the
//! command), and a line that starts with `/` but is no command (`/mgs bob x`, `/ msg`) is
//! refused with a hint instead of being sent as text. `//text` sends `/text` literally.
//!
//! A user is named as the server names them: a bare name for a user of the server the
//! client is connected to, `user@server` for a user of another server. What the user types
//! is lower-cased and checked through [`Address::parse`], so that `Bob@B.Test` and
//! `bob@b.test` are one conversation, one pin and one safety number, and a name the server
//! could never send is refused here with the rule instead of asked for.

use crate::protocol::name::{Address, ServerName};

/// One line typed by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Text for the current conversation: the public room, or the `/chat` partner.
    Text(String),
    /// `/msg USER TEXT`: one private message.
    Msg {
        /// The recipient.
        to: String,
        /// The message.
        text: String,
    },
    /// `/chat USER`: plain lines go to USER; `/chat` alone: back to the room.
    Chat(Option<String>),
    /// `/list`: who is online; `/list SERVER`: who is online on the linked server SERVER
    /// (lower-cased and checked).
    List(Option<String>),
    /// `/fingerprint [USER]`: your identity fingerprint, or the safety number with USER.
    Fingerprint(Option<String>),
    /// `/verify USER`: mark USER's key as checked out of band.
    Verify(String),
    /// `/accept USER`: consent to what waits for it: a message request, a look-alike
    /// first contact, or a changed key.
    Accept(String),
    /// `/dh USER`: show the key exchange with USER step by step (runs a fresh one);
    /// `/dh` alone: explain every exchange from now on, also those others start.
    Explain(Option<String>),
    /// `/dh-practice`: a throwaway exchange with every value written out, for checking
    /// `pow(g, x, p)` by hand.
    Practice,
    /// `/dh-offline`: a throwaway offline session (prekeys, first message, a reply with one
    /// ratchet step) told step by step, every value in full in a script.
    OfflinePractice,
    /// `/help`.
    Help,
    /// `/quit` or `/exit`: leave the program.
    Quit,
    /// `exit` typed alone: leaves `/chat` when talking to someone (what a person typing
    /// into a conversation means by it), the program otherwise.
    Exit,
    /// Nothing to do (an empty line).
    Nothing,
}

/// The help text, one command per line.
pub const HELP: &str = "\
commands:
  TEXT               send TEXT to the current conversation (the room, or your /chat partner)
  /msg USER TEXT     private, end-to-end encrypted message to USER; if USER is offline it
                     waits on the server (offline delivery, when the server offers it)
                     and you see 'to USER: queued (offline delivery)', then 'delivered'
  /chat USER         send plain lines to USER from now on; /chat alone returns to the room
  /list              who is online
  /list SERVER       who is online on SERVER, a server linked with yours (federation)
  /fingerprint [USER]  your key fingerprint, or the safety number you share with USER
  /verify USER       mark USER's key as verified (after comparing safety numbers)
  /dh USER           show a fresh Diffie-Hellman exchange with USER step by step (live
                     exchanges only; /dh-offline shows how offline messages are protected)
  /dh                explain every exchange from now on (so a classmate's /dh shows here too)
  /dh-practice       write a throwaway exchange, every value in full, to dh-practice.py
                     (run it with python3 to check g^x mod p and the shared secret)
  /dh-offline        walk through a throwaway offline session: prekey bundle, DH1..DH4, SK,
                     the first message key and one ratchet step; every value in dh-offline.py
  /accept USER       answer USER's message request, or accept a look-alike name or a
                     changed key after the warning about it
  //TEXT             send TEXT with its leading slash, as text
  /help              this help
  /quit              leave (Ctrl-C or Ctrl-D too); waiting messages are reported first
  exit               leave /chat when talking to someone; in the room, leave
USER is a name (a user of your server) or user@server (a user of another server linked
with yours, e.g. bob@b.test); a user of another server is always shown with @server, so
bob@b.test can never pass for your server's bob. Messages to another server's users always
go by offline delivery.
The public room is protected by TLS only: the server can read it, and keeps its last
lines, shown at login as [room, history] with the time they were sent. Private messages
are end-to-end encrypted: only you and your partner can read them. Those that waited for
you on the server are shown as [private, e2e offline, ...] sent HH:MM.";

/// Parses one typed line. Errors say what was expected.
pub fn parse(line: &str) -> Result<Input, String> {
    // Leading whitespace is dropped before anything else: ` /msg bob x` and `\t/msg bob x`
    // are the command, never room text.
    let line = line.trim_start().trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(Input::Nothing);
    }
    if line.trim() == "exit" {
        return Ok(Input::Exit);
    }
    if let Some(literal) = line.strip_prefix("//") {
        return Ok(Input::Text(format!("/{literal}")));
    }
    let Some(command) = line.strip_prefix('/') else {
        return Ok(Input::Text(line.to_owned()));
    };
    if command.is_empty() || command.starts_with(char::is_whitespace) {
        return Err(format!(
            "not sent: \"{line}\" looks like a command with a space after the slash. Type \
             /help for the commands, or //{command} to send the text itself"
        ));
    }
    let (name, rest) = match command.split_once(char::is_whitespace) {
        Some((name, rest)) => (name, rest.trim_start()),
        None => (command, ""),
    };
    let user_arg = |usage: &str| -> Result<String, String> {
        let user = rest.trim();
        if user.is_empty() || user.contains(char::is_whitespace) {
            Err(format!("usage: {usage}"))
        } else {
            address(user)
        }
    };
    let optional_user = || -> Result<Option<String>, String> {
        let user = rest.trim();
        if user.is_empty() {
            Ok(None)
        } else {
            address(user).map(Some)
        }
    };
    match name {
        "msg" => {
            let (to, text) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            if to.is_empty() || text.trim().is_empty() {
                return Err("usage: /msg USER TEXT".into());
            }
            Ok(Input::Msg {
                to: address(to)?,
                text: text.to_owned(),
            })
        }
        "chat" => optional_user().map(Input::Chat),
        "list" | "who" => match rest.trim() {
            "" => Ok(Input::List(None)),
            server => ServerName::parse(server)
                .map(|server| Input::List(Some(server.to_string())))
                .map_err(|e| format!("not sent: {server:?}: {e}; usage: /list [SERVER]")),
        },
        "fingerprint" | "fp" => optional_user().map(Input::Fingerprint),
        "verify" => user_arg("/verify USER").map(Input::Verify),
        "accept" => user_arg("/accept USER").map(Input::Accept),
        "dh" => optional_user().map(Input::Explain),
        "dh-practice" => Ok(Input::Practice),
        "dh-offline" => Ok(Input::OfflinePractice),
        "help" | "?" => Ok(Input::Help),
        "quit" | "exit" => Ok(Input::Quit),
        other => Err(format!(
            "not sent: /{other} is not a command. Type /help for the commands, or \
             //{command} to send the text itself"
        )),
    }
}

/// `typed` as the server would name that user: lower-cased and checked as a bare name or
/// `user@server`; otherwise what is wrong, with the rules.
fn address(typed: &str) -> Result<String, String> {
    Address::parse(typed)
        .map(|address| address.to_string())
        .map_err(|e| format!("not sent: {typed:?} is not a user: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse("hello all"), Ok(Input::Text("hello all".into())));
        assert_eq!(
            parse("/msg Bob hi  there"),
            Ok(Input::Msg {
                to: "bob".into(),
                text: "hi  there".into()
            })
        );
        assert_eq!(parse("/chat bob"), Ok(Input::Chat(Some("bob".into()))));
        assert_eq!(parse("/chat"), Ok(Input::Chat(None)));
        assert_eq!(parse("/list"), Ok(Input::List(None)));
        assert_eq!(parse("/fingerprint"), Ok(Input::Fingerprint(None)));
        assert_eq!(
            parse("/fingerprint bob"),
            Ok(Input::Fingerprint(Some("bob".into())))
        );
        assert_eq!(parse("/verify bob"), Ok(Input::Verify("bob".into())));
        assert_eq!(parse("/accept bob"), Ok(Input::Accept("bob".into())));
        assert_eq!(parse("/dh bob"), Ok(Input::Explain(Some("bob".into()))));
        assert_eq!(parse("/dh"), Ok(Input::Explain(None)));
        assert_eq!(parse("/dh-practice"), Ok(Input::Practice));
        assert_eq!(parse("/dh-offline"), Ok(Input::OfflinePractice));
        assert_eq!(parse("/quit"), Ok(Input::Quit));
        assert_eq!(parse("exit"), Ok(Input::Exit));
        assert_eq!(parse("/help"), Ok(Input::Help));
        assert_eq!(parse("   "), Ok(Input::Nothing));
    }

    #[test]
    fn users_of_other_servers_are_named_by_their_address_in_one_spelling() {
        assert_eq!(
            parse("/msg Bob@B.Test hi"),
            Ok(Input::Msg {
                to: "bob@b.test".into(),
                text: "hi".into()
            })
        );
        assert_eq!(
            parse("/chat bob@b.test"),
            Ok(Input::Chat(Some("bob@b.test".into())))
        );
        assert_eq!(
            parse("/fingerprint BOB@b.test"),
            Ok(Input::Fingerprint(Some("bob@b.test".into())))
        );
        assert_eq!(
            parse("/verify bob@b.test"),
            Ok(Input::Verify("bob@b.test".into()))
        );
        assert_eq!(
            parse("/accept bob@b.test"),
            Ok(Input::Accept("bob@b.test".into()))
        );
        assert_eq!(
            parse("/list b.test"),
            Ok(Input::List(Some("b.test".into())))
        );
        assert_eq!(
            parse("/list B.Test "),
            Ok(Input::List(Some("b.test".into())))
        );
        for bad in [
            "/msg bob@127.0.0.1 hi",
            "/msg bob@ hi",
            "/msg b@b.test hi",
            "/msg bob@b.test@c.test hi",
            "/chat bоb",
            "/verify you@b.test",
            "/list 10.0.0.1",
            "/list a b",
        ] {
            let problem = parse(bad).expect_err(bad);
            assert!(problem.starts_with("not sent"), "{bad}: {problem}");
        }
        assert!(parse("/msg bob@ hi").unwrap_err().contains("NAME@SERVER"));
    }

    #[test]
    fn leading_whitespace_never_turns_a_command_into_room_text() {
        let private = Ok(Input::Msg {
            to: "bob".into(),
            text: "x".into(),
        });
        assert_eq!(parse(" /msg bob x"), private);
        assert_eq!(parse("\t/msg bob x"), private);
        assert_eq!(parse(" \u{3000}/msg bob x"), private);
        assert_eq!(parse("  hello"), Ok(Input::Text("hello".into())));
    }

    #[test]
    fn a_mistyped_command_is_never_text_and_a_double_slash_is() {
        for typo in ["/mgs bob x", "/ msg bob x", "/", " /msgbob x", "/Msg bob x"] {
            let problem = parse(typo).expect_err(typo);
            assert!(problem.starts_with("not sent"), "{typo}: {problem}");
        }
        assert!(parse("/mgs bob x").unwrap_err().contains("//mgs bob x"));
        assert_eq!(
            parse("//shrug"),
            Ok(Input::Text("/shrug".into())),
            "a double slash sends the text"
        );
    }

    #[test]
    fn bad_commands_say_what_was_expected() {
        assert_eq!(parse("/msg bob"), Err("usage: /msg USER TEXT".into()));
        assert_eq!(parse("/verify"), Err("usage: /verify USER".into()));
        assert!(parse("/frobnicate").unwrap_err().contains("/help"));
        assert_eq!(
            parse("/accept bob"),
            Ok(Input::Accept("bob".into())),
            "one command answers every consent"
        );
    }
}
