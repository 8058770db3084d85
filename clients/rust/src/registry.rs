//! `Registry`: the Multicast Registry API of one namespace (identities with
//! typed metadata and TTLs, enumerated by filter, multicast to); `Inbox`: an
//! identity's stream of what is multicast to it.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::Stream;
use serde_json::Value;
use tonic::transport::Channel;

use crate::call::Calls;
use crate::error::{Error, Result};
use crate::keyvalue::ttl_ms;
use crate::pb;
use crate::pb::registry_client::RegistryClient;
use crate::stream::{Message, MessageBatch, MessageStream};
use crate::value::{from_map, to_fields};

/// Multicast Registry operations on one namespace, from
/// [`Client::registry`](crate::Client::registry).
///
/// Metadata is JSON-like (`serde_json::Value` objects: strings, numbers,
/// booleans, null, lists, nested maps); integers and floats stay distinct.
///
/// A **filter** is a JSON object whose conditions must all hold:
/// `{"type": "sensor"}` (type-aware equality; `"*"`: present),
/// `{"floor.gte": 2}` (operators `eq ne lt lte gt gte startswith endswith
/// contains in exists regex type`), dotted paths into nested maps
/// (`"location.building"`), `"$and"`/`"$or"` lists and `"$not"`. `{}` or
/// `null` selects every identity. A malformed filter is
/// [`Error::InvalidArgument`] naming the offending key, and nothing is sent.
///
/// Cheap to clone. `get`, `enumerate` and `heartbeat` are retried when they
/// fail UNAVAILABLE; `register`, `unregister` and `multicast` are not.
#[derive(Clone, Debug)]
pub struct Registry {
    client: RegistryClient<Channel>,
    calls: Calls,
}

/// A registered identity as the server holds it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Identity {
    pub identity: String,
    /// A JSON object.
    pub metadata: Value,
    pub registered_at: SystemTime,
    /// `None`: never expires.
    pub expires_at: Option<SystemTime>,
    /// What a heartbeat renews the TTL to; `None` without a TTL.
    pub ttl: Option<Duration>,
}

impl Identity {
    fn from_wire(record: Option<pb::Identity>) -> Result<Identity> {
        let record = record.ok_or_else(|| Error::Other {
            code: tonic::Code::Unknown,
            message: "the server answered without the identity record".into(),
        })?;
        Ok(Identity {
            identity: record.identity,
            metadata: from_map(record.metadata.unwrap_or_default()),
            registered_at: at(record.registered_at_ms),
            expires_at: record.expires_at_ms.map(at),
            ttl: record.ttl_ms.map(Duration::from_millis),
        })
    }
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// How to register an identity: its TTL and whether an identity already
/// registered is replaced. `Registration::default()`: the namespace's
/// default TTL (none unless configured), replacing.
///
/// ```
/// use std::time::Duration;
/// use prism_client::Registration;
///
/// let registration = Registration::new().ttl(Duration::from_secs(30)).replace(false);
/// # let _ = registration;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    ttl: Option<Duration>,
    replace: bool,
}

impl Default for Registration {
    fn default() -> Registration {
        Registration {
            ttl: None,
            replace: true,
        }
    }
}

impl Registration {
    pub fn new() -> Registration {
        Registration::default()
    }

    /// Expires the identity `ttl` after registering (and after each
    /// heartbeat).
    pub fn ttl(mut self, ttl: Duration) -> Registration {
        self.ttl = Some(ttl);
        self
    }

    /// `false`: registering an identity that is registered already fails
    /// with [`Error::AlreadyExists`] instead of replacing it.
    pub fn replace(mut self, replace: bool) -> Registration {
        self.replace = replace;
        self
    }
}

/// What a multicast reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MulticastResult {
    /// Identities the filter matched when the multicast ran.
    pub target_count: u32,
    /// Messages the messaging backend accepted (persisted, on JetStream).
    pub delivered_count: u32,
    /// Identity → why its message was not accepted.
    pub failed: HashMap<String, String>,
}

/// One page of a [`Registry::enumerate_page`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct EnumeratePage {
    pub identities: Vec<Identity>,
    /// Where the next page starts; `None` when there is nothing more.
    pub next_cursor: Option<String>,
}

impl Registry {
    pub(crate) fn new(channel: Channel, calls: Calls, max_message_bytes: usize) -> Registry {
        let client = RegistryClient::new(channel)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Registry { client, calls }
    }

    /// The namespace this handle's calls name.
    pub fn namespace(&self) -> &str {
        self.calls.namespace()
    }

    /// Registers `identity` with `metadata` (a JSON object, or `null`),
    /// replacing its metadata and TTL if it is registered already; the
    /// namespace's default TTL applies (none unless configured).
    ///
    /// ```no_run
    /// # async fn example(devices: prism_client::Registry) -> Result<(), prism_client::Error> {
    /// use serde_json::json;
    ///
    /// let record = devices
    ///     .register("sensor-1", json!({"type": "sensor", "floor": 1}))
    ///     .await?;
    /// println!("registered at {:?}", record.registered_at);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn register(&self, identity: &str, metadata: Value) -> Result<Identity> {
        self.register_with(identity, metadata, Registration::default())
            .await
    }

    /// Registers with a TTL, or without replacing an identity that is
    /// registered already ([`Error::AlreadyExists`]).
    ///
    /// ```no_run
    /// # async fn example(devices: prism_client::Registry) -> Result<(), prism_client::Error> {
    /// use std::time::Duration;
    /// use prism_client::{Error, Registration};
    /// use serde_json::json;
    ///
    /// let registration = Registration::new().ttl(Duration::from_secs(30)).replace(false);
    /// match devices.register_with("sensor-1", json!({"type": "sensor"}), registration).await {
    ///     Ok(record) => println!("expires at {:?}", record.expires_at),
    ///     Err(Error::AlreadyExists { .. }) => println!("sensor-1 is taken"),
    ///     Err(other) => return Err(other),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn register_with(
        &self,
        identity: &str,
        metadata: Value,
        registration: Registration,
    ) -> Result<Identity> {
        let request = pb::RegisterRequest {
            identity: identity.to_owned(),
            metadata: Some(pb::MapValue {
                fields: to_fields(metadata, "metadata")?,
            }),
            ttl_ms: registration.ttl.map(ttl_ms).transpose()?,
            replace: registration.replace,
        };
        let reply = self
            .calls
            .once(&self.client, request, |mut c, r| async move {
                c.register(r).await
            })
            .await?;
        Identity::from_wire(reply.identity)
    }

    /// Renews the identity's TTL from now; [`Error::NotFound`] if it is not
    /// registered (or has expired).
    ///
    /// ```no_run
    /// # async fn example(devices: prism_client::Registry) -> Result<(), prism_client::Error> {
    /// let record = devices.heartbeat("sensor-1").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn heartbeat(&self, identity: &str) -> Result<Identity> {
        let reply = self
            .calls
            .idempotent(
                &self.client,
                || pb::HeartbeatRequest {
                    identity: identity.to_owned(),
                },
                |mut c, r| async move { c.heartbeat(r).await },
            )
            .await?;
        Identity::from_wire(reply.identity)
    }

    /// Removes the identity; returns whether it was registered. Removing
    /// one that is not is no error.
    ///
    /// ```no_run
    /// # async fn example(devices: prism_client::Registry) -> Result<(), prism_client::Error> {
    /// let existed = devices.unregister("sensor-1").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn unregister(&self, identity: &str) -> Result<bool> {
        let request = pb::UnregisterRequest {
            identity: identity.to_owned(),
        };
        let reply = self
            .calls
            .once(&self.client, request, |mut c, r| async move {
                c.unregister(r).await
            })
            .await?;
        Ok(reply.existed)
    }

    /// The identity's record; [`Error::NotFound`] if it is not registered
    /// (or has expired).
    ///
    /// ```no_run
    /// # async fn example(devices: prism_client::Registry) -> Result<(), prism_client::Error> {
    /// let record = devices.get("sensor-1").await?;
    /// println!("{}", record.metadata["type"]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get(&self, identity: &str) -> Result<Identity> {
        let reply = self
            .calls
            .idempotent(
                &self.client,
                || pb::GetIdentityRequest {
                    identity: identity.to_owned(),
                },
                |mut c, r| async move { c.get(r).await },
            )
            .await?;
        Identity::from_wire(reply.identity)
    }

    /// One page of the identities `filter` matches, in identity order, from
    /// `cursor` (empty: the beginning). `limit` 0: the namespace's default
    /// page size (capped at its maximum).
    ///
    /// ```no_run
    /// # async fn example(devices: prism_client::Registry) -> Result<(), prism_client::Error> {
    /// use serde_json::json;
    ///
    /// let page = devices.enumerate_page(json!({"floor.gte": 2}), "", 50).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn enumerate_page(
        &self,
        filter: Value,
        cursor: &str,
        limit: u32,
    ) -> Result<EnumeratePage> {
        let filter = to_fields(filter, "filter")?;
        self.page(&filter, cursor, limit).await
    }

    async fn page(
        &self,
        filter: &HashMap<String, pb::Value>,
        cursor: &str,
        limit: u32,
    ) -> Result<EnumeratePage> {
        let reply = self
            .calls
            .idempotent(
                &self.client,
                || pb::EnumerateRequest {
                    filter: filter.clone(),
                    cursor: cursor.to_owned(),
                    limit,
                },
                |mut c, r| async move { c.enumerate(r).await },
            )
            .await?;
        let identities = reply
            .identities
            .into_iter()
            .map(|i| Identity::from_wire(Some(i)))
            .collect::<Result<_>>()?;
        Ok(EnumeratePage {
            identities,
            next_cursor: Some(reply.next_cursor).filter(|c| !c.is_empty()),
        })
    }

    /// Every identity `filter` matches (following all pages), in identity
    /// order.
    ///
    /// ```no_run
    /// # async fn example(devices: prism_client::Registry) -> Result<(), prism_client::Error> {
    /// use serde_json::json;
    ///
    /// for sensor in devices.enumerate(json!({"type": "sensor"})).await? {
    ///     println!("{} {}", sensor.identity, sensor.metadata);
    /// }
    /// let everyone = devices.enumerate(json!({})).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn enumerate(&self, filter: Value) -> Result<Vec<Identity>> {
        let filter = to_fields(filter, "filter")?;
        let mut identities = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self.page(&filter, &cursor, 0).await?;
            identities.extend(page.identities);
            match page.next_cursor {
                Some(next) => cursor = next,
                None => return Ok(identities),
            }
        }
    }

    /// Sends `payload` to the inbox of every identity `filter` matches.
    ///
    /// ```no_run
    /// # async fn example(devices: prism_client::Registry) -> Result<(), prism_client::Error> {
    /// use serde_json::json;
    ///
    /// let result = devices.multicast(json!({"type": "sensor"}), "read").await?;
    /// println!("{} of {} delivered", result.delivered_count, result.target_count);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn multicast(
        &self,
        filter: Value,
        payload: impl Into<Bytes>,
    ) -> Result<MulticastResult> {
        self.multicast_with_metadata(filter, payload, HashMap::new())
            .await
    }

    /// Sends `message` as UTF-8 JSON (with metadata `content-type:
    /// application/json`); [`Message::json`] decodes it on the other side.
    ///
    /// ```no_run
    /// # async fn example(devices: prism_client::Registry) -> Result<(), prism_client::Error> {
    /// use serde_json::json;
    ///
    /// devices.multicast_json(json!({"floor": 2}), &json!({"command": "read"})).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn multicast_json(&self, filter: Value, message: &Value) -> Result<MulticastResult> {
        let payload = serde_json::to_vec(message).map_err(|err| {
            Error::invalid(format!("the message cannot be encoded as JSON: {err}"))
        })?;
        let metadata =
            HashMap::from([("content-type".to_string(), "application/json".to_string())]);
        self.multicast_with_metadata(filter, payload, metadata)
            .await
    }

    /// Sends `payload` with metadata (string pairs) that travels with it.
    ///
    /// ```no_run
    /// # async fn example(devices: prism_client::Registry) -> Result<(), prism_client::Error> {
    /// use std::collections::HashMap;
    /// use serde_json::json;
    ///
    /// let metadata = HashMap::from([("priority".to_string(), "high".to_string())]);
    /// devices
    ///     .multicast_with_metadata(json!({"type": "sensor"}), "read", metadata)
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn multicast_with_metadata(
        &self,
        filter: Value,
        payload: impl Into<Bytes>,
        metadata: HashMap<String, String>,
    ) -> Result<MulticastResult> {
        let request = pb::MulticastRequest {
            filter: to_fields(filter, "filter")?,
            payload: payload.into(),
            metadata,
        };
        let reply = self
            .calls
            .once(&self.client, request, |mut c, r| async move {
                c.multicast(r).await
            })
            .await?;
        Ok(MulticastResult {
            target_count: reply.target_count,
            delivered_count: reply.delivered_count,
            failed: reply.failed,
        })
    }

    /// Opens `identity`'s inbox with the namespace's default buffer. Returns
    /// once the listener is live: a multicast issued after this returns
    /// reaches it. On at-least-once brokers (JetStream) the inbox is
    /// durable: what was sent while nobody listened arrives now.
    ///
    /// ```no_run
    /// # async fn example(devices: prism_client::Registry) -> Result<(), prism_client::Error> {
    /// use futures::StreamExt;
    ///
    /// let mut inbox = devices.listen("sensor-1").await?;
    /// while let Some(message) = inbox.next().await {
    ///     let message = message?;
    ///     println!("sensor-1 got {:?}", message.payload);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn listen(&self, identity: &str) -> Result<Inbox> {
        self.listen_with_buffer(identity, 0).await
    }

    /// Like [`listen`](Registry::listen), the server buffering up to
    /// `buffer` messages for this listener (0: the namespace's default).
    ///
    /// ```no_run
    /// # async fn example(devices: prism_client::Registry) -> Result<(), prism_client::Error> {
    /// let inbox = devices.listen_with_buffer("sensor-1", 4096).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn listen_with_buffer(&self, identity: &str, buffer: u32) -> Result<Inbox> {
        let request = pb::ListenRequest {
            identity: identity.to_owned(),
            buffer,
        };
        // Not bounded by `grpc-timeout`: the stream lives as long as it is read.
        let request = self.calls.request(request, None).await?;
        let what = format!("the inbox of '{identity}'");
        let mut client = self.client.clone();
        let (id, stream) = self
            .calls
            .opening(&what, async {
                let frames = client.listen(request).await?.into_inner();
                MessageStream::confirm(frames, &what).await
            })
            .await?;
        Ok(Inbox {
            id,
            identity: identity.to_owned(),
            stream,
        })
    }
}

/// An identity's inbox: a [`Stream`] of the [`Message`]s multicast to it
/// (`topic` is the identity). From [`Registry::listen`]. It fails, and then
/// ends, with the error that ended it on the server; dropping it stops
/// listening.
pub struct Inbox {
    id: String,
    identity: String,
    stream: MessageStream<pb::ListenResponse>,
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("id", &self.id)
            .field("identity", &self.identity)
            .field("dropped", &self.stream.dropped())
            .finish()
    }
}

impl Inbox {
    /// The server's name for this listener (in its logs).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The messages of the next frame the server sent, at once (see
    /// [`Subscription::next_batch`](crate::Subscription::next_batch)).
    pub async fn next_batch(&mut self) -> Option<Result<MessageBatch>> {
        self.stream.next_batch().await
    }

    /// Messages this listener lost to its full server-side buffer so far.
    pub fn dropped(&self) -> u64 {
        self.stream.dropped()
    }
}

impl Stream for Inbox {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.stream.size_hint()
    }
}
