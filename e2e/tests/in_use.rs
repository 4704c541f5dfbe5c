//! The spoke's side of the version lifecycle against a real hub (mutual TLS, S3, real FUSE
//! mounts; needs root and /dev/fuse): each cache report names what uses which version on the
//! node (a mount the spoke hosts, an `aqueduct-fuse` sidecar), the hub shows it in its status,
//! and a report goes at once when that changes; a mount that follows a tag the hub does not
//! know is refused, saying so.

use std::path::Path;
use std::time::{Duration, Instant};

use aqueduct_e2e::{
    Children, SourceKind, bin, local_client, mount_when_known, socket_of, spawn_command, world, write_model,
};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_testkit::{can_mount_fuse, is_mounted};

const MIB: u64 = 1 << 20;

/// What the hub's status says the region's spokes use (dataset, version, user).
async fn in_use(admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>) -> Vec<(String, u64, String)> {
    let status = admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner();
    status
        .caches
        .iter()
        .flat_map(|c| c.nodes.iter())
        .flat_map(|n| n.in_use.iter())
        .map(|u| (u.dataset.clone(), u.version, u.user.clone()))
        .collect()
}

/// Waits until the hub's status says what `wanted` accepts; returns it, printing how long it
/// took (not asserted: the machine is shared).
async fn until_in_use(
    admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    what: &str,
    wanted: impl Fn(&[(String, u64, String)]) -> bool,
) -> Vec<(String, u64, String)> {
    let start = Instant::now();
    loop {
        let now = in_use(admin).await;
        if wanted(&now) {
            println!("the hub saw {what} after {:?}", start.elapsed());
            return now;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the hub never saw {what}: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_reports_name_the_mounts_and_sidecars_that_use_each_version() {
    if !can_mount_fuse() {
        return;
    }
    let mut w = world(SourceKind::S3).await;
    write_model(&w.data, 3);
    w.snapshot().await;
    let config = w.region("eu", 200 * MIB).await;
    let _spoke = w.start_spoke(&config);
    let socket = socket_of(&config);
    let mut local = local_client(&socket).await;
    w.rollout(1, &["eu"]).await;
    w.wait_ready(1).await;

    let hosted = w.root.join("hosted");
    let sidecar = w.root.join("sidecar");
    for d in [&hosted, &sidecar] {
        std::fs::create_dir_all(d).unwrap();
    }
    mount_when_known(&mut local, "llama", 1, &hosted).await.unwrap();
    let mount_user = format!("mount {}", hosted.display());
    let mut children = Children::default();
    let mut cmd = std::process::Command::new(bin("aqueduct-fuse"));
    cmd.args(["mount", "llama@v1"]).arg(&sidecar).arg("--socket").arg(&socket).env("HOSTNAME", "web-0");
    // The sidecar trusts the hub's signing keys, as the region's bundle gives them.
    cmd.arg("--trust").arg(config.parent().unwrap().join("signing.pub"));
    children.0.push(spawn_command(cmd, &w.root.join("sidecar.log")));
    let started = Instant::now();
    while !is_mounted(&sidecar) {
        assert!(started.elapsed() < Duration::from_secs(20), "the sidecar did not mount");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sidecar_user = format!("sidecar web-0:{}", sidecar.display());
    let seen = until_in_use(&mut w.admin, "the mount and the sidecar", |u| {
        u.iter().any(|x| x.2 == mount_user) && u.iter().any(|x| x.2 == sidecar_user)
    })
    .await;
    assert!(seen.iter().all(|(d, v, _)| d == "llama" && *v == 1), "{seen:?}");

    // Unmounted: the next report (sent at once) no longer names it.
    local.unmount(local::UnmountRequest { mountpoint: hosted.display().to_string() }).await.unwrap();
    until_in_use(&mut w.admin, "the unmount", |u| !u.iter().any(|x| x.2 == mount_user)).await;

    // A tag the hub does not know: refused, saying so (the hub sends the region's tags).
    let tagged = w.root.join("tagged");
    std::fs::create_dir_all(&tagged).unwrap();
    let request = local::MountRequest {
        dataset: "llama".into(),
        tag: "stable".into(),
        mountpoint: tagged.display().to_string(),
        ..Default::default()
    };
    let err = local.mount(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{}", err.message());
    assert!(err.message().contains("no tag \"stable\"") && err.message().contains("aq tag llama stable"), "{err:?}");
    let out = std::process::Command::new(bin("aqueduct-spoke"))
        .args(["mount", "llama@stable"])
        .arg(&tagged)
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("no tag \"stable\""), "{text}");
    assert!(!is_mounted(Path::new(&tagged)));
    drop(children);
    let _ = std::process::Command::new("umount").arg("-l").arg(&sidecar).status();
}
