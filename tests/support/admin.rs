//! The Admin API from the suites: a Prism with Admin open (no auth) and
//! its state in a temp dir, uploads, and the requests the suites send.

use std::collections::HashMap;
use std::path::Path;

use prism::pb;
use prism::pb::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::prism_server::{TestServer, start};

/// A config with the Admin API open (no auth) and its state in `state_dir`:
/// `backend_toml`, then `[admin]`, then `extra`.
pub fn admin_config(backend_toml: &str, state_dir: &Path, extra: &str) -> String {
    format!(
        "{backend_toml}\n[admin]\nallow_unauthenticated = true\nstate_dir = {:?}\n{extra}",
        state_dir.display().to_string()
    )
}

/// An Admin client of `server`, for messages up to 64 MiB.
pub fn admin_client(server: &TestServer) -> AdminClient<Channel> {
    AdminClient::new(server.channel())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// Uploads the component at `file`, labelled `test.wasm`.
pub async fn upload(
    client: &mut AdminClient<Channel>,
    file: &Path,
) -> anyhow::Result<pb::PatternInfo> {
    upload_bytes(client, std::fs::read(file)?, "test.wasm").await
}

/// Uploads `bytes` in 100 kB chunks, the first carrying `label`.
pub async fn upload_bytes(
    client: &mut AdminClient<Channel>,
    bytes: Vec<u8>,
    label: &str,
) -> anyhow::Result<pb::PatternInfo> {
    let chunks: Vec<pb::UploadPatternChunk> = bytes
        .chunks(100_000)
        .enumerate()
        .map(|(i, data)| pb::UploadPatternChunk {
            label: if i == 0 {
                label.to_string()
            } else {
                String::new()
            },
            data: data.to_vec(),
        })
        .collect();
    Ok(client
        .upload_pattern(tokio_stream::iter(chunks))
        .await?
        .into_inner())
}

/// A CreateNamespace request: `name` on `pattern`, `slots` as (slot, backend).
pub fn create(name: &str, pattern: &str, slots: &[(&str, &str)]) -> pb::CreateNamespaceRequest {
    pb::CreateNamespaceRequest {
        name: name.into(),
        pattern: pattern.into(),
        slots: slots
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        settings: HashMap::new(),
        limits: HashMap::new(),
    }
}

/// A DeployPattern request.
pub fn deploy(
    namespace: &str,
    digest: &str,
    canary: u32,
    shadow: bool,
) -> pb::DeployPatternRequest {
    pb::DeployPatternRequest {
        namespace: namespace.into(),
        pattern: digest.into(),
        canary_percent: canary,
        shadow,
    }
}

/// Starts Prism from `config` and opens an Admin client to it.
pub async fn start_admin(config: &str) -> anyhow::Result<(TestServer, AdminClient<Channel>)> {
    let server = start(config).await?;
    let admin = admin_client(&server);
    Ok((server, admin))
}

/// A Prism on MemStore (backend `store`) with Admin open, `first` and
/// `second` uploaded, and `namespace` created on `first` (slot `kv` on
/// `store`). Returns the state dir — keep it while the server runs — the
/// server, its Admin client and the two digests.
pub async fn start_with_patterns(
    namespace: &str,
    first: &Path,
    second: &Path,
) -> anyhow::Result<(
    tempfile::TempDir,
    TestServer,
    AdminClient<Channel>,
    String,
    String,
)> {
    let state = tempfile::tempdir()?;
    let (server, mut admin) = start_admin(&admin_config(
        "[backends.store]\ntype = \"memstore\"\n",
        state.path(),
        "",
    ))
    .await?;
    let d1 = upload(&mut admin, first).await?.digest;
    let d2 = upload(&mut admin, second).await?.digest;
    admin
        .create_namespace(create(namespace, &d1, &[("kv", "store")]))
        .await?;
    Ok((state, server, admin, d1, d2))
}
