//! `aqueduct-fuse`: mounts a dataset version through a spoke's local API, for pods that cannot
//! use the spoke's CSI node plugin (a sidecar sharing the mount with the app container).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use aqueduct_fuse::fs::{ChunkCache, VersionFs};
use aqueduct_fuse::remote::RemoteSource;
use aqueduct_fuse::view::View;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_proto::spoke::v1::local_client::LocalClient;
use aqueduct_proto::{Digest, Manifest, VersionRef};
use clap::{Parser, Subcommand};
use tonic::transport::Channel;
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "aqueduct-fuse",
    version,
    about = "Mounts an Aqueduct dataset version read-only through a spoke (sidecar mode)",
    after_help = aqueduct_core::edge::LOG_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount DATASET (following the region's active version) or DATASET@vN at MOUNTPOINT and
    /// serve it until interrupted (SIGTERM or Ctrl-C), then unmount.
    Mount {
        /// DATASET or DATASET@vN.
        dataset: VersionRef,
        /// An existing directory.
        mountpoint: PathBuf,
        /// The spoke's local API socket.
        #[arg(long, env = "AQUEDUCT_SPOKE_SOCKET", default_value = "/var/lib/aqueduct-spoke/spoke.sock")]
        socket: PathBuf,
        /// Memory for recently read chunks.
        #[arg(long, default_value_t = 256)]
        cache_mib: u64,
        /// How often a following mount asks the spoke for the active version.
        #[arg(long, default_value_t = 2)]
        follow_every_secs: u64,
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

/// The manifest `dataset@version` means at the spoke, or `None` if it is the one whose root
/// is `known` (the one shown).
async fn resolve(
    client: &mut LocalClient<Channel>,
    dataset: &str,
    version: u64,
    known: Option<Digest>,
) -> anyhow::Result<Option<Manifest>> {
    let known_root = known.map(|d| d.0.to_vec()).unwrap_or_default();
    let response = client
        .resolve(local::ResolveRequest { dataset: dataset.to_string(), version, known_root })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    Ok(response.manifest.map(Manifest::try_from).transpose()?)
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let Command::Mount { dataset, mountpoint, socket, cache_mib, follow_every_secs } = Cli::parse().command;
    if !mountpoint.is_dir() {
        bail!("mountpoint {} does not exist or is not a directory; create it first", mountpoint.display());
    }
    if let Err(missing) = aqueduct_fuse::mount::check_available() {
        bail!("FUSE is not available: {missing}");
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))?.connect_lazy();
    // Manifests (the largest message) and chunks come back; requests are small.
    let mut client = LocalClient::new(channel)
        .max_decoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES);
    let wanted = dataset.version.unwrap_or(0);
    let manifest = resolve(&mut client, &dataset.dataset, wanted, None)
        .await
        .with_context(|| {
            format!("cannot resolve {dataset} through the spoke at {} (is `aqueduct-spoke run` up?)", socket.display())
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

    let follower = (wanted == 0).then(|| {
        let (mounted, mut client, name) = (mounted.clone(), client.clone(), dataset.dataset.clone());
        tokio::spawn(async move {
            let mut complained = false;
            loop {
                tokio::time::sleep(Duration::from_secs(follow_every_secs.max(1))).await;
                let shown = mounted.view().current().manifest().root;
                match resolve(&mut client, &name, 0, Some(shown)).await {
                    Ok(None) => complained = false,
                    Ok(Some(manifest)) => {
                        complained = false;
                        let version = manifest.version;
                        let (m, next) = (mounted.clone(), fs(manifest));
                        if tokio::task::spawn_blocking(move || m.switch(next)).await.unwrap_or(false) {
                            info!(dataset = %name, version, "switched to the active version");
                        }
                    }
                    Err(e) if !complained => {
                        warn!(dataset = %name, error = %e, "cannot ask the spoke for the active version; keeping this one");
                        complained = true;
                    }
                    Err(_) => {}
                }
            }
        })
    });
    aqueduct_core::edge::interrupted().await;
    if let Some(f) = follower {
        f.abort();
    }
    let m = mounted.clone();
    tokio::task::spawn_blocking(move || m.unmount(true)).await??;
    info!(mountpoint = %mountpoint.display(), "unmounted");
    Ok(())
}
