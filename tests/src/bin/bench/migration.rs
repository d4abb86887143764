//! The webhook migration on an existing `agents` table (docs/benchmarks.md section 1): `up`
//! and `down` of `add_webhook_fields_to_agent` on tables of growing size. A ratio near 1
//! between the largest and the empty table shows a catalog change, not a table rewrite.

use std::time::{Duration, Instant};

use integration_tests::{Backend, TestDb};
use migration::{Migrator, MigratorTrait};

use super::{Report, ms, org, percentile};

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

/// `up` and `down` on `agents` tables of `sizes` rows each, the median of `cycles` up/down
/// cycles per size, and each size's ratio to the empty table.
pub(super) async fn figures(report: &mut Report, backend: Backend, sizes: &[usize], cycles: usize) {
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
