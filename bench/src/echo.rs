//! Baseline servers, each run as its own process (`prism-bench serve-echo`,
//! `serve-direct`): `prism.v1.KeyValue` on bare tonic answering from memory
//! (the echo), and Prism's host path without the guest (bench-only).

use std::net::SocketAddr;
use std::sync::Arc;

use prism::capability::kv::KvSlot;
use prism::namespace::Namespaces;

use prism::pb;
use prism::pb::key_value_server::{KeyValue, KeyValueServer};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

struct Echo {
    value: Vec<u8>,
}

/// The bench-only path "Prism without the guest": the same namespace lookup,
/// key scoping and backend as Prism's KeyValue service, minus the pattern.
struct DirectKv {
    namespaces: Arc<Namespaces>,
}

impl DirectKv {
    fn slot<T>(&self, request: &Request<T>) -> Result<KvSlot, Status> {
        let ns = self.namespaces.for_request(request.metadata())?;
        Ok(ns.keyvalue()?.pool().slots().kv.clone())
    }
}

fn scoped(slot: &KvSlot, key: &str) -> Result<String, Status> {
    slot.scoped(key)
        .map_err(|e| Status::invalid_argument(format!("{e:?}")))
}

fn backend_status(e: prism::backend::BackendError) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl KeyValue for DirectKv {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let slot = self.slot(&request)?;
        let key = scoped(&slot, &request.into_inner().key)?;
        let value = slot.backend().get(&key).await.map_err(backend_status)?;
        let value = value.ok_or_else(|| Status::not_found("key not found"))?;
        Ok(Response::new(pb::GetResponse {
            value: value.to_vec(),
        }))
    }
    async fn set(
        &self,
        request: Request<pb::SetRequest>,
    ) -> Result<Response<pb::SetResponse>, Status> {
        let slot = self.slot(&request)?;
        let r = request.into_inner();
        let key = scoped(&slot, &r.key)?;
        slot.backend()
            .set(&key, r.value.into(), None)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(pb::SetResponse {}))
    }
    async fn delete(
        &self,
        _: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Err(Status::unimplemented("bench-only service"))
    }
    async fn exists(
        &self,
        _: Request<pb::ExistsRequest>,
    ) -> Result<Response<pb::ExistsResponse>, Status> {
        Err(Status::unimplemented("bench-only service"))
    }
    async fn scan(
        &self,
        _: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        Err(Status::unimplemented("bench-only service"))
    }
    async fn batch_get(
        &self,
        _: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        Err(Status::unimplemented("bench-only service"))
    }
    async fn batch_set(
        &self,
        _: Request<pb::BatchSetRequest>,
    ) -> Result<Response<pb::BatchSetResponse>, Status> {
        Err(Status::unimplemented("bench-only service"))
    }
    async fn batch_delete(
        &self,
        _: Request<pb::BatchDeleteRequest>,
    ) -> Result<Response<pb::BatchDeleteResponse>, Status> {
        Err(Status::unimplemented("bench-only service"))
    }
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

/// `serve-echo`: the echo on a free loopback port, until killed.
pub async fn serve_echo(value: Vec<u8>) -> anyhow::Result<()> {
    announce_and_wait(serve(KeyValueServer::new(Echo { value })).await?).await
}

/// `serve-direct`: the guest-less path over the namespaces of `prism dev`,
/// until killed.
pub async fn serve_direct() -> anyhow::Result<()> {
    let prism = prism::server::start(prism::config::Config::dev("127.0.0.1:0".parse()?)).await?;
    let addr = serve(KeyValueServer::new(DirectKv {
        namespaces: prism.namespaces().clone(),
    }))
    .await?;
    announce_and_wait(addr).await
}

async fn announce_and_wait(addr: SocketAddr) -> anyhow::Result<()> {
    println!("prism-bench: serving on {addr}");
    std::future::pending::<()>().await;
    Ok(())
}

/// Serves on a free loopback port, the way prism's server does (nodelay).
async fn serve<S: KeyValue>(service: KeyValueServer<S>) -> anyhow::Result<SocketAddr> {
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
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    Ok(addr)
}
