//! HTTP wiring: the TLS admission router and the plain-HTTP health/metrics router.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt as _;
use pod_reloaded_contract as contract;

use crate::admission::{encode_review, Admission};

/// Largest AdmissionReview accepted; kube-apiserver's own request limit is 3 MiB.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// A body over the limit is still read (and dropped) up to this size before the 413 is
/// sent: answering while the client is still sending makes the server close the
/// connection with unread data, and the client sees a reset instead of the 413.
const MAX_DRAINED_BYTES: usize = 64 * 1024 * 1024;
/// ... and for at most this long.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub fn admission_router(admission: Arc<Admission>) -> Router {
    Router::new()
        .route(contract::WEBHOOK_MUTATE_PATH, post(mutate))
        // The limit is applied while reading, in `read_body`.
        .layer(DefaultBodyLimit::disable())
        .with_state(admission)
}

enum BodyError {
    TooLarge,
    Unreadable(String),
}

/// The request body up to `MAX_BODY_BYTES`; a larger one is drained, within bounds, so
/// that its 413 reaches the client.
async fn read_body(mut body: Body) -> Result<Bytes, BodyError> {
    let mut collected = Vec::new();
    let mut seen = 0usize;
    let read_all = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Unreadable(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen = seen.saturating_add(data.len());
            if seen > MAX_DRAINED_BYTES {
                break;
            }
            if seen <= MAX_BODY_BYTES {
                collected.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(DRAIN_TIMEOUT, read_all).await {
        Ok(Err(error)) => return Err(error),
        Ok(Ok(())) => {}
        Err(_) if seen <= MAX_BODY_BYTES => {
            return Err(BodyError::Unreadable(
                "the body did not arrive in time".into(),
            ))
        }
        Err(_) => {}
    }
    if seen > MAX_BODY_BYTES {
        return Err(BodyError::TooLarge);
    }
    Ok(Bytes::from(collected))
}

async fn mutate(State(admission): State<Arc<Admission>>, body: Body) -> Response {
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("AdmissionReview larger than {MAX_BODY_BYTES} bytes\n"),
            )
                .into_response()
        }
        Err(BodyError::Unreadable(why)) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {why}\n"),
            )
                .into_response()
        }
    };
    match admission.review(&body).await {
        Ok(review) => match encode_review(review) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(error) => {
                tracing::error!(%error, "could not serialize an AdmissionReview response");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("could not serialize the response: {error}\n"),
                )
                    .into_response()
            }
        },
        Err(invalid) => (StatusCode::BAD_REQUEST, format!("{invalid}\n")).into_response(),
    }
}

#[derive(Clone)]
pub struct HealthState {
    pub admission: Arc<Admission>,
    /// Set once the TLS listener is bound with a loaded certificate.
    pub ready: Arc<AtomicBool>,
}

pub fn health_router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<HealthState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        "ok\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: TLS listener not started, or shutting down\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<HealthState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.admission.metrics.encode(),
    )
        .into_response()
}
