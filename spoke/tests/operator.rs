//! The operator without a Kubernetes API server (none can run on the machines these tests run
//! on): the committed CRD against `crdgen`, the pure build step on YAML fixtures
//! (`tests/fixtures/operator/`), reconcile against a scripted mock of the API server
//! (`tower-test`), and the manifests against their schemas (`scripts/validate-manifests.py`,
//! with the Python packages `jsonschema` and `kubernetes-validate`).
//!
//! Regenerate the expected PV and PVC fixtures after a deliberate change with
//! `UPDATE_FIXTURES=1 cargo nextest run -p aqueduct-spoke --test operator`, and read the diff.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aqueduct_spoke::operator::build::{self, Observation};
use aqueduct_spoke::operator::crd::{self, AqueductVolume, Phase};
use aqueduct_spoke::operator::reconcile::{self, Context};
use aqueduct_spoke::operator::region::{MemoryRegion, RegionView};
use http::{Request, Response};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

const GIB: u64 = 1 << 30;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/operator")
}

fn volume(name: &str) -> AqueductVolume {
    let text = std::fs::read_to_string(fixtures().join(format!("{name}.yaml"))).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("fixture {name}.yaml: {e}"))
}

/// The test region: llama-3-8b v1 active and Ready (1 GiB), v2 rolling out (2 GiB, a quarter
/// cached); `fresh` v1 rolling out, nothing active yet.
fn region() -> MemoryRegion {
    MemoryRegion { capacity: Some(200 * GIB), ..Default::default() }
        .with_version("llama-3-8b", 1, GIB, true, GIB)
        .with_version("llama-3-8b", 2, 2 * GIB, false, GIB / 2)
        .with_version("fresh", 1, GIB, false, 0)
}

fn now() -> Time {
    Time("2026-11-25T01:00:00Z".parse().unwrap())
}

#[test]
fn committed_crd_is_what_crdgen_prints() {
    let path = repo().join("deploy/spoke/crds/aqueductvolumes.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == crd::crd_yaml(),
        "{} differs from what crdgen prints; regenerate it with\n  cargo run -q -p aqueduct-spoke --bin crdgen > deploy/spoke/crds/aqueductvolumes.yaml",
        path.display()
    );
}

/// Compares `built` with the YAML fixture `file` (or writes it, under UPDATE_FIXTURES=1).
fn matches_fixture(built: &impl serde::Serialize, file: &str) {
    let path = fixtures().join(file);
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&path, serde_saphyr::to_string(built).unwrap()).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let expected: Value = serde_saphyr::from_str(&text).unwrap();
    let built = serde_json::to_value(built).unwrap();
    assert_eq!(built, expected, "{file} differs from what build() makes (UPDATE_FIXTURES=1 rewrites it)");
}

#[test]
fn build_makes_the_pv_and_pvc_of_the_fixtures() {
    for name in ["follow-active", "pinned-version"] {
        let aqv = volume(name);
        let (pv, pvc) = build::build(&aqv).unwrap();
        matches_fixture(&pv, &format!("{name}.pv.yaml"));
        matches_fixture(&pvc, &format!("{name}.pvc.yaml"));
    }
}

#[tokio::test]
async fn status_of_valid_volumes_says_what_the_region_holds() {
    let region = region();
    // Following the active version: v1, Ready, one version behind the newest.
    let aqv = volume("follow-active");
    let resolved = build::validate(&aqv, &region.versions("llama-3-8b"));
    let holding = region.holding("llama-3-8b", 1).await;
    let seen = Observation { resolved, holding, capacity: Some(200 * GIB), claim: None };
    let status = build::status(&aqv, &seen, &now());
    assert_eq!(status.phase, Phase::Ready);
    assert_eq!((status.version, status.newest_version, status.version_lag), (Some(1), Some(2), Some(1)));
    assert_eq!(status.total_size.as_deref(), Some("1GiB"));
    assert_eq!(status.cached_percentage.as_deref(), Some("100.0%"));
    assert_eq!(status.cache_capacity.as_deref(), Some("200GiB"));
    assert_eq!(status.volume_name.as_deref(), Some("aqv-0b7e6a52-3f0c-4d7e-9a51-6f1c2d3e4a5b"));
    let types: Vec<_> = status.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect();
    assert_eq!(types, [("Valid", "True"), ("ClaimApplied", "True"), ("Ready", "True")]);

    // v2 named: a quarter of it cached, Transferring, pods allowed to start.
    let aqv = volume("pinned-version");
    let resolved = build::validate(&aqv, &region.versions("llama-3-8b"));
    let holding = region.holding("llama-3-8b", 2).await;
    let status = build::status(&aqv, &Observation { resolved, holding, capacity: None, claim: None }, &now());
    assert_eq!(status.phase, Phase::Transferring);
    assert_eq!((status.version, status.version_lag), (Some(2), Some(0)));
    assert_eq!((status.cached.as_deref(), status.cached_percentage.as_deref()), (Some("512MiB"), Some("25.0%")));
    assert_eq!(status.cache_capacity, None);
    assert_eq!(status.observed_generation, Some(3));
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Transferring"));
    assert!(ready.message.contains("512MiB of 2GiB") && ready.message.contains("pods may start"), "{}", ready.message);
}

#[test]
fn invalid_specs_get_conditions_that_say_what_is_wrong() {
    let region = region();
    let cases = [
        ("invalid-unknown-dataset", "UnknownDataset", "aq rollout mistral-7b@vN --to REGION"),
        (
            "invalid-unknown-version",
            "UnknownVersion",
            "llama-3-8b@v7 is not rolled out to this region (it holds v1, v2)",
        ),
        ("invalid-bad-dataset-name", "InvalidSpec", "spec.dataset"),
        ("invalid-version-zero", "InvalidSpec", "spec.version: versions count from 1"),
        ("invalid-no-active-version", "NoActiveVersion", "fresh has no active version in this region yet"),
    ];
    for (file, reason, says) in cases {
        let aqv = volume(file);
        let resolved = build::validate(&aqv, &region.versions(&aqv.spec.dataset));
        assert!(resolved.is_err(), "{file} validated");
        let seen = Observation { resolved, holding: Default::default(), capacity: None, claim: None };
        let status = build::status(&aqv, &seen, &now());
        assert_eq!(status.phase, Phase::Failed, "{file}");
        let valid = &status.conditions[0];
        assert_eq!((valid.type_.as_str(), valid.status.as_str(), valid.reason.as_str()), ("Valid", "False", reason));
        assert!(valid.message.contains(says), "{file}: {}", valid.message);
        assert_eq!(status.version, None, "{file}");
    }
}

#[test]
fn a_changed_spec_cannot_change_an_existing_pv() {
    let mut aqv = volume("pinned-version");
    let (pv, _) = build::build(&aqv).unwrap();
    assert_eq!(build::changed_source(&aqv, &pv), None, "the same spec: nothing to say");
    aqv.spec.version = Some(1);
    let problem = build::changed_source(&aqv, &pv).unwrap();
    assert_eq!(problem.reason(), "SpecImmutable");
    let text = problem.to_string();
    assert!(
        text.contains("version=2") && text.contains("version=1") && text.contains("create a new AqueductVolume"),
        "{text}"
    );
}

/// Checks the example manifests, the CRD, and the fixtures (inputs and built PV and PVC) with
/// `scripts/validate-manifests.py`. Without the Python packages this skips, saying so, except
/// under `CI=true`, where it fails with the command that installs them.
#[test]
fn manifests_validate_against_their_schemas() {
    let root = repo();
    let mut files = vec![root.join("deploy/spoke/crds/aqueductvolumes.yaml")];
    let mut add = |dir: PathBuf, keep: &dyn Fn(&str) -> bool| {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .filter(|p| keep(&p.file_name().unwrap().to_string_lossy()))
            .collect();
        found.sort();
        assert!(!found.is_empty(), "no manifest in {}", dir.display());
        files.extend(found);
    };
    add(root.join("deploy/spoke/examples"), &|_| true);
    // The invalid fixtures are valid against the schema except version 0 (minimum 1).
    add(fixtures(), &|name| name != "invalid-version-zero.yaml");
    const PIP: &str = "python3 -m pip install --quiet jsonschema==4.26.0 kubernetes-validate==1.37.0";
    let missing = |why: String| {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("SKIPPED: the manifests were not validated: {why}");
    };
    let output = match std::process::Command::new("python3")
        .arg(root.join("scripts/validate-manifests.py"))
        .args(&files)
        .output()
    {
        Ok(output) => output,
        Err(e) => return missing(format!("cannot run python3 ({e}); install Python 3, then\n  {PIP}")),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.code() == Some(3) {
        return missing(text);
    }
    assert!(output.status.success(), "invalid manifests:\n{text}");
    for file in &files {
        assert!(text.lines().any(|l| l.starts_with("ok ") && l.contains(&*file.to_string_lossy())), "{text}");
    }

    // And the schema check does refuse what it must.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: aqueduct.io/v1alpha1\nkind: AqueductVolume\nmetadata: {name: x}\nspec: {datset: m, mode: everywhere}\n",
    )
    .unwrap();
    let output = std::process::Command::new("python3")
        .arg(root.join("scripts/validate-manifests.py"))
        .args([&files[0], &bad])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("'dataset' is a required property") && text.contains("everywhere"), "{text}");
    assert!(text.contains("'datset' was unexpected"), "{text}");
}

// ---- reconcile against a scripted API server ----

/// What the mock API server answers to one request.
enum Reply {
    NotFound,
    Json(Value),
    /// The request's own body.
    Echo,
    /// A function of the request's body.
    With(Box<dyn Fn(&Value) -> Value + Send>),
    ServerError,
}

/// One request the mock API server expects, in order.
struct Expect {
    method: &'static str,
    path: String,
    reply: Reply,
}

fn expect(method: &'static str, path: impl Into<String>, reply: Reply) -> Expect {
    Expect { method, path: path.into(), reply }
}

/// A request the mock server saw.
#[derive(Debug)]
struct Seen {
    query: String,
    body: Value,
}

/// A client whose API server answers `script` in order, then checks that nothing more came.
fn mock(script: Vec<Expect>) -> (Client, tokio::task::JoinHandle<Vec<Seen>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for step in script {
            let (request, send) = handle.next_request().await.expect("the client went before the script ended");
            let (method, path) = (request.method().to_string(), request.uri().path().to_string());
            assert_eq!((method.as_str(), path.as_str()), (step.method, step.path.as_str()), "unexpected request");
            let query = request.uri().query().unwrap_or_default().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            let (code, reply) = match step.reply {
                Reply::NotFound => (
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": "not found", "reason": "NotFound", "code": 404}),
                ),
                Reply::ServerError => (
                    500,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": "etcd is down", "reason": "InternalError", "code": 500}),
                ),
                Reply::Json(v) => (200, v),
                Reply::Echo => (200, body.clone()),
                Reply::With(f) => (200, f(&body)),
            };
            send.send_response(
                Response::builder().status(code).body(Body::from(reply.to_string().into_bytes())).unwrap(),
            );
            seen.push(Seen { query, body });
        }
        if let Some((request, _)) = handle.next_request().await {
            panic!("unexpected request after the script: {} {}", request.method(), request.uri());
        }
        seen
    });
    (Client::new(service, "default"), server)
}

/// Runs one reconcile of `aqv` against `script`; returns its outcome and what the server saw.
async fn run(
    aqv: &AqueductVolume,
    region: Arc<MemoryRegion>,
    script: Vec<Expect>,
) -> (Result<Action, String>, Vec<Seen>) {
    let (client, server) = mock(script);
    let ctx = Arc::new(Context::new(client, region));
    let outcome = tokio::time::timeout(Duration::from_secs(10), reconcile::reconcile(Arc::new(aqv.clone()), ctx))
        .await
        .expect("reconcile hung (a request the script does not answer?)")
        .map_err(|e| e.to_string());
    (outcome, server.await.unwrap())
}

const AQV: &str = "/apis/aqueduct.io/v1alpha1/namespaces/inference/aqueductvolumes/llama";
const PVC: &str = "/api/v1/namespaces/inference/persistentvolumeclaims/llama";
const PV: &str = "/api/v1/persistentvolumes/aqv-0b7e6a52-3f0c-4d7e-9a51-6f1c2d3e4a5b";

fn with_finalizer(mut aqv: AqueductVolume) -> AqueductVolume {
    aqv.metadata.finalizers = Some(vec![build::FINALIZER.into()]);
    aqv
}

/// The API server's answer to a status patch: the volume with that status.
/// One pass over a volume whose PV and claim exist already: both read, both applied again,
/// then the status.
fn applied_over(aqv: &AqueductVolume, pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> Vec<Expect> {
    vec![
        expect("GET", PVC, Reply::Json(serde_json::to_value(pvc).unwrap())),
        expect("GET", PV, Reply::Json(serde_json::to_value(pv).unwrap())),
        expect("PATCH", PV, Reply::Echo),
        expect("PATCH", PVC, Reply::Echo),
        expect("PATCH", format!("{AQV}/status"), with_status(aqv)),
    ]
}

fn with_status(aqv: &AqueductVolume) -> Reply {
    let aqv = serde_json::to_value(aqv).unwrap();
    Reply::With(Box::new(move |body| {
        let mut out = aqv.clone();
        out["status"] = body["status"].clone();
        out
    }))
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap()
}

#[tokio::test]
async fn creation_adds_the_finalizer_before_anything_else() {
    let aqv = volume("follow-active");
    let mut added = serde_json::to_value(&aqv).unwrap();
    added["metadata"]["finalizers"] = json!([build::FINALIZER]);
    let (outcome, seen) = run(&aqv, Arc::new(region()), vec![expect("PATCH", AQV, Reply::Json(added))]).await;
    assert_eq!(outcome.unwrap(), Action::await_change());
    let patch = seen[0].body.as_array().unwrap();
    assert!(patch.iter().any(|op| op["op"] == "add" && op["value"] == json!([build::FINALIZER])), "{patch:?}");
}

#[tokio::test]
async fn creation_applies_the_pv_and_the_claim_then_the_status() {
    let aqv = with_finalizer(volume("follow-active"));
    let region = Arc::new(region());
    let (outcome, seen) = run(
        &aqv,
        region.clone(),
        vec![
            expect("GET", PVC, Reply::NotFound),
            expect("GET", PV, Reply::NotFound),
            expect("PATCH", PV, Reply::Echo),
            expect("PATCH", PVC, Reply::Echo),
            expect("PATCH", format!("{AQV}/status"), with_status(&aqv)),
        ],
    )
    .await;
    assert_eq!(outcome.unwrap(), Action::requeue(reconcile::REQUEUE_READY));
    // Server-side apply, one field manager, the objects build() makes.
    for s in &seen[2..] {
        assert!(s.query.contains("fieldManager=aqueduct-operator") && s.query.contains("force=true"), "{}", s.query);
    }
    let (pv, pvc) = build::build(&aqv).unwrap();
    assert_eq!(seen[2].body, serde_json::to_value(&pv).unwrap());
    assert_eq!(seen[3].body, serde_json::to_value(&pvc).unwrap());
    let status = &seen[4].body["status"];
    assert_eq!(status["phase"], "Ready");
    assert_eq!((status["version"].as_u64(), status["versionLag"].as_u64()), (Some(1), Some(1)));
    assert_eq!(condition(status, "ClaimApplied")["status"], "True");
    // The region holds the version for the volume.
    assert_eq!(region.holds.held(), [("llama-3-8b".to_string(), 1)].into());
}

#[tokio::test]
async fn status_follows_the_region_and_keeps_transition_times() {
    let region = Arc::new(region());
    let aqv = with_finalizer(volume("follow-active"));
    let (pv, pvc) = build::build(&aqv).unwrap();
    // A first pass: Ready.
    let (_, seen) = run(&aqv, region.clone(), applied_over(&aqv, &pv, &pvc)).await;
    let first = seen[4].body["status"].clone();
    // The hub makes v2 active while it is half cached here (as seen by this spoke): the volume
    // follows, Transferring; Valid stays True since the first pass (its time is kept), Ready
    // turns False (a new time).
    region.versions.lock().unwrap().iter_mut().for_each(|v| v.active = v.version == 2);
    region.holdings.lock().unwrap().get_mut(&("llama-3-8b".to_string(), 2)).unwrap().cached_bytes = GIB;
    let mut aqv = aqv;
    let mut old = serde_json::from_value::<crd::AqueductVolumeStatus>(first.clone()).unwrap();
    for c in &mut old.conditions {
        c.last_transition_time = Time("2026-01-01T00:00:00Z".parse().unwrap());
    }
    aqv.status = Some(old);
    let (outcome, seen) = run(&aqv, region.clone(), applied_over(&aqv, &pv, &pvc)).await;
    assert_eq!(outcome.unwrap(), Action::requeue(reconcile::REQUEUE_TRANSFERRING));
    let status = &seen[4].body["status"];
    assert_eq!(status["phase"], "Transferring");
    assert_eq!((status["version"].as_u64(), status["versionLag"].as_u64()), (Some(2), Some(0)));
    assert_eq!(status["cachedPercentage"], "50.0%");
    assert_eq!(condition(status, "Valid")["lastTransitionTime"], "2026-01-01T00:00:00Z");
    assert_ne!(condition(status, "Ready")["lastTransitionTime"], "2026-01-01T00:00:00Z");
    assert_eq!(condition(status, "Ready")["reason"], "Transferring");
    // The hold moved to the version now served.
    assert_eq!(region.holds.held(), [("llama-3-8b".to_string(), 2)].into());
}

#[tokio::test]
async fn deletion_cleans_up_through_the_finalizer() {
    let region = Arc::new(region());
    region.hold("inference/llama", "llama-3-8b", 1);
    let mut aqv = with_finalizer(volume("follow-active"));
    aqv.metadata.deletion_timestamp = Some(now());
    let (_, pvc) = build::build(&aqv).unwrap();
    let mut gone = serde_json::to_value(&aqv).unwrap();
    gone["metadata"]["finalizers"] = json!([]);
    let (outcome, seen) = run(
        &aqv,
        region.clone(),
        vec![
            expect("GET", PVC, Reply::Json(serde_json::to_value(&pvc).unwrap())),
            expect("DELETE", PVC, Reply::Json(serde_json::to_value(&pvc).unwrap())),
            // Already gone: fine.
            expect("DELETE", PV, Reply::NotFound),
            expect("PATCH", AQV, Reply::Json(gone)),
        ],
    )
    .await;
    assert_eq!(outcome.unwrap(), Action::await_change());
    let patch = seen[3].body.as_array().unwrap();
    assert!(patch.iter().any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"), "{patch:?}");
    assert!(region.holds.held().is_empty());
}

#[tokio::test]
async fn a_claim_that_is_not_ours_is_left_alone_and_said_so() {
    let aqv = with_finalizer(volume("follow-active"));
    let theirs = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "llama", "namespace": "inference", "uid": "99999999-0000-0000-0000-000000000000"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    });
    let region = Arc::new(region());
    let (outcome, seen) = run(
        &aqv,
        region.clone(),
        vec![expect("GET", PVC, Reply::Json(theirs)), expect("PATCH", format!("{AQV}/status"), with_status(&aqv))],
    )
    .await;
    assert_eq!(outcome.unwrap(), Action::requeue(reconcile::REQUEUE_INVALID));
    let status = &seen[1].body["status"];
    assert_eq!(status["phase"], "Failed");
    let claim = condition(status, "ClaimApplied");
    assert_eq!((claim["status"].as_str(), claim["reason"].as_str()), (Some("False"), Some("ClaimConflict")));
    assert!(claim["message"].as_str().unwrap().contains("inference/llama already exists and is not owned"), "{claim}");
    assert!(region.holds.held().is_empty());
}

#[tokio::test]
async fn an_unknown_dataset_is_a_condition_not_a_crash_loop() {
    let mut aqv = with_finalizer(volume("follow-active"));
    aqv.spec.dataset = "mistral-7b".into();
    let (outcome, seen) =
        run(&aqv, Arc::new(region()), vec![expect("PATCH", format!("{AQV}/status"), with_status(&aqv))]).await;
    assert_eq!(outcome.unwrap(), Action::requeue(reconcile::REQUEUE_INVALID));
    let valid = condition(&seen[0].body["status"], "Valid");
    assert_eq!((valid["status"].as_str(), valid["reason"].as_str()), (Some("False"), Some("UnknownDataset")));
}

#[tokio::test]
async fn api_errors_are_retried_with_backoff() {
    let aqv = with_finalizer(volume("follow-active"));
    let (client, server) = mock(vec![expect("GET", PVC, Reply::ServerError), expect("GET", PVC, Reply::ServerError)]);
    let ctx = Arc::new(Context::new(client, Arc::new(region())));
    let aqv = Arc::new(aqv);
    let mut delays = Vec::new();
    for _ in 0..2 {
        let err = reconcile::reconcile(aqv.clone(), ctx.clone()).await.unwrap_err();
        assert!(err.to_string().contains("etcd is down"), "{err}");
        delays.push(reconcile::error_policy(aqv.clone(), &err, ctx.clone()));
    }
    assert_eq!(delays, [Action::requeue(reconcile::BACKOFF_FIRST), Action::requeue(reconcile::BACKOFF_FIRST * 2)]);
    drop(ctx);
    server.await.unwrap();
}

#[test]
fn a_volume_following_a_tag_serves_its_version_and_its_pv_names_the_tag() {
    let region = region();
    let aqv = volume("follow-tag");
    let versions = region.versions("llama-3-8b");
    let tags = [("stable".to_string(), 2), ("old".to_string(), 9)];
    let resolved = build::validate_tagged(&aqv, &versions, &tags).unwrap();
    assert_eq!(resolved.version.version, 2);
    // The node plugin follows the tag itself (it shows the tag's version once Ready there).
    assert_eq!(build::volume_attributes(&aqv).get("version").map(String::as_str), Some("stable"));
    let seen = Observation { resolved: Ok(resolved), holding: Default::default(), capacity: None, claim: None };
    let status = build::status(&aqv, &seen, &now());
    assert!(status.conditions[0].message.contains("serves llama-3-8b@v2 (tag stable)"), "{:?}", status.conditions);
    // The tag moves to a version the region does not hold, or is unknown, or comes with a
    // version: a condition that says what to do.
    let moved = [("stable".to_string(), 9)];
    type Case<'a> = (&'a str, &'a [(String, u64)], &'a str, &'a str);
    let cases: [Case; 3] = [
        ("follow-tag", &moved, "TagNotAssigned", "aq rollout llama-3-8b@v9 --to REGION"),
        ("follow-tag", &[], "UnknownTag", "aq tag llama-3-8b stable vN"),
        ("invalid-tag-and-version", &tags, "InvalidSpec", "spec.tag: give a version or a tag"),
    ];
    for (file, tags, reason, says) in cases {
        let aqv = volume(file);
        let invalid = build::validate_tagged(&aqv, &versions, tags).unwrap_err();
        assert_eq!(invalid.reason(), reason, "{file}: {invalid}");
        assert!(invalid.to_string().contains(says), "{file}: {invalid}");
    }
}
