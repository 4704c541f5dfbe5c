//! Where the spoke finds the node's FUSE holder (`aqueduct-fuse hold`, see
//! [`aqueduct_fuse::holder`]), which owns every FUSE mount of the node so that mounts outlive
//! the spoke: the `[mounts]` section of the config, and starting the holder when nothing
//! answers on its socket.
//!
//! With `holder = "spawn"` (the default) a spoke that needs a holder (its first mount) and
//! finds none starts one **detached**:
//! in a session of its own (setsid), its output appended to `DATA_DIR/holder.log`, its process
//! id in `DATA_DIR/holder.pid`, so that a spoke killed with SIGKILL leaves it running and the
//! next spoke finds it. With `external` (the Helm chart: the holder is a DaemonSet of its own)
//! the spoke only connects, and waits for it. With `embedded` the spoke runs the holder inside
//! its own process: mounts end with the spoke (for the quickstart and one-off runs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aqueduct_fuse::holder::HolderConfig;
use aqueduct_proto::Size;
use aqueduct_proto::holder::v1 as held;
use aqueduct_proto::holder::v1::holder_client::HolderClient;
use serde::Deserialize;
use tonic::transport::Channel;

/// The holder's socket unless the config says: inside the data directory.
const DEFAULT_SOCKET: &str = "holder.sock";
/// The holder's executable, looked for next to the spoke's and on PATH.
pub const HOLDER_BINARY: &str = "aqueduct-fuse";
/// How long a spoke waits for a holder it started, or for an external one, to answer.
const WAIT: Duration = Duration::from_secs(30);

/// Who runs the node's FUSE holder.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HolderMode {
    /// The spoke starts one (detached) if none answers on the socket.
    #[default]
    Spawn,
    /// Something else runs it (the chart's holder DaemonSet); the spoke only connects.
    External,
    /// The spoke runs it in its own process: mounts end with the spoke.
    Embedded,
}

/// The `[mounts]` section of the spoke's config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountsConfig {
    /// `spawn` (default), `external` or `embedded`.
    #[serde(default)]
    pub holder: HolderMode,
    /// The holder's API socket; relative paths are inside `data_dir`. Default
    /// `DATA_DIR/holder.sock`.
    #[serde(default)]
    pub holder_socket: Option<PathBuf>,
    /// The `aqueduct-fuse` executable to start (`spawn`); default: the one next to the spoke's
    /// own executable, else the first on PATH.
    #[serde(default)]
    pub holder_binary: Option<PathBuf>,
    /// Disk for the holder's whole copies of mounted files (`DATA_DIR/files`), passed to the
    /// kernel so that warm reads run at local-file speed; `0B` turns them off (always off with
    /// `memory_only`). Counted in `[cache] disk`, so it must be smaller than that quota.
    /// Default 16GiB, and at most a quarter of `[cache] disk` ([`MountsConfig::fit`]).
    #[serde(default, deserialize_with = "size")]
    pub whole_files: Option<Size>,
}

/// The default disk budget for whole copies.
pub const DEFAULT_WHOLE_FILES: u64 = 16 << 30;

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Size>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

impl MountsConfig {
    /// Resolves relative paths inside `data_dir`.
    pub fn resolve(&mut self, data_dir: &Path) {
        let socket = self.holder_socket.take().unwrap_or_else(|| DEFAULT_SOCKET.into());
        self.holder_socket = Some(if socket.is_relative() { data_dir.join(socket) } else { socket });
    }

    pub fn socket(&self, data_dir: &Path) -> PathBuf {
        self.holder_socket.clone().unwrap_or_else(|| data_dir.join(DEFAULT_SOCKET))
    }

    /// The whole copies' disk budget, in bytes (the default unless set: see [`Self::fit`]).
    pub fn whole_files_bytes(&self) -> u64 {
        self.whole_files.map_or(DEFAULT_WHOLE_FILES, |s| s.0)
    }

    /// Fits the whole copies' budget into the disk quota `disk` (`[cache] disk`; none: the
    /// disk is the limit), which counts them with the chunks: unset, it becomes the default, at
    /// most a quarter of the quota; set, it must leave room in the quota for the chunks the
    /// copies are made from. The message names both keys and what to change.
    pub fn fit(&mut self, disk: Option<Size>, room_for_chunks: u64) -> Result<(), String> {
        let Some(disk) = disk else { return Ok(()) };
        let Some(whole) = self.whole_files else {
            self.whole_files = Some(Size(DEFAULT_WHOLE_FILES.min(disk.0 / 4)));
            return Ok(());
        };
        if whole.0 != 0 && whole.0.saturating_add(room_for_chunks) > disk.0 {
            return Err(format!(
                "mounts.whole_files ({whole}) is not smaller than cache.disk ({disk}) with room for chunks ({}): whole copies of mounted files count in the disk quota; lower mounts.whole_files (to cache.disk less {} at most, or \"0B\" to turn them off) or raise cache.disk",
                Size(room_for_chunks),
                Size(room_for_chunks)
            ));
        }
        Ok(())
    }
}

/// What the holder's whole copies take of the disk quota: the most of what the holder reports
/// (`disk_bytes`, which counts a copy being written at its whole size from its start; a holder
/// older than it: its ready copies) and what is `measured` in `DATA_DIR/files` (copies stay
/// on disk while no holder runs, and an older holder does not report those not verified).
pub fn whole_files_on_disk(reported: Option<&held::WholeFiles>, measured: u64) -> u64 {
    reported.map_or(0, |w| w.disk_bytes.max(w.ready_bytes)).max(measured)
}

/// Bytes of the files in `DATA_DIR/files` (the whole copies, and a copy being written); 0 if
/// there is no such directory.
pub fn measure_whole_files(data_dir: &Path) -> u64 {
    let entries = std::fs::read_dir(data_dir.join(WHOLE_FILES_DIR)).into_iter().flatten().flatten();
    entries.filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}

/// Where the holder keeps its whole copies, inside the data directory.
pub const WHOLE_FILES_DIR: &str = "files";

#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    #[error(
        "cannot find the FUSE holder `{HOLDER_BINARY}`: not next to the spoke ({beside}) nor on PATH; install it beside `aqueduct-spoke`, or set [mounts] holder_binary"
    )]
    NoBinary { beside: String },
    #[error("cannot start the FUSE holder {binary}: {source}")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("the FUSE holder does not answer on {socket} after {waited:?}{hint}")]
    NoAnswer { socket: PathBuf, waited: Duration, hint: String },
    #[error("the FUSE holder's socket {socket}: {reason}")]
    Socket { socket: PathBuf, reason: String },
}

/// Where the holder's executable is: `configured`, else next to the spoke's own executable,
/// else the first on `path` (the PATH variable).
pub fn find_binary(
    configured: Option<&Path>,
    own_exe: Option<&Path>,
    path: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, HolderError> {
    if let Some(c) = configured {
        return Ok(c.to_owned());
    }
    let beside = own_exe.and_then(Path::parent).map(|d| d.join(HOLDER_BINARY));
    if let Some(b) = beside.as_ref().filter(|b| b.is_file()) {
        return Ok(b.clone());
    }
    path.into_iter().flat_map(std::env::split_paths).map(|d| d.join(HOLDER_BINARY)).find(|p| p.is_file()).ok_or_else(
        || HolderError::NoBinary {
            beside: beside.map_or_else(|| "the spoke's directory is unknown".into(), |b| b.display().to_string()),
        },
    )
}

/// A client of the holder on `socket`, connected now; an error if nothing answers.
pub async fn connect(socket: &Path) -> Result<HolderClient<Channel>, tonic::transport::Error> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))?;
    Ok(HolderClient::new(endpoint.connect().await?))
}

/// Connects to the holder, waiting up to [`WAIT`] for it to answer.
async fn wait_for(socket: &Path, hint: &str) -> Result<HolderClient<Channel>, HolderError> {
    let started = tokio::time::Instant::now();
    loop {
        match connect(socket).await {
            Ok(client) => return Ok(client),
            Err(_) if started.elapsed() < WAIT => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => {
                return Err(HolderError::NoAnswer { socket: socket.to_owned(), waited: WAIT, hint: hint.to_string() });
            }
        }
    }
}

/// What a spoke needs to reach its holder.
#[derive(Clone, Debug)]
pub struct Reach {
    pub config: MountsConfig,
    pub data_dir: PathBuf,
    /// The spoke's local API socket (the holder reads through it).
    pub spoke_socket: PathBuf,
    /// The spoke keeps chunks on disk (in `data_dir`), where the holder reads them directly.
    pub store_on_disk: bool,
}

impl Reach {
    pub fn socket(&self) -> PathBuf {
        self.config.socket(&self.data_dir)
    }

    /// The holder if one answers now (`spawn`: a holder an earlier spoke started); waits for
    /// an `external` one; runs an `embedded` one (until `shutdown`; its task is returned).
    pub async fn existing(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(Option<HolderClient<Channel>>, Option<tokio::task::JoinHandle<()>>), HolderError> {
        let socket = self.socket();
        match self.config.holder {
            HolderMode::Spawn => Ok((connect(&socket).await.ok(), None)),
            HolderMode::External => {
                Ok((Some(wait_for(&socket, "; is the holder DaemonSet running on this node?").await?), None))
            }
            HolderMode::Embedded => {
                let config = HolderConfig {
                    socket: socket.clone(),
                    store: self.store_on_disk.then(|| self.data_dir.clone()),
                    spoke_socket: self.spoke_socket.clone(),
                    cache_bytes: 256 << 20,
                    follow_every: Duration::from_secs(1),
                    whole_files_bytes: self.config.whole_files_bytes(),
                };
                let stop = shutdown.clone();
                let task = tokio::spawn(async move {
                    if let Err(e) = aqueduct_fuse::holder::run(config, stop).await {
                        tracing::error!(error = %e, "the embedded FUSE holder stopped");
                    }
                });
                Ok((Some(wait_for(&socket, "").await?), Some(task)))
            }
        }
    }

    /// The holder, started now if this spoke may start one and none answers (`spawn`: the
    /// first mount needs it; a spoke that never mounts starts none).
    pub async fn start(&self) -> Result<HolderClient<Channel>, HolderError> {
        let socket = self.socket();
        if let Ok(client) = connect(&socket).await {
            return Ok(client);
        }
        if self.config.holder != HolderMode::Spawn {
            return Err(HolderError::NoAnswer { socket, waited: Duration::ZERO, hint: String::new() });
        }
        let exe = std::env::current_exe().ok();
        let path = std::env::var_os("PATH");
        let binary = find_binary(self.config.holder_binary.as_deref(), exe.as_deref(), path.as_deref())?;
        let pid = spawn(&binary, self, &socket)?;
        tracing::info!(binary = %binary.display(), pid, socket = %socket.display(), "started the FUSE holder");
        let log = self.data_dir.join("holder.log");
        wait_for(&socket, &format!("; see its log {}", log.display())).await
    }
}

/// Starts the holder detached: its own session, stdin from /dev/null, output appended to
/// `DATA_DIR/holder.log`; its pid written to `DATA_DIR/holder.pid`. Returns the pid.
fn spawn(binary: &Path, r: &Reach, socket: &Path) -> Result<u32, HolderError> {
    use std::os::unix::process::CommandExt;
    let error = |source| HolderError::Spawn { binary: binary.to_owned(), source };
    std::fs::create_dir_all(&r.data_dir).map_err(error)?;
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(r.data_dir.join("holder.log")).map_err(error)?;
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("hold").arg("--socket").arg(socket).arg("--spoke-socket").arg(&r.spoke_socket);
    if r.store_on_disk {
        cmd.arg("--store").arg(&r.data_dir);
    }
    cmd.arg("--whole-files").arg(format!("{}B", r.config.whole_files_bytes()));
    cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone().map_err(error)?).stderr(log);
    // SAFETY: setsid is async-signal-safe and touches nothing of the parent's.
    unsafe {
        cmd.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let mut child = cmd.spawn().map_err(error)?;
    let pid = child.id();
    let _ = aqueduct_core::durable::write_file(
        &r.data_dir.join("holder.pid"),
        format!("{pid}\n").as_bytes(),
        aqueduct_core::durable::PUBLIC,
    );
    // Reaped if it ends while this spoke runs; never killed by it.
    std::thread::spawn(move || child.wait());
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_the_configured_one_then_beside_the_spoke_then_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let (own, on_path) = (dir.path().join("bin"), dir.path().join("path"));
        std::fs::create_dir_all(&own).unwrap();
        std::fs::create_dir_all(&on_path).unwrap();
        let exe = own.join("aqueduct-spoke");
        let path = std::env::join_paths([dir.path().join("nowhere"), on_path.clone()]).unwrap();
        let err = find_binary(None, Some(&exe), Some(&path)).unwrap_err().to_string();
        assert!(err.contains(&own.join(HOLDER_BINARY).display().to_string()) && err.contains("PATH"), "{err}");
        std::fs::write(on_path.join(HOLDER_BINARY), "").unwrap();
        assert_eq!(find_binary(None, Some(&exe), Some(&path)).unwrap(), on_path.join(HOLDER_BINARY));
        std::fs::write(own.join(HOLDER_BINARY), "").unwrap();
        assert_eq!(find_binary(None, Some(&exe), Some(&path)).unwrap(), own.join(HOLDER_BINARY));
        assert_eq!(find_binary(Some(Path::new("/x/h")), Some(&exe), None).unwrap(), Path::new("/x/h"));
    }

    #[test]
    fn the_mounts_section_names_its_keys() {
        let c: MountsConfig = toml::from_str("holder = \"external\"\nholder_socket = \"/run/h.sock\"").unwrap();
        assert_eq!(c.holder, HolderMode::External);
        assert_eq!(c.socket(Path::new("/d")), Path::new("/run/h.sock"));
        let mut c: MountsConfig = toml::from_str("").unwrap();
        assert_eq!(c.holder, HolderMode::Spawn);
        c.resolve(Path::new("/d"));
        assert_eq!(c.holder_socket.as_deref(), Some(Path::new("/d/holder.sock")));
        let err = toml::from_str::<MountsConfig>("holder = \"fork\"").unwrap_err().to_string();
        assert!(err.contains("fork") && err.contains("spawn"), "{err}");
    }

    #[test]
    fn whole_copies_count_what_the_holder_reports_or_what_is_on_disk_whichever_is_more() {
        let reported = |ready_bytes, disk_bytes| held::WholeFiles { ready_bytes, disk_bytes, ..Default::default() };
        // A copy being written counts at its whole size before its bytes are on disk.
        assert_eq!(whole_files_on_disk(Some(&reported(10, 30)), 12), 30);
        // No holder: what is on disk.
        assert_eq!(whole_files_on_disk(None, 12), 12);
        // A holder older than disk_bytes: its ready copies, or the disk if more.
        assert_eq!(whole_files_on_disk(Some(&reported(10, 0)), 4), 10);
        assert_eq!(whole_files_on_disk(Some(&reported(10, 0)), 25), 25);
        assert_eq!(whole_files_on_disk(None, 0), 0);

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(measure_whole_files(dir.path()), 0, "no directory");
        let files = dir.path().join(WHOLE_FILES_DIR);
        std::fs::create_dir_all(files.join("sub")).unwrap();
        std::fs::write(files.join("a"), [0u8; 100]).unwrap();
        std::fs::write(files.join(".b.7.tmp"), [0u8; 20]).unwrap();
        assert_eq!(measure_whole_files(dir.path()), 120);
    }

    #[test]
    fn whole_copies_fit_in_the_disk_quota_or_the_config_says_which_keys_to_change() {
        const GIB: u64 = 1 << 30;
        let room = 4 << 20;
        let with = |whole: Option<u64>| MountsConfig { whole_files: whole.map(Size), ..MountsConfig::default() };
        // No quota: the disk is the limit, the default stands.
        let mut c = with(None);
        c.fit(None, room).unwrap();
        assert_eq!(c.whole_files_bytes(), DEFAULT_WHOLE_FILES);
        // Unset under a quota: the default, at most a quarter of it.
        let mut c = with(None);
        c.fit(Some(Size(200 * GIB)), room).unwrap();
        assert_eq!(c.whole_files_bytes(), DEFAULT_WHOLE_FILES);
        let mut c = with(None);
        c.fit(Some(Size(40 * GIB)), room).unwrap();
        assert_eq!(c.whole_files_bytes(), 10 * GIB);
        // Set: smaller than the quota with room for chunks, or refused naming both keys.
        let mut c = with(Some(16 * GIB));
        c.fit(Some(Size(200 * GIB)), room).unwrap();
        assert_eq!(c.whole_files_bytes(), 16 * GIB);
        for whole in [200 * GIB, 300 * GIB, 200 * GIB - room + 1] {
            let err = with(Some(whole)).fit(Some(Size(200 * GIB)), room).unwrap_err();
            assert!(
                err.contains("mounts.whole_files") && err.contains("cache.disk (200GiB)") && err.contains("lower"),
                "{err}"
            );
        }
        with(Some(200 * GIB - room)).fit(Some(Size(200 * GIB)), room).unwrap();
        with(Some(0)).fit(Some(Size(room)), room).unwrap();
    }
}
