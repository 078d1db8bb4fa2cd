//! Test harness for pod-reloaded's end-to-end tests: the real binaries, a real OCI
//! registry, real TLS, and real Kubernetes: the whole control plane (`cluster`), or one
//! kube-apiserver per test behind a recording proxy (`api_server`).

pub mod api_server;
pub mod cloud_fakes;
pub mod cluster;
pub mod fault_proxy;
pub mod hostile;
pub mod pki;
pub mod process;
pub mod receiver;
pub mod registry;
pub mod sigstore;
pub mod webhook;

use std::path::PathBuf;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}
pub mod workloads;
pub mod world;
