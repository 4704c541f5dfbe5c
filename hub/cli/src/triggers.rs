//! Watched datasets in `aq`: the flags of `aq dataset set` that watch a dataset
//! (`--watch-every`, `--watch-cron` with `--tz`, `--watch off`, and the rollout that follows a
//! new version: `--auto-rollout`, `--auto-mode`, `--auto-cut-over`), the request they make,
//! and how a watch is shown (`aq dataset list`'s WATCH and LAST CHECK columns, its JSON).
//! The hub checks what it alone knows (its floor, the cron expression, the zone, the regions).

use std::time::Duration;

use anyhow::{Result, bail};
use aqueduct_proto::ReplicationMode;
use aqueduct_proto::domain::class::Class;
use aqueduct_proto::domain::cut_over::CutOver;
use aqueduct_proto::hub::v1 as pb;
use clap::Args;
use serde::Serialize;

use crate::output::{age, rfc3339, until};

/// `aq dataset set`'s watch flags.
#[derive(Args, Debug, Default)]
pub struct WatchArgs {
    /// Watch the dataset: look at its source every DURATION (30s, 10m, 1h; at least the hub's
    /// [triggers] min_interval, 10s unless its config says otherwise) and cut a version when
    /// something changed (an unchanged source cuts nothing). Replaces the watch it had.
    #[arg(long, value_name = "DURATION", value_parser = parse_every, group = "change", conflicts_with_all = ["watch_cron", "watch"])]
    pub watch_every: Option<Duration>,
    /// Watch the dataset on a cron schedule of 5 fields: minute hour day-of-month month
    /// day-of-week ("*/15 * * * *", "0 3 * * MON-FRI"; or @hourly, @daily), read in --tz.
    #[arg(long, value_name = "CRON", group = "change", conflicts_with = "watch")]
    pub watch_cron: Option<String>,
    /// The IANA time zone of --watch-cron (Europe/Berlin; default UTC), so that "0 3 * * *" is
    /// 03:00 there on both sides of a daylight-saving change.
    #[arg(long, value_name = "ZONE", requires = "watch_cron")]
    pub tz: Option<String>,
    /// `--watch off`: stop watching the dataset (its versions stay).
    #[arg(long, value_name = "off", value_parser = ["off"], group = "change")]
    pub watch: Option<String>,
    /// With a watch: roll each version it cuts out to these regions at once, as `aq rollout
    /// DATASET@vN --to REGIONS` would.
    #[arg(long, value_name = "REGION[,REGION...]", value_delimiter = ',')]
    pub auto_rollout: Vec<String>,
    /// The automatic rollout's replication mode (see `aq rollout --help`; default auto).
    #[arg(long, value_name = "auto|region|every-node", requires = "auto_rollout")]
    pub auto_mode: Option<ReplicationMode>,
    /// The automatic rollout's cut-over policy (see `aq rollout --help`; default all-ready).
    #[arg(long, value_name = "all-ready|per-region|manual", requires = "auto_rollout")]
    pub auto_cut_over: Option<CutOver>,
    /// The automatic rollout's class (see `aq rollout --help`; default normal).
    #[arg(long, value_name = "urgent|normal|background", requires = "auto_rollout")]
    pub auto_class: Option<Class>,
}

fn parse_every(text: &str) -> Result<Duration, String> {
    let d = aqueduct_proto::domain::units::parse_duration(text).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("a watch needs an interval above 0 (or --watch off)".into());
    }
    Ok(d)
}

impl WatchArgs {
    /// The watch the flags set (`watch`) and whether they remove it (`unwatch`).
    pub fn request(&self) -> Result<(Option<pb::DatasetWatch>, bool)> {
        if self.watch.is_some() {
            if !self.auto_rollout.is_empty() {
                bail!("--auto-rollout goes with a watch (--watch-every or --watch-cron), not with --watch off");
            }
            return Ok((None, true));
        }
        let (every_ms, cron) = match (&self.watch_every, &self.watch_cron) {
            (Some(d), None) => (u64::try_from(d.as_millis()).unwrap_or(u64::MAX), String::new()),
            (None, Some(cron)) => (0, cron.clone()),
            (None, None) if !self.auto_rollout.is_empty() => {
                bail!("--auto-rollout goes with a watch: add --watch-every DURATION or --watch-cron CRON")
            }
            _ => return Ok((None, false)),
        };
        Ok((
            Some(pb::DatasetWatch {
                every_ms,
                cron,
                time_zone: self.tz.clone().unwrap_or_default(),
                rollout_regions: self.auto_rollout.clone(),
                rollout_mode: self.auto_mode.unwrap_or_default().to_wire(),
                rollout_cut_over: self.auto_cut_over.map_or(pb::CutOver::Unspecified.into(), CutOver::to_wire),
                rollout_class: self.auto_class.map_or(pb::RolloutClass::Unspecified.into(), Class::to_wire),
                ..Default::default()
            }),
            false,
        ))
    }

    /// Whether the flags change the watch at all.
    pub fn changes(&self) -> bool {
        self.watch.is_some() || self.watch_every.is_some() || self.watch_cron.is_some()
    }
}

/// A dataset's watch as `aq dataset list -o json|yaml` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct WatchView {
    /// The interval (`10m`), or null with `cron`.
    pub every: Option<String>,
    pub every_ms: u64,
    /// The cron expression, or null with `every`.
    pub cron: Option<String>,
    /// The zone `cron` is read in.
    pub time_zone: Option<String>,
    /// Regions each new version is rolled out to (empty: it is only cut).
    pub rollout_regions: Vec<String>,
    pub rollout_mode: String,
    pub rollout_cut_over: String,
    pub rollout_class: String,
    /// When the last check started; null: never checked.
    pub last_check: Option<String>,
    pub last_check_unix_ms: Option<i64>,
    /// What it found: `unchanged (v6)`, `cut v7`, `cut v7, rolled out to eu,us`, `failed: ...`.
    pub last_result: Option<String>,
    pub last_failed: bool,
    /// When the next check is due; null: none (triggers off, or a schedule with no time ahead).
    pub next_check: Option<String>,
    pub next_check_unix_ms: Option<i64>,
}

impl From<pb::DatasetWatch> for WatchView {
    fn from(w: pb::DatasetWatch) -> Self {
        let cron = (!w.cron.is_empty()).then_some(w.cron);
        let last = (w.last_check_unix_ms > 0).then_some(w.last_check_unix_ms);
        let next = (w.next_check_unix_ms > 0).then_some(w.next_check_unix_ms);
        WatchView {
            every: (w.every_ms > 0).then(|| aqueduct_proto::format_duration(Duration::from_millis(w.every_ms))),
            every_ms: w.every_ms,
            time_zone: cron.as_ref().map(|_| if w.time_zone.is_empty() { "UTC".to_string() } else { w.time_zone }),
            cron,
            rollout_mode: ReplicationMode::from_wire(w.rollout_mode).unwrap_or_default().to_string(),
            rollout_cut_over: CutOver::from_wire(w.rollout_cut_over).unwrap_or_default().name().to_string(),
            rollout_class: Class::wire_name(w.rollout_class),
            rollout_regions: w.rollout_regions,
            last_check: last.and_then(rfc3339),
            last_check_unix_ms: last,
            last_result: (!w.last_result.is_empty()).then_some(w.last_result),
            last_failed: w.last_failed,
            next_check: next.and_then(rfc3339),
            next_check_unix_ms: next,
        }
    }
}

impl WatchView {
    /// `every 10m`, `cron "*/15 * * * *" (UTC)`, then `-> eu,us` with an automatic rollout.
    pub fn cadence(&self) -> String {
        let mut text = match (&self.every, &self.cron) {
            (Some(every), _) => format!("every {every}"),
            (None, Some(cron)) => format!("cron \"{cron}\" ({})", self.time_zone.as_deref().unwrap_or("UTC")),
            (None, None) => "?".to_string(),
        };
        if !self.rollout_regions.is_empty() {
            text.push_str(&format!(" -> {}", self.rollout_regions.join(",")));
        }
        text
    }

    /// `2m ago: cut v7, rolled out to eu`, or `never`.
    pub fn last(&self) -> String {
        match (self.last_check_unix_ms, &self.last_result) {
            (Some(at), Some(result)) => format!("{} ago: {result}", age(at)),
            (Some(at), None) => format!("{} ago", age(at)),
            _ => "never".to_string(),
        }
    }

    /// `in 8m`, `now`, or `-`.
    pub fn next(&self) -> String {
        self.next_check_unix_ms.map_or("-".to_string(), until)
    }

    /// What `aq dataset set` prints about the watch.
    pub fn describe(&self) -> String {
        let mut text = format!("watched {}", self.cadence());
        if !self.rollout_regions.is_empty() {
            text.push_str(&format!(
                " (rollout mode {}, cut-over {}, class {})",
                self.rollout_mode, self.rollout_cut_over, self.rollout_class
            ));
        }
        text.push_str(&format!("; last check: {}; next check: {}", self.last(), self.next()));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_with_units_and_zero_is_refused() {
        assert_eq!(parse_every("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_every("0s").unwrap_err().contains("above 0"));
        assert!(parse_every("ten minutes").is_err());
    }

    proptest::proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(512))]

        /// Whatever is typed after --watch-every, parsing answers (never panics), and what it
        /// accepts is above 0 and goes on the wire whole (saturating, never wrapping).
        #[test]
        fn fuzz_hostile_intervals_never_panic(text in proptest::prop_oneof!["\\PC{0,24}", "[0-9]{1,25}(ms|s|m|h|d|x)?"]) {
            if let Ok(d) = parse_every(&text) {
                proptest::prop_assert!(!d.is_zero());
                let args = WatchArgs { watch_every: Some(d), ..Default::default() };
                let (watch, unwatch) = args.request().unwrap();
                proptest::prop_assert!(!unwatch);
                let ms = watch.unwrap().every_ms;
                proptest::prop_assert!(ms == u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            }
        }
    }

    #[test]
    fn a_watch_view_says_what_and_when() {
        let w = WatchView::from(pb::DatasetWatch {
            every_ms: 600_000,
            rollout_regions: vec!["eu".into(), "us".into()],
            last_result: "cut v7, rolled out to eu,us".into(),
            last_check_unix_ms: 1,
            ..Default::default()
        });
        assert_eq!(w.cadence(), "every 10m -> eu,us");
        assert!(w.last().ends_with("ago: cut v7, rolled out to eu,us"), "{}", w.last());
        assert_eq!(w.next(), "-");
        let c = WatchView::from(pb::DatasetWatch { cron: "*/15 * * * *".into(), ..Default::default() });
        assert_eq!(c.cadence(), "cron \"*/15 * * * *\" (UTC)");
        assert_eq!(c.last(), "never");
    }
}
