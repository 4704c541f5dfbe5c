//! Enrolment: how a spoke gets the certificate of its node, and keeps it.
//!
//! An admin makes a bootstrap token for a region ([`Token::generate`], `aq region token`): 32
//! random bytes in text, shown once; the hub keeps only its BLAKE3 hash, with the region, an
//! expiry and a number of uses ([`crate::store::enrol`]). A spoke with no valid certificate
//! calls `Enrol` (the one call the hub answers without a client certificate) with the token,
//! its node name and a certificate request made with a key it generated on its node; the hub
//! takes one use of the token, atomically, and signs a certificate for `Node { region, node }`
//! with only the request's public key ([`crate::pki::Authority::sign_node_request`]), valid
//! for `[enrol] node_certificate_lifetime`. A spoke renews with its current certificate
//! (`RenewCertificate` in the spokes' API, [`Issuer::renew`]): same identity, a new key.
//! Refusals say what was wrong and what to do; no token is ever logged.

use std::sync::Arc;
use std::time::Duration;

use aqueduct_proto::hub::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::{Span, info, instrument, warn};

use crate::pki::{Authority, CsrError};
use crate::snapshot::{blocking, now_unix_ms};
use crate::store::MetaStore;
use crate::store::enrol::{TokenRecord, TokenUse};

/// What every token's text starts with (so that a token is recognisable in a file).
pub const TOKEN_PREFIX: &str = "aqt1_";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// The longest a token may be made to last.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most uses a token may be made with.
pub const MAX_TOKEN_USES: u32 = 100_000;

/// A bootstrap token. Secret: its `Debug` shows none of it, and no error quotes it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a text is not a token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "the enrolment token is not one `aq region token` makes (it starts with {TOKEN_PREFIX:?} and has {} hex digits after it; this one {reason}): check the file or Secret it comes from, or make a new one with `aq region token REGION`",
        TOKEN_BYTES * 2
    )]
    Malformed { reason: &'static str },
    #[error("no randomness for a token: {0}")]
    Random(String),
}

impl Token {
    /// A new random token.
    pub fn generate() -> Result<Self, TokenError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self(format!("{TOKEN_PREFIX}{hex}")))
    }

    /// Reads a token as a file or a user gives it (whitespace around it is ignored).
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        let hex = text.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Malformed { reason: "has another start" })?;
        if hex.len() != TOKEN_BYTES * 2 {
            return Err(TokenError::Malformed { reason: "has another length" });
        }
        if !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(TokenError::Malformed { reason: "has characters that are not lower-case hex digits" });
        }
        Ok(Self(text.to_string()))
    }

    /// The token's text (to show once, or send).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the hub keeps of it: its BLAKE3 hash, hex.
    pub fn hash(&self) -> String {
        blake3::hash(self.0.as_bytes()).to_hex().to_string()
    }
}

/// Checks what `aq region token` asks for: `(ttl, uses)` with the defaults (1 h, 1 use).
pub fn token_terms(ttl_seconds: u64, uses: u32) -> Result<(Duration, u32), String> {
    let ttl = if ttl_seconds == 0 { Duration::from_secs(3600) } else { Duration::from_secs(ttl_seconds) };
    if ttl > MAX_TOKEN_TTL {
        return Err(format!(
            "a token may last at most {}h (--ttl); make a new one when it runs out",
            MAX_TOKEN_TTL.as_secs() / 3600
        ));
    }
    let uses = if uses == 0 { 1 } else { uses };
    if uses > MAX_TOKEN_USES {
        return Err(format!("a token may have at most {MAX_TOKEN_USES} uses (--uses)"));
    }
    Ok((ttl, uses))
}

/// What a refused token means for the person who used it.
fn refusal(found: &TokenUse) -> Option<String> {
    Some(match found {
        TokenUse::Taken { .. } => return None,
        TokenUse::Unknown => "the enrolment token is not known to this hub (never made here, or mistyped): \
             make one with `aq region token REGION` and give it to the spoke (`[enrol] token_file`)"
            .to_string(),
        TokenUse::Expired { region, .. } => format!(
            "the enrolment token of region {region} has expired: make a new one with `aq region token {region}` \
             (--ttl for a longer one) and give it to the spoke"
        ),
        TokenUse::UsedUp { region, uses } => format!(
            "the enrolment token of region {region} is used up ({uses} use(s), all taken): make a new one with \
             `aq region token {region}` (--uses N for N nodes) and give it to the spoke"
        ),
        TokenUse::RegionGone { region } => format!(
            "the enrolment token's region {region} was removed from the hub: add it again (`aq region add`) and make a new token"
        ),
    })
}

/// Issues nodes' certificates: for enrolment and renewal.
pub struct Issuer {
    pub db: Arc<dyn MetaStore>,
    pub authority: Arc<Authority>,
    /// `[enrol] node_certificate_lifetime`.
    pub lifetime: Duration,
}

impl Issuer {
    fn certificate(&self, csr_der: &[u8], region: &str, node: &str) -> Result<pb::NodeCertificate, Status> {
        let issued = self.authority.sign_node_request(csr_der, region, node, self.lifetime)?;
        Ok(pb::NodeCertificate {
            cert_pem: issued.cert_pem,
            ca_pem: self.authority.ca_pem().to_string(),
            not_after_unix_ms: issued.not_after_unix_ms,
            region: region.to_string(),
            node: node.to_string(),
        })
    }

    /// A new certificate for the caller's own identity (its current certificate proved it).
    pub fn renew(&self, region: &str, node: &str, csr_der: &[u8]) -> Result<pb::NodeCertificate, Status> {
        let issued = self.certificate(csr_der, region, node)?;
        info!(region, node, not_after_unix_ms = issued.not_after_unix_ms, "renewed a node's certificate");
        Ok(issued)
    }
}

/// Makes a token for `region` (which must exist); returns it with what it allows.
pub async fn make_token(
    db: &Arc<dyn MetaStore>,
    region: &str,
    ttl_seconds: u64,
    uses: u32,
) -> Result<pb::CreateEnrolTokenResponse, Status> {
    aqueduct_proto::validate_name("region", region).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let (ttl, uses) = token_terms(ttl_seconds, uses).map_err(Status::invalid_argument)?;
    let token = Token::generate().map_err(|e| Status::internal(e.to_string()))?;
    let now = now_unix_ms();
    let record = TokenRecord {
        hash: token.hash(),
        region: region.to_string(),
        expires_unix_ms: now.saturating_add(ttl.as_millis() as i64),
        uses,
        created_unix_ms: now,
    };
    let expires_unix_ms = record.expires_unix_ms;
    blocking(db, move |db| db.add_enrol_token(&record)).await.map_err(|e| match e {
        crate::store::StoreError::NotFound { .. } => {
            Status::not_found(format!("region {region:?} does not exist; `aq region add {region} --rate RATE` adds it"))
        }
        other => other.into(),
    })?;
    info!(region, uses, ttl_s = ttl.as_secs(), "made an enrolment token");
    Ok(pb::CreateEnrolTokenResponse {
        token: token.expose().to_string(),
        region: region.to_string(),
        expires_unix_ms,
        uses,
    })
}

/// The `Enrol` service: answered without a client certificate.
pub struct EnrolService {
    pub issuer: Arc<Issuer>,
}

#[tonic::async_trait]
impl pb::enrol_server::Enrol for EnrolService {
    #[instrument(skip_all, fields(node, region))]
    async fn enrol(&self, request: Request<pb::EnrolRequest>) -> Result<Response<pb::NodeCertificate>, Status> {
        let pb::EnrolRequest { token, node, csr_der } = request.into_inner();
        Span::current().record("node", node.as_str());
        aqueduct_proto::validate_name("node", &node).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let token = Token::parse(&token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The request is checked before a use of the token is taken: a bad request costs none.
        if csr_der.len() > crate::pki::MAX_CSR_BYTES {
            return Err(CsrError::TooLarge(csr_der.len()).into());
        }
        rcgen::CertificateSigningRequestParams::from_der(&csr_der.as_slice().into())
            .map_err(|e| Status::from(CsrError::Invalid(e)))?;
        let hash = token.hash();
        let found = blocking(&self.issuer.db, move |db| db.take_enrol_token(&hash, now_unix_ms())).await?;
        if let Some(reason) = refusal(&found) {
            warn!(%reason, "refused an enrolment");
            return Err(Status::permission_denied(reason));
        }
        let TokenUse::Taken { region, uses_left } = found else {
            return Err(Status::internal("a token taken names no region"));
        };
        Span::current().record("region", region.as_str());
        let issued = self.issuer.certificate(&csr_der, &region, &node)?;
        info!(uses_left, not_after_unix_ms = issued.not_after_unix_ms, "a node enrolled");
        Ok(Response::new(issued))
    }
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn tokens_parse_back_and_hide_in_debug() {
        let token = Token::generate().unwrap();
        assert_eq!(Token::parse(&format!("  {}\n", token.expose())).unwrap(), token);
        assert_ne!(Token::generate().unwrap(), token, "random");
        assert!(!format!("{token:?}").contains(&token.expose()[TOKEN_PREFIX.len()..]));
        assert_eq!(token.hash().len(), 64);
        let err = Token::parse("hunter2").unwrap_err().to_string();
        assert!(err.contains("aq region token") && !err.contains("hunter2"), "{err}");
        assert_eq!(token_terms(0, 0).unwrap(), (Duration::from_secs(3600), 1));
        assert!(token_terms(u64::MAX, 1).unwrap_err().contains("--ttl"));
        assert!(token_terms(60, u32::MAX).unwrap_err().contains("--uses"));
    }

    proptest! {
        #![proptest_config(fuzz::config(5000))]

        /// Any text given as a token: a token whose text is that text trimmed, or an error that
        /// does not quote it; never a panic.
        #[test]
        fn fuzz_token_parse(text in prop_oneof![
            "(?s).{0,80}",
            "\\s*aqt1_[0-9a-fA-F]{60,68}\\s*",
            "aqt1_[0-9a-f]{64}.{0,3}",
        ]) {
            match Token::parse(&text) {
                Ok(token) => {
                    prop_assert_eq!(token.expose(), text.trim());
                    prop_assert_eq!(token.expose().len(), TOKEN_PREFIX.len() + 64);
                }
                Err(e) => {
                    let message = e.to_string();
                    prop_assert!(text.trim().len() < 8 || !message.contains(text.trim()), "{}", message);
                }
            }
        }
    }
}
