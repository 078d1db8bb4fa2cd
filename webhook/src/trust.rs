//! The operator's trust policies (`--trust-policy-file`, mounted from the ConfigMap
//! `pod-reloaded-trust`), reloaded when they change (`reloaded`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use pod_reloaded_contract::trust::{TrustPolicies, MAX_POLICY_FILE_BYTES};

use crate::reloaded::{self, Reloaded};

/// The policies in force, shared by every admission.
pub type TrustStore = Reloaded<TrustPolicies>;

const WHAT: &str = "the trust policy file";

/// The policies in `path` at start: a missing file is none, an invalid one an error.
pub fn load(path: &Path) -> anyhow::Result<TrustPolicies> {
    reloaded::load(
        path,
        MAX_POLICY_FILE_BYTES,
        "--trust-policy-file",
        TrustPolicies::parse,
    )
}

pub fn watch(store: &TrustStore, path: PathBuf, every: Duration) {
    store.watch(
        path,
        every,
        MAX_POLICY_FILE_BYTES,
        WHAT,
        TrustPolicies::parse,
    );
}
