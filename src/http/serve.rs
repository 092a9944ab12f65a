//! Accepting connections: timeouts on every phase of a request, a cap on open
//! connections, and a graceful shutdown with a deadline.
//!
//! Each connection is watched by its own task, which knows whether a request is in
//! flight (counted from the moment its headers are parsed until its response body is
//! finished or dropped), when the connection last went quiet, and whether its writes
//! are stuck on a client that does not read. It closes the connection when:
//!
//! - no request is in flight and no byte has arrived for `idle_timeout` (an idle
//!   keep-alive connection);
//! - the first byte of a request arrived more than `header_timeout` ago and its
//!   headers are still incomplete (a slow-loris client);
//! - a response has waited more than `idle_timeout` for the client to read it.
//!
//! A request body must arrive whole within `body_timeout` of its headers (408).
//!
//! At most `max_connections` connections are open, and never so many that the
//! process runs out of file descriptors (the soft limit is raised to the hard one at
//! start, and what executions, kept session memories, the store, upstreams and the
//! cache need is kept back: `service::fds`). At the cap, a
//! new connection closes the longest-quiet connection that has no request in flight;
//! if every connection is busy, the new one is closed instead. So idle and
//! half-open connections, however many, can never keep `/healthz` or an execution
//! from being served.
//!
//! Shutdown stops accepting, lets in-flight requests finish for `shutdown_grace`,
//! then cancels the executions still running (each is recorded as `cancelled` and its
//! response sent) and closes what is left a second later.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::HttpConfig;

/// How long connections get to send the responses of executions cancelled at the end
/// of the shutdown grace period.
const CANCELLED_RESPONSES: Duration = Duration::from_secs(1);
/// The longest a connection's watcher sleeps before looking at its state again.
const RECHECK: Duration = Duration::from_secs(1);

/// What one connection is doing, shared by its IO, its requests and its watcher.
#[derive(Debug)]
struct Conn {
    in_flight: AtomicUsize,
    times: Mutex<Times>,
    /// Cancelled to close the connection now (to make room under the cap).
    evict: CancellationToken,
}

#[derive(Debug)]
struct Times {
    /// When the connection last had no request in flight and nothing unread.
    quiet_since: Instant,
    /// When the first byte of the next request arrived, while none was in flight.
    reading_since: Option<Instant>,
    /// When a write first found the client not reading, until it makes progress.
    write_blocked_since: Option<Instant>,
}

impl Conn {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            in_flight: AtomicUsize::new(0),
            times: Mutex::new(Times { quiet_since: now, reading_since: None, write_blocked_since: None }),
            evict: CancellationToken::new(),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.times().reading_since = None;
    }

    fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            let mut times = self.times();
            times.quiet_since = Instant::now();
            times.reading_since = None;
        }
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let mut times = self.times();
            if times.reading_since.is_none() {
                times.reading_since = Some(Instant::now());
            }
        }
    }

    fn write_blocked(&self, blocked: bool) {
        let mut times = self.times();
        match (blocked, times.write_blocked_since) {
            (true, None) => times.write_blocked_since = Some(Instant::now()),
            (false, Some(_)) => times.write_blocked_since = None,
            _ => {}
        }
    }

    /// When this connection would pass a timeout if nothing changes, and why.
    fn deadline(&self, config: &HttpConfig) -> Option<(Instant, &'static str)> {
        let times = self.times();
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return times
                .write_blocked_since
                .map(|since| (since + config.idle_timeout, "the client stopped reading its response"));
        }
        Some(match times.reading_since {
            Some(since) => (since + config.header_timeout, "the request's headers did not arrive in time"),
            None => (times.quiet_since + config.idle_timeout, "the connection was idle"),
        })
    }

    /// Since when the connection has been without a request in flight, if it is.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(self.times().quiet_since)
    }
}

/// The open connections.
#[derive(Debug, Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
}

impl Registry {
    fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn add(&self, conn: Arc<Conn>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(id, conn);
        id
    }

    fn remove(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// Closes the connection that has been without a request the longest; false if
    /// every connection has a request in flight.
    fn evict_idle(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let victim = conns
            .iter()
            .filter(|(_, conn)| !conn.evict.is_cancelled())
            .filter_map(|(id, conn)| conn.idle_since().map(|since| (since, *id)))
            .min();
        match victim.and_then(|(_, id)| conns.get(&id)) {
            Some(conn) => {
                conn.evict.cancel();
                true
            }
            None => false,
        }
    }

    fn close_all(&self) {
        for conn in self.conns.lock().unwrap_or_else(|e| e.into_inner()).values() {
            conn.evict.cancel();
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then shuts down as the
/// module docs describe. `stopping` is cancelled when shutdown begins (the MCP server
/// ends its streams on it); `grace_over` when the grace period ends, before
/// connections are closed (the service cancels its executions on it). Returns the
/// end of the grace period.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stopping: CancellationToken,
    grace_over: CancellationToken,
    reserved_fds: u64,
) -> Instant {
    let config = Arc::new(config);
    let cap = connection_cap(config.max_connections, reserved_fds);
    let registry = Arc::new(Registry::default());
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                if registry.len() >= cap && !registry.evict_idle() {
                    crate::telemetry::record_rejection("connections");
                    tracing::warn!(cap, "every connection has a request in flight; refusing a new one");
                    continue;
                }
                let conn = Arc::new(Conn::new());
                let id = registry.add(conn.clone());
                let (app, config, registry, stopping) =
                    (app.clone(), config.clone(), registry.clone(), stopping.clone());
                connections.spawn(async move {
                    serve_connection(stream, conn, app, &config, stopping).await;
                    registry.remove(id);
                });
            }
            Err(error) => {
                // Out of file descriptors (or another transient accept error): make
                // room and try again shortly rather than spin.
                tracing::warn!(%error, "accepting a connection failed");
                registry.evict_idle();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    drop(listener);
    let grace_ends = Instant::now() + config.shutdown_grace;
    tracing::info!(open = registry.len(), grace_ms = config.shutdown_grace.as_millis() as u64, "shutting down");
    stopping.cancel();
    connections.close();
    if tokio::time::timeout_at(grace_ends.into(), connections.wait()).await.is_err() {
        tracing::warn!(open = registry.len(), "shutdown grace period over: cancelling executions still running");
        grace_over.cancel();
        if tokio::time::timeout(CANCELLED_RESPONSES, connections.wait()).await.is_err() {
            registry.close_all();
            connections.wait().await;
        }
    }
    grace_ends
}

/// The connection cap: the configured one, kept below the open-file limit less the
/// descriptors the service keeps back (`reserved`, see `service::fds`).
fn connection_cap(configured: usize, reserved: u64) -> usize {
    let Some(files) = crate::service::fds::raise_open_file_limit() else { return configured };
    let room = files.saturating_sub(reserved).max(crate::service::fds::MIN_CONNECTIONS) as usize;
    if room < configured {
        tracing::warn!(configured, cap = room, open_files = files, "the open-file limit lowers http.max_connections");
    }
    configured.min(room)
}

async fn serve_connection(
    stream: TcpStream,
    conn: Arc<Conn>,
    app: Router,
    config: &HttpConfig,
    stopping: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(Watched { inner: stream, conn: conn.clone() });
    let body_timeout = config.body_timeout;
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            conn.request_started();
            let in_flight = InFlight(conn.clone());
            let request = request.map(|body| Body::new(Deadline::new(body, body_timeout)));
            let app = app.clone();
            async move {
                let response = match app.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| Body::new(super::Guarded::new(body, in_flight))))
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Header and idle timeouts are this module's (hyper's single header timer would
    // also close idle keep-alive connections at the header timeout).
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(128);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut graceful = false;
    loop {
        let now = Instant::now();
        let wake = conn.deadline(config).map_or(now + RECHECK, |(deadline, _)| deadline.min(now + RECHECK));
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = stopping.cancelled(), if !graceful => {
                connection.as_mut().graceful_shutdown();
                graceful = true;
            }
            () = conn.evict.cancelled() => {
                tracing::debug!("connection closed to make room");
                return;
            }
            () = tokio::time::sleep_until(wake.into()) => {
                // The state may have changed while sleeping (a request arrived): judge
                // by the deadline as it is now.
                if let Some((deadline, why)) = conn.deadline(config) {
                    if Instant::now() >= deadline {
                        crate::telemetry::record_rejection("timeout");
                        tracing::debug!(reason = why, "connection closed");
                        return;
                    }
                }
            }
        }
    }
}

/// One request in flight on its connection, until its response body is done.
struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// Why a request body stopped arriving.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A request body that must arrive whole before a deadline, counted from its headers.
struct Deadline {
    inner: Incoming,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Deadline {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self { inner, timeout, sleep: Box::pin(tokio::time::sleep(timeout)) }
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(self.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, reporting reads and stuck writes to its connection's state.
struct Watched {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.bytes_read();
        }
        result
    }
}

impl Watched {
    fn note<T>(&self, result: Poll<T>) -> Poll<T> {
        self.conn.write_blocked(result.is_pending());
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
