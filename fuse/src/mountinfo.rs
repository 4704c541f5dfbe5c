//! The mount table of this process's mount namespace (`/proc/self/mountinfo`), read: what is
//! mounted where. The holder checks a mountpoint is free with it; the spoke's CSI node plugin
//! checks whether a pod's bind mount is still there.

use std::path::{Path, PathBuf};

/// What is mounted exactly at `path` ("SOURCE (FSTYPE)"), from /proc/self/mountinfo.
pub fn mounted_at(path: &Path) -> Option<String> {
    let target = path.canonicalize().ok()?;
    let table = std::fs::read("/proc/self/mountinfo").ok()?;
    // The last mount at a point is the one on top.
    parse_mountinfo(&table)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == target)
        .map(|m| format!("{} ({})", m.source, m.fs_type))
}

/// One line of a mountinfo table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountLine {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// The lines of a mountinfo table (proc(5)): `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS
/// [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`, space-separated, with the kernel's octal
/// escapes (`\040` for a space, `\011`, `\012`, `\134`) undone. The mount point is bytes, as
/// the kernel has it (a path need not be UTF-8). A line of another shape is skipped.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountLine> {
    use std::os::unix::ffi::OsStringExt;
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let point = fields.get(4)?;
            // Optional fields run from the sixth to a lone `-`.
            let dash = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
            let (fs_type, source) = (fields.get(dash + 1)?, fields.get(dash + 2)?);
            let text = |field: &[u8]| String::from_utf8_lossy(&unescape(field)).into_owned();
            Some(MountLine {
                mount_point: PathBuf::from(std::ffi::OsString::from_vec(unescape(point))),
                fs_type: text(fs_type),
                source: text(source),
            })
        })
        .collect()
}

/// Undoes the kernel's escapes: a backslash and three octal digits are that byte; anything
/// else stays as it is.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal =
            field.get(i + 1..i + 4).filter(|d| field[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal.map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0'))) {
            Some(byte) if byte <= 0xff => {
                out.push(byte as u8);
                i += 4;
            }
            _ => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    /// What the kernel writes for a field: space, tab, newline and backslash as octal escapes.
    fn escape(field: &[u8]) -> Vec<u8> {
        field
            .iter()
            .flat_map(|&b| match b {
                b' ' | b'\t' | b'\n' | b'\\' => format!("\\{b:03o}").into_bytes(),
                _ => vec![b],
            })
            .collect()
    }

    #[test]
    fn mountinfo_lines_and_escapes() {
        let text = b"22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n\
            36 35 98:0 /mnt1 /mnt/my\\040models\\134x rw,noatime master:1 propagation:x - fuse.aqueduct aqueduct\\040llama rw\n\
            bad line\n\
            40 35 0:50 / /no/dash rw\n\
            41 35 0:51 / /odd\\77\\400\\ rw - tmpfs tmpfs rw";
        let lines = parse_mountinfo(text);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[1].mount_point, Path::new("/mnt/my models\\x"));
        assert_eq!((lines[1].fs_type.as_str(), lines[1].source.as_str()), ("fuse.aqueduct", "aqueduct llama"));
        // Not escapes: fewer than three octal digits, beyond a byte, a lone backslash.
        assert_eq!(lines[2].mount_point, Path::new("/odd\\77\\400\\"));
        // This process's own table has its root.
        let own = parse_mountinfo(&std::fs::read("/proc/self/mountinfo").unwrap());
        assert!(own.iter().any(|m| m.mount_point == Path::new("/")), "{own:?}");
        assert!(mounted_at(Path::new("/proc")).is_some_and(|m| m.contains("proc")));
    }

    proptest! {
        #![proptest_config(fuzz::config(3000))]

        /// Any bytes as a table: lines or nothing, never a panic.
        #[test]
        fn fuzz_mountinfo_from_any_bytes(text in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            "([0-9 :/\\\\a-z-]|\\\\[0-7]{0,3}|\n){0,80}".prop_map(String::into_bytes),
        ]) {
            let lines = parse_mountinfo(&text);
            prop_assert!(lines.len() <= text.split(|&b| b == b'\n').count());
        }

        /// Mount points of any bytes (spaces, tabs, newlines, backslashes, what looks like an
        /// escape, bytes that are not UTF-8) read back exactly as they were mounted.
        #[test]
        fn fuzz_mountinfo_round_trip(
            entries in proptest::collection::vec((
                proptest::collection::vec(prop_oneof![any::<u8>(), Just(b' '), Just(b'\\'), Just(b'\n'), Just(b'-')], 0..24),
                "[a-z.]{1,12}",
                "([ a-z0-9/-]|\\\\){1,12}",
                proptest::collection::vec("[a-z]{1,6}:[0-9]{1,3}", 0..3),
            ), 0..6),
        ) {
            let mut table = Vec::new();
            for (i, (point, fs_type, source, optional)) in entries.iter().enumerate() {
                let point = [b"/".as_slice(), point].concat();
                table.extend(format!("{} 1 0:{i} / ", 20 + i).into_bytes());
                table.extend(escape(&point));
                table.extend(b" rw,relatime");
                for o in optional {
                    table.extend(format!(" {o}").into_bytes());
                }
                table.extend(b" - ");
                table.extend(escape(fs_type.as_bytes()));
                table.push(b' ');
                table.extend(escape(source.as_bytes()));
                table.extend(b" rw\n");
            }
            let lines = parse_mountinfo(&table);
            prop_assert_eq!(lines.len(), entries.len());
            for (line, (point, fs_type, source, _)) in lines.iter().zip(&entries) {
                let want = [b"/".as_slice(), point].concat();
                prop_assert_eq!(line.mount_point.as_os_str().as_bytes(), want.as_slice());
                prop_assert_eq!(&line.fs_type, fs_type);
                prop_assert_eq!(&line.source, source);
            }
        }
    }
}
