//! The operator console at `/ui`: pages served by the binary itself, with every
//! asset compiled in (no CDN, no other process).
//!
//! Each page reads the same library calls as the API (`Service::usage` for `/ui/usage`
//! as for `/v1/usage`, `Service::executions`, `Service::explain`), so no number it
//! shows can differ from the API's. Admins see everyone; anyone else sees only their
//! own rows.
//!
//! Sign-in: in local mode (no keys, loopback only) the console opens for the local
//! admin. With keys, `/ui/login` takes a key once and the browser keeps a signed,
//! HttpOnly, `SameSite=Strict` cookie (see [`signin`]). The console sits behind the
//! same Host, Origin and Content-Type guard as the API: its one form that changes
//! anything (sign-in) posts JSON.

pub mod html;
pub mod pulse;
pub mod signin;

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use crate::app::AppState;
use crate::auth::{Principal, Role};
use crate::error::Kind;
use crate::http::error::status;
use crate::service::admin::Ask;
use crate::service::Mode;
use crate::store::{self, now_ms, ExecutionQuery, ExecutionRecord, GroupBy, UsageQuery, UsageRow};
use html::{esc, num_cell, time, usd, Page};

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// What the console's handlers share.
#[derive(Clone, Debug)]
struct Console {
    app: AppState,
    signer: Arc<signin::Signer>,
    pulses: Arc<pulse::Pulses>,
}

/// The console's routes, to merge into the application's router (behind its guard).
pub fn router(app: AppState) -> Router {
    let state =
        Console { app, signer: Arc::new(signin::Signer::from_env()), pulses: Arc::new(pulse::Pulses::default()) };
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/login/sso", get(sso_start))
        .route("/ui/login/callback", get(sso_callback))
        .route("/ui/logout", post(logout))
        .route("/ui/events", get(events))
        .route("/ui/usage", get(usage))
        .route("/ui/usage.csv", get(usage_csv))
        .route("/ui/executions", get(executions))
        .route("/ui/executions/{id}", get(execution))
        .route("/ui/policies", get(policies))
        .route("/ui/approvals", get(approvals))
        .route("/ui/approvals/{id}", get(approval).post(decide))
        .route("/ui/models", get(models))
        .route("/ui/tools", get(tools))
        .route("/ui/budgets", get(budgets))
        .route("/ui/sessions", get(sessions))
        .route("/ui/keys", get(keys).post(create_key))
        .route("/ui/keys/{name}", axum::routing::delete(revoke_key))
        .route("/ui/assets/console.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/ui/assets/console.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .with_state(state)
        .layer(axum::middleware::map_response(security_headers))
}

/// What every console response tells the browser: run only the console's own script
/// and style (no inline code, so injected markup cannot run), never inside another
/// site's frame, never guess a content type, send no referrer.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The signed-in viewer of a page; a request without one is sent to sign in.
struct Viewer(Arc<Principal>);

impl axum::extract::FromRequestParts<Console> for Viewer {
    type Rejection = Redirect;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, console: &Console) -> Result<Self, Redirect> {
        viewer(console, &parts.headers).await.map(Viewer)
    }
}

/// A page's query parameters; ones that do not parse are a 400 page.
struct Params<T>(T);

impl<T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<Console> for Params<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, console: &Console) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, console).await {
            Ok(Query(params)) => Ok(Params(params)),
            Err(rejection) => Err(failure(StatusCode::BAD_REQUEST, &rejection.body_text())),
        }
    }
}

/// The sign-in secret the request's cookie carries, when the cookie is intact and
/// not expired.
fn sign_in(console: &Console, headers: &HeaderMap) -> Option<String> {
    let token = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| signin::cookie(v, signin::COOKIE))?;
    console.signer.check(token, now_ms())
}

/// The signed-in viewer, or the response that sends the browser to sign in.
async fn viewer(console: &Console, headers: &HeaderMap) -> Result<Arc<Principal>, Redirect> {
    if console.app.service.mode() == Mode::Local {
        return Ok(Arc::new(Principal::local()));
    }
    // Behind an identity-aware proxy every request carries the person's signed
    // assertion: that is the sign-in.
    let service = &console.app.service;
    let assertion = service.identity().assertion_headers().find_map(|name| headers.get(name)?.to_str().ok());
    if let Some(assertion) = assertion {
        match service.authenticate(Some(assertion)).await {
            Ok(viewer) => return Ok(viewer),
            Err(error) => tracing::debug!(%error, "a console request's assertion is refused"),
        }
    }
    let Some(secret) = sign_in(console, headers) else { return Err(Redirect::to("/ui/login")) };
    match console.app.service.console_viewer(&secret).await {
        Ok(Some(viewer)) => Ok(viewer),
        Ok(None) => Err(Redirect::to("/ui/login")),
        Err(error) => {
            tracing::warn!(%error, "cannot check a console sign-in");
            Err(Redirect::to("/ui/login"))
        }
    }
}

fn page(title: &str, current: &str, viewer: &Principal, local: bool, body: String) -> Response {
    let who = format!("{} (team {}, {})", viewer.user, viewer.team, viewer.role.as_str());
    let page = Page { title, current, viewer: Some(&who), can_sign_out: !local, body };
    let mut response = Html(page.render()).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn failure(status: StatusCode, message: &str) -> Response {
    let page = Page {
        title: "Something went wrong",
        current: "",
        viewer: None,
        can_sign_out: false,
        body: format!(r#"<p role="alert">{}</p><p><a href="/ui">Back to the console</a></p>"#, esc(message)),
    };
    (status, Html(page.render())).into_response()
}

/// A page for a refusal, with the status the API gives it (the one HTTP table).
fn service_failure(error: crate::service::ServiceError) -> Response {
    failure(crate::http::error::status_of(&error), &error.to_string())
}

async fn login_page(State(console): State<Console>) -> Response {
    if console.app.service.mode() == Mode::Local {
        return Redirect::to("/ui").into_response();
    }
    let sso: String = console
        .app
        .service
        .identity()
        .all()
        .iter()
        .filter(|i| i.config.client_id.is_some())
        .map(|i| {
            format!(
                r#"<p><a class="button" id="sso-{name}" href="/ui/login/sso?issuer={name}">Sign in with SSO ({name})</a></p>"#,
                name = esc(&i.config.name)
            )
        })
        .collect();
    let sso = if sso.is_empty() { String::new() } else { format!(r#"<div class="card" id="sso">{sso}</div>"#) };
    let body = sso
        + r#"<form id="sign-in" class="card">
<p>Sign in with a sandgate API key (<code>sandgate key create</code> makes one). The browser keeps a signed cookie, not the key.</p>
<p><label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="off" required spellcheck="false"></p>
<p><button type="submit">Sign in</button></p>
<p id="sign-in-error" role="alert" class="error"></p>
</form>"#;
    let page = Page { title: "Sign in", current: "", viewer: None, can_sign_out: false, body };
    Html(page.render()).into_response()
}

#[derive(Deserialize)]
struct SsoStart {
    issuer: Option<String>,
}

/// The issuer named `name` (the first with a client when none is named) and its index.
fn sso_issuer(console: &Console, name: Option<&str>) -> Option<(usize, Arc<crate::auth::oidc::Issuer>)> {
    let issuers = console.app.service.identity().all();
    issuers
        .iter()
        .enumerate()
        .filter(|(_, i)| i.config.client_id.is_some())
        .find(|(_, i)| name.is_none_or(|n| i.config.name == n))
        .map(|(index, issuer)| (index, issuer.clone()))
}

fn callback_url(console: &Console, headers: &HeaderMap) -> String {
    format!("{}/ui/login/callback", crate::http::oauth::base_url(&console.app, headers))
}

/// The console's cookie for the sign-in with `secret` (HttpOnly, `SameSite=Strict`,
/// path `/ui`), `Secure` when the request came over HTTPS.
fn sign_in_cookie(console: &Console, secret: &str, headers: &HeaderMap) -> String {
    let token = console.signer.token(secret, now_ms() + signin::LIFETIME_MS);
    format!(
        "{}={token}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={}{}",
        signin::COOKIE,
        signin::LIFETIME_MS / 1000,
        secure(headers)
    )
}

fn secure(headers: &HeaderMap) -> &'static str {
    let https = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    if https {
        "; Secure"
    } else {
        ""
    }
}

/// "Sign in with SSO": the authorization code flow with PKCE. What the callback must
/// find again (state, nonce, verifier) goes in a short-lived signed cookie, so any
/// replica can finish the sign-in.
async fn sso_start(State(console): State<Console>, headers: HeaderMap, Params(params): Params<SsoStart>) -> Response {
    let Some((index, issuer)) = sso_issuer(&console, params.issuer.as_deref()) else {
        return failure(StatusCode::NOT_FOUND, "no identity provider here signs people in to the console");
    };
    let pending = crate::auth::login::Pending::new();
    let url = match crate::auth::login::authorization_url(&issuer, &callback_url(&console, &headers), &pending).await {
        Ok(url) => url,
        Err(error) => return failure(StatusCode::BAD_GATEWAY, &error.to_string()),
    };
    let sealed = console.signer.seal(
        &[&pending.state, &pending.nonce, &pending.verifier, &index.to_string()],
        now_ms() + signin::PENDING_LIFETIME_MS,
    );
    // Lax: the browser comes back from the provider by a cross-site navigation.
    let cookie = format!(
        "{}={sealed}; HttpOnly; SameSite=Lax; Path=/ui/login; Max-Age={}{}",
        signin::PENDING_COOKIE,
        signin::PENDING_LIFETIME_MS / 1000,
        secure(&headers)
    );
    let mut response = Redirect::to(&url).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
struct SsoCallback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The provider sends the person back here with a code; it is redeemed, the ID token
/// checked, and the console sign-in made.
async fn sso_callback(
    State(console): State<Console>,
    headers: HeaderMap,
    Params(params): Params<SsoCallback>,
) -> Response {
    if let Some(error) = &params.error {
        let detail = params.error_description.as_deref().unwrap_or("");
        return failure(
            StatusCode::UNAUTHORIZED,
            &format!("the identity provider did not sign you in: {error} {detail}"),
        );
    }
    let pending = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| signin::cookie(v, signin::PENDING_COOKIE))
        .and_then(|sealed| console.signer.open(sealed, now_ms()));
    let (Some(fields), Some(code), Some(state)) = (pending, &params.code, &params.state) else {
        return failure(
            StatusCode::BAD_REQUEST,
            "this sign-in was not started here, or took longer than 10 minutes: sign in again",
        );
    };
    let [sent_state, nonce, verifier, index] = fields.as_slice() else {
        return failure(StatusCode::BAD_REQUEST, "sign in again");
    };
    if sent_state != state {
        return failure(StatusCode::BAD_REQUEST, "the sign-in's state does not match: sign in again");
    }
    let issuers = console.app.service.identity().all();
    let Some(issuer) = index.parse::<usize>().ok().and_then(|i| issuers.get(i)) else {
        return failure(StatusCode::BAD_REQUEST, "sign in again");
    };
    let pending =
        crate::auth::login::Pending { state: state.clone(), nonce: nonce.clone(), verifier: verifier.clone() };
    let principal = match crate::auth::login::finish(issuer, code, &callback_url(&console, &headers), &pending).await {
        Ok(principal) => principal,
        Err(error) => return failure(StatusCode::UNAUTHORIZED, &error.to_string()),
    };
    let secret = match console.app.service.console_sign_in_sso(&principal, signin::LIFETIME_MS).await {
        Ok(secret) => secret,
        Err(error) => return service_failure(error),
    };
    // The console's cookie is SameSite=Strict, and this request began at another
    // site: a page of its own moves on to the console, so that the next request is
    // same-site and carries it.
    let page = Page {
        title: "Signed in",
        current: "",
        viewer: None,
        can_sign_out: false,
        body: r#"<p>Signed in. <a id="continue" href="/ui">Continue to the console</a>.</p>"#.to_string(),
    };
    let html = page.render().replacen("<head>", r#"<head><meta http-equiv="refresh" content="0;url=/ui">"#, 1);
    let mut response = Html(html).into_response();
    let cookies = [
        sign_in_cookie(&console, &secret, &headers),
        format!("{}=; HttpOnly; SameSite=Lax; Path=/ui/login; Max-Age=0", signin::PENDING_COOKIE),
    ];
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Deserialize)]
struct SignIn {
    key: String,
}

async fn login(State(console): State<Console>, headers: HeaderMap, body: axum::body::Body) -> Response {
    if console.app.service.mode() == Mode::Local {
        return StatusCode::NO_CONTENT.into_response();
    }
    // Read like every API body: a body that does not arrive in time is a 408.
    let body = match crate::http::read_body(&headers, body, 64 << 10).await {
        Ok(bytes) => bytes,
        Err(error) => return error.into_response(),
    };
    let Ok(body) = serde_json::from_slice::<SignIn>(&body) else {
        return (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": "send {\"key\": \"...\"} as JSON"})))
            .into_response();
    };
    let secret = match console.app.service.console_sign_in(body.key.trim(), signin::LIFETIME_MS).await {
        Ok((secret, _)) => secret,
        Err(crate::service::ServiceError::Unauthorized(_)) => {
            return (
                status(Kind::Unauthorized),
                Json(serde_json::json!({"error": "that key is not a sandgate key here"})),
            )
                .into_response()
        }
        Err(error) => return service_failure(error),
    };
    let cookie = sign_in_cookie(&console, &secret, &headers);
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Signs out: the sign-in ends on the server (on every replica), whoever holds a copy
/// of the cookie, and the browser forgets it.
async fn logout(State(console): State<Console>, headers: HeaderMap) -> Response {
    if let Some(secret) = sign_in(&console, &headers) {
        if let Err(error) = console.app.service.console_sign_out(&secret).await {
            return service_failure(error);
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let cookie = format!("{}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0", signin::COOKIE);
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("ASCII"));
    response
}

fn day_start(now: i64) -> i64 {
    now - now.rem_euclid(86_400_000)
}

async fn overview(State(console): State<Console>, Viewer(viewer): Viewer) -> Response {
    let pulse = match console.pulses.pulse(&console.app.service, &viewer).await {
        Ok(pulse) => pulse,
        Err(error) => return service_failure(error),
    };
    let today = UsageQuery { group_by: GroupBy::Team, since_ms: Some(day_start(now_ms())), until_ms: None, user: None };
    let spend = match console.app.service.usage(&viewer, today).await {
        Ok(rows) => rows,
        Err(error) => return service_failure(error),
    };
    let standing = match console.app.service.budgets(&viewer).await {
        Ok(standing) => standing,
        Err(error) => return service_failure(error),
    };
    let mut closest = String::new();
    for line in standing.iter().take(5) {
        closest.push_str(&format!(
            r#"<tr><th scope="row">{} ({})</th><td>{}</td>{}<td class="num" data-field="share">{:.1}%</td></tr>"#,
            esc(&line.scope),
            line.period,
            esc(&limit_text(line.limit_usd, line.limit_tokens)),
            num_cell("used_usd", usd(line.used_usd)),
            line.share() * 100.0
        ));
    }
    if closest.is_empty() {
        closest.push_str(r#"<tr><td colspan="4">No budget is in force.</td></tr>"#);
    }
    let bars: Vec<(String, f64)> =
        pulse.per_minute.iter().enumerate().map(|(i, n)| (format!("{} min ago", 59 - i), *n as f64)).collect();
    let mut outcomes = String::new();
    for (kind, count) in &pulse.outcomes {
        outcomes.push_str(&format!(r#"<tr><th scope="row">{}</th>{}</tr>"#, esc(kind), num_cell("count", count)));
    }
    if outcomes.is_empty() {
        outcomes.push_str(r#"<tr><td colspan="2">No executions in the last hour.</td></tr>"#);
    }
    let mut teams = String::new();
    for row in &spend {
        teams.push_str(&format!(
            r#"<tr><th scope="row">{}</th>{}{}<td class="num" data-field="cost_usd" data-value="{}">{}</td></tr>"#,
            esc(&row.group),
            num_cell("model_calls", row.model_calls),
            num_cell("executions", row.executions),
            row.cost_usd,
            usd(row.cost_usd)
        ));
    }
    if teams.is_empty() {
        teams.push_str(r#"<tr><td colspan="4">Nothing spent today.</td></tr>"#);
    }
    let body = format!(
        r#"<section aria-labelledby="pulse-h" class="tiles" data-live="/ui/events">
<h2 id="pulse-h">The last hour <span class="live" id="live-at" aria-live="polite">as of {at}</span></h2>
<dl>
<div><dt>Executions</dt><dd id="pulse-executions">{executions}</dd></div>
<div><dt>Errors</dt><dd id="pulse-errors">{errors}</dd></div>
<div><dt>p50 wall time</dt><dd><span id="pulse-p50">{p50}</span> ms</dd></div>
<div><dt>p99 wall time</dt><dd><span id="pulse-p99">{p99}</span> ms</dd></div>
</dl>
<p class="note">Counts and outcomes are of every execution; wall times are of the latest {max} at most.</p>
{chart}
</section>
<section aria-labelledby="outcomes-h">
<h2 id="outcomes-h">Outcomes, last hour</h2>
<div class="scroll"><table id="outcomes"><thead><tr><th scope="col">Outcome</th><th scope="col">Executions</th></tr></thead><tbody>{outcomes}</tbody></table></div>
</section>
<section aria-labelledby="spend-h">
<h2 id="spend-h">Model spend today (UTC), by team</h2>
<div class="scroll"><table id="spend"><thead><tr><th scope="col">Team</th><th scope="col">Model calls</th><th scope="col">Executions</th><th scope="col">Cost (USD)</th></tr></thead><tbody>{teams}</tbody></table></div>
</section>
<section aria-labelledby="closest-h">
<h2 id="closest-h">Budgets closest to their limit</h2>
<div class="scroll"><table id="closest"><thead><tr><th scope="col">Budget</th><th scope="col">Limit</th><th scope="col">Used USD</th><th scope="col">Of the limit</th></tr></thead><tbody>{closest}</tbody></table></div>
<p class="note"><a href="/ui/budgets">Every budget</a></p>
</section>"#,
        at = esc(&pulse.at),
        executions = pulse.executions,
        errors = pulse.errors,
        p50 = pulse.p50_ms,
        p99 = pulse.p99_ms,
        max = crate::service::MAX_LISTED,
        chart = html::bar_chart("per-minute", "Executions per minute, the last hour", &bars, "executions"),
    );
    page("Overview", "overview", &viewer, console.app.service.mode() == Mode::Local, body)
}

/// The overview's numbers every two seconds, as server-sent events.
/// The overview's figures as they change, every [`pulse::TICK`]: one computation per
/// scope and tick, however many watch; at most [`pulse::MAX_STREAMS`] streams per
/// principal (429 past them).
async fn events(State(console): State<Console>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&console, &headers).await {
        Ok(viewer) => viewer,
        Err(_) => return status(Kind::Unauthorized).into_response(),
    };
    let Some(held) = console.pulses.stream(&viewer) else {
        let message = format!("at most {} live streams per principal", pulse::MAX_STREAMS);
        let mut response = (status(Kind::RateLimited), message).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        return response;
    };
    let stream = futures::stream::unfold((console, viewer, held), |(console, viewer, held)| async move {
        tokio::time::sleep(pulse::TICK).await;
        let event = match console.pulses.pulse(&console.app.service, &viewer).await {
            Ok(pulse) => Event::default().event("pulse").json_data(&*pulse).unwrap_or_default(),
            Err(error) => Event::default().event("error").data(error.to_string()),
        };
        Some((Ok::<_, Infallible>(event), (console, viewer, held)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct UsageParams {
    group_by: Option<GroupBy>,
    since: Option<String>,
    until: Option<String>,
}

impl UsageParams {
    fn query(&self) -> Result<UsageQuery, String> {
        let bound =
            |text: &Option<String>| text.as_deref().filter(|t| !t.is_empty()).map(store::usage_time).transpose();
        Ok(UsageQuery {
            group_by: self.group_by.unwrap_or(GroupBy::Team),
            since_ms: bound(&self.since)?,
            until_ms: bound(&self.until)?,
            user: None,
        })
    }

    fn link(&self, path: &str) -> String {
        let mut parts = Vec::new();
        if let Some(group) = self.group_by {
            parts.push(format!("group_by={}", group_name(group)));
        }
        for (name, value) in [("since", &self.since), ("until", &self.until)] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                parts.push(format!("{name}={}", esc(value)));
            }
        }
        if parts.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", parts.join("&amp;"))
        }
    }
}

fn group_name(group: GroupBy) -> &'static str {
    match group {
        GroupBy::User => "user",
        GroupBy::Team => "team",
        GroupBy::Model => "model",
        GroupBy::Tier => "tier",
        GroupBy::Day => "day",
        GroupBy::AgentSession => "agent_session",
    }
}

/// The columns of the usage table and CSV, with each row's value.
const USAGE_COLUMNS: [(&str, &str); 9] = [
    ("executions", "Executions"),
    ("model_calls", "Model calls"),
    ("input_tokens", "Input tokens"),
    ("output_tokens", "Output tokens"),
    ("cost_usd", "Cost (USD)"),
    ("fuel", "Fuel"),
    ("wall_ms", "Wall ms"),
    ("host_calls", "Host calls"),
    ("file_bytes_written", "File bytes written"),
];

fn usage_value(row: &UsageRow, field: &str) -> String {
    match field {
        "executions" => row.executions.to_string(),
        "model_calls" => row.model_calls.to_string(),
        "input_tokens" => row.input_tokens.to_string(),
        "output_tokens" => row.output_tokens.to_string(),
        "cost_usd" => usd(row.cost_usd),
        "fuel" => row.fuel.to_string(),
        "wall_ms" => row.wall_ms.to_string(),
        "host_calls" => row.host_calls.to_string(),
        "file_bytes_written" => row.file_bytes_written.to_string(),
        _ => String::new(),
    }
}

async fn usage(
    State(console): State<Console>,
    Viewer(viewer): Viewer,
    Params(params): Params<UsageParams>,
) -> Response {
    let query = match params.query() {
        Ok(query) => query,
        Err(message) => return failure(StatusCode::BAD_REQUEST, &message),
    };
    let rows = match console.app.service.usage(&viewer, query.clone()).await {
        Ok(rows) => rows,
        Err(error) => return service_failure(error),
    };
    let totals = store::total(&rows);
    let mut table = String::new();
    for row in rows.iter().chain(std::iter::once(&totals)) {
        let total = std::ptr::eq(row, &totals);
        let class = if total { r#" class="total""# } else { "" };
        // One agent session's executions, listed.
        let name = if query.group_by == GroupBy::AgentSession && !total && !row.group.is_empty() {
            format!(
                r#"<a href="/ui/executions?agent_session={}">{}</a>"#,
                esc(&form_urlencoded::byte_serialize(row.group.as_bytes()).collect::<String>()),
                esc(&row.group)
            )
        } else {
            esc(&row.group)
        };
        table.push_str(&format!(r#"<tr{class} data-group="{}"><th scope="row">{name}</th>"#, esc(&row.group)));
        for (field, _) in USAGE_COLUMNS {
            table.push_str(&num_cell(field, usage_value(row, field)));
        }
        table.push_str("</tr>");
    }
    let headings: String = USAGE_COLUMNS.iter().map(|(_, label)| format!(r#"<th scope="col">{label}</th>"#)).collect();
    let costs = rows.iter().any(|r| r.cost_usd > 0.0);
    let bars: Vec<(String, f64)> =
        rows.iter().map(|r| (r.group.clone(), if costs { r.cost_usd } else { r.executions as f64 })).collect();
    let what = if costs { "Cost (USD)" } else { "Executions" };
    let group = query.group_by;
    let options: String = ["team", "user", "model", "tier", "day", "agent_session"]
        .iter()
        .map(|g| {
            let selected = if *g == group_name(group) { " selected" } else { "" };
            format!(r#"<option value="{g}"{selected}>{g}</option>"#)
        })
        .collect();
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    let scope = if viewer.role == Role::Admin { "everyone" } else { "your own usage" };
    let body = format!(
        r#"<form class="filters" method="get" action="/ui/usage">
<p><label for="group_by">Group by</label> <select id="group_by" name="group_by">{options}</select></p>
<p><label for="since">Since (UTC date)</label> <input id="since" name="since" type="date" value="{since}"></p>
<p><label for="until">Until (UTC date, exclusive)</label> <input id="until" name="until" type="date" value="{until}"></p>
<p><button type="submit">Show</button> <a class="button" id="csv" href="{csv}" download>Download CSV</a></p>
</form>
<p class="note">Showing {scope}: the same totals as <code>GET /v1/usage</code>.</p>
{chart}
<div class="scroll"><table id="usage"><thead><tr><th scope="col">{group}</th>{headings}</tr></thead><tbody>{table}</tbody></table></div>"#,
        since = value(&params.since),
        until = value(&params.until),
        csv = params.link("/ui/usage.csv"),
        chart = html::bar_chart("usage-chart", &format!("{what} by {}", group_name(group)), &bars, what),
        group = group_name(group),
    );
    page("Usage", "usage", &viewer, console.app.service.mode() == Mode::Local, body)
}

async fn usage_csv(
    State(console): State<Console>,
    Viewer(viewer): Viewer,
    Params(params): Params<UsageParams>,
) -> Response {
    let query = match params.query() {
        Ok(query) => query,
        Err(message) => return failure(StatusCode::BAD_REQUEST, &message),
    };
    let group = group_name(query.group_by);
    let rows = match console.app.service.usage(&viewer, query).await {
        Ok(rows) => rows,
        Err(error) => return service_failure(error),
    };
    let mut csv = String::from(group);
    for (field, _) in USAGE_COLUMNS {
        csv.push(',');
        csv.push_str(field);
    }
    csv.push('\n');
    for row in &rows {
        csv.push_str(&csv_field(&row.group));
        for (field, _) in USAGE_COLUMNS {
            csv.push(',');
            csv.push_str(&usage_value(row, field));
        }
        csv.push('\n');
    }
    let mut response = csv.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    let name = format!("attachment; filename=\"sandgate-usage-by-{group}.csv\"");
    headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_str(&name).expect("ASCII"));
    response
}

/// A CSV field, quoted when it needs to be; a leading formula character is defused.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text.to_string() };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[derive(Debug, Default, Deserialize)]
struct ExecutionParams {
    user: Option<String>,
    outcome: Option<String>,
    agent_session: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

async fn executions(
    State(console): State<Console>,
    Viewer(viewer): Viewer,
    Params(params): Params<ExecutionParams>,
) -> Response {
    let text = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    let bound = |v: &Option<String>| text(v).map(|t| store::usage_time(&t)).transpose();
    let (since, until) = match (bound(&params.since), bound(&params.until)) {
        (Ok(since), Ok(until)) => (since, until),
        (Err(message), _) | (_, Err(message)) => return failure(StatusCode::BAD_REQUEST, &message),
    };
    let query = ExecutionQuery {
        user: text(&params.user),
        outcome: text(&params.outcome),
        agent_session: text(&params.agent_session),
        since_ms: since,
        until_ms: until,
        limit: 200,
    };
    // One agent session: its model calls beside its executions.
    let session_calls = match &query.agent_session {
        Some(_) => {
            let calls = ExecutionQuery { outcome: None, ..query.clone() };
            match console.app.service.model_calls(&viewer, calls).await {
                Ok(calls) => Some(calls),
                Err(error) => return service_failure(error),
            }
        }
        None => None,
    };
    let rows = match console.app.service.executions(&viewer, query).await {
        Ok(rows) => rows,
        Err(error) => return service_failure(error),
    };
    let mut table = String::new();
    for row in &rows {
        table.push_str(&execution_row(row));
    }
    let session_calls = session_calls.map_or_else(String::new, |calls| {
        format!(
            "<h2>Model calls in this agent session</h2>\n<p class=\"note\">The latest 200, newest first, whether made from an execution or by the agent through the proxy.</p>\n{}",
            model_calls_table(&calls)
        )
    });
    if table.is_empty() {
        table.push_str(r#"<tr><td colspan="8">No executions match.</td></tr>"#);
    }
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    let user_filter = if viewer.role == Role::Admin {
        format!(
            r#"<p><label for="user">User</label> <input id="user" name="user" value="{}"></p>"#,
            value(&params.user)
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"<form class="filters" method="get" action="/ui/executions">
{user_filter}<p><label for="outcome">Outcome</label> <input id="outcome" name="outcome" placeholder="ok, exception, timeout…" value="{outcome}"></p>
<p><label for="agent_session">Agent session</label> <input id="agent_session" name="agent_session" value="{agent_session}"></p>
<p><label for="since">Since (UTC)</label> <input id="since" name="since" type="date" value="{since}"></p>
<p><label for="until">Until (UTC, exclusive)</label> <input id="until" name="until" type="date" value="{until}"></p>
<p><button type="submit">Filter</button></p>
</form>
<p class="note">The latest 200, newest first.</p>
<div class="scroll"><table id="executions"><thead><tr><th scope="col">Started (UTC)</th><th scope="col">Execution</th><th scope="col">User</th><th scope="col">Team</th><th scope="col">Outcome</th><th scope="col">Wall ms</th><th scope="col">Fuel</th><th scope="col">Host calls</th></tr></thead><tbody>{table}</tbody></table></div>
{session_calls}"#,
        outcome = value(&params.outcome),
        agent_session = value(&params.agent_session),
        since = value(&params.since),
        until = value(&params.until),
    );
    page("Executions", "executions", &viewer, console.app.service.mode() == Mode::Local, body)
}

fn execution_row(row: &ExecutionRecord) -> String {
    format!(
        r#"<tr data-user="{user}"><td>{started}</td><td><a href="/ui/executions/{id}">{short}…</a></td><td>{user}</td><td>{team}</td><td class="outcome-{outcome}">{outcome}</td>{wall}{fuel}{calls}</tr>"#,
        started = time(row.started_at_ms),
        id = esc(&row.id),
        short = esc(row.id.get(..13).unwrap_or(&row.id)),
        user = esc(&row.user),
        team = esc(&row.team),
        outcome = esc(&row.outcome),
        wall = num_cell("wall_ms", row.wall_ms),
        fuel = num_cell("fuel", row.fuel),
        calls = num_cell("host_calls", row.host_calls),
    )
}

async fn execution(State(console): State<Console>, Viewer(viewer): Viewer, Path(id): Path<String>) -> Response {
    let approvals = match console.app.service.execution_approvals(&viewer, &id).await {
        Ok(approvals) => approvals,
        Err(error) => return service_failure(error),
    };
    let detail = match console.app.service.execution(&viewer, &id).await {
        Ok(detail) => detail,
        // Paused: it has no record until it ends, only its approvals.
        // Paused (it has no record until it ends), or another's execution whose call
        // the viewer may decide: only its approvals.
        Err(crate::service::ServiceError::NotFound(_)) if !approvals.is_empty() => {
            let pending = approvals.iter().any(|a| a.status == crate::store::ApprovalStatus::Pending);
            let state = if pending { "paused" } else { "resumed (its record is its caller's and the admins' to see)" };
            let body = format!(
                r#"<dl class="facts"><div><dt>Execution</dt><dd id="execution-id">{id}</dd></div><div><dt>Outcome</dt><dd id="execution-outcome">{state}</dd></div></dl>
<h2>Approvals</h2>{table}"#,
                id = esc(&id),
                table = approvals_table(&approvals)
            );
            return page("Execution", "executions", &viewer, console.app.service.mode() == Mode::Local, body);
        }
        Err(error) => return service_failure(error),
    };
    let run = &detail.execution;
    // The timeline: the execution, then each call where it fell in it, and each wait
    // for an approval from its pause to its decision.
    let mut lanes: Vec<(String, i64, i64, String)> =
        vec![("execution".into(), run.started_at_ms, run.ended_at_ms - run.started_at_ms, run.outcome.clone())];
    lanes.extend(detail.calls.iter().map(|c| (c.name.clone(), c.started_at_ms, c.latency_ms, c.outcome.clone())));
    lanes.extend(
        detail
            .model_calls
            .iter()
            .map(|c| (format!("model {}", c.model), c.started_at_ms, c.latency_ms, c.status.clone())),
    );
    for approval in &approvals {
        let waited = approval.waited_ms.unwrap_or_else(|| crate::time::now_ms() - approval.created_at_ms);
        let outcome = match approval.status {
            crate::store::ApprovalStatus::Approved => "ok: approved",
            other => other.as_str(),
        };
        lanes.push((format!("approval {}", approval.tool), approval.created_at_ms, waited, outcome.to_string()));
    }
    let last = lanes.iter().map(|(_, start, length, _)| start + length).max().unwrap_or(run.ended_at_ms);
    let span = (last.max(run.ended_at_ms) - run.started_at_ms).max(1) as f64;
    let lane_height = 22.0;
    let mut svg = format!(
        r#"<figure class="chart"><svg id="timeline" viewBox="0 0 720 {h}" role="img" aria-labelledby="timeline-title"><title id="timeline-title">Timeline of execution {id}: {n} calls</title>"#,
        h = lanes.len() as f64 * lane_height + 4.0,
        id = esc(&run.id),
        n = lanes.len() - 1,
    );
    for (i, (name, start, length, outcome)) in lanes.iter().enumerate() {
        let x = 200.0 + ((start - run.started_at_ms) as f64 / span * 510.0).clamp(0.0, 510.0);
        let w = (*length as f64 / span * 510.0).max(2.0).min((710.0 - x).max(2.0));
        let y = i as f64 * lane_height + 2.0;
        let class = if outcome.starts_with("ok") { "ok" } else { "bad" };
        svg.push_str(&format!(
            r#"<text x="0" y="{ty:.1}" class="lane">{name}</text><rect class="{class}" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="16"><title>{name}: {length} ms, {outcome}</title></rect>"#,
            ty = y + 13.0,
            name = esc(name),
            outcome = esc(outcome),
        ));
    }
    svg.push_str("</svg><figcaption>Each call where it fell in the execution's wall time.</figcaption></figure>");
    let mut calls = String::new();
    for call in &detail.calls {
        calls.push_str(&format!(
            "<tr><td>{}</td><td>{}</td>{}<td>{}</td></tr>",
            time(call.started_at_ms),
            esc(&call.name),
            num_cell("latency_ms", call.latency_ms),
            esc(&call.outcome)
        ));
    }
    if calls.is_empty() {
        calls.push_str(r#"<tr><td colspan="4">No host calls.</td></tr>"#);
    }
    let mut logs = String::new();
    for line in &detail.logs {
        logs.push_str(&format!(
            r#"<tr class="log-{level}"><td>{level}</td><td><pre>{message}</pre></td></tr>"#,
            level = esc(&line.level),
            message = esc(&line.message)
        ));
    }
    if logs.is_empty() {
        logs.push_str(r#"<tr><td colspan="2">It printed nothing.</td></tr>"#);
    }
    let limit = matches!(
        run.outcome.as_str(),
        "timeout" | "out_of_fuel" | "out_of_memory" | "stack_overflow" | "output_limit" | "call_limit"
    );
    let body = format!(
        r#"<dl class="facts">
<div><dt>Execution</dt><dd id="execution-id">{id}</dd></div>
<div><dt>User</dt><dd>{user} (team {team}, key {key})</dd></div>
<div><dt>Started</dt><dd>{started}</dd></div>
<div><dt>Outcome</dt><dd id="execution-outcome">{outcome}{limit}</dd></div>
<div><dt>Wall time</dt><dd>{wall} ms</dd></div>
<div><dt>Fuel</dt><dd>{fuel}</dd></div>
<div><dt>Peak memory</dt><dd>{memory} bytes</dd></div>
<div><dt>Model cost</dt><dd id="execution-cost">{cost} USD</dd></div>
</dl>
{svg}
<h2>Host calls</h2>
<div class="scroll"><table id="calls"><thead><tr><th scope="col">Started</th><th scope="col">Call</th><th scope="col">Latency ms</th><th scope="col">Outcome</th></tr></thead><tbody>{calls}</tbody></table></div>
<h2>Model calls</h2>
{models}
<h2>Approvals</h2>
{approvals}
<h2>Console</h2>
<div class="scroll"><table id="logs"><thead><tr><th scope="col">Level</th><th scope="col">Line</th></tr></thead><tbody>{logs}</tbody></table></div>
<p class="note">Up to 16 KiB of console lines are kept with each execution.</p>"#,
        logs = logs,
        models = model_calls_table(&detail.model_calls),
        approvals = approvals_table(&approvals),
        id = esc(&run.id),
        user = esc(&run.user),
        team = esc(&run.team),
        key = esc(&run.key),
        started = time(run.started_at_ms),
        outcome = esc(&run.outcome),
        limit = if limit { " (a limit was hit)" } else { "" },
        wall = run.wall_ms,
        fuel = run.fuel,
        memory = run.memory_bytes,
        cost = usd(detail.cost_usd()),
    );
    page("Execution", "executions", &viewer, console.app.service.mode() == Mode::Local, body)
}

/// An execution's approvals: each call it paused at, who decided it, when, and how
/// long it waited.
fn approvals_table(approvals: &[crate::service::approvals::ApprovalView]) -> String {
    let mut rows = String::new();
    for approval in approvals {
        rows.push_str(&format!(
            r#"<tr><td><a href="/ui/approvals/{id}">{tool}</a></td><td>{paused}</td><td>{status}</td><td>{by}</td><td>{at}</td><td class="num">{waited}</td></tr>"#,
            id = esc(&approval.id),
            tool = esc(&approval.tool),
            paused = esc(&approval.created_at),
            status = approval.status.as_str(),
            by = esc(approval.decided_by.as_deref().unwrap_or("")),
            at = esc(approval.decided_at.as_deref().unwrap_or("")),
            waited = approval.waited_ms.map(|ms| format!("{:.1} s", ms as f64 / 1000.0)).unwrap_or_default(),
        ));
    }
    if rows.is_empty() {
        rows.push_str(r#"<tr><td colspan="6">No call of this execution waited for approval.</td></tr>"#);
    }
    format!(
        r#"<div class="scroll"><table id="execution-approvals"><thead><tr><th scope="col">Call</th><th scope="col">Paused</th><th scope="col">Decision</th><th scope="col">By</th><th scope="col">At</th><th scope="col">Waited</th></tr></thead><tbody>{rows}</tbody></table></div>"#
    )
}

const DAY_MS: i64 = 86_400_000;

/// The last day, for the models and tools pages.
/// The model calls table: one row per call, newest first as given.
fn model_calls_table(calls: &[crate::store::ModelCallRow]) -> String {
    let mut rows = String::new();
    for call in calls {
        rows.push_str(&format!(
            r#"<tr><td>{}</td><td>{}</td><td>{}</td>{}{}<td class="num" data-field="cost_usd" data-value="{}">{}</td><td>{}</td><td>{}</td></tr>"#,
            time(call.started_at_ms),
            esc(&call.model),
            esc(&call.tier),
            num_cell("input_tokens", call.input_tokens),
            num_cell("output_tokens", call.output_tokens),
            call.cost_usd,
            usd(call.cost_usd),
            esc(&call.status),
            esc(&call.fallbacks.join("; "))
        ));
    }
    if rows.is_empty() {
        rows.push_str(r#"<tr><td colspan="8">No model calls.</td></tr>"#);
    }
    format!(
        r#"<div class="scroll"><table id="model-calls"><thead><tr><th scope="col">Started</th><th scope="col">Model</th><th scope="col">Tier</th><th scope="col">Input tokens</th><th scope="col">Output tokens</th><th scope="col">Cost (USD)</th><th scope="col">Status</th><th scope="col">Fallbacks</th></tr></thead><tbody>{rows}</tbody></table></div>"#
    )
}

fn last_day(limit: u32) -> ExecutionQuery {
    let now = now_ms();
    ExecutionQuery { since_ms: Some(now - DAY_MS), until_ms: Some(now + 1), limit, ..ExecutionQuery::default() }
}

fn usage_table(id: &str, heading: &str, rows: &[UsageRow]) -> String {
    let mut body = String::new();
    for row in rows {
        body.push_str(&format!(
            r#"<tr data-group="{group}"><th scope="row">{group}</th>{}{}{}{}</tr>"#,
            num_cell("model_calls", row.model_calls),
            num_cell("input_tokens", row.input_tokens),
            num_cell("output_tokens", row.output_tokens),
            num_cell("cost_usd", usd(row.cost_usd)),
            group = esc(&row.group),
        ));
    }
    if body.is_empty() {
        body.push_str(r#"<tr><td colspan="5">No model calls.</td></tr>"#);
    }
    format!(
        r#"<div class="scroll"><table id="{id}"><thead><tr><th scope="col">{heading}</th><th scope="col">Calls</th><th scope="col">Input tokens</th><th scope="col">Output tokens</th><th scope="col">Cost (USD)</th></tr></thead><tbody>{body}</tbody></table></div>"#
    )
}

async fn models(State(console): State<Console>, Viewer(viewer): Viewer) -> Response {
    let service = &console.app.service;
    let by = |group_by| UsageQuery { group_by, since_ms: None, until_ms: None, user: None };
    let (by_model, by_tier, recent) = match (
        service.usage(&viewer, by(GroupBy::Model)).await,
        service.usage(&viewer, by(GroupBy::Tier)).await,
        service.model_calls(&viewer, last_day(crate::service::MAX_LISTED)).await,
    ) {
        (Ok(models), Ok(tiers), Ok(recent)) => (models, tiers, recent),
        (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => return service_failure(error),
    };
    // Fallbacks: each model that failed before another answered, and why.
    let mut reasons: std::collections::BTreeMap<String, u64> = Default::default();
    for call in &recent {
        for fallback in &call.fallbacks {
            *reasons.entry(fallback.clone()).or_default() += 1;
        }
    }
    let mut reasons: Vec<(String, u64)> = reasons.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut fallback_rows = String::new();
    for (reason, count) in &reasons {
        fallback_rows.push_str(&format!("<tr><td>{}</td>{}</tr>", esc(reason), num_cell("count", count)));
    }
    if fallback_rows.is_empty() {
        fallback_rows.push_str(r#"<tr><td colspan="2">No fallbacks in the last day.</td></tr>"#);
    }
    let mut circuits = String::new();
    for (provider, open) in service.circuits() {
        let state = if open { "open: calls skip it until its cooldown ends" } else { "closed" };
        circuits.push_str(&format!(
            r#"<tr><th scope="row">{}</th><td data-field="circuit">{state}</td></tr>"#,
            esc(&provider)
        ));
    }
    if circuits.is_empty() {
        circuits.push_str(r#"<tr><td colspan="2">No model providers are configured.</td></tr>"#);
    }
    let bars: Vec<(String, f64)> = by_model.iter().map(|r| (r.group.clone(), r.cost_usd)).collect();
    let fell_back = recent.iter().filter(|c| !c.fallbacks.is_empty()).count();
    let body = format!(
        r#"<p class="note">All time, as <code>GET /v1/usage?group_by=model</code> and <code>group_by=tier</code> report it.</p>
{chart}
<h2>By model</h2>
{models}
<h2>By tier</h2>
{tiers}
<h2>Fallbacks, last day</h2>
<p class="note">{fell_back} of the last {recent} model calls were answered after another model failed.</p>
<div class="scroll"><table id="fallbacks"><thead><tr><th scope="col">Model that failed, and why</th><th scope="col">Times</th></tr></thead><tbody>{fallback_rows}</tbody></table></div>
<h2>Circuit breakers</h2>
<div class="scroll"><table id="circuits"><thead><tr><th scope="col">Provider</th><th scope="col">State</th></tr></thead><tbody>{circuits}</tbody></table></div>"#,
        chart = html::bar_chart("model-cost", "Cost (USD) by model", &bars, "USD"),
        models = usage_table("models", "Model", &by_model),
        tiers = usage_table("tiers", "Tier", &by_tier),
        recent = recent.len(),
    );
    page("Models", "models", &viewer, console.app.service.mode() == Mode::Local, body)
}

async fn tools(State(console): State<Console>, Viewer(viewer): Viewer) -> Response {
    let stats = match console.app.service.call_stats(&viewer, last_day(0)).await {
        Ok(stats) => stats,
        Err(error) => return service_failure(error),
    };
    let catalog = console.app.service.upstreams().catalog();
    let mut servers = String::new();
    for (summary, tool_count) in catalog.server_tools() {
        let prefix = format!("tools.{}.", summary.name);
        let of_server: Vec<&crate::store::CallStats> = stats.iter().filter(|s| s.name.starts_with(&prefix)).collect();
        let calls: i64 = of_server.iter().map(|s| s.calls).sum();
        let errors: i64 = of_server.iter().map(|s| s.errors).sum();
        let latency: i64 = of_server.iter().map(|s| s.latency_ms_total).sum();
        let max = of_server.iter().map(|s| s.latency_ms_max).max().unwrap_or(0);
        let rate = if calls > 0 { format!("{:.1}%", errors as f64 * 100.0 / calls as f64) } else { "–".into() };
        let mean = if calls > 0 { format!("{:.1}", latency as f64 / calls as f64) } else { "–".into() };
        servers.push_str(&format!(
            r#"<tr data-group="{name}"><th scope="row">{name}</th><td data-field="status">{status}</td>{}{}{}<td class="num" data-field="error_rate">{rate}</td><td class="num" data-field="mean_latency_ms">{mean}</td>{}</tr>"#,
            num_cell("tools", tool_count),
            num_cell("calls", calls),
            num_cell("errors", errors),
            num_cell("max_latency_ms", max),
            name = esc(&summary.name),
            status = esc(&summary.status),
        ));
    }
    if servers.is_empty() {
        servers.push_str(r#"<tr><td colspan="8">No upstream MCP servers are configured.</td></tr>"#);
    }
    let mut per_tool = String::new();
    for stat in &stats {
        per_tool.push_str(&format!(
            r#"<tr data-group="{name}"><th scope="row">{name}</th>{}{}{}{}</tr>"#,
            num_cell("calls", stat.calls),
            num_cell("errors", stat.errors),
            num_cell("mean_latency_ms", format!("{:.1}", stat.latency_ms_total as f64 / stat.calls.max(1) as f64)),
            num_cell("max_latency_ms", stat.latency_ms_max),
            name = esc(&stat.name),
        ));
    }
    if per_tool.is_empty() {
        per_tool.push_str(r#"<tr><td colspan="5">No host calls in the last day.</td></tr>"#);
    }
    let scope = if viewer.role == Role::Admin { "everyone's" } else { "your own" };
    let body = format!(
        r#"<h2>Upstream MCP servers</h2>
<p class="note">Status now; calls, errors (denied, failed or cancelled) and latency over the last day, {scope}.</p>
<div class="scroll"><table id="servers"><thead><tr><th scope="col">Server</th><th scope="col">Status</th><th scope="col">Tools</th><th scope="col">Calls</th><th scope="col">Errors</th><th scope="col">Error rate</th><th scope="col">Mean ms</th><th scope="col">Max ms</th></tr></thead><tbody>{servers}</tbody></table></div>
<h2>Every host call, last day</h2>
<div class="scroll"><table id="calls-by-name"><thead><tr><th scope="col">Call</th><th scope="col">Calls</th><th scope="col">Errors</th><th scope="col">Mean ms</th><th scope="col">Max ms</th></tr></thead><tbody>{per_tool}</tbody></table></div>"#
    );
    page("Tools", "tools", &viewer, console.app.service.mode() == Mode::Local, body)
}

fn limit_text(limit_usd: Option<f64>, limit_tokens: Option<u64>) -> String {
    match (limit_usd, limit_tokens) {
        (Some(usd), Some(tokens)) => format!("{} USD, {tokens} tokens", html::trim_number(usd)),
        (Some(usd), None) => format!("{} USD", html::trim_number(usd)),
        (None, Some(tokens)) => format!("{tokens} tokens"),
        (None, None) => "none".into(),
    }
}

async fn budgets(State(console): State<Console>, Viewer(viewer): Viewer) -> Response {
    let standing = match console.app.service.budgets(&viewer).await {
        Ok(standing) => standing,
        Err(error) => return service_failure(error),
    };
    let mut rows = String::new();
    for line in &standing {
        rows.push_str(&format!(
            r#"<tr data-group="{scope} {period}"><th scope="row">{scope}</th><td>{period} (since {since})</td><td>{limit}</td>{}{}{}{}{}<td class="num" data-field="share">{share:.1}%</td></tr>"#,
            num_cell("spent_usd", usd(line.spent_usd)),
            num_cell("held_usd", usd((line.used_usd - line.spent_usd).max(0.0))),
            num_cell("used_usd", usd(line.used_usd)),
            num_cell("spent_tokens", line.spent_tokens),
            num_cell("used_tokens", line.used_tokens),
            scope = esc(&line.scope),
            period = line.period,
            since = time(line.since_ms),
            limit = esc(&limit_text(line.limit_usd, line.limit_tokens)),
            share = line.share() * 100.0,
        ));
    }
    if rows.is_empty() {
        rows.push_str(r#"<tr><td colspan="9">No budget is in force.</td></tr>"#);
    }
    let bars: Vec<(String, f64)> =
        standing.iter().map(|l| (format!("{} {}", l.scope, l.period), (l.share() * 100.0).min(999.0))).collect();
    let scope = if viewer.role == Role::Admin { "every configured key's user and team" } else { "yours" };
    let body = format!(
        r#"<p class="note">Budgets in force for {scope}, closest to its limit first. Used is spent plus held: the
reservations of model calls in flight, which a call settles or releases when it ends.</p>
{chart}
<div class="scroll"><table id="budgets"><thead><tr><th scope="col">Scope</th><th scope="col">Period</th><th scope="col">Limit</th><th scope="col">Spent USD</th><th scope="col">Held USD</th><th scope="col">Used USD</th><th scope="col">Spent tokens</th><th scope="col">Used tokens</th><th scope="col">Of the limit</th></tr></thead><tbody>{rows}</tbody></table></div>"#,
        chart = html::bar_chart_to("budget-share", "Share of each budget used (%)", &bars, "%", Some(100.0)),
    );
    page("Budgets", "budgets", &viewer, console.app.service.mode() == Mode::Local, body)
}

async fn sessions(State(console): State<Console>, Viewer(viewer): Viewer) -> Response {
    let sessions = match console.app.service.live_sessions(&viewer).await {
        Ok(sessions) => sessions,
        Err(error) => return service_failure(error),
    };
    let mut rows = String::new();
    for session in &sessions {
        rows.push_str(&format!(
            r#"<tr data-user="{user}"><td><code>{id}</code></td><td>{user}</td><td>{team}</td><td>{language}</td><td>{created}</td><td>{used}</td>{}{}{}{}</tr>"#,
            num_cell("executions", session.executions),
            num_cell("image_bytes", session.image_bytes),
            num_cell("files", session.files),
            num_cell("file_bytes", session.file_bytes),
            id = esc(&session.id),
            user = esc(&session.user),
            team = esc(&session.team),
            language = esc(session.language.as_str()),
            created = time(session.created_at_ms),
            used = time(session.used_at_ms),
        ));
    }
    if rows.is_empty() {
        rows.push_str(r#"<tr><td colspan="10">No live sessions.</td></tr>"#);
    }
    let total: u64 = sessions.iter().map(|s| s.image_bytes + s.file_bytes).sum();
    let body = format!(
        r#"<p class="note">{count} live sessions, {total} bytes of memory images and workspace files in the store.</p>
<div class="scroll"><table id="sessions"><thead><tr><th scope="col">Session</th><th scope="col">User</th><th scope="col">Team</th><th scope="col">Language</th><th scope="col">Opened (UTC)</th><th scope="col">Last used</th><th scope="col">Executions</th><th scope="col">Image bytes</th><th scope="col">Files</th><th scope="col">File bytes</th></tr></thead><tbody>{rows}</tbody></table></div>"#,
        count = sessions.len(),
    );
    page("Sessions", "sessions", &viewer, console.app.service.mode() == Mode::Local, body)
}

/// A table of keys: each row's name, whose, teams, dates, and a button to revoke it.
fn keys_table(id: &str, keys: &[crate::store::StoredKey], with_owner: bool) -> String {
    let mut rows = String::new();
    for key in keys {
        let e = &key.entry;
        let owner = if with_owner {
            format!("<td>{}</td>", e.owner.as_deref().map_or_else(|| "operator".to_string(), esc))
        } else {
            String::new()
        };
        rows.push_str(&format!(
            r#"<tr data-key="{name}"><td><code>{name}</code></td>{owner}<td>{user}</td><td>{teams}</td><td>{role}</td><td>{created}</td><td>{expires}</td><td><button type="button" class="revoke-key" data-key="{name}">Revoke</button></td></tr>"#,
            name = esc(&e.name),
            user = esc(&e.user),
            teams = esc(&e.teams.join(", ")),
            role = e.role.as_str(),
            created = time(key.created_at_ms),
            expires = e.expires_at_ms.map_or_else(|| "never".to_string(), time),
        ));
    }
    let columns = if with_owner { 8 } else { 7 };
    if rows.is_empty() {
        rows.push_str(&format!(r#"<tr><td colspan="{columns}">No live keys.</td></tr>"#));
    }
    let owner = if with_owner { r#"<th scope="col">Owner</th>"# } else { "" };
    format!(
        r#"<div class="scroll"><table id="{id}"><thead><tr><th scope="col">Key</th>{owner}<th scope="col">User</th><th scope="col">Teams</th><th scope="col">Role</th><th scope="col">Created (UTC)</th><th scope="col">Expires (UTC)</th><th scope="col"></th></tr></thead><tbody>{rows}</tbody></table></div>"#
    )
}

/// Personal keys: the viewer's own (and a form to issue one, when signed in with
/// SSO and a policy grants them), and for admins every key with its owner.
async fn keys(State(console): State<Console>, Viewer(viewer): Viewer) -> Response {
    let service = &console.app.service;
    let own = match service.personal_keys(&viewer, false).await {
        Ok(keys) => keys,
        Err(error) => return service_failure(error),
    };
    let grant = service.policies().current().capabilities(&viewer).keys;
    let form = match grant {
        Some(grant) if viewer.signed_in => {
            let mut days: Vec<u32> = [1, 7, 30, 90, 365].into_iter().filter(|d| *d < grant.max_lifetime_days).collect();
            days.push(grant.max_lifetime_days);
            let options: String = days
                .iter()
                .map(|d| {
                    let selected = if *d == grant.max_lifetime_days { " selected" } else { "" };
                    format!(r#"<option value="{}"{selected}>{d} days</option>"#, u64::from(*d) * 86_400)
                })
                .collect();
            format!(
                r#"<form id="new-key" class="card">
<p>A personal key acts as you, for your teams as they are now ({teams}), until it expires. Use it where a client cannot sign in itself; for Claude Code and other clients that run a command for their key, <code>sandgate token</code> is better. You may hold {max} live keys.</p>
<p><label for="key-name">Name</label> <input id="key-name" name="name" maxlength="64" pattern="[A-Za-z0-9._][A-Za-z0-9._\-]*" placeholder="laptop" spellcheck="false"></p>
<p><label for="key-lifetime">Expires in</label> <select id="key-lifetime" name="expires_in_s">{options}</select></p>
<p><button type="submit">Create key</button></p>
<p id="new-key-error" role="alert" class="error"></p>
<div id="new-key-made" hidden><p>Your new key, shown only this once:</p><p><input id="new-key-secret" readonly spellcheck="false" aria-label="The new key"></p><p><a href="/ui/keys">Done</a></p></div>
</form>"#,
                teams = esc(&viewer.teams.join(", ")),
                max = grant.max,
            )
        }
        Some(_) => r#"<p class="note" id="no-new-key">Personal keys are issued to people signed in with SSO; sign in with SSO to create one.</p>"#.to_string(),
        None => r#"<p class="note" id="no-new-key">No policy lets you issue personal keys (a <code>[policy.keys]</code> table grants them).</p>"#.to_string(),
    };
    let mut body = form + "<h2>Your keys</h2>" + &keys_table("my-keys", &own, false);
    if viewer.role == crate::auth::Role::Admin {
        match service.personal_keys(&viewer, true).await {
            Ok(all) => {
                body += "<h2>Every key in the store</h2>";
                body += &keys_table("all-keys", &all, true);
            }
            Err(error) => return service_failure(error),
        }
    }
    page("Keys", "keys", &viewer, service.mode() == Mode::Local, body)
}

/// A JSON answer for the console's scripts: the body, or `{"error"}` with the API's status.
fn json_result<T: serde::Serialize>(result: Result<(StatusCode, T), crate::service::ServiceError>) -> Response {
    match result {
        Ok((status, body)) => (status, Json(body)).into_response(),
        Err(error) => (crate::http::error::status_of(&error), Json(serde_json::json!({"error": error.to_string()})))
            .into_response(),
    }
}

async fn create_key(
    State(console): State<Console>,
    Viewer(viewer): Viewer,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let body = match crate::http::read_body(&headers, body, 64 << 10).await {
        Ok(bytes) => bytes,
        Err(error) => return error.into_response(),
    };
    let request = match serde_json::from_slice::<crate::service::keys::KeyRequest>(&body) {
        Ok(request) => request,
        Err(error) => {
            return json_result::<()>(Err(crate::service::ServiceError::Invalid(format!(
                "invalid request body: {error}"
            ))))
        }
    };
    let issued = console.app.service.issue_personal_key(&viewer, request).await;
    json_result(issued.map(|(key, stored)| {
        let info = crate::service::keys::KeyInfo::of(&stored);
        (StatusCode::CREATED, serde_json::json!({"key": key, "name": info.name, "expires_at": info.expires_at}))
    }))
}

async fn revoke_key(State(console): State<Console>, Viewer(viewer): Viewer, Path(name): Path<String>) -> Response {
    let revoked = console.app.service.revoke_personal_key(&viewer, &name).await;
    json_result(revoked.map(|()| (StatusCode::OK, serde_json::json!({"revoked": name}))))
}

/// The approvals page: calls waiting for a person that the viewer may see (their own,
/// those they may decide; an admin every one), then the last 30 days' decisions
/// counted per tool and approver.
async fn approvals(State(console): State<Console>, Viewer(viewer): Viewer) -> Response {
    let service = &console.app.service;
    let pending = match service.approvals(&viewer, Some(crate::store::ApprovalStatus::Pending), 500).await {
        Ok(pending) => pending,
        Err(error) => return service_failure(error),
    };
    let counts = match service.approval_counts(&viewer, crate::time::now_ms() - 30 * DAY_MS).await {
        Ok(counts) => counts,
        Err(error) => return service_failure(error),
    };
    let mut rows = String::new();
    for approval in &pending {
        let decide = if crate::service::approvals::may_decide(&viewer, approval) { "yes" } else { "no" };
        rows.push_str(&format!(
            r#"<tr data-approval="{id}"><td><a href="/ui/approvals/{id}">{tool}</a></td><td>{user} (team {team})</td><td>{reason}</td><td>{created}</td><td>{expires}</td><td>{decide}</td></tr>"#,
            id = esc(&approval.id),
            tool = esc(&approval.tool),
            user = esc(approval.caller["user"].as_str().unwrap_or_default()),
            team = esc(approval.caller["team"].as_str().unwrap_or_default()),
            reason = esc(approval.reason.as_str().unwrap_or_default()),
            created = esc(&approval.created_at),
            expires = esc(&approval.expires_at),
        ));
    }
    if rows.is_empty() {
        rows.push_str(r#"<tr><td colspan="6">No call is waiting for approval.</td></tr>"#);
    }
    let mut tally = String::new();
    for count in &counts {
        let wait = count.median_wait_ms.map_or_else(|| "–".to_string(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
        let approver = if count.approver.is_empty() { "(nobody yet)" } else { count.approver.as_str() };
        tally.push_str(&format!(
            "<tr><td>{}</td><td>{}</td>{}{}{}{}<td class=\"num\">{}</td></tr>",
            esc(&count.tool),
            esc(approver),
            num_cell("approved", count.approved),
            num_cell("denied", count.denied),
            num_cell("expired", count.expired),
            num_cell("pending", count.pending),
            wait
        ));
    }
    if tally.is_empty() {
        tally.push_str(r#"<tr><td colspan="7">No approvals in the last 30 days.</td></tr>"#);
    }
    let body = format!(
        r#"<section aria-labelledby="pending-h">
<h2 id="pending-h">Waiting for approval ({n})</h2>
<p class="note">Each of these calls paused its execution, which holds no resources while it waits and goes on where it stopped once the call is decided.</p>
<div class="scroll"><table id="pending-approvals"><thead><tr><th scope="col">Call</th><th scope="col">Caller</th><th scope="col">Why</th><th scope="col">Paused</th><th scope="col">Expires</th><th scope="col">You may decide</th></tr></thead><tbody>{rows}</tbody></table></div>
</section>
<section aria-labelledby="counts-h">
<h2 id="counts-h">Decisions in the last 30 days, per tool and approver</h2>
<div class="scroll"><table id="approval-counts"><thead><tr><th scope="col">Tool</th><th scope="col">Approver</th><th scope="col">Approved</th><th scope="col">Denied</th><th scope="col">Expired</th><th scope="col">Pending</th><th scope="col">Median wait</th></tr></thead><tbody>{tally}</tbody></table></div>
</section>"#,
        n = pending.len()
    );
    page("Approvals", "approvals", &viewer, console.app.service.mode() == Mode::Local, body)
}

/// One approval: the call (tool, arguments, caller), why it needs approval, and,
/// for a viewer who may decide it while it is pending, approve and deny buttons.
async fn approval(State(console): State<Console>, Viewer(viewer): Viewer, Path(id): Path<String>) -> Response {
    let approval = match console.app.service.approval(&viewer, &id).await {
        Ok(approval) => approval,
        Err(error) => return service_failure(error),
    };
    let args = serde_json::to_string_pretty(&approval.args).unwrap_or_default();
    let approvers: Vec<&str> =
        approval.approvers.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let rule = match &approval.rule {
        Value::Object(rule) => format!(
            "<code>{}:{}</code>, policy <strong>{}</strong>, <code>{}</code>",
            esc(rule.get("file").and_then(Value::as_str).unwrap_or_default()),
            rule.get("line").and_then(Value::as_u64).unwrap_or_default(),
            esc(rule.get("policy").and_then(Value::as_str).unwrap_or_default()),
            esc(rule.get("detail").and_then(Value::as_str).unwrap_or_default())
        ),
        _ => String::new(),
    };
    let decided = match (&approval.decided_by, &approval.decided_at) {
        (Some(by), Some(at)) => format!(
            r#"<div><dt>Decided</dt><dd id="approval-decided">{} by {} at {}{}</dd></div>"#,
            approval.status.as_str(),
            esc(by),
            esc(at),
            approval.decision_reason.as_deref().map(|r| format!(": {}", esc(r))).unwrap_or_default()
        ),
        (None, Some(at)) => format!(
            r#"<div><dt>Decided</dt><dd id="approval-decided">{} at {}</dd></div>"#,
            approval.status.as_str(),
            esc(at)
        ),
        _ => String::new(),
    };
    let form = if crate::service::approvals::may_decide(&viewer, &approval) {
        format!(
            r#"<form id="decide" class="filters" data-approval="{id}">
<p><label for="decision-reason">Reason (optional, shown to the code on a denial)</label> <textarea id="decision-reason" rows="2" maxlength="2000"></textarea></p>
<p><button type="button" class="decide" id="approve" data-decision="approve">Approve</button> <button type="button" class="decide" id="deny" data-decision="deny">Deny</button></p>
<p id="decide-error" role="alert" class="error"></p>
</form>"#,
            id = esc(&approval.id)
        )
    } else if approval.status == crate::store::ApprovalStatus::Pending {
        r#"<p class="note">You are not among this call's approvers (or it is your own call), so you cannot decide it.</p>"#.to_string()
    } else {
        String::new()
    };
    let body = format!(
        r#"<dl class="facts">
<div><dt>Status</dt><dd id="approval-status">{status}</dd></div>
<div><dt>Call</dt><dd id="approval-tool">{tool}</dd></div>
<div><dt>Caller</dt><dd>{user} (team {team}, key {key})</dd></div>
<div><dt>Execution</dt><dd><a href="/ui/executions/{execution}">{execution}</a></dd></div>
<div><dt>Why</dt><dd id="approval-reason">{reason}</dd></div>
<div><dt>Rule</dt><dd>{rule}</dd></div>
<div><dt>Approvers</dt><dd>{approvers}</dd></div>
<div><dt>Paused</dt><dd>{created}</dd></div>
<div><dt>Expires</dt><dd>{expires}</dd></div>
{decided}
</dl>
<h2>Arguments</h2>
<pre id="approval-args">{args}</pre>
{form}"#,
        status = approval.status.as_str(),
        tool = esc(&approval.tool),
        user = esc(approval.caller["user"].as_str().unwrap_or_default()),
        team = esc(approval.caller["team"].as_str().unwrap_or_default()),
        key = esc(approval.caller["key"].as_str().unwrap_or_default()),
        execution = esc(&approval.execution_id),
        reason = esc(approval.reason.as_str().unwrap_or_default()),
        approvers = esc(&approvers.join(", ")),
        created = esc(&approval.created_at),
        expires = esc(&approval.expires_at),
        args = esc(&args),
    );
    page("Approval", "approvals", &viewer, console.app.service.mode() == Mode::Local, body)
}

#[derive(Debug, Deserialize)]
struct DecideBody {
    decision: String,
    reason: Option<String>,
}

async fn decide(
    State(console): State<Console>,
    Viewer(viewer): Viewer,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let body = match crate::http::read_body(&headers, body, 64 << 10).await {
        Ok(bytes) => bytes,
        Err(error) => return error.into_response(),
    };
    let request = match serde_json::from_slice::<DecideBody>(&body) {
        Ok(request) if request.decision == "approve" || request.decision == "deny" => request,
        Ok(_) | Err(_) => {
            return json_result::<()>(Err(crate::service::ServiceError::Invalid(
                "say the decision: {\"decision\": \"approve\" or \"deny\"}".into(),
            )))
        }
    };
    let reason = request.reason.filter(|r| !r.trim().is_empty());
    let decided = console.app.service.decide(&viewer, &id, request.decision == "approve", reason).await;
    json_result(decided.map(|view| (StatusCode::OK, view)))
}

#[derive(Debug, Default, Deserialize)]
struct ExplainParams {
    user: Option<String>,
    team: Option<String>,
    what: Option<String>,
    name: Option<String>,
    /// A call's arguments (or a model request), as JSON.
    args: Option<String>,
}

async fn policies(
    State(console): State<Console>,
    Viewer(viewer): Viewer,
    Params(params): Params<ExplainParams>,
) -> Response {
    let set = console.app.service.policies().current();
    let mut listing = String::new();
    for policy in set.iter() {
        listing.push_str(&format!(
            "<tr><th scope=\"row\">{}</th><td>{}</td><td><code>{}:{}</code></td></tr>",
            esc(policy.name),
            esc(policy.description.unwrap_or("")),
            esc(&policy.file.display().to_string()),
            policy.line
        ));
    }
    let admin = viewer.role == Role::Admin;
    let text = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    let answer = match (text(&params.what), text(&params.name)) {
        (Some(what), name) => {
            // The form offers someone else only to an admin; the service decides who may
            // ask about whom (a member naming another user is refused, 403).
            let (user, team) = (text(&params.user), text(&params.team));
            let args = match text(&params.args).map(|a| serde_json::from_str::<serde_json::Value>(&a)).transpose() {
                Ok(args) => args,
                Err(error) => {
                    let message = format!("The arguments are not JSON: {error}");
                    return page(
                        "Policies",
                        "policies",
                        &viewer,
                        console.app.service.mode() == Mode::Local,
                        format!(r#"<p role="alert" class="error">{}</p>"#, esc(&message)),
                    );
                }
            };
            let ask = match (what.as_str(), name) {
                ("execute", _) => Some(Ask::Execute),
                ("tool", Some(name)) => Some(Ask::Tool(name, args)),
                ("model", Some(name)) => Some(Ask::Model(name, args)),
                ("tier", Some(name)) => Some(Ask::Tier(name)),
                _ => None,
            };
            match ask.map(|ask| console.app.service.explain(&viewer, user, team, ask)) {
                Some(Err(error)) => return service_failure(error),
                Some(Ok((subject, query, decision))) => {
                    let verdict = decision.verdict();
                    let approval = match &decision.approval {
                        Some(approval) => format!(
                            r#"<p id="decision-approvers">Approvers: {}; the call waits up to {} s{}.</p>"#,
                            esc(&approval.approvers.join(", ")),
                            approval.expires_after_s,
                            if approval.self_approval { "; the caller may approve it" } else { "" }
                        ),
                        None => String::new(),
                    };
                    let rule = match &decision.rule {
                        Some(rule) => format!(
                            "<p>Decided by policy <strong>{}</strong>, <code>{}</code>, at <code>{}:{}</code>.</p>",
                            esc(&rule.policy),
                            esc(&rule.detail),
                            esc(&rule.file.display().to_string()),
                            rule.line
                        ),
                        None => "<p>No rule matched: denied by default.</p>".to_string(),
                    };
                    format!(
                        r#"<section id="decision" class="card {verdict}" aria-live="polite"><h2>{verdict}: user {} (team {}), {}</h2><p id="decision-reason">{}</p>{rule}{approval}</section>"#,
                        esc(&subject.user),
                        esc(&subject.team),
                        esc(&query.to_string()),
                        esc(&decision.reason)
                    )
                }
                None => r#"<p role="alert" class="error">Name the tool, model or tier to ask about.</p>"#.to_string(),
            }
        }
        _ => String::new(),
    };
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    let who = if admin {
        format!(
            r#"<p><label for="explain-user">User</label> <input id="explain-user" name="user" value="{}" placeholder="{}"></p>
<p><label for="explain-team">Team</label> <input id="explain-team" name="team" value="{}" placeholder="{}"></p>"#,
            value(&params.user),
            esc(&viewer.user),
            value(&params.team),
            esc(&viewer.team)
        )
    } else {
        format!("<p>Asking as yourself: user {} (team {}).</p>", esc(&viewer.user), esc(&viewer.team))
    };
    let options: String =
        [("tool", "call the tool"), ("model", "use the model"), ("tier", "use the tier"), ("execute", "run code")]
            .iter()
            .map(|(v, label)| {
                let selected = if params.what.as_deref() == Some(v) { " selected" } else { "" };
                format!(r#"<option value="{v}"{selected}>{label}</option>"#)
            })
            .collect();
    let body = format!(
        r#"<section aria-labelledby="explain-h">
<h2 id="explain-h">Explain a decision</h2>
<form id="explain" class="filters" method="get" action="/ui/policies">
{who}
<p><label for="explain-what">May they</label> <select id="explain-what" name="what">{options}</select></p>
<p><label for="explain-name">Name</label> <input id="explain-name" name="name" value="{name}" placeholder="github.delete_repo, frontier, gpt-4.1"></p>
<p><label for="explain-args">Arguments (JSON, for rules with conditions)</label> <textarea id="explain-args" name="args" rows="3" placeholder="{{&quot;base&quot;: &quot;main&quot;}}">{args}</textarea></p>
<p><button type="submit">Explain</button></p>
</form>
{answer}
</section>
<section aria-labelledby="loaded-h">
<h2 id="loaded-h">Policies in force ({count} from {files} files)</h2>
<div class="scroll"><table id="policies"><thead><tr><th scope="col">Policy</th><th scope="col">Description</th><th scope="col">Where</th></tr></thead><tbody>{listing}</tbody></table></div>
</section>"#,
        name = value(&params.name),
        args = value(&params.args),
        count = set.iter().count(),
        files = set.files(),
    );
    page("Policies", "policies", &viewer, console.app.service.mode() == Mode::Local, body)
}
