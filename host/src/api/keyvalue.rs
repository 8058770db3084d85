//! `prism.v1.KeyValue`: decode, call the namespace's pattern, map errors.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::response::bounded;
use crate::admission::CallGuard;
use crate::capability::bindings::{Entry, ScanRequest};
use crate::namespace::{Namespaces, Route};
use crate::pb;
use crate::pb::key_value_server::KeyValue;
use crate::runtime::KeyValueRuntime;

pub struct KeyValueService {
    namespaces: Arc<Namespaces>,
    /// `server.max_message_bytes`: responses larger than this are refused.
    max_response: usize,
}

impl KeyValueService {
    pub fn new(namespaces: Arc<Namespaces>, max_response: usize) -> KeyValueService {
        KeyValueService {
            namespaces,
            max_response,
        }
    }

    /// The request's KeyValue pattern (the version routed to: primary or
    /// canary), once the namespace's quotas admit it.
    fn runtime<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(KeyValueRuntime, Route, CallGuard), Status> {
        let (ns, admitted) = self.namespaces.admit_call(request.metadata())?;
        let route = ns.route();
        let kv = route.version.keyvalue(&ns.name)?;
        Ok((kv, route, admitted))
    }
}

#[tonic::async_trait]
impl KeyValue for KeyValueService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let (kv, route, _admitted) = self.runtime(&request)?;
        let key = request.into_inner().key;
        let value = kv.get(key.clone()).await;
        route.mirror("get", &value, |v| {
            let kv = v.keyvalue("").ok()?;
            Some(async move { kv.get(key).await })
        });
        let value = value?;
        bounded(pb::GetResponse { value }, self.max_response)
    }

    async fn set(
        &self,
        request: Request<pb::SetRequest>,
    ) -> Result<Response<pb::SetResponse>, Status> {
        let (kv, _, _admitted) = self.runtime(&request)?;
        let r = request.into_inner();
        kv.set(r.key, r.value, r.ttl_ms).await?;
        Ok(Response::new(pb::SetResponse {}))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let (kv, _, _admitted) = self.runtime(&request)?;
        let existed = kv.delete(request.into_inner().key).await?;
        Ok(Response::new(pb::DeleteResponse { existed }))
    }

    async fn exists(
        &self,
        request: Request<pb::ExistsRequest>,
    ) -> Result<Response<pb::ExistsResponse>, Status> {
        let (kv, route, _admitted) = self.runtime(&request)?;
        let key = request.into_inner().key;
        let exists = kv.exists(key.clone()).await;
        route.mirror("exists", &exists, |v| {
            let kv = v.keyvalue("").ok()?;
            Some(async move { kv.exists(key).await })
        });
        let exists = exists?;
        Ok(Response::new(pb::ExistsResponse { exists }))
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let (kv, route, _admitted) = self.runtime(&request)?;
        let r = request.into_inner();
        let scan = ScanRequest {
            prefix: r.prefix,
            cursor: Some(r.cursor).filter(|c| !c.is_empty()),
            limit: r.limit,
        };
        let page = kv.scan(scan.clone()).await;
        route.mirror("scan", &page, |v| {
            let kv = v.keyvalue("").ok()?;
            Some(async move { kv.scan(scan).await })
        });
        let page = page?;
        bounded(
            pb::ScanResponse {
                keys: page.keys,
                next_cursor: page.cursor.unwrap_or_default(),
            },
            self.max_response,
        )
    }

    async fn batch_get(
        &self,
        request: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        let (kv, route, _admitted) = self.runtime(&request)?;
        let keys = request.into_inner().keys;
        let values = kv.get_many(keys.clone()).await;
        let mirrored = keys.clone();
        route.mirror("batch_get", &values, |v| {
            let kv = v.keyvalue("").ok()?;
            Some(async move { kv.get_many(mirrored).await })
        });
        let values = values?;
        let items = keys
            .into_iter()
            .zip(values)
            .map(|(key, value)| pb::BatchGetItem {
                key,
                found: value.is_some(),
                value: value.unwrap_or_default(),
            })
            .collect();
        bounded(pb::BatchGetResponse { items }, self.max_response)
    }

    async fn batch_set(
        &self,
        request: Request<pb::BatchSetRequest>,
    ) -> Result<Response<pb::BatchSetResponse>, Status> {
        let (kv, _, _admitted) = self.runtime(&request)?;
        let entries = request
            .into_inner()
            .entries
            .into_iter()
            .map(|e| Entry {
                key: e.key,
                value: e.value,
                ttl_ms: e.ttl_ms,
            })
            .collect();
        kv.set_many(entries).await?;
        Ok(Response::new(pb::BatchSetResponse {}))
    }

    async fn batch_delete(
        &self,
        request: Request<pb::BatchDeleteRequest>,
    ) -> Result<Response<pb::BatchDeleteResponse>, Status> {
        let (kv, _, _admitted) = self.runtime(&request)?;
        let deleted = kv.delete_many(request.into_inner().keys).await?;
        Ok(Response::new(pb::BatchDeleteResponse { deleted }))
    }
}
