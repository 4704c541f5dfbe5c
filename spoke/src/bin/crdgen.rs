//! Prints the `AqueductVolume` CRD as YAML. `deploy/spoke/crds/aqueductvolumes.yaml` is its
//! output (a test fails when they differ):
//!
//! ```sh
//! cargo run -q -p aqueduct-spoke --bin crdgen > deploy/spoke/crds/aqueductvolumes.yaml
//! ```

fn main() {
    print!("{}", aqueduct_spoke::operator::crd::crd_yaml());
}
