//! A link budget over the week: which rate is in force at a moment, in a region's time zone,
//! and when it next changes. Hub and spokes both apply it (the hub's relay and the spokes'
//! fetches share one budget), so both read the same text the same way.
//!
//! The text is rules separated by `;`, the first that matches a moment wins, and the last is a
//! rate alone, for every other time:
//!
//! ```text
//! mon-fri 08:00-20:00 20MiB/s; sat,sun 50MiB/s; 200MiB/s
//! ```
//!
//! A rule is days (`mon`..`sun`, ranges like `mon-fri` or `fri-mon`, lists with `,`, or
//! `weekdays`, `weekends`, `daily`), a window `HH:MM-HH:MM` (`24:00` ends a day; a window that
//! ends before it starts runs past midnight into the next day), or both, then a rate as
//! everywhere else (`20MiB/s`, `400Mbit/s`). Times are wall-clock times of the region's zone
//! (an IANA name such as `Europe/Berlin`): a window follows daylight saving time.

use std::fmt;

use aqueduct_proto::Rate;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

/// The longest schedule text read, and the most rules in it.
pub const MAX_TEXT: usize = 1024;
pub const MAX_RULES: usize = 32;
const MINUTES_PER_DAY: u16 = 24 * 60;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("the schedule is longer than {MAX_TEXT} characters")]
    TooLong,
    #[error("the schedule has more than {MAX_RULES} rules")]
    TooManyRules,
    #[error("rule {n} ({rule:?}): {reason}; a rule is [DAYS] [HH:MM-HH:MM] RATE, e.g. \"mon-fri 08:00-20:00 20MiB/s\"")]
    Rule { n: usize, rule: String, reason: String },
    #[error(
        "the schedule must end with a rate alone, for every time no rule covers, e.g. \"mon-fri 08:00-20:00 20MiB/s; 200MiB/s\""
    )]
    NoDefault,
    #[error("{0:?} is not a time zone: use an IANA name such as Europe/Berlin, America/New_York or UTC")]
    TimeZone(String),
}

/// Days of the week a rule covers, Monday first.
type Days = [bool; 7];

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    days: Option<Days>,
    /// Minutes since midnight, `start != end`; `end < start` runs past midnight.
    window: Option<(u16, u16)>,
    rate: u64,
}

/// A weekly budget schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    rules: Vec<Rule>,
    default: u64,
}

/// The rate in force at a moment and what comes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InForce {
    pub rate: u64,
    /// When the rate next changes and to what (none: it never does).
    pub next: Option<(Timestamp, u64)>,
}

impl Schedule {
    /// A schedule of one rate at all times.
    pub fn flat(rate: u64) -> Self {
        Self { rules: Vec::new(), default: rate }
    }

    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        if text.len() > MAX_TEXT {
            return Err(ScheduleError::TooLong);
        }
        let parts: Vec<&str> = text.split(';').map(str::trim).collect();
        if parts.len() > MAX_RULES {
            return Err(ScheduleError::TooManyRules);
        }
        let mut rules = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let rule =
                parse_rule(part).map_err(|reason| ScheduleError::Rule { n: i + 1, rule: part.to_string(), reason })?;
            rules.push(rule);
        }
        let last = rules.pop().ok_or(ScheduleError::NoDefault)?;
        if last.days.is_some() || last.window.is_some() {
            return Err(ScheduleError::NoDefault);
        }
        if let Some(n) = rules.iter().position(|r| r.days.is_none() && r.window.is_none()) {
            return Err(ScheduleError::Rule {
                n: n + 1,
                rule: parts[n].to_string(),
                reason: "a rate alone covers every time, so it must be the last rule".into(),
            });
        }
        Ok(Self { rules, default: last.rate })
    }

    /// The rate at a wall-clock moment: `day` 0 is Monday, `minute` since midnight.
    pub fn rate_at(&self, day: usize, minute: u16) -> u64 {
        self.rules.iter().find(|r| r.covers(day, minute)).map_or(self.default, |r| r.rate)
    }

    /// The highest rate the schedule ever allows (what a connection window is sized for).
    pub fn max_rate(&self) -> u64 {
        self.rules.iter().map(|r| r.rate).fold(self.default, u64::max)
    }

    /// The rate in force at `now` in `zone`, and when (and to what) it next changes, looking
    /// up to eight days ahead.
    pub fn in_force(&self, now: Timestamp, zone: &TimeZone) -> InForce {
        let here = now.to_zoned(zone.clone());
        let rate = self.rate_of(&here);
        if self.rules.is_empty() {
            return InForce { rate, next: None };
        }
        let mut edges: Vec<u16> = vec![0];
        for r in &self.rules {
            if let Some((start, end)) = r.window {
                edges.extend([start, end % MINUTES_PER_DAY]);
            }
        }
        edges.sort_unstable();
        edges.dedup();
        let mut candidates = Vec::new();
        for offset in 0..=8i64 {
            let Ok(date) = here.date().checked_add(offset.days()) else { continue };
            for &minute in &edges {
                let time = jiff::civil::time((minute / 60) as i8, (minute % 60) as i8, 0, 0);
                if let Ok(at) = date.to_datetime(time).to_zoned(zone.clone())
                    && at.timestamp() > now
                {
                    candidates.push(at);
                }
            }
        }
        candidates.sort_by_key(|z| z.timestamp());
        let next = candidates.into_iter().map(|z| (z.timestamp(), self.rate_of(&z))).find(|(_, r)| *r != rate);
        InForce { rate, next }
    }

    /// When `bytes` have crossed a link that runs at this schedule's rate from `from` on: the
    /// windows integrated, each at its own rate (the window in force, then each one after it,
    /// as [`Schedule::in_force`] announces them). Exact to the nanosecond. `None` when it is
    /// further than [`MAX_FINISH_STEPS`] changes of rate ahead (some years with a few windows
    /// a day) or beyond what a timestamp holds: no time worth planning by.
    pub fn finish(&self, bytes: u64, from: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        // Bytes times nanoseconds per second: a window of `ns` nanoseconds at `rate` bytes per
        // second carries `ns * rate` of them, exactly.
        let mut left = u128::from(bytes) * NANOS_PER_SEC;
        let mut at = from;
        for _ in 0..MAX_FINISH_STEPS {
            let InForce { rate, next } = self.in_force(at, zone);
            let rate = u128::from(rate.max(1));
            let need = left.div_ceil(rate);
            let change = match next {
                Some((change, _)) => change,
                None => return add_nanos(at, need),
            };
            let span = u128::try_from(change.duration_since(at).as_nanos()).unwrap_or(0);
            if need <= span {
                return add_nanos(at, need);
            }
            left -= span * rate;
            at = change;
        }
        None
    }

    fn rate_of(&self, at: &Zoned) -> u64 {
        let day = at.weekday().to_monday_zero_offset() as usize;
        let minute = at.hour() as u16 * 60 + at.minute() as u16;
        self.rate_at(day, minute)
    }
}

/// How many changes of rate [`Schedule::finish`] walks through before it gives up.
pub const MAX_FINISH_STEPS: usize = 1024;
const NANOS_PER_SEC: u128 = 1_000_000_000;

fn add_nanos(at: Timestamp, nanos: u128) -> Option<Timestamp> {
    let nanos = i64::try_from(nanos).ok()?;
    at.checked_add(jiff::SignedDuration::from_nanos(nanos)).ok()
}

/// Looks up a time zone by its IANA name.
pub fn time_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    if name.len() > 64 {
        return Err(ScheduleError::TimeZone(name.chars().take(64).collect()));
    }
    TimeZone::get(name).map_err(|_| ScheduleError::TimeZone(name.to_string()))
}

impl Rule {
    fn covers(&self, day: usize, minute: u16) -> bool {
        let on = |d: usize| self.days.is_none_or(|days| days[d % 7]);
        match self.window {
            None => on(day),
            Some((start, end)) if start < end => on(day) && (start..end).contains(&minute),
            // Past midnight: the evening belongs to the day named, the morning to the next.
            Some((start, end)) => (minute >= start && on(day)) || (minute < end && on(day + 6)),
        }
    }
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let Some((rate, rest)) = words.split_last() else { return Err("it is empty".into()) };
    let rate = rate.parse::<Rate>().map_err(|e| e.to_string())?.0;
    let (mut days, mut window) = (None, None);
    for word in rest {
        if word.contains(':') {
            if window.is_some() {
                return Err("it has two windows".into());
            }
            window = Some(parse_window(word)?);
        } else {
            if days.is_some() {
                return Err("it names days twice (use one list: mon,wed,fri)".into());
            }
            days = Some(parse_days(word)?);
        }
    }
    Ok(Rule { days, window, rate })
}

fn parse_window(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{text:?} is not a window HH:MM-HH:MM");
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    let (start, end) = (parse_time(start).ok_or_else(bad)?, parse_time(end).ok_or_else(bad)?);
    if start == MINUTES_PER_DAY {
        return Err(format!("{text:?} starts at 24:00; write 00:00"));
    }
    if start == end % MINUTES_PER_DAY {
        return Err(format!("{text:?} is empty or the whole day; leave the window out for a whole day"));
    }
    Ok((start, end))
}

fn parse_time(text: &str) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

fn parse_days(text: &str) -> Result<Days, String> {
    let lower = text.to_ascii_lowercase();
    let mut days = [false; 7];
    match lower.as_str() {
        "daily" => return Ok([true; 7]),
        "weekdays" => return Ok([true, true, true, true, true, false, false]),
        "weekends" => return Ok([false, false, false, false, false, true, true]),
        _ => {}
    }
    let day = |name: &str| {
        DAY_NAMES.iter().position(|d| *d == name).ok_or_else(|| {
            format!("{name:?} is not a day: use mon, tue, wed, thu, fri, sat, sun, weekdays, weekends or daily")
        })
    };
    for item in lower.split(',') {
        match item.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day(from)?, day(to)?);
                let mut d = from;
                loop {
                    days[d] = true;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day(item)?] = true,
        }
    }
    Ok(days)
}

impl fmt::Display for Schedule {
    /// The canonical text: what [`Schedule::parse`] reads back as the same schedule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.rules {
            if let Some(days) = r.days {
                let names: Vec<&str> = (0..7).filter(|d| days[*d]).map(|d| DAY_NAMES[d]).collect();
                write!(f, "{} ", names.join(","))?;
            }
            if let Some((start, end)) = r.window {
                write!(f, "{:02}:{:02}-{:02}:{:02} ", start / 60, start % 60, end / 60, end % 60)?;
            }
            write!(f, "{}B/s; ", r.rate)?;
        }
        write!(f, "{}B/s", self.default)
    }
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn berlin() -> TimeZone {
        time_zone("Europe/Berlin").unwrap()
    }

    fn at(text: &str, zone: &TimeZone) -> Timestamp {
        text.parse::<jiff::civil::DateTime>().unwrap().to_zoned(zone.clone()).unwrap().timestamp()
    }

    #[test]
    fn the_documented_example_reads_as_it_says() {
        let s = Schedule::parse("mon-fri 08:00-20:00 20MiB/s; sat,sun 50MiB/s; 200MiB/s").unwrap();
        assert_eq!(s.rate_at(0, 8 * 60), 20 * MIB);
        assert_eq!(s.rate_at(4, 20 * 60 - 1), 20 * MIB);
        assert_eq!(s.rate_at(4, 20 * 60), 200 * MIB);
        assert_eq!(s.rate_at(2, 7 * 60 + 59), 200 * MIB);
        assert_eq!(s.rate_at(5, 12 * 60), 50 * MIB);
        assert_eq!(s.max_rate(), 200 * MIB);

        // Monday 2026-11-30, 19:59 in Berlin: 20 MiB/s until 20:00, then 200 MiB/s.
        let zone = berlin();
        let now = at("2026-11-30T19:59", &zone);
        assert_eq!(
            s.in_force(now, &zone),
            InForce { rate: 20 * MIB, next: Some((at("2026-11-30T20:00", &zone), 200 * MIB)) }
        );
        // Friday evening: the weekend's rate starts at midnight.
        let now = at("2026-12-04T21:00", &zone);
        assert_eq!(s.in_force(now, &zone).next, Some((at("2026-12-05T00:00", &zone), 50 * MIB)));
    }

    #[test]
    fn a_window_past_midnight_runs_into_the_next_day() {
        let s = Schedule::parse("fri 22:00-06:00 1MiB/s; 100MiB/s").unwrap();
        assert_eq!(s.rate_at(4, 23 * 60), MIB);
        assert_eq!(s.rate_at(5, 5 * 60), MIB, "saturday morning belongs to friday's window");
        assert_eq!(s.rate_at(5, 23 * 60), 100 * MIB);
        assert_eq!(s.rate_at(4, 5 * 60), 100 * MIB, "friday morning belongs to thursday, not in the rule");
        let s = Schedule::parse("sun 23:00-01:00 1MiB/s; 100MiB/s").unwrap();
        assert_eq!(s.rate_at(0, 30), MIB, "sunday's window wraps into monday");
    }

    #[test]
    fn windows_follow_daylight_saving_time() {
        // Berlin goes from UTC+1 to UTC+2 on 2027-03-28 at 02:00: 08:00 local is 06:00 UTC.
        let s = Schedule::parse("daily 08:00-20:00 1MiB/s; 100MiB/s").unwrap();
        let zone = berlin();
        let before = at("2027-03-28T01:00", &zone);
        let next = s.in_force(before, &zone).next.unwrap();
        assert_eq!(next, ("2027-03-28T06:00:00Z".parse().unwrap(), MIB));
        let next = s.in_force("2027-03-26T12:00:00Z".parse().unwrap(), &zone).next.unwrap();
        assert_eq!(next.0, "2027-03-26T19:00:00Z".parse::<Timestamp>().unwrap(), "20:00 at UTC+1");
    }

    #[test]
    fn errors_say_what_was_wrong() {
        let err = |t: &str| Schedule::parse(t).unwrap_err().to_string();
        assert!(err("mon-fri 08:00-20:00 20MiB/s").contains("must end with a rate alone"));
        assert!(err("100MiB/s; mon 1MiB/s").contains("must end with a rate alone"));
        assert!(err("100MiB/s; 1MiB/s").contains("must be the last rule"));
        assert!(err("monday 1MiB/s; 2MiB/s").contains("\"monday\" is not a day"));
        assert!(err("mon 8:00-20:00 1MiB/s; 2MiB/s").contains("not a window HH:MM-HH:MM"));
        assert!(err("mon 08:00-08:00 1MiB/s; 2MiB/s").contains("is empty or the whole day"));
        assert!(err("mon 08:00-25:00 1MiB/s; 2MiB/s").contains("not a window"));
        assert!(err("mon 08:00-20:00 fast; 2MiB/s").contains("is not a rate"));
        assert!(err(&"mon 1MiB/s;".repeat(40)).contains("more than 32 rules"));
        assert!(time_zone("Mars/Olympus").unwrap_err().to_string().contains("IANA name"));
        assert_eq!(Schedule::parse("100MiB/s").unwrap(), Schedule::flat(100 * MIB));
    }

    #[test]
    fn a_transfer_finishes_when_the_windows_have_carried_its_bytes() {
        let zone = berlin();
        let s = Schedule::parse("mon-fri 08:00-20:00 1MiB/s; 10MiB/s").unwrap();
        // Monday 19:59: one minute at 1 MiB/s (60 MiB), then 10 MiB/s.
        let now = at("2026-11-30T19:59", &zone);
        assert_eq!(s.finish(0, now, &zone), Some(now));
        assert_eq!(s.finish(30 * MIB, now, &zone), Some(at("2026-11-30T19:59:30", &zone)));
        assert_eq!(s.finish(60 * MIB, now, &zone), Some(at("2026-11-30T20:00", &zone)));
        assert_eq!(s.finish(160 * MIB, now, &zone), Some(at("2026-11-30T20:00:10", &zone)));
        // Through the night (12 h at 10 MiB/s) into Tuesday's window.
        let night = 12 * 3600 * 10 * MIB;
        assert_eq!(s.finish(60 * MIB + night + 90 * MIB, now, &zone), Some(at("2026-12-01T08:01:30", &zone)));
        // A flat rate: bytes over rate; a fraction of a second is rounded up to the nanosecond.
        let flat = Schedule::flat(3);
        let t0: Timestamp = "2026-11-30T00:00:00Z".parse().unwrap();
        assert_eq!(flat.finish(1, t0, &zone), Some("2026-11-30T00:00:00.333333334Z".parse().unwrap()));
        // Beyond a timestamp: no time.
        assert_eq!(Schedule::flat(1).finish(u64::MAX, t0, &zone), None);
    }

    fn rule() -> impl Strategy<Value = Rule> {
        let days = proptest::option::of(any::<[bool; 7]>().prop_filter("some day", |d| d.iter().any(|x| *x)));
        let window = proptest::option::of(
            (0u16..MINUTES_PER_DAY, 1u16..=MINUTES_PER_DAY)
                .prop_filter("not empty", |(s, e)| *s != *e % MINUTES_PER_DAY),
        );
        (days, window, 1u64..1 << 40)
            .prop_filter("not a rate alone", |(d, w, _)| d.is_some() || w.is_some())
            .prop_map(|(days, window, rate)| Rule { days, window, rate })
    }

    fn schedule() -> impl Strategy<Value = Schedule> {
        (proptest::collection::vec(rule(), 0..5), 1u64..1 << 40)
            .prop_map(|(rules, default)| Schedule { rules, default })
    }

    proptest! {
        #![proptest_config(fuzz::config(500))]

        /// Any text: a schedule or an error, never a panic; a schedule read prints as text that
        /// reads back as the same schedule.
        #[test]
        fn fuzz_schedule_text(text in "(((mon|tue|sat|sun|weekdays|daily|x)(,|-)?){0,3} ?([0-2][0-9]:[0-5][0-9]-[0-2][0-9]:[0-5][0-9] )?[0-9]{1,3}(MiB/s|Mbit/s|B)(; )?){1,4}|.{0,80}") {
            if let Ok(s) = Schedule::parse(&text) {
                prop_assert_eq!(Schedule::parse(&s.to_string()).unwrap(), s);
            }
        }

        /// Printed and read again, any schedule is itself.
        #[test]
        fn fuzz_schedule_round_trips(s in schedule()) {
            prop_assert_eq!(Schedule::parse(&s.to_string()).unwrap(), s);
        }
    }

    /// When `bytes` have crossed from `from`, walking minute by minute (the rate is constant
    /// within a wall-clock minute), up to `horizon`; `None` if not by then.
    fn finish_by_minutes(
        s: &Schedule,
        bytes: u64,
        from: Timestamp,
        zone: &TimeZone,
        horizon: Timestamp,
    ) -> Option<Timestamp> {
        let mut left = u128::from(bytes) * NANOS_PER_SEC;
        let mut t = from;
        while t < horizon {
            let rate = u128::from(s.rate_of(&t.to_zoned(zone.clone())));
            let second = t.as_second();
            let minute_end = second - second.rem_euclid(60) + 60;
            let end = Timestamp::from_second(minute_end).unwrap();
            let span = end.duration_since(t).as_nanos() as u128;
            if left.div_ceil(rate) <= span {
                return add_nanos(t, left.div_ceil(rate));
            }
            left -= span * rate;
            t = end;
        }
        None
    }

    proptest! {
        // Each case walks a week minute by minute.
        #![proptest_config(fuzz::config(24))]

        /// The rate holds from now until the change `in_force` announces, and that change is
        /// one (checked minute by minute, in a zone with daylight saving time).
        #[test]
        fn fuzz_next_change_is_the_first_change(s in schedule(), start in 1_700_000_000i64..1_900_000_000) {
            let zone = berlin();
            let now = Timestamp::from_second(start).unwrap();
            let found = s.in_force(now, &zone);
            let rate_at = |t: Timestamp| s.rate_of(&t.to_zoned(zone.clone()));
            prop_assert_eq!(found.rate, rate_at(now));
            let horizon = now.checked_add(jiff::SignedDuration::from_hours(7 * 24)).unwrap();
            let until = found.next.map_or(horizon, |(t, _)| t.min(horizon));
            // Minute boundaries after now, up to the change.
            let mut t = Timestamp::from_second(start - start.rem_euclid(60) + 60).unwrap();
            while t < until {
                prop_assert_eq!(rate_at(t), found.rate, "the rate changed at {} before the announced {:?}", t, found.next);
                t = t.checked_add(jiff::SignedDuration::from_mins(1)).unwrap();
            }
            if let Some((t, rate)) = found.next {
                prop_assert_eq!(rate_at(t), rate);
                prop_assert_ne!(rate, found.rate);
            }
        }

        /// A transfer's finish under a schedule is where walking the windows minute by minute
        /// gets to, to the nanosecond (or, past a few days' walk, later than that).
        #[test]
        fn fuzz_finish_agrees_with_walking_the_minutes(
            rules in proptest::collection::vec(rule(), 0..5),
            default in 1u64..1 << 20,
            bytes in 0u64..1 << 38,
            start in 1_700_000_000i64..1_900_000_000,
            nanos in 0i32..1_000_000_000,
        ) {
            // Rates up to 1 MiB/s, so that some transfers take days.
            let rules = rules.into_iter().map(|r| Rule { rate: r.rate % (1 << 20) + 1, ..r }).collect();
            let s = Schedule { rules, default };
            let zone = berlin();
            let from = Timestamp::new(start, nanos).unwrap();
            let horizon = from.checked_add(jiff::SignedDuration::from_hours(4 * 24)).unwrap();
            let walked = finish_by_minutes(&s, bytes, from, &zone, horizon);
            let found = s.finish(bytes, from, &zone);
            match walked {
                Some(w) => prop_assert_eq!(found, Some(w)),
                None => prop_assert!(found.is_none_or(|f| f >= horizon), "finish {:?} before the walk's horizon", found),
            }
        }
    }
}
