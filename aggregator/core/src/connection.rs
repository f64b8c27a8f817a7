//! Requests in flight on one connection: the listener that owns a connection reads it (a
//! connection answering a request is never idle, so never closed for idleness or to make
//! room), and the server answering the requests counts them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A connection's count of requests in flight; clones share it.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts a request until the returned guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.0.clone())
    }

    /// Requests in flight now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One request in flight; dropping it ends it.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
