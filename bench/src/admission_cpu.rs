//! CPU per admission in-process, by stage, to find hot spots (no network, no API: the
//! dry-run fixture takes the whole injection path without the RBAC side effect).

use std::time::{Duration, Instant};

use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use pod_reloaded_webhook::admission::{
    encode_review, parse_pod_review, with_json_patch, Admission,
};
use pod_reloaded_webhook::inject::{self, Decision, PodView};

fn time<T>(iterations: u32, mut f: impl FnMut() -> T) -> Duration {
    let started = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(f());
    }
    started.elapsed() / iterations
}

pub async fn run(admission: &Admission, body: &[u8], iterations: u32) {
    let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
    let parse = time(iterations, || parse_pod_review(body));
    let review = parse_pod_review(body).expect("fixture parses");
    let request: AdmissionRequest<PodView> = review.try_into().expect("has a request");
    let pod = request.object.clone().expect("object");
    let decide = time(iterations, || {
        inject::decide(&pod, "shop", &admission.settings)
    });
    let Decision::Inject(injection) = inject::decide(&pod, "shop", &admission.settings) else {
        panic!("fixture should inject");
    };
    let respond = time(iterations, || {
        let response =
            with_json_patch(AdmissionResponse::from(&request), injection.patch.clone()).ok()?;
        encode_review(response.into_review()).ok()
    });
    let mut whole = Duration::ZERO;
    for _ in 0..iterations {
        let started = Instant::now();
        let review = admission.review(body).await.ok();
        std::hint::black_box(review.and_then(|r| encode_review(r).ok()));
        whole += started.elapsed();
    }
    let whole = whole / iterations;
    println!(
        "### Webhook: CPU per admission, in-process ({iterations} iterations, dry-run fixture)\n"
    );
    println!("| stage | time |");
    println!("|---|---|");
    println!(
        "| parse AdmissionReview<PodView> (`parse_pod_review`) | {} |",
        us(parse)
    );
    println!("| decide + build patch | {} |", us(decide));
    println!("| response with patch, serialized | {} |", us(respond));
    println!("| whole `Admission::review` + serialize | {} |", us(whole));
    println!();
}
