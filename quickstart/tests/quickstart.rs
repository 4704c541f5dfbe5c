//! `aq-quickstart` as a user runs it (the README's first command): the real binary, in a
//! temporary directory of its own, which it must leave empty.

use std::process::Output;

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "aq-quickstart failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_runs_the_main_job_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_aq-quickstart"));
    cmd.args(["--model-mib", "8"]).env("TMPDIR", tmp.path()).env("AQUEDUCT_LOG", "warn");
    let fuse = aqueduct_testkit::can_mount_fuse();
    if !fuse {
        cmd.arg("--no-fuse");
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let stdout = ok(&out);
    for line in [
        "verified: every file of v1 in both regions' stores has the BLAKE3 of the source",
        "verified: every file of v2 in both regions' stores has the BLAKE3 of the source",
    ] {
        assert!(stdout.contains(line), "{stdout}");
    }
    if fuse {
        let line =
            "(following the active version, v2): read every file through FUSE, BLAKE3 matches the source (3 files";
        assert!(stdout.contains(line), "{stdout}");
    }
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("eu-west") || l.starts_with("us-east")).collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    // v1 moves the whole version once; v2 moves only a small part of it.
    let ratio = |row: &str| row.split_whitespace().nth(6).unwrap().parse::<f64>().unwrap();
    assert!(rows.iter().filter(|r| r.contains(" v1 ")).all(|r| (ratio(r) - 1.0).abs() < 0.001), "{stdout}");
    assert!(rows.iter().filter(|r| r.contains(" v2 ")).all(|r| ratio(r) < 0.2), "{stdout}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "the quickstart left files behind");
}
