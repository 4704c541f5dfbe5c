//! `aqueduct-hub backup` and `restore`: a consistent copy of a hub (its database, PKI, admin
//! bundle and config) that makes, restored, a hub serving the same versions to the same
//! identities.
//!
//! A backup is a directory: the database as SQLite's `VACUUM INTO` wrote it (a consistent
//! snapshot, taken while the hub runs), every other file of the data directory as it is, and
//! [`LISTING`] last, naming each file with its size, mode and BLAKE3: a directory without it
//! is not a backup. The root CA's key (`keep-offline/`) is never copied: it belongs offline.
//! Restore checks every file against the listing before it writes anything, refuses a
//! directory that already holds a hub, writes the files atomically with their modes (keys
//! stay 0600), and `hub.toml` last, pointing at the new directory.

use std::path::{Component, Path, PathBuf};

use aqueduct_core::durable;
use aqueduct_proto::Digest;
use tracing::info;

use crate::config::HubConfig;
use crate::store::meta::SqlStore;

/// The file that lists a backup's contents, written last.
pub const LISTING: &str = "BACKUP.b3";
/// The first line of a listing: what it is and the format's version.
const HEADER: &str = "# aqueduct-hub backup v1";
/// The database's name in the data directory and in a backup.
const DATABASE: &str = "hub.db";
/// Bounds on a listing read back (a backup may come from anywhere).
const MAX_FILES: usize = 10_000;
const MAX_PATH: usize = 1024;
const MAX_FILE_BYTES: u64 = 1 << 40;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot copy the database {path}: {source}")]
    Database { path: PathBuf, source: crate::store::StoreError },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{path} is not empty: back up into a new directory")]
    NotEmpty { path: PathBuf },
    #[error("{path} already holds a hub (hub.toml exists): restore into a new directory")]
    HubExists { path: PathBuf },
    #[error("{path} is not an Aqueduct hub backup: {reason}")]
    NotABackup { path: PathBuf, reason: String },
    #[error("the backup is damaged: {file} {reason}; nothing was restored (use another copy of the backup)")]
    Damaged { file: String, reason: String },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + use<> {
    let path = path.to_owned();
    move |source| BackupError::Io { action, path, source }
}

/// One file of a backup, as its listing names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the data directory, `/`-separated, plain names only.
    pub path: String,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    pub blake3: [u8; 32],
}

impl Entry {
    fn line(&self) -> String {
        format!("{} {} {:o} {}", Digest(self.blake3).to_hex(), self.size, self.mode, self.path)
    }
}

/// What a backup holds and what it left out.
#[derive(Debug)]
pub struct BackupOutcome {
    pub files: Vec<Entry>,
    /// Files of the data directory not copied, with why (the root key, links, sockets).
    pub skipped: Vec<(PathBuf, &'static str)>,
}

/// Backs up the hub whose config is `config_path` into `out` (new, or an empty directory).
pub fn backup(config_path: &Path, out: &Path) -> Result<BackupOutcome, BackupError> {
    let config = HubConfig::load(config_path)?;
    let data_dir = &config.data_dir;
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(BackupError::NotEmpty { path: out.to_owned() });
    }
    durable::create_dir_all(out).map_err(io("create", out))?;
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    if config.database.url.is_some() {
        // The metadata is in PostgreSQL, which has its own backups (pg_dump, base backups).
        skipped.push((PathBuf::from("[database]"), "in PostgreSQL: back it up with pg_dump"));
    } else {
        let db_copy = out.join(DATABASE);
        SqlStore::copy_into(&config.database_path(), &db_copy)
            .map_err(|source| BackupError::Database { path: config.database_path(), source })?;
        files.push(entry_of(&db_copy, DATABASE.into(), durable::SECRET)?);
    }
    let mut walk = vec![data_dir.clone()];
    while let Some(dir) = walk.pop() {
        for item in std::fs::read_dir(&dir).map_err(io("read", &dir))? {
            let item = item.map_err(io("read", &dir))?;
            let path = item.path();
            let rel = path.strip_prefix(data_dir).unwrap_or(&path).to_owned();
            let kind = item.file_type().map_err(io("read", &path))?;
            let name = item.file_name();
            if rel == Path::new(crate::setup::ROOT_KEY).parent().unwrap_or(Path::new("keep-offline")) {
                skipped.push((rel, "the root CA's key belongs offline, not in backups"));
            } else if kind.is_dir() {
                walk.push(path);
            } else if durable::is_temporary(&name) || is_database(&rel) {
                // A write cut short, or the live database (copied above).
            } else if !kind.is_file() {
                skipped.push((rel, "not a regular file"));
            } else {
                let rel_text = rel.to_str().filter(|r| valid_path(r)).ok_or_else(|| BackupError::NotABackup {
                    path: path.clone(),
                    reason: "its name cannot be listed in a backup".into(),
                })?;
                let data = std::fs::read(&path).map_err(io("read", &path))?;
                let mode = std::fs::metadata(&path).map_err(io("read", &path))?.permissions();
                let mode = std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777;
                let target = out.join(&rel);
                if let Some(parent) = target.parent() {
                    durable::create_dir_all(parent).map_err(io("create", parent))?;
                }
                durable::write_file(&target, &data, if mode & 0o077 == 0 { durable::SECRET } else { durable::PUBLIC })
                    .map_err(io("write", &target))?;
                files.push(Entry {
                    path: rel_text.to_string(),
                    size: data.len() as u64,
                    mode,
                    blake3: *blake3::hash(&data).as_bytes(),
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let listing = render(&files);
    durable::write_file(&out.join(LISTING), listing.as_bytes(), durable::PUBLIC).map_err(io("write", out))?;
    info!(files = files.len(), out = %out.display(), "backed up the hub");
    Ok(BackupOutcome { files, skipped })
}

/// Restores the backup in `from` into `data_dir` (which must not hold a hub); returns the
/// path of the restored `hub.toml`.
pub fn restore(from: &Path, data_dir: &Path) -> Result<PathBuf, BackupError> {
    let listing_path = from.join(LISTING);
    let text = std::fs::read_to_string(&listing_path).map_err(|e| BackupError::NotABackup {
        path: from.to_owned(),
        reason: format!("{LISTING} cannot be read ({e}): a backup is complete only once it is written"),
    })?;
    let files = parse(&text).map_err(|reason| BackupError::NotABackup { path: listing_path.clone(), reason })?;
    if !files.iter().any(|f| f.path == "hub.toml") || !files.iter().any(|f| f.path == DATABASE) {
        return Err(BackupError::NotABackup {
            path: from.to_owned(),
            reason: "it has no hub.toml or no hub.db".into(),
        });
    }
    // Every byte checked before anything is written.
    let mut contents = Vec::with_capacity(files.len());
    for f in &files {
        let data = std::fs::read(from.join(&f.path))
            .map_err(|e| BackupError::Damaged { file: f.path.clone(), reason: format!("cannot be read: {e}") })?;
        if data.len() as u64 != f.size || blake3::hash(&data).as_bytes() != &f.blake3 {
            return Err(BackupError::Damaged { file: f.path.clone(), reason: "does not match its checksum".into() });
        }
        contents.push(data);
    }
    if std::fs::symlink_metadata(data_dir.join("hub.toml")).is_ok() {
        return Err(BackupError::HubExists { path: data_dir.to_owned() });
    }
    durable::create_dir_all(data_dir).map_err(io("create", data_dir))?;
    let data_dir = data_dir.canonicalize().map_err(io("resolve", data_dir))?;
    let mut config_text = None;
    for (f, data) in files.iter().zip(contents) {
        if f.path == "hub.toml" {
            config_text = Some(data);
            continue;
        }
        let target = data_dir.join(&f.path);
        if let Some(parent) = target.parent() {
            durable::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let mode = if f.mode & 0o077 == 0 { durable::SECRET } else { durable::PUBLIC };
        durable::write_file(&target, &data, mode).map_err(io("write", &target))?;
    }
    let config_path = data_dir.join("hub.toml");
    let text = String::from_utf8(config_text.unwrap_or_default())
        .map_err(|_| BackupError::Damaged { file: "hub.toml".into(), reason: "is not UTF-8".into() })?;
    let mut config = HubConfig::parse(&text, &from.join("hub.toml"))?;
    config.data_dir = data_dir.clone();
    let text = format!("# Aqueduct hub configuration, restored from {}.\n{}", from.display(), config.to_toml());
    // The database is opened once (and brought to this build's schema) before the hub is
    // marked whole.
    crate::database::open(&config).map_err(|source| BackupError::Database { path: config.database_path(), source })?;
    durable::write_file(&config_path, text.as_bytes(), durable::PUBLIC).map_err(io("write", &config_path))?;
    info!(files = files.len(), to = %data_dir.display(), "restored the hub");
    Ok(config_path)
}

fn is_database(rel: &Path) -> bool {
    rel.to_str().is_some_and(|r| [DATABASE, "hub.db-wal", "hub.db-shm", "hub.db-journal"].contains(&r))
}

fn entry_of(path: &Path, rel: String, mode: u32) -> Result<Entry, BackupError> {
    let data = std::fs::read(path).map_err(io("read", path))?;
    Ok(Entry { path: rel, size: data.len() as u64, mode, blake3: *blake3::hash(&data).as_bytes() })
}

/// A relative path of plain names, as a listing may hold it.
fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH
        && !path.chars().any(|c| c.is_control())
        && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
        && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

fn render(files: &[Entry]) -> String {
    let mut text = format!("{HEADER}\n");
    for f in files {
        text.push_str(&f.line());
        text.push('\n');
    }
    text
}

/// Reads a listing: the header, then `BLAKE3 SIZE MODE PATH` per line. Any text: the entries
/// or a reason, never a panic.
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("its first line is not {HEADER:?}"));
    }
    let mut files: Vec<Entry> = Vec::new();
    for (n, line) in lines.enumerate() {
        let n = n + 2;
        if files.len() == MAX_FILES {
            return Err(format!("it lists more than {MAX_FILES} files"));
        }
        let mut parts = line.splitn(4, ' ');
        let (Some(hash), Some(size), Some(mode), Some(path)) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("line {n} is not `BLAKE3 SIZE MODE PATH`"));
        };
        let blake3 = Digest::from_hex(hash).ok_or_else(|| format!("line {n}: {hash:?} is not a BLAKE3 hash"))?.0;
        let size = size.parse::<u64>().ok().filter(|s| *s <= MAX_FILE_BYTES);
        let size = size.ok_or_else(|| format!("line {n}: the size is not a number of bytes"))?;
        let mode = u32::from_str_radix(mode, 8).ok().filter(|m| *m <= 0o777);
        let mode = mode.ok_or_else(|| format!("line {n}: the mode is not permission bits in octal"))?;
        if !valid_path(path) {
            return Err(format!("line {n}: {path:?} is not a relative path of plain names"));
        }
        if files.iter().any(|f| f.path == path) {
            return Err(format!("line {n}: {path:?} is listed twice"));
        }
        files.push(Entry { path: path.to_string(), size, mode, blake3 });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    fn entry() -> impl Strategy<Value = Entry> {
        ("[a-z]{1,8}(/[a-z][a-z.]{0,7}){0,3}", 0u64..1 << 30, 0u32..=0o777, any::<[u8; 32]>())
            .prop_map(|(path, size, mode, blake3)| Entry { path, size, mode, blake3 })
    }

    proptest! {
        #![proptest_config(fuzz::config(3000))]

        /// A listing written reads back as it was.
        #[test]
        fn fuzz_listing_round_trips(files in proptest::collection::vec(entry(), 0..20)) {
            let mut files = files;
            files.sort_by(|a, b| a.path.cmp(&b.path));
            files.dedup_by(|a, b| a.path == b.path);
            prop_assert_eq!(parse(&render(&files)).unwrap(), files);
        }

        /// Any text, or a listing damaged: entries whose paths stay inside the directory, or a
        /// reason; never a panic.
        #[test]
        fn fuzz_listing_from_hostile_text(
            files in proptest::collection::vec(entry(), 0..5),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<char>()), 0..4),
            noise in ".{0,200}",
        ) {
            let mut text: Vec<char> = render(&files).chars().collect();
            for (at, c) in flips {
                let i = at.index(text.len());
                text[i] = c;
            }
            for candidate in [text.into_iter().collect::<String>(), noise, format!("{HEADER}\n{}", ".".repeat(3))] {
                if let Ok(read) = parse(&candidate) {
                    for f in read {
                        prop_assert!(valid_path(&f.path));
                        prop_assert!(!f.path.split('/').any(|p| p == ".." || p == "." || p.is_empty()), "{:?}", f.path);
                        prop_assert!(!f.path.starts_with('/'));
                    }
                }
            }
        }
    }

    #[test]
    fn a_listing_names_what_is_wrong() {
        let good = Entry { path: "pki/ca.pem".into(), size: 3, mode: 0o644, blake3: [7; 32] };
        let bad = |line: &str| parse(&format!("{HEADER}\n{line}\n")).unwrap_err();
        assert!(parse("hello").unwrap_err().contains("first line"));
        assert!(bad(&good.line().replace("pki/ca.pem", "../etc/passwd")).contains("not a relative path"));
        assert!(bad(&good.line().replace("pki/ca.pem", "/etc/passwd")).contains("not a relative path"));
        assert!(bad(&good.line().replace(" 644 ", " 7777 ")).contains("mode"));
        assert!(bad(&format!("{}\n{}", good.line(), good.line())).contains("listed twice"));
        assert!(bad("abc 1 644 x").contains("not a BLAKE3 hash"));
    }
}
