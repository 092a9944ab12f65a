//! Budgets: reserved before a model call (an estimate), settled after it with the
//! provider's reported usage.
//!
//! A principal's budget becomes one [`BudgetLine`] per (scope, period): a user or team
//! (when the policy pools it) and the UTC day or month, each with its USD and token
//! limits. A reservation holds the call's estimate against every line at once, in the
//! store, so concurrent calls on any number of replicas cannot together pass a budget
//! by more than their estimates' error. The hold ends with a [`Record::Release`]
//! committed with the call's own record: the spend is counted before the hold goes.

use std::sync::Arc;

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

/// Amounts held for one call until it settles. Dropping it unsettled releases them.
#[derive(Debug)]
pub struct Reservation {
    ledger: Ledger,
    id: String,
    nanos: i64,
    tokens: u64,
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
        held.then(|| Record::Release(std::mem::take(&mut self.id)))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.released {
            self.ledger.record_detached(vec![Record::Release(std::mem::take(&mut self.id))]);
        }
    }
}

/// Budgets, kept in the store.
#[derive(Debug)]
pub struct Budgets {
    ledger: Ledger,
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
        Self { ledger }
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
        if hold.lines.is_empty() {
            return Ok(Ok(Reservation { ledger: self.ledger.clone(), id: hold.id, nanos, tokens, released: true }));
        }
        match self.store().reserve(&hold).await? {
            None => Ok(Ok(Reservation { ledger: self.ledger.clone(), id: hold.id, nanos, tokens, released: false })),
            Some(over) => {
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
        }
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
