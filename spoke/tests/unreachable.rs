//! A spoke whose hub is not there keeps retrying with backoff and says so in its log once per
//! interval, not once per attempt.

use std::process::{Command, Stdio};
use std::time::Duration;

use aqueduct_hub::pki::Authority;

#[test]
fn an_unreachable_hub_is_retried_and_reported_once_per_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Authority::create("test").unwrap();
    let region = ca.issue_node("eu", "n", Duration::from_secs(3600)).unwrap();
    let bundle = aqueduct_proto::hub::v1::CredentialsBundle {
        ca_pem: ca.ca_pem().to_string(),
        cert_pem: region.cert_pem,
        key_pem: region.key_pem,
        signing_keys: vec![aqueduct_core::signing::SigningKey::generate().unwrap().public().to_string()],
    };
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config =
        aqueduct_spoke::write_node_config(tmp.path(), &format!("https://127.0.0.1:{port}"), "n", &bundle).unwrap();
    let log = tmp.path().join("spoke.log");
    let mut spoke = Command::new(env!("CARGO_BIN_EXE_aqueduct-spoke"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("AQUEDUCT_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Several attempts happen in 4 s (backoff starts at 0.5 s); the interval is 30 s.
    std::thread::sleep(Duration::from_secs(4));
    let alive = spoke.try_wait().unwrap().is_none();
    spoke.kill().unwrap();
    spoke.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(alive, "the spoke gave up: {text}");
    let complaints: Vec<&str> = text.lines().filter(|l| l.contains("hub unreachable")).collect();
    assert_eq!(complaints.len(), 1, "{text}");
    assert!(
        complaints[0].contains(&format!("127.0.0.1:{port}")) && complaints[0].contains("retry_in"),
        "{}",
        complaints[0]
    );
}
