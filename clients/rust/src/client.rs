//! `Client`: one gRPC channel to Prism (one server, or several balanced),
//! from which namespace handles are made.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::admin::Admin;
use crate::call::{Calls, Settings};
use crate::error::{Error, Result};
use crate::keyvalue::KeyValue;
use crate::pubsub::PubSub;
use crate::registry::Registry;
use crate::token::{DEFAULT_REFRESH_MARGIN, TokenProvider, Tokens};

/// Large values (MiBs) must fit; the server enforces its own limits.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// One call and up to three retries, as the Python client.
const DEFAULT_MAX_ATTEMPTS: u32 = 4;

/// A connection to Prism. Cheap to clone (clones share the connection);
/// make one per process and a handle per namespace from it:
/// [`key_value`](Client::key_value), [`pub_sub`](Client::pub_sub),
/// [`registry`](Client::registry).
///
/// ```no_run
/// # async fn example() -> Result<(), prism_client::Error> {
/// let client = prism_client::Client::connect("http://127.0.0.1:8980").await?;
/// let kv = client.key_value("default");
/// kv.set("user:1", "alice").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    /// What the client was built with, for `Debug`.
    endpoints: Arc<[String]>,
    settings: Arc<Settings>,
    max_message_bytes: usize,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to one Prism server with the default settings (no token,
    /// 10 s connect timeout, 30 s request timeout, idempotent calls retried
    /// on UNAVAILABLE). `endpoint` is a URI (`http://127.0.0.1:8980`) or
    /// `host:port`; the connection is made before this returns.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), prism_client::Error> {
    /// let client = prism_client::Client::connect("http://127.0.0.1:8980").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(endpoint: impl Into<String>) -> Result<Client> {
        Client::builder().endpoint(endpoint).connect().await
    }

    /// A [`Builder`] for several endpoints, a token or other timeouts.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), prism_client::Error> {
    /// use std::time::Duration;
    ///
    /// let client = prism_client::Client::builder()
    ///     .endpoints(["http://10.0.0.1:8980", "http://10.0.0.2:8980"])
    ///     .token("eyJhbGciOi...")
    ///     .connect_timeout(Duration::from_secs(3))
    ///     .request_timeout(Duration::from_secs(5))
    ///     .connect()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// KeyValue operations on `namespace` (`"default"` is what a request
    /// without a namespace gets). A name that cannot travel as metadata
    /// (empty, not printable ASCII) makes every call of the handle fail with
    /// [`Error::InvalidArgument`].
    ///
    /// ```no_run
    /// # async fn example(client: prism_client::Client) -> Result<(), prism_client::Error> {
    /// let orders = client.key_value("orders");
    /// orders.set("order:17", "pending").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn key_value(&self, namespace: &str) -> KeyValue {
        KeyValue::new(
            self.channel.clone(),
            self.calls(namespace),
            self.max_message_bytes,
        )
    }

    /// Publish/subscribe on `namespace` (one served by a PubSub pattern).
    ///
    /// ```no_run
    /// # async fn example(client: prism_client::Client) -> Result<(), prism_client::Error> {
    /// let events = client.pub_sub("events");
    /// events.publish("orders.created", "order 17").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn pub_sub(&self, namespace: &str) -> PubSub {
        PubSub::new(
            self.channel.clone(),
            self.calls(namespace),
            self.max_message_bytes,
        )
    }

    /// Multicast Registry operations on `namespace` (one served by the
    /// `multicast-registry` pattern).
    ///
    /// ```no_run
    /// # async fn example(client: prism_client::Client) -> Result<(), prism_client::Error> {
    /// let devices = client.registry("devices");
    /// devices.register("sensor-1", serde_json::json!({"type": "sensor"})).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn registry(&self, namespace: &str) -> Registry {
        Registry::new(
            self.channel.clone(),
            self.calls(namespace),
            self.max_message_bytes,
        )
    }

    /// The Admin API: namespaces, uploads and rollouts (the token needs
    /// admin grants when auth is on).
    ///
    /// ```no_run
    /// # async fn example(client: prism_client::Client) -> Result<(), prism_client::Error> {
    /// let info = client.admin().namespace("orders").await?;
    /// println!("orders serves revision {}", info.revision);
    /// # Ok(())
    /// # }
    /// ```
    pub fn admin(&self) -> Admin {
        Admin::new(
            self.channel.clone(),
            self.calls("default"),
            self.max_message_bytes,
        )
    }

    /// This client (same connection) sending `token` instead: for a token
    /// that was refreshed. Handles made from `self` keep the old one.
    ///
    /// ```no_run
    /// # async fn example(client: prism_client::Client) -> Result<(), prism_client::Error> {
    /// let client = client.with_token("eyJhbGciOi...fresh")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_token(&self, token: &str) -> Result<Client> {
        let settings = Settings {
            authorization: Some(bearer(token)?),
            tokens: None,
            request_timeout: self.settings.request_timeout,
            max_attempts: self.settings.max_attempts,
        };
        Ok(Client {
            settings: Arc::new(settings),
            ..self.clone()
        })
    }

    fn calls(&self, namespace: &str) -> Calls {
        Calls::new(namespace, self.settings.clone())
    }
}

/// How to connect: endpoints, token, timeouts, retries. From
/// [`Client::builder`].
#[derive(Clone)]
pub struct Builder {
    endpoints: Vec<String>,
    token: Option<String>,
    provider: Option<Arc<dyn TokenProvider>>,
    refresh_margin: Duration,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    keep_alive: Option<Duration>,
    max_attempts: u32,
    max_message_bytes: usize,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("endpoints", &self.endpoints)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "token_provider",
                &self.provider.as_ref().map(|_| "<provider>"),
            )
            .field("token_refresh_margin", &self.refresh_margin)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("max_attempts", &self.max_attempts)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            endpoints: Vec::new(),
            token: None,
            provider: None,
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
            keep_alive: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

impl Builder {
    /// Adds one server: a URI (`http://127.0.0.1:8980`) or `host:port`
    /// (taken as `http://host:port`).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Builder {
        self.endpoints.push(endpoint.into());
        self
    }

    /// Adds several servers (replicas of one deployment). Calls are spread
    /// over them by tonic's balancer (power of two random choices, by
    /// in-flight calls), and an idempotent call that fails UNAVAILABLE is
    /// made again, possibly on another replica.
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints.extend(endpoints.into_iter().map(Into::into));
        self
    }

    /// Asks `provider` for the token each call sends, again whenever the
    /// one held is within the refresh margin of its `exp` (capped at half
    /// its lifetime; a token whose `exp` cannot be read is asked for before
    /// every call). Replaces [`token`](Builder::token).
    pub fn token_provider(mut self, provider: impl TokenProvider) -> Builder {
        self.provider = Some(Arc::new(provider));
        self.token = None;
        self
    }

    /// How long before a provided token's expiry a new one is asked for
    /// (default [`DEFAULT_REFRESH_MARGIN`]).
    pub fn token_refresh_margin(mut self, margin: Duration) -> Builder {
        self.refresh_margin = margin;
        self
    }

    /// Sends `authorization: Bearer <token>` (a JWT) with every call.
    pub fn token(mut self, token: impl Into<String>) -> Builder {
        self.provider = None;
        self.token = Some(token.into());
        self
    }

    /// Bounds setting up a connection (default 10 s); `None`: no bound.
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Builder {
        self.connect_timeout = timeout.into();
        self
    }

    /// Bounds every unary call, its retries included (default 30 s), and
    /// opening a subscription or inbox (not how long it then lives). The
    /// server is told (`grpc-timeout`) and stops working on a call that ran
    /// out. `None`: calls wait as long as the server takes.
    pub fn request_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Builder {
        self.request_timeout = timeout.into();
        self
    }

    /// Sends HTTP/2 keep-alive pings at this interval, also while idle, so a
    /// connection (and the subscriptions on it) that silently died is
    /// noticed. Off by default.
    pub fn keep_alive(mut self, interval: impl Into<Option<Duration>>) -> Builder {
        self.keep_alive = interval.into();
        self
    }

    /// Attempts for an idempotent call that fails UNAVAILABLE (default 4:
    /// the call and three retries, backing off from 50 ms); 1 turns retries
    /// off. Calls that must not run twice are never retried.
    pub fn max_attempts(mut self, attempts: u32) -> Builder {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The largest message sent or received (default 64 MiB).
    pub fn max_message_bytes(mut self, bytes: usize) -> Builder {
        self.max_message_bytes = bytes;
        self
    }

    /// Connects. With one endpoint the connection is made before this
    /// returns ([`Error::Transport`] if it cannot be); with several, each
    /// replica is connected to in the background and calls go to those
    /// that are up.
    pub async fn connect(self) -> Result<Client> {
        let (mut endpoints, settings) = self.prepare()?;
        let channel = match endpoints.len() {
            1 => match endpoints.pop() {
                Some(endpoint) => endpoint.connect().await?,
                None => return Err(no_endpoint()),
            },
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        Ok(self.finish(channel, settings))
    }

    /// Like [`connect`](Builder::connect), without waiting: the first call
    /// makes the connection (and fails UNAVAILABLE if it cannot). Must be
    /// called within a Tokio runtime.
    pub fn connect_lazy(self) -> Result<Client> {
        let (endpoints, settings) = self.prepare()?;
        let channel = match endpoints.as_slice() {
            [one] => one.connect_lazy(),
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        Ok(self.finish(channel, settings))
    }

    fn prepare(&self) -> Result<(Vec<Endpoint>, Settings)> {
        if self.endpoints.is_empty() {
            return Err(no_endpoint());
        }
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| self.endpoint_of(e))
            .collect::<Result<Vec<_>>>()?;
        let authorization = self.token.as_deref().map(bearer).transpose()?;
        let settings = Settings {
            authorization,
            tokens: self
                .provider
                .clone()
                .map(|p| Arc::new(Tokens::new(p, self.refresh_margin))),
            request_timeout: self.request_timeout,
            max_attempts: self.max_attempts,
        };
        Ok((endpoints, settings))
    }

    fn endpoint_of(&self, address: &str) -> Result<Endpoint> {
        let uri = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|err| Error::invalid(format!("endpoint {address:?} is not a URI: {err}")))?
            .tcp_nodelay(true);
        if let Some(timeout) = self.connect_timeout {
            endpoint = endpoint.connect_timeout(timeout);
        }
        if let Some(interval) = self.keep_alive {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_while_idle(true);
        }
        Ok(endpoint)
    }

    fn finish(self, channel: Channel, settings: Settings) -> Client {
        Client {
            channel,
            endpoints: self.endpoints.into(),
            settings: Arc::new(settings),
            max_message_bytes: self.max_message_bytes,
        }
    }
}

fn no_endpoint() -> Error {
    Error::invalid("no endpoint given: add one with Builder::endpoint")
}

/// The `authorization` value for `token`, marked sensitive.
pub(crate) fn bearer(token: &str) -> Result<MetadataValue<tonic::metadata::Ascii>> {
    let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        Error::invalid("the token cannot be sent as metadata (it must be printable ASCII)")
    })?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_without_a_scheme_are_http() {
        let builder = Client::builder();
        let endpoint = builder.endpoint_of("127.0.0.1:8980");
        let uri = endpoint.ok().map(|e| e.uri().clone());
        assert_eq!(uri.as_ref().and_then(|u| u.scheme_str()), Some("http"));
        assert_eq!(uri.as_ref().and_then(|u| u.port_u16()), Some(8980));
        assert!(matches!(
            builder.endpoint_of("http://bad host:1"),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn builder_refuses_what_cannot_be_sent() {
        assert!(matches!(
            Client::builder().prepare(),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            Client::builder()
                .endpoint("127.0.0.1:1")
                .token("bad\ntoken")
                .prepare(),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn the_token_is_never_printed() {
        let builder = Client::builder()
            .endpoint("127.0.0.1:1")
            .token("secret-token");
        assert!(!format!("{builder:?}").contains("secret-token"));
        let settings = builder.prepare().map(|(_, s)| format!("{s:?}"));
        assert!(settings.is_ok_and(|s| !s.contains("secret-token") && s.contains("redacted")));
    }
}
