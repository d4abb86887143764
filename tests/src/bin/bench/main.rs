//! Benchmarks of agent-webhooks against the physical floor: the same SQL sent without the ORM.
//!
//! `cargo run --release -p integration-tests --bin bench -- [--quick] [--json] [--backends sqlite,postgres,mysql] [--only worker,...]`
//!
//! Every figure that matters is a ratio measured within one run (large/empty, service/raw,
//! 1M/10k, deep/first page), because absolute times on a shared 2-core machine drift from run
//! to run. `--quick` shrinks every size, sample count and cycle count, aiming at under a minute
//! in the debug build CI runs (docs/benchmarks.md section 10 has the measured times and the
//! load they were measured at); CI runs it to keep the harness from rotting and asserts
//! nothing about speed.

use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use agent_webhooks::deliveries::{self, HistoryQuery};
use agent_webhooks::retry::AttemptOutcome;
use agent_webhooks::secret_box::KeyRing;
use agent_webhooks::settings::WebhookSettings;
use agent_webhooks::signing;
use agent_webhooks::url_policy::UrlPolicy;
use agent_webhooks::webhook_secret::WebhookSecret;
use chrono::{DateTime, Utc};
use clap::Parser;
use integration_tests::{Backend, TestDb, seed_agent};
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::{self, Row};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use secrecy::SecretString;
use serde::Serialize;

#[derive(Parser)]
#[command(about = "agent-webhooks benchmarks")]
struct Args {
    /// Small sizes, for a smoke run (aimed at under a minute in a debug build).
    #[arg(long)]
    quick: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Backends to run, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres,mysql")]
    backends: Vec<String>,
    /// Sections to run, comma separated (migration, throughput, claim, history, worker,
    /// batched, scale, cpu); all when not given.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Deliveries in the scale section (PostgreSQL only; a tenth of them is pruned, twice).
    #[arg(long, default_value_t = 10_000_000)]
    scale_rows: usize,
}

/// One measured figure.
#[derive(Serialize)]
struct Figure {
    backend: &'static str,
    section: &'static str,
    name: String,
    value: f64,
    unit: &'static str,
}

struct Report(Vec<Figure>);

impl Report {
    fn add(
        &mut self,
        backend: Backend,
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) {
        self.push(label(backend), section, name.into(), value, unit);
    }

    fn push(
        &mut self,
        backend: &'static str,
        section: &'static str,
        name: String,
        value: f64,
        unit: &'static str,
    ) {
        let figure = Figure {
            backend,
            section,
            name,
            value,
            unit,
        };
        eprintln!(
            "  {:<9} {:<10} {:<48} {:>12.3} {}",
            figure.backend, figure.section, figure.name, figure.value, figure.unit
        );
        self.0.push(figure);
    }
}

fn label(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
        Backend::MySql => "mariadb",
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index.min(samples.len() - 1)]
}

mod procstat;
mod worker;

fn main() -> ExitCode {
    let args = Args::parse();
    let backends: Vec<Backend> = args
        .backends
        .iter()
        .map(|b| match b.as_str() {
            "sqlite" => Backend::Sqlite,
            "postgres" => Backend::Postgres,
            "mysql" | "mariadb" => Backend::MySql,
            other => {
                eprintln!("unknown backend {other}: expected sqlite, postgres or mysql");
                std::process::exit(2);
            }
        })
        .collect();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run_then_clean_up(args, backends))
}

/// Runs the benchmarks as a task, so that a panic (every failed step panics) or Ctrl-C ends the
/// task but not this function, which then drops every database the run created.
async fn run_then_clean_up(args: Args, backends: Vec<Backend>) -> ExitCode {
    let mut run = tokio::spawn(run(args, backends));
    let code = tokio::select! {
        outcome = &mut run => match outcome {
            Ok(()) => ExitCode::SUCCESS,
            // The panic hook already printed the message and where.
            Err(_) => {
                eprintln!("benchmark failed");
                ExitCode::from(101)
            }
        },
        // A failure to install the handler only disables this branch.
        Ok(()) = tokio::signal::ctrl_c() => {
            eprintln!("interrupted");
            run.abort();
            // Wait until the task is gone, so its connections and SQLite files are released.
            let _ = run.await;
            ExitCode::from(130)
        }
    };
    match integration_tests::drop_created_databases().await {
        Ok(names) => {
            eprintln!("dropped {} databases: {}", names.len(), names.join(" "));
            code
        }
        Err(e) => {
            eprintln!(
                "cannot drop every database this run created ({e}); \
                 scripts/drop-test-databases drops the rest"
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, backends: Vec<Backend>) {
    let mut report = Report(Vec::new());
    let q = args.quick;
    // The quick run drops a server backend's databases while the next backend runs (a
    // PostgreSQL drop waits for a checkpoint); the full run drops them at the end, so that no
    // drop competes with a measurement.
    let mut drops = Vec::new();
    let on = |section: &str| args.only.is_empty() || args.only.iter().any(|s| s == section);
    for &backend in &backends {
        eprintln!("== {} {}", label(backend), server_version(backend).await);
        if on("migration") {
            migration_on_existing_tables(
                &mut report,
                backend,
                if q {
                    &[0, 5_000]
                } else {
                    &[0, 100_000, 1_000_000]
                },
                if q { 1 } else { 3 },
            )
            .await;
        }
        if on("throughput") {
            // One round in the quick run: every round costs three fresh databases.
            throughput(
                &mut report,
                backend,
                if q { 100 } else { 5_000 },
                if q { 1 } else { 2 },
            )
            .await;
        }
        if on("claim") {
            claim_latency(
                &mut report,
                backend,
                if q {
                    &[2_000, 10_000]
                } else {
                    &[10_000, 1_000_000]
                },
                if q { 20 } else { 200 },
            )
            .await;
        }
        if on("history") {
            history_paging(
                &mut report,
                backend,
                if q { 5_000 } else { 100_000 },
                if q { 50 } else { 1_000 },
            )
            .await;
        }
        if on("worker") {
            worker::figures(&mut report, backend, q).await;
        }
        if on("batched") {
            batched_writes(
                &mut report,
                backend,
                if q { 100 } else { 10_000 },
                if q { 1 } else { 2 },
            )
            .await;
        }
        if backend == Backend::Postgres && on("scale") {
            if q {
                scale(&mut report, 20_000, 2_000, 20).await;
            } else {
                scale(&mut report, args.scale_rows, args.scale_rows / 10, 200).await;
            }
        }
        if q && backend != Backend::Sqlite {
            drops.push(tokio::spawn(async move {
                integration_tests::drop_created_databases_of(&[backend]).await
            }));
        }
    }
    for drop in drops {
        // What failed here stays listed, for the final clean-up to retry.
        match drop.await {
            Ok(Ok(names)) => eprintln!("dropped {} databases during the run", names.len()),
            Ok(Err(e)) => eprintln!("cannot drop some databases during the run: {e}"),
            Err(e) => eprintln!("the drop task failed: {e}"),
        }
    }
    if on("cpu") {
        cpu_bound(&mut report, if q { 2_000 } else { 20_000 });
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.0).unwrap_or_default()
        );
    } else {
        println!(
            "{:<9} {:<10} {:<48} {:>12} unit",
            "backend", "section", "figure", "value"
        );
        for f in &report.0 {
            println!(
                "{:<9} {:<10} {:<48} {:>12.3} {}",
                f.backend, f.section, f.name, f.value, f.unit
            );
        }
    }
}

/// The server's version string, for the record; asked on the administrative connection, so
/// that it costs no database of its own.
async fn server_version(backend: Backend) -> String {
    let query = match backend {
        Backend::Sqlite => "SELECT 'SQLite ' || sqlite_version()",
        Backend::Postgres => "SELECT version()",
        Backend::MySql => "SELECT CONCAT('MariaDB/MySQL ', version())",
    };
    let admin = integration_tests::admin_connection(backend)
        .await
        .expect("administrative connection");
    let row = admin
        .query_one_raw(sea_orm::Statement::from_string(
            admin.get_database_backend(),
            query,
        ))
        .await
        .expect("server version")
        .expect("one row");
    row.try_get_by_index::<String>(0).expect("version string")
}

/// Inserts `n` agents of `org-1` with one SQL statement (no round trip per row).
async fn seed_agents(t: &TestDb, n: usize) {
    if n == 0 {
        return;
    }
    let sql = match t.backend {
        Backend::Postgres => format!(
            "INSERT INTO agents (id, organization_id, name, description, created_at) \
             SELECT 'agent-' || g, 'org-1', 'agent ' || g, 'seeded', now() - make_interval(secs => g) \
             FROM generate_series(1, {n}) g"
        ),
        Backend::Sqlite => format!(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {n}) \
             INSERT INTO agents (id, organization_id, name, description, created_at) \
             SELECT 'agent-' || n, 'org-1', 'agent ' || n, 'seeded', \
             strftime('%Y-%m-%d %H:%M:%f+00:00', 'now', '-' || n || ' seconds') FROM g"
        ),
        Backend::MySql => format!(
            "INSERT INTO agents (id, organization_id, name, description, created_at) \
             SELECT CONCAT('agent-', seq), 'org-1', CONCAT('agent ', seq), 'seeded', \
             UTC_TIMESTAMP(6) - INTERVAL seq SECOND FROM seq_1_to_{n}"
        ),
    };
    t.exec(&sql).await;
}

/// Inserts `n` deliveries of `agents` agents (`agent-0`…), 1 % of them due now, the rest
/// delivered; `created_at` one second apart.
async fn seed_deliveries(t: &TestDb, n: usize, agents: usize) {
    t.exec(&seed_deliveries_sql(t.backend, n, agents)).await;
    analyze_deliveries(t).await;
}

/// The one `INSERT … SELECT` of [`seed_deliveries`].
fn seed_deliveries_sql(backend: Backend, n: usize, agents: usize) -> String {
    match backend {
        Backend::Postgres => format!(
            "INSERT INTO webhook_deliveries (id, organization_id, agent_id, event_id, event_type, \
             webhook_url, attempt_count, created_at, delivered_at, next_retry_at) \
             SELECT 'dlv-' || lpad(g::text, 9, '0'), 'org-1', 'agent-' || (g % {agents}), 'evt-' || g, \
             'run.completed', 'https://hooks.example.com/x', 1, now() - make_interval(secs => g), \
             CASE WHEN g % 100 = 0 THEN NULL ELSE now() END, \
             CASE WHEN g % 100 = 0 THEN now() - interval '1 minute' ELSE NULL END \
             FROM generate_series(1, {n}) g"
        ),
        Backend::Sqlite => format!(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {n}) \
             INSERT INTO webhook_deliveries (id, organization_id, agent_id, event_id, event_type, \
             webhook_url, attempt_count, created_at, delivered_at, next_retry_at) \
             SELECT printf('dlv-%09d', n), 'org-1', 'agent-' || (n % {agents}), 'evt-' || n, \
             'run.completed', 'https://hooks.example.com/x', 1, \
             strftime('%Y-%m-%d %H:%M:%f+00:00', 'now', '-' || n || ' seconds'), \
             CASE WHEN n % 100 = 0 THEN NULL ELSE strftime('%Y-%m-%d %H:%M:%f+00:00', 'now') END, \
             CASE WHEN n % 100 = 0 THEN strftime('%Y-%m-%d %H:%M:%f+00:00', 'now', '-60 seconds') ELSE NULL END \
             FROM g"
        ),
        Backend::MySql => format!(
            "INSERT INTO webhook_deliveries (id, organization_id, agent_id, event_id, event_type, \
             webhook_url, attempt_count, created_at, delivered_at, next_retry_at) \
             SELECT CONCAT('dlv-', LPAD(seq, 9, '0')), 'org-1', CONCAT('agent-', seq % {agents}), \
             CONCAT('evt-', seq), 'run.completed', 'https://hooks.example.com/x', 1, \
             UTC_TIMESTAMP(6) - INTERVAL seq SECOND, \
             IF(seq % 100 = 0, NULL, UTC_TIMESTAMP(6)), \
             IF(seq % 100 = 0, UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE, NULL) FROM seq_1_to_{n}"
        ),
    }
}

async fn analyze_deliveries(t: &TestDb) {
    let analyze = match t.backend {
        Backend::Postgres => "ANALYZE webhook_deliveries",
        Backend::MySql => "ANALYZE TABLE webhook_deliveries",
        Backend::Sqlite => "ANALYZE",
    };
    t.exec(analyze).await;
}

/// [`seed_deliveries`] for millions of rows on PostgreSQL: the secondary indexes and foreign
/// keys of `webhook_deliveries` are dropped, the rows inserted (primary key kept), and the
/// indexes and keys created again from their definitions as the migrations left them
/// (`pg_indexes`, `pg_get_constraintdef`), in one transaction. Building an index once is a
/// sort; maintaining it row by row is a random B-tree insert per row, and each row's foreign
/// keys a lookup: at 1M rows 13 s instead of 45 s. Then `VACUUM (ANALYZE)`, the state
/// autovacuum keeps a large table in. The indexes come out densely packed, as after a
/// `REINDEX`, not with the slack of years of inserts.
async fn seed_deliveries_then_index(t: &TestDb, n: usize, agents: usize) {
    assert_eq!(t.backend, Backend::Postgres, "a PostgreSQL seed");
    let insert = seed_deliveries_sql(t.backend, n, agents);
    t.exec(&format!(
        "DO $seed$ DECLARE indexes text[]; keys text[]; d text; pkey name; BEGIN \
         SELECT conname INTO pkey FROM pg_constraint \
           WHERE conrelid = 'webhook_deliveries'::regclass AND contype = 'p'; \
         PERFORM set_config('maintenance_work_mem', '256MB', true); \
         SELECT array_agg(indexdef) INTO indexes FROM pg_indexes \
           WHERE tablename = 'webhook_deliveries' AND indexname <> pkey; \
         SELECT array_agg(format('ALTER TABLE webhook_deliveries ADD CONSTRAINT %I %s', \
           conname, pg_get_constraintdef(oid))) INTO keys FROM pg_constraint \
           WHERE conrelid = 'webhook_deliveries'::regclass AND contype = 'f'; \
         FOR d IN SELECT format('ALTER TABLE webhook_deliveries DROP CONSTRAINT %I', conname) \
           FROM pg_constraint WHERE conrelid = 'webhook_deliveries'::regclass AND contype = 'f' \
           LOOP EXECUTE d; END LOOP; \
         FOR d IN SELECT format('DROP INDEX %I', indexname) FROM pg_indexes \
           WHERE tablename = 'webhook_deliveries' AND indexname <> pkey \
           LOOP EXECUTE d; END LOOP; \
         {insert}; \
         FOREACH d IN ARRAY indexes LOOP EXECUTE d; END LOOP; \
         FOREACH d IN ARRAY keys LOOP EXECUTE d; END LOOP; \
         END $seed$"
    ))
    .await;
    // `VACUUM` too: autovacuum would otherwise start on the new rows while claims are timed.
    t.exec("VACUUM (ANALYZE) webhook_deliveries").await;
}

async fn org(t: &TestDb) {
    t.exec("INSERT INTO organizations (id, name) VALUES ('org-1', 'Acme')")
        .await;
}

/// 1. `up` and `down` of the webhook migration on `agents` tables of growing size, the median
///    of `cycles` up/down cycles per size.
async fn migration_on_existing_tables(
    report: &mut Report,
    backend: Backend,
    sizes: &[usize],
    cycles: usize,
) {
    let mut empty = (Duration::ZERO, Duration::ZERO);
    for &rows in sizes {
        let t = TestDb::fresh(backend).await;
        Migrator::up(&t.db, Some(1)).await.expect("baseline");
        org(&t).await;
        seed_agents(&t, rows).await;
        // The median of several up/down cycles on the same table (three in the full run): one
        // sample is at the mercy of a checkpoint or autovacuum on a shared machine.
        let (mut ups, mut downs) = (Vec::new(), Vec::new());
        for _ in 0..cycles {
            let start = Instant::now();
            Migrator::up(&t.db, Some(1))
                .await
                .expect("webhook migration up");
            ups.push(start.elapsed());
            let start = Instant::now();
            Migrator::down(&t.db, Some(1))
                .await
                .expect("webhook migration down");
            downs.push(start.elapsed());
        }
        let (up, down) = (percentile(&mut ups, 0.5), percentile(&mut downs, 0.5));
        if rows == 0 {
            empty = (up, down);
        }
        report.add(
            backend,
            "migration",
            format!("up, {rows} agents"),
            ms(up),
            "ms",
        );
        report.add(
            backend,
            "migration",
            format!("down, {rows} agents"),
            ms(down),
            "ms",
        );
        if rows > 0 {
            report.add(
                backend,
                "migration",
                format!("up ratio {rows}/empty"),
                up.as_secs_f64() / empty.0.as_secs_f64(),
                "x",
            );
            report.add(
                backend,
                "migration",
                format!("down ratio {rows}/empty"),
                down.as_secs_f64() / empty.1.as_secs_f64(),
                "x",
            );
        }
    }
}

/// Our SQL text is built from constants and placeholders only, never from data.
fn safe(text: &str) -> sqlx::AssertSqlSafe<&str> {
    sqlx::AssertSqlSafe(text)
}

/// SQL of one backend from `$n` placeholders (PostgreSQL) to `?` (SQLite, MySQL).
fn sql(backend: Backend, text: &str) -> String {
    match backend {
        Backend::Postgres => text.to_owned(),
        _ => {
            let mut out = String::with_capacity(text.len());
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '$' {
                    while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                        chars.next();
                    }
                    out.push('?');
                } else {
                    out.push(c);
                }
            }
            out
        }
    }
}

/// A delivery row decoded the way the ORM decodes it: every column.
#[allow(dead_code)]
struct RawDelivery {
    id: String,
    organization_id: String,
    agent_id: String,
    event_id: String,
    event_type: String,
    webhook_url: String,
    status_code: Option<i32>,
    error_message: Option<String>,
    attempt_count: i32,
    created_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
    next_retry_at: Option<DateTime<Utc>>,
    payload: Option<Vec<u8>>,
}

const COLUMNS: &str = "id, organization_id, agent_id, event_id, event_type, webhook_url, status_code, \
                       error_message, attempt_count, created_at, delivered_at, next_retry_at, payload";

macro_rules! decode_delivery {
    ($row:expr) => {
        RawDelivery {
            id: $row.try_get("id").expect("id"),
            organization_id: $row.try_get("organization_id").expect("organization_id"),
            agent_id: $row.try_get("agent_id").expect("agent_id"),
            event_id: $row.try_get("event_id").expect("event_id"),
            event_type: $row.try_get("event_type").expect("event_type"),
            webhook_url: $row.try_get("webhook_url").expect("webhook_url"),
            status_code: $row.try_get("status_code").expect("status_code"),
            error_message: $row.try_get("error_message").expect("error_message"),
            attempt_count: $row.try_get("attempt_count").expect("attempt_count"),
            created_at: $row.try_get("created_at").expect("created_at"),
            delivered_at: $row.try_get("delivered_at").expect("delivered_at"),
            next_retry_at: $row.try_get("next_retry_at").expect("next_retry_at"),
            payload: $row.try_get("payload").expect("payload"),
        }
    };
}

/// Runs `$body` with `$pool` bound to the backend's sqlx pool under the ORM connection.
macro_rules! with_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db.get_database_backend() {
            sea_orm::DbBackend::Postgres => {
                let $pool = $db.get_postgres_connection_pool();
                $body
            }
            sea_orm::DbBackend::MySql => {
                let $pool = $db.get_mysql_connection_pool();
                $body
            }
            _ => {
                let $pool = $db.get_sqlite_connection_pool();
                $body
            }
        }
    };
}

/// The statements `deliveries::enqueue` sends, without the ORM.
async fn raw_enqueue(
    db: &DatabaseConnection,
    backend: Backend,
    agent: &str,
    event: &str,
    now: DateTime<Utc>,
) {
    let insert = match backend {
        Backend::MySql => format!(
            "INSERT INTO webhook_deliveries ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, 0, $7, NULL, $8, $9) \
             ON DUPLICATE KEY UPDATE id = id"
        ),
        _ => format!(
            "INSERT INTO webhook_deliveries ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, 0, $7, NULL, $8, $9) \
             ON CONFLICT (agent_id, event_id) DO NOTHING"
        ),
    };
    let insert = sql(backend, &insert);
    let find_agent = sql(
        backend,
        "SELECT id, organization_id, name, description, created_at, updated_at, is_deleted, \
        webhook_url, webhook_secret, webhook_events, webhook_enabled FROM agents WHERE id = $1",
    );
    let find = sql(
        backend,
        &format!("SELECT {COLUMNS} FROM webhook_deliveries WHERE agent_id = $1 AND event_id = $2"),
    );
    let id = format!("dlv-{}", uuid::Uuid::now_v7());
    with_pool!(db, |pool| {
        let agent_row = sqlx::query(safe(&find_agent))
            .bind(agent)
            .fetch_one(pool)
            .await
            .expect("agent");
        let url: Option<String> = agent_row.try_get("webhook_url").expect("url");
        let org: String = agent_row.try_get("organization_id").expect("org");
        sqlx::query(safe(&insert))
            .bind(&id)
            .bind(&org)
            .bind(agent)
            .bind(event)
            .bind("run.completed")
            .bind(url.unwrap_or_default())
            .bind(now)
            .bind(now)
            // What `enqueue` stores for the bench's `{"n": 1}` payload.
            .bind(&br#"{"n":1}"#[..])
            .execute(pool)
            .await
            .expect("insert");
        let row = sqlx::query(safe(&find))
            .bind(agent)
            .bind(event)
            .fetch_one(pool)
            .await
            .expect("find");
        let _ = decode_delivery!(row);
    })
}

/// The statements `deliveries::claim_due` sends (minus the exhausted-lease sweep), without the
/// ORM; returns `(id, attempt)` of each claimed row.
async fn raw_claim(
    db: &DatabaseConnection,
    backend: Backend,
    now: DateTime<Utc>,
    limit: i64,
    lease_until: DateTime<Utc>,
) -> Vec<(String, i32)> {
    let pick = "SELECT id FROM webhook_deliveries WHERE next_retry_at <= $1 AND delivered_at IS NULL \
                AND attempt_count < $2 ORDER BY next_retry_at LIMIT $3";
    let set = "UPDATE webhook_deliveries SET next_retry_at = $1, attempt_count = attempt_count + 1, \
               status_code = NULL, error_message = NULL";
    match backend {
        Backend::MySql => {
            let pool = db.get_mysql_connection_pool();
            let pick_locked = sql(backend, &format!("{pick} FOR UPDATE SKIP LOCKED"));
            let mut txn = pool.begin().await.expect("begin");
            let ids: Vec<String> = sqlx::query(safe(&pick_locked))
                .bind(now)
                .bind(8)
                .bind(limit)
                .fetch_all(&mut *txn)
                .await
                .expect("pick")
                .iter()
                .map(|r| r.try_get::<String, _>(0).expect("id"))
                .collect();
            if ids.is_empty() {
                txn.commit().await.expect("commit");
                return Vec::new();
            }
            let list = vec!["?"; ids.len()].join(", ");
            let update_sql = format!("{} WHERE id IN ({list})", sql(backend, set));
            let mut update = sqlx::query(safe(&update_sql)).bind(lease_until);
            for id in &ids {
                update = update.bind(id);
            }
            update.execute(&mut *txn).await.expect("lease");
            let select = format!("SELECT {COLUMNS} FROM webhook_deliveries WHERE id IN ({list})");
            let mut fetch = sqlx::query(safe(&select));
            for id in &ids {
                fetch = fetch.bind(id);
            }
            let rows = fetch.fetch_all(&mut *txn).await.expect("fetch");
            txn.commit().await.expect("commit");
            rows.iter()
                .map(|r| {
                    let d = decode_delivery!(r);
                    (d.id, d.attempt_count)
                })
                .collect()
        }
        _ => {
            let lock = if backend == Backend::Postgres {
                " FOR UPDATE SKIP LOCKED"
            } else {
                ""
            };
            let text = sql(
                backend,
                &format!(
                    "{set} WHERE id IN ({pick_shifted}{lock}) RETURNING {COLUMNS}",
                    pick_shifted = pick
                        .replace("$3", "$4")
                        .replace("$2", "$3")
                        .replace("$1", "$2")
                ),
            );
            with_pool!(db, |pool| {
                let rows = sqlx::query(safe(&text))
                    .bind(lease_until)
                    .bind(now)
                    .bind(8)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                    .expect("claim");
                rows.iter()
                    .map(|r| {
                        let d = decode_delivery!(r);
                        (d.id, d.attempt_count)
                    })
                    .collect()
            })
        }
    }
}

/// The statement `deliveries::record_outcome` sends for a success, without the ORM.
async fn raw_record(
    db: &DatabaseConnection,
    backend: Backend,
    id: &str,
    attempt: i32,
    now: DateTime<Utc>,
) {
    let text = sql(
        backend,
        "UPDATE webhook_deliveries SET status_code = $1, delivered_at = $2, next_retry_at = NULL \
        WHERE id = $3 AND attempt_count = $4 AND delivered_at IS NULL AND status_code IS NULL AND error_message IS NULL",
    );
    with_pool!(db, |pool| {
        let done = sqlx::query(safe(&text))
            .bind(200)
            .bind(now)
            .bind(id)
            .bind(attempt)
            .execute(pool)
            .await
            .expect("record");
        assert_eq!(done.rows_affected(), 1, "raw record of {id}");
    })
}

/// Wall time, backend CPU and operations of one measured operation, summed over rounds.
#[derive(Clone, Copy, Default)]
struct Tally {
    time: Duration,
    server: Duration,
    ops: usize,
}

impl Tally {
    /// Adds one run of `ops` operations as [`procstat::measured`] returned it.
    fn add(&mut self, ops: usize, (time, _own, server): (Duration, Duration, Duration)) {
        self.time += time;
        self.server += server;
        self.ops += ops;
    }

    fn per_second(&self) -> f64 {
        self.ops as f64 / self.time.as_secs_f64()
    }

    /// Backend CPU per operation, in microseconds; `None` below ten clock ticks (100 ms), where
    /// the figure would be mostly rounding (the `--quick` sizes).
    fn cpu_us(&self) -> Option<f64> {
        (self.server >= Duration::from_millis(100))
            .then(|| self.server.as_secs_f64() * 1e6 / self.ops as f64)
    }
}

/// The three paths of the throughput section. `Service` and `Raw` send the same statements
/// (enqueue, claim, record one outcome); `Lean` is the service's cheaper calls for the same
/// work: `enqueue_for_agent`, `enqueue_many` and `record_outcomes`.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Service,
    Raw,
    Lean,
}

/// 2. Deliveries per second through the service API and as raw SQL, one connection, in turn;
///    on PostgreSQL also the backend's CPU per operation (`/proc/<pid>/stat` of the
///    connection's backend), which tells what a statement costs the server apart from the
///    round trip. The lean path's operations are measured the same way: `enqueue_for_agent`,
///    `enqueue_many` and `record_outcomes` (batches of 100, per row). `n` deliveries per path
///    per round.
async fn throughput(report: &mut Report, backend: Backend, n: usize, rounds: usize) {
    let settings = WebhookSettings::default();
    let success = AttemptOutcome::Status {
        code: 200,
        retry_after: None,
    };
    let payload = json!({"n": 1});
    // tallies[path][op]: Service and Raw enqueue, claim, record; Lean enqueue_for_agent,
    // enqueue_many, record_outcomes.
    let mut tallies = [[Tally::default(); 3]; 3];
    // The paths alternate in rounds on separate databases, so drift on a shared machine hits
    // them alike.
    for round in 0..rounds {
        for (p, path) in [Path::Service, Path::Raw, Path::Lean]
            .into_iter()
            .enumerate()
        {
            let t = TestDb::migrated_with(backend, 1).await;
            for a in 0..10 {
                seed_agent(&t, &format!("agent-{a}"), &[]).await;
            }
            let tally = &mut tallies[p];
            let now = Utc::now();
            let event = |i: usize| (format!("agent-{}", i % 10), format!("evt-{round}-{i}"));
            if path == Path::Lean {
                lean_path(&t, &mut *tally, n, round, now).await;
                continue;
            }
            let raw = path == Path::Raw;
            let enqueue = procstat::measured(&t, async {
                for i in 0..n {
                    let (agent, event) = event(i);
                    if raw {
                        raw_enqueue(&t.db, backend, &agent, &event, now).await;
                    } else {
                        deliveries::enqueue(
                            &t.db,
                            &settings,
                            &agent,
                            &event,
                            "run.completed",
                            &payload,
                            now,
                        )
                        .await
                        .expect("enqueue");
                    }
                }
            })
            .await;
            tally[0].add(n, enqueue);
            let mut claimed: Vec<(String, i32, Option<deliveries::Claim>)> = Vec::new();
            let claim = procstat::measured(&t, async {
                loop {
                    let batch: Vec<_> = if raw {
                        raw_claim(
                            &t.db,
                            backend,
                            now,
                            100,
                            now + chrono::Duration::seconds(60),
                        )
                        .await
                        .into_iter()
                        .map(|(id, attempt)| (id, attempt, None))
                        .collect()
                    } else {
                        deliveries::claim_due(&t.db, &settings, now, 100)
                            .await
                            .expect("claim")
                            .into_iter()
                            .map(|c| (c.delivery.id.clone(), c.attempt, Some(c)))
                            .collect()
                    };
                    if batch.is_empty() {
                        break;
                    }
                    claimed.extend(batch);
                }
            })
            .await;
            assert_eq!(claimed.len(), n, "every delivery claimed once");
            tally[1].add(n, claim);
            let record = procstat::measured(&t, async {
                for (id, attempt, claim) in &claimed {
                    match claim {
                        Some(claim) => {
                            deliveries::record_outcome(&t.db, &settings, claim, &success, now)
                                .await
                                .expect("record");
                        }
                        None => raw_record(&t.db, backend, id, *attempt, now).await,
                    }
                }
            })
            .await;
            tally[2].add(n, record);
        }
    }
    // Backend CPU only where the server's processes are this database's alone: SQLite runs
    // in this process, and MariaDB's threads are not attributed to databases.
    let with_cpu = backend == Backend::Postgres;
    let [service, raw, lean] = &tallies;
    for (i, op) in ["enqueue", "claim (batches of 100)", "record success"]
        .into_iter()
        .enumerate()
    {
        for (path, tally) in [("service", &service[i]), ("raw sqlx", &raw[i])] {
            report.add(
                backend,
                "throughput",
                format!("{op}: {path}"),
                tally.per_second(),
                "deliveries/s",
            );
            if let (true, Some(cpu)) = (with_cpu, tally.cpu_us()) {
                report.add(
                    backend,
                    "throughput",
                    format!("{op}: {path}, backend CPU"),
                    cpu,
                    "µs/op",
                );
            }
        }
        report.add(
            backend,
            "throughput",
            format!("{op}: service/raw"),
            service[i].per_second() / raw[i].per_second(),
            "ratio",
        );
        if let (true, Some(service), Some(raw)) = (with_cpu, service[i].cpu_us(), raw[i].cpu_us()) {
            report.add(
                backend,
                "throughput",
                format!("{op}: backend CPU service/raw"),
                service / raw,
                "ratio",
            );
        }
    }
    // Each lean operation against the service call it replaces: enqueue, enqueue, record.
    for (i, (op, replaces)) in [
        ("enqueue_for_agent", 0),
        ("enqueue_many (batches of 100), per row", 0),
        ("record_outcomes (batches of 100), per row", 2),
    ]
    .into_iter()
    .enumerate()
    {
        report.add(
            backend,
            "throughput",
            op,
            lean[i].per_second(),
            "deliveries/s",
        );
        if let (true, Some(cpu)) = (with_cpu, lean[i].cpu_us()) {
            report.add(
                backend,
                "throughput",
                format!("{op}, backend CPU"),
                cpu,
                "µs/op",
            );
            if let Some(replaced) = service[replaces].cpu_us() {
                report.add(
                    backend,
                    "throughput",
                    format!("{op}: backend CPU lean/service"),
                    cpu / replaced,
                    "ratio",
                );
            }
        }
    }
}

/// The lean path of [`throughput`] on a fresh database `t` with agents `agent-0`…`agent-9`:
/// `n` deliveries through `enqueue_for_agent` (tally 0), `n` more through `enqueue_many` in
/// batches of 100 (tally 1), then all `2 n` claimed (not measured) and recorded with
/// `record_outcomes` in batches of 100 (tally 2).
async fn lean_path(t: &TestDb, tally: &mut [Tally; 3], n: usize, round: usize, now: DateTime<Utc>) {
    use sea_orm::{EntityTrait, QueryOrder};
    let settings = WebhookSettings::default();
    let payload = json!({"n": 1});
    let success = AttemptOutcome::Status {
        code: 200,
        retry_after: None,
    };
    let agents = entity::agents::Entity::find()
        .order_by_asc(entity::agents::Column::Id)
        .all(&t.db)
        .await
        .expect("agents");
    assert_eq!(agents.len(), 10);
    let events: Vec<String> = (0..2 * n).map(|i| format!("evt-{round}-{i}")).collect();
    let for_agent = procstat::measured(t, async {
        for (i, event) in events[..n].iter().enumerate() {
            deliveries::enqueue_for_agent(
                &t.db,
                &settings,
                &agents[i % 10],
                event,
                "run.completed",
                &payload,
                now,
            )
            .await
            .expect("enqueue_for_agent");
        }
    })
    .await;
    tally[0].add(n, for_agent);
    let items: Vec<deliveries::EnqueueItem<'_>> = events[n..]
        .iter()
        .enumerate()
        .map(|(i, event)| deliveries::EnqueueItem {
            agent_id: &agents[i % 10].id,
            event_id: event,
            event_type: "run.completed",
            payload: &payload,
        })
        .collect();
    let many = procstat::measured(t, async {
        for chunk in items.chunks(100) {
            deliveries::enqueue_many(&t.db, &settings, chunk, now)
                .await
                .expect("enqueue_many");
        }
    })
    .await;
    tally[1].add(n, many);
    let mut claims = Vec::new();
    loop {
        let batch = deliveries::claim_due(&t.db, &settings, now, 100)
            .await
            .expect("claim");
        if batch.is_empty() {
            break;
        }
        claims.extend(batch);
    }
    assert_eq!(claims.len(), 2 * n, "every delivery claimed once");
    let record = procstat::measured(t, async {
        for chunk in claims.chunks(100) {
            let results = deliveries::record_outcomes(
                &t.db,
                &settings,
                chunk.iter().map(|c| (c, &success, now)),
            )
            .await
            .expect("record_outcomes");
            assert!(results.iter().all(Result::is_ok), "no stale claim");
        }
    })
    .await;
    tally[2].add(2 * n, record);
}

/// 3. `claim_due` latency for a batch of 100 with 1 % of the table due; each claim runs in a
///    transaction that is rolled back, so every sample sees the same table.
async fn claim_latency(report: &mut Report, backend: Backend, sizes: &[usize], samples: usize) {
    let settings = WebhookSettings::default();
    let mut p50s = Vec::new();
    for &rows in sizes {
        let t = TestDb::migrated_with(backend, 2).await;
        org(&t).await;
        for a in 0..10 {
            seed_agent_quiet(&t, a).await;
        }
        seed_deliveries(&t, rows, 10).await;
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let txn = t.db.begin().await.expect("begin");
            let start = Instant::now();
            let claims = deliveries::claim_due(&txn, &settings, Utc::now(), 100)
                .await
                .expect("claim");
            times.push(start.elapsed());
            assert_eq!(claims.len(), 100.min(rows / 100));
            txn.rollback().await.expect("rollback");
        }
        let p50 = percentile(&mut times, 0.5);
        let p99 = percentile(&mut times, 0.99);
        report.add(
            backend,
            "claim_due",
            format!("p50, {rows} rows"),
            ms(p50),
            "ms",
        );
        report.add(
            backend,
            "claim_due",
            format!("p99, {rows} rows"),
            ms(p99),
            "ms",
        );
        p50s.push((rows, p50));
    }
    if let [(small, a), .., (large, b)] = p50s.as_slice() {
        report.add(
            backend,
            "claim_due",
            format!("p50 ratio {large}/{small}"),
            b.as_secs_f64() / a.as_secs_f64(),
            "x",
        );
    }
}

async fn seed_agent_quiet(t: &TestDb, a: usize) {
    t.exec(&format!(
        "INSERT INTO agents (id, organization_id, name, webhook_url, webhook_enabled) \
         VALUES ('agent-{a}', 'org-1', 'agent {a}', 'https://hooks.example.com/x', true)"
    ))
    .await;
}

/// 4. First page vs a deep page of one agent's history (keyset pagination).
async fn history_paging(report: &mut Report, backend: Backend, rows: usize, deep_page: usize) {
    let t = TestDb::migrated_with(backend, 2).await;
    org(&t).await;
    seed_agent_quiet(&t, 0).await;
    seed_deliveries(&t, rows, 1).await;
    let now = Utc::now();
    let mut query = HistoryQuery {
        limit: 50,
        ..HistoryQuery::default()
    };
    let first = query.clone();
    for _ in 1..deep_page {
        let page = deliveries::history(&t.db, "agent-0", &query, now)
            .await
            .expect("page");
        query.cursor = page.next_cursor;
    }
    assert!(query.cursor.is_some(), "page {deep_page} exists");
    let mut timings = [Vec::new(), Vec::new()];
    for _ in 0..50 {
        for (i, q) in [&first, &query].into_iter().enumerate() {
            let start = Instant::now();
            let page = deliveries::history(&t.db, "agent-0", q, now)
                .await
                .expect("page");
            timings[i].push(start.elapsed());
            assert_eq!(page.items.len(), 50);
        }
    }
    let first_p50 = percentile(&mut timings[0], 0.5);
    let deep_p50 = percentile(&mut timings[1], 0.5);
    report.add(
        backend,
        "history",
        format!("p50 first page ({rows} rows)"),
        ms(first_p50),
        "ms",
    );
    report.add(
        backend,
        "history",
        format!("p50 page {deep_page}"),
        ms(deep_p50),
        "ms",
    );
    report.add(
        backend,
        "history",
        format!("p50 ratio page {deep_page}/first"),
        deep_p50.as_secs_f64() / first_p50.as_secs_f64(),
        "x",
    );
}

/// 5. CPU-bound operations: secret envelopes, the URL policy, signatures.
fn cpu_bound(report: &mut Report, n: usize) {
    let entry = KeyRing::generate_key_entry("k1").expect("key");
    let keys = KeyRing::parse(&entry).expect("ring");
    let secret = WebhookSecret::generate().expect("secret");
    let plain = SecretString::from(secret.expose().to_owned());
    let per_second = |start: Instant| n as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut sealed = String::new();
    for i in 0..n {
        sealed = keys.seal(&plain, &format!("agent-{i}")).expect("seal");
    }
    let seal_rate = per_second(start);
    let start = Instant::now();
    for _ in 0..n {
        keys.open(&sealed, &format!("agent-{}", n - 1))
            .expect("open");
    }
    let open_rate = per_second(start);
    let urls = [
        "https://hooks.example.com/a",
        "https://127.1/",
        "https://[::ffff:10.0.0.1]/",
        "http://x.example/",
    ];
    let start = Instant::now();
    for i in 0..n {
        let _ = UrlPolicy::Production.check(urls[i % urls.len()]);
    }
    let policy_rate = per_second(start);
    let body = vec![b'x'; 1024];
    let start = Instant::now();
    for i in 0..n {
        signing::sign_one(&secret, &format!("msg_{i}"), 1_700_000_000, &body).expect("sign");
    }
    let sign_rate = per_second(start);
    report.push(
        "-",
        "cpu",
        "secret envelope seal".to_owned(),
        seal_rate,
        "ops/s",
    );
    report.push(
        "-",
        "cpu",
        "secret envelope open".to_owned(),
        open_rate,
        "ops/s",
    );
    report.push(
        "-",
        "cpu",
        "URL policy check".to_owned(),
        policy_rate,
        "ops/s",
    );
    report.push("-", "cpu", "sign 1 KiB body".to_owned(), sign_rate, "ops/s");
}

// ---- Issue 14, items 1, 2 and 6: batched writes and scale (kept apart from the sections above).

/// 6. Enqueue rows/s one at a time vs `enqueue_many` in batches of 100, and claim+record
///    deliveries/s with 1 and 4 workers recording one outcome at a time vs one batch at a time;
///    `n` deliveries per path, enqueue in `rounds` rounds.
async fn batched_writes(report: &mut Report, backend: Backend, n: usize, rounds: usize) {
    let settings = WebhookSettings::default();
    let payload = json!({"n": 1});
    let events: Vec<String> = (0..n).map(|i| format!("evt-{i}")).collect();
    let agent_of = |i: usize| format!("agent-{}", i % 10);
    let agents: Vec<String> = (0..n).map(agent_of).collect();
    let new_db = || async {
        let t = TestDb::migrated_with(backend, 4).await;
        for a in 0..10 {
            seed_agent(&t, &format!("agent-{a}"), &[]).await;
        }
        t
    };
    let items = enqueue_items(&agents, &events, &payload);
    // Enqueue: the two paths alternate in rounds, on fresh databases. Both paths leave the same
    // `n` due deliveries behind: the claim+record runs below start from these databases
    // (fresh databases cost a migration and, on PostgreSQL, a checkpoint at their drop).
    let mut enqueued = Vec::new();
    let mut enqueue = [Duration::ZERO; 2];
    for _round in 0..rounds {
        for (path, time) in enqueue.iter_mut().enumerate() {
            let t = new_db().await;
            let now = Utc::now();
            let start = Instant::now();
            if path == 0 {
                for i in 0..n {
                    deliveries::enqueue(
                        &t.db,
                        &settings,
                        &agents[i],
                        &events[i],
                        "run.completed",
                        &payload,
                        now,
                    )
                    .await
                    .expect("enqueue");
                }
            } else {
                for chunk in items.chunks(100) {
                    deliveries::enqueue_many(&t.db, &settings, chunk, now)
                        .await
                        .expect("enqueue_many");
                }
            }
            *time += start.elapsed();
            enqueued.push(t);
        }
    }
    let single = (rounds * n) as f64 / enqueue[0].as_secs_f64();
    let many = (rounds * n) as f64 / enqueue[1].as_secs_f64();
    report.add(
        backend,
        "batched",
        "enqueue, one at a time",
        single,
        "rows/s",
    );
    report.add(
        backend,
        "batched",
        "enqueue_many, batch of 100",
        many,
        "rows/s",
    );
    report.add(
        backend,
        "batched",
        "enqueue_many/enqueue",
        many / single,
        "ratio",
    );

    // Claim + record, with the deliveries enqueued beforehand: by the enqueue runs above, else
    // (fewer rounds than runs) `n` more events enqueued in the previous run's database, whose
    // deliveries are all recorded by then.
    let mut previous: Option<TestDb> = None;
    let mut refills = 0;
    for workers in [1usize, 4] {
        let mut rates = [0.0; 2];
        for (batched, rate) in rates.iter_mut().enumerate() {
            let t = match enqueued.pop() {
                Some(t) => t,
                None => {
                    let t = match previous.take() {
                        Some(t) => t,
                        None => new_db().await,
                    };
                    refills += 1;
                    let again: Vec<String> =
                        (0..n).map(|i| format!("evt-again{refills}-{i}")).collect();
                    for chunk in enqueue_items(&agents, &again, &payload).chunks(500) {
                        deliveries::enqueue_many(&t.db, &settings, chunk, Utc::now())
                            .await
                            .expect("seed");
                    }
                    t
                }
            };
            let start = Instant::now();
            let tasks: Vec<_> = (0..workers)
                .map(|_| {
                    let db = t.db.clone();
                    tokio::spawn(claim_and_record(db, batched == 1))
                })
                .collect();
            let mut done = 0;
            for task in tasks {
                done += task.await.expect("worker");
            }
            assert_eq!(done, n, "every delivery recorded once");
            *rate = n as f64 / start.elapsed().as_secs_f64();
            previous = Some(t);
        }
        report.add(
            backend,
            "batched",
            format!("claim+record, {workers} worker(s), one at a time"),
            rates[0],
            "deliveries/s",
        );
        report.add(
            backend,
            "batched",
            format!("claim+record, {workers} worker(s), batched"),
            rates[1],
            "deliveries/s",
        );
        report.add(
            backend,
            "batched",
            format!("claim+record, {workers} worker(s), batched/one"),
            rates[1] / rates[0],
            "ratio",
        );
    }
}

/// One `run.completed` item per event, for the agent at the same index.
fn enqueue_items<'a>(
    agents: &'a [String],
    events: &'a [String],
    payload: &'a serde_json::Value,
) -> Vec<deliveries::EnqueueItem<'a>> {
    agents
        .iter()
        .zip(events)
        .map(|(agent_id, event_id)| deliveries::EnqueueItem {
            agent_id,
            event_id,
            event_type: "run.completed",
            payload,
        })
        .collect()
}

/// A worker without HTTP: claims batches of 100 and records each as delivered, until nothing
/// is due; returns how many it recorded.
async fn claim_and_record(db: DatabaseConnection, batched: bool) -> usize {
    let settings = WebhookSettings::default();
    let success = AttemptOutcome::Status {
        code: 200,
        retry_after: None,
    };
    let mut done = 0;
    loop {
        let now = Utc::now();
        let claims = deliveries::claim_due(&db, &settings, now, 100)
            .await
            .expect("claim");
        if claims.is_empty() {
            return done;
        }
        if batched {
            let results = deliveries::record_outcomes(
                &db,
                &settings,
                claims.iter().map(|c| (c, &success, now)),
            )
            .await
            .expect("record_outcomes");
            assert!(results.iter().all(Result::is_ok), "no stale claim");
        } else {
            for claim in &claims {
                deliveries::record_outcome(&db, &settings, claim, &success, now)
                    .await
                    .expect("record");
            }
        }
        done += claims.len();
    }
}

/// The pause between prune batches in the scale section: about the time of one batch of 1,000
/// on the 2-core machine of docs/benchmarks.md, so the prune uses about half a core.
const PRUNE_PAUSE_MS: u64 = 30;

/// 7. Scale on PostgreSQL: `claim_due` p50 with `rows` deliveries vs 10k, `prune` of `pruned`
///    finished rows in batches of 1,000 while claims run (claim p99 during vs without), with
///    and without a pause between batches, and the next step, a partition dropped vs the same
///    rows deleted in batches, on scratch copies.
async fn scale(report: &mut Report, rows: usize, pruned: usize, samples: usize) {
    let backend = Backend::Postgres;
    let claim_samples = |db: DatabaseConnection, samples: usize| async move {
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let txn = db.begin().await.expect("begin");
            let start = Instant::now();
            let claims = deliveries::claim_due(&txn, &WebhookSettings::default(), Utc::now(), 100)
                .await
                .expect("claim");
            times.push(start.elapsed());
            assert_eq!(claims.len(), 100);
            txn.rollback().await.expect("rollback");
        }
        times
    };
    // Both tables first, then claims on each in alternating rounds, so that a change in the
    // machine's other load falls on both sizes alike.
    let sizes = [10_000, rows];
    let mut dbs = Vec::new();
    let mut seed_time = Duration::ZERO;
    for size in sizes {
        let t = TestDb::migrated_with(backend, 4).await;
        org(&t).await;
        for a in 0..10 {
            seed_agent_quiet(&t, a).await;
        }
        let seeded = Instant::now();
        seed_deliveries_then_index(&t, size, 10).await;
        seed_time = seeded.elapsed();
        dbs.push(t);
    }
    let mut times = [Vec::new(), Vec::new()];
    for _round in 0..4 {
        for (t, times) in dbs.iter().zip(times.iter_mut()) {
            times.extend(claim_samples(t.db.clone(), samples.div_ceil(4)).await);
        }
    }
    let p50: Vec<Duration> = times.iter_mut().map(|v| percentile(v, 0.5)).collect();
    for (size, p) in sizes.iter().zip(&p50) {
        report.add(
            backend,
            "scale",
            format!("claim p50, {size} rows (4 alternating rounds)"),
            ms(*p),
            "ms",
        );
    }
    report.add(
        backend,
        "scale",
        format!("claim p50 ratio {rows}/10000"),
        p50[1].as_secs_f64() / p50[0].as_secs_f64(),
        "x",
    );
    report.add(
        backend,
        "scale",
        format!("seed {rows} rows (INSERT, then indexes and keys, VACUUM)"),
        seed_time.as_secs_f64(),
        "s",
    );
    let (size, t) = (rows, &dbs[1]);
    // Rows are one second apart going back from now, 99 % finished: the oldest
    // `pruned * 100 / 99` rows hold `pruned` finished ones. Two such spans are pruned: the
    // oldest with a pause between batches, the next without.
    let span = (pruned * 100).div_ceil(99);
    assert!(2 * span < size, "two prunes of {pruned} fit in {size} rows");
    let older_than = Utc::now() - chrono::Duration::seconds((size - span) as i64);
    let then_older_than = Utc::now() - chrono::Duration::seconds((size - 2 * span) as i64);
    let cutoff = older_than.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
    // Scratch copies of the rows to prune, for partition drop vs batched DELETE.
    t.exec(&format!(
        "CREATE TABLE scratch_plain AS SELECT * FROM webhook_deliveries \
         WHERE created_at < '{cutoff}' AND next_retry_at IS NULL"
    ))
    .await;
    t.exec("ALTER TABLE scratch_plain ADD PRIMARY KEY (id)")
        .await;
    t.exec("CREATE INDEX ON scratch_plain (created_at)").await;
    t.exec("CREATE TABLE scratch_part (LIKE webhook_deliveries) PARTITION BY RANGE (created_at)")
        .await;
    t.exec(&format!(
        "CREATE TABLE scratch_part_old PARTITION OF scratch_part FOR VALUES FROM (MINVALUE) TO ('{cutoff}')"
    ))
    .await;
    t.exec(&format!(
        "CREATE TABLE scratch_part_new PARTITION OF scratch_part FOR VALUES FROM ('{cutoff}') TO (MAXVALUE)"
    ))
    .await;
    t.exec("INSERT INTO scratch_part SELECT * FROM scratch_plain")
        .await;
    t.exec("CREATE INDEX ON scratch_part (id)").await;
    t.exec("ANALYZE scratch_plain").await;
    t.exec("ANALYZE scratch_part").await;

    // Claim p99 without, then during, a prune paced by a pause between batches, then during
    // one without pause (of the next `pruned` rows).
    let mut quiet = claim_samples(t.db.clone(), samples).await;
    let quiet_p99 = percentile(&mut quiet, 0.99);
    report.add(
        backend,
        "scale",
        "claim p99 without prune",
        ms(quiet_p99),
        "ms",
    );
    let mut deleted = 0;
    for (cut, pause) in [
        (older_than, Duration::from_millis(PRUNE_PAUSE_MS)),
        (then_older_than, Duration::ZERO),
    ] {
        let db = t.db.clone();
        let start = Instant::now();
        let prune = tokio::spawn(async move {
            let deleted = deliveries::prune(&db, cut, 1_000, pause, |_| {})
                .await
                .expect("prune");
            (deleted, start.elapsed())
        });
        let mut during = Vec::new();
        while !prune.is_finished() {
            during.extend(claim_samples(t.db.clone(), 10).await);
        }
        let (n, prune_time) = prune.await.expect("prune task");
        // The seed's `now()` and this clock differ by the seeding time: a few rows either
        // way.
        assert!(
            (n as usize).abs_diff(pruned) <= pruned / 100 + 10,
            "prune deleted {n} rows, expected about {pruned}"
        );
        if deleted == 0 {
            deleted = n;
        }
        let during_p99 = percentile(&mut during, 0.99);
        let paced = format!("pause {} ms", pause.as_millis());
        report.add(
            backend,
            "scale",
            format!("prune {n} rows, batches of 1000, {paced}"),
            prune_time.as_secs_f64(),
            "s",
        );
        report.add(
            backend,
            "scale",
            format!("claim p99 during prune, {paced} ({} samples)", during.len()),
            ms(during_p99),
            "ms",
        );
        report.add(
            backend,
            "scale",
            format!("claim p99 during/without prune, {paced}"),
            during_p99.as_secs_f64() / quiet_p99.as_secs_f64(),
            "ratio",
        );
    }

    // The same rows: batched DELETE on the plain copy vs dropping the partition.
    let start = Instant::now();
    loop {
        let deleted =
            t.db.execute_unprepared(
                "DELETE FROM scratch_plain WHERE id IN (SELECT id FROM scratch_plain LIMIT 1000)",
            )
            .await
            .expect("delete batch")
            .rows_affected();
        if deleted < 1000 {
            break;
        }
    }
    let delete_time = start.elapsed();
    let start = Instant::now();
    t.exec("DROP TABLE scratch_part_old").await;
    let drop_time = start.elapsed();
    report.add(
        backend,
        "scale",
        format!("batched DELETE of {deleted} rows (copy)"),
        ms(delete_time),
        "ms",
    );
    report.add(
        backend,
        "scale",
        "DROP of the partition holding them",
        ms(drop_time),
        "ms",
    );
    report.add(
        backend,
        "scale",
        "batched DELETE/DROP",
        delete_time.as_secs_f64() / drop_time.as_secs_f64(),
        "ratio",
    );
}
