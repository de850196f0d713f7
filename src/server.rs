//! The accept loop, the connections, and the shutdown phases.
//!
//! Every connection starts on the exchange path ([`conn`]), which serves device exchanges
//! itself and hands any other request, with the connection, to hyper.
//!
//! Shutdown, in order:
//! 1. stop accepting (the listener is dropped);
//! 2. release parked polls: each answers `{}` at once (they watch the signal themselves,
//!    because hyper's graceful shutdown only turns keep-alive off);
//! 3. ask every connection to close after its current response (hyper's graceful shutdown;
//!    the exchange path closes its idle connections and answers with `connection: close`);
//! 4. wait for them, at most `server.shutdown_grace_secs`;
//! 5. write a final snapshot and close the journal.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::service;

pub mod conn;

/// Binds the listening socket with a deep accept queue.
///
/// Why: after a network blip thousands of phones reconnect within the same second. With the
/// usual backlog of 128 or 1024, the kernel drops the excess SYNs and those phones wait for
/// TCP's retransmission (1 s, then 3 s) before they can even ask; the kernel caps the value at
/// `net.core.somaxconn` (4096 by default since Linux 5.4; see docs).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(65_535)
}

/// Counts one open connection for as long as it lives.
pub(crate) struct ConnectionGuard(Arc<Gateway>);

/// Runs the gateway on `listener` until `signal` resolves, then shuts down in phases.
pub async fn run(listener: TcpListener, gateway: Arc<Gateway>, signal: impl Future<Output = ()>) {
    let _maintenance = gateway.start_maintenance();
    match crate::admin::bind(&gateway.config.server.data_dir) {
        Ok(admin) => {
            tokio::spawn(crate::admin::serve(
                admin,
                gateway.clone(),
                gateway.shutdown_handle(),
            ));
        }
        Err(error) => {
            warn!(%error, "admin socket unavailable; `wheresmyfox user add` will not reach this server")
        }
    }
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(
            gateway.config.server.header_read_timeout_secs,
        ))
        .keep_alive(gateway.config.server.keep_alive);
    let handoff = Arc::new(conn::Handoff { builder });
    tokio::pin!(signal);
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    serve(stream, peer, &gateway, &handoff, &graceful);
                }
                Err(error) => {
                    // Usually EMFILE: out of descriptors. Back off rather than spin; existing
                    // connections keep being served meanwhile.
                    warn!(%error, "accept failed; backing off {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            _ = &mut signal => break,
        }
    }
    info!("shutting down: no longer accepting");
    drop(listener);
    gateway.begin_shutdown();
    let grace = Duration::from_secs(gateway.config.server.shutdown_grace_secs);
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => info!("all connections closed"),
        Err(_) => warn!(
            open = gateway.stats.connections.load(Ordering::Relaxed),
            "grace period over; closing the remaining connections"
        ),
    }
    gateway.close().await;
}

/// Serves one accepted connection on its own task, or refuses it when at the cap.
fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    gateway: &Arc<Gateway>,
    handoff: &Arc<conn::Handoff>,
    graceful: &GracefulShutdown,
) {
    let open = gateway.stats.connections.fetch_add(1, Ordering::Relaxed);
    let guard = ConnectionGuard(gateway.clone());
    if open >= gateway.config.server.max_connections {
        gateway.stats.refused.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(refuse(stream, guard));
        return;
    }
    // Commands are tiny and latency is the point: do not let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let connection = conn::serve(stream, peer, handoff.clone(), guard, graceful.watcher());
    tokio::spawn(connection.instrument(info_span!("conn", %peer)));
}

pin_project_lite::pin_project! {
    /// One connection being served, holding its place under the connection cap until the
    /// connection ends (the guard drops with the finished future).
    ///
    /// A named future rather than an `async` block because an `async` block that awaits a
    /// future it captured stores that future twice (as the captured variable and as the
    /// future being awaited): that doubled the task every open connection keeps (from about
    /// 0.9 KB to 1.7 KB, see docs/PERFORMANCE.md).
    pub(crate) struct Served<C> {
        #[pin]
        connection: C,
        _guard: ConnectionGuard,
    }
}

impl<C, E> Future for Served<C>
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Err(error) = ready!(self.project().connection.poll(cx)) {
            debug!(%error, "connection ended with an error");
        }
        Poll::Ready(())
    }
}

/// Serves `GET /metrics` alone on its own listener (`metrics.listen`), so that it can be kept
/// off the public address; stops when the gateway begins shutting down.
pub async fn serve_metrics(listener: TcpListener, gateway: Arc<Gateway>) {
    let mut shutdown = gateway.shutdown_handle();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(
            gateway.config.server.header_read_timeout_secs,
        ));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => return,
        };
        let gateway = gateway.clone();
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let response = if request.uri().path() == "/metrics" {
                    service::ops::metrics(&gateway)
                } else {
                    service::error_response(&ApiError::NotFound)
                };
                std::future::ready(Ok::<_, std::convert::Infallible>(response))
            }),
        );
        tokio::spawn(
            async move {
                if let Err(error) = connection.await {
                    debug!(%error, "metrics connection ended with an error");
                }
            }
            .instrument(info_span!("metrics", %peer)),
        );
    }
}

/// Answers 503 and closes, without parsing anything: cheap, so a flood cannot stall us.
///
/// The request head is read first (at most 8 KiB, at most one second) because an HTTP client
/// that gets an answer before it has sent its request treats it as a broken connection
/// rather than as the 503 it is.
async fn refuse(mut stream: TcpStream, _guard: ConnectionGuard) {
    let drain = async {
        let mut head = [0u8; 8192];
        let mut read = 0;
        while read < head.len() {
            match stream.read(&mut head[read..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
            if head[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    let (status, body) = service::error_body(&ApiError::Overloaded);
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
