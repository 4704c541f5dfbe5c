//! Cutting a version: list the dataset's prefix, chunk and hash what changed, record it.
//!
//! What the listing found becomes the version's files by [`plan`], a pure function: every
//! object whose key is a valid path is a file, at exactly that path; S3 folder markers are
//! ignored; anything else (a key the path rules refuse, a file shadowed by a directory of the
//! same name, a name that is not UTF-8, a dangling link...) is left out and listed with the
//! version, with why. Links that lead outside the prefix (or into the hub's own files) fail
//! the snapshot, naming each, unless the dataset says to skip them; a cycle of directory
//! links always fails it.
//!
//! An object whose size, mtime and etag are those recorded for the same path in the newest
//! version keeps its chunk list and is not read at all. Every other object is read once,
//! streamed through the [`Chunker`] on a blocking thread; several objects are processed at
//! once (one per core by default), each in constant memory. The manifest is then written in
//! one transaction; if its root equals the newest version's, nothing is written and the
//! newest version is reported as unchanged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aqueduct_proto::domain::modes::OutsideLinks;
use aqueduct_proto::domain::validate_path;
use aqueduct_proto::{ChunkerParams, FileEntry, Manifest, ManifestError};
use futures::{StreamExt, TryStreamExt};
use tracing::{debug, info, instrument, warn};

use crate::chunker::Chunker;
use crate::chunker::pool::HashPool;
use crate::source::keys::{KeyClass, clashes, classify_key};
use crate::source::{Listing, ObjectInfo, Refusal, Source, SourceError};
use crate::store::{
    DatasetRecord, MetaStore, SkippedObject, SourceStamp, StoreError, StoredVersion, VersionCut, VersionRecord,
};

/// Entries named in one error message at most.
const NAMED: usize = 50;

/// `items` joined for a message, the first [`NAMED`] of them.
fn named(items: &[String]) -> String {
    let mut text = items.iter().take(NAMED).cloned().collect::<Vec<_>>().join("; ");
    if items.len() > NAMED {
        text.push_str(&format!("; and {} more", items.len() - NAMED));
    }
    text
}

fn skipped_note(skipped: &[SkippedObject]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let items: Vec<String> = skipped.iter().map(|s| format!("{:?}: {}", s.key, s.reason)).collect();
    format!(" ({} object(s) there cannot be files of a version: {})", skipped.len(), named(&items))
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "dataset {dataset:?}: no objects under {url} prefix {prefix:?}{}; check the dataset's prefix or upload the files first",
        skipped_note(skipped)
    )]
    EmptyPrefix { dataset: String, url: String, prefix: String, skipped: Vec<SkippedObject> },
    #[error(
        "dataset {dataset:?}: {} symbolic link(s) lead outside its prefix {prefix:?} or into the hub's own files, and \
         are never followed: {}; remove them or copy what they point to into the dataset, or leave such links out \
         of its versions with `aq dataset set {dataset} --outside-links skip`",
        links.len(), named(links)
    )]
    OutsideLinks { dataset: String, prefix: String, links: Vec<String> },
    #[error(
        "dataset {dataset:?}: directory links that lead back into a directory holding them (a cycle): {}; \
         remove them or point them elsewhere",
        named(links)
    )]
    LinkCycles { dataset: String, links: Vec<String> },
    #[error("dataset {dataset:?}: object {key:?} cannot be a file of a version: {source}")]
    BadObject { dataset: String, key: String, source: ManifestError },
    #[error("dataset {dataset:?}: {source}")]
    TooLarge { dataset: String, source: ManifestError },
    #[error("dataset {dataset:?}: reading {key:?} failed: {source}")]
    Read { dataset: String, key: String, source: std::io::Error },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("snapshot task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Live counters of a running snapshot, for progress reports.
#[derive(Debug, Default)]
pub struct Progress {
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_hashed: AtomicU64,
    pub bytes_reused: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
pub struct SnapshotOptions {
    pub chunker: ChunkerParams,
    /// Objects read at once. Their bytes are cut and hashed by one pool of a thread per core
    /// that they share, so one large object uses every core too.
    pub parallelism: usize,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self { chunker: ChunkerParams::DEFAULT, parallelism: cores }
    }
}

/// What a listing becomes: the objects that are the version's files, and what is left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sorted by path; every path valid and no file shadowed by a directory.
    pub objects: Vec<ObjectInfo>,
    /// Sorted by key.
    pub skipped: Vec<SkippedObject>,
}

/// Decides what of `listing` (of `dataset`'s `prefix`) is in the version; see the module's
/// documentation.
pub fn plan(dataset: &str, prefix: &str, listing: Listing, policy: OutsideLinks) -> Result<Plan, SnapshotError> {
    let (mut skipped, mut outside, mut cycles) = (Vec::new(), Vec::new(), Vec::new());
    for refused in listing.refused {
        let named = format!("{:?}: {}", refused.key, refused.why.reason());
        match refused.why {
            Refusal::LinkCycle { .. } => cycles.push(named),
            Refusal::OutsideLink { .. } | Refusal::HubFiles { .. } if policy == OutsideLinks::Fail => {
                outside.push(named)
            }
            why => skipped.push(SkippedObject { key: refused.key, reason: why.reason() }),
        }
    }
    if !cycles.is_empty() {
        return Err(SnapshotError::LinkCycles { dataset: dataset.to_string(), links: cycles });
    }
    if !outside.is_empty() {
        return Err(SnapshotError::OutsideLinks {
            dataset: dataset.to_string(),
            prefix: prefix.to_string(),
            links: outside,
        });
    }
    let mut objects = Vec::new();
    for object in listing.objects {
        match classify_key(&object.path, object.size) {
            KeyClass::File(_) => objects.push(object),
            KeyClass::FolderMarker => {}
            KeyClass::Refused(reason) => skipped.push(SkippedObject { key: object.key, reason }),
        }
    }
    let shadowed: HashMap<String, String> =
        clashes(objects.iter().map(|o| o.path.as_str())).into_iter().map(|c| (c.path.clone(), c.reason())).collect();
    objects.retain(|o| match shadowed.get(&o.path) {
        Some(reason) => {
            skipped.push(SkippedObject { key: o.key.clone(), reason: reason.clone() });
            false
        }
        None => true,
    });
    objects.sort_by(|a, b| a.path.cmp(&b.path));
    skipped.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(Plan { objects, skipped })
}

#[derive(Clone, Debug)]
pub struct SnapshotOutcome {
    pub record: VersionRecord,
    /// True when the dataset had not changed: `record` is the existing newest version, with
    /// this run's `bytes_read` and no new bytes.
    pub unchanged: bool,
}

/// Runs a metadata call on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    db: &Arc<dyn MetaStore>,
    f: impl FnOnce(&dyn MetaStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || f(db.as_ref())).await.map_err(|e| StoreError::Task(e.to_string()))?
}

/// Cuts a new version of `dataset` from `source`.
#[instrument(skip_all, fields(dataset = %dataset.name, url = source.url()))]
pub async fn snapshot(
    db: &Arc<dyn MetaStore>,
    dataset: &DatasetRecord,
    source: Arc<dyn Source>,
    options: SnapshotOptions,
    progress: Arc<Progress>,
) -> Result<SnapshotOutcome, SnapshotError> {
    let name = dataset.name.clone();
    let previous = blocking(db, move |db| db.version(&name, None)).await?;
    let listing = source.list(&dataset.prefix).await?;
    let Plan { objects, skipped } = plan(&dataset.name, &dataset.prefix, listing, dataset.outside_links)?;
    for s in &skipped {
        warn!(key = s.key, reason = s.reason, "left out of the version");
    }
    if objects.is_empty() {
        return Err(SnapshotError::EmptyPrefix {
            dataset: dataset.name.clone(),
            url: source.url().to_string(),
            prefix: dataset.prefix.clone(),
            skipped,
        });
    }
    progress.files_total.store(objects.len() as u64, Ordering::Relaxed);
    // Sizes as the source lists them: summed without overflow, whatever they say.
    progress.bytes_total.store(objects.iter().map(|o| o.size).fold(0, u64::saturating_add), Ordering::Relaxed);

    let chunker = Chunker::new(options.chunker);
    // One pool for every object read at once: as many hashing threads as cores, whatever
    // `parallelism` is (each object's own thread only reads and walks).
    let pool = Arc::new(HashPool::per_core());
    // Reuse only chunk lists cut with the same parameters.
    let reusable = previous.as_ref().filter(|p| p.manifest.chunker == options.chunker);
    let bytes_read = Arc::new(AtomicU64::new(0));
    let files: Vec<(FileEntry, SourceStamp)> = futures::stream::iter(objects)
        .map(|object| {
            let reused = reusable.and_then(|p| reuse(p, &object));
            let (source, progress, bytes_read, dataset, pool) =
                (source.clone(), progress.clone(), bytes_read.clone(), dataset.name.clone(), pool.clone());
            async move {
                validate_path(&object.path).map_err(|source| SnapshotError::BadObject {
                    dataset: dataset.clone(),
                    key: object.key.clone(),
                    source,
                })?;
                let stamp =
                    SourceStamp { size: object.size, mtime_unix_ms: object.mtime_unix_ms, etag: object.etag.clone() };
                let chunks = match reused {
                    Some(chunks) => {
                        progress.bytes_reused.fetch_add(object.size, Ordering::Relaxed);
                        chunks
                    }
                    None => {
                        bytes_read.fetch_add(object.size, Ordering::Relaxed);
                        read_chunks(&dataset, source.as_ref(), &object, chunker, pool, &progress).await?
                    }
                };
                progress.files_done.fetch_add(1, Ordering::Relaxed);
                let entry = FileEntry {
                    path: object.path,
                    object: object.key,
                    size: object.size,
                    mode: object.mode,
                    mtime_unix_ms: object.mtime_unix_ms,
                    chunks,
                };
                Ok::<_, SnapshotError>((entry, stamp))
            }
        })
        .buffer_unordered(options.parallelism.max(1))
        .try_collect()
        .await?;

    let stamps: BTreeMap<String, SourceStamp> = files.iter().map(|(f, s)| (f.path.clone(), s.clone())).collect();
    let manifest = Manifest::new(dataset.name.clone(), 0, options.chunker, files.into_iter().map(|(f, _)| f).collect())
        .map_err(|source| match source {
            source @ aqueduct_proto::ManifestError::TooLarge { .. } => {
                SnapshotError::TooLarge { dataset: dataset.name.clone(), source }
            }
            source => SnapshotError::BadObject { dataset: dataset.name.clone(), key: String::new(), source },
        })?;

    let bytes_read = bytes_read.load(Ordering::Relaxed);
    if let Some(prev) = &previous
        && prev.record.root == manifest.root
    {
        info!(version = prev.record.number, bytes_read, "unchanged since the newest version");
        // The existing version's figures, with what this run read, found new and left out.
        let record = VersionRecord { new_bytes: 0, bytes_read, skipped, ..prev.record.clone() };
        return Ok(SnapshotOutcome { record, unchanged: true });
    }

    let known: HashSet<_> = previous.iter().flat_map(|p| p.manifest.distinct_chunks()).map(|(d, _)| d).collect();
    let new_bytes: u64 =
        manifest.distinct_chunks().iter().filter(|(d, _)| !known.contains(d)).map(|(_, len)| u64::from(*len)).sum();
    let previous_number = previous.as_ref().map_or(0, |p| p.record.number);
    let cut = VersionCut { stamps, new_bytes, bytes_read, created_unix_ms: now_unix_ms(), skipped };
    let record = blocking(db, move |db| db.insert_version(previous_number, &manifest, &cut)).await?;
    info!(
        version = record.number,
        files = record.files,
        bytes = record.bytes,
        new_bytes,
        bytes_read,
        skipped = record.skipped.len(),
        "version cut"
    );
    Ok(SnapshotOutcome { record, unchanged: false })
}

/// The chunk list recorded for the same object in the previous version, if it is unchanged.
fn reuse(previous: &StoredVersion, object: &ObjectInfo) -> Option<Vec<aqueduct_proto::ChunkRef>> {
    let stamp = previous.stamps.get(&object.path)?;
    let entry = previous.manifest.file(&object.path)?;
    let same = stamp.size == object.size
        && stamp.mtime_unix_ms == object.mtime_unix_ms
        && stamp.etag == object.etag
        && entry.object == object.key
        && entry.mode == object.mode;
    same.then(|| entry.chunks.clone())
}

#[instrument(skip_all, fields(key = %object.key, size = object.size))]
async fn read_chunks(
    dataset: &str,
    source: &dyn Source,
    object: &ObjectInfo,
    chunker: Chunker,
    pool: Arc<HashPool>,
    progress: &Arc<Progress>,
) -> Result<Vec<aqueduct_proto::ChunkRef>, SnapshotError> {
    if object.size == 0 {
        return Ok(Vec::new());
    }
    let read_err = |source| SnapshotError::Read { dataset: dataset.to_string(), key: object.key.clone(), source };
    let reader = source.read(&object.key, 0..object.size, object.etag.as_deref()).await?;
    let reader = reader.into_blocking().map_err(read_err)?;
    let progress = progress.clone();
    let chunks = tokio::task::spawn_blocking(move || {
        chunker.chunk_on(&pool, reader, |n| {
            progress.bytes_hashed.fetch_add(n, Ordering::Relaxed);
        })
    })
    .await?
    .map_err(read_err)?;
    let read: u64 = chunks.iter().map(|c| u64::from(c.length)).sum();
    if read != object.size {
        return Err(SourceError::Changed {
            url: source.url().to_string(),
            key: object.key.clone(),
            detail: format!("listed with {} bytes, read {read}", object.size),
        }
        .into());
    }
    debug!(chunks = chunks.len(), "object chunked");
    Ok(chunks)
}

pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Refused;

    fn object(key: &str, path: &str, size: u64) -> ObjectInfo {
        ObjectInfo { key: key.into(), path: path.into(), size, mtime_unix_ms: 0, etag: None, mode: 0o644 }
    }

    fn refused(key: &str, why: Refusal) -> Refused {
        Refused { key: key.into(), why }
    }

    #[test]
    fn every_object_is_a_file_or_named() {
        let listing = Listing {
            objects: vec![
                object("llm/a#1", "a#1", 1),
                object("llm/", "", 0),
                object("llm/dir/", "dir/", 0),
                object("llm/./dot.txt", "./dot.txt", 1),
                object("llm/../up", "../up", 1),
                object("llm//x", "/x", 1),
                object("llm/tok", "tok", 4),
                object("llm/tok/x", "tok/x", 1),
                object("llm/100%/\u{4e2d} b", "100%/\u{4e2d} b", 1),
            ],
            refused: vec![refused("llm/bad\\xFF", Refusal::Other("not UTF-8".into()))],
        };
        let plan = plan("d", "llm", listing, OutsideLinks::Fail).unwrap();
        let paths: Vec<&str> = plan.objects.iter().map(|o| o.path.as_str()).collect();
        assert_eq!(paths, ["100%/\u{4e2d} b", "a#1", "tok/x"]);
        let skipped: Vec<(&str, &str)> = plan.skipped.iter().map(|s| (s.key.as_str(), s.reason.as_str())).collect();
        let keys: Vec<&str> = skipped.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["llm/../up", "llm/./dot.txt", "llm//x", "llm/bad\\xFF", "llm/tok"]);
        assert!(skipped[0].1.contains("'..' segment"));
        assert!(skipped[1].1.contains("'.' segment"));
        assert!(skipped[2].1.contains("empty segment"));
        assert!(skipped[4].1.contains("directory of the same name") && skipped[4].1.contains("tok/x"));
    }

    #[test]
    fn outside_links_fail_or_are_skipped_and_cycles_always_fail() {
        let listing = Listing {
            objects: vec![object("p/a", "a", 1)],
            refused: vec![
                refused("p/etc", Refusal::OutsideLink { target: "\"/etc\"".into() }),
                refused("p/hub", Refusal::HubFiles { target: "\"/srv/hub\"".into() }),
            ],
        };
        let err = plan("d", "p", listing.clone(), OutsideLinks::Fail).unwrap_err();
        let text = err.to_string();
        for word in
            ["\"p/etc\"", "/etc", "\"p/hub\"", "/srv/hub", "aq dataset set d --outside-links skip", "2 symbolic"]
        {
            assert!(text.contains(word), "{text} lacks {word}");
        }
        let plan = plan("d", "p", listing.clone(), OutsideLinks::Skip).unwrap();
        assert_eq!(plan.objects.len(), 1);
        assert_eq!(plan.skipped.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(), ["p/etc", "p/hub"]);
        assert!(plan.skipped[0].reason.contains("/etc") && plan.skipped[1].reason.contains("hub's own files"));

        let mut cyclic = listing;
        cyclic.refused.push(refused("p/loop", Refusal::LinkCycle { target: "/data/p".into() }));
        for policy in [OutsideLinks::Fail, OutsideLinks::Skip] {
            let err = super::plan("d", "p", cyclic.clone(), policy).unwrap_err();
            assert!(matches!(err, SnapshotError::LinkCycles { .. }), "{err}");
            assert!(err.to_string().contains("p/loop") && err.to_string().contains("cycle"), "{err}");
        }
    }

    #[test]
    fn long_lists_are_cut_in_messages() {
        let links: Vec<String> = (0..60).map(|i| format!("l{i}")).collect();
        let text = SnapshotError::OutsideLinks { dataset: "d".into(), prefix: "p".into(), links }.to_string();
        assert!(
            text.contains("60 symbolic")
                && text.contains("l49")
                && !text.contains("l50;")
                && text.contains("and 10 more")
        );
    }
}
