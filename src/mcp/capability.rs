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
            let args = match call.args {
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
            pool.call(&server, &tool.upstream_name, args).await
        })
    }
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
