//! Registry helpers for the suites: the backend pairs under test (registry
//! slot × messaging slot), JSON → typed metadata and filters, and an inbox
//! listener that reads the stream one message at a time.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use prism::pb;
use tonic::Streaming;

use crate::nats_server::NatsServer;
use crate::postgres_server::PostgresServer;
use crate::prism_server::{RegClient, TestServer, start};
use crate::redis_server::RedisServer;

/// Where identities live.
pub enum Store<'a> {
    Mem,
    Redis(&'a RedisServer),
    Postgres(&'a PostgresServer),
}

/// What carries multicasts.
pub enum Bus<'a> {
    Embedded,
    Nats(&'a NatsServer),
    JetStream(&'a NatsServer),
    RedisStreams(&'a RedisServer),
}

/// One registry × messaging pair the Registry acceptance part runs on.
pub struct RegistryUnderTest<'a> {
    pub name: &'static str,
    pub store: Store<'a>,
    pub bus: Bus<'a>,
}

impl RegistryUnderTest<'_> {
    /// Every pair: {MemStore, Redis} registry × {embedded, NATS, JetStream}
    /// messaging, Redis × Redis Streams, and PostgreSQL × {embedded, NATS}.
    pub fn all<'a>(
        redis: &'a RedisServer,
        nats: &'a NatsServer,
        postgres: &'a PostgresServer,
    ) -> Vec<RegistryUnderTest<'a>> {
        let mut all = Vec::new();
        for (store_name, store) in [("mem", 0), ("redis", 1)] {
            for (bus_name, bus) in [("embedded", 0), ("nats", 1), ("jetstream", 2)] {
                let name: &'static str = match (store_name, bus_name) {
                    ("mem", "embedded") => "mem+embedded",
                    ("mem", "nats") => "mem+nats",
                    ("mem", _) => "mem+jetstream",
                    (_, "embedded") => "redis+embedded",
                    (_, "nats") => "redis+nats",
                    _ => "redis+jetstream",
                };
                all.push(RegistryUnderTest {
                    name,
                    store: if store == 0 {
                        Store::Mem
                    } else {
                        Store::Redis(redis)
                    },
                    bus: match bus {
                        0 => Bus::Embedded,
                        1 => Bus::Nats(nats),
                        _ => Bus::JetStream(nats),
                    },
                });
            }
        }
        // Identities and multicasts on one Redis: hashes and streams.
        all.push(RegistryUnderTest {
            name: "redis+redis-streams",
            store: Store::Redis(redis),
            bus: Bus::RedisStreams(redis),
        });
        // Identities in PostgreSQL tables (appended last, so the pairs above
        // keep their indices and with them their namespace names).
        all.push(RegistryUnderTest {
            name: "postgres+embedded",
            store: Store::Postgres(postgres),
            bus: Bus::Embedded,
        });
        all.push(RegistryUnderTest {
            name: "postgres+nats",
            store: Store::Postgres(postgres),
            bus: Bus::Nats(nats),
        });
        all
    }

    pub fn at_least_once(&self) -> bool {
        matches!(self.bus, Bus::JetStream(_) | Bus::RedisStreams(_))
    }

    pub fn backends_toml(&self) -> String {
        let store = match &self.store {
            Store::Mem => "[backends.reg]\ntype = \"memstore\"\n".to_string(),
            Store::Redis(r) => format!("[backends.reg]\ntype = \"redis\"\nurl = \"{}\"\n", r.url()),
            Store::Postgres(p) => format!(
                "[backends.reg]\ntype = \"postgres\"\nurl = \"{}\"\n",
                p.url()
            ),
        };
        let bus = match &self.bus {
            Bus::Embedded => "[backends.bus]\ntype = \"memstore\"\n".to_string(),
            Bus::Nats(n) => format!("[backends.bus]\ntype = \"nats\"\nurl = \"{}\"\n", n.url()),
            Bus::JetStream(n) => format!(
                "[backends.bus]\ntype = \"nats\"\nurl = \"{}\"\njetstream = true\nack_wait_ms = 2000\n",
                n.url()
            ),
            Bus::RedisStreams(r) => format!(
                "[backends.bus]\ntype = \"redis\"\nurl = \"{}\"\nstream = true\nack_wait_ms = 2000\n",
                r.url()
            ),
        };
        store + &bus
    }

    /// A fresh Prism with registry `namespaces` on this pair; a Redis or
    /// PostgreSQL registry is emptied first so cases never see each other's
    /// identities.
    pub async fn start_prism(
        &self,
        namespaces: &[&str],
        settings: &str,
    ) -> anyhow::Result<TestServer> {
        match &self.store {
            Store::Mem => {}
            Store::Redis(r) => r.flush().await?,
            Store::Postgres(p) => p.reset().await?,
        }
        start(&registry_config(
            &self.backends_toml(),
            namespaces,
            settings,
        ))
        .await
    }
}

/// Registry namespaces on `[backends.reg]` and `[backends.bus]`.
pub fn registry_config(backends_toml: &str, namespaces: &[&str], settings: &str) -> String {
    let mut toml = backends_toml.to_string();
    for ns in namespaces {
        toml.push_str(&format!(
            "\n[namespaces.{ns}]\npattern = \"multicast-registry\"\nslots = {{ registry = \"reg\", messaging = \"bus\" }}\n[namespaces.{ns}.settings]\n{settings}\n"
        ));
    }
    toml
}

/// A JSON value as typed wire metadata.
pub fn value(json: &serde_json::Value) -> pb::Value {
    use pb::value::Kind;
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) if !n.is_f64() => Kind::IntValue(i),
            _ => Kind::DoubleValue(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(pb::ListValue {
            values: items.iter().map(value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::MapValue(pb::MapValue {
            fields: map.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
        }),
    };
    pb::Value { kind: Some(kind) }
}

/// A JSON object as a metadata map (anything else: an empty map).
pub fn map(json: serde_json::Value) -> pb::MapValue {
    match value(&json).kind {
        Some(pb::value::Kind::MapValue(m)) => m,
        _ => pb::MapValue::default(),
    }
}

/// A JSON object as a filter.
pub fn filter(json: serde_json::Value) -> HashMap<String, pb::Value> {
    map(json).fields
}

/// Typed metadata back as JSON (ints stay ints, floats floats).
pub fn json(map: &pb::MapValue) -> serde_json::Value {
    serde_json::Value::Object(
        map.fields
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)))
            .collect(),
    )
}

fn json_value(v: &pb::Value) -> serde_json::Value {
    use pb::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::IntValue(i)) => (*i).into(),
        Some(Kind::DoubleValue(f)) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::ListValue(l)) => l.values.iter().map(json_value).collect(),
        Some(Kind::MapValue(m)) => json(m),
    }
}

/// A live inbox listener, confirmed by its first frame.
pub struct Inbox {
    stream: Streaming<pb::ListenResponse>,
    buffered: std::collections::VecDeque<pb::Message>,
}

impl Inbox {
    pub async fn open(client: &mut RegClient, identity: &str) -> anyhow::Result<Inbox> {
        let request = pb::ListenRequest {
            identity: identity.into(),
            buffer: 0,
        };
        let mut stream = client.listen(request).await?.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .context("no listening confirmation within 10 s")??;
        match first.and_then(|f| f.event) {
            Some(pb::listen_response::Event::Listening(_)) => {}
            other => bail!("first frame was not the confirmation: {other:?}"),
        }
        Ok(Inbox {
            stream,
            buffered: Default::default(),
        })
    }

    /// The next message, None if none arrives within `wait`; an error if the
    /// stream ended.
    pub async fn next(&mut self, wait: Duration) -> anyhow::Result<Option<pb::Message>> {
        loop {
            if let Some(m) = self.buffered.pop_front() {
                return Ok(Some(m));
            }
            let frame = match tokio::time::timeout(wait, self.stream.message()).await {
                Err(_) => return Ok(None),
                Ok(frame) => frame?,
            };
            // An ended stream is not "nothing arrived": an absence check on
            // a dead subscription must fail.
            let Some(frame) = frame else {
                bail!("the stream ended (the server closed it) while waiting for a message");
            };
            match frame.event {
                None => continue,
                Some(pb::listen_response::Event::Messages(batch)) => {
                    self.buffered.extend(batch.messages)
                }
                Some(other) => bail!("unexpected frame {other:?}"),
            }
        }
    }
}
