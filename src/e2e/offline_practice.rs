//! A practice offline session for the classroom (`/dh-offline`): the prekey agreement (X3DH),
//! the first message and a reply with one Diffie–Hellman ratchet step, between two throwaway
//! users, with every value written out.
//!
//! The session is made by the library's own functions (`initiate_using`, `respond_using`,
//! `Ratchet::encrypt` and `decrypt_using`, given the throwaway keys); the narration names each
//! intermediate value with the same primitives those functions use (`agree`, `agreement_key`,
//! `kdf_rk`, `kdf_ck`), and proves it named the right ones: the message keys it shows must open
//! the messages the library sealed, or no text is produced at all.
//!
//! Like `/dh-practice` (`practice.rs`), and unlike `/dh USER`, this shows secrets: they belong
//! to users made up here, protect nothing and are dropped once the text is built. It takes
//! only a group, so no key of a real session can reach it.

use num_bigint::BigUint;

use super::dh::abbreviated;
use super::practice::hex;
use super::prekeys::{agreement_key, associated_data, AGREEMENT_INFO};
use super::ratchet::{kdf_ck, kdf_rk, open, ROOT_INFO};
use super::{
    initiate_using, respond_using, E2eError, EphemeralSecret, Group, IdentityDhKey, IdentityKey,
    OneTimePrekey, Party, PrekeyBundle, PublicValue, SignedPrekey, GENERATOR,
};

/// The first message of the practice session.
const FIRST_TEXT: &str = "hi bob, I wrote while you were away";
/// Bob's reply, the message that makes the Diffie–Hellman ratchet turn.
const REPLY_TEXT: &str = "hi alice, back now";
/// The id of Bob's practice signed prekey.
const SIGNED_PREKEY_ID: u32 = 1;
/// The id of Bob's practice one-time prekey.
const ONE_TIME_PREKEY_ID: u32 = 1;

/// A practice offline session, told twice from the same values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflinePractice {
    /// For the screen: each step in words, big numbers abbreviated.
    pub narration: Vec<String>,
    /// For `python3`: the same steps as comments, every value in full, and an `assert` for
    /// every equation (the DH values, `SK`, `KDF_RK`, `KDF_CK`).
    pub script: String,
}

/// Builds both tellings at once, so they cannot drift apart.
struct Telling {
    /// Lines for the screen.
    narration: Vec<String>,
    /// The Python script so far.
    script: String,
}

impl Telling {
    /// A step in words: a narration line and a script comment.
    fn say(&mut self, text: &str) {
        self.narration.push(text.to_owned());
        self.script.push_str(&format!("\n# {text}\n"));
    }

    /// A named value: abbreviated on screen, in full in the script.
    fn value(&mut self, name: &str, bytes: &[u8], meaning: &str) {
        let number = BigUint::from_bytes_be(bytes);
        self.narration
            .push(format!("  {name} = {}  ({meaning})", abbreviated(&number)));
        self.script
            .push_str(&format!("{name} = {}  # {meaning}\n", hex(bytes)));
    }

    /// A throwaway key pair: its exponent `secret` and `public = g^secret mod p`, both shown,
    /// and the script's check that one is `g` to the other.
    fn pair(&mut self, names: (&str, &str), pair: &Pair, meanings: (&str, &str)) {
        let (secret, public) = names;
        self.value(secret, pair.secret.exponent_bytes(), meanings.0);
        self.value(public, &pair.public.to_bytes(), meanings.1);
        self.check(&format!("assert pow(g, {secret}, p) == {public}"));
    }

    /// A line of Python only (an `assert`).
    fn check(&mut self, python: &str) {
        self.script.push_str(python);
        self.script.push('\n');
    }
}

/// A throwaway key pair, kept so that its exponent can be shown and a copy handed to the
/// library.
struct Pair {
    /// The exponent.
    secret: EphemeralSecret,
    /// `g^secret mod p`.
    public: PublicValue,
}

impl Pair {
    fn generate(group: Group) -> Result<Pair, E2eError> {
        let (secret, public) = EphemeralSecret::generate(group)?;
        Ok(Pair { secret, public })
    }

    /// A copy for the library, which consumes its keys.
    fn copy(&self) -> (EphemeralSecret, PublicValue) {
        (self.secret.duplicate(), self.public.clone())
    }
}

/// A practice offline session in `group` between a throwaway alice and bob: bob's bundle,
/// alice's X3DH agreement and first message, bob's answer and reply with one Diffie–Hellman
/// ratchet step, alice opening the reply. Nothing in it is used for any session.
pub fn practice_offline_session(group: Group) -> Result<OfflinePractice, E2eError> {
    let alice = IdentityKey::generate()?;
    let bob = IdentityKey::generate()?;
    let at_alice = Party {
        name: "alice",
        identity: alice.public_key(),
    };
    let at_bob = Party {
        name: "bob",
        identity: bob.public_key(),
    };
    let pair = || Pair::generate(group);
    let (ik_a, ik_b, spk_b, opk_b) = (pair()?, pair()?, pair()?, pair()?);
    let (ek_a, ratchet_a, ratchet_b) = (pair()?, pair()?, pair()?);

    // The session itself, made by the library with these keys.
    let alice_dh = IdentityDhKey::from_pair(&alice, "alice", ik_a.copy())?;
    let bob_dh = IdentityDhKey::from_pair(&bob, "bob", ik_b.copy())?;
    let signed = SignedPrekey::from_pair(&bob, "bob", SIGNED_PREKEY_ID, spk_b.copy())?;
    let one_time = OneTimePrekey::from_pair(ONE_TIME_PREKEY_ID, opk_b.copy());
    let bundle = PrekeyBundle::new(&bob_dh, &signed, Some(&one_time));
    let mut alice_keys = [ek_a.copy(), ratchet_a.copy()].into_iter();
    let (mut alice_session, first) = initiate_using(
        &at_alice,
        &alice_dh,
        &at_bob,
        &bundle,
        FIRST_TEXT,
        &mut |_| alice_keys.next().ok_or_else(|| disagree("alice's keys")),
    )?;
    let mut bob_keys = [ratchet_b.copy()].into_iter();
    let (mut bob_session, opened_first) = respond_using(
        &at_bob,
        &bob_dh,
        &signed,
        Some(&one_time),
        &at_alice,
        &first,
        &mut |_| bob_keys.next().ok_or_else(|| disagree("bob's keys")),
    )?;
    let reply = bob_session.encrypt(REPLY_TEXT)?;
    let opened_reply = alice_session.decrypt(&reply)?;

    // The values in between, named with the library's own primitives. Each DH value from
    // alice's key pair and bob's, computed on both sides.
    let dh = [
        (&ik_a, &spk_b),
        (&ek_a, &ik_b),
        (&ek_a, &spk_b),
        (&ek_a, &opk_b),
    ]
    .map(|(alices, bobs)| {
        let at_alice = alices.secret.agree(&bobs.public)?;
        let at_bob = bobs.secret.agree(&alices.public)?;
        if at_alice.as_bytes() == at_bob.as_bytes() {
            Ok(at_alice)
        } else {
            Err(disagree("a DH value"))
        }
    });
    let [dh1, dh2, dh3, dh4] = dh;
    let dh = [dh1?, dh2?, dh3?, dh4?];
    let sk = agreement_key(group, &dh)?;
    let ad = associated_data(
        &at_alice,
        &ik_a.public.to_bytes(),
        &at_bob,
        &ik_b.public.to_bytes(),
    );
    let first_dh = ratchet_a.secret.agree(&spk_b.public)?;
    let (root_1, chain_a) = kdf_rk(&sk, &first_dh)?;
    let (_, message_key_a) = kdf_ck(&chain_a);
    let reply_dh = ratchet_b.secret.agree(&ratchet_a.public)?;
    let (root_2, chain_b) = kdf_rk(&root_1, &reply_dh)?;
    let (_, message_key_b) = kdf_ck(&chain_b);
    let shown_keys_open_the_messages = opened_first == FIRST_TEXT
        && opened_reply == REPLY_TEXT
        && first.message.header.ratchet_key == ratchet_a.public.to_bytes()
        && reply.header.ratchet_key == ratchet_b.public.to_bytes()
        && open(&message_key_a, &ad, &first.message)? == FIRST_TEXT
        && open(&message_key_b, &ad, &reply)? == REPLY_TEXT;
    if !shown_keys_open_the_messages {
        return Err(disagree("the message keys"));
    }

    let len = group.byte_len();
    let info = format!("{AGREEMENT_INFO}{}", group.name());
    let root_info = String::from_utf8_lossy(ROOT_INFO);
    let mut t = Telling {
        narration: Vec::new(),
        script: format!(
            "# A practice offline session (X3DH + Double Ratchet) in {name} ({bits}-bit safe prime p, g = {GENERATOR}).\n\
             # Throwaway users alice and bob: these values protect nothing and were used for nothing else.\n\
             # Run this file with python3: every assert must pass.\n\
             import hashlib, hmac\n\
             p = 0x{p}\n\
             g = {GENERATOR}\n\
             n = {len}  # bytes in a value of this group\n\
             def b(x, size=n): return x.to_bytes(size, 'big')\n\
             def h(key, data): return hmac.new(key, data, hashlib.sha256).digest()\n\
             def hkdf(salt, ikm, info, length):  # RFC 5869 with SHA-256\n\
             \x20   prk, block, out, i = h(salt, ikm), b'', b'', 1\n\
             \x20   while len(out) < length:\n\
             \x20       block = h(prk, block + info + bytes([i])); out += block; i += 1\n\
             \x20   return out[:length]\n",
            name = group.name(),
            bits = group.prime().bits(),
            p = group.prime().to_str_radix(16),
        ),
    };
    t.say(&format!(
        "A demonstration in {}: two throwaway users, alice and bob. Its secrets belong to no \
         session (the full values are in the script).",
        group.name()
    ));
    t.say(
        "1. bob published a prekey bundle: IK_B (identity DH key) and SPK_B (signed prekey), \
         each signed with his Ed25519 key, and one one-time prekey OPK_B.",
    );
    t.pair(
        ("ik_b", "IK_B"),
        &ik_b,
        ("bob's identity DH secret", "IK_B = g^ik_b mod p"),
    );
    t.pair(
        ("spk_b", "SPK_B"),
        &spk_b,
        ("bob's signed prekey secret", "SPK_B = g^spk_b mod p"),
    );
    t.pair(
        ("opk_b", "OPK_B"),
        &opk_b,
        ("bob's one-time prekey secret", "OPK_B = g^opk_b mod p"),
    );
    t.say(&format!(
        "2. alice fetched the bundle and checked both signatures with bob's Ed25519 key {} \
         (in a real session, the key her client pinned for him), and every value (1 < Y < p-1, in the order-q subgroup). Had the server no OPK_B left, \
         the agreement would use DH1..DH3 only.",
        bob.public_key().fingerprint()
    ));
    t.pair(
        ("ik_a", "IK_A"),
        &ik_a,
        ("alice's identity DH secret", "IK_A = g^ik_a mod p"),
    );
    t.pair(
        ("ek_a", "EK_A"),
        &ek_a,
        (
            "alice's ephemeral secret, for this session only",
            "EK_A = g^ek_a mod p, sent in the first message",
        ),
    );
    t.say(
        "3. Four Diffie-Hellman values; alice computes each with her secret, bob with his, \
         and both get the same numbers.",
    );
    let formulas = [
        (
            "DH1",
            "DH(IK_A, SPK_B): authenticates alice",
            "SPK_B",
            "ik_a",
            "IK_A",
            "spk_b",
        ),
        (
            "DH2",
            "DH(EK_A, IK_B): authenticates bob",
            "IK_B",
            "ek_a",
            "EK_A",
            "ik_b",
        ),
        (
            "DH3",
            "DH(EK_A, SPK_B): forward secrecy",
            "SPK_B",
            "ek_a",
            "EK_A",
            "spk_b",
        ),
        (
            "DH4",
            "DH(EK_A, OPK_B): forward secrecy even if SPK_B is stolen",
            "OPK_B",
            "ek_a",
            "EK_A",
            "opk_b",
        ),
    ];
    for ((name, meaning, theirs, mine, alices, bobs), value) in formulas.iter().zip(&dh) {
        t.value(name, value.as_bytes(), meaning);
        t.check(&format!(
            "assert {name} == pow({theirs}, {mine}, p) == pow({alices}, {bobs}, p)"
        ));
    }
    t.say(&format!(
        "4. SK = HKDF-SHA256(salt = 32 zero bytes, DH1 || DH2 || DH3 || DH4, info = \"{info}\"): \
         the shared key both derive, though no DH value crossed the network."
    ));
    t.value("SK", &sk.0, "the X3DH shared key");
    t.check(&format!(
        "assert b(SK, 32) == hkdf(bytes(32), b(DH1) + b(DH2) + b(DH3) + b(DH4), b'{info}', 32)"
    ));
    t.say(&format!(
        "5. alice's first ratchet key pair, then KDF_RK(SK, DH(ratchet_a, SPK_B)) = HKDF(salt = \
         SK, info = \"{root_info}\") gives the root key RK1 and her sending chain key CK_A; \
         KDF_CK gives the first message key MK_A0 = HMAC(CK_A, 0x01)."
    ));
    t.pair(
        ("ratchet_a", "Y_A"),
        &ratchet_a,
        (
            "alice's ratchet secret",
            "Y_A = g^ratchet_a mod p, in every header she sends",
        ),
    );
    t.value("RK1", &root_1.0, "root key after the first step");
    t.value("CK_A", &chain_a.0, "alice's sending chain key");
    t.value("MK_A0", &message_key_a.0, "the key of message 0");
    t.check(&format!(
        "out = hkdf(b(SK, 32), b(pow(SPK_B, ratchet_a, p)), b'{root_info}', 64)\n\
         assert out == hkdf(b(SK, 32), b(pow(Y_A, spk_b, p)), b'{root_info}', 64)  # bob's side\n\
         assert (b(RK1, 32), b(CK_A, 32)) == (out[:32], out[32:])\n\
         assert b(MK_A0, 32) == h(b(CK_A, 32), bytes([1]))"
    ));
    t.say(&format!(
        "6. The first message (header: Y_A, PN = 0, N = 0; {} bytes of ciphertext) went to the \
         server with IK_A, EK_A and the prekey ids. bob recomputed DH1..DH4 and SK, and MK_A0 \
         opened it: \"{FIRST_TEXT}\". He then deletes opk_b.",
        first.message.ciphertext.len()
    ));
    t.say(
        "7. bob replies: a Diffie-Hellman ratchet step. A fresh ratchet key pair, and \
         KDF_RK(RK1, DH(ratchet_b, Y_A)) gives the new root key RK2 and his sending chain CK_B.",
    );
    t.pair(
        ("ratchet_b", "Y_B"),
        &ratchet_b,
        (
            "bob's fresh ratchet secret",
            "Y_B = g^ratchet_b mod p, in his reply's header",
        ),
    );
    t.value(
        "RK2",
        &root_2.0,
        "root key after the ratchet step: RK1 is gone",
    );
    t.value("CK_B", &chain_b.0, "bob's sending chain key");
    t.value("MK_B0", &message_key_b.0, "the key of his reply");
    t.check(&format!(
        "out = hkdf(b(RK1, 32), b(pow(Y_A, ratchet_b, p)), b'{root_info}', 64)\n\
         assert out == hkdf(b(RK1, 32), b(pow(Y_B, ratchet_a, p)), b'{root_info}', 64)  # alice's side\n\
         assert (b(RK2, 32), b(CK_B, 32)) == (out[:32], out[32:]) and RK2 != RK1\n\
         assert b(MK_B0, 32) == h(b(CK_B, 32), bytes([1]))"
    ));
    t.say(&format!(
        "8. alice saw the new Y_B, made the same step (DH(ratchet_a, Y_B) = DH(ratchet_b, Y_A)), \
         and MK_B0 opened the reply: \"{REPLY_TEXT}\". Her next message will turn the ratchet \
         again with a fresh key of her own: a stolen state soon decrypts nothing new."
    ));
    t.check("print('all checks passed: DH1..DH4, SK, KDF_RK, KDF_CK and one ratchet step')");
    Ok(OfflinePractice {
        narration: t.narration,
        script: t.script,
    })
}

/// The narration and the library did not agree: a bug, worded as one.
fn disagree(what: &str) -> E2eError {
    E2eError::Malformed(format!("the practice offline session disagrees on {what}"))
}

#[cfg(test)]
mod tests {
    use super::super::explain::tests::{hmac_sha256, leaks, random_exponent, written_forms};
    use super::super::practice::tests::{passes_in_python, value};
    use super::super::{initiate_using, respond_using};
    use super::*;

    const GROUP: Group = Group::Ffdhe2048;

    /// HKDF-SHA256 (RFC 5869) for up to two blocks, written from the RFC, not the library.
    fn hkdf_from_the_rfc(salt: &[u8], input: &[u8], info: &[u8], len: usize) -> Vec<u8> {
        let prk = hmac_sha256(salt, input);
        let first = hmac_sha256(&prk, &[info, &[1]].concat());
        let second = hmac_sha256(&prk, &[&first[..], info, &[2]].concat());
        [first, second].concat()[..len].to_vec()
    }

    /// `n` as exactly `len` big-endian bytes.
    fn padded(n: &BigUint, len: usize) -> Vec<u8> {
        let digits = n.to_bytes_be();
        [vec![0; len - digits.len()], digits].concat()
    }

    #[test]
    fn the_walk_through_names_every_step_of_x3dh_and_the_ratchet() {
        let practice = practice_offline_session(GROUP).expect("practice");
        let narration = practice.narration.join("\n");
        for step in [
            "prekey bundle",
            "IK_B",
            "SPK_B",
            "OPK_B",
            "checked both signatures",
            "EK_A",
            "DH1",
            "DH2",
            "DH3",
            "DH4",
            "SK = HKDF-SHA256",
            "KDF_RK(SK",
            "RK1",
            "MK_A0",
            "ratchet step",
            "RK2",
            "MK_B0",
            FIRST_TEXT,
            REPLY_TEXT,
            "belong to no session",
        ] {
            assert!(narration.contains(step), "{step} missing from\n{narration}");
        }
        assert!(practice.script.contains("assert b(SK, 32) == hkdf("));
    }

    #[test]
    fn the_printed_values_recompute_from_the_printed_exponents() {
        let script = practice_offline_session(GROUP).expect("practice").script;
        let v = |name: &str| value(&script, name);
        let p = GROUP.prime();
        assert_eq!(&v("p"), p);
        let g = BigUint::from(GENERATOR);
        for (secret, public) in [
            ("ik_a", "IK_A"),
            ("ik_b", "IK_B"),
            ("spk_b", "SPK_B"),
            ("opk_b", "OPK_B"),
            ("ek_a", "EK_A"),
            ("ratchet_a", "Y_A"),
            ("ratchet_b", "Y_B"),
        ] {
            assert_eq!(g.modpow(&v(secret), p), v(public), "{public}");
        }
        let dh = |public: &str, secret: &str| v(public).modpow(&v(secret), p);
        for (name, alice, bob) in [
            ("DH1", dh("SPK_B", "ik_a"), dh("IK_A", "spk_b")),
            ("DH2", dh("IK_B", "ek_a"), dh("EK_A", "ik_b")),
            ("DH3", dh("SPK_B", "ek_a"), dh("EK_A", "spk_b")),
            ("DH4", dh("OPK_B", "ek_a"), dh("EK_A", "opk_b")),
        ] {
            assert_eq!(v(name), alice, "{name} at alice");
            assert_eq!(alice, bob, "{name} at bob");
        }
        let len = GROUP.byte_len();
        let input: Vec<u8> = ["DH1", "DH2", "DH3", "DH4"]
            .iter()
            .flat_map(|name| padded(&v(name), len))
            .collect();
        let info = format!("{AGREEMENT_INFO}{}", GROUP.name());
        let sk = hkdf_from_the_rfc(&[0; 32], &input, info.as_bytes(), 32);
        assert_eq!(padded(&v("SK"), 32), sk, "DH1..DH4 combine into SK");
        for (root, dh_out, new_root, chain, message_key) in [
            ("SK", dh("SPK_B", "ratchet_a"), "RK1", "CK_A", "MK_A0"),
            ("RK1", dh("Y_A", "ratchet_b"), "RK2", "CK_B", "MK_B0"),
        ] {
            let out =
                hkdf_from_the_rfc(&padded(&v(root), 32), &padded(&dh_out, len), ROOT_INFO, 64);
            assert_eq!(padded(&v(new_root), 32), out[..32], "{new_root}");
            assert_eq!(padded(&v(chain), 32), out[32..], "{chain}");
            let mk = hmac_sha256(&out[32..], &[1]);
            assert_eq!(padded(&v(message_key), 32), mk, "{message_key}");
        }
        assert_ne!(v("RK1"), v("RK2"), "the ratchet step changed the root key");
    }

    #[test]
    fn the_script_passes_in_python() {
        passes_in_python(&practice_offline_session(GROUP).expect("practice").script);
    }

    #[test]
    fn the_walk_through_never_shows_a_secret_of_a_real_session() {
        // A real offline session, with exponents this test knows.
        let alice = IdentityKey::generate().expect("identity");
        let bob = IdentityKey::generate().expect("identity");
        let exponents: Vec<Vec<u8>> = (0..6).map(|_| random_exponent(GROUP)).collect();
        let pair = |i: usize| EphemeralSecret::from_exponent(GROUP, &exponents[i]).expect("pair");
        let at_alice = Party {
            name: "alice",
            identity: alice.public_key(),
        };
        let at_bob = Party {
            name: "bob",
            identity: bob.public_key(),
        };
        let alice_dh = IdentityDhKey::from_pair(&alice, "alice", pair(0)).expect("ik");
        let bob_dh = IdentityDhKey::from_pair(&bob, "bob", pair(1)).expect("ik");
        let signed = SignedPrekey::from_pair(&bob, "bob", 1, pair(2)).expect("spk");
        let bundle = PrekeyBundle::new(&bob_dh, &signed, None);
        let mut fresh = [pair(3), pair(4)].into_iter();
        let (_, first) = initiate_using(&at_alice, &alice_dh, &at_bob, &bundle, "hi", &mut |_| {
            fresh.next().ok_or(E2eError::CounterExhausted)
        })
        .expect("initiate");
        let mut fresh = [pair(5)].into_iter();
        let (_, text) = respond_using(
            &at_bob,
            &bob_dh,
            &signed,
            None,
            &at_alice,
            &first,
            &mut |_| fresh.next().ok_or(E2eError::CounterExhausted),
        )
        .expect("respond");
        assert_eq!(text, "hi");

        for _ in 0..3 {
            let practice = practice_offline_session(GROUP).expect("practice");
            let shown = format!(
                "{}\n{}\n{practice:?}",
                practice.narration.join("\n"),
                practice.script
            );
            for (i, exponent) in exponents.iter().enumerate() {
                for form in written_forms(exponent) {
                    assert!(
                        !leaks(&shown, &form),
                        "real exponent {i} appears in /dh-offline"
                    );
                }
            }
        }
    }
}
