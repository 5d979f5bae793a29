//! Envelopes: `e1.<kid>.<payload>`, the sealed form of a vault value.
//!
//! The relay never opens an envelope; it only checks its shape, so that a
//! work session that wants no plaintext on the server gets none, and a
//! damaged or truncated value is refused instead of stored.
//!
//! - `kid`: exactly 8 lowercase hex characters (which key sealed it);
//! - `payload`: non-empty standard base64 with padding, strict (canonical
//!   padding and trailing bits), decoding to at least [`MIN_SEALED_BYTES`]
//!   (a 24-byte nonce and a 16-byte tag, then the ciphertext).
//!
//! Postgres applies the same rules in SQL (`encryption_shape` and
//! `encryption_field_class`, migrations/0004_encryption.sql, with
//! `encryption_shape` in PL/pgSQL since 0010); the shared
//! test suite runs both over the same values.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// What every envelope starts with.
pub const PREFIX: &str = "e1.";
/// Length of a kid, in hex characters.
pub const KID_LEN: usize = 8;
/// The fewest bytes a payload decodes to: nonce (24) and tag (16).
pub const MIN_SEALED_BYTES: usize = 40;

/// Why a value that starts with `e1.` is not an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// The kid is not 8 lowercase hex characters followed by `.`.
    Kid,
    /// The payload is empty or not strict standard base64 with padding.
    Base64,
    /// The payload decodes to fewer than [`MIN_SEALED_BYTES`] bytes.
    Short,
}

impl Malformed {
    /// What is wrong, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Malformed::Kid => {
                "it starts with \"e1.\" but its kid is not 8 lowercase hex characters followed by \".\""
            }
            Malformed::Base64 => {
                "it starts with \"e1.\" but its payload is not standard base64 with padding"
            }
            Malformed::Short => {
                "it starts with \"e1.\" but its payload decodes to fewer than 40 bytes (nonce and tag)"
            }
        }
    }
}

/// The shape of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape<'a> {
    /// The empty string (accepted in every mode, never counted).
    Empty,
    /// Anything not starting with `e1.`.
    Plain,
    /// A well-formed envelope sealed with key `kid`.
    Sealed { kid: &'a str },
    /// Starts with `e1.` but is not a well-formed envelope.
    Malformed(Malformed),
}

/// How a stored value counts against the work session's current kid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Empty,
    Plaintext,
    /// A well-formed envelope with the current kid.
    Ciphertext,
    /// Starts with `e1.` but is not an envelope with the current kid.
    Obsolete,
}

/// Whether `kid` is exactly 8 lowercase hex characters.
pub fn is_valid_kid(kid: &str) -> bool {
    kid.len() == KID_LEN && kid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads the shape of a value.
pub fn shape(value: &str) -> Shape<'_> {
    if value.is_empty() {
        return Shape::Empty;
    }
    let Some(rest) = value.strip_prefix(PREFIX) else {
        return Shape::Plain;
    };
    let Some((kid, payload)) = rest.split_once('.') else {
        return Shape::Malformed(Malformed::Kid);
    };
    if !is_valid_kid(kid) {
        return Shape::Malformed(Malformed::Kid);
    }
    if payload.is_empty() {
        return Shape::Malformed(Malformed::Base64);
    }
    match STANDARD.decode(payload) {
        Ok(bytes) if bytes.len() >= MIN_SEALED_BYTES => Shape::Sealed { kid },
        Ok(_) => Shape::Malformed(Malformed::Short),
        Err(_) => Shape::Malformed(Malformed::Base64),
    }
}

/// How a value counts when the work session's current kid is `kid`
/// (`None` in mode `off`, where every envelope is obsolete).
pub fn classify(value: &str, kid: Option<&str>) -> Field {
    match shape(value) {
        Shape::Empty => Field::Empty,
        Shape::Plain => Field::Plaintext,
        Shape::Sealed { kid: k } if Some(k) == kid => Field::Ciphertext,
        Shape::Sealed { .. } | Shape::Malformed(_) => Field::Obsolete,
    }
}

/// The size limit for an envelope: the length of the envelope that seals a
/// plaintext of `max_plain_bytes` (prefix, kid and dot, then the base64 of
/// nonce, tag and ciphertext): 12 + 4 × ceil((max_plain_bytes + 40) / 3).
pub fn sealed_limit(max_plain_bytes: usize) -> usize {
    let sealed = max_plain_bytes.saturating_add(MIN_SEALED_BYTES);
    (PREFIX.len() + KID_LEN + 1).saturating_add(sealed.div_ceil(3).saturating_mul(4))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KID: &str = "0a1b2c3d";

    fn seal(kid: &str, bytes: usize) -> String {
        format!("e1.{kid}.{}", STANDARD.encode(vec![7u8; bytes]))
    }

    #[test]
    fn kids_are_eight_lowercase_hex_characters() {
        assert!(is_valid_kid("0a1b2c3d"));
        assert!(is_valid_kid("ffffffff"));
        for bad in [
            "",
            "0a1b2c3",
            "0a1b2c3d4",
            "0A1B2C3D",
            "0a1b2c3g",
            "0a1b 2c3",
            "０a1b2c3d",
        ] {
            assert!(!is_valid_kid(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_well_formed_envelope_is_sealed_with_its_kid() {
        assert_eq!(shape(&seal(KID, 40)), Shape::Sealed { kid: KID });
        assert_eq!(shape(&seal(KID, 1000)), Shape::Sealed { kid: KID });
        // Every padding length.
        for n in [40, 41, 42, 43] {
            assert_eq!(shape(&seal(KID, n)), Shape::Sealed { kid: KID }, "{n}");
        }
    }

    #[test]
    fn empty_and_plain_values() {
        assert_eq!(shape(""), Shape::Empty);
        assert_eq!(shape("hello"), Shape::Plain);
        assert_eq!(shape("e1"), Shape::Plain);
        assert_eq!(shape("E1.0a1b2c3d.AAAA"), Shape::Plain);
        assert_eq!(shape(" e1.0a1b2c3d.AAAA"), Shape::Plain);
    }

    #[test]
    fn bad_kids_are_malformed() {
        let payload = STANDARD.encode([0u8; 40]);
        for bad in [
            "e1.".to_string(),
            "e1.0a1b2c3d".to_string(),
            format!("e1.0A1B2C3D.{payload}"),
            format!("e1.0a1b2c.{payload}"),
            format!("e1.0a1b2c3d0.{payload}"),
            format!("e1..{payload}"),
        ] {
            assert_eq!(shape(&bad), Shape::Malformed(Malformed::Kid), "{bad:?}");
        }
    }

    #[test]
    fn bad_base64_is_malformed() {
        let good = STANDARD.encode([1u8; 41]);
        let unpadded = good.trim_end_matches('=').to_string();
        let urlsafe = STANDARD
            .encode([0xfbu8; 45])
            .replace('+', "-")
            .replace('/', "_");
        for bad in [
            String::new(),
            unpadded,
            urlsafe,
            format!("{good}="),
            format!(" {good}"),
            format!("{good}\n"),
            format!("{}.{good}", &good[..4]),
            // Non-canonical trailing bits: "AB==" decodes with bits left over.
            format!("{}AB==", "A".repeat(52)),
        ] {
            assert_eq!(
                shape(&format!("e1.{KID}.{bad}")),
                Shape::Malformed(Malformed::Base64),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn payloads_under_forty_bytes_are_short() {
        assert_eq!(shape(&seal(KID, 39)), Shape::Malformed(Malformed::Short));
        assert_eq!(shape(&seal(KID, 1)), Shape::Malformed(Malformed::Short));
    }

    #[test]
    fn fields_count_against_the_current_kid() {
        let mine = seal(KID, 48);
        let other = seal("ffffffff", 48);
        assert_eq!(classify("", Some(KID)), Field::Empty);
        assert_eq!(classify("notes", Some(KID)), Field::Plaintext);
        assert_eq!(classify(&mine, Some(KID)), Field::Ciphertext);
        assert_eq!(classify(&other, Some(KID)), Field::Obsolete);
        assert_eq!(classify("e1.broken", Some(KID)), Field::Obsolete);
        // Without a kid (mode off) every envelope is obsolete.
        assert_eq!(classify(&mine, None), Field::Obsolete);
        assert_eq!(classify("notes", None), Field::Plaintext);
    }

    #[test]
    fn the_sealed_limit_fits_exactly_the_largest_plaintext() {
        assert_eq!(sealed_limit(256 * 1024), 349_592);
        for max in [0, 1, 2, 3, 100, 4096] {
            let largest = seal(KID, max + MIN_SEALED_BYTES);
            assert_eq!(largest.len(), sealed_limit(max), "{max}");
        }
    }
}
