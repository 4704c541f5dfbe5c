//! Chunks on their way: each is fetched once however many wait for it (a single flight per
//! chunk), and the fetch knows whether someone who must not wait for background work (a
//! reader, a peer) waits for it: then the pull bringing it does not yield to readers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use aqueduct_proto::Digest;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::oneshot;

use super::{ReadError, Reason};
use crate::priority::Priority;

/// A chunk's bytes when its fetch ends, for everyone who joined it.
pub(super) type Fetch = Shared<BoxFuture<'static, Result<Arc<Vec<u8>>, ReadError>>>;
/// How the pull that fetches a chunk hands it over.
pub(super) type Waiter = oneshot::Sender<Result<Arc<Vec<u8>>, ReadError>>;
/// The chunks in flight, by digest.
pub(super) type InFlightMap = Mutex<HashMap<Digest, InFlight>>;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A chunk on its way, and whether someone who must not wait for background work waits for it.
#[derive(Clone)]
pub(super) struct InFlight {
    fetch: Fetch,
    wanted: Arc<AtomicBool>,
}

impl InFlight {
    /// A fetch of `digest` by a pull whose chunks are wanted as `wanted` says; the pull hands
    /// the chunk (or why not) to the returned waiter.
    pub(super) fn new(digest: Digest, wanted: Arc<AtomicBool>) -> (Self, Waiter) {
        let (tx, rx) = oneshot::channel();
        let fetch = rx.map(move |r| r.unwrap_or(Err(ReadError { digest, reason: Reason::Dropped }))).boxed().shared();
        (Self { fetch, wanted }, tx)
    }

    /// The chunk, when it comes. An `urgent` joiner (one that holds up a reader or a peer)
    /// stops the pull bringing it from yielding to readers.
    pub(super) fn join(&self, urgent: bool, priority: &Priority) -> Fetch {
        if urgent && !self.wanted.swap(true, Ordering::AcqRel) {
            priority.wake();
        }
        self.fetch.clone()
    }
}

/// Chunks a pull registered as in flight and has not delivered yet. However the pull ends,
/// even cancelled (a reader's timeout, a failed batch next to it), they leave the in-flight
/// map and their waiters learn why, so that nobody waits for, or joins, a fetch that is gone.
pub(super) struct Registered<'a> {
    inflight: &'a InFlightMap,
    pub(super) waiters: HashMap<Digest, Waiter>,
}

impl<'a> Registered<'a> {
    pub(super) fn new(inflight: &'a InFlightMap) -> Self {
        Self { inflight, waiters: HashMap::new() }
    }

    /// Fails the undelivered chunks with `reason`; returns them.
    pub(super) fn release(&mut self, reason: Reason) -> Vec<Digest> {
        let mut inflight = lock(self.inflight);
        let mut released = Vec::new();
        for (digest, tx) in self.waiters.drain() {
            inflight.remove(&digest);
            let _ = tx.send(Err(ReadError { digest, reason: reason.clone() }));
            released.push(digest);
        }
        released
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if !self.waiters.is_empty() {
            self.release(Reason::Cancelled);
        }
    }
}
