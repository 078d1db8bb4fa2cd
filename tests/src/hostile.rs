//! A hostile registry: an HTTP server whose every answer the test writes (garbage,
//! contradictory headers, redirects, challenges), serving plain HTTP and TLS on the same
//! port (the first byte of a connection says which), and logging every request with the
//! scheme it came over and the `Authorization` it carried: the tests read from this log
//! where credentials went.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::pki::TestCa;

/// One request as the hostile server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// `http` or `https`: what the connection actually was.
    pub scheme: String,
    pub method: String,
    /// Path and query.
    pub target: String,
    pub authorization: Option<String>,
}

pub type Answer = Response<Full<Bytes>>;
type Handler = dyn Fn(&Seen, &HostileRegistry) -> Answer + Send + Sync;

#[derive(Clone)]
pub struct HostileRegistry {
    pub address: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl HostileRegistry {
    /// Serves `handler` on a free port of `ip` (any 127.x address), HTTP and HTTPS at once,
    /// with a certificate from `ca` for `ip`, `127.0.0.1` and `localhost`.
    pub async fn start(
        ip: &str,
        ca: &TestCa,
        handler: impl Fn(&Seen, &HostileRegistry) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind((ip, 0))
            .await
            .expect("bind hostile registry");
        let address = listener.local_addr().expect("address");
        let issued = ca.server(&[ip, "127.0.0.1", "localhost"]);
        let tls = tls_acceptor(&issued.cert_pem, &issued.key_pem);
        let server = Self {
            address,
            log: Arc::new(Mutex::new(Vec::new())),
        };
        let handler: Arc<Handler> = Arc::new(handler);
        let shared = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tls, handler, server) = (tls.clone(), handler.clone(), shared.clone());
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    if stream.peek(&mut first).await.unwrap_or(0) == 0 {
                        return;
                    }
                    // A TLS connection starts with a handshake record (0x16).
                    if first[0] == 0x16 {
                        if let Ok(stream) = tls.accept(stream).await {
                            serve(stream, "https", handler, server).await;
                        }
                    } else {
                        serve(stream, "http", handler, server).await;
                    }
                });
            }
        });
        server
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn https_url(&self) -> String {
        format!("https://{}", self.address)
    }

    pub fn log(&self) -> Vec<Seen> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn clear_log(&self) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

async fn serve<S>(stream: S, scheme: &'static str, handler: Arc<Handler>, server: HostileRegistry)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let seen = Seen {
            scheme: scheme.to_string(),
            method: request.method().to_string(),
            target: request
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            authorization: request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        server
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(seen.clone());
        let answer = handler(&seen, &server);
        async move { Ok::<_, Infallible>(answer) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

pub(crate) fn tls_acceptor(cert_pem: &str, key_pem: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert PEM")];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("TLS config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// An answer with `status`, `headers` (repeated names are sent repeated) and `body`.
pub fn answer(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response
        .body(Full::new(body.into()))
        .expect("a valid test answer")
}
