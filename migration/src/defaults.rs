//! Defaults shared by the migration binary, the ops CLI and the service.

/// Where the migration binary, the ops CLI and the service go when `DATABASE_URL` is not set:
/// a SQLite file in the working directory, created if missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://webhooks.db?mode=rwc";

/// How long connecting (and waiting for a pooled connection) may take, so an unreachable
/// server fails within seconds instead of sqlx's 30 s default.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The largest payload the `webhook_deliveries.payload` column holds on every backend (MariaDB's
/// `mediumblob`), and so the upper bound of the payload-size setting.
pub const MAX_PAYLOAD_COLUMN_BYTES: u32 = 16_777_215;
