//! A throwaway PostgreSQL cluster for the suites: `initdb` into a temp dir,
//! the postmaster on a free loopback port, killed on drop. The harness
//! installs nothing; `just test` installs the package
//! (`just setup-services`).

use std::fs::{OpenOptions, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::process::free_port;

/// The superuser `initdb` creates, and the database Prism's URL names.
pub const POSTGRES_USER: &str = "prism";
/// The superuser's password: loopback TCP requires it (SCRAM), so the URL
/// carries a secret that tests can check is never echoed.
pub const POSTGRES_PASSWORD: &str = "s3cret-pg";
const POSTGRES_DATABASE: &str = "prism";

/// A throwaway PostgreSQL cluster owned by the test: `initdb` into a temp
/// dir, the `postgres` postmaster on a free loopback port as a child process,
/// killed on drop.
pub struct PostgresServer {
    port: u16,
    dir: tempfile::TempDir,
    /// The directory holding `initdb` and `postgres` (one installation, so
    /// the two always share a major version).
    bin: PathBuf,
    /// uid/gid to run the binaries as: Some when the tests run as root,
    /// which `initdb` and `postgres` refuse.
    run_as: Option<(u32, u32)>,
    /// More `-c name=value` settings for the postmaster (`ssl=on`, …).
    settings: Vec<String>,
    child: Option<tokio::process::Child>,
}

/// A failed start: the server exited at once (a port clash, or a killed
/// server's backends still holding its shared memory — both worth another
/// try), or something that retrying will not fix.
enum StartError {
    Exited(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> StartError {
        StartError::Other(e)
    }
}

impl PostgresServer {
    /// A fresh cluster with database `prism`, accepting connections.
    pub async fn start() -> anyhow::Result<PostgresServer> {
        PostgresServer::start_with_tls(None, &[]).await
    }

    /// A fresh cluster started with these `-c name=value` settings (e.g.
    /// `shared_preload_libraries=pg_stat_statements`).
    pub async fn start_with(settings: &[&str]) -> anyhow::Result<PostgresServer> {
        PostgresServer::start_with_tls(None, settings).await
    }

    /// A cluster with `ssl = on`, presenting this certificate (PEM chain +
    /// key), where a TLS connection must also show a client certificate
    /// `client_ca` signed; plaintext ones (the harness's own) still work.
    /// It listens on 127.0.0.2 too: an address its certificate does not name.
    pub async fn start_tls(
        cert: &Path,
        key: &Path,
        client_ca: &Path,
    ) -> anyhow::Result<PostgresServer> {
        PostgresServer::start_with_tls(Some([cert, key, client_ca]), &[]).await
    }

    async fn start_with_tls(
        tls: Option<[&Path; 3]>,
        settings: &[&str],
    ) -> anyhow::Result<PostgresServer> {
        let bin = postgres_bin_dir()?;
        let run_as = postgres_run_as()?;
        let dir = tempfile::tempdir()?;
        // The postgres user must enter the dir (the temp dir is 0700) and
        // write in it: initdb creates the data dir there, the postmaster its
        // socket and lock file. Its parent (the system temp dir) must be
        // traversable too, as /tmp is.
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o755))
            .context("making the postgres temp dir traversable")?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("handing the postgres temp dir to the postgres user")?;
        }
        let mut server = PostgresServer {
            port: 0,
            dir,
            bin,
            run_as,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.initdb().await?;
        if let Some(files) = tls {
            server.install_tls(files)?;
        }
        let mut last_err = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.launch().await {
                Ok(()) => {
                    server.create_database().await?;
                    return Ok(server);
                }
                // Most likely the port was taken between free_port and bind.
                Err(StartError::Exited(e)) => last_err = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What Prism's `[backends.*] url` takes: database `prism` over TCP with
    /// the password.
    pub fn url(&self) -> String {
        self.url_for(POSTGRES_DATABASE)
    }

    fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{POSTGRES_USER}:{POSTGRES_PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// A direct connection to database `prism`, bypassing Prism (for checks
    /// and cleanup).
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.connect(POSTGRES_DATABASE).await
    }

    async fn connect(&self, database: &str) -> anyhow::Result<tokio_postgres::Client> {
        // The error names the port, never the URL: it holds the password.
        let (client, connection) =
            tokio_postgres::connect(&self.url_for(database), tokio_postgres::NoTls)
                .await
                .with_context(|| {
                    format!(
                        "connecting to postgres on port {} (database {database})",
                        self.port
                    )
                })?;
        // The connection task drives the socket; when it fails, the client's
        // next call returns the error, so there is nothing to do with it here.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Drops every `prism_*` table (where Prism's postgres backends keep
    /// their data), so cases never see each other's keys or identities.
    pub async fn reset(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        client
            .batch_execute(RESET_SQL)
            .await
            .with_context(|| format!("dropping the prism_ tables on port {}", self.port))
    }

    /// SIGKILL to the postmaster: a crash, no shutdown checkpoint, clients
    /// see their connections drop. Returns once its backends are gone too,
    /// so a restart finds the shared memory free.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Its children are reparented once it dies: note them first.
            let children = child.id().map(children_of).unwrap_or_default();
            let _ = child.kill().await;
            // Backends notice the postmaster's death and exit on their own,
            // within milliseconds. (Not SIGKILLed as a process group: postgres
            // stays in the test's group, so a Ctrl-C of the run stops it too.)
            let deadline = Instant::now() + Duration::from_secs(10);
            while children.iter().any(|&pid| process_alive(pid)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Starts again on the same port and data dir; crash recovery replays
    /// the WAL, so every acknowledged commit is there.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        // postgres removes a stale postmaster.pid itself (its pid is dead),
        // but refuses to start while old backends hold the shared memory
        // block: exits at once, so try again for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(StartError::Exited(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(StartError::Exited(e) | StartError::Other(e)) => return Err(e),
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The end of the server log, for error messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("postgres log ({}):\n{tail}", self.log_path().display())
    }

    /// A PostgreSQL binary, run as the postgres user when we are root, in
    /// the temp dir (the test's own cwd may be closed to that user).
    fn command(&self, program: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.bin.join(program));
        command
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // Set directly rather than through `runuser`, which forks and waits:
        // our child would be runuser, and SIGKILL to it would leave the
        // postmaster running.
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// A new cluster in `data/`, superuser `prism` with the password; local
    /// (socket) connections are trusted, TCP ones need the password.
    async fn initdb(&self) -> anyhow::Result<()> {
        let pwfile = self.dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{POSTGRES_PASSWORD}\n"))
            .context("writing the initdb password file")?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))
                .context("handing the initdb password file to the postgres user")?;
        }
        let mut failures = Vec::new();
        // C.UTF-8 sorts by code point (byte order for UTF-8); a system
        // without that locale gets plain C, which sorts the same way.
        for locale in ["--locale=C.UTF-8", "--no-locale"] {
            let output = self
                .command("initdb")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-U", POSTGRES_USER, "-E", "UTF8", locale])
                .args([
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--pwfile",
                ])
                .arg(&pwfile)
                .output()
                .await
                .with_context(|| {
                    format!(
                        "cannot run {}; run `just setup-services` (apt-get install postgresql)",
                        self.bin.join("initdb").display()
                    )
                })?;
            if output.status.success() {
                let _ = std::fs::remove_file(&pwfile);
                return Ok(());
            }
            failures.push(format!(
                "initdb {locale}: {}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
            // initdb removes a data dir it created and failed in; make sure,
            // since the next attempt needs it absent or empty.
            let _ = std::fs::remove_dir_all(self.data_dir());
        }
        let _ = std::fs::remove_file(&pwfile);
        bail!("initdb failed:\n{}", failures.join("\n"))
    }

    /// Spawns the postmaster on `self.port` and waits until it accepts
    /// connections (after crash recovery, on a restart).
    async fn launch(&mut self) -> Result<(), StartError> {
        // Appended to across restarts: the log of the killed run stays.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the postgres log")?;
        let log_err = log.try_clone().context("opening the postgres log")?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            // No fsync: a killed process loses nothing (its writes are in
            // the OS page cache, and synchronous_commit stays on, so every
            // acknowledged commit's WAL was written before the reply); only
            // an OS crash or power loss would, which tests do not simulate.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            // Room for several Prism pools plus the tests' own clients.
            .args(["-c", "max_connections=200"])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run {}; run `just setup-services` (apt-get install postgresql)",
                    self.bin.join("postgres").display()
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(StartError::Exited(anyhow::anyhow!(
                    "postgres on port {} exited at start: {status}\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            let attempt =
                tokio::time::timeout(Duration::from_secs(2), self.connect("postgres")).await;
            let last_err = match attempt {
                Ok(Ok(_client)) => return Ok(()),
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => "connecting timed out".to_string(),
            };
            if Instant::now() > deadline {
                // Not left half-started behind the error.
                self.kill().await;
                return Err(StartError::Other(anyhow::anyhow!(
                    "postgres on port {} not accepting connections after 30 s: {last_err}\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Copies the certificate, key and client CA into the data dir, owned
    /// by the server's user (postgres refuses a key others can read), turns
    /// `ssl` on, and puts a first pg_hba line that asks TLS connections for
    /// a client certificate as well as the password.
    fn install_tls(&mut self, [cert, key, client_ca]: [&Path; 3]) -> anyhow::Result<()> {
        for (from, name, mode) in [
            (cert, "server.crt", 0o644),
            (key, "server.key", 0o600),
            (client_ca, "root.crt", 0o644),
        ] {
            let to = self.data_dir().join(name);
            std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
            std::fs::set_permissions(&to, Permissions::from_mode(mode))?;
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid))?;
            }
        }
        let hba = self.data_dir().join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).context("reading pg_hba.conf")?;
        std::fs::write(
            &hba,
            format!("hostssl all all 127.0.0.0/8 scram-sha-256 clientcert=verify-ca\n{rules}"),
        )
        .context("writing pg_hba.conf")?;
        self.settings.extend(
            [
                "ssl=on",
                "ssl_cert_file=server.crt",
                "ssl_key_file=server.key",
                "ssl_ca_file=root.crt",
                "listen_addresses=127.0.0.1,127.0.0.2",
            ]
            .map(String::from),
        );
        Ok(())
    }

    async fn create_database(&self) -> anyhow::Result<()> {
        let client = self.connect("postgres").await?;
        client
            .batch_execute(&format!("CREATE DATABASE {POSTGRES_DATABASE}"))
            .await
            .with_context(|| format!("creating database {POSTGRES_DATABASE}"))
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // SIGKILL (kill_on_drop would too); its backends follow on their own.
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Every `prism_*` table in the database, whatever its schema. A lock
/// timeout makes a table still held by a connection fail the reset instead
/// of hanging the case.
const RESET_SQL: &str = r#"
SET lock_timeout = '10s';
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT schemaname, tablename FROM pg_tables
        WHERE tablename LIKE 'prism\_%'
          AND schemaname NOT IN ('pg_catalog', 'information_schema')
    LOOP
        -- A table already dropped by an earlier CASCADE is skipped.
        EXECUTE format('DROP TABLE IF EXISTS %I.%I CASCADE', t.schemaname, t.tablename);
    END LOOP;
END
$$;
"#;

/// The directory with `initdb` and `postgres`: the first on PATH that has
/// both, else Debian's /usr/lib/postgresql/<version>/bin (off PATH), the
/// newest version.
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|dir| has_both(dir))
    {
        return Ok(dir);
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            // "15", "9.6": compared as numbers, so 10 is newer than 9.6.
            let version = name
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context(
        "PostgreSQL not found (no initdb and postgres on PATH or in /usr/lib/postgresql/*/bin); \
         run `just setup-services` (apt-get install postgresql)",
    )
}

/// Who the PostgreSQL binaries run as: None (ourselves) unless we are root,
/// which initdb and postgres refuse; then the `postgres` user the Debian
/// package creates.
fn postgres_run_as() -> anyhow::Result<Option<(u32, u32)>> {
    if !running_as_root() {
        return Ok(None);
    }
    let id = |flag: &str| -> anyhow::Result<u32> {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .context("running `id`")?;
        anyhow::ensure!(
            output.status.success(),
            "the tests run as root, which postgres refuses, and there is no `postgres` user \
             to run it as; run `just setup-services` (the postgresql package creates it): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<u32>()
            .context("parsing `id` output")
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

#[allow(unsafe_code)]
fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions, touches no memory and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The pids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}

/// Alive: listed in /proc and not a zombie (a reparented child that exited
/// may wait a while for init to reap it, but holds nothing by then).
fn process_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

/// State and parent pid from /proc/<pid>/stat ("pid (comm) state ppid ...";
/// comm may hold spaces and parentheses, so parse after the last ')').
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}
