//! When the spoke asks again after a failure: one policy for every retry it makes.
//!
//! Three things are retried, each with its [`Backoff`]: reconnecting to the hub
//! ([`Backoff::HUB`]), a version whose replication failed ([`Backoff::FAILED_VERSION`]), and a
//! hub or peer that answered RESOURCE_EXHAUSTED because it serves as many fetch streams as it
//! allows ([`Backoff::BUSY`], and [`ask_busy_again`] for how long). Each wait doubles from the
//! policy's first up to its bound, and is shortened by a random part of itself (jitter), so
//! that the spokes of a region that lost the hub at the same moment (a hub restart) do not all
//! come back on the same tick. [`Retry`] counts the failures in a row under one policy.

use std::time::Duration;

/// Waits that double from `first` up to `max`, each shortened by up to `jitter` of itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// No wait is longer.
    pub max: Duration,
    /// The most of a wait that jitter takes off (0: none, 0.5: up to half).
    pub jitter: f64,
}

impl Backoff {
    /// Reconnecting to the hub (the watch broke, or the hub could not be reached).
    pub const HUB: Backoff = Backoff { first: Duration::from_millis(500), max: Duration::from_secs(30), jitter: 0.5 };
    /// Replicating a version again after it failed (unless the hub's assignments change first).
    pub const FAILED_VERSION: Backoff =
        Backoff { first: Duration::from_secs(30), max: Duration::from_secs(300), jitter: 0.5 };
    /// Asking again a hub or a peer that is busy (RESOURCE_EXHAUSTED).
    pub const BUSY: Backoff = Backoff { first: Duration::from_millis(200), max: Duration::from_secs(5), jitter: 0.25 };

    /// The wait after `failures + 1` failures in a row, before jitter: `first` doubled
    /// `failures` times, at most `max`.
    pub fn base(&self, failures: u32) -> Duration {
        self.first.saturating_mul(1u32 << failures.min(16)).min(self.max)
    }

    /// [`Backoff::base`] shortened by `unit × jitter` of itself; `unit` is in `[0, 1)` (a random
    /// draw; values outside are clamped).
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let base = self.base(failures);
        let cut = (unit.clamp(0.0, 1.0) * self.jitter.clamp(0.0, 1.0)).min(1.0);
        base.saturating_sub(base.mul_f64(cut))
    }
}

/// Failures in a row under one [`Backoff`], and the wait before the next attempt.
#[derive(Clone, Debug)]
pub struct Retry {
    policy: Backoff,
    failures: u32,
}

impl Retry {
    pub fn new(policy: Backoff) -> Self {
        Self { policy, failures: 0 }
    }

    /// Counts a failure; returns how long to wait before trying again (jittered at random).
    pub fn failed(&mut self) -> Duration {
        self.failed_within(self.policy.max)
    }

    /// As [`Retry::failed`], with waits of at most `cap` (before jitter).
    pub fn failed_within(&mut self, cap: Duration) -> Duration {
        let policy = Backoff { max: self.policy.max.min(cap), ..self.policy };
        let wait = policy.delay(self.failures, fastrand::f64());
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// An attempt succeeded: the next failure waits the first wait again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures counted since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Which kind of server answered busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Hub,
    Peer,
}

/// Whether to ask a busy `server` again, having waited `waited` since the first ask. The hub:
/// always (nothing else has the chunks; a reader's own deadline bounds its wait, and
/// background work does not fail a version for it). A peer: only for background work, and
/// for at most `patience`; a reader (`urgent`) asks the chunk's next owner at once.
pub fn ask_busy_again(server: Server, urgent: bool, waited: Duration, patience: Duration) -> bool {
    match server {
        Server::Hub => true,
        Server::Peer => !urgent && waited < patience,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn waits_double_from_the_first_up_to_the_bound_without_overflow() {
        let busy: Vec<u64> = (0..8).map(|n| Backoff::BUSY.base(n).as_millis() as u64).collect();
        assert_eq!(busy, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        let hub: Vec<u64> = (0..8).map(|n| Backoff::HUB.base(n).as_millis() as u64).collect();
        assert_eq!(hub, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        let failed: Vec<u64> = (0..5).map(|n| Backoff::FAILED_VERSION.base(n).as_secs()).collect();
        assert_eq!(failed, [30, 60, 120, 240, 300]);
        for policy in [Backoff::HUB, Backoff::FAILED_VERSION, Backoff::BUSY] {
            assert_eq!(policy.base(u32::MAX), policy.max, "no overflow however long it waits");
            assert_eq!(policy.delay(u32::MAX, 0.0), policy.max);
        }
    }

    #[test]
    fn jitter_shortens_a_wait_by_at_most_its_share_and_never_lengthens_it() {
        for policy in [Backoff::HUB, Backoff::FAILED_VERSION, Backoff::BUSY] {
            for n in 0..10 {
                let base = policy.base(n);
                assert_eq!(policy.delay(n, 0.0), base, "no draw, no jitter");
                let shortest = base.saturating_sub(base.mul_f64(policy.jitter));
                assert_eq!(policy.delay(n, 1.0), shortest);
                // Out-of-range draws are clamped, never a longer wait or an underflow.
                assert_eq!(policy.delay(n, 7.0), shortest);
                assert_eq!(policy.delay(n, -1.0), base);
                for unit in [0.1, 0.5, 0.9, 0.999] {
                    let d = policy.delay(n, unit);
                    assert!(shortest <= d && d <= base, "{policy:?} {n} {unit}: {d:?}");
                }
            }
        }
        assert_eq!(Backoff::HUB.delay(0, 0.5), MS(375));
        assert_eq!(Backoff::BUSY.delay(0, 1.0), MS(150), "busy waits lose up to a quarter");
    }

    /// The random draws spread the spokes of a region: many first waits after a hub restart
    /// are not all the same, and all are within the jitter's range.
    #[test]
    fn spokes_that_lost_the_hub_together_come_back_spread_out() {
        let waits: Vec<Duration> = (0..200).map(|_| Retry::new(Backoff::HUB).failed()).collect();
        assert!(waits.iter().all(|w| (MS(250)..=MS(500)).contains(w)), "{waits:?}");
        let distinct: std::collections::HashSet<Duration> = waits.iter().copied().collect();
        assert!(distinct.len() > 100, "only {} distinct waits of 200", distinct.len());
        let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        println!("200 first reconnect waits: {min:?} to {max:?}, {} distinct", distinct.len());
        assert!(*max - *min >= MS(100), "the waits bunch together: {min:?}..{max:?}");
    }

    #[test]
    fn a_retry_grows_with_failures_and_a_reset_starts_it_over() {
        let mut retry = Retry::new(Backoff::HUB);
        let waits: Vec<Duration> = (0..8).map(|_| retry.failed()).collect();
        assert_eq!(retry.failures(), 8);
        for (n, w) in waits.iter().enumerate() {
            let base = Backoff::HUB.base(n as u32);
            assert!(base / 2 <= *w && *w <= base, "wait {n}: {w:?} not within half of {base:?}");
        }
        assert!(waits[7] > waits[0] * 10, "{waits:?}");
        retry.reset();
        assert_eq!(retry.failures(), 0);
        assert!(retry.failed() <= MS(500), "after a reset the first wait is the first again");
        // A cap bounds the wait (and still jitters it), and counts as a failure.
        let mut retry = Retry::new(Backoff::HUB);
        for _ in 0..10 {
            retry.failed();
        }
        let capped = retry.failed_within(Duration::from_secs(4));
        assert!((Duration::from_secs(2)..=Duration::from_secs(4)).contains(&capped), "{capped:?}");
        assert_eq!(retry.failures(), 11);
    }

    #[test]
    fn a_busy_hub_is_asked_again_a_busy_peer_only_by_background_work_for_a_while() {
        let patience = Duration::from_secs(60);
        for waited in [Duration::ZERO, Duration::from_secs(3600)] {
            assert!(ask_busy_again(Server::Hub, true, waited, patience));
            assert!(ask_busy_again(Server::Hub, false, waited, patience));
            assert!(!ask_busy_again(Server::Peer, true, waited, patience), "a reader asks the next owner");
        }
        assert!(ask_busy_again(Server::Peer, false, Duration::from_secs(59), patience));
        assert!(!ask_busy_again(Server::Peer, false, patience, patience), "background work gives up on a peer");
    }
}
