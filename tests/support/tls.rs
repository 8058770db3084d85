//! TLS material for the suites and the bench: a test CA made on the spot
//! (rcgen, ring), a server certificate for localhost and 127.0.0.1 and a
//! client certificate, written as PEM files.

/// A test CA, a server certificate for localhost / 127.0.0.1 and a client
/// certificate, as PEM files in `dir`: (ca, cert, key, client cert, client key).
pub fn test_pki(dir: &std::path::Path) -> anyhow::Result<[std::path::PathBuf; 5]> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let mut server_params = CertificateParams::new(vec!["localhost".to_string()])?;
    server_params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let server_key = KeyPair::generate()?;
    let server = server_params.signed_by(&server_key, &ca, &ca_key)?;
    let client_key = KeyPair::generate()?;
    let client =
        CertificateParams::new(vec!["client".to_string()])?.signed_by(&client_key, &ca, &ca_key)?;
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
