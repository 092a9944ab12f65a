//! Integration tests: one binary (see the README for how to run them).
//!
//! Most tests talk HTTP to a real server started in this process on an ephemeral
//! port (`harness::server`); `binary.rs` runs the built `sandgate` executable.

mod agents;
mod binary;
mod browser;
mod budgets;
mod concurrency;
mod console;
mod departures;
mod escape;
mod formats;
mod grafana;
mod handles;
mod harness;
mod hostile;
mod http_surface;
mod identity;
mod layering;
mod limits;
mod mcp;
mod models;
mod operations;
mod pauses;
mod policies;
mod postgres;
mod python;
mod replicas;
mod results;
mod revisions;
mod search;
mod sessions;
mod sso;
mod store;
mod stub;
mod surfaces;
mod tiers;
mod traces;
mod vocabulary;
mod workspace;
