//! The server lifecycle in one place: accept loop, admission of connections, TLS handshake,
//! the clocks every connection and request body runs against, graceful shutdown.
//!
//! # A connection's life
//!
//! 1. **Admission** (at accept). Connections are counted per address (an IPv4 address, or an
//!    IPv6 /64, which one host usually owns whole) and in total. When either count is full, the
//!    new connection *displaces* the most expendable one in that scope, or is closed at once if
//!    none is expendable. A connection serving a request that passed authentication is never
//!    expendable; of the rest, one that has never completed a request goes first, then one idle
//!    between requests, then one with an unauthenticated request in flight; oldest activity
//!    first within each. So thousands of stalled anonymous connections cannot keep a fresh
//!    `/health`, `/auth/token` or authenticated request out: each newcomer pushes out the oldest
//!    stalled one, and one address cannot hold more than its share.
//! 2. **Handshake** (HTTPS): at most `handshake_timeout`.
//! 3. **Headers**: from the end of the handshake (or accept), and from the end of each response,
//!    a connection with no request in flight is closed after `header_timeout`, whether it sent
//!    part of a request or nothing at all (hyper's own header timer only starts at the first
//!    byte, so it is not enough alone).
//! 4. **Body**: a request body has `body_timeout` to arrive, extended by one second per
//!    `body_min_rate` bytes received (so a slow but steady upload finishes, a trickle does not);
//!    past it the request is answered 408 and the connection closed. Streaming uploads (raw
//!    Binary content, STOW-RS) call [`BodyClock::streaming`]: they are bounded instead by
//!    [`STREAM_IDLE`] without a byte.
//! 5. **Shutdown**: on the signal, every connection finishes its current request, at most 30 s.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::outcome::ApiError;

/// A streaming upload is cut off after this long without a byte.
pub const STREAM_IDLE: Duration = Duration::from_secs(60);

/// How the listener behaves.
#[derive(Clone)]
pub struct ServeConfig {
    /// TLS configuration; `None` serves plain HTTP (only with `--insecure-http`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Most connections open at once; past it a newcomer displaces an expendable one.
    pub max_connections: usize,
    /// Most connections open at once from one address (IPv4) or /64 (IPv6).
    pub max_connections_per_address: usize,
    /// Time a connection may sit without a request in flight: before its first request's
    /// headers are complete, and between requests (slowloris guard).
    pub header_timeout: Duration,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a request body may take, before the extension earned by the bytes received.
    pub body_timeout: Duration,
    /// Bytes of body that earn one more second.
    pub body_min_rate: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            tls: None,
            max_connections: 4096,
            max_connections_per_address: 64,
            header_timeout: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(20),
            body_min_rate: 4096,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` becomes true, then waits for open connections
/// to finish their current requests.
pub async fn serve(listener: TcpListener, app: Router, cfg: ServeConfig, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    let conns = Arc::new(Conns::new(cfg.max_connections.max(1), cfg.max_connections_per_address.max(1)));
    let acceptor = cfg.tls.clone().map(TlsAcceptor::from);
    let (closed_tx, mut closed_rx) = watch::channel(());
    loop {
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
        let Some(entry) = conns.admit(peer.ip()) else {
            // Full of connections that are serving authenticated requests: refuse this one
            // now rather than leave it waiting unseen in the accept queue.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        let cfg = cfg.clone();
        let closed = closed_tx.clone();
        tokio::spawn(async move {
            let _closed = closed;
            let slot = entry.slot.clone();
            let shed = async { slot.shed.notified().await };
            tokio::select! {
                _ = connection(stream, peer, acceptor, app, cfg, slot.clone(), shutdown) => {}
                _ = shed => {}
            }
            drop(entry);
        });
    }
    drop(closed_tx);
    // Every connection task holds a sender clone; changed() errors once all are gone.
    let _ = tokio::time::timeout(Duration::from_secs(30), async { while closed_rx.changed().await.is_ok() {} }).await;
    Ok(())
}

/// One connection, from handshake to close. Dropping this future closes the socket.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    app: Router,
    cfg: ServeConfig,
    slot: Arc<Slot>,
    mut shutdown: watch::Receiver<bool>,
) {
    let timing = BodyTiming { base: cfg.body_timeout, min_rate: cfg.body_min_rate.max(1) };
    let svc_slot = slot.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| handle(app.clone(), svc_slot.clone(), peer, timing, req));
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(cfg.header_timeout).max_buf_size(64 * 1024);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(64);
    let idle = idle_watch(&slot, cfg.header_timeout);
    macro_rules! drive {
        ($io:expr) => {{
            let conn = builder.serve_connection_with_upgrades(TokioIo::new($io), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = idle => {}
                _ = shutdown.changed() => { conn.as_mut().graceful_shutdown(); let _ = conn.await; }
            }
        }};
    }
    match acceptor {
        Some(acc) => {
            let Ok(Ok(tls)) = tokio::time::timeout(cfg.handshake_timeout, acc.accept(stream)).await else {
                return;
            };
            slot.touch();
            drive!(tls)
        }
        None => drive!(stream),
    }
}

/// Resolves once the connection has had no request in flight for `limit`.
async fn idle_watch(slot: &Slot, limit: Duration) {
    loop {
        let wait = if slot.inflight.load(Ordering::Acquire) > 0 { limit } else { limit.saturating_sub(slot.since_activity()) };
        if wait.is_zero() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// One request: the clocks and marks around the application.
async fn handle(app: Router, slot: Arc<Slot>, peer: SocketAddr, timing: BodyTiming, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let track = Arc::new(ReqTrack { slot: slot.clone(), state: AtomicU8::new(ANON) });
    slot.inflight.fetch_add(1, Ordering::AcqRel);
    slot.touch();
    let guard = InFlight(track.clone());
    let clock = Arc::new(BodyClock { streaming: AtomicBool::new(false), timed_out: AtomicBool::new(false) });
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(axum::extract::ConnectInfo(peer));
    parts.extensions.insert(Admission(track));
    parts.extensions.insert(clock.clone());
    let body = Body::new(TimedBody::new(body, clock.clone(), timing));
    let resp = match app.oneshot(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let mut resp = if clock.timed_out.load(Ordering::Acquire) {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "timeout", "the request body did not arrive in time").into_response()
    } else {
        resp
    };
    if clock.timed_out.load(Ordering::Acquire) {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp.map(|b| Body::new(Tracked { inner: b, _guard: guard })))
}

// ----- admission -----

/// The scope of the per-address limit: an IPv4 address, or an IPv6 /64.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum AddrKey {
    V4(u32),
    V6(u64),
}

impl AddrKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Self::V4(a.into()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.into()),
                None => Self::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

/// The open connections, by address.
struct Conns {
    max: usize,
    per_address: usize,
    epoch: Instant,
    inner: Mutex<ConnsInner>,
}

#[derive(Default)]
struct ConnsInner {
    next_id: u64,
    total: usize,
    by_addr: HashMap<AddrKey, Vec<Arc<Slot>>>,
}

/// What the server knows of one connection.
struct Slot {
    id: u64,
    key: AddrKey,
    epoch: Instant,
    /// Milliseconds after `epoch` of the last accept, handshake, request start or request end.
    last: AtomicU64,
    /// Requests in flight (until their response body ends).
    inflight: AtomicUsize,
    /// Of those, requests that passed authentication.
    authed: AtomicUsize,
    /// A request was completed on this connection.
    served: AtomicBool,
    /// Set when the connection is displaced.
    shed: Notify,
}

impl Slot {
    fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
    }
    fn since_activity(&self) -> Duration {
        Duration::from_millis((self.epoch.elapsed().as_millis() as u64).saturating_sub(self.last.load(Ordering::Acquire)))
    }
    /// `None` while serving an authenticated request; otherwise lower is shed first.
    fn expendability(&self) -> Option<(u8, u64)> {
        if self.authed.load(Ordering::Acquire) > 0 {
            return None;
        }
        let class = match (self.served.load(Ordering::Acquire), self.inflight.load(Ordering::Acquire) > 0) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        };
        Some((class, self.last.load(Ordering::Acquire)))
    }
}

/// A registered connection; dropping it frees its place.
struct Entry {
    conns: Arc<Conns>,
    slot: Arc<Slot>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.conns.remove(&self.slot);
    }
}

impl Conns {
    fn new(max: usize, per_address: usize) -> Self {
        Self { max, per_address, epoch: Instant::now(), inner: Mutex::new(ConnsInner::default()) }
    }

    /// Admits a connection from `ip`, displacing an expendable one if a limit is full;
    /// `None` when nothing can be displaced.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Entry> {
        let key = AddrKey::of(ip);
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        if inner.by_addr.get(&key).is_some_and(|l| l.len() >= self.per_address) {
            let victim = inner.by_addr.get(&key).and_then(|l| pick(l.iter()))?;
            Self::evict(inner, &victim);
        }
        if inner.total >= self.max {
            let victim = pick(inner.by_addr.values().flatten())?;
            Self::evict(inner, &victim);
        }
        inner.next_id += 1;
        let slot = Arc::new(Slot {
            id: inner.next_id,
            key,
            epoch: self.epoch,
            last: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            authed: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            shed: Notify::new(),
        });
        slot.touch();
        inner.by_addr.entry(key).or_default().push(slot.clone());
        inner.total += 1;
        Some(Entry { conns: self.clone(), slot })
    }

    fn evict(inner: &mut ConnsInner, victim: &Arc<Slot>) {
        if Self::unlist(inner, victim) {
            victim.shed.notify_one();
        }
    }

    fn unlist(inner: &mut ConnsInner, slot: &Slot) -> bool {
        let Some(list) = inner.by_addr.get_mut(&slot.key) else {
            return false;
        };
        let Some(i) = list.iter().position(|s| s.id == slot.id) else {
            return false;
        };
        list.swap_remove(i);
        if list.is_empty() {
            inner.by_addr.remove(&slot.key);
        }
        inner.total -= 1;
        true
    }

    fn remove(&self, slot: &Slot) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Self::unlist(&mut g, slot);
    }
}

fn pick<'a>(slots: impl Iterator<Item = &'a Arc<Slot>>) -> Option<Arc<Slot>> {
    slots.filter_map(|s| s.expendability().map(|e| (e, s))).min_by_key(|(e, _)| *e).map(|(_, s)| s.clone())
}

const ANON: u8 = 0;
const AUTHED: u8 = 1;
const DONE: u8 = 2;

struct ReqTrack {
    slot: Arc<Slot>,
    state: AtomicU8,
}

/// In each request's extensions: lets the authentication layer mark the request as coming
/// from a verified client, which makes its connection not expendable while it runs.
#[derive(Clone)]
pub(crate) struct Admission(Arc<ReqTrack>);

impl Admission {
    pub(crate) fn authenticated(&self) {
        if self.0.state.compare_exchange(ANON, AUTHED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.0.slot.authed.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Held until the response body ends (or the request is dropped).
struct InFlight(Arc<ReqTrack>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let slot = &self.0.slot;
        if self.0.state.swap(DONE, Ordering::AcqRel) == AUTHED {
            slot.authed.fetch_sub(1, Ordering::AcqRel);
        }
        slot.served.store(true, Ordering::Release);
        slot.touch();
        slot.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until it ends.
struct Tracked {
    inner: Body,
    _guard: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ----- request bodies -----

/// In each request's extensions: the state of its body's clock.
pub struct BodyClock {
    streaming: AtomicBool,
    timed_out: AtomicBool,
}

impl BodyClock {
    /// The body is a streaming upload: bounded by [`STREAM_IDLE`] between bytes instead of the
    /// body deadline.
    pub fn streaming(&self) {
        self.streaming.store(true, Ordering::Release);
    }
}

#[derive(Clone, Copy)]
struct BodyTiming {
    base: Duration,
    min_rate: u64,
}

/// The body stalled past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimeout;

struct TimedBody {
    inner: Incoming,
    clock: Arc<BodyClock>,
    timing: BodyTiming,
    start: tokio::time::Instant,
    last: tokio::time::Instant,
    received: u64,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(inner: Incoming, clock: Arc<BodyClock>, timing: BodyTiming) -> Self {
        let now = tokio::time::Instant::now();
        Self { inner, clock, timing, start: now, last: now, received: 0, sleep: Box::pin(tokio::time::sleep_until(now + timing.base)) }
    }
    fn deadline(&self) -> tokio::time::Instant {
        if self.clock.streaming.load(Ordering::Acquire) {
            self.last + STREAM_IDLE
        } else {
            self.start + self.timing.base + Duration::from_secs(self.received / self.timing.min_rate)
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.received += d.len() as u64;
                }
                this.last = tokio::time::Instant::now();
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline();
                if this.sleep.deadline() != deadline {
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.clock.timed_out.store(true, Ordering::Release);
                        Poll::Ready(Some(Err(Box::new(BodyTimeout))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_is_limited_per_64_and_mapped_v4_as_v4() {
        assert!(AddrKey::of(ip("2001:db8::1")) == AddrKey::of(ip("2001:db8::ffff:1")));
        assert!(AddrKey::of(ip("2001:db8:0:1::1")) != AddrKey::of(ip("2001:db8::1")));
        assert!(AddrKey::of(ip("::ffff:10.0.0.1")) == AddrKey::of(ip("10.0.0.1")));
    }

    #[test]
    fn a_full_address_displaces_its_oldest_idle_connection_never_an_authenticated_one() {
        let c = Arc::new(Conns::new(100, 2));
        let a = c.admit(ip("10.0.0.1")).unwrap();
        let b = c.admit(ip("10.0.0.1")).unwrap();
        // `a` serves an authenticated request: `b` is displaced by the third.
        a.slot.authed.fetch_add(1, Ordering::AcqRel);
        let third = c.admit(ip("10.0.0.1")).unwrap();
        let g = c.inner.lock().unwrap();
        let ids: Vec<u64> = g.by_addr[&AddrKey::of(ip("10.0.0.1"))].iter().map(|s| s.id).collect();
        drop(g);
        assert!(ids.contains(&a.slot.id) && ids.contains(&third.slot.id) && !ids.contains(&b.slot.id));
        // Both authenticated: the next one is refused.
        third.slot.authed.fetch_add(1, Ordering::AcqRel);
        assert!(c.admit(ip("10.0.0.1")).is_none());
        // Another address is not affected.
        assert!(c.admit(ip("10.0.0.2")).is_some());
    }

    #[test]
    fn a_full_server_sheds_never_served_connections_before_served_ones() {
        let c = Arc::new(Conns::new(2, 10));
        let served = c.admit(ip("10.0.0.1")).unwrap();
        served.slot.served.store(true, Ordering::Release);
        let stalled = c.admit(ip("10.0.0.2")).unwrap();
        let _new = c.admit(ip("10.0.0.3")).unwrap();
        let g = c.inner.lock().unwrap();
        assert_eq!(g.total, 2);
        assert!(!g.by_addr.contains_key(&stalled.slot.key));
        assert!(g.by_addr.contains_key(&served.slot.key));
    }
}
