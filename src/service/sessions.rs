//! Sessions: handles a principal opens, whose executions share the realm's globals.
//!
//! A session is a row in the store with the pages of its memory (see
//! [`crate::sandbox::mapped`]). An execution in a session takes a lease on it (a
//! second one meanwhile gets 409, on any replica), starts from its memory (kept on
//! this replica since the session's last execution here, if none ran elsewhere
//! since: [`super::memories`], with the instance the last execution ran in when it
//! was kept), and gives the lease back with the pages it wrote when
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

use super::memories::{Changes, MemoryCache, SessionMemory};
use super::shares::{principal_key, PrincipalKey, Slot, MAX_TRANSFERS};
use super::{Service, ServiceError};
use crate::auth::Principal;
use crate::error::Kind;
use crate::policy::SessionGrant;
use crate::request::Language;
use crate::sandbox::{ExecError, MemoryFile, Outcome};
use crate::sessions::FilePath;
use crate::store::{
    now_ms, FileChange, Giveback, KeptMemory, Lease, Ledger, MemoryCap, MemoryWrite, Owner, Record, Returned,
    SessionEvent, SessionRecord, Store, StoredFile,
};

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
    pub language: Language,
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
    crate::time::rfc3339(ms)
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
    /// Gives the session back after `outcome` and commits the execution's records
    /// (`records` makes them from the outcome as it ends up), with the session's
    /// events: the pages its memory changed go back when the execution succeeded
    /// and the principal's sessions stay within their byte cap (else the outcome
    /// becomes an `out_of_memory` failure and the session stays as it was). The
    /// workspace `files` the execution changed go with the pages, or not at all;
    /// `mount_bytes` were written to mounted directories either way.
    ///
    /// A return the cap cannot refuse (the session's state does not grow, as for
    /// most executions) is made in the ledger's transaction: one commit, shared with
    /// whatever else the ledger writes meanwhile. One that grows the state is made
    /// first, on its own, since its answer decides the outcome the records hold.
    pub(super) async fn give_back(
        mut self,
        ledger: &Ledger,
        principal: &Principal,
        outcome: &mut Outcome,
        files: &[FileChange],
        mount_bytes: u64,
        records: impl FnOnce(&Outcome) -> Vec<Record>,
    ) -> Result<(), ServiceError> {
        let memory = self.memory.take();
        let mut written = outcome.session_image.take().filter(|_| outcome.ok);
        // A page the execution wrote back as it was need not go to the store (about
        // 60% of the pages a small session's execution writes), and of most others a
        // few bytes changed, which go as a patch.
        let changes = match (&mut written, &memory) {
            (Some(pages), Some(memory)) => memory.changes(pages),
            _ => Changes::default(),
        };
        let kept = match (&written, &memory) {
            (Some(pages), Some(memory)) => Some(memory.kept_bytes_with(pages)),
            _ => None,
        };
        let files = if kept.is_some() { files } else { &[] };
        let files_bytes = files.iter().map(FileChange::bytes).sum::<u64>();
        // The session's events once it is back with the execution's state, and
        // otherwise.
        let written_event = |bytes: u64| (bytes > 0).then(|| event(principal, &self.id, "files_written", bytes));
        let if_returned: Vec<Record> = kept
            .map(|bytes| event(principal, &self.id, "saved", bytes))
            .into_iter()
            .chain(written_event(mount_bytes + files_bytes))
            .collect();
        let otherwise: Vec<Record> = written_event(mount_bytes).into_iter().collect();
        let ran_at_ms = now_ms();
        let mut write = written.as_ref().zip(kept).map(|(pages, bytes)| MemoryWrite {
            size: pages.size,
            pages: pages.chunks().filter(|(page, _)| !changes.patched(*page)).collect(),
            patch: &changes.patch,
            bytes,
            cap: None,
        });
        let returned = match &mut write {
            // Only a session whose state grows can pass the cap: most executions
            // rewrite pages the store keeps already. The store checks it inside the
            // return's transaction, so returns that would pass it together cannot.
            Some(write) if write.bytes > self.session.image_bytes => {
                write.cap = Some(MemoryCap { user: self.user.clone(), max_bytes: self.max_bytes });
                let returned = self.store.return_session(&self.id, &self.lease, Some(&*write), Some(ran_at_ms), files);
                let returned = returned.await;
                self.returned = true;
                if let Ok(Returned::OverCap { total }) = returned {
                    outcome.ok = false;
                    outcome.result = None;
                    outcome.error = Some(ExecError::new(
                        Kind::OutOfMemory,
                        format!(
                            "the session's state would bring this user's sessions to {total} bytes, past the {} \
                             their policies allow (sessions.max_bytes); the session is as it was before this \
                             execution",
                            self.max_bytes
                        ),
                    ));
                }
                let events = if matches!(returned, Ok(Returned::Done)) { if_returned } else { otherwise };
                ledger.record(records(outcome).into_iter().chain(events).collect()).await?;
                returned
            }
            _ => {
                let memory = write.as_ref().map(KeptMemory::from);
                let giveback = Giveback {
                    id: self.id.clone(),
                    lease: self.lease.clone(),
                    memory,
                    ran_at_ms,
                    files: files.to_vec(),
                    if_returned,
                    otherwise,
                };
                // A commit that failed gave nothing back: dropped unreturned, the
                // lease gives the session back unchanged.
                let returned = ledger.record_returning(records(outcome), giveback).await?;
                self.returned = true;
                returned
            }
        };
        match returned {
            Ok(Returned::Done) => {}
            Ok(Returned::NotHeld | Returned::OverCap { .. }) => return Ok(()),
            Err(error) => {
                tracing::warn!(%error, session = %self.id, "could not give a session back; its lease ends at its deadline");
                return Ok(());
            }
        }
        // The memory stays on this replica as the state after this execution, which
        // the store now counts, with the pages it wrote (unless the file cannot take
        // them: then the next execution reads the store).
        if let Some(mut memory) = memory {
            let applied = match &written {
                Some(pages) => memory.apply(pages),
                None => Ok(()),
            };
            match applied {
                Ok(()) => self.memories.put(&self.id, self.session.executions + 1, memory),
                Err(error) => tracing::warn!(%error, session = %self.id, "could not keep a session's memory here"),
            }
        }
        Ok(())
    }

    /// Gives the session back with `files` changed and nothing else (an upload).
    async fn give_back_files(mut self, files: &[FileChange]) -> Result<(), ServiceError> {
        self.returned = true;
        match self.store.return_session(&self.id, &self.lease, None, None, files).await? {
            Returned::Done => Ok(()),
            Returned::NotHeld | Returned::OverCap { .. } => Err(ServiceError::SessionBusy(self.id.clone())),
        }
    }

    pub(super) fn id(&self) -> &str {
        &self.id
    }

    /// The language the session was opened for.
    pub(super) fn language(&self) -> Language {
        self.session.language
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
        let grant = self.sessions_grant(principal)?;
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
        let store = &self.store;
        let now = now_ms();
        let (open, _) = store.session_totals(&principal.user, now).await?;
        if open >= u64::from(grant.max) {
            return Err(ServiceError::TooManySessions { user: principal.user.clone(), limit: grant.max }.counted());
        }
        let session = SessionRecord {
            id: format!("ses_{}", uuid::Uuid::now_v7().simple()),
            user: principal.user.clone(),
            team: principal.team.clone(),
            key: principal.key.clone(),
            language,
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

    /// `principal`'s sessions grant, or why it has none: every session and file route
    /// asks for it first.
    pub(super) fn sessions_grant(&self, principal: &Principal) -> Result<SessionGrant, ServiceError> {
        self.policies.current().capabilities(principal).sessions.ok_or_else(|| {
            ServiceError::Forbidden(format!(
                "no policy lets user `{}` (team `{}`, key `{}`) use sessions ([policy.sessions])",
                principal.user, principal.team, principal.key
            ))
        })
    }

    /// `principal`'s live sessions, oldest first: those it opened itself (the same
    /// user with another key, or in another team, is someone else).
    pub async fn sessions(&self, principal: &Principal) -> Result<Vec<SessionRecord>, ServiceError> {
        self.sessions_grant(principal)?;
        let mut sessions = self.store.sessions(&principal.user, now_ms()).await?;
        sessions.retain(|session| session.owned_by(principal));
        Ok(sessions)
    }

    /// Session `id`, when `principal` opened it.
    pub async fn session(&self, principal: &Principal, id: &str) -> Result<SessionRecord, ServiceError> {
        self.sessions_grant(principal)?;
        match self.store.session(id, now_ms()).await? {
            Some(session) if session.owned_by(principal) => Ok(session),
            _ => Err(not_found(id)),
        }
    }

    /// Ends session `id`, when it is `principal`'s.
    pub async fn end_session(&self, principal: &Principal, id: &str) -> Result<(), ServiceError> {
        self.session(principal, id).await?;
        self.memories.forget(id);
        if !self.store.end_session(id).await? {
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
        let store = self.store.clone();
        let lease = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let until = now + (hold + LEASE_MARGIN).as_millis() as i64;
        match store.lease_session(id, &Owner::of(principal), &lease, until, now).await? {
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
                let stored = self.store.session_memory(&id).await?;
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

/// A read of one workspace entry ([`Service::session_file`]).
pub enum FileRead {
    /// A directory's entries (no bytes).
    Dir(Vec<StoredFile>),
    /// A file, to read a chunk at a time.
    File(Download),
}

/// A file being downloaded: its bytes come from the store a chunk at a time, as the
/// client reads them. It counts as one of its principal's transfers until dropped.
pub struct Download {
    pub file: StoredFile,
    store: Arc<dyn Store>,
    session_id: String,
    _transfer: Slot<PrincipalKey>,
}

impl Download {
    /// The file's bytes, a chunk at a time. If the file is rewritten or removed while
    /// it is read, the stream ends with an error instead of mixing two versions.
    pub fn into_stream(self) -> futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>> {
        use futures::StreamExt;
        let chunks = self.file.chunks();
        futures::stream::unfold((self, 0u64), move |(download, seq)| async move {
            if seq >= chunks {
                return None;
            }
            let chunk =
                download.store.file_chunk(&download.session_id, &download.file.path, download.file.version, seq);
            let item = match chunk.await {
                Ok(Some(bytes)) => Ok(bytes::Bytes::from(bytes)),
                Ok(None) => Err(std::io::Error::other(format!("'{}' changed while it was read", download.file.path))),
                Err(error) => Err(std::io::Error::other(error.to_string())),
            };
            // After an error the stream ends.
            let next = if item.is_ok() { seq + 1 } else { chunks };
            Some((item, (download, next)))
        })
        .boxed()
    }
}

/// Why a request's body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// It did not arrive in time (408).
    TimedOut(String),
    /// The client broke it off, or sent what cannot be read.
    Failed(String),
}

impl BodyError {
    fn into_service(self) -> ServiceError {
        match self {
            Self::TimedOut(message) => ServiceError::BodyTimeout(message),
            Self::Failed(message) => ServiceError::Invalid(format!("cannot read the request body: {message}")),
        }
    }
}

/// How long an upload may hold its session.
const UPLOAD_HOLD: Duration = Duration::from_secs(30);

impl Service {
    /// The entries of session `id`'s workspace (no bytes), when it is `principal`'s.
    pub async fn session_files(&self, principal: &Principal, id: &str) -> Result<Vec<StoredFile>, ServiceError> {
        self.session(principal, id).await?;
        Ok(self.store.session_files(id, false).await?)
    }

    /// One entry of session `id`'s workspace: a file to read a chunk at a time, or a
    /// directory's entries.
    pub async fn session_file(&self, principal: &Principal, id: &str, path: &str) -> Result<FileRead, ServiceError> {
        let path = FilePath::parse(path).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        self.session(principal, id).await?;
        let store = &self.store;
        if path.is_root() {
            return Ok(FileRead::Dir(store.session_files(id, false).await?));
        }
        let file = store
            .session_file(id, &path.key())
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("ENOENT: no file '{path}' in session `{id}`")))?;
        if file.dir {
            let prefix = format!("{}/", path.key());
            let entries =
                store.session_files(id, false).await?.into_iter().filter(|f| f.path.starts_with(&prefix)).collect();
            return Ok(FileRead::Dir(entries));
        }
        let transfer = self.transfer(principal)?;
        Ok(FileRead::File(Download { file, store: store.clone(), session_id: id.to_string(), _transfer: transfer }))
    }

    /// A place for one more upload or download of `principal` (429 past
    /// [`MAX_TRANSFERS`]).
    fn transfer(&self, principal: &Principal) -> Result<Slot<PrincipalKey>, ServiceError> {
        self.transfers
            .enter(principal_key(principal), MAX_TRANSFERS)
            .ok_or(ServiceError::AtOnce { what: "file transfers", limit: MAX_TRANSFERS })
    }

    /// Writes the upload `body` (`declared` bytes long, when the client said) to
    /// `path` in session `id`'s workspace, making its parent directories, within the
    /// workspace's quotas. Everything is checked before a byte of the body is read
    /// (the sessions grant, the session and its owner, the path, the quota against a
    /// declared length); then the body goes to a private file on disk as it arrives,
    /// refused the moment it passes the quota, and into the store a chunk at a time.
    /// Waits for no execution: a session running one is busy (409).
    pub async fn upload<S>(
        &self,
        principal: &Principal,
        id: &str,
        path: &str,
        declared: Option<u64>,
        mut body: S,
    ) -> Result<u64, ServiceError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, BodyError>> + Unpin,
    {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let path = FilePath::parse(path).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        if path.is_root() {
            return Err(file_error("EISDIR: the workspace itself is a directory; name a file".into()));
        }
        self.sessions_grant(principal)?;
        let transfer = self.transfer(principal)?;
        let grant = self.policies.current().capabilities(principal).files;
        // The image cap (0 here) is checked only when an execution gives a session back.
        let lease = self.lease_session(principal, id, 0, UPLOAD_HOLD).await?;
        let entries = self.store.session_files(id, false).await?;
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
        let files = lease.session.files + changes.len() as u64 + u64::from(existing.is_none());
        let others = lease.session.file_bytes.saturating_sub(existing.map_or(0, |e| e.size));
        let over = |bytes: u64| {
            file_error(format!(
                "EDQUOT: '{path}' would bring the workspace to {bytes} bytes in {files} files and directories, past \
                 its quota of {} bytes and {} files (files.max_bytes, files.max_files)",
                grant.max_bytes, grant.max_files
            ))
        };
        if files > grant.max_files || others + declared.unwrap_or(0) > grant.max_bytes {
            return Err(over(others + declared.unwrap_or(0)));
        }
        let room = grant.max_bytes.saturating_sub(others);
        let spool = self.scratch.file().map_err(|e| ServiceError::Internal(format!("cannot spool the upload: {e}")))?;
        let mut writer = tokio::fs::File::from_std(
            spool.file.try_clone().map_err(|e| ServiceError::Internal(format!("cannot spool the upload: {e}")))?,
        );
        let mut size = 0u64;
        let receive = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(BodyError::into_service)?;
                size += chunk.len() as u64;
                if size > room {
                    return Err(over(others + size));
                }
                writer.write_all(&chunk).await.map_err(|e| ServiceError::Internal(format!("cannot spool: {e}")))?;
            }
            writer.flush().await.map_err(|e| ServiceError::Internal(format!("cannot spool: {e}")))
        };
        match tokio::time::timeout(UPLOAD_HOLD, receive).await {
            Ok(received) => received?,
            Err(_) => {
                return Err(ServiceError::BodyTimeout(format!(
                    "the upload did not arrive within {} s",
                    UPLOAD_HOLD.as_secs()
                )))
            }
        }
        changes.push(FileChange::Spooled { path: path.key(), size, from: spool.path().to_path_buf() });
        lease.give_back_files(&changes).await?;
        drop((spool, transfer));
        self.ledger.record(vec![event(principal, id, "files_written", size)]).await?;
        Ok(size)
    }

    /// Removes `path` (and everything under it) from session `id`'s workspace.
    pub async fn remove_session_file(&self, principal: &Principal, id: &str, path: &str) -> Result<(), ServiceError> {
        let path = FilePath::parse(path).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        if path.is_root() {
            return Err(file_error("EPERM: the workspace itself cannot be removed; end the session".into()));
        }
        self.sessions_grant(principal)?;
        let lease = self.lease_session(principal, id, 0, UPLOAD_HOLD).await?;
        if self.store.session_file(id, &path.key()).await?.is_none() {
            return Err(ServiceError::NotFound(format!("ENOENT: no file '{path}' in session `{id}`")));
        }
        lease.give_back_files(&[FileChange::Remove(path.key())]).await
    }
}
