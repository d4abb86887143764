//! Signing secrets with a lifecycle: rotation with a grace period, revocation, and an optional
//! Ed25519 key pair, so that replacing an agent's secret does not break its receivers at once.
//!
//! Not to be confused with **sealing-key rotation** ([`crate::webhook::reseal_secrets`], CLI
//! `sealing-keys rotate`): that re-encrypts stored secrets under a new *master* key and changes
//! nothing a receiver sees. *Signing-secret* rotation ([`rotate_signing_secret`], CLI `signing
//! rotate`) replaces the secret deliveries are signed with, which receivers must learn.
//!
//! How it works (modelled on svix-server's endpoint secret rotation, whose `old_signing_keys`
//! keep signing until they expire):
//! * [`rotate_signing_secret`] generates a new `whsec_` secret, makes it the primary
//!   (`agents.webhook_secret`) and keeps the replaced one in `webhook_previous_secrets` until
//!   `now + grace`. The grace period defaults to the settings' `signing_grace`
//!   (`WEBHOOK_SIGNING_GRACE_SECS`, 24 h unless set) and may be 0 to 7 days
//!   ([`crate::settings::SIGNING_GRACE_SECS`]); a longer one is
//!   [`Error::InvalidGrace`]. A grace of 0 keeps nothing: the old secret stops at once. The new
//!   secret is returned once, in [`RotatedSigningSecret`]; it is the only place its plaintext
//!   leaves the service.
//! * Previous secrets are sealed exactly like the primary: the primary's own envelope is moved
//!   over unchanged, so it stays bound to the agent id (a copy in another agent's row does not
//!   open) and under the key id it was sealed with; [`crate::webhook::reseal_secrets`] re-seals
//!   them with the rest.
//! * While a previous secret is live, every delivery carries one `v1` signature per live secret
//!   (primary first, then previous ones, newest first), space separated as the Standard Webhooks
//!   specification allows: a receiver holding either secret verifies it.
//! * At most [`MAX_PREVIOUS_SECRETS`] previous secrets are kept; a rotation beyond that drops
//!   the ones that expire first. Expired ones are never used to sign, are left out of
//!   [`signing_keys`], and are deleted by the next rotation or revocation of the agent, and by
//!   [`prune_expired`] (CLI `signing prune`) for all agents.
//! * [`revoke_previous`] deletes every previous secret of an agent at once, for a leaked secret.
//! * [`crate::webhook::configure`] with a secret replaces the primary at once, without a grace
//!   period (the caller chose the secret and hands it out itself); previous secrets it finds
//!   keep their expiry. [`crate::webhook::clear`] deletes previous secrets and the Ed25519 key
//!   with the primary.
//! * Ed25519: [`generate_ed25519_key`] gives the agent a key pair; from then on every delivery
//!   also carries a `v1a` signature that receivers verify with the `whpk_` public key (readable
//!   in [`signing_keys`]) and [`crate::secrets::signing::verify_v1a`]. The `whsk_` private key is sealed
//!   like a secret (`agents.webhook_ed25519_secret_key`). A new key pair replaces the old one at
//!   once (no grace period); [`remove_ed25519_key`] stops `v1a` signatures.
//! * Key ids: `hs_…` for secrets ([`signing::secret_key_id`]), `ed_…` for Ed25519 public keys
//!   ([`PublicKey::key_id`]); they name a key without revealing it.
//!
//! Every function works inside a caller's transaction. [`rotate_signing_secret`] writes twice
//! (the new primary, then the previous row); run it in a transaction to make the pair atomic,
//! as the CLI does. Its primary update only applies if the row still holds the secret that was
//! read, so two concurrent rotations cannot both keep a "previous" secret that was never
//! delivered: the second fails with [`Error::SecretChanged`].

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

use crate::agent::{AgentWebhook, agents_by_id, find_agent, live};
use crate::db::{at, stamp};
use crate::error::{Error, Result};
use crate::secrets::ed25519::{PublicKey, SecretKey};
use crate::secrets::secret_box::{KeyRing, SecretBoxError};
use crate::secrets::signing;
use crate::secrets::webhook_secret::WebhookSecret;
use crate::settings::{SIGNING_GRACE_SECS, WebhookSettings};
use crate::webhook::{open_secret, seal_text};

/// How many previous secrets an agent keeps at most (as svix-server), so that repeated
/// rotations cannot make every delivery carry an unbounded signature header.
pub const MAX_PREVIOUS_SECRETS: usize = 10;

/// Which algorithm a key signs with; named in views and the CLI as serialized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, strum::Display, strum::IntoStaticStr)]
pub enum SigningAlgorithm {
    /// HMAC-SHA256 with a shared secret: `v1` signatures.
    #[serde(rename = "hmac-sha256")]
    #[strum(serialize = "hmac-sha256")]
    HmacSha256,
    /// Ed25519 with a key pair: `v1a` signatures.
    #[serde(rename = "ed25519")]
    #[strum(serialize = "ed25519")]
    Ed25519,
}

impl SigningAlgorithm {
    /// The name used in views and the CLI.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Whether a key is the one new receivers should use, or one kept for a grace period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, strum::Display, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum KeyRole {
    /// The current secret or key pair.
    Primary,
    /// A replaced secret that still signs until `expires_at`.
    Previous,
}

/// One key an agent's deliveries are signed with, as an API may show it: never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SigningKeyView {
    /// `hs_…` or `ed_…`: names the key without revealing it.
    pub key_id: String,
    /// What the key signs with.
    pub algorithm: SigningAlgorithm,
    /// Primary or previous.
    pub role: KeyRole,
    /// When a previous secret stops signing; `None` for primary keys.
    pub expires_at: Option<DateTime<Utc>>,
    /// The `whpk_` public key of an Ed25519 key pair (not secret); `None` for secrets.
    pub public_key: Option<String>,
}

/// Every live key of an agent: primary secret, previous secrets newest first, Ed25519 key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SigningKeysView {
    /// The agent.
    pub agent_id: String,
    /// The keys; empty when the agent has none.
    pub keys: Vec<SigningKeyView>,
}

/// What [`rotate_signing_secret`] did. Holds the new secret: not serializable, `Debug`
/// redacts it.
#[derive(Debug)]
pub struct RotatedSigningSecret {
    /// The new primary secret: show it to the agent's owner once; it is not stored in
    /// plaintext anywhere.
    pub secret: WebhookSecret,
    /// The new secret's key id.
    pub key_id: String,
    /// The replaced secret, kept until its `expires_at`; `None` when the agent had no secret or
    /// the grace period was zero.
    pub previous: Option<SigningKeyView>,
}

/// The secrets and key an agent's deliveries are signed with at one instant.
pub(crate) struct LiveKeys {
    /// The primary secret first, then the live previous ones, newest first.
    pub secrets: Vec<WebhookSecret>,
    /// The Ed25519 key, when the agent has one.
    pub ed25519: Option<SecretKey>,
}

/// Replaces the agent's signing secret with a new generated one; the replaced secret keeps
/// signing for `grace` (default: the settings' `signing_grace`). See the module documentation.
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

/// Deletes every previous secret of the agent at once, so that a leaked one stops verifying
/// with the next delivery; returns how many were deleted (expired ones included).
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

/// The agent's live keys (key ids, algorithms, expiries, the Ed25519 public key), never a
/// secret. Opens the primary secret to name it, so it needs the key ring when one is set.
pub async fn signing_keys<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_id: &str,
    now: DateTime<Utc>,
) -> Result<SigningKeysView> {
    let agent = find_agent(db, agent_id).await?;
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
    let previous = live_previous(db, &[agent_id], now).await?;
    for row in previous.into_values().flatten() {
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

/// Gives the agent a new Ed25519 key pair (replacing any it had, at once): from now on its
/// deliveries also carry a `v1a` signature. Returns the key with its `whpk_` public key.
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

/// Removes the agent's Ed25519 key pair: its deliveries carry no `v1a` signature any more.
pub async fn remove_ed25519_key<C: ConnectionTrait>(db: &C, agent_id: &str) -> Result<()> {
    set_ed25519_columns(db, agent_id, None, None).await
}

/// Deletes expired previous secrets of every agent, `batch`-free (each agent keeps at most
/// [`MAX_PREVIOUS_SECRETS`]); returns how many were deleted. Expired secrets never sign, so
/// this only tidies; run it with the delivery prune.
pub async fn prune_expired<C: ConnectionTrait>(db: &C, now: DateTime<Utc>) -> Result<u64> {
    let backend = db.get_database_backend();
    Ok(previous::Entity::delete_many()
        .filter(previous::Column::ExpiresAt.lte(stamp(backend, now)))
        .exec(db)
        .await?
        .rows_affected)
}

/// What the sender signs each of `agent_ids`' deliveries with at `now`, by agent id, in two
/// statements whatever the number of agents (the agents' rows, then their live previous
/// secrets), so a worker reads the keys of a claimed batch once. An agent that does not exist
/// or is soft-deleted maps to [`Error::AgentNotFound`], one whose keys do not open to that
/// error: neither stops the others.
pub(crate) async fn live_keys<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_ids: &[&str],
    now: DateTime<Utc>,
) -> Result<HashMap<String, Result<LiveKeys>>> {
    let mut agent_ids = agent_ids.to_vec();
    agent_ids.sort_unstable();
    agent_ids.dedup();
    let agents = agents_by_id(db, &agent_ids).await?;
    let live = |id: &str| agents.get(id).filter(|agent| agent.is_live());
    let with_primary: Vec<&str> = agent_ids
        .iter()
        .copied()
        .filter(|id| live(id).is_some_and(|agent| agent.webhook_secret.is_some()))
        .collect();
    let mut previous = live_previous(db, &with_primary, now).await?;
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

/// Opens the agent's primary secret, its live `previous` secrets and its Ed25519 key.
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

/// Checks, before a worker starts, that the settings' key ring opens the sealed secrets it will
/// need: there is a ring, every key id named by a stored envelope (primary secrets, Ed25519
/// keys, previous secrets) is in it, and one envelope per key id opens. A worker that could
/// not open them would otherwise send nothing and blame every receiver. Returns how many key
/// ids were checked.
///
/// One grouped scan per envelope column, then one read per key id: a few seconds on millions
/// of agents, once per start.
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
            let sealed_err = |source| Error::Sealed {
                agent_id: agent_id.clone(),
                source,
            };
            let key = KeyRing::key_id_of(&sealed).map_err(sealed_err)?.to_owned();
            match keys.open(&sealed, &agent_id) {
                Ok(_) => {}
                Err(SecretBoxError::Decrypt) => {
                    return Err(Error::WrongKey {
                        key_id: key,
                        agent_id,
                    });
                }
                Err(source) => return Err(sealed_err(source)),
            }
            checked.insert(key);
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

/// The previous secrets of `agent_ids` that have not expired at `now`, by agent, newest first,
/// at most [`MAX_PREVIOUS_SECRETS`] each; agents without any are absent.
async fn live_previous<C: ConnectionTrait>(
    db: &C,
    agent_ids: &[&str],
    now: DateTime<Utc>,
) -> Result<HashMap<String, Vec<previous::Model>>> {
    let backend = db.get_database_backend();
    let mut by_agent: HashMap<String, Vec<previous::Model>> = HashMap::new();
    for chunk in agent_ids.chunks(crate::db::MAX_PAGE_SIZE as usize) {
        let rows = previous::Entity::find()
            .filter(previous::Column::AgentId.is_in(chunk.iter().copied()))
            .filter(previous::Column::ExpiresAt.gt(stamp(backend, now)))
            .order_by_desc(previous::Column::ExpiresAt)
            .order_by_desc(previous::Column::Id)
            .all(db)
            .await?;
        for row in rows {
            let rows = by_agent.entry(row.agent_id.clone()).or_default();
            if rows.len() < MAX_PREVIOUS_SECRETS {
                rows.push(row);
            }
        }
    }
    Ok(by_agent)
}

/// Deletes the agent's expired previous secrets and all but the [`MAX_PREVIOUS_SECRETS`] that
/// expire last.
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
