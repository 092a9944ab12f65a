//! The policy contract, case by case.

use std::path::{Path, PathBuf};

use super::*;
use crate::auth::Role;

fn ctx() -> LoadContext {
    LoadContext {
        known_tiers: vec!["frontier".into(), "standard".into(), "economy".into()],
        max_memory_bytes: 256 << 20,
    }
}

fn parse(text: &str) -> PolicySet {
    PolicySet::parse_str(text, Path::new("test.toml"), &ctx()).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> String {
    match PolicySet::parse_str(text, Path::new("test.toml"), &ctx()) {
        Ok(set) => panic!("accepted ({} policies):\n{text}", set.len()),
        Err(e) => e.to_string(),
    }
}

fn who(user: &str, team: &str, key: &str, role: Role) -> Principal {
    Principal::of_key(key, user, team, role)
}

/// A member of the platform team on her laptop key.
fn alice() -> Principal {
    who("alice", "platform", "laptop", Role::Member)
}

/// An admin in sales, calling with the CI key.
fn bob() -> Principal {
    who("bob", "sales", "ci", Role::Admin)
}

/// The first three lines of most cases: a valid policy header.
const HEAD: &str = "[[policy]]\nname = \"p\"\nprincipals = [\"*\"]\n";

#[test]
fn policy_parse_errors_name_file_line_and_column() {
    let cases: Vec<(String, &str)> = vec![
        // TOML syntax
        ("[[policy]]\nname = \"p\nprincipals = [\"*\"]\n".into(), "test.toml:2:10: invalid basic string"),
        // unknown keys, at every level
        (format!("{HEAD}bogus = 1\n"), "test.toml:4:1: unknown field `bogus`"),
        (format!("{HEAD}[policy.limits]\nfule = 3\n"), "test.toml:5:1: unknown field `fule`"),
        (format!("{HEAD}[policy.tools]\nallows = [\"*\"]\n"), "test.toml:5:1: unknown field `allows`"),
        (format!("{HEAD}[policy.models]\ntier = [\"economy\"]\n"), "test.toml:5:1: unknown field `tier`"),
        (format!("{HEAD}[policy.budget]\nscope = \"user\"\nusd = 1\n"), "test.toml:6:1: unknown field `usd`"),
        (format!("{HEAD}[policy.rate]\nper_minute = 1\n"), "test.toml:5:1: unknown field `per_minute`"),
        (
            "[[policy]]\nname = \"p\"\nprincipals = [\"*\"]\n[polcy.tools]\n".into(),
            "test.toml:4:2: unknown field `polcy`, expected `policy`",
        ),
        // wrong types
        (
            "[[policy]]\nname = \"p\"\nprincipals = \"*\"\n".into(),
            "test.toml:3:14: invalid type: string \"*\", expected a sequence",
        ),
        (
            format!("{HEAD}[policy.limits]\nwall_ms = \"5s\"\n"),
            "test.toml:5:11: invalid type: string \"5s\", expected u64",
        ),
        (format!("{HEAD}[policy.limits]\nfuel = -1\n"), "test.toml:5:8: invalid value: integer `-1`, expected u64"),
        (format!("{HEAD}[policy.limits]\nhost_calls = 5_000_000_000\n"), "test.toml:5:14: invalid value"),
        (
            format!("{HEAD}[policy.budget]\nscope = \"user\"\ntokens_per_day = -5\n"),
            "test.toml:6:18: invalid value: integer `-5`",
        ),
        (format!("{HEAD}[policy.rate]\nexecutions_per_minute = 1.5\n"), "test.toml:5:25: invalid type: floating point"),
        (
            "[policy]\nname = \"p\"\nprincipals = [\"*\"]\n".into(),
            "test.toml:1:1: invalid type: map, expected a sequence; write [[policy]]",
        ),
        ("[[policy]]\nprincipals = [\"*\"]\n".into(), "test.toml:1:1: missing field `name`"),
        ("[[policy]]\nname = \"p\"\n".into(), "test.toml:1:1: missing field `principals`"),
        // globs
        (format!("{HEAD}[policy.tools]\nallow = [\"\"]\n"), "test.toml:5:10: empty glob"),
        (
            format!("{HEAD}[policy.tools]\ndeny = [\"github. x\"]\n"),
            "test.toml:5:9: glob \"github. x\" contains whitespace",
        ),
        (
            format!("{HEAD}[policy.tools]\nallow = [\"ok.*\", \"github/x\"]\n"),
            "test.toml:5:18: glob \"github/x\" contains '/'",
        ),
        (
            format!("{HEAD}[policy.tools]\nallow = [\"github.[ab]\"]\n"),
            "test.toml:5:10: glob \"github.[ab]\" contains '['",
        ),
        // principal selectors
        (
            "[[policy]]\nname = \"p\"\nprincipals = [\"user:\"]\n".into(),
            "test.toml:3:15: principal selector \"user:\" has an empty name",
        ),
        (
            "[[policy]]\nname = \"p\"\nprincipals = [\"*\", \"group:x\"]\n".into(),
            "test.toml:3:20: principal selector \"group:x\": unknown kind `group`",
        ),
        (
            "[[policy]]\nname = \"p\"\nprincipals = [\"role:boss\"]\n".into(),
            "test.toml:3:15: principal selector \"role:boss\": unknown role `boss`",
        ),
        (
            "[[policy]]\nname = \"p\"\nprincipals = [\"alice\"]\n".into(),
            "test.toml:3:15: principal selector \"alice\" has no kind",
        ),
        (
            "[[policy]]\nname = \"p\"\nprincipals = [\"team:a b\"]\n".into(),
            "test.toml:3:15: principal selector \"team:a b\" contains whitespace",
        ),
        ("[[policy]]\nname = \"p\"\nprincipals = []\n".into(), "test.toml:3:14: policy \"p\": principals is empty"),
        // tiers and models
        (
            format!("{HEAD}[policy.models]\ntiers = [\"economy\", \"premium\"]\n"),
            "test.toml:5:21: unknown tier \"premium\" (known tiers: frontier, standard, economy)",
        ),
        (format!("{HEAD}[policy.models]\nmodels = [\"\"]\n"), "test.toml:5:11: empty model name"),
        // impossible limits
        (format!("{HEAD}[policy.limits]\nwall_ms = 0\n"), "test.toml:5:11: limits.wall_ms = 0: must be at least 1"),
        (format!("{HEAD}[policy.limits]\nfuel = 0\n"), "test.toml:5:8: limits.fuel = 0: must be at least 1"),
        (
            format!("{HEAD}[policy.limits]\ncode_bytes = 0\n"),
            "test.toml:5:14: limits.code_bytes = 0: must be at least 1",
        ),
        (
            format!("{HEAD}[policy.limits]\nmemory_bytes = 8388607\n"),
            "test.toml:5:16: limits.memory_bytes = 8388607 is below 8 MiB",
        ),
        (
            format!("{HEAD}[policy.limits]\nmemory_bytes = 268435457\n"),
            "test.toml:5:16: limits.memory_bytes = 268435457 is above the sandbox's max_memory_bytes (268435456)",
        ),
        // budgets
        (format!("{HEAD}[policy.budget]\nusd_per_day = 1.0\n"), "test.toml:4:1: missing field `scope`"),
        (
            format!("{HEAD}[policy.budget]\nscope = \"org\"\n"),
            "test.toml:5:9: unknown variant `org`, expected `user` or `team`",
        ),
        (
            format!("{HEAD}[policy.budget]\nscope = \"user\"\nusd_per_day = -0.5\n"),
            "test.toml:6:15: budget.usd_per_day = -0.5 must be",
        ),
        (
            format!("{HEAD}[policy.budget]\nscope = \"team\"\nusd_per_month = nan\n"),
            "test.toml:6:17: budget.usd_per_month = NaN must be",
        ),
        (
            format!("{HEAD}[policy.budget]\nscope = \"team\"\nusd_per_day = inf\n"),
            "test.toml:6:15: budget.usd_per_day = inf must be",
        ),
        // names
        (
            format!("{HEAD}\n[[policy]]\nname = \"p\"\nprincipals = [\"team:x\"]\n"),
            "test.toml:6:8: duplicate policy name \"p\": already defined at test.toml:2",
        ),
        ("[[policy]]\nname = \" \"\nprincipals = [\"*\"]\n".into(), "test.toml:2:8: policy name is empty"),
        // files without policies
        ("".into(), "test.toml:1:1: no [[policy]] table"),
        ("# only a comment\n".into(), "test.toml:1:1: no [[policy]] table"),
    ];
    let mut failures = Vec::new();
    for (text, expected) in &cases {
        let err = parse_err(text);
        if !err.contains(expected) || !err.starts_with("test.toml:") {
            failures.push(format!("for\n{text}expected {expected:?}\n     got {err:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

#[test]
fn policy_load_reports_every_problem_across_files() {
    let files = vec![
        (
            PathBuf::from("a.toml"),
            "[[policy]]\nname = \"p\"\nprincipals = [\"group:x\"]\n[policy.tools]\nallow = [\"\"]\n[policy.limits]\nwall_ms = 0\n"
                .to_owned(),
        ),
        (PathBuf::from("b.toml"), "[[policy]]\nname = \"q\"\nprincipals = [\"*\"]\nbogus = true\n".to_owned()),
        (PathBuf::from("c.toml"), "\n[[policy]]\nname = \"p\"\nprincipals = [\"*\"]\n".to_owned()),
    ];
    let err = PolicySet::from_files(files, &ctx()).unwrap_err();
    // In file order, and top to bottom within a file.
    let lines: Vec<String> = err.diagnostics().iter().map(ToString::to_string).collect();
    let expected = [
        "a.toml:3:15: principal selector \"group:x\"",
        "a.toml:5:10: empty glob",
        "a.toml:7:11: limits.wall_ms = 0",
        "b.toml:4:1: unknown field `bogus`",
        "c.toml:3:8: duplicate policy name \"p\": already defined at a.toml:2",
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, expected) in lines.iter().zip(expected) {
        assert!(line.starts_with(expected), "expected {expected:?}, got {line:?}");
    }
    assert_eq!(err.to_string(), lines.join("\n"));
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sandgate-policy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn policy_load_dir_reads_toml_files_in_name_order() {
    let dir = TempDir::new("order");
    dir.write("b.toml", "[[policy]]\nname = \"second\"\nprincipals = [\"*\"]\n");
    dir.write("a.toml", "[[policy]]\nname = \"first\"\nprincipals = [\"*\"]\n");
    dir.write("notes.md", "not a policy");
    dir.write(".#a.toml", "an editor's lock file");
    std::fs::create_dir(dir.0.join("old.toml")).unwrap();
    std::fs::create_dir(dir.0.join("archive")).unwrap();
    std::fs::write(dir.0.join("archive/c.toml"), "broken = ").unwrap();

    let set = PolicySet::load_dir(&dir.0, &ctx()).unwrap();
    let names: Vec<&str> = set.iter().map(|p| p.name).collect();
    assert_eq!(names, ["first", "second"]);
    assert_eq!((set.len(), set.files()), (2, 2));
    assert_eq!(set.iter().next().unwrap().file, dir.0.join("a.toml"));

    dir.write("c.toml", "[[policy]]\nname = \"first\"\nprincipals = [\"*\"]\n");
    let err = PolicySet::load_dir(&dir.0, &ctx()).unwrap_err().to_string();
    let expected = format!(
        "{}:2:8: duplicate policy name \"first\": already defined at {}:2",
        dir.0.join("c.toml").display(),
        dir.0.join("a.toml").display()
    );
    assert_eq!(err, expected);
}

#[test]
fn policy_load_dir_names_a_missing_directory() {
    let missing = std::env::temp_dir().join("sandgate-policy-no-such-dir");
    let err = PolicySet::load_dir(&missing, &ctx()).unwrap_err();
    assert!(matches!(err, PolicyError::ReadDir { .. }), "{err:?}");
    let err = err.to_string();
    assert!(err.starts_with(&format!("{}: cannot read policy directory", missing.display())), "{err}");
}

#[test]
fn policy_load_dir_with_no_files_denies_everything() {
    let dir = TempDir::new("empty");
    let set = PolicySet::load_dir(&dir.0, &ctx()).unwrap();
    assert!(set.is_empty());
    assert!(!set.explain(&alice(), &Query::Execute).allowed);
}

#[test]
fn policy_deny_by_default() {
    let queries = [
        Query::Execute,
        Query::Tool("github.get_issue".into()),
        Query::Model { name: "gpt-4o-mini".into(), tier: Some("economy".into()) },
        Query::Tier("economy".into()),
    ];
    // No policies at all.
    let empty = PolicySet::default();
    for query in &queries {
        let decision = empty.explain(&alice(), query);
        assert!(!decision.allowed, "{query}: {decision}");
        assert_eq!(decision.rule, None);
        assert!(decision.reason.contains("no policy matches user alice"), "{decision}");
    }
    let caps = empty.capabilities(&alice());
    assert_eq!(caps.limits, None);
    assert!(caps.matched.is_empty());
    assert_eq!((caps.budget, caps.rate), (Budget::default(), Rate::default()));

    // Generous policies, none of which matches bob.
    let set = parse(
        "[[policy]]\nname = \"platform\"\nprincipals = [\"team:platform\", \"user:alice\", \"key:laptop\", \"role:member\"]\n\
         [policy.limits]\n[policy.tools]\nallow = [\"*\"]\n[policy.models]\ntiers = [\"economy\"]\nmodels = [\"gpt-4o-mini\"]\n\
         [policy.budget]\nscope = \"team\"\nusd_per_day = 1\n[policy.rate]\nexecutions_per_minute = 5\n",
    );
    for query in &queries {
        assert!(set.explain(&alice(), query).allowed, "{query}");
        let decision = set.explain(&bob(), query);
        assert!(!decision.allowed, "{query}: {decision}");
        assert_eq!(decision.rule, None);
    }
    let caps = set.capabilities(&bob());
    assert_eq!(caps.limits, None);
    assert_eq!((caps.budget, caps.rate), (Budget::default(), Rate::default()));

    // A matching policy grants only what it says: no limits table, no execution.
    let set =
        parse("[[policy]]\nname = \"tools-only\"\nprincipals = [\"*\"]\n[policy.tools]\nallow = [\"github.*\"]\n");
    let caps = set.capabilities(&bob());
    assert_eq!(caps.matched, ["tools-only"]);
    assert_eq!(caps.limits, None);
    assert!(!caps.execute().allowed);
    assert!(caps.tool("github.get_issue").allowed);
    assert!(!caps.tool("slack.post").allowed);
    assert!(!caps.tier("economy").allowed);
    assert!(!caps.model("gpt-4o-mini", Some("economy")).allowed);
}

#[test]
fn policy_each_selector_matches_its_principals_only() {
    let carol = who("carol", "platform", "laptop", Role::Admin);
    let cases: [(&str, [bool; 3]); 10] = [
        // selector           alice  bob    carol
        ("*", [true, true, true]),
        ("user:alice", [true, false, false]),
        ("user:Alice", [false, false, false]),
        ("user:platform", [false, false, false]),
        ("team:platform", [true, false, true]),
        ("team:alice", [false, false, false]),
        ("key:ci", [false, true, false]),
        ("key:laptop", [true, false, true]),
        ("role:admin", [false, true, true]),
        ("role:member", [true, false, false]),
    ];
    for (selector, expected) in cases {
        let set = parse(&format!("[[policy]]\nname = \"p\"\nprincipals = [{selector:?}]\n[policy.limits]\n"));
        for (principal, expected) in [alice(), bob(), carol.clone()].iter().zip(expected) {
            let caps = set.capabilities(principal);
            assert_eq!(caps.limits.is_some(), expected, "{selector} vs {principal:?}");
            assert_eq!(caps.matched.len(), usize::from(expected));
        }
    }
}

#[test]
fn policy_limits_are_the_largest_grant_per_field() {
    let set = parse(
        "[[policy]]\nname = \"a\"\nprincipals = [\"*\"]\n[policy.limits]\nfuel = 5_000_000_000\nwall_ms = 10_000\n\n\
         [[policy]]\nname = \"b\"\nprincipals = [\"team:platform\"]\n\
         [policy.limits]\nfuel = 20_000_000_000\nwall_ms = 1_000\nmemory_bytes = 33_554_432\ntool_calls = 7\n\n\
         [[policy]]\nname = \"c\"\nprincipals = [\"team:platform\"]\n[policy.tools]\nallow = [\"*\"]\n",
    );
    let caps = set.capabilities(&alice());
    assert_eq!(caps.matched, ["a", "b", "c"]);
    let defaults = Limits::default();
    assert_eq!(
        caps.limits,
        Some(Limits {
            fuel: 20_000_000_000,
            wall_ms: 10_000,
            // Set by one policy only: its value, even below the default.
            memory_bytes: 32 << 20,
            tool_calls: 7,
            ..defaults
        })
    );
    assert_eq!(caps.execute().rule.unwrap().policy, "a");

    // Bob matches only `a`; `b`'s larger grants are not his.
    let caps = set.capabilities(&bob());
    assert_eq!(caps.limits, Some(Limits { fuel: 5_000_000_000, wall_ms: 10_000, ..defaults }));

    // An empty [policy.limits] table grants execution under the defaults.
    let set = parse("[[policy]]\nname = \"p\"\nprincipals = [\"*\"]\n[policy.limits]\n");
    assert_eq!(set.capabilities(&bob()).limits, Some(defaults));

    // Defaults never exceed the sandbox's memory ceiling.
    let small = LoadContext { max_memory_bytes: 16 << 20, ..ctx() };
    let set = PolicySet::parse_str(
        "[[policy]]\nname = \"p\"\nprincipals = [\"*\"]\nlimits = {}\n",
        Path::new("t.toml"),
        &small,
    )
    .unwrap();
    assert_eq!(set.capabilities(&bob()).limits.unwrap().memory_bytes, 16 << 20);
}

#[test]
fn policy_tool_deny_wins_across_policies() {
    let allow = "[[policy]]\nname = \"allow\"\nprincipals = [\"*\"]\n[policy.tools]\nallow = [\"github.*\"]\n";
    let deny =
        "[[policy]]\nname = \"deny\"\nprincipals = [\"team:platform\"]\n[policy.tools]\ndeny = [\"github.delete_*\"]\n";
    for files in [[("allow.toml", allow), ("deny.toml", deny)], [("deny.toml", deny), ("allow.toml", allow)]] {
        let files = files.iter().map(|(path, text)| (PathBuf::from(path), text.to_string())).collect();
        let set = PolicySet::from_files(files, &ctx()).unwrap();
        let caps = set.capabilities(&alice());

        let decision = caps.tool("github.delete_repo");
        assert!(!decision.allowed);
        assert_eq!(
            decision.rule,
            Some(RuleRef {
                file: "deny.toml".into(),
                line: 5,
                policy: "deny".into(),
                detail: "tools.deny \"github.delete_*\"".into()
            })
        );
        let decision = caps.tool("github.create_issue");
        assert!(decision.allowed);
        assert_eq!(decision.rule.unwrap().detail, "tools.allow \"github.*\"");

        // The deny binds only the principals of its own policy.
        assert!(set.capabilities(&bob()).tool("github.delete_repo").allowed);
    }
}

#[test]
fn policy_tiers_and_models_are_the_union() {
    let set = parse(
        "[[policy]]\nname = \"cheap\"\nprincipals = [\"*\"]\n[policy.models]\ntiers = [\"economy\"]\n\n\
         [[policy]]\nname = \"frontier\"\nprincipals = [\"team:platform\"]\n\
         [policy.models]\ntiers = [\"frontier\"]\nmodels = [\"gpt-4o\"]\n",
    );
    let caps = set.capabilities(&alice());
    assert!(caps.tier("economy").allowed);
    assert!(caps.tier("frontier").allowed);
    assert!(!caps.tier("standard").allowed);

    let by_name = caps.model("gpt-4o", Some("standard"));
    assert!(by_name.allowed);
    assert_eq!(by_name.to_string(), "allow: test.toml:12 policy \"frontier\": models.models \"gpt-4o\"");
    let by_tier = caps.model("o3", Some("frontier"));
    assert!(by_tier.allowed);
    assert_eq!(by_tier.to_string(), "allow: test.toml:11 policy \"frontier\": models.tiers \"frontier\"");
    assert!(caps.model("mini", Some("economy")).allowed);
    assert!(!caps.model("claude-sonnet", Some("standard")).allowed);
    assert!(!caps.model("unknown-model", None).allowed);

    let caps = set.capabilities(&bob());
    assert!(!caps.tier("frontier").allowed);
    assert!(!caps.model("gpt-4o", Some("frontier")).allowed);
    assert_eq!(
        caps.model("gpt-4o", Some("frontier")).to_string(),
        "deny: no matching policy grants model gpt-4o or its tier frontier (deny by default)"
    );
}

#[test]
fn policy_budgets_and_rates_take_the_largest_value_and_its_scope() {
    let set = parse(
        "[[policy]]\nname = \"mine\"\nprincipals = [\"*\"]\n\
         [policy.budget]\nscope = \"user\"\nusd_per_day = 5\nusd_per_month = 100.0\n\
         [policy.rate]\nexecutions_per_minute = 60\n\n\
         [[policy]]\nname = \"ours\"\nprincipals = [\"team:platform\"]\n\
         [policy.budget]\nscope = \"team\"\nusd_per_day = 50.0\nusd_per_month = 100.0\ntokens_per_day = 1_000_000\n\
         [policy.rate]\nexecutions_per_minute = 30\nmodel_calls_per_minute = 10\n",
    );
    let caps = set.capabilities(&alice());
    let day = caps.budget.usd_per_day.unwrap();
    assert_eq!((day.value, day.scope, day.rule.policy.as_str(), day.rule.line), (50.0, BudgetScope::Team, "ours", 16));
    assert_eq!(day.rule.detail, "budget.usd_per_day = 50");
    // A tie keeps the first policy in load order.
    let month = caps.budget.usd_per_month.unwrap();
    assert_eq!((month.value, month.scope, month.rule.policy.as_str()), (100.0, BudgetScope::User, "mine"));
    let tokens = caps.budget.tokens_per_day.unwrap();
    assert_eq!((tokens.value, tokens.scope), (1_000_000, BudgetScope::Team));
    // Configured nowhere: not limited by this field.
    assert_eq!(caps.budget.tokens_per_month, None);
    assert_eq!(caps.rate, Rate { executions_per_minute: Some(60), model_calls_per_minute: Some(10) });

    let caps = set.capabilities(&bob());
    let day = caps.budget.usd_per_day.unwrap();
    assert_eq!((day.value, day.scope), (5.0, BudgetScope::User));
    assert_eq!(caps.budget.tokens_per_day, None);
    assert_eq!(caps.rate, Rate { executions_per_minute: Some(60), model_calls_per_minute: None });
}

#[test]
fn policy_explain_names_the_deciding_rule() {
    let text = "\
[[policy]]
name = \"trusted\"
principals = [\"team:platform\"]

[policy.limits]
wall_ms = 30_000

[policy.tools]
allow = [\"github.*\"]
deny = [\"github.delete_*\"]
";
    let set = PolicySet::parse_str(text, Path::new("policies/trusted.toml"), &ctx()).unwrap();
    let explain = |principal: &Principal, query: Query| set.explain(principal, &query).to_string();

    assert_eq!(
        explain(&alice(), Query::Tool("github.create_issue".into())),
        "allow: policies/trusted.toml:9 policy \"trusted\": tools.allow \"github.*\""
    );
    assert_eq!(
        explain(&alice(), Query::Tool("github.delete_repo".into())),
        "deny: policies/trusted.toml:10 policy \"trusted\": tools.deny \"github.delete_*\""
    );
    assert_eq!(
        explain(&alice(), Query::Tool("slack.post_message".into())),
        "deny: no matching policy grants tool slack.post_message (deny by default)"
    );
    assert_eq!(explain(&alice(), Query::Execute), "allow: policies/trusted.toml:5 policy \"trusted\": limits");
    assert_eq!(
        explain(&alice(), Query::Tier("frontier".into())),
        "deny: no matching policy grants tier frontier (deny by default)"
    );
    assert_eq!(
        explain(&bob(), Query::Tool("github.create_issue".into())),
        "deny: no policy matches user bob (team sales, key ci, role admin), so tool github.create_issue is denied (deny by default)"
    );
    assert_eq!(
        explain(&bob(), Query::Execute),
        "deny: no policy matches user bob (team sales, key ci, role admin), so code execution is denied (deny by default)"
    );

    let without_limits = parse("[[policy]]\nname = \"p\"\nprincipals = [\"*\"]\n");
    assert_eq!(
        without_limits.explain(&bob(), &Query::Execute).to_string(),
        "deny: no matching policy grants code execution: none has a [policy.limits] table (deny by default)"
    );
}

#[test]
fn policy_capabilities_none_and_allow_all() {
    let none = Capabilities::none();
    assert_eq!(none.limits, None);
    for decision in [none.execute(), none.tool("github.x"), none.model("m", Some("economy")), none.tier("economy")] {
        assert!(!decision.allowed, "{decision}");
    }

    let limits = Limits { wall_ms: 1, ..Limits::default() };
    let all = Capabilities::allow_all_for_tests(limits);
    assert_eq!(all.limits, Some(limits));
    for decision in [all.execute(), all.tool("test.echo"), all.model("m", None), all.tier("anything")] {
        assert!(decision.allowed, "{decision}");
    }
    assert_eq!((all.budget, all.rate), (Budget::default(), Rate::default()));
}

#[test]
fn policy_except_removes_principals_a_selector_matches() {
    let text =
        "[[policy]]\nname = \"p\"\nprincipals = [\"*\"]\nexcept = [\"key:ci\", \"team:sales\"]\n[policy.limits]\n";
    let set = PolicySet::parse_str(text, Path::new("test.toml"), &ctx()).unwrap();
    assert!(set.capabilities(&alice()).limits.is_some());
    assert!(set.capabilities(&who("x", "y", "ci", Role::Member)).limits.is_none());
    assert!(set.capabilities(&who("x", "sales", "k", Role::Member)).limits.is_none());
    let bad = "[[policy]]\nname = \"p\"\nprincipals = [\"*\"]\nexcept = [\"group:x\"]\n";
    let err = PolicySet::parse_str(bad, Path::new("test.toml"), &ctx()).unwrap_err().to_string();
    assert!(err.contains("test.toml:4:11"), "{err}");
}

#[test]
fn policy_shipped_examples_load_and_mean_what_they_say() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let set = PolicySet::load_dir(&dir, &ctx()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((set.len(), set.files()), (4, 4));
    let names: Vec<&str> = set.iter().map(|p| p.name).collect();
    assert_eq!(names, ["ci", "everyone", "local", "platform"]);

    // The one user of a keyless server: default limits, everything, no rates.
    let local = set.capabilities(&Principal::local());
    assert_eq!(local.matched, ["local"]);
    assert_eq!(local.limits, Some(Limits { concurrent: 256, ..Limits::default() }));
    assert_eq!((local.rate, local.budget.clone()), (Rate::default(), Budget::default()));
    assert!(local.tool("github.delete_repo").allowed && local.tier("frontier").allowed);
    // A key that happens to be named `local` is not the local principal.
    let named_local = set.capabilities(&who("local", "local", "local", Role::Admin));
    assert_eq!(named_local.matched, ["everyone"]);

    let platform = set.capabilities(&alice());
    assert_eq!(platform.matched, ["everyone", "platform"]);
    let limits = platform.limits.unwrap();
    assert_eq!((limits.wall_ms, limits.memory_bytes, limits.fuel), (30_000, 128 << 20, 60_000_000_000));
    let create = platform.tool("github.create_issue");
    assert!(create.allowed);
    assert!(create.to_string().contains("trusted.toml"), "{create}");
    assert!(!platform.tool("github.delete_repo").allowed);
    assert!(!platform.tool("postgres.drop_table").allowed);
    assert!(platform.tier("frontier").allowed && platform.tier("standard").allowed && platform.tier("economy").allowed);
    assert_eq!(platform.budget.usd_per_day.as_ref().map(|b| (b.value, b.scope)), Some((200.0, BudgetScope::Team)));
    // Writing straight to main is refused by a rule; other branches are not.
    let push = |args: serde_json::Value| {
        let facts = condition::Facts { principal: &alice(), args: &args, session: None, now_ms: 0 };
        platform.call(condition::Target::Tool("github.push_files"), None, &facts)
    };
    let to_main = push(serde_json::json!({"branch": "main"}));
    assert!(!to_main.allowed && to_main.denial().contains("through a pull request"), "{to_main}");
    assert!(push(serde_json::json!({"branch": "dev"})).allowed);
    assert!(push(serde_json::json!({})).allowed, "has() makes a missing branch false");

    let sales = set.capabilities(&who("dana", "sales", "laptop", Role::Member));
    assert_eq!(sales.matched, ["everyone"]);
    assert_eq!(sales.limits, Some(Limits { tool_calls: 50, model_calls: 10, ..Limits::default() }));
    assert!(sales.tool("github.get_issue").allowed);
    assert!(sales.tool("docs.search").allowed);
    assert!(!sales.tool("github.create_issue").allowed);
    assert!(sales.tier("economy").allowed);
    assert!(!sales.tier("frontier").allowed);
    assert_eq!(sales.budget.usd_per_day.as_ref().map(|b| (b.value, b.scope)), Some((2.0, BudgetScope::User)));
    assert_eq!(sales.rate.executions_per_minute, Some(60));

    // `everyone` excepts the CI key, so only `ci` applies to it: locked down.
    let ci = set.capabilities(&who("ci-bot", "ci", "ci", Role::Member));
    assert_eq!(ci.matched, ["ci"]);
    assert!(ci.tool("github.create_check_run").allowed);
    assert!(!ci.tool("memory.read_notes").allowed);
    assert!(!ci.tool("docs.search").allowed);
    assert_eq!(ci.limits.unwrap().wall_ms, 2_000);
    assert_eq!(ci.rate.executions_per_minute, Some(30));
    assert!(!ci.tier("economy").allowed);

    // No shipped policy grants the demo capability.
    for principal in [alice(), bob(), who("ci-bot", "ci", "ci", Role::Member)] {
        for tool in ["test.echo", "test.sleep", "test.fail"] {
            assert!(!set.explain(&principal, &Query::Tool(tool.into())).allowed, "{tool} for {principal:?}");
        }
    }
}

#[test]
fn policy_files_quotas_take_the_largest_and_mounts_the_union() {
    let set = parse(
        "[[policy]]\nname = \"all\"\nprincipals = [\"*\"]\n\
         [policy.files]\nmax_bytes = 1000\n\
         mounts = [{ path = \"/srv/data\", as = \"data\" }]\n\n\
         [[policy]]\nname = \"platform\"\nprincipals = [\"team:platform\"]\n\
         [policy.files]\nmax_files = 5\n\
         mounts = [{ path = \"/srv/other\", as = \"data\", mode = \"rw\" }, { path = \"/srv/out\", as = \"out\", mode = \"rw\" }]\n",
    );
    let files = set.capabilities(&alice()).files;
    assert_eq!((files.max_bytes, files.max_files), (64 << 20, 1_000), "a field left out takes its default");
    let mounts: Vec<(&str, &str, bool)> =
        files.mounts.iter().map(|m| (m.name.as_str(), m.path.to_str().unwrap(), m.writable)).collect();
    assert_eq!(mounts, [("data", "/srv/data", false), ("out", "/srv/out", true)], "the first policy wins a name");
    let files = set.capabilities(&bob()).files;
    assert_eq!((files.max_bytes, files.max_files, files.mounts.len()), (1000, 1_000, 1));
    assert_eq!(parse(HEAD).capabilities(&bob()).files, FilesGrant::default(), "no table: defaults, no mounts");

    for (mount, message) in [
        ("{ path = \"srv\", as = \"a\" }", "mount path `srv` must be absolute"),
        ("{ path = \"/srv\", as = \"../up\" }", "mount name `../up` may hold only"),
        ("{ path = \"/srv\", as = \"..\" }", "mount name `..` must not be"),
        ("{ path = \"/srv\", as = \"\" }", "mount name `` must be 1 to 64"),
        ("{ path = \"/srv\", as = \"a\", mode = \"rwx\" }", "mount mode `rwx` is not `ro` or `rw`"),
        ("{ path = \"/srv\", as = \"a\" }, { path = \"/tmp\", as = \"a\" }", "mount name `a` is used twice"),
    ] {
        let error = parse_err(&format!("{HEAD}[policy.files]\nmounts = [{mount}]\n"));
        assert!(error.contains(message), "{mount}: {error}");
        assert!(error.contains("test.toml:5:"), "{error}");
    }
}

#[test]
fn personal_keys_are_granted_by_a_keys_table_and_merge_to_the_largest() {
    let set = parse(
        "[[policy]]\nname = \"all\"\nprincipals = [\"*\"]\n[policy.keys]\nmax = 3\n\n\
         [[policy]]\nname = \"platform\"\nprincipals = [\"team:platform\"]\n[policy.keys]\nmax_lifetime_days = 90\n\n\
         [[policy]]\nname = \"none\"\nprincipals = [\"user:carol\"]\n",
    );
    // alice (platform) gets the larger of each field; a field left out takes its default.
    assert_eq!(set.capabilities(&alice()).keys, Some(KeyGrant { max: 5, max_lifetime_days: 90 }));
    assert_eq!(set.capabilities(&bob()).keys, Some(KeyGrant { max: 3, max_lifetime_days: 30 }));
    let only_none = parse("[[policy]]\nname = \"none\"\nprincipals = [\"*\"]\n");
    assert_eq!(only_none.capabilities(&alice()).keys, None, "without the table, no personal keys");
    assert!(parse_err(&format!("{HEAD}[policy.keys]\nmax = 0\n")).contains("at least 1"));
    assert!(parse_err(&format!("{HEAD}[policy.keys]\nmax_lifetime_days = 0\n")).contains("at least 1"));
    assert!(parse_err(&format!("{HEAD}[policy.keys]\nlifetime = 3\n")).contains("unknown field `lifetime`"));
}

/// Conditions on calls: the `leads` example, hostile arguments, and the order of
/// decisions, table-driven.
#[test]
fn policy_rules_decide_calls_by_their_conditions() {
    use super::condition::{Facts, Target};
    let set = parse(
        r#"[[policy]]
name = "agents"
principals = ["*"]
[policy.tools]
allow = ["github.*", "stripe.*", "fs.*"]
deny = ["github.delete_*"]
[[policy.rules]]
tools = ["github.merge_pull_request"]
when = "args.base == 'main'"
decision = "approve"
approvers = ["team:leads"]
reason = "merges into main need a lead"
[[policy.rules]]
tools = ["stripe.create_refund"]
when = "args.amount >= 100"
decision = "approve"
approvers = ["role:admin"]
expires_after_s = 3600
[[policy.rules]]
tools = ["github.*"]
when = "has(args.repo) && !args.repo.startsWith(principal.team + '/')"
decision = "deny"
reason = "only your own team's repositories"
[[policy.rules]]
tools = ["notes.write"]
when = "principal.role == 'admin' || session != ''"
decision = "allow"
[[policy.rules]]
tools = ["github.delete_branch"]
decision = "allow"
[[policy.rules]]
models = ["tier:frontier", "gpt-*"]
when = "size(args.messages) > 3"
decision = "deny"
"#,
    );
    let alice = alice();
    let caps = set.capabilities(&alice);
    let deep = (0..100).fold(serde_json::json!(1), |inner, _| serde_json::json!({ "a": inner }));
    let huge = serde_json::json!({ "base": "x".repeat(1 << 20), "repo": "platform/x" });
    let cases: Vec<(&str, serde_json::Value, Option<&str>, &str, &str)> = vec![
        // tool, args, session, verdict, a part of the explanation
        ("github.merge_pull_request", serde_json::json!({"base": "main"}), None, "approve", "team:leads"),
        ("github.merge_pull_request", serde_json::json!({"base": "dev"}), None, "allow", "tools.allow \"github.*\""),
        ("github.merge_pull_request", serde_json::json!({"base": "main", "repo": "sales/x"}), None, "deny", "own team"),
        (
            "github.merge_pull_request",
            serde_json::json!({"base": "main", "repo": "platform/x"}),
            None,
            "approve",
            "rules[1]",
        ),
        // a missing key cannot be decided: denied, with the error
        ("github.merge_pull_request", serde_json::json!({}), None, "deny", "No such key: base"),
        // CEL's equality across types is false, not an error
        ("github.merge_pull_request", serde_json::json!({"base": 7}), None, "allow", "github.*"),
        ("github.merge_pull_request", serde_json::json!({"base": ["main"]}), None, "allow", "github.*"),
        (
            "github.merge_pull_request",
            serde_json::json!({"__proto__": {"base": "main"}, "base": "dev"}),
            None,
            "allow",
            "github.*",
        ),
        ("github.merge_pull_request", serde_json::json!({"base": "main", "constructor": 1}), None, "approve", "leads"),
        ("github.merge_pull_request", deep.clone(), None, "deny", "No such key"),
        ("github.merge_pull_request", huge.clone(), None, "allow", "github.*"),
        ("stripe.create_refund", serde_json::json!({"amount": 99}), None, "allow", "stripe.*"),
        ("stripe.create_refund", serde_json::json!({"amount": 100}), None, "approve", "role:admin"),
        ("stripe.create_refund", serde_json::json!({"amount": 1e300}), None, "approve", "role:admin"),
        // numbers compare across int and double
        ("stripe.create_refund", serde_json::json!({"amount": 99.5}), None, "allow", "stripe.*"),
        ("stripe.create_refund", serde_json::json!({"amount": 100.5}), None, "approve", "role:admin"),
        ("stripe.create_refund", serde_json::json!({"amount": "1000"}), None, "deny", "could not be decided"),
        // tools.deny wins over any rule that would allow
        ("github.delete_branch", serde_json::json!({}), None, "deny", "tools.deny"),
        // a rule grants a tool no glob allows, under its condition
        ("notes.write", serde_json::json!({}), Some("s1"), "allow", "rules[4]"),
        ("notes.write", serde_json::json!({}), None, "deny", "deny by default"),
    ];
    for (tool, args, session, verdict, part) in cases {
        let facts = Facts { principal: &alice, args: &args, session, now_ms: 1_700_000_000_000 };
        let decision = caps.call(Target::Tool(tool), None, &facts);
        let shown = format!("{}: {}", decision.denial(), decision.reason);
        assert_eq!(decision.verdict(), verdict, "{tool} {args:.80}: {shown}");
        assert!(shown.contains(part), "{tool} {args:.80}: {shown:?} lacks {part:?}");
    }
    let approval = caps
        .call(
            Target::Tool("github.merge_pull_request"),
            None,
            &Facts { principal: &alice, args: &serde_json::json!({"base": "main"}), session: None, now_ms: 0 },
        )
        .approval
        .expect("an approval");
    assert_eq!((approval.expires_after_s, approval.self_approval), (86_400, false));
    assert!(approval.approver(&who("lee", "leads", "k", Role::Member)));
    assert!(!approval.approver(&alice));

    // model calls: rules may deny, matching the model or its tier
    let long = serde_json::json!({"messages": [1, 2, 3, 4]});
    let short = serde_json::json!({"messages": [1]});
    for (model, tier, args, verdict) in [
        ("gpt-4.1", None, &long, "deny"),
        ("claude", Some("frontier"), &long, "deny"),
        ("claude", Some("economy"), &long, "deny"),
        ("gpt-4.1", None, &short, "deny"),
    ] {
        let facts = Facts { principal: &alice, args, session: None, now_ms: 0 };
        let decision = caps.call(Target::Model(model), tier, &facts);
        assert_eq!(decision.verdict(), verdict, "{model}: {decision}");
        // a rule decided only for the long requests to listed models
        let by_rule = decision.rule.as_ref().is_some_and(|r| r.detail.starts_with("rules[6]"));
        assert_eq!(by_rule, args == &long && (model == "gpt-4.1" || tier == Some("frontier")), "{model}: {decision}");
    }
    // The name-only view (tool listings): a tool a rule may allow is listed.
    assert!(caps.tool("notes.write").allowed);
    assert!(!caps.tool("github.delete_repo").allowed);
}

#[test]
fn policy_rule_errors_name_file_line_and_column() {
    let rule = |body: &str| format!("{HEAD}[[policy.rules]]\n{body}");
    let cases = [
        (rule("tools = [\"a.b\"]\nwhen = \"args.base ==\"\ndecision = \"deny\"\n"), "test.toml:6:"),
        (
            rule("tools = [\"a.b\"]\nwhen = \"arg.base == 'x'\"\ndecision = \"deny\"\n"),
            "test.toml:6:9: unknown variable `arg`",
        ),
        (
            rule("tools = [\"a.b\"]\nwhen = \"args.x.all(v, v > 1) && user == 'x'\"\ndecision = \"deny\"\n"),
            "test.toml:6:33: unknown variable `user`",
        ),
        (
            rule("tools = [\"a.b\"]\nwhen = '''\nargs.x &&\n  bogus'''\ndecision = \"deny\"\n"),
            "test.toml:8:3: unknown variable `bogus`",
        ),
        (rule("tools = [\"a.b\"]\ndecision = \"maybe\"\n"), "test.toml:6:12: decision \"maybe\" is not"),
        (
            rule("tools = [\"a.b\"]\ndecision = \"approve\"\n"),
            "test.toml:6:12: `decision = \"approve\"` needs `approvers`",
        ),
        (
            rule("tools = [\"a.b\"]\ndecision = \"deny\"\napprovers = [\"team:x\"]\n"),
            "belong to `decision = \"approve\"`",
        ),
        (rule("decision = \"deny\"\n"), "test.toml:5:12: a rule names no calls"),
        (rule("models = [\"gpt-*\"]\ndecision = \"allow\"\n"), "not allow it: models are granted by [policy.models]"),
        (rule("tools = [\"a b\"]\ndecision = \"deny\"\n"), "test.toml:5:10: glob \"a b\" contains whitespace"),
        (
            rule("tools = [\"a.b\"]\ndecision = \"approve\"\napprovers = [\"leads\"]\n"),
            "test.toml:7:14: principal selector \"leads\" has no kind",
        ),
        (
            rule("tools = [\"a.b\"]\ndecision = \"approve\"\napprovers = [\"team:x\"]\nexpires_after_s = 0\n"),
            "test.toml:8:19: expires_after_s must be from 1",
        ),
        (rule("tools = [\"a.b\"]\ndecision = \"deny\"\nwhn = \"true\"\n"), "test.toml:7:1: unknown field `whn`"),
    ];
    for (text, expected) in cases {
        let error = parse_err(&text);
        assert!(error.contains(expected), "{text}\n=> {error}\nwanted {expected:?}");
    }
}

#[test]
fn policy_conditions_see_the_principal_claims_session_and_time() {
    use super::condition::{Condition, Facts, Target};
    let mut principal = alice();
    principal.teams.push("leads".into());
    let mut claims = serde_json::Map::new();
    claims.insert("groups".into(), serde_json::json!(["eng", "oncall"]));
    claims.insert("email".into(), serde_json::json!("alice@example.com"));
    principal.claims = Some(Arc::new(crate::auth::TokenClaims(claims)));
    let args = serde_json::json!({ "n": 3, "tags": ["a", "b"], "nested": { "deep": true } });
    // 2023-11-14T22:13:20Z
    let facts = Facts { principal: &principal, args: &args, session: Some("s-1"), now_ms: 1_700_000_000_000 };
    for (expression, target, expected) in [
        ("principal.user == 'alice' && principal.team == 'platform'", Target::Tool("a.b"), Ok(true)),
        ("'leads' in principal.teams", Target::Tool("a.b"), Ok(true)),
        ("principal.role == 'member' && principal.key == 'laptop'", Target::Tool("a.b"), Ok(true)),
        ("'oncall' in principal.claims.groups", Target::Tool("a.b"), Ok(true)),
        ("principal.claims.email.endsWith('@example.com')", Target::Tool("a.b"), Ok(true)),
        ("tool == 'github.merge' && server == 'github' && model == ''", Target::Tool("github.merge"), Ok(true)),
        ("model == 'gpt-4.1' && tool == ''", Target::Model("gpt-4.1"), Ok(true)),
        ("session == 's-1'", Target::Tool("a.b"), Ok(true)),
        ("now.getHours() == 22 && now.getFullYear() == 2023", Target::Tool("a.b"), Ok(true)),
        ("now > timestamp('2023-01-01T00:00:00Z')", Target::Tool("a.b"), Ok(true)),
        ("args.n * 2 == 6 && args.tags.exists(t, t == 'b') && args.nested.deep", Target::Tool("a.b"), Ok(true)),
        ("args.tags.all(t, size(t) == 1)", Target::Tool("a.b"), Ok(true)),
        ("args.missing == 1", Target::Tool("a.b"), Err("No such key: missing")),
        ("args.n", Target::Tool("a.b"), Err("the condition gave an int, not a bool")),
        ("args.n / 0 == 1", Target::Tool("a.b"), Err("")),
    ] {
        let condition = Condition::compile(expression).unwrap_or_else(|e| panic!("{expression}: {e:?}"));
        let got = condition.holds(target, &facts);
        match (&got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(*got, want, "{expression}"),
            (Err(why), Err(part)) => assert!(why.contains(part), "{expression}: {why}"),
            _ => panic!("{expression}: got {got:?}, wanted {expected:?}"),
        }
    }
    // A key's principal has no claims: an empty map, not an error.
    let key = alice();
    let facts = Facts { principal: &key, args: &args, session: None, now_ms: 0 };
    let condition = Condition::compile("size(principal.claims) == 0 && session == ''").unwrap();
    assert_eq!(condition.holds(Target::Tool("a.b"), &facts), Ok(true));
}
