//! Search quality and speed: recall at 1, 5 and 10, MRR and how often the right
//! server is among the first three, of the ranking on the evaluation sets in
//! `tests/search` (the reference servers' and, in `tests/search/large`, an
//! organisation's; tuning and held-out splits), next to the plain BM25 baseline, and
//! query latency over each catalog and over 1,000 tools.
//!
//! ```text
//! cargo bench --bench search
//! cargo bench --bench search -- --misses   # also each tuning request the ranking misses
//! cargo bench --bench search -- --tune     # the server weights that do best on the tuning splits
//! ```
//!
//! `Flat` is the hybrid with each tool ranked on its own, `Hybrid` the same with its
//! server's score added (what `search` uses).
//!
//! `--misses` prints the tuning split's misses only: the held-out split is reported as
//! totals and never read request by request.

#[path = "../tests/search/eval.rs"]
mod eval;

use std::time::{Duration, Instant};

use sandgate::mcp::search::{Method, Tuning};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
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
        for method in ["Bm25", "Flat", "Hybrid"] {
            for split in [eval::Split::Tune, eval::Split::HeldOut] {
                let m = match method {
                    "Bm25" => eval::evaluate(&catalog, &queries, split, Method::Bm25),
                    "Flat" => eval::evaluate_tuned(&catalog, &queries, split, &Tuning::FLAT),
                    _ => eval::evaluate(&catalog, &queries, split, Method::Hybrid),
                };
                println!(
                    "{:<10} {:<9} {:>8} {:>9.1}% {:>9.1}% {:>9.1}% {:>7.3} {:>9.1}%",
                    method,
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
        for split in [eval::Split::Tune, eval::Split::HeldOut] {
            let m = eval::evaluate(&catalog, &queries, split, Method::Hybrid);
            println!(
                "Hybrid {split:?}: requests with no right tool in the first five: {} (right server first: {}, \
                 second or third: {}, not in the first three: {})",
                m.misses_within_server + m.misses_server_2_or_3 + m.misses_wrong_server,
                m.misses_within_server,
                m.misses_server_2_or_3,
                m.misses_wrong_server
            );
        }
        latency(&format!("{set:?} set ({} tools)", view.len()), &view, &queries);
        if std::env::args().any(|a| a == "--misses") {
            print_misses(&catalog, &queries);
        }
    }
    if std::env::args().any(|a| a == "--tune") {
        tune();
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

/// A grid over the server weights ([`Tuning`]), scored on the tuning splits of every
/// set present (mean of recall@5, recall@10 and server@3, then MRR), best first.
fn tune() {
    let sets: Vec<_> = [eval::Set::Small, eval::Set::Large]
        .into_iter()
        .filter(|s| s.present())
        .map(|s| (eval::catalog_of(s), eval::queries_of(s)))
        .collect();
    let grid = [0.0, 0.5, 1.0, 2.0, 4.0];
    let mut results: Vec<(f64, f64, Tuning)> = Vec::new();
    for server in [0.25, 0.5, 1.0, 2.0] {
        for server_words in grid {
            for server_meaning in grid {
                for server_centroid in grid {
                    let tuning = Tuning { server, server_words, server_meaning, server_centroid };
                    let (mut score, mut mrr) = (0.0, 0.0);
                    for (catalog, queries) in &sets {
                        let m = eval::evaluate_tuned(catalog, queries, eval::Split::Tune, &tuning);
                        score += m.recall_at_5 + m.recall_at_10 + m.server_at_3;
                        mrr += m.mrr;
                    }
                    results.push((score, mrr, tuning));
                }
            }
        }
    }
    results.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
    for (score, mrr, tuning) in results.iter().take(15) {
        println!("tune {score:.3} mrr {mrr:.3} {tuning:?}");
    }
}
