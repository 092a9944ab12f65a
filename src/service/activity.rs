//! What happened: the latest executions and one execution's calls, for the operator
//! console. Admins see everyone's; anyone else sees only their own (another user's
//! execution is not found, as if it did not exist).

use std::sync::Arc;

use super::{Service, ServiceError};
use crate::auth::{Principal, Role};
use crate::policy::{Decision, Query};
use crate::store::{ExecutionDetail, ExecutionQuery, ExecutionRow};

/// The most executions one listing returns.
pub const MAX_LISTED: u32 = 10_000;

impl Service {
    /// The latest executions `query` selects, newest first (a non-admin's own only).
    pub async fn executions(
        &self,
        principal: &Principal,
        mut query: ExecutionQuery,
    ) -> Result<Vec<ExecutionRow>, ServiceError> {
        if principal.role != Role::Admin {
            query.user = Some(principal.user.clone());
        }
        query.limit = query.limit.clamp(1, MAX_LISTED);
        Ok(self.ledger.store().executions(&query).await?)
    }

    /// One execution with its host calls and model calls.
    pub async fn execution(&self, principal: &Principal, id: &str) -> Result<ExecutionDetail, ServiceError> {
        let detail = self.ledger.store().execution(id).await?;
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
        if principal.role != Role::Admin {
            query.user = Some(principal.user.clone());
        }
        Ok(self.ledger.store().call_stats(&query).await?)
    }

    /// The latest model calls in `query`'s window, newest first (a non-admin's own
    /// only).
    pub async fn model_calls(
        &self,
        principal: &Principal,
        mut query: ExecutionQuery,
    ) -> Result<Vec<crate::store::ModelCallRow>, ServiceError> {
        if principal.role != Role::Admin {
            query.user = Some(principal.user.clone());
        }
        query.limit = query.limit.clamp(1, MAX_LISTED);
        Ok(self.ledger.store().model_calls(&query).await?)
    }

    /// Each model provider's circuit breaker: its name and whether it is open.
    pub fn circuits(&self) -> Vec<(String, bool)> {
        self.gateway.circuits()
    }

    /// The principal a configured key name belongs to (none once it is revoked).
    pub fn key_principal(&self, name: &str) -> Option<Arc<Principal>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).by_name(name)
    }

    /// What the policy set in force decides for `principal` and `query`, with the rule
    /// that decided.
    pub fn explain(&self, principal: &Principal, query: &Query) -> Decision {
        self.policies.current().explain(principal, query)
    }
}
