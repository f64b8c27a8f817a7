//! Errors of the collector crate.

use std::net::SocketAddr;

/// What can go wrong in the collector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// A server stopped with an error.
    #[error("{server} server failed: {message}")]
    Serve {
        server: &'static str,
        message: String,
    },
}

/// Result with the collector's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
