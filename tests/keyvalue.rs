//! Host behaviour over real gRPC on loopback that is not per-backend (the
//! acceptance suite covers that): pattern settings and limits, bad input,
//! user patterns, start-up errors, health and reflection.

use prism_acceptance::{guest_component, memstore_config, pb, start};
use tonic::Code;

fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> pb::SetRequest {
    pb::SetRequest {
        key: key.into(),
        value: value.to_vec(),
        ttl_ms,
    }
}

fn get(key: &str) -> pb::GetRequest {
    pb::GetRequest { key: key.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_nothing_is_written() -> anyhow::Result<()> {
    let config = memstore_config(&[("small", "keyvalue")])
        + "[namespaces.small.settings]\nmax_value_bytes = 16\nmax_key_bytes = 8\n";
    let t = start(&config).await?;
    let mut kv = t.kv("small");

    let err = kv.set(set("", b"v", None)).await.err();
    assert_eq!(err.as_ref().map(|s| s.code()), Some(Code::InvalidArgument));
    assert!(err.map(|s| s.message().contains("empty")).unwrap_or(false));

    let err = kv.set(set("much-too-long", b"v", None)).await.err();
    assert_eq!(err.as_ref().map(|s| s.code()), Some(Code::InvalidArgument));
    assert!(
        err.map(|s| s.message().contains("limit is 8 bytes"))
            .unwrap_or(false)
    );

    let err = kv.set(set("k", &[1u8; 17], None)).await.err();
    assert_eq!(err.as_ref().map(|s| s.code()), Some(Code::InvalidArgument));
    assert!(
        err.map(|s| s.message().contains("17 bytes"))
            .unwrap_or(false)
    );
    assert_eq!(
        kv.get(get("k")).await.err().map(|s| s.code()),
        Some(Code::NotFound)
    );

    let err = kv
        .set(set("k", b"v", Some(0)))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(err, Some(Code::InvalidArgument));

    // One bad entry: the whole batch is refused and nothing is written.
    let batch = pb::BatchSetRequest {
        entries: vec![set("a", b"ok", None), set("b", &[0u8; 64], None)],
    };
    assert_eq!(
        kv.batch_set(batch).await.err().map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        kv.get(get("a")).await.err().map(|s| s.code()),
        Some(Code::NotFound)
    );

    let bad_cursor = pb::ScanRequest {
        prefix: String::new(),
        cursor: "%%%".into(),
        limit: 0,
    };
    assert_eq!(
        kv.scan(bad_cursor).await.err().map(|s| s.code()),
        Some(Code::InvalidArgument)
    );

    let unknown = t.kv("nope").get(get("k")).await.err();
    assert_eq!(unknown.as_ref().map(|s| s.code()), Some(Code::NotFound));
    assert!(
        unknown
            .map(|s| s.message().contains("namespace 'nope'"))
            .unwrap_or(false)
    );

    // The server is still serving.
    kv.set(set("k", b"fine", None)).await?;
    assert_eq!(kv.get(get("k")).await?.into_inner().value, b"fine");
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_pattern_from_a_wasm_path_is_served() -> anyhow::Result<()> {
    let path = guest_component("keyvalue");
    let config = memstore_config(&[("custom", &path.display().to_string())]);
    let t = start(&config).await?;
    let mut kv = t.kv("custom");
    kv.set(set("k", b"v", None)).await?;
    assert_eq!(kv.get(get("k")).await?.into_inner().value, b"v");
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_patterns_and_settings_fail_startup_naming_the_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let core_module = dir.path().join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\0\0\0")?;
    let empty_component = dir.path().join("empty.wasm");
    std::fs::write(&empty_component, b"\0asm\x0d\0\x01\0")?;
    let cases = [
        (
            memstore_config(&[("x", &core_module.display().to_string())]),
            "not a usable WebAssembly component",
        ),
        (
            memstore_config(&[("x", &empty_component.display().to_string())]),
            "does not fit the prism:pattern/keyvalue world",
        ),
        (
            memstore_config(&[("x", "/no/such/pattern.wasm")]),
            "cannot read",
        ),
        (
            memstore_config(&[("x", "kv")]),
            "neither a built-in pattern",
        ),
        (
            memstore_config(&[("x", "keyvalue")]) + "[namespaces.x.settings]\nmax_page_size = -3\n",
            "max_page_size",
        ),
        (
            memstore_config(&[("x", "keyvalue")]) + "[namespaces.x.settings]\nbogus = 1\n",
            "unknown setting 'bogus'",
        ),
    ];
    for (config, expected) in cases {
        let err = match start(&config).await {
            Ok(t) => {
                t.stop().await?;
                anyhow::bail!("config started but should fail with {expected:?}:\n{config}");
            }
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains("namespaces.x."),
            "error does not name the field: {err}"
        );
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() -> anyhow::Result<()> {
    let t = start(&memstore_config(&[("default", "keyvalue")])).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(t.channel());
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "prism.v1.KeyValue".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(t.channel())
        .server_reflection_info(tokio_stream::iter(vec![list]))
        .await?
        .into_inner();
    let reply = replies.message().await?.and_then(|r| r.message_response);
    let Some(MessageResponse::ListServicesResponse(services)) = reply else {
        anyhow::bail!("reflection did not list services: {reply:?}");
    };
    let names: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"prism.v1.KeyValue".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_memstore_is_resource_exhausted_and_writes_nothing() -> anyhow::Result<()> {
    let config = "[backends.mem]\ntype = \"memstore\"\nmax_keys = 2\n\n[namespaces.default]\npattern = \"keyvalue\"\nslots = { kv = \"mem\" }\n";
    let t = start(config).await?;
    let mut kv = t.kv("default");
    kv.set(set("a", b"1", None)).await?;
    kv.set(set("b", b"2", None)).await?;
    let err = kv.set(set("c", b"3", None)).await.err();
    assert_eq!(
        err.as_ref().map(|s| s.code()),
        Some(Code::ResourceExhausted)
    );
    let message = err.map(|s| s.message().to_string()).unwrap_or_default();
    assert!(message.contains("backends.mem.max_keys"), "{message}");
    assert_eq!(
        kv.get(get("c")).await.err().map(|s| s.code()),
        Some(Code::NotFound)
    );
    // Overwriting an existing key still works, and deleting makes room.
    kv.set(set("a", b"1b", None)).await?;
    kv.delete(pb::DeleteRequest { key: "b".into() }).await?;
    kv.set(set("c", b"3", None)).await?;
    t.stop().await
}
