//! The `model` door: `model.chat(request)` inside the sandbox.
//!
//! Built for one execution, bound to its principal and the grants it started with: a
//! call is counted against `limits.model_calls` (past it the execution ends), then
//! takes the same router path as the proxy ([`Gateway::chat`]): policy, rate limit,
//! routing, budget, fallback, attributed to the execution's principal and id. A
//! failure reaches the code with the model proxy's own kind (`model_denied`,
//! `budget_exceeded`, `rate_limited`, `upstream_error`, `invalid_request`,
//! `unavailable`), never a tool's.

use std::sync::Arc;

use super::{CallContext, Gateway};
use crate::auth::Principal;
use crate::error::Kind;
use crate::policy::condition::{Facts, Target};
use crate::policy::Capabilities;
use crate::sandbox::{Call, Counter, Door, ExecError, Pending, Started};

/// One execution's `model` door.
pub struct Model {
    pub gateway: Arc<Gateway>,
    pub principal: Arc<Principal>,
    pub grants: Capabilities,
    pub calls: Counter,
    /// The coding agent's session the execution belongs to.
    pub agent_session: Option<String>,
    /// The sandbox session the execution runs in, which policy conditions see.
    pub session: Option<Arc<str>>,
    /// Whether the execution can pause at a call that needs approval (see the tools
    /// door's).
    pub pausable: bool,
}

impl Door for Model {
    fn call(&self, call: Call) -> Result<Started, ExecError> {
        self.calls.count()?;
        if call.method != "chat" {
            return Err(ExecError::new(Kind::InvalidRequest, format!("no function `model.{}`", call.method)));
        }
        // The rules' conditions see the request; which models the principal may use
        // at all is the router's to decide, as for the proxy.
        let requested = call.args.get("model").and_then(|m| m.as_str()).unwrap_or("auto");
        let tier = self.gateway.catalog().models.get(requested).map(|m| m.tier.as_str());
        let facts = Facts::now(&self.principal, &call.args, self.session.as_deref());
        let decision = self.grants.call(Target::Model(requested), tier, &facts);
        // Denied by default means no rule spoke: the router decides, as for the proxy.
        let call = if !decision.allowed && decision.rule.is_none() {
            call
        } else {
            match crate::mcp::door::gate(decision, call, self.pausable, Kind::ModelDenied)? {
                crate::mcp::door::Gate::Go(call) => call,
                crate::mcp::door::Gate::Held(held) => return Ok(held),
            }
        };
        let gateway = self.gateway.clone();
        let ctx = CallContext {
            principal: self.principal.clone(),
            capabilities: self.grants.clone(),
            execution_id: Some(call.execution_id.to_string()),
            trace: call.trace.clone(),
            agent_session: self.agent_session.clone(),
        };
        let pending: Pending = Box::pin(async move {
            match gateway.chat(ctx, call.args).await {
                Ok(answer) => Ok(serde_json::to_value(answer).unwrap_or_default()),
                Err(error) => Err(ExecError::new(error.kind(), error.to_string())),
            }
        });
        Ok(pending.into())
    }
}
