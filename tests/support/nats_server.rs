//! A real `nats-server -js` for the suites, on a free loopback port with its
//! JetStream store in its own temp dir, killed on drop. The harness installs
//! nothing; `just test` installs the package (`just setup-services`).

use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::process::{free_port, spawn_until_ready};

/// A `nats-server -js` process owned by the test, with its JetStream store
/// in a temp dir that survives restarts (so durable consumers do too).
pub struct NatsServer {
    port: u16,
    /// The HTTP monitoring port (`/subsz` and friends).
    monitor: u16,
    dir: tempfile::TempDir,
    /// More command-line arguments (`--tls …`).
    extra: Vec<String>,
    child: Option<Child>,
}

impl NatsServer {
    pub async fn start() -> anyhow::Result<NatsServer> {
        NatsServer::start_with(&[]).await
    }

    pub async fn start_with(args: &[&str]) -> anyhow::Result<NatsServer> {
        let mut server = NatsServer {
            port: 0,
            monitor: 0,
            dir: tempfile::tempdir()?,
            extra: args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        // The ports are free when asked; another process may take one
        // before the server binds it (it then exits at start): new ports.
        let mut last_err = None;
        for _ in 0..5 {
            server.port = free_port()?;
            server.monitor = free_port()?;
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    server.kill();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("nats-server did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's subscriptions on exactly `subject` (plain and queue
    /// members), from its monitoring endpoint. Counted per subject: the
    /// server's own and a client's request inbox are not the test's business.
    pub async fn subscriptions_on(&self, subject: &str) -> anyhow::Result<u64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Plain HTTP/1.0 by hand: the server closes after answering.
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.monitor)).await?;
        stream
            .write_all(b"GET /subsz?subs=1&limit=100000 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .context("no HTTP body from the NATS monitor")?;
        let json: serde_json::Value = serde_json::from_str(body)?;
        let list = json["subscriptions_list"]
            .as_array()
            .with_context(|| format!("/subsz has no subscriptions_list: {json}"))?;
        Ok(list.iter().filter(|s| s["subject"] == subject).count() as u64)
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
        let mut command = Command::new(NatsServer::binary());
        command
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor.to_string())
            .args(["-js", "-sd"])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let port = self.port;
        spawn_until_ready(
            &mut command,
            "cannot run nats-server; `just test` installs it (apt-get install nats-server)",
            &mut self.child,
            &format!("nats-server on port {port}"),
            move || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await
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
