//! One flight per key: concurrent callers that want the same thing (the bytes of one chunk)
//! share one in-flight future instead of each starting their own.
//!
//! [`SingleFlight::run`] is the common case. The first caller for a key starts the work (the
//! future its closure makes); callers that come while it runs get a handle to the same flight
//! and its output, cloned. The work runs as long as some caller still awaits it (or holds its
//! handle): whichever caller polls drives it for all. The key's entry leaves the map however the
//! flight ends: when the work completes (as part of the poll that completes it, so a caller that
//! comes after finds no flight and starts a new one: what the work stored on its way out, a
//! cache entry say, is there to find first), when it panics, and when every caller has given up
//! on it (their handles dropped: the work is dropped with them, cancelled).
//!
//! [`SingleFlight::lead_or_follow`] is for work that is not one future per key: a batch that
//! brings many keys in one request. The first caller for a key becomes its [`Leader`] and
//! delivers the output itself ([`Leader::deliver`]); the others [`Follow`] it. The entry
//! stays until the leader is dropped (after delivering, the flight answers followers at once,
//! so the leader may hold it while it finishes, say, storing what it delivered); a leader
//! dropped without delivering gives its followers the output its caller named for that case.
//! Each flight may carry a tag (`T`) that the leader sets and every follower gets, e.g. a flag
//! by which followers tell the leader that someone urgent waits.
//!
//! The map is behind one mutex, held only to look up, insert and remove entries, never across
//! an await.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::{BoxFuture, Shared, WeakShared};

/// A flight's output, shared: await it (it is `Clone`, and every clone gets the same output).
pub type Flight<V> = Shared<BoxFuture<'static, V>>;

/// The flights under way, by key. Cheap to share: clones see the same flights.
pub struct SingleFlight<K, V, T = ()> {
    flights: Arc<Mutex<HashMap<K, Entry<V, T>>>>,
    next_id: Arc<AtomicU64>,
}

impl<K, V, T> Clone for SingleFlight<K, V, T> {
    fn clone(&self) -> Self {
        Self { flights: self.flights.clone(), next_id: self.next_id.clone() }
    }
}

impl<K, V, T> Default for SingleFlight<K, V, T> {
    fn default() -> Self {
        Self { flights: Arc::default(), next_id: Arc::default() }
    }
}

struct Entry<V, T> {
    /// Tells this flight's entry from a later one of the same key.
    id: u64,
    flight: Handle<V>,
    tag: T,
}

enum Handle<V> {
    /// A [`SingleFlight::run`] flight lives as long as its callers hold it: the map must not
    /// keep it alive, or a flight every caller gave up on would never end.
    Weak(WeakShared<BoxFuture<'static, V>>),
    /// A led flight lives until its leader is dropped, which removes it.
    Strong(Flight<V>),
}

impl<V: Clone> Handle<V> {
    fn get(&self) -> Option<Flight<V>> {
        match self {
            Handle::Weak(weak) => weak.upgrade(),
            Handle::Strong(flight) => Some(flight.clone()),
        }
    }
}

/// Removes a flight's entry when dropped, unless the key has a newer flight by then.
struct Cleanup<K: Hash + Eq, V, T> {
    flights: Arc<Mutex<HashMap<K, Entry<V, T>>>>,
    key: Option<K>,
    id: u64,
}

impl<K: Hash + Eq, V, T> Drop for Cleanup<K, V, T> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let removed = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            if flights.get(&key).is_some_and(|e| e.id == self.id) { flights.remove(&key) } else { None }
        };
        // Dropped outside the lock: the last handle of a flight drops its work, whose own
        // cleanup takes the lock.
        drop(removed);
    }
}

/// A flight someone else leads: its output (when the leader delivers) and the leader's tag.
pub struct Follow<V, T> {
    pub flight: Flight<V>,
    pub tag: T,
}

/// What [`SingleFlight::lead_or_follow`] makes of a caller.
pub enum Role<K: Hash + Eq, V, T> {
    /// The first for its key: it does the work and delivers.
    Lead(Leader<K, V, T>),
    /// Someone leads a flight for this key already: wait for it.
    Follow(Follow<V, T>),
}

/// The one who does a key's work. Deliver with [`Leader::deliver`]; dropping it ends the flight
/// (removes the entry), and gives followers the output named at [`SingleFlight::lead_or_follow`]
/// if it had not delivered.
pub struct Leader<K: Hash + Eq, V, T> {
    sender: Option<oneshot::Sender<V>>,
    _cleanup: Cleanup<K, V, T>,
}

impl<K: Hash + Eq, V, T> Leader<K, V, T> {
    /// Gives every follower (and every later one, until this leader is dropped) `value`.
    pub fn deliver(&mut self, value: V) {
        if let Some(sender) = self.sender.take() {
            // No receiver left means nobody can be waiting: the flight is the only one.
            let _ = sender.send(value);
        }
    }

    /// Whether it delivered.
    pub fn delivered(&self) -> bool {
        self.sender.is_none()
    }
}

impl<K, V, T> SingleFlight<K, V, T>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
{
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Entry<V, T>>> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a flight for `key` is under way. (A flight's entry leaves the map as the flight
    /// ends, so the map is the answer: no handle is taken, whose drop under the lock could be
    /// the flight's last.)
    pub fn contains(&self, key: &K) -> bool {
        self.lock().contains_key(key)
    }

    /// The flight under way for `key`, to follow, if there is one (none is started): for a
    /// caller that would join a flight but not lead one (it looks elsewhere first).
    pub fn follow(&self, key: &K) -> Option<Follow<V, T>> {
        let flights = self.lock();
        let entry = flights.get(key)?;
        let flight = entry.flight.get()?;
        Some(Follow { flight, tag: entry.tag.clone() })
    }

    /// Flights under way.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The output of the flight for `key`: the one under way, or a new one running the future
    /// `work` makes (called only then, under the map's lock: it makes the future and must not
    /// use this map). See the module's comment for when the entry leaves.
    pub fn run<F, Fut>(&self, key: K, work: F) -> Flight<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
        T: Default,
    {
        let mut flights = self.lock();
        if let Some(flight) = flights.get(&key).and_then(|e| e.flight.get()) {
            return flight;
        }
        let work = work();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cleanup = Cleanup { flights: self.flights.clone(), key: Some(key.clone()), id };
        let flight = async move {
            // Dropped when the work completes, panics, or is dropped unfinished.
            let _cleanup = cleanup;
            work.await
        }
        .boxed()
        .shared();
        let handle = match flight.downgrade() {
            Some(weak) => Handle::Weak(weak),
            None => Handle::Strong(flight.clone()),
        };
        flights.insert(key, Entry { id, flight: handle, tag: T::default() });
        flight
    }

    /// Makes the caller the leader of a new flight for `key` (with `tag`), or a follower of
    /// the one under way. `abandoned` is what followers get if the leader is dropped without
    /// delivering.
    pub fn lead_or_follow(&self, key: K, tag: T, abandoned: impl FnOnce() -> V + Send + 'static) -> Role<K, V, T> {
        let mut flights = self.lock();
        if let Some(entry) = flights.get(&key)
            && let Some(flight) = entry.flight.get()
        {
            return Role::Follow(Follow { flight, tag: entry.tag.clone() });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        let flight = receiver.map(|r| r.unwrap_or_else(|_| abandoned())).boxed().shared();
        flights.insert(key.clone(), Entry { id, flight: Handle::Strong(flight), tag });
        Role::Lead(Leader {
            sender: Some(sender),
            _cleanup: Cleanup { flights: self.flights.clone(), key: Some(key), id },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use futures::future::join_all;

    use super::*;

    /// Counts the works started, and whether one was dropped before it completed.
    #[derive(Clone, Default)]
    struct Works {
        started: Arc<AtomicUsize>,
        dropped: Arc<AtomicUsize>,
    }

    struct DropFlag(Arc<AtomicUsize>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Works {
        /// A work that waits for `gate`, then answers `value`.
        fn work(&self, gate: Arc<tokio::sync::Notify>, value: u32) -> impl Future<Output = u32> + Send + 'static {
            self.started.fetch_add(1, Ordering::SeqCst);
            let flag = DropFlag(self.dropped.clone());
            async move {
                gate.notified().await;
                std::mem::forget(flag);
                value
            }
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_flight_and_a_later_one_starts_anew() {
        let flights: SingleFlight<&str, u32> = SingleFlight::new();
        let works = Works::default();
        let gate = Arc::new(tokio::sync::Notify::new());
        let callers: Vec<_> = (0..5).map(|n| flights.run("chunk", || works.work(gate.clone(), n))).collect();
        assert_eq!(works.started.load(Ordering::SeqCst), 1, "a second caller started its own work");
        assert!(flights.contains(&"chunk"));
        let all = tokio::spawn(join_all(callers));
        gate.notify_one();
        assert_eq!(all.await.unwrap(), vec![0; 5], "every caller gets the first caller's output");
        assert!(!flights.contains(&"chunk") && flights.is_empty(), "the entry outlived the flight");
        // Another key, or the same key after the flight: new work.
        let later = flights.run("chunk", || async { 7 });
        assert_eq!(later.await, 7);
        assert_eq!(flights.run("other", || async { 8 }).await, 8);
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn a_flight_every_caller_gave_up_on_is_dropped_and_leaves_the_map() {
        let flights: SingleFlight<u8, u32> = SingleFlight::new();
        let works = Works::default();
        let gate = Arc::new(tokio::sync::Notify::new());
        let a = flights.run(1, || works.work(gate.clone(), 1));
        let b = flights.run(1, || works.work(gate.clone(), 2));
        // Both callers time out (are cancelled) while the work waits.
        let timed_out = tokio::time::timeout(Duration::from_millis(10), join_all([a, b])).await;
        assert!(timed_out.is_err());
        assert_eq!(works.dropped.load(Ordering::SeqCst), 1, "the abandoned work was not dropped");
        assert!(!flights.contains(&1) && flights.lock().is_empty(), "the entry outlived its callers");
        // One caller of two giving up does not end the flight.
        let c = flights.run(1, || works.work(gate.clone(), 3));
        let d = flights.run(1, || works.work(gate.clone(), 4));
        drop(c);
        assert!(flights.contains(&1));
        let d = tokio::spawn(d);
        gate.notify_one();
        assert_eq!(d.await.unwrap(), 3);
        assert_eq!(works.started.load(Ordering::SeqCst), 2);
        assert!(flights.lock().is_empty());
    }

    #[tokio::test]
    async fn a_flight_that_panics_leaves_the_map() {
        let flights: SingleFlight<u8, u32> = SingleFlight::new();
        let flight = flights.run(1, || async { panic!("the work failed") });
        let joined = tokio::spawn(flight).await;
        assert!(joined.unwrap_err().is_panic());
        assert!(flights.lock().is_empty(), "a panicked flight stayed in the map");
        assert_eq!(flights.run(1, || async { 5 }).await, 5);
    }

    #[tokio::test]
    async fn followers_get_what_the_leader_delivers_until_it_lets_go() {
        let flights: SingleFlight<u8, Result<u32, String>, Arc<AtomicUsize>> = SingleFlight::new();
        let urgent = Arc::new(AtomicUsize::new(0));
        let Role::Lead(mut leader) = flights.lead_or_follow(1, urgent.clone(), || Err("dropped".into())) else {
            panic!("the first caller did not lead");
        };
        let Role::Follow(follow) = flights.lead_or_follow(1, Arc::default(), || Err("other".into())) else {
            panic!("the second caller led a flight of its own");
        };
        // The follower reaches the leader through the tag.
        follow.tag.fetch_add(1, Ordering::SeqCst);
        assert_eq!(urgent.load(Ordering::SeqCst), 1);
        let waiting = tokio::spawn(follow.flight);
        leader.deliver(Ok(9));
        assert!(leader.delivered());
        assert_eq!(waiting.await.unwrap(), Ok(9));
        // Delivered but not let go: a late follower is answered at once, with no new flight.
        let Role::Follow(late) = flights.lead_or_follow(1, Arc::default(), || Err("late".into())) else {
            panic!("a caller after the delivery led a new flight");
        };
        assert_eq!(late.flight.await, Ok(9));
        drop(leader);
        assert!(flights.is_empty());
        assert!(matches!(flights.lead_or_follow(1, Arc::default(), || Err("x".into())), Role::Lead(_)));
        assert!(flights.is_empty(), "a dropped leader's entry stayed");
    }

    #[tokio::test]
    async fn a_caller_may_follow_a_flight_without_ever_leading_one() {
        let flights: SingleFlight<u8, u32, Arc<AtomicUsize>> = SingleFlight::new();
        assert!(flights.follow(&1).is_none(), "no flight, and none started");
        assert!(flights.is_empty());
        let tag = Arc::new(AtomicUsize::new(0));
        let Role::Lead(mut leader) = flights.lead_or_follow(1, tag.clone(), || 0) else {
            panic!("the first caller did not lead");
        };
        let follow = flights.follow(&1).expect("the leader's flight");
        follow.tag.fetch_add(1, Ordering::SeqCst);
        assert_eq!(tag.load(Ordering::SeqCst), 1, "the follower reaches the leader's tag");
        leader.deliver(4);
        assert_eq!(follow.flight.await, 4);
        drop(leader);
        assert!(flights.follow(&1).is_none() && flights.is_empty());
        // A `run` flight is followed as long as a caller holds it.
        let held = flights.run(2, || async { 6 });
        assert_eq!(flights.follow(&2).expect("the run flight").flight.await, 6);
        drop(held);
        assert!(flights.follow(&2).is_none());
    }

    #[tokio::test]
    async fn a_leader_dropped_without_delivering_gives_followers_the_abandoned_output() {
        let flights: SingleFlight<u8, Result<u32, String>> = SingleFlight::new();
        let leader = flights.lead_or_follow(1, (), || Err("the fetch was cancelled".into()));
        let Role::Follow(follow) = flights.lead_or_follow(1, (), || Err("other".into())) else {
            panic!("no flight to follow");
        };
        drop(leader);
        assert_eq!(follow.flight.await, Err("the fetch was cancelled".to_string()));
        assert!(flights.is_empty());
    }
}
