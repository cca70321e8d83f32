//! HTTP endpoints: `GET /metrics`, `/healthz` (liveness), `/readyz`
//! (readiness), `/status` (JSON: partitions, regions, writers).
//!
//! Only `GET` (and `HEAD`) on these paths is served: other paths answer
//! 404 and other methods 405, with empty bodies, so nothing a client sends is
//! reflected. The listener admits at most [`ServerLimits::max_connections`]
//! connections at once and closes connections that stall or idle (slowloris),
//! so a flood of connections cannot exhaust the daemon's file descriptors or
//! memory; once it stops, the endpoints answer again.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::ops::health::Health;
use crate::ops::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .route("/status", get(status_handler))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn ready_handler(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", reasons.join("\n")),
        ),
    }
}

async fn status_handler(State(s): State<AppState>) -> impl IntoResponse {
    let report = s.health.status_report().await;
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&report).expect("status serializes"),
    )
}

/// Bounds on the connections of the metrics and health listener.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections served at once; further ones wait in the kernel's accept
    /// queue until one closes.
    pub max_connections: usize,
    /// A connection on which nothing was read or written for this long is
    /// closed (a client that opens a connection and sends nothing, or sends
    /// half a request).
    pub idle_timeout: Duration,
    /// A connection older than this is closed the next time it waits for the
    /// client (a client that trickles one byte at a time). A response being
    /// written is not cut; Prometheus simply reconnects for its next scrape.
    pub max_connection_age: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            // Prometheus, a kubelet and a person with curl need a handful.
            max_connections: 256,
            idle_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(60),
        }
    }
}

/// Binds the listener (so a busy port fails start-up) and serves in the background.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Health,
) -> io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with_limits(addr, metrics, health, ServerLimits::default()).await
}

/// [`serve`] with explicit connection limits (tests use short timeouts).
pub async fn serve_with_limits(
    addr: SocketAddr,
    metrics: Metrics,
    health: Health,
    limits: ServerLimits,
) -> io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let listener = LimitedListener {
        inner: listener,
        permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        limits,
    };
    let app = router(metrics, health);
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, handle))
}

/// A TCP listener that accepts only while a connection slot is free and
/// hands out connections that close themselves when idle or too old.
struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    limits: ServerLimits,
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // Waiting here (not accepting) leaves further clients in the kernel's
        // queue; the semaphore is never closed, so acquiring cannot fail.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (LimitedStream::new(stream, permit, self.limits), addr);
                }
                // Out of file descriptors, a connection reset before accept...:
                // wait a little instead of spinning (as axum's own listener does).
                Err(e) => {
                    tracing::debug!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding its slot until dropped, failing its reads and writes
/// once it stalled for `idle_timeout` or waits past `max_connection_age`.
struct LimitedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    deadline: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    closes_at: Instant,
}

impl LimitedStream {
    fn new(inner: TcpStream, permit: OwnedSemaphorePermit, limits: ServerLimits) -> Self {
        let now = Instant::now();
        let closes_at = now + limits.max_connection_age;
        LimitedStream {
            inner,
            _permit: permit,
            deadline: Box::pin(tokio::time::sleep_until(
                (now + limits.idle_timeout).min(closes_at),
            )),
            idle_timeout: limits.idle_timeout,
            closes_at,
        }
    }

    /// Something moved: the idle clock starts again (never past the age limit).
    fn progressed(&mut self) {
        let next = (Instant::now() + self.idle_timeout).min(self.closes_at);
        self.deadline.as_mut().reset(next);
    }

    /// Called while the socket is not ready: fails once the deadline passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "metrics connection idle or too old",
    )
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
