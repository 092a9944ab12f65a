//! The policy set in force, replaced whole on reload.
//!
//! A reload builds a complete new [`PolicySet`] and swaps it in only if every file
//! is valid; a broken edit keeps the old set and logs why. An execution takes its
//! [`Capabilities`](crate::policy::Capabilities) when it starts, so it finishes
//! under the policy it started with.
//!
//! Reloads happen on SIGHUP and when a file in the policy directory changes (checked
//! every second by comparing names, sizes and modification times).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::config::PolicySource;
use crate::policy::{LoadContext, PolicyError, PolicySet};

/// The shipped example policies, compiled in for when no policy directory exists.
const EMBEDDED: [(&str, &str); 4] = [
    ("default.toml", include_str!("../../policies/default.toml")),
    ("local.toml", include_str!("../../policies/local.toml")),
    ("trusted.toml", include_str!("../../policies/trusted.toml")),
    ("ci.toml", include_str!("../../policies/ci.toml")),
];

/// The current policy set and where it comes from.
#[derive(Debug)]
pub struct Policies {
    current: RwLock<Arc<PolicySet>>,
    source: PolicySource,
    context: LoadContext,
}

impl Policies {
    pub fn load(source: PolicySource, context: LoadContext) -> Result<Self, PolicyError> {
        let set = read(&source, &context)?;
        Ok(Self { current: RwLock::new(Arc::new(set)), source, context })
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn source(&self) -> &PolicySource {
        &self.source
    }

    /// Reads the files again; replaces the set only if all of them are valid.
    pub fn reload(&self) -> Result<(), PolicyError> {
        match read(&self.source, &self.context) {
            Ok(set) => {
                tracing::info!(policies = set.len(), files = set.files(), "policies reloaded");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                metrics::counter!("sandgate_policy_reloads_total", "result" => "ok").increment(1);
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "policy reload failed; keeping the policies in force");
                metrics::counter!("sandgate_policy_reloads_total", "result" => "error").increment(1);
                Err(error)
            }
        }
    }

    /// Watches the policy directory and reloads when it changes. Runs until the
    /// process ends.
    pub fn watch(self: Arc<Self>) {
        let PolicySource::Dir(dir) = self.source.clone() else { return };
        tokio::spawn(async move {
            let mut seen = fingerprint(&dir);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let now = fingerprint(&dir);
                if now != seen {
                    seen = now;
                    let _ = self.reload();
                }
            }
        });
    }
}

fn read(source: &PolicySource, context: &LoadContext) -> Result<PolicySet, PolicyError> {
    match source {
        PolicySource::Dir(dir) => PolicySet::load_dir(dir, context),
        PolicySource::Embedded => PolicySet::from_files(
            EMBEDDED.iter().map(|(name, text)| (PathBuf::from("<embedded>").join(name), text.to_string())).collect(),
            context,
        ),
    }
}

fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    entries.sort();
    entries
}
