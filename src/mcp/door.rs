//! The `tools` door: `tools.<server>.<tool>(args)` inside the sandbox.
//!
//! Built for one execution, bound to its principal's grants: a call names
//! `<server>.<tool>`; it is counted against `limits.tool_calls` (past it the
//! execution ends), checked against the policies' tool globs and the conditions of
//! their rules, with its arguments (`tool_denied`), resolved
//! to the upstream tool, its arguments checked, and called; the result comes back
//! unwrapped (see [`super::upstream::unwrap_result`]). Calls from one execution run
//! concurrently: each is its own future on the host runtime. With
//! `sandbox.test_capability` on, the door also serves the test server `test`
//! ([`test_tool`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::Upstreams;
use crate::auth::Principal;
use crate::error::Kind;
use crate::policy::condition::{Facts, Target};
use crate::policy::Capabilities;
use crate::policy::Decision;
use crate::sandbox::{Call, Counter, Door, ExecError, Hold, Pending, Started};
use crate::telemetry::trace;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

/// One execution's `tools` door.
pub struct Tools {
    pub upstreams: Arc<Upstreams>,
    pub principal: Arc<Principal>,
    pub grants: Capabilities,
    /// Whether the test server `test` is there (`sandbox.test_capability`).
    pub test: bool,
    pub calls: Counter,
    /// The session the execution runs in, which policy conditions see.
    pub session: Option<Arc<str>>,
    /// Whether the execution can pause at a call that needs approval: not in a
    /// session, whose files and memory change together when an execution ends.
    pub pausable: bool,
}

impl Door for Tools {
    fn call(&self, call: Call) -> Result<Started, ExecError> {
        self.calls.count()?;
        let facts = Facts::now(&self.principal, &call.args, self.session.as_deref());
        let decision = self.grants.call(Target::Tool(&call.method), None, &facts);
        let call = match gate(decision, call, self.pausable, Kind::ToolDenied)? {
            Gate::Go(call) => call,
            Gate::Held(held) => return Ok(held),
        };
        let Some((server, tool)) = call.method.split_once('.') else {
            return Err(ExecError::new(
                Kind::ToolDenied,
                format!("no tool `{}` is available to this caller", call.method),
            ));
        };
        if self.test && server == "test" {
            return Ok(test_tool(tool.to_string(), call.args, self.principal.clone(), call.execution_id).into());
        }
        if self.upstreams.catalog().server(server).is_none() {
            return Err(ExecError::new(
                Kind::ToolDenied,
                format!("no tool `{}` is available to this caller", call.method),
            ));
        }
        let (server, tool) = (server.to_string(), tool.to_string());
        let (pool, principal) = (self.upstreams.clone(), self.principal.clone());
        let pending: Pending = Box::pin(async move {
            // The names the call needs, not a copy of the entry with its schemas.
            let names = |catalog: &super::Catalog| {
                catalog.get(&server, &tool).map(|found| (found.name.clone(), found.upstream_name.clone()))
            };
            let mut found = names(&pool.catalog());
            if found.is_none() && pool.catalog().server(&server).is_some_and(|s| !s.is_ready()) {
                // A server that is (re)connecting has not listed its tools yet: wait for
                // it, or for the error that keeps it down.
                pool.wait_ready(&server).await?;
                found = names(&pool.catalog());
            }
            let Some((name, upstream_name)) = found else {
                return Err(ExecError::new(
                    Kind::ToolDenied,
                    format!("MCP server `{server}` has no tool `{tool}` (search lists the tools there are)"),
                ));
            };
            let span = tool_span(&call, &principal, &name, &server, &upstream_name);
            let result = call_upstream(&pool, &server, &name, &upstream_name, call.args, span.context()).await;
            if let Err(error) = &result {
                span.fail(error.kind.as_str(), &error.message);
            }
            span.end();
            result
        });
        Ok(pending.into())
    }
}

/// What a door does with a call, given the policies' decision on it.
pub(crate) enum Gate {
    /// Make it.
    Go(Call),
    /// Hold it until an approver decides.
    Held(Started),
}

/// Makes an allowed call, holds one that needs approval (unless it was approved
/// already: [`Call::cleared`]), and refuses the rest with `denied` (`tool_denied`,
/// `model_denied`). An execution that cannot pause (one in a session) is refused a
/// call that needs approval, saying so.
pub(crate) fn gate(decision: Decision, call: Call, pausable: bool, denied: Kind) -> Result<Gate, ExecError> {
    if decision.allowed {
        return Ok(Gate::Go(call));
    }
    let Some(approval) = &decision.approval else {
        return Err(ExecError::new(denied, decision.denial()));
    };
    if call.cleared.is_some() {
        return Ok(Gate::Go(call));
    }
    if !pausable {
        return Err(ExecError::new(
            denied,
            format!("{}: an execution in a session cannot pause for approval yet", decision.denial()),
        ));
    }
    let detail = serde_json::json!({
        "rule": decision.rule,
        "reason": decision.reason,
        "approvers": approval.approvers,
        "expires_after_s": approval.expires_after_s,
        "self_approval": approval.self_approval,
    });
    Ok(Gate::Held(Started::Held(Hold { waits_for: "approval".into(), detail }, call)))
}

/// The test server, for exercising the host-call machinery: it touches nothing
/// outside the process.
///
/// - `echo(args)` returns `args`;
/// - `sleep({ms})` waits `ms` milliseconds (at most 60 s) and returns `{slept_ms}`;
/// - `fail({message})` fails with a `tool_error` carrying `message`;
/// - `whoami()` returns the caller's user and team and the execution's id.
pub fn test_tool(tool: String, args: Value, principal: Arc<Principal>, execution_id: Arc<str>) -> Pending {
    Box::pin(async move {
        match tool.as_str() {
            "echo" => Ok(args),
            "sleep" => {
                let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(0).min(60_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(serde_json::json!({ "slept_ms": ms }))
            }
            "fail" => {
                let message = args.get("message").and_then(Value::as_str).unwrap_or("failed");
                Err(ExecError::new(Kind::ToolError, message))
            }
            "whoami" => Ok(serde_json::json!({
                "user": principal.user,
                "team": principal.team,
                "execution_id": &*execution_id,
            })),
            other => Err(ExecError::new(Kind::ToolDenied, format!("no tool `test.{other}`"))),
        }
    })
}

/// Checks the arguments and calls the tool upstream.
async fn call_upstream(
    pool: &Upstreams,
    server: &str,
    name: &str,
    upstream_name: &str,
    args: Value,
    trace: &opentelemetry::Context,
) -> Result<Value, ExecError> {
    let args = match args {
        Value::Object(map) => map,
        Value::Null => serde_json::Map::new(),
        other => {
            return Err(ExecError::new(
                Kind::InvalidRequest,
                format!("`tools.{name}` takes one object argument, not {}", json_type(&other)),
            ))
        }
    };
    let limit = pool.config().max_argument_bytes;
    let size = serde_json::to_vec(&args).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > limit {
        return Err(ExecError::new(
            Kind::InvalidRequest,
            format!("arguments to `tools.{name}` are {size} bytes; the limit is {limit}"),
        ));
    }
    pool.call(server, upstream_name, args, trace).await
}

/// The span of one tool call (GenAI `execute_tool`, MCP `tools/call`), a child of the
/// execution's span.
fn tool_span(call: &Call, principal: &Principal, name: &str, server: &str, upstream_name: &str) -> trace::Span {
    trace::Span::start(SpanKind::Client, &call.trace, || {
        let mut attributes = trace::principal(principal).to_vec();
        attributes.extend([
            KeyValue::new("gen_ai.operation.name", "execute_tool"),
            KeyValue::new("gen_ai.tool.name", name.to_string()),
            KeyValue::new("gen_ai.tool.type", "extension"),
            KeyValue::new("mcp.method.name", "tools/call"),
            KeyValue::new("sandgate.mcp.server", server.to_string()),
            KeyValue::new("sandgate.mcp.tool", upstream_name.to_string()),
            KeyValue::new("sandgate.execution_id", call.execution_id.to_string()),
        ]);
        (format!("execute_tool {name}"), attributes)
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
