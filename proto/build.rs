//! Compiles `proto/**/*.proto` with protox (pure Rust), so no system `protoc` is needed.
//!
//! The CSI spec (`csi/v1/csi.proto`, vendored) is compiled only with the `csi` feature: only
//! the spoke's node plugin (and its tests) need it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut files = vec![
        "aqueduct/hub/v1/hub.proto",
        "aqueduct/spoke/v1/local.proto",
        "aqueduct/spoke/v1/peer.proto",
        "aqueduct/holder/v1/holder.proto",
    ];
    if std::env::var_os("CARGO_FEATURE_CSI").is_some() {
        files.push("csi/v1/csi.proto");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
