//! Test harness: a fresh, real database per test on SQLite, PostgreSQL and MariaDB/MySQL.
//!
//! PostgreSQL and MariaDB are reached through `TEST_POSTGRES_URL` and `TEST_MYSQL_URL` (an
//! administrative URL whose user may create databases), defaulting to the local loopback servers
//! `scripts/start-databases` provides. A backend that cannot be reached fails the test with a
//! message saying how to provide it: nothing is skipped silently.
//!
//! Each test gets its own database (`aw_t_<random>` on the servers, a temporary file for SQLite);
//! `scripts/test` drops leftover `aw_t_%` databases before and after a run.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

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
    /// Creates an empty database on `backend` and connects to it (pool of `max_connections`).
    pub async fn fresh(backend: Backend) -> TestDb {
        Self::fresh_with(backend, 5).await
    }

    /// Like [`TestDb::fresh`] with a chosen pool size, for concurrency tests.
    pub async fn fresh_with(backend: Backend, max_connections: u32) -> TestDb {
        let name = format!("aw_t_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let (url, dir) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let path = dir.path().join("test.db");
                (format!("sqlite://{}?mode=rwc", path.display()), Some(dir))
            }
            Backend::Postgres | Backend::MySql => {
                let (var, default) = admin_url(backend);
                let admin = std::env::var(var).unwrap_or_else(|_| default.to_owned());
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

fn admin_url(backend: Backend) -> (&'static str, &'static str) {
    match backend {
        Backend::Postgres => ("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        Backend::MySql => ("TEST_MYSQL_URL", DEFAULT_MYSQL_URL),
        Backend::Sqlite => ("", ""),
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
async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, sea_orm::DbErr> {
    agent_webhooks::db::connect(url, max_connections).await
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
        ..Default::default()
    }
    .insert(&t.db)
    .await
    .expect("insert agent");
}

#[cfg(test)]
mod tests {
    use super::replace_database;

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
