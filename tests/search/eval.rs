//! The search evaluation, shared by the tests (`tests/all/search.rs`, which guard the
//! figures) and `cargo bench --bench search` (which prints them).
//!
//! - `catalog.json`: the tools of real MCP servers as their `tools/list` gave them
//!   (see `README.md` here for which and how to capture them again).
//! - `queries_tune.json` and `queries_held_out.json`: agent-style requests, each
//!   labelled with the tool or tools that are right for it. The ranking was developed
//!   against the tuning split; the held-out split was written separately, by someone
//!   who had not seen the tuning split, and only its totals were ever read.

use std::path::Path;

use rmcp::model::Tool;
use sandgate::mcp::catalog::{Catalog, ServerSummary};
use sandgate::mcp::search::Method;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    servers: Vec<FixtureServer>,
}

#[derive(Deserialize)]
struct FixtureServer {
    name: String,
    description: String,
    tools: Vec<Tool>,
}

/// One labelled request.
#[derive(Clone, Debug, Deserialize)]
pub struct Query {
    pub query: String,
    /// The right tools (`server.tool`); finding any of them counts.
    pub expect: Vec<String>,
    pub split: Split,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Tune,
    HeldOut,
}

#[derive(Deserialize)]
struct Queries {
    queries: Vec<Query>,
}

fn dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/search"))
}

fn servers() -> Vec<(ServerSummary, Vec<Tool>)> {
    let text = std::fs::read_to_string(dir().join("catalog.json")).expect("tests/search/catalog.json");
    let fixture: Fixture = serde_json::from_str(&text).expect("the catalog fixture parses");
    fixture
        .servers
        .into_iter()
        .map(|s| {
            let summary = ServerSummary { name: s.name, description: Some(s.description), status: "ready".into() };
            (summary, s.tools)
        })
        .collect()
}

/// The catalog of the fixture's servers.
pub fn catalog() -> Catalog {
    Catalog::build(servers())
}

/// The fixture's servers plus synthetic API-style tools, `n` tools in all: the
/// catalog query latency is measured over.
pub fn large_catalog(n: usize) -> Catalog {
    let mut servers = servers();
    let have: usize = servers.iter().map(|(_, tools)| tools.len()).sum();
    let resources = ["issue", "invoice", "customer", "deployment", "ticket", "order", "page", "dataset"];
    let verbs = ["get", "list", "create", "update", "delete", "search", "archive", "export"];
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "The identifier"},
            "project": {"type": "string", "description": "Project key, e.g. ENG"},
            "limit": {"type": "integer", "description": "Most results to return"}
        }
    });
    let serde_json::Value::Object(schema) = schema else { unreachable!() };
    let schema = std::sync::Arc::new(schema);
    let synthetic = (0..n.saturating_sub(have))
        .map(|i| {
            let (verb, resource) = (verbs[i % verbs.len()], resources[(i / verbs.len()) % resources.len()]);
            Tool::new(
                format!("{verb}_{resource}_{i}"),
                format!("{verb} a {resource} in the tracker (variant {i}); returns it as JSON."),
                schema.clone(),
            )
        })
        .collect();
    let summary = ServerSummary {
        name: "tracker".into(),
        description: Some("Issue tracker and billing API".into()),
        status: "ready".into(),
    };
    servers.push((summary, synthetic));
    Catalog::build(servers)
}

/// Every labelled request, both splits.
pub fn queries() -> Vec<Query> {
    ["queries_tune.json", "queries_held_out.json"]
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(dir().join(file)).unwrap_or_else(|e| panic!("tests/search/{file}: {e}"));
            let queries: Queries = serde_json::from_str(&text).unwrap_or_else(|e| panic!("tests/search/{file}: {e}"));
            queries.queries
        })
        .collect()
}

/// Recall at 1 and 5 and mean reciprocal rank (of the first right tool, 0 past 10).
#[derive(Clone, Copy, Debug, Default)]
pub struct Metrics {
    pub queries: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub mrr: f64,
}

/// The metrics of `method` on the queries of `split`, over `catalog`.
pub fn evaluate(catalog: &Catalog, queries: &[Query], split: Split, method: Method) -> Metrics {
    let view = catalog.view(|_| true);
    let mut metrics = Metrics::default();
    for query in queries.iter().filter(|q| q.split == split) {
        let ranked = view.search_with(method, &query.query, 10);
        let rank = ranked.iter().position(|tool| query.expect.contains(&tool.name));
        metrics.queries += 1;
        if rank == Some(0) {
            metrics.recall_at_1 += 1.0;
        }
        if rank.is_some_and(|r| r < 5) {
            metrics.recall_at_5 += 1.0;
        }
        metrics.mrr += rank.map_or(0.0, |r| 1.0 / (r + 1) as f64);
    }
    let n = metrics.queries.max(1) as f64;
    metrics.recall_at_1 /= n;
    metrics.recall_at_5 /= n;
    metrics.mrr /= n;
    metrics
}
