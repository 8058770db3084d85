//! The one auth layer in front of every service: health checks and
//! reflection pass untouched; every other call carries `authorization:
//! Bearer <JWT>`, is authenticated, and — for data calls — authorized for
//! the namespace it names and the access its method needs. Admin calls are
//! authorized by the Admin service itself (the namespace is in the body).
//! The verified principal rides in the request's extensions, so streams can
//! end when its token expires.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;

use tonic::codegen::Service;
use tower_layer::Layer;

use super::{Access, AuthError, Authenticator};
use crate::config::DEFAULT_NAMESPACE;
use crate::namespace::{NAMESPACE_METADATA, Namespaces};

/// What a refused request may still send that is read (and dropped)
/// before the refusal is sent.
const DRAIN_BYTES: usize = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_millis(200);

/// Paths that never need a token.
const OPEN: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The access a data method needs; None for methods authorized elsewhere
/// (Admin) or unknown ones (tonic answers UNIMPLEMENTED after authentication).
pub fn access_for(path: &str) -> Option<Access> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    let read = match (service, method) {
        ("prism.v1.KeyValue", "Get" | "Exists" | "Scan" | "BatchGet") => true,
        ("prism.v1.KeyValue", "Set" | "Delete" | "BatchSet" | "BatchDelete") => false,
        // Subscribing is reading; unsubscribing and acking act on one's own subscription.
        ("prism.v1.PubSub", "Subscribe" | "Unsubscribe" | "Ack") => true,
        ("prism.v1.PubSub", "Publish" | "PublishBatch" | "PublishStream") => false,
        ("prism.v1.Registry", "Get" | "Enumerate" | "Listen") => true,
        ("prism.v1.Registry", "Register" | "Heartbeat" | "Unregister" | "Multicast") => false,
        _ => return None,
    };
    Some(if read { Access::Read } else { Access::Write })
}

#[derive(Clone)]
pub struct AuthLayer {
    auth: Option<Arc<Authenticator>>,
    /// What refusals are counted against (a made-up name is not kept).
    namespaces: Arc<Namespaces>,
}

impl AuthLayer {
    /// `auth` `None`: `mode = "none"`, every call passes.
    pub fn new(auth: Option<Arc<Authenticator>>, namespaces: Arc<Namespaces>) -> AuthLayer {
        AuthLayer { auth, namespaces }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
            namespaces: self.namespaces.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
    namespaces: Arc<Namespaces>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let Some(auth) = self
            .auth
            .clone()
            .filter(|_| !OPEN.iter().any(|p| path.starts_with(p)))
        else {
            return Box::pin(self.inner.call(request));
        };
        // Fast path: a token verified before is one cache lookup and a grant
        // check, with nothing copied and no await.
        let namespace = request
            .headers()
            .get(NAMESPACE_METADATA)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(DEFAULT_NAMESPACE);
        let access = access_for(path);
        let cached = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .and_then(|token| auth.cached(token));
        if let Some(principal) = cached {
            let allowed = match access {
                Some(access) => auth.authorize(&principal, namespace, access),
                None => Ok(()),
            };
            return match allowed {
                Ok(()) => {
                    request.extensions_mut().insert(principal);
                    Box::pin(self.inner.call(request))
                }
                Err(e) => {
                    auth.note_refusal(namespace, self.namespaces.get(namespace).is_ok(), &e);
                    let response = tonic::Status::from(e).into_http();
                    let body = request.into_body();
                    Box::pin(async move {
                        drain(body).await;
                        Ok(response)
                    })
                }
            };
        }
        // Slow path: first sight of this token (may fetch keys). The body is
        // not Sync, so what auth needs is copied out before any await.
        let namespace = namespace.to_string();
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().map(str::to_string).unwrap_or_default());
        // The ready service answers this call; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let namespaces = self.namespaces.clone();
        Box::pin(async move {
            match admit(&auth, authorization, access, &namespace).await {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(e) => {
                    let known = namespaces.get(&namespace).is_ok();
                    auth.note_refusal(&namespace, known, &e);
                    drain(request.into_body()).await;
                    Ok(tonic::Status::from(e).into_http())
                }
            }
        })
    }
}

/// Reads what is left of a refused request's body, a little and briefly:
/// a refusal sent while the client is still sending makes HTTP/2 reset the
/// stream when the rest arrives, and those resets count against the
/// connection's `max_reset_streams` — an honest client refused many times
/// would lose its connection. A stream that keeps sending is answered
/// anyway after `DRAIN_BYTES` or `DRAIN_TIME`.
async fn drain<B>(mut body: B)
where
    B: http_body::Body + Unpin,
{
    let mut seen = 0usize;
    let read = async {
        while seen <= DRAIN_BYTES {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
            match frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        seen += data.remaining();
                    }
                }
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

/// The token of an `authorization: Bearer <token>` value.
pub fn bearer(header: &str) -> Option<&str> {
    header
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
}

async fn admit(
    auth: &Authenticator,
    authorization: Option<String>,
    access: Option<Access>,
    namespace: &str,
) -> Result<Arc<super::Principal>, AuthError> {
    let header = authorization.ok_or_else(|| {
        AuthError::Unauthenticated(
            "no credentials: send metadata 'authorization: Bearer <token>' (a JWT from a trusted issuer)"
                .into(),
        )
    })?;
    let token = bearer(&header).ok_or_else(|| {
        AuthError::Unauthenticated("the authorization metadata is not 'Bearer <token>'".into())
    })?;
    let principal = auth.verify(token).await?;
    if let Some(access) = access {
        auth.authorize(&principal, namespace, access)?;
    }
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_the_access_they_need() {
        assert_eq!(access_for("/prism.v1.KeyValue/Get"), Some(Access::Read));
        assert_eq!(
            access_for("/prism.v1.KeyValue/BatchSet"),
            Some(Access::Write)
        );
        assert_eq!(access_for("/prism.v1.PubSub/Subscribe"), Some(Access::Read));
        assert_eq!(access_for("/prism.v1.PubSub/Publish"), Some(Access::Write));
        assert_eq!(access_for("/prism.v1.Registry/Listen"), Some(Access::Read));
        assert_eq!(
            access_for("/prism.v1.Registry/Multicast"),
            Some(Access::Write)
        );
        assert_eq!(access_for("/prism.v1.Admin/ListNamespaces"), None);
        assert_eq!(access_for("/nonsense"), None);
    }
}
