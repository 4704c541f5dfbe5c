//! A rollout's cut-over policy (`aq rollout --cut-over`, the status's `cut_over`): when the
//! regions of a rollout start serving its version, as the hub, `aq` and the wire name it. What
//! each policy does is the hub's (its rollout module).

use std::fmt;
use std::str::FromStr;

use crate::hub::v1 as pb;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CutOver {
    /// Once the version is Ready in every region of the rollout (the default).
    #[default]
    AllReady,
    /// Each region once the version is Ready there.
    PerRegion,
    /// Only on `aq promote`.
    Manual,
}

impl CutOver {
    pub const ALL: [CutOver; 3] = [CutOver::AllReady, CutOver::PerRegion, CutOver::Manual];

    pub fn name(self) -> &'static str {
        match self {
            CutOver::AllReady => "all-ready",
            CutOver::PerRegion => "per-region",
            CutOver::Manual => "manual",
        }
    }

    pub fn to_wire(self) -> i32 {
        match self {
            CutOver::AllReady => pb::CutOver::AllReady,
            CutOver::PerRegion => pb::CutOver::PerRegion,
            CutOver::Manual => pb::CutOver::Manual,
        }
        .into()
    }

    /// The policy the hub sent (unspecified is all-ready, as the contract says); None for a
    /// value this `aq` does not know.
    pub fn from_wire(value: i32) -> Option<Self> {
        match pb::CutOver::try_from(value).ok()? {
            pb::CutOver::Unspecified | pb::CutOver::AllReady => Some(CutOver::AllReady),
            pb::CutOver::PerRegion => Some(CutOver::PerRegion),
            pb::CutOver::Manual => Some(CutOver::Manual),
        }
    }

    /// How the status names a policy the hub sent (`unknown (7)` for one it does not know).
    pub fn wire_name(value: i32) -> String {
        Self::from_wire(value).map_or_else(|| format!("unknown ({value})"), |p| p.name().to_string())
    }
}

impl fmt::Display for CutOver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{input:?} is not a cut-over policy: write all-ready (serve once Ready in every region), per-region \
     (each region once Ready there) or manual (on `aq promote`)"
)]
pub struct CutOverError {
    pub input: String,
}

impl FromStr for CutOver {
    type Err = CutOverError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| CutOverError { input: s.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn policies_read_back_and_cross_the_wire() {
        for policy in CutOver::ALL {
            assert_eq!(policy.to_string().parse::<CutOver>(), Ok(policy));
            assert_eq!(CutOver::from_wire(policy.to_wire()), Some(policy));
        }
        assert_eq!(CutOver::from_wire(0), Some(CutOver::AllReady));
        assert_eq!(CutOver::wire_name(99), "unknown (99)");
        let err = "all_ready".parse::<CutOver>().unwrap_err().to_string();
        assert!(err.contains("\"all_ready\"") && err.contains("per-region") && err.contains("manual"), "{err}");
    }

    proptest! {
        #![proptest_config(fuzz::config(2000))]

        #[test]
        fn fuzz_cut_over_from_any_text(text in "(?s).{0,12}|all-ready|per-region|manual") {
            match text.parse::<CutOver>() {
                Ok(policy) => prop_assert_eq!(policy.name(), text.as_str()),
                Err(e) => prop_assert!(e.to_string().contains("all-ready"), "{}", e),
            }
        }

        #[test]
        fn fuzz_cut_over_from_any_wire_value(value in any::<i32>()) {
            let name = CutOver::wire_name(value);
            match CutOver::from_wire(value) {
                Some(policy) => prop_assert_eq!(name, policy.name()),
                None => prop_assert!(name.contains(&value.to_string())),
            }
        }
    }
}
