//! One error for the database-facing operations, so an app maps every failure in one `match`.
//! The value errors it wraps stay their own types for callers that validate without a database.

use sea_orm::{DbErr, RuntimeErr};

use crate::delivery::payload::PayloadError;
use crate::delivery::state::DeliveryState;
use crate::secrets::ed25519::KeyFormatError;
use crate::secrets::secret_box::SecretBoxError;
use crate::secrets::signing::SignError;
use crate::secrets::webhook_secret::{RngError, SecretFormatError};
use crate::webhook::content_filter::ContentFilterError;
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
    /// A content filter that breaks a rule of the filter language.
    #[error("invalid webhook_filter: {0}")]
    Filter(ContentFilterError),
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
    /// The stored content filter does not parse (written by another tool): the enqueue fails
    /// rather than deliver what it was meant to hold back.
    #[error("stored webhook_filter of agent `{agent_id}` is invalid: {source}")]
    CorruptFilter {
        agent_id: String,
        source: ContentFilterError,
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
    /// The database URL names a backend whose cargo feature (`postgres`, `mysql`, `sqlite`) this
    /// build leaves out; the error names the feature.
    #[error(transparent)]
    BackendNotCompiled(#[from] migration::BackendNotCompiled),
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

    /// Whether the key ring cannot open a stored secret: none configured, a key id it lacks,
    /// or other bytes under the id (which a tampered envelope cannot be told apart from). The
    /// operator's to fix, never the receiver's fault.
    pub(crate) fn is_key_ring_fault(&self) -> bool {
        matches!(
            self,
            Error::NoEncryptionKey
                | Error::WrongKey { .. }
                | Error::Sealed {
                    source: SecretBoxError::UnknownKey { .. } | SecretBoxError::Decrypt,
                    ..
                }
        )
    }

    /// Whether the database refused a statement because of what one row holds (a value it
    /// cannot store, a constraint, a trigger), rather than because of its own state (locks,
    /// timeouts, a lost connection): only then can the other rows of a batch be stored alone.
    pub(crate) fn is_row_refusal(&self) -> bool {
        let Error::Db(err) = self else { return false };
        let (DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e))) = err
        else {
            return false;
        };
        let Some(db) = e.as_database_error() else {
            return false;
        };
        let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
        // SQLite: extended result codes of SQLITE_CONSTRAINT (19), SQLITE_MISMATCH (20),
        // SQLITE_TOOBIG (18); a trigger's RAISE(ABORT) is SQLITE_CONSTRAINT_TRIGGER.
        #[cfg(feature = "sqlite")]
        if db
            .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
            .is_some()
        {
            return code
                .parse::<i64>()
                .is_ok_and(|n| matches!(n & 0xff, 18..=20));
        }
        // PostgreSQL and MySQL: data exceptions (22), integrity constraints (23), a raised
        // exception (PL/pgSQL `RAISE`, MySQL `SIGNAL`); MySQL's general HY000 for a value
        // refused by the column (incorrect string, too long, bad datetime).
        code.starts_with("22")
            || code.starts_with("23")
            || code == "P0001"
            || code == "45000"
            || is_mysql_value_refusal(db)
    }
}

/// MySQL's errors for a value the column refuses (bad datetime, incorrect string, too long),
/// which come with the general SQLSTATE HY000.
#[cfg(feature = "mysql")]
fn is_mysql_value_refusal(db: &dyn sea_orm::sqlx::error::DatabaseError) -> bool {
    db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|my| matches!(my.number(), 1292 | 1366 | 1406))
}

#[cfg(not(feature = "mysql"))]
fn is_mysql_value_refusal(_db: &dyn sea_orm::sqlx::error::DatabaseError) -> bool {
    false
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
