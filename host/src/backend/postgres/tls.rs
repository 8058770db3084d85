//! TLS to PostgreSQL with rustls, as libpq's `sslmode` asks for it.
//!
//! tokio-postgres negotiates TLS (`prefer`, `require`) but leaves the
//! handshake to a connector and knows no `verify-ca` / `verify-full`, so the
//! URL's mode is read here first: `verify-*` are handed to tokio-postgres as
//! `require` and the difference lives in the certificate verifier.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::config::BackendTls;

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// `prefer` / `require` without `tls_ca`: encrypted, the certificate
    /// not checked (libpq's meaning: it stops a passive listener only).
    Nothing,
    /// `verify-ca`, or `require` with `tls_ca`: the chain, not the name.
    Chain,
    /// `verify-full`: the chain and the host name.
    Full,
}

/// The URL tokio-postgres can parse and the verification it asks for:
/// `sslmode=verify-ca|verify-full` become `require`.
pub fn read_sslmode(url: &str, tls: &BackendTls<'_>) -> (String, Verify) {
    for (mode, verify) in [("verify-full", Verify::Full), ("verify-ca", Verify::Chain)] {
        let param = format!("sslmode={mode}");
        if url.contains(&param) {
            return (url.replace(&param, "sslmode=require"), verify);
        }
    }
    let verify = if tls.ca.is_some() {
        Verify::Chain
    } else {
        Verify::Nothing
    };
    (url.to_string(), verify)
}

/// The rustls configuration for `verify`, trusting `tls.ca` (else the
/// system's roots) and presenting `tls.cert` if set. Errors name the field.
pub fn client_config(tls: &BackendTls<'_>, verify: Verify) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match tls.ca {
        Some(path) => {
            for cert in CertificateDer::pem_slice_iter(&read("tls_ca", path)?) {
                let cert = cert.map_err(|e| format!("tls_ca: {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("tls_ca: {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("tls_ca: {} holds no certificate", path.display()));
            }
        }
        None if verify != Verify::Nothing => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // One unreadable system certificate does not stop the rest.
                let _ = roots.add(cert);
            }
        }
        None => {}
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let builder = if verify == Verify::Full {
        builder.with_root_certificates(roots)
    } else {
        let webpki = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("tls_ca: {e}"))?,
            )
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient {
                chain: webpki,
                provider,
            }))
    };
    match (tls.cert, tls.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&read("tls_cert", cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tls_cert: {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_slice(&read("tls_key", key)?)
                .map_err(|e| format!("tls_key: {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("tls_cert: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn read(field: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{field}: cannot read {}: {e}", path.display()))
}

/// Checks the chain if it has roots to check against (`verify-ca`), never
/// the name; with no roots (`require`), accepts any certificate. The
/// handshake signature is always checked, so the peer holds the key of the
/// certificate it showed.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// tokio-postgres's TLS hook over rustls: one per pool, cloned per connection.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<rustls::ClientConfig>,
}

impl MakeRustls {
    pub fn new(config: rustls::ClientConfig) -> MakeRustls {
        MakeRustls {
            config: Arc::new(config),
        }
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(stream))
        })
    }
}

/// A TLS connection to the server.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // No tls-server-end-point binding: SCRAM runs without the -PLUS
        // variant (tokio-postgres's default `channel_binding=prefer` allows it).
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_become_require_for_tokio_postgres() {
        let none = BackendTls::default();
        assert_eq!(
            read_sslmode("postgres://u@h/db?sslmode=verify-full", &none),
            (
                "postgres://u@h/db?sslmode=require".to_string(),
                Verify::Full
            )
        );
        assert_eq!(
            read_sslmode("postgres://u@h/db?sslmode=verify-ca&x=1", &none).1,
            Verify::Chain
        );
        assert_eq!(
            read_sslmode("postgres://u@h/db?sslmode=require", &none).1,
            Verify::Nothing
        );
        let ca = BackendTls {
            ca: Some(Path::new("ca.pem")),
            ..BackendTls::default()
        };
        // libpq: `require` with a root certificate checks the chain.
        assert_eq!(
            read_sslmode("postgres://u@h/db?sslmode=require", &ca).1,
            Verify::Chain
        );
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let tls = BackendTls {
            ca: Some(Path::new("/nonexistent/ca.pem")),
            ..BackendTls::default()
        };
        let err = client_config(&tls, Verify::Full).err().unwrap_or_default();
        assert!(
            err.starts_with("tls_ca: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
    }
}
