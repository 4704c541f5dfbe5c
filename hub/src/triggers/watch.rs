//! A watched dataset's rules, pure: what a watch is ([`Cadence`]: an interval or a cron
//! schedule in a time zone), how the text an admin typed becomes one (with errors that say
//! which part is wrong and why), when the next check is ([`next_check`]), what a check does
//! after its snapshot ([`after_snapshot`]) and what it records ([`CheckOutcome`]).
//!
//! Times are milliseconds since the Unix epoch (what the store keeps); a cron schedule is read
//! in its time zone with jiff, so that `0 3 * * *` in `Europe/Berlin` stays 03:00 there on
//! both sides of a daylight-saving change. Cron expressions are parsed by `croner` (five
//! fields: minute, hour, day of month, month, day of week; `@daily` and the like too).

use std::fmt;
use std::time::Duration;

use aqueduct_proto::format_duration;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// The shortest interval between checks unless the hub's config says otherwise
/// (`[triggers] min_interval`): each check lists the source's prefix.
pub const DEFAULT_FLOOR: Duration = Duration::from_secs(10);

/// Longest cron expression taken (a real one is a few dozen characters).
const MAX_CRON_LEN: usize = 256;

/// The names of a cron expression's five fields, in order.
const FIELDS: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    #[error("--watch-every {given}: a watch checks its source at most every {floor} (the hub's [triggers] min_interval)", given = format_duration(*.given), floor = format_duration(*.floor))]
    TooOften { given: Duration, floor: Duration },
    #[error(
        "cron schedule {text:?}: a cron schedule has 5 fields (minute hour day-of-month month day-of-week, e.g. \"*/15 * * * *\"), this one has {count}"
    )]
    FieldCount { text: String, count: usize },
    #[error("cron schedule {text:?}: its {field} field {value:?} is not valid: {reason}")]
    Field { text: String, field: &'static str, value: String, reason: String },
    #[error("cron schedule {text:?} is not valid: {reason}")]
    Cron { text: String, reason: String },
    #[error("cron schedule {text:?} never matches a time (a date that does not exist?)")]
    NeverMatches { text: String },
    #[error("time zone {0:?} is not an IANA time zone this hub knows (e.g. UTC, Europe/Berlin)")]
    TimeZone(String),
    #[error("a watch has either an interval (--watch-every) or a cron schedule (--watch-cron), not both")]
    Both,
    #[error("a watch needs an interval (--watch-every) or a cron schedule (--watch-cron)")]
    Neither,
}

/// When a watched dataset is checked.
#[derive(Clone, Debug)]
pub enum Cadence {
    /// Every so often, counted from the last check.
    Every(Duration),
    /// At the times a cron expression names, in a time zone.
    Cron(Box<CronSchedule>),
}

/// A parsed cron expression and the time zone it is read in.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    text: String,
    cron: Cron,
    zone_name: String,
    zone: TimeZone,
}

impl CronSchedule {
    /// Parses `text` (five fields or an `@nickname`) read in the zone named `zone` (empty:
    /// UTC). Refuses an expression that never matches.
    pub fn parse(text: &str, zone: &str) -> Result<Self, WatchError> {
        let zone_name = if zone.is_empty() { "UTC".to_string() } else { zone.to_string() };
        let tz = time_zone(&zone_name)?;
        let cron = parse_cron(text)?;
        let schedule = Self { text: text.trim().to_string(), cron, zone_name, zone: tz };
        // A fixed moment, so that validation does not depend on the clock: any expression
        // that matches some day matches within the next few years of it.
        let from = Timestamp::from_second(1_767_225_600).unwrap_or(Timestamp::UNIX_EPOCH); // 2026-01-01
        if schedule.after(from).is_none() {
            return Err(WatchError::NeverMatches { text: schedule.text });
        }
        Ok(schedule)
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }

    /// The first time the expression names strictly after `t`, if there is one.
    fn after(&self, t: Timestamp) -> Option<Timestamp> {
        let at = t.to_zoned(self.zone.clone());
        self.cron.find_next_occurrence(&at, false).ok().map(|z| z.timestamp()).filter(|next| *next > t)
    }
}

impl fmt::Display for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cadence::Every(d) => write!(f, "every {}", format_duration(*d)),
            Cadence::Cron(c) => write!(f, "cron \"{}\" ({})", c.text, c.zone_name),
        }
    }
}

impl Cadence {
    /// The cadence a stored or requested watch names: an interval (`every_ms` > 0) or a cron
    /// expression, not both. The floor is checked by [`check_floor`], where a new watch is set.
    pub fn from_parts(every_ms: u64, cron: &str, zone: &str) -> Result<Self, WatchError> {
        match (every_ms, cron.trim().is_empty()) {
            (0, true) => Err(WatchError::Neither),
            (0, false) => Ok(Cadence::Cron(Box::new(CronSchedule::parse(cron, zone)?))),
            (ms, true) => Ok(Cadence::Every(Duration::from_millis(ms))),
            (_, false) => Err(WatchError::Both),
        }
    }
}

/// Refuses an interval shorter than `floor`. Cron schedules pass (they check at most once a
/// minute).
pub fn check_floor(cadence: &Cadence, floor: Duration) -> Result<(), WatchError> {
    match cadence {
        Cadence::Every(d) if *d < floor => Err(WatchError::TooOften { given: *d, floor }),
        _ => Ok(()),
    }
}

/// Looks up a time zone by its IANA name.
pub fn time_zone(name: &str) -> Result<TimeZone, WatchError> {
    if name.len() > 64 {
        return Err(WatchError::TimeZone(name.chars().take(64).collect()));
    }
    TimeZone::get(name).map_err(|_| WatchError::TimeZone(name.to_string()))
}

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build()
}

/// Parses a five-field cron expression (or an `@nickname`); an error names the field that is
/// wrong when one field alone is.
pub fn parse_cron(text: &str) -> Result<Cron, WatchError> {
    let trimmed = text.trim();
    let err = |reason: String| WatchError::Cron { text: trimmed.chars().take(MAX_CRON_LEN).collect(), reason };
    if trimmed.len() > MAX_CRON_LEN {
        return Err(err(format!("it is longer than {MAX_CRON_LEN} characters")));
    }
    if trimmed.is_empty() {
        return Err(err("it is empty".into()));
    }
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    if !trimmed.starts_with('@') && fields.len() != FIELDS.len() {
        return Err(WatchError::FieldCount { text: trimmed.to_string(), count: fields.len() });
    }
    match parser().parse(trimmed) {
        Ok(cron) => Ok(cron),
        Err(whole) => {
            if fields.len() == FIELDS.len() {
                // Which field alone fails, the others left as `*`?
                for (i, value) in fields.iter().enumerate() {
                    let mut alone = ["*"; 5];
                    alone[i] = value;
                    if let Err(e) = parser().parse(&alone.join(" ")) {
                        return Err(WatchError::Field {
                            text: trimmed.to_string(),
                            field: FIELDS[i],
                            value: value.to_string(),
                            reason: e.to_string(),
                        });
                    }
                }
            }
            Err(err(whole.to_string()))
        }
    }
}

/// When a watched dataset is checked next, given when it was last checked (`None`: never) and
/// the time now; `None` when its cron schedule names no time after now.
///
/// - An interval: `interval` after the last check, or now if that is past (a hub that was down
///   checks once on its return, and not at once after a restart when the last check is recent).
///   A watch never checked is checked now.
/// - A cron schedule: its first time after the last check, or now if that is past (one check
///   for all the times missed). A watch never checked waits for its first time after now.
///
/// The answer is never before `now`.
pub fn next_check(cadence: &Cadence, last_ms: Option<i64>, now_ms: i64) -> Option<i64> {
    match cadence {
        Cadence::Every(d) => {
            let step = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            Some(last_ms.map_or(now_ms, |last| last.saturating_add(step)).max(now_ms))
        }
        Cadence::Cron(c) => {
            let from = Timestamp::from_millisecond(last_ms.unwrap_or(now_ms).min(now_ms)).ok()?;
            let next = c.after(from)?.as_millisecond();
            Some(next.max(now_ms))
        }
    }
}

/// What a snapshot of a watched dataset gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Snapshot {
    /// Nothing changed since `latest` (0: no version yet and an empty source).
    Unchanged { latest: u64 },
    /// A new version was cut.
    Cut { version: u64 },
}

/// What a check does once its snapshot is done: roll the new version out, or nothing.
/// A rollout follows only a new version, and only to the regions the watch names.
pub fn after_snapshot(snapshot: &Snapshot, auto_regions: &[String]) -> Option<u64> {
    match snapshot {
        Snapshot::Cut { version } if !auto_regions.is_empty() => Some(*version),
        _ => None,
    }
}

/// What a check found, as recorded with the watch and shown by `aq dataset list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    Unchanged {
        latest: u64,
    },
    Cut {
        version: u64,
    },
    RolledOut {
        version: u64,
        regions: Vec<String>,
    },
    /// The version was cut, its rollout refused (a region removed since, say).
    RolloutFailed {
        version: u64,
        error: String,
    },
    /// The snapshot failed (the source unreachable...): tried again at the next check.
    Failed {
        error: String,
    },
}

impl CheckOutcome {
    /// True when the check did not do all it was to do.
    pub fn failed(&self) -> bool {
        matches!(self, CheckOutcome::Failed { .. } | CheckOutcome::RolloutFailed { .. })
    }

    /// The version the check cut, if it cut one.
    pub fn cut(&self) -> Option<u64> {
        match self {
            CheckOutcome::Cut { version }
            | CheckOutcome::RolledOut { version, .. }
            | CheckOutcome::RolloutFailed { version, .. } => Some(*version),
            _ => None,
        }
    }
}

/// The longest result text kept (an error from a source can be long).
const MAX_RESULT: usize = 500;

impl fmt::Display for CheckOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            CheckOutcome::Unchanged { latest: 0 } => "unchanged (no version yet)".to_string(),
            CheckOutcome::Unchanged { latest } => format!("unchanged (v{latest})"),
            CheckOutcome::Cut { version } => format!("cut v{version}"),
            CheckOutcome::RolledOut { version, regions } => {
                format!("cut v{version}, rolled out to {}", regions.join(","))
            }
            CheckOutcome::RolloutFailed { version, error } => format!("cut v{version}, rollout failed: {error}"),
            CheckOutcome::Failed { error } => format!("failed: {error}"),
        };
        if text.chars().count() > MAX_RESULT {
            let cut: String = text.chars().take(MAX_RESULT).collect();
            write!(f, "{cut}...")
        } else {
            f.write_str(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use proptest::prelude::*;

    fn ms(zoned: jiff::Zoned) -> i64 {
        zoned.timestamp().as_millisecond()
    }

    fn at(y: i16, mo: i8, d: i8, h: i8, mi: i8, zone: &str) -> i64 {
        ms(date(y, mo, d).at(h, mi, 0, 0).in_tz(zone).unwrap())
    }

    #[test]
    fn an_interval_counts_from_the_last_check_and_never_lies_in_the_past() {
        let every = Cadence::Every(Duration::from_secs(600));
        let now = 1_000_000_000_000;
        assert_eq!(next_check(&every, None, now), Some(now), "never checked: now");
        assert_eq!(next_check(&every, Some(now - 60_000), now), Some(now + 540_000), "recent: not at once");
        assert_eq!(next_check(&every, Some(now - 3_600_000), now), Some(now), "overdue: now, once");
        assert_eq!(next_check(&every, Some(now + 5_000), now), Some(now + 605_000), "a clock that went back");
    }

    #[test]
    fn cron_waits_for_its_next_time_and_catches_up_once() {
        let c = Cadence::Cron(Box::new(CronSchedule::parse("*/15 * * * *", "").unwrap()));
        let now = at(2026, 11, 30, 10, 7, "UTC");
        assert_eq!(next_check(&c, None, now), Some(at(2026, 11, 30, 10, 15, "UTC")));
        assert_eq!(next_check(&c, Some(at(2026, 11, 30, 10, 0, "UTC")), now), Some(at(2026, 11, 30, 10, 15, "UTC")));
        // Down for hours: one check now for all the times missed.
        assert_eq!(next_check(&c, Some(at(2026, 11, 30, 2, 0, "UTC")), now), Some(now));
    }

    #[test]
    fn cron_follows_its_zone_across_daylight_saving_changes() {
        let c = Cadence::Cron(Box::new(CronSchedule::parse("0 3 * * *", "Europe/Berlin").unwrap()));
        // Before the autumn change (CEST, UTC+2) and after it (CET, UTC+1): 03:00 local both.
        let before = at(2026, 10, 24, 12, 0, "UTC");
        assert_eq!(next_check(&c, Some(before), before), Some(at(2026, 10, 25, 3, 0, "Europe/Berlin")));
        assert_eq!(at(2026, 10, 25, 3, 0, "Europe/Berlin"), at(2026, 10, 25, 2, 0, "UTC"));
        let after = at(2026, 10, 25, 12, 0, "UTC");
        assert_eq!(next_check(&c, Some(after), after), Some(at(2026, 10, 26, 2, 0, "UTC")));
        // 02:30 does not exist in Berlin on 2026-03-29 (clocks jump from 02:00 to 03:00): the
        // check happens once, that day, not never and not twice.
        let c = Cadence::Cron(Box::new(CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap()));
        let eve = at(2026, 3, 28, 12, 0, "UTC");
        let next = next_check(&c, Some(eve), eve).unwrap();
        assert!(next > eve && next < at(2026, 3, 30, 0, 0, "UTC"), "{next}");
        let after = next_check(&c, Some(next), next).unwrap();
        assert_eq!(after, at(2026, 3, 30, 2, 30, "Europe/Berlin"));
    }

    #[test]
    fn bad_cron_names_the_field_and_why() {
        let e = parse_cron("*/15 * * *").unwrap_err();
        assert!(e.to_string().contains("has 5 fields") && e.to_string().contains("has 4"), "{e}");
        let e = parse_cron("0 25 * * *").unwrap_err();
        assert!(matches!(e, WatchError::Field { field: "hour", .. }), "{e}");
        assert!(e.to_string().contains("hour field \"25\""), "{e}");
        let e = parse_cron("0 0 * FOO *").unwrap_err();
        assert!(matches!(e, WatchError::Field { field: "month", .. }), "{e}");
        let e = CronSchedule::parse("0 0 30 2 *", "UTC").unwrap_err();
        assert!(matches!(e, WatchError::NeverMatches { .. }), "{e}");
        assert!(matches!(CronSchedule::parse("0 0 * * *", "Mars/Olympus"), Err(WatchError::TimeZone(_))));
        assert!(parse_cron("@daily").is_ok());
        assert!(parse_cron("0 9-17 * * MON-FRI").is_ok());
    }

    #[test]
    fn an_interval_under_the_floor_is_refused_with_why() {
        let e = check_floor(&Cadence::Every(Duration::from_secs(2)), DEFAULT_FLOOR).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--watch-every 2s: a watch checks its source at most every 10s (the hub's [triggers] min_interval)"
        );
        assert!(check_floor(&Cadence::Every(Duration::from_secs(10)), DEFAULT_FLOOR).is_ok());
        assert_eq!(Cadence::from_parts(0, "", "").unwrap_err(), WatchError::Neither);
        assert_eq!(Cadence::from_parts(1000, "* * * * *", "").unwrap_err(), WatchError::Both);
    }

    #[test]
    fn a_check_rolls_out_only_what_it_cut_and_only_where_asked() {
        let regions = vec!["eu".to_string(), "us".to_string()];
        assert_eq!(after_snapshot(&Snapshot::Cut { version: 7 }, &regions), Some(7));
        assert_eq!(after_snapshot(&Snapshot::Cut { version: 7 }, &[]), None);
        assert_eq!(after_snapshot(&Snapshot::Unchanged { latest: 6 }, &regions), None);
        assert_eq!(CheckOutcome::Unchanged { latest: 6 }.to_string(), "unchanged (v6)");
        assert_eq!(CheckOutcome::Cut { version: 7 }.to_string(), "cut v7");
        let done = CheckOutcome::RolledOut { version: 7, regions };
        assert_eq!(done.to_string(), "cut v7, rolled out to eu,us");
        assert!(!done.failed());
        let failed = CheckOutcome::Failed { error: "source unreachable".into() };
        assert_eq!(failed.to_string(), "failed: source unreachable");
        assert!(failed.failed() && failed.cut().is_none());
        let long = CheckOutcome::Failed { error: "x".repeat(10_000) };
        assert!(long.to_string().chars().count() <= MAX_RESULT + 3);
    }

    proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(256))]

        /// Whatever an admin types, parsing answers (never panics), and a schedule that parses
        /// names a next time strictly after now.
        #[test]
        fn fuzz_hostile_cron_never_panics(
            text in prop_oneof![
                "\\PC{0,40}",
                "([0-9*/,LW#?-]{1,6} ){4}[0-9A-Z*/,LW#?-]{1,6}",
                "(@[a-z]{0,10})",
            ],
            zone in prop_oneof![
                Just(String::new()),
                Just("Europe/Berlin".to_string()),
                Just("America/New_York".to_string()),
                "\\PC{0,10}",
            ],
            now in 0i64..4_102_444_800_000,
        ) {
            if let Ok(schedule) = CronSchedule::parse(&text, &zone) {
                let cadence = Cadence::Cron(Box::new(schedule));
                if let Some(next) = next_check(&cadence, None, now) {
                    prop_assert!(next > now);
                }
            }
        }

        /// Well-formed schedules (the fields in and out of their ranges, steps, lists, names),
        /// in zones with daylight saving: the next check is after now, matches the schedule's
        /// minute, and a check right after it waits for a later time.
        #[test]
        fn fuzz_next_cron_time_is_after_now_and_on_the_schedule(
            minute in prop_oneof![Just("*".to_string()), (0u32..70).prop_map(|m| m.to_string()), (1u32..61).prop_map(|s| format!("*/{s}")), (0u32..60, 0u32..60).prop_map(|(a, b)| format!("{a},{b}"))],
            hour in prop_oneof![Just("*".to_string()), (0u32..26).prop_map(|h| h.to_string()), (0u32..24, 0u32..24).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b)))],
            day in prop_oneof![Just("*".to_string()), (0u32..33).prop_map(|d| d.to_string()), Just("L".to_string())],
            month in prop_oneof![Just("*".to_string()), (0u32..14).prop_map(|m| m.to_string()), Just("MAR".to_string()), Just("OCT-NOV".to_string())],
            weekday in prop_oneof![Just("*".to_string()), (0u32..8).prop_map(|d| d.to_string()), Just("MON-FRI".to_string()), Just("SUN#2".to_string())],
            zone in prop_oneof![Just("UTC"), Just("Europe/Berlin"), Just("America/New_York"), Just("Australia/Lord_Howe")],
            now in 1_700_000_000_000i64..2_000_000_000_000,
        ) {
            let text = format!("{minute} {hour} {day} {month} {weekday}");
            let Ok(schedule) = CronSchedule::parse(&text, zone) else { return Ok(()) };
            let cadence = Cadence::Cron(Box::new(schedule.clone()));
            if let Some(next) = next_check(&cadence, None, now) {
                prop_assert!(next > now, "{text}: {next} <= {now}");
                let at = Timestamp::from_millisecond(next).unwrap().to_zoned(schedule.zone.clone());
                // A time the schedule names that a daylight-saving change skipped is taken
                // just after the change; any other is one the schedule names.
                let before = Timestamp::from_millisecond(next - 3 * 3_600_000).unwrap().to_zoned(schedule.zone.clone());
                let near_change = before.offset() != at.offset();
                prop_assert!(near_change || schedule.cron.is_time_matching(&at).unwrap_or(false), "{text}: {at}");
                prop_assert_eq!(at.second(), 0);
                let after = next_check(&cadence, Some(next), next);
                prop_assert!(after.is_none_or(|a| a > next), "{text}: then {after:?}");
            }
        }

        /// The next check is never before now; an interval never waits longer than itself;
        /// a never-checked interval watch checks now.
        #[test]
        fn fuzz_next_check_is_never_in_the_past(
            every_ms in 1u64..u64::MAX,
            last in proptest::option::of(any::<i64>()),
            now in 0i64..4_102_444_800_000,
        ) {
            let cadence = Cadence::Every(Duration::from_millis(every_ms));
            let next = next_check(&cadence, last, now).unwrap();
            prop_assert!(next >= now);
            if let Some(last) = last.filter(|l| *l <= now) {
                prop_assert!(next == now || next == last.saturating_add(every_ms.min(i64::MAX as u64) as i64));
            }
            if last.is_none() {
                prop_assert_eq!(next, now);
            }
        }
    }
}
