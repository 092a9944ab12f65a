//! What lasts beyond one execution: a session's workspace of files, and the host
//! directories policies mount into the code's view ([`workspace`]); the process's
//! private scratch directory they are written out to ([`scratch`]).
//!
//! The session handles themselves (leases, memory images) are served by
//! `service::sessions`; their state lives in the store.

pub mod path;
pub mod scratch;
pub mod workspace;

pub use path::{FilePath, PathError};
pub use scratch::Scratch;
pub use workspace::Workspace;
