//! Executions in the background: `POST /v1/executions` (the body of `POST /v1/execute`)
//! answers 202 with the execution's id at once; `GET /v1/executions/{id}` gives its
//! status and, once it ended, its result; `GET /v1/executions/{id}/events` streams its
//! console lines (`log`), `paused` when it waits for approval, and its result
//! (`result`) as server-sent events; `DELETE`
//! cancels it. Another principal's execution is a 404.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;

use serde_json::value::RawValue;

use super::extract::Caller;
use super::{ApiError, AppState};
use crate::service::LogLine;
use crate::service::{HandleEvent, HandleView};
use crate::store::HandleStatus;

/// How often a follower of a paused execution reads its status.
const PAUSED_POLL: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) async fn start(
    State(app): State<AppState>,
    Caller(principal): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = super::execute::execute_request(&app, &headers, body).await?;
    let view = app.service.start_handle(principal, request).await?;
    let location = format!("/v1/executions/{}", view.execution_id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(view)).into_response())
}

pub(super) async fn show(
    State(app): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
) -> Result<Json<HandleView>, ApiError> {
    Ok(Json(app.service.handle(&principal, &id).await?))
}

pub(super) async fn cancel(
    State(app): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = app.service.cancel_handle(&principal, &id).await?;
    let status = if view.running() { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((status, Json(view)).into_response())
}

fn log_event(line: &impl serde::Serialize) -> Result<Event, Infallible> {
    Ok(Event::default().event("log").json_data(line).unwrap_or_default())
}

pub(super) async fn events(
    State(app): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // 404 now, before the stream starts, for an execution the caller cannot see.
    app.service.handle(&principal, &id).await?;
    let following = app.service.follow_handle(&principal, &id);
    let live = following.is_some();
    let lines = match following {
        // Running here: the lines so far, then each as it comes, until it ends.
        Some(following) => {
            let so_far = futures::stream::iter(following.so_far).map(|line| log_event(&line));
            let next = futures::stream::unfold(following.next, |mut next| async move {
                loop {
                    match next.recv().await {
                        Ok(HandleEvent::Log(line)) => return Some((log_event(&line), next)),
                        // A follower too slow for the buffer misses lines here; the
                        // result carries every line.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Ok(HandleEvent::Ended) | Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
            so_far.chain(next).boxed()
        }
        None => futures::stream::empty().boxed(),
    };
    // Then the result, from the store (on another replica: when the store says it
    // ended). An execution paused for approval gives a `paused` event (its body, with
    // the approvals) and is followed on until it ends.
    let ended = futures::stream::unfold(Some((false, live)), move |state| {
        let (app, principal, id) = (app.clone(), principal.clone(), id.clone());
        async move {
            let (paused_sent, live) = state?;
            let view = match app.service.wait_handle(&principal, &id).await {
                Ok(view) => view,
                Err(error) => {
                    let error = ApiError::from(error);
                    let body = serde_json::json!({ "error": { "kind": error.kind, "message": error.message } });
                    return Some((vec![Ok(Event::default().event("error").json_data(body).unwrap_or_default())], None));
                }
            };
            let result = view.result.as_deref().map_or("null", RawValue::get).to_string();
            if view.status == HandleStatus::Paused {
                if paused_sent {
                    tokio::time::sleep(PAUSED_POLL).await;
                    return Some((Vec::new(), Some((true, live))));
                }
                return Some((vec![Ok(Event::default().event("paused").data(result))], Some((true, live))));
            }
            let mut events: Vec<Result<Event, Infallible>> = Vec::new();
            // Lines the stream did not carry live (another replica ran it, or it went
            // on after a pause) come from the stored result.
            if !live || paused_sent {
                /// The lines of a stored result, read without the rest of it.
                #[derive(serde::Deserialize)]
                struct Lines {
                    #[serde(default)]
                    logs: Vec<LogLine>,
                }
                let lines = serde_json::from_str::<Lines>(&result).map(|l| l.logs).unwrap_or_default();
                events.extend(lines.iter().map(log_event));
            }
            events.push(Ok(Event::default().event("result").data(result)));
            Some((events, None))
        }
    })
    .flat_map(futures::stream::iter);
    Ok(Sse::new(lines.chain(ended)).keep_alive(KeepAlive::default()).into_response())
}
