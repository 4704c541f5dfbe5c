//! A garage server (a production-grade S3 server) on 127.0.0.1 for benchmarks: found, started
//! in a directory of its own, given a layout, a bucket and a key, and stopped on drop.
//!
//! garage is AGPL: it runs as an external program, never linked. It is found through
//! `AQ_GARAGE` (the path of the binary) or `PATH`; [`Garage::start`] says what to install when
//! it is missing (`cargo install garage --locked --root DIR`, about 10 minutes on 2 cores, or
//! `scripts/bench-peers`). Only benchmarks use it: the peers (`rclone mount`, `s3fs`) serve
//! their access patterns slowly from s3s-fs, and a comparison is fair only against a server
//! that serves them well (see TESTBED.md).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port of 127.0.0.1 free now (bound, then let go).
fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address")
}

/// The key the benchmark's garage knows (garage's own format: `GK` and 24 hex digits, 64 hex
/// digits of secret).
pub const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
pub const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// The bucket it serves.
pub const BUCKET: &str = "models";
/// The region its S3 API expects in signatures.
pub const REGION: &str = "us-east-1";

/// A running garage, killed on drop.
pub struct Garage {
    child: Child,
    config: PathBuf,
    binary: PathBuf,
    /// The S3 API's address.
    pub addr: std::net::SocketAddr,
    /// What `garage --version` says, as `garage 2.5.0`.
    pub version: String,
}

/// The garage binary: `AQ_GARAGE`, or `garage` on `PATH`; or what to do.
pub fn binary() -> Result<PathBuf, String> {
    const INSTALL: &str = "install it with `cargo install garage --locked --root DIR` (about 10 minutes; or \
                           scripts/bench-peers) and put DIR/bin on PATH or set AQ_GARAGE=DIR/bin/garage";
    if let Some(path) = std::env::var_os("AQ_GARAGE") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("AQ_GARAGE={} is not a file; {INSTALL}", path.display()))
        };
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("garage")).find(|p| p.is_file()))
        .ok_or_else(|| format!("garage is not on PATH and AQ_GARAGE is not set; {INSTALL}"))
}

impl Garage {
    /// Starts garage with its metadata and data under `dir` (one node, replication factor 1,
    /// lmdb), on free ports of 127.0.0.1; waits for it, applies a layout, creates
    /// [`BUCKET`] and the key [`ACCESS_KEY`] with read and write on it.
    pub fn start(dir: &Path) -> Result<Garage, String> {
        let binary = binary()?;
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let (s3, rpc, admin) = (free_port(), free_port(), free_port());
        let config = dir.join("garage.toml");
        let text = format!(
            r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "lmdb"
# No compression: on 2 cores the server should cost its readers as little as it can.
compression_level = "none"
replication_factor = 1
rpc_bind_addr = "{rpc}"
rpc_public_addr = "{rpc}"
rpc_secret = "c3ea8cb80333d04e208d136698b1a01ae370d463f0d435ab2177510b3478bf44"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "{admin}"
admin_token = "aqueduct-bench-admin-token"
"#,
            dir = dir.display()
        );
        std::fs::write(&config, text).map_err(|e| format!("writing {}: {e}", config.display()))?;
        let log = std::fs::File::create(dir.join("garage.log")).map_err(|e| format!("garage.log: {e}"))?;
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let version = Command::new(&binary)
            .arg("--version")
            .output()
            .ok()
            .map(|o| {
                // `garage cargo:2.5.0 [features: ...]`
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                let v = text.split_whitespace().nth(1).unwrap_or("?");
                format!("garage {}", v.trim_start_matches("cargo:"))
            })
            .unwrap_or_else(|| "garage".into());
        let garage = Garage { child, config, binary, addr: s3, version };
        garage.set_up(dir)?;
        Ok(garage)
    }

    /// Runs `garage -c CONFIG args`; its stdout, or why it failed.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("garage {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("`garage {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    fn set_up(&self, dir: &Path) -> Result<(), String> {
        // `status` answers once the server listens (`node id` answers from the disk at once).
        let started = Instant::now();
        while let Err(e) = self.cli(&["status"]) {
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("garage did not answer in 60 s ({e}); see {}", dir.join("garage.log").display()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let node: String = self.cli(&["node", "id", "-q"])?.trim().chars().take(64).collect();
        self.cli(&["layout", "assign", &node, "-z", "dc1", "-c", "100G"])?;
        self.cli(&["layout", "apply", "--version", "1"])?;
        self.cli(&["key", "import", ACCESS_KEY, SECRET_KEY, "-n", "bench", "--yes"])?;
        self.cli(&["bucket", "create", BUCKET])?;
        self.cli(&["bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", ACCESS_KEY])?;
        Ok(())
    }

    /// `http://ADDR`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A plain S3 client of [`BUCKET`].
    pub fn client(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_virtual_hosted_style_request(false)
            .build()
            .expect("an S3 client of garage")
    }

    /// The options of an Aqueduct `s3://models` source on this server, with the key written to
    /// the AWS credentials file `credentials`.
    pub fn source_options(&self, credentials: &Path) -> std::collections::BTreeMap<String, String> {
        std::fs::write(
            credentials,
            format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
        )
        .expect("writing garage's credentials file");
        [
            ("endpoint", self.endpoint()),
            ("allow_http", "true".into()),
            ("region", REGION.into()),
            ("credentials_file", credentials.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
