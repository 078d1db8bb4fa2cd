//! The baseline: a minimal hyper + rustls server that answers every POST with a fixed,
//! valid AdmissionReview response (the request's uid spliced in, so the load generator's
//! checks are the same for both servers). It does no admission work: the best this
//! machine can do for HTTPS request/response at this size.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A fixed JSON patch (base64 of `[{"op":"add","path":"/metadata/labels/x","value":"y"}]`).
const PATCH_B64: &str = "W3sib3AiOiJhZGQiLCJwYXRoIjoiL21ldGFkYXRhL2xhYmVscy94IiwidmFsdWUiOiJ5In1d";

fn request_uid(body: &[u8]) -> &[u8] {
    // The request's uid is the first "uid" key in an AdmissionReview body.
    let needle = b"\"uid\":";
    let Some(start) = body.windows(needle.len()).position(|w| w == needle) else {
        return b"";
    };
    let rest = &body[start + needle.len()..];
    let Some(open) = rest.iter().position(|&b| b == b'"') else {
        return b"";
    };
    let value = &rest[open + 1..];
    let end = value.iter().position(|&b| b == b'"').unwrap_or(0);
    &value[..end]
}

fn response(uid: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":""#,
    );
    out.extend_from_slice(uid);
    out.extend_from_slice(br#"","allowed":true,"patchType":"JSONPatch","patch":""#);
    out.extend_from_slice(PATCH_B64.as_bytes());
    out.extend_from_slice(br#""}}"#);
    Bytes::from(out)
}

pub async fn serve(listen: SocketAddr, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let certs = CertificateDer::pem_file_iter(cert)
        .context("reading the certificate")?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).context("reading the key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                let body = request.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>(Response::new(Full::new(response(request_uid(&body)))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_the_request_uid() {
        let body =
            br#"{"kind":"AdmissionReview","request":{"uid":"abc-123","userInfo":{"uid":"other"}}}"#;
        assert_eq!(request_uid(body), b"abc-123");
        let answer: serde_json::Value = serde_json::from_slice(&response(b"abc-123")).unwrap();
        assert_eq!(answer["response"]["uid"], "abc-123");
        assert!(answer["response"]["patch"].is_string());
    }
}
