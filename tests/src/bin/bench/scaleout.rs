//! Scale-out on PostgreSQL (docs/benchmarks.md section 11): what an enqueue costs the app, and
//! what 1, 2 and 4 processes of the `agent-webhooks worker` binary deliver while an app
//! enqueues from 8 connections to one endpoint, and at a fixed light rate.
//!
//! The workers are real processes started from the binary beside this one (build it first:
//! `cargo build --release -p agent-webhooks-cli`), with default settings but the URL policy
//! (`development`, for the loopback receiver). Their CPU is read from `/proc` for the worker
//! processes and for the PostgreSQL backends serving them (told apart from the app's by their
//! `application_name`); the app's enqueues and the receiver run in this process and are not
//! counted. Empty claims come from each worker's `/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_webhooks::delivery;
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::settings::WebhookSettings;
use agent_webhooks::webhook::url_policy::UrlPolicy;
use chrono::Utc;
use integration_tests::{Backend, TestDb, seed_agent, seed_webhook};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};

use super::procstat::cpu;
use super::worker::{Arrivals, payload, receiver};
use super::{Report, ms, percentile};

const SECTION: &str = "scaleout";
/// The app's connections in the saturation runs.
const APP_CONNECTIONS: usize = 8;
/// How the workers' PostgreSQL connections are told apart from the app's.
const WORKER_APP_NAME: &str = "aw_bench_worker";

/// Every figure of the section; `quick` shrinks counts and durations.
pub(super) async fn figures(report: &mut Report, quick: bool) {
    enqueue_cost(report, if quick { 200 } else { 3_000 }).await;
    let keys = KeyRing::generate_key_entry("k1").unwrap();
    let events = if quick { 300 } else { 10_000 };
    let mut saturated_cpu = None;
    for mode in [Mode::Live, Mode::Backlog] {
        for synchronous_commit in [true, false] {
            let counts: &[usize] = match (quick, mode, synchronous_commit) {
                (true, Mode::Live, false) => &[],
                (true, _, _) => &[1, 2],
                (false, Mode::Live, false) => &[1, 2],
                (false, _, _) => &[1, 2, 4],
            };
            let mut rates: Vec<(usize, f64)> = Vec::new();
            for &workers in counts {
                let run = saturation(&keys, mode, workers, events, synchronous_commit).await;
                report_run(report, mode, workers, synchronous_commit, events, &run);
                if mode == Mode::Live && synchronous_commit && workers == 1 {
                    saturated_cpu = Some(run.cpu_per_k[2]);
                }
                // A live run delivers what the app enqueues: only backlogs compare workers.
                if let (Mode::Backlog, Some(&(fewer, rate))) = (mode, rates.last()) {
                    report.push(
                        "postgres",
                        SECTION,
                        format!(
                            "{} {workers} workers / {fewer}, {}",
                            mode.name(),
                            commit_name(synchronous_commit)
                        ),
                        run.per_second / rate,
                        "x",
                    );
                }
                rates.push((workers, run.per_second));
            }
        }
    }
    light_load(report, &keys, quick, saturated_cpu).await;
    lease_column(report, if quick { 2_000 } else { 50_000 }).await;
}

/// `--only light`: the light-load run and the one it is compared with (one worker, live,
/// synchronous commit on), without the rest of the section.
pub(super) async fn light_figures(report: &mut Report, quick: bool) {
    let keys = KeyRing::generate_key_entry("k1").unwrap();
    let events = if quick { 300 } else { 10_000 };
    let run = saturation(&keys, Mode::Live, 1, events, true).await;
    report_run(report, Mode::Live, 1, true, events, &run);
    light_load(report, &keys, quick, Some(run.cpu_per_k[2])).await;
}

async fn light_load(report: &mut Report, keys: &str, quick: bool, saturated_cpu: Option<f64>) {
    let seconds = if quick { 1 } else { 10 };
    fixed_rate(report, keys, 200, seconds, saturated_cpu).await;
}

fn commit_name(synchronous_commit: bool) -> &'static str {
    if synchronous_commit {
        "synchronous_commit on"
    } else {
        "synchronous_commit off"
    }
}

/// The figures of one [`saturation`] run.
fn report_run(
    report: &mut Report,
    mode: Mode,
    workers: usize,
    synchronous_commit: bool,
    events: usize,
    run: &Run,
) {
    let commit = commit_name(synchronous_commit);
    let label = |what: &str| format!("{what}, {}, {workers} worker(s), {commit}", mode.name());
    report.push(
        "postgres",
        SECTION,
        label("deliveries/s"),
        run.per_second,
        "1/s",
    );
    if mode == Mode::Live {
        report.push(
            "postgres",
            SECTION,
            label("enqueue→arrival p50"),
            run.p50_ms,
            "ms",
        );
        report.push(
            "postgres",
            SECTION,
            label("enqueue→arrival p99"),
            run.p99_ms,
            "ms",
        );
    }
    report_cpu(report, label, run.cpu_per_k);
    report.push(
        "postgres",
        SECTION,
        label("empty claims per 1000 deliveries"),
        run.empty_claims as f64 * 1000.0 / events as f64,
        "1",
    );
    report.push(
        "postgres",
        SECTION,
        label("worker commits per delivery"),
        run.commits_per_delivery,
        "1",
    );
    if let Some(hits) = run.buffer_hits_per_delivery {
        report.push(
            "postgres",
            SECTION,
            label("buffer hits per delivery"),
            hits,
            "1",
        );
    }
}

/// Where the lease lives, in [`lease_column`]'s experiment.
#[derive(Clone, Copy)]
enum Lease {
    /// As the schema has it: the claim moves `next_retry_at`, which the claim index holds.
    InNextRetryAt,
    /// A column of its own that no index holds (`leased_until`), on pages with room for it
    /// (`fillfactor` 90), so a claim can be a heap-only (HOT) update.
    OwnColumn,
}

/// The experiment behind keeping the lease in `next_retry_at`: `rows` due deliveries claimed
/// in batches of 64, each batch recorded as delivered at once (so leased rows do not pile up
/// in the due range), with the lease in `next_retry_at` as today, or in an unindexed column
/// of its own. Raw SQL on scratch copies of the schema: PostgreSQL backend CPU per delivery,
/// and the share of claim updates that were HOT.
async fn lease_column(report: &mut Report, rows: usize) {
    let mut cpu_us = Vec::new();
    for lease in [Lease::InNextRetryAt, Lease::OwnColumn] {
        let t = TestDb::migrated_with(Backend::Postgres, 1).await;
        seed_agent(&t, "agent-1", &[]).await;
        let (name, claim) = match lease {
            Lease::InNextRetryAt => (
                "lease in next_retry_at",
                "UPDATE webhook_deliveries SET next_retry_at = now() + interval '60 seconds', \
                 attempt_count = attempt_count + 1 WHERE id IN (SELECT id FROM webhook_deliveries \
                 WHERE next_retry_at <= now() AND delivered_at IS NULL ORDER BY next_retry_at \
                 LIMIT 64 FOR UPDATE SKIP LOCKED) RETURNING id",
            ),
            Lease::OwnColumn => {
                t.exec("ALTER TABLE webhook_deliveries ADD COLUMN leased_until timestamptz")
                    .await;
                t.exec("ALTER TABLE webhook_deliveries SET (fillfactor = 90)")
                    .await;
                (
                    "lease in its own column",
                    "UPDATE webhook_deliveries SET leased_until = now() + interval '60 seconds', \
                     attempt_count = attempt_count + 1 WHERE id IN (SELECT id FROM webhook_deliveries \
                     WHERE next_retry_at <= now() AND delivered_at IS NULL \
                     AND (leased_until IS NULL OR leased_until <= now()) ORDER BY next_retry_at \
                     LIMIT 64 FOR UPDATE SKIP LOCKED) RETURNING id",
                )
            }
        };
        t.exec(&format!(
            "INSERT INTO webhook_deliveries (id, organization_id, agent_id, event_id, event_type, \
             webhook_url, attempt_count, created_at, next_retry_at) \
             SELECT 'dlv-' || lpad(g::text, 9, '0'), 'org-1', 'agent-1', 'evt-' || g, \
             'run.completed', 'https://hooks.example.com/x', 0, now(), \
             now() - make_interval(secs => g) FROM generate_series(1, {rows}) g"
        ))
        .await;
        t.exec("VACUUM ANALYZE webhook_deliveries").await;
        let (_, _, server) = super::procstat::measured(&t, async {
            loop {
                let ids = t.strings(claim).await;
                if ids.is_empty() {
                    break;
                }
                let list = ids
                    .iter()
                    .map(|id| format!("'{id}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                t.exec(&format!(
                    "UPDATE webhook_deliveries SET delivered_at = now(), status_code = 200, \
                     next_retry_at = NULL WHERE id IN ({list})"
                ))
                .await;
            }
        })
        .await;
        t.exec("SELECT pg_stat_force_next_flush()").await;
        let hot = t
            .strings(
                "SELECT (n_tup_hot_upd::float8 / greatest(n_tup_upd, 1))::text \
                 FROM pg_stat_user_tables WHERE relname = 'webhook_deliveries'",
            )
            .await;
        let hot: f64 = hot[0].parse().unwrap();
        let us = server.as_secs_f64() * 1e6 / rows as f64;
        report.push(
            "postgres",
            SECTION,
            format!("claim + record, backend CPU, {name}"),
            us,
            "µs/delivery",
        );
        // Half the updates are the records, which change indexed columns and cannot be HOT.
        report.push(
            "postgres",
            SECTION,
            format!("HOT share of all updates, {name}"),
            hot,
            "1",
        );
        cpu_us.push(us);
    }
    report.push(
        "postgres",
        SECTION,
        "claim + record backend CPU, own lease column / next_retry_at".into(),
        cpu_us[1] / cpu_us[0],
        "x",
    );
}

/// How the events reach the workers in a saturation run.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// The app enqueues from [`APP_CONNECTIONS`] connections as fast as they go while the
    /// workers run: what an app sees (the app can be the bottleneck).
    Live,
    /// The events are enqueued beforehand, due at one instant: what the workers can do.
    Backlog,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Live => "live app",
            Mode::Backlog => "backlog",
        }
    }
}

/// One connection enqueueing `n` events through `delivery::enqueue`: events per second,
/// statements per enqueue (counted by the connection) and commits per enqueue (PostgreSQL's
/// `xact_commit`), against the idiomatic SQLAlchemy 2 enqueue of
/// `tests/bench/sqlalchemy_enqueue.py` on the same database in the same run.
async fn enqueue_cost(report: &mut Report, n: usize) {
    let t = TestDb::migrated_with(Backend::Postgres, 1).await;
    seed_agent(&t, "agent-1", &[]).await;
    let mut counted = TestDb::reconnect(&t).await;
    let statements = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&statements);
    counted.db.set_metric_callback(move |_| {
        seen.fetch_add(1, Ordering::Relaxed);
    });
    let settings = WebhookSettings::default();
    let payload = serde_json::json!({"n": 1});
    let commits_before = counters(&counted).await.commits;
    let sent = Arc::new(AtomicUsize::new(0));
    let (took, _, ours_cpu) = super::procstat::measured(&counted, async {
        // Counted here, without the statements that read the backends' CPU around the run.
        statements.store(0, Ordering::SeqCst);
        for i in 0..n {
            delivery::enqueue(
                &counted.db,
                &settings,
                "agent-1",
                &format!("evt-{i}"),
                "run.completed",
                &payload,
                Utc::now(),
            )
            .await
            .unwrap();
        }
        sent.store(statements.load(Ordering::SeqCst), Ordering::SeqCst);
    })
    .await;
    let sent = sent.load(Ordering::SeqCst);
    // The statements that read the counters and the CPU around the run add four commits.
    let committed = counters(&counted).await.commits - commits_before;
    let ours = n as f64 / took.as_secs_f64();
    report.push(
        "postgres",
        SECTION,
        "enqueue on one connection".into(),
        ours,
        "events/s",
    );
    let per_event_us = |cpu: Duration| cpu.as_secs_f64() * 1e6 / n as f64;
    report.push(
        "postgres",
        SECTION,
        "enqueue backend CPU".into(),
        per_event_us(ours_cpu),
        "µs/event",
    );
    report.push(
        "postgres",
        SECTION,
        "statements per enqueue".into(),
        sent as f64 / n as f64,
        "1",
    );
    report.push(
        "postgres",
        SECTION,
        "commits per enqueue".into(),
        committed as f64 / n as f64,
        "1",
    );
    let python = integration_tests::python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/sqlalchemy_enqueue.py");
    let mut child = Command::new(&python)
        .args([script, &t.url, "agent-1", &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let (theirs, backend) = match line.split_whitespace().collect::<Vec<_>>()[..] {
        [rate, pid] => (rate.parse::<f64>().unwrap(), pid.to_owned()),
        _ => panic!(
            "{python} {script} failed (scripts/test installs SQLAlchemy and psycopg2 in \
             .venv-test; TEST_PYTHON names its python): {line:?}"
        ),
    };
    // One connection served the whole run: its backend's CPU is the run's.
    let theirs_cpu = cpu(&backend);
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"\n").unwrap();
    assert!(child.wait().unwrap().success(), "{python} {script} failed");
    report.push(
        "postgres",
        SECTION,
        "SQLAlchemy 2 enqueue on one connection".into(),
        theirs,
        "events/s",
    );
    report.push(
        "postgres",
        SECTION,
        "SQLAlchemy 2 enqueue backend CPU".into(),
        per_event_us(theirs_cpu),
        "µs/event",
    );
    report.push(
        "postgres",
        SECTION,
        "enqueue / SQLAlchemy 2 enqueue".into(),
        ours / theirs,
        "x",
    );
}

/// `pg_stat_database` counters of one database.
#[derive(Clone, Copy)]
struct DbCounters {
    /// Transactions committed (`xact_commit`).
    commits: i64,
    /// Shared buffers read from the cache (`blks_hit`): the database's work, counted in pages,
    /// which the machine's other load does not change.
    buffer_hits: i64,
}

impl DbCounters {
    fn since(self, before: DbCounters) -> DbCounters {
        DbCounters {
            commits: self.commits - before.commits,
            buffer_hits: self.buffer_hits - before.buffer_hits,
        }
    }

    /// Of counters taken over a run: the commits that were not the app's `app_commits`, per
    /// delivery.
    fn worker_commits_per_delivery(self, app_commits: usize, events: usize) -> f64 {
        (self.commits - app_commits as i64).max(0) as f64 / events as f64
    }
}

/// `t`'s database's counters so far, as counted once its one connection has flushed its own
/// (a backend flushes them at most once a second otherwise).
async fn counters(t: &TestDb) -> DbCounters {
    t.exec("SELECT pg_stat_force_next_flush()").await;
    let sql =
        "SELECT xact_commit, blks_hit FROM pg_stat_database WHERE datname = current_database()";
    let row =
        t.db.query_one_raw(t.stmt(sql))
            .await
            .unwrap()
            .expect("the database's own row");
    DbCounters {
        commits: row.try_get_by_index(0).unwrap(),
        buffer_hits: row.try_get_by_index(1).unwrap(),
    }
}

struct Run {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Workers, backends, both (see [`CpuUsed::per_k`]).
    cpu_per_k: [f64; 3],
    empty_claims: u64,
    /// Transactions the workers committed per delivery.
    commits_per_delivery: f64,
    /// Backlog runs: the database's buffer hits per delivery (a live run's include the app's).
    buffer_hits_per_delivery: Option<f64>,
}

/// `workers` worker processes and `events` events to one endpoint, as `mode` says. Backlog
/// runs poll every 20 ms (for all of them to see the backlog fall due at once; the default
/// poll interval is 1 s) and time from the instant the backlog falls due to the last arrival.
async fn saturation(
    keys: &str,
    mode: Mode,
    workers: usize,
    events: usize,
    synchronous_commit: bool,
) -> Run {
    let setup = Setup::new(keys, synchronous_commit).await;
    let poll = match mode {
        Mode::Live => None,
        Mode::Backlog => Some("20"),
    };
    let fleet = Fleet::start(&setup, workers, poll).await;
    let app = connect(&setup.t.url, APP_CONNECTIONS as u32, "aw_bench_app").await;
    let enqueued: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    // What the workers used and committed, and their empty claims, from `start` on.
    let ((counted_before, before, empty_before), start) = match mode {
        Mode::Live => {
            let baseline = baseline(&setup, &fleet).await;
            let start = Instant::now();
            let tasks: Vec<_> = (0..APP_CONNECTIONS)
                .map(|c| {
                    let (app, enqueued) = (app.clone(), Arc::clone(&enqueued));
                    tokio::spawn(async move {
                        for i in (c..events).step_by(APP_CONNECTIONS) {
                            let (id, at) = enqueue_event(&app, i).await;
                            enqueued.lock().unwrap().insert(id, at);
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            (baseline, start)
        }
        Mode::Backlog => {
            let lead = Duration::from_secs(3);
            let due = Utc::now() + lead;
            let start = Instant::now() + lead;
            let ids: Vec<String> = (0..events).map(|i| format!("evt_{i}")).collect();
            let payloads: Vec<Vec<u8>> = (0..events)
                .map(|i| serde_json::to_vec(&payload(i)).unwrap())
                .collect();
            for chunk in (0..events).collect::<Vec<_>>().chunks(1_000) {
                let items: Vec<delivery::EnqueueItem<'_>> = chunk
                    .iter()
                    .map(|&i| delivery::EnqueueItem {
                        agent_id: "agent-1",
                        event_id: &ids[i],
                        event_type: "run.completed",
                        payload: delivery::Payload::json(&payloads[i]),
                        lane: None,
                    })
                    .collect();
                delivery::enqueue_many(&app, &WebhookSettings::default(), &items, due)
                    .await
                    .unwrap();
            }
            assert!(
                Instant::now() < start,
                "the backlog was not ready before it fell due"
            );
            tokio::time::sleep_until(start.into()).await;
            (baseline(&setup, &fleet).await, start)
        }
    };
    setup.wait_for(events).await;
    let last = setup
        .arrivals
        .at
        .lock()
        .unwrap()
        .values()
        .max()
        .copied()
        .unwrap();
    let took = last.saturating_duration_since(start);
    let used = fleet.cpu(&setup.t).await.since(&before);
    let empty_claims = fleet.empty_claims().await - empty_before;
    fleet.stop();
    let app_commits = match mode {
        Mode::Live => events,
        Mode::Backlog => 0,
    };
    let counted = setup.counted_since(app, counted_before).await;
    let buffer_hits_per_delivery =
        (mode == Mode::Backlog).then_some(counted.buffer_hits as f64 / events as f64);
    let (p50_ms, p99_ms) = setup.latency(&enqueued.lock().unwrap());
    Run {
        per_second: events as f64 / took.as_secs_f64(),
        p50_ms,
        p99_ms,
        cpu_per_k: used.per_k(events),
        empty_claims,
        commits_per_delivery: counted.worker_commits_per_delivery(app_commits, events),
        buffer_hits_per_delivery,
    }
}

/// The database's counters so far, the workers' CPU so far, their empty claims so far.
async fn baseline(setup: &Setup, fleet: &Fleet) -> (DbCounters, CpuSnapshot, u64) {
    (
        counters(&setup.t).await,
        fleet.cpu(&setup.t).await,
        fleet.empty_claims().await,
    )
}

/// One worker process with default settings; the app enqueues `rate` events per second for
/// `seconds` from one connection.
async fn fixed_rate(
    report: &mut Report,
    keys: &str,
    rate: u32,
    seconds: u32,
    saturated_cpu: Option<f64>,
) {
    let setup = Setup::new(keys, true).await;
    let fleet = Fleet::start(&setup, 1, None).await;
    let app = connect(&setup.t.url, 1, "aw_bench_app").await;
    let counted_before = counters(&setup.t).await;
    let before = fleet.cpu(&setup.t).await;
    let events = (rate * seconds) as usize;
    let mut enqueued = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..events {
        tick.tick().await;
        let (id, at) = enqueue_event(&app, i).await;
        enqueued.insert(id, at);
    }
    setup.wait_for(events).await;
    let used = fleet.cpu(&setup.t).await.since(&before);
    let empty_claims = fleet.empty_claims().await;
    fleet.stop();
    let worker_commits = setup
        .counted_since(app, counted_before)
        .await
        .worker_commits_per_delivery(events, events);
    let (p50, p99) = setup.latency(&enqueued);
    let label = |what: &str| format!("{what}, {rate} events/s, 1 worker");
    report.push("postgres", SECTION, label("enqueue→arrival p50"), p50, "ms");
    report.push("postgres", SECTION, label("enqueue→arrival p99"), p99, "ms");
    let per_k = used.per_k(events);
    report_cpu(report, label, per_k);
    let per_k = per_k[2];
    report.push(
        "postgres",
        SECTION,
        label("empty claims per 1000 deliveries"),
        empty_claims as f64 * 1000.0 / events as f64,
        "1",
    );
    report.push(
        "postgres",
        SECTION,
        label("worker commits per delivery"),
        worker_commits,
        "1",
    );
    if let Some(saturated) = saturated_cpu {
        report.push(
            "postgres",
            SECTION,
            label("CPU per delivery / live saturated, 1 worker"),
            per_k / saturated,
            "x",
        );
    }
}

/// A fresh database whose `agent-1` posts to a loopback receiver.
struct Setup {
    t: TestDb,
    keys: String,
    arrivals: Arc<Arrivals>,
}

impl Setup {
    async fn new(keys: &str, synchronous_commit: bool) -> Setup {
        let arrivals = Arc::new(Arrivals::default());
        let port = receiver(Arc::clone(&arrivals)).await;
        let settings = WebhookSettings {
            url_policy: UrlPolicy::Development,
            keys: Some(KeyRing::parse(keys).unwrap()),
            ..WebhookSettings::default()
        };
        let t = TestDb::migrated_with(Backend::Postgres, 2).await;
        seed_webhook(
            &t,
            &settings,
            "agent-1",
            &format!("http://127.0.0.1:{port}/hook"),
        )
        .await;
        if !synchronous_commit {
            // For the connections opened from now on: the workers' and the app's.
            t.exec("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = off', current_database()); END $$")
                .await;
        }
        Setup {
            t,
            keys: keys.to_owned(),
            arrivals,
        }
    }

    /// What the database counted since `before` (see [`counters`]), once the workers are gone
    /// and the app's connections closed (a backend flushes its counters when it ends).
    /// Counters the workers' backends had not flushed at `before` (their start-up reads) count
    /// too: a few in thousands.
    async fn counted_since(&self, app: DatabaseConnection, before: DbCounters) -> DbCounters {
        app.close().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        counters(&self.t).await.since(before)
    }

    /// Waits (at most two minutes) until `events` different events arrived.
    async fn wait_for(&self, events: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.arrivals.at.lock().unwrap().len() < events {
            assert!(Instant::now() < deadline, "not every event arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// p50 and p99 of enqueue-committed → first arrival, in ms.
    fn latency(&self, enqueued: &HashMap<String, Instant>) -> (f64, f64) {
        let at = self.arrivals.at.lock().unwrap();
        let mut samples: Vec<Duration> = enqueued
            .iter()
            .map(|(id, sent)| at[id].saturating_duration_since(*sent))
            .collect();
        if samples.is_empty() {
            return (f64::NAN, f64::NAN);
        }
        (
            ms(percentile(&mut samples, 0.5)),
            ms(percentile(&mut samples, 0.99)),
        )
    }
}

async fn connect(url: &str, connections: u32, application_name: &str) -> DatabaseConnection {
    let mut options = ConnectOptions::new(with_application_name(url, application_name));
    // Pinged only when idle, as `agent_webhooks::db::connect` does (sqlx pings every checkout).
    options
        .max_connections(connections)
        .min_connections(connections)
        .test_before_acquire_if_idle_for(agent_webhooks::db::PING_AFTER_IDLE)
        .sqlx_logging(false);
    Database::connect(options).await.unwrap()
}

fn with_application_name(url: &str, name: &str) -> String {
    let joint = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joint}application_name={name}")
}

/// Worker processes of the `agent-webhooks` binary.
struct Fleet {
    children: Vec<Child>,
    metrics: Vec<SocketAddr>,
}

/// CPU used so far by the worker processes and by their PostgreSQL backends, by pid.
struct CpuSnapshot {
    workers: HashMap<String, Duration>,
    backends: HashMap<String, Duration>,
}

/// CPU of the workers and of their backends over a run.
#[derive(Clone, Copy)]
struct CpuUsed {
    workers: Duration,
    backends: Duration,
}

impl CpuSnapshot {
    /// What was used since `before`; pids that appeared meanwhile count from zero.
    fn since(&self, before: &CpuSnapshot) -> CpuUsed {
        let used = |now: &HashMap<String, Duration>, then: &HashMap<String, Duration>| {
            now.iter()
                .map(|(pid, used)| used.saturating_sub(then.get(pid).copied().unwrap_or_default()))
                .sum()
        };
        CpuUsed {
            workers: used(&self.workers, &before.workers),
            backends: used(&self.backends, &before.backends),
        }
    }
}

impl CpuUsed {
    /// Seconds per 1,000 deliveries: workers, backends, both.
    fn per_k(self, deliveries: usize) -> [f64; 3] {
        let per_k = |d: Duration| d.as_secs_f64() * 1000.0 / deliveries as f64;
        [
            per_k(self.workers),
            per_k(self.backends),
            per_k(self.workers + self.backends),
        ]
    }
}

/// Reports the three figures of [`CpuUsed::per_k`], each named by `label`.
fn report_cpu(report: &mut Report, label: impl Fn(&str) -> String, per_k: [f64; 3]) {
    for (whose, value) in [
        "CPU s/1000, worker processes",
        "CPU s/1000, their PostgreSQL backends",
        "CPU s/1000, workers + backends",
    ]
    .into_iter()
    .zip(per_k)
    {
        report.push("postgres", SECTION, label(whose), value, "s");
    }
}

impl Fleet {
    /// `poll`: `WEBHOOK_POLL_INTERVAL_MS`, the default when `None`.
    async fn start(setup: &Setup, workers: usize, poll: Option<&str>) -> Fleet {
        let binary =
            integration_tests::workspace_program("agent-webhooks", "-p agent-webhooks-cli");
        let mut fleet = Fleet {
            children: Vec::new(),
            metrics: Vec::new(),
        };
        for _ in 0..workers {
            let addr = SocketAddr::from((
                [127, 0, 0, 1],
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port(),
            ));
            let child = Command::new(&binary)
                .args(["worker", "--metrics-addr", &addr.to_string()])
                .env(
                    "DATABASE_URL",
                    with_application_name(&setup.t.url, WORKER_APP_NAME),
                )
                .env("WEBHOOK_SECRET_KEYS", &setup.keys)
                .env("WEBHOOK_URL_POLICY", "development")
                .env("WEBHOOK_POLL_INTERVAL_MS", poll.unwrap_or("1000"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            fleet.children.push(child);
            fleet.metrics.push(addr);
        }
        // Started when each serves its metrics and has checked the key ring.
        let deadline = Instant::now() + Duration::from_secs(30);
        for addr in &fleet.metrics {
            while scrape(*addr).await.is_none() {
                assert!(Instant::now() < deadline, "a worker did not start");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        fleet
    }

    async fn cpu(&self, t: &TestDb) -> CpuSnapshot {
        let rows =
            t.db.query_all_raw(Statement::from_string(
                t.db.get_database_backend(),
                format!(
                    "SELECT pid::text FROM pg_stat_activity WHERE datname = current_database() \
                     AND application_name = '{WORKER_APP_NAME}'"
                ),
            ))
            .await
            .unwrap();
        let with_cpu = |pids: Vec<String>| {
            pids.into_iter()
                .map(|pid| (pid.clone(), cpu(&pid)))
                .collect()
        };
        CpuSnapshot {
            backends: with_cpu(
                rows.iter()
                    .filter_map(|r| r.try_get_by_index::<String>(0).ok())
                    .collect(),
            ),
            workers: with_cpu(self.children.iter().map(|c| c.id().to_string()).collect()),
        }
    }

    /// Claims that found nothing, summed over the workers' `/metrics`.
    async fn empty_claims(&self) -> u64 {
        let mut total = 0;
        for addr in &self.metrics {
            let text = scrape(*addr).await.unwrap_or_default();
            total += text
                .lines()
                .filter(|l| {
                    l.starts_with(agent_webhooks::metrics::CLAIMS) && l.contains("result=\"empty\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64;
        }
        total
    }

    fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn scrape(addr: SocketAddr) -> Option<String> {
    let response = reqwest::get(format!("http://{addr}/metrics")).await.ok()?;
    response.text().await.ok()
}

/// Enqueues `evt_{i}` for `agent-1`; its id and when the enqueue had committed.
async fn enqueue_event(app: &DatabaseConnection, i: usize) -> (String, Instant) {
    let id = format!("evt_{i}");
    delivery::enqueue(
        app,
        &WebhookSettings::default(),
        "agent-1",
        &id,
        "run.completed",
        &payload(i),
        Utc::now(),
    )
    .await
    .unwrap();
    (id, Instant::now())
}
