//! Whole copies: a file of a mounted version assembled from its chunks into one verified,
//! read-only file (`DATA_DIR/files/<root>`), which the mount hands to the kernel (FUSE
//! passthrough, see [`crate::mount::Backing`]) so that warm reads cost what a read of a local
//! file costs.
//!
//! A copy is named by the file's root ([`aqueduct_proto::FileEntry::root`], a digest of its
//! chunk list): identical files of two versions share one copy. One background thread (lowered
//! priority, never in the read path) works through what mounts offer ([`WholeFiles::offer`],
//! when a mount is made or switches version, and for a file opened with no copy, at most every
//! [`OFFER_ON_OPEN_EVERY`], so that a mount made before its chunks arrived gets its copies once
//! they are here), one file at a time:
//! - a file whose chunks are all in the store is assembled: chunks read in order, each hashed
//!   against the manifest before its bytes are written, into a temporary file, fsynced, made
//!   read-only (0444) and renamed into place;
//! - a copy an earlier holder left is hashed again, chunk by chunk, before this process passes
//!   it through; one that does not verify is removed (and assembled again if it can be).
//!
//! Only a copy verified by this process is passed through. A disk budget bounds the copies: the
//! least recently opened are removed to make room ([`to_evict`]); a write that fails (a full
//! disk) is given up and the file keeps the copy route. What the copies take on disk (every
//! copy, verified or not, and the whole size of the one being written, from its start) is
//! reported ([`WholeFiles::counters`], `disk_bytes`): the spoke counts it in its disk quota,
//! and may lower the budget below what it was started with ([`WholeFiles::limit`]: its quota
//! less the chunks it cannot evict), which removes copies past it at once. The decisions are
//! pure ([`plan`], [`to_evict`]) and tested in `tests.rs`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use aqueduct_proto::holder::v1 as held;
use aqueduct_proto::{ChunkRef, Digest, FileEntry, Manifest};
use tracing::{debug, info, warn};

use crate::mount::Backing;

/// Where a file stands, as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub key: String,
    pub size: u64,
    /// Every chunk of the file is in the store.
    pub all_local: bool,
    /// A copy is on disk (from this process or an earlier one).
    pub on_disk: bool,
    /// This process verified the copy on disk.
    pub verified: bool,
}

/// What to do about one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Hash the copy an earlier holder left before passing it through.
    Verify(String),
    /// Assemble a copy from the store.
    Assemble(String),
}

/// How often a file opened with no copy is offered again (its chunks may have arrived since).
pub const OFFER_ON_OPEN_EVERY: Duration = Duration::from_secs(5);
/// Files remembered as offered on open, at most (older offers are forgotten past it).
const MAX_OFFERED_ON_OPEN: usize = 100_000;

/// Whether an open of a file with no verified copy offers it for one: not while it waits in the
/// queue, nor again within [`OFFER_ON_OPEN_EVERY`] of the last offer.
pub fn offer_on_open(queued: bool, last_offered: Option<Instant>, now: Instant) -> bool {
    !queued && last_offered.is_none_or(|at| now.saturating_duration_since(at) >= OFFER_ON_OPEN_EVERY)
}

/// What to do about a version's files, in order: verify copies not verified yet, assemble
/// files whose chunks are all here and that fit the budget; empty files, files already
/// verified, and a second file of the same content are left alone.
pub fn plan(files: &[Candidate], budget: u64) -> Vec<Action> {
    let mut seen = HashSet::new();
    let mut actions = Vec::new();
    for f in files {
        if f.size == 0 || f.verified || !seen.insert(f.key.as_str()) {
            continue;
        }
        if f.on_disk {
            actions.push(Action::Verify(f.key.clone()));
        } else if f.all_local && f.size <= budget {
            actions.push(Action::Assemble(f.key.clone()));
        }
    }
    actions
}

/// A copy on disk, for eviction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub key: String,
    pub bytes: u64,
    /// When it was last opened (a tick; 0: never in this process).
    pub last_opened: u64,
}

/// The copies to remove so that `incoming` more bytes fit in `budget`: least recently opened
/// first, never `keep` (the copy being made room for). Empty if nothing needs to go; all the
/// others if even that is not enough.
pub fn to_evict(copies: &[Held], budget: u64, incoming: u64, keep: &str) -> Vec<String> {
    // In u128: sizes and the spoke's limit may be any u64.
    let mut total: u128 = copies.iter().map(|c| u128::from(c.bytes)).sum::<u128>() + u128::from(incoming);
    let mut order: Vec<&Held> = copies.iter().filter(|c| c.key != keep).collect();
    order.sort_by(|a, b| a.last_opened.cmp(&b.last_opened).then_with(|| a.key.cmp(&b.key)));
    let mut out = Vec::new();
    for c in order {
        if total <= u128::from(budget) {
            break;
        }
        total -= u128::from(c.bytes);
        out.push(c.key.clone());
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum WholeError {
    #[error("chunk {digest} of {key} is not in the store at {path}")]
    Missing { key: String, digest: Digest, path: PathBuf },
    #[error("chunk {digest} of {key} does not verify (its bytes hash to {actual})")]
    Corrupt { key: String, digest: Digest, actual: Digest },
    #[error("whole copy {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("a whole copy of {key} ({bytes} bytes) does not fit what the copies may take now ({budget} bytes)")]
    NoRoom { key: String, bytes: u64, budget: u64 },
}

#[derive(Default)]
struct Copy {
    bytes: u64,
    last_opened: u64,
    verified: bool,
}

#[derive(Default)]
struct State {
    copies: HashMap<String, Copy>,
    tick: u64,
    /// Keys offered and not yet worked on.
    queued: HashSet<String>,
    /// When a file opened with no copy was last offered (forgotten once it has one).
    offered_on_open: HashMap<String, Instant>,
}

/// Files for the background thread: a version's (a mount made or switched), or one file opened
/// with no copy.
enum Job {
    Version(Arc<Manifest>),
    File(Box<FileEntry>),
}

/// The node's whole copies: made and verified in the background, opened for passthrough.
pub struct WholeFiles {
    dir: PathBuf,
    store: PathBuf,
    budget: u64,
    /// What the spoke allows the copies now (`u64::MAX`: nothing said); the lower of it and
    /// `budget` applies.
    limit: AtomicU64,
    state: Mutex<State>,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Held while files are worked on: one planner at a time (the thread, or a test's call).
    working: Mutex<()>,
    passthrough_opens: AtomicU64,
    rejected: AtomicU64,
    /// The size of the copy being written (0: none): on disk already as far as the quota goes.
    writing: AtomicU64,
    /// Passthrough was found unavailable (logged once).
    unavailable: AtomicBool,
}

impl WholeFiles {
    /// Whole copies in `store/files`, at most `budget` bytes; `None` when the budget is 0.
    /// Starts the background thread; copies an earlier holder left are known (not trusted).
    pub fn start(store: &Path, budget: u64) -> Option<Arc<Self>> {
        if budget == 0 {
            return None;
        }
        let dir = store.join("files");
        if let Err(e) = aqueduct_core::durable::create_dir_all(&dir) {
            warn!(dir = %dir.display(), error = %e, "cannot make the whole-copy directory; reads keep the copy route");
            return None;
        }
        let _ = aqueduct_core::durable::remove_temporaries(&dir);
        let mut state = State::default();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let (Ok(name), Ok(meta)) = (entry.file_name().into_string(), entry.metadata()) else { continue };
            if meta.is_file() {
                state.copies.insert(name, Copy { bytes: meta.len(), ..Copy::default() });
            }
        }
        let (tx, rx) = mpsc::channel();
        let whole = Arc::new(Self {
            dir,
            store: store.to_owned(),
            budget,
            limit: AtomicU64::new(u64::MAX),
            state: Mutex::new(state),
            jobs: Mutex::new(tx),
            working: Mutex::new(()),
            passthrough_opens: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            writing: AtomicU64::new(0),
            unavailable: AtomicBool::new(false),
        });
        let worker = Arc::downgrade(&whole);
        let spawned = std::thread::Builder::new().name("whole-copies".into()).spawn(move || {
            lower_priority();
            while let Ok(job) = rx.recv() {
                let Some(whole) = worker.upgrade() else { return };
                match job {
                    Job::Version(manifest) => whole.work(&manifest.files),
                    Job::File(file) => whole.work(std::slice::from_ref(&*file)),
                }
            }
        });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the whole-copy thread; reads keep the copy route");
            return None;
        }
        Some(whole)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The disk the copies may take now: the budget, or the spoke's limit if lower.
    fn budget(&self) -> u64 {
        self.budget.min(self.limit.load(Ordering::Relaxed))
    }

    /// The copies to remove, least recently opened first, so that `incoming` more bytes (the
    /// copy `key`, kept) fit the budget ([`to_evict`]).
    fn to_evict(&self, incoming: u64, key: &str) -> Vec<String> {
        let held: Vec<Held> = self
            .state()
            .copies
            .iter()
            .map(|(k, c)| Held { key: k.clone(), bytes: c.bytes, last_opened: c.last_opened })
            .collect();
        to_evict(&held, self.budget(), incoming, key)
    }

    /// Lowers (or raises, up to the budget) what the copies may take to `bytes`; copies past
    /// it are removed now, least recently opened first ([`to_evict`]). A file open on a
    /// removed copy reads on (its disk is freed when it is closed).
    pub fn limit(&self, bytes: u64) {
        // Checked each time, not only on a change: a copy being written lands after a call.
        self.limit.store(bytes, Ordering::Relaxed);
        let evict = self.to_evict(0, "");
        if !evict.is_empty() {
            info!(limit = bytes, copies = evict.len(), "whole copies past the spoke's limit removed (its disk quota)");
        }
        for k in evict {
            self.state().copies.remove(&k);
            let _ = std::fs::remove_file(self.path(&k));
        }
    }

    /// Asks for the files of `manifest` to get whole copies (a mount was made or switched).
    pub fn offer(&self, manifest: Arc<Manifest>) {
        let _ = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).send(Job::Version(manifest));
    }

    /// The counters List reports.
    pub fn counters(&self) -> held::WholeFiles {
        let state = self.state();
        let ready: Vec<&Copy> = state.copies.values().filter(|c| c.verified).collect();
        held::WholeFiles {
            ready: ready.len() as u64,
            ready_bytes: ready.iter().map(|c| c.bytes).sum(),
            pending: state.queued.len() as u64,
            rejected: self.rejected.load(Ordering::Relaxed),
            passthrough_opens: self.passthrough_opens.load(Ordering::Relaxed),
            passthrough_unavailable: self.unavailable.load(Ordering::Relaxed),
            disk_bytes: state.copies.values().map(|c| c.bytes).sum::<u64>() + self.writing.load(Ordering::Relaxed),
        }
    }

    fn work(&self, files: &[FileEntry]) {
        let _one_at_a_time = self.working.lock().unwrap_or_else(|e| e.into_inner());
        let candidates: Vec<Candidate> = {
            let state = self.state();
            files
                .iter()
                .map(|f| {
                    let key = f.root().to_hex();
                    let known = state.copies.get(&key);
                    Candidate {
                        size: f.size,
                        all_local: f.chunks.iter().all(|c| self.local(c)),
                        on_disk: known.is_some(),
                        verified: known.is_some_and(|c| c.verified),
                        key,
                    }
                })
                .collect()
        };
        let actions = plan(&candidates, self.budget());
        self.state().queued.extend(actions.iter().map(|a| match a {
            Action::Verify(k) | Action::Assemble(k) => k.clone(),
        }));
        let by_key: HashMap<String, &FileEntry> = files.iter().map(|f| (f.root().to_hex(), f)).collect();
        for action in actions {
            let (key, verify) = match &action {
                Action::Verify(k) => (k, true),
                Action::Assemble(k) => (k, false),
            };
            let Some(file) = by_key.get(key) else { continue };
            let result = if verify { self.verify(key, file) } else { self.assemble(key, file) };
            let mut state = self.state();
            state.queued.remove(key);
            match result {
                Ok(()) => {
                    state.offered_on_open.remove(key);
                    let copy = state.copies.entry(key.clone()).or_default();
                    copy.bytes = file.size;
                    copy.verified = true;
                    info!(path = %file.path, %key, bytes = file.size, verified_again = verify, "whole copy ready");
                }
                Err(e) if verify => {
                    state.copies.remove(key);
                    drop(state);
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    warn!(path = %file.path, error = %e, "a whole copy left by an earlier holder does not verify; removed, and made again if its chunks are here");
                    let _ = std::fs::remove_file(self.path(key));
                    if file.chunks.iter().all(|c| self.local(c)) && file.size <= self.budget() {
                        if let Err(e) = self.assemble(key, file) {
                            warn!(path = %file.path, error = %e, "cannot make a whole copy; the file keeps the copy route");
                        } else {
                            let mut state = self.state();
                            let copy = state.copies.entry(key.clone()).or_default();
                            copy.bytes = file.size;
                            copy.verified = true;
                        }
                    }
                }
                Err(e) => {
                    warn!(path = %file.path, error = %e, "cannot make a whole copy; the file keeps the copy route")
                }
            }
        }
    }

    fn chunk_path(&self, c: &ChunkRef) -> PathBuf {
        aqueduct_core::layout::chunk_path(&self.store, &c.digest.to_hex())
    }

    fn local(&self, c: &ChunkRef) -> bool {
        std::fs::metadata(self.chunk_path(c)).is_ok_and(|m| m.len() == u64::from(c.length))
    }

    /// Writes a verified copy of `file` from the store, making room in the budget first; a copy
    /// made is known (verified) when this returns. Its bytes count on disk from the start.
    fn assemble(&self, key: &str, file: &FileEntry) -> Result<(), WholeError> {
        // Counted before room is made and until the copy is known: what is reported never
        // falls below what is on disk.
        self.writing.store(file.size, Ordering::Relaxed);
        let made = self.write_copy(key, file);
        let mut state = self.state();
        if made.is_ok() {
            let copy = state.copies.entry(key.to_string()).or_default();
            copy.bytes = file.size;
            copy.verified = true;
        }
        self.writing.store(0, Ordering::Relaxed);
        made
    }

    fn write_copy(&self, key: &str, file: &FileEntry) -> Result<(), WholeError> {
        let budget = self.budget();
        if file.size > budget {
            return Err(WholeError::NoRoom { key: key.to_string(), bytes: file.size, budget });
        }
        let evict = self.to_evict(file.size, key);
        for k in evict {
            debug!(key = %k, "removing the least recently opened whole copy to make room");
            self.state().copies.remove(&k);
            let _ = std::fs::remove_file(self.path(&k));
        }
        let path = self.path(key);
        let tmp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
        let io = |source| WholeError::Io { path: path.clone(), source };
        let write = || -> Result<(), WholeError> {
            let mut out = std::io::BufWriter::with_capacity(4 << 20, File::create(&tmp).map_err(io)?);
            for c in &file.chunks {
                let from = self.chunk_path(c);
                let data = std::fs::read(&from).map_err(|_| WholeError::Missing {
                    key: key.to_string(),
                    digest: c.digest,
                    path: from.clone(),
                })?;
                let actual = Digest::of(&data);
                if actual != c.digest {
                    return Err(WholeError::Corrupt { key: key.to_string(), digest: c.digest, actual });
                }
                out.write_all(&data).map_err(io)?;
            }
            let out = out.into_inner().map_err(|e| io(e.into_error()))?;
            out.set_permissions(std::fs::Permissions::from_mode(0o444)).map_err(io)?;
            out.sync_all().map_err(io)?;
            drop(out);
            std::fs::rename(&tmp, &path).map_err(io)?;
            aqueduct_core::durable::sync_dir(&self.dir).map_err(io)
        };
        write().inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Hashes a copy on disk against `file`'s chunks, in order.
    fn verify(&self, key: &str, file: &FileEntry) -> Result<(), WholeError> {
        let path = self.path(key);
        let io = |source| WholeError::Io { path: path.clone(), source };
        let mut f = File::open(&path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        if len != file.size {
            return Err(io(std::io::Error::other(format!("{len} bytes, not the file's {}", file.size))));
        }
        let mut buf = Vec::new();
        for c in &file.chunks {
            buf.resize(c.length as usize, 0);
            f.read_exact(&mut buf).map_err(io)?;
            let actual = Digest::of(&buf);
            if actual != c.digest {
                return Err(WholeError::Corrupt { key: key.to_string(), digest: c.digest, actual });
            }
        }
        Ok(())
    }
}

impl Backing for WholeFiles {
    fn open(&self, file: &FileEntry) -> Option<File> {
        if file.size == 0 {
            return None;
        }
        let key = file.root().to_hex();
        {
            let mut state = self.state();
            state.tick += 1;
            let tick = state.tick;
            match state.copies.get_mut(&key).filter(|c| c.verified) {
                Some(copy) => copy.last_opened = tick,
                None => {
                    let now = Instant::now();
                    let (queued, last) = (state.queued.contains(&key), state.offered_on_open.get(&key).copied());
                    if offer_on_open(queued, last, now) {
                        if state.offered_on_open.len() >= MAX_OFFERED_ON_OPEN {
                            state
                                .offered_on_open
                                .retain(|_, at| now.saturating_duration_since(*at) < OFFER_ON_OPEN_EVERY);
                        }
                        state.offered_on_open.insert(key, now);
                        drop(state);
                        let job = Job::File(Box::new(file.clone()));
                        let _ = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).send(job);
                    }
                    return None;
                }
            }
        }
        File::open(self.path(&key)).ok()
    }

    fn passed_through(&self) {
        self.passthrough_opens.fetch_add(1, Ordering::Relaxed);
    }

    fn unavailable(&self, why: &str) {
        if !self.unavailable.swap(true, Ordering::Relaxed) {
            warn!(
                why,
                "FUSE passthrough is not available here; reads keep the copy route (every chunk hashed when loaded)"
            );
        }
    }
}

/// The background thread yields to everything else: lowest CPU priority (for this thread
/// only, Linux's setpriority on a thread id).
fn lower_priority() {
    // SAFETY: gettid and setpriority have no preconditions; they touch only this thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

#[cfg(test)]
mod tests;
