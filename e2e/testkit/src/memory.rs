//! An S3 server whose store is a map in memory, for keys no filesystem can hold.
//!
//! `s3s-fs` keeps objects as files, so it cannot hold the keys real buckets do have: `dir/`
//! folder markers beside `dir/x`, a file `tok` beside `tok/x`, keys with `.`, `..` or empty
//! (`//`) segments. [`MemoryS3`] implements the `s3s` crate's `S3` trait over a `BTreeMap`
//! (ListObjectsV2 with pagination and `encoding-type=url`, GetObject with ranges and
//! `If-Match`, HeadObject, PutObject, HeadBucket), and [`MemoryS3Server`] serves it over the
//! real S3 protocol on 127.0.0.1 with signatures checked, like [`crate::S3Server`].

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};

use crate::{ACCESS_KEY, Counters, SECRET_KEY, serve};

#[derive(Clone, Debug)]
struct Stored {
    data: Bytes,
    etag: String,
    modified: SystemTime,
}

/// The store: buckets of objects by key.
#[derive(Clone, Debug, Default)]
pub struct MemoryS3 {
    buckets: Arc<Mutex<BTreeMap<String, BTreeMap<String, Stored>>>>,
}

impl MemoryS3 {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, BTreeMap<String, Stored>>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.lock().entry(bucket.to_string()).or_default();
    }

    /// Stores `data` at `key` of `bucket` (created if missing), whatever the key.
    pub fn put(&self, bucket: &str, key: &str, data: impl Into<Bytes>) {
        let data = data.into();
        let mut h = DefaultHasher::new();
        data.hash(&mut h);
        key.hash(&mut h);
        let etag = format!("{:016x}", h.finish());
        let stored = Stored { data, etag, modified: SystemTime::now() };
        self.lock().entry(bucket.to_string()).or_default().insert(key.to_string(), stored);
    }

    pub fn remove(&self, bucket: &str, key: &str) {
        if let Some(b) = self.lock().get_mut(bucket) {
            b.remove(key);
        }
    }

    /// Every key of `bucket`, in order.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.lock().get(bucket).map(|b| b.keys().cloned().collect()).unwrap_or_default()
    }

    /// Empties `bucket` (keeps it).
    pub fn clear(&self, bucket: &str) {
        if let Some(b) = self.lock().get_mut(bucket) {
            b.clear();
        }
    }

    fn object(&self, bucket: &str, key: &str) -> S3Result<Stored> {
        let buckets = self.lock();
        let b = buckets.get(bucket).ok_or_else(|| s3_error!(NoSuchBucket))?;
        b.get(key).cloned().ok_or_else(|| s3_error!(NoSuchKey))
    }
}

/// A key as S3 writes it under `encoding-type=url`: UTF-8 percent-encoded, a space as `+`,
/// unreserved characters and `/` as they are.
pub fn url_encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> =
        (0..text.len()).step_by(2).map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    String::from_utf8(bytes?).ok()
}

fn matches(condition: &ETagCondition, etag: &str) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag,
    }
}

#[async_trait::async_trait]
impl S3 for MemoryS3 {
    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        if !self.lock().contains_key(&req.input.bucket) {
            return Err(s3_error!(NoSuchBucket));
        }
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max_keys = usize::try_from(input.max_keys.unwrap_or(1000).clamp(0, 1000)).unwrap_or(1000);
        let after = match &input.continuation_token {
            Some(token) => Some(unhex(token).ok_or_else(|| s3_error!(InvalidArgument, "bad continuation token"))?),
            None => input.start_after.clone(),
        };
        let encode = input.encoding_type.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
        let buckets = self.lock();
        let bucket = buckets.get(&input.bucket).ok_or_else(|| s3_error!(NoSuchBucket))?;
        let mut matching = bucket
            .range::<String, _>(match &after {
                Some(a) => (std::ops::Bound::Excluded(a.clone()), std::ops::Bound::Unbounded),
                None => (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
            })
            .filter(|(k, _)| k.starts_with(&prefix));
        let page: Vec<(&String, &Stored)> = matching.by_ref().take(max_keys).collect();
        let truncated = matching.next().is_some();
        let next = if truncated { page.last().map(|(k, _)| hex(k)) } else { None };
        let contents: Vec<Object> = page
            .iter()
            .map(|(key, o)| Object {
                key: Some(if encode { url_encode_key(key) } else { (*key).clone() }),
                size: Some(o.data.len() as i64),
                e_tag: Some(ETag::Strong(o.etag.clone())),
                last_modified: Some(Timestamp::from(o.modified)),
                ..Default::default()
            })
            .collect();
        let output = ListObjectsV2Output {
            key_count: Some(contents.len() as i32),
            max_keys: Some(max_keys as i32),
            is_truncated: Some(truncated),
            contents: (!contents.is_empty()).then_some(contents),
            continuation_token: input.continuation_token,
            next_continuation_token: next,
            encoding_type: input.encoding_type,
            name: Some(input.bucket),
            prefix: input.prefix.map(|p| if encode { url_encode_key(&p) } else { p }),
            start_after: input.start_after,
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let o = self.object(&input.bucket, &input.key)?;
        if let Some(condition) = &input.if_match
            && !matches(condition, &o.etag)
        {
            return Err(s3_error!(PreconditionFailed));
        }
        let len = o.data.len() as u64;
        let (body, content_range) = match input.range {
            None => (o.data.clone(), None),
            Some(range) => {
                let r = range.check(len)?;
                (o.data.slice(r.start as usize..r.end as usize), Some(format!("bytes {}-{}/{len}", r.start, r.end - 1)))
            }
        };
        let output = GetObjectOutput {
            content_length: Some(body.len() as i64),
            body: Some(StreamingBlob::from(s3s::Body::from(body))),
            content_range,
            e_tag: Some(ETag::Strong(o.etag)),
            last_modified: Some(Timestamp::from(o.modified)),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let o = self.object(&req.input.bucket, &req.input.key)?;
        let output = HeadObjectOutput {
            content_length: Some(o.data.len() as i64),
            e_tag: Some(ETag::Strong(o.etag)),
            last_modified: Some(Timestamp::from(o.modified)),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        if !self.lock().contains_key(&input.bucket) {
            return Err(s3_error!(NoSuchBucket));
        }
        let mut data = Vec::new();
        if let Some(mut body) = input.body {
            while let Some(chunk) = body.next().await {
                data.extend_from_slice(&chunk.map_err(|e| s3_error!(IncompleteBody, "{e}"))?);
            }
        }
        self.put(&input.bucket, &input.key, data);
        let etag = self.object(&input.bucket, &input.key)?.etag;
        Ok(S3Response::new(PutObjectOutput { e_tag: Some(ETag::Strong(etag)), ..Default::default() }))
    }
}

/// [`MemoryS3`] served on 127.0.0.1 over the S3 protocol, stopped when dropped.
pub struct MemoryS3Server {
    pub addr: SocketAddr,
    pub store: MemoryS3,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl MemoryS3Server {
    /// Serves an empty store on 127.0.0.1 (`listen` port 0 for a free one). Must be called
    /// inside a tokio runtime.
    pub async fn start_on(listen: SocketAddr) -> io::Result<Self> {
        let store = MemoryS3::default();
        let (addr, counters, task) = serve(store.clone(), listen).await?;
        Ok(Self { addr, store, counters, task })
    }

    pub async fn start() -> io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("an address")).await
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn object_gets(&self) -> u64 {
        self.counters.object_gets.load(Ordering::Relaxed)
    }

    /// The options of an Aqueduct `s3://` source that reach this server (see
    /// [`crate::S3Server::source_options`]).
    pub fn source_options(&self, credentials: &Path) -> BTreeMap<String, String> {
        crate::source_options(&self.endpoint(), credentials)
    }

    /// Writes an AWS credentials file with this server's keys (`[default]` profile).
    pub fn write_credentials(&self, path: &Path) -> io::Result<()> {
        std::fs::write(
            path,
            format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
        )
    }
}

impl Drop for MemoryS3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_as_s3_does() {
        assert_eq!(url_encode_key("a b+c%/\u{4e2d}\n#"), "a+b%2Bc%25/%E4%B8%AD%0A%23");
        assert_eq!(unhex(&hex("llm/./x\u{1}")).as_deref(), Some("llm/./x\u{1}"));
        assert_eq!(unhex("zz"), None);
    }
}
