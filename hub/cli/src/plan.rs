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

    #[test]
    fn spans_read_like_people_write_them() {
        assert_eq!(
            [span(45_000), span(40 * 60_000), span(65 * 60_000), span(51 * 3_600_000)],
            ["45s", "40m", "1h5m", "2d3h"]
        );
    }
}
