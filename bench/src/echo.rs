//! The baseline server: `prism.v1.KeyValue` on bare tonic that answers from
//! memory with no pattern, no namespace and no backend.

use std::net::SocketAddr;

use prism::pb;
use prism::pb::key_value_server::{KeyValue, KeyValueServer};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

struct Echo {
    value: Vec<u8>,
}

#[tonic::async_trait]
impl KeyValue for Echo {
    async fn get(&self, _: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        Ok(Response::new(pb::GetResponse {
            value: self.value.clone(),
        }))
    }
    async fn set(&self, _: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        Ok(Response::new(pb::SetResponse {}))
    }
    async fn delete(
        &self,
        _: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Ok(Response::new(pb::DeleteResponse { existed: true }))
    }
    async fn exists(
        &self,
        _: Request<pb::ExistsRequest>,
    ) -> Result<Response<pb::ExistsResponse>, Status> {
        Ok(Response::new(pb::ExistsResponse { exists: true }))
    }
    async fn scan(
        &self,
        _: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        Ok(Response::new(pb::ScanResponse::default()))
    }
    async fn batch_get(
        &self,
        _: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        Ok(Response::new(pb::BatchGetResponse::default()))
    }
    async fn batch_set(
        &self,
        _: Request<pb::BatchSetRequest>,
    ) -> Result<Response<pb::BatchSetResponse>, Status> {
        Ok(Response::new(pb::BatchSetResponse {}))
    }
    async fn batch_delete(
        &self,
        _: Request<pb::BatchDeleteRequest>,
    ) -> Result<Response<pb::BatchDeleteResponse>, Status> {
        Ok(Response::new(pb::BatchDeleteResponse::default()))
    }
}

/// Serves the echo on a free loopback port, the way prism's server does (nodelay).
pub async fn start(value: Vec<u8>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KeyValueServer::new(Echo { value }))
            .serve_with_incoming(incoming),
    );
    Ok(addr)
}
