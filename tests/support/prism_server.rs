//! Prism in-process for the suites: started on port 0 on a runtime of its
//! own, so the server under test never shares worker threads with the test
//! driving it, and talked to over real gRPC on loopback by clients that name
//! their namespace.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prism::config::Config;
use prism::namespace::{NAMESPACE_METADATA, Namespaces};
use prism::pb::key_value_client::KeyValueClient;
use prism::pb::pub_sub_client::PubSubClient;
use prism::pb::registry_client::RegistryClient;
use tokio::sync::oneshot;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A Prism server running in this process, on its own two-worker runtime.
pub struct TestServer {
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    namespaces: Arc<Namespaces>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    channel: Channel,
}

type Ready = anyhow::Result<(SocketAddr, Option<SocketAddr>, Arc<Namespaces>)>;

/// Starts Prism from a TOML config; `[server] listen` is forced to 127.0.0.1:0.
pub async fn start(config_toml: &str) -> anyhow::Result<TestServer> {
    let mut config = Config::parse(config_toml, "test.toml".as_ref(), PathBuf::from("."))?;
    config.server.listen = "127.0.0.1:0".parse()?;
    let (ready_tx, ready_rx) = oneshot::channel::<Ready>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("prism-under-test".into())
        .spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let server = match prism::server::start(config).await {
                    Ok(server) => server,
                    Err(e) => {
                        let message = format!("{e}");
                        let _ = ready_tx.send(Err(anyhow::anyhow!(message)));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok((
                    server.local_addr(),
                    server.metrics_addr(),
                    server.namespaces().clone(),
                )));
                let _ = stop_rx.await;
                server.shutdown().await?;
                Ok(())
            })
        })?;
    let (addr, metrics, namespaces) = ready_rx
        .await
        .context("the server thread ended before it was ready")??;
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connecting to the test server")?;
    Ok(TestServer {
        addr,
        metrics,
        namespaces,
        stop: Some(stop_tx),
        thread: Some(thread),
        channel,
    })
}

impl TestServer {
    /// A KeyValue client whose requests name `namespace`.
    pub fn kv(&self, namespace: &str) -> KvClient {
        KeyValueClient::with_interceptor(self.channel.clone(), Namespace(namespace.to_string()))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// A PubSub client whose requests name `namespace`.
    pub fn pubsub(&self, namespace: &str) -> PsClient {
        PubSubClient::with_interceptor(self.channel.clone(), Namespace(namespace.to_string()))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// A Registry client whose requests name `namespace`.
    pub fn registry(&self, namespace: &str) -> RegClient {
        RegistryClient::with_interceptor(self.channel.clone(), Namespace(namespace.to_string()))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One `/metrics` scrape (the config must set `[telemetry] metrics_listen`).
    pub async fn scrape_metrics(&self) -> anyhow::Result<String> {
        let addr = self
            .metrics
            .context("this server has no [telemetry] metrics_listen")?;
        let http = prism::auth::http_client(Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
        let response = http.get(format!("http://{addr}/metrics")).send().await?;
        anyhow::ensure!(
            response.status() == 200,
            "GET /metrics: {}",
            response.status()
        );
        Ok(response.text().await?)
    }

    /// The server's namespaces (pool statistics, usage).
    pub fn namespaces(&self) -> &Arc<Namespaces> {
        &self.namespaces
    }

    /// Graceful shutdown (the server drains), then its runtime is dropped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
        }
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A test that failed before `stop`: stop the server anyway.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub type KvClient = KeyValueClient<InterceptedService<Channel, Namespace>>;
pub type PsClient = PubSubClient<InterceptedService<Channel, Namespace>>;
pub type RegClient = RegistryClient<InterceptedService<Channel, Namespace>>;

/// Adds `x-prism-namespace` to every request.
#[derive(Clone)]
pub struct Namespace(String);

impl Namespace {
    pub fn new(name: &str) -> Namespace {
        Namespace(name.to_string())
    }
}

impl Interceptor for Namespace {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        let value: MetadataValue<_> = self
            .0
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("namespace is not valid metadata"))?;
        request.metadata_mut().insert(NAMESPACE_METADATA, value);
        Ok(request)
    }
}
