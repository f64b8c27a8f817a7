//! Errors of the exporter crate, and the one mapping from error kinds to HTTP answers.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
pub use recmeter_aggregator::ErrorKind;
use recmeter_aggregator::error::clip;

/// What can go wrong in the exporter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server stopped with an error.
    #[error("API server failed: {0}")]
    Serve(String),
    /// The PagerDuty client cannot be set up.
    #[error("PagerDuty: {0}")]
    PagerDuty(String),
}

/// Result with the exporter's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error answered to an API client. Internal details stay in the log.
#[derive(Debug)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::BadRequest,
            message: message.into(),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Unauthorized,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::NotFound,
            message: message.into(),
        }
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::PayloadTooLarge,
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Unavailable,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Internal,
            message: message.into(),
        }
    }
}

impl From<recmeter_aggregator::Error> for ApiError {
    fn from(e: recmeter_aggregator::Error) -> Self {
        Self {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error_type = self.kind.error_type();
        let message = if self.kind == ErrorKind::Internal {
            // A message can quote the query (a pattern, a literal): at most 1 KiB of it is logged.
            tracing::error!(error = %clip(&self.message, 1024), "API request failed.");
            "internal error; see the recmeter log".to_owned()
        } else {
            self.message
        };
        let body = serde_json::json!({
            "status": "error",
            "errorType": error_type,
            "error": message,
        });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // Both schemes the API takes: a browser offers its login box for Basic.
            let headers = response.headers_mut();
            headers.insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            headers.append(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"recmeter\""),
            );
        }
        response
    }
}
