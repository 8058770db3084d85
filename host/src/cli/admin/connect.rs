//! The Admin client `prism admin` talks through: the address, and the
//! bearer token from `--token`, `$PRISM_TOKEN` or prism-login's token file.

use std::path::PathBuf;

use anyhow::{Context, bail};
use prism::pb::admin_client::AdminClient;
use serde_json::Value;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::AdminArgs;

/// Puts the token (if any) on every call.
type Bearer =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

/// The client, with the token (if any) on every call.
pub(super) type Client =
    AdminClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

pub(super) async fn connect(args: &AdminArgs) -> anyhow::Result<Client> {
    let url = if args.addr.contains("://") {
        args.addr.clone()
    } else {
        format!("http://{}", args.addr)
    };
    let channel = Channel::from_shared(url.clone())
        .with_context(|| format!("'{}' is not an address", args.addr))?
        .connect()
        .await
        .with_context(|| format!("cannot reach Prism at {url}"))?;
    let token = token(args)?;
    let header = match token {
        Some(t) => Some(
            MetadataValue::try_from(format!("Bearer {t}"))
                .context("the token has characters a header cannot carry")?,
        ),
        None => None,
    };
    let interceptor: Bearer = Box::new(move |mut request: tonic::Request<()>| {
        if let Some(h) = &header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    });
    Ok(AdminClient::with_interceptor(channel, interceptor)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// `--token`/`$PRISM_TOKEN`, else the freshest unexpired token in the token file.
fn token(args: &AdminArgs) -> anyhow::Result<Option<String>> {
    if let Some(t) = args.token.as_ref().filter(|t| !t.trim().is_empty()) {
        return Ok(Some(t.trim().to_string()));
    }
    let path = match &args.token_file {
        Some(p) => p.clone(),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".prism").join("token"),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.token_file.is_none() => {
            return Ok(None);
        }
        Err(e) => bail!("cannot read the token file {}: {e}", path.display()),
    };
    Ok(token_from_file(&text))
}

/// A token file is prism-login's JSON (`{"version":1,"tokens":{issuer:{client:{access_token,expires_at}}}}`)
/// or a bare token.
fn token_from_file(text: &str) -> Option<String> {
    let Ok(json) = serde_json::from_str::<Value>(text) else {
        let bare = text.trim();
        return (!bare.is_empty()).then(|| bare.to_string());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    json.get("tokens")?
        .as_object()?
        .values()
        .filter_map(Value::as_object)
        .flat_map(|clients| clients.values())
        .filter_map(|t| {
            let token = t.get("access_token")?.as_str()?.to_string();
            let expires = t
                .get("expires_at")
                .and_then(Value::as_f64)
                .unwrap_or(f64::MAX);
            (expires > now).then_some((expires, token))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, token)| token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_in_either_shape() {
        assert_eq!(
            token_from_file(" abc.def.ghi \n"),
            Some("abc.def.ghi".into())
        );
        let file = r#"{"version":1,"tokens":{"http://i":{"cli":{"access_token":"old","expires_at":1},
            "web":{"access_token":"fresh","expires_at":99999999999}}}}"#;
        assert_eq!(token_from_file(file), Some("fresh".into()));
        let expired =
            r#"{"version":1,"tokens":{"http://i":{"cli":{"access_token":"old","expires_at":1}}}}"#;
        assert_eq!(token_from_file(expired), None);
    }
}
