//! Authentication and authorization: bearer JWTs from trusted OIDC issuers
//! (asymmetric signatures only; `iss`, `aud`, `exp` required; `nbf`
//! honoured; clock leeway from config) and per-namespace grants from a
//! claim. A verified token is cached until it expires, so the common path is
//! one hash lookup. Tokens never appear in an error or a log line.

pub mod grants;
mod keys;
pub mod layer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use parking_lot::Mutex;
use serde::Deserialize;

pub use grants::{Access, Grants};
use keys::{IssuerKeys, KeyRefusal};

use crate::clock::now_ms;
use crate::config::{AuthConfig, AuthMode};
use crate::namespace::UNKNOWN_NAMESPACE;

/// The signature algorithms Prism accepts: asymmetric only (never `none`,
/// never HS*, which would let a public key act as a shared secret).
pub const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Verified tokens kept at most (expired ones go first when full).
const CACHE_ENTRIES: usize = 10_000;

/// Namespaces refusals are counted for, at most (the rest count as unknown).
const REFUSAL_BUCKETS: usize = 4096;

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub issuer: String,
    /// `exp`, in ms since the epoch.
    pub expires_at_ms: u64,
    /// `exp` plus the configured leeway: the token is accepted until then,
    /// and streams opened with it end then.
    pub valid_until_ms: u64,
    pub grants: Grants,
}

/// Why a call was refused; messages name the reason, never the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// Cannot be decided now (a signing key not known yet): retry.
    #[error("{0}")]
    Unavailable(String),
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> tonic::Status {
        match e {
            AuthError::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            AuthError::PermissionDenied(m) => tonic::Status::permission_denied(m),
            AuthError::Unavailable(m) => tonic::Status::unavailable(m),
        }
    }
}

fn unauthenticated(reason: impl Into<String>) -> AuthError {
    AuthError::Unauthenticated(reason.into())
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    client_id: Option<String>,
    /// Required (validation checks it); optional here so a missing one is
    /// reported as such, not as a malformed token.
    exp: Option<u64>,
    #[serde(flatten)]
    rest: HashMap<String, serde_json::Value>,
}

/// The `iss` of a token, read before its signature is checked (only to
/// pick the issuer whose keys check it).
#[derive(Deserialize)]
struct Unverified {
    iss: Option<String>,
}

pub struct Authenticator {
    issuers: Vec<Arc<IssuerKeys>>,
    namespaces_claim: String,
    leeway_secs: u64,
    /// Verified tokens by their full text (never a part of it: a forged
    /// token may copy a real one's signature).
    cache: parking_lot::RwLock<HashMap<Arc<str>, Arc<Principal>>>,
    refused: Mutex<HashMap<String, u64>>,
    verified: AtomicU64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuers", &self.issuers.len())
            .finish()
    }
}

impl Authenticator {
    /// None for `mode = "none"`. Starts fetching every issuer's keys in the
    /// background (an issuer that is down does not delay start-up).
    pub fn from_config(config: &AuthConfig) -> Result<Option<Arc<Authenticator>>, String> {
        if config.mode == AuthMode::None {
            return Ok(None);
        }
        let http = http_client(Duration::from_millis(config.fetch_timeout_ms))?;
        let issuers: Vec<Arc<IssuerKeys>> = config
            .trusted()
            .into_iter()
            .map(|issuer| {
                Arc::new(IssuerKeys::new(
                    issuer,
                    http.clone(),
                    Duration::from_secs(config.jwks_refetch_secs),
                    Duration::from_secs(config.jwks_ttl_secs),
                    config.insecure_issuer,
                ))
            })
            .collect();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            for issuer in &issuers {
                let issuer = issuer.clone();
                handle.spawn(async move { issuer.warm().await });
            }
        }
        Ok(Some(Arc::new(Authenticator {
            issuers,
            namespaces_claim: config.namespaces_claim.clone(),
            leeway_secs: config.leeway_secs,
            cache: parking_lot::RwLock::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            verified: AtomicU64::new(0),
        })))
    }

    /// Tokens verified from scratch (not served from the cache).
    pub fn verified_count(&self) -> u64 {
        self.verified.load(Ordering::Relaxed)
    }

    /// The principal of a token verified before and not expired since.
    pub fn cached(&self, token: &str) -> Option<Arc<Principal>> {
        let now = now_ms();
        self.cache
            .read()
            .get(token)
            .filter(|p| p.valid_until_ms > now)
            .cloned()
    }

    /// The principal of a bearer token, verified (or cached until `exp`).
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        if let Some(p) = self.cached(token) {
            return Ok(p);
        }
        let now = now_ms();
        let principal = Arc::new(self.verify_uncached(token).await?);
        self.verified.fetch_add(1, Ordering::Relaxed);
        let mut cache = self.cache.write();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, p| p.valid_until_ms > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(token.into(), principal.clone());
        Ok(principal)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            unauthenticated("the token is malformed (its header does not decode); send a JWT")
        })?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(unauthenticated(format!(
                "the token is signed with {:?}, which Prism does not accept (asymmetric algorithms only: RS*, PS*, ES256, ES384, EdDSA)",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| unauthenticated("the token's header names no signing key (kid)"))?;
        let iss = unverified_issuer(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer.trim_end_matches('/') == iss.trim_end_matches('/'))
            .ok_or_else(|| {
                unauthenticated(format!(
                    "the token's issuer '{}' is not trusted here",
                    crate::text::shorten(&iss)
                ))
            })?;
        let key = issuer.key(&kid).await.map_err(|refusal| match refusal {
            KeyRefusal::Unknown(m) => unauthenticated(m),
            KeyRefusal::Later(m) => AuthError::Unavailable(m),
        })?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&iss]);
        validation.set_audience(&[&issuer.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| unauthenticated(reason(e.kind(), &issuer.config.audience)))?;
        let claims = data.claims;
        let claim = issuer
            .config
            .namespaces_claim
            .as_deref()
            .unwrap_or(&self.namespaces_claim);
        let grants = match claims.rest.get(claim) {
            Some(serde_json::Value::Array(items)) => {
                Grants::parse(items.iter().filter_map(|v| v.as_str()))
            }
            Some(serde_json::Value::String(one)) => Grants::parse(one.split_whitespace()),
            _ => Grants::default(),
        };
        Ok(Principal {
            subject: claims
                .sub
                .or(claims.client_id)
                .unwrap_or_else(|| "(no subject)".into()),
            issuer: iss,
            expires_at_ms: claims.exp.unwrap_or(0).saturating_mul(1000),
            valid_until_ms: claims
                .exp
                .unwrap_or(0)
                .saturating_add(self.leeway_secs)
                .saturating_mul(1000),
            grants,
        })
    }

    /// Checks `principal` may do `access` on `namespace`.
    pub fn authorize(
        &self,
        principal: &Principal,
        namespace: &str,
        access: Access,
    ) -> Result<(), AuthError> {
        if principal.grants.allows(namespace, access) {
            return Ok(());
        }
        Err(AuthError::PermissionDenied(format!(
            "'{}' may not {access} namespace '{}' (its grants: {}); ask its issuer for '{}{}'",
            principal.subject,
            crate::text::shorten(namespace),
            principal.grants.describe(),
            crate::text::shorten(namespace),
            match access {
                Access::Read => ":read",
                Access::Write => "",
                Access::Admin => ":admin",
            }
        )))
    }

    /// Counts a refusal under its namespace when `known` (a namespace this
    /// server serves), else under [`UNKNOWN_NAMESPACE`]: the header is the
    /// caller's to choose, so an unauthenticated flood of made-up names
    /// adds one counter, not one per name. Logs at powers of two per
    /// bucket, so a flood writes a few lines, never one per call.
    pub fn note_refusal(&self, namespace: &str, known: bool, error: &AuthError) {
        let bucket = if known { namespace } else { UNKNOWN_NAMESPACE };
        let (bucket, n) = {
            let mut refused = self.refused.lock();
            // A safety net: known namespaces are few, but Admin can create
            // and delete them without end.
            let bucket = if refused.contains_key(bucket) || refused.len() < REFUSAL_BUCKETS {
                bucket
            } else {
                UNKNOWN_NAMESPACE
            };
            let n = refused.entry(bucket.to_string()).or_default();
            *n += 1;
            (bucket, *n)
        };
        if n.is_power_of_two() {
            let kind = match error {
                AuthError::Unauthenticated(_) => "unauthenticated",
                AuthError::PermissionDenied(_) => "permission denied",
                AuthError::Unavailable(_) => "retry later",
            };
            tracing::warn!(namespace = %crate::text::shorten(bucket), refused = n, kind, reason = %error, "call refused by auth");
        }
    }

    /// Refusals so far, per namespace (made-up names under [`UNKNOWN_NAMESPACE`]).
    pub fn refusals(&self) -> HashMap<String, u64> {
        self.refused.lock().clone()
    }
}

/// The `iss` claim, read before verification to choose the issuer's keys.
fn unverified_issuer(token: &str) -> Result<String, AuthError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| unauthenticated("the token is malformed (not three parts)"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| unauthenticated("the token is malformed (its claims do not decode)"))?;
    let claims: Unverified = serde_json::from_slice(&bytes)
        .map_err(|_| unauthenticated("the token is malformed (its claims are not JSON)"))?;
    claims
        .iss
        .ok_or_else(|| unauthenticated("the token has no iss claim"))
}

/// Why jsonwebtoken refused a token, in words a caller can act on.
fn reason(kind: &ErrorKind, audience: &str) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired; get a fresh one".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf is in the future)".into(),
        ErrorKind::InvalidIssuer => "the token's issuer does not match".into(),
        ErrorKind::InvalidAudience => {
            format!("the token is not meant for Prism (aud must be '{audience}')")
        }
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the token's algorithm does not fit its signing key".into()
        }
        _ => "the token is malformed".into(),
    }
}

/// An HTTP(S) client for issuers (rustls on ring, native roots): no
/// process-wide TLS provider is assumed.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls_config()?)
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build the HTTP client for the issuers: {e}"))
}

/// rustls with the ring provider (already linked), native root certificates.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup for the issuers: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
