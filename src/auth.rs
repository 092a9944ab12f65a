//! Who is calling. Every execution, tool call and model call is attributed to a
//! [`Principal`]; nothing guest code passes can change it.

use serde::Serialize;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Principal {
    pub user: String,
    pub team: String,
}

impl Principal {
    /// The single principal of the embedded default: a server on loopback with no
    /// keys configured serves its local user.
    pub fn local() -> Self {
        Self {
            user: "local".into(),
            team: "local".into(),
        }
    }
}
