//! The node's certificate over time: found or got at start, renewed before it expires.
//!
//! At start ([`credentials`]) the spoke uses the key and certificate it keeps in its data
//! directory (`identity.pem`, mode 0600, written by enrolment and renewal) while they are
//! valid and name this node, else the ones `tls.cert`/`tls.key` name (issued without
//! enrolment), else it enrols: it generates a key here (it never leaves the node), sends a
//! certificate request with the token of `[enrol] token_file` and its node name to the hub's
//! `Enrol` call (TLS without a client certificate), and keeps what it gets. A spoke with
//! valid credentials does not enrol again.
//!
//! [`renew`] runs for as long as the spoke: at about 2/3 of the certificate's lifetime (with
//! jitter: [`renew_at`]) it asks the hub for a new certificate with a new key over its current
//! one (`RenewCertificate`), keeps it, and hands it to [`NodeTls`]: new connections present
//! it, open ones carry on. A renewal that fails is retried; once the certificate expired the
//! hub refuses it in TLS, and [`Renewal::advice`] says what to do (the spoke enrols again by
//! itself if `[enrol] token_file` holds a new token).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aqueduct_core::durable;
use aqueduct_core::identity::Identity;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::enrol_client::EnrolClient;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::{error, info, warn};

use crate::config::SpokeConfig;
use crate::hubs::Hubs;
use crate::tls::{Held, NodeTls, TlsError};

/// The file (in the data directory) where the node keeps its certificate and key.
pub const KEPT: &str = "identity.pem";

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot keep the node's certificate and key in {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot make the node's key and certificate request: {0}")]
    Key(String),
    #[error("cannot reach the hub to enrol: {0}")]
    Connect(String),
    #[error("the hub refused to enrol node {node}: {message}")]
    Refused { node: String, message: String },
    #[error("the hub refused to renew the certificate of node {node}: {message}")]
    RenewRefused { node: String, message: String },
    #[error("the hub issued a certificate for {found}, not for node {node} of its own request")]
    WrongIdentity { node: String, found: String },
    #[error(
        "this node has no valid certificate ({why}) and no way to enrol: add `[enrol] token_file = \"...\"` to the config with a token from `aq region token REGION`"
    )]
    NoCredentials { why: String },
}

/// When to renew a certificate valid from `not_before_ms` (or got then) to `not_after_ms`: at
/// 2/3 of that time, earlier by up to 1/12 of it by `jitter` (0..1), so that the nodes of a region
/// that enrolled together do not all renew at once.
pub fn renew_at(not_before_ms: i64, not_after_ms: i64, jitter: f64) -> i64 {
    let lifetime = not_after_ms.saturating_sub(not_before_ms).max(0);
    let early = (lifetime as f64 * jitter.clamp(0.0, 1.0) / 12.0) as i64;
    not_before_ms.saturating_add(lifetime / 3 * 2 + lifetime % 3 * 2 / 3 - early)
}

/// How long to wait before trying a failed renewal again: a 30th of the lifetime, between 1 s
/// and 1 min.
pub fn retry_after(not_before_ms: i64, not_after_ms: i64) -> Duration {
    let lifetime = not_after_ms.saturating_sub(not_before_ms).max(0) as u64;
    Duration::from_millis(lifetime / 30).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn read(what: &'static str, path: &Path) -> Result<String, EnrolError> {
    std::fs::read_to_string(path).map_err(|source| EnrolError::Read { what, path: path.to_owned(), source })
}

/// The kept certificate and key, if they are there, usable, valid now and this node's.
fn kept(path: &Path, node: &str) -> Result<Held, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // One file: the certificate, then the key.
    let held = Held::from_pem(&text, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    usable(held, node).map_err(|why| format!("{}: {why}", path.display()))
}

fn usable(held: Held, node: &str) -> Result<Held, String> {
    if !held.valid_at(now_ms()) {
        return Err(format!("its certificate ({}) is not valid now (it expired, or is not valid yet)", held.identity));
    }
    match &held.identity {
        Identity::Node { node: named, .. } if named == node => Ok(held),
        other => Err(format!("its certificate is {other}'s, and this spoke is node {node:?}")),
    }
}

/// Writes the node's certificate and key (0600), atomically.
fn keep(data_dir: &Path, held: &Held) -> Result<(), EnrolError> {
    let path = data_dir.join(KEPT);
    durable::create_dir_all(data_dir).map_err(|source| EnrolError::Write { path: path.clone(), source })?;
    let text = format!("{}{}", held.cert_pem, held.key_pem());
    durable::write_file(&path, text.as_bytes(), durable::SECRET).map_err(|source| EnrolError::Write { path, source })
}

/// A new key, and a certificate request for it (DER). The request's fields are ignored by the
/// hub (it sets them all); it names the node for people reading it.
fn new_request(node: &str) -> Result<(rcgen::KeyPair, Vec<u8>), EnrolError> {
    let key = rcgen::KeyPair::generate().map_err(|e| EnrolError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| EnrolError::Key(e.to_string()))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, node);
    let csr = params.serialize_request(&key).map_err(|e| EnrolError::Key(e.to_string()))?;
    Ok((key, csr.der().to_vec()))
}

/// What the hub issued, with the key it was issued for; it must be for `node`.
fn issued(cert: pb::NodeCertificate, key: &rcgen::KeyPair, node: &str) -> Result<Held, EnrolError> {
    let held = Held::from_pem(&cert.cert_pem, &key.serialize_pem())?;
    match &held.identity {
        Identity::Node { node: named, .. } if named == node => Ok(held),
        other => Err(EnrolError::WrongIdentity { node: node.to_string(), found: other.to_string() }),
    }
}

/// The node's TLS at start: what it keeps, or `tls.cert`/`tls.key`, or a new enrolment.
pub async fn credentials(config: &SpokeConfig) -> Result<Arc<NodeTls>, EnrolError> {
    let ca = read("CA certificate", &config.tls.ca)?;
    let mut why = Vec::new();
    match kept(&config.data_dir.join(KEPT), &config.node) {
        Ok(held) => {
            info!(identity = %held.identity, not_after_ms = held.not_after_ms, "using the node's certificate");
            return Ok(NodeTls::new(ca.into_bytes(), held)?);
        }
        Err(e) => why.push(e),
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        let held = Held::from_pem(&read("node certificate", cert)?, &read("node key", key)?)?;
        match usable(held, &config.node) {
            Ok(held) => return Ok(NodeTls::new(ca.into_bytes(), held)?),
            Err(e) => why.push(format!("{}: {e}", cert.display())),
        }
    }
    // A hub not reachable yet (the node started first) is waited for; a refusal is final.
    let mut attempt = 0u32;
    let held = loop {
        match enrol(config, &ca).await {
            Ok(held) => break held,
            Err(EnrolError::Connect(e)) => {
                if attempt.is_multiple_of(15) {
                    warn!(error = %e, "cannot reach the hub to enrol; trying again every 2 s");
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(EnrolError::NoCredentials { .. }) => return Err(EnrolError::NoCredentials { why: why.join("; ") }),
            Err(other) => return Err(other),
        }
    };
    Ok(NodeTls::new(ca.into_bytes(), held)?)
}

/// Enrols with the token of `[enrol] token_file`, and keeps what the hub issued.
async fn enrol(config: &SpokeConfig, ca: &str) -> Result<Held, EnrolError> {
    let Some(enrol) = &config.enrol else {
        return Err(EnrolError::NoCredentials { why: String::new() });
    };
    let token = read("enrolment token", &enrol.token_file)?;
    let (key, csr_der) = new_request(&config.node)?;
    let channel = connect_for_enrolment(config, ca).await?;
    let request = pb::EnrolRequest { token: token.trim().to_string(), node: config.node.clone(), csr_der };
    let cert = EnrolClient::new(channel)
        .enrol(request)
        .await
        .map_err(|s| EnrolError::Refused { node: config.node.clone(), message: s.message().to_string() })?
        .into_inner();
    let held = issued(cert, &key, &config.node)?;
    keep(&config.data_dir, &held)?;
    info!(identity = %held.identity, not_after_ms = held.not_after_ms, "enrolled: the node has its certificate");
    Ok(held)
}

/// A connection to the first hub of the config that accepts one (with the CA alone: the node
/// has no certificate yet). Only connections are tried on the next hub: a hub that answered
/// the enrolment, even with a refusal, has had the token.
async fn connect_for_enrolment(config: &SpokeConfig, ca: &str) -> Result<Channel, EnrolError> {
    let mut failures = Vec::new();
    for url in &config.hub.0 {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        let endpoint = Endpoint::from_shared(url.clone())
            .and_then(|e| e.tls_config(tls))
            .map_err(|e| EnrolError::Connect(format!("{url}: {e}")))?
            .connect_timeout(crate::hubs::CONNECT_TIMEOUT);
        match endpoint.connect().await {
            Ok(channel) => {
                info!(hub = %url, "enrolling with hub {url}");
                return Ok(channel);
            }
            Err(e) => failures.push(if config.hub.0.len() > 1 {
                format!("{url}: {}", crate::chain(&e))
            } else {
                crate::chain(&e)
            }),
        }
    }
    Err(EnrolError::Connect(failures.join("; ")))
}

/// How renewal stands (for the log, the readiness check and the hub link's message).
#[derive(Debug, Default)]
pub struct Renewal {
    /// Since when renewal fails (unix ms), and the last error.
    failing: Mutex<Option<(i64, String)>>,
    /// The current certificate's end (unix ms).
    not_after_ms: std::sync::atomic::AtomicI64,
}

impl Renewal {
    /// What to do, once the node's certificate has expired (the hub refuses it in TLS).
    pub fn advice(&self, now_ms: i64) -> Option<String> {
        let not_after = self.not_after_ms.load(std::sync::atomic::Ordering::Relaxed);
        if not_after == 0 || now_ms < not_after {
            return None;
        }
        let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let since = failing
            .map(|(since, e)| format!("; renewal failed since {} s ago: {e}", (now_ms - since) / 1000))
            .unwrap_or_default();
        Some(format!(
            "this node's certificate expired {} s ago{since}: enrol again with a new token \
             (`aq region token REGION`, into the file `[enrol] token_file` names; the spoke takes it within seconds)",
            (now_ms - not_after) / 1000
        ))
    }
}

/// Renews the node's certificate before it expires, until `shutdown` fires. `endpoint` is the
/// hubs' (a `http://` URI: the connector does TLS), `hubs` the hub to ask (the one in use, or
/// the next that answers).
pub async fn renew(
    config: SpokeConfig,
    tls: Arc<NodeTls>,
    endpoint: Endpoint,
    hubs: Arc<Hubs>,
    status: Arc<Renewal>,
    shutdown: CancellationToken,
) {
    use std::sync::atomic::Ordering;
    loop {
        let held = tls.current();
        status.not_after_ms.store(held.not_after_ms, Ordering::Relaxed);
        // The hub backdates a certificate a little (clocks differ): its lifetime counts from
        // when this spoke got it (or started with it), whichever is later than its start.
        let at = renew_at(now_ms().max(held.not_before_ms), held.not_after_ms, fastrand::f64());
        let wait = Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64);
        info!(in_s = wait.as_secs(), not_after_ms = held.not_after_ms, "the node's certificate will be renewed");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        loop {
            let outcome = if held.valid_at(now_ms()) {
                renew_once(&config, &tls, &endpoint, &hubs).await
            } else {
                // Expired: the hub refuses it; a new token in the file enrols again.
                let ca = String::from_utf8_lossy(tls.ca_pem()).into_owned();
                enrol(&config, &ca).await
            };
            match outcome {
                Ok(new) => {
                    info!(
                        not_after_ms = new.not_after_ms,
                        "renewed the node's certificate: new connections present it"
                    );
                    status.not_after_ms.store(new.not_after_ms, Ordering::Relaxed);
                    tls.replace(new);
                    *status.failing.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    break;
                }
                Err(e) => {
                    let now = now_ms();
                    let message = e.to_string();
                    status.failing.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert((now, String::new())).1 =
                        message.clone();
                    match status.advice(now) {
                        Some(advice) => error!(error = %message, "{advice}"),
                        None => warn!(error = %message, "could not renew the node's certificate; trying again"),
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(retry_after(held.not_before_ms, held.not_after_ms)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// One renewal: a new key and request, sent over the current certificate.
async fn renew_once(
    config: &SpokeConfig,
    tls: &NodeTls,
    endpoint: &Endpoint,
    hubs: &Arc<Hubs>,
) -> Result<Held, EnrolError> {
    let (key, csr_der) = new_request(&config.node)?;
    let channel = endpoint
        .connect_with_connector(hubs.connector(tls.connector()))
        .await
        .map_err(|e| EnrolError::Connect(crate::chain(&e)))?;
    let cert = SpokeClient::new(channel)
        .renew_certificate(pb::RenewCertificateRequest { csr_der })
        .await
        .map_err(|s| EnrolError::RenewRefused { node: config.node.clone(), message: s.message().to_string() })?
        .into_inner();
    let held = issued(cert, &key, &config.node)?;
    keep(&config.data_dir, &held)?;
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_two_thirds_with_jitter_and_retries_are_bounded() {
        assert_eq!(renew_at(0, 30_000, 0.0), 20_000);
        assert_eq!(renew_at(0, 30_000, 1.0), 17_500);
        assert_eq!(renew_at(1_000, 1_000, 0.5), 1_000, "no lifetime: at once");
        assert_eq!(renew_at(5_000, 1_000, 0.5), 5_000, "a backwards validity: at once");
        let day = 24 * 3600 * 1000;
        assert!(renew_at(0, 30 * day, 0.99) > 17 * day);
        assert_eq!(retry_after(0, 20_000), Duration::from_secs(1));
        assert_eq!(retry_after(0, 30 * day), Duration::from_secs(60));
    }

    #[test]
    fn advice_comes_once_the_certificate_expired() {
        let status = Renewal::default();
        assert_eq!(status.advice(10), None, "no certificate known yet");
        status.not_after_ms.store(5_000, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(status.advice(4_999), None);
        *status.failing.lock().unwrap() = Some((1_000, "the hub is down".into()));
        let advice = status.advice(9_000).unwrap();
        assert!(advice.contains("expired 4 s ago") && advice.contains("renewal failed since 8 s ago"), "{advice}");
        assert!(advice.contains("aq region token") && advice.contains("token_file"), "{advice}");
    }
}
