//! Opening the hub's database from its config: the embedded SQLite file in `data_dir`, or
//! PostgreSQL (`[database] url`) with its password from a file or an environment variable
//! (never from the URL, never logged).

use crate::config::HubConfig;
use crate::store::StoreError;
use crate::store::meta::SqlStore;
use crate::store::sql::{PostgresTarget, redact};

/// Connections to PostgreSQL when the config does not say.
pub const DEFAULT_CONNECTIONS: usize = 8;

/// Opens (creating or upgrading the tables if needed) the database the config names.
pub fn open(config: &HubConfig) -> Result<SqlStore, StoreError> {
    match postgres_target(config)? {
        None => SqlStore::open(&config.database_path()),
        Some(target) => {
            tracing::info!(url = %redact(&target.url), connections = target.connections, "using PostgreSQL");
            SqlStore::postgres(&target)
        }
    }
}

/// Where PostgreSQL is and the password to give it (`None`: the config uses SQLite).
pub fn postgres_target(config: &HubConfig) -> Result<Option<PostgresTarget>, StoreError> {
    let db = &config.database;
    let Some(url) = &db.url else { return Ok(None) };
    let password = if let Some(file) = &db.password_file {
        let path = config.resolve(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| StoreError::Config(format!("cannot read database.password_file {}: {e}", path.display())))?;
        Some(text.trim_end_matches(['\n', '\r']).to_string())
    } else if let Some(var) = &db.password_env {
        Some(std::env::var(var).map_err(|_| {
            StoreError::Config(format!(
                "database.password_env names {var:?}, which is not set in the hub's environment"
            ))
        })?)
    } else {
        None
    };
    let ca_pem = match &db.ca_file {
        None => None,
        Some(file) => {
            let path = config.resolve(file);
            Some(
                std::fs::read(&path)
                    .map_err(|e| StoreError::Config(format!("cannot read database.ca_file {}: {e}", path.display())))?,
            )
        }
    };
    let connections = db.connections.unwrap_or(DEFAULT_CONNECTIONS);
    Ok(Some(PostgresTarget { url: url.clone(), password, connections, ca_pem }))
}
