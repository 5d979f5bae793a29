//! Query strings, decoded exactly. `application/x-www-form-urlencoded`
//! rules (`+` is a space, `%XX` a byte), but a value whose bytes are not
//! UTF-8 is an error rather than U+FFFD: two client ids must never decode
//! to one principal. Only the fields a route asks for are decoded, so a
//! parameter read elsewhere (the raw `atem_id`, which is sanitized, not
//! decoded) cannot make a request fail here.

use std::borrow::Cow;

use percent_encoding::percent_decode;
use serde::de::value::{Error as DeError, MapDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

/// Decodes one `+`/percent-encoded component into its bytes.
fn decode_bytes(raw: &str) -> Cow<'_, [u8]> {
    if raw.contains('+') {
        let spaced = raw.replace('+', " ");
        Cow::Owned(percent_decode(spaced.as_bytes()).collect())
    } else {
        percent_decode(raw.as_bytes()).into()
    }
}

/// The decoded name of one `name=value` pair of a raw query string
/// (undecodable bytes as U+FFFD: only for recognizing a name).
pub fn name_of(pair: &str) -> String {
    let raw = pair.split('=').next().unwrap_or_default();
    String::from_utf8_lossy(&decode_bytes(raw)).into_owned()
}

/// A query value: its text, or the key it belongs to when its bytes are not
/// UTF-8 (reported only if the route reads that field).
enum Value {
    Text(String),
    NotUtf8(String),
}

/// Deserializes `T` from a raw query string (without the `?`).
pub fn from_query<T: DeserializeOwned>(query: &str) -> Result<T, String> {
    let mut pairs = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = String::from_utf8(decode_bytes(raw_key).into_owned())
            .map_err(|_| "a query parameter name is not valid UTF-8 once decoded".to_string())?;
        let value = match String::from_utf8(decode_bytes(raw_value).into_owned()) {
            Ok(text) => Value::Text(text),
            Err(_) => Value::NotUtf8(key.clone()),
        };
        pairs.push((key, value));
    }
    T::deserialize(MapDeserializer::<_, DeError>::new(pairs.into_iter())).map_err(|e| e.to_string())
}

impl<'de> IntoDeserializer<'de, DeError> for Value {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for Value {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Value::Text(text) => visitor.visit_string(text),
            Value::NotUtf8(key) => Err(de::Error::custom(format!(
                "`{key}` is not valid UTF-8 once percent-decoded"
            ))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    /// Parameters the route does not read are skipped undecoded.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Q {
        id: Option<String>,
        since: Option<String>,
    }

    #[test]
    fn decodes_percent_and_plus() {
        let q: Q = from_query("id=a%20b+c&since=4").unwrap();
        assert_eq!(q.id.as_deref(), Some("a b c"));
        assert_eq!(q.since.as_deref(), Some("4"));
        let q: Q = from_query("id=%E4%BD%A0").unwrap();
        assert_eq!(q.id.as_deref(), Some("你"));
    }

    #[test]
    fn invalid_utf8_is_an_error_never_a_replacement() {
        let err = from_query::<Q>("id=%ff").unwrap_err();
        assert!(err.contains("`id`"), "{err}");
        assert!(from_query::<Q>("id=%fe").is_err());
        assert!(from_query::<Q>("%ff=1").is_err());
    }

    #[test]
    fn fields_not_read_are_not_decoded() {
        let q: Q = from_query("atem_id=%ff&id=x").unwrap();
        assert_eq!(q.id.as_deref(), Some("x"));
    }

    #[test]
    fn absent_empty_and_duplicate() {
        let q: Q = from_query("").unwrap();
        assert_eq!(
            q,
            Q {
                id: None,
                since: None
            }
        );
        let q: Q = from_query("id").unwrap();
        assert_eq!(q.id.as_deref(), Some(""));
        assert!(from_query::<Q>("id=a&id=b").is_err());
    }
}
