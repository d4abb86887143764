//! CPU time from `/proc/<pid>/stat`: of this process and of the database server's processes
//! that serve one test database. Shared by the worker section (CPU per 1,000 deliveries) and
//! the throughput section (backend CPU per operation), so both count the same way.
//!
//! Resolution: Linux reports `utime` and `stime` in clock ticks of 10 ms (the kernel keeps the
//! exact runtime and rounds down to ticks when it reports it), so a figure per operation over
//! `n` operations is good to about 10 ms / `n`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use integration_tests::{Backend, TestDb};
use sea_orm::ConnectionTrait;

/// CPU time (user + system) of process `pid` ("self" for this one), from `/proc`; zero where
/// it cannot be read. Linux reports it in clock ticks of 10 ms.
pub(super) fn cpu(pid: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name may hold spaces; the fields after it are plain.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// The pids of the database server doing this database's work: PostgreSQL's backends of this
/// database, MariaDB's whole server (its threads are not attributed to databases without the
/// performance schema), none for SQLite (it runs in this process).
async fn backend_pids(t: &TestDb) -> Vec<String> {
    match t.backend {
        Backend::Sqlite => Vec::new(),
        Backend::Postgres => {
            let sql = "SELECT pid::text FROM pg_stat_activity WHERE datname = current_database()";
            let rows =
                t.db.query_all_raw(sea_orm::Statement::from_string(
                    t.db.get_database_backend(),
                    sql,
                ))
                .await
                .unwrap();
            rows.iter()
                .filter_map(|r| r.try_get_by_index::<String>(0).ok())
                .collect()
        }
        Backend::MySql => std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|c| matches!(c.trim(), "mariadbd" | "mysqld"))
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
    }
}

/// CPU of this process and of the database server's pids during `work`: `(wall time, this
/// process, server)`. The pids of `t`'s database are listed before the run; after it, their CPU
/// is read before the pids are listed again, so the listing query itself is not counted for
/// them, and pids that appeared during the run (new connections) count from zero.
pub(super) async fn measured<F: Future<Output = ()>>(
    t: &TestDb,
    work: F,
) -> (Duration, Duration, Duration) {
    let before: HashMap<String, Duration> = backend_pids(t)
        .await
        .into_iter()
        .map(|p| {
            let used = cpu(&p);
            (p, used)
        })
        .collect();
    let own = cpu("self");
    let start = Instant::now();
    work.await;
    let took = start.elapsed();
    let own = cpu("self").saturating_sub(own);
    let known: Duration = before
        .iter()
        .map(|(p, used)| cpu(p).saturating_sub(*used))
        .sum();
    let new: Duration = backend_pids(t)
        .await
        .iter()
        .filter(|p| !before.contains_key(*p))
        .map(|p| cpu(p))
        .sum();
    (took, own, known + new)
}
