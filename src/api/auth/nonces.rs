//! One app's memory of the request nonces it used recently, so that a
//! captured request cannot be replayed while its timestamp is still
//! accepted. Owns expiry and the size bound; knows nothing of HTTP or
//! signatures (a nonce is recorded only after its request verified).
//!
//! A nonce is remembered as a 64-bit keyed hash (SipHash with this process's
//! random key): a replay has the same fingerprint and is always caught; two
//! different nonces sharing one (about 1 in 10^13 at a full cache) only
//! make the app's own later request fail. Entries sit in per-second expiry
//! buckets, so expiry is O(1) per nonce with no scan of the whole set.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use super::MAX_CLOCK_SKEW_MS;

/// Seconds of expiry buckets: more than the longest a nonce is kept
/// (twice the skew, plus rounding), so distinct live seconds never share one.
const BUCKETS: u64 = 1024;
const _: () = assert!(BUCKETS * 1000 > 2 * MAX_CLOCK_SKEW_MS + 2000);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceRefusal {
    /// The nonce was used by an earlier request whose timestamp is still
    /// within the window.
    Replayed,
    /// The cache holds its maximum of unexpired nonces. They are never
    /// dropped early (that would let their requests be replayed), so new
    /// requests are refused until some expire.
    Full,
}

pub struct NonceCache {
    fingerprint_key: RandomState,
    seen: HashSet<u64, BuildHasherDefault<Identity>>,
    /// `buckets[s % BUCKETS]`: the fingerprints that expire at second `s`.
    buckets: Vec<Vec<u64>>,
    /// Every bucket of a second before this one has been emptied.
    swept_until_s: u64,
    capacity: usize,
    /// The accepted clock skew: a nonce is kept until its timestamp is this
    /// far in the past.
    window_ms: u64,
}

impl NonceCache {
    /// A cache for the API's window, `MAX_CLOCK_SKEW_MS`.
    pub fn new(capacity: usize) -> Self {
        Self::with_window(capacity, MAX_CLOCK_SKEW_MS)
    }

    /// A cache for timestamps accepted up to `window_ms` either way (the
    /// device Hello's `device_auth.max_skew_secs`); at most
    /// `MAX_CLOCK_SKEW_MS`, which the expiry buckets are sized for.
    pub fn with_window(capacity: usize, window_ms: u64) -> Self {
        assert!(window_ms <= MAX_CLOCK_SKEW_MS, "nonce window {window_ms} ms");
        Self {
            fingerprint_key: RandomState::new(),
            seen: HashSet::default(),
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            swept_until_s: 0,
            capacity,
            window_ms,
        }
    }

    /// Records `nonce` of a request stamped `timestamp_ms`, which the caller
    /// has checked is within the window of `now_ms`. It is kept until
    /// `now_ms` passes `timestamp_ms` plus the window: past that
    /// the request's timestamp alone refuses it.
    pub fn insert(&mut self, nonce: &[u8], timestamp_ms: u64, now_ms: u64) -> Result<(), NonceRefusal> {
        self.sweep(now_ms / 1000);
        let fingerprint = self.fingerprint_key.hash_one(nonce);
        if self.seen.contains(&fingerprint) {
            return Err(NonceRefusal::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(NonceRefusal::Full);
        }
        // Removed once the clock's second is past this one, i.e. at
        // least a second after the last instant the timestamp is accepted.
        let expires_s = (timestamp_ms + self.window_ms) / 1000 + 1;
        self.seen.insert(fingerprint);
        self.buckets[(expires_s % BUCKETS) as usize].push(fingerprint);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Forgets every nonce that expired before second `now_s`. A clock that
    /// steps back sweeps nothing until it catches up (nonces are kept
    /// longer, never shorter).
    fn sweep(&mut self, now_s: u64) {
        if now_s <= self.swept_until_s {
            return;
        }
        if now_s - self.swept_until_s >= BUCKETS {
            // Every live nonce expires within BUCKETS seconds of its insert,
            // and none was inserted after `swept_until_s`'s second.
            self.seen.clear();
            self.buckets.iter_mut().for_each(|b| *b = Vec::new());
        } else {
            for second in self.swept_until_s..now_s {
                // Taken, not cleared: a burst's bucket would otherwise keep
                // its memory for good.
                for fingerprint in std::mem::take(&mut self.buckets[(second % BUCKETS) as usize]) {
                    self.seen.remove(&fingerprint);
                }
            }
        }
        self.swept_until_s = now_s;
        // After a burst the set would keep its peak table; give most back.
        if self.seen.capacity() > 4 * self.seen.len() + 4096 {
            self.seen.shrink_to(2 * self.seen.len());
        }
    }
}

/// The fingerprints are already keyed SipHash outputs: hashing them again
/// for the set would only cost time.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn a_nonce_is_refused_again_while_its_timestamp_is_accepted() {
        let mut cache = NonceCache::new(100);
        assert_eq!(cache.insert(b"nonce-one", T0, T0), Ok(()));
        assert_eq!(cache.insert(b"nonce-two", T0, T0), Ok(()));
        // Up to the last millisecond at which the timestamp still passes.
        for now in [T0 + 1, T0 + 150_000, T0 + MAX_CLOCK_SKEW_MS] {
            assert_eq!(
                cache.insert(b"nonce-one", T0, now),
                Err(NonceRefusal::Replayed),
                "{now}"
            );
        }
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_nonce_stamped_in_the_future_is_kept_until_that_timestamp_expires() {
        let mut cache = NonceCache::new(100);
        let future = T0 + MAX_CLOCK_SKEW_MS;
        cache.insert(b"ahead-of-us", future, T0).unwrap();
        // 600 s after we saw it, its timestamp is still (just) accepted.
        assert_eq!(
            cache.insert(b"ahead-of-us", future, future + MAX_CLOCK_SKEW_MS),
            Err(NonceRefusal::Replayed)
        );
    }

    #[test]
    fn expired_nonces_are_forgotten_and_free_their_room() {
        let mut cache = NonceCache::new(2);
        cache.insert(b"aaaaaaaa", T0, T0).unwrap();
        cache.insert(b"bbbbbbbb", T0 + 5_000, T0 + 5_000).unwrap();
        assert_eq!(cache.insert(b"cccccccc", T0, T0), Err(NonceRefusal::Full));
        // A replay is reported as such even when the cache is full.
        assert_eq!(cache.insert(b"aaaaaaaa", T0, T0), Err(NonceRefusal::Replayed));
        let later = T0 + MAX_CLOCK_SKEW_MS + 2_000;
        cache.insert(b"cccccccc", later, later).unwrap();
        assert_eq!(cache.len(), 2, "the first nonce expired, the second not yet");
        assert_eq!(
            cache.insert(b"bbbbbbbb", T0 + 5_000, later),
            Err(NonceRefusal::Replayed)
        );
    }

    #[test]
    fn a_full_cache_refuses_rather_than_forgetting() {
        let mut cache = NonceCache::new(1000);
        for i in 0..1000u32 {
            cache
                .insert(format!("nonce-{i:04}").as_bytes(), T0, T0 + u64::from(i))
                .unwrap();
        }
        assert_eq!(
            cache.insert(b"one-too-many", T0, T0 + 1000),
            Err(NonceRefusal::Full)
        );
        for i in 0..1000u32 {
            assert_eq!(
                cache.insert(format!("nonce-{i:04}").as_bytes(), T0, T0 + 2000),
                Err(NonceRefusal::Replayed)
            );
        }
    }

    #[test]
    fn a_clock_jump_forward_clears_and_a_step_back_keeps() {
        let mut cache = NonceCache::new(10);
        cache.insert(b"nonce-one", T0, T0).unwrap();
        // Back 200 s: nothing is swept, the nonce stays.
        assert_eq!(
            cache.insert(b"nonce-one", T0, T0 - 200_000),
            Err(NonceRefusal::Replayed)
        );
        let much_later = T0 + 3_600_000;
        cache.insert(b"nonce-two", much_later, much_later).unwrap();
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn memory_is_given_back_after_a_burst() {
        let mut cache = NonceCache::new(1 << 20);
        for i in 0..100_000u32 {
            cache.insert(&i.to_le_bytes(), T0, T0).unwrap();
        }
        let peak = cache.seen.capacity();
        let later = T0 + MAX_CLOCK_SKEW_MS + 5_000;
        cache.insert(b"after-burst", later, later).unwrap();
        assert_eq!(cache.len(), 1);
        assert!(
            cache.seen.capacity() < peak / 8,
            "{} of {peak}",
            cache.seen.capacity()
        );
    }
}
