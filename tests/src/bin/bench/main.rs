//! Benchmarks of agent-webhooks against the physical floor: the same SQL sent without the ORM.
//!
//! `cargo run --release -p integration-tests --bin bench -- [--quick] [--json] [--backends sqlite,postgres,mysql] [--only worker,...]`
//!
//! One module per section, named as `--only` names it; this file parses the arguments, runs
//! the sections in order and holds what several sections share: the report, percentiles and
//! the SQL that seeds large tables in one statement.
//!
//! Every figure that matters is a ratio measured within one run (large/empty, service/raw,
//! 1M/10k, deep/first page), because absolute times on a shared 2-core machine drift from run
//! to run. `--quick` shrinks every size, sample count and cycle count, aiming at under a minute
//! in the debug build CI runs (docs/benchmarks.md section 10 has the measured times and the
//! load they were measured at); CI runs it to keep the harness from rotting and asserts
//! nothing about speed.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use integration_tests::{Backend, TestDb};
use sea_orm::ConnectionTrait;
use serde::Serialize;

mod batched;
mod claim;
mod cpu;
mod history;
mod lanes;
mod migration;
mod procstat;
mod scale;
mod scaleout;
mod throughput;
mod worker;

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
    /// Sections to run, comma separated (migration, throughput, claim, lanes, history, worker,
    /// batched, scale, scaleout, cpu); all when not given. `light` (never part of "all") runs
    /// only scaleout's light-load run and the saturated run it is compared with.
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
            migration::figures(
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
            throughput::figures(
                &mut report,
                backend,
                if q { 100 } else { 5_000 },
                if q { 1 } else { 2 },
            )
            .await;
        }
        if on("claim") {
            claim::figures(
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
        if on("lanes") {
            lanes::figures(
                &mut report,
                backend,
                if q { 2_000 } else { 10_000 },
                if q { 10 } else { 100 },
            )
            .await;
        }
        if on("history") {
            history::figures(
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
            batched::figures(
                &mut report,
                backend,
                if q { 100 } else { 10_000 },
                if q { 1 } else { 2 },
            )
            .await;
        }
        if backend == Backend::Postgres && on("scale") {
            if q {
                scale::figures(&mut report, 20_000, 2_000, 20).await;
            } else {
                scale::figures(&mut report, args.scale_rows, args.scale_rows / 10, 200).await;
            }
        }
        if backend == Backend::Postgres && on("scaleout") {
            scaleout::figures(&mut report, q).await;
        }
        if backend == Backend::Postgres && args.only.iter().any(|s| s == "light") {
            scaleout::light_figures(&mut report, q).await;
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
        cpu::figures(&mut report, if q { 2_000 } else { 20_000 });
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

/// The organization `org-1` every seeded agent belongs to.
async fn org(t: &TestDb) {
    t.exec("INSERT INTO organizations (id, name) VALUES ('org-1', 'Acme')")
        .await;
}

/// Agent `agent-{a}` of `org-1` (seeded by [`org`] first) with an enabled webhook to one
/// shared URL, in one plain `INSERT`, without the organization lookup of `seed_agent`.
async fn seed_agent_quiet(t: &TestDb, a: usize) {
    t.exec(&format!(
        "INSERT INTO agents (id, organization_id, name, webhook_url, webhook_enabled) \
         VALUES ('agent-{a}', 'org-1', 'agent {a}', 'https://hooks.example.com/x', true)"
    ))
    .await;
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

/// Fresh statistics, so the planner sees the seeded table as it is.
async fn analyze_deliveries(t: &TestDb) {
    let analyze = match t.backend {
        Backend::Postgres => "ANALYZE webhook_deliveries",
        Backend::MySql => "ANALYZE TABLE webhook_deliveries",
        Backend::Sqlite => "ANALYZE",
    };
    t.exec(analyze).await;
}
