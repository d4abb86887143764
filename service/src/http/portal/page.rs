//! The portal's HTML, as maud templates: compiled into the binary, checked by the compiler,
//! and every interpolated value HTML-escaped (a stored URL, event type or response excerpt
//! holding `<script>` is shown as text). No inline script or style: the page links
//! `portal.css` and `portal.js`, so the Content-Security-Policy can forbid inline code.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use crate::delivery::{AttemptRecord, DeliveryState, HistoryPage, WebhookDelivery};
use crate::webhook::AgentState;
use crate::webhook::signing_secrets::SigningKeysView;

/// Where a page is, so that its links and form actions can be relative (the app may mount the
/// router under a prefix): `base` leads from the page's directory to the portal's root
/// (`…/webhooks/portal/`), `token` is the link's.
pub(crate) struct Place<'a> {
    pub base: &'a str,
    pub token: &'a str,
    pub csrf: &'a str,
}

impl Place<'_> {
    fn home(&self) -> String {
        format!("{}{}", self.base, self.token)
    }

    fn action(&self, tail: &str) -> String {
        format!("{}{}/{tail}", self.base, self.token)
    }

    fn asset(&self, name: &str) -> String {
        format!("{}../portal-assets/{name}", self.base)
    }
}

/// A message at the top of the page.
pub(crate) struct Banner {
    pub error: bool,
    pub text: String,
}

/// The endpoint form as the user left it, with the reason it was refused.
#[derive(Default)]
pub(crate) struct ConfigForm {
    pub url: Option<String>,
    pub events: Option<String>,
    pub url_error: Option<String>,
    pub events_error: Option<String>,
}

/// The answer of a rotation: shown once, on the page that answers the POST.
pub(crate) struct Rotated {
    pub secret: String,
    pub key_id: String,
    pub previous_expires_at: Option<DateTime<Utc>>,
}

/// Everything the overview shows.
pub(crate) struct Overview<'a> {
    pub agent: &'a AgentState,
    /// `None` when the key ids could not be read (no key ring on this server).
    pub keys: Option<&'a SigningKeysView>,
    pub history: &'a HistoryPage,
    /// Whether this is a later page of the history.
    pub paged: bool,
    pub banner: Option<Banner>,
    pub form: ConfigForm,
    pub rotated: Option<Rotated>,
    /// The signing grace period, in hours, for the rotate button's explanation.
    pub grace_hours: u64,
    /// Which URLs the server's URL policy takes, said next to the URL field.
    pub url_help: &'static str,
}

fn time(t: DateTime<Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

fn layout(place: &Place, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) }
                link rel="stylesheet" href=(place.asset("portal.css"));
                script src=(place.asset("portal.js")) defer {}
            }
            body {
                main { (body) }
            }
        }
    }
}

fn banner(banner: &Option<Banner>) -> Markup {
    html! {
        @if let Some(b) = banner {
            @if b.error {
                p.banner.error role="alert" { (b.text) }
            } @else {
                p.banner.ok role="status" { (b.text) }
            }
        }
    }
}

fn csrf(place: &Place) -> Markup {
    html! { input type="hidden" name="csrf" value=(place.csrf); }
}

fn state_badge(state: DeliveryState) -> Markup {
    html! { span class={"state state-" (state.as_str())} data-field="state" { (state.as_str()) } }
}

/// The overview: the webhook, its forms, the history.
pub(crate) fn overview(place: &Place, page: &Overview) -> Markup {
    let webhook = &page.agent.webhook;
    let name = page.agent.name.as_deref().unwrap_or(&page.agent.id);
    let url_value = page
        .form
        .url
        .clone()
        .or_else(|| webhook.webhook_url.clone())
        .unwrap_or_default();
    let events_value = page
        .form
        .events
        .clone()
        .unwrap_or_else(|| webhook.webhook_events.join("\n"));
    layout(
        place,
        &format!("Webhook of {name}"),
        html! {
            h1 { "Webhook of " span.agent { (name) } }
            (banner(&page.banner))
            @if let Some(rotated) = &page.rotated { (rotated_secret(rotated)) }
            section aria-labelledby="status-h" {
                h2 #status-h { "Status" }
                dl.facts {
                    dt { "URL" }
                    dd #current-url { @match &webhook.webhook_url { Some(u) => code { (u) }, None => em { "none" } } }
                    dt { "Deliveries" }
                    dd #current-enabled {
                        @if webhook.webhook_enabled { span.on { "enabled" } } @else { span.off { "disabled" } }
                        @if let (Some(at), Some(reason)) = (webhook.disabled_at, &webhook.disabled_reason) {
                            " automatically since " (time(at)) ": " (reason)
                        }
                    }
                    @if let Some(since) = webhook.failing_since {
                        dt { "Failing since" } dd { (time(since)) }
                    }
                    dt { "Order" }
                    dd #current-order {
                        @if webhook.webhook_ordered { "in order within each lane (run or conversation)" }
                        @else { "unordered" }
                    }
                    dt { "Event types" }
                    dd #current-events {
                        @if webhook.all_events { "all events" }
                        @else { @for (i, e) in webhook.webhook_events.iter().enumerate() { @if i > 0 { ", " } code { (e) } } }
                    }
                    dt { "Content filter" }
                    dd #current-filter {
                        @match &webhook.webhook_filter {
                            Some(filter) => code { (filter) },
                            None => "none: every payload of those event types",
                        }
                    }
                    dt { "Signing" }
                    dd #current-keys {
                        "Standard Webhooks, HMAC-SHA256 (" code { "v1" } ")"
                        @if let Some(keys) = page.keys {
                            @if keys.keys.is_empty() { "; no signing secret yet: deliveries are not sent until one is set" }
                            ul.keys {
                                @for k in &keys.keys {
                                    li {
                                        code { (k.key_id) } " " (k.algorithm.as_str()) ", " (k.role.to_string())
                                        @if let Some(until) = k.expires_at { ", signs until " (time(until)) }
                                    }
                                }
                            }
                        } @else { "; key ids unavailable on this server" }
                    }
                }
                form method="post" action=(place.action("enabled")) {
                    (csrf(place))
                    @if webhook.webhook_enabled {
                        input type="hidden" name="enabled" value="false";
                        button #disable type="submit" { "Disable deliveries" }
                    } @else {
                        input type="hidden" name="enabled" value="true";
                        button #enable type="submit" { "Enable deliveries" }
                    }
                }
            }
            section aria-labelledby="endpoint-h" {
                h2 #endpoint-h { "Endpoint" }
                form #config method="post" action=(place.action("webhook")) novalidate {
                    (csrf(place))
                    label for="webhook_url" { "URL" }
                    @if let Some(error) = &page.form.url_error {
                        input #webhook_url name="webhook_url" type="url" value=(url_value) aria-invalid="true" aria-describedby="webhook_url-error" autocomplete="off";
                        p #webhook_url-error.field-error { (error) }
                    } @else {
                        input #webhook_url name="webhook_url" type="url" value=(url_value) autocomplete="off" aria-describedby="webhook_url-help";
                        p #webhook_url-help.help { (page.url_help) }
                    }
                    label for="webhook_events" { "Event types" }
                    @if let Some(error) = &page.form.events_error {
                        textarea #webhook_events name="webhook_events" rows="3" aria-invalid="true" aria-describedby="webhook_events-error" { (events_value) }
                        p #webhook_events-error.field-error { (error) }
                    } @else {
                        textarea #webhook_events name="webhook_events" rows="3" aria-describedby="webhook_events-help" { (events_value) }
                        p #webhook_events-help.help { "One per line or separated by commas, wildcards such as " code { "run.*" } " allowed; empty means all events." }
                    }
                    button type="submit" { "Save" }
                }
            }
            section aria-labelledby="test-h" {
                h2 #test-h { "Test" }
                form method="post" action=(place.action("test")) {
                    (csrf(place))
                    p.help { "Sends a " code { "webhook.test" } " event now; its state below updates as it is delivered." }
                    button #send-test type="submit" { "Send a test event" }
                }
            }
            section aria-labelledby="secret-h" {
                h2 #secret-h { "Signing secret" }
                form method="post" action=(place.action("rotate")) {
                    (csrf(place))
                    p.help { "A new secret replaces the current one; the current one keeps signing alongside it for " (page.grace_hours) " hours, so your receiver can switch without missing a delivery. The new secret is shown once." }
                    button #rotate type="submit" { "Rotate the signing secret" }
                }
                (verify_help())
            }
            section aria-labelledby="history-h" {
                h2 #history-h { "Deliveries" }
                (history(place, page.history, page.paged))
                form.inline method="post" action=(place.action("recover")) {
                    (csrf(place))
                    label for="since" { "Send again every failed delivery since (UTC)" }
                    input #since name="since" type="datetime-local" required;
                    button #recover type="submit" { "Recover" }
                }
            }
        },
    )
}

fn rotated_secret(rotated: &Rotated) -> Markup {
    html! {
        section.rotated aria-labelledby="rotated-h" {
            h2 #rotated-h { "Your new signing secret" }
            p { "Copy it now: it is not shown again. Key id " code { (rotated.key_id) } "." }
            div.copy {
                label for="new-secret" { "Secret" }
                input #new-secret type="text" readonly value=(rotated.secret) autocomplete="off" spellcheck="false";
                button #copy-secret type="button" data-copy="new-secret" hidden { "Copy" }
            }
            @match rotated.previous_expires_at {
                Some(until) => p { "The previous secret keeps signing until " (time(until)) "." },
                None => p { "No previous secret signs alongside it." },
            }
        }
    }
}

fn verify_help() -> Markup {
    html! {
        details {
            summary { "How to verify deliveries" }
            p {
                "Deliveries follow " a href="https://www.standardwebhooks.com/" { "Standard Webhooks" }
                ": verify each with a Standard Webhooks library (" code { "standardwebhooks" }
                " for Python, JavaScript, Go, Rust, …) given the " code { "whsec_" } " secret and the headers "
                code { "webhook-id" } ", " code { "webhook-timestamp" } " and " code { "webhook-signature" }
                ". During a rotation the signature header holds one signature per secret; any one that verifies is enough. Drop a delivery whose "
                code { "webhook-id" } " you have already handled: retries reuse it."
            }
        }
    }
}

fn history(place: &Place, page: &HistoryPage, paged: bool) -> Markup {
    html! {
        @if page.items.is_empty() {
            p { "No deliveries yet." }
        } @else {
            div.scroll {
                table #deliveries {
                    caption.visually-hidden { "Deliveries, newest first" }
                    thead { tr { th scope="col" { "Created" } th scope="col" { "Event type" } th scope="col" { "State" } th scope="col" { "Attempts" } th scope="col" { "Last status" } } }
                    tbody {
                        @for d in &page.items { (row(place, d)) }
                    }
                }
            }
        }
        nav.pages aria-label="History pages" {
            @if paged { a href=(place.home()) { "Newest" } }
            @if let Some(cursor) = &page.next_cursor {
                a #older href={(place.home()) "?cursor=" (percent(cursor))} { "Older" }
            }
        }
    }
}

fn row(place: &Place, d: &WebhookDelivery) -> Markup {
    let live = matches!(d.state, DeliveryState::Pending | DeliveryState::Leased);
    let state_url = place.action(&format!("deliveries/{}/state", percent(&d.id)));
    html! {
        tr data-delivery=(d.id) data-state-url=[live.then_some(state_url)] {
            td { a href=(place.action(&format!("deliveries/{}", percent(&d.id)))) { (time(d.created_at)) } }
            td { code { (d.event_type) } }
            td { (state_badge(d.state)) }
            td data-field="attempts" { (d.attempt_count) }
            td data-field="status" { @if let Some(s) = d.status_code { (s) } @else { "–" } }
        }
    }
}

/// One delivery with every attempt, and its retry.
pub(crate) fn delivery(
    place: &Place,
    d: &WebhookDelivery,
    attempts: &[AttemptRecord],
    banner_: Option<Banner>,
) -> Markup {
    layout(
        place,
        "Delivery",
        html! {
            p { a href=(place.home()) { "← Back to the webhook" } }
            h1 { "Delivery " code { (d.id) } }
            (banner(&banner_))
            dl.facts data-delivery=(d.id) {
                dt { "Event type" } dd { code { (d.event_type) } }
                dt { "Event id" } dd { code { (d.event_id) } }
                dt { "URL" } dd { code { (d.webhook_url) } }
                dt { "State" } dd #delivery-state { (state_badge(d.state)) }
                @if let (Some(lane), Some(seq)) = (&d.lane, d.lane_seq) {
                    dt { "Lane" } dd { code { (lane) } " #" (seq) }
                }
                dt { "Attempts" } dd { (d.attempt_count) }
                dt { "Created" } dd { (time(d.created_at)) }
                @if let Some(at) = d.delivered_at { dt { "Delivered" } dd { (time(at)) } }
                @if let Some(e) = &d.error_message { dt { "Last error" } dd { (e) } }
            }
            @if d.state == DeliveryState::Failed {
                form method="post" action=(place.action(&format!("deliveries/{}/retry", percent(&d.id)))) {
                    (csrf(place))
                    button #retry type="submit" { "Retry this delivery" }
                }
            }
            h2 { "Attempts" }
            @if attempts.is_empty() { p { "No attempt yet." } }
            @for a in attempts {
                article.attempt {
                    h3 { "Attempt " (a.attempt) }
                    dl.facts {
                        dt { "Started" } dd { (time(a.started_at)) }
                        dt { "Finished" } dd { (time(a.finished_at)) }
                        dt { "Status" } dd { @if let Some(s) = a.status_code { (s) } @else { "no response" } }
                        @if let Some(c) = a.error_class { dt { "Class" } dd { code { (c.as_str()) } } }
                        @if let Some(m) = &a.message { dt { "Message" } dd { (m) } }
                        @if let Some(addr) = &a.remote_addr { dt { "Remote address" } dd { code { (addr) } } }
                    }
                    @if let Some(body) = &a.response_body_prefix {
                        p.help { "Start of the response body:" }
                        pre.excerpt { (body) }
                    }
                }
            }
        },
    )
}

/// The page of every link that does not open a portal: expired, forged, another agent's, a
/// delivery of another agent. One page for all, so that none can be told apart.
pub(crate) fn not_found(place: &Place) -> Markup {
    layout(
        place,
        "Not found",
        html! {
            h1 { "Not found" }
            p { "This link does not open a webhook portal: it may have expired. Open the portal again from the app." }
        },
    )
}

/// A form posted without its CSRF token (or from another site).
pub(crate) fn forbidden(place: &Place) -> Markup {
    layout(
        place,
        "Form expired",
        html! {
            h1 { "This form could not be accepted" }
            p { "Reload the page and try again." }
            p { a href=(place.home()) { "Back to the webhook" } }
        },
    )
}

/// A path segment, percent-encoded (ids are the app's and may hold anything).
fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
