//! Where chunks come from: the seam between the spoke and the servers it fetches from.
//!
//! A [`ChunkOrigin`] answers one question: send me these chunks of `dataset@version`, as a
//! stream of (digest, bytes). Two kinds answer it for real: the hub over the link
//! ([`HubOrigin`]) and a peer of the region ([`PeerOrigin`], which may fetch what it lacks over
//! the link as the chunks' owner). [`Origins`] finds them: the hub, the origin for a member of
//! the region, and which peers hold what. An origin only carries bytes and says what went
//! wrong ([`FetchError`]); what to make of it (check every chunk against its digest, ask a
//! busy server again, suspect a peer that failed or lied, go to the next owner) is the
//! reader's ([`crate::reader`]), so that a fake origin ([`fake`], in tests) can stand in for
//! the hub and the peers: one that serves, fails, stalls, lies or is busy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aqueduct_proto::Digest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_proto::spoke::v1 as spb;
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tonic::transport::Channel;

use crate::hubs::Hubs;
use crate::peers::{PeerError, Peers};
use crate::retry::Server;
use crate::store::CacheError;

/// What can go wrong getting chunks.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the hub: {}", .0.message())]
    Hub(tonic::Status),
    #[error("the hub sent wrong bytes for chunk {digest} (their hash is {actual})")]
    Corrupt { digest: Digest, actual: Digest },
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("the hub sent chunk {0}, which was not asked for")]
    Unexpected(String),
    #[error("chunk {0} did not arrive")]
    Missing(Digest),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("no answer in {0:?}")]
    Timeout(Duration),
}

impl FetchError {
    /// The server serves as many fetch streams as it allows (RESOURCE_EXHAUSTED): ask again
    /// later; it is not at fault.
    pub fn is_busy(&self) -> bool {
        match self {
            FetchError::Hub(status) => status.code() == tonic::Code::ResourceExhausted,
            FetchError::Peer(e) => matches!(e, PeerError::Busy { .. }),
            _ => false,
        }
    }

    /// The hub was lost under the call (see [`hub_lost`]): asking again reaches the next hub
    /// that answers.
    pub fn hub_lost(&self) -> bool {
        matches!(self, FetchError::Hub(status) if hub_lost(status))
    }

    /// Whether a peer that answered with this is to blame (and left out of ownership for a
    /// while): one that failed or sent wrong bytes is; one that was busy, or could not get a
    /// chunk over the link itself, is not.
    pub fn blames_peer(&self) -> bool {
        matches!(self, FetchError::Peer(PeerError::Unavailable { .. } | PeerError::Corrupt { .. }))
    }
}

/// Whether a status from a call to the hub says the hub was lost rather than what it answered:
/// it could not be reached (UNAVAILABLE), or the connection broke under the call (a status the
/// client's transport made, which carries the transport's error as its source; the hub's own
/// answers carry none). The call may be asked again: the next connection goes to the next hub
/// that answers ([`crate::hubs`]).
pub fn hub_lost(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable || std::error::Error::source(status).is_some()
}

/// Who an origin is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginKind {
    /// The hub, over the link.
    Hub,
    /// A peer of the region.
    Peer(pb::Member),
}

impl OriginKind {
    pub fn server(&self) -> Server {
        match self {
            OriginKind::Hub => Server::Hub,
            OriginKind::Peer(_) => Server::Peer,
        }
    }

    /// The peer's member entry (None for the hub).
    pub fn peer(&self) -> Option<&pb::Member> {
        match self {
            OriginKind::Hub => None,
            OriginKind::Peer(m) => Some(m),
        }
    }
}

/// One ask of an origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub dataset: String,
    pub version: u64,
    pub digests: Vec<Digest>,
    /// A peer gets what it lacks (over the link, as the chunks' owner) instead of leaving it out.
    pub fetch_on_miss: bool,
    /// A reader waits for it (a peer serves it ahead of its background work).
    pub urgent: bool,
}

/// Chunks as an origin sends them: the digest as it came over the wire, unchecked, and the
/// bytes. The stream ends when the origin has sent what it will (it may leave some out).
pub type ChunkStream = BoxStream<'static, Result<pb::ChunkData, FetchError>>;

/// A server chunks come from.
#[async_trait]
pub trait ChunkOrigin: Send + Sync {
    fn kind(&self) -> &OriginKind;

    /// Asks for `request.digests`; the answer streams in.
    async fn fetch(&self, request: &FetchRequest) -> Result<ChunkStream, FetchError>;
}

/// The origins a spoke can ask.
#[async_trait]
pub trait Origins: Send + Sync {
    /// The hub, over the link.
    fn hub(&self) -> Arc<dyn ChunkOrigin>;

    /// A member of the region.
    fn peer(&self, member: &pb::Member) -> Arc<dyn ChunkOrigin>;

    /// Which live peer holds each of `digests` (those no peer holds are absent).
    async fn holders(&self, digests: &[Digest]) -> HashMap<Digest, pb::Member>;
}

/// The hub's `FetchChunks`, from the hub in use: a hub that refuses a fetch makes the next
/// one the hub in use ([`Hubs::refused`]), so that asking again asks it.
pub struct HubOrigin {
    client: SpokeClient<Channel>,
    hubs: Arc<Hubs>,
}

impl HubOrigin {
    /// `client` connects through `hubs`' connector.
    pub fn new(client: SpokeClient<Channel>, hubs: Arc<Hubs>) -> Self {
        Self { client, hubs }
    }
}

#[async_trait]
impl ChunkOrigin for HubOrigin {
    fn kind(&self) -> &OriginKind {
        static HUB: OriginKind = OriginKind::Hub;
        &HUB
    }

    async fn fetch(&self, request: &FetchRequest) -> Result<ChunkStream, FetchError> {
        let request = pb::FetchChunksRequest {
            dataset: request.dataset.clone(),
            version: request.version,
            digests: request.digests.iter().map(|d| d.0.to_vec()).collect(),
            // A reader waits: the relay sends it ahead of every rollout's transfers.
            foreground: request.urgent,
        };
        let turn = self.hubs.turn();
        let hubs = self.hubs.clone();
        let refused = move |status: tonic::Status| {
            hubs.refused(turn, &status);
            FetchError::Hub(status)
        };
        let stream = self.client.clone().fetch_chunks(request).await.map_err(&refused)?.into_inner();
        Ok(stream.map_err(refused).boxed())
    }
}

/// A peer's `FetchChunks` (`aqueduct.spoke.v1.Peer`).
pub struct PeerOrigin {
    peers: Arc<Peers>,
    kind: OriginKind,
}

impl PeerOrigin {
    pub fn new(peers: Arc<Peers>, member: pb::Member) -> Self {
        Self { peers, kind: OriginKind::Peer(member) }
    }
}

#[async_trait]
impl ChunkOrigin for PeerOrigin {
    fn kind(&self) -> &OriginKind {
        &self.kind
    }

    async fn fetch(&self, request: &FetchRequest) -> Result<ChunkStream, FetchError> {
        let OriginKind::Peer(member) = &self.kind else { unreachable!("a peer origin names a member") };
        let wire = spb::PeerFetchRequest {
            dataset: request.dataset.clone(),
            version: request.version,
            digests: request.digests.iter().map(|d| d.0.to_vec()).collect(),
            fetch_on_miss: request.fetch_on_miss,
            urgent: request.urgent,
        };
        let stream = self.peers.fetch(member, wire).await?;
        let (node, address) = (member.node.clone(), member.peer_address.clone());
        Ok(stream
            .map_err(move |status| {
                let (node, address, reason) = (node.clone(), address.clone(), status.message().to_string());
                FetchError::Peer(match status.code() {
                    // Not its fault: it serves this spoke as many streams as it allows, or could
                    // not get a chunk over the link itself.
                    tonic::Code::ResourceExhausted => PeerError::Busy { node, address, reason },
                    tonic::Code::Aborted => PeerError::Declined { node, address, reason },
                    _ => PeerError::Unavailable { node, address, reason },
                })
            })
            .boxed())
    }
}

/// The hub and the region's peers, for real.
pub struct Network {
    hub: Arc<HubOrigin>,
    peers: Arc<Peers>,
}

impl Network {
    /// `hub` is the client chunks come over the link with (through `hubs`' connector); `peers`
    /// the region's members.
    pub fn new(hub: SpokeClient<Channel>, hubs: Arc<Hubs>, peers: Arc<Peers>) -> Self {
        Self { hub: Arc::new(HubOrigin::new(hub, hubs)), peers }
    }
}

#[async_trait]
impl Origins for Network {
    fn hub(&self) -> Arc<dyn ChunkOrigin> {
        self.hub.clone()
    }

    fn peer(&self, member: &pb::Member) -> Arc<dyn ChunkOrigin> {
        Arc::new(PeerOrigin::new(self.peers.clone(), member.clone()))
    }

    async fn holders(&self, digests: &[Digest]) -> HashMap<Digest, pb::Member> {
        self.peers.holders(digests).await
    }
}

#[cfg(test)]
pub mod fake;
