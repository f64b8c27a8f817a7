//! Bearer tokens for the ingest and API ports: compared in constant time, never printed.
//! Shared by the collector (ingest) and the exporter (API), which both sit on this crate.

use std::fmt;
use std::sync::Arc;

/// A secret bearer token. `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Arc<str>);

impl BearerToken {
    /// A token; `None` when `token` is empty after trimming surrounding whitespace (a token file
    /// usually ends with a newline).
    pub fn new(token: &str) -> Option<Self> {
        let token = token.trim();
        (!token.is_empty()).then(|| Self(Arc::from(token)))
    }

    /// Whether an `Authorization` header value carries this token (`Bearer <token>`).
    pub fn matches_header(&self, value: &str) -> bool {
        let Some((scheme, presented)) = value.trim().split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && constant_time_eq(presented.trim().as_bytes(), self.0.as_bytes())
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Compares without stopping at the first difference, so response time does not reveal how
/// much of a guess was right (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A secret read from the configuration (a PagerDuty routing key): `Debug`, `Display` and
/// `Serialize` print `[redacted]`; only [`Secret::expose`] gives the text, to put it on the
/// wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// A secret; `None` when `text` is empty after trimming surrounding whitespace.
    pub fn new(text: &str) -> Option<Self> {
        let text = text.trim();
        (!text.is_empty()).then(|| Self(Arc::from(text)))
    }

    /// The secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Secret::new(&text).ok_or_else(|| serde::de::Error::custom("a secret must not be empty"))
    }
}

/// A secret set either as the configuration key `key` itself (best through its environment
/// override) or as `key_file`, a file holding only the secret; both at once, an unreadable
/// file or an empty one is an error naming the key. `make` builds the secret from the text.
pub fn secret_from_key_or_file<T: Clone>(
    key: &str,
    value: Option<&T>,
    file: Option<&std::path::Path>,
    make: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, crate::InvalidField> {
    use crate::InvalidField;
    match (value, file) {
        (Some(_), Some(_)) => Err(InvalidField::new(
            format!("{key}_file"),
            format!("set either {key} or {key}_file, not both"),
        )),
        (Some(value), None) => Ok(Some(value.clone())),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => make(&text).map(Some).ok_or_else(|| {
                InvalidField::new(
                    format!("{key}_file"),
                    format!("{} is empty", path.display()),
                )
            }),
            Err(e) => Err(InvalidField::new(
                format!("{key}_file"),
                format!("cannot read {}: {e}", path.display()),
            )),
        },
        (None, None) => Ok(None),
    }
}

impl serde::Serialize for BearerToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

impl<'de> serde::Deserialize<'de> for BearerToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        BearerToken::new(&text).ok_or_else(|| serde::de::Error::custom("a token must not be empty"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matching() {
        let token = BearerToken::new("s3cret\n").unwrap();
        assert!(token.matches_header("Bearer s3cret"));
        assert!(token.matches_header("bearer  s3cret "));
        assert!(!token.matches_header("Bearer s3cre"));
        assert!(!token.matches_header("Bearer s3cretX"));
        assert!(!token.matches_header("Basic s3cret"));
        assert!(!token.matches_header("s3cret"));
        assert!(BearerToken::new("  \n").is_none());
        assert_eq!(format!("{token:?} {token}"), "[redacted] [redacted]");
        let key = Secret::new(" abc\n").unwrap();
        assert_eq!(key.expose(), "abc");
        assert_eq!(format!("{key:?} {key}"), "[redacted] [redacted]");
        assert_eq!(serde_json::to_string(&key).unwrap(), "\"[redacted]\"");
    }
}
