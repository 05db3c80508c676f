//! Property tests of every decoder that reads untrusted input: the frame splitter, both
//! directions of the protocol, user names, passwords, identity keys, end-to-end payloads
//! and the client's command line. On arbitrary input each must return (never panic, never
//! loop), and what it accepts must be what it claims to accept. Every frame, both
//! directions, survives encoding and parsing unchanged.

use proptest::prelude::*;

use securechat::client::commands;
use securechat::e2e::{IdentityPublicKey, Payload};
use securechat::password::password_problems;
use securechat::protocol::frame::{decode_line, FrameError, LineBuffer};
use securechat::protocol::name::{normalize_username, ServerName, RESERVED_USERNAMES};
use securechat::protocol::{
    AnnouncedLimits, Command, DeliveryState, ErrorCode, OneTimePrekey, PrekeyList, Refusal,
    Request, ServerLine,
};

/// Splits `bytes` into lines with a fresh buffer, feeding it in the given chunk sizes.
fn split(bytes: &[u8], chunks: &[usize], max: usize) -> (Vec<Result<String, FrameError>>, bool) {
    let mut buf = LineBuffer::new(max);
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().cycle();
    let mut fatal = false;
    while !rest.is_empty() && !fatal {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        buf.extend(&rest[..n]);
        rest = &rest[n..];
        fatal = buf
            .drain_lines(|line| {
                out.push(line.map(str::to_owned));
                true
            })
            .is_err();
    }
    (out, fatal)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_frame_splitter_never_panics_and_respects_the_limit(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        chunks in proptest::collection::vec(1usize..300, 1..8),
        max in 1usize..512,
    ) {
        let (lines, _) = split(&bytes, &chunks, max);
        for line in lines.into_iter().flatten() {
            prop_assert!(line.len() <= max);
            prop_assert!(!line.contains('\n'));
            prop_assert!(!line.chars().any(|c| c.is_control() && c != '\t'));
        }
    }

    #[test]
    fn how_bytes_arrive_does_not_change_the_frames(
        bytes in proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), Just(0xffu8), any::<u8>()], 0..2048),
        chunks in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let whole = split(&bytes, &[usize::MAX], 256);
        let pieces = split(&bytes, &chunks, 256);
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn request_parsing_accepts_or_explains_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(line) = decode_line(&bytes) {
            match Request::parse(line) {
                Ok(request) => {
                    // What was accepted prints back to a frame that parses to the same request.
                    let printed = request.to_string();
                    prop_assert_eq!(Request::parse(&printed), Ok(request));
                }
                Err(error) => prop_assert!(!error.message.is_empty()),
            }
        }
    }

    #[test]
    fn request_parsing_of_plausible_frames(
        verb in prop_oneof![Just("LOGIN"), Just("REGISTER"), Just("MSG"), Just("SAY"),
                            Just("SETKEY"), Just("GETKEY"), Just("PING"), Just("list"), Just("quit"),
                            Just("MAILBOX"), Just("SETPREKEY"), Just("ADDPREKEYS"), Just("BUNDLE"),
                            Just("SEND"), Just("ACK"), Just("ACKSTATUS")],
        args in "[ -~]{0,80}",
    ) {
        for line in [format!("{verb} {args}"), verb.to_owned()] {
            match Request::parse(&line) {
                Ok(request) => {
                    // What was accepted prints back to a frame that parses to the same request.
                    let printed = request.to_string();
                    prop_assert_eq!(Request::parse(&printed), Ok(request));
                }
                Err(error) => prop_assert!(!error.message.is_empty(), "{:?}", line),
            }
        }
    }

    #[test]
    fn server_lines_never_panic_the_client(line in "\\PC{0,200}") {
        let _ = ServerLine::parse(&line);
    }

    #[test]
    fn server_lines_of_every_verb(
        verb in prop_oneof![Just("HELLO"), Just("OK"), Just("ERR"), Just("FROM"), Just("ROOM"),
                            Just("OFFLINE"), Just("SKIPPED"), Just("BYE"), Just("PONG"),
                            Just("PREKEYS"), Just("BUNDLE"), Just("MAIL"), Just("STATUS")],
        rest in "\\PC{0,120}",
    ) {
        for line in [format!("{verb} {rest}"), verb.to_owned()] {
            // Whatever parses is the frame its verb names, never another.
            if let Ok(parsed) = ServerLine::parse(&line) {
                let named = matches!(
                    (verb, &parsed),
                    ("HELLO", ServerLine::Hello { .. })
                        | ("OK", ServerLine::Ok { .. })
                        | ("ERR", ServerLine::Err { .. })
                        | ("FROM", ServerLine::From { .. })
                        | ("ROOM", ServerLine::Room { .. })
                        | ("OFFLINE", ServerLine::Offline { .. })
                        | ("SKIPPED", ServerLine::Skipped { .. })
                        | ("BYE", ServerLine::Bye { .. })
                        | ("PONG", ServerLine::Pong { .. })
                        | ("PREKEYS", ServerLine::Prekeys { .. })
                        | ("BUNDLE", ServerLine::Bundle { .. })
                        | ("MAIL", ServerLine::Mail { .. })
                        | ("STATUS", ServerLine::Status { .. })
                );
                prop_assert!(named, "{:?} parsed as {:?}", line, parsed);
            }
        }
    }

    #[test]
    fn user_names_are_accepted_only_in_canonical_form(
        name in "[A-Za-z][A-Za-z0-9_]{0,35}|[a-z0-9_]{0,40}|\\PC{0,64}",
    ) {
        // The rule, written out independently of the code under test.
        let follows_the_rule = (3..=32).contains(&name.len())
            && name.as_bytes()[0].is_ascii_alphabetic()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !RESERVED_USERNAMES.contains(&name.to_ascii_lowercase().as_str());
        match normalize_username(&name) {
            Ok(canonical) => {
                prop_assert!(follows_the_rule, "{:?} accepted", name);
                prop_assert_eq!(&canonical, &name.to_ascii_lowercase());
                prop_assert_eq!(normalize_username(&canonical), Ok(canonical.clone()));
            }
            Err(_) => prop_assert!(!follows_the_rule, "{:?} refused", name),
        }
    }

    #[test]
    fn password_rules_never_panic_and_reject_short_ones(user in "[a-z]{3,8}", password in "\\PC{0,100}") {
        let problems = password_problems(&user, &password);
        if password.chars().count() < 8 {
            prop_assert!(problems.contains(&"at least 8 characters"));
        }
        if password.len() > 72 {
            prop_assert!(problems.iter().any(|p| p.contains("72 bytes")));
        }
    }

    #[test]
    fn identity_keys_decode_only_32_byte_base64(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        text in "[A-Za-z0-9+/=]{0,64}|\\PC{0,64}",
    ) {
        use base64::Engine as _;
        // Well-formed base64 of any length: accepted exactly when it holds 32 bytes.
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        match IdentityPublicKey::from_base64(&encoded) {
            Ok(key) => {
                prop_assert_eq!(bytes.len(), 32);
                prop_assert_eq!(key.to_base64(), encoded);
            }
            Err(_) => prop_assert_ne!(bytes.len(), 32),
        }
        // Anything else: what is accepted is canonical.
        if let Ok(key) = IdentityPublicKey::from_base64(&text) {
            prop_assert_eq!(key.to_base64(), text);
        }
    }

    #[test]
    fn end_to_end_payloads_never_panic(
        tag in prop_oneof![Just("DH-INIT"), Just("DH-REPLY"), Just("DH-CONFIRM"), Just("E2E"), Just("X3DH"), Just("RATCHET"), Just("X")],
        rest in "[ -~]{0,600}",
    ) {
        if let Ok(payload) = Payload::parse(&format!("{tag} {rest}")) {
            prop_assert_eq!(Payload::parse(&payload.to_string()), Ok(payload));
        }
    }

    #[test]
    fn typed_commands_never_panic(line in "\\PC{0,200}") {
        if let Err(problem) = commands::parse(&line) {
            prop_assert!(!problem.is_empty());
        }
    }
}

/// One word of a frame: no spaces, no control characters, not empty.
fn word() -> impl Strategy<Value = String> {
    "[^\\s\\p{C}]{1,20}"
}

/// The rest of a line: anything printable, spaces included, possibly empty.
fn text() -> impl Strategy<Value = String> {
    "[^\\p{C}]{0,40}"
}

/// A canonical server name, as a federating server announces in its greeting.
fn server_name() -> impl Strategy<Value = ServerName> {
    "[a-z][a-z0-9-]{0,8}[a-z0-9](\\.[a-z][a-z0-9]{0,8}){0,2}"
        .prop_map(|name| ServerName::parse(&name).expect("a canonical server name"))
}

/// A message reference, as `SEND` allows.
fn reference() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,32}"
}

/// A base64 value: one word without `:`.
fn key() -> impl Strategy<Value = String> {
    "[A-Za-z0-9+/]{1,40}={0,2}"
}

fn delivery_state() -> impl Strategy<Value = DeliveryState> {
    prop_oneof![
        any::<u64>().prop_map(|id| DeliveryState::Queued { id }),
        Just(DeliveryState::Delivered),
        Just(DeliveryState::Expired),
        Just(DeliveryState::Unreadable),
        prop::sample::select(Refusal::ALL.to_vec()).prop_map(DeliveryState::Refused),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop::sample::select(Command::ALL.to_vec())
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ErrorCode::ALL.to_vec())
}

fn server_line() -> impl Strategy<Value = ServerLine> {
    let limits =
        (any::<usize>(), any::<u32>(), any::<u32>()).prop_map(|(max_frame, rate, burst)| {
            AnnouncedLimits {
                max_frame,
                rate,
                burst,
            }
        });
    prop_oneof![
        (
            any::<u32>(),
            prop::option::of(limits),
            prop::option::of(server_name())
        )
            .prop_map(|(version, limits, name)| ServerLine::Hello {
                version,
                limits,
                name
            }),
        (command(), text()).prop_map(|(command, detail)| ServerLine::Ok { command, detail }),
        (prop::option::of(command()), error_code(), text()).prop_map(|(command, code, text)| {
            ServerLine::Err {
                command,
                code,
                text,
            }
        }),
        text().prop_map(|token| ServerLine::Pong { token }),
        (word(), text()).prop_map(|(user, payload)| ServerLine::From { user, payload }),
        (word(), text()).prop_map(|(user, text)| ServerLine::Room { user, text }),
        (any::<u64>(), word(), text()).prop_map(|(time, user, text)| ServerLine::History {
            time,
            user,
            text
        }),
        word().prop_map(|user| ServerLine::Offline { user }),
        any::<u64>().prop_map(|count| ServerLine::Skipped { count }),
        text().prop_map(|reason| ServerLine::Bye { reason }),
        any::<u32>().prop_map(|count| ServerLine::Prekeys { count }),
        (word(), key(), prop::option::of((any::<u32>(), key()))).prop_map(
            |(user, record, one_time)| ServerLine::Bundle {
                user,
                record,
                one_time: one_time.map(|(id, key)| OneTimePrekey { id, key }),
            }
        ),
        (any::<u64>(), word(), any::<u64>(), text()).prop_map(|(id, sender, time, payload)| {
            ServerLine::Mail {
                id,
                sender,
                time,
                payload,
            }
        }),
        (reference(), delivery_state(), word()).prop_map(|(reference, state, user)| {
            ServerLine::Status {
                reference,
                state,
                user,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn every_server_line_survives_encoding_and_parsing(line in server_line()) {
        let encoded = line.encode();
        prop_assert_eq!(encoded.last(), Some(&b'\n'), "one frame, one line ending");
        prop_assert_eq!(encoded.iter().filter(|&&b| b == b'\n').count(), 1);
        let text = std::str::from_utf8(&encoded[..encoded.len() - 1]).unwrap();
        prop_assert_eq!(ServerLine::parse(text), Ok(line));
    }

    #[test]
    fn every_request_survives_encoding_and_parsing(
        kind in 0..17u8,
        a in word(),
        b in word(),
        rest in text(),
        reference in reference(),
        id in any::<u64>(),
        prekeys in proptest::collection::vec((any::<u32>(), key()), 1..5),
    ) {
        let items = PrekeyList::join(prekeys.iter().map(|(id, key)| (*id, key.as_str())));
        // The last field runs to the end of the line; it may hold spaces.
        let tail = format!("{b}{rest}");
        let request = match kind {
            0 => Request::Register { user: &a, password: &tail },
            1 => Request::Login { user: &a, password: &tail },
            2 => Request::Quit,
            3 => Request::Ping { token: &rest },
            4 if id % 2 == 0 => Request::List { server: None },
            4 => Request::List { server: Some(&a) },
            5 => Request::Say { text: &tail },
            6 => Request::Msg { to: &a, payload: &tail },
            7 => Request::SetKey { key: &a },
            8 => Request::History,
            9 => Request::Mailbox,
            10 => Request::SetPrekey { record: &a },
            11 => match PrekeyList::parse(&items) {
                Ok(prekeys) => Request::AddPrekeys { prekeys },
                Err(problem) => return Err(TestCaseError::fail(problem)),
            },
            12 => Request::Bundle { user: &a },
            13 => Request::Send { to: &a, reference: &reference, payload: &tail },
            14 => Request::Ack {
                id,
                unreadable: id % 2 == 0,
            },
            15 => Request::AckStatus { reference: &reference },
            _ => Request::GetKey { user: &a },
        };
        let encoded = request.to_string();
        prop_assert_eq!(Request::parse(&encoded), Ok(request));
    }
}
