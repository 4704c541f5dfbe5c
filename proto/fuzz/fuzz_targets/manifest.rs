//! The manifest decoder under libFuzzer: any bytes off the wire are refused or become a valid
//! manifest that crosses the wire again unchanged. The same property as the proptest
//! `fuzz_manifest_from_wire_bytes` (proto/src/domain/wire.rs), for runs of hours with
//! coverage guidance:
//!
//! ```sh
//! rustup run nightly cargo fuzz run manifest -- -max_total_time=3600
//! ```
#![no_main]

use aqueduct_proto::Manifest;
use aqueduct_proto::hub::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(wire) = pb::Manifest::decode(data) else { return };
    let Ok(manifest) = Manifest::try_from(wire) else { return };
    assert_eq!(manifest.validate(), Ok(()));
    let again = pb::Manifest::from(&manifest).encode_to_vec();
    let decoded = pb::Manifest::decode(again.as_slice()).expect("a manifest's encoding decodes");
    assert_eq!(Manifest::try_from(decoded).as_ref(), Ok(&manifest));
});
