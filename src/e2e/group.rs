//! The Diffie–Hellman groups we offer: the RFC 7919 "ffdhe" safe-prime groups with generator 2.
//!
//! RFC 7919 builds each prime from the digits of e so that nobody could have chosen it to hide a
//! trapdoor: `p = 2^b - 2^(b-64) + (floor(2^(b-130) * e) + X) * 2^64 - 1`, where `X` is the smallest
//! number that makes both `p` and `q = (p - 1) / 2` prime (a *safe prime*). The top and bottom 64
//! bits of `p` are all ones. The tests below rebuild `p` from that formula and check primality.

use std::sync::LazyLock;

use num_bigint::BigUint;

use montgomery::{pow2_mod, pow_mod};

/// A finite-field Diffie–Hellman group from RFC 7919: safe prime `p = 2q + 1`, generator 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Group {
    /// 2048-bit prime, about 103-bit security: quicker, for slow machines and live demos.
    Ffdhe2048,
    /// 3072-bit prime, about 125-bit security: the default, in line with 128-bit symmetric keys.
    #[default]
    Ffdhe3072,
}

/// The generator of every RFC 7919 group. 2 generates the subgroup of prime order `q`, so every
/// honest public value `2^x mod p` lies in that subgroup.
pub const GENERATOR: u32 = 2;

// `Group::generator_power` computes powers of two: it must change if the generator does.
const _: () = assert!(GENERATOR == 2);

impl Group {
    /// Every group we support, in order of size.
    pub const ALL: [Group; 2] = [Group::Ffdhe2048, Group::Ffdhe3072];

    /// The RFC 7919 name, as used on the wire and in the transcript.
    pub fn name(self) -> &'static str {
        match self {
            Group::Ffdhe2048 => "ffdhe2048",
            Group::Ffdhe3072 => "ffdhe3072",
        }
    }

    /// The group with this RFC 7919 name, if we support it.
    pub fn from_name(name: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|group| group.name() == name)
    }

    /// The prime modulus `p`, parsed once on first use.
    pub fn prime(self) -> &'static BigUint {
        match self {
            Group::Ffdhe2048 => &FFDHE2048_PRIME,
            Group::Ffdhe3072 => &FFDHE3072_PRIME,
        }
    }

    /// `q = (p - 1) / 2`, the prime order of the subgroup that the generator spans.
    pub fn subgroup_order(self) -> &'static BigUint {
        match self {
            Group::Ffdhe2048 => &FFDHE2048_ORDER,
            Group::Ffdhe3072 => &FFDHE3072_ORDER,
        }
    }

    /// `g^x mod p` for the big-endian exponent `x`: key generation's exponentiation. Since
    /// g = 2 it takes squarings and doublings instead of general multiplications (`montgomery/src/lib.rs`),
    /// about 1.7 times as fast as `modpow` here (`report/performance.md` §8.2).
    pub fn generator_power(self, exponent: &[u8]) -> BigUint {
        pow2_mod(exponent, self.prime())
    }

    /// `Y^x mod p` for a public `base` `Y` and the big-endian secret exponent `x`: the shared
    /// secret's exponentiation, on the same Montgomery arithmetic with a 4-bit window read
    /// by a masked scan (`montgomery/src/lib.rs`, measured in `report/performance.md` §8.3).
    pub fn power(self, base: &BigUint, exponent: &[u8]) -> BigUint {
        pow_mod(base, exponent, self.prime())
    }

    /// Bytes in `p`, and so in every encoded public value and shared secret (fixed width).
    pub fn byte_len(self) -> usize {
        match self {
            Group::Ffdhe2048 => 2048 / 8,
            Group::Ffdhe3072 => 3072 / 8,
        }
    }

    /// Estimated symmetric-equivalent strength in bits, as given in RFC 7919 Appendix A.
    pub fn security_bits(self) -> u32 {
        match self {
            Group::Ffdhe2048 => 103,
            Group::Ffdhe3072 => 125,
        }
    }

    /// Length of the secret exponent in bits.
    ///
    /// RFC 7919 §5.2 allows short exponents and gives minimums of 225 bits (ffdhe2048) and 275 bits
    /// (ffdhe3072), a little over twice the strength: the best attack on a short exponent (Pollard's
    /// lambda) costs about `2^(bits/2)`. We round up to whole 64-bit words: 256 and 320 bits. The top
    /// bit is always set (see `dh.rs`), leaving 255 and 319 random bits, still above the minimums.
    /// Compared with a full-size exponent this makes each exponentiation about ten times faster.
    pub fn exponent_bits(self) -> usize {
        match self {
            Group::Ffdhe2048 => 256,
            Group::Ffdhe3072 => 320,
        }
    }
}

/// RFC 7919 Appendix A.1, copied digit for digit.
const FFDHE2048_HEX: &str = "
    FFFFFFFF FFFFFFFF ADF85458 A2BB4A9A AFDC5620 273D3CF1
    D8B9C583 CE2D3695 A9E13641 146433FB CC939DCE 249B3EF9
    7D2FE363 630C75D8 F681B202 AEC4617A D3DF1ED5 D5FD6561
    2433F51F 5F066ED0 85636555 3DED1AF3 B557135E 7F57C935
    984F0C70 E0E68B77 E2A689DA F3EFE872 1DF158A1 36ADE735
    30ACCA4F 483A797A BC0AB182 B324FB61 D108A94B B2C8E3FB
    B96ADAB7 60D7F468 1D4F42A3 DE394DF4 AE56EDE7 6372BB19
    0B07A7C8 EE0A6D70 9E02FCE1 CDF7E2EC C03404CD 28342F61
    9172FE9C E98583FF 8E4F1232 EEF28183 C3FE3B1B 4C6FAD73
    3BB5FCBC 2EC22005 C58EF183 7D1683B2 C6F34A26 C1B2EFFA
    886B4238 61285C97 FFFFFFFF FFFFFFFF";

/// RFC 7919 Appendix A.2, copied digit for digit.
const FFDHE3072_HEX: &str = "
    FFFFFFFF FFFFFFFF ADF85458 A2BB4A9A AFDC5620 273D3CF1
    D8B9C583 CE2D3695 A9E13641 146433FB CC939DCE 249B3EF9
    7D2FE363 630C75D8 F681B202 AEC4617A D3DF1ED5 D5FD6561
    2433F51F 5F066ED0 85636555 3DED1AF3 B557135E 7F57C935
    984F0C70 E0E68B77 E2A689DA F3EFE872 1DF158A1 36ADE735
    30ACCA4F 483A797A BC0AB182 B324FB61 D108A94B B2C8E3FB
    B96ADAB7 60D7F468 1D4F42A3 DE394DF4 AE56EDE7 6372BB19
    0B07A7C8 EE0A6D70 9E02FCE1 CDF7E2EC C03404CD 28342F61
    9172FE9C E98583FF 8E4F1232 EEF28183 C3FE3B1B 4C6FAD73
    3BB5FCBC 2EC22005 C58EF183 7D1683B2 C6F34A26 C1B2EFFA
    886B4238 611FCFDC DE355B3B 6519035B BC34F4DE F99C0238
    61B46FC9 D6E6C907 7AD91D26 91F7F7EE 598CB0FA C186D91C
    AEFE1309 85139270 B4130C93 BC437944 F4FD4452 E2D74DD3
    64F2E21E 71F54BFF 5CAE82AB 9C9DF69E E86D2BC5 22363A0D
    ABC52197 9B0DEADA 1DBF9A42 D5C4484E 0ABCD06B FA53DDEF
    3C1B20EE 3FD59D7C 25E41D2B 66C62E37 FFFFFFFF FFFFFFFF";

/// The primes as big-endian bytes, decoded while compiling: a mistyped digit or a wrong digit
/// count stops the build instead of failing at run time.
const FFDHE2048_BYTES: [u8; 256] = decode_rfc_hex(FFDHE2048_HEX);
/// See [`FFDHE2048_BYTES`].
const FFDHE3072_BYTES: [u8; 384] = decode_rfc_hex(FFDHE3072_HEX);

/// The primes as numbers, built on first use and shared for the life of the program.
static FFDHE2048_PRIME: LazyLock<BigUint> =
    LazyLock::new(|| BigUint::from_bytes_be(&FFDHE2048_BYTES));
/// See [`FFDHE2048_PRIME`].
static FFDHE3072_PRIME: LazyLock<BigUint> =
    LazyLock::new(|| BigUint::from_bytes_be(&FFDHE3072_BYTES));
/// The subgroup orders `q`; p is odd, so `(p - 1) / 2` is `p` shifted right by one bit.
static FFDHE2048_ORDER: LazyLock<BigUint> = LazyLock::new(|| &*FFDHE2048_PRIME >> 1);
/// See [`FFDHE2048_ORDER`].
static FFDHE3072_ORDER: LazyLock<BigUint> = LazyLock::new(|| &*FFDHE3072_PRIME >> 1);

/// Decodes the RFC's layout (upper-case hex digits, spaces and newlines) into `N` bytes.
/// Runs at compile time; any other character or a digit count other than `2 * N` is a build error.
const fn decode_rfc_hex<const N: usize>(text: &str) -> [u8; N] {
    let text = text.as_bytes();
    let mut bytes = [0u8; N];
    let mut digits = 0;
    let mut i = 0;
    while i < text.len() {
        let value = match text[i] {
            b' ' | b'\n' => {
                i += 1;
                continue;
            }
            c @ b'0'..=b'9' => c - b'0',
            c @ b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("RFC 7919 constant: unexpected character"),
        };
        assert!(digits < 2 * N, "RFC 7919 constant: too many hex digits");
        bytes[digits / 2] |= if digits % 2 == 0 { value << 4 } else { value };
        digits += 1;
        i += 1;
    }
    assert!(digits == 2 * N, "RFC 7919 constant: too few hex digits");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `X` for each prime, from RFC 7919 Appendix A.1 and A.2: the smallest offset that gives a
    /// safe prime.
    fn rfc_offset(group: Group) -> u32 {
        match group {
            Group::Ffdhe2048 => 560_316,
            Group::Ffdhe3072 => 2_625_351,
        }
    }

    /// `floor(2^bits * e)`, from the series e = 1/0! + 1/1! + 1/2! + …, summed with 64 guard bits
    /// so the rounding of each term cannot reach the integer part.
    fn e_times_power_of_two(bits: u64) -> BigUint {
        const GUARD_BITS: u64 = 64;
        let scale = BigUint::from(1u32) << (bits + GUARD_BITS);
        let mut sum = BigUint::from(0u32);
        let mut factorial = BigUint::from(1u32);
        let mut k = 0u32;
        loop {
            let term = &scale / &factorial;
            if term == BigUint::from(0u32) {
                break;
            }
            sum += term;
            k += 1;
            factorial *= k;
        }
        sum >> GUARD_BITS
    }

    /// Miller–Rabin with the given bases: false means `n` is certainly composite.
    fn passes_miller_rabin(n: &BigUint, bases: &[u32]) -> bool {
        let one = BigUint::from(1u32);
        let two = BigUint::from(2u32);
        let n_minus_one = n - &one;
        let twos = n_minus_one.trailing_zeros().unwrap_or(0);
        let odd_part = &n_minus_one >> twos;
        'bases: for &base in bases {
            let mut x = BigUint::from(base).modpow(&odd_part, n);
            if x == one || x == n_minus_one {
                continue;
            }
            for _ in 1..twos {
                x = x.modpow(&two, n);
                if x == n_minus_one {
                    continue 'bases;
                }
            }
            return false;
        }
        true
    }

    const MILLER_RABIN_BASES: [u32; 6] = [2, 3, 5, 7, 11, 13];

    #[test]
    fn primes_have_the_rfc_shape() {
        for group in Group::ALL {
            let p = group.prime();
            let bits = (group.byte_len() * 8) as u64;
            assert_eq!(p.bits(), bits, "{}", group.name());
            let all_ones_64 = BigUint::from(u64::MAX);
            assert_eq!(
                p & &all_ones_64,
                all_ones_64,
                "low 64 bits of {}",
                group.name()
            );
            assert_eq!(
                p >> (bits - 64),
                all_ones_64,
                "top 64 bits of {}",
                group.name()
            );
        }
    }

    #[test]
    fn primes_match_the_rfc_formula_built_from_e() {
        for group in Group::ALL {
            let b = (group.byte_len() * 8) as u64;
            let one = BigUint::from(1u32);
            let middle = e_times_power_of_two(b - 130) + rfc_offset(group);
            let rebuilt = (&one << b) - (&one << (b - 64)) + (middle << 64u32) - &one;
            assert_eq!(&rebuilt, group.prime(), "{}", group.name());
        }
    }

    #[test]
    fn primes_are_safe_primes() {
        for group in Group::ALL {
            let p = group.prime();
            let q = group.subgroup_order();
            assert_eq!(&(q * 2u32 + 1u32), p);
            assert!(
                passes_miller_rabin(p, &MILLER_RABIN_BASES),
                "p of {}",
                group.name()
            );
            assert!(
                passes_miller_rabin(q, &MILLER_RABIN_BASES),
                "q of {}",
                group.name()
            );
        }
        // The test itself must be able to say no: 3p is composite.
        let three_p = Group::Ffdhe2048.prime() * 3u32;
        assert!(!passes_miller_rabin(&three_p, &MILLER_RABIN_BASES));
    }

    #[test]
    fn generator_spans_the_prime_order_subgroup() {
        for group in Group::ALL {
            let g = BigUint::from(GENERATOR);
            let g_to_q = g.modpow(group.subgroup_order(), group.prime());
            assert_eq!(g_to_q, BigUint::from(1u32), "{}", group.name());
        }
    }

    #[test]
    fn every_group_is_pinned_in_order_with_all_its_parameters() {
        // name, bits, RFC 7919 strength, exponent bits, SHA-256 of p as RFC 7919 prints it.
        let pinned = [
            (
                "ffdhe2048",
                2048,
                103,
                256,
                "9cd3b7f336872f46c09428d1bbc19877a4d440512cda8d1c1cf0cd6e33698966",
            ),
            (
                "ffdhe3072",
                3072,
                125,
                320,
                "0eaf67db3a839156d5013494a5318a772b5697d270d721f37f092efc69ea5a17",
            ),
        ];
        assert_eq!(Group::ALL.len(), pinned.len());
        let one = BigUint::from(1u32);
        for (group, (name, bits, strength, exponent_bits, p_sha256)) in
            Group::ALL.into_iter().zip(pinned)
        {
            assert_eq!(group.name(), name);
            assert_eq!(group.byte_len() * 8, bits, "{name}");
            assert_eq!(group.prime().bits(), bits as u64, "{name}");
            assert_eq!(group.security_bits(), strength, "{name}");
            assert_eq!(group.exponent_bits(), exponent_bits, "{name}");
            let digest =
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &group.prime().to_bytes_be());
            let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, p_sha256, "{name}");
            // The order: q = (p - 1) / 2, and g = 2 has order exactly q (q is prime, g^q = 1,
            // g != 1), so every honest public value lies in the subgroup of order q.
            let (p, q) = (group.prime(), group.subgroup_order());
            assert_eq!(&(q * 2u32 + 1u32), p, "{name}");
            let g = BigUint::from(GENERATOR);
            assert_eq!(GENERATOR, 2);
            assert_eq!(g.modpow(q, p), one, "{name}");
            assert_ne!(g, one);
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for group in Group::ALL {
            assert_eq!(Group::from_name(group.name()), Some(group));
        }
        assert_eq!(Group::from_name("FFDHE3072"), None);
        assert_eq!(Group::from_name("modp2048"), None);
        assert_eq!(Group::default(), Group::Ffdhe3072);
    }

    /// Exponents of the group's length: random with the top bit set (as key generation
    /// makes them), and the edges.
    fn exponents(group: Group) -> Vec<Vec<u8>> {
        use rand::RngCore;
        let len = group.exponent_bits() / 8;
        let mut all: Vec<Vec<u8>> = (0..20)
            .map(|_| {
                let mut x = vec![0u8; len];
                rand::rng().fill_bytes(&mut x);
                x[0] |= 0x80;
                x
            })
            .collect();
        let mut top_bit_only = vec![0u8; len];
        top_bit_only[0] = 0x80;
        let mut one = vec![0u8; len];
        one[len - 1] = 1;
        all.extend([vec![0xFF; len], top_bit_only, one, Vec::new()]);
        all
    }

    #[test]
    fn both_exponentiations_agree_with_modpow_in_every_group() {
        for group in Group::ALL {
            let p = group.prime();
            let g = BigUint::from(GENERATOR);
            for x in exponents(group) {
                let n = BigUint::from_bytes_be(&x);
                let y = group.generator_power(&x);
                assert_eq!(y, g.modpow(&n, p), "{} g^x", group.name());
                // A public value as a peer would send it, raised to another exponent.
                let z = group.power(&y, &x);
                assert_eq!(z, y.modpow(&n, p), "{} Y^x", group.name());
            }
            let q = group.subgroup_order().to_bytes_be();
            assert_eq!(group.generator_power(&q), BigUint::from(1u32), "g^q = 1");
            assert_eq!(group.power(&(p - 1u32), &[2]), BigUint::from(1u32));
        }
    }

    #[test]
    fn exponents_meet_the_rfc_minimums_after_fixing_the_top_bit() {
        // The top bit is always set, so one bit fewer than the length is random.
        let random_bits = |group: Group| group.exponent_bits() - 1;
        assert!(random_bits(Group::Ffdhe2048) >= 225);
        assert!(random_bits(Group::Ffdhe3072) >= 275);
        for group in Group::ALL {
            assert!(random_bits(group) >= 2 * group.security_bits() as usize);
            assert_eq!(group.exponent_bits() % 64, 0);
        }
    }
}
