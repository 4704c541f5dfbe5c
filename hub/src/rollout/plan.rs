//! Deadlines and plans (issue 19): what a rollout must move over a region's link, when it will
//! have moved it, and when a rollout that falls behind its deadline goes up a class, as pure
//! functions. The admin API (`aq rollout --by`, `--dry-run`, `aq status`) and the hub's
//! deadline watch (`crate::deadlines`) read the rows and apply them.
//!
//! What a region holds, as far as the hub knows: the chunks of the versions that are Ready in
//! it (Ready once, Ready for good) and still assigned to it (a rollout row names them). The
//! hub does not see what else a spoke's cache holds (chunks of a version still on its way, of
//! one cancelled and not yet evicted), and the bytes of two rollouts under way that share
//! chunks are counted in both; so a plan may count bytes the region turns out to hold: it errs
//! late, never early.
//!
//! The queue model, per region. The link carries the region's budget as its schedule says
//! ([`Schedule::finish`]); between classes, strict priority (urgent, then normal, then
//! background: what the budget's classes do); within a class, equal shares. While `k`
//! rollouts of a class run, each gets `1/k` of what the class gets, so a rollout with `r`
//! bytes left has finished once the link has carried: every byte left of the classes above
//! it; for each other rollout `j` of its class, `min(r_j, r)` (a smaller one finishes first,
//! having had its bytes; a larger one has had `r` by then); and its own `r`. The classes below
//! take nothing from it. The model is monotone: more bytes left anywhere never make an ETA
//! earlier, a higher class never makes it later. It leaves out pods' reads (above every class)
//! and takes the link to be kept busy up to its budget: a region that pulls less (a slow spoke,
//! a slow source) finishes later than planned, which its ETA in `aq status` shows as it runs.

use std::collections::{HashMap, HashSet};

use aqueduct_core::schedule::Schedule;
use aqueduct_proto::domain::class::Class;
use aqueduct_proto::{Digest, Phase};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::{RolloutKey, RolloutRecord, VersionId};

/// What the hub keeps of a row's plan beside the row itself.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RowPlan {
    /// The deadline `aq rollout --by` gave, unix ms.
    pub deadline_unix_ms: Option<i64>,
    /// The bytes the plan said must cross the link when the rollout started (0: unknown).
    pub planned_bytes: u64,
    /// When the hub last raised the row's class because it fell behind its deadline.
    pub raised_unix_ms: Option<i64>,
}

/// A version's bytes in a region: each distinct chunk once, the part the region holds, and
/// what must cross the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Crossing {
    pub version_bytes: u64,
    pub held_bytes: u64,
    /// `version_bytes - held_bytes`.
    pub bytes: u64,
}

/// What must cross the link for a version (its distinct chunks with their lengths), given the
/// chunks the region holds.
pub fn crossing(chunks: &[(Digest, u32)], held: &HashSet<Digest>) -> Crossing {
    let mut c = Crossing::default();
    for (digest, len) in chunks {
        let len = u64::from(*len);
        c.version_bytes += len;
        if held.contains(digest) {
            c.held_bytes += len;
        }
    }
    c.bytes = c.version_bytes - c.held_bytes;
    c
}

/// The versions whose chunks `region` holds, as far as the hub knows: those Ready in it and
/// still assigned to it.
pub fn held_versions(rows: &[RolloutRecord], region: &str) -> Vec<VersionId> {
    let mut held: Vec<VersionId> = rows
        .iter()
        .filter(|r| r.region == region && r.ready_unix_ms.is_some())
        .map(|r| VersionId::new(r.dataset.clone(), r.version))
        .collect();
    held.sort();
    held.dedup();
    held
}

/// A row on its way: it takes the link until it is Ready (or failed).
pub fn under_way(row: &RolloutRecord) -> bool {
    row.ready_unix_ms.is_none() && row.phase != Phase::Failed && row.phase != Phase::Ready
}

/// The bytes a row under way has left to move over the link: what the region lacks of the
/// version (its size less what it holds), and at most what the plan said less what the hub
/// relayed since. 0 for a row not under way.
pub fn remaining(row: &RolloutRecord, plan: Option<&RowPlan>) -> u64 {
    if !under_way(row) {
        return 0;
    }
    let lacking = row.total_bytes.saturating_sub(row.cached_bytes);
    match plan.map(|p| p.planned_bytes) {
        Some(planned) if planned > 0 => lacking.min(planned.saturating_sub(row.relayed_bytes)),
        _ => lacking,
    }
}

/// A rollout in a region's queue: its class and its bytes left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    pub key: RolloutKey,
    pub class: Class,
    pub remaining: u64,
}

/// The bytes the link must carry before `me` (one of `queue`, or a rollout about to join it)
/// has finished, its own included (see the module's queue model).
pub fn bytes_until_done(queue: &[Queued], me: &Queued) -> u64 {
    let mut total = me.remaining;
    for other in queue.iter().filter(|q| q.key != me.key) {
        let share = match other.class.cmp(&me.class) {
            std::cmp::Ordering::Greater => other.remaining,
            std::cmp::Ordering::Equal => other.remaining.min(me.remaining),
            std::cmp::Ordering::Less => 0,
        };
        total = total.saturating_add(share);
    }
    total
}

/// When `bytes` will have crossed a region's link from `now`, under its schedule; `None`: not
/// within the planning horizon ([`Schedule::finish`]).
pub fn eta(bytes: u64, now: Timestamp, schedule: &Schedule, zone: &TimeZone) -> Option<Timestamp> {
    schedule.finish(bytes, now, zone)
}

/// Each region's queue: its rows under way, each with its class and bytes left.
pub fn queues(rows: &[RolloutRecord], plans: &HashMap<RolloutKey, RowPlan>) -> HashMap<String, Vec<Queued>> {
    let mut queues: HashMap<String, Vec<Queued>> = HashMap::new();
    for row in rows.iter().filter(|r| under_way(r)) {
        let key = row.key();
        let remaining = remaining(row, plans.get(&key));
        queues.entry(row.region.clone()).or_default().push(Queued { key, class: row.class, remaining });
    }
    queues
}

/// The ETA of every row under way (`None` inside: not within the planning horizon), from the
/// rows of every region (a region's other rollouts go ahead or share), under each region's
/// schedule (a region without one is left out).
pub fn etas(
    rows: &[RolloutRecord],
    plans: &HashMap<RolloutKey, RowPlan>,
    schedules: &HashMap<String, (Schedule, TimeZone)>,
    now: Timestamp,
) -> HashMap<RolloutKey, Option<Timestamp>> {
    let mut etas = HashMap::new();
    for (region, queue) in queues(rows, plans) {
        let Some((schedule, zone)) = schedules.get(&region) else { continue };
        for me in &queue {
            etas.insert(me.key.clone(), eta(bytes_until_done(&queue, me), now, schedule, zone));
        }
    }
    etas
}

/// How an ETA stands against a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Done by the deadline, with this many ms to spare.
    Meets { spare_ms: i64 },
    /// Done this many ms after it.
    Misses { by_ms: i64 },
    /// Not within the planning horizon: it misses.
    Never,
}

impl Verdict {
    pub fn of(eta: Option<Timestamp>, deadline_unix_ms: i64) -> Self {
        match eta.map(|t| t.as_millisecond()) {
            None => Verdict::Never,
            Some(eta) if eta <= deadline_unix_ms => Verdict::Meets { spare_ms: deadline_unix_ms - eta },
            Some(eta) => Verdict::Misses { by_ms: eta - deadline_unix_ms },
        }
    }

    pub fn meets(self) -> bool {
        matches!(self, Verdict::Meets { .. })
    }
}

/// The class a row under way takes now, if it changes: one step up (background, normal,
/// urgent) when it has a deadline and its ETA passed it (or is beyond the planning horizon);
/// `None` otherwise, and for an urgent row (there is nothing above). Asked again at each look
/// of the deadline watch, so that a row still behind after a raise goes up again.
pub fn raise(class: Class, eta: Option<Timestamp>, deadline_unix_ms: Option<i64>) -> Option<Class> {
    let deadline = deadline_unix_ms?;
    (class != Class::Urgent && !Verdict::of(eta, deadline).meets()).then(|| class.raised())
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::super::tests::row;
    use super::*;

    const MIB: u64 = 1 << 20;

    fn digest(n: u8) -> Digest {
        Digest([n; 32])
    }

    /// The bytes to cross are the version's distinct chunks the region does not hold.
    #[test]
    fn what_crosses_is_what_the_region_lacks() {
        let chunks = [(digest(1), 100), (digest(2), 50), (digest(3), 25)];
        let none = HashSet::new();
        assert_eq!(crossing(&chunks, &none), Crossing { version_bytes: 175, held_bytes: 0, bytes: 175 });
        let held: HashSet<Digest> = [digest(2), digest(9)].into();
        assert_eq!(crossing(&chunks, &held), Crossing { version_bytes: 175, held_bytes: 50, bytes: 125 });
        let all: HashSet<Digest> = chunks.iter().map(|(d, _)| *d).collect();
        assert_eq!(crossing(&chunks, &all).bytes, 0);
    }

    /// A region holds the versions Ready in it (once Ready, whatever its phase now); not
    /// those on their way, failed, or of another region.
    #[test]
    fn a_region_holds_the_versions_ready_in_it() {
        let mut moved_on = row("m", 3, "eu", Phase::Transferring);
        moved_on.ready_unix_ms = Some(5);
        let rows = [
            row("m", 1, "eu", Phase::Ready),
            row("m", 2, "eu", Phase::Transferring),
            moved_on,
            row("m", 4, "eu", Phase::Failed),
            row("x", 1, "us", Phase::Ready),
        ];
        assert_eq!(held_versions(&rows, "eu"), [VersionId::new("m", 1), VersionId::new("m", 3)]);
        assert!(held_versions(&rows, "ap").is_empty());
    }

    /// Bytes left: what the region lacks, and no more than the plan less what was relayed.
    #[test]
    fn bytes_left_follow_the_reports_and_the_relay() {
        let mut r = row("m", 1, "eu", Phase::Transferring);
        r.total_bytes = 1000;
        r.cached_bytes = 300;
        assert_eq!(remaining(&r, None), 700);
        let plan = RowPlan { planned_bytes: 400, ..Default::default() };
        assert_eq!(remaining(&r, Some(&plan)), 400, "the region held 600 of it: only 400 cross");
        r.relayed_bytes = 350;
        assert_eq!(remaining(&r, Some(&plan)), 50);
        r.relayed_bytes = 900;
        assert_eq!(remaining(&r, Some(&plan)), 0, "refetched bytes never make it negative");
        for phase in [Phase::Ready, Phase::Failed] {
            assert_eq!(remaining(&row("m", 1, "eu", phase), None), 0, "{phase}");
        }
    }

    fn q(name: &str, class: Class, remaining: u64) -> Queued {
        Queued { key: RolloutKey::new(name, 1, "eu"), class, remaining }
    }

    use Class::{Background, Normal, Urgent};

    /// Higher classes go first, the same class shares, lower classes wait.
    #[test]
    fn a_rollout_waits_for_higher_classes_and_shares_with_its_own() {
        let queue =
            [q("urgent", Urgent, 100), q("small", Normal, 10), q("big", Normal, 500), q("bg", Background, 1000)];
        let me = q("me", Normal, 50);
        // 100 urgent + 10 (small finishes first) + 50 of big's share + 50 own.
        assert_eq!(bytes_until_done(&queue, &me), 210);
        assert_eq!(bytes_until_done(&queue, &queue[0]), 100, "urgent waits for no one");
        assert_eq!(bytes_until_done(&queue, &queue[3]), 1610, "background waits for all");
        // A row in the queue is not counted twice.
        assert_eq!(bytes_until_done(&queue, &queue[1]), 100 + 10 + 10);
    }

    /// At 1 MiB/s from noon: a rollout alone, then one with an urgent one ahead of it.
    #[test]
    fn etas_follow_the_schedule_and_the_queue() {
        let now: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let mut a = row("a", 1, "eu", Phase::Transferring);
        a.total_bytes = 60 * MIB;
        let mut b = row("b", 1, "eu", Phase::Pending);
        b.total_bytes = 120 * MIB;
        let schedules: HashMap<String, (Schedule, TimeZone)> =
            [("eu".to_string(), (Schedule::flat(MIB), TimeZone::UTC))].into();
        let rows = [a.clone(), b.clone(), row("c", 1, "eu", Phase::Ready)];
        let plans = HashMap::new();
        let same = etas(&rows, &plans, &schedules, now);
        assert_eq!(same.len(), 2, "only rows under way have an ETA: {same:?}");
        // Equal shares: a has 60 MiB when b has had 60 too; b then runs alone.
        assert_eq!(same[&a.key()], Some("2026-11-30T12:02:00Z".parse().unwrap()));
        assert_eq!(same[&b.key()], Some("2026-11-30T12:03:00Z".parse().unwrap()));
        // b urgent: b first, a after it.
        let mut rows = rows;
        rows[1].class = Urgent;
        let urgent_b = etas(&rows, &plans, &schedules, now);
        assert_eq!(urgent_b[&b.key()], Some("2026-11-30T12:02:00Z".parse().unwrap()));
        assert_eq!(urgent_b[&a.key()], Some("2026-11-30T12:03:00Z".parse().unwrap()));
        // A region without a known schedule has no ETA.
        assert!(etas(&rows, &plans, &HashMap::new(), now).is_empty());
    }

    #[test]
    fn a_verdict_says_by_how_much() {
        let t = |ms| Some(Timestamp::from_millisecond(ms).unwrap());
        assert_eq!(Verdict::of(t(1_000), 5_000), Verdict::Meets { spare_ms: 4_000 });
        assert_eq!(Verdict::of(t(5_000), 5_000), Verdict::Meets { spare_ms: 0 });
        assert_eq!(Verdict::of(t(9_000), 5_000), Verdict::Misses { by_ms: 4_000 });
        assert_eq!(Verdict::of(None, 5_000), Verdict::Never);
        assert!(!Verdict::Never.meets());
    }

    /// A row goes up a step when its ETA passed its deadline, never without a deadline or
    /// past urgent.
    #[test]
    fn a_row_behind_its_deadline_goes_up_a_class() {
        let t = |ms| Some(Timestamp::from_millisecond(ms).unwrap());
        assert_eq!(raise(Background, t(6_000), Some(5_000)), Some(Normal));
        assert_eq!(raise(Normal, t(6_000), Some(5_000)), Some(Urgent));
        assert_eq!(raise(Urgent, t(6_000), Some(5_000)), None, "nothing above urgent");
        assert_eq!(raise(Background, t(5_000), Some(5_000)), None, "on time");
        assert_eq!(raise(Background, None, Some(5_000)), Some(Normal), "beyond the horizon is behind");
        assert_eq!(raise(Background, t(9_000), None), None, "no deadline, no raise");
    }

    fn queue() -> impl Strategy<Value = Vec<Queued>> {
        proptest::collection::vec((0usize..3, 0u64..1 << 40), 1..8).prop_map(|items| {
            items.into_iter().enumerate().map(|(i, (c, r))| q(&format!("r{i}"), Class::ALL[c], r)).collect()
        })
    }

    proptest! {
        #![proptest_config(fuzz::config(500))]

        /// The model is monotone: more bytes left for anyone never make a rollout's ETA
        /// earlier; a higher class never makes it later (for another: never earlier); and it
        /// is never less than its own bytes nor more than the whole queue's.
        #[test]
        fn fuzz_the_queue_model_is_monotone(queue in queue(), who in 0usize..8, other in 0usize..8, more in 0u64..1 << 40) {
            let me = queue[who % queue.len()].clone();
            let before = bytes_until_done(&queue, &me);
            let total: u64 = queue.iter().map(|q| q.remaining).sum();
            prop_assert!(before >= me.remaining && before <= total);
            // More bytes for someone (me included).
            let mut grown = queue.clone();
            let j = other % grown.len();
            grown[j].remaining += more;
            let me_after = grown.iter().find(|q| q.key == me.key).unwrap().clone();
            prop_assert!(bytes_until_done(&grown, &me_after) >= before);
            // A class up for me.
            if me.class != Urgent {
                let mut raised = queue.clone();
                let i = who % raised.len();
                raised[i].class = raised[i].class.raised();
                prop_assert!(bytes_until_done(&raised, &raised[i]) <= before);
            }
            // A class up for another never makes my ETA earlier.
            let mut theirs = queue.clone();
            if theirs[j].key != me.key {
                theirs[j].class = theirs[j].class.raised();
                prop_assert!(bytes_until_done(&theirs, &me) >= before);
            }
        }
    }
}
