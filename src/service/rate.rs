//! Per-principal rate limits: a token bucket per (user, what), refilled continuously.
//!
//! Counters live in this process. Behind a load balancer each replica counts on its
//! own; a shared backend for them belongs with the ledger's Postgres store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by subject and action.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<(String, &'static str), Bucket>>,
}

impl RateLimiter {
    /// Takes one token for `subject` doing `what`, allowing `per_minute` on average
    /// with bursts up to `per_minute`. `Err` holds the seconds until a token is free.
    pub fn check(&self, subject: &str, what: &'static str, per_minute: u32) -> Result<(), u64> {
        if per_minute == 0 {
            return Err(60);
        }
        let capacity = per_minute as f64;
        let per_second = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry((subject.to_string(), what)).or_insert(Bucket { tokens: capacity, updated: now });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_says_when_to_retry() {
        let limiter = RateLimiter::default();
        for _ in 0..3 {
            limiter.check("alice", "executions", 3).unwrap();
        }
        let retry = limiter.check("alice", "executions", 3).unwrap_err();
        assert!((1..=20).contains(&retry), "{retry}");
        limiter.check("bob", "executions", 3).unwrap();
        limiter.check("alice", "model_calls", 3).unwrap();
    }
}
