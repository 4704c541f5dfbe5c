//! `aqueduct-fuse`: mounts a dataset version through a spoke's local API, for pods that cannot
//! use the spoke's CSI node plugin (`mount`: a sidecar sharing the mount with the app
//! container), or holds every FUSE mount of a node for its spoke (`hold`: the holder, which
//! outlives spoke restarts and upgrades).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use aqueduct_core::signing::TrustedKeys;
use aqueduct_fuse::fs::{ChunkCache, VersionFs};
use aqueduct_fuse::holder::HolderConfig;
use aqueduct_fuse::remote::RemoteSource;
use aqueduct_fuse::view::View;
use aqueduct_proto::Manifest;
use aqueduct_proto::selector::MountRef;
use clap::{Parser, Subcommand};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "aqueduct-fuse",
    version,
    about = "Mounts Aqueduct dataset versions read-only through a spoke: one (sidecar mode), or every mount of a node (the holder)",
    after_help = aqueduct_core::edge::LOG_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount DATASET (following the region's active version), DATASET@TAG (following a tag,
    /// e.g. llama@stable) or DATASET@vN at MOUNTPOINT and serve it until interrupted (SIGTERM
    /// or Ctrl-C), then unmount. A following mount switches when what it follows moves (new
    /// opens see the new version; open files keep theirs). Reads that need the spoke while it
    /// is away wait for it.
    Mount {
        /// DATASET, DATASET@TAG or DATASET@vN.
        dataset: MountRef,
        /// An existing directory.
        mountpoint: PathBuf,
        /// The spoke's local API socket.
        #[arg(long, env = "AQUEDUCT_SPOKE_SOCKET", default_value = "/var/lib/aqueduct-spoke/spoke.sock")]
        socket: PathBuf,
        /// Memory for recently read chunks.
        #[arg(long, default_value_t = 256)]
        cache_mib: u64,
        /// How often the mount asks the spoke for the version it follows (and renews its use
        /// of the version shown).
        #[arg(long, default_value_t = 2)]
        follow_every_secs: u64,
        /// A hub signing public key (`ed25519:HEX`, as `aqueduct-hub signing-key show` prints
        /// it) that the mount trusts (repeatable). The mount shows no version whose manifest
        /// is not signed by one of these keys or those of --trust.
        #[arg(long = "signing-key", value_name = "KEY", env = "AQUEDUCT_SIGNING_KEYS", value_delimiter = ',')]
        signing_keys: Vec<String>,
        /// A file of trusted hub signing public keys, one per line (`#` comments): the hub's
        /// `signing/hub.pub`, a region bundle's `signing.pub`.
        #[arg(long, value_name = "FILE")]
        trust: Option<PathBuf>,
    },
    /// Hold the node's FUSE mounts for its spoke: serve the holder API on SOCKET (the spoke
    /// mounts and unmounts through it), read chunks from the spoke's store and through its
    /// local API, and keep serving while the spoke restarts. On SIGTERM or Ctrl-C, unmount
    /// everything and exit. The spoke starts one itself (`[mounts] holder = "spawn"`), or a
    /// DaemonSet of its own runs it (`holder = "external"`).
    Hold {
        /// The holder's API socket.
        #[arg(long, default_value = "/var/lib/aqueduct-spoke/holder.sock")]
        socket: PathBuf,
        /// The spoke's data directory (its chunk store), read directly; leave out for a spoke
        /// that keeps chunks in memory only.
        #[arg(long)]
        store: Option<PathBuf>,
        /// The spoke's local API socket.
        #[arg(long, env = "AQUEDUCT_SPOKE_SOCKET", default_value = "/var/lib/aqueduct-spoke/spoke.sock")]
        spoke_socket: PathBuf,
        /// Memory for recently read chunks, shared by every mount.
        #[arg(long, default_value_t = 256)]
        cache_mib: u64,
        /// How often the mount asks the spoke for the version it follows (and renews its use
        /// of the version shown).
        #[arg(long, default_value_t = 1)]
        follow_every_secs: u64,
        /// Disk for whole copies of mounted files (STORE/files), verified and passed to the
        /// kernel (FUSE passthrough) so that warm reads run at local-file speed; least recently
        /// opened removed past it. 0 turns them off; none without --store.
        #[arg(long, default_value = "16GiB")]
        whole_files: aqueduct_proto::Size,
    },
}

fn main() {
    if let Err(e) = aqueduct_core::edge::init_logging() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Mount { dataset, mountpoint, socket, cache_mib, follow_every_secs, signing_keys, trust } => {
            let trust = trusted_keys(&signing_keys, trust.as_deref())?;
            mount(dataset, mountpoint, socket, cache_mib, Duration::from_secs(follow_every_secs.max(1)), trust).await
        }
        Command::Hold { socket, store, spoke_socket, cache_mib, follow_every_secs, whole_files } => {
            if let Err(missing) = aqueduct_fuse::mount::check_available() {
                bail!("FUSE is not available: {missing}");
            }
            let config = HolderConfig {
                socket,
                store,
                spoke_socket,
                cache_bytes: cache_mib << 20,
                follow_every: Duration::from_secs(follow_every_secs.max(1)),
                whole_files_bytes: whole_files.0,
            };
            let shutdown = tokio_util::sync::CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                aqueduct_core::edge::interrupted().await;
                info!("stopping: unmounting everything");
                stop.cancel();
            });
            aqueduct_fuse::holder::run(config, shutdown).await?;
            Ok(())
        }
    }
}

/// The keys of --signing-key and --trust; at least one.
fn trusted_keys(keys: &[String], file: Option<&std::path::Path>) -> anyhow::Result<TrustedKeys> {
    let mut trusted = Vec::new();
    for k in keys.iter().filter(|k| !k.trim().is_empty()) {
        trusted.push(k.parse::<aqueduct_core::signing::PublicKey>().with_context(|| format!("--signing-key {k}"))?);
    }
    if let Some(file) = file {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read --trust {}", file.display()))?;
        trusted.extend(
            aqueduct_core::signing::parse_public_keys(&text).with_context(|| format!("--trust {}", file.display()))?,
        );
    }
    if trusted.is_empty() {
        bail!(
            "no hub signing key is trusted: pass --signing-key ed25519:... or --trust FILE (`aqueduct-hub signing-key show` prints the hub's keys)"
        );
    }
    Ok(TrustedKeys::new(trusted))
}

async fn mount(
    dataset: MountRef,
    mountpoint: PathBuf,
    socket: PathBuf,
    cache_mib: u64,
    follow_every: Duration,
    trust: TrustedKeys,
) -> anyhow::Result<()> {
    if !mountpoint.is_dir() {
        bail!("mountpoint {} does not exist or is not a directory; create it first", mountpoint.display());
    }
    if let Err(missing) = aqueduct_fuse::mount::check_available() {
        bail!("FUSE is not available: {missing}");
    }
    let mut client = aqueduct_fuse::remote::client(&socket)?;
    // Who this mount is, for the spoke's count of what is in use (it reports it to the hub,
    // which then keeps the version): the pod (its host name) and the mountpoint.
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_default();
    let user = format!("sidecar {host}:{}", mountpoint.display());
    let manifest =
        aqueduct_fuse::remote::resolve(&mut client, &dataset.dataset, &dataset.follows, None, &user, Some(&trust))
            .await
            .with_context(|| {
                format!(
                    "cannot resolve {dataset} through the spoke at {} (is `aqueduct-spoke run` up?)",
                    socket.display()
                )
            })?
            .context("the spoke sent no manifest")?;
    let cache = ChunkCache::new(cache_mib << 20);
    let fs = {
        let client = client.clone();
        move |manifest: Manifest| {
            let source =
                RemoteSource { client: client.clone(), dataset: manifest.dataset.clone(), version: manifest.version };
            VersionFs::new(manifest, Arc::new(source), cache.clone())
        }
    };
    let shown = manifest.version;
    let view = Arc::new(View::new(fs(manifest)));
    let mounted = aqueduct_fuse::mount::mount(view, &mountpoint, tokio::runtime::Handle::current())
        .with_context(|| format!("cannot mount at {}", mountpoint.display()))?;
    let mounted = Arc::new(mounted);
    info!(%dataset, version = shown, mountpoint = %mountpoint.display(), "mounted");
    println!("{}@v{shown} mounted at {}", dataset.dataset, mountpoint.display());
    // Also for a fixed version: each call renews the spoke's lease on the version shown.
    let follows = dataset.follows.clone();
    let follower = tokio::spawn(aqueduct_fuse::remote::follow(
        mounted.clone(),
        follows,
        user,
        Some(Arc::new(trust)),
        client.clone(),
        follow_every,
        fs,
    ));
    aqueduct_core::edge::interrupted().await;
    follower.abort();
    let m = mounted.clone();
    tokio::task::spawn_blocking(move || m.unmount(true)).await??;
    info!(mountpoint = %mountpoint.display(), "unmounted");
    Ok(())
}
