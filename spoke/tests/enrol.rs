//! A spoke enrols with a token at its first start, keeps its key (0600) and certificate in its
//! data directory and does not enrol again while they are valid; a spoke whose certificate
//! expired and that has no token says what to do.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use aqueduct_proto::hub::v1 as pb;
use aqueduct_spoke::SpokeConfig;
use aqueduct_testkit::hub::TestHub;
use tokio_util::sync::CancellationToken;

async fn members(hub: &TestHub) -> Vec<String> {
    let regions = hub.admin().await.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions;
    regions.into_iter().flat_map(|r| r.members).map(|m| m.node).collect()
}

async fn until_member(hub: &TestHub, node: &str) {
    for _ in 0..400 {
        if members(hub).await.iter().any(|n| n == node) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{node} never joined its region");
}

fn load(path: &std::path::Path) -> SpokeConfig {
    let mut config = SpokeConfig::load(path).unwrap();
    config.mounts.holder = aqueduct_spoke::holder::HolderMode::Embedded;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoke_enrols_once_and_keeps_its_key_on_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::init(&tmp.path().join("hub")).await;
    let ca = hub.add_region("eu", 1 << 30).await;
    let token = hub.enrol_token("eu", 1, Duration::from_secs(600)).await;
    let dir = tmp.path().join("spoke");
    let keys = hub.signing_keys();
    let given = aqueduct_spoke::Enrolment { ca_pem: &ca, signing_keys: &keys, token: &token };
    let path = aqueduct_spoke::write_enrol_config(&dir, &hub.url(), "eu-1", &given).unwrap();

    let stop = CancellationToken::new();
    let running = tokio::spawn(aqueduct_spoke::run(load(&path), stop.clone()));
    until_member(&hub, "eu-1").await;
    let kept = dir.join("store").join(aqueduct_spoke::enrol::KEPT);
    assert_eq!(std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600, "the key is the node's alone");
    let text = std::fs::read_to_string(&kept).unwrap();
    assert!(text.contains("PRIVATE KEY") && text.contains("CERTIFICATE"));
    stop.cancel();
    running.await.unwrap().unwrap();

    // The token is used up; the spoke starts again on what it kept, without enrolling.
    std::fs::write(dir.join("token"), "aqt1_not-a-token-any-more").unwrap();
    while members(&hub).await.contains(&"eu-1".to_string()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stop = CancellationToken::new();
    let running = tokio::spawn(aqueduct_spoke::run(load(&path), stop.clone()));
    until_member(&hub, "eu-1").await;
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), text, "it enrolled again");
    stop.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_without_a_token_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::init(&tmp.path().join("hub")).await;
    hub.add_region("eu", 1 << 30).await;
    let expired = hub.node_bundle_for("eu", "eu-1", Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let path = aqueduct_spoke::write_node_config(&tmp.path().join("spoke"), &hub.url(), "eu-1", &expired).unwrap();
    let err = aqueduct_spoke::run(load(&path), CancellationToken::new()).await.unwrap_err().to_string();
    println!("{err}");
    assert!(err.contains("not valid now") && err.contains("expired"), "{err}");
    assert!(err.contains("[enrol] token_file") && err.contains("aq region token"), "{err}");
}
