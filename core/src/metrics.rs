//! The Prometheus endpoint that hub and spoke share: `GET /metrics` on the address of their
//! config's `[metrics]` section, in the text exposition format (OpenMetrics flavour).
//!
//! Each binary builds its own [`Registry`] (no global state) with `prometheus-client` and hands
//! it to [`serve`], with a `refresh` callback that brings gauges read from state (a database, a
//! cache's usage) up to date just before each scrape. The server is a few lines of hyper (already
//! in the dependency tree through tonic): HTTP/1.1, one task per connection, no TLS (scrapes
//! stay inside the cluster or the data centre's management network), with limits
//! ([`MetricsLimits`]): a connection cap (past it, new connections are closed at once), a
//! deadline for a request's headers (a client that connects and sends nothing, or dribbles
//! its headers, is dropped), headers of a few KiB, one request per connection, and only
//! `GET /metrics`, `GET /healthz` and `GET /readyz`.
//!
//! `/healthz` and `/readyz` answer from what the binary's [`Probes`] say (see
//! [`health`](crate::health) where that comes from): 200 with `ok` / `ready`, or 503 with a
//! short plain-text body naming what is not alive or not ready and why. Without probes (an
//! exporter made with [`Exporter::new`]) both answer 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// `[metrics]` in the hub's and the spoke's configs. Without the section, no endpoint (and no
/// `/healthz` or `/readyz`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics`, `/healthz` and `/readyz`, `IP:PORT` (port 0: any free
    /// port, logged).
    pub listen: SocketAddr,
}

/// How much the metrics endpoint takes (`[limits]` of hub and spoke).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsLimits {
    /// Connections served at once; past it, new ones are closed at once.
    pub max_connections: usize,
    /// How long a client has to send its request's headers, from when it connects.
    pub header_timeout: std::time::Duration,
}

impl Default for MetricsLimits {
    /// A Prometheus or two scraping every few seconds, and room for people with curl.
    fn default() -> Self {
        Self { max_connections: 16, header_timeout: std::time::Duration::from_secs(5) }
    }
}

impl MetricsLimits {
    /// Checks the values as `[limits]` of hub and spoke give them (`metrics_connections`,
    /// `metrics_header_timeout`).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("limits.metrics_connections must be at least 1".into());
        }
        if self.header_timeout.is_zero() {
            return Err("limits.metrics_header_timeout must be more than 0s, e.g. \"5s\"".into());
        }
        Ok(())
    }
}

/// The largest request head the endpoint reads (a scrape's is a few hundred bytes; hyper's
/// smallest allowed buffer).
const MAX_REQUEST_HEAD_BYTES: usize = 8 << 10;

/// What `/healthz` and `/readyz` answer from. Cheap and non-blocking: they read what a
/// check loop recorded, never do the checks themselves.
pub trait Probes: Send + Sync {
    /// `Err(why)`: the process should be restarted.
    fn live(&self) -> Result<(), String>;
    /// `Err(why)`: the process should get no traffic now.
    fn ready(&self) -> Result<(), String>;
}

/// What the server encodes: the registry, and what refreshes its gauges before a scrape.
/// Scrapes are serialised, so that a refresh and the encoding that follows see one state.
pub struct Exporter {
    registry: Registry,
    refresh: Box<dyn Fn() + Send + Sync>,
    scrape: Mutex<()>,
    probes: Option<Arc<dyn Probes>>,
}

impl Exporter {
    pub fn new(registry: Registry, refresh: impl Fn() + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self { registry, refresh: Box::new(refresh), scrape: Mutex::new(()), probes: None })
    }

    /// Also serves `/healthz` and `/readyz` from `probes`.
    pub fn with_probes(
        registry: Registry,
        refresh: impl Fn() + Send + Sync + 'static,
        probes: Arc<dyn Probes>,
    ) -> Arc<Self> {
        Arc::new(Self { registry, refresh: Box::new(refresh), scrape: Mutex::new(()), probes: Some(probes) })
    }

    /// The registry in the text format, refreshed first. Blocking (the refresh may read a
    /// database): call it from a blocking task.
    pub fn render(&self) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        (self.refresh)();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {listen}: {source}; change metrics.listen or free the port")]
    Bind { listen: SocketAddr, source: std::io::Error },
}

/// Binds `config.listen`; returns the listener and the address it got.
pub async fn bind(config: &MetricsConfig) -> Result<(TcpListener, SocketAddr), MetricsError> {
    let bind = |source| MetricsError::Bind { listen: config.listen, source };
    let listener = TcpListener::bind(config.listen).await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    Ok((listener, addr))
}

/// Serves `GET /metrics` from `exporter` on `listener` until `shutdown` fires, within `limits`.
pub async fn serve(listener: TcpListener, exporter: Arc<Exporter>, limits: MetricsLimits, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving metrics at http://{addr}/metrics");
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut last_refusal: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!(error = %e, "could not accept a metrics connection");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if last_refusal.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10)) {
                warn!(%peer, max_connections = limits.max_connections, "metrics connection cap reached: closing new connections (limits.metrics_connections)");
                last_refusal = Some(std::time::Instant::now());
            }
            continue;
        };
        let exporter = exporter.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| answer(request, exporter.clone()));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_REQUEST_HEAD_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        debug!(%peer, error = %e, "metrics connection ended with an error");
                    }
                }
                _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn answer(request: Request<Incoming>, exporter: Arc<Exporter>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, text: String| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        response
    };
    let path = request.uri().path();
    let probe = match (path, &exporter.probes) {
        ("/metrics", _) => None,
        ("/healthz", Some(p)) => Some((p.live(), "ok")),
        ("/readyz", Some(p)) => Some((p.ready(), "ready")),
        _ => {
            let known = if exporter.probes.is_some() { "/metrics, /healthz and /readyz" } else { "/metrics" };
            return Ok(reply(StatusCode::NOT_FOUND, format!("not found: this endpoint serves {known}\n")));
        }
    };
    if request.method() != Method::GET {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, format!("only GET {path}\n")));
    }
    if let Some((verdict, fine)) = probe {
        let (status, text) = probe_answer(verdict, fine);
        let mut response = reply(status, text);
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("a valid header"));
        return Ok(response);
    }
    match tokio::task::spawn_blocking(move || exporter.render()).await {
        Ok(text) => {
            let mut response = reply(StatusCode::OK, text);
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, CONTENT_TYPE.parse().expect("a valid header"));
            Ok(response)
        }
        Err(e) => Ok(reply(StatusCode::INTERNAL_SERVER_ERROR, format!("the scrape failed: {e}\n"))),
    }
}

/// A probe's verdict as an HTTP answer: 200 with `fine`, or 503 with why.
pub fn probe_answer(verdict: Result<(), String>, fine: &str) -> (StatusCode, String) {
    match verdict {
        Ok(()) => (StatusCode::OK, format!("{fine}\n")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not {fine}:\n{why}\n")),
    }
}

/// A family for `NAME_build_info`: value 1, labels `version` and, when the build had
/// `AQUEDUCT_GIT_COMMIT` in its environment (the Dockerfiles pass it), `commit`.
pub fn build_info(
    version: &str,
) -> prometheus_client::metrics::family::Family<Vec<(String, String)>, prometheus_client::metrics::gauge::Gauge> {
    let family = prometheus_client::metrics::family::Family::<
        Vec<(String, String)>,
        prometheus_client::metrics::gauge::Gauge,
    >::default();
    family.get_or_create(&build_labels(version, option_env!("AQUEDUCT_GIT_COMMIT"))).set(1);
    family
}

/// The labels of `*_build_info`: the version, and the commit when known (not empty).
pub fn build_labels(version: &str, commit: Option<&str>) -> Vec<(String, String)> {
    let mut labels = vec![("version".to_string(), version.to_string())];
    if let Some(commit) = commit.map(str::trim).filter(|c| !c.is_empty()) {
        labels.push(("commit".to_string(), commit.to_string()));
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    }

    #[tokio::test]
    async fn serves_the_registry_refreshed_at_each_scrape() {
        let mut registry = Registry::default();
        let scrapes = Counter::<u64>::default();
        registry.register("test_scrapes", "Scrapes so far", scrapes.clone());
        let exporter = Exporter::new(registry, move || {
            scrapes.inc();
        });
        let (listener, addr) = bind(&MetricsConfig { listen: "127.0.0.1:0".parse().unwrap() }).await.unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, exporter, MetricsLimits::default(), stop.clone()));
        let first = get(addr, "/metrics").await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(first.contains("test_scrapes_total 1\n"), "{first}");
        assert!(get(addr, "/metrics").await.contains("test_scrapes_total 2\n"));
        assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
        server.await.unwrap();
    }

    struct Fixed(Mutex<(Result<(), String>, Result<(), String>)>);

    impl Probes for Fixed {
        fn live(&self) -> Result<(), String> {
            self.0.lock().unwrap().0.clone()
        }
        fn ready(&self) -> Result<(), String> {
            self.0.lock().unwrap().1.clone()
        }
    }

    #[tokio::test]
    async fn healthz_and_readyz_answer_from_the_probes_with_503_and_why() {
        let probes = Arc::new(Fixed(Mutex::new((Ok(()), Err("hub: not connected".into())))));
        let exporter = Exporter::with_probes(Registry::default(), || {}, probes.clone());
        let (listener, addr) = bind(&MetricsConfig { listen: "127.0.0.1:0".parse().unwrap() }).await.unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, exporter, MetricsLimits::default(), stop.clone()));
        let live = get(addr, "/healthz").await;
        assert!(live.starts_with("HTTP/1.1 200") && live.ends_with("\r\n\r\nok\n"), "{live}");
        let ready = get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        assert!(ready.ends_with("not ready:\nhub: not connected\n"), "{ready}");
        *probes.0.lock().unwrap() = (Err("stuck".into()), Ok(()));
        assert!(get(addr, "/readyz").await.ends_with("\r\n\r\nready\n"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 503"));
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200"));
        stop.cancel();
        server.await.unwrap();

        // Without probes, there are no probe paths.
        let exporter = Exporter::new(Registry::default(), || {});
        let (listener, addr) = bind(&MetricsConfig { listen: "127.0.0.1:0".parse().unwrap() }).await.unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, exporter, MetricsLimits::default(), stop.clone()));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
        server.await.unwrap();
    }

    #[test]
    fn build_labels_carry_the_commit_only_when_known() {
        let pairs = |l: Vec<(String, String)>| l.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>();
        assert_eq!(pairs(build_labels("0.1.0", None)), ["version=0.1.0"]);
        assert_eq!(pairs(build_labels("0.1.0", Some(" "))), ["version=0.1.0"]);
        assert_eq!(pairs(build_labels("0.1.0", Some("3f9bc1c"))), ["version=0.1.0", "commit=3f9bc1c"]);
    }

    /// Reads until the server closes the connection (or 10 s pass, a generous bound that only
    /// a server that never closes reaches); returns what came and whether it closed.
    async fn until_closed(stream: &mut tokio::net::TcpStream) -> (String, bool) {
        let mut text = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut text)).await;
        (String::from_utf8_lossy(&text).into_owned(), read.is_ok())
    }

    #[tokio::test]
    async fn silent_clients_are_dropped_the_cap_holds_and_only_get_is_served() {
        let exporter = Exporter::new(Registry::default(), || {});
        let (listener, addr) = bind(&MetricsConfig { listen: "127.0.0.1:0".parse().unwrap() }).await.unwrap();
        let stop = CancellationToken::new();
        let limits = MetricsLimits { max_connections: 2, header_timeout: std::time::Duration::from_millis(300) };
        let server = tokio::spawn(serve(listener, exporter, limits, stop.clone()));

        // Two clients that connect and send nothing hold both connections...
        let mut silent = vec![
            tokio::net::TcpStream::connect(addr).await.unwrap(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        ];
        // ... so a third is closed at once, without an answer.
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = third.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (text, closed) = until_closed(&mut third).await;
        assert!(closed && text.is_empty(), "past the cap: {text:?}");
        // The silent ones are dropped after the header deadline, and the endpoint serves again.
        for s in &mut silent {
            let (text, closed) = until_closed(s).await;
            assert!(closed, "a client that sent no header was kept: {text:?}");
        }
        let started = std::time::Instant::now();
        loop {
            let text = get(addr, "/metrics").await;
            if text.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "never served again: {text:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Only GET.
        let mut post = tokio::net::TcpStream::connect(addr).await.unwrap();
        post.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").await.unwrap();
        assert!(until_closed(&mut post).await.0.starts_with("HTTP/1.1 405"));
        let mut head = tokio::net::TcpStream::connect(addr).await.unwrap();
        head.write_all(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert!(until_closed(&mut head).await.0.starts_with("HTTP/1.1 405"));
        // A header block past the bound is refused, not buffered.
        let mut big = tokio::net::TcpStream::connect(addr).await.unwrap();
        let long = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(64 << 10));
        let _ = big.write_all(long.as_bytes()).await;
        let (text, _) = until_closed(&mut big).await;
        assert!(!text.starts_with("HTTP/1.1 200"), "{text:?}");
        stop.cancel();
        server.await.unwrap();
    }
}
