//! The operator's trust policies (`--trust-policy-file`, mounted from the ConfigMap
//! `pod-reloaded-trust`): read at start, where an invalid file stops the webhook, and
//! reloaded when it changes, like the TLS files, where an invalid file keeps the last
//! good policies, with one line saying why. A missing file means no policies (the
//! ConfigMap is optional).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use pod_reloaded_contract::trust::{TrustPolicies, MAX_POLICY_FILE_BYTES};
use tracing::{info, warn};

/// The policies in force, shared by every admission.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    current: Arc<RwLock<Arc<TrustPolicies>>>,
}

impl TrustStore {
    pub fn new(policies: TrustPolicies) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(policies))),
        }
    }

    pub fn current(&self) -> Arc<TrustPolicies> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, policies: TrustPolicies) {
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(policies),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(policies),
        }
    }

    /// Re-reads `path` every `every` and takes what changed; an invalid file is said once
    /// per content and the last good policies stay.
    pub fn watch(&self, path: PathBuf, every: Duration) {
        let store = self.clone();
        tokio::spawn(async move {
            let mut last_text = read(&path).ok();
            loop {
                tokio::time::sleep(every).await;
                let text = match read(&path) {
                    Ok(text) => text,
                    Err(error) => {
                        if last_text.is_some() {
                            warn!(file = %path.display(), error = format!("{error:#}"), "cannot read the trust policy file; keeping the last good policies");
                        }
                        last_text = None;
                        continue;
                    }
                };
                if last_text.as_deref() == Some(text.as_str()) {
                    continue;
                }
                match TrustPolicies::parse(&text) {
                    Ok(policies) => {
                        info!(file = %path.display(), policies = policies.names(), "trust policies reloaded");
                        store.replace(policies);
                    }
                    Err(error) => {
                        warn!(file = %path.display(), %error, "the trust policy file is invalid; keeping the last good policies");
                    }
                }
                last_text = Some(text);
            }
        });
    }
}

/// The policies in `path` at start: a missing file is none, an invalid one an error.
pub fn load(path: &Path) -> anyhow::Result<TrustPolicies> {
    if !path.exists() {
        info!(file = %path.display(), "no trust policy file (the ConfigMap pod-reloaded-trust is optional): no trust policies");
        return Ok(TrustPolicies::default());
    }
    let text = read(path)?;
    TrustPolicies::parse(&text).with_context(|| format!("--trust-policy-file {}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() <= MAX_POLICY_FILE_BYTES,
        "{} is larger than {MAX_POLICY_FILE_BYTES} bytes",
        path.display()
    );
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))
}
