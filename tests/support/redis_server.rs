//! A real `redis-server` for the suites, on a free loopback port in its own
//! temp dir, killed on drop. The harness installs nothing; `just test`
//! installs the package (`just setup-services`).

use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::process::{free_port, spawn_until_ready};

/// A `redis-server` process owned by the test.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// An in-memory server (no persistence).
    pub async fn start() -> anyhow::Result<RedisServer> {
        RedisServer::start_with(&["--save", "", "--appendonly", "no"]).await
    }

    /// A server that fsyncs every write to its append-only file.
    pub async fn start_durable() -> anyhow::Result<RedisServer> {
        RedisServer::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .await
    }

    pub async fn start_with(args: &[&str]) -> anyhow::Result<RedisServer> {
        let mut dir = tempfile::tempdir()?;
        let extra: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut last_err = None;
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port()?,
                dir,
                extra: extra.clone(),
                child: None,
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    last_err = Some(e);
                    dir = server.take_dir()?;
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// A server on a chosen port (for "Redis comes up later" tests).
    pub async fn start_on(port: u16, args: &[&str]) -> anyhow::Result<RedisServer> {
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir()?,
            extra: args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.launch().await?;
        Ok(server)
    }

    fn take_dir(mut self) -> anyhow::Result<tempfile::TempDir> {
        self.kill();
        let placeholder = tempfile::tempdir()?;
        Ok(std::mem::replace(&mut self.dir, placeholder))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--dir"])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let url = self.url();
        let url = url.as_str();
        spawn_until_ready(
            &mut command,
            "cannot run redis-server; `just test` installs it (apt-get install redis-server)",
            &mut self.child,
            &format!("redis-server on port {}", self.port),
            move || async move { ping(url).await.is_ok() },
        )
        .await
    }

    /// A direct connection, bypassing Prism (for checks and cleanup).
    pub async fn connect(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        connect_to(&self.url()).await
    }

    pub async fn flush(&self) -> anyhow::Result<()> {
        let mut conn = self.connect().await?;
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
        Ok(())
    }

    /// Sends a signal by name (`STOP`, `CONT`): a server that stalls with
    /// its connections open, then carries on.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .context("redis-server is not running")?
            .id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
        Ok(())
    }

    /// SIGKILL: no shutdown save, no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and data dir (its AOF, if any, is replayed).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch().await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A connection to the server at `url`.
async fn connect_to(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// Up means answering, even if only to say a password is required.
async fn ping(url: &str) -> anyhow::Result<()> {
    let mut conn = connect_to(url).await?;
    match redis::cmd("PING").query_async::<String>(&mut conn).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("NOAUTH") => Ok(()),
        Err(e) => Err(e.into()),
    }
}
