//! The `prism` binary as users run it: `--help` on every command, `prism
//! dev` and `prism serve` serving over gRPC and draining on SIGTERM (exit
//! 0), and start-up errors on stderr naming the file and field (exit 2).

use std::time::Duration;

use prism::pb::key_value_client::KeyValueClient;
use prism::pb::pub_sub_client::PubSubClient;
use prism_acceptance::binary::{PrismProcess, run};
use prism_acceptance::{Namespace, eventually, pb};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(60);

async fn channel(addr: std::net::SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_on_every_command() -> anyhow::Result<()> {
    for (args, expected) in [
        (vec!["--help"], vec!["dev", "serve"]),
        (vec!["dev", "--help"], vec!["--listen"]),
        (vec!["serve", "--help"], vec!["--config", "--listen"]),
        (vec!["health", "--help"], vec!["--addr", "--service"]),
    ] {
        let out = run(&args, WAIT).await?;
        assert!(out.status.success(), "prism {args:?}: {}", out.stderr);
        for word in expected {
            assert!(
                out.stdout.contains(word),
                "prism {args:?} lacks {word}:\n{}",
                out.stdout
            );
        }
    }
    let out = run(&["frobnicate"], WAIT).await?;
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("frobnicate"), "{}", out.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_keyvalue_and_pubsub_and_drains_on_sigterm() -> anyhow::Result<()> {
    let prism = PrismProcess::start(&["dev", "--listen", "127.0.0.1:0"]).await?;
    let ch = channel(prism.addr).await?;
    // `default` (KeyValue) needs no namespace metadata.
    let mut kv = KeyValueClient::new(ch.clone());
    kv.set(pb::SetRequest {
        key: "k".into(),
        value: b"v".to_vec(),
        ttl_ms: None,
    })
    .await?;
    assert_eq!(
        kv.get(pb::GetRequest { key: "k".into() })
            .await?
            .into_inner()
            .value,
        b"v"
    );
    // `events` is a PubSub namespace.
    let mut ps = PubSubClient::with_interceptor(ch, Namespace::new("events"));
    let published = ps
        .publish(pb::PublishRequest {
            topic: "t".into(),
            payload: b"p".to_vec(),
            metadata: Default::default(),
        })
        .await?
        .into_inner();
    assert!(!published.id.is_empty());
    // `prism health` (the container health check) sees it serving.
    let addr = prism.addr.to_string();
    let out = run(&["health", "--addr", &addr], WAIT).await?;
    assert!(out.status.success(), "{} {}", out.stdout, out.stderr);
    assert_eq!(out.stdout.trim(), "SERVING");
    let out = run(&["health", "--addr", &addr, "--service", "devices"], WAIT).await?;
    assert!(out.status.success(), "{} {}", out.stdout, out.stderr);
    let status = prism.terminate(WAIT).await?;
    assert!(status.success(), "prism dev exited with {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_its_config_and_drains_on_sigterm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("prism.toml");
    std::fs::write(
        &path,
        "[backends.mem]\ntype = \"memstore\"\n[namespaces.orders]\npattern = \"keyvalue\"\nslots = { kv = \"mem\" }\n",
    )?;
    let config = path.display().to_string();
    let prism =
        PrismProcess::start(&["serve", "--config", &config, "--listen", "127.0.0.1:0"]).await?;
    let mut kv =
        KeyValueClient::with_interceptor(channel(prism.addr).await?, Namespace::new("orders"));
    kv.set(pb::SetRequest {
        key: "o".into(),
        value: b"1".to_vec(),
        ttl_ms: None,
    })
    .await?;
    assert_eq!(
        kv.get(pb::GetRequest { key: "o".into() })
            .await?
            .into_inner()
            .value,
        b"1"
    );
    let status = prism.terminate(WAIT).await?;
    assert!(status.success(), "prism serve exited with {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_errors_name_file_and_field_and_exit_2() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let write = |name: &str, text: &str| -> anyhow::Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let missing = dir.path().join("missing.toml").display().to_string();
    let bad_backend = write(
        "bad-backend.toml",
        "[backends.mem]\ntype = \"memstore\"\n[namespaces.orders]\npattern = \"keyvalue\"\nslots = { kv = \"cache\" }\n",
    )?;
    let bad_toml = write("bad-toml.toml", "[server\nlisten = 1\n")?;
    let bad_settings = write(
        "bad-settings.toml",
        "[backends.mem]\ntype = \"memstore\"\n[namespaces.orders]\npattern = \"keyvalue\"\nslots = { kv = \"mem\" }\n[namespaces.orders.settings]\nmax_batch = 0\n",
    )?;
    for (config, expected) in [
        (&missing, format!("cannot read config file {missing}")),
        (
            &bad_backend,
            format!("{bad_backend}: namespaces.orders.slots.kv: backend 'cache' is not defined"),
        ),
        (&bad_toml, bad_toml.clone()),
        (
            &bad_settings,
            format!("{bad_settings}: namespaces.orders.settings"),
        ),
    ] {
        let out = run(&["serve", "--config", config], WAIT).await?;
        assert_eq!(out.status.code(), Some(2), "{config}: {}", out.stderr);
        assert!(
            out.stderr.contains(&expected),
            "expected {expected:?} on stderr:\n{}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{config}: stdout: {}", out.stdout);
    }
    // `prism health` against nothing listening: exit 1 naming the address.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let out = run(&["health", "--addr", &closed, "--timeout-ms", "2000"], WAIT).await?;
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&closed), "{}", out.stderr);
    // A taken port: exit 2 naming the address.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = blocker.local_addr()?.to_string();
    let out = run(&["dev", "--listen", &addr], WAIT).await?;
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("cannot listen on {addr}")),
        "{}",
        out.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_says_once_at_startup_that_authentication_is_off() -> anyhow::Result<()> {
    const AUTH_OFF: &str = "auth mode is none: any caller reaches any namespace";
    let prism = PrismProcess::start(&["dev", "--listen", "127.0.0.1:0"]).await?;
    // Said at start-up, before any request.
    let said = eventually(Duration::from_secs(10), || {
        let stderr = prism.stderr();
        async move { stderr.contains(AUTH_OFF) }
    })
    .await;
    assert!(said, "no {AUTH_OFF:?} on stderr:\n{}", prism.stderr());
    // Calls without a token are served, and do not repeat it.
    let ch = channel(prism.addr).await?;
    let mut kv = KeyValueClient::new(ch.clone());
    for i in 0..5 {
        kv.set(pb::SetRequest {
            key: format!("k{i}"),
            value: b"v".to_vec(),
            ttl_ms: None,
        })
        .await?;
        kv.get(pb::GetRequest {
            key: format!("k{i}"),
        })
        .await?;
    }
    PubSubClient::with_interceptor(ch, Namespace::new("events"))
        .publish(pb::PublishRequest {
            topic: "t".into(),
            payload: b"p".to_vec(),
            metadata: Default::default(),
        })
        .await?;
    let (status, stderr) = prism.terminate_with_stderr(WAIT).await?;
    assert!(status.success(), "prism dev exited with {status}");
    let said: Vec<&str> = stderr.lines().filter(|l| l.contains(AUTH_OFF)).collect();
    assert_eq!(said.len(), 1, "said {} times:\n{stderr}", said.len());
    assert!(said[0].contains("WARN"), "not a warning: {}", said[0]);
    assert!(
        said[0].contains("set [auth] mode = \"jwt\" for production"),
        "{}",
        said[0]
    );
    assert!(!stderr.contains("auth mode is jwt"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_plain_text_when_piped_and_json_on_request() -> anyhow::Result<()> {
    // The fixture's stderr is a pipe, as a log file or a collector is.
    let text = PrismProcess::start(&["dev", "--listen", "127.0.0.1:0"]).await?;
    let (status, stderr) = text.terminate_with_stderr(WAIT).await?;
    assert!(status.success(), "prism dev exited with {status}");
    assert!(stderr.contains("auth mode is none"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "escape codes in piped logs: {stderr:?}"
    );

    let json =
        PrismProcess::start(&["dev", "--listen", "127.0.0.1:0", "--log-format", "json"]).await?;
    let (status, stderr) = json.terminate_with_stderr(WAIT).await?;
    assert!(status.success(), "prism dev exited with {status}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("not a JSON log line ({e}): {line}"))?;
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("auth mode is none")),
        "{stderr}"
    );
    Ok(())
}
