//! A link budget: bytes per second, shared by every stream that crosses one link, and the order
//! in which those streams draw from it.
//!
//! The hub holds one per region (its relay waits on it before sending a chunk) and each spoke
//! one of its own (its background fetches wait on it after receiving one), so that a region
//! stays within its budget from both ends. The rate can change while streams use it
//! ([`Budget::set_rate`], `aq region set`): each stream's next chunk waits under the new rate.
//!
//! Every take names its [`Lane`]: a pod's read that missed (foreground) first, then the
//! rollouts' classes, urgent, normal, background. All lanes draw from the one limiter, so the
//! class orders who draws, never how much passes: a take waits until no take of a higher lane
//! waits and every earlier take of its own lane is served (strict priority between lanes, first
//! come first served within one), then for the limiter. A higher take that arrives while a
//! lower one waits for the limiter goes first; a piece already granted is not taken back. The
//! decision is [`turn`] over a [`Queue`], pure but for the limiter's clock, which the property
//! test drives with a fake one.
//!
//! Cells are KiB; the burst is a tenth of a second, and at least one whole chunk (2 MiB). A
//! take of more than a burst is granted in pieces of at most a burst, each ordered anew.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aqueduct_proto::domain::class::Class;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::Notify;

/// The largest burst a budget allows at any rate, in KiB: one whole chunk of the largest size.
const MIN_BURST_KIB: u32 = 2048;

/// Who draws from a budget, highest first: a pod's read that missed, then the rollouts'
/// classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// A pod waits for it (a read that missed the region's cache).
    Foreground,
    Urgent,
    Normal,
    Background,
}

impl Lane {
    pub const ALL: [Lane; 4] = [Lane::Foreground, Lane::Urgent, Lane::Normal, Lane::Background];

    /// As metrics and logs name it.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Foreground => "foreground",
            Lane::Urgent => "urgent",
            Lane::Normal => "normal",
            Lane::Background => "background",
        }
    }
}

impl From<Class> for Lane {
    fn from(class: Class) -> Self {
        match class {
            Class::Urgent => Lane::Urgent,
            Class::Normal => Lane::Normal,
            Class::Background => Lane::Background,
        }
    }
}

/// A limiter on any clock (the real one in [`Budget`], a fake one in tests).
pub type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A waiting take's place: its lane, then when it came.
pub type Ticket = (Lane, u64);

/// The takes waiting on one budget, in the order they are served.
#[derive(Debug, Default)]
pub struct Queue {
    next: u64,
    waiting: BTreeSet<Ticket>,
}

impl Queue {
    /// A take of `lane` starts waiting.
    pub fn join(&mut self, lane: Lane) -> Ticket {
        self.next += 1;
        let ticket = (lane, self.next);
        self.waiting.insert(ticket);
        ticket
    }

    /// A take is served (or gave up).
    pub fn leave(&mut self, ticket: Ticket) {
        self.waiting.remove(&ticket);
    }

    /// The take served next: the highest lane's earliest.
    pub fn head(&self) -> Option<Ticket> {
        self.waiting.first().copied()
    }

    /// Takes waiting in each lane (in [`Lane::ALL`]'s order).
    pub fn waiting(&self) -> [usize; 4] {
        let mut n = [0; 4];
        for (lane, _) in &self.waiting {
            n[*lane as usize] += 1;
        }
        n
    }
}

/// What a waiting take does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Its piece passes now (the limiter counted it).
    Granted,
    /// It is next, and the limiter has room for its piece after this long.
    Wait(Duration),
    /// Another take goes first: wait until the queue changes.
    NotYours,
}

/// Whether `me`'s next piece of `kib` KiB may pass: only the queue's head draws, and only what
/// the limiter allows now.
pub fn turn<C: Clock>(queue: &Queue, limiter: &Limiter<C>, me: Ticket, kib: NonZeroU32) -> Turn {
    if queue.head() != Some(me) {
        return Turn::NotYours;
    }
    match limiter.check_n(kib) {
        Ok(Ok(())) => Turn::Granted,
        Ok(Err(until)) => Turn::Wait(until.wait_time_from(limiter.clock().now())),
        // Pieces are at most a burst: cannot happen; waiting a tenth of a second is safe.
        Err(_) => Turn::Wait(Duration::from_millis(100)),
    }
}

/// The quota of `rate_bytes`, in KiB cells.
pub fn quota(rate_bytes: u64) -> Quota {
    let kib = u32::try_from((rate_bytes / 1024).max(1)).unwrap_or(u32::MAX);
    Quota::per_second(NonZeroU32::new(kib).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new((kib / 10).max(MIN_BURST_KIB)).unwrap_or(NonZeroU32::MIN))
}

/// The largest piece one turn grants, in KiB.
pub const PIECE_KIB: u32 = MIN_BURST_KIB;

struct State {
    rate: u64,
    limiter: Arc<Limiter<DefaultClock>>,
    queue: Queue,
}

pub struct Budget {
    state: Mutex<State>,
    /// The queue or the rate changed: waiting takes look again.
    changed: Notify,
}

fn limiter(rate_bytes: u64) -> Arc<Limiter<DefaultClock>> {
    Arc::new(RateLimiter::direct(quota(rate_bytes)))
}

/// Leaves the queue when a take ends, served or cancelled (a stream that went away).
struct Leave<'a> {
    budget: &'a Budget,
    ticket: Ticket,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.budget.lock().queue.leave(self.ticket);
        self.budget.changed.notify_waiters();
    }
}

impl Budget {
    pub fn new(rate_bytes: u64) -> Self {
        Self {
            state: Mutex::new(State { rate: rate_bytes, limiter: limiter(rate_bytes), queue: Queue::default() }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.lock().rate
    }

    /// Takes waiting now in each lane (in [`Lane::ALL`]'s order).
    pub fn waiting(&self) -> [usize; 4] {
        self.lock().queue.waiting()
    }

    /// Uses `rate_bytes` from the next chunk on (a new rate starts with a full burst);
    /// returns whether the rate changed.
    pub fn set_rate(&self, rate_bytes: u64) -> bool {
        let changed = {
            let mut state = self.lock();
            let changed = state.rate != rate_bytes;
            if changed {
                state.rate = rate_bytes;
                state.limiter = limiter(rate_bytes);
            }
            changed
        };
        if changed {
            self.changed.notify_waiters();
        }
        changed
    }

    /// Waits until `bytes` may pass in the normal lane; more than a burst waits as its parts
    /// would.
    pub async fn take(&self, bytes: usize) {
        self.take_in(Lane::Normal, bytes).await;
    }

    /// Waits until `bytes` may pass in `lane`: after every take of a higher lane that waits
    /// and every earlier one of its own, within the rate. Cancelling it gives up its place.
    pub async fn take_in(&self, lane: Lane, bytes: usize) {
        let mut left = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).max(1);
        let ticket = self.lock().queue.join(lane);
        let _leave = Leave { budget: self, ticket };
        // A higher take that came while the head waits for the limiter goes first.
        self.changed.notify_waiters();
        while left > 0 {
            let piece = NonZeroU32::new(left.min(PIECE_KIB)).unwrap_or(NonZeroU32::MIN);
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let turn = {
                let state = self.lock();
                turn(&state.queue, &state.limiter, ticket, piece)
            };
            match turn {
                Turn::Granted => left -= piece.get(),
                Turn::Wait(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut changed => {}
                    }
                }
                Turn::NotYours => changed.await,
            }
        }
    }
}

#[cfg(test)]
mod tests;
