//! Scripted origins for unit tests: a hub and peers in memory, each call doing what the test
//! says ([`Act`]: serve, fail, stall, lie, be busy), and recording what it was asked.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aqueduct_proto::Digest;
use aqueduct_proto::hub::v1 as pb;
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::Semaphore;

use super::{ChunkOrigin, ChunkStream, FetchError, FetchRequest, OriginKind, Origins};
use crate::peers::{PeerError, Peers};

/// What one call of a fake origin does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Sends the chunks it holds of those asked (leaves out the others).
    Serve,
    /// Refuses the call, as a server that is down (UNAVAILABLE).
    Fail,
    /// Answers the call and then sends nothing, ever.
    Stall,
    /// Sends wrong bytes for every chunk it holds of those asked.
    Lie,
    /// Refuses the call as busy (RESOURCE_EXHAUSTED).
    Busy,
}

/// A hub or a peer in memory.
pub struct FakeOrigin {
    kind: OriginKind,
    chunks: Mutex<HashMap<Digest, Vec<u8>>>,
    script: Mutex<VecDeque<Act>>,
    then: Mutex<Act>,
    asked: Mutex<Vec<FetchRequest>>,
    sent: Arc<AtomicUsize>,
    gate: Mutex<Option<Arc<Semaphore>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A member of the region named `node`.
pub fn member(node: &str) -> pb::Member {
    pb::Member { node: node.to_string(), peer_address: format!("{node}.test:7444") }
}

impl FakeOrigin {
    pub fn new(kind: OriginKind) -> Arc<Self> {
        Arc::new(Self {
            kind,
            chunks: Mutex::default(),
            script: Mutex::default(),
            then: Mutex::new(Act::Serve),
            asked: Mutex::default(),
            sent: Arc::default(),
            gate: Mutex::default(),
        })
    }

    /// Holds `data` from now on; returns its digest.
    pub fn hold(&self, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        lock(&self.chunks).insert(digest, data.to_vec());
        digest
    }

    /// The next calls do `acts`, in order; the ones after them do what [`FakeOrigin::then`] says
    /// (serve, unless told otherwise).
    pub fn script(&self, acts: impl IntoIterator<Item = Act>) {
        lock(&self.script).extend(acts);
    }

    /// What every call does once the script is done.
    pub fn then(&self, act: Act) {
        *lock(&self.then) = act;
    }

    /// From now on each chunk is sent only with a permit of the returned semaphore (none yet).
    pub fn gate(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *lock(&self.gate) = Some(gate.clone());
        gate
    }

    /// Every call so far, in order.
    pub fn asked(&self) -> Vec<FetchRequest> {
        lock(&self.asked).clone()
    }

    pub fn calls(&self) -> usize {
        lock(&self.asked).len()
    }

    /// Chunks sent so far (right or wrong).
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    fn refusal(&self, busy: bool) -> FetchError {
        let reason = if busy { "busy (scripted)" } else { "down (scripted)" }.to_string();
        match &self.kind {
            OriginKind::Hub if busy => FetchError::Hub(tonic::Status::resource_exhausted(reason)),
            OriginKind::Hub => FetchError::Hub(tonic::Status::unavailable(reason)),
            OriginKind::Peer(m) => {
                let (node, address) = (m.node.clone(), m.peer_address.clone());
                FetchError::Peer(if busy {
                    PeerError::Busy { node, address, reason }
                } else {
                    PeerError::Unavailable { node, address, reason }
                })
            }
        }
    }
}

#[async_trait]
impl ChunkOrigin for FakeOrigin {
    fn kind(&self) -> &OriginKind {
        &self.kind
    }

    async fn fetch(&self, request: &FetchRequest) -> Result<ChunkStream, FetchError> {
        lock(&self.asked).push(request.clone());
        let act = lock(&self.script).pop_front().unwrap_or(*lock(&self.then));
        let chunks: Vec<pb::ChunkData> = {
            let held = lock(&self.chunks);
            request
                .digests
                .iter()
                .filter_map(|d| held.get(d).map(|data| (d, data)))
                .map(|(d, data)| {
                    let mut data = data.clone();
                    if act == Act::Lie {
                        data.push(b'!');
                    }
                    pb::ChunkData { digest: d.0.to_vec(), data }
                })
                .collect()
        };
        match act {
            Act::Fail => Err(self.refusal(false)),
            Act::Busy => Err(self.refusal(true)),
            Act::Stall => Ok(futures::stream::pending().boxed()),
            Act::Serve | Act::Lie => {
                let (gate, sent) = (lock(&self.gate).clone(), self.sent.clone());
                Ok(futures::stream::iter(chunks)
                    .then(move |chunk| {
                        let (gate, sent) = (gate.clone(), sent.clone());
                        async move {
                            if let Some(gate) = gate {
                                gate.acquire().await.expect("the gate stays open").forget();
                            }
                            sent.fetch_add(1, Ordering::SeqCst);
                            Ok(chunk)
                        }
                    })
                    .boxed())
            }
        }
    }
}

/// A hub and the region's peers in memory.
pub struct FakeRegion {
    pub hub: Arc<FakeOrigin>,
    peers: Mutex<HashMap<String, Arc<FakeOrigin>>>,
    /// The spoke's view of the region: as the real `Has`, only live, unsuspected peers answer.
    live: Mutex<Option<Arc<Peers>>>,
}

impl FakeRegion {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { hub: FakeOrigin::new(OriginKind::Hub), peers: Mutex::default(), live: Mutex::default() })
    }

    /// Only the peers `peers` sees live (not suspected) answer who holds what.
    pub fn seen_by(&self, peers: Arc<Peers>) {
        *lock(&self.live) = Some(peers);
    }

    /// The fake origin of `member` (made on first use; it serves what it holds).
    pub fn peer(&self, member: &pb::Member) -> Arc<FakeOrigin> {
        lock(&self.peers)
            .entry(member.node.clone())
            .or_insert_with(|| FakeOrigin::new(OriginKind::Peer(member.clone())))
            .clone()
    }
}

#[async_trait]
impl Origins for FakeRegion {
    fn hub(&self) -> Arc<dyn ChunkOrigin> {
        self.hub.clone()
    }

    fn peer(&self, member: &pb::Member) -> Arc<dyn ChunkOrigin> {
        FakeRegion::peer(self, member)
    }

    /// Live peers say they hold what they hold (a scripted failure or stall applies to fetches
    /// only).
    async fn holders(&self, digests: &[Digest]) -> HashMap<Digest, pb::Member> {
        let live: Option<Vec<String>> =
            lock(&self.live).as_ref().map(|p| p.others().into_iter().map(|m| m.node).collect());
        let peers = lock(&self.peers);
        let mut named: Vec<&Arc<FakeOrigin>> = peers
            .values()
            .filter(|p| live.as_ref().is_none_or(|live| p.kind.peer().is_some_and(|m| live.contains(&m.node))))
            .collect();
        named.sort_by_key(|p| p.kind.peer().map(|m| m.node.clone()));
        let mut held = HashMap::new();
        for p in named {
            let chunks = lock(&p.chunks);
            for d in digests.iter().filter(|d| chunks.contains_key(d)) {
                if let Some(m) = p.kind.peer() {
                    held.entry(*d).or_insert_with(|| m.clone());
                }
            }
        }
        held
    }
}
