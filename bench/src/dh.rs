//! `--dh`: what one end-to-end key agreement costs, for ffdhe2048 and ffdhe3072, and how
//! that compares with `openssl speed ffdhNNNN`.
//!
//! One *agreement* is the whole exchange of `src/e2e/handshake.rs` run in one thread:
//! `Initiator::start` → `Responder::accept` → `Initiator::finish` → `Responder::confirm`,
//! with two identity keys made beforehand (not timed). That is, per side: a short-exponent
//! key generation `g^x`, validation of the peer's value including the subgroup check (a
//! Jacobi symbol, equivalent to `Y^q = 1` for a safe prime and far cheaper), the shared
//! secret `Y^x` (short), one Ed25519 signature and one verification, and HKDF: four
//! exponentiations in all.
//!
//! OpenSSL's `ffdh` figure is something else: one `op` is one party's `EVP_PKEY_derive`,
//! i.e. `Z = Y^x mod p` with its short exponent (about 225 bits for ffdhe2048 and 275 for
//! ffdhe3072, against our 256 and 320) and a check that `Z` is not 1 or p-1 — no key
//! generation, no subgroup check, no signatures. So three ratios are reported: per
//! agreement (unlike work), per exponentiation (closer), and OpenSSL's derive against our
//! shared-secret step alone (the same operation: the fairest).
//!
//! Key generation's `g^x` is also timed two ways, in rounds with fresh exponents: num-bigint's
//! generic `modpow` (the path before) and `Group::generator_power`, the g = 2 path the
//! library uses (squarings and doublings, `montgomery/src/lib.rs`), each checked against the other.
//! OpenSSL's key generation is the same constant-time exponentiation as its derive (it does
//! not special-case g = 2 for a secret exponent), so its `ffdh` op stands in for it.

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use num_bigint::BigUint;
use rand::RngCore;
use securechat::e2e::{
    E2eError, EphemeralSecret, Group, IdentityKey, Initiator, PublicValue, Responder, GENERATOR,
};
use securechat::{Error, Result};

use crate::results::{
    DhGroupResult, DhParts, DhReport, OpensslDh, Percentiles, PowerPaths, PowerRound,
};

/// Exponentiations in one agreement: per side key generation and shared secret (the
/// subgroup check is a Jacobi symbol, not an exponentiation).
const MODEXPS_PER_AGREEMENT: u32 = 4;

/// Untimed agreements first (tables parsed, caches warm).
const WARM_UP_RUNS: usize = 2;

/// Rounds of each exponentiation comparison: their spread shows how steady the machine was.
const POWER_ROUNDS: usize = 5;

/// Fresh exponents per round of each exponentiation comparison (each timed both ways).
const POWER_EXPONENTS: usize = 40;

/// Times `runs` agreements per group, the parts alone, and `openssl speed` (for
/// `openssl_seconds` per group; 0 skips it) if openssl is installed.
pub fn run(runs: usize, openssl_seconds: u32) -> Result<DhReport> {
    let runs = runs.max(1);
    let alice = IdentityKey::generate().map_err(e2e)?;
    let bob = IdentityKey::generate().map_err(e2e)?;
    let openssl_version = if openssl_seconds > 0 {
        openssl_version()
    } else {
        None
    };
    let mut groups = Vec::new();
    for group in Group::ALL {
        eprintln!("dh: {} x {runs} agreements", group.name());
        for _ in 0..WARM_UP_RUNS {
            agreement(group, &alice, &bob)?;
        }
        let mut nanos = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            agreement(group, &alice, &bob)?;
            nanos.push(t.elapsed().as_nanos() as u64);
        }
        let mean_ms = nanos.iter().sum::<u64>() as f64 / nanos.len() as f64 / 1e6;
        let agreements_per_s = 1e3 / mean_ms.max(1e-9);
        let parts_ms = parts(group, &alice, runs)?;
        eprintln!(
            "dh: {} g^x and Y^x, modpow vs the library, {POWER_ROUNDS} x {POWER_EXPONENTS} exponents",
            group.name()
        );
        let g = BigUint::from(GENERATOR);
        let keygen_paths =
            power_paths(group, "g^x", |_| g.clone(), |_, x| group.generator_power(x))?;
        let secret_paths = power_paths(group, "Y^x", random_value, |y, x| group.power(y, x))?;
        let openssl = openssl_version.as_ref().and_then(|version| {
            eprintln!(
                "dh: openssl speed -seconds {openssl_seconds} {}",
                ffdh(group)
            );
            openssl_speed(group, openssl_seconds, version).map(|(command, version, op_per_s)| {
                OpensslDh {
                    command,
                    version,
                    op_per_s,
                    ratio_per_agreement: op_per_s / agreements_per_s,
                    ratio_per_modexp: op_per_s
                        / (agreements_per_s * f64::from(MODEXPS_PER_AGREEMENT)),
                    ratio_same_operation: op_per_s * parts_ms.shared_secret_ms / 1e3,
                }
            })
        });
        groups.push(DhGroupResult {
            group: group.name().into(),
            exponent_bits: group.exponent_bits(),
            agreement_ms: Percentiles::of_nanos(&mut nanos),
            agreement_mean_ms: mean_ms,
            agreements_per_s,
            modexps_per_agreement: MODEXPS_PER_AGREEMENT,
            parts_ms,
            openssl,
            keygen_paths,
            secret_paths,
        });
    }
    Ok(DhReport { runs, groups })
}

fn e2e(e: E2eError) -> Error {
    Error::Protocol(format!("end-to-end key agreement failed: {e}"))
}

/// One complete agreement between alice (initiator) and bob (responder).
fn agreement(group: Group, alice: &IdentityKey, bob: &IdentityKey) -> Result<()> {
    let (alice_pub, bob_pub) = (alice.public_key(), bob.public_key());
    let (initiator, init) = Initiator::start("alice", "bob", group).map_err(e2e)?;
    let (responder, reply) =
        Responder::accept("bob", "alice", &init, bob, &alice_pub).map_err(e2e)?;
    let (alice_session, confirm) = initiator.finish(&reply, alice, &bob_pub).map_err(e2e)?;
    let bob_session = responder.confirm(&confirm).map_err(e2e)?;
    black_box((alice_session, bob_session));
    Ok(())
}

/// Median time of each part of an agreement, over `runs` repetitions, in milliseconds.
fn parts(group: Group, key: &IdentityKey, runs: usize) -> Result<DhParts> {
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let mut nanos = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            f()?;
            nanos.push(t.elapsed().as_nanos() as u64);
        }
        Ok(median_ms(nanos))
    };
    let (secret, _) = EphemeralSecret::generate(group).map_err(e2e)?;
    let (_, peer) = EphemeralSecret::generate(group).map_err(e2e)?;
    let peer_bytes = peer.to_bytes();
    let transcript = vec![0x5a_u8; 2 * group.byte_len() + 100];
    let signature = key.sign(&transcript).map_err(e2e)?;
    let public = key.public_key();
    Ok(DhParts {
        keygen_ms: time(&mut || {
            black_box(EphemeralSecret::generate(group).map_err(e2e)?);
            Ok(())
        })?,
        validate_ms: time(&mut || {
            black_box(PublicValue::from_bytes(group, &peer_bytes).map_err(e2e)?);
            Ok(())
        })?,
        shared_secret_ms: time(&mut || {
            black_box(secret.agree(&peer).map_err(e2e)?);
            Ok(())
        })?,
        sign_ms: time(&mut || {
            black_box(key.sign(&transcript).map_err(e2e)?);
            Ok(())
        })?,
        verify_ms: time(&mut || {
            public.verify(&transcript, &signature).map_err(e2e)?;
            Ok(())
        })?,
    })
}

/// One exponentiation by `modpow` and by the library's `path`, in [`POWER_ROUNDS`] rounds
/// of [`POWER_EXPONENTS`] fresh exponents (and bases from `base`), alternating path by
/// exponent. An error if the two ever disagree.
fn power_paths(
    group: Group,
    what: &str,
    base: impl Fn(Group) -> BigUint,
    path: impl Fn(&BigUint, &[u8]) -> BigUint,
) -> Result<PowerPaths> {
    let mut exponent = vec![0u8; group.exponent_bits() / 8];
    let mut rounds = Vec::with_capacity(POWER_ROUNDS);
    for _ in 0..POWER_ROUNDS {
        let mut modpow_nanos = Vec::with_capacity(POWER_EXPONENTS);
        let mut library_nanos = Vec::with_capacity(POWER_EXPONENTS);
        for _ in 0..POWER_EXPONENTS {
            rand::rng().fill_bytes(&mut exponent);
            exponent[0] |= 0x80;
            let b = base(group);
            let t = Instant::now();
            let generic = b.modpow(&BigUint::from_bytes_be(&exponent), group.prime());
            modpow_nanos.push(t.elapsed().as_nanos() as u64);
            let t = Instant::now();
            let library = path(&b, &exponent);
            library_nanos.push(t.elapsed().as_nanos() as u64);
            if generic != library {
                return Err(Error::Protocol(format!(
                    "{}: the library and modpow disagree on {what}",
                    group.name()
                )));
            }
        }
        rounds.push(PowerRound {
            modpow_ms: median_ms(modpow_nanos),
            library_ms: median_ms(library_nanos),
        });
    }
    Ok(PowerPaths {
        exponents_per_round: POWER_EXPONENTS,
        rounds,
    })
}

/// A random number below the group's prime: a peer's public value, for timing `Y^x`.
fn random_value(group: Group) -> BigUint {
    let mut bytes = vec![0u8; group.byte_len()];
    rand::rng().fill_bytes(&mut bytes);
    BigUint::from_bytes_be(&bytes) % group.prime()
}

/// The median of some timings in nanoseconds, in milliseconds.
fn median_ms(mut nanos: Vec<u64>) -> f64 {
    Percentiles::of_nanos(&mut nanos).p50
}

/// `openssl speed`'s algorithm name for `group`.
fn ffdh(group: Group) -> &'static str {
    match group {
        Group::Ffdhe2048 => "ffdh2048",
        Group::Ffdhe3072 => "ffdh3072",
    }
}

/// `openssl version`, or `None` if there is no usable `openssl`.
fn openssl_version() -> Option<String> {
    let out = Command::new("openssl").arg("version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs `openssl speed` for `group`: (command, version, op/s). `None` (with a note on
/// stderr) if it fails or prints nothing we can read.
fn openssl_speed(group: Group, seconds: u32, version: &str) -> Option<(String, String, f64)> {
    let seconds = seconds.to_string();
    let args = ["speed", "-seconds", &seconds, ffdh(group)];
    let command = format!("openssl {}", args.join(" "));
    let out = match Command::new("openssl").args(args).output() {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            eprintln!("dh: {command} failed ({})", out.status);
            return None;
        }
        Err(e) => {
            eprintln!("dh: cannot run {command}: {e}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed = parse_openssl_ffdh(&text, group.byte_len() * 8);
    if parsed.is_none() {
        eprintln!("dh: no ffdh line in the output of {command}");
    }
    parsed.map(|op_per_s| (command, version.to_owned(), op_per_s))
}

/// The `op/s` column of the result line for a `bits`-bit group in `openssl speed ffdh`
/// output, e.g. `3072 bits ffdh   0.0012s    829.3` → 829.3. (OpenSSL 3.0 prints the
/// group size first; later versions may add the group name in brackets.)
fn parse_openssl_ffdh(output: &str, bits: usize) -> Option<f64> {
    let prefix = format!("{bits} bits ffdh");
    output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(&prefix))
        .find_map(|l| l.split_whitespace().last()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_speed_output_is_parsed() {
        let out = "version: 3.0.19\n                       op     op/s\n\
                   2048 bits ffdh   0.0005s   1850.5\n";
        assert_eq!(parse_openssl_ffdh(out, 2048), Some(1850.5));
        assert_eq!(parse_openssl_ffdh(out, 3072), None);
        let named = " 3072 bits ffdh (ffdhe3072)   0.0012s    829.3\n";
        assert_eq!(parse_openssl_ffdh(named, 3072), Some(829.3));
    }
}
