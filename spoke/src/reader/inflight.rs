//! Chunks on their way: each is fetched once however many wait for it, through one
//! [`SingleFlight`] map per kind of fetch (over the link, or asked of an owner). The pull that
//! asks an origin for a chunk leads its flight; readers, replication and peers' requests that
//! want it meanwhile follow. A flight carries whether someone who must not wait for background
//! work (a reader, a peer) follows it: then the pull leading it does not yield to readers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aqueduct_core::singleflight::{self, Follow, SingleFlight};
use aqueduct_proto::Digest;

use super::{ReadError, Reason};
use crate::priority::Priority;

/// What a flight brings: the chunk's bytes, or why not.
pub(super) type Fetched = Result<Arc<Vec<u8>>, ReadError>;
/// Set when someone who must not wait for background work follows a flight.
pub(super) type Wanted = Arc<AtomicBool>;
/// The chunks in flight, by digest.
pub(super) type Flights = SingleFlight<Digest, Fetched, Wanted>;
/// A chunk's bytes when its flight ends, for everyone who follows it.
pub(super) type Fetch = singleflight::Flight<Fetched>;
/// The pull that fetches a chunk: it delivers it, and holds the flight until it is stored.
pub(super) type Leader = singleflight::Leader<Digest, Fetched, Wanted>;

/// The chunk, when it comes. An `urgent` follower (one that holds up a reader or a peer)
/// stops the pull leading the flight from yielding to readers.
pub(super) fn join(follow: Follow<Fetched, Wanted>, urgent: bool, priority: &Priority) -> Fetch {
    if urgent && !follow.tag.swap(true, Ordering::AcqRel) {
        priority.wake();
    }
    follow.flight
}

/// What followers get when a pull is dropped before it delivered a chunk it leads (a reader's
/// timeout, a failed batch next to it).
pub(super) fn cancelled(digest: Digest) -> impl FnOnce() -> Fetched + Send + 'static {
    move || Err(ReadError { digest, reason: Reason::Cancelled })
}

/// The chunks a pull leads and has not delivered yet. However the pull ends, even cancelled,
/// they leave the flight map and their followers learn why, so that nobody waits for, or
/// joins, a fetch that is gone: [`Registered::release`] says why, and a pull dropped before
/// that drops its leaders, whose followers get [`cancelled`].
#[derive(Default)]
pub(super) struct Registered {
    pub(super) leaders: HashMap<Digest, Leader>,
}

impl Registered {
    /// Fails the undelivered chunks with `reason`; returns them.
    pub(super) fn release(&mut self, reason: Reason) -> Vec<Digest> {
        let mut released = Vec::new();
        for (digest, mut leader) in self.leaders.drain() {
            leader.deliver(Err(ReadError { digest, reason: reason.clone() }));
            released.push(digest);
        }
        released
    }
}
