//! What a policy condition costs a call: `Capabilities::call` for a tool call that
//! `[[policy.rules]]` entries name, against the glob-only decision the same call
//! had before conditions. Three rules, as an operator writes them:
//! - `args.base == 'main'` on a merge (approve), the typical rule;
//! - `!args.repo.startsWith(principal.team + '/')` (deny), reading the principal;
//! - `args.files.exists(f, f.path.startsWith('.github/'))` over a 50-file push;
//!
//! each with arguments as agents send them (a pull request's fields, a push of 50
//! files of 2 KiB). The decision runs 200,000 times per case; the figures are the
//! per-call p50 and p99 over batches of 100.
//!
//!     cargo bench --bench conditions

use std::path::Path;
use std::time::{Duration, Instant};

use sandgate::auth::{Principal, Role};
use sandgate::policy::condition::{Facts, Target};
use sandgate::policy::{LoadContext, PolicySet};
use serde_json::json;

const POLICY: &str = r#"
[[policy]]
name = "agents"
principals = ["*"]
[policy.limits]
[policy.tools]
allow = ["github.*"]
deny = ["github.delete_*"]
[[policy.rules]]
tools = ["github.merge_pull_request"]
when = "args.base == 'main'"
decision = "approve"
approvers = ["team:leads"]
[[policy.rules]]
tools = ["github.create_pull_request", "github.merge_pull_request"]
when = "!args.repo.startsWith(principal.team + '/')"
decision = "deny"
[[policy.rules]]
tools = ["github.push_files"]
when = "args.files.exists(f, f.path.startsWith('.github/'))"
decision = "deny"
"#;

const GLOBS_ONLY: &str = r#"
[[policy]]
name = "agents"
principals = ["*"]
[policy.limits]
[policy.tools]
allow = ["github.*"]
deny = ["github.delete_*"]
"#;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let ctx = LoadContext { known_tiers: vec![], max_memory_bytes: 256 << 20 };
    let with_rules = PolicySet::parse_str(POLICY, Path::new("bench.toml"), &ctx).unwrap();
    let globs_only = PolicySet::parse_str(GLOBS_ONLY, Path::new("bench.toml"), &ctx).unwrap();
    let principal = Principal::of_key("laptop", "alice", "platform", Role::Member);
    let merge = json!({
        "owner": "platform", "repo": "platform/api", "pull_number": 4211, "base": "main",
        "merge_method": "squash", "commit_title": "Fix the retry loop in the uploader",
        "commit_message": "The uploader retried forever when the bucket was gone.",
    });
    let files: Vec<_> =
        (0..50).map(|i| json!({"path": format!("src/module_{i}/lib.rs"), "content": "x".repeat(2048)})).collect();
    let push = json!({"repo": "platform/api", "branch": "feature", "message": "Refactor", "files": files});
    let cases = [
        ("typical: args.base == 'main' (merge)", "github.merge_pull_request", &merge),
        ("principal: !args.repo.startsWith(team)", "github.create_pull_request", &merge),
        ("exists() over a 50-file push", "github.push_files", &push),
    ];
    println!("{:<42} {:>10} {:>10} {:>12}", "case", "p50", "p99", "globs only");
    for (name, tool, args) in cases {
        let rules = with_rules.capabilities(&principal);
        let globs = globs_only.capabilities(&principal);
        let measure = |caps: &sandgate::policy::Capabilities| {
            let mut batches = Vec::with_capacity(2_000);
            for _ in 0..2_000 {
                let started = Instant::now();
                for _ in 0..100 {
                    let facts = Facts::now(&principal, args, None);
                    std::hint::black_box(caps.call(Target::Tool(tool), None, &facts));
                }
                batches.push(started.elapsed() / 100);
            }
            batches.sort();
            batches
        };
        measure(&rules); // warm up
        let with = measure(&rules);
        let without = measure(&globs);
        println!(
            "{name:<42} {:>10.2?} {:>10.2?} {:>12.2?}",
            percentile(&with, 0.5),
            percentile(&with, 0.99),
            percentile(&without, 0.5)
        );
    }
}
