//! What a rollout says about a version in a region: how the region holds it
//! ([`ReplicationMode`]) and where the region, or one of its spokes, stands with it
//! ([`Phase`]). Both are enums here and in the wire contract (`aqueduct.hub.v1.Phase`,
//! `aqueduct.hub.v1.ReplicationMode`), converted in [`super::wire`]; their text forms are what
//! people read (`aq status`, metrics labels) and what the hub's database keeps.

use std::fmt;
use std::str::FromStr;

/// How a region holds a version: every spoke the whole of it, or the region one copy spread
/// over the chunks' owners (spokes fetch the rest from their peers when they read it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReplicationMode {
    /// `every-node` when the version fits a spoke's cache, `region` otherwise.
    #[default]
    Auto,
    Region,
    EveryNode,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("replication mode {0:?} is not one of auto, region, every-node")]
pub struct ModeError(pub String);

impl FromStr for ReplicationMode {
    type Err = ModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "auto" => Ok(Self::Auto),
            "region" => Ok(Self::Region),
            "every-node" => Ok(Self::EveryNode),
            other => Err(ModeError(other.to_string())),
        }
    }
}

impl fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Region => "region",
            Self::EveryNode => "every-node",
        })
    }
}

/// Where a region stands with a version it was asked to hold (`Pending -> Transferring ->
/// Ready`, or `Failed`), or where one of its spokes does. A region's phase is folded from its
/// spokes' (the hub's `rollout` module says how); *active* is not a phase but follows from when
/// each region of a rollout became Ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Asked to hold the version; nothing held of it reported yet.
    #[default]
    Pending,
    /// Fetching its chunks.
    Transferring,
    /// Holds the version whole (in region mode, every spoke its share), verified.
    Ready,
    /// Cannot hold the version; a reason says why.
    Failed,
}

impl Phase {
    /// Every phase, in lifecycle order.
    pub const ALL: [Phase; 4] = [Phase::Pending, Phase::Transferring, Phase::Ready, Phase::Failed];

    /// The name people read and the hub's database keeps: `Pending`, `Transferring`, `Ready`,
    /// `Failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Transferring => "Transferring",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("phase {0} is not one of Pending, Transferring, Ready, Failed")]
pub struct PhaseError(pub String);

impl FromStr for Phase {
    type Err = PhaseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| PhaseError(format!("{s:?}")))
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_and_modes_round_trip_through_their_names() {
        for phase in Phase::ALL {
            assert_eq!(phase.to_string().parse::<Phase>(), Ok(phase));
        }
        assert_eq!(Phase::ALL.map(Phase::as_str), ["Pending", "Transferring", "Ready", "Failed"]);
        let err = "ready".parse::<Phase>().unwrap_err();
        assert_eq!(err.to_string(), "phase \"ready\" is not one of Pending, Transferring, Ready, Failed");
        for mode in [ReplicationMode::Auto, ReplicationMode::Region, ReplicationMode::EveryNode] {
            assert_eq!(mode.to_string().parse::<ReplicationMode>(), Ok(mode));
        }
        assert_eq!("".parse::<ReplicationMode>(), Ok(ReplicationMode::Auto), "empty means auto");
        assert!("everywhere".parse::<ReplicationMode>().unwrap_err().to_string().contains("auto, region, every-node"));
    }
}
