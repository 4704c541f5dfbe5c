//! Finding the hub and the certificate to present, connecting, and turning transport
//! failures into messages that say what to do.
//!
//! Several hubs may serve one state: `--hub https://a:7443,https://b:7443` (or `AQ_HUB`, or
//! `hub = [...]` in aq.toml) names them in the order they are tried. [`HubConn::connect`] takes
//! the first that accepts a connection (TCP and the TLS handshake); every call of the command
//! then goes to that hub. Only a hub that could not be connected to is passed over: a call the
//! hub answered, with an error or not, is never sent again to another (an admin call must not
//! run twice). `-v` says on stderr which hub answered and why the ones before it did not.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use clap::Args;
use serde::Deserialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Args)]
pub struct ConnArgs {
    /// Connection config written by `aqueduct-hub init` (DATA_DIR/admin/aq.toml).
    /// Default: ~/.config/aqueduct/aq.toml if it exists.
    #[arg(long, global = true, env = "AQ_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Hub address, e.g. https://hub.example:7443, or several hubs serving one state,
    /// comma-separated (https://a:7443,https://b:7443), tried in that order until one accepts
    /// the connection (overrides the config).
    #[arg(long, global = true, env = "AQ_HUB", value_name = "URL[,URL...]")]
    hub: Option<String>,
    /// CA certificate of the hub (overrides the config).
    #[arg(long, global = true, env = "AQ_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Admin client certificate (overrides the config).
    #[arg(long, global = true, env = "AQ_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Admin client key (overrides the config).
    #[arg(long, global = true, env = "AQ_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// Say on stderr which hub answered (and why the hubs before it in --hub did not).
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    hub: Option<Hubs>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// `hub` in aq.toml: one address, or a list of them in the order they are tried.
#[derive(Deserialize)]
#[serde(untagged)]
enum Hubs {
    One(String),
    Many(Vec<String>),
}

impl Hubs {
    fn into_list(self) -> Vec<String> {
        match self {
            Hubs::One(one) => vec![one],
            Hubs::Many(many) => many,
        }
    }
}

/// `--hub`'s value: addresses separated by commas (spaces around them ignored).
fn split_hubs(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Where the hub is and how to prove who we are.
pub struct HubConn {
    /// The hub this talks to: the one that accepted the connection ([`HubConn::connect`]); the
    /// first of `hubs` until then.
    pub url: String,
    /// Every hub given, in the order they are tried.
    pub hubs: Vec<String>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where the settings came from, for messages.
    pub origin: String,
    /// Say which hub answered, on stderr.
    pub verbose: bool,
}

impl ConnArgs {
    pub fn resolve(&self) -> Result<HubConn> {
        let default = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/aqueduct/aq.toml"));
        let file = match (&self.config, default) {
            (Some(path), _) => Some(path.clone()),
            (None, Some(path)) if path.exists() => Some(path),
            _ => None,
        };
        let (mut cfg, origin) = match &file {
            Some(path) => (load(path)?, format!("{}", path.display())),
            None => (FileConfig { hub: None, ca: None, cert: None, key: None }, "flags".to_string()),
        };
        if let Some(hub) = &self.hub {
            cfg.hub = Some(Hubs::Many(split_hubs(hub)));
        }
        let hubs = cfg.hub.take().map(Hubs::into_list).filter(|l| !l.is_empty());
        for (flag, slot) in [(&self.ca, &mut cfg.ca), (&self.cert, &mut cfg.cert), (&self.key, &mut cfg.key)] {
            if flag.is_some() {
                slot.clone_from(flag);
            }
        }
        let (Some(hubs), Some(ca), Some(cert), Some(key)) = (&hubs, &cfg.ca, &cfg.cert, &cfg.key) else {
            let missing: Vec<&str> = [
                ("--hub", hubs.is_none()),
                ("--ca", cfg.ca.is_none()),
                ("--cert", cfg.cert.is_none()),
                ("--key", cfg.key.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, missing)| missing.then_some(name))
            .collect();
            bail!(
                "no hub to talk to: {} not set. Point aq at the config `aqueduct-hub init` wrote with \
                 --config DATA_DIR/admin/aq.toml or AQ_CONFIG=DATA_DIR/admin/aq.toml (or copy it to \
                 ~/.config/aqueduct/aq.toml), or give --hub, --ca, --cert and --key",
                missing.join(", ")
            );
        };
        Ok(HubConn {
            url: hubs[0].clone(),
            hubs: hubs.clone(),
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            origin,
            verbose: self.verbose,
        })
    }
}

fn load(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read aq config {}", path.display()))?;
    parse(&text, path)
}

/// The config in `text`, read from `path` (relative paths in it are relative to the file).
fn parse(text: &str, path: &Path) -> Result<FileConfig> {
    let mut cfg: FileConfig =
        toml::from_str(text).with_context(|| format!("aq config {} is invalid", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for slot in [&mut cfg.ca, &mut cfg.cert, &mut cfg.key] {
        if let Some(p) = slot.as_mut()
            && p.is_relative()
        {
            *p = dir.join(&*p);
        }
    }
    Ok(cfg)
}

impl HubConn {
    /// Connects to the first hub of [`HubConn::hubs`] that accepts a connection, which every
    /// call then goes to ([`HubConn::url`] says which). A hub is passed over only when it could
    /// not be connected to; the error names each hub tried when none could.
    pub async fn connect(&mut self) -> Result<AdminClient<Channel>> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path)
                .with_context(|| format!("cannot read the {what} {} (from {})", path.display(), self.origin))
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("CA certificate", &self.ca)?))
            .identity(Identity::from_pem(read("client certificate", &self.cert)?, read("client key", &self.key)?));
        let mut endpoints = Vec::new();
        for url in &self.hubs {
            if !url.starts_with("https://") {
                bail!(
                    "hub address {url:?} must start with https:// (the hub speaks only mutual TLS); it comes from {}",
                    self.origin
                );
            }
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| anyhow!("hub address {url:?} is not a URL ({e}); write https://HOST:PORT"))?
                .tls_config(tls.clone())
                .map_err(|e| anyhow!("cannot use the TLS files from {}: {e}", self.origin))?
                .connect_timeout(Duration::from_secs(5));
            endpoints.push((url.clone(), endpoint));
        }
        let mut passed: Vec<(String, String)> = Vec::new();
        for (url, endpoint) in endpoints {
            match endpoint.connect().await {
                Ok(channel) => {
                    if self.verbose {
                        for (hub, why) in &passed {
                            eprintln!("hub {hub} not reached: {why}");
                        }
                        eprintln!("hub {url} answered");
                    }
                    self.url = url;
                    // Answers go up to a manifest; requests are small (the hub takes at most so much).
                    return Ok(AdminClient::new(channel)
                        .max_decoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES));
                }
                Err(e) => passed.push((url, chain(&e))),
            }
        }
        match passed.as_slice() {
            [(url, detail)] => Err(self.transport_error_at(url, detail)),
            _ => {
                let each: Vec<String> =
                    passed.iter().map(|(url, detail)| format!("{:#}", self.transport_error_at(url, detail))).collect();
                Err(anyhow!("no hub of {} could be reached:\n  {}", self.origin, each.join("\n  ")))
            }
        }
    }

    fn transport_error(&self, detail: &str) -> anyhow::Error {
        self.transport_error_at(&self.url, detail)
    }

    /// What a transport failure talking to the hub at `url` means, and what to do.
    fn transport_error_at(&self, url: &str, detail: &str) -> anyhow::Error {
        let lower = detail.to_ascii_lowercase();
        if lower.contains("connection refused") || lower.contains("timed out") || lower.contains("dns") {
            anyhow!(
                "cannot reach the hub at {} ({detail}); is `aqueduct-hub serve` running there? \
                 The address comes from {}",
                url,
                self.origin
            )
        } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
            anyhow!(
                "the hub's certificate is not valid for the name in {} ({detail}); reach the hub by a \
                 name it was created with (`aqueduct-hub init --host NAME`), e.g. 127.0.0.1",
                url
            )
        } else if lower.contains("unknownissuer")
            || lower.contains("badsignature")
            || lower.contains("invalid peer certificate")
        {
            anyhow!(
                "the hub at {} presented a certificate not issued by the CA in {} ({detail}); \
                 use the admin bundle of this hub",
                url,
                self.ca.display()
            )
        } else if lower.contains("certificate") || lower.contains("alert") || lower.contains("handshake") {
            anyhow!(
                "the hub at {} refused this client's certificate {} ({detail}); use the admin \
                 bundle that `aqueduct-hub init` wrote for this hub",
                url,
                self.cert.display()
            )
        } else if lower.contains("closed")
            || lower.contains("reset")
            || lower.contains("broken pipe")
            || lower.contains("canceled")
        {
            // With TLS 1.3 a server rejects a client certificate after the handshake, so the
            // client often sees only a closed connection.
            anyhow!(
                "the hub at {} closed the connection ({detail}); it does so when the client's \
                 certificate {} was not issued by its CA: use the admin bundle that \
                 `aqueduct-hub init` wrote for this hub (or check that the hub is still running)",
                url,
                self.cert.display()
            )
        } else {
            anyhow!("cannot talk to the hub at {}: {detail}", url)
        }
    }
}

/// An error and all its sources, joined.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Turns a failed call into a message: the hub's own message for answers it gave, an
/// explanation of the connection problem otherwise.
pub fn explain(status: tonic::Status, hub: &HubConn) -> anyhow::Error {
    match status.code() {
        // Statuses made by the client's transport carry the error underneath; the hub's own
        // answers do not.
        _ if let Some(source) = std::error::Error::source(&status) => hub.transport_error(&chain(source)),
        _ => anyhow!("{}", status.message()),
    }
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz::{self, Kind};
    use proptest::prelude::*;

    use super::*;

    const VALID: &str =
        "hub = \"https://127.0.0.1:7443\"\nca = \"ca.pem\"\ncert = \"admin.pem\"\nkey = \"admin.key\"\n";
    const KEYS: &[fuzz::Key] = &[
        ("hub", Kind::Text, false),
        ("ca", Kind::Text, false),
        ("cert", Kind::Text, false),
        ("key", Kind::Text, false),
    ];

    #[test]
    fn the_config_init_writes_parses_with_paths_beside_it() {
        let cfg = parse(VALID, Path::new("/data/admin/aq.toml")).unwrap();
        assert_eq!(cfg.ca.as_deref(), Some(Path::new("/data/admin/ca.pem")));
    }

    #[test]
    fn hub_is_one_address_or_a_list_in_the_order_tried() {
        let list = "hub = [\"https://b:7443\", \"https://a:7443\"]\nca = \"ca.pem\"\ncert = \"admin.pem\"\nkey = \"admin.key\"\n";
        let hubs = parse(list, Path::new("/data/admin/aq.toml")).unwrap().hub.unwrap().into_list();
        assert_eq!(hubs, ["https://b:7443", "https://a:7443"]);
        let one = parse(VALID, Path::new("aq.toml")).unwrap().hub.unwrap().into_list();
        assert_eq!(one, ["https://127.0.0.1:7443"]);
        assert_eq!(split_hubs("https://a:1, https://b:2,,"), ["https://a:1", "https://b:2"]);
        assert_eq!(split_hubs("https://a:1"), ["https://a:1"]);
    }

    proptest! {
        #![proptest_config(fuzz::config(3000))]

        #[test]
        fn fuzz_aq_config_from_any_toml(text in prop_oneof![fuzz::toml_document(&["hub", "ca", "cert", "key"]), "(?s).{0,64}"]) {
            if let Ok(cfg) = parse(&text, Path::new("/data/admin/aq.toml")) {
                for path in [&cfg.ca, &cfg.cert, &cfg.key].into_iter().flatten() {
                    prop_assert!(path.is_absolute(), "{}", path.display());
                }
            }
        }

        #[test]
        fn fuzz_aq_config_errors_name_the_key((text, key) in fuzz::broken_config(VALID, KEYS)) {
            let err = format!("{:#}", parse(&text, Path::new("aq.toml")).map(|_| ()).unwrap_err());
            prop_assert!(fuzz::names_key(&err, &key), "{} is not named in: {}\n{}", key, err, text);
        }
    }
}
