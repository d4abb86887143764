//! The delivery worker against its limit (docs/benchmarks.md section 6): deliveries per second
//! to a local receiver against a bare loop posting the same signed bodies with the same
//! concurrency and no database; enqueue-to-arrival latency at light load, with LISTEN/NOTIFY
//! (PostgreSQL) and with polling only; CPU seconds per 1,000 deliveries of this process and of
//! the database server; peak RSS.
//!
//! The receiver runs in this process (a minimal HTTP/1.1 server with keep-alive, answering
//! 204), so this process's CPU figures include it, for the worker and the bare loop alike.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_webhooks::delivery;
use agent_webhooks::dispatch::Dispatcher;
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::secrets::signing;
use agent_webhooks::secrets::webhook_secret::WebhookSecret;
use agent_webhooks::settings::WebhookSettings;
use agent_webhooks::webhook::url_policy::UrlPolicy;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use integration_tests::{Backend, RunningWorker, TestDb, seed_webhook};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::procstat::{cpu, measured};
use super::{Report, ms, percentile};

/// What the receiver saw: when each `webhook-id` first arrived, and how many requests came.
#[derive(Default)]
pub(super) struct Arrivals {
    pub(super) at: Mutex<HashMap<String, Instant>>,
    pub(super) count: AtomicUsize,
}

/// Serves on 127.0.0.1 (a free port) until the process ends.
pub(super) async fn receiver(arrivals: Arc<Arrivals>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            tokio::spawn(serve(socket, Arc::clone(&arrivals)));
        }
    });
    port
}

/// One keep-alive connection: every complete request is answered 204 at once.
async fn serve(mut socket: TcpStream, arrivals: Arc<Arrivals>) {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        while let Some((total, id)) = complete_request(&buf) {
            arrivals
                .at
                .lock()
                .unwrap()
                .entry(id)
                .or_insert_with(Instant::now);
            arrivals.count.fetch_add(1, Ordering::SeqCst);
            buf.drain(..total);
            let answer = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
            if socket.write_all(answer).await.is_err() {
                return;
            }
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The length of the first request in `buf` and its `webhook-id`, once it is complete.
fn complete_request(buf: &[u8]) -> Option<(usize, String)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut len = 0;
    let mut id = String::new();
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            len = value.trim().parse().ok()?;
        } else if name.eq_ignore_ascii_case("webhook-id") {
            id = value.trim().to_owned();
        }
    }
    let total = end + 4 + len;
    (buf.len() >= total).then_some((total, id))
}

/// Resets this process's peak RSS (Linux `clear_refs` 5), so a later read covers one section.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak RSS since the last reset, in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn settings(keys: &str, concurrency: usize, listen: bool) -> WebhookSettings {
    let mut settings = WebhookSettings {
        url_policy: UrlPolicy::Development,
        keys: Some(KeyRing::parse(keys).unwrap()),
        ..WebhookSettings::default()
    };
    settings.worker.concurrency = concurrency;
    // One receiver: the per-host limit would otherwise cap the concurrency under test.
    settings.worker.per_host = concurrency;
    settings.worker.listen = listen;
    settings
}

/// A database with agent `agent-1` posting to the receiver on `port`, and its secret.
async fn setup(backend: Backend, settings: &WebhookSettings, port: u16) -> (TestDb, WebhookSecret) {
    let t = TestDb::migrated_with(backend, settings.worker.concurrency as u32 + 2).await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let secret = seed_webhook(&t, settings, "agent-1", &url).await;
    (t, secret)
}

/// Enqueues event `evt_{i}` for `agent-1` at `now`.
async fn enqueue(t: &TestDb, settings: &WebhookSettings, i: usize, now: DateTime<Utc>) {
    delivery::enqueue(
        &t.db,
        settings,
        "agent-1",
        &format!("evt_{i}"),
        "run.completed",
        &payload(i),
        now,
    )
    .await
    .unwrap();
}

/// The event body of the worker sections: ~470 bytes of JSON.
pub(super) fn payload(i: usize) -> serde_json::Value {
    serde_json::json!({"type": "run.completed", "data": {"run_id": format!("run-{i}"), "text": "x".repeat(400)}})
}

/// Throughput at concurrency 1, 16 and 64 (1 and 16 when `quick`), then enqueue-to-arrival
/// latency, polling and, on PostgreSQL, with LISTEN/NOTIFY.
pub(super) async fn figures(report: &mut Report, backend: Backend, quick: bool) {
    let keys = KeyRing::generate_key_entry("k1").unwrap();
    let n = if quick { 50 } else { 4_000 };
    // 64: batches of finished attempts grow with the sends in flight (see `dispatch`).
    let levels: &[usize] = if quick { &[1, 16] } else { &[1, 16, 64] };
    for &concurrency in levels {
        throughput(report, backend, &keys, n, concurrency).await;
    }
    latency(report, backend, &keys, if quick { 5 } else { 50 }, false).await;
    if backend == Backend::Postgres {
        latency(report, backend, &keys, if quick { 5 } else { 50 }, true).await;
    }
}

/// `run_once` over `n` due deliveries against the bare loop, at `concurrency`.
async fn throughput(
    report: &mut Report,
    backend: Backend,
    keys: &str,
    n: usize,
    concurrency: usize,
) {
    let arrivals = Arc::new(Arrivals::default());
    let port = receiver(Arc::clone(&arrivals)).await;
    let settings = settings(keys, concurrency, false);
    let (t, secret) = setup(backend, &settings, port).await;
    let now = Utc::now();
    for i in 0..n {
        enqueue(&t, &settings, i, now).await;
    }
    let dispatcher = Dispatcher::new(settings.clone(), t.db.clone()).unwrap();
    reset_peak_rss();
    let (took, own, server) = measured(&t, async {
        let drained = dispatcher.run_once().await.unwrap();
        assert_eq!(drained.delivered, n as u64, "{drained:?}");
    })
    .await;
    let rss = peak_rss_mib();
    assert_eq!(arrivals.count.load(Ordering::SeqCst), n);
    let section = "worker";
    let per_s = n as f64 / took.as_secs_f64();
    report.add(
        backend,
        section,
        format!("deliveries/s, c={concurrency}"),
        per_s,
        "1/s",
    );
    let per_k = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
    report.add(
        backend,
        section,
        format!("CPU s/1000, this process, c={concurrency}"),
        per_k(own),
        "s",
    );
    if backend != Backend::Sqlite {
        let whose = if backend == Backend::Postgres {
            "its backends"
        } else {
            "whole server, shared"
        };
        report.add(
            backend,
            section,
            format!("CPU s/1000, database ({whose}), c={concurrency}"),
            per_k(server),
            "s",
        );
    }
    report.add(
        backend,
        section,
        format!("peak RSS of the run, c={concurrency}"),
        rss,
        "MiB",
    );

    // The bare loop: the same bodies, signed per request as the worker does, with the same
    // client settings and concurrency, no database.
    let bare = Arc::new(Arrivals::default());
    let port = receiver(Arc::clone(&bare)).await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| serde_json::to_vec(&payload(i)).unwrap())
        .collect();
    let start = Instant::now();
    let own_before = cpu("self");
    futures::stream::iter(bodies.into_iter().enumerate())
        .map(|(i, body)| {
            let (client, url, secret) = (&client, &url, &secret);
            async move {
                let id = format!("evt_{i}");
                let headers = signing::sign(&[secret], &id, Utc::now().timestamp(), &body).unwrap();
                let mut request = client.post(url).header("content-type", "application/json");
                for (name, value) in headers.pairs() {
                    request = request.header(name, value);
                }
                let response = request.body(body).send().await.unwrap();
                let _ = response.bytes().await;
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    let bare_took = start.elapsed();
    let bare_cpu = cpu("self").saturating_sub(own_before);
    assert_eq!(bare.count.load(Ordering::SeqCst), n);
    let bare_per_s = n as f64 / bare_took.as_secs_f64();
    report.add(
        backend,
        section,
        format!("bare loop deliveries/s, c={concurrency}"),
        bare_per_s,
        "1/s",
    );
    report.add(
        backend,
        section,
        format!("bare loop CPU s/1000, c={concurrency}"),
        per_k(bare_cpu),
        "s",
    );
    report.add(
        backend,
        section,
        format!("worker / bare loop, c={concurrency}"),
        per_s / bare_per_s,
        "x",
    );
}

/// Enqueue-to-arrival at light load: one event every 50 ms to a running worker (default poll
/// interval), with LISTEN/NOTIFY or polling only.
async fn latency(report: &mut Report, backend: Backend, keys: &str, events: usize, listen: bool) {
    let arrivals = Arc::new(Arrivals::default());
    let port = receiver(Arc::clone(&arrivals)).await;
    let settings = settings(keys, 16, listen);
    let (t, _secret) = setup(backend, &settings, port).await;
    let dispatcher = Dispatcher::new(settings.clone(), t.db.clone()).unwrap();
    let worker = RunningWorker::start(dispatcher);
    // Let the worker start listening (or polling) before the first event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut enqueued = HashMap::new();
    for i in 0..events {
        let event = format!("evt_{i}");
        enqueued.insert(event.clone(), Instant::now());
        enqueue(&t, &settings, i, Utc::now()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.count.load(Ordering::SeqCst) < events {
        assert!(Instant::now() < deadline, "not every event arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.stop().await;
    let at = arrivals.at.lock().unwrap();
    let mut samples: Vec<Duration> = enqueued
        .iter()
        .map(|(id, sent)| at[id].saturating_duration_since(*sent))
        .collect();
    let how = if listen {
        "LISTEN/NOTIFY"
    } else {
        "polling 1 s"
    };
    let p50 = ms(percentile(&mut samples, 0.5));
    let p99 = ms(percentile(&mut samples, 0.99));
    report.add(
        backend,
        "worker",
        format!("enqueue→arrival p50, {how}"),
        p50,
        "ms",
    );
    report.add(
        backend,
        "worker",
        format!("enqueue→arrival p99, {how}"),
        p99,
        "ms",
    );
}
