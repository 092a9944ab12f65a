//! `/mcp`: the Code Mode MCP server over streamable HTTP (rmcp), behind
//! authentication and session ownership.
//!
//! Every request is authenticated here (401 with `WWW-Authenticate: Bearer`
//! otherwise, naming the protected-resource metadata when an identity provider is
//! configured: see [`super::oauth`]) and carries its principal into the MCP handler. An MCP session (the
//! `Mcp-Session-Id` of protocol revisions that have sessions) belongs to the
//! principal that opened it: anyone else who presents its id gets 404, as if it did
//! not exist, so they can neither call tools in it, nor read its stream, nor close it.
//!
//! Sessions are counted: at most `mcp.max_sessions_per_principal` per principal and
//! `mcp.max_sessions` in all. A new session past either cap closes the longest-idle
//! session (no request or stream open) of that principal, or of anyone for the total;
//! if none is idle, the new session is refused with 429.
//!
//! Every protocol revision is served as its clients expect. From 2025-11-25 an SSE
//! stream opens with a priming event (an event id and empty data, so a client can
//! resume it); clients of earlier revisions parse every event's data as JSON, and an
//! empty one ends their connection, so their sessions' streams go without it
//! ([`WithoutPriming`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::{ApiError, AppState, Guarded};
use crate::auth::Principal;
use crate::error::Kind;
use crate::mcp::McpConfig;

const SESSION_HEADER: &str = "mcp-session-id";

/// The `/mcp` routes. `stopping` ends every session's streams at shutdown.
pub(super) fn router(state: &AppState, stopping: CancellationToken) -> Router {
    let manager = Arc::new(LocalSessionManager::default());
    let sessions = Arc::new(Sessions::new(manager.clone(), &state.config.mcp));
    // The Host rule is applied to every route by `guard`, so rmcp's own is off.
    let config = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(state.config.http.max_body_bytes)
        .disable_allowed_hosts()
        .with_cancellation_token(stopping);
    let service = state.service.clone();
    let mcp =
        StreamableHttpService::new(move || Ok(crate::mcp::server::CodeMode::http(service.clone())), manager, config);
    Router::new()
        .route_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state((state.clone(), sessions), gate))
}

async fn gate(State((app, sessions)): State<(AppState, Arc<Sessions>)>, mut request: Request, next: Next) -> Response {
    let principal = match super::authenticate(&app, request.headers()).await {
        Ok(principal) => principal,
        Err(error) => return super::oauth::challenge(&app, request.headers(), error),
    };
    request.extensions_mut().insert(principal.clone());
    // A message is read here, under the server's body timeout and size cap, so a body
    // that does not arrive in time is a 408 like on every other route.
    let mut primed = true;
    if request.method() == Method::POST {
        let (parts, body) = request.into_parts();
        let bytes = match super::read_body(&parts.headers, body, app.config.http.max_body_bytes).await {
            Ok(bytes) => bytes,
            Err(error) => return error.into_response(),
        };
        primed = primed_revision(&bytes);
        request = Request::from_parts(parts, axum::body::Body::from(bytes));
    }
    let session = request.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(Arc::<str>::from);
    let Some(id) = session else {
        let response = next.run(request).await;
        let opened = response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(Arc::<str>::from);
        let response = match opened {
            Some(id) => match sessions.admit(id, &principal, primed).await {
                Ok(()) => response,
                Err(refusal) => return refusal.into_response(),
            },
            None => response,
        };
        return if primed { response } else { response.map(WithoutPriming::body) };
    };
    let Some((active, primed)) = sessions.enter(&id, &principal) else {
        return ApiError::new(Kind::NotFound, "no such MCP session").into_response();
    };
    let closing = request.method() == Method::DELETE;
    let response = next.run(request).await;
    if closing && response.status().is_success() {
        sessions.forget(&id);
    }
    let response = if primed { response } else { response.map(WithoutPriming::body) };
    response.map(|body| axum::body::Body::new(Guarded::new(body, active)))
}

/// The first protocol revision whose clients expect a priming event.
const PRIMED_FROM: &str = "2025-11-25";

/// Whether the client sending `body` (a POST's) expects priming events: true unless
/// it is an `initialize` asking for a revision before [`PRIMED_FROM`]. Revisions are
/// dates, so they compare as strings.
fn primed_revision(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Initialize<'a> {
        #[serde(borrow)]
        method: Option<&'a str>,
        #[serde(default, borrow)]
        params: Option<Params<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(rename = "protocolVersion", borrow)]
        protocol_version: Option<&'a str>,
    }
    match serde_json::from_slice::<Initialize>(body) {
        Ok(Initialize { method: Some("initialize"), params: Some(Params { protocol_version: Some(version) }) }) => {
            version >= PRIMED_FROM
        }
        _ => true,
    }
}

/// An SSE body without priming events (events whose data lines are all empty), for
/// clients of revisions before [`PRIMED_FROM`]. Comments (keep-alives) and every
/// event with data pass unchanged; an event split across chunks is held until it is
/// whole.
pub(crate) struct WithoutPriming {
    inner: axum::body::Body,
    pending: bytes::BytesMut,
}

impl WithoutPriming {
    fn body(body: axum::body::Body) -> axum::body::Body {
        axum::body::Body::new(Self { inner: body, pending: bytes::BytesMut::new() })
    }

    /// The whole events `pending` holds, less priming events.
    fn whole_events(&mut self) -> bytes::Bytes {
        let mut out = bytes::BytesMut::new();
        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end);
            if !is_priming(&event) {
                out.extend_from_slice(&event);
            }
        }
        out.freeze()
    }
}

/// The length of the first whole event in `buffer`, its blank line included.
fn event_end(buffer: &[u8]) -> Option<usize> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|at| at + 2);
    let crlf = buffer.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// An event with data lines that are all empty: a priming event.
fn is_priming(event: &[u8]) -> bool {
    let mut data_lines = 0;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(data) = line.strip_prefix(b"data:") {
            if !data.iter().all(|b| b.is_ascii_whitespace()) {
                return false;
            }
            data_lines += 1;
        }
    }
    data_lines > 0
}

impl http_body::Body for WithoutPriming {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        use std::task::Poll;
        loop {
            match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.pending.extend_from_slice(&data);
                        let events = self.whole_events();
                        if !events.is_empty() {
                            return Poll::Ready(Some(Ok(http_body::Frame::data(events))));
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(None) if !self.pending.is_empty() => {
                    // What is left is not a whole event: pass it on as it is.
                    let rest = self.pending.split().freeze();
                    return Poll::Ready(Some(Ok(http_body::Frame::data(rest))));
                }
                other => return other,
            }
        }
    }
}

/// Who opened each session, and how busy it is.
struct Sessions {
    manager: Arc<LocalSessionManager>,
    owners: Mutex<HashMap<Arc<str>, Owner>>,
    max_total: usize,
    max_per_principal: usize,
}

struct Owner {
    principal: Arc<Principal>,
    /// When the last request or stream on it ended (or it opened).
    quiet_since: Instant,
    /// Requests and streams open on it now.
    active: usize,
    /// Whether its client's revision expects priming events.
    primed: bool,
}

/// A request or stream open on a session, until its response ends.
struct Active {
    sessions: Arc<Sessions>,
    id: Arc<str>,
}

impl Drop for Active {
    fn drop(&mut self) {
        let mut owners = self.sessions.owners();
        if let Some(owner) = owners.get_mut(&self.id) {
            owner.active = owner.active.saturating_sub(1);
            owner.quiet_since = Instant::now();
        }
    }
}

impl Sessions {
    fn new(manager: Arc<LocalSessionManager>, config: &McpConfig) -> Self {
        Self {
            manager,
            owners: Mutex::new(HashMap::new()),
            max_total: config.max_sessions,
            max_per_principal: config.max_sessions_per_principal,
        }
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Owner>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request on session `id` by `principal`: counted as active, with whether its
    /// client expects priming events; `None` when the session is not theirs (or does
    /// not exist).
    fn enter(self: &Arc<Self>, id: &Arc<str>, principal: &Principal) -> Option<(Active, bool)> {
        let mut owners = self.owners();
        let owner = owners.get_mut(id).filter(|owner| *owner.principal == *principal)?;
        owner.active += 1;
        Some((Active { sessions: self.clone(), id: id.clone() }, owner.primed))
    }

    fn forget(&self, id: &Arc<str>) {
        self.owners().remove(id);
    }

    /// Records a session `principal` just opened (its client expecting priming events
    /// when `primed`), closing the longest-idle sessions
    /// the caps require; refuses it (and closes it) if no session is idle.
    async fn admit(&self, id: Arc<str>, principal: &Arc<Principal>, primed: bool) -> Result<(), ApiError> {
        let live: Vec<Arc<str>> = self.manager.sessions.read().await.keys().cloned().collect();
        let (victims, refusal) = {
            let mut owners = self.owners();
            // Sessions rmcp has closed itself (idle timeout, client gone) no longer count.
            owners.retain(|id, _| live.contains(id));
            let mut victims = Vec::new();
            let mut refusal = None;
            let theirs = owners.values().filter(|o| *o.principal == **principal).count();
            if theirs >= self.max_per_principal {
                match longest_idle(&owners, |o| *o.principal == **principal) {
                    Some(victim) => victims.extend(owners.remove_entry(&victim).map(|(id, _)| id)),
                    None => {
                        refusal = Some(format!(
                            "user `{}` has {theirs} MCP sessions open, the most allowed \
                             (mcp.max_sessions_per_principal), and none is idle; close one first",
                            principal.user
                        ))
                    }
                }
            }
            if refusal.is_none() && owners.len() >= self.max_total {
                match longest_idle(&owners, |_| true) {
                    Some(victim) => victims.extend(owners.remove_entry(&victim).map(|(id, _)| id)),
                    None => {
                        refusal = Some(format!(
                        "the server has {} MCP sessions open, the most allowed (mcp.max_sessions), and none is idle",
                        owners.len()
                    ))
                    }
                }
            }
            if refusal.is_none() {
                let owner = Owner { principal: principal.clone(), quiet_since: Instant::now(), active: 0, primed };
                owners.insert(id.clone(), owner);
            }
            (victims, refusal)
        };
        for victim in victims {
            tracing::info!(session = %victim, "closing the longest-idle MCP session to make room");
            let _ = self.manager.close_session(&victim).await;
        }
        match refusal {
            None => Ok(()),
            Some(message) => {
                let _ = self.manager.close_session(&id).await;
                crate::telemetry::record_rejection("mcp_sessions");
                let mut error = ApiError::new(Kind::RateLimited, message);
                error.retry_after_secs = Some(1);
                Err(error)
            }
        }
    }
}

/// The idle session (no request or stream open) quiet the longest among those
/// `eligible` picks.
fn longest_idle(owners: &HashMap<Arc<str>, Owner>, eligible: impl Fn(&Owner) -> bool) -> Option<Arc<str>> {
    owners
        .iter()
        .filter(|(_, o)| o.active == 0 && eligible(o))
        .min_by_key(|(_, o)| o.quiet_since)
        .map(|(id, _)| id.clone())
}
