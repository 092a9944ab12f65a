//! Executions per principal: the per-caller share of the sandbox's admission slots.
//!
//! The sandbox admits at most `max_concurrent` executions in all; without a share per
//! caller, one key parking that many executions on slow tool calls would leave every
//! other caller with 503s. Each principal may hold at most its policies'
//! `limits.concurrent` at once (counted by user, whatever key they use); past that it
//! gets 429 while everyone else is unaffected.
//!
//! Counts live in this process, like the sandbox's own slots: a replica admits only
//! what it runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Running executions per user.
#[derive(Debug, Default)]
pub struct Running {
    counts: Mutex<HashMap<String, u32>>,
}

/// One execution counted against its user until dropped.
#[derive(Debug)]
pub struct RunningSlot {
    running: Arc<Running>,
    user: String,
}

impl Running {
    /// Counts one more execution for `user`, or `None` if they already have `limit`.
    pub fn enter(self: &Arc<Self>, user: &str, limit: u32) -> Option<RunningSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(user.to_string()).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(RunningSlot { running: self.clone(), user: user.to_string() })
    }

    /// Executions `user` has now.
    pub fn count(&self, user: &str) -> u32 {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).get(user).copied().unwrap_or(0)
    }
}

impl Drop for RunningSlot {
    fn drop(&mut self) {
        let mut counts = self.running.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_their_own_share() {
        let running = Arc::new(Running::default());
        let a = running.enter("alice", 2).unwrap();
        let _b = running.enter("alice", 2).unwrap();
        assert!(running.enter("alice", 2).is_none());
        assert!(running.enter("bob", 2).is_some());
        drop(a);
        assert_eq!(running.count("alice"), 1);
        assert!(running.enter("alice", 2).is_some());
    }
}
