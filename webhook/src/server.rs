//! HTTP wiring: the TLS admission router and the plain-HTTP health/metrics router.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use pod_reloaded_contract as contract;

use crate::admission::{encode_review, Admission};

/// Largest AdmissionReview accepted; kube-apiserver's own request limit is 3 MiB.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub fn admission_router(admission: Arc<Admission>) -> Router {
    Router::new()
        .route(contract::WEBHOOK_MUTATE_PATH, post(mutate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(admission)
}

async fn mutate(State(admission): State<Arc<Admission>>, body: Bytes) -> Response {
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
            "not ready: TLS listener not started\n",
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
