//! TLS material for simulators, demos and tests: a private test CA, a loopback server certificate, acceptors.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::client::NetError;

/// A test CA and a server certificate for `localhost`, `127.0.0.1` and `::1`, as PEM files in a folder.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestPki {
    /// Reuse the files in `dir` when present, else make a new CA and server certificate there.
    pub fn ensure(dir: &Path) -> Result<TestPki, NetError> {
        let pki = TestPki { ca_file: dir.join("test-ca.pem"), cert_file: dir.join("sim-cert.pem"), key_file: dir.join("sim-key.pem") };
        if pki.ca_file.is_file() && pki.cert_file.is_file() && pki.key_file.is_file() {
            return Ok(pki);
        }
        std::fs::create_dir_all(dir).map_err(|e| NetError::Setup(format!("{}: {e}", dir.display())))?;
        let err = |e: rcgen::Error| NetError::Setup(format!("certificate generation: {e}"));
        let ca_key = rcgen::KeyPair::generate().map_err(err)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "posgate test CA");
        let ca = ca_params.self_signed(&ca_key).map_err(err)?;
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()]).map_err(err)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "posgate simulator");
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(err)?;
        let write = |p: &Path, s: String| std::fs::write(p, s).map_err(|e| NetError::Setup(format!("{}: {e}", p.display())));
        write(&pki.ca_file, ca.pem())?;
        write(&pki.cert_file, cert.pem())?;
        // A private key: owner-only (the daemon refuses a readable `tls_key`/`client_key`).
        crate::fsmode::write_private(&pki.key_file, key.serialize_pem()).map_err(|e| NetError::Setup(format!("{}: {e}", pki.key_file.display())))?;
        Ok(pki)
    }

    /// A rustls acceptor serving the simulator certificate.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, NetError> {
        let setup = |e: String| NetError::Setup(e);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert_file)
            .map_err(|e| setup(format!("{}: {e}", self.cert_file.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| setup(format!("{}: {e}", self.cert_file.display())))?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| setup(format!("{}: {e}", self.key_file.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| setup(e.to_string()))?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    }
}
