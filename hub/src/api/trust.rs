//! The admin calls of trust: revocation (`aq node revoke`, `aq region revoke-all`, `aq admin
//! revoke`, `aq revocations`), named admins (`aq admin add|list`) and the audit listing
//! (`aq audit`). A revocation is written to the database, then put in force in memory
//! ([`crate::live::Live::revocations`]): the TLS accept path closes the connections it revokes
//! and refuses new ones, and the watches send each region its part of the list.

use std::time::Duration;

use aqueduct_core::identity::Identity;
use aqueduct_core::revocation::{CertSubject, Revocation};
use aqueduct_core::server::revoke::{entry_to_pb, list_to_pb};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::validate_name;
use tonic::Status;
use tracing::info;

use super::AdminService;
use crate::error::invalid;
use crate::snapshot::{blocking, now_unix_ms};
use crate::store::trust::{AdminRecord, MAX_AUDIT_ROWS};

/// How long an admin bundle is valid unless `aq admin add --valid-for` says otherwise.
pub const DEFAULT_ADMIN_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// The longest an admin bundle may be valid.
pub const MAX_ADMIN_VALIDITY: Duration = Duration::from_secs(5 * 366 * 24 * 3600);
/// An audit listing returns this many rows unless asked for another number.
const DEFAULT_AUDIT_ROWS: u32 = 1000;
/// A revocation's reason is kept to this many characters.
const MAX_REASON_CHARS: usize = 256;

/// The subject a revoke request names, as a URI prefix.
fn subject(req: &pb::RevokeRequest) -> Result<String, Status> {
    match (req.region.as_str(), req.node.as_str(), req.admin.as_str()) {
        ("", "", admin) if !admin.is_empty() => {
            validate_name("admin", admin).map_err(invalid)?;
            Ok(Identity::Admin(admin.into()).uri())
        }
        (region, node, "") if !region.is_empty() => {
            validate_name("region", region).map_err(invalid)?;
            let uri = Identity::region_uri(region);
            if node.is_empty() {
                return Ok(uri);
            }
            validate_name("node", node).map_err(invalid)?;
            Ok(format!("{uri}/node/{node}"))
        }
        _ => Err(Status::invalid_argument(
            "name exactly one subject to revoke: a region and a node, a region, or an admin",
        )),
    }
}

/// Whether `admin` is revoked by the list in force (its certificate was issued when it was
/// added).
fn revoked(service: &AdminService, admin: &AdminRecord) -> bool {
    let subject = CertSubject {
        uris: vec![Identity::Admin(admin.name.clone()).uri()],
        not_before_unix_s: admin.created_unix_ms.div_euclid(1000),
    };
    service.live.revocations.current().refusing(&subject).is_some()
}

fn admin_to_pb(service: &AdminService, admin: AdminRecord) -> pb::AdminInfo {
    let revoked = revoked(service, &admin);
    pb::AdminInfo {
        name: admin.name,
        created_unix_ms: admin.created_unix_ms,
        expires_unix_ms: admin.expires_unix_ms,
        created_by: admin.created_by,
        revoked,
    }
}

impl AdminService {
    pub(super) async fn revoke_call(&self, by: String, req: pb::RevokeRequest) -> Result<pb::RevokeResponse, Status> {
        let prefix = subject(&req)?;
        let now = now_unix_ms();
        if !req.region.is_empty() {
            let name = req.region.clone();
            let regions = blocking(&self.db, |db| db.regions()).await?;
            if !regions.iter().any(|r| r.name == name) {
                return Err(Status::not_found(format!(
                    "region {name:?} does not exist; `aq region list` shows the known ones"
                )));
            }
        } else {
            let admins = blocking(&self.db, |db| db.admins()).await?;
            if !admins.iter().any(|a| a.name == req.admin) {
                return Err(Status::not_found(format!(
                    "admin {:?} does not exist; `aq admin list` shows the known ones",
                    req.admin
                )));
            }
            let others_left =
                admins.iter().any(|a| a.name != req.admin && a.expires_unix_ms > now && !revoked(self, a));
            if !others_left {
                return Err(Status::failed_precondition(format!(
                    "admin {:?} is the last admin whose certificate works: add another (`aq admin add NAME`) before revoking it",
                    req.admin
                )));
            }
        }
        let entry = Revocation {
            prefix,
            revoked_at_unix_s: now.div_euclid(1000),
            by,
            reason: req.reason.chars().filter(|c| !c.is_control()).take(MAX_REASON_CHARS).collect(),
        };
        let written = entry.clone();
        let list = blocking(&self.db, move |db| db.revoke(&written)).await?;
        let generation = list.generation;
        self.live.revocations.update(list);
        // The watches send the regions their part of the new list.
        self.live.changes.notify_waiters();
        info!(prefix = %entry.prefix, by = %entry.by, generation, "revoked");
        Ok(pb::RevokeResponse { revocation: Some(entry_to_pb(&entry)), generation })
    }

    pub(super) async fn list_revocations_call(&self) -> Result<pb::RevocationList, Status> {
        Ok(list_to_pb(&self.live.revocations.current()))
    }

    pub(super) async fn add_admin_call(
        &self,
        by: String,
        req: pb::AddAdminRequest,
    ) -> Result<pb::AddAdminResponse, Status> {
        validate_name("admin", &req.name).map_err(invalid)?;
        let valid_for = match req.valid_for_secs {
            0 => DEFAULT_ADMIN_VALIDITY,
            s if s < 60 || s > MAX_ADMIN_VALIDITY.as_secs() => {
                return Err(Status::invalid_argument(format!(
                    "an admin bundle is valid for 1 minute to 5 years (asked: {s} s)"
                )));
            }
            s => Duration::from_secs(s),
        };
        let now = now_unix_ms();
        let existing = blocking(&self.db, |db| db.admins()).await?;
        if let Some(found) = existing.iter().find(|a| a.name == req.name)
            && found.expires_unix_ms > now
            && !revoked(self, found)
        {
            return Err(Status::already_exists(format!(
                "admin {:?} exists and its certificate works; revoke it first (`aq admin revoke {}`) to issue a new one",
                req.name, req.name
            )));
        }
        let not_after = time::OffsetDateTime::now_utc() + valid_for;
        let identity = Identity::Admin(req.name.clone());
        let issued =
            self.authority.issue_until(&identity, &[], not_after).map_err(|e| Status::internal(e.to_string()))?;
        let record = AdminRecord {
            name: req.name.clone(),
            created_unix_ms: now,
            expires_unix_ms: now.saturating_add(valid_for.as_millis() as i64),
            created_by: by,
        };
        let written = record.clone();
        blocking(&self.db, move |db| db.put_admin(&written)).await?;
        info!(admin = %record.name, by = %record.created_by, "admin added");
        Ok(pb::AddAdminResponse {
            admin: Some(admin_to_pb(self, record)),
            bundle: Some(pb::CredentialsBundle {
                ca_pem: self.authority.ca_pem().to_string(),
                cert_pem: issued.cert_pem,
                key_pem: issued.key_pem,
                // An admin verifies versions with them (`aq verify`).
                signing_keys: self.signer.published().iter().map(|k| k.to_string()).collect(),
            }),
        })
    }

    pub(super) async fn list_admins_call(&self) -> Result<pb::ListAdminsResponse, Status> {
        let admins = blocking(&self.db, |db| db.admins()).await?;
        Ok(pb::ListAdminsResponse { admins: admins.into_iter().map(|a| admin_to_pb(self, a)).collect() })
    }

    pub(super) async fn list_audit_call(&self, req: pb::ListAuditRequest) -> Result<pb::ListAuditResponse, Status> {
        let limit = if req.limit == 0 { DEFAULT_AUDIT_ROWS } else { req.limit.min(MAX_AUDIT_ROWS) };
        let since = req.since_unix_ms;
        // One more than asked: whether there were more.
        let mut rows = blocking(&self.db, move |db| db.audit(since, limit + 1)).await?;
        let truncated = rows.len() > limit as usize;
        if truncated {
            rows.remove(0);
        }
        Ok(pb::ListAuditResponse {
            entries: rows
                .into_iter()
                .map(|r| pb::AuditEntry {
                    at_unix_ms: r.at_unix_ms,
                    admin: r.admin,
                    call: r.call,
                    args: r.args,
                    result: r.result,
                    message: r.message,
                })
                .collect(),
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(region: &str, node: &str, admin: &str) -> pb::RevokeRequest {
        pb::RevokeRequest { region: region.into(), node: node.into(), admin: admin.into(), reason: String::new() }
    }

    #[test]
    fn a_revoke_request_names_one_subject() {
        assert_eq!(subject(&req("eu", "n1", "")).unwrap(), "spiffe://aqueduct/region/eu/node/n1");
        assert_eq!(subject(&req("eu", "", "")).unwrap(), "spiffe://aqueduct/region/eu");
        assert_eq!(subject(&req("", "", "bob")).unwrap(), "spiffe://aqueduct/admin/bob");
        for bad in [req("", "", ""), req("eu", "", "bob"), req("", "n1", ""), req("EU", "", ""), req("eu", "a/b", "")] {
            assert!(subject(&bad).is_err(), "{bad:?}");
        }
    }
}
