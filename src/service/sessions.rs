//! Sessions: handles a principal opens, whose executions share the realm's globals.
//!
//! A session is a row in the store with the pages of its memory (see
//! [`crate::sandbox::mapped`]). An execution in a session takes a lease on it (a
//! second one meanwhile gets 409, on any replica), starts from its memory (kept on
//! this replica since the session's last execution here, if none ran elsewhere
//! since: [`super::memories`]), and gives the lease back with the pages it wrote when
//! it succeeded, or with none when it failed: a failed execution (exception, syntax,
//! any limit) leaves the session as it was before it. An idle session holds no
//! instance and no CPU, only its bytes in the store, so it survives a restart and
//! can continue on any replica.
//!
//! Sessions belong to the principal that opened them: anyone else gets 404, as if it
//! did not exist. A `[policy.sessions]` grant is needed to open one, and caps how many
//! a principal keeps, their images' total bytes and how long they live unused.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::memories::{MemoryCache, SessionMemory};
use super::{Service, ServiceError};
use crate::auth::Principal;
use crate::sandbox::{ErrorKind, ExecError, Language, MemoryFile, Outcome};
use crate::sessions::FilePath;
use crate::store::{now_ms, FileChange, Lease, MemoryWrite, Record, SessionEvent, SessionRecord, Store, StoredFile};

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
    /// Files and directories in its workspace.
    pub files: u64,
    /// Bytes of the files in its workspace.
    pub file_bytes: u64,
}

pub(super) fn time(ms: i64) -> String {
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
            files: session.files,
            file_bytes: session.file_bytes,
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
    memories: Arc<MemoryCache>,
    /// The session's memory, once an execution asked for it
    /// ([`Service::session_memory`]).
    memory: Option<SessionMemory>,
    id: String,
    lease: String,
    user: String,
    max_bytes: u64,
    returned: bool,
    /// The session as the lease found it.
    session: SessionRecord,
}

impl SessionLease {
    /// Gives the session back after `outcome`: with the pages its memory changed when
    /// the execution succeeded and the principal's sessions stay within their byte
    /// cap (else the outcome becomes an `out_of_memory` failure and the session stays
    /// as it was). The workspace `files` the execution changed go with the pages, or
    /// not at all. Returns the bytes of state the session keeps, if it kept any.
    pub(super) async fn give_back(
        mut self,
        outcome: &mut Outcome,
        files: &[FileChange],
    ) -> Result<Option<u64>, ServiceError> {
        self.returned = true;
        let mut memory = self.memory.take();
        let written = outcome.session_image.take().filter(|_| outcome.ok);
        let mut kept = None;
        if let (Some(pages), Some(memory)) = (&written, &memory) {
            let bytes = memory.kept_bytes_with(pages);
            // Only a session whose state grows can pass the cap: most executions
            // rewrite pages the store keeps already, and skip reading the totals.
            let total = if bytes > self.session.image_bytes {
                let (_, all) = self.store.session_totals(&self.user, now_ms()).await?;
                all.saturating_sub(self.session.image_bytes) + bytes
            } else {
                0
            };
            if total > self.max_bytes {
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
            } else {
                kept = Some(bytes);
            }
        }
        let written = written.filter(|_| kept.is_some());
        let write = match (&written, kept) {
            (Some(pages), Some(bytes)) => {
                Some(MemoryWrite { size: pages.size, pages: pages.chunks().collect(), bytes })
            }
            _ => None,
        };
        let files = if write.is_some() { files } else { &[] };
        let returned = self.store.return_session(&self.id, &self.lease, write.as_ref(), Some(now_ms()), files).await?;
        drop(write);
        // The memory stays on this replica as the state after this execution, which
        // the store now counts, with the pages it wrote (unless the file cannot take
        // them: then the next execution reads the store).
        if let (true, Some(mut memory)) = (returned, memory.take()) {
            let applied = match &written {
                Some(pages) => memory.apply(pages),
                None => Ok(()),
            };
            match applied {
                Ok(()) => self.memories.put(&self.id, self.session.executions + 1, memory),
                Err(error) => tracing::warn!(%error, session = %self.id, "could not keep a session's memory here"),
            }
        }
        Ok(kept)
    }

    /// Gives the session back with `files` changed and nothing else (an upload).
    async fn give_back_files(mut self, files: &[FileChange]) -> Result<(), ServiceError> {
        self.returned = true;
        if !self.store.return_session(&self.id, &self.lease, None, None, files).await? {
            return Err(ServiceError::SessionBusy(self.id.clone()));
        }
        Ok(())
    }

    pub(super) fn id(&self) -> &str {
        &self.id
    }

    /// The language the session was opened for.
    pub(super) fn language(&self) -> &str {
        &self.session.language
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
                if let Err(error) = store.return_session(&id, &lease, None, None, &[]).await {
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
        let (open, _) = store.session_totals(&principal.user, now).await?;
        if open >= u64::from(grant.max) {
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
            files: 0,
            file_bytes: 0,
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
        self.memories.forget(id);
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
    ) -> Result<SessionLease, ServiceError> {
        let store = self.ledger.store().clone();
        let lease = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let until = now + (hold + LEASE_MARGIN).as_millis() as i64;
        match store.lease_session(id, &principal.user, &lease, until, now).await? {
            Lease::Missing => Err(not_found(id)),
            Lease::Busy { .. } => Err(ServiceError::SessionBusy(id.to_string())),
            Lease::Taken { session } => Ok(SessionLease {
                store,
                memories: self.memories.clone(),
                memory: None,
                id: id.to_string(),
                lease,
                user: principal.user.clone(),
                max_bytes,
                returned: false,
                session,
            }),
        }
    }

    /// The memory the leased session's next execution starts from, as `language`'s
    /// guest: the one this replica kept after the session's last execution when no
    /// execution ran elsewhere since, else read from the store.
    pub(super) async fn session_memory(
        &self,
        lease: &mut SessionLease,
        language: Language,
    ) -> Result<Arc<MemoryFile>, ServiceError> {
        let id = lease.id.clone();
        let memory = match self.memories.take(&id, lease.session.executions) {
            Some(memory) => memory,
            None => {
                let stored = self.ledger.store().session_memory(&id).await?;
                let pages = stored.pages.iter().map(|(page, bytes)| (*page, bytes.as_slice()));
                let file =
                    self.sandbox.session_memory(language, stored.size, pages).await.map_err(|e| {
                        ServiceError::Internal(format!("session `{id}`'s memory cannot be made: {e:#}"))
                    })?;
                SessionMemory::new(file, &stored)
            }
        };
        let file = memory.file.clone();
        lease.memory = Some(memory);
        Ok(file)
    }
}

/// A refused file request: the code (`ENOENT`, `EDQUOT`, ...) leads its message.
fn file_error(message: String) -> ServiceError {
    ServiceError::File(message)
}

/// How long an upload may hold its session.
const UPLOAD_HOLD: Duration = Duration::from_secs(30);

impl Service {
    /// The entries of session `id`'s workspace (no bytes), when it is `principal`'s.
    pub async fn session_files(&self, principal: &Principal, id: &str) -> Result<Vec<StoredFile>, ServiceError> {
        self.session(principal, id).await?;
        Ok(self.ledger.store().session_files(id, false).await?)
    }

    /// One entry of session `id`'s workspace, with its bytes (a directory: its
    /// entries, without bytes).
    pub async fn session_file(
        &self,
        principal: &Principal,
        id: &str,
        path: &str,
    ) -> Result<(StoredFile, Vec<StoredFile>), ServiceError> {
        let path = FilePath::parse(path).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        self.session(principal, id).await?;
        let store = self.ledger.store();
        if path.is_root() {
            return Ok((StoredFile::dir(String::new()), store.session_files(id, false).await?));
        }
        let file = store
            .session_file(id, &path.key())
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("ENOENT: no file '{path}' in session `{id}`")))?;
        let entries = if file.dir {
            let prefix = format!("{}/", path.key());
            store.session_files(id, false).await?.into_iter().filter(|f| f.path.starts_with(&prefix)).collect()
        } else {
            Vec::new()
        };
        Ok((file, entries))
    }

    /// Writes `data` to `path` in session `id`'s workspace (making its parent
    /// directories), within the workspace's quotas. Waits for no execution: a session
    /// running one is busy (409).
    pub async fn put_session_file(
        &self,
        principal: &Principal,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<u64, ServiceError> {
        let path = FilePath::parse(path).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        if path.is_root() {
            return Err(file_error("EISDIR: the workspace itself is a directory; name a file".into()));
        }
        let grant = self.policies.current().capabilities(principal).files;
        // The image cap (0 here) is checked only when an execution gives a session back.
        let lease = self.lease_session(principal, id, 0, UPLOAD_HOLD).await?;
        let entries = self.ledger.store().session_files(id, false).await?;
        let find = |key: &str| entries.iter().find(|f| f.path == key);
        let mut changes = Vec::new();
        for ancestor in path.ancestors() {
            match find(&ancestor.key()) {
                Some(entry) if !entry.dir => {
                    return Err(file_error(format!("ENOTDIR: '{ancestor}' is a file, so '{path}' cannot be written")));
                }
                Some(_) => {}
                None => changes.push(FileChange::Put(StoredFile::dir(ancestor.key()))),
            }
        }
        let existing = find(&path.key());
        if existing.is_some_and(|e| e.dir) {
            return Err(file_error(format!("EISDIR: '{path}' is a directory")));
        }
        let size = data.len() as u64;
        let bytes = lease.session.file_bytes - existing.map_or(0, |e| e.size) + size;
        let files = lease.session.files + changes.len() as u64 + u64::from(existing.is_none());
        if bytes > grant.max_bytes || files > grant.max_files {
            return Err(file_error(format!(
                "EDQUOT: '{path}' would bring the workspace to {bytes} bytes in {files} files and directories, past \
                 its quota of {} bytes and {} files (files.max_bytes, files.max_files)",
                grant.max_bytes, grant.max_files
            )));
        }
        changes.push(FileChange::Put(StoredFile::file(path.key(), data)));
        lease.give_back_files(&changes).await?;
        self.ledger.record(vec![event(principal, id, "files_written", size)]).await?;
        Ok(size)
    }

    /// Removes `path` (and everything under it) from session `id`'s workspace.
    pub async fn remove_session_file(&self, principal: &Principal, id: &str, path: &str) -> Result<(), ServiceError> {
        let path = FilePath::parse(path).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        if path.is_root() {
            return Err(file_error("EPERM: the workspace itself cannot be removed; end the session".into()));
        }
        let lease = self.lease_session(principal, id, 0, UPLOAD_HOLD).await?;
        if self.ledger.store().session_file(id, &path.key()).await?.is_none() {
            return Err(ServiceError::NotFound(format!("ENOENT: no file '{path}' in session `{id}`")));
        }
        lease.give_back_files(&[FileChange::Remove(path.key())]).await
    }
}
