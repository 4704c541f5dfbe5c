//! `aq-quickstart`: Aqueduct's main job on one machine, with embedded defaults and nothing to
//! set up. What it does is in [`quickstart`]; this parses its three flags.

mod quickstart;

use clap::Parser;

/// Run the main job on this machine with embedded defaults: a sample model, a hub, two regions
/// with different link budgets, two versions rolled out, every byte verified, then one region's
/// view mounted with FUSE and every file read through it and verified. Needs no hub, flags or
/// config; cleans up after itself. The FUSE step needs /dev/fuse and root (or the fuse3
/// package).
#[derive(Parser)]
#[command(name = "aq-quickstart", version)]
struct Cli {
    /// Size of the sample model's tensor data, MiB.
    #[arg(long, default_value_t = 256)]
    model_mib: usize,
    /// Keep the temporary directory (hub, stores, logs) instead of removing it.
    #[arg(long)]
    keep: bool,
    /// Skip the FUSE step (for machines without FUSE).
    #[arg(long)]
    no_fuse: bool,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = quickstart::run(cli.model_mib, cli.keep, !cli.no_fuse).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
