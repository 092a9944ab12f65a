//! The MCP server clients see ("Code Mode"): exactly two tools.
//!
//! - `search {query, limit?}`: the best-matching tools this caller may use, as
//!   TypeScript declarations (words and meaning, see `super::search`; no network),
//!   or, when nothing fits, the caller's servers and their tools to ask again with.
//! - `execute {code, input?, language?}`: runs the code (TypeScript by default) in the
//!   sandbox under the caller's policies, exactly as `POST /v1/execute` does; the
//!   result and console output come back as text and as `structuredContent`, failures
//!   as `isError` with kind, message and position. Console lines are also sent while
//!   the code runs, as `notifications/message` and, when the request carries a
//!   progress token, `notifications/progress`.
//!
//! Served over streamable HTTP at `/mcp` (each request authenticated with its Bearer
//! key, see `crate::http`) and over stdio by `sandgate mcp` (one principal, from
//! the key in `SANDGATE_API_KEY`). Tool descriptions name the servers the caller can
//! reach, so they cost the same few hundred tokens however many upstream tools exist.

use std::sync::Arc;

#[allow(deprecated)] // logging: see `CodeMode::execute`
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, JsonObject, ListToolsResult,
    LoggingLevel, LoggingMessageNotificationParam, PaginatedRequestParams, ProgressNotificationParam,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::catalog::View;
use super::search::{Match, Method};
use crate::auth::Principal;
use crate::sandbox::{ExecuteRequest, Language, LogLevel, LogLine, PartialLimits};
use crate::service::Service;

const SEARCH_DEFAULT_LIMIT: usize = 5;
const SEARCH_MAX_LIMIT: usize = 50;
/// Tool names listed per server when a search finds nothing that fits.
const GUIDE_TOOLS_PER_SERVER: usize = 40;

/// One line saying what a server is for: its description, else its first tools.
fn server_summary(description: Option<&str>, tools: &[&str]) -> String {
    match description.map(str::trim).filter(|d| !d.is_empty()) {
        Some(description) => {
            let line = description.lines().next().unwrap_or(description);
            let mut line: String = line.chars().take(160).collect();
            if !line.ends_with('.') {
                line.push('.');
            }
            line
        }
        None => format!("{} tools.", tools.len()),
    }
}

/// The Code Mode server for one connection (stdio) or one HTTP session.
#[derive(Clone)]
pub struct CodeMode {
    service: Arc<Service>,
    /// The stdio caller; HTTP callers are read from each request.
    principal: Option<Arc<Principal>>,
}

impl CodeMode {
    /// For HTTP: each request carries its principal (put there by the `/mcp`
    /// authentication layer).
    pub fn http(service: Arc<Service>) -> Self {
        Self { service, principal: None }
    }

    /// For stdio: every request is `principal`'s.
    pub fn stdio(service: Arc<Service>, principal: Arc<Principal>) -> Self {
        Self { service, principal: Some(principal) }
    }

    fn principal(&self, extensions: &rmcp::model::Extensions) -> Result<Arc<Principal>, McpError> {
        if let Some(principal) = &self.principal {
            return Ok(principal.clone());
        }
        extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Arc<Principal>>().cloned())
            .ok_or_else(|| McpError::invalid_request("the request carries no authenticated caller", None))
    }

    /// The two tools, described for `principal`.
    pub fn tools(&self, principal: &Principal) -> Vec<Tool> {
        let (catalog, capabilities) = self.service.tool_catalog(principal);
        tool_list(&catalog.view_for(&capabilities))
    }

    async fn search(&self, principal: &Principal, args: SearchArgs) -> CallToolResult {
        let limit = args.limit.unwrap_or(SEARCH_DEFAULT_LIMIT).clamp(1, SEARCH_MAX_LIMIT);
        let (catalog, capabilities) = self.service.tool_catalog(principal);
        let view = catalog.view_for(&capabilities);
        let (found, quality) = view.find(Method::Hybrid, &args.query, limit);
        let weak = quality == Match::Weak || found.is_empty();
        let servers: Vec<Value> = view
            .servers()
            .iter()
            .map(|server| {
                let tools: Vec<&str> =
                    view.tools().filter(|t| t.server == server.summary.name).map(|t| t.tool.as_str()).collect();
                json!({
                    "name": server.summary.name,
                    "summary": server_summary(server.summary.description.as_deref(), &tools),
                    "tools": tools.iter().take(GUIDE_TOOLS_PER_SERVER).collect::<Vec<_>>(),
                    "tool_count": tools.len(),
                })
            })
            .collect();
        let mut structured = json!({
            "tools": found.iter().map(|t| json!({
                "name": format!("tools.{}", t.name),
                "description": t.description,
                "declaration": t.declaration,
            })).collect::<Vec<_>>(),
            "total": view.len(),
            "match": if weak { "weak" } else { "good" },
        });
        let mut text = String::new();
        if weak {
            text.push_str(&format!(
                "Nothing matches {:?} well. Ask again in the terms of one of these servers, or name the server:\n",
                args.query
            ));
            for server in &servers {
                let tools = server["tools"].as_array().map_or(0, Vec::len);
                let count = server["tool_count"].as_u64().unwrap_or(0) as usize;
                let names: Vec<&str> =
                    server["tools"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                let more = if count > tools { format!(", and {} more", count - tools) } else { String::new() };
                text.push_str(&format!(
                    "- {}: {} Tools: {}{more}.\n",
                    server["name"].as_str().unwrap_or_default(),
                    server["summary"].as_str().unwrap_or_default(),
                    names.join(", ")
                ));
            }
            if servers.is_empty() {
                text.push_str("- (no servers: this caller may use no tools)\n");
            }
            structured["servers"] = Value::Array(servers);
        }
        if !found.is_empty() {
            let declarations = super::catalog::typescript(found.iter().copied(), |_| None);
            let lead = if weak { "The closest tools anyway" } else { "" };
            text.push_str(&format!(
                "// {lead}{}{} of {} tools; call them in `execute` as `await tools.<server>.<tool>(args)`.\n{declarations}",
                if weak { ": " } else { "" },
                found.len(),
                view.len()
            ));
        }
        let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
        result.structured_content = Some(structured);
        result
    }

    // `notifications/message` is deprecated from protocol 2026-07-28 (SEP-2577), but
    // clients on 2025-11-25 and earlier show it; progress notifications carry the same
    // lines for clients that ask for progress.
    #[allow(deprecated)]
    async fn execute(
        &self,
        principal: Arc<Principal>,
        args: ExecuteArgs,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let language = args.language.unwrap_or(Language::Typescript);
        // `session: "new"` opens one for this caller; its id comes back with the result
        // and continues it when passed again.
        let session_id = match args.session.as_deref() {
            Some("new") => match self.service.open_session(&principal, language, None).await {
                Ok(session) => Some(session.id),
                Err(error) => return failure(error.kind(), &error.to_string(), None),
            },
            other => other.map(str::to_string),
        };
        let request = ExecuteRequest {
            code: args.code,
            input: args.input,
            limits: PartialLimits::default(),
            language,
            session_id: session_id.clone(),
        };
        let prepared = match self.service.prepare(principal, request).await {
            Ok(prepared) => prepared,
            Err(error) => return failure(error.kind(), &error.to_string(), None),
        };
        // The execution is cancelled (and still recorded) if the client cancels the
        // request or rmcp drops this handler.
        let (lines_tx, mut lines_rx) = mpsc::unbounded_channel::<LogLine>();
        let run = self.service.start(prepared, Some(lines_tx));
        let progress_token = context.meta.get_progress_token();
        let mut sent = 0u32;
        loop {
            let line = tokio::select! {
                line = lines_rx.recv() => line,
                () = context.ct.cancelled() => {
                    return failure("cancelled", "the request was cancelled; the execution was stopped", None)
                }
            };
            let Some(line) = line else { break };
            sent += 1;
            if let Some(token) = &progress_token {
                let mut progress = ProgressNotificationParam::new(token.clone(), f64::from(sent));
                progress.message = Some(line.message.clone());
                let _ = context.peer.notify_progress(progress).await;
            }
            let level = match line.level {
                LogLevel::Error => LoggingLevel::Error,
                LogLevel::Warn => LoggingLevel::Warning,
                LogLevel::Log | LogLevel::Info => LoggingLevel::Info,
            };
            let message =
                LoggingMessageNotificationParam::new(level, Value::String(line.message)).with_logger("console");
            let _ = context.peer.notify_logging_message(message).await;
        }
        let outcome = match run.await {
            Ok(outcome) => outcome,
            Err(error) => return failure(error.kind(), &error.to_string(), None),
        };
        let mut structured = serde_json::to_value(&outcome).unwrap_or(Value::Null);
        if let (Some(id), Some(fields)) = (&session_id, structured.as_object_mut()) {
            fields.insert("session".into(), Value::String(id.clone()));
        }
        let logs = if outcome.logs.is_empty() {
            None
        } else {
            Some(outcome.logs.iter().map(|l| l.message.as_str()).collect::<Vec<_>>().join("\n"))
        };
        match &outcome.error {
            None => {
                let result = outcome.result.as_ref().map_or("undefined", |r| r.get());
                let mut content = vec![ContentBlock::text(result.to_string())];
                if let Some(id) = &session_id {
                    content.push(ContentBlock::text(format!("session: {id}")));
                }
                if let Some(logs) = logs {
                    content.push(ContentBlock::text(format!("console:\n{logs}")));
                }
                let mut result = CallToolResult::success(content);
                result.structured_content = Some(structured);
                result
            }
            Some(error) => {
                let mut message = error.message.clone();
                if let (Some(line), Some(column)) = (error.line, error.column) {
                    message.push_str(&format!(" (line {line}, column {column})"));
                } else if let Some(line) = error.line {
                    message.push_str(&format!(" (line {line})"));
                }
                failure(error.kind.as_str(), &message, Some((structured, logs)))
            }
        }
    }
}

/// `search` and `execute` as `tools/list` shows them to a caller who sees `view`: the
/// description of `search` names the servers (and how many tools each has), never the
/// tools, so the list stays the same size however many tools there are.
pub fn tool_list(view: &View<'_>) -> Vec<Tool> {
    let servers = view
        .servers()
        .iter()
        .map(|s| match &s.summary.description {
            Some(d) => format!("{} ({} tools: {d})", s.summary.name, s.tools),
            None => format!("{} ({} tools)", s.summary.name, s.tools),
        })
        .collect::<Vec<_>>();
    let servers = if servers.is_empty() { "none available to you".to_string() } else { servers.join("; ") };
    vec![search_tool(&servers), execute_tool()]
}

/// An `isError` result: `kind: message`, then any console output.
fn failure(kind: &str, message: &str, outcome: Option<(Value, Option<String>)>) -> CallToolResult {
    let (structured, logs) =
        outcome.unwrap_or_else(|| (json!({ "ok": false, "error": { "kind": kind, "message": message } }), None));
    let mut content = vec![ContentBlock::text(format!("{kind}: {message}"))];
    if let Some(logs) = logs {
        content.push(ContentBlock::text(format!("console:\n{logs}")));
    }
    let mut result = CallToolResult::error(content);
    result.structured_content = Some(structured);
    result
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchArgs {
    query: String,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteArgs {
    code: String,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    language: Option<Language>,
    /// `new` to open a session, or the id of one an earlier result returned.
    #[serde(default)]
    session: Option<String>,
}

fn object(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

fn search_tool(servers: &str) -> Tool {
    let mut tool = Tool::new(
        "search",
        format!(
            "Find tools to call from `execute` code. Returns the TypeScript declarations of the best matches \
             for a few words describing what you need. Servers: {servers}."
        ),
        object(json!({
            "type": "object",
            "properties": {
                "query": { "type": "string", "description": "What you want to do, in a few words" },
                "limit": { "type": "integer", "minimum": 1, "maximum": SEARCH_MAX_LIMIT, "description": "Most results (default 5)" }
            },
            "required": ["query"]
        })),
    );
    tool.annotations = Some(rmcp::model::ToolAnnotations::new().read_only(true));
    tool
}

fn execute_tool() -> Tool {
    Tool::new(
        "execute",
        "Run TypeScript in a sandbox and return its result. The code is the body of an async function: \
         `await` calls and `return` a JSON value. Call tools found with `search` as \
         `await tools.<server>.<tool>({...})`; run independent calls together with `Promise.all`. \
         A failed tool call throws an Error. `console.log` output is returned too. \
         Time, memory and CPU are limited; there is no network or file access.",
        object(json!({
            "type": "object",
            "properties": {
                "code": { "type": "string", "description": "TypeScript (or JavaScript) function body" },
                "input": { "description": "Any JSON value, readable as the global `input`" },
                "language": { "type": "string", "enum": ["typescript", "javascript"], "description": "Default typescript" },
                "session": { "type": "string", "description": "\"new\", or the session from an earlier result: globals persist, the last expression is the result" }
            },
            "required": ["code"]
        })),
    )
}

impl ServerHandler for CodeMode {
    #[allow(deprecated)] // logging: see `CodeMode::execute`
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder().enable_tools().enable_tool_list_changed().enable_logging().build(),
        )
        .with_server_info(Implementation::new("sandgate", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Use `search` to find tools and their TypeScript declarations, then `execute` code that calls them \
                 as `tools.<server>.<tool>(args)`.",
        )
    }

    /// For the life of the connection, tells the client when the upstream listing
    /// changes (a server came up, or its tools changed): `search`'s description names
    /// the servers and their tool counts.
    async fn on_initialized(&self, context: rmcp::service::NotificationContext<RoleServer>) {
        let mut changes = self.service.upstreams().subscribe();
        let peer = context.peer;
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if peer.notify_tool_list_changed().await.is_err() {
                    break;
                }
            }
        });
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let principal = self.principal(&context.extensions)?;
        Ok(ListToolsResult::with_all_items(self.tools(&principal)))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let principal = self.principal(&context.extensions)?;
        let args = Value::Object(request.arguments.unwrap_or_default());
        let result = match request.name.as_ref() {
            "search" => match serde_json::from_value::<SearchArgs>(args) {
                Ok(args) => self.search(&principal, args).await,
                Err(e) => failure("invalid_request", &format!("search: {e}"), None),
            },
            "execute" => match serde_json::from_value::<ExecuteArgs>(args) {
                Ok(args) => self.execute(principal, args, &context).await,
                Err(e) => failure("invalid_request", &format!("execute: {e}"), None),
            },
            other => {
                return Err(McpError::invalid_params(
                    format!("no tool `{other}`: this server has `search` and `execute`"),
                    None,
                ))
            }
        };
        Ok(result.into())
    }
}
