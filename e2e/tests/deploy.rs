//! The install material, checked without a cluster, a Docker engine or a running systemd:
//!
//! - both Helm charts (`deploy/spoke`, `deploy/hub/chart`) through `scripts/check-charts.py`
//!   (helm-python-sdk: lint, values.schema.json, renders with every `ci/*-values.yaml`,
//!   kubernetes-validate on every built-in object, `ci/invalid/` refused), then the configs
//!   they render loaded by the spoke's and the hub's own loaders; and the checker shown to
//!   fail on a broken chart;
//! - the hub's systemd unit with `systemd-analyze verify` (and its sandbox with
//!   `systemd-analyze security`), pointed at the built binary;
//! - `deploy/hub/install.sh --root` in a throwaway root: the user, directories, config,
//!   certificates and the enabled unit it leaves.
//!
//! What a test needs and does not find (Python packages, systemd-analyze, root) makes it fail
//! under CI (`CI` set; `scripts/test` installs them as root) and skip with a message elsewhere.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use aqueduct_hub::config::HubConfig;
use aqueduct_spoke::{Overrides, SpokeConfig};

const PIP: &str =
    "python3 -m pip install --quiet helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 jsonschema==4.26.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Fails under CI, otherwise says why the test does not run. Returns nothing, for `return`.
fn unavailable(why: &str) {
    assert!(std::env::var("CI").is_err(), "{why}");
    eprintln!("SKIPPED: {why}");
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs `scripts/check-charts.py` on `charts`; None when Python or a package is missing.
fn check_charts(charts: &[PathBuf], out: Option<&Path>) -> Option<(bool, String)> {
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("scripts/check-charts.py"));
    if let Some(out) = out {
        cmd.arg("--out").arg(out);
    }
    let output = match cmd.args(charts).output() {
        Ok(output) => output,
        Err(e) => {
            unavailable(&format!("cannot run python3 ({e}); install Python 3, then\n  {PIP}"));
            return None;
        }
    };
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.code() == Some(3) {
        unavailable(&text);
        return None;
    }
    Some((output.status.success(), text))
}

fn rendered(out: &Path, chart: &str, values: &str, template: &str) -> String {
    let path = out.join(chart).join(values).join(chart).join("templates").join(template);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{} was not rendered: {e}", path.display()))
}

/// The text of a ConfigMap's one file, as the container sees it (a YAML block scalar).
fn config_map_file(manifest: &str, key: &str) -> String {
    let start = manifest.find(&format!("  {key}: |\n")).unwrap_or_else(|| panic!("no {key} in\n{manifest}"));
    manifest[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A rendered spoke.toml whose trusted keys are read from the enrolment Secret's
/// signing.pub, read from a file of `dir` instead (the Secret is not mounted here).
fn with_trust(dir: &Path, toml: String) -> String {
    let keys = dir.join("signing.pub");
    std::fs::write(&keys, format!("ed25519:{}\n", "33".repeat(32))).unwrap();
    assert!(toml.contains("signing_keys_file = \"/etc/aqueduct/enrol/signing.pub\""), "{toml}");
    toml.replace("/etc/aqueduct/enrol/signing.pub", &keys.display().to_string())
}

#[test]
fn charts_lint_render_validate_and_refuse_bad_values() {
    let root = repo();
    let out = tempfile::tempdir().unwrap();
    let charts = [root.join("deploy/spoke"), root.join("deploy/hub/chart")];
    let Some((ok, text)) = check_charts(&charts, Some(out.path())) else { return };
    println!("{text}");
    assert!(ok, "the charts have problems:\n{text}");
    // Every values file was rendered and every bad one refused, by name.
    for needle in [
        "aqueduct-spoke default-values.yaml: helm lint --strict",
        "aqueduct-spoke memory-only-values.yaml: aqueduct-spoke/templates/daemonset.yaml DaemonSet",
        "aqueduct-spoke region-values.yaml: aqueduct-spoke/templates/storageclass.yaml StorageClass",
        "aqueduct-spoke invalid/negative-quota.yaml: refused",
        "aqueduct-spoke default-values.yaml: the holder updates OnDelete with no checksum, the spoke rolls, and their sockets agree",
        "aqueduct-spoke memory-only-values.yaml: the holder updates OnDelete with no checksum, the spoke rolls, and their sockets agree",
        "aqueduct-spoke invalid/unknown-medium.yaml: refused",
        "aqueduct-hub loadbalancer-values.yaml: aqueduct-hub/templates/statefulset.yaml StatefulSet",
        "aqueduct-hub invalid/negative-volume.yaml: refused",
        "aqueduct-spoke invalid/limit-without-unit.yaml: refused",
        "aqueduct-hub invalid/relay-memory-without-unit.yaml: refused",
        "aqueduct-spoke default-values.yaml: probes present, on exposed ports and served paths",
        "aqueduct-spoke memory-only-values.yaml: probes present, on exposed ports and served paths",
        "aqueduct-spoke region-values.yaml: probes present, on exposed ports and served paths",
        "aqueduct-spoke no-csi-values.yaml: probes present, on exposed ports and served paths",
        "aqueduct-hub default-values.yaml: probes present, on exposed ports and served paths",
        "aqueduct-hub loadbalancer-values.yaml: probes present, on exposed ports and served paths",
    ] {
        assert!(text.lines().any(|l| l.starts_with("ok ") && l.contains(needle)), "no `ok {needle}` in\n{text}");
    }

    // The spoke configs the chart renders load in the spoke, with what the DaemonSet's
    // downward API gives in place of the node's name and address.
    for (values, memory_only, peer_port) in
        [("default", false, 7444), ("memory-only", true, 7444), ("region", false, 17444)]
    {
        let manifest = rendered(out.path(), "aqueduct-spoke", values, "configmap.yaml");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spoke.toml");
        std::fs::write(&path, with_trust(dir.path(), config_map_file(&manifest, "spoke.toml"))).unwrap();
        let overrides =
            Overrides { node: Some("gpu-node-1".into()), advertise: Some(format!("10.0.3.17:{peer_port}")), hub: None };
        let config = SpokeConfig::load_with(&path, &overrides).unwrap_or_else(|e| panic!("{values}: {e}\n{manifest}"));
        assert_eq!(config.node, "gpu-node-1");
        // `hub.addresses` lists more hubs after `hub.address`, in order.
        let hubs = if values == "region" { 2 } else { 1 };
        assert_eq!(config.hub.0.len(), hubs, "{values}: {}", config.hub);
        assert_eq!(config.cache.memory_only, memory_only, "{values}");
        assert_eq!(config.peer.as_ref().map(|p| p.listen.port()), Some(peer_port), "{values}");
        assert!(config.csi.is_some() && config.operator.as_ref().is_some_and(|o| o.enabled), "{values}");
        // Each spoke enrols with the token of the enrolment Secret: no key in any Secret.
        let token = config.enrol.as_ref().map(|e| e.token_file.display().to_string());
        assert_eq!(token.as_deref(), Some("/etc/aqueduct/enrol/token"), "{values}");
        assert!(config.tls.cert.is_none() && config.tls.key.is_none(), "{values}: a key from a Secret");
        // Without the downward API's values the config is refused, naming what is missing.
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("AQUEDUCT_NODE"), "{values}: {err}");

        let daemonset = rendered(out.path(), "aqueduct-spoke", values, "daemonset.yaml");
        for env in ["AQUEDUCT_NODE", "AQUEDUCT_PEER_ADVERTISE", "AQUEDUCT_LOG_FORMAT", "fieldPath: spec.nodeName"] {
            assert!(daemonset.contains(env), "{values}: no {env} in the DaemonSet");
        }
        assert_eq!(daemonset.contains("medium: Memory"), memory_only, "{values}: data dir in memory");
        let secret = if values == "region" { "aqueduct-us-east-2-enrol" } else { "aqueduct-enrol-eu-west" };
        assert!(daemonset.contains(&format!("secretName: {secret}")), "{values}: no enrolment Secret\n{daemonset}");
        // The data dir itself (the csi/ state beside it, publications and mount points, holds no
        // dataset byte and is a hostPath either way).
        assert_eq!(daemonset.contains("hostPath: {path: /var/lib/aqueduct-spoke, type"), !memory_only, "{values}");
        // The holder DaemonSet serves the mounts; the spoke only connects to it, where it is.
        assert_eq!(config.mounts.holder, aqueduct_spoke::holder::HolderMode::External, "{values}");
        let holder = rendered(out.path(), "aqueduct-spoke", values, "holder-daemonset.yaml");
        let socket = config.mounts.holder_socket.as_ref().unwrap().display().to_string();
        assert!(holder.contains(&format!("--socket={socket}")), "{values}: the holder is not at {socket}\n{holder}");
        assert!(holder.contains("type: OnDelete") && !holder.contains("checksum/"), "{values}: {holder}");
        assert_eq!(holder.contains("--store=/var/lib/aqueduct-spoke"), !memory_only, "{values}: {holder}");
        // The CSI livenessprobe sidecar, on the plugin's socket; the probes on the spoke.
        assert!(daemonset.contains("image: registry.k8s.io/sig-storage/livenessprobe:"), "{values}: {daemonset}");
        assert!(daemonset.contains("- --csi-address=/csi/csi.sock"), "{values}");
        for probe in ["startupProbe:", "readinessProbe:", "livenessProbe:", "path: /readyz", "port: healthz"] {
            assert!(daemonset.contains(probe), "{values}: no {probe} in the DaemonSet");
        }
    }
    let region = rendered(out.path(), "aqueduct-spoke", "region", "configmap.yaml");
    assert!(region.contains("disk = \"1.5TiB\"") && region.contains("namespace = \"inference\""), "{region}");
    // [limits] as the values say, the rest the defaults.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spoke.toml"), with_trust(dir.path(), config_map_file(&region, "spoke.toml")))
        .unwrap();
    let overrides = Overrides { node: Some("n".into()), advertise: Some("10.0.3.17:17444".into()), hub: None };
    let limits = SpokeConfig::load_with(&dir.path().join("spoke.toml"), &overrides).unwrap().limits;
    assert_eq!(
        (limits.max_connections, limits.handshake_timeout.as_secs(), limits.fetch_streams_per_peer),
        (2048, 15, 32)
    );
    assert_eq!(limits.max_handshakes, aqueduct_spoke::limits::LimitsConfig::default().max_handshakes);
    // The PodMonitor is a custom resource, which kubernetes-validate cannot check: at least
    // the port it scrapes is the one the pods name, and the metrics Service serves.
    let monitor = rendered(out.path(), "aqueduct-spoke", "region", "podmonitor.yaml");
    let daemonset = rendered(out.path(), "aqueduct-spoke", "region", "daemonset.yaml");
    let service = rendered(out.path(), "aqueduct-spoke", "region", "service-metrics.yaml");
    assert!(monitor.contains("- port: metrics") && monitor.contains("release: prometheus"), "{monitor}");
    assert!(daemonset.contains("{name: metrics, containerPort: 19464"), "{daemonset}");
    assert!(service.contains("port: 19464") && service.contains("targetPort: metrics"), "{service}");

    for values in ["default", "loadbalancer"] {
        let manifest = rendered(out.path(), "aqueduct-hub", values, "configmap.yaml");
        let config = HubConfig::parse(&config_map_file(&manifest, "hub.toml"), Path::new("hub.toml"))
            .unwrap_or_else(|e| panic!("{values}: {e}\n{manifest}"));
        assert_eq!(config.data_dir, Path::new("/var/lib/aqueduct-hub"));
        let (connections, relay_memory) = if values == "loadbalancer" { (8192, 256 << 20) } else { (4096, 128 << 20) };
        assert_eq!(
            (config.limits.max_connections, config.limits.relay_memory_per_region.0),
            (connections, relay_memory)
        );
    }
    // Without the CSI plugin: no livenessprobe sidecar, and the liveness probe asks the spoke.
    let daemonset = rendered(out.path(), "aqueduct-spoke", "no-csi", "daemonset.yaml");
    assert!(!daemonset.contains("livenessprobe") && !daemonset.contains("port: healthz"), "{daemonset}");
    assert!(daemonset.contains("httpGet: {path: /healthz, port: metrics}"), "{daemonset}");
    let statefulset = rendered(out.path(), "aqueduct-hub", "loadbalancer", "statefulset.yaml");
    // With metrics unpublished, the endpoint still serves the probes.
    for probe in
        ["startupProbe:", "httpGet: {path: /readyz, port: metrics}", "httpGet: {path: /healthz, port: metrics}"]
    {
        assert!(statefulset.contains(probe), "no {probe} in\n{statefulset}");
    }
    assert!(statefulset.contains("--host aqueduct-hub.dc1.example.com --host 10.20.0.15"), "{statefulset}");
}

/// The checker is not a rubber stamp: a chart with an invalid object and a "bad" values file
/// that the schema accepts both fail it.
#[test]
fn chart_checker_fails_on_a_broken_chart() {
    let root = repo();
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("spoke");
    let status = Command::new("cp").arg("-r").arg(root.join("deploy/spoke")).arg(&chart).status().unwrap();
    assert!(status.success());
    std::fs::write(
        chart.join("templates/broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken}\nspec:\n  portz: [{port: 1}]\n",
    )
    .unwrap();
    std::fs::write(chart.join("ci/invalid/not-bad-at-all.yaml"), "# expect: /cache/medium\ncache: {medium: disk}\n")
        .unwrap();
    // Probes that ask a path nobody serves, and a livenessprobe on another port than the one
    // the spoke's liveness probe asks.
    let daemonset = chart.join("templates/daemonset.yaml");
    let text = std::fs::read_to_string(&daemonset).unwrap();
    let broken = text
        .replace("httpGet: {path: /readyz, port: metrics}", "httpGet: {path: /ready, port: metrics}")
        .replace("--health-port={{ .Values.csi.livenessProbe.port }}", "--health-port=9809");
    assert_ne!(broken, text);
    std::fs::write(&daemonset, broken).unwrap();
    let Some((ok, text)) = check_charts(&[chart], None) else { return };
    assert!(!ok, "a broken chart passed:\n{text}");
    assert!(text.lines().any(|l| l.starts_with("FAIL") && l.contains("broken.yaml Service/broken")), "{text}");
    assert!(text.contains("portz"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("FAIL") && l.contains("not-bad-at-all.yaml: bad values were accepted")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("FAIL") && l.contains("default-values.yaml: probes")), "{text}");
    for problem in [
        "readinessProbe does not ask /readyz",
        "readinessProbe path /ready is not served by the binary",
        "the spoke's liveness probe does not ask the livenessprobe sidecar (port 9809)",
    ] {
        assert!(text.contains(problem), "no `{problem}` in\n{text}");
    }
}

/// `systemd-analyze verify` on the unit, as installed except for ExecStart, which points at
/// the built binary (verify checks that it exists and is executable). verify reports bad
/// settings on stderr and still exits 0, so any output is a failure.
#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("deploy/hub/aqueduct-hub.service")).unwrap();
    // The unit agrees with the example config and the install script.
    let example = std::fs::read_to_string(repo().join("deploy/hub/hub.example.toml")).unwrap();
    assert!(
        example.contains("data_dir = \"/var/lib/aqueduct-hub\"")
            && unit.contains("ReadWritePaths=/var/lib/aqueduct-hub\n")
    );
    assert!(unit.contains("ExecStart=/usr/local/bin/aqueduct-hub serve --config /etc/aqueduct/hub.toml\n"));
    for hardening in ["User=aqueduct\n", "ProtectSystem=strict\n", "NoNewPrivileges=true\n", "CapabilityBoundingSet=\n"]
    {
        assert!(unit.contains(hardening), "the unit lost {hardening}");
    }
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        return unavailable("systemd-analyze is missing; install it: apt-get install -y systemd");
    };
    println!("{}", String::from_utf8_lossy(&version.stdout).lines().next().unwrap_or_default());

    let hub = aqueduct_e2e::bin("aqueduct-hub");
    let dir = tempfile::tempdir().unwrap();
    let verify = |text: &str| {
        let path = dir.path().join("aqueduct-hub.service");
        std::fs::write(&path, text).unwrap();
        let output = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success() && text.trim().is_empty(), text)
    };
    let here = unit.replace("/usr/local/bin/aqueduct-hub", &hub.display().to_string());
    let (ok, text) = verify(&here);
    assert!(ok, "systemd-analyze verify:\n{text}");
    // ... and it does catch a bad setting.
    let (ok, text) = verify(&here.replace("ProtectSystem=strict", "ProtectSystem=stric"));
    assert!(!ok && text.contains("stric"), "a bad setting passed verify:\n{text}");

    // The sandbox: systemd's exposure score (0 safest .. 10) stays at 2.0 or below.
    let path = dir.path().join("aqueduct-hub.service");
    std::fs::write(&path, &here).unwrap();
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the unit's sandbox is weaker than exposure 2.0:\n{text}");
    println!("{}", text.lines().last().unwrap_or_default());
}

/// `install.sh --root` in a throwaway root (holding only etc/passwd and etc/group) leaves the
/// user, the directories with their owners and modes, the config, the hub's certificates
/// from `aqueduct-hub init` and the enabled unit; run again, it keeps the hub it made.
#[test]
fn install_script_in_a_throwaway_root() {
    if !is_root() {
        return unavailable("install.sh creates a user and chowns its data: run the tests as root");
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir(r.join("etc")).unwrap();
    std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    std::fs::write(r.join("etc/group"), "root:x:0:\n").unwrap();
    let hub = aqueduct_e2e::bin("aqueduct-hub");
    let install = || {
        let output = Command::new("bash")
            .arg(repo().join("deploy/hub/install.sh"))
            .arg("--root")
            .arg(r)
            .arg("--bin-dir")
            .arg(hub.parent().unwrap())
            .args(["--listen", "0.0.0.0:7443", "--host", "hub.test.example"])
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "install.sh failed:\n{text}");
        text
    };
    println!("{}", install());

    // The user: a system account without a login shell, at home in the data directory.
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    let entry = passwd.lines().find(|l| l.starts_with("aqueduct:")).unwrap_or_else(|| panic!("no user:\n{passwd}"));
    let fields: Vec<&str> = entry.split(':').collect();
    assert_eq!((fields[5], fields[6]), ("/var/lib/aqueduct-hub", "/usr/sbin/nologin"), "{entry}");
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "not a system uid: {entry}");
    let group = std::fs::read_to_string(r.join("etc/group")).unwrap();
    assert!(
        group.lines().any(|l| l.starts_with("aqueduct:") && l.split(':').nth(2) == Some(fields[3])),
        "no group aqueduct with gid {}:\n{group}",
        fields[3]
    );

    // The data directory and what init made in it, the hub's own; keys readable by it only.
    let data = r.join("var/lib/aqueduct-hub");
    let mode = |p: &Path| std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).mode() & 0o777;
    assert_eq!(mode(&data), 0o750);
    for (file, want) in [
        ("pki/ca.pem", None),
        ("pki/issuer.key", Some(0o600)),
        ("keep-offline/root-ca.key", Some(0o600)),
        ("pki/hub.pem", None),
        ("pki/hub.key", Some(0o600)),
        ("admin/ca.pem", None),
        ("admin/admin.pem", None),
        ("admin/admin.key", Some(0o600)),
        ("admin/aq.toml", Some(0o600)),
        ("hub.db", None),
    ] {
        let path = data.join(file);
        assert_eq!(std::fs::metadata(&path).unwrap_or_else(|e| panic!("{file}: {e}")).uid(), uid, "{file}'s owner");
        if let Some(want) = want {
            assert_eq!(mode(&path), want, "{file}'s mode");
        }
    }
    // The hub's certificate names the host it was installed for.
    let pem = std::fs::read(data.join("pki/hub.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let names = format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names);
    assert!(names.contains("hub.test.example"), "{names}");

    // The config: the documented example, with paths that resolve inside the root.
    let config_path = r.join("etc/aqueduct/hub.toml");
    assert_eq!(mode(&config_path), 0o640);
    let config = HubConfig::load(&config_path).unwrap();
    assert_eq!(
        (config.listen.to_string().as_str(), config.data_dir.as_path()),
        ("0.0.0.0:7443", Path::new("/var/lib/aqueduct-hub"))
    );
    let issuer = config.tls.issuer.as_ref().expect("the example names the issuing CA");
    for tls in [&config.tls.ca, &config.tls.ca_key, issuer, &config.tls.cert, &config.tls.key] {
        assert!(data.join(tls).is_file(), "{} is missing", tls.display());
    }
    let text = std::fs::read_to_string(&config_path).unwrap();
    assert!(
        text.contains("# The issuing CA (an intermediate the root signed)"),
        "the installed config lost its comments:\n{text}"
    );
    assert_eq!(std::fs::read_link(data.join("hub.toml")).unwrap(), Path::new("/etc/aqueduct/hub.toml"));

    // The unit, enabled; the binaries.
    let unit = r.join("etc/systemd/system/aqueduct-hub.service");
    assert_eq!(std::fs::read(&unit).unwrap(), std::fs::read(repo().join("deploy/hub/aqueduct-hub.service")).unwrap());
    let wants = r.join("etc/systemd/system/multi-user.target.wants/aqueduct-hub.service");
    assert_eq!(std::fs::read_link(&wants).unwrap(), Path::new("/etc/systemd/system/aqueduct-hub.service"));
    assert!(mode(&r.join("usr/local/bin/aqueduct-hub")) & 0o111 != 0);

    // Again: the CA and the config are kept, not remade.
    let ca = std::fs::read(data.join("pki/ca.pem")).unwrap();
    let again = install();
    assert!(again.contains("holds a hub already"), "{again}");
    assert_eq!(std::fs::read(data.join("pki/ca.pem")).unwrap(), ca, "a second install replaced the CA");
    assert_eq!(passwd.lines().count(), std::fs::read_to_string(r.join("etc/passwd")).unwrap().lines().count());
}
