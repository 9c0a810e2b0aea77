//! Serving HTTP: the accept loop, configured through hyper's own options, and the
//! connection cap.
//!
//! `axum::serve` exposes none of hyper's timeouts, so this loop serves each connection
//! with hyper's HTTP/1 builder. A connection gets two deadlines: its first request head
//! must be complete within `first_request_timeout` of the accept (short: a crowd of
//! silent connections frees its slots within seconds), and after each answer the next
//! head within `keepalive_timeout` (hyper's `header_read_timeout`, whose timer restarts
//! when a connection goes idle; long, above the balancers' idle timeout). Until its first
//! byte arrives a connection is only a socket and a small task: hyper's buffers are
//! allocated once there is something to read. Connections served at once are capped (at
//! the cap, the loop stops accepting and new connections wait in the kernel's backlog),
//! by default from the file-descriptor limit, which start-up raises to its hard maximum
//! ([`raise_fd_limit`], [`connection_cap`]). Shutdown is a graceful drain. Request bodies
//! and handlers are bounded by the request timeout in [`crate::routes`]. While the service
//! drains (see [`crate::app`]), every response says `Connection: close`, so a balancer's
//! pooled connection is closed after a response rather than under a request it just sent.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::config::ConnectionCap;

/// Connections the kernel completes and holds for the accept loop while it is at its cap
/// (clamped by `net.core.somaxconn`). Beyond it the kernel drops new handshakes, and
/// clients retry them; the operating system's usual default of 128 is small for a
/// service behind a balancer.
pub const BACKLOG: u32 = 1024;

/// A listener on `addr` with a backlog of [`BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As std's bind does on Unix: a restarted service can bind while old connections
    // linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// File descriptors kept for everything but served connections: the database pool, the
/// PartnerStack and relay clients, the listeners, files and pipes.
pub const RESERVED_FDS: u64 = 256;

/// The most connections `max_connections = "auto"` serves at once, however high the
/// file-descriptor limit: a bound on memory (an idle keep-alive connection holds hyper's
/// buffers, about 20 KiB; a silent new one far less).
pub const AUTO_MAX_CONNECTIONS: usize = 16_384;

/// The process's open-file limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit in force.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard one (a process may, without privileges),
/// so the connection cap is not the distribution's default of 1,024, and logs both.
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (before, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let mut soft = before;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => soft = hard,
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        }
    }
    let limit = FdLimit { before, soft, hard };
    tracing::info!(
        soft_before = before,
        soft,
        hard,
        "open-file limit (soft raised to the hard one)"
    );
    Ok(limit)
}

/// Connections served at once: the setting's number, or for `auto`, what the soft
/// open-file limit leaves after [`RESERVED_FDS`] (at least half the limit), at most
/// [`AUTO_MAX_CONNECTIONS`].
pub fn connection_cap(setting: ConnectionCap, fds: &FdLimit) -> NonZeroUsize {
    let available = fds.soft.saturating_sub(RESERVED_FDS).max(fds.soft / 2);
    match setting {
        ConnectionCap::At(n) => {
            if u64::try_from(n.get()).unwrap_or(u64::MAX) > available {
                tracing::warn!(
                    max_connections = n.get(),
                    fd_limit = fds.soft,
                    "server.max_connections is above what the open-file limit leaves; \
                     accepting will fail (and pause) near the limit"
                );
            }
            n
        }
        ConnectionCap::Auto => {
            let n = usize::try_from(available)
                .unwrap_or(usize::MAX)
                .min(AUTO_MAX_CONNECTIONS);
            NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
        }
    }
}

/// How one listener serves.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The deadline of a new connection's first complete request head.
    pub first_request_timeout: Duration,
    /// hyper's `header_read_timeout`: an idle connection's deadline for its next head.
    pub keepalive_timeout: Duration,
    /// Connections served at once.
    pub max_connections: NonZeroUsize,
    /// How long in-flight requests get to finish after `shutdown`.
    pub drain: Duration,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting,
/// lets in-flight requests finish (idle connections close at once) for up to
/// `limits.drain`, and returns. Once `draining` is cancelled, responses close their
/// connection.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
    draining: CancellationToken,
) {
    let router = router.layer(axum::middleware::map_response(
        move |mut response: axum::response::Response| {
            let draining = draining.clone();
            async move {
                if draining.is_cancelled() {
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                }
                response
            }
        },
    ));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.keepalive_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.get()));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            http: http.clone(),
            router: router.clone(),
            watcher: graceful.watcher(),
            first_request_timeout: limits.first_request_timeout,
            shutdown: shutdown.clone(),
        };
        tokio::spawn(async move {
            connection.serve(stream).await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(drain = ?limits.drain, "in-flight requests did not finish in time; closing them");
    }
}

/// What serving one accepted connection needs.
struct Connection {
    http: http1::Builder,
    router: Router,
    watcher: Watcher,
    first_request_timeout: Duration,
    shutdown: CancellationToken,
}

impl Connection {
    /// Serves `stream` until it closes, ends on a deadline, or the service stops.
    async fn serve(self, stream: TcpStream) {
        let deadline = tokio::time::Instant::now() + self.first_request_timeout;
        // Nothing but the socket is held until the client sends something; a connection
        // that stays silent, or is still silent when shutdown begins, is closed.
        tokio::select! {
            readable = tokio::time::timeout_at(deadline, stream.readable()) => {
                if !matches!(readable, Ok(Ok(()))) {
                    return;
                }
            }
            () = self.shutdown.cancelled() => return,
        }
        let first_request = Arc::new(AtomicBool::new(false));
        let seen = first_request.clone();
        let service = self
            .router
            .map_request(move |req: axum::extract::Request<Incoming>| {
                seen.store(true, Ordering::Relaxed);
                req
            });
        let connection = self
            .http
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        // Boxed: the waiting state above stays small for a silent crowd.
        let mut connection = Box::pin(self.watcher.watch(connection));
        let ended = tokio::select! {
            ended = &mut connection => ended,
            () = tokio::time::sleep_until(deadline) => {
                if !first_request.load(Ordering::Relaxed) {
                    // No complete request head in time: dropping the connection closes it.
                    return;
                }
                connection.await
            }
        };
        // A header timeout or a client gone mid-request ends here; nothing to report.
        if let Err(e) = ended {
            tracing::debug!(error = %e, "connection ended");
        }
    }
}
