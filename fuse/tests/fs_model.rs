//! `VersionFs` against a plain model: arbitrary file trees (shared directories, odd names,
//! empty files, deep paths), cut into arbitrary chunk tilings (chunks shared within and across
//! files), served by a chunk source that may serve rotten bytes for some content and by a
//! manifest that may lie about a chunk's length. The model is a map from path to bytes (and
//! each file's mode and mtime); every lookup, readdir, getattr, xattr, statfs and read at any
//! offset and size must agree with it, and a read touching a rotten or mislabelled chunk must
//! fail, never return bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use aqueduct_fuse::fs::{
    Attr, ChunkCache, ChunkSource, FsError, Ino, Kind, ROOT, ReadPattern, Stats, VersionFs, XATTR_DATASET, XATTR_ROOT,
    XATTR_VERSION,
};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{ChunkRef, ChunkerParams, Digest, FileEntry, Manifest};
use aqueduct_testkit::{fuzz, noise};
use proptest::prelude::*;

/// A chunk's content: its length and a seed; equal pairs are one chunk (one digest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Content {
    len: u32,
    seed: u8,
}

impl Content {
    fn bytes(self) -> Vec<u8> {
        noise(self.len as usize, u64::from(self.seed) + 1)
    }
}

#[derive(Clone, Debug)]
struct ChunkSpec {
    content: Content,
    /// The length the manifest says, when it lies about it.
    declared: Option<u32>,
}

#[derive(Clone, Debug)]
struct FileSpec {
    path: String,
    chunks: Vec<ChunkSpec>,
    mode: u32,
    mtime: i64,
}

/// How a test reads a file: where (a share of the file, or near the end of the u64 range)
/// and how much.
#[derive(Clone, Copy, Debug)]
enum At {
    Share(u16),
    Far(u16),
}

#[derive(Clone, Debug)]
struct Case {
    files: Vec<FileSpec>,
    /// Content served with a byte flipped, every time it is asked for.
    rotten: Option<u8>,
    cache_bytes: u64,
    reads: Vec<(usize, At, u32)>,
    sequential: bool,
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-c]{1,2}",
        1 => Just("x y".to_string()),
        1 => Just("über.bin".to_string()),
        1 => Just("#1%20".to_string()),
        1 => Just("...".to_string()),
        1 => "[^/\u{0}]{1,12}".prop_filter("not . or ..", |n| n != "." && n != ".."),
    ]
}

fn chunk() -> impl Strategy<Value = ChunkSpec> {
    let content = (prop_oneof![1u32..8, 1u32..4000], 0u8..6).prop_map(|(len, seed)| Content { len, seed });
    (content, proptest::option::weighted(0.03, 1u32..4000))
        .prop_map(|(content, lie)| ChunkSpec { content, declared: lie.filter(|&l| l != content.len) })
}

fn file() -> impl Strategy<Value = FileSpec> {
    (proptest::collection::vec(name(), 1..5), proptest::collection::vec(chunk(), 0..6), any::<u32>(), any::<i64>())
        .prop_map(|(parts, chunks, mode, mtime)| FileSpec { path: parts.join("/"), chunks, mode, mtime })
}

fn case() -> impl Strategy<Value = Case> {
    let read = (
        0usize..64,
        prop_oneof![8 => any::<u16>().prop_map(At::Share), 1 => any::<u16>().prop_map(At::Far)],
        prop_oneof![4 => 0u32..9000, 1 => Just(u32::MAX), 1 => any::<u32>()],
    );
    (
        proptest::collection::vec(file(), 0..12),
        proptest::option::weighted(0.2, 0u8..6),
        prop_oneof![Just(0u64), Just(5000), Just(1 << 20)],
        proptest::collection::vec(read, 0..24),
        any::<bool>(),
    )
        .prop_map(|(files, rotten, cache_bytes, reads, sequential)| Case {
            files: tidy(files),
            rotten,
            cache_bytes,
            reads,
            sequential,
        })
}

/// One file per path, and no file where another file's directory is (`a` beside `a/b`):
/// the deeper path stays. (Such manifests are refused; see the test below.)
fn tidy(files: Vec<FileSpec>) -> Vec<FileSpec> {
    let by_path: BTreeMap<String, FileSpec> = files.into_iter().map(|f| (f.path.clone(), f)).collect();
    let dirs: HashSet<&str> =
        by_path.keys().flat_map(|p| p.char_indices().filter(|(_, c)| *c == '/').map(move |(i, _)| &p[..i])).collect();
    by_path.values().filter(|f| !dirs.contains(f.path.as_str())).cloned().collect()
}

/// A chunk of a file, as the model knows it: where the manifest puts it and its bytes, or
/// `None` when no read may return them (rotten, or not of the length the manifest says).
struct Piece {
    offset: u64,
    len: u64,
    bytes: Option<Vec<u8>>,
    digest: Digest,
}

struct Model {
    files: BTreeMap<String, (Vec<Piece>, u32, i64)>,
    dirs: BTreeMap<String, BTreeSet<String>>,
}

impl Model {
    fn size(&self, path: &str) -> u64 {
        self.files[path].0.iter().map(|p| p.len).sum()
    }

    /// What a read of `[offset, offset + size)` must give: the bytes, or an error naming one
    /// of the bad chunks it touches.
    fn read(&self, path: &str, offset: u64, size: u32) -> Result<Vec<u8>, Vec<Digest>> {
        let end = offset.saturating_add(u64::from(size)).min(self.size(path));
        if offset >= end {
            // An empty range touches no chunk.
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for p in &self.files[path].0 {
            if p.offset + p.len <= offset || p.offset >= end {
                continue;
            }
            match &p.bytes {
                Some(bytes) => {
                    let from = offset.max(p.offset) - p.offset;
                    let to = end.min(p.offset + p.len) - p.offset;
                    out.extend_from_slice(&bytes[from as usize..to as usize]);
                }
                None => bad.push(p.digest),
            }
        }
        if bad.is_empty() { Ok(out) } else { Err(bad) }
    }
}

#[derive(Default)]
struct Source {
    chunks: HashMap<Digest, Vec<u8>>,
    rotten: HashSet<Digest>,
}

#[async_trait::async_trait]
impl ChunkSource for Source {
    async fn chunk(&self, digest: &Digest, _length: u32) -> Result<Vec<u8>, FsError> {
        let mut data = self
            .chunks
            .get(digest)
            .cloned()
            .ok_or(FsError::Unavailable { digest: *digest, reason: "not in the test source".into() })?;
        if self.rotten.contains(digest) {
            data[0] ^= 0x40;
        }
        Ok(data)
    }
}

/// The manifest, the source and the model of a case.
fn build(case: &Case) -> (Manifest, Source, Model) {
    let mut source = Source::default();
    let mut entries = Vec::new();
    let mut model = Model { files: BTreeMap::new(), dirs: BTreeMap::from([(String::new(), BTreeSet::new())]) };
    for f in &case.files {
        let (mut refs, mut pieces, mut offset) = (Vec::new(), Vec::new(), 0u64);
        for c in &f.chunks {
            let bytes = c.content.bytes();
            let digest = Digest::of(&bytes);
            let rotten = case.rotten == Some(c.content.seed);
            if rotten {
                source.rotten.insert(digest);
            }
            let len = c.declared.unwrap_or(c.content.len);
            refs.push(ChunkRef { digest, offset, length: len });
            let good = !rotten && c.declared.is_none();
            pieces.push(Piece { offset, len: u64::from(len), bytes: good.then(|| bytes.clone()), digest });
            source.chunks.insert(digest, bytes);
            offset += u64::from(len);
        }
        entries.push(FileEntry {
            path: f.path.clone(),
            object: format!("prefix/{}", f.path),
            size: offset,
            mode: f.mode,
            mtime_unix_ms: f.mtime,
            chunks: refs,
        });
        model.files.insert(f.path.clone(), (pieces, f.mode, f.mtime));
        let parts: Vec<&str> = f.path.split('/').collect();
        for depth in 0..parts.len() {
            let dir = parts[..depth].join("/");
            model.dirs.entry(dir).or_default().insert(parts[depth].to_string());
        }
    }
    let manifest = Manifest::new("fuzz".into(), 3, ChunkerParams::DEFAULT, entries).expect("a tidy tree is valid");
    (manifest, source, model)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") }
}

async fn check(case: Case) -> Result<(), TestCaseError> {
    let (manifest, source, model) = build(&case);
    // What the spoke gets from the hub decodes to the same manifest.
    prop_assert_eq!(&Manifest::try_from(pb::Manifest::from(&manifest)).unwrap(), &manifest);
    let fs = VersionFs::new(manifest.clone(), Arc::new(source), ChunkCache::new(case.cache_bytes));
    let newest = model.files.values().map(|f| f.2).max().unwrap_or(0);

    // Walk the tree from the root through readdir; every entry agrees with lookup, getattr
    // and the model, and every inode is reached exactly once.
    let mut seen: BTreeSet<Ino> = BTreeSet::from([ROOT]);
    let mut inos: BTreeMap<String, Ino> = BTreeMap::from([(String::new(), ROOT)]);
    let mut queue = vec![(String::new(), ROOT, ROOT)];
    while let Some((dir, ino, parent)) = queue.pop() {
        let attr = fs.getattr(ino).unwrap();
        let subdirs = model.dirs[&dir].iter().filter(|n| model.dirs.contains_key(&join(&dir, n))).count();
        prop_assert_eq!(
            attr,
            Attr { ino, kind: Kind::Dir, size: 0, perm: 0o555, mtime_unix_ms: newest, nlink: 2 + subdirs as u32 },
            "directory {:?}",
            dir
        );
        let entries = fs.readdir(ino, 0).unwrap();
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        let mut expected = vec![".", ".."];
        expected.extend(model.dirs[&dir].iter().map(String::as_str));
        prop_assert_eq!(&names, &expected, "readdir of {:?}", dir);
        prop_assert_eq!(entries[0].1.ino, ino);
        prop_assert_eq!(entries[1].1.ino, parent);
        prop_assert_eq!(fs.lookup(ino, ".").unwrap().ino, ino);
        prop_assert_eq!(fs.lookup(ino, "..").unwrap().ino, parent);
        for offset in [1, 2, entries.len(), entries.len() + 3] {
            prop_assert_eq!(fs.readdir(ino, offset).unwrap(), entries[offset.min(entries.len())..].to_vec());
        }
        for (name, child) in &entries[2..] {
            prop_assert_eq!(&fs.lookup(ino, name).unwrap(), child);
            prop_assert_eq!(&fs.getattr(child.ino).unwrap(), child);
            prop_assert!(seen.insert(child.ino), "inode {} reached twice", child.ino);
            let path = join(&dir, name);
            inos.insert(path.clone(), child.ino);
            match model.files.get(&path) {
                Some((_, mode, mtime)) => {
                    let want = Attr {
                        ino: child.ino,
                        kind: Kind::File,
                        size: model.size(&path),
                        perm: (mode & 0o555) as u16,
                        mtime_unix_ms: *mtime,
                        nlink: 1,
                    };
                    prop_assert_eq!(child, &want, "file {:?}", path);
                    prop_assert_eq!(fs.lookup(child.ino, "x"), Err(FsError::NotDir));
                    prop_assert_eq!(fs.readdir(child.ino, 0), Err(FsError::NotDir));
                    prop_assert_eq!(fs.read(child.ino, 0, 1, None).await.is_err(), model.read(&path, 0, 1).is_err());
                    let root = fs.manifest().file(&path).unwrap().root().to_hex();
                    prop_assert_eq!(fs.xattr(child.ino, XATTR_ROOT).unwrap(), root.into_bytes());
                }
                None => {
                    prop_assert!(model.dirs.contains_key(&path), "{:?} is in the view, not in the model", path);
                    prop_assert_eq!(fs.read(child.ino, 0, 1, None).await, Err(FsError::IsDir));
                    queue.push((path, child.ino, ino));
                }
            }
        }
        for absent in ["nope", "A", "a/b", ""] {
            if !model.dirs[&dir].contains(absent) {
                prop_assert_eq!(fs.lookup(ino, absent), Err(FsError::NotFound));
            }
        }
    }
    let all: BTreeSet<Ino> = (ROOT..=fs.max_ino()).collect();
    prop_assert_eq!(&seen, &all, "inodes the tree does not reach");
    prop_assert_eq!(fs.getattr(0), Err(FsError::NotFound));
    prop_assert_eq!(fs.getattr(fs.max_ino() + 1), Err(FsError::NotFound));
    prop_assert_eq!(fs.getattr(u64::MAX), Err(FsError::NotFound));
    prop_assert_eq!(
        fs.stats(),
        Stats { bytes: model.files.keys().map(|p| model.size(p)).sum(), files: model.files.len() as u64 }
    );
    prop_assert_eq!(fs.xattr(ROOT, XATTR_DATASET).unwrap(), b"fuzz".to_vec());
    prop_assert_eq!(fs.xattr(ROOT, XATTR_VERSION).unwrap(), b"3".to_vec());
    prop_assert_eq!(fs.xattr(ROOT, XATTR_ROOT).unwrap(), manifest.root.to_hex().into_bytes());

    // Reads, at once, at any offset and of any size.
    let paths: Vec<&String> = model.files.keys().collect();
    if paths.is_empty() {
        return Ok(());
    }
    let reads: Vec<(&String, u64, u32)> = case
        .reads
        .iter()
        .map(|&(which, at, size)| {
            let path = paths[which % paths.len()];
            let len = model.size(path);
            let offset = match at {
                At::Share(s) => (len + 16) * u64::from(s) / u64::from(u16::MAX),
                At::Far(back) => u64::MAX - u64::from(back),
            };
            (path, offset, size)
        })
        .collect();
    let got =
        futures::future::join_all(reads.iter().map(|&(path, offset, size)| fs.read(inos[path], offset, size, None)))
            .await;
    for ((path, offset, size), got) in reads.iter().zip(got) {
        match (model.read(path, *offset, *size), got) {
            (Ok(want), Ok(got)) => prop_assert!(
                want == got,
                "{:?} at {}+{}: {} bytes, not the {} of the model",
                path,
                offset,
                size,
                got.len(),
                want.len()
            ),
            (Err(bad), Err(FsError::Corrupt { digest, .. } | FsError::WrongLength { digest, .. })) => {
                prop_assert!(
                    bad.contains(&digest),
                    "{:?} at {}+{}: an error names {}, not a bad chunk",
                    path,
                    offset,
                    size,
                    digest
                )
            }
            (want, got) => prop_assert!(
                false,
                "{:?} at {}+{}: the model says {:?}, the view {:?}",
                path,
                offset,
                size,
                want.map(|b| b.len()),
                got.map(|b| b.len())
            ),
        }
    }
    // A sequential reader (read-ahead on) sees each file whole.
    if case.sequential {
        for path in &paths {
            let (pattern, len) = (ReadPattern::default(), model.size(path));
            let mut offset = 0;
            while offset < len {
                let step = 1 + (offset % 1777) as u32;
                match (model.read(path, offset, step), fs.read(inos[*path], offset, step, Some(&pattern)).await) {
                    (Ok(want), Ok(got)) => prop_assert_eq!(want, got),
                    (Err(_), Err(_)) => {}
                    (want, got) => {
                        prop_assert!(false, "{:?} at {}: {:?} vs {:?}", path, offset, want.is_ok(), got.is_ok())
                    }
                }
                offset += u64::from(step);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(fuzz::config(3000))]

    #[test]
    fn fuzz_version_fs_against_a_model(case in case()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(check(case))?;
    }
}

/// Every file of a manifest that validates is a file of the view, reached by its path; a
/// manifest where a file stands where another file's directory is (`a` beside `a/b`) does not
/// validate (the view could show only one of them).
fn reachable(paths: Vec<String>) -> Result<(), TestCaseError> {
    let files: Vec<FileEntry> = paths
        .iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|p| FileEntry {
            path: p.clone(),
            object: p.clone(),
            size: 0,
            mode: 0o644,
            mtime_unix_ms: 0,
            chunks: vec![],
        })
        .collect();
    let Ok(manifest) = Manifest::new("fuzz".into(), 1, ChunkerParams::DEFAULT, files) else {
        let clash = paths.iter().any(|p| paths.iter().any(|q| q.starts_with(&format!("{p}/"))));
        prop_assert!(clash, "a manifest of {:?} was refused", paths);
        return Ok(());
    };
    let fs = VersionFs::new(manifest.clone(), Arc::new(Source::default()), ChunkCache::new(0));
    for f in &manifest.files {
        let mut ino = ROOT;
        for part in f.path.split('/') {
            ino = fs.lookup(ino, part).map_err(|e| TestCaseError::fail(format!("{}: {part}: {e}", f.path)))?.ino;
        }
        prop_assert_eq!(fs.getattr(ino).unwrap().kind, Kind::File, "{}", f.path);
    }
    prop_assert_eq!(
        fs.max_ino() as usize,
        1 + manifest.files.len() + {
            let dirs: BTreeSet<&str> =
                manifest.files.iter().flat_map(|f| f.path.match_indices('/').map(|(i, _)| &f.path[..i])).collect();
            dirs.len()
        }
    );
    Ok(())
}

proptest! {
    #![proptest_config(fuzz::config(2000))]

    #[test]
    fn fuzz_every_file_of_a_valid_manifest_is_reachable(
        paths in proptest::collection::vec(proptest::collection::vec("[ab]", 1..4).prop_map(|p| p.join("/")), 0..8)
    ) {
        reachable(paths)?;
    }
}

/// What a test does to a view: show another version, walk to a path from the root (and hold
/// the inode, as the kernel holds an open file), or read a held inode.
#[derive(Clone, Debug)]
enum Op {
    Switch(usize),
    Walk(usize),
    ReadHeld(usize, u16, u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0usize..4).prop_map(Op::Switch),
        2 => any::<usize>().prop_map(Op::Walk),
        2 => (any::<usize>(), any::<u16>(), prop_oneof![0u32..5000, Just(u32::MAX)]).prop_map(|(h, at, size)| Op::ReadHeld(h, at, size)),
    ]
}

fn plain_files() -> impl Strategy<Value = Vec<FileSpec>> {
    proptest::collection::vec(file(), 0..8).prop_map(|files| {
        tidy(
            files
                .into_iter()
                .map(|mut f| {
                    f.chunks.iter_mut().for_each(|c| c.declared = None);
                    f
                })
                .collect(),
        )
    })
}

/// A view switched between versions, against the models of those versions: new walks from the
/// root see the version shown, inodes held from before read the version they came from, and
/// a version shown again gets its old inodes back.
async fn check_view(versions: Vec<Vec<FileSpec>>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    use aqueduct_fuse::view::View;
    let built: Vec<(Manifest, Model)> = versions
        .iter()
        .enumerate()
        .map(|(i, files)| {
            let (mut m, _, model) = build(&Case {
                files: files.clone(),
                rotten: None,
                cache_bytes: 1 << 20,
                reads: vec![],
                sequential: false,
            });
            m.version = i as u64 + 1;
            (m, model)
        })
        .collect();
    let fs = |i: usize| {
        let (_, source, _) =
            build(&Case { files: versions[i].clone(), rotten: None, cache_bytes: 0, reads: vec![], sequential: false });
        VersionFs::new(built[i].0.clone(), Arc::new(source), ChunkCache::new(1 << 16))
    };
    let view = View::new(fs(0));
    let mut current = 0;
    let mut held: Vec<(usize, String, Ino)> = Vec::new();
    let mut first_ino: HashMap<(usize, String), Ino> = HashMap::new();
    for op in ops {
        match op {
            Op::Switch(i) => {
                let i = i % built.len();
                let names = view.switch(fs(i));
                if i == current {
                    prop_assert!(names.is_none(), "a switch to the version shown");
                } else {
                    let mut want: Vec<String> =
                        built[current].1.dirs[""].iter().chain(&built[i].1.dirs[""]).cloned().collect();
                    want.sort();
                    want.dedup();
                    prop_assert_eq!(names, Some(want));
                }
                current = i;
                prop_assert_eq!(view.current().manifest().version, i as u64 + 1);
            }
            Op::Walk(pick) => {
                let model = &built[current].1;
                let paths: Vec<&String> =
                    model.dirs.keys().filter(|d| !d.is_empty()).chain(model.files.keys()).collect();
                if paths.is_empty() {
                    continue;
                }
                let path = paths[pick % paths.len()].clone();
                let mut attr = view.getattr(ROOT).unwrap();
                for part in path.split('/') {
                    attr = view.lookup(attr.ino, part).unwrap();
                }
                let is_file = model.files.contains_key(&path);
                prop_assert_eq!(attr.kind, if is_file { Kind::File } else { Kind::Dir });
                if is_file {
                    prop_assert_eq!(attr.size, model.size(&path));
                }
                let first = *first_ino.entry((current, path.clone())).or_insert(attr.ino);
                prop_assert_eq!(attr.ino, first, "{} in v{} got another inode", path, current + 1);
                held.push((current, path, attr.ino));
            }
            Op::ReadHeld(pick, at, size) => {
                if held.is_empty() {
                    continue;
                }
                let (version, path, ino) = &held[pick % held.len()];
                let model = &built[*version].1;
                match model.files.get(path) {
                    Some(_) => {
                        let offset = (model.size(path) + 8) * u64::from(at) / u64::from(u16::MAX);
                        let want = model.read(path, offset, size).unwrap();
                        prop_assert_eq!(
                            view.read(*ino, offset, size, None).await.unwrap(),
                            want,
                            "{} of v{}",
                            path,
                            version + 1
                        );
                        prop_assert_eq!(view.getattr(*ino).unwrap().size, model.size(path));
                    }
                    None => {
                        let names: Vec<String> = view.readdir(*ino, 2).unwrap().into_iter().map(|(n, _)| n).collect();
                        prop_assert_eq!(
                            names,
                            model.dirs[path].iter().cloned().collect::<Vec<_>>(),
                            "{} of v{}",
                            path,
                            version + 1
                        );
                    }
                }
                let xattr = view.xattr(*ino, XATTR_VERSION).unwrap();
                prop_assert_eq!(xattr, (version + 1).to_string().into_bytes());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(fuzz::config(1000))]

    #[test]
    fn fuzz_view_switches_against_a_model(
        versions in proptest::collection::vec(plain_files(), 2..4),
        ops in proptest::collection::vec(op(), 1..24),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(check_view(versions, ops))?;
    }
}
