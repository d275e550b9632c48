//! The HTTPS client every backend uses: hyper over rustls, a per-profile CA bundle, timeouts, reuse.
//!
//! There is deliberately no option to skip certificate checks.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use thiserror::Error;

#[derive(Debug, Error, Clone)]
pub enum NetError {
    /// Nothing reached the backend: safe to treat as not sent.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request may have reached the backend: its outcome is unknown.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    #[error("TLS setup: {0}")]
    Setup(String),
}

#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// PEM bundle of the CAs to trust; the system bundle when absent.
    pub ca_file: Option<std::path::PathBuf>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// A pooled HTTPS client; cheap to clone.
#[derive(Clone)]
pub struct HttpsClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient").field("timeout", &self.timeout).finish()
    }
}

fn load_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, NetError> {
    let path = ca_file.unwrap_or(Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| NetError::Setup(format!("{}: {e}", path.display())))?;
    for c in certs {
        let c = c.map_err(|e| NetError::Setup(format!("{}: {e}", path.display())))?;
        roots.add(c).map_err(|e| NetError::Setup(format!("{}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(NetError::Setup(format!("{}: no certificates", path.display())));
    }
    Ok(roots)
}

/// Connect and complete a TLS handshake with `url`'s host, sending no request: `posgate doctor`'s check
/// that a backend is reachable and its certificate verifies against the profile's CA bundle.
pub async fn tls_probe(url: &str, ca_file: Option<&Path>, timeout: Duration) -> Result<String, NetError> {
    let u = url::Url::parse(url).map_err(|e| NetError::Setup(format!("{url}: {e}")))?;
    let host = u.host_str().ok_or_else(|| NetError::Setup(format!("{url}: no host")))?.trim_matches(['[', ']']).to_string();
    let port = u.port_or_known_default().unwrap_or(443);
    let roots = load_roots(ca_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| NetError::Setup(format!("{host}: {e}")))?;
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| NetError::NotSent(format!("connect {host}:{port}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.map_err(|e| NetError::NotSent(format!("TLS with {host}:{port}: {e}")))?;
        let (_, conn) = tls.get_ref();
        Ok(format!("{:?}", conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default()))
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| NetError::NotSent(format!("{host}:{port}: no handshake within {} ms", timeout.as_millis())))?
}

impl HttpsClient {
    pub fn new(opts: &HttpOptions) -> Result<Self, NetError> {
        let roots = load_roots(opts.ca_file.as_deref())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| NetError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(opts.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        Ok(HttpsClient { inner, timeout: opts.timeout })
    }

    /// POST a body and read the whole answer within the total timeout. `journal_id` feeds the order log.
    pub async fn post(&self, url: &str, content_type: &str, body: Bytes, journal_id: u64) -> Result<HttpReply, NetError> {
        let req = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(body))
            .map_err(|e| NetError::NotSent(format!("bad request for {url}: {e}")))?;
        crate::testhook::order("send", journal_id);
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| {
                if e.is_connect() {
                    NetError::NotSent(format!("connect to {url}: {e:?}"))
                } else {
                    NetError::Unknown(format!("{url}: {e}"))
                }
            })?;
            let status = resp.status().as_u16();
            let content_type = resp.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = resp.into_body().collect().await.map_err(|e| NetError::Unknown(format!("{url}: reading answer: {e}")))?.to_bytes();
            Ok(HttpReply { status, content_type, body })
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(NetError::Unknown(format!("{url}: no answer within {} ms", self.timeout.as_millis()))),
        }
    }
}
