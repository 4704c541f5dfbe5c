//! A `file://` dataset never reaches outside its prefix, nor into the hub's own files,
//! whatever its links say; every name is kept exactly, and what cannot be a file is named.
//! Against a real hub (mutual TLS on 127.0.0.1) and a real directory.

mod common;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;

use aqueduct_proto::Manifest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::hub::TestHub;
use common::{dataset, expect_err, snapshot, source};
use tonic::Code;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_never_lead_out_of_a_dataset_and_every_name_is_kept_or_named() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path().canonicalize().unwrap();
    let hub_dir = tmp.join("hub");
    let hub = TestHub::init(&hub_dir).await;
    let mut admin = hub.admin().await;
    let models = tmp.join("models");
    let llama = models.join("llama");
    write(&tmp.join("outside/secret.txt"), b"a secret outside the dataset");
    write(&models.join("neighbour/file.txt"), b"another dataset's file");

    // The files a pod should see, by path.
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (path, bytes) in [
        ("model.bin", &b"model bytes"[..]),
        ("tok/tokenizer.json", b"{\"tok\": 1}"),
        ("x#123", b"hash"),
        ("100%", b"percent"),
        ("a b/c d.txt", b"spaces"),
        ("new\nline", b"newline"),
        ("\u{65e5}\u{672c}\u{8a9e}/\u{30e2}\u{30c7}\u{30eb}", b"unicode"),
        ("empty", b""),
    ] {
        write(&llama.join(path), bytes);
        expected.insert(path.to_string(), bytes.to_vec());
    }
    // Links inside the prefix are followed: a file link is the target's bytes, a directory
    // link its files.
    symlink("model.bin", llama.join("alias.bin")).unwrap();
    expected.insert("alias.bin".into(), b"model bytes".to_vec());
    symlink("tok", llama.join("tokdir")).unwrap();
    expected.insert("tokdir/tokenizer.json".into(), b"{\"tok\": 1}".to_vec());
    // Links out: to /etc, to a file outside the prefix (relative, up and out), to a file of
    // another dataset of the same source, to the hub's data directory and to its CA key.
    symlink("/etc", llama.join("etc")).unwrap();
    symlink("../../outside/secret.txt", llama.join("secret")).unwrap();
    symlink("../neighbour/file.txt", llama.join("neighbour")).unwrap();
    symlink(&hub_dir, llama.join("hubdir")).unwrap();
    symlink(hub_dir.join("pki/issuer.key"), llama.join("tok/ca.key")).unwrap();
    // Neither followed nor fatal: a dangling link, a FIFO, a name that is not UTF-8.
    symlink("nowhere", llama.join("gone")).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(llama.join("pipe")).status().unwrap().success());
    write(&llama.join(std::ffi::OsStr::from_bytes(b"bad\xff.bin")), b"not utf-8");

    // A source that holds the hub's own files is refused, however it is reached.
    for url in [format!("file://{}", tmp.display()), format!("file://{}", hub_dir.join("pki").display())] {
        expect_err(admin.add_source(source("bad", &url, &[])).await, Code::FailedPrecondition, &["hub's own files"]);
    }
    admin.add_source(source("local", &format!("file://{}", models.display()), &[])).await.unwrap();
    admin.add_dataset(dataset("llama", "local", "llama")).await.unwrap();

    // By default the snapshot fails, naming each outside link and its target, and cuts nothing.
    let err = snapshot(&mut admin, "llama").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    for word in [
        "6 symbolic link",
        "\"llama/etc\"",
        "\"/etc\"",
        "\"llama/secret\"",
        "outside/secret.txt",
        "\"llama/neighbour\"",
        "\"llama/hubdir\"",
        "\"llama/tok/ca.key\"",
        "hub's own files",
        "aq dataset set llama --outside-links skip",
    ] {
        assert!(err.message().contains(word), "{:?} lacks {word:?}", err.message());
    }
    let versions = admin.list_versions(pb::ListVersionsRequest { dataset: "llama".into() }).await.unwrap();
    assert!(versions.into_inner().versions.is_empty(), "a refused snapshot cut a version");

    // Bad updates say what is wrong.
    let set = |name: &str, policy: &str| pb::UpdateDatasetRequest {
        name: name.into(),
        outside_links: policy.into(),
        ..Default::default()
    };
    expect_err(admin.update_dataset(set("llama", "sometimes")).await, Code::InvalidArgument, &["fail or skip"]);
    expect_err(admin.update_dataset(set("nope", "skip")).await, Code::NotFound, &["nope"]);
    let d = admin.update_dataset(set("llama", "skip")).await.unwrap().into_inner();
    assert_eq!(d.outside_links, "skip");

    // With `skip`, they are left out and listed, with what else cannot be a file.
    let v1 = snapshot(&mut admin, "llama").await.unwrap();
    let skipped: BTreeMap<&str, &str> = v1.skipped.iter().map(|s| (s.key.as_str(), s.reason.as_str())).collect();
    println!("skipped: {skipped:#?}");
    for (key, word) in [
        ("llama/etc", "outside the dataset's prefix"),
        ("llama/secret", "outside/secret.txt"),
        ("llama/neighbour", "outside the dataset's prefix"),
        ("llama/hubdir", "hub's own files"),
        ("llama/tok/ca.key", "hub's own files"),
        ("llama/tokdir/ca.key", "hub's own files"),
        ("llama/gone", "dangling"),
        ("llama/pipe", "FIFO"),
        ("llama/bad\\xFF.bin", "not valid UTF-8"),
    ] {
        assert!(skipped.get(key).is_some_and(|r| r.contains(word)), "{key}: {:?}", skipped.get(key));
    }
    assert_eq!(skipped.len(), 9, "{skipped:#?}");

    let wire =
        admin.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await.unwrap().into_inner();
    let manifest = Manifest::try_from(wire).unwrap();
    let paths: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, expected.keys().map(String::as_str).collect::<Vec<_>>());
    for f in &manifest.files {
        assert!(f.object.starts_with("llama/"), "{} reads {}", f.path, f.object);
        assert_eq!(f.size, expected[&f.path].len() as u64, "{}", f.path);
        let real = models.join(&f.object);
        assert_eq!(std::fs::read(&real).unwrap(), expected[&f.path], "{} -> {}", f.path, f.object);
        assert!(!std::fs::symlink_metadata(&real).unwrap().is_symlink(), "{} reads through a link", f.path);
    }
    assert_eq!(manifest.file("alias.bin").unwrap().object, "llama/model.bin");
    assert_eq!(manifest.file("tokdir/tokenizer.json").unwrap().object, "llama/tok/tokenizer.json");
    // Kept with the version.
    let versions =
        admin.list_versions(pb::ListVersionsRequest { dataset: "llama".into() }).await.unwrap().into_inner().versions;
    assert_eq!(versions[0].skipped, v1.skipped);
    let datasets = admin.list_datasets(pb::ListDatasetsRequest {}).await.unwrap().into_inner().datasets;
    assert_eq!(datasets[0].outside_links, "skip");

    // A directory link back into its own ancestors is a cycle: named, whatever the policy.
    symlink("..", llama.join("tok/loop")).unwrap();
    let err = snapshot(&mut admin, "llama").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("\"llama/tok/loop\"") && err.message().contains("cycle"), "{}", err.message());
    std::fs::remove_file(llama.join("tok/loop")).unwrap();

    // A prefix that is itself a link out of the source is refused.
    symlink(tmp.join("outside"), models.join("escape")).unwrap();
    admin.add_dataset(dataset("escape", "local", "escape")).await.unwrap();
    let err = snapshot(&mut admin, "escape").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("outside the source"), "{}", err.message());
}
