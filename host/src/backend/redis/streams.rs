//! Redis Streams PubSub (`type = "redis"`, `stream = true`): at-least-once,
//! with consumer groups that span Prism processes.
//!
//! - Topic `t` of namespace `ns` is the stream `prism-stream:ns/t` (':' is
//!   not a namespace character, so no key-value key can be one).
//! - A message is one entry: field `payload` (bytes, untouched),
//!   `prism-id`, `prism-ts` (ms), then one field per metadata entry, so
//!   `XADD ... payload x k v` from any Redis client arrives with metadata
//!   `k=v`, and redis-cli shows what Prism wrote. Streams are trimmed as
//!   they grow: MINID by `max_age_secs`, or MAXLEN by `max_len`.
//! - A subscriber without a group reads (XREAD) from the stream's end at
//!   subscribe time; a group member reads with XREADGROUP (the group is
//!   made at the stream's end if new, and is durable: a group resumes where
//!   it left off). Acks are XACK. A member's unacknowledged messages are
//!   claimed (XAUTOCLAIM) by a member of the same group once idle for
//!   `ack_wait_ms`, and at once when the member leaves.
//! - Each subscription reads on a connection of its own (blocking reads
//!   would stall the shared one); publishes and acks use the backend's.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Value};

use super::kv::{KindDescription, RedisConfigError, RedisKv};
use crate::backend::BackendError;
use crate::backend::pubsub::{
    Acker, BrokerMessage, BrokerSubscription, Delivery, PubSubBackend, SubscribeOptions, TopicName,
};
use crate::config::RedisConfig;

/// The entry fields Prism reads as its own; metadata cannot use them.
const PAYLOAD: &str = "payload";
const ID: &str = "prism-id";
const TIMESTAMP: &str = "prism-ts";
/// Entries read per call.
const READ_COUNT: usize = 256;
/// How long one blocking read waits before the loop looks around again
/// (claims due, a subscription dropped).
const BLOCK: Duration = Duration::from_millis(1000);
/// Beyond BLOCK, how long a read's reply may take (a page of large entries).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

enum Trim {
    MaxLen(u64),
    MaxAge(Duration),
}

pub struct RedisStreams {
    summary: String,
    kv: Arc<RedisKv>,
    client: redis::Client,
    timeout: Duration,
    ack_wait: Duration,
    trim: Trim,
    /// Consumer names are `<this>-<n>`: unique per subscription, process and start.
    consumer_prefix: String,
    next_consumer: AtomicU64,
}

impl RedisStreams {
    pub fn new(
        config: &RedisConfig,
        kv: Arc<RedisKv>,
    ) -> Result<Arc<RedisStreams>, RedisConfigError> {
        let client = super::client(config)?;
        let trim = match config.max_len {
            Some(n) => Trim::MaxLen(n),
            None => Trim::MaxAge(Duration::from_secs(config.max_age_secs)),
        };
        Ok(Arc::new(RedisStreams {
            summary: format!("{} (streams)", crate::backend::KvBackend::summary(&*kv)),
            kv,
            client,
            timeout: Duration::from_millis(config.timeout_ms),
            ack_wait: Duration::from_millis(config.ack_wait_ms),
            trim,
            consumer_prefix: format!(
                "prism-{}-{}",
                std::process::id(),
                crate::clock::next_id(crate::clock::now_ms())
            ),
            next_consumer: AtomicU64::new(0),
        }))
    }

    fn key(topic: &TopicName) -> String {
        format!("prism-stream:{}", topic.scoped())
    }

    fn add(&self, pipe: &mut redis::Pipeline, key: &str, message: &BrokerMessage) {
        let cmd = pipe.cmd("XADD").arg(key);
        match self.trim {
            Trim::MaxLen(n) => {
                cmd.arg("MAXLEN").arg("~").arg(n);
            }
            Trim::MaxAge(age) => {
                let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                let oldest = crate::clock::now_ms().saturating_sub(age_ms);
                cmd.arg("MINID").arg("~").arg(oldest);
            }
        }
        cmd.arg("*")
            .arg(PAYLOAD)
            .arg(message.payload.as_ref())
            .arg(ID)
            .arg(&message.id)
            .arg(TIMESTAMP)
            .arg(message.timestamp_ms);
        for (k, v) in &message.metadata {
            cmd.arg(k).arg(v);
        }
        cmd.ignore();
    }

    fn check(messages: &[&BrokerMessage]) -> Result<(), BackendError> {
        for (i, m) in messages.iter().enumerate() {
            if let Some((k, _)) = m
                .metadata
                .iter()
                .find(|(k, _)| [PAYLOAD, ID, TIMESTAMP].contains(&k.as_str()))
            {
                return Err(BackendError::InvalidArgument(format!(
                    "message {i}: metadata key {k:?} is reserved on Redis Streams (entries carry {PAYLOAD}, {ID} and {TIMESTAMP} as fields)"
                )));
            }
        }
        Ok(())
    }

    async fn reader(&self) -> Result<redis::aio::MultiplexedConnection, BackendError> {
        let config = reader_config(self.timeout);
        self.kv
            .bounded(
                self.client
                    .get_multiplexed_async_connection_with_config(&config),
            )
            .await
    }
}

#[async_trait]
impl PubSubBackend for RedisStreams {
    fn summary(&self) -> String {
        self.summary.clone()
    }

    async fn ping(&self) -> Result<(), BackendError> {
        crate::backend::KvBackend::ping(&*self.kv).await
    }

    fn at_least_once(&self) -> bool {
        true
    }

    async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<BrokerMessage>,
    ) -> Result<(), BackendError> {
        if messages.is_empty() {
            return Ok(());
        }
        RedisStreams::check(&messages.iter().collect::<Vec<_>>())?;
        let key = RedisStreams::key(topic);
        let mut pipe = redis::pipe();
        for message in &messages {
            self.add(&mut pipe, &key, message);
        }
        self.kv.query_pipeline::<()>(&pipe).await
    }

    async fn publish_each(
        &self,
        items: Vec<(TopicName, BrokerMessage)>,
    ) -> Result<Vec<Result<(), BackendError>>, BackendError> {
        let results: Vec<Result<(), BackendError>> = items
            .iter()
            .map(|(_, m)| RedisStreams::check(&[m]))
            .collect();
        let mut pipe = redis::pipe();
        let mut any = false;
        for ((topic, message), checked) in items.iter().zip(&results) {
            if checked.is_ok() {
                self.add(&mut pipe, &RedisStreams::key(topic), message);
                any = true;
            }
        }
        if any {
            self.kv.query_pipeline::<()>(&pipe).await?;
        }
        Ok(results)
    }

    async fn subscribe(
        &self,
        topic: &TopicName,
        options: &SubscribeOptions,
    ) -> Result<Box<dyn BrokerSubscription>, BackendError> {
        let key = RedisStreams::key(topic);
        let mode = match &options.group {
            None => {
                // The end of the stream now: everything published after
                // this returns is read.
                let last: Value = self
                    .kv
                    .query(
                        redis::cmd("XREVRANGE")
                            .arg(&key)
                            .arg("+")
                            .arg("-")
                            .arg("COUNT")
                            .arg(1),
                    )
                    .await?;
                Mode::Fanout {
                    last_id: last_entry_id(&last).unwrap_or_else(|| "0-0".into()),
                }
            }
            Some(group) => {
                ensure_group(&self.kv, &key, group, "$").await?;
                let n = self.next_consumer.fetch_add(1, Ordering::Relaxed);
                let consumer = format!("{}-{n}", self.consumer_prefix);
                Mode::Group {
                    group: group.clone(),
                    consumer: consumer.clone(),
                    acks: Arc::new(StreamAcker {
                        kv: self.kv.clone(),
                        key: key.clone(),
                        group: group.clone(),
                        pending: Mutex::new(HashMap::new()),
                    }),
                    // A new member looks for messages a gone member left at once.
                    next_claim: Instant::now(),
                    claim_cursor: "0-0".into(),
                    buffer: options.buffer.max(1),
                }
            }
        };
        let conn = self.reader().await?;
        Ok(Box::new(StreamSubscription {
            key,
            topic: topic.topic.clone(),
            kv: self.kv.clone(),
            client: self.client.clone(),
            timeout: self.timeout,
            ack_wait: self.ack_wait,
            conn: Some(conn),
            mode,
            buffered: VecDeque::new(),
            summary: self.summary.clone(),
        }))
    }
}

/// A subscription's own connection: its replies may take a whole BLOCK
/// and then a page of large entries.
fn reader_config(timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(BLOCK + timeout.max(READ_TIMEOUT)))
}

/// XGROUP CREATE at `from` (`$`: the stream's end; making the stream if
/// missing); a group that exists keeps its place.
async fn ensure_group(
    kv: &RedisKv,
    key: &str,
    group: &str,
    from: &str,
) -> Result<(), BackendError> {
    kv.query_unless::<()>(
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(group)
            .arg(from)
            .arg("MKSTREAM"),
        "BUSYGROUP",
    )
    .await
    .map(|_| ())
}

fn last_entry_id(reply: &Value) -> Option<String> {
    match reply {
        Value::Array(entries) => match entries.first()? {
            Value::Array(entry) => redis::from_redis_value_ref::<String>(entry.first()?).ok(),
            _ => None,
        },
        _ => None,
    }
}

enum Mode {
    Fanout {
        last_id: String,
    },
    Group {
        group: String,
        consumer: String,
        acks: Arc<StreamAcker>,
        next_claim: Instant,
        claim_cursor: String,
        /// Most messages this member holds unacknowledged (the
        /// subscriber's buffer, as JetStream's max_ack_pending).
        buffer: usize,
    },
}

struct StreamSubscription {
    key: String,
    topic: String,
    kv: Arc<RedisKv>,
    client: redis::Client,
    timeout: Duration,
    ack_wait: Duration,
    /// The blocking reader's own connection (None: reconnect first).
    conn: Option<redis::aio::MultiplexedConnection>,
    mode: Mode,
    buffered: VecDeque<Delivery>,
    summary: String,
}

/// Why a read failed: the group is gone (Redis restarted, the key was
/// deleted) or the connection is.
enum ReadError {
    NoGroup,
    Failed(String),
}

impl StreamSubscription {
    async fn connection(&mut self) -> Result<&mut redis::aio::MultiplexedConnection, ReadError> {
        if self.conn.is_none() {
            let config = reader_config(self.timeout);
            let conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| ReadError::Failed(e.kind_description()))?;
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| ReadError::Failed("no connection".into()))
    }

    /// One round: claims due (group), then one blocking read.
    async fn read(&mut self) -> Result<(), ReadError> {
        let key = self.key.clone();
        let topic = self.topic.clone();
        let ack_wait = self.ack_wait;
        match &mut self.mode {
            Mode::Fanout { last_id } => {
                let since = last_id.clone();
                let conn = self.connection().await?;
                let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(READ_COUNT)
                    .arg("BLOCK")
                    .arg(BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&since)
                    .query_async(conn)
                    .await
                    .map_err(read_error)?;
                let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
                let mut newest = None;
                for entry in entries {
                    newest = Some(entry.id.clone());
                    self.buffered
                        .push_back(Delivery::first(Arc::new(decode(&topic, &entry))));
                }
                if let (Some(id), Mode::Fanout { last_id }) = (newest, &mut self.mode) {
                    *last_id = id;
                }
                Ok(())
            }
            Mode::Group {
                group,
                consumer,
                acks,
                next_claim,
                claim_cursor,
                buffer,
            } => {
                let (group, consumer, acks) = (group.clone(), consumer.clone(), acks.clone());
                // Held unacknowledged already: read only what fits.
                let held = acks.pending.lock().len() + self.buffered.len();
                let count = buffer.saturating_sub(held).min(READ_COUNT);
                if count == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return Ok(());
                }
                let now = Instant::now();
                let claim_due = now >= *next_claim;
                let cursor = claim_cursor.clone();
                let until_claim = next_claim.saturating_duration_since(now);
                if claim_due {
                    let conn = self.connection().await?;
                    let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                        .arg(&key)
                        .arg(&group)
                        .arg(&consumer)
                        .arg(ack_wait.as_millis() as u64)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(count)
                        .query_async(conn)
                        .await
                        .map_err(read_error)?;
                    let attempts = if claimed.claimed.is_empty() {
                        HashMap::new()
                    } else {
                        let first = claimed
                            .claimed
                            .first()
                            .map(|e| e.id.clone())
                            .unwrap_or_default();
                        let last = claimed
                            .claimed
                            .last()
                            .map(|e| e.id.clone())
                            .unwrap_or_default();
                        // For the attempt counts only: the claimed entries
                        // are delivered (as attempt 2) even if this fails.
                        let pending: redis::RedisResult<StreamPendingCountReply> =
                            redis::cmd("XPENDING")
                                .arg(&key)
                                .arg(&group)
                                .arg(&first)
                                .arg(&last)
                                .arg(claimed.claimed.len())
                                .arg(&consumer)
                                .query_async(conn)
                                .await;
                        pending
                            .map(|p| {
                                p.ids
                                    .into_iter()
                                    .map(|p| (p.id, p.times_delivered))
                                    .collect()
                            })
                            .unwrap_or_default()
                    };
                    for entry in &claimed.claimed {
                        let message = decode(&topic, entry);
                        acks.pending
                            .lock()
                            .insert(message.id.clone(), entry.id.clone());
                        let attempt = attempts.get(&entry.id).copied().unwrap_or(2).max(2);
                        self.buffered.push_back(Delivery::Message {
                            message: Arc::new(message),
                            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                        });
                    }
                    if let Mode::Group {
                        next_claim,
                        claim_cursor,
                        ..
                    } = &mut self.mode
                    {
                        // A full page: there may be more, look again at once.
                        let more =
                            claimed.claimed.len() >= count && claimed.next_stream_id != "0-0";
                        *claim_cursor = claimed.next_stream_id;
                        *next_claim = if more {
                            Instant::now()
                        } else {
                            Instant::now() + (ack_wait / 2).max(Duration::from_millis(50))
                        };
                    }
                    if !self.buffered.is_empty() {
                        return Ok(());
                    }
                }
                let block = if claim_due {
                    BLOCK.min((ack_wait / 2).max(Duration::from_millis(50)))
                } else {
                    BLOCK.min(until_claim.max(Duration::from_millis(1)))
                };
                let conn = self.connection().await?;
                let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&group)
                    .arg(&consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("BLOCK")
                    .arg(block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query_async(conn)
                    .await
                    .map_err(read_error)?;
                for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                    let message = decode(&topic, &entry);
                    acks.pending
                        .lock()
                        .insert(message.id.clone(), entry.id.clone());
                    self.buffered.push_back(Delivery::first(Arc::new(message)));
                }
                Ok(())
            }
        }
    }
}

fn read_error(e: redis::RedisError) -> ReadError {
    if e.code() == Some("NOGROUP") {
        ReadError::NoGroup
    } else {
        ReadError::Failed(e.kind_description())
    }
}

#[async_trait]
impl BrokerSubscription for StreamSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        let mut delay = Duration::from_millis(50);
        loop {
            if let Some(delivery) = self.buffered.pop_front() {
                return Some(delivery);
            }
            match self.read().await {
                Ok(()) => delay = Duration::from_millis(50),
                Err(ReadError::NoGroup) => {
                    // The stream or its group went away (Redis restarted
                    // empty, the key was deleted): make it again, from the
                    // stream's start, so what was added since is delivered
                    // (twice at worst, never lost).
                    if let Mode::Group { group, .. } = &self.mode
                        && let Err(e) = ensure_group(&self.kv, &self.key, group, "0").await
                    {
                        tracing::debug!(stream = %self.key, error = %e, "cannot recreate the consumer group yet");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                }
                Err(ReadError::Failed(reason)) => {
                    tracing::debug!(backend = %self.summary, stream = %self.key, %reason, "stream read failed; reconnecting");
                    self.conn = None;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn acker(&self) -> Option<Arc<dyn Acker>> {
        match &self.mode {
            Mode::Group { acks, .. } => Some(acks.clone()),
            Mode::Fanout { .. } => None,
        }
    }
}

impl Drop for StreamSubscription {
    /// A leaving member's unacknowledged messages are made claimable now
    /// (their idle time set past `ack_wait`), so another member takes them
    /// at its next claim instead of after `ack_wait`.
    fn drop(&mut self) {
        let Mode::Group {
            group,
            consumer,
            acks,
            ..
        } = &self.mode
        else {
            return;
        };
        let entries: Vec<String> = acks.pending.lock().drain().map(|(_, e)| e).collect();
        let kv = self.kv.clone();
        let (key, group, consumer) = (self.key.clone(), group.clone(), consumer.clone());
        let idle = u64::try_from(self.ack_wait.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(10)
            .saturating_add(1000);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if !entries.is_empty() {
                    let mut cmd = redis::cmd("XCLAIM");
                    cmd.arg(&key).arg(&group).arg(&consumer).arg(0);
                    for entry in &entries {
                        cmd.arg(entry);
                    }
                    cmd.arg("IDLE").arg(idle).arg("JUSTID");
                    let _ = kv.query::<Value>(&cmd).await;
                }
                // A consumer holding nothing is forgotten, in one step: a
                // read still in flight on the dropped connection may hand it
                // entries at any moment, and deleting a consumer deletes
                // what it holds. One still holding messages stays (they
                // remain claimable).
                let script = redis::Script::new(DELETE_IF_IDLE);
                let _ = kv
                    .invoke::<Value>(script.key(&key).arg(&group).arg(&consumer))
                    .await;
            });
        }
    }
}

struct StreamAcker {
    kv: Arc<RedisKv>,
    key: String,
    group: String,
    /// Delivered, not yet acknowledged: Prism message id → entry id.
    pending: Mutex<HashMap<String, String>>,
}

#[async_trait]
impl Acker for StreamAcker {
    async fn ack(&self, ids: &[String]) -> Result<u32, BackendError> {
        let entries: Vec<String> = {
            let mut pending = self.pending.lock();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        if entries.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.key).arg(&self.group);
        for entry in &entries {
            cmd.arg(entry);
        }
        let acked: u64 = self.kv.query(&cmd).await?;
        Ok(u32::try_from(acked).unwrap_or(u32::MAX))
    }
}

/// An entry as a message: Prism's fields where present; an entry some
/// other client added is named by its entry id and dated by it.
fn decode(topic: &str, entry: &StreamId) -> BrokerMessage {
    let payload: Vec<u8> = entry.get(PAYLOAD).unwrap_or_default();
    let mut metadata: Vec<(String, String)> = entry
        .map
        .iter()
        .filter(|(k, _)| ![PAYLOAD, ID, TIMESTAMP].contains(&k.as_str()))
        .filter_map(|(k, v)| {
            redis::from_redis_value_ref::<String>(v)
                .ok()
                .map(|v| (k.clone(), v))
        })
        .collect();
    metadata.sort();
    let entry_ms = entry
        .id
        .split('-')
        .next()
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or_else(crate::clock::now_ms);
    BrokerMessage {
        id: entry
            .get::<String>(ID)
            .unwrap_or_else(|| format!("redis-{}", entry.id)),
        topic: topic.to_string(),
        payload: Bytes::from(payload),
        metadata,
        timestamp_ms: entry.get::<u64>(TIMESTAMP).unwrap_or(entry_ms),
    }
}

/// XGROUP DELCONSUMER, only when the consumer holds nothing.
const DELETE_IF_IDLE: &str = r"
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_from_another_client_reads_as_a_plain_message() {
        let entry = StreamId {
            id: "1733000000123-0".into(),
            map: HashMap::from([
                (PAYLOAD.to_string(), Value::BulkString(b"\x00raw".to_vec())),
                ("k2".to_string(), Value::BulkString(b"v2".to_vec())),
            ]),
            ..Default::default()
        };
        let m = decode("orders", &entry);
        assert_eq!(m.payload.as_ref(), b"\x00raw");
        assert_eq!(m.id, "redis-1733000000123-0");
        assert_eq!(m.timestamp_ms, 1_733_000_000_123);
        assert_eq!(m.metadata, vec![("k2".to_string(), "v2".to_string())]);
    }

    #[test]
    fn reserved_fields_are_refused_as_metadata() {
        let m = BrokerMessage {
            id: "1".into(),
            topic: "t".into(),
            payload: Bytes::new(),
            metadata: vec![("payload".into(), "x".into())],
            timestamp_ms: 1,
        };
        let err = RedisStreams::check(&[&m])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("reserved"), "{err}");
    }
}
