//! `aq region token`: a bootstrap token with which a region's spokes enrol (each gets a
//! certificate of its own node; the key never leaves the node). The token is printed once
//! (the hub keeps only its hash): alone on stdout by default, so that it can go straight into
//! a Kubernetes Secret, or as JSON or YAML with its region, expiry and uses (`-o`).

use anyhow::{Result, bail};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use clap::Args;
use tonic::transport::Channel;

use crate::connect::{HubConn, explain};

/// `aq region token REGION [--ttl 1h] [--uses 1] [-o json]`.
#[derive(Args)]
pub struct TokenArgs {
    /// The region whose spokes enrol with it.
    pub region: String,
    /// How long it may be used, e.g. 1h, 30m, 24h (at most 720h).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: std::time::Duration,
    /// How many spokes may enrol with it. 1 by default (one node); for a DaemonSet whose nodes
    /// share one Secret, the number of nodes it will start (and a short --ttl).
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// Output: text (the token alone on stdout, what it allows on stderr), json or yaml.
    #[arg(short = 'o', long = "output", value_name = "text|json|yaml", default_value = "text")]
    pub output: String,
}

fn parse_ttl(text: &str) -> Result<std::time::Duration, String> {
    aqueduct_proto::parse_duration(text).map_err(|e| e.to_string())
}

/// What `-o json|yaml` prints.
#[derive(serde::Serialize)]
struct Shown<'a> {
    token: &'a str,
    region: &'a str,
    expires_unix_ms: i64,
    uses: u32,
}

pub async fn token(admin: &mut AdminClient<Channel>, hub: &HubConn, args: TokenArgs) -> Result<()> {
    if !["text", "json", "yaml"].contains(&args.output.as_str()) {
        bail!("-o {} is not an output of `aq region token`: use text, json or yaml", args.output);
    }
    if args.ttl.as_secs() == 0 {
        bail!("--ttl must be at least 1s, e.g. 1h");
    }
    let request =
        pb::CreateEnrolTokenRequest { region: args.region.clone(), ttl_seconds: args.ttl.as_secs(), uses: args.uses };
    let made = admin.create_enrol_token(request).await.map_err(|e| explain(e, hub))?.into_inner();
    let shown =
        Shown { token: &made.token, region: &made.region, expires_unix_ms: made.expires_unix_ms, uses: made.uses };
    match args.output.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&shown)?),
        "yaml" => print!("{}", serde_saphyr::to_string(&shown)?),
        _ => {
            println!("{}", made.token);
            eprintln!(
                "a token for region {} with {} use(s), valid for {}; shown once (the hub keeps only its hash). \
                 Give it to the spokes in a file (`[enrol] token_file`), e.g. \
                 kubectl create secret generic aqueduct-enrol --from-literal=token=TOKEN",
                made.region,
                made.uses,
                aqueduct_proto::format_duration(args.ttl)
            );
        }
    }
    Ok(())
}
