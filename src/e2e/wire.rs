//! The one-line text form of the end-to-end payloads that travel inside `MSG <to> <payload>` and
//! `FROM <from> <payload>` (the interactive exchange), and inside `SEND <to> <ref> <payload>` and
//! `MAIL <id> <from> <time> <payload>` (offline delivery). Pure parsing and printing: no I/O, no
//! cryptography.
//!
//! ```text
//! DH-INIT <sid> <group> <y_i>
//! DH-REPLY <sid> <y_r> <sig_r>
//! DH-CONFIRM <sid> <sig_i>
//! E2E <sid> <counter> <ciphertext+tag>
//! X3DH <PrekeyMessage::to_bytes()>
//! RATCHET <F(RatchetHeader::to_bytes()) ‖ F(ciphertext+tag)>
//! ```
//!
//! Tokens are separated by exactly one space. Binary fields are standard padded base64 in
//! canonical form: `<sid>` is 16 bytes, signatures 64, public values at most 384, ciphertexts
//! 16 bytes (the tag) to 8 KiB + 16. `<group>` is an RFC 7919 name; `<counter>` is a decimal
//! `u64` with no sign and no leading zeros. `X3DH` and `RATCHET` carry one base64 field each,
//! in the length-prefixed binary forms of `prekeys.rs` and `ratchet.rs` (`F()` is
//! `report/protocol.md` §11.1); a ratchet header's length names its group. The whole payload is
//! at most 14 KiB.
//!
//! A payload that does not start with one of the six tags is not end-to-end protected
//! ([`E2eError::NotE2e`]); one with a tag and anything wrong after it is [`E2eError::Malformed`].
//! Only syntax is checked here: the handshake validates public values and signatures, the
//! session authenticates ciphertext. Every payload this module prints parses back to the same
//! value, and every payload it accepts prints back to the same text.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::aead::TAG_LEN;
use super::{
    encode_fields, Confirm, E2eError, EncryptedMessage, Fields, Group, Init, PrekeyMessage,
    RatchetHeader, RatchetMessage, Reply, SessionId, MAX_PLAINTEXT_LEN, SESSION_ID_LEN,
    SIGNATURE_LEN,
};

/// The longest payload accepted, in bytes: room for the longest message once sealed and
/// base64-encoded with the most overhead (an `X3DH` first message in ffdhe3072, about 1.3 KiB
/// of keys and signatures before base64), inside the server's 16 KiB frame limit with the
/// `SEND`/`MAIL` header. Checked before any decoding, so hostile input costs at most this much
/// work.
pub const MAX_PAYLOAD_LEN: usize = 14 * 1024;

/// Tag of [`Payload::Init`].
const INIT_TAG: &str = "DH-INIT";
/// Tag of [`Payload::Reply`].
const REPLY_TAG: &str = "DH-REPLY";
/// Tag of [`Payload::Confirm`].
const CONFIRM_TAG: &str = "DH-CONFIRM";
/// Tag of [`Payload::Message`].
const MESSAGE_TAG: &str = "E2E";
/// Tag of [`Payload::Prekey`].
const PREKEY_TAG: &str = "X3DH";
/// Tag of [`Payload::Ratchet`].
const RATCHET_TAG: &str = "RATCHET";

/// The most fields any payload has after its tag; we never collect more than one beyond this.
const MAX_FIELDS: usize = 3;
/// Bytes in the largest public value: the ffdhe3072 prime's length.
const MAX_PUBLIC_VALUE_LEN: usize = 384;
/// Bytes in the largest ciphertext: the longest text plus the tag.
const MAX_CIPHERTEXT_LEN: usize = MAX_PLAINTEXT_LEN + TAG_LEN;
/// Digits in `u64::MAX`.
const MAX_COUNTER_DIGITS: usize = 20;
/// Bytes in the largest binary field (`X3DH`, `RATCHET`): whatever fits in a payload.
const MAX_BINARY_LEN: usize = MAX_PAYLOAD_LEN / 4 * 3;

/// One end-to-end payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// `DH-INIT`: the initiator opens an exchange.
    Init(Init),
    /// `DH-REPLY`: the responder's value and signature.
    Reply(Reply),
    /// `DH-CONFIRM`: the initiator's signature.
    Confirm(Confirm),
    /// `E2E`: an encrypted chat message.
    Message(EncryptedMessage),
    /// `X3DH`: the first message of an offline conversation (prekey agreement and the first
    /// ratchet message).
    Prekey(PrekeyMessage),
    /// `RATCHET`: a later message of an offline conversation.
    Ratchet(RatchetMessage),
}

impl Payload {
    /// Parses one payload. Never panics, whatever the input.
    pub fn parse(line: &str) -> Result<Payload, E2eError> {
        let mut tokens = line.split(' ');
        let parse_fields: fn(&[&str]) -> Result<Payload, E2eError> =
            match tokens.next().unwrap_or_default() {
                INIT_TAG => parse_init,
                REPLY_TAG => parse_reply,
                CONFIRM_TAG => parse_confirm,
                MESSAGE_TAG => parse_message,
                PREKEY_TAG => parse_prekey,
                RATCHET_TAG => parse_ratchet,
                _ => return Err(E2eError::NotE2e),
            };
        if line.len() > MAX_PAYLOAD_LEN {
            return Err(malformed(format!(
                "it is {} bytes, more than the {MAX_PAYLOAD_LEN} allowed",
                line.len()
            )));
        }
        let fields: Vec<&str> = tokens.take(MAX_FIELDS + 1).collect();
        if fields.iter().any(|field| field.is_empty()) {
            return Err(malformed(
                "empty field: fields are separated by exactly one space".to_owned(),
            ));
        }
        parse_fields(&fields)
    }
}

/// The payload as one line, without a newline.
impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Init(init) => write!(
                f,
                "{INIT_TAG} {} {} {}",
                init.session_id,
                init.group.name(),
                BASE64.encode(&init.y_i)
            ),
            Payload::Reply(reply) => write!(
                f,
                "{REPLY_TAG} {} {} {}",
                reply.session_id,
                BASE64.encode(&reply.y_r),
                BASE64.encode(reply.signature)
            ),
            Payload::Confirm(confirm) => write!(
                f,
                "{CONFIRM_TAG} {} {}",
                confirm.session_id,
                BASE64.encode(confirm.signature)
            ),
            Payload::Message(message) => write!(
                f,
                "{MESSAGE_TAG} {} {} {}",
                message.session_id,
                message.counter,
                BASE64.encode(&message.ciphertext)
            ),
            Payload::Prekey(first) => write!(f, "{PREKEY_TAG} {}", BASE64.encode(first.to_bytes())),
            Payload::Ratchet(message) => write!(
                f,
                "{RATCHET_TAG} {}",
                BASE64.encode(encode_fields(&[
                    &message.header.to_bytes(),
                    &message.ciphertext
                ]))
            ),
        }
    }
}

fn parse_init(fields: &[&str]) -> Result<Payload, E2eError> {
    let [session_id, group, y_i] = exactly(INIT_TAG, fields)?;
    Ok(Payload::Init(Init {
        session_id: parse_session_id(session_id)?,
        group: Group::from_name(group).ok_or_else(|| {
            malformed("unknown Diffie–Hellman group (known: ffdhe2048, ffdhe3072)".to_owned())
        })?,
        y_i: decode_base64(y_i, MAX_PUBLIC_VALUE_LEN, "public value")?,
    }))
}

fn parse_reply(fields: &[&str]) -> Result<Payload, E2eError> {
    let [session_id, y_r, signature] = exactly(REPLY_TAG, fields)?;
    Ok(Payload::Reply(Reply {
        session_id: parse_session_id(session_id)?,
        y_r: decode_base64(y_r, MAX_PUBLIC_VALUE_LEN, "public value")?,
        signature: decode_fixed(signature, "signature")?,
    }))
}

fn parse_confirm(fields: &[&str]) -> Result<Payload, E2eError> {
    let [session_id, signature] = exactly(CONFIRM_TAG, fields)?;
    Ok(Payload::Confirm(Confirm {
        session_id: parse_session_id(session_id)?,
        signature: decode_fixed::<SIGNATURE_LEN>(signature, "signature")?,
    }))
}

fn parse_message(fields: &[&str]) -> Result<Payload, E2eError> {
    let [session_id, counter, ciphertext] = exactly(MESSAGE_TAG, fields)?;
    let ciphertext = decode_base64(ciphertext, MAX_CIPHERTEXT_LEN, "ciphertext")?;
    check_ciphertext_len(ciphertext.len())?;
    Ok(Payload::Message(EncryptedMessage {
        session_id: parse_session_id(session_id)?,
        counter: parse_counter(counter)?,
        ciphertext,
    }))
}

fn parse_prekey(fields: &[&str]) -> Result<Payload, E2eError> {
    let [bytes] = exactly(PREKEY_TAG, fields)?;
    let first = PrekeyMessage::from_bytes(&decode_base64(bytes, MAX_BINARY_LEN, "first message")?)?;
    check_ciphertext_len(first.message.ciphertext.len())?;
    Ok(Payload::Prekey(first))
}

fn parse_ratchet(fields: &[&str]) -> Result<Payload, E2eError> {
    let [bytes] = exactly(RATCHET_TAG, fields)?;
    let bytes = decode_base64(bytes, MAX_BINARY_LEN, "ratchet message")?;
    let mut fields = Fields::new(&bytes, "ratchet message", E2eError::Malformed);
    let header = fields.next()?;
    let group = Group::ALL
        .into_iter()
        .find(|group| group.byte_len() + 8 == header.len())
        .ok_or_else(|| fields.fail("the header's length fits no known group"))?;
    let header = RatchetHeader::from_bytes(group, header)?;
    let ciphertext = fields.next()?.to_vec();
    fields.finish()?;
    check_ciphertext_len(ciphertext.len())?;
    Ok(Payload::Ratchet(RatchetMessage { header, ciphertext }))
}

/// A ciphertext holds at least its tag and at most the longest text and its tag.
fn check_ciphertext_len(len: usize) -> Result<(), E2eError> {
    if !(TAG_LEN..=MAX_CIPHERTEXT_LEN).contains(&len) {
        return Err(malformed(format!(
            "a ciphertext is {TAG_LEN} to {MAX_CIPHERTEXT_LEN} bytes, not {len}"
        )));
    }
    Ok(())
}

/// The fields as an array of exactly `N`, or an error naming the payload.
fn exactly<'a, const N: usize>(tag: &str, fields: &[&'a str]) -> Result<[&'a str; N], E2eError> {
    fields
        .try_into()
        .map_err(|_| malformed(format!("{tag} takes exactly {N} fields")))
}

fn parse_session_id(token: &str) -> Result<SessionId, E2eError> {
    decode_fixed::<SESSION_ID_LEN>(token, "session id").map(SessionId)
}

/// Decimal digits only (no sign, no leading zeros), within `u64`.
fn parse_counter(token: &str) -> Result<u64, E2eError> {
    let digits_only = token.bytes().all(|byte| byte.is_ascii_digit());
    let leading_zero = token.len() > 1 && token.starts_with('0');
    if !digits_only || leading_zero || token.len() > MAX_COUNTER_DIGITS {
        return Err(malformed(
            "the counter must be a decimal number without sign or leading zeros".to_owned(),
        ));
    }
    token
        .parse()
        .map_err(|_| malformed("the counter is larger than 2^64 - 1".to_owned()))
}

/// Base64 of exactly `N` bytes.
fn decode_fixed<const N: usize>(token: &str, what: &str) -> Result<[u8; N], E2eError> {
    decode_base64(token, N, what)?
        .try_into()
        .map_err(|_| malformed(format!("the {what} must be {N} bytes")))
}

/// Base64 of at most `max_bytes` bytes; the length is checked before decoding.
fn decode_base64(token: &str, max_bytes: usize, what: &str) -> Result<Vec<u8>, E2eError> {
    if token.len() > max_bytes.div_ceil(3) * 4 {
        return Err(malformed(format!(
            "the {what} is longer than {max_bytes} bytes"
        )));
    }
    BASE64
        .decode(token)
        .map_err(|_| malformed(format!("the {what} is not valid base64")))
}

fn malformed(detail: String) -> E2eError {
    E2eError::Malformed(detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KNOWN_TAGS: [&str; 6] = [
        INIT_TAG,
        REPLY_TAG,
        CONFIRM_TAG,
        MESSAGE_TAG,
        PREKEY_TAG,
        RATCHET_TAG,
    ];

    /// A ratchet message in `group` (values need not be valid: only syntax is checked here).
    fn ratchet_message(group: Group, counter: u32, ciphertext_len: usize) -> RatchetMessage {
        RatchetMessage {
            header: RatchetHeader {
                ratchet_key: vec![0x44; group.byte_len()],
                previous_chain_len: 3,
                counter,
            },
            ciphertext: vec![0x55; ciphertext_len],
        }
    }

    /// A first message in `group`, with or without a one-time prekey.
    fn prekey_message(group: Group, one_time_prekey_id: Option<u32>, len: usize) -> PrekeyMessage {
        PrekeyMessage {
            group,
            identity_dh: vec![0x11; group.byte_len()],
            identity_dh_signature: [0x22; SIGNATURE_LEN],
            ephemeral: vec![0x33; group.byte_len()],
            signed_prekey_id: 7,
            one_time_prekey_id,
            message: ratchet_message(group, 0, len),
        }
    }

    fn examples() -> Vec<Payload> {
        let session_id = SessionId([0xA5; SESSION_ID_LEN]);
        vec![
            Payload::Init(Init {
                session_id,
                group: Group::Ffdhe3072,
                y_i: vec![0x12; 384],
            }),
            Payload::Reply(Reply {
                session_id,
                y_r: vec![0x34; 384],
                signature: [0x56; SIGNATURE_LEN],
            }),
            Payload::Confirm(Confirm {
                session_id,
                signature: [0x78; SIGNATURE_LEN],
            }),
            Payload::Message(EncryptedMessage {
                session_id,
                counter: 42,
                ciphertext: vec![0x9A; 40],
            }),
            Payload::Prekey(prekey_message(Group::Ffdhe3072, Some(9), 40)),
            Payload::Prekey(prekey_message(Group::Ffdhe2048, None, TAG_LEN)),
            Payload::Ratchet(ratchet_message(Group::Ffdhe2048, 5, 40)),
            Payload::Ratchet(ratchet_message(Group::Ffdhe3072, 0, TAG_LEN)),
        ]
    }

    /// What every parse result must satisfy: accepted text is canonical, and `NotE2e` is reserved
    /// for text without a known tag.
    fn check_parse(line: &str) -> Result<(), TestCaseError> {
        let tagged = KNOWN_TAGS.contains(&line.split(' ').next().unwrap_or_default());
        match Payload::parse(line) {
            Ok(payload) => prop_assert_eq!(payload.to_string(), line),
            Err(E2eError::NotE2e) => prop_assert!(!tagged),
            Err(E2eError::Malformed(_)) => prop_assert!(tagged),
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
        Ok(())
    }

    #[test]
    fn every_payload_round_trips() {
        for payload in examples() {
            let line = payload.to_string();
            assert!(!line.contains('\n') && !line.contains("  "));
            assert_eq!(Payload::parse(&line), Ok(payload));
        }
    }

    #[test]
    fn the_format_is_as_documented() {
        let line = examples()[3].to_string();
        let tokens: Vec<&str> = line.split(' ').collect();
        assert_eq!(tokens[0], "E2E");
        assert_eq!(tokens[1], BASE64.encode([0xA5; 16]));
        assert_eq!(tokens[2], "42");
        assert_eq!(tokens[3], BASE64.encode([0x9A; 40]));
        assert!(examples()[0].to_string().starts_with("DH-INIT pa"));
        assert!(examples()[0].to_string().contains(" ffdhe3072 "));
        let message = ratchet_message(Group::Ffdhe2048, 5, 40);
        let mut binary = (264u64).to_be_bytes().to_vec();
        binary.extend_from_slice(&message.header.to_bytes());
        binary.extend_from_slice(&40u64.to_be_bytes());
        binary.extend_from_slice(&[0x55; 40]);
        assert_eq!(
            Payload::Ratchet(message).to_string(),
            format!("RATCHET {}", BASE64.encode(binary))
        );
        let first = prekey_message(Group::Ffdhe3072, Some(9), 40);
        assert_eq!(
            Payload::Prekey(first.clone()).to_string(),
            format!("X3DH {}", BASE64.encode(first.to_bytes()))
        );
    }

    #[test]
    fn broken_offline_payloads_are_malformed() {
        let good = prekey_message(Group::Ffdhe2048, Some(1), 40).to_bytes();
        let ratchet = |header: &[u8], ciphertext: &[u8], extra: &[u8]| {
            let mut bytes = encode_fields(&[header, ciphertext]);
            bytes.extend_from_slice(extra);
            format!("RATCHET {}", BASE64.encode(bytes))
        };
        let header = ratchet_message(Group::Ffdhe2048, 1, 16).header.to_bytes();
        let broken = [
            "X3DH".to_owned(),
            "RATCHET".to_owned(),
            "X3DH AAAA".to_owned(),
            format!("X3DH {}", BASE64.encode(&good[..good.len() - 1])),
            format!("X3DH {} x", BASE64.encode(&good)),
            format!("X3DH {}", BASE64.encode(&good).replace('=', "")),
            format!(
                "X3DH {}",
                BASE64.encode(prekey_message(Group::Ffdhe2048, None, 15).to_bytes())
            ),
            ratchet(&header, &[0; 15], &[]),
            ratchet(&header, &[0; MAX_CIPHERTEXT_LEN + 1], &[]),
            ratchet(&header, &[0; 16], &[0]),
            ratchet(&header[1..], &[0; 16], &[]),
            ratchet(&[], &[0; 16], &[]),
            format!("RATCHET {}", "A".repeat(MAX_PAYLOAD_LEN)),
        ];
        for line in &broken {
            assert!(
                matches!(Payload::parse(line), Err(E2eError::Malformed(_))),
                "accepted {}",
                &line[..line.len().min(80)]
            );
        }
        assert!(Payload::parse(&ratchet(&header, &[0; 16], &[])).is_ok());
    }

    #[test]
    fn plain_text_is_not_e2e() {
        for line in [
            "hello",
            "",
            " DH-INIT",
            "dh-init x y z",
            "E2Ex a b c",
            "MSG bob hi",
        ] {
            assert_eq!(Payload::parse(line), Err(E2eError::NotE2e), "{line:?}");
        }
        assert_eq!(
            Payload::parse(&"x".repeat(MAX_PAYLOAD_LEN * 2)),
            Err(E2eError::NotE2e)
        );
    }

    #[test]
    fn broken_payloads_are_malformed() {
        let sid = BASE64.encode([1u8; 16]);
        let sig = BASE64.encode([2u8; 64]);
        let ct = BASE64.encode([3u8; 20]);
        let broken = [
            "E2E".to_owned(),
            format!("E2E {sid} 1"),
            format!("E2E {sid} 1 {ct} extra"),
            format!("E2E {sid}  1 {ct}"),
            format!("E2E {sid} 1 {ct} "),
            format!("E2E {sid} +1 {ct}"),
            format!("E2E {sid} -1 {ct}"),
            format!("E2E {sid} 01 {ct}"),
            format!("E2E {sid} 18446744073709551616 {ct}"),
            format!("E2E {sid} 1 {}", BASE64.encode([3u8; 15])),
            format!("E2E {} 1 {ct}", BASE64.encode([1u8; 15])),
            format!("E2E {} 1 {ct}", &sid[..22]),
            format!("E2E {sid} 1 {}", ct.replace('=', "")),
            format!(
                "E2E {sid} 1 {}",
                BASE64.encode(vec![0u8; MAX_CIPHERTEXT_LEN + 1])
            ),
            format!("DH-INIT {sid} ffdhe1024 AAAA"),
            format!("DH-INIT {sid} ffdhe3072 {}", BASE64.encode([1u8; 385])),
            format!("DH-REPLY {sid} AAAA {}", BASE64.encode([2u8; 63])),
            format!("DH-CONFIRM {sid} {sig} {sig}"),
            format!("DH-CONFIRM {sid} {}", sig.replace('A', "*")),
            format!("E2E {sid} 1 {}", "A".repeat(MAX_PAYLOAD_LEN)),
        ];
        for line in &broken {
            assert!(
                matches!(Payload::parse(line), Err(E2eError::Malformed(_))),
                "accepted {line:?}"
            );
        }
        // Largest counter and non-canonical base64 (trailing bits set) at the edges.
        assert!(Payload::parse(&format!("E2E {sid} 18446744073709551615 {ct}")).is_ok());
        let last_char_bumped = format!("{}B==", &sid[..21]);
        assert!(Payload::parse(&format!("E2E {last_char_bumped} 1 {ct}")).is_err());
    }

    #[test]
    fn largest_public_value_matches_the_largest_group() {
        let largest = Group::ALL.iter().map(|group| group.byte_len()).max();
        assert_eq!(largest, Some(MAX_PUBLIC_VALUE_LEN));
    }

    #[test]
    fn the_longest_message_fits_in_a_payload() {
        let longest = Payload::Message(EncryptedMessage {
            session_id: SessionId([0; SESSION_ID_LEN]),
            counter: u64::MAX,
            ciphertext: vec![0; MAX_CIPHERTEXT_LEN],
        });
        let line = longest.to_string();
        assert!(line.len() <= MAX_PAYLOAD_LEN, "{} bytes", line.len());
        assert_eq!(Payload::parse(&line), Ok(longest));
        let largest_group = Group::ALL.into_iter().max_by_key(|group| group.byte_len());
        let largest_group = largest_group.expect("groups");
        for longest in [
            Payload::Prekey(prekey_message(
                largest_group,
                Some(u32::MAX),
                MAX_CIPHERTEXT_LEN,
            )),
            Payload::Ratchet(ratchet_message(largest_group, u32::MAX, MAX_CIPHERTEXT_LEN)),
        ] {
            let line = longest.to_string();
            assert!(line.len() <= MAX_PAYLOAD_LEN, "{} bytes", line.len());
            assert_eq!(Payload::parse(&line), Ok(longest));
        }
    }

    fn any_payload() -> impl Strategy<Value = Payload> {
        let session_id = any::<[u8; SESSION_ID_LEN]>().prop_map(SessionId);
        let public_value = prop::collection::vec(any::<u8>(), 1..=MAX_PUBLIC_VALUE_LEN);
        let group = prop::sample::select(Group::ALL.to_vec());
        let ciphertext_len = TAG_LEN..=MAX_CIPHERTEXT_LEN;
        let offline = (
            group.clone(),
            any::<Option<u32>>(),
            any::<u32>(),
            ciphertext_len,
            any::<bool>(),
        )
            .prop_map(|(group, opk, counter, len, first)| {
                if first {
                    Payload::Prekey(prekey_message(group, opk, len))
                } else {
                    Payload::Ratchet(ratchet_message(group, counter, len))
                }
            });
        prop_oneof![
            offline,
            (session_id.clone(), group, public_value.clone()).prop_map(
                |(session_id, group, y_i)| Payload::Init(Init {
                    session_id,
                    group,
                    y_i
                })
            ),
            (
                session_id.clone(),
                public_value,
                any::<[u8; SIGNATURE_LEN]>()
            )
                .prop_map(|(session_id, y_r, signature)| Payload::Reply(Reply {
                    session_id,
                    y_r,
                    signature
                })),
            (session_id.clone(), any::<[u8; SIGNATURE_LEN]>()).prop_map(
                |(session_id, signature)| Payload::Confirm(Confirm {
                    session_id,
                    signature
                })
            ),
            (
                session_id,
                any::<u64>(),
                prop::collection::vec(any::<u8>(), TAG_LEN..=MAX_CIPHERTEXT_LEN)
            )
                .prop_map(|(session_id, counter, ciphertext)| {
                    Payload::Message(EncryptedMessage {
                        session_id,
                        counter,
                        ciphertext,
                    })
                }),
        ]
    }

    proptest! {
        #[test]
        fn valid_payloads_round_trip(payload in any_payload()) {
            let line = payload.to_string();
            prop_assert!(line.len() <= MAX_PAYLOAD_LEN);
            prop_assert!(line.bytes().all(|byte| byte.is_ascii_graphic() || byte == b' '));
            prop_assert_eq!(Payload::parse(&line), Ok(payload));
        }

        #[test]
        fn arbitrary_text_never_panics(line in "\\PC{0,300}") {
            check_parse(&line)?;
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            check_parse(&String::from_utf8_lossy(&bytes))?;
        }

        #[test]
        fn near_miss_payloads_never_panic(
            line in "(DH-INIT|DH-REPLY|DH-CONFIRM|E2E|X3DH|RATCHET)( [A-Za-z0-9+/]{21}[AQgw]==| ffdhe(2048|3072)| [0-9]{1,21}| [A-Za-z0-9+/=]{0,90}){0,5}"
        ) {
            check_parse(&line)?;
        }
    }
}
