//! OpenTelemetry traces: the real `prism` binary exports spans over
//! OTLP/gRPC to a receiver this test runs (the collector's own
//! `TraceService`, from the `opentelemetry-proto` definitions). A caller's
//! W3C `traceparent` is the parent of the server span; the pattern call,
//! capability and backend command spans hang below it; a published
//! message carries the trace to a consumer span, and the subscriber gets a
//! `traceparent` naming that span. Spans are flushed when Prism stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use parking_lot::Mutex;
use prism_acceptance::binary::{PrismProcess, run};
use prism_acceptance::pb::key_value_client::KeyValueClient;
use prism_acceptance::pb::pub_sub_client::PubSubClient;
use prism_acceptance::pubsub::{Sub, subscribe_request};
use prism_acceptance::{Namespace, pb};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const PUBLISH_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// One exported span with its resource's `service.name`.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    span: Span,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| string_attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Got {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts the receiver on a free port; returns its endpoint URL.
async fn receiver() -> anyhow::Result<(Receiver, String)> {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((receiver, format!("http://{addr}")))
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            Value::BoolValue(b) => b.to_string(),
            Value::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

fn attr(span: &Span, key: &str) -> Option<String> {
    string_attribute(&span.attributes, key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn traceparent(trace: &str, span: &str) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("00-{trace}-{span}-01")
        .parse()
        .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static(""))
}

/// The spans of one trace, by span id.
fn trace(spans: &[Got], trace: &str) -> HashMap<String, Got> {
    spans
        .iter()
        .filter(|g| hex(&g.span.trace_id) == trace)
        .map(|g| (hex(&g.span.span_id), g.clone()))
        .collect()
}

/// The one span named `name` whose parent is `parent`.
fn child<'a>(
    spans: &'a HashMap<String, Got>,
    parent: &str,
    name: &str,
) -> anyhow::Result<&'a Span> {
    let found: Vec<&Span> = spans
        .values()
        .map(|g| &g.span)
        .filter(|s| s.name == name && hex(&s.parent_span_id) == parent)
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        _ => bail!(
            "expected one span {name:?} under {parent}, found {}; the trace holds: {:#?}",
            found.len(),
            spans
                .values()
                .map(|g| (
                    g.span.name.clone(),
                    hex(&g.span.span_id),
                    hex(&g.span.parent_span_id)
                ))
                .collect::<Vec<_>>()
        ),
    }
}

/// `prism dev` exporting to a fresh receiver, and a channel to it.
async fn dev_traced() -> anyhow::Result<(Receiver, PrismProcess, Channel)> {
    let (receiver, endpoint) = receiver().await?;
    // Port 0: the process says where it listens.
    let prism = PrismProcess::start(&[
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--otlp-endpoint",
        &endpoint,
    ])
    .await?;
    let channel = Channel::from_shared(format!("http://{}", prism.addr))?
        .connect()
        .await?;
    Ok((receiver, prism, channel))
}

async fn stop_and_collect(prism: PrismProcess, receiver: &Receiver) -> anyhow::Result<Vec<Got>> {
    let (status, stderr) = prism.terminate_with_stderr(WAIT).await?;
    anyhow::ensure!(status.success(), "prism exited with {status}: {stderr}");
    // The exporter flushes at shutdown; the receiver has them by now.
    Ok(receiver.spans.lock().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_one_trace_from_the_callers_span_down_to_the_backend_command()
-> anyhow::Result<()> {
    let (receiver, prism, channel) = dev_traced().await?;
    let mut kv = KeyValueClient::with_interceptor(channel.clone(), Namespace::new("default"));

    let mut set = tonic::Request::new(pb::SetRequest {
        key: "k".into(),
        value: b"v".to_vec(),
        ttl_ms: None,
    });
    set.metadata_mut()
        .insert("traceparent", traceparent(TRACE, CALLER_SPAN));
    kv.set(set).await?;
    let mut missing = tonic::Request::new(pb::GetRequest { key: "nope".into() });
    missing
        .metadata_mut()
        .insert("traceparent", traceparent(TRACE, "1111111111111111"));
    let err = match kv.get(missing).await {
        Ok(_) => bail!("Get of a missing key answered OK"),
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::NotFound);
    // No traceparent: a trace of its own (ratio 1 keeps it).
    kv.get(pb::GetRequest { key: "k".into() }).await?;

    let spans = stop_and_collect(prism, &receiver).await?;
    let ours = trace(&spans, TRACE);
    let server = child(&ours, CALLER_SPAN, "prism.v1.KeyValue/Set")?;
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(attr(server, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attr(server, "rpc.service").as_deref(),
        Some("prism.v1.KeyValue")
    );
    assert_eq!(attr(server, "rpc.method").as_deref(), Some("Set"));
    assert_eq!(attr(server, "prism.namespace").as_deref(), Some("default"));
    assert_eq!(attr(server, "rpc.grpc.status_code").as_deref(), Some("0"));
    let pattern = child(&ours, &hex(&server.span_id), "pattern set")?;
    assert_eq!(attr(pattern, "prism.namespace").as_deref(), Some("default"));
    let capability = child(&ours, &hex(&pattern.span_id), "kv.set")?;
    let command = child(&ours, &hex(&capability.span_id), "memstore set")?;
    assert_eq!(command.kind, SpanKind::Client as i32);
    assert_eq!(attr(command, "db.system").as_deref(), Some("memstore"));
    assert_eq!(attr(command, "prism.backend").as_deref(), Some("mem"));
    // Children lie within their parents.
    for (outer, inner) in [
        (server, pattern),
        (pattern, capability),
        (capability, command),
    ] {
        assert!(
            outer.start_time_unix_nano <= inner.start_time_unix_nano
                && inner.end_time_unix_nano <= outer.end_time_unix_nano,
            "{} is not within {}",
            inner.name,
            outer.name
        );
    }
    assert!(ours.values().all(|g| g.service == "prism"));

    // NotFound is the caller's outcome, not a server error.
    let get = child(&ours, "1111111111111111", "prism.v1.KeyValue/Get")?;
    assert_eq!(attr(get, "rpc.grpc.status_code").as_deref(), Some("5"));
    assert_ne!(
        get.status.as_ref().map(|s| s.code),
        Some(opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32)
    );

    // The untraced Get started a trace of its own, rooted at its server span.
    let roots: Vec<&Got> = spans
        .iter()
        .filter(|g| g.span.parent_span_id.is_empty() && g.span.name == "prism.v1.KeyValue/Get")
        .collect();
    assert_eq!(
        roots.len(),
        1,
        "one new trace for the call without a traceparent"
    );
    assert_ne!(hex(&roots[0].span.trace_id), TRACE);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_message_carries_the_trace_to_its_consumer() -> anyhow::Result<()> {
    let (receiver, prism, channel) = dev_traced().await?;
    let mut ps = PubSubClient::with_interceptor(channel.clone(), Namespace::new("events"));
    let mut sub = Sub::open(&mut ps, subscribe_request("orders.created")).await?;

    let mut publish = tonic::Request::new(pb::PublishRequest {
        topic: "orders.created".into(),
        payload: br#"{"id": 1}"#.to_vec(),
        metadata: HashMap::from([("k".to_string(), "v".to_string())]),
    });
    publish
        .metadata_mut()
        .insert("traceparent", traceparent(PUBLISH_TRACE, CALLER_SPAN));
    ps.publish(publish).await?;
    let got = sub
        .next(WAIT)
        .await?
        .context("the subscriber got nothing")?;
    assert_eq!(got.metadata.get("k").map(String::as_str), Some("v"));
    let delivered = got
        .metadata
        .get("traceparent")
        .context("the delivered message carries no traceparent")?
        .clone();
    drop(sub);

    let spans = stop_and_collect(prism, &receiver).await?;
    let ours = trace(&spans, PUBLISH_TRACE);
    let server = child(&ours, CALLER_SPAN, "prism.v1.PubSub/Publish")?;
    let pattern = child(&ours, &hex(&server.span_id), "pattern publish")?;
    let capability = child(&ours, &hex(&pattern.span_id), "pubsub.publish")?;
    child(&ours, &hex(&capability.span_id), "memstore publish")?;
    let deliver = child(&ours, &hex(&capability.span_id), "deliver events")?;
    assert_eq!(deliver.kind, SpanKind::Consumer as i32);
    assert_eq!(
        attr(deliver, "messaging.destination.name").as_deref(),
        Some("orders.created")
    );
    // The consumer continues from the delivery span.
    assert_eq!(
        delivered,
        format!("00-{PUBLISH_TRACE}-{}-01", hex(&deliver.span_id))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ratio_samples_new_traces_and_a_callers_decision_is_kept() -> anyhow::Result<()> {
    let (receiver, endpoint) = receiver().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("prism.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"

[telemetry]
otlp_endpoint = "{endpoint}"
trace_sample_ratio = 0.0
service_name = "prism-sampled"

[backends.mem]
type = "memstore"

[namespaces.default]
pattern = "keyvalue"
slots = {{ kv = "mem" }}
"#
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    let prism = PrismProcess::start(&["serve", "--config", &config]).await?;
    let channel = Channel::from_shared(format!("http://{}", prism.addr))?
        .connect()
        .await?;
    let mut kv = KeyValueClient::with_interceptor(channel, Namespace::new("default"));
    for i in 0..20 {
        kv.set(pb::SetRequest {
            key: format!("unsampled-{i}"),
            value: b"v".to_vec(),
            ttl_ms: None,
        })
        .await?;
    }
    let mut sampled = tonic::Request::new(pb::SetRequest {
        key: "sampled".into(),
        value: b"v".to_vec(),
        ttl_ms: None,
    });
    sampled
        .metadata_mut()
        .insert("traceparent", traceparent(TRACE, CALLER_SPAN));
    kv.set(sampled).await?;

    let spans = stop_and_collect(prism, &receiver).await?;
    assert!(
        spans.iter().all(|g| hex(&g.span.trace_id) == TRACE),
        "ratio 0 keeps no trace that starts here"
    );
    let ours = trace(&spans, TRACE);
    let server = child(&ours, CALLER_SPAN, "prism.v1.KeyValue/Set")?;
    assert_eq!(
        ours.len(),
        4,
        "server, pattern, capability and backend spans"
    );
    assert!(ours.values().all(|g| g.service == "prism-sampled"));
    assert_eq!(attr(server, "rpc.method").as_deref(), Some("Set"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_is_not_an_otlp_url_is_refused_at_start() -> anyhow::Result<()> {
    let done = run(
        &[
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--otlp-endpoint",
            "collector:4317",
        ],
        WAIT,
    )
    .await?;
    assert_eq!(done.status.code(), Some(2), "stderr: {}", done.stderr);
    assert!(
        done.stderr.contains("telemetry.otlp_endpoint") && done.stderr.contains("http://"),
        "the error names the field and the expected form: {}",
        done.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_caller_cannot_force_a_trace() -> anyhow::Result<()> {
    const REFUSED_TRACE: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const FIRST_SIGHT_TRACE: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const VERIFIED_TRACE: &str = "cccccccccccccccccccccccccccccccc";
    let issuer = prism_acceptance::oidc::Issuer::start(None).await?;
    let (receiver, endpoint) = receiver().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("prism.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"

[auth]
mode = "jwt"
issuer = "{issuer}"
audience = "prism"

[telemetry]
otlp_endpoint = "{endpoint}"
trace_sample_ratio = 0.0
service_name = "prism-gated"

[backends.mem]
type = "memstore"

[namespaces.default]
pattern = "keyvalue"
slots = {{ kv = "mem" }}
"#,
            issuer = issuer.url
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    let prism = PrismProcess::start(&["serve", "--config", &config]).await?;
    let channel = Channel::from_shared(format!("http://{}", prism.addr))?
        .connect()
        .await?;
    let mut kv = KeyValueClient::with_interceptor(channel, Namespace::new("default"));
    let token = issuer.mint("tracer", &["default"])?;
    let call = |trace_id: &str, token: Option<&str>| {
        let mut request = tonic::Request::new(pb::SetRequest {
            key: "k".into(),
            value: b"v".to_vec(),
            ttl_ms: None,
        });
        request
            .metadata_mut()
            .insert("traceparent", traceparent(trace_id, CALLER_SPAN));
        if let Some(token) = token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    };
    // No token, sampled flag set: refused, and no trace.
    let refused = kv.set(call(REFUSED_TRACE, None)).await;
    assert_eq!(
        refused.err().map(|s| s.code()),
        Some(tonic::Code::Unauthenticated)
    );
    // A token seen for the first time is not trusted yet at the span layer
    // (ratio 0); once verified, its caller's flag decides.
    kv.set(call(FIRST_SIGHT_TRACE, Some(&token))).await?;
    kv.set(call(VERIFIED_TRACE, Some(&token))).await?;

    let spans = stop_and_collect(prism, &receiver).await?;
    assert!(
        trace(&spans, REFUSED_TRACE).is_empty(),
        "an unauthenticated caller's sampled flag made a trace"
    );
    assert!(trace(&spans, FIRST_SIGHT_TRACE).is_empty());
    let ours = trace(&spans, VERIFIED_TRACE);
    child(&ours, CALLER_SPAN, "prism.v1.KeyValue/Set")?;
    Ok(())
}
