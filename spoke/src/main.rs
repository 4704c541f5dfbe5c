//! `aqueduct-spoke`: the regional agent, and the commands that drive its mounts.

use std::path::PathBuf;

use anyhow::Context;
use aqueduct_proto::selector::MountRef;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_proto::spoke::v1::local_client::LocalClient;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "aqueduct-spoke",
    version,
    about = "Aqueduct's regional agent: replicates rolled-out versions into a verified chunk store and hosts read-only FUSE mounts of them",
    after_help = aqueduct_core::edge::LOG_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the hub, replicate what is rolled out to this region and drive the node's
    /// mounts, until interrupted (the node's FUSE holder serves the mounts, and keeps them when
    /// the spoke stops; see [mounts] in the config).
    Run {
        /// Spoke configuration file (TOML; see deploy/spoke/spoke.example.toml).
        #[arg(long, env = "AQUEDUCT_SPOKE_CONFIG")]
        config: PathBuf,
        /// This node's name, instead of the config's `node` (which may then be left out). In
        /// Kubernetes the chart sets AQUEDUCT_NODE to the pod's spec.nodeName. Unique among the
        /// region's live spokes: the hub refuses a name another live spoke holds (this spoke
        /// then retries every few seconds and says why in its log).
        #[arg(long, env = "AQUEDUCT_NODE", value_name = "NAME")]
        node: Option<String>,
        /// HOST:PORT the region's other spokes reach this one at, instead of the config's
        /// `[peer] advertise` (the config needs a [peer] section). In Kubernetes the chart sets
        /// AQUEDUCT_PEER_ADVERTISE to the pod's IP and the peer port.
        #[arg(long, env = "AQUEDUCT_PEER_ADVERTISE", value_name = "HOST:PORT")]
        advertise: Option<String>,
        /// The hub's https://HOST:PORT, or several hubs serving one state, comma-separated
        /// (https://a:7443,https://b:7443), instead of the config's `hub`: tried in that order;
        /// the spoke uses the first that answers and goes on with the next when it is lost.
        #[arg(long, env = "AQUEDUCT_HUB", value_name = "URL[,URL...]", value_delimiter = ',')]
        hub: Option<Vec<String>>,
    },
    /// Mount a dataset read-only through the running spoke. DATASET follows the region's
    /// active version (open files keep theirs when it changes); DATASET@TAG follows a tag
    /// (e.g. llama@stable: the version it names, once that is Ready in the region); DATASET@vN
    /// stays on vN and can be read before vN is fully replicated (misses are fetched on
    /// demand).
    Mount {
        /// DATASET, DATASET@TAG or DATASET@vN.
        dataset: MountRef,
        /// An existing directory.
        mountpoint: PathBuf,
        #[command(flatten)]
        socket: Socket,
    },
    /// Unmount a mount of the running spoke (fails while files under it are open).
    Unmount {
        mountpoint: PathBuf,
        #[command(flatten)]
        socket: Socket,
    },
    /// List the running spoke's mounts.
    Mounts {
        #[command(flatten)]
        socket: Socket,
    },
}

#[derive(Args)]
struct Socket {
    /// The running spoke's local API socket (its config's `socket`, default DATA_DIR/spoke.sock).
    #[arg(long, env = "AQUEDUCT_SPOKE_SOCKET", default_value = "/var/lib/aqueduct-spoke/spoke.sock")]
    socket: PathBuf,
}

impl Socket {
    async fn connect(&self) -> anyhow::Result<LocalClient<Channel>> {
        let channel = tonic::transport::Endpoint::from_shared(format!("unix://{}", self.socket.display()))?
            .connect()
            .await
            .with_context(|| {
                format!(
                    "no spoke answers on {}; start it with `aqueduct-spoke run --config FILE`, or pass --socket",
                    self.socket.display()
                )
            })?;
        Ok(LocalClient::new(channel))
    }
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

fn absolute(path: PathBuf) -> anyhow::Result<PathBuf> {
    std::path::absolute(&path).with_context(|| format!("cannot make {} absolute", path.display()))
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run { config, node, advertise, hub } => {
            let hub =
                hub.map(|list| list.into_iter().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect());
            let overrides = aqueduct_spoke::Overrides { node, advertise, hub };
            let config = aqueduct_spoke::SpokeConfig::load_with(&config, &overrides)?;
            // The connection caps of `[limits]`, not the descriptor limit, are what binds.
            let _ = aqueduct_core::edge::raise_open_file_limit();
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                aqueduct_core::edge::interrupted().await;
                trigger.cancel();
            });
            aqueduct_spoke::run(config, shutdown).await?;
        }
        Command::Mount { dataset, mountpoint, socket } => {
            let (version, tag) = dataset.follows.to_wire();
            let request = local::MountRequest {
                dataset: dataset.dataset.clone(),
                version,
                tag,
                mountpoint: absolute(mountpoint)?.display().to_string(),
            };
            let info = socket.connect().await?.mount(request).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            let info = info.into_inner();
            let follow = match (info.follow, info.tag.as_str()) {
                (false, _) => String::new(),
                (true, "") => " (following the active version)".to_string(),
                (true, tag) => format!(" (following tag {tag})"),
            };
            println!("{}@v{} mounted at {}{follow}", info.dataset, info.version, info.mountpoint);
        }
        Command::Unmount { mountpoint, socket } => {
            let mountpoint = absolute(mountpoint)?.display().to_string();
            socket
                .connect()
                .await?
                .unmount(local::UnmountRequest { mountpoint: mountpoint.clone() })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            println!("unmounted {mountpoint}");
        }
        Command::Mounts { socket } => {
            let mounts = socket
                .connect()
                .await?
                .list_mounts(local::ListMountsRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner()
                .mounts;
            println!("{:<40} {:<24} {:<8} FOLLOW", "MOUNTPOINT", "DATASET", "VERSION");
            for m in mounts {
                let follow = match (m.follow, m.tag.as_str()) {
                    (false, _) => "-".to_string(),
                    (true, "") => "active".to_string(),
                    (true, tag) => format!("tag {tag}"),
                };
                println!("{:<40} {:<24} {:<8} {follow}", m.mountpoint, m.dataset, format!("v{}", m.version));
            }
        }
    }
    Ok(())
}
