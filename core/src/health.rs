//! Whether hub and spoke are alive and ready, and how they say so: `/healthz` and `/readyz`
//! on the HTTP listener of [`metrics`](crate::metrics), and the standard gRPC health service
//! (`grpc.health.v1.Health`, from `tonic-health`) on their gRPC APIs.
//!
//! Each binary runs one check loop ([`run`]): every [`CHECK_EVERY`] it asks its own checks
//! (a database query, a source's reachability, the hub session, a probe file in the store)
//! and records the outcome in [`Health`]. Probes only read what the loop recorded: a probe
//! hit never queries a database or a source, however often the kubelet asks.
//!
//! The decisions are pure functions: [`readiness`] (ready when every check passed; otherwise
//! a short text naming what is not ready and why) and [`liveness`] (alive while the check
//! loop keeps turning: its last round is younger than a bound). The gRPC health service
//! follows readiness: SERVING when ready, NOT_SERVING otherwise, for the server as a whole
//! (service name `""`) and for each service the binary names.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::metrics::Probes;

/// How often the check loop runs.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How old the loop's last round may be before `/healthz` says the process is stuck: long
/// enough for a slow round (a source's check is bounded by its own timeout, a few seconds).
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// One thing readiness depends on, and how it was when last checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked, as the `/readyz` body names it: `database`, `source s3-models`, `hub`.
    pub name: String,
    /// Why it is not ready; `None`: it is.
    pub problem: Option<String>,
}

impl Check {
    pub fn ok(name: impl Into<String>) -> Self {
        Self { name: name.into(), problem: None }
    }

    pub fn failed(name: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { name: name.into(), problem: Some(problem.into()) }
    }

    /// `Ok` or the check's problem, as a result.
    pub fn result(&self) -> Result<(), String> {
        match &self.problem {
            None => Ok(()),
            Some(p) => Err(format!("{}: {p}", self.name)),
        }
    }
}

/// Ready when every check passed (and there was a round at all); otherwise the text `/readyz`
/// answers with: one line per check that failed, `NAME: WHY`.
pub fn readiness(checks: Option<&[Check]>) -> Result<(), String> {
    let Some(checks) = checks else {
        return Err("not checked yet: the process is starting".into());
    };
    let failed: Vec<String> = checks.iter().filter_map(|c| c.result().err()).collect();
    if failed.is_empty() { Ok(()) } else { Err(failed.join("\n")) }
}

/// Alive while the check loop's last round (`last`, at `started` if none yet) is no older than
/// `stale_after` at `now`.
pub fn liveness(started: Instant, last: Option<Instant>, now: Instant, stale_after: Duration) -> Result<(), String> {
    let since = last.unwrap_or(started);
    let age = now.saturating_duration_since(since);
    if age <= stale_after {
        Ok(())
    } else {
        Err(format!(
            "the check loop has not turned for {}s (bound {}s): the process is stuck",
            age.as_secs(),
            stale_after.as_secs()
        ))
    }
}

/// What the check loop last found, read by the probes; and the gRPC health service it keeps
/// in step.
pub struct Health {
    started: Instant,
    stale_after: Duration,
    last: Mutex<Option<(Instant, Vec<Check>)>>,
    reporter: HealthReporter,
    /// The gRPC services whose status follows readiness (besides `""`, the whole server).
    services: Vec<&'static str>,
}

impl Health {
    /// Not ready until the first round; `services` are the gRPC service names (e.g.
    /// `aqueduct.hub.v1.Spoke`) whose health status follows readiness.
    pub async fn new(services: Vec<&'static str>) -> Arc<Self> {
        // tonic-health starts the server as SERVING: not before the first round here.
        let reporter = HealthReporter::new();
        reporter.set_service_status("", ServingStatus::NotServing).await;
        for service in &services {
            reporter.set_service_status(service, ServingStatus::NotServing).await;
        }
        Arc::new(Self { started: Instant::now(), stale_after: STALE_AFTER, last: Mutex::new(None), reporter, services })
    }

    /// The `grpc.health.v1.Health` service, to add to a tonic server.
    pub fn grpc_service(
        &self,
    ) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
        let service = tonic_health::server::HealthService::from_health_reporter(self.reporter.clone());
        tonic_health::pb::health_server::HealthServer::new(service)
    }

    /// Records a round of checks and brings the gRPC statuses in step.
    pub async fn record(&self, checks: Vec<Check>) {
        let before = self.ready().is_ok();
        let first = self.last.lock().unwrap_or_else(|e| e.into_inner()).is_none();
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), checks));
        let now = self.ready();
        if first || before != now.is_ok() {
            match &now {
                Ok(()) => info!("ready"),
                Err(why) => warn!(why = %why.replace('\n', "; "), "not ready"),
            }
            let status = if now.is_ok() { ServingStatus::Serving } else { ServingStatus::NotServing };
            self.reporter.set_service_status("", status).await;
            for service in &self.services {
                self.reporter.set_service_status(service, status).await;
            }
        }
    }

    /// The last round's check named `name`, if there was one.
    pub fn check(&self, name: &str) -> Option<Check> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref().and_then(|(_, checks)| checks.iter().find(|c| c.name == name).cloned())
    }

    pub fn ready(&self) -> Result<(), String> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        readiness(last.as_ref().map(|(_, checks)| checks.as_slice()))
    }

    pub fn alive(&self) -> Result<(), String> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(at, _)| *at);
        liveness(self.started, last, Instant::now(), self.stale_after)
    }
}

impl Probes for Health {
    fn live(&self) -> Result<(), String> {
        self.alive()
    }

    fn ready(&self) -> Result<(), String> {
        Health::ready(self)
    }
}

/// What a binary checks each round.
pub trait Checks: Send {
    /// One round: every check, each bounded in time by the implementation.
    fn round(&mut self) -> impl Future<Output = Vec<Check>> + Send;
}

/// Runs `checks` every [`CHECK_EVERY`] and records each round in `health`, until `shutdown`
/// fires; then says NOT_SERVING, so that a gRPC client sees the server going.
pub async fn run(health: Arc<Health>, mut checks: impl Checks, shutdown: CancellationToken) {
    loop {
        let round = tokio::select! {
            round = checks.round() => round,
            _ = shutdown.cancelled() => break,
        };
        health.record(round).await;
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    health.record(vec![Check::failed("process", "shutting down")]).await;
}

/// When each named thing was last checked, so that a costly check (a source over the network)
/// runs at most once per `ttl` however often the loop turns.
#[derive(Debug)]
pub struct Cached {
    ttl: Duration,
    last: std::collections::HashMap<String, (Instant, Check)>,
}

impl Cached {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, last: Default::default() }
    }

    /// The cached check of `name` while it is younger than the ttl at `now`; `None`: due.
    pub fn fresh(&self, name: &str, now: Instant) -> Option<Check> {
        self.last.get(name).filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl).map(|(_, c)| c.clone())
    }

    pub fn store(&mut self, check: Check, now: Instant) {
        self.last.insert(check.name.clone(), (now, check));
    }

    /// Forgets every name not in `keep` (things that are gone).
    pub fn retain(&mut self, keep: &[String]) {
        self.last.retain(|name, _| keep.contains(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passed_and_the_body_names_each_failure() {
        assert!(readiness(None).unwrap_err().contains("not checked yet"));
        assert_eq!(readiness(Some(&[])), Ok(()));
        assert_eq!(readiness(Some(&[Check::ok("database"), Check::ok("source a")])), Ok(()));
        let why = readiness(Some(&[
            Check::ok("database"),
            Check::failed("source a", "connection refused"),
            Check::failed("source b", "access denied"),
        ]))
        .unwrap_err();
        assert_eq!(why, "source a: connection refused\nsource b: access denied");
    }

    #[test]
    fn alive_while_the_loop_turns() {
        let t0 = Instant::now();
        let bound = Duration::from_secs(30);
        assert!(liveness(t0, None, t0 + Duration::from_secs(29), bound).is_ok(), "starting");
        assert!(liveness(t0, None, t0 + Duration::from_secs(31), bound).is_err(), "never turned");
        let last = t0 + Duration::from_secs(100);
        assert!(liveness(t0, Some(last), last + Duration::from_secs(30), bound).is_ok());
        let stuck = liveness(t0, Some(last), last + Duration::from_secs(45), bound).unwrap_err();
        assert!(stuck.contains("45s"), "{stuck}");
    }

    #[test]
    fn a_cached_check_is_reused_until_its_ttl_and_gone_names_are_forgotten() {
        let mut cache = Cached::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(cache.fresh("source a", t0), None);
        cache.store(Check::failed("source a", "down"), t0);
        assert_eq!(cache.fresh("source a", t0 + Duration::from_secs(4)), Some(Check::failed("source a", "down")));
        assert_eq!(cache.fresh("source a", t0 + Duration::from_secs(5)), None, "due again");
        cache.retain(&[]);
        assert_eq!(cache.fresh("source a", t0), None);
    }

    #[tokio::test]
    async fn the_grpc_status_follows_readiness() {
        use tonic_health::pb::health_server::Health as _;
        let health = Health::new(vec!["test.v1.Thing"]).await;
        let service = tonic_health::server::HealthService::from_health_reporter(health.reporter.clone());
        let status = async |name: &str| {
            let request = tonic::Request::new(tonic_health::pb::HealthCheckRequest { service: name.into() });
            service.check(request).await.map(|r| r.into_inner().status)
        };
        use tonic_health::pb::health_check_response::ServingStatus as S;
        assert!(health.ready().is_err());
        assert_eq!(status("").await.unwrap(), S::NotServing as i32, "before the first round");
        health.record(vec![Check::failed("hub", "not connected")]).await;
        assert_eq!(status("").await.unwrap(), S::NotServing as i32);
        assert_eq!(status("test.v1.Thing").await.unwrap(), S::NotServing as i32);
        health.record(vec![Check::ok("hub")]).await;
        assert_eq!(status("").await.unwrap(), S::Serving as i32);
        assert_eq!(status("test.v1.Thing").await.unwrap(), S::Serving as i32);
        assert_eq!(health.check("hub"), Some(Check::ok("hub")));
        assert!(health.alive().is_ok());
    }
}
