//! The lifecycle commands of `aq`: `tag`, `promote`, `rollback`, `gc`, `rollout cancel` and
//! the deletes (`source rm`, `dataset rm`, `region rm`, `version rm`), with their flags. Each
//! asks the hub (which decides by its rules and refuses with a message naming what is in the
//! way) and prints what happened; `promote` and `rollback` can wait until the regions serve
//! the version ([`crate::wait`]).

use anyhow::{Result, bail};
use aqueduct_proto::VersionRef;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use clap::Args;
use tonic::transport::Channel;

use crate::connect::{HubConn, explain};
use crate::output::{Table, bytes};
use crate::wait::{Until, WaitArgs};

/// `aq tag DATASET NAME vN` / `aq tag DATASET NAME --rm`.
#[derive(Args)]
pub struct TagArgs {
    /// Dataset name.
    pub dataset: String,
    /// Tag name: a-z, 0-9 and '-', starting with a letter (stable, canary, prod-eu); not
    /// latest, active or vN.
    pub name: String,
    /// The version to name (vN or N); the tag moves there if it named another.
    #[arg(required_unless_present = "rm")]
    pub version: Option<String>,
    /// Remove the tag instead.
    #[arg(long, conflicts_with = "version")]
    pub rm: bool,
}

/// `aq promote DATASET@vN`.
#[derive(Args)]
pub struct PromoteArgs {
    /// DATASET@vN.
    pub version: VersionRef,
    /// Only these regions (comma-separated); default: every region it is rolled out to.
    #[arg(long, value_delimiter = ',')]
    pub region: Vec<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `aq rollback DATASET`.
#[derive(Args)]
pub struct RollbackArgs {
    /// Dataset name.
    pub dataset: String,
    /// The version to go back to (vN); default: each region's previous version.
    #[arg(long, value_name = "vN")]
    pub to: Option<String>,
    /// Only these regions (comma-separated); default: every region serving the dataset.
    #[arg(long, value_delimiter = ',')]
    pub region: Vec<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `aq gc`.
#[derive(Args)]
pub struct GcArgs {
    /// Only this dataset.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Say what would go, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `aq rollout cancel DATASET@vN`.
#[derive(Args)]
pub struct CancelArgs {
    /// DATASET@vN.
    pub version: VersionRef,
    /// Only these regions (comma-separated); default: every region it is rolled out to.
    #[arg(long, value_delimiter = ',')]
    pub region: Vec<String>,
}

/// `aq source|dataset|region rm NAME`.
#[derive(Args)]
pub struct RmArgs {
    /// The name.
    pub name: String,
    /// Also what depends on it, where that makes sense (a dataset's rollouts, a region's
    /// rollouts); never what a pod uses.
    #[arg(long)]
    pub force: bool,
}

/// `aq version rm DATASET@vN`.
#[derive(Args)]
pub struct VersionRmArgs {
    /// DATASET@vN.
    pub version: VersionRef,
    /// Remove it even though a tag or the newest-N rule retains it (its tags go with it);
    /// never one served, kept for rollback, rolling out or in use.
    #[arg(long)]
    pub force: bool,
}

/// A version number written `vN` or `N`.
pub fn version_number(text: &str) -> Result<u64> {
    match text.strip_prefix('v').unwrap_or(text).parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{text:?} is not a version: write vN (e.g. v3)"),
    }
}

fn exact(version: &VersionRef) -> Result<u64> {
    version
        .version
        .ok_or_else(|| anyhow::anyhow!("name the version: {}@vN (aq versions {})", version.dataset, version.dataset))
}

/// What a promote or a rollback did, region by region.
pub fn cut_over_table(dataset: &str, regions: &[pb::RegionCutOver]) -> String {
    let mut table = Table::new(["REGION", "FROM", "TO", "RESULT"]);
    for r in regions {
        let from = if r.from == 0 { "-".to_string() } else { format!("v{}", r.from) };
        let result = match (r.switched, r.note.is_empty()) {
            (true, true) => format!("serves {dataset}@v{} now (no transfer)", r.to),
            (_, false) => r.note.clone(),
            (false, true) => "pending".to_string(),
        };
        table.row([r.region.clone(), from, format!("v{}", r.to), result]);
    }
    table.render()
}

pub async fn tag(admin: &mut AdminClient<Channel>, hub: &HubConn, args: TagArgs) -> Result<()> {
    let version = match &args.version {
        Some(v) if !args.rm => version_number(v)?,
        _ => 0,
    };
    let req = pb::TagRequest { dataset: args.dataset.clone(), name: args.name.clone(), version, remove: args.rm };
    let resp = admin.tag(req).await.map_err(|e| explain(e, hub))?.into_inner();
    match (args.rm, resp.previous_version) {
        (true, was) => println!("{}: tag {} removed (it named v{was})", args.dataset, args.name),
        (false, 0) => println!("{}: tag {} names v{version}", args.dataset, args.name),
        (false, was) => println!("{}: tag {} moved from v{was} to v{version}", args.dataset, args.name),
    }
    Ok(())
}

pub async fn promote(admin: &mut AdminClient<Channel>, hub: &HubConn, args: PromoteArgs) -> Result<()> {
    let dataset = args.version.dataset.clone();
    let version = exact(&args.version)?;
    let req = pb::PromoteRequest { dataset: dataset.clone(), version, regions: args.region };
    let resp = admin.promote(req).await.map_err(|e| explain(e, hub))?.into_inner();
    print!("{}", cut_over_table(&dataset, &resp.regions));
    let regions = resp.regions.iter().map(|r| r.region.clone()).collect();
    args.wait.wait(admin, hub, Until::Serving { dataset, version, regions }).await
}

pub async fn rollback(admin: &mut AdminClient<Channel>, hub: &HubConn, args: RollbackArgs) -> Result<()> {
    let to = args.to.as_deref().map(version_number).transpose()?.unwrap_or(0);
    let req = pb::RollbackRequest { dataset: args.dataset.clone(), to, regions: args.region };
    let resp = admin.rollback(req).await.map_err(|e| explain(e, hub))?.into_inner();
    print!("{}", cut_over_table(&args.dataset, &resp.regions));
    // Regions may go back to different versions (each to its previous one): wait per version.
    let mut targets: Vec<u64> = resp.regions.iter().map(|r| r.to).collect();
    targets.sort_unstable();
    targets.dedup();
    for version in targets {
        let regions = resp.regions.iter().filter(|r| r.to == version).map(|r| r.region.clone()).collect();
        args.wait.wait(admin, hub, Until::Serving { dataset: args.dataset.clone(), version, regions }).await?;
    }
    Ok(())
}

pub async fn gc(admin: &mut AdminClient<Channel>, hub: &HubConn, args: GcArgs) -> Result<()> {
    let req = pb::GcRequest { dry_run: args.dry_run, dataset: args.dataset.unwrap_or_default() };
    let resp = admin.gc(req).await.map_err(|e| explain(e, hub))?.into_inner();
    if resp.versions.is_empty() {
        println!("nothing to remove: every version is retained (aq versions DATASET -o wide says why)");
        return Ok(());
    }
    let verb = if resp.dry_run { "would remove" } else { "removed" };
    let mut table = Table::new(["VERSION", "SIZE"]);
    for v in &resp.versions {
        table.row([format!("{}@v{}", v.dataset, v.version), bytes(v.bytes)]);
    }
    println!("{verb} {} version(s):", resp.versions.len());
    print!("{}", table.render());
    let mut table = Table::new(["REGION", "FREED"]);
    for r in &resp.regions {
        table.row([r.region.clone(), bytes(r.bytes)]);
    }
    if !resp.regions.is_empty() {
        println!("bytes the regions' spokes {}:", if resp.dry_run { "would free" } else { "free" });
        print!("{}", table.render());
    }
    Ok(())
}

pub async fn cancel(admin: &mut AdminClient<Channel>, hub: &HubConn, args: CancelArgs) -> Result<()> {
    let version = exact(&args.version)?;
    let req = pb::CancelRolloutRequest { dataset: args.version.dataset.clone(), version, regions: args.region };
    let resp = admin.cancel_rollout(req).await.map_err(|e| explain(e, hub))?.into_inner();
    println!("{}@v{version}: rollout cancelled in {}", args.version.dataset, resp.regions.join(", "));
    Ok(())
}

/// What `aq ... rm` removes.
pub enum Removed {
    Source,
    Dataset,
    Region,
}

pub async fn remove(admin: &mut AdminClient<Channel>, hub: &HubConn, what: Removed, args: RmArgs) -> Result<()> {
    let req = pb::RemoveRequest { name: args.name, force: args.force };
    let resp = match what {
        Removed::Source => admin.remove_source(req).await,
        Removed::Dataset => admin.remove_dataset(req).await,
        Removed::Region => admin.remove_region(req).await,
    }
    .map_err(|e| explain(e, hub))?
    .into_inner();
    println!("removed {}", resp.summary);
    Ok(())
}

pub async fn remove_version(admin: &mut AdminClient<Channel>, hub: &HubConn, args: VersionRmArgs) -> Result<()> {
    let version = exact(&args.version)?;
    let req = pb::RemoveVersionRequest { dataset: args.version.dataset.clone(), version, force: args.force };
    let resp = admin.remove_version(req).await.map_err(|e| explain(e, hub))?.into_inner();
    println!("removed {}", resp.summary);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    #[test]
    fn versions_are_vn_or_n_above_zero() {
        assert_eq!(version_number("v3").unwrap(), 3);
        assert_eq!(version_number("12").unwrap(), 12);
        for bad in ["v0", "0", "", "v", "stable", "v-1", "3.0"] {
            assert!(version_number(bad).unwrap_err().to_string().contains("write vN"), "{bad}");
        }
    }

    #[test]
    fn the_cut_over_table_says_what_each_region_did() {
        let regions = [
            pb::RegionCutOver { region: "eu".into(), from: 2, to: 1, switched: true, note: String::new() },
            pb::RegionCutOver {
                region: "us".into(),
                from: 2,
                to: 1,
                switched: false,
                note: "v1 was never rolled out to us: rolling it out again; served once Ready".into(),
            },
        ];
        let table = cut_over_table("llama", &regions);
        assert!(table.contains("serves llama@v1 now (no transfer)"), "{table}");
        assert!(table.contains("rolling it out again"), "{table}");
    }

    proptest! {
        #![proptest_config(fuzz::config(2000))]

        /// Any text: a version number above 0 or an error, never a panic; numbers round-trip.
        #[test]
        fn fuzz_version_numbers_from_any_text(text in ".{0,24}", n in 1u64..u64::MAX) {
            if let Ok(v) = version_number(&text) {
                prop_assert!(v > 0);
            }
            prop_assert_eq!(version_number(&format!("v{n}")).unwrap(), n);
        }
    }
}
