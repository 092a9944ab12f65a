//! What happened: the latest executions and one execution's calls, for the operator
//! console. Admins see everyone's; anyone else sees only their own (another user's
//! execution is not found, as if it did not exist).

use std::sync::Arc;

use super::{Service, ServiceError};
use crate::auth::{Principal, Role};
use crate::store::{BudgetLine, ExecutionDetail, ExecutionQuery, ExecutionRecord, GroupBy, UsageQuery, UsageRow};

/// One budget line in force and where it stands.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct BudgetStanding {
    /// `user alice` or `team labs`.
    pub scope: String,
    /// `daily` or `monthly`.
    pub period: &'static str,
    /// When the period began (UTC), Unix milliseconds.
    pub since_ms: i64,
    pub limit_usd: Option<f64>,
    pub limit_tokens: Option<u64>,
    /// Spent and held (reservations of calls in flight), as the budget counts it.
    pub used_usd: f64,
    pub used_tokens: u64,
    /// Spent alone, from the ledger's model-call records.
    pub spent_usd: f64,
    pub spent_tokens: u64,
}

impl BudgetStanding {
    /// The larger of the used shares of its limits (0 to 1 and past).
    pub fn share(&self) -> f64 {
        let usd = self.limit_usd.filter(|l| *l > 0.0).map_or(0.0, |l| self.used_usd / l);
        let tokens = self.limit_tokens.filter(|l| *l > 0).map_or(0.0, |l| self.used_tokens as f64 / l as f64);
        usd.max(tokens)
    }
}

/// The most executions one listing returns.
pub const MAX_LISTED: u32 = 10_000;

/// Narrows `query` to `principal`'s own rows unless they are an admin.
fn own_only(principal: &Principal, query: &mut ExecutionQuery) {
    if principal.role != Role::Admin {
        query.user = Some(principal.user.clone());
    }
}

impl Service {
    /// The latest executions `query` selects, newest first (a non-admin's own only).
    pub async fn executions(
        &self,
        principal: &Principal,
        mut query: ExecutionQuery,
    ) -> Result<Vec<ExecutionRecord>, ServiceError> {
        own_only(principal, &mut query);
        query.limit = query.limit.clamp(1, MAX_LISTED);
        Ok(self.store.executions(&query).await?)
    }

    /// Executions in `query`'s window counted per minute and outcome, with the wall
    /// times of the latest `query.limit` (a non-admin's own only), all computed by
    /// the store.
    pub async fn pulse(
        &self,
        principal: &Principal,
        mut query: ExecutionQuery,
    ) -> Result<crate::store::PulseRows, ServiceError> {
        own_only(principal, &mut query);
        query.limit = query.limit.clamp(1, MAX_LISTED);
        Ok(self.store.pulse(&query).await?)
    }

    /// One execution with its host calls and model calls.
    pub async fn execution(&self, principal: &Principal, id: &str) -> Result<ExecutionDetail, ServiceError> {
        let detail = self.store.execution(id).await?;
        detail
            .filter(|d| principal.role == Role::Admin || d.execution.user == principal.user)
            .ok_or_else(|| ServiceError::NotFound(format!("no execution `{id}`")))
    }

    /// Host calls per name in `query`'s window (a non-admin's own only).
    pub async fn call_stats(
        &self,
        principal: &Principal,
        mut query: ExecutionQuery,
    ) -> Result<Vec<crate::store::CallStats>, ServiceError> {
        own_only(principal, &mut query);
        Ok(self.store.call_stats(&query).await?)
    }

    /// The latest model calls in `query`'s window, newest first (a non-admin's own
    /// only).
    pub async fn model_calls(
        &self,
        principal: &Principal,
        mut query: ExecutionQuery,
    ) -> Result<Vec<crate::store::ModelCallRow>, ServiceError> {
        own_only(principal, &mut query);
        query.limit = query.limit.clamp(1, MAX_LISTED);
        Ok(self.store.model_calls(&query).await?)
    }

    /// Each model provider's circuit breaker: its name and whether it is open.
    pub fn circuits(&self) -> Vec<(String, bool)> {
        self.gateway.circuits()
    }

    /// Every budget in force for the principals `viewer` may see (an admin: every
    /// configured key's; anyone else: their own), with what is spent and held
    /// against it, closest to its limit first.
    pub async fn budgets(&self, viewer: &Principal) -> Result<Vec<BudgetStanding>, ServiceError> {
        let principals: Vec<Arc<Principal>> = if viewer.role == Role::Admin {
            let mut all = self.keys.read().unwrap_or_else(|e| e.into_inner()).principals();
            if self.mode == super::Mode::Local {
                all.push(Arc::new(Principal::local()));
            }
            all
        } else {
            vec![Arc::new(viewer.clone())]
        };
        let policies = self.policies.current();
        let mut lines: Vec<(&'static str, BudgetLine)> = Vec::new();
        for principal in &principals {
            let budget = policies.capabilities(principal).budget;
            for (period, line) in crate::model::budget_lines(principal, &budget) {
                if !lines.iter().any(|(_, l)| l.scope == line.scope && l.since_ms == line.since_ms) {
                    lines.push((period, line));
                }
            }
        }
        let plain: Vec<BudgetLine> = lines.iter().map(|(_, line)| line.clone()).collect();
        let balances = self.store.balances(&plain).await?;
        let mut standing = Vec::with_capacity(lines.len());
        // Lines of one kind and period share one usage report (every user's daily
        // budget reads the same report by user since today).
        let mut reports: Vec<((GroupBy, i64), Vec<UsageRow>)> = Vec::new();
        for ((period, line), balance) in lines.into_iter().zip(balances) {
            let (kind, name) = line.scope.parts();
            let group_by = if kind == "user" { GroupBy::User } else { GroupBy::Team };
            let key = (group_by, line.since_ms);
            let at = match reports.iter().position(|(k, _)| *k == key) {
                Some(at) => at,
                None => {
                    let query = UsageQuery { group_by, since_ms: Some(line.since_ms), until_ms: None, user: None };
                    reports.push((key, self.ledger.usage(query).await?));
                    reports.len() - 1
                }
            };
            let spent = reports[at].1.iter().find(|row| row.group == name).cloned().unwrap_or_default();
            standing.push(BudgetStanding {
                scope: format!("{kind} {name}"),
                period,
                since_ms: line.since_ms,
                limit_usd: line.limit_nanos.map(|n| n as f64 / 1e9),
                limit_tokens: line.limit_tokens,
                used_usd: balance.used_nanos as f64 / 1e9,
                used_tokens: balance.used_tokens,
                spent_usd: spent.cost_usd,
                spent_tokens: spent.input_tokens + spent.output_tokens,
            });
        }
        standing.sort_by(|a, b| b.share().total_cmp(&a.share()).then(a.scope.cmp(&b.scope)));
        Ok(standing)
    }

    /// The live sessions `viewer` may see: an admin, those of every configured key's
    /// user (and the local user's); anyone else, their own. Newest first.
    pub async fn live_sessions(&self, viewer: &Principal) -> Result<Vec<crate::store::SessionRecord>, ServiceError> {
        let mut users: Vec<String> = if viewer.role == Role::Admin {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).principals();
            keys.iter().map(|p| p.user.clone()).collect()
        } else {
            Vec::new()
        };
        users.push(viewer.user.clone());
        users.sort();
        users.dedup();
        let now = crate::store::now_ms();
        let mut sessions = Vec::new();
        for user in users {
            sessions.extend(self.store.sessions(&user, now).await?);
        }
        sessions.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(a.id.cmp(&b.id)));
        Ok(sessions)
    }
}
