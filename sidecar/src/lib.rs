//! pod-reloaded's checker sidecar.
//!
//! `image` reads references and running digests, `registry` speaks the distribution
//! protocol, `compare` decides whether a digest changed, `restart` whether to restart,
//! `cluster` talks to the Kubernetes API, `checker` runs the rounds.

pub mod checker;
pub mod cluster;
pub mod compare;
pub mod config;
pub mod credentials;
pub mod image;
pub mod metrics;
pub mod registry;
pub mod restart;
