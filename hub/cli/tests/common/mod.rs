//! Running `aq` as a user does, against a real hub (aqueduct-testkit's TestHub).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use aqueduct_testkit::hub::TestHub;

pub async fn start_hub(dir: &Path) -> TestHub {
    TestHub::init(dir).await
}

/// `aq` with a clean environment (no AQ_* variables, a HOME without config).
pub fn command(home: &Path, config: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aq"));
    cmd.args(args).env("HOME", home);
    for var in ["AQ_CONFIG", "AQ_HUB", "AQ_CA", "AQ_CERT", "AQ_KEY"] {
        cmd.env_remove(var);
    }
    if let Some(config) = config {
        cmd.env("AQ_CONFIG", config);
    }
    cmd
}

/// Runs `aq` to its end.
pub async fn aq(home: &Path, config: Option<&Path>, args: &[&str]) -> Output {
    spawn_aq(home, config, args).await.unwrap()
}

/// Starts `aq`; the handle gives its output once it ends (while the test does other things).
pub fn spawn_aq(home: &Path, config: Option<&Path>, args: &[&str]) -> tokio::task::JoinHandle<Output> {
    let mut cmd = command(home, config, args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
}

pub fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "aq failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

pub fn fails_with(out: &Output, words: &[&str]) {
    exits_with(out, 1, words);
}

/// `aq` ended with `code`, its stderr naming each of `words`.
pub fn exits_with(out: &Output, code: i32, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "aq should exit {code}: {stderr}\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for w in words {
        assert!(stderr.contains(w), "{stderr:?} lacks {w:?}");
    }
}
