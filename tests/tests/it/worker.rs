//! The delivery worker end to end on SQLite, PostgreSQL and MariaDB: a real HTTP receiver on
//! loopback (axum), real sockets, the worker's own HTTP client. Each receiver behaviour ends in
//! the right delivery state with the right attempt row; under the production policy an IP
//! literal and a rebinding name are refused at connect time and nothing reaches the receiver.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_webhooks::delivery::retry::RetryPolicy;
use agent_webhooks::delivery::{self, AttemptRecord, DeliveryState, Enqueued, ErrorClass};
use agent_webhooks::dispatch::{Dispatcher, DrainReport};
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::secrets::signing::{self, ReceivedHeaders};
use agent_webhooks::secrets::webhook_secret::WebhookSecret;
use agent_webhooks::settings::{WebhookSettings, WorkerSettings};
use agent_webhooks::webhook::signing_secrets;
use agent_webhooks::webhook::url_policy::{Resolver, UrlPolicy};
use agent_webhooks::webhook::{self, WebhookConfig};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{TimeDelta, Utc};
use entity::agents;
use futures::StreamExt;
use integration_tests::{Backend, RunningWorker, TestDb, backend_tests, seed_agent, seed_webhook};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use secrecy::SecretString;
use serde_json::json;
use tokio::net::TcpListener;

/// What the receiver answers to one request.
#[derive(Clone)]
enum Reply {
    Status(u16),
    WithHeader(u16, &'static str, String),
    /// Never answers.
    Hang,
    /// 200 with a body of this many bytes, streamed.
    Huge(usize),
    /// 200 after this long.
    Slow(Duration),
    /// This status and body after this long.
    Body(u16, &'static [u8], Duration),
    /// 200 and the first bytes of a body whose rest never comes.
    StalledBody,
}

/// One request as the receiver got it.
#[derive(Clone, Debug)]
struct Seen {
    /// When it arrived.
    at: Instant,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

#[derive(Clone, Default)]
struct Receiver {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Receiver {
    /// Serves on 127.0.0.1 (a free port); answers 200 once `replies` are used up.
    async fn start(replies: impl IntoIterator<Item = Reply>) -> (Receiver, SocketAddr) {
        let receiver = Receiver::default();
        receiver.replies.lock().unwrap().extend(replies);
        let state = receiver.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { state.answer(uri.path().to_owned(), headers, body).await }
            },
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, addr)
    }

    async fn answer(&self, path: String, headers: HeaderMap, body: Bytes) -> Response {
        self.seen.lock().unwrap().push(Seen {
            at: Instant::now(),
            path,
            headers,
            body,
        });
        let reply = self
            .replies
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Reply::Status(200));
        let status = |code| StatusCode::from_u16(code).unwrap();
        match reply {
            Reply::Status(code) => Response::builder()
                .status(status(code))
                .body(Body::from("ok"))
                .unwrap(),
            Reply::WithHeader(code, name, value) => Response::builder()
                .status(status(code))
                .header(name, value)
                .body(Body::empty())
                .unwrap(),
            Reply::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Response::new(Body::empty())
            }
            Reply::Slow(delay) => {
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                Response::new(Body::from("slow ok"))
            }
            Reply::Body(code, body, delay) => {
                tokio::time::sleep(delay).await;
                Response::builder()
                    .status(status(code))
                    .body(Body::from(body))
                    .unwrap()
            }
            Reply::StalledBody => {
                let first =
                    futures::stream::once(async { Ok::<_, io::Error>(Bytes::from("accepted")) });
                let never = futures::stream::once(async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<_, io::Error>(Bytes::new())
                });
                Response::new(Body::from_stream(first.chain(never)))
            }
            Reply::Huge(len) => {
                static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
                let chunks = len.div_ceil(CHUNK.len());
                let stream = futures::stream::iter(
                    (0..chunks).map(|_| Ok::<_, io::Error>(Bytes::from_static(&CHUNK))),
                );
                Response::new(Body::from_stream(stream))
            }
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `n` requests have arrived or `deadline` passes; whether they all came.
    async fn arrived(&self, n: usize, deadline: Instant) -> bool {
        while self.seen.lock().unwrap().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.seen.lock().unwrap().len() >= n
    }
}

/// A TCP listener that counts connections and never speaks: proves that nothing was sent.
async fn silent_listener() -> (Arc<AtomicUsize>, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (accepted, port)
}

/// Development policy, short timeouts, a 1 s retry without jitter (long enough that a drain on
/// a loaded machine does not make the retry too), three attempts.
fn settings() -> WebhookSettings {
    WebhookSettings {
        url_policy: UrlPolicy::Development,
        keys: Some(KeyRing::parse(&KeyRing::generate_key_entry("k1").unwrap()).unwrap()),
        retry: RetryPolicy {
            schedule: vec![Duration::from_secs(1)],
            max_attempts: 3,
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        worker: WorkerSettings {
            concurrency: 4,
            per_host: 4,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            max_response_bytes: 64 * 1024,
            poll_interval: Duration::from_millis(50),
            ..WorkerSettings::default()
        },
        ..WebhookSettings::default()
    }
}

fn payload() -> serde_json::Value {
    json!({"type": "run.completed", "data": {"run_id": "run-1", "text": "héllo"}})
}

/// An agent whose webhook points at `url`, with a fresh secret, and one enqueued event.
struct Setup {
    t: TestDb,
    settings: WebhookSettings,
    secret: WebhookSecret,
    delivery_id: String,
}

async fn setup(backend: Backend, url: &str, settings: WebhookSettings) -> Setup {
    let t = TestDb::migrated(backend).await;
    let secret = seed_webhook(&t, &settings, "agent-1", url).await;
    let enqueued = delivery::enqueue(
        &t.db,
        &settings,
        "agent-1",
        "evt_1",
        "run.completed",
        &payload(),
        Utc::now(),
    )
    .await
    .unwrap();
    let Enqueued::Created(delivery) = enqueued else {
        panic!("expected a new delivery, got {enqueued:?}");
    };
    Setup {
        t,
        settings,
        secret,
        delivery_id: delivery.id,
    }
}

impl Setup {
    /// Enqueues `event_id` for `agent` now.
    async fn enqueue(&self, agent: &str, event_id: &str) -> Enqueued {
        delivery::enqueue(
            &self.t.db,
            &self.settings,
            agent,
            event_id,
            "run.completed",
            &payload(),
            Utc::now(),
        )
        .await
        .unwrap()
    }

    /// Enqueues `event_id` for agent-1 with `payload` now.
    async fn enqueue_with<'p>(&self, event_id: &str, payload: impl Into<delivery::Payload<'p>>) {
        let enqueued = delivery::enqueue(
            &self.t.db,
            &self.settings,
            "agent-1",
            event_id,
            "run.completed",
            payload,
            Utc::now(),
        )
        .await
        .unwrap();
        assert!(matches!(enqueued, Enqueued::Created(_)), "{enqueued:?}");
    }

    fn dispatcher(&self) -> Dispatcher {
        Dispatcher::new(self.settings.clone(), self.t.db.clone()).unwrap()
    }

    async fn run_once(&self) -> DrainReport {
        self.dispatcher().run_once().await.unwrap()
    }

    async fn state(&self) -> DeliveryState {
        delivery::get(&self.t.db, &self.delivery_id, Utc::now())
            .await
            .unwrap()
            .state
    }

    async fn attempts(&self) -> Vec<AttemptRecord> {
        delivery::attempts(&self.t.db, &self.delivery_id)
            .await
            .unwrap()
    }

    /// The request carries the exact payload bytes, signed for this agent.
    fn assert_signed(&self, seen: &Seen) {
        assert_eq!(seen.body.as_ref(), serde_json::to_vec(&payload()).unwrap());
        assert_eq!(seen.header("content-type"), "application/json");
        assert!(seen.header("user-agent").starts_with("agent-webhooks/"));
        assert_eq!(seen.header("webhook-id"), "evt_1");
        assert!(
            seen.verifies(&self.secret),
            "signed with the agent's secret"
        );
    }
}

impl Seen {
    /// The request's signature checks out with `secret`.
    fn verifies(&self, secret: &WebhookSecret) -> bool {
        signing::verify(
            &[secret],
            ReceivedHeaders {
                id: self.header("webhook-id"),
                timestamp: self.header("webhook-timestamp"),
                signature: self.header("webhook-signature"),
            },
            &self.body,
            Utc::now().timestamp(),
            signing::DEFAULT_TOLERANCE,
        )
        .is_ok()
    }
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/hook")
}

async fn delivers_signed_exact_bytes(backend: Backend) {
    let (receiver, addr) = Receiver::start([]).await;
    let s = setup(backend, &url(addr), settings()).await;
    let report = s.run_once().await;
    assert_eq!((report.attempts, report.delivered), (1, 1), "{report:?}");
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/hook");
    s.assert_signed(&seen[0]);
    assert_eq!(s.state().await, DeliveryState::Delivered);
    let attempts = s.attempts().await;
    assert_eq!(attempts.len(), 1);
    let a = &attempts[0];
    assert_eq!(
        (a.attempt, a.status_code, a.error_class),
        (1, Some(200), None)
    );
    assert_eq!(a.remote_addr.as_deref(), Some(addr.to_string().as_str()));
    assert_eq!(a.response_body_prefix.as_deref(), Some("ok"));
    assert!(a.started_at <= a.finished_at);
    // Nothing left: a second drain does nothing.
    assert_eq!(s.run_once().await, DrainReport::default());
}

async fn retry_sends_identical_bytes(backend: Backend) {
    let (receiver, addr) = Receiver::start([Reply::Status(500)]).await;
    let s = setup(backend, &url(addr), settings()).await;
    s.run_once().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.run_once().await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, seen[1].body, "byte-identical retry");
    assert_eq!(seen[0].header("webhook-id"), seen[1].header("webhook-id"));
    for request in &seen {
        s.assert_signed(request);
    }
    assert_eq!(s.state().await, DeliveryState::Delivered);
    let attempts = s.attempts().await;
    let summary: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.status_code, a.error_class))
        .collect();
    assert_eq!(
        summary,
        [
            (1, Some(500), Some(ErrorClass::HttpStatus)),
            (2, Some(200), None)
        ]
    );
}

async fn retry_after_is_honoured(backend: Backend) {
    let reply = Reply::WithHeader(429, "retry-after", "2".into());
    let (receiver, addr) = Receiver::start([reply]).await;
    let s = setup(backend, &url(addr), settings()).await;
    let report = s.run_once().await;
    assert_eq!(report.retrying, 1, "{report:?}");
    assert_eq!(receiver.seen().len(), 1);
    let delivery = delivery::get(&s.t.db, &s.delivery_id, Utc::now())
        .await
        .unwrap();
    let attempt = &s.attempts().await[0];
    assert_eq!(attempt.status_code, Some(429));
    assert_eq!(attempt.error_class, Some(ErrorClass::HttpStatus));
    // The header (2 s) outranks the 1 s schedule and is used exactly.
    assert_eq!(
        delivery.next_retry_at.unwrap() - attempt.finished_at,
        TimeDelta::seconds(2)
    );
    assert_eq!(delivery.state, DeliveryState::Pending);
}

async fn redirect_is_not_followed(backend: Backend) {
    let (receiver, addr) = Receiver::start([]).await;
    let redirect = Reply::WithHeader(301, "location", format!("http://{addr}/elsewhere"));
    receiver.replies.lock().unwrap().push_back(redirect);
    let s = setup(backend, &url(addr), settings()).await;
    let report = s.run_once().await;
    assert_eq!(report.given_up, 1, "{report:?}");
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1, "the redirect was followed: {seen:?}");
    assert_eq!(s.state().await, DeliveryState::Failed);
    let attempt = &s.attempts().await[0];
    assert_eq!(attempt.status_code, Some(301));
    assert_eq!(attempt.error_class, Some(ErrorClass::Redirect));
    let message = attempt.message.as_deref().unwrap();
    assert!(message.contains("not followed"), "{message}");
}

async fn silent_receiver_times_out(backend: Backend) {
    let (receiver, addr) = Receiver::start([Reply::Hang]).await;
    let s = setup(backend, &url(addr), settings()).await;
    let started = Instant::now();
    let report = s.run_once().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(report.retrying, 1, "{report:?}");
    assert_eq!(receiver.seen().len(), 1);
    let attempt = &s.attempts().await[0];
    assert_eq!(attempt.status_code, None);
    assert_eq!(attempt.error_class, Some(ErrorClass::Timeout));
    assert_eq!(s.state().await, DeliveryState::Pending);
}

async fn huge_response_is_capped(backend: Backend) {
    let (receiver, addr) = Receiver::start([Reply::Huge(50 << 20)]).await;
    let s = setup(backend, &url(addr), settings()).await;
    let report = s.run_once().await;
    assert_eq!(report.delivered, 1, "the 200 counts: {report:?}");
    assert_eq!(receiver.seen().len(), 1);
    let attempt = &s.attempts().await[0];
    assert_eq!(attempt.status_code, Some(200));
    assert_eq!(attempt.error_class, Some(ErrorClass::BodyTooLarge));
    let prefix = attempt.response_body_prefix.as_deref().unwrap();
    assert_eq!(prefix.len(), delivery::RESPONSE_PREFIX_LEN);
    assert!(prefix.bytes().all(|b| b == b'x'));
}

async fn connection_refused_is_retried(backend: Backend) {
    // A port nobody listens on any more.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let s = setup(
        backend,
        &format!("http://127.0.0.1:{port}/hook"),
        settings(),
    )
    .await;
    let report = s.run_once().await;
    assert_eq!(report.retrying, 1, "{report:?}");
    let attempt = &s.attempts().await[0];
    assert_eq!(attempt.error_class, Some(ErrorClass::Connect));
    assert_eq!(attempt.status_code, None);
    assert_eq!(s.state().await, DeliveryState::Pending);
}

async fn tls_to_a_plain_http_port_fails_as_tls(backend: Backend) {
    let (_receiver, addr) = Receiver::start([]).await;
    let s = setup(backend, &format!("https://{addr}/hook"), settings()).await;
    let report = s.run_once().await;
    assert_eq!(report.retrying, 1, "{report:?}");
    let attempt = &s.attempts().await[0];
    assert_eq!(attempt.error_class, Some(ErrorClass::Tls), "{attempt:?}");
    assert_eq!(s.state().await, DeliveryState::Pending);
}

/// A resolver for which no name exists.
struct Nxdomain;

impl Resolver for Nxdomain {
    async fn resolve(&self, host: &str, _port: u16) -> io::Result<Vec<IpAddr>> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host}: no such name"),
        ))
    }
}

async fn unresolvable_name_fails_as_dns(backend: Backend) {
    let s = setup(backend, "http://nowhere.example.com/hook", settings()).await;
    let dispatcher =
        Dispatcher::with_resolver(s.settings.clone(), s.t.db.clone(), Nxdomain).unwrap();
    let report = dispatcher.run_once().await.unwrap();
    assert_eq!(report.retrying, 1, "{report:?}");
    let attempt = &s.attempts().await[0];
    assert_eq!(attempt.error_class, Some(ErrorClass::Dns), "{attempt:?}");
}

/// A URL stored under the development policy is refused at send time under production: an IP
/// literal never reaches the resolver, so it is judged before sending.
async fn production_refuses_an_ip_literal(backend: Backend) {
    let (accepted, port) = silent_listener().await;
    let mut s = setup(
        backend,
        &format!("https://127.0.0.1:{port}/hook"),
        settings(),
    )
    .await;
    s.settings.url_policy = UrlPolicy::Production;
    // The retry is an hour away, so `run_once` makes exactly one attempt however slow it is.
    s.settings.retry.schedule = vec![Duration::from_secs(3600)];
    let report = s.run_once().await;
    assert_eq!(report.retrying, 1, "{report:?}");
    let attempt = &s.attempts().await[0];
    assert_eq!(attempt.error_class, Some(ErrorClass::SsrfBlocked));
    assert!(attempt.message.as_deref().unwrap().contains("loopback"));
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing may be sent");
}

/// Answers a public address the first time and loopback afterwards: a DNS-rebinding name.
#[derive(Clone, Default)]
struct Rebinding {
    calls: Arc<AtomicUsize>,
}

impl Resolver for Rebinding {
    async fn resolve(&self, _host: &str, _port: u16) -> io::Result<Vec<IpAddr>> {
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        let ip = if first { "93.184.216.34" } else { "127.0.0.1" };
        Ok(vec![ip.parse().unwrap()])
    }
}

async fn production_refuses_a_rebinding_name_at_connect(backend: Backend) {
    let (accepted, port) = silent_listener().await;
    // The retry is an hour away, so `run_once` makes exactly one attempt however slow it is.
    let base = settings();
    let production = WebhookSettings {
        url_policy: UrlPolicy::Production,
        retry: RetryPolicy {
            schedule: vec![Duration::from_secs(3600)],
            ..base.retry.clone()
        },
        ..base
    };
    let hook = format!("https://rebind.example.com:{port}/hook");
    let s = setup(backend, &hook, production).await;
    let resolver = Rebinding::default();
    // A check before sending sees a public address...
    let url = url::Url::parse(&hook).unwrap();
    UrlPolicy::Production
        .check_resolved(&url, &resolver)
        .await
        .unwrap();
    // ...but the connection resolves again and is refused.
    let dispatcher =
        Dispatcher::with_resolver(s.settings.clone(), s.t.db.clone(), resolver.clone()).unwrap();
    let report = dispatcher.run_once().await.unwrap();
    assert_eq!(report.retrying, 1, "{report:?}");
    assert!(resolver.calls.load(Ordering::SeqCst) >= 2);
    let attempt = &s.attempts().await[0];
    assert_eq!(attempt.error_class, Some(ErrorClass::SsrfBlocked));
    let message = attempt.message.as_deref().unwrap();
    assert!(message.contains("127.0.0.1"), "{message}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing may be sent");
    assert_eq!(s.state().await, DeliveryState::Pending);
}

/// `run` stops on its shutdown signal after the send in flight has finished and been recorded.
async fn run_stops_after_in_flight_sends(backend: Backend) {
    let (receiver, addr) = Receiver::start([]).await;
    let s = setup(backend, &url(addr), settings()).await;
    let dispatcher = s.dispatcher();
    let report = dispatcher
        .run(tokio::time::sleep(Duration::from_millis(300)))
        .await;
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(receiver.seen().len(), 1);
    assert_eq!(s.state().await, DeliveryState::Delivered);
}

/// A shutdown that comes while a send is in flight waits for it: the answer is recorded.
async fn shutdown_waits_for_the_send_in_flight(backend: Backend) {
    let (receiver, addr) = Receiver::start([Reply::Slow(Duration::from_millis(600))]).await;
    let s = setup(backend, &url(addr), settings()).await;
    let started = Instant::now();
    let report = s
        .dispatcher()
        .run(tokio::time::sleep(Duration::from_millis(100)))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(receiver.seen().len(), 1);
    assert_eq!(s.state().await, DeliveryState::Delivered);
    assert_eq!(s.attempts().await[0].status_code, Some(200));
}

/// No more than `concurrency` requests are in flight at once, and every delivery is sent.
async fn concurrency_is_bounded(backend: Backend) {
    let slow = Reply::Slow(Duration::from_millis(200));
    let (receiver, addr) = Receiver::start(vec![slow; 6]).await;
    let mut settings = settings();
    settings.worker.concurrency = 2;
    let s = setup(backend, &url(addr), settings).await;
    for i in 2..=6 {
        s.enqueue("agent-1", &format!("evt_{i}")).await;
    }
    let report = s.run_once().await;
    assert_eq!((report.attempts, report.delivered), (6, 6), "{report:?}");
    assert_eq!(receiver.seen().len(), 6);
    assert_eq!(receiver.max_in_flight.load(Ordering::SeqCst), 2);
}

/// Resolves every name to 127.0.0.1: several "hosts" on loopback for the per-host limit.
struct AllLoopback;

impl Resolver for AllLoopback {
    async fn resolve(&self, _host: &str, _port: u16) -> io::Result<Vec<IpAddr>> {
        Ok(vec![IpAddr::from([127, 0, 0, 1])])
    }
}

/// At most `per_host` requests go to one host at once, and another host's deliveries are sent
/// meanwhile, not after the busy host's backlog.
async fn per_host_limit_bounds_one_host_while_another_proceeds(backend: Backend) {
    let slow = Reply::Slow(Duration::from_millis(400));
    let (busy, busy_addr) = Receiver::start(vec![slow; 6]).await;
    let (other, other_addr) = Receiver::start([]).await;
    let mut settings = settings();
    settings.worker.concurrency = 8;
    settings.worker.per_host = 2;
    let busy_url = format!("http://busy.test:{}/hook", busy_addr.port());
    let s = setup(backend, &busy_url, settings).await;
    for i in 2..=6 {
        integration_tests::enqueue_event(
            &s.t.db,
            "agent-1",
            &format!("evt_{i}"),
            "run.completed",
            Utc::now(),
        )
        .await
        .unwrap();
    }
    seed_agent(&s.t, "agent-2", &[]).await;
    let config = WebhookConfig {
        webhook_url: format!("http://other.test:{}/hook", other_addr.port()),
        webhook_secret: Some(SecretString::from(s.secret.expose().to_owned())),
        webhook_events: vec![],
        webhook_enabled: true,
        webhook_filter: None,
        webhook_ordered: false,
    };
    webhook::configure(&s.t.db, &s.settings, "agent-2", &config)
        .await
        .unwrap();
    for i in 1..=2 {
        integration_tests::enqueue_event(
            &s.t.db,
            "agent-2",
            &format!("evt_o{i}"),
            "run.completed",
            Utc::now(),
        )
        .await
        .unwrap();
    }
    let dispatcher =
        Dispatcher::with_resolver(s.settings.clone(), s.t.db.clone(), AllLoopback).unwrap();
    let report = dispatcher.run_once().await.unwrap();
    assert_eq!((report.attempts, report.delivered), (8, 8), "{report:?}");
    assert_eq!(busy.max_in_flight.load(Ordering::SeqCst), 2);
    let busy_seen = busy.seen();
    let other_seen = other.seen();
    assert_eq!((busy_seen.len(), other_seen.len()), (6, 2));
    // The busy host's third pair starts after two 400 ms rounds; the other host was served
    // long before that.
    let third_round = busy_seen.iter().map(|r| r.at).max().unwrap();
    assert!(
        other_seen.iter().all(|r| r.at < third_round),
        "the other host waited for the busy one"
    );
}

/// On PostgreSQL an idle worker hears of a new delivery at once (LISTEN/NOTIFY), not at its
/// next poll (a minute away here); with `listen` off it waits for the poll.
async fn idle_worker_wakes_on_enqueue(listen: bool) {
    let (receiver, addr) = Receiver::start([]).await;
    let mut settings = settings();
    settings.worker.poll_interval = Duration::from_secs(60);
    settings.worker.listen = listen;
    let s = setup(Backend::Postgres, &url(addr), settings).await;
    let dispatcher = s.dispatcher();
    let worker = RunningWorker::start(dispatcher);
    let arrived = |n| receiver.arrived(n, Instant::now() + Duration::from_secs(3));
    assert!(arrived(1).await, "the first drain sends what is due");
    // The worker is idle now, waiting up to a minute.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let enqueued = Instant::now();
    s.enqueue("agent-1", "evt_2").await;
    assert_eq!(arrived(2).await, listen, "listen: {listen}");
    if listen {
        let latency = receiver.seen()[1].at - enqueued;
        assert!(latency < Duration::from_secs(1), "{latency:?}");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_worker_wakes_on_enqueue_postgres() {
    idle_worker_wakes_on_enqueue(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_worker_without_listen_waits_for_the_poll_postgres() {
    idle_worker_wakes_on_enqueue(false).await;
}

/// A worker woken by a notification waits `gather` before it claims, and that claim brings
/// what was enqueued meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_worker_gathers_before_it_claims_postgres() {
    let (receiver, addr) = Receiver::start([]).await;
    let mut settings = settings();
    settings.worker.poll_interval = Duration::from_secs(60);
    settings.worker.gather = Duration::from_millis(600);
    let s = setup(Backend::Postgres, &url(addr), settings).await;
    let worker = RunningWorker::start(s.dispatcher());
    let deadline = Instant::now() + Duration::from_secs(5);
    let arrived = |n| receiver.arrived(n, deadline);
    assert!(arrived(1).await, "the first drain sends what is due");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let enqueued = Instant::now();
    s.enqueue("agent-1", "evt_2").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.enqueue("agent-1", "evt_3").await;
    assert!(arrived(3).await, "both were sent before the minute's poll");
    let seen = receiver.seen();
    let waited = seen[1].at - enqueued;
    assert!(waited >= Duration::from_millis(550), "{waited:?}");
    let apart = seen[2].at.max(seen[1].at) - seen[2].at.min(seen[1].at);
    assert!(apart < Duration::from_millis(100), "one claim: {apart:?}");
    worker.stop().await;
}

/// Of two workers on one PostgreSQL database only one LISTENs (the holder of the listener
/// lock), so an enqueue wakes one claim; when it stops, the other takes the lock and listens
/// within a poll interval, and a new event is still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_per_database_listens_and_another_takes_over_postgres() {
    let (receiver, addr) = Receiver::start([]).await;
    let mut settings = settings();
    // Long polls, so a delivery within the wait below came through a wake-up.
    settings.worker.poll_interval = Duration::from_millis(400);
    let s = setup(Backend::Postgres, &url(addr), settings.clone()).await;
    let worker_on = |name: &'static str| {
        let (url, settings) = (s.t.url.clone(), settings.clone());
        async move {
            let db = sea_orm::Database::connect(format!("{url}?application_name={name}"))
                .await
                .unwrap();
            RunningWorker::start(Dispatcher::new(settings, db).unwrap())
        }
    };
    let (first, second) = (worker_on("aw_w1").await, worker_on("aw_w2").await);
    // Who holds the lock, and how many connections LISTEN, once both are up.
    let listening = || async {
        let holders = s
            .t
            .strings(&format!(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objid = {} AND a.datname = current_database()",
                agent_webhooks::dispatch::LISTENER_LOCK
            ))
            .await;
        let listeners = s
            .t
            .count("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'")
            .await;
        (holders, listeners)
    };
    // The one holder and listener, once it is not `gone`: a stopped worker's server process
    // may still show its lock and its LISTEN for a moment after its connection closed.
    let wait_for_one = |gone: Option<String>| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (holders, listeners) = listening().await;
            if holders.len() == 1 && listeners == 1 && Some(&holders[0]) != gone.as_ref() {
                return holders[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "holders {holders:?}, listeners {listeners}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let leader = wait_for_one(None).await;
    // Two seconds on, still exactly one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(listening().await, (vec![leader.clone()], 1));
    let (stopped, still) = if leader == "aw_w1" {
        (first, second)
    } else {
        (second, first)
    };
    stopped.stop().await;
    // The remaining worker takes over (the wait fails with the holders it saw if not).
    wait_for_one(Some(leader)).await;
    s.enqueue("agent-1", "evt_2").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    assert!(receiver.arrived(2, deadline).await, "evt_2 did not arrive");
    still.stop().await;
}

/// A claim whose host is busy for longer than its lease can wait is given back unsent, with
/// its attempt uncounted, and sent later in the same drain.
async fn busy_host_claims_are_released_unsent(backend: Backend) {
    let slow = Reply::Slow(Duration::from_millis(500));
    let (receiver, addr) = Receiver::start(vec![slow; 2]).await;
    let mut settings = settings();
    settings.worker.concurrency = 2;
    settings.worker.per_host = 1;
    // A 2 s lease leaves no time to wait beyond the 1 s attempt and its 1 s margin.
    settings.claim_lease = Duration::from_secs(2);
    let s = setup(backend, &url(addr), settings).await;
    let second = s.enqueue("agent-1", "evt_2").await;
    let Enqueued::Created(second) = second else {
        panic!("{second:?}");
    };
    let report = s.run_once().await;
    assert_eq!((report.attempts, report.delivered), (2, 2), "{report:?}");
    // Released at least once (again if it came due while the host was still busy).
    assert!(report.released >= 1, "{report:?}");
    assert_eq!(receiver.seen().len(), 2);
    assert_eq!(receiver.max_in_flight.load(Ordering::SeqCst), 1);
    for id in [&s.delivery_id, &second.id] {
        let attempts = delivery::attempts(&s.t.db, id).await.unwrap();
        let numbers: Vec<_> = attempts.iter().map(|a| a.attempt).collect();
        assert_eq!(numbers, [1], "{id}: the release uncounted its claim");
    }
}

/// A claimed batch whose signing keys cannot be read is given back unsent, due at once with
/// its attempt uncounted, rather than left to its lease: the read fails here because the
/// previous secrets' table is renamed away between the enqueue and the drain.
async fn claims_are_given_back_when_keys_cannot_be_read(backend: Backend) {
    let (receiver, addr) = Receiver::start([]).await;
    let s = setup(backend, &url(addr), settings()).await;
    s.t.exec("ALTER TABLE webhook_previous_secrets RENAME TO previous_secrets_away")
        .await;
    let failed = s.dispatcher().run_once().await;
    assert!(
        matches!(failed, Err(agent_webhooks::Error::Db(_))),
        "{failed:?}"
    );
    assert!(receiver.seen().is_empty());
    assert_eq!(s.state().await, DeliveryState::Pending);
    s.t.exec("ALTER TABLE previous_secrets_away RENAME TO webhook_previous_secrets")
        .await;
    let report = s.run_once().await;
    assert_eq!((report.attempts, report.delivered), (1, 1), "{report:?}");
    let numbers: Vec<_> = s.attempts().await.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1], "the release uncounted its claim");
}

/// One drain claims the deliveries of several agents in one batch and records them in one
/// transaction: each request is signed with its own agent's keys and no other's (the keys are
/// read per batch), a soft-deleted agent's delivery is not sent, and every attempt is in the
/// log exactly once.
async fn a_batch_of_agents_is_signed_per_agent_and_recorded_once(backend: Backend) {
    let (receiver, addr) = Receiver::start([]).await;
    let mut settings = settings();
    settings.worker.concurrency = 16;
    settings.worker.per_host = 16;
    let s = setup(backend, &format!("http://{addr}/agent-1"), settings).await;
    let mut secrets = vec![("agent-1".to_owned(), s.secret.clone())];
    for n in 2..=4 {
        let agent = format!("agent-{n}");
        let url = format!("http://{addr}/{agent}");
        let secret = seed_webhook(&s.t, &s.settings, &agent, &url).await;
        secrets.push((agent, secret));
    }
    // agent-3 signs with a new secret and, during its grace period, the old one too.
    let rotated =
        signing_secrets::rotate_signing_secret(&s.t.db, &s.settings, "agent-3", None, Utc::now())
            .await
            .unwrap();
    let old_3 = std::mem::replace(&mut secrets[2].1, rotated.secret);
    for (agent, _) in &secrets {
        for i in 2..=4 {
            s.enqueue(agent, &format!("evt_{i}")).await;
        }
    }
    // agent-4 is soft-deleted after its events were enqueued.
    agents::Entity::update_many()
        .col_expr(
            agents::Column::IsDeleted,
            sea_orm::sea_query::Expr::value(true),
        )
        .filter(agents::Column::Id.eq("agent-4"))
        .exec(&s.t.db)
        .await
        .unwrap();

    let report = s.run_once().await;
    assert_eq!(
        (
            report.attempts,
            report.delivered,
            report.retrying,
            report.stale
        ),
        (13, 10, 0, 0),
        "{report:?}"
    );
    assert_eq!(
        report.given_up, 3,
        "agent-4's deliveries are given up at once"
    );
    let seen = receiver.seen();
    assert_eq!(seen.len(), 10, "agent-4 was not sent to");
    for request in &seen {
        let agent = request.path.trim_start_matches('/');
        for (other, secret) in &secrets {
            assert_eq!(
                request.verifies(secret),
                other == agent,
                "{agent} checked with {other}'s secret"
            );
        }
        assert_eq!(request.verifies(&old_3), agent == "agent-3", "{agent}");
    }
    // Every delivery has exactly one attempt row; agent-4's say why nothing was sent.
    for (agent, _) in &secrets {
        let page = delivery::history(&s.t.db, agent, &Default::default(), Utc::now())
            .await
            .unwrap();
        assert_eq!(
            page.items.len(),
            if agent == "agent-1" { 4 } else { 3 },
            "{agent}"
        );
        for delivery in &page.items {
            let attempts = delivery::attempts(&s.t.db, &delivery.id).await.unwrap();
            assert_eq!(attempts.len(), 1, "{agent} {}", delivery.event_id);
            let (status, class) = (attempts[0].status_code, attempts[0].error_class);
            if agent == "agent-4" {
                assert_eq!((status, class), (None, Some(ErrorClass::NotSendable)));
                assert_eq!(delivery.state, DeliveryState::Failed);
                assert_eq!(
                    delivery.error_message.as_deref(),
                    Some("agent `agent-4` not found")
                );
            } else {
                assert_eq!((status, class), (Some(200), None), "{agent}");
            }
        }
    }
}

/// What the app hands over is what the receiver gets, byte for byte: a 30-digit integer is
/// not rounded, keys keep their order (and a repeated key stays), escapes and whitespace stay.
async fn the_payload_is_the_apps_bytes(backend: Backend) {
    const TEXT: &str = "{ \"z\": 1, \"big\":123456789012345678901234567890, \"a\": \"\\u00e9\\n\\/\", \
                        \"z\": 2.50, \"e\": 1E400 }";
    let (receiver, addr) = Receiver::start([]).await;
    let s = setup(backend, &url(addr), settings()).await;
    let enqueued = delivery::enqueue(
        &s.t.db,
        &s.settings,
        "agent-1",
        "evt_raw",
        "run.completed",
        delivery::Payload::json(TEXT.as_bytes()),
        Utc::now(),
    )
    .await
    .unwrap();
    assert!(matches!(enqueued, Enqueued::Created(_)), "{enqueued:?}");
    let raw: Box<serde_json::value::RawValue> = serde_json::from_str(TEXT).unwrap();
    s.enqueue_with("evt_raw_value", &*raw).await;
    let report = s.run_once().await;
    assert_eq!(report.delivered, 3, "{report:?}");
    let seen = receiver.seen();
    for id in ["evt_raw", "evt_raw_value"] {
        let request = seen.iter().find(|r| r.header("webhook-id") == id).unwrap();
        assert_eq!(std::str::from_utf8(&request.body).unwrap(), TEXT, "{id}");
        assert!(request.verifies(&s.secret));
    }
    for bad in [&b"{\"a\": 1"[..], b"", b"{} {}", b"\"\xff\""] {
        let refused = delivery::enqueue(
            &s.t.db,
            &s.settings,
            "agent-1",
            "evt_bad",
            "run.completed",
            delivery::Payload::json(bad),
            Utc::now(),
        )
        .await;
        assert!(
            matches!(refused, Err(agent_webhooks::Error::Payload(_))),
            "{bad:?}: {refused:?}"
        );
    }
}

/// A 2xx whose body never finishes within the attempt's timeout counts as delivered (the
/// receiver accepted the delivery), and its attempt row says the rest of the answer was lost.
async fn a_2xx_whose_body_times_out_is_delivered(backend: Backend) {
    let (receiver, addr) = Receiver::start([Reply::StalledBody]).await;
    let s = setup(backend, &url(addr), settings()).await;
    let report = s.run_once().await;
    assert_eq!((report.attempts, report.delivered), (1, 1), "{report:?}");
    assert_eq!(receiver.seen().len(), 1);
    assert_eq!(s.state().await, DeliveryState::Delivered);
    let attempts = s.attempts().await;
    assert_eq!(
        (attempts[0].status_code, attempts[0].error_class),
        (Some(200), Some(ErrorClass::Timeout))
    );
    let message = attempts[0].message.as_deref().unwrap_or_default();
    assert!(message.contains("reading the body failed"), "{message}");
}

/// A worker whose host clock runs a minute ahead takes over no live lease (claims are decided
/// by the database's clock), and one a minute behind schedules a `Retry-After` on the
/// database's clock rather than a minute early.
async fn a_skewed_worker_clock_steals_no_lease(backend: Backend) {
    let (receiver, addr) = Receiver::start([
        Reply::Slow(Duration::from_millis(1500)),
        Reply::WithHeader(503, "retry-after", "30".to_owned()),
    ])
    .await;
    let mut settings = settings();
    settings.claim_lease = Duration::from_secs(10);
    settings.worker.request_timeout = Duration::from_secs(3);
    let s = setup(backend, &url(addr), settings).await;
    let on_time = s.dispatcher();
    let sending = tokio::spawn(async move { on_time.run_once().await.unwrap() });
    while receiver.seen().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ahead = s
        .dispatcher()
        .with_clock(|| Utc::now() + TimeDelta::seconds(60));
    let report = ahead.run_once().await.unwrap();
    assert_eq!(
        report.attempts, 0,
        "a live lease was taken over: {report:?}"
    );
    let report = sending.await.unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(receiver.seen().len(), 1, "sent once");

    s.enqueue("agent-1", "evt_2").await;
    let behind = s
        .dispatcher()
        .with_clock(|| Utc::now() - TimeDelta::seconds(60));
    let report = behind.run_once().await.unwrap();
    assert_eq!(report.retrying, 1, "{report:?}");
    let page = delivery::history(&s.t.db, "agent-1", &Default::default(), Utc::now())
        .await
        .unwrap();
    let retry = page.items.iter().find(|d| d.event_id == "evt_2").unwrap();
    let due = retry.next_retry_at.unwrap();
    assert!(
        due > Utc::now() + TimeDelta::seconds(25),
        "Retry-After: 30 scheduled on the worker's skewed clock: due {due}"
    );
    assert!(
        behind.run_once().await.unwrap().attempts == 0,
        "sent before Retry-After allows"
    );
}

/// Two agents of two organizations behind two receivers, `events` deliveries each, sent by a
/// running worker whose batches mix both; waits until nothing is pending or leased.
struct TwoTenants {
    s: Setup,
    bad: Receiver,
    good: Receiver,
}

async fn two_tenants(backend: Backend, bad_reply: Reply, events: usize) -> TwoTenants {
    let delay = Duration::from_millis(300);
    let (bad, bad_addr) = Receiver::start(vec![bad_reply; events]).await;
    let (good, good_addr) = Receiver::start(vec![Reply::Slow(delay); events]).await;
    let mut settings = settings();
    settings.worker.concurrency = 32;
    settings.worker.per_host = 32;
    let s = setup(backend, &url(bad_addr), settings).await;
    s.t.exec("INSERT INTO organizations (id, name) VALUES ('org-2', 'Other')")
        .await;
    seed_webhook(&s.t, &s.settings, "agent-2", &url(good_addr)).await;
    s.t.exec("UPDATE agents SET organization_id = 'org-2' WHERE id = 'agent-2'")
        .await;
    // Interleaved, so that every claim and every recorded batch holds both tenants.
    s.enqueue("agent-2", "evt_1").await;
    for i in 2..=events {
        s.enqueue("agent-1", &format!("evt_{i}")).await;
        s.enqueue("agent-2", &format!("evt_{i}")).await;
    }
    TwoTenants { s, bad, good }
}

impl TwoTenants {
    /// Runs a worker until `done` holds (at most 20 s) and stops it.
    async fn run_until(&self, done: impl AsyncFn() -> bool) -> DrainReport {
        let worker = RunningWorker::start(self.s.dispatcher());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done().await && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worker.stop().await
    }

    /// The healthy agent's deliveries: every one delivered by its first and only attempt.
    async fn assert_good_delivered_once(&self, events: usize) {
        let page = delivery::history(
            &self.s.t.db,
            "agent-2",
            &delivery::HistoryQuery {
                limit: 1000,
                ..Default::default()
            },
            Utc::now(),
        )
        .await
        .unwrap();
        assert_eq!(page.items.len(), events);
        for d in &page.items {
            assert_eq!(
                (d.state, d.attempt_count),
                (DeliveryState::Delivered, 1),
                "{} of the healthy agent",
                d.event_id
            );
            let attempts = delivery::attempts(&self.s.t.db, &d.id).await.unwrap();
            assert_eq!(attempts.len(), 1, "{}", d.event_id);
        }
        assert_eq!(self.good.seen().len(), events, "nothing was sent twice");
    }

    async fn count(&self, sql: &str) -> i64 {
        self.s.t.count(sql).await
    }
}

/// A receiver answering 200 with a NUL byte in its body (as any compressed answer has) is
/// recorded as delivered, its body kept as base64, and the other tenant's deliveries recorded
/// in the same batches are untouched.
async fn a_nul_in_a_body_costs_no_other_delivery(backend: Backend) {
    const EVENTS: usize = 40;
    let reply = Reply::Body(200, b"bad\0body", Duration::from_millis(300));
    let tt = two_tenants(backend, reply, EVENTS).await;
    let finished = "SELECT COUNT(*) FROM webhook_deliveries WHERE delivered_at IS NOT NULL";
    let report = tt
        .run_until(async || tt.count(finished).await == 2 * EVENTS as i64)
        .await;
    assert_eq!(report.unrecorded, 0, "{report:?}");
    tt.assert_good_delivered_once(EVENTS).await;
    assert_eq!(tt.bad.seen().len(), EVENTS, "nothing was sent twice");
    let attempts = delivery::attempts(&tt.s.t.db, &tt.s.delivery_id)
        .await
        .unwrap();
    assert_eq!(
        attempts[0].response_body_prefix.as_deref(),
        Some("base64:YmFkAGJvZHk=")
    );
    assert_eq!(tt.s.state().await, DeliveryState::Delivered);
}

/// Hard-deleting an agent while its deliveries are in flight takes its deliveries with it
/// (the cascade); their attempts are skipped, and the other agent's deliveries recorded in the
/// same batches are untouched.
async fn a_hard_deleted_agent_costs_no_other_delivery(backend: Backend) {
    const EVENTS: usize = 40;
    let reply = Reply::Slow(Duration::from_millis(300));
    let tt = two_tenants(backend, reply, EVENTS).await;
    let worker = RunningWorker::start(tt.s.dispatcher());
    let deadline = Instant::now() + Duration::from_secs(10);
    while tt.bad.in_flight.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tt.s.t.exec("DELETE FROM agents WHERE id = 'agent-1'").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let delivered = "SELECT COUNT(*) FROM webhook_deliveries WHERE delivered_at IS NOT NULL";
    while tt.count(delivered).await < EVENTS as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = worker.stop().await;
    assert_eq!(report.unrecorded, 0, "{report:?}");
    assert_eq!(
        tt.count("SELECT COUNT(*) FROM webhook_deliveries WHERE agent_id = 'agent-1'")
            .await,
        0
    );
    tt.assert_good_delivered_once(EVENTS).await;
}

/// A row the database refuses (here a trigger refuses attempt rows whose body says `poison`)
/// makes the worker record that batch one attempt at a time: the refused attempt still has
/// its outcome stored, and every other delivery is recorded whole.
async fn a_refused_attempt_row_costs_only_that_row(backend: Backend) {
    const EVENTS: usize = 20;
    let reply = Reply::Body(200, b"poison", Duration::from_millis(300));
    let tt = two_tenants(backend, reply, EVENTS).await;
    let trigger = match backend {
        Backend::Postgres => vec![
            "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN \
             IF NEW.response_body_prefix LIKE '%poison%' THEN RAISE EXCEPTION 'refused'; \
             END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON webhook_delivery_attempts \
             FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
        ],
        Backend::MySql => vec![
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON webhook_delivery_attempts \
             FOR EACH ROW BEGIN IF NEW.response_body_prefix LIKE '%poison%' THEN \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused'; END IF; END",
        ],
        Backend::Sqlite => vec![
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON webhook_delivery_attempts \
             WHEN NEW.response_body_prefix LIKE '%poison%' \
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        ],
    };
    for sql in trigger {
        tt.s.t.exec(sql).await;
    }
    let finished = "SELECT COUNT(*) FROM webhook_deliveries WHERE delivered_at IS NOT NULL";
    let report = tt
        .run_until(async || tt.count(finished).await == 2 * EVENTS as i64)
        .await;
    assert_eq!(
        (report.delivered, report.unrecorded),
        (2 * EVENTS as u64, 0),
        "{report:?}"
    );
    tt.assert_good_delivered_once(EVENTS).await;
    assert_eq!(tt.bad.seen().len(), EVENTS, "nothing was sent twice");
    assert_eq!(
        tt.count(
            "SELECT COUNT(*) FROM webhook_delivery_attempts a JOIN webhook_deliveries d \
             ON d.id = a.delivery_id WHERE d.agent_id = 'agent-1'"
        )
        .await,
        0,
        "the refused rows are not in the log"
    );
}

/// A worker whose key ring does not open an agent's secret (the right key id with other
/// bytes, as after a failed secret mount) sends nothing, records no attempt, leaves endpoint
/// health alone and gives the claim back uncounted; the start-up check refuses such a ring,
/// one without the key id, and no ring at all.
async fn a_key_ring_fault_is_the_operators_not_the_receivers(backend: Backend) {
    let (receiver, addr) = Receiver::start([]).await;
    let s = setup(backend, &url(addr), settings()).await;
    assert_eq!(
        signing_secrets::check_key_ring(&s.t.db, &s.settings)
            .await
            .unwrap(),
        1
    );
    let ring = |entry: &str| WebhookSettings {
        keys: Some(KeyRing::parse(entry).unwrap()),
        ..s.settings.clone()
    };
    let wrong_bytes = ring(&KeyRing::generate_key_entry("k1").unwrap());
    let other_id = ring(&KeyRing::generate_key_entry("k2").unwrap());
    let no_ring = WebhookSettings {
        keys: None,
        ..s.settings.clone()
    };
    let checked = signing_secrets::check_key_ring(&s.t.db, &wrong_bytes).await;
    assert!(
        matches!(&checked, Err(agent_webhooks::Error::WrongKey { key_id, .. }) if key_id == "k1"),
        "{checked:?}"
    );
    let checked = signing_secrets::check_key_ring(&s.t.db, &other_id).await;
    assert!(
        matches!(&checked, Err(agent_webhooks::Error::Sealed { .. })),
        "{checked:?}"
    );
    assert!(checked.unwrap_err().to_string().contains("`k1`"));
    let checked = signing_secrets::check_key_ring(&s.t.db, &no_ring).await;
    assert!(
        matches!(checked, Err(agent_webhooks::Error::NoEncryptionKey)),
        "{checked:?}"
    );

    for settings in [wrong_bytes, other_id] {
        let dispatcher = Dispatcher::new(settings, s.t.db.clone()).unwrap();
        let report = dispatcher.run_once().await.unwrap();
        assert_eq!((report.attempts, report.key_faults), (0, 1), "{report:?}");
        assert!(receiver.seen().is_empty());
        assert!(
            s.attempts().await.is_empty(),
            "no attempt is blamed on the receiver"
        );
        let stored = delivery::get(&s.t.db, &s.delivery_id, Utc::now())
            .await
            .unwrap();
        assert_eq!((stored.attempt_count, stored.error_message), (0, None));
        assert_eq!(
            s.t.count("SELECT COUNT(*) FROM agents WHERE webhook_failing_since IS NOT NULL")
                .await,
            0,
            "endpoint health untouched"
        );
        // Given back for one lease: make it due again for the next ring.
        s.t.exec("UPDATE webhook_deliveries SET next_retry_at = created_at")
            .await;
    }
    let report = s.run_once().await;
    assert_eq!((report.attempts, report.delivered), (1, 1), "{report:?}");
}

/// Key ids that differ only by case are two keys: a ring without `K1` does not pass the
/// start-up check because an envelope under `k1` opens. A stored secret that is not an
/// envelope at all is the agent's data, not a key-ring fault: recorded as `not_sendable`.
async fn key_ids_differ_by_case_and_bad_envelopes_are_data(backend: Backend) {
    let (receiver, addr) = Receiver::start([]).await;
    let k1 = KeyRing::generate_key_entry("k1").unwrap();
    let upper = KeyRing::generate_key_entry("K1").unwrap();
    let mut sealing = settings();
    sealing.keys = Some(KeyRing::parse(&k1).unwrap());
    let s = setup(backend, &url(addr), sealing).await;
    // agent-2 sealed under `K1` (the first key of a ring is the one that seals).
    let both = WebhookSettings {
        keys: Some(KeyRing::parse(&format!("{upper},{k1}")).unwrap()),
        ..s.settings.clone()
    };
    seed_webhook(&s.t, &both, "agent-2", &url(addr)).await;
    assert_eq!(
        signing_secrets::check_key_ring(&s.t.db, &both)
            .await
            .unwrap(),
        2
    );
    let checked = signing_secrets::check_key_ring(&s.t.db, &s.settings).await;
    assert!(
        checked
            .as_ref()
            .is_err_and(|e| e.to_string().contains("`K1`")),
        "{checked:?}"
    );

    s.t.exec("UPDATE agents SET webhook_secret = 'not an envelope' WHERE id = 'agent-1'")
        .await;
    s.t.exec("DELETE FROM webhook_deliveries WHERE agent_id <> 'agent-1'")
        .await;
    let report = Dispatcher::new(both, s.t.db.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap();
    assert_eq!((report.attempts, report.key_faults), (1, 0), "{report:?}");
    let attempts = s.attempts().await;
    assert_eq!(attempts[0].error_class, Some(ErrorClass::NotSendable));
    assert!(receiver.seen().is_empty());
}

/// What one delivery costs the worker in statements, from claim to record: one read of the
/// agent's keys (its row and previous secrets together) besides the claims and the recording
/// transaction.
async fn a_lone_delivery_costs_the_worker_few_statements(backend: Backend) {
    let (_receiver, addr) = Receiver::start([]).await;
    let s = setup(backend, &url(addr), settings()).await;
    let mut counted = TestDb::reconnect(&s.t).await;
    let sent = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&sent);
    counted.db.set_metric_callback(move |info| {
        seen.lock().unwrap().push(info.statement.sql.clone());
    });
    let report = Dispatcher::new(s.settings.clone(), counted.db.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
    let sent = sent.lock().unwrap().clone();
    let keys: Vec<&String> = sent
        .iter()
        .filter(|sql| sql.contains("webhook_previous_secrets"))
        .collect();
    assert_eq!(keys.len(), 1, "one key read: {sent:#?}");
    assert!(
        keys[0].contains("JOIN"),
        "the agent and its previous secrets together"
    );
    // Claim, keys, an empty claim while the send is in flight, record, the empty claim that
    // ends the run. PostgreSQL records in one statement; SQLite in three (outcome, the agent's
    // health, the attempt row). MariaDB claims rows in three statements (an empty claim in
    // one) and guards its outcome with a locking read.
    let expected = match backend {
        Backend::Postgres => 5,
        Backend::Sqlite => 7,
        Backend::MySql => 10,
    };
    assert_eq!(sent.len(), expected, "{sent:#?}");
}

backend_tests!(
    key_ids_differ_by_case_and_bad_envelopes_are_data,
    a_2xx_whose_body_times_out_is_delivered,
    a_skewed_worker_clock_steals_no_lease,
    the_payload_is_the_apps_bytes,
    a_nul_in_a_body_costs_no_other_delivery,
    a_hard_deleted_agent_costs_no_other_delivery,
    a_refused_attempt_row_costs_only_that_row,
    a_key_ring_fault_is_the_operators_not_the_receivers,
    a_batch_of_agents_is_signed_per_agent_and_recorded_once,
    a_lone_delivery_costs_the_worker_few_statements,
    claims_are_given_back_when_keys_cannot_be_read,
    busy_host_claims_are_released_unsent,
    per_host_limit_bounds_one_host_while_another_proceeds,
    shutdown_waits_for_the_send_in_flight,
    concurrency_is_bounded,
    delivers_signed_exact_bytes,
    retry_sends_identical_bytes,
    retry_after_is_honoured,
    redirect_is_not_followed,
    silent_receiver_times_out,
    huge_response_is_capped,
    connection_refused_is_retried,
    tls_to_a_plain_http_port_fails_as_tls,
    unresolvable_name_fails_as_dns,
    production_refuses_an_ip_literal,
    production_refuses_a_rebinding_name_at_connect,
    run_stops_after_in_flight_sends,
);
