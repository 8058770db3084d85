//! The server span of every gRPC call, when traces are on: its parent is
//! the caller's W3C `traceparent` (gRPC metadata), its name the method
//! (`prism.v1.KeyValue/Get`), and it ends with the call's gRPC code. The
//! handler runs inside it, so the pattern call, capability and backend spans
//! below are its children. A stream's span covers its opening; messages it
//! delivers have spans of their own (`traces::delivery_span`).
//!
//! With auth on, a caller's "sampled" flag is honoured only once its token
//! has been verified (it is in the token cache): an unauthenticated caller
//! cannot make every one of its calls cost a trace; its calls are sampled
//! by `trace_sample_ratio` like traces that start here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use tonic::codegen::Service;
use tower_layer::Layer;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::Authenticator;
use crate::auth::layer::bearer;
use crate::config::DEFAULT_NAMESPACE;
use crate::namespace::NAMESPACE_METADATA;
use crate::telemetry::methods::{self, METHODS};
use crate::telemetry::traces::{self, TARGET};

/// A namespace header is the caller's to choose: an attribute carries at
/// most this much of it.
const MAX_NAMESPACE_ATTRIBUTE: usize = 64;

#[derive(Clone, Default)]
pub struct RequestSpanLayer {
    /// None: auth is off, every caller's flag is honoured.
    auth: Option<Arc<Authenticator>>,
}

impl RequestSpanLayer {
    pub fn new(auth: Option<Arc<Authenticator>>) -> RequestSpanLayer {
        RequestSpanLayer { auth }
    }
}

impl<S> Layer<S> for RequestSpanLayer {
    type Service = RequestSpanService<S>;

    fn layer(&self, inner: S) -> RequestSpanService<S> {
        RequestSpanService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestSpanService<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
}

type Traced<T, E> = Pin<Box<dyn Future<Output = Result<http::Response<T>, E>> + Send>>;

impl<S, B, ResBody> Service<http::Request<B>> for RequestSpanService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: 'static,
    S::Error: 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Either<S::Future, Traced<ResBody, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !traces::enabled() {
            return Either::Left(self.inner.call(request));
        }
        let Some(span) = request_span(&request, self.auth.as_deref()) else {
            // Not sampled: no span here or below.
            return Either::Left(self.inner.call(request));
        };
        let response = {
            // The handler future is made inside the span as well as polled in it.
            let _entered = span.enter();
            self.inner.call(request)
        };
        let record = span.clone();
        Either::Right(Box::pin(
            async move {
                let response = response.await;
                match &response {
                    // Trailers-only answers (every early error) carry the
                    // code here; otherwise the handler succeeded.
                    Ok(r) => record_code(&record, grpc_code(r.headers()).unwrap_or(0)),
                    Err(_) => record_code(&record, 2),
                }
                response
            }
            .instrument(span),
        ))
    }
}

/// The call's span, or None when its trace is not sampled (the caller's
/// flag when the caller is trusted, else `trace_sample_ratio`).
fn request_span<B>(
    request: &http::Request<B>,
    auth: Option<&Authenticator>,
) -> Option<tracing::Span> {
    let parent = traces::extract_headers(request.headers());
    let sampled = match traces::parent_sampled(&parent) {
        Some(true) if !verified(request, auth) => traces::sample_root(),
        Some(sampled) => sampled,
        None => traces::sample_root(),
    };
    if !sampled {
        return None;
    }
    let path = request.uri().path();
    let index = methods::index(path);
    let method = methods::get(index);
    let known = index < METHODS.len();
    let (service, name) = if known {
        (method.service, method.method)
    } else {
        ("unknown", "unknown")
    };
    let namespace = if method.namespaced {
        let raw = request
            .headers()
            .get(NAMESPACE_METADATA)
            .map(|v| v.to_str().unwrap_or("(not UTF-8)"))
            .unwrap_or(DEFAULT_NAMESPACE);
        truncate(raw, MAX_NAMESPACE_ATTRIBUTE)
    } else {
        ""
    };
    let span = tracing::info_span!(
        target: TARGET,
        "grpc",
        otel.name = format!("{service}/{name}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = name,
        prism.namespace = namespace,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let _ = span.set_parent(parent);
    Some(span)
}

/// Whether the caller's trace flags may decide: auth is off, or the call
/// carries a token verified before (one cache lookup, no verification here).
fn verified<B>(request: &http::Request<B>, auth: Option<&Authenticator>) -> bool {
    let Some(auth) = auth else {
        return true;
    };
    request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .is_some_and(|token| auth.cached(token).is_some())
}

/// OpenTelemetry's gRPC server convention: these codes are the server's
/// fault and mark the span as an error; the rest are the caller's.
fn record_code(span: &tracing::Span, code: u32) {
    span.record("rpc.grpc.status_code", code);
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record("otel.status_code", "ERROR");
    }
}

fn grpc_code(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
