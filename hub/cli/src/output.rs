//! How `aq` shows things: tables in the style of `kubectl get`, human sizes and ages, the
//! output formats of every listing (`-o table|wide|json|yaml`, [`Format`], [`Listing`],
//! [`render`]) and progress (a bar on a terminal, a plain line otherwise).

use std::io::IsTerminal;
use std::str::FromStr;
use std::time::{Duration, Instant};

use aqueduct_proto::hub::v1::{SnapshotProgress, StatusRow};
use aqueduct_proto::{Phase, ReplicationMode};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<const N: usize>(header: [&str; N]) -> Self {
        Self { rows: vec![header.iter().map(|h| h.to_string()).collect()] }
    }

    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.to_vec());
    }

    /// Rows of cells, without the header.
    pub fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    /// The table as lines, columns aligned, each line ending with a newline.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        let mut text = String::new();
        for row in &self.rows {
            let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}", w = *w)).collect();
            text.push_str(line.join("   ").trim_end());
            text.push('\n');
        }
        text
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// How a listing is printed (`-o`): `table` (the default), `wide` (with the columns a
/// terminal hides: ids, roots, timestamps, reasons, node counts), `json` or `yaml` (the
/// listing's view structs, field names documented in the README).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Wide,
    Json,
    Yaml,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Table, Format::Wide, Format::Json, Format::Yaml];

    pub fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Wide => "wide",
            Format::Json => "json",
            Format::Yaml => "yaml",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not an output format: write table, wide, json or yaml")]
pub struct FormatError {
    pub input: String,
}

impl FromStr for Format {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| FormatError { input: s.to_string() })
    }
}

/// Something `aq` lists: serialized as it is for json and yaml, drawn as text for table and
/// wide.
pub trait Listing: serde::Serialize {
    /// The listing as people read it; `wide` adds the columns a terminal hides.
    fn text(&self, wide: bool) -> String;
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot write the listing as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write the listing as YAML: {0}")]
    Yaml(#[from] serde_saphyr::SerializeError),
}

/// A listing in `format`, ready for stdout.
pub fn render<L: Listing>(listing: &L, format: Format) -> Result<String, RenderError> {
    Ok(match format {
        Format::Table => listing.text(false),
        Format::Wide => listing.text(true),
        Format::Json => serde_json::to_string_pretty(listing)? + "\n",
        Format::Yaml => serde_saphyr::to_string(listing)?,
    })
}

/// An instant from the hub as RFC 3339 (UTC, milliseconds); None for 0 (not set), before
/// 1970 or past the year 9999.
pub fn rfc3339(unix_ms: i64) -> Option<String> {
    // 10000-01-01T00:00:00Z, which RFC 3339 cannot write.
    const END_MS: i64 = 253_402_300_800_000;
    let ms = u64::try_from(unix_ms).ok().filter(|&ms| ms > 0 && (ms as i64) < END_MS)?;
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(at).to_string())
}

/// 1536 -> "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// A phase as the hub sent it, as people read it (`Ready`); one this `aq` does not know says
/// so with its number.
pub fn phase_name(value: i32) -> String {
    Phase::from_wire(value).map_or_else(|_| format!("unknown ({value})"), |p| p.to_string())
}

/// A replication mode as the hub sent it (`every-node`).
pub fn mode_name(value: i32) -> String {
    ReplicationMode::from_wire(value).map_or_else(|_| format!("unknown ({value})"), |m| m.to_string())
}

/// Hits as a share of all lookups (`-` when there were none); counters as spokes report them.
pub fn hit_ratio(hits: u64, misses: u64) -> String {
    match hits.checked_add(misses) {
        Some(0) => "-".to_string(),
        Some(all) => format!("{:.1}%", hits as f64 * 100.0 / all as f64),
        None => format!("{:.1}%", hits as f64 * 100.0 / (hits as f64 + misses as f64)),
    }
}

/// Time since a unix-ms instant, kubectl style: 45s, 12m, 3h, 5d.
pub fn age(unix_ms: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    // An instant from the hub may be anything: no overflow, and the future is 0s.
    let s = (now.saturating_sub(unix_ms) / 1000).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Time until a unix-ms instant, kubectl style (`in 45s`, `in 3h`); `now` once it passed.
pub fn until(unix_ms: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let s = unix_ms.saturating_sub(now) / 1000;
    match s {
        i64::MIN..=0 => "now".to_string(),
        1..60 => format!("in {s}s"),
        60..3600 => format!("in {}m", s / 60),
        3600..86400 => format!("in {}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("in {}d{}h", s / 86400, s % 86400 / 3600),
    }
}

pub enum Reporter {
    Bar(ProgressBar),
    Lines { what: String, last: Instant },
}

pub fn progress_reporter(what: &str) -> Reporter {
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(format!("snapshot {what}"));
        Reporter::Bar(bar)
    } else {
        Reporter::Lines { what: what.to_string(), last: Instant::now() }
    }
}

impl Reporter {
    pub fn update(&mut self, p: &SnapshotProgress) {
        let done = p.bytes_hashed + p.bytes_reused;
        match self {
            Reporter::Bar(bar) => {
                bar.set_length(p.bytes_total);
                bar.set_position(done);
            }
            Reporter::Lines { what, last } => {
                if last.elapsed() >= Duration::from_secs(5) {
                    *last = Instant::now();
                    eprintln!(
                        "snapshot {what}: {}/{} files, {} of {} ({} reused unread)",
                        p.files_done,
                        p.files_total,
                        bytes(done),
                        bytes(p.bytes_total),
                        bytes(p.bytes_reused)
                    );
                }
            }
        }
    }

    pub fn finish(self) {
        if let Reporter::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Progress of a rollout, one bar per region on a terminal (bytes held of the total, rate,
/// phase), one line per region when its phase changes otherwise; on stderr.
pub struct RolloutProgress {
    what: String,
    bars: Option<(MultiProgress, Vec<(String, ProgressBar)>)>,
    /// Per region, the phase last shown.
    shown: std::collections::HashMap<String, String>,
}

impl RolloutProgress {
    pub fn new(what: &str, regions: &[String]) -> Self {
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::new();
            let style =
                ProgressStyle::with_template("{prefix:<24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                    .expect("valid template")
                    .progress_chars("=> ");
            let bars = regions
                .iter()
                .map(|r| {
                    let bar = multi.add(ProgressBar::new(0));
                    bar.set_style(style.clone());
                    bar.set_prefix(format!("{what} -> {r}"));
                    (r.clone(), bar)
                })
                .collect();
            (multi, bars)
        });
        Self { what: what.to_string(), bars, shown: Default::default() }
    }

    pub fn update(&mut self, row: &StatusRow) {
        let phase = match (row.active, row.reason.is_empty()) {
            (true, _) => "Active".to_string(),
            (false, true) => phase_name(row.phase),
            (false, false) => format!("{}: {}", phase_name(row.phase), row.reason),
        };
        let changed = self.shown.get(&row.region) != Some(&phase);
        match &self.bars {
            Some((_, bars)) => {
                if let Some((_, bar)) = bars.iter().find(|(r, _)| *r == row.region) {
                    bar.set_length(row.total_bytes);
                    bar.set_position(row.cached_bytes);
                    bar.set_message(phase.clone());
                }
            }
            None if changed => eprintln!(
                "{} -> {}: {} ({} of {})",
                self.what,
                row.region,
                phase,
                bytes(row.cached_bytes),
                bytes(row.total_bytes)
            ),
            None => {}
        }
        if changed {
            self.shown.insert(row.region.clone(), phase);
        }
    }

    pub fn finish(self) {
        if let Some((_, bars)) = self.bars {
            for (_, bar) in bars {
                bar.finish_and_clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_ratios_of_any_numbers() {
        assert_eq!(age(i64::MIN), format!("{}d", i64::MAX / 1000 / 86400));
        assert_eq!(age(i64::MAX), "0s");
        assert_eq!(hit_ratio(0, 0), "-");
        assert_eq!(hit_ratio(1, 3), "25.0%");
        assert_eq!(hit_ratio(u64::MAX, u64::MAX), "50.0%");
    }

    #[test]
    fn instants_as_rfc3339_when_they_can_be_written() {
        assert_eq!(rfc3339(1_764_480_000_123).as_deref(), Some("2025-11-30T05:20:00.123Z"));
        for unwritable in [0, -1, i64::MIN, i64::MAX, 253_402_300_800_000] {
            assert_eq!(rfc3339(unwritable), None, "{unwritable}");
        }
        assert!(rfc3339(253_402_300_799_999).is_some());
    }

    #[test]
    fn formats_read_back_as_written() {
        for format in Format::ALL {
            assert_eq!(format.to_string().parse::<Format>(), Ok(format));
        }
        let err = "xml".parse::<Format>().unwrap_err().to_string();
        assert!(err.contains("\"xml\"") && err.contains("table, wide, json or yaml"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(2000))]

        #[test]
        fn fuzz_output_format_from_any_text(text in "(?s).{0,12}|table|wide|json|yaml") {
            match text.parse::<Format>() {
                Ok(format) => proptest::prop_assert_eq!(format.name(), text.as_str()),
                Err(e) => proptest::prop_assert!(e.to_string().contains("table, wide, json or yaml")),
            }
        }

        #[test]
        fn fuzz_rfc3339_of_any_instant(ms in proptest::prelude::any::<i64>()) {
            if let Some(text) = rfc3339(ms) {
                // What it writes reads back as the same instant.
                let at = humantime::parse_rfc3339(&text).unwrap();
                let back = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
                proptest::prop_assert_eq!(back, ms as u128);
            }
        }
    }
}
