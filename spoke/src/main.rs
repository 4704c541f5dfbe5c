//! `aqueduct-spoke`: the regional agent.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "aqueduct-spoke",
    version,
    about = "Aqueduct's regional agent: replicates rolled-out versions into a verified chunk store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the hub and replicate what is rolled out to this region, until interrupted.
    Run {
        /// Spoke configuration file (TOML; see deploy/spoke/spoke.example.toml).
        #[arg(long, env = "AQUEDUCT_SPOKE_CONFIG")]
        config: PathBuf,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AQUEDUCT_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run { config } => {
            let config = aqueduct_spoke::SpokeConfig::load(&config)?;
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                trigger.cancel();
            });
            aqueduct_spoke::run(config, shutdown).await?;
        }
    }
    Ok(())
}
