//! A request larger than `server.max_message_bytes` is RESOURCE_EXHAUSTED
//! (as gRPC's status-code guide says), with a message naming the limit and
//! the setting; tonic itself answers OUT_OF_RANGE. Wraps every service and
//! rewrites only that one refusal, which tonic sends as a trailers-only
//! response before any handler runs.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::codegen::Service;
use tower_layer::Layer;

/// The text tonic's decoder uses for an oversized request.
const TONIC_TOO_LARGE: &str = "decoded message length too large";

#[derive(Debug, Clone)]
pub struct OversizeLayer {
    limit: usize,
}

impl OversizeLayer {
    pub fn new(limit: usize) -> OversizeLayer {
        OversizeLayer { limit }
    }
}

impl<S> Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Oversize<S> {
    inner: S,
    limit: usize,
}

impl<S, B, RB> Service<http::Request<B>> for Oversize<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let limit = self.limit;
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            rewrite(&mut response, limit);
            Ok(response)
        })
    }
}

fn rewrite<RB>(response: &mut http::Response<RB>, limit: usize) {
    let headers = response.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|s| s.as_bytes() == b"11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.contains(TONIC_TOO_LARGE) || m.contains("too%20large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        let message = format!(
            "the request is larger than this server accepts ({limit} bytes, server.max_message_bytes); send less per call"
        );
        // grpc-message is percent-encoded; this text needs only spaces,
        // parentheses, ';' and ',' encoded, and all of it is ASCII.
        let encoded: String = message
            .bytes()
            .map(|b| match b {
                b' ' => "%20".to_string(),
                b'%' => "%25".to_string(),
                0x21..=0x7e => (b as char).to_string(),
                other => format!("%{other:02X}"),
            })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            headers.insert("grpc-message", value);
        }
    }
}
