//! `aq-quickstart`: the main job on one machine, with embedded defaults.
//!
//! Makes a model-shaped sample dataset, starts a hub and one spoke in each of two regions
//! with different link budgets (all in this process, over mutual TLS on 127.0.0.1), cuts v1,
//! rolls it out to both regions, makes a v2 that changes a little (a header that grows,
//! shifting every byte after it, and a new config), rolls that out, then checks every file of
//! both versions in both regions' chunk stores against the BLAKE3 of the source and prints
//! what crossed each link. Last, it mounts one region's view with FUSE (through the spoke's
//! local API, following the region's active version) and reads every file through it,
//! checking BLAKE3 again. Everything lives in a temporary directory, removed at the end.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aqueduct_cli::connect::HubConn;
use aqueduct_cli::output::{RolloutProgress, Table, bytes, progress_reporter};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_proto::spoke::v1::local_client::LocalClient;
use aqueduct_proto::{Manifest, Rate};
use aqueduct_spoke::store::{ChunkStore, DiskStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const DATASET: &str = "demo-llm";
const REGIONS: [(&str, u64); 2] = [("eu-west", 100 << 20), ("us-east", 40 << 20)];

/// What one region did for one version.
struct Transfer {
    region: String,
    version: u64,
    version_bytes: u64,
    relayed: u64,
    seconds: f64,
    budget: u64,
}

pub async fn run(model_mib: usize, keep: bool, fuse: bool) -> Result<()> {
    if fuse {
        fuse_prerequisites()?;
    }
    let tmp = tempfile::Builder::new().prefix("aqueduct-quickstart-").tempdir()?;
    let root = tmp.path().to_owned();
    let shutdown = CancellationToken::new();
    let result = run_in(&root, model_mib, fuse, &shutdown).await;
    shutdown.cancel();
    if keep {
        let kept = tmp.keep();
        println!("kept everything in {}", kept.display());
    }
    result
}

async fn run_in(root: &Path, model_mib: usize, fuse: bool, shutdown: &CancellationToken) -> Result<()> {
    println!("Aqueduct quickstart in {}", root.display());
    let data = root.join("source/demo-llm");
    std::fs::create_dir_all(&data)?;
    let v1_files = write_sample(&data, model_mib, 0)?;
    println!(
        "1. sample dataset: {} files, {} (safetensors-style model, config, tokenizer)",
        v1_files.len(),
        bytes(total(&v1_files))
    );

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let init = aqueduct_hub::init(&root.join("hub"), addr, &[])?;
    let config = aqueduct_hub::config::HubConfig::load(&init.config_path)?;
    tokio::spawn(aqueduct_hub::serve(config, listener, shutdown.clone()));
    let admin_dir = root.join("hub/admin");
    let url = format!("https://{addr}");
    let mut conn = HubConn {
        url: url.clone(),
        hubs: vec![url],
        ca: admin_dir.join("ca.pem"),
        cert: admin_dir.join("admin.pem"),
        key: admin_dir.join("admin.key"),
        origin: "the quickstart".into(),
        verbose: false,
    };
    let mut admin = conn.connect().await?;
    println!("2. hub serving on https://{addr} (mutual TLS, its own CA)");

    let source = pb::Source {
        name: "local".into(),
        url: format!("file://{}", root.join("source").display()),
        options: Default::default(),
        created_unix_ms: 0,
    };
    admin.add_source(pb::AddSourceRequest { source: Some(source) }).await?;
    let dataset = pb::Dataset {
        name: DATASET.into(),
        source: "local".into(),
        prefix: DATASET.into(),
        created_unix_ms: 0,
        latest_version: 0,
        outside_links: String::new(),
        keep_versions: 0,
        watch: None,
    };
    admin.add_dataset(pb::AddDatasetRequest { dataset: Some(dataset) }).await?;
    let v1 = snapshot(&mut admin).await?;
    println!("3. snapshot: {DATASET}@v{} = {} files, {}, {} chunks", v1.version, v1.files, bytes(v1.bytes), v1.chunks);

    for (region, rate) in REGIONS {
        let req = pb::AddRegionRequest {
            region: Some(pb::Region {
                name: region.into(),
                rate_bytes_per_sec: rate,
                created_unix_ms: 0,
                members: Vec::new(),
                ..Default::default()
            }),
        };
        let added = admin.add_region(req).await?.into_inner();
        // The spoke enrols with a single-use token: it makes its key and gets its node's
        // certificate from the hub (`aq region token` makes one the same way).
        let token = pb::CreateEnrolTokenRequest { region: region.into(), ttl_seconds: 600, uses: 1 };
        let token = admin.create_enrol_token(token).await?.into_inner().token;
        let config = aqueduct_spoke::write_enrol_config(
            &root.join(format!("spoke-{region}")),
            &conn.url,
            &format!("{region}-node-1"),
            &aqueduct_spoke::Enrolment { ca_pem: &added.ca_pem, signing_keys: &added.signing_keys, token: &token },
        )?;
        let mut config = aqueduct_spoke::SpokeConfig::load(&config)?;
        // The FUSE holder in the spoke's own process: the quickstart leaves no process behind.
        config.mounts.holder = aqueduct_spoke::holder::HolderMode::Embedded;
        tokio::spawn(aqueduct_spoke::run(config, shutdown.clone()));
        println!("4. region {region}: link budget {}, one spoke", Rate(rate));
    }

    let mut transfers = rollout(&mut admin, v1.version).await?;
    println!("5. v1 is Ready in both regions");

    // v2: the header grows by 100 bytes (shifting every tensor after it) and the config changes.
    let v2_files = write_sample(&data, model_mib, 100)?;
    let v2 = snapshot(&mut admin).await?;
    println!(
        "6. snapshot: {DATASET}@v{} = {}, of which {} in new chunks",
        v2.version,
        bytes(v2.bytes),
        bytes(v2.new_bytes)
    );
    transfers.extend(rollout(&mut admin, v2.version).await?);
    println!("7. v2 is Ready in both regions");

    let mut t =
        Table::new(["REGION", "VERSION", "VERSION SIZE", "OVER THE LINK", "LINK / VERSION", "TIME", "RATE / BUDGET"]);
    for x in &transfers {
        let rate = x.relayed as f64 / x.seconds;
        t.row([
            x.region.clone(),
            format!("v{}", x.version),
            bytes(x.version_bytes),
            bytes(x.relayed),
            format!("{:.3}", x.relayed as f64 / x.version_bytes as f64),
            format!("{:.1}s", x.seconds),
            // Under a second's worth of budget, start-up latency dominates: no rate to speak of.
            if x.relayed < x.budget {
                "n/a (under 1 s of budget)".to_string()
            } else {
                format!("{} / {} = {:.2}", Rate(rate as u64), Rate(x.budget), rate / x.budget as f64)
            },
        ]);
    }
    println!();
    t.print();
    println!();

    for (version, files) in [(v1.version, &v1_files), (v2.version, &v2_files)] {
        let wire = admin.get_manifest(pb::GetManifestRequest { dataset: DATASET.into(), version }).await?.into_inner();
        let manifest = Manifest::try_from(wire)?;
        for (region, _) in REGIONS {
            verify(&root.join(format!("spoke-{region}/store")), &manifest, files)
                .with_context(|| format!("verifying {DATASET}@v{version} in {region}"))?;
        }
        println!(
            "verified: every file of v{version} in both regions' stores has the BLAKE3 of the source ({} files)",
            files.len()
        );
    }
    if fuse {
        read_through_fuse(root, &v2_files).await?;
    }
    println!("\nDone. Next: README.md walks through the same steps with `aqueduct-hub` and `aq`.");
    Ok(())
}

/// Stops early, with the command to run, where the FUSE step could not work.
fn fuse_prerequisites() -> Result<()> {
    aqueduct_fuse::mount::check_available()
        .map_err(|missing| anyhow::anyhow!("the quickstart's last step mounts FUSE, and {missing}; or pass --no-fuse"))
}

/// Mounts the first region's view of the dataset through its spoke (following the active
/// version), reads every file and checks its BLAKE3 against the source, then unmounts.
async fn read_through_fuse(root: &Path, files: &Sample) -> Result<()> {
    let (region, _) = REGIONS[0];
    let socket = aqueduct_spoke::SpokeConfig::load(&root.join(format!("spoke-{region}/spoke.toml")))?.socket();
    let channel = tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))?
        .connect()
        .await
        .with_context(|| format!("the spoke of {region} does not answer on {}", socket.display()))?;
    let mut local = LocalClient::new(channel);
    let mountpoint = root.join(format!("mnt-{region}"));
    std::fs::create_dir_all(&mountpoint)?;
    let request = local::MountRequest {
        dataset: DATASET.into(),
        version: 0,
        mountpoint: mountpoint.display().to_string(),
        tag: String::new(),
    };
    let newest = files.len();
    // The spoke hears that v2 became active a moment after the hub says Ready.
    let started = Instant::now();
    let info = loop {
        match local.mount(request.clone()).await {
            Ok(info) if info.get_ref().version == 2 => break info.into_inner(),
            Ok(_) => {
                // Mounted on v1: the mount follows, so wait for it to switch.
                let mounts = local.list_mounts(local::ListMountsRequest {}).await?.into_inner().mounts;
                if let Some(m) = mounts.into_iter().find(|m| m.version == 2) {
                    break m;
                }
            }
            Err(s) if s.message().contains("no active version") => {}
            Err(s) => bail!("mounting {region}'s view: {}", s.message()),
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("{region} did not make v2 its active version within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (dir, expected) = (mountpoint.clone(), files.clone());
    let read = tokio::task::spawn_blocking(move || -> Result<(u64, f64)> {
        let started = Instant::now();
        let mut total = 0;
        for (path, (size, hash)) in &expected {
            let data = std::fs::read(dir.join(path)).with_context(|| format!("reading {path} through FUSE"))?;
            if data.len() as u64 != *size || blake3::hash(&data) != *hash {
                bail!("{path} read through FUSE does not match the source");
            }
            total += data.len() as u64;
        }
        Ok((total, started.elapsed().as_secs_f64()))
    })
    .await?;
    let unmounted = local.unmount(local::UnmountRequest { mountpoint: mountpoint.display().to_string() }).await;
    let (total, seconds) = read?;
    unmounted.map_err(|s| anyhow::anyhow!("unmounting {}: {}", mountpoint.display(), s.message()))?;
    println!(
        "8. mounted {region}'s view at {} (following the active version, v{}): read every file through FUSE, BLAKE3 matches the source ({newest} files, {} at {}/s)",
        info.mountpoint,
        info.version,
        bytes(total),
        bytes((total as f64 / seconds.max(1e-6)) as u64),
    );
    Ok(())
}

/// Size and BLAKE3 of each file of the sample, by path.
type Sample = BTreeMap<String, (u64, blake3::Hash)>;

fn total(files: &Sample) -> u64 {
    files.values().map(|(size, _)| size).sum()
}

/// Writes the sample dataset; `header_growth` bytes more in the safetensors header shift
/// every tensor after it. Returns each file's size and BLAKE3.
fn write_sample(dir: &Path, model_mib: usize, header_growth: usize) -> Result<Sample> {
    let header = format!(
        "{{\"__metadata__\":{{\"format\":\"pt\",\"note\":\"{}\"}},\"model.embed.weight\":{{\"dtype\":\"F16\",\"shape\":[32000,4096]}}}}",
        "x".repeat(header_growth)
    );
    let mut model = (header.len() as u64).to_le_bytes().to_vec();
    model.extend_from_slice(header.as_bytes());
    let start = model.len();
    model.resize(start + (model_mib << 20), 0);
    // Tensor data: pseudo-random, reproducible (BLAKE3 in XOF mode).
    blake3::Hasher::new().update(b"aqueduct quickstart tensors").finalize_xof().fill(&mut model[start..]);
    let config = format!("{{\"hidden_size\": 4096, \"num_layers\": 32, \"revision\": {}}}\n", header_growth);
    let mut tokenizer = String::from("{\"model\":{\"vocab\":{");
    for i in 0..40_000 {
        tokenizer.push_str(&format!("\"tok{i}\":{i},"));
    }
    tokenizer.push_str("\"end\":40000}}}\n");
    let files: [(&str, &[u8]); 3] =
        [("model.safetensors", &model), ("config.json", config.as_bytes()), ("tokenizer.json", tokenizer.as_bytes())];
    let mut sample = Sample::new();
    for (path, data) in files {
        std::fs::write(dir.join(path), data)?;
        sample.insert(path.to_string(), (data.len() as u64, blake3::hash(data)));
    }
    Ok(sample)
}

async fn snapshot(admin: &mut AdminClient<Channel>) -> Result<pb::VersionSummary> {
    let mut events = admin.snapshot(pb::SnapshotRequest { dataset: DATASET.into() }).await?.into_inner();
    let mut report = progress_reporter(DATASET);
    while let Some(event) = events.message().await? {
        match event.event {
            Some(pb::snapshot_event::Event::Progress(p)) => report.update(&p),
            Some(pb::snapshot_event::Event::Done(v)) => {
                report.finish();
                return Ok(v);
            }
            None => {}
        }
    }
    bail!("the hub ended the snapshot without a result")
}

/// Rolls `version` out to both regions and follows it until both are Ready.
async fn rollout(admin: &mut AdminClient<Channel>, version: u64) -> Result<Vec<Transfer>> {
    let regions: Vec<String> = REGIONS.iter().map(|(r, _)| r.to_string()).collect();
    admin
        .rollout(pb::RolloutRequest {
            dataset: DATASET.into(),
            version,
            regions: regions.clone(),
            mode: Default::default(),
            cut_over: Default::default(),
            class: Default::default(),
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut done: BTreeMap<String, Transfer> = BTreeMap::new();
    let mut progress = RolloutProgress::new(&format!("{DATASET}@v{version}"), &regions);
    while done.len() < regions.len() {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("v{version} was not Ready in every region after 10 minutes");
        }
        let rows = admin.status(pb::StatusRequest { dataset: DATASET.into() }).await?.into_inner().rows;
        for row in rows.iter().filter(|r| r.version == version) {
            progress.update(row);
            match row.phase() {
                pb::Phase::Failed => bail!("region {} failed: {}", row.region, row.reason),
                pb::Phase::Ready if !done.contains_key(&row.region) => {
                    done.insert(
                        row.region.clone(),
                        Transfer {
                            region: row.region.clone(),
                            version,
                            version_bytes: row.total_bytes,
                            relayed: row.relayed_bytes,
                            seconds: started.elapsed().as_secs_f64(),
                            budget: row.budget_bytes_per_sec,
                        },
                    );
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.finish();
    Ok(done.into_values().collect())
}

/// Rebuilds every file of `manifest` from a region's chunk store and compares its BLAKE3 with
/// the source's.
fn verify(store_dir: &Path, manifest: &Manifest, sample: &Sample) -> Result<()> {
    let store = DiskStore::open(store_dir)?;
    for file in &manifest.files {
        let mut hasher = blake3::Hasher::new();
        for c in &file.chunks {
            hasher.update(
                &store.get(&c.digest)?.with_context(|| format!("{} lacks chunk {}", store_dir.display(), c.digest))?,
            );
        }
        let (_, expected) = sample.get(&file.path).with_context(|| format!("{} is not in the sample", file.path))?;
        if hasher.finalize() != *expected {
            bail!("{} does not match the source", file.path);
        }
    }
    Ok(())
}
