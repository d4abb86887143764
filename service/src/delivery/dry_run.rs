//! The dry run of an enqueue: what [`enqueue`] would do with an event, and why, without
//! writing anything. For operators and users checking a content filter against a real payload.

use super::*;

/// What an enqueue of one event would do, and why ([`would_deliver`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "axum", derive(utoipa::ToSchema))]
pub struct Verdict {
    /// Whether the event would be enqueued for delivery.
    pub deliver: bool,
    /// Why: `would_deliver`, or the rule that holds it back.
    pub reason: VerdictReason,
    /// For `filtered`: the first top-level key of the content filter (in key order) that the
    /// payload does not satisfy, e.g. `data.run.status` or `$or`.
    pub failed_clause: Option<String>,
}

/// The reason of a [`Verdict`]: [`SkipReason`] and the two cases an enqueue does not skip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[cfg_attr(feature = "axum", derive(utoipa::ToSchema))]
pub enum VerdictReason {
    /// Every rule passes: the event would be enqueued.
    WouldDeliver,
    /// No agent with this id (an enqueue fails with `AgentNotFound`).
    AgentNotFound,
    /// [`SkipReason::AgentDeleted`].
    AgentDeleted,
    /// [`SkipReason::Disabled`].
    Disabled,
    /// [`SkipReason::NoUrl`].
    NoUrl,
    /// [`SkipReason::NotWanted`]: the event-type rule.
    NotWanted,
    /// [`SkipReason::Filtered`]: the content filter.
    Filtered,
}

impl From<SkipReason> for VerdictReason {
    fn from(reason: SkipReason) -> Self {
        match reason {
            SkipReason::Disabled => VerdictReason::Disabled,
            SkipReason::NoUrl => VerdictReason::NoUrl,
            SkipReason::NotWanted => VerdictReason::NotWanted,
            SkipReason::AgentDeleted => VerdictReason::AgentDeleted,
            SkipReason::Filtered => VerdictReason::Filtered,
        }
    }
}

impl VerdictReason {
    /// The snake_case name, as serialized.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Whether an event of `event_type` with `payload` would be delivered to the agent's webhook:
/// the rules of [`enqueue`] (agent, enabled, URL, event types, content filter), read in one
/// `SELECT`, writing nothing. A repeat of an event id is not considered. An invalid
/// `event_type` is [`Error::InvalidEvent`], a stored filter that does not parse
/// [`Error::CorruptFilter`], as for [`enqueue`].
pub async fn would_deliver<C: ConnectionTrait>(
    db: &C,
    agent_id: &str,
    event_type: &str,
    payload: &serde_json::Value,
) -> Result<Verdict> {
    check_event_field("event_type", event_type)?;
    let verdict = |reason: VerdictReason, failed_clause: Option<String>| Verdict {
        deliver: reason == VerdictReason::WouldDeliver,
        reason,
        failed_clause,
    };
    let agent = match crate::agent::find_any_agent(db, agent_id).await {
        Ok(agent) => agent,
        Err(Error::AgentNotFound(_)) => return Ok(verdict(VerdictReason::AgentNotFound, None)),
        Err(e) => return Err(e),
    };
    let bytes = serde_json::to_vec(payload).map_err(PayloadError::NotJson)?;
    match destination(&agent, event_type, &bytes)? {
        Ok(_) => Ok(verdict(VerdictReason::WouldDeliver, None)),
        Err(SkipReason::Filtered) => {
            let clause = crate::webhook::stored_filter(&agent)?
                .and_then(|filter| filter.explain(payload))
                .filter(|clause| !clause.is_empty());
            Ok(verdict(VerdictReason::Filtered, clause))
        }
        Err(reason) => Ok(verdict(reason.into(), None)),
    }
}
