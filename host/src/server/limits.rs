//! What one caller can hold open before authenticating: connections (a cap
//! on the listener; one more is closed as it arrives) and the streams that
//! need no token (health watches and reflection, a cap across the server).
//! HTTP/2's own limits (streams per connection, resets, keepalive,
//! connection age) are set on the builder in `mod.rs`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codegen::Service;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower_layer::Layer;

/// Streaming methods anyone may open without a token.
const OPEN_STREAMS: &[&str] = &[
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Bytes a client sends first: the HTTP/2 preface (a TLS ClientHello is
/// longer). A connection must send them within the handshake timeout.
const GREETING_BYTES: usize = 24;

/// An accepted connection holding one of the listener's `max_connections`
/// permits until it closes.
pub struct Limited {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Until the client has greeted: the deadline, and the bytes read so
    /// far. A connection that says nothing would otherwise hold its permit
    /// forever (HTTP/2 keepalive starts only after the preface).
    greeting: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

/// The listener's connections, at most `max` open at once: past that a new
/// connection is closed at once (the client sees UNAVAILABLE and retries),
/// so a flood of idle connections cannot exhaust file descriptors or the
/// memory each HTTP/2 connection holds. Nagle is off on each (it would add
/// tens of milliseconds to small responses).
/// A connection that has not sent its first bytes (the HTTP/2 preface, or
/// a TLS ClientHello) within `handshake` is closed.
pub fn incoming(
    listener: TcpListener,
    max: usize,
    handshake: std::time::Duration,
) -> impl Stream<Item = io::Result<Limited>> + Send + 'static {
    let permits = Arc::new(Semaphore::new(max));
    let refused = AtomicU64::new(0);
    TcpListenerStream::new(listener).filter_map(move |conn| {
        let accepted = match conn {
            Ok(stream) => match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    Some(Ok(Limited {
                        stream,
                        _permit: permit,
                        greeting: Some((Box::pin(tokio::time::sleep(handshake)), 0)),
                    }))
                }
                Err(_) => {
                    let n = refused.fetch_add(1, Ordering::Relaxed) + 1;
                    // Powers of two: a flood writes a few lines, not one per try.
                    if n.is_power_of_two() {
                        tracing::warn!(
                            max_connections = max,
                            refused = n,
                            "connection refused: the server is at [server] max_connections"
                        );
                    }
                    None
                }
            },
            Err(e) => Some(Err(e)),
        };
        std::future::ready(accepted)
    })
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some((deadline, _)) = &mut self.greeting
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client sent no HTTP/2 preface within [server] handshake_timeout_secs",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some((_, greeted))) = (&read, &mut self.greeting) {
            *greeted += buf.filled().len() - before;
            if *greeted >= GREETING_BYTES {
                self.greeting = None;
            }
        }
        read
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Caps the token-free streams (health watches, reflection) open across
/// the server: they never end by themselves, so without a cap anyone who
/// reaches the port could hold any number. Past the cap a new one is
/// RESOURCE_EXHAUSTED; one that ends frees its place.
#[derive(Clone)]
pub struct OpenStreamsLayer {
    permits: Arc<Semaphore>,
    max: usize,
}

impl OpenStreamsLayer {
    pub fn new(max: usize) -> OpenStreamsLayer {
        OpenStreamsLayer {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

impl<S> Layer<S> for OpenStreamsLayer {
    type Service = OpenStreams<S>;

    fn layer(&self, inner: S) -> OpenStreams<S> {
        OpenStreams {
            inner,
            limit: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct OpenStreams<S> {
    inner: S,
    limit: OpenStreamsLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for OpenStreams<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !OPEN_STREAMS.contains(&request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = self.limit.permits.clone().try_acquire_owned() else {
            let status = tonic::Status::resource_exhausted(format!(
                "this server holds {} open health-watch and reflection streams, its limit ([server] max_unauthenticated_streams); close one or poll Health/Check",
                self.limit.max
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(Holding {
                    body,
                    _permit: permit,
                })
            }))
        })
    }
}

/// A response body that holds its stream's place until it is dropped.
struct Holding {
    body: tonic::body::Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
