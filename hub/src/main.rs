//! `aqueduct-hub`: create a hub (`init`), run it (`serve`), and show or make its signing keys
//! (`signing-key show|new`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use aqueduct_hub::config::HubConfig;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "aqueduct-hub",
    version,
    about = "Aqueduct's on-prem control plane: sources, datasets, versioned manifests",
    after_help = aqueduct_core::edge::LOG_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a hub: CA, hub and admin certificates, database and hub.toml in DATA_DIR.
    ///
    /// hub.toml is written last: a directory that holds it is a hub, and init refuses it. An
    /// init cut short (a crash, a full disk) is completed by running it again; a CA it already
    /// wrote is kept.
    Init {
        /// Directory for the hub's database, PKI and admin bundle (created if missing).
        #[arg(long, env = "AQUEDUCT_HUB_DATA_DIR", default_value = "/var/lib/aqueduct-hub")]
        data_dir: PathBuf,
        /// Address the API will listen on (written to hub.toml).
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// Extra DNS name or IP address clients use to reach the hub (repeatable); the hub's
        /// certificate is valid for these, localhost and 127.0.0.1.
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
    /// Run the hub's API until interrupted (SIGINT or SIGTERM).
    Serve {
        /// Hub configuration file (written by init as DATA_DIR/hub.toml).
        #[arg(long, env = "AQUEDUCT_HUB_CONFIG", default_value = "/var/lib/aqueduct-hub/hub.toml")]
        config: PathBuf,
        /// Listen on this address instead of the config's `listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// The keys that sign versions: print the public ones, or make a new one (rotation).
    #[command(subcommand)]
    SigningKey(SigningKeyCommand),
}

#[derive(Subcommand)]
enum SigningKeyCommand {
    /// Print the public keys spokes should trust, as a trust file: the key that signs new
    /// versions ([signing] key), then the other keys beside it.
    Show {
        /// Hub configuration file.
        #[arg(long, env = "AQUEDUCT_HUB_CONFIG", default_value = "/var/lib/aqueduct-hub/hub.toml")]
        config: PathBuf,
    },
    /// Make a new signing key beside the current one (DIR/KEYID.key, mode 0600) and say how to
    /// switch to it. The hub keeps signing with the current key until hub.toml names the new
    /// one; versions signed before keep their signatures.
    New {
        /// Hub configuration file.
        #[arg(long, env = "AQUEDUCT_HUB_CONFIG", default_value = "/var/lib/aqueduct-hub/hub.toml")]
        config: PathBuf,
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
        Command::Init { data_dir, listen, hosts } => {
            let out = aqueduct_hub::init(&data_dir, listen, &hosts)?;
            println!("hub created in {}", data_dir.display());
            println!("  start it:   aqueduct-hub serve --config {}", out.config_path.display());
            println!("  use it:     export AQ_CONFIG={}", out.admin_config_path.display());
            println!(
                "  trust it:   {} holds the public key that signs versions: spokes trust it in [trust]",
                data_dir.join("signing/hub.pub").display()
            );
            println!("The admin bundle (admin/) holds the key to the hub's admin API: keep it private.");
        }
        Command::Serve { config, listen } => {
            let mut config = HubConfig::load(&config)?;
            // The connection caps of `[limits]`, not the descriptor limit, are what binds.
            let _ = aqueduct_core::edge::raise_open_file_limit();
            if let Some(listen) = listen {
                config.listen = listen;
            }
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                aqueduct_core::edge::interrupted().await;
                trigger.cancel();
            });
            aqueduct_hub::serve(config, listener, shutdown).await?;
        }
        Command::SigningKey(SigningKeyCommand::Show { config }) => {
            let config = HubConfig::load(&config)?;
            let signer = aqueduct_hub::signing::Signer::open(&config.resolve(&config.signing.key))?;
            print!("{}", signer.trust_file());
        }
        Command::SigningKey(SigningKeyCommand::New { config: path }) => {
            let config = HubConfig::load(&path)?;
            let (new, key) = aqueduct_hub::signing::new_key_beside(&config.resolve(&config.signing.key))?;
            println!("made signing key {} in {}", key.id(), new.display());
            println!("  public key: {}", key.public());
            println!("1. add it to every spoke's and sidecar's [trust] signing_keys (keep the current key there);");
            println!("   `aqueduct-hub signing-key show` prints both; new region bundles carry both");
            println!("2. set [signing] key = {:?} in {} and restart the hub:", new.display(), path.display());
            println!("   new versions are signed with it, versions signed before keep their signatures");
            println!("3. once no spoke serves a version signed by the old key, remove the old key from the spokes");
        }
    }
    Ok(())
}
