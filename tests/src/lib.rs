//! Test harness: a fresh, real database per test on SQLite, PostgreSQL and MariaDB/MySQL.
//!
//! PostgreSQL and MariaDB are reached through `TEST_POSTGRES_URL` and `TEST_MYSQL_URL` (an
//! administrative URL whose user may create databases), defaulting to the local loopback servers
//! `scripts/start-databases` provides. A backend that cannot be reached fails the test with a
//! message saying how to provide it: nothing is skipped silently.
//!
//! Each test gets its own database (`<TEST_DB_PREFIX><random>` on the servers, prefix `aw_t_` by
//! default, a temporary file for SQLite); `scripts/test` gives each run its own prefix and drops
//! that run's databases when it ends, and programs such as
//! the benchmarks drop theirs with [`drop_created_databases`].

use std::sync::{Mutex, MutexGuard, PoisonError};

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

pub mod schema;

/// The database servers the suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MariaDB (or MySQL).
    MySql,
}

/// Default administrative URLs of the local servers.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// See [`DEFAULT_POSTGRES_URL`].
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/mysql";

/// The Python interpreter of the tests that cross-check against Python packages:
/// `TEST_PYTHON`, which `scripts/test` sets to the virtual environment it installs the pinned
/// packages into (`.venv-test/`), else `python3` from `PATH`.
pub fn python() -> String {
    std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// A program of this workspace in the target directory the running test or bench was built
/// into (`target/<profile>/`): `path` below it, such as `agent-webhooks` or
/// `examples/app-server`. Cargo builds only a test's own package's binaries for it, so a missing
/// program panics with the command that builds it (`cargo build <build_args>`).
pub fn workspace_program(path: &str, build_args: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the running program's path");
    let mut dir = exe.parent().expect("its directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let release = if dir.ends_with("release") {
        " --release"
    } else {
        ""
    };
    let program = dir.join(path);
    assert!(
        program.exists(),
        "{} is missing: build it with `cargo build{release} {build_args}`",
        program.display()
    );
    program
}

/// A fresh database for one test; the temporary directory (SQLite) lives as long as it does.
pub struct TestDb {
    /// Which backend this is.
    pub backend: Backend,
    /// The URL of the fresh database, for child processes such as the migration binary.
    pub url: String,
    /// A pool connected to it.
    pub db: DatabaseConnection,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Creates an empty database on `backend` and connects to it (pool of 5); for tests of the
    /// migrations, which start before any of them ran.
    pub async fn fresh(backend: Backend) -> TestDb {
        Self::fresh_with(backend, 5).await
    }

    /// Like [`TestDb::fresh`] with a chosen pool size, for concurrency tests.
    pub async fn fresh_with(backend: Backend, max_connections: u32) -> TestDb {
        let name = format!(
            "{}{}",
            database_prefix(),
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let (url, dir) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let path = dir.path().join("test.db");
                (format!("sqlite://{}?mode=rwc", path.display()), Some(dir))
            }
            Backend::Postgres | Backend::MySql => {
                let (admin, (var, _)) = (admin_url(backend), admin_env(backend));
                let conn = connect(&admin, 1).await.unwrap_or_else(|e| {
                    panic!(
                        "{backend:?} is not reachable at {admin}: {e}. Start it with \
                         scripts/start-databases, or set {var} to a server where this user may \
                         create databases."
                    )
                });
                conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap_or_else(|e| panic!("cannot create database {name} on {admin}: {e}"));
                created().push((backend, name.clone()));
                conn.close().await.ok();
                (replace_database(&admin, &name), None)
            }
        };
        let db = connect(&url, max_connections)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to fresh database {url}: {e}"));
        TestDb {
            backend,
            url,
            db,
            _dir: dir,
        }
    }

    /// A fresh database with every migration applied: the starting point of any test that is
    /// not about the migrations themselves.
    pub async fn migrated(backend: Backend) -> TestDb {
        Self::migrated_with(backend, 5).await
    }

    /// Like [`TestDb::migrated`] with a chosen pool size, for concurrency tests.
    pub async fn migrated_with(backend: Backend, max_connections: u32) -> TestDb {
        let t = Self::fresh_with(backend, max_connections).await;
        Migrator::up(&t.db, None)
            .await
            .unwrap_or_else(|e| panic!("cannot migrate the fresh {backend:?} database: {e}"));
        t
    }

    /// A second handle on the same database with its own single-connection pool.
    pub async fn reconnect(other: &TestDb) -> TestDb {
        let db = connect(&other.url, 1)
            .await
            .unwrap_or_else(|e| panic!("cannot reconnect to {}: {e}", other.url));
        TestDb {
            backend: other.backend,
            url: other.url.clone(),
            db,
            _dir: None,
        }
    }

    /// Runs one SQL statement (no parameters); panics with the statement on failure.
    pub async fn exec(&self, sql: &str) {
        self.db
            .execute_unprepared(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// A statement for this backend.
    pub fn stmt(&self, sql: impl Into<String>) -> Statement {
        Statement::from_string(self.db.get_database_backend(), sql.into())
    }

    /// The first column of every row of `sql`, as strings.
    pub async fn strings(&self, sql: &str) -> Vec<String> {
        self.db
            .query_all_raw(self.stmt(sql))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|row| {
                row.try_get_by_index::<String>(0)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            })
            .collect()
    }

    /// The single integer `sql` returns (e.g. a `COUNT(*)`).
    pub async fn count(&self, sql: &str) -> i64 {
        let row = self
            .db
            .query_one_raw(self.stmt(sql))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or_else(|| panic!("{sql}: no row"));
        row.try_get_by_index::<i64>(0)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// SQL backend of this database.
    pub fn db_backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }
}

/// Every server database this process created, in order, so that a program can drop them.
static CREATED: Mutex<Vec<(Backend, String)>> = Mutex::new(Vec::new());

fn created() -> MutexGuard<'static, Vec<(Backend, String)>> {
    // A panic while the list was held leaves it whole (push and drain do not panic half way).
    CREATED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drops every PostgreSQL and MariaDB database this process created, first ending the sessions
/// still connected to them (pools of a task that panicked or was cancelled may still hold some),
/// and returns their names.
///
/// For programs such as the benchmarks, which must not leave databases behind even when they
/// fail; a test binary has no hook after its last test, so tests leave theirs to
/// `scripts/test`. SQLite files need nothing: their directory goes with their [`TestDb`].
/// Databases it could not drop stay listed, so a later call retries them.
pub async fn drop_created_databases() -> Result<Vec<String>, DbErr> {
    drop_created_databases_of(&[Backend::Postgres, Backend::MySql]).await
}

/// [`drop_created_databases`] for the databases of `backends` only, e.g. those of a backend
/// whose benchmarks are done, dropped while another backend's run: a PostgreSQL `DROP
/// DATABASE` waits for a checkpoint, a second or more each on a busy server.
pub async fn drop_created_databases_of(backends: &[Backend]) -> Result<Vec<String>, DbErr> {
    let pending: Vec<(Backend, String)> = {
        let mut created = created();
        let (pending, rest) = created.drain(..).partition(|(b, _)| backends.contains(b));
        *created = rest;
        pending
    };
    let mut dropped = Vec::new();
    let mut failed = Vec::new();
    let mut first_error = None;
    for &backend in backends {
        let names: Vec<&String> = pending
            .iter()
            .filter(|(b, _)| *b == backend)
            .map(|(_, name)| name)
            .collect();
        if names.is_empty() {
            continue;
        }
        let outcome = drop_on(backend, &names).await;
        let done = match &outcome {
            Ok(()) => names.len(),
            Err((done, _)) => *done,
        };
        dropped.extend(names[..done].iter().map(|n| (*n).clone()));
        failed.extend(names[done..].iter().map(|n| (backend, (*n).clone())));
        if let Err((_, e)) = outcome {
            first_error.get_or_insert(e);
        }
    }
    created().extend(failed);
    match first_error {
        Some(e) => Err(e),
        None => Ok(dropped),
    }
}

/// The start of every test database's name: `TEST_DB_PREFIX` when it is `aw_t_` followed by
/// lower-case letters, digits and `_` (so that `scripts/test` can give each run its own and drop
/// only its own databases, leaving a concurrent run's alone), else `aw_t_`.
fn database_prefix() -> String {
    std::env::var("TEST_DB_PREFIX")
        .ok()
        .filter(|p| {
            p.starts_with("aw_t_")
                && p.len() <= 40
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .unwrap_or_else(|| "aw_t_".to_owned())
}

/// Drops `names` (all made by [`TestDb::fresh_with`]: the prefix and hex digits) on `backend`; on
/// failure, how many were dropped before it.
async fn drop_on(backend: Backend, names: &[&String]) -> Result<(), (usize, DbErr)> {
    let admin = admin_url(backend);
    let conn = connect(&admin, 1).await.map_err(|e| (0, e))?;
    if backend == Backend::MySql {
        // A session that survived `end_sessions` makes the DROP fail after this long rather
        // than wait for its lock for the default year.
        conn.execute_unprepared("SET SESSION lock_wait_timeout = 20")
            .await
            .map_err(|e| (0, e))?;
    }
    for (i, name) in names.iter().enumerate() {
        end_sessions(&conn, backend, name).await;
        let drop = match backend {
            Backend::MySql => format!("DROP DATABASE IF EXISTS `{name}`"),
            _ => format!("DROP DATABASE IF EXISTS {name}"),
        };
        conn.execute_unprepared(&drop).await.map_err(|e| (i, e))?;
    }
    conn.close().await.ok();
    Ok(())
}

/// Ends the other sessions connected to `name`, which would make `DROP DATABASE` fail
/// (PostgreSQL) or wait on their locks (MariaDB). Best effort: a session may end by itself
/// meanwhile, and the `DROP` that follows reports what still stands in its way.
async fn end_sessions(conn: &DatabaseConnection, backend: Backend, name: &str) {
    match backend {
        Backend::Postgres => {
            let sql = format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            );
            conn.execute_unprepared(&sql).await.ok();
        }
        Backend::MySql => {
            let sql = format!(
                "SELECT CAST(id AS SIGNED) FROM information_schema.processlist \
                 WHERE db = '{name}' AND id <> CONNECTION_ID()"
            );
            let stmt = Statement::from_string(DbBackend::MySql, sql);
            for row in conn.query_all_raw(stmt).await.unwrap_or_default() {
                if let Ok(id) = row.try_get_by_index::<i64>(0) {
                    conn.execute_unprepared(&format!("KILL {id}")).await.ok();
                }
            }
        }
        Backend::Sqlite => {}
    }
}

/// The environment variable naming a server backend's administrative URL, and its default.
fn admin_env(backend: Backend) -> (&'static str, &'static str) {
    match backend {
        Backend::Postgres => ("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        Backend::MySql => ("TEST_MYSQL_URL", DEFAULT_MYSQL_URL),
        Backend::Sqlite => ("", ""),
    }
}

/// The administrative URL of a server backend: its environment variable, else the default.
fn admin_url(backend: Backend) -> String {
    let (var, default) = admin_env(backend);
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// A connection for questions about the server rather than about one test database (such as
/// its version): the administrative URL of PostgreSQL and MariaDB (`TEST_POSTGRES_URL`,
/// `TEST_MYSQL_URL`), an in-memory database for SQLite. It creates no database, so it costs
/// no migration and nothing to drop.
pub async fn admin_connection(backend: Backend) -> Result<DatabaseConnection, DbErr> {
    match backend {
        Backend::Sqlite => connect("sqlite::memory:", 1).await,
        _ => connect(&admin_url(backend), 1).await,
    }
}

/// `scheme://auth@host:port/old?query` with the database replaced by `name`.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// Connects the way the service expects (WAL on SQLite), so tests see what an app sees.
async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    agent_webhooks::db::connect(url, max_connections)
        .await
        .map_err(|err| match err {
            agent_webhooks::Error::Db(err) => err,
            // This crate asks for every backend; a build without one is refused by name.
            other => DbErr::Custom(other.to_string()),
        })
}

/// Defines one `#[tokio::test]` per backend for each named async test function taking a
/// [`Backend`]: `backend_tests!(up_then_down);` gives `up_then_down::sqlite`, `::postgres` and
/// `::mysql`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                super::$name($crate::Backend::MySql).await
            }
        }
    )+};
}

/// Inserts organization `org-1` (if missing) and an agent with an enabled webhook to
/// `https://hooks.example.com/<agent_id>` wanting `events` (empty = all).
pub async fn seed_agent(t: &TestDb, agent_id: &str, events: &[&str]) {
    use entity::{agents, organizations};
    use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
    if organizations::Entity::find_by_id("org-1")
        .one(&t.db)
        .await
        .expect("query organizations")
        .is_none()
    {
        organizations::ActiveModel {
            id: Set("org-1".to_owned()),
            name: Set("Acme".to_owned()),
            ..Default::default()
        }
        .insert(&t.db)
        .await
        .expect("insert organization");
    }
    agents::ActiveModel {
        id: Set(agent_id.to_owned()),
        organization_id: Set("org-1".to_owned()),
        name: Set(agent_id.to_owned()),
        webhook_url: Set(Some(format!("https://hooks.example.com/{agent_id}"))),
        webhook_events: Set(Some(serde_json::json!(events))),
        webhook_enabled: Set(true),
        webhook_ordered: Set(false),
        ..Default::default()
    }
    .insert(&t.db)
    .await
    .expect("insert agent");
}

/// Seeds `agent_id` (see [`seed_agent`]) with an enabled webhook to `url`, wanting every
/// event, and a generated secret, configured through the library under `settings`; returns
/// the secret.
pub async fn seed_webhook(
    t: &TestDb,
    settings: &agent_webhooks::settings::WebhookSettings,
    agent_id: &str,
    url: &str,
) -> agent_webhooks::secrets::webhook_secret::WebhookSecret {
    use agent_webhooks::secrets::webhook_secret::WebhookSecret;
    use agent_webhooks::webhook::{self, WebhookConfig};
    seed_agent(t, agent_id, &[]).await;
    let secret = WebhookSecret::generate().expect("generate a secret");
    let config = WebhookConfig {
        webhook_url: url.to_owned(),
        webhook_secret: Some(secrecy::SecretString::from(secret.expose().to_owned())),
        webhook_events: vec![],
        webhook_enabled: true,
        webhook_filter: None,
        webhook_ordered: false,
    };
    webhook::configure(&t.db, settings, agent_id, &config)
        .await
        .expect("configure the webhook");
    secret
}

/// Enqueues `event_id` of `event_type` for `agent_id` with an empty JSON object as payload and
/// the default settings, for tests where neither matters.
pub async fn enqueue_event<C: sea_orm::ConnectionTrait + sea_orm::TransactionTrait>(
    db: &C,
    agent_id: &str,
    event_id: &str,
    event_type: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> agent_webhooks::Result<agent_webhooks::delivery::Enqueued> {
    let settings = agent_webhooks::settings::WebhookSettings::default();
    agent_webhooks::delivery::enqueue(
        db,
        &settings,
        agent_id,
        event_id,
        event_type,
        &serde_json::json!({}),
        now,
    )
    .await
}

/// A worker running [`Dispatcher::run`](agent_webhooks::dispatch::Dispatcher::run) in a task
/// until [`RunningWorker::stop`], for the tests and the bench that watch it work meanwhile.
pub struct RunningWorker {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<agent_webhooks::dispatch::DrainReport>,
}

impl RunningWorker {
    /// Starts `dispatcher` polling (and listening, where set) until stopped.
    pub fn start(dispatcher: agent_webhooks::dispatch::Dispatcher) -> RunningWorker {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            dispatcher
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        RunningWorker { stop, task }
    }

    /// Signals the shutdown and waits for the worker's report.
    pub async fn stop(self) -> agent_webhooks::dispatch::DrainReport {
        let _ = self.stop.send(());
        self.task.await.expect("the worker task panicked")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::TransactionTrait;

    /// Whether `name` exists on `backend`'s server, asked on a connection of its own.
    async fn exists(backend: Backend, name: &str) -> bool {
        let admin = admin_url(backend);
        let conn = connect(&admin, 1).await.expect("admin connection");
        let sql = match backend {
            Backend::Postgres => {
                format!("SELECT COUNT(*) FROM pg_database WHERE datname = '{name}'")
            }
            _ => format!(
                "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = '{name}'"
            ),
        };
        let row = conn
            .query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
            .await
            .expect("query")
            .expect("one row");
        let count: i64 = row.try_get_by_index(0).expect("count");
        conn.close().await.ok();
        count == 1
    }

    // The only test of this binary that creates databases: drop_created_databases drops every
    // database of the process, so it must not share one with other database tests.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drops_the_databases_it_created_even_while_they_are_in_use() {
        let pg = TestDb::migrated(Backend::Postgres).await;
        let my = TestDb::migrated(Backend::MySql).await;
        let sqlite = TestDb::fresh(Backend::Sqlite).await;
        let name = |t: &TestDb| t.url.rsplit('/').next().expect("a path").to_owned();
        let names = vec![name(&pg), name(&my)];
        assert!(exists(Backend::Postgres, &names[0]).await);
        assert!(exists(Backend::MySql, &names[1]).await);
        // Sessions still open: PostgreSQL refuses to drop a database in use, and MariaDB waits
        // for the metadata lock an open transaction holds on a table it read.
        let txn = my.db.begin().await.expect("begin");
        txn.execute_unprepared("SELECT COUNT(*) FROM agents")
            .await
            .expect("read in the transaction");
        pg.exec("SELECT 1").await;

        let dropped = drop_created_databases().await.expect("drop");
        assert_eq!(
            dropped, names,
            "exactly the server databases, SQLite needs nothing"
        );
        assert!(!exists(Backend::Postgres, &names[0]).await);
        assert!(!exists(Backend::MySql, &names[1]).await);
        assert!(drop_created_databases().await.expect("again").is_empty());
        drop((txn, pg, my, sqlite));
    }

    #[test]
    fn replaces_the_database_in_urls() {
        assert_eq!(
            replace_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            replace_database("mysql://root@h:3306", "x"),
            "mysql://root@h:3306/x"
        );
        assert_eq!(
            replace_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}
