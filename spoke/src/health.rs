//! What the spoke's readiness depends on (see `aqueduct_core::health` for the loop, the
//! endpoints and the gRPC health service): it is connected to the hub (its watch, the
//! session, is up) and its store is usable (a small probe file written, read back and removed
//! in the disk store; the memory-only store always is). With the CSI node plugin, also
//! whether the node can publish ([`csi_ready`]): the store is usable and FUSE mounts can be
//! made; the hub is not needed for that (a publish of a version the node knows waits for it).
//!
//! The controller says when the session opens and closes ([`HubLink`]); the checks read it.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use aqueduct_core::health::{Check, Checks};

/// How long the store's probe may take before the store counts as unusable.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the spoke's session with the hub is up, and why not when it is not.
#[derive(Debug)]
pub struct HubLink {
    state: Mutex<Result<(), String>>,
}

impl Default for HubLink {
    fn default() -> Self {
        Self { state: Mutex::new(Err("not connected yet".into())) }
    }
}

impl HubLink {
    /// The watch is open: the hub sent the session's first message.
    pub fn up(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Ok(());
    }

    /// The session ended (or could not start), because of `why`.
    pub fn down(&self, why: &str) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Err(format!("not connected: {why}"));
    }

    pub fn check(&self) -> Check {
        match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            Ok(()) => Check::ok("hub"),
            Err(why) => Check::failed("hub", why.clone()),
        }
    }
}

/// Whether the CSI node plugin can publish: from the last round's `store` and `fuse` checks
/// (`None`: not checked yet), whether the check loop still turns (`alive`: the spoke's
/// liveness, which the livenessprobe sidecar reaches only through this) and whether the
/// spoke is stopping. `Ok(false)`: still starting.
pub fn csi_ready(
    store: Option<&Check>,
    fuse: Option<&Check>,
    alive: Result<(), String>,
    stopping: bool,
) -> Result<bool, String> {
    if stopping {
        return Err("the spoke is shutting down".into());
    }
    alive?;
    let (Some(store), Some(fuse)) = (store, fuse) else {
        return Ok(false);
    };
    store.result()?;
    fuse.result()?;
    Ok(true)
}

/// Writes, reads back and removes a small file in `dir`: the store is usable.
pub fn probe_store(dir: &std::path::Path) -> Result<(), String> {
    let path = dir.join(".ready-probe");
    let payload = b"aqueduct readiness probe";
    let result = std::fs::write(&path, payload)
        .and_then(|()| std::fs::read(&path))
        .map_err(|e| format!("cannot write and read {}: {e}", path.display()))
        .and_then(
            |back| {
                if back == payload { Ok(()) } else { Err(format!("{} read back other bytes", path.display())) }
            },
        );
    let removed = std::fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()));
    result.and(removed)
}

/// The spoke's checks.
pub struct SpokeChecks {
    pub link: std::sync::Arc<HubLink>,
    /// The disk store's directory for its probe file (its `tmp/`); `None`: memory only.
    pub store_dir: Option<PathBuf>,
    /// Check that FUSE mounts can be made (the CSI node plugin publishes through them).
    pub fuse: bool,
}

impl Checks for SpokeChecks {
    async fn round(&mut self) -> Vec<Check> {
        let mut checks = vec![self.link.check()];
        let store = match self.store_dir.clone() {
            None => Check::ok("store"),
            Some(dir) => {
                let probe = tokio::task::spawn_blocking(move || probe_store(&dir));
                match tokio::time::timeout(STORE_TIMEOUT, probe).await {
                    Ok(Ok(Ok(()))) => Check::ok("store"),
                    Ok(Ok(Err(why))) => Check::failed("store", why),
                    Ok(Err(e)) => Check::failed("store", format!("the probe's task failed: {e}")),
                    Err(_) => Check::failed("store", format!("the probe took over {}s", STORE_TIMEOUT.as_secs())),
                }
            }
        };
        checks.push(store);
        if self.fuse {
            checks.push(match aqueduct_fuse::mount::check_available() {
                Ok(()) => Check::ok("fuse"),
                Err(why) => Check::failed("fuse", why),
            });
        }
        checks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_link_says_why_it_is_down() {
        let link = HubLink::default();
        assert_eq!(link.check().problem.as_deref(), Some("not connected yet"));
        link.up();
        assert_eq!(link.check(), Check::ok("hub"));
        link.down("the hub closed the watch");
        assert_eq!(link.check().problem.as_deref(), Some("not connected: the hub closed the watch"));
    }

    #[test]
    fn csi_is_ready_when_the_store_and_fuse_are_and_the_spoke_is_not_stopping() {
        let (ok_store, ok_fuse) = (Check::ok("store"), Check::ok("fuse"));
        let alive = || Ok(());
        assert_eq!(csi_ready(Some(&ok_store), Some(&ok_fuse), alive(), false), Ok(true));
        assert_eq!(csi_ready(None, None, alive(), false), Ok(false), "starting");
        let bad_store = Check::failed("store", "read-only file system");
        assert_eq!(
            csi_ready(Some(&bad_store), Some(&ok_fuse), alive(), false),
            Err("store: read-only file system".into())
        );
        let no_fuse = Check::failed("fuse", "/dev/fuse is missing");
        assert!(csi_ready(Some(&ok_store), Some(&no_fuse), alive(), false).unwrap_err().starts_with("fuse:"));
        assert!(csi_ready(Some(&ok_store), Some(&ok_fuse), alive(), true).is_err());
        let stuck = csi_ready(Some(&ok_store), Some(&ok_fuse), Err("the check loop is stuck".into()), false);
        assert_eq!(stuck, Err("the check loop is stuck".into()));
    }

    #[test]
    fn the_store_probe_leaves_nothing_and_names_an_unusable_directory() {
        let dir = tempfile::tempdir().unwrap();
        probe_store(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the probe file is removed");
        let gone = dir.path().join("gone");
        let why = probe_store(&gone).unwrap_err();
        assert!(why.contains("gone/.ready-probe"), "{why}");
    }

    #[tokio::test]
    async fn a_round_checks_the_hub_the_store_and_fuse() {
        let dir = tempfile::tempdir().unwrap();
        let link = std::sync::Arc::new(HubLink::default());
        let mut checks = SpokeChecks { link: link.clone(), store_dir: Some(dir.path().to_owned()), fuse: true };
        let round = checks.round().await;
        let names: Vec<&str> = round.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["hub", "store", "fuse"]);
        assert!(round[0].problem.is_some() && round[1].problem.is_none());
        link.up();
        checks.store_dir = Some(dir.path().join("gone"));
        let round = checks.round().await;
        assert!(round[0].problem.is_none() && round[1].problem.is_some());
    }
}
