//! One configuration for every property-based test of the workspace.
//!
//! In CI a property test runs a bounded number of cases from a fixed seed, so that a run is
//! repeatable and its time predictable; a failure prints the case, shrunk. A long run is a
//! matter of environment:
//!
//! ```sh
//! AQ_FUZZ_CASES=200000 AQ_FUZZ_SEED=random cargo nextest run --workspace fuzz_
//! ```
//!
//! `AQ_FUZZ_CASES` replaces every test's own case count, `AQ_FUZZ_SEED` is `random` (a new
//! seed each run, printed with any failure) or a number (that seed). Tests that use this are
//! named `fuzz_*`.
//!
//! Config files are fuzzed with [`toml_document`] (any TOML over a config's key names: never a
//! panic) and [`broken_config`] (one key broken in a valid config: the error names that key).

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed};

/// The seed every property test starts from unless `AQ_FUZZ_SEED` says otherwise.
pub const SEED: u64 = 0x0000_a90e_d0c7_2026;

/// A proptest configuration for a test that runs `cases` cases in CI.
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("AQ_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    let rng_seed = match std::env::var("AQ_FUZZ_SEED").as_deref() {
        Ok("random") => RngSeed::Random,
        Ok(n) => RngSeed::Fixed(n.parse().unwrap_or(SEED)),
        Err(_) => RngSeed::Fixed(SEED),
    };
    Config {
        cases,
        rng_seed,
        // Failing cases are printed, not written into the source tree.
        failure_persistence: None,
        ..Config::default()
    }
}

/// What a config key holds, so that [`broken_config`] knows which values are surely wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Any string.
    Text,
    /// An absolute path.
    AbsolutePath,
    /// `IP:PORT`.
    Address,
    /// An `https://` URL.
    HttpsUrl,
    /// A name as `aqueduct_proto::validate_name` allows.
    Name,
    /// A whole number, at least 1.
    Count,
    Bool,
    /// A number in (0, 1].
    Fraction,
    /// A size with units (`512MiB`).
    Size,
    /// A duration with units (`90s`), or whole seconds.
    Duration,
}

impl Kind {
    /// Values of the wrong type or shape for this kind.
    fn wrong(self) -> Vec<toml::Value> {
        use toml::Value as V;
        let mut values =
            vec![V::Array(vec![V::Integer(1)]), V::Table(toml::Table::from_iter([("x".into(), V::Integer(1))]))];
        let text = |s: &[&str]| s.iter().map(|s| V::String(s.to_string())).collect::<Vec<_>>();
        values.extend(match self {
            Kind::Text => vec![V::Integer(7), V::Boolean(true), V::Float(1.5)],
            Kind::AbsolutePath => [vec![V::Integer(7), V::Boolean(false)], text(&["relative/path", ""])].concat(),
            Kind::Address => {
                [vec![V::Integer(7443)], text(&["nowhere", "127.0.0.1", ":7443", "1.2.3.4:99999"])].concat()
            }
            Kind::HttpsUrl => [vec![V::Boolean(true)], text(&["http://hub:7443", "hub:7443"])].concat(),
            Kind::Name => [vec![V::Integer(3)], text(&["Bad Name", "-x", ""])].concat(),
            Kind::Count => {
                [vec![V::Integer(0), V::Integer(-1), V::Float(1.5), V::Boolean(true)], text(&["3"])].concat()
            }
            Kind::Bool => [vec![V::Integer(1)], text(&["true", "yes"])].concat(),
            Kind::Fraction => {
                vec![V::Float(1.5), V::Float(-0.25), V::Float(f64::NAN), V::Boolean(true), V::String("0.5".into())]
            }
            Kind::Size => [vec![V::Integer(5), V::Boolean(true)], text(&["5", "many", "-1GiB", "8Mbit"])].concat(),
            Kind::Duration => {
                [vec![V::Integer(-1), V::Boolean(true)], text(&["soon", "1.5s", "99999999999999999999h"])].concat()
            }
        });
        values
    }
}

/// One key of a config: its dotted path, what it holds, and whether the file must have it.
pub type Key = (&'static str, Kind, bool);

/// A config that breaks one key of `valid` (a TOML text naming every key of `keys`): a value of
/// the wrong type or shape, a required key left out, or an unknown key beside it (the key with
/// `_x` added). Yields the text and the name an error about it must quote.
pub fn broken_config(valid: &'static str, keys: &'static [Key]) -> impl Strategy<Value = (String, String)> {
    use proptest::prelude::*;
    let base: toml::Table = valid.parse().expect("the valid config is TOML");
    (proptest::sample::select(keys), 0usize..64, 0usize..3).prop_map(move |((path, kind, required), pick, how)| {
        let mut doc = base.clone();
        let (tables, name) = match path.rsplit_once('.') {
            Some((tables, name)) => (tables.split('.').collect::<Vec<_>>(), name),
            None => (Vec::new(), path),
        };
        let mut table = &mut doc;
        for t in tables {
            table = table.get_mut(t).and_then(toml::Value::as_table_mut).expect("the valid config has every table");
        }
        let named = match how {
            0 if required => {
                table.remove(name);
                name.to_string()
            }
            1 => {
                table.insert(format!("{name}_x"), toml::Value::Integer(1));
                format!("{name}_x")
            }
            _ => {
                let wrong = kind.wrong();
                table.insert(name.to_string(), wrong[pick % wrong.len()].clone());
                name.to_string()
            }
        };
        (toml::to_string(&doc).expect("a table serialises"), named)
    })
}

/// Any TOML document whose keys are mostly `names` (nested up to three tables deep), with
/// values of any type, some of them plausible for a config (addresses, paths, sizes).
pub fn toml_document(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    use proptest::prelude::*;
    let key = prop_oneof![4 => proptest::sample::select(names).prop_map(str::to_string), 1 => "[a-z_]{1,8}"];
    let leaf = prop_oneof![
        proptest::sample::select(
            &[
                "127.0.0.1:7443",
                "0.0.0.0:0",
                "/var/lib/x",
                "rel",
                "https://h:1",
                "1GiB",
                "90s",
                "0B",
                "",
                "Bad Name",
                "node-1"
            ][..]
        )
        .prop_map(|s| toml::Value::String(s.to_string())),
        ".{0,10}".prop_map(toml::Value::String),
        any::<i64>().prop_map(toml::Value::Integer),
        prop_oneof![Just(0i64), Just(1), Just(-1)].prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
    ];
    let value = leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(toml::Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    });
    let key = prop_oneof![4 => proptest::sample::select(names).prop_map(str::to_string), 1 => "[a-z_]{1,8}"];
    proptest::collection::btree_map(key, value, 0..10)
        .prop_map(|m| toml::to_string(&m.into_iter().collect::<toml::Table>()).unwrap_or_default())
}

/// Whether `message` names `key` as a word of its own (`ca` in "unknown field `ca`" or in a
/// quoted line `ca = 1`, not in "cannot").
pub fn names_key(message: &str, key: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    message
        .match_indices(key)
        .any(|(i, _)| !word(message[..i].chars().next_back()) && !word(message[i + key.len()..].chars().next()))
}

/// A flat table (`KEY = VALUE` lines, as written) whose keys are mostly `names`: values of
/// every TOML kind, numbers of any size, durations and sizes with good and bad units, any text.
/// For the `[limits]` sections of hub and spoke.
pub fn flat_table(names: &'static [&'static str]) -> impl Strategy<Value = Vec<(String, String)>> {
    use proptest::prelude::*;
    let keys = prop_oneof![4 => proptest::sample::select(names).prop_map(String::from), 1 => "[a-z_]{1,24}"];
    let values = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..10_000).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[0-9]{1,22}(ms|s|m|h|B|KiB|MiB|GiB|TB|x|)".prop_map(|s| format!("{s:?}")),
        ".{0,12}".prop_map(|s| format!("{s:?}")),
        Just("[1, 2]".to_string()),
        Just("{ a = 1 }".to_string()),
    ];
    proptest::collection::btree_map(keys, values, 0..6).prop_map(|m| m.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_named_as_a_word() {
        assert!(names_key("unknown field `ca`, expected one of", "ca"));
        assert!(names_key("3 | ca = 1.5", "ca"));
        assert!(names_key("snapshot.parallelism must be at least 1", "parallelism"));
        assert!(!names_key("cannot read the config", "ca"));
        assert!(!names_key("ca_key is missing", "ca"));
    }
}
