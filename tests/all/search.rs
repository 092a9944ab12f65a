//! Search quality, guarded: the ranking must keep the figures it reached on the
//! evaluation set in `tests/search` (see `cargo bench --bench search` for all of them).

// The bench reads the organisation-sized set too; these tests guard the reference set.
#[allow(dead_code)]
#[path = "../search/eval.rs"]
mod eval;

use sandgate::mcp::search::Method;

/// Recall at 5 and at 1 on each split, at or above what the ranking reached when it
/// was last changed; a change that loses any of it fails here.
const FLOORS: [(eval::Split, f64, f64); 2] = [(eval::Split::Tune, 0.71, 0.45), (eval::Split::HeldOut, 0.70, 0.375)];

#[test]
fn the_ranking_keeps_its_recall() {
    let catalog = eval::catalog();
    let queries = eval::queries();
    assert!(queries.len() >= 150, "{} labelled requests", queries.len());
    for (split, recall_at_5, recall_at_1) in FLOORS {
        let hybrid = eval::evaluate(&catalog, &queries, split, Method::Hybrid);
        let baseline = eval::evaluate(&catalog, &queries, split, Method::Bm25);
        eprintln!("{split:?}: hybrid {hybrid:?}, baseline {baseline:?}");
        assert!(hybrid.recall_at_5 >= recall_at_5 - 1e-9, "{split:?}: recall@5 fell to {:.3}", hybrid.recall_at_5);
        assert!(hybrid.recall_at_1 >= recall_at_1 - 1e-9, "{split:?}: recall@1 fell to {:.3}", hybrid.recall_at_1);
        assert!(hybrid.mrr > baseline.mrr, "{split:?}: the hybrid ranking must beat plain BM25");
    }
}

/// The tuning split again, with 841 synthetic API tools (an issue tracker's) added to
/// the catalog: more near misses, and the figures it reached then.
#[test]
fn the_ranking_keeps_its_recall_among_a_thousand_tools() {
    let catalog = eval::large_catalog(1000);
    assert_eq!(catalog.view(|_| true).len(), 1000);
    let m = eval::evaluate(&catalog, &eval::queries(), eval::Split::Tune, Method::Hybrid);
    eprintln!("1,000 tools: {m:?}");
    assert!(m.recall_at_5 >= 0.66 - 1e-9 && m.recall_at_1 >= 0.47 - 1e-9, "{m:?}");
}
