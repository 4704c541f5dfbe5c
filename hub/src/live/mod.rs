//! What the hub keeps in memory, shared by the admin API and the spokes' API: the live
//! members of each region and their reports ([`members`]), each region's link budget as the
//! relay applies it ([`budgets`]) and the class each rollout draws in ([`classes`]), the chunks read from the sources for every region at once
//! ([`reads`]), the bytes relayed and not yet written ([`ledger`]), the notices that wake the
//! spokes' watches when rollouts or a region's members change, and each region's assignments
//! as its watches share them ([`views`]), the regions this hub serves when hubs share a
//! database ([`regions`]), and the revocation list in force (kept
//! in the database too, and read from it at start). None of the rest
//! survives a restart: spokes join and report again, budgets are re-read, and the ledger
//! writes what it counted before the hub stops.

pub mod budgets;
pub mod classes;
pub mod ledger;
pub mod members;
pub mod reads;
pub mod regions;
pub mod views;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aqueduct_core::server::revoke::Revocations;
use tokio_util::sync::CancellationToken;

use crate::metrics::HubMetrics;
use budgets::Budgets;
use classes::Classes;
use ledger::Ledger;
use members::Members;
use reads::SourceReads;
use regions::RegionLeases;

pub use views::Changes;
use views::Views;

/// What the hub keeps in memory, shared by its services.
#[derive(Clone, Default)]
pub struct Live {
    /// Rollout changes: the admin API (and a report that makes a version Ready) notifies for
    /// all regions, a join or a leave for its region; the watches concerned wake and send their
    /// regions' assignments again.
    pub changes: Changes,
    /// Each region's assignments, computed once per change for all its watches.
    pub views: Arc<Views>,
    pub ledger: Arc<Ledger>,
    pub members: Arc<Members>,
    /// Each region's link budget, as the relay applies it.
    pub budgets: Arc<Budgets>,
    /// The class each rollout's transfers draw in from its region's budget.
    pub classes: Arc<Classes>,
    /// Chunk reads from the sources, shared by every region, and their cache.
    pub reads: Arc<SourceReads>,
    /// The regions whose spokes this hub serves (all of them when it is alone on its
    /// database).
    pub regions: Arc<RegionLeases>,
    /// What the hub counts for Prometheus.
    pub metrics: Arc<HubMetrics>,
    /// Fires when the hub stops: watches end, so that the server's graceful shutdown is not
    /// held up by streams that never finish on their own.
    pub stopping: CancellationToken,
    /// Bumped when something spokes were allowed to read is withdrawn (a cancelled rollout, a
    /// removed version, dataset or region): the relay drops what it cached of who may read
    /// what, and checks again.
    pub withdrawn: Arc<AtomicU64>,
    /// The revocation list in force (read from the database at start, replaced by each
    /// revocation): the TLS accept path refuses and closes what it revokes, and the watches
    /// send each region its part.
    pub revocations: Revocations,
}

impl Live {
    /// Something was withdrawn: the relay checks grants again, and the watches wake up.
    pub fn withdraw(&self) {
        self.withdrawn.fetch_add(1, Ordering::AcqRel);
        self.changes.notify_waiters();
    }
}
