//! RedisKv: the `kv` capability on Redis. One multiplexed connection per
//! backend, managed (it reconnects by itself), created lazily so Prism starts
//! even while Redis is down; every command is bounded by a timeout so a dead
//! server fails requests fast instead of hanging them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisError};

use crate::backend::{BackendError, KvBackend, KvEntry, ScanPage, StorageQuota, Usage};
use crate::config::RedisConfig;

/// SCAN calls one page may make before returning what it has (with a cursor),
/// so a sparse keyspace cannot hold a request for long.
const MAX_SCANS_PER_PAGE: usize = 64;

pub struct RedisKv {
    /// "Redis 'cache' at 127.0.0.1:6379/0": never the password.
    summary: String,
    conn: ConnectionManager,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RedisConfigError(pub String);

impl RedisKv {
    /// A backend with its own connection.
    pub fn new(name: &str, config: &RedisConfig) -> Result<Arc<RedisKv>, RedisConfigError> {
        let conn = RedisKv::connect(config)?;
        RedisKv::with_connection(name, config, conn)
    }

    /// The managed connection for `config` (created lazily: nothing is dialled yet).
    pub fn connect(config: &RedisConfig) -> Result<ConnectionManager, RedisConfigError> {
        let client = super::client(config)?;
        let timeout = Duration::from_millis(config.timeout_ms);
        // One quick connection attempt per request while Redis is down (no
        // backoff chain to wait behind); the manager reconnects on the next call.
        // Every call is bounded once, by `bounded` (reconnect included): a
        // response timeout here too would arm a second timer per command.
        let manager_config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None);
        ConnectionManager::new_lazy_with_config(client, manager_config).map_err(|e| {
            RedisConfigError(format!(
                "cannot set up the connection ({})",
                e.kind_description()
            ))
        })
    }

    /// A backend over a connection that may be shared with other backends
    /// naming the same URL.
    pub fn with_connection(
        name: &str,
        config: &RedisConfig,
        conn: ConnectionManager,
    ) -> Result<Arc<RedisKv>, RedisConfigError> {
        // The address for messages only: no client (and no TLS files read) for it.
        let info =
            redis::IntoConnectionInfo::into_connection_info(config.url.as_str()).map_err(|e| {
                RedisConfigError(format!("not a usable Redis URL ({})", e.kind_description()))
            })?;
        let summary = format!(
            "Redis '{name}' at {}/{}",
            info.addr(),
            info.redis_settings().db()
        );
        let timeout = Duration::from_millis(config.timeout_ms);
        Ok(Arc::new(RedisKv {
            summary,
            conn,
            timeout,
        }))
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BackendError> {
        let mut conn = self.conn.clone();
        self.bounded(cmd.query_async::<T>(&mut conn)).await
    }

    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BackendError> {
        let mut conn = self.conn.clone();
        self.bounded(invocation.invoke_async::<T>(&mut conn)).await
    }

    pub(crate) fn summary_text(&self) -> &str {
        &self.summary
    }

    pub(crate) async fn query_pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, BackendError> {
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<T>(&mut conn)).await
    }

    /// `query`, with the Redis error `code` answered as `None` (an
    /// expected refusal, such as BUSYGROUP for a group that exists).
    pub(crate) async fn query_unless<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        code: &str,
    ) -> Result<Option<T>, BackendError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(Some(v)),
            Ok(Err(e)) if e.code() == Some(code) => Ok(None),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// Runs one Redis call within the backend timeout, mapping its errors.
    pub(crate) async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| self.error(e)),
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&self) -> BackendError {
        BackendError::Unavailable {
            backend: self.summary.clone(),
            reason: format!("no answer within {} ms", self.timeout.as_millis()),
        }
    }

    /// The one mapping of Redis errors; texts name the backend, never the URL.
    pub(crate) fn error(&self, e: RedisError) -> BackendError {
        let unavailable = |reason: &str| BackendError::Unavailable {
            backend: self.summary.clone(),
            reason: reason.into(),
        };
        if e.is_connection_refusal() {
            unavailable("connection refused")
        } else if e.is_timeout() {
            unavailable("timed out")
        } else if e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error() {
            unavailable("connection lost")
        } else if e.code() == Some("EXECABORT") {
            // Only batches run as MULTI/EXEC; Redis discarded the whole
            // transaction because it refused a queued command, in practice
            // for maxmemory.
            BackendError::CapacityExceeded(format!(
                "{} refused the whole batch (EXECABORT: a command was rejected while queueing, usually for maxmemory); nothing was written",
                self.summary
            ))
        } else if e.code() == Some("OOM") {
            BackendError::CapacityExceeded(format!(
                "{} is out of memory (maxmemory reached)",
                self.summary
            ))
        } else if matches!(
            e.code(),
            Some("LOADING" | "READONLY" | "MASTERDOWN" | "BUSY")
        ) {
            unavailable(&format!("server answered {}", e.code().unwrap_or_default()))
        } else {
            BackendError::Internal(format!("{}: {}", self.summary, e.kind_description()))
        }
    }
}

pub(crate) trait KindDescription {
    fn kind_description(&self) -> String;
}

impl KindDescription for RedisError {
    /// The error's category and code without its detail (which can quote input).
    fn kind_description(&self) -> String {
        match self.code() {
            Some(code) => format!("{:?} {code}", self.kind()),
            None => format!("{:?}", self.kind()),
        }
    }
}

fn set_cmd(key: &str, value: &[u8], ttl: Option<Duration>) -> Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value);
    if let Some(ttl) = ttl {
        cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
    }
    cmd
}

/// A literal prefix as a SCAN MATCH pattern: glob metacharacters escaped.
fn match_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 8);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

/// Position of a scan: Redis's SCAN cursor and how many keys of the batch
/// that cursor yields were already returned.
fn encode_cursor(redis_cursor: u64, skip: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("{redis_cursor}:{skip}"))
}

fn decode_cursor(cursor: &str) -> Result<(u64, usize), BackendError> {
    let text = URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or_else(BackendError::malformed_cursor)?;
    let (c, s) = text
        .split_once(':')
        .ok_or_else(BackendError::malformed_cursor)?;
    match (c.parse(), s.parse()) {
        (Ok(c), Ok(s)) => Ok((c, s)),
        _ => Err(BackendError::malformed_cursor()),
    }
}

#[async_trait]
impl KvBackend for RedisKv {
    fn summary(&self) -> String {
        self.summary.clone()
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        let value: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(key)).await?;
        Ok(value.map(Bytes::from))
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.query::<()>(&set_cmd(key, &value, ttl)).await
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let n: u64 = self.query(redis::cmd("DEL").arg(key)).await?;
        Ok(n > 0)
    }

    async fn exists(&self, key: &str) -> Result<bool, BackendError> {
        let n: u64 = self.query(redis::cmd("EXISTS").arg(key)).await?;
        Ok(n > 0)
    }

    async fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, BackendError> {
        let limit = limit.max(1);
        let pattern = match_pattern(prefix);
        let (mut redis_cursor, mut skip) = match cursor {
            Some(c) => decode_cursor(c)?,
            None => (0, 0),
        };
        let count = limit.max(100);
        let mut keys = Vec::new();
        for _ in 0..MAX_SCANS_PER_PAGE {
            let (next, batch): (u64, Vec<Vec<u8>>) = self
                .query(
                    redis::cmd("SCAN")
                        .arg(redis_cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(count),
                )
                .await?;
            // Keys written by other clients may not be UTF-8; they cannot be named through Prism.
            let batch: Vec<String> = batch
                .into_iter()
                .filter_map(|k| String::from_utf8(k).ok())
                .collect();
            let fresh = batch.get(skip.min(batch.len())..).unwrap_or_default();
            let room = limit - keys.len();
            if fresh.len() > room {
                // Resume inside this batch: same SCAN cursor, skipping what was returned.
                keys.extend_from_slice(&fresh[..room]);
                return Ok(ScanPage {
                    keys,
                    cursor: Some(encode_cursor(redis_cursor, skip + room)),
                });
            }
            keys.extend_from_slice(fresh);
            skip = 0;
            if next == 0 {
                return Ok(ScanPage { keys, cursor: None });
            }
            redis_cursor = next;
            if keys.len() == limit {
                break;
            }
        }
        Ok(ScanPage {
            keys,
            cursor: Some(encode_cursor(redis_cursor, 0)),
        })
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> = self.query(redis::cmd("MGET").arg(keys)).await?;
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn set_many(&self, entries: Vec<KvEntry>) -> Result<(), BackendError> {
        if entries.is_empty() {
            return Ok(());
        }
        // MULTI/EXEC: one round trip, applied all together.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for e in &entries {
            pipe.add_command(set_cmd(&e.key, &e.value, e.ttl)).ignore();
        }
        self.query_pipeline::<()>(&pipe).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<u64, BackendError> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.query(redis::cmd("DEL").arg(keys)).await
    }

    async fn set_many_within(
        &self,
        quota: &StorageQuota,
        entries: Vec<KvEntry>,
    ) -> Result<(), BackendError> {
        self.set_many_within_quota(quota, entries).await
    }

    async fn delete_many_within(
        &self,
        quota: &StorageQuota,
        keys: &[String],
    ) -> Result<u64, BackendError> {
        self.delete_many_within_quota(quota, keys).await
    }

    async fn usage(&self, scope: &str) -> Result<Usage, BackendError> {
        self.tracked_usage(scope).await
    }
}

#[cfg(test)]
mod tests {
    fn redis_config(url: &str) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            timeout_ms: 100,
            stream: false,
            max_age_secs: 60,
            max_len: None,
            ack_wait_ms: 1000,
            channel_prefix: String::new(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }

    use super::*;

    #[test]
    fn prefixes_are_literal_in_match_patterns() {
        assert_eq!(match_pattern("a*b?[c]\\d"), "a\\*b\\?\\[c\\]\\\\d*");
        assert_eq!(match_pattern(""), "*");
    }

    #[test]
    fn cursors_roundtrip_and_reject_garbage() {
        let c = encode_cursor(123456, 7);
        assert!(matches!(decode_cursor(&c), Ok((123456, 7))));
        assert!(decode_cursor("nope").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("1")).is_err());
    }

    #[test]
    fn summary_and_errors_never_show_the_password() -> Result<(), RedisConfigError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RedisConfigError(e.to_string()))?;
        let _guard = rt.enter();
        let config = redis_config("redis://user:s3cret@127.0.0.1:1/2");
        let kv = RedisKv::new("cache", &config)?;
        assert_eq!(kv.summary(), "Redis 'cache' at 127.0.0.1:1/2");
        let err = rt
            .block_on(kv.get("k"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("Redis 'cache' at 127.0.0.1:1/2 is unavailable"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        assert!(RedisKv::new("bad", &redis_config("http://x")).is_err());
        Ok(())
    }
}
