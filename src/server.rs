//! Serving HTTP: the accept loop, configured through hyper's own options.
//!
//! `axum::serve` exposes none of hyper's timeouts, so this loop serves each connection
//! with hyper's HTTP/1 builder: `header_read_timeout` (hyper's one per-connection timer:
//! it bounds both a slowly sent request head and an idle keep-alive connection, from when
//! the connection opened or answered its last request), a cap on connections served at
//! once (while at the cap, the loop stops accepting and new connections wait in the
//! kernel's backlog), and a graceful drain on shutdown. Request bodies and handlers are
//! bounded by the request timeout in [`crate::routes`]. While the service drains (see
//! [`crate::app`]), every response says `Connection: close`, so a balancer's pooled
//! connection is closed after a response rather than under a request it just sent.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

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

/// How one listener serves.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// hyper's `header_read_timeout`.
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
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A header timeout or a client gone mid-request ends here; nothing to report.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended");
            }
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
