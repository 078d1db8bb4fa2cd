//! Notification receivers for the tests: one HTTPS server (a certificate from a test CA,
//! real handshakes) that records every request it gets, by path, and answers each path as
//! the test says: 200, a few 500s first, or never.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::pki::TestCa;

/// How a path answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Accept,
    /// HTTP 500 to the first `n` requests, then 200.
    FailFirst(usize),
    /// Never answers (the sender's timeout must fire).
    Hang,
}

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// What it was answered.
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    behaviours: HashMap<String, Behaviour>,
    answered: HashMap<String, usize>,
}

#[derive(Clone)]
pub struct Receivers {
    pub address: SocketAddr,
    /// The CA that signed the receivers' certificate (PEM).
    pub ca_pem: String,
    state: Arc<Mutex<State>>,
}

impl Receivers {
    pub async fn start() -> Self {
        let ca = TestCa::new("notification receivers");
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind receivers");
        let address = listener.local_addr().expect("address");
        let issued = ca.server(&["127.0.0.1", "localhost"]);
        let tls = crate::hostile::tls_acceptor(&issued.cert_pem, &issued.key_pem);
        let receivers = Self {
            address,
            ca_pem: ca.cert_pem(),
            state: Arc::new(Mutex::new(State::default())),
        };
        let shared = receivers.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tls, receivers) = (tls.clone(), shared.clone());
                tokio::spawn(async move {
                    if let Ok(stream) = tls.accept(stream).await {
                        let service =
                            hyper::service::service_fn(move |request: Request<Incoming>| {
                                let receivers = receivers.clone();
                                async move { Ok::<_, Infallible>(receivers.answer(request).await) }
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                });
            }
        });
        receivers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}/{path}", self.address)
    }

    pub fn set(&self, path: &str, behaviour: Behaviour) {
        self.lock().behaviours.insert(format!("/{path}"), behaviour);
    }

    /// What `path` got so far, answered 200 or not.
    pub fn received(&self, path: &str) -> Vec<Received> {
        let path = format!("/{path}");
        self.lock()
            .received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// What `path` accepted (answered 200).
    pub fn accepted(&self, path: &str) -> Vec<Received> {
        self.received(path)
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }

    async fn answer(
        &self,
        request: Request<Incoming>,
    ) -> Response<http_body_util::Full<bytes::Bytes>> {
        let path = request.uri().path().to_string();
        let headers = request
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        let status = {
            let mut state = self.lock();
            let behaviour = state
                .behaviours
                .get(&path)
                .copied()
                .unwrap_or(Behaviour::Accept);
            let answered = state.answered.entry(path.clone()).or_default();
            *answered += 1;
            let status = match behaviour {
                Behaviour::Accept => 200,
                Behaviour::FailFirst(n) if *answered <= n => 500,
                Behaviour::FailFirst(_) => 200,
                Behaviour::Hang => 0,
            };
            state.received.push(Received {
                path,
                headers,
                body,
                status,
            });
            status
        };
        if status == 0 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let mut response =
            Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")));
        *response.status_mut() =
            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
        response
    }
}

/// Receivers that live as long as the test process, on a runtime of their own (for the
/// control plane's webhook, which outlives any one test's runtime).
pub fn process_receivers() -> &'static Receivers {
    static RECEIVERS: std::sync::OnceLock<Receivers> = std::sync::OnceLock::new();
    RECEIVERS.get_or_init(|| {
        let (started, receivers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime for the receivers");
            runtime.block_on(async move {
                let _ = started.send(Receivers::start().await);
                std::future::pending::<()>().await;
            });
        });
        receivers.recv().expect("the receivers started")
    })
}
