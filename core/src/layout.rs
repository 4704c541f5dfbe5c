//! The chunk store's file layout, the one definition the spoke's `DiskStore` writes and the
//! FUSE holder reads: one file per chunk, `ROOT/chunks/AB/ABCDEF...`, named by the chunk's
//! BLAKE3 digest in lowercase hex and filed under its first two hex digits.

use std::path::{Path, PathBuf};

/// The directory of chunk files inside a store's root.
pub const CHUNKS_DIR: &str = "chunks";

/// Where a store in `root` keeps the chunk whose digest is `hex` (64 lowercase hex digits).
pub fn chunk_path(root: &Path, hex: &str) -> PathBuf {
    let fan = hex.get(..2).unwrap_or(hex);
    root.join(CHUNKS_DIR).join(fan).join(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_filed_under_their_first_two_hex_digits() {
        let hex = "ab".to_string() + &"0".repeat(62);
        assert_eq!(chunk_path(Path::new("/s"), &hex), Path::new("/s/chunks/ab").join(&hex));
        // Never a panic on a short name.
        assert_eq!(chunk_path(Path::new("/s"), "a"), Path::new("/s/chunks/a/a"));
    }
}
