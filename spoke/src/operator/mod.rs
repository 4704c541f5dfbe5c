//! The Kubernetes operator: turns each `AqueductVolume` into a PersistentVolumeClaim of the
//! same name that pods mount read-only, served by Aqueduct's CSI node plugin.
//!
//! It runs inside the spoke when the config has an `[operator]` section, one active instance
//! per region: every spoke that runs it competes for a `coordination.k8s.io/v1` Lease
//! (`kube-lease-manager`), and only the holder runs the controller; one that loses the lease
//! stops its controller and releases its holds.
//!
//! - [`crd`]: the resource, derived from Rust types; `crdgen` prints its CRD.
//! - [`region`]: what the operator knows of the region ([`region::RegionView`]): versions,
//!   readiness, cached bytes, holds. The spoke's catalog and cache implement it.
//! - [`build`]: the pure steps (validate, build the PV and PVC, compute the status).
//! - [`reconcile`]: the pipeline, the finalizer, the error policy.
//!
//! No Kubernetes API server can run on the machines this is developed and tested on: the
//! tests run the pure steps on YAML fixtures and reconcile against a mocked API
//! (`tower-test`), and check the manifests with `jsonschema` and `kubernetes-validate`.

pub mod build;
pub mod crd;
pub mod reconcile;
pub mod region;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::runtime::Controller;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::crd::AqueductVolume;
use self::reconcile::Context;
use self::region::RegionView;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("the Kubernetes API failed or refused: {0}; retrying with backoff")]
    Kube(#[from] kube::Error),
    #[error("cannot build the volume's objects: {0}")]
    Build(#[from] build::BuildError),
    #[error("AqueductVolume {name:?} has no namespace; AqueductVolumes are namespaced")]
    NotNamespaced { name: String },
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<OperatorError>>),
    #[error(
        "cannot find the Kubernetes API (in-cluster config or KUBECONFIG): {0}; run the spoke in a pod with a service account, or remove [operator] from its config"
    )]
    Config(#[source] kube::Error),
    #[error("the operator stopped: {0}")]
    Stopped(&'static str),
    #[error(
        "leader election on Lease {namespace}/{name} failed: {source}; check that the spoke's service account may get, create and patch leases"
    )]
    Lease { namespace: String, name: String, source: kube_lease_manager::LeaseManagerError },
}

/// The `[operator]` section of the spoke's config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Run the operator (compete for the region's lease). Default true when the section is
    /// there.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The namespace whose AqueductVolumes to serve; default: every namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Lease the region's spokes compete for.
    #[serde(default = "default_lease")]
    pub lease_name: String,
    /// Where that Lease lives; default: the spoke's own namespace (its service account's).
    #[serde(default)]
    pub lease_namespace: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_lease() -> String {
    "aqueduct-operator".into()
}

/// How long a leader's lease lasts without renewal, and how long before expiry it renews.
const LEASE_SECONDS: u64 = 15;
const LEASE_GRACE_SECONDS: u64 = 5;

/// Runs the operator until `shutdown` fires: competes for the lease as `identity` (the node's
/// name, unique in the region) and runs the controller while it holds it.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    identity: &str,
    region: Arc<dyn RegionView>,
    shutdown: CancellationToken,
) -> Result<(), OperatorError> {
    let lease_namespace = config.lease_namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let lease_error =
        |source| OperatorError::Lease { namespace: lease_namespace.clone(), name: config.lease_name.clone(), source };
    // The lease manager reads (or creates) the Lease when built: retried while the API server
    // cannot be reached, so that a spoke started before it still comes to lead.
    let mut backoff = Duration::from_secs(1);
    let manager = loop {
        let built = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &config.lease_name)
            .with_namespace(&lease_namespace)
            .with_identity(identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .with_field_manager(build::MANAGER)
            .build()
            .await;
        match built {
            Ok(manager) => break manager,
            Err(e) => warn!(error = %lease_error(e), retry_in = ?backoff, "cannot start leader election"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    };
    let (mut leading, lease_task) = manager.watch().await;
    let ctx = Arc::new(Context::new(client.clone(), region.clone()));
    info!(lease = %config.lease_name, namespace = %lease_namespace, "operator waiting to lead the region");
    let outcome = while_leading(
        &mut leading,
        &shutdown,
        |stop| {
            info!(lease = %config.lease_name, "leading the region: serving AqueductVolumes");
            control(client.clone(), config.namespace.clone(), ctx.clone(), stop)
        },
        || {
            region.release_all();
            warn!(lease = %config.lease_name, "not leading the region: stopped serving AqueductVolumes");
        },
    )
    .await;
    region.release_all();
    // Closing the channel makes the lease task release the lease and end.
    drop(leading);
    match lease_task.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "could not release the lease"),
        Err(e) => warn!(error = %e, "the lease task failed"),
    }
    outcome.map_err(OperatorError::Stopped)
}

/// Runs `serve` while `leading` says this instance leads the region: starts it when the lead
/// is won, and when it is lost fires the token `serve` was given, waits for it to end and
/// calls `lost`; again for each lead won. Ends when `shutdown` fires (Ok), or with the reason
/// when the lease manager or `serve` stops by itself.
pub async fn while_leading<S, F>(
    leading: &mut watch::Receiver<bool>,
    shutdown: &CancellationToken,
    mut serve: S,
    mut lost: impl FnMut(),
) -> Result<(), &'static str>
where
    S: FnMut(CancellationToken) -> F,
    F: Future<Output = ()>,
{
    loop {
        tokio::select! {
            won = leading.wait_for(|leads| *leads) => if won.is_err() {
                return Err("the lease manager stopped");
            },
            _ = shutdown.cancelled() => return Ok(()),
        }
        let stop = CancellationToken::new();
        let serving = serve(stop.clone());
        tokio::pin!(serving);
        let ended = tokio::select! {
            _ = &mut serving => return Err("the controller ended"),
            still = leading.wait_for(|leads| !*leads) => still.is_err(),
            _ = shutdown.cancelled() => true,
        };
        stop.cancel();
        serving.await;
        if ended {
            return if shutdown.is_cancelled() { Ok(()) } else { Err("the lease manager stopped") };
        }
        lost();
    }
}

/// Runs the controller over the AqueductVolumes of `namespace` (or all) and the claims it
/// made, until `stop` fires.
pub async fn control(client: Client, namespace: Option<String>, ctx: Arc<Context>, stop: CancellationToken) {
    let (volumes, claims): (Api<AqueductVolume>, Api<PersistentVolumeClaim>) = match namespace.as_deref() {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client, ns)),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let ours = format!("{}={}", build::LABEL_MANAGED_BY, build::MANAGER);
    // Every volume again when the region's assignments change (a new active version, a
    // version gone), besides each volume's own requeue.
    let region_changed = ctx.region.changes();
    Controller::new(volumes, watcher::Config::default())
        .owns(claims, watcher::Config::default().labels(&ours))
        .reconcile_all_on(region_changed)
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|outcome| async move {
            match outcome {
                Ok((volume, _)) => debug!(volume = %volume, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile error (retried)"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use super::*;

    /// The controller runs only while the lease is held: started on each lead won, stopped
    /// (and the holds released) on each lead lost, stopped on shutdown.
    #[tokio::test]
    async fn serves_only_while_leading() {
        let (lease, mut leading) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let (started, stopped, lost) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let task = {
            let (started, stopped, lost, shutdown) = (started.clone(), stopped.clone(), lost.clone(), shutdown.clone());
            tokio::spawn(async move {
                while_leading(
                    &mut leading,
                    &shutdown,
                    |stop| {
                        started.fetch_add(1, SeqCst);
                        let stopped = stopped.clone();
                        async move {
                            stop.cancelled().await;
                            stopped.fetch_add(1, SeqCst);
                        }
                    },
                    || {
                        lost.fetch_add(1, SeqCst);
                    },
                )
                .await
            })
        };
        let count = |c: &Arc<AtomicUsize>| c.load(SeqCst);
        let settle = || tokio::time::sleep(Duration::from_millis(50));
        settle().await;
        assert_eq!(count(&started), 0, "not leading: not serving");
        lease.send(true).unwrap();
        settle().await;
        assert_eq!((count(&started), count(&stopped)), (1, 0));
        lease.send(false).unwrap();
        settle().await;
        assert_eq!((count(&started), count(&stopped), count(&lost)), (1, 1, 1));
        lease.send(true).unwrap();
        settle().await;
        assert_eq!(count(&started), 2);
        shutdown.cancel();
        assert_eq!(task.await.unwrap(), Ok(()));
        assert_eq!((count(&stopped), count(&lost)), (2, 1));

        // The lease manager gone while leading: the controller stops, the reason is given.
        let (lease, mut leading) = watch::channel(true);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(async move {
            while_leading(&mut leading, &shutdown, |stop| async move { stop.cancelled().await }, || {}).await
        });
        settle().await;
        drop(lease);
        assert_eq!(task.await.unwrap(), Err("the lease manager stopped"));
    }
}
