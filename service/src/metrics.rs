//! The worker's metrics, through the [`metrics`] facade so that the library picks no exporter
//! (the `agent-webhooks` binary serves them for Prometheus with `worker --metrics-addr`).
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `agent_webhooks_sent_total` | counter | attempts that delivered (2xx) |
//! | `agent_webhooks_failed_total{class}` | counter | attempts that did not deliver, by [`ErrorClass`](crate::delivery::ErrorClass) |
//! | `agent_webhooks_retried_total` | counter | failed attempts scheduled again |
//! | `agent_webhooks_exhausted_total` | counter | deliveries given up (attempts used up or a final answer) |
//! | `agent_webhooks_auto_disabled_total` | counter | webhooks disabled by the failure-run rule |
//! | `agent_webhooks_released_total` | counter | claims given back unsent (their host was busy too long) |
//! | `agent_webhooks_claim_lag_seconds` | histogram | from enqueue to claim, first attempts |
//! | `agent_webhooks_attempt_duration_seconds` | histogram | one attempt, sign to answer |
//! | `agent_webhooks_in_flight` | gauge | requests being sent now by this process |
//! | `agent_webhooks_key_faults_total` | counter | claims given back unsent: the key ring does not open their agent's keys |
//! | `agent_webhooks_unrecorded_total{part}` | counter | attempt rows or outcomes the database refused to store |
//! | `agent_webhooks_claims_total{result}` | counter | claim statements, `result="empty"` when nothing was due (a wake-up or poll that found no work) or `"rows"` |

pub const SENT: &str = "agent_webhooks_sent_total";
pub const FAILED: &str = "agent_webhooks_failed_total";
pub const RETRIED: &str = "agent_webhooks_retried_total";
pub const EXHAUSTED: &str = "agent_webhooks_exhausted_total";
pub const AUTO_DISABLED: &str = "agent_webhooks_auto_disabled_total";
pub const RELEASED: &str = "agent_webhooks_released_total";
pub const CLAIM_LAG: &str = "agent_webhooks_claim_lag_seconds";
pub const ATTEMPT_DURATION: &str = "agent_webhooks_attempt_duration_seconds";
pub const IN_FLIGHT: &str = "agent_webhooks_in_flight";
pub const KEY_FAULTS: &str = "agent_webhooks_key_faults_total";
pub const UNRECORDED: &str = "agent_webhooks_unrecorded_total";
pub const CLAIMS: &str = "agent_webhooks_claims_total";

/// Registers units and descriptions with the installed recorder (call once, after installing).
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(SENT, "attempts that delivered (2xx)");
    describe_counter!(FAILED, "attempts that did not deliver, by error class");
    describe_counter!(RETRIED, "failed attempts scheduled again");
    describe_counter!(EXHAUSTED, "deliveries given up");
    describe_counter!(AUTO_DISABLED, "webhooks disabled after a run of failures");
    describe_counter!(
        RELEASED,
        "claims given back unsent because their host stayed busy"
    );
    describe_histogram!(
        CLAIM_LAG,
        Unit::Seconds,
        "from enqueue to claim, first attempts"
    );
    describe_histogram!(
        ATTEMPT_DURATION,
        Unit::Seconds,
        "one attempt, sign to answer"
    );
    describe_gauge!(IN_FLIGHT, "requests being sent now");
    describe_counter!(
        KEY_FAULTS,
        "claims given back unsent because the key ring does not open their agent's keys"
    );
    describe_counter!(
        UNRECORDED,
        "attempt rows (part=attempt) or outcomes (part=outcome) the database refused to store"
    );
    describe_counter!(
        CLAIMS,
        "claim statements: result=empty when nothing was due, result=rows otherwise"
    );
}
