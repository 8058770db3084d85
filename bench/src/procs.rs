//! Servers under test run as their own processes, as users run them: the
//! real `prism` binary with a config file, and the baselines (tonic echo,
//! the guest-less path) as this binary's hidden `serve-*` subcommands. Each
//! prints `... serving on ADDR` on stdout once it listens; it is killed
//! when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The `prism` binary: `$PRISM_BIN`, else the workspace's release build
/// (`just bench` builds it first).
pub fn prism_bin() -> PathBuf {
    std::env::var_os("PRISM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/prism"))
}

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// How long from spawn until it printed its address.
    pub started_in: Duration,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// `prism serve` on a config (its `[server] listen` is replaced by a free port).
    pub async fn prism(config_toml: &str) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("prism.toml");
        std::fs::write(&path, config_toml)?;
        let bin = prism_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "warn");
        let mut server = Server::spawn(cmd)
            .await
            .with_context(|| format!("starting {}", bin.display()))?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// This binary's `serve-*` subcommand `args`.
    pub async fn baseline(args: &[&str]) -> anyhow::Result<Server> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(args);
        Server::spawn(cmd).await
    }

    async fn spawn(mut cmd: Command) -> anyhow::Result<Server> {
        let started = Instant::now();
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("server did not start within 60 s")??
            .context("server exited before printing its address")?;
        let Some((_, addr)) = line.rsplit_once("serving on ") else {
            bail!("unexpected first line from server: {line}");
        };
        let addr: SocketAddr = addr.trim().parse()?;
        let started_in = started.elapsed();
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server {
            child,
            addr,
            started_in,
            _dir: None,
        })
    }

    /// Resident memory of the process, in KiB (Linux).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("server has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS in /proc status")
    }

    /// CPU time the process has used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.child.id().context("server has exited")?)
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// CPU time process `pid` has used so far (user + system, all threads), in
/// seconds, from /proc/<pid>/stat (Linux).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    // USER_HZ, the unit of these fields: 100 on every Linux architecture
    // Prism builds for (it is fixed by the kernel ABI, not by HZ).
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count from after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .context("unreadable /proc stat")?;
    // utime and stime are fields 14 and 15; `fields` starts at field 3.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i - 3)
            .context("short /proc stat")?
            .parse::<u64>()? as f64)
    };
    Ok((ticks(14)? + ticks(15)?) / TICKS_PER_SECOND)
}
