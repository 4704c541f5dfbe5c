//! The view mounted for real through the kernel's FUSE (needs root and /dev/fuse).

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use aqueduct_fuse::fs::VersionFs;
use aqueduct_fuse::fs::testing::version;
use aqueduct_testkit::noise;

fn can_mount() -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let fuse = std::path::Path::new("/dev/fuse").exists();
    if root && fuse {
        return true;
    }
    let missing = if fuse { "root (non-root mounts need fusermount3 from the fuse3 package)" } else { "/dev/fuse" };
    assert!(std::env::var("CI").is_err(), "this test mounts FUSE and needs {missing}");
    eprintln!("skipped: mounting FUSE needs {missing}");
    false
}

fn mounted(mnt: &std::path::Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(mnt.to_str().unwrap()))
}

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
    let fs = Arc::new(VersionFs::new(manifest, source.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let session = aqueduct_fuse::mount::mount(fs, &mnt, tokio::runtime::Handle::current()).unwrap();

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
    })
    .await;
    session.umount_and_join().unwrap();
    assert!(!mounted(&mnt), "the mount is still there after unmount");
    checks.unwrap();
}
