//! Tokens that change over time: a [`TokenProvider`] is asked for the
//! bearer token again before the one the client holds expires, so a
//! long-lived client keeps working with short-lived OAuth access tokens.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use tonic::metadata::{Ascii, MetadataValue};

use crate::error::Result;

/// How long before its `exp` a held token is replaced by default (capped
/// at half the token's lifetime, so a short-lived token is not fetched
/// for every call).
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// Where a client gets its bearer token (a JWT) when the token changes over
/// time: an OAuth client-credentials flow, a file a sidecar rewrites, a
/// secrets manager. Any `Fn() -> impl Future<Output = Result<String>>` is one.
///
/// ```no_run
/// # async fn example() -> Result<(), prism_client::Error> {
/// use prism_client::Client;
///
/// let client = Client::builder()
///     .endpoint("http://127.0.0.1:8980")
///     .token_provider(|| async {
///         let token = std::fs::read_to_string("/var/run/secrets/prism/token")
///             .map_err(|e| prism_client::Error::Unauthenticated { message: e.to_string() })?;
///         Ok(token.trim().to_owned())
///     })
///     .connect()
///     .await?;
/// # Ok(())
/// # }
/// ```
pub trait TokenProvider: Send + Sync + 'static {
    /// The current token; an error fails the call that needed it.
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String>> + Send + '_>>;
}

impl<F, Fut> TokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String>> + Send + 'static,
{
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String>> + Send + '_>> {
        Box::pin(self())
    }
}

/// A provider and the token last had from it.
pub(crate) struct Tokens {
    provider: Arc<dyn TokenProvider>,
    margin: Duration,
    held: tokio::sync::Mutex<Option<Held>>,
}

struct Held {
    authorization: MetadataValue<Ascii>,
    /// When to ask again; None: its expiry cannot be read, ask every call.
    refresh_at: Option<SystemTime>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("margin", &self.margin)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub(crate) fn new(provider: Arc<dyn TokenProvider>, margin: Duration) -> Tokens {
        Tokens {
            provider,
            margin,
            held: tokio::sync::Mutex::new(None),
        }
    }

    /// The `authorization` value for a call starting now: the held token,
    /// or a new one when it is near its expiry (one fetch for all the calls
    /// waiting on it).
    pub(crate) async fn authorization(&self) -> Result<MetadataValue<Ascii>> {
        let mut held = self.held.lock().await;
        if let Some(h) = held.as_ref()
            && h.refresh_at.is_some_and(|at| SystemTime::now() < at)
        {
            return Ok(h.authorization.clone());
        }
        let token = self.provider.token().await?;
        let authorization = crate::client::bearer(&token)?;
        let refresh_at = lifetime(&token).map(|(issued, expires)| {
            let life = expires.duration_since(issued).unwrap_or_default();
            expires - self.margin.min(life / 2)
        });
        *held = Some(Held {
            authorization: authorization.clone(),
            refresh_at,
        });
        Ok(authorization)
    }
}

/// A JWT's `iat` (or now) and `exp`, read without checking the signature
/// (the server checks it; this only decides when to ask again).
fn lifetime(token: &str) -> Option<(SystemTime, SystemTime)> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let at = |secs: u64| UNIX_EPOCH.checked_add(Duration::from_secs(secs));
    let expires = at(claims.get("exp")?.as_u64()?)?;
    let issued = claims
        .get("iat")
        .and_then(serde_json::Value::as_u64)
        .and_then(at)
        .unwrap_or_else(SystemTime::now);
    Some((issued, expires))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn jwt(claims: serde_json::Value) -> String {
        let encode = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            encode(br#"{"alg":"RS256"}"#),
            encode(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn a_tokens_lifetime_is_read_from_its_claims() {
        let token = jwt(serde_json::json!({"iat": 1000, "exp": 1060}));
        assert_eq!(
            lifetime(&token),
            Some((
                UNIX_EPOCH + Duration::from_secs(1000),
                UNIX_EPOCH + Duration::from_secs(1060)
            ))
        );
        assert_eq!(lifetime("not-a-jwt"), None);
        assert_eq!(lifetime(&jwt(serde_json::json!({"sub": "x"}))), None);
    }

    #[tokio::test]
    async fn a_token_is_asked_for_again_only_near_its_expiry() {
        let asked = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = asked.clone();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Valid an hour: asked once for many calls.
        let provider = move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let token = jwt(serde_json::json!({"iat": now, "exp": now + 3600}));
            async move { Ok(token) }
        };
        let tokens = Tokens::new(Arc::new(provider), DEFAULT_REFRESH_MARGIN);
        for _ in 0..5 {
            assert!(tokens.authorization().await.is_ok());
        }
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Expired already: asked every call.
        let asked = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = asked.clone();
        let provider = move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let token = jwt(serde_json::json!({"iat": now - 120, "exp": now - 60}));
            async move { Ok(token) }
        };
        let tokens = Tokens::new(Arc::new(provider), DEFAULT_REFRESH_MARGIN);
        for _ in 0..3 {
            assert!(tokens.authorization().await.is_ok());
        }
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 3);
        // A provider's error fails the call.
        let failing = || async {
            Err(Error::Unauthenticated {
                message: "no token".into(),
            })
        };
        let tokens = Tokens::new(Arc::new(failing), DEFAULT_REFRESH_MARGIN);
        assert!(matches!(
            tokens.authorization().await,
            Err(Error::Unauthenticated { .. })
        ));
    }
}
