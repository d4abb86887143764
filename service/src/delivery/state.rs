//! The one definition of the delivery states.

use chrono::{DateTime, Utc};
use entity::webhook_deliveries as wd;
use serde::Serialize;

/// Where a delivery is in its life, derived from its columns at an instant `now`.
///
/// | state | `delivered_at` | `next_retry_at` | other |
/// |---|---|---|---|
/// | `Delivered` | set | NULL | |
/// | `Failed` (exhausted) | NULL | NULL | |
/// | `Leased` | NULL | after `now` | an attempt started (`attempt_count > 0`) and has no result yet |
/// | `Pending` | NULL | set | otherwise: never tried, waiting for a retry, or its lease ran out |
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
#[cfg_attr(feature = "axum", derive(utoipa::ToSchema))]
pub enum DeliveryState {
    /// Waiting to be claimed (due now or at `next_retry_at`).
    Pending,
    /// Claimed by a worker whose lease has not run out.
    Leased,
    /// Accepted by the receiver.
    Delivered,
    /// Exhausted: no attempt will be made unless an operator requeues it.
    Failed,
}

impl DeliveryState {
    pub fn of(row: &wd::Model, now: DateTime<Utc>) -> Self {
        match (row.delivered_at, row.next_retry_at) {
            (Some(_), _) => Self::Delivered,
            (None, None) => Self::Failed,
            (None, Some(next)) => {
                let in_flight = row.attempt_count > 0
                    && row.status_code.is_none()
                    && row.error_message.is_none();
                if in_flight && next.to_utc() > now {
                    Self::Leased
                } else {
                    Self::Pending
                }
            }
        }
    }

    /// In lifecycle order.
    pub const ALL: &'static [DeliveryState] = <Self as strum::VariantArray>::VARIANTS;

    /// The lower-case name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}
