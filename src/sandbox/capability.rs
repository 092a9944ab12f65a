//! Host capabilities: the doors out of the sandbox, each registered under a name.
//!
//! Guest code reaches a capability as `tools.<server>.<tool>(args)` (call name
//! `tools.<server>.<tool>`) or `model.chat(request)` (call name `model.chat`). The
//! registry routes a call to the capability registered under the longest matching
//! prefix; a call no capability claims is denied. Capabilities run on the host's
//! async runtime, so several calls from one execution proceed concurrently and a
//! guest waiting on them burns no fuel.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use super::error::{ErrorKind, ExecError};
use crate::auth::Principal;

/// One call from guest code.
#[derive(Clone)]
pub struct HostCall {
    /// The part of the call name after the capability's prefix (`echo` for
    /// `tools.test.echo` when registered as `tools.test`).
    pub method: String,
    /// The JSON arguments the guest passed.
    pub args: Value,
    /// Who submitted the code; nothing the guest passes can change it.
    pub principal: Arc<Principal>,
    /// The execution the call belongs to.
    pub execution_id: Arc<str>,
    /// The execution's grants, as its caller supplied them (see [`CallPolicy::as_any`]).
    pub grants: Arc<dyn CallPolicy>,
    /// The execution's span: the parent of any span the call makes, and what it passes
    /// on to the next hop.
    pub trace: opentelemetry::Context,
}

impl std::fmt::Debug for HostCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCall")
            .field("method", &self.method)
            .field("principal", &self.principal)
            .field("execution_id", &self.execution_id)
            .finish_non_exhaustive()
    }
}

/// A host capability.
pub trait Capability: Send + Sync + 'static {
    /// Runs one call. The future must not borrow the capability: it may outlive the
    /// execution that started it only until that execution's store is dropped.
    fn call(&self, call: HostCall) -> BoxFuture<'static, Result<Value, ExecError>>;
}

/// Decides, per call name, whether this execution's principal may make the call;
/// checked before the call is routed. Supplied per job from the caller's policy.
pub trait CallPolicy: Send + Sync + 'static {
    /// `Err` carries the denial (`tool_denied`, `model_denied`) and its reason.
    fn check(&self, name: &str) -> Result<(), ExecError>;

    /// The concrete grants, for capabilities that need more than yes or no (the
    /// model capability reads budgets and model grants from it).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Allows every call; for embedding without policies, and for benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl CallPolicy for AllowAll {
    fn check(&self, _name: &str) -> Result<(), ExecError> {
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Capabilities by call-name prefix.
#[derive(Clone, Default)]
pub struct Registry {
    by_prefix: BTreeMap<String, Arc<dyn Capability>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_prefix.keys()).finish()
    }
}

impl Registry {
    /// Registers `capability` for calls named `prefix` or `prefix.<method>`.
    pub fn register(&mut self, prefix: impl Into<String>, capability: Arc<dyn Capability>) {
        self.by_prefix.insert(prefix.into(), capability);
    }

    /// Finds the capability for a call name and the method part of the name.
    pub fn route(&self, name: &str) -> Result<(Arc<dyn Capability>, String), ExecError> {
        let best = self
            .by_prefix
            .iter()
            .filter(|(prefix, _)| {
                name == prefix.as_str()
                    || (name.starts_with(prefix.as_str()) && name.as_bytes().get(prefix.len()) == Some(&b'.'))
            })
            .max_by_key(|(prefix, _)| prefix.len());
        match best {
            Some((prefix, capability)) => {
                let method = name.get(prefix.len() + 1..).unwrap_or_default().to_string();
                Ok((capability.clone(), method))
            }
            None => Err(denied(name)),
        }
    }
}

fn denied(name: &str) -> ExecError {
    if let Some(tool) = name.strip_prefix("tools.") {
        ExecError::new(ErrorKind::ToolDenied, format!("no tool `{tool}` is available to this caller"))
    } else if name.starts_with("model.") {
        ExecError::new(ErrorKind::ModelDenied, "no model is available to this caller")
    } else {
        ExecError::new(ErrorKind::InvalidRequest, format!("no host function `{name}`"))
    }
}

/// A capability for exercising the host-call machinery, registered as `tools.test`
/// when `sandbox.test_capability` is on. It touches nothing outside the process.
///
/// - `echo(args)` returns `args`;
/// - `sleep({ms})` waits `ms` milliseconds (at most 60 s) and returns `{slept_ms}`;
/// - `fail({message})` fails with a `tool_error` carrying `message`.
#[derive(Debug, Default)]
pub struct TestCapability;

impl Capability for TestCapability {
    fn call(&self, call: HostCall) -> BoxFuture<'static, Result<Value, ExecError>> {
        Box::pin(async move {
            match call.method.as_str() {
                "echo" => Ok(call.args),
                "sleep" => {
                    let ms = call.args.get("ms").and_then(Value::as_u64).unwrap_or(0).min(60_000);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(serde_json::json!({ "slept_ms": ms }))
                }
                "fail" => {
                    let message = call.args.get("message").and_then(Value::as_str).unwrap_or("failed");
                    Err(ExecError::new(ErrorKind::ToolError, message))
                }
                "whoami" => Ok(serde_json::json!({
                    "user": call.principal.user,
                    "team": call.principal.team,
                    "execution_id": &*call.execution_id,
                })),
                other => Err(ExecError::new(ErrorKind::ToolDenied, format!("no tool `test.{other}`"))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_to_the_longest_prefix_and_denies_the_rest() {
        let mut registry = Registry::default();
        registry.register("tools.test", Arc::new(TestCapability));
        let (_, method) = registry.route("tools.test.echo").unwrap();
        assert_eq!(method, "echo");
        let kind = |name: &str| registry.route(name).err().map(|e| e.kind);
        assert_eq!(kind("tools.testing.echo"), Some(ErrorKind::ToolDenied));
        assert_eq!(kind("tools.other.x"), Some(ErrorKind::ToolDenied));
        assert_eq!(kind("model.chat"), Some(ErrorKind::ModelDenied));
        assert_eq!(kind("fs.read"), Some(ErrorKind::InvalidRequest));
    }
}
