//! `tools.<server>.<tool>(args)` inside the sandbox.
//!
//! The call has already passed the execution's policy check (tool globs) when it
//! arrives here; this resolves the JavaScript name to the upstream tool, checks the
//! argument size, calls it, and hands back the unwrapped result (see
//! [`super::upstream::unwrap_result`]). Calls from one execution run concurrently:
//! each is its own future on the host runtime.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use super::Upstreams;
use crate::sandbox::{Capability, ErrorKind, ExecError, HostCall};
use crate::telemetry::trace;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

/// The tools of one upstream server, registered as `tools.<server>`.
pub struct UpstreamTools {
    pub server: String,
    pub pool: Arc<Upstreams>,
}

impl Capability for UpstreamTools {
    fn call(&self, call: HostCall) -> BoxFuture<'static, Result<Value, ExecError>> {
        let server = self.server.clone();
        let pool = self.pool.clone();
        Box::pin(async move {
            let mut found = pool.catalog().get(&server, &call.method).cloned();
            if found.is_none() && pool.catalog().server(&server).is_some_and(|s| !s.is_ready()) {
                // A server that is (re)connecting has not listed its tools yet: wait for
                // it, or for the error that keeps it down.
                pool.wait_ready(&server).await?;
                found = pool.catalog().get(&server, &call.method).cloned();
            }
            let Some(tool) = found else {
                return Err(ExecError::new(
                    ErrorKind::ToolDenied,
                    format!("MCP server `{server}` has no tool `{}` (search lists the tools there are)", call.method),
                ));
            };
            let span = tool_span(&call, &tool.name, &server, &tool.upstream_name);
            let result = call_upstream(&pool, &server, &tool, call.args, span.context()).await;
            if let Err(error) = &result {
                span.fail(error.kind.as_str(), &error.message);
            }
            span.end();
            result
        })
    }
}

/// Checks the arguments and calls the tool upstream.
async fn call_upstream(
    pool: &Upstreams,
    server: &str,
    tool: &crate::mcp::catalog::CatalogTool,
    args: Value,
    trace: &opentelemetry::Context,
) -> Result<Value, ExecError> {
    let args = match args {
        Value::Object(map) => map,
        Value::Null => serde_json::Map::new(),
        other => {
            return Err(ExecError::new(
                ErrorKind::InvalidRequest,
                format!("`tools.{}` takes one object argument, not {}", tool.name, json_type(&other)),
            ))
        }
    };
    let limit = pool.config().max_argument_bytes;
    let size = serde_json::to_vec(&args).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > limit {
        return Err(ExecError::new(
            ErrorKind::InvalidRequest,
            format!("arguments to `tools.{}` are {size} bytes; the limit is {limit}", tool.name),
        ));
    }
    pool.call(server, &tool.upstream_name, args, trace).await
}

/// The span of one tool call (GenAI `execute_tool`, MCP `tools/call`), a child of the
/// execution's span.
fn tool_span(call: &HostCall, name: &str, server: &str, upstream_name: &str) -> trace::Span {
    trace::Span::start(SpanKind::Client, &call.trace, || {
        let mut attributes = trace::principal(&call.principal).to_vec();
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
