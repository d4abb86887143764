//! The migration binary as operators run it.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use integration_tests::{Backend, TestDb, backend_tests, schema};

use migration::{Migrator, MigratorTrait};

use migration::owned::{Format, render};

/// The `migration` binary.
fn migration_binary() -> std::path::PathBuf {
    integration_tests::workspace_program("migration", "-p migration --bin migration")
}

fn migration(cwd: &Path, url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(migration_binary());
    cmd.current_dir(cwd).args(args).env_remove("DATABASE_URL");
    if let Some(url) = url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.output().expect("run the migration binary")
}

/// The newest migration, which `down` rolls back: read from the list so that adding a migration
/// does not break these tests.
fn last_migration() -> String {
    let migrations = Migrator::migrations();
    let last = migrations.last().expect("at least one migration");
    last.name().to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Without `DATABASE_URL` the commands that change the schema say once that they use the
/// embedded SQLite default; `status`, which only reads, does not. Counts of migrations take
/// the noun that fits.
#[test]
fn defaults_to_embedded_sqlite_and_says_so_when_it_writes() {
    const NOTE: &str = "DATABASE_URL is not set: using the embedded SQLite database";
    let dir = tempfile::tempdir().unwrap();
    let out = migration(dir.path(), None, &["up", "-n", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stderr(&out);
    assert_eq!(text.matches(NOTE).count(), 1, "{text}");
    assert!(
        text.lines().any(|l| l == "Applying 1 pending migration"),
        "{text}"
    );
    assert!(!text.contains("migrations\n"), "{text}");
    assert!(dir.path().join("webhooks.db").exists());
    let out = migration(dir.path(), None, &["up"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let status = migration(dir.path(), None, &["status"]);
    assert!(status.status.success());
    let text = stderr(&status);
    assert!(!text.contains(NOTE), "{text}");
    let last = last_migration();
    assert!(text.contains(&format!("{last}'... Applied")), "{text}");

    let down = migration(dir.path(), None, &["down"]);
    assert!(down.status.success(), "{}", stderr(&down));
    let text = stderr(&down);
    assert_eq!(text.matches(NOTE).count(), 1, "{text}");
    assert!(
        text.lines()
            .any(|l| l == "Rolling back 1 applied migration"),
        "{text}"
    );
    assert!(!text.contains("1 applied migrations"), "{text}");
    let text = stderr(&migration(dir.path(), None, &["status"]));
    assert!(text.contains(&format!("{last}'... Pending")), "{text}");

    let down = migration(dir.path(), None, &["down", "-n", "2"]);
    assert!(down.status.success(), "{}", stderr(&down));
    let text = stderr(&down);
    assert!(
        text.lines()
            .any(|l| l == "Rolling back 2 applied migrations"),
        "{text}"
    );
}

#[test]
fn refuses_to_drop_tables_with_rows_with_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("ops.db").display());
    assert!(migration(dir.path(), Some(&url), &["up"]).status.success());
    // Put a row in through sqlite itself: the binary has no insert command.
    let conn = Command::new(integration_tests::python())
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             c.execute(\"INSERT INTO organizations (id, name) VALUES ('org-1', 'Acme')\"); c.commit()",
        ])
        .arg(dir.path().join("ops.db"))
        .status()
        .expect("python");
    assert!(conn.success());
    for command in ["reset", "refresh", "fresh"] {
        let out = migration(dir.path(), Some(&url), &[command]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        let err = stderr(&out);
        let last = err.lines().last().unwrap_or_default();
        // `sea-orm-cli migrate` runs this binary but cannot pass the flag: the line names the
        // command that can.
        assert_eq!(
            last,
            format!(
                "error: refusing to destroy data: table `organizations` holds 1 row; if that is \
                 intended, run `cargo run -p migration -- {command} --allow-data-loss` \
                 (`sea-orm-cli migrate` cannot pass --allow-data-loss)"
            ),
            "{command}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // The operator says so: the row goes with our table.
    let out = migration(dir.path(), Some(&url), &["reset", "--allow-data-loss"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = migration(dir.path(), Some(&url), &["up"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn bad_url_gives_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "not a url",
        "oracle://scott:tiger@127.0.0.1/db",
        "postgres://nobody@127.0.0.1:1/none",
        "mysql://nobody@127.0.0.1:1/none",
    ] {
        let out = migration(dir.path(), Some(url), &["status"]);
        assert_eq!(out.status.code(), Some(1), "{url}");
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{url}: {err}");
        assert!(err.starts_with("error: "), "{url}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
}

/// Passwords that make the URL unparseable (an unescaped `/` or `#`, a port out of range),
/// which drivers quote whole in their error.
const UNPARSEABLE_URLS: [&str; 4] = [
    "postgres://ops:hun/ter2@127.0.0.1:5432/db",
    "postgres://ops:hun#ter2@127.0.0.1:5432/db",
    "postgres://ops:hunter2@127.0.0.1:99999/db",
    "mysql://ops:hun/ter2@127.0.0.1:99999/db",
];

#[test]
fn errors_and_logs_never_show_the_database_password() {
    let dir = tempfile::tempdir().unwrap();
    for url in UNPARSEABLE_URLS {
        for args in [&["up"][..], &["-v", "down"], &["status"]] {
            let out = migration(dir.path(), Some(url), args);
            assert_eq!(out.status.code(), Some(1), "{url}");
            let err = stderr(&out);
            assert!(!err.contains("hunter2") && !err.contains("ter2"), "{err}");
            assert!(err.contains("ops:***@127.0.0.1"), "{err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{url}: {err}");
        }
    }
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = migration(dir.path(), None, &["sideways"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Starts `n` `migration up` processes at once on the database at `url`; every one must exit 0
/// (the others wait for the first, then find nothing pending), and the schema must be whole.
async fn concurrent_ups(backend: Backend, n: usize) {
    let t = TestDb::fresh(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..n)
        .map(|_| {
            Command::new(migration_binary())
                .current_dir(dir.path())
                .arg("up")
                .env("DATABASE_URL", &t.url)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the migration binary")
        })
        .collect();
    for child in children {
        let out = child
            .wait_with_output()
            .expect("wait for the migration binary");
        assert!(
            out.status.success(),
            "{backend:?}, {n} concurrent ups: {}",
            stderr(&out)
        );
    }
    let applied = t.count("SELECT COUNT(*) FROM seaql_migrations").await;
    let all = i64::try_from(Migrator::migrations().len()).unwrap();
    assert_eq!(applied, all, "{backend:?}: every migration recorded once");
    let status = migration(dir.path(), Some(&t.url), &["status"]);
    assert!(!stderr(&status).contains("Pending"), "{}", stderr(&status));
}

async fn two_concurrent_ups_both_succeed(backend: Backend) {
    concurrent_ups(backend, 2).await;
}

async fn eight_concurrent_ups_all_succeed(backend: Backend) {
    concurrent_ups(backend, 8).await;
}

backend_tests!(
    two_concurrent_ups_both_succeed,
    eight_concurrent_ups_all_succeed
);

/// The state an interrupted `up` can leave (or another tool can make): the tables of the first
/// two migrations, and one index of the third already there, made by hand with `definition`.
async fn with_hand_made_index(backend: Backend, definition: &str) -> (TestDb, Output) {
    let t = TestDb::fresh(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let first_two = migration(dir.path(), Some(&t.url), &["up", "-n", "2"]);
    assert!(first_two.status.success(), "{}", stderr(&first_two));
    t.exec(definition).await;
    let out = migration(dir.path(), Some(&t.url), &["up"]);
    (t, out)
}

async fn an_existing_index_with_our_definition_is_done(backend: Backend) {
    let (t, out) = with_hand_made_index(
        backend,
        "CREATE UNIQUE INDEX ux_webhook_deliveries_agent_event \
         ON webhook_deliveries (agent_id, event_id)",
    )
    .await;
    assert!(out.status.success(), "{backend:?}: {}", stderr(&out));
    let all = i64::try_from(Migrator::migrations().len()).unwrap();
    assert_eq!(t.count("SELECT COUNT(*) FROM seaql_migrations").await, all);
}

async fn an_existing_index_with_another_definition_is_an_error_naming_it(backend: Backend) {
    for (definition, found) in [
        (
            "CREATE INDEX ix_webhook_deliveries_history ON webhook_deliveries (event_id)",
            "already exists as (event_id) but must be (agent_id, created_at, id)",
        ),
        (
            "CREATE INDEX ux_webhook_deliveries_agent_event \
             ON webhook_deliveries (agent_id, event_id)",
            "already exists as (agent_id, event_id) but must be UNIQUE (agent_id, event_id)",
        ),
    ] {
        let (t, out) = with_hand_made_index(backend, definition).await;
        assert_eq!(out.status.code(), Some(1), "{backend:?}: {definition}");
        let err = stderr(&out);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: index `") && last.contains(found),
            "{backend:?}: {err}"
        );
        assert_eq!(
            t.count("SELECT COUNT(*) FROM seaql_migrations").await,
            2,
            "{backend:?}: the third migration is not recorded"
        );
    }
}

backend_tests!(
    an_existing_index_with_our_definition_is_done,
    an_existing_index_with_another_definition_is_an_error_naming_it
);

/// MariaDB: `up` killed during `CREATE INDEX` leaves the server finishing the build. The rerun
/// does not see the index yet, tries to create it, waits for the build's lock and then hits
/// "Duplicate key name"; it must see that the index is now there, and ours, and go on.
///
/// Reproduced without a kill: a reader's open transaction holds the table's metadata lock, so a
/// `CREATE INDEX` of another session (the orphaned build) cannot finish; `up` starts, does not
/// see the index, and queues its own `CREATE INDEX` behind it; then the reader commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_finished_by_the_server_during_the_rerun_is_done_mysql() {
    use sea_orm::{ConnectionTrait, TransactionTrait};

    let t = TestDb::fresh(Backend::MySql).await;
    let dir = tempfile::tempdir().unwrap();
    let first_two = migration(dir.path(), Some(&t.url), &["up", "-n", "2"]);
    assert!(first_two.status.success(), "{}", stderr(&first_two));
    let reader = TestDb::reconnect(&t).await;
    let txn = reader.db.begin().await.unwrap();
    txn.execute_unprepared("SELECT COUNT(*) FROM webhook_deliveries")
        .await
        .unwrap();
    let builder = TestDb::reconnect(&t).await;
    let build = tokio::spawn(async move {
        builder
            .exec(
                "CREATE UNIQUE INDEX ux_webhook_deliveries_agent_event \
                 ON webhook_deliveries (agent_id, event_id)",
            )
            .await;
    });
    let waiting = "SELECT COUNT(*) FROM information_schema.processlist WHERE db = DATABASE() \
                   AND state = 'Waiting for table metadata lock' AND info LIKE 'CREATE%INDEX%'";
    wait_for(&t, waiting, 1).await;
    let (url, path) = (t.url.clone(), dir.path().to_owned());
    let up = tokio::task::spawn_blocking(move || migration(&path, Some(&url), &["up"]));
    wait_for(&t, waiting, 2).await;
    txn.commit().await.unwrap();
    build.await.unwrap();
    let out = up.await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let all = i64::try_from(Migrator::migrations().len()).unwrap();
    assert_eq!(t.count("SELECT COUNT(*) FROM seaql_migrations").await, all);
}

/// Polls `sql` (a count) until it reaches `n`, for at most 20 s.
async fn wait_for(t: &TestDb, sql: &str, n: i64) {
    for _ in 0..400 {
        if t.count(sql).await >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("still fewer than {n}: {sql}");
}

/// Agents in the crash test: enough that the webhook migration does real work on each backend.
const CRASH_AGENTS: i64 = 50_000;

/// A database migrated to the baseline only, holding [`CRASH_AGENTS`] agents of one organization.
async fn baseline_with_agents(backend: Backend) -> TestDb {
    let t = TestDb::fresh(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let out = migration(dir.path(), Some(&t.url), &["up", "-n", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    seed_agents(&t).await;
    t
}

/// Inserts organization `org-1` and [`CRASH_AGENTS`] agents into empty tables.
async fn seed_agents(t: &TestDb) {
    let backend = t.backend;
    t.exec("INSERT INTO organizations (id, name) VALUES ('org-1', 'Acme')")
        .await;
    // 0..99999 from five digit tables: portable where recursive CTE limits are not.
    let digits = "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
                  UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
                  UNION ALL SELECT 8 UNION ALL SELECT 9)";
    let n = "(a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d)";
    let name = |prefix: &str| match backend {
        Backend::MySql => format!("CONCAT('{prefix}', {n})"),
        _ => format!("'{prefix}' || {n}"),
    };
    t.exec(&format!(
        "INSERT INTO agents (id, organization_id, name, description) \
         SELECT {id}, 'org-1', {agent_name}, {description} \
         FROM {digits} a, {digits} b, {digits} c, {digits} e, {digits} f \
         WHERE {n} < {CRASH_AGENTS}",
        id = name("agent-"),
        agent_name = name("name "),
        description = name("about "),
    ))
    .await;
    assert_eq!(t.count("SELECT COUNT(*) FROM agents").await, CRASH_AGENTS);
}

/// Runs the migration binary with `args` and SIGKILLs it after `after`; whether it was still
/// running then (false: it had finished, nothing was interrupted).
fn killed_after(url: &str, args: &[&str], after: std::time::Duration) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(migration_binary())
        .current_dir(dir.path())
        .args(args)
        .env("DATABASE_URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the migration binary");
    std::thread::sleep(after);
    let running = child
        .try_wait()
        .expect("poll the migration binary")
        .is_none();
    child.kill().ok(); // SIGKILL; an error only means it had finished
    child.wait().expect("reap the migration binary");
    running
}

/// How long `args` takes to run to completion on `url`.
fn timed(url: &str, args: &[&str]) -> std::time::Duration {
    let dir = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let out = migration(dir.path(), Some(url), args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    start.elapsed()
}

/// `migration up` and `down` killed (SIGKILL) at random points on a table of 50k agents: running
/// the command again completes it, the schema equals a clean run's, and the agents' data is
/// unchanged. The seed is printed so that a failure can be replayed.
async fn killed_migrations_recover_on_rerun(backend: Backend) {
    use rand::{RngExt, SeedableRng};

    let agent_columns = ["id", "organization_id", "name", "description", "created_at"];
    // A clean run: the schema after `up` and after `down` to the baseline, and how long each takes.
    let clean = baseline_with_agents(backend).await;
    let base_schema = schema::snapshot(&clean).await;
    let up_time = timed(&clean.url, &["up"]);
    let up_schema = schema::snapshot(&clean).await;
    let webhook_migrations = Migrator::migrations().len() - 1;
    let down_n = webhook_migrations.to_string();
    let down_time = timed(&clean.url, &["down", "-n", &down_n]);
    assert_eq!(schema::snapshot(&clean).await, base_schema);

    let t = baseline_with_agents(backend).await;
    let data = schema::checksum(&schema::fingerprints(&t, "agents", &agent_columns).await);
    let seed: u64 = rand::rng().random();
    println!("{backend:?}: crash seed {seed}, clean up {up_time:?}, down {down_time:?}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut interrupted = 0;
    for round in 0..5 {
        let at = up_time.mul_f64(rng.random_range(0.0..1.0));
        interrupted += u32::from(killed_after(&t.url, &["up"], at));
        let out = migration(dir.path(), Some(&t.url), &["up"]);
        assert!(
            out.status.success(),
            "seed {seed} round {round}: rerun of up: {}",
            stderr(&out)
        );
        assert_eq!(
            schema::snapshot(&t).await,
            up_schema,
            "seed {seed} round {round}: after up"
        );

        let at = down_time.mul_f64(rng.random_range(0.0..1.0));
        interrupted += u32::from(killed_after(&t.url, &["down", "-n", &down_n], at));
        // Roll back what is still applied above the baseline: the kill may have come after some.
        let applied = t.count("SELECT COUNT(*) FROM seaql_migrations").await;
        let rest = (applied - 1).to_string();
        if applied > 1 {
            let out = migration(dir.path(), Some(&t.url), &["down", "-n", &rest]);
            assert!(
                out.status.success(),
                "seed {seed} round {round}: rerun of down: {}",
                stderr(&out)
            );
        }
        assert_eq!(
            schema::snapshot(&t).await,
            base_schema,
            "seed {seed} round {round}: after down"
        );
        let now = schema::checksum(&schema::fingerprints(&t, "agents", &agent_columns).await);
        assert_eq!(
            now, data,
            "seed {seed} round {round}: the agents' data changed"
        );
    }
    println!("{backend:?}: {interrupted} of 10 runs were killed while running");
}

backend_tests!(killed_migrations_recover_on_rerun);

/// `down` and `fresh` killed (SIGKILL) at random points, followed by `up` rather than by the
/// killed command. On MariaDB, which commits DDL as it goes, the kill can leave a migration
/// recorded as applied with part of its objects already dropped; `up` must complete the schema
/// (it equals a clean run's) and leave the agents' data as it was. `fresh --allow-data-loss`
/// rolls back the baseline too, taking our `agents` with it: after those rounds only the schema
/// is compared, and the agents are seeded again. The seed is printed for replays.
async fn killed_rollbacks_are_completed_by_up(backend: Backend) {
    use rand::{RngExt, SeedableRng};

    let agent_columns = ["id", "organization_id", "name", "description", "created_at"];
    let clean = baseline_with_agents(backend).await;
    timed(&clean.url, &["up"]);
    let up_schema = schema::snapshot(&clean).await;
    let down_n = (Migrator::migrations().len() - 1).to_string();
    let down_time = timed(&clean.url, &["down", "-n", &down_n]);
    timed(&clean.url, &["up"]);
    let fresh_time = timed(&clean.url, &["fresh", "--allow-data-loss"]);
    assert_eq!(schema::snapshot(&clean).await, up_schema);

    let t = baseline_with_agents(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let up = |round: &str| {
        let out = migration(dir.path(), Some(&t.url), &["up"]);
        assert!(
            out.status.success(),
            "{backend:?} {round}: up after the kill: {}",
            stderr(&out)
        );
    };
    up("start");
    let data = schema::checksum(&schema::fingerprints(&t, "agents", &agent_columns).await);
    let seed: u64 = rand::rng().random();
    println!(
        "{backend:?}: rollback crash seed {seed}, clean down {down_time:?}, fresh {fresh_time:?}"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut interrupted = 0;
    for round in 0..3 {
        let at = down_time.mul_f64(rng.random_range(0.0..1.0));
        interrupted += u32::from(killed_after(&t.url, &["down", "-n", &down_n], at));
        up(&format!("seed {seed} down round {round}"));
        assert_eq!(
            schema::snapshot(&t).await,
            up_schema,
            "seed {seed} down round {round}: schema after up"
        );
        let now = schema::checksum(&schema::fingerprints(&t, "agents", &agent_columns).await);
        assert_eq!(
            now, data,
            "seed {seed} down round {round}: the agents' data changed"
        );
    }
    for round in 0..3 {
        let at = fresh_time.mul_f64(rng.random_range(0.0..1.0));
        interrupted += u32::from(killed_after(&t.url, &["fresh", "--allow-data-loss"], at));
        up(&format!("seed {seed} fresh round {round}"));
        assert_eq!(
            schema::snapshot(&t).await,
            up_schema,
            "seed {seed} fresh round {round}: schema after up"
        );
        // The kill may have come after `agents` went and before `organizations` did.
        if t.count("SELECT COUNT(*) FROM agents").await == 0 {
            t.exec("DELETE FROM organizations").await;
            seed_agents(&t).await;
        }
    }
    let status = migration(dir.path(), Some(&t.url), &["status"]);
    assert!(
        !stderr(&status).contains("incomplete") && !stderr(&status).contains("Pending"),
        "{}",
        stderr(&status)
    );
    println!("{backend:?}: {interrupted} of 6 rollbacks were killed while running");
}

backend_tests!(killed_rollbacks_are_completed_by_up);

/// What an interrupted `down` of the newest migration leaves on MariaDB, made by hand on every
/// backend: the migration is recorded as applied, its table and one of its columns are gone.
/// `status` names the migration and what is missing; `up` restores exactly the clean schema.
async fn status_names_what_an_applied_migration_lacks_and_up_restores_it(backend: Backend) {
    let t = TestDb::fresh(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let out = migration(dir.path(), Some(&t.url), &["up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let clean = schema::snapshot(&t).await;
    t.exec("DROP TABLE webhook_previous_secrets").await;
    t.exec("ALTER TABLE agents DROP COLUMN webhook_ed25519_public_key")
        .await;

    let status = migration(dir.path(), Some(&t.url), &["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let text = stderr(&status);
    assert!(
        text.contains(
            "Migration 'm20261129_000005_signing_secrets'... Applied, incomplete: missing table \
             `webhook_previous_secrets`, column `agents.webhook_ed25519_public_key`"
        ),
        "{backend:?}: {text}"
    );
    assert_eq!(
        text.matches("incomplete").count(),
        1,
        "{backend:?}: only the signing-secrets migration lacks objects: {text}"
    );

    let out = migration(dir.path(), Some(&t.url), &["up"]);
    assert!(out.status.success(), "{backend:?}: {}", stderr(&out));
    assert_eq!(schema::snapshot(&t).await, clean, "{backend:?}");
    let text = stderr(&migration(dir.path(), Some(&t.url), &["status"]));
    assert!(!text.contains("incomplete"), "{backend:?}: {text}");

    // The first step of the worker migration's `down` restores the index its `up` dropped; a
    // rollback interrupted right after it leaves the index behind.
    t.exec("CREATE INDEX ix_webhook_deliveries_agent_id ON webhook_deliveries (agent_id)")
        .await;
    let text = stderr(&migration(dir.path(), Some(&t.url), &["status"]));
    assert!(
        text.contains(
            "Migration 'm20261129_000004_delivery_worker'... Applied, incomplete: left over \
             index `webhook_deliveries.ix_webhook_deliveries_agent_id`"
        ),
        "{backend:?}: {text}"
    );
    let out = migration(dir.path(), Some(&t.url), &["up"]);
    assert!(out.status.success(), "{backend:?}: {}", stderr(&out));
    assert_eq!(schema::snapshot(&t).await, clean, "{backend:?}");
}

backend_tests!(status_names_what_an_applied_migration_lacks_and_up_restores_it);

/// MariaDB: runs `migration down` on `t` while a reader's open transaction holds the metadata
/// lock of `table`, and kills it (SIGKILL) once it waits for that lock at a statement starting
/// with `blocked`. Returns the reader and its transaction, still open.
async fn kill_down_blocked_by_reader(
    t: &TestDb,
    dir: &Path,
    table: &str,
    blocked: &str,
) -> (TestDb, sea_orm::DatabaseTransaction) {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let reader = TestDb::reconnect(t).await;
    let txn = reader.db.begin().await.unwrap();
    txn.execute_unprepared(&format!("SELECT COUNT(*) FROM {table}"))
        .await
        .unwrap();
    let mut down = Command::new(migration_binary())
        .current_dir(dir)
        .arg("down")
        .env("DATABASE_URL", &t.url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the migration binary");
    let waiting = format!(
        "SELECT COUNT(*) FROM information_schema.processlist WHERE db = DATABASE() \
         AND state = 'Waiting for table metadata lock' AND info LIKE '{blocked}%'"
    );
    wait_for(t, &waiting, 1).await;
    down.kill().unwrap();
    down.wait().unwrap();
    (reader, txn)
}

/// The migration the two tests below interrupt the rollback of: one with a table and a column
/// on `agents`, whose `down` drops the table first.
const SIGNING_SECRETS: &str = "m20261129_000005_signing_secrets";

/// Migrates `t` fully, then rolls back every migration newer than [`SIGNING_SECRETS`], so that
/// a `down` rolls that one back. Returns the fully migrated schema.
async fn up_then_down_to_signing_secrets(t: &TestDb, dir: &Path) -> Vec<String> {
    let out = migration(dir, Some(&t.url), &["up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let clean = schema::snapshot(t).await;
    let migrations = Migrator::migrations();
    let at = migrations
        .iter()
        .position(|m| m.name() == SIGNING_SECRETS)
        .expect("the signing-secrets migration");
    let newer = (migrations.len() - 1 - at).to_string();
    if newer != "0" {
        let out = migration(dir, Some(&t.url), &["down", "-n", &newer]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    clean
}

/// MariaDB: `down` killed for real half way. A reader's open transaction on `agents` holds its
/// metadata lock, so the `down` of the signing-secrets migration drops its table, then waits to
/// drop the first column; it is killed there, and the server finishes that orphaned `ALTER` once
/// the reader commits. The migration stays recorded as applied: `status` shows what is missing
/// and `up` completes the schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_killed_half_way_is_shown_by_status_and_completed_by_up_mysql() {
    let t = TestDb::fresh(Backend::MySql).await;
    let dir = tempfile::tempdir().unwrap();
    let clean = up_then_down_to_signing_secrets(&t, dir.path()).await;

    let (_reader, txn) = kill_down_blocked_by_reader(&t, dir.path(), "agents", "ALTER TABLE").await;
    txn.commit().await.unwrap();
    let altering = "SELECT COUNT(*) FROM information_schema.processlist WHERE db = DATABASE() \
                    AND info LIKE 'ALTER TABLE%'";
    for _ in 0..400 {
        if t.count(altering).await == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        t.count(&format!(
            "SELECT COUNT(*) FROM seaql_migrations WHERE version = '{SIGNING_SECRETS}'"
        ))
        .await,
        1,
        "the killed down left its migration recorded as applied"
    );

    let text = stderr(&migration(dir.path(), Some(&t.url), &["status"]));
    assert!(
        text.contains(&format!(
            "Migration '{SIGNING_SECRETS}'... Applied, incomplete: missing table \
             `webhook_previous_secrets`, column `agents.webhook_ed25519_public_key`"
        )),
        "{text}"
    );
    let out = migration(dir.path(), Some(&t.url), &["up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(schema::snapshot(&t).await, clean);
}

/// MariaDB: `down` of the signing-secrets migration killed before its first `DROP` took effect
/// (it waits for a reader's metadata lock on the table, and the server ends its connection).
/// Nothing is missing, but the rollback began: it may already have forgotten records. `status`
/// says so and `up` clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_killed_before_its_first_drop_is_shown_by_status_mysql() {
    let t = TestDb::fresh(Backend::MySql).await;
    let dir = tempfile::tempdir().unwrap();
    let clean = up_then_down_to_signing_secrets(&t, dir.path()).await;
    let before = schema::snapshot(&t).await;

    let (_reader, txn) =
        kill_down_blocked_by_reader(&t, dir.path(), "webhook_previous_secrets", "DROP TABLE").await;
    let dropping = "SELECT CAST(id AS CHAR) FROM information_schema.processlist \
                    WHERE db = DATABASE() AND info LIKE 'DROP TABLE%'";
    for id in t.strings(dropping).await {
        t.exec(&format!("KILL {id}")).await;
    }
    // KILL only flags the thread: wait until it is gone, or the reader's commit below could
    // hand it the lock before it sees the flag, and the table would be dropped after all.
    for _ in 0..400 {
        if t.strings(dropping).await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        t.strings(dropping).await.is_empty(),
        "the killed DROP is still running"
    );
    txn.commit().await.unwrap();
    assert_eq!(schema::snapshot(&t).await, before, "nothing was dropped");

    let text = stderr(&migration(dir.path(), Some(&t.url), &["status"]));
    assert!(
        text.contains(&format!(
            "Migration '{SIGNING_SECRETS}'... Applied, incomplete: its rollback was interrupted; \
             `migration up` completes it"
        )),
        "{text}"
    );
    let out = migration(dir.path(), Some(&t.url), &["up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(schema::snapshot(&t).await, clean);
    let text = stderr(&migration(dir.path(), Some(&t.url), &["status"]));
    assert!(!text.contains("incomplete"), "{text}");
}

// `migration owned`: the objects we own, for the host's schema tool; docs/schema.md's copy of
// the Alembic hook is kept identical to what it prints.
/// `migration owned ARGS` in an empty directory without `DATABASE_URL`: it needs no database.
fn owned(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(migration_binary())
        .current_dir(dir.path())
        .arg("owned")
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run the migration binary");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !dir.path().join("webhooks.db").exists(),
        "`owned` must not open a database"
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn prints_json_by_default_and_the_alembic_hook_on_request() {
    let json: serde_json::Value = serde_json::from_str(&owned(&[])).unwrap();
    assert_eq!(
        json["tables"],
        serde_json::json!([
            "webhook_deliveries",
            "webhook_delivery_attempts",
            "webhook_previous_secrets",
            "webhook_lanes",
            "seaql_migrations",
            "agent_webhooks_schema_objects"
        ])
    );
    assert_eq!(
        owned(&["--format", "json"]),
        format!("{}\n", render(Format::Json))
    );
    let alembic = owned(&["--format", "alembic"]);
    assert_eq!(alembic, format!("{}\n", render(Format::Alembic)));
    assert!(alembic.contains("def include_object(object, name, type_, reflected, compare_to):"));
}

/// `owned --check` migrates an in-memory database, not the default file, and agrees.
#[test]
fn owned_check_agrees_with_the_migrations() {
    assert_eq!(owned(&["--check"]), "");
}

#[test]
fn the_schema_doc_shows_the_hook_the_command_prints() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/schema.md"))
        .expect("docs/schema.md");
    let hook = render(Format::Alembic);
    assert!(
        doc.contains(&format!("```python\n{hook}```")),
        "docs/schema.md must show the output of `migration owned --format alembic` verbatim:\n{hook}"
    );
}

/// A port nothing listens on: a listener's, closed again.
fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn passwords_with_url_characters_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let port = refused_port();
    for (url, secret) in [
        // A `?` ends the authority for a URL parser: the driver quotes the URL it cannot parse.
        (
            format!("postgres://ops:hun?ter2@127.0.0.1:{port}/db"),
            "ter2",
        ),
        (
            format!("mysql://ops:a?b#c/hun@ter2@127.0.0.1:{port}/db"),
            "ter2",
        ),
        // sqlx takes the password from the query too.
        (
            "postgres://ops@127.0.0.1:99999/db?password=hunter2".to_owned(),
            "hunter2",
        ),
        (
            "mysql://ops@127.0.0.1:99999/db?ssl-mode=disabled&password=hunter2".to_owned(),
            "hunter2",
        ),
    ] {
        for args in [&["up"][..], &["-v", "status"]] {
            let out = migration(dir.path(), Some(&url), args);
            assert_eq!(out.status.code(), Some(1), "{url}");
            let err = stderr(&out);
            assert!(!err.contains(secret), "{url}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{url}: {err}");
        }
    }
    // A short password masks itself, not every word that contains it.
    let url = "postgres://ops:none@127.0.0.1:99999/nonexistent";
    let err = stderr(&migration(dir.path(), Some(url), &["status"]));
    assert!(err.contains("ops:***@127.0.0.1:99999/nonexistent"), "{err}");
}

#[test]
fn a_refused_database_fails_at_once_naming_host_port_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let port = refused_port();
    for scheme in ["postgres", "mysql"] {
        let url = format!("{scheme}://ops:hunter2@127.0.0.1:{port}/webhooks");
        let started = std::time::Instant::now();
        let out = migration(dir.path(), Some(&url), &["up"]);
        let took = started.elapsed();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(took < std::time::Duration::from_secs(3), "{took:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("127.0.0.1:{port}")) && err.contains("refused"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
}

/// Runs `migration ARGS` in `cwd` with stdout (or, with `stderr_closed`, stderr) a pipe whose
/// reader is gone before it starts, as after `| head -1` has read its line.
fn migration_into_closed_pipe(cwd: &Path, args: &[&str], stderr_closed: bool) -> Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let mut cmd = Command::new(migration_binary());
    cmd.current_dir(cwd).args(args).env_remove("DATABASE_URL");
    if stderr_closed {
        cmd.stdout(Stdio::piped()).stderr(writer);
    } else {
        cmd.stdout(writer).stderr(Stdio::piped());
    }
    cmd.output().expect("run the migration binary")
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["json", "alembic"] {
        let out = migration_into_closed_pipe(dir.path(), &["owned", "--format", format], false);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(out.stderr.is_empty(), "{}", stderr(&out));
    }
    // The note that DATABASE_URL is unset, and the log, into a closed stderr: no panic.
    let out = migration_into_closed_pipe(dir.path(), &["up"], true);
    assert_eq!(out.status.code(), Some(0));
    assert!(dir.path().join("webhooks.db").exists());
}

#[test]
fn logs_into_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = migration(dir.path(), None, &["-v", "up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("Applying migration"), "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
}
