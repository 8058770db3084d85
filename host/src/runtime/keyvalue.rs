//! KeyValueRuntime: typed calls into a namespace's KeyValue pattern.

use std::sync::Arc;

use wasmtime::Store;

use super::CallError;
use super::bindings::exports::prism::pattern::keyvalue_pattern::Guest as KeyValueExports;
use super::bindings::{Entry, Keyvalue, PatternError, ScanRequest, ScanResult};
use super::pool::{GuestFuture, PatternPool};
use super::state::InstanceState;

#[derive(Clone)]
pub struct KeyValueRuntime {
    pool: Arc<PatternPool<Keyvalue>>,
}

impl KeyValueRuntime {
    pub fn new(pool: Arc<PatternPool<Keyvalue>>) -> KeyValueRuntime {
        KeyValueRuntime { pool }
    }

    pub fn pool(&self) -> &Arc<PatternPool<Keyvalue>> {
        &self.pool
    }

    /// Runs one export on a pooled instance.
    async fn call<T, F>(&self, export: &'static str, f: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(
                &'a mut Store<InstanceState>,
                &'a KeyValueExports,
            ) -> GuestFuture<'a, Result<T, PatternError>>
            + Send
            + 'static,
    {
        self.pool
            .call(export, move |store, bindings: &Keyvalue| {
                f(store, bindings.prism_pattern_keyvalue_pattern())
            })
            .await?
            .map_err(CallError::Pattern)
    }

    pub async fn get(&self, key: String) -> Result<Vec<u8>, CallError> {
        self.call("get", move |s, g| {
            Box::pin(async move { g.call_get(s, &key).await })
        })
        .await
    }

    pub async fn set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), CallError> {
        self.call("set", move |s, g| {
            Box::pin(async move { g.call_set(s, &key, &value, ttl_ms).await })
        })
        .await
    }

    pub async fn delete(&self, key: String) -> Result<bool, CallError> {
        self.call("delete", move |s, g| {
            Box::pin(async move { g.call_delete(s, &key).await })
        })
        .await
    }

    pub async fn exists(&self, key: String) -> Result<bool, CallError> {
        self.call("exists", move |s, g| {
            Box::pin(async move { g.call_exists(s, &key).await })
        })
        .await
    }

    pub async fn scan(&self, request: ScanRequest) -> Result<ScanResult, CallError> {
        self.call("scan", move |s, g| {
            Box::pin(async move { g.call_scan(s, &request).await })
        })
        .await
    }

    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, CallError> {
        self.call("get_many", move |s, g| {
            Box::pin(async move { g.call_get_many(s, &keys).await })
        })
        .await
    }

    pub async fn set_many(&self, entries: Vec<Entry>) -> Result<(), CallError> {
        self.call("set_many", move |s, g| {
            Box::pin(async move { g.call_set_many(s, &entries).await })
        })
        .await
    }

    pub async fn delete_many(&self, keys: Vec<String>) -> Result<u32, CallError> {
        self.call("delete_many", move |s, g| {
            Box::pin(async move { g.call_delete_many(s, &keys).await })
        })
        .await
    }
}
