//! Real backend servers for the suites: `redis-server` started on a free
//! loopback port in its own temp dir, stopped (killed) on drop. The harness
//! installs nothing; `just test` installs the packages.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A free TCP port on 127.0.0.1 (free when asked; servers retry on a clash).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `redis-server` process owned by the test.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
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
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--dir"])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "cannot run redis-server; `just test` installs it (apt-get install redis-server)",
            )?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "redis-server on port {} exited at start: {status}",
                    self.port
                );
            }
            if self.ping().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server on port {} not answering after 10 s",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A direct connection, bypassing Prism (for checks and cleanup).
    pub async fn connect(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Up means answering, even if only to say a password is required.
    async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.connect().await?;
        match redis::cmd("PING").query_async::<String>(&mut conn).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NOAUTH") => Ok(()),
            Err(e) => Err(e.into()),
        }
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

/// A `nats-server -js` process owned by the test, with its JetStream store
/// in a temp dir that survives restarts (so durable consumers do too).
pub struct NatsServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    pub async fn start() -> anyhow::Result<NatsServer> {
        let mut server = NatsServer {
            port: free_port()?,
            dir: tempfile::tempdir()?,
            child: None,
        };
        server.launch().await?;
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn binary() -> &'static str {
        // Debian installs it in /usr/sbin, which a non-root PATH may lack.
        if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        }
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let child = Command::new(NatsServer::binary())
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-js", "-sd"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "cannot run nats-server; `just test` installs it (apt-get install nats-server)",
            )?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "nats-server on port {} exited at start: {status}",
                    self.port
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nats-server on port {} not answering after 10 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: clients see the connection drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and store dir.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch().await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
