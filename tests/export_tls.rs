//! `leaseline export` over HTTPS, as behind the TLS proxy the README recommends: a proxy on
//! 127.0.0.1 with a certificate made here, in front of the real binary.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{agent, binary_config, http, Server, ADMIN, TELEPHONY};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

/// A TLS-terminating proxy to `backend` on a free loopback port, with a new self-signed
/// certificate for 127.0.0.1 (written as PEM to `cert_pem`). Returns its address and the
/// count of completed TLS handshakes.
fn tls_proxy(backend: SocketAddr, cert_pem: &Path) -> (SocketAddr, Arc<AtomicUsize>) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(cert_pem, cert.pem()).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&handshakes);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), Arc::clone(&counted));
                tokio::spawn(async move {
                    // A client refusing the certificate ends the handshake: nothing to serve.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let mut upstream = tokio::net::TcpStream::connect(backend).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
    });
    (addr, handshakes)
}

fn export(url: &str, extra: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leaseline"));
    cmd.args(["export", "calls", "--url", url])
        .env("LEASELINE_ADMIN_KEY", ADMIN)
        .env_remove("LEASELINE_CA_FILE");
    for (name, value) in extra {
        if name.starts_with("--") {
            cmd.arg(name).arg(value);
        } else {
            cmd.env(name, value);
        }
    }
    cmd.output().unwrap()
}

#[test]
fn export_reads_the_journal_over_https_trusting_a_ca_file_and_refuses_an_unknown_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(
        dir.path(),
        "[[pool]]\nname = \"p\"\nnumbers = [\"+33899100000\"]\n",
    );
    let server = Server::start(&config);
    let (status, _) = http(
        &agent(),
        "POST",
        &server.url("/v1/calls"),
        Some(TELEPHONY),
        Some(
            &json!({"call_id": "tls-1", "event": "start", "called": "+33899100000",
                     "caller": "+33612345678"}),
        ),
    )
    .unwrap();
    assert_eq!(status, 200);

    let cert = dir.path().join("proxy.pem");
    let (proxy, handshakes) = tls_proxy(server.addr.parse().unwrap(), &cert);
    let url = format!("https://{proxy}");

    // An unknown issuer is refused, with a hint at the option.
    let out = export(&url, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    assert!(stderr.contains("--ca-file"), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);

    // Trusted by the option or by the variable, the export goes through the TLS proxy.
    for how in ["--ca-file", "LEASELINE_CA_FILE"] {
        let out = export(&url, &[(how, &cert)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{how}: {stderr}");
        let csv = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<_> = csv.lines().collect();
        assert_eq!(lines.len(), 2, "{how}: {csv}");
        assert!(lines[1].starts_with("tls-1,p,+33899100000,"), "{csv}");
    }
    assert_eq!(handshakes.load(Ordering::SeqCst), 2);

    // A CA file that holds no certificate is refused before any connection.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let out = export(&url, &[("--ca-file", &junk)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds no PEM certificate"), "{stderr}");
    assert_eq!(handshakes.load(Ordering::SeqCst), 2);
}
