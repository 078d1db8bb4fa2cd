//! Unit tests of API calls without a cluster: a `kube::Client` over `tower_test`'s mock
//! service, and a verifier that takes the requests in order, asserts each (method, path,
//! and hands back the body) and answers what the API server would. The approach of
//! kube-rs/controller-rs; the real API servers of `tests/` are for whole-binary tests.

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;
use tower_test::mock::{self, Handle};

pub type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// A client whose requests arrive at the returned handle.
pub fn client(namespace: &str) -> (kube::Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, namespace), handle)
}

/// Takes the next request, asserts its method and path, answers `status` with `body`,
/// and returns the request's JSON body (`Null` when empty).
pub async fn expect(
    handle: &mut ApiHandle,
    method: &str,
    path: &str,
    status: u16,
    body: Value,
) -> Value {
    let (request, send) = handle.next_request().await.expect("a request");
    assert_eq!(
        (request.method().as_str(), request.uri().path()),
        (method, path),
        "unexpected request"
    );
    let sent = request
        .into_body()
        .collect_bytes()
        .await
        .expect("request body");
    let sent = if sent.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&sent).expect("JSON body")
    };
    let answer = serde_json::to_vec(&body).expect("answer serializes");
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(answer))
            .expect("a response"),
    );
    sent
}

/// A `Status` answer, as the API server sends for errors.
pub fn status(code: u16, reason: &str) -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "reason": reason, "code": code, "message": reason})
}

/// Takes as many requests as `expected` lists, in any order (for requests sent
/// concurrently), answering each by its method and path; returns what was asked, sorted.
pub async fn expect_unordered(
    handle: &mut ApiHandle,
    expected: &[(&str, &str, u16, Value)],
) -> Vec<(String, String)> {
    let mut asked = Vec::new();
    for _ in expected {
        let (request, send) = handle.next_request().await.expect("a request");
        let (method, path) = (
            request.method().to_string(),
            request.uri().path().to_string(),
        );
        let (_, _, code, body) = expected
            .iter()
            .find(|(m, p, _, _)| *m == method && *p == path)
            .unwrap_or_else(|| panic!("unexpected request {method} {path}"));
        let answer = serde_json::to_vec(body).expect("answer serializes");
        send.send_response(
            Response::builder()
                .status(*code)
                .body(Body::from(answer))
                .expect("a response"),
        );
        asked.push((method, path));
    }
    asked.sort();
    asked
}
