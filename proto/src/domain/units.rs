//! Human units for byte rates (`100MiB/s`, `50 MB/s`, `1.5GiB/s`, `400Mbit/s`, `400Mbps`) and
//! sizes (`64MiB`, `200GiB`, `1.5TB`).

use std::fmt;
use std::str::FromStr;

/// A byte rate, in bytes per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not a rate: write a number and a unit per second, e.g. 100MiB/s, 50MB/s, 1GiB/s or 400Mbit/s")]
pub struct RateError {
    pub input: String,
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || RateError { input: s.to_string() };
        let (number, unit) = number_and_unit(s).ok_or_else(err)?;
        let unit = unit.strip_suffix("/s").or_else(|| unit.strip_suffix("ps")).ok_or_else(err)?;
        let (scale, bits) = scale(unit).ok_or_else(err)?;
        let bytes = number * scale / if bits { 8.0 } else { 1.0 };
        if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
            return Err(err());
        }
        Ok(Rate(bytes.round() as u64))
    }
}

/// `12.5 MiB/s` -> (12.5, "MiB/s").
fn number_and_unit(s: &str) -> Option<(f64, &str)> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = t.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

/// What a unit multiplies by, and whether it counts bits.
fn scale(unit: &str) -> Option<(f64, bool)> {
    Some(match unit {
        "B" => (1.0, false),
        "KB" | "kB" => (1e3, false),
        "MB" => (1e6, false),
        "GB" => (1e9, false),
        "TB" => (1e12, false),
        "KiB" => (1024.0, false),
        "MiB" => (1024.0 * 1024.0, false),
        "GiB" => (1024.0 * 1024.0 * 1024.0, false),
        "TiB" => (1024.0 * 1024.0 * 1024.0 * 1024.0, false),
        "bit" | "b" => (1.0, true),
        "Kbit" | "kbit" | "Kb" | "kb" => (1e3, true),
        "Mbit" | "Mb" => (1e6, true),
        "Gbit" | "Gb" => (1e9, true),
        _ => return None,
    })
}

/// A size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not a size: write a number and a unit, e.g. 512MiB, 200GiB or 1.5TB")]
pub struct SizeError {
    pub input: String,
}

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SizeError { input: s.to_string() };
        let (number, unit) = number_and_unit(s).ok_or_else(err)?;
        let (scale, bits) = scale(unit).ok_or_else(err)?;
        let bytes = number * scale;
        if bits || !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(err());
        }
        Ok(Size(bytes.round() as u64))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        binary(f, self.0, &["B", "KiB", "MiB", "GiB", "TiB"])
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        binary(f, self.0, &["B/s", "KiB/s", "MiB/s", "GiB/s"])
    }
}

/// Writes `n` in the largest of `units` (powers of 1024) that keeps it at least 1, with one
/// decimal unless it is whole.
fn binary(f: &mut fmt::Formatter<'_>, n: u64, units: &[&str]) -> fmt::Result {
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 { write!(f, "{value:.0}{}", units[unit]) } else { write!(f, "{value:.1}{}", units[unit]) }
}

/// A duration with units: `500ms`, `90s`, `2m`, `1h`, or parts of them in a row (`1m30s`).
/// Overflow-safe: a duration too long for the clock (beyond about 584 billion years) is an
/// error, never a panic or a wrap.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, DurationError> {
    use std::time::Duration;
    let bad = || DurationError::NotADuration { input: text.to_string() };
    let too_long = || DurationError::TooLong { input: text.to_string() };
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, after) = rest.split_at(digits);
        // Digits only, so the one failure is a number beyond u64 (or none at all).
        let number: u64 = match number.parse() {
            Ok(n) => n,
            Err(_) if number.is_empty() => return Err(bad()),
            Err(_) => return Err(too_long()),
        };
        let unit_len = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let seconds = |scale: u64| number.checked_mul(scale).map(Duration::from_secs);
        let part = match unit {
            "ms" => Some(Duration::from_millis(number)),
            "s" => seconds(1),
            "m" => seconds(60),
            "h" => seconds(3600),
            _ => return Err(bad()),
        };
        total = part.and_then(|p| total.checked_add(p)).ok_or_else(too_long)?;
        rest = after;
    }
    Ok(total)
}

/// A duration as [`parse_duration`] reads it back: `1h30m`, `90s` (`1m30s`), `250ms`.
pub fn format_duration(d: std::time::Duration) -> String {
    let (mut secs, millis) = (d.as_secs(), d.subsec_millis());
    let mut text = String::new();
    for (unit, len) in [("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= len {
            text.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    if millis > 0 || text.is_empty() {
        text.push_str(&format!("{millis}ms"));
    }
    text
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("{input:?} is not a duration: write it with units, e.g. 500ms, 10s, 90s, 2m or 1m30s")]
    NotADuration { input: String },
    #[error(
        "{input:?} is too long a duration (not a duration the clock can hold): write at most a few days, e.g. 10s, 90s, 2m or 1h"
    )]
    TooLong { input: String },
}

#[cfg(test)]
mod duration_tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn durations_take_units_and_overflow_is_an_error() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
        for bad in ["", "90", "s", "1x", "1.5s", "-1s", "99999999999999999999s", "18446744073709551615h"] {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert!(err.contains("not a duration") && err.contains("10s"), "{bad:?}: {err}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
    }

    #[test]
    fn durations_too_long_for_the_clock_are_errors_that_say_so() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "90", "s", "1x", "1.5s", "-1s", "1s 2s", "1ms1", "1\u{0663}s"] {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert!(err.contains("not a duration") && err.contains("90s"), "{bad:?}: {err}");
        }
        // Numbers that overflow a u64 or the clock are errors, never a panic or a wrap.
        for huge in ["99999999999999999999s", "18446744073709551615h", "5124095576030432h", "18446744073709551615s1s"] {
            let err = parse_duration(huge).unwrap_err().to_string();
            assert!(err.contains("too long a duration"), "{huge:?}: {err}");
        }
        assert_eq!(parse_duration("18446744073709551615s"), Ok(Duration::from_secs(u64::MAX)));
    }

    proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(5000))]

        /// Any text: a duration or an error that quotes it, never a panic or an overflow.
        #[test]
        fn fuzz_durations_from_text(text in "( ?[0-9]{0,21}(ms|s|m|h|x|)){0,4} ?|.{0,12}") {
            match parse_duration(&text) {
                Ok(_) => {}
                Err(e) => prop_assert!(e.to_string().contains(&format!("{text:?}")), "{}", e),
            }
        }

        /// Parts in a row add up, exactly, up to the largest duration; beyond it, an error.
        #[test]
        fn fuzz_durations_add_up(parts in proptest::collection::vec((prop_oneof![0u64..100_000, any::<u64>()], 0usize..4), 1..4)) {
            let units = [("ms", 0), ("s", 1), ("m", 60), ("h", 3600)];
            let text: String = parts.iter().map(|&(n, u)| format!("{n}{}", units[u].0)).collect();
            let want = parts.iter().try_fold(Duration::ZERO, |total, &(n, u)| {
                let part = if u == 0 { Some(Duration::from_millis(n)) } else { n.checked_mul(units[u].1).map(Duration::from_secs) };
                total.checked_add(part?)
            });
            match (parse_duration(&text), want) {
                (Ok(got), Some(want)) => prop_assert_eq!(got, want),
                (Err(e), None) => prop_assert!(e.to_string().contains("too long"), "{}", e),
                (got, want) => prop_assert!(false, "{:?}: {:?}, not {:?}", text, got, want),
            }
        }
    }

    proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(1024))]

        #[test]
        fn fuzz_durations_never_panic(text in ".{0,24}") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn fuzz_durations_round_trip(ms in any::<u64>()) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!("100MiB/s".parse(), Ok(Rate(100 << 20)));
        assert_eq!("50 MB/s".parse(), Ok(Rate(50_000_000)));
        assert_eq!("1.5GiB/s".parse(), Ok(Rate(3 << 29)));
        assert_eq!("400Mbit/s".parse(), Ok(Rate(50_000_000)));
        assert_eq!("400Mbps".parse(), Ok(Rate(50_000_000)));
        assert_eq!(Rate(25 << 20).to_string(), "25MiB/s");
        for bad in ["", "100", "MiB/s", "100MiB", "-5MiB/s", "100XB/s", "0B/s", "1e3MB/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?} accepted");
        }
    }

    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    const UNITS: &[&str] = &[
        "B", "KB", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB", "bit", "b", "Kbit", "kbit", "Kb", "kb", "Mbit",
        "Mb", "Gbit", "Gb", "XB", "", "/s", "iB",
    ];

    /// Text shaped like a size or a rate (a number, maybe a space, a unit, maybe per second),
    /// or anything at all.
    fn text() -> impl Strategy<Value = String> {
        let number = prop_oneof!["[0-9]{1,25}", "[0-9]{0,5}\\.[0-9]{0,5}", "[0-9.]{1,6}", Just("1e3".to_string())];
        prop_oneof![
            4 => (number, " ?", proptest::sample::select(UNITS), prop_oneof![Just(""), Just("/s"), Just("ps"), Just("/h")])
                .prop_map(|(n, space, unit, per)| format!("{n}{space}{unit}{per}")),
            1 => ".{0,16}",
        ]
    }

    proptest! {
        #![proptest_config(fuzz::config(5000))]

        /// Any text: a value or an error that quotes it, never a panic or an overflow; a value
        /// is the number times its unit, rounded, and within the range of a u64.
        #[test]
        fn fuzz_sizes_and_rates_from_text(text in text()) {
            let quoted = format!("{text:?}");
            match text.parse::<Size>() {
                Ok(size) => {
                    let (number, unit) = number_and_unit(&text).unwrap();
                    let (scale, bits) = scale(unit).unwrap();
                    prop_assert!(!bits);
                    let want = number * scale;
                    prop_assert!((size.0 as f64 - want).abs() <= 0.5 + want * 1e-15, "{text:?}: {size:?}");
                }
                Err(e) => prop_assert!(e.to_string().contains(&quoted)),
            }
            match text.parse::<Rate>() {
                Ok(rate) => {
                    let (number, unit) = number_and_unit(&text).unwrap();
                    let unit = unit.strip_suffix("/s").or_else(|| unit.strip_suffix("ps")).unwrap();
                    let (scale, bits) = scale(unit).unwrap();
                    let want = number * scale / if bits { 8.0 } else { 1.0 };
                    prop_assert!(rate.0 >= 1 && (rate.0 as f64 - want).abs() <= 0.5 + want * 1e-15, "{text:?}: {rate:?}");
                }
                Err(e) => prop_assert!(e.to_string().contains(&quoted)),
            }
        }

        /// What a size or a rate prints parses back: exactly for a whole number of its unit,
        /// within the one decimal printed otherwise.
        #[test]
        fn fuzz_sizes_and_rates_round_trip(n in prop_oneof![any::<u64>(), 0u64..1 << 20, (0u64..1024, 0u32..5).prop_map(|(m, k)| m << (10 * k))]) {
            let size: Size = Size(n).to_string().parse().unwrap();
            let error = (size.0 as f64 - n as f64).abs();
            prop_assert!(error <= n as f64 * 0.05, "{n} printed as {} read as {}", Size(n), size.0);
            let whole = (0..5).any(|k| n.is_multiple_of(1 << (10 * k)) && n >> (10 * k) < 1024);
            if whole {
                prop_assert_eq!(size.0, n, "{}", Size(n));
            }
            if n >= 1 {
                let rate: Rate = Rate(n).to_string().parse().unwrap();
                prop_assert!((rate.0 as f64 - n as f64).abs() <= n as f64 * 0.05, "{} read as {}", Rate(n), rate.0);
                if whole && n < 1 << 40 {
                    prop_assert_eq!(rate.0, n);
                }
            }
        }
    }

    #[test]
    fn parses_sizes() {
        assert_eq!("64MiB".parse(), Ok(Size(64 << 20)));
        assert_eq!("1.5 GiB".parse(), Ok(Size(3 << 29)));
        assert_eq!("2TB".parse(), Ok(Size(2_000_000_000_000)));
        assert_eq!("0B".parse(), Ok(Size(0)));
        assert_eq!(Size(200 << 30).to_string(), "200GiB");
        for bad in ["", "100", "MiB", "-5MiB", "100XB", "8Mbit", "100MiB/s"] {
            assert!(bad.parse::<Size>().is_err(), "{bad:?} accepted");
        }
    }
}
