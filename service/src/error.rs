//! One error for the database-facing operations, so an app maps every failure in one `match`.
//! The value errors it wraps stay their own types for callers that validate without a database.

use sea_orm::{DbErr, RuntimeErr};

use crate::delivery::payload::PayloadError;
use crate::delivery::state::DeliveryState;
use crate::secrets::ed25519::KeyFormatError;
use crate::secrets::secret_box::SecretBoxError;
use crate::secrets::signing::SignError;
use crate::secrets::webhook_secret::{RngError, SecretFormatError};
use crate::webhook::events::EventFilterError;
use crate::webhook::url_policy::UrlPolicyError;

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a webhook or delivery operation failed.
#[allow(
    missing_docs,
    reason = "fields are named for what they hold; each variant says when it arises"
)]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("agent `{0}` not found")]
    AgentNotFound(String),
    #[error("delivery `{0}` not found")]
    DeliveryNotFound(String),
    #[error("webhook_url {0}")]
    Url(#[from] UrlPolicyError),
    #[error("invalid webhook_events: {0}")]
    Events(#[from] EventFilterError),
    #[error("invalid webhook_secret: {0}")]
    SecretFormat(#[from] SecretFormatError),
    /// Secrets are never stored in plaintext.
    #[error("no encryption key is configured (set WEBHOOK_SECRET_KEYS)")]
    NoEncryptionKey,
    /// A stored secret cannot be sealed or opened (tampered, foreign, or an unknown key).
    #[error("webhook_secret of agent `{agent_id}`: {source}")]
    Sealed {
        agent_id: String,
        source: SecretBoxError,
    },
    /// Raised by [`crate::webhook::reseal_secrets`] before it skips or rewrites that secret, so a
    /// wrong key never passes for a finished rotation.
    #[error(
        "key `{key_id}` does not open the webhook_secret of agent `{agent_id}`: \
         WEBHOOK_SECRET_KEYS holds other bytes under this id, or the stored value was tampered with"
    )]
    WrongKey { key_id: String, agent_id: String },
    /// The stored event filter is not a list of known event names (written by another tool).
    #[error("stored webhook_events of agent `{agent_id}` are invalid: {source}")]
    CorruptEvents {
        agent_id: String,
        source: serde_json::Error,
    },
    #[error("invalid {field}: {rule}")]
    InvalidEvent {
        field: &'static str,
        rule: &'static str,
    },
    /// `max` is [`MAX_PAGE_SIZE`](crate::db::MAX_PAGE_SIZE).
    #[error("invalid limit {limit}: must be from 1 to {max}")]
    InvalidLimit { limit: u64, max: u64 },
    /// A history cursor that this service did not make.
    #[error("invalid cursor")]
    BadCursor,
    /// The lease ran out and another worker claimed the delivery, or it was already reported.
    #[error(
        "stale claim on delivery `{id}` (attempt {attempt}): the delivery was re-claimed or already reported"
    )]
    StaleClaim { id: String, attempt: i32 },
    #[error("delivery `{id}` is {state}, not failed; only failed deliveries can be requeued")]
    NotRequeueable { id: String, state: DeliveryState },
    #[error("agent `{0}` has no webhook secret; refusing to send an unsigned delivery")]
    NoSecret(String),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// `max_secs` is [`SIGNING_GRACE_SECS`](crate::settings::SIGNING_GRACE_SECS).
    #[error("invalid grace period of {got_secs} s: must be from 0 to {max_secs} s (7 days)")]
    InvalidGrace { got_secs: u64, max_secs: u64 },
    /// A concurrent rotation or configuration won the race in
    /// [`rotate_signing_secret`](crate::webhook::signing_secrets::rotate_signing_secret).
    #[error("the signing secret of agent `{0}` changed meanwhile; nothing was rotated, try again")]
    SecretChanged(String),
    /// Written by another tool, or the key ring opened something that was never a key.
    #[error("stored ed25519 key of agent `{agent_id}` is invalid: {source}")]
    CorruptKey {
        agent_id: String,
        source: KeyFormatError,
    },
    #[error(transparent)]
    Rng(#[from] RngError),
    #[error(transparent)]
    Db(#[from] DbErr),
}

impl Error {
    /// A deadlock victim or serialization failure: running it again may succeed. Outside a
    /// transaction, call the function again (a repeated outcome is [`Error::StaleClaim`] if the
    /// first was stored); inside yours, run your whole transaction again. A savepoint can be
    /// rolled back alone on PostgreSQL, not on MySQL (error 1305): drop the transaction.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Db(db) if is_transient(db))
    }

    /// The connection failed rather than a statement: what one row of a batch cannot cause.
    pub(crate) fn is_connection(&self) -> bool {
        use sea_orm::sqlx::Error as Sqlx;
        match self {
            Error::Db(DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) => true,
            Error::Db(
                DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e)),
            ) => matches!(
                e.as_ref(),
                Sqlx::Io(_)
                    | Sqlx::Tls(_)
                    | Sqlx::PoolTimedOut
                    | Sqlx::PoolClosed
                    | Sqlx::WorkerCrashed
                    | Sqlx::Protocol(_)
            ),
            _ => false,
        }
    }
}

/// Serialization failure or deadlock: the statement may succeed when sent again.
pub(crate) fn is_transient(err: &DbErr) -> bool {
    sql_state(err).is_some_and(|code| code == "40001" || code == "40P01")
}

/// The SQLSTATE of a database error, when the server sent one.
pub(crate) fn sql_state(err: &DbErr) -> Option<String> {
    let (DbErr::Query(RuntimeErr::SqlxError(e))
    | DbErr::Exec(RuntimeErr::SqlxError(e))
    | DbErr::Conn(RuntimeErr::SqlxError(e))) = err
    else {
        return None;
    };
    e.as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned())
}
