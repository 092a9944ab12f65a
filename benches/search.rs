//! Search quality and speed: recall at 1, 5 and 10, MRR and how often the right
//! server is among the first three, of the ranking on the evaluation sets in
//! `tests/search` (the reference servers' and, in `tests/search/large`, an
//! organisation's; tuning and held-out splits), next to the plain BM25 baseline, and
//! query latency over each catalog and over 1,000 tools.
//!
//! ```text
//! cargo bench --bench search
//! cargo bench --bench search -- --misses   # also each tuning request the ranking misses
//! ```
//!
//! `--misses` prints the tuning split's misses only: the held-out split is reported as
//! totals and never read request by request.

#[path = "../tests/search/eval.rs"]
mod eval;

use std::time::{Duration, Instant};

use sandgate::mcp::search::Method;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let catalog = eval::catalog();
    let queries = eval::queries();
    for set in [eval::Set::Small, eval::Set::Large] {
        if !set.present() {
            println!("{set:?} set: not in {} yet", set.dir().display());
            continue;
        }
        let catalog = eval::catalog_of(set);
        let queries = eval::queries_of(set);
        let view = catalog.view(|_| true);
        println!("{set:?} set: {} tools of {} servers, {} requests", view.len(), view.servers().len(), queries.len());
        println!(
            "{:<10} {:<9} {:>8} {:>10} {:>10} {:>10} {:>7} {:>10}",
            "method", "split", "queries", "recall@1", "recall@5", "recall@10", "MRR", "server@3"
        );
        for method in [Method::Bm25, Method::Hybrid] {
            for split in [eval::Split::Tune, eval::Split::HeldOut] {
                let m = eval::evaluate(&catalog, &queries, split, method);
                println!(
                    "{:<10} {:<9} {:>8} {:>9.1}% {:>9.1}% {:>9.1}% {:>7.3} {:>9.1}%",
                    format!("{method:?}"),
                    format!("{split:?}"),
                    m.queries,
                    m.recall_at_1 * 100.0,
                    m.recall_at_5 * 100.0,
                    m.recall_at_10 * 100.0,
                    m.mrr,
                    m.server_at_3 * 100.0
                );
            }
        }
        latency(&format!("{set:?} set ({} tools)", view.len()), &view, &queries);
    }
    if std::env::args().any(|a| a == "--misses") {
        print_misses(&catalog, &queries);
    }
    let large = eval::large_catalog(1000);
    let view = large.view(|_| true);
    assert_eq!(view.len(), 1000);
    latency("the small set with synthetic tools (1,000 tools)", &view, &queries);
}

/// Each method's query time over `view` for every request of `queries` (19 rounds
/// after a warm-up one), p50 and p99.
fn latency(label: &str, view: &sandgate::mcp::catalog::View<'_>, queries: &[eval::Query]) {
    for method in [Method::Bm25, Method::Hybrid] {
        let mut times: Vec<Duration> = Vec::new();
        for round in 0..20 {
            for query in queries {
                let started = Instant::now();
                let found = view.search_with(method, &query.query, 5);
                let took = started.elapsed();
                std::hint::black_box(found);
                if round > 0 {
                    times.push(took);
                }
            }
        }
        times.sort();
        let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)].as_secs_f64() * 1e6;
        println!(
            "{:<10} query over {label}: p50 {:.0} µs, p99 {:.0} µs ({} queries)",
            format!("{method:?}"),
            at(0.5),
            at(0.99),
            times.len()
        );
    }
}

/// Each tuning request whose right tool is not first: the request, the right tools and
/// the ranking's top five.
fn print_misses(catalog: &sandgate::mcp::catalog::Catalog, queries: &[eval::Query]) {
    let view = catalog.view(|_| true);
    for query in queries.iter().filter(|q| q.split == eval::Split::Tune) {
        let ranked = view.search_with(Method::Hybrid, &query.query, 10);
        let rank = ranked.iter().position(|tool| query.expect.contains(&tool.name));
        if rank == Some(0) {
            continue;
        }
        let rank = rank.map_or("-".to_string(), |r| (r + 1).to_string());
        let top: Vec<&str> = ranked.iter().take(5).map(|tool| tool.name.as_str()).collect();
        println!("miss (rank {rank}) {:?} wants {:?}; got {top:?}", query.query, query.expect);
    }
}
