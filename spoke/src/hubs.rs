//! The hubs a spoke knows, and the one it uses now.
//!
//! Several hubs may serve one state (one database behind them); a spoke's config names them
//! (`hub = ["https://a:7443", "https://b:7443"]`) in the order it prefers them. [`Hubs`] keeps
//! that list and the hub in use. Every connection to a hub (the watch and the reports, chunk
//! fetches and manifests, the certificate's renewal) is made through its connector,
//! [`Failover`]: it dials the hub in use and, when that one cannot be reached (refused, no
//! answer within [`CONNECT_TIMEOUT`], a TLS handshake that fails), the next ones in turn, once
//! round the list ([`order`]). The hub that answers is the one in use from then on, said once
//! in the log when it changes: a spoke stays with a hub that works rather than going back to
//! the first as soon as that one returns.
//!
//! A connection that breaks (its hub died, or stopped answering its keepalive pings:
//! [`KEEPALIVE_INTERVAL`]) is made again through the same connector when it
//! is next needed: the watch by the controller, with the backoff it has for a lost hub; the
//! chunk channel by tonic, at the next fetch. A replication cut by the loss ends its session
//! and resumes in the next from what the store holds, so the chunks it lacked come from the
//! next hub, and none verified is fetched again.
//!
//! A hub that answers but refuses ([`refused`]: UNAVAILABLE, said by the hub; a hub whose
//! database another hub shares serves a region only while it holds the region's lease, and
//! refuses the region's spokes otherwise) is left the same way: [`Hubs::refused`] makes the
//! next hub the one in use and closes every connection made to the refusing one, so that the
//! next call, on whichever channel, dials the next hub. A refusal counts only for the hub in
//! use when its call was made ([`Hubs::turn`]): the refusals of calls made before the spoke
//! moved on do not move it again. Nothing a spoke checks changes: each hub's
//! certificate is verified against the CA and the name in its address (so every hub's
//! certificate must name the address the spokes have for it), each chunk against its digest.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::codegen::http::Uri;
use tracing::{debug, info, warn};

use crate::tls::{Connector, plain_uri};

/// How long one hub may take to accept a connection and finish the TLS handshake before the
/// next one is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a connection to a hub is pinged (HTTP/2, idle or not), and how long an answer may
/// take before the connection counts as broken: a hub whose machine died or whose network
/// went silent (no reset ever comes) is left within about their sum, for the next hub. The
/// timeout is long enough for a ping's answer queued behind a slow link's buffered chunks.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// No hub has answered yet.
const NONE: usize = usize::MAX;

/// The hubs of the config, in its order, and the one in use.
#[derive(Debug)]
pub struct Hubs {
    urls: Vec<String>,
    /// The index of the hub tried first: the one that answered last (the first one until then).
    current: AtomicUsize,
    /// The hub the log last said is in use ([`NONE`] before any answered).
    said: AtomicUsize,
    /// How many times the hub in use changed (see [`Hubs::turn`]).
    turns: AtomicU64,
    /// One token per hub, given to every connection made to it: cancelled (and replaced) when
    /// the hub refuses, which closes those connections.
    closing: Mutex<Vec<CancellationToken>>,
}

impl Hubs {
    /// The hubs at `urls` (`https://HOST:PORT`, as validated by the config), preferred in that
    /// order.
    pub fn new(urls: Vec<String>) -> Arc<Self> {
        let closing = Mutex::new(urls.iter().map(|_| CancellationToken::new()).collect());
        Arc::new(Self {
            urls,
            current: AtomicUsize::new(0),
            said: AtomicUsize::new(NONE),
            turns: AtomicU64::new(0),
            closing,
        })
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The hub in use: the one that answered last (the first of the list before any did).
    pub fn current(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed);
        self.urls.get(i).or(self.urls.first()).map_or("", String::as_str)
    }

    /// The order in which the hubs are tried now: from the one in use, round the list.
    pub fn order(&self) -> Vec<usize> {
        order(self.current.load(Ordering::Relaxed), self.urls.len())
    }

    /// Hub `i` answered: it is in use from now on. Said in the log when it changes.
    fn answered(&self, i: usize) {
        if self.current.swap(i, Ordering::Relaxed) != i {
            self.turns.fetch_add(1, Ordering::Relaxed);
        }
        let before = self.said.swap(i, Ordering::Relaxed);
        if before == i {
            return;
        }
        let hub = self.urls.get(i).map_or("", String::as_str);
        match self.urls.get(before) {
            None => info!(%hub, "using hub {hub}"),
            Some(previous) => {
                warn!(%hub, %previous, "switched to hub {hub}: {previous} could not be reached, or refused")
            }
        }
    }

    /// The hub in use as a call sees it before it is made: give it to [`Hubs::refused`] with
    /// the call's answer. It changes each time the hub in use does.
    pub fn turn(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }

    /// A call made at `turn` got `status`. If the hub refused it ([`refused`]) and the hub in
    /// use is still the one the call went to, the next hub is in use from now on and every
    /// connection to the refusing one is closed, so that the next call dials the next hub.
    /// Whether it moved on. A spoke that knows one hub stays with it, its connections open
    /// (the calls they carry may still be answered).
    pub fn refused(&self, turn: u64, status: &tonic::Status) -> bool {
        if !refused(status) || self.urls.len() < 2 {
            return false;
        }
        // Only once per turn: the other calls refused at the same turn find it taken.
        if self.turns.compare_exchange(turn, turn + 1, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return false;
        }
        let n = self.urls.len();
        let was = self.current.load(Ordering::Relaxed);
        let next = next_after(was, n);
        self.current.store(next, Ordering::Relaxed);
        if let Some(token) = self.closing.lock().unwrap_or_else(|e| e.into_inner()).get_mut(was) {
            std::mem::replace(token, CancellationToken::new()).cancel();
        }
        let (hub, to) = (self.urls.get(was).map_or("", String::as_str), self.urls.get(next).map_or("", String::as_str));
        warn!(%hub, reason = %status.message(), "hub {hub} refused this spoke ({}): trying {to} next", status.message());
        true
    }

    /// The token that closes the connections made to hub `i` now.
    fn closing(&self, i: usize) -> CancellationToken {
        self.closing.lock().unwrap_or_else(|e| e.into_inner()).get(i).cloned().unwrap_or_default()
    }

    /// A connector that dials the hubs in [`Hubs::order`] with `tls` (the node's certificate,
    /// each hub's checked against the CA and its address's host) until one answers.
    pub fn connector(self: &Arc<Self>, tls: Connector) -> Failover {
        Failover { hubs: self.clone(), tls }
    }
}

/// The indices `0..n` starting at `first`, round the list: the order hubs are tried in. A
/// `first` outside the list starts at 0.
pub fn order(first: usize, n: usize) -> Vec<usize> {
    let first = if first < n { first } else { 0 };
    (0..n).map(|k| (first + k) % n).collect()
}

/// The hub after `i` in a list of `n`, round the list.
fn next_after(i: usize, n: usize) -> usize {
    if n == 0 { 0 } else { (i + 1) % n }
}

/// Whether `status`, the answer to a call to a hub, is the hub's refusal: UNAVAILABLE, said by
/// the hub itself. A hub that shares its database with others answers so to a spoke of a
/// region another hub serves, and any hub to a call it cannot serve for now (its source or
/// database cannot be reached): the spoke tries its next hub. A status the client's transport
/// made (no connection, or one that broke under the call) carries the transport's error as its
/// source and is no refusal: the connector already tries the next hub for those.
pub fn refused(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && std::error::Error::source(status).is_none()
}

/// The hubs a spoke may use: one address (`hub = "https://..."`) or a list of them, in the
/// order they are tried: `hub` in the config ([`crate::config::SpokeConfig`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubAddresses(pub Vec<String>);

impl<'de> serde::Deserialize<'de> for HubAddresses {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        match <OneOrMany as serde::Deserialize>::deserialize(deserializer) {
            Ok(OneOrMany::One(one)) => Ok(Self(vec![one])),
            Ok(OneOrMany::Many(many)) => Ok(Self(many)),
            Err(_) => Err(serde::de::Error::custom(
                "hub must be an https:// URL or a list of them (hub = [\"https://a:7443\", \"https://b:7443\"])",
            )),
        }
    }
}

impl std::fmt::Display for HubAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl HubAddresses {
    /// Each address is an https:// URL with a host, and none comes twice.
    pub fn validate(&self) -> Result<(), String> {
        if self.0.is_empty() {
            return Err("hub is an empty list: give at least one https://HOST:PORT".into());
        }
        for (i, url) in self.0.iter().enumerate() {
            let at = if self.0.len() > 1 { format!("hub[{i}]") } else { "hub".to_string() };
            if !url.starts_with("https://") {
                return Err(format!("{at} {url:?} must be an https:// URL"));
            }
            let uri: tonic::codegen::http::Uri =
                url.parse().map_err(|e| format!("{at} {url:?} is not a URL ({e}): write https://HOST:PORT"))?;
            if uri.host().is_none_or(str::is_empty) {
                return Err(format!("{at} {url:?} names no host: write https://HOST:PORT"));
            }
            if self.0[..i].contains(url) {
                return Err(format!("{at} {url:?} is listed twice"));
            }
        }
        Ok(())
    }
}

/// A tonic connector to whichever hub answers: see the module's documentation. The URI tonic
/// gives it is ignored; the hubs' own addresses are dialled.
#[derive(Clone)]
pub struct Failover {
    hubs: Arc<Hubs>,
    tls: Connector,
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
type Io = TokioIo<Closable<Tls>>;
type Connecting = Pin<Box<dyn Future<Output = Result<Io, std::io::Error>> + Send>>;

impl tonic::codegen::Service<Uri> for Failover {
    type Response = Io;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (hubs, tls) = (self.hubs.clone(), self.tls.clone());
        Box::pin(async move {
            let mut failures: Vec<(String, std::io::Error)> = Vec::new();
            for i in hubs.order() {
                let url = hubs.urls[i].clone();
                // Taken before dialling: a refusal meanwhile closes this connection too.
                let closing = hubs.closing(i);
                let attempt = async {
                    let uri: Uri = plain_uri(&url).parse().map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{url} is not a URL: {e}"))
                    })?;
                    let mut tls = tls.clone();
                    match tokio::time::timeout(CONNECT_TIMEOUT, tonic::codegen::Service::call(&mut tls, uri)).await {
                        Ok(connected) => connected,
                        Err(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no answer in {CONNECT_TIMEOUT:?}"),
                        )),
                    }
                };
                match attempt.await {
                    Ok(io) => {
                        hubs.answered(i);
                        return Ok(TokioIo::new(Closable::new(io.into_inner(), closing)));
                    }
                    Err(e) => {
                        debug!(hub = %url, error = %e, "a hub could not be reached; trying the next");
                        failures.push((url, e));
                    }
                }
            }
            // One hub: its error as it was. Several: each one's.
            if failures.len() == 1 {
                return Err(failures.remove(0).1);
            }
            let each: Vec<String> = failures.iter().map(|(url, e)| format!("{url}: {e}")).collect();
            Err(std::io::Error::new(std::io::ErrorKind::NotConnected, format!("no hub answered ({})", each.join("; "))))
        })
    }
}

/// A connection to a hub that ends, as a connection reset would, once its hub refused
/// ([`Hubs::refused`]): reads and writes fail from then on, and a read that waits is woken to
/// fail, so that the HTTP/2 connection over it ends and its channel dials anew.
pub struct Closable<T> {
    inner: T,
    token: CancellationToken,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<T> Closable<T> {
    fn new(inner: T, token: CancellationToken) -> Self {
        Self { inner, closed: Box::pin(token.clone().cancelled_owned()), token }
    }

    fn error() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "closed: the hub refused this spoke")
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Closable<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Self::error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Closable<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.token.is_cancelled() {
            return Poll::Ready(Err(Self::error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.token.is_cancelled() {
            return Poll::Ready(Err(Self::error()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hubs_are_tried_from_the_one_in_use_round_the_list() {
        assert_eq!(order(0, 3), [0, 1, 2]);
        assert_eq!(order(1, 3), [1, 2, 0]);
        assert_eq!(order(2, 3), [2, 0, 1]);
        assert_eq!(order(0, 1), [0]);
        assert_eq!(order(5, 2), [0, 1], "an index outside the list starts at the first");
        assert!(order(0, 0).is_empty());
    }

    #[test]
    fn the_hub_that_answered_is_tried_first_from_then_on() {
        let hubs = Hubs::new(vec!["https://a:1".into(), "https://b:1".into(), "https://c:1".into()]);
        assert_eq!((hubs.current(), hubs.order()), ("https://a:1", vec![0, 1, 2]));
        hubs.answered(1);
        assert_eq!((hubs.current(), hubs.order()), ("https://b:1", vec![1, 2, 0]));
        // b stays in use until it fails, even once a is back.
        hubs.answered(1);
        assert_eq!(hubs.order(), [1, 2, 0]);
        hubs.answered(0);
        assert_eq!(hubs.current(), "https://a:1");
    }

    #[test]
    fn unavailable_said_by_the_hub_is_a_refusal_and_nothing_else_is() {
        let served_elsewhere = tonic::Status::unavailable(
            "region eu is served by another hub now (hub-a); this hub (hub-b) takes it only once that hub stops: try the next hub address",
        );
        assert!(refused(&served_elsewhere));
        assert!(refused(&tonic::Status::unavailable("this hub no longer serves region eu: reconnect")));
        // Made by the client's transport (no connection, or one that broke): the connector
        // moves on for those.
        let mut broken = tonic::Status::unavailable("connection reset");
        broken.set_source(Arc::new(std::io::Error::other("connection reset")));
        assert!(!refused(&broken), "{broken:?}");
        for answer in [
            tonic::Status::not_found("no such version"),
            tonic::Status::resource_exhausted("busy"),
            tonic::Status::already_exists("the node's name is live"),
            tonic::Status::permission_denied("not rolled out to this region"),
        ] {
            assert!(!refused(&answer), "{answer:?}");
        }
    }

    #[test]
    fn a_refusal_moves_to_the_next_hub_once_and_closes_the_refusing_ones_connections() {
        let hubs = Hubs::new(vec!["https://a:1".into(), "https://b:1".into(), "https://c:1".into()]);
        hubs.answered(0);
        let (to_a, to_b) = (hubs.closing(0), hubs.closing(1));
        let turn = hubs.turn();
        let no = tonic::Status::unavailable("region eu is served by another hub now (hub-b)");
        // Not a refusal: nothing moves.
        assert!(!hubs.refused(turn, &tonic::Status::not_found("no such version")));
        assert_eq!(hubs.current(), "https://a:1");
        assert!(hubs.refused(turn, &no));
        assert_eq!((hubs.current(), hubs.order()), ("https://b:1", vec![1, 2, 0]));
        assert!(to_a.is_cancelled() && !to_b.is_cancelled(), "a's connections close, b's stay");
        assert!(!hubs.closing(0).is_cancelled(), "a new connection to a is not closed");
        // Another call made before the move (the watch and a fetch both refused): it does not
        // move the spoke again.
        assert!(!hubs.refused(turn, &no));
        assert_eq!(hubs.current(), "https://b:1");
        // b answered, then refused: on to c, and round the list to a.
        hubs.answered(1);
        assert!(hubs.refused(hubs.turn(), &no));
        assert_eq!(hubs.current(), "https://c:1");
        assert!(hubs.refused(hubs.turn(), &no));
        assert_eq!(hubs.current(), "https://a:1");
        // A connection that answered at another hub than the one in use is a new turn: a
        // refusal of a call made before it does not count.
        let before = hubs.turn();
        hubs.answered(2);
        assert!(!hubs.refused(before, &no));
        assert_eq!(hubs.current(), "https://c:1");
        // One hub: there is no other to move to; its connections stay.
        let one = Hubs::new(vec!["https://a:1".into()]);
        let to_a = one.closing(0);
        assert!(!one.refused(one.turn(), &no));
        assert_eq!(one.current(), "https://a:1");
        assert!(!to_a.is_cancelled());
    }

    /// A connection closed while a read waits on it: the read is woken and fails, as do writes
    /// from then on; before, it carries bytes both ways.
    #[tokio::test]
    async fn a_closed_connection_fails_its_waiting_read_and_its_writes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(64);
        let token = CancellationToken::new();
        let mut conn = Closable::new(near, token.clone());
        conn.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        far.read_exact(&mut got).await.unwrap();
        far.write_all(b"pong").await.unwrap();
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        let waiting = tokio::spawn(async move {
            let mut buf = [0u8; 4];
            let read = conn.read(&mut buf).await;
            (read.map_err(|e| e.kind()), conn)
        });
        tokio::task::yield_now().await;
        token.cancel();
        let (read, mut conn) = waiting.await.unwrap();
        assert_eq!(read, Err(std::io::ErrorKind::ConnectionAborted));
        assert_eq!(conn.write(b"more").await.map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::ConnectionAborted));
    }

    /// A real connect: the first address refuses, the second accepts (TCP; its TLS handshake
    /// then fails against a listener that speaks none, which counts as not reached), and the
    /// error names both; nothing is left in use that did not answer.
    #[tokio::test]
    async fn every_hub_is_tried_once_and_the_error_names_each() {
        let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counting = accepted.clone();
        tokio::spawn(async move {
            // Accepts, then closes: no TLS.
            while let Ok((stream, _)) = silent.accept().await {
                counting.fetch_add(1, Ordering::Relaxed);
                drop(stream);
            }
        });
        let urls =
            vec![format!("https://127.0.0.1:{}", refused.port()), format!("https://127.0.0.1:{}", silent_addr.port())];
        let hubs = Hubs::new(urls.clone());
        let tls = crate::tls::test_tls("r", "n");
        let mut failover = hubs.connector(tls.connector());
        let err =
            tonic::codegen::Service::call(&mut failover, Uri::from_static("http://ignored:1")).await.err().unwrap();
        let text = err.to_string();
        assert!(text.contains(&urls[0]) && text.contains(&urls[1]), "{text}");
        assert_eq!(accepted.load(Ordering::Relaxed), 1, "the second hub was tried once");
        assert_eq!(hubs.current(), urls[0], "no hub answered: the first is still tried first");
    }
}
