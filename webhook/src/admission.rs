//! The admission path: parse an AdmissionReview, decide, run the side effect, answer.

use std::borrow::Cow;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, Operation, SerializePatchError,
};
use kube::core::{DynamicObject, Resource, TypeMeta};
use serde::Serialize;
use serde_json::value::RawValue;
use tracing::{info, warn};

use crate::inject::{self, Decision, InjectionSettings, JsonPatch, PodView};
use crate::metrics::{AdmissionResult, Metrics};
use crate::rbac::AccessGranter;

type Review = AdmissionReview<DynamicObject>;

const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
const REVIEW_KIND: &str = "AdmissionReview";

/// The response body. kube's `AdmissionResponse` serializes the patch bytes as a JSON
/// array of numbers, which Go's decoder accepts; the API server's own form is base64,
/// four times smaller, and writing it was the largest cost of an admission (BENCHMARKS.md).
/// The rest of the response is kube's own serialization, written straight to the body.
pub fn encode_review(mut review: Review) -> Result<Vec<u8>, serde_json::Error> {
    let patch = review.response.as_mut().and_then(|r| r.patch.take());
    serde_json::to_vec(&EncodedReview {
        types: &review.types,
        response: review.response.as_ref().map(|response| EncodedResponse {
            response,
            patch: patch.as_deref().map(Base64Text),
        }),
    })
}

/// `response` carrying `patch`. kube sets a response's patch type only in `with_patch`,
/// which takes `json_patch`'s value trees and writes them out; ours is JSON text already
/// (`JsonPatch`), so an empty patch sets the type and the text takes its place.
pub fn with_json_patch(
    response: AdmissionResponse,
    patch: JsonPatch,
) -> Result<AdmissionResponse, SerializePatchError> {
    let mut patched = response.with_patch(json_patch::Patch(Vec::new()))?;
    patched.patch = Some(patch.into_bytes());
    Ok(patched)
}

/// A review as the webhook answers it: no request, the response's patch in base64.
#[derive(Serialize)]
struct EncodedReview<'a> {
    #[serde(flatten)]
    types: &'a TypeMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<EncodedResponse<'a>>,
}

#[derive(Serialize)]
struct EncodedResponse<'a> {
    /// Every field but the patch, which was taken out of it.
    #[serde(flatten)]
    response: &'a AdmissionResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<Base64Text<'a>>,
}

/// Bytes written as a base64 string, the way Go encodes `[]byte` in JSON.
struct Base64Text<'a>(&'a [u8]);

impl Serialize for Base64Text<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Base64 has nothing to escape: written as a raw JSON string, the text is not
        // scanned byte by byte for escapes (that scan was a tenth of an admission's CPU).
        let mut text = String::with_capacity(self.0.len() / 3 * 4 + 6);
        text.push('"');
        BASE64.encode_string(self.0, &mut text);
        text.push('"');
        RawValue::from_string(text)
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

/// Why a request body could not be handled; the text is the HTTP 400 body.
#[derive(Debug, thiserror::Error)]
pub enum InvalidReview {
    #[error("body is not an AdmissionReview: {0}")]
    NotAReview(serde_json::Error),
    #[error("unsupported AdmissionReview {api_version}/{kind}: expected {REVIEW_API_VERSION}/{REVIEW_KIND}")]
    WrongType { api_version: String, kind: String },
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request has no uid")]
    NoUid,
    #[error("Pod CREATE request has no object")]
    NoObject,
    #[error("request object is not a valid Pod: {0}")]
    NotAPod(serde_json::Error),
}

/// A review whose object reads as a `PodView`; `None` for anything else. The body's UTF-8
/// is checked once, in one pass: parsing bytes, serde_json checks each string on its own,
/// which was a twelfth of an admission's CPU.
pub fn parse_pod_review(body: &[u8]) -> Option<AdmissionReview<PodView>> {
    let text = std::str::from_utf8(body).ok()?;
    serde_json::from_str(text).ok()
}

/// Owns everything the admission path needs; `main` only wires it to HTTP.
pub struct Admission {
    pub settings: InjectionSettings,
    /// `None` when no Kubernetes API configuration could be found at start.
    pub granter: Option<AccessGranter>,
    pub metrics: Metrics,
}

impl Admission {
    /// Handles one request body, recording its result and duration.
    pub async fn review(&self, body: &[u8]) -> Result<Review, InvalidReview> {
        let started = Instant::now();
        let outcome = self.review_inner(body).await;
        let result = match &outcome {
            Ok((_, result)) => *result,
            Err(error) => {
                warn!(%error, "rejected malformed admission request");
                AdmissionResult::Invalid
            }
        };
        self.metrics
            .observe(result, started.elapsed().as_secs_f64());
        outcome.map(|(review, _)| review)
    }

    async fn review_inner(&self, body: &[u8]) -> Result<(Review, AdmissionResult), InvalidReview> {
        // Pod reviews, nearly all the traffic, are parsed once straight into `PodView`.
        // Anything that does not parse that way (another kind, an invalid Pod, not UTF-8,
        // not a review at all) is parsed again generically, to skip it or to say exactly
        // what is wrong.
        let (response, result) = match parse_pod_review(body) {
            Some(review) => self.answer(checked(review)?, typed_pod).await?,
            None => {
                let review: Review =
                    serde_json::from_slice(body).map_err(InvalidReview::NotAReview)?;
                self.answer(checked(review)?, generic_pod).await?
            }
        };
        Ok((response.into_review(), result))
    }

    /// Skips what is not a Pod CREATE; admits the rest.
    async fn answer<T: Resource>(
        &self,
        request: AdmissionRequest<T>,
        as_pod: fn(&T) -> Result<Cow<'_, PodView>, InvalidReview>,
    ) -> Result<(AdmissionResponse, AdmissionResult), InvalidReview> {
        if let Some(reason) = not_injectable(&request) {
            let name = request.name.clone();
            return Ok(skip(
                AdmissionResponse::from(&request),
                &request,
                &name,
                reason,
            ));
        }
        let object = request.object.as_ref().ok_or(InvalidReview::NoObject)?;
        let pod = as_pod(object)?;
        Ok(self.admit(&request, &pod).await)
    }

    /// Injects a Pod being created, running the RBAC side effect unless it is a dry run.
    async fn admit<T: Resource>(
        &self,
        request: &AdmissionRequest<T>,
        pod: &PodView,
    ) -> (AdmissionResponse, AdmissionResult) {
        let response = AdmissionResponse::from(request);
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_else(|| "default".to_string());

        let injection = match inject::decide(pod, &namespace, &self.settings) {
            Decision::Skip(reason) => {
                return skip(response, request, pod_name(pod), reason.to_string())
            }
            Decision::Inject(injection) => injection,
        };

        if !request.dry_run {
            let granted = match &self.granter {
                None => Err(anyhow::anyhow!(
                    "no Kubernetes API configuration was found at start"
                )),
                Some(granter) => {
                    granter
                        .ensure(
                            &namespace,
                            &injection.service_account,
                            injection.uses_checker_account,
                        )
                        .await
                }
            };
            if let Err(error) = granted {
                warn!(uid = %request.uid, %namespace, pod = %pod_name(pod), error = format!("{error:#}"), "admitted without injection: could not grant the checker its RBAC");
                let message = format!(
                    "pod-reloaded: not injected: could not bind ServiceAccount {} to ClusterRole {}: {error:#}",
                    injection.service_account,
                    pod_reloaded_contract::CHECKER_CLUSTER_ROLE
                );
                return (
                    with_warnings(response, vec![message]),
                    AdmissionResult::Error,
                );
            }
        }

        info!(
            uid = %request.uid,
            %namespace,
            pod = %pod_name(pod),
            watched = %injection.watched_containers.join(","),
            service_account = %injection.service_account,
            dry_run = request.dry_run,
            "injected"
        );
        let warnings = injection.warnings;
        // The response is not copied for the error branch, which builds its own.
        match with_json_patch(response, injection.patch) {
            Ok(patched) => (with_warnings(patched, warnings), AdmissionResult::Injected),
            Err(error) => {
                warn!(%error, "could not serialize patch");
                let message =
                    format!("pod-reloaded: not injected: could not serialize patch: {error}");
                (
                    with_warnings(AdmissionResponse::from(request), vec![message]),
                    AdmissionResult::Error,
                )
            }
        }
    }
}

fn typed_pod(pod: &PodView) -> Result<Cow<'_, PodView>, InvalidReview> {
    Ok(Cow::Borrowed(pod))
}

fn generic_pod(object: &DynamicObject) -> Result<Cow<'_, PodView>, InvalidReview> {
    serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .map(Cow::Owned)
        .map_err(InvalidReview::NotAPod)
}

/// Why a request is not a Pod CREATE, the only thing injected.
fn not_injectable<T: Resource>(request: &AdmissionRequest<T>) -> Option<String> {
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod || request.sub_resource.is_some() {
        let what = format!(
            "{}/{}",
            request.kind.kind,
            request.sub_resource.as_deref().unwrap_or("")
        );
        return Some(format!(
            "pod-reloaded: only Pods are injected, not {}",
            what.trim_end_matches('/')
        ));
    }
    if !matches!(request.operation, Operation::Create) {
        return Some(format!(
            "pod-reloaded: only Pod CREATE is injected, not {:?}",
            request.operation
        ));
    }
    None
}

/// The request of a review, checked for what every answer needs.
fn checked<T: Resource>(review: AdmissionReview<T>) -> Result<AdmissionRequest<T>, InvalidReview> {
    if review.types.api_version != REVIEW_API_VERSION || review.types.kind != REVIEW_KIND {
        return Err(InvalidReview::WrongType {
            api_version: review.types.api_version,
            kind: review.types.kind,
        });
    }
    let request: AdmissionRequest<T> = review.try_into().map_err(|_| InvalidReview::NoRequest)?;
    if request.uid.is_empty() {
        return Err(InvalidReview::NoUid);
    }
    Ok(request)
}

fn skip<T: Resource>(
    response: AdmissionResponse,
    request: &AdmissionRequest<T>,
    pod: &str,
    reason: String,
) -> (AdmissionResponse, AdmissionResult) {
    info!(uid = %request.uid, namespace = request.namespace.as_deref().unwrap_or(""), pod, %reason, "not injected");
    (
        with_warnings(response, vec![reason]),
        AdmissionResult::Skipped,
    )
}

fn with_warnings(mut response: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    response
}

/// Controller-made pods have only a `generateName` at admission time.
fn pod_name(pod: &PodView) -> &str {
    pod.metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A Deployment's Pod CREATE as kube-apiserver sends it, in a dry run (no API calls);
    /// its annotation `note` is `MARK`, for tests to put any bytes there.
    fn pod_review() -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "dryRun": true,
                "object": {
                    "metadata": {
                        "generateName": "web-7c9d8b6f5d-",
                        "namespace": "shop",
                        "annotations": {"note": "MARK"},
                        "ownerReferences": [{
                            "apiVersion": "apps/v1", "kind": "ReplicaSet",
                            "name": "web-7c9d8b6f5d", "uid": "u1", "controller": true
                        }]
                    },
                    "spec": {"containers": [{"name": "web", "image": "nginx:latest"}]}
                }
            }
        })
    }

    fn request() -> AdmissionRequest<DynamicObject> {
        let review: Review = serde_json::from_value(pod_review()).expect("a review");
        review.try_into().expect("a request")
    }

    /// What kube's own serialization writes, with the patch bytes as base64 text.
    fn expected(review: &Review, patch: Option<&[u8]>) -> Value {
        let mut value = serde_json::to_value(review).expect("serializes");
        if let Some(patch) = patch {
            value["response"]["patch"] = BASE64.encode(patch).into();
        }
        value
    }

    #[test]
    fn a_patched_response_is_kubes_serialization_with_the_patch_in_base64() {
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/metadata/labels", "value": {"a": "b/c+d"}}
        ]))
        .expect("a patch");
        let response = AdmissionResponse::from(&request())
            .with_patch(patch)
            .expect("serializes");
        let response = with_warnings(response, vec!["pinned \"app\"".to_string()]);
        let review = response.into_review();
        let patch_bytes = review
            .response
            .as_ref()
            .and_then(|r| r.patch.clone())
            .expect("a patch");
        let mut without_patch = review.clone();
        if let Some(response) = without_patch.response.as_mut() {
            response.patch = None;
        }

        let encoded: Value =
            serde_json::from_slice(&encode_review(review).expect("encodes")).expect("JSON");

        assert_eq!(encoded, expected(&without_patch, Some(&patch_bytes)));
        assert_eq!(encoded["response"]["patchType"], "JSONPatch");
        assert_eq!(
            encoded["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
    }

    #[test]
    fn a_json_patch_makes_the_response_kubes_with_patch_makes() {
        let pod: PodView =
            serde_json::from_value(pod_review()["request"]["object"].clone()).expect("a pod");
        let settings = admission().settings;
        let Decision::Inject(injection) = inject::decide(&pod, "shop", &settings) else {
            panic!("the pod is injected")
        };
        let operations = injection.patch.operations().expect("a JSON Patch");
        assert!(operations.0.len() > 2, "{operations:?}");

        let ours =
            with_json_patch(AdmissionResponse::from(&request()), injection.patch).expect("patched");
        let kubes = AdmissionResponse::from(&request())
            .with_patch(operations)
            .expect("patched");

        let patch_value = |response: &AdmissionResponse| -> Value {
            serde_json::from_slice(response.patch.as_deref().expect("a patch")).expect("JSON")
        };
        assert_eq!(patch_value(&ours), patch_value(&kubes));
        let without_patch = |mut response: AdmissionResponse| {
            response.patch = None;
            serde_json::to_value(response).expect("serializes")
        };
        assert_eq!(without_patch(ours), without_patch(kubes));
    }

    fn dry_run_review(annotation_value: &[u8]) -> Vec<u8> {
        let text = pod_review().to_string();
        let (before, after) = text.split_once("MARK").expect("marker");
        [before.as_bytes(), annotation_value, after.as_bytes()].concat()
    }

    fn admission() -> Admission {
        let settings =
            <crate::config::Config as clap::Parser>::parse_from(["pod-reloaded-webhook"])
                .injection_settings()
                .expect("default settings");
        Admission {
            settings,
            granter: None,
            metrics: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_body_that_is_not_utf8_is_refused_and_unicode_is_read() {
        let admission = admission();
        let injected = admission
            .review(&dry_run_review("Grüße, 東京".as_bytes()))
            .await
            .expect("a valid review");
        let response = injected.response.expect("a response");
        assert!(response.patch.is_some(), "{response:?}");
        assert!(parse_pod_review(&dry_run_review("Grüße".as_bytes())).is_some());

        // "café" in Latin-1: not UTF-8.
        let not_utf8 = dry_run_review(b"caf\xe9");
        let refused = admission.review(&not_utf8).await;
        assert!(parse_pod_review(&not_utf8).is_none());
        match refused {
            Err(InvalidReview::NotAReview(error)) => {
                assert!(error.to_string().contains("unicode"), "{error}")
            }
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn a_response_without_a_patch_has_no_patch_field() {
        let response = with_warnings(
            AdmissionResponse::from(&request()),
            vec!["pod-reloaded: only Pod CREATE is injected".to_string()],
        );
        let review = response.into_review();
        let encoded: Value =
            serde_json::from_slice(&encode_review(review.clone()).expect("encodes")).expect("JSON");
        assert_eq!(encoded, expected(&review, None));
        assert!(encoded["response"].get("patch").is_none());
        assert!(encoded["response"].get("patchType").is_none());
    }
}
