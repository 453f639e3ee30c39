//! Per-app API rate limits: one token bucket per app (`apiRatePerSec`,
//! `apiBurst` in `[[apps]]`), charged once per request after the request
//! proved which app sent it, so nobody but the app can spend its budget.
//! A pure function of the clock it is given; answering 429 is `api::mod`'s.

use parking_lot::Mutex;

/// A token bucket: `burst` requests at once, refilled at `rate_per_sec`.
#[derive(Debug)]
pub struct TokenBucket {
    rate_per_sec: u32,
    burst: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Whole and partial requests the bucket holds, in thousandths, so the
    /// refill is exact in integers at millisecond resolution.
    milli_tokens: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// `None` when `rate_per_sec` is 0 (unlimited). Starts full.
    pub fn new(rate_per_sec: u32, burst: u32) -> Option<Self> {
        (rate_per_sec > 0).then(|| Self {
            rate_per_sec,
            burst: burst.max(1),
            state: Mutex::new(State {
                milli_tokens: u64::from(burst.max(1)) * 1000,
                last_ms: 0,
            }),
        })
    }

    pub fn rate_per_sec(&self) -> u32 {
        self.rate_per_sec
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Takes one request's token at `now_ms`, or answers how many
    /// milliseconds until one is there. A clock that steps back refills
    /// nothing.
    pub fn try_take(&self, now_ms: u64) -> Result<(), u64> {
        let mut s = self.state.lock();
        let capacity = u64::from(self.burst) * 1000;
        if s.last_ms == 0 {
            s.last_ms = now_ms;
        }
        let elapsed = now_ms.saturating_sub(s.last_ms);
        // rate × ms = thousandths of a token.
        s.milli_tokens = capacity.min(s.milli_tokens + elapsed.saturating_mul(u64::from(self.rate_per_sec)));
        s.last_ms = s.last_ms.max(now_ms);
        if s.milli_tokens >= 1000 {
            s.milli_tokens -= 1000;
            Ok(())
        } else {
            let missing = 1000 - s.milli_tokens;
            Err(missing.div_ceil(u64::from(self.rate_per_sec)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_767_225_600_000;

    #[test]
    fn a_burst_then_the_rate() {
        let bucket = TokenBucket::new(2, 3).unwrap();
        for _ in 0..3 {
            assert_eq!(bucket.try_take(T0), Ok(()));
        }
        // Empty: one token takes 500 ms at 2/s.
        assert_eq!(bucket.try_take(T0), Err(500));
        assert_eq!(bucket.try_take(T0 + 200), Err(300));
        assert_eq!(bucket.try_take(T0 + 500), Ok(()));
        assert_eq!(bucket.try_take(T0 + 500), Err(500));
        // A long quiet spell refills to the burst, not beyond.
        for _ in 0..3 {
            assert_eq!(bucket.try_take(T0 + 60_000), Ok(()));
        }
        assert!(bucket.try_take(T0 + 60_000).is_err());
    }

    #[test]
    fn refused_requests_do_not_spend() {
        let bucket = TokenBucket::new(1, 1).unwrap();
        assert_eq!(bucket.try_take(T0), Ok(()));
        for ms in 0..10 {
            assert!(bucket.try_take(T0 + ms * 50).is_err());
        }
        assert_eq!(bucket.try_take(T0 + 1000), Ok(()));
    }

    #[test]
    fn the_clock_stepping_back_refills_nothing() {
        let bucket = TokenBucket::new(10, 1).unwrap();
        assert_eq!(bucket.try_take(T0), Ok(()));
        assert!(bucket.try_take(T0 - 10_000).is_err());
        assert!(bucket.try_take(T0 + 50).is_err());
        assert_eq!(bucket.try_take(T0 + 100), Ok(()));
    }

    #[test]
    fn zero_is_unlimited() {
        assert!(TokenBucket::new(0, 5).is_none());
    }
}
