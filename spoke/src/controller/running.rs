//! The versions this spoke replicates now, side by side. Each runs as a future of the
//! controller's session, so that a version assigned while another replicates starts at once
//! instead of after it: when several replicate, the budget orders their chunks by class (an
//! urgent version's first; see `aqueduct_core::budget`), not the order they were assigned in.
//! A version the hub no longer assigns stops ([`Running::keep_only`]); what it stored stays, and
//! a replication resumes from the store.

use std::collections::{HashMap, HashSet};

use aqueduct_core::budget::Budget;
use aqueduct_proto::ReplicationMode;
use aqueduct_proto::hub::v1 as pb;
use futures::future::{AbortHandle, Abortable, BoxFuture};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use super::plan::VersionKey;
use crate::replicate::{Outcome, ReplicationError, Replicator};

/// A replication that ended.
pub struct Done {
    pub assignment: pb::Assignment,
    pub mode: ReplicationMode,
    /// The region's membership when it started (what its Ready holds for).
    pub membership: String,
    pub result: Result<Outcome, ReplicationError>,
}

/// Replications under way, borrowed from the session that runs them.
#[derive(Default)]
pub struct Running<'a> {
    tasks: FuturesUnordered<BoxFuture<'a, Option<Done>>>,
    handles: HashMap<VersionKey, AbortHandle>,
}

impl<'a> Running<'a> {
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    pub fn contains(&self, key: &VersionKey) -> bool {
        self.handles.contains_key(key)
    }

    /// Starts replicating `assignment` (unless it already replicates).
    pub fn start(
        &mut self,
        replicator: &'a Replicator,
        budget: &'a Budget,
        assignment: pb::Assignment,
        mode: ReplicationMode,
        replicas: usize,
        membership: String,
    ) {
        let key = VersionKey::of(&assignment);
        if self.contains(&key) {
            return;
        }
        let (handle, registration) = AbortHandle::new_pair();
        let work = async move {
            let result = replicator.replicate(&assignment, budget, mode, replicas).await;
            Done { assignment, mode, membership, result }
        };
        self.tasks.push(Abortable::new(work, registration).map(Result::ok).boxed());
        self.handles.insert(key, handle);
    }

    /// Stops the replications of versions not in `assigned`.
    pub fn keep_only(&mut self, assigned: &HashSet<VersionKey>) {
        self.handles.retain(|key, handle| {
            let keep = assigned.contains(key);
            if !keep {
                handle.abort();
            }
            keep
        });
    }

    /// The next replication that ends (pending while none runs).
    pub async fn next(&mut self) -> Option<Done> {
        loop {
            match self.tasks.next().await {
                Some(Some(done)) => {
                    self.handles.remove(&VersionKey::of(&done.assignment));
                    return Some(done);
                }
                // Stopped: its handle went with `keep_only`.
                Some(None) => continue,
                None => return None,
            }
        }
    }
}
