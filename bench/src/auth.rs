//! What authentication costs: KV GET through Prism with `[auth] mode =
//! "jwt"` (a real OIDC issuer, oidc-provider, started for the run) vs the
//! same Prism without auth, each its own process, interleaved; and, in
//! process, one first-sight RS256 verification vs a cached one.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prism::auth::Authenticator;
use prism::config::{AuthConfig, AuthMode};
use prism::pb;
use prism_acceptance::oidc::Issuer;
use serde_json::json;

use crate::load::{self, Op, Target, run_interleaved};
use crate::procs::Server;
use crate::report::{Report, Row};

const KV: &str = "[backends.mem]\ntype = \"memstore\"\n[namespaces.default]\npattern = \"keyvalue\"\nslots = { kv = \"mem\" }\n";

pub async fn rows(report: &mut Report, payload: &[u8], measure: Duration) -> anyhow::Result<()> {
    let issuer = Issuer::start(Some(3600)).await?;
    let off = Server::prism(KV).await?;
    let on = Server::prism(&format!(
        "[auth]\nmode = \"jwt\"\nissuer = \"{}\"\naudience = \"prism\"\n{KV}",
        issuer.url
    ))
    .await?;
    let token: Arc<str> = issuer.token("prism-test-all", "urn:prism").await?.into();
    let bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {token}").parse()?;
    let off_channel = load::connect(off.addr).await?;
    let on_channel = load::connect(on.addr).await?;
    for target in [
        Target::Grpc(off_channel.clone()),
        Target::GrpcAuth(on_channel.clone(), bearer.clone()),
    ] {
        load::drive(target, Op::Set, 1, Duration::from_millis(50), payload).await?;
    }
    for concurrency in [1usize, 64] {
        let targets = [
            Target::Grpc(off_channel.clone()),
            Target::GrpcAuth(on_channel.clone(), bearer.clone()),
        ];
        let results = run_interleaved(&targets, Op::Get, concurrency, measure, payload).await?;
        let [plain, authed] =
            <[_; 2]>::try_from(results).map_err(|_| anyhow::anyhow!("two targets, two results"))?;
        if concurrency == 1 {
            report.push(Row::new(
                "prism_auth_kv_get_c1_p50",
                authed.p50_us,
                "us",
                "prism_noauth_kv_get_c1_p50",
                plain.p50_us,
            ));
            report.push(Row::target(
                "prism_auth_kv_get_c1_added_p50",
                authed.p50_us - plain.p50_us,
                "us",
                "target_auth_added_p50",
                5.0,
            ));
        } else {
            report.push(Row::new(
                "prism_auth_kv_get_c64_throughput",
                authed.throughput,
                "req/s",
                "prism_noauth_kv_get_c64_throughput",
                plain.throughput,
            ));
        }
    }
    off.stop().await?;
    on.stop().await?;

    // In process: verifying a token never seen (signature, claims, grants)
    // vs one already verified (the cache: one hash lookup).
    let auth = Authenticator::from_config(&AuthConfig {
        mode: AuthMode::Jwt,
        issuer: Some(issuer.url.clone()),
        audience: Some("prism".into()),
        ..AuthConfig::default()
    })
    .map_err(anyhow::Error::msg)?
    .ok_or_else(|| anyhow::anyhow!("auth mode jwt built no authenticator"))?;
    auth.verify(&token).await?;
    let key = issuer.key("RS256")?;
    let encoding = EncodingKey::from_rsa_pem(key.private_pem.as_bytes())?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let tokens = (0..200)
        .map(|i| {
            jsonwebtoken::encode(
                &header,
                &json!({"iss": issuer.url, "aud": "prism", "sub": format!("bench-{i}"),
                        "exp": now + 3600, "prism_namespaces": ["*"]}),
                &encoding,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    for t in &tokens {
        auth.verify(t).await?;
    }
    let first_sight = started.elapsed().as_secs_f64() * 1e6 / tokens.len() as f64;
    let started = Instant::now();
    let rounds = 10_000;
    for _ in 0..rounds {
        auth.verify(&token).await?;
    }
    let cached = started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    report.push(Row::new(
        "auth_first_sight_rs256_verify",
        first_sight,
        "us",
        "auth_cached_token_verify",
        cached,
    ));
    report.push(Row::target(
        "auth_first_sight_rs256_verify_vs_target",
        first_sight,
        "us",
        "target_auth_first_sight",
        50.0,
    ));
    let _ = pb::GetRequest::default();
    Ok(())
}
