//! The one file that speaks FUSE: adapts [`VersionFs`] to `fuser` and maps its errors to
//! errnos in one function.
//!
//! Callbacks never wait on chunks: reads are handed to the tokio runtime and answered from
//! there, so a cold read does not stall other readers. Versions are immutable, so attributes
//! and entries get long TTLs and open files keep the kernel's page cache. The mount is
//! read-only (`ro`): the kernel itself refuses writes with EROFS.
//!
//! With a [`Backing`] (the holder's whole copies), `open` hands the kernel a verified,
//! read-only whole copy of the file when there is one (FUSE passthrough): reads then never
//! reach this process. The kernel wants one backing file per inode for all its open handles,
//! and refuses a passthrough open of an inode that is open through the page cache (and the
//! reverse), so an inode's open handles all take one route ([`route`]) and share one
//! `BackingId`, dropped with the last of them. A kernel or process that cannot pass through
//! (no capability at INIT, BACKING_OPEN refused) is told to the `Backing` once; opens then
//! take the copy route.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use std::sync::atomic::AtomicBool;

use aqueduct_proto::FileEntry;
use fuser::{
    BackgroundSession, BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, Notifier, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use tracing::{instrument, warn};

use crate::fs::{Attr, ChunkSource, FsError, Kind, ROOT, ReadPattern, VersionFs};
use crate::view::View;

/// How long the kernel may keep entries and attributes: a version never changes, and a
/// switch to another version invalidates the root's entries explicitly.
const TTL: Duration = Duration::from_secs(3600);
/// What the kernel may read ahead on its own, on top of the view's chunk read-ahead.
const KERNEL_READAHEAD: u32 = 8 << 20;

/// The errno a reply carries for each error: the one place errors become errnos.
pub fn errno(e: &FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::ReadOnly => Errno::EROFS,
        FsError::NoAttribute => Errno::ENODATA,
        FsError::Corrupt { .. } | FsError::Unavailable { .. } | FsError::WrongLength { .. } => Errno::EIO,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let mtime = UNIX_EPOCH + Duration::from_millis(a.mtime_unix_ms.max(0) as u64);
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 1 << 20,
        flags: 0,
    }
}

/// Told of every read a mount answers: how many bytes, how long it took (from the kernel's
/// request to the answer) and whether it succeeded. The spoke counts reads for its metrics
/// with one; this crate knows nothing of metrics.
pub trait ReadObserver: Send + Sync {
    fn read_done(&self, bytes: usize, elapsed: std::time::Duration, ok: bool);
}

/// Verified, read-only whole copies of files, which a mount passes to the kernel (FUSE
/// passthrough) instead of answering reads itself.
pub trait Backing: Send + Sync {
    /// A whole copy of `file`, opened read-only, if one exists that this process verified.
    fn open(&self, file: &FileEntry) -> Option<std::fs::File>;
    /// An open was answered by passthrough.
    fn passed_through(&self);
    /// Passthrough cannot work here (`why`); called whenever it is found, to be told once.
    fn unavailable(&self, why: &str);
}

/// How an inode's open handles are served.
#[derive(Clone, Debug, Default)]
enum Route {
    /// Nothing open.
    #[default]
    Closed,
    /// Through this process and the page cache: so many handles.
    Copy(usize),
    /// By the kernel from a backing file: so many handles, one id.
    Passthrough(usize, Arc<BackingId>),
}

/// What an open of an inode whose handles take `now` may do: join the passthrough already
/// there, try passthrough (nothing open), or take the copy route (copy handles are open, and
/// the kernel would refuse a passthrough open beside them).
#[derive(Debug, PartialEq, Eq)]
enum OpenAs {
    Join,
    Try,
    Copy,
}

fn route(now: &Route, passthrough_on: bool) -> OpenAs {
    match now {
        Route::Passthrough(..) => OpenAs::Join,
        Route::Closed if passthrough_on => OpenAs::Try,
        _ => OpenAs::Copy,
    }
}

struct Handle {
    ino: u64,
    pattern: Arc<ReadPattern>,
}

pub struct FuseAdapter<S> {
    view: Arc<View<S>>,
    observer: Option<Arc<dyn ReadObserver>>,
    runtime: tokio::runtime::Handle,
    /// Read-ahead state per open file.
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    backing: Option<Arc<dyn Backing>>,
    /// The kernel granted passthrough at INIT and no BACKING_OPEN was refused.
    passthrough_on: AtomicBool,
    /// The route of each inode with open handles.
    routes: Mutex<HashMap<u64, Route>>,
}

impl<S: ChunkSource + 'static> FuseAdapter<S> {
    /// Opens `ino` by passthrough if it may and can; `None`: take the copy route.
    fn try_passthrough(&self, ino: u64, reply: &ReplyOpen) -> Option<Arc<BackingId>> {
        let backing = self.backing.as_ref()?;
        let file = self.view.with_file(ino, |f| backing.open(f)).ok().flatten()?;
        match reply.open_backing(&file) {
            Ok(id) => Some(Arc::new(id)),
            Err(e) => {
                self.passthrough_on.store(false, Ordering::Relaxed);
                backing.unavailable(&format!("the kernel refused a backing file: {e}"));
                None
            }
        }
    }
}

impl<S: ChunkSource + 'static> Filesystem for FuseAdapter<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // The kernel clamps to what it supports; either answer is fine.
        let _ = config.set_max_readahead(KERNEL_READAHEAD);
        if let Some(backing) = &self.backing {
            match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                // A backing file on an ordinary filesystem (stack depth 0) under this one.
                Ok(()) => match config.set_max_stack_depth(1) {
                    Ok(_) => self.passthrough_on.store(true, Ordering::Relaxed),
                    Err(_) => backing.unavailable("the kernel refused a filesystem stack depth of 1"),
                },
                Err(_) => backing.unavailable("the kernel does not offer FUSE_PASSTHROUGH (Linux 6.9 or later)"),
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else { return reply.error(Errno::ENOENT) };
        match self.view.lookup(parent.0, name) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.view.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & (libc_o_wronly() | libc_o_rdwr()) != 0 {
            return reply.error(Errno::EROFS);
        }
        match self.view.getattr(ino.0) {
            Ok(_) => {
                let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
                let handle = Handle { ino: ino.0, pattern: Arc::default() };
                self.handles.lock().unwrap_or_else(|e| e.into_inner()).insert(fh, handle);
                // One route per inode, decided under the lock (opens of one inode may race).
                let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
                let now = routes.entry(ino.0).or_default();
                let id = match route(now, self.passthrough_on.load(Ordering::Relaxed)) {
                    OpenAs::Join => match now {
                        Route::Passthrough(n, id) => {
                            *n += 1;
                            Some(id.clone())
                        }
                        _ => None,
                    },
                    OpenAs::Try => self.try_passthrough(ino.0, &reply).inspect(|id| {
                        *now = Route::Passthrough(1, id.clone());
                    }),
                    OpenAs::Copy => None,
                };
                match id {
                    Some(id) => {
                        if let Some(b) = &self.backing {
                            b.passed_through();
                        }
                        // Never FOPEN_KEEP_CACHE with passthrough: the kernel answers reads EIO.
                        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id)
                    }
                    None => {
                        *now = match now {
                            Route::Copy(n) => Route::Copy(*n + 1),
                            _ => Route::Copy(1),
                        };
                        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
                    }
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let view = self.view.clone();
        let pattern = self.handles.lock().unwrap_or_else(|e| e.into_inner()).get(&fh.0).map(|h| h.pattern.clone());
        let observer = self.observer.clone();
        let started = std::time::Instant::now();
        self.runtime.spawn(async move {
            let result = view.read(ino.0, offset, size, pattern.as_deref()).await;
            if let Some(observer) = &observer {
                observer.read_done(result.as_ref().map_or(0, |d| d.len()), started.elapsed(), result.is_ok());
            }
            match result {
                Ok(data) => reply.data(&data),
                Err(e) => {
                    if matches!(e, FsError::Corrupt { .. } | FsError::Unavailable { .. } | FsError::WrongLength { .. })
                    {
                        warn!(ino = ino.0, offset, size, error = %e, "read failed; answering EIO");
                    }
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let handle = self.handles.lock().unwrap_or_else(|e| e.into_inner()).remove(&fh.0);
        if let Some(h) = handle {
            let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            let last = match routes.get_mut(&h.ino) {
                Some(Route::Copy(n) | Route::Passthrough(n, _)) => {
                    *n = n.saturating_sub(1);
                    *n == 0
                }
                _ => true,
            };
            if last {
                // The inode's BackingId (if any) is closed here, with its last handle.
                routes.remove(&h.ino);
            }
        }
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.view.readdir(ino.0, offset as usize) {
            Ok(entries) => {
                for (i, (name, a)) in entries.iter().enumerate() {
                    let kind = if a.kind == Kind::Dir { FileType::Directory } else { FileType::RegularFile };
                    if reply.add(INodeNo(a.ino), offset + i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let stats = self.view.stats();
        const BLOCK: u64 = 4096;
        reply.statfs(stats.bytes.div_ceil(BLOCK), 0, 0, stats.files, 0, BLOCK as u32, 255, BLOCK as u32);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(name) = name.to_str() else { return reply.error(Errno::ENODATA) };
        match self.view.xattr(ino.0, name) {
            Ok(value) => answer_xattr(&value, size, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.view.xattr_names(ino.0) {
            Ok(names) => {
                let list: Vec<u8> = names.iter().flat_map(|n| n.bytes().chain([0])).collect();
                answer_xattr(&list, size, reply)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// A size probe (`size == 0`) gets the length; a buffer too small gets ERANGE.
fn answer_xattr(value: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(value.len() as u32)
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inode_s_handles_all_take_one_route() {
        assert_eq!(route(&Route::Closed, true), OpenAs::Try);
        assert_eq!(route(&Route::Closed, false), OpenAs::Copy);
        // Copy handles open: the kernel would refuse a passthrough open beside them.
        assert_eq!(route(&Route::Copy(1), true), OpenAs::Copy);
    }
}

// O_WRONLY and O_RDWR, the same on every Linux architecture.
const fn libc_o_wronly() -> i32 {
    1
}
const fn libc_o_rdwr() -> i32 {
    2
}

/// A mounted view: switch its version, unmount it.
pub struct Mounted<S> {
    session: Mutex<Option<BackgroundSession>>,
    notifier: Notifier,
    view: Arc<View<S>>,
    mountpoint: PathBuf,
}

impl<S: ChunkSource + 'static> Mounted<S> {
    pub fn view(&self) -> &Arc<View<S>> {
        &self.view
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Shows `fs` to new lookups; files already open keep reading the version they opened.
    /// Returns whether anything changed.
    #[instrument(skip_all, fields(dataset = %fs.manifest().dataset, version = fs.manifest().version))]
    pub fn switch(&self, fs: VersionFs<S>) -> bool {
        let Some(names) = self.view.switch(fs) else { return false };
        // The kernel holds the root's entries for TTL: drop them, and the root's listing.
        // An entry it never cached answers ENOENT, which is fine.
        for name in names {
            let _ = self.notifier.inval_entry(INodeNo(ROOT), OsStr::new(&name));
        }
        let _ = self.notifier.inval_inode(INodeNo(ROOT), 0, 0);
        true
    }

    /// Unmounts and waits for the session to end. A mount with open files is `Busy`, and
    /// stays mounted, unless `lazy`: then it is detached at once (new opens fail) and goes
    /// away when the last open file is closed. Unmounting twice is a no-op.
    #[instrument(skip_all, fields(mountpoint = %self.mountpoint.display(), lazy))]
    pub fn unmount(&self, lazy: bool) -> Result<(), UnmountError> {
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if session.is_none() {
            return Ok(());
        }
        let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
            .map_err(|e| UnmountError::Io(io::Error::other(e)))?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: a NUL-terminated path; umount2 reads nothing else.
        let unmounted = unsafe { libc::umount2(path.as_ptr(), flags) } == 0;
        if !unmounted {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EBUSY) => return Err(UnmountError::Busy(self.mountpoint.clone())),
                // Not root: fuser's own unmount goes through fusermount3.
                Some(libc::EPERM) => {}
                _ => return Err(UnmountError::Io(e)),
            }
        }
        let session = session.take().expect("checked above");
        let end = move || if unmounted { session.join() } else { session.umount_and_join() };
        if lazy {
            // The session ends when the last open file closes; do not wait for readers.
            std::thread::spawn(end);
            return Ok(());
        }
        end().map_err(UnmountError::Io)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnmountError {
    #[error("{0} is busy: files under it are open; close them, or unmount lazily")]
    Busy(PathBuf),
    #[error("unmount failed: {0}")]
    Io(io::Error),
}

/// Mounts `view` read-only at `mountpoint`; reads run on `runtime`. Unmount with
/// [`Mounted::unmount`] (not AutoUnmount, which hangs on some kernels).
pub fn mount<S: ChunkSource + 'static>(
    view: Arc<View<S>>,
    mountpoint: &Path,
    runtime: tokio::runtime::Handle,
) -> io::Result<Mounted<S>> {
    mount_observed(view, mountpoint, runtime, None, None)
}

/// [`mount`], telling `observer` of every read, and passing files through to `backing`'s
/// whole copies where it has them.
pub fn mount_observed<S: ChunkSource + 'static>(
    view: Arc<View<S>>,
    mountpoint: &Path,
    runtime: tokio::runtime::Handle,
    observer: Option<Arc<dyn ReadObserver>>,
    backing: Option<Arc<dyn Backing>>,
) -> io::Result<Mounted<S>> {
    let current = view.current();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("aqueduct:{}", current.manifest().dataset)),
        MountOption::Subtype("aqueduct".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
    ];
    // Pods read as whatever user they run as. Other users than root mount through
    // fusermount3, which allows that only with `user_allow_other` in /etc/fuse.conf.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        config.acl = fuser::SessionACL::All;
    }
    let adapter = FuseAdapter {
        view: view.clone(),
        observer,
        runtime,
        handles: Mutex::default(),
        next_handle: AtomicU64::new(1),
        backing,
        passthrough_on: AtomicBool::new(false),
        routes: Mutex::default(),
    };
    let session = fuser::spawn_mount(adapter, mountpoint, &config)?;
    raise_readahead(mountpoint);
    let notifier = session.notifier();
    Ok(Mounted { session: Mutex::new(Some(session)), notifier, view, mountpoint: mountpoint.to_owned() })
}

/// The kernel offers FUSE a 128 KiB read-ahead at mount time, so a sequential reader's
/// requests are 128 KiB each; a version's files are read front to back by model loaders, and
/// fewer, larger requests cost less. Raised through the mount's backing device in sysfs
/// (root only; otherwise left as it is).
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else { return };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, (KERNEL_READAHEAD / 1024).to_string()) {
        tracing::debug!(%path, error = %e, "could not raise the mount's read-ahead");
    }
}

/// Whether this process can mount FUSE here; if not, what is missing and the command that
/// fixes it. As root nothing but /dev/fuse is needed (fuser mounts without libfuse); other
/// users mount through `fusermount3`.
pub fn check_available() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err(
            "/dev/fuse is missing: run `modprobe fuse` (in a pod: mount /dev/fuse and add CAP_SYS_ADMIN)".into()
        );
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let fusermount = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("fusermount3").is_file()));
    if !root && !fusermount {
        return Err("this user is not root and fusermount3 is missing: run `apt-get install fuse3`".into());
    }
    Ok(())
}
