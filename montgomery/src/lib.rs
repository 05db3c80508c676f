//! The exponentiations with a secret exponent, on Montgomery arithmetic over 64-bit limbs:
//! `2^x mod p` for key generation ([`pow2_mod`]) and `Y^x mod p` for shared secrets
//! ([`pow_mod`]), used by securechat's end-to-end layer (`Group::generator_power` and
//! `Group::power` in `src/e2e/group.rs`). Measured against num-bigint's `modpow` in
//! `report/performance.md` §8.2 and §8.3 (`bench --dh`).
//!
//! A crate of its own so that debug builds can optimise it (`[profile.dev.package.montgomery]`
//! in the workspace's `Cargo.toml`), as they do num-bigint: unoptimised limb arithmetic is
//! about 13 times slower, and the tests run the real clients, whose every message in an
//! offline conversation takes an exponentiation.
//!
//! *Squaring* is Montgomery's with the product computed as a square (each cross product
//! `a_i a_j` once, then doubled: about 1.5 n² word multiplications against 2 n² for a
//! general Montgomery product); most of either exponentiation is squarings.
//!
//! *`2^x`*: a general `modpow` (num-bigint's: Montgomery multiplication with a 4-bit window)
//! spends, per 4 exponent bits, 4 squarings and 1 multiplication by a table entry. With
//! g = 2 the multiplication is a doubling: shift left one bit and subtract p if the result
//! is not below p, a linear-time step instead of a quadratic one. So left to right over the
//! exponent's bits: square, then double if the bit is 1. Doubling works unchanged on
//! Montgomery forms: `2 (a R) = (2a) R mod p`.
//!
//! *`Y^x`*: the same 4-bit window as `modpow` (4 squarings, then one multiplication by
//! `Y^w` from a table of 16), with the dedicated squaring, and the table entry read by a
//! masked scan of all 16 rather than by index.
//!
//! *Timing.* The sequence of operations depends only on the exponent's length in bytes,
//! not on its bits: in `2^x` every bit costs one squaring and one doubling, and the
//! doubling's result is kept or dropped with a mask built from the bit; in `Y^x` every
//! window costs four squarings, a scan of the whole table and one multiplication (a zero
//! window multiplies by 1). The "subtract p if not below p" steps are masked too; no branch
//! or memory address depends on a secret. That is a property of this source, not a
//! guarantee: the compiler may reintroduce a branch, and 64-bit multiplication is
//! constant-time on the x86-64 and AArch64 cores we know of but not on every CPU. It is
//! still no worse than before: num-bigint's `modpow` chooses its table entry by exponent
//! bits (a secret-dependent memory address) and ends with a conditional subtraction. The
//! setup (`R mod p` and `Y R mod p` by divisions) and the conversion back to a `BigUint`
//! touch only `p`, the public `Y` and the result.

use num_bigint::BigUint;

/// `2^x mod p` for the big-endian exponent `x`, for an odd modulus `p > 1` (the group
/// primes). An empty exponent is 0, giving 1.
pub fn pow2_mod(exponent: &[u8], p: &BigUint) -> BigUint {
    let modulus = Modulus::new(p);
    let n = modulus.limbs.len();
    let mut acc = modulus.one.clone();
    let mut wide = vec![0u64; 2 * n];
    let mut doubled = vec![0u64; n];
    let mut reduced = vec![0u64; n];
    let bits = exponent
        .iter()
        .flat_map(|byte| (0..8).rev().map(move |i| u64::from((byte >> i) & 1)));
    for bit in bits {
        square(&acc, &mut wide);
        modulus.reduce(&mut wide, &mut acc);
        modulus.double(&acc, &mut doubled, &mut reduced);
        // bit = 1: keep 2 acc; bit = 0: keep acc. No branch on the bit.
        let take = 0u64.wrapping_sub(bit);
        for (a, &r) in acc.iter_mut().zip(&reduced) {
            *a = (r & take) | (*a & !take);
        }
    }
    modulus.out_of_form(&mut acc, &mut wide)
}

/// Bits of exponent per table multiplication in [`pow_mod`]: 16 table entries, and per 4
/// bits 4 squarings and 1 multiplication (the window num-bigint's `modpow` uses for
/// exponents of this length).
const WINDOW_BITS: usize = 4;

/// `base^x mod p` for the big-endian exponent `x` (secret), a public `base` and an odd
/// modulus `p > 1`: the shared secret `Y^x`. Left to right over the exponent, 4 bits at a
/// time: 4 squarings, then one Montgomery multiplication by the table entry `base^w`,
/// where `w` is those 4 bits. The entry is read by a masked scan of the whole table, so no
/// memory address depends on the exponent (num-bigint's `modpow` indexes its table by it),
/// and a window of zero bits multiplies by 1 like any other.
pub fn pow_mod(base: &BigUint, exponent: &[u8], p: &BigUint) -> BigUint {
    let modulus = Modulus::new(p);
    let n = modulus.limbs.len();
    // The table in Montgomery form: base^0 .. base^15, each times R. `base` is public.
    let mut in_form = (((base % p) << (64 * n)) % p).to_u64_digits();
    in_form.resize(n, 0);
    let mut wide = vec![0u64; 2 * n];
    let mut table = vec![modulus.one.clone()];
    for w in 1..1 << WINDOW_BITS {
        let mut next = vec![0u64; n];
        multiply(&table[w - 1], &in_form, &mut wide);
        modulus.reduce(&mut wide, &mut next);
        table.push(next);
    }
    let mut acc = modulus.one.clone();
    let mut entry = vec![0u64; n];
    let windows = exponent
        .iter()
        .flat_map(|byte| [usize::from(byte >> 4), usize::from(byte & 0x0F)]);
    for window in windows {
        for _ in 0..WINDOW_BITS {
            square(&acc, &mut wide);
            modulus.reduce(&mut wide, &mut acc);
        }
        entry.fill(0);
        for (w, value) in table.iter().enumerate() {
            // All ones when w is the window, else zero: no branch, no secret index.
            let take = 0u64.wrapping_sub(u64::from(w == window));
            for (e, &v) in entry.iter_mut().zip(value) {
                *e |= v & take;
            }
        }
        multiply(&acc, &entry, &mut wide);
        modulus.reduce(&mut wide, &mut acc);
    }
    modulus.out_of_form(&mut acc, &mut wide)
}

/// An odd modulus `p` of n 64-bit limbs, with what Montgomery reduction needs (R = 2^(64 n)).
struct Modulus {
    /// `p`, least significant limb first.
    limbs: Vec<u64>,
    /// `-p^-1 mod 2^64`: the multiple of p that clears one limb. (For the RFC 7919 primes,
    /// whose low 64 bits are all ones, it is 1.)
    inverse: u64,
    /// `R mod p`: 1 in Montgomery form, n limbs.
    one: Vec<u64>,
}

impl Modulus {
    fn new(p: &BigUint) -> Modulus {
        debug_assert!(
            p.bit(0) && p > &BigUint::from(1u32),
            "p must be odd and > 1"
        );
        let limbs = p.to_u64_digits();
        let low = limbs.first().copied().unwrap_or(1);
        // Newton's iteration for the inverse mod 2^64: each step doubles the correct low
        // bits, and 1 is correct mod 2 for any odd number: 1, 2, 4, ..., 64 bits.
        let mut inverse = 1u64;
        for _ in 0..6 {
            inverse = inverse.wrapping_mul(2u64.wrapping_sub(low.wrapping_mul(inverse)));
        }
        let mut one = ((BigUint::from(1u32) << (64 * limbs.len())) % p).to_u64_digits();
        one.resize(limbs.len(), 0);
        Modulus {
            limbs,
            inverse: inverse.wrapping_neg(),
            one,
        }
    }

    /// Montgomery reduction: `out = t / R mod p` for `t < p R` (2n limbs; overwritten).
    fn reduce(&self, t: &mut [u64], out: &mut [u64]) {
        let n = self.limbs.len();
        // Carry out of limb i + n, added at limb i + n + 1 by the next row.
        let mut extra = 0u64;
        for i in 0..n {
            // Adding m p clears limb i.
            let m = t[i].wrapping_mul(self.inverse);
            let mut carry = 0u64;
            for (ti, &pj) in t[i..i + n].iter_mut().zip(&self.limbs) {
                let s = u128::from(*ti) + u128::from(m) * u128::from(pj) + u128::from(carry);
                *ti = s as u64;
                carry = (s >> 64) as u64;
            }
            let s = u128::from(t[i + n]) + u128::from(carry) + u128::from(extra);
            t[i + n] = s as u64;
            extra = (s >> 64) as u64;
        }
        // (t + m p) / R < 2p: one subtraction at most.
        self.subtract_if_not_below(&t[n..], extra, out);
    }

    /// The number whose Montgomery form is `a` (`a R / R`); `wide` is 2n limbs of scratch.
    fn out_of_form(&self, a: &mut [u64], wide: &mut [u64]) -> BigUint {
        let n = self.limbs.len();
        wide.fill(0);
        wide[..n].copy_from_slice(a);
        self.reduce(wide, a);
        let bytes: Vec<u8> = a.iter().flat_map(|limb| limb.to_le_bytes()).collect();
        BigUint::from_bytes_le(&bytes)
    }

    /// `out = 2a mod p` for `a < p`, with `scratch` for the shifted value.
    fn double(&self, a: &[u64], scratch: &mut [u64], out: &mut [u64]) {
        let mut top = 0u64;
        for (s, &limb) in scratch.iter_mut().zip(a) {
            *s = (limb << 1) | top;
            top = limb >> 63;
        }
        self.subtract_if_not_below(scratch, top, out);
    }

    /// `out = v - p` if `v >= p`, else `v`, where `v` is `value` plus `top` (0 or 1) times R,
    /// and `v < 2p`. Both are computed; a mask picks one.
    fn subtract_if_not_below(&self, value: &[u64], top: u64, out: &mut [u64]) {
        let mut borrow = 0u64;
        for ((o, &v), &p) in out.iter_mut().zip(value).zip(&self.limbs) {
            let (d, b1) = v.overflowing_sub(p);
            let (d, b2) = d.overflowing_sub(borrow);
            *o = d;
            borrow = u64::from(b1 | b2);
        }
        // v < p exactly when the subtraction borrowed and there was no top bit.
        let keep = 0u64.wrapping_sub(borrow & (top ^ 1));
        for (o, &v) in out.iter_mut().zip(value) {
            *o = (v & keep) | (*o & !keep);
        }
    }
}

/// `t = a b` (2n limbs for n-limb `a` and `b`), schoolbook.
fn multiply(a: &[u64], b: &[u64], t: &mut [u64]) {
    let n = a.len();
    t.fill(0);
    for (i, &ai) in a.iter().enumerate() {
        let mut carry = 0u64;
        for (tj, &bj) in t[i..i + n].iter_mut().zip(b) {
            let s = u128::from(*tj) + u128::from(ai) * u128::from(bj) + u128::from(carry);
            *tj = s as u64;
            carry = (s >> 64) as u64;
        }
        t[i + n] = carry;
    }
}

/// `t = a²` (2n limbs for n-limb `a`): each cross product `a_i a_j` (i < j) once, the sum
/// doubled, then the squares `a_i²` added on the diagonal.
fn square(a: &[u64], t: &mut [u64]) {
    let n = a.len();
    t.fill(0);
    for (i, &ai) in a.iter().enumerate() {
        let mut carry = 0u64;
        for (tj, &aj) in t[2 * i + 1..i + n].iter_mut().zip(&a[i + 1..]) {
            let s = u128::from(*tj) + u128::from(ai) * u128::from(aj) + u128::from(carry);
            *tj = s as u64;
            carry = (s >> 64) as u64;
        }
        t[i + n] = carry;
    }
    // The cross sum is below a²/2, so doubling it cannot overflow 2n limbs.
    let mut top = 0u64;
    for limb in t.iter_mut() {
        let next = *limb >> 63;
        *limb = (*limb << 1) | top;
        top = next;
    }
    let mut carry = 0u64;
    for (pair, &ai) in t.chunks_exact_mut(2).zip(a) {
        let sq = u128::from(ai) * u128::from(ai);
        let lo = u128::from(pair[0]) + u128::from(sq as u64) + u128::from(carry);
        pair[0] = lo as u64;
        let hi = u128::from(pair[1]) + (sq >> 64) + (lo >> 64);
        pair[1] = hi as u64;
        carry = (hi >> 64) as u64;
    }
}

#[cfg(test)]
mod tests {
    use rand::RngCore;

    use super::*;

    fn check(exponent: &[u8], p: &BigUint) {
        let expected = BigUint::from(2u32).modpow(&BigUint::from_bytes_be(exponent), p);
        assert_eq!(
            pow2_mod(exponent, p),
            expected,
            "2^{} mod a {}-bit p",
            BigUint::from_bytes_be(exponent),
            p.bits()
        );
    }

    fn check_general(base: &BigUint, exponent: &[u8], p: &BigUint) {
        let expected = base.modpow(&BigUint::from_bytes_be(exponent), p);
        assert_eq!(
            pow_mod(base, exponent, p),
            expected,
            "{base}^{} mod a {}-bit p",
            BigUint::from_bytes_be(exponent),
            p.bits()
        );
    }

    /// `len` random bytes, with the top bit set if `top_bit` (as key generation does).
    fn random_exponent(len: usize, top_bit: bool) -> Vec<u8> {
        let mut x = vec![0u8; len];
        rand::rng().fill_bytes(&mut x);
        if let Some(top) = x.first_mut().filter(|_| top_bit) {
            *top |= 0x80;
        }
        x
    }

    /// One limb, a top limb with few bits (R mod p is then not R - p), random odd moduli of
    /// 800 bits and of the RFC 7919 groups' sizes.
    fn moduli() -> Vec<BigUint> {
        let random_odd = |bits: u64| {
            let mut p = BigUint::from_bytes_be(&random_exponent(bits.div_ceil(8) as usize, false));
            p.set_bit(0, true);
            p.set_bit(bits - 1, true);
            p
        };
        vec![
            BigUint::from(3u32),
            BigUint::from(u64::MAX),
            (BigUint::from(1u32) << 130u32) + 27u32,
            random_odd(800),
            random_odd(2048),
            random_odd(3072),
        ]
    }

    #[test]
    fn the_power_of_two_agrees_with_modpow() {
        for p in &moduli() {
            for len in [0, 1, 8, 32, 33, 40] {
                check(&random_exponent(len, false), p);
                check(&random_exponent(len, true), p);
            }
            for x in [vec![0xFF; 40], vec![0x80], vec![0, 0, 2], vec![0; 40]] {
                check(&x, p);
            }
        }
    }

    #[test]
    fn the_general_power_agrees_with_modpow() {
        for p in &moduli() {
            let random_base = || BigUint::from_bytes_be(&random_exponent(400, false)) % p;
            for len in [0, 1, 8, 33, 40] {
                check_general(&random_base(), &random_exponent(len, true), p);
            }
            for base in [
                BigUint::from(0u32),
                BigUint::from(1u32),
                BigUint::from(2u32),
                p - 1u32,
                p + 5u32,
            ] {
                for x in [vec![0u8; 32], vec![0xFF; 32], Vec::new(), vec![0x80]] {
                    check_general(&base, &x, p);
                }
            }
            // Every window value occurs: 0x01 23 .. EF.
            let every: Vec<u8> = (0..16u8).map(|i| i * 0x11).collect();
            check_general(&random_base(), &every, p);
        }
    }
}
