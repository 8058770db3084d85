//! Namespace storage quotas on Redis. A namespace with a quota keeps a
//! ledger beside its keys — each key's size (hash), the TTL index of keys
//! that expire (sorted set) and the byte total — and every write or delete
//! in it runs as one Lua script that checks the quota and updates the ledger
//! atomically with the data, so several Prism processes on one Redis share
//! one exact account. Keys that expired are forgotten at the next write.
//!
//! Ledger keys are `__prism:quota:<namespace>:…`; they contain no '/', so no
//! namespace's data key (`<namespace>/<key>`) can ever be one of them.

use std::sync::LazyLock;

use redis::Script;

use super::kv::RedisKv;
use crate::backend::{BackendError, KvEntry, QuotaKind, StorageQuota, Usage};

/// Forgets ledger entries of keys whose TTL has passed (bounded per run).
/// KEYS[1] sizes, KEYS[2] expiry, KEYS[3] byte total. Leaves `now` (ms) set.
const RECONCILE: &str = r"
local sizes, expiry, total = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 512)
for _, k in ipairs(gone) do
  if redis.call('EXISTS', k) == 0 then
    local size = redis.call('HGET', sizes, k)
    if size then
      redis.call('HDEL', sizes, k)
      redis.call('DECRBY', total, size)
    end
  end
  redis.call('ZREM', expiry, k)
end
";

/// ARGV: max_bytes, max_keys (0 = none), then value and ttl_ms (0 = none)
/// per data key KEYS[4..]. Returns 'ok', or the quota that refused.
static SET_WITHIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{RECONCILE}{}",
        r"
local max_bytes, max_keys = tonumber(ARGV[1]), tonumber(ARGV[2])
local bytes = tonumber(redis.call('GET', total) or '0')
local keys = redis.call('HLEN', sizes)
local seen = {}
local n = #KEYS - 3
for i = 1, n do
  local k = KEYS[3 + i]
  local old = seen[k] or redis.call('HGET', sizes, k)
  if old then bytes = bytes - tonumber(old) else keys = keys + 1 end
  local new = #k + #ARGV[1 + 2 * i]
  bytes = bytes + new
  seen[k] = new
end
if max_bytes > 0 and bytes > max_bytes then return 'bytes' end
if max_keys > 0 and keys > max_keys then return 'keys' end
for i = 1, n do
  local k, v, ttl = KEYS[3 + i], ARGV[1 + 2 * i], tonumber(ARGV[2 + 2 * i])
  if ttl > 0 then
    redis.call('SET', k, v, 'PX', ttl)
    redis.call('ZADD', expiry, now + ttl, k)
  else
    redis.call('SET', k, v)
    redis.call('ZREM', expiry, k)
  end
  redis.call('HSET', sizes, k, #k + #v)
end
redis.call('SET', total, bytes)
return 'ok'
"
    ))
});

/// Deletes data keys KEYS[4..] and their ledger entries; returns how many existed.
static DELETE_WITHIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local removed = 0
for i = 4, #KEYS do
  local k = KEYS[i]
  removed = removed + redis.call('DEL', k)
  local size = redis.call('HGET', KEYS[1], k)
  if size then
    redis.call('HDEL', KEYS[1], k)
    redis.call('DECRBY', KEYS[3], size)
  end
  redis.call('ZREM', KEYS[2], k)
end
return removed
",
    )
});

/// Returns {bytes, keys} after forgetting expired keys.
static USAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{RECONCILE}{}",
        r"
return {tonumber(redis.call('GET', total) or '0'), redis.call('HLEN', sizes)}
"
    ))
});

/// The three ledger keys of the namespace whose key prefix is `scope`.
fn ledger(scope: &str) -> [String; 3] {
    let namespace = scope.strip_suffix('/').unwrap_or(scope);
    ["sizes", "expiry", "bytes"].map(|part| format!("__prism:quota:{namespace}:{part}"))
}

impl RedisKv {
    pub(crate) async fn set_many_within_quota(
        &self,
        quota: &StorageQuota,
        entries: Vec<KvEntry>,
    ) -> Result<(), BackendError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut invocation = SET_WITHIN.prepare_invoke();
        invocation.key(&ledger(&quota.scope)[..]);
        invocation
            .arg(quota.max_bytes.unwrap_or(0))
            .arg(quota.max_keys.unwrap_or(0));
        for e in &entries {
            invocation.key(&e.key);
            invocation
                .arg(e.value.as_ref())
                .arg(e.ttl.map_or(0, |t| t.as_millis().max(1) as u64));
        }
        let answer: String = self.invoke(&invocation).await?;
        match answer.as_str() {
            "ok" => Ok(()),
            "bytes" => Err(quota.exceeded(QuotaKind::Bytes)),
            "keys" => Err(quota.exceeded(QuotaKind::Keys)),
            other => Err(BackendError::Internal(format!(
                "{}: unexpected quota script answer '{other}'",
                self.summary_text()
            ))),
        }
    }

    pub(crate) async fn delete_many_within_quota(
        &self,
        quota: &StorageQuota,
        keys: &[String],
    ) -> Result<u64, BackendError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut invocation = DELETE_WITHIN.prepare_invoke();
        invocation.key(&ledger(&quota.scope)[..]);
        invocation.key(keys);
        self.invoke(&invocation).await
    }

    pub(crate) async fn tracked_usage(&self, scope: &str) -> Result<Usage, BackendError> {
        let mut invocation = USAGE.prepare_invoke();
        invocation.key(&ledger(scope)[..]);
        let (bytes, keys): (i64, u64) = self.invoke(&invocation).await?;
        Ok(Usage {
            bytes: bytes.max(0) as u64,
            keys,
        })
    }
}
