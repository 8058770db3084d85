//! RedisRegistry: identities of a namespace in three Redis structures that
//! share one cluster hash tag (`prism:reg:{<namespace>}:…`):
//! - `ids`: a sorted set of identities (all score 0), so a namespace is
//!   listed in identity order with ZRANGEBYLEX from a cursor — exactly once
//!   across pages, and never a keyspace-wide SCAN;
//! - `records`: a hash identity → `<registered_at>:<ttl or empty>:<metadata>`
//!   (plain text: the metadata is stored as the pattern gave it, with no
//!   JSON-in-JSON escaping to undo on every listing);
//! - `exp`: a sorted set identity → expiry (ms), for identities with a TTL.
//!
//! Every write is one Lua script, so several Prism processes on one Redis
//! form one registry: a read never returns a record past its expiry, and
//! writes forget expired identities as they go. Times come from the caller.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use redis::Script;

use super::kv::RedisKv;
use crate::backend::BackendError;
use crate::backend::registry::LIST_BYTES;
use crate::backend::registry::{
    IdentityRecord, NewIdentity, PutOutcome, RegistryBackend, RegistryPage, registry_full,
};

pub struct RedisRegistry {
    kv: Arc<RedisKv>,
}

/// A record as stored in the `records` hash (the expiry lives in `exp`).
fn encode(record: &IdentityRecord) -> String {
    let ttl = record.ttl_ms.map(|t| t.to_string()).unwrap_or_default();
    format!("{}:{ttl}:{}", record.registered_at_ms, record.metadata)
}

/// Forgets up to 256 identities whose TTL has passed. KEYS: ids, records,
/// exp; ARGV[1]: now (ms).
const FORGET_EXPIRED: &str = r"
local function forget(limit)
  local gone
  if limit then
    gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, limit)
  else
    gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
  end
  for _, id in ipairs(gone) do
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
  end
end
forget(256)
";

/// ARGV: now, identity, stored record, expiry (0 = none), replace (0/1),
/// max identities (0 = no limit). Returns {'stored'}, {'exists', record,
/// expiry or ''} or {'full'}.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{FORGET_EXPIRED}{}",
        r"
local id, record, expires = ARGV[2], ARGV[3], tonumber(ARGV[4])
local replace, max = ARGV[5] == '1', tonumber(ARGV[6])
local current = redis.call('HGET', KEYS[2], id)
local current_exp = redis.call('ZSCORE', KEYS[3], id)
if current and current_exp and tonumber(current_exp) <= tonumber(ARGV[1]) then
  current = false
end
if current and not replace then
  return {'exists', current, current_exp or ''}
end
if not current and max > 0 and redis.call('ZCARD', KEYS[1]) >= max then
  forget(nil)
  if redis.call('ZCARD', KEYS[1]) >= max then
    return {'full'}
  end
end
redis.call('HSET', KEYS[2], id, record)
redis.call('ZADD', KEYS[1], 0, id)
if expires > 0 then
  redis.call('ZADD', KEYS[3], expires, id)
else
  redis.call('ZREM', KEYS[3], id)
end
return {'stored'}
"
    ))
});

/// ARGV: now, identity, ttl (0 = none). Returns {record, expiry or ''} or
/// false when the identity is not live. The caller passes the TTL it read,
/// and the script checks the record is still the one with that TTL.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local record = redis.call('HGET', KEYS[2], ARGV[2])
if not record then return false end
local exp = redis.call('ZSCORE', KEYS[3], ARGV[2])
if exp and tonumber(exp) <= tonumber(ARGV[1]) then return false end
local ttl = tonumber(ARGV[3])
if not exp or ttl == 0 then return {record, ''} end
local renewed = tonumber(ARGV[1]) + ttl
redis.call('ZADD', KEYS[3], renewed, ARGV[2])
return {record, string.format('%.0f', renewed)}
",
    )
});

/// ARGV: now, identity. 1 if a live record was removed.
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local exp = redis.call('ZSCORE', KEYS[3], ARGV[2])
local existed = redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if existed == 1 and (not exp or tonumber(exp) > tonumber(ARGV[1])) then return 1 end
return 0
",
    )
});

/// ARGV: now, after ('' = from the start), limit, byte budget. Returns
/// {identities, records, expiries, n} — one round trip, three commands
/// (per-identity `redis.call`s cost more than the data) — where only the
/// first n entries fit the byte budget.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local start = '-'
if ARGV[2] ~= '' then start = '(' .. ARGV[2] end
local ids = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, tonumber(ARGV[3]))
if #ids == 0 then return {{}, {}, {}, 0} end
local records = redis.call('HMGET', KEYS[2], unpack(ids))
local expiries = redis.call('ZMSCORE', KEYS[3], unpack(ids))
local budget = tonumber(ARGV[4])
local n = #ids
for i = 1, #ids do
  budget = budget - #ids[i] - (records[i] and #records[i] or 0)
  if budget <= 0 then
    n = i
    break
  end
end
return {ids, records, expiries, n}
",
    )
});

/// Forgets every expired identity, then counts. ARGV: now.
static COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{FORGET_EXPIRED}{}",
        r"
forget(nil)
return redis.call('ZCARD', KEYS[1])
"
    ))
});

/// The namespace's three keys; the braces make them one cluster hash slot.
fn keys(namespace: &str) -> [String; 3] {
    ["ids", "records", "exp"].map(|part| format!("prism:reg:{{{namespace}}}:{part}"))
}

impl RedisRegistry {
    pub fn new(kv: Arc<RedisKv>) -> Arc<RedisRegistry> {
        Arc::new(RedisRegistry { kv })
    }

    fn decode(
        &self,
        identity: String,
        stored: &str,
        expiry: &str,
    ) -> Result<IdentityRecord, BackendError> {
        let malformed = || {
            BackendError::Internal(format!(
                "{}: a registry record is not in Prism's format",
                self.kv.summary_text()
            ))
        };
        let mut parts = stored.splitn(3, ':');
        let (Some(registered), Some(ttl), Some(metadata)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        Ok(IdentityRecord {
            identity,
            metadata: metadata.to_string(),
            registered_at_ms: registered.parse().map_err(|_| malformed())?,
            expires_at_ms: expiry.parse::<f64>().ok().map(|e| e as u64),
            ttl_ms: if ttl.is_empty() {
                None
            } else {
                Some(ttl.parse().map_err(|_| malformed())?)
            },
        })
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        namespace: &str,
        args: &[String],
    ) -> Result<T, BackendError> {
        let mut invocation = script.prepare_invoke();
        invocation.key(&keys(namespace)[..]);
        for arg in args {
            invocation.arg(arg);
        }
        self.kv.invoke(&invocation).await
    }
}

#[async_trait]
impl RegistryBackend for RedisRegistry {
    fn summary(&self) -> String {
        self.kv.summary_text().to_string()
    }

    async fn ping(&self) -> Result<(), BackendError> {
        use crate::backend::KvBackend as _;
        self.kv.ping().await
    }

    async fn put(
        &self,
        namespace: &str,
        entry: NewIdentity,
        replace: bool,
        max_identities: u64,
        now_ms: u64,
    ) -> Result<PutOutcome, BackendError> {
        let record = entry.record(now_ms);
        let stored = encode(&record);
        let answer: Vec<String> = self
            .run(
                &PUT,
                namespace,
                &[
                    now_ms.to_string(),
                    record.identity.clone(),
                    stored,
                    record.expires_at_ms.unwrap_or(0).to_string(),
                    u8::from(replace).to_string(),
                    max_identities.to_string(),
                ],
            )
            .await?;
        match answer.as_slice() {
            [stored] if stored == "stored" => Ok(PutOutcome::Stored(record)),
            [exists, current, expiry] if exists == "exists" => Ok(PutOutcome::Exists(
                self.decode(record.identity, current, expiry)?,
            )),
            [full] if full == "full" => Err(registry_full(namespace, max_identities)),
            other => Err(BackendError::Internal(format!(
                "{}: unexpected registry answer {other:?}",
                self.kv.summary_text()
            ))),
        }
    }

    async fn get(
        &self,
        namespace: &str,
        identity: &str,
        now_ms: u64,
    ) -> Result<Option<IdentityRecord>, BackendError> {
        let [_, records, exp] = keys(namespace);
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(&records).arg(identity);
        pipe.cmd("ZSCORE").arg(&exp).arg(identity);
        let (stored, expiry): (Option<String>, Option<String>) =
            self.kv.query_pipeline(&pipe).await?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let record = self.decode(
            identity.to_string(),
            &stored,
            expiry.as_deref().unwrap_or(""),
        )?;
        Ok(Some(record).filter(|r| r.live(now_ms)))
    }

    async fn renew(
        &self,
        namespace: &str,
        identity: &str,
        now_ms: u64,
    ) -> Result<Option<IdentityRecord>, BackendError> {
        let Some(current) = self.get(namespace, identity, now_ms).await? else {
            return Ok(None);
        };
        let answer: Option<(String, String)> = self
            .run(
                &RENEW,
                namespace,
                &[
                    now_ms.to_string(),
                    identity.to_string(),
                    current.ttl_ms.unwrap_or(0).to_string(),
                ],
            )
            .await?;
        answer
            .map(|(stored, expiry)| self.decode(identity.to_string(), &stored, &expiry))
            .transpose()
    }

    async fn remove(
        &self,
        namespace: &str,
        identity: &str,
        now_ms: u64,
    ) -> Result<bool, BackendError> {
        let removed: u8 = self
            .run(
                &REMOVE,
                namespace,
                &[now_ms.to_string(), identity.to_string()],
            )
            .await?;
        Ok(removed == 1)
    }

    async fn list(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<RegistryPage, BackendError> {
        let limit = limit.max(1);
        type Listed = (Vec<String>, Vec<Option<String>>, Vec<Option<String>>, usize);
        let (identities, stored, expiries, fit): Listed = self
            .run(
                &LIST,
                namespace,
                &[
                    now_ms.to_string(),
                    after.unwrap_or("").to_string(),
                    limit.to_string(),
                    LIST_BYTES.to_string(),
                ],
            )
            .await?;
        let looked_at = identities.len();
        let mut records = Vec::with_capacity(fit);
        let mut last = None;
        for ((identity, stored), expiry) in
            identities.into_iter().zip(stored).zip(expiries).take(fit)
        {
            last = Some(identity.clone());
            // An identity removed between the index and the record.
            let Some(stored) = stored else {
                continue;
            };
            let record = self.decode(identity, &stored, expiry.as_deref().unwrap_or(""))?;
            if record.live(now_ms) {
                records.push(record);
            }
        }
        // A full (or byte-bounded) page may have more after it; resume after
        // the last identity looked at.
        let cursor = if looked_at == limit || fit < looked_at {
            last
        } else {
            None
        };
        Ok(RegistryPage { records, cursor })
    }

    async fn count(&self, namespace: &str, now_ms: u64) -> Result<u64, BackendError> {
        self.run(&COUNT, namespace, &[now_ms.to_string()]).await
    }
}
