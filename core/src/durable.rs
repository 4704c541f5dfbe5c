//! Small files and directories that survive a crash: whole or not there, never half written.
//!
//! Every file that hub and spoke keep on disk by themselves (the chunk store's `FORMAT` and its
//! chunks, the spoke's catalog, the hub's PKI files and configs written by `aqueduct-hub init`)
//! is written here, one way: to a temporary file in the same directory (or a directory of the
//! same filesystem), fsync, rename over the name, fsync the directory. A reader sees the old
//! file or the new one; after a crash or a power cut, the same. A directory made here has its
//! parent fsynced, so that what is renamed into it is not lost with it.
//!
//! A crash can leave a temporary file behind (named by [`is_temporary`]); whoever owns the
//! directory removes them when it starts ([`remove_temporaries`]).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of a file anyone may read (less what the umask takes), as `std::fs::write` makes them.
pub const PUBLIC: u32 = 0o666;
/// Mode of a file only its owner may read: private keys, configs that name them.
pub const SECRET: u32 = 0o600;

/// The suffix of temporary names: `.NAME.PID.SEQ.tmp`.
const TMP_SUFFIX: &str = ".tmp";

/// Makes temporary names unique inside one process (two tasks may write one file at once).
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to `path` atomically and durably, through a temporary file of its own in the
/// same directory, with permission bits `mode` ([`PUBLIC`] or [`SECRET`]).
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_file_via(&temporary_name(path)?, path, data, mode)
}

/// As [`write_file`], through `tmp`: a name nobody else uses, on the same filesystem as
/// `path` (the chunk store keeps its temporary files in a directory of their own). On an
/// error the temporary file is removed.
pub fn write_file_via(tmp: &Path, path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let write = || -> io::Result<()> {
        // `create_new`: never write through a file (or a link) that is already there.
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(tmp)?;
        if mode & 0o077 == 0 {
            // The umask can only take bits away; this makes sure of the rest.
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        fs::rename(tmp, path)?;
        sync_dir(parent(path))
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(tmp);
    })
}

/// Creates `path` and any missing parents, each new directory made durable (its parent
/// fsynced). An existing directory is left as it is. Safe against others creating the same
/// directories at the same time.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    let mut missing: Vec<&Path> = Vec::new();
    let mut at = path;
    while !at.as_os_str().is_empty() && !at.is_dir() {
        missing.push(at);
        match at.parent() {
            Some(up) => at = up,
            None => break,
        }
    }
    for dir in missing.into_iter().rev() {
        match fs::create_dir(dir) {
            Ok(()) => sync_dir(parent(dir))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether a file name is one of this module's temporary names (a crash left it).
pub fn is_temporary(name: &OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(TMP_SUFFIX) && n.len() > 1 + TMP_SUFFIX.len())
}

/// Removes the temporary files a crash left in `dir` (not in its subdirectories); returns how
/// many. A missing directory has none.
pub fn remove_temporaries(dir: &Path) -> io::Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        if is_temporary(&entry.file_name()) && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// `.NAME.PID.SEQ.tmp` next to `path`.
fn temporary_name(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display())))?;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.{seq}{TMP_SUFFIX}", std::process::id()));
    Ok(parent(path).join(tmp))
}

/// The directory a path is in (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a directory's entries (a rename into it, a new subdirectory) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_replaced_whole_with_their_mode_and_nothing_left_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/FORMAT");
        create_dir_all(path.parent().unwrap()).unwrap();
        create_dir_all(path.parent().unwrap()).unwrap();
        write_file(&path, b"1\n", PUBLIC).unwrap();
        write_file(&path, b"2\n", SECRET).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"2\n");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["FORMAT"], "a temporary file was left");

        // A failed write leaves the old file and no temporary one.
        let blocked = dir.path().join("a/b/dir");
        fs::create_dir(&blocked).unwrap();
        assert!(write_file(&blocked, b"x", PUBLIC).is_err());
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 2);

        // What a crash leaves is recognised and removed; other files are not.
        fs::write(dir.path().join("a/b/.FORMAT.77.3.tmp"), b"half").unwrap();
        fs::write(dir.path().join("a/b/.hidden"), b"mine").unwrap();
        assert_eq!(remove_temporaries(path.parent().unwrap()).unwrap(), 1);
        assert!(dir.path().join("a/b/.hidden").exists());
        assert_eq!(remove_temporaries(&dir.path().join("missing")).unwrap(), 0);
        assert!(!is_temporary(OsStr::new(".tmp")) && !is_temporary(OsStr::new("x.tmp")));
    }

    #[test]
    fn concurrent_creators_of_one_directory_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("x/y/z");
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| create_dir_all(&deep).unwrap());
            }
        });
        assert!(deep.is_dir());
        // A file in the way is an error, not a directory.
        fs::write(dir.path().join("f"), b"").unwrap();
        assert!(create_dir_all(&dir.path().join("f/g")).is_err());
    }
}
