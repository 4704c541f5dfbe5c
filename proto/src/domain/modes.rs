//! Options of a dataset that change what a snapshot cuts, as the admin API and `aq` name them.

/// What a snapshot does with symbolic links whose target is outside the dataset's prefix (or
/// in the hub's own files). Either way they are never followed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutsideLinks {
    /// The snapshot fails, naming each such link.
    #[default]
    Fail,
    /// The snapshot leaves them out and lists them with the version.
    Skip,
}

impl std::fmt::Display for OutsideLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutsideLinks::Fail => "fail",
            OutsideLinks::Skip => "skip",
        })
    }
}

impl std::str::FromStr for OutsideLinks {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fail" => Ok(OutsideLinks::Fail),
            "skip" => Ok(OutsideLinks::Skip),
            other => Err(format!("outside-links must be fail or skip, not {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_links_read_back_as_written() {
        for policy in [OutsideLinks::Fail, OutsideLinks::Skip] {
            assert_eq!(policy.to_string().parse::<OutsideLinks>(), Ok(policy));
        }
        assert_eq!(OutsideLinks::default(), OutsideLinks::Fail);
        assert!("sometimes".parse::<OutsideLinks>().unwrap_err().contains("fail or skip"));
    }
}
