//! The lifecycle commands as a user (or a pipeline) runs them: rollback and promote with
//! `--wait`, tags, `dataset set --keep`, `gc --dry-run` and `gc`, `rollout cancel` and the
//! deletes, refused with the user named and accepted after. The real `aq` against a real hub,
//! spokes played through the spokes' API.

mod common;

use std::path::Path;

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_testkit::hub::TestHub;
use common::{aq, exits_with, fails_with, ok};
use serde_json::Value;
use tonic::transport::Channel;

/// A region's spoke: its client, its open watch (kept: the node is live while it is open)
/// and the session its reports carry.
struct Spoke {
    client: SpokeClient<Channel>,
    _watch: tonic::Streaming<pb::Assignments>,
    session: String,
}

impl Spoke {
    async fn of(hub: &TestHub, region: &str) -> Self {
        hub.add_region(region, 1 << 30).await;
        let mut client = hub.node_client(region, "node-1").await;
        let req = pb::WatchRequest { node: "node-1".into(), peer_address: String::new(), ..Default::default() };
        let mut watch = client.watch(req).await.unwrap().into_inner();
        let session = watch.message().await.unwrap().unwrap().session;
        // What it uses (nothing): removals wait for every live spoke to have said.
        let cache = pb::CacheReport { node: "node-1".into(), session: session.clone(), ..Default::default() };
        client.report_cache(cache).await.unwrap();
        Spoke { client, _watch: watch, session }
    }

    async fn ready(&mut self, version: u64) {
        let report = pb::ProgressReport {
            dataset: "llama".into(),
            version,
            cached_bytes: 1,
            phase: pb::Phase::Ready.into(),
            node: "node-1".into(),
            session: self.session.clone(),
            ..Default::default()
        };
        self.client.report_progress(report).await.unwrap();
    }
}

/// Cuts the next version of llama (the file changes each time).
async fn snapshot(home: &Path, cfg: Option<&Path>, n: u64) {
    std::fs::write(home.join("models/llama/weights.bin"), format!("version {n} ").repeat(1000)).unwrap();
    let out = ok(&aq(home, cfg, &["snapshot", "llama"]).await);
    assert!(out.contains(&format!("llama@v{n}")), "{out}");
}

/// (region, version, previous) from `aq status -o json`.
async fn serving(home: &Path, cfg: Option<&Path>) -> Vec<(String, u64, u64)> {
    let status: Value = serde_json::from_str(&ok(&aq(home, cfg, &["status", "llama", "-o", "json"]).await)).unwrap();
    status["serving"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let previous = s["previous"].as_u64().unwrap_or(0);
            (s["region"].as_str().unwrap().to_string(), s["version"].as_u64().unwrap(), previous)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    std::fs::create_dir_all(home.join("models/llama")).unwrap();
    let hub = TestHub::init(&home.join("hub")).await;
    let cfg = Some(hub.admin_config.as_path());
    let url = format!("file://{}", home.join("models").display());
    ok(&aq(home, cfg, &["source", "add", "local", &url]).await);
    ok(&aq(home, cfg, &["dataset", "add", "llama", "--source", "local", "--prefix", "llama"]).await);
    for n in 1..=2 {
        snapshot(home, cfg, n).await;
    }
    let mut eu = Spoke::of(&hub, "eu").await;
    for v in [1, 2] {
        ok(&aq(home, cfg, &["rollout", &format!("llama@v{v}"), "--to", "eu"]).await);
        eu.ready(v).await;
    }
    assert_eq!(serving(home, cfg).await, [("eu".to_string(), 2, 1)]);

    // Rollback: at once (v1 is whole in eu), and --wait sees it served.
    let out = ok(&aq(home, cfg, &["rollback", "llama", "--wait", "--timeout", "30s"]).await);
    assert!(out.contains("serves llama@v1 now (no transfer)") && out.contains("llama@v1 is served in eu"), "{out}");
    assert_eq!(serving(home, cfg).await, [("eu".to_string(), 1, 2)]);
    let out = ok(&aq(home, cfg, &["promote", "llama@v2", "--wait", "--timeout", "30s"]).await);
    assert!(out.contains("llama@v2 is served in eu"), "{out}");
    fails_with(&aq(home, cfg, &["promote", "llama@v2", "--region", "us"]).await, &["not rolled out to us"]);
    fails_with(&aq(home, cfg, &["promote", "llama"]).await, &["name the version: llama@vN"]);

    // A rollback to a version a region never held is a rollout: --wait times out (exit 4)
    // while no spoke of that region holds it.
    let mut us = Spoke::of(&hub, "us").await;
    ok(&aq(home, cfg, &["rollout", "llama@v2", "--to", "us"]).await);
    us.ready(2).await;
    let out = aq(home, cfg, &["rollback", "llama", "--to", "v1", "--region", "us", "--wait", "--timeout", "2s"]).await;
    exits_with(&out, 4, &["timed out", "llama@v1 to be served", "us:"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("never rolled out to us"));
    us.ready(1).await;
    let out = ok(&aq(home, cfg, &["rollback", "llama", "--to", "v1", "--region", "us", "--wait"]).await);
    assert!(out.contains("serves v1 already") || out.contains("served in us"), "{out}");

    // Tags.
    assert!(ok(&aq(home, cfg, &["tag", "llama", "stable", "v1"]).await).contains("tag stable names v1"));
    assert!(ok(&aq(home, cfg, &["tag", "llama", "stable", "2"]).await).contains("moved from v1 to v2"));
    let versions: Value =
        serde_json::from_str(&ok(&aq(home, cfg, &["versions", "llama", "-o", "json"]).await)).unwrap();
    let text = versions.to_string();
    assert!(text.contains("stable") && text.contains("tag stable"), "{text}");
    fails_with(&aq(home, cfg, &["tag", "llama", "v9", "v1"]).await, &["tag name \"v9\" is not valid"]);
    assert!(ok(&aq(home, cfg, &["tag", "llama", "stable", "--rm"]).await).contains("removed (it named v2)"));

    // Retention: keep 1; v3 and v4 cut; v3 is what nothing retains (v1 served in us, v2 in
    // eu, each region's previous, v4 the newest).
    ok(&aq(home, cfg, &["dataset", "set", "llama", "--keep", "1"]).await);
    for n in 3..=4 {
        snapshot(home, cfg, n).await;
    }
    let dry = ok(&aq(home, cfg, &["gc", "--dry-run"]).await);
    assert!(dry.contains("would remove 1 version(s)") && dry.contains("llama@v3"), "{dry}");
    let real = ok(&aq(home, cfg, &["gc"]).await);
    assert!(real.contains("removed 1 version(s)") && real.contains("llama@v3"), "{real}");
    assert!(ok(&aq(home, cfg, &["gc"]).await).contains("nothing to remove"));
    fails_with(&aq(home, cfg, &["dataset", "set", "llama", "--keep", "0"]).await, &["at least its newest"]);

    // Cancel and the deletes: refused while used, naming the user; accepted after.
    ok(&aq(home, cfg, &["rollout", "llama@v4", "--to", "eu", "--cut-over", "manual"]).await);
    fails_with(&aq(home, cfg, &["rollout", "cancel", "llama@v2"]).await, &["eu serves llama@v2", "aq rollback"]);
    assert!(ok(&aq(home, cfg, &["rollout", "cancel", "llama@v4"]).await).contains("cancelled in eu"));
    fails_with(&aq(home, cfg, &["version", "rm", "llama@v4"]).await, &["newest version"]);
    fails_with(&aq(home, cfg, &["version", "rm", "llama@v1"]).await, &["served in us"]);
    fails_with(&aq(home, cfg, &["source", "rm", "local"]).await, &["used by dataset llama"]);
    fails_with(&aq(home, cfg, &["dataset", "rm", "llama"]).await, &["rolled out", "--force"]);
    fails_with(&aq(home, cfg, &["region", "rm", "eu"]).await, &["holds llama@v", "--force"]);
    assert!(ok(&aq(home, cfg, &["region", "rm", "eu", "--force"]).await).contains("removed region eu"));
    assert!(ok(&aq(home, cfg, &["dataset", "rm", "llama", "--force"]).await).contains("removed dataset llama"));
    assert!(ok(&aq(home, cfg, &["source", "rm", "local"]).await).contains("removed source local"));
    let sources: Value = serde_json::from_str(&ok(&aq(home, cfg, &["source", "list", "-o", "json"]).await)).unwrap();
    assert_eq!(sources["sources"].as_array().map(Vec::len), Some(0), "{sources}");
}
