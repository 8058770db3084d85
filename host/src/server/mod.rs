//! Builds the backends, runtime, namespaces and gRPC services, listens, and
//! drains in-flight requests on shutdown. Beside it: the gRPC layers that
//! count each call and open its span, and the `/metrics` listener.

mod health;
mod limits;
pub mod metrics;
mod metrics_http;
pub mod request_metrics;
pub mod request_span;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::admin::Control;
use crate::api::admin::AdminService;
use crate::api::keyvalue::KeyValueService;
use crate::api::oversize::OversizeLayer;
use crate::api::pubsub::PubSubService;
use crate::api::registry::RegistryService;
use crate::auth::Authenticator;
use crate::auth::layer::AuthLayer;
use crate::backend::Backends;
use crate::config::Config;
use crate::delivery::Subscriptions;

use crate::namespace::Platform;
use crate::namespace::{Namespaces, StartupError};
use crate::patterns::PatternStore;
use crate::pb;
use crate::pb::admin_server::AdminServer;
use crate::pb::key_value_server::KeyValueServer;
use crate::pb::pub_sub_server::PubSubServer;
use crate::pb::registry_server::RegistryServer;
use crate::runtime::Runtime;
use crate::runtime::pool::IDLE_TTL;
use limits::OpenStreamsLayer;
use metrics::Sources;
use request_metrics::{MetricsLayer, RequestMetrics};
use request_span::RequestSpanLayer;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendBuildError),
    #[error("runtime: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("auth: {0}")]
    Auth(String),
    #[error("{0}")]
    Tls(String),
    #[error("admin state: {0}")]
    State(#[from] crate::admin::StateError),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server task ended abnormally: {0}")]
    Join(String),
}

/// A server that is listening. Dropping it does not stop it; call `shutdown`.
pub struct RunningServer {
    addr: SocketAddr,
    namespaces: Arc<Namespaces>,
    control: Arc<Control>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    health_task: JoinHandle<()>,
    trim_task: JoinHandle<()>,
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
    subscriptions: Arc<Subscriptions>,
    grace: Duration,
    // Kept alive for as long as the server runs.
    _runtime: Arc<Runtime>,
}

impl RunningServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, if `[telemetry] metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    pub fn namespaces(&self) -> &Arc<Namespaces> {
        &self.namespaces
    }

    /// The control plane the Admin API drives.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Applies a re-read config file's namespaces (SIGHUP); see
    /// [`Control::reload`].
    pub async fn reload(
        &self,
        config: &Config,
    ) -> Result<crate::admin::Reloaded, crate::admin::AdminError> {
        self.control.reload(config).await
    }

    /// Stops accepting, lets in-flight requests finish within the grace period.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.shutdown.send(());
        self.health_task.abort();
        self.trim_task.abort();
        if let Some((_, task)) = &self.metrics {
            task.abort();
        }
        // Subscription streams never end by themselves: end them, so
        // clients hear why and the drain is not held up by them.
        self.subscriptions.end_all(&tonic::Status::unavailable(
            "Prism is shutting down; subscribe again (to another instance)",
        ));
        let mut task = self.task;
        match tokio::time::timeout(self.grace, &mut task).await {
            Ok(joined) => joined
                .map_err(|e| ServerError::Join(e.to_string()))?
                .map_err(ServerError::from),
            Err(_) => {
                tracing::warn!(
                    grace_ms = self.grace.as_millis() as u64,
                    "requests still running after the grace period; stopping anyway"
                );
                task.abort();
                Ok(())
            }
        }
    }
}

/// Starts everything the config describes and begins serving.
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    // Admin's layer is read first: its namespaces' memory limits size the engine.
    let loaded = crate::admin::open(&config).await?;
    let max_memory = crate::admin::max_memory_bytes(&config, &loaded.state);
    let runtime = Arc::new(Runtime::new(&config.runtime, max_memory)?);
    let backends = Backends::build(&config.backends)?;
    let platform = Arc::new(Platform {
        patterns: PatternStore::new(config.state_dir()),
        config,
        runtime: runtime.clone(),
        backends: backends.clone(),
        prepared: Default::default(),
    });
    let subscriptions = Arc::new(Subscriptions::default());
    let control = Arc::new(Control::start(platform.clone(), loaded, subscriptions.clone()).await?);
    // A fleet's replicas follow the control store from here on.
    control.follow();
    let namespaces = control.namespaces().clone();
    let config = &platform.config;

    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.server.listen,
        source,
    })?;
    control.set_address(addr);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<KeyValueServer<KeyValueService>>()
        .await;
    health_reporter
        .set_serving::<PubSubServer<PubSubService>>()
        .await;
    health_reporter
        .set_serving::<RegistryServer<RegistryService>>()
        .await;
    let health_task = tokio::spawn(health::watch(
        backends.clone(),
        namespaces.clone(),
        health_reporter,
    ));
    let trim_task = tokio::spawn(trim_idle_instances(namespaces.clone()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let max_message = config.server.max_message_bytes;
    let keyvalue = KeyValueServer::new(KeyValueService::new(namespaces.clone(), max_message))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let pubsub = PubSubServer::new(PubSubService::new(
        namespaces.clone(),
        subscriptions.clone(),
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let registry = RegistryServer::new(RegistryService::new(
        namespaces.clone(),
        subscriptions.clone(),
        max_message,
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);

    let incoming = limits::incoming(
        listener,
        config.server.max_connections,
        Duration::from_secs(config.server.handshake_timeout_secs),
    );
    let (shutdown, stop) = oneshot::channel::<()>();
    let auth = Authenticator::from_config(&config.auth).map_err(ServerError::Auth)?;
    match &auth {
        None => tracing::warn!(
            "auth mode is none: any caller reaches any namespace (set [auth] mode = \"jwt\" for production)"
        ),
        Some(_) => tracing::info!(issuers = config.auth.trusted().len(), "auth mode is jwt"),
    }
    let admin = AdminServer::new(AdminService::new(control.clone(), auth.is_some()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    if auth.is_none() && config.admin.allow_unauthenticated {
        tracing::warn!("the Admin API is open to any caller ([admin] allow_unauthenticated)");
    }
    let requests = config
        .telemetry
        .metrics_listen
        .map(|_| Arc::new(RequestMetrics::new(namespaces.clone())));
    let metrics = match (config.telemetry.metrics_listen, &requests) {
        (Some(at), Some(requests)) => {
            let listener = TcpListener::bind(at)
                .await
                .map_err(|source| ServerError::Bind { addr: at, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| ServerError::Bind { addr: at, source })?;
            let sources = Arc::new(Sources {
                requests: requests.clone(),
                namespaces: namespaces.clone(),
                subscriptions: subscriptions.clone(),
                backends: backends.clone(),
                started: std::time::SystemTime::now(),
                control: control.clone(),
            });
            tracing::info!(metrics = %format!("http://{bound}/metrics"), "serving Prometheus metrics");
            Some((bound, tokio::spawn(metrics_http::serve(listener, sources))))
        }
        _ => None,
    };
    // Outermost: calls refused by the layers below are traced and counted too.
    let server = &config.server;
    let keepalive = (server.keepalive_secs > 0).then(|| Duration::from_secs(server.keepalive_secs));
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(server.max_concurrent_streams)
        .http2_max_local_error_reset_streams(Some(server.max_reset_streams))
        // h2's default (20), which tonic's builder otherwise leaves unset.
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(Duration::from_secs(server.keepalive_timeout_secs)));
    if let Some(tls) = tls_config(config)? {
        builder = builder.tls_config(tls)?;
        tracing::info!("the listener speaks TLS");
    }
    if server.max_connection_age_secs > 0 {
        builder = builder
            .max_connection_age(Duration::from_secs(server.max_connection_age_secs))
            .max_connection_age_grace(Duration::from_secs(server.max_connection_age_grace_secs));
    }
    let router = builder
        .layer(RequestSpanLayer::new(auth.clone()))
        .layer(MetricsLayer::new(requests))
        .layer(OversizeLayer::new(max_message))
        .layer(AuthLayer::new(auth, namespaces.clone()))
        .layer(OpenStreamsLayer::new(server.max_unauthenticated_streams))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(keyvalue)
        .add_service(pubsub)
        .add_service(registry)
        .add_service(admin);
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop.await;
    }));
    tracing::info!(%addr, namespaces = namespaces.iter().count(), "prism serving");
    Ok(RunningServer {
        addr,
        namespaces,
        control,
        shutdown,
        task,
        health_task,
        trim_task,
        metrics,
        subscriptions,
        grace: Duration::from_millis(config.server.shutdown_grace_ms),
        _runtime: runtime,
    })
}

/// The listener's TLS from `[server] tls_cert`, `tls_key` and
/// `tls_client_ca` (rustls; TLS 1.2 and 1.3), if configured.
fn tls_config(config: &Config) -> Result<Option<tonic::transport::ServerTlsConfig>, ServerError> {
    let server = &config.server;
    let (Some(cert), Some(key)) = (&server.tls_cert, &server.tls_key) else {
        return Ok(None);
    };
    let read = |field: &str, path: &std::path::Path| {
        let path = config.resolve_path(path);
        std::fs::read(&path).map_err(|e| {
            ServerError::Tls(format!(
                "server.{field}: cannot read {}: {e}",
                path.display()
            ))
        })
    };
    let identity =
        tonic::transport::Identity::from_pem(read("tls_cert", cert)?, read("tls_key", key)?);
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &server.tls_client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
            "tls_client_ca",
            ca,
        )?));
    }
    Ok(Some(tls))
}

/// Drops pattern instances that sat idle, so a quiet namespace holds only
/// its warm minimum (`limits.idle_instances`).
async fn trim_idle_instances(namespaces: Arc<Namespaces>) {
    let mut ticker = tokio::time::interval(IDLE_TTL / 3);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let dropped: usize = namespaces.iter().map(|ns| ns.trim_idle(IDLE_TTL)).sum();
        if dropped > 0 {
            tracing::debug!(dropped, "dropped idle pattern instances");
        }
    }
}
