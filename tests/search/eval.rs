//! The search evaluation, shared by the tests (`tests/all/search.rs`, which guard the
//! figures) and `cargo bench --bench search` (which prints them).
//!
//! - `catalog.json`: the tools of real MCP servers as their `tools/list` gave them
//!   (see `README.md` here for which and how to capture them again).
//! - `queries_tune.json` and `queries_held_out.json`: agent-style requests, each
//!   labelled with the tool or tools that are right for it. The ranking was developed
//!   against the tuning split; the held-out split was written separately, by someone
//!   who had not seen the tuning split, and only its totals were ever read.
//! - `large/`: the same three files for an organisation-sized catalog (see
//!   `README.md`), read by [`Set::Large`].

use std::path::Path;

use rmcp::model::Tool;
use sandgate::mcp::catalog::{Catalog, CatalogTool, ServerSummary, View};
use sandgate::mcp::search::{Method, Tuning};
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

/// Which catalog and requests: the reference servers' (`tests/search`) or an
/// organisation's (`tests/search/large`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Set {
    Small,
    Large,
}

impl Set {
    pub fn dir(self) -> std::path::PathBuf {
        let base = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/search"));
        match self {
            Set::Small => base.to_path_buf(),
            Set::Large => base.join("large"),
        }
    }

    /// Whether its catalog and both splits are there.
    pub fn present(self) -> bool {
        ["catalog.json", "queries_tune.json", "queries_held_out.json"].iter().all(|f| self.dir().join(f).is_file())
    }
}

fn servers() -> Vec<(ServerSummary, Vec<Tool>)> {
    servers_of(Set::Small)
}

fn servers_of(set: Set) -> Vec<(ServerSummary, Vec<Tool>)> {
    let path = set.dir().join("catalog.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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
#[allow(dead_code)]
pub fn catalog() -> Catalog {
    Catalog::build(servers())
}

/// The catalog of `set`.
pub fn catalog_of(set: Set) -> Catalog {
    Catalog::build(servers_of(set))
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
    queries_of(Set::Small)
}

/// Every labelled request of `set`, both splits.
pub fn queries_of(set: Set) -> Vec<Query> {
    ["queries_tune.json", "queries_held_out.json"]
        .iter()
        .flat_map(|file| {
            let path = set.dir().join(file);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let queries: Queries = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            queries.queries
        })
        .collect()
}

/// Recall at 1, 5 and 10, mean reciprocal rank (of the first right tool, 0 past 10),
/// and how often a right tool's server is among the first three servers the ranking
/// shows.
#[derive(Clone, Copy, Debug, Default)]
pub struct Metrics {
    pub queries: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    pub mrr: f64,
    pub server_at_3: f64,
    /// Requests with no right tool in the first five, by kind: the right server
    /// came first (the tool was missed within it), it was second or third, or it
    /// was not among the first three servers at all.
    pub misses_within_server: usize,
    pub misses_server_2_or_3: usize,
    pub misses_wrong_server: usize,
}

/// The metrics of `method` on the queries of `split`, over `catalog`.
pub fn evaluate(catalog: &Catalog, queries: &[Query], split: Split, method: Method) -> Metrics {
    evaluate_by(catalog, queries, split, |view, query| view.search_with(method, query, 50))
}

/// The metrics of the hybrid with `tuning`'s constants.
#[allow(dead_code)]
pub fn evaluate_tuned(catalog: &Catalog, queries: &[Query], split: Split, tuning: &Tuning) -> Metrics {
    evaluate_by(catalog, queries, split, |view, query| view.find_tuned(query, 50, tuning).0)
}

fn evaluate_by<'a>(
    catalog: &'a Catalog,
    queries: &[Query],
    split: Split,
    rank: impl Fn(&View<'a>, &str) -> Vec<&'a CatalogTool>,
) -> Metrics {
    let view = catalog.view(|_| true);
    let mut metrics = Metrics::default();
    for query in queries.iter().filter(|q| q.split == split) {
        let ranked = rank(&view, &query.query);
        let rank = ranked.iter().take(10).position(|tool| query.expect.contains(&tool.name));
        metrics.queries += 1;
        if rank == Some(0) {
            metrics.recall_at_1 += 1.0;
        }
        if rank.is_some_and(|r| r < 5) {
            metrics.recall_at_5 += 1.0;
        }
        if rank.is_some() {
            metrics.recall_at_10 += 1.0;
        }
        metrics.mrr += rank.map_or(0.0, |r| 1.0 / (r + 1) as f64);
        let mut servers: Vec<&str> = Vec::new();
        for tool in &ranked {
            if !servers.contains(&tool.server.as_str()) {
                servers.push(&tool.server);
            }
        }
        let right = |server: &&str| query.expect.iter().any(|e| e.split_once('.').is_some_and(|(s, _)| s == *server));
        if servers.iter().take(3).any(right) {
            metrics.server_at_3 += 1.0;
        }
        if rank.is_none_or(|r| r >= 5) {
            match servers.iter().take(3).position(right) {
                Some(0) => metrics.misses_within_server += 1,
                Some(_) => metrics.misses_server_2_or_3 += 1,
                None => metrics.misses_wrong_server += 1,
            }
        }
    }
    let n = metrics.queries.max(1) as f64;
    metrics.recall_at_1 /= n;
    metrics.recall_at_5 /= n;
    metrics.recall_at_10 /= n;
    metrics.mrr /= n;
    metrics.server_at_3 /= n;
    metrics
}
