//! What lasts beyond one execution: a session's workspace of files, and the host
//! directories policies mount into the code's view ([`workspace`]).
//!
//! The session handles themselves (leases, memory images) are served by
//! `service::sessions`; their state lives in the store.

pub mod path;
pub mod workspace;

pub use path::{FilePath, PathError};
pub use workspace::Workspace;
