//! KeyValue over real gRPC on loopback: the DESIGN.md semantics, bad input,
//! namespace isolation, health and reflection.

use std::time::Duration;

use prism_acceptance::{eventually, guest_component, memstore_config, pb, start};
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
async fn set_get_delete_exists_roundtrip() -> anyhow::Result<()> {
    let t = start(&memstore_config(&[("default", "keyvalue")])).await?;
    let mut kv = t.kv("default");
    kv.set(set("user:1", b"alice", None)).await?;
    assert_eq!(kv.get(get("user:1")).await?.into_inner().value, b"alice");
    assert!(
        kv.exists(pb::ExistsRequest {
            key: "user:1".into()
        })
        .await?
        .into_inner()
        .exists
    );
    assert!(
        kv.delete(pb::DeleteRequest {
            key: "user:1".into()
        })
        .await?
        .into_inner()
        .existed
    );
    let missing = kv.get(get("user:1")).await.err().map(|s| s.code());
    assert_eq!(missing, Some(Code::NotFound));
    // Deleting a missing key is not an error.
    assert!(
        !kv.delete(pb::DeleteRequest {
            key: "user:1".into()
        })
        .await?
        .into_inner()
        .existed
    );
    assert!(
        !kv.exists(pb::ExistsRequest {
            key: "user:1".into()
        })
        .await?
        .into_inner()
        .exists
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_binary_values_roundtrip_exactly() -> anyhow::Result<()> {
    let t = start(&memstore_config(&[("default", "keyvalue")])).await?;
    let mut kv = t.kv("default");
    kv.set(set("empty", b"", None)).await?;
    assert_eq!(kv.get(get("empty")).await?.into_inner().value, b"");
    assert!(
        kv.exists(pb::ExistsRequest {
            key: "empty".into()
        })
        .await?
        .into_inner()
        .exists
    );
    let binary: Vec<u8> = (0..=255u8).chain([0, 0xFF, 0]).collect();
    kv.set(set("bin", &binary, None)).await?;
    assert_eq!(kv.get(get("bin")).await?.into_inner().value, binary);
    let big = vec![0xABu8; 1 << 20];
    kv.set(set("big", &big, None)).await?;
    assert_eq!(kv.get(get("big")).await?.into_inner().value, big);
    t.stop().await
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
async fn ttl_expires_and_overwrite_replaces_it() -> anyhow::Result<()> {
    let t = start(&memstore_config(&[("default", "keyvalue")])).await?;
    let mut kv = t.kv("default");
    kv.set(set("short", b"v", Some(300))).await?;
    kv.set(set("reset", b"v", Some(300))).await?;
    kv.set(set("reset", b"v2", None)).await?;
    assert!(
        kv.exists(pb::ExistsRequest {
            key: "short".into()
        })
        .await?
        .into_inner()
        .exists
    );
    let gone = eventually(Duration::from_secs(3), || {
        let mut kv = kv.clone();
        async move { kv.get(get("short")).await.err().map(|s| s.code()) == Some(Code::NotFound) }
    })
    .await;
    assert!(gone, "key with a 300 ms TTL still readable after 3 s");
    let scan = kv
        .scan(pb::ScanRequest {
            prefix: String::new(),
            cursor: String::new(),
            limit: 0,
        })
        .await?;
    assert_eq!(scan.into_inner().keys, vec!["reset".to_string()]);
    assert!(
        !kv.exists(pb::ExistsRequest {
            key: "short".into()
        })
        .await?
        .into_inner()
        .exists
    );
    assert_eq!(kv.get(get("reset")).await?.into_inner().value, b"v2");
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_pages_return_every_key_once() -> anyhow::Result<()> {
    let t = start(&memstore_config(&[("default", "keyvalue")])).await?;
    let mut kv = t.kv("default");
    for chunk in (0..3000).collect::<Vec<_>>().chunks(500) {
        let entries = chunk
            .iter()
            .map(|i| set(&format!("user:{i}"), b"x", None))
            .collect();
        kv.batch_set(pb::BatchSetRequest { entries }).await?;
    }
    kv.set(set("post:1", b"x", None)).await?;
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = kv
            .scan(pb::ScanRequest {
                prefix: "user:*".into(),
                cursor,
                limit: 700,
            })
            .await?
            .into_inner();
        assert!(page.keys.len() <= 700);
        seen.extend(page.keys);
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(seen.len(), 3000);
    assert_eq!(unique.len(), 3000);
    assert!(seen.iter().all(|k| k.starts_with("user:")));
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_operations() -> anyhow::Result<()> {
    let t = start(&memstore_config(&[("default", "keyvalue")])).await?;
    let mut kv = t.kv("default");
    kv.batch_set(pb::BatchSetRequest {
        entries: vec![set("a", b"1", None), set("b", b"2", None)],
    })
    .await?;
    let items = kv
        .batch_get(pb::BatchGetRequest {
            keys: vec!["a".into(), "zz".into(), "b".into()],
        })
        .await?
        .into_inner()
        .items;
    let found: Vec<(String, bool, Vec<u8>)> = items
        .into_iter()
        .map(|i| (i.key, i.found, i.value))
        .collect();
    assert_eq!(
        found,
        vec![
            ("a".into(), true, b"1".to_vec()),
            ("zz".into(), false, vec![]),
            ("b".into(), true, b"2".to_vec())
        ]
    );
    let deleted = kv
        .batch_delete(pb::BatchDeleteRequest {
            keys: vec!["a".into(), "b".into(), "c".into()],
        })
        .await?;
    assert_eq!(deleted.into_inner().deleted, 2);
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_isolated() -> anyhow::Result<()> {
    let t = start(&memstore_config(&[
        ("alpha", "keyvalue"),
        ("beta", "keyvalue"),
    ]))
    .await?;
    let (mut a, mut b) = (t.kv("alpha"), t.kv("beta"));
    a.set(set("shared", b"from-alpha", None)).await?;
    b.set(set("shared", b"from-beta", None)).await?;
    a.set(set("only-alpha", b"x", None)).await?;
    assert_eq!(
        a.get(get("shared")).await?.into_inner().value,
        b"from-alpha"
    );
    assert_eq!(b.get(get("shared")).await?.into_inner().value, b"from-beta");
    assert_eq!(
        b.get(get("only-alpha")).await.err().map(|s| s.code()),
        Some(Code::NotFound)
    );
    let b_keys = b
        .scan(pb::ScanRequest {
            prefix: String::new(),
            cursor: String::new(),
            limit: 0,
        })
        .await?;
    assert_eq!(b_keys.into_inner().keys, vec!["shared".to_string()]);
    assert!(
        !b.delete(pb::DeleteRequest {
            key: "only-alpha".into()
        })
        .await?
        .into_inner()
        .existed
    );
    assert!(
        a.exists(pb::ExistsRequest {
            key: "only-alpha".into()
        })
        .await?
        .into_inner()
        .exists
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_succeed() -> anyhow::Result<()> {
    let t = start(&memstore_config(&[("default", "keyvalue")])).await?;
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut kv = t.kv("default");
        tasks.push(tokio::spawn(async move {
            let key = format!("c:{i}");
            kv.set(set(&key, key.as_bytes(), None)).await?;
            let value = kv.get(get(&key)).await?.into_inner().value;
            anyhow::ensure!(value == key.as_bytes(), "wrong value for {key}");
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
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
