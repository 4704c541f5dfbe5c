//! Revocation: which certificates an installation no longer accepts, as a list of entries
//! the hub keeps and sends to its spokes, and the pure rule that matches a certificate
//! against it.
//!
//! An entry names a subject *prefix* (a URI such as `spiffe://aqueduct/region/eu/node/n1`,
//! `spiffe://aqueduct/region/eu` for a whole region, `spiffe://aqueduct/admin/alice`) and a
//! time: every certificate whose URI is the prefix or lies below it (on a `/` boundary:
//! `region/eu` covers `region/eu/node/n1`, never `region/eu-west`) and that was issued
//! (its notBefore) at or before that time is refused. A certificate issued later for the same
//! subject is accepted again: a revoked node can enrol anew, and `region revoke-all` is one
//! entry whatever the region's nodes. The rule needs no serial numbers and holds for any
//! identity scheme whose URIs nest by `/`.
//!
//! The list is bounded where it is made (the hub refuses an entry past its bounds) and
//! [`compact`]ed: an entry that another one covers (a prefix above it, revoked as late or
//! later) says nothing more and is dropped.

/// One revocation: "every certificate of `prefix` (or below it) issued at or before
/// `revoked_at_unix_s` is refused".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// The subject URI prefix, e.g. `spiffe://aqueduct/region/eu`.
    pub prefix: String,
    /// Unix seconds (X.509 times have whole seconds).
    pub revoked_at_unix_s: i64,
    /// Who revoked it (an admin's name), for `aq revocations`.
    pub by: String,
    pub reason: String,
}

/// The list as one installation knows it: `generation` grows with every change, so that a
/// spoke keeps the newest it was sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationList {
    pub generation: u64,
    pub entries: Vec<Revocation>,
}

/// What a certificate says that revocation looks at: its URI subject alternative names and
/// its notBefore (unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSubject {
    pub uris: Vec<String>,
    pub not_before_unix_s: i64,
}

/// The URIs of identities start so; an entry's prefix must name something below it.
pub const URI_ROOT: &str = "spiffe://aqueduct/";

/// `prefix` covers `uri`: they are equal, or `uri` continues `prefix` after a `/`.
pub fn covers(prefix: &str, uri: &str) -> bool {
    uri.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Checks an entry's prefix: below [`URI_ROOT`], no empty segment, no trailing `/`, printable
/// ASCII, at most 256 bytes.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    let Some(rest) = prefix.strip_prefix(URI_ROOT) else {
        return Err(format!("{prefix:?} is not an Aqueduct identity URI: it must start with {URI_ROOT}"));
    };
    if prefix.len() > 256 || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{prefix:?} must be at most 256 printable ASCII characters"));
    }
    if rest.is_empty() || rest.split('/').any(str::is_empty) {
        return Err(format!(
            "{prefix:?} has an empty part: name one identity or a prefix of one, e.g. {URI_ROOT}region/eu"
        ));
    }
    Ok(())
}

impl Revocation {
    /// This entry refuses `cert`.
    pub fn refuses(&self, cert: &CertSubject) -> bool {
        cert.not_before_unix_s <= self.revoked_at_unix_s && cert.uris.iter().any(|uri| covers(&self.prefix, uri))
    }

    /// This entry makes `other` redundant: every certificate `other` refuses, this one does.
    pub fn supersedes(&self, other: &Revocation) -> bool {
        covers(&self.prefix, &other.prefix) && self.revoked_at_unix_s >= other.revoked_at_unix_s
    }
}

impl RevocationList {
    /// The entry that refuses `cert`, if one does.
    pub fn refusing(&self, cert: &CertSubject) -> Option<&Revocation> {
        self.entries.iter().find(|r| r.refuses(cert))
    }

    /// The entries that matter to certificates below `scope` (those whose prefix is `scope`,
    /// lies below it, or covers it): what a region's spokes need of the list.
    pub fn scoped(&self, scope: &str) -> RevocationList {
        RevocationList {
            generation: self.generation,
            entries: self
                .entries
                .iter()
                .filter(|r| covers(scope, &r.prefix) || covers(&r.prefix, scope))
                .cloned()
                .collect(),
        }
    }
}

/// Drops the entries another one supersedes (of two equal ones, the first stays); keeps the
/// order of the rest. Refuses exactly the certificates `entries` refuses.
pub fn compact(entries: Vec<Revocation>) -> Vec<Revocation> {
    let mut kept: Vec<Revocation> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let redundant = entries
            .iter()
            .enumerate()
            .any(|(j, other)| j != i && other.supersedes(entry) && (!entry.supersedes(other) || j < i));
        if !redundant {
            kept.push(entry.clone());
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    fn entry(prefix: &str, at: i64) -> Revocation {
        Revocation { prefix: prefix.into(), revoked_at_unix_s: at, by: "admin".into(), reason: String::new() }
    }

    fn cert(uri: &str, not_before: i64) -> CertSubject {
        CertSubject { uris: vec![uri.into()], not_before_unix_s: not_before }
    }

    #[test]
    fn prefixes_cover_on_slash_boundaries() {
        let region = "spiffe://aqueduct/region/eu";
        assert!(covers(region, region));
        assert!(covers(region, "spiffe://aqueduct/region/eu/node/n1"));
        assert!(!covers(region, "spiffe://aqueduct/region/eu-west"));
        assert!(!covers(region, "spiffe://aqueduct/region/e"));
        assert!(!covers("spiffe://aqueduct/admin/al", "spiffe://aqueduct/admin/alice"));
    }

    #[test]
    fn certificates_issued_after_the_revocation_are_accepted() {
        let list = RevocationList { generation: 1, entries: vec![entry("spiffe://aqueduct/region/eu/node/n1", 100)] };
        assert!(list.refusing(&cert("spiffe://aqueduct/region/eu/node/n1", 99)).is_some());
        assert!(list.refusing(&cert("spiffe://aqueduct/region/eu/node/n1", 100)).is_some());
        assert!(list.refusing(&cert("spiffe://aqueduct/region/eu/node/n1", 101)).is_none());
        assert!(list.refusing(&cert("spiffe://aqueduct/region/eu/node/n2", 50)).is_none());
        assert!(list.refusing(&cert("spiffe://aqueduct/region/eu", 50)).is_none());
    }

    #[test]
    fn a_region_entry_covers_every_node_and_the_region_certificate() {
        let list = RevocationList { generation: 1, entries: vec![entry("spiffe://aqueduct/region/eu", 100)] };
        assert!(list.refusing(&cert("spiffe://aqueduct/region/eu", 1)).is_some());
        assert!(list.refusing(&cert("spiffe://aqueduct/region/eu/node/n7", 1)).is_some());
        assert!(list.refusing(&cert("spiffe://aqueduct/region/us", 1)).is_none());
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(validate_prefix("spiffe://aqueduct/region/eu").is_ok());
        assert!(validate_prefix("spiffe://aqueduct/admin/bob").is_ok());
        for bad in [
            "spiffe://aqueduct/",
            "spiffe://aqueduct/region/",
            "spiffe://other/x",
            "spiffe://aqueduct/a//b",
            "spiffe://aqueduct/a b",
        ] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scoping_keeps_what_a_region_needs() {
        let list = RevocationList {
            generation: 3,
            entries: vec![
                entry("spiffe://aqueduct/region/eu/node/n1", 1),
                entry("spiffe://aqueduct/region/us", 1),
                entry("spiffe://aqueduct/admin/bob", 1),
                entry("spiffe://aqueduct/region", 1),
            ],
        };
        let eu = list.scoped("spiffe://aqueduct/region/eu");
        assert_eq!(eu.generation, 3);
        let prefixes: Vec<_> = eu.entries.iter().map(|e| e.prefix.as_str()).collect();
        assert_eq!(prefixes, ["spiffe://aqueduct/region/eu/node/n1", "spiffe://aqueduct/region"]);
    }

    #[test]
    fn compaction_drops_what_a_wider_later_entry_says() {
        let entries = vec![
            entry("spiffe://aqueduct/region/eu/node/n1", 10),
            entry("spiffe://aqueduct/region/eu", 20),
            entry("spiffe://aqueduct/region/eu/node/n2", 30),
            entry("spiffe://aqueduct/region/eu", 20),
        ];
        let prefixes: Vec<_> = compact(entries).into_iter().map(|e| (e.prefix, e.revoked_at_unix_s)).collect();
        assert_eq!(
            prefixes,
            [("spiffe://aqueduct/region/eu".to_string(), 20), ("spiffe://aqueduct/region/eu/node/n2".to_string(), 30)]
        );
    }

    fn uri() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof!["region", "eu", "eu-west", "node", "n1", "n", "admin"], 1..5)
            .prop_map(|parts| format!("{URI_ROOT}{}", parts.join("/")))
    }

    fn entries() -> impl Strategy<Value = Vec<Revocation>> {
        proptest::collection::vec((uri(), 0i64..10).prop_map(|(p, t)| entry(&p, t)), 0..8)
    }

    proptest! {
        #![proptest_config(fuzz::config(2000))]

        /// Compaction refuses exactly what the full list refuses, and leaves no entry that
        /// another one supersedes.
        #[test]
        fn fuzz_revocation_compaction_keeps_the_meaning(entries in entries(), certs in proptest::collection::vec((uri(), 0i64..12), 1..8)) {
            let full = RevocationList { generation: 1, entries: entries.clone() };
            let small = RevocationList { generation: 1, entries: compact(entries) };
            for (u, t) in certs {
                let c = cert(&u, t);
                prop_assert_eq!(full.refusing(&c).is_some(), small.refusing(&c).is_some(), "{:?}", c);
            }
            for (i, a) in small.entries.iter().enumerate() {
                for (j, b) in small.entries.iter().enumerate() {
                    prop_assert!(i == j || !a.supersedes(b), "{:?} supersedes {:?}", a, b);
                }
            }
        }

        /// Matching is a `/`-boundary prefix rule and a time rule, nothing else; and the
        /// scoped list decides like the full one for any certificate under the scope.
        #[test]
        fn fuzz_revocation_matching(entries in entries(), u in uri(), t in 0i64..12, scope in uri()) {
            let list = RevocationList { generation: 1, entries };
            let c = cert(&u, t);
            let expected = list.entries.iter().any(|e| {
                t <= e.revoked_at_unix_s
                    && (u == e.prefix || (u.len() > e.prefix.len() && u.starts_with(&e.prefix) && u.as_bytes()[e.prefix.len()] == b'/'))
            });
            prop_assert_eq!(list.refusing(&c).is_some(), expected);
            if covers(&scope, &u) {
                prop_assert_eq!(list.scoped(&scope).refusing(&c).is_some(), expected);
            }
        }
    }
}
