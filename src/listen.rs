//! The connections of recmeter's three listeners, each bounded: at most `max_connections` open,
//! a connection that sends nothing within `header_read_timeout` of opening (or, on HTTP/1.1,
//! no whole request head within it) closed, and one with no byte either way for
//! `idle_timeout` closed. At the limit, the connection idle longest makes room for the new
//! one; only when none has been idle a second is the new one refused and counted. So idle or
//! half-sent connections can neither hold every file descriptor nor lock out a scrape (ADR 014).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use futures::task::AtomicWaker;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use recmeter_aggregator::Telemetry;
use recmeter_aggregator::connection::InFlight;
use recmeter_aggregator::telemetry::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One listener's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// A connection idle at least this long may be closed to make room at the limit.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// What a listener knows of its open connections.
struct Table {
    listener: Listener,
    limits: Limits,
    telemetry: Arc<Telemetry>,
    /// Reference point of every connection's `last_io`.
    epoch: Instant,
    open: parking_lot::Mutex<Vec<Arc<Conn>>>,
}

/// One open connection.
struct Conn {
    /// Milliseconds after the table's epoch of its last byte either way (or its opening).
    last_io: AtomicU64,
    /// Whether any byte came in yet.
    spoke: AtomicBool,
    /// Requests being answered: not idle, whatever the socket does meanwhile.
    busy: InFlight,
    /// Set to close it; its task is woken to see it.
    closing: AtomicBool,
    waker: AtomicWaker,
}

impl Table {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Takes `stream` in, making room if needed; `None` when it was refused.
    fn admit(self: &Arc<Self>, stream: TcpStream) -> Option<Guarded> {
        let now = self.now_ms();
        let mut open = self.open.lock();
        if open.len() >= self.limits.max_connections {
            let idle_for = |c: &Conn| now.saturating_sub(c.last_io.load(Ordering::Relaxed));
            let victim = open
                .iter()
                .filter(|c| c.busy.count() == 0 && !c.closing.load(Ordering::Relaxed))
                .max_by_key(|c| idle_for(c))
                .filter(|c| idle_for(c) >= EVICTABLE_AFTER.as_millis() as u64);
            match victim {
                Some(victim) => {
                    victim.closing.store(true, Ordering::Release);
                    victim.waker.wake();
                }
                None => {
                    drop(open);
                    self.telemetry.connection_refused(self.listener);
                    return None;
                }
            }
        }
        let conn = Arc::new(Conn {
            last_io: AtomicU64::new(now),
            spoke: AtomicBool::new(false),
            busy: InFlight::default(),
            closing: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        open.push(conn.clone());
        drop(open);
        self.telemetry.connection_opened(self.listener);
        let _ = stream.set_nodelay(true);
        Some(Guarded {
            io: stream,
            conn,
            table: self.clone(),
            timer: Box::pin(tokio::time::sleep(self.limits.header_read_timeout)),
        })
    }

    fn remove(&self, conn: &Arc<Conn>) {
        let mut open = self.open.lock();
        if let Some(i) = open.iter().position(|c| Arc::ptr_eq(c, conn)) {
            open.swap_remove(i);
        }
        drop(open);
        self.telemetry.connection_closed(self.listener);
    }
}

/// A connection's socket, closed by the table's rules: reads fail once it is to close.
pub struct Guarded {
    io: TcpStream,
    conn: Arc<Conn>,
    table: Arc<Table>,
    /// Fires at the first-byte deadline, then at each idle deadline.
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Guarded {
    fn touch(&self) {
        self.conn
            .last_io
            .store(self.table.now_ms(), Ordering::Relaxed);
    }

    /// Whether the connection must close now; otherwise the timer is set for when it might.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.conn.waker.register(cx.waker());
        if self.conn.closing.load(Ordering::Acquire) {
            return true;
        }
        let limits = self.table.limits;
        let spoke = self.conn.spoke.load(Ordering::Relaxed);
        let last = Duration::from_millis(self.conn.last_io.load(Ordering::Relaxed));
        let allowed = if spoke {
            limits.idle_timeout
        } else {
            limits.header_read_timeout
        };
        let deadline = self.table.epoch + last + allowed;
        if Instant::now() >= deadline {
            if self.conn.busy.count() == 0 {
                return true;
            }
            // A request being answered holds the connection open.
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + allowed);
        } else {
            self.timer.as_mut().reset(deadline.into());
        }
        let _ = self.timer.as_mut().poll(cx);
        false
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.table.remove(&self.conn);
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.conn.spoke.store(true, Ordering::Relaxed);
                    self.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection closed: idle, or making room for another",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The gRPC server counts each call in flight on its connection through this.
impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = InFlight;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.conn.busy.clone()
    }
}

/// Accepts connections on `listener` under `limits`, until the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    which: Listener,
    limits: Limits,
    telemetry: Arc<Telemetry>,
) -> impl futures::Stream<Item = io::Result<Guarded>> + Send + 'static {
    let table = Arc::new(Table {
        listener: which,
        limits,
        telemetry,
        epoch: Instant::now(),
        open: parking_lot::Mutex::new(Vec::new()),
    });
    futures::stream::unfold((listener, table), move |(listener, table)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if let Some(guarded) = table.admit(stream) {
                        return Some((Ok(guarded), (listener, table)));
                    }
                }
                // Out of file descriptors, or a connection reset before it was taken: wait a
                // little rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, listener = which.label(), "Cannot accept a connection.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// Serves HTTP/1.1 `router` on `listener` under `limits` until `shutdown` completes; then
/// connections finish their requests and close.
pub async fn serve_http1(
    listener: TcpListener,
    which: Listener,
    limits: Limits,
    telemetry: Arc<Telemetry>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> crate::error::Result<()> {
    use futures::StreamExt;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    // Boxed, so that dropping it below closes the listener while the connections drain.
    let mut incoming = Box::pin(incoming(listener, which, limits, telemetry));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let guarded = tokio::select! {
            () = &mut shutdown => break,
            Some(Ok(guarded)) = incoming.next() => guarded,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let in_flight = guarded.conn.busy.clone();
        let service = tower::ServiceExt::<http::Request<hyper::body::Incoming>>::map_future(
            router.clone(),
            move |future| {
                let busy = in_flight.enter();
                async move {
                    let response = future.await;
                    drop(busy);
                    response
                }
            },
        );
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            let connection =
                builder.serve_connection(TokioIo::new(guarded), TowerToHyperService::new(service));
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.wait_for(|s| *s) => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    let _ = stop_tx.send(true);
    drop(incoming);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The default `max_connections` of a listener: its `share` of the open-files limit after 256
/// are kept for the WAL, the store and everything else (the soft limit, read from
/// `/proc/self/limits`; 1024 where that cannot be read), at least 16.
pub fn default_max_connections(share: f64) -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|soft| soft.parse::<u64>().ok())
        })
        .unwrap_or(1024);
    let usable = limit.saturating_sub(256) as f64;
    ((usable * share) as usize).clamp(16, 1 << 20)
}
