//! The one outgoing HTTP client (what `leaseline export` asks a server with): plain HTTP, or
//! HTTPS through rustls, trusting the bundled Mozilla roots and, optionally, the certificate
//! authorities of a PEM file (a private CA, or the self-signed certificate of a TLS proxy).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// An agent for `http://` and `https://` URLs; `extra_ca`: a PEM file whose certificates are
/// trusted too. Fails with the reason when that file cannot be read or holds no certificate.
pub fn agent(extra_ca: Option<&Path>, timeout: Duration) -> Result<ureq::Agent, String> {
    let builder = ureq::AgentBuilder::new().timeout(timeout);
    let Some(file) = extra_ca else {
        return Ok(builder.build());
    };
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let certs = extra_certificates(file)?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", file.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(builder.tls_config(Arc::new(tls)).build())
}

fn extra_certificates(
    file: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read certificates: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", file.display()));
    }
    Ok(certs)
}
