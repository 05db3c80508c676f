//! Starting a conversation with someone who is offline: X3DH-style prekeys in the RFC 7919
//! groups (Signal's X3DH specification, revision 1, 2016, with finite-field Diffie–Hellman).
//!
//! # The choice: a long-term DH identity key signed by the Ed25519 identity key
//! X3DH needs long-term keys that can do Diffie–Hellman, and ours are Ed25519 signing keys.
//! Signal converts one into the other (XEdDSA); in a finite-field group there is no such
//! conversion, so each user has a second long-term key, an **identity DH key** `IK` in the group,
//! and publishes it with a signature by the Ed25519 identity key that peers already pin. With it
//! the textbook four Diffie–Hellman values apply unchanged:
//!
//! ```text
//! DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   DH4 = DH(EK_A, OPK_B)
//! SK  = HKDF-SHA256(salt = 32 zero bytes, input = DH1 ‖ DH2 ‖ DH3 [‖ DH4],
//!                   info = "securechat/x3dh/v1 " ‖ group name, 32 bytes)
//! AD  = F("securechat/x3dh/ad/v1") ‖ F(A) ‖ F(Ed25519_A) ‖ F(IK_A) ‖ F(B) ‖ F(Ed25519_B) ‖ F(IK_B)
//! ```
//!
//! (each `DHi` is the group's byte length, big-endian). DH1 and DH2 authenticate the two users
//! (only the holders of `IK_A` and `IK_B` can compute them), DH3 and DH4 give forward secrecy;
//! `OPK` (a one-time prekey, handed out once by the server) protects the very first messages
//! against a later theft of `SPK`. Without one, the agreement is made with DH1–DH3 only.
//!
//! **What this keeps: deniability.** The only signatures are on long-term public values (`IK`,
//! and the signed prekey `SPK`), never on anything about a conversation. Everything a
//! transcript contains, either party could have computed alone, so a transcript proves nothing
//! to a third party about who took part. The alternative — the initiator signing its ephemeral
//! key and the transcript — is simpler (no second long-term key) but leaves a signature that
//! proves Alice started a conversation with Bob.
//!
//! **What it costs.** A second long-term secret to keep safe (as long-lived as the Ed25519 key),
//! one more public value and signature in every bundle and every first message (384 + 64 bytes
//! in ffdhe3072), and four exponentiations per agreement instead of one. Like X3DH it gives no
//! protection against key-compromise impersonation: whoever steals `IK_B` can pretend to others
//! to be talking to Bob.
//!
//! # What the server holds and hands out
//! A [`PrekeyBundle`]: `IK_B` with its signature, the signed prekey `SPK_B` with its id and
//! signature, and, while any are left, one one-time prekey `OPK_B` with its id. The initiator
//! checks both signatures against Bob's *pinned* Ed25519 key (trust on first use, key-change
//! warnings: unchanged) and every public value (range and subgroup), then sends a
//! [`PrekeyMessage`]: `IK_A` with its signature, `EK_A`, which prekeys it used, and the first
//! ratchet message, whose AAD carries `AD`. The responder checks `IK_A`'s signature against
//! Alice's pinned key, recomputes `SK`, and only keeps the session if that first message opens.
//!
//! # What the owner keeps
//! The secrets of `IK`, of each signed prekey still in its grace period and of each one-time
//! prekey not yet used; each saves to bytes (`to_bytes`, versioned, exponent and id only: the
//! signatures are made again on loading, and Ed25519 gives the same bytes). The caller stores
//! them 0600, written atomically, and deletes a one-time prekey once [`respond`] succeeded.

use std::fmt;

use super::kdf::{hkdf, SecretKey, SECRET_KEY_LEN};
use super::ratchet::{KeySource, Ratchet, RatchetHeader, RatchetMessage};
use super::{
    encode_fields, E2eError, EphemeralSecret, Fields, Group, IdentityKey, IdentityPublicKey,
    PublicValue, SIGNATURE_LEN,
};

/// Label of the signature that binds an identity DH key to an Ed25519 identity key.
const IDENTITY_DH_LABEL: &[u8] = b"securechat/x3dh/identity-dh/v1";
/// Label of the signature on a signed prekey.
const SIGNED_PREKEY_LABEL: &[u8] = b"securechat/x3dh/signed-prekey/v1";
/// Start of the `info` of the HKDF that makes `SK`; the group name follows.
pub(super) const AGREEMENT_INFO: &str = "securechat/x3dh/v1 ";
/// First field of `AD`.
const ASSOCIATED_DATA_LABEL: &[u8] = b"securechat/x3dh/ad/v1";
/// First field of an encoded [`PrekeyBundle`].
const BUNDLE_LABEL: &[u8] = b"securechat/prekey-bundle/v1";
/// First field of an encoded [`PrekeyMessage`].
const MESSAGE_LABEL: &[u8] = b"securechat/prekey-message/v1";
/// First field of a saved prekey secret; which kind of key follows.
const SAVED_KEY_LABEL: &[u8] = b"securechat/saved-prekey/v1";
/// Kind of a saved [`IdentityDhKey`].
const IDENTITY_DH_KIND: &[u8] = b"identity-dh";
/// Kind of a saved [`SignedPrekey`].
const SIGNED_PREKEY_KIND: &[u8] = b"signed-prekey";
/// Kind of a saved [`OneTimePrekey`].
const ONE_TIME_PREKEY_KIND: &[u8] = b"one-time-prekey";

/// A Diffie–Hellman key pair that outlives one exchange (identity DH key, signed prekey,
/// one-time prekey). The exponent type is the ephemeral one's; what differs is how long the
/// owner keeps it.
struct KeyPair {
    /// The secret exponent.
    secret: EphemeralSecret,
    /// Its public value.
    public: PublicValue,
}

impl KeyPair {
    fn new((secret, public): (EphemeralSecret, PublicValue)) -> KeyPair {
        KeyPair { secret, public }
    }

    /// The saved form: `F(label) ‖ F(kind) ‖ F(group) ‖ F(u32be(id)) ‖ F(exponent)`. Secret.
    /// Signatures are not saved: Ed25519 is deterministic, so loading signs again and gets
    /// the same bytes.
    fn save(&self, kind: &[u8], id: u32) -> Vec<u8> {
        encode_fields(&[
            SAVED_KEY_LABEL,
            kind,
            self.public.group().name().as_bytes(),
            &id.to_be_bytes(),
            self.secret.exponent_bytes(),
        ])
    }

    /// Reads [`KeyPair::save`]'s form for a key of `kind`: the id and the pair.
    fn load(bytes: &[u8], kind: &[u8]) -> Result<(u32, KeyPair), E2eError> {
        let mut fields = Fields::new(bytes, "saved prekey", E2eError::State);
        if fields.next()? != SAVED_KEY_LABEL || fields.next()? != kind {
            return Err(fields.fail("another kind of key, or another version"));
        }
        let group = std::str::from_utf8(fields.next()?)
            .ok()
            .and_then(Group::from_name)
            .ok_or_else(|| fields.fail("unknown group"))?;
        let id = fields.number()?;
        let pair = EphemeralSecret::from_exponent(group, fields.next()?)
            .map_err(|_| fields.fail("not a valid exponent"))?;
        fields.finish()?;
        Ok((id, KeyPair::new(pair)))
    }

    /// A copy of the pair for a ratchet that starts from it (the responder's first ratchet
    /// key is its signed prekey).
    fn duplicate(&self) -> (EphemeralSecret, PublicValue) {
        (self.secret.duplicate(), self.public.clone())
    }
}

/// My long-term identity DH key `IK`, with the Ed25519 signature that binds it to me.
pub struct IdentityDhKey {
    /// The key pair.
    pair: KeyPair,
    /// Ed25519 signature on `F(label) ‖ F(user) ‖ F(group) ‖ F(IK)`.
    signature: [u8; SIGNATURE_LEN],
}

impl IdentityDhKey {
    /// A new identity DH key for `user` in `group`, signed with `identity`.
    pub fn generate(
        identity: &IdentityKey,
        user: &str,
        group: Group,
    ) -> Result<IdentityDhKey, E2eError> {
        IdentityDhKey::from_pair(identity, user, EphemeralSecret::generate(group)?)
    }

    /// An identity DH key from a saved or fixed exponent (see [`EphemeralSecret::from_exponent`]).
    #[doc(hidden)]
    pub fn from_pair(
        identity: &IdentityKey,
        user: &str,
        pair: (EphemeralSecret, PublicValue),
    ) -> Result<IdentityDhKey, E2eError> {
        IdentityDhKey::signed(identity, user, KeyPair::new(pair))
    }

    /// The saved form (secret: store it like the identity key).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.pair.save(IDENTITY_DH_KIND, 0)
    }

    /// Loads [`IdentityDhKey::to_bytes`]'s form, signing it again for `user` with `identity`.
    pub fn from_bytes(
        bytes: &[u8],
        identity: &IdentityKey,
        user: &str,
    ) -> Result<IdentityDhKey, E2eError> {
        let (_, pair) = KeyPair::load(bytes, IDENTITY_DH_KIND)?;
        IdentityDhKey::signed(identity, user, pair)
    }

    fn signed(
        identity: &IdentityKey,
        user: &str,
        pair: KeyPair,
    ) -> Result<IdentityDhKey, E2eError> {
        let signature = identity.sign(&identity_dh_statement(
            user,
            &pair.public.to_bytes(),
            pair.public.group(),
        ))?;
        Ok(IdentityDhKey { pair, signature })
    }
}

/// A signed prekey `SPK`: rotated by its owner (say weekly), signed with the Ed25519 key.
pub struct SignedPrekey {
    /// Names it in bundles and first messages.
    id: u32,
    /// The key pair.
    pair: KeyPair,
    /// Ed25519 signature on `F(label) ‖ F(user) ‖ F(group) ‖ F(u32be(id)) ‖ F(SPK)`.
    signature: [u8; SIGNATURE_LEN],
}

impl SignedPrekey {
    /// A new signed prekey for `user` in `group`, signed with `identity`.
    pub fn generate(
        identity: &IdentityKey,
        user: &str,
        id: u32,
        group: Group,
    ) -> Result<SignedPrekey, E2eError> {
        SignedPrekey::from_pair(identity, user, id, EphemeralSecret::generate(group)?)
    }

    /// A signed prekey from a saved or fixed exponent.
    #[doc(hidden)]
    pub fn from_pair(
        identity: &IdentityKey,
        user: &str,
        id: u32,
        pair: (EphemeralSecret, PublicValue),
    ) -> Result<SignedPrekey, E2eError> {
        SignedPrekey::signed(identity, user, id, KeyPair::new(pair))
    }

    /// The saved form (secret).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.pair.save(SIGNED_PREKEY_KIND, self.id)
    }

    /// Loads [`SignedPrekey::to_bytes`]'s form, signing it again for `user` with `identity`.
    pub fn from_bytes(
        bytes: &[u8],
        identity: &IdentityKey,
        user: &str,
    ) -> Result<SignedPrekey, E2eError> {
        let (id, pair) = KeyPair::load(bytes, SIGNED_PREKEY_KIND)?;
        SignedPrekey::signed(identity, user, id, pair)
    }

    fn signed(
        identity: &IdentityKey,
        user: &str,
        id: u32,
        pair: KeyPair,
    ) -> Result<SignedPrekey, E2eError> {
        let statement =
            signed_prekey_statement(user, id, &pair.public.to_bytes(), pair.public.group());
        let signature = identity.sign(&statement)?;
        Ok(SignedPrekey {
            id,
            pair,
            signature,
        })
    }

    /// Its id.
    pub fn id(&self) -> u32 {
        self.id
    }
}

/// A one-time prekey `OPK`: the server hands each out at most once; its owner deletes the
/// secret once a first message has used it.
pub struct OneTimePrekey {
    /// Names it in bundles and first messages.
    id: u32,
    /// The key pair.
    pair: KeyPair,
}

impl OneTimePrekey {
    /// A new one-time prekey in `group`.
    pub fn generate(id: u32, group: Group) -> Result<OneTimePrekey, E2eError> {
        Ok(OneTimePrekey::from_pair(
            id,
            EphemeralSecret::generate(group)?,
        ))
    }

    /// A one-time prekey from a saved or fixed exponent.
    #[doc(hidden)]
    pub fn from_pair(id: u32, pair: (EphemeralSecret, PublicValue)) -> OneTimePrekey {
        OneTimePrekey {
            id,
            pair: KeyPair::new(pair),
        }
    }

    /// The saved form (secret).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.pair.save(ONE_TIME_PREKEY_KIND, self.id)
    }

    /// Its public value, as published (`ADDPREKEYS`).
    pub fn public(&self) -> Vec<u8> {
        self.pair.public.to_bytes()
    }

    /// Loads [`OneTimePrekey::to_bytes`]'s form.
    pub fn from_bytes(bytes: &[u8]) -> Result<OneTimePrekey, E2eError> {
        let (id, pair) = KeyPair::load(bytes, ONE_TIME_PREKEY_KIND)?;
        Ok(OneTimePrekey { id, pair })
    }

    /// Its id.
    pub fn id(&self) -> u32 {
        self.id
    }
}

/// What the server hands to someone who wants to start a conversation with `owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrekeyBundle {
    /// The group of every value in the bundle and in the conversation.
    pub group: Group,
    /// `IK_B`, the owner's identity DH key.
    pub identity_dh: Vec<u8>,
    /// The owner's Ed25519 signature binding `IK_B` to them.
    pub identity_dh_signature: [u8; SIGNATURE_LEN],
    /// Which signed prekey this is.
    pub signed_prekey_id: u32,
    /// `SPK_B`.
    pub signed_prekey: Vec<u8>,
    /// The owner's Ed25519 signature on `SPK_B`.
    pub signed_prekey_signature: [u8; SIGNATURE_LEN],
    /// `(id, OPK_B)`, or `None` when the server has none left.
    pub one_time_prekey: Option<(u32, Vec<u8>)>,
}

impl PrekeyBundle {
    /// The bundle `owner` publishes for `signed_prekey` and, optionally, one one-time prekey.
    pub fn new(
        identity_dh: &IdentityDhKey,
        signed_prekey: &SignedPrekey,
        one_time_prekey: Option<&OneTimePrekey>,
    ) -> PrekeyBundle {
        PrekeyBundle {
            group: identity_dh.pair.public.group(),
            identity_dh: identity_dh.pair.public.to_bytes(),
            identity_dh_signature: identity_dh.signature,
            signed_prekey_id: signed_prekey.id,
            signed_prekey: signed_prekey.pair.public.to_bytes(),
            signed_prekey_signature: signed_prekey.signature,
            one_time_prekey: one_time_prekey.map(|key| (key.id, key.pair.public.to_bytes())),
        }
    }

    /// `F(label) ‖ F(group) ‖ F(IK) ‖ F(sig) ‖ F(u32be(spk id)) ‖ F(SPK) ‖ F(sig) ‖
    /// F(u32be(opk id) or empty) ‖ F(OPK or empty)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (opk_id, opk) = match &self.one_time_prekey {
            Some((id, key)) => (id.to_be_bytes().to_vec(), key.clone()),
            None => (Vec::new(), Vec::new()),
        };
        encode_fields(&[
            BUNDLE_LABEL,
            self.group.name().as_bytes(),
            &self.identity_dh,
            &self.identity_dh_signature,
            &self.signed_prekey_id.to_be_bytes(),
            &self.signed_prekey,
            &self.signed_prekey_signature,
            &opk_id,
            &opk,
        ])
    }

    /// Parses [`PrekeyBundle::to_bytes`]; values are checked when the bundle is used.
    pub fn from_bytes(bytes: &[u8]) -> Result<PrekeyBundle, E2eError> {
        let mut fields = Fields::new(bytes, "prekey bundle", E2eError::Malformed);
        let (group, identity_dh, identity_dh_signature) =
            signed_identity_field(&mut fields, BUNDLE_LABEL)?;
        let signed_prekey_id = fields.number()?;
        let signed_prekey = public_field(&mut fields, group)?;
        let signed_prekey_signature = fields.array()?;
        let opk_id = fields.next()?;
        let opk = fields.next()?;
        let one_time_prekey = match (opk_id, opk) {
            ([], []) => None,
            (id, key) => {
                let id: [u8; 4] = id
                    .try_into()
                    .map_err(|_| fields.fail("a one-time prekey id is 4 bytes"))?;
                if key.len() != group.byte_len() {
                    return Err(fields.fail("a one-time prekey has the wrong length"));
                }
                Some((u32::from_be_bytes(id), key.to_vec()))
            }
        };
        fields.finish()?;
        Ok(PrekeyBundle {
            group,
            identity_dh,
            identity_dh_signature,
            signed_prekey_id,
            signed_prekey,
            signed_prekey_signature,
            one_time_prekey,
        })
    }
}

/// The first message of a conversation, from the initiator: what the responder needs to compute
/// `SK`, then the first ratchet message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrekeyMessage {
    /// The group of the bundle used.
    pub group: Group,
    /// `IK_A`, the initiator's identity DH key.
    pub identity_dh: Vec<u8>,
    /// The initiator's Ed25519 signature binding `IK_A` to them.
    pub identity_dh_signature: [u8; SIGNATURE_LEN],
    /// `EK_A`, the initiator's ephemeral value.
    pub ephemeral: Vec<u8>,
    /// Which signed prekey of the responder was used.
    pub signed_prekey_id: u32,
    /// Which one-time prekey was used, if any.
    pub one_time_prekey_id: Option<u32>,
    /// The first ratchet message.
    pub message: RatchetMessage,
}

impl PrekeyMessage {
    /// `F(label) ‖ F(group) ‖ F(IK_A) ‖ F(sig) ‖ F(EK_A) ‖ F(u32be(spk id)) ‖
    /// F(u32be(opk id) or empty) ‖ F(ratchet header) ‖ F(ciphertext)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let opk_id = self
            .one_time_prekey_id
            .map(|id| id.to_be_bytes().to_vec())
            .unwrap_or_default();
        encode_fields(&[
            MESSAGE_LABEL,
            self.group.name().as_bytes(),
            &self.identity_dh,
            &self.identity_dh_signature,
            &self.ephemeral,
            &self.signed_prekey_id.to_be_bytes(),
            &opk_id,
            &self.message.header.to_bytes(),
            &self.message.ciphertext,
        ])
    }

    /// Parses [`PrekeyMessage::to_bytes`]; values are checked when the message is used.
    pub fn from_bytes(bytes: &[u8]) -> Result<PrekeyMessage, E2eError> {
        let mut fields = Fields::new(bytes, "first message", E2eError::Malformed);
        let (group, identity_dh, identity_dh_signature) =
            signed_identity_field(&mut fields, MESSAGE_LABEL)?;
        let ephemeral = public_field(&mut fields, group)?;
        let signed_prekey_id = fields.number()?;
        let one_time_prekey_id = match fields.next()? {
            [] => None,
            id => {
                Some(u32::from_be_bytes(id.try_into().map_err(|_| {
                    fields.fail("a one-time prekey id is 4 bytes")
                })?))
            }
        };
        let header = RatchetHeader::from_bytes(group, fields.next()?)?;
        let ciphertext = fields.next()?.to_vec();
        fields.finish()?;
        Ok(PrekeyMessage {
            group,
            identity_dh,
            identity_dh_signature,
            ephemeral,
            signed_prekey_id,
            one_time_prekey_id,
            message: RatchetMessage { header, ciphertext },
        })
    }
}

/// One side of a conversation as the agreement sees it: a name and both identity keys.
pub struct Party<'a> {
    /// The canonical user name, as both ends bind it: the full address `user@server` when
    /// the client's server announced a federation name (`Address::qualified` in
    /// `src/protocol/name.rs`; the rule is in `src/client/end_to_end.rs`).
    pub name: &'a str,
    /// The Ed25519 identity key (for the peer: the *pinned* one).
    pub identity: IdentityPublicKey,
}

/// The initiator's side: checks `bundle` (signed by `peer.identity`, the pinned key), agrees on
/// `SK`, and seals `first_text` as the first message. Returns the session and the message.
pub fn initiate(
    me: &Party<'_>,
    my_identity_dh: &IdentityDhKey,
    peer: &Party<'_>,
    bundle: &PrekeyBundle,
    first_text: &str,
) -> Result<(Ratchet, PrekeyMessage), E2eError> {
    initiate_using(
        me,
        my_identity_dh,
        peer,
        bundle,
        first_text,
        &mut EphemeralSecret::generate,
    )
}

/// [`initiate`] with `EK_A` and the first ratchet key from `fresh`: for golden vectors only.
#[doc(hidden)]
pub fn initiate_using(
    me: &Party<'_>,
    my_identity_dh: &IdentityDhKey,
    peer: &Party<'_>,
    bundle: &PrekeyBundle,
    first_text: &str,
    fresh: KeySource<'_>,
) -> Result<(Ratchet, PrekeyMessage), E2eError> {
    let group = bundle.group;
    if my_identity_dh.pair.public.group() != group {
        return Err(E2eError::Malformed(format!(
            "the bundle uses {}, but my identity DH key is in {}",
            group.name(),
            my_identity_dh.pair.public.group().name()
        )));
    }
    // Signatures first, against the pinned key: they say these values really are the peer's.
    let identity_statement = identity_dh_statement(peer.name, &bundle.identity_dh, group);
    peer.identity
        .verify(&identity_statement, &bundle.identity_dh_signature)?;
    let prekey_statement = signed_prekey_statement(
        peer.name,
        bundle.signed_prekey_id,
        &bundle.signed_prekey,
        group,
    );
    peer.identity
        .verify(&prekey_statement, &bundle.signed_prekey_signature)?;
    let peer_identity_dh = PublicValue::from_bytes(group, &bundle.identity_dh)?;
    let signed_prekey = PublicValue::from_bytes(group, &bundle.signed_prekey)?;
    let one_time_prekey = bundle
        .one_time_prekey
        .as_ref()
        .map(|(id, key)| PublicValue::from_bytes(group, key).map(|key| (*id, key)))
        .transpose()?;

    let ephemeral = KeyPair::new(fresh(group)?);
    let mut dh_outputs = vec![
        my_identity_dh.pair.secret.agree(&signed_prekey)?,
        ephemeral.secret.agree(&peer_identity_dh)?,
        ephemeral.secret.agree(&signed_prekey)?,
    ];
    if let Some((_, key)) = &one_time_prekey {
        dh_outputs.push(ephemeral.secret.agree(key)?);
    }
    let shared = agreement_key(group, &dh_outputs)?;
    let associated_data = associated_data(
        me,
        &my_identity_dh.pair.public.to_bytes(),
        peer,
        &bundle.identity_dh,
    );
    let mut ratchet = Ratchet::initiator(shared, associated_data, signed_prekey, fresh(group)?)?;
    let message = ratchet.encrypt(first_text)?;
    let first = PrekeyMessage {
        group,
        identity_dh: my_identity_dh.pair.public.to_bytes(),
        identity_dh_signature: my_identity_dh.signature,
        ephemeral: ephemeral.public.to_bytes(),
        signed_prekey_id: bundle.signed_prekey_id,
        one_time_prekey_id: one_time_prekey.map(|(id, _)| id),
        message,
    };
    Ok((ratchet, first))
}

/// The responder's side: checks `message` (its `IK_A` signed by `peer.identity`, the pinned
/// key), recomputes `SK` from my prekeys, and opens the first message. `one_time_prekey` is the
/// one the message names (the caller looks it up by id, and deletes it once this succeeds).
pub fn respond(
    me: &Party<'_>,
    my_identity_dh: &IdentityDhKey,
    signed_prekey: &SignedPrekey,
    one_time_prekey: Option<&OneTimePrekey>,
    peer: &Party<'_>,
    message: &PrekeyMessage,
) -> Result<(Ratchet, String), E2eError> {
    respond_using(
        me,
        my_identity_dh,
        signed_prekey,
        one_time_prekey,
        peer,
        message,
        &mut EphemeralSecret::generate,
    )
}

/// [`respond`] with the next ratchet key from `fresh`: for golden vectors only.
#[doc(hidden)]
pub fn respond_using(
    me: &Party<'_>,
    my_identity_dh: &IdentityDhKey,
    signed_prekey: &SignedPrekey,
    one_time_prekey: Option<&OneTimePrekey>,
    peer: &Party<'_>,
    message: &PrekeyMessage,
    fresh: KeySource<'_>,
) -> Result<(Ratchet, String), E2eError> {
    let group = message.group;
    let prekeys_match = signed_prekey.id == message.signed_prekey_id
        && one_time_prekey.map(|key| key.id) == message.one_time_prekey_id;
    if !prekeys_match {
        return Err(E2eError::UnknownPrekey);
    }
    if my_identity_dh.pair.public.group() != group || signed_prekey.pair.public.group() != group {
        return Err(E2eError::Malformed(format!(
            "the first message uses {}, which my prekeys are not in",
            group.name()
        )));
    }
    let identity_statement = identity_dh_statement(peer.name, &message.identity_dh, group);
    peer.identity
        .verify(&identity_statement, &message.identity_dh_signature)?;
    let peer_identity_dh = PublicValue::from_bytes(group, &message.identity_dh)?;
    let ephemeral = PublicValue::from_bytes(group, &message.ephemeral)?;

    let mut dh_outputs = vec![
        signed_prekey.pair.secret.agree(&peer_identity_dh)?,
        my_identity_dh.pair.secret.agree(&ephemeral)?,
        signed_prekey.pair.secret.agree(&ephemeral)?,
    ];
    if let Some(key) = one_time_prekey {
        dh_outputs.push(key.pair.secret.agree(&ephemeral)?);
    }
    let shared = agreement_key(group, &dh_outputs)?;
    let associated_data = associated_data(
        peer,
        &message.identity_dh,
        me,
        &my_identity_dh.pair.public.to_bytes(),
    );
    let mut ratchet = Ratchet::responder(shared, associated_data, signed_prekey.pair.duplicate());
    let text = ratchet.decrypt_using(&message.message, fresh)?;
    Ok((ratchet, text))
}

/// What the Ed25519 key signs to vouch for an identity DH key.
fn identity_dh_statement(user: &str, identity_dh: &[u8], group: Group) -> Vec<u8> {
    encode_fields(&[
        IDENTITY_DH_LABEL,
        user.as_bytes(),
        group.name().as_bytes(),
        identity_dh,
    ])
}

/// What the Ed25519 key signs to vouch for a signed prekey.
fn signed_prekey_statement(user: &str, id: u32, prekey: &[u8], group: Group) -> Vec<u8> {
    encode_fields(&[
        SIGNED_PREKEY_LABEL,
        user.as_bytes(),
        group.name().as_bytes(),
        &id.to_be_bytes(),
        prekey,
    ])
}

/// `SK` from the Diffie–Hellman outputs, in order (see the module docs).
pub(super) fn agreement_key(
    group: Group,
    dh_outputs: &[super::SharedSecret],
) -> Result<SecretKey, E2eError> {
    let mut input: Vec<u8> = dh_outputs
        .iter()
        .flat_map(|output| output.as_bytes().iter().copied())
        .collect();
    let info = format!("{AGREEMENT_INFO}{}", group.name());
    let mut key = [0u8; SECRET_KEY_LEN];
    let derived = hkdf(&[0u8; SECRET_KEY_LEN], &input, info.as_bytes(), &mut key);
    super::dh::wipe(&mut input);
    derived.map(|()| SecretKey(key))
}

/// `AD`, initiator first.
pub(super) fn associated_data(
    initiator: &Party<'_>,
    initiator_dh: &[u8],
    responder: &Party<'_>,
    responder_dh: &[u8],
) -> Vec<u8> {
    encode_fields(&[
        ASSOCIATED_DATA_LABEL,
        initiator.name.as_bytes(),
        initiator.identity.as_bytes(),
        initiator_dh,
        responder.name.as_bytes(),
        responder.identity.as_bytes(),
        responder_dh,
    ])
}

/// The opening shared by bundles and first messages: the format's label, the group, and an
/// identity DH key with its signature.
fn signed_identity_field(
    fields: &mut Fields<'_>,
    label: &[u8],
) -> Result<(Group, Vec<u8>, [u8; SIGNATURE_LEN]), E2eError> {
    if fields.next()? != label {
        return Err(fields.fail("another format, or another version of it"));
    }
    let group = std::str::from_utf8(fields.next()?)
        .ok()
        .and_then(Group::from_name)
        .ok_or_else(|| fields.fail("unknown group"))?;
    let identity_dh = public_field(fields, group)?;
    Ok((group, identity_dh, fields.array()?))
}

/// A public value field of exactly the group's length.
fn public_field(fields: &mut Fields<'_>, group: Group) -> Result<Vec<u8>, E2eError> {
    let value = fields.next()?;
    if value.len() != group.byte_len() {
        return Err(fields.fail("a public value has the wrong length for its group"));
    }
    Ok(value.to_vec())
}

/// Shows ids and groups, never exponents.
impl fmt::Debug for SignedPrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SignedPrekey {{ id: {}, {:?} }}",
            self.id, self.pair.public
        )
    }
}

/// Shows ids and groups, never exponents.
impl fmt::Debug for OneTimePrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OneTimePrekey {{ id: {}, {:?} }}",
            self.id, self.pair.public
        )
    }
}

/// Shows the public value, never the exponent.
impl fmt::Debug for IdentityDhKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityDhKey({:?})", self.pair.public)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: Group = Group::Ffdhe2048;

    /// A user with everything they publish.
    struct User {
        /// Their name.
        name: &'static str,
        /// Their Ed25519 identity key.
        identity: IdentityKey,
        /// Their identity DH key.
        identity_dh: IdentityDhKey,
        /// Their current signed prekey (id 1).
        signed_prekey: SignedPrekey,
        /// One one-time prekey (id 7).
        one_time: OneTimePrekey,
    }

    impl User {
        fn new(name: &'static str) -> User {
            let identity = IdentityKey::generate().expect("identity");
            User {
                name,
                identity_dh: IdentityDhKey::generate(&identity, name, GROUP).expect("ik"),
                signed_prekey: SignedPrekey::generate(&identity, name, 1, GROUP).expect("spk"),
                one_time: OneTimePrekey::generate(7, GROUP).expect("opk"),
                identity,
            }
        }

        /// As a peer sees them: their name and their pinned key.
        fn party(&self) -> Party<'static> {
            Party {
                name: self.name,
                identity: self.identity.public_key(),
            }
        }

        fn bundle(&self, with_one_time: bool) -> PrekeyBundle {
            let one_time = with_one_time.then_some(&self.one_time);
            PrekeyBundle::new(&self.identity_dh, &self.signed_prekey, one_time)
        }

        /// Starts a conversation with `peer` from `bundle`.
        fn start(&self, peer: &User, bundle: &PrekeyBundle) -> Result<PrekeyMessage, E2eError> {
            initiate(
                &self.party(),
                &self.identity_dh,
                &peer.party(),
                bundle,
                "hi",
            )
            .map(|(_, first)| first)
        }

        /// Answers a first message from `peer`, with the one-time prekey if it names one.
        fn answer(&self, peer: &User, first: &PrekeyMessage) -> Result<String, E2eError> {
            let one_time = first.one_time_prekey_id.map(|_| &self.one_time);
            respond(
                &self.party(),
                &self.identity_dh,
                &self.signed_prekey,
                one_time,
                &peer.party(),
                first,
            )
            .map(|(_, text)| text)
        }
    }

    #[test]
    fn agreement_works_with_and_without_a_one_time_prekey() {
        let (alice, bob) = (User::new("alice"), User::new("bob"));
        for with_one_time in [true, false] {
            let (mut at_alice, first) = initiate(
                &alice.party(),
                &alice.identity_dh,
                &bob.party(),
                &bob.bundle(with_one_time),
                "hello from the past",
            )
            .expect("initiate");
            assert_eq!(first.one_time_prekey_id.is_some(), with_one_time);
            let one_time = with_one_time.then_some(&bob.one_time);
            let (mut at_bob, text) = respond(
                &bob.party(),
                &bob.identity_dh,
                &bob.signed_prekey,
                one_time,
                &alice.party(),
                &first,
            )
            .expect("respond");
            assert_eq!(text, "hello from the past");
            let reply = at_bob.encrypt("got it").expect("encrypt");
            assert_eq!(at_alice.decrypt(&reply).as_deref(), Ok("got it"));
        }
    }

    #[test]
    fn a_bundle_that_the_pinned_key_did_not_sign_is_refused() {
        let (alice, bob, mallory) = (User::new("alice"), User::new("bob"), User::new("mallory"));
        let genuine = bob.bundle(true);
        // The server swaps in its own signed prekey, its own identity DH key, or a whole
        // bundle signed by another key.
        let swapped_prekey = PrekeyBundle {
            signed_prekey: mallory.bundle(true).signed_prekey,
            ..genuine.clone()
        };
        let swapped_identity = PrekeyBundle {
            identity_dh: mallory.bundle(true).identity_dh,
            ..genuine.clone()
        };
        let renumbered = PrekeyBundle {
            signed_prekey_id: 2,
            ..genuine.clone()
        };
        let mut flipped = genuine.clone();
        flipped.signed_prekey_signature[0] ^= 1;
        for bundle in [
            &swapped_prekey,
            &swapped_identity,
            &renumbered,
            &flipped,
            &mallory.bundle(true),
        ] {
            assert_eq!(
                alice.start(&bob, bundle).err(),
                Some(E2eError::BadSignature)
            );
        }
        // A signature made for another user does not carry over either.
        let carol_named = Party {
            name: "carol",
            identity: bob.identity.public_key(),
        };
        let result = initiate(
            &alice.party(),
            &alice.identity_dh,
            &carol_named,
            &genuine,
            "hi",
        );
        assert_eq!(result.err(), Some(E2eError::BadSignature));
        assert!(alice.start(&bob, &genuine).is_ok());
    }

    #[test]
    fn a_substituted_one_time_prekey_yields_no_session() {
        // One-time prekeys are not signed (as in X3DH): a server that swaps one in gets
        // nothing — it cannot compute DH1..DH3 — and Bob refuses the first message.
        let (alice, bob, mallory) = (User::new("alice"), User::new("bob"), User::new("mallory"));
        let mut bundle = bob.bundle(true);
        bundle.one_time_prekey = mallory.bundle(true).one_time_prekey;
        let first = alice.start(&bob, &bundle).expect("alice cannot tell");
        assert_eq!(bob.answer(&alice, &first), Err(E2eError::Tampered));
    }

    #[test]
    fn a_first_message_whose_identity_dh_key_the_pinned_key_did_not_sign_is_refused() {
        let (alice, bob, mallory) = (User::new("alice"), User::new("bob"), User::new("mallory"));
        // Mallory starts a conversation in Alice's name, with her own identity DH key.
        let (_, forged) = initiate(
            &alice.party(),
            &mallory.identity_dh,
            &bob.party(),
            &bob.bundle(true),
            "it's alice, honest",
        )
        .expect("mallory initiates");
        assert_eq!(bob.answer(&alice, &forged), Err(E2eError::BadSignature));
        // Or re-uses Alice's signed key without knowing its secret: the keys then differ.
        let genuine = alice.start(&bob, &bob.bundle(true)).expect("start");
        let borrowed = PrekeyMessage {
            identity_dh: genuine.identity_dh.clone(),
            identity_dh_signature: genuine.identity_dh_signature,
            ..forged
        };
        assert_eq!(bob.answer(&alice, &borrowed), Err(E2eError::Tampered));
        assert_eq!(bob.answer(&alice, &genuine).as_deref(), Ok("hi"));
    }

    #[test]
    fn a_message_under_the_signed_prekey_itself_is_refused() {
        // The initiator's ratchet starts with the signed prekey as the peer's value, but no
        // chain for it: an honest responder never sends under it.
        let (alice, bob) = (User::new("alice"), User::new("bob"));
        let (mut at_alice, first) = initiate(
            &alice.party(),
            &alice.identity_dh,
            &bob.party(),
            &bob.bundle(false),
            "hi",
        )
        .expect("initiate");
        let forged = RatchetMessage {
            header: RatchetHeader {
                ratchet_key: bob.signed_prekey.pair.public.to_bytes(),
                ..first.message.header
            },
            ciphertext: first.message.ciphertext,
        };
        assert_eq!(at_alice.decrypt(&forged), Err(E2eError::Tampered));
    }

    #[test]
    fn a_first_message_naming_prekeys_we_do_not_hold_is_refused() {
        let (alice, bob) = (User::new("alice"), User::new("bob"));
        let first = alice.start(&bob, &bob.bundle(true)).expect("start");
        // The one-time prekey was already used (its secret deleted): nothing to answer with.
        let answered = respond(
            &bob.party(),
            &bob.identity_dh,
            &bob.signed_prekey,
            None,
            &alice.party(),
            &first,
        );
        assert_eq!(answered.err(), Some(E2eError::UnknownPrekey));
        let rotated = PrekeyMessage {
            signed_prekey_id: 2,
            ..first
        };
        assert_eq!(bob.answer(&alice, &rotated), Err(E2eError::UnknownPrekey));
    }

    #[test]
    fn a_signed_but_invalid_prekey_value_is_refused() {
        // Bob's own client signed a value outside the subgroup (a bug, or a hostile client):
        // the signature checks, the value does not.
        let (alice, bob) = (User::new("alice"), User::new("bob"));
        let p_minus_2 = GROUP.prime() - 2u32;
        let digits = p_minus_2.to_bytes_be();
        let bad = [vec![0; GROUP.byte_len() - digits.len()], digits].concat();
        let mut bundle = bob.bundle(false);
        bundle.signed_prekey = bad.clone();
        bundle.signed_prekey_signature = bob
            .identity
            .sign(&signed_prekey_statement("bob", 1, &bad, GROUP))
            .expect("sign");
        assert!(matches!(
            alice.start(&bob, &bundle),
            Err(E2eError::InvalidPublicValue(_))
        ));
    }

    #[test]
    fn bundles_and_first_messages_round_trip_and_broken_bytes_are_malformed() {
        let (alice, bob) = (User::new("alice"), User::new("bob"));
        for with_one_time in [true, false] {
            let bundle = bob.bundle(with_one_time);
            let bytes = bundle.to_bytes();
            assert_eq!(PrekeyBundle::from_bytes(&bytes), Ok(bundle.clone()));
            let first = alice.start(&bob, &bundle).expect("start");
            let message_bytes = first.to_bytes();
            assert_eq!(PrekeyMessage::from_bytes(&message_bytes), Ok(first));
            for cut in [0, 1, 8, 40, bytes.len() / 2, bytes.len() - 1] {
                assert!(matches!(
                    PrekeyBundle::from_bytes(&bytes[..cut]),
                    Err(E2eError::Malformed(_))
                ));
                assert!(matches!(
                    PrekeyMessage::from_bytes(&message_bytes[..cut.min(message_bytes.len() - 1)]),
                    Err(E2eError::Malformed(_))
                ));
            }
            assert!(PrekeyBundle::from_bytes(&[&bytes[..], b"x"].concat()).is_err());
            assert!(PrekeyBundle::from_bytes(&message_bytes).is_err());
            assert!(PrekeyMessage::from_bytes(&bytes).is_err());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Hostile bytes (random, or a valid encoding with one byte changed or cut short) never
        /// panic any parser of this layer's binary formats: each answers with a value or an
        /// error saying the input is malformed, and a valid encoding parses.
        #[test]
        fn hostile_bytes_never_panic_a_parser(
            random in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1200),
            position in proptest::prelude::any::<proptest::sample::Index>(),
            flip in 1u8..,
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let parsers = |bytes: &[u8]| -> [Result<(), E2eError>; 4] {
                [
                    PrekeyBundle::from_bytes(bytes).map(drop),
                    PrekeyMessage::from_bytes(bytes).map(drop),
                    RatchetHeader::from_bytes(GROUP, bytes).map(drop),
                    Ratchet::from_bytes(bytes).map(drop),
                ]
            };
            let understood = |result: &Result<(), E2eError>| matches!(
                result,
                Ok(()) | Err(E2eError::Malformed(_) | E2eError::State(_) | E2eError::InvalidPublicValue(_))
            );
            for (format, encoding) in valid_encodings().iter().enumerate() {
                proptest::prop_assert!(parsers(encoding)[format].is_ok());
                let mut changed = encoding.clone();
                let at = position.index(changed.len());
                changed[at] ^= flip;
                let short = &encoding[..cut.index(encoding.len())];
                for bytes in [&changed[..], short, &random] {
                    proptest::prop_assert!(parsers(bytes).iter().all(understood));
                }
            }
        }
    }

    /// One valid encoding of each format, made once.
    fn valid_encodings() -> &'static [Vec<u8>] {
        static ENCODINGS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        ENCODINGS.get_or_init(|| {
            let (alice, bob) = (User::new("alice"), User::new("bob"));
            let bundle = bob.bundle(true);
            let (session, first) = initiate(
                &alice.party(),
                &alice.identity_dh,
                &bob.party(),
                &bundle,
                "hi",
            )
            .expect("initiate");
            vec![
                bundle.to_bytes(),
                first.to_bytes(),
                first.message.header.to_bytes(),
                session.to_bytes(),
            ]
        })
    }

    #[test]
    fn saved_prekey_secrets_load_to_the_same_bundle_and_still_answer() {
        let (alice, bob) = (User::new("alice"), User::new("bob"));
        let saved = (
            bob.identity_dh.to_bytes(),
            bob.signed_prekey.to_bytes(),
            bob.one_time.to_bytes(),
        );
        let identity_dh =
            IdentityDhKey::from_bytes(&saved.0, &bob.identity, "bob").expect("identity dh");
        let signed_prekey =
            SignedPrekey::from_bytes(&saved.1, &bob.identity, "bob").expect("signed prekey");
        let one_time = OneTimePrekey::from_bytes(&saved.2).expect("one-time prekey");
        let reloaded = PrekeyBundle::new(&identity_dh, &signed_prekey, Some(&one_time));
        assert_eq!(reloaded, bob.bundle(true));
        let first = alice.start(&bob, &bob.bundle(true)).expect("start");
        let answered = respond(
            &bob.party(),
            &identity_dh,
            &signed_prekey,
            Some(&one_time),
            &alice.party(),
            &first,
        );
        assert_eq!(answered.map(|(_, text)| text).as_deref(), Ok("hi"));
        // A key of another kind, a cut-short file or a changed label is refused in words.
        let refused = |result: Result<OneTimePrekey, E2eError>| matches!(result, Err(E2eError::State(text)) if text.starts_with("saved prekey"));
        assert!(refused(OneTimePrekey::from_bytes(&saved.1)));
        assert!(refused(OneTimePrekey::from_bytes(
            &saved.2[..saved.2.len() - 1]
        )));
        let mut other_version = saved.2.clone();
        other_version[8 + SAVED_KEY_LABEL.len() - 1] ^= 1;
        assert!(refused(OneTimePrekey::from_bytes(&other_version)));
        assert!(SignedPrekey::from_bytes(&saved.0, &bob.identity, "bob").is_err());
    }

    #[test]
    fn debug_output_shows_no_exponent() {
        let bob = User::new("bob");
        let exponent: String = bob
            .signed_prekey
            .pair
            .secret
            .exponent_bytes()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        let shown = format!(
            "{:?}{:?}{:?}",
            bob.signed_prekey, bob.one_time, bob.identity_dh
        );
        assert!(
            shown.contains("id: 1") && shown.contains("id: 7"),
            "{shown}"
        );
        assert!(!shown.contains(&exponent[..16]));
    }
}
