//! The real `aqueduct-hub` binary for tests that run it as a process (limits, health): its
//! data directory made by `aqueduct-hub init`, with config sections a test adds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::bin;

/// Runs `aqueduct-hub init --data-dir DATA --listen LISTEN`, appends `extra` (TOML sections) to
/// the config it wrote, and returns that config's path.
pub fn init(data: &Path, listen: SocketAddr, extra: &str) -> PathBuf {
    let init = std::process::Command::new(bin("aqueduct-hub"))
        .args(["init", "--data-dir"])
        .arg(data)
        .args(["--listen", &listen.to_string()])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let config = data.join("hub.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    config
}
