//! An agent's webhook configuration: validated before anything is written, the secret sealed
//! at rest, and read back through views that cannot carry the secret.
//!
//! Decisions:
//! * `webhook_secret` absent in [`WebhookConfig`] keeps the stored secret; [`clear`]
//!   removes it. A configuration without any secret is allowed, but the sender refuses to send
//!   unsigned deliveries (see [`crate::sender`]).
//! * An empty event list means **all events**, and is stored as `[]`. A NULL list (rows from
//!   before the webhook migration) means the same.
//! * An agent the platform soft-deleted (`is_deleted = true`) is gone: every function here
//!   answers [`Error::AgentNotFound`] for it and changes nothing, as for an id that never
//!   existed. Only [`reseal_secrets`] still covers its secret, so that an old key can be retired.
//! * `agents.updated_at` is never written here. On an adopted table it is the host's column:
//!   its type (naive or aware), its text format on SQLite and its meaning (the host ORM's
//!   `onupdate`) are the host's, and a value in our format broke the host's ORM (one aware
//!   datetime among naive ones). No code of ours needs to know when the webhook changed; the
//!   host's value is read back unchanged in [`AgentState::updated_at`].

use entity::{agents, webhook_previous_secrets};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, QuerySelect,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::events::EventFilter;
use crate::secret_box::{KeyRing, SecretBoxError};
use crate::settings::WebhookSettings;
use crate::url_policy::UrlPolicy;
use crate::webhook_secret::WebhookSecret;

/// The request body that configures an agent's webhook (the specification's `WebhookConfig`).
///
/// Deliberately not `Serialize`: it may hold a secret. `Debug` redacts the secret.
#[derive(Debug, Deserialize)]
pub struct WebhookConfig {
    /// Where deliveries go; checked against the [`UrlPolicy`].
    pub webhook_url: String,
    /// The signing secret; `None` keeps the stored one.
    #[serde(default)]
    pub webhook_secret: Option<SecretString>,
    /// Event names or wildcards; empty means all events.
    #[serde(default)]
    pub webhook_events: Vec<String>,
    /// Whether deliveries are enqueued; defaults to true.
    #[serde(default = "enabled_by_default")]
    pub webhook_enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// A [`WebhookConfig`] that passed validation.
#[derive(Debug)]
pub struct ValidatedConfig {
    /// The URL, normalised.
    pub url: url::Url,
    /// The secret, when one was given.
    pub secret: Option<WebhookSecret>,
    /// The normalised event filter.
    pub events: EventFilter,
    /// Whether the webhook is enabled.
    pub enabled: bool,
}

impl WebhookConfig {
    /// Validates every field; the first failing rule is the error.
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
        })
    }
}

/// What an API response may say about an agent's webhook: never the secret, only whether one
/// is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    /// When the current run of failed attempts began; `None` while the last attempt succeeded
    /// (or none failed). A run that lasts the settings' `disable_after` disables the webhook.
    pub failing_since: Option<chrono::DateTime<chrono::Utc>>,
    /// When the worker disabled the webhook automatically; `None` when it did not (or it was
    /// enabled again since).
    pub disabled_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why the worker disabled the webhook, e.g. "no successful delivery for 5 days".
    pub disabled_reason: Option<String>,
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
    pub name: String,
    pub description: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The webhook configuration, without the secret.
    pub webhook: WebhookConfigView,
}

/// Validates `config` and stores it on the agent; the secret, if given, is sealed with the
/// current key and the agent id as associated data.
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

    let mut active = agent.into_active_model();
    active.webhook_url = Set(Some(valid.url.to_string()));
    active.webhook_events = Set(Some(events));
    active.webhook_enabled = Set(valid.enabled);
    if valid.enabled {
        // Enabling starts afresh: an automatic disable and the failure run behind it are over.
        active.webhook_failing_since = Set(None);
        active.webhook_disabled_at = Set(None);
        active.webhook_disabled_reason = Set(None);
    }
    if let Some(sealed) = sealed {
        active.webhook_secret = Set(Some(sealed));
    }
    let agent = active.update(db).await?;
    tracing::info!(agent = %agent.id, enabled = agent.webhook_enabled, "webhook configured");
    view(&agent)
}

/// The agent's webhook configuration, without the secret.
pub async fn get<C: ConnectionTrait>(db: &C, agent_id: &str) -> Result<WebhookConfigView> {
    view(&find_agent(db, agent_id).await?)
}

/// The agent with its webhook configuration, without the secret.
pub async fn get_agent<C: ConnectionTrait>(db: &C, agent_id: &str) -> Result<AgentState> {
    let agent = find_agent(db, agent_id).await?;
    Ok(AgentState {
        webhook: view(&agent)?,
        id: agent.id,
        organization_id: agent.organization_id,
        name: agent.name,
        description: agent.description,
        created_at: agent.created_at.to_utc(),
        updated_at: agent.updated_at.map(|t| t.to_utc()),
    })
}

/// Stops enqueueing deliveries for the agent, keeping URL, secret and filter.
pub async fn disable<C: ConnectionTrait>(db: &C, agent_id: &str) -> Result<WebhookConfigView> {
    update_columns(
        db,
        agent_id,
        [(agents::Column::WebhookEnabled, Expr::value(false))],
    )
    .await
}

/// Removes the agent's webhook configuration entirely (URL, secret, previous secrets, Ed25519
/// key, filter) and disables it. Its delivery history is kept.
pub async fn clear<C: ConnectionTrait>(db: &C, agent_id: &str) -> Result<WebhookConfigView> {
    let view = update_columns(
        db,
        agent_id,
        [
            (agents::Column::WebhookUrl, Expr::value(None::<String>)),
            (agents::Column::WebhookSecret, Expr::value(None::<String>)),
            (
                agents::Column::WebhookEvents,
                Expr::value(None::<serde_json::Value>),
            ),
            (agents::Column::WebhookEnabled, Expr::value(false)),
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

/// The agent's decrypted signing secret, for the component that signs deliveries; `None` when
/// no secret is set. Never log or serialize what this returns.
pub async fn reveal_secret<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_id: &str,
) -> Result<Option<WebhookSecret>> {
    let agent = find_agent(db, agent_id).await?;
    open_secret(settings.keys.as_ref(), &agent)
}

/// What [`reseal_secrets`] did; every envelope it counts was opened with the ring first.
/// Envelopes are primary secrets, previous signing secrets and Ed25519 private keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ResealReport {
    /// Stored envelopes that were looked at.
    pub examined: u64,
    /// Envelopes re-sealed under the current key.
    pub resealed: u64,
    /// Envelopes that were under the current key already (and open with it).
    pub already_current: u64,
    /// Envelopes whose row changed (a concurrent [`configure`], [`clear`] or signing-secret
    /// rotation) between the read and the update; left for the next run.
    pub skipped: u64,
}

/// Re-seals every stored envelope that is not under the current key, `batch` rows at a time:
/// the agents' secrets, their Ed25519 private keys, then their previous signing secrets (see
/// [`crate::signing_secrets`]). This is *sealing-key* (master-key) rotation: what receivers
/// verify does not change.
///
/// Every envelope is opened before it is counted as current or rewritten, so a key whose id
/// matches but whose bytes are wrong is an error ([`Error::WrongKey`], naming the key id),
/// never a successful rotation that left secrets nobody can open.
///
/// Resumable and safe to run twice: it walks rows by id, each envelope already under the
/// current key is left alone, and each update only applies if the row still holds the
/// ciphertext that was read (a concurrent [`configure`] wins).
///
/// `on_batch` is called after each batch with the totals so far, so that a long run can show
/// progress; pass `|_| {}` when nobody watches.
pub async fn reseal_secrets<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    batch: u64,
    mut on_batch: impl FnMut(&ResealReport),
) -> Result<ResealReport> {
    let keys = settings.keys.as_ref().ok_or(Error::NoEncryptionKey)?;
    let batch = crate::deliveries::check_limit(batch)?;
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

/// Opens one envelope sealed for `agent_id` and returns it sealed under the current key, or
/// `None` (counted as current) when it is under the current key already.
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
    let plain = match keys.open(sealed, agent_id) {
        Ok(plain) => plain,
        Err(SecretBoxError::Decrypt) => {
            return Err(Error::WrongKey {
                key_id: KeyRing::key_id_of(sealed).unwrap_or("?").to_owned(),
                agent_id: agent_id.to_owned(),
            });
        }
        Err(source) => return Err(sealed_err(source)),
    };
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

/// Opens the sealed secret of a loaded agent row.
pub(crate) fn open_secret(
    keys: Option<&KeyRing>,
    agent: &agents::Model,
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

/// Seals `plaintext` (a secret or a `whsk_` key) for the agent: the current key, the agent id
/// as associated data, so a copy in another agent's row does not open.
pub(crate) fn seal_text(keys: &KeyRing, agent_id: &str, plaintext: &str) -> Result<String> {
    keys.seal(&SecretString::from(plaintext), agent_id)
        .map_err(|source| Error::Sealed {
            agent_id: agent_id.to_owned(),
            source,
        })
}

/// The live (not soft-deleted) agent with this id.
pub(crate) async fn find_agent<C: ConnectionTrait>(
    db: &C,
    agent_id: &str,
) -> Result<agents::Model> {
    agents::Entity::find_by_id(agent_id)
        .filter(agents::Column::IsDeleted.eq(false))
        .one(db)
        .await?
        .ok_or_else(|| Error::AgentNotFound(agent_id.to_owned()))
}

async fn update_columns<C: ConnectionTrait, const N: usize>(
    db: &C,
    agent_id: &str,
    columns: [(agents::Column, Expr); N],
) -> Result<WebhookConfigView> {
    let mut update = agents::Entity::update_many()
        .filter(agents::Column::Id.eq(agent_id))
        .filter(agents::Column::IsDeleted.eq(false));
    for (column, value) in columns {
        update = update.col_expr(column, value);
    }
    if update.exec(db).await?.rows_affected == 0 {
        return Err(Error::AgentNotFound(agent_id.to_owned()));
    }
    get(db, agent_id).await
}

/// The stored event filter of a loaded agent row; NULL (rows from before the webhook
/// migration) means all events, like `[]`.
pub(crate) fn stored_events(agent: &agents::Model) -> Result<EventFilter> {
    match &agent.webhook_events {
        None => Ok(EventFilter::default()),
        Some(json) => serde_json::from_value(json.clone()).map_err(|source| Error::CorruptEvents {
            agent_id: agent.id.clone(),
            source,
        }),
    }
}

fn view(agent: &agents::Model) -> Result<WebhookConfigView> {
    let events = stored_events(agent)?;
    Ok(WebhookConfigView {
        agent_id: agent.id.clone(),
        webhook_url: agent.webhook_url.clone(),
        has_secret: agent.webhook_secret.is_some(),
        all_events: events.is_all(),
        webhook_events: events.as_slice().to_vec(),
        webhook_enabled: agent.webhook_enabled,
        failing_since: agent.webhook_failing_since.map(|t| t.to_utc()),
        disabled_at: agent.webhook_disabled_at.map(|t| t.to_utc()),
        disabled_reason: agent.webhook_disabled_reason.clone(),
    })
}
