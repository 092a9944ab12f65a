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
    /// `[auth]`: the public URL and the OIDC issuers whose tokens are accepted.
    pub auth: crate::auth::oidc::AuthConfig,
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
pub fn default_ledger_path(env: &Env) -> PathBuf {
    if let Some(dir) = env.get("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("sandgate").join("ledger.db");
    }
    if let Some(home) = env.get("HOME") {
        return PathBuf::from(home).join(".local/share/sandgate/ledger.db");
    }
    PathBuf::from("sandgate-ledger.db")
}

/// The default compile cache: `$XDG_CACHE_HOME/sandgate`, else
/// `$HOME/.cache/sandgate`, else `sandgate` in the temporary directory.
fn default_cache_dir(env: &Env) -> PathBuf {
    if let Some(dir) = env.get("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("sandgate");
    }
    if let Some(home) = env.get("HOME") {
        return PathBuf::from(home).join(".cache").join("sandgate");
    }
    std::env::temp_dir().join("sandgate")
}

/// The tiers known when the configuration names none.
pub const DEFAULT_TIERS: [&str; 3] = ["economy", "standard", "frontier"];

impl Default for Config {
    fn default() -> Self {
        Self::from_raw(raw::RawConfig::default(), Path::new("<defaults>"), &Env::from_process())
            .expect("embedded defaults are valid")
    }
}

/// What configuration takes from the environment, read once before any of it is
/// checked, so that validation is a function of the file and this alone.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: std::collections::BTreeMap<String, String>,
}

impl Env {
    /// The process's environment (variables that are not UTF-8 are left out).
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    /// An environment of exactly `vars`.
    pub fn of<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self { vars: vars.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    /// The value of `name`, unless it is unset or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// Where something is in a file: 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A configuration file that cannot be used. Problems in it read
/// `FILE:LINE:COLUMN: message`, as policy errors do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{at}: {message}")]
    Parse { path: PathBuf, at: Location, message: String },
    #[error("{path}:{at}: `{key}`: {message}", at = at.map_or(String::from("1:1"), |at| at.to_string()))]
    Invalid { path: PathBuf, at: Option<Location>, key: String, message: String },
}

/// The line and column of byte `offset` in `text`.
fn location(text: &str, offset: usize) -> Location {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Location { line, column }
}

/// Where the dotted `key` (`sandbox.max_concurrent`, `providers.openai.base_url`) is
/// set in the TOML `text`: the key's own line when it is there, else its table's
/// header; `None` for a key the file does not set (a default, or the environment).
fn locate(text: &str, key: &str) -> Option<Location> {
    let unquote = |part: &str| part.trim().trim_matches('"').trim_matches('\'').to_string();
    let mut table: Vec<String> = Vec::new();
    let mut offset = 0;
    let mut header = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(name) = trimmed.strip_prefix('[') {
            let name = name.trim_start_matches('[');
            let name = name.split(']').next().unwrap_or_default();
            table = name.split('.').map(unquote).collect();
            if table.join(".") == key {
                header = Some(location(text, offset + indent));
            }
        } else if let Some((name, _)) = trimmed.split_once('=') {
            let mut path = table.clone();
            path.extend(name.split('.').map(unquote));
            if path.join(".") == key {
                return Some(location(text, offset + indent));
            }
        }
        offset += line.len();
    }
    header
}

impl Config {
    /// Reads and validates `path`, with the process's environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut config = Self::parse(&text, path)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates configuration text, with the process's environment;
    /// `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_in(text, path, &Env::from_process())
    }

    /// Parses and validates configuration text in the environment `env`.
    pub fn parse_in(text: &str, path: &Path, env: &Env) -> Result<Self, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            at: location(text, e.span().map_or(0, |span| span.start)),
            message: e.message().to_string(),
        })?;
        Self::from_raw(raw, path, env).map_err(|error| match error {
            ConfigError::Invalid { path, key, message, .. } => {
                ConfigError::Invalid { at: locate(text, &key), path, key, message }
            }
            other => other,
        })
    }

    fn from_raw(raw: raw::RawConfig, path: &Path, env: &Env) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            at: None,
            key: key.to_string(),
            message,
        };
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
            None => env.get("SANDGATE_CACHE_DIR").map(PathBuf::from).or_else(|| Some(default_cache_dir(env))),
        };
        let scratch_dir = match sandbox.scratch_dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                return Err(invalid("sandbox.scratch_dir", "must name a directory".into()))
            }
            Some(dir) => relative_to(path, dir),
            None => default_scratch_dir(env),
        };
        let http = http_config(raw.http.unwrap_or_default()).map_err(|(key, message)| invalid(&key, message))?;
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
            env,
        )
        .map_err(|(key, message)| invalid(&key, message))?;
        let tiers = models.tiers.iter().map(|t| t.name.clone()).collect();
        // `[ledger]` is another name for `[store]`: one section, whichever name.
        let raw_store = match (raw.store, raw.ledger) {
            (Some(_), Some(_)) => {
                return Err(invalid("ledger", "`[ledger]` is another name for `[store]`: keep one of them".into()))
            }
            (store, ledger) => store.or(ledger).unwrap_or_default(),
        };
        // The environment's URL wins over the file's SQLite settings, so that one
        // configuration file serves a single node and, with the variable set, a replica.
        let url = raw_store.url.clone().or_else(|| env.get("SANDGATE_STORE_URL").map(str::to_string));
        let store = match url {
            Some(url) => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(invalid("store.url", "must be a PostgreSQL URL: postgres://USER@HOST:PORT/DB".into()));
                }
                let pool = raw_store.pool.unwrap_or(DEFAULT_STORE_POOL);
                if !(1..=1000).contains(&pool) {
                    return Err(invalid("store.pool", "must be between 1 and 1000".into()));
                }
                StoreConfig::Postgres { url, pool }
            }
            None => {
                if raw_store.pool.is_some() {
                    return Err(invalid("store.pool", "sizes the PostgreSQL pool; set [store] url too".into()));
                }
                StoreConfig::Sqlite {
                    path: raw_store
                        .path
                        .map(|p| relative_to(path, p))
                        .or_else(|| env.get("SANDGATE_LEDGER").map(PathBuf::from))
                        .unwrap_or_else(|| default_ledger_path(env)),
                    synchronous: raw_store.synchronous.unwrap_or_default(),
                }
            }
        };
        let mcp = mcp::build(raw.mcp.unwrap_or_default(), path).map_err(|(key, message)| invalid(&key, message))?;
        if let Some(rerank) = &mcp.search.rerank {
            let known = match rerank.strip_prefix("tier:") {
                Some(tier) => models.tiers.iter().any(|t| t.name == tier),
                None => models.models.contains_key(rerank),
            };
            if !known {
                return Err(invalid(
                    "mcp.search.rerank",
                    format!("`{rerank}` is neither a model of [models] nor `tier:NAME` of a configured tier"),
                ));
            }
        }
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
        let auth = auth_config(raw.auth.unwrap_or_default()).map_err(|(key, message)| invalid(&key, message))?;
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
            keys.push(KeyEntry::operator(key.name, key.user, key.team, key.role, hash));
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
                compiler: sandbox.compiler.unwrap_or(defaults.compiler),
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
            auth,
            path: None,
        })
    }
}

fn http_url(text: &str) -> bool {
    (text.starts_with("https://") || text.starts_with("http://")) && text.len() > "https://".len()
}

fn auth_config(raw: raw::RawAuth) -> Result<crate::auth::oidc::AuthConfig, (String, String)> {
    let public_url = raw.public_url.map(|u| u.trim_end_matches('/').to_string());
    if let Some(url) = &public_url {
        if !http_url(url) {
            return Err(("auth.public_url".into(), format!("`{url}` is not an http(s) URL")));
        }
    }
    let mut oidc = Vec::new();
    for issuer in raw.oidc {
        let name = issuer.name.unwrap_or_else(|| "sso".into());
        let key = |field: &str| format!("auth.oidc.{field}");
        if !http_url(&issuer.issuer) {
            return Err((key("issuer"), format!("`{}` is not an http(s) URL", issuer.issuer)));
        }
        if oidc.iter().any(|o: &crate::auth::oidc::OidcConfig| o.name == name || o.issuer == issuer.issuer) {
            return Err((key("name"), format!("issuer `{name}` ({}) is configured twice", issuer.issuer)));
        }
        // Tokens must be meant for sandgate: its own resource identifiers, by default
        // the public URL and its MCP endpoint.
        let audiences = match (issuer.audiences, &public_url) {
            (Some(list), _) if !list.is_empty() => list,
            (_, Some(url)) => vec![url.clone(), format!("{url}/mcp")],
            _ => {
                return Err((
                    key("audiences"),
                    format!(
                        "issuer `{name}` needs the audiences its tokens must carry: set audiences, or [auth] \
                         public_url (then sandgate accepts tokens for PUBLIC_URL and PUBLIC_URL/mcp)"
                    ),
                ))
            }
        };
        let header = issuer.header.map(|h| h.trim().to_ascii_lowercase());
        if let Some(header) = &header {
            if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() || header == "authorization" {
                return Err((key("header"), format!("`{header}` is not a header name sandgate can read a token from")));
            }
        }
        oidc.push(crate::auth::oidc::OidcConfig {
            name,
            issuer: issuer.issuer,
            audiences,
            header,
            user_claim: issuer.user_claim.unwrap_or_else(|| "email".into()),
            teams_claim: issuer.teams_claim.unwrap_or_else(|| "groups".into()),
            teams: issuer.teams,
            default_team: issuer.default_team,
            admin_groups: issuer.admin_groups,
            leeway: Duration::from_secs(issuer.leeway_s.unwrap_or(60).min(600)),
            jwks_refresh: Duration::from_secs(issuer.jwks_refresh_s.unwrap_or(30).max(1)),
            client_id: issuer.client_id,
            client_secret_env: issuer.client_secret_env,
            cli_client_id: issuer.cli_client_id,
            scopes: issuer
                .scopes
                .unwrap_or_else(|| ["openid", "email", "profile", "groups"].map(str::to_string).to_vec()),
        });
    }
    Ok(crate::auth::oidc::AuthConfig { public_url, oidc })
}

fn http_config(raw: raw::RawHttp) -> Result<HttpConfig, (String, String)> {
    let defaults = HttpConfig::default();
    let millis = |value: Option<u64>, default: Duration, key: &'static str| match value {
        Some(0) => Err((key.to_string(), "must be at least 1 ms".to_string())),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(default),
    };
    let max_connections = raw.max_connections.unwrap_or(defaults.max_connections);
    if max_connections < 16 {
        return Err(("http.max_connections".into(), "must be at least 16".into()));
    }
    for origin in raw.cors_origins.iter().flatten() {
        let valid = (origin.starts_with("http://") || origin.starts_with("https://"))
            && !origin.ends_with('/')
            && origin.split("://").nth(1).is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
        if !valid {
            return Err((
                "http.cors_origins".into(),
                format!("`{origin}` is not an origin such as `https://app.example.com` (scheme, host, optional port)"),
            ));
        }
    }
    for host in raw.allowed_hosts.iter().flatten() {
        if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
            return Err(("http.allowed_hosts".into(), format!("`{host}` is not a host name or `host:port`")));
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

/// `$XDG_RUNTIME_DIR/sandgate`, else `scratch` in the default cache directory.
fn default_scratch_dir(env: &Env) -> PathBuf {
    match env.get("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("sandgate"),
        None => default_cache_dir(env).join("scratch"),
    }
}

/// A path from the configuration file, taken relative to the file's directory.
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
    fn bad_files_name_the_file_line_column_and_key() {
        let cases = [
            ("lisen = \"x\"", "sandgate.toml:1:1: unknown field `lisen`"),
            ("[sandbox]\nmax_concurrent = \"lots\"", "sandgate.toml:2:18: invalid type"),
            ("[sandbox]\nmax_memory_bytes = 1024", "sandgate.toml:2:1: `sandbox.max_memory_bytes`"),
            ("[limits]\nfuel = 1", "unknown field `limits`"),
            ("listen = \"nowhere\"", "sandgate.toml:1:1: `listen`"),
            ("\n[sandbox]\n  max_concurrent = 0", "sandgate.toml:3:3: `sandbox.max_concurrent`"),
            ("[[keys]]\nname = \"a\"\nuser = \"u\"\nteam = \"t\"\nhash = \"md5:x\"", "keys.hash"),
            (
                "[[keys]]\nname = \"a\"\nuser = \"u\"\nteam = \"t\"\nrole = \"boss\"\nhash = \"x\"",
                "unknown variant `boss`",
            ),
            ("[ledger]\nsynchronous = \"sometimes\"", "sandgate.toml:2:15: unknown variant `sometimes`"),
            ("[sandbox]\ncompiler = \"fast\"", "sandgate.toml:2:12: unknown variant `fast`, expected one of `tiered`"),
            (
                "[store]\npath = \"a.db\"\n[ledger]\npath = \"b.db\"",
                "sandgate.toml:3:1: `ledger`: `[ledger]` is another name",
            ),
            ("tiers = {}", "at least one tier"),
            ("[auth]\npublic_url = \"ftp://x\"", "`auth.public_url`"),
            (
                "[[auth.oidc]]\nissuer = \"https://idp.example\"",
                "`auth.oidc.audiences`: issuer `sso` needs the audiences",
            ),
            ("[[auth.oidc]]\nissuer = \"idp.example\"\naudiences = [\"a\"]", "`auth.oidc.issuer`"),
            (
                "[[auth.oidc]]\nissuer = \"https://i.example\"\naudiences = [\"a\"]\nheader = \"Authorization\"",
                "`auth.oidc.header`",
            ),
            ("[[auth.oidc]]\nissuer = \"https://i.example\"\nclaims = 1", "unknown field `claims`"),
            ("[mcp.servers.a-b]\ncommand = \"x\"", "sandgate.toml:1:1: `mcp.servers.a-b`"),
            ("[mcp.servers.x]\nurl = \"ftp://h\"", "sandgate.toml:2:1: `mcp.servers.x.url`"),
            ("[mcp.servers.x]\ncommand = \"x\"\nurl = \"http://h\"", "exactly one of"),
            ("[mcp.servers.x]\nargs = []", "exactly one of"),
            ("[mcp]\nallowed_hosts = [\"a\"]", "moved to `[http] allowed_hosts`"),
            ("[mcp.search]\nrerank = \"nobody\"", "`mcp.search.rerank`: `nobody` is neither a model"),
            ("[mcp.search]\nrerank = \"tier:gold\"", "`mcp.search.rerank`"),
            ("[mcp.search]\nrerank_candidates = 1", "`mcp.search.rerank_candidates`"),
            ("[mcp.search]\nrerank_timeout_ms = 0", "`mcp.search.rerank_timeout_ms`"),
            ("[mcp.search]\nreranker = \"x\"", "unknown field `reranker`"),
            ("[http]\ncors_origins = [\"app.example.com\"]", "sandgate.toml:2:1: `http.cors_origins`"),
            ("[http]\nheader_timeout_ms = 0", "http.header_timeout_ms"),
            ("[http]\nmax_connections = 1", "http.max_connections"),
            ("[providers.p]\nkind = \"openai\"\nbase_url = \"ftp://x\"", "sandgate.toml:3:1: `providers.p.base_url`"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.starts_with("sandgate.toml:"), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_environment_is_read_once_and_passed_in() {
        let env = Env::of([("SANDGATE_STORE_URL", "postgres://u@h/db"), ("XDG_RUNTIME_DIR", "/run/u")]);
        let config = Config::parse_in("", Path::new("sandgate.toml"), &env).unwrap();
        assert_eq!(config.store, StoreConfig::Postgres { url: "postgres://u@h/db".into(), pool: DEFAULT_STORE_POOL });
        assert_eq!(config.scratch_dir, PathBuf::from("/run/u/sandgate"));
        let env = Env::of([("HOME", "/home/u")]);
        let config = Config::parse_in("[store]\nsynchronous = \"full\"", Path::new("sandgate.toml"), &env).unwrap();
        assert_eq!(
            config.store,
            StoreConfig::Sqlite {
                path: PathBuf::from("/home/u/.local/share/sandgate/ledger.db"),
                synchronous: crate::store::sqlite::Synchronous::Full
            },
            "[store] takes what [ledger] takes"
        );
    }
}
