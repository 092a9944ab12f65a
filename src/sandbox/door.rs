//! Doors: the ways out of the sandbox, built for each execution by its caller.
//!
//! Guest code reaches a door by a call name whose first part names the door and whose
//! rest is the door's own business: `tools.github.create_issue(args)` is the `tools`
//! door's `github.create_issue`, `model.chat(request)` the `model` door's `chat`,
//! `fs.readFile(args)` the `fs` door's `readFile`. The sandbox knows the host ABI and
//! this one rule, nothing about what lies behind a door: each door is built already
//! bound to the caller's grants, owns its counter, its limit and its denial errors,
//! and is dropped with the execution. An execution has exactly the doors its
//! [`Doors`] hold; a call to any other name is refused.
//!
//! Doors run on the host's async runtime, so several calls from one execution proceed
//! concurrently and a guest waiting on them burns no fuel.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use super::error::ExecError;
use crate::error::Kind;
use crate::request::TraceContext;

/// One call through a door.
#[derive(Clone)]
pub struct Call {
    /// The call name after the door's own (`github.create_issue` for
    /// `tools.github.create_issue`).
    pub method: String,
    /// The JSON arguments the guest passed.
    pub args: Value,
    /// The execution the call belongs to.
    pub execution_id: Arc<str>,
    /// The execution's span: the parent of any span the call makes, and what it passes
    /// on to the next hop.
    pub trace: TraceContext,
    /// Set by the host alone, when it makes a call a door held before, now that what
    /// it waited for has come (the id of the approval that cleared it): the door makes
    /// it, unless the policies refuse it outright now.
    pub cleared: Option<Arc<str>>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("method", &self.method)
            .field("execution_id", &self.execution_id)
            .finish_non_exhaustive()
    }
}

/// A call under way: its answer, once the door has it.
pub type Pending = BoxFuture<'static, Result<Value, ExecError>>;

/// What a door does with a call it does not refuse.
pub enum Started {
    /// Under way.
    Now(Pending),
    /// Not made: it waits for something outside the execution, such as a person's
    /// approval. The sandbox knows nothing of what: once nothing else is in flight it
    /// pauses the execution (see [`super::Paused`]), and whoever resumes it says, call
    /// by call, whether the door makes the call ([`Call::cleared`]) or refuses it.
    Held(Hold, Call),
}

impl From<Pending> for Started {
    fn from(pending: Pending) -> Self {
        Self::Now(pending)
    }
}

/// Why a call is held: the door's own words, kept with the paused execution.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hold {
    /// What it waits for (`approval`).
    pub waits_for: String,
    /// The door's account of it (for an approval: the rule, its approvers, expiry).
    pub detail: Value,
}

/// A door out of the sandbox, for one execution.
pub trait Door: Send + Sync + 'static {
    /// Starts `call`, holds it, or refuses it at once: the guest's promise then
    /// rejects with the error, and a limit's error (`call_limit`) ends the execution.
    /// The future must not borrow the door: it may outlive the execution that started
    /// it only until that execution's store is dropped.
    fn call(&self, call: Call) -> Result<Started, ExecError>;
}

/// An execution's doors, by the name the guest calls them under.
#[derive(Clone, Default)]
pub struct Doors {
    by_name: BTreeMap<&'static str, Arc<dyn Door>>,
}

impl std::fmt::Debug for Doors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_name.keys()).finish()
    }
}

impl Doors {
    /// These doors and `door` under `name`.
    pub fn with(mut self, name: &'static str, door: Arc<dyn Door>) -> Self {
        self.by_name.insert(name, door);
        self
    }

    /// The door a call named `name` goes through, and the call name after the
    /// door's own; a name no door claims is refused.
    pub fn route<'a>(&self, name: &'a str) -> Result<(&Arc<dyn Door>, &'a str), ExecError> {
        let (door, method) = name.split_once('.').unwrap_or((name, ""));
        match self.by_name.get(door) {
            Some(found) if !method.is_empty() => Ok((found, method)),
            _ => Err(ExecError::new(Kind::InvalidRequest, format!("no host function `{name}`"))),
        }
    }
}

/// A door's count of its calls against its limit: the error to end the execution
/// with once the code passes it.
#[derive(Debug)]
pub struct Counter {
    used: std::sync::atomic::AtomicU32,
    limit: u32,
    /// What is counted, for the error (`tool calls`, `model calls`).
    what: &'static str,
}

impl Counter {
    pub fn new(limit: u32, what: &'static str) -> Self {
        Self { used: Default::default(), limit, what }
    }

    /// This counter, with `used` calls counted already: those an execution made
    /// before it paused (see [`super::Paused::door_calls`]).
    pub fn with_used(self, used: u32) -> Self {
        self.used.store(used, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Counts one call; past the limit, the `call_limit` error that ends the
    /// execution.
    pub fn count(&self) -> Result<(), ExecError> {
        let used = self.used.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if used > self.limit {
            return Err(ExecError::new(
                Kind::CallLimit,
                format!("the code made more than its limit of {} {}", self.limit, self.what),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl Door for Echo {
        fn call(&self, call: Call) -> Result<Started, ExecError> {
            let pending: Pending = Box::pin(async move { Ok(serde_json::json!({ "method": call.method })) });
            Ok(pending.into())
        }
    }

    #[test]
    fn a_call_goes_through_the_door_its_first_part_names() {
        let doors = Doors::default().with("tools", Arc::new(Echo));
        let (_, method) = doors.route("tools.github.create_issue").unwrap();
        assert_eq!(method, "github.create_issue");
        let refused = |name: &str| doors.route(name).err().map(|e| e.kind);
        assert_eq!(refused("toolsx.a"), Some(Kind::InvalidRequest));
        assert_eq!(refused("tools"), Some(Kind::InvalidRequest), "a door alone is not a call");
        assert_eq!(refused("model.chat"), Some(Kind::InvalidRequest), "no model door here");
        let counter = Counter::new(2, "tool calls");
        assert!(counter.count().is_ok() && counter.count().is_ok());
        let over = counter.count().unwrap_err();
        assert_eq!(
            (over.kind, over.message.as_str()),
            (Kind::CallLimit, "the code made more than its limit of 2 tool calls")
        );
    }
}
