//! Request bodies both OTLP servers (and Kafka messages) read: gzip inflated under a size
//! limit, and the request decoded from protobuf or JSON.

use std::io::Read;

use bytes::Bytes;

/// Why a gzip body could not be inflated.
pub(super) enum GunzipError {
    /// It inflates past the limit.
    TooLarge,
    Corrupt(std::io::Error),
}

/// Inflates a gzip body, refusing to produce more than `limit` bytes (no decompression bombs).
pub(super) fn gunzip(body: &[u8], limit: usize) -> Result<Bytes, GunzipError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::MultiGzDecoder::new(body)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(GunzipError::Corrupt)?;
    if out.len() > limit {
        return Err(GunzipError::TooLarge);
    }
    Ok(Bytes::from(out))
}

/// An OTLP request from protobuf, or from JSON when `json`.
pub fn decode<R>(body: &[u8], json: bool) -> Result<R, String>
where
    R: prost::Message + Default + serde::de::DeserializeOwned,
{
    if json {
        serde_json::from_slice(body).map_err(|e| format!("invalid OTLP JSON: {e}"))
    } else {
        R::decode(body).map_err(|e| format!("invalid OTLP protobuf: {e}"))
    }
}
