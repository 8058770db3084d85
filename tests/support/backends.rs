//! The backends the acceptance suite runs against, each behind the same
//! interface: a TOML `[backends.store]` table, a reset between cases, and a
//! Prism whose namespaces all share that one backend.

use crate::servers::RedisServer;
use crate::{TestServer, start};

pub struct BackendUnderTest {
    pub name: &'static str,
    redis: Option<RedisServer>,
}

impl BackendUnderTest {
    pub fn memstore() -> BackendUnderTest {
        BackendUnderTest {
            name: "memstore",
            redis: None,
        }
    }

    /// Starts a real redis-server on a free port.
    pub async fn redis() -> anyhow::Result<BackendUnderTest> {
        Ok(BackendUnderTest {
            name: "redis",
            redis: Some(RedisServer::start().await?),
        })
    }

    /// Every backend the suite covers.
    pub async fn all() -> anyhow::Result<Vec<BackendUnderTest>> {
        Ok(vec![
            BackendUnderTest::memstore(),
            BackendUnderTest::redis().await?,
        ])
    }

    pub fn backend_toml(&self) -> String {
        match &self.redis {
            None => "[backends.store]\ntype = \"memstore\"\n".to_string(),
            Some(r) => format!(
                "[backends.store]\ntype = \"redis\"\nurl = \"{}\"\n",
                r.url()
            ),
        }
    }

    /// A fresh Prism whose `namespaces` (KeyValue) all use this backend, which
    /// is emptied first so cases never see each other's keys.
    pub async fn start_prism(&self, namespaces: &[&str]) -> anyhow::Result<TestServer> {
        if let Some(r) = &self.redis {
            r.flush().await?;
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
