//! Names of the indexes the migrations create, for code that names them in queries (index
//! hints) or checks (`EXPLAIN`), so a rename cannot leave a stale copy behind.

/// `agents (created_at, id)`: listing agents in creation order (baseline).
pub const AGENTS_CREATED_AT: &str = "ix_agents_created_at";
/// `webhook_deliveries (event_id)`: finding the deliveries of one event.
pub const DELIVERIES_EVENT_ID: &str = "ix_webhook_deliveries_event_id";
/// `webhook_deliveries (agent_id)`: a prefix of [`DELIVERIES_HISTORY`] (and of
/// [`DELIVERIES_AGENT_EVENT`]), made by the webhook migration and dropped as redundant by the
/// delivery-worker migration; its `down` restores it.
pub const DELIVERIES_AGENT_ID: &str = "ix_webhook_deliveries_agent_id";
/// Unique `webhook_deliveries (agent_id, event_id)`: makes `enqueue` idempotent by constraint.
pub const DELIVERIES_AGENT_EVENT: &str = "ux_webhook_deliveries_agent_event";
/// `webhook_deliveries (next_retry_at)`: `claim_due` scans due rows in this order.
pub const DELIVERIES_NEXT_RETRY_AT: &str = "ix_webhook_deliveries_next_retry_at";
/// `webhook_deliveries (agent_id, created_at, id)`: an agent's history, keyset pages newest first.
pub const DELIVERIES_HISTORY: &str = "ix_webhook_deliveries_history";
/// Unique `webhook_delivery_attempts (delivery_id, attempt)`: one row per attempt, and the index
/// that lists a delivery's attempts (and serves the foreign key on MariaDB).
pub const ATTEMPTS_DELIVERY_ATTEMPT: &str = "ux_webhook_delivery_attempts_delivery_attempt";
/// `webhook_previous_secrets (agent_id, expires_at)`: an agent's live previous signing secrets
/// (the sender, on every attempt) and their clean-up; also serves the foreign key on MariaDB.
pub const PREVIOUS_SECRETS_AGENT_EXPIRES: &str = "ix_webhook_previous_secrets_agent_expires";
/// `webhook_deliveries (agent_id, lane, lane_seq)`: `claim_due` looks up the delivery before
/// each ordered one in its lane (one point lookup per candidate).
pub const DELIVERIES_LANE: &str = "ix_webhook_deliveries_lane";
