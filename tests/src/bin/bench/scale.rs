//! Scale on one PostgreSQL (docs/benchmarks.md section 9): the claim on a table of millions of
//! rows, a prune while claims run, and a dropped partition against a batched `DELETE`.

use std::time::{Duration, Instant};

use agent_webhooks::delivery;
use agent_webhooks::settings::WebhookSettings;
use chrono::Utc;
use integration_tests::{Backend, TestDb};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};

use super::{Report, ms, org, percentile, seed_agent_quiet, seed_deliveries_sql};

/// The pause between prune batches in the scale section: about the time of one batch of 1,000
/// on the 2-core machine of docs/benchmarks.md section 9, so the prune uses about half a core.
const PRUNE_PAUSE_MS: u64 = 30;

/// `claim_due` p50 with `rows` deliveries against 10k (`samples` claims per size), `prune` of
/// `pruned` finished rows in batches of 1,000 while claims run (claim p99 during against
/// without), with and without a pause between batches, and a partition dropped against the
/// same rows deleted in batches, on scratch copies.
pub(super) async fn figures(report: &mut Report, rows: usize, pruned: usize, samples: usize) {
    let backend = Backend::Postgres;
    let claim_samples = |db: DatabaseConnection, samples: usize| async move {
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let txn = db.begin().await.expect("begin");
            let start = Instant::now();
            let claims = delivery::claim_due(&txn, &WebhookSettings::default(), Utc::now(), 100)
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
            let deleted = delivery::prune(&db, cut, 1_000, pause, |_| {})
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

/// [`super::seed_deliveries`] for millions of rows on PostgreSQL: the secondary indexes and
/// foreign keys of `webhook_deliveries` are dropped, the rows inserted (primary key kept), and
/// the indexes and keys created again from their definitions as the migrations left them
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
