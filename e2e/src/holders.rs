//! The FUSE holders the spokes of a test start (`aqueduct-fuse hold`, detached, so that mounts
//! outlive the spoke): pointing a spoke at the workspace's binary, finding the holders under a
//! test's directory, and stopping them (SIGTERM: each unmounts everything) with the test.

use std::path::Path;
use std::time::Duration;

/// Points a spoke config's `[mounts] holder_binary` at the workspace's `aqueduct-fuse` (a test
/// binary has no `aqueduct-fuse` beside it), when it is built.
pub fn with_holder_binary(config: std::path::PathBuf) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let holder = exe.parent().unwrap().parent().unwrap().join("aqueduct-fuse");
    if holder.exists() {
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!("[mounts]\nholder_binary = {:?}\n", holder.display().to_string()));
        std::fs::write(&config, text).unwrap();
    }
    config
}

/// Turns the holder's whole copies off in a spoke config (`[mounts] whole_files = "0B"`): its
/// mounts then serve every read through the copy route (each chunk verified when loaded).
pub fn without_whole_files(config: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let text = if text.contains("[mounts]\n") {
        text.replacen("[mounts]\n", "[mounts]\nwhole_files = \"0B\"\n", 1)
    } else {
        format!("{text}[mounts]\nwhole_files = \"0B\"\n")
    };
    std::fs::write(config, text).unwrap();
}

/// The pids in the `holder.pid` files under `root` (up to three levels down): the FUSE holders
/// spokes started there.
pub fn holder_pids(root: &Path) -> Vec<u32> {
    fn walk(dir: &Path, depth: u32, out: &mut Vec<u32>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "holder.pid") {
                if let Some(pid) = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok()) {
                    out.push(pid);
                }
            } else if depth > 0 && entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, depth - 1, out);
            }
        }
    }
    let mut pids = Vec::new();
    walk(root, 3, &mut pids);
    pids
}

/// Whether process `pid` is running (not gone, not a zombie).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit(')').next().map(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Stops the FUSE holders spokes started under `root` (SIGTERM: they unmount everything and
/// exit) and waits for them; then detaches any mount still under `root`.
pub fn stop_holders(root: &Path) {
    let pids: Vec<u32> = holder_pids(root).into_iter().filter(|&p| running(p)).collect();
    for pid in &pids {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    }
    let started = std::time::Instant::now();
    while pids.iter().any(|&p| running(p)) && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids.iter().filter(|&&p| running(p)) {
        eprintln!("the FUSE holder {pid} did not stop on SIGTERM; killing it");
        let _ = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
    crate::netns::unmount_under(root);
}

/// Stops the FUSE holders started under a directory when dropped (however the test ends).
pub struct StopHolders(pub std::path::PathBuf);

impl Drop for StopHolders {
    fn drop(&mut self) {
        stop_holders(&self.0);
    }
}
