//! `prism.v1.KeyValue`: decode, call the namespace's pattern, map errors.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::response::bounded;
use crate::admission::CallGuard;
use crate::namespace::Namespaces;
use crate::pb;
use crate::pb::key_value_server::KeyValue;
use crate::runtime::KeyValueRuntime;
use crate::runtime::bindings::{Entry, ScanRequest};

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

    /// The request's KeyValue pattern, once the namespace's quotas admit it.
    fn runtime<T>(&self, request: &Request<T>) -> Result<(KeyValueRuntime, CallGuard), Status> {
        let (ns, admitted) = self.namespaces.admit_call(request.metadata())?;
        Ok((ns.keyvalue()?.clone(), admitted))
    }
}

#[tonic::async_trait]
impl KeyValue for KeyValueService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let (kv, _admitted) = self.runtime(&request)?;
        let value = kv.get(request.into_inner().key).await?;
        bounded(pb::GetResponse { value }, self.max_response)
    }

    async fn set(
        &self,
        request: Request<pb::SetRequest>,
    ) -> Result<Response<pb::SetResponse>, Status> {
        let (kv, _admitted) = self.runtime(&request)?;
        let r = request.into_inner();
        kv.set(r.key, r.value, r.ttl_ms).await?;
        Ok(Response::new(pb::SetResponse {}))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let (kv, _admitted) = self.runtime(&request)?;
        let existed = kv.delete(request.into_inner().key).await?;
        Ok(Response::new(pb::DeleteResponse { existed }))
    }

    async fn exists(
        &self,
        request: Request<pb::ExistsRequest>,
    ) -> Result<Response<pb::ExistsResponse>, Status> {
        let (kv, _admitted) = self.runtime(&request)?;
        let exists = kv.exists(request.into_inner().key).await?;
        Ok(Response::new(pb::ExistsResponse { exists }))
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let (kv, _admitted) = self.runtime(&request)?;
        let r = request.into_inner();
        let cursor = Some(r.cursor).filter(|c| !c.is_empty());
        let page = kv
            .scan(ScanRequest {
                prefix: r.prefix,
                cursor,
                limit: r.limit,
            })
            .await?;
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
        let (kv, _admitted) = self.runtime(&request)?;
        let keys = request.into_inner().keys;
        let values = kv.get_many(keys.clone()).await?;
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
        let (kv, _admitted) = self.runtime(&request)?;
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
        let (kv, _admitted) = self.runtime(&request)?;
        let deleted = kv.delete_many(request.into_inner().keys).await?;
        Ok(Response::new(pb::BatchDeleteResponse { deleted }))
    }
}
