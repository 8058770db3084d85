//! How every call of a namespace handle is made: the metadata it carries
//! (namespace, bearer token), its deadline, and retries of idempotent calls
//! on UNAVAILABLE.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Request, Response, Status};

use crate::error::{Error, Result};
use crate::token::Tokens;

/// The request metadata that names the namespace (absent means `default`).
pub const NAMESPACE_METADATA: &str = "x-prism-namespace";

/// The request metadata that carries the bearer token.
pub const AUTHORIZATION_METADATA: &str = "authorization";

/// First pause before a retry; doubled per attempt up to [`MAX_BACKOFF`]
/// (the Python client's gRPC retry policy).
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What every handle made from one [`Client`](crate::Client) shares; built
/// once, so a call only clones reference-counted values.
pub(crate) struct Settings {
    /// `Bearer <token>`, marked sensitive so HTTP/2 never indexes it.
    pub(crate) authorization: Option<MetadataValue<Ascii>>,
    /// A provider of the token, asked again as it nears its expiry (set
    /// instead of `authorization`).
    pub(crate) tokens: Option<Arc<Tokens>>,
    /// Bounds each unary call, retries included; opening a stream too (not
    /// the stream's life).
    pub(crate) request_timeout: Option<Duration>,
    /// Attempts for an idempotent call (1: never retried).
    pub(crate) max_attempts: u32,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("tokens", &self.tokens)
            .field("request_timeout", &self.request_timeout)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// The namespace metadata, checked once when the handle is made; a name
/// that cannot travel as metadata fails every call of its handle.
#[derive(Clone)]
enum NamespaceHeader {
    Valid(MetadataValue<Ascii>),
    Invalid(Arc<str>),
}

/// The per-namespace call context a handle holds (cheap to clone).
#[derive(Clone)]
pub(crate) struct Calls {
    namespace: NamespaceHeader,
    name: Arc<str>,
    settings: Arc<Settings>,
}

impl fmt::Debug for Calls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Calls")
            .field("namespace", &self.name)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Calls {
    pub(crate) fn new(namespace: &str, settings: Arc<Settings>) -> Calls {
        // Header values may carry bytes past ASCII; namespace names never do.
        let printable = !namespace.is_empty() && namespace.bytes().all(|b| b.is_ascii_graphic());
        let header = match MetadataValue::try_from(namespace) {
            Ok(value) if printable => NamespaceHeader::Valid(value),
            _ => NamespaceHeader::Invalid(namespace.into()),
        };
        Calls {
            namespace: header,
            name: namespace.into(),
            settings,
        }
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.name
    }

    pub(crate) fn request_timeout(&self) -> Option<Duration> {
        self.settings.request_timeout
    }

    /// `message` as a request carrying the namespace and token, and the
    /// `grpc-timeout` of `timeout` (so the server stops working on it too).
    pub(crate) async fn request<M>(
        &self,
        message: M,
        timeout: Option<Duration>,
    ) -> Result<Request<M>> {
        let namespace = match &self.namespace {
            NamespaceHeader::Valid(value) => value.clone(),
            NamespaceHeader::Invalid(name) => {
                return Err(Error::invalid(format!(
                    "namespace {name:?} cannot be sent as {NAMESPACE_METADATA} metadata: \
                     namespace names are non-empty printable ASCII"
                )));
            }
        };
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert(NAMESPACE_METADATA, namespace);
        if let Some(tokens) = &self.settings.tokens {
            let authorization = tokens.authorization().await?;
            request
                .metadata_mut()
                .insert(AUTHORIZATION_METADATA, authorization);
        } else if let Some(authorization) = &self.settings.authorization {
            metadata.insert(AUTHORIZATION_METADATA, authorization.clone());
        }
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        Ok(request)
    }

    /// Makes a unary call that must not run twice (no retries): Publish,
    /// Multicast and Register could deliver or create twice; Delete,
    /// Unregister and Ack would answer differently the second time.
    pub(crate) async fn once<C, M, R, Fut>(
        &self,
        client: &C,
        message: M,
        call: impl FnOnce(C, Request<M>) -> Fut,
    ) -> Result<R>
    where
        C: Clone,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let request = self.request(message, self.settings.request_timeout).await?;
        match call(client.clone(), request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(Error::from(status)),
        }
    }

    /// Makes an idempotent unary call (running it twice has the same outcome
    /// and the same answer: reads, Set, BatchSet, Heartbeat, Unsubscribe),
    /// again (after a short backoff) when it
    /// fails UNAVAILABLE, up to the client's `max_attempts`, all within the
    /// request timeout. `message` builds the request for each attempt.
    pub(crate) async fn idempotent<C, M, R, Fut>(
        &self,
        client: &C,
        mut message: impl FnMut() -> M,
        mut call: impl FnMut(C, Request<M>) -> Fut,
    ) -> Result<R>
    where
        C: Clone,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let deadline = self.settings.request_timeout.map(|t| Instant::now() + t);
        let mut attempt = 1;
        loop {
            let timeout = match deadline {
                None => None,
                Some(deadline) => Some(remaining(deadline)?),
            };
            let request = self.request(message(), timeout).await?;
            let status = match call(client.clone(), request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            if status.code() != Code::Unavailable || attempt >= self.settings.max_attempts {
                return Err(Error::from(status));
            }
            let mut pause = backoff(attempt);
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left <= pause {
                    // No time for another attempt: the caller hears why.
                    return Err(Error::from(status));
                }
                pause = pause.min(left);
            }
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// Bounds opening a stream (the call and its confirmation frame) by the
    /// request timeout; the stream itself lives as long as it is read.
    pub(crate) async fn opening<T>(
        &self,
        what: &str,
        open: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match self.settings.request_timeout {
            None => open.await,
            Some(timeout) => tokio::time::timeout(timeout, open)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::DeadlineExceeded {
                        message: format!(
                            "{what} was not confirmed by the server within {timeout:?}"
                        ),
                    })
                }),
        }
    }
}

/// The time left before `deadline`, or DEADLINE_EXCEEDED if none is.
fn remaining(deadline: Instant) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::DeadlineExceeded {
            message: "the request timeout passed before the call could be retried".into(),
        });
    }
    Ok(left)
}

/// The pause before attempt `attempt + 1`: exponential, with "equal jitter"
/// (half fixed, half random) so clients that failed together do not retry
/// together. The randomness is std's per-instance random hasher keys.
fn backoff(attempt: u32) -> Duration {
    let exp = INITIAL_BACKOFF.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let base = exp.min(MAX_BACKOFF);
    let half = base / 2;
    let random = RandomState::new().hash_one(attempt);
    let jitter_nanos = random % (half.as_nanos() as u64).max(1);
    half + Duration::from_nanos(jitter_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Arc<Settings> {
        Arc::new(Settings {
            authorization: None,
            tokens: None,
            request_timeout: None,
            max_attempts: 4,
        })
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..40 {
            let pause = backoff(attempt);
            let base = INITIAL_BACKOFF
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(pause >= base / 2 && pause <= base, "{attempt}: {pause:?}");
        }
    }

    #[tokio::test]
    async fn requests_carry_the_namespace() {
        let calls = Calls::new("orders", settings());
        let request = calls.request((), Some(Duration::from_secs(1))).await;
        assert!(request.is_ok());
        if let Ok(request) = request {
            assert_eq!(
                request
                    .metadata()
                    .get(NAMESPACE_METADATA)
                    .map(|v| v.as_bytes()),
                Some(&b"orders"[..])
            );
            assert!(request.metadata().get("grpc-timeout").is_some());
            assert!(request.metadata().get(AUTHORIZATION_METADATA).is_none());
        }
    }

    #[tokio::test]
    async fn a_namespace_that_is_no_metadata_fails_its_calls() {
        for name in ["", "new\nline", "naïve"] {
            let calls = Calls::new(name, settings());
            assert!(matches!(
                calls.request((), None).await,
                Err(Error::InvalidArgument { .. })
            ));
        }
    }

    #[tokio::test]
    async fn unavailable_is_retried_for_idempotent_calls_only() {
        let calls = Calls::new("default", settings());
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let outcome: Result<()> = calls
            .idempotent(
                &(),
                || (),
                |(), _| {
                    attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async { Err(Status::unavailable("down")) }
                },
            )
            .await;
        assert!(matches!(outcome, Err(Error::Unavailable { .. })));
        assert_eq!(attempts.load(std::sync::atomic::Ordering::Relaxed), 4);

        let attempts = std::sync::atomic::AtomicU32::new(0);
        let outcome: Result<()> = calls
            .once(&(), (), |(), _| {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async { Err(Status::unavailable("down")) }
            })
            .await;
        assert!(matches!(outcome, Err(Error::Unavailable { .. })));
        assert_eq!(attempts.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn other_errors_are_not_retried_and_success_stops_retrying() {
        let calls = Calls::new("default", settings());
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let outcome: Result<()> = calls
            .idempotent(
                &(),
                || (),
                |(), _| {
                    attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async { Err(Status::invalid_argument("bad")) }
                },
            )
            .await;
        assert!(matches!(outcome, Err(Error::InvalidArgument { .. })));
        assert_eq!(attempts.load(std::sync::atomic::Ordering::Relaxed), 1);

        let attempts = std::sync::atomic::AtomicU32::new(0);
        let outcome: Result<u32> = calls
            .idempotent(
                &(),
                || (),
                |(), _| {
                    let n = attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async move {
                        if n == 0 {
                            Err(Status::unavailable("down"))
                        } else {
                            Ok(Response::new(7))
                        }
                    }
                },
            )
            .await;
        assert_eq!(outcome.ok(), Some(7));
    }
}
