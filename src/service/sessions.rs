//! Sessions: handles a principal opens, whose executions share the realm's globals.
//!
//! A session is a row in the store with its memory image (see
//! [`crate::sandbox::MemoryImage`]). An execution in a session takes a lease on it (a
//! second one meanwhile gets 409, on any replica), starts from its image, and gives
//! the lease back with the next image when it succeeded, or with none when it failed:
//! a failed execution (exception, syntax, any limit) leaves the session as it was
//! before it. An idle session holds no instance and no CPU, only its bytes in the
//! store, so it survives a restart and can continue on any replica.
//!
//! Sessions belong to the principal that opened them: anyone else gets 404, as if it
//! did not exist. A `[policy.sessions]` grant is needed to open one, and caps how many
//! a principal keeps, their images' total bytes and how long they live unused.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Service, ServiceError};
use crate::auth::Principal;
use crate::sandbox::{ErrorKind, ExecError, Language, MemoryImage, Outcome};
use crate::store::{now_ms, Lease, Record, SessionEvent, SessionRecord, Store};

/// The ledger record of `event` on session `id` of `principal`.
pub(super) fn event(principal: &Principal, id: &str, event: &'static str, state_bytes: u64) -> Record {
    Record::Session(SessionEvent {
        session_id: id.to_string(),
        user: principal.user.clone(),
        team: principal.team.clone(),
        key: principal.key.clone(),
        at_ms: now_ms(),
        event,
        state_bytes,
    })
}

/// A session as the API and the CLI show it.
#[derive(Clone, Debug, Serialize)]
pub struct SessionView {
    pub session_id: String,
    pub language: String,
    pub created_at: String,
    pub last_used_at: String,
    pub expires_at: String,
    pub executions: u64,
    /// Bytes of its saved state (the changed pages of its memory).
    pub state_bytes: u64,
}

fn time(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

impl From<SessionRecord> for SessionView {
    fn from(session: SessionRecord) -> Self {
        Self {
            created_at: time(session.created_at_ms),
            last_used_at: time(session.used_at_ms),
            expires_at: time(session.expires_at_ms()),
            session_id: session.id,
            language: session.language,
            executions: session.executions,
            state_bytes: session.image_bytes,
        }
    }
}

/// How long past an execution's own limits its lease lasts: a replica that dies
/// mid-execution holds the session no longer than that.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// A session taken for one execution. Dropped without [`SessionLease::give_back`]
/// (the execution was refused before it started, or its task ended early), it gives
/// the session back unchanged and uncounted.
pub(super) struct SessionLease {
    store: Arc<dyn Store>,
    id: String,
    lease: String,
    user: String,
    max_bytes: u64,
    returned: bool,
}

impl SessionLease {
    /// Gives the session back after `outcome`: with its new image when the execution
    /// succeeded and the principal's sessions stay within their byte cap (else the
    /// outcome becomes an `out_of_memory` failure and the session stays as it was).
    /// Returns the bytes of state it kept, if it kept any.
    pub(super) async fn give_back(mut self, outcome: &mut Outcome) -> Result<Option<u64>, ServiceError> {
        self.returned = true;
        let mut image = outcome.session_image.take().map(|image| image.encode());
        if let Some(bytes) = &image {
            let others: u64 = self
                .store
                .sessions(&self.user, now_ms())
                .await?
                .iter()
                .filter(|s| s.id != self.id)
                .map(|s| s.image_bytes)
                .sum();
            let total = others + bytes.len() as u64;
            if total > self.max_bytes {
                image = None;
                outcome.ok = false;
                outcome.result = None;
                outcome.error = Some(ExecError::new(
                    ErrorKind::OutOfMemory,
                    format!(
                        "the session's state would bring this user's sessions to {total} bytes, past the {} their \
                         policies allow (sessions.max_bytes); the session is as it was before this execution",
                        self.max_bytes
                    ),
                ));
            }
        }
        self.store.return_session(&self.id, &self.lease, image.as_deref(), Some(now_ms())).await?;
        Ok(image.map(|bytes| bytes.len() as u64))
    }

    pub(super) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        if self.returned {
            return;
        }
        let (store, id, lease) = (self.store.clone(), std::mem::take(&mut self.id), std::mem::take(&mut self.lease));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = store.return_session(&id, &lease, None, None).await {
                    tracing::warn!(%error, session = %id, "could not give a session back; its lease ends at its deadline");
                }
            });
        }
    }
}

fn not_found(id: &str) -> ServiceError {
    ServiceError::NotFound(format!("no session `{id}`"))
}

impl Service {
    /// Opens a session for `principal`, living `ttl_s` unused (default and ceiling:
    /// the policies' `sessions.idle_ttl_s`).
    pub async fn open_session(
        &self,
        principal: &Principal,
        language: Language,
        ttl_s: Option<u64>,
    ) -> Result<SessionRecord, ServiceError> {
        let grant = self.policies.current().capabilities(principal).sessions.ok_or_else(|| {
            ServiceError::Forbidden(format!(
                "no policy lets user `{}` (team `{}`, key `{}`) open sessions ([policy.sessions])",
                principal.user, principal.team, principal.key
            ))
        })?;
        let ttl_s = match ttl_s {
            Some(0) => return Err(ServiceError::Invalid("ttl_s must be at least 1".into())),
            Some(ttl) if ttl > grant.idle_ttl_s => {
                return Err(ServiceError::Invalid(format!(
                    "ttl_s {ttl} is more than the {} seconds this caller's policies allow (sessions.idle_ttl_s)",
                    grant.idle_ttl_s
                )))
            }
            Some(ttl) => ttl,
            None => grant.idle_ttl_s,
        };
        let store = self.ledger.store();
        let now = now_ms();
        let open = store.sessions(&principal.user, now).await?.len();
        if open >= grant.max as usize {
            return Err(ServiceError::TooManySessions { user: principal.user.clone(), limit: grant.max });
        }
        let session = SessionRecord {
            id: format!("ses_{}", uuid::Uuid::now_v7().simple()),
            user: principal.user.clone(),
            team: principal.team.clone(),
            key: principal.key.clone(),
            language: language.as_str().to_string(),
            created_at_ms: now,
            used_at_ms: now,
            ttl_ms: (ttl_s.min(i64::MAX as u64 / 1000) as i64) * 1000,
            executions: 0,
            image_bytes: 0,
        };
        store.create_session(&session).await?;
        self.ledger.record(vec![event(principal, &session.id, "opened", 0)]).await?;
        Ok(session)
    }

    /// `principal`'s live sessions, oldest first.
    pub async fn sessions(&self, principal: &Principal) -> Result<Vec<SessionRecord>, ServiceError> {
        Ok(self.ledger.store().sessions(&principal.user, now_ms()).await?)
    }

    /// Session `id`, when it is `principal`'s.
    pub async fn session(&self, principal: &Principal, id: &str) -> Result<SessionRecord, ServiceError> {
        match self.ledger.store().session(id, now_ms()).await? {
            Some(session) if session.user == principal.user => Ok(session),
            _ => Err(not_found(id)),
        }
    }

    /// Ends session `id`, when it is `principal`'s.
    pub async fn end_session(&self, principal: &Principal, id: &str) -> Result<(), ServiceError> {
        self.session(principal, id).await?;
        if !self.ledger.store().end_session(id).await? {
            return Err(not_found(id));
        }
        self.ledger.record(vec![event(principal, id, "ended", 0)]).await?;
        Ok(())
    }

    /// Takes session `id` of `principal` for one execution that may take `hold`: one
    /// store call, which also checks the owner, so another principal learns nothing,
    /// not even that the session is busy.
    pub(super) async fn lease_session(
        &self,
        principal: &Principal,
        id: &str,
        max_bytes: u64,
        hold: Duration,
    ) -> Result<(SessionLease, MemoryImage), ServiceError> {
        let store = self.ledger.store().clone();
        let lease = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let until = now + (hold + LEASE_MARGIN).as_millis() as i64;
        match store.lease_session(id, &principal.user, &lease, until, now).await? {
            Lease::Missing => Err(not_found(id)),
            Lease::Busy { .. } => Err(ServiceError::SessionBusy(id.to_string())),
            Lease::Taken { image, .. } => {
                let lease = SessionLease {
                    store,
                    id: id.to_string(),
                    lease,
                    user: principal.user.clone(),
                    max_bytes,
                    returned: false,
                };
                let image = match image {
                    Some(bytes) => MemoryImage::decode(&bytes)
                        .map_err(|e| ServiceError::Internal(format!("session `{id}` cannot be read: {e}")))?,
                    None => MemoryImage::default(),
                };
                Ok((lease, image))
            }
        }
    }
}
