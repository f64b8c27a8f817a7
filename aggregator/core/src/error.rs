//! Errors of the aggregator and of recmeter-core (one enum the two share: the collector sees them
//! through `Submit`), with their HTTP/gRPC kinds.

use crate::status::ErrorKind;

/// What can go wrong in the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An HDR histogram could not be created, encoded, decoded or merged.
    #[error("{0}")]
    Histogram(String),
    /// The aggregator's queue is full; the sender should retry later.
    #[error("the aggregator is busy; retry later")]
    Backpressure,
    /// The aggregator has stopped (the service is shutting down).
    #[error("the aggregator has stopped")]
    Stopped,
    /// A SQL statement that would change something, or more than one statement.
    #[error("{0}")]
    NotReadOnly(String),
    /// A query that does not parse, plan or run on its data (the message says why).
    #[error("{0}")]
    Query(String),
    /// A query ran longer than `sql.timeout` and was cancelled.
    #[error("the query ran longer than {0:?} (sql.timeout) and was cancelled")]
    QueryTimeout(std::time::Duration),
    /// A query needed more memory than `sql.memory_limit_bytes`, or returned more than
    /// `sql.max_result_bytes`.
    #[error("{0}")]
    ResourcesExhausted(String),
    /// The query engine failed on its own account.
    #[error("query engine failure: {0}")]
    QueryInternal(String),
    /// The write-ahead log cannot be written or read.
    #[error("write-ahead log: {0}")]
    Wal(String),
    /// Another process holds the WAL directory.
    #[error(
        "the WAL directory {} is locked by another recmeter process; stop it or give this one its own wal.dir",
        .0.display()
    )]
    WalLocked(std::path::PathBuf),
    /// A WAL segment is corrupt before its end, or before valid frames: acknowledged requests
    /// after that point cannot be read.
    #[error(
        "the WAL segment {} is corrupt at byte {offset}, with {frames_after} acknowledged frames after it that would be lost; restore the WAL directory from a copy, or start with --wal-truncate-at-corruption to drop them and go on",
        .segment.display()
    )]
    WalCorrupt {
        segment: std::path::PathBuf,
        offset: u64,
        frames_after: u64,
    },
    /// The object store holding checkpoints cannot be read or written, or holds something
    /// unexpected (the message names the file).
    #[error("storage: {0}")]
    Storage(String),
    /// A checkpoint participant refused a name or an event (the message says which).
    #[error("{0}")]
    Participant(String),
}

impl Error {
    /// How a client is told about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Histogram(_)
            | Error::QueryInternal(_)
            | Error::WalLocked(_)
            | Error::WalCorrupt { .. }
            | Error::Storage(_) => ErrorKind::Internal,
            // A client may retry a request the log could not take.
            Error::Backpressure | Error::Stopped | Error::Wal(_) => ErrorKind::Unavailable,
            // A component's event that no participant takes, or that its participant refuses.
            Error::NotReadOnly(_) | Error::Query(_) | Error::Participant(_) => {
                ErrorKind::BadRequest
            }
            Error::QueryTimeout(_) => ErrorKind::Timeout,
            Error::ResourcesExhausted(_) => ErrorKind::Unprocessable,
        }
    }
}

/// Result with the aggregator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `text` cut to at most `max` bytes, on a character boundary, marked when cut.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len()).into()
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clipped_on_a_character_boundary_and_marked() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(1000);
        let clipped = clip(&long, 1023);
        assert!(
            clipped.len() < 1100 && clipped.ends_with("(2000 bytes)"),
            "{clipped}"
        );
        assert!(clipped.starts_with(&"é".repeat(511)));
    }
}
