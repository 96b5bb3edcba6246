//! The server lifecycle in one place: accept loop, TLS handshake, connection cap, header
//! timeout, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How the listener behaves.
pub struct ServeConfig {
    /// TLS configuration; `None` serves plain HTTP (only with `--insecure-http`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Most connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Time allowed for a client to send request headers (slowloris guard).
    pub header_timeout: Duration,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self { tls: None, max_connections: 1024, header_timeout: Duration::from_secs(15), handshake_timeout: Duration::from_secs(10) }
    }
}

/// Serves `app` on `listener` until `shutdown` becomes true, then waits for open connections
/// to finish their current requests.
pub async fn serve(listener: TcpListener, app: Router, cfg: ServeConfig, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    let acceptor = cfg.tls.clone().map(TlsAcceptor::from);
    let (closed_tx, mut closed_rx) = watch::channel(());
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
            _ = shutdown.changed() => break,
        };
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let mut shutdown = shutdown.clone();
        let header_timeout = cfg.header_timeout;
        let handshake_timeout = cfg.handshake_timeout;
        let closed = closed_tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _closed = closed;
            let svc = TowerToHyperService::new(app.into_service::<hyper::body::Incoming>().map_request(move |mut r: hyper::Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                r
            }));
            let mut builder = Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(64 * 1024);
            builder.http2().timer(TokioTimer::new()).max_concurrent_streams(64);
            match acceptor {
                Some(acc) => {
                    let tls = match tokio::time::timeout(handshake_timeout, acc.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        _ => return,
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = shutdown.changed() => { conn.as_mut().graceful_shutdown(); let _ = conn.await; }
                    }
                }
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = shutdown.changed() => { conn.as_mut().graceful_shutdown(); let _ = conn.await; }
                    }
                }
            }
        });
    }
    drop(closed_tx);
    // Every connection task holds a sender clone; changed() errors once all are gone.
    let _ = tokio::time::timeout(Duration::from_secs(30), async { while closed_rx.changed().await.is_ok() {} }).await;
    Ok(())
}
