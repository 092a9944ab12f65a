//! File descriptors: what the process keeps back for executions and sessions before
//! the HTTP server may use the rest for connections.
//!
//! Besides its connections, the process holds descriptors for the store, upstream
//! servers and the compile cache ([`BASE`]), for each execution in flight (a session's
//! memory file, its workspace's scratch directory, a mount: [`PER_EXECUTION`]), and for
//! each session memory kept between executions (one memory file, and a userfaultfd
//! for one that keeps its instance: the cache counts both). All of it is counted
//! here, at start, against the open-file limit (its soft value raised to the hard
//! one): the kept memories are capped to fit, admission is lowered if the limit cannot
//! hold `sandbox.max_concurrent` executions, and connections get what is left. So
//! however many clients connect, a workspace call never fails for want of a
//! descriptor.

/// Descriptors kept for the store, upstreams, the compile cache and the logs.
pub const BASE: u64 = 64;
/// Descriptors one execution may hold: its session's memory file, the scratch
/// directory of its workspace, and a mount open at a time.
pub const PER_EXECUTION: u64 = 3;
/// The most session memories kept between executions, however high the limit.
pub const MAX_MEMORIES: u64 = 4096;
/// Connections the server always accepts, however low the limit.
pub const MIN_CONNECTIONS: u64 = 16;

/// How the descriptors are shared out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdPlan {
    /// The open-file limit in force (`None` where it cannot be read).
    pub limit: Option<u64>,
    /// Executions admitted at once.
    pub max_concurrent: u32,
    /// Session memories kept between executions.
    pub memories: usize,
    /// Descriptors kept back from connections.
    pub reserved: u64,
}

/// Shares out `limit` descriptors for a server configured to admit `max_concurrent`.
pub fn plan(limit: Option<u64>, max_concurrent: u32) -> FdPlan {
    let Some(files) = limit else {
        let memories = MAX_MEMORIES;
        return FdPlan {
            limit,
            max_concurrent,
            memories: memories as usize,
            reserved: BASE + memories + u64::from(max_concurrent) * PER_EXECUTION,
        };
    };
    let usable = files.saturating_sub(BASE + MIN_CONNECTIONS);
    // A quarter of what is usable for kept memories (they are a cache), the rest for
    // executions first and then connections.
    let memories = (usable / 4).min(MAX_MEMORIES);
    let executions = ((usable - memories) / PER_EXECUTION).max(1);
    let admitted = u64::from(max_concurrent).min(executions) as u32;
    if admitted < max_concurrent {
        tracing::warn!(
            configured = max_concurrent,
            admitted,
            open_files = files,
            "the open-file limit lowers sandbox.max_concurrent"
        );
    }
    FdPlan {
        limit,
        max_concurrent: admitted,
        memories: memories as usize,
        reserved: BASE + memories + u64::from(admitted) * PER_EXECUTION,
    }
}

/// Raises the soft open-file limit to the hard one; returns the limit in force.
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            limit.current = limit.maximum;
            if setrlimit(Resource::Nofile, limit).is_err() {
                limit = getrlimit(Resource::Nofile);
            }
        }
        limit.current
    }
    #[cfg(not(unix))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_low_limit_keeps_room_for_executions_and_memories_before_connections() {
        let plan = plan(Some(256), 256);
        assert!(plan.max_concurrent < 256 && plan.max_concurrent >= 1, "{plan:?}");
        assert!(plan.memories >= 1);
        assert!(plan.reserved + MIN_CONNECTIONS <= 256, "{plan:?}");
        let roomy = super::plan(Some(1 << 20), 256);
        assert_eq!((roomy.max_concurrent, roomy.memories), (256, MAX_MEMORIES as usize));
        assert_eq!(roomy.reserved, BASE + MAX_MEMORIES + 256 * PER_EXECUTION);
    }
}
