//! The real `prism` binary as a child process, for tests of what users run:
//! `prism dev`, `prism serve --config`, `--help`, exit codes, stderr.
//! `just test` builds it (`cargo build --workspace --all-targets`) before
//! the suites run; `PRISM_BIN` points elsewhere.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

pub fn prism_bin() -> PathBuf {
    std::env::var_os("PRISM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/prism"))
}

/// What a finished `prism` run printed and how it exited.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `prism ARGS` to completion (bounded by `within`).
pub async fn run(args: &[&str], within: Duration) -> anyhow::Result<Finished> {
    let output = tokio::time::timeout(
        within,
        Command::new(prism_bin())
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("prism {args:?} did not finish within {within:?}"))??;
    Ok(Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// A running `prism` process that printed its address.
pub struct PrismProcess {
    child: Child,
    pub addr: SocketAddr,
    /// Its `/metrics` URL, when started with `--metrics-listen`.
    pub metrics: Option<String>,
    /// What it has written to stderr so far (drained by a task of its own).
    stderr: Arc<Mutex<String>>,
    stderr_drain: Option<JoinHandle<()>>,
}

impl PrismProcess {
    /// Starts `prism ARGS` and waits for `prism: serving on ADDR`.
    pub async fn start(args: &[&str]) -> anyhow::Result<PrismProcess> {
        let mut child = Command::new(prism_bin())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {}", prism_bin().display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            _ => {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), e.read_to_string(&mut stderr))
                            .await;
                }
                bail!("prism {args:?} did not start; stderr:\n{stderr}");
            }
        };
        let Some(addr) = line.strip_prefix("prism: serving on ") else {
            bail!("unexpected first line from prism: {line}");
        };
        let addr = addr.trim().parse()?;
        // With --metrics-listen the next line says where.
        let metrics = if args.contains(&"--metrics-listen") {
            match tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
                Ok(Ok(Some(line))) => line
                    .strip_prefix("prism: metrics on ")
                    .map(|url| url.trim().to_string()),
                _ => None,
            }
        } else {
            None
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // stderr is drained too, so logging can never block the server; it
        // is kept for tests of what the server logs.
        let collected = Arc::new(Mutex::new(String::new()));
        let stderr_drain = child.stderr.take().map(|stderr| {
            let collected = collected.clone();
            let mut lines = BufReader::new(stderr).lines();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut text = collected.lock();
                    text.push_str(&line);
                    text.push('\n');
                }
            })
        });
        Ok(PrismProcess {
            child,
            addr,
            metrics,
            stderr: collected,
            stderr_drain,
        })
    }

    /// What the process has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `HUP`) with the system's `kill`.
    pub async fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("prism has exited")?;
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
        Ok(())
    }

    /// SIGTERM, then the exit status (bounded by `within`).
    pub async fn terminate(mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        self.signal("TERM").await?;
        Ok(tokio::time::timeout(within, self.child.wait())
            .await
            .context("prism did not exit after SIGTERM")??)
    }

    /// SIGTERM, then the exit status and everything it wrote to stderr
    /// (read to its end; bounded by `within`).
    pub async fn terminate_with_stderr(
        mut self,
        within: Duration,
    ) -> anyhow::Result<(ExitStatus, String)> {
        self.signal("TERM").await?;
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .context("prism did not exit after SIGTERM")??;
        if let Some(drain) = self.stderr_drain.take() {
            tokio::time::timeout(within, drain)
                .await
                .context("prism's stderr did not end after it exited")??;
        }
        Ok((status, self.stderr()))
    }
}
