//! Executions started in the background, for runs longer than a request should be
//! held open: [`Service::start_handle`] answers at once with the execution's id; the
//! execution runs as a task of the service (not of any request) under the caller's
//! `limits.background_wall_ms`, and is recorded like any other.
//!
//! Its status, and its result once it ends, live in the store for
//! `[sandbox] result_ttl_s`, so any replica answers for it. Its console lines stream
//! from the replica running it ([`Service::handle_events`]); another replica follows
//! the store and gives the lines with the result. A cancel on any replica is a flag in
//! the store that the running replica checks every [`CANCEL_POLL`]; on the running
//! replica it takes effect at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Service, ServiceError};
use crate::auth::Principal;
use crate::error::Kind;
use crate::request::ExecuteRequest;
use crate::sandbox::{LogLine, Outcome};
use crate::store::{now_ms, HandleEnd, HandleRecord, HandleStatus, Owner};

/// How often a running background execution checks the store for a cancel made on
/// another replica, and how often a follower on another replica reads its status.
pub const CANCEL_POLL: Duration = Duration::from_millis(500);

/// Background executions running on this replica.
#[derive(Default)]
pub struct Handles {
    running: Mutex<HashMap<String, Arc<Local>>>,
}

/// One background execution running here.
struct Local {
    /// Who started it: the only one who may follow it.
    owner: Owner,
    cancel: CancellationToken,
    /// Console lines so far, for a follower that arrives late.
    lines: Mutex<Vec<LogLine>>,
    events: broadcast::Sender<Event>,
}

/// What a follower of a background execution receives.
#[derive(Clone, Debug)]
pub enum Event {
    Log(LogLine),
    /// It ended; its result is in the store.
    Ended,
}

/// A background execution as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct HandleView {
    pub execution_id: String,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub status: HandleStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// When it (and its result) is forgotten.
    pub expires_at: String,
    /// The body `POST /v1/execute` would have answered, once it ended: kept as the
    /// JSON text it was stored as and served as it is, never parsed again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
}

impl HandleView {
    pub fn running(&self) -> bool {
        self.status == HandleStatus::Running
    }
}

impl From<HandleRecord> for HandleView {
    fn from(handle: HandleRecord) -> Self {
        Self {
            execution_id: handle.id,
            status: handle.status,
            session_id: handle.session_id,
            created_at: super::sessions::time(handle.created_at_ms),
            ended_at: handle.ended_at_ms.map(super::sessions::time),
            expires_at: super::sessions::time(handle.expires_at_ms),
            result: handle.body.and_then(|body| RawValue::from_string(body).ok()),
        }
    }
}

/// What a follower gets: the lines so far and the stream of what comes, or `None`
/// when the execution is not running on this replica.
pub struct Following {
    pub so_far: Vec<LogLine>,
    pub next: broadcast::Receiver<Event>,
}

/// The most bytes of a background execution's result body the store keeps. Console
/// lines go first when a body is larger (the note that replaces them says how many
/// there were), then the result itself (the body then says it was too large).
pub const MAX_KEPT_BYTES: usize = 16 << 20;

/// `outcome` as the body the store keeps: `POST /v1/execute`'s JSON, within
/// [`MAX_KEPT_BYTES`].
pub(crate) fn kept_body(outcome: &mut Outcome) -> String {
    let body = serde_json::to_string(&*outcome).unwrap_or_default();
    if body.len() <= MAX_KEPT_BYTES {
        return body;
    }
    let lines = std::mem::take(&mut outcome.logs);
    outcome.logs.push(LogLine {
        level: crate::sandbox::LogLevel::Warn,
        message: format!("[{} console lines not kept: the result was too large to keep with them]", lines.len()),
    });
    let body = serde_json::to_string(&*outcome).unwrap_or_default();
    if body.len() <= MAX_KEPT_BYTES {
        return body;
    }
    outcome.ok = false;
    outcome.result = None;
    outcome.error = Some(crate::sandbox::ExecError::new(
        Kind::OutputLimit,
        format!("the result was larger than the {MAX_KEPT_BYTES} bytes a background execution's result may keep"),
    ));
    serde_json::to_string(&*outcome).unwrap_or_default()
}

pub(crate) fn status_of(outcome: &Outcome) -> HandleStatus {
    if outcome.paused.is_some() {
        return HandleStatus::Paused;
    }
    match &outcome.error {
        None if outcome.ok => HandleStatus::Succeeded,
        Some(error) if error.kind == Kind::Cancelled => HandleStatus::Cancelled,
        _ => HandleStatus::Failed,
    }
}

impl Service {
    /// Starts `request` in the background for `principal`: checked and admitted as
    /// [`Service::prepare`] does (a refusal is an error now, not a failed handle), then
    /// running on its own; returns its handle.
    pub async fn start_handle(
        self: &Arc<Self>,
        principal: Arc<Principal>,
        request: ExecuteRequest,
    ) -> Result<HandleView, ServiceError> {
        let session_id = request.session_id.clone();
        let mut prepared = self.prepare_as(principal.clone(), request, true).await?;
        let id = uuid::Uuid::now_v7().to_string();
        prepared.job.id = Some(id.clone().into());
        let now = now_ms();
        let longest = prepared.job.limits.wall_ms + self.sandbox.config().queue_timeout.as_millis() as u64;
        let ttl_ms = self.result_ttl.as_millis() as i64;
        let record = HandleRecord {
            id: id.clone(),
            user: principal.user.clone(),
            team: principal.team.clone(),
            key: principal.key.clone(),
            session_id,
            status: HandleStatus::Running,
            created_at_ms: now,
            ended_at_ms: None,
            expires_at_ms: now + longest as i64 + ttl_ms,
            cancel_requested: false,
            body: None,
        };
        self.store.create_handle(&record).await?;

        let (events, _) = broadcast::channel(1024);
        let local = Arc::new(Local {
            owner: Owner::of(&principal),
            cancel: CancellationToken::new(),
            lines: Mutex::new(Vec::new()),
            events,
        });
        self.handles.running.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), local.clone());
        let (lines_tx, mut lines_rx) = mpsc::channel::<LogLine>(crate::sandbox::LINE_BUFFER);
        let execution = self.start(prepared, Some(lines_tx));
        let service = self.clone();
        let handle_id = id.clone();
        // Tracked with the executions, so a shutdown waits for the end to be recorded.
        self.executions.spawn(async move {
            let store = service.store.clone();
            let forward = {
                let local = local.clone();
                async move {
                    while let Some(line) = lines_rx.recv().await {
                        local.lines.lock().unwrap_or_else(|e| e.into_inner()).push(line.clone());
                        let _ = local.events.send(Event::Log(line));
                    }
                }
            };
            let watch = {
                let (store, id, cancel) = (store.clone(), handle_id.clone(), local.cancel.clone());
                async move {
                    loop {
                        tokio::time::sleep(CANCEL_POLL).await;
                        if let Ok(Some(handle)) = store.handle(&id, now_ms()).await {
                            if handle.cancel_requested {
                                cancel.cancel();
                                return;
                            }
                        }
                    }
                }
            };
            let cancel = local.cancel.clone();
            let run = async move {
                tokio::pin!(execution);
                tokio::select! {
                    outcome = &mut execution => outcome,
                    () = cancel.cancelled() => {
                        execution.cancel();
                        execution.await
                    }
                }
            };
            // A cancel made on another replica reaches this one through the store.
            let watcher = tokio::spawn(watch);
            let (result, ()) = tokio::join!(run, forward);
            watcher.abort();
            // A pause keeps its handle itself (until its approvals expire).
            if result.as_ref().is_ok_and(|outcome| outcome.paused.is_some()) {
                service.handles.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&handle_id);
                let _ = local.events.send(Event::Ended);
                return;
            }
            let ended = now_ms();
            let (status, body) = match result {
                Ok(mut outcome) => {
                    let body = kept_body(&mut outcome);
                    (status_of(&outcome), body)
                }
                Err(error) => {
                    let kind = error.kind();
                    let status = if kind == Kind::Cancelled { HandleStatus::Cancelled } else { HandleStatus::Failed };
                    let body =
                        serde_json::json!({ "ok": false, "error": { "kind": kind, "message": error.to_string() } });
                    (status, body.to_string())
                }
            };
            let end = HandleEnd { status, body, ended_at_ms: ended, expires_at_ms: ended + ttl_ms };
            if let Err(error) = store.finish_handle(&handle_id, &end).await {
                tracing::warn!(%error, execution_id = %handle_id, "could not record a background execution's end");
            }
            service.handles.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&handle_id);
            let _ = local.events.send(Event::Ended);
        });
        Ok(record.into())
    }

    /// Background execution `id`, when `principal` started it (the same user with
    /// another key, or in another team, is someone else).
    pub async fn handle(&self, principal: &Principal, id: &str) -> Result<HandleView, ServiceError> {
        match self.store.handle(id, now_ms()).await? {
            Some(handle) if handle.owned_by(principal) => Ok(handle.into()),
            _ => Err(ServiceError::NotFound(format!("no execution `{id}`"))),
        }
    }

    /// Cancels background execution `id` of `principal`, on whichever replica runs
    /// it; an execution that already ended stays as it ended. Returns its view.
    pub async fn cancel_handle(&self, principal: &Principal, id: &str) -> Result<HandleView, ServiceError> {
        let view = self.handle(principal, id).await?;
        if view.status == HandleStatus::Paused {
            self.cancel_paused(principal, id).await?;
            return self.handle(principal, id).await;
        }
        if view.running() {
            self.store.cancel_handle(id).await?;
            if let Some(local) = self.local_handle(id) {
                local.cancel.cancel();
            }
        }
        Ok(view)
    }

    fn local_handle(&self, id: &str) -> Option<Arc<Local>> {
        self.handles.running.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// Follows background execution `id` of `principal` when it runs on this replica.
    pub fn follow_handle(&self, principal: &Principal, id: &str) -> Option<Following> {
        let local = self.local_handle(id).filter(|local| local.owner.is(principal))?;
        // Subscribe before reading the lines so far, so no line falls between them.
        let next = local.events.subscribe();
        let so_far = local.lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(Following { so_far, next })
    }

    /// Waits until background execution `id` of `principal` has ended (reading the
    /// store every [`CANCEL_POLL`]) and returns it.
    pub async fn wait_handle(&self, principal: &Principal, id: &str) -> Result<HandleView, ServiceError> {
        loop {
            let view = self.handle(principal, id).await?;
            if !view.running() {
                return Ok(view);
            }
            tokio::time::sleep(CANCEL_POLL).await;
        }
    }
}
