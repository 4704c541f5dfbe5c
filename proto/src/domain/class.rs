//! A rollout's class (`aq rollout --class`, the status's `class`): which rollouts get a
//! region's link first when several run at once. Urgent transfers draw from the region's budget
//! first, normal next, background only what is left; reads of pods that miss stay above all
//! three. The class only orders who draws: every class draws from the one budget.

use std::fmt;
use std::str::FromStr;

use crate::hub::v1 as pb;

/// Ordered from the lowest to the highest: `Class::Urgent > Class::Background`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Only what the other classes leave of the budget.
    Background,
    /// The default.
    #[default]
    Normal,
    /// The link first (after pod reads).
    Urgent,
}

impl Class {
    /// Lowest first.
    pub const ALL: [Class; 3] = [Class::Background, Class::Normal, Class::Urgent];

    pub fn name(self) -> &'static str {
        match self {
            Class::Background => "background",
            Class::Normal => "normal",
            Class::Urgent => "urgent",
        }
    }

    /// The next class up (a rollout behind its deadline is raised one step); urgent stays.
    pub fn raised(self) -> Class {
        match self {
            Class::Background => Class::Normal,
            Class::Normal | Class::Urgent => Class::Urgent,
        }
    }

    pub fn to_wire(self) -> i32 {
        match self {
            Class::Background => pb::RolloutClass::Background,
            Class::Normal => pb::RolloutClass::Normal,
            Class::Urgent => pb::RolloutClass::Urgent,
        }
        .into()
    }

    /// The class sent (unspecified is normal, as the contract says); None for a value this
    /// build does not know.
    pub fn from_wire(value: i32) -> Option<Self> {
        match pb::RolloutClass::try_from(value).ok()? {
            pb::RolloutClass::Unspecified | pb::RolloutClass::Normal => Some(Class::Normal),
            pb::RolloutClass::Background => Some(Class::Background),
            pb::RolloutClass::Urgent => Some(Class::Urgent),
        }
    }

    /// How the status names a class the hub sent (`unknown (7)` for one it does not know).
    pub fn wire_name(value: i32) -> String {
        Self::from_wire(value).map_or_else(|| format!("unknown ({value})"), |c| c.name().to_string())
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{input:?} is not a rollout class: write urgent (the link first), normal (the default) or \
     background (only what the others leave)"
)]
pub struct ClassError {
    pub input: String,
}

impl FromStr for Class {
    type Err = ClassError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| ClassError { input: s.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn classes_read_back_cross_the_wire_and_rise() {
        for class in Class::ALL {
            assert_eq!(class.to_string().parse::<Class>(), Ok(class));
            assert_eq!(Class::from_wire(class.to_wire()), Some(class));
            assert!(class.raised() >= class);
        }
        assert_eq!(Class::from_wire(0), Some(Class::Normal));
        assert_eq!(Class::default(), Class::Normal);
        assert!(Class::Urgent > Class::Normal && Class::Normal > Class::Background);
        assert_eq!(Class::Background.raised(), Class::Normal);
        assert_eq!(Class::Urgent.raised(), Class::Urgent);
        assert_eq!(Class::wire_name(99), "unknown (99)");
        let err = "high".parse::<Class>().unwrap_err().to_string();
        assert!(err.contains("\"high\"") && err.contains("urgent") && err.contains("background"), "{err}");
    }

    proptest! {
        #![proptest_config(fuzz::config(2000))]

        #[test]
        fn fuzz_class_from_any_text(text in "(?s).{0,12}|urgent|normal|background") {
            match text.parse::<Class>() {
                Ok(class) => prop_assert_eq!(class.name(), text.as_str()),
                Err(e) => prop_assert!(e.to_string().contains("urgent"), "{}", e),
            }
        }

        #[test]
        fn fuzz_class_from_any_wire_value(value in any::<i32>()) {
            let name = Class::wire_name(value);
            match Class::from_wire(value) {
                Some(class) => prop_assert_eq!(name, class.name()),
                None => prop_assert!(name.contains(&value.to_string())),
            }
        }
    }
}
