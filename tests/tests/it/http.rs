//! The HTTP API (`agent_webhooks::http`) through a real HTTP client against the router on a
//! loopback port, on SQLite, PostgreSQL and MariaDB: every route's happy path; another
//! organization's agent or delivery is 404 like a missing one on every route; no body carries a
//! plaintext secret but the rotate answer; bad requests get their documented problem and change
//! nothing. The OpenAPI document lists exactly the routes of the table below and passes
//! `openapi-spec-validator` (a Python package, see scripts/test).

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use agent_webhooks::http::{self, CallerOrganization, HttpState, MAX_BODY_BYTES};
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::settings::{PortalKey, WebhookSettings};
use axum::http::request::Parts;
use entity::{agents, organizations, webhook_deliveries as wd};
use futures::future::BoxFuture;
use integration_tests::{Backend, TestDb, backend_tests, enqueue_event, seed_agent};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, TransactionTrait,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The agent of `org-1` (from `seed_agent`) and of `org-2`.
const AGENT: &str = "agent-1";
const OTHER_AGENT: &str = "agent-2";
const SECRET: &str = "a-user-chosen-secret-0123456789";

/// The organization is the `x-org` header: the tests' stand-in for an app's authentication
/// (also the portal's).
pub(super) struct OrgHeader;

impl CallerOrganization for OrgHeader {
    fn organization_id<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Option<String>> {
        let org = parts
            .headers
            .get("x-org")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Box::pin(async move { org })
    }
}

fn settings() -> WebhookSettings {
    WebhookSettings {
        keys: Some(KeyRing::parse(&KeyRing::generate_key_entry("k1").unwrap()).unwrap()),
        portal_key: Some(PortalKey::from_bytes(&[7; 32]).unwrap()),
        ..WebhookSettings::default()
    }
}

/// One answer: status, content type, headers of interest, body.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: u16,
    content_type: String,
    cache_control: String,
    allow: String,
    pub(super) body: String,
}

impl Answer {
    pub(super) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// Asserts a problem response of this status and slug, and returns it.
    pub(super) fn problem(&self, status: u16, slug: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{}",
            self.body
        );
        let p = self.json();
        assert_eq!(
            p["type"],
            format!("{}{slug}", http::PROBLEM_TYPE_PREFIX),
            "{}",
            self.body
        );
        assert_eq!(p["status"], status);
        p
    }
}

/// A client of the API served on a loopback port; remembers every body it received.
pub(super) struct Api {
    addr: SocketAddr,
    base: String,
    client: reqwest::Client,
    bodies: Vec<(String, String)>,
}

impl Api {
    pub(super) async fn start(t: &TestDb) -> Api {
        let app = http::router(HttpState::new(t.db.clone(), settings(), OrgHeader))
            .merge(http::openapi_router());
        Api::serve(app).await
    }

    /// Serves `app`, whose caller is the `x-org` header however it reads it.
    async fn serve(app: axum::Router) -> Api {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Api {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap(),
            bodies: Vec::new(),
        }
    }

    /// `method path` as `org`, with a JSON body when one is given.
    pub(super) async fn call(
        &mut self,
        org: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let raw = body.map(|b| b.to_string());
        self.raw(Some(org), method, path, raw.as_deref(), "application/json")
            .await
    }

    async fn raw(
        &mut self,
        org: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
        content_type: &str,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(org) = org {
            request = request.header("x-org", org);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", content_type)
                .body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (status, content_type, cache_control, allow) = (
            response.status().as_u16(),
            header("content-type"),
            header("cache-control"),
            header("allow"),
        );
        let body = response.text().await.unwrap();
        self.bodies.push((format!("{method} {path}"), body.clone()));
        Answer {
            status,
            content_type,
            cache_control,
            allow,
            body,
        }
    }

    /// Asserts that no body received so far contains `secret`, except those of `allowed`
    /// requests.
    fn assert_never_sent(&self, secret: &str, allowed: &str) {
        for (what, body) in &self.bodies {
            if what != allowed {
                assert!(!body.contains(secret), "{what} answered the secret: {body}");
            }
        }
    }
}

/// `org-1` with `agent-1` (webhook to hooks.example.com, all events) and `org-2` with
/// `agent-2`.
async fn seed(t: &TestDb) {
    seed_agent(t, AGENT, &[]).await;
    organizations::ActiveModel {
        id: Set("org-2".to_owned()),
        name: Set("Other".to_owned()),
        ..Default::default()
    }
    .insert(&t.db)
    .await
    .unwrap();
    agents::ActiveModel {
        id: Set(OTHER_AGENT.to_owned()),
        organization_id: Set("org-2".to_owned()),
        name: Set(OTHER_AGENT.to_owned()),
        webhook_enabled: Set(false),
        webhook_ordered: Set(false),
        ..Default::default()
    }
    .insert(&t.db)
    .await
    .unwrap();
}

/// Marks a delivery exhausted, as the worker does after its last attempt.
async fn exhaust(t: &TestDb, id: &str) {
    wd::Entity::update_many()
        .col_expr(
            wd::Column::NextRetryAt,
            Expr::value(None::<sea_orm::prelude::DateTimeWithTimeZone>),
        )
        .col_expr(wd::Column::ErrorMessage, Expr::value("HTTP 500"))
        .col_expr(wd::Column::AttemptCount, Expr::value(8))
        .filter(wd::Column::Id.eq(id))
        .exec(&t.db)
        .await
        .unwrap();
}

/// Every route: method, path with `{agent}` / `{delivery}`, and a valid body where one is taken.
fn routes() -> Vec<(&'static str, &'static str, Option<Value>)> {
    let agent = "/v1/agents/{agent}/webhook";
    vec![
        ("GET", agent, None),
        (
            "PUT",
            agent,
            Some(json!({"webhook_url": "https://evil.example.com/"})),
        ),
        (
            "PATCH",
            agent,
            Some(json!({"webhook_url": "https://evil.example.com/"})),
        ),
        ("DELETE", agent, None),
        ("POST", "/v1/agents/{agent}/webhook/secret/rotate", None),
        ("POST", "/v1/agents/{agent}/webhook/test", None),
        (
            "POST",
            "/v1/agents/{agent}/webhook/filter-check",
            Some(json!({"event_type": "run.completed", "payload": {}})),
        ),
        ("GET", "/v1/agents/{agent}/webhook/deliveries", None),
        (
            "POST",
            "/v1/agents/{agent}/webhook/recover",
            Some(json!({"since": "2000-01-01T00:00:00Z"})),
        ),
        ("GET", "/v1/agents/{agent}/webhook/stats", None),
        ("GET", "/v1/webhook-deliveries/{delivery}", None),
        ("POST", "/v1/webhook-deliveries/{delivery}/retry", None),
        (
            "POST",
            "/v1/agents/{agent}/webhook/portal-link",
            Some(json!({"valid_for_secs": 60})),
        ),
    ]
}

/// Everything a request could change, as org-1 sees it through the API.
async fn snapshot(api: &mut Api, delivery: &str) -> (Value, Value, Value) {
    let config = api.call("org-1", "GET", &agent_path(""), None).await.json();
    let history = api
        .call("org-1", "GET", &agent_path("/deliveries"), None)
        .await
        .json();
    let one = api
        .call(
            "org-1",
            "GET",
            &format!("/v1/webhook-deliveries/{delivery}"),
            None,
        )
        .await
        .json();
    (config, history, one)
}

fn agent_path(rest: &str) -> String {
    format!("/v1/agents/{AGENT}/webhook{rest}")
}

async fn every_route_works(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed(&t).await;
    let mut api = Api::start(&t).await;

    let got = api.call("org-1", "GET", &agent_path(""), None).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(
        got.json()["webhook_url"],
        "https://hooks.example.com/agent-1"
    );
    assert_eq!(got.json()["has_secret"], false);

    let put = api
        .call(
            "org-1",
            "PUT",
            &agent_path(""),
            Some(json!({
                "webhook_url": "https://hooks.example.com/new",
                "webhook_secret": SECRET,
                "webhook_events": ["run.*"],
            })),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let view = put.json();
    assert_eq!(view["webhook_url"], "https://hooks.example.com/new");
    assert_eq!(
        (view["has_secret"].clone(), view["webhook_enabled"].clone()),
        (json!(true), json!(true))
    );

    let patch = api
        .call(
            "org-1",
            "PATCH",
            &agent_path(""),
            Some(json!({"webhook_events": ["job.failed"], "webhook_ordered": true})),
        )
        .await;
    assert_eq!(patch.status, 200, "{}", patch.body);
    assert_eq!(patch.json()["webhook_events"], json!(["job.failed"]));
    assert_eq!(patch.json()["webhook_url"], "https://hooks.example.com/new");
    assert_eq!(patch.json()["webhook_ordered"], true);

    let rotate = api
        .call("org-1", "POST", &agent_path("/secret/rotate"), None)
        .await;
    assert_eq!(rotate.status, 200, "{}", rotate.body);
    assert_eq!(rotate.cache_control, "no-store");
    let rotated = rotate.json()["webhook_secret"].as_str().unwrap().to_owned();
    assert!(rotated.starts_with("whsec_"), "{rotated}");
    // The replaced secret keeps signing for the grace period (signing-secret rotation).
    assert!(
        rotate.json()["key_id"].as_str().unwrap().starts_with("hs_"),
        "{}",
        rotate.body
    );
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(rotate.json()["previous_expires_at"].clone()).unwrap();
    let grace = expires - chrono::Utc::now();
    assert!(
        grace > chrono::TimeDelta::hours(23) && grace <= chrono::TimeDelta::hours(24),
        "{grace}"
    );

    // The filter wants only job.failed; a test event is sent anyway.
    let test = api.call("org-1", "POST", &agent_path("/test"), None).await;
    assert_eq!(test.status, 202, "{}", test.body);
    let delivery = test.json();
    assert_eq!(delivery["event_type"], "webhook.test");
    assert_eq!(delivery["state"], "pending");
    let id = delivery["id"].as_str().unwrap().to_owned();

    let history = api
        .call(
            "org-1",
            "GET",
            &agent_path("/deliveries?limit=10&event_type=webhook.test"),
            None,
        )
        .await;
    assert_eq!(history.status, 200, "{}", history.body);
    assert_eq!(history.json()["items"][0]["id"], id.as_str());
    assert_eq!(history.json()["next_cursor"], Value::Null);

    let one = api
        .call(
            "org-1",
            "GET",
            &format!("/v1/webhook-deliveries/{id}"),
            None,
        )
        .await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.json()["id"], id.as_str());
    assert_eq!(one.json()["attempts"], json!([]));

    // Retry: only a failed delivery.
    let retry_path = format!("/v1/webhook-deliveries/{id}/retry");
    api.call("org-1", "POST", &retry_path, None)
        .await
        .problem(409, "not-requeueable");
    exhaust(&t, &id).await;
    let retried = api.call("org-1", "POST", &retry_path, None).await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(retried.json()["state"], "pending");
    assert_eq!(retried.json()["attempt_count"], 0);

    // Recover: every failed delivery since an instant, and none before it.
    exhaust(&t, &id).await;
    let failed = api
        .call(
            "org-1",
            "GET",
            &agent_path("/deliveries?state=failed"),
            None,
        )
        .await;
    assert_eq!(failed.json()["items"].as_array().unwrap().len(), 1);
    let later = api
        .call(
            "org-1",
            "POST",
            &agent_path("/recover"),
            Some(json!({"since": "2999-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!((later.status, later.json()), (200, json!({"requeued": 0})));
    let recovered = api
        .call(
            "org-1",
            "POST",
            &agent_path("/recover"),
            Some(json!({"since": "2000-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(
        (recovered.status, recovered.json()),
        (200, json!({"requeued": 1}))
    );

    let stats = api.call("org-1", "GET", &agent_path("/stats"), None).await;
    assert_eq!(stats.status, 200, "{}", stats.body);
    assert_eq!(
        (
            stats.json()["pending"].clone(),
            stats.json()["failed"].clone()
        ),
        (json!(1), json!(0))
    );

    let cleared = api.call("org-1", "DELETE", &agent_path(""), None).await;
    assert_eq!((cleared.status, cleared.body.as_str()), (204, ""));
    let after = api.call("org-1", "GET", &agent_path(""), None).await.json();
    assert_eq!(
        (after["webhook_url"].clone(), after["has_secret"].clone()),
        (Value::Null, json!(false))
    );
    // The test event needs a URL and a secret: 409 names what is missing.
    let p = api
        .call("org-1", "POST", &agent_path("/test"), None)
        .await
        .problem(409, "webhook-not-sendable");
    assert_eq!(p["field"], "webhook_secret");

    api.assert_never_sent(SECRET, "");
    api.assert_never_sent(&rotated, &format!("POST {}", agent_path("/secret/rotate")));
}

async fn other_organizations_get_404_on_every_route(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed(&t).await;
    let mut api = Api::start(&t).await;
    api.call(
        "org-1",
        "PUT",
        &agent_path(""),
        Some(json!({"webhook_url": "https://hooks.example.com/a", "webhook_secret": SECRET})),
    )
    .await;
    let test = api.call("org-1", "POST", &agent_path("/test"), None).await;
    let delivery = test.json()["id"].as_str().unwrap().to_owned();
    exhaust(&t, &delivery).await;
    let before = snapshot(&mut api, &delivery).await;

    for (method, template, body) in routes() {
        let path = |agent: &str, delivery: &str| {
            template
                .replace("{agent}", agent)
                .replace("{delivery}", delivery)
        };
        let (slug, real, missing) = if template.contains("{delivery}") {
            ("delivery-not-found", delivery.as_str(), "dlv-missing")
        } else {
            ("agent-not-found", AGENT, "agent-missing")
        };
        let foreign = api
            .call("org-2", method, &path(AGENT, &delivery), body.clone())
            .await;
        foreign.problem(404, slug);
        let absent = api
            .call(
                "org-2",
                method,
                &path("agent-missing", "dlv-missing"),
                body.clone(),
            )
            .await;
        absent.problem(404, slug);
        assert_eq!(
            foreign.body,
            absent.body.replace(missing, real),
            "{method} {template}: a foreign id must look like a missing one"
        );
        // Unauthenticated: 401 before anything is looked up.
        api.raw(
            None,
            method,
            &path(AGENT, &delivery),
            None,
            "application/json",
        )
        .await
        .problem(401, "unauthenticated");
    }
    // The tenant check comes before the body and the query: another organization's agent is
    // 404 whatever the request holds, so a bad request tells nothing about the agent.
    for (method, path, body, content_type) in [
        ("PUT", agent_path(""), Some("{"), "application/json"),
        ("PUT", agent_path(""), Some("{}"), "text/plain"),
        (
            "GET",
            agent_path("/deliveries?limit=0"),
            None,
            "application/json",
        ),
    ] {
        for agent_path in [path.clone(), path.replace(AGENT, "agent-missing")] {
            api.raw(Some("org-2"), method, &agent_path, body, content_type)
                .await
                .problem(404, "agent-not-found");
        }
    }
    // And org-2's own agent is reachable by org-2 (the 404s above are not a broken route).
    let own = api
        .call(
            "org-2",
            "GET",
            &format!("/v1/agents/{OTHER_AGENT}/webhook"),
            None,
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.body);

    assert_eq!(
        snapshot(&mut api, &delivery).await,
        before,
        "a 404 changed something"
    );
    api.assert_never_sent(SECRET, "");
}

async fn bad_requests_get_their_problem_and_change_nothing(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed(&t).await;
    let mut api = Api::start(&t).await;
    api.call(
        "org-1",
        "PUT",
        &agent_path(""),
        Some(json!({"webhook_url": "https://hooks.example.com/a", "webhook_secret": SECRET})),
    )
    .await;
    let delivery = api
        .call("org-1", "POST", &agent_path("/test"), None)
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = snapshot(&mut api, &delivery).await;
    let put = agent_path("");

    for method in ["PUT", "PATCH"] {
        // Not JSON.
        for body in [
            "{",
            "",
            "{\"webhook_url\": \"https://a.example.com\"} trailing",
        ] {
            api.raw(Some("org-1"), method, &put, Some(body), "application/json")
                .await
                .problem(400, "malformed-json");
        }
        // Not declared as JSON.
        api.raw(Some("org-1"), method, &put, Some("{}"), "text/plain")
            .await
            .problem(415, "unsupported-media-type");
        // Over the size limit, refused before parsing (it is not even JSON).
        let huge = "x".repeat(MAX_BODY_BYTES + 1);
        api.raw(Some("org-1"), method, &put, Some(&huge), "application/json")
            .await
            .problem(413, "body-too-large");
        // Bodies that parse but break a rule: each names its problem type, field and rule.
        let url = "https://a.example.com/";
        let mut refused = vec![
            (
                json!({"webhook_url": url, "webhook_evnts": ["run.*"]}),
                "invalid-body",
                Some("webhook_evnts"),
                "unknown-field",
            ),
            (
                json!({"webhook_url": url, "webhook_enabled": "yes"}),
                "invalid-body",
                Some("webhook_enabled"),
                "type",
            ),
            (
                json!({"webhook_url": url, "webhook_events": ["run.exploded"]}),
                "invalid-event-filter",
                Some("webhook_events"),
                "known-event",
            ),
            (
                json!({"webhook_url": url, "webhook_secret": "short"}),
                "invalid-secret",
                Some("webhook_secret"),
                "min-length",
            ),
            // Only an object is a body: serde would read a struct's fields from an array in
            // their declared order.
            (json!([url]), "invalid-body", None, "type"),
            (json!([url, SECRET, [], true]), "invalid-body", None, "type"),
            (json!([]), "invalid-body", None, "type"),
            (json!(url), "invalid-body", None, "type"),
            (Value::Null, "invalid-body", None, "type"),
        ];
        // Hostile URLs.
        for (url, rule) in [
            ("https://127.0.0.1/hook", "loopback"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("https://10.0.0.1/", "private"),
            ("https://localhost/hook", "local-name"),
            ("http://hooks.example.com/", "scheme"),
            ("https://user:pw@hooks.example.com/", "userinfo"),
            ("not a url", "syntax"),
        ] {
            refused.push((
                json!({"webhook_url": url}),
                "invalid-webhook-url",
                Some("webhook_url"),
                rule,
            ));
        }
        for (body, slug, field, rule) in refused {
            let p = api
                .call("org-1", method, &put, Some(body.clone()))
                .await
                .problem(422, slug);
            assert_eq!(
                (p["field"].clone(), p["rule"].clone()),
                (json!(field), json!(rule)),
                "{method} {body}"
            );
        }
    }
    let p = api
        .call(
            "org-1",
            "PUT",
            &put,
            Some(json!({"webhook_secret": SECRET})),
        )
        .await
        .problem(422, "invalid-body");
    assert_eq!(
        (p["field"].clone(), p["rule"].clone()),
        (json!("webhook_url"), json!("required"))
    );
    let p = api
        .call(
            "org-1",
            "POST",
            &agent_path("/recover"),
            Some(json!({"since": "yesterday"})),
        )
        .await
        .problem(422, "invalid-body");
    assert_eq!(p["field"], "since");
    for body in [json!(["2000-01-01T00:00:00Z"]), json!([])] {
        let p = api
            .call("org-1", "POST", &agent_path("/recover"), Some(body.clone()))
            .await
            .problem(422, "invalid-body");
        assert_eq!(
            (p["field"].clone(), p["rule"].clone()),
            (Value::Null, json!("type")),
            "{body}"
        );
    }

    // Query parameters of the history.
    for (query, field) in [
        ("cursor=not-a-cursor", Some("cursor")),
        ("cursor=bm90IGEgY3Vyc29y", Some("cursor")),
        ("limit=0", Some("limit")),
        ("limit=1001", Some("limit")),
        ("limit=ten", Some("limit")),
        ("state=lost", Some("state")),
        ("colour=red", None),
    ] {
        let p = api
            .call(
                "org-1",
                "GET",
                &agent_path(&format!("/deliveries?{query}")),
                None,
            )
            .await
            .problem(400, "invalid-parameter");
        assert_eq!(p["field"].as_str(), field, "{query}");
    }

    assert_eq!(
        snapshot(&mut api, &delivery).await,
        before,
        "a refused request changed something"
    );
    api.assert_never_sent(SECRET, "");
}

/// What the router answers outside the handlers is a problem document too: an unknown path
/// (404) and a method a path does not take (405, with `allow`), up to the longest URI hyper
/// passes on; a longer one hyper refuses itself (414) before the router sees it.
#[tokio::test]
async fn unknown_routes_and_methods_get_problems() {
    let t = TestDb::migrated(Backend::Sqlite).await;
    seed(&t).await;
    let mut api = Api::start(&t).await;

    let long = format!("/v1/{}", "a".repeat(65_000));
    for path in [
        "/",
        "/v1/nothing-here",
        "/v1/agents/agent-1/webhook/nope",
        "/v1/agents/agent-1",
        long.as_str(),
    ] {
        for org in [Some("org-1"), None] {
            let p = api
                .raw(org, "GET", path, None, "application/json")
                .await
                .problem(404, "not-found");
            assert!(p["title"].is_string() && p["detail"].is_string(), "{p}");
        }
    }

    for (method, path, allowed) in [
        ("POST", agent_path(""), "GET,HEAD,PUT,PATCH,DELETE"),
        ("GET", agent_path("/recover"), "POST"),
        ("DELETE", agent_path("/secret/rotate"), "POST"),
        ("PUT", "/v1/webhook-deliveries/dlv-1".to_owned(), "GET,HEAD"),
        ("OPTIONS", agent_path("/stats"), "GET,HEAD"),
        ("POST", http::OPENAPI_PATH.to_owned(), "GET,HEAD"),
    ] {
        let answer = api
            .raw(Some("org-1"), method, &path, None, "application/json")
            .await;
        let p = answer.problem(405, "method-not-allowed");
        assert!(p["title"].is_string() && p["detail"].is_string(), "{p}");
        let mut allow: Vec<&str> = answer.allow.split(',').map(str::trim).collect();
        allow.sort_unstable();
        let mut expected: Vec<&str> = allowed.split(',').collect();
        expected.sort_unstable();
        assert_eq!(allow, expected, "{method} {path}");
    }

    // Over 65,534 bytes hyper answers 414 itself (with no body) and never calls the router;
    // reqwest cannot even build such a URI, so the request is written by hand.
    let addr = api.addr;
    let head = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let path = "a".repeat(70_000);
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 414 "), "{head}");
}

/// The three forms of `CallerOrganization` scope the routes alike: a type implementing it
/// (every other test), a closure, and `FromExtension` behind the app's own middleware, nested
/// under a prefix as an app mounts it. Each: the caller's agent 200, another organization's
/// 404, no caller 401 (and the middleware's extension is what counts, not the header).
#[tokio::test]
async fn closure_and_extension_callers_scope_the_routes() {
    let t = TestDb::migrated(Backend::Sqlite).await;
    seed(&t).await;

    let closure = |parts: &Parts| {
        let org = parts
            .headers
            .get("x-org")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        async move { org }
    };
    let by_closure = http::router(HttpState::new(t.db.clone(), settings(), closure));

    /// The app's authentication: `x-org` names the organization, except `nobody`, which it
    /// refuses to map (so the API sees no extension although the header is there).
    async fn auth(
        mut request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        let org = request
            .headers()
            .get("x-org")
            .and_then(|v| v.to_str().ok())
            .filter(|org| *org != "nobody")
            .map(|org| http::OrganizationId(org.to_owned()));
        if let Some(org) = org {
            request.extensions_mut().insert(org);
        }
        next.run(request).await
    }
    let by_extension = axum::Router::new()
        .nest(
            "/api/webhooks",
            http::router(HttpState::new(
                t.db.clone(),
                settings(),
                http::FromExtension::new(),
            )),
        )
        .layer(axum::middleware::from_fn(auth));

    for (app, prefix) in [(by_closure, ""), (by_extension, "/api/webhooks")] {
        let mut api = Api::serve(app).await;
        let path = format!("{prefix}{}", agent_path(""));
        let own = api.call("org-1", "GET", &path, None).await;
        assert_eq!(own.status, 200, "{prefix}: {}", own.body);
        assert_eq!(own.json()["agent_id"], AGENT, "{prefix}: {}", own.body);
        api.call("org-2", "GET", &path, None)
            .await
            .problem(404, "agent-not-found");
        api.raw(None, "GET", &path, None, "application/json")
            .await
            .problem(401, "unauthenticated");
        if !prefix.is_empty() {
            api.call("nobody", "GET", &path, None)
                .await
                .problem(401, "unauthenticated");
        }
    }
}

/// Recovery walks past one batch (1000) and requeues only what failed since the instant.
async fn recover_requeues_every_failure_since_an_instant(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed(&t).await;
    let now = chrono::Utc::now();
    let txn = t.db.begin().await.unwrap();
    for i in 0..1008 {
        let at = if i < 5 {
            now - chrono::TimeDelta::days(2)
        } else {
            now - chrono::TimeDelta::hours(1)
        };
        enqueue_event(&txn, AGENT, &format!("evt-{i}"), "run.completed", at)
            .await
            .unwrap();
    }
    txn.commit().await.unwrap();
    wd::Entity::update_many()
        .col_expr(
            wd::Column::NextRetryAt,
            Expr::value(None::<sea_orm::prelude::DateTimeWithTimeZone>),
        )
        .col_expr(wd::Column::ErrorMessage, Expr::value("HTTP 500"))
        .filter(wd::Column::AgentId.eq(AGENT))
        .exec(&t.db)
        .await
        .unwrap();
    let mut api = Api::start(&t).await;
    let since = (now - chrono::TimeDelta::days(1)).to_rfc3339();
    let recovered = api
        .call(
            "org-1",
            "POST",
            &agent_path("/recover"),
            Some(json!({"since": since})),
        )
        .await;
    assert_eq!(
        (recovered.status, recovered.json()),
        (200, json!({"requeued": 1003}))
    );
    let stats = api
        .call("org-1", "GET", &agent_path("/stats"), None)
        .await
        .json();
    assert_eq!(
        (stats["pending"].clone(), stats["failed"].clone()),
        (json!(1003), json!(5))
    );
}

backend_tests!(
    recover_requeues_every_failure_since_an_instant,
    every_route_works,
    other_organizations_get_404_on_every_route,
    bad_requests_get_their_problem_and_change_nothing
);

/// Serves `router` on a loopback port and answers `GET path` with its status and body.
async fn get_from(router: axum::Router, path: &str) -> (u16, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let answer = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap())
}

/// The (method, path) pairs of a document's operations.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

/// The (method, path) pairs of [`routes`] under `prefix`, named as the document names them.
fn mounted(prefix: &str) -> BTreeSet<(String, String)> {
    routes()
        .into_iter()
        .map(|(method, path, _)| {
            let path = path
                .replace("{agent}", "{agent_id}")
                .replace("{delivery}", "{delivery_id}");
            (method.to_owned(), format!("{prefix}{path}"))
        })
        .collect()
}

/// Passes `text` through `openapi-spec-validator`.
fn assert_valid_openapi(text: &str) {
    let mut child = Command::new(integration_tests::python())
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             validate(json.load(sys.stdin))\n",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("this test needs Python with openapi-spec-validator (scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The document served at `OPENAPI_PATH` lists exactly the routes of [`routes`] (which the
/// tests above call), and is a valid OpenAPI 3.1 document.
#[tokio::test]
async fn openapi_document_lists_the_mounted_routes_and_validates() {
    let (status, text) = get_from(http::openapi_router(), http::OPENAPI_PATH).await;
    assert_eq!(status, 200, "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(documented(&doc), mounted(""));
    assert!(doc.get("security").is_none(), "{}", doc["security"]);
    assert_valid_openapi(&text);
}

/// `openapi_router_with` serves, under the app's prefix, the document of an app that nests the
/// router there behind its own API key: every route under the prefix, the key required by
/// every operation; and it is valid too.
#[tokio::test]
async fn openapi_document_of_a_nesting_app_has_its_prefix_and_scheme_and_validates() {
    use agent_webhooks::http::utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};

    let scheme = SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key")));
    let options = http::OpenApiOptions::new()
        .prefix("/api/webhooks")
        .unwrap()
        .security("appKey", scheme)
        .unwrap();
    let path = "/api/webhooks/v1/webhooks/openapi.json";
    assert_eq!(options.document_path(), path);
    let (status, text) = get_from(http::openapi_router_with(&options), path).await;
    assert_eq!(status, 200, "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(documented(&doc), mounted("/api/webhooks"));
    assert_eq!(doc["security"], json!([{"appKey": []}]));
    assert_eq!(
        doc["components"]["securitySchemes"]["appKey"],
        json!({"type": "apiKey", "in": "header", "name": "x-api-key"})
    );
    assert_valid_openapi(&text);
    // Only under the prefix.
    let (status, _) = get_from(http::openapi_router_with(&options), http::OPENAPI_PATH).await;
    assert_eq!(status, 404);
}
