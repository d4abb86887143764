//! Our database connections have `TCP_NODELAY` set: the workspace patches sqlx-core 0.9.0, which
//! does not set it, so that a request reaching the socket in two writes (a TLS handshake flight,
//! a statement larger than one 16 KiB TLS record) does not wait ~40 ms for the server's delayed
//! ACK (docs/benchmarks.md section 7). Fails without the patch (`[patch.crates-io]`), and then
//! `db::connect` warns.

#![cfg(target_os = "linux")]

use agent_webhooks::db;
use integration_tests::{Backend, TestDb};

async fn connections_set_tcp_nodelay(backend: Backend) {
    let t = TestDb::fresh_with(backend, 1).await;
    assert_eq!(
        db::tcp_nodelay(&t.db).await.unwrap(),
        Some(true),
        "{backend:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_set_tcp_nodelay() {
    connections_set_tcp_nodelay(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_connections_set_tcp_nodelay() {
    connections_set_tcp_nodelay(Backend::MySql).await;
}

/// SQLite has no socket: nothing to tell.
#[tokio::test]
async fn sqlite_has_no_socket_to_check() {
    let t = TestDb::fresh_with(Backend::Sqlite, 1).await;
    assert_eq!(db::tcp_nodelay(&t.db).await.unwrap(), None);
}
