//! A file the operator mounts from a ConfigMap and changes while the webhook runs (the
//! trust policies, the notification config): read at start, where an invalid file stops
//! the webhook, and re-read every interval, where an invalid file keeps the last good
//! content, said in one line per content. A missing file is the empty default (the
//! ConfigMaps are optional).

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tracing::{info, warn};

/// The content in force, shared by every reader.
#[derive(Debug, Default)]
pub struct Reloaded<T> {
    current: Arc<RwLock<Arc<T>>>,
}

impl<T> Clone for Reloaded<T> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> Reloaded<T> {
    pub fn new(value: T) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(value))),
        }
    }

    pub fn current(&self) -> Arc<T> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, value: T) {
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(value),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(value),
        }
    }

    /// Re-reads `path` every `every` and takes what changed and parses; `what` names the
    /// file in the log (`the trust policy file`).
    pub fn watch<E: Display + 'static>(
        &self,
        path: PathBuf,
        every: Duration,
        max_bytes: usize,
        what: &'static str,
        parse: fn(&str) -> Result<T, E>,
    ) {
        let store = self.clone();
        tokio::spawn(async move {
            let mut last_text = read(&path, max_bytes).ok();
            loop {
                tokio::time::sleep(every).await;
                let text = match read(&path, max_bytes) {
                    Ok(text) => text,
                    Err(error) => {
                        if last_text.is_some() {
                            warn!(file = %path.display(), error = format!("{error:#}"), "cannot read {what}; keeping the last good one");
                        }
                        last_text = None;
                        continue;
                    }
                };
                if last_text.as_deref() == Some(text.as_str()) {
                    continue;
                }
                match parse(&text) {
                    Ok(value) => {
                        info!(file = %path.display(), "{what} reloaded");
                        store.replace(value);
                    }
                    Err(error) => {
                        warn!(file = %path.display(), %error, "{what} is invalid; keeping the last good one");
                    }
                }
                last_text = Some(text);
            }
        });
    }
}

/// The content of `path` at start: a missing file is the default, an invalid one an
/// error naming `flag`.
pub fn load<T: Default, E: Display>(
    path: &Path,
    max_bytes: usize,
    flag: &str,
    parse: fn(&str) -> Result<T, E>,
) -> anyhow::Result<T> {
    if !path.exists() {
        info!(file = %path.display(), "{flag}: no such file (its ConfigMap is optional): empty");
        return Ok(T::default());
    }
    let text = read(path, max_bytes)?;
    parse(&text).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))
}

fn read(path: &Path, max_bytes: usize) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() <= max_bytes,
        "{} is larger than {max_bytes} bytes",
        path.display()
    );
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))
}
