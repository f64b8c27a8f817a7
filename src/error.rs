//! Errors of the `recmeter` binary: start-up and wiring.

use recmeter_aggregator::InvalidField;

/// What can stop `recmeter serve` or `recmeter demo`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration:\n{}", list(.0))]
    Config(Vec<InvalidField>),
    #[error(transparent)]
    Collector(#[from] recmeter_collector::Error),
    #[error(transparent)]
    Exporter(#[from] recmeter_exporter::Error),
    #[error(transparent)]
    Aggregator(#[from] recmeter_aggregator::Error),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write the ready file {path}: {source}")]
    ReadyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    ServerStopped(String),
}

fn list(errors: &[InvalidField]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Result with the binary's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
