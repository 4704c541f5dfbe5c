//! Helpers to drive a hub (the hub itself is `aqueduct_testkit::hub::TestHub`): the admin
//! API's requests, a snapshot followed to its end, a refusal checked.
#![allow(dead_code)]

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use tonic::Code;
use tonic::transport::Channel;

pub fn source(name: &str, url: &str, options: &[(&str, String)]) -> pb::AddSourceRequest {
    source_with(name, url, options.iter().map(|(k, v)| (k.to_string(), v.clone())))
}

pub fn source_with(name: &str, url: &str, options: impl IntoIterator<Item = (String, String)>) -> pb::AddSourceRequest {
    pb::AddSourceRequest {
        source: Some(pb::Source {
            name: name.into(),
            url: url.into(),
            options: options.into_iter().collect(),
            created_unix_ms: 0,
        }),
    }
}

pub fn dataset(name: &str, source: &str, prefix: &str) -> pb::AddDatasetRequest {
    pb::AddDatasetRequest {
        dataset: Some(pb::Dataset {
            name: name.into(),
            source: source.into(),
            prefix: prefix.into(),
            created_unix_ms: 0,
            latest_version: 0,
            outside_links: String::new(),
            ..Default::default()
        }),
    }
}

pub async fn snapshot(client: &mut AdminClient<Channel>, name: &str) -> Result<pb::VersionSummary, tonic::Status> {
    let mut events = client.snapshot(pb::SnapshotRequest { dataset: name.into() }).await?.into_inner();
    while let Some(event) = events.message().await? {
        if let Some(pb::snapshot_event::Event::Done(summary)) = event.event {
            return Ok(summary);
        }
    }
    panic!("snapshot stream ended without a result");
}

pub fn expect_err<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>, code: Code, words: &[&str]) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    for w in words {
        assert!(status.message().contains(w), "{:?} lacks {w:?}", status.message());
    }
}
