//! Signed manifests end to end, over real mutual TLS: a version changed in the hub's database
//! (its entries, root and all, or its signature replaced by one of an unknown key) is refused
//! by the spoke, which fetches and serves nothing of it; the hub's signing key rotates with
//! spokes trusting both keys; `aq manifest` shows the signer, `aq verify` checks mounted
//! files offline, and a sidecar that trusts another key mounts nothing.

use std::path::Path;
use std::time::Duration;

use aqueduct_core::signing::SigningKey;
use aqueduct_e2e::{SourceKind, World, bin, io, local_client, mount_when_known, socket_of, stored_chunks, world};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{Digest, Manifest};
use aqueduct_testkit::{can_mount_fuse, noise};
use tonic::Code;

/// Replaces the dataset's files with one file of fresh bytes (`seed`): versions share no chunk.
fn write_version(dir: &Path, seed: u64) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    std::fs::write(dir.join("model.safetensors"), noise(3 << 20, seed)).unwrap();
    std::fs::write(dir.join("config.json"), format!("{{\"seed\": {seed}}}")).unwrap();
}

/// Opens the hub's database beside the running hub (as someone with access to the file would).
fn hub_db(w: &World) -> rusqlite::Connection {
    rusqlite::Connection::open(w.hub.config.database_path()).unwrap()
}

/// Changes `m`'s first chunk digest in the hub's database and writes the root its entries
/// now hash to, so that the hub itself serves it without complaint: only the signature, over
/// the old root, tells.
fn tamper_entries(w: &World, m: &Manifest) -> Manifest {
    let mut forged = m.clone();
    let file = forged.files.iter_mut().find(|f| f.path == "model.safetensors").unwrap();
    file.chunks[0].digest = Digest::of(b"the attacker's bytes");
    let blob = aqueduct_hub::store::chunk_list::encode_chunks(&file.chunks);
    forged.root = forged.compute_root();
    let db = hub_db(w);
    let changed = db
        .execute(
            "UPDATE files SET chunks = ?1 WHERE dataset = ?2 AND version = ?3 AND path = 'model.safetensors'",
            rusqlite::params![blob, m.dataset, m.version as i64],
        )
        .unwrap();
    assert_eq!(changed, 1);
    db.execute(
        "UPDATE versions SET root = ?1 WHERE dataset = ?2 AND number = ?3",
        rusqlite::params![forged.root.0.to_vec(), m.dataset, m.version as i64],
    )
    .unwrap();
    forged
}

/// Replaces a version's root and signature by ones of `key` (unknown to the spokes), over
/// entries changed as in [`tamper_entries`].
fn tamper_signature(w: &World, m: &Manifest, key: &SigningKey) {
    let forged = tamper_entries(w, m);
    let s = key.sign(&forged.dataset, forged.version, &forged.root, 1_700_000_000_000);
    hub_db(w)
        .execute(
            "UPDATE version_signatures SET key_id = ?1, signed_ms = ?2, signature = ?3 WHERE dataset = ?4 AND version = ?5",
            rusqlite::params![s.key_id.as_str(), s.signed_unix_ms, s.signature.to_vec(), m.dataset, m.version as i64],
        )
        .unwrap();
}

/// The row of `version` in `region` once it is Ready or Failed.
async fn settled(w: &mut World, version: u64, region: &str) -> pb::StatusRow {
    for _ in 0..1200 {
        if let Some(row) = w.status(version).await.into_iter().find(|r| r.region == region)
            && matches!(row.phase(), pb::Phase::Ready | pb::Phase::Failed)
        {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("v{version} did not settle in {region}");
}

fn own_chunks(m: &Manifest) -> Vec<Digest> {
    m.distinct_chunks().into_iter().map(|(d, _)| d).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_manifest_is_refused_and_nothing_of_it_is_fetched_or_served() {
    let mut w = world(SourceKind::Dir).await;
    // v1: its entries and root changed in the database. v2: that, and signed by a key nobody
    // trusts. v3: as the hub cut it.
    write_version(&w.data, 1);
    w.snapshot().await;
    let m1 = w.manifest(1).await;
    write_version(&w.data, 2);
    w.snapshot().await;
    let m2 = w.manifest(2).await;
    write_version(&w.data, 3);
    w.snapshot().await;
    let m3 = w.manifest(3).await;
    let forged1 = tamper_entries(&w, &m1);
    let stranger = SigningKey::generate().unwrap();
    tamper_signature(&w, &m2, &stranger);
    // The hub serves them as they now are (it has no way to tell): the spoke must.
    assert_eq!(w.manifest(1).await.root, forged1.root);

    let eu = w.region("eu", 1 << 30).await;
    let _spoke = w.start_spoke(&eu);
    w.rollout(1, &["eu"]).await;
    w.rollout(2, &["eu"]).await;
    w.rollout(3, &["eu"]).await;
    let row1 = settled(&mut w, 1, "eu").await;
    let row2 = settled(&mut w, 2, "eu").await;
    let row3 = settled(&mut w, 3, "eu").await;
    println!("v1: {:?}: {}\nv2: {:?}: {}", row1.phase(), row1.reason, row2.phase(), row2.reason);
    assert_eq!(row1.phase(), pb::Phase::Failed, "{}", row1.reason);
    assert!(row1.reason.contains("llama@v1") && row1.reason.contains("does not verify"), "{}", row1.reason);
    assert_eq!(row2.phase(), pb::Phase::Failed, "{}", row2.reason);
    assert!(row2.reason.contains(stranger.id().as_str()) && row2.reason.contains("does not trust"), "{}", row2.reason);
    assert_eq!(row3.phase(), pb::Phase::Ready, "{}", row3.reason);

    // Not a byte of v1 or v2 was fetched: the store holds v3's chunks only.
    let store = w.root.join("spoke-eu/store");
    let held = stored_chunks(&store);
    for d in own_chunks(&m1).iter().chain(&own_chunks(&m2)).chain(&own_chunks(&forged1)) {
        assert!(!held.contains_key(d), "the spoke fetched chunk {d:?} of a refused version");
    }
    assert!(own_chunks(&m3).iter().all(|d| held.contains_key(d)));

    // Nor is anything of them served: a mount of either is refused, saying why.
    let mut local = local_client(&socket_of(&eu)).await;
    for (version, words) in [(1, "does not verify"), (2, "does not trust")] {
        let dir = w.root.join(format!("mnt-v{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        let err = mount_when_known(&mut local, "llama", version, &dir).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
        assert!(err.message().contains(words), "{}", err.message());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "the mountpoint shows something of v{version}");
    }
    let resolved = local
        .resolve(aqueduct_proto::spoke::v1::ResolveRequest {
            dataset: "llama".into(),
            version: 2,
            ..Default::default()
        })
        .await;
    assert_eq!(resolved.unwrap_err().code(), Code::PermissionDenied, "a sidecar would get v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_key_rotates_with_spokes_trusting_both_keys() {
    let mut w = world(SourceKind::Dir).await;
    write_version(&w.data, 11);
    let v1 = w.snapshot().await;
    let old = v1.signature.clone().expect("v1 is signed as it is cut").key_id;

    // A new key beside the old one; the hub signs with it after a restart.
    let current = w.hub.config.resolve(&w.hub.config.signing.key);
    let (path, new) = aqueduct_hub::signing::new_key_beside(&current).unwrap();
    w.hub.config.signing.key = path;
    w.hub.restart().await;
    w.admin = w.hub.admin().await;
    // v2 adds a file: v1's objects stay as they were, for the regions that fetch it.
    std::fs::write(w.data.join("extra.bin"), noise(1 << 20, 12)).unwrap();
    let v2 = w.snapshot().await;
    assert_eq!(v2.signature.as_ref().unwrap().key_id, new.id().as_str(), "new versions are signed by the new key");
    let versions = w.admin.list_versions(pb::ListVersionsRequest { dataset: "llama".into() }).await.unwrap();
    let keys: Vec<String> =
        versions.into_inner().versions.iter().map(|v| v.signature.clone().unwrap().key_id).collect();
    assert_eq!(keys, [old.clone(), new.id().to_string()], "v1 keeps its signature");

    // Region bundles carry both keys: a spoke of eu trusts both and serves both versions.
    let eu = w.region("eu", 1 << 30).await;
    let published = std::fs::read_to_string(eu.parent().unwrap().join("signing.pub")).unwrap();
    assert_eq!(published.lines().count(), 2, "{published}");
    // A spoke of us trusts the new key only.
    let us = w.region("us", 1 << 30).await;
    std::fs::write(us.parent().unwrap().join("signing.pub"), format!("{}\n", new.public())).unwrap();
    let _spokes = (w.start_spoke(&eu), w.start_spoke(&us));
    w.rollout(1, &["eu", "us"]).await;
    w.rollout(2, &["eu", "us"]).await;
    for (version, region, phase) in [
        (1, "eu", pb::Phase::Ready),
        (2, "eu", pb::Phase::Ready),
        (2, "us", pb::Phase::Ready),
        (1, "us", pb::Phase::Failed),
    ] {
        let row = settled(&mut w, version, region).await;
        assert_eq!(row.phase(), phase, "v{version} in {region}: {}", row.reason);
        if phase == pb::Phase::Failed {
            assert!(row.reason.contains(&old) && row.reason.contains("does not trust"), "{}", row.reason);
        }
    }
}

/// `aq` with the admin bundle of the world's hub.
fn aq(w: &World, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("aq")).args(args).env("AQ_CONFIG", &w.hub.admin_config).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aq_manifest_shows_the_signer_and_aq_verify_checks_mounted_files() {
    let mut w = world(SourceKind::Dir).await;
    write_version(&w.data, 21);
    let v1 = w.snapshot().await;
    let key_id = v1.signature.unwrap().key_id;
    let out = aq(&w, &["manifest", "llama@v1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&format!("signed by key {key_id} at ")), "{text}");
    let out = aq(&w, &["manifest", "llama@v1", "--chunks", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest = w.root.join("llama-v1.json");
    std::fs::write(&manifest, &out.stdout).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["signature"]["key_id"], key_id.as_str());

    if !can_mount_fuse() {
        return;
    }
    let eu = w.region("eu", 1 << 30).await;
    let _spoke = w.start_spoke(&eu);
    w.rollout(1, &["eu"]).await;
    w.wait_ready(1).await;
    let mut local = local_client(&socket_of(&eu)).await;
    let mnt = w.root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    mount_when_known(&mut local, "llama", 1, &mnt).await.unwrap();
    let keys = w.hub.config.data_dir.join("signing/hub.pub");
    let (manifest_arg, keys_arg) = (manifest.display().to_string(), keys.display().to_string());
    let mounted: Vec<String> =
        ["model.safetensors", "config.json"].iter().map(|f| mnt.join(f).display().to_string()).collect();
    let mut args = vec!["verify", "--manifest", &manifest_arg, "--trust", &keys_arg];
    args.extend(mounted.iter().map(String::as_str));
    let out = aq(&w, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 2, "{text}");

    // A changed copy (its attributes kept, as a copy that keeps xattrs would): refused.
    let copy = w.root.join("changed.safetensors");
    let (from, to) = (mnt.join("model.safetensors"), copy.clone());
    io(move || {
        let mut bytes = std::fs::read(&from).unwrap();
        bytes[1 << 20] ^= 1;
        std::fs::write(&to, bytes).unwrap();
        for name in ["user.aqueduct.dataset", "user.aqueduct.version", "user.aqueduct.root"] {
            let value = aqueduct_testkit::xattr(&from, name).unwrap();
            aqueduct_testkit::set_xattr(&to, name, &value).unwrap();
        }
    })
    .await;
    let copy_arg = copy.display().to_string();
    let out = aq(&w, &["verify", "--manifest", &manifest_arg, "--trust", &keys_arg, &copy_arg]);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED") && text.contains("chunk") && text.contains("BLAKE3"), "{text}");
    // And a manifest signed by another key than the one given: refused before any file.
    let stranger = SigningKey::generate().unwrap().public().to_string();
    let out = aq(&w, &["verify", "--manifest", &manifest_arg, "--trust", &stranger, &mounted[0]]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not trust"), "{:?}", out);
    // A sidecar that trusts another key shows nothing of the version its spoke serves.
    let refused = w.root.join("refused");
    std::fs::create_dir_all(&refused).unwrap();
    let out = std::process::Command::new(bin("aqueduct-fuse"))
        .args(["mount", "llama@v1"])
        .arg(&refused)
        .arg("--socket")
        .arg(socket_of(&eu))
        .args(["--signing-key", &stranger])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("does not trust"), "{err}");
    assert!(!aqueduct_testkit::is_mounted(&refused) && std::fs::read_dir(&refused).unwrap().count() == 0);
    let mut local = local;
    local.unmount(aqueduct_proto::spoke::v1::UnmountRequest { mountpoint: mnt.display().to_string() }).await.unwrap();
}
