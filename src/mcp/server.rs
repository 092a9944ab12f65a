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
//!   progress token, `notifications/progress`. A client that declares the tasks
//!   extension (`io.modelcontextprotocol/tasks`) gets, for a run longer than a second,
//!   a task instead: the execution goes on in the background (under
//!   `limits.background_wall_ms`), `tasks/get` gives its status and then its result,
//!   and `tasks/cancel` stops it; so no request is held open for minutes.
//!
//! Served over streamable HTTP at `/mcp` (each request authenticated with its Bearer
//! key, see `crate::http`) and over stdio by `sandgate mcp` (one principal, from
//! the key in `SANDGATE_API_KEY`). Tool descriptions name the servers the caller can
//! reach, so they cost the same few hundred tokens however many upstream tools exist.

use std::sync::Arc;

use rmcp::model::ErrorCode;
use rmcp::model::SubscriptionFilter;
#[allow(deprecated)] // logging: see `CodeMode::execute`
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock, CreateTaskResult,
    DetailedTask, ElicitRequest, ElicitRequestParams, GetTaskParams, GetTaskResult, Implementation, InputRequest,
    InputRequests, InputRequiredResult, JsonObject, ListToolsResult, LoggingLevel, LoggingMessageNotificationParam,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig, Task, TaskPayload, TaskStatus,
    Tool,
};
use rmcp::service::{RequestContext, RoleServer, SubscriptionContext};
use rmcp::{ErrorData as McpError, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::browse;
use super::catalog::View;
use super::search::{Match, Method};
use crate::auth::Principal;
use crate::error::Kind;
use crate::limits::PartialLimits;
use crate::request::{ExecuteRequest, Language};
use crate::service::rerank::Candidate;
use crate::service::HandleStatus;
use crate::service::{HandleEvent, HandleView, Service, CANCEL_POLL};
use crate::service::{LogLevel, LogLine};

/// How long `execute` waits for a task-capable client before it answers with a task
/// instead: shorter runs answer as usual, longer ones do not hold the request open.
const TASK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

const SEARCH_DEFAULT_LIMIT: usize = 5;
const SEARCH_MAX_LIMIT: usize = 50;
/// The Code Mode server for one connection (stdio) or one HTTP session.
#[derive(Clone)]
pub struct CodeMode {
    service: Arc<Service>,
    /// The stdio caller; HTTP callers are read from each request.
    principal: Option<Arc<Principal>>,
    /// The least severe console line sent as `notifications/message`
    /// (`logging/setLevel`; every line until a client sets it), as a `LoggingLevel`'s
    /// rank.
    level: Arc<std::sync::atomic::AtomicU8>,
}

impl CodeMode {
    /// For HTTP: each request carries its principal (put there by the `/mcp`
    /// authentication layer).
    pub fn http(service: Arc<Service>) -> Self {
        Self { service, principal: None, level: Arc::default() }
    }

    /// For stdio: every request is `principal`'s.
    pub fn stdio(service: Arc<Service>, principal: Arc<Principal>) -> Self {
        Self { service, principal: Some(principal), level: Arc::default() }
    }

    fn principal(&self, extensions: &rmcp::model::Extensions) -> Result<Arc<Principal>, McpError> {
        if let Some(principal) = &self.principal {
            return Ok(principal.clone());
        }
        extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Arc<Principal>>().cloned())
            .ok_or_else(|| protocol_error(Kind::Unauthorized, "the request carries no authenticated caller".into()))
    }

    /// The two tools, described for `principal`.
    pub fn tools(&self, principal: &Principal) -> Vec<Tool> {
        let (catalog, capabilities) = self.service.tool_catalog(principal);
        tool_list(&catalog.view_for(&capabilities))
    }

    async fn search(&self, principal: &Arc<Principal>, args: SearchArgs) -> CallToolResult {
        let limit = args.limit.unwrap_or(SEARCH_DEFAULT_LIMIT).clamp(1, SEARCH_MAX_LIMIT);
        let python = args.language == Some(Language::Python);
        let style = if python { browse::Style::Python } else { browse::Style::Typescript };
        let (catalog, capabilities) = self.service.tool_catalog(principal);
        let full = catalog.view_for(&capabilities);
        let query = args.query.as_deref().map(str::trim).unwrap_or_default();
        // A server named (as `server`, or as the whole query) is browsed, or searched
        // within when there is a query besides.
        let named = args.server.as_deref().map(str::trim).filter(|s| !s.is_empty());
        let server = match named {
            Some(name) => match browse::server_named(&full, name) {
                Some(server) => Some(server),
                None => {
                    let (listing, mut structured) = browse::servers(&full, style);
                    structured["unknown_server"] = json!(name);
                    let text = format!("No server named {name:?} is available to you.\n{listing}");
                    return listing_result(text, structured);
                }
            },
            None => browse::server_named(&full, query),
        };
        let browsing = query.is_empty()
            || server.as_deref().is_some_and(|s| browse::server_named(&full, query).as_deref() == Some(s));
        match (&server, browsing) {
            (Some(server), true) => {
                let (text, structured) =
                    browse::server(&full, server, style).unwrap_or_else(|| browse::servers(&full, style));
                return listing_result(text, structured);
            }
            (None, true) => {
                let (text, structured) = browse::servers(&full, style);
                return listing_result(text, structured);
            }
            _ => {}
        }
        let view = match &server {
            Some(server) => full.within(server),
            None => full,
        };
        // With a reranker, it reorders the best few first.
        let pool = self.service.reranker().map_or(limit, |(_, candidates)| candidates.max(limit));
        let (mut found, quality) = view.find(Method::Hybrid, query, pool);
        let weak = quality == Match::Weak || found.is_empty();
        let mut reranked = None;
        if self.service.reranker().is_some() && found.len() > 1 {
            let candidates: Vec<Candidate> = found
                .iter()
                .map(|t| Candidate { name: &t.name, description: t.description.as_deref().unwrap_or_default() })
                .collect();
            reranked = Some(match self.service.rerank(principal, query, &candidates).await {
                Ok(order) => {
                    found = order.order.iter().map(|&i| found[i]).collect();
                    json!({ "used": true, "model": order.model })
                }
                Err(why) => json!({ "used": false, "reason": why }),
            });
        }
        found.truncate(limit);
        let mut structured = json!({
            "tools": found.iter().map(|t| json!({
                "name": format!("tools.{}", t.name),
                "description": t.description,
                "declaration": if python { &t.python } else { &t.declaration },
            })).collect::<Vec<_>>(),
            "total": view.len(),
            "match": if weak { "weak" } else { "good" },
        });
        let mut text = String::new();
        if let Some(reranked) = reranked {
            if let Some(why) = reranked["reason"].as_str() {
                text.push_str(&format!("(Not reranked: {why}. Ranked by words and meaning.)\n"));
            }
            structured["rerank"] = reranked;
        }
        if weak {
            let (listing, servers) = match &server {
                Some(server) => browse::server(&view, server, style).unwrap_or_else(|| browse::servers(&view, style)),
                None => browse::servers(&view, style),
            };
            text.push_str(&format!(
                "Nothing matches {query:?} well. Ask again in the terms of these tools, or browse: `search` with \
                 `server` lists a server's tools.\n{listing}"
            ));
            for (key, value) in servers.as_object().into_iter().flatten() {
                structured[key] = value.clone();
            }
        }
        if !found.is_empty() {
            let lead = if weak { "The closest tools anyway" } else { "" };
            let (comment, declarations, call) = if python {
                ("#", super::catalog::python(found.iter().copied(), |_| None), "(**args)")
            } else {
                ("//", super::catalog::typescript(found.iter().copied(), |_| None), "(args)")
            };
            text.push_str(&format!(
                "{comment} {lead}{}{} of {} tools; call them in `execute` as `await tools.<server>.<tool>{call}`.\n{declarations}",
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
    ) -> CallToolResponse {
        if let Some(id) = &args.resume {
            return self.resume(principal, id, context).await;
        }
        let Some(code) = args.code else {
            let message = "execute: give `code`, or `resume` with the id of a paused execution";
            return failure(Kind::InvalidRequest, message, None).into();
        };
        let language = args.language.unwrap_or(Language::Typescript);
        // `session: "new"` opens one for this caller; its id comes back with the result
        // and continues it when passed again.
        let session_id = match args.session.as_deref() {
            Some("new") => match self.service.open_session(&principal, language, None).await {
                Ok(session) => Some(session.id),
                Err(error) => return failure(error.kind(), &error.to_string(), None).into(),
            },
            other => other.map(str::to_string),
        };
        let request = ExecuteRequest {
            code,
            input: args.input,
            limits: PartialLimits::default(),
            language,
            session_id,
            trace: caller_trace(context),
            agent_session: caller_agent_session(context),
        };
        if context.client_capabilities().is_some_and(|caps| caps.supports_tasks()) {
            return self.execute_as_task(principal, request).await.unwrap_or_else(CallToolResponse::from);
        }
        self.execute_now(principal, request, context).await
    }

    /// `execute` with `resume` (or a retry carrying the request state of an
    /// `InputRequiredResult`): waits up to [`RESUME_WAIT`] for paused execution `id`
    /// of `principal` to end, then answers with its result, or says it still waits.
    async fn resume(
        &self,
        principal: Arc<Principal>,
        id: &str,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let started = std::time::Instant::now();
        loop {
            let view = match self.service.handle(&principal, id).await {
                Ok(view) => view,
                Err(error) => return failure(error.kind(), &error.to_string(), None).into(),
            };
            match view.status {
                HandleStatus::Paused | HandleStatus::Running if started.elapsed() < RESUME_WAIT => {}
                HandleStatus::Paused => {
                    let body = body_of(&view);
                    return paused(body, context);
                }
                HandleStatus::Running => {
                    let message = format!("execution `{id}` is still running: call `execute` with `resume` again");
                    return failure(Kind::Unavailable, &message, None).into();
                }
                _ => return finished(&view, None).into(),
            }
            tokio::select! {
                () = tokio::time::sleep(CANCEL_POLL) => {}
                () = context.ct.cancelled() => {
                    return failure(Kind::Cancelled, "the request was cancelled; the execution goes on", None).into()
                }
            }
        }
    }

    /// `execute`, answered when the execution ends.
    #[allow(deprecated)]
    async fn execute_now(
        &self,
        principal: Arc<Principal>,
        request: ExecuteRequest,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let session_id = request.session_id.clone();
        let prepared = match self.service.prepare(principal, request).await {
            Ok(prepared) => prepared,
            Err(error) => return failure(error.kind(), &error.to_string(), None).into(),
        };
        // The execution is cancelled (and still recorded) if the client cancels the
        // request or rmcp drops this handler.
        let (lines_tx, mut lines_rx) = mpsc::channel::<LogLine>(crate::service::LINE_BUFFER);
        let run = self.service.start(prepared, Some(lines_tx));
        let progress_token = context.meta.get_progress_token();
        let mut sent = 0u32;
        loop {
            let line = tokio::select! {
                line = lines_rx.recv() => line,
                () = context.ct.cancelled() => {
                    return failure(Kind::Cancelled, "the request was cancelled; the execution was stopped", None).into()
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
            if level as u8 >= self.level.load(std::sync::atomic::Ordering::Relaxed) {
                let message =
                    LoggingMessageNotificationParam::new(level, Value::String(line.message)).with_logger("console");
                let _ = context.peer.notify_logging_message(message).await;
            }
        }
        let outcome = match run.await {
            Ok(outcome) => outcome,
            Err(error) => return failure(error.kind(), &error.to_string(), None).into(),
        };
        let body = serde_json::to_value(&outcome).unwrap_or(Value::Null);
        if outcome.status == Some("paused") {
            return paused(body, context);
        }
        tool_result(body, session_id.as_deref()).into()
    }

    /// `execute` for a client that takes tasks: the execution starts in the
    /// background; if it ends within [`TASK_AFTER`] the result comes back as usual,
    /// else a task the client polls with `tasks/get` (and may `tasks/cancel`).
    async fn execute_as_task(
        &self,
        principal: Arc<Principal>,
        request: ExecuteRequest,
    ) -> Result<CallToolResponse, CallToolResult> {
        let session = request.session_id.clone();
        let view = self
            .service
            .start_handle(principal.clone(), request)
            .await
            .map_err(|error| failure(error.kind(), &error.to_string(), None))?;
        let id = view.execution_id.clone();
        // The run is on this replica: wait for its end here, then read its result.
        let ended = async {
            if let Some(mut following) = self.service.follow_handle(&principal, &id) {
                loop {
                    match following.next.recv().await {
                        Ok(HandleEvent::Ended) | Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        Ok(HandleEvent::Log(_)) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    }
                }
            }
            self.service.handle(&principal, &id).await
        };
        match tokio::time::timeout(TASK_AFTER, ended).await {
            Ok(Ok(ended)) if !ended.running() && ended.status != HandleStatus::Paused => {
                Ok(finished(&ended, session.as_deref()).into())
            }
            Ok(Err(error)) => Err(failure(error.kind(), &error.to_string(), None)),
            Ok(Ok(_)) | Err(_) => Ok(CallToolResponse::Task(CreateTaskResult::new(task(&view)))),
        }
    }
}

/// A background execution as a task.
fn task(view: &HandleView) -> Task {
    let status = match view.status {
        HandleStatus::Running => TaskStatus::Working,
        // Waiting for a person to approve a call it made (see `/v1/approvals`).
        HandleStatus::Paused => TaskStatus::InputRequired,
        HandleStatus::Cancelled => TaskStatus::Cancelled,
        HandleStatus::Succeeded | HandleStatus::Failed => TaskStatus::Completed,
    };
    let updated = view.ended_at.clone().unwrap_or_else(|| view.created_at.clone());
    let expires = humantime::parse_rfc3339(&view.expires_at).ok();
    let created = humantime::parse_rfc3339(&view.created_at).ok();
    let mut task = Task::new(view.execution_id.clone(), status, view.created_at.clone(), updated)
        .with_poll_interval_ms(CANCEL_POLL.as_millis() as u64);
    if let (Some(created), Some(expires)) = (created, expires) {
        if let Ok(ttl) = expires.duration_since(created) {
            task = task.with_ttl_ms(ttl.as_millis() as u64);
        }
    }
    task
}

/// How long `execute` with `resume` waits for a paused execution to end.
const RESUME_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// What an `InputRequiredResult` for a paused execution carries as its request state:
/// this, then the execution's id. The retry is checked like `resume`: only the
/// execution's own principal sees it.
const RESUME_STATE: &str = "sandgate-resume:";

/// A handle's body (`POST /v1/execute`'s answer) as JSON.
fn body_of(view: &HandleView) -> Value {
    view.result.as_ref().and_then(|body| serde_json::from_str(body.get()).ok()).unwrap_or(Value::Null)
}

/// One URL-mode elicitation per approval a paused execution waits for, keyed by the
/// approval's id: the console's page where a person decides it.
fn approval_requests(body: &Value) -> InputRequests {
    body["approvals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|approval| {
            let (id, url) = (approval["id"].as_str()?, approval["url"].as_str()?);
            let tool = approval["tool"].as_str().unwrap_or("a call");
            let params = ElicitRequestParams::UrlElicitationParams {
                meta: None,
                message: format!("The code's call to {tool} needs approval: an approver decides it on this page."),
                url: url.to_string(),
                elicitation_id: id.to_string(),
            };
            Some((id.to_string(), InputRequest::Elicitation(ElicitRequest::new(params))))
        })
        .collect()
}

/// The answer for an execution paused at calls waiting for approval: for a client on
/// 2026-07-28 that takes URL-mode elicitation, an `InputRequiredResult` with one
/// elicitation per approval (the console's page) and the state that resumes it on
/// retry; for any other, a plain result saying where to approve and how to go on.
fn paused(body: Value, context: &RequestContext<RoleServer>) -> CallToolResponse {
    let id = body["execution_id"].as_str().unwrap_or_default().to_string();
    let modern = context.protocol_version().is_some_and(|v| v.as_str() >= "2026-07-28");
    let url_mode =
        context.client_capabilities().and_then(|caps| caps.elicitation).is_some_and(|elicit| elicit.url.is_some());
    let body = absolute(body, context);
    let requests = approval_requests(&body);
    if modern && url_mode && !requests.is_empty() {
        return InputRequiredResult::new(Some(requests), Some(format!("{RESUME_STATE}{id}"))).into();
    }
    let urls: Vec<&str> =
        body["approvals"].as_array().into_iter().flatten().filter_map(|a| a["url"].as_str()).collect();
    let text = format!(
        "paused: approve at {}, then call `execute` with `resume: \"{id}\"`",
        if urls.is_empty() { "the console's approvals page".to_string() } else { urls.join(" and ") }
    );
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(body);
    result.into()
}

/// `body` with its approvals' URLs absolute, as elicitations need them: without
/// `[auth] public_url`, under the origin this request came to.
fn absolute(mut body: Value, context: &RequestContext<RoleServer>) -> Value {
    if let Some(origin) = origin(context) {
        for approval in body["approvals"].as_array_mut().into_iter().flatten() {
            if let Some(url) = approval["url"].as_str().filter(|url| url.starts_with('/')) {
                approval["url"] = Value::String(format!("{origin}{url}"));
            }
        }
    }
    body
}

/// `scheme://host` of the HTTP request an MCP request came in, when there is one.
fn origin(context: &RequestContext<RoleServer>) -> Option<String> {
    let parts = context.extensions.get::<http::request::Parts>()?;
    let host = parts.headers.get(http::header::HOST)?.to_str().ok()?;
    let https = parts.headers.get("x-forwarded-proto").and_then(|p| p.to_str().ok()) == Some("https");
    Some(format!("{}://{host}", if https { "https" } else { "http" }))
}

/// The tool result of a background execution that ended.
fn finished(view: &HandleView, session: Option<&str>) -> CallToolResult {
    tool_result(body_of(view), session.or(view.session_id.as_deref()))
}

/// The tool result for an execution's body (what `POST /v1/execute` answers): the
/// result as JSON text, the session, the console lines; a failure as `isError`.
fn tool_result(mut structured: Value, session: Option<&str>) -> CallToolResult {
    if let (Some(id), Some(fields)) = (session, structured.as_object_mut()) {
        fields.insert("session".into(), Value::String(id.to_string()));
    }
    let lines: Vec<&str> = structured["logs"]
        .as_array()
        .map(|logs| logs.iter().filter_map(|l| l["message"].as_str()).collect())
        .unwrap_or_default();
    let logs = (!lines.is_empty()).then(|| lines.join("\n"));
    let error = &structured["error"];
    if error.is_object() {
        let kind = error["kind"].as_str().and_then(Kind::parse).unwrap_or(Kind::Internal);
        let mut message = error["message"].as_str().unwrap_or_default().to_string();
        match (error["line"].as_u64(), error["column"].as_u64()) {
            (Some(line), Some(column)) => message.push_str(&format!(" (line {line}, column {column})")),
            (Some(line), None) => message.push_str(&format!(" (line {line})")),
            _ => {}
        }
        return failure(kind, &message, Some((structured, logs)));
    }
    let mut content = vec![ContentBlock::text(structured["result"].to_string())];
    if let Some(id) = session {
        content.push(ContentBlock::text(format!("session: {id}")));
    }
    if let Some(logs) = logs {
        content.push(ContentBlock::text(format!("console:\n{logs}")));
    }
    let mut result = CallToolResult::success(content);
    result.structured_content = Some(structured);
    result
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

/// How an error of each kind reaches an MCP client: sandgate's one table for MCP.
///
/// Whatever ends a call to `execute` or `search` (a fault of the code, a refusal, a
/// door's answer) comes back as that tool's result with `isError`, the kind and the
/// message (`failure`): that is what the model reads and acts on. A request the
/// protocol itself refuses (a task that is not the caller's, say) is a JSON-RPC error
/// whose code this table gives, with the kind in `data.kind`.
pub fn error_code(kind: Kind) -> ErrorCode {
    match kind {
        Kind::NotFound | Kind::InvalidRequest => ErrorCode::INVALID_PARAMS,
        Kind::Unauthorized | Kind::Forbidden => ErrorCode::INVALID_REQUEST,
        _ => ErrorCode::INTERNAL_ERROR,
    }
}

/// A JSON-RPC error of `kind`: the code [`error_code`] gives it, the kind in `data.kind`.
fn protocol_error(kind: Kind, message: String) -> McpError {
    McpError::new(error_code(kind), message, Some(json!({ "kind": kind })))
}

/// An `isError` result: `kind: message`, then any console output.
fn failure(kind: Kind, message: &str, outcome: Option<(Value, Option<String>)>) -> CallToolResult {
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
    /// What the agent needs, in a few words; none: browse.
    #[serde(default)]
    query: Option<String>,
    /// Browse this server's tools, or (with a query) search among them only.
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    /// `python` for Python stubs; TypeScript declarations otherwise.
    #[serde(default)]
    language: Option<Language>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteArgs {
    #[serde(default)]
    code: Option<String>,
    /// The id of a paused execution to wait for, instead of `code`.
    #[serde(default)]
    resume: Option<String>,
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

/// A browsing answer: the listing, as text and structured.
fn listing_result(text: String, structured: Value) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(structured);
    result
}

fn search_tool(servers: &str) -> Tool {
    let mut tool = Tool::new(
        "search",
        format!(
            "Find tools to call from `execute` code: a few words on what you need return the TypeScript \
             declarations of the best matches. When nothing matches well, browse instead of rephrasing: \
             `server` alone lists its tools, no arguments list the servers. Servers: {servers}."
        ),
        object(json!({
            "type": "object",
            "properties": {
                "query": { "type": "string", "description": "What you want to do, in a few words (none: browse)" },
                "server": { "type": "string", "description": "Lists its tools; with query, searches only them" },
                "limit": { "type": "integer", "minimum": 1, "maximum": SEARCH_MAX_LIMIT, "description": "Most results (default 5)" },
                "language": { "enum": ["typescript", "python"] }
            }
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
         Time, memory and CPU are limited; no network; files via `fs` in a session. \
         A call that needs a person's approval pauses the run: the result says where to approve, \
         then call `execute` with `resume` set to its id for the result.",
        object(json!({
            "type": "object",
            "properties": {
                "code": { "type": "string", "description": "TypeScript (or JavaScript) function body" },
                "input": { "description": "Any JSON value, readable as the global `input`" },
                "language": { "enum": ["typescript", "javascript", "python"], "description": "Default typescript" },
                "session": { "type": "string", "description": "\"new\", or the session from an earlier result: globals persist, the last expression is the result" },
                "resume": { "type": "string", "description": "Instead of code: the id of an execution that paused for approval, to wait for its result" }
            }
        })),
    )
}

impl ServerHandler for CodeMode {
    #[allow(deprecated)] // logging: see `CodeMode::execute`
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_logging()
                .enable_tasks()
                .build(),
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

    /// `logging/setLevel`: console lines less severe than `level` are no longer sent
    /// as `notifications/message` (progress notifications still carry every line).
    #[allow(deprecated)] // logging: see `CodeMode::execute`
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.level.store(request.level as u8, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// `subscriptions/listen` (2026-07-28): tool-list changes, as `on_initialized`
    /// sends them to sessions of earlier revisions. Each stream holds one of the
    /// caller's few listening slots until it ends.
    fn accepted_subscription_filter(&self, _requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        Some(SubscriptionFilter::builder().tools_list_changed().build())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let principal = self.principal(&context.request_context().extensions)?;
        let _listening =
            self.service.listen(&principal).map_err(|error| protocol_error(error.kind(), error.to_string()))?;
        let mut changes = self.service.upstreams().subscribe();
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() || context.sink().notify_tool_list_changed().await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
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
                Err(e) => failure(Kind::InvalidRequest, &format!("search: {e}"), None),
            },
            // A retry of an `InputRequiredResult`: the execution it paused.
            "execute" if request.request_state.as_deref().is_some_and(|s| s.starts_with(RESUME_STATE)) => {
                let state = request.request_state.as_deref().unwrap_or_default();
                return Ok(self.resume(principal, &state[RESUME_STATE.len()..], &context).await);
            }
            "execute" => match serde_json::from_value::<ExecuteArgs>(args) {
                Ok(args) => return Ok(self.execute(principal, args, &context).await),
                Err(e) => failure(Kind::InvalidRequest, &format!("execute: {e}"), None),
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

    /// `tasks/get`: a background `execute` (its result once it ended); another
    /// principal's task is unknown.
    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        let principal = self.principal(&context.extensions)?;
        let view = self.service.handle(&principal, &request.task_id).await.map_err(task_error)?;
        let payload = match view.status {
            HandleStatus::Running => TaskPayload::Working,
            HandleStatus::Paused => {
                TaskPayload::InputRequired { input_requests: approval_requests(&absolute(body_of(&view), &context)) }
            }
            HandleStatus::Cancelled => TaskPayload::Cancelled,
            HandleStatus::Succeeded | HandleStatus::Failed => {
                let result = serde_json::to_value(finished(&view, None)).unwrap_or(Value::Null);
                TaskPayload::Completed { result: result.as_object().cloned().unwrap_or_default() }
            }
        };
        Ok(GetTaskResult::new(DetailedTask::new(task(&view), payload)))
    }

    /// `tasks/cancel`: cancels a background `execute` (recorded as `cancelled`).
    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let principal = self.principal(&context.extensions)?;
        self.service.cancel_handle(&principal, &request.task_id).await.map_err(task_error)?;
        Ok(())
    }
}

/// The caller's trace context: the request's `_meta.traceparent` (SEP-414), else the
/// HTTP request's `traceparent` header.
fn caller_trace(context: &RequestContext<RoleServer>) -> opentelemetry::Context {
    use crate::telemetry::trace;
    match context.meta.get_traceparent() {
        Some(parent) => trace::from_traceparent(Some(parent), context.meta.get_tracestate()),
        None => context
            .extensions
            .get::<http::request::Parts>()
            .map_or_else(opentelemetry::Context::new, |parts| trace::from_headers(&parts.headers)),
    }
}

/// The coding agent's own session a `tools/call` belongs to: from its `_meta` (Codex
/// sends its session there), else the HTTP request's headers.
fn caller_agent_session(context: &RequestContext<RoleServer>) -> Option<String> {
    crate::request::agent_session_in_meta(&context.meta).or_else(|| {
        context.extensions.get::<http::request::Parts>().and_then(|parts| crate::request::agent_session(&parts.headers))
    })
}

fn task_error(error: crate::service::ServiceError) -> McpError {
    protocol_error(error.kind(), error.to_string())
}
