//! The chunk-list codec: how a file's chunks are kept in the `files` table, as one blob. For
//! each chunk, its 32-byte digest and its length as a little-endian u32 (format 1); offsets
//! follow from the lengths, so a list always tiles its file from 0.

use aqueduct_proto::{ChunkRef, Digest};

use super::StoreError;

/// Bytes per chunk in a file's chunk list: the digest, and the length as a little-endian u32.
const CHUNK_RECORD: usize = Digest::LEN + 4;

pub fn encode_chunks(chunks: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.len() * CHUNK_RECORD);
    for c in chunks {
        out.extend_from_slice(c.digest.as_bytes());
        out.extend_from_slice(&c.length.to_le_bytes());
    }
    out
}

/// The chunks of the file at `path` from their blob (see the module's doc); damaged bytes
/// are `Corrupt`, never a panic.
pub fn decode_chunks(path: &str, blob: &[u8]) -> Result<Vec<ChunkRef>, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("chunk list of {path:?} {what}"));
    if !blob.len().is_multiple_of(CHUNK_RECORD) {
        return Err(corrupt(format!("has {} bytes, not a multiple of {CHUNK_RECORD}", blob.len())));
    }
    let mut offset = 0u64;
    let mut chunks = Vec::with_capacity(blob.len() / CHUNK_RECORD);
    for record in blob.chunks_exact(CHUNK_RECORD) {
        let (digest, length) = record.split_at(Digest::LEN);
        let (Some(digest), Ok(length)) = (Digest::from_slice(digest), <[u8; 4]>::try_from(length)) else {
            return Err(corrupt("has a record of the wrong size".into()));
        };
        let length = u32::from_le_bytes(length);
        chunks.push(ChunkRef { digest, offset, length });
        offset = offset.checked_add(u64::from(length)).ok_or_else(|| corrupt("is longer than a file can be".into()))?;
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(fuzz::config(5000))]

        /// A chunk list read from the database, damaged or not: the chunks it holds (tiling
        /// from 0) or `Corrupt`, never a panic; what decodes encodes to the same bytes.
        #[test]
        fn fuzz_chunk_list_blob_from_any_bytes(blob in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..400),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(|r| r.repeat(36)),
        ]) {
            match decode_chunks("f", &blob) {
                Ok(chunks) => {
                    prop_assert_eq!(chunks.len() * CHUNK_RECORD, blob.len());
                    let mut offset = 0;
                    for c in &chunks {
                        prop_assert_eq!(c.offset, offset);
                        offset += u64::from(c.length);
                    }
                    prop_assert_eq!(encode_chunks(&chunks), blob);
                }
                Err(e) => {
                    prop_assert!(!blob.len().is_multiple_of(CHUNK_RECORD));
                    prop_assert!(e.to_string().contains("chunk list of \"f\""), "{}", e);
                }
            }
        }

        #[test]
        fn fuzz_chunk_list_blob_round_trip(chunks in proptest::collection::vec((any::<[u8; 32]>(), any::<u32>()), 0..20)) {
            let mut offset = 0;
            let chunks: Vec<ChunkRef> = chunks
                .into_iter()
                .map(|(d, length)| {
                    let c = ChunkRef { digest: Digest(d), offset, length };
                    offset += u64::from(length);
                    c
                })
                .collect();
            prop_assert_eq!(decode_chunks("f", &encode_chunks(&chunks)).unwrap(), chunks);
        }
    }
}
