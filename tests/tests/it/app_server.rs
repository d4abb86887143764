//! The example app server (`service/examples/app-server.rs`) as a deploy runs it: replicas
//! starting together on one database, and SIGTERM.
//!
//! `cargo test --workspace` (the README's test command) builds the example beside this test
//! (cargo builds every example of a package it tests); a run limited to this package needs
//! `cargo build -p agent-webhooks --example app-server` first.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{Backend, TestDb, backend_tests};

fn app_server() -> PathBuf {
    integration_tests::workspace_program(
        "examples/app-server",
        "-p agent-webhooks --example app-server",
    )
}

/// Starts the app server on `database_url` with a key ring, serving on a free loopback port.
fn start(database_url: &str) -> Child {
    let keys = agent_webhooks::secrets::secret_box::KeyRing::generate_key_entry("k1").unwrap();
    start_with_keys(database_url, Some(&keys))
}

fn start_with_keys(database_url: &str, keys: Option<&str>) -> Child {
    let mut command = Command::new(app_server());
    match keys {
        Some(keys) => command.env("WEBHOOK_SECRET_KEYS", keys),
        None => command.env_remove("WEBHOOK_SECRET_KEYS"),
    };
    command
        .env("DATABASE_URL", database_url)
        .env("LISTEN", "127.0.0.1:0")
        .env("WEBHOOK_URL_POLICY", "development")
        .env("WEBHOOK_POLL_INTERVAL_MS", "50")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example app server")
}

/// Reads `child`'s stdout until it says where it listens; `Err` with what it printed when it
/// exits first.
fn listening(child: &mut Child) -> Result<String, String> {
    let stdout = child.stdout.as_mut().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    while let Some(Ok(line)) = lines.next() {
        if let Some(addr) = line.strip_prefix("listening on http://") {
            return Ok(addr.to_owned());
        }
    }
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
    Err(format!(
        "exited before listening: {:?}\n{err}",
        child.wait()
    ))
}

/// Sends SIGTERM and waits (at most 15 s) for the exit: its status code and stderr.
fn terminate(mut child: Child) -> (Option<i32>, String) {
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the app server did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// SIGTERM: it stops serving, stops its worker and exits 0, having logged (without colour
/// codes into a pipe) what it did.
#[test]
fn sigterm_stops_it_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
    let mut server = start(&url);
    let addr = listening(&mut server).unwrap();
    let mut socket = std::net::TcpStream::connect(&addr).expect("it serves");
    std::io::Write::write_all(
        &mut socket,
        b"GET /v1/webhooks/openapi.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut socket, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let (code, stderr) = terminate(server);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("schema up to date"), "{stderr}");
    assert!(stderr.contains("stopping"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

/// Without a key ring its worker could open no secret and would blame every receiver: it does
/// not start, and says why in one line.
#[test]
fn refuses_to_start_without_a_key_ring() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
    let mut server = start_with_keys(&url, None);
    let refused = listening(&mut server).expect_err("it started without WEBHOOK_SECRET_KEYS");
    assert!(refused.contains("WEBHOOK_SECRET_KEYS"), "{refused}");
}

/// Replicas starting together on an empty database take turns at the migrations (the
/// migration lock): every one comes up.
async fn replicas_starting_together_all_come_up(backend: Backend) {
    const REPLICAS: usize = 8;
    let t = TestDb::fresh(backend).await;
    let mut servers: Vec<Child> = (0..REPLICAS).map(|_| start(&t.url)).collect();
    let mut failures = Vec::new();
    let mut running = Vec::new();
    for mut server in servers.drain(..) {
        match listening(&mut server) {
            Ok(_) => running.push(server),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{backend:?}: {failures:#?}");
    for server in running {
        let (code, stderr) = terminate(server);
        assert_eq!(code, Some(0), "{stderr}");
    }
}

backend_tests!(replicas_starting_together_all_come_up);

/// With `WEBHOOK_PORTAL_KEY` it prints a portal link for its demo agent, and the link opens
/// the demo agent's portal page.
#[test]
fn prints_a_portal_link_for_the_demo_agent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
    let keys = agent_webhooks::secrets::secret_box::KeyRing::generate_key_entry("k1").unwrap();
    let mut server = Command::new(app_server())
        .env("WEBHOOK_SECRET_KEYS", keys)
        .env(
            "WEBHOOK_PORTAL_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .env("DATABASE_URL", &url)
        .env("LISTEN", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the example app server");
    // Read on a thread, so that a server that never prints the link fails the test in 60 s
    // instead of holding it.
    let stdout = server.stdout.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().take(5).map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut link = None;
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Some(rest) = line.strip_prefix("portal of agent-demo: http://") {
            link = Some(rest.to_owned());
            break;
        }
    }
    if link.is_none() {
        let _ = server.kill();
    }
    let link = link.expect("a portal link among the first lines, within 60 s");
    let (addr, path) = link.split_at(link.find('/').unwrap());
    let mut socket = std::net::TcpStream::connect(addr).expect("it serves");
    std::io::Write::write_all(
        &mut socket,
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut socket, &mut response).unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("Webhook of"), "{response}");
}
