//! Pinned identity keys (trust on first use): the first key seen for a contact is remembered, and
//! any later change is flagged instead of silently accepted.
//!
//! The file is text, one line per contact, sorted by name, with `#` comment lines allowed:
//!
//! ```text
//! # securechat pinned identity keys
//! bob 3q2+7w...base64 of 32 bytes...= verified
//! bob@b.test Zm9v...= unverified
//! carol Zm9v...= unverified
//! ```
//!
//! A contact is named as the server names them: a bare name for a user of the user's own
//! server, `user@server` for a user of another server (federation). Those are different
//! contacts with different pins: `bob@b.test` is never `bob`, nor `bob@a.test`. Both forms
//! are canonical addresses ([`is_canonical_address`]: no space, no `#`, lower case), so each
//! line stays `name key status`.
//!
//! `verified` means the user compared the safety number with that contact; `unverified` means the
//! key was only taken on first use; `accepted` means the contact's key changed and the user
//! accepted the new one without comparing safety numbers (yet). The file is replaced atomically with mode 0600 on every
//! change, and a file that other users could read or change is refused when it is opened: anyone
//! who can edit it can pin their own key for a contact. A file that does not parse is reported
//! with its line number and never overwritten: silently starting over would forget every pin,
//! which is exactly what an attacker would want.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{E2eError, IdentityPublicKey};
use crate::files::{check_directory_chain, check_private, write_atomically};
use crate::protocol::name::is_canonical_address;

/// Written at the top of the file for anyone who opens it.
const FILE_HEADER: &str = "# securechat pinned identity keys (trust on first use)\n\
                           # <user or user@server> <base64 Ed25519 public key> verified|unverified|accepted\n";
/// Marks a key whose safety number the user compared.
const VERIFIED: &str = "verified";
/// Marks a key taken on first use only.
const UNVERIFIED: &str = "unverified";
/// Marks a key that replaced an earlier one with the user's consent, not compared since.
const ACCEPTED: &str = "accepted";

/// How far a pinned key is trusted: shown on every private message from or to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The user compared safety numbers for this key.
    Verified,
    /// Taken on first use; nobody compared it.
    FirstUse,
    /// The contact's key changed and the user accepted the new one; not compared since.
    Accepted,
}

impl Trust {
    /// The word for this state in the pin file.
    fn word(self) -> &'static str {
        match self {
            Trust::Verified => VERIFIED,
            Trust::FirstUse => UNVERIFIED,
            Trust::Accepted => ACCEPTED,
        }
    }
}

/// What the pin store says about a key a contact presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinStatus {
    /// No key pinned for this contact yet: pin it (and suggest comparing safety numbers).
    FirstUse,
    /// The key is the pinned one.
    Matches {
        /// Whether the user has compared safety numbers for this key.
        verified: bool,
    },
    /// The contact presents a different key: a new device, or a man in the middle. Warn loudly.
    Changed {
        /// The key pinned until now.
        old: IdentityPublicKey,
    },
}

/// One contact's pin.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pin {
    /// The pinned key.
    key: IdentityPublicKey,
    /// How far the user has checked it.
    trust: Trust,
}

/// The pinned keys of one account, backed by one file.
#[derive(Debug)]
pub struct PinStore {
    /// The file the pins live in.
    path: PathBuf,
    /// Contact name → pin. Invariant: equal to the file's contents after every successful call.
    pins: BTreeMap<String, Pin>,
}

impl PinStore {
    /// Opens the pin file at `path`. A missing file is an empty store (the file is written on the
    /// first pin); a file that group or other users can access, or that does not parse, is an
    /// error and is left untouched.
    pub fn open(path: &Path) -> Result<PinStore, E2eError> {
        if let Some(dir) = path.parent() {
            check_directory_chain(dir).map_err(|e| E2eError::TrustStore(e.to_string()))?;
        }
        match check_private(path) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(E2eError::TrustStore(error.to_string())),
            Ok(()) => {}
        }
        let pins = match fs::read_to_string(path) {
            Ok(text) => parse_pins(&text).map_err(|(line, problem)| {
                E2eError::TrustStore(format!(
                    "{}, line {line}: {problem}. The file was left as it is: fix that line, or \
                     move the file away to start over (every contact's key will then be trusted \
                     anew on first use)",
                    path.display()
                ))
            })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => {
                return Err(E2eError::TrustStore(format!(
                    "cannot read {}: {error}",
                    path.display()
                )))
            }
        };
        Ok(PinStore {
            path: path.to_owned(),
            pins,
        })
    }

    /// Opens the pin file that belongs beside an identity key. With a key made just now
    /// (`identity_is_new`) a missing file is written empty at once; with an older key a
    /// missing file is an alarm, not a fresh start: deleting it is how someone would get
    /// every contact "trusted on first use" again with keys of their choosing.
    pub fn open_for_identity(path: &Path, identity_is_new: bool) -> Result<PinStore, E2eError> {
        let mut store = PinStore::open(path)?;
        if path.exists() {
            return Ok(store);
        }
        if !identity_is_new {
            return Err(E2eError::TrustStore(format!(
                "{} is missing although your identity key beside it exists: someone may have \
                 deleted your pinned contacts so that substituted keys would be trusted as \
                 first contacts. If you removed it yourself on purpose, create an empty one \
                 (`touch {0} && chmod 600 {0}`) to start over",
                path.display()
            )));
        }
        store.save(&store.pins.clone())?;
        Ok(store)
    }

    /// Compares `key` with what is pinned for `user`.
    pub fn check(&self, user: &str, key: &IdentityPublicKey) -> PinStatus {
        match self.pins.get(user) {
            None => PinStatus::FirstUse,
            Some(pin) if pin.key == *key => PinStatus::Matches {
                verified: pin.trust == Trust::Verified,
            },
            Some(pin) => PinStatus::Changed { old: pin.key },
        }
    }

    /// The key pinned for `user`, if any.
    pub fn pinned_key(&self, user: &str) -> Option<IdentityPublicKey> {
        self.pins.get(user).map(|pin| pin.key)
    }

    /// How far `user`'s pinned key is trusted, if one is pinned.
    pub fn trust(&self, user: &str) -> Option<Trust> {
        self.pins.get(user).map(|pin| pin.trust)
    }

    /// A pinned contact whose name looks like `user` on screen without being it (`b0b`,
    /// `bobl`/`bobi`, `rnallory`/`mallory`, `BOB` for `bob`), if any: a first contact under
    /// such a name must not be taken silently for the contact it imitates.
    ///
    /// Only the user part is compared (by its skeleton), so the same name on another server
    /// is a look-alike too: `bob@b.test` of pinned `bob` or `bob@a.test`, and so is
    /// `bob@b.te5t` of `bob@b.test`. Someone who registers `bob` on a server of their own
    /// must not pass for the `bob` the user knows. A pinned contact is itself, never a
    /// look-alike of another (`bob` and `bob@a.test` may both be known contacts).
    pub fn look_alike(&self, user: &str) -> Option<&str> {
        if self.pins.contains_key(user) {
            return None;
        }
        let skeleton = look_alike_skeleton(user_part(user));
        self.pins
            .keys()
            .find(|pinned| {
                pinned.as_str() != user && look_alike_skeleton(user_part(pinned)) == skeleton
            })
            .map(String::as_str)
    }

    /// Pins `key` for a contact seen for the first time (unverified). Pinning the same key again
    /// does nothing; a different key is refused — use [`PinStore::accept_new_key`] for that.
    pub fn pin(&mut self, user: &str, key: &IdentityPublicKey) -> Result<(), E2eError> {
        match self.check(user, key) {
            PinStatus::Matches { .. } => Ok(()),
            PinStatus::Changed { .. } => Err(E2eError::TrustStore(format!(
                "{user} already has a different pinned key; compare safety numbers before \
                 accepting the new one"
            ))),
            PinStatus::FirstUse => self.store(user, *key, Trust::FirstUse),
        }
    }

    /// Records that the user compared the safety number of `key` with `user`. Refused unless `key`
    /// is the one pinned for `user`: the number compared must be the pinned key's, or the mark
    /// would vouch for a key nobody checked.
    pub fn mark_verified(&mut self, user: &str, key: &IdentityPublicKey) -> Result<(), E2eError> {
        match self.check(user, key) {
            PinStatus::Matches { .. } => self.store(user, *key, Trust::Verified),
            PinStatus::FirstUse => {
                Err(E2eError::TrustStore(format!("no key is pinned for {user}")))
            }
            PinStatus::Changed { .. } => Err(E2eError::TrustStore(format!(
                "the key pinned for {user} is not the one whose safety number was compared"
            ))),
        }
    }

    /// Replaces `user`'s pinned key after a change the user accepted; the new key is unverified.
    pub fn accept_new_key(&mut self, user: &str, key: &IdentityPublicKey) -> Result<(), E2eError> {
        self.store(user, *key, Trust::Accepted)
    }

    /// Sets one pin and saves; memory changes only if the file was written.
    fn store(&mut self, user: &str, key: IdentityPublicKey, trust: Trust) -> Result<(), E2eError> {
        check_username(user)?;
        let mut updated = self.pins.clone();
        updated.insert(user.to_owned(), Pin { key, trust });
        self.save(&updated)
    }

    /// Writes `pins` to the file, then keeps them; memory changes only if the file was written.
    fn save(&mut self, pins: &BTreeMap<String, Pin>) -> Result<(), E2eError> {
        write_atomically(&self.path, format_pins(pins).as_bytes()).map_err(|error| {
            E2eError::TrustStore(format!("cannot write {}: {error}", self.path.display()))
        })?;
        self.pins = pins.clone();
        Ok(())
    }
}

/// The user part of an address (`bob` of `bob@b.test`); a bare name is all user part.
fn user_part(address: &str) -> &str {
    address.split_once('@').map_or(address, |(user, _)| user)
}

/// A contact is a canonical address (`bob`, `bob@b.test`): one token with no space and no
/// leading `#`, so each line stays `name key status`, and one spelling per contact, so a
/// pin is found under the name the server sends.
fn check_username(user: &str) -> Result<(), E2eError> {
    if is_canonical_address(user) {
        Ok(())
    } else {
        Err(E2eError::TrustStore(format!(
            "cannot pin a key for the username {user:?}"
        )))
    }
}

/// What a user name looks like on screen, reduced so that names a reader would confuse
/// compare equal: case folded, and the ASCII look-alikes of Unicode TR39's confusables
/// that the user-name rule allows (`0`/`o`, `1`/`l`/`i`/`I`, `rn`/`m`, `vv`/`w`, `5`/`s`)
/// mapped to one form. User names are ASCII (the client refuses any other from the server),
/// so TR39's full Unicode table is not needed here.
pub fn look_alike_skeleton(name: &str) -> String {
    let folded: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| match c {
            '0' => 'o',
            '1' | 'i' | '|' => 'l',
            '5' => 's',
            other => other,
        })
        .collect();
    folded.replace("rn", "m").replace("vv", "w")
}

fn format_pins(pins: &BTreeMap<String, Pin>) -> String {
    let mut text = FILE_HEADER.to_owned();
    for (user, pin) in pins {
        text.push_str(&format!(
            "{user} {} {}\n",
            pin.key.to_base64(),
            pin.trust.word()
        ));
    }
    text
}

/// The pins in `text`, or the first bad line's number and what is wrong with it.
fn parse_pins(text: &str) -> Result<BTreeMap<String, Pin>, (usize, String)> {
    let mut pins = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let [user, key, status] = fields[..] else {
            return Err((
                line_number,
                "expected `username key verified|unverified|accepted`".to_owned(),
            ));
        };
        let key = IdentityPublicKey::from_base64(key)
            .map_err(|_| (line_number, "the key is not 32 bytes of base64".to_owned()))?;
        let Some(trust) = [Trust::Verified, Trust::FirstUse, Trust::Accepted]
            .into_iter()
            .find(|trust| trust.word() == status)
        else {
            return Err((
                line_number,
                "the status must be verified, unverified or accepted".to_owned(),
            ));
        };
        check_username(user).map_err(|_| (line_number, "invalid username".to_owned()))?;
        if pins.insert(user.to_owned(), Pin { key, trust }).is_some() {
            return Err((line_number, format!("{user} is listed twice")));
        }
    }
    Ok(pins)
}

#[cfg(test)]
mod tests {
    use super::super::IdentityKey;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn new_key() -> IdentityPublicKey {
        IdentityKey::generate().expect("key").public_key()
    }

    /// Writes a pin file by hand, with the mode the store itself would give it.
    fn write_owner_only(path: &Path, text: &str) {
        fs::write(path, text).expect("write");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    #[test]
    fn first_use_then_match_then_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PinStore::open(&dir.path().join("pins")).expect("open");
        let (bob, impostor) = (new_key(), new_key());
        assert_eq!(store.check("bob", &bob), PinStatus::FirstUse);
        store.pin("bob", &bob).expect("pin");
        assert_eq!(
            store.check("bob", &bob),
            PinStatus::Matches { verified: false }
        );
        assert_eq!(
            store.check("bob", &impostor),
            PinStatus::Changed { old: bob }
        );
        assert!(store.pin("bob", &impostor).is_err());
        assert_eq!(
            store.check("bob", &bob),
            PinStatus::Matches { verified: false }
        );
        assert_eq!(store.check("carol", &bob), PinStatus::FirstUse);
    }

    #[test]
    fn pins_and_verification_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("alice").join("pins");
        let (bob, carol) = (new_key(), new_key());
        {
            let mut store = PinStore::open(&path).expect("open");
            store.pin("bob", &bob).expect("pin");
            store.pin("carol", &carol).expect("pin");
            store.mark_verified("bob", &bob).expect("verify");
        }
        let mode = fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let store = PinStore::open(&path).expect("reopen");
        assert_eq!(
            store.check("bob", &bob),
            PinStatus::Matches { verified: true }
        );
        assert_eq!(
            store.check("carol", &carol),
            PinStatus::Matches { verified: false }
        );
    }

    #[test]
    fn accepting_a_new_key_replaces_it_and_resets_verification() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pins");
        let (old, new) = (new_key(), new_key());
        let mut store = PinStore::open(&path).expect("open");
        store.pin("bob", &old).expect("pin");
        store.mark_verified("bob", &old).expect("verify");
        store.accept_new_key("bob", &new).expect("accept");
        let reopened = PinStore::open(&path).expect("reopen");
        assert_eq!(
            reopened.check("bob", &new),
            PinStatus::Matches { verified: false }
        );
        assert_eq!(reopened.check("bob", &old), PinStatus::Changed { old: new });
    }

    #[test]
    fn verifying_an_unknown_contact_another_key_or_a_bad_name_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PinStore::open(&dir.path().join("pins")).expect("open");
        assert!(matches!(
            store.mark_verified("nobody", &new_key()),
            Err(E2eError::TrustStore(_))
        ));
        assert!(!dir.path().join("pins").exists());
        let (bob, other) = (new_key(), new_key());
        store.pin("bob", &bob).expect("pin");
        assert!(matches!(
            store.mark_verified("bob", &other),
            Err(E2eError::TrustStore(_))
        ));
        assert_eq!(
            store.check("bob", &bob),
            PinStatus::Matches { verified: false }
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PinStore::open(&dir.path().join("pins")).expect("open");
        for name in ["", "two words", "#comment", "new\nline"] {
            assert!(store.pin(name, &new_key()).is_err(), "{name:?}");
        }
        assert!(!dir.path().join("pins").exists());
    }

    #[test]
    fn a_corrupt_file_is_reported_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pins");
        let key = new_key().to_base64();
        let corrupt = [
            format!("bob {key} verified\ncarol {key}\n"),
            format!("bob {key} trusted\n"),
            "bob notakey verified\n".to_owned(),
            format!("bob {key} verified\nbob {key} unverified\n"),
        ];
        for text in &corrupt {
            write_owner_only(&path, text);
            let error = PinStore::open(&path).expect_err("corrupt file refused");
            assert!(matches!(&error, E2eError::TrustStore(message) if message.contains("line")));
            assert_eq!(&fs::read_to_string(&path).expect("read"), text);
        }
        let error = PinStore::open(&path).expect_err("refused");
        assert!(error.to_string().contains("line 2"), "{error}");
    }

    #[test]
    fn comments_and_blank_lines_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pins");
        let bob = new_key();
        write_owner_only(
            &path,
            &format!("# mine\n\nbob {} unverified\n", bob.to_base64()),
        );
        let store = PinStore::open(&path).expect("open");
        assert_eq!(
            store.check("bob", &bob),
            PinStatus::Matches { verified: false }
        );
    }

    #[test]
    fn a_pin_file_others_can_access_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pins");
        let text = format!("bob {} verified\n", new_key().to_base64());
        fs::write(&path, &text).expect("write");
        for mode in [0o666, 0o620, 0o604] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            let error = PinStore::open(&path).expect_err("must refuse");
            assert!(
                matches!(&error, E2eError::TrustStore(message) if message.contains("chmod 600")),
                "mode {mode:o}: {error}"
            );
            assert_eq!(fs::read_to_string(&path).expect("read"), text);
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        PinStore::open(&path).expect("an owner-only file opens");
    }

    #[test]
    fn names_that_look_alike_are_found_and_others_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PinStore::open(&dir.path().join("pins")).expect("open");
        store.pin("bob", &new_key()).expect("pin");
        store.pin("mallory", &new_key()).expect("pin");
        for name in ["b0b", "BOB", "bo8"] {
            let found = store.look_alike(name);
            assert_eq!(found == Some("bob"), name != "bo8", "{name}");
        }
        assert_eq!(store.look_alike("rnallory"), Some("mallory"));
        assert_eq!(store.look_alike("ma11ory"), Some("mallory"));
        assert_eq!(
            store.look_alike("bob"),
            None,
            "a name is not its own look-alike"
        );
        assert_eq!(store.look_alike("carol"), None);
    }

    #[test]
    fn a_user_of_another_server_is_another_pin_and_a_look_alike_at_first_contact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pins");
        let mut store = PinStore::open(&path).expect("open");
        let (local, remote) = (new_key(), new_key());
        store.pin("bob@a.test", &remote).expect("pin");
        assert_eq!(store.check("bob", &local), PinStatus::FirstUse);
        assert_eq!(store.look_alike("bob"), Some("bob@a.test"));
        store.pin("bob", &local).expect("pin");
        assert_eq!(
            store.check("bob", &remote),
            PinStatus::Changed { old: local },
            "bob and bob@a.test are two pins"
        );
        assert_eq!(
            store.check("bob@a.test", &remote),
            PinStatus::Matches { verified: false }
        );
        assert_eq!(store.look_alike("bob"), None, "exact matches are matches");
        assert_eq!(store.look_alike("bob@a.test"), None);
        let found = store.look_alike("bob@b.test");
        assert!(
            found == Some("bob") || found == Some("bob@a.test"),
            "{found:?}"
        );
        let dir2 = tempfile::tempdir().expect("tempdir");
        let mut only_local = PinStore::open(&dir2.path().join("pins")).expect("open");
        only_local.pin("bob", &local).expect("pin");
        assert_eq!(only_local.look_alike("bob@b.test"), Some("bob"));
        assert_eq!(only_local.look_alike("b0b@b.test"), Some("bob"));
        only_local.pin("carol@b.test", &remote).expect("pin");
        assert_eq!(only_local.look_alike("carol@b.te5t"), Some("carol@b.test"));
        assert_eq!(only_local.look_alike("carol"), Some("carol@b.test"));
        assert_eq!(only_local.look_alike("dave@b.test"), None);
        store.mark_verified("bob@a.test", &remote).expect("verify");
        let reopened = PinStore::open(&path).expect("reopen");
        assert_eq!(
            reopened.check("bob@a.test", &remote),
            PinStatus::Matches { verified: true }
        );
        assert_eq!(
            reopened.check("bob", &local),
            PinStatus::Matches { verified: false }
        );
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.contains("\nbob@a.test "), "{text}");
        for bad in [
            "Bob@a.test",
            "bob@A.test",
            "bob@127.0.0.1",
            "bob@",
            "bob@a.test@b.test",
        ] {
            assert!(store.pin(bad, &new_key()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_accepted_key_change_is_remembered_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pins");
        let mut store = PinStore::open(&path).expect("open");
        store.pin("bob", &new_key()).expect("pin");
        assert_eq!(store.trust("bob"), Some(Trust::FirstUse));
        store.accept_new_key("bob", &new_key()).expect("accept");
        assert_eq!(
            PinStore::open(&path).expect("reopen").trust("bob"),
            Some(Trust::Accepted)
        );
        assert_eq!(store.trust("carol"), None);
    }

    #[test]
    fn a_missing_pin_file_beside_an_existing_identity_is_an_alarm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("alice").join("known_keys");
        PinStore::open_for_identity(&path, true).expect("a new identity gets an empty file");
        assert!(
            path.exists(),
            "written at once, so that its absence later means something"
        );
        PinStore::open_for_identity(&path, false).expect("an existing file opens");
        fs::remove_file(&path).expect("delete");
        let error = PinStore::open_for_identity(&path, false).expect_err("alarm");
        assert!(
            error
                .to_string()
                .contains("is missing although your identity key"),
            "{error}"
        );
        assert!(!path.exists(), "not silently recreated");
    }

    #[test]
    fn pins_below_a_directory_others_can_write_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).expect("mkdir");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).expect("chmod");
        let error = PinStore::open(&shared.join("alice").join("known_keys")).expect_err("refused");
        assert!(
            error.to_string().contains("can be written by other users"),
            "{error}"
        );
    }
}
