//! What hardening costs and what it bounds: KeyValue GET on a TLS listener
//! against the same Prism config in plaintext (each its own process,
//! interleaved, raw gRPC stubs on one connection each), and the resident
//! memory a flood of refused, unauthenticated calls with made-up namespace
//! headers leaves behind (goal: at most 1 MiB per 10 000 calls).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use prism::pb;
use prism::pb::key_value_client::KeyValueClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::load::{self, BENCH_KEY, Op, Target, run_interleaved};
use crate::procs::Server;
use crate::report::{Report, Row};

const KV: &str = "[backends.mem]\ntype = \"memstore\"\n[namespaces.default]\npattern = \"keyvalue\"\nslots = { kv = \"mem\" }\n";

/// Refused calls per measurement, and the allowed growth for them.
const REFUSED_CALLS: usize = 10_000;
const GOAL_GROWTH_KIB: f64 = 1024.0;

pub async fn rows(report: &mut Report, payload: &[u8], measure: Duration) -> anyhow::Result<()> {
    tls_rows(report, payload, measure).await?;
    refused_rows(report).await
}

async fn tls_channel(addr: SocketAddr, ca: &Path) -> anyhow::Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
        .domain_name("localhost");
    Ok(Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

async fn seed(channel: Channel, payload: &[u8]) -> anyhow::Result<()> {
    KeyValueClient::new(channel)
        .set(pb::SetRequest {
            key: BENCH_KEY.into(),
            value: payload.to_vec(),
            ttl_ms: None,
        })
        .await?;
    Ok(())
}

async fn tls_rows(report: &mut Report, payload: &[u8], measure: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let [ca, cert, key, _, _] = prism_acceptance::tls::test_pki(dir.path())?;
    let tls_config = format!(
        "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{KV}",
        cert.display(),
        key.display()
    );
    let plain_server = Server::prism(KV).await?;
    let tls_server = Server::prism(&tls_config).await?;
    let plain = load::connect(plain_server.addr).await?;
    let tls = tls_channel(tls_server.addr, &ca).await?;
    seed(plain.clone(), payload).await?;
    seed(tls.clone(), payload).await?;
    for concurrency in [1usize, 64] {
        let targets = [Target::Grpc(plain.clone()), Target::Grpc(tls.clone())];
        let results = run_interleaved(&targets, Op::Get, concurrency, measure, payload).await?;
        let [base, ours] =
            <[_; 2]>::try_from(results).map_err(|_| anyhow::anyhow!("two targets, two results"))?;
        let tag = format!("kv_get_c{concurrency}");
        report.push(Row::new(
            format!("prism_tls_{tag}_throughput"),
            ours.throughput,
            "req/s",
            format!("prism_plaintext_{tag}_throughput"),
            base.throughput,
        ));
        report.push(Row::new(
            format!("prism_tls_{tag}_p50"),
            ours.p50_us,
            "us",
            format!("prism_plaintext_{tag}_p50"),
            base.p50_us,
        ));
        if concurrency == 1 {
            // The goal is absolute: at most 30 µs added at c=1.
            report.push(Row::target(
                format!("prism_tls_{tag}_added_p50"),
                ours.p50_us - base.p50_us,
                "us",
                "target_tls_added_p50",
                30.0,
            ));
        }
    }
    plain_server.stop().await?;
    tls_server.stop().await
}

/// `calls` Gets without a token, each naming another ~8 KiB namespace, 32
/// at a time; any answer but UNAUTHENTICATED is an error.
async fn refused_flood(channel: &Channel, first: usize, calls: usize) -> anyhow::Result<()> {
    let per_task = calls / 32;
    let mut tasks = Vec::new();
    for task in 0..32 {
        let mut client = KeyValueClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let n = first + task * per_task + i;
                let mut request = tonic::Request::new(pb::GetRequest { key: "k".into() });
                let namespace = format!("{n:010}-").repeat(8000 / 11);
                request
                    .metadata_mut()
                    .insert(prism::namespace::NAMESPACE_METADATA, namespace.parse()?);
                match client.get(request).await {
                    Err(s) if s.code() == tonic::Code::Unauthenticated => {}
                    other => anyhow::bail!("refused call {n} answered {other:?}"),
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn refused_rows(report: &mut Report) -> anyhow::Result<()> {
    // The issuer is never reached: calls without a token are refused first.
    let config = format!(
        "[auth]\nmode = \"jwt\"\nissuer = \"http://127.0.0.1:9/\"\naudience = \"prism\"\n{KV}"
    );
    let server = Server::prism(&config).await?;
    let channel = load::connect(server.addr).await?;
    refused_flood(&channel, 0, 3_200).await?;
    let before = server.rss_kib()?;
    refused_flood(&channel, 3_200, REFUSED_CALLS).await?;
    let after = server.rss_kib()?;
    report.push(Row::target(
        "prism_rss_growth_per_10k_refused_calls",
        after.saturating_sub(before) as f64,
        "KiB",
        "target_rss_growth_per_10k_refused_calls",
        GOAL_GROWTH_KIB,
    ));
    server.stop().await
}
