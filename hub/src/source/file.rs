//! A `file://` source: a directory on the hub's machine (a local disk or an NFS mount).
//!
//! The walk opens every directory relative to its parent with `openat(O_NOFOLLOW)`, so a
//! directory swapped for a link while the walk runs is refused, never entered. A symbolic
//! link is resolved and classified ([`classify_link`]): one that leads outside the dataset's
//! prefix, or into the hub's own files, is never followed and comes back as a [`Refused`]
//! entry (the snapshot fails on it or skips it, as the dataset says). A link inside the prefix
//! is followed: a link to a file is a file with the target's bytes (its key is the target's,
//! so dedup makes it free), a link to a directory is walked under the link's name, and a
//! directory link that leads back into one of its own ancestors is a cycle, refused.
//!
//! A read opens its key one component at a time from the source's root, each with
//! `O_NOFOLLOW`: whatever happened to the tree since the listing, a read never leaves the
//! root, never follows a link, and never reads the hub's own files. Names are the directory's
//! own bytes: `#`, `%`, spaces, Unicode and newlines are kept as they are; a name that is not
//! UTF-8 cannot be a path of a version and is refused, named.

use std::ffi::CStr;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use url::Url;

use super::keys::key_of;
use super::{HubFiles, Listing, ObjectInfo, ObjectReader, Refusal, Refused, Source, SourceError};

/// Directory links followed one inside another at most (as the kernel's `ELOOP` bound).
const MAX_LINK_DEPTH: usize = 40;

/// A [`Source`] over a directory.
#[derive(Clone, Debug)]
pub struct FileSource {
    url: String,
    /// Canonical.
    root: PathBuf,
    hub: HubFiles,
}

impl FileSource {
    /// Opens the directory of a `file://` URL; `hub` is never listed or read.
    pub fn open(url: &Url, hub: HubFiles) -> Result<Self, SourceError> {
        let text = url.to_string();
        let root = url.to_file_path().map_err(|()| SourceError::BadUrl {
            url: text.clone(),
            reason: "it is not an absolute local path".into(),
        })?;
        if !root.is_dir() {
            return Err(SourceError::NotFound { url: text, detail: format!("{} is not a directory", root.display()) });
        }
        let root =
            root.canonicalize().map_err(|e| SourceError::NotFound { url: text.clone(), detail: e.to_string() })?;
        Ok(Self { url: text, root, hub })
    }

    fn io(&self, what: &str, e: impl std::fmt::Display) -> SourceError {
        SourceError::Io { url: self.url.clone(), detail: format!("{what}: {e}") }
    }

    fn fs_err(&self, path: &Path, e: rustix::io::Errno) -> SourceError {
        let detail = format!("{}: {e}", path.display());
        match e {
            rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => {
                SourceError::Denied { url: self.url.clone(), detail }
            }
            rustix::io::Errno::NOENT => SourceError::NotFound { url: self.url.clone(), detail },
            _ => SourceError::Io { url: self.url.clone(), detail },
        }
    }

    /// The listing of `prefix`, on a blocking thread.
    fn walk(&self, prefix: &str) -> Result<Listing, SourceError> {
        let lexical = if prefix.is_empty() { self.root.clone() } else { self.root.join(prefix) };
        let real = match lexical.canonicalize() {
            Ok(real) => real,
            // No such directory: nothing under the prefix.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Listing::default()),
            Err(e) => return Err(self.io(&lexical.display().to_string(), e)),
        };
        let outside = |where_| SourceError::PrefixOutside {
            url: self.url.clone(),
            prefix: prefix.to_string(),
            target: real.clone(),
            where_,
        };
        if self.hub.holding(&real).is_some() {
            return Err(outside("the hub's own files"));
        }
        let Some(prefix_key) = real.strip_prefix(&self.root).ok().and_then(Path::to_str).map(str::to_string) else {
            return Err(outside("outside the source"));
        };
        let fd = match open_beneath(&self.root, &prefix_key, true) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOTDIR) => return Ok(Listing::default()),
            Err(e) => return Err(self.fs_err(&real, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| self.fs_err(&real, e))?;
        let mut walk = Walk { source: self, prefix, real_prefix: real.clone(), listing: Listing::default() };
        let mut stack =
            vec![Frame { fd, rel: String::new(), key: prefix_key, ancestors: vec![dev_ino(&st)], links: 0 }];
        while let Some(frame) = stack.pop() {
            walk.directory(frame, &mut stack)?;
        }
        let mut listing = walk.listing;
        listing.objects.sort_by(|a, b| a.path.cmp(&b.path));
        listing.refused.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listing)
    }
}

/// A directory to walk: its path in the dataset, its key in the source, the directories that
/// hold it (for cycles) and how many directory links led to it.
struct Frame {
    fd: OwnedFd,
    rel: String,
    key: String,
    ancestors: Vec<(u64, u64)>,
    links: usize,
}

struct Walk<'a> {
    source: &'a FileSource,
    prefix: &'a str,
    real_prefix: PathBuf,
    listing: Listing,
}

impl Walk<'_> {
    fn refuse(&mut self, rel: &str, why: Refusal) {
        self.listing.refused.push(Refused { key: key_of(self.prefix, rel), why });
    }

    fn directory(&mut self, frame: Frame, stack: &mut Vec<Frame>) -> Result<(), SourceError> {
        let dir_path = self.source.root.join(&frame.key);
        let entries = Dir::read_from(&frame.fd).map_err(|e| self.source.fs_err(&dir_path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.source.fs_err(&dir_path, e))?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let Ok(text) = name.to_str() else {
                let rel = join(&frame.rel, &escape_bytes(name.to_bytes()));
                self.refuse(
                    &rel,
                    Refusal::Other(
                        "its name is not valid UTF-8 and a version's paths are UTF-8: rename it (nothing under it \
                         is in the version)"
                            .into(),
                    ),
                );
                continue;
            };
            let (rel, key) = (join(&frame.rel, text), join(&frame.key, text));
            let path = self.source.root.join(&key);
            if let Some(hub) = self.source.hub.holding(&path) {
                let target = format!("{:?}", hub.display().to_string());
                self.refuse(&rel, Refusal::HubFiles { target });
                continue;
            }
            let st = match rustix::fs::statat(&frame.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed since the directory was read.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(self.source.fs_err(&path, e)),
            };
            match FileType::from_raw_mode(st.st_mode as _) {
                FileType::RegularFile => self.listing.objects.push(object(key, rel, &st)),
                FileType::Directory => {
                    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    let fd = match rustix::fs::openat(&frame.fd, name, flags, Mode::empty()) {
                        Ok(fd) => fd,
                        Err(rustix::io::Errno::NOENT) => continue,
                        Err(e) => return Err(self.source.fs_err(&path, e)),
                    };
                    let mut ancestors = frame.ancestors.clone();
                    ancestors.push(dev_ino(&st));
                    stack.push(Frame { fd, rel, key, ancestors, links: frame.links });
                }
                FileType::Symlink => self.link(&frame, name, rel, &path, stack)?,
                other => {
                    let why = format!(
                        "it is a {}, not a regular file; only files and links to them are in a version",
                        kind(other)
                    );
                    self.refuse(&rel, Refusal::Other(why));
                }
            }
        }
        Ok(())
    }

    /// A symbolic link at `path` (`rel` in the dataset): followed if it stays inside the prefix.
    fn link(
        &mut self,
        frame: &Frame,
        name: &CStr,
        rel: String,
        path: &Path,
        stack: &mut Vec<Frame>,
    ) -> Result<(), SourceError> {
        let text = rustix::fs::readlinkat(&frame.fd, name, Vec::new())
            .map(|t| escape_bytes(t.to_bytes()))
            .unwrap_or_else(|e| format!("(unreadable: {e})"));
        let resolved = match std::fs::canonicalize(path) {
            Ok(resolved) => resolved,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let why = format!("a symbolic link to {text:?}, which does not exist (a dangling link)");
                self.refuse(&rel, Refusal::Other(why));
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                let why = format!("a symbolic link to {text:?}, which leads round in a loop of links");
                self.refuse(&rel, Refusal::Other(why));
                return Ok(());
            }
            Err(e) => return Err(self.source.io(&path.display().to_string(), e)),
        };
        let shown = |resolved: &Path| {
            let resolved = resolved.display().to_string();
            if resolved == text { format!("{text:?}") } else { format!("{text:?} (resolves to {resolved:?})") }
        };
        let key = match classify_link(&resolved, &self.source.root, &self.real_prefix, &self.source.hub) {
            LinkClass::HubFiles => {
                self.refuse(&rel, Refusal::HubFiles { target: shown(&resolved) });
                return Ok(());
            }
            LinkClass::Outside => {
                self.refuse(&rel, Refusal::OutsideLink { target: shown(&resolved) });
                return Ok(());
            }
            LinkClass::Inside(key) => key,
        };
        let Some(key) = key.to_str().map(str::to_string) else {
            let why = format!("a symbolic link to {text:?}, whose real path is not UTF-8 (rename the target)");
            self.refuse(&rel, Refusal::Other(why));
            return Ok(());
        };
        let st = match rustix::fs::stat(&resolved) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(self.source.fs_err(&resolved, e)),
        };
        match FileType::from_raw_mode(st.st_mode as _) {
            FileType::RegularFile => self.listing.objects.push(object(key, rel, &st)),
            FileType::Directory => {
                if frame.ancestors.contains(&dev_ino(&st)) {
                    self.refuse(&rel, Refusal::LinkCycle { target: shown(&resolved) });
                    return Ok(());
                }
                if frame.links >= MAX_LINK_DEPTH {
                    let why = format!("a directory link nested in {MAX_LINK_DEPTH} others; not followed further");
                    self.refuse(&rel, Refusal::Other(why));
                    return Ok(());
                }
                let fd = match open_beneath(&self.source.root, &key, true) {
                    Ok(fd) => fd,
                    Err(rustix::io::Errno::NOENT) => return Ok(()),
                    Err(e) => return Err(self.source.fs_err(&resolved, e)),
                };
                let mut ancestors = frame.ancestors.clone();
                ancestors.push(dev_ino(&st));
                stack.push(Frame { fd, rel, key, ancestors, links: frame.links + 1 });
            }
            other => {
                let why = format!("a symbolic link to a {}, not to a regular file", kind(other));
                self.refuse(&rel, Refusal::Other(why));
            }
        }
        Ok(())
    }
}

/// Where a symbolic link leads, once resolved (`resolved`, `root` and `prefix` canonical).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LinkClass {
    /// Inside the dataset's prefix: followed; the target's key (relative to the root).
    Inside(PathBuf),
    /// Outside the dataset's prefix: never followed.
    Outside,
    /// Into the hub's own files: never followed, whatever the dataset says.
    HubFiles,
}

pub(crate) fn classify_link(resolved: &Path, root: &Path, prefix: &Path, hub: &HubFiles) -> LinkClass {
    if hub.holding(resolved).is_some() {
        return LinkClass::HubFiles;
    }
    match resolved.strip_prefix(root) {
        Ok(key) if resolved.starts_with(prefix) => LinkClass::Inside(key.to_owned()),
        _ => LinkClass::Outside,
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") }
}

/// Bytes shown as text: UTF-8 as it is, anything else as `\xNN`.
fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

fn kind(t: FileType) -> &'static str {
    match t {
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "special file",
    }
}

#[allow(clippy::unnecessary_cast)]
fn dev_ino(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

/// The object for a regular file: mode, mtime and an etag as `object_store` made them (inode,
/// mtime in microseconds, size), so that versions cut before keep their chunk lists.
#[allow(clippy::unnecessary_cast)]
fn object(key: String, path: String, st: &Stat) -> ObjectInfo {
    let (secs, nanos) = (st.st_mtime as i64, st.st_mtime_nsec as i64);
    ObjectInfo {
        key,
        path,
        size: st.st_size as u64,
        mtime_unix_ms: secs.saturating_mul(1000).saturating_add(nanos / 1_000_000),
        etag: Some(etag(st)),
        mode: (st.st_mode as u32) & 0o7777,
    }
}

#[allow(clippy::unnecessary_cast)]
fn etag(st: &Stat) -> String {
    let (secs, nanos) = (st.st_mtime as i64, st.st_mtime_nsec as i64);
    let micros = if secs < 0 { 0 } else { (secs as u128) * 1_000_000 + (nanos as u128) / 1000 };
    format!("\"{:x}-{micros:x}-{:x}\"", st.st_ino as u64, st.st_size as u64)
}

/// Opens `key` (a `/`-separated path, empty for the root itself) under `root` one component
/// at a time, refusing links anywhere on the way (`ELOOP`) and `.`, `..` or empty parts.
fn open_beneath(root: &Path, key: &str, dir: bool) -> Result<OwnedFd, rustix::io::Errno> {
    let mut fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    if key.is_empty() {
        return Ok(fd);
    }
    let parts: Vec<&str> = key.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() || *part == "." || *part == ".." {
            return Err(rustix::io::Errno::INVAL);
        }
        let last = i + 1 == parts.len();
        let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // A FIFO would block an open for reading until a writer came: never wait.
        flags |= if !last || dir { OFlags::DIRECTORY } else { OFlags::NONBLOCK };
        fd = rustix::fs::openat(&fd, *part, flags, Mode::empty())?;
    }
    Ok(fd)
}

#[async_trait]
impl Source for FileSource {
    fn url(&self) -> &str {
        &self.url
    }

    async fn probe(&self) -> Result<(), SourceError> {
        let root = self.root.clone();
        open_beneath(&root, "", true).map(drop).map_err(|e| self.fs_err(&root, e))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, SourceError> {
        let this = self.clone();
        let prefix = prefix.trim_matches('/').to_string();
        tokio::task::spawn_blocking(move || this.walk(&prefix))
            .await
            .map_err(|e| SourceError::Io { url: self.url.clone(), detail: format!("listing failed: {e}") })?
    }

    async fn read(&self, key: &str, range: Range<u64>, etag_wanted: Option<&str>) -> Result<ObjectReader, SourceError> {
        let (root, url, key_owned) = (self.root.clone(), self.url.clone(), key.to_string());
        let changed = |detail: String| SourceError::Changed { url: url.clone(), key: key_owned.clone(), detail };
        let path = root.join(key);
        if let Some(hub) = self.hub.holding(&path) {
            return Err(SourceError::Denied {
                url: url.clone(),
                detail: format!("{key:?} is inside the hub's own files ({}), which no source may read", hub.display()),
            });
        }
        let opened = {
            let (root, key) = (root.clone(), key.to_string());
            tokio::task::spawn_blocking(move || {
                let fd = open_beneath(&root, &key, false)?;
                let st = rustix::fs::fstat(&fd)?;
                Ok::<_, rustix::io::Errno>((fd, st))
            })
            .await
            .map_err(|e| self.io(&key_owned, e))?
        };
        let (fd, st) = match opened {
            Ok(opened) => opened,
            Err(rustix::io::Errno::LOOP) => return Err(changed("a symbolic link is now on its path".into())),
            Err(rustix::io::Errno::NOTDIR) => return Err(changed("a directory on its path is gone".into())),
            Err(e) => return Err(self.fs_err(&path, e)),
        };
        if FileType::from_raw_mode(st.st_mode as _) != FileType::RegularFile {
            return Err(changed("it is no longer a regular file".into()));
        }
        if let Some(wanted) = etag_wanted
            && etag(&st) != wanted
        {
            return Err(changed(format!("etag {} instead of {wanted}", etag(&st))));
        }
        Ok(ObjectReader::File { file: std::fs::File::from(fd), range })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn links_are_inside_outside_or_the_hubs() {
        let hub = HubFiles::new([PathBuf::from("/srv/hub")]);
        let (root, prefix) = (Path::new("/srv/data"), Path::new("/srv/data/llama"));
        let class = |p: &str| classify_link(Path::new(p), root, prefix, &hub);
        assert_eq!(class("/srv/data/llama/model.bin"), LinkClass::Inside("llama/model.bin".into()));
        assert_eq!(class("/srv/data/llama"), LinkClass::Inside("llama".into()));
        assert_eq!(class("/srv/data/llama-2/model.bin"), LinkClass::Outside);
        assert_eq!(class("/srv/data/other"), LinkClass::Outside);
        assert_eq!(class("/etc/shadow"), LinkClass::Outside);
        assert_eq!(class("/srv/hub/pki/ca.key"), LinkClass::HubFiles);
        assert_eq!(class("/srv/hub"), LinkClass::HubFiles);
        // The hub's files win even inside the prefix.
        let inside = HubFiles::new([PathBuf::from("/srv/data/llama/hub")]);
        assert_eq!(classify_link(Path::new("/srv/data/llama/hub/x"), root, prefix, &inside), LinkClass::HubFiles);
    }

    #[test]
    fn names_that_are_not_utf8_are_shown_escaped() {
        assert_eq!(escape_bytes(b"ok\xffname\xc3"), "ok\\xFFname\\xC3");
        assert_eq!(escape_bytes("caf\u{e9}".as_bytes()), "caf\u{e9}");
    }

    #[tokio::test]
    async fn reads_never_follow_a_link_or_leave_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("d/real")).unwrap();
        std::fs::write(root.join("d/real/f"), b"inside").unwrap();
        std::fs::write(tmp.path().join("secret"), b"outside").unwrap();
        symlink(tmp.path().join("secret"), root.join("d/link")).unwrap();
        symlink(root.join("d/real"), root.join("d/dirlink")).unwrap();
        let url = Url::from_directory_path(&root).unwrap();
        let source = FileSource::open(&url, HubFiles::default()).unwrap();
        let read = |key: &'static str| {
            let source = &source;
            async move { source.read(key, 0..6, None).await }
        };
        assert!(read("d/real/f").await.is_ok());
        for key in ["d/link", "d/dirlink/f", "../secret", "d/../d/real/f", "/etc/passwd", "d//real/f"] {
            assert!(read(key).await.is_err(), "{key} was read");
        }
        let Err(err) = read("d/link").await else { panic!("a link was read") };
        assert!(matches!(err, SourceError::Changed { .. }), "{err}");
    }
}
