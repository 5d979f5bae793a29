//! Random identifiers and secrets, and the hashes we store instead of them.
//!
//! Every secret the relay hands out (session ids, astation tokens, one-time
//! codes, stream tickets, link secrets) carries at least 128 bits of entropy
//! except the one-time code, which a person types and which is guarded by an
//! attempt limit and a short lifetime instead.

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

/// Whether `s` could be an id we issued (vault, astation, link): short,
/// ASCII letters, digits and `-` only. Anything else cannot exist, so it is
/// answered as "not found" without reaching the store.
pub fn is_plain_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `len` random base62 characters.
pub fn base62(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A vault id: `v-` and 12 base62 characters (about 71 bits), so ids can't be
/// enumerated.
pub fn vault_id() -> String {
    format!("v-{}", base62(12))
}

/// A public astation id (not a secret).
pub fn astation_id() -> String {
    format!("a-{}", base62(12))
}

/// A session id, which is also the session's bearer credential (~238 bits).
pub fn session_id() -> String {
    format!("s-{}", base62(40))
}

/// An astation's bearer token (~238 bits).
pub fn astation_token() -> String {
    format!("ast-{}", base62(40))
}

/// A generic secret with a readable prefix (tickets, links, admin token).
pub fn token(prefix: &str) -> String {
    format!("{prefix}-{}", base62(40))
}

/// An eight-digit one-time pairing code.
pub fn otp() -> String {
    format!("{:08}", rand::rng().random_range(0..100_000_000u32))
}

/// Hex SHA-256 of a secret. The secrets are long and random, so a fast hash
/// is enough: there is no dictionary to attack.
pub fn hash(secret: &str) -> String {
    // Every authenticated request hashes its credential: one string,
    // written digit by digit, rather than a formatted string per byte.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(digest.len() * 2);
    for b in digest {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Compares a presented secret with a stored hash without an early exit on
/// the first differing byte.
pub fn matches_hash(secret: &str, stored_hash: &str) -> bool {
    let presented = hash(secret);
    presented.len() == stored_hash.len()
        && presented
            .bytes()
            .zip(stored_hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_length() {
        let v = vault_id();
        assert!(v.starts_with("v-") && v.len() == 14, "{v}");
        assert!(v[2..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(session_id(), session_id());
        assert_eq!(otp().len(), 8);
    }

    #[test]
    fn only_plain_ids_pass() {
        assert!(is_plain_id(&vault_id()));
        assert!(is_plain_id("a-1"));
        for bad in ["", "v-1\0", "v/1", "v 1", "é", &"x".repeat(65)] {
            assert!(!is_plain_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn hashes_match_only_their_secret() {
        let h = hash("secret-one");
        assert_eq!(h.len(), 64);
        assert!(matches_hash("secret-one", &h));
        assert!(!matches_hash("secret-two", &h));
        assert!(!matches_hash("secret-one", "short"));
        // Lowercase hex of the digest, as stored hashes have always been.
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
