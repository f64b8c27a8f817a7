//! Errors of the aggregator crate.

/// What can go wrong in the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An HDR histogram could not be created, encoded, decoded or merged.
    #[error("{0}")]
    Histogram(String),
    /// A window longer than the history held in memory (minutes for 3 h, hours for a day).
    #[error("window {0} reaches past the history held in memory (the last 26 hours)")]
    WindowUnavailable(&'static str),
    /// The aggregator's queue is full; the sender should retry later.
    #[error("the aggregator is busy; retry later")]
    Backpressure,
    /// The aggregator has stopped (the service is shutting down).
    #[error("the aggregator has stopped")]
    Stopped,
}

/// Result with the aggregator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
