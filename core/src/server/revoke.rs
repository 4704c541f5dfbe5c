//! Revocation at the TLS edge: the live revocation list of a process ([`Revocations`]) and the
//! rustls verifiers that consult it after the standard chain check, on both sides of a
//! connection ([`RevokingClientVerifier`] for servers, [`RevokingServerVerifier`] for the
//! clients of a peer, which connect through [`PeerConnector`]: tonic's own TLS settings take
//! no verifier of ours). The accept path ([`super::incoming`]) closes the open connections
//! whose certificate a new list revokes. The matching rule is [`crate::revocation`]'s.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use tokio::sync::watch;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{self, CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tracing::warn;

use super::TlsSetupError;
use crate::identity::subject_of;
use crate::revocation::{CertSubject, Revocation, RevocationList};

/// The revocation list a process enforces now, shared by its verifiers and accept paths;
/// setting a newer one wakes whoever watches it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Revocations {
    list: Arc<watch::Sender<Arc<RevocationList>>>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new(RevocationList::default())
    }
}

impl Revocations {
    pub fn new(list: RevocationList) -> Self {
        Self { list: Arc::new(watch::Sender::new(Arc::new(list))) }
    }

    /// The list in force.
    pub fn current(&self) -> Arc<RevocationList> {
        self.list.borrow().clone()
    }

    /// Puts `list` in force unless the one in force is as new (a higher or equal generation);
    /// says whether it did.
    pub fn update(&self, list: RevocationList) -> bool {
        self.list.send_if_modified(|current| {
            if list.generation > current.generation {
                *current = Arc::new(list);
                true
            } else {
                false
            }
        })
    }

    /// Fires on every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RevocationList>> {
        self.list.subscribe()
    }

    /// The entry that refuses this DER certificate, if one does.
    pub fn refusing(&self, der: &[u8]) -> Option<Revocation> {
        let subject = subject_of(der)?;
        self.refusing_subject(&subject)
    }

    pub fn refusing_subject(&self, subject: &CertSubject) -> Option<Revocation> {
        self.list.borrow().refusing(subject).cloned()
    }

    fn check(&self, end_entity: &CertificateDer<'_>, side: &'static str) -> Result<(), rustls::Error> {
        match self.refusing(end_entity.as_ref()) {
            None => Ok(()),
            Some(entry) => {
                warn!(
                    side,
                    prefix = %entry.prefix,
                    revoked_at = entry.revoked_at_unix_s,
                    by = %entry.by,
                    reason = %entry.reason,
                    "refused a revoked certificate"
                );
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
        }
    }
}

/// A client-certificate verifier: the standard one (WebPki's chain check against the CA),
/// then the revocation list.
#[derive(Debug)]
pub struct RevokingClientVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub revocations: Revocations,
}

impl ClientCertVerifier for RevokingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        self.revocations.check(end_entity, "client")?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A server-certificate verifier for the clients of a peer: the standard one, then the
/// revocation list.
#[derive(Debug)]
pub struct RevokingServerVerifier {
    pub inner: Arc<dyn ServerCertVerifier>,
    pub revocations: Revocations,
}

impl ServerCertVerifier for RevokingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        self.revocations.check(end_entity, "server")?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The list from the wire (the spokes get it with their assignments).
impl From<&aqueduct_proto::hub::v1::RevocationList> for RevocationList {
    fn from(list: &aqueduct_proto::hub::v1::RevocationList) -> Self {
        RevocationList {
            generation: list.generation,
            entries: list
                .entries
                .iter()
                .map(|e| Revocation {
                    prefix: e.prefix.clone(),
                    revoked_at_unix_s: e.revoked_at_unix_s,
                    by: e.by.clone(),
                    reason: e.reason.clone(),
                })
                .collect(),
        }
    }
}

/// An entry for the wire.
pub fn entry_to_pb(e: &Revocation) -> aqueduct_proto::hub::v1::Revocation {
    aqueduct_proto::hub::v1::Revocation {
        prefix: e.prefix.clone(),
        revoked_at_unix_s: e.revoked_at_unix_s,
        by: e.by.clone(),
        reason: e.reason.clone(),
    }
}

/// The list for the wire.
pub fn list_to_pb(list: &RevocationList) -> aqueduct_proto::hub::v1::RevocationList {
    aqueduct_proto::hub::v1::RevocationList {
        generation: list.generation,
        entries: list.entries.iter().map(entry_to_pb).collect(),
    }
}

/// The rustls configuration of a peer client: the server's chain checked against `ca_pem`,
/// then against `revocations`; this spoke's certificate and key presented; ALPN h2; no
/// session resumption (a resumed session would skip the check).
pub fn peer_client_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
    revocations: &Revocations,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let pem = |what: &'static str| {
        move |e: tokio_rustls::rustls::pki_types::pem::Error| TlsSetupError::Pem { what, reason: e.to_string() }
    };
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(ca.map_err(pem("the CA certificate"))?)?;
    }
    let chain =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>().map_err(pem("the certificate"))?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCertificate { what: "the certificate" });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(pem("the key"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsSetupError::Pem { what: "the CA certificate", reason: e.to_string() })?;
    let verifier = Arc::new(RevokingServerVerifier { inner, revocations: revocations.clone() });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Connects a tonic channel to a peer over TLS with a [`peer_client_config`], checking that
/// the peer's certificate names `server_name`. Give the endpoint an `http://HOST:PORT` URI
/// (the TLS is this connector's, not tonic's).
#[derive(Clone)]
pub struct PeerConnector {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send>>;

impl tonic::codegen::Service<tonic::codegen::http::Uri> for PeerConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let (config, name) = (self.config.clone(), self.server_name.clone());
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
