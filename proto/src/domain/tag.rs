//! Tag names: the one rule every part (hub, spokes, CLI) checks them by.

/// Checks a tag name (`stable`, `canary`): 1 to 63 characters of `a-z`, `0-9` and `-`,
/// starting with a letter and ending with a letter or digit, and not a word a version
/// selector already means (`latest`, `active`, `vN`), so that `DATASET@NAME` is never
/// ambiguous.
pub fn validate_tag(name: &str) -> Result<(), TagNameError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let bad = |why: &'static str| Err(TagNameError { name: name.to_string(), why });
    if name.is_empty() || name.len() > 63 || !name.chars().all(ok_char) {
        return bad("use 1 to 63 characters of a-z, 0-9 and '-'");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) || name.ends_with('-') {
        return bad("start with a letter and end with a letter or digit");
    }
    let numbered = name.strip_prefix('v').is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if name == "latest" || name == "active" || numbered {
        return bad("\"latest\", \"active\" and vN already select versions");
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tag name {name:?} is not valid: {why} (e.g. stable, canary, prod-eu)")]
pub struct TagNameError {
    pub name: String,
    pub why: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_names_never_read_as_versions() {
        for ok in ["stable", "canary", "prod-eu", "v2-rc", "a", "vx"] {
            assert_eq!(validate_tag(ok), Ok(()), "{ok}");
        }
        for bad in ["", "latest", "active", "v3", "v0", "Stable", "-a", "a-", "9a", "a_b", "a.b", &"a".repeat(64)] {
            let err = validate_tag(bad).unwrap_err().to_string();
            assert!(err.contains("tag name") && err.contains("e.g. stable"), "{bad}: {err}");
        }
    }

    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(fuzz::config(3000))]

        /// Any text: a tag name or an error naming it, never a panic; a name accepted never
        /// reads as a version selector.
        #[test]
        fn fuzz_tag_names_from_any_text(name in "(?s).{0,70}|[a-z][a-z0-9-]{0,64}|v[0-9]{1,4}") {
            match validate_tag(&name) {
                Ok(()) => {
                    prop_assert!(name.len() <= 63 && name != "latest" && name != "active");
                    prop_assert!(!(name.starts_with('v') && name[1..].chars().all(|c| c.is_ascii_digit())));
                }
                Err(e) => prop_assert!(e.to_string().contains("tag name")),
            }
        }
    }
}
