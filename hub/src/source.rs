//! Sources: where a dataset's bytes live, read through `object_store`.
//!
//! A source is a URL (`s3://bucket[/prefix]` or `file:///path`) plus options. Options carry
//! connection settings and *references* to credentials (the name of an environment variable,
//! the path of a credentials file), never a credential: the hub stores them in its database
//! and prints them in listings, so a secret among them would leak. Credentials are resolved
//! from the hub's own environment each time the source is opened.
//!
//! The rest of the hub sees a source only through the [`Source`] trait: list the objects under
//! a prefix, read a byte range of one. [`testing`] has wrappers that count reads and inject
//! faults, for tests.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ClientOptions, GetOptions, GetRange, GetResultPayload, ObjectStore, RetryConfig};
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
    #[error("source {url}: {detail}")]
    Io { url: String, detail: String },
}

/// A validated source definition: URL and options, as stored in the hub's database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSpec {
    pub url: Url,
    pub options: BTreeMap<String, String>,
}

impl SourceSpec {
    /// Parses and checks a URL and its options; touches nothing outside the process.
    pub fn parse(url: &str, options: BTreeMap<String, String>) -> Result<Self, SourceError> {
        let bad = |reason: &str| SourceError::BadUrl { url: url.to_string(), reason: reason.to_string() };
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
                for (key, value) in &options {
                    check_option(key, value)?;
                }
            }
            "file" => {
                if parsed.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(bad("a file URL has no host (three slashes: file:///path)"));
                }
                if let Some(key) = options.keys().next() {
                    return Err(SourceError::BadOption {
                        key: key.clone(),
                        reason: "is not valid for a file:// source, which takes no options".into(),
                    });
                }
            }
            other => return Err(bad(&format!("scheme {other:?} is not supported (use s3 or file)"))),
        }
        Ok(Self { url: parsed, options })
    }

    /// The URL's own prefix inside the store (bucket-relative for S3, empty for files).
    fn base_prefix(&self) -> &str {
        match self.url.scheme() {
            "s3" => self.url.path().trim_matches('/'),
            _ => "",
        }
    }

    /// Opens the source, resolving credential references from this process's environment.
    pub fn open(&self) -> Result<Arc<dyn Source>, SourceError> {
        let url = self.url.to_string();
        match self.url.scheme() {
            "file" => {
                let root = self.url.to_file_path().map_err(|()| SourceError::BadUrl {
                    url: url.clone(),
                    reason: "it is not an absolute local path".into(),
                })?;
                if !root.is_dir() {
                    return Err(SourceError::NotFound {
                        url,
                        detail: format!("{} is not a directory", root.display()),
                    });
                }
                let store = LocalFileSystem::new_with_prefix(&root)
                    .map(Arc::new)
                    .map_err(|e| SourceError::NotFound { url: url.clone(), detail: e.to_string() })?;
                Ok(Arc::new(ObjectStoreSource { url, store: store.clone(), base: String::new(), local: Some(store) }))
            }
            _ => {
                let store = self.build_s3()?;
                Ok(Arc::new(ObjectStoreSource {
                    url,
                    store: Arc::new(store),
                    base: self.base_prefix().to_string(),
                    local: None,
                }))
            }
        }
    }

    fn build_s3(&self) -> Result<object_store::aws::AmazonS3, SourceError> {
        let url = self.url.to_string();
        let opt = |k: &str| self.options.get(k).map(String::as_str);
        let flag = |k: &str| opt(k) == Some("true");
        let bucket = self.url.host_str().unwrap_or_default();
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(opt("region").unwrap_or("us-east-1"))
            .with_retry(RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(15), ..Default::default() })
            .with_client_options(ClientOptions::new().with_connect_timeout(Duration::from_secs(5)));
        if let Some(endpoint) = opt("endpoint") {
            builder = builder.with_endpoint(endpoint).with_allow_http(flag("allow_http"));
        }
        // Path-style addressing by default when an endpoint is given (MinIO, Ceph, garage...).
        let path_style = opt("path_style").map_or(opt("endpoint").is_some(), |v| v == "true");
        builder = builder.with_virtual_hosted_style_request(!path_style);
        if flag("anonymous") {
            return builder
                .with_skip_signature(true)
                .build()
                .map_err(|e| SourceError::Io { url, detail: e.to_string() });
        }
        let creds = Credentials::resolve(&url, &self.options)?;
        builder = builder.with_access_key_id(creds.access_key_id).with_secret_access_key(creds.secret_access_key);
        if let Some(token) = creds.session_token {
            builder = builder.with_token(token);
        }
        builder.build().map_err(|e| SourceError::Io { url, detail: e.to_string() })
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
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
        return Err(bad(format!("is not known; an s3 source takes {}", S3_OPTIONS.join(", "))));
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
    /// Key in the store, to read it with.
    pub key: String,
    /// Path relative to the listed prefix: the file's path in the dataset.
    pub path: String,
    pub size: u64,
    pub mtime_unix_ms: i64,
    pub etag: Option<String>,
    pub mode: u32,
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

    /// Every object under `prefix` (relative to the source's URL), recursively.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SourceError>;

    /// Opens `range` of object `key`. With `etag`, fails with [`SourceError::Changed`] when the
    /// object is no longer the one that was listed.
    async fn read(&self, key: &str, range: Range<u64>, etag: Option<&str>) -> Result<ObjectReader, SourceError>;
}

/// A [`Source`] over an `object_store` store.
pub struct ObjectStoreSource {
    url: String,
    store: Arc<dyn ObjectStore>,
    /// The URL's own prefix inside the store.
    base: String,
    /// For `file://`: the same store, typed, to find files' modes.
    local: Option<Arc<LocalFileSystem>>,
}

impl fmt::Debug for ObjectStoreSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreSource").field("url", &self.url).finish_non_exhaustive()
    }
}

impl ObjectStoreSource {
    fn full_prefix(&self, prefix: &str) -> String {
        [self.base.as_str(), prefix.trim_matches('/')]
            .iter()
            .filter(|p| !p.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("/")
    }

    fn map_err(&self, key: &str, e: object_store::Error) -> SourceError {
        let url = self.url.clone();
        let detail = e.to_string();
        match e {
            object_store::Error::NotFound { .. } => SourceError::NotFound { url, detail: format!("{key:?}: {detail}") },
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                SourceError::Denied { url, detail }
            }
            object_store::Error::Precondition { .. } => SourceError::Changed { url, key: key.to_string(), detail },
            _ => classify_generic(url, detail),
        }
    }

    fn mode_of(&self, key: &StorePath) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        self.local
            .as_ref()
            .and_then(|local| local.path_to_filesystem(key).ok())
            .and_then(|path| std::fs::metadata(path).ok())
            .map_or(0o644, |m| m.permissions().mode() & 0o7777)
    }
}

/// S3 errors other than the typed ones come back as text: sort the common ones by meaning,
/// on S3 error codes and HTTP statuses only (a key may contain "403").
fn classify_generic(url: String, detail: String) -> SourceError {
    let lower = detail.to_ascii_lowercase();
    if lower.contains("nosuchbucket") || lower.contains("404 not found") {
        SourceError::NotFound { url, detail }
    } else if lower.contains("accessdenied")
        || lower.contains("403 forbidden")
        || lower.contains("signaturedoesnotmatch")
        || lower.contains("invalidaccesskeyid")
    {
        SourceError::Denied { url, detail }
    } else {
        SourceError::Io { url, detail }
    }
}

#[async_trait]
impl Source for ObjectStoreSource {
    fn url(&self) -> &str {
        &self.url
    }

    async fn probe(&self) -> Result<(), SourceError> {
        let prefix = self.full_prefix("");
        let path = (!prefix.is_empty()).then(|| StorePath::from(prefix.as_str()));
        self.store.list_with_delimiter(path.as_ref()).await.map_err(|e| self.map_err(&prefix, e))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SourceError> {
        let full = self.full_prefix(prefix);
        let path = (!full.is_empty()).then(|| StorePath::from(full.as_str()));
        let mut stream = self.store.list(path.as_ref());
        let mut objects = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.map_err(&full, e))?;
            let key = meta.location.to_string();
            let rel = if full.is_empty() { key.as_str() } else { key.strip_prefix(&full).unwrap_or(&key) };
            let rel = rel.trim_start_matches('/');
            if rel.is_empty() {
                continue;
            }
            objects.push(ObjectInfo {
                path: rel.to_string(),
                mode: self.mode_of(&meta.location),
                key,
                size: meta.size,
                mtime_unix_ms: meta.last_modified.timestamp_millis(),
                etag: meta.e_tag,
            });
        }
        objects.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(objects)
    }

    async fn read(&self, key: &str, range: Range<u64>, etag: Option<&str>) -> Result<ObjectReader, SourceError> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            if_match: etag.map(str::to_string),
            ..Default::default()
        };
        // `key` comes from a listing and is already in the store's encoding: parse, don't
        // encode it again.
        let path = StorePath::parse(key).unwrap_or_else(|_| StorePath::from(key));
        let result = self.store.get_opts(&path, options).await.map_err(|e| self.map_err(key, e))?;
        if result.range != range {
            return Err(SourceError::Changed {
                url: self.url.clone(),
                key: key.to_string(),
                detail: format!("asked for bytes {range:?}, got {:?}", result.range),
            });
        }
        Ok(match result.payload {
            GetResultPayload::File(file, _) => ObjectReader::File { file, range },
            GetResultPayload::Stream(stream) => {
                let (url, key) = (self.url.clone(), key.to_string());
                ObjectReader::Stream(
                    stream
                        .map(move |r| {
                            r.map_err(|e| SourceError::Io { url: url.clone(), detail: format!("{key}: {e}") })
                        })
                        .boxed(),
                )
            }
        })
    }
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
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SourceError> {
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
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_good_urls() {
        let s = SourceSpec::parse("s3://models/llama", opts(&[("endpoint", "http://127.0.0.1:9000")])).unwrap();
        assert_eq!(s.base_prefix(), "llama");
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
}
