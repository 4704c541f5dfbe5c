//! The node's TLS: the certificate it presents now, and the connections that present it.
//!
//! [`NodeTls`] holds the node's current key and certificate ([`Held`]) and the hub's CA. The
//! spoke's three TLS endpoints take the certificate from it at each handshake: its client to
//! the hub and its client to peers (a rustls `ResolvesClientCert`, through [`Connector`], the
//! tonic connector that does TLS itself with rustls), and its peer server (a
//! `ResolvesServerCert`, given to [`aqueduct_core::server::server_config_resolving`]). When the
//! certificate is renewed ([`NodeTls::replace`]), new connections present the new one and
//! connections already open carry on with theirs: nothing is interrupted.
//!
//! Because the connector does TLS, the endpoints it serves have `http://` URIs
//! ([`plain_uri`]); the bytes on the wire are TLS all the same.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use aqueduct_core::identity::Identity;
use aqueduct_core::server::revoke::{Revocations, RevokingServerVerifier};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, SignatureScheme};
use tonic::codegen::http::Uri;

/// Why credentials are not usable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} is not usable: {reason}")]
    Unusable { what: &'static str, reason: String },
    #[error("the certificate names {found}, not a node: use a node's certificate (enrol with `[enrol] token_file`)")]
    NotANode { found: String },
    #[error("the certificate names no Aqueduct identity: it is not one the hub issued to a node")]
    NoIdentity,
}

fn unusable(what: &'static str) -> impl Fn(String) -> TlsError {
    move |reason| TlsError::Unusable { what, reason }
}

/// A key and the certificate of a node, ready for rustls.
pub struct Held {
    pub cert_pem: String,
    key_pem: String,
    pub identity: Identity,
    /// Validity, unix ms.
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    certified: Arc<CertifiedKey>,
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("identity", &self.identity)
            .field("not_after_ms", &self.not_after_ms)
            .finish_non_exhaustive()
    }
}

impl Held {
    /// Reads a certificate (chain) and its key, PEM; the certificate must name a node.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Unusable { what: "the node certificate", reason: e.to_string() })?;
        let leaf = chain
            .first()
            .ok_or(TlsError::Unusable { what: "the node certificate", reason: "no PEM certificate".into() })?;
        let identity = Identity::from_der(leaf).ok_or(TlsError::NoIdentity)?;
        if !matches!(identity, Identity::Node { .. }) {
            return Err(TlsError::NotANode { found: identity.to_string() });
        }
        let (not_before_ms, not_after_ms) = validity(leaf).ok_or_else(|| TlsError::Unusable {
            what: "the node certificate",
            reason: "its validity cannot be read".into(),
        })?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| unusable("the node key")(e.to_string()))?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| unusable("the node key and certificate")(format!("{e} (is the key the certificate's?)")))?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            identity,
            not_before_ms,
            not_after_ms,
            certified: Arc::new(certified),
        })
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Valid at `now_ms` (unix ms).
    pub fn valid_at(&self, now_ms: i64) -> bool {
        self.not_before_ms <= now_ms && now_ms < self.not_after_ms
    }
}

/// A DER certificate's validity, unix ms.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    let ms = |t: &x509_parser::time::ASN1Time| t.timestamp().checked_mul(1000);
    Some((ms(&v.not_before)?, ms(&v.not_after)?))
}

/// The node's TLS: the hub's CA, and the current key and certificate (replaced on renewal).
pub struct NodeTls {
    ca_pem: Vec<u8>,
    current: Arc<Current>,
    client: Arc<ClientConfig>,
    /// To peers: their certificates checked against the revocation list too.
    peer_client: Arc<ClientConfig>,
    /// The revocation list this node enforces (the hub sends it with the assignments): on the
    /// peers it connects to and on the peers that connect to it.
    revocations: Revocations,
}

/// The current key and certificate, as the resolvers read them.
#[derive(Debug)]
struct Current(RwLock<Arc<Held>>);

impl Current {
    fn get(&self) -> Arc<Held> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesClientCert for Current {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get().certified.clone())
    }
}

impl NodeTls {
    /// TLS with `held`, trusting the CA in `ca_pem`.
    pub fn new(ca_pem: Vec<u8>, held: Held) -> Result<Arc<Self>, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&ca_pem) {
            let ca = ca.map_err(|e| unusable("the CA certificate")(e.to_string()))?;
            roots.add(ca).map_err(|e| unusable("the CA certificate")(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(unusable("the CA certificate")("no PEM certificate".into()));
        }
        let current = Arc::new(Current(RwLock::new(Arc::new(held))));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = Arc::new(roots);
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| unusable("TLS")(e.to_string()))?
            .with_root_certificates(roots.clone())
            .with_client_cert_resolver(current.clone());
        client.alpn_protocols = vec![b"h2".to_vec()];
        let revocations = Revocations::default();
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| unusable("the CA certificate")(e.to_string()))?;
        let verifier = Arc::new(RevokingServerVerifier { inner, revocations: revocations.clone() });
        let mut peer_client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| unusable("TLS")(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(current.clone());
        peer_client.alpn_protocols = vec![b"h2".to_vec()];
        // No resumption: a resumed session would skip the verifier, and the revocation list.
        peer_client.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(Self {
            ca_pem,
            current,
            client: Arc::new(client),
            peer_client: Arc::new(peer_client),
            revocations,
        }))
    }

    /// The revocation list this node enforces: update it and every verifier and accept path
    /// that uses it follows.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// The key and certificate presented now.
    pub fn current(&self) -> Arc<Held> {
        self.current.get()
    }

    /// Presents `held` from the next handshake on (open connections keep theirs).
    pub fn replace(&self, held: Held) {
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(held);
    }

    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// A connector to the hub (the server's name from each URI's host).
    pub fn connector(&self) -> Connector {
        Connector { config: self.client.clone(), server_name: None }
    }

    /// A connector to the region's peers: their certificates must name `peer_name`.
    pub fn peer_connector(&self, peer_name: &str) -> Connector {
        Connector { config: self.peer_client.clone(), server_name: Some(peer_name.to_string()) }
    }

    /// The peer server's TLS: the current certificate at each handshake, peers' certificates
    /// checked against the CA.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, aqueduct_core::server::TlsSetupError> {
        aqueduct_core::server::server_config_resolving(self.current.clone(), &self.ca_pem, &self.revocations)
    }
}

/// `https://HOST:PORT` as the URI of an endpoint whose connector does TLS: `http://HOST:PORT`.
pub fn plain_uri(url: &str) -> String {
    match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_string(),
    }
}

/// A tonic connector: TCP to the URI's host and port, then TLS with the node's current
/// certificate, checking the server's certificate against the CA and the expected name.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
    /// The name the server's certificate must carry; `None`: the URI's host.
    server_name: Option<String>,
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error>> + Send>>;

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (config, expected) = (self.config.clone(), self.server_name.clone());
        Box::pin(async move {
            let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
            let host = uri.host().ok_or_else(|| invalid(format!("{uri} names no host")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = expected.unwrap_or_else(|| host.clone());
            let name = ServerName::try_from(name).map_err(|e| invalid(format!("{uri}: {e}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// TLS with a throwaway CA and a certificate of node `node` of `region` (for unit tests).
#[cfg(test)]
pub(crate) fn test_tls(region: &str, node: &str) -> Arc<NodeTls> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let identity = Identity::Node { region: region.into(), node: node.into() };
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(identity.peer_name().into_iter().collect::<Vec<_>>()).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(identity.uri().try_into().unwrap()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let held = Held::from_pem(&cert.pem(), &key.serialize_pem()).unwrap();
    NodeTls::new(ca_cert.pem().into_bytes(), held).unwrap()
}
