//! The files one execution can reach: its session's workspace, and the host
//! directories its policies mount (`[policy.files] mounts`).
//!
//! The code reaches them through `fs.*` host calls (the guest's `fs` object); this is
//! the host side of those calls. Every directory is a cap-std [`Dir`] capability: a
//! path is resolved beneath it, so neither `..`, an absolute path nor a symlink (one
//! planted in a mount, say) can lead anywhere else. Paths are checked before that
//! ([`FilePath`]), so an escape attempt is refused with a clear reason.
//!
//! # Where the files live
//!
//! A session's files live in the store, beside its memory image, so they survive a
//! restart and any replica can continue the session. An execution that touches a
//! file writes the workspace out to a private temporary directory (cap-tempfile)
//! first, works there, and when it succeeds hands back what it changed
//! ([`Workspace::finish`]), which the store commits with the next memory image in one
//! transaction. A failed execution commits nothing: memory and files roll back
//! together. An execution that never touches a file costs nothing here.
//!
//! Writable mounts are the operator's own directories: writes land there at once and
//! are not rolled back.
//!
//! # Quotas
//!
//! Checked at write time, before any byte is written: a workspace holds at most
//! `max_bytes` of files and `max_files` files and directories; one execution writes
//! at most `max_bytes` to writable mounts; a file larger than `max_bytes` is not read.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::sync::Arc;

use base64::Engine as _;
use cap_std::fs::{Dir, OpenOptions};
use serde_json::{json, Value};

use super::path::{FilePath, PathError};
use super::scratch::{Scratch, ScratchDir};
use crate::error::Kind;
use crate::policy::FilesGrant;
use crate::sandbox::{Call, Door, ExecError, Pending, Started};
use crate::store::{FileChange, Owner, Store, StoredFile};

/// The session whose workspace an execution works in.
pub struct SessionFiles {
    pub store: Arc<dyn Store>,
    pub session_id: String,
}

/// One execution's files (see the module docs). Register it as the job's `fs` door
/// (its `Door`); after the run, [`Workspace::finish`] gives what to commit.
pub struct Workspace {
    session: Option<SessionFiles>,
    grant: FilesGrant,
    /// The largest reply a host call may give the code (`limits.result_bytes`): a
    /// read whose reply would be larger is refused before the file is read.
    reply_bytes: u64,
    /// Where the session's files are written out for the execution.
    scratch: Arc<Scratch>,
    /// Where each principal's daily writes to mounts are counted.
    mount_writes: MountWrites,
    state: tokio::sync::Mutex<State>,
}

/// Who writes, and the store that counts what they wrote to each mount per day
/// (`max_bytes_per_day`), across executions and replicas.
pub struct MountWrites {
    pub store: Arc<dyn Store>,
    pub owner: Owner,
}

enum State {
    /// Nothing touched yet.
    Closed,
    Open(Box<Open>),
    /// Opening failed (the store did not answer): every call says so.
    Broken(String),
}

/// A workspace written out for this execution, and the mounts opened for it.
struct Open {
    /// The session's files (`None` outside a session).
    root: Option<ScratchDir>,
    /// What the workspace held when it was written out: path → is a directory.
    original: BTreeMap<String, bool>,
    /// Paths this execution wrote or created.
    touched: BTreeSet<String>,
    /// Whether this execution changed the workspace at all.
    dirty: bool,
    bytes: u64,
    files: u64,
    mounts: Vec<OpenMount>,
    /// Bytes written to writable mounts by this execution.
    mount_bytes: u64,
}

struct OpenMount {
    name: String,
    dir: Result<Dir, String>,
    writable: bool,
}

/// Where a path leads.
enum Place {
    Workspace,
    Mount(usize),
}

fn fail(message: impl Into<String>) -> ExecError {
    ExecError::new(Kind::FileError, message)
}

impl From<PathError> for ExecError {
    fn from(error: PathError) -> Self {
        fail(error.to_string())
    }
}

/// An I/O error as the code sees it: a POSIX-style code, what was being done, the path.
fn io_error(error: io::Error, op: &str, path: &FilePath) -> ExecError {
    use io::ErrorKind as K;
    let (code, what) = match error.kind() {
        K::NotFound => ("ENOENT", "no such file or directory"),
        K::AlreadyExists => ("EEXIST", "already exists"),
        // cap-std's answer to a path (or a symlink) that would lead outside.
        K::PermissionDenied => ("EACCES", "permission denied (or the path leads outside its directory)"),
        K::IsADirectory => ("EISDIR", "is a directory"),
        K::NotADirectory => ("ENOTDIR", "not a directory"),
        K::DirectoryNotEmpty => ("ENOTEMPTY", "directory not empty"),
        K::InvalidFilename => ("ENAMETOOLONG", "invalid or too long name"),
        K::ReadOnlyFilesystem => ("EROFS", "read-only"),
        K::StorageFull | K::QuotaExceeded => ("ENOSPC", "no space left"),
        _ => match error.raw_os_error() {
            Some(40) => ("ELOOP", "too many symbolic links, or a symlink leading outside"),
            Some(18) => ("EXDEV", "cannot move between directories of different mounts"),
            _ => ("EIO", "input/output error"),
        },
    };
    fail(format!("{code}: {what}, {op} '{path}'"))
}

fn arg<'a>(args: &'a Value, name: &str) -> Result<&'a str, ExecError> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ExecError::new(Kind::InvalidRequest, format!("`{name}` must be a string")))
}

fn flag(args: &Value, name: &str) -> bool {
    args.get(name).and_then(Value::as_bool).unwrap_or(false)
}

impl Workspace {
    pub fn new(
        session: Option<SessionFiles>,
        grant: FilesGrant,
        reply_bytes: u64,
        scratch: Arc<Scratch>,
        mount_writes: MountWrites,
    ) -> Self {
        Self { session, grant, reply_bytes, scratch, mount_writes, state: tokio::sync::Mutex::new(State::Closed) }
    }

    /// Counts a `writeFile` into a writable mount against its writer's daily quota
    /// there, before anything is written: refused with `EDQUOT` past it. (A write that
    /// then fails stays counted: the quota errs on the safe side.)
    async fn count_mount_write(&self, method: &str, args: &Value) -> Result<(), ExecError> {
        if method != "writeFile" {
            return Ok(());
        }
        let Some(first) = args.get("path").and_then(Value::as_str).and_then(|p| FilePath::parse(p).ok()) else {
            return Ok(());
        };
        let Some(mount) =
            first.parts().first().and_then(|name| self.grant.mounts.iter().find(|m| m.writable && &m.name == name))
        else {
            return Ok(());
        };
        let data = args.get("data").and_then(Value::as_str).unwrap_or_default();
        let bytes = match args.get("encoding").and_then(Value::as_str) {
            Some("base64") => (data.len() as u64).div_ceil(4) * 3,
            _ => data.len() as u64,
        };
        let now = crate::store::now_ms();
        let day = now - now.rem_euclid(86_400_000);
        let path = mount.path.to_string_lossy();
        let taken = self
            .mount_writes
            .store
            .take_mount_bytes(&self.mount_writes.owner, &path, day, bytes, mount.max_bytes_per_day)
            .await
            .map_err(|e| ExecError::new(Kind::Unavailable, e.to_string()))?;
        match taken {
            None => Ok(()),
            Some(written) => Err(fail(format!(
                "EDQUOT: writing {bytes} bytes to mount `{}` would take this principal past the {} bytes it may write \
                 there per day ({written} written today; max_bytes_per_day)",
                mount.name, mount.max_bytes_per_day
            ))),
        }
    }

    /// Whether the code has any file access at all.
    pub fn is_empty(&self) -> bool {
        self.session.is_none() && self.grant.mounts.is_empty()
    }

    /// Ends the execution's use of its files: when it `succeeded`, what it changed in
    /// its session's workspace, to commit with its memory image (removals first, then
    /// new and rewritten entries, parents before children); and the bytes it wrote
    /// to writable mounts. The private copy of the workspace goes.
    pub async fn finish(&self, succeeded: bool) -> (Result<Vec<FileChange>, ExecError>, u64) {
        let mut state = self.state.lock().await;
        let State::Open(open) = std::mem::replace(&mut *state, State::Closed) else {
            return (Ok(Vec::new()), 0);
        };
        let mount_bytes = open.mount_bytes;
        if !succeeded {
            return (Ok(Vec::new()), mount_bytes);
        }
        (blocking(move || open.changes()).await.and_then(|changes| changes), mount_bytes)
    }

    /// Runs one `fs.<method>` call.
    async fn call(self: Arc<Self>, method: String, args: Value) -> Result<Value, ExecError> {
        self.count_mount_write(&method, &args).await?;
        let mut state = self.state.lock().await;
        if matches!(*state, State::Closed) {
            *state = match self.open().await {
                Ok(open) => State::Open(Box::new(open)),
                Err(error) => State::Broken(error.message.clone()),
            };
        }
        let open = match std::mem::replace(&mut *state, State::Closed) {
            State::Open(open) => open,
            State::Broken(message) => {
                *state = State::Broken(message.clone());
                return Err(ExecError::new(Kind::Unavailable, message));
            }
            State::Closed => unreachable!("opened above"),
        };
        let (grant, reply_bytes) = (self.grant.clone(), self.reply_bytes);
        let (open, result) = blocking(move || {
            let mut open = open;
            let result = open.call(&grant, reply_bytes, &method, &args);
            (open, result)
        })
        .await?;
        *state = State::Open(open);
        result
    }

    /// Writes the session's files out to a private directory and opens the mounts.
    async fn open(&self) -> Result<Open, ExecError> {
        let stored = match &self.session {
            Some(session) => Some(
                session
                    .store
                    .session_files(&session.session_id, true)
                    .await
                    .map_err(|e| ExecError::new(Kind::Unavailable, e.to_string()))?,
            ),
            None => None,
        };
        let mounts = self.grant.mounts.clone();
        let scratch = self.scratch.clone();
        blocking(move || {
            let ambient = cap_std::ambient_authority();
            let mut open = Open {
                root: None,
                original: BTreeMap::new(),
                touched: BTreeSet::new(),
                dirty: false,
                bytes: 0,
                files: 0,
                mounts: mounts
                    .into_iter()
                    .map(|mount| OpenMount {
                        dir: Dir::open_ambient_dir(&mount.path, ambient)
                            .map_err(|e| format!("EIO: mount `{}` is unavailable: {e}", mount.name)),
                        name: mount.name,
                        writable: mount.writable,
                    })
                    .collect(),
                mount_bytes: 0,
            };
            if let Some(stored) = stored {
                let root = scratch.dir().map_err(|e| fail(format!("EIO: cannot prepare the workspace: {e}")))?;
                for file in stored {
                    let path = FilePath::parse(&file.path)?;
                    let written = if file.dir {
                        root.create_dir_all(path.relative())
                    } else {
                        root.write(path.relative(), &file.data)
                    };
                    written.map_err(|e| io_error(e, "restore", &path))?;
                    open.bytes += file.size;
                    open.files += 1;
                    open.original.insert(file.path, file.dir);
                }
                open.root = Some(root);
            }
            Ok(open)
        })
        .await?
    }
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ExecError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ExecError::new(Kind::Internal, format!("file operation failed: {e}")))
}

impl Open {
    /// The directory a path leads into, and the path within it.
    fn resolve(&self, path: &FilePath) -> Result<(Place, &Dir, FilePath), ExecError> {
        if let Some(first) = path.parts().first() {
            if let Some(index) = self.mounts.iter().position(|m| &m.name == first) {
                let dir = self.mounts[index].dir.as_ref().map_err(|message| fail(message.clone()))?;
                return Ok((Place::Mount(index), dir, path.skip(1)));
            }
        }
        match &self.root {
            Some(root) => Ok((Place::Workspace, root, path.clone())),
            None => Err(fail(format!(
                "EACCES: '{path}' is not in a mounted directory, and this execution has no workspace (workspaces \
                 belong to sessions)"
            ))),
        }
    }

    fn writable(&self, place: &Place, path: &FilePath) -> Result<(), ExecError> {
        match place {
            Place::Mount(index) if !self.mounts[*index].writable => {
                Err(fail(format!("EROFS: '{path}' is in the read-only mount `{}`", self.mounts[*index].name)))
            }
            _ => Ok(()),
        }
    }

    fn call(&mut self, grant: &FilesGrant, reply_bytes: u64, method: &str, args: &Value) -> Result<Value, ExecError> {
        let path = FilePath::parse(arg(args, "path")?)?;
        match method {
            "readFile" => self.read_file(grant, reply_bytes, &path, args),
            "writeFile" => self.write_file(grant, &path, args),
            "readdir" => self.readdir(&path),
            "stat" => self.stat(&path),
            "exists" => Ok(Value::Bool(self.stat(&path).is_ok())),
            "mkdir" => self.mkdir(grant, &path, flag(args, "recursive")),
            "rm" => self.rm(&path, flag(args, "recursive"), flag(args, "force")),
            "rmdir" => self.rmdir(&path),
            "rename" => self.rename(&path, &FilePath::parse(arg(args, "to")?)?),
            other => Err(ExecError::new(Kind::InvalidRequest, format!("no host function `fs.{other}`"))),
        }
    }

    fn read_file(
        &self,
        grant: &FilesGrant,
        reply_bytes: u64,
        path: &FilePath,
        args: &Value,
    ) -> Result<Value, ExecError> {
        let (_, dir, inner) = self.resolve(path)?;
        let metadata = dir.metadata(inner.relative()).map_err(|e| io_error(e, "open", path))?;
        if metadata.is_dir() {
            return Err(fail(format!("EISDIR: is a directory, read '{path}'")));
        }
        if !metadata.is_file() {
            return Err(fail(format!("EINVAL: not a regular file, read '{path}'")));
        }
        if metadata.len() > grant.max_bytes {
            return Err(fail(format!(
                "EFBIG: '{path}' is {} bytes, more than the {} a file read may be (files.max_bytes)",
                metadata.len(),
                grant.max_bytes
            )));
        }
        // The reply is the file's text (at least its length) or its base64 (4 bytes for
        // every 3), in a small envelope: one that could never fit is refused from the
        // file's size, before a byte is read.
        let encoding = args.get("encoding").and_then(Value::as_str).unwrap_or("utf8");
        let least_reply = match encoding {
            "base64" => metadata.len().div_ceil(3) * 4,
            _ => metadata.len(),
        } + REPLY_ENVELOPE;
        if least_reply > reply_bytes {
            return Err(ExecError::new(
                Kind::OutputLimit,
                format!(
                    "'{path}' is {} bytes: read as {encoding}, its reply would be at least {least_reply} bytes, over the \
                     {reply_bytes}-byte limit on a host call's reply (limits.result_bytes)",
                    metadata.len()
                ),
            ));
        }
        let bytes = dir.read(inner.relative()).map_err(|e| io_error(e, "read", path))?;
        match encoding {
            "base64" => Ok(Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))),
            "utf8" | "utf-8" => String::from_utf8(bytes)
                .map(Value::String)
                .map_err(|_| fail(format!("EILSEQ: '{path}' is not UTF-8 text; read it with the encoding \"base64\""))),
            other => Err(fail(format!("EINVAL: unknown encoding `{other}`: use \"utf8\" or \"base64\""))),
        }
    }

    fn write_file(&mut self, grant: &FilesGrant, path: &FilePath, args: &Value) -> Result<Value, ExecError> {
        let data = arg(args, "data")?;
        let bytes = match args.get("encoding").and_then(Value::as_str).unwrap_or("utf8") {
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| fail(format!("EINVAL: `data` is not base64: {e}")))?,
            "utf8" | "utf-8" => data.as_bytes().to_vec(),
            other => return Err(fail(format!("EINVAL: unknown encoding `{other}`: use \"utf8\" or \"base64\""))),
        };
        let append = flag(args, "append");
        if path.is_root() {
            return Err(fail("EISDIR: is a directory, open '.'"));
        }
        let (place, dir, inner) = self.resolve(path)?;
        self.writable(&place, path)?;
        if inner.is_root() {
            return Err(fail(format!("EISDIR: is a directory, open '{path}'")));
        }
        let existing = match dir.metadata(inner.relative()) {
            Ok(metadata) if metadata.is_dir() => return Err(fail(format!("EISDIR: is a directory, open '{path}'"))),
            Ok(metadata) => Some(metadata.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(e, "open", path)),
        };
        let added = bytes.len() as u64;
        match place {
            Place::Workspace => {
                let bytes_after = self.bytes.saturating_sub(if append { 0 } else { existing.unwrap_or(0) }) + added;
                let files_after = self.files + u64::from(existing.is_none());
                check_quota(grant, bytes_after, files_after, path)?;
            }
            Place::Mount(_) => {
                if self.mount_bytes + added > grant.max_bytes {
                    return Err(fail(format!(
                        "EDQUOT: writing '{path}' would take this execution past the {} bytes it may write to mounts \
                         (files.max_bytes)",
                        grant.max_bytes
                    )));
                }
            }
        }
        let mut options = OpenOptions::new();
        options.write(true).create(true);
        if append {
            options.append(true);
        } else {
            options.truncate(true);
        }
        let mut file = dir.open_with(inner.relative(), &options).map_err(|e| io_error(e, "open", path))?;
        file.write_all(&bytes).map_err(|e| io_error(e, "write", path))?;
        match place {
            Place::Workspace => {
                self.bytes = self.bytes.saturating_sub(if append { 0 } else { existing.unwrap_or(0) }) + added;
                self.files += u64::from(existing.is_none());
                self.touched.insert(path.key());
                self.dirty = true;
            }
            Place::Mount(_) => self.mount_bytes += added,
        }
        Ok(json!({ "bytes": added }))
    }

    fn readdir(&self, path: &FilePath) -> Result<Value, ExecError> {
        let (place, dir, inner) = self.resolve(path)?;
        let mut names = Vec::new();
        let entries = dir.read_dir(inner.relative()).map_err(|e| io_error(e, "scandir", path))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(e, "scandir", path))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        // The workspace's top level also shows the mounts.
        if matches!(place, Place::Workspace) && path.is_root() {
            names.extend(self.mounts.iter().map(|m| m.name.clone()));
        }
        if path.is_root() && self.root.is_none() {
            names = self.mounts.iter().map(|m| m.name.clone()).collect();
        }
        names.sort();
        names.dedup();
        Ok(json!(names))
    }

    fn stat(&self, path: &FilePath) -> Result<Value, ExecError> {
        if path.is_root() && self.root.is_none() {
            return Ok(json!({ "type": "directory", "size": 0, "mtimeMs": 0 }));
        }
        let (_, dir, inner) = self.resolve(path)?;
        let metadata = dir.metadata(inner.relative()).map_err(|e| io_error(e, "stat", path))?;
        let kind = if metadata.is_dir() {
            "directory"
        } else if metadata.is_file() {
            "file"
        } else {
            "other"
        };
        let mtime_ms = metadata
            .modified()
            .ok()
            .and_then(|t| t.into_std().duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        Ok(json!({ "type": kind, "size": metadata.len(), "mtimeMs": mtime_ms }))
    }

    fn mkdir(&mut self, grant: &FilesGrant, path: &FilePath, recursive: bool) -> Result<Value, ExecError> {
        let (place, dir, inner) = self.resolve(path)?;
        self.writable(&place, path)?;
        if inner.is_root() {
            return if recursive {
                Ok(Value::Null)
            } else {
                Err(fail(format!("EEXIST: already exists, mkdir '{path}'")))
            };
        }
        let missing = if recursive {
            let mut missing = 0;
            let mut at = FilePath::default();
            for part in inner.parts() {
                at = at.join(part)?;
                match dir.metadata(at.relative()) {
                    Ok(metadata) if metadata.is_dir() => {}
                    Ok(_) => return Err(fail(format!("ENOTDIR: not a directory, mkdir '{path}'"))),
                    Err(_) => missing += 1,
                }
            }
            missing
        } else {
            1
        };
        if matches!(place, Place::Workspace) {
            check_quota(grant, self.bytes, self.files + missing, path)?;
        }
        let made = if recursive { dir.create_dir_all(inner.relative()) } else { dir.create_dir(inner.relative()) };
        made.map_err(|e| io_error(e, "mkdir", path))?;
        if matches!(place, Place::Workspace) {
            self.files += missing;
            self.dirty = true;
            self.touched.insert(path.key());
            self.touched.extend(path.ancestors().map(|p| p.key()));
        }
        Ok(Value::Null)
    }

    fn rm(&mut self, path: &FilePath, recursive: bool, force: bool) -> Result<Value, ExecError> {
        let (place, dir, inner) = self.resolve(path)?;
        self.writable(&place, path)?;
        if inner.is_root() {
            return Err(fail(format!("EPERM: '{path}' itself cannot be removed")));
        }
        let metadata = match dir.symlink_metadata(inner.relative()) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == io::ErrorKind::NotFound && force => return Ok(Value::Null),
            Err(e) => return Err(io_error(e, "rm", path)),
        };
        let removed = if metadata.is_dir() {
            if !recursive {
                return Err(fail(format!("EISDIR: is a directory (remove it with {{recursive: true}}), rm '{path}'")));
            }
            dir.remove_dir_all(inner.relative())
        } else {
            dir.remove_file(inner.relative())
        };
        removed.map_err(|e| io_error(e, "rm", path))?;
        if matches!(place, Place::Workspace) {
            self.dirty = true;
            self.count()?;
        }
        Ok(Value::Null)
    }

    /// Removes an empty directory (Python's `rmdir`).
    fn rmdir(&mut self, path: &FilePath) -> Result<Value, ExecError> {
        let (place, dir, inner) = self.resolve(path)?;
        self.writable(&place, path)?;
        if inner.is_root() {
            return Err(fail(format!("EPERM: '{path}' itself cannot be removed")));
        }
        dir.remove_dir(inner.relative()).map_err(|e| io_error(e, "rmdir", path))?;
        if matches!(place, Place::Workspace) {
            self.dirty = true;
            self.count()?;
        }
        Ok(Value::Null)
    }

    fn rename(&mut self, from: &FilePath, to: &FilePath) -> Result<Value, ExecError> {
        let (from_place, from_dir, from_inner) = self.resolve(from)?;
        let (to_place, _, to_inner) = self.resolve(to)?;
        let same = match (&from_place, &to_place) {
            (Place::Workspace, Place::Workspace) => true,
            (Place::Mount(a), Place::Mount(b)) => a == b,
            _ => false,
        };
        if !same {
            return Err(fail(format!("EXDEV: cannot move between directories of different mounts, rename '{from}'")));
        }
        self.writable(&from_place, from)?;
        if from_inner.is_root() || to_inner.is_root() {
            return Err(fail(format!("EPERM: a workspace or mount itself cannot be renamed, rename '{from}'")));
        }
        from_dir
            .rename(from_inner.relative(), from_dir, to_inner.relative())
            .map_err(|e| io_error(e, "rename", from))?;
        if matches!(from_place, Place::Workspace) {
            self.dirty = true;
            self.count()?;
            // Everything now under the new name is new to the store.
            self.touched.insert(to.key());
        }
        Ok(Value::Null)
    }

    /// Counts the workspace again (after a removal or a move).
    fn count(&mut self) -> Result<(), ExecError> {
        let entries = self.walk()?;
        self.files = entries.len() as u64;
        self.bytes = entries.values().map(|e| e.1).sum();
        Ok(())
    }

    /// Every entry of the workspace: path → (is a directory, size).
    fn walk(&self) -> Result<BTreeMap<String, (bool, u64)>, ExecError> {
        let mut entries = BTreeMap::new();
        let Some(root) = &self.root else { return Ok(entries) };
        let mut pending = vec![FilePath::default()];
        while let Some(at) = pending.pop() {
            let listing = root.read_dir(at.relative()).map_err(|e| io_error(e, "scandir", &at))?;
            for entry in listing {
                let entry = entry.map_err(|e| io_error(e, "scandir", &at))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = at.join(&name)?;
                let kind = entry.file_type().map_err(|e| io_error(e, "stat", &path))?;
                if kind.is_dir() {
                    entries.insert(path.key(), (true, 0));
                    pending.push(path);
                } else if kind.is_file() {
                    let size = entry.metadata().map_err(|e| io_error(e, "stat", &path))?.len();
                    entries.insert(path.key(), (false, size));
                }
            }
        }
        Ok(entries)
    }

    fn changes(&self) -> Result<Vec<FileChange>, ExecError> {
        let Some(root) = &self.root else { return Ok(Vec::new()) };
        if !self.dirty {
            return Ok(Vec::new());
        }
        let now = self.walk()?;
        let mut changes: Vec<FileChange> = self
            .original
            .iter()
            .filter(|(path, dir)| now.get(*path).map(|e| e.0) != Some(**dir))
            .map(|(path, _)| FileChange::Remove(path.clone()))
            .collect();
        let under_touched = |path: &str| {
            self.touched.iter().any(|t| path == t || (path.starts_with(t.as_str()) && path[t.len()..].starts_with('/')))
        };
        for (path, (dir, _)) in &now {
            let new = self.original.get(path) != Some(dir);
            if new || under_touched(path) {
                changes.push(FileChange::Put(if *dir {
                    StoredFile::dir(path.clone())
                } else {
                    let data =
                        root.read(path).map_err(|e| io_error(e, "read", &FilePath::parse(path).unwrap_or_default()))?;
                    StoredFile::file(path.clone(), data)
                }));
            }
        }
        Ok(changes)
    }
}

/// The bytes a host call's reply adds around its value (`{"ok":"..."}`).
const REPLY_ENVELOPE: u64 = 10;

fn check_quota(grant: &FilesGrant, bytes: u64, files: u64, path: &FilePath) -> Result<(), ExecError> {
    if bytes > grant.max_bytes {
        return Err(fail(format!(
            "EDQUOT: writing '{path}' would bring the workspace to {bytes} bytes, past its quota of {} \
             (files.max_bytes)",
            grant.max_bytes
        )));
    }
    if files > grant.max_files {
        return Err(fail(format!(
            "EDQUOT: '{path}' would make {files} files and directories in the workspace, past its quota of {} \
             (files.max_files)",
            grant.max_files
        )));
    }
    Ok(())
}

/// The `fs` door of one execution: its workspace and mounts, or none at all.
pub enum Files {
    /// The execution's session workspace and the mounts its policies grant.
    Workspace(Arc<Workspace>),
    /// Neither: every call is refused with `EACCES`, saying where files live.
    None,
}

impl Door for Files {
    fn call(&self, call: Call) -> Result<Started, ExecError> {
        match self {
            Self::Workspace(workspace) => {
                let pending: Pending = Box::pin(workspace.clone().call(call.method, call.args));
                Ok(pending.into())
            }
            Self::None => Err(ExecError::new(
                Kind::FileError,
                "EACCES: this execution has no file access: files live in a session's workspace (open a session) \
                 or in directories an operator mounts by policy ([policy.files] mounts)",
            )),
        }
    }
}
