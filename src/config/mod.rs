//! `sandgate.toml`: read into raw structs that reject unknown keys, then validated
//! once into [`Config`], which the rest of the code trusts.
//!
//! Every key is optional; an absent file means the embedded defaults (loopback, no
//! keys, the policies in `./policies` or the example policies compiled in). What each
//! caller may do comes from policies (`crate::policy`), not from this file. See the
//! README's "Configuration" for every key.

mod mcp;
mod models;
mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::KeyEntry;
use crate::sandbox::SandboxConfig;
use crate::telemetry::LogFormat;

/// How long a background execution's result is kept by default.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(3_600);

/// The default address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8420";

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    pub sandbox: SandboxConfig,
    /// Registers the `tools.test` capability (echo, sleep, fail): for tests and demos.
    pub test_capability: bool,
    /// How long a background execution's result is kept after it ends
    /// (`[sandbox] result_ttl_s`, default one hour).
    pub result_ttl: Duration,
    /// Where this process keeps its private scratch directory (workspace copies,
    /// spooled uploads; see [`crate::sessions::scratch`]): `[sandbox] scratch_dir`,
    /// else `$XDG_RUNTIME_DIR/sandgate`, else `scratch` in the default cache
    /// directory.
    pub scratch_dir: PathBuf,
    /// Connections, timeouts and the Host/Origin rules of the HTTP server.
    pub http: HttpConfig,
    /// Where policies come from.
    pub policies: PolicySource,
    /// Known cost tiers, cheapest first.
    pub tiers: Vec<String>,
    /// Where the ledger, budgets and rate limits live.
    pub store: StoreConfig,
    /// API keys (hashes only). None configured: the embedded default's local user.
    pub keys: Vec<KeyEntry>,
    /// Model providers, models, tiers (cheapest first) and router settings.
    pub models: crate::model::Catalog,
    /// Upstream MCP servers and the Code Mode server's settings.
    pub mcp: crate::mcp::McpConfig,
    /// Where OpenTelemetry traces go (`[telemetry]`).
    pub telemetry: crate::telemetry::trace::TelemetryConfig,
    /// The file this configuration came from, if any (reloaded on SIGHUP).
    pub path: Option<PathBuf>,
}

/// `[http]`: what the HTTP server accepts and how long it waits.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest time to receive a request's headers once its first byte arrived.
    pub header_timeout: Duration,
    /// Longest time to receive a request's whole body once its headers arrived.
    pub body_timeout: Duration,
    /// Longest a connection may sit with no request in flight before it is closed;
    /// also how long a response may wait for a client that does not read it.
    pub idle_timeout: Duration,
    /// Connections open at once; at the cap, the longest-idle connection is closed to
    /// make room (also kept below the process's open-file limit).
    pub max_connections: usize,
    /// After SIGTERM, how long in-flight requests get to finish before executions are
    /// cancelled (and recorded) and connections closed.
    pub shutdown_grace: Duration,
    /// `Host` values every route accepts (each `name` or `name:port`). `None`: loopback
    /// names in local mode, any host in keyed mode (every request is authenticated).
    pub allowed_hosts: Option<Vec<String>>,
    /// Browser origins (`scheme://host[:port]`) allowed to call the API cross-origin;
    /// any other foreign `Origin` gets 403.
    pub cors_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(10),
            allowed_hosts: None,
            cors_origins: Vec::new(),
        }
    }
}

/// Where the policy files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// `*.toml` in this directory, watched for changes.
    Dir(PathBuf),
    /// The example policies compiled into the binary: used when no directory is
    /// configured and `./policies` does not exist.
    Embedded,
}

pub use crate::store::StoreConfig;

/// Connections each replica keeps to a PostgreSQL store, unless `[store] pool` says.
pub const DEFAULT_STORE_POOL: usize = 16;

/// The default ledger file: `$XDG_DATA_HOME/sandgate/ledger.db`, else
/// `$HOME/.local/share/sandgate/ledger.db`, else `./sandgate-ledger.db`.
pub fn default_ledger_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("sandgate").join("ledger.db");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/share/sandgate/ledger.db");
    }
    PathBuf::from("sandgate-ledger.db")
}

/// The tiers known when the configuration names none.
pub const DEFAULT_TIERS: [&str; 3] = ["economy", "standard", "frontier"];

impl Default for Config {
    fn default() -> Self {
        Self::from_raw(raw::RawConfig::default(), Path::new("<defaults>")).expect("embedded defaults are valid")
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid { path: PathBuf, key: &'static str, message: String },
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut config = Self::parse(&text, path)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        Self::from_raw(raw, path)
    }

    fn from_raw(raw: raw::RawConfig, path: &Path) -> Result<Self, ConfigError> {
        let invalid =
            |key: &'static str, message: String| ConfigError::Invalid { path: path.to_path_buf(), key, message };
        let listen = raw
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse::<SocketAddr>()
            .map_err(|e| invalid("listen", format!("not an address such as 127.0.0.1:8420: {e}")))?;
        let sandbox = raw.sandbox.unwrap_or_default();
        let defaults = SandboxConfig::default();
        let max_memory_bytes = sandbox.max_memory_bytes.unwrap_or(defaults.max_memory_bytes);
        if max_memory_bytes < 8 << 20 {
            return Err(invalid(
                "sandbox.max_memory_bytes",
                "must be at least 8 MiB (8388608): the guest needs it to start".into(),
            ));
        }
        let max_concurrent = sandbox.max_concurrent.unwrap_or(defaults.max_concurrent);
        if max_concurrent == 0 || max_concurrent > 10_000 {
            return Err(invalid("sandbox.max_concurrent", "must be between 1 and 10000".into()));
        }
        let cache_dir = match sandbox.cache_dir {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(dir),
            None => std::env::var_os("SANDGATE_CACHE_DIR").map(PathBuf::from).or(defaults.cache_dir),
        };
        let scratch_dir = match sandbox.scratch_dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                return Err(invalid("sandbox.scratch_dir", "must name a directory".into()))
            }
            Some(dir) => relative_to(path, dir),
            None => default_scratch_dir(),
        };
        let http = http_config(raw.http.unwrap_or_default()).map_err(|(key, message)| invalid(key, message))?;
        let policies = match raw.policies {
            Some(dir) => PolicySource::Dir(relative_to(path, dir)),
            None if Path::new("policies").is_dir() => PolicySource::Dir(PathBuf::from("policies")),
            None => PolicySource::Embedded,
        };
        let raw_tiers = match raw.tiers {
            Some(tiers) if tiers.is_empty() => return Err(invalid("tiers", "at least one tier is needed".into())),
            Some(tiers) => tiers.into_iter().map(|(name, tier)| (name, tier.models)).collect(),
            None => DEFAULT_TIERS.iter().map(|t| (t.to_string(), Vec::new())).collect::<Vec<_>>(),
        };
        let models = models::build(
            raw.providers.unwrap_or_default(),
            raw.models.unwrap_or_default(),
            &raw_tiers,
            raw.router.unwrap_or_default(),
        )
        .map_err(|(key, message)| invalid(key, message))?;
        let tiers = models.tiers.iter().map(|t| t.name.clone()).collect();
        let raw_store = raw.store.unwrap_or_default();
        if raw_store.url.is_some() && raw.ledger.is_some() {
            return Err(invalid(
                "ledger",
                "[ledger] configures the embedded SQLite store and [store] url a PostgreSQL one: keep one".into(),
            ));
        }
        // The environment's URL wins over the file's SQLite settings, so that one
        // configuration file serves a single node and, with the variable set, a replica.
        let url = raw_store.url.or_else(|| std::env::var("SANDGATE_STORE_URL").ok().filter(|u| !u.is_empty()));
        let store = match (url, raw.ledger) {
            (Some(url), _) => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(invalid("store.url", "must be a PostgreSQL URL: postgres://USER@HOST:PORT/DB".into()));
                }
                let pool = raw_store.pool.unwrap_or(DEFAULT_STORE_POOL);
                if !(1..=1000).contains(&pool) {
                    return Err(invalid("store.pool", "must be between 1 and 1000".into()));
                }
                StoreConfig::Postgres { url, pool }
            }
            (None, ledger) => {
                if raw_store.pool.is_some() {
                    return Err(invalid("store.pool", "sizes the PostgreSQL pool; set [store] url too".into()));
                }
                let ledger = ledger.unwrap_or_default();
                StoreConfig::Sqlite {
                    path: ledger
                        .path
                        .map(|p| relative_to(path, p))
                        .or_else(|| std::env::var_os("SANDGATE_LEDGER").map(PathBuf::from))
                        .unwrap_or_else(default_ledger_path),
                    synchronous: ledger.synchronous.unwrap_or_default(),
                }
            }
        };
        let mcp = mcp::build(raw.mcp.unwrap_or_default(), path).map_err(|(key, message)| invalid(key, message))?;
        let telemetry = raw.telemetry.unwrap_or_default();
        if let Some(endpoint) = &telemetry.otlp_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(invalid("telemetry.otlp_endpoint", format!("`{endpoint}` is not an http(s) URL")));
            }
        }
        let telemetry = crate::telemetry::trace::TelemetryConfig {
            otlp_endpoint: telemetry.otlp_endpoint,
            service_name: telemetry.service_name,
        };
        let mut keys: Vec<KeyEntry> = Vec::new();
        for key in raw.keys.unwrap_or_default() {
            let hash = crate::auth::parse_hash(&key.hash)
                .map_err(|e| invalid("keys.hash", format!("key `{}`: {e}", key.name)))?;
            if key.name.is_empty() || key.user.is_empty() || key.team.is_empty() {
                return Err(invalid("keys", "every key needs a non-empty name, user and team".into()));
            }
            if keys.iter().any(|k| k.name == key.name) {
                return Err(invalid("keys.name", format!("key name `{}` is used twice", key.name)));
            }
            keys.push(KeyEntry { name: key.name, user: key.user, team: key.team, role: key.role, hash });
        }
        Ok(Config {
            listen,
            log_format: raw.log_format.unwrap_or_default(),
            sandbox: SandboxConfig {
                max_concurrent,
                cpu_slots: sandbox.cpu_slots.unwrap_or(defaults.cpu_slots),
                queue_timeout: sandbox.queue_timeout_ms.map(Duration::from_millis).unwrap_or(defaults.queue_timeout),
                max_memory_bytes,
                cache_dir,
            },
            test_capability: sandbox.test_capability.unwrap_or(false),
            result_ttl: match sandbox.result_ttl_s {
                Some(0) => return Err(invalid("sandbox.result_ttl_s", "must be at least 1".into())),
                Some(seconds) => Duration::from_secs(seconds),
                None => DEFAULT_RESULT_TTL,
            },
            scratch_dir,
            http,
            policies,
            tiers,
            store,
            keys,
            models,
            mcp,
            telemetry,
            path: None,
        })
    }
}

fn http_config(raw: raw::RawHttp) -> Result<HttpConfig, (&'static str, String)> {
    let defaults = HttpConfig::default();
    let millis = |value: Option<u64>, default: Duration, key: &'static str| match value {
        Some(0) => Err((key, "must be at least 1 ms".to_string())),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(default),
    };
    let max_connections = raw.max_connections.unwrap_or(defaults.max_connections);
    if max_connections < 16 {
        return Err(("http.max_connections", "must be at least 16".into()));
    }
    for origin in raw.cors_origins.iter().flatten() {
        let valid = (origin.starts_with("http://") || origin.starts_with("https://"))
            && !origin.ends_with('/')
            && origin.split("://").nth(1).is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
        if !valid {
            return Err((
                "http.cors_origins",
                format!("`{origin}` is not an origin such as `https://app.example.com` (scheme, host, optional port)"),
            ));
        }
    }
    for host in raw.allowed_hosts.iter().flatten() {
        if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
            return Err(("http.allowed_hosts", format!("`{host}` is not a host name or `host:port`")));
        }
    }
    Ok(HttpConfig {
        max_body_bytes: raw.max_body_bytes.unwrap_or(defaults.max_body_bytes),
        header_timeout: millis(raw.header_timeout_ms, defaults.header_timeout, "http.header_timeout_ms")?,
        body_timeout: millis(raw.body_timeout_ms, defaults.body_timeout, "http.body_timeout_ms")?,
        idle_timeout: millis(raw.idle_timeout_ms, defaults.idle_timeout, "http.idle_timeout_ms")?,
        max_connections,
        shutdown_grace: millis(raw.shutdown_grace_ms, defaults.shutdown_grace, "http.shutdown_grace_ms")?,
        allowed_hosts: raw.allowed_hosts,
        cors_origins: raw.cors_origins.unwrap_or_default(),
    })
}

/// A path from the configuration file, taken relative to the file's directory.
/// `$XDG_RUNTIME_DIR/sandgate`, else `scratch` in the default cache directory.
fn default_scratch_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("sandgate"),
        None => crate::sandbox::engine::default_cache_dir().join("scratch"),
    }
}

fn relative_to(config: &Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        return path;
    }
    match config.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && config.exists() => dir.join(path),
        _ => path,
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
        assert_eq!(config.tiers, DEFAULT_TIERS);
        assert!(config.keys.is_empty());
    }

    #[test]
    fn bad_files_name_the_file_and_key() {
        let cases = [
            ("lisen = \"x\"", "unknown field `lisen`"),
            ("[sandbox]\nmax_concurrent = \"lots\"", "line 2"),
            ("[sandbox]\nmax_memory_bytes = 1024", "sandbox.max_memory_bytes"),
            ("[limits]\nfuel = 1", "unknown field `limits`"),
            ("listen = \"nowhere\"", "`listen`"),
            ("[sandbox]\nmax_concurrent = 0", "sandbox.max_concurrent"),
            ("[[keys]]\nname = \"a\"\nuser = \"u\"\nteam = \"t\"\nhash = \"md5:x\"", "keys.hash"),
            (
                "[[keys]]\nname = \"a\"\nuser = \"u\"\nteam = \"t\"\nrole = \"boss\"\nhash = \"x\"",
                "unknown variant `boss`",
            ),
            ("[ledger]\nsynchronous = \"sometimes\"", "unknown variant `sometimes`"),
            ("tiers = {}", "at least one tier"),
            ("[mcp.servers.a-b]\ncommand = \"x\"", "mcp.servers"),
            ("[mcp.servers.x]\nurl = \"ftp://h\"", "mcp.servers.url"),
            ("[mcp.servers.x]\ncommand = \"x\"\nurl = \"http://h\"", "exactly one of"),
            ("[mcp.servers.x]\nargs = []", "exactly one of"),
            ("[mcp]\nallowed_hosts = [\"a\"]", "moved to `[http] allowed_hosts`"),
            ("[http]\ncors_origins = [\"app.example.com\"]", "http.cors_origins"),
            ("[http]\nheader_timeout_ms = 0", "http.header_timeout_ms"),
            ("[http]\nmax_connections = 1", "http.max_connections"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.starts_with("sandgate.toml"), "{text:?}: {err}");
        }
    }
}
