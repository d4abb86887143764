//! Our database connections have `TCP_NODELAY` set: the workspace patches sqlx-core 0.9.0, which
//! does not set it, so that a request reaching the socket in two writes (a TLS handshake flight,
//! a statement larger than one 16 KiB TLS record) does not wait ~40 ms for the server's delayed
//! ACK (docs/benchmarks.md section 7). Fails without the patch (`[patch.crates-io]`).

#![cfg(target_os = "linux")]

use std::os::fd::{BorrowedFd, RawFd};

use integration_tests::{Backend, TestDb};

/// `TCP_NODELAY` of each TCP socket of this process connected to `port`.
fn nodelay_of_sockets_to(port: u16) -> Vec<bool> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Ok(entry) = entry else { continue };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is only borrowed for two `getsockopt`-style calls; if another
        // test closed it meanwhile they fail (or answer for its successor) and are skipped.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let to_port = socket
            .peer_addr()
            .ok()
            .and_then(|addr| addr.as_socket())
            .is_some_and(|addr| addr.port() == port);
        if let (true, Ok(on)) = (to_port, socket.tcp_nodelay()) {
            found.push(on);
        }
    }
    found
}

async fn connections_set_tcp_nodelay(backend: Backend, default_port: u16) {
    let t = TestDb::fresh_with(backend, 1).await;
    // The pool connects lazily: a statement makes sure one connection is open.
    t.exec("SELECT 1").await;
    let port = url::Url::parse(&t.url)
        .expect("test database URL")
        .port()
        .unwrap_or(default_port);
    let nodelay = nodelay_of_sockets_to(port);
    assert!(
        !nodelay.is_empty(),
        "no TCP socket of this process is connected to port {port}"
    );
    assert!(
        nodelay.iter().all(|on| *on),
        "sockets to port {port} without TCP_NODELAY: {nodelay:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_set_tcp_nodelay() {
    connections_set_tcp_nodelay(Backend::Postgres, 5432).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_connections_set_tcp_nodelay() {
    connections_set_tcp_nodelay(Backend::MySql, 3306).await;
}
