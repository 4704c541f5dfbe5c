//! How `aq` shows things: tables in the style of `kubectl get`, human sizes and ages, and
//! progress (a bar on a terminal, a plain line every few seconds otherwise).

use std::io::IsTerminal;
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

    pub fn print(&self) {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        for row in &self.rows {
            let line: Vec<String> =
                row.iter().enumerate().map(|(i, cell)| format!("{cell:<w$}", w = widths[i])).collect();
            println!("{}", line.join("   ").trim_end());
        }
    }
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

/// Progress of a rollout, one bar per region on a terminal, a line per region every few
/// seconds otherwise.
pub struct RolloutProgress {
    what: String,
    bars: Option<(MultiProgress, Vec<(String, ProgressBar)>)>,
    last: std::collections::HashMap<String, Instant>,
}

impl RolloutProgress {
    pub fn new(what: &str, regions: &[String]) -> Self {
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::new();
            let style = ProgressStyle::with_template("{msg:<24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("valid template")
                .progress_chars("=> ");
            let bars = regions
                .iter()
                .map(|r| {
                    let bar = multi.add(ProgressBar::new(0));
                    bar.set_style(style.clone());
                    bar.set_message(format!("{what} -> {r}"));
                    (r.clone(), bar)
                })
                .collect();
            (multi, bars)
        });
        Self { what: what.to_string(), bars, last: Default::default() }
    }

    pub fn update(&mut self, row: &StatusRow) {
        match &self.bars {
            Some((_, bars)) => {
                if let Some((_, bar)) = bars.iter().find(|(r, _)| *r == row.region) {
                    bar.set_length(row.total_bytes);
                    bar.set_position(row.cached_bytes);
                }
            }
            None => {
                let last = self.last.entry(row.region.clone()).or_insert_with(Instant::now);
                if last.elapsed() >= Duration::from_secs(3) {
                    *last = Instant::now();
                    eprintln!(
                        "{} -> {}: {} of {}, {}",
                        self.what,
                        row.region,
                        bytes(row.cached_bytes),
                        bytes(row.total_bytes),
                        phase_name(row.phase)
                    );
                }
            }
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
}
