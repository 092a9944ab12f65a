//! The storage boundary's contract, checked on both backends: the embedded SQLite
//! store and a real PostgreSQL server. Every test here runs once per backend.

use std::sync::Arc;

use sandgate::store::{
    self, BudgetLine, CallRecord, ExecutionRecord, GroupBy, Hold, ModelCallRecord, Record, SpendScope, Store,
    StoreConfig, UsageQuery,
};

use crate::harness::temp_dir;
use crate::postgres;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// Where a fresh, empty store lives on `backend`.
async fn fresh(backend: Backend) -> StoreConfig {
    match backend {
        Backend::Sqlite => {
            StoreConfig::Sqlite { path: temp_dir("store").join("ledger.db"), synchronous: Default::default() }
        }
        Backend::Postgres => StoreConfig::Postgres { url: postgres::database().await, pool: 8 },
    }
}

async fn open(config: &StoreConfig) -> Arc<dyn Store> {
    store::open(config).await.expect("store opens")
}

/// Two handles on one store, as two replicas would hold. SQLite is served by one
/// process, so both are the same handle there.
async fn replicas(backend: Backend) -> (Arc<dyn Store>, Arc<dyn Store>) {
    let config = fresh(backend).await;
    let first = open(&config).await;
    let second = match backend {
        Backend::Sqlite => first.clone(),
        Backend::Postgres => open(&config).await,
    };
    (first, second)
}

fn execution(id: &str, user: &str, at: i64, fuel: u64) -> Record {
    Record::Execution(ExecutionRecord {
        id: id.into(),
        user: user.into(),
        team: "t".into(),
        key: "k".into(),
        started_at_ms: at,
        ended_at_ms: at + 5,
        outcome: "ok".into(),
        fuel,
        wall_ms: 5,
        memory_bytes: 1,
        host_calls: 2,
        logs: String::new(),
        agent_session: Some(format!("agent-of-{user}")),
    })
}

/// Alice's call to `tools.test.echo` from execution "a".
fn echo_call_of_a() -> Record {
    Record::Call(CallRecord {
        execution_id: "a".into(),
        user: "alice".into(),
        team: "t".into(),
        name: "tools.test.echo".into(),
        started_at_ms: 1_001,
        latency_ms: 1,
        outcome: "ok".into(),
    })
}

fn model_call(user: &str, team: &str, at: i64, cost_usd: f64, tokens: (u64, u64)) -> Record {
    Record::Model(ModelCallRecord {
        execution_id: None,
        user: user.into(),
        team: team.into(),
        key: "k".into(),
        model: "m".into(),
        tier: "economy".into(),
        provider: "p".into(),
        input_tokens: tokens.0,
        output_tokens: tokens.1,
        cached_tokens: 0,
        cost_usd,
        started_at_ms: at,
        latency_ms: 3,
        status: "ok".into(),
        fallback_chain: vec!["a: HTTP 500".into()],
        tags: serde_json::json!({"user": "end-user-7"}),
        agent_session: Some(format!("agent-of-{user}")),
    })
}

fn session_event(event: &'static str, at_ms: i64, state_bytes: u64) -> Record {
    Record::Session(store::SessionEvent {
        session_id: "s".into(),
        user: "alice".into(),
        team: "t".into(),
        key: "k".into(),
        at_ms,
        event,
        state_bytes,
    })
}

fn line(scope: SpendScope, since_ms: i64, limit_nanos: Option<i64>, limit_tokens: Option<u64>) -> BudgetLine {
    BudgetLine { scope, since_ms, limit_nanos, limit_tokens }
}

fn hold(lines: Vec<BudgetLine>, nanos: i64, tokens: u64) -> Hold {
    Hold { id: uuid::Uuid::now_v7().to_string(), lines, nanos, tokens, expires_at_ms: store::now_ms() + 60_000 }
}

fn alice() -> SpendScope {
    SpendScope::User("alice".into())
}

#[tokio::test]
async fn records_add_up_to_the_usage_totals_and_survive_reopening() {
    for backend in BACKENDS {
        let config = fresh(backend).await;
        let store = open(&config).await;
        store
            .append(
                vec![
                    execution("a", "alice", 1_000, 10),
                    execution("b", "alice", 2_000, 20),
                    execution("c", "bob", 86_400_000, 5),
                    echo_call_of_a(),
                    model_call("alice", "t", 1_500, 0.000123, (100, 7)),
                    session_event("opened", 1_600, 0),
                    session_event("saved", 1_700, 4_096),
                    session_event("saved", 1_800, 8_192),
                    session_event("ended", 1_900, 0),
                ],
                Vec::new(),
            )
            .await
            .unwrap();
        // A later record of the same execution replaces the earlier one, in one batch too.
        store
            .append(vec![execution("c", "bob", 86_400_000, 6), execution("c", "bob", 86_400_000, 7)], Vec::new())
            .await
            .unwrap();
        drop(store);
        let store = open(&config).await;
        let rows = store.usage(&UsageQuery::default()).await.unwrap();
        assert_eq!(rows.len(), 2, "{backend:?}");
        assert_eq!((rows[0].group.as_str(), rows[0].executions, rows[0].fuel), ("alice", 2, 30), "{backend:?}");
        assert_eq!((rows[0].model_calls, rows[0].input_tokens, rows[0].cost_usd), (1, 100, 0.000123), "{backend:?}");
        assert_eq!((rows[1].group.as_str(), rows[1].executions, rows[1].fuel), ("bob", 1, 7), "{backend:?}");
        assert_eq!((rows[0].sessions_opened, rows[0].session_state_bytes), (1, 12_288), "{backend:?}");
        assert_eq!(store::total(&rows).session_state_bytes, 12_288);
        let days = store.usage(&UsageQuery { group_by: GroupBy::Day, ..Default::default() }).await.unwrap();
        assert_eq!(days.iter().map(|r| r.group.as_str()).collect::<Vec<_>>(), ["1970-01-01", "1970-01-02"]);
        let bob = store.usage(&UsageQuery { user: Some("bob".into()), ..Default::default() }).await.unwrap();
        assert_eq!(bob.len(), 1, "{backend:?}");
        let window = UsageQuery { since_ms: Some(1_500), until_ms: Some(3_000), ..Default::default() };
        let window = store.usage(&window).await.unwrap();
        assert_eq!((window[0].executions, window[0].model_calls), (1, 1), "{backend:?}");
        let tiers = store.usage(&UsageQuery { group_by: GroupBy::Tier, ..Default::default() }).await.unwrap();
        assert_eq!((tiers[0].group.as_str(), tiers[0].output_tokens), ("economy", 7), "{backend:?}");
        // One agent session's executions and model calls, together.
        let agents = store.usage(&UsageQuery { group_by: GroupBy::AgentSession, ..Default::default() }).await.unwrap();
        let groups: Vec<(&str, u64, u64)> =
            agents.iter().map(|r| (r.group.as_str(), r.executions, r.model_calls)).collect();
        assert_eq!(groups, [("agent-of-alice", 2, 1), ("agent-of-bob", 1, 0)], "{backend:?}");
        let listed = store.executions(&store::ExecutionQuery { limit: 10, ..Default::default() }).await.unwrap();
        assert!(
            listed.iter().all(|e| e.agent_session.as_deref() == Some(&format!("agent-of-{}", e.user))),
            "{backend:?}"
        );
        let bobs =
            store::ExecutionQuery { agent_session: Some("agent-of-bob".into()), limit: 10, ..Default::default() };
        let bobs = store.executions(&bobs).await.unwrap();
        assert_eq!(bobs.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["c"], "{backend:?}");
        store.ping().await.unwrap();
    }
}

#[tokio::test]
async fn executions_are_listed_newest_first_and_open_with_their_calls_and_calls_add_up() {
    for backend in BACKENDS {
        let store = open(&fresh(backend).await).await;
        let mut failed = execution("b", "bob", 2_000, 20);
        if let Record::Execution(record) = &mut failed {
            record.outcome = "timeout".into();
        }
        let mut call_of_a = model_call("alice", "t", 1_002, 0.000_5, (10, 2));
        if let Record::Model(record) = &mut call_of_a {
            record.execution_id = Some("a".into());
        }
        let mut printed = execution("a", "alice", 1_000, 10);
        if let Record::Execution(record) = &mut printed {
            record.logs = r#"[{"level":"log","message":"hello"},{"level":"warn","message":"careful"}]"#.into();
        }
        store
            .append(vec![printed, failed, execution("c", "alice", 3_000, 30), echo_call_of_a(), call_of_a], Vec::new())
            .await
            .unwrap();
        let ids = |rows: Vec<store::ExecutionRecord>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let all = store::ExecutionQuery { limit: 10, ..Default::default() };
        assert_eq!(ids(store.executions(&all).await.unwrap()), ["c", "b", "a"], "{backend:?}");
        let alice = store::ExecutionQuery { user: Some("alice".into()), limit: 1, ..Default::default() };
        assert_eq!(ids(store.executions(&alice).await.unwrap()), ["c"], "{backend:?}");
        let timeouts = store::ExecutionQuery { outcome: Some("timeout".into()), limit: 10, ..Default::default() };
        assert_eq!(ids(store.executions(&timeouts).await.unwrap()), ["b"], "{backend:?}");
        let window =
            store::ExecutionQuery { since_ms: Some(1_000), until_ms: Some(3_000), limit: 10, ..Default::default() };
        assert_eq!(ids(store.executions(&window).await.unwrap()), ["b", "a"], "{backend:?}");

        let detail = store.execution("a").await.unwrap().expect("execution a");
        assert_eq!((detail.execution.user.as_str(), detail.execution.fuel), ("alice", 10), "{backend:?}");
        assert_eq!(detail.calls.len(), 1, "{backend:?}");
        assert_eq!((detail.calls[0].name.as_str(), detail.calls[0].outcome.as_str()), ("tools.test.echo", "ok"));
        assert_eq!(detail.model_calls.len(), 1, "{backend:?}");
        assert_eq!(detail.model_calls[0].fallbacks, ["a: HTTP 500"], "{backend:?}");
        assert_eq!((detail.model_calls[0].input_tokens, detail.cost_usd()), (10, 0.000_5), "{backend:?}");
        assert!(store.execution("nothing").await.unwrap().is_none(), "{backend:?}");
        let lines: Vec<(String, String)> = detail.logs.into_iter().map(|l| (l.level, l.message)).collect();
        assert_eq!(lines, [("log".into(), "hello".into()), ("warn".into(), "careful".into())], "{backend:?}");
        assert!(store.execution("b").await.unwrap().unwrap().logs.is_empty(), "nothing printed, nothing kept");

        let stats = store.call_stats(&store::ExecutionQuery::default()).await.unwrap();
        assert_eq!(stats.len(), 1, "{backend:?}");
        assert_eq!((stats[0].name.as_str(), stats[0].calls, stats[0].errors), ("tools.test.echo", 1, 0), "{backend:?}");
        let bob = store::ExecutionQuery { user: Some("bob".into()), ..Default::default() };
        assert!(store.call_stats(&bob).await.unwrap().is_empty(), "{backend:?}");
        let recent = store.model_calls(&store::ExecutionQuery { limit: 5, ..Default::default() }).await.unwrap();
        assert_eq!(recent.len(), 1, "{backend:?}");
        assert_eq!((recent[0].model.as_str(), recent[0].fallbacks.len()), ("m", 1), "{backend:?}");
        assert!(store.model_calls(&store::ExecutionQuery { limit: 5, ..bob }).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_hold_is_all_or_nothing_and_ends_with_its_release() {
    for backend in BACKENDS {
        let (store, _) = replicas(backend).await;
        let team = SpendScope::Team("t".into());
        // 100 nano-dollars a day for alice, 50 tokens a month for her team.
        let lines = vec![line(alice(), 0, Some(100), None), line(team.clone(), 0, None, Some(50))];
        let first = hold(lines.clone(), 60, 20);
        assert_eq!(store.reserve(&first).await.unwrap(), None, "{backend:?}");
        // Fits the USD line, passes the token line: nothing is held.
        let refused = store.reserve(&hold(lines.clone(), 10, 40)).await.unwrap().expect("refused");
        assert_eq!((refused.line, refused.tokens, refused.balance.used_tokens), (1, true, 20), "{backend:?}");
        let balances = store.balances(&lines).await.unwrap();
        assert_eq!(
            balances.iter().map(|b| (b.used_nanos, b.used_tokens)).collect::<Vec<_>>(),
            [(60, 20), (60, 20)],
            "{backend:?}"
        );
        let refused = store.reserve(&hold(lines.clone(), 50, 1)).await.unwrap().expect("refused");
        assert_eq!((refused.line, refused.tokens, refused.balance.used_nanos), (0, false, 60), "{backend:?}");
        // The call cost 30 (not the 60 held): committed with its release, the spend
        // replaces the hold.
        store
            .append(
                vec![model_call("alice", "t", store::now_ms(), 30e-9, (5, 5)), Record::Release(first.id.clone())],
                Vec::new(),
            )
            .await
            .unwrap();
        let balances = store.balances(&lines).await.unwrap();
        assert_eq!((balances[0].used_nanos, balances[1].used_tokens), (30, 10), "{backend:?}");
        assert_eq!(store.reserve(&hold(lines.clone(), 70, 40)).await.unwrap(), None, "{backend:?}");
        // A hold never released stops counting once it expires.
        let mut stale = hold(vec![line(SpendScope::User("carol".into()), 0, Some(100), None)], 100, 0);
        stale.expires_at_ms = store::now_ms() + 300;
        assert_eq!(store.reserve(&stale).await.unwrap(), None);
        let mut again = hold(stale.lines.clone(), 100, 0);
        assert!(store.reserve(&again).await.unwrap().is_some(), "{backend:?}: the live hold counts");
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        again.id = uuid::Uuid::now_v7().to_string();
        assert_eq!(store.reserve(&again).await.unwrap(), None, "{backend:?}: the expired hold stopped counting");
    }
}

#[tokio::test]
async fn spend_counters_start_from_the_ledger_and_count_only_their_period() {
    for backend in BACKENDS {
        let (store, _) = replicas(backend).await;
        let day = 10 * 86_400_000;
        store
            .append(
                vec![
                    model_call("alice", "t", day - 1, 5e-9, (1, 1)),
                    model_call("alice", "t", day + 1, 7e-9, (2, 2)),
                    model_call("bob", "t", day + 2, 11e-9, (3, 3)),
                ],
                Vec::new(),
            )
            .await
            .unwrap();
        let lines = vec![line(alice(), day, Some(1_000), None), line(SpendScope::Team("t".into()), day, None, None)];
        let balances = store.balances(&lines).await.unwrap();
        assert_eq!((balances[0].used_nanos, balances[0].used_tokens), (7, 4), "{backend:?}");
        assert_eq!((balances[1].used_nanos, balances[1].used_tokens), (18, 10), "{backend:?}");
        // From then on each append adds to the counters it falls under.
        store.append(vec![model_call("bob", "t", day + 3, 1e-9, (1, 0))], Vec::new()).await.unwrap();
        let balances = store.balances(&lines).await.unwrap();
        assert_eq!((balances[0].used_nanos, balances[1].used_nanos), (7, 19), "{backend:?}");
    }
}

/// 100 calls at once, split between two replicas, against a budget that covers 10:
/// exactly 10 are held, whichever replica they reached.
#[tokio::test]
async fn concurrent_holds_on_two_replicas_never_pass_the_budget() {
    for backend in BACKENDS {
        let (first, second) = replicas(backend).await;
        let lines = vec![line(alice(), 0, Some(1_000), None), line(SpendScope::Team("t".into()), 0, Some(5_000), None)];
        let attempts = (0..100).map(|i| {
            let store = if i % 2 == 0 { first.clone() } else { second.clone() };
            let hold = hold(lines.clone(), 100, 1);
            tokio::spawn(async move { store.reserve(&hold).await.unwrap().is_none() })
        });
        let held = futures::future::join_all(attempts).await.into_iter().filter(|held| *held.as_ref().unwrap()).count();
        assert_eq!(held, 10, "{backend:?}");
        let balances = first.balances(&lines).await.unwrap();
        assert_eq!(balances[0].used_nanos, 1_000, "{backend:?}");
    }
}

#[tokio::test]
async fn a_rate_bucket_is_shared_by_replicas_and_says_when_to_retry() {
    for backend in BACKENDS {
        let (first, second) = replicas(backend).await;
        for i in 0..6 {
            let store = if i % 2 == 0 { &first } else { &second };
            assert_eq!(store.take("alice", "executions", 6).await.unwrap(), Ok(()), "{backend:?}: take {i}");
        }
        let retry = second.take("alice", "executions", 6).await.unwrap().unwrap_err();
        assert!((1..=10).contains(&retry), "{backend:?}: retry in {retry} s");
        assert_eq!(first.take("bob", "executions", 6).await.unwrap(), Ok(()), "{backend:?}");
        assert_eq!(first.take("alice", "model_calls", 6).await.unwrap(), Ok(()), "{backend:?}");
        assert!(first.take("carol", "executions", 0).await.unwrap().is_err(), "{backend:?}");
    }
}

/// Replicas starting together on an empty database each apply the migrations once.
#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let config = fresh(Backend::Postgres).await;
    let opened = futures::future::join_all((0..4).map(|_| store::open(&config))).await;
    for store in opened {
        store.expect("every replica starts");
    }
    let StoreConfig::Postgres { url, .. } = &config else { unreachable!() };
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = client.query_one("SELECT count(*), max(version) FROM schema_migrations", &[]).await.unwrap();
    let (applied, latest): (i64, i64) = (row.get(0), row.get(1));
    assert!(latest >= 2 && applied == latest, "{applied} migrations applied for version {latest}");
}

/// A session image as stores kept it before pages had rows of their own: `SGMI`,
/// version 1, size, count, then each page's index and bytes.
fn legacy_image(size: u64, pages: &[(u32, u8)]) -> Vec<u8> {
    let mut image = b"SGMI".to_vec();
    image.extend_from_slice(&1u32.to_le_bytes());
    image.extend_from_slice(&size.to_le_bytes());
    image.extend_from_slice(&(pages.len() as u32).to_le_bytes());
    for (page, fill) in pages {
        image.extend_from_slice(&page.to_le_bytes());
        image.extend_from_slice(&[*fill; store::PAGE]);
    }
    image
}

/// A store written before files were kept in chunks: each file's bytes become its
/// chunks when it is opened, and read back the same.
#[tokio::test]
async fn stored_workspace_files_become_chunks_on_upgrade() {
    for backend in BACKENDS {
        let config = fresh(backend).await;
        let now = store::now_ms();
        let store = open(&config).await;
        store.create_session(&session("old", "alice", now, 60_000)).await.unwrap();
        drop(store);
        let big: Vec<u8> = (0..store::FILE_CHUNK + 10).map(|i| (i % 7) as u8).collect();
        // Back to the schema before chunks, holding the files as they were kept then.
        match &config {
            StoreConfig::Sqlite { path, .. } => {
                let db = rusqlite::Connection::open(path).unwrap();
                db.execute_batch(
                    "DROP TABLE session_file_chunks;
                     DROP TABLE console_sessions;
                     DROP TABLE mount_writes;
                     ALTER TABLE session_files DROP COLUMN version;
                     DROP INDEX executions_agent_session;
                     DROP INDEX model_calls_agent_session;
                     ALTER TABLE executions DROP COLUMN agent_session;
                     ALTER TABLE model_calls DROP COLUMN agent_session;
                     DROP TABLE paused_executions;
                     DROP TABLE approvals;
                     DROP TABLE session_patches;
                     ALTER TABLE sessions DROP COLUMN patches;
                     ALTER TABLE sessions DROP COLUMN patch_bytes;
                     ALTER TABLE session_pages DROP COLUMN seq;
                     DROP INDEX api_keys_owner;
                     ALTER TABLE api_keys DROP COLUMN teams;
                     ALTER TABLE api_keys DROP COLUMN expires_at_ms;
                     ALTER TABLE api_keys DROP COLUMN owner;
                     DELETE FROM schema_migrations WHERE version >= 12;
                     INSERT INTO session_files (session_id, path, dir, size, data) VALUES ('old', 'd', 1, 0, NULL);
                     INSERT INTO session_files (session_id, path, dir, size, data) VALUES ('old', 'd/e', 0, 0, x'');",
                )
                .unwrap();
                db.execute(
                    "INSERT INTO session_files (session_id, path, dir, size, data) VALUES ('old', 'd/big', 0, ?1, ?2)",
                    rusqlite::params![big.len() as i64, big],
                )
                .unwrap();
            }
            StoreConfig::Postgres { url, .. } => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                client
                    .batch_execute(
                        "DROP TABLE session_file_chunks;
                         DROP TABLE console_sessions;
                         DROP TABLE mount_writes;
                         ALTER TABLE session_files DROP COLUMN version;
                         DROP FUNCTION sandgate_append_with_draws;
                         DROP FUNCTION sandgate_append_with_agents;
                         DROP INDEX executions_agent_session;
                         DROP INDEX model_calls_agent_session;
                         ALTER TABLE executions DROP COLUMN agent_session;
                         ALTER TABLE model_calls DROP COLUMN agent_session;
                         DROP TABLE paused_executions;
                         DROP TABLE approvals;
                         DROP TABLE session_patches;
                         ALTER TABLE sessions DROP COLUMN patches;
                         ALTER TABLE sessions DROP COLUMN patch_bytes;
                         ALTER TABLE session_pages DROP COLUMN seq;
                         DROP INDEX api_keys_owner;
                         ALTER TABLE api_keys DROP COLUMN teams;
                         ALTER TABLE api_keys DROP COLUMN expires_at_ms;
                         ALTER TABLE api_keys DROP COLUMN owner;
                         DELETE FROM schema_migrations WHERE version >= 9;
                         INSERT INTO session_files (session_id, path, dir, size, data) VALUES ('old', 'd', true, 0, NULL);
                         INSERT INTO session_files (session_id, path, dir, size, data) VALUES ('old', 'd/e', false, 0, '');",
                    )
                    .await
                    .unwrap();
                client
                    .execute(
                        "INSERT INTO session_files (session_id, path, dir, size, data) VALUES ('old', 'd/big', false, $1, $2)",
                        &[&(big.len() as i64), &big],
                    )
                    .await
                    .unwrap();
            }
        }
        let store = open(&config).await;
        let files = store.session_files("old", true).await.unwrap();
        let read: Vec<(&str, bool, &[u8])> =
            files.iter().map(|f| (f.path.as_str(), f.dir, f.data.as_slice())).collect();
        assert_eq!(read, [("d", true, &[][..]), ("d/big", false, &big[..]), ("d/e", false, &[][..])], "{backend:?}");
        let file = store.session_file("old", "d/big").await.unwrap().unwrap();
        assert_eq!(file.chunks(), 2);
        let last = store.file_chunk("old", "d/big", file.version, 1).await.unwrap().unwrap();
        assert_eq!(last.len(), 10, "{backend:?}");
    }
}

/// A store written before session memories were kept page by page: its images
/// become pages when it is opened, and its sessions go on from them.
#[tokio::test]
async fn a_stored_session_image_becomes_pages_on_upgrade() {
    for backend in BACKENDS {
        let config = fresh(backend).await;
        let now = store::now_ms();
        let store = open(&config).await;
        store.create_session(&session("old", "alice", now, 60_000)).await.unwrap();
        drop(store);
        let image = legacy_image(1 << 20, &[(2, 5), (7, 6)]);
        // Back to the schema before the pages, holding the image as it was kept then.
        match &config {
            StoreConfig::Sqlite { path, .. } => {
                let db = rusqlite::Connection::open(path).unwrap();
                db.execute_batch(
                    "CREATE TABLE session_images (session_id TEXT PRIMARY KEY, image BLOB NOT NULL);
                     DROP TABLE session_pages;
                     ALTER TABLE sessions DROP COLUMN memory_size;
                     DROP TABLE session_file_chunks;
                     DROP TABLE console_sessions;
                     DROP TABLE mount_writes;
                     ALTER TABLE session_files DROP COLUMN version;
                     DROP INDEX executions_agent_session;
                     DROP INDEX model_calls_agent_session;
                     ALTER TABLE executions DROP COLUMN agent_session;
                     ALTER TABLE model_calls DROP COLUMN agent_session;
                     DROP TABLE paused_executions;
                     DROP TABLE approvals;
                     DROP TABLE session_patches;
                     ALTER TABLE sessions DROP COLUMN patches;
                     ALTER TABLE sessions DROP COLUMN patch_bytes;
                     DROP INDEX api_keys_owner;
                     ALTER TABLE api_keys DROP COLUMN teams;
                     ALTER TABLE api_keys DROP COLUMN expires_at_ms;
                     ALTER TABLE api_keys DROP COLUMN owner;
                     DELETE FROM schema_migrations WHERE version >= 11;",
                )
                .unwrap();
                db.execute("INSERT INTO session_images VALUES ('old', ?1)", [&image]).unwrap();
                db.execute("UPDATE sessions SET image_bytes = ?1 WHERE id = 'old'", [image.len() as i64]).unwrap();
            }
            StoreConfig::Postgres { url, .. } => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                client
                    .batch_execute(
                        "ALTER TABLE sessions ADD COLUMN image BYTEA;
                         DROP TABLE session_pages;
                         ALTER TABLE sessions DROP COLUMN memory_size;
                         DROP TABLE session_file_chunks;
                         DROP TABLE console_sessions;
                         DROP TABLE mount_writes;
                         ALTER TABLE session_files DROP COLUMN version;
                         DROP FUNCTION sandgate_append_with_draws;
                         DROP FUNCTION sandgate_append_with_agents;
                         DROP INDEX executions_agent_session;
                         DROP INDEX model_calls_agent_session;
                         ALTER TABLE executions DROP COLUMN agent_session;
                         ALTER TABLE model_calls DROP COLUMN agent_session;
                         DROP TABLE paused_executions;
                         DROP TABLE approvals;
                         DROP TABLE session_patches;
                         ALTER TABLE sessions DROP COLUMN patches;
                         ALTER TABLE sessions DROP COLUMN patch_bytes;
                         DROP INDEX api_keys_owner;
                         ALTER TABLE api_keys DROP COLUMN teams;
                         ALTER TABLE api_keys DROP COLUMN expires_at_ms;
                         ALTER TABLE api_keys DROP COLUMN owner;
                         DELETE FROM schema_migrations WHERE version >= 8;",
                    )
                    .await
                    .unwrap();
                client.execute("UPDATE sessions SET image = $1 WHERE id = 'old'", &[&image]).await.unwrap();
            }
        }
        let store = open(&config).await;
        let memory = store.session_memory("old").await.unwrap();
        assert_eq!(
            memory,
            store::StoredMemory { size: 1 << 20, pages: vec![(2, vec![5; store::PAGE]), (7, vec![6; store::PAGE])] },
            "{backend:?}"
        );
        let session = store.session("old", now).await.unwrap().unwrap();
        assert_eq!(session.image_bytes, 2 * store::PAGE as u64, "{backend:?}");
        // And it goes on from there.
        assert!(matches!(
            store.lease_session("old", &owner("alice"), "next", now + 5_000, now).await.unwrap(),
            store::Lease::Taken { .. }
        ));
        let page = vec![9u8; store::PAGE];
        let write = store::MemoryWrite {
            size: 1 << 20,
            pages: vec![(7, &page[..])],
            patch: &[],
            bytes: 2 * store::PAGE as u64,
            cap: None,
        };
        assert_eq!(
            store.return_session("old", "next", Some(&write), Some(now + 1), &[]).await.unwrap(),
            store::Returned::Done
        );
        assert_eq!(store.session_memory("old").await.unwrap().pages[1], (7, page), "{backend:?}");
    }
}

#[tokio::test]
async fn keys_are_created_once_by_name_listed_and_revoked() {
    use sandgate::auth::{digest, KeyEntry, Role};
    for backend in BACKENDS {
        let (store, other) = replicas(backend).await;
        let key = |name: &str, secret: &str| store::StoredKey {
            entry: KeyEntry::operator(name.into(), "alice".into(), "platform".into(), Role::Admin, digest(secret)),
            created_at_ms: 1_000,
        };
        let created = store::KeyCreated::Created;
        assert_eq!(store.create_key(&key("laptop", "sg_one"), None).await.unwrap(), created, "{backend:?}");
        assert_eq!(
            store.create_key(&key("laptop", "sg_two"), None).await.unwrap(),
            store::KeyCreated::NameTaken,
            "{backend:?}: the name is taken"
        );
        assert_eq!(store.create_key(&key("ci", "sg_three"), None).await.unwrap(), created);
        let listed = other.keys().await.unwrap();
        assert_eq!(listed, [key("ci", "sg_three"), key("laptop", "sg_one")], "{backend:?}");
        assert!(other.revoke_key("laptop").await.unwrap(), "{backend:?}");
        assert!(!store.revoke_key("laptop").await.unwrap(), "{backend:?}: already revoked");
        assert_eq!(store.keys().await.unwrap(), [key("ci", "sg_three")], "{backend:?}");
        // A revoked key's name stays reserved: a new key never takes the name an old
        // one signed in with.
        assert_eq!(store.create_key(&key("laptop", "sg_four"), None).await.unwrap(), store::KeyCreated::NameTaken);
        assert_eq!(store.keys().await.unwrap().len(), 1, "{backend:?}");
    }
}

#[tokio::test]
async fn personal_keys_keep_their_teams_expire_and_are_limited_per_owner_across_replicas() {
    use sandgate::auth::{digest, KeyEntry, Role};
    for backend in BACKENDS {
        let (store, other) = replicas(backend).await;
        let now = sandgate::time::now_ms();
        let key = |name: &str, owner: &str, expires_at_ms: i64| store::StoredKey {
            entry: KeyEntry {
                name: name.into(),
                user: format!("{owner}@example.com"),
                team: "platform".into(),
                teams: vec!["platform".into(), "data".into()],
                role: Role::Member,
                hash: digest(name),
                expires_at_ms: Some(expires_at_ms),
                owner: Some(format!("https://idp.example#{owner}")),
            },
            created_at_ms: now,
        };
        // Six requests for alice at once, on two replicas, with a limit of three.
        let tries: Vec<_> = (0..6)
            .map(|i| {
                let key = key(&format!("alice-{i}"), "alice", now + 60_000);
                let store = if i % 2 == 0 { store.clone() } else { other.clone() };
                async move { store.create_key(&key, Some(3)).await.unwrap() }
            })
            .collect();
        let outcomes = futures::future::join_all(tries).await;
        let created = outcomes.iter().filter(|o| **o == store::KeyCreated::Created).count();
        assert_eq!(created, 3, "{backend:?}: {outcomes:?}");
        assert!(outcomes.iter().all(|o| matches!(o, store::KeyCreated::Created | store::KeyCreated::OwnerFull)));
        // Another owner has a limit of their own.
        let bob = key("bob-1", "bob", now + 60_000);
        assert_eq!(store.create_key(&bob, Some(3)).await.unwrap(), store::KeyCreated::Created, "{backend:?}");
        let listed = other.keys().await.unwrap();
        assert_eq!(listed.len(), 4, "{backend:?}");
        let found = listed.iter().find(|k| k.entry.name == "bob-1").unwrap();
        assert_eq!(found, &bob, "{backend:?}: teams, expiry and owner come back as written");
        // An expired key is not live: it is not listed and no longer counts.
        let expired = key("carol-old", "carol", now - 1);
        assert_eq!(store.create_key(&expired, Some(1)).await.unwrap(), store::KeyCreated::Created);
        assert!(!store.keys().await.unwrap().iter().any(|k| k.entry.name == "carol-old"), "{backend:?}");
        let fresh = key("carol-new", "carol", now + 60_000);
        assert_eq!(store.create_key(&fresh, Some(1)).await.unwrap(), store::KeyCreated::Created, "{backend:?}");
        // A revoked key no longer counts either.
        let alice = listed.iter().find(|k| k.entry.owner.as_deref() == Some("https://idp.example#alice")).unwrap();
        assert!(store.revoke_key(&alice.entry.name).await.unwrap());
        let again = key("alice-again", "alice", now + 60_000);
        assert_eq!(store.create_key(&again, Some(3)).await.unwrap(), store::KeyCreated::Created, "{backend:?}");
    }
}

/// The principal [`session`] records as a session's owner.
fn owner(user: &str) -> store::Owner {
    store::Owner { user: user.into(), team: "t".into(), key: "k".into() }
}

fn session(id: &str, user: &str, now: i64, ttl_ms: i64) -> store::SessionRecord {
    store::SessionRecord {
        id: id.into(),
        user: user.into(),
        team: "t".into(),
        key: "k".into(),
        language: sandgate::request::Language::Javascript,
        created_at_ms: now,
        used_at_ms: now,
        ttl_ms,
        executions: 0,
        image_bytes: 0,
        files: 0,
        file_bytes: 0,
    }
}

#[tokio::test]
async fn a_session_runs_one_execution_at_a_time_and_keeps_its_memory_pages() {
    use store::Lease;
    for backend in BACKENDS {
        let (store, other) = replicas(backend).await;
        let now = store::now_ms();
        store.create_session(&session("s1", "alice", now, 60_000)).await.unwrap();
        store.create_session(&session("s2", "alice", now + 1, 60_000)).await.unwrap();
        store.create_session(&session("s3", "bob", now, 60_000)).await.unwrap();
        let listed: Vec<String> = other.sessions("alice", now).await.unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(listed, ["s1", "s2"], "{backend:?}");

        // Another user's session is missing to them, busy or not.
        assert_eq!(store.lease_session("s3", &owner("alice"), "x", now + 5_000, now).await.unwrap(), Lease::Missing);
        // The first execution finds no memory; a second one meanwhile finds it busy.
        let Lease::Taken { session: taken } =
            store.lease_session("s1", &owner("alice"), "run-1", now + 5_000, now).await.unwrap()
        else {
            panic!("{backend:?}: the session is free");
        };
        assert_eq!((taken.user.as_str(), taken.executions), ("alice", 0));
        assert_eq!(store.session_memory("s1").await.unwrap(), store::StoredMemory::default(), "{backend:?}");
        assert_eq!(
            other.lease_session("s1", &owner("alice"), "run-2", now + 5_000, now).await.unwrap(),
            Lease::Busy { until_ms: now + 5_000 }
        );
        assert_eq!(
            other.lease_session("s1", &owner("bob"), "run-2", now + 5_000, now).await.unwrap(),
            Lease::Missing,
            "{backend:?}: not even busy to another user"
        );
        let other_key = store::Owner { key: "another key".into(), ..owner("alice") };
        assert_eq!(
            other.lease_session("s1", &other_key, "run-2", now + 5_000, now).await.unwrap(),
            Lease::Missing,
            "{backend:?}: nor to the same user with another key"
        );
        let other_team = store::Owner { team: "another team".into(), ..owner("alice") };
        assert_eq!(
            other.lease_session("s1", &other_team, "run-2", now + 5_000, now).await.unwrap(),
            Lease::Missing,
            "{backend:?}: nor in another team"
        );
        let (one, two, three) = (vec![1u8; store::PAGE], vec![2u8; store::PAGE], vec![3u8; store::PAGE]);
        let first = store::MemoryWrite {
            size: 1 << 20,
            pages: vec![(3, &one[..]), (9, &two[..])],
            patch: &[],
            bytes: 8192,
            cap: None,
        };
        assert_eq!(
            store.return_session("s1", "run-1", Some(&first), Some(now + 10), &[]).await.unwrap(),
            store::Returned::Done,
            "{backend:?}"
        );
        assert_eq!(
            store.return_session("s1", "run-1", None, Some(now + 11), &[]).await.unwrap(),
            store::Returned::NotHeld,
            "{backend:?}: the lease is over"
        );

        // The next execution, on any replica, starts from those pages; its pages are
        // written over them, page by page.
        let Lease::Taken { session: taken } =
            other.lease_session("s1", &owner("alice"), "run-3", now + 5_000, now).await.unwrap()
        else {
            panic!("{backend:?}: the session is free again");
        };
        assert_eq!((taken.executions, taken.image_bytes), (1, 8192), "{backend:?}");
        let read = other.session_memory("s1").await.unwrap();
        assert_eq!(read, store::StoredMemory { size: 1 << 20, pages: vec![(3, one.clone()), (9, two.clone())] });
        let next = store::MemoryWrite {
            size: 2 << 20,
            pages: vec![(1, &three[..]), (9, &one[..])],
            patch: &[],
            bytes: 12_288,
            cap: None,
        };
        assert_eq!(
            other.return_session("s1", "run-3", Some(&next), Some(now + 15), &[]).await.unwrap(),
            store::Returned::Done
        );
        let read = store.session_memory("s1").await.unwrap();
        assert_eq!(
            read,
            store::StoredMemory { size: 2 << 20, pages: vec![(1, three.clone()), (3, one.clone()), (9, one.clone())] },
            "{backend:?}"
        );
        // A failed execution returns no pages: the last ones stay.
        assert!(matches!(
            store.lease_session("s1", &owner("alice"), "run-4", now + 5_000, now).await.unwrap(),
            Lease::Taken { .. }
        ));
        assert_eq!(
            store.return_session("s1", "run-4", None, Some(now + 20), &[]).await.unwrap(),
            store::Returned::Done
        );
        assert_eq!(other.session_memory("s1").await.unwrap(), read, "{backend:?}");
        let kept = store.session("s1", now + 20).await.unwrap().unwrap();
        assert_eq!((kept.executions, kept.image_bytes, kept.used_at_ms), (3, 12_288, now + 20), "{backend:?}");
        assert_eq!(other.session_totals("alice", now + 20).await.unwrap(), (2, 12_288), "{backend:?}");
        assert_eq!(other.session_totals("carol", now + 20).await.unwrap(), (0, 0), "{backend:?}");
        // A lease given back with no execution run (it was refused) changes nothing.
        assert!(matches!(
            other.lease_session("s1", &owner("alice"), "refused", now + 5_000, now + 30).await.unwrap(),
            Lease::Taken { .. }
        ));
        assert_eq!(other.return_session("s1", "refused", None, None, &[]).await.unwrap(), store::Returned::Done);
        let kept = store.session("s1", now + 40).await.unwrap().unwrap();
        assert_eq!((kept.executions, kept.image_bytes, kept.used_at_ms), (3, 12_288, now + 20), "{backend:?}");

        // A lease whose holder died ends at its deadline.
        assert!(matches!(
            store.lease_session("s2", &owner("alice"), "dead", now + 50, now).await.unwrap(),
            Lease::Taken { .. }
        ));
        assert!(matches!(
            other.lease_session("s2", &owner("alice"), "next", now + 5_000, now + 10).await.unwrap(),
            Lease::Busy { .. }
        ));
        assert!(matches!(
            other.lease_session("s2", &owner("alice"), "next", now + 5_000, now + 60).await.unwrap(),
            Lease::Taken { .. }
        ));

        // Ended or expired sessions are gone.
        assert!(store.end_session("s3").await.unwrap(), "{backend:?}");
        assert!(!store.end_session("s3").await.unwrap());
        assert_eq!(store.lease_session("s3", &owner("bob"), "x", now + 5_000, now).await.unwrap(), Lease::Missing);
        let expires = kept.expires_at_ms();
        assert!(store.session("s1", expires).await.unwrap().is_none(), "{backend:?}: idle past its TTL");
        assert_eq!(
            store.lease_session("s1", &owner("alice"), "late", expires + 5_000, expires).await.unwrap(),
            Lease::Missing
        );
        assert!(store.sessions("alice", expires + 70_000).await.unwrap().is_empty());
        assert!(store.end_session("s1").await.unwrap());
        assert_eq!(other.session_memory("s1").await.unwrap(), store::StoredMemory::default(), "{backend:?}");
    }
}

#[tokio::test]
async fn small_changes_go_as_patches_that_apply_in_order_and_fold_into_the_pages() {
    use store::{patch, Giveback, KeptMemory, Lease, MemoryWrite, Returned, StoredMemory};
    for backend in BACKENDS {
        let config = fresh(backend).await;
        let store = open(&config).await;
        let other = match backend {
            Backend::Sqlite => store.clone(),
            Backend::Postgres => open(&config).await,
        };
        let now = store::now_ms();
        store.create_session(&session("p1", "alice", now, 600_000)).await.unwrap();
        // What the session's memory holds, page by page, as a replica would see it.
        let mut expected = vec![(3u32, vec![1u8; store::PAGE]), (9, vec![2u8; store::PAGE])];
        let lease = |n: usize| format!("run-{n}");
        let take = |n: usize| {
            let store = if n.is_multiple_of(2) { store.clone() } else { other.clone() };
            async move {
                let taken = store.lease_session("p1", &owner("alice"), &lease(n), now + 60_000, now).await.unwrap();
                assert!(matches!(taken, Lease::Taken { .. }), "{backend:?}: execution {n}");
            }
        };
        take(0).await;
        let first = MemoryWrite {
            size: 1 << 20,
            pages: expected.iter().map(|(page, bytes)| (*page, &bytes[..])).collect(),
            patch: &[],
            bytes: 8192,
            cap: None,
        };
        assert_eq!(store.return_session("p1", &lease(0), Some(&first), Some(now), &[]).await.unwrap(), Returned::Done);
        // Past the count at which patches fold into the pages, twice: each execution
        // changes a few bytes of both pages, and every seventh writes page 9 whole
        // over the patches before it (which must then not apply to it).
        for n in 1..=2 * patch::COMPACT_COUNT as usize + 5 {
            take(n).await;
            let mut patch = Vec::new();
            let mut whole = Vec::new();
            for (page, bytes) in &mut expected {
                let old = bytes.clone();
                if *page == 9 && n.is_multiple_of(7) {
                    bytes.fill(n as u8);
                    whole.push((*page, bytes.clone()));
                    continue;
                }
                bytes[n % store::PAGE] = n as u8;
                bytes[(n * 97) % store::PAGE] ^= 0x5a;
                assert!(patch::diff(*page, &old, bytes, &mut patch));
            }
            let memory = KeptMemory { size: 1 << 20, pages: whole, patch, bytes: 8192 };
            let ran_at_ms = now + n as i64;
            if n.is_multiple_of(3) {
                // Given back in the ledger's transaction.
                let giveback = Giveback {
                    id: "p1".into(),
                    lease: lease(n),
                    memory: Some(memory),
                    ran_at_ms,
                    files: Vec::new(),
                    if_returned: Vec::new(),
                    otherwise: Vec::new(),
                };
                let answers = store.append(Vec::new(), vec![giveback]).await.unwrap();
                assert!(matches!(answers[..], [Ok(Returned::Done)]), "{backend:?}: {answers:?}");
            } else {
                let write = memory.write(None);
                let returned = other.return_session("p1", &lease(n), Some(&write), Some(ran_at_ms), &[]).await;
                assert_eq!(returned.unwrap(), Returned::Done, "{backend:?}");
            }
            let read = if n.is_multiple_of(2) { other.session_memory("p1") } else { store.session_memory("p1") };
            assert_eq!(
                read.await.unwrap(),
                StoredMemory { size: 1 << 20, pages: expected.clone() },
                "{backend:?}: after execution {n}"
            );
        }
        let kept = store.session("p1", now + 1_000).await.unwrap().unwrap();
        assert_eq!((kept.executions, kept.image_bytes), (2 * patch::COMPACT_COUNT as u64 + 6, 8192), "{backend:?}");
        // They were folded: fewer are kept than the count that folds them.
        let patches = match &config {
            StoreConfig::Sqlite { path, .. } => {
                let db = rusqlite::Connection::open(path).unwrap();
                db.query_row("SELECT count(*) FROM session_patches", [], |row| row.get::<_, i64>(0)).unwrap()
            }
            StoreConfig::Postgres { url, .. } => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                client.query_one("SELECT count(*) FROM session_patches", &[]).await.unwrap().get::<_, i64>(0)
            }
        };
        assert!((1..patch::COMPACT_COUNT).contains(&patches), "{backend:?}: {patches} patches kept");
        // A session that ends takes its patches with it.
        assert!(store.end_session("p1").await.unwrap());
        assert_eq!(other.session_memory("p1").await.unwrap(), StoredMemory::default(), "{backend:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_waits_for_another_process_writing_the_sqlite_file() {
    use store::Lease;
    let config = fresh(Backend::Sqlite).await;
    let store = open(&config).await;
    let now = store::now_ms();
    store.create_session(&session("w1", "alice", now, 60_000)).await.unwrap();
    // Another connection (the command-line tool, say) holds the write lock for a while.
    let StoreConfig::Sqlite { path, .. } = &config else { unreachable!() };
    let other = rusqlite::Connection::open(path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let released = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        other.execute_batch("COMMIT").unwrap();
    });
    let started = std::time::Instant::now();
    let taken = store.lease_session("w1", &owner("alice"), "run-1", now + 5_000, now).await.unwrap();
    assert!(matches!(taken, Lease::Taken { .. }), "the lease waits for the lock, it does not fail: {taken:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250), "it took the lock only once it was free");
    released.join().unwrap();
}

#[tokio::test]
async fn sessions_given_back_with_the_ledgers_records_commit_with_them_each_on_its_own() {
    use store::{FileChange, Giveback, KeptMemory, Lease, Returned, StoredFile};
    for backend in BACKENDS {
        let (store, other) = replicas(backend).await;
        let now = store::now_ms();
        for id in ["g1", "g2", "g3"] {
            store.create_session(&session(id, "alice", now, 60_000)).await.unwrap();
            let (alice, lease) = (owner("alice"), format!("run-{id}"));
            let taken = store.lease_session(id, &alice, &lease, now + 5_000, now).await.unwrap();
            assert!(matches!(taken, Lease::Taken { .. }), "{backend:?}");
        }
        let page = vec![4u8; store::PAGE];
        let giveback = |id: &str, lease: &str, files: Vec<FileChange>, event: &'static str| Giveback {
            id: id.into(),
            lease: lease.into(),
            memory: Some(KeptMemory { size: 1 << 20, pages: vec![(5, page.clone())], patch: Vec::new(), bytes: 4_096 }),
            ran_at_ms: now + 10,
            files,
            if_returned: vec![session_event(event, now + 10, 4_096)],
            otherwise: vec![session_event("files_written", now + 10, 7)],
        };
        let put = FileChange::Put(StoredFile::file("kept.txt".into(), b"kept".to_vec()));
        // A file the store cannot read fails that return alone, after its pages and
        // its session's row were written: they are undone, the rest commits.
        let missing = FileChange::Spooled { path: "lost".into(), size: 3, from: temp_dir("giveback").join("none") };
        let answers = store
            .append(
                vec![execution("e-g", "alice", now, 9)],
                vec![
                    giveback("g1", "run-g1", vec![put], "saved"),
                    giveback("g2", "someone else's", Vec::new(), "saved"),
                    giveback("g3", "run-g3", vec![missing], "saved"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(answers.len(), 3, "{backend:?}");
        assert_eq!(answers[0].as_ref().ok(), Some(&Returned::Done), "{backend:?}");
        assert_eq!(answers[1].as_ref().ok(), Some(&Returned::NotHeld), "{backend:?}");
        assert!(answers[2].is_err(), "{backend:?}: {:?}", answers[2]);

        // The one given back has its pages, its file and its use counted; the others
        // are as they were, and still held by their leases.
        let g1 = other.session("g1", now + 10).await.unwrap().unwrap();
        assert_eq!((g1.executions, g1.image_bytes, g1.used_at_ms, g1.files), (1, 4_096, now + 10, 1), "{backend:?}");
        let memory = other.session_memory("g1").await.unwrap();
        assert_eq!(memory, store::StoredMemory { size: 1 << 20, pages: vec![(5, page.clone())] }, "{backend:?}");
        for id in ["g2", "g3"] {
            let kept = other.session(id, now + 10).await.unwrap().unwrap();
            assert_eq!((kept.executions, kept.image_bytes, kept.files), (0, 0, 0), "{backend:?}: {id}");
            assert_eq!(other.session_memory(id).await.unwrap(), store::StoredMemory::default(), "{backend:?}");
            let busy = other.lease_session(id, &owner("alice"), "next", now + 5_000, now + 20).await.unwrap();
            assert!(matches!(busy, Lease::Busy { .. }), "{backend:?}: {id} is still leased");
        }
        // The records went in: the execution, the saved state of the one given back,
        // and the other events of the two that were not.
        let rows = other.usage(&UsageQuery::default()).await.unwrap();
        let alice = rows.iter().find(|row| row.group == "alice").expect("alice's row");
        assert_eq!(
            (alice.executions, alice.session_state_bytes, alice.file_bytes_written),
            (1, 4_096, 14),
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn workspace_files_change_with_the_lease_and_go_with_the_session() {
    use store::{FileChange, Lease, StoredFile};
    for backend in BACKENDS {
        let (store, other) = replicas(backend).await;
        let now = store::now_ms();
        store.create_session(&session("w1", "alice", now, 60_000)).await.unwrap();
        store.create_session(&session("w2", "alice", now, 1_000)).await.unwrap();
        let put = |path: &str, data: &[u8]| FileChange::Put(StoredFile::file(path.into(), data.to_vec()));
        let dir = |path: &str| FileChange::Put(StoredFile::dir(path.into()));
        let lease = |id: &'static str, name: &'static str| {
            let store = store.clone();
            async move {
                assert!(matches!(
                    store.lease_session(id, &owner("alice"), name, now + 5_000, now).await.unwrap(),
                    Lease::Taken { .. }
                ));
            }
        };
        lease("w1", "a").await;
        let changes = [dir("d"), dir("d/e"), put("d/e/f.txt", b"hello"), put("g.bin", &[0, 255]), put("dd", b"x")];
        assert_eq!(
            store.return_session("w1", "a", None, Some(now), &changes).await.unwrap(),
            store::Returned::Done,
            "{backend:?}"
        );
        // Only the lease's holder changes files.
        assert_eq!(
            other.return_session("w1", "a", None, Some(now), &[put("late", b"x")]).await.unwrap(),
            store::Returned::NotHeld
        );

        let listed = other.session_files("w1", false).await.unwrap();
        let paths: Vec<(&str, bool, u64, usize)> =
            listed.iter().map(|f| (f.path.as_str(), f.dir, f.size, f.data.len())).collect();
        assert_eq!(
            paths,
            [
                ("d", true, 0, 0),
                ("d/e", true, 0, 0),
                ("d/e/f.txt", false, 5, 0),
                ("dd", false, 1, 0),
                ("g.bin", false, 2, 0)
            ],
            "{backend:?}"
        );
        let read = other.session_file("w1", "g.bin").await.unwrap().unwrap();
        assert_eq!((read.size, read.chunks()), (2, 1), "{backend:?}");
        assert_eq!(other.file_chunk("w1", "g.bin", read.version, 0).await.unwrap().unwrap(), [0, 255], "{backend:?}");
        let shown = other.session("w1", now).await.unwrap().unwrap();
        assert_eq!((shown.files, shown.file_bytes), (5, 8), "{backend:?}");

        // A removal takes what is under the path, and only that (not `dd`).
        lease("w1", "b").await;
        let changes = [FileChange::Remove("d".into()), put("g.bin", b"replaced")];
        assert_eq!(other.return_session("w1", "b", None, Some(now), &changes).await.unwrap(), store::Returned::Done);
        let with_data = store.session_files("w1", true).await.unwrap();
        let paths: Vec<(&str, &[u8])> = with_data.iter().map(|f| (f.path.as_str(), f.data.as_slice())).collect();
        assert_eq!(paths, [("dd", &b"x"[..]), ("g.bin", &b"replaced"[..])], "{backend:?}");
        // A reader of the old version finds it gone rather than reading the new one.
        assert_eq!(store.file_chunk("w1", "g.bin", read.version, 0).await.unwrap(), None, "{backend:?}");
        let shown = store.session("w1", now).await.unwrap().unwrap();
        assert_eq!((shown.files, shown.file_bytes), (2, 9), "{backend:?}");

        // Files end with their session, whether it is ended or expires.
        lease("w2", "c").await;
        assert_eq!(
            store.return_session("w2", "c", None, None, &[put("x", b"x")]).await.unwrap(),
            store::Returned::Done
        );
        assert!(store.end_session("w1").await.unwrap());
        assert!(store.session_files("w1", false).await.unwrap().is_empty(), "{backend:?}");
        store.create_session(&session("w3", "alice", now + 2_000, 60_000)).await.unwrap();
        assert!(store.session_files("w2", false).await.unwrap().is_empty(), "{backend:?}: swept when it expired");
    }
}

#[tokio::test]
async fn large_files_are_kept_and_read_a_chunk_at_a_time() {
    use store::{FileChange, Lease, FILE_CHUNK};
    for backend in BACKENDS {
        let (store, other) = replicas(backend).await;
        let now = store::now_ms();
        store.create_session(&session("big", "alice", now, 60_000)).await.unwrap();
        // An upload spooled to disk goes in a chunk at a time.
        let bytes: Vec<u8> = (0..FILE_CHUNK * 2 + 123).map(|i| (i % 251) as u8).collect();
        let spool = crate::harness::temp_dir("spool").join("upload");
        std::fs::write(&spool, &bytes).unwrap();
        let upload = FileChange::Spooled { path: "data.bin".into(), size: bytes.len() as u64, from: spool };
        assert!(matches!(
            store.lease_session("big", &owner("alice"), "up", now + 5_000, now).await.unwrap(),
            Lease::Taken { .. }
        ));
        assert_eq!(store.return_session("big", "up", None, None, &[upload]).await.unwrap(), store::Returned::Done);
        let file = other.session_file("big", "data.bin").await.unwrap().unwrap();
        assert_eq!((file.size, file.chunks()), (bytes.len() as u64, 3), "{backend:?}");
        let mut read = Vec::new();
        for seq in 0..file.chunks() {
            read.extend(other.file_chunk("big", "data.bin", file.version, seq).await.unwrap().unwrap());
        }
        assert!(read == bytes, "{backend:?}: the chunks make the file");
        assert_eq!(other.file_chunk("big", "data.bin", file.version, 3).await.unwrap(), None);
        let whole = store.session_files("big", true).await.unwrap();
        assert!(whole[0].data == bytes, "{backend:?}: an execution's copy is the whole file");
        assert_eq!(store.session("big", now).await.unwrap().unwrap().file_bytes, bytes.len() as u64);
    }
}

#[tokio::test]
async fn a_users_sessions_stay_under_their_memory_cap_however_many_return_at_once() {
    use store::{Lease, MemoryCap, MemoryWrite, Returned};
    for backend in BACKENDS {
        let (store, other) = replicas(backend).await;
        let now = store::now_ms();
        for id in ["c1", "c2", "c3"] {
            store.create_session(&session(id, "carol", now, 60_000)).await.unwrap();
            let Lease::Taken { .. } = store.lease_session(id, &owner("carol"), id, now + 5_000, now).await.unwrap()
            else {
                panic!("{backend:?}: {id} is free");
            };
        }
        // Three returns of 40 KiB each at once, against a cap of 100 KiB: at most two
        // fit, whichever replica each comes through.
        let page = vec![7u8; store::PAGE];
        let returns = ["c1", "c2", "c3"].map(|id| {
            let store = if id == "c2" { other.clone() } else { store.clone() };
            let page = page.clone();
            async move {
                let pages: Vec<(u32, &[u8])> = (0..10).map(|n| (n, &page[..])).collect();
                let cap = Some(MemoryCap { user: "carol".into(), max_bytes: 100 << 10 });
                let write = MemoryWrite { size: 1 << 20, pages, patch: &[], bytes: 40 << 10, cap };
                store.return_session(id, id, Some(&write), Some(now + 1), &[]).await.unwrap()
            }
        });
        let results = futures::future::join_all(returns).await;
        let done = results.iter().filter(|r| **r == Returned::Done).count();
        assert_eq!(done, 2, "{backend:?}: {results:?}");
        assert!(results.iter().any(|r| matches!(r, Returned::OverCap { total } if *total == 120 << 10)), "{results:?}");
        let (open, bytes) = store.session_totals("carol", now + 2).await.unwrap();
        assert_eq!((open, bytes), (3, 80 << 10), "{backend:?}");
        // The refused one is free again, as it was.
        for id in ["c1", "c2", "c3"] {
            assert!(matches!(
                store.lease_session(id, &owner("carol"), "again", now + 5_000, now + 3).await.unwrap(),
                Lease::Taken { .. }
            ));
        }
    }
}

#[tokio::test]
async fn console_sign_ins_end_on_every_replica_and_when_their_time_is_over() {
    for backend in BACKENDS {
        let (store, other) = replicas(backend).await;
        let now = store::now_ms();
        let signed_in = |id: &str, expires_at_ms: i64| store::ConsoleSession {
            id: id.into(),
            subject: "key:abcd".into(),
            created_at_ms: now,
            expires_at_ms,
        };
        store.create_console_session(&signed_in("one", now + 60_000)).await.unwrap();
        store.create_console_session(&signed_in("two", now + 60_000)).await.unwrap();
        store.create_console_session(&signed_in("short", now + 10)).await.unwrap();
        assert_eq!(other.console_session("one", now).await.unwrap(), Some(signed_in("one", now + 60_000)));
        assert_eq!(other.console_session("short", now + 10).await.unwrap(), None, "{backend:?}: its time is over");
        other.end_console_session("one").await.unwrap();
        assert_eq!(store.console_session("one", now).await.unwrap(), None, "{backend:?}: signed out everywhere");
        assert!(store.console_session("two", now).await.unwrap().is_some(), "{backend:?}: only that one");
        assert_eq!(store.console_session("nobody", now).await.unwrap(), None);
    }
}

#[tokio::test]
async fn mount_writes_stay_within_each_principals_daily_quota_across_replicas() {
    for backend in BACKENDS {
        let (store, other) = replicas(backend).await;
        let day = 86_400_000 * 20_000;
        let alice = owner("alice");
        let takes = (0..6).map(|i| {
            let store = if i % 2 == 0 { store.clone() } else { other.clone() };
            let alice = alice.clone();
            async move { store.take_mount_bytes(&alice, "/srv/reports", day, 40, 100).await.unwrap() }
        });
        let results = futures::future::join_all(takes).await;
        assert_eq!(results.iter().filter(|r| r.is_none()).count(), 2, "{backend:?}: {results:?}");
        assert_eq!(store.take_mount_bytes(&alice, "/srv/reports", day, 21, 100).await.unwrap(), Some(80));
        assert_eq!(store.take_mount_bytes(&alice, "/srv/reports", day, 20, 100).await.unwrap(), None);
        // Another principal, mount or day has its own.
        let bob = owner("bob");
        assert_eq!(store.take_mount_bytes(&bob, "/srv/reports", day, 100, 100).await.unwrap(), None);
        assert_eq!(store.take_mount_bytes(&alice, "/srv/other", day, 100, 100).await.unwrap(), None);
        assert_eq!(other.take_mount_bytes(&alice, "/srv/reports", day + 86_400_000, 100, 100).await.unwrap(), None);
        assert_eq!(other.take_mount_bytes(&alice, "/srv/reports", day, 101, 100).await.unwrap(), Some(100));
    }
}
