//! When to try a failed webhook delivery again, and when to stop.
//!
//! The clock and the randomness are passed in, so every decision can be reproduced. We keep our
//! own policy rather than `backon` or `backoff`: those drive a retry loop in memory, while a
//! delivery's next attempt is an instant stored in `next_retry_at`.
//!
//! # Default schedule
//!
//! Svix's schedule, which receivers already know: a receiver down for a whole day still gets
//! every event. ±10 % jitter keeps deliveries that failed together (an outage) from coming
//! back together; the instants below are without it.
//!
//! | attempt | delay after the previous attempt failed | at, from enqueue | Svix |
//! |---|---|---|---|
//! | 1 | none: at enqueue | 0 s | immediately |
//! | 2 | 5 s | 5 s | 5 s |
//! | 3 | 5 min | 5 min 5 s | 5 min |
//! | 4 | 30 min | 35 min 5 s | 30 min |
//! | 5 | 2 h | 2 h 35 min 5 s | 2 h |
//! | 6 | 5 h | 7 h 35 min 5 s | 5 h |
//! | 7 | 10 h | 17 h 35 min 5 s | 10 h |
//! | 8 | 10 h | 27 h 35 min 5 s | 10 h |
//!
//! When attempt 8 fails too, the delivery is given up ([`GiveUpReason::MaxAttempts`]). Checked:
//!
//! ```
//! use agent_webhooks::delivery::retry::{AttemptOutcome::Timeout, Decision, GiveUpReason, RetryPolicy};
//! use rand::{SeedableRng, rngs::StdRng};
//! use std::time::Duration;
//!
//! let (min, h) = (60, 3600);
//! let default = RetryPolicy::default();
//! assert_eq!((default.jitter, default.max_retry_after), (0.1, Duration::from_secs(h)));
//! assert_eq!(default.total_span(), Duration::from_secs(27 * h + 35 * min + 5));
//!
//! let (policy, mut rng) = (RetryPolicy { jitter: 0.0, ..default }, StdRng::seed_from_u64(0));
//! let (mut now, mut made, mut at) = (chrono::DateTime::UNIX_EPOCH, 1, vec![0]);
//! while let Decision::RetryAt(next) = policy.next_attempt(made, &Timeout, now, &mut rng) {
//!     (now, made) = (next, made + 1);
//!     at.push(now.timestamp() as u64); // seconds since enqueue (the epoch)
//! }
//! let last = policy.next_attempt(made, &Timeout, now, &mut rng);
//! assert_eq!(last, Decision::GiveUp(GiveUpReason::MaxAttempts(8)));
//! let table = [0, 5, 5 * min + 5, 35 * min + 5, 2 * h + 35 * min + 5, 7 * h + 35 * min + 5,
//!     17 * h + 35 * min + 5, 27 * h + 35 * min + 5];
//! assert_eq!(at, table);
//! ```
//!
//! # Outcomes
//!
//! | outcome | class | why |
//! |---|---|---|
//! | 2xx | success | the receiver accepted the event |
//! | 408, 425, 429, 5xx | retryable | the receiver is slow (408), asks for a retry (425 Too Early), is rate limiting (429) or failing on its side (5xx): waiting helps |
//! | timeout; connect, TLS or DNS error | retryable | the receiver may be restarting or briefly unreachable |
//! | 3xx | final | redirects are not followed (they would skip the URL policy's SSRF checks) and a retry gets the same redirect; unlike Svix, deliberately |
//! | other 4xx | final | the receiver refuses this request (bad signature, gone, too large): the same bytes would be refused again |
//! | 1xx, or outside 100–599 | final | not a usable final response: the receiver is broken, not busy |
//!
//! # `Retry-After`
//!
//! Honoured, without jitter, only when it asks for longer than the scheduled delay, and capped
//! at [`RetryPolicy::max_retry_after`]: a rate-limited receiver is not hammered, but a header
//! can neither shorten the schedule nor park a delivery for days.
//!
//! # Limits
//!
//! More attempts than delays repeat the last delay, so `max_attempts` can be raised alone.
//! Operators set both with `WEBHOOK_RETRY_SCHEDULE` and `WEBHOOK_MAX_ATTEMPTS`
//! ([settings](crate::settings), which say how the two combine).
//! [`RetryPolicy::validate`] rejects delays outside [`MIN_DELAY`]..=[`MAX_DELAY`];
//! [`RetryPolicy::next_attempt`] clamps into them (and saturates instants) instead of panicking.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::{Rng, RngExt};

/// The shortest wait before a retry, so that a retry is always strictly later than the failure
/// it follows, even under a zero delay from an unvalidated policy.
pub const MIN_DELAY: Duration = Duration::from_millis(1);

/// The longest single delay (30 days): longer is a misconfiguration (a unit mix-up), and the
/// cap keeps instant arithmetic far from overflowing.
pub const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// What one attempt produced: the only input the policy needs, so senders may use any HTTP
/// client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Status {
        /// Any value, even outside 100–599: [`classify`] says what it means.
        code: u16,
        retry_after: Option<RetryAfter>,
    },
    /// No response within the sender's timeout.
    Timeout,
    /// DNS, connect or TLS failure, described for the delivery record.
    Connection(String),
    /// The agent was deleted after the enqueue: nothing was sent, nothing ever will be.
    AgentDeleted(String),
}

/// A `Retry-After` header value as a delay from the moment the response arrived, so that a
/// decision does not depend on when the header is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Parses delta-seconds or an RFC 2822 HTTP-date relative to `now` (when the response
    /// arrived); a past date is zero. Anything else (signs, fractions, the obsolete RFC 850
    /// and asctime forms) is `None`, and the schedule applies.
    pub fn parse(value: &str, now: DateTime<Utc>) -> Option<RetryAfter> {
        let value = value.trim();
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            // Only overflow can fail here, and a huge delay is still a valid request.
            let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
            return Some(RetryAfter(Duration::from_secs(seconds)));
        }
        let at = DateTime::parse_from_rfc2822(value).ok()?.to_utc();
        Some(RetryAfter(
            at.signed_duration_since(now)
                .to_std()
                .unwrap_or(Duration::ZERO),
        ))
    }
}

/// How an outcome counts, independently of how many attempts are left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Classification {
    Success,
    Retryable,
    Final,
}

/// So that final failures stop at once instead of using up the schedule (the rules and their
/// reasons are in the [module documentation](self#outcomes)).
pub fn classify(outcome: &AttemptOutcome) -> Classification {
    match outcome {
        AttemptOutcome::Status { code, .. } => match code {
            200..=299 => Classification::Success,
            408 | 425 | 429 | 500..=599 => Classification::Retryable,
            _ => Classification::Final,
        },
        AttemptOutcome::Timeout | AttemptOutcome::Connection(_) => Classification::Retryable,
        AttemptOutcome::AgentDeleted(_) => Classification::Final,
    }
}

/// What the delivery record stores after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    Delivered,
    /// Always later than the `now` it was decided at.
    RetryAt(DateTime<Utc>),
    GiveUp(GiveUpReason),
}

/// Why a delivery was given up, so the record can tell a refusal from exhaustion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GiveUpReason {
    FinalStatus(u16),
    /// All the attempts the policy allows, the last one retryable.
    MaxAttempts(u32),
    AgentDeleted,
}

/// Fields are public so settings can adjust one; call [`RetryPolicy::validate`] after.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay before attempt n+1 after attempt n failed, at index n-1.
    pub schedule: Vec<Duration>,
    /// Attempts in all, the first one included (at least 1).
    pub max_attempts: u32,
    /// Relative jitter on scheduled delays, in `[0, 1)`: 0.1 spreads them over ±10 %.
    pub jitter: f64,
    /// The longest `Retry-After` honoured; a longer one is capped to it.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        let s = Duration::from_secs;
        RetryPolicy {
            schedule: vec![
                s(5),
                s(5 * 60),
                s(30 * 60),
                s(2 * 60 * 60),
                s(5 * 60 * 60),
                s(10 * 60 * 60),
                s(10 * 60 * 60),
            ],
            max_attempts: 8,
            jitter: 0.1,
            max_retry_after: s(60 * 60),
        }
    }
}

/// Why a [`RetryPolicy`] cannot be used, so settings can reject it at start-up rather than
/// misbehave at the first failure.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RetryPolicyError {
    #[error("max_attempts must be at least 1 (the first attempt counts)")]
    NoAttempts,
    #[error("max_attempts is {max_attempts} but the retry schedule has no delays")]
    EmptySchedule { max_attempts: u32 },
    #[error("jitter must be a fraction in [0, 1), got {0}")]
    BadJitter(f64),
    #[error(
        "schedule[{index}] is {delay:?}, shorter than the minimum {:?}",
        MIN_DELAY
    )]
    DelayTooShort { index: usize, delay: Duration },
    #[error(
        "schedule[{index}] is {delay:?}, longer than the maximum {:?}",
        MAX_DELAY
    )]
    DelayTooLong { index: usize, delay: Duration },
    #[error("max_retry_after is {0:?}, longer than the maximum {max:?}", max = MAX_DELAY)]
    RetryAfterCapTooLong(Duration),
}

impl RetryPolicy {
    /// So a bad configuration fails at start-up; an invalid policy still never panics.
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        if self.max_attempts == 0 {
            return Err(RetryPolicyError::NoAttempts);
        }
        if self.max_attempts > 1 && self.schedule.is_empty() {
            return Err(RetryPolicyError::EmptySchedule {
                max_attempts: self.max_attempts,
            });
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(RetryPolicyError::BadJitter(self.jitter));
        }
        for (index, &delay) in self.schedule.iter().enumerate() {
            if delay < MIN_DELAY {
                return Err(RetryPolicyError::DelayTooShort { index, delay });
            }
            if delay > MAX_DELAY {
                return Err(RetryPolicyError::DelayTooLong { index, delay });
            }
        }
        if self.max_retry_after > MAX_DELAY {
            return Err(RetryPolicyError::RetryAfterCapTooLong(self.max_retry_after));
        }
        Ok(())
    }

    /// The time from the first attempt to the last one when every attempt fails, without
    /// jitter or `Retry-After`: how long a receiver may be down before events are lost.
    pub fn total_span(&self) -> Duration {
        let retries = self.max_attempts.saturating_sub(1);
        let listed = u32::try_from(self.schedule.len())
            .unwrap_or(u32::MAX)
            .min(retries);
        let head = (1..=listed)
            .map(|n| self.scheduled_delay(n))
            .fold(Duration::ZERO, Duration::saturating_add);
        // Past the listed delays the last one repeats.
        let tail = self
            .scheduled_delay(retries.max(1))
            .checked_mul(retries - listed)
            .unwrap_or(Duration::MAX);
        head.saturating_add(tail)
    }

    /// The delay after each attempt that can be retried, the last delay repeated or the
    /// unused ones dropped as `max_attempts` has it, without jitter: the schedule in effect,
    /// for an operator to see.
    ///
    /// ```
    /// use agent_webhooks::delivery::retry::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let s = Duration::from_secs;
    /// let policy = RetryPolicy { schedule: vec![s(1), s(60)], max_attempts: 4, ..RetryPolicy::default() };
    /// assert_eq!(policy.delays().collect::<Vec<_>>(), [s(1), s(60), s(60)]);
    /// ```
    pub fn delays(&self) -> impl Iterator<Item = Duration> + '_ {
        (1..self.max_attempts).map(|n| self.scheduled_delay(n))
    }

    /// Decides what follows an attempt. `attempts_made` includes the one that produced
    /// `outcome` (0 is taken as 1).
    ///
    /// ```
    /// use agent_webhooks::delivery::retry::{AttemptOutcome, Decision, RetryAfter, RetryPolicy};
    /// use chrono::{DateTime, TimeDelta};
    ///
    /// let policy = RetryPolicy::default();
    /// let now = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
    /// // The first attempt got 503 with `Retry-After: 120`, longer than the scheduled 5 s.
    /// let outcome = AttemptOutcome::Status {
    ///     code: 503,
    ///     retry_after: RetryAfter::parse("120", now),
    /// };
    /// let decision = policy.next_attempt(1, &outcome, now, &mut rand::rng());
    /// assert_eq!(decision, Decision::RetryAt(now + TimeDelta::seconds(120)));
    /// ```
    pub fn next_attempt(
        &self,
        attempts_made: u32,
        outcome: &AttemptOutcome,
        now: DateTime<Utc>,
        rng: &mut impl Rng,
    ) -> Decision {
        let retry_after = match (classify(outcome), outcome) {
            (Classification::Success, _) => return Decision::Delivered,
            (Classification::Final, AttemptOutcome::Status { code, .. }) => {
                return Decision::GiveUp(GiveUpReason::FinalStatus(*code));
            }
            (_, AttemptOutcome::AgentDeleted(_)) => {
                return Decision::GiveUp(GiveUpReason::AgentDeleted);
            }
            (_, AttemptOutcome::Status { retry_after, .. }) => *retry_after,
            (_, AttemptOutcome::Timeout | AttemptOutcome::Connection(_)) => None,
        };
        let attempts_made = attempts_made.max(1);
        if attempts_made >= self.max_attempts {
            return Decision::GiveUp(GiveUpReason::MaxAttempts(attempts_made));
        }
        let scheduled = self.scheduled_delay(attempts_made);
        let delay = match retry_after {
            Some(RetryAfter(asked))
                if asked.min(self.max_retry_after).min(MAX_DELAY) > scheduled =>
            {
                asked.min(self.max_retry_after).min(MAX_DELAY)
            }
            _ => self.jittered(scheduled, rng),
        };
        Decision::RetryAt(instant_after(now, delay.max(MIN_DELAY)))
    }

    /// The delay after attempt `n` (1-based) failed, without jitter.
    fn scheduled_delay(&self, n: u32) -> Duration {
        let index = usize::try_from(n.saturating_sub(1)).unwrap_or(usize::MAX);
        self.schedule
            .get(index)
            .or(self.schedule.last())
            .copied()
            .unwrap_or(MIN_DELAY)
            .clamp(MIN_DELAY, MAX_DELAY)
    }

    fn jittered(&self, delay: Duration, rng: &mut impl Rng) -> Duration {
        // MAX_DELAY's nanoseconds (< 2^53) fit a u64 and are exact as an f64. The clamp and the
        // saturating cast keep an unvalidated jitter within [0, 1]; NaN is no jitter.
        let nanos = delay.as_nanos() as u64;
        let spread = (nanos as f64 * self.jitter.clamp(0.0, 1.0)) as u64;
        Duration::from_nanos(nanos - spread + rng.random_range(0..=2 * spread))
    }
}

/// `now + delay`, saturating at the end of `chrono`'s range instead of panicking.
fn instant_after(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(delay)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::StdRng};

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_000_000, 0).unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn after(d: Duration) -> Decision {
        Decision::RetryAt(t0() + TimeDelta::from_std(d).unwrap())
    }

    fn status(code: u16) -> AttemptOutcome {
        AttemptOutcome::Status {
            code,
            retry_after: None,
        }
    }

    fn status_with(code: u16, header: &str) -> AttemptOutcome {
        AttemptOutcome::Status {
            code,
            retry_after: RetryAfter::parse(header, t0()),
        }
    }

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    /// The default policy without jitter, so instants are exact.
    fn exact() -> RetryPolicy {
        RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        }
    }

    fn decide(attempts: u32, outcome: &AttemptOutcome) -> Decision {
        exact().next_attempt(attempts, outcome, t0(), &mut rng(0))
    }

    /// The default policy's decision, jittered by the RNG seeded with `seed`.
    fn decide_jittered(attempts: u32, outcome: &AttemptOutcome, seed: u64) -> Decision {
        RetryPolicy::default().next_attempt(attempts, outcome, t0(), &mut rng(seed))
    }

    #[test]
    fn classifies_each_outcome() {
        use Classification::*;
        for (code, expected) in [
            (200, Success),
            (204, Success),
            (299, Success),
            (0, Final),
            (101, Final),
            (301, Final),
            (302, Final),
            (304, Final),
            (400, Final),
            (401, Final),
            (404, Final),
            (408, Retryable),
            (409, Final),
            (410, Final),
            (413, Final),
            (425, Retryable),
            (429, Retryable),
            (500, Retryable),
            (502, Retryable),
            (503, Retryable),
            (599, Retryable),
            (600, Final),
            (u16::MAX, Final),
        ] {
            assert_eq!(classify(&status(code)), expected, "{code}");
        }
        assert_eq!(classify(&AttemptOutcome::Timeout), Retryable);
        assert_eq!(
            classify(&AttemptOutcome::Connection("connection refused".into())),
            Retryable
        );
    }

    #[test]
    fn success_and_final_statuses_decide_whatever_the_attempt() {
        for attempts in [0, 1, 7, 8, 9, u32::MAX] {
            assert_eq!(decide(attempts, &status(204)), Decision::Delivered);
            for code in [301, 404, 410] {
                assert_eq!(
                    decide(attempts, &status(code)),
                    Decision::GiveUp(GiveUpReason::FinalStatus(code))
                );
            }
        }
        assert_eq!(
            decide(1, &status_with(400, "120")),
            Decision::GiveUp(GiveUpReason::FinalStatus(400)),
            "Retry-After does not make a final status retryable"
        );
        for outcome in [
            AttemptOutcome::Timeout,
            AttemptOutcome::Connection("tls handshake".into()),
            status(408),
            status(429),
            status(500),
        ] {
            assert_eq!(decide(1, &outcome), after(secs(5)), "{outcome:?}");
            assert_eq!(
                decide(9, &outcome),
                Decision::GiveUp(GiveUpReason::MaxAttempts(9))
            );
        }
    }

    #[test]
    fn attempts_made_zero_counts_as_the_first() {
        assert_eq!(decide(0, &AttemptOutcome::Timeout), after(secs(5)));
        let single = RetryPolicy {
            max_attempts: 1,
            schedule: vec![],
            ..RetryPolicy::default()
        };
        assert_eq!(
            single.next_attempt(0, &AttemptOutcome::Timeout, t0(), &mut rng(0)),
            Decision::GiveUp(GiveUpReason::MaxAttempts(1))
        );
    }

    /// How long after `t0()` `decision` retries.
    fn wait(decision: Decision) -> Duration {
        match decision {
            Decision::RetryAt(at) => (at - t0()).to_std().unwrap(),
            other => panic!("not a retry: {other:?}"),
        }
    }

    #[test]
    fn jitter_spreads_over_its_whole_range_and_no_further() {
        // One seeded RNG, many draws per delay: every draw is within ±10 %, and the draws
        // come within 1 % of the spread of both edges.
        let policy = RetryPolicy::default();
        let mut rng = rng(7);
        for (i, &delay) in policy.schedule.iter().enumerate() {
            let made = u32::try_from(i).unwrap() + 1;
            let waits: Vec<Duration> = (0..2000)
                .map(|_| wait(policy.next_attempt(made, &AttemptOutcome::Timeout, t0(), &mut rng)))
                .collect();
            let (low, high) = (delay.mul_f64(0.9), delay.mul_f64(1.1));
            let margin = delay.mul_f64(0.002);
            assert!(waits.iter().all(|w| (low..=high).contains(w)), "{delay:?}");
            assert!(waits.iter().min().unwrap() < &(low + margin), "{delay:?}");
            assert!(waits.iter().max().unwrap() > &(high - margin), "{delay:?}");
        }
    }

    #[test]
    fn retry_after_seconds_is_honoured_exactly_without_jitter() {
        for seed in 0..20 {
            let decide = |made, header| decide_jittered(made, &status_with(429, header), seed);
            assert_eq!(decide(1, "120"), after(secs(120)));
            assert_eq!(decide(3, "3600"), after(secs(3600)));
        }
    }

    #[test]
    fn retry_after_http_date_is_honoured() {
        let in_ten_minutes = (t0() + TimeDelta::minutes(10))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        assert_eq!(
            decide_jittered(1, &status_with(503, &in_ten_minutes), 3),
            after(secs(600))
        );
    }

    #[test]
    fn retry_after_is_capped() {
        let in_two_days = (t0() + TimeDelta::days(2)).to_rfc2822();
        for header in ["3601", "86400", "99999999999999999999999", &in_two_days] {
            assert_eq!(
                decide_jittered(1, &status_with(429, header), 5),
                after(secs(3600)),
                "{header}"
            );
        }
    }

    #[test]
    fn retry_after_no_longer_than_the_schedule_is_ignored() {
        // After attempt 2 the schedule says 5 min, jittered as if there were no header.
        let in_a_minute = (t0() + TimeDelta::minutes(1)).to_rfc2822();
        let yesterday = (t0() - TimeDelta::days(1)).to_rfc2822();
        let scheduled = decide_jittered(2, &AttemptOutcome::Timeout, 11);
        assert_ne!(scheduled, after(secs(300)), "the jitter applies");
        for header in ["0", "60", "299", "300", &in_a_minute, &yesterday] {
            let outcome = status_with(503, header);
            assert_eq!(decide_jittered(2, &outcome, 11), scheduled, "{header}");
            assert_eq!(decide(2, &outcome), after(secs(300)), "{header}");
        }
        // After attempt 5 the schedule (5 h) exceeds even a capped 24 h request.
        assert_eq!(decide(5, &status_with(503, "86400")), after(secs(5 * 3600)));
    }

    #[test]
    fn invalid_retry_after_is_ignored() {
        for header in [
            "",
            " ",
            "soon",
            "+120",
            "-5",
            "1.5",
            "12 0",
            "0x10",
            "١٢٠",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 25:49:37 GMT",
        ] {
            assert_eq!(RetryAfter::parse(header, t0()), None, "{header:?}");
            assert_eq!(
                decide(1, &status_with(429, header)),
                after(secs(5)),
                "{header:?}"
            );
        }
    }

    #[test]
    fn parses_retry_after_values() {
        let now = DateTime::parse_from_rfc3339("1994-11-06T08:47:37Z")
            .unwrap()
            .to_utc();
        for (header, expected) in [
            ("120", secs(120)),
            ("  120\t", secs(120)),
            ("0", Duration::ZERO),
            ("007", secs(7)),
            ("18446744073709551615", secs(u64::MAX)),
            ("18446744073709551616", secs(u64::MAX)),
            ("Sun, 06 Nov 1994 08:49:37 GMT", secs(120)),
            ("Sun, 06 Nov 1994 10:49:37 +0200", secs(120)),
            ("Sun, 06 Nov 1994 08:47:37 GMT", Duration::ZERO),
            ("Sat, 05 Nov 1994 08:49:37 GMT", Duration::ZERO),
        ] {
            assert_eq!(
                RetryAfter::parse(header, now),
                Some(RetryAfter(expected)),
                "{header:?}"
            );
        }
        let half_past = now + TimeDelta::milliseconds(500);
        assert_eq!(
            RetryAfter::parse("Sun, 06 Nov 1994 08:49:37 GMT", half_past),
            Some(RetryAfter(Duration::from_millis(119_500)))
        );
    }

    #[test]
    fn short_schedule_repeats_its_last_delay_and_long_one_is_cut() {
        let short = RetryPolicy {
            schedule: vec![secs(7), secs(11)],
            max_attempts: 5,
            jitter: 0.0,
            max_retry_after: secs(60),
        };
        short.validate().unwrap();
        let mut rng = rng(0);
        let timeout = AttemptOutcome::Timeout;
        for (made, delay) in [(1, 7), (2, 11), (3, 11), (4, 11)] {
            assert_eq!(
                short.next_attempt(made, &timeout, t0(), &mut rng),
                after(secs(delay))
            );
        }
        assert_eq!(
            short.next_attempt(5, &timeout, t0(), &mut rng),
            Decision::GiveUp(GiveUpReason::MaxAttempts(5))
        );
        assert_eq!(short.total_span(), secs(7 + 11 * 3));

        let cut = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert_eq!(cut.total_span(), secs(5 + 300));
        assert_eq!(
            cut.next_attempt(3, &timeout, t0(), &mut rng),
            Decision::GiveUp(GiveUpReason::MaxAttempts(3))
        );
    }

    #[test]
    fn total_span_of_extreme_policies() {
        let single = RetryPolicy {
            max_attempts: 1,
            schedule: vec![],
            ..RetryPolicy::default()
        };
        assert_eq!(single.total_span(), Duration::ZERO);
        let endless = RetryPolicy {
            max_attempts: u32::MAX,
            ..RetryPolicy::default()
        };
        let repeats = u32::MAX - 1 - 7;
        assert_eq!(
            endless.total_span(),
            secs(99305) + secs(10 * 3600) * repeats
        );
        let huge = RetryPolicy {
            schedule: vec![Duration::MAX],
            max_attempts: u32::MAX,
            ..RetryPolicy::default()
        };
        assert_eq!(huge.total_span(), MAX_DELAY * (u32::MAX - 1));
    }

    #[test]
    fn validation_errors() {
        let base = RetryPolicy::default();
        let check = |policy: RetryPolicy| policy.validate();
        assert_eq!(base.validate(), Ok(()));
        assert_eq!(
            check(RetryPolicy {
                max_attempts: 0,
                ..base.clone()
            }),
            Err(RetryPolicyError::NoAttempts)
        );
        assert_eq!(
            check(RetryPolicy {
                schedule: vec![],
                ..base.clone()
            }),
            Err(RetryPolicyError::EmptySchedule { max_attempts: 8 })
        );
        assert_eq!(
            check(RetryPolicy {
                schedule: vec![],
                max_attempts: 1,
                ..base.clone()
            }),
            Ok(())
        );
        for jitter in [-0.1, 1.0, 2.0, f64::INFINITY] {
            assert_eq!(
                check(RetryPolicy {
                    jitter,
                    ..base.clone()
                }),
                Err(RetryPolicyError::BadJitter(jitter))
            );
        }
        assert!(matches!(
            check(RetryPolicy {
                jitter: f64::NAN,
                ..base.clone()
            }),
            Err(RetryPolicyError::BadJitter(j)) if j.is_nan()
        ));
        for jitter in [0.0, 0.999] {
            assert_eq!(
                check(RetryPolicy {
                    jitter,
                    ..base.clone()
                }),
                Ok(())
            );
        }
        assert_eq!(
            check(RetryPolicy {
                schedule: vec![secs(5), Duration::ZERO],
                ..base.clone()
            }),
            Err(RetryPolicyError::DelayTooShort {
                index: 1,
                delay: Duration::ZERO
            })
        );
        let too_long = MAX_DELAY + Duration::from_nanos(1);
        assert_eq!(
            check(RetryPolicy {
                schedule: vec![secs(5), secs(6), too_long],
                ..base.clone()
            }),
            Err(RetryPolicyError::DelayTooLong {
                index: 2,
                delay: too_long
            })
        );
        assert_eq!(
            check(RetryPolicy {
                schedule: vec![MIN_DELAY, MAX_DELAY],
                max_retry_after: MAX_DELAY,
                ..base.clone()
            }),
            Ok(())
        );
        assert_eq!(
            check(RetryPolicy {
                max_retry_after: too_long,
                ..base
            }),
            Err(RetryPolicyError::RetryAfterCapTooLong(too_long))
        );
        assert_eq!(
            RetryPolicyError::DelayTooShort {
                index: 0,
                delay: Duration::ZERO
            }
            .to_string(),
            "schedule[0] is 0ns, shorter than the minimum 1ms"
        );
    }

    #[test]
    fn extreme_inputs_clamp_instead_of_panicking() {
        // A NaN jitter is none, so the clamped delays show exactly.
        let wild = RetryPolicy {
            schedule: vec![Duration::ZERO, Duration::MAX],
            max_attempts: 10,
            jitter: f64::NAN,
            max_retry_after: Duration::MAX,
        };
        let timeout = AttemptOutcome::Timeout;
        let mut rng = rng(0);
        assert_eq!(
            wild.next_attempt(1, &timeout, t0(), &mut rng),
            after(MIN_DELAY)
        );
        assert_eq!(
            wild.next_attempt(2, &timeout, t0(), &mut rng),
            after(MAX_DELAY)
        );
        assert_eq!(
            wild.next_attempt(1, &status_with(429, "99999999999999999999"), t0(), &mut rng),
            after(MAX_DELAY)
        );
        // A jitter above 1 counts as 1: up to twice the delay, never more.
        let wilder = RetryPolicy {
            jitter: 5.0,
            ..wild
        };
        let longest = (0..200)
            .map(|_| wait(wilder.next_attempt(2, &timeout, t0(), &mut rng)))
            .max()
            .unwrap();
        assert!(longest <= MAX_DELAY * 2, "{longest:?}");
        assert!(longest > MAX_DELAY.mul_f64(1.9), "{longest:?}");
        // At the end of chrono's range the instant saturates.
        let end = DateTime::<Utc>::MAX_UTC;
        assert_eq!(
            RetryPolicy::default().next_attempt(1, &timeout, end, &mut rng),
            Decision::RetryAt(end)
        );
        let empty = RetryPolicy {
            schedule: vec![],
            ..exact()
        };
        assert_eq!(
            empty.next_attempt(1, &timeout, t0(), &mut rng),
            after(MIN_DELAY)
        );
    }

    fn any_duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0u64..200_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        ]
    }

    fn any_outcome() -> impl Strategy<Value = AttemptOutcome> {
        prop_oneof![
            3 => (any::<u16>(), proptest::option::of(any_duration())).prop_map(|(code, ra)| {
                AttemptOutcome::Status { code, retry_after: ra.map(RetryAfter) }
            }),
            3 => (prop_oneof![200u16..300, 300u16..600], proptest::option::of(any_duration()))
                .prop_map(|(code, ra)| AttemptOutcome::Status {
                    code,
                    retry_after: ra.map(RetryAfter),
                }),
            1 => Just(AttemptOutcome::Timeout),
            1 => ".{0,20}".prop_map(AttemptOutcome::Connection),
        ]
    }

    fn any_attempts() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..12, any::<u32>()]
    }

    /// Instants far enough from chrono's ends that no retry saturates.
    fn any_now() -> impl Strategy<Value = DateTime<Utc>> {
        let margin = 10 * MAX_DELAY.as_secs() as i64;
        let lo = DateTime::<Utc>::MIN_UTC.timestamp() + margin;
        let hi = DateTime::<Utc>::MAX_UTC.timestamp() - margin;
        prop_oneof![lo..hi, 0i64..4_102_444_800]
            .prop_flat_map(|s| (Just(s), 0u32..1_000_000_000))
            .prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap())
    }

    fn any_valid_policy() -> impl Strategy<Value = RetryPolicy> {
        let delay = prop_oneof![
            (1u64..100_000_000).prop_map(Duration::from_micros),
            (MIN_DELAY.as_nanos() as u64..=MAX_DELAY.as_nanos() as u64)
                .prop_map(Duration::from_nanos),
            Just(MIN_DELAY),
            Just(MAX_DELAY),
        ];
        (
            proptest::collection::vec(delay, 1..10),
            1u32..20,
            prop_oneof![0.0f64..1.0, Just(0.0), Just(1.0 - f64::EPSILON / 2.0)],
            (0..=MAX_DELAY.as_secs()).prop_map(Duration::from_secs),
        )
            .prop_map(
                |(schedule, max_attempts, jitter, max_retry_after)| RetryPolicy {
                    schedule,
                    max_attempts,
                    jitter,
                    max_retry_after,
                },
            )
    }

    /// now + max(longest delay × (1 + jitter), max_retry_after), the jittered part rounded
    /// up to the nanosecond.
    fn latest_retry(policy: &RetryPolicy) -> Duration {
        let longest = policy.schedule.iter().copied().max().unwrap_or_default();
        let spread = (longest.as_nanos() as f64 * policy.jitter).ceil() as u64;
        (longest + Duration::from_nanos(spread)).max(policy.max_retry_after)
    }

    /// The decision agrees with the classification, and a retry is strictly after `now` and
    /// no later than [`latest_retry`].
    fn check_decision(
        policy: &RetryPolicy,
        attempts: u32,
        outcome: &AttemptOutcome,
        now: DateTime<Utc>,
        decision: Decision,
    ) -> Result<(), TestCaseError> {
        match (classify(outcome), decision) {
            (Classification::Success, Decision::Delivered) => {}
            (Classification::Final, Decision::GiveUp(GiveUpReason::FinalStatus(code))) => {
                prop_assert_eq!(outcome, &status_code_only(outcome, code));
            }
            (Classification::Retryable, Decision::GiveUp(GiveUpReason::MaxAttempts(n))) => {
                prop_assert_eq!(n, attempts.max(1));
                prop_assert!(n >= policy.max_attempts);
            }
            (Classification::Retryable, Decision::RetryAt(at)) => {
                prop_assert!(attempts.max(1) < policy.max_attempts);
                prop_assert!(at > now, "{at} is not after {now}");
                let waited = (at - now).to_std().unwrap();
                prop_assert!(waited <= latest_retry(policy), "{waited:?}");
            }
            (class, decision) => prop_assert!(false, "{class:?} decided {decision:?}"),
        }
        Ok(())
    }

    /// `outcome` when its code is `code`, whatever its `Retry-After`.
    fn status_code_only(outcome: &AttemptOutcome, code: u16) -> AttemptOutcome {
        match outcome {
            AttemptOutcome::Status { retry_after, .. } => AttemptOutcome::Status {
                code,
                retry_after: *retry_after,
            },
            other => other.clone(),
        }
    }

    proptest! {
        #[test]
        fn default_policy_decisions_are_consistent_and_bounded(
            attempts in any_attempts(),
            outcome in any_outcome(),
            seed in any::<u64>(),
            now in any_now(),
        ) {
            let policy = RetryPolicy::default();
            let decision = policy.next_attempt(attempts, &outcome, now, &mut rng(seed));
            check_decision(&policy, attempts, &outcome, now, decision)?;
        }

        #[test]
        fn valid_policy_decisions_are_consistent_and_bounded(
            policy in any_valid_policy(),
            attempts in any_attempts(),
            outcome in any_outcome(),
            seed in any::<u64>(),
            now in any_now(),
        ) {
            prop_assert_eq!(policy.validate(), Ok(()));
            let decision = policy.next_attempt(attempts, &outcome, now, &mut rng(seed));
            check_decision(&policy, attempts, &outcome, now, decision)?;
        }

        #[test]
        fn jitter_stays_within_its_fraction_of_the_scheduled_delay(
            policy in any_valid_policy(),
            attempts in 1u32..20,
            seed in any::<u64>(),
            now in any_now(),
        ) {
            prop_assume!(attempts < policy.max_attempts);
            let scheduled = policy.scheduled_delay(attempts).as_nanos() as f64;
            let decision = policy.next_attempt(attempts, &AttemptOutcome::Timeout, now, &mut rng(seed));
            let Decision::RetryAt(at) = decision else {
                return Err(TestCaseError::fail(format!("{decision:?}")));
            };
            let waited = (at - now).to_std().unwrap().as_nanos() as f64;
            prop_assert!((waited - scheduled).abs() <= scheduled * policy.jitter,
                "waited {waited} ns for {scheduled} ns at jitter {}", policy.jitter);
        }

        #[test]
        fn unvalidated_policies_never_panic(
            schedule in proptest::collection::vec(any_duration(), 0..5),
            max_attempts in any::<u32>(),
            jitter in proptest::num::f64::ANY,
            max_retry_after in any_duration(),
            attempts in any_attempts(),
            outcome in any_outcome(),
            seed in any::<u64>(),
            now in any_now(),
        ) {
            let policy = RetryPolicy { schedule, max_attempts, jitter, max_retry_after };
            let _ = policy.validate();
            let _ = policy.total_span();
            let decision = policy.next_attempt(attempts, &outcome, now, &mut rng(seed));
            if let Decision::RetryAt(at) = decision {
                prop_assert!(at > now);
                prop_assert!((at - now).to_std().unwrap() <= MAX_DELAY * 2);
            }
        }

        #[test]
        fn retry_after_parse_never_panics(value in "\\PC{0,40}", now in any_now()) {
            let _ = RetryAfter::parse(&value, now);
        }

        #[test]
        fn retry_after_round_trips(
            seconds in 0i64..400_000_000,
            now in 0i64..4_102_444_800,
        ) {
            let now = DateTime::from_timestamp(now, 0).unwrap();
            let expected = Some(RetryAfter(Duration::from_secs(seconds as u64)));
            prop_assert_eq!(RetryAfter::parse(&seconds.to_string(), now), expected);
            let date = (now + TimeDelta::seconds(seconds)).format("%a, %d %b %Y %H:%M:%S GMT");
            prop_assert_eq!(RetryAfter::parse(&date.to_string(), now), expected);
        }
    }
}
