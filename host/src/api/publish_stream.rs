//! `PublishStream`: publish requests pipelined over one call. One task per
//! stream reads the requests in order and publishes each before reading
//! the next, so a publisher's order holds across the stream while the
//! client never waits a round trip between requests. Answers queue in a
//! bounded channel: a client that stops reading them stops the task from
//! reading requests, and HTTP/2 flow control then holds the sender back.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::publish::publish_all;
use crate::clock::now_ms;
use crate::delivery::token_expired;
use crate::namespace::Namespaces;
use crate::pb;

/// Requests read ahead of the answers the client has not yet taken.
pub const READ_AHEAD: usize = 64;

/// How long an ended stream still reads what the client sent before it
/// heard the end.
const DRAIN: Duration = Duration::from_secs(2);

type Answer = Result<pb::PublishStreamResponse, Status>;

/// Starts the stream's task; returns the answers.
pub fn open(
    namespaces: Arc<Namespaces>,
    metadata: MetadataMap,
    expires_at_ms: Option<u64>,
    closing: watch::Receiver<bool>,
    inbound: Streaming<pb::PublishStreamRequest>,
    admitted: crate::admission::StreamGuard,
) -> impl Stream<Item = Answer> + Send + 'static {
    let (answers, rx) = mpsc::channel(READ_AHEAD);
    let stream = Requests {
        namespaces,
        metadata,
        inbound,
        _admitted: admitted,
    };
    // The task runs inside the call's span, so its publishes join the trace.
    tokio::spawn(
        stream
            .run(answers, expires_at_ms, closing)
            .instrument(tracing::Span::current()),
    );
    ReceiverStream::new(rx)
}

struct Requests {
    namespaces: Arc<Namespaces>,
    metadata: MetadataMap,
    inbound: Streaming<pb::PublishStreamRequest>,
    /// The namespace's open-stream slot, freed when the stream ends.
    _admitted: crate::admission::StreamGuard,
}

impl Requests {
    async fn run(
        mut self,
        answers: mpsc::Sender<Answer>,
        expires_at_ms: Option<u64>,
        mut closing: watch::Receiver<bool>,
    ) {
        let expiry = async move {
            match expires_at_ms {
                Some(at) => {
                    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        loop {
            // A request being published is never abandoned half-way: the
            // stream ends only between requests.
            let end = tokio::select! {
                biased;
                () = shutting_down(&mut closing) => Status::unavailable(
                    "Prism is shutting down; send the unanswered requests again (to another instance)",
                ),
                () = &mut expiry => token_expired(),
                () = answers.closed() => return,
                next = self.inbound.message() => match next {
                    Ok(Some(request)) => {
                        let answer = self.answer(request).await;
                        if answers.send(Ok(answer)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    // The client is done sending and every request is answered.
                    Ok(None) => return,
                    // Undecodable or oversized (the codec's status says which).
                    Err(status) => status,
                },
            };
            let _ = answers.send(Err(end)).await;
            drop(answers);
            self.drain().await;
            return;
        }
    }

    /// After the end status: reads, and discards unpublished, what the
    /// client sent meanwhile, until it stops (for `DRAIN` at most). Dropping
    /// the request stream at once makes the server reset it (RST_STREAM),
    /// and a gRPC client that sees the reset before the status reports
    /// INTERNAL instead of the status it was sent (grpc-core does), so a
    /// client could not tell an expired token from a server bug.
    async fn drain(mut self) {
        let _ = tokio::time::timeout(DRAIN, async {
            while let Ok(Some(_)) = self.inbound.message().await {}
        })
        .await;
    }

    async fn answer(&self, request: pb::PublishStreamRequest) -> pb::PublishStreamResponse {
        let sequence = request.sequence;
        match self.publish(request).await {
            Ok(published) => pb::PublishStreamResponse {
                sequence,
                published,
                error: None,
            },
            Err(status) => pb::PublishStreamResponse {
                sequence,
                published: Vec::new(),
                error: Some(pb::PublishError {
                    code: status.code() as i32,
                    message: status.message().to_string(),
                }),
            },
        }
    }

    async fn publish(
        &self,
        request: pb::PublishStreamRequest,
    ) -> Result<Vec<pb::PublishResponse>, Status> {
        let (ns, _admitted) = self.namespaces.admit_call(&self.metadata)?;
        let runtime = ns.route().version.pubsub(&ns.name)?;
        publish_all(&runtime, request.topic, request.messages).await
    }
}

/// Resolves once the server starts shutting down (never, if it cannot).
async fn shutting_down(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}
