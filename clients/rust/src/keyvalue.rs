//! `KeyValue`: the KeyValue API of one namespace.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tonic::transport::Channel;

use crate::call::Calls;
use crate::error::{Error, Result};
use crate::pb;
use crate::pb::key_value_client::KeyValueClient;

/// Key-value operations on one namespace, from
/// [`Client::key_value`](crate::Client::key_value).
///
/// Cheap to clone (a clone shares the connection): clone it into tasks
/// rather than wrapping it in an `Arc`. Reads, [`set`](KeyValue::set) and
/// [`set_many`](KeyValue::set_many) are retried when they fail UNAVAILABLE;
/// deletes are not (the second attempt would answer "did not exist").
///
/// Keys are non-empty UTF-8 of bounded length and values bounded bytes
/// (the namespace's limits; over one is [`Error::InvalidArgument`] and
/// nothing is written). An empty value is a value.
#[derive(Clone, Debug)]
pub struct KeyValue {
    client: KeyValueClient<Channel>,
    calls: Calls,
}

/// One page of a [`KeyValue::scan_page`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScanPage {
    pub keys: Vec<String>,
    /// Where the next page starts; `None` when the scan is complete.
    pub next_cursor: Option<String>,
}

impl KeyValue {
    pub(crate) fn new(channel: Channel, calls: Calls, max_message_bytes: usize) -> KeyValue {
        let client = KeyValueClient::new(channel)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        KeyValue { client, calls }
    }

    /// The namespace this handle's calls name.
    pub fn namespace(&self) -> &str {
        self.calls.namespace()
    }

    /// The value of `key`; [`Error::NotFound`] if it is absent or expired.
    ///
    /// ```no_run
    /// # async fn example(kv: prism_client::KeyValue) -> Result<(), prism_client::Error> {
    /// use prism_client::Error;
    ///
    /// match kv.get("user:1").await {
    ///     Ok(value) => println!("user:1 = {value:?}"),
    ///     Err(Error::NotFound { .. }) => println!("no user:1"),
    ///     Err(other) => return Err(other),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let reply = self
            .calls
            .idempotent(
                &self.client,
                || pb::GetRequest {
                    key: key.to_owned(),
                },
                |mut c, r| async move { c.get(r).await },
            )
            .await?;
        Ok(reply.value)
    }

    /// Writes `value` (anything that converts into [`Bytes`]: `Vec<u8>`,
    /// `String`, `&'static str`, ...), replacing any previous value and TTL.
    /// The key gets the namespace's default TTL (none unless configured).
    ///
    /// ```no_run
    /// # async fn example(kv: prism_client::KeyValue) -> Result<(), prism_client::Error> {
    /// kv.set("user:1", "alice").await?;
    /// kv.set("avatar:1", vec![0x89, 0x50, 0x4e, 0x47]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set(&self, key: &str, value: impl Into<Bytes>) -> Result<()> {
        self.put(key, value.into(), None).await
    }

    /// Like [`set`](KeyValue::set), expiring after `ttl` (rounded up to
    /// whole milliseconds; zero is [`Error::InvalidArgument`]).
    ///
    /// ```no_run
    /// # async fn example(kv: prism_client::KeyValue) -> Result<(), prism_client::Error> {
    /// use std::time::Duration;
    ///
    /// kv.set_with_ttl("session:9", "token", Duration::from_secs(30)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_with_ttl(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<()> {
        let ttl_ms = ttl_ms(ttl)?;
        self.put(key, value.into(), Some(ttl_ms)).await
    }

    async fn put(&self, key: &str, value: Bytes, ttl_ms: Option<u64>) -> Result<()> {
        self.calls
            .idempotent(
                &self.client,
                || pb::SetRequest {
                    key: key.to_owned(),
                    value: value.clone(),
                    ttl_ms,
                },
                |mut c, r| async move { c.set(r).await },
            )
            .await?;
        Ok(())
    }

    /// Removes `key`; returns whether it existed. A missing key is not an
    /// error.
    ///
    /// ```no_run
    /// # async fn example(kv: prism_client::KeyValue) -> Result<(), prism_client::Error> {
    /// let existed = kv.delete("user:1").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let request = pb::DeleteRequest {
            key: key.to_owned(),
        };
        let reply = self
            .calls
            .once(&self.client, request, |mut c, r| async move {
                c.delete(r).await
            })
            .await?;
        Ok(reply.existed)
    }

    /// Whether `key` holds a live value.
    ///
    /// ```no_run
    /// # async fn example(kv: prism_client::KeyValue) -> Result<(), prism_client::Error> {
    /// if kv.exists("user:1").await? {
    ///     println!("user:1 is there");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn exists(&self, key: &str) -> Result<bool> {
        let reply = self
            .calls
            .idempotent(
                &self.client,
                || pb::ExistsRequest {
                    key: key.to_owned(),
                },
                |mut c, r| async move { c.exists(r).await },
            )
            .await?;
        Ok(reply.exists)
    }

    /// One page of the keys starting with `prefix` (a trailing `*` means
    /// the same as leaving it off; empty: every key), from `cursor` (empty:
    /// the beginning; else a previous page's `next_cursor`). `limit` is the
    /// page size, 0 for the namespace's default (capped by its maximum).
    ///
    /// ```no_run
    /// # async fn example(kv: prism_client::KeyValue) -> Result<(), prism_client::Error> {
    /// let mut cursor = String::new();
    /// loop {
    ///     let page = kv.scan_page("user:", &cursor, 100).await?;
    ///     for key in &page.keys {
    ///         println!("{key}");
    ///     }
    ///     match page.next_cursor {
    ///         Some(next) => cursor = next,
    ///         None => break,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn scan_page(&self, prefix: &str, cursor: &str, limit: u32) -> Result<ScanPage> {
        let reply = self
            .calls
            .idempotent(
                &self.client,
                || pb::ScanRequest {
                    prefix: prefix.to_owned(),
                    cursor: cursor.to_owned(),
                    limit,
                },
                |mut c, r| async move { c.scan(r).await },
            )
            .await?;
        Ok(ScanPage {
            keys: reply.keys,
            next_cursor: Some(reply.next_cursor).filter(|c| !c.is_empty()),
        })
    }

    /// Every live key starting with `prefix`, following all pages (each key
    /// exactly once). `"user:*"` means `"user:"`.
    ///
    /// ```no_run
    /// # async fn example(kv: prism_client::KeyValue) -> Result<(), prism_client::Error> {
    /// let users = kv.scan("user:").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn scan(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self.scan_page(prefix, &cursor, 0).await?;
            keys.extend(page.keys);
            match page.next_cursor {
                Some(next) => cursor = next,
                None => return Ok(keys),
            }
        }
    }

    /// The values of those of `keys` that exist, in one round trip.
    ///
    /// ```no_run
    /// # async fn example(kv: prism_client::KeyValue) -> Result<(), prism_client::Error> {
    /// let found = kv.get_many(["user:1", "user:2"]).await?;
    /// if let Some(alice) = found.get("user:1") {
    ///     println!("{alice:?}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_many<I, S>(&self, keys: I) -> Result<HashMap<String, Bytes>>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let request = pb::BatchGetRequest {
            keys: keys.into_iter().map(Into::into).collect(),
        };
        if request.keys.is_empty() {
            return Ok(HashMap::new());
        }
        let reply = self
            .calls
            .idempotent(
                &self.client,
                || request.clone(),
                |mut c, r| async move { c.batch_get(r).await },
            )
            .await?;
        Ok(reply
            .items
            .into_iter()
            .filter(|item| item.found)
            .map(|item| (item.key, item.value))
            .collect())
    }

    /// Writes every entry or none: every entry is validated before any is
    /// written, so one bad entry rejects the batch.
    ///
    /// ```no_run
    /// # async fn example(kv: prism_client::KeyValue) -> Result<(), prism_client::Error> {
    /// kv.set_many([("user:1", "alice"), ("user:2", "bob")]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_many<I, K, V>(&self, entries: I) -> Result<()>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<Bytes>,
    {
        self.put_many(entries, None).await
    }

    /// Like [`set_many`](KeyValue::set_many), every entry expiring after `ttl`.
    ///
    /// ```no_run
    /// # async fn example(kv: prism_client::KeyValue) -> Result<(), prism_client::Error> {
    /// use std::time::Duration;
    ///
    /// kv.set_many_with_ttl([("otp:1", "1234")], Duration::from_secs(60)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_many_with_ttl<I, K, V>(&self, entries: I, ttl: Duration) -> Result<()>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<Bytes>,
    {
        let ttl_ms = ttl_ms(ttl)?;
        self.put_many(entries, Some(ttl_ms)).await
    }

    async fn put_many<I, K, V>(&self, entries: I, ttl_ms: Option<u64>) -> Result<()>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<Bytes>,
    {
        let request = pb::BatchSetRequest {
            entries: entries
                .into_iter()
                .map(|(key, value)| pb::SetRequest {
                    key: key.into(),
                    value: value.into(),
                    ttl_ms,
                })
                .collect(),
        };
        if request.entries.is_empty() {
            return Ok(());
        }
        self.calls
            .idempotent(
                &self.client,
                || request.clone(),
                |mut c, r| async move { c.batch_set(r).await },
            )
            .await?;
        Ok(())
    }

    /// Removes `keys`; returns how many of them existed.
    ///
    /// ```no_run
    /// # async fn example(kv: prism_client::KeyValue) -> Result<(), prism_client::Error> {
    /// let removed = kv.delete_many(["user:1", "user:2"]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete_many<I, S>(&self, keys: I) -> Result<u32>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let request = pb::BatchDeleteRequest {
            keys: keys.into_iter().map(Into::into).collect(),
        };
        if request.keys.is_empty() {
            return Ok(0);
        }
        let reply = self
            .calls
            .once(&self.client, request, |mut c, r| async move {
                c.batch_delete(r).await
            })
            .await?;
        Ok(reply.deleted)
    }
}

/// A TTL as the wire's whole milliseconds, rounded up so it never shortens.
pub(crate) fn ttl_ms(ttl: Duration) -> Result<u64> {
    if ttl.is_zero() {
        return Err(Error::invalid("ttl must be positive"));
    }
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_milliseconds() {
        assert_eq!(ttl_ms(Duration::from_secs(2)).ok(), Some(2000));
        assert_eq!(ttl_ms(Duration::from_nanos(1)).ok(), Some(1));
        assert_eq!(ttl_ms(Duration::from_micros(1500)).ok(), Some(2));
        assert_eq!(ttl_ms(Duration::MAX).ok(), Some(u64::MAX));
        assert!(matches!(
            ttl_ms(Duration::ZERO),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
