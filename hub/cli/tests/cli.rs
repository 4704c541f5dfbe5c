//! `aq` as a user runs it: the real binary against a real hub over mutual TLS.

mod common;

use common::{aq, fails_with, ok, start_hub};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_walk_through() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models/llama");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("model.safetensors"), vec![7u8; 3 << 20]).unwrap();
    std::fs::write(models.join("config.json"), b"{}").unwrap();
    let hub = start_hub(&tmp.path().join("hub")).await;
    let cfg = Some(hub.admin_config.as_path());
    let home = tmp.path();

    let url = format!("file://{}", tmp.path().join("models").display());
    assert!(ok(&aq(home, cfg, &["source", "add", "local", &url]).await).contains("source local added"));
    assert!(ok(&aq(home, cfg, &["source", "list"]).await).contains(&url));
    // A second source, read gently: its read limits are kept with it.
    let gentle = ["source", "add", "gentle", &url, "--read-rate", "20MiB/s", "--max-reads", "4"];
    ok(&aq(home, cfg, &gentle).await);
    let out = ok(&aq(home, cfg, &["source", "list", "-o", "json"]).await);
    assert!(out.contains("\"read_rate\": \"20971520B/s\"") && out.contains("\"max_reads\": \"4\""), "{out}");
    let out = aq(home, cfg, &["source", "add", "x", &url, "--max-reads", "0"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    ok(&aq(home, cfg, &["dataset", "add", "llama", "--source", "local", "--prefix", "llama"]).await);
    let out = ok(&aq(home, cfg, &["snapshot", "llama"]).await);
    assert!(out.contains("llama@v1: 2 files, 3.0 MiB"), "{out}");
    assert!(out.contains("(first version)"), "{out}");
    let out = ok(&aq(home, cfg, &["snapshot", "llama"]).await);
    assert!(out.contains("unchanged since v1") && out.contains("read 0 B"), "{out}");

    std::fs::write(models.join("config.json"), b"{\"a\": 1}").unwrap();
    let out = ok(&aq(home, cfg, &["snapshot", "llama"]).await);
    assert!(out.contains("llama@v2") && out.contains("8 B new against v1"), "{out}");

    let out = ok(&aq(home, cfg, &["versions", "llama"]).await);
    assert!(out.lines().next().unwrap().starts_with("VERSION"), "{out}");
    assert!(out.contains("v1") && out.contains("v2"), "{out}");
    let out = ok(&aq(home, cfg, &["manifest", "llama@v1", "--chunks"]).await);
    assert!(
        out.contains("llama@v1: 2 files") && out.contains("model.safetensors") && out.contains("llama/config.json"),
        "{out}"
    );
    let out = ok(&aq(home, cfg, &["dataset", "list"]).await);
    assert!(out.contains("llama") && out.contains("v2"), "{out}");

    // The config can also live in the default place.
    let default = home.join(".config/aqueduct");
    std::fs::create_dir_all(&default).unwrap();
    let text = std::fs::read_to_string(&hub.admin_config).unwrap();
    let dir = hub.admin_config.parent().unwrap().display().to_string();
    let absolute =
        text.replace("\"ca.pem\"", &format!("\"{dir}/ca.pem\"")).replace("\"admin.", &format!("\"{dir}/admin."));
    std::fs::write(default.join("aq.toml"), absolute).unwrap();
    assert!(ok(&aq(home, None, &["versions", "llama"]).await).contains("v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(&tmp.path().join("hub")).await;
    let other = start_hub(&tmp.path().join("other")).await;
    let cfg = Some(hub.admin_config.as_path());
    let home = tmp.path();

    fails_with(&aq(home, None, &["versions", "llama"]).await, &["no hub to talk to", "AQ_CONFIG", "aqueduct-hub init"]);
    fails_with(
        &aq(home, cfg, &["--hub", "https://127.0.0.1:1", "versions", "llama"]).await,
        &["cannot reach the hub", "aqueduct-hub serve"],
    );
    let other_admin = other.admin_config.parent().unwrap();
    let cert = other_admin.join("admin.pem").display().to_string();
    let key = other_admin.join("admin.key").display().to_string();
    fails_with(
        &aq(home, cfg, &["--cert", &cert, "--key", &key, "versions", "llama"]).await,
        &["client's certificate", "admin bundle"],
    );
    let ca = other_admin.join("ca.pem").display().to_string();
    fails_with(&aq(home, cfg, &["--ca", &ca, "versions", "llama"]).await, &["not issued by the CA"]);
    fails_with(&aq(home, cfg, &["versions", "llama"]).await, &["dataset \"llama\" does not exist"]);
    fails_with(&aq(home, cfg, &["snapshot", "llama"]).await, &["dataset \"llama\" does not exist"]);
    fails_with(&aq(home, cfg, &["source", "add", "x", "s3//bucket"]).await, &["malformed"]);
    fails_with(
        &aq(home, cfg, &["source", "add", "x", "s3://b", "--option", "endpont=http://x"]).await,
        &["\"endpont\"", "not known"],
    );
    // `-o` is the output format of listings now, not a source option.
    let out = aq(home, cfg, &["source", "add", "x", "s3://b", "-o", "endpoint=http://x"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let out = aq(home, cfg, &["manifest", "llama@vx"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATASET@vN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_rollouts_and_status() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models/llama");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("model.safetensors"), vec![1u8; 2 << 20]).unwrap();
    let hub = start_hub(&tmp.path().join("hub")).await;
    let cfg = Some(hub.admin_config.as_path());
    let home = tmp.path();
    let url = format!("file://{}", tmp.path().join("models").display());
    ok(&aq(home, cfg, &["source", "add", "local", &url]).await);
    ok(&aq(home, cfg, &["dataset", "add", "llama", "--source", "local", "--prefix", "llama"]).await);
    ok(&aq(home, cfg, &["snapshot", "llama"]).await);

    let bundle = tmp.path().join("eu-creds");
    let out =
        ok(&aq(home, cfg, &["region", "add", "eu-west", "--rate", "100MiB/s", "--out", bundle.to_str().unwrap()])
            .await);
    assert!(out.contains("link budget of 100MiB/s") && out.contains("aq region token eu-west"), "{out}");
    // The hub's CA only: no region-wide key exists any more; each spoke enrols with a token.
    assert!(bundle.join("ca.pem").exists(), "ca.pem missing");
    assert!(!bundle.join("key.pem").exists() && !bundle.join("cert.pem").exists(), "a shared region key was written");
    let token = ok(&aq(home, cfg, &["region", "token", "eu-west"]).await);
    assert!(token.trim().starts_with("aqt1_") && token.trim().len() == 69, "{token}");
    let shown: serde_json::Value = serde_json::from_str(&ok(&aq(
        home,
        cfg,
        &["region", "token", "eu-west", "--uses", "5", "--ttl", "10m", "-o", "json"],
    )
    .await))
    .unwrap();
    assert_eq!((shown["region"].as_str(), shown["uses"].as_u64()), (Some("eu-west"), Some(5)));
    assert_ne!(shown["token"].as_str(), Some(token.trim()), "tokens are random");
    fails_with(&aq(home, cfg, &["region", "token", "mars"]).await, &["mars", "does not exist"]);
    fails_with(
        &aq(home, cfg, &["region", "add", "eu-west", "--rate", "1MiB/s", "--out", bundle.to_str().unwrap()]).await,
        &["already exists"],
    );
    let out = aq(home, cfg, &["region", "add", "us", "--rate", "fast"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("100MiB/s"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(ok(&aq(home, cfg, &["region", "list"]).await).contains("eu-west"));
    let out = ok(&aq(home, cfg, &["region", "set", "eu-west", "--rate", "200MiB/s"]).await);
    assert!(out.contains("eu-west now has a link budget of 200MiB/s"), "{out}");
    assert!(ok(&aq(home, cfg, &["region", "list"]).await).contains("200MiB/s"));
    fails_with(
        &aq(home, cfg, &["region", "set", "mars", "--rate", "1MiB/s"]).await,
        &["region \"mars\" does not exist"],
    );

    fails_with(
        &aq(home, cfg, &["rollout", "llama@v1", "--to", "eu-west,mars"]).await,
        &["region \"mars\" does not exist"],
    );
    fails_with(&aq(home, cfg, &["rollout", "llama@v9", "--to", "eu-west"]).await, &["no version v9"]);
    let out = aq(home, cfg, &["rollout", "llama", "--to", "eu-west", "--mode", "everywhere"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not one of auto, region, every-node"), "{err}");
    fails_with(&aq(home, cfg, &["rollout", "ghost", "--to", "eu-west"]).await, &["dataset \"ghost\" does not exist"]);
    assert!(
        ok(&aq(home, cfg, &["rollout", "llama", "--to", "eu-west"]).await).contains("llama@v1 rolling out to eu-west")
    );
    let out = ok(&aq(home, cfg, &["status"]).await);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["DATASET", "VERSION", "REGION", "MODE", "TOTAL", "SIZE", "CACHED", "CACHED", "%", "PHASE", "RATE"],
        "{out}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        ["llama", "v1", "eu-west", "auto", "2.0", "MiB", "0", "B", "0.0%", "Pending", "-/200MiB/s"],
        "{out}"
    );
}

#[tokio::test]
async fn quickstart_says_where_it_went() {
    // The quickstart is `aq-quickstart` (quickstart/tests/quickstart.rs runs it); `aq
    // quickstart` names the command, with the flags it was given.
    let tmp = tempfile::tempdir().unwrap();
    fails_with(
        &aq(tmp.path(), None, &["quickstart", "--model-mib", "8"]).await,
        &["cargo run --release --bin aq-quickstart -- --model-mib 8", "aq-quickstart --model-mib 8"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_out_of_a_dataset_are_named_and_skipped_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models/llama");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("model.safetensors"), vec![7u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink("/etc", models.join("etc")).unwrap();
    let hub = start_hub(&tmp.path().join("hub")).await;
    let cfg = Some(hub.admin_config.as_path());
    let home = tmp.path();

    // A source that holds the hub's data directory is refused.
    let holding = format!("file://{}", tmp.path().display());
    fails_with(&aq(home, cfg, &["source", "add", "all", &holding]).await, &["hub's own files"]);
    let url = format!("file://{}", tmp.path().join("models").display());
    ok(&aq(home, cfg, &["source", "add", "local", &url]).await);
    let out = aq(home, cfg, &["dataset", "add", "llama", "--source", "local", "--outside-links", "maybe"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fail or skip"));
    let out = ok(&aq(home, cfg, &["dataset", "add", "llama", "--source", "local", "--prefix", "llama"]).await);
    assert!(out.contains("outside links: fail"), "{out}");
    fails_with(
        &aq(home, cfg, &["snapshot", "llama"]).await,
        &["\"llama/etc\"", "\"/etc\"", "never followed", "aq dataset set llama --outside-links skip"],
    );

    let out = ok(&aq(home, cfg, &["dataset", "set", "llama", "--outside-links", "skip"]).await);
    assert!(out.contains("outside links: skip"), "{out}");
    let out = ok(&aq(home, cfg, &["dataset", "list"]).await);
    assert!(out.contains("OUTSIDE LINKS") && out.contains("skip"), "{out}");
    let out = ok(&aq(home, cfg, &["snapshot", "llama"]).await);
    assert!(out.contains("llama@v1: 1 files"), "{out}");
    assert!(
        out.contains("warning: 1 object(s) under the prefix are not in v1") && out.contains("\"llama/etc\""),
        "{out}"
    );
    let out = ok(&aq(home, cfg, &["versions", "llama"]).await);
    assert!(out.lines().next().unwrap().contains("SKIPPED"), "{out}");
    let out = ok(&aq(home, cfg, &["manifest", "llama@v1"]).await);
    assert!(
        out.contains("model.safetensors") && out.contains("\"llama/etc\"") && out.contains("never followed"),
        "{out}"
    );
    fails_with(
        &aq(home, cfg, &["dataset", "set", "nope", "--outside-links", "skip"]).await,
        &["\"nope\" does not exist"],
    );
}
