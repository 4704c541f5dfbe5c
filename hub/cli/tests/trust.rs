//! The trust commands as a user runs them: `aq admin add|list|revoke`, `aq region
//! revoke-all`, `aq node revoke`, `aq revocations` and `aq audit`, the real binary against a
//! real hub over mutual TLS.

mod common;

use common::{aq, fails_with, ok, start_hub};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_admin_revokes_and_the_audit_log_names_every_call() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(&tmp.path().join("hub")).await;
    let admin = Some(hub.admin_config.as_path());
    let home = tmp.path();
    ok(&aq(
        home,
        admin,
        &["region", "add", "eu", "--rate", "10MiB/s", "--out", &home.join("eu").display().to_string()],
    )
    .await);

    let bob_dir = home.join("bob-admin");
    let out =
        ok(&aq(home, admin, &["admin", "add", "bob", "--valid-for", "2h", "--out", &bob_dir.display().to_string()])
            .await);
    assert!(out.contains("admin bob added") && out.contains("aq.toml"), "{out}");
    let bob = bob_dir.join("aq.toml");
    let bob = Some(bob.as_path());
    let out = ok(&aq(home, admin, &["admin", "list"]).await);
    assert!(out.lines().any(|l| l.starts_with("bob") && l.contains("active")), "{out}");

    // Bob works with his own bundle.
    let out = ok(&aq(home, bob, &["node", "revoke", "eu", "node-7", "--reason", "disk sent for repair"]).await);
    assert!(out.contains("spiffe://aqueduct/region/eu/node/node-7"), "{out}");
    ok(&aq(home, bob, &["region", "revoke-all", "eu"]).await);
    let out = ok(&aq(home, bob, &["revocations"]).await);
    assert!(out.contains("spiffe://aqueduct/region/eu ") && out.contains("bob"), "{out}");
    assert!(!out.contains("node-7"), "the region's entry covers the node's: {out}");

    // The audit log lists the calls by name, each with its admin.
    let json = ok(&aq(home, admin, &["audit", "-o", "json"]).await);
    let audit: serde_json::Value = serde_json::from_str(&json).unwrap();
    let calls: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["admin"].as_str().unwrap().into(),
                e["call"].as_str().unwrap().into(),
                e["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (who, call) in [
        ("admin", "AddRegion"),
        ("admin", "AddAdmin"),
        ("admin", "ListAdmins"),
        ("bob", "Revoke"),
        ("bob", "ListRevocations"),
    ] {
        assert!(calls.iter().any(|(w, c, r)| w == who && c == call && r == "ok"), "{who} {call} not in {calls:?}");
    }
    assert_eq!(calls.iter().filter(|(w, c, _)| w == "bob" && c == "Revoke").count(), 2, "{calls:?}");
    let text = ok(&aq(home, admin, &["audit", "--since", "1h"]).await);
    assert!(text.starts_with("TIME") && text.contains("bob") && text.contains("Revoke"), "{text}");
    let none = ok(&aq(home, admin, &["audit", "--since", "2099-01-01T00:00:00Z"]).await);
    assert_eq!(none.lines().count(), 1, "only the header: {none}");

    // Bob revoked: his bundle no longer works; the first admin's still does.
    ok(&aq(home, admin, &["admin", "revoke", "bob"]).await);
    let out = aq(home, bob, &["region", "list"]).await;
    assert!(!out.status.success(), "a revoked admin was served");
    let out = ok(&aq(home, admin, &["admin", "list"]).await);
    assert!(out.lines().any(|l| l.starts_with("bob") && l.contains("revoked")), "{out}");
    fails_with(&aq(home, admin, &["admin", "revoke", "admin"]).await, &["last admin"]);
}
