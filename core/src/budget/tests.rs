use std::collections::HashMap;
use std::time::Duration;

use aqueduct_testkit::fuzz;
use governor::clock::FakeRelativeClock;
use proptest::prelude::*;

use super::*;

#[test]
fn a_new_rate_replaces_the_limiter_only_when_it_changes() {
    let budget = Budget::new(1 << 20);
    let before = budget.lock().limiter.clone();
    assert!(!budget.set_rate(1 << 20), "the same rate keeps the limiter (and what it counted)");
    assert!(Arc::ptr_eq(&before, &budget.lock().limiter));
    assert!(budget.set_rate(4 << 20));
    assert_eq!(budget.rate(), 4 << 20);
    assert!(!Arc::ptr_eq(&before, &budget.lock().limiter));
}

#[test]
fn the_queue_serves_the_highest_lane_first_and_each_lane_in_order() {
    let mut q = Queue::default();
    let b1 = q.join(Lane::Background);
    let n1 = q.join(Lane::Normal);
    let b2 = q.join(Lane::Background);
    let u1 = q.join(Lane::Urgent);
    let f1 = q.join(Lane::Foreground);
    let u2 = q.join(Lane::Urgent);
    assert_eq!(q.waiting(), [1, 2, 1, 2]);
    let mut order = Vec::new();
    while let Some(head) = q.head() {
        order.push(head);
        q.leave(head);
    }
    assert_eq!(order, [f1, u1, u2, n1, b1, b2]);
}

#[test]
fn only_the_head_draws_from_the_limiter() {
    let clock = FakeRelativeClock::default();
    let limiter: Limiter<_> = RateLimiter::direct_with_clock(quota(1 << 20), clock.clone());
    let mut q = Queue::default();
    let background = q.join(Lane::Background);
    let urgent = q.join(Lane::Urgent);
    let piece = NonZeroU32::new(PIECE_KIB).unwrap();
    assert_eq!(turn(&q, &limiter, background, piece), Turn::NotYours);
    assert_eq!(turn(&q, &limiter, urgent, piece), Turn::Granted, "a full burst at the start");
    // The burst is spent: the head waits for the limiter, the others for the head.
    assert!(matches!(turn(&q, &limiter, urgent, piece), Turn::Wait(d) if d > Duration::ZERO));
    assert_eq!(turn(&q, &limiter, background, piece), Turn::NotYours);
    q.leave(urgent);
    clock.advance(Duration::from_secs(2));
    assert_eq!(turn(&q, &limiter, background, piece), Turn::Granted);
}

/// One piece granted in the simulation: when, to whom, how much (KiB).
#[derive(Debug)]
struct Grant {
    at: Duration,
    ticket: Ticket,
    kib: u32,
}

/// Runs takes of `(arrival ms, lane, KiB)` against a budget of `rate` bytes per second, on a
/// fake clock, with the decision the real take uses ([`turn`]), and checks at every grant that
/// it goes where a reference model says: the highest lane waiting, and in it the earliest.
fn simulate(rate: u64, mut arrivals: Vec<(u64, Lane, u32)>) -> Vec<Grant> {
    arrivals.sort_by_key(|a| a.0);
    let clock = FakeRelativeClock::default();
    let limiter: Limiter<_> = RateLimiter::direct_with_clock(quota(rate), clock.clone());
    let mut queue = Queue::default();
    // The reference: every take that arrived and is not served, in arrival order.
    let mut model: Vec<(Ticket, Lane, u32)> = Vec::new();
    let mut left: HashMap<Ticket, u32> = HashMap::new();
    let (mut now, mut next) = (Duration::ZERO, 0);
    let mut grants = Vec::new();
    loop {
        while next < arrivals.len() && Duration::from_millis(arrivals[next].0) <= now {
            let (_, lane, kib) = arrivals[next];
            let ticket = queue.join(lane);
            model.push((ticket, lane, kib));
            left.insert(ticket, kib);
            next += 1;
        }
        let next_arrival = arrivals.get(next).map(|a| Duration::from_millis(a.0));
        let Some(head) = queue.head() else {
            match next_arrival {
                Some(at) => {
                    clock.advance(at - now);
                    now = at;
                    continue;
                }
                None => break,
            }
        };
        let piece = NonZeroU32::new(left[&head].min(PIECE_KIB)).unwrap();
        for (other, _, _) in &model {
            if *other != head {
                assert_eq!(
                    turn(&queue, &limiter, *other, piece),
                    Turn::NotYours,
                    "{other:?} drew while {head:?} is next"
                );
            }
        }
        match turn(&queue, &limiter, head, piece) {
            Turn::Granted => {
                let highest = model.iter().map(|m| m.1).min().unwrap();
                let expected = model.iter().find(|m| m.1 == highest).unwrap().0;
                assert_eq!(head, expected, "granted {head:?} while {expected:?} waits (model {model:?})");
                grants.push(Grant { at: now, ticket: head, kib: piece.get() });
                let l = left.get_mut(&head).unwrap();
                *l -= piece.get();
                if *l == 0 {
                    queue.leave(head);
                    model.retain(|m| m.0 != head);
                }
            }
            Turn::Wait(wait) => {
                let wait = wait.max(Duration::from_micros(1));
                let until = next_arrival.map_or(now + wait, |at| at.min(now + wait)).max(now);
                clock.advance(until - now);
                now = until;
            }
            Turn::NotYours => panic!("the head was refused its turn"),
        }
    }
    grants
}

fn lane() -> impl Strategy<Value = Lane> {
    prop_oneof![Just(Lane::Foreground), Just(Lane::Urgent), Just(Lane::Normal), Just(Lane::Background)]
}

proptest! {
    #![proptest_config(fuzz::config(300))]

    /// For any arrival of takes of mixed lanes: a lower lane never draws while a higher one
    /// waits, a lane is served in arrival order, everything asked is granted, and the KiB
    /// granted in any second (counted on the fake clock, from any grant on) never exceed the
    /// rate plus one burst.
    #[test]
    fn fuzz_takes_of_mixed_lanes_are_ordered_and_never_exceed_the_rate(
        rate_kib in 256u64..65_536,
        arrivals in proptest::collection::vec((0u64..4_000, lane(), 1u32..6_000), 1..30),
    ) {
        let rate = rate_kib * 1024;
        let grants = simulate(rate, arrivals.clone());
        let asked: u64 = arrivals.iter().map(|a| u64::from(a.2)).sum();
        prop_assert_eq!(grants.iter().map(|g| u64::from(g.kib)).sum::<u64>(), asked);
        // First come, first served within a lane: a ticket's last piece precedes any piece of a
        // later ticket of its lane.
        let mut last_done: HashMap<Lane, u64> = HashMap::new();
        for g in &grants {
            let done = last_done.entry(g.ticket.0).or_default();
            prop_assert!(g.ticket.1 >= *done, "{:?} drew after a later ticket of its lane", g.ticket);
            *done = g.ticket.1;
        }
        let burst = (rate_kib / 10).max(u64::from(MIN_BURST_KIB));
        let mut end = 0;
        let mut in_window = 0u64;
        for (start, g) in grants.iter().enumerate() {
            while end < grants.len() && grants[end].at < g.at + Duration::from_secs(1) {
                in_window += u64::from(grants[end].kib);
                end += 1;
            }
            prop_assert!(
                in_window <= rate_kib + burst,
                "{in_window} KiB granted in the second from {:?} at {rate_kib} KiB/s (burst {burst})", g.at
            );
            in_window -= u64::from(grants[start].kib);
        }
    }
}

#[tokio::test]
async fn an_urgent_take_goes_before_a_background_one_that_waited_longer() {
    // 2 MiB/s: the first take spends the burst, the next ones wait half a second each.
    let budget = Arc::new(Budget::new(2 << 20));
    budget.take_in(Lane::Background, 2 << 20).await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let start = |lane: Lane| {
        let (budget, done) = (budget.clone(), done.clone());
        tokio::spawn(async move {
            budget.take_in(lane, 1 << 20).await;
            done.lock().unwrap().push(lane);
        })
    };
    let background = start(Lane::Background);
    while budget.waiting()[3] == 0 {
        tokio::task::yield_now().await;
    }
    let urgent = start(Lane::Urgent);
    let (a, b) = tokio::join!(background, urgent);
    a.unwrap();
    b.unwrap();
    assert_eq!(*done.lock().unwrap(), [Lane::Urgent, Lane::Background]);
    assert_eq!(budget.waiting(), [0; 4]);
}

#[tokio::test]
async fn a_cancelled_take_gives_up_its_place() {
    let budget = Arc::new(Budget::new(1 << 20));
    budget.take(2 << 20).await;
    let b = budget.clone();
    let head = tokio::spawn(async move { b.take_in(Lane::Urgent, 8 << 20).await });
    while budget.waiting()[1] == 0 {
        tokio::task::yield_now().await;
    }
    head.abort();
    let _ = head.await;
    assert_eq!(budget.waiting(), [0; 4], "the cancelled take left the queue");
}
