//! The trust commands of `aq`: revocation (`node revoke`, `region revoke-all`, `admin
//! revoke`, `revocations`), named admins (`admin add`, `admin list`) and the audit log
//! (`audit`), with their flags and listings. The hub decides and records; these ask it and
//! print what it did.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use clap::{Args, Subcommand};
use serde::Serialize;
use tonic::transport::Channel;

use crate::connect::{HubConn, explain};
use crate::output::{Listing, Table, age, rfc3339};

/// `aq node revoke REGION NODE`.
#[derive(Args)]
pub struct NodeRevokeArgs {
    /// The node's region.
    pub region: String,
    /// The node's name.
    pub node: String,
    /// Why (kept with the entry, shown by `aq revocations`).
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `aq region revoke-all REGION`.
#[derive(Args)]
pub struct RegionRevokeArgs {
    /// The region: every certificate of it (its nodes', the region's) issued until now.
    pub region: String,
    /// Why (kept with the entry, shown by `aq revocations`).
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Revoke a node's certificates (spiffe://aqueduct/region/REGION/node/NODE) issued until
    /// now: the hub and the region's peers refuse them within seconds, open connections
    /// included. The node may enrol again later.
    Revoke(NodeRevokeArgs),
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Issue a personal admin bundle for NAME (CA, certificate, key and an aq.toml), valid for
    /// a bounded time; its calls are audited under NAME.
    Add {
        /// The admin's name (a-z, 0-9, '-', '.', '_').
        name: String,
        /// Directory for the bundle (ca.pem, admin.pem, admin.key, aq.toml); default
        /// ./NAME-admin. Use it with `AQ_CONFIG=DIR/aq.toml`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// How long the certificate is valid, e.g. 30d, 12h (default 90 days; at most 5
        /// years).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        valid_for: Option<Duration>,
    },
    /// List the admins, when their certificates expire and whether they are revoked.
    List {
        #[arg(short = 'o', long = "output", value_name = "table|wide|json|yaml", default_value = "table")]
        output: crate::output::Format,
    },
    /// Revoke admin NAME: its certificate is refused at once, open connections included
    /// (refused for the last admin whose certificate works).
    Revoke {
        /// The admin's name.
        name: String,
        /// Why (kept with the entry, shown by `aq revocations`).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// `aq audit`.
#[derive(Args)]
pub struct AuditArgs {
    /// Only calls since then: a duration back from now (1h, 2d) or a time (RFC 3339, e.g.
    /// 2026-11-30T08:00:00Z).
    #[arg(long, value_name = "DURATION|TIME", value_parser = since)]
    pub since: Option<i64>,
    /// At most this many calls (the newest; the hub caps it at 10000).
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    #[arg(short = 'o', long = "output", value_name = "table|wide|json|yaml", default_value = "table")]
    pub output: crate::output::Format,
}

fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `--since`: a duration back from now, or a time; unix ms.
pub fn since(text: &str) -> Result<i64, String> {
    if let Ok(back) = humantime::parse_duration(text) {
        return Ok(now_unix_ms().saturating_sub(back.as_millis() as i64));
    }
    match humantime::parse_rfc3339_weak(text) {
        Ok(at) => Ok(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)),
        Err(_) => Err(format!("{text:?} is neither a duration (1h, 2d) nor a time (2026-11-30T08:00:00Z)")),
    }
}

async fn revoke(admin: &mut AdminClient<Channel>, hub: &HubConn, req: pb::RevokeRequest, what: &str) -> Result<()> {
    let resp = admin.revoke(req).await.map_err(|e| explain(e, hub))?.into_inner();
    let prefix = resp.revocation.map(|r| r.prefix).unwrap_or_default();
    println!(
        "{what} revoked ({prefix}): its certificates issued until now are refused; revocation list generation {}",
        resp.generation
    );
    Ok(())
}

pub async fn node(admin: &mut AdminClient<Channel>, hub: &HubConn, command: NodeCommand) -> Result<()> {
    let NodeCommand::Revoke(args) = command;
    let what = format!("node {} of region {}", args.node, args.region);
    let req = pb::RevokeRequest { region: args.region, node: args.node, admin: String::new(), reason: args.reason };
    revoke(admin, hub, req, &what).await
}

pub async fn region_revoke(admin: &mut AdminClient<Channel>, hub: &HubConn, args: RegionRevokeArgs) -> Result<()> {
    let what = format!("region {} (every node)", args.region);
    let req = pb::RevokeRequest { region: args.region, node: String::new(), admin: String::new(), reason: args.reason };
    revoke(admin, hub, req, &what).await
}

pub async fn admin(admin: &mut AdminClient<Channel>, hub: &HubConn, command: AdminCommand) -> Result<()> {
    match command {
        AdminCommand::Add { name, out, valid_for } => {
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}-admin")));
            if out.exists() {
                bail!("{} already exists; choose another --out or remove it", out.display());
            }
            let req = pb::AddAdminRequest { name: name.clone(), valid_for_secs: valid_for.map_or(0, |d| d.as_secs()) };
            let resp = admin.add_admin(req).await.map_err(|e| explain(e, hub))?.into_inner();
            let bundle = resp.bundle.context("the hub sent no bundle")?;
            write_admin_bundle(&out, &bundle, &hub.url).with_context(|| {
                format!("admin {name} was added, but its bundle could not be written to {}", out.display())
            })?;
            let expires = resp.admin.and_then(|a| rfc3339(a.expires_unix_ms)).unwrap_or_default();
            println!("admin {name} added, valid until {expires}");
            println!(
                "bundle written to {} (use it: export AQ_CONFIG={}); keep admin.key private",
                out.display(),
                out.join("aq.toml").display()
            );
        }
        AdminCommand::List { output } => {
            let list = admin.list_admins(pb::ListAdminsRequest {}).await.map_err(|e| explain(e, hub))?.into_inner();
            print!("{}", crate::output::render(&Admins::from(list), output)?);
        }
        AdminCommand::Revoke { name, reason } => {
            let what = format!("admin {name}");
            let req = pb::RevokeRequest { region: String::new(), node: String::new(), admin: name, reason };
            revoke(admin, hub, req, &what).await?;
        }
    }
    Ok(())
}

/// Writes an admin bundle as `aqueduct-hub init` writes the first: the CA, the certificate,
/// the key (0600) and an `aq.toml` that points `aq` at the hub.
fn write_admin_bundle(dir: &Path, bundle: &pb::CredentialsBundle, hub_url: &str) -> Result<()> {
    use aqueduct_core::durable::{self, PUBLIC, SECRET};
    durable::create_dir_all(dir)?;
    let aq = format!(
        "# aq's connection to the hub, as an admin of its own (written by `aq admin add`). Paths are relative to this file.\n\
         hub = {hub_url:?}\nca = \"ca.pem\"\ncert = \"admin.pem\"\nkey = \"admin.key\"\n"
    );
    durable::write_file(&dir.join("ca.pem"), bundle.ca_pem.as_bytes(), PUBLIC)?;
    durable::write_file(&dir.join("admin.key"), bundle.key_pem.as_bytes(), SECRET)?;
    durable::write_file(&dir.join("admin.pem"), bundle.cert_pem.as_bytes(), PUBLIC)?;
    durable::write_file(&dir.join("aq.toml"), aq.as_bytes(), SECRET)?;
    Ok(())
}

pub async fn revocations(admin: &mut AdminClient<Channel>, hub: &HubConn, output: crate::output::Format) -> Result<()> {
    let list = admin.list_revocations(pb::ListRevocationsRequest {}).await.map_err(|e| explain(e, hub))?.into_inner();
    print!("{}", crate::output::render(&Revocations::from(list), output)?);
    Ok(())
}

pub async fn audit(admin: &mut AdminClient<Channel>, hub: &HubConn, args: AuditArgs) -> Result<()> {
    let req = pb::ListAuditRequest { since_unix_ms: args.since.unwrap_or(0), limit: args.limit };
    let list = admin.list_audit(req).await.map_err(|e| explain(e, hub))?.into_inner();
    if list.truncated {
        eprintln!(
            "(more calls matched: the newest {} are shown; narrow with --since or raise --limit)",
            list.entries.len()
        );
    }
    print!("{}", crate::output::render(&Audit::from(list), args.output)?);
    Ok(())
}

/// `aq revocations`.
#[derive(Serialize)]
pub struct Revocations {
    pub generation: u64,
    pub entries: Vec<RevocationView>,
}

#[derive(Serialize)]
pub struct RevocationView {
    pub prefix: String,
    /// RFC 3339.
    pub revoked_at: Option<String>,
    pub by: String,
    pub reason: String,
}

impl From<pb::RevocationList> for Revocations {
    fn from(list: pb::RevocationList) -> Self {
        Revocations {
            generation: list.generation,
            entries: list
                .entries
                .into_iter()
                .map(|e| RevocationView {
                    prefix: e.prefix,
                    revoked_at: rfc3339(e.revoked_at_unix_s.saturating_mul(1000)),
                    by: e.by,
                    reason: e.reason,
                })
                .collect(),
        }
    }
}

impl Listing for Revocations {
    fn text(&self, _wide: bool) -> String {
        let mut t = Table::new(["PREFIX", "REVOKED AT", "BY", "REASON"]);
        for e in &self.entries {
            t.row([e.prefix.clone(), e.revoked_at.clone().unwrap_or_default(), e.by.clone(), e.reason.clone()]);
        }
        format!("{}generation {}\n", t.render(), self.generation)
    }
}

/// `aq admin list`.
#[derive(Serialize)]
pub struct Admins {
    pub admins: Vec<AdminView>,
}

#[derive(Serialize)]
pub struct AdminView {
    pub name: String,
    pub created: Option<String>,
    pub expires: Option<String>,
    pub created_by: String,
    pub revoked: bool,
    #[serde(skip)]
    created_unix_ms: i64,
}

impl From<pb::ListAdminsResponse> for Admins {
    fn from(list: pb::ListAdminsResponse) -> Self {
        Admins {
            admins: list
                .admins
                .into_iter()
                .map(|a| AdminView {
                    name: a.name,
                    created: rfc3339(a.created_unix_ms),
                    expires: rfc3339(a.expires_unix_ms),
                    created_by: a.created_by,
                    revoked: a.revoked,
                    created_unix_ms: a.created_unix_ms,
                })
                .collect(),
        }
    }
}

impl Listing for Admins {
    fn text(&self, _wide: bool) -> String {
        let mut t = Table::new(["NAME", "STATE", "EXPIRES", "ADDED BY", "AGE"]);
        for a in &self.admins {
            let state = if a.revoked { "revoked" } else { "active" };
            t.row([
                a.name.clone(),
                state.into(),
                a.expires.clone().unwrap_or_default(),
                a.created_by.clone(),
                age(a.created_unix_ms),
            ]);
        }
        t.render()
    }
}

/// `aq audit`.
#[derive(Serialize)]
pub struct Audit {
    pub entries: Vec<AuditView>,
    /// More calls matched than are listed.
    pub truncated: bool,
}

#[derive(Serialize)]
pub struct AuditView {
    pub at: Option<String>,
    pub admin: String,
    pub call: String,
    pub args: String,
    pub result: String,
    pub message: String,
}

impl From<pb::ListAuditResponse> for Audit {
    fn from(list: pb::ListAuditResponse) -> Self {
        Audit {
            entries: list
                .entries
                .into_iter()
                .map(|e| AuditView {
                    at: rfc3339(e.at_unix_ms),
                    admin: e.admin,
                    call: e.call,
                    args: e.args,
                    result: e.result,
                    message: e.message,
                })
                .collect(),
            truncated: list.truncated,
        }
    }
}

impl Listing for Audit {
    fn text(&self, wide: bool) -> String {
        let mut t = Table::new(["TIME", "ADMIN", "CALL", "RESULT", "ARGS"]);
        let mut w = Table::new(["TIME", "ADMIN", "CALL", "RESULT", "ARGS", "MESSAGE"]);
        for e in &self.entries {
            let cells =
                [e.at.clone().unwrap_or_default(), e.admin.clone(), e.call.clone(), e.result.clone(), e.args.clone()];
            if wide {
                let [a, b, c, d, f] = cells;
                w.row([a, b, c, d, f, e.message.clone()]);
            } else {
                t.row(cells);
            }
        }
        if wide { w.render() } else { t.render() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_or_a_time() {
        let an_hour_ago = since("1h").unwrap();
        assert!((now_unix_ms() - an_hour_ago - 3_600_000).abs() < 60_000);
        assert_eq!(since("2026-11-30T08:00:00Z").unwrap(), 1_796_025_600_000);
        assert!(since("yesterday").unwrap_err().contains("neither"));
    }
}
