//! An `s3://` source: any S3-compatible store.
//!
//! Listing is done here, not by `object_store`: its list converts every key of a page into its
//! `Path`, which refuses `.`, `..` and empty segments (so one such key failed a whole
//! snapshot) and encodes others. The hub sends its own ListObjectsV2 requests (signed with
//! `object_store`'s public SigV4 signer, over its HTTP client: no second S3 stack), asks for
//! URL-encoded keys (`encoding-type=url`, so any key survives the XML) and parses the pages
//! with a small pull parser that keeps every key exactly as it is. Reads still go through
//! `object_store` (ranges, retries, conditional GETs), with the key given verbatim; a key it
//! cannot request (a control character in it) is refused at listing time, named.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsAuthorizer, AwsCredential};
use object_store::client::{HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector};
use object_store::path::Path as StorePath;
use object_store::{ClientOptions, GetOptions, GetRange, GetResultPayload, ObjectStore, RetryConfig};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use quick_xml::events::Event;
use tracing::debug;
use url::Url;

use super::keys::{KeyClass, classify_key, relative_key};
use super::{Credentials, Listing, ObjectInfo, ObjectReader, Refusal, Refused, Source, SourceError, SourceSpec};

/// What a query value may hold unencoded (RFC 3986 unreserved), as SigV4 wants it.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Attempts of one listing request (transport errors and 5xx answers are retried).
const LIST_ATTEMPTS: u32 = 4;

/// The bucket-relative prefix of an `s3://bucket/prefix` URL, decoded; `None` if it is not
/// UTF-8.
pub(crate) fn decode_url_path(url: &Url) -> Option<String> {
    percent_decode_str(url.path().trim_matches('/')).decode_utf8().ok().map(|p| p.into_owned())
}

/// A [`Source`] over an S3 bucket.
pub struct S3Source {
    url: String,
    /// For reads.
    store: Arc<AmazonS3>,
    lister: Lister,
    /// The URL's own prefix inside the bucket.
    base: String,
}

impl std::fmt::Debug for S3Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Source").field("url", &self.url).finish_non_exhaustive()
    }
}

struct Lister {
    client: HttpClient,
    /// `https://host/bucket` (path style) or `https://bucket.host` (virtual-hosted).
    bucket_endpoint: String,
    region: String,
    /// `None`: anonymous, unsigned requests.
    credential: Option<AwsCredential>,
}

impl S3Source {
    pub fn open(spec: &SourceSpec) -> Result<Self, SourceError> {
        let url = spec.url.to_string();
        let io = |e: &dyn std::fmt::Display| SourceError::Io { url: url.clone(), detail: e.to_string() };
        let opt = |k: &str| spec.options.get(k).map(String::as_str);
        let flag = |k: &str| opt(k) == Some("true");
        let bucket = spec.url.host_str().unwrap_or_default().to_string();
        let region = opt("region").unwrap_or("us-east-1").to_string();
        let client_options = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_allow_http(opt("endpoint").is_some() && flag("allow_http"));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(&region)
            .with_retry(RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(15), ..Default::default() })
            .with_client_options(client_options.clone());
        if let Some(endpoint) = opt("endpoint") {
            builder = builder.with_endpoint(endpoint).with_allow_http(flag("allow_http"));
        }
        // Path-style addressing by default when an endpoint is given (MinIO, Ceph, garage...).
        let path_style = opt("path_style").map_or(opt("endpoint").is_some(), |v| v == "true");
        builder = builder.with_virtual_hosted_style_request(!path_style);
        let credential = if flag("anonymous") {
            builder = builder.with_skip_signature(true);
            None
        } else {
            let creds = Credentials::resolve(&url, &spec.options)?;
            builder = builder.with_access_key_id(&creds.access_key_id).with_secret_access_key(&creds.secret_access_key);
            if let Some(token) = &creds.session_token {
                builder = builder.with_token(token);
            }
            Some(AwsCredential {
                key_id: creds.access_key_id,
                secret_key: creds.secret_access_key,
                token: creds.session_token,
            })
        };
        let store = builder.build().map_err(|e| io(&e))?;
        // As object_store does: an endpoint given with virtual-hosted requests names the bucket.
        let bucket_endpoint = match (opt("endpoint"), path_style) {
            (Some(endpoint), false) => endpoint.trim_end_matches('/').to_string(),
            (Some(endpoint), true) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            (None, false) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, true) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let client = ReqwestConnector::default().connect(&client_options).map_err(|e| io(&e))?;
        let base = decode_url_path(&spec.url).unwrap_or_default();
        Ok(Self { url, store: Arc::new(store), lister: Lister { client, bucket_endpoint, region, credential }, base })
    }

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

    /// One page of keys under `list_prefix`, after `token`.
    async fn page(
        &self,
        list_prefix: &str,
        token: Option<&str>,
        max_keys: Option<u32>,
    ) -> Result<ListPage, SourceError> {
        let mut query = vec![("encoding-type", "url".to_string()), ("list-type", "2".to_string())];
        if !list_prefix.is_empty() {
            query.push(("prefix", list_prefix.to_string()));
        }
        if let Some(token) = token {
            query.push(("continuation-token", token.to_string()));
        }
        if let Some(max) = max_keys {
            query.push(("max-keys", max.to_string()));
        }
        let query: Vec<String> =
            query.iter().map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, QUERY_VALUE))).collect();
        let uri = list_url(&self.lister.bucket_endpoint, &query.join("&"));
        let mut last = String::new();
        for attempt in 0..LIST_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << (2 * (attempt - 1)))).await;
            }
            let mut request: HttpRequest =
                http::Request::builder().method(http::Method::GET).uri(&uri).body(HttpRequestBody::empty()).map_err(
                    |e| SourceError::Io { url: self.url.clone(), detail: format!("bad listing request: {e}") },
                )?;
            if let Some(credential) = &self.lister.credential {
                AwsAuthorizer::new(credential, "s3", &self.lister.region)
                    .try_authorize(&mut request, None)
                    .map_err(|e| SourceError::Io { url: self.url.clone(), detail: format!("signing: {e}") })?;
            }
            let response = match self.lister.client.execute(request).await {
                Ok(response) => response,
                Err(e) => {
                    last = format!("listing {list_prefix:?}: {e}");
                    debug!(attempt, error = %e, "listing request failed");
                    continue;
                }
            };
            let status = response.status();
            let body = match response.into_body().bytes().await {
                Ok(body) => body,
                Err(e) => {
                    last = format!("listing {list_prefix:?}: {e}");
                    continue;
                }
            };
            let text = String::from_utf8_lossy(&body);
            if status.is_success() {
                return parse_list(&text).map_err(|e| SourceError::Io {
                    url: self.url.clone(),
                    detail: format!("the listing of {list_prefix:?} is not a ListObjectsV2 answer: {e}"),
                });
            }
            let (code, message) = parse_error(&text);
            let detail = format!("listing {list_prefix:?}: HTTP {status} {code}: {message}");
            if status.is_server_error() || code == "SlowDown" {
                last = detail;
                continue;
            }
            let url = self.url.clone();
            return Err(match (status.as_u16(), code.as_str()) {
                (404, _) | (_, "NoSuchBucket") => SourceError::NotFound { url, detail },
                (401 | 403, _) | (_, "AccessDenied" | "SignatureDoesNotMatch" | "InvalidAccessKeyId") => {
                    SourceError::Denied { url, detail }
                }
                _ => SourceError::Io { url, detail },
            });
        }
        Err(SourceError::Io { url: self.url.clone(), detail: last })
    }
}

/// The URL of a listing request: the bucket's endpoint (`https://host/bucket` path-style, or
/// `https://bucket.host`, which needs the root path) and the query.
fn list_url(bucket_endpoint: &str, query: &str) -> String {
    let has_path = Url::parse(bucket_endpoint).is_ok_and(|u| !u.path().trim_matches('/').is_empty());
    if has_path {
        format!("{}?{query}", bucket_endpoint.trim_end_matches('/'))
    } else {
        format!("{}/?{query}", bucket_endpoint.trim_end_matches('/'))
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

/// One object of a listing page, as the server named it (decoded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Content {
    key: String,
    last_modified: String,
    etag: Option<String>,
    size: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ListPage {
    /// A key that cannot be decoded is `Err((the key as listed, why))`.
    contents: Vec<Result<Content, (String, String)>>,
    next_token: Option<String>,
}

/// A key of a listing: URL-decoded (`+` is a space) when the answer says it is encoded.
fn decode_key(raw: &str, encoded: bool) -> Result<String, String> {
    if !encoded {
        return Ok(raw.to_string());
    }
    percent_decode_str(&raw.replace('+', " "))
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| format!("the listed key {raw:?} is not UTF-8 once decoded"))
}

/// One step of an XML document: an element starts, or ends with its text (kept exactly: no
/// trimming; references resolved). Each carries the path of element names down to it.
#[derive(Debug)]
enum Xml {
    Start(Vec<String>),
    End(Vec<String>, String),
}

fn xml_items(xml: &str) -> Result<Vec<Xml>, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut path, mut text, mut out) = (Vec::<String>::new(), String::new(), Vec::new());
    let name = |e: &quick_xml::events::BytesStart<'_>| String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                path.push(name(&e));
                out.push(Xml::Start(path.clone()));
                text.clear();
            }
            Event::Empty(e) => {
                path.push(name(&e));
                out.push(Xml::Start(path.clone()));
                out.push(Xml::End(path.clone(), String::new()));
                path.pop();
            }
            Event::Text(t) => text.push_str(&t.decode().map_err(|e| e.to_string())?),
            Event::CData(c) => text.push_str(&c.decode().map_err(|e| e.to_string())?),
            Event::GeneralRef(r) => match r.resolve_char_ref().map_err(|e| e.to_string())? {
                Some(ch) => text.push(ch),
                None => {
                    let entity = r.decode().map_err(|e| e.to_string())?;
                    let value = quick_xml::escape::resolve_predefined_entity(&entity)
                        .ok_or_else(|| format!("unknown entity &{entity};"))?;
                    text.push_str(value);
                }
            },
            Event::End(_) => {
                out.push(Xml::End(path.clone(), std::mem::take(&mut text)));
                path.pop();
            }
            Event::Eof => return Ok(out),
            _ => {}
        }
    }
}

/// A ListObjectsV2 answer. A key that cannot be decoded is an `Err` entry, not a failed page.
fn parse_list(xml: &str) -> Result<ListPage, String> {
    let items = xml_items(xml)?;
    let encoded =
        items.iter().any(|i| matches!(i, Xml::End(p, t) if p.len() == 2 && p[1] == "EncodingType" && t == "url"));
    let mut page = ListPage::default();
    let mut current: Option<Result<Content, (String, String)>> = None;
    let mut truncated = false;
    for item in items {
        match item {
            Xml::Start(path) if path.len() == 2 && path[1] == "Contents" => current = Some(Ok(Content::default())),
            Xml::Start(_) => {}
            Xml::End(path, text) => {
                let names: Vec<&str> = path.iter().map(String::as_str).collect();
                match (names.as_slice(), current.as_mut()) {
                    ([_, "Contents"], _) => page.contents.extend(current.take()),
                    ([_, "Contents", "Key"], Some(Ok(c))) => match decode_key(&text, encoded) {
                        Ok(key) => c.key = key,
                        Err(e) => current = Some(Err((text, e))),
                    },
                    ([_, "Contents", "LastModified"], Some(Ok(c))) => c.last_modified = text,
                    ([_, "Contents", "ETag"], Some(Ok(c))) => c.etag = Some(text),
                    ([_, "Contents", "Size"], Some(Ok(c))) => {
                        c.size = text.trim().parse().map_err(|_| format!("object size {text:?} is not a number"))?;
                    }
                    ([_, "IsTruncated"], _) => truncated = text.trim() == "true",
                    ([_, "NextContinuationToken"], _) => page.next_token = Some(text),
                    _ => {}
                }
            }
        }
    }
    if !truncated {
        page.next_token = None;
    } else if page.next_token.is_none() {
        return Err("the page is truncated but has no NextContinuationToken".into());
    }
    Ok(page)
}

/// The code and message of an S3 error answer (empty when it has none).
fn parse_error(xml: &str) -> (String, String) {
    let items = xml_items(xml).unwrap_or_default();
    let get = |name: &str| {
        items.iter().find_map(|i| match i {
            Xml::End(p, t) if p.len() == 2 && p[0] == "Error" && p[1] == name => Some(t.clone()),
            _ => None,
        })
    };
    (get("Code").unwrap_or_default(), get("Message").unwrap_or_default())
}

/// Milliseconds since the epoch of an RFC 3339 time (`2024-05-01T10:00:00.000Z`).
fn unix_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text.trim()).ok().map(|t| t.timestamp_millis())
}

#[async_trait]
impl Source for S3Source {
    fn url(&self) -> &str {
        &self.url
    }

    async fn probe(&self) -> Result<(), SourceError> {
        let prefix = self.full_prefix("");
        let list_prefix = if prefix.is_empty() { prefix } else { format!("{prefix}/") };
        self.page(&list_prefix, None, Some(1)).await.map(drop)
    }

    async fn list(&self, prefix: &str) -> Result<Listing, SourceError> {
        let full = self.full_prefix(prefix);
        let list_prefix = if full.is_empty() { String::new() } else { format!("{full}/") };
        let mut listing = Listing::default();
        let mut token: Option<String> = None;
        loop {
            let page = self.page(&list_prefix, token.as_deref(), None).await?;
            for content in page.contents {
                let content = match content {
                    Ok(content) => content,
                    Err((key, why)) => {
                        listing.refused.push(Refused { key, why: Refusal::Other(why) });
                        continue;
                    }
                };
                let Some(rel) = relative_key(&full, &content.key) else {
                    debug!(key = content.key, "the server listed a key outside the prefix");
                    continue;
                };
                // What the snapshot would take must also be a key object_store can request.
                if let KeyClass::File(_) = classify_key(rel, content.size) {
                    if let Some(c) = content.key.chars().find(char::is_ascii_control) {
                        let why = format!(
                            "its key holds the control character U+{:04X}, which object_store (the S3 client the \
                             hub reads with) cannot request; rename the object",
                            c as u32
                        );
                        listing.refused.push(Refused { key: content.key.clone(), why: Refusal::Other(why) });
                        continue;
                    }
                    if StorePath::parse(&content.key).map(|p| p.as_ref() != content.key).unwrap_or(true) {
                        let why = "object_store (the S3 client the hub reads with) cannot request its key as it is; \
                                   rename the object"
                            .to_string();
                        listing.refused.push(Refused { key: content.key.clone(), why: Refusal::Other(why) });
                        continue;
                    }
                }
                listing.objects.push(ObjectInfo {
                    path: rel.to_string(),
                    size: content.size,
                    mtime_unix_ms: unix_ms(&content.last_modified).unwrap_or(0),
                    etag: content.etag,
                    mode: 0o644,
                    key: content.key,
                });
            }
            match page.next_token {
                Some(next) if Some(&next) != token.as_ref() => token = Some(next),
                Some(_) => {
                    return Err(SourceError::Io {
                        url: self.url.clone(),
                        detail: format!("listing {list_prefix:?}: the server repeated its continuation token"),
                    });
                }
                None => break,
            }
        }
        listing.objects.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(listing)
    }

    async fn read(&self, key: &str, range: Range<u64>, etag: Option<&str>) -> Result<ObjectReader, SourceError> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            if_match: etag.map(str::to_string),
            ..Default::default()
        };
        // The key verbatim: object_store percent-encodes it into the request's URL once.
        let path = StorePath::parse(key).map_err(|e| SourceError::Io {
            url: self.url.clone(),
            detail: format!("{key:?} cannot be requested through object_store: {e}"),
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_keep_every_key_exactly() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>llm/</Prefix>
<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated><NextContinuationToken>t&amp;2</NextContinuationToken>
<Contents><Key>llm/.%2Fdot.txt</Key><LastModified>2024-05-01T10:00:00.500Z</LastModified><ETag>&quot;abc&quot;</ETag><Size>3</Size></Contents>
<Contents><Key>llm/a+b%2Bc%25%23%0A%E4%B8%AD</Key><LastModified>2024-05-01T10:00:00Z</LastModified><ETag>"x"</ETag><Size>0</Size></Contents>
<Contents><Key>llm/%FF</Key><Size>1</Size></Contents>
<Contents><Key>llm//x</Key><Size>12</Size></Contents>
</ListBucketResult>"#;
        let page = parse_list(xml).unwrap();
        assert_eq!(page.next_token.as_deref(), Some("t&2"));
        let keys: Vec<Result<String, (String, String)>> =
            page.contents.iter().map(|c| c.clone().map(|c| c.key)).collect();
        assert_eq!(keys[0].as_deref(), Ok("llm/./dot.txt"));
        assert_eq!(keys[1].as_deref(), Ok("llm/a b+c%#\n\u{4e2d}"));
        assert_eq!(keys[2].as_ref().unwrap_err().0, "llm/%FF");
        assert!(keys[2].as_ref().unwrap_err().1.contains("not UTF-8"));
        assert_eq!(keys[3].as_deref(), Ok("llm//x"));
        let first = page.contents[0].as_ref().unwrap();
        assert_eq!((first.size, first.etag.as_deref()), (3, Some("\"abc\"")));
        assert_eq!(unix_ms(&first.last_modified), Some(1_714_557_600_500));
        assert_eq!(page.contents[3].as_ref().unwrap().size, 12);

        // Unencoded answers keep spaces, pluses and newlines as they are.
        let raw = "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key> a+b\n</Key><Size>1</Size></Contents></ListBucketResult>";
        let page = parse_list(raw).unwrap();
        assert_eq!(page.contents[0].as_ref().unwrap().key, " a+b\n");
        assert_eq!(page.next_token, None);
        assert!(parse_list("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>").is_err());
        assert!(parse_list("<ListBucketResult><Contents><Size>x</Size></Contents></ListBucketResult>").is_err());
    }

    #[test]
    fn errors_give_their_code() {
        let xml = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>gone &lt;b&gt;</Message></Error>";
        assert_eq!(parse_error(xml), ("NoSuchBucket".into(), "gone <b>".into()));
        assert_eq!(parse_error("not xml <"), (String::new(), String::new()));
    }

    #[test]
    fn listing_urls_name_the_bucket_once() {
        assert_eq!(list_url("http://127.0.0.1:9000/models", "a=1"), "http://127.0.0.1:9000/models?a=1");
        assert_eq!(
            list_url("https://b.s3.eu-west-1.amazonaws.com", "a=1"),
            "https://b.s3.eu-west-1.amazonaws.com/?a=1"
        );
        assert_eq!(list_url("https://b.example.com/", "a=1"), "https://b.example.com/?a=1");
    }

    #[test]
    fn url_prefixes_are_decoded() {
        let spec = SourceSpec::parse("s3://models/My%20Models/x", Default::default()).unwrap();
        assert_eq!(decode_url_path(&spec.url).as_deref(), Some("My Models/x"));
    }
}
