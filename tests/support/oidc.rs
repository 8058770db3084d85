//! A real OpenID Connect issuer for the auth tests: `tests/oidc/issuer.mjs`
//! (the npm package `oidc-provider`), started with Node on a free port and
//! its key set in a temp dir; tokens from its token endpoint, and — for the
//! attack cases — tokens minted with its real private keys. `just test`
//! installs its packages (`npm ci`); the harness installs nothing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Deserialize)]
struct Ready {
    issuer: String,
    token_endpoint: String,
}

/// One private key of the issuer, as its harness writes it (`keys.json.pem.json`).
#[derive(Deserialize, Clone)]
pub struct IssuerKey {
    pub kid: String,
    pub alg: String,
    pub private_pem: String,
    pub public_pem: String,
}

#[derive(Deserialize)]
struct PemFile {
    keys: Vec<IssuerKey>,
}

pub struct Issuer {
    child: Option<Child>,
    pub url: String,
    token_endpoint: String,
    port: u16,
    keys_file: PathBuf,
    access_ttl: Option<u64>,
    _dir: Option<tempfile::TempDir>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc/issuer.mjs")
}

impl Issuer {
    /// A fresh issuer with its own keys on a free port.
    pub async fn start(access_ttl: Option<u64>) -> anyhow::Result<Issuer> {
        let dir = tempfile::tempdir()?;
        let keys_file = dir.path().join("keys.json");
        let mut issuer = Issuer {
            child: None,
            url: String::new(),
            token_endpoint: String::new(),
            port: 0,
            keys_file,
            access_ttl,
            _dir: Some(dir),
        };
        issuer.launch(false, false).await?;
        Ok(issuer)
    }

    async fn launch(&mut self, rotate: bool, retire: bool) -> anyhow::Result<()> {
        let mut cmd = Command::new("node");
        cmd.arg(script())
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--keys")
            .arg(&self.keys_file)
            .arg("--stdin-lifeline");
        if rotate {
            cmd.arg("--rotate");
        }
        if retire {
            cmd.arg("--retire");
        }
        if let Some(ttl) = self.access_ttl {
            cmd.arg("--access-ttl").arg(ttl.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run node; `just test` installs the issuer (npm ci in tests/oidc)")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the issuer did not start within 30 s")??
            .context("the issuer exited at start (run `npm ci` in tests/oidc)")?;
        let ready: Ready = serde_json::from_str(&line)
            .with_context(|| format!("unexpected first line from the issuer: {line}"))?;
        self.port = ready
            .issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("issuer URL without a port")?;
        self.url = ready.issuer;
        self.token_endpoint = ready.token_endpoint;
        self.child = Some(child);
        Ok(())
    }

    /// Stops it (SIGKILL); the port stays reserved for `resume`.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts again on the same port with the same keys (or a rotated set:
    /// a new RS256 key signs, the old ones stay published).
    pub async fn resume(&mut self, rotate: bool) -> anyhow::Result<()> {
        self.relaunch(rotate, false).await
    }

    /// Starts again on the same port with a new RS256 signing key, and the
    /// old RS256 keys no longer published.
    pub async fn rotate_retiring_old(&mut self) -> anyhow::Result<()> {
        self.relaunch(true, true).await
    }

    async fn relaunch(&mut self, rotate: bool, retire: bool) -> anyhow::Result<()> {
        self.stop().await;
        for _ in 0..50 {
            match self.launch(rotate, retire).await {
                Ok(()) => return Ok(()),
                // The old process may still hold the port for a moment.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        bail!("the issuer did not come back on port {}", self.port)
    }

    /// An access token from the token endpoint for a `prism-test-*`
    /// client (client credentials), for `resource` (`urn:prism` → aud prism).
    pub async fn token(&self, client: &str, resource: &str) -> anyhow::Result<String> {
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
        }
        let http = prism::auth::http_client(Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
        let response = http
            .post(&self.token_endpoint)
            .basic_auth(client, Some("secret"))
            .form(&[("grant_type", "client_credentials"), ("resource", resource)])
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        anyhow::ensure!(status.is_success(), "token endpoint said {status}: {body}");
        Ok(serde_json::from_str::<TokenResponse>(&body)?.access_token)
    }

    /// The issuer's private keys, signing key first.
    pub fn keys(&self) -> anyhow::Result<Vec<IssuerKey>> {
        let path = format!("{}.pem.json", self.keys_file.display());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        Ok(serde_json::from_str::<PemFile>(&text)?.keys)
    }

    /// A token for `subject` with these grants (`prism_namespaces`), valid
    /// five minutes, signed with the issuer's own RS256 key: for suites
    /// that need several principals with exact grants.
    pub fn mint(&self, subject: &str, grants: &[&str]) -> anyhow::Result<String> {
        let key = self.key("RS256")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let claims = serde_json::json!({
            "iss": self.url, "aud": "prism", "sub": subject, "iat": now,
            "exp": now + 300, "prism_namespaces": grants,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(key.private_pem.as_bytes())?;
        Ok(jsonwebtoken::encode(&header, &claims, &encoding)?)
    }

    /// The first key with algorithm `alg`.
    pub fn key(&self, alg: &str) -> anyhow::Result<IssuerKey> {
        self.keys()?
            .into_iter()
            .find(|k| k.alg == alg)
            .with_context(|| format!("the issuer has no {alg} key"))
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
