//! Sources: where a dataset's bytes live.
//!
//! A source is a URL (`s3://bucket[/prefix]` or `file:///path`) plus options. Options carry
//! connection settings and *references* to credentials (the name of an environment variable,
//! the path of a credentials file), never a credential: the hub stores them in its database
//! and prints them in listings, so a secret among them would leak. Credentials are resolved
//! from the hub's own environment each time the source is opened.
//!
//! The rest of the hub sees a source only through the [`Source`] trait: list what is under a
//! prefix, read a byte range of one object. Two implementations: [`file`] walks a directory
//! with `openat` and never follows a link out of the dataset's prefix or into the hub's own
//! files ([`HubFiles`]); [`s3`] lists with signed ListObjectsV2 requests of its own (so that
//! any key survives the listing) and reads through `object_store`. A listing is exact: names
//! are the source's own, and whatever cannot be a file of a version is returned as
//! [`Refused`], with why. [`keys`] holds the pure rules that turn keys into paths. [`testing`]
//! has wrappers that count reads and inject faults, for tests.
//!
//! The file is some 710 lines long: the trait, the URL and option parsing, the
//! credential references and the guarded open belong together, and a fifth of it is their
//! tests.

pub mod file;
pub mod keys;
pub mod s3;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use url::Url;

/// Options a source may have. Anything else is refused, so that a typo is not silently
/// ignored and a pasted secret is not stored.
const S3_OPTIONS: &[&str] = &[
    "endpoint",
    "region",
    "allow_http",
    "path_style",
    "anonymous",
    "access_key_id_env",
    "secret_access_key_env",
    "session_token_env",
    "credentials_file",
    "profile",
];

/// Options of every source that bound how the hub reads it for replication, over all regions
/// together: `read_rate` (bytes per second, e.g. `200MiB/s`) and `max_reads` (reads at once).
const READ_OPTIONS: &[&str] = &["read_rate", "max_reads"];

/// How hard replication may read a source (its `read_rate` and `max_reads` options); none:
/// as fast as the regions' budgets take it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadLimits {
    pub rate: Option<u64>,
    pub concurrent: Option<usize>,
}

/// Option names that would hold a secret itself: refused with a pointer to the reference form.
const SECRET_OPTIONS: &[&str] =
    &["access_key_id", "secret_access_key", "session_token", "token", "password", "secret", "key"];

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source URL {url:?} is malformed: {reason}; write s3://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH")]
    BadUrl { url: String, reason: String },
    #[error("source option {key:?} {reason}")]
    BadOption { key: String, reason: String },
    #[error("source {url}: {what}")]
    MissingCredential { url: String, what: String },
    #[error("source {url} does not exist: {detail}; check the URL (and the endpoint)")]
    NotFound { url: String, detail: String },
    #[error("source {url} denied access: {detail}; check the credentials the source's options point to")]
    Denied { url: String, detail: String },
    #[error("object {key:?} of source {url} changed while it was read ({detail}); snapshot again")]
    Changed { url: String, key: String, detail: String },
    #[error(
        "source {url} holds the hub's own files ({}): every region could read them (the hub's CA key among \
         them); point the source at a directory that does not contain the hub's data directory",
        hub.display()
    )]
    HoldsHubFiles { url: String, hub: PathBuf },
    #[error(
        "prefix {prefix:?} of source {url} resolves to {}, {where_}; a dataset's prefix must be a directory of \
         its source: add a source for that directory instead",
        target.display()
    )]
    PrefixOutside { url: String, prefix: String, target: PathBuf, where_: &'static str },
    #[error("source {url}: {detail}")]
    Io { url: String, detail: String },
}

/// The hub's own files (its data directory, its keys), as canonical paths. No source may
/// contain them and no snapshot reads them, whatever a source's links say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HubFiles {
    paths: Vec<PathBuf>,
}

impl HubFiles {
    /// `paths` made canonical (those that do not exist yet are kept as given).
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut paths: Vec<PathBuf> = paths.into_iter().map(|p| p.canonicalize().unwrap_or(p)).collect();
        paths.sort();
        paths.dedup();
        Self { paths }
    }

    /// The hub's file that `path` (canonical) is, or is inside of.
    pub fn holding(&self, path: &Path) -> Option<&Path> {
        self.paths.iter().find(|p| path.starts_with(p)).map(PathBuf::as_path)
    }

    /// The first of the hub's files that lies inside `dir` (canonical), or is `dir`.
    pub fn inside(&self, dir: &Path) -> Option<&Path> {
        self.paths.iter().find(|p| p.starts_with(dir)).map(PathBuf::as_path)
    }
}

/// A validated source definition: URL and options, as stored in the hub's database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSpec {
    pub url: Url,
    /// Connection options (the read limits taken out).
    pub options: BTreeMap<String, String>,
    pub limits: ReadLimits,
}

impl SourceSpec {
    /// Parses and checks a URL and its options; touches nothing outside the process.
    pub fn parse(url: &str, mut options: BTreeMap<String, String>) -> Result<Self, SourceError> {
        let bad = |reason: &str| SourceError::BadUrl { url: url.to_string(), reason: reason.to_string() };
        let limits = read_limits(&mut options)?;
        let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("it has a query or fragment; give options with --option KEY=VALUE"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad("it carries credentials; reference them with options instead"));
        }
        match parsed.scheme() {
            "s3" => {
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(bad("it names no bucket"));
                }
                if s3::decode_url_path(&parsed).is_none() {
                    return Err(bad("its path is not valid UTF-8 once decoded"));
                }
                for (key, value) in &options {
                    check_option(key, value)?;
                }
            }
            "file" => {
                if parsed.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(bad("a file URL has no host (three slashes: file:///path)"));
                }
                if parsed.to_file_path().is_err() {
                    return Err(bad("it is not an absolute local path"));
                }
                if let Some(key) = options.keys().next() {
                    return Err(SourceError::BadOption {
                        key: key.clone(),
                        reason: format!(
                            "is not valid for a file:// source, which takes only {}",
                            READ_OPTIONS.join(", ")
                        ),
                    });
                }
            }
            other => return Err(bad(&format!("scheme {other:?} is not supported (use s3 or file)"))),
        }
        Ok(Self { url: parsed, options, limits })
    }

    /// Opens the source, resolving credential references from this process's environment.
    /// Nothing of the hub's own is guarded: see [`SourceSpec::open_guarded`].
    pub fn open(&self) -> Result<Arc<dyn Source>, SourceError> {
        self.open_guarded(&HubFiles::default())
    }

    /// Opens the source; a `file://` source never lists or reads anything of `hub`.
    pub fn open_guarded(&self, hub: &HubFiles) -> Result<Arc<dyn Source>, SourceError> {
        match self.url.scheme() {
            "file" => Ok(Arc::new(file::FileSource::open(&self.url, hub.clone())?)),
            _ => Ok(Arc::new(s3::S3Source::open(self)?)),
        }
    }

    /// Refuses a `file://` source whose directory contains the hub's own files, or lies inside
    /// them. (A directory that does not exist yet is left to the probe.)
    pub fn check_hub_files(&self, hub: &HubFiles) -> Result<(), SourceError> {
        let Ok(root) = self.url.to_file_path() else { return Ok(()) };
        let Ok(root) = root.canonicalize() else { return Ok(()) };
        match hub.inside(&root).or_else(|| hub.holding(&root)) {
            Some(found) => Err(SourceError::HoldsHubFiles { url: self.url.to_string(), hub: found.to_owned() }),
            None => Ok(()),
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// Takes the read limits out of a source's options, checked.
fn read_limits(options: &mut BTreeMap<String, String>) -> Result<ReadLimits, SourceError> {
    let bad = |key: &str, reason: String| SourceError::BadOption { key: key.to_string(), reason };
    let mut limits = ReadLimits::default();
    if let Some(rate) = options.remove("read_rate") {
        let parsed = rate.parse::<aqueduct_proto::Rate>().map_err(|e| bad("read_rate", e.to_string()))?;
        limits.rate = Some(parsed.0);
    }
    if let Some(n) = options.remove("max_reads") {
        let parsed = n.parse::<usize>().ok().filter(|n| (1..=4096).contains(n));
        limits.concurrent =
            Some(parsed.ok_or_else(|| bad("max_reads", format!("must be a number from 1 to 4096, not {n:?}")))?);
    }
    Ok(limits)
}

fn check_option(key: &str, value: &str) -> Result<(), SourceError> {
    let bad = |reason: String| SourceError::BadOption { key: key.to_string(), reason };
    if SECRET_OPTIONS.contains(&key) {
        return Err(bad(
            "would hold a secret; sources only reference credentials: use access_key_id_env / secret_access_key_env \
             (names of environment variables of the hub) or credentials_file (an AWS credentials file)"
                .into(),
        ));
    }
    if !S3_OPTIONS.contains(&key) {
        return Err(bad(format!(
            "is not known; an s3 source takes {}, and every source {}",
            S3_OPTIONS.join(", "),
            READ_OPTIONS.join(", ")
        )));
    }
    match key {
        "allow_http" | "path_style" | "anonymous" if value != "true" && value != "false" => {
            Err(bad(format!("must be true or false, not {value:?}")))
        }
        "endpoint" => Url::parse(value)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.username().is_empty() && u.password().is_none())
            .map(|_| ())
            .ok_or_else(|| bad("must be an http(s) URL without credentials in it".to_string())),
        _ if value.is_empty() => Err(bad("is empty".into())),
        _ => Ok(()),
    }
}

/// S3 credentials resolved from the references in a source's options.
struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl Credentials {
    fn resolve(url: &str, options: &BTreeMap<String, String>) -> Result<Self, SourceError> {
        let missing = |what: String| SourceError::MissingCredential { url: url.to_string(), what };
        if let Some(path) = options.get("credentials_file") {
            let profile = options.get("profile").map_or("default", String::as_str);
            let text = std::fs::read_to_string(path)
                .map_err(|e| missing(format!("cannot read credentials_file {path}: {e}")))?;
            let section = ini_section(&text, profile)
                .ok_or_else(|| missing(format!("credentials_file {path} has no [{profile}] profile")))?;
            let get = |k: &str| section.get(k).cloned();
            return Ok(Self {
                access_key_id: get("aws_access_key_id")
                    .ok_or_else(|| missing(format!("[{profile}] in {path} has no aws_access_key_id")))?,
                secret_access_key: get("aws_secret_access_key")
                    .ok_or_else(|| missing(format!("[{profile}] in {path} has no aws_secret_access_key")))?,
                session_token: get("aws_session_token"),
            });
        }
        let var = |option: &str, default: &str| {
            let name = options.get(option).map_or(default, String::as_str).to_string();
            std::env::var(&name).map_err(|_| {
                missing(format!(
                    "environment variable {name} ({option}) is not set in the hub's environment; \
                     set it, or point {option} or credentials_file elsewhere, or set anonymous=true"
                ))
            })
        };
        Ok(Self {
            access_key_id: var("access_key_id_env", "AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("secret_access_key_env", "AWS_SECRET_ACCESS_KEY")?,
            session_token: match options.get("session_token_env") {
                Some(_) => Some(var("session_token_env", "")?),
                None => None,
            },
        })
    }
}

/// The `key = value` pairs of one `[section]` of an INI file (the AWS credentials format).
fn ini_section(text: &str, wanted: &str) -> Option<BTreeMap<String, String>> {
    let mut current: Option<String> = None;
    let mut found: Option<BTreeMap<String, String>> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().trim_start_matches("profile ").to_string();
            if name == wanted {
                found.get_or_insert_with(BTreeMap::new);
            }
            current = Some(name);
        } else if let (Some(section), Some((k, v))) = (&current, line.split_once('='))
            && section == wanted
            && let Some(map) = found.as_mut()
        {
            map.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    found
}

/// One object found under a dataset's prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key in the source, to read it with.
    pub key: String,
    /// The key relative to the listed prefix, exactly as the source names it: the file's path
    /// in the dataset, if [`keys::classify_key`] accepts it.
    pub path: String,
    pub size: u64,
    pub mtime_unix_ms: i64,
    pub etag: Option<String>,
    pub mode: u32,
}

/// What a source found under a prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Objects that hold bytes, sorted by path.
    pub objects: Vec<ObjectInfo>,
    /// What the source found but cannot offer as an object, with why.
    pub refused: Vec<Refused>,
}

/// An entry under a prefix that is not an object of the listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The entry's key in the source (bytes that are not UTF-8 shown as `\xNN`).
    pub key: String,
    pub why: Refusal,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A symbolic link whose target resolves outside the dataset's prefix: never followed.
    /// `target` is shown as it is (quoted), with where it resolves to.
    OutsideLink { target: String },
    /// A link, or a directory, that resolves into the hub's own files: never read.
    HubFiles { target: String },
    /// A directory link that leads back into a directory that holds it.
    LinkCycle { target: String },
    /// Anything else that cannot be a file of a version; why, for people.
    Other(String),
}

impl Refusal {
    /// Why the entry is not in the version, for people.
    pub fn reason(&self) -> String {
        match self {
            Refusal::OutsideLink { target } => {
                format!("a symbolic link to {target}, outside the dataset's prefix: never followed")
            }
            Refusal::HubFiles { target } => format!("it leads to {target}, the hub's own files: never read"),
            Refusal::LinkCycle { target } => {
                format!("a link to the directory {target}, which holds the link itself (a cycle)")
            }
            Refusal::Other(why) => why.clone(),
        }
    }
}

/// Bytes of an object being read: a local file (read with plain blocking reads, which beats
/// any stream) or a stream of buffers from a remote store.
pub enum ObjectReader {
    File { file: std::fs::File, range: Range<u64> },
    Stream(BoxStream<'static, Result<Bytes, SourceError>>),
}

impl ObjectReader {
    /// A blocking reader over the bytes, for use on a blocking thread. A stream is pumped by a
    /// task on the current runtime into a small bounded channel.
    pub fn into_blocking(self) -> io::Result<Box<dyn Read + Send>> {
        match self {
            ObjectReader::File { mut file, range } => {
                file.seek(SeekFrom::Start(range.start))?;
                Ok(Box::new(file.take(range.end - range.start)))
            }
            ObjectReader::Stream(mut stream) => {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tokio::spawn(async move {
                    while let Some(item) = stream.next().await {
                        let stop = item.is_err();
                        if tx.send(item).await.is_err() || stop {
                            break;
                        }
                    }
                });
                Ok(Box::new(ChannelReader { rx, current: Bytes::new() }))
            }
        }
    }
}

struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, SourceError>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Reads `range` of `key` whole into memory (for chunk-sized ranges).
pub async fn read_range(source: &dyn Source, key: &str, range: Range<u64>) -> Result<Vec<u8>, SourceError> {
    let expected = (range.end - range.start) as usize;
    let (url, owned_key) = (source.url().to_string(), key.to_string());
    let io_err = move |e: io::Error| SourceError::Io { url: url.clone(), detail: format!("{owned_key}: {e}") };
    let reader = source.read(key, range, None).await?.into_blocking().map_err(io_err.clone())?;
    let data = tokio::task::spawn_blocking(move || {
        let mut data = Vec::with_capacity(expected);
        reader.take(expected as u64 + 1).read_to_end(&mut data).map(|_| data)
    })
    .await
    .map_err(|e| io_err(io::Error::other(e)))?
    .map_err(io_err)?;
    if data.len() != expected {
        return Err(SourceError::Changed {
            url: source.url().to_string(),
            key: key.to_string(),
            detail: format!("expected {expected} bytes, got {}", data.len()),
        });
    }
    Ok(data)
}

/// What the hub needs of a place that holds bytes.
#[async_trait]
pub trait Source: Send + Sync + fmt::Debug {
    /// The source's URL, for messages (never holds credentials).
    fn url(&self) -> &str;

    /// Checks that the source exists and is readable with the configured credentials.
    async fn probe(&self) -> Result<(), SourceError>;

    /// Everything under `prefix` (a clean path relative to the source's URL, or empty),
    /// recursively: the objects, and what cannot be one (with why).
    async fn list(&self, prefix: &str) -> Result<Listing, SourceError>;

    /// Opens `range` of object `key`. With `etag`, fails with [`SourceError::Changed`] when the
    /// object is no longer the one that was listed.
    async fn read(&self, key: &str, range: Range<u64>, etag: Option<&str>) -> Result<ObjectReader, SourceError>;
}

/// Wrappers around a [`Source`] for tests: count what is read, fail on purpose.
pub mod testing {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// Runs `hook` before every read of `inner` (with the key and range); an error from the
    /// hook is the read's error.
    pub struct HookedSource<H> {
        inner: Arc<dyn Source>,
        hook: H,
    }

    impl<H> fmt::Debug for HookedSource<H> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("HookedSource").field("inner", &self.inner).finish_non_exhaustive()
        }
    }

    #[async_trait]
    impl<H> Source for HookedSource<H>
    where
        H: Fn(&str, &Range<u64>) -> Result<(), SourceError> + Send + Sync,
    {
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
            (self.hook)(key, &range)?;
            self.inner.read(key, range, etag).await
        }
    }

    /// Reads made through a [`counting`] source.
    #[derive(Debug, Default)]
    pub struct ReadCounter {
        pub reads: AtomicU64,
        pub bytes: AtomicU64,
    }

    impl ReadCounter {
        pub fn reads(&self) -> u64 {
            self.reads.load(Ordering::Relaxed)
        }
    }

    /// `inner`, counting its reads and the bytes they asked for.
    pub fn counting(inner: Arc<dyn Source>) -> (Arc<dyn Source>, Arc<ReadCounter>) {
        let counter = Arc::new(ReadCounter::default());
        let c = counter.clone();
        let hook = move |_: &str, range: &Range<u64>| {
            c.reads.fetch_add(1, Ordering::Relaxed);
            c.bytes.fetch_add(range.end - range.start, Ordering::Relaxed);
            Ok(())
        };
        (Arc::new(HookedSource { inner, hook }), counter)
    }

    /// `inner`, failing every read of an object whose key contains `poison`.
    pub fn failing(inner: Arc<dyn Source>, poison: &str) -> Arc<dyn Source> {
        let (url, poison) = (inner.url().to_string(), poison.to_string());
        let hook = move |key: &str, _: &Range<u64>| {
            if key.contains(&poison) {
                return Err(SourceError::Io { url: url.clone(), detail: format!("injected fault reading {key}") });
            }
            Ok(())
        };
        Arc::new(HookedSource { inner, hook })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_good_urls() {
        let s = SourceSpec::parse("s3://models/llama", opts(&[("endpoint", "http://127.0.0.1:9000")])).unwrap();
        assert_eq!(s3::decode_url_path(&s.url).as_deref(), Some("llama"));
        assert!(SourceSpec::parse("file:///srv/models", BTreeMap::new()).is_ok());
    }

    #[test]
    fn refuses_bad_urls_and_options() {
        for url in ["models/llama", "s3://", "ftp://x/y", "file://host/x", "s3://u:p@b/x", "::"] {
            let err = SourceSpec::parse(url, BTreeMap::new()).unwrap_err();
            assert!(matches!(err, SourceError::BadUrl { .. }), "{url}: {err}");
        }
        let err = SourceSpec::parse("s3://b", opts(&[("secret_access_key", "hunter2")])).unwrap_err();
        assert!(err.to_string().contains("secret_access_key_env"), "{err}");
        assert!(!err.to_string().contains("hunter2"));
        let err = SourceSpec::parse("s3://b", opts(&[("endpont", "x")])).unwrap_err();
        assert!(err.to_string().contains("not known"), "{err}");
        let err = SourceSpec::parse("s3://b", opts(&[("allow_http", "yes")])).unwrap_err();
        assert!(err.to_string().contains("true or false"), "{err}");
        let err = SourceSpec::parse("file:///x", opts(&[("region", "x")])).unwrap_err();
        assert!(matches!(err, SourceError::BadOption { .. }));
        assert!(err.to_string().contains("takes only read_rate, max_reads"), "{err}");
        let err = SourceSpec::parse("file:///x", opts(&[("read_rate", "fast")])).unwrap_err();
        assert!(err.to_string().contains("read_rate") && err.to_string().contains("100MiB/s"), "{err}");
        let err = SourceSpec::parse("s3://b", opts(&[("max_reads", "0")])).unwrap_err();
        assert!(err.to_string().contains("from 1 to 4096"), "{err}");
        let spec = SourceSpec::parse("file:///x", opts(&[("read_rate", "200MiB/s"), ("max_reads", "8")])).unwrap();
        assert_eq!(spec.limits, ReadLimits { rate: Some(200 << 20), concurrent: Some(8) });
    }

    #[test]
    fn missing_credentials_are_named() {
        let spec = SourceSpec::parse(
            "s3://b",
            opts(&[("access_key_id_env", "AQ_TEST_UNSET_KEY_1"), ("secret_access_key_env", "AQ_TEST_UNSET_KEY_2")]),
        )
        .unwrap();
        let err = spec.open().unwrap_err();
        assert!(err.to_string().contains("AQ_TEST_UNSET_KEY_1"), "{err}");
    }

    #[test]
    fn reads_aws_credentials_files() {
        let text =
            "[default]\naws_access_key_id = A\naws_secret_access_key = S\n\n[profile other]\naws_access_key_id=B\n";
        assert_eq!(ini_section(text, "default").unwrap()["aws_secret_access_key"], "S");
        assert_eq!(ini_section(text, "other").unwrap()["aws_access_key_id"], "B");
        assert!(ini_section(text, "none").is_none());
    }

    #[test]
    fn sources_holding_the_hubs_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let hub_dir = tmp.path().join("hub");
        std::fs::create_dir_all(hub_dir.join("pki")).unwrap();
        std::fs::create_dir_all(tmp.path().join("models")).unwrap();
        let hub = HubFiles::new([hub_dir.clone()]);
        let spec = |p: &Path| SourceSpec::parse(&format!("file://{}", p.display()), BTreeMap::new()).unwrap();
        for holding in [tmp.path().to_owned(), hub_dir.clone(), hub_dir.join("pki")] {
            let err = spec(&holding).check_hub_files(&hub).unwrap_err();
            assert!(matches!(err, SourceError::HoldsHubFiles { .. }), "{}: {err}", holding.display());
            assert!(err.to_string().contains(&hub_dir.canonicalize().unwrap().display().to_string()), "{err}");
        }
        spec(&tmp.path().join("models")).check_hub_files(&hub).unwrap();
        // Through a link, the same.
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("models/up")).unwrap();
        assert!(spec(&tmp.path().join("models/up")).check_hub_files(&hub).is_err());
    }

    fn option_strategy() -> impl Strategy<Value = BTreeMap<String, String>> {
        let key = prop_oneof![
            proptest::sample::select(S3_OPTIONS.to_vec()).prop_map(str::to_string),
            proptest::sample::select(SECRET_OPTIONS.to_vec()).prop_map(str::to_string),
            proptest::sample::select(READ_OPTIONS.to_vec()).prop_map(str::to_string),
            "\\PC{0,12}",
        ];
        let value = prop_oneof!["\\PC{0,24}", "[0-9]{1,5}", "[0-9]{1,4}(MiB/s|KB/s|B/s|Mbit/s)"];
        proptest::collection::btree_map(key, value, 0..5)
    }

    fn url_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,40}",
            ("(s3|file|S3|ftp|http)", "(:|://|:///)", "[a-zA-Z0-9@:%/?#.\\- ]{0,30}")
                .prop_map(|(a, b, c)| format!("{a}{b}{c}")),
        ]
    }

    proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(2000))]

        /// Any URL and options: never a panic, and the value of an option refused as a secret
        /// never appears in the error.
        #[test]
        fn fuzz_source_spec_parse(url in url_strategy(), options in option_strategy(), secret in "[a-zA-Z0-9]{12,20}") {
            let mut options = options;
            let secret_key = SECRET_OPTIONS[secret.len() % SECRET_OPTIONS.len()];
            let with_secret = secret.len() % 2 == 0;
            if with_secret {
                options.insert(secret_key.to_string(), secret.clone());
            }
            match SourceSpec::parse(&url, options.clone()) {
                Ok(spec) => {
                    prop_assert!(matches!(spec.url.scheme(), "s3" | "file"));
                    prop_assert!(!with_secret || spec.url.scheme() != "s3", "a secret option was accepted");
                    if spec.url.scheme() == "file" {
                        prop_assert!(spec.options.is_empty());
                    }
                    // The read limits were taken out of the options, as given.
                    prop_assert!(!spec.options.keys().any(|k| READ_OPTIONS.contains(&k.as_str())));
                    prop_assert_eq!(spec.limits.rate.is_some(), options.contains_key("read_rate"));
                    prop_assert_eq!(spec.limits.concurrent.is_some(), options.contains_key("max_reads"));
                    prop_assert!(spec.limits.concurrent.is_none_or(|n| (1..=4096).contains(&n)));
                }
                Err(e) => {
                    if with_secret && !url.contains(&secret) {
                        prop_assert!(!e.to_string().contains(&secret), "{}", e);
                    }
                }
            }
        }

        /// Any text as an AWS credentials file: never a panic; a profile found holds what the
        /// file says for it.
        #[test]
        fn fuzz_ini_credentials(text in "(\\PC{0,20}\n|\\[[a-z ]{0,10}\\]\n|[a-z_]{1,8} ?= ?[a-zA-Z0-9]{0,8}\n){0,12}", profile in "[a-z]{0,6}") {
            if let Some(section) = ini_section(&text, &profile) {
                for (k, v) in &section {
                    prop_assert_eq!(k.trim(), k.as_str());
                    prop_assert_eq!(v.trim(), v.as_str());
                    prop_assert!(text.contains(k.as_str()) && text.contains(v.as_str()));
                }
            }
            let known = format!("{text}\n[{profile}]\naws_access_key_id = K1\naws_secret_access_key = S1\n");
            if !profile.is_empty() {
                let section = ini_section(&known, &profile).unwrap();
                prop_assert_eq!(section.get("aws_access_key_id").map(String::as_str), Some("K1"));
            }
        }
    }
}
