//! `[auth]`: who may call, and the issuers whose tokens are trusted.

use serde::Deserialize;

/// Who may call: `none` (any caller reaches any namespace; `prism dev`) or
/// `jwt` (bearer tokens from OIDC issuers, grants per namespace).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    None,
    Jwt,
}

/// `[auth]`: one issuer inline (`issuer`, `audience`), more as `[[auth.issuers]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub mode: AuthMode,
    /// OIDC issuer URL; discovery is `<issuer>/.well-known/openid-configuration`.
    pub issuer: Option<String>,
    /// The `aud` tokens must carry.
    pub audience: Option<String>,
    /// The claim listing a token's grants (`"orders"`, `"orders:read"`, `"*"`...).
    #[serde(default = "default_namespaces_claim")]
    pub namespaces_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Further trusted issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Shortest time between two JWKS fetches of one issuer (an unknown `kid`
    /// triggers a refetch: this bounds what forged tokens can cost the issuer).
    #[serde(default = "default_jwks_refetch_secs")]
    pub jwks_refetch_secs: u64,
    /// Longest wait for the issuer's discovery document or keys.
    #[serde(default = "default_fetch_timeout_ms")]
    pub fetch_timeout_ms: u64,
    /// Keys older than this are fetched again before they are used, so a
    /// key the issuer stopped publishing stops working here too.
    #[serde(default = "default_jwks_ttl_secs")]
    pub jwks_ttl_secs: u64,
    /// Allow `http://` issuers (and JWKS) off loopback. Whoever is on the
    /// path could then serve their own keys and mint any grant: tests and
    /// closed labs only.
    #[serde(default)]
    pub insecure_issuer: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            issuer: None,
            audience: None,
            namespaces_claim: default_namespaces_claim(),
            leeway_secs: default_leeway_secs(),
            issuers: Vec::new(),
            jwks_refetch_secs: default_jwks_refetch_secs(),
            fetch_timeout_ms: default_fetch_timeout_ms(),
            jwks_ttl_secs: default_jwks_ttl_secs(),
            insecure_issuer: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    pub issuer: String,
    pub audience: String,
    /// Overrides `[auth] namespaces_claim` for this issuer.
    pub namespaces_claim: Option<String>,
}

impl AuthConfig {
    /// Every trusted issuer, the inline one first.
    pub fn trusted(&self) -> Vec<IssuerConfig> {
        let mut all = Vec::new();
        if let (Some(issuer), Some(audience)) = (&self.issuer, &self.audience) {
            all.push(IssuerConfig {
                issuer: issuer.clone(),
                audience: audience.clone(),
                namespaces_claim: None,
            });
        }
        all.extend(self.issuers.iter().cloned());
        all
    }
}

fn default_namespaces_claim() -> String {
    "prism_namespaces".into()
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_jwks_refetch_secs() -> u64 {
    10
}
fn default_fetch_timeout_ms() -> u64 {
    5000
}
fn default_jwks_ttl_secs() -> u64 {
    300
}

/// Whether `url` may be fetched over plain HTTP: https, or a loopback host
/// (an issuer beside Prism), or `insecure` (`[auth] insecure_issuer`).
pub fn fetch_allowed(url: &str, insecure: bool) -> bool {
    if insecure || url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
