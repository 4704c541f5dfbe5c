//! The hub's `[limits]` as a region's spokes meet them, over real mutual TLS: each region has
//! its own share of `FetchChunks` streams (a call past it is refused with RESOURCE_EXHAUSTED
//! naming the key, another region is not held up), a stream that ends gives its turn back,
//! and lists of digests are bounded.

mod common;

use std::time::{Duration, Instant};

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_proto::{Digest, Manifest, Size};
use aqueduct_testkit::hub::TestHub;
use aqueduct_testkit::noise;
use common::{dataset, expect_err, snapshot, source};
use tonic::Code;
use tonic::transport::Channel;

async fn region(hub: &TestHub, admin: &mut pb::admin_client::AdminClient<Channel>, name: &str) -> SpokeClient<Channel> {
    let req = pb::AddRegionRequest {
        region: Some(pb::Region {
            name: name.into(),
            rate_bytes_per_sec: 1 << 30,
            created_unix_ms: 0,
            members: Vec::new(),
            ..Default::default()
        }),
    };
    admin.add_region(req).await.unwrap();
    hub.node_client(name, "node-1").await
}

fn request(digests: &[Digest]) -> pb::FetchChunksRequest {
    pb::FetchChunksRequest {
        dataset: "llama".into(),
        version: 1,
        digests: digests.iter().map(|d| d.0.to_vec()).collect(),
        foreground: false,
    }
}

/// Every chunk of a stream, checked against the digests asked.
async fn read_all(client: &mut SpokeClient<Channel>, digests: &[Digest]) -> Result<usize, tonic::Status> {
    let mut stream = client.fetch_chunks(request(digests)).await?.into_inner();
    let mut got = 0;
    while let Some(chunk) = stream.message().await? {
        assert_eq!(Digest::of(&chunk.data).0.to_vec(), chunk.digest);
        got += 1;
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_region_has_its_share_of_fetch_streams_and_digest_lists_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models/llama");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("model.safetensors"), noise(12 << 20, 5)).unwrap();
    let hub = TestHub::init_with(&tmp.path().join("hub"), "127.0.0.1:0".parse().unwrap(), &[], |config| {
        config.limits.fetch_streams_per_region = 2;
        config.limits.fetch_wait = Duration::from_millis(300);
        config.limits.relay_memory_per_region = Size(4 << 20);
    })
    .await;
    let mut admin = hub.admin().await;
    admin.add_source(source("local", &format!("file://{}", tmp.path().join("models").display()), &[])).await.unwrap();
    admin.add_dataset(dataset("llama", "local", "llama")).await.unwrap();
    snapshot(&mut admin, "llama").await.unwrap();
    let mut eu = region(&hub, &mut admin, "eu").await;
    let mut us = region(&hub, &mut admin, "us").await;
    let rollout = pb::RolloutRequest {
        dataset: "llama".into(),
        version: 1,
        regions: vec!["eu".into(), "us".into()],
        mode: Default::default(),
        ..Default::default()
    };
    admin.rollout(rollout).await.unwrap();
    let wire = eu.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await.unwrap();
    let manifest = Manifest::try_from(wire.into_inner()).unwrap();
    let digests: Vec<Digest> = manifest.distinct_chunks().into_iter().map(|(d, _)| d).collect();
    assert!(digests.len() >= 4, "{} chunks", digests.len());

    // eu opens its two streams and reads nothing: the relay holds what it read for them
    // within eu's memory, and eu has no turn left.
    let held: Vec<_> = [eu.fetch_chunks(request(&digests)).await, eu.fetch_chunks(request(&digests)).await]
        .into_iter()
        .map(|s| s.unwrap().into_inner())
        .collect();
    expect_err(
        eu.fetch_chunks(request(&digests)).await,
        Code::ResourceExhausted,
        &["region eu", "limits.fetch_streams_per_region", "try again"],
    );
    // us has its own share: every chunk comes, verified.
    assert_eq!(read_all(&mut us, &digests).await.unwrap(), digests.len());
    assert_eq!(read_all(&mut us, &digests[..1]).await.unwrap(), 1);

    // Streams that end give their turns back.
    drop(held);
    let started = Instant::now();
    loop {
        match read_all(&mut eu, &digests).await {
            Ok(got) => {
                assert_eq!(got, digests.len());
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(started.elapsed() < Duration::from_secs(30), "eu's turns never came back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    // A list of digests is bounded, and the refusal says the bound.
    let many: Vec<Digest> =
        (0..=aqueduct_proto::MAX_DIGESTS_PER_REQUEST as u32).map(|i| Digest::of(&i.to_le_bytes())).collect();
    expect_err(eu.fetch_chunks(request(&many)).await, Code::InvalidArgument, &["at most 256"]);
}
