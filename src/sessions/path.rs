//! Paths into a workspace, as the code (`fs.*`) or a client (`/v1/sessions/{id}/files/...`)
//! writes them.
//!
//! A path is relative to the workspace and `/`-separated; `.` and empty parts are
//! dropped. Absolute paths and `..` parts are refused before anything touches a
//! directory, and the directories themselves are cap-std capabilities, so neither a
//! path nor a symlink can lead out of them (see [`super::workspace`]).

/// Longest part of a path, in bytes (the common file-system limit).
pub const MAX_PART: usize = 255;
/// Longest path, in bytes.
pub const MAX_PATH: usize = 4096;
/// Most parts in a path.
pub const MAX_DEPTH: usize = 64;

/// A checked path: zero parts is the workspace itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FilePath {
    parts: Vec<String>,
}

/// Why a path was refused; each names its POSIX-style code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("EACCES: `{0}` is absolute; paths are relative to the workspace")]
    Absolute(String),
    #[error("EACCES: `{0}` has a `..` part; paths stay inside the workspace")]
    Parent(String),
    #[error("EINVAL: the path holds a NUL character")]
    Nul,
    #[error("ENAMETOOLONG: a path is at most {MAX_PATH} bytes, {MAX_DEPTH} parts of at most {MAX_PART} bytes each")]
    TooLong,
}

impl FilePath {
    pub fn parse(text: &str) -> Result<Self, PathError> {
        if text.len() > MAX_PATH {
            return Err(PathError::TooLong);
        }
        if text.contains('\0') {
            return Err(PathError::Nul);
        }
        if text.starts_with('/') || text.starts_with('\\') {
            return Err(PathError::Absolute(text.to_string()));
        }
        let mut parts = Vec::new();
        for part in text.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(PathError::Parent(text.to_string())),
                part if part.len() > MAX_PART => return Err(PathError::TooLong),
                part => parts.push(part.to_string()),
            }
        }
        if parts.len() > MAX_DEPTH {
            return Err(PathError::TooLong);
        }
        Ok(Self { parts })
    }

    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    /// The workspace itself.
    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// The path as the store keys it: parts joined by `/` (empty for the root).
    pub fn key(&self) -> String {
        self.parts.join("/")
    }

    /// The path relative to a directory capability (`.` for the directory itself).
    pub fn relative(&self) -> std::path::PathBuf {
        if self.parts.is_empty() {
            ".".into()
        } else {
            self.parts.iter().collect()
        }
    }

    /// The path with one more part.
    pub fn join(&self, part: &str) -> Result<Self, PathError> {
        let mut text = self.key();
        if !text.is_empty() {
            text.push('/');
        }
        text.push_str(part);
        Self::parse(&text)
    }

    /// The path without its first `n` parts.
    pub fn skip(&self, n: usize) -> Self {
        Self { parts: self.parts.iter().skip(n).cloned().collect() }
    }

    /// Every proper ancestor except the root, outermost first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> impl Iterator<Item = Self> + '_ {
        (1..self.parts.len()).map(|n| Self { parts: self.parts[..n].to_vec() })
    }
}

impl std::fmt::Display for FilePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.parts.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&self.key())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_kept_and_escapes_refused() {
        assert_eq!(FilePath::parse("a/./b//c").unwrap().key(), "a/b/c");
        assert!(FilePath::parse("").unwrap().is_root());
        assert!(FilePath::parse("./").unwrap().is_root());
        assert!(matches!(FilePath::parse("/etc/passwd"), Err(PathError::Absolute(_))));
        assert!(matches!(FilePath::parse("a/../../etc"), Err(PathError::Parent(_))));
        assert!(matches!(FilePath::parse(".."), Err(PathError::Parent(_))));
        assert_eq!(FilePath::parse("a\0b"), Err(PathError::Nul));
        assert_eq!(FilePath::parse(&"x".repeat(256)), Err(PathError::TooLong));
        assert!(FilePath::parse(&"x".repeat(255)).is_ok());
        assert_eq!(FilePath::parse(&vec!["d"; 65].join("/")), Err(PathError::TooLong));
        let ancestors: Vec<String> = FilePath::parse("a/b/c").unwrap().ancestors().map(|p| p.key()).collect();
        assert_eq!(ancestors, ["a", "a/b"]);
        assert_eq!(FilePath::parse("..a/b..").unwrap().key(), "..a/b..");
    }
}
