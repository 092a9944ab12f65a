//! The overview's live figures (executions per minute over the last hour, outcomes,
//! wall-time percentiles), computed once per tick for each scope and shared by every
//! page and stream of that scope.
//!
//! A scope is what a viewer may see: everyone's executions for an admin, their own
//! for anyone else. However many browsers watch a scope, the store is asked at most
//! once per [`TICK`] for it; the counts are grouped in the store, minute by minute,
//! and a minute that is over is kept and never counted again. A principal may hold
//! [`MAX_STREAMS`] live streams at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::auth::{Principal, Role};
use crate::service::shares::{principal_key, PrincipalKey, Shares, Slot};
use crate::service::{Service, ServiceError, MAX_LISTED};
use crate::store::{now_ms, ExecutionQuery};

/// How often the figures are computed again while someone watches.
pub const TICK: Duration = Duration::from_secs(2);
/// Live streams (`/ui/events`) one principal may hold at once.
pub const MAX_STREAMS: u32 = 4;

const MINUTE_MS: i64 = 60_000;
/// Minutes recounted at every tick: executions are recorded when they end, so the
/// last minutes can still grow.
const OPEN_MINUTES: i64 = 2;

/// What the overview shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Pulse {
    pub executions: u64,
    pub errors: u64,
    /// Wall time of the last 60 minutes' latest [`MAX_LISTED`] executions.
    pub p50_ms: i64,
    pub p99_ms: i64,
    /// Executions per minute, oldest first, the last 60 minutes.
    pub per_minute: Vec<u64>,
    /// Outcome kinds and their counts, most first.
    pub outcomes: Vec<(String, u64)>,
    pub at: String,
}

/// Whose executions a viewer sees.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Scope {
    Everyone,
    User(String),
}

impl Scope {
    fn of(viewer: &Principal) -> Self {
        if viewer.role == Role::Admin {
            Self::Everyone
        } else {
            Self::User(viewer.user.clone())
        }
    }
}

/// One scope's figures: the minutes counted so far and the latest pulse.
#[derive(Default)]
struct Figures {
    /// Outcome counts per minute start, for minutes that are over.
    closed: BTreeMap<i64, BTreeMap<String, u64>>,
    latest: Option<(Instant, Arc<Pulse>)>,
}

/// Figures per scope, and live streams per principal.
#[derive(Default)]
pub struct Pulses {
    scopes: Mutex<HashMap<Scope, Arc<tokio::sync::Mutex<Figures>>>>,
    streams: Arc<Shares<PrincipalKey>>,
}

impl std::fmt::Debug for Pulses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pulses").finish_non_exhaustive()
    }
}

/// A live stream held open; it ends when this is dropped.
pub type Stream = Slot<PrincipalKey>;

impl Pulses {
    /// A place for one more live stream of `viewer`, or `None` past [`MAX_STREAMS`].
    pub fn stream(&self, viewer: &Principal) -> Option<Stream> {
        self.streams.enter(principal_key(viewer), MAX_STREAMS)
    }

    /// The figures `viewer` may see, at most [`TICK`] old: computed now only if no
    /// one of the same scope asked within the tick (others of the scope wait for that
    /// one computation and share it).
    pub async fn pulse(&self, service: &Service, viewer: &Principal) -> Result<Arc<Pulse>, ServiceError> {
        let scope = Scope::of(viewer);
        let figures = self.scopes.lock().unwrap_or_else(|e| e.into_inner()).entry(scope).or_default().clone();
        let mut figures = figures.lock().await;
        if let Some((at, pulse)) = &figures.latest {
            if at.elapsed() < TICK {
                return Ok(pulse.clone());
            }
        }
        let pulse = Arc::new(compute(service, viewer, &mut figures).await?);
        figures.latest = Some((Instant::now(), pulse.clone()));
        Ok(pulse)
    }
}

async fn compute(service: &Service, viewer: &Principal, figures: &mut Figures) -> Result<Pulse, ServiceError> {
    let now = now_ms();
    let this_minute = now - now.rem_euclid(MINUTE_MS);
    let first = this_minute - 59 * MINUTE_MS;
    let open_from = this_minute - (OPEN_MINUTES - 1) * MINUTE_MS;
    figures.closed.retain(|minute, _| *minute >= first);
    // Count only the minutes not kept yet; the window's percentiles always need the
    // whole hour, but the store computes them over a bounded sample.
    let count_from = (first..open_from)
        .step_by(MINUTE_MS as usize)
        .find(|minute| !figures.closed.contains_key(minute))
        .unwrap_or(open_from);
    let query = ExecutionQuery {
        since_ms: Some(count_from),
        until_ms: Some(now + 1),
        limit: MAX_LISTED,
        ..ExecutionQuery::default()
    };
    let counted = service.pulse(viewer, query.clone()).await?;
    let walls = if count_from == first {
        counted.clone()
    } else {
        let sample = ExecutionQuery { since_ms: Some(first), ..query };
        service.pulse(viewer, sample).await?
    };
    // The minutes counted again start from nothing.
    let mut open: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
    for minute in (count_from..open_from).step_by(MINUTE_MS as usize) {
        figures.closed.insert(minute, BTreeMap::new());
    }
    for (minute, outcome, count) in counted.buckets {
        let bucket = if minute < open_from {
            figures.closed.entry(minute).or_default()
        } else {
            open.entry(minute).or_default()
        };
        *bucket.entry(outcome).or_default() += count.max(0) as u64;
    }
    let mut per_minute = vec![0u64; 60];
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for (minute, counts) in figures.closed.iter().chain(open.iter()) {
        let index = ((minute - first) / MINUTE_MS).clamp(0, 59) as usize;
        for (outcome, count) in counts {
            per_minute[index] += count;
            *outcomes.entry(outcome.clone()).or_default() += count;
        }
    }
    let executions = outcomes.values().sum();
    let errors = outcomes.iter().filter(|(kind, _)| kind.as_str() != "ok").map(|(_, n)| n).sum();
    let mut outcomes: Vec<(String, u64)> = outcomes.into_iter().collect();
    outcomes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(Pulse {
        executions,
        errors,
        p50_ms: walls.p50_ms,
        p99_ms: walls.p99_ms,
        per_minute,
        outcomes,
        at: super::html::time(now),
    })
}
