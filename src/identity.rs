//! Atem ids: display names for presence. They arrive percent-encoded and may
//! hold any script (CJK host names are common), so the rule is: decode, keep
//! every non-ASCII character, keep ASCII only for letters, digits and `-`.

use percent_encoding::percent_decode_str;

/// The longest atem id we keep, in characters; longer ids are cut.
pub const MAX_ATEM_ID_CHARS: usize = 64;

/// Sanitizes a raw (still percent-encoded) atem id. Returns a generated
/// `atem-<hex>` when nothing survives.
pub fn sanitize_atem_id(raw: &str) -> String {
    let decoded = percent_decode_str(raw).decode_utf8_lossy();
    let kept: String = decoded
        .chars()
        // U+FFFD only stands in for bytes that were not UTF-8: not a name.
        .filter(|c| *c != char::REPLACEMENT_CHARACTER)
        .filter(|c| !c.is_ascii() || c.is_ascii_alphanumeric() || *c == '-')
        .take(MAX_ATEM_ID_CHARS)
        .collect();
    if kept.is_empty() {
        generated_atem_id()
    } else {
        kept
    }
}

/// `atem-` followed by 8 random hex digits.
pub fn generated_atem_id() -> String {
    format!("atem-{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(s: &str) -> String {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    fn is_generated(id: &str) -> bool {
        id.len() == 13 && id.starts_with("atem-") && id[5..].chars().all(|c| c.is_ascii_hexdigit())
    }

    #[test]
    fn chinese_host_names_round_trip() {
        assert_eq!(sanitize_atem_id(&encode("开发机-01")), "开发机-01");
    }

    #[test]
    fn japanese_host_names_round_trip() {
        assert_eq!(sanitize_atem_id(&encode("東京のマシン")), "東京のマシン");
    }

    #[test]
    fn korean_host_names_round_trip() {
        assert_eq!(sanitize_atem_id(&encode("서울-노트북")), "서울-노트북");
    }

    #[test]
    fn ascii_punctuation_and_spaces_are_dropped() {
        assert_eq!(sanitize_atem_id("my host.local!"), "myhostlocal");
        assert_eq!(sanitize_atem_id(&encode("a_b c/d<e>")), "abcde");
        assert_eq!(sanitize_atem_id(&encode("工作站 #3")), "工作站3");
    }

    #[test]
    fn unencoded_input_is_taken_as_is() {
        assert_eq!(sanitize_atem_id("laptop-7"), "laptop-7");
    }

    #[test]
    fn invalid_percent_sequences_do_not_break_decoding() {
        // "%zz" is not an escape: '%' is dropped, the letters stay.
        assert_eq!(sanitize_atem_id("ab%zzcd"), "abzzcd");
        // A lone trailing '%' and a truncated escape.
        assert_eq!(sanitize_atem_id("host%"), "host");
        assert_eq!(sanitize_atem_id("host%e"), "hoste");
        // Bytes that are not UTF-8 are dropped, the rest is kept.
        assert_eq!(sanitize_atem_id("ok%ff%fe"), "ok");
    }

    #[test]
    fn nothing_left_means_a_generated_id() {
        assert!(is_generated(&sanitize_atem_id("")));
        assert!(is_generated(&sanitize_atem_id("!!! ...")));
        assert!(is_generated(&sanitize_atem_id("%20%2F%ff")));
        assert_ne!(sanitize_atem_id(""), sanitize_atem_id(""));
    }

    #[test]
    fn long_ids_are_cut() {
        let long = "x".repeat(500);
        assert_eq!(sanitize_atem_id(&long).chars().count(), MAX_ATEM_ID_CHARS);
    }
}
