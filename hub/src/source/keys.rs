//! What a key under a dataset's prefix becomes in a version: pure rules, no I/O.
//!
//! A file's path in a version is its key relative to the dataset's prefix, exactly: no
//! encoding, no normalisation, so that the path a pod opens is the name the object has in the
//! source, whatever characters it holds (`#`, `%`, spaces, Unicode, newlines). A key that no
//! path can stand for is not dropped: [`classify_key`] says why, and the snapshot lists it
//! with the version. An S3 "folder" marker (`dir/`, 0 bytes) holds nothing and is ignored.
//! [`clashes`] finds files that a directory of the same name shadows (`tok` beside `tok/x`):
//! a filesystem cannot hold both.

use std::collections::BTreeSet;

/// The longest name a directory entry may have on Linux (`NAME_MAX`): a longer segment could
/// not be looked up through the FUSE view.
pub const NAME_MAX: usize = 255;

/// What a listed key becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyClass<'a> {
    /// A file of the version, at this path (the relative key itself).
    File(&'a str),
    /// An S3 "folder" marker: a 0-byte object whose key ends with `/`. Ignored.
    FolderMarker,
    /// Not a file of the version; why, for people.
    Refused(String),
}

/// `key` relative to `prefix` (a clean path, or empty for the whole source); `None` if the key
/// is not under the prefix. The prefix's own marker (`prefix/`) is the empty relative key.
pub fn relative_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(key);
    }
    key.strip_prefix(prefix)?.strip_prefix('/')
}

/// The key of the file at `path` of a dataset with `prefix`: the inverse of [`relative_key`].
pub fn key_of(prefix: &str, path: &str) -> String {
    if prefix.is_empty() { path.to_string() } else { format!("{prefix}/{path}") }
}

/// Classifies a key relative to the dataset's prefix (see [`relative_key`]) of an object of
/// `size` bytes. What it accepts passes `aqueduct_proto::domain::validate_path` and is the
/// relative key unchanged.
pub fn classify_key(rel: &str, size: u64) -> KeyClass<'_> {
    if rel.is_empty() || rel.ends_with('/') {
        return if size == 0 {
            KeyClass::FolderMarker
        } else {
            KeyClass::Refused(format!(
                "its key ends with '/' but it holds {size} bytes; a file's name cannot end with '/' (rename the object)"
            ))
        };
    }
    if rel.contains('\0') {
        return KeyClass::Refused("its name holds a NUL character, which no file name can hold".into());
    }
    if rel.starts_with('/') || rel.contains("//") {
        return KeyClass::Refused(
            "its key has an empty segment ('//' or a '/' right after the prefix), which no file path can have \
             (rename the object)"
                .into(),
        );
    }
    for segment in rel.split('/') {
        if segment == "." || segment == ".." {
            return KeyClass::Refused(format!(
                "its key has a '{segment}' segment, which a file path cannot have: it would name another \
                 directory (rename the object)"
            ));
        }
        if segment.len() > NAME_MAX {
            return KeyClass::Refused(format!(
                "a segment of its key is {} bytes long; a file name holds at most {NAME_MAX} (rename the object)",
                segment.len()
            ));
        }
    }
    KeyClass::File(rel)
}

/// A file that a directory of the same name shadows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clash {
    /// The file's path.
    pub path: String,
    /// How many files the directory holds, and the first of them.
    pub under: usize,
    pub example: String,
}

impl Clash {
    /// Why the file is not in the version, for people.
    pub fn reason(&self) -> String {
        format!(
            "a directory of the same name holds {} file(s) (such as {:?}); a path cannot be both a file and a \
             directory, so the directory is kept (rename one of them)",
            self.under, self.example
        )
    }
}

/// Every path of `paths` that is also a directory of another path (`tok` beside `tok/x`), in
/// order. Such a file is left out of the version; the directory's files stay.
pub fn clashes<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<Clash> {
    let set: BTreeSet<&str> = paths.into_iter().collect();
    let mut found = Vec::new();
    for &path in &set {
        let dir = format!("{path}/");
        let mut under = set.range::<str, _>((std::ops::Bound::Included(dir.as_str()), std::ops::Bound::Unbounded));
        let Some(first) = under.next().filter(|p| p.starts_with(&dir)) else { continue };
        let count = 1 + under.take_while(|p| p.starts_with(&dir)).count();
        found.push(Clash { path: path.to_string(), under: count, example: first.to_string() });
    }
    found
}

#[cfg(test)]
mod tests {
    use aqueduct_proto::domain::validate_path;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn keys_become_their_own_paths() {
        for rel in ["a", "x#123", "100%.csv", "a b/c d", "한글/x.txt", "line\nbreak", "a+b", "..a", ".hidden", "a."] {
            assert_eq!(classify_key(rel, 5), KeyClass::File(rel), "{rel:?}");
            assert!(validate_path(rel).is_ok(), "{rel:?}");
        }
    }

    #[test]
    fn markers_are_ignored_and_bad_keys_say_why() {
        assert_eq!(classify_key("dir/", 0), KeyClass::FolderMarker);
        assert_eq!(classify_key("", 0), KeyClass::FolderMarker);
        let refused = |rel: &str, size, word: &str| match classify_key(rel, size) {
            KeyClass::Refused(why) => assert!(why.contains(word), "{rel:?}: {why}"),
            other => panic!("{rel:?} was {other:?}"),
        };
        refused("dir/", 3, "ends with '/'");
        refused("./dot.txt", 1, "'.' segment");
        refused("a/../b", 1, "'..' segment");
        refused("a//b", 1, "empty segment");
        refused("/abs", 1, "empty segment");
        refused(&"n".repeat(256), 1, "256 bytes");
        refused("a\0b", 1, "NUL");
        assert_eq!(classify_key(&"n".repeat(255), 1), KeyClass::File("n".repeat(255).as_str()));
    }

    #[test]
    fn relative_keys_round_trip() {
        assert_eq!(relative_key("llm", "llm/a/b"), Some("a/b"));
        assert_eq!(relative_key("llm", "llm/"), Some(""));
        assert_eq!(relative_key("llm", "llmx/a"), None);
        assert_eq!(relative_key("llm", "llm"), None);
        assert_eq!(relative_key("", "a"), Some("a"));
        assert_eq!(key_of("llm", "a/b"), "llm/a/b");
        assert_eq!(key_of("", "a/b"), "a/b");
    }

    #[test]
    fn a_file_beside_a_directory_of_its_name_clashes() {
        let found = clashes(["tok", "tok-a", "tok/x", "tok/y/z", "toka", "a", "a.b", "b/c"]);
        assert_eq!(found, [Clash { path: "tok".into(), under: 2, example: "tok/x".into() }]);
        assert!(found[0].reason().contains("tok/x"));
        assert!(clashes(["a/b", "a/c", "ab"]).is_empty());
        let nested = clashes(["a", "a/b", "a/b/c"]);
        assert_eq!(nested.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(), ["a", "a/b"]);
    }

    fn key_strategy() -> impl Strategy<Value = (String, String)> {
        let segment = prop_oneof![
            Just(String::new()),
            Just(".".to_string()),
            Just("..".to_string()),
            "[a-z#% +\u{e9}\u{d55c}\n.]{1,6}",
            "\\PC{0,12}",
            proptest::collection::vec(any::<char>(), 0..8).prop_map(|c| c.into_iter().collect::<String>()),
        ];
        let key = proptest::collection::vec(segment.clone(), 0..6).prop_map(|s| s.join("/"));
        let prefix = prop_oneof![Just(String::new()), Just("llm".to_string()), Just("a/b".to_string())];
        (prefix, key)
    }

    proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(2000))]

        /// Any key, under any prefix: never a panic; what is accepted is a valid path, and its
        /// key is the key listed.
        #[test]
        fn fuzz_key_to_manifest_path((prefix, tail) in key_strategy(), size in 0u64..3, under in any::<bool>()) {
            let key = if under { key_of(&prefix, &tail) } else { tail.clone() };
            if let Some(rel) = relative_key(&prefix, &key) {
                match classify_key(rel, size) {
                    KeyClass::File(path) => {
                        prop_assert!(validate_path(path).is_ok(), "{path:?}");
                        prop_assert_eq!(key_of(&prefix, path), key.clone());
                        let again = key_of(&prefix, path);
                        prop_assert_eq!(relative_key(&prefix, &again), Some(path));
                    }
                    KeyClass::FolderMarker => prop_assert!(size == 0 && (rel.is_empty() || rel.ends_with('/'))),
                    KeyClass::Refused(why) => prop_assert!(!why.is_empty()),
                }
            }
        }

        /// Clash detection agrees with its definition on arbitrary path sets.
        #[test]
        fn fuzz_clashes(paths in proptest::collection::btree_set("[ab/]{1,5}", 0..12)) {
            let found: BTreeSet<String> = clashes(paths.iter().map(String::as_str)).into_iter().map(|c| c.path).collect();
            for p in &paths {
                let shadowed = paths.iter().any(|q| q.starts_with(&format!("{p}/")));
                prop_assert_eq!(found.contains(p), shadowed, "{:?}", p);
            }
        }
    }
}
