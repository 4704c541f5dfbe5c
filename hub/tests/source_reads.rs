//! The source is read once: regions rolling out the same version at once get each chunk from
//! one read of the source (a single flight per chunk, then the hub's relay cache), counted as
//! the bytes the S3 server sends. Without the cache, regions one after the other read the
//! version once each.

mod common;

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_proto::{Digest, Manifest, Size};
use aqueduct_testkit::hub::TestHub;
use aqueduct_testkit::{S3Server, noise};
use common::{dataset, snapshot, source_with};
use tonic::transport::Channel;

const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// A hub (relay cache of `cache` bytes) whose dataset `llama` on the S3 server holds 24 MiB in
/// two objects, v1 rolled out to three regions; their spoke clients and v1's chunks.
async fn three_regions(
    tmp: &std::path::Path,
    server: &S3Server,
    cache: u64,
    read_limits: &[(&str, &str)],
) -> (TestHub, Vec<SpokeClient<Channel>>, Vec<Digest>, u64) {
    let hub = TestHub::init_with(&tmp.join(format!("hub-{cache}")), "127.0.0.1:0".parse().unwrap(), &[], |c| {
        c.limits.relay_cache = Size(cache);
    })
    .await;
    let mut admin = hub.admin().await;
    let creds = tmp.join("credentials");
    server.write_credentials(&creds).unwrap();
    let mut options = server.source_options(&creds);
    options.extend(read_limits.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    admin.add_source(source_with("s3", "s3://models", options)).await.unwrap();
    admin.add_dataset(dataset("llama", "s3", "llama")).await.unwrap();
    let v1 = snapshot(&mut admin, "llama").await.unwrap();
    let mut spokes = Vec::new();
    for region in REGIONS {
        hub.add_region(region, 1 << 30).await;
        spokes.push(hub.node_client(region, "node-1").await);
    }
    let rollout = pb::RolloutRequest {
        dataset: "llama".into(),
        version: 1,
        regions: REGIONS.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    };
    admin.rollout(rollout).await.unwrap();
    let wire = admin.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await.unwrap();
    let manifest = Manifest::try_from(wire.into_inner()).unwrap();
    let digests: Vec<Digest> = manifest.distinct_chunks().into_iter().map(|(d, _)| d).collect();
    (hub, spokes, digests, v1.bytes)
}

/// Every chunk of v1, in order, checked against its digest; the bytes received.
async fn fetch_all(mut spoke: SpokeClient<Channel>, digests: Vec<Digest>) -> u64 {
    let req = pb::FetchChunksRequest {
        dataset: "llama".into(),
        version: 1,
        digests: digests.iter().map(|d| d.0.to_vec()).collect(),
        foreground: false,
    };
    let mut stream = spoke.fetch_chunks(req).await.unwrap().into_inner();
    let (mut got, mut bytes) = (0, 0);
    while let Some(chunk) = stream.message().await.unwrap() {
        assert_eq!(chunk.digest, digests[got].0.to_vec(), "chunks come in the order asked");
        assert_eq!(Digest::of(&chunk.data), digests[got], "a chunk's bytes are its digest's");
        got += 1;
        bytes += chunk.data.len() as u64;
    }
    assert_eq!(got, digests.len());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_at_once_read_the_version_from_the_source_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3")).await.unwrap();
    let objects = tmp.path().join("s3/models/llama");
    std::fs::create_dir_all(&objects).unwrap();
    std::fs::write(objects.join("model-1.safetensors"), noise(16 << 20, 1)).unwrap();
    std::fs::write(objects.join("model-2.safetensors"), noise(8 << 20, 2)).unwrap();

    // With the relay cache: the three regions fetch at once.
    let (hub, spokes, digests, version_bytes) = three_regions(tmp.path(), &server, 256 << 20, &[]).await;
    let before = server.object_bytes();
    let fetches = spokes.into_iter().map(|s| tokio::spawn(fetch_all(s, digests.clone())));
    for got in futures::future::join_all(fetches).await {
        assert_eq!(got.unwrap(), version_bytes, "each region got the whole version");
    }
    let shared = server.object_bytes() - before;
    drop(hub);

    // Without it, one region after the other: each reads the version again.
    let (_hub, spokes, digests, _) = three_regions(tmp.path(), &server, 0, &[]).await;
    let before = server.object_bytes();
    for spoke in spokes {
        assert_eq!(fetch_all(spoke, digests.clone()).await, version_bytes);
    }
    let apart = server.object_bytes() - before;

    let ratio = |read: u64| read as f64 / version_bytes as f64;
    println!("source bytes read for three regions, per version byte (version: {version_bytes} bytes)");
    println!("{:<44} {:>12} {:>8}", "", "bytes read", "ratio");
    println!("{:<44} {:>12} {:>8.2}", "at once, shared reads and relay cache", shared, ratio(shared));
    println!("{:<44} {:>12} {:>8.2}", "one after the other, no relay cache", apart, ratio(apart));
    assert_eq!(shared, version_bytes, "three regions at once read each byte of the version from the source once");
    assert_eq!(apart, 3 * version_bytes, "without the cache, each region read the version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_budget_below_the_regions_total_is_held_at_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3")).await.unwrap();
    let objects = tmp.path().join("s3/models/llama");
    std::fs::create_dir_all(&objects).unwrap();
    std::fs::write(objects.join("model.safetensors"), noise(6 << 20, 3)).unwrap();
    // Three regions of 1 GiB/s each; the source allows 1 MiB/s (well below what this S3
    // server gives one reader) and one read at a time.
    let rate = 1u64 << 20;
    let (_hub, spokes, digests, version_bytes) =
        three_regions(tmp.path(), &server, 0, &[("read_rate", "1MiB/s"), ("max_reads", "1")]).await;
    server.counters.most_gets_in_flight.store(0, std::sync::atomic::Ordering::SeqCst);
    let before = server.object_bytes();
    let started = std::time::Instant::now();
    let fetches = spokes.into_iter().map(|s| tokio::spawn(fetch_all(s, digests.clone())));
    for got in futures::future::join_all(fetches).await {
        assert_eq!(got.unwrap(), version_bytes);
    }
    let (read, took) = (server.object_bytes() - before, started.elapsed());
    let achieved = read as f64 / took.as_secs_f64();
    println!(
        "source budget 1 MiB/s, three regions of 1 GiB/s: read {read} bytes in {took:.2?}, {:.2} MiB/s ({:.2} of the source budget)",
        achieved / f64::from(1 << 20),
        achieved / rate as f64
    );
    let most = server.counters.most_gets_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(most, 1, "the source was asked for more than one read at once");
    // A bound a slow machine cannot break: past the budget's burst (2 MiB), the bytes read
    // took at least as long as the source's budget allows.
    let least = (read.saturating_sub(2 << 20)) as f64 / rate as f64;
    assert!(took.as_secs_f64() >= least * 0.98, "read {read} bytes in {took:?}: faster than the source's budget");
}

/// `aq source set`: a source read without limits gets them while the hub runs (its version's
/// index already built), and the next reads take them; bad values are refused, saying what to
/// write, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_limits_set_while_the_hub_runs_hold_from_the_next_read() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3")).await.unwrap();
    let objects = tmp.path().join("s3/models/llama");
    std::fs::create_dir_all(&objects).unwrap();
    std::fs::write(objects.join("model.safetensors"), noise(4 << 20, 5)).unwrap();
    let (hub, spokes, digests, version_bytes) = three_regions(tmp.path(), &server, 0, &[]).await;
    let mut admin = hub.admin().await;
    // A first read, without limits: the relay indexes the version (with the limits of then).
    assert_eq!(fetch_all(spokes[0].clone(), digests.clone()).await, version_bytes);

    let set = |read_rate: Option<&str>, max_reads: Option<&str>| pb::UpdateSourceRequest {
        name: "s3".into(),
        read_rate: read_rate.map(String::from),
        max_reads: max_reads.map(String::from),
    };
    for (bad, words) in [
        (set(Some("fast"), None), &["read_rate", "MiB/s"][..]),
        (set(None, Some("0")), &["max_reads", "1 to 4096"]),
        (set(None, None), &["nothing to change", "--read-rate"]),
        (pb::UpdateSourceRequest { name: "ghost".into(), ..set(None, Some("1")) }, &["ghost", "aq source list"]),
    ] {
        let err = admin.update_source(bad).await.unwrap_err();
        assert!(words.iter().all(|w| err.message().contains(w)), "{words:?} not in {:?}", err.message());
    }
    let listed = admin.list_sources(pb::ListSourcesRequest {}).await.unwrap().into_inner().sources;
    assert!(!listed[0].options.contains_key("read_rate") && !listed[0].options.contains_key("max_reads"));

    let rate = 1u64 << 20;
    let s = admin.update_source(set(Some("1MiB/s"), Some("1"))).await.unwrap().into_inner();
    assert_eq!((s.options["read_rate"].as_str(), s.options["max_reads"].as_str()), ("1MiB/s", "1"));
    let listed = admin.list_sources(pb::ListSourcesRequest {}).await.unwrap().into_inner().sources;
    assert_eq!(listed[0].options, s.options, "the limits are stored");

    server.counters.most_gets_in_flight.store(0, std::sync::atomic::Ordering::SeqCst);
    let before = server.object_bytes();
    let started = std::time::Instant::now();
    let fetches = spokes.into_iter().map(|s| tokio::spawn(fetch_all(s, digests.clone())));
    for got in futures::future::join_all(fetches).await {
        assert_eq!(got.unwrap(), version_bytes);
    }
    let (read, took) = (server.object_bytes() - before, started.elapsed());
    println!("limits set at run time: read {read} bytes in {took:.2?} under a 1 MiB/s source budget");
    let most = server.counters.most_gets_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(most, 1, "the source was asked for more than one read at once after max_reads 1");
    let least = (read.saturating_sub(2 << 20)) as f64 / rate as f64;
    assert!(took.as_secs_f64() >= least * 0.98, "read {read} bytes in {took:?}: faster than the new budget");

    // Removed again: `none` (an empty value) takes the limit away.
    let s = admin.update_source(set(Some(""), Some(""))).await.unwrap().into_inner();
    assert!(!s.options.contains_key("read_rate") && !s.options.contains_key("max_reads"));
}
