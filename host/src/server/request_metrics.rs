//! gRPC request metrics, recorded by a tower layer in front of every
//! service: calls started, handled (by gRPC code), in flight, and their
//! latency, per namespace and method. The code is read where gRPC puts it:
//! the response headers for trailers-only answers (errors), the trailers
//! otherwise; a stream the client drops is counted as CANCELLED.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::Frame;
use parking_lot::RwLock;
use tonic::codegen::Service;
use tower_layer::Layer;

use crate::config::DEFAULT_NAMESPACE;
use crate::namespace::{NAMESPACE_METADATA, Namespaces};
use crate::telemetry::histogram::Histogram;
use crate::telemetry::methods::{self, METHODS};

/// gRPC's codes 0..=16, by number.
pub const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELLED: usize = 1;
const UNKNOWN_CODE: usize = 2;

pub use crate::namespace::UNKNOWN_NAMESPACE;

/// One namespace × method's counters.
#[derive(Default)]
pub struct Series {
    pub started: AtomicU64,
    pub in_flight: AtomicI64,
    pub handled: [AtomicU64; CODES.len()],
    pub latency: Histogram,
}

/// Every series, by method (index into [`METHODS`], the last for unknown
/// paths) and namespace label.
pub struct RequestMetrics {
    namespaces: Arc<Namespaces>,
    by_method: Vec<RwLock<HashMap<String, Arc<Series>>>>,
}

impl RequestMetrics {
    pub fn new(namespaces: Arc<Namespaces>) -> RequestMetrics {
        RequestMetrics {
            namespaces,
            by_method: (0..=METHODS.len()).map(|_| RwLock::default()).collect(),
        }
    }

    /// The series a call to `method` naming `namespace` counts in: a read
    /// lock and one lookup once the series exists.
    fn series(&self, method: usize, namespace: &str) -> Arc<Series> {
        let map = &self.by_method[method.min(METHODS.len())];
        if let Some(series) = map.read().get(namespace) {
            return series.clone();
        }
        let label = if namespace.is_empty() || self.namespaces.get(namespace).is_ok() {
            namespace
        } else {
            UNKNOWN_NAMESPACE
        };
        if let Some(series) = map.read().get(label) {
            return series.clone();
        }
        map.write().entry(label.to_string()).or_default().clone()
    }

    /// Every series: (method index, namespace label, series).
    pub fn each(&self, mut f: impl FnMut(usize, &str, &Series)) {
        for (method, map) in self.by_method.iter().enumerate() {
            let map = map.read();
            let mut names: Vec<&String> = map.keys().collect();
            names.sort();
            for name in names {
                f(method, name, &map[name]);
            }
        }
    }

    /// Drops the series of namespaces that are gone (deleted at runtime)
    /// and have nothing in flight, so label sets stay those of live namespaces.
    pub fn forget_deleted(&self) {
        for map in &self.by_method {
            let gone: Vec<String> = map
                .read()
                .iter()
                .filter(|(name, series)| {
                    !name.is_empty()
                        && name.as_str() != UNKNOWN_NAMESPACE
                        && series.in_flight.load(Ordering::Relaxed) == 0
                        && self.namespaces.get(name).is_err()
                })
                .map(|(name, _)| name.clone())
                .collect();
            if !gone.is_empty() {
                let mut map = map.write();
                for name in gone {
                    map.remove(&name);
                }
            }
        }
    }
}

/// `None`: no metrics listener, so nothing is recorded (no series build up
/// that no scrape would ever read or prune).
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Option<Arc<RequestMetrics>>,
}

impl MetricsLayer {
    pub fn new(metrics: Option<Arc<RequestMetrics>>) -> MetricsLayer {
        MetricsLayer { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> MetricsService<S> {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Option<Arc<RequestMetrics>>,
}

impl<S, B, ResBody> Service<http::Request<B>> for MetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(metrics) = &self.metrics else {
            let response = self.inner.call(request);
            return Box::pin(async move { Ok(response.await?.map(tonic::body::Body::new)) });
        };
        let method = methods::index(request.uri().path());
        let namespace = if methods::get(method).namespaced {
            request
                .headers()
                .get(NAMESPACE_METADATA)
                .map(|v| v.to_str().unwrap_or(UNKNOWN_NAMESPACE))
                .unwrap_or(DEFAULT_NAMESPACE)
        } else {
            ""
        };
        let call = Call::start(metrics.series(method, namespace));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(response) => response,
                Err(e) => {
                    call.finish(UNKNOWN_CODE);
                    return Err(e);
                }
            };
            // Trailers-only (every error tonic answers early): the code is here.
            if let Some(code) = grpc_status(response.headers()) {
                call.finish(code);
                return Ok(response.map(tonic::body::Body::new));
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(Observed {
                    body,
                    call: Some(call),
                })
            }))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    let code = value.to_str().ok()?.parse::<usize>().ok()?;
    Some(if code < CODES.len() {
        code
    } else {
        UNKNOWN_CODE
    })
}

/// One call in progress; counted as handled exactly once.
struct Call {
    series: Arc<Series>,
    started: Instant,
    done: bool,
}

impl Call {
    fn start(series: Arc<Series>) -> Call {
        series.started.fetch_add(1, Ordering::Relaxed);
        series.in_flight.fetch_add(1, Ordering::Relaxed);
        Call {
            series,
            started: Instant::now(),
            done: false,
        }
    }

    fn finish(mut self, code: usize) {
        self.record(code);
    }

    fn record(&mut self, code: usize) {
        if self.done {
            return;
        }
        self.done = true;
        self.series.handled[code].fetch_add(1, Ordering::Relaxed);
        self.series.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.series.latency.observe(self.started.elapsed());
    }
}

impl Drop for Call {
    /// Dropped before its status was seen: the client went away.
    fn drop(&mut self) {
        self.record(CANCELLED);
    }
}

/// A response body that reports the call's code when its trailers pass.
struct Observed<B> {
    body: B,
    call: Option<Call>,
}

impl<B> http_body::Body for Observed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    call.finish(grpc_status(trailers).unwrap_or(UNKNOWN_CODE));
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = this.call.take() {
                    call.finish(UNKNOWN_CODE);
                }
            }
            Poll::Ready(None) => {
                // Ended without trailers: gRPC always sends a status.
                if let Some(call) = this.call.take() {
                    call.finish(UNKNOWN_CODE);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
