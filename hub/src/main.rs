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
        /// Where to write the root CA's key (default: DATA_DIR/keep-offline/root-ca.key). The
        /// hub never reads it: it issues with an intermediate the root signs. Keep it offline;
        /// it is needed again only to rotate that intermediate (`aqueduct-hub issuer rotate`).
        #[arg(long, value_name = "FILE")]
        root_key_out: Option<PathBuf>,
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
    /// The issuing CA (the intermediate the root signed, whose key the hub issues with).
    #[command(subcommand)]
    Issuer(IssuerCommand),
    /// Issue a hub server certificate from this hub's issuing CA: for another hub that serves
    /// the same state (it shares this hub's CA, signing keys and database), or for this hub
    /// with more names. It names exactly the --host names: the address spokes and aq reach
    /// that hub at, and a service name all the hubs share if they have one. Writes
    /// OUT/hub.pem (the chain) and OUT/hub.key (mode 0600); that hub's [tls] cert and key.
    Certificate {
        /// The configuration of the hub whose CA issues it (DATA_DIR/hub.toml).
        #[arg(long, env = "AQUEDUCT_HUB_CONFIG", default_value = "/var/lib/aqueduct-hub/hub.toml")]
        config: PathBuf,
        /// A DNS name or IP address the certificate is valid for (repeatable; at least one),
        /// e.g. --host hub-b.dc1.example --host 10.0.0.12 --host hub.aqueduct.internal.
        #[arg(long = "host", value_name = "NAME", required = true)]
        hosts: Vec<String>,
        /// Directory for hub.pem and hub.key (created; files there are never replaced).
        #[arg(long)]
        out: PathBuf,
    },
    /// Copy the hub (a consistent snapshot of its database, its PKI, admin bundle and config)
    /// into a new directory, while it runs. The root CA's key is never copied.
    Backup {
        #[arg(long, env = "AQUEDUCT_HUB_CONFIG", default_value = "/var/lib/aqueduct-hub/hub.toml")]
        config: PathBuf,
        /// Directory to write the backup into (new or empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a hub from a backup: every file is checked against the backup's listing first;
    /// DATA_DIR must not hold a hub. The restored hub serves the same versions to the same
    /// identities.
    Restore {
        /// The backup's directory (written by `aqueduct-hub backup`).
        #[arg(long)]
        from: PathBuf,
        /// Directory for the restored hub (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// The keys that sign versions: print the public ones, or make a new one (rotation).
    #[command(subcommand)]
    SigningKey(SigningKeyCommand),
}

#[derive(Subcommand)]
enum IssuerCommand {
    /// Make a new issuing CA with the root's key (brought back from where it is kept for
    /// this), and a new hub certificate from it; hub.toml is switched to them in one write.
    /// Restart the hub afterwards. Certificates the old issuer signed stay valid until they
    /// expire; rotate well before the issuer itself expires (`--days`).
    Rotate {
        #[arg(long, env = "AQUEDUCT_HUB_CONFIG", default_value = "/var/lib/aqueduct-hub/hub.toml")]
        config: PathBuf,
        /// The root CA's key (as `init` wrote it).
        #[arg(long, value_name = "FILE")]
        root_key: PathBuf,
        /// How long the new issuer is valid, in days.
        #[arg(long, default_value_t = aqueduct_hub::pki::ISSUER_DAYS)]
        days: u32,
    },
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
        Command::Init { data_dir, listen, hosts, root_key_out, admin } => {
            let options = aqueduct_hub::InitOptions { admin, root_key_out };
            let out = aqueduct_hub::init_with_options(&data_dir, listen, &hosts, &options)?;
            println!("hub created in {}", data_dir.display());
            println!("  start it:   aqueduct-hub serve --config {}", out.config_path.display());
            println!("  use it:     export AQ_CONFIG={}", out.admin_config_path.display());
            println!(
                "  trust it:   {} holds the public key that signs versions: spokes trust it in [trust]",
                data_dir.join("signing/hub.pub").display()
            );
            println!("The admin bundle (admin/) holds the key to the hub's admin API: keep it private.");
            if let Some(root) = &out.root_key_path {
                println!(
                    "The root CA's key is {}: move it off this machine and keep it safe. The hub does not need it;
                     `aqueduct-hub issuer rotate --root-key FILE` does, to make a new issuing CA.",
                    root.display()
                );
            }
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
        Command::Issuer(IssuerCommand::Rotate { config, root_key, days }) => {
            let out = aqueduct_hub::rotate_issuer(&config, &root_key, days)?;
            println!("new issuing CA: {}", out.issuer.display());
            println!("new hub certificate: {}", out.hub_cert.display());
            println!("{} now names them: restart the hub to take them.", config.display());
            println!("Once it runs, the files it used before may go:");
            for p in &out.previous {
                println!("  {}", p.display());
            }
            println!("Put the root key ({}) back where it is kept.", root_key.display());
        }
        Command::Certificate { config: path, hosts, out } => {
            let config = HubConfig::load(&path)?;
            let issued = aqueduct_hub::siblings::issue_certificate(&config, &hosts, &out)?;
            println!("hub certificate for {} issued by the CA of {}:", issued.names.join(", "), path.display());
            println!("  [tls] cert = {:?}", issued.cert.display().to_string());
            println!("  [tls] key  = {:?}   (keep it private)", issued.key.display().to_string());
            let issuer = config.tls.issuer.as_ref().map(|i| config.resolve(i).display().to_string());
            let signing = config.resolve(&config.signing.key);
            let signing_dir = signing.parent().unwrap_or(std::path::Path::new("."));
            println!(
                "For another hub, copy to it from this one (every hub issues nodes' certificates and signs versions):"
            );
            for file in [Some(config.resolve(&config.tls.ca).display().to_string()), issuer]
                .into_iter()
                .flatten()
                .chain([config.resolve(&config.tls.ca_key).display().to_string()])
            {
                println!("  {file}");
            }
            println!("  {}/ (the signing keys)", signing_dir.display());
            println!(
                "and give it the same [database]; spokes and aq list both hubs. See the README, \"Several hubs\"."
            );
        }
        Command::Backup { config, out } => {
            let made = aqueduct_hub::backup::backup(&config, &out)?;
            println!("backed up {} files into {}", made.files.len(), out.display());
            for (path, why) in &made.skipped {
                println!("  not copied: {} ({why})", path.display());
            }
            println!("Restore with: aqueduct-hub restore --from {} --data-dir DIR", out.display());
        }
        Command::Restore { from, data_dir } => {
            let config = aqueduct_hub::backup::restore(&from, &data_dir)?;
            println!("hub restored into {}", data_dir.display());
            println!("  start it:   aqueduct-hub serve --config {}", config.display());
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
