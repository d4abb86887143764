//! An agent's webhook configuration: validated before anything is written, the secret sealed
//! at rest, and read back through views that cannot carry the secret.
//!
//! Decisions:
//! * A configuration without any secret is allowed, but deliveries are never sent unsigned.
//! * An empty event list means **all events**, stored as `[]`; NULL (older rows) alike.
//! * A soft-deleted agent is [`Error::AgentNotFound`] everywhere, except to
//!   [`reseal_secrets`], so an old key can still be retired.
//! * `agents.updated_at` is never written: on an adopted table its type, SQLite text format and
//!   meaning are the host's, and a value in our format broke the host's ORM.

use entity::{agents, webhook_previous_secrets};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DerivePartialModel, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::agent::live;
pub(crate) use crate::agent::{AgentWebhook, find_agent};
use crate::error::{Error, Result};
use crate::secrets::secret_box::{KeyRing, SecretBoxError};
use crate::secrets::webhook_secret::WebhookSecret;
use crate::settings::WebhookSettings;
use crate::webhook::content_filter::ContentFilter;
use crate::webhook::events::EventFilter;
use crate::webhook::url_policy::UrlPolicy;

pub mod content_filter;
pub mod events;
pub mod signing_secrets;
pub mod url_policy;

/// The request body that configures an agent's webhook (the specification's `WebhookConfig`).
///
/// Deliberately not `Serialize`: it may hold a secret. `Debug` redacts the secret. Unknown
/// fields are refused, so a misspelt `webhook_event` is an error rather than silently "all
/// events".
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "axum", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where deliveries go; checked against the [`UrlPolicy`].
    pub webhook_url: String,
    /// The signing secret; `None` keeps the stored one.
    #[serde(default)]
    #[cfg_attr(feature = "axum", schema(value_type = Option<String>, write_only))]
    pub webhook_secret: Option<SecretString>,
    /// Event names or wildcards; empty means all events.
    #[serde(default)]
    pub webhook_events: Vec<String>,
    /// Whether deliveries are enqueued; defaults to true.
    #[serde(default = "enabled_by_default")]
    pub webhook_enabled: bool,
    /// Whether deliveries go out in order within their lane
    /// ([`lanes`](crate::delivery::lanes)); defaults to false.
    #[serde(default)]
    pub webhook_ordered: bool,
    /// A content filter over the event payload ([`content_filter`]); absent or null means
    /// none: every payload of a wanted event type is delivered.
    #[serde(default)]
    #[cfg_attr(feature = "axum", schema(value_type = Option<Object>))]
    pub webhook_filter: Option<serde_json::Value>,
}

fn enabled_by_default() -> bool {
    true
}

/// A partial update of an agent's webhook (`PATCH`): every field is optional, an absent field
/// keeps its stored value. Unknown fields are refused, like in [`WebhookConfig`].
///
/// Not `Serialize` and `Debug` redacts the secret, for the same reason as [`WebhookConfig`].
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "axum", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WebhookConfigPatch {
    /// A new URL, checked against the [`UrlPolicy`].
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// A new signing secret.
    #[serde(default)]
    #[cfg_attr(feature = "axum", schema(value_type = Option<String>, write_only))]
    pub webhook_secret: Option<SecretString>,
    /// A new event filter; empty means all events.
    #[serde(default)]
    pub webhook_events: Option<Vec<String>>,
    /// Enable or disable deliveries.
    #[serde(default)]
    pub webhook_enabled: Option<bool>,
    /// Turn ordered delivery per lane on or off (events enqueued before keep their order).
    #[serde(default)]
    pub webhook_ordered: Option<bool>,
    /// A new content filter ([`content_filter`]); `null` removes the filter, absent keeps it.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "axum", schema(value_type = Option<Object>))]
    pub webhook_filter: Option<Option<serde_json::Value>>,
}

/// A field that is present, `null` included: `Some(None)` for `null`, where a plain `Option`
/// would read `null` as absent.
fn present<'de, D, T>(deserializer: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug)]
pub struct ValidatedConfig {
    pub url: url::Url,
    pub secret: Option<WebhookSecret>,
    pub events: EventFilter,
    pub enabled: bool,
    pub ordered: bool,
    pub filter: Option<ContentFilter>,
}

impl WebhookConfig {
    /// The first failing rule is the error.
    pub fn validate(&self, policy: UrlPolicy) -> Result<ValidatedConfig> {
        Ok(ValidatedConfig {
            url: policy.check(&self.webhook_url)?,
            secret: self
                .webhook_secret
                .clone()
                .map(WebhookSecret::parse)
                .transpose()?,
            events: EventFilter::parse(&self.webhook_events)?,
            enabled: self.webhook_enabled,
            ordered: self.webhook_ordered,
            filter: parse_filter(self.webhook_filter.as_ref())?,
        })
    }
}

/// What an API response may say about an agent's webhook: never the secret, only whether one
/// is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "axum", derive(utoipa::ToSchema))]
pub struct WebhookConfigView {
    /// The agent this configuration belongs to.
    pub agent_id: String,
    /// Where deliveries go, if configured.
    pub webhook_url: Option<String>,
    /// Whether a signing secret is stored.
    pub has_secret: bool,
    /// The event filter as stored; empty means all events.
    pub webhook_events: Vec<String>,
    /// True when the filter is empty or `*`: the webhook wants every event.
    pub all_events: bool,
    /// Whether deliveries are enqueued.
    pub webhook_enabled: bool,
    /// Whether deliveries go out in order within their lane.
    pub webhook_ordered: bool,
    /// When the current run of failed attempts began; `None` while the last attempt succeeded
    /// (or none failed). A run that lasts the settings' `disable_after` disables the webhook.
    pub failing_since: Option<chrono::DateTime<chrono::Utc>>,
    /// When the worker disabled the webhook automatically; `None` when it did not (or it was
    /// enabled again since).
    pub disabled_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why the worker disabled the webhook, e.g. "no successful delivery for 5 days".
    pub disabled_reason: Option<String>,
    /// The content filter as stored ([`content_filter`]); `None` when there is none.
    #[cfg_attr(feature = "axum", schema(value_type = Option<Object>))]
    pub webhook_filter: Option<serde_json::Value>,
}

/// An agent with its webhook fields (the specification's `AgentState`), safe to serialize.
#[allow(
    missing_docs,
    reason = "the agent's own columns, named as in the table"
)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentState {
    pub id: String,
    pub organization_id: String,
    /// `None` when the host's column is NULL (the platform's `agents.name` is nullable).
    pub name: Option<String>,
    pub description: Option<String>,
    /// Read from an aware or a naive (UTC) column alike; `None` when the host left it NULL.
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    pub webhook: WebhookConfigView,
}

/// Validates `config` and stores it on the agent, sealing the secret if one is given.
pub async fn configure<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_id: &str,
    config: &WebhookConfig,
) -> Result<WebhookConfigView> {
    let valid = config.validate(settings.url_policy)?;
    let agent = find_agent(db, agent_id).await?;
    let sealed = match &valid.secret {
        Some(secret) => Some(seal(settings.keys.as_ref(), agent_id, secret)?),
        None => None,
    };
    let events = serde_json::Value::from(valid.events.as_slice());
    let filter = valid.filter.map(|f| f.as_json().clone());

    let mut columns = vec![
        (
            agents::Column::WebhookUrl,
            Expr::value(Some(valid.url.to_string())),
        ),
        (agents::Column::WebhookEvents, Expr::value(Some(events))),
        (agents::Column::WebhookEnabled, Expr::value(valid.enabled)),
        (agents::Column::WebhookOrdered, Expr::value(valid.ordered)),
        (agents::Column::WebhookFilter, Expr::value(filter)),
    ];
    if valid.enabled {
        columns.extend(restart_health());
    }
    if let Some(sealed) = sealed {
        columns.push((agents::Column::WebhookSecret, Expr::value(Some(sealed))));
    }
    let view = update_columns(db, &agent.id, columns).await?;
    tracing::info!(agent = %agent.id, enabled = view.webhook_enabled, "webhook configured");
    Ok(view)
}

/// Validates and applies the fields `patch` holds. A patch that does not touch
/// `webhook_enabled` leaves the endpoint's health (`failing_since`, an automatic disable) as it
/// is.
pub async fn update<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_id: &str,
    patch: &WebhookConfigPatch,
) -> Result<WebhookConfigView> {
    let url = patch
        .webhook_url
        .as_deref()
        .map(|url| settings.url_policy.check(url))
        .transpose()?;
    let secret = patch
        .webhook_secret
        .clone()
        .map(WebhookSecret::parse)
        .transpose()?;
    let events = patch
        .webhook_events
        .as_ref()
        .map(EventFilter::parse)
        .transpose()?;
    let filter = patch
        .webhook_filter
        .as_ref()
        .map(|filter| parse_filter(filter.as_ref()))
        .transpose()?;
    let agent = find_agent(db, agent_id).await?;
    let sealed = match &secret {
        Some(secret) => Some(seal(settings.keys.as_ref(), agent_id, secret)?),
        None => None,
    };
    let mut columns = Vec::new();
    if let Some(url) = url {
        columns.push((
            agents::Column::WebhookUrl,
            Expr::value(Some(url.to_string())),
        ));
    }
    if let Some(sealed) = sealed {
        columns.push((agents::Column::WebhookSecret, Expr::value(Some(sealed))));
    }
    if let Some(events) = events {
        let events = serde_json::Value::from(events.as_slice());
        columns.push((agents::Column::WebhookEvents, Expr::value(Some(events))));
    }
    if let Some(filter) = filter {
        let filter = filter.map(|f| f.as_json().clone());
        columns.push((agents::Column::WebhookFilter, Expr::value(filter)));
    }
    if let Some(enabled) = patch.webhook_enabled {
        columns.push((agents::Column::WebhookEnabled, Expr::value(enabled)));
        if enabled {
            columns.extend(restart_health());
        }
    }
    if let Some(ordered) = patch.webhook_ordered {
        columns.push((agents::Column::WebhookOrdered, Expr::value(ordered)));
    }
    if columns.is_empty() {
        return view(&agent);
    }
    let view = update_columns(db, &agent.id, columns).await?;
    tracing::info!(agent = %agent.id, enabled = view.webhook_enabled, "webhook updated");
    Ok(view)
}

/// Enabling starts afresh: an automatic disable and the failure run behind it are over.
fn restart_health() -> [(agents::Column, Expr); 3] {
    let no_time = || Expr::value(None::<sea_orm::prelude::DateTimeWithTimeZone>);
    [
        (agents::Column::WebhookFailingSince, no_time()),
        (agents::Column::WebhookDisabledAt, no_time()),
        (
            agents::Column::WebhookDisabledReason,
            Expr::value(None::<String>),
        ),
    ]
}

pub async fn get<C: ConnectionTrait>(db: &C, agent_id: &str) -> Result<WebhookConfigView> {
    view(&find_agent(db, agent_id).await?)
}

pub async fn get_agent<C: ConnectionTrait>(db: &C, agent_id: &str) -> Result<AgentState> {
    let agent = find_agent(db, agent_id).await?;
    let host = agents::Entity::find_by_id(agent_id)
        .into_partial_model::<AgentHostColumns>()
        .one(db)
        .await?
        .ok_or_else(|| Error::AgentNotFound(agent_id.to_owned()))?;
    Ok(AgentState {
        webhook: view(&agent)?,
        id: agent.id,
        organization_id: host.organization_id,
        name: host.name,
        description: host.description,
        created_at: host.created_at.map(|t| t.0),
        updated_at: host.updated_at.map(|t| t.0),
    })
}

/// Stops enqueueing deliveries for the agent, keeping URL, secret and filter.
pub async fn disable<C: ConnectionTrait>(db: &C, agent_id: &str) -> Result<WebhookConfigView> {
    update_columns(
        db,
        agent_id,
        vec![(agents::Column::WebhookEnabled, Expr::value(false))],
    )
    .await
}

/// Removes the whole configuration, keys included, and disables it; the history is kept.
pub async fn clear<C: ConnectionTrait>(db: &C, agent_id: &str) -> Result<WebhookConfigView> {
    let view = update_columns(
        db,
        agent_id,
        vec![
            (agents::Column::WebhookUrl, Expr::value(None::<String>)),
            (agents::Column::WebhookSecret, Expr::value(None::<String>)),
            (
                agents::Column::WebhookEvents,
                Expr::value(None::<serde_json::Value>),
            ),
            (agents::Column::WebhookEnabled, Expr::value(false)),
            (
                agents::Column::WebhookFilter,
                Expr::value(None::<serde_json::Value>),
            ),
            (
                agents::Column::WebhookEd25519SecretKey,
                Expr::value(None::<String>),
            ),
            (
                agents::Column::WebhookEd25519PublicKey,
                Expr::value(None::<String>),
            ),
        ],
    )
    .await?;
    webhook_previous_secrets::Entity::delete_many()
        .filter(webhook_previous_secrets::Column::AgentId.eq(agent_id))
        .exec(db)
        .await?;
    Ok(view)
}

/// Every envelope counted was opened with the ring first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ResealReport {
    pub examined: u64,
    pub resealed: u64,
    pub already_current: u64,
    /// Changed concurrently between read and update; left for the next run.
    pub skipped: u64,
}

/// *Sealing-key* rotation: re-seals every stored secret, Ed25519 key and previous secret not
/// under the current key, `batch` rows at a time; what receivers verify does not change.
///
/// Every envelope is opened first, so a wrong key under a known id is [`Error::WrongKey`], never
/// a rotation that left secrets nobody can open. Resumable and safe to run twice: an update
/// applies only if the row still holds what was read. `on_batch` gets the totals so far.
pub async fn reseal_secrets<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    batch: u64,
    mut on_batch: impl FnMut(&ResealReport),
) -> Result<ResealReport> {
    let keys = settings.keys.as_ref().ok_or(Error::NoEncryptionKey)?;
    let batch = crate::db::check_limit(batch)?;
    let mut report = ResealReport::default();
    for column in [
        agents::Column::WebhookSecret,
        agents::Column::WebhookEd25519SecretKey,
    ] {
        let mut after: Option<String> = None;
        loop {
            let mut select = agents::Entity::find()
                .select_only()
                .column(agents::Column::Id)
                .column(column)
                .filter(column.is_not_null())
                .order_by_asc(agents::Column::Id)
                .limit(batch);
            if let Some(last) = &after {
                select = select.filter(agents::Column::Id.gt(last.as_str()));
            }
            let rows: Vec<(String, Option<String>)> = select.into_tuple().all(db).await?;
            let Some((last, _)) = rows.last() else {
                break;
            };
            after = Some(last.clone());
            for (agent_id, sealed) in rows {
                let Some(sealed) = sealed else { continue };
                let Some(resealed) = reseal_envelope(keys, &sealed, &agent_id, &mut report)? else {
                    continue;
                };
                let updated = agents::Entity::update_many()
                    .col_expr(column, Expr::value(Some(resealed)))
                    .filter(agents::Column::Id.eq(agent_id.as_str()))
                    .filter(column.eq(sealed.as_str()))
                    .exec(db)
                    .await?;
                count_update(&mut report, updated.rows_affected);
            }
            tracing::info!(?report, "secret key rotation progress");
            on_batch(&report);
        }
    }
    let mut after: Option<i64> = None;
    loop {
        let mut select = webhook_previous_secrets::Entity::find()
            .select_only()
            .column(webhook_previous_secrets::Column::Id)
            .column(webhook_previous_secrets::Column::AgentId)
            .column(webhook_previous_secrets::Column::SealedSecret)
            .order_by_asc(webhook_previous_secrets::Column::Id)
            .limit(batch);
        if let Some(last) = after {
            select = select.filter(webhook_previous_secrets::Column::Id.gt(last));
        }
        let rows: Vec<(i64, String, String)> = select.into_tuple().all(db).await?;
        let Some((last, _, _)) = rows.last() else {
            return Ok(report);
        };
        after = Some(*last);
        for (id, agent_id, sealed) in rows {
            let Some(resealed) = reseal_envelope(keys, &sealed, &agent_id, &mut report)? else {
                continue;
            };
            let updated = webhook_previous_secrets::Entity::update_many()
                .col_expr(
                    webhook_previous_secrets::Column::SealedSecret,
                    Expr::value(resealed),
                )
                .filter(webhook_previous_secrets::Column::Id.eq(id))
                .filter(webhook_previous_secrets::Column::SealedSecret.eq(sealed.as_str()))
                .exec(db)
                .await?;
            count_update(&mut report, updated.rows_affected);
        }
        tracing::info!(?report, "secret key rotation progress");
        on_batch(&report);
    }
}

/// `None` when it is under the current key already.
/// Opens an envelope sealed for `agent_id`. A key whose id matches but whose bytes do not open
/// it is [`Error::WrongKey`], naming the key id, so a wrong ring never passes for a finished
/// rotation or a worker's start-up check.
pub(crate) fn open_envelope(keys: &KeyRing, sealed: &str, agent_id: &str) -> Result<SecretString> {
    keys.open(sealed, agent_id).map_err(|source| match source {
        SecretBoxError::Decrypt => Error::WrongKey {
            key_id: KeyRing::key_id_of(sealed).unwrap_or("?").to_owned(),
            agent_id: agent_id.to_owned(),
        },
        source => Error::Sealed {
            agent_id: agent_id.to_owned(),
            source,
        },
    })
}

fn reseal_envelope(
    keys: &KeyRing,
    sealed: &str,
    agent_id: &str,
    report: &mut ResealReport,
) -> Result<Option<String>> {
    report.examined += 1;
    let sealed_err = |source| Error::Sealed {
        agent_id: agent_id.to_owned(),
        source,
    };
    let plain = open_envelope(keys, sealed, agent_id)?;
    if !keys.needs_rotation(sealed).map_err(sealed_err)? {
        report.already_current += 1;
        return Ok(None);
    }
    keys.seal(&plain, agent_id).map(Some).map_err(sealed_err)
}

fn count_update(report: &mut ResealReport, rows_affected: u64) {
    if rows_affected == 1 {
        report.resealed += 1;
    } else {
        report.skipped += 1;
    }
}

pub(crate) fn open_secret(
    keys: Option<&KeyRing>,
    agent: &AgentWebhook,
) -> Result<Option<WebhookSecret>> {
    let Some(sealed) = &agent.webhook_secret else {
        return Ok(None);
    };
    let sealed_err = |source| Error::Sealed {
        agent_id: agent.id.clone(),
        source,
    };
    let keys = keys.ok_or(Error::NoEncryptionKey)?;
    let plain = keys.open(sealed, &agent.id).map_err(sealed_err)?;
    // What was stored passed validation when it was written; a failure here means the key
    // ring opened something that was never a webhook secret.
    WebhookSecret::parse(plain)
        .map(Some)
        .map_err(Error::SecretFormat)
}

fn seal(keys: Option<&KeyRing>, agent_id: &str, secret: &WebhookSecret) -> Result<String> {
    seal_text(
        keys.ok_or(Error::NoEncryptionKey)?,
        agent_id,
        secret.expose(),
    )
}

/// Bound to the agent id, so a copy in another agent's row does not open.
pub(crate) fn seal_text(keys: &KeyRing, agent_id: &str, plaintext: &str) -> Result<String> {
    keys.seal(&SecretString::from(plaintext), agent_id)
        .map_err(|source| Error::Sealed {
            agent_id: agent_id.to_owned(),
            source,
        })
}

/// Read tolerantly: NULL where the host allows it, timestamps aware or naive.
#[derive(Clone, Debug, DerivePartialModel)]
#[sea_orm(entity = "agents::Entity")]
struct AgentHostColumns {
    organization_id: String,
    name: Option<String>,
    description: Option<String>,
    created_at: Option<HostTime>,
    updated_at: Option<HostTime>,
}

/// A host's timestamp column may be without time zone, as SQLAlchemy's default `DateTime`
/// makes it: read as UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HostTime(pub chrono::DateTime<chrono::Utc>);

impl sea_orm::TryGetable for HostTime {
    fn try_get_by<I: sea_orm::ColIdx>(
        res: &sea_orm::QueryResult,
        index: I,
    ) -> std::result::Result<Self, sea_orm::TryGetError> {
        use sea_orm::TryGetError;
        match chrono::DateTime::<chrono::FixedOffset>::try_get_by(res, index) {
            Ok(t) => return Ok(HostTime(t.to_utc())),
            Err(TryGetError::Null(s)) => return Err(TryGetError::Null(s)),
            Err(_) => {}
        }
        if let Ok(t) = chrono::NaiveDateTime::try_get_by(res, index) {
            return Ok(HostTime(t.and_utc()));
        }
        let text = String::try_get_by(res, index)?;
        parse_host_time(&text).map(HostTime).ok_or_else(|| {
            TryGetError::DbErr(sea_orm::DbErr::Type(format!(
                "`{index:?}` holds {text:?}, which is not a timestamp"
            )))
        })
    }
}

/// SQLite text with an offset (ours) or without (the host's, read as UTC).
fn parse_host_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = text.trim();
    chrono::DateTime::parse_from_rfc3339(text)
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%:z"))
        .map(|t| t.to_utc())
        .ok()
        .or_else(|| {
            ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
                .iter()
                .find_map(|f| chrono::NaiveDateTime::parse_from_str(text, f).ok())
                .map(|t| t.and_utc())
        })
}

async fn update_columns<C: ConnectionTrait>(
    db: &C,
    agent_id: &str,
    columns: Vec<(agents::Column, Expr)>,
) -> Result<WebhookConfigView> {
    let mut update = agents::Entity::update_many()
        .filter(agents::Column::Id.eq(agent_id))
        .filter(live());
    for (column, value) in columns {
        update = update.col_expr(column, value);
    }
    if update.exec(db).await?.rows_affected == 0 {
        return Err(Error::AgentNotFound(agent_id.to_owned()));
    }
    get(db, agent_id).await
}

/// NULL means all events, like `[]`.
pub(crate) fn stored_events(agent: &AgentWebhook) -> Result<EventFilter> {
    match &agent.webhook_events {
        None => Ok(EventFilter::default()),
        Some(json) => serde_json::from_value(json.clone()).map_err(|source| Error::CorruptEvents {
            agent_id: agent.id.clone(),
            source,
        }),
    }
}

/// A submitted filter, validated; `None` for no filter.
fn parse_filter(filter: Option<&serde_json::Value>) -> Result<Option<ContentFilter>> {
    filter
        .filter(|f| !f.is_null())
        .map(ContentFilter::parse)
        .transpose()
        .map_err(Error::Filter)
}

/// The stored content filter; `None` when there is none. A stored value that does not parse
/// (written by another tool, or under other rules) is [`Error::CorruptFilter`]: enqueueing
/// fails rather than deliver what the filter was meant to hold back.
pub(crate) fn stored_filter(agent: &AgentWebhook) -> Result<Option<ContentFilter>> {
    match &agent.webhook_filter {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(json) => ContentFilter::parse(json)
            .map(Some)
            .map_err(|source| Error::CorruptFilter {
                agent_id: agent.id.clone(),
                source,
            }),
    }
}

fn view(agent: &AgentWebhook) -> Result<WebhookConfigView> {
    let events = stored_events(agent)?;
    Ok(WebhookConfigView {
        agent_id: agent.id.clone(),
        webhook_url: agent.webhook_url.clone(),
        has_secret: agent.webhook_secret.is_some(),
        all_events: events.is_all(),
        webhook_events: events.as_slice().to_vec(),
        webhook_enabled: agent.webhook_enabled,
        webhook_ordered: agent.webhook_ordered,
        failing_since: agent.webhook_failing_since.map(|t| t.to_utc()),
        disabled_at: agent.webhook_disabled_at.map(|t| t.to_utc()),
        disabled_reason: agent.webhook_disabled_reason.clone(),
        webhook_filter: agent.webhook_filter.clone().filter(|f| !f.is_null()),
    })
}
