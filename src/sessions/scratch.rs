//! The process's own scratch directory: where executions write out their session's
//! workspace and uploads are spooled, never a world-readable `/tmp`.
//!
//! Each process makes `<base>/<pid>.<random>` with mode 0700 when it starts, and every
//! directory and file in it is made 0700 or 0600, so no other user of the machine can
//! read a workspace copy or an upload. A process that dies without cleaning up (a
//! crash, `kill -9`) leaves its directory behind; the next process to start on the
//! same base removes every directory whose process is gone.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;

/// This process's scratch directory (see the module docs).
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

/// A private directory under the scratch directory, removed with everything in it
/// when dropped.
pub struct ScratchDir {
    path: PathBuf,
    dir: Dir,
}

/// A private file under the scratch directory (mode 0600), removed when dropped.
#[derive(Debug)]
pub struct ScratchFile {
    path: PathBuf,
    pub file: std::fs::File,
}

fn random_name() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether process `pid` is alive on this machine.
fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

impl Scratch {
    /// Makes this process's directory under `base` (itself made 0700 if missing),
    /// after removing those of processes that are gone.
    pub fn create(base: &Path) -> io::Result<Self> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(base)?;
        if let Ok(entries) = std::fs::read_dir(base) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let pid = name.to_str().and_then(|n| n.split_once('.')).and_then(|(pid, _)| pid.parse::<u32>().ok());
                if let Some(pid) = pid.filter(|pid| *pid != std::process::id() && !alive(*pid)) {
                    match std::fs::remove_dir_all(entry.path()) {
                        Ok(()) => {
                            tracing::info!(pid, path = %entry.path().display(), "removed a stale scratch directory")
                        }
                        Err(error) => {
                            tracing::warn!(%error, path = %entry.path().display(), "cannot remove a stale scratch directory")
                        }
                    }
                }
            }
        }
        let path = base.join(format!("{}.{}", std::process::id(), random_name()));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new private directory (0700), as a cap-std capability.
    pub fn dir(&self) -> io::Result<ScratchDir> {
        let path = self.path.join(format!("ws-{}", random_name()));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        let dir = Dir::open_ambient_dir(&path, cap_std::ambient_authority())?;
        Ok(ScratchDir { path, dir })
    }

    /// A new private file (0600), open for writing and reading.
    pub fn file(&self) -> io::Result<ScratchFile> {
        let path = self.path.join(format!("up-{}", random_name()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
        Ok(ScratchFile { path, file })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Dir;

    fn deref(&self) -> &Dir {
        &self.dir
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl ScratchFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn scratch_is_private_and_stale_directories_go() {
        let base = std::env::temp_dir().join(format!("sandgate-scratch-test-{}", random_name()));
        // A directory a dead process left (no process has pid 4194303+1 on Linux).
        std::fs::create_dir_all(base.join("4194304.abc/ws-1")).unwrap();
        let scratch = Scratch::create(&base).unwrap();
        assert!(!base.join("4194304.abc").exists(), "a dead process's directory is removed");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(scratch.path()), 0o700);
        let dir = scratch.dir().unwrap();
        assert_eq!(mode(&dir.path), 0o700);
        dir.write("a.txt", b"x").unwrap();
        let file = scratch.file().unwrap();
        assert_eq!(mode(file.path()), 0o600);
        let (dir_path, file_path) = (dir.path.clone(), file.path().to_path_buf());
        drop((dir, file));
        assert!(!dir_path.exists() && !file_path.exists());
        // A second process's directory (this one's, alive) stays.
        let again = Scratch::create(&base).unwrap();
        assert!(scratch.path().exists());
        drop((scratch, again));
        let _ = std::fs::remove_dir_all(&base);
    }
}
