//! Cutting a version: list the dataset's prefix, chunk and hash what changed, record it.
//!
//! An object whose size, mtime and etag are those recorded for the same path in the newest
//! version keeps its chunk list and is not read at all. Every other object is read once,
//! streamed through the [`Chunker`] on a blocking thread; several objects are processed at
//! once (one per core by default), each in constant memory. The manifest is then written in
//! one transaction; if its root equals the newest version's, nothing is written and the
//! newest version is reported as unchanged.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aqueduct_proto::domain::validate_path;
use aqueduct_proto::{ChunkerParams, FileEntry, Manifest, ManifestError};
use futures::{StreamExt, TryStreamExt};
use tracing::{debug, info, instrument};

use crate::chunker::Chunker;
use crate::source::{ObjectInfo, Source, SourceError};
use crate::store::{DatasetRecord, MetaStore, SourceStamp, StoreError, StoredVersion, VersionRecord};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "dataset {dataset:?}: no objects under {url} prefix {prefix:?}; check the dataset's prefix or upload the files first"
    )]
    EmptyPrefix { dataset: String, url: String, prefix: String },
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
    /// Objects chunked and hashed at once.
    pub parallelism: usize,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self { chunker: ChunkerParams::DEFAULT, parallelism: cores }
    }
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
    let objects = source.list(&dataset.prefix).await?;
    if objects.is_empty() {
        return Err(SnapshotError::EmptyPrefix {
            dataset: dataset.name.clone(),
            url: source.url().to_string(),
            prefix: dataset.prefix.clone(),
        });
    }
    progress.files_total.store(objects.len() as u64, Ordering::Relaxed);
    progress.bytes_total.store(objects.iter().map(|o| o.size).sum(), Ordering::Relaxed);

    let chunker = Chunker::new(options.chunker);
    // Reuse only chunk lists cut with the same parameters.
    let reusable = previous.as_ref().filter(|p| p.manifest.chunker == options.chunker);
    let bytes_read = Arc::new(AtomicU64::new(0));
    let files: Vec<(FileEntry, SourceStamp)> = futures::stream::iter(objects)
        .map(|object| {
            let reused = reusable.and_then(|p| reuse(p, &object));
            let (source, progress, bytes_read, dataset) =
                (source.clone(), progress.clone(), bytes_read.clone(), dataset.name.clone());
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
                        read_chunks(&dataset, source.as_ref(), &object, chunker, &progress).await?
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
        // The existing version's figures, with what this run read and found new.
        let record = VersionRecord { new_bytes: 0, bytes_read, ..prev.record.clone() };
        return Ok(SnapshotOutcome { record, unchanged: true });
    }

    let known: HashSet<_> = previous.iter().flat_map(|p| p.manifest.distinct_chunks()).map(|(d, _)| d).collect();
    let new_bytes: u64 =
        manifest.distinct_chunks().iter().filter(|(d, _)| !known.contains(d)).map(|(_, len)| u64::from(*len)).sum();
    let previous_number = previous.as_ref().map_or(0, |p| p.record.number);
    let created = now_unix_ms();
    let record =
        blocking(db, move |db| db.insert_version(previous_number, &manifest, &stamps, new_bytes, bytes_read, created))
            .await?;
    info!(version = record.number, files = record.files, bytes = record.bytes, new_bytes, bytes_read, "version cut");
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
        chunker.chunk(reader, |n| {
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
