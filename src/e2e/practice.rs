//! A practice Diffie–Hellman exchange for the classroom: both sides computed here, with
//! throwaway exponents, every value written out in full so that students can check
//! `pow(g, x, p)` themselves (for example in Python).
//!
//! The exchanges that carry messages never reveal their exponents (`/dh USER` shows only
//! public values; the `explain` tests search its text for the secrets). This one is made
//! for showing: its secrets are used for nothing else and dropped after the text is built.

use num_bigint::BigUint;

use super::dh::EphemeralSecret;
use super::{E2eError, Group, GENERATOR};

/// A practice exchange in `group`: two fresh exponents, both public values and the shared
/// secret computed from each side, as a Python script that checks every equation. Nothing
/// in it is used for any session.
pub fn practice_exchange(group: Group) -> Result<String, E2eError> {
    let (alice, alice_public) = EphemeralSecret::generate(group)?;
    let (bob, bob_public) = EphemeralSecret::generate(group)?;
    let at_alice = alice.agree(&bob_public)?;
    let at_bob = bob.agree(&alice_public)?;
    if at_alice.as_bytes() != at_bob.as_bytes() {
        return Err(E2eError::Malformed(
            "the two sides of a practice exchange disagree".into(),
        ));
    }
    Ok(format!(
        "# A practice Diffie-Hellman exchange in {name} ({bits}-bit safe prime p, g = {g}).\n\
         # Throwaway values: they protect nothing and were used for nothing else.\n\
         # Run this file with python3: every assert must pass.\n\
         p = 0x{p}\n\
         g = {g}\n\
         q = (p - 1) // 2  # prime too: p is a safe prime\n\
         x = {x}  # alice's secret exponent\n\
         y = {y}  # bob's secret exponent\n\
         A = {a}  # alice sends A = g^x mod p\n\
         B = {b}  # bob sends B = g^y mod p\n\
         Z = {z}  # the shared secret\n\
         assert pow(g, x, p) == A and pow(g, y, p) == B\n\
         assert pow(B, x, p) == Z == pow(A, y, p)  # both sides get the same Z\n\
         assert pow(A, q, p) == 1 and pow(B, q, p) == 1  # both values are in the order-q subgroup\n\
         print('all checks passed: g^x, g^y and (g^y)^x = (g^x)^y')\n",
        name = group.name(),
        bits = group.prime().bits(),
        g = GENERATOR,
        p = group.prime().to_str_radix(16),
        x = hex(alice.exponent_bytes()),
        y = hex(bob.exponent_bytes()),
        a = hex(&alice_public.to_bytes()),
        b = hex(&bob_public.to_bytes()),
        z = hex(at_alice.as_bytes()),
    ))
}

/// `bytes` as one number in full, in Python's hex notation.
pub(super) fn hex(bytes: &[u8]) -> String {
    format!("0x{}", BigUint::from_bytes_be(bytes).to_str_radix(16))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The value assigned to `name` in the script, as a number.
    pub(in crate::e2e) fn value(script: &str, name: &str) -> BigUint {
        let line = script
            .lines()
            .find(|line| line.starts_with(&format!("{name} = 0x")))
            .unwrap_or_else(|| panic!("no {name} in\n{script}"));
        let digits = line[name.len() + 5..].split_whitespace().next().unwrap();
        BigUint::parse_bytes(digits.as_bytes(), 16).unwrap()
    }

    /// Runs `script` with python3: every assert in it must pass. python3 is part of the
    /// test environment (CI's TLS scan needs it too): a machine without it fails here
    /// rather than skipping the check.
    pub(in crate::e2e) fn passes_in_python(script: &str) {
        let run = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .expect("python3 runs the script (install python3 to run this test)");
        let said = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(said.contains("all checks passed"), "{said}");
    }

    #[test]
    fn the_script_passes_in_python() {
        passes_in_python(&practice_exchange(Group::Ffdhe2048).expect("practice"));
    }

    #[test]
    fn the_practice_values_satisfy_every_equation_the_script_checks() {
        for group in [Group::Ffdhe2048, Group::Ffdhe3072] {
            let script = practice_exchange(group).unwrap();
            let p = value(&script, "p");
            assert_eq!(&p, group.prime());
            let g = BigUint::from(GENERATOR);
            let (x, y) = (value(&script, "x"), value(&script, "y"));
            let (a, b, z) = (
                value(&script, "A"),
                value(&script, "B"),
                value(&script, "Z"),
            );
            assert_ne!(x, y, "two fresh exponents");
            assert_eq!(g.modpow(&x, &p), a);
            assert_eq!(g.modpow(&y, &p), b);
            assert_eq!(b.modpow(&x, &p), z);
            assert_eq!(a.modpow(&y, &p), z);
        }
    }
}
