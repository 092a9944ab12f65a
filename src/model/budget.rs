//! Budgets: reserved before a model call (an estimate), settled after it with the
//! provider's reported usage.
//!
//! Spend per scope (a user, or a team when the policy pools it) and period (UTC day,
//! UTC month) is read once from the ledger and then kept up to date in memory, so a
//! check costs a map lookup. Reservations count against the budget while a call is in
//! flight, so concurrent calls cannot together overshoot it by more than one call's
//! estimate error.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use crate::auth::Principal;
use crate::ledger::{now_ms, Ledger, SpendScope};
use crate::policy::{Budget, BudgetScope};

const DAY_MS: i64 = 86_400_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    scope: SpendScope,
    since_ms: i64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    spent_nanos: i64,
    spent_tokens: u64,
    reserved_nanos: i64,
    reserved_tokens: u64,
}

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
    budgets: Arc<Budgets>,
    keys: BTreeSet<Key>,
    nanos: i64,
    tokens: u64,
    settled: bool,
}

impl Reservation {
    /// The amounts held: nano-dollars and tokens.
    pub fn amount(&self) -> (i64, u64) {
        (self.nanos, self.tokens)
    }

    /// Replaces the estimate with what the call actually cost.
    pub fn settle(mut self, nanos: i64, tokens: u64) {
        self.budgets.apply(&self.keys, -self.nanos, -(self.tokens as i64), nanos, tokens);
        self.settled = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.budgets.apply(&self.keys, -self.nanos, -(self.tokens as i64), 0, 0);
        }
    }
}

/// Spend and reservations per scope and period.
#[derive(Debug)]
pub struct Budgets {
    ledger: Ledger,
    entries: Mutex<HashMap<Key, Entry>>,
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

enum Field {
    Usd(f64),
    Tokens(u64),
}

impl Budgets {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger, entries: Mutex::new(HashMap::new()) }
    }

    fn fields(principal: &Principal, budget: &Budget) -> Vec<(&'static str, Key, Field)> {
        let now = now_ms();
        let (day, month) = (now - now.rem_euclid(DAY_MS), month_start_ms(now));
        let mut fields = Vec::new();
        if let Some(b) = &budget.usd_per_day {
            fields.push(("daily USD", Key { scope: scope_of(principal, b.scope), since_ms: day }, Field::Usd(b.value)));
        }
        if let Some(b) = &budget.usd_per_month {
            fields.push((
                "monthly USD",
                Key { scope: scope_of(principal, b.scope), since_ms: month },
                Field::Usd(b.value),
            ));
        }
        if let Some(b) = &budget.tokens_per_day {
            fields.push((
                "daily token",
                Key { scope: scope_of(principal, b.scope), since_ms: day },
                Field::Tokens(b.value),
            ));
        }
        if let Some(b) = &budget.tokens_per_month {
            fields.push((
                "monthly token",
                Key { scope: scope_of(principal, b.scope), since_ms: month },
                Field::Tokens(b.value),
            ));
        }
        fields
    }

    async fn load(&self, keys: impl Iterator<Item = &Key>) -> Result<(), crate::ledger::LedgerError> {
        for key in keys {
            if self.entries.lock().unwrap_or_else(|e| e.into_inner()).contains_key(key) {
                continue;
            }
            let (nanos, tokens) = self.ledger.spend(key.scope.clone(), key.since_ms).await?;
            self.entries.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_insert(Entry {
                spent_nanos: nanos,
                spent_tokens: tokens,
                ..Entry::default()
            });
        }
        Ok(())
    }

    /// Holds `nanos` and `tokens` against every budget the principal has, or says
    /// which one the call would pass.
    pub async fn reserve(
        self: &Arc<Self>,
        principal: &Principal,
        budget: &Budget,
        nanos: i64,
        tokens: u64,
    ) -> Result<Result<Reservation, Exceeded>, crate::ledger::LedgerError> {
        let fields = Self::fields(principal, budget);
        self.load(fields.iter().map(|(_, key, _)| key)).await?;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for (what, key, field) in &fields {
            let entry = entries.get(key).copied().unwrap_or_default();
            let (over, limit, used) = match field {
                Field::Usd(limit) => {
                    let used = (entry.spent_nanos + entry.reserved_nanos) as f64 / 1e9;
                    (used + nanos as f64 / 1e9 > *limit, format!("${limit:.2}"), format!("${used:.4}"))
                }
                Field::Tokens(limit) => {
                    let used = entry.spent_tokens + entry.reserved_tokens;
                    (used + tokens > *limit, format!("{limit} tokens"), format!("{used} tokens"))
                }
            };
            if over {
                return Ok(Err(Exceeded { what, limit, used, scope: key.scope.to_string() }));
            }
        }
        let keys: BTreeSet<Key> = fields.into_iter().map(|(_, key, _)| key).collect();
        for key in &keys {
            let entry = entries.entry(key.clone()).or_default();
            entry.reserved_nanos += nanos;
            entry.reserved_tokens += tokens;
        }
        Ok(Ok(Reservation { budgets: self.clone(), keys, nanos, tokens, settled: false }))
    }

    /// The least USD left across the principal's USD budgets; `None` without any.
    pub async fn remaining_usd(
        &self,
        principal: &Principal,
        budget: &Budget,
    ) -> Result<Option<f64>, crate::ledger::LedgerError> {
        let fields = Self::fields(principal, budget);
        self.load(fields.iter().map(|(_, key, _)| key)).await?;
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        Ok(fields
            .iter()
            .filter_map(|(_, key, field)| match field {
                Field::Usd(limit) => {
                    let entry = entries.get(key).copied().unwrap_or_default();
                    Some(limit - (entry.spent_nanos + entry.reserved_nanos) as f64 / 1e9)
                }
                Field::Tokens(_) => None,
            })
            .reduce(f64::min))
    }

    fn apply(&self, keys: &BTreeSet<Key>, reserved_nanos: i64, reserved_tokens: i64, nanos: i64, tokens: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            let entry = entries.entry(key.clone()).or_default();
            entry.reserved_nanos += reserved_nanos;
            entry.reserved_tokens = entry.reserved_tokens.saturating_add_signed(reserved_tokens);
            entry.spent_nanos += nanos;
            entry.spent_tokens += tokens;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_starts_are_utc_calendar_months() {
        // 2026-11-25T10:00:00Z -> 2026-11-01T00:00:00Z
        assert_eq!(month_start_ms(1_795_600_800_000), 1_793_491_200_000);
        // 2024-02-29 -> 2024-02-01
        assert_eq!(month_start_ms(1_709_164_800_000), 1_706_745_600_000);
        assert_eq!(month_start_ms(0), 0);
    }
}
