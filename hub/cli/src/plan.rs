//! `aq rollout --by TIME` and `--dry-run`: the deadline as the user writes it (RFC 3339 or a
//! time from now, `+2h`), and the hub's plan as a table: per region, the bytes that must cross
//! its link (after what it holds), the rollouts ahead of it, the budget in force, the ETA, and
//! whether that meets the deadline ("meets it", "misses it by 40m").

use aqueduct_proto::Rate;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::parse_duration;
use jiff::Timestamp;

use crate::output::{Table, bytes};

/// `aq rollout`'s flags for deadlines and plans.
#[derive(clap::Args, Debug, Default)]
pub struct PlanArgs {
    /// A deadline: RFC 3339 with its offset (2026-12-01T18:00:00Z) or a time from now (+2h,
    /// +90m, +1h30m). The hub says at once, per region, whether its plan (the bytes that must
    /// cross the link after what the region holds, under the region's budget schedule, behind
    /// the region's other rollouts) meets it, starts the rollout anyway, shows the ETA in `aq
    /// status`, and raises the rollout's class a step (background, normal, urgent) in a region
    /// whose ETA passes the deadline.
    #[arg(long, value_name = "TIME")]
    pub by: Option<String>,
    /// Print the plan (per region: bytes to cross, what it holds, what is ahead, the budget,
    /// the ETA, and with --by whether it meets the deadline) and start nothing.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
}

/// What `--by` could not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ByError {
    #[error(
        "--by {0:?} is not a time: write RFC 3339 with its offset (2026-12-01T18:00:00Z, 2026-12-01T19:00:00+01:00) or a time from now (+2h, +90m, +1h30m)"
    )]
    NotATime(String),
    #[error("--by {text:?} is {at}, already past (now is {now}); give a later time, e.g. +2h")]
    Past { text: String, at: Timestamp, now: Timestamp },
}

/// The deadline `--by TEXT` names, at `now`: `+DURATION` from now, or an RFC 3339 time.
pub fn parse_by(text: &str, now: Timestamp) -> Result<Timestamp, ByError> {
    let bad = || ByError::NotATime(text.to_string());
    let t = text.trim();
    let at = match t.strip_prefix('+') {
        Some(rest) => {
            let d = parse_duration(rest).map_err(|_| bad())?;
            let d = jiff::SignedDuration::try_from(d).map_err(|_| bad())?;
            now.checked_add(d).map_err(|_| bad())?
        }
        None => t.parse::<Timestamp>().map_err(|_| bad())?,
    };
    if at <= now {
        return Err(ByError::Past { text: text.to_string(), at, now });
    }
    Ok(at)
}

/// A span of time as a person reads it: `45s`, `40m`, `1h5m`, `2d3h`.
pub fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// The ETA of a plan, as `2026-12-01T12:07:00Z (in 12m)`, from `now_ms`.
fn eta_cell(eta_unix_ms: i64, now_ms: i64) -> String {
    match Timestamp::from_millisecond(eta_unix_ms) {
        Ok(t) if eta_unix_ms > 0 => {
            let t = t.round(jiff::Unit::Second).unwrap_or(t);
            format!("{t} (in {})", span(eta_unix_ms - now_ms))
        }
        _ => "not within the planning horizon".to_string(),
    }
}

/// Whether a plan meets its deadline, as the table says it.
pub fn verdict(eta_unix_ms: i64, deadline_unix_ms: i64) -> String {
    match (eta_unix_ms, deadline_unix_ms) {
        (_, 0) => "-".to_string(),
        (0, _) => "misses it".to_string(),
        (eta, deadline) if eta <= deadline => "meets the deadline".to_string(),
        (eta, deadline) => format!("misses it by {}", span(eta - deadline)),
    }
}

/// The plan of a rollout as a table, one row per region, at `now_ms`.
pub fn plan_table(resp: &pb::RolloutResponse, now_ms: i64) -> String {
    let deadline = resp.plans.iter().map(|p| p.deadline_unix_ms).find(|d| *d != 0);
    let mut table = Table::new(["REGION", "TO CROSS", "HELD", "AHEAD", "BUDGET NOW", "ETA", "DEADLINE"]);
    for p in &resp.plans {
        table.row([
            p.region.clone(),
            bytes(p.bytes),
            format!("{} of {}", bytes(p.held_bytes), bytes(p.version_bytes)),
            bytes(p.ahead_bytes),
            Rate(p.budget_bytes_per_sec).to_string(),
            eta_cell(p.eta_unix_ms, now_ms),
            verdict(p.eta_unix_ms, p.deadline_unix_ms),
        ]);
    }
    let what = if resp.dry_run { "plan (dry run: nothing started)" } else { "plan" };
    let by =
        deadline.and_then(|d| Timestamp::from_millisecond(d).ok()).map_or(String::new(), |d| format!(", deadline {d}"));
    format!("{what} for {}@v{}{by}:\n{}", resp.dataset, resp.version, table.render())
}

/// A status row's deadline and ETA, for `-o json|yaml` and the tables.
#[derive(serde::Serialize, Debug, Default, PartialEq, Eq)]
pub struct RowPlanView {
    /// While the row is under way: when the hub expects it done (RFC 3339); null otherwise.
    pub eta: Option<String>,
    pub eta_unix_ms: Option<i64>,
    /// Under way, and not done within the planning horizon (some years).
    pub eta_beyond_horizon: bool,
    /// The rollout's deadline (`aq rollout --by`); null: none.
    pub deadline: Option<String>,
    pub deadline_unix_ms: Option<i64>,
    /// Under way with a deadline that its ETA passes.
    pub misses_deadline: bool,
    /// When the hub last raised the row's class because it fell behind; null: never.
    pub class_raised: Option<String>,
}

impl RowPlanView {
    pub fn new(r: &pb::StatusRow) -> Self {
        let some = |ms: i64| (ms != 0).then_some(ms);
        let (eta, deadline) = (some(r.eta_unix_ms), some(r.deadline_unix_ms));
        let under_way = eta.is_some() || r.eta_beyond_horizon;
        Self {
            eta: eta.and_then(crate::output::rfc3339),
            eta_unix_ms: eta,
            eta_beyond_horizon: r.eta_beyond_horizon,
            deadline: deadline.and_then(crate::output::rfc3339),
            deadline_unix_ms: deadline,
            misses_deadline: under_way && deadline.is_some_and(|d| eta.is_none_or(|e| e > d)),
            class_raised: some(r.class_raised_unix_ms).and_then(crate::output::rfc3339),
        }
    }

    /// `in 12m`, `beyond the horizon`, or `-`.
    pub fn eta_cell(&self) -> String {
        match self.eta_unix_ms {
            Some(ms) => crate::output::until(ms),
            None if self.eta_beyond_horizon => "beyond the horizon".to_string(),
            None => "-".to_string(),
        }
    }

    /// `in 1h`, `in 10m: MISSES it by 5m`, or `-`.
    pub fn deadline_cell(&self) -> String {
        let Some(deadline) = self.deadline_unix_ms else { return "-".to_string() };
        let when = crate::output::until(deadline);
        match (self.misses_deadline, self.eta_unix_ms) {
            (false, _) => when,
            (true, Some(eta)) => format!("{when}: MISSES it by {}", span(eta - deadline)),
            (true, None) => format!("{when}: MISSES it"),
        }
    }

    /// The class, and `(raised)` when the hub raised it for a deadline.
    pub fn class_cell(&self, class: &str) -> String {
        if self.class_raised.is_some() { format!("{class} (raised)") } else { class.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-30T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn by_reads_rfc3339_and_times_from_now() {
        assert_eq!(parse_by("+2h", now()).unwrap(), "2026-11-30T14:00:00Z".parse().unwrap());
        assert_eq!(parse_by("+1h30m", now()).unwrap(), "2026-11-30T13:30:00Z".parse().unwrap());
        assert_eq!(parse_by("2026-12-01T18:00:00Z", now()).unwrap(), "2026-12-01T18:00:00Z".parse().unwrap());
        assert_eq!(parse_by("2026-12-01T19:00:00+01:00", now()).unwrap(), "2026-12-01T18:00:00Z".parse().unwrap());
        for bad in ["tomorrow", "+2 hours", "2026-12-01 18:00", "+", ""] {
            let err = parse_by(bad, now()).unwrap_err();
            assert_eq!(err, ByError::NotATime(bad.into()));
            assert!(err.to_string().contains("RFC 3339"), "{err}");
        }
        let err = parse_by("2026-11-30T11:00:00Z", now()).unwrap_err();
        assert!(err.to_string().contains("already past"), "{err}");
        assert!(parse_by("+0s", now()).is_err(), "now is not a deadline");
    }

    #[test]
    fn the_plan_says_per_region_whether_it_meets_the_deadline() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap().as_millisecond();
        let plan = |region: &str, eta: i64| pb::RegionPlan {
            region: region.into(),
            version_bytes: 100 << 20,
            held_bytes: 40 << 20,
            bytes: 60 << 20,
            ahead_bytes: 0,
            eta_unix_ms: eta,
            budget_bytes_per_sec: 1 << 20,
            deadline_unix_ms: at("2026-11-30T13:00:00Z"),
            meets_deadline: false,
        };
        let resp = pb::RolloutResponse {
            dataset: "llama".into(),
            version: 3,
            regions: vec!["eu".into(), "us".into(), "ap".into()],
            plans: vec![plan("eu", at("2026-11-30T12:01:00Z")), plan("us", at("2026-11-30T13:40:00Z")), plan("ap", 0)],
            dry_run: true,
        };
        let text = plan_table(&resp, now().as_millisecond());
        assert!(
            text.starts_with("plan (dry run: nothing started) for llama@v3, deadline 2026-11-30T13:00:00Z:"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].contains("60.0 MiB") && lines[2].contains("40.0 MiB of 100.0 MiB"), "{text}");
        assert!(
            lines[2].contains("2026-11-30T12:01:00Z (in 1m)") && lines[2].ends_with("meets the deadline"),
            "{text}"
        );
        assert!(lines[3].ends_with("misses it by 40m"), "{text}");
        assert!(lines[4].contains("not within the planning horizon") && lines[4].ends_with("misses it"), "{text}");
    }

    /// A row with a deadline adds ETA and DEADLINE to the default table, marked when the ETA
    /// passes it; rows without one leave the table as it was.
    #[test]
    fn status_shows_eta_and_deadline_and_marks_a_row_that_will_miss_it() {
        use crate::output::Listing;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let row = |region: &str, eta: i64, deadline: i64| pb::StatusRow {
            dataset: "llama".into(),
            version: 2,
            region: region.into(),
            total_bytes: 100,
            phase: pb::Phase::Transferring.into(),
            eta_unix_ms: eta,
            deadline_unix_ms: deadline,
            ..Default::default()
        };
        let hour = 3_600_000;
        let status = |rows| pb::StatusResponse { rows, ..Default::default() };
        let plain = crate::status::StatusView::new(status(vec![row("eu", now + hour, 0)]), false, None).text(false);
        assert!(!plain.contains("DEADLINE"), "{plain}");
        let mut raised = row("us", now + 2 * hour + 60_000, now + hour);
        raised.class_raised_unix_ms = now;
        raised.class = pb::RolloutClass::Urgent.into();
        let view =
            crate::status::StatusView::new(status(vec![row("eu", now + 10 * 60_000, now + hour), raised]), false, None);
        let text = view.text(false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].split_whitespace().rev().take(2).eq(["DEADLINE", "ETA"]), "{text}");
        assert!(lines[1].contains("in 9m") || lines[1].contains("in 10m"), "{text}");
        assert!(!lines[1].contains("MISSES"), "{text}");
        assert!(lines[2].contains("MISSES it by 1h"), "{text}");
        assert!(view.rows[1].plan.misses_deadline && !view.rows[0].plan.misses_deadline);
        let wide = view.text(true);
        assert!(wide.contains("urgent (raised)"), "{wide}");
        let json = serde_json::to_value(&view.rows[1]).unwrap();
        assert_eq!(
            (json["misses_deadline"].as_bool(), json["deadline_unix_ms"].as_i64()),
            (Some(true), Some(now + hour))
        );
    }

    #[test]
    fn spans_read_like_people_write_them() {
        assert_eq!(
            [span(45_000), span(40 * 60_000), span(65 * 60_000), span(51 * 3_600_000)],
            ["45s", "40m", "1h5m", "2d3h"]
        );
    }
}
