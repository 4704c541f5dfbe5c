//! The one file that speaks FUSE: adapts [`VersionFs`] to `fuser` and maps its errors to
//! errnos in one function.
//!
//! Callbacks never wait on chunks: reads are handed to the tokio runtime and answered from
//! there, so a cold read does not stall other readers. Versions are immutable, so attributes
//! and entries get long TTLs and open files keep the kernel's page cache. The mount is
//! read-only (`ro`): the kernel itself refuses writes with EROFS.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};

use crate::fs::{Attr, ChunkSource, FsError, Kind, VersionFs};

/// How long the kernel may keep entries and attributes: a version never changes.
const TTL: Duration = Duration::from_secs(3600);

/// The errno a reply carries for each error: the one place errors become errnos.
pub fn errno(e: &FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::ReadOnly => Errno::EROFS,
        FsError::Corrupt { .. } | FsError::Unavailable { .. } => Errno::EIO,
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

pub struct FuseAdapter<S> {
    fs: Arc<VersionFs<S>>,
    runtime: tokio::runtime::Handle,
}

impl<S: ChunkSource + 'static> Filesystem for FuseAdapter<S> {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else { return reply.error(Errno::ENOENT) };
        match self.fs.lookup(parent.0, name) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & (libc_o_wronly() | libc_o_rdwr()) != 0 {
            return reply.error(Errno::EROFS);
        }
        match self.fs.getattr(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.read(ino.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.fs.readdir(ino.0, offset as usize) {
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
}

// O_WRONLY and O_RDWR, the same on every Linux architecture.
const fn libc_o_wronly() -> i32 {
    1
}
const fn libc_o_rdwr() -> i32 {
    2
}

/// Mounts `fs` read-only at `mountpoint`; reads run on `runtime`. Unmount with
/// [`BackgroundSession::umount_and_join`] (not AutoUnmount, which hangs on some kernels).
pub fn mount<S: ChunkSource + 'static>(
    fs: Arc<VersionFs<S>>,
    mountpoint: &Path,
    runtime: tokio::runtime::Handle,
) -> std::io::Result<BackgroundSession> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("aqueduct:{}@v{}", fs.manifest().dataset, fs.manifest().version)),
        MountOption::Subtype("aqueduct".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    fuser::spawn_mount(FuseAdapter { fs, runtime }, mountpoint, &config)
}
