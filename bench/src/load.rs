//! The load generator: C keep-alive TLS connections posting AdmissionReview bodies for a
//! fixed duration. Every response is checked (HTTP 200, same uid, a patch), so a fast
//! wrong answer counts as a failure, not as throughput.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

/// One request body and the uid its answer must carry.
pub struct Body {
    pub uid: String,
    pub bytes: Bytes,
}

#[derive(Debug, Default)]
pub struct LoadResult {
    pub ok: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Latencies of successful requests, sorted.
    pub latencies: Vec<Duration>,
    pub first_failure: Option<String>,
}

impl LoadResult {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index.min(self.latencies.len() - 1)]
    }
}

fn check(body: &Body, status: u16, answer: &[u8]) -> Result<(), String> {
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    let answer: Value = serde_json::from_slice(answer).map_err(|e| format!("not JSON: {e}"))?;
    let response = &answer["response"];
    if response["uid"].as_str() != Some(body.uid.as_str()) {
        return Err(format!("uid {} instead of {}", response["uid"], body.uid));
    }
    if response["patch"].as_str().is_none_or(str::is_empty) {
        return Err(format!(
            "no base64 patch (warnings: {})",
            response["warnings"]
        ));
    }
    Ok(())
}

/// Runs `concurrency` connections against `https://<name>:<port>/mutate` for `duration`.
pub async fn run(
    port: u16,
    ca: &Path,
    bodies: Arc<Vec<Body>>,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    let url = format!(
        "https://{}:{port}/mutate",
        pod_reloaded_tests::webhook::service_name()
    );
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        // One client per worker, at most one idle connection: C keep-alive connections.
        let client = pod_reloaded_tests::webhook::tls_client(ca, port);
        let bodies = bodies.clone();
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let mut result = LoadResult::default();
            let mut next = worker;
            while Instant::now() < deadline {
                let body = &bodies[next % bodies.len()];
                next += concurrency;
                let sent = Instant::now();
                let outcome = match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.bytes.clone())
                    .send()
                    .await
                {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        match response.bytes().await {
                            Ok(answer) => check(body, status, &answer),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(()) => {
                        result.ok += 1;
                        result.latencies.push(sent.elapsed());
                    }
                    Err(reason) => {
                        result.failed += 1;
                        result.first_failure.get_or_insert(reason);
                    }
                }
            }
            result
        }));
    }
    let mut total = LoadResult::default();
    for worker in workers {
        if let Ok(result) = worker.await {
            total.ok += result.ok;
            total.failed += result.failed;
            total.latencies.extend(result.latencies);
            if total.first_failure.is_none() {
                total.first_failure = result.first_failure;
            }
        }
    }
    total.elapsed = started.elapsed();
    total.latencies.sort_unstable();
    total
}
