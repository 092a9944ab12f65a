//! What every adapter shares: the service and the configuration it was built from.
//! The HTTP routes, `/mcp` and the console each take this, and nothing else of each
//! other's.

use std::sync::Arc;

use crate::config::Config;
use crate::service::Service;

/// The state every handler works with.
#[derive(Clone, Debug)]
pub struct AppState {
    pub service: Arc<Service>,
    pub config: Arc<Config>,
}
