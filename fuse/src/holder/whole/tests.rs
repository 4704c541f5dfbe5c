//! Whole copies: the pure plans (what to make, verify, evict, offer on open) and copies made,
//! checked, bounded and removed on a real directory.

use proptest::prelude::any;

use super::*;

fn cand(key: &str, size: u64, all_local: bool, on_disk: bool, verified: bool) -> Candidate {
    Candidate { key: key.into(), size, all_local, on_disk, verified }
}

#[test]
fn a_file_opened_without_a_copy_is_offered_unless_queued_or_offered_just_now() {
    let now = Instant::now();
    assert!(offer_on_open(false, None, now), "first open");
    assert!(!offer_on_open(true, None, now), "already waiting in the queue");
    assert!(!offer_on_open(false, Some(now), now + OFFER_ON_OPEN_EVERY / 2), "offered just now");
    assert!(offer_on_open(false, Some(now), now + OFFER_ON_OPEN_EVERY), "its chunks may have come since");
    // A clock that went back never blocks an offer for ever.
    assert!(!offer_on_open(false, Some(now + OFFER_ON_OPEN_EVERY), now));
}

#[test]
fn plan_verifies_old_copies_and_assembles_local_files_that_fit() {
    let files = [
        cand("a", 10, true, false, false),  // assemble
        cand("b", 10, false, false, false), // chunks missing: nothing
        cand("c", 10, true, true, false),   // left by an earlier holder: verify
        cand("d", 10, true, true, true),    // verified already: nothing
        cand("a", 10, true, false, false),  // same content as a: once
        cand("e", 0, true, false, false),   // empty: nothing
        cand("f", 100, true, false, false), // over the budget: nothing
        cand("g", 50, true, false, false),  // exactly the budget: assemble
    ];
    assert_eq!(
        plan(&files, 50),
        [Action::Assemble("a".into()), Action::Verify("c".into()), Action::Assemble("g".into())]
    );
    assert!(plan(&files, 0).iter().all(|a| matches!(a, Action::Verify(_))));
}

#[test]
fn eviction_removes_the_least_recently_opened_until_the_new_copy_fits() {
    let held = |key: &str, bytes, last_opened| Held { key: key.into(), bytes, last_opened };
    let copies = [held("old", 30, 1), held("new", 30, 9), held("never", 30, 0), held("mid", 30, 5)];
    assert!(to_evict(&copies, 200, 40, "x").is_empty(), "everything fits");
    assert_eq!(to_evict(&copies, 100, 30, "x"), ["never", "old"]);
    assert_eq!(to_evict(&copies, 120, 1, "x"), ["never"]);
    // The copy being made room for is never removed; too big for any room: all the others.
    assert_eq!(to_evict(&copies, 10, 40, "mid"), ["never", "old", "new"]);
}

fn entry(chunks: &[&[u8]]) -> FileEntry {
    let mut offset = 0;
    let refs = chunks
        .iter()
        .map(|c| {
            let r = ChunkRef { digest: Digest::of(c), offset, length: c.len() as u32 };
            offset += c.len() as u64;
            r
        })
        .collect();
    FileEntry {
        path: "m.bin".into(),
        object: "m.bin".into(),
        size: offset,
        mode: 0o644,
        mtime_unix_ms: 0,
        chunks: refs,
    }
}

fn store_chunks(store: &Path, chunks: &[&[u8]]) {
    for c in chunks {
        let p = aqueduct_core::layout::chunk_path(store, &Digest::of(c).to_hex());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, c).unwrap();
    }
}

#[test]
fn copies_are_assembled_verified_read_only_and_checked_again_by_a_new_holder() {
    let store = tempfile::tempdir().unwrap();
    let chunks: [&[u8]; 3] = [b"first chunk ", b"second ", b"third"];
    store_chunks(store.path(), &chunks);
    let file = entry(&chunks);
    let key = file.root().to_hex();
    let whole = WholeFiles::start(store.path(), 1 << 20).unwrap();
    assert!(whole.open(&file).is_none(), "no copy yet");
    whole.work(std::slice::from_ref(&file));
    let path = store.path().join("files").join(&key);
    assert_eq!(std::fs::read(&path).unwrap(), chunks.concat());
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o444);
    assert!(whole.open(&file).is_some());
    assert_eq!(whole.counters().ready, 1);
    assert_eq!(whole.counters().disk_bytes, file.size, "what the copy takes on disk is reported");

    // The spoke's limit (its disk quota) below the copy: removed at once, none made again
    // while it holds; raised again, the copy comes back.
    whole.limit(file.size - 1);
    assert!(!path.exists() && whole.open(&file).is_none());
    assert_eq!((whole.counters().ready, whole.counters().disk_bytes), (0, 0));
    whole.work(std::slice::from_ref(&file));
    assert!(!path.exists(), "a copy past the limit was made");
    whole.limit(u64::MAX);
    whole.work(std::slice::from_ref(&file));
    assert!(whole.open(&file).is_some());

    // A new holder does not trust the copy until it hashed it; a flipped byte is caught
    // and the copy made again from the store.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[13] ^= 1;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let again = WholeFiles::start(store.path(), 1 << 20).unwrap();
    // Counted before the open, which offers the file to the background thread (that may
    // reject the copy at once).
    let found = again.counters();
    assert_eq!((found.ready_bytes, found.disk_bytes), (0, file.size), "a copy not verified yet still takes disk");
    assert!(again.open(&file).is_none(), "an unverified copy is not passed through");
    again.work(std::slice::from_ref(&file));
    assert_eq!(again.counters().rejected, 1);
    assert_eq!(std::fs::read(&path).unwrap(), chunks.concat());
    assert!(again.open(&file).is_some());

    // A rotten chunk in the store: no copy is made.
    let store2 = tempfile::tempdir().unwrap();
    store_chunks(store2.path(), &chunks);
    let p = aqueduct_core::layout::chunk_path(store2.path(), &Digest::of(chunks[1]).to_hex());
    std::fs::write(p, b"secoxd ").unwrap();
    let w = WholeFiles::start(store2.path(), 1 << 20).unwrap();
    w.work(std::slice::from_ref(&file));
    assert!(w.open(&file).is_none());
    assert!(!store2.path().join("files").join(&key).exists());
    assert!(WholeFiles::start(store2.path(), 0).is_none(), "a budget of 0 turns them off");
}

proptest::proptest! {
    #![proptest_config(aqueduct_testkit::fuzz::config(256))]

    /// Whatever the spoke's limit (any u64) and the copies held: what stays (with the incoming
    /// copy) fits it unless only the kept copy is left, and no copy stays that was opened less
    /// recently than one removed.
    #[test]
    fn fuzz_eviction_fits_any_limit_least_recently_opened_first(
        copies in proptest::collection::vec((any::<u64>(), 0u64..1000), 0..12),
        budget in any::<u64>(),
        incoming in any::<u64>(),
        keep_first in any::<bool>(),
    ) {
        let held: Vec<Held> = copies
            .iter()
            .enumerate()
            .map(|(i, &(bytes, last_opened))| Held { key: format!("k{i}"), bytes, last_opened })
            .collect();
        let keep = if keep_first { "k0" } else { "" };
        let evicted = to_evict(&held, budget, incoming, keep);
        proptest::prop_assert!(!evicted.iter().any(|k| k == keep), "the kept copy was evicted");
        let (gone, stay): (Vec<&Held>, Vec<&Held>) = held.iter().partition(|c| evicted.contains(&c.key));
        let total: u128 = stay.iter().map(|c| u128::from(c.bytes)).sum::<u128>() + u128::from(incoming);
        let others_left = stay.iter().any(|c| c.key != keep);
        proptest::prop_assert!(total <= u128::from(budget) || !others_left, "over the limit with copies left to evict");
        for g in &gone {
            for s in stay.iter().filter(|c| c.key != keep) {
                proptest::prop_assert!((g.last_opened, &g.key) <= (s.last_opened, &s.key), "{} went before {}", g.key, s.key);
            }
        }
    }
}
