//! `--wait`: polling the hub's status until regions reach what a command asked for, a row
//! fails, or time runs out; with per-region progress on stderr.
//!
//! [`judge`] decides from one status answer (pure, unit-tested); [`wait`] polls it about every
//! 500 ms and turns the outcome into `aq`'s exit codes ([`crate::exit`]): Ok, or an error that
//! ends `aq` with 3 (a region's row Failed, named with its reason) or 4 (timed out, saying
//! where each region stands). `aq rollout --wait` waits for [`Until::Ready`]; promote and
//! rollback wait for [`Until::Serving`].

use std::time::{Duration, Instant};

use anyhow::Result;
use aqueduct_proto::Phase;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use aqueduct_proto::parse_duration;
use clap::Args;
use tonic::transport::Channel;

use crate::connect::{HubConn, explain};
use crate::exit::{Exit, Exited};
use crate::output::{RolloutProgress, bytes, phase_name};

/// How often the status is asked for.
pub const POLL: Duration = Duration::from_millis(500);

/// What to wait for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Until {
    /// The version's row is Ready (or served) in every named region.
    Ready { dataset: String, version: u64, regions: Vec<String> },
    /// Every named region serves the version (the status's `serving`).
    Serving { dataset: String, version: u64, regions: Vec<String> },
}

impl Until {
    fn parts(&self) -> (&str, u64, &[String]) {
        match self {
            Until::Ready { dataset, version, regions } | Until::Serving { dataset, version, regions } => {
                (dataset, *version, regions)
            }
        }
    }

    /// `llama@v2 to be Ready`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Until::Ready { dataset, version, .. } => format!("{dataset}@v{version} to be Ready"),
            Until::Serving { dataset, version, .. } => format!("{dataset}@v{version} to be served"),
        }
    }

    /// What a wait that ended well says: `llama@v2 is Ready in eu, us (after 1m30s)`.
    pub fn reached(&self, after: Duration) -> String {
        let (dataset, version, regions) = self.parts();
        let state = match self {
            Until::Ready { .. } => "Ready",
            Until::Serving { .. } => "served",
        };
        let after = aqueduct_proto::format_duration(Duration::from_millis(after.as_millis() as u64));
        format!("{dataset}@v{version} is {state} in {} (after {after})", regions.join(", "))
    }
}

/// Where one region stands, for the timeout's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub region: String,
    /// Reached what was waited for.
    pub done: bool,
    /// What the status says, in words.
    pub detail: String,
}

/// What one status answer says about a wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Every region reached it.
    Reached,
    /// These regions' rows are Failed: (region, reason).
    Failed(Vec<(String, String)>),
    /// Still waiting; where each region stands.
    Waiting(Vec<Standing>),
}

/// Decides a wait from one status answer.
pub fn judge(until: &Until, status: &pb::StatusResponse) -> Judgement {
    let (dataset, version, regions) = until.parts();
    let mut failed = Vec::new();
    let mut standings = Vec::new();
    for region in regions {
        let row = status.rows.iter().find(|r| r.dataset == dataset && r.version == version && r.region == *region);
        let serves = status.serving.iter().find(|s| s.dataset == dataset && s.region == *region).map(|s| s.version);
        let phase = row.and_then(|r| Phase::from_wire(r.phase).ok());
        if phase == Some(Phase::Failed) {
            failed.push((region.clone(), row.map(|r| r.reason.clone()).unwrap_or_default()));
            continue;
        }
        let done = match until {
            Until::Ready { .. } => phase == Some(Phase::Ready) || row.is_some_and(|r| r.active),
            Until::Serving { .. } => serves == Some(version),
        };
        let detail = match row {
            None => format!("no row for v{version} yet"),
            Some(r) => {
                let phase = if r.active { "Active".to_string() } else { phase_name(r.phase) };
                format!("{phase}, {} of {}", bytes(r.cached_bytes), bytes(r.total_bytes))
            }
        };
        let detail = match (until, serves) {
            (Until::Serving { .. }, Some(v)) => format!("{detail}; serves v{v}"),
            (Until::Serving { .. }, None) => format!("{detail}; serves nothing"),
            _ => detail,
        };
        standings.push(Standing { region: region.clone(), done, detail });
    }
    if !failed.is_empty() {
        Judgement::Failed(failed)
    } else if standings.iter().all(|s| s.done) {
        Judgement::Reached
    } else {
        Judgement::Waiting(standings)
    }
}

/// The error that ends `aq` with 3: the failed regions and why.
pub fn failed_error(until: &Until, failed: &[(String, String)]) -> Exited {
    let (dataset, version, _) = until.parts();
    let regions: Vec<String> = failed.iter().map(|(region, reason)| format!("in {region}: {reason}")).collect();
    Exited::new(Exit::Failed, format!("{dataset}@v{version} failed {}", regions.join("; ")))
}

/// The error that ends `aq` with 4: where each region stands.
pub fn timeout_error(until: &Until, timeout: Duration, standings: &[Standing]) -> Exited {
    let regions: Vec<String> = standings
        .iter()
        .map(|s| format!("{}: {}{}", s.region, s.detail, if s.done { " (done)" } else { "" }))
        .collect();
    Exited::new(
        Exit::TimedOut,
        format!(
            "timed out after {} waiting for {}: {}",
            aqueduct_proto::format_duration(timeout),
            until.describe(),
            regions.join("; ")
        ),
    )
}

/// Polls the hub's status every [`POLL`] until `until` is reached (Ok, with how long it
/// took), a row fails or `timeout` passes (errors that end `aq` with 3 and 4), showing
/// progress on stderr. A hub that cannot be reached for a moment is asked again; an answer
/// that refuses is an error.
pub async fn wait(
    admin: &mut AdminClient<Channel>,
    hub: &HubConn,
    until: &Until,
    timeout: Duration,
) -> Result<Duration> {
    let (dataset, version, regions) = until.parts();
    let started = Instant::now();
    let mut progress = RolloutProgress::new(&format!("{dataset}@v{version}"), regions);
    let outcome = loop {
        let standings = match admin.status(pb::StatusRequest { dataset: dataset.to_string() }).await {
            Ok(status) => {
                let status = status.into_inner();
                for row in status.rows.iter().filter(|r| r.dataset == dataset && r.version == version) {
                    progress.update(row);
                }
                match judge(until, &status) {
                    Judgement::Reached => break Ok(started.elapsed()),
                    Judgement::Failed(failed) => break Err(failed_error(until, &failed).into()),
                    Judgement::Waiting(standings) => standings,
                }
            }
            // The transport's own errors (the hub restarting): ask again.
            Err(status) if std::error::Error::source(&status).is_some() => {
                vec![Standing { region: "hub".into(), done: false, detail: explain(status, hub).to_string() }]
            }
            Err(status) => break Err(explain(status, hub)),
        };
        if started.elapsed() >= timeout {
            break Err(timeout_error(until, timeout, &standings).into());
        }
        tokio::time::sleep(POLL.min(timeout.saturating_sub(started.elapsed()))).await;
    };
    progress.finish();
    outcome
}

/// `--wait` and its timeout: flattened into every command that can wait (one wait loop,
/// `aqueduct_cli::wait`).
#[derive(Args)]
pub struct WaitArgs {
    /// Wait until every region named has got there (aq rollout: the version is Ready in each),
    /// showing each region's progress on stderr (bars on a terminal, a line per phase change
    /// otherwise). Exits 0 once they have, 3 when a region's row is Failed (naming region and
    /// reason), 4 on --timeout (saying where each region stands).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. 90s, 10m, 2h.
    #[arg(long, value_parser = parse_duration, default_value = "1h", requires = "wait")]
    pub timeout: Duration,
}

impl WaitArgs {
    /// With --wait: waits for `until`, then says so on stdout.
    pub async fn wait(&self, admin: &mut AdminClient<Channel>, hub: &HubConn, until: Until) -> Result<()> {
        if self.wait {
            let took = wait(admin, hub, &until, self.timeout).await?;
            println!("{}", until.reached(took));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(region: &str, version: u64, phase: Phase, active: bool) -> pb::StatusRow {
        pb::StatusRow {
            dataset: "llama".into(),
            version,
            region: region.into(),
            total_bytes: 2 << 20,
            cached_bytes: 1 << 20,
            phase: phase.to_wire(),
            reason: if phase == Phase::Failed { "source changed".into() } else { String::new() },
            active,
            ..Default::default()
        }
    }

    fn serving(region: &str, version: u64) -> pb::Serving {
        pb::Serving { dataset: "llama".into(), region: region.into(), version, since_unix_ms: 1, previous: 0 }
    }

    fn ready(regions: &[&str]) -> Until {
        Until::Ready { dataset: "llama".into(), version: 2, regions: regions.iter().map(|r| r.to_string()).collect() }
    }

    #[test]
    fn ready_in_every_named_region_and_only_then() {
        let status = pb::StatusResponse {
            rows: vec![
                row("eu", 2, Phase::Ready, false),
                row("us", 2, Phase::Transferring, false),
                row("us", 1, Phase::Ready, true),
            ],
            ..Default::default()
        };
        assert_eq!(judge(&ready(&["eu"]), &status), Judgement::Reached);
        let Judgement::Waiting(standings) = judge(&ready(&["eu", "us", "ap"]), &status) else { panic!() };
        let done: Vec<(&str, bool)> = standings.iter().map(|s| (s.region.as_str(), s.done)).collect();
        assert_eq!(done, [("eu", true), ("us", false), ("ap", false)]);
        assert_eq!(standings[1].detail, "Transferring, 1.0 MiB of 2.0 MiB");
        assert_eq!(standings[2].detail, "no row for v2 yet");
        let message = timeout_error(&ready(&["eu", "us"]), Duration::from_secs(90), &standings).to_string();
        assert!(message.starts_with("timed out after 1m30s waiting for llama@v2 to be Ready"), "{message}");
        assert!(message.contains("us: Transferring"), "{message}");
        // An active row is Ready.
        let active = pb::StatusResponse { rows: vec![row("eu", 2, Phase::Pending, true)], ..Default::default() };
        assert_eq!(judge(&ready(&["eu"]), &active), Judgement::Reached);
    }

    #[test]
    fn a_failed_row_ends_the_wait_with_its_region_and_reason() {
        let status = pb::StatusResponse {
            rows: vec![row("eu", 2, Phase::Failed, false), row("us", 2, Phase::Ready, false)],
            ..Default::default()
        };
        let until = ready(&["eu", "us"]);
        let Judgement::Failed(failed) = judge(&until, &status) else { panic!() };
        let err = failed_error(&until, &failed);
        assert_eq!(err.exit, Exit::Failed);
        assert_eq!(err.to_string(), "llama@v2 failed in eu: source changed");
        // A failed row of another version or region is not waited for.
        assert_eq!(judge(&ready(&["us"]), &status), Judgement::Reached);
    }

    #[test]
    fn serving_waits_for_the_regions_to_serve_the_version() {
        let until = Until::Serving { dataset: "llama".into(), version: 1, regions: vec!["eu".into(), "us".into()] };
        let mut status = pb::StatusResponse {
            rows: vec![row("eu", 1, Phase::Ready, true), row("us", 1, Phase::Ready, false)],
            serving: vec![serving("eu", 1), serving("us", 2)],
            ..Default::default()
        };
        let Judgement::Waiting(standings) = judge(&until, &status) else { panic!() };
        assert_eq!(standings[1].detail, "Ready, 1.0 MiB of 2.0 MiB; serves v2");
        status.serving[1].version = 1;
        assert_eq!(judge(&until, &status), Judgement::Reached);
        assert_eq!(until.reached(Duration::from_millis(90_500)), "llama@v1 is served in eu, us (after 1m30s500ms)");
    }
}
