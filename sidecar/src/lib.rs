//! pod-reloaded's checker sidecar.
//!
//! Image references, owners and settings come from `pod_reloaded_contract`; `registry` speaks the distribution
//! protocol, `compare` decides whether a digest changed, `restart` whether to restart,
//! `cluster` talks to the Kubernetes API, `checker` runs the rounds.

pub mod checker;
pub mod cluster;
pub mod compare;
pub mod config;
pub mod metrics;
pub mod platform;
pub mod registry;
pub mod restart;
