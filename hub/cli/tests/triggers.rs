//! `aq dataset set --watch-*` as a user runs it, against a real hub: bad values fail with what
//! is wrong, a watch is checked with no command typed, and `aq dataset list` shows the last
//! check and its result.

mod common;

use std::time::Duration;

use common::{aq, fails_with, ok, start_hub};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_is_validated_checked_and_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models/llama");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("config.json"), b"{}").unwrap();
    let hub = start_hub(&tmp.path().join("hub")).await;
    let cfg = Some(hub.admin_config.as_path());
    let home = tmp.path();
    let url = format!("file://{}", tmp.path().join("models").display());
    ok(&aq(home, cfg, &["source", "add", "local", &url]).await);
    ok(&aq(home, cfg, &["dataset", "add", "llama", "--source", "local", "--prefix", "llama"]).await);
    let bundle = tmp.path().join("eu");
    ok(&aq(home, cfg, &["region", "add", "eu", "--rate", "1MiB/s", "--out", bundle.to_str().unwrap()]).await);
    let set = |args: &[&str]| [&["dataset", "set", "llama"], args].concat().iter().map(|s| s.to_string()).collect();
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        aq(home, cfg, &args).await
    };

    // Bad values fail with what is wrong, and change nothing.
    let out = run(set(&["--watch-every", "10x"])).await;
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--watch-every"), "{out:?}");
    fails_with(&run(set(&["--watch-every", "2s"])).await, &["--watch-every 2s", "at most every 10s", "min_interval"]);
    fails_with(&run(set(&["--watch-cron", "0 25 * * *"])).await, &["hour field \"25\""]);
    fails_with(&run(set(&["--watch-cron", "*/15 * * *"])).await, &["5 fields", "has 4"]);
    fails_with(&run(set(&["--watch-cron", "0 3 * * *", "--tz", "Mars/Olympus"])).await, &["Mars/Olympus", "IANA"]);
    fails_with(
        &run(set(&["--watch-every", "10s", "--auto-rollout", "nowhere"])).await,
        &["region \"nowhere\" does not exist"],
    );
    fails_with(&run(set(&["--auto-rollout", "eu", "--keep", "2"])).await, &["goes with a watch"]);
    let out = ok(&aq(home, cfg, &["dataset", "list"]).await);
    assert!(out.contains("WATCH") && out.contains("LAST CHECK"), "{out}");
    let row = out.lines().find(|l| l.starts_with("llama")).unwrap();
    assert!(row.split_whitespace().rev().take(2).all(|cell| cell == "-"), "not watched: {row:?}");

    // A watch: checked at once (never checked before), a version cut with no command typed.
    let out = ok(&run(set(&["--watch-every", "10s"])).await);
    assert!(out.contains("dataset llama: watched every 10s"), "{out}");
    let mut listed = String::new();
    for _ in 0..600 {
        listed = ok(&aq(home, cfg, &["dataset", "list"]).await);
        if listed.contains("cut v1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{listed}");
    let row = listed.lines().find(|l| l.starts_with("llama")).unwrap();
    assert!(row.contains("every 10s") && row.contains("ago: cut v1"), "{row}");
    let json = ok(&aq(home, cfg, &["dataset", "list", "-o", "json"]).await);
    for field in ["\"every\": \"10s\"", "\"last_result\": \"cut v1\"", "\"last_failed\": false", "\"next_check\": \""] {
        assert!(json.contains(field), "{field} in {json}");
    }
    let wide = ok(&aq(home, cfg, &["dataset", "list", "-o", "wide"]).await);
    assert!(wide.contains("NEXT CHECK") && wide.contains(" in "), "{wide}");

    // A cron schedule in a zone, with an automatic rollout; then no watch.
    let cron = set(&["--watch-cron", "*/15 * * * *", "--tz", "Europe/Berlin", "--auto-rollout", "eu"]);
    let out = ok(&run(cron).await);
    assert!(out.contains("watched cron \"*/15 * * * *\" (Europe/Berlin) -> eu"), "{out}");
    assert!(out.contains("last check:") && out.contains("cut v1"), "the last check stays: {out}");
    let out = ok(&run(set(&["--watch", "off"])).await);
    assert!(out.contains("dataset llama: not watched"), "{out}");
    let json = ok(&aq(home, cfg, &["dataset", "list", "-o", "json"]).await);
    assert!(json.contains("\"watch\": null"), "{json}");
}
