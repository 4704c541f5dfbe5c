//! The private unix sockets of a node's local APIs (the spoke's, the FUSE holder's): bound for
//! this user only, in a directory made if missing, over a socket an earlier process left.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Listens on a unix socket at `path`, only for this user (mode 0600), creating its directory
/// and replacing a socket an earlier process left there. Non-blocking, ready for
/// `tokio::net::UnixListener::from_std`.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_private_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/api.sock");
        let first = bind_private(&path).unwrap();
        drop(first);
        // The file of a process that went is still there; the next one binds over it.
        assert!(path.exists());
        let _second = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::os::unix::net::UnixStream::connect(&path).unwrap();
    }

    #[test]
    fn a_path_that_is_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("api.sock/inner")).unwrap();
        assert!(bind_private(&dir.path().join("api.sock")).is_err());
    }
}
