//! When to try a failed delivery again, and when to stop.
//!
//! The default schedule is Svix's, whose senders and receivers are well understood: eight
//! attempts spread over about 28 hours, so a receiver that is down for a day still gets every
//! event.
//!
//! | attempt | after the previous one (± 10 % jitter) | Svix |
//! |---|---|---|
//! | 1 | at once (enqueue) | immediately |
//! | 2 | 5 s | 5 s |
//! | 3 | 5 min | 5 min |
//! | 4 | 30 min | 30 min |
//! | 5 | 2 h | 2 h |
//! | 6 | 5 h | 5 h |
//! | 7 | 10 h | 10 h |
//! | 8 | 10 h | 10 h |
//!
//! Outcomes: 2xx is delivered. 5xx, 408 (timeout), 429 (rate limited), timeouts and connection
//! errors are retried. Every other status is final: other 4xx will not get better by waiting,
//! and 1xx/3xx mean the receiver is misconfigured (redirects are not followed, as following
//! them would bypass the URL policy). A `Retry-After` longer than the scheduled delay is
//! honoured up to [`RetryPolicy::max_retry_after`] (1 h by default), so a rate-limited
//! receiver is not hammered, but cannot park a delivery for days; a shorter one is ignored.
//! Jitter spreads retries of many deliveries that failed together; it never applies to
//! `Retry-After`.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// What one delivery attempt produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The receiver answered with an HTTP status.
    Status {
        /// The status code.
        code: u16,
        /// The parsed `Retry-After` header, if any (see [`RetryAfter::parse`]).
        retry_after: Option<RetryAfter>,
    },
    /// No response within the sender's timeout.
    Timeout,
    /// DNS, connect or TLS failure, with its description.
    Connection(String),
}

/// A `Retry-After` header value, as a delay from the moment the response arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Parses delta-seconds (`120`) or an HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`) relative
    /// to `now`. Anything else, or a date in the past, is `None`.
    pub fn parse(value: &str, now: DateTime<Utc>) -> Option<RetryAfter> {
        let value = value.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(RetryAfter(Duration::from_secs(seconds)));
        }
        let at = DateTime::parse_from_rfc2822(value).ok()?.to_utc();
        (at - now).to_std().ok().map(RetryAfter)
    }
}

/// How an outcome counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classification {
    /// The receiver accepted the delivery.
    Success,
    /// Worth trying again later.
    Retryable,
    /// Trying again will not help.
    Final,
}

/// Classifies an attempt's outcome (see the module documentation).
pub fn classify(outcome: &AttemptOutcome) -> Classification {
    match outcome {
        AttemptOutcome::Status { code, .. } => match code {
            200..=299 => Classification::Success,
            408 | 429 | 500..=599 => Classification::Retryable,
            _ => Classification::Final,
        },
        AttemptOutcome::Timeout | AttemptOutcome::Connection(_) => Classification::Retryable,
    }
}

/// What to do after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It was delivered.
    Delivered,
    /// Try again at this instant.
    RetryAt(DateTime<Utc>),
    /// Stop: the delivery is exhausted.
    GiveUp(GiveUpReason),
}

/// Why a delivery is exhausted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The receiver answered with a status that retrying will not change.
    FinalStatus(u16),
    /// This many attempts were made, the policy's maximum.
    MaxAttempts(u32),
}

/// A source of jitter: a value in `[0, 1)`; `0.5` means no jitter.
pub trait JitterSource {
    /// The next value in `[0, 1)`.
    fn unit(&mut self) -> f64;
}

/// Jitter from the operating system's random number generator.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsJitter;

impl JitterSource for OsJitter {
    fn unit(&mut self) -> f64 {
        let mut bytes = [0u8; 8];
        match getrandom::fill(&mut bytes) {
            // 53 random bits: every value is exactly representable and below 1.
            Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
            // Without randomness, schedule without jitter rather than fail the report.
            Err(_) => 0.5,
        }
    }
}

/// The same value every time: deterministic tests. `FixedJitter(0.5)` is no jitter.
#[derive(Clone, Copy, Debug)]
pub struct FixedJitter(pub f64);

impl JitterSource for FixedJitter {
    fn unit(&mut self) -> f64 {
        self.0
    }
}

/// A retry policy; see the module documentation for the default.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay before attempt n+1 after attempt n fails (index n-1). When there are more
    /// attempts than delays, the last delay repeats.
    pub schedule: Vec<Duration>,
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// Relative jitter applied to scheduled delays: 0.1 spreads them over ±10 %.
    pub jitter: f64,
    /// The longest `Retry-After` that is honoured; longer values are capped to it.
    pub max_retry_after: Duration,
}

/// The longest delay ever scheduled, whatever the policy says: keeps instant arithmetic far
/// from overflow.
const MAX_DELAY: Duration = Duration::from_secs(366 * 24 * 3600);

impl Default for RetryPolicy {
    fn default() -> Self {
        let s = Duration::from_secs;
        RetryPolicy {
            schedule: vec![
                s(5),
                s(5 * 60),
                s(30 * 60),
                s(2 * 3600),
                s(5 * 3600),
                s(10 * 3600),
                s(10 * 3600),
            ],
            max_attempts: 8,
            jitter: 0.1,
            max_retry_after: s(3600),
        }
    }
}

/// A policy that cannot be used.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RetryPolicyError {
    /// `max_attempts` is 0.
    #[error("max_attempts must be at least 1")]
    NoAttempts,
    /// Retries are allowed but no delay is given.
    #[error("the schedule is empty but max_attempts allows retries")]
    EmptySchedule,
    /// `jitter` outside `[0, 1)`.
    #[error("jitter must be in [0, 1), got {0}")]
    BadJitter(f64),
}

impl RetryPolicy {
    /// Checks the policy's invariants.
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        if self.max_attempts == 0 {
            return Err(RetryPolicyError::NoAttempts);
        }
        if self.max_attempts > 1 && self.schedule.is_empty() {
            return Err(RetryPolicyError::EmptySchedule);
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(RetryPolicyError::BadJitter(self.jitter));
        }
        Ok(())
    }

    /// The sum of the delays between the first and the last attempt, without jitter.
    pub fn total_span(&self) -> Duration {
        (1..self.max_attempts)
            .map(|n| self.scheduled_delay(n))
            .fold(Duration::ZERO, |sum, d| sum.saturating_add(d))
    }

    /// Decides what follows an attempt: `attempts_made` counts attempts so far, the one that
    /// produced `outcome` included (1 after the first attempt).
    pub fn next_attempt(
        &self,
        attempts_made: u32,
        outcome: &AttemptOutcome,
        now: DateTime<Utc>,
        rng: &mut impl JitterSource,
    ) -> Decision {
        match (classify(outcome), outcome) {
            (Classification::Success, _) => return Decision::Delivered,
            (Classification::Final, AttemptOutcome::Status { code, .. }) => {
                return Decision::GiveUp(GiveUpReason::FinalStatus(*code));
            }
            _ => {}
        }
        if attempts_made >= self.max_attempts {
            return Decision::GiveUp(GiveUpReason::MaxAttempts(self.max_attempts));
        }
        let mut delay = self.jittered(self.scheduled_delay(attempts_made.max(1)), rng);
        if let AttemptOutcome::Status {
            retry_after: Some(RetryAfter(asked)),
            ..
        } = outcome
        {
            delay = delay.max((*asked).min(self.max_retry_after));
        }
        let delay =
            chrono::Duration::from_std(delay.min(MAX_DELAY)).unwrap_or(chrono::Duration::MAX);
        Decision::RetryAt(
            now.checked_add_signed(delay)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    }

    /// The delay after attempt `n` (1-based) fails.
    fn scheduled_delay(&self, n: u32) -> Duration {
        let index = usize::try_from(n.saturating_sub(1)).unwrap_or(usize::MAX);
        self.schedule
            .get(index)
            .or(self.schedule.last())
            .copied()
            .unwrap_or(Duration::ZERO)
            .min(MAX_DELAY)
    }

    fn jittered(&self, delay: Duration, rng: &mut impl JitterSource) -> Duration {
        let unit = rng.unit().clamp(0.0, 1.0);
        let jitter = self.jitter.clamp(0.0, 0.999);
        let factor = 1.0 + jitter * (2.0 * unit - 1.0);
        Duration::try_from_secs_f64(delay.as_secs_f64() * factor).unwrap_or(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_000_000, 0).unwrap()
    }

    fn status(code: u16) -> AttemptOutcome {
        AttemptOutcome::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn classifies_outcomes() {
        use Classification::*;
        for (code, expected) in [
            (200, Success),
            (204, Success),
            (299, Success),
            (101, Final),
            (301, Final),
            (400, Final),
            (401, Final),
            (404, Final),
            (408, Retryable),
            (410, Final),
            (413, Final),
            (429, Retryable),
            (500, Retryable),
            (502, Retryable),
            (503, Retryable),
            (599, Retryable),
            (600, Final),
        ] {
            assert_eq!(classify(&status(code)), expected, "{code}");
        }
        assert_eq!(classify(&AttemptOutcome::Timeout), Retryable);
        assert_eq!(
            classify(&AttemptOutcome::Connection("refused".into())),
            Retryable
        );
    }

    #[test]
    fn default_schedule_walked_attempt_by_attempt() {
        let policy = RetryPolicy::default();
        policy.validate().unwrap();
        let minutes = |m: i64| chrono::Duration::minutes(m);
        let expected = [
            chrono::Duration::seconds(5),
            minutes(5),
            minutes(30),
            minutes(120),
            minutes(300),
            minutes(600),
            minutes(600),
        ];
        let mut now = t0();
        for (i, delay) in expected.iter().enumerate() {
            let attempts = i as u32 + 1;
            let decision = policy.next_attempt(attempts, &status(503), now, &mut FixedJitter(0.5));
            assert_eq!(
                decision,
                Decision::RetryAt(now + *delay),
                "after attempt {attempts}"
            );
            now += *delay;
        }
        assert_eq!(
            policy.next_attempt(8, &status(503), now, &mut FixedJitter(0.5)),
            Decision::GiveUp(GiveUpReason::MaxAttempts(8))
        );
        assert_eq!(
            policy.total_span(),
            Duration::from_secs(5 + 300 + 1800 + 7200 + 18000 + 36000 + 36000)
        );
    }

    #[test]
    fn success_and_final_statuses_decide_at_once() {
        let policy = RetryPolicy::default();
        let mut rng = FixedJitter(0.5);
        assert_eq!(
            policy.next_attempt(1, &status(200), t0(), &mut rng),
            Decision::Delivered
        );
        assert_eq!(
            policy.next_attempt(1, &status(404), t0(), &mut rng),
            Decision::GiveUp(GiveUpReason::FinalStatus(404))
        );
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let policy = RetryPolicy::default();
        let low = policy.next_attempt(2, &AttemptOutcome::Timeout, t0(), &mut FixedJitter(0.0));
        let high = policy.next_attempt(
            2,
            &AttemptOutcome::Timeout,
            t0(),
            &mut FixedJitter(0.999_999),
        );
        assert_eq!(
            low,
            Decision::RetryAt(t0() + chrono::Duration::seconds(270))
        );
        let Decision::RetryAt(high) = high else {
            panic!()
        };
        assert!(high <= t0() + chrono::Duration::seconds(330));
        assert!(high > t0() + chrono::Duration::seconds(329));
    }

    #[test]
    fn retry_after_is_honoured_capped_or_ignored() {
        let policy = RetryPolicy::default();
        let with = |header: &str| AttemptOutcome::Status {
            code: 429,
            retry_after: RetryAfter::parse(header, t0()),
        };
        let mut rng = FixedJitter(0.5);
        // Longer than the 5 s delay: honoured.
        assert_eq!(
            policy.next_attempt(1, &with("120"), t0(), &mut rng),
            Decision::RetryAt(t0() + chrono::Duration::seconds(120))
        );
        // As an HTTP-date.
        let date = (t0() + chrono::Duration::seconds(600)).to_rfc2822();
        assert_eq!(
            policy.next_attempt(1, &with(&date), t0(), &mut rng),
            Decision::RetryAt(t0() + chrono::Duration::seconds(600))
        );
        // Capped at an hour.
        assert_eq!(
            policy.next_attempt(1, &with("86400"), t0(), &mut rng),
            Decision::RetryAt(t0() + chrono::Duration::seconds(3600))
        );
        // Shorter than the schedule, or invalid: the schedule wins.
        for header in ["1", "soon", "", "-5"] {
            assert_eq!(
                policy.next_attempt(2, &with(header), t0(), &mut rng),
                Decision::RetryAt(t0() + chrono::Duration::seconds(300)),
                "{header}"
            );
        }
        assert_eq!(
            RetryAfter::parse("Wed, 21 Oct 2015 07:28:00 GMT", t0()),
            None,
            "in the past"
        );
    }

    #[test]
    fn validation() {
        let base = RetryPolicy::default();
        assert_eq!(
            RetryPolicy {
                max_attempts: 0,
                ..base.clone()
            }
            .validate(),
            Err(RetryPolicyError::NoAttempts)
        );
        assert_eq!(
            RetryPolicy {
                schedule: vec![],
                ..base.clone()
            }
            .validate(),
            Err(RetryPolicyError::EmptySchedule)
        );
        assert_eq!(
            RetryPolicy {
                schedule: vec![],
                max_attempts: 1,
                ..base.clone()
            }
            .validate(),
            Ok(())
        );
        assert_eq!(
            RetryPolicy {
                jitter: 1.0,
                ..base.clone()
            }
            .validate(),
            Err(RetryPolicyError::BadJitter(1.0))
        );
        // More attempts than delays: the last delay repeats.
        let short = RetryPolicy {
            schedule: vec![Duration::from_secs(7)],
            max_attempts: 5,
            jitter: 0.0,
            ..base
        };
        assert_eq!(
            short.next_attempt(4, &AttemptOutcome::Timeout, t0(), &mut FixedJitter(0.5)),
            Decision::RetryAt(t0() + chrono::Duration::seconds(7))
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_retries_within_bounds(
            attempts in 0u32..20,
            code in 0u16..1000,
            retry_after in proptest::option::of(0u64..u64::MAX),
            unit in proptest::num::f64::ANY,
            delays in proptest::collection::vec(0u64..u64::MAX / 2, 0..10),
            jitter in 0.0f64..1.0,
            timestamp in -8_000_000_000i64..250_000_000_000i64,
        ) {
            let policy = RetryPolicy {
                schedule: delays.iter().map(|d| Duration::from_millis(*d)).collect(),
                max_attempts: 10,
                jitter,
                max_retry_after: Duration::from_secs(3600),
            };
            let now = DateTime::from_timestamp(timestamp, 0).unwrap();
            let outcome = AttemptOutcome::Status { code, retry_after: retry_after.map(|s| RetryAfter(Duration::from_secs(s))) };
            if let Decision::RetryAt(at) = policy.next_attempt(attempts, &outcome, now, &mut FixedJitter(unit)) {
                prop_assert!(at >= now);
                let longest = policy.schedule.iter().max().copied().unwrap_or_default().min(MAX_DELAY);
                let bound = Duration::from_secs_f64(longest.as_secs_f64() * (1.0 + jitter)).max(policy.max_retry_after);
                prop_assert!((at - now).to_std().unwrap() <= bound + Duration::from_millis(1));
            }
        }
    }
}
