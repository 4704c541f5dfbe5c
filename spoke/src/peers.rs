//! The other spokes of this region: who is live, who owns which chunk, and how to ask them.
//!
//! Membership comes from the hub with every assignment push (the spokes whose watch is open;
//! [`Peers::set_members`] is the one seam a Kubernetes headless service would feed instead).
//! A peer that fails a request or sends wrong bytes is *suspected* for [`SUSPECT_FOR`] and
//! left out of ownership meanwhile, so that the next in line takes over at once, before the
//! hub notices the spoke is gone.
//!
//! Each chunk's owners are the live members ranked by rendezvous (highest random weight)
//! hashing: BLAKE3 over the node's name and the digest. Every spoke ranks the same way without
//! talking to the others, and a member that leaves moves only the chunks it ranked first.
//!
//! Peers speak gRPC over mutual TLS with the region's certificate: the client checks that the
//! server's certificate names this region ([`Identity::peer_name`]), and the server
//! ([`crate::peer_service`]) checks the client's.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use aqueduct_core::identity::Identity;
use aqueduct_proto::Digest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::spoke::v1 as spb;
use aqueduct_proto::spoke::v1::peer_client::PeerClient;

use crate::tls::NodeTls;
use tonic::transport::{Channel, Endpoint};
use tracing::warn;

/// How long a peer that failed stays out of ownership.
pub const SUSPECT_FOR: Duration = Duration::from_secs(15);
/// How long a peer may take to answer `Has`.
const HAS_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {node} ({address}): {reason}")]
    Unavailable { node: String, address: String, reason: String },
    #[error("peer {node} sent wrong bytes for chunk {digest} (their hash is {actual})")]
    Corrupt { node: String, digest: Digest, actual: Digest },
    /// The peer serves this spoke as many streams as it allows (RESOURCE_EXHAUSTED): not its
    /// fault, and not suspected.
    #[error("peer {node} ({address}) is busy: {reason}")]
    Busy { node: String, address: String, reason: String },
    /// The peer could not get a chunk it was asked to fetch over the link (ABORTED): not its
    /// fault, and not suspected.
    #[error("peer {node} ({address}): {reason}")]
    Declined { node: String, address: String, reason: String },
}

/// Who to ask for a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// This spoke: it fetches the chunk over the link.
    Me,
    Peer(pb::Member),
}

/// Bytes this spoke moved, by where they came from or went.
#[derive(Debug, Default)]
pub struct PeerStats {
    pub from_peers: AtomicU64,
    pub to_peers: AtomicU64,
    /// Chunks a peer sent with wrong bytes.
    pub corrupt_from_peers: AtomicU64,
}

pub struct Peers {
    me: String,
    /// The DNS name every certificate of this region carries.
    peer_name: String,
    tls: Option<Arc<NodeTls>>,
    members: RwLock<Vec<pb::Member>>,
    suspects: Mutex<HashMap<String, Instant>>,
    clients: Mutex<HashMap<String, PeerClient<Channel>>>,
    pub stats: PeerStats,
}

impl Peers {
    /// `tls` is the node's TLS (its certificate, the CA, the revocation list), to ask peers; `None`
    /// for a spoke that never asks them. A spoke that serves no peers (no peer share) still asks
    /// them for what it reads, and owns nothing.
    pub fn new(me: &str, region: &Identity, tls: Option<Arc<NodeTls>>) -> Self {
        Self {
            me: me.to_string(),
            peer_name: region.peer_name().unwrap_or_default(),
            tls,
            members: RwLock::default(),
            suspects: Mutex::default(),
            clients: Mutex::default(),
            stats: PeerStats::default(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// The region's live members, as the hub last said.
    pub fn set_members(&self, members: Vec<pb::Member>) {
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = members;
    }

    /// The region's live members changed as the hub said: `left` went, `joined` came.
    pub fn apply_member_delta(&self, joined: Vec<pb::Member>, left: &[String]) {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        *members = aqueduct_proto::domain::members::apply(std::mem::take(&mut *members), joined, left);
    }

    /// Leaves `node` out of ownership for [`SUSPECT_FOR`].
    pub fn suspect(&self, node: &str, reason: &str) {
        warn!(peer = node, reason, "peer failed; leaving it out for a while");
        self.suspects.lock().unwrap_or_else(|e| e.into_inner()).insert(node.to_string(), Instant::now());
    }

    /// Members that take part in peer exchange and are not suspected, this spoke included when
    /// it serves peers.
    fn candidates(&self) -> Vec<pb::Member> {
        if self.tls.is_none() {
            return Vec::new();
        }
        let mut suspects = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        suspects.retain(|_, since| since.elapsed() < SUSPECT_FOR);
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        members.iter().filter(|m| !m.peer_address.is_empty() && !suspects.contains_key(&m.node)).cloned().collect()
    }

    /// Who owns what now. Planning many chunks takes one ring and asks it for each.
    pub fn ring(&self) -> Ring {
        Ring { me: self.me.clone(), members: self.candidates() }
    }

    /// Who to ask for `digest`, best first (see [`Ring::owners`]).
    pub fn owners(&self, digest: &Digest) -> Vec<Owner> {
        self.ring().owners(digest)
    }

    /// The region's members that take part in peer exchange, as the hub last said (suspects
    /// included), sorted and comma-separated: what a share in region mode was computed for.
    pub fn membership(&self) -> String {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&str> =
            members.iter().filter(|m| !m.peer_address.is_empty()).map(|m| m.node.as_str()).collect();
        names.sort_unstable();
        names.join(",")
    }

    /// Live peers (not this spoke), in no particular order.
    pub(crate) fn others(&self) -> Vec<pb::Member> {
        self.candidates().into_iter().filter(|m| m.node != self.me).collect()
    }

    fn client(&self, member: &pb::Member) -> Result<PeerClient<Channel>, PeerError> {
        let unavailable = |reason: String| PeerError::Unavailable {
            node: member.node.clone(),
            address: member.peer_address.clone(),
            reason,
        };
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&member.peer_address) {
            return Ok(c.clone());
        }
        let tls = self.tls.clone().ok_or_else(|| unavailable("this spoke takes no part in peer exchange".into()))?;
        // The connector does TLS (with the node's current certificate): the URI is http://.
        let endpoint = Endpoint::from_shared(format!("http://{}", member.peer_address))
            .map_err(|e| unavailable(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .initial_stream_window_size(aqueduct_proto::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(aqueduct_proto::CONNECTION_WINDOW_BYTES);
        // Chunks (and `Has` answers) come back; requests are lists of digests.
        let client = PeerClient::new(endpoint.connect_with_connector_lazy(tls.peer_connector(&self.peer_name)))
            .max_decoding_message_size(aqueduct_proto::MAX_CHUNK_MESSAGE_BYTES)
            .max_encoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES);
        clients.insert(member.peer_address.clone(), client.clone());
        Ok(client)
    }

    /// Which live peer holds each of `digests` (those no peer holds are absent). Peers that do
    /// not answer are suspected and skipped.
    pub async fn holders(&self, digests: &[Digest]) -> HashMap<Digest, pb::Member> {
        let others = self.others();
        if others.is_empty() || digests.is_empty() {
            return HashMap::new();
        }
        let request = spb::HasRequest { digests: digests.iter().map(|d| d.0.to_vec()).collect() };
        let asks = others.into_iter().map(|m| {
            let request = request.clone();
            async move {
                let answer = async {
                    let mut client = self.client(&m)?;
                    let call = tokio::time::timeout(HAS_TIMEOUT, client.has(request));
                    let unavailable = |reason: String| PeerError::Unavailable {
                        node: m.node.clone(),
                        address: m.peer_address.clone(),
                        reason,
                    };
                    call.await
                        .map_err(|_| unavailable(format!("no answer in {HAS_TIMEOUT:?}")))?
                        .map_err(|s| unavailable(s.message().to_string()))
                }
                .await;
                (m, answer)
            }
        });
        let mut held = HashMap::new();
        for (m, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(answer) => {
                    for (d, h) in digests.iter().zip(answer.into_inner().held) {
                        if h {
                            held.entry(*d).or_insert_with(|| m.clone());
                        }
                    }
                }
                Err(e) => self.suspect(&m.node, &e.to_string()),
            }
        }
        held
    }

    /// Opens a stream of chunks from `member` (see `aqueduct.spoke.v1.Peer.FetchChunks`).
    pub async fn fetch(
        &self,
        member: &pb::Member,
        request: spb::PeerFetchRequest,
    ) -> Result<tonic::Streaming<pb::ChunkData>, PeerError> {
        let mut client = self.client(member)?;
        client.fetch_chunks(request).await.map(|r| r.into_inner()).map_err(|s| {
            let (node, address, reason) = (member.node.clone(), member.peer_address.clone(), s.message().to_string());
            match s.code() {
                tonic::Code::ResourceExhausted => PeerError::Busy { node, address, reason },
                _ => PeerError::Unavailable { node, address, reason },
            }
        })
    }
}

/// The live, unsuspected members at one moment, and this spoke's name: who owns each chunk.
pub struct Ring {
    me: String,
    members: Vec<pb::Member>,
}

impl Ring {
    /// Who to ask for `digest`, best first, ending with this spoke: the owners by rendezvous
    /// rank up to this spoke's own place (past it, this spoke fetches over the link itself).
    pub fn owners(&self, digest: &Digest) -> Vec<Owner> {
        let mine = weight(&self.me, digest);
        let mut ahead: Vec<(u64, &pb::Member)> = self
            .members
            .iter()
            .filter(|m| m.node != self.me)
            .map(|m| (weight(&m.node, digest), m))
            .filter(|&(w, m)| (w, m.node.as_str()) > (mine, self.me.as_str()) || !self.has_me())
            .collect();
        ahead.sort_by(|a, b| (b.0, &b.1.node).cmp(&(a.0, &a.1.node)));
        let mut owners: Vec<Owner> = ahead.into_iter().map(|(_, m)| Owner::Peer(m.clone())).collect();
        owners.push(Owner::Me);
        owners
    }

    /// The first owner of `digest`.
    pub fn owner(&self, digest: &Digest) -> Owner {
        self.owners(digest).swap_remove(0)
    }

    /// Whether this spoke is among the first `replicas` owners of `digest`. A spoke that is not
    /// a member with a peer share owns nothing while the region has such members (it is a
    /// sidecar), and everything when it has none (a lone spoke).
    pub fn holds(&self, digest: &Digest, replicas: usize) -> bool {
        if !self.has_me() {
            return self.members.is_empty();
        }
        let mine = (weight(&self.me, digest), self.me.as_str());
        let ahead = self.members.iter().filter(|m| (weight(&m.node, digest), m.node.as_str()) > mine).count();
        ahead < replicas.max(1)
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn has_me(&self) -> bool {
        self.members.iter().any(|m| m.node == self.me)
    }
}

/// Rendezvous weight of `node` for `digest`.
fn weight(node: &str, digest: &Digest) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(node.as_bytes()).update(&[0]).update(&digest.0);
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// `members` ranked for `digest`, highest weight first.
pub fn rank(mut members: Vec<pb::Member>, digest: &Digest) -> Vec<pb::Member> {
    members.sort_by_cached_key(|m| std::cmp::Reverse((weight(&m.node, digest), m.node.clone())));
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eu() -> Identity {
        Identity::Node { region: "eu".into(), node: "n".into() }
    }

    fn members(n: usize) -> Vec<pb::Member> {
        (0..n).map(|i| pb::Member { node: format!("node-{i}"), peer_address: format!("10.0.0.{i}:7443") }).collect()
    }

    fn digests(n: u32) -> Vec<Digest> {
        (0..n).map(|i| Digest::of(&i.to_le_bytes())).collect()
    }

    #[test]
    fn ownership_is_spread_evenly_and_moves_only_from_a_member_that_leaves() {
        let all = members(4);
        let mut owned: HashMap<String, usize> = HashMap::new();
        for d in digests(4000) {
            *owned.entry(rank(all.clone(), &d)[0].node.clone()).or_default() += 1;
        }
        for (node, n) in &owned {
            assert!((800..1200).contains(n), "{node} owns {n} of 4000 chunks");
        }
        // node-2 leaves: the chunks it owned go to their second-ranked member, no other moves.
        let left: Vec<pb::Member> = all.iter().filter(|m| m.node != "node-2").cloned().collect();
        for d in digests(4000) {
            let before = rank(all.clone(), &d);
            let after = rank(left.clone(), &d);
            let expected = if before[0].node == "node-2" { &before[1] } else { &before[0] };
            assert_eq!(&after[0], expected);
        }
    }

    #[test]
    fn owners_end_with_me_and_skip_suspects() {
        let peers = Peers::new("node-1", &eu(), Some(crate::tls::test_tls("eu", "n")));
        peers.set_members(members(3));
        for d in digests(100) {
            let owners = peers.owners(&d);
            assert_eq!(owners.last(), Some(&Owner::Me));
            // The ring agrees with a full ranking: the members ahead of this spoke, in order.
            let ranked = rank(members(3), &d);
            let mine = ranked.iter().position(|m| m.node == "node-1").unwrap();
            let ahead: Vec<Owner> = ranked[..mine].iter().cloned().map(Owner::Peer).collect();
            assert_eq!(owners[..mine], ahead[..]);
            assert_eq!(owners.len(), mine + 1);
            for replicas in 1..=3 {
                assert_eq!(peers.ring().holds(&d, replicas), mine < replicas);
            }
        }
        peers.suspect("node-0", "test");
        peers.suspect("node-2", "test");
        assert!(digests(100).iter().all(|d| peers.ring().owner(d) == Owner::Me));
        // A spoke outside peer exchange owns everything it reads.
        let alone = Peers::new("node-1", &eu(), None);
        alone.set_members(members(3));
        assert!(digests(10).iter().all(|d| alone.owners(d) == [Owner::Me]));
    }

    /// A spoke without a peer share (a sidecar: a member without an address) owns no chunk
    /// while the region has members with shares, and asks them first for what it reads; with
    /// none it owns everything (a lone spoke).
    #[test]
    fn a_spoke_without_a_peer_share_owns_nothing_and_asks_the_owners() {
        let sidecar = Peers::new("pod-sidecar", &eu(), Some(crate::tls::test_tls("eu", "n")));
        let mut all = members(3);
        all.push(pb::Member { node: "pod-sidecar".into(), peer_address: String::new() });
        sidecar.set_members(all);
        for d in digests(100) {
            assert!(!sidecar.ring().holds(&d, 1), "a sidecar took a share");
            let owners = sidecar.owners(&d);
            let ranked: Vec<Owner> = rank(members(3), &d).into_iter().map(Owner::Peer).collect();
            assert_eq!(owners[..3], ranked[..], "the owners, best first");
            assert_eq!(owners.last(), Some(&Owner::Me), "the link last");
        }
        // On a node spoke, the sidecar is in no ring of owners.
        let node = Peers::new("node-0", &eu(), Some(crate::tls::test_tls("eu", "n")));
        let mut all = members(3);
        all.push(pb::Member { node: "pod-sidecar".into(), peer_address: String::new() });
        node.set_members(all);
        assert_eq!(node.membership(), "node-0,node-1,node-2");
        for d in digests(100) {
            assert!(node.owners(&d).iter().all(|o| !matches!(o, Owner::Peer(m) if m.node == "pod-sidecar")));
        }
        // Alone (or among spokes without shares), it holds everything.
        sidecar.set_members(vec![pb::Member { node: "pod-sidecar".into(), peer_address: String::new() }]);
        assert!(digests(10).iter().all(|d| sidecar.ring().holds(d, 1) && sidecar.owners(d) == [Owner::Me]));
    }
}
