//! The view mounted for real through the kernel's FUSE (needs root and /dev/fuse).

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use aqueduct_fuse::fs::testing::version;
use aqueduct_fuse::fs::{ChunkCache, VersionFs};
use aqueduct_fuse::view::View;
use aqueduct_testkit::{can_mount_fuse as can_mount, is_mounted as mounted_at, noise, xattr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_version_reads_like_files_and_refuses_writes() {
    if !can_mount() {
        return;
    }
    let files = vec![
        ("config.json", b"{\"hidden_size\": 4096}".to_vec()),
        ("model.safetensors", noise(3 << 20, 7)),
        ("tok/tokenizer.json", noise(100_000, 8)),
        ("tok/other.json", noise(50_000, 9)),
    ];
    let (manifest, source) = version(&files);
    let corrupt = manifest.file("tok/other.json").unwrap().chunks[1].digest;
    let source = Arc::new(source);
    let model_root = manifest.file("model.safetensors").unwrap().root().to_hex();
    let view = Arc::new(View::new(VersionFs::new(manifest, source.clone(), ChunkCache::new(1 << 20))));
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let session = aqueduct_fuse::mount::mount(view, &mnt, tokio::runtime::Handle::current()).unwrap();

    let dir = mnt.clone();
    let files2 = files.clone();
    let checks = tokio::task::spawn_blocking(move || {
        // A corrupt chunk is EIO, never bytes.
        *source.corrupt.lock().unwrap() = Some(corrupt);
        let err = std::fs::read(dir.join("tok/other.json")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(5), "{err}");
        *source.corrupt.lock().unwrap() = None;

        for (path, bytes) in &files2 {
            assert_eq!(std::fs::read(dir.join(path)).unwrap(), *bytes, "{path}");
            assert_eq!(std::fs::metadata(dir.join(path)).unwrap().len(), bytes.len() as u64);
        }
        // Reads that straddle chunk boundaries and run past the end.
        let mut f = std::fs::File::open(dir.join("model.safetensors")).unwrap();
        let model = &files2[1].1;
        for offset in [0usize, 999, 1000, 4095, 1 << 20, model.len() - 10] {
            f.seek(SeekFrom::Start(offset as u64)).unwrap();
            let mut buf = vec![0; 10_000];
            let n = f.read(&mut buf).unwrap();
            assert!(n > 0);
            assert_eq!(buf[..n], model[offset..offset + n]);
        }
        let mut names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["config.json", "model.safetensors", "tok"]);
        for attempt in [
            std::fs::write(dir.join("config.json"), b"x"),
            std::fs::write(dir.join("new.txt"), b"x"),
            std::fs::create_dir(dir.join("d")),
            std::fs::remove_file(dir.join("config.json")),
        ] {
            assert_eq!(attempt.unwrap_err().raw_os_error(), Some(30), "a write was not refused with EROFS");
        }
        let err = std::fs::read(dir.join("missing")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);

        assert_eq!(xattr(&dir.join("model.safetensors"), "user.aqueduct.root"), Some(model_root));
        assert_eq!(xattr(&dir.join("tok"), "user.aqueduct.dataset").as_deref(), Some("ds"));
        assert_eq!(xattr(&dir.join("tok"), "user.aqueduct.nope"), None);
        let (blocks, block_size, files) = statvfs(&dir);
        let total: usize = files2.iter().map(|(_, b)| b.len()).sum();
        assert_eq!((blocks * block_size).div_ceil(4096), (total as u64).div_ceil(4096));
        assert_eq!(files, 4);
    })
    .await;
    session.unmount(false).unwrap();
    assert!(!mounted_at(&mnt), "the mount is still there after unmount");
    checks.unwrap();
}

/// (blocks, block size, files) of the filesystem at `path`.
fn statvfs(path: &std::path::Path) -> (u64, u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    (st.f_blocks, st.f_frsize, st.f_files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_switch_shows_new_opens_the_new_version_and_open_files_the_old() {
    if !can_mount() {
        return;
    }
    let cache = ChunkCache::new(1 << 20);
    let v1 = vec![("model.bin", noise(2 << 20, 1)), ("only-v1.json", b"1".to_vec())];
    let v2 = vec![("model.bin", noise(3 << 20, 2)), ("only-v2.json", b"2".to_vec())];
    let fs = |files: &[(&str, Vec<u8>)], number| {
        let (mut manifest, source) = version(files);
        manifest.version = number;
        VersionFs::new(manifest, Arc::new(source), cache.clone())
    };
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted =
        aqueduct_fuse::mount::mount(Arc::new(View::new(fs(&v1, 1))), &mnt, tokio::runtime::Handle::current()).unwrap();
    let mounted = Arc::new(mounted);

    let (dir, m, v1b, v2b) = (mnt.clone(), mounted.clone(), v1.clone(), v2.clone());
    let v2fs = fs(&v2, 2);
    let checks = tokio::task::spawn_blocking(move || {
        let mut held = std::fs::File::open(dir.join("model.bin")).unwrap();
        let mut first = vec![0; 1000];
        held.read_exact(&mut first).unwrap();
        assert_eq!(std::fs::read(dir.join("only-v1.json")).unwrap(), b"1");

        assert!(m.switch(v2fs));
        assert_eq!(std::fs::read(dir.join("model.bin")).unwrap(), v2b[0].1, "a new open saw the old version");
        assert_eq!(std::fs::read(dir.join("only-v2.json")).unwrap(), b"2");
        assert!(!dir.join("only-v1.json").exists(), "an entry of the old version is still visible");
        let mut rest = Vec::new();
        held.read_to_end(&mut rest).unwrap();
        first.extend(rest);
        assert_eq!(first, v1b[0].1, "a file open across the switch did not read its version to the end");
    })
    .await;
    mounted.unmount(false).unwrap();
    assert!(!mounted_at(&mnt));
    checks.unwrap();
}
