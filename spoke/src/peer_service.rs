//! The peer API a spoke serves to the other spokes of its region (`aqueduct.spoke.v1.Peer`),
//! over mutual TLS with the region's certificate.
//!
//! Only spokes of the same region may call: the caller's certificate must name this region.
//! `FetchChunks` sends what the store holds, each chunk checked on the way out (a rotten copy is
//! removed, never sent); with `fetch_on_miss` the rest is fetched as their owner would
//! ([`ReadThrough::over_link`]) and sent as it arrives.
//!
//! Within limits (`[limits]` of the config): the server takes connections through the one
//! accept path of [`aqueduct_core::server`], a peer (by its address) has at most
//! `limits.fetch_streams_per_peer` `FetchChunks` streams at once (past it, a call waits up to
//! `limits.fetch_wait`, then gets RESOURCE_EXHAUSTED, which the asker does not hold against
//! this spoke), a request names at most [`aqueduct_proto::MAX_DIGESTS_PER_REQUEST`] digests,
//! and what a peer asks to be fetched over the link is fetched [`MISS_BATCH`] chunks at a
//! time, so that one stream holds at most that many chunks in memory.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use aqueduct_core::budget::Lane;
use aqueduct_core::identity::Identity;
use aqueduct_proto::Digest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::spoke::v1 as spb;
use aqueduct_proto::spoke::v1::peer_server::{Peer, PeerServer};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, debug, instrument, warn};

use crate::origin::FetchError;
use crate::reader::{FETCH_TIMEOUT, Pull, ReadThrough};
use crate::store::CacheError;

pub struct PeerService {
    /// This spoke's region: callers must be of it.
    pub region: String,
    pub reader: Arc<ReadThrough>,
    /// `FetchChunks` streams per peer (keyed by its address).
    pub per_peer: aqueduct_core::server::KeyedLimit,
}

/// Chunks a peer asked for and this spoke lacks, fetched over the link (and held) at a time.
pub const MISS_BATCH: usize = 8;

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ChunkData, Status>> + Send>>;

impl PeerService {
    fn check_caller<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match Identity::of_request(request)? {
            Identity::Node { region, .. } if region == self.region => Ok(()),
            other => Err(Status::permission_denied(format!(
                "this spoke serves the peers of region {}; the caller is {other}",
                self.region
            ))),
        }
    }
}

fn digests(raw: &[Vec<u8>]) -> Result<Vec<Digest>, Status> {
    aqueduct_proto::check_digest_count(raw.len())?;
    raw.iter()
        .map(|d| {
            Digest::from_slice(d)
                .ok_or_else(|| Status::invalid_argument(format!("a digest has {} bytes, not 32", d.len())))
        })
        .collect()
}

#[tonic::async_trait]
impl Peer for PeerService {
    #[instrument(skip_all, fields(chunks))]
    async fn has(&self, request: Request<spb::HasRequest>) -> Result<Response<spb::HasResponse>, Status> {
        self.check_caller(&request)?;
        let digests = digests(&request.into_inner().digests)?;
        Span::current().record("chunks", digests.len());
        let store = self.reader.store();
        Ok(Response::new(spb::HasResponse { held: digests.iter().map(|d| store.contains(d)).collect() }))
    }

    type FetchChunksStream = ChunkStream;

    #[instrument(skip_all, fields(dataset, version, chunks, fetch_on_miss))]
    async fn fetch_chunks(
        &self,
        request: Request<spb::PeerFetchRequest>,
    ) -> Result<Response<Self::FetchChunksStream>, Status> {
        self.check_caller(&request)?;
        let peer = request.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.ip().to_string());
        let r = request.into_inner();
        let digests = digests(&r.digests)?;
        // Held until the stream ends.
        let turn = self.per_peer.enter(&peer).await.map_err(|busy| {
            Status::resource_exhausted(format!(
                "peer {peer} has {} FetchChunks streams open at this spoke, the most it may (limits.fetch_streams_per_peer), and none ended within {:?}; try again shortly",
                busy.held, busy.waited
            ))
        })?;
        Span::current()
            .record("dataset", r.dataset.as_str())
            .record("version", r.version)
            .record("chunks", digests.len())
            .record("fetch_on_miss", r.fetch_on_miss);
        let (tx, rx) = mpsc::channel(2);
        let reader = self.reader.clone();
        tokio::spawn(
            async move {
                let _turn = turn;
                let mut misses = Vec::new();
                for digest in digests {
                    let store = reader.store().clone();
                    let got = tokio::task::spawn_blocking(move || match store.get(&digest) {
                        Err(CacheError::Corrupt { .. }) => {
                            warn!(%digest, "a chunk in the store is corrupt; removing it");
                            let _ = store.remove(&digest);
                            Ok(None)
                        }
                        other => other,
                    })
                    .await;
                    match got {
                        Ok(Ok(Some(data))) => {
                            reader.peers().stats.to_peers.fetch_add(data.len() as u64, Ordering::Relaxed);
                            if tx.send(Ok(pb::ChunkData { digest: digest.0.to_vec(), data })).await.is_err() {
                                return;
                            }
                        }
                        Ok(Ok(None)) => misses.push(digest),
                        Ok(Err(e)) => {
                            let _ = tx.send(Err(Status::internal(format!("the chunk store: {e}")))).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                            return;
                        }
                    }
                }
                if misses.is_empty() || !r.fetch_on_miss {
                    return;
                }
                debug!(misses = misses.len(), "fetching for a peer");
                let pull = Pull {
                    dataset: &r.dataset,
                    version: r.version,
                    budget: None,
                    // Counted as the hub relays it: a reader's, or (as far as this spoke
                    // knows) normal replication.
                    lane: if r.urgent { Lane::Foreground } else { Lane::Normal },
                    from_owner: false,
                    urgent: r.urgent,
                    wait_stored: false,
                };
                for batch in misses.chunks(MISS_BATCH) {
                    // Not past the asker's patience, and not at all once it has gone.
                    let fetched = tokio::select! {
                        fetched = tokio::time::timeout(
                            FETCH_TIMEOUT,
                            reader.over_link(&pull, batch),
                        ) => fetched,
                        _ = tx.closed() => return,
                    };
                    let fetched = fetched.unwrap_or_else(|_| Err(FetchError::Timeout(FETCH_TIMEOUT)));
                    match &fetched {
                        Ok(p) => debug!(got = p.got.len(), missing = p.missing.len(), "fetched for a peer"),
                        Err(e) => debug!(error = %e, "could not fetch for a peer"),
                    }
                    match fetched {
                        Ok(pulled) => {
                            for (digest, data) in pulled.got {
                                reader.peers().stats.to_peers.fetch_add(data.len() as u64, Ordering::Relaxed);
                                let chunk = pb::ChunkData { digest: digest.0.to_vec(), data: data.as_ref().clone() };
                                if tx.send(Ok(chunk)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        // Not this spoke's fault: the asker must not suspect it.
                        Err(e) => {
                            let _ = tx.send(Err(Status::aborted(format!("could not get it over the link: {e}")))).await;
                            return;
                        }
                    }
                }
            }
            .instrument(Span::current()),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves the peer API on `listener` until `shutdown` fires, with TLS as `tls` says (its
/// client verifier consults `revocations`) and within `limits`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<aqueduct_core::server::ServerConfig>,
    limits: aqueduct_core::server::ServerLimits,
    service: PeerService,
    revocations: aqueduct_core::server::revoke::Revocations,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    // Peers whose certificate a new list revokes are cut off at once.
    let incoming = aqueduct_core::server::incoming(listener, tls, limits, "peer API").revoking(&revocations);
    aqueduct_core::server::grpc_server(limits.max_streams_per_connection, aqueduct_core::server::KEEPALIVE)
        .add_service(
            PeerServer::new(service)
                .max_decoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES)
                .max_encoding_message_size(aqueduct_proto::MAX_CHUNK_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}
