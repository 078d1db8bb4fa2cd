//! CPU per admission in-process, by stage, to find hot spots (no network, no API: the
//! dry-run fixture takes the whole injection path without the RBAC side effect).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use pod_reloaded_webhook::admission::Admission;
use pod_reloaded_webhook::inject::{self, Decision};

fn time<T>(iterations: u32, mut f: impl FnMut() -> T) -> Duration {
    let started = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(f());
    }
    started.elapsed() / iterations
}

pub async fn run(admission: &Admission, body: &[u8], iterations: u32) {
    let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
    let parse = time(iterations, || {
        serde_json::from_slice::<AdmissionReview<DynamicObject>>(body).ok()
    });
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).expect("fixture parses");
    let request: AdmissionRequest<DynamicObject> = review.try_into().expect("has a request");
    let object = request.object.clone().expect("object");
    let to_pod = time(iterations, || {
        serde_json::to_value(&object)
            .and_then(serde_json::from_value::<Pod>)
            .ok()
    });
    let pod: Pod = serde_json::to_value(&object)
        .and_then(serde_json::from_value)
        .expect("pod");
    let decide = time(iterations, || {
        inject::decide(&pod, "shop", &admission.settings)
    });
    let Decision::Inject(injection) = inject::decide(&pod, "shop", &admission.settings) else {
        panic!("fixture should inject");
    };
    let respond = time(iterations, || {
        let response = AdmissionResponse::from(&request)
            .with_patch(injection.patch.clone())
            .ok()?;
        serde_json::to_vec(&response.into_review()).ok()
    });
    let mut whole = Duration::ZERO;
    for _ in 0..iterations {
        let started = Instant::now();
        std::hint::black_box(admission.review(body).await.ok());
        whole += started.elapsed();
    }
    let whole = whole / iterations;
    println!(
        "### Webhook: CPU per admission, in-process ({iterations} iterations, dry-run fixture)\n"
    );
    println!("| stage | time |");
    println!("|---|---|");
    println!("| parse AdmissionReview<DynamicObject> | {} |", us(parse));
    println!("| object -> Pod | {} |", us(to_pod));
    println!("| decide + build patch | {} |", us(decide));
    println!("| response with patch, serialized | {} |", us(respond));
    println!(
        "| whole `Admission::review` (+ serialize) | {} |",
        us(whole)
    );
    println!();
}
