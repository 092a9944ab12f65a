//! Per-execution limits: one ceiling per principal, lowered (never raised) per request.

use serde::{Deserialize, Serialize};

/// The limits one execution runs under.
///
/// Defaults are the embedded ceiling a server applies when nothing else is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// CPU budget in wasmtime fuel units (about 2×10¹⁰ per CPU-second). Default 10¹⁰.
    pub fuel: u64,
    /// Linear-memory cap in bytes. Default 64 MiB.
    pub memory_bytes: u64,
    /// Wall-clock limit in milliseconds, including time parked on host calls. Default 5,000.
    pub wall_ms: u64,
    /// The wall-clock limit of an execution started in the background
    /// (`POST /v1/executions`, MCP tasks), which is its ceiling in place of `wall_ms`.
    /// Default 600,000 (10 minutes).
    pub background_wall_ms: u64,
    /// Console output cap in bytes. Default 64 KiB.
    pub output_bytes: u64,
    /// Result cap in bytes of JSON. Default 1 MiB.
    pub result_bytes: u64,
    /// Host calls of any kind per execution. Default 100.
    pub host_calls: u32,
    /// Tool calls (`tools.*`) per execution. Default 100.
    pub tool_calls: u32,
    /// Model calls (`model.*`) per execution. Default 20.
    pub model_calls: u32,
    /// Size of the submitted code in bytes. Default 256 KiB.
    pub code_bytes: u64,
    /// Executions one principal may have at once (running, queued or parked), so one
    /// caller cannot take every admission slot. Never above `sandbox.max_concurrent`;
    /// 0 (the default) means the server's default share, half of
    /// `sandbox.max_concurrent`, so that one principal can never starve the rest
    /// unless an operator's policy says so.
    pub concurrent: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 10_000_000_000,
            memory_bytes: 64 << 20,
            wall_ms: 5_000,
            background_wall_ms: 600_000,
            output_bytes: 64 << 10,
            result_bytes: 1 << 20,
            host_calls: 100,
            tool_calls: 100,
            model_calls: 20,
            code_bytes: 256 << 10,
            concurrent: 0,
        }
    }
}

/// Limits with only some fields set: what a request asks for (each field must not
/// exceed the caller's ceiling), or what one policy grants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialLimits {
    pub fuel: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub wall_ms: Option<u64>,
    pub background_wall_ms: Option<u64>,
    pub output_bytes: Option<u64>,
    pub result_bytes: Option<u64>,
    pub host_calls: Option<u32>,
    pub tool_calls: Option<u32>,
    pub model_calls: Option<u32>,
    pub code_bytes: Option<u64>,
    pub concurrent: Option<u32>,
}

impl PartialLimits {
    /// Field by field, the larger of the two: how grants from several policies add up.
    pub fn raise(&mut self, other: &PartialLimits) {
        // `Option`'s order puts `None` below every `Some`: an unset field never wins.
        *self = PartialLimits {
            fuel: self.fuel.max(other.fuel),
            memory_bytes: self.memory_bytes.max(other.memory_bytes),
            wall_ms: self.wall_ms.max(other.wall_ms),
            background_wall_ms: self.background_wall_ms.max(other.background_wall_ms),
            output_bytes: self.output_bytes.max(other.output_bytes),
            result_bytes: self.result_bytes.max(other.result_bytes),
            host_calls: self.host_calls.max(other.host_calls),
            tool_calls: self.tool_calls.max(other.tool_calls),
            model_calls: self.model_calls.max(other.model_calls),
            code_bytes: self.code_bytes.max(other.code_bytes),
            concurrent: self.concurrent.max(other.concurrent),
        };
    }

    /// Fields nobody set take `defaults`.
    pub fn or(self, defaults: Limits) -> Limits {
        Limits {
            fuel: self.fuel.unwrap_or(defaults.fuel),
            memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
            wall_ms: self.wall_ms.unwrap_or(defaults.wall_ms),
            background_wall_ms: self.background_wall_ms.unwrap_or(defaults.background_wall_ms),
            output_bytes: self.output_bytes.unwrap_or(defaults.output_bytes),
            result_bytes: self.result_bytes.unwrap_or(defaults.result_bytes),
            host_calls: self.host_calls.unwrap_or(defaults.host_calls),
            tool_calls: self.tool_calls.unwrap_or(defaults.tool_calls),
            model_calls: self.model_calls.unwrap_or(defaults.model_calls),
            code_bytes: self.code_bytes.unwrap_or(defaults.code_bytes),
            concurrent: self.concurrent.unwrap_or(defaults.concurrent),
        }
    }
}

impl Limits {
    /// Executions one principal may have at once on a server admitting
    /// `max_concurrent`: `concurrent` when a policy set it (never above
    /// `max_concurrent`), else half of `max_concurrent` (at least one).
    pub fn share_of(&self, max_concurrent: u32) -> u32 {
        match self.concurrent {
            0 => (max_concurrent / 2).max(1),
            set => set.min(max_concurrent),
        }
    }

    /// The ceiling of an execution started in the background: its wall-clock limit is
    /// `background_wall_ms` (never less than `wall_ms`).
    pub fn for_background(&self) -> Limits {
        Limits { wall_ms: self.background_wall_ms.max(self.wall_ms), ..*self }
    }

    /// The limits for one request: the ceiling, lowered where the request asks.
    /// Asking for more than the ceiling is an error naming the field and the ceiling.
    pub fn lowered_by(&self, request: &PartialLimits) -> Result<Limits, String> {
        fn pick<N: PartialOrd + Copy + std::fmt::Display>(
            name: &str,
            ceiling: N,
            asked: Option<N>,
        ) -> Result<N, String> {
            match asked {
                Some(value) if value > ceiling => {
                    Err(format!("limits.{name} = {value} is above this caller's ceiling of {ceiling}"))
                }
                Some(value) => Ok(value),
                None => Ok(ceiling),
            }
        }
        let limits = Limits {
            fuel: pick("fuel", self.fuel, request.fuel)?,
            memory_bytes: pick("memory_bytes", self.memory_bytes, request.memory_bytes)?,
            wall_ms: pick("wall_ms", self.wall_ms, request.wall_ms)?,
            background_wall_ms: pick("background_wall_ms", self.background_wall_ms, request.background_wall_ms)?,
            output_bytes: pick("output_bytes", self.output_bytes, request.output_bytes)?,
            result_bytes: pick("result_bytes", self.result_bytes, request.result_bytes)?,
            host_calls: pick("host_calls", self.host_calls, request.host_calls)?,
            tool_calls: pick("tool_calls", self.tool_calls, request.tool_calls)?,
            model_calls: pick("model_calls", self.model_calls, request.model_calls)?,
            code_bytes: pick("code_bytes", self.code_bytes, request.code_bytes)?,
            concurrent: pick("concurrent", self.concurrent, request.concurrent)?,
        };
        if limits.wall_ms == 0 {
            return Err("limits.wall_ms must be at least 1".into());
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_lowers_but_never_raises() {
        let ceiling = Limits::default();
        let lowered = ceiling.lowered_by(&PartialLimits { fuel: Some(5), ..Default::default() }).unwrap();
        assert_eq!(lowered.fuel, 5);
        assert_eq!(lowered.wall_ms, ceiling.wall_ms);
        let err = ceiling
            .lowered_by(&PartialLimits { wall_ms: Some(ceiling.wall_ms + 1), ..Default::default() })
            .unwrap_err();
        assert!(err.contains("limits.wall_ms"), "{err}");
        assert!(ceiling.lowered_by(&PartialLimits { wall_ms: Some(0), ..Default::default() }).is_err());
    }
}
