//! What `aqueduct-hub init` writes into a data directory, so that a crash at any point of it
//! is mended by running it again.
//!
//! Every file is written atomically and fsynced ([`aqueduct_core::durable`]), in this order:
//! the CA's key, then its certificate; the hub's key and certificate; the admin bundle (the
//! CA's certificate, the admin key and certificate, `aq.toml`); the signing key (kept if it is
//! there, like the CA's) and its public key; the database; and `hub.toml` last, as the mark
//! of a finished init. A directory that holds `hub.toml` is a hub: init refuses it. Without it, init completes what an interrupted run left: a CA key already
//! written is kept (never replaced: whatever it signed stays valid; a certificate missing for
//! it is made anew for the same key), the hub's and the admin's certificates are issued again
//! from it, the database is opened as it is, and the temporary files of a write cut short are
//! removed.

use std::net::SocketAddr;
use std::path::Path;

use aqueduct_core::durable;

use crate::config::{HubConfig, LimitsConfig, SigningConfig, SnapshotConfig, TlsConfig};
use crate::pki::{self, Authority};
use crate::store::sqlite::SqliteStore;
use crate::{HubError, InitOutcome, io_err};
use aqueduct_core::identity::Identity;

/// The common name of every hub's CA.
const CA_NAME: &str = "Aqueduct CA";

/// Creates (or completes) a hub's data directory; `wrote` is called after each file is on
/// disk, with its path (a test stops there, as a crash would).
pub(crate) fn init_with(
    data_dir: &Path,
    listen: SocketAddr,
    hosts: &[String],
    wrote: &mut dyn FnMut(&Path) -> Result<(), HubError>,
) -> Result<InitOutcome, HubError> {
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

    let (ca_key, ca_cert) = (data_dir.join(&tls.ca_key), data_dir.join(&tls.ca));
    let ca = if !ca_key.exists() {
        let ca = Authority::create(CA_NAME)?;
        ca.save_key(&ca_key)?;
        wrote(&ca_key)?;
        ca.save_cert(&ca_cert)?;
        wrote(&ca_cert)?;
        ca
    } else if !ca_cert.exists() {
        let ca = Authority::with_key(CA_NAME, Authority::load_key(&ca_key)?)?;
        ca.save_cert(&ca_cert)?;
        wrote(&ca_cert)?;
        ca
    } else {
        Authority::load(&ca_cert, &ca_key)?
    };

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

    let admin = ca.issue(&Identity::Admin, &[])?;
    let host = if listen.ip().is_unspecified() { "127.0.0.1".to_string() } else { listen.ip().to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let admin_config = admin_dir.join("aq.toml");
    let aq = format!(
        "# aq's connection to this hub (written by `aqueduct-hub init`). Paths are relative to this file.\n\
         hub = \"https://{host}:{port}\"\nca = \"ca.pem\"\ncert = \"admin.pem\"\nkey = \"admin.key\"\n",
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
    SqliteStore::open(&db)?;
    wrote(&db)?;

    let config_path = data_dir.join("hub.toml");
    let config = HubConfig {
        listen,
        data_dir: data_dir.clone(),
        tls,
        snapshot: SnapshotConfig::default(),
        metrics: None,
        limits: LimitsConfig::default(),
        signing: SigningConfig::default(),
    };
    let text =
        format!("# Aqueduct hub configuration; see deploy/hub/hub.example.toml for every key.\n{}", config.to_toml());
    durable::write_file(&config_path, text.as_bytes(), durable::PUBLIC).map_err(io_err("write", &config_path))?;
    wrote(&config_path)?;
    Ok(InitOutcome { config_path, admin_config_path: admin_config })
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
        for sub in ["", "pki", "admin"] {
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
    /// verify against the CA on disk); a region's bundle issued from that CA connects too.
    async fn serves(dir: &Path) {
        let config = HubConfig::load(&dir.join("hub.toml")).unwrap();
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
        let bundle = admin
            .add_region(pb::AddRegionRequest {
                region: Some(pb::Region { name: "eu".into(), rate_bytes_per_sec: 1 << 20, ..Default::default() }),
            })
            .await
            .unwrap()
            .into_inner()
            .bundle
            .unwrap();
        let mut spoke = aqueduct_proto::hub::v1::spoke_client::SpokeClient::new(
            connect(bundle.ca_pem, bundle.cert_pem, bundle.key_pem).await.unwrap(),
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
        init_with(&whole, listen, &[], &mut |p| {
            order.push(p.strip_prefix(whole.canonicalize().unwrap()).unwrap().to_owned());
            Ok(())
        })
        .unwrap();
        let order: Vec<String> = order.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            order,
            [
                "pki/ca.key",
                "pki/ca.pem",
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
            let err = init_with(&dir, listen, &[], &mut |p| if p.ends_with(step) { Err(crash(p)) } else { Ok(()) })
                .unwrap_err();
            assert!(err.to_string().contains("injected"), "{step}: {err}");
            let before = files(&dir);
            // A write cut short in the middle leaves a temporary file (a key's, say) behind.
            std::fs::write(dir.join("pki/.hub.key.999.0.tmp"), "half a key").unwrap();
            std::fs::write(dir.join("admin/.aq.toml.999.1.tmp"), "half").unwrap();

            let again = init_with(&dir, listen, &[], &mut |_| Ok(()));
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
                for kept in ["pki/ca.key", "pki/ca.pem", "signing/hub.key"] {
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
            for key in ["pki/ca.key", "pki/hub.key", "admin/admin.key", "admin/aq.toml"] {
                let mode = std::fs::metadata(dir.join(key)).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{key} is readable by others");
            }
            serves(&dir).await;
            println!("cut after {step}: init again made a working hub");
        }
    }

    #[test]
    fn a_ca_key_without_its_certificate_keeps_the_key_and_a_mismatched_pair_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.0.0.1:7443".parse().unwrap();
        let dir = tmp.path();
        let stop_after_key = &mut |p: &Path| if p.ends_with("pki/ca.key") { Err(crash(p)) } else { Ok(()) };
        init_with(dir, listen, &[], stop_after_key).unwrap_err();
        let key = std::fs::read(dir.join("pki/ca.key")).unwrap();
        assert!(!dir.join("pki/ca.pem").exists());
        init_with(dir, listen, &[], &mut |_| Ok(())).unwrap();
        assert_eq!(std::fs::read(dir.join("pki/ca.key")).unwrap(), key);
        Authority::load(&dir.join("pki/ca.pem"), &dir.join("pki/ca.key")).unwrap();

        // A CA certificate of another key: init says so and changes nothing.
        let other = tmp.path().join("other");
        init_with(&other, listen, &[], &mut |_| Ok(())).unwrap();
        std::fs::remove_file(dir.join("hub.toml")).unwrap();
        std::fs::copy(other.join("pki/ca.pem"), dir.join("pki/ca.pem")).unwrap();
        let before = files(dir);
        let err = init_with(dir, listen, &[], &mut |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("was not made with the CA key"), "{err}");
        assert_eq!(files(dir), before);
    }
}
