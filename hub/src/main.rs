//! `aqueduct-hub`: create a hub (`init`) and run it (`serve`).

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
        /// The first admin's name: its certificate (admin/admin.pem) names
        /// spiffe://aqueduct/admin/NAME, and the audit log records its calls under it. More
        /// admins: `aq admin add NAME`.
        #[arg(long, value_name = "NAME", default_value = aqueduct_hub::DEFAULT_ADMIN)]
        admin: String,
    },
    /// Issue an admin bundle on the hub's machine, from its CA key: the way in when no admin
    /// bundle works (every admin revoked or expired, or bundles of the unnamed admin identity
    /// of earlier builds). Online, `aq admin add NAME` does the same.
    AdminBundle {
        /// Hub configuration file (written by init as DATA_DIR/hub.toml).
        #[arg(long, env = "AQUEDUCT_HUB_CONFIG", default_value = "/var/lib/aqueduct-hub/hub.toml")]
        config: PathBuf,
        /// The admin's name (a-z, 0-9, '-', '.', '_'); its calls are audited under it.
        #[arg(long)]
        name: String,
        /// Directory for the bundle (ca.pem, admin.pem, admin.key, aq.toml); created.
        #[arg(long)]
        out: PathBuf,
        /// How long the certificate is valid, e.g. 168h (a week), 12h; default 90 days.
        #[arg(long, value_name = "DURATION", default_value = "2160h", value_parser = aqueduct_proto::parse_duration)]
        valid_for: std::time::Duration,
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
        Command::Init { data_dir, listen, hosts, admin } => {
            let out = aqueduct_hub::init_named(&data_dir, listen, &hosts, &admin)?;
            println!("hub created in {}", data_dir.display());
            println!("  start it:   aqueduct-hub serve --config {}", out.config_path.display());
            println!("  use it:     export AQ_CONFIG={}", out.admin_config_path.display());
            println!("The admin bundle (admin/) holds the key to the hub's admin API: keep it private.");
        }
        Command::AdminBundle { config, name, out, valid_for } => {
            let config = HubConfig::load(&config)?;
            aqueduct_hub::admins::issue_bundle(&config, &name, valid_for, &out)?;
            println!(
                "admin {name}'s bundle written to {} (use it: export AQ_CONFIG={})",
                out.display(),
                out.join("aq.toml").display()
            );
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
    }
    Ok(())
}
