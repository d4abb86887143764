//! Signing secrets with a lifecycle (rotation with a grace period, revocation, an optional
//! Ed25519 key pair), so replacing a secret does not break receivers at once. Not
//! **sealing-key rotation** ([`crate::webhook::reseal_secrets`]), which receivers never see.
//!
//! How it works (modelled on svix-server's `old_signing_keys`):
//! * [`rotate_signing_secret`] makes a new `whsec_` secret the primary and keeps the replaced
//!   one in `webhook_previous_secrets` until `now + grace` (default and limits: the settings'
//!   `WEBHOOK_SIGNING_GRACE_SECS`). The new secret is returned once; it leaves the service
//!   nowhere else.
//! * The primary's envelope moves over unchanged, so it stays bound to the agent id.
//! * Every live secret signs (primary first, then previous, newest first), so a receiver
//!   holding either verifies. At most [`MAX_PREVIOUS_SECRETS`] are kept; expired ones never
//!   sign and are deleted by the next rotation or revocation, or by [`prune_expired`].
//! * [`crate::webhook::configure`] with a secret replaces the primary without a grace period:
//!   the caller chose the secret and hands it out itself.
//! * An Ed25519 key pair adds a `v1a` signature; a new one replaces the old at once.
//!
//! [`rotate_signing_secret`] writes twice: run it in a transaction to make the pair atomic, as
//! the CLI does. Its update applies only if the row still holds the secret read, so two
//! concurrent rotations cannot both keep a "previous" secret that was never delivered.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use entity::agents;
use entity::webhook_previous_secrets as previous;
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::agent::{AgentWebhook, find_agent, live};
use crate::db::{at, stamp};
use crate::error::{Error, Result};
use crate::secrets::ed25519::{PublicKey, SecretKey};
use crate::secrets::secret_box::KeyRing;
use crate::secrets::signing;
use crate::secrets::webhook_secret::WebhookSecret;
use crate::settings::{SIGNING_GRACE_SECS, WebhookSettings};
use crate::webhook::{open_envelope, open_secret, seal_text};

/// As svix-server, so repeated rotations cannot grow the signature header without bound.
pub const MAX_PREVIOUS_SECRETS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, strum::Display, strum::IntoStaticStr)]
pub enum SigningAlgorithm {
    /// `v1` signatures.
    #[serde(rename = "hmac-sha256")]
    #[strum(serialize = "hmac-sha256")]
    HmacSha256,
    /// `v1a` signatures.
    #[serde(rename = "ed25519")]
    #[strum(serialize = "ed25519")]
    Ed25519,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, strum::Display, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum KeyRole {
    Primary,
    /// Still signs until `expires_at`.
    Previous,
}

/// As an API may show it: never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SigningKeyView {
    /// `hs_…` ([`signing::secret_key_id`]) or `ed_…` ([`PublicKey::key_id`]).
    pub key_id: String,
    pub algorithm: SigningAlgorithm,
    pub role: KeyRole,
    pub expires_at: Option<DateTime<Utc>>,
    /// The `whpk_` public key; `None` for secrets.
    pub public_key: Option<String>,
}

/// Primary secret, previous secrets newest first, Ed25519 key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SigningKeysView {
    pub agent_id: String,
    pub keys: Vec<SigningKeyView>,
}

/// Holds the new secret: not serializable, `Debug` redacts it.
#[derive(Debug)]
pub struct RotatedSigningSecret {
    /// Show it to the owner once; it is stored in plaintext nowhere.
    pub secret: WebhookSecret,
    pub key_id: String,
    /// `None` when the agent had no secret or the grace period was zero.
    pub previous: Option<SigningKeyView>,
}

pub(crate) struct LiveKeys {
    /// The primary first, then live previous ones, newest first.
    pub secrets: Vec<WebhookSecret>,
    pub ed25519: Option<SecretKey>,
}

/// See the [module documentation](self).
pub async fn rotate_signing_secret<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_id: &str,
    grace: Option<Duration>,
    now: DateTime<Utc>,
) -> Result<RotatedSigningSecret> {
    let grace = grace.unwrap_or(settings.signing_grace);
    let max = Duration::from_secs((*SIGNING_GRACE_SECS.end()).into());
    if grace > max {
        return Err(Error::InvalidGrace {
            got_secs: grace.as_secs(),
            max_secs: max.as_secs(),
        });
    }
    let expires_at = TimeDelta::from_std(grace)
        .ok()
        .and_then(|grace| now.checked_add_signed(grace))
        .ok_or(Error::InvalidGrace {
            got_secs: grace.as_secs(),
            max_secs: max.as_secs(),
        })?;
    let keys = settings.keys.as_ref().ok_or(Error::NoEncryptionKey)?;
    let agent = find_agent(db, agent_id).await?;
    // Opened first: a secret that does not open must not be kept as if it could still sign.
    let old = open_secret(Some(keys), &agent)?;

    let secret = WebhookSecret::generate()?;
    let sealed = seal_text(keys, agent_id, secret.expose())?;
    let mut update = agents::Entity::update_many()
        .col_expr(agents::Column::WebhookSecret, Expr::value(Some(sealed)))
        .filter(agents::Column::Id.eq(agent_id))
        .filter(live());
    update = match &agent.webhook_secret {
        Some(old_sealed) => update.filter(agents::Column::WebhookSecret.eq(old_sealed.as_str())),
        None => update.filter(agents::Column::WebhookSecret.is_null()),
    };
    if update.exec(db).await?.rows_affected != 1 {
        return Err(Error::SecretChanged(agent_id.to_owned()));
    }

    let mut kept = None;
    if let (Some(old), Some(old_sealed)) = (old, agent.webhook_secret)
        && !grace.is_zero()
    {
        let key_id = signing::secret_key_id(&old);
        let backend = db.get_database_backend();
        let mut insert = Query::insert();
        insert
            .into_table(previous::Entity)
            .columns([
                previous::Column::AgentId,
                previous::Column::KeyId,
                previous::Column::SealedSecret,
                previous::Column::ExpiresAt,
                previous::Column::CreatedAt,
            ])
            .values_panic([
                agent_id.into(),
                key_id.clone().into(),
                old_sealed.into(),
                stamp(backend, expires_at).into(),
                stamp(backend, now).into(),
            ]);
        db.execute(&insert).await?;
        kept = Some(SigningKeyView {
            key_id,
            algorithm: SigningAlgorithm::HmacSha256,
            role: KeyRole::Previous,
            expires_at: Some(at(expires_at).to_utc()),
            public_key: None,
        });
    }
    tidy(db, agent_id, now).await?;
    let key_id = signing::secret_key_id(&secret);
    tracing::info!(agent = %agent_id, key_id, grace_secs = grace.as_secs(), "signing secret rotated");
    Ok(RotatedSigningSecret {
        secret,
        key_id,
        previous: kept,
    })
}

/// So a leaked secret stops verifying with the next delivery; counts expired ones too.
pub async fn revoke_previous<C: ConnectionTrait>(db: &C, agent_id: &str) -> Result<u64> {
    find_agent(db, agent_id).await?;
    let deleted = previous::Entity::delete_many()
        .filter(previous::Column::AgentId.eq(agent_id))
        .exec(db)
        .await?
        .rows_affected;
    tracing::info!(agent = %agent_id, deleted, "previous signing secrets revoked");
    Ok(deleted)
}

/// Never a secret, but opens the primary to name it, so it needs the key ring.
pub async fn signing_keys<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_id: &str,
    now: DateTime<Utc>,
) -> Result<SigningKeysView> {
    let (mut agents, mut previous) = agents_and_previous(db, &[agent_id], now).await?;
    let agent = agents
        .remove(agent_id)
        .filter(AgentWebhook::is_live)
        .ok_or_else(|| Error::AgentNotFound(agent_id.to_owned()))?;
    let mut keys = Vec::new();
    if let Some(primary) = open_secret(settings.keys.as_ref(), &agent)? {
        keys.push(SigningKeyView {
            key_id: signing::secret_key_id(&primary),
            algorithm: SigningAlgorithm::HmacSha256,
            role: KeyRole::Primary,
            expires_at: None,
            public_key: None,
        });
    }
    for row in previous.remove(agent_id).unwrap_or_default() {
        keys.push(SigningKeyView {
            key_id: row.key_id,
            algorithm: SigningAlgorithm::HmacSha256,
            role: KeyRole::Previous,
            expires_at: Some(row.expires_at.to_utc()),
            public_key: None,
        });
    }
    if let Some(public) = &agent.webhook_ed25519_public_key {
        keys.push(ed25519_view(&stored_public_key(&agent.id, public)?));
    }
    Ok(SigningKeysView {
        agent_id: agent.id,
        keys,
    })
}

/// Replaces any key pair the agent had, at once.
pub async fn generate_ed25519_key<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_id: &str,
) -> Result<SigningKeyView> {
    let keys = settings.keys.as_ref().ok_or(Error::NoEncryptionKey)?;
    find_agent(db, agent_id).await?;
    let secret = SecretKey::generate()?;
    let public = secret.public_key();
    let sealed = seal_text(keys, agent_id, secret.expose().expose_secret())?;
    set_ed25519_columns(db, agent_id, Some(sealed), Some(public.to_string())).await?;
    tracing::info!(agent = %agent_id, key_id = public.key_id(), "ed25519 key generated");
    Ok(ed25519_view(&public))
}

pub async fn remove_ed25519_key<C: ConnectionTrait>(db: &C, agent_id: &str) -> Result<()> {
    set_ed25519_columns(db, agent_id, None, None).await
}

/// Expired secrets never sign, so this only tidies; run it with the delivery prune.
pub async fn prune_expired<C: ConnectionTrait>(db: &C, now: DateTime<Utc>) -> Result<u64> {
    let backend = db.get_database_backend();
    Ok(previous::Entity::delete_many()
        .filter(previous::Column::ExpiresAt.lte(stamp(backend, now)))
        .exec(db)
        .await?
        .rows_affected)
}

/// One statement for up to [`MAX_PAGE_SIZE`](crate::db::MAX_PAGE_SIZE) agents, so a worker
/// reads a claimed batch's keys once. An agent's error does not stop the others.
pub(crate) async fn live_keys<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_ids: &[&str],
    now: DateTime<Utc>,
) -> Result<HashMap<String, Result<LiveKeys>>> {
    let mut agent_ids = agent_ids.to_vec();
    agent_ids.sort_unstable();
    agent_ids.dedup();
    let (agents, mut previous) = agents_and_previous(db, &agent_ids, now).await?;
    let live = |id: &str| agents.get(id).filter(|agent| agent.is_live());
    Ok(agent_ids
        .iter()
        .map(|&id| {
            let keys = match live(id) {
                Some(agent) => open_live_keys(settings, agent, previous.remove(id)),
                None => Err(Error::AgentNotFound(id.to_owned())),
            };
            (id.to_owned(), keys)
        })
        .collect())
}

fn open_live_keys(
    settings: &WebhookSettings,
    agent: &AgentWebhook,
    previous: Option<Vec<previous::Model>>,
) -> Result<LiveKeys> {
    let agent_id = agent.id.as_str();
    let mut secrets = Vec::new();
    if let Some(primary) = open_secret(settings.keys.as_ref(), agent)? {
        secrets.push(primary);
        let rows = previous.unwrap_or_default();
        if !rows.is_empty() {
            let keys = settings.keys.as_ref().ok_or(Error::NoEncryptionKey)?;
            for row in rows {
                secrets.push(open_previous(keys, agent_id, &row.sealed_secret)?);
            }
        }
    }
    let ed25519 = match &agent.webhook_ed25519_secret_key {
        Some(sealed) => {
            let keys = settings.keys.as_ref().ok_or(Error::NoEncryptionKey)?;
            let plain = keys
                .open(sealed, agent_id)
                .map_err(|source| Error::Sealed {
                    agent_id: agent_id.to_owned(),
                    source,
                })?;
            Some(
                SecretKey::parse(plain.expose_secret()).map_err(|source| Error::CorruptKey {
                    agent_id: agent_id.to_owned(),
                    source,
                })?,
            )
        }
        None => None,
    };
    Ok(LiveKeys { secrets, ed25519 })
}

/// Before a worker starts: every key id a stored envelope names is in the ring and opens one
/// of them, since a worker that cannot open secrets sends nothing and blames every receiver.
/// Returns how many key ids were checked; a few seconds on millions of agents.
pub async fn check_key_ring<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
) -> Result<usize> {
    let keys = settings.keys.as_ref().ok_or(Error::NoEncryptionKey)?;
    let backend = db.get_database_backend();
    // The `<key id>` of `v1.<key id>.<payload>` (see `secret_box`), in SQL.
    let key_id = |column: &str| match backend {
        DbBackend::Postgres => format!("split_part({column}, '.', 2)"),
        // BINARY: the column's collation may ignore case, and `k1` and `K1` are two keys.
        DbBackend::MySql => {
            format!("BINARY SUBSTRING_INDEX(SUBSTRING_INDEX({column}, '.', 2), '.', -1)")
        }
        _ => format!("substr({column}, 4, instr(substr({column}, 4), '.') - 1)"),
    };
    let mut checked = std::collections::HashSet::new();
    for (table, id, context, column) in [
        ("agents", "id", "id", "webhook_secret"),
        ("agents", "id", "id", "webhook_ed25519_secret_key"),
        (
            "webhook_previous_secrets",
            "id",
            "agent_id",
            "sealed_secret",
        ),
    ] {
        // One envelope per key id: the row with the smallest id, read whole below.
        let sql = format!(
            "SELECT {context}, {column} FROM {table} WHERE {column} IS NOT NULL AND {id} IN \
             (SELECT MIN({id}) FROM {table} WHERE {column} IS NOT NULL GROUP BY {kid})",
            kid = key_id(column)
        );
        let rows = db
            .query_all_raw(sea_orm::Statement::from_string(backend, sql))
            .await?;
        for row in rows {
            let agent_id: String = row.try_get_by_index(0)?;
            let sealed: String = row.try_get_by_index(1)?;
            open_envelope(keys, &sealed, &agent_id)?;
            // It opened, so it is an envelope and names its key.
            checked.insert(KeyRing::key_id_of(&sealed).unwrap_or_default().to_owned());
        }
    }
    Ok(checked.len())
}

/// Opens a previous secret sealed for `agent_id`; a copy from another agent's row fails.
pub fn open_previous(keys: &KeyRing, agent_id: &str, sealed: &str) -> Result<WebhookSecret> {
    let plain = keys
        .open(sealed, agent_id)
        .map_err(|source| Error::Sealed {
            agent_id: agent_id.to_owned(),
            source,
        })?;
    WebhookSecret::parse(plain).map_err(Error::SecretFormat)
}

/// The agents among `agent_ids` (soft-deleted or not) and their unexpired previous secrets,
/// newest first (agents without any are absent from the second map): one `SELECT … LEFT JOIN`
/// per [`MAX_PAGE_SIZE`](crate::db::MAX_PAGE_SIZE) agents, so a claimed batch's keys cost one
/// round trip.
async fn agents_and_previous<C: ConnectionTrait>(
    db: &C,
    agent_ids: &[&str],
    now: DateTime<Utc>,
) -> Result<(
    HashMap<String, AgentWebhook>,
    HashMap<String, Vec<previous::Model>>,
)> {
    use sea_orm::sea_query::{Alias, ExprTrait, JoinType, Order};
    use sea_orm::{FromQueryResult, IdenStatic, Iterable, PartialModelTrait, QueryTrait};
    const PREVIOUS: &str = "previous_";
    let backend = db.get_database_backend();
    let (mut agents, mut by_agent) = (HashMap::new(), HashMap::<_, Vec<previous::Model>>::new());
    for chunk in agent_ids.chunks(crate::db::MAX_PAGE_SIZE as usize) {
        let mut select = AgentWebhook::select_cols(
            agents::Entity::find()
                .select_only()
                .filter(agents::Column::Id.is_in(chunk.iter().copied())),
        )
        .into_query();
        for column in previous::Column::iter() {
            select.expr_as(
                Expr::col((previous::Entity, column)),
                Alias::new(format!("{PREVIOUS}{}", column.as_str())),
            );
        }
        select
            .join(
                JoinType::LeftJoin,
                previous::Entity,
                Expr::col((previous::Entity, previous::Column::AgentId))
                    .equals((agents::Entity, agents::Column::Id))
                    .and(
                        Expr::col((previous::Entity, previous::Column::ExpiresAt))
                            .gt(stamp(backend, now)),
                    ),
            )
            .order_by((previous::Entity, previous::Column::ExpiresAt), Order::Desc)
            .order_by((previous::Entity, previous::Column::Id), Order::Desc);
        for row in db.query_all_raw(backend.build(&select)).await? {
            let agent = AgentWebhook::from_query_result(&row, "")?;
            if let Some(secret) = previous::Model::from_query_result_optional(&row, PREVIOUS)? {
                let rows = by_agent.entry(agent.id.clone()).or_default();
                if rows.len() < MAX_PREVIOUS_SECRETS {
                    rows.push(secret);
                }
            }
            agents.entry(agent.id.clone()).or_insert(agent);
        }
    }
    Ok((agents, by_agent))
}

/// Keeps the [`MAX_PREVIOUS_SECRETS`] unexpired ones that expire last.
async fn tidy<C: ConnectionTrait>(db: &C, agent_id: &str, now: DateTime<Utc>) -> Result<()> {
    let backend = db.get_database_backend();
    previous::Entity::delete_many()
        .filter(previous::Column::AgentId.eq(agent_id))
        .filter(previous::Column::ExpiresAt.lte(stamp(backend, now)))
        .exec(db)
        .await?;
    let surplus: Vec<i64> = previous::Entity::find()
        .select_only()
        .column(previous::Column::Id)
        .filter(previous::Column::AgentId.eq(agent_id))
        .order_by_desc(previous::Column::ExpiresAt)
        .order_by_desc(previous::Column::Id)
        .offset(MAX_PREVIOUS_SECRETS as u64)
        .limit(u64::from(u32::MAX))
        .into_tuple()
        .all(db)
        .await?;
    if !surplus.is_empty() {
        previous::Entity::delete_many()
            .filter(previous::Column::Id.is_in(surplus))
            .exec(db)
            .await?;
    }
    Ok(())
}

async fn set_ed25519_columns<C: ConnectionTrait>(
    db: &C,
    agent_id: &str,
    sealed: Option<String>,
    public: Option<String>,
) -> Result<()> {
    let updated = agents::Entity::update_many()
        .col_expr(agents::Column::WebhookEd25519SecretKey, Expr::value(sealed))
        .col_expr(agents::Column::WebhookEd25519PublicKey, Expr::value(public))
        .filter(agents::Column::Id.eq(agent_id))
        .filter(live())
        .exec(db)
        .await?;
    if updated.rows_affected == 0 {
        return Err(Error::AgentNotFound(agent_id.to_owned()));
    }
    Ok(())
}

fn stored_public_key(agent_id: &str, text: &str) -> Result<PublicKey> {
    PublicKey::parse(text).map_err(|source| Error::CorruptKey {
        agent_id: agent_id.to_owned(),
        source,
    })
}

fn ed25519_view(public: &PublicKey) -> SigningKeyView {
    SigningKeyView {
        key_id: public.key_id(),
        algorithm: SigningAlgorithm::Ed25519,
        role: KeyRole::Primary,
        expires_at: None,
        public_key: Some(public.to_string()),
    }
}
