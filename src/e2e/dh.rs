//! Ephemeral finite-field Diffie–Hellman: secret exponents, validated public values, the shared
//! secret.
//!
//! Alice picks a secret `x` and publishes `Y_i = g^x mod p`; Bob picks `y` and publishes
//! `Y_r = g^y mod p`. Each raises the other's public value to their own secret:
//! `(g^y)^x = (g^x)^y = g^(xy) mod p`. An eavesdropper sees `g^x` and `g^y` and would need a
//! discrete logarithm to get `g^(xy)`. Both secrets are *ephemeral*: made for one exchange and
//! wiped when dropped.
//!
//! Wiping is best effort: we overwrite the bytes we own, but the Montgomery arithmetic's
//! scratch limbs and `num-bigint`'s temporaries hold intermediate values we do not wipe. Both
//! exponentiations (`g^x` and `Y^x`) are computed by the `montgomery` crate straight from the exponent's
//! bytes, with no `BigUint` copy of the secret and no branch or table index on its bits.

use std::fmt;
use std::hint::black_box;

use num_bigint::BigUint;

use super::{fill_random, E2eError, Group};

// Why a public value or a shared secret was refused. Named so tests can tell the checks apart.
const WRONG_LENGTH: &str = "the peer's public value has the wrong length for the group";
const TOO_SMALL: &str = "the peer's public value is 0 or 1, which would fix the shared secret";
const MINUS_ONE: &str = "the peer's public value is p-1, which lies in a subgroup of order 2";
const NOT_REDUCED: &str = "the peer's public value is not below p (it is not a number mod p)";
const OUTSIDE_SUBGROUP: &str = "the peer's public value is outside the prime-order subgroup";
const OTHER_GROUP: &str = "the peer's public value belongs to a different group";
const DEGENERATE_SECRET: &str = "the shared secret came out as 1 or p-1 (small subgroup)";

/// My secret exponent `x` for one exchange. Never printed, never sent, wiped when dropped.
pub struct EphemeralSecret {
    /// The group `x` is used in; agreeing with a value from another group is refused.
    group: Group,
    /// `x` as big-endian bytes, exactly `group.exponent_bits()` long with the top bit set. Kept as
    /// bytes rather than a `BigUint` so that `Drop` can overwrite it.
    exponent: Vec<u8>,
}

impl EphemeralSecret {
    /// A fresh random exponent `x` and my public value `Y = g^x mod p`.
    pub fn generate(group: Group) -> Result<(EphemeralSecret, PublicValue), E2eError> {
        let mut exponent = vec![0u8; group.exponent_bits() / 8];
        fill_random(&mut exponent)?;
        // Setting the top bit fixes the exponent's length, so every exponentiation takes the same
        // number of steps, and guarantees x >= 2 (x = 0 or 1 would publish 1 or g). Costs one bit.
        if let Some(top_byte) = exponent.first_mut() {
            *top_byte |= 0x80;
        }
        let pair = EphemeralSecret::from_exponent(group, &exponent);
        wipe(&mut exponent);
        pair
    }

    /// The secret with the given exponent and its public value: restores a saved key (ratchet
    /// state, prekeys), and fixes `x` for golden test vectors. Never use it to make a fresh key:
    /// that is [`EphemeralSecret::generate`]. The exponent must have the form `generate` gives
    /// it: exactly `group.exponent_bits()` bits with the top bit set.
    #[doc(hidden)]
    pub fn from_exponent(
        group: Group,
        exponent: &[u8],
    ) -> Result<(EphemeralSecret, PublicValue), E2eError> {
        let top_bit_set = exponent.first().is_some_and(|top| top & 0x80 != 0);
        if exponent.len() * 8 != group.exponent_bits() || !top_bit_set {
            return Err(E2eError::Malformed(format!(
                "a secret exponent for {} is {} bits with the top bit set",
                group.name(),
                group.exponent_bits()
            )));
        }
        let secret = EphemeralSecret {
            group,
            exponent: exponent.to_vec(),
        };
        let value = group.generator_power(&secret.exponent);
        Ok((secret, PublicValue { group, value }))
    }

    /// The shared secret `Z = Y^x mod p` with the peer's (validated) public value `Y`.
    pub fn agree(&self, peer: &PublicValue) -> Result<SharedSecret, E2eError> {
        if peer.group != self.group {
            return Err(E2eError::InvalidPublicValue(OTHER_GROUP));
        }
        let p = self.group.prime();
        let z = self.group.power(&peer.value, &self.exponent);
        // Unreachable for a validated Y (its order is q, and 1 < x < q), but cheap to confirm:
        // a secret of 1 or p-1 would be known to everyone.
        if z == BigUint::from(1u32) || z == p - 1u32 {
            return Err(E2eError::InvalidPublicValue(DEGENERATE_SECRET));
        }
        Ok(SharedSecret::from_number(&z, self.group.byte_len()))
    }

    /// A second copy of this secret, for a key that starts a ratchet (the responder's signed
    /// prekey becomes its first ratchet key) while the original stays with its owner. Both
    /// copies are wiped when dropped.
    pub(super) fn duplicate(&self) -> EphemeralSecret {
        EphemeralSecret {
            group: self.group,
            exponent: self.exponent.clone(),
        }
    }

    /// The exponent's bytes, to save a long-lived key (the ratchet state, prekeys). Secret.
    pub(super) fn exponent_bytes(&self) -> &[u8] {
        &self.exponent
    }

    #[cfg(test)]
    fn exponent_number(&self) -> BigUint {
        BigUint::from_bytes_be(&self.exponent)
    }
}

impl Drop for EphemeralSecret {
    fn drop(&mut self) {
        wipe(&mut self.exponent);
    }
}

/// Says which group and how long, never the value.
impl fmt::Debug for EphemeralSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EphemeralSecret {{ group: {}, exponent: <{} secret bits> }}",
            self.group.name(),
            self.exponent.len() * 8
        )
    }
}

/// A Diffie–Hellman public value `Y = g^x mod p`: either mine, or the peer's after validation.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicValue {
    /// The group `Y` belongs to; it fixes the encoded length and the checks below.
    group: Group,
    /// `Y` itself. Invariant: `1 < Y < p - 1` and `Y^q = 1 mod p`, either because we computed it
    /// as `g^x` or because [`PublicValue::from_bytes`] checked it.
    value: BigUint,
}

impl PublicValue {
    /// Decodes and validates the peer's public value, sent as exactly `group.byte_len()`
    /// big-endian bytes.
    ///
    /// Checks, in order: the length; `Y` is not 0 or 1 (which would make the shared secret 0 or 1);
    /// `Y < p` (a number mod p); `Y != p - 1` (order 2, secret ±1); and `Y^q = 1 mod p`, i.e. `Y`
    /// lies in the subgroup of prime order `q` that honest values `g^x` always lie in.
    ///
    /// *Values from the other group.* ffdhe2048 values are 256 bytes and ffdhe3072 values 384,
    /// so the length check refuses a value sent under the wrong group, and a number too big for
    /// this group is refused by `Y < p`. A smaller number — say a 2048-bit value padded to 384
    /// bytes — is a perfectly valid number mod the larger `p`, and no range check can tell where
    /// it came from. That is fine: the group is named in the signed transcript, so a public value
    /// is only ever used in the group its signer chose, and with a safe prime there is no small
    /// subgroup to trap the secret in. The subgroup check then decides on the number alone.
    ///
    /// *How the subgroup check is done.* `p = 2q + 1` is a safe prime, so the multiplicative
    /// group mod p has exactly two subgroups besides `{1}` and `{1, p-1}`: the squares (the
    /// quadratic residues), of order q, and the whole group. Euler's criterion says
    /// `Y^q = Y^((p-1)/2) = (Y/p) mod p`, the Legendre symbol: so "`Y^q mod p = 1`" and "`Y` is a
    /// quadratic residue" are the same test. We compute the symbol with the Jacobi-symbol
    /// algorithm (`jacobi` below: quadratic reciprocity, gcd-like steps) instead of a full-size
    /// exponentiation (`q` has 2047 or 3071 bits); the tests check the two agree on random and
    /// hostile values. It runs on every value received — once per exchange, and once per ratchet
    /// step — and rejects every value an honest peer could not have sent, as NIST SP 800-56A's
    /// full public-key validation asks. Cost, measured on the 2-core course machine: see
    /// `report/performance.md`.
    pub fn from_bytes(group: Group, bytes: &[u8]) -> Result<PublicValue, E2eError> {
        if bytes.len() != group.byte_len() {
            return Err(E2eError::InvalidPublicValue(WRONG_LENGTH));
        }
        let value = BigUint::from_bytes_be(bytes);
        let p = group.prime();
        let one = BigUint::from(1u32);
        if value <= one {
            return Err(E2eError::InvalidPublicValue(TOO_SMALL));
        }
        if &value >= p {
            return Err(E2eError::InvalidPublicValue(NOT_REDUCED));
        }
        if value == p - &one {
            return Err(E2eError::InvalidPublicValue(MINUS_ONE));
        }
        if jacobi(&value, p) != 1 {
            return Err(E2eError::InvalidPublicValue(OUTSIDE_SUBGROUP));
        }
        Ok(PublicValue { group, value })
    }

    /// `Y` as exactly `group.byte_len()` big-endian bytes (left-padded with zeros), as sent.
    pub fn to_bytes(&self) -> Vec<u8> {
        left_pad(&self.value.to_bytes_be(), self.group.byte_len())
    }

    /// The group this value belongs to.
    pub fn group(&self) -> Group {
        self.group
    }

    /// A short form for people: first and last 8 hex digits and the length, e.g.
    /// `0x9A3F21C4…77E0B1D2 (3071 bits)`. Public values are not secret; this is for readability.
    pub fn summary(&self) -> String {
        abbreviated(&self.value)
    }
}

/// `value` for people: first and last 8 hex digits and the length in bits (see
/// [`PublicValue::summary`]).
pub(super) fn abbreviated(value: &BigUint) -> String {
    let hex = value.to_str_radix(16).to_uppercase();
    let short = match (hex.get(..8), hex.get(hex.len().saturating_sub(8)..)) {
        (Some(head), Some(tail)) if hex.len() > 16 => format!("{head}…{tail}"),
        _ => hex.clone(),
    };
    format!("0x{short} ({} bits)", value.bits())
}

impl fmt::Debug for PublicValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicValue({}, {})", self.group.name(), self.summary())
    }
}

/// The Diffie–Hellman result `Z = g^(xy) mod p`, input to the key derivation. Wiped when dropped.
pub struct SharedSecret {
    /// `Z` as big-endian bytes left-padded to the group's length, so both sides feed the KDF the
    /// same bytes even when `Z` happens to start with zero bytes.
    bytes: Vec<u8>,
}

impl SharedSecret {
    fn from_number(z: &BigUint, len: usize) -> SharedSecret {
        let mut digits = z.to_bytes_be();
        let bytes = left_pad(&digits, len);
        wipe(&mut digits);
        SharedSecret { bytes }
    }

    /// The secret bytes, for the key derivation only.
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for SharedSecret {
    fn drop(&mut self) {
        wipe(&mut self.bytes);
    }
}

/// Says how long, never the value.
impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedSecret(<{} secret bytes>)", self.bytes.len())
    }
}

/// `digits` preceded by enough zero bytes to make `len` bytes (callers guarantee it fits).
fn left_pad(digits: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len.saturating_sub(digits.len())];
    out.extend_from_slice(digits);
    out
}

/// The Jacobi symbol `(a/n)` for an odd `n > 0`: 1, -1, or 0 when `a` and `n` share a factor.
/// For a prime `n` it is the Legendre symbol: 1 exactly when `a` is a non-zero square mod `n`.
///
/// The binary algorithm (Cohen, *A Course in Computational Algebraic Number Theory*, 1.4.10):
/// take out factors of 2 with `(2/n) = -1` iff `n = 3, 5 (mod 8)`, then swap `a` and `n` by
/// quadratic reciprocity (`(a/n) = -(n/a)` iff both are `3 mod 4`) and reduce. Like Euclid's
/// algorithm, it takes O(bits) cheap steps, against O(bits) full-size multiplications for
/// `a^((n-1)/2) mod n`. Not constant-time (neither is the rest of `num-bigint`); it only ever
/// sees public values.
fn jacobi(a: &BigUint, n: &BigUint) -> i8 {
    let low_bits = |x: &BigUint| x.iter_u64_digits().next().unwrap_or(0);
    let mut a = a % n;
    let mut n = n.clone();
    let mut symbol = 1i8;
    while a.bits() > 0 {
        let twos = a.trailing_zeros().unwrap_or(0);
        a >>= twos;
        if twos % 2 == 1 && matches!(low_bits(&n) % 8, 3 | 5) {
            symbol = -symbol;
        }
        std::mem::swap(&mut a, &mut n);
        if low_bits(&a) % 4 == 3 && low_bits(&n) % 4 == 3 {
            symbol = -symbol;
        }
        a %= &n;
    }
    if n == BigUint::from(1u32) {
        symbol
    } else {
        0
    }
}

/// Overwrites secret bytes with zeros; `black_box` keeps the compiler from dropping the writes
/// as useless just before the memory is freed (best effort: Rust gives no hard guarantee).
pub(super) fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    black_box(bytes);
}

#[cfg(test)]
mod tests {
    use super::super::GENERATOR;
    use super::*;

    /// `value` encoded as `len` big-endian bytes, for building hostile inputs.
    fn encode(value: &BigUint, len: usize) -> Vec<u8> {
        left_pad(&value.to_bytes_be(), len)
    }

    fn rejection(group: Group, bytes: &[u8]) -> Option<&'static str> {
        match PublicValue::from_bytes(group, bytes) {
            Err(E2eError::InvalidPublicValue(why)) => Some(why),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => None,
        }
    }

    #[test]
    fn both_sides_compute_the_same_secret_in_both_groups() {
        for group in Group::ALL {
            let (alice, alice_public) = EphemeralSecret::generate(group).expect("generate");
            let (bob, bob_public) = EphemeralSecret::generate(group).expect("generate");
            assert_ne!(alice_public, bob_public);
            // What crosses the network is re-validated on arrival.
            let alice_public = PublicValue::from_bytes(group, &alice_public.to_bytes())
                .expect("honest value accepted");
            let bob_public = PublicValue::from_bytes(group, &bob_public.to_bytes())
                .expect("honest value accepted");
            let at_alice = alice.agree(&bob_public).expect("agree");
            let at_bob = bob.agree(&alice_public).expect("agree");
            assert_eq!(at_alice.as_bytes(), at_bob.as_bytes(), "{}", group.name());
            assert_eq!(at_alice.as_bytes().len(), group.byte_len());
        }
    }

    #[test]
    fn exponents_have_the_documented_length_and_top_bit() {
        for group in Group::ALL {
            let (secret, public) = EphemeralSecret::generate(group).expect("generate");
            assert_eq!(secret.exponent.len() * 8, group.exponent_bits());
            assert_eq!(
                secret.exponent_number().bits() as usize,
                group.exponent_bits()
            );
            assert_eq!(public.to_bytes().len(), group.byte_len());
        }
    }

    #[test]
    fn out_of_range_public_values_are_rejected() {
        for group in Group::ALL {
            let p = group.prime();
            let len = group.byte_len();
            let bits = len * 8;
            let number = |n: u32| BigUint::from(n);
            assert_eq!(rejection(group, &encode(&number(0), len)), Some(TOO_SMALL));
            assert_eq!(rejection(group, &encode(&number(1), len)), Some(TOO_SMALL));
            assert_eq!(rejection(group, &encode(&(p - 1u32), len)), Some(MINUS_ONE));
            assert_eq!(rejection(group, &encode(p, len)), Some(NOT_REDUCED));
            assert_eq!(
                rejection(group, &encode(&(p + 1u32), len)),
                Some(NOT_REDUCED)
            );
            // 2^bits needs one byte more than the group allows.
            let two_to_bits = number(1) << bits;
            assert_eq!(
                rejection(group, &two_to_bits.to_bytes_be()),
                Some(WRONG_LENGTH)
            );
            assert_eq!(rejection(group, &vec![0x42; len - 1]), Some(WRONG_LENGTH));
            assert_eq!(rejection(group, &[]), Some(WRONG_LENGTH));
            // p ≡ 7 (mod 8), so -1 is a non-residue and 2 a residue: -2 = p-2 is outside the
            // subgroup of squares, which is the subgroup of order q.
            assert_eq!(
                rejection(group, &encode(&(p - 2u32), len)),
                Some(OUTSIDE_SUBGROUP)
            );
            // The generator itself is fine.
            assert_eq!(rejection(group, &encode(&number(GENERATOR), len)), None);
        }
    }

    #[test]
    fn values_from_the_other_group_are_rejected() {
        let (_, small) = EphemeralSecret::generate(Group::Ffdhe2048).expect("generate");
        let (_, large) = EphemeralSecret::generate(Group::Ffdhe3072).expect("generate");
        assert_eq!(
            rejection(Group::Ffdhe3072, &small.to_bytes()),
            Some(WRONG_LENGTH)
        );
        assert_eq!(
            rejection(Group::Ffdhe2048, &large.to_bytes()),
            Some(WRONG_LENGTH)
        );

        // A valid ffdhe3072 value that fits in 256 bytes but is >= the ffdhe2048 prime.
        let small_p = Group::Ffdhe2048.prime();
        let from_large_group = (1u32..)
            .map(|k| small_p + k)
            .find(|v| rejection(Group::Ffdhe3072, &encode(v, 384)).is_none())
            .expect("half of all numbers are in the subgroup");
        assert!(from_large_group.bits() <= 2048);
        let as_small = encode(&from_large_group, 256);
        assert_eq!(rejection(Group::Ffdhe2048, &as_small), Some(NOT_REDUCED));

        let (secret, _) = EphemeralSecret::generate(Group::Ffdhe2048).expect("generate");
        assert_eq!(
            secret.agree(&large).err(),
            Some(E2eError::InvalidPublicValue(OTHER_GROUP))
        );
    }

    #[test]
    fn degenerate_shared_secrets_are_refused() {
        // Values that validation would stop, built directly to exercise the last line of defence.
        let group = Group::Ffdhe2048;
        let (secret, _) = EphemeralSecret::generate(group).expect("generate");
        for value in [BigUint::from(1u32), group.prime() - 1u32] {
            let forged = PublicValue { group, value };
            assert_eq!(
                secret.agree(&forged).err(),
                Some(E2eError::InvalidPublicValue(DEGENERATE_SECRET))
            );
        }
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let (alice, _) = EphemeralSecret::generate(Group::Ffdhe2048).expect("generate");
        let (_, bob_public) = EphemeralSecret::generate(Group::Ffdhe2048).expect("generate");
        let shared = alice.agree(&bob_public).expect("agree");
        let exponent_hex = alice.exponent_number().to_str_radix(16);
        let secret_hex = BigUint::from_bytes_be(shared.as_bytes()).to_str_radix(16);
        for shown in [format!("{alice:?}"), format!("{shared:?}")] {
            assert!(shown.contains("secret"), "{shown}");
            assert!(!shown.to_lowercase().contains(&exponent_hex[..16]));
            assert!(!shown.to_lowercase().contains(&secret_hex[..16]));
        }
    }

    /// The full check the Jacobi symbol replaces: `Y^q mod p == 1`.
    fn in_subgroup_by_exponentiation(group: Group, y: &BigUint) -> bool {
        y.modpow(group.subgroup_order(), group.prime()) == BigUint::from(1u32)
    }

    /// A number below `p` from the system's random generator.
    fn random_below_p(group: Group) -> BigUint {
        let mut bytes = vec![0u8; group.byte_len()];
        fill_random(&mut bytes).expect("rng");
        BigUint::from_bytes_be(&bytes) % group.prime()
    }

    #[test]
    fn the_jacobi_symbol_agrees_with_the_full_subgroup_check_on_random_values() {
        for group in Group::ALL {
            let p = group.prime();
            let mut seen = [0usize; 2];
            for _ in 0..16 {
                let y = random_below_p(group);
                let by_jacobi = jacobi(&y, p) == 1;
                assert_eq!(by_jacobi, in_subgroup_by_exponentiation(group, &y));
                seen[usize::from(by_jacobi)] += 1;
                // An honest value g^x is always in; its negative -g^x never is (p = 7 mod 8,
                // so -1 is a non-residue).
                let (_, honest) = EphemeralSecret::generate(group).expect("generate");
                assert_eq!(jacobi(&honest.value, p), 1);
                assert_eq!(jacobi(&(p - &honest.value), p), -1);
            }
            // Both answers came up: the comparison was not one-sided.
            assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
        }
    }

    #[test]
    fn the_jacobi_symbol_is_right_on_edge_and_hostile_values() {
        for group in Group::ALL {
            let p = group.prime();
            let number = |n: u32| BigUint::from(n);
            // 0 and p share a factor with p; 1 is a square; p - 1 = -1 is not (p = 3 mod 4).
            assert_eq!(jacobi(&number(0), p), 0);
            assert_eq!(jacobi(p, p), 0);
            assert_eq!(jacobi(&number(1), p), 1);
            assert_eq!(jacobi(&(p - 1u32), p), -1);
            // Values above p are reduced first: p + 1 is like 1, 2p + 2 like 2.
            assert_eq!(jacobi(&(p + 1u32), p), 1);
            assert_eq!(jacobi(&(p * 2u32 + 2u32), p), jacobi(&number(2), p));
            // g = 2 is a residue (p = 7 mod 8) and so are its powers; a generator of the whole
            // group is not. 2 * (-1) = p - 2 generates the full group for these primes.
            assert_eq!(jacobi(&number(2), p), 1);
            assert_eq!(jacobi(&(p - 2u32), p), -1);
            assert!(!in_subgroup_by_exponentiation(group, &(p - 2u32)));
            // Every small value agrees with the full check.
            for n in 2..40u32 {
                let expected = in_subgroup_by_exponentiation(group, &number(n));
                assert_eq!(jacobi(&number(n), p) == 1, expected, "{n}");
            }
        }
        // Against a textbook table: (a/15) for a = 1..=14 (a composite modulus).
        let fifteen = BigUint::from(15u32);
        let table: Vec<i8> = (1..15u32)
            .map(|a| jacobi(&BigUint::from(a), &fifteen))
            .collect();
        assert_eq!(table, [1, 1, 0, 1, 0, 0, -1, 1, 0, 0, -1, 0, -1, -1]);
    }

    #[test]
    fn wipe_zeroes_the_bytes() {
        let mut bytes = vec![0xAB; 40];
        wipe(&mut bytes);
        assert!(bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn summary_shows_ends_and_length() {
        let group = Group::Ffdhe2048;
        let value = PublicValue {
            group,
            value: group.prime() - 2u32,
        };
        assert_eq!(value.summary(), "0xFFFFFFFF…FFFFFFFD (2048 bits)");
    }
}
