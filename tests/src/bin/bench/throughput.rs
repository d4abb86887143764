//! Enqueue, claim and record through the service API against the same statements sent through
//! raw sqlx (docs/benchmarks.md section 2): what the ORM costs over the physical floor. On
//! PostgreSQL also the CPU each operation costs the database's backend (`/proc/<pid>/stat`),
//! which tells what a statement costs the server apart from the round trip, and the same for
//! the service's cheaper calls for the same work: `enqueue_for_agent`, `enqueue_many` and
//! `record_outcomes` (batches of 100, per row).

use std::time::Duration;

use agent_webhooks::delivery;
use agent_webhooks::delivery::retry::AttemptOutcome;
use agent_webhooks::settings::WebhookSettings;
use chrono::{DateTime, Utc};
use integration_tests::{Backend, TestDb, seed_agent};
use sea_orm::sqlx::{self, Row};
use sea_orm::{DatabaseConnection, FromQueryResult, QueryResult};
use serde_json::json;

use super::{Report, procstat};

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

/// A delivery row, every column decoded: the ORM's models decode theirs through the same
/// derive.
#[derive(FromQueryResult)]
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

impl RawDelivery {
    /// Decodes a row of any of the three backends' sqlx drivers.
    fn decode(row: impl Into<QueryResult>) -> Self {
        Self::from_query_result(&row.into(), "").expect("delivery row")
    }
}

const COLUMNS: &str = "id, organization_id, agent_id, event_id, event_type, webhook_url, status_code, \
                       error_message, attempt_count, created_at, delivered_at, next_retry_at, payload";

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

/// The statements `delivery::enqueue` sends, without the ORM.
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
        let _ = RawDelivery::decode(row);
    })
}

/// The statements `delivery::claim_due` sends (minus the exhausted-lease sweep), without the
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
            rows.into_iter()
                .map(|r| {
                    let d = RawDelivery::decode(r);
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
                rows.into_iter()
                    .map(|r| {
                        let d = RawDelivery::decode(r);
                        (d.id, d.attempt_count)
                    })
                    .collect()
            })
        }
    }
}

/// The statement `delivery::record_outcome` sends for a success, without the ORM.
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

/// Deliveries per second of each path and operation, `n` deliveries per path per round, the
/// paths alternating in `rounds` rounds on fresh databases; on PostgreSQL also the backend CPU
/// per operation.
pub(super) async fn figures(report: &mut Report, backend: Backend, n: usize, rounds: usize) {
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
                        delivery::enqueue(
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
            let mut claimed: Vec<(String, i32, Option<delivery::Claim>)> = Vec::new();
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
                        delivery::claim_due(&t.db, &settings, now, 100)
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
                            delivery::record_outcome(&t.db, &settings, claim, &success, now)
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

/// The lean path of [`figures`] on a fresh database `t` with agents `agent-0`…`agent-9`:
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
            delivery::enqueue_for_agent(
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
    let items: Vec<delivery::EnqueueItem<'_>> = events[n..]
        .iter()
        .enumerate()
        .map(|(i, event)| delivery::EnqueueItem {
            agent_id: &agents[i % 10].id,
            event_id: event,
            event_type: "run.completed",
            payload: (&payload).into(),
            lane: None,
        })
        .collect();
    let many = procstat::measured(t, async {
        for chunk in items.chunks(100) {
            delivery::enqueue_many(&t.db, &settings, chunk, now)
                .await
                .expect("enqueue_many");
        }
    })
    .await;
    tally[1].add(n, many);
    let mut claims = Vec::new();
    loop {
        let batch = delivery::claim_due(&t.db, &settings, now, 100)
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
            let results = delivery::record_outcomes(
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
