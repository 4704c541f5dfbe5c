//! The ways people mount S3 today, for benchmarks: `rclone mount --vfs-cache-mode full` and
//! `s3fs` over a bucket of an S3 server on this machine, started as processes, each with a
//! fresh cache, and unmounted on drop.
//!
//! Both come from Debian (`apt-get install -y rclone s3fs fuse3`, or `scripts/bench-peers`);
//! a missing one is reported, not a failure (a benchmark skips its rows, saying why).
//! rclone 1.60 fails when `AWS_CA_BUNDLE` is set, so it runs without it (see TESTBED.md).
//! [`garage`] runs the server that serves them well.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod garage;

/// A peer tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// `rclone mount --vfs-cache-mode full --read-only`.
    RcloneMount,
    /// `s3fs -o use_cache=DIR,ro`.
    S3fs,
}

impl Tool {
    /// The name people know it by.
    pub fn label(self) -> &'static str {
        match self {
            Tool::RcloneMount => "rclone mount",
            Tool::S3fs => "s3fs",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Tool::RcloneMount => "rclone",
            Tool::S3fs => "s3fs",
        }
    }
}

/// Where the bucket is and who may read it.
#[derive(Clone, Debug)]
pub struct Server {
    /// `http://HOST:PORT`.
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    pub bucket: String,
}

/// A mounted bucket: the mount point and the tool's process; unmounted and stopped on drop,
/// and its cache removed.
pub struct Mounted {
    pub dir: PathBuf,
    cache: PathBuf,
    child: std::process::Child,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.cache);
    }
}

/// Mounts `server`'s bucket with `tool` at `work/PROGRAM-mnt` (its cache in `work/PROGRAM-cache`,
/// its log in `work/PROGRAM.log`; each emptied first) and waits (30 s at most) until the
/// mount is there. Err says why not, and what to install when the tool is missing.
pub async fn mount(tool: Tool, server: &Server, work: &Path) -> Result<Mounted, String> {
    let program = tool.program();
    let (dir, cache) = (work.join(format!("{program}-mnt")), work.join(format!("{program}-cache")));
    for d in [&dir, &cache] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let args: Vec<String> = match tool {
        Tool::RcloneMount => vec![
            "mount".into(),
            format!(":s3:{}", server.bucket),
            dir.display().to_string(),
            "--s3-provider=Other".into(),
            format!("--s3-endpoint={}", server.endpoint),
            format!("--s3-access-key-id={}", server.access_key),
            format!("--s3-secret-access-key={}", server.secret_key),
            format!("--s3-region={}", server.region),
            "--s3-force-path-style=true".into(),
            "--vfs-cache-mode=full".into(),
            format!("--cache-dir={}", cache.display()),
            "--read-only".into(),
        ],
        Tool::S3fs => {
            let passwd = work.join("s3fs-passwd");
            std::fs::write(&passwd, format!("{}:{}\n", server.access_key, server.secret_key))
                .map_err(|e| format!("writing {}: {e}", passwd.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
            [
                server.bucket.clone(),
                dir.display().to_string(),
                "-f".into(),
                "-o".into(),
                format!("url={}", server.endpoint),
                "-o".into(),
                format!("endpoint={}", server.region),
                "-o".into(),
                "use_path_request_style".into(),
                "-o".into(),
                format!("passwd_file={}", passwd.display()),
                "-o".into(),
                format!("use_cache={}", cache.display()),
                "-o".into(),
                "ro".into(),
            ]
            .into()
        }
    };
    let log = work.join(format!("{program}.log"));
    let child = std::process::Command::new(program)
        .args(&args)
        .env_remove("AWS_CA_BUNDLE")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).map(Into::into).unwrap_or(std::process::Stdio::null()))
        .spawn()
        .map_err(|e| format!("not run: {program}: {e} (apt-get install -y {program} fuse3, or scripts/bench-peers)"))?;
    let mounted = Mounted { dir, cache, child };
    let started = Instant::now();
    while !aqueduct_testkit::is_mounted(&mounted.dir) {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("{program} did not mount in 30 s (see {})", log.display()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(mounted)
}
