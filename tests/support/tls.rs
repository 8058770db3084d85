//! TLS material for the suites and the bench: a test CA made on the spot
//! (rcgen, ring), a server certificate for localhost and 127.0.0.1 and a
//! client certificate, written as PEM files.

/// A test CA, a server certificate for localhost / 127.0.0.1 and a client
/// certificate, as PEM files in `dir`: (ca, cert, key, client cert, client key).
pub fn test_pki(dir: &std::path::Path) -> anyhow::Result<[std::path::PathBuf; 5]> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    // Distinct subject names: rcgen gives every certificate the same one
    // by default, and OpenSSL (PostgreSQL, redis-server) then takes a leaf
    // for a self-signed certificate and refuses it.
    let named = |mut params: CertificateParams, name: &str| {
        params.distinguished_name.push(DnType::CommonName, name);
        params
    };
    let mut ca_params = named(
        CertificateParams::new(Vec::<String>::new())?,
        "Prism test CA",
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let mut server_params = named(
        CertificateParams::new(vec!["localhost".to_string()])?,
        "localhost",
    );
    server_params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let server_key = KeyPair::generate()?;
    let server = server_params.signed_by(&server_key, &ca, &ca_key)?;
    let client_key = KeyPair::generate()?;
    let client = named(
        CertificateParams::new(vec!["client".to_string()])?,
        "client",
    )
    .signed_by(&client_key, &ca, &ca_key)?;
    let files = [
        ("ca.pem", ca.pem()),
        ("cert.pem", server.pem()),
        ("key.pem", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client-key.pem", client_key.serialize_pem()),
    ];
    let mut paths = Vec::new();
    for (name, pem) in files {
        let path = dir.join(name);
        std::fs::write(&path, pem)?;
        paths.push(path);
    }
    paths
        .try_into()
        .map_err(|_| anyhow::anyhow!("five PEM files"))
}

/// A backend table's TLS lines: `tls_ca` when given, `tls_cert` and
/// `tls_key` for a client certificate when given.
pub fn backend_tls_toml(
    ca: Option<&std::path::Path>,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> String {
    let mut lines = String::new();
    if let Some(ca) = ca {
        lines.push_str(&format!("tls_ca = \"{}\"\n", ca.display()));
    }
    if let Some((cert, key)) = client {
        lines.push_str(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    lines
}
