//! The audit log of the admin API: [`Audited`] wraps the whole `Admin` service, so that every
//! call, whichever handler answers it and however it ends, leaves one row in the database
//! (who, what, arguments without secrets, result, when). Nothing in the handlers records it.
//!
//! Who: the admin name of the caller's certificate (or what else it names). What: the RPC's
//! name, from the request's path. Arguments: [`summarize`] decodes the request message and
//! writes the fields that say what was asked (names, versions, regions, flags), chosen per
//! call, never a token, key or source credential; a call it does not know is recorded with no
//! arguments. Result: `ok` or the gRPC status code and message, read from the response's
//! trailers (or its headers, for an answer with no body), so a streamed call is recorded when
//! it ends (as `Cancelled` when the client went away first).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aqueduct_core::identity::Identity;
use aqueduct_proto::hub::v1 as pb;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use prost::Message;
use tonic::Code;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::warn;

use crate::snapshot::now_unix_ms;
use crate::store::MetaStore;
use crate::store::trust::AuditRecord;

/// A row's arguments are cut to this many characters.
const MAX_ARGS_CHARS: usize = 1024;

/// The `Admin` service, each call recorded in the audit log.
#[derive(Clone)]
pub struct Audited<S> {
    inner: S,
    db: Arc<dyn MetaStore>,
}

impl<S> Audited<S> {
    pub fn new(inner: S, db: Arc<dyn MetaStore>) -> Self {
        Self { inner, db }
    }
}

impl<S: NamedService> NamedService for Audited<S> {
    const NAME: &'static str = S::NAME;
}

/// A row waiting for its result; written once, when the call ends (or is dropped).
struct Pending {
    db: Arc<dyn MetaStore>,
    record: Option<AuditRecord>,
}

impl Pending {
    fn finish(&mut self, code: Code, message: &str) {
        let Some(mut record) = self.record.take() else { return };
        record.result = if code == Code::Ok { "ok".into() } else { format!("{code:?}") };
        record.message = message.chars().take(MAX_ARGS_CHARS).collect();
        let db = self.db.clone();
        // Written off the runtime's threads; a failure to write is logged, never the call's.
        let write = move || {
            if let Err(e) = db.record_audit(&record) {
                warn!(call = %record.call, admin = %record.admin, error = %e, "could not write an audit row");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(write)),
            Err(_) => write(),
        }
    }

    /// Reads the gRPC status of a header block (trailers, or the headers of an answer with no
    /// body); false when the block holds none.
    fn finish_from(&mut self, headers: &http::HeaderMap) -> bool {
        let Some(code) = headers.get("grpc-status") else { return false };
        let code = code.to_str().ok().and_then(|c| c.parse::<i32>().ok()).map_or(Code::Unknown, Code::from_i32);
        let message = headers
            .get("grpc-message")
            .map(|m| percent_encoding::percent_decode(m.as_bytes()).decode_utf8_lossy().into_owned())
            .unwrap_or_default();
        self.finish(code, &message);
        true
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(Code::Cancelled, "the call ended before its answer did (the client went away)");
    }
}

/// A response body that records its call when the trailers pass (or when it is dropped).
struct AuditBody {
    inner: Body,
    pending: Pending,
}

impl HttpBody for AuditBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.pending.finish_from(trailers);
                }
            }
            Poll::Ready(Some(Err(status))) => self.pending.finish(status.code(), status.message()),
            Poll::Ready(None) => self.pending.finish(Code::Unknown, "the answer ended with no status"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Who called: the admin name, or what else the certificate names.
fn caller<B>(request: &http::Request<B>) -> String {
    let certs = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.peer_certs());
    let leaf = certs.as_ref().and_then(|certs| certs.first().cloned());
    match leaf.as_ref().and_then(|der| Identity::from_der(der.as_ref())) {
        Some(Identity::Admin(name)) => name,
        Some(other) => other.to_string(),
        None => "unknown".into(),
    }
}

/// A gRPC status as a whole answer (headers only).
fn status_response(status: tonic::Status) -> http::Response<Body> {
    status.into_http()
}

impl<S> Service<http::Request<Body>> for Audited<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready is the one that serves (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let db = self.db.clone();
        Box::pin(async move {
            let call = request.uri().path().rsplit('/').next().unwrap_or_default().to_string();
            let admin = caller(&request);
            let record = AuditRecord {
                at_unix_ms: now_unix_ms(),
                admin,
                call: call.clone(),
                args: String::new(),
                result: String::new(),
                message: String::new(),
            };
            let mut pending = Pending { db, record: Some(record) };
            let (parts, body) = request.into_parts();
            // The request (every Admin call sends one message), bounded as the service bounds it.
            let bytes = match Limited::new(body, aqueduct_proto::MAX_REQUEST_BYTES + 5).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    let status = tonic::Status::resource_exhausted(format!("the request could not be read: {e}"));
                    pending.finish(status.code(), status.message());
                    return Ok(status_response(status));
                }
            };
            if let Some(record) = pending.record.as_mut() {
                record.args = summarize(&call, grpc_message(&bytes)).chars().take(MAX_ARGS_CHARS).collect();
            }
            let request = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
            let response = inner.call(request).await?;
            let (parts, body) = response.into_parts();
            if pending.finish_from(&parts.headers) {
                return Ok(http::Response::from_parts(parts, body));
            }
            Ok(http::Response::from_parts(parts, Body::new(AuditBody { inner: body, pending })))
        })
    }
}

/// The message of a gRPC request body (a 5-byte frame header, then the message); empty when
/// the body is not one uncompressed frame.
fn grpc_message(body: &[u8]) -> &[u8] {
    match body.split_first_chunk::<5>() {
        Some(([0, a, b, c, d], rest)) if u32::from_be_bytes([*a, *b, *c, *d]) as usize == rest.len() => rest,
        _ => &[],
    }
}

/// `name=value` for each listed field of a message (values as Rust writes them: strings
/// quoted and escaped, so that nothing a caller sends can forge a row's layout).
macro_rules! fields {
    ($m:expr $(, $f:ident)*) => {{
        let m = &$m;
        let parts: Vec<String> = vec![$(format!("{}={:?}", stringify!($f), m.$f)),*];
        parts.join(" ")
    }};
}

/// Every call of the `Admin` service, as the audit log names them.
pub const ADMIN_CALLS: &[&str] = &[
    "AddSource",
    "ListSources",
    "AddDataset",
    "ListDatasets",
    "UpdateDataset",
    "Snapshot",
    "ListVersions",
    "GetManifest",
    "AddRegion",
    "ListRegions",
    "UpdateRegion",
    "Rollout",
    "Status",
    "Info",
    "Tag",
    "Promote",
    "Rollback",
    "CancelRollout",
    "Gc",
    "RemoveSource",
    "RemoveDataset",
    "RemoveRegion",
    "RemoveVersion",
    "CreateEnrolToken",
    "Revoke",
    "ListRevocations",
    "AddAdmin",
    "ListAdmins",
    "ListAudit",
];

/// What a call asked, without secrets: the fields chosen per call. A request that does not
/// decode says so; a call this build does not know records no arguments.
pub fn summarize(call: &str, message: &[u8]) -> String {
    fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
        M::decode(bytes).ok()
    }
    let summary = (|| {
        Some(match call {
            "ListSources" | "ListDatasets" | "ListRegions" | "Info" | "ListRevocations" | "ListAdmins" => String::new(),
            "AddSource" => {
                let s = decode::<pb::AddSourceRequest>(message)?.source.unwrap_or_default();
                // Options are references to credentials (variable names, files): only their keys.
                let keys: Vec<&String> = s.options.keys().collect();
                let url = if s.url.contains('@') { "(a URL with user information, not recorded)" } else { &s.url };
                format!("name={:?} url={url:?} options={keys:?}", s.name)
            }
            "AddDataset" => {
                let d = decode::<pb::AddDatasetRequest>(message)?.dataset.unwrap_or_default();
                fields!(d, name, source, prefix, outside_links, keep_versions)
            }
            "UpdateDataset" => {
                fields!(decode::<pb::UpdateDatasetRequest>(message)?, name, outside_links, keep_versions)
            }
            "Snapshot" => fields!(decode::<pb::SnapshotRequest>(message)?, dataset),
            "ListVersions" => fields!(decode::<pb::ListVersionsRequest>(message)?, dataset),
            "GetManifest" => fields!(decode::<pb::GetManifestRequest>(message)?, dataset, version),
            "AddRegion" => {
                let r = decode::<pb::AddRegionRequest>(message)?.region.unwrap_or_default();
                fields!(r, name, rate_bytes_per_sec)
            }
            "UpdateRegion" => {
                fields!(decode::<pb::UpdateRegionRequest>(message)?, name, rate_bytes_per_sec, schedule, time_zone)
            }
            // The token is the response's, never a request's: nothing secret here.
            "CreateEnrolToken" => fields!(decode::<pb::CreateEnrolTokenRequest>(message)?, region, ttl_seconds, uses),
            "Rollout" => {
                fields!(decode::<pb::RolloutRequest>(message)?, dataset, version, regions, mode, cut_over, class)
            }
            "Status" => fields!(decode::<pb::StatusRequest>(message)?, dataset),
            "Tag" => fields!(decode::<pb::TagRequest>(message)?, dataset, name, version, remove),
            "Promote" => fields!(decode::<pb::PromoteRequest>(message)?, dataset, version, regions),
            "Rollback" => fields!(decode::<pb::RollbackRequest>(message)?, dataset, to, regions),
            "CancelRollout" => fields!(decode::<pb::CancelRolloutRequest>(message)?, dataset, version, regions),
            "Gc" => fields!(decode::<pb::GcRequest>(message)?, dataset, dry_run),
            "RemoveSource" | "RemoveDataset" | "RemoveRegion" => {
                fields!(decode::<pb::RemoveRequest>(message)?, name, force)
            }
            "RemoveVersion" => fields!(decode::<pb::RemoveVersionRequest>(message)?, dataset, version, force),
            "Revoke" => fields!(decode::<pb::RevokeRequest>(message)?, region, node, admin, reason),
            "AddAdmin" => fields!(decode::<pb::AddAdminRequest>(message)?, name, valid_for_secs),
            "ListAudit" => fields!(decode::<pb::ListAuditRequest>(message)?, since_unix_ms, limit),
            _ => return Some(String::from("(a call this hub does not know: arguments not recorded)")),
        })
    })();
    summary.unwrap_or_else(|| String::from("(the request did not decode)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list names exactly the RPCs of the `Admin` service in the wire contract, so that a
    /// new RPC cannot be added without choosing what its audit rows say.
    #[test]
    fn every_admin_call_has_a_summary() {
        let proto = include_str!("../../../proto/proto/aqueduct/hub/v1/hub.proto");
        let service = proto.split("service Admin {").nth(1).and_then(|s| s.split("\n}").next()).unwrap();
        let rpcs: Vec<&str> = service
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| l.split('(').next().unwrap().trim())
            .collect();
        assert_eq!(rpcs, ADMIN_CALLS);
        for call in ADMIN_CALLS {
            let summary = summarize(call, &[]);
            assert!(!summary.contains("does not know"), "{call} has no summary");
        }
    }

    #[test]
    fn summaries_leave_out_credentials() {
        let source = pb::Source {
            name: "s3".into(),
            url: "s3://bucket/models".into(),
            options: [("access_key_id_env".to_string(), "SECRET_VAR_NAME".to_string())].into(),
            created_unix_ms: 0,
        };
        let bytes = pb::AddSourceRequest { source: Some(source) }.encode_to_vec();
        let summary = summarize("AddSource", &bytes);
        assert_eq!(summary, r#"name="s3" url="s3://bucket/models" options=["access_key_id_env"]"#);
        let with_user = pb::AddSourceRequest {
            source: Some(pb::Source { url: "s3://key:secret@bucket".into(), ..Default::default() }),
        };
        assert!(!summarize("AddSource", &with_user.encode_to_vec()).contains("secret"));
        let region =
            pb::RevokeRequest { region: "eu".into(), node: "n\"1".into(), admin: String::new(), reason: "lost".into() };
        assert_eq!(summarize("Revoke", &region.encode_to_vec()), r#"region="eu" node="n\"1" admin="" reason="lost""#);
        assert_eq!(summarize("GetManifest", &[0xff, 0xff]), "(the request did not decode)");
    }

    proptest::proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(2000))]

        /// Any request body a caller sends, for any call: a summary, never a panic.
        #[test]
        fn fuzz_audit_summaries_of_any_request(
            call in proptest::sample::select(ADMIN_CALLS.iter().copied().chain(["Unknown", ""]).collect::<Vec<_>>()),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let _ = summarize(call, grpc_message(&body));
            let _ = summarize(call, &body);
        }
    }

    #[test]
    fn grpc_frames_are_read_only_when_whole() {
        assert_eq!(grpc_message(&[0, 0, 0, 0, 2, 8, 1]), &[8, 1]);
        assert_eq!(grpc_message(&[0, 0, 0, 0, 3, 8, 1]), &[] as &[u8]);
        assert_eq!(grpc_message(&[1, 0, 0, 0, 2, 8, 1]), &[] as &[u8], "compressed: not read");
        assert_eq!(grpc_message(&[0, 0]), &[] as &[u8]);
    }
}
