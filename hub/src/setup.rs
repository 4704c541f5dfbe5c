//! What `aqueduct-hub init` writes into a data directory, so that a crash at any point of it
//! is mended by running it again.
//!
//! Every file is written atomically and fsynced ([`aqueduct_core::durable`]), in this order:
//! the root CA's key (to `keep-offline/root-ca.key`, or where `--root-key-out` says: the hub
//! never reads it), the root's certificate (`pki/ca.pem`, the trust anchor), the issuing CA's
//! key and certificate (`pki/issuer.*`, an intermediate the root signed); the hub's key and
//! certificate; the admin bundle (the root's certificate, the admin key and certificate,
//! `aq.toml`); the signing key (kept if it is there, like the root's) and its public key; the
//! database; and `hub.toml` last, as the mark of a finished init. A directory that holds
//! `hub.toml` is a hub: init refuses it. Without it, init completes what an interrupted run
//! left: a root key already written is kept (never replaced: a certificate missing for it is
//! made anew for the same key), an issuer already written is kept (the root's key is then not
//! needed), the hub's and the admin's certificates are issued again from it, the database is
//! opened as it is, and the temporary files of a write cut short are
//! removed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aqueduct_core::durable;

use crate::config::{HubConfig, LimitsConfig, SigningConfig, SnapshotConfig, TlsConfig};
use crate::pki::{self, Authority};
use crate::store::TrustStore;
use crate::store::meta::SqlStore;
use crate::store::trust::AdminRecord;
use crate::{HubError, InitOutcome, io_err};
use aqueduct_core::identity::Identity;

/// When the first admin's certificate expires (as `Authority::issue` makes it): 2100-01-01.
const FIRST_ADMIN_EXPIRES_UNIX_MS: i64 = 4_102_444_800_000;

/// The common name of every hub's root CA.
const CA_NAME: &str = "Aqueduct CA";
/// The common name of the hub's issuing CA.
const ISSUER_NAME: &str = "Aqueduct issuing CA";
/// Where init writes the root CA's key unless told elsewhere (relative to the data dir): to be
/// moved off the machine, the hub never reads it.
pub const ROOT_KEY: &str = "keep-offline/root-ca.key";

/// The issuing CA, made by the root if it is not on disk yet: the root's key (kept, never
/// replaced: a certificate missing for it is made anew for the same key), the root's
/// certificate, the issuer's key and certificate. Once the issuer is on disk the root's key is
/// not needed, and may already be gone.
fn authority(
    data_dir: &Path,
    tls: &TlsConfig,
    root_key: &Path,
    wrote: &mut dyn FnMut(&Path) -> Result<(), HubError>,
) -> Result<Authority, HubError> {
    let ca_cert = data_dir.join(&tls.ca);
    let issuer_cert = data_dir.join(tls.issuer.as_ref().expect("init writes an issuer"));
    let issuer_key = data_dir.join(&tls.ca_key);
    if issuer_cert.exists() && issuer_key.exists() {
        return Ok(Authority::load_issuer(&ca_cert, &issuer_cert, &issuer_key)?);
    }
    let root = if !root_key.exists() {
        if ca_cert.exists() {
            return Err(HubError::RootKeyMissing { cert: ca_cert, key: root_key.to_owned() });
        }
        let root = Authority::root(CA_NAME)?;
        root.save_key(root_key)?;
        wrote(root_key)?;
        root.save_cert(&ca_cert)?;
        wrote(&ca_cert)?;
        root
    } else if !ca_cert.exists() {
        let root = Authority::root_with_key(CA_NAME, Authority::load_key(root_key)?)?;
        root.save_cert(&ca_cert)?;
        wrote(&ca_cert)?;
        root
    } else {
        Authority::load(&ca_cert, root_key)?
    };
    let issuer = root.intermediate(ISSUER_NAME, pki::ISSUER_DAYS)?;
    issuer.save_key(&issuer_key)?;
    wrote(&issuer_key)?;
    issuer.save_cert(&issuer_cert)?;
    wrote(&issuer_cert)?;
    Ok(issuer)
}

/// Creates (or completes) a hub's data directory; `wrote` is called after each file is on
/// disk, with its path (a test stops there, as a crash would).
pub(crate) fn init_with(
    data_dir: &Path,
    listen: SocketAddr,
    hosts: &[String],
    admin_name: &str,
    root_key_out: Option<&Path>,
    wrote: &mut dyn FnMut(&Path) -> Result<(), HubError>,
) -> Result<InitOutcome, HubError> {
    aqueduct_proto::validate_name("admin", admin_name).map_err(|e| HubError::BadAdminName(e.to_string()))?;
    // Any entry of that name, a dangling link included (an install links it to /etc).
    if std::fs::symlink_metadata(data_dir.join("hub.toml")).is_ok() {
        return Err(HubError::AlreadyInitialised { path: data_dir.to_owned(), what: "hub.toml".into() });
    }
    let (pki_dir, admin_dir) = (data_dir.join("pki"), data_dir.join("admin"));
    let signing_dir = data_dir.join(SigningConfig::default().key).parent().map(Path::to_path_buf).unwrap_or_default();
    for dir in [data_dir, &pki_dir, &admin_dir, &signing_dir] {
        durable::create_dir_all(dir).map_err(io_err("create", dir))?;
        durable::remove_temporaries(dir).map_err(io_err("clean", dir))?;
    }
    let data_dir = data_dir.canonicalize().map_err(io_err("resolve", data_dir))?;
    let admin_dir = data_dir.join("admin");
    let tls = TlsConfig::default();

    let root_key = match root_key_out {
        Some(path) if path.is_relative() => data_dir.join(path),
        Some(path) => path.to_owned(),
        None => data_dir.join(ROOT_KEY),
    };
    if let Some(dir) = root_key.parent() {
        durable::create_dir_all(dir).map_err(io_err("create", dir))?;
        durable::remove_temporaries(dir).map_err(io_err("clean", dir))?;
    }
    let ca = authority(&data_dir, &tls, &root_key, wrote)?;
    let root_key_path = root_key.exists().then_some(root_key);
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    if !listen.ip().is_unspecified() && !names.contains(&listen.ip().to_string()) {
        names.push(listen.ip().to_string());
    }
    names.extend(hosts.iter().filter(|h| !names.contains(h)).cloned().collect::<Vec<_>>());
    let hub = ca.issue(&Identity::Hub, &names)?;
    for (path, text, secret) in
        [(data_dir.join(&tls.key), &hub.key_pem, true), (data_dir.join(&tls.cert), &hub.cert_pem, false)]
    {
        write(&path, text, secret)?;
        wrote(&path)?;
    }

    let admin = ca.issue(&Identity::Admin(admin_name.to_string()), &[])?;
    let host = if listen.ip().is_unspecified() { "127.0.0.1".to_string() } else { listen.ip().to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let admin_config = admin_dir.join("aq.toml");
    let aq = format!(
        "# aq's connection to this hub (written by `aqueduct-hub init`). Paths are relative to this file.\n\
         hub = \"https://{host}:{port}\"\n\
         # Several hubs serving one state: hub = [\"https://a:7443\", \"https://b:7443\"], tried in order.\n\
         ca = \"ca.pem\"\ncert = \"admin.pem\"\nkey = \"admin.key\"\n",
        port = listen.port()
    );
    for (path, text, secret) in [
        (admin_dir.join("ca.pem"), ca.ca_pem(), false),
        (admin_dir.join("admin.key"), admin.key_pem.as_str(), true),
        (admin_dir.join("admin.pem"), admin.cert_pem.as_str(), false),
        (admin_config.clone(), aq.as_str(), true),
    ] {
        write(&path, text, secret)?;
        wrote(&path)?;
    }

    // The signing key, apart from the TLS keys (kept if an interrupted init wrote it), and its
    // public key, which the spokes trust.
    let signing_key = data_dir.join(SigningConfig::default().key);
    let signer = crate::signing::Signer::open_or_create(&signing_key)?;
    wrote(&signing_key)?;
    let public = signing_key.with_extension("pub");
    write(&public, &signer.trust_file(), false)?;
    wrote(&public)?;

    let db = data_dir.join("hub.db");
    let store = SqlStore::open(&db)?;
    let created_unix_ms = crate::snapshot::now_unix_ms();
    store.put_admin(&AdminRecord {
        name: admin_name.to_string(),
        created_unix_ms,
        expires_unix_ms: FIRST_ADMIN_EXPIRES_UNIX_MS,
        created_by: "init".into(),
    })?;
    drop(store);
    wrote(&db)?;

    let config_path = data_dir.join("hub.toml");
    let config = HubConfig {
        listen,
        data_dir: data_dir.clone(),
        tls,
        snapshot: SnapshotConfig::default(),
        metrics: None,
        limits: LimitsConfig::default(),
        enrol: Default::default(),
        signing: SigningConfig::default(),
        triggers: Default::default(),
        database: Default::default(),
    };
    let text =
        format!("# Aqueduct hub configuration; see deploy/hub/hub.example.toml for every key.\n{}", config.to_toml());
    durable::write_file(&config_path, text.as_bytes(), durable::PUBLIC).map_err(io_err("write", &config_path))?;
    wrote(&config_path)?;
    Ok(InitOutcome { config_path, admin_config_path: admin_config, root_key_path })
}

/// What `aqueduct-hub issuer rotate` made.
#[derive(Debug)]
pub struct RotateOutcome {
    /// The new issuer's certificate and the hub's new certificate (the config names them).
    pub issuer: PathBuf,
    pub hub_cert: PathBuf,
    /// The files the config named before, left in place: remove them once the hub restarted.
    pub previous: Vec<PathBuf>,
}

/// Makes a new issuing CA with the root's key (brought back for this), valid for `days`, and
/// a new certificate for the hub from it (for the names the old one carried). Every file is
/// new (`pki/issuer-STAMP.*`, `pki/hub-STAMP.*`); the config, rewritten last in one atomic
/// write, is the switch: a crash before it leaves the hub as it was. Certificates the old
/// issuer signed stay valid (they carry it, and the root vouches for it) until they expire.
/// The hub takes the new issuer when it restarts.
pub fn rotate_issuer(config_path: &Path, root_key: &Path, days: u32) -> Result<RotateOutcome, HubError> {
    let mut config = HubConfig::load(config_path)?;
    let root = Authority::load(&config.resolve(&config.tls.ca), root_key)?;
    let issuer = root.intermediate(ISSUER_NAME, days)?;
    let old_cert = config.resolve(&config.tls.cert);
    let old_pem = std::fs::read_to_string(&old_cert)
        .map_err(|source| HubError::Pki(pki::PkiError::Read { path: old_cert.clone(), source }))?;
    let hub = issuer.issue(&Identity::Hub, &pki::server_names(&old_pem))?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let name = |what: &str, ext: &str| PathBuf::from(format!("pki/{what}-{stamp}.{ext}"));
    let mut tls = config.tls.clone();
    (tls.ca_key, tls.issuer, tls.key, tls.cert) =
        (name("issuer", "key"), Some(name("issuer", "pem")), name("hub", "key"), name("hub", "pem"));
    issuer.save_key(&config.resolve(&tls.ca_key))?;
    issuer.save_cert(&config.resolve(tls.issuer.as_ref().expect("set above")))?;
    write(&config.resolve(&tls.key), &hub.key_pem, true)?;
    write(&config.resolve(&tls.cert), &hub.cert_pem, false)?;
    let old = std::mem::replace(&mut config.tls, tls);
    let previous = [Some(old.ca_key), old.issuer, Some(old.key), Some(old.cert)]
        .into_iter()
        .flatten()
        .map(|p| config.resolve(&p))
        .collect();
    let text = format!(
        "# Aqueduct hub configuration; see deploy/hub/hub.example.toml for every key. Issuer rotated at {stamp}.\n{}",
        config.to_toml()
    );
    durable::write_file(config_path, text.as_bytes(), durable::PUBLIC).map_err(io_err("write", config_path))?;
    Ok(RotateOutcome {
        issuer: config.resolve(config.tls.issuer.as_ref().expect("set above")),
        hub_cert: config.resolve(&config.tls.cert),
        previous,
    })
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), HubError> {
    if secret {
        pki::write_secret(path, text)?
    } else {
        pki::write_public(path, text)?
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use aqueduct_proto::hub::v1 as pb;
    use aqueduct_proto::hub::v1::admin_client::AdminClient;
    use tokio_util::sync::CancellationToken;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

    use super::*;

    fn crash(path: &Path) -> HubError {
        HubError::Io { action: "crash after writing", path: path.to_owned(), source: std::io::Error::other("injected") }
    }

    /// Every file of the directory but the database, by relative path.
    fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for sub in ["", "keep-offline", "pki", "admin", "signing"] {
            if !dir.join(sub).exists() {
                continue;
            }
            for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_file() && entry.file_name() != "hub.db" {
                    out.push((Path::new(sub).join(entry.file_name()), std::fs::read(entry.path()).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    /// The hub in `dir` serves, and the admin bundle's certificate is accepted by it (both
    /// verify against the CA on disk); a node's certificate issued from that CA connects too.
    async fn serves(dir: &Path) {
        let config = HubConfig::load(&dir.join("hub.toml")).unwrap();
        let ca = crate::load_authority(&config).unwrap();
        assert_eq!(std::fs::read(dir.join("admin/ca.pem")).unwrap(), std::fs::read(dir.join("pki/ca.pem")).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let hub = tokio::spawn(crate::serve(config, listener, shutdown.clone()));
        let read = |f: &str| std::fs::read_to_string(dir.join("admin").join(f)).unwrap();
        let connect = |ca: String, cert: String, key: String| async move {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(TlsIdentity::from_pem(cert, key));
            Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap().connect().await
        };
        let mut admin = AdminClient::new(connect(read("ca.pem"), read("admin.pem"), read("admin.key")).await.unwrap());
        admin.list_datasets(pb::ListDatasetsRequest {}).await.unwrap();
        let ca_pem = admin
            .add_region(pb::AddRegionRequest {
                region: Some(pb::Region { name: "eu".into(), rate_bytes_per_sec: 1 << 20, ..Default::default() }),
            })
            .await
            .unwrap()
            .into_inner()
            .ca_pem;
        // A node's certificate, issued from the CA on disk (as enrolment does).
        let node = ca.issue_node("eu", "eu-1", std::time::Duration::from_secs(60)).unwrap();
        let mut spoke = aqueduct_proto::hub::v1::spoke_client::SpokeClient::new(
            connect(ca_pem, node.cert_pem, node.key_pem).await.unwrap(),
        );
        spoke.get_manifest(pb::GetManifestRequest { dataset: "none".into(), version: 1 }).await.unwrap_err();
        shutdown.cancel();
        hub.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_init_cut_short_after_any_write_is_completed_by_running_it_again() {
        let tmp = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.0.0.1:7443".parse().unwrap();
        let mut order = Vec::new();
        let whole = tmp.path().join("whole");
        init_with(&whole, listen, &[], "admin", None, &mut |p| {
            order.push(p.strip_prefix(whole.canonicalize().unwrap()).unwrap().to_owned());
            Ok(())
        })
        .unwrap();
        let order: Vec<String> = order.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            order,
            [
                "keep-offline/root-ca.key",
                "pki/ca.pem",
                "pki/issuer.key",
                "pki/issuer.pem",
                "pki/hub.key",
                "pki/hub.pem",
                "admin/ca.pem",
                "admin/admin.key",
                "admin/admin.pem",
                "admin/aq.toml",
                "signing/hub.key",
                "signing/hub.pub",
                "hub.db",
                "hub.toml"
            ],
            "hub.toml must be written last"
        );

        for (i, step) in order.iter().enumerate() {
            let dir = tmp.path().join(format!("cut-{i}"));
            let err = init_with(&dir, listen, &[], "admin", None, &mut |p| {
                if p.ends_with(step) { Err(crash(p)) } else { Ok(()) }
            })
            .unwrap_err();
            assert!(err.to_string().contains("injected"), "{step}: {err}");
            let before = files(&dir);
            // A write cut short in the middle leaves a temporary file (a key's, say) behind.
            std::fs::write(dir.join("pki/.hub.key.999.0.tmp"), "half a key").unwrap();
            std::fs::write(dir.join("admin/.aq.toml.999.1.tmp"), "half").unwrap();

            let again = init_with(&dir, listen, &[], "admin", None, &mut |_| Ok(()));
            if step == "hub.toml" {
                // The crash came after the last write: the hub is whole, and stays as it was.
                let err = again.unwrap_err();
                assert!(err.to_string().contains("already holds a hub (hub.toml exists)"), "{err}");
                std::fs::remove_file(dir.join("pki/.hub.key.999.0.tmp")).unwrap();
                std::fs::remove_file(dir.join("admin/.aq.toml.999.1.tmp")).unwrap();
                assert_eq!(files(&dir), before);
            } else {
                again.unwrap_or_else(|e| panic!("after a crash following {step}: {e}"));
                let after = files(&dir);
                // The issuer is kept once whole (its key and certificate both written).
                let issuer_whole = before.iter().any(|(p, _)| p == Path::new("pki/issuer.pem"));
                let mut kept = vec!["keep-offline/root-ca.key", "pki/ca.pem", "signing/hub.key"];
                if issuer_whole {
                    kept.extend(["pki/issuer.key", "pki/issuer.pem"]);
                }
                for kept in kept {
                    let was = before.iter().find(|(p, _)| p == Path::new(kept));
                    let now = after.iter().find(|(p, _)| p == Path::new(kept));
                    if let Some(was) = was {
                        assert_eq!(Some(was), now, "after a crash following {step}, {kept} was replaced");
                    }
                }
                let names: Vec<String> = after.iter().map(|(p, _)| p.display().to_string()).collect();
                assert!(!names.iter().any(|n| n.ends_with(".tmp")), "temporary files left: {names:?}");
            }
            use std::os::unix::fs::PermissionsExt;
            for key in ["keep-offline/root-ca.key", "pki/issuer.key", "pki/hub.key", "admin/admin.key", "admin/aq.toml"]
            {
                let mode = std::fs::metadata(dir.join(key)).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{key} is readable by others");
            }
            serves(&dir).await;
            println!("cut after {step}: init again made a working hub");
        }
    }

    #[test]
    fn a_root_key_without_its_certificate_keeps_the_key_and_mismatched_pairs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.0.0.1:7443".parse().unwrap();
        let dir = tmp.path();
        let root_key = dir.join(ROOT_KEY);
        let stop_after_key = &mut |p: &Path| if p.ends_with(ROOT_KEY) { Err(crash(p)) } else { Ok(()) };
        init_with(dir, listen, &[], "admin", None, stop_after_key).unwrap_err();
        let key = std::fs::read(&root_key).unwrap();
        assert!(!dir.join("pki/ca.pem").exists());
        init_with(dir, listen, &[], "admin", None, &mut |_| Ok(())).unwrap();
        assert_eq!(std::fs::read(&root_key).unwrap(), key);
        Authority::load(&dir.join("pki/ca.pem"), &root_key).unwrap();
        Authority::load_issuer(&dir.join("pki/ca.pem"), &dir.join("pki/issuer.pem"), &dir.join("pki/issuer.key"))
            .unwrap();

        // A root certificate of another key: init says so and changes nothing.
        let other = tmp.path().join("other");
        init_with(&other, listen, &[], "admin", None, &mut |_| Ok(())).unwrap();
        std::fs::remove_file(dir.join("hub.toml")).unwrap();
        let original_root = std::fs::read(dir.join("pki/ca.pem")).unwrap();
        std::fs::copy(other.join("pki/ca.pem"), dir.join("pki/ca.pem")).unwrap();
        // With its issuer on disk, the issuer is checked against the root...
        let before = files(dir);
        let err = init_with(dir, listen, &[], "admin", None, &mut |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("was not signed by the root CA"), "{err}");
        assert_eq!(files(dir), before);
        // ... and without it, the root's key against its certificate.
        std::fs::remove_file(dir.join("pki/issuer.pem")).unwrap();
        let before = files(dir);
        let err = init_with(dir, listen, &[], "admin", None, &mut |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("was not made with the CA key"), "{err}");
        assert_eq!(files(dir), before);

        // The root's key gone (moved offline) before the issuer was made: init says what it needs.
        std::fs::write(dir.join("pki/ca.pem"), original_root).unwrap();
        std::fs::remove_file(&root_key).unwrap();
        let err = init_with(dir, listen, &[], "admin", None, &mut |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("init needs the root CA's key to finish"), "{err}");
    }

    /// The root's key written elsewhere and then gone: the hub starts and issues with its
    /// intermediate alone, and what it issues verifies against the root.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hub_without_the_root_key_issues_with_its_intermediate() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, offline) = (tmp.path().join("hub"), tmp.path().join("usb/root.key"));
        let out =
            init_with(&dir, "127.0.0.1:7443".parse().unwrap(), &[], "admin", Some(&offline), &mut |_| Ok(())).unwrap();
        assert_eq!(out.root_key_path.as_deref(), Some(offline.as_path()));
        assert!(!dir.join("keep-offline").exists(), "the root key went where it was told, and only there");
        std::fs::remove_file(&offline).unwrap();
        let admin = std::fs::read_to_string(dir.join("admin/admin.pem")).unwrap();
        assert_eq!(
            admin.matches("BEGIN CERTIFICATE").count(),
            2,
            "the admin's chain: its certificate, then the issuer's"
        );
        assert!(admin.ends_with(&std::fs::read_to_string(dir.join("pki/issuer.pem")).unwrap()));
        serves(&dir).await;
    }

    /// A hub made before issuing CAs (its CA issues itself, `pki/ca.key`) still loads with its
    /// config; with a config that expects an issuer, the error says what to do.
    #[test]
    fn a_hub_of_one_level_still_issues_and_a_config_expecting_an_issuer_says_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(dir.join("pki")).unwrap();
        let ca = Authority::create(CA_NAME).unwrap();
        ca.save(&dir.join("pki/ca.pem"), &dir.join("pki/ca.key")).unwrap();
        let mut config = HubConfig {
            listen: "127.0.0.1:7443".parse().unwrap(),
            data_dir: dir.clone(),
            tls: TlsConfig { ca_key: "pki/ca.key".into(), issuer: None, ..TlsConfig::default() },
            snapshot: SnapshotConfig::default(),
            metrics: None,
            limits: LimitsConfig::default(),
            enrol: Default::default(),
            signing: Default::default(),
            triggers: Default::default(),
            database: Default::default(),
        };
        let loaded = crate::load_authority(&config).unwrap();
        let issued = loaded.issue(&Identity::Hub, &["localhost".into()]).unwrap();
        assert_eq!(issued.cert_pem.matches("BEGIN CERTIFICATE").count(), 1, "one level: no chain");
        config.tls = TlsConfig::default();
        let err = crate::load_authority(&config).err().unwrap().to_string();
        assert!(err.contains("made before issuing CAs") && err.contains("aqueduct-hub issuer rotate"), "{err}");
    }
}
