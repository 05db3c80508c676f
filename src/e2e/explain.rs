//! The classroom narration of a key exchange, for `/dh` and `--explain`.
//!
//! `handshake.rs` runs the protocol; after each step it hands this module a [`Step`]: the
//! *public* facts of what that step did (which values were sent and received, whose signature
//! verified with which key, the secret fingerprint). [`Explanation`] turns them into the lines a
//! student reads, and keeps a one-screen summary. It never receives an exponent, a shared secret
//! or a key, so it cannot print one: the facts are the only way in.

use std::fmt;

use super::kdf::{INITIATOR_TO_RESPONDER_LABEL, RESPONDER_TO_INITIATOR_LABEL};
use super::{Group, IdentityPublicKey, PublicValue, SessionId, GENERATOR};

/// What one step of the exchange did, in public facts only.
pub(super) enum Step<'a> {
    /// Step 1 (initiator): picked `x`, computed `Y_i`, is sending DH-INIT.
    Started {
        /// Whom the DH-INIT goes to.
        peer: &'a str,
        /// The session id chosen.
        session_id: SessionId,
        /// `Y_i`.
        y_i: &'a PublicValue,
    },
    /// Step 2 (responder): checked `Y_i`, computed `Y_r` and the keys, signed, is sending
    /// DH-REPLY and now waits for the DH-CONFIRM.
    Answered {
        /// Who sent the DH-INIT.
        peer: &'a str,
        /// `Y_i` as received and validated.
        y_i: &'a PublicValue,
        /// `Y_r`, my value.
        y_r: &'a PublicValue,
        /// The secret fingerprint of the derived keys (public by design).
        secret_fingerprint: &'a str,
        /// My identity key, which signed the responder transcript.
        my_key: IdentityPublicKey,
        /// The peer's pinned key, which must sign the DH-CONFIRM.
        peer_key: IdentityPublicKey,
    },
    /// Step 3 (initiator): verified the DH-REPLY, checked `Y_r`, derived the keys, is sending
    /// DH-CONFIRM.
    Finished {
        /// Who sent the DH-REPLY.
        peer: &'a str,
        /// `Y_r` as received and validated.
        y_r: &'a PublicValue,
        /// The pinned key the responder's signature verified with.
        peer_key: IdentityPublicKey,
        /// The secret fingerprint of the derived keys.
        secret_fingerprint: &'a str,
    },
    /// Step 4 (responder): verified the DH-CONFIRM; the session is open.
    Confirmed {
        /// Who sent the DH-CONFIRM.
        peer: &'a str,
        /// The pinned key the initiator's signature verified with.
        peer_key: IdentityPublicKey,
    },
}

/// The classroom view of an exchange: what was sent, what was checked, what was derived. Holds
/// only public facts: abbreviated public values, fingerprints and labels — never an exponent,
/// the shared secret or a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The group's RFC 7919 name.
    pub group: &'static str,
    /// My public value, abbreviated ([`PublicValue::summary`]).
    pub my_public_value: String,
    /// The peer's public value, abbreviated; `None` until it has arrived.
    pub peer_public_value: Option<String>,
    /// Each signature check that passed: whose signature, on what, with which key fingerprint.
    pub signatures_checked: Vec<String>,
    /// The secret fingerprint both users can compare; `None` until the keys exist.
    pub secret_fingerprint: Option<String>,
    /// HKDF labels of the derived keys (labels only).
    pub derived_keys: Vec<&'static str>,
    /// The exchange told step by step: one entry per step, a few lines each, oldest first.
    pub steps: Vec<Vec<String>>,
}

impl Explanation {
    /// An explanation for an exchange in which my public value is `mine`; no step told yet.
    pub(super) fn new(mine: &PublicValue) -> Explanation {
        Explanation {
            group: mine.group().name(),
            my_public_value: mine.summary(),
            peer_public_value: None,
            signatures_checked: Vec::new(),
            secret_fingerprint: None,
            derived_keys: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// The lines of the most recent step: print them as the exchange happens.
    pub fn latest_step(&self) -> &[String] {
        self.steps.last().map_or(&[], Vec::as_slice)
    }

    /// Tells `step`: updates the summary and adds the step's lines.
    pub(super) fn record(&mut self, step: Step<'_>) {
        let lines = match step {
            Step::Started {
                peer,
                session_id,
                y_i,
            } => {
                let group = y_i.group();
                vec![
                    format!(
                        "Group {}: RFC 7919 safe prime p of {} bits, generator g = {GENERATOR}, \
                         about {}-bit security.",
                        group.name(),
                        group.byte_len() * 8,
                        group.security_bits()
                    ),
                    format!(
                        "Picked a random secret exponent x ({} bits); it never leaves this program.",
                        group.exponent_bits()
                    ),
                    format!(
                        "Computed my public value Y_i = g^x mod p = {}.",
                        y_i.summary()
                    ),
                    format!("Sending DH-INIT to {peer} (session {session_id})."),
                ]
            }
            Step::Answered {
                peer,
                y_i,
                y_r,
                secret_fingerprint,
                my_key,
                peer_key,
            } => {
                let group: Group = y_i.group();
                self.peer_public_value = Some(y_i.summary());
                self.note_keys(secret_fingerprint);
                vec![
                    format!(
                        "Received DH-INIT from {peer}: group {}, Y_i = {}.",
                        group.name(),
                        y_i.summary()
                    ),
                    "Checked 1 < Y_i < p-1 and that Y_i is in the prime-order subgroup (the \
                     Jacobi symbol (Y_i/p) = 1, the same test as Y_i^q mod p = 1 for a safe prime)."
                        .to_owned(),
                    format!(
                        "Picked a random secret exponent y ({} bits) and computed Y_r = g^y mod \
                         p = {}.",
                        group.exponent_bits(),
                        y_r.summary()
                    ),
                    "Computed the shared secret Z = Y_i^y mod p, then wiped y.".to_owned(),
                    format!(
                        "Derived two message keys with HKDF-SHA256. Secret fingerprint: \
                         {secret_fingerprint}."
                    ),
                    format!(
                        "Signed the responder transcript (group, both names, session, Y_i, Y_r) \
                         with my identity key {}; sending DH-REPLY.",
                        my_key.fingerprint()
                    ),
                    format!(
                        "Waiting for {peer}'s DH-CONFIRM, signed by {}, before sending or \
                         reading messages.",
                        peer_key.fingerprint()
                    ),
                ]
            }
            Step::Finished {
                peer,
                y_r,
                peer_key,
                secret_fingerprint,
            } => {
                let checked = format!(
                    "{peer}'s signature on the responder transcript, with their identity key {}",
                    peer_key.fingerprint()
                );
                self.peer_public_value = Some(y_r.summary());
                self.signatures_checked.push(checked.clone());
                self.note_keys(secret_fingerprint);
                vec![
                    format!("Received DH-REPLY: Y_r = {}.", y_r.summary()),
                    format!(
                        "Verified {checked}: Y_r comes from whoever holds the identity key \
                         this client holds for {peer} (how far that key is trusted is said below)."
                    ),
                    "Checked 1 < Y_r < p-1 and that Y_r is in the prime-order subgroup (the \
                     Jacobi symbol (Y_r/p) = 1, the same test as Y_r^q mod p = 1 for a safe prime)."
                        .to_owned(),
                    format!(
                        "Computed the shared secret Z = Y_r^x mod p — the same number {peer} \
                         computed, though it never crossed the network. Then wiped x."
                    ),
                    format!(
                        "Derived two message keys with HKDF-SHA256 \
                         ({INITIATOR_TO_RESPONDER_LABEL}; {RESPONDER_TO_INITIATOR_LABEL}). \
                         Secret fingerprint: {secret_fingerprint} — compare it with {peer}."
                    ),
                    format!(
                        "Signed the initiator transcript; sending DH-CONFIRM. Messages to {peer} \
                         are now end-to-end encrypted."
                    ),
                ]
            }
            Step::Confirmed { peer, peer_key } => {
                let checked = format!(
                    "{peer}'s signature on the initiator transcript, with their identity key {}",
                    peer_key.fingerprint()
                );
                self.signatures_checked.push(checked.clone());
                vec![
                    format!(
                        "Verified {checked}: {peer} saw the same Y_i and Y_r, so nobody sat in \
                         between."
                    ),
                    format!("Messages with {peer} are now end-to-end encrypted."),
                ]
            }
        };
        self.steps.push(lines);
    }

    fn note_keys(&mut self, secret_fingerprint: &str) {
        self.secret_fingerprint = Some(secret_fingerprint.to_owned());
        self.derived_keys = vec![INITIATOR_TO_RESPONDER_LABEL, RESPONDER_TO_INITIATOR_LABEL];
    }
}

/// The summary for `/dh`, one fact per line.
impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not_yet = "(not yet)";
        writeln!(f, "Group:              {} (RFC 7919)", self.group)?;
        writeln!(f, "My public value:    {}", self.my_public_value)?;
        let peer_value = self.peer_public_value.as_deref().unwrap_or(not_yet);
        writeln!(f, "Peer public value:  {peer_value}")?;
        if self.signatures_checked.is_empty() {
            writeln!(f, "Signatures checked: {not_yet}")?;
        }
        for checked in &self.signatures_checked {
            writeln!(f, "Signature checked:  {checked}")?;
        }
        let fingerprint = self.secret_fingerprint.as_deref().unwrap_or(not_yet);
        writeln!(f, "Secret fingerprint: {fingerprint}")?;
        let keys = if self.derived_keys.is_empty() {
            not_yet.to_owned()
        } else {
            self.derived_keys.join("; ")
        };
        write!(f, "Derived keys:       {keys}")
    }
}

#[cfg(test)]
pub(super) mod tests {
    use aws_lc_rs::digest::{digest, SHA256};
    use aws_lc_rs::hmac;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;
    use num_bigint::BigUint;

    use super::super::{
        encode_fields, fill_random, hex_groups, EphemeralSecret, IdentityKey, Initiator, Responder,
    };
    use super::*;

    /// HMAC-SHA256(key, data): HKDF's extract, and its expand for one 32-byte block.
    pub(in crate::e2e) fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
            .as_ref()
            .to_vec()
    }

    /// A random exponent of the form `EphemeralSecret::generate` makes.
    pub(in crate::e2e) fn random_exponent(group: Group) -> Vec<u8> {
        let mut exponent = vec![0u8; group.exponent_bits() / 8];
        fill_random(&mut exponent).expect("rng");
        exponent[0] |= 0x80;
        exponent
    }

    /// Every way a secret could be written into text: decimal, hex in both cases, the hex
    /// groups used for fingerprints, base64.
    pub(in crate::e2e) fn written_forms(secret: &[u8]) -> Vec<String> {
        let hex = secret
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        vec![
            BigUint::from_bytes_be(secret).to_str_radix(10),
            hex.clone(),
            hex.to_uppercase(),
            hex_groups(secret),
            BASE64.encode(secret),
        ]
    }

    /// Whether `text` holds any 16-character piece of `form` (pieces start every 8 characters,
    /// so any leaked run of 24 characters or more is caught).
    pub(in crate::e2e) fn leaks(text: &str, form: &str) -> bool {
        let chars: Vec<char> = form.chars().collect();
        (0..chars.len().saturating_sub(16))
            .step_by(8)
            .any(|start| text.contains(&chars[start..start + 16].iter().collect::<String>()))
    }

    #[test]
    fn the_dh_text_never_contains_an_exponent_the_shared_secret_or_a_key() {
        let alice = IdentityKey::generate().expect("identity");
        let bob = IdentityKey::generate().expect("identity");
        for group in Group::ALL {
            // A real exchange, with exponents this test knows.
            let (x, y) = (random_exponent(group), random_exponent(group));
            let session_id = SessionId::random().expect("rng");
            let x_pair = EphemeralSecret::from_exponent(group, &x).expect("x");
            let (initiator, init) = Initiator::start_fixed("alice", "bob", session_id, x_pair);
            let y_pair = EphemeralSecret::from_exponent(group, &y).expect("y");
            let (responder, reply) =
                Responder::accept_fixed("bob", "alice", &init, &bob, &alice.public_key(), y_pair)
                    .expect("accept");
            let (at_alice, confirm) = initiator
                .finish(&reply, &alice, &bob.public_key())
                .expect("finish");
            let at_bob = responder.confirm(&confirm).expect("confirm");

            // The secrets, recomputed here from the spec (report/protocol.md §11.7).
            let p = group.prime();
            let y_i = BigUint::from_bytes_be(&init.y_i);
            let z = y_i.modpow(&BigUint::from_bytes_be(&y), p).to_bytes_be();
            let z = [vec![0; group.byte_len() - z.len()], z].concat();
            let transcript = encode_fields(&[
                b"securechat/dh/v1",
                b"key-schedule",
                group.name().as_bytes(),
                b"alice",
                b"bob",
                &session_id.0,
                &init.y_i,
                &reply.y_r,
            ]);
            let prk = hmac_sha256(digest(&SHA256, &transcript).as_ref(), &z);
            let expand = |label: &str| hmac_sha256(&prk, &[label.as_bytes(), &[1]].concat());
            // The recomputation is right: it gives the fingerprint both screens show.
            let fingerprint = hex_groups(&expand("securechat/v1 secret fingerprint")[..8]);
            let shown = at_alice.explanation();
            assert_eq!(shown.secret_fingerprint.as_deref(), Some(&*fingerprint));
            let secrets = [
                ("x", x.clone()),
                ("y", y.clone()),
                ("Z", z),
                ("PRK", prk.clone()),
                ("K_ir", expand(INITIATOR_TO_RESPONDER_LABEL)),
                ("K_ri", expand(RESPONDER_TO_INITIATOR_LABEL)),
            ];

            // Everything /dh and --explain print, on both sides, and every Debug form.
            let mut text = String::new();
            for explanation in [at_alice.explanation(), at_bob.explanation()] {
                for line in explanation.steps.iter().flatten() {
                    text.push_str(line);
                    text.push('\n');
                }
                text.push_str(&format!("{explanation}\n{explanation:?}\n"));
            }
            text.push_str(&format!("{at_alice:?}\n{at_bob:?}\n"));
            assert!(text.contains(&fingerprint) && text.contains("Y_r"));
            for (name, secret) in &secrets {
                for form in written_forms(secret) {
                    assert!(
                        !leaks(&text, &form),
                        "{name} ({}) appears in the /dh text",
                        group.name()
                    );
                }
            }
        }
    }

    #[test]
    fn the_leak_search_finds_a_secret_written_in_any_form() {
        let secret = [0x9c; 40];
        for form in written_forms(&secret) {
            let text = format!("the key is {} — oops", &form[5..35]);
            assert!(leaks(&text, &form), "{form}");
            assert!(!leaks("nothing secret here", &form));
        }
    }
}
