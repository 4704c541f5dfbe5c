//! Reconcile: one `AqueductVolume` at a time, as fetch -> validate -> build -> apply -> status.
//!
//! - fetch: the region's versions of the dataset ([`RegionView`]), the claim of the volume's
//!   name and the PV the volume would make, if they exist;
//! - validate and build: [`super::build`], pure;
//! - apply: the PV, then the PVC, by server-side apply with the one field manager
//!   [`MANAGER`], and a hold on the version in the region;
//! - status: computed by [`build::status`], applied to the status subresource.
//!
//! A finalizer ([`FINALIZER`]) makes deletion go through [`cleanup`]: delete the claim (if
//! ours) and the PV, release the hold; every step is idempotent. What is wrong with a spec
//! (unknown dataset or version, a claim of the same name that is not ours) becomes a condition
//! and a slow requeue, never an error: errors are for the API server being unreachable or
//! refusing, and are retried with backoff ([`error_policy`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Client, ResourceExt};
use tracing::{Span, debug, field, info, instrument, warn};

use super::OperatorError;
use super::build::{self, ClaimProblem, FINALIZER, MANAGER, Observation};
use super::crd::AqueductVolume;
use super::region::{Holding, RegionView};

/// When a volume is looked at again: Ready, still coming, or waiting on someone to fix it.
pub const REQUEUE_READY: Duration = Duration::from_secs(60);
pub const REQUEUE_TRANSFERRING: Duration = Duration::from_secs(10);
pub const REQUEUE_INVALID: Duration = Duration::from_secs(300);
/// Retries after an API error: doubling from the first to the last.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(2);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub region: Arc<dyn RegionView>,
    /// API errors in a row, per volume (`NAMESPACE/NAME`), for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, region: Arc<dyn RegionView>) -> Self {
        Self { client, region, failures: Mutex::default() }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reconciles one volume (the controller calls it; tests call it against a mocked API).
#[instrument(skip_all, fields(namespace = %aqv.namespace().unwrap_or_default(), name = %aqv.name_any(), dataset = %aqv.spec.dataset, version = field::Empty))]
pub async fn reconcile(aqv: Arc<AqueductVolume>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let namespace = aqv.namespace().ok_or_else(|| OperatorError::NotNamespaced { name: aqv.name_any() })?;
    let key = build::holder(&aqv);
    let api: Api<AqueductVolume> = Api::namespaced(ctx.client.clone(), &namespace);
    let action = finalizer(&api, FINALIZER, aqv, |event| async {
        match event {
            Event::Apply(aqv) => apply(&aqv, &ctx).await,
            Event::Cleanup(aqv) => cleanup(&aqv, &ctx).await,
        }
    })
    .await
    .map_err(|e| OperatorError::Finalizer(Box::new(e)))?;
    ctx.failures().remove(&key);
    Ok(action)
}

/// Brings the PV, the PVC, the hold and the status in line with the spec.
async fn apply(aqv: &AqueductVolume, ctx: &Context) -> Result<Action, OperatorError> {
    let name = aqv.name_any();
    let namespace = aqv.namespace().unwrap_or_default();
    let holder = build::holder(aqv);
    // Fetch and validate.
    let versions = ctx.region.versions(&aqv.spec.dataset);
    let tags = ctx.region.tags(&aqv.spec.dataset);
    let resolved = build::validate_tagged(aqv, &versions, &tags);
    let (holding, claim) = match &resolved {
        Err(invalid) => {
            info!(reason = invalid.reason(), problem = %invalid, "the volume cannot be served as its spec stands");
            ctx.region.release(&holder);
            (Holding::default(), None)
        }
        Ok(resolved) => {
            let v = &resolved.version;
            Span::current().record("version", v.version);
            // Build, then look at what is there: a claim of that name that is not ours is
            // left alone, and so is a PV whose (immutable) source the spec no longer matches.
            let (pv, pvc) = build::build(aqv)?;
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
            let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
            let pv_name = pv.name_any();
            let mut claim = match pvcs.get_opt(&name).await? {
                Some(existing) if !build::owns(aqv, &existing) => {
                    Some(ClaimProblem::Conflict { namespace: namespace.clone(), name: name.clone() })
                }
                _ => None,
            };
            if claim.is_none()
                && let Some(existing) = pvs.get_opt(&pv_name).await?
            {
                claim = build::changed_source(aqv, &existing);
            }
            match &claim {
                Some(problem) => info!(reason = problem.reason(), %problem, "not applying the claim"),
                None => {
                    let params = PatchParams::apply(MANAGER).force();
                    pvs.patch(&pv_name, &params, &Patch::Apply(&pv)).await?;
                    pvcs.patch(&name, &params, &Patch::Apply(&pvc)).await?;
                    ctx.region.hold(&holder, &v.dataset, v.version);
                    debug!(pv = %pv_name, "applied the PersistentVolume and its claim");
                }
            }
            (ctx.region.holding(&v.dataset, v.version).await, claim)
        }
    };
    // Status.
    let seen = Observation { resolved, holding, capacity: ctx.region.cache_capacity(), claim };
    let status = build::status(aqv, &seen, &Time(k8s_openapi::jiff::Timestamp::now()));
    let api: Api<AqueductVolume> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": "aqueduct.io/v1alpha1",
        "kind": "AqueductVolume",
        "status": status,
    });
    api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(match (&seen.resolved, &seen.claim, seen.holding.ready) {
        (Err(_), _, _) | (_, Some(_), _) => Action::requeue(REQUEUE_INVALID),
        (_, None, true) => Action::requeue(REQUEUE_READY),
        (_, None, false) => Action::requeue(REQUEUE_TRANSFERRING),
    })
}

/// Deletes what the volume made and releases its hold. Idempotent: what is gone already is
/// fine, and a claim that is not ours is never deleted.
pub async fn cleanup(aqv: &AqueductVolume, ctx: &Context) -> Result<Action, OperatorError> {
    let name = aqv.name_any();
    let namespace = aqv.namespace().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Some(pvc) = pvcs.get_opt(&name).await?
        && build::owns(aqv, &pvc)
    {
        ignore_missing(pvcs.delete(&name, &DeleteParams::default()).await.map(drop))?;
    }
    if let Ok(pv_name) = build::pv_name(aqv) {
        let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
        ignore_missing(pvs.delete(&pv_name, &DeleteParams::default()).await.map(drop))?;
    }
    ctx.region.release(&build::holder(aqv));
    info!("deleted the volume's claim and PersistentVolume, released its version");
    Ok(Action::await_change())
}

fn ignore_missing(result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other,
    }
}

/// After an error (the API server unreachable or refusing): try again later, doubling the
/// wait per volume while the errors go on.
pub fn error_policy(aqv: Arc<AqueductVolume>, error: &OperatorError, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures();
    let n = failures.entry(build::holder(&aqv)).or_default();
    *n = n.saturating_add(1);
    let delay = BACKOFF_FIRST.saturating_mul(1 << (*n - 1).min(16)).min(BACKOFF_MAX);
    warn!(volume = %build::holder(&aqv), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
