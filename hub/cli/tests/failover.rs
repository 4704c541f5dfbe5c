//! `aq` given several hubs (`--hub a,b`, `AQ_HUB`, `hub = [..]` in aq.toml): it passes over a
//! hub it cannot connect to, and never sends a call again to another hub once one answered it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{aq, command, fails_with, ok, start_hub};

/// A listener that counts the connections it accepts and closes each at once (no TLS): a
/// "hub" that `aq` cannot talk to, which says whether `aq` tried it.
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counting = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counting.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (url, accepted)
}

/// An address nothing listens on (bound, then let go): connections are refused.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("https://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_cannot_be_reached_is_passed_over_and_v_says_which_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(&tmp.path().join("hub")).await;
    let (home, cfg) = (tmp.path(), Some(hub.admin_config.as_path()));
    let (dead, live) = (dead_url(), hub.url());

    // --hub dead,live: the call goes to the live hub; -v says so, and why the first was passed.
    let both = format!("{dead},{live}");
    let out = aq(home, cfg, &["--hub", &both, "-v", "region", "add", "eu", "--rate", "1MiB/s", "--out"]).await;
    // (--out needs a value: a usage error before any hub is asked.)
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let bundle = tmp.path().join("eu-bundle");
    let out = aq(
        home,
        cfg,
        &["--hub", &both, "-v", "region", "add", "eu", "--rate", "1MiB/s", "--out", bundle.to_str().unwrap()],
    )
    .await;
    let stdout = ok(&out);
    assert!(stdout.contains("region eu added") && stdout.contains(&format!("(hub: {live})")), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("hub {dead} not reached")), "{stderr}");
    assert!(stderr.contains(&format!("hub {live} answered")), "{stderr}");
    println!("aq -v with a dead hub first:\n{stderr}");

    // `aq version` says which hub answered.
    let out = ok(&aq(home, cfg, &["--hub", &both, "version"]).await);
    assert!(out.contains(&format!("at {live}")), "{out}");
    let out = ok(&aq(home, cfg, &["--hub", &both, "version", "-o", "json"]).await);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["hub_address"], live.as_str(), "{out}");

    // AQ_HUB takes the same list.
    let mut cmd = command(home, cfg, &["region", "list"]);
    cmd.env("AQ_HUB", &both);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert!(ok(&out).contains("eu"));

    // So does aq.toml: `hub = [dead, live]`.
    let text = std::fs::read_to_string(&hub.admin_config).unwrap();
    let listed = text
        .lines()
        .map(|l| if l.starts_with("hub = ") { format!("hub = [\"{dead}\", \"{live}\"]") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    let config = hub.admin_config.with_file_name("aq-two.toml");
    std::fs::write(&config, listed).unwrap();
    assert!(ok(&aq(home, Some(&config), &["region", "list"]).await).contains("eu"));

    // None reachable: the error names each hub.
    let (dead2, dead3) = (dead_url(), dead_url());
    let out = aq(home, cfg, &["--hub", &format!("{dead2},{dead3}"), "region", "list"]).await;
    fails_with(&out, &["no hub", &dead2, &dead3]);
}

/// A hub that answers a call with an error has had the call: `aq` reports its error and asks
/// no other hub. The counting "hub" behind it shows it: asked when the first cannot be
/// reached, never when the first answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_hub_answered_with_an_error_is_not_sent_to_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(&tmp.path().join("hub")).await;
    let (home, cfg) = (tmp.path(), Some(hub.admin_config.as_path()));
    let (next, accepted) = counting_listener().await;
    let both = format!("{},{next}", hub.url());
    // The hub refuses a token for a region it does not know: an answer, not retried.
    let out = aq(home, cfg, &["--hub", &both, "region", "token", "mars"]).await;
    fails_with(&out, &["mars", "does not exist"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("no hub"), "{stderr}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "a hub behind one that answered was asked: {stderr}");
    ok(&aq(home, cfg, &["--hub", &both, "region", "list"]).await);
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "a hub behind one that answered was asked");
    // The control: with a dead hub first, the next is asked (once).
    let out = aq(home, cfg, &["--hub", &format!("{},{next}", dead_url()), "region", "list"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "{}", String::from_utf8_lossy(&out.stderr));
}
