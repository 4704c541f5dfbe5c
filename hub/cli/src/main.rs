//! `aq`: the operator's CLI for an Aqueduct hub.
//!
//! It talks to the hub's admin API over mutual TLS. Where the hub is and which certificate to
//! present come from, in order: flags (`--hub`, `--ca`, `--cert`, `--key`), their environment
//! variables (`AQ_HUB`, ...), the config file named by `--config` or `AQ_CONFIG`, and
//! `~/.config/aqueduct/aq.toml`. `aqueduct-hub init` writes such a file into its admin bundle.
//!
//! The file is long (some 630 lines) because each subcommand's flags, their help text and what
//! the subcommand does stand together here; finding the hub and printing live in the library
//! (`connect`, `output`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use aqueduct_cli::connect::{ConnArgs, explain};
use aqueduct_cli::output::{Table, age, bytes, hit_ratio, mode_name, phase_name, progress_reporter};
use aqueduct_proto::domain::modes::OutsideLinks;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{Manifest, Rate, ReplicationMode, VersionRef};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "aq", version, about = "Operate an Aqueduct hub: sources, datasets, snapshots, versions")]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Moved: the quickstart is a program of its own, `aq-quickstart`
    /// (`cargo run --release --bin aq-quickstart`). This only says so.
    #[command(hide = true)]
    Quickstart {
        /// The flags meant for the quickstart, repeated in the message.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Sources: where datasets' bytes live (s3://bucket/prefix, file:///path).
    #[command(subcommand)]
    Source(SourceCommand),
    /// Datasets: names bound to a prefix of a source.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Cut a new version of DATASET from its source (reads only what changed).
    Snapshot {
        /// Dataset name.
        dataset: String,
    },
    /// List the versions of DATASET.
    Versions {
        /// Dataset name.
        dataset: String,
    },
    /// Regions: cloud clusters behind a link with a byte budget.
    #[command(subcommand)]
    Region(RegionCommand),
    /// Ask regions to hold DATASET[@VERSION] (default: the newest version).
    Rollout {
        /// DATASET, DATASET@vN or DATASET@latest.
        version: VersionRef,
        /// Regions, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        /// How each region holds the version: every-node (each spoke the whole of it before
        /// Ready: the fastest pod start), region (one copy spread over the spokes; they fetch
        /// from each other what they read) or auto (every-node when it fits a spoke's cache).
        #[arg(long, default_value = "auto")]
        mode: ReplicationMode,
    },
    /// Where each region stands with each rolled-out version (kubectl-get style table).
    Status {
        /// Only this dataset.
        dataset: Option<String>,
        /// Also show each spoke: where it stands with each version, and its cache (a spoke
        /// without a peer share, a sidecar, is listed but does not count for the region).
        #[arg(long)]
        nodes: bool,
    },
    /// Show the manifest of DATASET[@VERSION] (default: the newest version).
    Manifest {
        /// DATASET, DATASET@vN or DATASET@latest.
        version: VersionRef,
        /// Also list every chunk of every file (offset, length, BLAKE3).
        #[arg(long)]
        chunks: bool,
    },
}

#[derive(Subcommand)]
enum SourceCommand {
    /// Register a source. The hub checks that it exists and that the credentials work.
    Add(Box<SourceAdd>),
    /// List sources.
    List,
}

#[derive(Args)]
struct SourceAdd {
    /// Source name (a-z, 0-9, '-', '.', '_').
    name: String,
    /// s3://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH (a path on the hub's machine).
    url: String,
    /// S3 endpoint URL, for S3-compatible stores (MinIO, Ceph, garage...).
    #[arg(long)]
    endpoint: Option<String>,
    /// S3 region (default us-east-1).
    #[arg(long)]
    region: Option<String>,
    /// Allow a plain-http endpoint.
    #[arg(long)]
    allow_http: bool,
    /// Use path-style requests (the default when --endpoint is given).
    #[arg(long)]
    path_style: bool,
    /// Read without credentials (public buckets).
    #[arg(long)]
    anonymous: bool,
    /// Name of the hub's environment variable holding the access key id (default AWS_ACCESS_KEY_ID).
    #[arg(long, value_name = "VAR")]
    access_key_id_env: Option<String>,
    /// Name of the hub's environment variable holding the secret key (default AWS_SECRET_ACCESS_KEY).
    #[arg(long, value_name = "VAR")]
    secret_access_key_env: Option<String>,
    /// AWS credentials file on the hub's machine (instead of environment variables).
    #[arg(long, value_name = "PATH")]
    credentials_file: Option<String>,
    /// Profile inside --credentials-file (default "default").
    #[arg(long)]
    profile: Option<String>,
    /// Any other option, KEY=VALUE (repeatable).
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
}

#[derive(Subcommand)]
enum RegionCommand {
    /// Record a region and its link budget, and write its spokes' credentials bundle.
    Add {
        /// Region name (a-z, 0-9, '-', '.', '_').
        name: String,
        /// Link budget: bytes per second the region may pull, e.g. 100MiB/s, 50MB/s, 400Mbit/s.
        #[arg(long)]
        rate: Rate,
        /// Directory for the bundle (ca.pem, cert.pem, key.pem); default ./NAME-credentials.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List regions.
    List,
    /// Change a region's link budget at run time: the hub's relay uses it at once, the
    /// region's spokes within seconds (no restart).
    Set {
        /// Region name.
        name: String,
        /// New link budget: bytes per second the region may pull, e.g. 100MiB/s, 50MB/s, 400Mbit/s.
        #[arg(long)]
        rate: Rate,
    },
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Bind a dataset name to a prefix of a source.
    Add {
        /// Dataset name (a-z, 0-9, '-', '.', '_').
        name: String,
        /// Source holding the bytes.
        #[arg(long)]
        source: String,
        /// Prefix inside the source (default: the whole source).
        #[arg(long, default_value = "")]
        prefix: String,
        /// What a snapshot does with a symbolic link (file:// sources) that leads outside the
        /// prefix or into the hub's own files: fail (name each link, cut nothing) or skip
        /// (leave them out, listed with the version). Such links are never followed.
        #[arg(long, value_name = "fail|skip", default_value = "fail")]
        outside_links: OutsideLinks,
    },
    /// List datasets.
    List,
    /// Change a dataset's options; they apply from its next snapshot.
    Set {
        /// Dataset name.
        name: String,
        /// What a snapshot does with a symbolic link that leads outside the prefix or into the
        /// hub's own files: fail or skip (see `aq dataset add --help`).
        #[arg(long, value_name = "fail|skip")]
        outside_links: OutsideLinks,
    },
}

/// Lists what a version left out, if anything.
fn print_skipped(version: u64, skipped: &[pb::SkippedObject]) {
    if skipped.is_empty() {
        return;
    }
    println!("warning: {} object(s) under the prefix are not in v{version}:", skipped.len());
    for s in skipped {
        println!("  {:?}: {}", s.key, s.reason);
    }
}

impl SourceAdd {
    fn options(&self) -> Result<BTreeMap<String, String>> {
        let mut options = BTreeMap::new();
        let mut set = |k: &str, v: Option<&String>| {
            if let Some(v) = v {
                options.insert(k.to_string(), v.clone());
            }
        };
        set("endpoint", self.endpoint.as_ref());
        set("region", self.region.as_ref());
        set("access_key_id_env", self.access_key_id_env.as_ref());
        set("secret_access_key_env", self.secret_access_key_env.as_ref());
        set("credentials_file", self.credentials_file.as_ref());
        set("profile", self.profile.as_ref());
        for (flag, key) in
            [(self.allow_http, "allow_http"), (self.path_style, "path_style"), (self.anonymous, "anonymous")]
        {
            if flag {
                options.insert(key.to_string(), "true".to_string());
            }
        }
        for kv in &self.options {
            let Some((k, v)) = kv.split_once('=') else { bail!("--option {kv:?} is not KEY=VALUE") };
            options.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(options)
    }
}

/// Writes a region's credentials: the hub's CA, the region's certificate and its key (0600).
fn write_bundle(dir: &std::path::Path, bundle: &pb::CredentialsBundle) -> Result<()> {
    use aqueduct_core::durable::{self, PUBLIC, SECRET};
    let key = dir.join("key.pem");
    // A bundle is issued once: never write over the key of another.
    if key.exists() {
        anyhow::bail!("{} already exists; choose another --out directory", key.display());
    }
    durable::create_dir_all(dir)?;
    durable::write_file(&dir.join("ca.pem"), bundle.ca_pem.as_bytes(), PUBLIC)?;
    durable::write_file(&dir.join("cert.pem"), bundle.cert_pem.as_bytes(), PUBLIC)?;
    durable::write_file(&key, bundle.key_pem.as_bytes(), SECRET)?;
    Ok(())
}

/// `part` of `whole` as a percentage; an empty whole is complete.
fn percent(part: u64, whole: u64) -> String {
    let p = if whole == 0 { 100.0 } else { part as f64 * 100.0 / whole as f64 };
    format!("{p:.1}%")
}

/// Each region's cache (and with `nodes`, each spoke's): capacity, what it holds, hits.
fn cache_tables(caches: &[pb::RegionCache], nodes: bool) {
    // What a spoke keeps its chunks in: memory in memory-only mode, disk otherwise.
    let kept = |n: &pb::CacheReport| {
        if n.memory_only {
            (Some(n.memory_quota_bytes), n.memory_used_bytes)
        } else {
            ((n.disk_quota_bytes > 0).then_some(n.disk_quota_bytes), n.disk_used_bytes)
        }
    };
    let mut regions =
        Table::new(["REGION", "NODES", "CACHE CAPACITY", "CACHED", "CACHED %", "HIT RATIO", "FROM PEERS"]);
    let mut per_node = Table::new([
        "REGION",
        "NODE",
        "TIER",
        "CAPACITY",
        "CACHED",
        "MEMORY",
        "HIT RATIO",
        "EVICTIONS",
        "FROM PEERS",
        "TO PEERS",
        "BAD FROM PEERS",
    ]);
    for c in caches {
        let (mut capacity, mut used, mut hits, mut misses, mut from_peers) = (Some(0u64), 0, 0, 0, 0);
        for n in &c.nodes {
            let (quota, held) = kept(n);
            // Spokes' numbers: summed without overflow, whatever they say.
            capacity = capacity.zip(quota).map(|(a, b)| a.saturating_add(b));
            used = held.saturating_add(used);
            hits = n.memory_hits.saturating_add(n.disk_hits).saturating_add(hits);
            misses = n.misses.saturating_add(misses);
            from_peers = n.bytes_from_peers.saturating_add(from_peers);
            per_node.row([
                c.region.clone(),
                n.node.clone(),
                if n.memory_only { "memory only" } else { "memory+disk" }.to_string(),
                quota.map_or("unlimited".to_string(), bytes),
                bytes(held),
                format!("{}/{}", bytes(n.memory_used_bytes), bytes(n.memory_quota_bytes)),
                hit_ratio(n.memory_hits.saturating_add(n.disk_hits), n.misses),
                n.evictions.to_string(),
                bytes(n.bytes_from_peers),
                bytes(n.bytes_to_peers),
                n.corrupt_from_peers.to_string(),
            ]);
        }
        regions.row([
            c.region.clone(),
            c.nodes.len().to_string(),
            capacity.map_or("unlimited".to_string(), bytes),
            bytes(used),
            capacity.map_or("-".to_string(), |cap| percent(used, cap)),
            hit_ratio(hits, misses),
            bytes(from_peers),
        ]);
    }
    regions.print();
    if nodes {
        println!();
        per_node.print();
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Command::Quickstart { args } = &cli.command {
        let flags: String = args.iter().map(|a| format!(" {a}")).collect();
        let cargo = if flags.is_empty() { String::new() } else { format!(" --{flags}") };
        bail!(
            "the quickstart is a program of its own now (aq links no hub or spoke): run `cargo run --release --bin aq-quickstart{cargo}` in the repository, or `aq-quickstart{flags}` where it is installed"
        );
    }
    let hub = cli.conn.resolve()?;
    let mut admin = hub.connect().await?;
    match cli.command {
        Command::Quickstart { .. } => unreachable!("handled above"),
        Command::Source(SourceCommand::Add(add)) => {
            let source = pb::Source {
                name: add.name.clone(),
                url: add.url.clone(),
                options: add.options()?.into_iter().collect(),
                created_unix_ms: 0,
            };
            let s = admin
                .add_source(pb::AddSourceRequest { source: Some(source) })
                .await
                .map_err(|e| explain(e, &hub))?
                .into_inner();
            println!("source {} added: {}", s.name, s.url);
        }
        Command::Source(SourceCommand::List) => {
            let list = admin.list_sources(pb::ListSourcesRequest {}).await.map_err(|e| explain(e, &hub))?.into_inner();
            let mut t = Table::new(["NAME", "URL", "OPTIONS", "AGE"]);
            for s in list.sources {
                let options: Vec<String> = s.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
                t.row([s.name, s.url, options.join(","), age(s.created_unix_ms)]);
            }
            t.print();
        }
        Command::Dataset(DatasetCommand::Add { name, source, prefix, outside_links }) => {
            let dataset = pb::Dataset {
                name,
                source,
                prefix,
                created_unix_ms: 0,
                latest_version: 0,
                outside_links: outside_links.to_string(),
                keep_versions: 0,
            };
            let d = admin
                .add_dataset(pb::AddDatasetRequest { dataset: Some(dataset) })
                .await
                .map_err(|e| explain(e, &hub))?
                .into_inner();
            println!(
                "dataset {} added: source {} prefix {:?}, outside links: {}",
                d.name, d.source, d.prefix, d.outside_links
            );
        }
        Command::Dataset(DatasetCommand::Set { name, outside_links }) => {
            let req = pb::UpdateDatasetRequest { name, outside_links: outside_links.to_string(), keep_versions: None };
            let d = admin.update_dataset(req).await.map_err(|e| explain(e, &hub))?.into_inner();
            println!("dataset {}: outside links: {} (from its next snapshot)", d.name, d.outside_links);
        }
        Command::Dataset(DatasetCommand::List) => {
            let list =
                admin.list_datasets(pb::ListDatasetsRequest {}).await.map_err(|e| explain(e, &hub))?.into_inner();
            let mut t = Table::new(["NAME", "SOURCE", "PREFIX", "LATEST", "OUTSIDE LINKS", "AGE"]);
            for d in list.datasets {
                let latest = if d.latest_version == 0 { "-".into() } else { format!("v{}", d.latest_version) };
                t.row([d.name, d.source, d.prefix, latest, d.outside_links, age(d.created_unix_ms)]);
            }
            t.print();
        }
        Command::Snapshot { dataset } => {
            let mut events = admin
                .snapshot(pb::SnapshotRequest { dataset: dataset.clone() })
                .await
                .map_err(|e| explain(e, &hub))?
                .into_inner();
            let mut report = progress_reporter(&dataset);
            let done = loop {
                match events.message().await.map_err(|e| explain(e, &hub))? {
                    Some(pb::SnapshotEvent { event: Some(pb::snapshot_event::Event::Progress(p)) }) => {
                        report.update(&p)
                    }
                    Some(pb::SnapshotEvent { event: Some(pb::snapshot_event::Event::Done(v)) }) => break v,
                    Some(_) => {}
                    None => bail!("the hub ended the snapshot of {dataset} without a result; see the hub's log"),
                }
            };
            report.finish();
            let root = aqueduct_proto::Digest::from_slice(&done.root).map(|d| d.to_hex()).unwrap_or_default();
            if done.unchanged {
                println!(
                    "{}: unchanged since v{} (root {root}); no new version cut; read {} from the source",
                    done.dataset,
                    done.version,
                    bytes(done.bytes_read)
                );
            } else {
                let against =
                    if done.version > 1 { format!("against v{}", done.version - 1) } else { "(first version)".into() };
                println!(
                    "{}@v{}: {} files, {}, {} chunks; {} new {against}; read {} from the source",
                    done.dataset,
                    done.version,
                    done.files,
                    bytes(done.bytes),
                    done.chunks,
                    bytes(done.new_bytes),
                    bytes(done.bytes_read)
                );
                println!("root {root}");
            }
            print_skipped(done.version, &done.skipped);
        }
        Command::Versions { dataset } => {
            let list = admin
                .list_versions(pb::ListVersionsRequest { dataset })
                .await
                .map_err(|e| explain(e, &hub))?
                .into_inner();
            let mut t = Table::new(["VERSION", "FILES", "SIZE", "CHUNKS", "NEW", "SKIPPED", "ROOT", "AGE"]);
            for v in list.versions {
                let root = aqueduct_proto::Digest::from_slice(&v.root).map(|d| d.short()).unwrap_or_default();
                t.row([
                    format!("v{}", v.version),
                    v.files.to_string(),
                    bytes(v.bytes),
                    v.chunks.to_string(),
                    bytes(v.new_bytes),
                    v.skipped.len().to_string(),
                    root,
                    age(v.created_unix_ms),
                ]);
            }
            t.print();
        }
        Command::Region(RegionCommand::Add { name, rate, out }) => {
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}-credentials")));
            if out.exists() {
                bail!("{} already exists; choose another --out or remove it", out.display());
            }
            // Make sure the bundle can be written before the hub records the region.
            std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let region =
                pb::Region { name: name.clone(), rate_bytes_per_sec: rate.0, created_unix_ms: 0, members: Vec::new() };
            let resp = match admin.add_region(pb::AddRegionRequest { region: Some(region) }).await {
                Ok(resp) => resp.into_inner(),
                Err(e) => {
                    let _ = std::fs::remove_dir(&out);
                    return Err(explain(e, &hub));
                }
            };
            let bundle = resp.bundle.context("the hub sent no credentials bundle")?;
            write_bundle(&out, &bundle).with_context(|| {
                format!("region {name} was added, but its bundle could not be written to {}", out.display())
            })?;
            println!("region {name} added with a link budget of {rate}");
            println!(
                "credentials for its spokes written to {} (hub: {}); keep key.pem private",
                out.display(),
                hub.url
            );
        }
        Command::Region(RegionCommand::Set { name, rate }) => {
            let req = pb::UpdateRegionRequest { name: name.clone(), rate_bytes_per_sec: rate.0 };
            let region = admin.update_region(req).await.map_err(|e| explain(e, &hub))?.into_inner();
            println!("region {} now has a link budget of {}", region.name, Rate(region.rate_bytes_per_sec));
        }
        Command::Region(RegionCommand::List) => {
            let list = admin.list_regions(pb::ListRegionsRequest {}).await.map_err(|e| explain(e, &hub))?.into_inner();
            let mut t = Table::new(["NAME", "BUDGET", "LIVE SPOKES", "AGE"]);
            for r in list.regions {
                let spokes = r.members.iter().map(|m| m.node.as_str()).collect::<Vec<_>>().join(",");
                let spokes = if spokes.is_empty() { "-".to_string() } else { spokes };
                t.row([r.name, Rate(r.rate_bytes_per_sec).to_string(), spokes, age(r.created_unix_ms)]);
            }
            t.print();
        }
        Command::Rollout { version, to, mode } => {
            let req = pb::RolloutRequest {
                dataset: version.dataset.clone(),
                version: version.version.unwrap_or(0),
                regions: to,
                mode: mode.to_wire(),
                cut_over: pb::CutOver::Unspecified.into(),
            };
            let resp = admin.rollout(req).await.map_err(|e| explain(e, &hub))?.into_inner();
            println!("{}@v{} rolling out to {}", resp.dataset, resp.version, resp.regions.join(", "));
        }
        Command::Status { dataset, nodes } => {
            let req = pb::StatusRequest { dataset: dataset.unwrap_or_default() };
            let status = admin.status(req).await.map_err(|e| explain(e, &hub))?.into_inner();
            let mut t = Table::new([
                "DATASET",
                "VERSION",
                "REGION",
                "MODE",
                "TOTAL SIZE",
                "CACHED",
                "CACHED %",
                "PHASE",
                "RATE",
            ]);
            let mut per_node = Table::new(["DATASET", "VERSION", "REGION", "NODE", "CACHED", "CACHED %", "PHASE"]);
            for r in status.rows {
                // Ready and served by the region: Active.
                let phase = match (r.active, r.reason.is_empty()) {
                    (true, _) => "Active".to_string(),
                    (false, true) => phase_name(r.phase),
                    (false, false) => format!("{}: {}", phase_name(r.phase), r.reason),
                };
                let achieved =
                    if r.rate_bytes_per_sec == 0 { "-".to_string() } else { Rate(r.rate_bytes_per_sec).to_string() };
                let rate = format!("{achieved}/{}", Rate(r.budget_bytes_per_sec));
                for n in &r.nodes {
                    let phase = match (n.counted, n.reason.is_empty()) {
                        // A sidecar: it reads what its pods ask for and holds no part of the copy.
                        (false, _) => "- (no peer share: reads on demand, not counted)".to_string(),
                        (true, true) => phase_name(n.phase),
                        (true, false) => format!("{}: {}", phase_name(n.phase), n.reason),
                    };
                    per_node.row([
                        r.dataset.clone(),
                        format!("v{}", r.version),
                        r.region.clone(),
                        n.node.clone(),
                        bytes(n.cached_bytes),
                        percent(n.cached_bytes, r.total_bytes),
                        phase,
                    ]);
                }
                t.row([
                    r.dataset,
                    format!("v{}", r.version),
                    r.region,
                    mode_name(r.mode),
                    bytes(r.total_bytes),
                    bytes(r.cached_bytes),
                    percent(r.cached_bytes, r.total_bytes),
                    phase,
                    rate,
                ]);
            }
            t.print();
            if nodes {
                println!();
                per_node.print();
            }
            if !status.caches.is_empty() {
                println!();
                cache_tables(&status.caches, nodes);
            }
        }
        Command::Manifest { version, chunks } => {
            let wire = admin
                .get_manifest(pb::GetManifestRequest {
                    dataset: version.dataset.clone(),
                    version: version.version.unwrap_or(0),
                })
                .await
                .map_err(|e| explain(e, &hub))?
                .into_inner();
            let m = Manifest::try_from(wire).context("the hub sent a manifest that does not verify")?;
            println!(
                "{}@v{}: {} files, {}, {} chunks (chunker {}/{}/{} KiB)",
                m.dataset,
                m.version,
                m.files.len(),
                bytes(m.total_bytes()),
                m.chunk_count(),
                m.chunker.min_size >> 10,
                m.chunker.avg_size >> 10,
                m.chunker.max_size >> 10
            );
            println!("root {}", m.root);
            let mut t = Table::new(["PATH", "SIZE", "MODE", "MTIME", "CHUNKS", "OBJECT"]);
            for f in &m.files {
                t.row([
                    f.path.clone(),
                    bytes(f.size),
                    format!("{:o}", f.mode),
                    age(f.mtime_unix_ms),
                    f.chunks.len().to_string(),
                    f.object.clone(),
                ]);
            }
            t.print();
            // What the version left out is kept with its summary.
            let versions = admin
                .list_versions(pb::ListVersionsRequest { dataset: m.dataset.clone() })
                .await
                .map_err(|e| explain(e, &hub))?
                .into_inner()
                .versions;
            if let Some(v) = versions.iter().find(|v| v.version == m.version) {
                print_skipped(m.version, &v.skipped);
            }
            if chunks {
                let mut t = Table::new(["PATH", "OFFSET", "LENGTH", "BLAKE3"]);
                for f in &m.files {
                    for c in &f.chunks {
                        t.row([f.path.clone(), c.offset.to_string(), c.length.to_string(), c.digest.to_hex()]);
                    }
                }
                t.print();
            }
        }
    }
    Ok(())
}
