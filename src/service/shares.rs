//! Shares: how much of something one caller may hold at once, counted in this
//! process, so that no caller can take all of it from the rest.
//!
//! - Executions per user: the sandbox admits at most `max_concurrent` executions in
//!   all; without a share per caller, one key parking that many executions on slow
//!   tool calls would leave every other caller with 503s. Each user may hold at most
//!   their policies' `limits.concurrent` at once (whatever key they use); past that
//!   they get 429 while everyone else is unaffected.
//! - Session file transfers per principal ([`MAX_TRANSFERS`]): each holds a chunk of
//!   its file in memory, so their number bounds what one caller makes the server hold.
//! - MCP `subscriptions/listen` streams per principal ([`MAX_LISTENERS`]).
//! - The console's live streams per principal (in `console::pulse`).
//!
//! Counts live in this process, like the sandbox's own slots: a replica admits only
//! what it runs.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Uploads and downloads one principal may have in flight at once.
pub const MAX_TRANSFERS: u32 = 4;

/// MCP `subscriptions/listen` streams one principal may hold open at once.
pub const MAX_LISTENERS: u32 = 8;

/// What each key holds now.
#[derive(Debug)]
pub struct Shares<K: Hash + Eq + Clone> {
    counts: Mutex<HashMap<K, u32>>,
}

impl<K: Hash + Eq + Clone> Default for Shares<K> {
    fn default() -> Self {
        Self { counts: Mutex::new(HashMap::new()) }
    }
}

/// One unit counted against its key until dropped.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq + Clone> {
    shares: Arc<Shares<K>>,
    key: K,
}

/// A principal as a share's key: user, team and key, the whole principal.
pub type PrincipalKey = (String, String, String);

/// The key of `principal`'s share.
pub fn principal_key(principal: &crate::auth::Principal) -> PrincipalKey {
    (principal.user.clone(), principal.team.clone(), principal.key.clone())
}

impl<K: Hash + Eq + Clone> Shares<K> {
    /// Counts one more for `key`, or `None` if it already holds `limit`.
    pub fn enter(self: &Arc<Self>, key: K, limit: u32) -> Option<Slot<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Slot { shares: self.clone(), key })
    }

    /// What `key` holds now.
    pub fn count(&self, key: &K) -> u32 {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = self.shares.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_has_its_own_share() {
        let running = Arc::new(Shares::<String>::default());
        let a = running.enter("alice".into(), 2).unwrap();
        let _b = running.enter("alice".into(), 2).unwrap();
        assert!(running.enter("alice".into(), 2).is_none());
        assert!(running.enter("bob".into(), 2).is_some());
        drop(a);
        assert_eq!(running.count(&"alice".to_string()), 1);
        assert!(running.enter("alice".into(), 2).is_some());
        assert!(running.counts.lock().unwrap().values().all(|n| *n <= 1), "a key with nothing is forgotten");
    }

    #[test]
    fn a_principal_is_its_user_team_and_key() {
        let transfers = Arc::new(Shares::<PrincipalKey>::default());
        let alice = crate::auth::Principal { user: "alice".into(), ..crate::auth::Principal::local() };
        let other_key = crate::auth::Principal { key: "k2".into(), ..alice.clone() };
        let held: Vec<_> =
            (0..MAX_TRANSFERS).map(|_| transfers.enter(principal_key(&alice), MAX_TRANSFERS).unwrap()).collect();
        assert!(transfers.enter(principal_key(&alice), MAX_TRANSFERS).is_none());
        assert!(
            transfers.enter(principal_key(&other_key), MAX_TRANSFERS).is_some(),
            "another key is another principal"
        );
        drop(held);
        assert!(transfers.enter(principal_key(&alice), MAX_TRANSFERS).is_some());
    }
}
