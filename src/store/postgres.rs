//! The shared store: PostgreSQL, for several replicas behind a load balancer.
//!
//! Every operation on the hot path is one round trip, and each is atomic in the
//! database, so what replicas agree on never depends on which one answered:
//! - **append** is one call of `sandgate_append`, a function taking a whole batch as
//!   arrays: it inserts the records, adds each model call's cost to the spend counters
//!   it falls under and deletes the reservations the batch releases, in one
//!   transaction. The ledger's group commit makes that one round trip per batch, not
//!   per record.
//! - **reserve** is one call of `sandgate_reserve`: it takes the hold's lines in turn
//!   (advisory locks in a fixed order, so two holds never deadlock), drops expired
//!   reservations, checks spend plus live reservations plus the new hold against each
//!   limit, and inserts the hold only if every line fits. It never waits for an
//!   append: the append changes a call's spend and its hold in one transaction, and
//!   the reservation reads both in one snapshot. Across any number of replicas, spend
//!   can pass a budget by at most the reservations in flight (an estimate that turned
//!   out low). A replica's lease of budget headroom is one such hold; the calls drawn
//!   from it come off it by [`Record::Draw`] in the append that records them
//!   (`sandgate_append_with_draws`).
//! - **take** is one call of `sandgate_take`, an `INSERT … ON CONFLICT DO UPDATE` on
//!   the bucket's row, refilled by the database clock, so a rate limit is exact across
//!   replicas whatever their clocks say.
//!
//! Holds and rate buckets are worth nothing after a crash (a hold would only expire),
//! so their transactions commit without waiting for the disk; records, spend and keys
//! wait for it as PostgreSQL is configured to. That keeps a budget's turn taken for
//! microseconds per call rather than for a disk flush.
//!
//! A counter starts, the first time a (scope, period) is reserved against, as the sum
//! of the ledger's model calls in that period. Schema changes are versioned
//! migrations, applied at start under an advisory lock, so replicas starting together
//! apply each once. Connections use TLS when the URL asks for it (see `tls`), and
//! every round trip is counted in `sandgate_store_round_trips_total{op}`.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_postgres::types::ToSql;

use super::activity::{self, CallRow, CallStats, ExecutionDetail, ExecutionQuery, ModelCallRow, PulseRows};
use super::approvals::{APPROVAL_COLUMNS, PAUSED_COLUMNS};
use super::patch;
use super::usage::{self, Dialect, UsageQuery, UsageRow};
use super::{
    now_ms, ApprovalQuery, ApprovalRecord, ApprovalStatus, Balance, BudgetLine, ConsoleSession, Decided,
    ExecutionRecord, FileChange, Giveback, HandleEnd, HandleRecord, HandleStatus, Hold, KeyCreated, Lease, MemoryWrite,
    Overdrawn, Owner, PausedRecord, Record, Returned, SessionRecord, Store, StoreError, StoredFile, StoredKey,
    StoredMemory,
};

/// Schema versions, applied in order, each in the one transaction that holds the
/// migration lock.
const MIGRATIONS: &[&str] = &[
    // 1: the ledger, budget counters and holds, rate buckets.
    r#"
    CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        "user" TEXT NOT NULL,
        team TEXT NOT NULL,
        key TEXT NOT NULL,
        started_at_ms BIGINT NOT NULL,
        ended_at_ms BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        fuel BIGINT NOT NULL,
        wall_ms BIGINT NOT NULL,
        memory_bytes BIGINT NOT NULL,
        host_calls BIGINT NOT NULL
    );
    CREATE INDEX executions_started ON executions (started_at_ms);
    CREATE INDEX executions_user ON executions ("user", started_at_ms);
    CREATE TABLE calls (
        id BIGSERIAL PRIMARY KEY,
        execution_id TEXT NOT NULL,
        "user" TEXT NOT NULL,
        team TEXT NOT NULL,
        name TEXT NOT NULL,
        started_at_ms BIGINT NOT NULL,
        latency_ms BIGINT NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE INDEX calls_execution ON calls (execution_id);
    CREATE TABLE model_calls (
        id BIGSERIAL PRIMARY KEY,
        execution_id TEXT,
        "user" TEXT NOT NULL,
        team TEXT NOT NULL,
        key TEXT NOT NULL,
        model TEXT NOT NULL,
        tier TEXT NOT NULL,
        provider TEXT NOT NULL,
        input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        cost_nanousd BIGINT NOT NULL,
        started_at_ms BIGINT NOT NULL,
        latency_ms BIGINT NOT NULL,
        status TEXT NOT NULL,
        fallback_chain TEXT NOT NULL,
        tags TEXT NOT NULL
    );
    CREATE INDEX model_calls_started ON model_calls (started_at_ms);
    CREATE INDEX model_calls_user ON model_calls ("user", started_at_ms);
    CREATE INDEX model_calls_team ON model_calls (team, started_at_ms);

    CREATE TABLE budget_counters (
        scope_kind TEXT NOT NULL,
        scope_name TEXT NOT NULL,
        since_ms BIGINT NOT NULL,
        spent_nanos BIGINT NOT NULL,
        spent_tokens BIGINT NOT NULL,
        PRIMARY KEY (scope_kind, scope_name, since_ms)
    );
    CREATE TABLE budget_holds (
        id TEXT NOT NULL,
        scope_kind TEXT NOT NULL,
        scope_name TEXT NOT NULL,
        since_ms BIGINT NOT NULL,
        nanos BIGINT NOT NULL,
        tokens BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL
    );
    CREATE INDEX budget_holds_id ON budget_holds (id);
    CREATE INDEX budget_holds_counter ON budget_holds (scope_kind, scope_name, since_ms);
    CREATE TABLE rate_buckets (
        subject TEXT NOT NULL,
        action TEXT NOT NULL,
        tokens DOUBLE PRECISION NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        allowed BOOLEAN NOT NULL,
        PRIMARY KEY (subject, action)
    );

    -- Creates the counters named by the arrays that do not exist yet, from the ledger.
    CREATE FUNCTION sandgate_seed(p_kinds TEXT[], p_names TEXT[], p_sinces BIGINT[]) RETURNS void
    LANGUAGE plpgsql AS $$
    BEGIN
        FOR i IN 1 .. coalesce(array_length(p_kinds, 1), 0) LOOP
            CONTINUE WHEN EXISTS (SELECT 1 FROM budget_counters
                WHERE scope_kind = p_kinds[i] AND scope_name = p_names[i] AND since_ms = p_sinces[i]);
            IF p_kinds[i] = 'user' THEN
                INSERT INTO budget_counters
                SELECT p_kinds[i], p_names[i], p_sinces[i], coalesce(sum(cost_nanousd), 0),
                       coalesce(sum(input_tokens + output_tokens), 0)
                FROM model_calls WHERE "user" = p_names[i] AND started_at_ms >= p_sinces[i]
                ON CONFLICT DO NOTHING;
            ELSE
                INSERT INTO budget_counters
                SELECT p_kinds[i], p_names[i], p_sinces[i], coalesce(sum(cost_nanousd), 0),
                       coalesce(sum(input_tokens + output_tokens), 0)
                FROM model_calls WHERE team = p_names[i] AND started_at_ms >= p_sinces[i]
                ON CONFLICT DO NOTHING;
            END IF;
        END LOOP;
    END $$;

    -- Holds p_nanos and p_tokens against every line, or against none. No row back:
    -- held. A row: the first line that would pass a limit.
    --
    -- Reservations on a line take turns through an advisory lock on it, taken in the
    -- order the lines come in, sorted by (kind, name, since), so two holds never
    -- deadlock. The counter row itself is never locked here: a line's spend and live
    -- holds are read in one statement, one snapshot, and sandgate_append changes both
    -- (adds a call's cost, deletes its hold) in one transaction, so a reservation sees
    -- a call either still held or already spent, never neither, without waiting for
    -- an append's disk flush. A hold is worth nothing after a crash (it would only
    -- expire), so this commit does not wait for the disk either: the lock is held for
    -- microseconds.
    CREATE FUNCTION sandgate_reserve(p_id TEXT, p_kinds TEXT[], p_names TEXT[], p_sinces BIGINT[],
        p_limit_nanos BIGINT[], p_limit_tokens BIGINT[], p_nanos BIGINT, p_tokens BIGINT,
        p_expires_at_ms BIGINT, p_now_ms BIGINT)
    RETURNS TABLE (line INT, over_tokens BOOLEAN, used_nanos BIGINT, used_tokens BIGINT)
    LANGUAGE plpgsql AS $$
    DECLARE
        n_used BIGINT; t_used BIGINT;
    BEGIN
        PERFORM set_config('synchronous_commit', 'off', true);
        PERFORM sandgate_seed(p_kinds, p_names, p_sinces);
        FOR i IN 1 .. coalesce(array_length(p_kinds, 1), 0) LOOP
            PERFORM pg_advisory_xact_lock(hashtextextended(p_kinds[i] || '/' || p_names[i] || '/' || p_sinces[i], 0));
        END LOOP;
        FOR i IN 1 .. coalesce(array_length(p_kinds, 1), 0) LOOP
            DELETE FROM budget_holds
            WHERE scope_kind = p_kinds[i] AND scope_name = p_names[i] AND since_ms = p_sinces[i]
              AND expires_at_ms <= p_now_ms;
            SELECT c.spent_nanos + coalesce(h.nanos, 0), c.spent_tokens + coalesce(h.tokens, 0)
            INTO n_used, t_used
            FROM budget_counters c
            LEFT JOIN LATERAL (
                SELECT sum(b.nanos) AS nanos, sum(b.tokens) AS tokens FROM budget_holds b
                WHERE b.scope_kind = c.scope_kind AND b.scope_name = c.scope_name AND b.since_ms = c.since_ms
            ) h ON true
            WHERE c.scope_kind = p_kinds[i] AND c.scope_name = p_names[i] AND c.since_ms = p_sinces[i];
            IF p_limit_nanos[i] IS NOT NULL AND n_used + p_nanos > p_limit_nanos[i] THEN
                RETURN QUERY SELECT i - 1, false, n_used, t_used;
                RETURN;
            END IF;
            IF p_limit_tokens[i] IS NOT NULL AND t_used + p_tokens > p_limit_tokens[i] THEN
                RETURN QUERY SELECT i - 1, true, n_used, t_used;
                RETURN;
            END IF;
        END LOOP;
        INSERT INTO budget_holds (id, scope_kind, scope_name, since_ms, nanos, tokens, expires_at_ms)
        SELECT p_id, k, n, s, p_nanos, p_tokens, p_expires_at_ms FROM unnest(p_kinds, p_names, p_sinces) AS u(k, n, s);
    END $$;

    -- Spend plus live holds on each line (seeding new counters first), by place.
    CREATE FUNCTION sandgate_balances(p_kinds TEXT[], p_names TEXT[], p_sinces BIGINT[], p_now_ms BIGINT)
    RETURNS TABLE (place INT, used_nanos BIGINT, used_tokens BIGINT)
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM set_config('synchronous_commit', 'off', true);
        PERFORM sandgate_seed(p_kinds, p_names, p_sinces);
        RETURN QUERY
        SELECT u.i::INT, (coalesce(c.spent_nanos, 0) + coalesce(h.nanos, 0))::BIGINT,
               (coalesce(c.spent_tokens, 0) + coalesce(h.tokens, 0))::BIGINT
        FROM unnest(p_kinds, p_names, p_sinces) WITH ORDINALITY AS u(k, n, s, i)
        LEFT JOIN budget_counters c ON c.scope_kind = u.k AND c.scope_name = u.n AND c.since_ms = u.s
        LEFT JOIN LATERAL (
            SELECT sum(b.nanos) AS nanos, sum(b.tokens) AS tokens FROM budget_holds b
            WHERE b.scope_kind = u.k AND b.scope_name = u.n AND b.since_ms = u.s AND b.expires_at_ms > p_now_ms
        ) h ON true;
    END $$;

    -- Takes a token from a rate bucket holding p_capacity and refilling p_capacity a
    -- minute, by the database clock (the same for every replica). Like a hold, a
    -- bucket need not survive a crash, so its commit does not wait for the disk.
    CREATE FUNCTION sandgate_take(p_subject TEXT, p_action TEXT, p_capacity FLOAT8)
    RETURNS TABLE (allowed BOOLEAN, tokens FLOAT8)
    LANGUAGE plpgsql AS $$
    #variable_conflict use_column
    BEGIN
        PERFORM set_config('synchronous_commit', 'off', true);
        RETURN QUERY
        INSERT INTO rate_buckets AS b (subject, action, tokens, updated_at, allowed)
        VALUES (p_subject, p_action, p_capacity - 1, now(), true)
        ON CONFLICT (subject, action) DO UPDATE SET
            allowed = least(p_capacity, b.tokens
                + greatest(0, extract(epoch FROM now() - b.updated_at))::FLOAT8 * p_capacity / 60) >= 1,
            tokens = least(p_capacity, b.tokens
                + greatest(0, extract(epoch FROM now() - b.updated_at))::FLOAT8 * p_capacity / 60)
                - CASE WHEN least(p_capacity, b.tokens
                    + greatest(0, extract(epoch FROM now() - b.updated_at))::FLOAT8 * p_capacity / 60) >= 1
                  THEN 1 ELSE 0 END,
            updated_at = greatest(now(), b.updated_at)
        RETURNING b.allowed, b.tokens;
    END $$;

    -- Appends one batch: records, the spend they add, the holds they release.
    CREATE FUNCTION sandgate_append(
        e_id TEXT[], e_user TEXT[], e_team TEXT[], e_key TEXT[], e_started BIGINT[], e_ended BIGINT[],
        e_outcome TEXT[], e_fuel BIGINT[], e_wall BIGINT[], e_memory BIGINT[], e_calls BIGINT[],
        c_execution TEXT[], c_user TEXT[], c_team TEXT[], c_name TEXT[], c_started BIGINT[],
        c_latency BIGINT[], c_outcome TEXT[],
        m_execution TEXT[], m_user TEXT[], m_team TEXT[], m_key TEXT[], m_model TEXT[], m_tier TEXT[],
        m_provider TEXT[], m_input BIGINT[], m_output BIGINT[], m_cached BIGINT[], m_cost BIGINT[],
        m_started BIGINT[], m_latency BIGINT[], m_status TEXT[], m_chain TEXT[], m_tags TEXT[],
        releases TEXT[],
        s_session TEXT[], s_user TEXT[], s_team TEXT[], s_key TEXT[], s_at BIGINT[], s_event TEXT[],
        s_bytes BIGINT[]) RETURNS void
    LANGUAGE plpgsql AS $$
    DECLARE
        r RECORD;
    BEGIN
        INSERT INTO executions (id, "user", team, key, started_at_ms, ended_at_ms, outcome, fuel, wall_ms,
                                memory_bytes, host_calls)
        SELECT * FROM unnest(e_id, e_user, e_team, e_key, e_started, e_ended, e_outcome, e_fuel, e_wall,
                             e_memory, e_calls)
        ON CONFLICT (id) DO UPDATE SET "user" = EXCLUDED."user", team = EXCLUDED.team, key = EXCLUDED.key,
            started_at_ms = EXCLUDED.started_at_ms, ended_at_ms = EXCLUDED.ended_at_ms,
            outcome = EXCLUDED.outcome, fuel = EXCLUDED.fuel, wall_ms = EXCLUDED.wall_ms,
            memory_bytes = EXCLUDED.memory_bytes, host_calls = EXCLUDED.host_calls;
        INSERT INTO calls (execution_id, "user", team, name, started_at_ms, latency_ms, outcome)
        SELECT * FROM unnest(c_execution, c_user, c_team, c_name, c_started, c_latency, c_outcome);
        INSERT INTO model_calls (execution_id, "user", team, key, model, tier, provider, input_tokens,
            output_tokens, cached_tokens, cost_nanousd, started_at_ms, latency_ms, status, fallback_chain, tags)
        SELECT * FROM unnest(m_execution, m_user, m_team, m_key, m_model, m_tier, m_provider, m_input,
            m_output, m_cached, m_cost, m_started, m_latency, m_status, m_chain, m_tags);
        -- Add each call's cost to the counters it falls under, in a fixed order so that
        -- concurrent appends never deadlock.
        FOR r IN
            SELECT c.scope_kind, c.scope_name, c.since_ms, sum(m.cost) AS nanos, sum(m.input + m.output) AS tokens
            FROM budget_counters c
            JOIN unnest(m_user, m_team, m_started, m_cost, m_input, m_output) AS m(u, t, at, cost, input, output)
              ON c.since_ms <= m.at
             AND ((c.scope_kind = 'user' AND c.scope_name = m.u) OR (c.scope_kind = 'team' AND c.scope_name = m.t))
            GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        LOOP
            UPDATE budget_counters SET spent_nanos = spent_nanos + r.nanos, spent_tokens = spent_tokens + r.tokens
            WHERE scope_kind = r.scope_kind AND scope_name = r.scope_name AND since_ms = r.since_ms;
        END LOOP;
        DELETE FROM budget_holds WHERE id = ANY(releases);
        INSERT INTO session_events (session_id, "user", team, key, at_ms, event, state_bytes)
        SELECT * FROM unnest(s_session, s_user, s_team, s_key, s_at, s_event, s_bytes);
    END $$;
    "#,
    // 2: API keys created with `sandgate key create` against this store.
    r#"
    CREATE TABLE api_keys (
        name TEXT NOT NULL,
        "user" TEXT NOT NULL,
        team TEXT NOT NULL,
        role TEXT NOT NULL,
        hash BYTEA NOT NULL,
        created_at_ms BIGINT NOT NULL,
        revoked_at_ms BIGINT
    );
    CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at_ms IS NULL;
    "#,
    // 3: sessions and their memory images.
    r#"
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        "user" TEXT NOT NULL,
        team TEXT NOT NULL,
        key TEXT NOT NULL,
        language TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        used_at_ms BIGINT NOT NULL,
        ttl_ms BIGINT NOT NULL,
        executions BIGINT NOT NULL DEFAULT 0,
        image BYTEA,
        image_bytes BIGINT NOT NULL DEFAULT 0,
        lease TEXT,
        lease_until_ms BIGINT
    );
    CREATE INDEX sessions_user ON sessions ("user", created_at_ms);
    CREATE TABLE session_events (
        id BIGSERIAL PRIMARY KEY,
        session_id TEXT NOT NULL,
        "user" TEXT NOT NULL,
        team TEXT NOT NULL,
        key TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        event TEXT NOT NULL,
        state_bytes BIGINT NOT NULL
    );
    CREATE INDEX session_events_at ON session_events (at_ms);
    "#,
    // 4: sessions' workspace files.
    r#"
    ALTER TABLE sessions ADD COLUMN files BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN file_bytes BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE session_files (
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        dir BOOLEAN NOT NULL,
        size BIGINT NOT NULL,
        data BYTEA,
        PRIMARY KEY (session_id, path)
    );
    "#,
    // 5: executions started in the background, and their results for a while.
    r#"
    CREATE TABLE execution_handles (
        id TEXT PRIMARY KEY,
        "user" TEXT NOT NULL,
        team TEXT NOT NULL,
        key TEXT NOT NULL,
        session_id TEXT,
        status TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        ended_at_ms BIGINT,
        expires_at_ms BIGINT NOT NULL,
        cancel_requested BOOLEAN NOT NULL DEFAULT false,
        body TEXT
    );
    CREATE INDEX execution_handles_expiry ON execution_handles (expires_at_ms);
    "#,
    // 6: sessions found by when they expire, so the sweep reads only those.
    "CREATE INDEX sessions_expiry ON sessions ((used_at_ms + ttl_ms));",
    // 7: executions' console lines, for the console's execution page (only those that
    // printed any), appended with the rest of a batch by a function that wraps
    // sandgate_append (which stays, for replicas not yet upgraded).
    r#"
    CREATE TABLE execution_logs (execution_id TEXT PRIMARY KEY, logs TEXT NOT NULL);
    CREATE FUNCTION sandgate_append_with_logs(
        e_id TEXT[], e_user TEXT[], e_team TEXT[], e_key TEXT[], e_started BIGINT[], e_ended BIGINT[],
        e_outcome TEXT[], e_fuel BIGINT[], e_wall BIGINT[], e_memory BIGINT[], e_calls BIGINT[],
        c_execution TEXT[], c_user TEXT[], c_team TEXT[], c_name TEXT[], c_started BIGINT[],
        c_latency BIGINT[], c_outcome TEXT[],
        m_execution TEXT[], m_user TEXT[], m_team TEXT[], m_key TEXT[], m_model TEXT[], m_tier TEXT[],
        m_provider TEXT[], m_input BIGINT[], m_output BIGINT[], m_cached BIGINT[], m_cost BIGINT[],
        m_started BIGINT[], m_latency BIGINT[], m_status TEXT[], m_chain TEXT[], m_tags TEXT[],
        releases TEXT[],
        s_session TEXT[], s_user TEXT[], s_team TEXT[], s_key TEXT[], s_at BIGINT[], s_event TEXT[],
        s_bytes BIGINT[], l_execution TEXT[], l_logs TEXT[]) RETURNS void
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM sandgate_append(e_id, e_user, e_team, e_key, e_started, e_ended, e_outcome, e_fuel, e_wall,
            e_memory, e_calls, c_execution, c_user, c_team, c_name, c_started, c_latency, c_outcome,
            m_execution, m_user, m_team, m_key, m_model, m_tier, m_provider, m_input, m_output, m_cached,
            m_cost, m_started, m_latency, m_status, m_chain, m_tags, releases, s_session, s_user, s_team,
            s_key, s_at, s_event, s_bytes);
        INSERT INTO execution_logs (execution_id, logs) SELECT * FROM unnest(l_execution, l_logs)
        ON CONFLICT (execution_id) DO UPDATE SET logs = EXCLUDED.logs;
    END $$;
    "#,
    // 8: a session's memory as one row per kept page, so an execution writes only
    // the pages it changed; `sessions.image` is converted by `convert_images` and
    // dropped in the same transaction.
    r#"
    CREATE TABLE session_pages (
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        page INTEGER NOT NULL,
        bytes BYTEA NOT NULL,
        PRIMARY KEY (session_id, page)
    );
    ALTER TABLE sessions ADD COLUMN memory_size BIGINT NOT NULL DEFAULT 0;
    "#,
    // 9: workspace files as rows of `FILE_CHUNK` (1 MiB) bytes, so an upload or a
    // download holds one chunk at a time (the files' bytes move here); each file's
    // version, so a reader notices a file rewritten under it; and signed-in console
    // browsers, so a sign-out ends a sign-in on every replica; bytes each principal
    // wrote to each mounted directory per day, for its quota.
    r#"
    CREATE TABLE session_file_chunks (
        session_id TEXT NOT NULL,
        path TEXT NOT NULL,
        seq INTEGER NOT NULL,
        bytes BYTEA NOT NULL,
        PRIMARY KEY (session_id, path, seq),
        FOREIGN KEY (session_id, path) REFERENCES session_files (session_id, path) ON DELETE CASCADE
    );
    ALTER TABLE session_files ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
    INSERT INTO session_file_chunks (session_id, path, seq, bytes)
        SELECT session_id, path, g, substring(data FROM g * 1048576 + 1 FOR 1048576)
        FROM session_files, generate_series(0, (length(data) - 1) / 1048576) AS g
        WHERE NOT dir AND data IS NOT NULL AND length(data) > 0;
    UPDATE session_files SET data = NULL, version = (random() * 9e18)::BIGINT WHERE NOT dir;
    CREATE TABLE console_sessions (
        id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        ended_at_ms BIGINT
    );
    CREATE INDEX console_sessions_expiry ON console_sessions (expires_at_ms);
    CREATE TABLE mount_writes (
        "user" TEXT NOT NULL,
        team TEXT NOT NULL,
        key TEXT NOT NULL,
        mount TEXT NOT NULL,
        day_ms BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        PRIMARY KEY ("user", team, key, mount, day_ms)
    );
    "#,
    // 10: the coding agent's own session each execution and model call belongs to,
    // appended by a function that takes them (the earlier ones stay, for replicas not
    // yet upgraded).
    r#"
    ALTER TABLE executions ADD COLUMN agent_session TEXT;
    ALTER TABLE model_calls ADD COLUMN agent_session TEXT;
    CREATE INDEX executions_agent_session ON executions (agent_session, started_at_ms);
    CREATE INDEX model_calls_agent_session ON model_calls (agent_session, started_at_ms);
    CREATE FUNCTION sandgate_append_with_agents(
        e_id TEXT[], e_user TEXT[], e_team TEXT[], e_key TEXT[], e_started BIGINT[], e_ended BIGINT[],
        e_outcome TEXT[], e_fuel BIGINT[], e_wall BIGINT[], e_memory BIGINT[], e_calls BIGINT[],
        c_execution TEXT[], c_user TEXT[], c_team TEXT[], c_name TEXT[], c_started BIGINT[],
        c_latency BIGINT[], c_outcome TEXT[],
        m_execution TEXT[], m_user TEXT[], m_team TEXT[], m_key TEXT[], m_model TEXT[], m_tier TEXT[],
        m_provider TEXT[], m_input BIGINT[], m_output BIGINT[], m_cached BIGINT[], m_cost BIGINT[],
        m_started BIGINT[], m_latency BIGINT[], m_status TEXT[], m_chain TEXT[], m_tags TEXT[],
        releases TEXT[],
        s_session TEXT[], s_user TEXT[], s_team TEXT[], s_key TEXT[], s_at BIGINT[], s_event TEXT[],
        s_bytes BIGINT[], l_execution TEXT[], l_logs TEXT[], e_agent TEXT[], m_agent TEXT[]) RETURNS void
    LANGUAGE plpgsql AS $$
    DECLARE
        r RECORD;
    BEGIN
        INSERT INTO executions (id, "user", team, key, started_at_ms, ended_at_ms, outcome, fuel, wall_ms,
                                memory_bytes, host_calls, agent_session)
        SELECT * FROM unnest(e_id, e_user, e_team, e_key, e_started, e_ended, e_outcome, e_fuel, e_wall,
                             e_memory, e_calls, e_agent)
        ON CONFLICT (id) DO UPDATE SET "user" = EXCLUDED."user", team = EXCLUDED.team, key = EXCLUDED.key,
            started_at_ms = EXCLUDED.started_at_ms, ended_at_ms = EXCLUDED.ended_at_ms,
            outcome = EXCLUDED.outcome, fuel = EXCLUDED.fuel, wall_ms = EXCLUDED.wall_ms,
            memory_bytes = EXCLUDED.memory_bytes, host_calls = EXCLUDED.host_calls,
            agent_session = EXCLUDED.agent_session;
        INSERT INTO calls (execution_id, "user", team, name, started_at_ms, latency_ms, outcome)
        SELECT * FROM unnest(c_execution, c_user, c_team, c_name, c_started, c_latency, c_outcome);
        INSERT INTO model_calls (execution_id, "user", team, key, model, tier, provider, input_tokens,
            output_tokens, cached_tokens, cost_nanousd, started_at_ms, latency_ms, status, fallback_chain, tags,
            agent_session)
        SELECT * FROM unnest(m_execution, m_user, m_team, m_key, m_model, m_tier, m_provider, m_input,
            m_output, m_cached, m_cost, m_started, m_latency, m_status, m_chain, m_tags, m_agent);
        FOR r IN
            SELECT c.scope_kind, c.scope_name, c.since_ms, sum(m.cost) AS nanos, sum(m.input + m.output) AS tokens
            FROM budget_counters c
            JOIN unnest(m_user, m_team, m_started, m_cost, m_input, m_output) AS m(u, t, at, cost, input, output)
              ON c.since_ms <= m.at
             AND ((c.scope_kind = 'user' AND c.scope_name = m.u) OR (c.scope_kind = 'team' AND c.scope_name = m.t))
            GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        LOOP
            UPDATE budget_counters SET spent_nanos = spent_nanos + r.nanos, spent_tokens = spent_tokens + r.tokens
            WHERE scope_kind = r.scope_kind AND scope_name = r.scope_name AND since_ms = r.since_ms;
        END LOOP;
        DELETE FROM budget_holds WHERE id = ANY(releases);
        INSERT INTO session_events (session_id, "user", team, key, at_ms, event, state_bytes)
        SELECT * FROM unnest(s_session, s_user, s_team, s_key, s_at, s_event, s_bytes);
        INSERT INTO execution_logs (execution_id, logs) SELECT * FROM unnest(l_execution, l_logs)
        ON CONFLICT (execution_id) DO UPDATE SET logs = EXCLUDED.logs;
    END $$;
    "#,
    // 11: personal keys: issued to a person signed in with SSO, for their teams, until
    // they expire.
    r#"
    ALTER TABLE api_keys ADD COLUMN teams TEXT;
    ALTER TABLE api_keys ADD COLUMN expires_at_ms BIGINT;
    ALTER TABLE api_keys ADD COLUMN owner TEXT;
    CREATE INDEX api_keys_owner ON api_keys (owner) WHERE revoked_at_ms IS NULL;
    "#,
    // 12: executions paused at calls that wait for a person, and those approvals.
    r#"
    CREATE TABLE paused_executions (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        team TEXT NOT NULL,
        key_name TEXT NOT NULL,
        context TEXT NOT NULL,
        state TEXT NOT NULL,
        memory BYTEA NOT NULL,
        paused_at_ms BIGINT NOT NULL,
        claimed_at_ms BIGINT
    );
    CREATE TABLE approvals (
        id TEXT PRIMARY KEY,
        execution_id TEXT NOT NULL,
        call_id BIGINT NOT NULL,
        user_name TEXT NOT NULL,
        team TEXT NOT NULL,
        key_name TEXT NOT NULL,
        tool TEXT NOT NULL,
        args TEXT NOT NULL,
        detail TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        decided_by TEXT,
        decided_at_ms BIGINT,
        reason TEXT
    );
    CREATE INDEX approvals_execution ON approvals (execution_id);
    CREATE INDEX approvals_pending ON approvals (user_name) WHERE status = 'pending';
    CREATE INDEX approvals_created ON approvals (created_at_ms);
    "#,
    // 13: draws off a reservation (a call drawn from a replica's lease of budget
    // headroom, or the lease's unused rest given back), in the same transaction as the
    // records: a hold loses a call's estimate when, and only when, the call's cost is
    // added to the spend. A hold with nothing left goes.
    r#"
    CREATE FUNCTION sandgate_append_with_draws(
        e_id TEXT[], e_user TEXT[], e_team TEXT[], e_key TEXT[], e_started BIGINT[], e_ended BIGINT[],
        e_outcome TEXT[], e_fuel BIGINT[], e_wall BIGINT[], e_memory BIGINT[], e_calls BIGINT[],
        c_execution TEXT[], c_user TEXT[], c_team TEXT[], c_name TEXT[], c_started BIGINT[],
        c_latency BIGINT[], c_outcome TEXT[],
        m_execution TEXT[], m_user TEXT[], m_team TEXT[], m_key TEXT[], m_model TEXT[], m_tier TEXT[],
        m_provider TEXT[], m_input BIGINT[], m_output BIGINT[], m_cached BIGINT[], m_cost BIGINT[],
        m_started BIGINT[], m_latency BIGINT[], m_status TEXT[], m_chain TEXT[], m_tags TEXT[],
        releases TEXT[],
        s_session TEXT[], s_user TEXT[], s_team TEXT[], s_key TEXT[], s_at BIGINT[], s_event TEXT[],
        s_bytes BIGINT[], l_execution TEXT[], l_logs TEXT[], e_agent TEXT[], m_agent TEXT[],
        d_hold TEXT[], d_nanos BIGINT[], d_tokens BIGINT[]) RETURNS void
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM sandgate_append_with_agents(e_id, e_user, e_team, e_key, e_started, e_ended, e_outcome, e_fuel,
            e_wall, e_memory, e_calls, c_execution, c_user, c_team, c_name, c_started, c_latency, c_outcome,
            m_execution, m_user, m_team, m_key, m_model, m_tier, m_provider, m_input, m_output, m_cached, m_cost,
            m_started, m_latency, m_status, m_chain, m_tags, releases, s_session, s_user, s_team, s_key, s_at,
            s_event, s_bytes, l_execution, l_logs, e_agent, m_agent);
        IF coalesce(array_length(d_hold, 1), 0) > 0 THEN
            UPDATE budget_holds h SET nanos = greatest(h.nanos - d.nanos, 0), tokens = greatest(h.tokens - d.tokens, 0)
            FROM (SELECT id, sum(n) AS nanos, sum(t) AS tokens FROM unnest(d_hold, d_nanos, d_tokens) AS u(id, n, t)
                  GROUP BY id) d
            WHERE h.id = d.id;
            DELETE FROM budget_holds WHERE id = ANY(d_hold) AND nanos = 0 AND tokens = 0;
        END IF;
    END $$;
    "#,
    // 14: the bytes an execution changed in pages a session keeps, as one patch per
    // execution (see `store::patch`); each page and patch carries the execution
    // count of the return that wrote it.
    r#"
    ALTER TABLE session_pages ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE session_patches (
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        seq BIGINT NOT NULL,
        bytes BYTEA NOT NULL,
        PRIMARY KEY (session_id, seq)
    );
    ALTER TABLE sessions ADD COLUMN patches BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN patch_bytes BIGINT NOT NULL DEFAULT 0;
    "#,
];

fn model_call_row(r: &tokio_postgres::Row) -> ModelCallRow {
    activity::model_call(
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
        r.get(8),
        r.get(9),
    )
}

fn execution_row(row: &tokio_postgres::Row) -> ExecutionRecord {
    let count = |i: usize| row.get::<_, i64>(i).max(0) as u64;
    ExecutionRecord {
        id: row.get(0),
        user: row.get(1),
        team: row.get(2),
        key: row.get(3),
        started_at_ms: row.get(4),
        ended_at_ms: row.get(5),
        outcome: row.get(6),
        fuel: count(7),
        wall_ms: count(8),
        memory_bytes: count(9),
        host_calls: u32::try_from(count(10)).unwrap_or(u32::MAX),
        logs: String::new(),
        agent_session: row.try_get(11).unwrap_or(None),
    }
}

const DIALECT: Dialect = Dialect {
    day: |time| format!("to_char(to_timestamp({time} / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
    param: |n| format!("${n}"),
};

/// Advisory lock key held while migrating: replicas starting together take turns.
const MIGRATION_LOCK: i64 = 0x5a6e_6761_7465;

/// How long a replica waits for a pooled connection before answering 503.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// The error with its causes: a driver error's own text is often only "db error" or
/// "error performing TLS handshake", and the cause is what an operator needs.
fn err(e: impl std::error::Error) -> StoreError {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    StoreError(text)
}

/// Counts one round trip to PostgreSQL for `op` (`sandgate_store_round_trips_total`):
/// how the benchmark shows the round trips per execution and per model call.
fn trip(op: &'static str) {
    metrics::counter!("sandgate_store_round_trips_total", "op" => op).increment(1);
}

/// TLS for connections whose URL asks for it (`sslmode=require`; the default,
/// `prefer`, uses TLS when the server offers it): rustls, verifying the server's
/// certificate against the system's roots (`SSL_CERT_FILE` or `SSL_CERT_DIR` name
/// others).
fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    crate::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // A certificate the system lists but rustls cannot parse is skipped, as every
        // rustls client does.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!(errors = ?found.errors, "no trusted root certificates found: TLS connections to PostgreSQL will fail");
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// A pool of connections to one PostgreSQL database.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`, or key=value form), with up
    /// to `pool` connections, and applies pending migrations.
    pub async fn connect(url: &str, pool: usize) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError(format!("the store URL is not a PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_WAIT);
        }
        if config.get_application_name().is_none() {
            config.application_name("sandgate");
        }
        let manager = Manager::from_config(config, tls(), ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(pool.max(1))
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(err)?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(|e| StoreError(format!("cannot reach PostgreSQL: {}", err(e).0)))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
        )
        .await
        .map_err(err)?;
        let current: i64 =
            tx.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await.map_err(err)?.get(0);
        if current > MIGRATIONS.len() as i64 {
            return Err(StoreError(format!(
                "the store is at schema version {current}, newer than this sandgate knows ({})",
                MIGRATIONS.len()
            )));
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.batch_execute(sql).await.map_err(|e| StoreError(format!("migration {}: {e}", index + 1)))?;
            if index + 1 == PAGES_MIGRATION {
                convert_images(&tx).await?;
            }
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, $2)",
                &[&(index as i64 + 1), &now_ms()],
            )
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }
}

/// The migration after which [`convert_images`] runs.
const PAGES_MIGRATION: usize = 8;

/// Moves each session's image (one `image` column, `sandbox::MemoryImage`'s first
/// encoding) into `session_pages`, then drops the column.
async fn convert_images(tx: &tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    let rows = tx.query("SELECT id, image FROM sessions WHERE image IS NOT NULL", &[]).await.map_err(err)?;
    for row in rows {
        let (id, image): (String, Vec<u8>) = (row.get(0), row.get(1));
        let memory = super::legacy_image(&image)
            .ok_or_else(|| StoreError(format!("session `{id}`'s image cannot be read; the store is damaged")))?;
        let (pages, bytes): (Vec<i32>, Vec<&[u8]>) =
            memory.pages.iter().map(|(page, bytes)| (*page as i32, bytes.as_slice())).unzip();
        tx.execute(
            "INSERT INTO session_pages (session_id, page, bytes) SELECT $1, * FROM unnest($2::INTEGER[], $3::BYTEA[])",
            &[&id, &pages, &bytes],
        )
        .await
        .map_err(err)?;
        tx.execute(
            "UPDATE sessions SET memory_size = $2, image_bytes = $3 WHERE id = $1",
            &[&id, &to_i64(memory.size), &to_i64((memory.pages.len() * super::PAGE) as u64)],
        )
        .await
        .map_err(err)?;
    }
    tx.batch_execute("ALTER TABLE sessions DROP COLUMN image").await.map_err(err)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One batch as the columns `sandgate_append` takes.
#[derive(Default)]
struct Columns {
    e_id: Vec<String>,
    e_user: Vec<String>,
    e_team: Vec<String>,
    e_key: Vec<String>,
    e_started: Vec<i64>,
    e_ended: Vec<i64>,
    e_outcome: Vec<String>,
    e_fuel: Vec<i64>,
    e_wall: Vec<i64>,
    e_memory: Vec<i64>,
    e_calls: Vec<i64>,
    c_execution: Vec<String>,
    c_user: Vec<String>,
    c_team: Vec<String>,
    c_name: Vec<String>,
    c_started: Vec<i64>,
    c_latency: Vec<i64>,
    c_outcome: Vec<String>,
    m_execution: Vec<Option<String>>,
    m_user: Vec<String>,
    m_team: Vec<String>,
    m_key: Vec<String>,
    m_model: Vec<String>,
    m_tier: Vec<String>,
    m_provider: Vec<String>,
    m_input: Vec<i64>,
    m_output: Vec<i64>,
    m_cached: Vec<i64>,
    m_cost: Vec<i64>,
    m_started: Vec<i64>,
    m_latency: Vec<i64>,
    m_status: Vec<String>,
    m_chain: Vec<String>,
    m_tags: Vec<String>,
    releases: Vec<String>,
    d_hold: Vec<String>,
    d_nanos: Vec<i64>,
    d_tokens: Vec<i64>,
    s_session: Vec<String>,
    s_user: Vec<String>,
    s_team: Vec<String>,
    s_key: Vec<String>,
    s_at: Vec<i64>,
    s_event: Vec<String>,
    s_bytes: Vec<i64>,
    l_execution: Vec<String>,
    l_logs: Vec<String>,
    e_agent: Vec<Option<String>>,
    m_agent: Vec<Option<String>>,
}

impl Columns {
    fn of<'a>(records: impl Iterator<Item = &'a Record> + Clone) -> Self {
        let mut c = Self::default();
        // One row per execution id: a later record of the same execution replaces an
        // earlier one, as it does across batches.
        let mut last = std::collections::HashMap::new();
        for (index, record) in records.clone().enumerate() {
            if let Record::Execution(r) = record {
                last.insert(r.id.as_str(), index);
            }
        }
        for (index, record) in records.enumerate() {
            match record {
                Record::Execution(r) if last.get(r.id.as_str()) == Some(&index) => {
                    c.e_id.push(r.id.clone());
                    c.e_user.push(r.user.clone());
                    c.e_team.push(r.team.clone());
                    c.e_key.push(r.key.clone());
                    c.e_started.push(r.started_at_ms);
                    c.e_ended.push(r.ended_at_ms);
                    c.e_outcome.push(r.outcome.clone());
                    c.e_fuel.push(to_i64(r.fuel));
                    c.e_wall.push(to_i64(r.wall_ms));
                    c.e_memory.push(to_i64(r.memory_bytes));
                    c.e_calls.push(r.host_calls.into());
                    c.e_agent.push(r.agent_session.clone());
                    if !r.logs.is_empty() {
                        c.l_execution.push(r.id.clone());
                        c.l_logs.push(r.logs.clone());
                    }
                }
                Record::Execution(_) => {}
                Record::Call(r) => {
                    c.c_execution.push(r.execution_id.clone());
                    c.c_user.push(r.user.clone());
                    c.c_team.push(r.team.clone());
                    c.c_name.push(r.name.clone());
                    c.c_started.push(r.started_at_ms);
                    c.c_latency.push(to_i64(r.latency_ms));
                    c.c_outcome.push(r.outcome.clone());
                }
                Record::Model(r) => {
                    c.m_execution.push(r.execution_id.clone());
                    c.m_user.push(r.user.clone());
                    c.m_team.push(r.team.clone());
                    c.m_key.push(r.key.clone());
                    c.m_model.push(r.model.clone());
                    c.m_tier.push(r.tier.clone());
                    c.m_provider.push(r.provider.clone());
                    c.m_input.push(to_i64(r.input_tokens));
                    c.m_output.push(to_i64(r.output_tokens));
                    c.m_cached.push(to_i64(r.cached_tokens));
                    c.m_cost.push(r.cost_nanos());
                    c.m_started.push(r.started_at_ms);
                    c.m_latency.push(to_i64(r.latency_ms));
                    c.m_status.push(r.status.clone());
                    c.m_chain.push(serde_json::to_string(&r.fallback_chain).unwrap_or_default());
                    c.m_tags.push(r.tags.to_string());
                    c.m_agent.push(r.agent_session.clone());
                }
                Record::Release(id) => c.releases.push(id.clone()),
                Record::Draw { hold, nanos, tokens } => {
                    c.d_hold.push(hold.clone());
                    c.d_nanos.push(*nanos);
                    c.d_tokens.push(to_i64(*tokens));
                }
                Record::Session(r) => {
                    c.s_session.push(r.session_id.clone());
                    c.s_user.push(r.user.clone());
                    c.s_team.push(r.team.clone());
                    c.s_key.push(r.key.clone());
                    c.s_at.push(r.at_ms);
                    c.s_event.push(r.event.to_string());
                    c.s_bytes.push(to_i64(r.state_bytes));
                }
            }
        }
        c
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 49] {
        [
            &self.e_id,
            &self.e_user,
            &self.e_team,
            &self.e_key,
            &self.e_started,
            &self.e_ended,
            &self.e_outcome,
            &self.e_fuel,
            &self.e_wall,
            &self.e_memory,
            &self.e_calls,
            &self.c_execution,
            &self.c_user,
            &self.c_team,
            &self.c_name,
            &self.c_started,
            &self.c_latency,
            &self.c_outcome,
            &self.m_execution,
            &self.m_user,
            &self.m_team,
            &self.m_key,
            &self.m_model,
            &self.m_tier,
            &self.m_provider,
            &self.m_input,
            &self.m_output,
            &self.m_cached,
            &self.m_cost,
            &self.m_started,
            &self.m_latency,
            &self.m_status,
            &self.m_chain,
            &self.m_tags,
            &self.releases,
            &self.s_session,
            &self.s_user,
            &self.s_team,
            &self.s_key,
            &self.s_at,
            &self.s_event,
            &self.s_bytes,
            &self.l_execution,
            &self.l_logs,
            &self.e_agent,
            &self.m_agent,
            &self.d_hold,
            &self.d_nanos,
            &self.d_tokens,
        ]
    }
}

const APPEND: &str = "SELECT sandgate_append_with_draws($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                      $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, \
                      $34, $35, $36, $37, $38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49)";

/// The lines in locking order, with their places in the hold, as the columns the
/// functions take.
struct Lines {
    order: Vec<usize>,
    kinds: Vec<String>,
    names: Vec<String>,
    sinces: Vec<i64>,
}

impl Lines {
    fn of(lines: &[BudgetLine]) -> Self {
        let mut order: Vec<usize> = (0..lines.len()).collect();
        order.sort_by(|&a, &b| {
            let key = |i: usize| (lines[i].scope.parts(), lines[i].since_ms);
            key(a).cmp(&key(b))
        });
        let kinds = order.iter().map(|&i| lines[i].scope.parts().0.to_string()).collect();
        let names = order.iter().map(|&i| lines[i].scope.parts().1.to_string()).collect();
        let sinces = order.iter().map(|&i| lines[i].since_ms).collect();
        Self { order, kinds, names, sinces }
    }
}

const SESSION_COLUMNS: &str = r#"id, "user", team, key, language, created_at_ms, used_at_ms, ttl_ms, executions,
    image_bytes, files, file_bytes"#;

fn session_row(row: &tokio_postgres::Row) -> Result<SessionRecord, StoreError> {
    session_at(row, 0)
}

/// The session whose [`SESSION_COLUMNS`] start at column `at`.
fn session_at(row: &tokio_postgres::Row, at: usize) -> Result<SessionRecord, StoreError> {
    let count = |i: usize| row.get::<_, i64>(at + i).max(0) as u64;
    Ok(SessionRecord {
        id: row.get(at),
        user: row.get(at + 1),
        team: row.get(at + 2),
        key: row.get(at + 3),
        language: super::parse_language(row.get(at + 4))?,
        created_at_ms: row.get(at + 5),
        used_at_ms: row.get(at + 6),
        ttl_ms: row.get(at + 7),
        executions: count(8),
        image_bytes: count(9),
        files: count(10),
        file_bytes: count(11),
    })
}

const HANDLE_COLUMNS: &str = r#"id, "user", team, key, session_id, status, created_at_ms, ended_at_ms, expires_at_ms,
    cancel_requested, body"#;

fn approval_row(row: &tokio_postgres::Row) -> Result<ApprovalRecord, StoreError> {
    Ok(ApprovalRecord {
        id: row.get(0),
        execution_id: row.get(1),
        call_id: u32::try_from(row.get::<_, i64>(2)).unwrap_or(0),
        user: row.get(3),
        team: row.get(4),
        key: row.get(5),
        tool: row.get(6),
        args: row.get(7),
        detail: row.get(8),
        status: ApprovalStatus::parse(row.get(9))?,
        created_at_ms: row.get(10),
        expires_at_ms: row.get(11),
        decided_by: row.get(12),
        decided_at_ms: row.get(13),
        reason: row.get(14),
    })
}

fn paused_row(row: &tokio_postgres::Row) -> PausedRecord {
    PausedRecord {
        id: row.get(0),
        user: row.get(1),
        team: row.get(2),
        key: row.get(3),
        context: row.get(4),
        state: row.get(5),
        memory: row.get(6),
        paused_at_ms: row.get(7),
        claimed_at_ms: row.get(8),
    }
}

fn handle_row(row: &tokio_postgres::Row) -> Result<HandleRecord, StoreError> {
    Ok(HandleRecord {
        id: row.get(0),
        user: row.get(1),
        team: row.get(2),
        key: row.get(3),
        session_id: row.get(4),
        status: HandleStatus::parse(row.get(5))?,
        created_at_ms: row.get(6),
        ended_at_ms: row.get(7),
        expires_at_ms: row.get(8),
        cancel_requested: row.get(9),
        body: row.get(10),
    })
}

fn file_row(row: &tokio_postgres::Row) -> StoredFile {
    StoredFile {
        path: row.get(0),
        dir: row.get(1),
        size: row.get::<_, i64>(2).max(0) as u64,
        version: row.get(3),
        data: Vec::new(),
    }
}

/// A read-only transaction that sees one moment of the database throughout.
async fn snapshot(client: &mut deadpool_postgres::Client) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(err)
}

/// Writes a file's chunks, in order, inside `tx`.
async fn put_chunks(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
    path: &str,
    chunks: impl Iterator<Item = Result<Vec<u8>, StoreError>>,
) -> Result<(), StoreError> {
    let insert = tx
        .prepare_cached("INSERT INTO session_file_chunks (session_id, path, seq, bytes) VALUES ($1, $2, $3, $4)")
        .await
        .map_err(err)?;
    for (seq, chunk) in chunks.enumerate() {
        let chunk = chunk?;
        trip("session_files");
        tx.execute(&insert, &[&id, &path, &(seq as i32), &chunk]).await.map_err(err)?;
    }
    Ok(())
}

fn used(nanos: i64, tokens: i64) -> Balance {
    Balance { used_nanos: nanos, used_tokens: tokens.max(0) as u64 }
}

/// Gives session `id` back from `lease` after an execution (see
/// [`Store::return_session`]).
const RETURN: &str = "UPDATE sessions SET image_bytes = coalesce($3, image_bytes),
        memory_size = coalesce($5, memory_size),
        used_at_ms = coalesce($4::BIGINT, used_at_ms),
        executions = executions + CASE WHEN $4::BIGINT IS NULL THEN 0 ELSE 1 END,
        patches = patches + CASE WHEN $6::BIGINT > 0 THEN 1 ELSE 0 END, patch_bytes = patch_bytes + $6::BIGINT,
        lease = NULL, lease_until_ms = NULL
     WHERE id = $1 AND lease = $2
     RETURNING executions, patches, patch_bytes";

/// Folds session `id`'s patches into its pages, as written by the return of `seq`
/// (inside `tx`).
async fn compact(tx: &deadpool_postgres::Transaction<'_>, id: &str, seq: i64) -> Result<(), StoreError> {
    trip("session_patches");
    let rows = tx
        .query("DELETE FROM session_patches WHERE session_id = $1 RETURNING seq, bytes", &[&id])
        .await
        .map_err(err)?;
    let mut patches: Vec<(i64, Vec<u8>)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    patches.sort_by_key(|(seq, _)| *seq);
    let touched: Vec<i32> = patch::touched(&patches)?.into_iter().map(|page| page as i32).collect();
    trip("session_pages");
    let rows = tx
        .query(
            "SELECT page, seq, bytes FROM session_pages WHERE session_id = $1 AND page = ANY($2) ORDER BY page",
            &[&id, &touched],
        )
        .await
        .map_err(err)?;
    let mut pages: Vec<patch::SeqPage> =
        rows.iter().map(|row| (row.get::<_, i32>(0) as u32, row.get(1), row.get(2))).collect();
    patch::apply(&mut pages, &patches)?;
    let (indices, bytes): (Vec<i32>, Vec<&[u8]>) =
        pages.iter().map(|(page, _, bytes)| (*page as i32, &bytes[..])).unzip();
    trip("session_pages");
    tx.execute(
        "UPDATE session_pages p SET bytes = u.bytes, seq = $4
         FROM unnest($2::INTEGER[], $3::BYTEA[]) AS u(page, bytes)
         WHERE p.session_id = $1 AND p.page = u.page",
        &[&id, &indices, &bytes, &seq],
    )
    .await
    .map_err(err)?;
    trip("sessions");
    tx.execute("UPDATE sessions SET patches = 0, patch_bytes = 0 WHERE id = $1", &[&id]).await.map_err(err)?;
    Ok(())
}

/// Commits `records` and `returns` in one transaction on `client`, with what each
/// return did; the records each return adds go in as it turns out. `guarded` puts
/// each return in a savepoint of its own, so that one that fails is undone alone;
/// unguarded, the first that fails undoes the whole transaction and the answer is
/// `None` (nothing was written).
async fn commit_batch(
    client: &mut deadpool_postgres::Client,
    records: &[Record],
    returns: &[Giveback],
    guarded: bool,
) -> Result<Option<Vec<Result<Returned, StoreError>>>, StoreError> {
    let mut tx = client.transaction().await.map_err(err)?;
    let mut answers = Vec::with_capacity(returns.len());
    for giveback in returns {
        let memory = giveback.memory.as_ref().map(|memory| memory.write(None));
        let ran_at_ms = Some(giveback.ran_at_ms);
        let answer = if guarded {
            async {
                let savepoint = tx.savepoint("giveback").await.map_err(err)?;
                let answer =
                    give_back(&savepoint, &giveback.id, &giveback.lease, memory.as_ref(), ran_at_ms, &giveback.files)
                        .await?;
                savepoint.commit().await.map_err(err)?;
                Ok(answer)
            }
            .await
        } else {
            give_back(&tx, &giveback.id, &giveback.lease, memory.as_ref(), ran_at_ms, &giveback.files).await
        };
        if answer.is_err() && !guarded {
            // Dropped, the transaction rolls back.
            return Ok(None);
        }
        answers.push(answer);
    }
    let added = returns.iter().zip(&answers).flat_map(|(giveback, answer)| giveback.records_after(answer));
    let columns = Columns::of(records.iter().chain(added));
    let statement = tx.prepare_cached(APPEND).await.map_err(err)?;
    trip("append");
    tx.execute(&statement, &columns.params()).await.map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(Some(answers))
}

/// Gives session `id` back from `lease` inside `tx`, which the caller commits
/// whatever the answer: see [`Store::return_session`].
async fn give_back(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
    lease: &str,
    memory: Option<&MemoryWrite<'_>>,
    ran_at_ms: Option<i64>,
    files: &[FileChange],
) -> Result<Returned, StoreError> {
    let bytes = memory.map(|memory| to_i64(memory.bytes));
    let size = memory.map(|memory| to_i64(memory.size));
    let patch = memory.map_or(&[][..], |memory| memory.patch);
    let patch_len = patch.len() as i64;
    let params: [&(dyn ToSql + Sync); 6] = [&id, &lease, &bytes, &ran_at_ms, &size, &patch_len];
    let pages = memory.filter(|memory| !memory.pages.is_empty());
    let cap = memory.and_then(|memory| memory.cap.as_ref());
    if let (Some(cap), Some(bytes)) = (cap, bytes) {
        // Returns of the same user's sessions take turns here, on any replica,
        // so that together they cannot pass the cap.
        trip("sessions");
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", &[&cap.user]).await.map_err(err)?;
        let row = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND lease = $2),
                        (SELECT coalesce(sum(image_bytes), 0)::BIGINT FROM sessions
                         WHERE \"user\" = $3 AND id != $1 AND used_at_ms + ttl_ms > $4)",
                &[&id, &lease, &cap.user, &now_ms()],
            )
            .await
            .map_err(err)?;
        if !row.get::<_, bool>(0) {
            return Ok(Returned::NotHeld);
        }
        let total = row.get::<_, i64>(1).max(0) as u64 + bytes.max(0) as u64;
        if total > cap.max_bytes {
            tx.execute(
                "UPDATE sessions SET lease = NULL, lease_until_ms = NULL WHERE id = $1 AND lease = $2",
                &[&id, &lease],
            )
            .await
            .map_err(err)?;
            return Ok(Returned::OverCap { total });
        }
    }
    trip("sessions");
    let Some(returned) = tx.query_opt(RETURN, &params).await.map_err(err)? else {
        return Ok(Returned::NotHeld);
    };
    let (seq, patches, patch_bytes): (i64, i64, i64) = (returned.get(0), returned.get(1), returned.get(2));
    if let Some(memory) = pages {
        let (pages, bytes): (Vec<i32>, Vec<&[u8]>) =
            memory.pages.iter().map(|(page, bytes)| (*page as i32, *bytes)).unzip();
        trip("session_pages");
        tx.execute(
            "INSERT INTO session_pages (session_id, page, bytes, seq)
                 SELECT $1, page, bytes, $4 FROM unnest($2::INTEGER[], $3::BYTEA[]) AS u(page, bytes)
                 ON CONFLICT (session_id, page) DO UPDATE SET bytes = excluded.bytes, seq = excluded.seq",
            &[&id, &pages, &bytes, &seq],
        )
        .await
        .map_err(err)?;
    }
    if !patch.is_empty() {
        trip("session_patches");
        tx.execute("INSERT INTO session_patches (session_id, seq, bytes) VALUES ($1, $2, $3)", &[&id, &seq, &patch])
            .await
            .map_err(err)?;
        if patches >= patch::COMPACT_COUNT || patch_bytes >= patch::COMPACT_BYTES {
            compact(tx, id, seq).await?;
        }
    }
    if !files.is_empty() {
        let put = tx
            .prepare_cached(
                "INSERT INTO session_files (session_id, path, dir, size, data, version)
                     VALUES ($1, $2, $3, $4, NULL, $5)
                     ON CONFLICT (session_id, path)
                     DO UPDATE SET dir = excluded.dir, size = excluded.size, data = NULL, version = excluded.version",
            )
            .await
            .map_err(err)?;
        let clear = tx
            .prepare_cached("DELETE FROM session_file_chunks WHERE session_id = $1 AND path = $2")
            .await
            .map_err(err)?;
        let remove = tx
            .prepare_cached(
                "DELETE FROM session_files
                     WHERE session_id = $1 AND (path = $2 OR substr(path, 1, length($2) + 1) = $2 || '/')",
            )
            .await
            .map_err(err)?;
        for change in files {
            trip("session_files");
            match change {
                FileChange::Put(file) => {
                    let size = to_i64(file.size);
                    let version = super::new_version();
                    tx.execute(&put, &[&id, &file.path, &file.dir, &size, &version]).await.map_err(err)?;
                    tx.execute(&clear, &[&id, &file.path]).await.map_err(err)?;
                    if !file.dir {
                        let chunks = file.data.chunks(super::FILE_CHUNK).map(|c| Ok(c.to_vec()));
                        put_chunks(tx, id, &file.path, chunks).await?;
                    }
                }
                FileChange::Spooled { path, size, from } => {
                    let (size_i64, version) = (to_i64(*size), super::new_version());
                    tx.execute(&put, &[&id, path, &false, &size_i64, &version]).await.map_err(err)?;
                    tx.execute(&clear, &[&id, path]).await.map_err(err)?;
                    // Read on the blocking pool a chunk at a time.
                    let (from, size) = (from.clone(), *size);
                    let (sender, mut receiver) = tokio::sync::mpsc::channel(1);
                    let reader = tokio::task::spawn_blocking(move || match super::spooled_chunks(&from, size) {
                        Ok(chunks) => {
                            for chunk in chunks {
                                if sender.blocking_send(chunk).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(error) => {
                            let _ = sender.blocking_send(Err(error));
                        }
                    });
                    let mut seq = 0i32;
                    while let Some(chunk) = receiver.recv().await {
                        let chunk = chunk?;
                        trip("session_files");
                        tx.execute(
                            "INSERT INTO session_file_chunks (session_id, path, seq, bytes) VALUES ($1, $2, $3, $4)",
                            &[&id, path, &seq, &chunk],
                        )
                        .await
                        .map_err(err)?;
                        seq += 1;
                    }
                    reader.await.map_err(|e| StoreError(e.to_string()))?;
                }
                FileChange::Remove(path) => {
                    tx.execute(&remove, &[&id, path]).await.map_err(err)?;
                }
            }
        }
        trip("session_files");
        tx.execute(
            "UPDATE sessions SET files = (SELECT count(*) FROM session_files WHERE session_id = $1),
                    file_bytes = (SELECT coalesce(sum(size), 0)::BIGINT FROM session_files WHERE session_id = $1)
                 WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(err)?;
    }
    Ok(Returned::Done)
}

impl Store for PgStore {
    fn append(
        &self,
        records: Vec<Record>,
        returns: Vec<Giveback>,
    ) -> BoxFuture<'_, Result<Vec<Result<Returned, StoreError>>, StoreError>> {
        async move {
            let mut client = self.client().await?;
            if returns.is_empty() {
                let columns = Columns::of(records.iter());
                let statement = client.prepare_cached(APPEND).await.map_err(err)?;
                trip("append");
                client.execute(&statement, &columns.params()).await.map_err(err)?;
                return Ok(Vec::new());
            }
            // Returns are made bare first: a savepoint around each costs two more
            // round trips, and almost every return succeeds. Should one fail, the
            // whole transaction is undone and made again with each return in a
            // savepoint of its own, so that one is undone alone and the batch still
            // commits.
            let answers = match commit_batch(&mut client, &records, &returns, false).await? {
                Some(answers) => answers,
                None => commit_batch(&mut client, &records, &returns, true).await?.unwrap_or_default(),
            };
            Ok(answers)
        }
        .boxed()
    }

    fn usage<'a>(&'a self, query: &'a UsageQuery) -> BoxFuture<'a, Result<Vec<UsageRow>, StoreError>> {
        async move {
            let client = self.client().await?;
            let since = query.since_ms.unwrap_or(i64::MIN);
            let until = query.until_ms.unwrap_or(i64::MAX);
            let user = query.user.as_deref();
            let mut totals = std::collections::BTreeMap::new();
            for part in usage::report(query.group_by, &DIALECT) {
                trip("usage");
                for row in client.query(&part.sql, &[&since, &until, &user]).await.map_err(err)? {
                    let numbers: Vec<i64> = (1..row.len()).map(|i| row.get(i)).collect();
                    usage::fold(&mut totals, &part, row.get(0), &numbers);
                }
            }
            Ok(totals.into_values().collect())
        }
        .boxed()
    }

    fn executions<'a>(&'a self, query: &'a ExecutionQuery) -> BoxFuture<'a, Result<Vec<ExecutionRecord>, StoreError>> {
        async move {
            let client = self.client().await?;
            let statement = client.prepare_cached(&activity::executions_sql(&DIALECT)).await.map_err(err)?;
            trip("executions");
            let (since, until) = query.window();
            let limit = i64::from(query.limit);
            let rows = client
                .query(&statement, &[&since, &until, &query.user, &query.outcome, &limit, &query.agent_session])
                .await
                .map_err(err)?;
            Ok(rows.iter().map(execution_row).collect())
        }
        .boxed()
    }

    fn pulse<'a>(&'a self, query: &'a ExecutionQuery) -> BoxFuture<'a, Result<PulseRows, StoreError>> {
        async move {
            let client = self.client().await?;
            let (since, until) = query.window();
            trip("activity");
            let rows =
                client.query(&activity::pulse_sql(&DIALECT), &[&since, &until, &query.user]).await.map_err(err)?;
            let buckets: Vec<(i64, String, i64)> =
                rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect();
            let total: i64 = buckets.iter().map(|(_, _, n)| n).sum();
            let sample = total.min(i64::from(query.limit));
            let (p50, p99) = activity::percentile_offsets(sample);
            let mut walls = [0i64; 2];
            if sample > 0 {
                for (wall, offset) in walls.iter_mut().zip([p50, p99]) {
                    trip("activity");
                    let row = client
                        .query_opt(&activity::wall_at_sql(&DIALECT), &[&since, &until, &query.user, &sample, &offset])
                        .await
                        .map_err(err)?;
                    *wall = row.map_or(0, |row| row.get(0));
                }
            }
            Ok(PulseRows { buckets, p50_ms: walls[0], p99_ms: walls[1], sample })
        }
        .boxed()
    }

    fn call_stats<'a>(&'a self, query: &'a ExecutionQuery) -> BoxFuture<'a, Result<Vec<CallStats>, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("call_stats");
            let (since, until) = query.window();
            let rows =
                client.query(&activity::call_stats_sql(&DIALECT), &[&since, &until, &query.user]).await.map_err(err)?;
            Ok(rows
                .iter()
                .map(|r| CallStats {
                    name: r.get(0),
                    calls: r.get(1),
                    errors: r.get(2),
                    latency_ms_total: r.get(3),
                    latency_ms_max: r.get(4),
                })
                .collect())
        }
        .boxed()
    }

    fn model_calls<'a>(&'a self, query: &'a ExecutionQuery) -> BoxFuture<'a, Result<Vec<ModelCallRow>, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("model_calls");
            let (since, until) = query.window();
            let limit = i64::from(query.limit);
            let rows = client
                .query(
                    &activity::recent_model_calls_sql(&DIALECT),
                    &[&since, &until, &query.user, &limit, &query.agent_session],
                )
                .await
                .map_err(err)?;
            Ok(rows.iter().map(model_call_row).collect())
        }
        .boxed()
    }

    fn execution<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<ExecutionDetail>, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("execution");
            let Some(row) = client.query_opt(&activity::execution_sql(&DIALECT), &[&id]).await.map_err(err)? else {
                return Ok(None);
            };
            let calls = client
                .query(&activity::calls_sql(&DIALECT), &[&id])
                .await
                .map_err(err)?
                .iter()
                .map(|r| CallRow { name: r.get(0), started_at_ms: r.get(1), latency_ms: r.get(2), outcome: r.get(3) })
                .collect();
            let model_calls = client
                .query(&activity::model_calls_sql(&DIALECT), &[&id])
                .await
                .map_err(err)?
                .iter()
                .map(model_call_row)
                .collect();
            let logs = client
                .query_opt(&activity::logs_sql(&DIALECT), &[&id])
                .await
                .map_err(err)?
                .map(|row| row.get::<_, String>(0));
            Ok(Some(ExecutionDetail {
                execution: execution_row(&row),
                calls,
                model_calls,
                logs: activity::parse_logs(logs),
            }))
        }
        .boxed()
    }

    fn reserve<'a>(&'a self, hold: &'a Hold) -> BoxFuture<'a, Result<Option<Overdrawn>, StoreError>> {
        async move {
            let lines = Lines::of(&hold.lines);
            let limit_nanos: Vec<Option<i64>> = lines.order.iter().map(|&i| hold.lines[i].limit_nanos).collect();
            let limit_tokens: Vec<Option<i64>> =
                lines.order.iter().map(|&i| hold.lines[i].limit_tokens.map(to_i64)).collect();
            let client = self.client().await?;
            let statement = client
                .prepare_cached("SELECT * FROM sandgate_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
                .await
                .map_err(err)?;
            trip("reserve");
            let rows = client
                .query(
                    &statement,
                    &[
                        &hold.id,
                        &lines.kinds,
                        &lines.names,
                        &lines.sinces,
                        &limit_nanos,
                        &limit_tokens,
                        &hold.nanos,
                        &to_i64(hold.tokens),
                        &hold.expires_at_ms,
                        &now_ms(),
                    ],
                )
                .await
                .map_err(err)?;
            Ok(rows.first().map(|row| Overdrawn {
                line: lines.order[row.get::<_, i32>(0) as usize],
                tokens: row.get(1),
                balance: used(row.get(2), row.get(3)),
            }))
        }
        .boxed()
    }

    fn balances<'a>(&'a self, lines: &'a [BudgetLine]) -> BoxFuture<'a, Result<Vec<Balance>, StoreError>> {
        async move {
            let sorted = Lines::of(lines);
            let client = self.client().await?;
            let statement =
                client.prepare_cached("SELECT * FROM sandgate_balances($1, $2, $3, $4)").await.map_err(err)?;
            trip("balances");
            let rows = client
                .query(&statement, &[&sorted.kinds, &sorted.names, &sorted.sinces, &now_ms()])
                .await
                .map_err(err)?;
            let mut balances = vec![Balance::default(); lines.len()];
            for row in rows {
                let place = row.get::<_, i32>(0) as usize - 1;
                balances[sorted.order[place]] = used(row.get(1), row.get(2));
            }
            Ok(balances)
        }
        .boxed()
    }

    fn take<'a>(
        &'a self,
        subject: &'a str,
        action: &'static str,
        per_minute: u32,
    ) -> BoxFuture<'a, Result<Result<(), u64>, StoreError>> {
        async move {
            if per_minute == 0 {
                return Ok(Err(60));
            }
            let client = self.client().await?;
            let statement = client.prepare_cached("SELECT * FROM sandgate_take($1, $2, $3)").await.map_err(err)?;
            let capacity = per_minute as f64;
            trip("take");
            let row = client.query_one(&statement, &[&subject, &action, &capacity]).await.map_err(err)?;
            let (allowed, tokens): (bool, f64) = (row.get(0), row.get(1));
            Ok(if allowed { Ok(()) } else { Err(super::retry_after_secs(tokens, per_minute)) })
        }
        .boxed()
    }

    fn create_key<'a>(
        &'a self,
        key: &'a StoredKey,
        owner_limit: Option<u32>,
    ) -> BoxFuture<'a, Result<KeyCreated, StoreError>> {
        async move {
            let e = &key.entry;
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(err)?;
            trip("keys");
            if let (Some(owner), Some(limit)) = (&e.owner, owner_limit) {
                // One owner's creations take turns here, on any replica, so that
                // together they cannot pass the limit.
                tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 11))", &[owner]).await.map_err(err)?;
                let row = tx
                    .query_one(
                        "SELECT count(*) FROM api_keys WHERE owner = $1 AND revoked_at_ms IS NULL
                         AND (expires_at_ms IS NULL OR expires_at_ms > $2)",
                        &[owner, &now_ms()],
                    )
                    .await
                    .map_err(err)?;
                if row.get::<_, i64>(0) >= i64::from(limit) {
                    return Ok(KeyCreated::OwnerFull);
                }
            }
            let inserted = tx
                .execute(
                    "INSERT INTO api_keys (name, \"user\", team, role, hash, created_at_ms, teams, expires_at_ms, owner)
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
                     WHERE NOT EXISTS (SELECT 1 FROM api_keys WHERE name = $1)
                     ON CONFLICT DO NOTHING",
                    &[
                        &e.name,
                        &e.user,
                        &e.team,
                        &e.role.as_str(),
                        &e.hash.as_slice(),
                        &key.created_at_ms,
                        &super::teams_column(e),
                        &e.expires_at_ms,
                        &e.owner,
                    ],
                )
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
            Ok(if inserted == 1 { KeyCreated::Created } else { KeyCreated::NameTaken })
        }
        .boxed()
    }

    fn key_name_used<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("keys");
            let row = client
                .query_one("SELECT EXISTS (SELECT 1 FROM api_keys WHERE name = $1)", &[&name])
                .await
                .map_err(err)?;
            Ok(row.get(0))
        }
        .boxed()
    }

    fn revoke_key<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("keys");
            let revoked = client
                .execute(
                    "UPDATE api_keys SET revoked_at_ms = $2 WHERE name = $1 AND revoked_at_ms IS NULL",
                    &[&name, &now_ms()],
                )
                .await
                .map_err(err)?;
            Ok(revoked > 0)
        }
        .boxed()
    }

    fn keys(&self) -> BoxFuture<'_, Result<Vec<StoredKey>, StoreError>> {
        async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT name, \"user\", team, role, hash, created_at_ms, teams, expires_at_ms, owner FROM api_keys
                     WHERE revoked_at_ms IS NULL AND (expires_at_ms IS NULL OR expires_at_ms > $1) ORDER BY name",
                )
                .await
                .map_err(err)?;
            let mut keys = Vec::new();
            trip("keys");
            for row in client.query(&statement, &[&now_ms()]).await.map_err(err)? {
                let name: String = row.get(0);
                let hash: Vec<u8> = row.get(4);
                let hash = hash.try_into().map_err(|_| StoreError(format!("key `{name}` has a malformed hash")))?;
                let role = super::parse_role(row.get(3))?;
                let team: String = row.get(2);
                let teams = super::parse_teams(&name, &team, row.get(6))?;
                let entry = crate::auth::KeyEntry {
                    name,
                    user: row.get(1),
                    team,
                    teams,
                    role,
                    hash,
                    expires_at_ms: row.get(7),
                    owner: row.get(8),
                };
                keys.push(StoredKey { entry, created_at_ms: row.get(5) });
            }
            Ok(keys)
        }
        .boxed()
    }

    fn create_session<'a>(&'a self, session: &'a SessionRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let client = self.client().await?;
            // Sessions past their time, and not held, go as new ones come.
            trip("sessions");
            client
                .execute(
                    "DELETE FROM sessions WHERE used_at_ms + ttl_ms <= $1 AND (lease IS NULL OR lease_until_ms <= $1)",
                    &[&session.created_at_ms],
                )
                .await
                .map_err(err)?;
            trip("sessions");
            client
                .execute(
                    r#"INSERT INTO sessions (id, "user", team, key, language, created_at_ms, used_at_ms, ttl_ms)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"#,
                    &[
                        &session.id,
                        &session.user,
                        &session.team,
                        &session.key,
                        &session.language.as_str(),
                        &session.created_at_ms,
                        &session.used_at_ms,
                        &session.ttl_ms,
                    ],
                )
                .await
                .map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn session<'a>(&'a self, id: &'a str, now_ms: i64) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>> {
        async move {
            let client = self.client().await?;
            let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1 AND used_at_ms + ttl_ms > $2");
            trip("sessions");
            let row = client.query_opt(&sql, &[&id, &now_ms]).await.map_err(err)?;
            row.as_ref().map(session_row).transpose()
        }
        .boxed()
    }

    fn sessions<'a>(&'a self, user: &'a str, now_ms: i64) -> BoxFuture<'a, Result<Vec<SessionRecord>, StoreError>> {
        async move {
            let client = self.client().await?;
            let sql = format!(
                r#"SELECT {SESSION_COLUMNS} FROM sessions WHERE "user" = $1 AND used_at_ms + ttl_ms > $2
                   ORDER BY created_at_ms, id"#
            );
            trip("sessions");
            let rows = client.query(&sql, &[&user, &now_ms]).await.map_err(err)?;
            rows.iter().map(session_row).collect()
        }
        .boxed()
    }

    fn session_totals<'a>(&'a self, user: &'a str, now_ms: i64) -> BoxFuture<'a, Result<(u64, u64), StoreError>> {
        async move {
            let client = self.client().await?;
            trip("sessions");
            let row = client
                .query_one(
                    r#"SELECT count(*), coalesce(sum(image_bytes), 0)::BIGINT FROM sessions
                       WHERE "user" = $1 AND used_at_ms + ttl_ms > $2"#,
                    &[&user, &now_ms],
                )
                .await
                .map_err(err)?;
            Ok((row.get::<_, i64>(0).max(0) as u64, row.get::<_, i64>(1).max(0) as u64))
        }
        .boxed()
    }

    fn end_session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("sessions");
            Ok(client.execute("DELETE FROM sessions WHERE id = $1", &[&id]).await.map_err(err)? > 0)
        }
        .boxed()
    }

    fn lease_session<'a>(
        &'a self,
        id: &'a str,
        owner: &'a Owner,
        lease: &'a str,
        until_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Lease, StoreError>> {
        async move {
            let client = self.client().await?;
            // One statement takes the lease and reads the session, or finds who holds it.
            let sql = format!(
                "WITH taken AS (
                     UPDATE sessions SET lease = $2, lease_until_ms = $3
                     WHERE id = $1 AND \"user\" = $5 AND team = $6 AND key = $7 AND used_at_ms + ttl_ms > $4
                       AND (lease IS NULL OR lease_until_ms <= $4)
                     RETURNING {SESSION_COLUMNS}
                 )
                 SELECT true, {SESSION_COLUMNS}, NULL::BIGINT FROM taken
                 UNION ALL
                 SELECT false, {SESSION_COLUMNS}, lease_until_ms FROM sessions
                 WHERE id = $1 AND \"user\" = $5 AND team = $6 AND key = $7 AND used_at_ms + ttl_ms > $4
                   AND NOT EXISTS (SELECT 1 FROM taken)"
            );
            trip("sessions");
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
                [&id, &lease, &until_ms, &now_ms, &owner.user, &owner.team, &owner.key];
            let Some(row) = client.query_opt(&sql, &params).await.map_err(err)? else {
                return Ok(Lease::Missing);
            };
            let taken: bool = row.get(0);
            Ok(if taken {
                Lease::Taken { session: session_at(&row, 1)? }
            } else {
                Lease::Busy { until_ms: row.get::<_, Option<i64>>(13).unwrap_or(now_ms) }
            })
        }
        .boxed()
    }

    fn session_memory<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoredMemory, StoreError>> {
        async move {
            let mut client = self.client().await?;
            // One snapshot, so the size and the pages are of the same moment.
            let tx = snapshot(&mut client).await?;
            trip("sessions");
            let size = tx
                .query_opt("SELECT memory_size FROM sessions WHERE id = $1", &[&id])
                .await
                .map_err(err)?
                .map_or(0, |row| row.get::<_, i64>(0));
            let rows = tx
                .query("SELECT page, seq, bytes FROM session_pages WHERE session_id = $1 ORDER BY page", &[&id])
                .await
                .map_err(err)?;
            let patches = tx
                .query("SELECT seq, bytes FROM session_patches WHERE session_id = $1 ORDER BY seq", &[&id])
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
            let pages: Vec<patch::SeqPage> =
                rows.iter().map(|row| (row.get::<_, i32>(0) as u32, row.get(1), row.get(2))).collect();
            let patches: Vec<(i64, Vec<u8>)> = patches.iter().map(|row| (row.get(0), row.get(1))).collect();
            Ok(StoredMemory { size: size as u64, pages: patch::applied(pages, &patches)? })
        }
        .boxed()
    }

    fn return_session<'a>(
        &'a self,
        id: &'a str,
        lease: &'a str,
        memory: Option<&'a MemoryWrite<'a>>,
        ran_at_ms: Option<i64>,
        files: &'a [FileChange],
    ) -> BoxFuture<'a, Result<Returned, StoreError>> {
        async move {
            let mut client = self.client().await?;
            let cap = memory.and_then(|memory| memory.cap.as_ref());
            let unwritten = memory.is_none_or(|memory| memory.pages.is_empty() && memory.patch.is_empty());
            if files.is_empty() && unwritten && cap.is_none() {
                // The common case: one statement, no transaction around it.
                let bytes = memory.map(|memory| to_i64(memory.bytes));
                let size = memory.map(|memory| to_i64(memory.size));
                let params: [&(dyn ToSql + Sync); 6] = [&id, &lease, &bytes, &ran_at_ms, &size, &0i64];
                trip("sessions");
                let returned = client.execute(RETURN, &params).await.map_err(err)?;
                return Ok(if returned == 1 { Returned::Done } else { Returned::NotHeld });
            }
            let tx = client.transaction().await.map_err(err)?;
            let returned = give_back(&tx, id, lease, memory, ran_at_ms, files).await?;
            tx.commit().await.map_err(err)?;
            Ok(returned)
        }
        .boxed()
    }

    fn session_files<'a>(&'a self, id: &'a str, data: bool) -> BoxFuture<'a, Result<Vec<StoredFile>, StoreError>> {
        async move {
            let mut client = self.client().await?;
            // One snapshot, so the list and the bytes are of the same moment.
            let tx = snapshot(&mut client).await?;
            trip("session_files");
            let rows = tx
                .query("SELECT path, dir, size, version FROM session_files WHERE session_id = $1 ORDER BY path", &[&id])
                .await
                .map_err(err)?;
            let mut files: Vec<StoredFile> = rows.iter().map(file_row).collect();
            if data {
                let chunks = tx
                    .prepare_cached(
                        "SELECT bytes FROM session_file_chunks WHERE session_id = $1 AND path = $2 ORDER BY seq",
                    )
                    .await
                    .map_err(err)?;
                for file in files.iter_mut().filter(|file| !file.dir) {
                    trip("session_files");
                    let rows = tx.query(&chunks, &[&id, &file.path]).await.map_err(err)?;
                    file.data = rows.iter().flat_map(|row| row.get::<_, Vec<u8>>(0)).collect();
                }
            }
            tx.commit().await.map_err(err)?;
            Ok(files)
        }
        .boxed()
    }

    fn session_file<'a>(&'a self, id: &'a str, path: &'a str) -> BoxFuture<'a, Result<Option<StoredFile>, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("session_files");
            let row = client
                .query_opt(
                    "SELECT path, dir, size, version FROM session_files WHERE session_id = $1 AND path = $2",
                    &[&id, &path],
                )
                .await
                .map_err(err)?;
            Ok(row.as_ref().map(file_row))
        }
        .boxed()
    }

    fn file_chunk<'a>(
        &'a self,
        id: &'a str,
        path: &'a str,
        version: i64,
        seq: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("session_files");
            let seq = i32::try_from(seq).unwrap_or(i32::MAX);
            let row = client
                .query_opt(
                    "SELECT c.bytes FROM session_file_chunks c
                     JOIN session_files f ON f.session_id = c.session_id AND f.path = c.path
                     WHERE c.session_id = $1 AND c.path = $2 AND f.version = $3 AND c.seq = $4",
                    &[&id, &path, &version, &seq],
                )
                .await
                .map_err(err)?;
            Ok(row.map(|row| row.get(0)))
        }
        .boxed()
    }

    fn take_mount_bytes<'a>(
        &'a self,
        owner: &'a Owner,
        mount: &'a str,
        day_ms: i64,
        bytes: u64,
        limit: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        async move {
            let client = self.client().await?;
            let (bytes, limit) = (to_i64(bytes), to_i64(limit));
            trip("mount_writes");
            // One statement: the row is added to only while it stays within the limit,
            // so concurrent writers on any replica cannot pass it together.
            let row = client
                .query_opt(
                    "INSERT INTO mount_writes (\"user\", team, key, mount, day_ms, bytes)
                     SELECT $1::TEXT, $2::TEXT, $3::TEXT, $4::TEXT, $5::BIGINT, $6::BIGINT WHERE $6::BIGINT <= $7::BIGINT
                     ON CONFLICT (\"user\", team, key, mount, day_ms)
                     DO UPDATE SET bytes = mount_writes.bytes + excluded.bytes
                     WHERE mount_writes.bytes + excluded.bytes <= $7::BIGINT
                     RETURNING bytes",
                    &[&owner.user, &owner.team, &owner.key, &mount, &day_ms, &bytes, &limit],
                )
                .await
                .map_err(err)?;
            if row.is_some() {
                return Ok(None);
            }
            let written = client
                .query_opt(
                    "SELECT bytes FROM mount_writes
                     WHERE \"user\" = $1 AND team = $2 AND key = $3 AND mount = $4 AND day_ms = $5",
                    &[&owner.user, &owner.team, &owner.key, &mount, &day_ms],
                )
                .await
                .map_err(err)?;
            Ok(Some(written.map_or(0, |row| row.get::<_, i64>(0).max(0) as u64)))
        }
        .boxed()
    }

    fn create_console_session<'a>(&'a self, session: &'a ConsoleSession) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let client = self.client().await?;
            trip("console_sessions");
            client
                .execute(
                    "WITH gone AS (DELETE FROM console_sessions WHERE expires_at_ms <= $3)
                     INSERT INTO console_sessions (id, subject, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4)",
                    &[&session.id, &session.subject, &session.created_at_ms, &session.expires_at_ms],
                )
                .await
                .map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn console_session<'a>(
        &'a self,
        id: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<ConsoleSession>, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("console_sessions");
            let row = client
                .query_opt(
                    "SELECT id, subject, created_at_ms, expires_at_ms FROM console_sessions
                     WHERE id = $1 AND expires_at_ms > $2 AND ended_at_ms IS NULL",
                    &[&id, &now_ms],
                )
                .await
                .map_err(err)?;
            Ok(row.map(|row| ConsoleSession {
                id: row.get(0),
                subject: row.get(1),
                created_at_ms: row.get(2),
                expires_at_ms: row.get(3),
            }))
        }
        .boxed()
    }

    fn end_console_session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let client = self.client().await?;
            trip("console_sessions");
            client
                .execute("UPDATE console_sessions SET ended_at_ms = $2 WHERE id = $1", &[&id, &now_ms()])
                .await
                .map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn create_handle<'a>(&'a self, handle: &'a HandleRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let client = self.client().await?;
            let sql = format!(
                "WITH gone AS (DELETE FROM execution_handles WHERE expires_at_ms <= $7)
                 INSERT INTO execution_handles ({HANDLE_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            );
            trip("execution_handles");
            client
                .execute(
                    &sql,
                    &[
                        &handle.id,
                        &handle.user,
                        &handle.team,
                        &handle.key,
                        &handle.session_id,
                        &handle.status.as_str(),
                        &handle.created_at_ms,
                        &handle.ended_at_ms,
                        &handle.expires_at_ms,
                        &handle.cancel_requested,
                        &handle.body,
                    ],
                )
                .await
                .map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn handle<'a>(&'a self, id: &'a str, now_ms: i64) -> BoxFuture<'a, Result<Option<HandleRecord>, StoreError>> {
        async move {
            let client = self.client().await?;
            let sql = format!("SELECT {HANDLE_COLUMNS} FROM execution_handles WHERE id = $1 AND expires_at_ms > $2");
            trip("execution_handles");
            let row = client.query_opt(&sql, &[&id, &now_ms]).await.map_err(err)?;
            row.as_ref().map(handle_row).transpose()
        }
        .boxed()
    }

    fn finish_handle<'a>(&'a self, id: &'a str, end: &'a HandleEnd) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let client = self.client().await?;
            trip("execution_handles");
            client
                .execute(
                    "UPDATE execution_handles SET status = $2, body = $3, ended_at_ms = $4, expires_at_ms = $5
                     WHERE id = $1",
                    &[&id, &end.status.as_str(), &end.body, &end.ended_at_ms, &end.expires_at_ms],
                )
                .await
                .map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn cancel_handle<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("execution_handles");
            let changed = client
                .execute(
                    "UPDATE execution_handles SET cancel_requested = true WHERE id = $1 AND status = 'running'",
                    &[&id],
                )
                .await
                .map_err(err)?;
            Ok(changed == 1)
        }
        .boxed()
    }

    fn pause<'a>(
        &'a self,
        paused: &'a PausedRecord,
        approvals: &'a [ApprovalRecord],
        max_pending: u32,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(err)?;
            // One user's pauses take turns, on any replica, so that together they
            // cannot pass the cap.
            trip("approvals");
            tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 11))", &[&paused.user]).await.map_err(err)?;
            let pending: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM approvals WHERE user_name = $1 AND status = 'pending' AND expires_at_ms > $2",
                    &[&paused.user, &paused.paused_at_ms],
                )
                .await
                .map_err(err)?
                .get(0);
            if pending as u64 + approvals.len() as u64 > u64::from(max_pending) {
                return Ok(false);
            }
            trip("paused_executions");
            tx.execute(
                &format!(
                    "INSERT INTO paused_executions ({PAUSED_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)
                     ON CONFLICT (id) DO UPDATE SET context = EXCLUDED.context, state = EXCLUDED.state,
                       memory = EXCLUDED.memory, paused_at_ms = EXCLUDED.paused_at_ms, claimed_at_ms = NULL"
                ),
                &[
                    &paused.id,
                    &paused.user,
                    &paused.team,
                    &paused.key,
                    &paused.context,
                    &paused.state,
                    &paused.memory,
                    &paused.paused_at_ms,
                ],
            )
            .await
            .map_err(err)?;
            for a in approvals {
                trip("approvals");
                tx.execute(
                    &format!(
                        "INSERT INTO approvals ({APPROVAL_COLUMNS})
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                    ),
                    &[
                        &a.id,
                        &a.execution_id,
                        &i64::from(a.call_id),
                        &a.user,
                        &a.team,
                        &a.key,
                        &a.tool,
                        &a.args,
                        &a.detail,
                        &a.status.as_str(),
                        &a.created_at_ms,
                        &a.expires_at_ms,
                        &a.decided_by,
                        &a.decided_at_ms,
                        &a.reason,
                    ],
                )
                .await
                .map_err(err)?;
            }
            tx.commit().await.map_err(err)?;
            Ok(true)
        }
        .boxed()
    }

    fn approval<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<ApprovalRecord>, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("approvals");
            let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1");
            let row = client.query_opt(&sql, &[&id]).await.map_err(err)?;
            row.as_ref().map(approval_row).transpose()
        }
        .boxed()
    }

    fn approvals<'a>(&'a self, query: &'a ApprovalQuery) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("approvals");
            let sql = format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals
                 WHERE ($1::TEXT IS NULL OR status = $1) AND ($2::TEXT IS NULL OR execution_id = $2)
                   AND created_at_ms >= $3 AND expires_at_ms <= $5
                 ORDER BY created_at_ms DESC, id DESC LIMIT $4"
            );
            let rows = client
                .query(
                    &sql,
                    &[
                        &query.status.map(ApprovalStatus::as_str),
                        &query.execution_id,
                        &query.since_ms.unwrap_or(0),
                        &i64::from(query.limit),
                        &query.expired_by_ms.unwrap_or(i64::MAX),
                    ],
                )
                .await
                .map_err(err)?;
            rows.iter().map(approval_row).collect()
        }
        .boxed()
    }

    fn decide_approval<'a>(
        &'a self,
        id: &'a str,
        decided: &'a Decided,
    ) -> BoxFuture<'a, Result<Option<ApprovalRecord>, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("approvals");
            let sql = format!(
                "UPDATE approvals SET status = $2, decided_by = $3, reason = $4, decided_at_ms = $5
                 WHERE id = $1 AND status = 'pending'
                   AND CASE WHEN $2 = 'expired' THEN expires_at_ms <= $5 ELSE expires_at_ms > $5 END
                 RETURNING {APPROVAL_COLUMNS}"
            );
            let row = client
                .query_opt(&sql, &[&id, &decided.status.as_str(), &decided.by, &decided.reason, &decided.at_ms])
                .await
                .map_err(err)?;
            row.as_ref().map(approval_row).transpose()
        }
        .boxed()
    }

    fn claim_paused<'a>(
        &'a self,
        id: &'a str,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> BoxFuture<'a, Result<Option<PausedRecord>, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("paused_executions");
            let sql = format!(
                "UPDATE paused_executions SET claimed_at_ms = $2
                 WHERE id = $1 AND (claimed_at_ms IS NULL OR claimed_at_ms < $3)
                 RETURNING {PAUSED_COLUMNS}"
            );
            let row = client.query_opt(&sql, &[&id, &now_ms, &stale_before_ms]).await.map_err(err)?;
            Ok(row.as_ref().map(paused_row))
        }
        .boxed()
    }

    fn release_paused<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let client = self.client().await?;
            trip("paused_executions");
            client
                .execute("UPDATE paused_executions SET claimed_at_ms = NULL WHERE id = $1", &[&id])
                .await
                .map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn end_paused<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let client = self.client().await?;
            trip("paused_executions");
            client.execute("DELETE FROM paused_executions WHERE id = $1", &[&id]).await.map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn resumable<'a>(&'a self, stale_before_ms: i64) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            let client = self.client().await?;
            trip("paused_executions");
            let rows = client
                .query(
                    "SELECT p.id FROM paused_executions p
                     WHERE (p.claimed_at_ms IS NULL OR p.claimed_at_ms < $1)
                       AND NOT EXISTS (SELECT 1 FROM approvals a WHERE a.execution_id = p.id AND a.status = 'pending')
                     ORDER BY p.paused_at_ms LIMIT 100",
                    &[&stale_before_ms],
                )
                .await
                .map_err(err)?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        }
        .boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let client = self.client().await?;
            trip("ping");
            client.simple_query("SELECT 1").await.map_err(err)?;
            Ok(())
        }
        .boxed()
    }
}
