//! What a pod sees is exactly the dataset: no byte from outside its prefix (whatever its links
//! say), and every file under its own name, byte for byte. A real hub over mutual TLS, a
//! spoke, FUSE mounts (needs root and /dev/fuse), and `file://` and S3 sources.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use aqueduct_e2e::{
    SourceKind, World, io, local_client, mount_when_known, socket_of, stored_chunks, world, write_model,
};
use aqueduct_hub::chunker::Chunker;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_proto::{ChunkerParams, Digest};
use aqueduct_testkit::{can_mount_fuse, noise};
use tonic::Code;

const MIB: u64 = 1 << 20;

/// Every regular file under `dir`, by path relative to it, with its bytes (links not followed).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                dirs.push(entry.path());
            } else {
                assert!(kind.is_file(), "{} is neither a file nor a directory", entry.path().display());
                let rel = entry.path().strip_prefix(dir).unwrap().to_str().unwrap().to_string();
                files.insert(rel, std::fs::read(entry.path()).unwrap());
            }
        }
    }
    files
}

/// The chunk digests of a file's bytes, cut as the hub cuts them.
fn chunk_digests(bytes: &[u8]) -> Vec<Digest> {
    Chunker::new(ChunkerParams::DEFAULT).chunk(bytes, |_| {}).unwrap().into_iter().map(|c| c.digest).collect()
}

/// Mounts version `version` of the world's dataset through a spoke of region `eu` (rolled out
/// and Ready first); returns the mountpoint, the spoke's store directory and its config.
async fn mount_version(w: &mut World, version: u64) -> (PathBuf, PathBuf, PathBuf) {
    let config = w.region("eu", 500 * MIB).await;
    w.start_spoke(&config);
    let mut local = local_client(&socket_of(&config)).await;
    w.rollout(version, &["eu"]).await;
    w.wait_ready(version).await;
    let mnt = w.root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    mount_when_known(&mut local, "llama", version, &mnt).await.unwrap();
    (mnt, config.parent().unwrap().join("store"), config)
}

async fn unmount(config: &Path, mnt: &Path) {
    let mut local = local_client(&socket_of(config)).await;
    local.unmount(local::UnmountRequest { mountpoint: mnt.display().to_string() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_out_of_a_dataset_put_no_byte_from_outside_in_the_manifest_the_store_or_the_mount() {
    if !can_mount_fuse() {
        return;
    }
    let mut w = world(SourceKind::Dir).await;
    let model = write_model(&w.data, 1);
    let hub_dir = w.root.join("hub");
    let secret = noise(700 << 10, 0x5ec7e7);
    std::fs::create_dir_all(w.root.join("outside")).unwrap();
    std::fs::write(w.root.join("outside/secret.bin"), &secret).unwrap();
    symlink("/etc", w.data.join("etc")).unwrap();
    symlink("../../outside/secret.bin", w.data.join("secret.bin")).unwrap();
    symlink(&hub_dir, w.data.join("hub")).unwrap();
    symlink(hub_dir.join("pki/issuer.key"), w.data.join("tok/ca.key")).unwrap();
    // A link inside the dataset is followed: the same bytes, free on the wire.
    symlink("model.safetensors", w.data.join("alias.safetensors")).unwrap();

    // The hub's data directory can never be inside a source.
    let holding = pb::Source {
        name: "everything".into(),
        url: format!("file://{}", w.root.display()),
        options: Default::default(),
        created_unix_ms: 0,
    };
    let err = w.admin.add_source(pb::AddSourceRequest { source: Some(holding) }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("hub's own files"), "{}", err.message());

    // By default: refused, each link named with its target.
    let mut events = w.admin.snapshot(pb::SnapshotRequest { dataset: "llama".into() }).await.unwrap().into_inner();
    let err = loop {
        match events.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the snapshot ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    for word in [
        "\"llama/etc\"",
        "\"/etc\"",
        "\"llama/secret.bin\"",
        "outside/secret.bin",
        "\"llama/hub\"",
        "\"llama/tok/ca.key\"",
    ] {
        assert!(err.message().contains(word), "{:?} lacks {word}", err.message());
    }

    // With the dataset's option: skipped and listed.
    let set = pb::UpdateDatasetRequest { name: "llama".into(), outside_links: "skip".into(), ..Default::default() };
    w.admin.update_dataset(set).await.unwrap();
    let v1 = w.snapshot().await;
    let skipped: Vec<&str> = v1.skipped.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(skipped, ["llama/etc", "llama/hub", "llama/secret.bin", "llama/tok/ca.key"], "{:?}", v1.skipped);
    let (mnt, store, config) = mount_version(&mut w, v1.version).await;
    let manifest = w.manifest(v1.version).await;

    // Everything outside the prefix a link pointed at: /etc, the secret, the hub's files.
    let mut outside: Vec<PathBuf> = ["/etc/shadow", "/etc/passwd", "/etc/hostname", "/etc/hosts"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    outside.push(w.root.join("outside/secret.bin"));
    outside.extend(tree(&hub_dir).keys().map(|p| hub_dir.join(p)));
    let mut outside_chunks = HashSet::new();
    let mut needles = Vec::new();
    for path in &outside {
        let bytes = std::fs::read(path).unwrap();
        outside_chunks.extend(chunk_digests(&bytes));
        // A distinctive run of each file's bytes (past PEM headers; not a run of padding):
        // found nowhere it should not be.
        if bytes.len() >= 64 {
            let at = (bytes.len() / 2).min(bytes.len() - 48);
            let needle = bytes[at..at + 48].to_vec();
            if needle.iter().collect::<HashSet<_>>().len() >= 16 {
                needles.push((path.clone(), needle));
            }
        }
    }
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);

    // The hub's manifest.
    for f in &manifest.files {
        assert!(f.object.starts_with("llama/"), "{} is read from {}", f.path, f.object);
        for c in &f.chunks {
            assert!(!outside_chunks.contains(&c.digest), "{} holds a chunk of a file outside the dataset", f.path);
        }
    }
    let paths: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["alias.safetensors", "config.json", "model.safetensors", "tok/tokenizer.json"]);

    // The spoke's store: every chunk it holds, hashed.
    let stored = stored_chunks(&store);
    assert!(!stored.is_empty());
    let mut stored_bytes = 0;
    for digest in stored.keys() {
        let bytes = std::fs::read(aqueduct_spoke::store::chunk_path(&store, digest)).unwrap();
        assert_eq!(Digest::of(&bytes), *digest, "a stored chunk does not match its name");
        assert!(!outside_chunks.contains(digest), "the store holds a chunk of a file outside the dataset");
        for (path, needle) in &needles {
            assert!(!contains(&bytes, needle), "the store holds bytes of {}", path.display());
        }
        stored_bytes += bytes.len();
    }

    // The mount: exactly the dataset's files, none holding an outside byte.
    let (dir, expected) = (mnt.clone(), model.clone());
    let needles_in = needles.clone();
    let seen = io(move || {
        let seen = tree(&dir);
        for (path, bytes) in &seen {
            for (outside, needle) in &needles_in {
                assert!(!contains(bytes, needle), "{path} in the mount holds bytes of {}", outside.display());
            }
        }
        for (path, bytes) in &expected {
            assert_eq!(seen.get(path.as_str()), Some(bytes), "{path}");
        }
        seen
    })
    .await;
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), paths);
    assert_eq!(seen["alias.safetensors"], model[1].1);
    println!(
        "checked {} stored chunks ({} bytes) and {} mounted files against {} chunks and {} byte runs of {} files \
         outside the dataset: none found",
        stored.len(),
        stored_bytes,
        seen.len(),
        outside_chunks.len(),
        needles.len(),
        outside.len()
    );
    unmount(&config, &mnt).await;
}

/// A tree with every kind of awkward name, empty files, deep paths and 1500 small files.
fn write_awkward_tree(dir: &Path, newline: bool) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut names = vec![
        "x#123".to_string(),
        "100%.csv".into(),
        "%41%2F".into(),
        "with space.txt".into(),
        " leading and trailing ".into(),
        "plus+sign&amp=;".into(),
        "\u{65e5}\u{672c}\u{8a9e}/\u{30e2}\u{30c7}\u{30eb}.safetensors".into(),
        "caf\u{e9}/na\u{ef}ve \u{1f600}.json".into(),
        "empty".into(),
        "empty dir name/empty too".into(),
        "..dots/.hidden".into(),
        "brackets [1] {2} (3)".into(),
    ];
    if newline {
        names.push("new\nline".into());
    }
    let deep = (0..40).map(|i| format!("d{i}")).collect::<Vec<_>>().join("/");
    names.push(format!("{deep}/deep.bin"));
    for (i, name) in names.into_iter().enumerate() {
        let bytes = if name.contains("empty") { Vec::new() } else { noise(1 + i * 301, i as u64) };
        files.insert(name, bytes);
    }
    files.insert("model/weights.bin".into(), noise(3 << 20, 77));
    for i in 0..1500 {
        files.insert(format!("small/{:02}/{i:04}.txt", i % 30), format!("small file {i}\n").into_bytes());
    }
    for (path, bytes) in &files {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, bytes).unwrap();
    }
    files
}

async fn awkward_names_mount_byte_equal(kind: SourceKind) {
    if !can_mount_fuse() {
        return;
    }
    let mut w = world(kind).await;
    // A name with a newline is a fine file name; object_store cannot request such an S3 key,
    // so that source names it instead (see the S3 snapshot tests).
    let files = write_awkward_tree(&w.data, kind == SourceKind::Dir);
    let v1 = w.snapshot().await;
    assert!(v1.skipped.is_empty(), "{:?}", v1.skipped);
    assert_eq!(v1.files, files.len() as u64);
    let (mnt, _, config) = mount_version(&mut w, v1.version).await;
    let dir = mnt.clone();
    let (seen, count) = io(move || {
        let seen = tree(&dir);
        let count = seen.len();
        (seen, count)
    })
    .await;
    assert_eq!(seen.keys().collect::<Vec<_>>(), files.keys().collect::<Vec<_>>(), "the mount's files differ");
    for (path, bytes) in &files {
        assert!(seen[path] == *bytes, "{path:?} differs");
    }
    println!("{kind:?}: {count} files mounted byte-equal to the source");
    unmount(&config, &mnt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn awkward_names_and_many_small_files_mount_byte_equal_from_a_directory() {
    awkward_names_mount_byte_equal(SourceKind::Dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn awkward_names_and_many_small_files_mount_byte_equal_from_s3() {
    awkward_names_mount_byte_equal(SourceKind::MemoryS3).await;
}
