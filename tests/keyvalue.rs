//! Host behaviour over real gRPC on loopback that is not per-backend (the
//! acceptance suite covers that): pattern settings and limits, bad input,
//! user patterns, start-up errors, health and reflection.

use std::time::Duration;

use prism_acceptance::{eventually, guest_component, memstore_config, pb, raw, start};
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
            "namespaces.x.pattern",
            "not a usable WebAssembly component",
        ),
        (
            memstore_config(&[("x", &empty_component.display().to_string())]),
            "namespaces.x.pattern",
            "fits none of Prism's pattern worlds (prism:pattern/keyvalue: ",
        ),
        (
            memstore_config(&[("x", "/no/such/pattern.wasm")]),
            "namespaces.x.pattern",
            "cannot read",
        ),
        (
            memstore_config(&[("x", "kv")]),
            "namespaces.x.pattern",
            "neither a built-in pattern",
        ),
        (
            memstore_config(&[("x", "keyvalue")]) + "[namespaces.x.settings]\nmax_page_size = -3\n",
            "namespaces.x.settings",
            "max_page_size",
        ),
        (
            memstore_config(&[("x", "keyvalue")]) + "[namespaces.x.settings]\nbogus = 1\n",
            "namespaces.x.settings",
            "unknown setting 'bogus'",
        ),
        (
            memstore_config(&[("x", "keyvalue")]) + "[namespaces.x.limits]\ncompute_slots = 0\n",
            "namespaces.x.limits.compute_slots",
            "must be positive",
        ),
    ];
    for (config, field, expected) in cases {
        let err = match start(&config).await {
            Ok(t) => {
                t.stop().await?;
                anyhow::bail!("config started but should fail with {expected:?}:\n{config}");
            }
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(&format!("{field}: ")),
            "error does not name the field {field}: {err}"
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

    let names = prism_acceptance::reflected_services(t.channel()).await?;
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
    assert_eq!(kv.get(get("a")).await?.into_inner().value, b"1b");
    assert_eq!(kv.get(get("c")).await?.into_inner().value, b"3");
    assert_eq!(
        kv.get(get("b")).await.err().map(|s| s.code()),
        Some(Code::NotFound)
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_settings_shape_ttl_pages_and_batches() -> anyhow::Result<()> {
    let config = memstore_config(&[("shaped", "keyvalue")])
        + "[namespaces.shaped.settings]\ndefault_ttl_ms = 400\nmax_ttl_ms = 600000\ndefault_page_size = 3\nmax_page_size = 5\nmax_batch = 4\n";
    let t = start(&config).await?;
    let mut kv = t.kv("shaped");
    // default_ttl_ms applies to writes without a TTL, not to explicit ones.
    kv.set(set("short", b"v", None)).await?;
    kv.set(set("long", b"v", Some(60_000))).await?;
    assert!(
        kv.exists(pb::ExistsRequest {
            key: "short".into()
        })
        .await?
        .into_inner()
        .exists
    );
    let kv_ref = &kv;
    let expired = eventually(Duration::from_secs(3), || {
        let mut kv = kv_ref.clone();
        async move { kv.get(get("short")).await.err().map(|s| s.code()) == Some(Code::NotFound) }
    })
    .await;
    assert!(expired, "default_ttl_ms did not expire the key");
    assert_eq!(kv.get(get("long")).await?.into_inner().value, b"v");
    // max_ttl_ms bounds explicit TTLs.
    assert_eq!(
        kv.set(set("k", b"v", Some(600_001)))
            .await
            .err()
            .map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
    // Pages: 3 by default, at most 5 whatever is asked, every key once.
    let batch = pb::BatchSetRequest {
        entries: (0..4).map(|i| set(&format!("p{i}"), b"x", None)).collect(),
    };
    kv.batch_set(batch).await?;
    let batch = pb::BatchSetRequest {
        entries: (4..8).map(|i| set(&format!("p{i}"), b"x", None)).collect(),
    };
    kv.batch_set(batch).await?;
    let scan = |limit: u32, cursor: String| pb::ScanRequest {
        prefix: "p".into(),
        cursor,
        limit,
    };
    let first = kv.scan(scan(0, String::new())).await?.into_inner();
    assert_eq!(first.keys, vec!["p0", "p1", "p2"]);
    let second = kv.scan(scan(100, first.next_cursor)).await?.into_inner();
    assert_eq!(second.keys, vec!["p3", "p4", "p5", "p6", "p7"]);
    // max_batch: a fifth entry is refused, nothing written.
    let batch = pb::BatchSetRequest {
        entries: (0..5).map(|i| set(&format!("b{i}"), b"x", None)).collect(),
    };
    let err = kv.batch_set(batch).await.err();
    assert!(
        err.as_ref()
            .is_some_and(|s| s.code() == Code::InvalidArgument
                && s.message().contains("batch has 5 items; the limit is 4")),
        "{err:?}"
    );
    assert_eq!(
        kv.get(get("b0")).await.err().map(|s| s.code()),
        Some(Code::NotFound)
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_do_not_decode_are_invalid_argument() -> anyhow::Result<()> {
    let t = start(&memstore_config(&[("default", "keyvalue")])).await?;
    // GetRequest.key (field 1, a string) holding bytes that are not UTF-8.
    let not_utf8 = vec![0x0a, 0x02, 0xff, 0xfe];
    // A length prefix that runs past the end of the message.
    let truncated = vec![0x0a, 0x10, b'a'];
    for (label, body) in [("not UTF-8", not_utf8), ("truncated", truncated)] {
        let status = raw::call(t.channel(), "/prism.v1.KeyValue/Get", "default", body)
            .await
            .err();
        let Some(status) = status else {
            anyhow::bail!("{label}: the server accepted it");
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{label}: {status:?}");
        assert!(
            status
                .message()
                .contains("does not decode as prism.v1.GetRequest"),
            "{label}: {}",
            status.message()
        );
    }
    // The server serves well-formed requests right after.
    let mut kv = t.kv("default");
    kv.set(set("k", b"v", None)).await?;
    assert_eq!(kv.get(get("k")).await?.into_inner().value, b"v");
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_resource_exhausted() -> anyhow::Result<()> {
    let config = "[server]\nmax_message_bytes = 1048576\n".to_string()
        + &memstore_config(&[("default", "keyvalue")]);
    let t = start(&config).await?;
    // SetRequest { key: "k", value: 2 MiB } encoded by hand.
    let value = vec![7u8; 2 << 20];
    let mut body = vec![0x0a, 0x01, b'k', 0x12];
    let mut len = value.len();
    while len >= 0x80 {
        body.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    body.push(len as u8);
    body.extend_from_slice(&value);
    let status = raw::call(t.channel(), "/prism.v1.KeyValue/Set", "default", body)
        .await
        .err();
    let Some(status) = status else {
        anyhow::bail!("a 2 MiB request was accepted under a 1 MiB limit");
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("1048576 bytes, server.max_message_bytes"),
        "{}",
        status.message()
    );
    assert_eq!(
        t.kv("default").get(get("k")).await.err().map(|s| s.code()),
        Some(Code::NotFound)
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_never_echo_unbounded_input() -> anyhow::Result<()> {
    let t = start(&memstore_config(&[("default", "keyvalue")])).await?;
    let huge = "n".repeat(10_000);
    let status = t.kv(&huge).get(get("k")).await.err();
    let Some(status) = status else {
        anyhow::bail!("an unknown namespace answered");
    };
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().len() < 300,
        "{} bytes echoed",
        status.message().len()
    );
    assert!(
        status.message().contains("(10000 bytes)"),
        "{}",
        status.message()
    );
    // A huge key is refused without being quoted whole.
    let key = "k".repeat(100_000);
    let status = t.kv("default").set(set(&key, b"v", None)).await.err();
    let message = status.map(|s| s.message().to_string()).unwrap_or_default();
    assert!(message.len() < 300, "{} bytes echoed", message.len());
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_slots_on_the_wrong_backend_fail_startup_naming_the_slot() -> anyhow::Result<()> {
    // Nothing listens on port 1: the slot check must not need the server.
    let backends = "[backends.mem]\ntype = \"memstore\"\n\n[backends.bus]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:1\"\n";
    let devices = |slots: &str| {
        format!(
            "{backends}\n[namespaces.devices]\npattern = \"multicast-registry\"\nslots = {{ {slots} }}\n"
        )
    };
    let cases = [
        (
            devices("registry = \"bus\", messaging = \"bus\""),
            "namespaces.devices.slots.registry",
            "backend 'bus' cannot serve a registry slot, which needs registry (it serves: pubsub)",
        ),
        (
            devices("registry = \"bus\", messaging = \"mem\""),
            "namespaces.devices.slots.registry",
            "backend 'bus' cannot serve a registry slot",
        ),
        // Every backend type serves pubsub, so a messaging slot can only be
        // bound to a backend that does not exist.
        (
            devices("registry = \"mem\", messaging = \"cache\""),
            "namespaces.devices.slots.messaging",
            "backend 'cache' is not defined under [backends] (defined: bus, mem)",
        ),
        // A messaging slot on a pattern that has none.
        (
            "[backends.mem]\ntype = \"memstore\"\n\n[namespaces.devices]\npattern = \"keyvalue\"\nslots = { kv = \"mem\", messaging = \"mem\" }\n".to_string(),
            "namespaces.devices.slots.messaging",
            "the keyvalue pattern has no such slot (it uses: kv)",
        ),
    ];
    for (config, field, expected) in cases {
        let err = match start(&config).await {
            Ok(t) => {
                t.stop().await?;
                anyhow::bail!("config started but should fail with {expected:?}:\n{config}");
            }
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(&format!("{field}: ")),
            "error does not name the field {field}: {err}"
        );
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
        assert!(
            !err.contains("127.0.0.1:1"),
            "the check tried the NATS server: {err}"
        );
    }
    // The same namespace with both slots on backends that serve them starts.
    let t = start(
        "[backends.mem]\ntype = \"memstore\"\n\n[namespaces.devices]\npattern = \"multicast-registry\"\nslots = { registry = \"mem\", messaging = \"mem\" }\n",
    )
    .await?;
    t.stop().await
}
