//! `aq`: the operator's CLI for an Aqueduct hub.
//!
//! It talks to the hub's admin API over mutual TLS. Where the hub is and which certificate to
//! present come from, in order: flags (`--hub`, `--ca`, `--cert`, `--key`), their environment
//! variables (`AQ_HUB`, ...), the config file named by `--config` or `AQ_CONFIG`, and
//! `~/.config/aqueduct/aq.toml`. `aqueduct-hub init` writes such a file into its admin bundle.
//!
//! The file is some 770 lines long because every subcommand's flags and help text (which are
//! also its man page and completions) stand together in one clap tree here; the lifecycle
//! commands' and the trust commands' flags and work are in the library (`lifecycle`, `trust`).
//!
//! Each subcommand's flags, their help text and what the subcommand does stand together here;
//! finding the hub, printing listings, waiting and exit codes live in the library (`connect`,
//! `output`, `views`, `status`, `wait`, `exit`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use aqueduct_cli::connect::{ConnArgs, explain};
use aqueduct_cli::exit;
use aqueduct_cli::lifecycle::{self, Removed};
use aqueduct_cli::output::{Format, Listing, bytes, progress_reporter, render};
use aqueduct_cli::trust;
use aqueduct_cli::views::{self, ManifestView, Regions, SkippedView, Sources, Versions, VersionsInfo};
use aqueduct_cli::wait::{Until, WaitArgs};
use aqueduct_cli::watch;
use aqueduct_proto::domain::class::Class;
use aqueduct_proto::domain::cut_over::CutOver;
use aqueduct_proto::domain::modes::OutsideLinks;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{Manifest, Rate, ReplicationMode, VersionRef};
use clap::{Args, CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aq",
    version,
    about = "Operate an Aqueduct hub: sources, datasets, snapshots, versions, regions, rollouts",
    after_long_help = exit::help()
)]
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
        #[command(flatten)]
        output: OutputArg,
    },
    /// Regions: cloud clusters behind a link with a byte budget.
    #[command(subcommand)]
    Region(RegionCommand),
    /// Ask regions to hold DATASET[@VERSION] (default: the newest version); `aq rollout
    /// cancel DATASET@vN` takes it back.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Rollout {
        #[command(subcommand)]
        action: Option<RolloutAction>,
        /// DATASET, DATASET@vN or DATASET@latest.
        #[arg(required = true)]
        version: Option<VersionRef>,
        /// Regions, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        /// How each region holds the version: every-node (each spoke the whole of it before
        /// Ready: the fastest pod start), region (one copy spread over the spokes; they fetch
        /// from each other what they read) or auto (every-node when it fits a spoke's cache).
        #[arg(long, default_value = "auto")]
        mode: ReplicationMode,
        /// When the regions start serving the version: all-ready (once it is Ready in every
        /// region of the rollout; the default), per-region (each region once it is Ready
        /// there) or manual (on `aq promote`).
        #[arg(long, value_name = "all-ready|per-region|manual")]
        cut_over: Option<CutOver>,
        /// Which rollouts get the regions' links first: urgent (first, after the reads of pods),
        /// normal (the default) or background (only what the others leave). Every class stays
        /// within the region's budget. A region that already has the version takes the class.
        #[arg(long, value_name = "urgent|normal|background")]
        class: Option<Class>,
        #[command(flatten)]
        plan: aqueduct_cli::plan::PlanArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Where each region stands with each rolled-out version (kubectl-get style table), what
    /// each region serves, and each region's cache.
    Status {
        /// Only this dataset.
        dataset: Option<String>,
        /// Also show each spoke: where it stands with each version, and its cache and build (a
        /// spoke whose build differs from the hub's is marked in the SKEW column; a spoke
        /// without a peer share, a sidecar, is listed but does not count for the region).
        #[arg(long)]
        nodes: bool,
        /// Exit with 3 when a row shown is Failed (after printing the status; with --watch, as
        /// soon as one is). Without it `aq status` exits 0 whatever the rows say.
        #[arg(long)]
        fail_on_failed: bool,
        /// Show the status again every 2 s until Ctrl-C: redrawn on a terminal, printed again
        /// when it changed otherwise.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Show the manifest of DATASET[@VERSION] (default: the newest version).
    Manifest {
        /// DATASET, DATASET@vN or DATASET@latest.
        version: VersionRef,
        /// Also list every chunk of every file (offset, length, BLAKE3).
        #[arg(long)]
        chunks: bool,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Show the versions of this aq, of the hub and of each live spoke (marking the spokes
    /// whose build differs from the hub's); `aq version rm DATASET@vN` removes a version.
    #[command(args_conflicts_with_subcommands = true)]
    Version {
        #[command(subcommand)]
        action: Option<VersionAction>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Name a version of DATASET (`aq tag llama stable v3`), move the name, or remove it
    /// (--rm). Mounts and volumes can follow a tag.
    Tag(lifecycle::TagArgs),
    /// Make regions serve DATASET@vN: at once where it is Ready, once it is Ready elsewhere.
    Promote(lifecycle::PromoteArgs),
    /// Make regions serve an earlier version of DATASET again: at once, with no byte over the
    /// link, where it is still whole; otherwise it is rolled out again and served once Ready.
    Rollback(lifecycle::RollbackArgs),
    /// Remove the versions nothing retains (see `aq versions DATASET -o wide`), printing what
    /// goes and the bytes each region frees.
    Gc(lifecycle::GcArgs),
    /// Nodes: `aq node revoke REGION NODE`.
    #[command(subcommand)]
    Node(trust::NodeCommand),
    /// Named admins: add (a personal bundle), list, revoke.
    #[command(subcommand)]
    Admin(trust::AdminCommand),
    /// List the revocation list: what the hub and the spokes refuse.
    Revocations {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Show the audit log: every admin call (who, what, arguments without secrets, result,
    /// when), oldest first.
    Audit(trust::AuditArgs),
    /// Print a shell completion script for aq, e.g. `aq completions bash >
    /// /etc/bash_completion.d/aq` (see the README for zsh and fish).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Check files of a mounted version offline: the manifest's root and the hub's signature
    /// (with the hub's public key), then each file's extended attributes and bytes against the
    /// signed manifest's chunk digests. Exits 1 if anything does not verify. Needs no hub.
    Verify {
        /// The version's manifest, as `aq manifest DATASET@vN --chunks -o json > FILE` wrote it.
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// A hub signing public key (`ed25519:HEX`) or a file of them (`aqueduct-hub
        /// signing-key show`, the hub's signing/hub.pub, a region bundle's signing.pub);
        /// repeatable.
        #[arg(long = "trust", value_name = "KEY|FILE", required = true)]
        keys: Vec<String>,
        /// Files on an Aqueduct mount of that version.
        files: Vec<PathBuf>,
    },
    /// Write manual pages: aq.1 and one per subcommand (aq-source-add.1...).
    Man {
        /// Directory to write them into (created if missing), e.g. /usr/local/share/man/man1.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// `-o`, the output format of a listing.
#[derive(Args)]
struct OutputArg {
    /// Output format: table (the default), wide (adds ids, roots, timestamps, reasons, node
    /// counts), json or yaml (stable field names, listed in the README; stdout holds only the
    /// listing).
    #[arg(short = 'o', long = "output", value_name = "table|wide|json|yaml", default_value = "table")]
    output: Format,
}

#[derive(Subcommand)]
enum RolloutAction {
    /// Take DATASET@vN back from regions (refused where a region serves it: roll back first).
    Cancel(lifecycle::CancelArgs),
}

#[derive(Subcommand)]
enum VersionAction {
    /// Remove DATASET@vN (refused while something retains it, naming what).
    Rm(lifecycle::VersionRmArgs),
}

#[derive(Subcommand)]
enum SourceCommand {
    /// Register a source. The hub checks that it exists and that the credentials work.
    Add(Box<SourceAdd>),
    /// List sources.
    List {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Change a source's read limits while the hub runs (the next chunk read takes them).
    Set {
        /// Source name.
        name: String,
        /// The most bytes per second replication reads from it, over all regions (e.g.
        /// 200MiB/s); `none` removes the limit.
        #[arg(long, value_name = "RATE|none")]
        read_rate: Option<String>,
        /// The most reads of it at once, over all regions (1 to 4096); `none` removes the limit.
        #[arg(long, value_name = "N|none")]
        max_reads: Option<String>,
    },
    /// Remove a source (refused while a dataset uses it).
    Rm(lifecycle::RmArgs),
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
    /// The most bytes per second replication reads from this source, over all regions
    /// together (e.g. 200MiB/s); default: what the regions' budgets take.
    #[arg(long, value_name = "RATE")]
    read_rate: Option<Rate>,
    /// The most reads of this source at once, over all regions (1 to 4096).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_reads: Option<u32>,
    /// Any other option, KEY=VALUE (repeatable). Long form only: `-o` is the output format
    /// of listings.
    #[arg(long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
}

#[derive(Subcommand)]
enum RegionCommand {
    /// Record a region and its link budget, and write the hub's CA certificate (what its
    /// spokes trust). Its spokes then enrol, each for a certificate of its own node, with a
    /// token: make one with `aq region token NAME`.
    Add {
        /// Region name (a-z, 0-9, '-', '.', '_').
        name: String,
        /// Link budget: bytes per second the region may pull, e.g. 100MiB/s, 50MB/s, 400Mbit/s.
        #[arg(long)]
        rate: Rate,
        /// Directory for the hub's CA certificate (ca.pem); default ./NAME-credentials.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make a bootstrap token with which the region's spokes enrol (single-use by default;
    /// shown once, the hub keeps only its hash).
    Token(aqueduct_cli::enrol::TokenArgs),
    /// List regions.
    List {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Remove a region (refused while versions are rolled out to it; --force removes those
    /// rollouts too). Its spokes' credentials stop working at once.
    Rm(lifecycle::RmArgs),
    /// Revoke every certificate of the region (its nodes' and the region's) issued until now:
    /// the hub and the region's peers refuse them within seconds, open connections included.
    RevokeAll(trust::RegionRevokeArgs),
    /// Change a region's link budget at run time: the hub's relay uses it at once, the
    /// region's spokes within seconds (no restart). A flat budget (--rate) or a weekly
    /// schedule (--schedule, in --tz).
    #[command(group = clap::ArgGroup::new("budget").required(true))]
    Set {
        /// Region name.
        name: String,
        /// New flat link budget: bytes per second the region may pull, e.g. 100MiB/s, 50MB/s,
        /// 400Mbit/s (replaces a schedule).
        #[arg(long, group = "budget")]
        rate: Option<Rate>,
        /// A weekly budget schedule: rules separated by `;`, the first that matches wins, the
        /// last a rate alone for every other time. A rule is [DAYS] [HH:MM-HH:MM] RATE; days are
        /// mon..sun, ranges (mon-fri), lists (sat,sun), weekdays, weekends or daily; a window
        /// ending before it starts runs past midnight. E.g.
        /// "mon-fri 08:00-20:00 20MiB/s; 200MiB/s".
        #[arg(long, group = "budget", value_name = "RULES")]
        schedule: Option<String>,
        /// The time zone of the schedule's windows (an IANA name, e.g. Europe/Berlin; default
        /// UTC): windows follow its daylight saving time.
        #[arg(long = "tz", value_name = "ZONE", requires = "schedule")]
        time_zone: Option<String>,
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
    /// List datasets, with each watch and its last check (its next with -o wide).
    List {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Change a dataset's options: what snapshots do with outside links, retention, and its
    /// watch (the hub cuts a version when the source changed, and rolls it out if asked).
    #[command(group = clap::ArgGroup::new("change").required(true).multiple(true))]
    Set {
        /// Dataset name.
        name: String,
        /// What a snapshot does with a symbolic link that leads outside the prefix or into the
        /// hub's own files: fail or skip (see `aq dataset add --help`); from its next snapshot.
        #[arg(long, value_name = "fail|skip", group = "change")]
        outside_links: Option<OutsideLinks>,
        /// Retention: always keep the newest N versions (default 3), besides what tags,
        /// regions, rollouts and mounts retain.
        #[arg(long, value_name = "N", group = "change")]
        keep: Option<u32>,
        #[command(flatten)]
        watch: aqueduct_cli::triggers::WatchArgs,
    },
    /// Remove a dataset and its versions (refused while rolled out, unless --force; never
    /// while a pod uses it).
    Rm(lifecycle::RmArgs),
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
        set("read_rate", self.read_rate.map(|r| format!("{}B/s", r.0)).as_ref());
        set("max_reads", self.max_reads.map(|n| n.to_string()).as_ref());
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

/// `aq verify`: the manifest and its signature, then each file; exit 1 if anything fails.
fn verify(manifest: &std::path::Path, keys: &[String], files: &[PathBuf]) -> Result<()> {
    use aqueduct_cli::verify;
    let trust = verify::trusted_keys(keys)?;
    let m = verify::verified_manifest(manifest, &trust)?;
    let signed = m.signature.as_ref().map(|s| s.key_id.to_string()).unwrap_or_default();
    println!("{}@v{}: root {} verifies, signed by key {signed}", m.dataset, m.version, m.root);
    let mut failed = 0;
    for file in files {
        match verify::check_file(&m, file) {
            Ok(path) => println!("ok      {} ({path})", file.display()),
            Err(why) => {
                failed += 1;
                println!("FAILED  {}: {why}", file.display());
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} file(s) do not verify against {}@v{}", files.len(), m.dataset, m.version);
    }
    Ok(())
}

/// Prints a listing on stdout in the format asked for.
fn show<L: Listing>(listing: &L, output: &OutputArg) -> Result<()> {
    print!("{}", render(listing, output.output)?);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::code_of(&e).code())
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    // What needs no hub.
    match &cli.command {
        Command::Quickstart { args } => {
            let flags: String = args.iter().map(|a| format!(" {a}")).collect();
            let cargo = if flags.is_empty() { String::new() } else { format!(" --{flags}") };
            bail!(
                "the quickstart is a program of its own now (aq links no hub or spoke): run `cargo run --release --bin aq-quickstart{cargo}` in the repository, or `aq-quickstart{flags}` where it is installed"
            );
        }
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "aq", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man { out } => {
            for page in aqueduct_cli::manpages::write_pages(Cli::command(), out)? {
                println!("{}", page.display());
            }
            return Ok(());
        }
        Command::Verify { manifest, keys, files } => return verify(manifest, keys, files),
        _ => {}
    }
    let mut hub = cli.conn.resolve()?;
    let mut admin = hub.connect().await?;
    match cli.command {
        Command::Quickstart { .. } | Command::Completions { .. } | Command::Man { .. } | Command::Verify { .. } => {
            unreachable!("handled above")
        }
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
        Command::Source(SourceCommand::Set { name, read_rate, max_reads }) => {
            let none_is_empty = |v: Option<String>| v.map(|v| if v == "none" { String::new() } else { v });
            let req = pb::UpdateSourceRequest {
                name,
                read_rate: none_is_empty(read_rate),
                max_reads: none_is_empty(max_reads),
            };
            let s = admin.update_source(req).await.map_err(|e| explain(e, &hub))?.into_inner();
            let limit = |key: &str| s.options.get(key).map_or("none".to_string(), Clone::clone);
            println!("source {}: read_rate {}, max_reads {}", s.name, limit("read_rate"), limit("max_reads"));
        }
        Command::Source(SourceCommand::List { output }) => {
            let list = admin.list_sources(pb::ListSourcesRequest {}).await.map_err(|e| explain(e, &hub))?.into_inner();
            show(&Sources::from(list), &output)?;
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
                watch: None,
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
        Command::Dataset(DatasetCommand::Set { name, outside_links, keep, watch }) => {
            let (set_watch, unwatch) = watch.request()?;
            let only_watch = watch.changes() && outside_links.is_none() && keep.is_none();
            let outside_links = outside_links.map(|o| o.to_string()).unwrap_or_default();
            let req = pb::UpdateDatasetRequest { name, outside_links, keep_versions: keep, watch: set_watch, unwatch };
            let d = admin.update_dataset(req).await.map_err(|e| explain(e, &hub))?.into_inner();
            if !only_watch {
                println!(
                    "dataset {}: outside links: {} (from its next snapshot); keeps the newest {} versions",
                    d.name, d.outside_links, d.keep_versions
                );
            }
            if watch.changes() {
                match d.watch {
                    Some(w) => {
                        println!("dataset {}: {}", d.name, aqueduct_cli::triggers::WatchView::from(w).describe())
                    }
                    None => println!("dataset {}: not watched", d.name),
                }
            }
        }
        Command::Dataset(DatasetCommand::Rm(args)) => {
            lifecycle::remove(&mut admin, &hub, Removed::Dataset, args).await?
        }
        Command::Source(SourceCommand::Rm(args)) => lifecycle::remove(&mut admin, &hub, Removed::Source, args).await?,
        Command::Region(RegionCommand::Rm(args)) => lifecycle::remove(&mut admin, &hub, Removed::Region, args).await?,
        Command::Tag(args) => lifecycle::tag(&mut admin, &hub, args).await?,
        Command::Node(command) => trust::node(&mut admin, &hub, command).await?,
        Command::Region(RegionCommand::RevokeAll(args)) => trust::region_revoke(&mut admin, &hub, args).await?,
        Command::Admin(command) => trust::admin(&mut admin, &hub, command).await?,
        Command::Revocations { output } => trust::revocations(&mut admin, &hub, output.output).await?,
        Command::Audit(args) => trust::audit(&mut admin, &hub, args).await?,
        Command::Promote(args) => lifecycle::promote(&mut admin, &hub, args).await?,
        Command::Rollback(args) => lifecycle::rollback(&mut admin, &hub, args).await?,
        Command::Gc(args) => lifecycle::gc(&mut admin, &hub, args).await?,
        Command::Rollout { action: Some(RolloutAction::Cancel(args)), .. } => {
            lifecycle::cancel(&mut admin, &hub, args).await?
        }
        Command::Version { action: Some(VersionAction::Rm(args)), .. } => {
            lifecycle::remove_version(&mut admin, &hub, args).await?
        }
        Command::Dataset(DatasetCommand::List { output }) => {
            let list =
                admin.list_datasets(pb::ListDatasetsRequest {}).await.map_err(|e| explain(e, &hub))?.into_inner();
            show(&views::Datasets::from(list), &output)?;
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
            let skipped: Vec<SkippedView> =
                done.skipped.into_iter().map(|s| SkippedView { key: s.key, reason: s.reason }).collect();
            print!("{}", views::skipped_text(done.version, &skipped));
        }
        Command::Versions { dataset, output } => {
            let list = admin
                .list_versions(pb::ListVersionsRequest { dataset: dataset.clone() })
                .await
                .map_err(|e| explain(e, &hub))?
                .into_inner();
            show(&Versions::new(dataset, list), &output)?;
        }
        Command::Region(RegionCommand::Add { name, rate, out }) => {
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}-credentials")));
            if out.exists() {
                bail!("{} already exists; choose another --out or remove it", out.display());
            }
            // Make sure the bundle can be written before the hub records the region.
            std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let region = pb::Region { name: name.clone(), rate_bytes_per_sec: rate.0, ..Default::default() };
            let resp = match admin.add_region(pb::AddRegionRequest { region: Some(region) }).await {
                Ok(resp) => resp.into_inner(),
                Err(e) => {
                    let _ = std::fs::remove_dir(&out);
                    return Err(explain(e, &hub));
                }
            };
            let ca = out.join("ca.pem");
            aqueduct_core::durable::write_file(&ca, resp.ca_pem.as_bytes(), aqueduct_core::durable::PUBLIC)
                .with_context(|| format!("region {name} was added, but {} could not be written", ca.display()))?;
            // The hub's signing public keys, which the region's spokes trust.
            let keys: String = resp.signing_keys.iter().map(|k| format!("{k}\n")).collect();
            let signing = out.join("signing.pub");
            aqueduct_core::durable::write_file(&signing, keys.as_bytes(), aqueduct_core::durable::PUBLIC)
                .with_context(|| format!("region {name} was added, but {} could not be written", signing.display()))?;
            println!("region {name} added with a link budget of {rate}");
            println!(
                "the hub's CA certificate (tls.ca of its spokes) and its signing keys (signing.pub: \
                 [trust] signing_keys_file) written to {} (hub: {}); its spokes enrol with a token: \
                 `aq region token {name}` (--uses N for N nodes)",
                out.display(),
                hub.url
            );
        }
        Command::Region(RegionCommand::Token(args)) => aqueduct_cli::enrol::token(&mut admin, &hub, args).await?,
        Command::Region(RegionCommand::Set { name, rate, schedule, time_zone }) => {
            let req = pb::UpdateRegionRequest {
                name: name.clone(),
                rate_bytes_per_sec: rate.map_or(0, |r| r.0),
                schedule: schedule.unwrap_or_default(),
                time_zone: time_zone.unwrap_or_default(),
            };
            let region = admin.update_region(req).await.map_err(|e| explain(e, &hub))?.into_inner();
            if region.schedule.is_empty() {
                println!("region {} now has a link budget of {}", region.name, Rate(region.rate_bytes_per_sec));
            } else {
                println!(
                    "region {} now has a budget schedule: {} ({})",
                    region.name, region.schedule, region.time_zone
                );
                print!("  in force now: {}", Rate(region.budget_now_bytes_per_sec));
                if region.next_change_unix_ms != 0 {
                    print!(
                        "; {} {}",
                        Rate(region.next_budget_bytes_per_sec),
                        aqueduct_cli::output::until(region.next_change_unix_ms)
                    );
                }
                println!();
            }
        }
        Command::Region(RegionCommand::List { output }) => {
            let list = admin.list_regions(pb::ListRegionsRequest {}).await.map_err(|e| explain(e, &hub))?.into_inner();
            show(&Regions::from(list), &output)?;
        }
        Command::Rollout { action: None, version, to, mode, cut_over, class, plan, wait: waiting } => {
            let Some(version) = version else {
                bail!("name the version to roll out: aq rollout DATASET@vN --to REGION")
            };
            let now = jiff::Timestamp::now();
            let deadline = plan.by.as_deref().map(|by| aqueduct_cli::plan::parse_by(by, now)).transpose()?;
            let req = pb::RolloutRequest {
                dataset: version.dataset.clone(),
                version: version.version.unwrap_or(0),
                regions: to,
                mode: mode.to_wire(),
                cut_over: cut_over.map_or(pb::CutOver::Unspecified.into(), CutOver::to_wire),
                class: class.map_or(pb::RolloutClass::Unspecified.into(), Class::to_wire),
                deadline_unix_ms: deadline.map_or(0, |d| d.as_millisecond()),
                dry_run: plan.dry_run,
            };
            let resp = admin.rollout(req).await.map_err(|e| explain(e, &hub))?.into_inner();
            print!("{}", aqueduct_cli::plan::plan_table(&resp, jiff::Timestamp::now().as_millisecond()));
            if resp.dry_run {
                return Ok(());
            }
            println!("{}@v{} rolling out to {}", resp.dataset, resp.version, resp.regions.join(", "));
            let until = Until::Ready { dataset: resp.dataset, version: resp.version, regions: resp.regions };
            waiting.wait(&mut admin, &hub, until).await?;
        }
        Command::Status { dataset, nodes, fail_on_failed, watch, output } => {
            if watch {
                watch::watch(&mut admin, &hub, &dataset, nodes, fail_on_failed, output.output).await?;
            } else {
                let view = watch::status_view(&mut admin, &hub, &dataset, nodes).await?;
                show(&view, &output)?;
                watch::check_failed(&view, fail_on_failed)?;
            }
        }
        Command::Manifest { version, chunks, output } => {
            let wire = admin
                .get_manifest(pb::GetManifestRequest {
                    dataset: version.dataset.clone(),
                    version: version.version.unwrap_or(0),
                })
                .await
                .map_err(|e| explain(e, &hub))?
                .into_inner();
            let m = Manifest::try_from(wire).context("the hub sent a manifest that does not verify")?;
            // What the version left out is kept with its summary.
            let versions = admin
                .list_versions(pb::ListVersionsRequest { dataset: m.dataset.clone() })
                .await
                .map_err(|e| explain(e, &hub))?
                .into_inner()
                .versions;
            let skipped = versions.into_iter().find(|v| v.version == m.version).map(|v| v.skipped).unwrap_or_default();
            show(&ManifestView::new(&m, skipped, chunks), &output)?;
        }
        Command::Version { action: None, output } => {
            let info = admin.info(pb::InfoRequest {}).await.map_err(|e| explain(e, &hub))?.into_inner();
            show(&VersionsInfo::new(env!("CARGO_PKG_VERSION"), info).at(&hub.url), &output)?;
        }
    }
    Ok(())
}
