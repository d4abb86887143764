//! The webhook portal (`agent_webhooks::http::portal`) in a real headless Chromium driven
//! through chromedriver, on SQLite with the delivery worker running in-process and a loopback
//! receiver: a minted link shows the webhook; a refused URL shows the URL policy's reason next
//! to the field; a test event is seen delivered without a reload; a failed delivery shows its
//! attempt and is retried; a rotation shows the new secret once; an expired link, a forged
//! one and another agent's delivery all get the same "not found" page; stored markup is shown
//! as text and never runs. It writes docs/portal.png, the README's screenshot.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (scripts/install-browser): without
//! them the test fails rather than skips.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_webhooks::delivery::retry::RetryPolicy;
use agent_webhooks::dispatch::Dispatcher;
use agent_webhooks::http::portal::{self, PortalLink};
use agent_webhooks::http::{self, HttpState};
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::settings::{PortalKey, WebhookSettings};
use agent_webhooks::webhook::url_policy::UrlPolicy;
use axum::http::StatusCode;
use chrono::{TimeDelta, Utc};
use entity::{agents, organizations, webhook_deliveries as wd};
use fantoccini::{Client, ClientBuilder, Locator};
use integration_tests::{Backend, RunningWorker, TestDb, seed_webhook};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use tokio::net::TcpListener;

use super::http::OrgHeader;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The whole browser test; a hung browser fails it instead of stalling CI.
const TEST_BUDGET: Duration = Duration::from_secs(180);
/// One wait for something on a page.
const WAIT: Duration = Duration::from_secs(20);
/// What the receiver's failing endpoint answers, and markup stored elsewhere: shown as text,
/// never run (it would set `window.pwned`).
const MARKUP: &str = "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">";

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Driver {
    for path in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            std::path::Path::new(path).exists(),
            "{path} is missing: the portal's browser tests need Debian's chromium and \
             chromium-driver; install them with scripts/install-browser"
        );
    }
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "chromedriver did not listen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    driver
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1000,1500"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    tokio::time::timeout(
        WAIT,
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver.url),
    )
    .await
    .expect("a browser session within the wait")
    .expect("a browser session")
}

/// The text of the first element matching `css` once `ready` holds for it.
async fn wait_text(c: &Client, css: &str, ready: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < WAIT {
        if let Ok(element) = c.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if ready(&text) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css}: still `{last}` after {WAIT:?}");
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Whether any stored markup ran in the page.
async fn pwned(c: &Client) -> bool {
    c.execute("return window.pwned !== undefined;", vec![])
        .await
        .expect("run a script")
        .as_bool()
        .expect("a boolean")
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_in_a_browser() {
    tokio::time::timeout(TEST_BUDGET, portal_flow())
        .await
        .expect("the browser test took longer than its budget");
}

async fn portal_flow() {
    let t = TestDb::migrated(Backend::Sqlite).await;
    let mut settings = WebhookSettings {
        url_policy: UrlPolicy::Development,
        keys: Some(KeyRing::parse(&KeyRing::generate_key_entry("k1").unwrap()).unwrap()),
        portal_key: Some(PortalKey::from_bytes(&[7; 32]).unwrap()),
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        ..WebhookSettings::default()
    };
    settings.worker.poll_interval = Duration::from_millis(50);

    let receiver = serve(
        axum::Router::new()
            .route(
                "/ok",
                // Slow enough that the page after "send" shows the delivery on its way.
                axum::routing::post(|| async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    StatusCode::NO_CONTENT
                }),
            )
            .route(
                "/fail",
                axum::routing::post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, MARKUP) }),
            ),
    )
    .await;
    let first_secret =
        seed_webhook(&t, &settings, "agent-1", &format!("http://{receiver}/ok")).await;
    // Another organization's agent with a delivery of its own.
    organizations::ActiveModel {
        id: Set("org-2".to_owned()),
        name: Set("Other".to_owned()),
        ..Default::default()
    }
    .insert(&t.db)
    .await
    .unwrap();
    agents::ActiveModel {
        id: Set("agent-2".to_owned()),
        organization_id: Set("org-2".to_owned()),
        name: Set("agent-2".to_owned()),
        webhook_url: Set(Some(format!("http://{receiver}/ok"))),
        webhook_enabled: Set(true),
        webhook_ordered: Set(false),
        ..Default::default()
    }
    .insert(&t.db)
    .await
    .unwrap();
    let other_delivery = match integration_tests::enqueue_event(
        &t.db,
        "agent-2",
        "e-other-2",
        "run.completed",
        Utc::now(),
    )
    .await
    .unwrap()
    {
        agent_webhooks::delivery::Enqueued::Created(d) => d.id,
        other => panic!("{other:?}"),
    };

    let app = http::router(HttpState::new(t.db.clone(), settings.clone(), OrgHeader));
    let addr = serve(app).await;
    let base = format!("http://{addr}");
    let worker = RunningWorker::start(Dispatcher::new(settings.clone(), t.db.clone()).unwrap());

    // The app mints the link through the API, as its user's organization.
    let http_client = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .unwrap();
    let answer = http_client
        .post(format!("{base}/v1/agents/agent-1/webhook/portal-link"))
        .header("x-org", "org-1")
        .header("content-type", "application/json")
        .body(r#"{"valid_for_secs": 600}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let link: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    let path = link["path"].as_str().unwrap().to_owned();
    assert!(path.starts_with(portal::PORTAL_PREFIX), "{path}");
    let home = format!("{base}{path}");
    // Another organization cannot mint a link to this agent.
    let refused = http_client
        .post(format!("{base}/v1/agents/agent-1/webhook/portal-link"))
        .header("x-org", "org-2")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);

    let driver = start_driver().await;
    let c = browser(&driver).await;

    // The webhook as configured, with its key id and never a secret.
    c.goto(&home).await.unwrap();
    wait_text(&c, "#current-url", |t| {
        t.contains(&format!("{receiver}/ok"))
    })
    .await;
    let keys = wait_text(&c, "#current-keys", |t| t.contains("hs_")).await;
    assert!(keys.contains("primary"), "{keys}");
    // The content filter, read-only: none, then the one the app set through the API.
    wait_text(&c, "#current-filter", |t| t.starts_with("none")).await;
    let set_filter = |filter: &'static str| {
        http_client
            .patch(format!("{base}/v1/agents/agent-1/webhook"))
            .header("x-org", "org-1")
            .header("content-type", "application/json")
            .body(format!(r#"{{"webhook_filter": {filter}}}"#))
            .send()
    };
    assert_eq!(
        set_filter(r#"{"kind": "keep"}"#).await.unwrap().status(),
        200
    );
    c.goto(&home).await.unwrap();
    wait_text(&c, "#current-filter", |t| t == r#"{"kind":"keep"}"#).await;
    assert_eq!(set_filter("null").await.unwrap().status(), 200);
    c.goto(&home).await.unwrap();
    wait_text(&c, "#current-filter", |t| t.starts_with("none")).await;
    assert!(
        !c.source().await.unwrap().contains(first_secret.expose()),
        "no secret on the page"
    );

    // A URL the policy refuses: the reason next to the field, nothing stored.
    let url_field = c.find(Locator::Css("#webhook_url")).await.unwrap();
    url_field.clear().await.unwrap();
    url_field.send_keys("ftp://example.com/hook").await.unwrap();
    click(&c, "#config button[type=submit]").await;
    let reason = wait_text(&c, "#webhook_url-error", |t| !t.is_empty()).await;
    assert!(reason.contains("scheme"), "{reason}");
    let stored = agents::Entity::find_by_id("agent-1")
        .one(&t.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.webhook_url.as_deref(),
        Some(format!("http://{receiver}/ok").as_str())
    );

    // A test event, seen delivered on the page the form led to (the script polls it).
    c.goto(&home).await.unwrap();
    click(&c, "#send-test").await;
    wait_text(&c, ".banner.ok", |t| t.contains("Test event queued")).await;
    let first = wait_text(
        &c,
        "#deliveries tbody tr:first-child [data-field=state]",
        |_| true,
    )
    .await;
    assert!(first == "pending" || first == "leased", "{first}");
    c.execute("window.notReloaded = true;", vec![])
        .await
        .unwrap();
    wait_text(
        &c,
        "#deliveries tbody tr:first-child [data-field=state]",
        |t| t == "delivered",
    )
    .await;
    let same_page = c
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(
        same_page,
        serde_json::json!(true),
        "updated without a reload"
    );

    // Point it at the failing endpoint through the form; the next test event fails.
    let url_field = c.find(Locator::Css("#webhook_url")).await.unwrap();
    url_field.clear().await.unwrap();
    url_field
        .send_keys(&format!("http://{receiver}/fail"))
        .await
        .unwrap();
    click(&c, "#config button[type=submit]").await;
    wait_text(&c, ".banner.ok", |t| t.contains("Saved")).await;
    click(&c, "#send-test").await;
    wait_text(
        &c,
        "#deliveries tbody tr:first-child [data-field=state]",
        |t| t == "failed",
    )
    .await;

    // Stored markup in the event types, the agent's name and its URL, besides the response
    // excerpt: the database is the app's, and not every writer goes through our checks.
    wd::Entity::update_many()
        .col_expr(wd::Column::EventType, Expr::value(MARKUP))
        .filter(wd::Column::AgentId.eq("agent-1"))
        .exec(&t.db)
        .await
        .unwrap();
    agents::Entity::update_many()
        .col_expr(agents::Column::Name, Expr::value(MARKUP))
        .col_expr(
            agents::Column::WebhookUrl,
            Expr::value(format!("https://example.com/{MARKUP}")),
        )
        .filter(agents::Column::Id.eq("agent-1"))
        .exec(&t.db)
        .await
        .unwrap();
    c.goto(&home).await.unwrap();
    let shown_url = wait_text(&c, "#current-url", |t| t.contains("example.com")).await;
    assert!(shown_url.contains(MARKUP), "{shown_url}");
    let event_type = wait_text(&c, "#deliveries tbody tr:first-child code", |t| {
        !t.is_empty()
    })
    .await;
    assert_eq!(event_type, MARKUP);
    assert!(!pwned(&c).await, "stored markup ran on the overview");
    agents::Entity::update_many()
        .col_expr(
            agents::Column::WebhookUrl,
            Expr::value(format!("http://{receiver}/fail")),
        )
        .filter(agents::Column::Id.eq("agent-1"))
        .exec(&t.db)
        .await
        .unwrap();

    // The failed delivery: its attempt, the excerpt as text; then its retry.
    c.goto(&home).await.unwrap();
    let heading = wait_text(&c, "h1", |t| t.contains("Webhook of")).await;
    assert!(
        heading.contains(MARKUP),
        "the stored name is shown as text: {heading}"
    );
    click(&c, "#deliveries tbody tr:first-child a").await;
    let excerpt = wait_text(&c, "pre.excerpt", |t| !t.is_empty()).await;
    assert_eq!(excerpt, MARKUP);
    let attempt = wait_text(&c, "article.attempt", |t| t.contains("500")).await;
    assert!(
        attempt.contains("http_status") && attempt.contains("127.0.0.1"),
        "{attempt}"
    );
    assert!(!pwned(&c).await, "the response excerpt ran");
    assert!(!pwned(&c).await, "stored markup ran on the delivery page");
    click(&c, "#retry").await;
    wait_text(&c, ".banner.ok", |t| t.contains("Queued again")).await;
    // It fails again (the endpoint still answers 500); then "recover everything since".
    c.goto(&home).await.unwrap();
    wait_text(
        &c,
        "#deliveries tbody tr:first-child [data-field=state]",
        |t| t == "failed",
    )
    .await;
    c.execute(
        "document.getElementById('since').value = '2000-01-01T00:00';",
        vec![],
    )
    .await
    .unwrap();
    click(&c, "#recover").await;
    wait_text(&c, ".banner.ok", |t| {
        t.contains("1 failed delivery queued again")
    })
    .await;

    // Rotation: the new secret once, with the copy button the script shows.
    c.goto(&home).await.unwrap();
    assert!(!pwned(&c).await, "stored markup ran on the overview");
    click(&c, "#rotate").await;
    let secret_field = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#new-secret"))
        .await
        .unwrap();
    let secret = secret_field
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let copy = c.find(Locator::Css("#copy-secret")).await.unwrap();
    assert!(
        copy.is_displayed().await.unwrap(),
        "the copy button is shown by the script"
    );
    c.goto(&home).await.unwrap();
    wait_text(&c, "#current-keys", |t| t.contains("previous")).await;
    assert!(!c.source().await.unwrap().contains(&secret), "shown once");

    // The README's screenshot: the overview with its history.
    wd::Entity::update_many()
        .col_expr(wd::Column::EventType, Expr::value("webhook.test"))
        .filter(wd::Column::AgentId.eq("agent-1"))
        .exec(&t.db)
        .await
        .unwrap();
    agents::Entity::update_many()
        .col_expr(agents::Column::Name, Expr::value("Support agent"))
        .filter(agents::Column::Id.eq("agent-1"))
        .exec(&t.db)
        .await
        .unwrap();
    c.goto(&home).await.unwrap();
    wait_text(&c, "h1", |t| t.contains("Support agent")).await;
    let png = c.screenshot().await.unwrap();
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/portal.png");
    std::fs::write(&docs, png).unwrap();

    // An expired link, a forged one, another agent's delivery: the same page, 404.
    let expired = portal::mint_link(
        &t.db,
        &settings,
        "org-1",
        "agent-1",
        Duration::from_secs(60),
        Utc::now() - TimeDelta::hours(1),
    )
    .await
    .unwrap();
    let forged: PortalLink = portal::mint_link(
        &t.db,
        &WebhookSettings {
            portal_key: Some(PortalKey::from_bytes(&[8; 32]).unwrap()),
            ..settings.clone()
        },
        "org-2",
        "agent-2",
        Duration::from_secs(600),
        Utc::now(),
    )
    .await
    .unwrap();
    let mut pages = Vec::new();
    for url in [
        format!("{base}{}", expired.path),
        format!("{base}{}", forged.path),
        format!("{home}/deliveries/{other_delivery}"),
        format!("{home}x"),
    ] {
        let answer = http_client.get(&url).send().await.unwrap();
        assert_eq!(answer.status(), 404, "{url}");
        c.goto(&url).await.unwrap();
        let text = wait_text(&c, "main", |t| !t.is_empty()).await;
        pages.push(text);
    }
    assert!(pages[0].contains("Not found"), "{}", pages[0]);
    assert!(pages.iter().all(|p| p == &pages[0]), "{pages:#?}");

    // A form posted without the link's CSRF token, or with it from another site, is refused
    // and changes nothing; with it, from the page's origin, it is taken.
    let page = http_client
        .get(&home)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_owned();
    let no_redirect = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |csrf: String, site: &'static str| {
        let client = no_redirect.clone();
        let url = format!("{home}/enabled");
        async move {
            client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("sec-fetch-site", site)
                .body(format!("enabled=false&csrf={csrf}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post("forged".to_owned(), "same-origin").await, 403);
    assert_eq!(post(csrf.clone(), "cross-site").await, 403);
    assert_eq!(post(csrf.clone(), "same-site").await, 403);
    let stored = agents::Entity::find_by_id("agent-1")
        .one(&t.db)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.webhook_enabled);
    assert_eq!(post(csrf, "same-origin").await, 303);
    let stored = agents::Entity::find_by_id("agent-1")
        .one(&t.db)
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.webhook_enabled, "the checked form is taken");

    // Reading needs no script: the history is in the served HTML.
    let answer = http_client.get(&home).send().await.unwrap();
    let headers = answer.headers().clone();
    let served = answer.text().await.unwrap();
    assert_eq!(served.matches("<tr data-delivery=").count(), 2, "{served}");
    assert!(
        !served.contains("<script>") && !served.contains(" style="),
        "no inline script or style"
    );
    // The headers of every page: CSP without inline script, framing as configured.
    let csp = headers["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self';") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'self'"), "{csp}");
    assert_eq!(headers["referrer-policy"], "no-referrer");

    c.close().await.unwrap();
    drop(driver);
    worker.stop().await;
}

/// The mint route: a link only with a portal key, within the lifetime bounds, only for the
/// caller's own agent; the link opens that agent's page and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_minted_through_the_api() {
    let t = TestDb::migrated(Backend::Sqlite).await;
    let with_key = WebhookSettings {
        portal_key: Some(PortalKey::from_bytes(&[7; 32]).unwrap()),
        ..WebhookSettings::default()
    };
    integration_tests::seed_agent(&t, "agent-1", &[]).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .unwrap();
    let mint = |base: String, org: &'static str, body: &'static str| {
        let client = client.clone();
        async move {
            let answer = client
                .post(format!("{base}/v1/agents/agent-1/webhook/portal-link"))
                .header("x-org", org)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let cache = answer.headers().get("cache-control").cloned();
            let body: serde_json::Value =
                serde_json::from_str(&answer.text().await.unwrap()).unwrap();
            (status, cache, body)
        }
    };

    let without = serve(http::router(HttpState::new(
        t.db.clone(),
        WebhookSettings::default(),
        OrgHeader,
    )))
    .await;
    let (status, _, problem) = mint(format!("http://{without}"), "org-1", "{}").await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(
        problem["type"],
        "urn:agent-webhooks:problem:portal-unavailable"
    );

    let base = format!(
        "http://{}",
        serve(http::router(HttpState::new(
            t.db.clone(),
            with_key,
            OrgHeader
        )))
        .await
    );
    for too_long in [r#"{"valid_for_secs": 0}"#, r#"{"valid_for_secs": 86401}"#] {
        let (status, _, problem) = mint(base.clone(), "org-1", too_long).await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (422, Some("valid_for_secs")),
            "{problem}"
        );
    }
    let (status, _, problem) = mint(base.clone(), "org-2", "{}").await;
    assert_eq!(status, 404, "{problem}");
    let before = Utc::now();
    let (status, cache, link) = mint(base.clone(), "org-1", "{}").await;
    assert_eq!(status, 200, "{link}");
    assert_eq!(cache.unwrap(), "no-store");
    let expires_at: chrono::DateTime<Utc> = link["expires_at"].as_str().unwrap().parse().unwrap();
    let ttl = expires_at - before;
    assert!(
        ttl > TimeDelta::minutes(14) && ttl <= TimeDelta::minutes(15),
        "{ttl}"
    );
    let page = client
        .get(format!("{base}{}", link["path"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Webhook of"));
}
