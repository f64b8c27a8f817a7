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
    }
}
