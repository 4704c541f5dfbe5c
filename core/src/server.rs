//! How Aqueduct's gRPC servers take connections and work, with limits: the one accept path of
//! the TLS servers (the hub's API and a spoke's peer API), the rustls configuration they share,
//! tonic's settings for every server (those two and the unix-socket ones), and the per-caller
//! work limits the chunk streams take turns under.
//!
//! The accept path ([`incoming`]) accepts TCP, then does each TLS handshake in a task of its
//! own under [`ServerLimits::handshake_timeout`]. Connections still in their handshake are
//! bounded apart ([`ServerLimits::max_handshakes`]): when that many are pending, a new one
//! pushes out the oldest, so that clients that never begin TLS (or begin it and stall) cannot
//! keep out one that completes its handshake in a round trip, and each costs the server an
//! fd and a few KiB for at most the timeout. A connection whose handshake succeeded takes a
//! permit of [`ServerLimits::max_connections`], held for as long as the connection lives
//! ([`LimitedTls`]). Past that cap a new connection is closed at once, not made to wait: a
//! waiting connection would hold its fd and TLS state with no promise of a turn (what a flood
//! wants), while a refused client reconnects with the backoff it has anyway, and finds room as
//! soon as a connection ends. The TLS streams go to tonic through `serve_with_incoming_shutdown`;
//! [`LimitedTls`] is `Connected` like `tokio_rustls`'s stream, so handlers read the caller's
//! certificate with `Request::peer_certs()` as before.
//!
//! The rustls `ServerConfig` is built in one place, [`server_config`]: client certificates are
//! required and verified against the installation's CA (`WebPkiClientVerifier`), ALPN is h2.
//!
//! [`KeyedLimit`] gives each key (a region at the hub, a peer at a spoke) its own semaphore:
//! streams wait their turn for a bounded time ([`KeyedLimit::enter`]), then are refused with
//! RESOURCE_EXHAUSTED, so that one key's callers cannot make the server hold more than its
//! share, and the others are not held up by them.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
pub use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tracing::{debug, info, warn};

/// How a TLS gRPC server takes connections, and how many calls each may carry at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections past their TLS handshake held at once; past it, new ones are closed at once.
    pub max_connections: usize,
    /// TCP connections still in their TLS handshake; past it, the oldest is dropped.
    pub max_handshakes: usize,
    /// How long a TLS handshake may take, from the TCP accept.
    pub handshake_timeout: Duration,
    /// Calls (HTTP/2 streams) one connection may carry at once (SETTINGS_MAX_CONCURRENT_STREAMS:
    /// a client queues its calls past it).
    pub max_streams_per_connection: u32,
}

impl ServerLimits {
    /// Checks the values as `[limits]` of hub and spoke give them (the keys have the fields'
    /// names); `min_streams` is the fewest calls per connection the server's clients work with.
    pub fn validate(&self, min_streams: u32) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("limits.max_connections must be at least 1".into());
        }
        if self.max_handshakes == 0 {
            return Err("limits.max_handshakes must be at least 1".into());
        }
        if self.handshake_timeout.is_zero() {
            return Err("limits.handshake_timeout must be more than 0s, e.g. \"10s\"".into());
        }
        if self.max_streams_per_connection < min_streams {
            return Err(format!(
                "limits.max_streams_per_connection is {}; it must be at least {min_streams}: a client keeps a watch or a stream open and calls beside it",
                self.max_streams_per_connection
            ));
        }
        Ok(())
    }
}

/// How often a server pings a connection's client, and how long it waits for the answer,
/// unless it says otherwise: a client that vanished without closing its connection is dropped
/// within twice this.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// The largest header block a server accepts on one call (gRPC's metadata are a few hundred
/// bytes).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;

/// A tonic server with Aqueduct's settings: at most `max_streams_per_connection` calls at once
/// per connection, an HTTP/2 ping every `keepalive` (answered within as long, or the
/// connection is dropped), header blocks bounded. Every server of the project starts from it
/// (the unix-socket ones too, with [`KEEPALIVE`]); message sizes are set per service.
pub fn grpc_server(max_streams_per_connection: u32, keepalive: Duration) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(max_streams_per_connection)
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive))
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{what} holds no PEM certificate")]
    NoCertificate { what: &'static str },
    #[error("{what} is not PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("the TLS configuration is not usable: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the client CA cannot verify clients: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The rustls configuration of Aqueduct's TLS servers: the server's certificate (chain) and
/// key, every client required to present a certificate issued by `client_ca`, ALPN h2. The
/// one place where it is built (a custom client verifier goes here).
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let certs = |pem: &[u8], what: &'static str| {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsSetupError::Pem { what, reason: e.to_string() })?;
        if certs.is_empty() {
            return Err(TlsSetupError::NoCertificate { what });
        }
        Ok(certs)
    };
    let chain = certs(cert_pem, "the server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsSetupError::Pem { what: "the server key", reason: e.to_string() })?;
    let mut roots = RootCertStore::empty();
    for ca in certs(client_ca_pem, "the client CA")? {
        roots.add(ca)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What the accept path did, since it started (for logs and tests).
#[derive(Debug, Default)]
pub struct AcceptStats {
    /// TLS connections open (each holds a permit).
    pub open: AtomicUsize,
    /// Connections in their TLS handshake.
    pub handshaking: AtomicUsize,
    /// Connections closed at once: every permit taken.
    pub refused: AtomicU64,
    /// Handshakes dropped to make room for a newer one.
    pub evicted: AtomicU64,
    /// Handshakes that took longer than the timeout.
    pub timed_out: AtomicU64,
    /// Handshakes that failed (no or a bad client certificate, not TLS...).
    pub failed: AtomicU64,
}

/// A TLS connection and the permit it holds while it lives.
pub struct LimitedTls {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    _permit: OwnedSemaphorePermit,
    stats: Arc<AcceptStats>,
}

impl Drop for LimitedTls {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connected for LimitedTls {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for LimitedTls {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedTls {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The handshakes in progress, oldest first: admitting one past the bound pushes out the
/// oldest. Pure bookkeeping; the accept path cancels what it returns.
#[derive(Debug)]
struct Handshakes {
    max: usize,
    next: u64,
    pending: BTreeMap<u64, CancellationToken>,
}

impl Handshakes {
    fn new(max: usize) -> Self {
        Self { max: max.max(1), next: 0, pending: BTreeMap::new() }
    }

    /// Registers a new handshake: its id, its token (cancelled if it is pushed out), and the
    /// token of the one it pushed out, if the bound was reached.
    fn admit(&mut self) -> (u64, CancellationToken, Option<CancellationToken>) {
        let evicted = if self.pending.len() >= self.max { self.pending.pop_first().map(|(_, t)| t) } else { None };
        let id = self.next;
        self.next += 1;
        let token = CancellationToken::new();
        self.pending.insert(id, token.clone());
        (id, token, evicted)
    }

    /// The handshake ended (either way).
    fn done(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending.len()
    }
}

/// Says something at most once per interval (a flood must not flood the log).
struct Throttle {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Self { every, last: Mutex::new(None) }
    }

    fn due(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < self.every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// The accepted TLS connections of a listener, for `serve_with_incoming_shutdown`. It owns the
/// listener: when tonic drops it (as it stops accepting), the port is closed at once and the
/// handshakes under way are abandoned.
pub struct TlsIncoming {
    listener: TcpListener,
    shared: Arc<Shared>,
    connections: mpsc::Receiver<LimitedTls>,
    /// Set after an accept error (out of descriptors): accepting resumes when it fires.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    pub stats: Arc<AcceptStats>,
}

/// What the handshake tasks share with the listener.
struct Shared {
    acceptor: tokio_rustls::TlsAcceptor,
    limits: ServerLimits,
    name: &'static str,
    permits: Arc<Semaphore>,
    handshakes: Mutex<Handshakes>,
    stats: Arc<AcceptStats>,
    say: Throttle,
    done: mpsc::Sender<LimitedTls>,
    stop: CancellationToken,
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// Connections accepted in one poll before the accept loop lets other tasks run.
const ACCEPTS_PER_POLL: usize = 64;

impl tokio_stream::Stream for TlsIncoming {
    type Item = Result<LimitedTls, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        for _ in 0..ACCEPTS_PER_POLL {
            if let Poll::Ready(Some(connection)) = this.connections.poll_recv(cx) {
                return Poll::Ready(Some(Ok(connection)));
            }
            if let Some(pause) = &mut this.pause {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.pause = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, peer))) => this.shared.clone().admit(tcp, peer),
                Poll::Ready(Err(e)) => {
                    // Out of file descriptors, typically: wait a little rather than spin.
                    if this.shared.say.due() {
                        warn!(server = this.shared.name, error = %e, "cannot accept a connection");
                    }
                    this.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Accepts connections on `listener` under `limits`, with TLS as `tls` says; `name` (the
/// hub's API, the peer API) is for the log. See the module's documentation.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    limits: ServerLimits,
    name: &'static str,
) -> TlsIncoming {
    let (done, connections) = mpsc::channel(64);
    let stats = Arc::new(AcceptStats::default());
    info!(
        server = name,
        max_connections = limits.max_connections,
        max_handshakes = limits.max_handshakes,
        handshake_timeout = ?limits.handshake_timeout,
        max_streams_per_connection = limits.max_streams_per_connection,
        "accepting connections"
    );
    let shared = Arc::new(Shared {
        acceptor: tokio_rustls::TlsAcceptor::from(tls),
        limits,
        name,
        permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        handshakes: Mutex::new(Handshakes::new(limits.max_handshakes)),
        stats: stats.clone(),
        say: Throttle::new(Duration::from_secs(10)),
        done,
        stop: CancellationToken::new(),
    });
    TlsIncoming { listener, shared, connections, pause: None, stats }
}

impl Shared {
    /// Takes a new TCP connection: closed at once if every permit is taken, else its TLS
    /// handshake runs in a task of its own (pushing out the oldest pending one if there are
    /// too many), and a connection that completes it takes a permit or is closed.
    fn admit(self: Arc<Self>, tcp: TcpStream, peer: std::net::SocketAddr) {
        let stats = &self.stats;
        // Every permit taken: closed at once, before any TLS work.
        if self.permits.available_permits() == 0 {
            refuse(stats, &self.say, self.name, &self.limits, peer);
            return;
        }
        let _ = tcp.set_nodelay(true);
        let (id, cancel, evicted) = self.handshakes.lock().unwrap_or_else(|e| e.into_inner()).admit();
        if let Some(oldest) = evicted {
            oldest.cancel();
            stats.evicted.fetch_add(1, Ordering::Relaxed);
            if self.say.due() {
                warn!(
                    server = self.name,
                    max_handshakes = self.limits.max_handshakes,
                    "too many connections in their TLS handshake: dropping the oldest (limits.max_handshakes)"
                );
            }
        }
        stats.handshaking.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let outcome = tokio::select! {
                done = tokio::time::timeout(self.limits.handshake_timeout, self.acceptor.accept(tcp)) => Some(done),
                _ = cancel.cancelled() => None,
                _ = self.stop.cancelled() => None,
            };
            self.handshakes.lock().unwrap_or_else(|e| e.into_inner()).done(id);
            let stats = &self.stats;
            stats.handshaking.fetch_sub(1, Ordering::Relaxed);
            let tls = match outcome {
                Some(Ok(Ok(tls))) => tls,
                Some(Ok(Err(e))) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    debug!(server = self.name, %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Some(Err(_)) => {
                    stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    debug!(server = self.name, %peer, "no TLS handshake within {:?}; closed", self.limits.handshake_timeout);
                    return;
                }
                None => return,
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                refuse(stats, &self.say, self.name, &self.limits, peer);
                return;
            };
            stats.open.fetch_add(1, Ordering::Relaxed);
            let _ = self.done.send(LimitedTls { inner: tls, _permit: permit, stats: stats.clone() }).await;
        });
    }
}

fn refuse(stats: &AcceptStats, say: &Throttle, name: &str, limits: &ServerLimits, peer: std::net::SocketAddr) {
    stats.refused.fetch_add(1, Ordering::Relaxed);
    if say.due() {
        warn!(
            server = name,
            %peer,
            max_connections = limits.max_connections,
            "connection cap reached: closing new connections until some end (limits.max_connections)"
        );
    }
}

/// Per key (a region, a peer), at most `per_key` holders at once; a holder past it waits up to
/// `wait` for a turn, in order of arrival, and is refused after that.
pub struct KeyedLimit {
    per_key: usize,
    wait: Duration,
    keys: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A key had no turn free within the wait.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key} already has {held} at once, the most allowed; none ended within {waited:?}")]
pub struct Busy {
    pub key: String,
    pub held: usize,
    pub waited: Duration,
}

impl KeyedLimit {
    pub fn new(per_key: usize, wait: Duration) -> Self {
        Self { per_key: per_key.max(1), wait, keys: Mutex::default() }
    }

    pub fn per_key(&self) -> usize {
        self.per_key
    }

    fn semaphore(&self, key: &str) -> Arc<Semaphore> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = keys.get(key) {
            return s.clone();
        }
        // Keys nobody holds or waits for are forgotten as new ones come.
        keys.retain(|_, s| Arc::strong_count(s) > 1);
        keys.entry(key.to_string()).or_insert_with(|| Arc::new(Semaphore::new(self.per_key))).clone()
    }

    /// Takes `n` of `key`'s turns (at most all of them), waiting up to the limit's wait.
    pub async fn enter_many(&self, key: &str, n: usize) -> Result<OwnedSemaphorePermit, Busy> {
        let n = n.clamp(1, self.per_key).min(u32::MAX as usize) as u32;
        let semaphore = self.semaphore(key);
        match tokio::time::timeout(self.wait, semaphore.acquire_many_owned(n)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Busy { key: key.to_string(), held: self.per_key, waited: self.wait }),
        }
    }

    /// Takes `n` of `key`'s turns (at most all of them), waiting as long as it takes (or until
    /// the caller gives up: the future can be dropped).
    pub async fn wait_many(&self, key: &str, n: usize) -> OwnedSemaphorePermit {
        let n = n.clamp(1, self.per_key).min(u32::MAX as usize) as u32;
        let semaphore = self.semaphore(key);
        match semaphore.acquire_many_owned(n).await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => unreachable!("a key's semaphore is never closed"),
        }
    }

    /// Takes one of `key`'s turns, waiting up to the limit's wait.
    pub async fn enter(&self, key: &str) -> Result<OwnedSemaphorePermit, Busy> {
        self.enter_many(key, 1).await
    }

    /// Turns of `key` taken now.
    pub fn held(&self, key: &str) -> usize {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.get(key).map_or(0, |s| self.per_key - s.available_permits())
    }
}

/// Serde glue for the `[limits]` sections: durations and sizes written with units
/// (`handshake_timeout = "10s"`, `relay_memory_per_region = "128MiB"`), read back as written.
/// Use with `#[serde(with = "aqueduct_core::server::human::duration")]`.
pub mod human {
    pub mod duration {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            let text = String::deserialize(d)?;
            aqueduct_proto::parse_duration(&text).map_err(serde::de::Error::custom)
        }

        pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&aqueduct_proto::format_duration(*d))
        }
    }

    pub mod size {
        use aqueduct_proto::Size;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
            String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
        }

        /// In bytes (`"134217728B"`) when the binary units would round it: read back exactly.
        pub fn serialize<S: Serializer>(size: &Size, s: S) -> Result<S::Ok, S::Error> {
            let text = size.to_string();
            match text.parse::<Size>() {
                Ok(back) if back == *size => s.serialize_str(&text),
                _ => s.serialize_str(&format!("{}B", size.0)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_past_the_bound_pushes_out_the_oldest() {
        let mut h = Handshakes::new(2);
        let (a, ta, none) = h.admit();
        assert!(none.is_none());
        let (b, _tb, none) = h.admit();
        assert!(none.is_none());
        assert_eq!(h.len(), 2);
        let (c, _tc, evicted) = h.admit();
        let evicted = evicted.expect("the bound was reached");
        evicted.cancel();
        assert!(ta.is_cancelled(), "the oldest (a) is the one pushed out");
        assert_eq!(h.len(), 2);
        // A handshake that ends leaves room: the next one pushes nobody out.
        h.done(b);
        let (_, _, none) = h.admit();
        assert!(none.is_none());
        // Ending one that was pushed out already changes nothing.
        h.done(a);
        assert_eq!(h.len(), 2);
        assert!(a < b && b < c);
    }

    #[tokio::test]
    async fn keys_take_turns_apart_and_a_key_past_its_share_is_refused_after_the_wait() {
        let limit = KeyedLimit::new(2, Duration::from_millis(50));
        let first = limit.enter("eu").await.unwrap();
        let _second = limit.enter("eu").await.unwrap();
        assert_eq!(limit.held("eu"), 2);
        let busy = limit.enter("eu").await.unwrap_err();
        assert_eq!((busy.key.as_str(), busy.held), ("eu", 2));
        assert!(busy.to_string().contains("eu already has 2"), "{busy}");
        // Another key is not held up by eu.
        let _us = limit.enter("us").await.unwrap();
        // A turn given back is the next waiter's.
        let waiter = tokio::spawn(async move {
            let limit = limit;
            let got = limit.enter("eu").await.is_ok();
            (got, limit)
        });
        drop(first);
        let (got, limit) = waiter.await.unwrap();
        assert!(got);
        // Asking for more than a key has takes all of them, not forever.
        drop(_us);
        assert!(limit.enter_many("us", 10).await.is_ok());
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate (PEM), as the hub's
    /// PKI makes them.
    fn pki() -> (String, (String, String), (String, String)) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let issue = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names).unwrap().signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        (ca_pem.clone(), issue(vec!["127.0.0.1".into(), "localhost".into()]), issue(vec!["client.test".into()]))
    }

    /// Answers `Has` with whether the caller's certificate reached the handler.
    struct SeesCerts;

    #[tonic::async_trait]
    impl aqueduct_proto::spoke::v1::peer_server::Peer for SeesCerts {
        async fn has(
            &self,
            request: tonic::Request<aqueduct_proto::spoke::v1::HasRequest>,
        ) -> Result<tonic::Response<aqueduct_proto::spoke::v1::HasResponse>, tonic::Status> {
            let certs = request.peer_certs().is_some_and(|c| !c.is_empty());
            Ok(tonic::Response::new(aqueduct_proto::spoke::v1::HasResponse { held: vec![certs] }))
        }

        type FetchChunksStream = tokio_stream::Empty<Result<aqueduct_proto::hub::v1::ChunkData, tonic::Status>>;

        async fn fetch_chunks(
            &self,
            _request: tonic::Request<aqueduct_proto::spoke::v1::PeerFetchRequest>,
        ) -> Result<tonic::Response<Self::FetchChunksStream>, tonic::Status> {
            Ok(tonic::Response::new(tokio_stream::empty()))
        }
    }

    async fn client(
        addr: std::net::SocketAddr,
        ca: &str,
        identity: Option<&(String, String)>,
    ) -> Result<aqueduct_proto::spoke::v1::peer_client::PeerClient<tonic::transport::Channel>, String> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(aqueduct_proto::spoke::v1::peer_client::PeerClient::new(channel))
    }

    async fn has(
        client: &mut aqueduct_proto::spoke::v1::peer_client::PeerClient<tonic::transport::Channel>,
    ) -> Result<Vec<bool>, tonic::Status> {
        Ok(client.has(aqueduct_proto::spoke::v1::HasRequest { digests: vec![] }).await?.into_inner().held)
    }

    /// Polls `check` every 20 ms until it holds, for at most 20 s (a bound only a broken
    /// server reaches: this checks outcomes, not speed).
    async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
        let started = Instant::now();
        while !check().await {
            assert!(started.elapsed() < Duration::from_secs(20), "never: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_connections_are_capped_and_handshakes_bounded_in_time_and_number() {
        use tokio::io::AsyncReadExt;
        let (ca, server, user) = pki();
        let tls = server_config(server.0.as_bytes(), server.1.as_bytes(), ca.as_bytes()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ServerLimits {
            max_connections: 1,
            max_handshakes: 4,
            handshake_timeout: Duration::from_millis(500),
            max_streams_per_connection: 8,
        };
        let incoming = incoming(listener, tls, limits, "test");
        let stats = incoming.stats.clone();
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            grpc_server(limits.max_streams_per_connection, KEEPALIVE)
                .add_service(aqueduct_proto::spoke::v1::peer_server::PeerServer::new(SeesCerts))
                .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
        );

        // The handler sees the caller's certificate through the permit-holding stream.
        let mut first = client(addr, &ca, Some(&user)).await.unwrap();
        assert_eq!(has(&mut first).await.unwrap(), [true]);
        assert_eq!(stats.open.load(Ordering::Relaxed), 1);

        // The cap is one connection: a second is closed, whatever it tries.
        let refused = match client(addr, &ca, Some(&user)).await {
            Err(_) => true,
            Ok(mut second) => has(&mut second).await.is_err(),
        };
        assert!(refused, "a connection past the cap was served");
        assert!(stats.refused.load(Ordering::Relaxed) >= 1);

        // Once the first is gone, a new one is served.
        drop(first);
        eventually("a connection served after the first ended", async || match client(addr, &ca, Some(&user)).await {
            Ok(mut c) => has(&mut c).await.is_ok(),
            Err(_) => false,
        })
        .await;

        // Ten connections that never begin TLS (once the served one is gone: at the cap they
        // would be refused at once): six push out older ones, the last four time out; every
        // one is closed.
        eventually("the served connection closed", async || stats.open.load(Ordering::Relaxed) == 0).await;
        let mut idle = Vec::new();
        for _ in 0..10 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        for stream in &mut idle {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await;
            assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "an idle connection was kept: {read:?}");
        }
        // (Counted just after each connection is closed.)
        eventually("idle handshakes counted, none left", async || {
            stats.evicted.load(Ordering::Relaxed) >= 6
                && stats.timed_out.load(Ordering::Relaxed) >= 1
                && stats.handshaking.load(Ordering::Relaxed) == 0
        })
        .await;

        // A client without a certificate fails its handshake.
        let anonymous = match client(addr, &ca, None).await {
            Err(_) => true,
            Ok(mut c) => has(&mut c).await.is_err(),
        };
        assert!(anonymous, "a client without a certificate was served");
        eventually("the failed handshake counted", async || stats.failed.load(Ordering::Relaxed) >= 1).await;

        stop.cancel();
        server.await.unwrap().unwrap();
        // The port is free as soon as the server stopped: a restarted one binds it again.
        TcpListener::bind(addr).await.expect("the listener was not closed with the server");
    }

    #[tokio::test]
    async fn unused_keys_are_forgotten() {
        let limit = KeyedLimit::new(1, Duration::from_millis(10));
        for i in 0..100 {
            drop(limit.enter(&format!("k{i}")).await.unwrap());
        }
        let held = limit.enter("k-last").await.unwrap();
        assert!(limit.keys.lock().unwrap().len() <= 2, "keys nobody holds are pruned");
        drop(held);
    }
}
