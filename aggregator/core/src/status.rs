//! The one mapping from kinds of failure to what a client sees: the HTTP status and the gRPC
//! code (google.rpc.Code) that go with it. The OTLP ports and the API both answer through it,
//! so a refusal means the same on every port and every protocol.

/// A kind of failure a client can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Undecodable or invalid input: not retryable.
    BadRequest,
    /// Missing or wrong bearer token.
    Unauthorized,
    /// No such endpoint.
    NotFound,
    /// Larger than the configured limit, before or after decompression: not retryable.
    PayloadTooLarge,
    /// A content type or encoding recmeter does not read.
    UnsupportedMediaType,
    /// Well-formed but cannot be processed within limits (for example query memory).
    Unprocessable,
    /// Busy: retry after a pause.
    Unavailable,
    /// A query ran out of time and was cancelled.
    Timeout,
    /// recmeter's own fault; details stay in the log.
    Internal,
}

impl ErrorKind {
    /// The HTTP status code.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::NotFound => 404,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::Unprocessable => 422,
            ErrorKind::Unavailable | ErrorKind::Timeout => 503,
            ErrorKind::Internal => 500,
        }
    }

    /// The gRPC status code number (google.rpc.Code). RESOURCE_EXHAUSTED for a payload too
    /// large is sent without retry information, which OTLP clients treat as permanent.
    pub const fn grpc_code(self) -> i32 {
        match self {
            ErrorKind::BadRequest | ErrorKind::UnsupportedMediaType => 3, // INVALID_ARGUMENT
            ErrorKind::Unauthorized => 16,                                // UNAUTHENTICATED
            ErrorKind::NotFound => 5,                                     // NOT_FOUND
            ErrorKind::PayloadTooLarge | ErrorKind::Unprocessable => 8,   // RESOURCE_EXHAUSTED
            ErrorKind::Unavailable => 14,                                 // UNAVAILABLE
            ErrorKind::Timeout => 4,                                      // DEADLINE_EXCEEDED
            ErrorKind::Internal => 13,                                    // INTERNAL
        }
    }

    /// The `errorType` of the Prometheus-style API error body.
    pub const fn error_type(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_data",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PayloadTooLarge => "too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::Unprocessable => "resources_exhausted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_the_codes_otlp_clients_expect() {
        // OTLP/HTTP retries 429, 502, 503, 504 only; OTLP/gRPC retries UNAVAILABLE, and
        // RESOURCE_EXHAUSTED only with RetryInfo.
        assert_eq!(
            (
                ErrorKind::Unavailable.http_status(),
                ErrorKind::Unavailable.grpc_code()
            ),
            (503, 14)
        );
        assert_eq!(
            (
                ErrorKind::BadRequest.http_status(),
                ErrorKind::BadRequest.grpc_code()
            ),
            (400, 3)
        );
        assert_eq!(
            (
                ErrorKind::PayloadTooLarge.http_status(),
                ErrorKind::PayloadTooLarge.grpc_code()
            ),
            (413, 8)
        );
        assert_eq!(
            (
                ErrorKind::Unauthorized.http_status(),
                ErrorKind::Unauthorized.grpc_code()
            ),
            (401, 16)
        );
        assert_eq!(ErrorKind::UnsupportedMediaType.http_status(), 415);
    }
}
