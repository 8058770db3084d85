//! Authentication and authorization against a real OIDC issuer
//! (oidc-provider, started by the harness): tokens from its token endpoint
//! read and write within their grants; every attack on the token is
//! UNAUTHENTICATED with a reason and never echoes the token; grants that do
//! not cover the call are PERMISSION_DENIED with nothing written; ES256
//! works; the issuer rotating its keys, or being down and coming back,
//! needs no Prism restart; health and reflection need no token; a stream
//! ends when its token expires; Admin calls need an admin grant on the
//! namespace they act on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prism::pb;
use prism::pb::key_value_client::KeyValueClient;
use prism::pb::pub_sub_client::PubSubClient;
use prism_acceptance::oidc::{Issuer, IssuerKey};
use prism_acceptance::{TestServer, start};
use serde_json::json;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

fn config(issuer: &Issuer) -> String {
    format!(
        r#"
[auth]
mode = "jwt"
issuer = "{}"
audience = "prism"
leeway_secs = 5
jwks_refetch_secs = 1

[backends.mem]
type = "memstore"

[namespaces.orders]
pattern = "keyvalue"
slots = {{ kv = "mem" }}

[namespaces.users]
pattern = "keyvalue"
slots = {{ kv = "mem" }}

[namespaces.events]
pattern = "pubsub"
slots = {{ pubsub = "mem" }}

[namespaces.devices]
pattern = "multicast-registry"
slots = {{ registry = "mem", messaging = "mem" }}
"#,
        issuer.url
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A request naming `namespace`, with `authorization` metadata when given.
fn request<T>(message: T, namespace: &str, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert(
        prism::namespace::NAMESPACE_METADATA,
        namespace
            .parse()
            .unwrap_or_else(|_| MetadataValue::from_static("x")),
    );
    if let Some(token) = token
        && let Ok(value) = format!("Bearer {token}").parse()
    {
        r.metadata_mut().insert("authorization", value);
    }
    r
}

async fn set(t: &TestServer, ns: &str, token: Option<&str>, key: &str) -> Result<(), Status> {
    KeyValueClient::new(t.channel())
        .set(request(
            pb::SetRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ttl_ms: None,
            },
            ns,
            token,
        ))
        .await
        .map(drop)
}

async fn get(t: &TestServer, ns: &str, token: Option<&str>, key: &str) -> Result<Vec<u8>, Status> {
    KeyValueClient::new(t.channel())
        .get(request(pb::GetRequest { key: key.into() }, ns, token))
        .await
        .map(|r| r.into_inner().value)
}

/// A token signed with `key` (PEM), header alg/kid as given, these claims.
/// At most 200 characters of `message`, for printing.
fn first_chars(message: &str) -> String {
    message.chars().take(200).collect()
}

fn mint(
    key: &IssuerKey,
    alg: Algorithm,
    kid: &str,
    claims: &serde_json::Value,
) -> anyhow::Result<String> {
    let encoding = match alg {
        Algorithm::ES256 | Algorithm::ES384 => {
            EncodingKey::from_ec_pem(key.private_pem.as_bytes())?
        }
        _ => EncodingKey::from_rsa_pem(key.private_pem.as_bytes())?,
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    Ok(jsonwebtoken::encode(&header, claims, &encoding)?)
}

fn claims(issuer: &Issuer, grants: &[&str]) -> serde_json::Value {
    json!({
        "iss": issuer.url, "aud": "prism", "sub": "minted", "iat": now(),
        "exp": now() + 300, "prism_namespaces": grants,
    })
}

fn expect(outcome: Result<(), Status>, code: Code, reason: &str, token: &str, case: &str) {
    let refused = outcome.err();
    assert!(refused.is_some(), "{case}: the call succeeded");
    let Some(status) = refused else { return };
    assert_eq!(status.code(), code, "{case}: {status:?}");
    assert!(
        status.message().contains(reason),
        "{case}: expected {reason:?} in {:?}",
        status.message()
    );
    if token.len() > 16 {
        assert!(
            !status.message().contains(token),
            "{case}: the token was echoed"
        );
        assert!(
            !status.message().contains(&token[token.len() - 16..]),
            "{case}: part of the token was echoed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_issuer_work_within_their_grants() -> anyhow::Result<()> {
    let issuer = Issuer::start(None).await?;
    let t = start(&config(&issuer)).await?;
    let all = issuer.token("prism-test-all", "urn:prism").await?;
    let orders = issuer.token("prism-test-orders", "urn:prism").await?;
    let reader = issuer.token("prism-test-orders-read", "urn:prism").await?;
    let nothing = issuer.token("prism-test-none", "urn:prism").await?;
    let admin = issuer.token("prism-test-admin", "urn:prism").await?;

    // "*": every namespace, read and write.
    set(&t, "orders", Some(&all), "k").await?;
    set(&t, "users", Some(&all), "u").await?;
    assert_eq!(get(&t, "users", Some(&all), "u").await?, b"v");
    // "orders": orders only.
    set(&t, "orders", Some(&orders), "k2").await?;
    assert_eq!(get(&t, "orders", Some(&orders), "k2").await?, b"v");
    expect(
        set(&t, "users", Some(&orders), "nope").await,
        Code::PermissionDenied,
        "may not write namespace 'users' (its grants: orders)",
        &orders,
        "other namespace",
    );
    // "orders:read": reads, and a write is refused with nothing written.
    assert_eq!(get(&t, "orders", Some(&reader), "k").await?, b"v");
    expect(
        set(&t, "orders", Some(&reader), "written-by-reader").await,
        Code::PermissionDenied,
        "may not write namespace 'orders' (its grants: orders:read)",
        &reader,
        "read grant writing",
    );
    assert_eq!(
        get(&t, "orders", Some(&all), "written-by-reader")
            .await
            .err()
            .map(|s| s.code()),
        Some(Code::NotFound),
        "a refused write was written"
    );
    // No grants, or admin only: no data access.
    for (token, case) in [(&nothing, "no grants"), (&admin, "admin only")] {
        expect(
            get(&t, "orders", Some(token), "k").await.map(drop),
            Code::PermissionDenied,
            "may not read namespace 'orders'",
            token,
            case,
        );
    }
    // PubSub: publish is a write, subscribe a read.
    let publish = |token: String| {
        let channel = t.channel();
        async move {
            PubSubClient::new(channel)
                .publish(request(
                    pb::PublishRequest {
                        topic: "t".into(),
                        payload: b"p".to_vec(),
                        metadata: Default::default(),
                    },
                    "events",
                    Some(&token),
                ))
                .await
                .map(drop)
        }
    };
    publish(all.clone()).await?;
    expect(
        publish(orders.clone()).await,
        Code::PermissionDenied,
        "'events'",
        &orders,
        "publish",
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_on_the_token_are_unauthenticated() -> anyhow::Result<()> {
    let issuer = Issuer::start(None).await?;
    // A second, unrelated issuer: its keys are "foreign" keys with real material.
    let stranger = Issuer::start(None).await?;
    let t = start(&config(&issuer)).await?;
    let rs = issuer.key("RS256")?;
    let foreign = stranger.key("RS256")?;
    let valid = issuer.token("prism-test-all", "urn:prism").await?;
    set(&t, "orders", Some(&valid), "k").await?;

    let mut cases: Vec<(String, Option<String>, &str)> = Vec::new();
    cases.push(("missing".into(), None, "no credentials"));
    cases.push(("garbage".into(), Some("not-a-jwt".into()), "malformed"));
    cases.push((
        "empty bearer".into(),
        Some(String::new()),
        "not 'Bearer <token>'",
    ));
    let mut c = claims(&issuer, &["*"]);
    c["exp"] = json!(now() - 120);
    cases.push((
        "expired".into(),
        Some(mint(&rs, Algorithm::RS256, &rs.kid, &c)?),
        "expired",
    ));
    let mut c = claims(&issuer, &["*"]);
    c["nbf"] = json!(now() + 600);
    cases.push((
        "not yet valid".into(),
        Some(mint(&rs, Algorithm::RS256, &rs.kid, &c)?),
        "not valid yet",
    ));
    let mut c = claims(&issuer, &["*"]);
    c["iss"] = json!("http://127.0.0.1:1");
    cases.push((
        "wrong iss".into(),
        Some(mint(&rs, Algorithm::RS256, &rs.kid, &c)?),
        "not trusted",
    ));
    cases.push((
        "wrong aud (issued for another resource)".into(),
        Some(issuer.token("prism-test-all", "urn:not-prism").await?),
        "aud must be 'prism'",
    ));
    let mut c = claims(&issuer, &["*"]);
    if let Some(map) = c.as_object_mut() {
        map.remove("exp");
    }
    cases.push((
        "missing exp".into(),
        Some(mint(&rs, Algorithm::RS256, &rs.kid, &c)?),
        "no exp claim",
    ));
    // alg none: header and claims, no signature.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": rs.kid}).to_string()),
        URL_SAFE_NO_PAD.encode(claims(&issuer, &["*"]).to_string())
    );
    cases.push(("alg none".into(), Some(none), "malformed"));
    // HS256 with the issuer's public key as the shared secret.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(rs.kid.clone());
    let hs = jsonwebtoken::encode(
        &header,
        &claims(&issuer, &["*"]),
        &EncodingKey::from_secret(rs.public_pem.as_bytes()),
    )?;
    cases.push((
        "HS256 signed with the public key".into(),
        Some(hs),
        "does not accept",
    ));
    // Tampered claims: a real token with its grants rewritten.
    let parts: Vec<&str> = valid.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
    payload["prism_namespaces"] = json!(["*", "*:admin"]);
    payload["sub"] = json!("mallory");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        parts[2]
    );
    cases.push((
        "tampered claims".into(),
        Some(tampered),
        "signature does not verify",
    ));
    // A key the issuer never published.
    cases.push((
        "unknown kid".into(),
        Some(mint(
            &foreign,
            Algorithm::RS256,
            &foreign.kid,
            &claims(&issuer, &["*"]),
        )?),
        "has no signing key",
    ));
    // A foreign key reusing the issuer's kid.
    cases.push((
        "foreign key reusing a known kid".into(),
        Some(mint(
            &foreign,
            Algorithm::RS256,
            &rs.kid,
            &claims(&issuer, &["*"]),
        )?),
        "signature does not verify",
    ));
    // A real token of the other issuer (not trusted here).
    cases.push((
        "token of an untrusted issuer".into(),
        Some(stranger.token("prism-test-all", "urn:prism").await?),
        "not trusted",
    ));
    // No kid in the header: Prism does not try every key.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = None;
    cases.push((
        "no kid".into(),
        Some(jsonwebtoken::encode(
            &header,
            &claims(&issuer, &["*"]),
            &EncodingKey::from_rsa_pem(rs.private_pem.as_bytes())?,
        )?),
        "names no signing key (kid)",
    ));
    for claim in ["iss", "aud"] {
        let mut c = claims(&issuer, &["*"]);
        if let Some(map) = c.as_object_mut() {
            map.remove(claim);
        }
        cases.push((
            format!("missing {claim}"),
            Some(mint(&rs, Algorithm::RS256, &rs.kid, &c)?),
            if claim == "iss" {
                "has no iss claim"
            } else {
                "has no aud claim"
            },
        ));
    }
    // ES256 by its header, signed with the EC key, but naming the RSA
    // key's kid: the algorithm does not fit the key it names.
    let es = issuer.key("ES256")?;
    cases.push((
        "algorithm that does not fit the named key".into(),
        Some(mint(
            &es,
            Algorithm::ES256,
            &rs.kid,
            &claims(&issuer, &["*"]),
        )?),
        "does not fit its signing key",
    ));
    // Expired beyond the 5 s leeway.
    let mut c = claims(&issuer, &["*"]);
    c["exp"] = json!(now() - 30);
    cases.push((
        "expired past the leeway".into(),
        Some(mint(&rs, Algorithm::RS256, &rs.kid, &c)?),
        "expired",
    ));
    for (case, token, reason) in &cases {
        expect(
            set(&t, "orders", token.as_deref(), &format!("attack-{case}")).await,
            Code::Unauthenticated,
            reason,
            token.as_deref().unwrap_or_default(),
            case,
        );
    }
    // Nothing any attack tried was written.
    for (case, _, _) in &cases {
        let written = get(&t, "orders", Some(&valid), &format!("attack-{case}")).await;
        assert_eq!(
            written.err().map(|s| s.code()),
            Some(Code::NotFound),
            "{case} wrote"
        );
    }
    // A 1 MB token never reaches the verifier (HTTP/2 refuses header
    // lists over 16 KiB): refused, nothing written, the server unharmed.
    let huge = format!("{}.{}.x", "a".repeat(512 << 10), "b".repeat(512 << 10));
    let refused = set(&t, "orders", Some(&huge), "attack-huge").await;
    let refused = refused
        .err()
        .ok_or_else(|| anyhow::anyhow!("a 1 MB token was accepted"))?;
    println!(
        "1 MB token: {:?} {}",
        refused.code(),
        first_chars(refused.message())
    );
    assert!(
        refused.message().len() < 1024,
        "the refusal echoes the token ({} bytes)",
        refused.message().len()
    );
    assert_eq!(
        get(&t, "orders", Some(&valid), "attack-huge")
            .await
            .err()
            .map(|s| s.code()),
        Some(Code::NotFound),
        "the 1 MB token wrote"
    );
    // Expired inside the leeway: still accepted.
    let mut c = claims(&issuer, &["orders"]);
    c["exp"] = json!(now() - 2);
    let lenient = mint(&rs, Algorithm::RS256, &rs.kid, &c)?;
    set(&t, "orders", Some(&lenient), "within-leeway").await?;
    // ES256 with the issuer's EC key is accepted.
    let es_token = mint(
        &es,
        Algorithm::ES256,
        &es.kid,
        &claims(&issuer, &["orders"]),
    )?;
    set(&t, "orders", Some(&es_token), "es256").await?;
    assert_eq!(get(&t, "orders", Some(&es_token), "es256").await?, b"v");
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_and_issuer_outages_need_no_restart() -> anyhow::Result<()> {
    let mut issuer = Issuer::start(None).await?;
    let t = start(&config(&issuer)).await?;
    let before = issuer.token("prism-test-all", "urn:prism").await?;
    set(&t, "orders", Some(&before), "a").await?;
    let old_kid = issuer.key("RS256")?.kid;

    // Rotation: a new key signs; Prism fetches it on first sight of its kid.
    issuer.resume(true).await?;
    let after = issuer.token("prism-test-all", "urn:prism").await?;
    let new_kid = issuer.key("RS256")?.kid;
    assert_ne!(old_kid, new_kid, "the issuer did not rotate");
    tokio::time::sleep(Duration::from_millis(1100)).await; // past jwks_refetch_secs
    set(&t, "orders", Some(&after), "b").await?;
    // Tokens signed with the old key still work.
    set(&t, "orders", Some(&before), "c").await?;

    // The issuer goes down: keys already known keep working, also for
    // tokens Prism has never seen.
    issuer.stop().await;
    let rs = issuer.key("RS256")?;
    let unseen = mint(
        &rs,
        Algorithm::RS256,
        &rs.kid,
        &claims(&issuer, &["orders"]),
    )?;
    set(&t, "orders", Some(&unseen), "d").await?;
    t.stop().await?;

    // A Prism started while the issuer is down: refuses, saying why, then
    // works once the issuer is back (no restart).
    let t = start(&config(&issuer)).await?;
    let outcome = set(&t, "orders", Some(&unseen), "e").await;
    expect(
        outcome,
        Code::Unauthenticated,
        "cannot be fetched now",
        &unseen,
        "issuer down",
    );
    issuer.resume(false).await?;
    let mut recovered = false;
    for _ in 0..50 {
        if set(&t, "orders", Some(&unseen), "e").await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recovered,
        "Prism did not pick up the issuer's keys once it was back"
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_need_no_token_and_streams_end_when_their_token_expires()
-> anyhow::Result<()> {
    let issuer = Issuer::start(None).await?;
    let t = start(&config(&issuer)).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(t.channel());
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "orders".into(),
        })
        .await?;
    assert_eq!(
        reply.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // Reflection needs no token either, with auth on.
    let names = prism_acceptance::reflected_services(t.channel()).await?;
    assert!(
        names.contains(&"prism.v1.KeyValue".to_string()),
        "{names:?}"
    );
    // A subscription opened with a token that expires in 3 s ends then.
    let rs = issuer.key("RS256")?;
    let mut c = claims(&issuer, &["events"]);
    c["exp"] = json!(now() + 3);
    let short = mint(&rs, Algorithm::RS256, &rs.kid, &c)?;
    let mut stream = PubSubClient::new(t.channel())
        .subscribe(request(
            pb::SubscribeRequest {
                topic: "t".into(),
                ..Default::default()
            },
            "events",
            Some(&short),
        ))
        .await?
        .into_inner();
    stream.message().await?; // subscribed
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Err(anyhow::anyhow!("the stream ended without a status")),
                Err(status) => return Ok(status),
            }
        }
    })
    .await??;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(
        ended.message().contains("has expired"),
        "{}",
        ended.message()
    );
    t.stop().await
}

/// Prism with auth on and Admin keeping its state in a temp dir (returned:
/// it must outlive the server).
async fn start_with_admin(issuer: &Issuer) -> anyhow::Result<(TestServer, tempfile::TempDir)> {
    let state = tempfile::tempdir()?;
    let t = start(&format!(
        "{}\n[admin]\nstate_dir = {:?}\n",
        config(issuer),
        state.path().display().to_string()
    ))
    .await?;
    Ok((t, state))
}

/// An Admin request carrying `token`.
fn admin_request<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(token) = token
        && let Ok(value) = format!("Bearer {token}").parse()
    {
        r.metadata_mut().insert("authorization", value);
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_an_admin_grant_on_their_namespace() -> anyhow::Result<()> {
    use prism::pb::admin_client::AdminClient;
    let issuer = Issuer::start(None).await?;
    let (t, _state) = start_with_admin(&issuer).await?;
    let rs = issuer.key("RS256")?;
    let token = |grants: &[&str]| mint(&rs, Algorithm::RS256, &rs.kid, &claims(&issuer, grants));
    let orders_admin = token(&["orders:admin"])?;
    let orders_data = token(&["orders"])?;
    let all_admin = token(&["*:admin"])?;
    let admin = AdminClient::new(t.channel());
    let get_ns = |token: Option<String>, name: &str| {
        let mut admin = admin.clone();
        let request = admin_request(
            pb::GetNamespaceRequest { name: name.into() },
            token.as_deref(),
        );
        async move { admin.get_namespace(request).await.map(|r| r.into_inner()) }
    };

    // No token: the auth layer refuses before Admin sees the call.
    let refused = get_ns(None, "orders").await.err().map(|s| s.code());
    assert_eq!(refused, Some(Code::Unauthenticated));
    // Data grants do not administer.
    expect(
        get_ns(Some(orders_data.clone()), "orders").await.map(drop),
        Code::PermissionDenied,
        "it needs 'orders:admin'",
        &orders_data,
        "data grant administering",
    );
    // orders:admin administers orders, and only orders.
    let info = get_ns(Some(orders_admin.clone()), "orders").await?;
    assert_eq!(info.name, "orders");
    assert_eq!(info.pattern.map(|p| p.world).as_deref(), Some("keyvalue"));
    expect(
        get_ns(Some(orders_admin.clone()), "users").await.map(drop),
        Code::PermissionDenied,
        "it needs 'users:admin'",
        &orders_admin,
        "admin of another namespace",
    );
    let listed = admin
        .clone()
        .list_namespaces(admin_request(
            pb::ListNamespacesRequest {},
            Some(&orders_admin),
        ))
        .await?
        .into_inner();
    let names: Vec<String> = listed.namespaces.into_iter().map(|n| n.name).collect();
    assert_eq!(
        names,
        vec!["orders".to_string()],
        "listing shows only what it administers"
    );
    // A refused change changes nothing.
    let delete = |token: &str, name: &str| {
        let mut admin = admin.clone();
        let request = admin_request(
            pb::DeleteNamespaceRequest {
                name: name.into(),
                purge: false,
            },
            Some(token),
        );
        async move { admin.delete_namespace(request).await.map(drop) }
    };
    expect(
        delete(&orders_admin, "users").await,
        Code::PermissionDenied,
        "it needs 'users:admin'",
        &orders_admin,
        "deleting another namespace",
    );
    let all = issuer.token("prism-test-all", "urn:prism").await?;
    set(&t, "users", Some(&all), "still-here").await?;
    assert_eq!(get(&t, "users", Some(&all), "still-here").await?, b"v");
    // Limits decide how much of the server a tenant takes: *:admin only.
    let raise = |token: &str| {
        let mut admin = admin.clone();
        let request = admin_request(
            pb::UpdateNamespaceRequest {
                name: "orders".into(),
                limits: [("max_instances".to_string(), "4000".to_string())].into(),
                ..Default::default()
            },
            Some(token),
        );
        async move {
            admin
                .update_namespace(request)
                .await
                .map(|r| r.into_inner())
        }
    };
    expect(
        raise(&orders_admin).await.map(drop),
        Code::PermissionDenied,
        "'*:admin' to set the limits of 'orders'",
        &orders_admin,
        "namespace admin raising its limits",
    );
    let unchanged = get_ns(Some(orders_admin.clone()), "orders").await?;
    assert_eq!(
        unchanged.limits.get("max_instances").map(String::as_str),
        Some("128")
    );
    let raised = raise(&all_admin).await?;
    assert_eq!(
        raised.limits.get("max_instances").map(String::as_str),
        Some("4000")
    );
    // Admin does not imply data access.
    expect(
        get(&t, "orders", Some(&orders_admin), "k").await.map(drop),
        Code::PermissionDenied,
        "may not read namespace 'orders'",
        &orders_admin,
        "admin grant reading data",
    );
    // *:admin creates a namespace; a token that administers it (not data) can't use it.
    let created = admin
        .clone()
        .create_namespace(admin_request(
            pb::CreateNamespaceRequest {
                name: "fresh".into(),
                pattern: "keyvalue".into(),
                slots: [("kv".to_string(), "mem".to_string())].into(),
                settings: Default::default(),
                limits: Default::default(),
            },
            Some(&all_admin),
        ))
        .await?
        .into_inner();
    assert_eq!(created.source, "admin");
    set(&t, "fresh", Some(&all), "made").await?;
    assert_eq!(get(&t, "fresh", Some(&all), "made").await?, b"v");
    // The namespace admin deletes its own.
    delete(&all_admin, "fresh").await?;
    let gone = get(&t, "fresh", Some(&all), "made")
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(gone, Some(Code::NotFound));
    t.stop().await
}

/// A KeyValue write of each kind (set, batch set, delete, batch delete).
async fn write(t: &TestServer, ns: &str, token: &str, kind: &str, key: &str) -> Result<(), Status> {
    let mut kv = KeyValueClient::new(t.channel());
    let token = Some(token);
    match kind {
        "set" => set(t, ns, token, key).await,
        "batch_set" => kv
            .batch_set(request(
                pb::BatchSetRequest {
                    entries: vec![pb::SetRequest {
                        key: key.into(),
                        value: b"v".to_vec(),
                        ttl_ms: None,
                    }],
                },
                ns,
                token,
            ))
            .await
            .map(drop),
        "delete" => kv
            .delete(request(pb::DeleteRequest { key: key.into() }, ns, token))
            .await
            .map(drop),
        _ => kv
            .batch_delete(request(
                pb::BatchDeleteRequest {
                    keys: vec![key.into()],
                },
                ns,
                token,
            ))
            .await
            .map(drop),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_namespace_without_a_grant_write_nothing() -> anyhow::Result<()> {
    let issuer = Issuer::start(None).await?;
    let t = start(&config(&issuer)).await?;
    let all = issuer.token("prism-test-all", "urn:prism").await?;
    let rs = issuer.key("RS256")?;
    let users_reader = mint(
        &rs,
        Algorithm::RS256,
        &rs.kid,
        &claims(&issuer, &["users:read"]),
    )?;
    set(&t, "users", Some(&all), "kept").await?;
    let tokens = [
        (
            "orders",
            issuer.token("prism-test-orders", "urn:prism").await?,
        ),
        (
            "orders:read",
            issuer.token("prism-test-orders-read", "urn:prism").await?,
        ),
        (
            "no grants",
            issuer.token("prism-test-none", "urn:prism").await?,
        ),
        (
            "*:admin",
            issuer.token("prism-test-admin", "urn:prism").await?,
        ),
    ];
    for (grants, token) in &tokens {
        for kind in ["set", "batch_set"] {
            expect(
                write(&t, "users", token, kind, &format!("{kind}-{grants}")).await,
                Code::PermissionDenied,
                "may not write namespace 'users'",
                token,
                &format!("{kind} with {grants}"),
            );
        }
        for kind in ["delete", "batch_delete"] {
            expect(
                write(&t, "users", token, kind, "kept").await,
                Code::PermissionDenied,
                "may not write namespace 'users'",
                token,
                &format!("{kind} with {grants}"),
            );
        }
    }
    // Read back with a token that may only read users: nothing was written,
    // nothing was deleted.
    for (grants, _) in &tokens {
        for kind in ["set", "batch_set"] {
            let written = get(
                &t,
                "users",
                Some(&users_reader),
                &format!("{kind}-{grants}"),
            )
            .await;
            assert_eq!(
                written.err().map(|s| s.code()),
                Some(Code::NotFound),
                "a refused {kind} with {grants} was written"
            );
        }
    }
    assert_eq!(
        get(&t, "users", Some(&users_reader), "kept").await?,
        b"v",
        "a refused delete deleted"
    );
    // The reader itself cannot write either.
    expect(
        set(&t, "users", Some(&users_reader), "by-reader").await,
        Code::PermissionDenied,
        "may not write namespace 'users' (its grants: users:read)",
        &users_reader,
        "read grant writing",
    );
    assert_eq!(
        get(&t, "users", Some(&all), "by-reader")
            .await
            .err()
            .map(|s| s.code()),
        Some(Code::NotFound)
    );

    // PubSub: a refused publish reaches no subscriber; the next allowed one
    // is the first thing the subscriber sees.
    let events_reader = mint(
        &rs,
        Algorithm::RS256,
        &rs.kid,
        &claims(&issuer, &["events:read"]),
    )?;
    let mut stream = PubSubClient::new(t.channel())
        .subscribe(request(
            pb::SubscribeRequest {
                topic: "t".into(),
                ..Default::default()
            },
            "events",
            Some(&events_reader),
        ))
        .await?
        .into_inner();
    stream.message().await?; // subscribed
    let publish = |token: &str, payload: &[u8]| {
        let mut client = PubSubClient::new(t.channel());
        let message = request(
            pb::PublishRequest {
                topic: "t".into(),
                payload: payload.to_vec(),
                metadata: Default::default(),
            },
            "events",
            Some(token),
        );
        async move { client.publish(message).await.map(drop) }
    };
    for (grants, token) in &tokens {
        expect(
            publish(token, grants.as_bytes()).await,
            Code::PermissionDenied,
            "may not write namespace 'events'",
            token,
            &format!("publish with {grants}"),
        );
    }
    expect(
        publish(&events_reader, b"by-reader").await,
        Code::PermissionDenied,
        "may not write namespace 'events'",
        &events_reader,
        "publish with events:read",
    );
    publish(&all, b"allowed").await?;
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let Some(reply) = stream.message().await? else {
                return Err(Status::aborted("the subscription ended"));
            };
            if let Some(pb::subscribe_response::Event::Messages(batch)) = reply.event
                && let Some(message) = batch.messages.into_iter().next()
            {
                return Ok::<_, Status>(message.payload);
            }
        }
    })
    .await??;
    assert_eq!(first, &b"allowed"[..], "a refused publish was delivered");
    t.stop().await
}

/// Config trusting each of `issuers` as an `[[auth.issuers]]` entry.
fn multi_issuer_config(issuers: &[&Issuer]) -> String {
    let mut toml = String::from("[auth]\nmode = \"jwt\"\nleeway_secs = 5\njwks_refetch_secs = 1\n");
    for issuer in issuers {
        toml.push_str(&format!(
            "\n[[auth.issuers]]\nissuer = \"{}\"\naudience = \"prism\"\n",
            issuer.url
        ));
    }
    toml.push_str(
        r#"
[backends.mem]
type = "memstore"

[namespaces.orders]
pattern = "keyvalue"
slots = { kv = "mem" }

[namespaces.users]
pattern = "keyvalue"
slots = { kv = "mem" }
"#,
    );
    toml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_issuers_are_trusted_each_within_its_grants() -> anyhow::Result<()> {
    let first = Issuer::start(None).await?;
    let second = Issuer::start(None).await?;
    let third = Issuer::start(None).await?;
    let t = start(&multi_issuer_config(&[&first, &second])).await?;

    // The first issuer: "orders" writes and reads orders, and only orders.
    let orders = first.token("prism-test-orders", "urn:prism").await?;
    set(&t, "orders", Some(&orders), "from-first").await?;
    assert_eq!(get(&t, "orders", Some(&orders), "from-first").await?, b"v");
    expect(
        set(&t, "users", Some(&orders), "from-first").await,
        Code::PermissionDenied,
        "may not write namespace 'users' (its grants: orders)",
        &orders,
        "first issuer, other namespace",
    );
    // The second issuer: "*" everywhere; "orders:read" reads what the first wrote.
    let all = second.token("prism-test-all", "urn:prism").await?;
    set(&t, "users", Some(&all), "from-second").await?;
    assert_eq!(get(&t, "users", Some(&all), "from-second").await?, b"v");
    let reader = second.token("prism-test-orders-read", "urn:prism").await?;
    assert_eq!(get(&t, "orders", Some(&reader), "from-first").await?, b"v");
    expect(
        set(&t, "orders", Some(&reader), "by-reader").await,
        Code::PermissionDenied,
        "may not write namespace 'orders' (its grants: orders:read)",
        &reader,
        "second issuer, read grant writing",
    );

    // A third issuer, not in the config: refused whatever its grants.
    let stranger = third.token("prism-test-all", "urn:prism").await?;
    expect(
        set(&t, "orders", Some(&stranger), "from-third").await,
        Code::Unauthenticated,
        "not trusted",
        &stranger,
        "untrusted third issuer",
    );
    expect(
        get(&t, "orders", Some(&stranger), "from-first")
            .await
            .map(drop),
        Code::Unauthenticated,
        "not trusted",
        &stranger,
        "untrusted third issuer reading",
    );
    // One trusted issuer's key does not vouch for the other: a token
    // claiming the second issuer but signed with the first's key.
    let key = first.key("RS256")?;
    let crossed = mint(&key, Algorithm::RS256, &key.kid, &claims(&second, &["*"]))?;
    expect(
        set(&t, "orders", Some(&crossed), "crossed").await,
        Code::Unauthenticated,
        &format!("the issuer {} has no signing key", second.url),
        &crossed,
        "first issuer's key, second issuer's name",
    );
    for refused in ["from-third", "crossed", "by-reader"] {
        assert_eq!(
            get(&t, "orders", Some(&all), refused)
                .await
                .err()
                .map(|s| s.code()),
            Some(Code::NotFound),
            "a refused write of {refused} was written"
        );
    }
    t.stop().await
}

/// `config` with other JWKS timings.
fn config_with_jwks(issuer: &Issuer, refetch_secs: u64, ttl_secs: u64) -> String {
    config(issuer).replace(
        "jwks_refetch_secs = 1\n",
        &format!("jwks_refetch_secs = {refetch_secs}\njwks_ttl_secs = {ttl_secs}\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_published_right_after_a_forged_kid_probe_is_accepted() -> anyhow::Result<()> {
    let mut issuer = Issuer::start(None).await?;
    // A refetch window longer than the issuer takes to rotate.
    let window = Duration::from_secs(4);
    let t = start(&config_with_jwks(&issuer, window.as_secs(), 300)).await?;
    let rs = issuer.key("RS256")?;
    set(
        &t,
        "orders",
        Some(&issuer.token("prism-test-all", "urn:prism").await?),
        "a",
    )
    .await?;
    // The probe: a kid the issuer never published, which makes Prism fetch
    // the keys now and opens the window in which it will not fetch again.
    let forged = mint(
        &rs,
        Algorithm::RS256,
        "forged-kid",
        &claims(&issuer, &["*"]),
    )?;
    // Inside the start-up fetch's window it is told to retry; once its
    // own refetch has run it is refused for good.
    let started = std::time::Instant::now();
    let refused = loop {
        match set(&t, "orders", Some(&forged), "x").await {
            Err(s) if s.code() == Code::Unavailable && s.message().contains("retry") => {
                assert!(
                    started.elapsed() < window + Duration::from_secs(2),
                    "the forged kid was still 'retry' after a whole window: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => break other,
        }
    };
    expect(
        refused,
        Code::Unauthenticated,
        "has no signing key",
        &forged,
        "forged kid",
    );
    let probed = std::time::Instant::now();
    // The issuer rotates inside that window. The first token signed with
    // the new key waits for the window's end and the one refetch, or, when
    // that is more than 2 s off, is told to retry (UNAVAILABLE): never
    // refused for good.
    issuer.resume(true).await?;
    let fresh = issuer.token("prism-test-all", "urn:prism").await?;
    let new_kid = issuer.key("RS256")?.kid;
    assert_ne!(new_kid, rs.kid, "the issuer did not rotate");
    assert!(
        probed.elapsed() < window,
        "the rotation took {:?}, past the refetch window: the case proves nothing",
        probed.elapsed()
    );
    let mut retries = 0;
    loop {
        match set(&t, "orders", Some(&fresh), "b").await {
            Ok(()) => break,
            Err(s) if s.code() == Code::Unavailable && s.message().contains("retry") => {
                retries += 1;
                assert!(
                    probed.elapsed() < window + Duration::from_secs(2),
                    "still told to retry after the window ended: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => anyhow::bail!("a key the issuer publishes was refused: {s:?}"),
        }
    }
    assert!(retries <= 15, "{retries} retries");
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_issuer_removed_stops_working_after_the_ttl() -> anyhow::Result<()> {
    let mut issuer = Issuer::start(None).await?;
    let t = start(&config_with_jwks(&issuer, 1, 1)).await?;
    let old = issuer.key("RS256")?;
    let base = claims(&issuer, &["orders"]);
    let with_old_key = |n: usize| {
        let mut c = base.clone();
        // A token Prism has not verified before (the cache holds verified ones).
        c["jti"] = json!(format!("old-{n}"));
        mint(&old, Algorithm::RS256, &old.kid, &c)
    };
    set(&t, "orders", Some(&with_old_key(0)?), "a").await?;

    issuer.rotate_retiring_old().await?;
    let keys = issuer.keys()?;
    assert!(
        keys.iter().all(|k| k.kid != old.kid),
        "the issuer still publishes the old key"
    );
    let mut n = 0;
    let refused = prism_acceptance::eventually(Duration::from_secs(15), || {
        n += 1;
        let token = with_old_key(n);
        let t = &t;
        async move {
            match token {
                Ok(token) => matches!(
                    set(t, "orders", Some(&token), "late").await,
                    Err(s) if s.code() == Code::Unauthenticated
                        && s.message().contains("has no signing key")
                ),
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(
        refused,
        "a token signed with a removed key was still accepted after the TTL"
    );
    // The new key works.
    set(
        &t,
        "orders",
        Some(&issuer.token("prism-test-all", "urn:prism").await?),
        "b",
    )
    .await?;
    t.stop().await
}

/// Security cases of the second test audit (issue 36 D) on Admin: a data
/// grant neither uploads nor lists patterns; a namespace's admin neither
/// deploys, promotes nor rolls back another namespace, nor creates one
/// with limits (and that refused create leaves nothing behind); an expired
/// token is UNAUTHENTICATED on Admin as on data calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_by_the_wrong_principal_change_nothing() -> anyhow::Result<()> {
    use prism::pb::admin_client::AdminClient;
    let issuer = Issuer::start(None).await?;
    let (t, _state) = start_with_admin(&issuer).await?;
    let rs = issuer.key("RS256")?;
    let token = |grants: &[&str]| mint(&rs, Algorithm::RS256, &rs.kid, &claims(&issuer, grants));
    let orders_data = token(&["orders"])?;
    let orders_admin = token(&["orders:admin"])?;
    let fresh_admin = token(&["fresh:admin"])?;
    let mut admin = AdminClient::new(t.channel());

    let listed = admin
        .list_patterns(admin_request(
            pb::ListPatternsRequest {},
            Some(&orders_data),
        ))
        .await
        .map(drop);
    expect(
        listed,
        Code::PermissionDenied,
        "an admin grant",
        &orders_data,
        "data grant listing patterns",
    );
    let chunk = pb::UploadPatternChunk {
        label: "x".into(),
        data: std::fs::read(prism_acceptance::guest_component("test_faulty"))?,
    };
    let uploaded = admin
        .upload_pattern(admin_request(
            tokio_stream::iter(vec![chunk]),
            Some(&orders_data),
        ))
        .await
        .map(drop);
    expect(
        uploaded,
        Code::PermissionDenied,
        "an admin grant",
        &orders_data,
        "data grant uploading",
    );

    let deploy = pb::DeployPatternRequest {
        namespace: "users".into(),
        pattern: "keyvalue".into(),
        canary_percent: 10,
        shadow: false,
    };
    let deployed = admin
        .deploy_pattern(admin_request(deploy, Some(&orders_admin)))
        .await
        .map(drop);
    expect(
        deployed,
        Code::PermissionDenied,
        "it needs 'users:admin'",
        &orders_admin,
        "deploying to another namespace",
    );
    let promoted = admin
        .promote(admin_request(
            pb::PromoteRequest {
                namespace: "users".into(),
            },
            Some(&orders_admin),
        ))
        .await
        .map(drop);
    expect(
        promoted,
        Code::PermissionDenied,
        "it needs 'users:admin'",
        &orders_admin,
        "promoting in another namespace",
    );
    let rolled = admin
        .rollback(admin_request(
            pb::RollbackRequest {
                namespace: "users".into(),
            },
            Some(&orders_admin),
        ))
        .await
        .map(drop);
    expect(
        rolled,
        Code::PermissionDenied,
        "it needs 'users:admin'",
        &orders_admin,
        "rolling back another namespace",
    );

    let create = pb::CreateNamespaceRequest {
        name: "fresh".into(),
        pattern: "keyvalue".into(),
        slots: [("kv".to_string(), "mem".to_string())].into(),
        settings: Default::default(),
        limits: [("max_stored_keys".to_string(), "1000000".to_string())].into(),
    };
    let created = admin
        .create_namespace(admin_request(create, Some(&fresh_admin)))
        .await
        .map(drop);
    expect(
        created,
        Code::PermissionDenied,
        "'*:admin' to set the limits of 'fresh'",
        &fresh_admin,
        "namespace admin creating with limits",
    );
    let absent = admin
        .get_namespace(admin_request(
            pb::GetNamespaceRequest {
                name: "fresh".into(),
            },
            Some(&fresh_admin),
        ))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(
        absent,
        Some(Code::NotFound),
        "the refused create left a namespace"
    );

    // Expired well past the 30 s leeway.
    let mut old = claims(&issuer, &["*:admin"]);
    old["iat"] = json!(now() - 900);
    old["exp"] = json!(now() - 600);
    let expired = mint(&rs, Algorithm::RS256, &rs.kid, &old)?;
    let refused = admin
        .list_namespaces(admin_request(pb::ListNamespacesRequest {}, Some(&expired)))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(refused, Some(Code::Unauthenticated));
    t.stop().await
}

/// A grant names a whole namespace (`order` and `*s` are not `orders`); a
/// token counts only as `authorization: Bearer …`, not under another
/// metadata key nor with another scheme; every refused call writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_name_whole_namespaces_and_only_a_bearer_token_counts() -> anyhow::Result<()> {
    let issuer = Issuer::start(None).await?;
    let t = start(&config(&issuer)).await?;
    let rs = issuer.key("RS256")?;
    let valid = mint(
        &rs,
        Algorithm::RS256,
        &rs.kid,
        &claims(&issuer, &["orders"]),
    )?;
    let near = mint(
        &rs,
        Algorithm::RS256,
        &rs.kid,
        &claims(&issuer, &["order", "orders2", "*s", "Orders"]),
    )?;
    expect(
        set(&t, "orders", Some(&near), "near-miss").await,
        Code::PermissionDenied,
        "may not write namespace 'orders'",
        &near,
        "grants that only resemble 'orders'",
    );

    let with_metadata = |key: &'static str, value: String| {
        let mut r = request(
            pb::SetRequest {
                key: format!("via-{key}"),
                value: b"v".to_vec(),
                ttl_ms: None,
            },
            "orders",
            None,
        );
        if let Ok(value) = value.parse() {
            r.metadata_mut().insert(key, value);
        }
        r
    };
    let mut kv = KeyValueClient::new(t.channel());
    for (case, key, value, reason) in [
        (
            "a token under another metadata key",
            "x-authorization",
            format!("Bearer {valid}"),
            "no credentials",
        ),
        (
            "a token with another scheme",
            "authorization",
            format!("Token {valid}"),
            "not 'Bearer <token>'",
        ),
        (
            "a bare token",
            "authorization",
            valid.clone(),
            "not 'Bearer <token>'",
        ),
    ] {
        expect(
            kv.set(with_metadata(key, value)).await.map(drop),
            Code::Unauthenticated,
            reason,
            &valid,
            case,
        );
    }
    // Nothing was written by any of them; the token itself works.
    for key in ["near-miss", "via-x-authorization", "via-authorization"] {
        let written = get(&t, "orders", Some(&valid), key).await;
        assert_eq!(
            written.err().map(|s| s.code()),
            Some(Code::NotFound),
            "{key} was written"
        );
    }
    set(&t, "orders", Some(&valid), "bearer").await?;
    t.stop().await
}

/// A `:read` grant on a registry may look (Get, Enumerate) but not change
/// it: Register, Heartbeat, Unregister and Multicast are PERMISSION_DENIED
/// and leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_writes_need_more_than_a_read_grant() -> anyhow::Result<()> {
    use prism::pb::registry_client::RegistryClient;
    let issuer = Issuer::start(None).await?;
    let t = start(&config(&issuer)).await?;
    let rs = issuer.key("RS256")?;
    let token = |grants: &[&str]| mint(&rs, Algorithm::RS256, &rs.kid, &claims(&issuer, grants));
    let (reader, writer) = (token(&["devices:read"])?, token(&["devices"])?);
    let mut reg = RegistryClient::new(t.channel());
    let register = |identity: &str| pb::RegisterRequest {
        identity: identity.into(),
        metadata: None,
        ttl_ms: None,
        replace: true,
    };
    reg.register(request(register("kept"), "devices", Some(&writer)))
        .await?;
    let refusals: Vec<(&str, Result<(), Status>)> = vec![
        (
            "register",
            reg.register(request(register("intruder"), "devices", Some(&reader)))
                .await
                .map(drop),
        ),
        (
            "heartbeat",
            reg.heartbeat(request(
                pb::HeartbeatRequest {
                    identity: "kept".into(),
                },
                "devices",
                Some(&reader),
            ))
            .await
            .map(drop),
        ),
        (
            "unregister",
            reg.unregister(request(
                pb::UnregisterRequest {
                    identity: "kept".into(),
                },
                "devices",
                Some(&reader),
            ))
            .await
            .map(drop),
        ),
        (
            "multicast",
            reg.multicast(request(
                pb::MulticastRequest {
                    filter: Default::default(),
                    payload: b"x".to_vec(),
                    metadata: Default::default(),
                },
                "devices",
                Some(&reader),
            ))
            .await
            .map(drop),
        ),
    ];
    for (case, outcome) in refusals {
        expect(
            outcome,
            Code::PermissionDenied,
            "may not write namespace 'devices'",
            &reader,
            case,
        );
    }
    // Reads work with the read grant, and show nothing changed.
    let listed = reg
        .enumerate(request(
            pb::EnumerateRequest {
                filter: Default::default(),
                cursor: String::new(),
                limit: 0,
            },
            "devices",
            Some(&reader),
        ))
        .await?
        .into_inner();
    let names: Vec<String> = listed.identities.into_iter().map(|i| i.identity).collect();
    assert_eq!(names, vec!["kept".to_string()]);
    reg.get(request(
        pb::GetIdentityRequest {
            identity: "kept".into(),
        },
        "devices",
        Some(&reader),
    ))
    .await?;
    t.stop().await
}
