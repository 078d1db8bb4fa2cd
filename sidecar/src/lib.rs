//! pod-reloaded's checker sidecar.
//!
//! A round is a chain of steps, each pure but the edges: `observe` (pod -> watched
//! containers with image and running digest) -> `registry` (the only network step) ->
//! `compare` (is it a change) -> `decide` (restart, skip or warn) -> `cluster` (the only
//! API writes). `checker` runs a round, `schedule` says when the next one comes. Image
//! references, owners and settings are the shared rules of `pod_reloaded_contract`.

pub mod checker;
pub mod cluster;
pub mod compare;
pub mod config;
pub mod decide;
pub mod effects;
pub mod metrics;
pub mod observe;
pub mod platform;
pub mod registry;
pub mod resident;
pub mod rollout;
pub mod schedule;
pub mod signature;
pub mod timing;
pub mod workload;
