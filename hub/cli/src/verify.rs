//! `aq verify`: checks files of a mounted version offline, with nothing but the version's
//! manifest (`aq manifest D@vN --chunks -o json`), the hub's public signing keys and the files.
//!
//! It checks, in order: the manifest's entries hash to its root; the hub's signature over
//! (dataset, version, root) verifies under a trusted key; and for each file, its extended
//! attributes (`user.aqueduct.dataset`, `.version`, `.root`, as the FUSE view shows them) name
//! this version and an entry of it, and its bytes are that entry's, chunk by chunk (BLAKE3). The
//! signature view ([`SignatureView`]) is also what `aq manifest` shows of who signed.

use std::io::Read;
use std::path::{Path, PathBuf};

use aqueduct_core::signing::{PublicKey, TrustedKeys, hex, parse_public_keys, unhex};
use aqueduct_proto::domain::signature::{SIGNATURE_LEN, VersionSignature};
use aqueduct_proto::{ChunkRef, ChunkerParams, Digest, FileEntry, Manifest};
use serde::{Deserialize, Serialize};

use crate::output::rfc3339;

/// Who signed a version, and when; `signature` is the 64 bytes in hex.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignatureView {
    pub key_id: String,
    pub signed: Option<String>,
    pub signed_unix_ms: i64,
    pub signature: String,
}

impl SignatureView {
    pub fn new(s: &VersionSignature) -> Self {
        SignatureView {
            key_id: s.key_id.to_string(),
            signed: rfc3339(s.signed_unix_ms),
            signed_unix_ms: s.signed_unix_ms,
            signature: hex(&s.signature),
        }
    }

    /// A signature as the hub sends it with a version's summary.
    pub fn from_wire(s: &aqueduct_proto::hub::v1::VersionSignature) -> Self {
        SignatureView {
            key_id: s.key_id.clone(),
            signed: rfc3339(s.signed_unix_ms),
            signed_unix_ms: s.signed_unix_ms,
            signature: hex(&s.signature),
        }
    }

    /// The line `aq manifest` prints under the root.
    pub fn line(view: Option<&SignatureView>) -> String {
        match view {
            Some(s) => format!(
                "signed by key {} at {}\n",
                s.key_id,
                s.signed.clone().unwrap_or_else(|| s.signed_unix_ms.to_string())
            ),
            None => "NOT SIGNED: spokes refuse this version\n".into(),
        }
    }
}

/// Why a check failed (the message says what and what to do).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is not a manifest with its chunks: write one with `aq manifest DATASET@vN --chunks -o json > FILE` ({reason})"
    )]
    BadManifest { path: PathBuf, reason: String },
    #[error("{0}")]
    Keys(String),
    #[error(transparent)]
    Signature(#[from] aqueduct_core::signing::VerifyError),
}

#[derive(Deserialize)]
struct ManifestDoc {
    dataset: String,
    version: u64,
    root: String,
    format: u32,
    chunker: ChunkerDoc,
    files: Vec<FileDoc>,
    #[serde(default)]
    signature: Option<SignatureView>,
}

#[derive(Deserialize)]
struct ChunkerDoc {
    min_bytes: u32,
    avg_bytes: u32,
    max_bytes: u32,
}

#[derive(Deserialize)]
struct FileDoc {
    path: String,
    object: String,
    size_bytes: u64,
    mode: String,
    mtime_unix_ms: i64,
    chunks: Option<Vec<ChunkDoc>>,
}

#[derive(Deserialize)]
struct ChunkDoc {
    offset: u64,
    length: u32,
    digest: String,
}

/// Reads a manifest as `aq manifest --chunks -o json` writes it (its root is not checked here).
pub fn parse_manifest(text: &str) -> Result<Manifest, String> {
    let doc: ManifestDoc = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if doc.format != aqueduct_proto::MANIFEST_FORMAT {
        return Err(format!("manifest format {} (this aq reads {})", doc.format, aqueduct_proto::MANIFEST_FORMAT));
    }
    let digest = |hex: &str| Digest::from_hex(hex).ok_or_else(|| format!("{hex:?} is not a BLAKE3 digest"));
    let mut files = Vec::with_capacity(doc.files.len());
    for f in doc.files {
        let chunks = f.chunks.ok_or_else(|| format!("file {:?} has no chunks listed (use --chunks)", f.path))?;
        files.push(FileEntry {
            mode: u32::from_str_radix(&f.mode, 8)
                .map_err(|_| format!("mode {:?} of {:?} is not octal", f.mode, f.path))?,
            chunks: chunks
                .iter()
                .map(|c| Ok(ChunkRef { digest: digest(&c.digest)?, offset: c.offset, length: c.length }))
                .collect::<Result<_, String>>()?,
            path: f.path,
            object: f.object,
            size: f.size_bytes,
            mtime_unix_ms: f.mtime_unix_ms,
        });
    }
    let signature = doc
        .signature
        .map(|s| {
            let bytes = unhex(&s.signature).ok_or("the signature is not hex")?;
            Ok::<_, String>(VersionSignature {
                key_id: s
                    .key_id
                    .parse()
                    .map_err(|e: aqueduct_proto::domain::signature::SignatureError| e.to_string())?,
                signed_unix_ms: s.signed_unix_ms,
                signature: <[u8; SIGNATURE_LEN]>::try_from(bytes.as_slice())
                    .map_err(|_| format!("the signature has {} bytes, not {SIGNATURE_LEN}", bytes.len()))?,
            })
        })
        .transpose()?;
    Ok(Manifest {
        dataset: doc.dataset,
        version: doc.version,
        chunker: ChunkerParams {
            min_size: doc.chunker.min_bytes,
            avg_size: doc.chunker.avg_bytes,
            max_size: doc.chunker.max_bytes,
        },
        files,
        root: digest(&doc.root)?,
        signature,
    })
}

/// The keys of `--trust`: each a key (`ed25519:HEX`) or a file of them.
pub fn trusted_keys(keys: &[String]) -> Result<TrustedKeys, VerifyError> {
    let mut trusted: Vec<PublicKey> = Vec::new();
    for k in keys {
        if let Ok(key) = k.parse::<PublicKey>() {
            trusted.push(key);
            continue;
        }
        let text = std::fs::read_to_string(k).map_err(|e| {
            VerifyError::Keys(format!("--trust {k}: neither a key (ed25519:HEX) nor a readable file: {e}"))
        })?;
        trusted.extend(parse_public_keys(&text).map_err(|e| VerifyError::Keys(format!("--trust {k}: {e}")))?);
    }
    if trusted.is_empty() {
        return Err(VerifyError::Keys(
            "no key to verify with: pass --trust with the hub's public key or its file (`aqueduct-hub signing-key show`)"
                .into(),
        ));
    }
    Ok(TrustedKeys::new(trusted))
}

/// Reads the manifest at `path` and checks its root and signature.
pub fn verified_manifest(path: &Path, trust: &TrustedKeys) -> Result<Manifest, VerifyError> {
    let text = std::fs::read_to_string(path).map_err(|source| VerifyError::Read { path: path.to_owned(), source })?;
    let m = parse_manifest(&text).map_err(|reason| VerifyError::BadManifest { path: path.to_owned(), reason })?;
    trust.verify(&m)?;
    Ok(m)
}

/// Checks one file against a verified manifest: its attributes name the version and an entry
/// of it, and its bytes are that entry's. Returns the entry's path.
pub fn check_file(m: &Manifest, file: &Path) -> Result<String, String> {
    let attr = |name: &str| {
        xattr(file, name).ok_or_else(|| {
            format!(
                "it has no {name} attribute: check a file on an Aqueduct mount (aqueduct-spoke mount, aqueduct-fuse)"
            )
        })
    };
    let (dataset, version, root) =
        (attr("user.aqueduct.dataset")?, attr("user.aqueduct.version")?, attr("user.aqueduct.root")?);
    if dataset != m.dataset || version != m.version.to_string() {
        return Err(format!(
            "it is a file of {dataset}@v{version}, and the manifest is {}@v{}'s",
            m.dataset, m.version
        ));
    }
    let entry =
        m.files.iter().find(|f| f.root().to_hex() == root).ok_or_else(|| {
            format!("no file of {}@v{} has the root {root} its attributes give", m.dataset, m.version)
        })?;
    let mut reader = std::io::BufReader::new(std::fs::File::open(file).map_err(|e| format!("cannot open it: {e}"))?);
    let mut buf = Vec::new();
    for (i, c) in entry.chunks.iter().enumerate() {
        buf.resize(c.length as usize, 0);
        reader
            .read_exact(&mut buf)
            .map_err(|e| format!("it ends before chunk {i} (offset {}) of {:?}: {e}", c.offset, entry.path))?;
        let found = Digest::of(&buf);
        if found != c.digest {
            return Err(format!(
                "chunk {i} of {:?} (offset {}, {} bytes) has BLAKE3 {found}, the signed manifest says {}",
                entry.path, c.offset, c.length, c.digest
            ));
        }
    }
    let mut rest = [0u8; 1];
    if reader.read(&mut rest).map_err(|e| e.to_string())? != 0 {
        return Err(format!("it is longer than {:?}'s {} bytes", entry.path, entry.size));
    }
    Ok(entry.path.clone())
}

/// An extended attribute's value as text, if the file has it.
fn xattr(path: &Path, name: &str) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and live for the call; the buffer's length is given.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = usize::try_from(n).ok()?;
    buf.truncate(n);
    String::from_utf8(buf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use aqueduct_core::signing::SigningKey;
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    fn manifest(key: &SigningKey) -> Manifest {
        let c = |d: &[u8], offset| ChunkRef { digest: Digest::of(d), offset, length: d.len() as u32 };
        let file = FileEntry {
            path: "d/model".into(),
            object: "p/d/model".into(),
            size: 6,
            mode: 0o100644,
            mtime_unix_ms: 7,
            chunks: vec![c(b"abc", 0), c(b"def", 3)],
        };
        let mut m = Manifest::new("ds".into(), 3, ChunkerParams::DEFAULT, vec![file]).unwrap();
        key.sign_manifest(&mut m, 1_700_000_000_000);
        m
    }

    #[test]
    fn a_manifest_view_reads_back_as_the_signed_manifest() {
        let key = SigningKey::generate().unwrap();
        let m = manifest(&key);
        let view = crate::views::ManifestView::new(&m, Vec::new(), true);
        let back = parse_manifest(&serde_json::to_string(&view).unwrap()).unwrap();
        assert_eq!(back, m);
        TrustedKeys::new([key.public().clone()]).verify(&back).unwrap();
        let without = crate::views::ManifestView::new(&m, Vec::new(), false);
        let err = parse_manifest(&serde_json::to_string(&without).unwrap()).unwrap_err();
        assert!(err.contains("--chunks"), "{err}");
    }

    proptest! {
        #![proptest_config(fuzz::config(512))]

        /// Any JSON (or text) is a manifest or refused, never a panic; a real one with a
        /// character changed is refused by the checks, or still verifies (whitespace, a field
        /// the signature does not cover such as an object key).
        #[test]
        fn fuzz_manifest_documents_parse_or_are_refused(
            text in ".{0,200}",
            at in any::<prop::sample::Index>(),
            by in any::<char>(),
        ) {
            let _ = parse_manifest(&text);
            let key = SigningKey::generate().unwrap();
            let m = manifest(&key);
            let json = serde_json::to_string(&crate::views::ManifestView::new(&m, Vec::new(), true)).unwrap();
            let mut chars: Vec<char> = json.chars().collect();
            let i = at.index(chars.len());
            chars[i] = by;
            let changed: String = chars.into_iter().collect();
            if let Ok(back) = parse_manifest(&changed)
                && TrustedKeys::new([key.public().clone()]).verify(&back).is_ok()
            {
                prop_assert_eq!((&back.dataset, back.version, back.root), (&m.dataset, m.version, m.root));
                prop_assert_eq!(back.files.iter().map(|f| f.root()).collect::<Vec<_>>(), m.files.iter().map(|f| f.root()).collect::<Vec<_>>());
            }
        }
    }
}
