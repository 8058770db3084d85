//! The backends the acceptance suite runs against, each behind the same
//! interface: a TOML `[backends.store]` table, a reset between cases, and a
//! Prism whose namespaces all share that one backend.

use crate::postgres_server::PostgresServer;
use crate::prism_server::{TestServer, start};
use crate::redis_server::RedisServer;

pub struct BackendUnderTest {
    pub name: &'static str,
    server: Server,
}

/// The server a backend talks to, if it is not in-process.
enum Server {
    None,
    Redis(RedisServer),
    Postgres(PostgresServer),
}

impl BackendUnderTest {
    /// Whether the backend also serves the `pubsub` capability
    /// (PostgreSQL serves `kv` and `registry` only).
    pub fn serves_pubsub(&self) -> bool {
        !matches!(self.server, Server::Postgres(_))
    }

    pub fn memstore() -> BackendUnderTest {
        BackendUnderTest {
            name: "memstore",
            server: Server::None,
        }
    }

    /// Starts a real redis-server on a free port.
    pub async fn redis() -> anyhow::Result<BackendUnderTest> {
        Ok(BackendUnderTest {
            name: "redis",
            server: Server::Redis(RedisServer::start().await?),
        })
    }

    /// Starts a throwaway PostgreSQL cluster on a free port.
    pub async fn postgres() -> anyhow::Result<BackendUnderTest> {
        Ok(BackendUnderTest {
            name: "postgres",
            server: Server::Postgres(PostgresServer::start().await?),
        })
    }

    /// Every backend the suite covers.
    pub async fn all() -> anyhow::Result<Vec<BackendUnderTest>> {
        Ok(vec![
            BackendUnderTest::memstore(),
            BackendUnderTest::redis().await?,
            BackendUnderTest::postgres().await?,
        ])
    }

    pub fn backend_toml(&self) -> String {
        match &self.server {
            Server::None => "[backends.store]\ntype = \"memstore\"\n".to_string(),
            Server::Redis(r) => format!(
                "[backends.store]\ntype = \"redis\"\nurl = \"{}\"\n",
                r.url()
            ),
            Server::Postgres(p) => format!(
                "[backends.store]\ntype = \"postgres\"\nurl = \"{}\"\n",
                p.url()
            ),
        }
    }

    /// A fresh Prism whose `namespaces` (KeyValue) all use this backend, which
    /// is emptied first so cases never see each other's keys.
    pub async fn start_prism(&self, namespaces: &[&str]) -> anyhow::Result<TestServer> {
        match &self.server {
            Server::None => {}
            Server::Redis(r) => r.flush().await?,
            Server::Postgres(p) => p.reset().await?,
        }
        let mut toml = self.backend_toml();
        for ns in namespaces {
            toml.push_str(&format!(
                "\n[namespaces.{ns}]\npattern = \"keyvalue\"\nslots = {{ kv = \"store\" }}\n"
            ));
        }
        start(&toml).await
    }
}
