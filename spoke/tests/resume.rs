//! A spoke process killed with SIGKILL in the middle of a transfer, then restarted, finishes
//! the version fetching only what it did not already hold verified.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aqueduct_proto::Manifest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use aqueduct_testkit::hub::TestHub;
use tonic::transport::Channel;

fn spawn_spoke(config: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_aqueduct-spoke"))
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn stored_chunks(store: &Path) -> Vec<std::path::PathBuf> {
    let Ok(dirs) = std::fs::read_dir(store.join("chunks")) else { return Vec::new() };
    dirs.flatten().flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten().map(|f| f.path())).collect()
}

async fn status(admin: &mut AdminClient<Channel>) -> pb::StatusRow {
    admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_resumes_without_refetching() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("models/llama")).unwrap();
    std::fs::write(root.join("models/llama/model.safetensors"), aqueduct_testkit::noise(24 << 20, 5)).unwrap();

    let hub = TestHub::init(&root.join("hub")).await;
    let mut admin = hub.admin().await;

    let source = pb::Source {
        name: "local".into(),
        url: format!("file://{}", root.join("models").display()),
        options: Default::default(),
        created_unix_ms: 0,
    };
    admin.add_source(pb::AddSourceRequest { source: Some(source) }).await.unwrap();
    let dataset = pb::Dataset {
        name: "llama".into(),
        source: "local".into(),
        prefix: "llama".into(),
        created_unix_ms: 0,
        latest_version: 0,
        outside_links: String::new(),
        ..Default::default()
    };
    admin.add_dataset(pb::AddDatasetRequest { dataset: Some(dataset) }).await.unwrap();
    let mut events = admin.snapshot(pb::SnapshotRequest { dataset: "llama".into() }).await.unwrap().into_inner();
    while events.message().await.unwrap().is_some() {}
    // A slow link (4 MiB/s for 24 MiB), so that the kill lands mid-transfer.
    hub.add_region("eu", 4 << 20).await;
    let bundle = hub.node_bundle("eu", "n1");
    let dir = root.join("spoke");
    let config = aqueduct_spoke::write_node_config(&dir, &hub.url(), "n1", &bundle).unwrap();
    admin
        .rollout(pb::RolloutRequest {
            dataset: "llama".into(),
            version: 1,
            regions: vec!["eu".into()],
            mode: Default::default(),
            ..Default::default()
        })
        .await
        .unwrap();
    let manifest = Manifest::try_from(
        admin.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await.unwrap().into_inner(),
    )
    .unwrap();
    let distinct: u64 = manifest.distinct_chunks().iter().map(|(_, l)| u64::from(*l)).sum();
    let store = dir.join("store");

    let mut spoke = spawn_spoke(&config, &root.join("spoke-1.log"));
    let mut waited = 0;
    while stored_chunks(&store).len() < manifest.distinct_chunks().len() / 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
        assert!(
            waited < 1200,
            "the spoke stored nothing: {}",
            std::fs::read_to_string(root.join("spoke-1.log")).unwrap()
        );
    }
    spoke.kill().unwrap(); // SIGKILL
    spoke.wait().unwrap();
    let kept = stored_chunks(&store);
    assert!(kept.len() < manifest.distinct_chunks().len(), "the transfer finished before the kill");
    let kept_bytes: u64 = kept.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    // What the hub relayed before the kill is recorded when its streams end.
    let mut relayed_at_kill = status(&mut admin).await.relayed_bytes;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = status(&mut admin).await.relayed_bytes;
        if now == relayed_at_kill {
            break;
        }
        relayed_at_kill = now;
    }

    let mut spoke = spawn_spoke(&config, &root.join("spoke-2.log"));
    let mut row = status(&mut admin).await;
    for _ in 0..1200 {
        if row.phase() == pb::Phase::Ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        row = status(&mut admin).await;
    }
    spoke.kill().unwrap();
    spoke.wait().unwrap();
    assert_eq!(row.phase(), pb::Phase::Ready, "{}", std::fs::read_to_string(root.join("spoke-2.log")).unwrap());
    // After the restart the hub relayed exactly what the store lacked: nothing twice.
    assert_eq!(row.relayed_bytes - relayed_at_kill, distinct - kept_bytes);
    assert_eq!(stored_chunks(&store).len(), manifest.distinct_chunks().len());
}
