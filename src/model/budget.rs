//! Budgets: reserved before a model call (an estimate), settled after it with the
//! provider's reported usage.
//!
//! A principal's budget becomes one [`BudgetLine`] per (scope, period): a user or team
//! (when the policy pools it) and the UTC day or month, each with its USD and token
//! limits. A reservation holds the call's estimate against every line at once, in the
//! store, so concurrent calls on any number of replicas cannot together pass a budget
//! by more than their estimates' error. The hold ends with a [`Record::Release`]
//! committed with the call's own record: the spend is counted before the hold goes.
//!
//! # Leases of headroom
//!
//! Holding each call in the store makes every call on a busy budget take its turn on
//! that budget's lines, one store round trip before the call can start, and with
//! several replicas on PostgreSQL those turns queue. So a replica holds headroom for
//! [`LEASE_CALLS`] calls like the one in hand at once (a *lease*: one hold in the
//! store, checked against the limits like any other) and draws the calls that follow
//! from it in memory, with no round trip. A drawn call ends with a [`Record::Draw`]
//! committed with its record, which takes its estimate off the lease's hold in the
//! same transaction that adds its cost to the spend. So spend plus holds counts every
//! call exactly as before, and the bound is unchanged: spend passes a budget by at
//! most the error of the estimates in flight.
//!
//! What a lease costs is headroom held but not yet drawn: at most [`LEASE_CALLS`]
//! calls' estimates per budget and replica, given back once the lease is
//! [`LEASE_AGE`] old (or when a call does not fit in it). A lease is only ever
//! granted where it fits whole; where it does not (near a limit), the call is held on
//! its own, after this replica's unused headroom is given back, so a call that fits
//! the budget is never refused for this replica's lease, and the next lease asks for
//! half as many calls (a granted one doubles it back): the closer a budget is to its
//! limit, the less headroom a replica holds undrawn.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::Principal;
use crate::policy::{Budget, BudgetScope};
use crate::store::{now_ms, BudgetLine, Hold, Ledger, Record, SpendScope, Store, StoreError};

const DAY_MS: i64 = 86_400_000;

/// How long a reservation counts if it is never released (its replica died mid-call).
/// Longer than any call's timeout, so that a live call never loses its hold.
const HOLD_TTL_MS: i64 = 30 * 60 * 1000;

/// A budget that a call would pass.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{what} budget of {limit} for {scope} would be exceeded ({used} used)")]
pub struct Exceeded {
    pub what: &'static str,
    pub limit: String,
    pub used: String,
    pub scope: String,
}

/// How many calls like the one in hand a lease holds headroom for.
pub const LEASE_CALLS: i64 = 16;

/// A lease draws no new calls after this long; its unused rest is then given back.
pub const LEASE_AGE: Duration = Duration::from_secs(5);

/// Amounts held for one call until it settles. Dropping it unsettled releases them.
#[derive(Debug)]
pub struct Reservation {
    ledger: Ledger,
    /// The call's own hold, or the lease it was drawn from.
    id: String,
    nanos: i64,
    tokens: u64,
    /// Drawn from a lease (ends with a draw off it, not a release).
    drawn: bool,
    released: bool,
}

impl Reservation {
    /// The amounts held: nano-dollars and tokens.
    pub fn amount(&self) -> (i64, u64) {
        (self.nanos, self.tokens)
    }

    /// Ends the hold: the record to commit with (after) the call's own record, whose
    /// cost replaces the estimate. `None` when nothing was held (no budget applies).
    pub fn settle(mut self) -> Option<Record> {
        let held = !self.released;
        self.released = true;
        held.then(|| self.end())
    }

    fn end(&mut self) -> Record {
        let id = std::mem::take(&mut self.id);
        if self.drawn {
            Record::Draw { hold: id, nanos: self.nanos, tokens: self.tokens }
        } else {
            Record::Release(id)
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.released {
            let end = self.end();
            self.ledger.record_detached(vec![end]);
        }
    }
}

/// Headroom held in the store for calls this replica will draw (see the module docs).
#[derive(Debug)]
struct Lease {
    /// Its hold's id.
    id: String,
    granted: (i64, u64),
    drawn: (i64, u64),
    taken_at: Instant,
}

impl Lease {
    /// Draws `nanos` and `tokens`, when the lease is young enough and they fit.
    fn draw(&mut self, nanos: i64, tokens: u64, now: Instant) -> bool {
        let fits = now.duration_since(self.taken_at) < LEASE_AGE
            && self.drawn.0.saturating_add(nanos) <= self.granted.0
            && self.drawn.1.saturating_add(tokens) <= self.granted.1;
        if fits {
            self.drawn = (self.drawn.0 + nanos, self.drawn.1 + tokens);
        }
        fits
    }

    /// What gives the unused rest back, if anything is left.
    fn rest(&self) -> Option<Record> {
        let (nanos, tokens) = (self.granted.0 - self.drawn.0, self.granted.1 - self.drawn.1);
        (nanos > 0 || tokens > 0).then(|| Record::Draw { hold: self.id.clone(), nanos, tokens })
    }
}

/// This replica's leases, by the budget lines they hold against.
#[derive(Debug, Default)]
struct Leases {
    live: HashMap<String, Lease>,
    /// Lines a lease is being asked for, and how the calls that wait for it learn
    /// that it came (or did not).
    asking: HashMap<String, Arc<tokio::sync::Notify>>,
    /// How many calls the next lease on these lines asks for, when not
    /// [`LEASE_CALLS`], and when that was last decided: a lease refused (the budget
    /// has less left than it) halves the next one, down to calls held one by one; a
    /// lease granted doubles it back.
    sizes: HashMap<String, (i64, Instant)>,
}

impl Leases {
    fn size(&self, key: &str) -> i64 {
        self.sizes.get(key).map_or(LEASE_CALLS, |(size, _)| *size)
    }

    fn resize(&mut self, key: &str, size: i64) {
        let size = size.clamp(1, LEASE_CALLS);
        if size == LEASE_CALLS {
            self.sizes.remove(key);
        } else {
            self.sizes.insert(key.to_string(), (size, Instant::now()));
        }
    }
}

/// What a call that could not draw from a lease does next.
enum Next {
    /// Waits for the lease another call is asking for.
    Wait(tokio::sync::futures::OwnedNotified),
    /// Asks for a lease of this many calls.
    Ask(i64),
    /// Is held on its own.
    Own,
}

/// A lease being asked for on one budget's lines. However the asking ends (answered,
/// failed, or the call dropped while it waited), the calls waiting for it are woken.
struct Asking<'a> {
    budgets: &'a Budgets,
    key: &'a str,
}

impl<'a> Asking<'a> {
    /// The answer came: the waiting calls are woken once the lock they wake to (kept
    /// here, for the new lease to go in first) is released.
    fn answered(self) -> std::sync::MutexGuard<'a, Leases> {
        let mut leases = self.budgets.leases();
        if let Some(asked) = leases.asking.remove(self.key) {
            asked.notify_waiters();
        }
        std::mem::forget(self);
        leases
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if let Some(asked) = self.budgets.leases().asking.remove(self.key) {
            asked.notify_waiters();
        }
    }
}

/// Budgets, kept in the store.
#[derive(Debug)]
pub struct Budgets {
    ledger: Ledger,
    leases: Mutex<Leases>,
}

impl Drop for Budgets {
    fn drop(&mut self) {
        self.give_back(|_| true);
    }
}

fn scope_of(principal: &Principal, scope: BudgetScope) -> SpendScope {
    match scope {
        BudgetScope::User => SpendScope::User(principal.user.clone()),
        BudgetScope::Team => SpendScope::Team(principal.team.clone()),
    }
}

/// Start of the current UTC month, in Unix milliseconds.
fn month_start_ms(now_ms: i64) -> i64 {
    // Civil-from-days (Howard Hinnant), then back to the first of the month.
    let days = now_ms.div_euclid(DAY_MS);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day_of_month = doy - (153 * mp + 2) / 5; // zero-based
    (days - day_of_month) * DAY_MS
}

/// The lines of `budget` for `principal` now, with the name of each line's period
/// (`daily` or `monthly`).
pub fn lines(principal: &Principal, budget: &Budget) -> Vec<(&'static str, BudgetLine)> {
    let now = now_ms();
    let (day, month) = (now - now.rem_euclid(DAY_MS), month_start_ms(now));
    let mut lines: Vec<(&'static str, BudgetLine)> = Vec::new();
    let mut add = |period: &'static str, scope: BudgetScope, since_ms: i64, usd: Option<f64>, tokens: Option<u64>| {
        let scope = scope_of(principal, scope);
        let line = match lines.iter_mut().find(|(_, l)| l.scope == scope && l.since_ms == since_ms) {
            Some((_, line)) => line,
            None => {
                lines.push((period, BudgetLine { scope, since_ms, limit_nanos: None, limit_tokens: None }));
                &mut lines.last_mut().expect("just pushed").1
            }
        };
        if let Some(usd) = usd {
            line.limit_nanos = Some((usd * 1e9).round() as i64);
        }
        if let Some(tokens) = tokens {
            line.limit_tokens = Some(tokens);
        }
    };
    if let Some(b) = &budget.usd_per_day {
        add("daily", b.scope, day, Some(b.value), None);
    }
    if let Some(b) = &budget.usd_per_month {
        add("monthly", b.scope, month, Some(b.value), None);
    }
    if let Some(b) = &budget.tokens_per_day {
        add("daily", b.scope, day, None, Some(b.value));
    }
    if let Some(b) = &budget.tokens_per_month {
        add("monthly", b.scope, month, None, Some(b.value));
    }
    lines
}

impl Budgets {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger, leases: Mutex::default() }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives back the unused rest of every lease `which` picks.
    fn give_back(&self, which: impl Fn(&Lease) -> bool) {
        let rests: Vec<Record> = {
            let mut leases = self.leases();
            let ended: Vec<String> = leases.live.iter().filter(|(_, l)| which(l)).map(|(k, _)| k.clone()).collect();
            ended.iter().filter_map(|key| leases.live.remove(key)).filter_map(|lease| lease.rest()).collect()
        };
        if !rests.is_empty() {
            self.ledger.record_detached(rests);
        }
    }

    /// Gives back what every lease holds unused (at shutdown, after the last call).
    pub fn give_back_leases(&self) {
        self.give_back(|_| true);
    }

    /// Gives back what leases `LEASE_AGE` old hold unused: called every few seconds,
    /// so that headroom a replica stopped drawing from returns to the budget.
    pub fn give_back_old_leases(&self) {
        let now = Instant::now();
        self.give_back(|lease| now.duration_since(lease.taken_at) >= LEASE_AGE);
        self.leases().sizes.retain(|_, (_, decided)| now.duration_since(*decided) < LEASE_AGE);
    }

    /// A reservation of `nanos` and `tokens` drawn from this replica's lease on
    /// `lines`, taking a new lease when the one there is used up or old (a call that
    /// finds another asking for one waits for its answer): `None` when none can be
    /// had (a whole lease would not fit), and whether unused headroom was given back
    /// on the way.
    async fn draw(&self, key: &str, hold: &Hold) -> Result<(Option<Reservation>, bool), StoreError> {
        let drawn = |id: &str| Reservation {
            ledger: self.ledger.clone(),
            id: id.to_string(),
            nanos: hold.nanos,
            tokens: hold.tokens,
            drawn: true,
            released: false,
        };
        let mut gave_back = false;
        loop {
            let (rest, next) = {
                let mut leases = self.leases();
                if let Some(lease) = leases.live.get_mut(key) {
                    if lease.draw(hold.nanos, hold.tokens, Instant::now()) {
                        return Ok((Some(drawn(&lease.id)), gave_back));
                    }
                }
                let rest = leases.live.remove(key).and_then(|lease| lease.rest());
                let size = leases.size(key);
                let next = match leases.asking.get(key) {
                    // Registered before the lock goes, so the answer cannot be missed.
                    Some(asked) => Next::Wait(asked.clone().notified_owned()),
                    None if size < 2 => Next::Own,
                    None => {
                        leases.asking.insert(key.to_string(), Arc::default());
                        Next::Ask(size)
                    }
                };
                (rest, next)
            };
            if let Some(rest) = rest {
                gave_back = true;
                self.ledger.record_detached(vec![rest]);
            }
            let size = match next {
                Next::Own => return Ok((None, gave_back)),
                Next::Wait(answer) => {
                    // Then draws from the lease that came, or asks for a smaller one
                    // (or is held on its own) if it was refused.
                    answer.await;
                    continue;
                }
                Next::Ask(size) => size,
            };
            let lease = Hold {
                id: uuid::Uuid::now_v7().to_string(),
                lines: hold.lines.clone(),
                nanos: hold.nanos.saturating_mul(size),
                tokens: hold.tokens.saturating_mul(size as u64),
                expires_at_ms: hold.expires_at_ms,
            };
            let asking = Asking { budgets: self, key };
            let over = self.store().reserve(&lease).await;
            let mut leases = asking.answered();
            if over?.is_some() {
                // Refused: the budget has less left than the lease asked for.
                leases.resize(key, size / 2);
                return Ok((None, gave_back));
            }
            leases.resize(key, size * 2);
            leases.live.insert(
                key.to_string(),
                Lease {
                    id: lease.id.clone(),
                    granted: (lease.nanos, lease.tokens),
                    drawn: (hold.nanos, hold.tokens),
                    taken_at: Instant::now(),
                },
            );
            return Ok((Some(drawn(&lease.id)), gave_back));
        }
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.ledger.store()
    }

    /// Holds `nanos` and `tokens` against every budget the principal has, or says
    /// which one the call would pass.
    pub async fn reserve(
        &self,
        principal: &Principal,
        budget: &Budget,
        nanos: i64,
        tokens: u64,
    ) -> Result<Result<Reservation, Exceeded>, StoreError> {
        let named = lines(principal, budget);
        let hold = Hold {
            id: uuid::Uuid::now_v7().to_string(),
            lines: named.iter().map(|(_, line)| line.clone()).collect(),
            nanos,
            tokens,
            expires_at_ms: now_ms() + HOLD_TTL_MS,
        };
        let own = |id: String, released: bool| Reservation {
            ledger: self.ledger.clone(),
            id,
            nanos,
            tokens,
            drawn: false,
            released,
        };
        if hold.lines.is_empty() {
            return Ok(Ok(own(hold.id, true)));
        }
        let key = format!("{:?}", hold.lines);
        let mut again = false;
        let over = loop {
            let (drawn, gave_back) = self.draw(&key, &hold).await?;
            if let Some(reservation) = drawn {
                return Ok(Ok(reservation));
            }
            // Held on its own, against the budget as it is without this replica's
            // unused headroom: what was given back is counted as given before the check.
            if gave_back {
                self.ledger.flush().await?;
            }
            match self.store().reserve(&hold).await? {
                None => {
                    // It fitted: the next call may try a small lease again.
                    let mut leases = self.leases();
                    if leases.size(&key) < 2 {
                        leases.resize(&key, 2);
                    }
                    return Ok(Ok(own(hold.id, false)));
                }
                Some(over) if again => break over,
                Some(_) => {
                    // The budget is full as the store sees it: no more leases for
                    // now. Headroom this replica leased meanwhile, or gave back and
                    // that is still on its way to the store, may be what filled it:
                    // once the way is clear, the call draws from that lease or is
                    // checked again.
                    self.leases().resize(&key, 1);
                    self.ledger.flush().await?;
                    again = true;
                }
            }
        };
        let (period, line) = &named[over.line];
        let (what, limit, used) = if over.tokens {
            let limit = line.limit_tokens.unwrap_or_default();
            (
                if *period == "daily" { "daily token" } else { "monthly token" },
                format!("{limit} tokens"),
                format!("{} tokens", over.balance.used_tokens),
            )
        } else {
            let limit = line.limit_nanos.unwrap_or_default() as f64 / 1e9;
            (
                if *period == "daily" { "daily USD" } else { "monthly USD" },
                format!("${limit:.2}"),
                format!("${:.4}", over.balance.used_nanos as f64 / 1e9),
            )
        };
        Ok(Err(Exceeded { what, limit, used, scope: line.scope.to_string() }))
    }

    /// The least USD left across the principal's USD budgets; `None` without any.
    pub async fn remaining_usd(&self, principal: &Principal, budget: &Budget) -> Result<Option<f64>, StoreError> {
        let lines: Vec<BudgetLine> =
            lines(principal, budget).into_iter().map(|(_, line)| line).filter(|l| l.limit_nanos.is_some()).collect();
        if lines.is_empty() {
            return Ok(None);
        }
        let balances = self.store().balances(&lines).await?;
        Ok(lines
            .iter()
            .zip(balances)
            .filter_map(|(line, balance)| line.limit_nanos.map(|limit| (limit - balance.used_nanos) as f64 / 1e9))
            .reduce(f64::min))
    }
}

/// The output tokens of each model's recent calls, for the estimate a streamed call
/// holds: the 95th percentile of the last `KEPT` calls, once there
/// are `ENOUGH` of them. Per replica, in memory: a restart starts
/// again from `router.reserve_output_tokens`.
#[derive(Debug, Default)]
pub struct OutputHistory {
    models: std::sync::Mutex<std::collections::HashMap<String, std::collections::VecDeque<u64>>>,
}

impl OutputHistory {
    const KEPT: usize = 256;
    const ENOUGH: usize = 16;

    /// Notes a finished call's output tokens.
    pub fn add(&self, model: &str, output: u64) {
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let recent = models.entry(model.to_string()).or_default();
        if recent.len() == Self::KEPT {
            recent.pop_front();
        }
        recent.push_back(output);
    }

    /// The 95th percentile of the model's recent outputs, when it has enough.
    pub fn p95(&self, model: &str) -> Option<u64> {
        let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let recent = models.get(model).filter(|r| r.len() >= Self::ENOUGH)?;
        let mut sorted: Vec<u64> = recent.iter().copied().collect();
        sorted.sort_unstable();
        Some(sorted[(sorted.len() * 95).div_ceil(100) - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::policy::{Bounded, RuleRef};
    use crate::store::sqlite::{SqliteStore, Synchronous};
    use crate::store::ModelCallRecord;

    /// Budgets over a fresh SQLite store, a team budget of `tokens` a day, and a member.
    fn setup(tokens: u64) -> (Budgets, Budget, Principal, tempfile_dir::Dir) {
        let dir = tempfile_dir::Dir::new();
        let store = SqliteStore::open(&dir.0.join("ledger.db"), Synchronous::Normal).unwrap();
        let ledger = Ledger::start(Arc::new(store));
        let rule = RuleRef { file: "p.toml".into(), line: 1, policy: "p".into(), detail: "budget".into() };
        let budget = Budget {
            tokens_per_day: Some(Bounded { value: tokens, scope: BudgetScope::Team, rule }),
            ..Budget::default()
        };
        (Budgets::new(ledger), budget, Principal::of_key("k", "ann", "core", Role::Member), dir)
    }

    mod tempfile_dir {
        /// A scratch directory, removed when dropped.
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let path = std::env::temp_dir().join(format!("sandgate-budget-{}", uuid::Uuid::now_v7()));
                std::fs::create_dir_all(&path).unwrap();
                Self(path)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    /// What the store counts against the team's daily line: spend plus holds.
    async fn used(budgets: &Budgets, principal: &Principal, budget: &Budget) -> u64 {
        budgets.ledger.flush().await.unwrap();
        let lines: Vec<BudgetLine> = lines(principal, budget).into_iter().map(|(_, line)| line).collect();
        budgets.store().balances(&lines).await.unwrap()[0].used_tokens
    }

    /// The record of a call that spent `tokens`.
    fn spent(principal: &Principal, tokens: u64) -> Record {
        Record::Model(ModelCallRecord {
            execution_id: None,
            user: principal.user.clone(),
            team: principal.team.clone(),
            key: principal.key.clone(),
            model: "m".into(),
            tier: "t".into(),
            provider: "p".into(),
            input_tokens: tokens,
            output_tokens: 0,
            cached_tokens: 0,
            cost_usd: 0.0,
            started_at_ms: now_ms(),
            latency_ms: 1,
            status: "ok".into(),
            fallback_chain: Vec::new(),
            tags: serde_json::Value::Null,
            agent_session: None,
        })
    }

    #[tokio::test]
    async fn calls_draw_from_a_lease_and_the_store_counts_each_call_once() {
        let (budgets, budget, ann, _dir) = setup(1_000_000);
        let first = budgets.reserve(&ann, &budget, 0, 100).await.unwrap().unwrap();
        // The first call leased headroom for LEASE_CALLS like it: the store holds it all.
        assert_eq!(used(&budgets, &ann, &budget).await, 100 * LEASE_CALLS as u64);
        let mut drawn = vec![first];
        for _ in 1..LEASE_CALLS {
            drawn.push(budgets.reserve(&ann, &budget, 0, 100).await.unwrap().unwrap());
        }
        assert_eq!(used(&budgets, &ann, &budget).await, 1_600, "the next calls drew from it, holding no more");
        // Each call settles with its cost (here 60 of its 100): the draw and the spend
        // land together, so spend plus holds is the unused rest plus what was spent.
        for reservation in drawn.drain(..4) {
            let end = reservation.settle().unwrap();
            assert!(matches!(end, Record::Draw { nanos: 0, tokens: 100, .. }), "{end:?}");
            budgets.ledger.record(vec![spent(&ann, 60), end]).await.unwrap();
        }
        assert_eq!(used(&budgets, &ann, &budget).await, 1_600 - 4 * 40);
        // The lease is used up: the next call takes a new one, and the old lease's hold
        // stays as long as calls drawn from it are in flight.
        let next = budgets.reserve(&ann, &budget, 0, 100).await.unwrap().unwrap();
        assert_eq!(used(&budgets, &ann, &budget).await, 1_600 - 160 + 1_600);
        for reservation in drawn {
            let end = reservation.settle().unwrap();
            budgets.ledger.record(vec![spent(&ann, 60), end]).await.unwrap();
        }
        assert_eq!(used(&budgets, &ann, &budget).await, 16 * 60 + 1_600, "the first lease's hold is gone");
        // A call dropped unsettled ends its draw too; at shutdown the rest goes back.
        drop(next);
        budgets.give_back_leases();
        assert_eq!(used(&budgets, &ann, &budget).await, 16 * 60, "nothing is held any more");
    }

    #[tokio::test]
    async fn near_the_limit_a_call_that_fits_is_never_refused_for_the_lease() {
        // 1,000 tokens: a lease of 16 calls of 100 does not fit, so calls are held on
        // their own, and exactly ten fit.
        let (budgets, budget, ann, _dir) = setup(1_000);
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(budgets.reserve(&ann, &budget, 0, 100).await.unwrap().expect("fits"));
        }
        let refused = budgets.reserve(&ann, &budget, 0, 100).await.unwrap().unwrap_err();
        assert_eq!(refused.what, "daily token");
        drop(held);
        // 4,000 tokens: the first call leases 1,600; once the budget has less left than
        // a lease, calls go on one by one, after the unused rest is given back, until
        // the budget is spent to the token.
        let (budgets, budget, ann, _dir) = setup(4_000);
        let mut total = 0;
        while let Ok(reservation) = budgets.reserve(&ann, &budget, 0, 100).await.unwrap() {
            let end = reservation.settle().unwrap();
            budgets.ledger.record(vec![spent(&ann, 100), end]).await.unwrap();
            total += 100;
            assert!(total <= 4_000, "passed the budget: {total}");
        }
        assert_eq!(total, 4_000, "every call that fitted was answered");
        assert_eq!(used(&budgets, &ann, &budget).await, 4_000);
        // 1,700 tokens: a lease of 1,600, 15 calls drawn from it; a call of 200 does
        // not fit its rest of 100, nor does a new lease; it is held on its own against
        // the budget without that rest (1,500 + 200), not refused (1,500 + 100 + 200).
        let (budgets, budget, ann, _dir) = setup(1_700);
        let mut held = Vec::new();
        for _ in 0..15 {
            held.push(budgets.reserve(&ann, &budget, 0, 100).await.unwrap().expect("fits"));
        }
        held.push(budgets.reserve(&ann, &budget, 0, 200).await.unwrap().expect("fits without the rest"));
        assert_eq!(used(&budgets, &ann, &budget).await, 1_700);
        assert!(budgets.reserve(&ann, &budget, 0, 1).await.unwrap().is_err(), "nothing is left");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_that_arrive_together_wait_for_one_lease() {
        let (budgets, budget, ann, _dir) = setup(1_000_000);
        let budgets = Arc::new(budgets);
        let calls: Vec<_> = (0..LEASE_CALLS)
            .map(|_| {
                let (budgets, budget, ann) = (budgets.clone(), budget.clone(), ann.clone());
                tokio::spawn(async move { budgets.reserve(&ann, &budget, 0, 100).await.unwrap().unwrap() })
            })
            .collect();
        let held = futures::future::join_all(calls).await;
        assert_eq!(used(&budgets, &ann, &budget).await, 1_600, "one lease, every call drawn from it");
        let leases: std::collections::HashSet<String> =
            held.into_iter().map(|call| call.unwrap().settle().unwrap()).map(|end| format!("{end:?}")).collect();
        assert_eq!(leases.len(), 1, "{leases:?}");
    }

    #[tokio::test]
    async fn a_call_dropped_while_it_asks_for_a_lease_leaves_none_waiting() {
        let (budgets, budget, ann, _dir) = setup(1_000_000);
        let key = format!("{:?}", lines(&ann, &budget).into_iter().map(|(_, line)| line).collect::<Vec<_>>());
        // One call is asking for a lease (as a call whose client went away mid-ask
        // would have been); another arrives and waits for the answer.
        budgets.leases().asking.insert(key.clone(), Arc::default());
        let asking = Asking { budgets: &budgets, key: &key };
        let waiting = tokio::time::timeout(Duration::from_secs(10), budgets.reserve(&ann, &budget, 0, 100));
        let (waited, ()) = tokio::join!(waiting, async {
            tokio::task::yield_now().await;
            // The asking call is dropped before its answer came.
            drop(asking);
        });
        assert!(waited.expect("the waiting call is not stuck").unwrap().is_ok());
        assert!(budgets.leases().asking.is_empty());
    }

    #[tokio::test]
    async fn an_old_lease_gives_its_rest_back() {
        let (budgets, budget, ann, _dir) = setup(1_000_000);
        let call = budgets.reserve(&ann, &budget, 0, 100).await.unwrap().unwrap();
        budgets.give_back_old_leases();
        assert_eq!(used(&budgets, &ann, &budget).await, 1_600, "young: kept");
        budgets.leases().live.values_mut().for_each(|lease| lease.taken_at -= LEASE_AGE);
        budgets.give_back_old_leases();
        assert_eq!(used(&budgets, &ann, &budget).await, 100, "old: only the call in flight is held");
        let end = call.settle().unwrap();
        budgets.ledger.record(vec![spent(&ann, 100), end]).await.unwrap();
        assert_eq!(used(&budgets, &ann, &budget).await, 100);
        assert!(budgets.leases().live.is_empty());
    }

    #[test]
    fn the_estimate_is_a_high_percentile_of_recent_outputs() {
        let history = OutputHistory::default();
        for output in 1..=15 {
            history.add("m", output);
        }
        assert_eq!(history.p95("m"), None, "too few calls to say");
        history.add("m", 16);
        assert_eq!(history.p95("m"), Some(16));
        for output in 1..=100 {
            history.add("m", output * 10);
        }
        // 116 calls: 1..=16, then 10..=1000 by 10; the 95th percentile is the 111th.
        assert_eq!(history.p95("m"), Some(950));
        for _ in 0..300 {
            history.add("m", 7);
        }
        assert_eq!(history.p95("m"), Some(7), "old calls age out");
        assert_eq!(history.p95("other"), None);
    }

    #[test]
    fn month_starts_are_utc_calendar_months() {
        // 2026-11-25T10:00:00Z -> 2026-11-01T00:00:00Z
        assert_eq!(month_start_ms(1_795_600_800_000), 1_793_491_200_000);
        // 2024-02-29 -> 2024-02-01
        assert_eq!(month_start_ms(1_709_164_800_000), 1_706_745_600_000);
        assert_eq!(month_start_ms(0), 0);
    }
}
