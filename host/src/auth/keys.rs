//! An issuer's signing keys: found through OIDC discovery, fetched from its
//! JWKS, cached, and fetched again when a token names a key Prism does not
//! have — at most once per `jwks_refetch_secs`, so forged `kid`s cannot turn
//! Prism into a load generator against the issuer (a token that arrives
//! inside that window for a key Prism has not seen is told to retry, never
//! refused for good: the issuer may have just published it). Keys older
//! than `jwks_ttl_secs` are fetched again before use, so a key the issuer
//! removed stops working. Key rotation needs no restart, and an issuer that
//! is down does not stop Prism: keys already fetched keep working.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use parking_lot::RwLock;
use serde::Deserialize;

use crate::config::IssuerConfig;

/// Longest a token waits for the refetch window to end (past it, the caller
/// is told to retry).
const MAX_WAIT: Duration = Duration::from_secs(2);

/// Why no key answers a `kid`; the text is safe to show a caller.
#[derive(Debug)]
pub enum KeyRefusal {
    /// The issuer's current keys have no such key.
    Unknown(String),
    /// Not known yet, and the keys were fetched too recently to fetch them
    /// again: retryable.
    Later(String),
}

pub struct IssuerKeys {
    pub config: IssuerConfig,
    http: reqwest::Client,
    refetch_every: Duration,
    /// Keys fetched longer ago are fetched again before use.
    ttl: Duration,
    /// `[auth] insecure_issuer`: plain-HTTP JWKS off loopback allowed.
    insecure: bool,
    state: RwLock<KeySet>,
    /// One fetch at a time; callers arriving meanwhile see its result.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<DecodingKey>>,
    /// From discovery, once found.
    jwks_uri: Option<String>,
    fetched_at: Option<Instant>,
    /// Why the last fetch failed, for the refusal message.
    last_error: Option<String>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl IssuerKeys {
    pub fn new(
        config: IssuerConfig,
        http: reqwest::Client,
        refetch_every: Duration,
        ttl: Duration,
        insecure: bool,
    ) -> IssuerKeys {
        IssuerKeys {
            config,
            http,
            refetch_every,
            ttl,
            insecure,
            state: RwLock::new(KeySet::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The key `kid` names, from keys fetched within the TTL.
    pub async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, KeyRefusal> {
        let mut waited = false;
        loop {
            {
                let state = self.state.read();
                if !self.stale(&state)
                    && let Some(key) = state.keys.get(kid)
                {
                    return Ok(key.clone());
                }
            }
            // One fetch at a time: whoever waits here uses its result.
            let one_fetch = self.fetching.lock().await;
            let wait = {
                let state = self.state.read();
                let stale = self.stale(&state);
                if !stale && let Some(key) = state.keys.get(kid) {
                    return Ok(key.clone());
                }
                match state.fetched_at {
                    Some(at) if !stale && at.elapsed() < self.refetch_every => {
                        if waited {
                            // Fetched since this token arrived: a definite no.
                            return Err(KeyRefusal::Unknown(self.missing(kid, &state)));
                        }
                        Some(self.refetch_every.saturating_sub(at.elapsed()))
                    }
                    _ => None,
                }
            };
            if let Some(wait) = wait {
                // Inside the refetch window: a forged kid costs the issuer
                // nothing, and a key the issuer has just published is
                // fetched once the window ends (this token waits for it,
                // or is told to retry when that is far off).
                if wait > MAX_WAIT {
                    return Err(KeyRefusal::Later(format!(
                        "no signing key '{}' is known yet for issuer {}; its keys may be fetched again in {} ms: retry then",
                        crate::text::shorten(kid),
                        self.config.issuer,
                        wait.as_millis() + 1
                    )));
                }
                drop(one_fetch);
                tokio::time::sleep(wait).await;
                waited = true;
                continue;
            }
            let fetched = self.fetch().await;
            let mut state = self.state.write();
            state.fetched_at = Some(Instant::now());
            match fetched {
                Ok((jwks_uri, keys)) => {
                    tracing::info!(issuer = %self.config.issuer, keys = keys.len(), "fetched the issuer's signing keys");
                    state.jwks_uri = Some(jwks_uri);
                    state.keys = keys;
                    state.last_error = None;
                }
                Err(e) => {
                    tracing::warn!(issuer = %self.config.issuer, error = %e, "cannot fetch the issuer's signing keys; keeping the ones already known");
                    state.last_error = Some(e);
                }
            }
            return match state.keys.get(kid) {
                Some(key) => Ok(key.clone()),
                None => Err(KeyRefusal::Unknown(self.missing(kid, &state))),
            };
        }
    }

    /// Keys fetched longer than the TTL ago (never fetched: not stale, just
    /// empty).
    fn stale(&self, state: &KeySet) -> bool {
        state.fetched_at.is_some_and(|at| at.elapsed() >= self.ttl)
    }

    /// Fetches in the background (start-up), so the first request is quick.
    pub async fn warm(&self) {
        let _ = self.key("").await;
    }

    fn missing(&self, kid: &str, state: &KeySet) -> String {
        match &state.last_error {
            Some(e) => format!(
                "no signing key '{}' is known for issuer {}, and its keys cannot be fetched now ({e})",
                crate::text::shorten(kid),
                self.config.issuer
            ),
            None => format!(
                "the issuer {} has no signing key '{}' (checked its keys just now)",
                self.config.issuer,
                crate::text::shorten(kid)
            ),
        }
    }

    async fn fetch(&self) -> Result<(String, HashMap<String, Arc<DecodingKey>>), String> {
        let known = self.state.read().jwks_uri.clone();
        let jwks_uri = match known {
            Some(uri) => uri,
            None => self.discover().await?,
        };
        if !crate::config::fetch_allowed(&jwks_uri, self.insecure) {
            return Err(format!(
                "its discovery names JWKS {jwks_uri}, which is not https:// (set [auth] insecure_issuer = true for a closed lab)"
            ));
        }
        let set: JwkSet = self
            .get_json(&jwks_uri)
            .await
            .map_err(|e| format!("JWKS {jwks_uri}: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            // Only asymmetric keys: a shared secret in a JWKS would let
            // anyone who read it sign tokens (and invite HS*-with-public-key).
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                continue;
            }
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, Arc::new(key));
            }
        }
        Ok((jwks_uri, keys))
    }

    async fn discover(&self) -> Result<String, String> {
        let issuer = self.config.issuer.trim_end_matches('/');
        let url = format!("{issuer}/.well-known/openid-configuration");
        let discovery: Discovery = self
            .get_json(&url)
            .await
            .map_err(|e| format!("discovery {url}: {e}"))?;
        // OIDC discovery: the document must name the issuer it belongs to.
        if discovery.issuer.trim_end_matches('/') != issuer {
            return Err(format!(
                "discovery {url} names issuer {} instead",
                discovery.issuer
            ));
        }
        Ok(discovery.jwks_uri)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self.http.get(url).send().await.map_err(|e| describe(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        response.json::<T>().await.map_err(|e| describe(&e))
    }
}

/// A reqwest error without the URL (given separately) or its query.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else if e.is_decode() {
        "not the expected JSON".into()
    } else {
        e.without_url_ref().to_string()
    }
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let text = self.to_string();
        match self.url() {
            Some(url) => text.replace(url.as_str(), "<url>"),
            None => text,
        }
    }
}
