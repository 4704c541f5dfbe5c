//! Admin bundles issued on the hub's machine, from its CA key (`aqueduct-hub admin-bundle`):
//! the way in when no admin bundle works any more (every admin revoked or expired, or bundles
//! of the unnamed admin identity of builds before admins had names). The bundle is what `aq
//! admin add` writes; the admin is recorded in the database as added by `hub-machine`.

use std::path::Path;
use std::time::Duration;

use aqueduct_core::identity::Identity;

use crate::config::HubConfig;
use crate::pki;
use crate::store::TrustStore;
use crate::store::trust::AdminRecord;
use crate::{HubError, io_err};

/// Issues admin `name`'s bundle into `out` (created; refused if it holds a key already):
/// `ca.pem`, `admin.pem`, `admin.key` (0600) and an `aq.toml` pointing at `config.listen`.
pub fn issue_bundle(config: &HubConfig, name: &str, valid_for: Duration, out: &Path) -> Result<(), HubError> {
    aqueduct_proto::validate_name("admin", name).map_err(|e| HubError::BadAdminName(e.to_string()))?;
    if out.join("admin.key").exists() {
        return Err(HubError::AlreadyInitialised { path: out.to_owned(), what: "admin.key".into() });
    }
    let authority = crate::load_authority(config)?;
    let not_after = time::OffsetDateTime::now_utc() + valid_for;
    let issued = authority.issue_until(&Identity::Admin(name.to_string()), &[], not_after)?;
    aqueduct_core::durable::create_dir_all(out).map_err(io_err("create", out))?;
    let host =
        if config.listen.ip().is_unspecified() { "127.0.0.1".to_string() } else { config.listen.ip().to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let aq = format!(
        "# aq's connection to this hub, as admin {name} (written by `aqueduct-hub admin-bundle`). Paths are relative to this file.\n\
         hub = \"https://{host}:{port}\"\n\
         # Several hubs serving one state: hub = [\"https://a:7443\", \"https://b:7443\"], tried in order.\n\
         ca = \"ca.pem\"\ncert = \"admin.pem\"\nkey = \"admin.key\"\n",
        port = config.listen.port()
    );
    pki::write_public(&out.join("ca.pem"), authority.ca_pem())?;
    pki::write_secret(&out.join("admin.key"), &issued.key_pem)?;
    pki::write_public(&out.join("admin.pem"), &issued.cert_pem)?;
    pki::write_secret(&out.join("aq.toml"), &aq)?;
    let now = crate::snapshot::now_unix_ms();
    let store = crate::database::open(config)?;
    store.put_admin(&AdminRecord {
        name: name.to_string(),
        created_unix_ms: now,
        expires_unix_ms: now.saturating_add(valid_for.as_millis() as i64),
        created_by: "hub-machine".into(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_names_its_admin_and_is_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let out = crate::init(&tmp.path().join("hub"), "127.0.0.1:7443".parse().unwrap(), &[]).unwrap();
        let config = HubConfig::load(&out.config_path).unwrap();
        let dir = tmp.path().join("carol");
        issue_bundle(&config, "carol", Duration::from_secs(3600), &dir).unwrap();
        let cert = std::fs::read_to_string(dir.join("admin.pem")).unwrap();
        assert_eq!(Identity::from_pem(&cert), Some(Identity::Admin("carol".into())));
        let admins = crate::store::meta::SqlStore::open(&config.database_path()).unwrap().admins().unwrap();
        assert_eq!(admins.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["admin", "carol"]);
        assert!(
            issue_bundle(&config, "carol", Duration::from_secs(3600), &dir).is_err(),
            "a key is never written over"
        );
        assert!(issue_bundle(&config, "Not A Name", Duration::from_secs(3600), &tmp.path().join("x")).is_err());
    }
}
