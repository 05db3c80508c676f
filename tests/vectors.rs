//! Golden test vectors for the end-to-end layer (`tests/vectors/*.txt`, printed in
//! `report/protocol.md` §11.11).
//!
//! The vector files were computed by `tests/vectors/generate.py` from the protocol document
//! alone, with Python's own Ed25519, ChaCha20-Poly1305 and big integers, so they are an
//! independent reference. Each test checks two things against a file:
//! - **the library**, run with the file's fixed inputs, produces the exact bytes on the wire
//!   (payloads, signatures, fingerprints, safety number) and opens the sealed messages;
//! - **the spec**, recomputed here step by step with aws-lc and num-bigint (transcripts, HKDF,
//!   nonce, AAD, sealing), gives the file's intermediate values, which the library keeps
//!   inside aws-lc and never shows.
//!
//! Values named `fail_*` must be refused, and are (without changing any state).
//!
//! An outside implementer can run the same checks against their code, offline.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use num_bigint::BigUint;
use securechat::e2e::{
    initiate_using, respond_using, safety_number, E2eError, EphemeralSecret, Group, IdentityDhKey,
    IdentityKey, Initiator, OneTimePrekey, Party, Payload, PrekeyBundle, PrekeyMessage,
    PublicValue, Responder, Session, SessionId, SignedPrekey,
};

/// One vector file: `name = value` lines; `#` comments and blank lines are skipped.
struct Vectors {
    /// Which file, for failure messages.
    file: String,
    /// Every value by name.
    values: HashMap<String, String>,
}

impl Vectors {
    fn load(name: &str) -> Vectors {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors")
            .join(name);
        let text = fs::read_to_string(&path).expect("vector file");
        let values = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (key, value) = line.split_once(" = ").expect("name = value");
                (key.to_owned(), value.to_owned())
            })
            .collect();
        Vectors {
            file: name.to_owned(),
            values,
        }
    }

    fn text(&self, name: &str) -> &str {
        self.values
            .get(name)
            .unwrap_or_else(|| panic!("{} has no {name}", self.file))
    }

    fn bytes(&self, name: &str) -> Vec<u8> {
        let hex = self.text(name);
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn array<const N: usize>(&self, name: &str) -> [u8; N] {
        self.bytes(name).try_into().expect("length")
    }
}

/// `F(x)` of protocol.md §11.1: an 8-byte big-endian length, then `x`.
fn field(x: &[u8]) -> Vec<u8> {
    [&(x.len() as u64).to_be_bytes()[..], x].concat()
}

fn fields(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|part| field(part)).collect()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// HKDF-Expand (RFC 5869): T(1) ‖ T(2) ‖ … cut to `len` bytes.
fn hkdf_expand(prk: &[u8], info: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut block = Vec::new();
    for counter in 1u8.. {
        if out.len() >= len {
            break;
        }
        block = hmac_sha256(prk, &[&block[..], info.as_bytes(), &[counter]].concat());
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out
}

/// HKDF (RFC 5869): extract, then expand.
fn hkdf(salt: &[u8], input: &[u8], info: &str, len: usize) -> Vec<u8> {
    hkdf_expand(&hmac_sha256(salt, input), info, len)
}

fn chacha_seal(key: &[u8], nonce: &[u8], aad: &[u8], text: &[u8]) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("key"));
    let nonce = Nonce::try_assume_unique_for_key(nonce).expect("nonce");
    let mut data = text.to_vec();
    key.seal_in_place_append_tag(nonce, Aad::from(aad), &mut data)
        .expect("seal");
    data
}

#[test]
fn identity_keys_fingerprints_and_the_safety_number_match_the_vectors() {
    let v = Vectors::load("handshake.txt");
    let alice = IdentityKey::from_fixed_seed(&v.array("alice_seed")).expect("alice");
    let bob = IdentityKey::from_fixed_seed(&v.array("bob_seed")).expect("bob");
    assert_eq!(
        alice.public_key().as_bytes()[..],
        v.bytes("alice_public_key")
    );
    assert_eq!(bob.public_key().as_bytes()[..], v.bytes("bob_public_key"));
    assert_eq!(
        alice.public_key().fingerprint(),
        v.text("alice_fingerprint")
    );
    assert_eq!(bob.public_key().fingerprint(), v.text("bob_fingerprint"));
    let number = safety_number("alice", &alice.public_key(), "bob", &bob.public_key());
    assert_eq!(number, v.text("safety_number"));
}

#[test]
fn the_spec_recomputed_gives_the_vectors_transcripts_and_key_schedule() {
    let v = Vectors::load("handshake.txt");
    let group = Group::from_name(v.text("group")).expect("group");
    let p = group.prime();
    let number = |name: &str| BigUint::from_bytes_be(&v.bytes(name));
    let padded = |n: BigUint| {
        let digits = n.to_bytes_be();
        [vec![0; group.byte_len() - digits.len()], digits].concat()
    };
    let two = BigUint::from(2u32);
    assert_eq!(padded(two.modpow(&number("x"), p)), v.bytes("y_i"));
    assert_eq!(padded(two.modpow(&number("y"), p)), v.bytes("y_r"));
    assert_eq!(padded(number("y_i").modpow(&number("y"), p)), v.bytes("z"));
    assert_eq!(padded(number("y_r").modpow(&number("x"), p)), v.bytes("z"));

    let transcript = |role: &[u8]| {
        fields(&[
            b"securechat/dh/v1",
            role,
            v.text("group").as_bytes(),
            v.text("initiator").as_bytes(),
            v.text("responder").as_bytes(),
            &v.bytes("session_id"),
            &v.bytes("y_i"),
            &v.bytes("y_r"),
        ])
    };
    assert_eq!(transcript(b"responder"), v.bytes("transcript_responder"));
    assert_eq!(transcript(b"initiator"), v.bytes("transcript_initiator"));
    assert_eq!(
        transcript(b"key-schedule"),
        v.bytes("transcript_key_schedule")
    );
    // The signatures in the file are over exactly these transcripts.
    let alice = IdentityKey::from_fixed_seed(&v.array("alice_seed")).expect("alice");
    let bob = IdentityKey::from_fixed_seed(&v.array("bob_seed")).expect("bob");
    let signed_by_bob = bob.public_key().verify(
        &v.bytes("transcript_responder"),
        &v.bytes("signature_responder"),
    );
    assert_eq!(signed_by_bob, Ok(()));
    let signed_by_alice = alice.public_key().verify(
        &v.bytes("transcript_initiator"),
        &v.bytes("signature_initiator"),
    );
    assert_eq!(signed_by_alice, Ok(()));

    let salt = digest(&SHA256, &v.bytes("transcript_key_schedule"));
    assert_eq!(salt.as_ref(), v.bytes("salt"));
    let prk = hmac_sha256(salt.as_ref(), &v.bytes("z"));
    assert_eq!(prk, v.bytes("prk"));
    let keys = [
        (
            "securechat/v1 key initiator->responder",
            "key_initiator_to_responder",
        ),
        (
            "securechat/v1 key responder->initiator",
            "key_responder_to_initiator",
        ),
    ];
    for (label, name) in keys {
        assert_eq!(hkdf_expand(&prk, label, 32), v.bytes(name), "{name}");
    }
    let sfp = hkdf_expand(&prk, "securechat/v1 secret fingerprint", 8);
    assert_eq!(sfp, v.bytes("secret_fingerprint"));
}

#[test]
fn the_spec_recomputed_gives_the_vectors_nonce_aad_and_sealed_messages() {
    let v = Vectors::load("handshake.txt");
    let directions = [
        (
            "initiator_to_responder",
            "alice",
            "bob",
            "key_initiator_to_responder",
        ),
        (
            "responder_to_initiator",
            "bob",
            "alice",
            "key_responder_to_initiator",
        ),
    ];
    for (direction, sender, recipient, key) in directions {
        let name = |suffix: &str| format!("{direction}_{suffix}");
        let counter: u64 = v.text(&name("counter")).parse().expect("counter");
        let nonce = [&[0u8; 4][..], &counter.to_be_bytes()].concat();
        assert_eq!(nonce, v.bytes(&name("nonce")));
        let aad = fields(&[
            b"securechat/msg/v1",
            &v.bytes("session_id"),
            sender.as_bytes(),
            recipient.as_bytes(),
            &counter.to_be_bytes(),
        ]);
        assert_eq!(aad, v.bytes(&name("aad")));
        let sealed = chacha_seal(
            &v.bytes(key),
            &nonce,
            &aad,
            v.text(&name("text")).as_bytes(),
        );
        assert_eq!(sealed, v.bytes(&name("ciphertext")), "{direction}");
        let payload = format!(
            "E2E {} {counter} {}",
            BASE64.encode(v.bytes("session_id")),
            BASE64.encode(&sealed)
        );
        assert_eq!(payload, v.text(&name("payload")));
    }
}

#[test]
fn the_library_with_the_vectors_inputs_sends_exactly_the_vectors_payloads() {
    let v = Vectors::load("handshake.txt");
    let group = Group::from_name(v.text("group")).expect("group");
    let alice = IdentityKey::from_fixed_seed(&v.array("alice_seed")).expect("alice");
    let bob = IdentityKey::from_fixed_seed(&v.array("bob_seed")).expect("bob");
    let session_id = SessionId(v.array("session_id"));
    let x = EphemeralSecret::from_exponent(group, &v.bytes("x")).expect("x");
    let y = EphemeralSecret::from_exponent(group, &v.bytes("y")).expect("y");

    let (initiator, init) = Initiator::start_fixed("alice", "bob", session_id, x);
    assert_eq!(
        Payload::Init(init.clone()).to_string(),
        v.text("payload_init")
    );
    let (responder, reply) =
        Responder::accept_fixed("bob", "alice", &init, &bob, &alice.public_key(), y)
            .expect("accept");
    assert_eq!(
        Payload::Reply(reply.clone()).to_string(),
        v.text("payload_reply")
    );
    let (mut at_alice, confirm) = initiator
        .finish(&reply, &alice, &bob.public_key())
        .expect("finish");
    assert_eq!(
        Payload::Confirm(confirm.clone()).to_string(),
        v.text("payload_confirm")
    );
    let mut at_bob = responder.confirm(&confirm).expect("confirm");
    for session in [&at_alice, &at_bob] {
        let shown = session.explanation().secret_fingerprint.as_deref();
        assert_eq!(shown, Some(v.text("secret_fingerprint_shown")));
    }

    // What must be refused, refused without changing anything: the genuine messages still
    // open afterwards.
    let refusals = [
        ("fail_altered_payload", false, E2eError::Tampered),
        ("fail_renumbered_payload", false, E2eError::Tampered),
        (
            "fail_other_session_payload",
            false,
            E2eError::UnknownSession,
        ),
        ("fail_reflected_payload", true, E2eError::Tampered),
    ];
    for (name, to_alice, expected) in refusals {
        let Ok(Payload::Message(message)) = Payload::parse(v.text(name)) else {
            panic!("{name} does not parse");
        };
        let receiver = if to_alice { &mut at_alice } else { &mut at_bob };
        assert_eq!(receiver.open(&message), Err(expected), "{name}");
    }

    // One message each way: sealed to the exact payload, and opened by the other side.
    check_message(&v, "initiator_to_responder", &mut at_alice, &mut at_bob);
    check_message(&v, "responder_to_initiator", &mut at_bob, &mut at_alice);
}

/// `from` seals the vector's text to exactly the vector's payload, and `to` opens that payload.
fn check_message(v: &Vectors, direction: &str, from: &mut Session, to: &mut Session) {
    let text = v.text(&format!("{direction}_text"));
    let sealed = from.seal(text).expect("seal");
    let expected = v.text(&format!("{direction}_payload"));
    assert_eq!(Payload::Message(sealed).to_string(), expected);
    let Ok(Payload::Message(received)) = Payload::parse(expected) else {
        panic!("the vector payload does not parse: {expected}");
    };
    let opened = to.open(&received).map(|opened| opened.text);
    assert_eq!(opened.as_deref(), Ok(text), "{direction}");
}

/// Fresh keys for the library, taken in order from the vector file's exponents.
fn fixed_keys<'a>(
    v: &'a Vectors,
    names: &'a [&'a str],
) -> impl FnMut(Group) -> Result<(EphemeralSecret, PublicValue), E2eError> + 'a {
    let mut names = names.iter();
    move |group| {
        let name = names
            .next()
            .expect("the library asked for more keys than the vector has");
        EphemeralSecret::from_exponent(group, &v.bytes(&format!("{name}_exponent")))
    }
}

#[test]
fn the_library_agrees_on_the_prekey_vectors_and_the_first_two_ratchet_messages() {
    let v = Vectors::load("ratchet.txt");
    let group = Group::from_name(v.text("group")).expect("group");
    let pair = |name: &str| {
        EphemeralSecret::from_exponent(group, &v.bytes(&format!("{name}_exponent"))).expect(name)
    };
    let alice = IdentityKey::from_fixed_seed(&v.array("alice_seed")).expect("alice");
    let bob = IdentityKey::from_fixed_seed(&v.array("bob_seed")).expect("bob");
    let number = |name: &str| v.text(name).parse::<u32>().expect("id");
    let alice_dh =
        IdentityDhKey::from_pair(&alice, "alice", pair("alice_identity_dh")).expect("ik");
    let bob_dh = IdentityDhKey::from_pair(&bob, "bob", pair("bob_identity_dh")).expect("ik");
    let spk = SignedPrekey::from_pair(
        &bob,
        "bob",
        number("signed_prekey_id"),
        pair("bob_signed_prekey"),
    )
    .expect("spk");
    let opk = OneTimePrekey::from_pair(number("one_time_prekey_id"), pair("bob_one_time_prekey"));

    // Bob's bundle, byte for byte (Ed25519 signatures are deterministic).
    let bundle = PrekeyBundle::new(&bob_dh, &spk, Some(&opk));
    assert_eq!(bundle.to_bytes(), v.bytes("bundle"));
    let bundle = PrekeyBundle::from_bytes(&v.bytes("bundle")).expect("parse");

    let at_alice = Party {
        name: "alice",
        identity: alice.public_key(),
    };
    let at_bob = Party {
        name: "bob",
        identity: bob.public_key(),
    };
    let (mut alice_session, first) = initiate_using(
        &at_alice,
        &alice_dh,
        &at_bob,
        &bundle,
        v.text("first_text"),
        &mut fixed_keys(&v, &["alice_ephemeral", "alice_ratchet"]),
    )
    .expect("initiate");
    assert_eq!(first.to_bytes(), v.bytes("prekey_message"));

    // The refusal vectors: a bundle whose signed prekey was swapped, a first message whose
    // header was changed.
    let swapped =
        PrekeyBundle::from_bytes(&v.bytes("fail_substituted_signed_prekey_bundle")).expect("parse");
    let refused = initiate_using(
        &at_alice,
        &alice_dh,
        &at_bob,
        &swapped,
        v.text("first_text"),
        &mut fixed_keys(&v, &["alice_ephemeral", "alice_ratchet"]),
    );
    assert_eq!(refused.err(), Some(E2eError::BadSignature));
    let altered =
        PrekeyMessage::from_bytes(&v.bytes("fail_altered_header_prekey_message")).expect("parse");
    let refused = respond_using(
        &at_bob,
        &bob_dh,
        &spk,
        Some(&opk),
        &at_alice,
        &altered,
        &mut fixed_keys(&v, &["bob_ratchet"]),
    );
    assert_eq!(refused.err(), Some(E2eError::Tampered));

    let received = PrekeyMessage::from_bytes(&v.bytes("prekey_message")).expect("parse");
    let (mut bob_session, text) = respond_using(
        &at_bob,
        &bob_dh,
        &spk,
        Some(&opk),
        &at_alice,
        &received,
        &mut fixed_keys(&v, &["bob_ratchet"]),
    )
    .expect("respond");
    assert_eq!(text, v.text("first_text"));

    let second = bob_session.encrypt(v.text("second_text")).expect("encrypt");
    assert_eq!(second.header.to_bytes(), v.bytes("second_header"));
    assert_eq!(second.ciphertext, v.bytes("second_ciphertext"));
    let opened = alice_session.decrypt_using(&second, &mut fixed_keys(&v, &["alice_next_ratchet"]));
    assert_eq!(opened.as_deref(), Ok(v.text("second_text")));
}

#[test]
fn the_spec_recomputed_gives_the_prekey_and_ratchet_vectors() {
    let v = Vectors::load("ratchet.txt");
    let group = Group::from_name(v.text("group")).expect("group");
    let p = group.prime();
    let padded = |n: BigUint| {
        let digits = n.to_bytes_be();
        [vec![0; group.byte_len() - digits.len()], digits].concat()
    };
    let exponent = |name: &str| BigUint::from_bytes_be(&v.bytes(&format!("{name}_exponent")));
    let public = |name: &str| v.bytes(&format!("{name}_public"));
    let dh = |secret: &str, peer: &str| {
        padded(BigUint::from_bytes_be(&public(peer)).modpow(&exponent(secret), p))
    };
    for name in [
        "alice_identity_dh",
        "bob_identity_dh",
        "bob_signed_prekey",
        "bob_one_time_prekey",
        "alice_ephemeral",
        "alice_ratchet",
        "bob_ratchet",
    ] {
        let computed = padded(BigUint::from(2u32).modpow(&exponent(name), p));
        assert_eq!(computed, public(name), "{name}");
    }

    // The agreement, from both ends.
    let dh_values = [
        dh("alice_identity_dh", "bob_signed_prekey"),
        dh("alice_ephemeral", "bob_identity_dh"),
        dh("alice_ephemeral", "bob_signed_prekey"),
        dh("alice_ephemeral", "bob_one_time_prekey"),
    ];
    assert_eq!(dh_values[0], dh("bob_signed_prekey", "alice_identity_dh"));
    assert_eq!(dh_values[1], dh("bob_identity_dh", "alice_ephemeral"));
    assert_eq!(dh_values[3], dh("bob_one_time_prekey", "alice_ephemeral"));
    for (index, value) in dh_values.iter().enumerate() {
        assert_eq!(value, &v.bytes(&format!("dh{}", index + 1)));
    }
    let info = format!("securechat/x3dh/v1 {}", v.text("group"));
    let shared = hkdf(&[0; 32], &dh_values.concat(), &info, 32);
    assert_eq!(shared, v.bytes("shared_key"));
    let alice = IdentityKey::from_fixed_seed(&v.array("alice_seed")).expect("alice");
    let bob = IdentityKey::from_fixed_seed(&v.array("bob_seed")).expect("bob");
    let ad = fields(&[
        b"securechat/x3dh/ad/v1",
        b"alice",
        alice.public_key().as_bytes(),
        &public("alice_identity_dh"),
        b"bob",
        bob.public_key().as_bytes(),
        &public("bob_identity_dh"),
    ]);
    assert_eq!(ad, v.bytes("associated_data"));
    // The signatures are over the statements of protocol.md §11.11.
    let statement = |label: &[u8], user: &[u8], extra: &[&[u8]]| {
        let mut parts: Vec<&[u8]> = vec![label, user, v.text("group").as_bytes()];
        parts.extend_from_slice(extra);
        fields(&parts)
    };
    let ik_label = b"securechat/x3dh/identity-dh/v1";
    let checks = [
        (
            &alice,
            statement(ik_label, b"alice", &[&public("alice_identity_dh")]),
            "alice_identity_dh_signature",
        ),
        (
            &bob,
            statement(ik_label, b"bob", &[&public("bob_identity_dh")]),
            "bob_identity_dh_signature",
        ),
        (
            &bob,
            statement(
                b"securechat/x3dh/signed-prekey/v1",
                b"bob",
                &[&1u32.to_be_bytes(), &public("bob_signed_prekey")],
            ),
            "bob_signed_prekey_signature",
        ),
    ];
    for (signer, message, name) in checks {
        let verified = signer.public_key().verify(&message, &v.bytes(name));
        assert_eq!(verified, Ok(()), "{name}");
    }

    // KDF_RK, KDF_CK and the per-message cipher key, for both messages.
    let kdf_rk = |root: &[u8], dh_out: &[u8]| {
        let out = hkdf(root, dh_out, "securechat/ratchet/v1 root", 64);
        (out[..32].to_vec(), out[32..].to_vec())
    };
    let (root1, chain1) = kdf_rk(&shared, &dh("alice_ratchet", "bob_signed_prekey"));
    assert_eq!(
        (root1.clone(), chain1.clone()),
        (v.bytes("first_root_key"), v.bytes("first_chain_key"))
    );
    let (root2, chain2) = kdf_rk(&root1, &dh("bob_ratchet", "alice_ratchet"));
    assert_eq!(
        (root2, chain2.clone()),
        (v.bytes("second_root_key"), v.bytes("second_chain_key"))
    );
    let messages = [
        ("first", chain1, "alice_ratchet", "first_text"),
        ("second", chain2, "bob_ratchet", "second_text"),
    ];
    for (prefix, chain, ratchet, text) in messages {
        let name = |suffix: &str| format!("{prefix}_{suffix}");
        let message_key = hmac_sha256(&chain, &[1]);
        assert_eq!(message_key, v.bytes(&name("message_key")));
        let header = [
            &public(ratchet)[..],
            &0u32.to_be_bytes(),
            &0u32.to_be_bytes(),
        ]
        .concat();
        assert_eq!(header, v.bytes(&name("header")));
        let okm = hkdf(&[0; 32], &message_key, "securechat/ratchet/v1 message", 44);
        assert_eq!(okm[..32], v.bytes(&name("cipher_key")));
        assert_eq!(okm[32..], v.bytes(&name("nonce")));
        let aad = [field(&ad), field(&header)].concat();
        assert_eq!(aad, v.bytes(&name("aad")));
        let sealed = chacha_seal(&okm[..32], &okm[32..], &aad, v.text(text).as_bytes());
        assert_eq!(sealed, v.bytes(&name("ciphertext")), "{prefix}");
    }
}

/// The `name = value` lines of the code blocks in `report/protocol.md` §11.11.1 and §11.11.2,
/// continuation lines joined to their value, one map per subsection.
fn printed_vectors() -> Vec<HashMap<String, String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("report/protocol.md");
    let text = fs::read_to_string(path).expect("protocol.md");
    let section = text
        .split("\n### 11.11 ")
        .nth(1)
        .and_then(|rest| rest.split("\n## 12.").next())
        .expect("protocol.md has §11.11");
    section
        .split("\n#### ")
        .skip(1)
        .map(|subsection| {
            let mut values = HashMap::new();
            let mut last: Option<String> = None;
            // Vector blocks open with a `#` comment; other blocks (formulas) are skipped.
            let blocks = subsection
                .split("```")
                .skip(1)
                .step_by(2)
                .filter(|block| block.trim_start().starts_with('#'));
            for line in blocks.flat_map(str::lines) {
                if let Some((name, value)) = line.split_once(" = ") {
                    if !name.contains(' ') {
                        values.insert(name.to_owned(), value.to_owned());
                        last = Some(name.to_owned());
                        continue;
                    }
                }
                match (&last, line.starts_with(' ')) {
                    (Some(name), true) => {
                        if let Some(value) = values.get_mut(name) {
                            value.push_str(line.trim_start());
                        }
                    }
                    _ => last = None,
                }
            }
            values
        })
        .collect()
}

#[test]
fn protocol_md_prints_exactly_the_vector_files() {
    let printed = printed_vectors();
    assert_eq!(printed.len(), 2, "§11.11.1 and §11.11.2");
    for (file, shown) in ["handshake.txt", "ratchet.txt"].into_iter().zip(&printed) {
        let v = Vectors::load(file);
        assert_eq!(shown.len(), v.values.len(), "{file}: number of values");
        for (name, value) in &v.values {
            assert_eq!(shown.get(name), Some(value), "{file}: {name}");
        }
    }
}
