//! The admin call that changes a source's read limits while the hub runs (`aq source set`):
//! the new options are checked as `aq source add` checks them, stored, and handed to the
//! relay's shared reads, so that the next chunk read from the source takes them.

use std::collections::BTreeMap;

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::validate_name;
use tonic::Status;
use tracing::{Span, info};

use super::{AdminService, source_to_pb};
use crate::error::invalid;
use crate::snapshot::blocking;
use crate::source::SourceSpec;

/// `options` with the read limits asked for: a value sets the option, an empty one removes it,
/// none leaves it as it was. Every other option stays.
pub(super) fn with_read_limits(
    mut options: BTreeMap<String, String>,
    read_rate: Option<&str>,
    max_reads: Option<&str>,
) -> BTreeMap<String, String> {
    for (key, value) in [("read_rate", read_rate), ("max_reads", max_reads)] {
        match value.map(str::trim) {
            None => {}
            Some("") => {
                options.remove(key);
            }
            Some(v) => {
                options.insert(key.to_string(), v.to_string());
            }
        }
    }
    options
}

impl AdminService {
    /// Changes a source's read limits; applies them to the relay at once.
    pub(super) async fn update_source_call(&self, req: pb::UpdateSourceRequest) -> Result<pb::Source, Status> {
        let pb::UpdateSourceRequest { name, read_rate, max_reads } = req;
        Span::current().record("source", name.as_str());
        validate_name("source", &name).map_err(invalid)?;
        if read_rate.is_none() && max_reads.is_none() {
            return Err(Status::invalid_argument(format!(
                "nothing to change for source {name:?}: give --read-rate RATE and/or --max-reads N (an empty value \
                 removes the limit)"
            )));
        }
        let owned = name.clone();
        let mut record = blocking(&self.db, move |db| db.source(&owned)).await?.ok_or_else(|| {
            Status::not_found(format!("source {name:?} does not exist; `aq source list` shows the sources"))
        })?;
        let options = with_read_limits(record.options.clone(), read_rate.as_deref(), max_reads.as_deref());
        // The same checks as when it was added: a bad rate or count says what to write.
        let spec = SourceSpec::parse(&record.url, options.clone())?;
        let (owned, stored) = (name.clone(), options.clone());
        blocking(&self.db, move |db| db.set_source_options(&owned, &stored)).await?;
        self.live.reads.set_limits(&name, spec.limits);
        info!(rate = ?spec.limits.rate, reads = ?spec.limits.concurrent, "source read limits changed");
        record.options = options;
        Ok(source_to_pb(record))
    }
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn read_limits_are_set_removed_or_left_and_nothing_else_moves() {
        let before: BTreeMap<String, String> =
            [("endpoint", "http://s3"), ("read_rate", "1MiB/s")].map(|(k, v)| (k.into(), v.into())).into();
        let after = with_read_limits(before.clone(), None, Some("4"));
        assert_eq!(after.get("read_rate").map(String::as_str), Some("1MiB/s"));
        assert_eq!(after.get("max_reads").map(String::as_str), Some("4"));
        let after = with_read_limits(after, Some(""), None);
        assert!(!after.contains_key("read_rate"));
        assert_eq!(after.get("endpoint").map(String::as_str), Some("http://s3"));
        assert_eq!(with_read_limits(before.clone(), None, None), before);
    }

    proptest! {
        #![proptest_config(fuzz::config(500))]

        /// Whatever is asked, only the two read options can change.
        #[test]
        fn fuzz_only_read_options_change(
            options in proptest::collection::btree_map("[a-z_]{1,12}", ".{0,8}", 0..6),
            rate in proptest::option::of(".{0,12}"),
            reads in proptest::option::of(".{0,6}"),
        ) {
            let after = with_read_limits(options.clone(), rate.as_deref(), reads.as_deref());
            for (k, v) in &options {
                if k != "read_rate" && k != "max_reads" {
                    prop_assert_eq!(after.get(k), Some(v));
                }
            }
            prop_assert!(after.keys().all(|k| options.contains_key(k) || k == "read_rate" || k == "max_reads"));
        }
    }
}
