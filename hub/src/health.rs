//! What the hub's readiness depends on (see `aqueduct_core::health` for the loop, the
//! endpoints and the gRPC health service): its database is open and answers a query, and each
//! of its sources is reachable.
//!
//! Each round asks the database for its sources (that query is the database's check), then
//! checks each source with its own `probe` (a directory: it opens; S3: a listing of one key)
//! under [`SOURCE_TIMEOUT`]. A source's outcome is kept for [`SOURCE_TTL`]: the sources are
//! asked at most that often, however often the loop turns or the kubelet probes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct_core::health::{Cached, Check, Checks};

use crate::source::{HubFiles, SourceSpec};
use crate::store::{MetaStore, SourceRecord, StoreError};

/// How long one source's check may take before it counts as unreachable.
pub const SOURCE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a source's outcome is reused before it is checked again.
pub const SOURCE_TTL: Duration = Duration::from_secs(5);

/// The name a source's check has in `/readyz`.
pub fn source_check_name(source: &str) -> String {
    format!("source {source}")
}

/// The database's check, from what its query returned.
pub fn database_check(answer: &Result<Vec<SourceRecord>, StoreError>) -> Check {
    match answer {
        Ok(_) => Check::ok("database"),
        Err(e) => Check::failed("database", format!("the query failed: {e}")),
    }
}

/// The hub's checks: its database and its sources.
pub struct HubChecks {
    db: Arc<dyn MetaStore>,
    hub_files: HubFiles,
    sources: Cached,
}

impl HubChecks {
    pub fn new(db: Arc<dyn MetaStore>, hub_files: HubFiles) -> Self {
        Self { db, hub_files, sources: Cached::new(SOURCE_TTL) }
    }

    async fn source(&self, record: SourceRecord) -> Check {
        let name = source_check_name(&record.name);
        let opened = SourceSpec::parse(&record.url, record.options).and_then(|spec| spec.open_guarded(&self.hub_files));
        let source = match opened {
            Ok(source) => source,
            Err(e) => return Check::failed(name, e.to_string()),
        };
        match tokio::time::timeout(SOURCE_TIMEOUT, source.probe()).await {
            Ok(Ok(())) => Check::ok(name),
            Ok(Err(e)) => Check::failed(name, format!("unreachable: {e}")),
            Err(_) => Check::failed(name, format!("unreachable: no answer within {}s", SOURCE_TIMEOUT.as_secs())),
        }
    }
}

impl Checks for HubChecks {
    async fn round(&mut self) -> Vec<Check> {
        let db = self.db.clone();
        let answer = tokio::task::spawn_blocking(move || db.sources())
            .await
            .unwrap_or_else(|e| Err(StoreError::Task(format!("the query's task failed: {e}"))));
        let mut checks = vec![database_check(&answer)];
        let Ok(records) = answer else {
            return checks;
        };
        let now = Instant::now();
        let names: Vec<String> = records.iter().map(|r| source_check_name(&r.name)).collect();
        self.sources.retain(&names);
        let due: Vec<SourceRecord> =
            records.into_iter().filter(|r| self.sources.fresh(&source_check_name(&r.name), now).is_none()).collect();
        // Due sources are checked at once, each under its own timeout.
        let fresh = futures::future::join_all(due.into_iter().map(|r| self.source(r))).await;
        let now = Instant::now();
        for check in fresh {
            self.sources.store(check, now);
        }
        checks.extend(names.iter().filter_map(|n| self.sources.fresh(n, now)));
        checks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::meta::SqlStore;

    #[test]
    fn the_database_check_names_the_failed_query() {
        assert_eq!(database_check(&Ok(vec![])), Check::ok("database"));
        let failed = database_check(&Err(StoreError::Corrupt("disk I/O error".into())));
        assert_eq!(failed.name, "database");
        assert!(failed.problem.unwrap().contains("disk I/O error"));
    }

    #[tokio::test]
    async fn a_missing_directory_source_is_named_and_a_present_one_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(SqlStore::open(&dir.path().join("hub.db")).unwrap());
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let url = |p: &std::path::Path| format!("file://{}", p.display());
        let record = |name: &str, url: String| SourceRecord {
            name: name.into(),
            url,
            options: Default::default(),
            created_unix_ms: 0,
        };
        db.add_source(&record("here", url(&data))).unwrap();
        db.add_source(&record("gone", url(&dir.path().join("gone")))).unwrap();
        let mut checks = HubChecks::new(db, HubFiles::new([dir.path().join("hub.db")]));
        let round = checks.round().await;
        assert_eq!(round[0], Check::ok("database"));
        assert!(round.contains(&Check::ok("source here")), "{round:?}");
        let gone = round.iter().find(|c| c.name == "source gone").expect("the missing source is checked");
        assert!(gone.problem.as_deref().is_some_and(|p| p.contains("does not exist")), "{gone:?}");
        // Within the ttl, the outcome is reused: the directory appearing changes nothing yet.
        std::fs::create_dir(dir.path().join("gone")).unwrap();
        assert!(checks.round().await.iter().any(|c| c.name == "source gone" && c.problem.is_some()));
    }
}
