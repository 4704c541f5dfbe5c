//! `aq` as a pipeline drives it: every listing as json, yaml and wide; `--wait` and `aq status
//! --fail-on-failed` with their exit codes; `--watch`; `aq version`; completions and manual
//! pages. The real binary against a real hub, with spokes played through the spokes' API.

mod common;

use std::path::Path;

use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::hub::{RegionSpokes, TestHub};
use common::{aq, command, exits_with, ok, spawn_aq, start_hub};
use serde_json::Value;

/// Bytes that do not repeat (so that every chunk differs).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// A hub with source `local` and dataset `llama` (MODELS/llama: model.safetensors and
/// config.json), cut as v1.
async fn hub_with_llama(tmp: &Path, model: &[u8]) -> TestHub {
    let models = tmp.join("models/llama");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("model.safetensors"), model).unwrap();
    std::fs::write(models.join("config.json"), b"{}").unwrap();
    let hub = start_hub(&tmp.join("hub")).await;
    let cfg = Some(hub.admin_config.as_path());
    let url = format!("file://{}", tmp.join("models").display());
    ok(&aq(tmp, cfg, &["source", "add", "local", &url]).await);
    ok(&aq(tmp, cfg, &["dataset", "add", "llama", "--source", "local", "--prefix", "llama"]).await);
    ok(&aq(tmp, cfg, &["snapshot", "llama"]).await);
    hub
}

/// A spoke of `region` (a new region, added with a fast link), as the spokes' API sees it.
async fn spoke_of(hub: &TestHub, region: &str) -> RegionSpokes {
    hub.add_region(region, 1 << 30).await;
    hub.spokes(region).await
}

/// Opens `node`'s watch; returns the stream (kept open: the node is live while it is) and
/// the session its reports carry.
async fn watch(spoke: &mut RegionSpokes, node: &str) -> (tonic::Streaming<pb::Assignments>, String) {
    let req = pb::WatchRequest { node: node.into(), peer_address: String::new(), ..Default::default() };
    let mut stream = spoke.watch(req).await.unwrap().into_inner();
    let session = stream.message().await.unwrap().unwrap().session;
    (stream, session)
}

/// Polls the hub until `dataset@version` has a row in `region`.
async fn row_appears(hub: &TestHub, version: u64, region: &str) {
    let mut admin = hub.admin().await;
    for _ in 0..600 {
        let rows = admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows;
        if rows.iter().any(|r| r.version == version && r.region == region) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no row for llama@v{version} in {region}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listing_as_json_yaml_and_wide() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let model = noise(2 << 20, 1);
    let hub = hub_with_llama(home, &model).await;
    let cfg = Some(hub.admin_config.as_path());
    let bundle = home.join("eu-creds");
    ok(&aq(home, cfg, &["region", "add", "eu-west", "--rate", "100MiB/s", "--out", bundle.to_str().unwrap()]).await);
    let out = ok(&aq(home, cfg, &["rollout", "llama@v1", "--to", "eu-west", "--cut-over", "per-region"]).await);
    assert!(out.contains("llama@v1 rolling out to eu-west"), "{out}");
    let mut admin = hub.admin().await;
    let held = admin.list_versions(pb::ListVersionsRequest { dataset: "llama".into() }).await.unwrap().into_inner();
    let v1 = &held.versions[0];
    let root = aqueduct_proto::Digest::from_slice(&v1.root).unwrap().to_hex();

    let sources = json(&ok(&aq(home, cfg, &["source", "list", "-o", "json"]).await));
    let s = &sources["sources"][0];
    assert_eq!(s["name"], "local");
    assert_eq!(s["url"], format!("file://{}", home.join("models").display()));
    assert_eq!(s["options"], serde_json::json!({}), "a file:// source takes none");
    assert!(s["created_unix_ms"].as_i64().unwrap() > 0, "{s}");
    assert!(s["created"].as_str().unwrap().ends_with('Z'), "{s}");

    let datasets = json(&ok(&aq(home, cfg, &["dataset", "list", "-o", "json"]).await));
    let d = &datasets["datasets"][0];
    assert_eq!((&d["name"], &d["source"], &d["prefix"]), (&Value::from("llama"), &"local".into(), &"llama".into()));
    assert_eq!(d["latest_version"], 1);
    assert_eq!(d["outside_links"], "fail");

    let versions = json(&ok(&aq(home, cfg, &["versions", "llama", "-o", "json"]).await));
    assert_eq!(versions["dataset"], "llama");
    let v = &versions["versions"][0];
    assert_eq!(v["version"], 1);
    assert_eq!(v["root"], root.as_str());
    assert_eq!(v["files"], 2);
    assert_eq!(v["bytes"], model.len() as u64 + 2);
    assert_eq!(v["bytes"], v1.bytes);
    assert_eq!(v["chunks"], v1.chunks);
    assert_eq!(v["skipped"], Value::Array(vec![]));

    let regions = json(&ok(&aq(home, cfg, &["region", "list", "-o", "json"]).await));
    let r = &regions["regions"][0];
    assert_eq!(r["name"], "eu-west");
    assert_eq!(r["rate_bytes_per_sec"], 100u64 << 20);
    assert_eq!(r["spokes"], Value::Array(vec![]));

    let status = json(&ok(&aq(home, cfg, &["status", "-o", "json"]).await));
    let row = &status["rows"][0];
    assert_eq!((&row["dataset"], &row["version"], &row["region"]), (&"llama".into(), &1.into(), &"eu-west".into()));
    assert_eq!(row["phase"], "Pending");
    assert_eq!(row["mode"], "auto");
    assert_eq!(row["total_bytes"], v1.bytes);
    assert_eq!(row["cached_bytes"], 0);
    assert_eq!(row["budget_bytes_per_sec"], 100u64 << 20);
    assert_eq!(row["active"], false);
    assert_eq!(row["reason"], Value::Null);
    assert!(row.get("nodes").is_none(), "nodes only with --nodes: {row}");
    let with_nodes = json(&ok(&aq(home, cfg, &["status", "llama", "--nodes", "-o", "json"]).await));
    assert_eq!(with_nodes["rows"][0]["nodes"], Value::Array(vec![]), "no live spoke");
    assert_eq!(with_nodes["hub_version"], env!("CARGO_PKG_VERSION"));

    let manifest = json(&ok(&aq(home, cfg, &["manifest", "llama@v1", "-o", "json"]).await));
    assert_eq!(manifest["root"], root.as_str());
    assert_eq!(manifest["total_bytes"], v1.bytes);
    let paths: Vec<&str> = manifest["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["config.json", "model.safetensors"]);
    assert_eq!(manifest["files"][1]["size_bytes"], model.len());
    assert!(manifest["files"][1].get("chunks").is_none(), "chunks only with --chunks");
    let manifest = json(&ok(&aq(home, cfg, &["manifest", "llama", "--chunks", "-o", "json"]).await));
    let chunks = manifest["files"][1]["chunks"].as_array().unwrap();
    assert_eq!(chunks.len() as u64, manifest["files"][1]["chunk_count"].as_u64().unwrap());
    assert_eq!(chunks.iter().map(|c| c["length"].as_u64().unwrap()).sum::<u64>(), model.len() as u64);
    assert!(chunks.iter().all(|c| c["digest"].as_str().unwrap().len() == 64), "{chunks:?}");

    // YAML says what JSON says.
    for args in [&["versions", "llama"][..], &["region", "list"], &["source", "list"], &["manifest", "llama@v1"]] {
        let as_json = json(&ok(&aq(home, cfg, &[args, &["-o", "json"]].concat()).await));
        let yaml = ok(&aq(home, cfg, &[args, &["-o", "yaml"]].concat()).await);
        let as_yaml: Value = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("not YAML ({e}):\n{yaml}"));
        assert_eq!(as_yaml, as_json, "{args:?}:\n{yaml}");
    }
    let yaml = ok(&aq(home, cfg, &["status", "-o", "yaml"]).await);
    let as_yaml: Value = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(as_yaml["rows"][0]["total_bytes"], v1.bytes, "{yaml}");

    // Wide shows what the table leaves out.
    for (args, column) in [
        (&["source", "list"][..], "CREATED"),
        (&["dataset", "list"], "KEEP"),
        (&["versions", "llama"], "RETAINED BY"),
        (&["region", "list"], "PEER ADDRESSES"),
        (&["status"], "CUT-OVER"),
        (&["status", "--nodes"], "RELAYED"),
        (&["manifest", "llama@v1"], "MODIFIED"),
    ] {
        let table = ok(&aq(home, cfg, args).await);
        let wide = ok(&aq(home, cfg, &[args, &["-o", "wide"]].concat()).await);
        assert!(!table.contains(column) && wide.contains(column), "{args:?} {column}:\n{table}\n{wide}");
    }
    let wide = ok(&aq(home, cfg, &["versions", "llama", "-o", "wide"]).await);
    assert!(wide.contains(&root), "the whole root: {wide}");
    // The default is today's table.
    assert_eq!(ok(&aq(home, cfg, &["status", "-o", "table"]).await), ok(&aq(home, cfg, &["status"]).await));

    let out = aq(home, cfg, &["versions", "llama", "-o", "xml"]).await;
    exits_with(&out, 2, &["\"xml\"", "table, wide, json or yaml"]);
    let out = aq(home, cfg, &["rollout", "llama", "--to", "eu-west", "--cut-over", "sometimes"]).await;
    exits_with(&out, 2, &["\"sometimes\"", "all-ready", "per-region", "manual"]);
    let out = aq(home, cfg, &["rollout", "llama", "--to", "eu-west", "--timeout", "5s"]).await;
    exits_with(&out, 2, &["--wait"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_and_fail_on_failed_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let model = noise(3 << 20, 12);
    let hub = hub_with_llama(home, &model).await;
    let cfg = Some(hub.admin_config.as_path());
    let mut eu = spoke_of(&hub, "eu").await;
    let mut us = spoke_of(&hub, "us").await;

    // No spoke: the wait times out, saying where the region stands.
    let out = aq(home, cfg, &["rollout", "llama@v1", "--to", "eu", "--wait", "--timeout", "2s"]).await;
    exits_with(&out, 4, &["timed out after 2s waiting for llama@v1 to be Ready", "eu: Pending"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("llama@v1 rolling out to eu"));
    ok(&aq(home, cfg, &["status", "--fail-on-failed"]).await);
    // On a terminal (a pty from script(1)): a bar per region, the same exit code.
    let line = format!("{} rollout llama@v1 --to eu --wait --timeout 2s", env!("CARGO_BIN_EXE_aq"));
    let mut on_tty = std::process::Command::new("script");
    on_tty.args(["-qec", &line, "/dev/null"]).env("HOME", home).env("AQ_CONFIG", &hub.admin_config);
    let out = tokio::task::spawn_blocking(move || on_tty.output().unwrap()).await.unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{shown}");
    assert!(shown.contains("llama@v1 -> eu") && shown.contains("[") && shown.contains("timed out"), "{shown}");
    assert!(!shown.contains("llama@v1 -> eu: Pending"), "bars, not lines, on a terminal: {shown}");

    // A spoke reports progress, then Ready: the wait ends with 0.
    let waiting = spawn_aq(home, cfg, &["rollout", "llama@v1", "--to", "eu", "--wait", "--timeout", "10m"]);
    let (_watch, session) = watch(&mut eu, "node-1").await;
    let report = |phase: pb::Phase, cached| pb::ProgressReport {
        dataset: "llama".into(),
        version: 1,
        cached_bytes: cached,
        phase: phase.into(),
        node: "node-1".into(),
        session: session.clone(),
        ..Default::default()
    };
    eu.report_progress(report(pb::Phase::Transferring, 1 << 20)).await.unwrap();
    eu.report_progress(report(pb::Phase::Ready, model.len() as u64 + 2)).await.unwrap();
    let out = waiting.await.unwrap();
    let stdout = ok(&out);
    assert!(stdout.contains("llama@v1 is Ready in eu (after "), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Not a terminal: a line per phase change, the last one the end.
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("llama@v1 -> eu: ")).collect();
    assert!(lines.last().is_some_and(|l| l.contains("Active") || l.contains("Ready")), "{stderr}");
    assert_eq!(lines.len(), lines.iter().collect::<std::collections::BTreeSet<_>>().len(), "{stderr}");
    ok(&aq(home, cfg, &["status", "--fail-on-failed"]).await);

    // The source changes under v1 while us fetches it: us's row fails, and so does the wait.
    let waiting = spawn_aq(home, cfg, &["rollout", "llama@v1", "--to", "us", "--wait", "--timeout", "10m"]);
    row_appears(&hub, 1, "us").await;
    let wire = us.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await.unwrap();
    let manifest = aqueduct_proto::Manifest::try_from(wire.into_inner()).unwrap();
    let mut changed = model.clone();
    changed[2 << 20..].copy_from_slice(&noise(1 << 20, 99));
    std::fs::write(home.join("models/llama/model.safetensors"), &changed).unwrap();
    let file = manifest.files.iter().find(|f| f.path == "model.safetensors").unwrap();
    let req = pb::FetchChunksRequest {
        dataset: "llama".into(),
        version: 1,
        digests: file.chunks.iter().map(|c| c.digest.0.to_vec()).collect(),
        foreground: false,
    };
    let mut stream = us.fetch_chunks(req).await.unwrap().into_inner();
    while let Ok(Some(_)) = stream.message().await {}
    let out = waiting.await.unwrap();
    exits_with(&out, 3, &["llama@v1 failed in us: ", "source changed"]);

    // The status shows it; it exits 3 for it only when asked to.
    let stdout = ok(&aq(home, cfg, &["status"]).await);
    assert!(stdout.contains("Failed: "), "{stdout}");
    let out = aq(home, cfg, &["status", "--fail-on-failed"]).await;
    exits_with(&out, 3, &["1 row(s) Failed", "llama@v1 in us", "source changed"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Failed"), "the status is printed first");
    // --watch with it ends by itself, as soon as it sees the row.
    let out = aq(home, cfg, &["status", "--watch", "--fail-on-failed", "-o", "json"]).await;
    exits_with(&out, 3, &["llama@v1 in us"]);
    let shown = json(&String::from_utf8_lossy(&out.stdout));
    let us_row = shown["rows"].as_array().unwrap().iter().find(|r| r["region"] == "us").unwrap();
    assert_eq!(us_row["phase"], "Failed");
    assert!(us_row["reason"].as_str().unwrap().contains("source changed"), "{us_row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_until_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let hub = hub_with_llama(home, &noise(1 << 20, 3)).await;
    let cfg = Some(hub.admin_config.as_path());
    hub.add_region("eu", 1 << 20).await;
    ok(&aq(home, cfg, &["rollout", "llama", "--to", "eu"]).await);

    let mut child = command(home, cfg, &["status", "--watch"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        (lines.next().unwrap().unwrap(), lines.next().unwrap().unwrap())
    })
    .await
    .unwrap();
    assert!(first.0.starts_with("DATASET") && first.1.contains("Pending"), "{first:?}");
    let interrupted = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(interrupted.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0), "Ctrl-C ends the watch with 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_of_cli_hub_and_spokes() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let hub = hub_with_llama(home, &noise(1 << 20, 4)).await;
    let cfg = Some(hub.admin_config.as_path());
    let mut eu = spoke_of(&hub, "eu").await;
    let (_watch, session) = watch(&mut eu, "node-1").await;
    let (_watch2, _) = watch(&mut eu, "node-2").await;
    let cache = pb::CacheReport {
        node: "node-1".into(),
        session,
        agent_version: "0.0.1-old".into(),
        disk_used_bytes: 1 << 20,
        ..Default::default()
    };
    eu.report_cache(cache).await.unwrap();
    let hub_version = env!("CARGO_PKG_VERSION");

    let out = ok(&aq(home, cfg, &["version"]).await);
    assert!(out.contains(&format!("aq    {hub_version}")) && out.contains(&format!("hub   {hub_version}")), "{out}");
    assert!(out.contains("0.0.1-old") && out.contains(&format!("yes (hub {hub_version})")), "{out}");
    let v = json(&ok(&aq(home, cfg, &["version", "-o", "json"]).await));
    assert_eq!((&v["cli"], &v["hub"]), (&Value::from(hub_version), &Value::from(hub_version)));
    let spokes = v["spokes"].as_array().unwrap();
    assert_eq!(spokes.len(), 2, "{v}");
    assert_eq!((&spokes[0]["region"], &spokes[0]["node"]), (&"eu".into(), &"node-1".into()));
    assert_eq!((&spokes[0]["version"], &spokes[0]["skew"]), (&"0.0.1-old".into(), &true.into()));
    assert_eq!((&spokes[1]["version"], &spokes[1]["skew"]), (&Value::Null, &true.into()), "not said yet");

    // `aq status --nodes` marks it too.
    let out = ok(&aq(home, cfg, &["status", "--nodes"]).await);
    let line = out.lines().find(|l| l.starts_with("eu") && l.contains("node-1")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("0.0.1-old") && line.contains("yes (hub"), "{out}");
    let status = json(&ok(&aq(home, cfg, &["status", "--nodes", "-o", "json"]).await));
    assert_eq!(status["caches"][0]["nodes"][0]["skew"], true, "{status}");
    assert_eq!(status["caches"][0]["nodes"][0]["agent_version"], "0.0.1-old");
}

#[tokio::test]
async fn completions_man_pages_and_exit_codes_need_no_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let bash = ok(&aq(home, None, &["completions", "bash"]).await);
    for word in ["_aq()", "rollout", "status", "--wait", "--fail-on-failed", "completions"] {
        assert!(bash.contains(word), "{word} missing from the bash script");
    }
    for shell in ["zsh", "fish"] {
        assert!(ok(&aq(home, None, &["completions", shell]).await).contains("rollout"), "{shell}");
    }
    exits_with(&aq(home, None, &["completions", "cmd.exe"]).await, 2, &["cmd.exe"]);

    let dir = home.join("man/man1");
    let out = ok(&aq(home, None, &["man", "--out", dir.to_str().unwrap()]).await);
    for page in ["aq.1", "aq-rollout.1", "aq-status.1", "aq-source-add.1", "aq-region-list.1", "aq-version.1"] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}\n{out}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page} is no manual page");
        assert!(out.contains(page), "{out}");
    }
    assert!(!dir.join("aq-quickstart.1").exists(), "hidden subcommands have no page");
    let rollout = std::fs::read_to_string(dir.join("aq-rollout.1")).unwrap();
    assert!(rollout.contains("cut\\-over") || rollout.contains("cut-over"), "{rollout}");

    let help = ok(&aq(home, None, &["--help"]).await);
    assert!(
        help.contains("Exit codes:") && help.contains("  3  a row is Failed") && help.contains("  4  --wait"),
        "{help}"
    );
}
