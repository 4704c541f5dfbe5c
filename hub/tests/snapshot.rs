//! Snapshots against real sources: an S3 server (s3s-fs on 127.0.0.1, signatures checked)
//! and a local directory (`file://`).

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use aqueduct_hub::snapshot::{Progress, SnapshotError, SnapshotOptions, snapshot};
use aqueduct_hub::source::testing::{counting, failing};
use aqueduct_hub::source::{Listing, ObjectReader, Source, SourceError, SourceSpec};
use aqueduct_hub::store::meta::SqlStore;
use aqueduct_hub::store::{DatasetRecord, MetaStore, SourceRecord};
use aqueduct_proto::{Digest, Manifest};
use aqueduct_testkit::memory::MemoryS3Server;
use aqueduct_testkit::{S3Server, noise};

/// A small model-shaped dataset: header + tensors, config, tokenizer, a nested file, an
/// empty file.
fn write_dataset(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut model = b"{\"__metadata__\":{},\"w\":{\"dtype\":\"F16\"}}".to_vec();
    model.extend(noise(5 << 20, 1));
    files.insert("model.safetensors".to_string(), model);
    files.insert("config.json".to_string(), b"{\"hidden_size\": 4096}\n".to_vec());
    files.insert("tokenizer.json".to_string(), noise(300 << 10, 2));
    files.insert("extra/notes.txt".to_string(), noise(3 << 20, 3));
    files.insert("empty.bin".to_string(), Vec::new());
    for (path, bytes) in &files {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, bytes).unwrap();
    }
    files
}

fn store(url: &str, options: BTreeMap<String, String>, prefix: &str) -> (Arc<dyn MetaStore>, DatasetRecord) {
    let db = SqlStore::in_memory().unwrap();
    db.add_source(&SourceRecord { name: "src".into(), url: url.into(), options, created_unix_ms: 0 }).unwrap();
    let dataset = DatasetRecord {
        name: "llama".into(),
        source: "src".into(),
        prefix: prefix.into(),
        created_unix_ms: 0,
        latest_version: 0,
        outside_links: Default::default(),
        keep_versions: 0,
    };
    db.add_dataset(&dataset).unwrap();
    (Arc::new(db), dataset)
}

async fn cut(
    db: &Arc<dyn MetaStore>,
    dataset: &DatasetRecord,
    source: Arc<dyn Source>,
) -> Result<aqueduct_hub::snapshot::SnapshotOutcome, SnapshotError> {
    snapshot(db, dataset, source, SnapshotOptions::default(), Arc::new(Progress::default())).await
}

/// Reads every chunk back from the source at its recorded location and checks it against
/// both its digest and the original bytes.
async fn assert_reassembles(source: &dyn Source, manifest: &Manifest, originals: &BTreeMap<String, Vec<u8>>) {
    assert_eq!(
        manifest.files.iter().map(|f| f.path.clone()).collect::<Vec<_>>(),
        originals.keys().cloned().collect::<Vec<_>>()
    );
    for file in &manifest.files {
        let mut rebuilt = Vec::new();
        for chunk in &file.chunks {
            let reader = source.read(&file.object, chunk.offset..chunk.end(), None).await.unwrap();
            let bytes = tokio::task::spawn_blocking(move || {
                let mut buf = Vec::new();
                reader.into_blocking().unwrap().read_to_end(&mut buf).unwrap();
                buf
            })
            .await
            .unwrap();
            assert_eq!(Digest::of(&bytes), chunk.digest, "{} at {}", file.path, chunk.offset);
            rebuilt.extend(bytes);
        }
        assert_eq!(rebuilt, originals[&file.path], "{}", file.path);
        assert_eq!(file.size, rebuilt.len() as u64);
    }
}

/// The same checks for any source: reassembly, reuse without reads, one changed file.
async fn lifecycle(
    db: Arc<dyn MetaStore>,
    dataset: DatasetRecord,
    source: Arc<dyn Source>,
    data_dir: &Path,
    object_gets: impl Fn() -> u64,
) {
    let mut originals = write_dataset(data_dir);
    let v1 = cut(&db, &dataset, source.clone()).await.unwrap();
    assert!(!v1.unchanged);
    assert_eq!(v1.record.number, 1);
    assert_eq!(v1.record.files, originals.len() as u64);
    assert_eq!(v1.record.bytes, originals.values().map(|b| b.len() as u64).sum::<u64>());
    assert_eq!(v1.record.bytes_read, v1.record.bytes);
    let m1 = db.version("llama", Some(1)).unwrap().unwrap().manifest;
    assert_reassembles(source.as_ref(), &m1, &originals).await;

    // Nothing changed: no object is read, the root is the same, no version is cut.
    let gets = object_gets();
    let again = cut(&db, &dataset, source.clone()).await.unwrap();
    assert_eq!(object_gets(), gets, "an unchanged dataset was read again");
    assert!(again.unchanged);
    assert_eq!(again.record.root, v1.record.root);
    assert_eq!(db.versions("llama").unwrap().len(), 1);

    // One file changes: only its entry changes.
    let config = b"{\"hidden_size\": 8192}\n".to_vec();
    std::fs::write(data_dir.join("config.json"), &config).unwrap();
    originals.insert("config.json".into(), config.clone());
    let gets = object_gets();
    let v2 = cut(&db, &dataset, source.clone()).await.unwrap();
    assert_eq!(object_gets() - gets, 1, "only the changed object should be read");
    assert_eq!(v2.record.number, 2);
    assert_eq!(v2.record.bytes_read, config.len() as u64);
    assert_eq!(v2.record.new_bytes, config.len() as u64);
    assert_ne!(v2.record.root, v1.record.root);
    let m2 = db.version("llama", Some(2)).unwrap().unwrap().manifest;
    for (a, b) in m1.files.iter().zip(&m2.files) {
        if a.path == "config.json" {
            assert_ne!(a.chunks, b.chunks);
        } else {
            assert_eq!(a, b);
        }
    }
    assert_reassembles(source.as_ref(), &m2, &originals).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_snapshot_reassembles_reuses_and_tracks_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3")).await.unwrap();
    let creds = tmp.path().join("credentials");
    server.write_credentials(&creds).unwrap();
    let data_dir = tmp.path().join("s3/models/llama-3");
    std::fs::create_dir_all(&data_dir).unwrap();
    let options = server.source_options(&creds);
    let spec = SourceSpec::parse("s3://models", options.clone()).unwrap();
    let source = spec.open().unwrap();
    source.probe().await.unwrap();
    let (db, dataset) = store("s3://models", options, "llama-3");
    let counters = server.counters.clone();
    lifecycle(db, dataset, source, &data_dir, move || counters.object_gets.load(std::sync::atomic::Ordering::Relaxed))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_snapshot_reassembles_reuses_and_tracks_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().display());
    let (source, counter) = counting(SourceSpec::parse(&url, BTreeMap::new()).unwrap().open().unwrap());
    let (db, dataset) = store(&url, BTreeMap::new(), "llama");
    lifecycle(db, dataset, source, &tmp.path().join("llama"), move || counter.reads()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_survives_an_insertion_that_shifts_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("big");
    std::fs::create_dir_all(&dir).unwrap();
    let mut data = noise(64 << 20, 42);
    std::fs::write(dir.join("model.safetensors"), &data).unwrap();
    let url = format!("file://{}", tmp.path().display());
    let source = SourceSpec::parse(&url, BTreeMap::new()).unwrap().open().unwrap();
    let (db, dataset) = store(&url, BTreeMap::new(), "big");
    cut(&db, &dataset, source.clone()).await.unwrap();

    // A header that grows by 100 bytes near the start shifts every byte after it.
    data.splice(1000..1000, noise(100, 9));
    std::fs::write(dir.join("model.safetensors"), &data).unwrap();
    let v2 = cut(&db, &dataset, source).await.unwrap();
    let m1 = db.version("llama", Some(1)).unwrap().unwrap().manifest;
    let m2 = db.version("llama", Some(2)).unwrap().unwrap().manifest;
    let old: HashSet<Digest> = m1.distinct_chunks().into_iter().map(|(d, _)| d).collect();
    let shared: u64 = m2.files[0].chunks.iter().filter(|c| old.contains(&c.digest)).map(|c| u64::from(c.length)).sum();
    let ratio = shared as f64 / m2.total_bytes() as f64;
    assert!(ratio >= 0.95, "only {:.1}% of v2's bytes are in chunks shared with v1", ratio * 100.0);
    assert_eq!(v2.record.new_bytes, m2.total_bytes() - shared);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_leave_no_version_behind() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("llama"));
    std::fs::create_dir_all(tmp.path().join("void")).unwrap();
    let url = format!("file://{}", tmp.path().display());
    let inner = SourceSpec::parse(&url, BTreeMap::new()).unwrap().open().unwrap();
    let (db, dataset) = store(&url, BTreeMap::new(), "llama");

    let err = cut(&db, &dataset, failing(inner.clone(), "tokenizer")).await.unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    assert!(db.versions("llama").unwrap().is_empty(), "a failed snapshot left a version");

    let empty = DatasetRecord { prefix: "void".into(), ..dataset.clone() };
    let err = cut(&db, &empty, inner.clone()).await.unwrap_err();
    assert!(matches!(err, SnapshotError::EmptyPrefix { .. }), "{err}");
    assert!(err.to_string().contains("no objects") && err.to_string().contains("void"), "{err}");
    assert!(db.versions("llama").unwrap().is_empty());

    // And the healthy source still cuts v1.
    assert_eq!(cut(&db, &dataset, inner).await.unwrap().record.number, 1);
}

/// A source whose reads of objects whose key contains `poison` yield `after` bytes and then
/// fail, as a connection that drops in the middle of an object.
#[derive(Debug)]
struct BreaksMidway {
    inner: Arc<dyn Source>,
    poison: &'static str,
    after: usize,
}

#[async_trait::async_trait]
impl Source for BreaksMidway {
    fn url(&self) -> &str {
        self.inner.url()
    }
    async fn probe(&self) -> Result<(), SourceError> {
        self.inner.probe().await
    }
    async fn list(&self, prefix: &str) -> Result<Listing, SourceError> {
        self.inner.list(prefix).await
    }
    async fn read(&self, key: &str, range: Range<u64>, etag: Option<&str>) -> Result<ObjectReader, SourceError> {
        if !key.contains(self.poison) {
            return self.inner.read(key, range, etag).await;
        }
        let broken =
            SourceError::Io { url: self.url().into(), detail: "connection reset mid-object (injected)".into() };
        let pieces = (0..self.after.div_ceil(1 << 20))
            .map(|i| Ok(bytes::Bytes::from(noise((self.after - (i << 20)).min(1 << 20), i as u64))))
            .chain([Err(broken)]);
        Ok(ObjectReader::Stream(Box::pin(futures::stream::iter(pieces.collect::<Vec<_>>()))))
    }
}

/// A read that breaks after 37 MiB (more than the chunker holds at once, so that scans and
/// hashes are in flight on every core when it breaks) ends the snapshot with that error,
/// naming the object, and leaves no version behind; nothing is left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_breaks_mid_file_ends_the_snapshot_with_its_error() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("llama"));
    let url = format!("file://{}", tmp.path().display());
    let inner = SourceSpec::parse(&url, BTreeMap::new()).unwrap().open().unwrap();
    let (db, dataset) = store(&url, BTreeMap::new(), "llama");
    let source = Arc::new(BreaksMidway { inner: inner.clone(), poison: "model", after: 37 << 20 });
    let err = cut(&db, &dataset, source).await.unwrap_err();
    assert!(matches!(err, SnapshotError::Read { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("model.safetensors") && text.contains("connection reset mid-object"), "{text}");
    assert!(db.versions("llama").unwrap().is_empty(), "a failed snapshot left a version");
    assert_eq!(cut(&db, &dataset, inner).await.unwrap().record.number, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_sources_that_are_missing_or_denied_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3")).await.unwrap();
    std::fs::create_dir_all(tmp.path().join("s3/models")).unwrap();
    let good = tmp.path().join("good");
    server.write_credentials(&good).unwrap();
    let bad = tmp.path().join("bad");
    std::fs::write(&bad, "[default]\naws_access_key_id = aqueduct-test\naws_secret_access_key = wrong\n").unwrap();
    let open = |bucket: &str, creds: &Path| {
        SourceSpec::parse(&format!("s3://{bucket}"), server.source_options(creds)).unwrap().open().unwrap()
    };
    open("models", &good).probe().await.unwrap();
    let err = open("models", &bad).probe().await.unwrap_err();
    assert!(err.to_string().contains("denied access"), "{err}");
    assert!(!err.to_string().contains("wrong"), "the secret leaked into the message: {err}");
    let err = open("no-such-bucket", &good).probe().await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// An S3 bucket (a real S3 server over a map: it holds keys no folder can) with what real
/// buckets have: folder markers, a file beside a directory of its name, keys with `.`, `..`
/// and `//` segments, a control character, and names with `#`, `%`, `+`, spaces and Unicode;
/// more than one page of keys. Every key is a file at exactly its name, or named with why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_keys_are_files_at_their_exact_names_or_named_with_why() {
    let tmp = tempfile::tempdir().unwrap();
    let server = MemoryS3Server::start().await.unwrap();
    let creds = tmp.path().join("credentials");
    server.write_credentials(&creds).unwrap();
    let s3 = &server.store;
    s3.create_bucket("models");
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (i, path) in [
        "x#123",
        "100%.csv",
        "with space.txt",
        "plus+sign",
        "\u{65e5}\u{672c}/\u{30e2}\u{30c7}\u{30eb}.bin",
        "dir/inside.bin",
        "tok/x.json",
        "a/b/c/d/e/f/g/h/deep.txt",
        "%41?&=;:@$,!'()*[]{}",
        "..hidden/..x",
    ]
    .into_iter()
    .enumerate()
    {
        files.insert(path.to_string(), noise(1000 + i * 77, i as u64));
    }
    files.insert("empty.bin".into(), Vec::new());
    // More than one page (1000 keys) of listing.
    for i in 0..1100 {
        files.insert(format!("many/{i:04}"), format!("small file {i}").into_bytes());
    }
    for (path, bytes) in &files {
        s3.put("models", &format!("llm/{path}"), bytes.clone());
    }
    for (key, bytes) in [
        ("llm/", &b""[..]),
        ("llm/dir/", b""),
        ("llm/tok", b"shadowed"),
        ("llm/./dot.txt", b"dot"),
        ("llm/a/../up.txt", b"up"),
        ("llm//double.txt", b"double"),
        ("llm/full-marker/", b"bytes in a marker"),
        ("llm/ctl\u{1}.txt", b"control"),
        ("llmx/not-under-the-prefix", b"x"),
        ("other/x", b"x"),
    ] {
        s3.put("models", key, bytes.to_vec());
    }
    let options = server.source_options(&creds);
    let source = SourceSpec::parse("s3://models", options.clone()).unwrap().open().unwrap();
    source.probe().await.unwrap();
    let (db, dataset) = store("s3://models", options, "llm");

    let v1 = cut(&db, &dataset, source.clone()).await.unwrap();
    let m1 = db.version("llama", Some(1)).unwrap().unwrap().manifest;
    assert_reassembles(source.as_ref(), &m1, &files).await;
    for f in &m1.files {
        assert_eq!(f.object, format!("llm/{}", f.path), "a key did not round-trip");
    }
    let skipped: Vec<(&str, &str)> = v1.record.skipped.iter().map(|s| (s.key.as_str(), s.reason.as_str())).collect();
    println!("skipped: {skipped:#?}");
    let expect = [
        ("llm/./dot.txt", "'.' segment"),
        ("llm//double.txt", "empty segment"),
        ("llm/a/../up.txt", "'..' segment"),
        ("llm/ctl\u{1}.txt", "control character U+0001"),
        ("llm/full-marker/", "ends with '/'"),
        ("llm/tok", "directory of the same name"),
    ];
    assert_eq!(skipped.len(), expect.len(), "{skipped:?}");
    for ((key, reason), (want_key, want_reason)) in skipped.iter().zip(expect) {
        assert_eq!(*key, want_key);
        assert!(reason.contains(want_reason), "{key:?}: {reason}");
    }
    // What was left out stays with the version.
    assert_eq!(db.version("llama", Some(1)).unwrap().unwrap().record.skipped, v1.record.skipped);

    // Unchanged: nothing is read again, and the summary still names what is left out.
    let gets = server.object_gets();
    let again = cut(&db, &dataset, source.clone()).await.unwrap();
    assert!(again.unchanged);
    assert_eq!(server.object_gets(), gets);
    assert_eq!(again.record.skipped, v1.record.skipped);

    // A key with `#` changes: only it is read again, at its exact name.
    files.insert("x#123".into(), b"changed".to_vec());
    s3.put("models", "llm/x#123", b"changed".to_vec());
    let gets = server.object_gets();
    let v2 = cut(&db, &dataset, source.clone()).await.unwrap();
    assert_eq!((v2.record.number, server.object_gets() - gets), (2, 1));
    let m2 = db.version("llama", Some(2)).unwrap().unwrap().manifest;
    assert_reassembles(source.as_ref(), &m2, &files).await;

    // A source that names a prefix in its URL lists relative to it, decoded.
    s3.put("models", "My Models/llm/a b", b"ab".to_vec());
    let opts = server.source_options(&creds);
    let spaced = SourceSpec::parse("s3://models/My%20Models", opts.clone()).unwrap().open().unwrap();
    let (db, dataset) = store("s3://models/My%20Models", opts, "llm");
    let v = cut(&db, &dataset, spaced.clone()).await.unwrap();
    let m = db.version("llama", Some(v.record.number)).unwrap().unwrap().manifest;
    assert_eq!((m.files.len(), m.files[0].path.as_str(), m.files[0].object.as_str()), (1, "a b", "My Models/llm/a b"));
    assert_reassembles(spaced.as_ref(), &m, &BTreeMap::from([("a b".to_string(), b"ab".to_vec())])).await;
}

/// An object that changes between the listing and its read is a `Changed` error (the S3
/// server honours `If-Match`), never bytes of another object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_object_replaced_after_the_listing_is_refused_at_read() {
    let tmp = tempfile::tempdir().unwrap();
    let server = MemoryS3Server::start().await.unwrap();
    let creds = tmp.path().join("credentials");
    server.write_credentials(&creds).unwrap();
    server.store.put("models", "llm/a", b"first".to_vec());
    let source = SourceSpec::parse("s3://models", server.source_options(&creds)).unwrap().open().unwrap();
    let listing = source.list("llm").await.unwrap();
    let object = &listing.objects[0];
    assert_eq!((object.path.as_str(), object.size), ("a", 5));
    server.store.put("models", "llm/a", b"other".to_vec());
    let err = source.read(&object.key, 0..5, object.etag.as_deref()).await.err().unwrap();
    assert!(matches!(err, aqueduct_hub::source::SourceError::Changed { .. }), "{err}");
}
