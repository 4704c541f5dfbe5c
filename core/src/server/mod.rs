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
//! required and verified against the installation's CA (`WebPkiClientVerifier`), then against
//! the revocation list ([`revoke`]); ALPN is h2. The accept path remembers each open
//! connection's client certificate: when the list changes ([`TlsIncoming::revoking`]), the
//! connections whose certificate it now revokes are closed (their reads and writes fail, so
//! their calls and streams end), within moments.
//!
//! [`KeyedLimit`] gives each key (a region at the hub, a peer at a spoke) its own semaphore:
//! streams wait their turn for a bounded time ([`KeyedLimit::enter`]), then are refused with
//! RESOURCE_EXHAUSTED, so that one key's callers cannot make the server hold more than its
//! share, and the others are not held up by them.
//!
//! The file is some 620 lines long because the accept path (limits, handshakes, the open
//! connections that a new revocation list closes) and the one place the rustls server
//! configuration is built belong together: each change to one has touched the other.

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
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tracing::{debug, info, warn};

use crate::identity::subject_of;
use crate::revocation::{CertSubject, RevocationList};

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

/// Whether a server's clients must present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// Every client (the peer API).
    Required,
    /// A client may come without one (the hub's API, for enrolment); one it presents must
    /// verify, and every handler but enrolment refuses a caller without one.
    Optional,
}

/// The rustls configuration of Aqueduct's TLS servers: the server's certificate (chain) and
/// key, every client required to present a certificate issued by `client_ca` and not revoked
/// by `revocations`, ALPN h2. The one place where it is built.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
    revocations: &Revocations,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    server_config_with(cert_pem, key_pem, client_ca_pem, ClientCerts::Required, revocations)
}

/// [`server_config`], with client certificates required or optional.
pub fn server_config_with(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
    client_certs: ClientCerts,
    revocations: &Revocations,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let chain = pem_certs(cert_pem, "the server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsSetupError::Pem { what: "the server key", reason: e.to_string() })?;
    build_server_config(client_ca_pem, client_certs, revocations, |builder| builder.with_single_cert(chain, key))
}

/// [`server_config`] for a server whose certificate changes while it serves (a spoke's node
/// certificate, renewed): each handshake takes the one `resolver` gives then; connections
/// already open carry on with theirs. Client certificates required.
pub fn server_config_resolving(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    client_ca_pem: &[u8],
    revocations: &Revocations,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    build_server_config(client_ca_pem, ClientCerts::Required, revocations, |builder| {
        Ok(builder.with_cert_resolver(resolver))
    })
}

fn pem_certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Pem { what, reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate { what });
    }
    Ok(certs)
}

type WantsCert = rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>;

/// The one place the servers' rustls configuration is built: the client verifier, the
/// protocol versions, ALPN h2; `with_cert` gives the server's certificate.
fn build_server_config(
    client_ca_pem: &[u8],
    client_certs: ClientCerts,
    revocations: &Revocations,
    with_cert: impl FnOnce(WantsCert) -> Result<ServerConfig, rustls::Error>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for ca in pem_certs(client_ca_pem, "the client CA")? {
        roots.add(ca)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut inner = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone());
    if client_certs == ClientCerts::Optional {
        inner = inner.allow_unauthenticated();
    }
    let inner = inner.build()?;
    let verifier = Arc::new(RevokingClientVerifier { inner, revocations: revocations.clone() });
    let mut config = with_cert(
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier),
    )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: a resumed session skips the client verifier, and with it the
    // revocation list. (Connections are long-lived; a full handshake each costs little.)
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
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

/// A TLS connection and the permit it holds while it lives. Once `closed` fires (its
/// certificate was revoked), every read and write fails: hyper then drops the connection.
pub struct LimitedTls {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    _permit: OwnedSemaphorePermit,
    stats: Arc<AcceptStats>,
    id: u64,
    open: Arc<OpenConnections>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Drop for LimitedTls {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        self.open.remove(self.id);
    }
}

impl LimitedTls {
    /// Fails once the connection is to be closed (registers the waker, so that a connection
    /// waiting for bytes wakes up to fail).
    fn check_open(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.closed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the peer's certificate was revoked: connection closed",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

/// The open connections of a listener, each with its client certificate's subject and the
/// token that closes it.
#[derive(Default)]
struct OpenConnections {
    next: AtomicU64,
    by_id: Mutex<HashMap<u64, (Option<CertSubject>, CancellationToken)>>,
    /// The list the connections were last checked against: a connection admitted after it
    /// came is checked too (whatever its handshake did: the verifier runs on full handshakes).
    list: Mutex<Arc<RevocationList>>,
}

impl OpenConnections {
    fn add(&self, subject: Option<CertSubject>) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        // Held while the list is read (in the order `close_revoked` takes them): a list that
        // comes meanwhile sees this connection.
        let mut open = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let revoked =
            subject.as_ref().is_some_and(|s| self.list.lock().unwrap_or_else(|e| e.into_inner()).refusing(s).is_some());
        if revoked {
            token.cancel();
        }
        open.insert(id, (subject, token.clone()));
        (id, token)
    }

    fn remove(&self, id: u64) {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// Closes the connections `list` revokes; returns how many.
    fn close_revoked(&self, list: Arc<RevocationList>, server: &str) -> usize {
        let open = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        *self.list.lock().unwrap_or_else(|e| e.into_inner()) = list.clone();
        let mut closed = 0;
        for (subject, token) in open.values() {
            let Some(subject) = subject else { continue };
            if let Some(entry) = list.refusing(subject)
                && !token.is_cancelled()
            {
                info!(server, uris = ?subject.uris, prefix = %entry.prefix, "closing a connection: its certificate was revoked");
                token.cancel();
                closed += 1;
            }
        }
        closed
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
        self.check_open(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedTls {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check_open(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_open(cx)?;
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
    open: Arc<OpenConnections>,
}

impl TlsIncoming {
    /// Closes the open connections whose client certificate `revocations` revokes, now and
    /// whenever the list changes, for as long as the listener lives. (New connections are
    /// refused by the verifier of [`server_config`], given the same list.)
    pub fn revoking(self, revocations: &Revocations) -> Self {
        let (open, stop, name) = (self.shared.open.clone(), self.shared.stop.clone(), self.shared.name);
        let mut changes = revocations.subscribe();
        tokio::spawn(async move {
            loop {
                let list = changes.borrow_and_update().clone();
                open.close_revoked(list, name);
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = stop.cancelled() => return,
                }
            }
        });
        self
    }
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
        open: Arc::default(),
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
            let subject =
                tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| subject_of(c.as_ref()));
            let (id, close) = self.open.add(subject);
            let closed = Box::pin(close.cancelled_owned());
            let connection =
                LimitedTls { inner: tls, _permit: permit, stats: stats.clone(), id, open: self.open.clone(), closed };
            let _ = self.done.send(connection).await;
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

mod keyed;
pub use keyed::{Busy, KeyedLimit};

pub mod revoke;
use revoke::{Revocations, RevokingClientVerifier};

pub mod human;

#[cfg(test)]
mod tests;
