//! The upstream client pool: one supervised rmcp client per configured server.
//!
//! Each server has a supervisor task that connects (spawns the process or opens the
//! HTTP session, then `initialize`), lists its tools, and then waits for either the
//! connection to end or a `notifications/tools/list_changed`. A server that fails to
//! connect or exits is reported in the log and reconnected: at once after a
//! connection that lived a while, then with exponential backoff (0.5 s doubling to
//! 30 s, with jitter). A server that is down is never fatal to sandgate.
//!
//! Calls made while a server is (re)connecting wait for it, up to the call's
//! timeout; calls made while it is in a long backoff fail at once with the last
//! error, so code can handle the failure instead of stalling.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, ClientConfig, Implementation, ProtocolVersion, RequestParamsMeta, Tool};
use rmcp::service::{NotificationContext, Peer, RoleClient, RunningService};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::Value;
use tokio::sync::{watch, Notify};

use super::catalog::{Catalog, ServerSummary};
use super::{McpConfig, Transport, UpstreamConfig};
use crate::error::Kind;
use crate::sandbox::ExecError;

/// A connection that stays up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Calls wait through backoff delays up to this long; longer ones fail calls at once.
const WAIT_THROUGH: Duration = Duration::from_secs(2);

/// Every configured upstream server and the catalog of their tools.
pub struct Upstreams {
    config: McpConfig,
    servers: BTreeMap<String, Arc<Upstream>>,
    catalog: RwLock<Arc<Catalog>>,
    /// Bumped whenever the catalog changes.
    version: watch::Sender<u64>,
    /// Dropped with the pool: its receivers see the channel close and the supervisors
    /// end, closing their connections (a stdio server's process is killed).
    _alive: watch::Sender<()>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").field("servers", &self.servers.keys()).finish_non_exhaustive()
    }
}

/// Where one upstream server's connection stands.
#[derive(Clone)]
enum State {
    /// Connecting now, or about to retry after a short delay: calls wait.
    Connecting,
    Ready(Peer<RoleClient>),
    /// Failed and waiting out a long backoff: calls fail at once with this error.
    Down(String),
}

struct Upstream {
    config: UpstreamConfig,
    state: watch::Sender<State>,
    tools: Mutex<Vec<Tool>>,
    /// The server's own description or title, from its `initialize` answer.
    about: Mutex<Option<String>>,
    list_changed: Arc<Notify>,
}

/// The client side of one connection: turns list-changed notifications into a refresh.
struct Client {
    list_changed: Arc<Notify>,
}

impl ClientHandler for Client {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.list_changed.notify_one();
    }

    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default().with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE);
        info.client_info = Implementation::new("sandgate", env!("CARGO_PKG_VERSION"));
        info
    }
}

impl Upstreams {
    /// Starts a supervisor for every configured server. Must run inside a Tokio
    /// runtime. Returns at once; servers come up in the background.
    pub fn start(config: McpConfig) -> Arc<Self> {
        let servers = config
            .servers
            .iter()
            .map(|server| {
                let upstream = Arc::new(Upstream {
                    config: server.clone(),
                    state: watch::Sender::new(State::Connecting),
                    tools: Mutex::new(Vec::new()),
                    about: Mutex::new(None),
                    list_changed: Arc::new(Notify::new()),
                });
                (server.name.clone(), upstream)
            })
            .collect::<BTreeMap<_, _>>();
        let alive = watch::Sender::new(());
        let pool = Arc::new(Self {
            catalog: RwLock::new(Arc::new(Catalog::default())),
            version: watch::Sender::new(0),
            servers,
            config,
            _alive: alive.clone(),
        });
        pool.rebuild_catalog();
        for upstream in pool.servers.values() {
            let alive = alive.subscribe();
            let supervisor = supervise(upstream.clone(), Arc::downgrade(&pool));
            tokio::spawn(async move {
                let mut alive = alive;
                tokio::select! {
                    () = supervisor => {}
                    _ = alive.changed() => {}
                }
            });
        }
        drop(alive);
        pool
    }

    pub fn config(&self) -> &McpConfig {
        &self.config
    }

    /// The current catalog of every upstream tool.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Resolves once every server has finished its first connection attempt
    /// (connected and listed, or failed), or after the connect timeout.
    pub async fn settled(&self) {
        let timeout = self.config.connect_timeout;
        let all = async {
            for upstream in self.servers.values() {
                let mut state = upstream.state.subscribe();
                let _ = state.wait_for(|s| !matches!(s, State::Connecting)).await;
            }
        };
        let _ = tokio::time::timeout(timeout, all).await;
        // A supervisor publishes its state just before rebuilding the catalog.
        self.rebuild_catalog();
    }

    /// A receiver that sees a new value whenever the listing changes: a tool, a
    /// declaration or a server description (not a mere status change).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Calls tool `tool` (its upstream name) on `server` and unwraps the result.
    pub async fn call(
        &self,
        server: &str,
        tool: &str,
        args: serde_json::Map<String, Value>,
        trace: &opentelemetry::Context,
    ) -> Result<Value, ExecError> {
        let upstream = self.upstream(server)?;
        let timeout = upstream.config.call_timeout;
        let started = Instant::now();
        let peer = upstream.ready_peer(timeout).await?;
        let mut request = CallToolRequestParams::new(tool.to_string()).with_arguments(args);
        // The caller's trace goes on to the tool (SEP-414: `_meta.traceparent`).
        for (field, value) in crate::telemetry::trace::fields(trace) {
            match field.as_str() {
                "traceparent" => request.set_traceparent(&value),
                "tracestate" => request.set_tracestate(&value),
                _ => {}
            }
        }
        let remaining = timeout.saturating_sub(started.elapsed());
        let result = match tokio::time::timeout(remaining, peer.call_tool(request)).await {
            Err(_) => {
                return Err(tool_error(format!(
                    "`{server}.{tool}` did not answer within {}",
                    humantime::format_duration(timeout)
                )))
            }
            Ok(Err(e)) => return Err(tool_error(format!("`{server}.{tool}` failed: {e}"))),
            Ok(Ok(result)) => result,
        };
        let value = unwrap_result(result)?;
        let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > self.config.max_result_bytes {
            return Err(tool_error(format!(
                "`{server}.{tool}` returned {size} bytes; the limit is {} (`mcp.max_result_bytes`)",
                self.config.max_result_bytes
            )));
        }
        Ok(value)
    }

    /// Waits until `server` is connected (up to its call timeout); the error says why
    /// it is not.
    pub async fn wait_ready(&self, server: &str) -> Result<(), ExecError> {
        let upstream = self.upstream(server)?;
        upstream.ready_peer(upstream.config.call_timeout).await?;
        self.rebuild_catalog();
        Ok(())
    }

    fn upstream(&self, server: &str) -> Result<&Arc<Upstream>, ExecError> {
        self.servers.get(server).ok_or_else(|| ExecError::new(Kind::ToolDenied, format!("no MCP server `{server}`")))
    }

    fn rebuild_catalog(&self) {
        let servers = self
            .servers
            .values()
            .map(|upstream| {
                let status = match &*upstream.state.borrow() {
                    State::Ready(_) => ServerSummary::READY.to_string(),
                    State::Connecting => "connecting".to_string(),
                    State::Down(error) => format!("down: {error}"),
                };
                let summary = ServerSummary { name: upstream.config.name.clone(), description: None, status };
                let description = upstream
                    .config
                    .description
                    .clone()
                    .or_else(|| upstream.about.lock().unwrap_or_else(|e| e.into_inner()).clone());
                let tools = upstream.tools.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let server = summary.name.clone();
                metrics::gauge!("sandgate_mcp_server_up", "server" => server.clone()).set(if summary.is_ready() {
                    1.0
                } else {
                    0.0
                });
                metrics::gauge!("sandgate_mcp_tools", "server" => server).set(tools.len() as f64);
                (ServerSummary { description, ..summary }, tools)
            })
            .collect();
        let catalog = Arc::new(Catalog::build(servers));
        let old = std::mem::replace(&mut *self.catalog.write().unwrap_or_else(|e| e.into_inner()), catalog.clone());
        if !old.same_listing(&catalog) {
            self.version.send_modify(|v| *v += 1);
        }
    }
}

impl Upstream {
    /// The live connection, waiting while one is being made.
    async fn ready_peer(&self, timeout: Duration) -> Result<Peer<RoleClient>, ExecError> {
        // Nearly always ready: no timer then.
        if let State::Ready(peer) = &*self.state.borrow() {
            return Ok(peer.clone());
        }
        let name = &self.config.name;
        let mut state = self.state.subscribe();
        let wait = state.wait_for(|s| !matches!(s, State::Connecting));
        let state = match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(state)) => state.clone(),
            Ok(Err(_)) => State::Down("the pool is shutting down".into()),
            Err(_) => {
                return Err(tool_error(format!(
                    "MCP server `{name}` did not come up within {}",
                    humantime::format_duration(timeout)
                )))
            }
        };
        match state {
            State::Ready(peer) => Ok(peer),
            State::Down(error) => Err(tool_error(format!("MCP server `{name}` is unavailable: {error}"))),
            State::Connecting => Err(tool_error(format!("MCP server `{name}` is still connecting"))),
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<RunningService<RoleClient, Client>, String> {
        let client = Client { list_changed: self.list_changed.clone() };
        let connecting = async {
            match &self.config.transport {
                Transport::Stdio { command, args, env, cwd } => {
                    let mut cmd = tokio::process::Command::new(command);
                    cmd.args(args).env_clear().kill_on_drop(true);
                    for name in std::iter::once("PATH").chain(env.iter().map(String::as_str)) {
                        if let Some(value) = std::env::var_os(name) {
                            cmd.env(name, value);
                        }
                    }
                    if let Some(dir) = cwd {
                        cmd.current_dir(dir);
                    }
                    let (transport, _stderr) = rmcp::transport::TokioChildProcess::builder(cmd)
                        .stderr(std::process::Stdio::inherit())
                        .spawn()
                        .map_err(|e| format!("cannot start `{command}`: {e}"))?;
                    client.serve(transport).await.map_err(|e| e.to_string())
                }
                Transport::Http { url, headers } => {
                    let mut custom = std::collections::HashMap::new();
                    for (header, variable) in headers {
                        let value = std::env::var(variable)
                            .map_err(|_| format!("header `{header}`: environment variable `{variable}` is not set"))?;
                        let name = axum::http::HeaderName::try_from(header.as_str())
                            .map_err(|e| format!("header `{header}`: {e}"))?;
                        let value = axum::http::HeaderValue::try_from(value)
                            .map_err(|e| format!("header `{header}` (from `{variable}`): {e}"))?;
                        custom.insert(name, value);
                    }
                    let config =
                        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                            url.as_str(),
                        )
                        .custom_headers(custom);
                    let transport = rmcp::transport::StreamableHttpClientTransport::from_config(config);
                    client.serve(transport).await.map_err(|e| e.to_string())
                }
            }
        };
        match tokio::time::timeout(timeout, connecting).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer to `initialize` within {}", humantime::format_duration(timeout))),
        }
    }

    async fn list_tools(&self, peer: &Peer<RoleClient>) -> Result<(), String> {
        let tools = tokio::time::timeout(self.config.call_timeout, peer.list_all_tools())
            .await
            .map_err(|_| "`tools/list` timed out".to_string())?
            .map_err(|e| format!("`tools/list` failed: {e}"))?;
        tracing::info!(server = %self.config.name, tools = tools.len(), "MCP server tools listed");
        *self.tools.lock().unwrap_or_else(|e| e.into_inner()) = tools;
        Ok(())
    }
}

/// Keeps one upstream connected for as long as the pool exists.
async fn supervise(upstream: Arc<Upstream>, pool: std::sync::Weak<Upstreams>) {
    let name = upstream.config.name.clone();
    let mut failures: u32 = 0;
    loop {
        let Some(connect_timeout) = pool.upgrade().map(|p| p.config.connect_timeout) else { return };
        upstream.state.send_replace(State::Connecting);
        let error = match upstream.connect(connect_timeout).await {
            Err(error) => error,
            Ok(running) => {
                let peer = running.peer().clone();
                *upstream.about.lock().unwrap_or_else(|e| e.into_inner()) = peer.peer_info().and_then(|info| {
                    let server = info.server_info.as_ref()?;
                    server.description.as_deref().or(server.title.as_deref()).map(first_sentence)
                });
                match upstream.list_tools(&peer).await {
                    Err(error) => error,
                    Ok(()) => {
                        tracing::info!(server = %name, "MCP server connected");
                        upstream.state.send_replace(State::Ready(peer.clone()));
                        if let Some(pool) = pool.upgrade() {
                            pool.rebuild_catalog();
                        }
                        let connected_at = Instant::now();
                        let mut waiting = std::pin::pin!(running.waiting());
                        let reason = loop {
                            tokio::select! {
                                reason = &mut waiting => break reason,
                                () = upstream.list_changed.notified() => {
                                    if let Err(error) = upstream.list_tools(&peer).await {
                                        tracing::warn!(server = %name, %error, "refreshing the tool list failed");
                                    }
                                    match pool.upgrade() {
                                        Some(pool) => pool.rebuild_catalog(),
                                        None => return,
                                    }
                                }
                            }
                        };
                        if connected_at.elapsed() >= STABLE_AFTER {
                            failures = 0;
                        }
                        match reason {
                            Ok(reason) => format!("connection ended ({reason:?})"),
                            Err(e) => format!("connection ended: {e}"),
                        }
                    }
                }
            }
        };
        let delay = backoff(failures);
        failures = failures.saturating_add(1);
        tracing::warn!(server = %name, %error, retry_in_ms = delay.as_millis() as u64, "MCP server unavailable");
        upstream.state.send_replace(if delay <= WAIT_THROUGH { State::Connecting } else { State::Down(error) });
        match pool.upgrade() {
            Some(pool) => pool.rebuild_catalog(),
            None => return,
        }
        tokio::time::sleep(delay).await;
    }
}

/// The delay before reconnect attempt `failures` (0: at once).
fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let base =
        Duration::from_millis(500).saturating_mul(1 << failures.min(6).saturating_sub(1)).min(Duration::from_secs(30));
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    base + base.mul_f64(f64::from(byte[0]) / 255.0 * 0.2)
}

fn tool_error(message: String) -> ExecError {
    ExecError::new(Kind::ToolError, message)
}

/// The first sentence (or line) of a server's description, at most 200 characters.
fn first_sentence(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or_default();
    let end = line.find(". ").map(|i| i + 1).unwrap_or(line.len());
    line[..end].chars().take(200).collect()
}

/// A tool result as guest code sees it: `structuredContent` when present; otherwise
/// the text content, parsed as JSON when it is JSON; several content blocks become
/// an array. `isError` becomes a `tool_error` carrying the tool's text.
pub fn unwrap_result(result: rmcp::model::CallToolResult) -> Result<Value, ExecError> {
    let texts = || {
        result.content.iter().filter_map(|block| block.as_text().map(|t| t.text.clone())).collect::<Vec<_>>().join("\n")
    };
    if result.is_error == Some(true) {
        let message = texts();
        return Err(tool_error(if message.is_empty() { "the tool reported an error".into() } else { message }));
    }
    if let Some(structured) = result.structured_content {
        return Ok(structured);
    }
    let block_value = |block: &rmcp::model::ContentBlock| match block.as_text() {
        Some(text) => serde_json::from_str(&text.text).unwrap_or_else(|_| Value::String(text.text.clone())),
        None => serde_json::to_value(block).unwrap_or(Value::Null),
    };
    Ok(match result.content.as_slice() {
        [] => Value::Null,
        [one] => block_value(one),
        many => Value::Array(many.iter().map(block_value).collect()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{CallToolResult, ContentBlock};

    #[test]
    fn results_unwrap_to_what_code_expects() {
        let structured = CallToolResult::structured(serde_json::json!({"sum": 3}));
        assert_eq!(unwrap_result(structured).unwrap(), serde_json::json!({"sum": 3}));
        let json_text = CallToolResult::success(vec![ContentBlock::text("{\"a\": [1, 2]}")]);
        assert_eq!(unwrap_result(json_text).unwrap(), serde_json::json!({"a": [1, 2]}));
        let plain = CallToolResult::success(vec![ContentBlock::text("Echo: hi")]);
        assert_eq!(unwrap_result(plain).unwrap(), serde_json::json!("Echo: hi"));
        let two = CallToolResult::success(vec![ContentBlock::text("1"), ContentBlock::text("x")]);
        assert_eq!(unwrap_result(two).unwrap(), serde_json::json!([1, "x"]));
        let failed = CallToolResult::error(vec![ContentBlock::text("no such file")]);
        let error = unwrap_result(failed).unwrap_err();
        assert_eq!((error.kind, error.message.as_str()), (Kind::ToolError, "no such file"));
    }

    #[test]
    fn backoff_starts_at_once_and_is_capped() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert!(backoff(1) >= Duration::from_millis(500) && backoff(1) <= Duration::from_millis(600));
        assert!(backoff(30) <= Duration::from_secs(36));
        assert_eq!(first_sentence("Serves files. Use it well.\nMore."), "Serves files.");
    }
}
