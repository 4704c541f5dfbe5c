//! Real servers for Aqueduct's tests.
//!
//! [`S3Server`] serves a directory over the S3 protocol on 127.0.0.1 with `s3s-fs` (each
//! top-level folder is a bucket), checks request signatures, and counts the requests it
//! answers, so that tests can assert what crossed the wire (for example: no object was read).
//! [`memory::MemoryS3Server`] is the same protocol over a map in memory, for keys a folder
//! cannot hold (`dir/` markers, `tok` beside `tok/x`, `.`, `..` and `//` segments).
//! [`hub::TestHub`] is a real hub, served in the test's process. [`postgres::database`] is a
//! fresh database on a real PostgreSQL server for one test. [`fuzz`] is the one configuration
//! of every property-based test.

pub mod fuzz;
pub mod hub;
pub mod memory;
pub mod postgres;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

pub const ACCESS_KEY: &str = "aqueduct-test";
pub const SECRET_KEY: &str = "aqueduct-test-secret";

#[derive(Debug, Default)]
pub struct Counters {
    /// Every request answered.
    pub requests: AtomicU64,
    /// GETs of an object (not listings).
    pub object_gets: AtomicU64,
    /// Bytes of object bodies sent in answer to those GETs (their Content-Length).
    pub object_bytes: AtomicU64,
    /// Object GETs being answered now (until their headers are sent), and the most at once.
    pub gets_in_flight: AtomicU64,
    pub most_gets_in_flight: AtomicU64,
}

/// An S3-compatible server on 127.0.0.1, stopped when dropped.
pub struct S3Server {
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl S3Server {
    /// Serves `root` (created if missing) on 127.0.0.1. Must be called inside a tokio runtime.
    pub async fn start(root: &Path) -> io::Result<Self> {
        Self::start_on(root, "127.0.0.1:0".parse().expect("an address")).await
    }

    /// Serves `root` on `listen` (0.0.0.0 for clients in other network namespaces).
    pub async fn start_on(root: &Path, listen: SocketAddr) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| io::Error::other(format!("{e:?}")))?;
        let (addr, counters, task) = serve(fs, listen).await?;
        Ok(Self { addr, root: root.to_owned(), counters, task })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn object_gets(&self) -> u64 {
        self.counters.object_gets.load(Ordering::Relaxed)
    }

    /// Bytes of objects this server has sent (bodies of object GETs).
    pub fn object_bytes(&self) -> u64 {
        self.counters.object_bytes.load(Ordering::Relaxed)
    }

    /// The options of an Aqueduct `s3://` source that reach this server, with the credentials
    /// in the AWS credentials file `credentials` (see [`S3Server::write_credentials`]).
    pub fn source_options(&self, credentials: &Path) -> BTreeMap<String, String> {
        source_options(&self.endpoint(), credentials)
    }

    /// Writes an AWS credentials file with this server's keys (`[default]` profile).
    pub fn write_credentials(&self, path: &Path) -> io::Result<()> {
        std::fs::write(
            path,
            format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `s3` over the S3 protocol on `listen` (signatures checked with the test keys),
/// counting requests; returns the address (127.0.0.1 for an unspecified one).
pub(crate) async fn serve(
    s3: impl s3s::S3,
    listen: SocketAddr,
) -> io::Result<(SocketAddr, Arc<Counters>, tokio::task::JoinHandle<()>)> {
    let mut builder = S3ServiceBuilder::new(s3);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = TcpListener::bind(listen).await?;
    let mut addr = listener.local_addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let counters = Arc::new(Counters::default());
    let counted = counters.clone();
    let task = tokio::spawn(async move {
        let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else { continue };
            let (service, counters) = (service.clone(), counted.clone());
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                counters.requests.fetch_add(1, Ordering::Relaxed);
                let get = is_object_get(&req);
                if get {
                    counters.object_gets.fetch_add(1, Ordering::Relaxed);
                }
                let (service, counters) = (service.clone(), counters.clone());
                async move {
                    if get {
                        let now = counters.gets_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        counters.most_gets_in_flight.fetch_max(now, Ordering::SeqCst);
                    }
                    let response = service.call(req.map(s3s::Body::from)).await;
                    if get {
                        counters.gets_in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                    if let Ok(r) = &response
                        && get
                        && r.status().is_success()
                    {
                        let len = r.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
                        counters
                            .object_bytes
                            .fetch_add(len.and_then(|v| v.parse().ok()).unwrap_or(0), Ordering::Relaxed);
                    }
                    response
                }
            });
            let conn = http.serve_connection(TokioIo::new(socket), svc).into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    Ok((addr, counters, task))
}

/// The options of an Aqueduct `s3://` source that reach `endpoint`, with the credentials in
/// the AWS credentials file `credentials`.
pub(crate) fn source_options(endpoint: &str, credentials: &Path) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("endpoint".to_string(), endpoint.to_string()),
        ("allow_http".to_string(), "true".to_string()),
        ("credentials_file".to_string(), credentials.display().to_string()),
    ])
}

fn is_object_get<B>(req: &hyper::Request<B>) -> bool {
    let path_parts = req.uri().path().trim_matches('/').split('/').filter(|p| !p.is_empty()).count();
    req.method() == hyper::Method::GET && path_parts >= 2
}

/// Deterministic pseudo-random bytes (xorshift64), for test data that does not compress or
/// repeat.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Whether this test may mount FUSE (root and /dev/fuse). Under `CI=true` a missing
/// prerequisite fails the test with what is missing; elsewhere the test is skipped, saying so.
pub fn can_mount_fuse() -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let fuse = std::path::Path::new("/dev/fuse").exists();
    if root && fuse {
        return true;
    }
    let missing = if fuse { "root (non-root mounts need fusermount3 from the fuse3 package)" } else { "/dev/fuse" };
    assert!(std::env::var("CI").is_err(), "this test mounts FUSE and needs {missing}");
    eprintln!("skipped: mounting FUSE needs {missing}");
    false
}

/// Whether anything is mounted exactly at `path` (from /proc/mounts).
pub fn is_mounted(path: &std::path::Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(path.to_str().unwrap_or_default()))
}

/// Sets an extended attribute of `path` (a `user.` one on a file of the test's directory).
pub fn set_xattr(path: &std::path::Path, name: &str, value: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: both strings are NUL-terminated and the value's length is passed.
    let n = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// An extended attribute's value, `None` if the entry has none of that name.
pub fn xattr(path: &std::path::Path, name: &str) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and the buffer's length is passed.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENODATA), "getxattr failed: {e}");
        return None;
    }
    buf.truncate(n as usize);
    String::from_utf8(buf).ok()
}
