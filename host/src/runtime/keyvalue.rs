//! KeyValueRuntime: typed calls into a namespace's KeyValue pattern.

use super::CallError;
use super::pattern::PatternRuntime;
use crate::capability::bindings::{Entry, Keyvalue, ScanRequest, ScanResult};

pub type KeyValueRuntime = PatternRuntime<Keyvalue>;

impl PatternRuntime<Keyvalue> {
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
