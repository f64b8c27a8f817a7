//! Why a query failed, as Prometheus's API names it.

/// Why a query failed, as Prometheus's API names it (`errorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The query cannot be evaluated as written: syntax, types, a construct recmeter does not
    /// evaluate, too many points.
    BadData,
    /// Evaluation failed (many-to-many matching, a source error).
    Execution,
    /// The query's deadline passed.
    Timeout,
}

impl ErrorKind {
    /// The `errorType` of an API answer.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadData => "bad_data",
            ErrorKind::Execution => "execution",
            ErrorKind::Timeout => "timeout",
        }
    }
}

/// A query that failed: its kind and a message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn bad_data(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::BadData,
            message: message.into(),
        }
    }

    pub fn execution(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Execution,
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `11000` as Prometheus writes it in its error: `11,000`.
pub fn group_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
