//! The hub's signing key: versions of a database from before signatures are signed when the
//! hub starts (and keep that signature), and `aqueduct-hub signing-key show|new` print and
//! make the keys spokes trust.

mod common;

use std::process::Command;

use aqueduct_core::signing::{TrustedKeys, parse_public_keys};
use aqueduct_proto::Manifest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::hub::TestHub;
use aqueduct_testkit::noise;
use common::{dataset, snapshot, source};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_of_before_signatures_are_signed_at_start_and_keep_their_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(models.join("llama")).unwrap();
    std::fs::write(models.join("llama/model.safetensors"), noise(1 << 20, 3)).unwrap();
    let mut hub = TestHub::init(&tmp.path().join("hub")).await;
    let mut admin = hub.admin().await;
    admin.add_source(source("local", &format!("file://{}", models.display()), &[])).await.unwrap();
    admin.add_dataset(dataset("llama", "local", "llama/")).await.unwrap();
    let v1 = snapshot(&mut admin, "llama").await.unwrap();
    let cut = v1.signature.expect("signed as it is cut");

    // As a database of before signatures: the version has none.
    let db = rusqlite::Connection::open(hub.config.database_path()).unwrap();
    assert_eq!(db.execute("DELETE FROM version_signatures", []).unwrap(), 1);
    drop(db);
    hub.restart().await;
    // Once it answers a call that signs nothing, the hub has signed what it holds.
    let mut admin = hub.admin().await;
    admin.list_datasets(pb::ListDatasetsRequest {}).await.unwrap();
    let db = rusqlite::Connection::open(hub.config.database_path()).unwrap();
    let count: i64 = db.query_row("SELECT COUNT(*) FROM version_signatures", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 1, "signed at start, before any call that reads the version");

    let get = pb::GetManifestRequest { dataset: "llama".into(), version: 1 };
    let m = Manifest::try_from(admin.get_manifest(get.clone()).await.unwrap().into_inner()).unwrap();
    let keys = std::fs::read_to_string(hub.config.data_dir.join("signing/hub.pub")).unwrap();
    let trust = TrustedKeys::new(parse_public_keys(&keys).unwrap());
    let signed = trust.verify(&m).unwrap().clone();
    assert_eq!(signed.key_id.as_str(), cut.key_id, "the same key signs");
    assert!(signed.signed_unix_ms >= cut.signed_unix_ms, "a new signature, made at start");
    // It keeps that signature: asked again, after another restart, the same.
    hub.restart().await;
    let mut admin = hub.admin().await;
    let again = Manifest::try_from(admin.get_manifest(get).await.unwrap().into_inner()).unwrap();
    assert_eq!(again.signature, Some(signed));
}

#[test]
fn signing_key_show_prints_a_trust_file_and_new_makes_a_key_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let hub = env!("CARGO_BIN_EXE_aqueduct-hub");
    let run = |args: &[&str]| {
        let out = Command::new(hub).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let init = run(&["init", "--data-dir", dir.to_str().unwrap(), "--listen", "127.0.0.1:7443"]);
    assert!(init.contains("signing/hub.pub"), "{init}");
    let config = dir.join("hub.toml");
    let config = config.to_str().unwrap();
    let shown = run(&["signing-key", "show", "--config", config]);
    let keys = parse_public_keys(&shown).unwrap();
    assert_eq!(keys.len(), 1, "{shown}");
    assert_eq!(std::fs::read_to_string(dir.join("signing/hub.pub")).unwrap(), shown, "init wrote the same file");
    let made = run(&["signing-key", "new", "--config", config]);
    assert!(made.contains("[signing] key") && made.contains("restart the hub"), "{made}");
    let shown = run(&["signing-key", "show", "--config", config]);
    let both = parse_public_keys(&shown).unwrap();
    assert_eq!(both.len(), 2, "{shown}");
    assert_eq!(both[0], keys[0], "the key that signs comes first, until hub.toml names the new one");
    assert!(made.contains(both[1].id().as_str()), "{made}");
}
