//! When a receipt POST is retried, given up or done: a pure function of the
//! attempt's outcome, how many attempts were made, the receipt's age and a
//! random number, so it is tested on a fake clock. Exponential backoff with
//! "equal jitter" (each delay between half and all of the doubled step), so
//! receivers that come back are not hit by every gateway at once, and no
//! delay is ever near zero.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first retry's step.
    pub initial: Duration,
    /// The largest step.
    pub max: Duration,
    /// A receipt is not posted after this age (since its ack was handed to
    /// the sender).
    pub max_age: Duration,
}

/// What one POST came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered with this HTTP status.
    Status(u16),
    /// No answer: connection refused or reset, TLS failure, timeout.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Post again after this delay.
    Retry(Duration),
    /// The receiver refused it for good (3xx, 4xx other than 408 and 429).
    Rejected,
    /// Retryable, but the next attempt would come after `max_age`.
    Expired,
}

impl RetryPolicy {
    /// `attempts` counts this one (1 after the first POST); `age` is now
    /// minus when the receipt was queued; `random` is any uniformly random
    /// number.
    pub fn verdict(&self, attempt: Attempt, attempts: u32, age: Duration, random: u64) -> Verdict {
        match attempt {
            Attempt::Status(200..=299) => return Verdict::Delivered,
            Attempt::Status(408 | 429 | 500..=599) | Attempt::Failed => {}
            Attempt::Status(_) => return Verdict::Rejected,
        }
        let delay = self.delay(attempts, random);
        if age.saturating_add(delay) > self.max_age {
            Verdict::Expired
        } else {
            Verdict::Retry(delay)
        }
    }

    /// The delay before retry number `attempts`: step = initial x 2^(n-1)
    /// capped at `max`, jittered into [step/2, step].
    pub fn delay(&self, attempts: u32, random: u64) -> Duration {
        let shift = attempts.saturating_sub(1).min(32);
        let step = self.initial.saturating_mul(1u32 << shift.min(31)).min(self.max);
        let step_ms = step.as_millis() as u64;
        let half = step_ms / 2;
        Duration::from_millis(step_ms - half + random % (half + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(1000),
            max: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn statuses_are_classified() {
        let p = policy();
        let verdict = |status| p.verdict(Attempt::Status(status), 1, Duration::ZERO, 0);
        for ok in [200, 201, 204, 299] {
            assert_eq!(verdict(ok), Verdict::Delivered, "{ok}");
        }
        for rejected in [301, 302, 400, 401, 403, 404, 410, 413, 422] {
            assert_eq!(verdict(rejected), Verdict::Rejected, "{rejected}");
        }
        for retried in [408, 429, 500, 502, 503, 504, 599] {
            assert!(matches!(verdict(retried), Verdict::Retry(_)), "{retried}");
        }
        assert!(matches!(
            p.verdict(Attempt::Failed, 1, Duration::ZERO, 0),
            Verdict::Retry(_)
        ));
    }

    #[test]
    fn delays_double_within_their_jitter_up_to_the_cap() {
        let p = policy();
        for (attempt, step_ms) in [
            (1, 1000),
            (2, 2000),
            (3, 4000),
            (6, 32_000),
            (7, 60_000),
            (40, 60_000),
        ] {
            let low = p.delay(attempt, 0);
            let high = p.delay(attempt, step_ms / 2);
            assert_eq!(
                low,
                Duration::from_millis(step_ms - step_ms / 2),
                "attempt {attempt}"
            );
            assert_eq!(high, Duration::from_millis(step_ms), "attempt {attempt}");
            for random in [1, 7, 12_345, u64::MAX] {
                let d = p.delay(attempt, random);
                assert!(low <= d && d <= high, "attempt {attempt}: {d:?}");
            }
        }
    }

    /// A receiver that always fails, on a fake clock: retries come at
    /// growing, jittered intervals and stop at `max_age`, never after.
    #[test]
    fn a_failing_receiver_is_retried_until_max_age_on_a_fake_clock() {
        let p = RetryPolicy {
            max_age: Duration::from_secs(300),
            ..policy()
        };
        let mut random = 0x9e37_79b9_7f4a_7c15u64;
        for outcome in [Attempt::Failed, Attempt::Status(503)] {
            let mut now = Duration::ZERO;
            let mut posts = vec![now];
            let mut attempts = 0;
            let expired_at = loop {
                attempts += 1;
                random = random.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                match p.verdict(outcome, attempts, now, random >> 11) {
                    Verdict::Retry(d) => {
                        now += d;
                        posts.push(now);
                    }
                    Verdict::Expired => break now,
                    other => panic!("{other:?}"),
                }
            };
            assert!(expired_at <= p.max_age);
            // The next step (at most `max`) would have passed max_age.
            assert!(expired_at + p.max > p.max_age, "gave up early at {expired_at:?}");
            let gaps: Vec<Duration> = posts.windows(2).map(|w| w[1] - w[0]).collect();
            assert!(gaps[0] >= Duration::from_millis(500) && gaps[0] <= Duration::from_secs(1));
            assert!(gaps
                .iter()
                .all(|g| *g <= p.max && *g >= Duration::from_millis(500)));
            // 1+2+4+8+16+32 s of steps, then 60 s ones: about 9 to 12 posts
            // in 300 s.
            assert!((6..=14).contains(&posts.len()), "{} posts: {gaps:?}", posts.len());
        }
    }

    #[test]
    fn an_old_receipt_is_not_retried() {
        let p = policy();
        assert_eq!(p.verdict(Attempt::Failed, 1, p.max_age, 0), Verdict::Expired);
        // A delivered or rejected one is final whatever its age.
        assert_eq!(
            p.verdict(Attempt::Status(200), 9, p.max_age * 2, 0),
            Verdict::Delivered
        );
        assert_eq!(
            p.verdict(Attempt::Status(404), 9, p.max_age * 2, 0),
            Verdict::Rejected
        );
    }
}
