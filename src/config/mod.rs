//! `sandgate.toml`: read into raw structs that reject unknown keys, then validated
//! once into [`Config`], which the rest of the code trusts.
//!
//! Every key is optional; an absent file means the embedded defaults (loopback, the
//! default [`Limits`]). See the README's "Configuration" for every key.

mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sandbox::{Limits, SandboxConfig};
use crate::telemetry::LogFormat;

/// The default address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8420";

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    /// The limits every caller gets, and the most a request may ask for.
    pub limits: Limits,
    pub sandbox: SandboxConfig,
    /// Registers the `tools.test` capability (echo, sleep, fail): for tests and demos.
    pub test_capability: bool,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::from_raw(raw::RawConfig::default(), Path::new("<defaults>"))
            .expect("embedded defaults are valid")
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_raw(raw, path)
    }

    fn from_raw(raw: raw::RawConfig, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let listen = raw
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse::<SocketAddr>()
            .map_err(|e| {
                invalid(
                    "listen",
                    format!("not an address such as 127.0.0.1:8420: {e}"),
                )
            })?;
        let limits = raw.limits.unwrap_or_default();
        let sandbox = raw.sandbox.unwrap_or_default();
        let defaults = SandboxConfig::default();
        let max_memory_bytes = sandbox
            .max_memory_bytes
            .unwrap_or(defaults.max_memory_bytes.max(limits.memory_bytes));
        if limits.memory_bytes > max_memory_bytes {
            return Err(invalid(
                "limits.memory_bytes",
                format!(
                    "{} is above sandbox.max_memory_bytes ({max_memory_bytes})",
                    limits.memory_bytes
                ),
            ));
        }
        if limits.memory_bytes < 8 << 20 {
            return Err(invalid(
                "limits.memory_bytes",
                "must be at least 8 MiB (8388608): the guest needs it to start".into(),
            ));
        }
        if limits.wall_ms == 0 {
            return Err(invalid("limits.wall_ms", "must be at least 1".into()));
        }
        let max_concurrent = sandbox.max_concurrent.unwrap_or(defaults.max_concurrent);
        if max_concurrent == 0 || max_concurrent > 10_000 {
            return Err(invalid(
                "sandbox.max_concurrent",
                "must be between 1 and 10000".into(),
            ));
        }
        let cache_dir = match sandbox.cache_dir {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(dir),
            None => std::env::var_os("SANDGATE_CACHE_DIR")
                .map(PathBuf::from)
                .or(defaults.cache_dir),
        };
        let max_body_bytes = raw
            .http
            .and_then(|h| h.max_body_bytes)
            .unwrap_or(limits.code_bytes as usize + (4 << 20));
        Ok(Config {
            listen,
            log_format: raw.log_format.unwrap_or_default(),
            limits,
            sandbox: SandboxConfig {
                max_concurrent,
                cpu_slots: sandbox.cpu_slots.unwrap_or(defaults.cpu_slots),
                queue_timeout: sandbox
                    .queue_timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(defaults.queue_timeout),
                max_memory_bytes,
                cache_dir,
            },
            test_capability: sandbox.test_capability.unwrap_or(false),
            max_body_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("sandgate.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let config = parse("").unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.limits, Limits::default());
    }

    #[test]
    fn bad_files_name_the_file_and_key() {
        let cases = [
            ("lisen = \"x\"", "unknown field `lisen`"),
            ("[limits]\nfuel = \"lots\"", "line 2"),
            ("[limits]\nmemory_bytes = 1024", "limits.memory_bytes"),
            ("listen = \"nowhere\"", "`listen`"),
            ("[sandbox]\nmax_concurrent = 0", "sandbox.max_concurrent"),
            (
                "[sandbox]\nmax_memory_bytes = 16777216\n[limits]\nmemory_bytes = 33554432",
                "above sandbox.max_memory_bytes",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.starts_with("sandgate.toml"), "{text:?}: {err}");
        }
    }
}
