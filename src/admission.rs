//! Admission of device connections by source address, for all shards at
//! once: the total connection cap, the per-address cap, the per-address
//! connect rate (a token bucket whose exhaustion bans the address for a
//! while: "flapping" clients) and the exempt sources. It is a policy, not
//! I/O: the backends ask `admit` with the peer address and the time, and
//! keep the returned `Ticket` with the socket; dropping the ticket (on every
//! close path, a hand-off moves it along) gives the slot back.
//!
//! One table serves every shard because SO_REUSEPORT spreads one address's
//! connections over all of them. It is striped by address hash, each stripe
//! behind its own `parking_lot::Mutex`, so shards rarely contend. The table
//! is bounded (`admission.max_tracked_addresses`): an entry that holds no
//! connection, no ban and a full bucket carries no information and is swept
//! when a stripe fills; if a stripe is still full, addresses it does not
//! track yet are refused (counted) rather than admitted untracked, which
//! would let an attacker with many addresses escape the per-address rules.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::Config;

const STRIPES: usize = 64;
/// A token in the connect bucket, in thousandths (integer arithmetic).
const TOKEN: u64 = 1000;
/// A full stripe is swept at most this often, so a flood of new addresses
/// into a table full of live entries costs one scan per interval, not one
/// per connection.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections` connections are open across all shards.
    TotalCap,
    /// The shard is behind on its API commands (`limits.overload_queue_percent`).
    ShardBusy,
    /// The address holds `admission.max_connections_per_address` already.
    AddressCap,
    /// The address is banned for connecting too fast; this much is left.
    Banned { remaining: Duration },
    /// `admission.max_tracked_addresses` are tracked and none can go.
    TableFull,
}

impl Refusal {
    /// The `reason` label of `ringpush_connections_closed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TotalCap => "max_connections",
            Self::ShardBusy => "shard_busy",
            Self::AddressCap => "address_cap",
            Self::Banned { .. } => "banned",
            Self::TableFull => "admission_table_full",
        }
    }
}

/// An address range, as `a.b.c.d/n` or `x:y::/n` (a bare address is /32 or
/// /128). IPv4 is kept in its IPv4-mapped IPv6 form, like the keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: u128,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let ip: IpAddr = addr.trim().parse().map_err(|e| format!("{e}"))?;
        let (max, offset) = match ip {
            IpAddr::V4(_) => (32u8, 96u8),
            IpAddr::V6(_) => (128, 0),
        };
        let len = match len {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("prefix length {l:?} (allowed 0 ..= {max})"))?,
            None => max,
        };
        let prefix = len + offset;
        Ok(Self {
            net: mask(canonical(ip), prefix),
            prefix,
        })
    }

    fn contains(&self, addr: u128) -> bool {
        mask(addr, self.prefix) == self.net
    }
}

/// The address as 128 bits, IPv4 (and IPv4-mapped IPv6, which dual-stack
/// sockets report) as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(addr: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(prefix)))
    }
}

struct Entry {
    open: u32,
    /// Connect tokens in thousandths, as of `refilled_at`.
    tokens: u64,
    refilled_at: Instant,
    banned_until: Option<Instant>,
}

impl Entry {
    fn refill(&mut self, now: Instant, rate_per_sec: u64, burst: u64) {
        // Shards read their clocks before taking the lock, so `now` may be
        // a little behind the last refill; never count that span twice.
        if now <= self.refilled_at {
            return;
        }
        let elapsed = now - self.refilled_at;
        let earned = (elapsed.as_millis() as u64).saturating_mul(rate_per_sec);
        self.tokens = self.tokens.saturating_add(earned).min(burst);
        // Keep the sub-millisecond rest for the next refill.
        self.refilled_at += Duration::from_millis(elapsed.as_millis() as u64);
    }

    /// Holds nothing a fresh entry would not: no connection, no ban, a
    /// full bucket.
    fn forgettable(&self, now: Instant, rate_per_sec: u64, burst: u64) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let earned = (elapsed.as_millis() as u64).saturating_mul(rate_per_sec);
        self.open == 0
            && self.banned_until.is_none_or(|until| until <= now)
            && self.tokens.saturating_add(earned) >= burst
    }
}

#[derive(Default)]
struct Stripe {
    entries: HashMap<u128, Entry>,
    last_sweep: Option<Instant>,
}

pub struct Admission {
    stripes: Box<[Mutex<Stripe>]>,
    open: AtomicUsize,
    tracked: AtomicUsize,
    // The caps and the connect rate are atomics so that a reload
    // (`set_limits`) changes them for the next accept; relaxed loads, each
    // read once per decision.
    max_connections: AtomicUsize,
    per_address: AtomicU32,
    /// Thousandths of a token per millisecond = tokens per second.
    rate_per_sec: AtomicU64,
    /// In thousandths of a token.
    burst: AtomicU64,
    ban_ms: AtomicU64,
    stripe_capacity: usize,
    ipv6_prefix: u8,
    exempt: Vec<Cidr>,
    metrics: AdmissionMetrics,
}

struct AdmissionMetrics {
    open: metrics::Gauge,
    tracked: metrics::Gauge,
    bans: metrics::Counter,
    sweeps: metrics::Counter,
}

/// Describes the admission metrics for `/metrics` help text.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "ringpush_admission_connections",
        "Device connections holding an admission slot, all shards"
    );
    describe_gauge!(
        "ringpush_admission_addresses",
        "Source addresses (IPv6: prefixes) the admission table tracks"
    );
    describe_counter!(
        "ringpush_admission_bans_total",
        "Source addresses banned for connecting faster than admission.connect_rate_per_sec"
    );
    describe_counter!(
        "ringpush_admission_sweeps_total",
        "Sweeps of a full admission table stripe for forgettable addresses"
    );
}

/// A connection's admission slot; dropping it gives the slot back.
pub struct Ticket {
    admission: Arc<Admission>,
    /// The table key in two halves (a `u128` would be 16-aligned and make
    /// every connection's record 16 bytes larger); `None` for an exempt
    /// source: only the total counts it.
    key: Option<[u64; 2]>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("key", &self.key).finish()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission
            .release(self.key.map(|[hi, lo]| (u128::from(hi) << 64) | u128::from(lo)));
    }
}

impl Admission {
    pub fn new(config: &Config) -> Arc<Self> {
        let a = &config.admission;
        Arc::new(Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(Stripe::default())).collect(),
            open: AtomicUsize::new(0),
            tracked: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(config.limits.max_connections),
            per_address: AtomicU32::new(u32::try_from(a.max_connections_per_address).unwrap_or(u32::MAX)),
            rate_per_sec: AtomicU64::new(u64::from(a.connect_rate_per_sec)),
            burst: AtomicU64::new(u64::from(a.connect_burst) * TOKEN),
            ban_ms: AtomicU64::new(a.ban_secs.saturating_mul(1000)),
            stripe_capacity: a.max_tracked_addresses.div_ceil(STRIPES),
            ipv6_prefix: a.ipv6_prefix_len,
            exempt: a
                .exempt
                .iter()
                .map(|c| Cidr::parse(c).expect("validated with the config"))
                .collect(),
            metrics: AdmissionMetrics {
                open: metrics::gauge!("ringpush_admission_connections"),
                tracked: metrics::gauge!("ringpush_admission_addresses"),
                bans: metrics::counter!("ringpush_admission_bans_total"),
                sweeps: metrics::counter!("ringpush_admission_sweeps_total"),
            },
        })
    }

    /// A reloaded configuration's caps, connect rate and ban
    /// (`limits.max_connections`, `admission.max_connections_per_address`,
    /// `connect_rate_per_sec`, `connect_burst`, `ban_secs`), for the next
    /// decisions; open connections and bans in force stay. The table size,
    /// the IPv6 prefix (it makes the keys) and the exempt list keep their
    /// start values.
    pub fn set_limits(&self, config: &Config) {
        let a = &config.admission;
        self.max_connections
            .store(config.limits.max_connections, Ordering::Relaxed);
        self.per_address.store(
            u32::try_from(a.max_connections_per_address).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
        self.rate_per_sec
            .store(u64::from(a.connect_rate_per_sec), Ordering::Relaxed);
        self.burst
            .store(u64::from(a.connect_burst) * TOKEN, Ordering::Relaxed);
        self.ban_ms
            .store(a.ban_secs.saturating_mul(1000), Ordering::Relaxed);
    }

    fn rate_and_burst(&self) -> (u64, u64) {
        (
            self.rate_per_sec.load(Ordering::Relaxed),
            self.burst.load(Ordering::Relaxed),
        )
    }

    /// Connections holding a slot, all shards.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Addresses tracked.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Acquire)
    }

    /// Open connections from `ip`'s address (or prefix); 0 when untracked
    /// or exempt.
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        let Some(key) = self.key(ip) else { return 0 };
        self.stripe(key).lock().entries.get(&key).map_or(0, |e| e.open)
    }

    /// Decides on a new connection from `ip` at `now`. Every attempt, even
    /// a refused one, spends a connect token: a client that retries at once
    /// on refusal is flapping and gets banned.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, Refusal> {
        let Some(key) = self.key(ip) else {
            self.take_total()?;
            return Ok(Ticket {
                admission: self.clone(),
                key: None,
            });
        };
        let mut stripe = self.stripe(key).lock();
        if !stripe.entries.contains_key(&key) && stripe.entries.len() >= self.stripe_capacity {
            self.sweep(&mut stripe, now);
            if stripe.entries.len() >= self.stripe_capacity {
                return Err(Refusal::TableFull);
            }
        }
        let (rate, burst) = self.rate_and_burst();
        let entry = stripe.entries.entry(key).or_insert_with(|| {
            self.tracked.fetch_add(1, Ordering::AcqRel);
            self.metrics.tracked.increment(1.0);
            Entry {
                open: 0,
                tokens: burst,
                refilled_at: now,
                banned_until: None,
            }
        });
        if let Some(until) = entry.banned_until {
            if until > now {
                return Err(Refusal::Banned {
                    remaining: until - now,
                });
            }
            entry.banned_until = None;
        }
        entry.refill(now, rate, burst);
        if entry.tokens < TOKEN {
            let ban = Duration::from_millis(self.ban_ms.load(Ordering::Relaxed));
            entry.banned_until = Some(now + ban);
            self.metrics.bans.increment(1);
            return Err(Refusal::Banned { remaining: ban });
        }
        entry.tokens -= TOKEN;
        if entry.open >= self.per_address.load(Ordering::Relaxed) {
            return Err(Refusal::AddressCap);
        }
        self.take_total()?;
        entry.open += 1;
        Ok(Ticket {
            admission: self.clone(),
            key: Some([(key >> 64) as u64, key as u64]),
        })
    }

    fn take_total(&self) -> Result<(), Refusal> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_connections.load(Ordering::Relaxed) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TotalCap);
        }
        // Increments, not sets: shards update the gauge concurrently.
        self.metrics.open.increment(1.0);
        Ok(())
    }

    fn release(&self, key: Option<u128>) {
        if let Some(key) = key {
            let mut stripe = self.stripe(key).lock();
            let entry = stripe.entries.get_mut(&key);
            // An entry with open connections is never swept, so a missing
            // one would be a bookkeeping bug; it must not underflow either.
            debug_assert!(
                entry.as_ref().is_some_and(|e| e.open > 0),
                "released an admission slot that was not held"
            );
            if let Some(entry) = entry {
                entry.open = entry.open.saturating_sub(1);
            }
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.open.decrement(1.0);
    }

    fn sweep(&self, stripe: &mut Stripe, now: Instant) {
        if stripe
            .last_sweep
            .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_INTERVAL)
        {
            return;
        }
        stripe.last_sweep = Some(now);
        self.metrics.sweeps.increment(1);
        let (rate, burst) = self.rate_and_burst();
        let before = stripe.entries.len();
        stripe.entries.retain(|_, e| !e.forgettable(now, rate, burst));
        let gone = before - stripe.entries.len();
        self.tracked.fetch_sub(gone, Ordering::AcqRel);
        self.metrics.tracked.decrement(gone as f64);
    }

    /// The table key of `ip`, `None` when exempt.
    fn key(&self, ip: IpAddr) -> Option<u128> {
        let addr = canonical(ip);
        if self.exempt.iter().any(|c| c.contains(addr)) {
            return None;
        }
        let is_v4 = addr >> 32 == 0xFFFF;
        Some(if is_v4 { addr } else { mask(addr, self.ipv6_prefix) })
    }

    fn stripe(&self, key: u128) -> &Mutex<Stripe> {
        // Fibonacci hashing of both halves: adjacent addresses (a /24 of
        // clients) land on different stripes.
        let folded = (key as u64) ^ ((key >> 64) as u64);
        let hash = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.stripes[(hash >> 58) as usize % STRIPES]
    }

    /// Panics unless the per-address counts add up to the total of tracked
    /// tickets.
    #[cfg(test)]
    fn check_invariants(&self, exempt_open: usize) {
        let tracked: usize = self.stripes.iter().map(|s| s.lock().entries.len()).sum();
        assert_eq!(tracked, self.tracked(), "tracked addresses");
        let held: usize = self
            .stripes
            .iter()
            .map(|s| s.lock().entries.values().map(|e| e.open as usize).sum::<usize>())
            .sum();
        assert_eq!(held + exempt_open, self.open(), "open connections");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(extra: &str) -> Config {
        Config::from_toml(&format!("[admission]\nexempt = []\n{extra}")).expect("valid config")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_cap_counts_each_address_alone() {
        let a = Admission::new(&config("max_connections_per_address = 2\n"));
        let now = Instant::now();
        let t1 = a.admit(ip("10.0.0.1"), now).unwrap();
        let _t2 = a.admit(ip("10.0.0.1"), now).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1"), now).unwrap_err(), Refusal::AddressCap);
        let _other = a
            .admit(ip("10.0.0.2"), now)
            .expect("another address is not affected");
        drop(t1);
        let _t3 = a
            .admit(ip("10.0.0.1"), now)
            .expect("a closed connection frees its slot");
        assert_eq!(a.open_from(ip("10.0.0.1")), 2);
        assert_eq!(a.open(), 3);
        a.check_invariants(0);
    }

    #[test]
    fn reloaded_limits_apply_to_the_next_decision() {
        let a = Admission::new(&config(
            "max_connections_per_address = 1
ban_secs = 10
",
        ));
        let now = Instant::now();
        let held = a.admit(ip("10.0.0.1"), now).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1"), now).unwrap_err(), Refusal::AddressCap);
        a.set_limits(&config(
            "max_connections_per_address = 2
connect_burst = 2
ban_secs = 1
",
        ));
        let _second = a.admit(ip("10.0.0.1"), now).expect("the raised cap");
        assert_eq!(a.open_from(ip("10.0.0.1")), 2, "the held slot stays counted");
        // A fresh address gets the new burst (2), then the new ban (1 s).
        let flapper = ip("10.0.0.9");
        drop(a.admit(flapper, now).unwrap());
        drop(a.admit(flapper, now).unwrap());
        assert_eq!(
            a.admit(flapper, now).unwrap_err(),
            Refusal::Banned {
                remaining: Duration::from_secs(1)
            }
        );
        drop(held);
    }

    #[test]
    fn total_cap_holds_across_addresses_and_exempt_sources() {
        let mut c = config("");
        c.limits.max_connections = 3;
        c.admission.exempt = vec!["192.168.0.0/16".into()];
        let a = Admission::new(&c);
        let now = Instant::now();
        let _x = a.admit(ip("192.168.1.1"), now).unwrap();
        let _y = a.admit(ip("10.0.0.1"), now).unwrap();
        let z = a.admit(ip("10.0.0.2"), now).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3"), now).unwrap_err(), Refusal::TotalCap);
        assert_eq!(a.admit(ip("192.168.1.2"), now).unwrap_err(), Refusal::TotalCap);
        drop(z);
        let _w = a.admit(ip("192.168.1.2"), now).unwrap();
        assert_eq!(
            a.open_from(ip("192.168.1.1")),
            0,
            "exempt sources are not tracked"
        );
        a.check_invariants(2);
    }

    #[test]
    fn flapping_bans_until_the_ban_ends_and_refills_at_the_rate() {
        let a = Admission::new(&config(
            "connect_rate_per_sec = 2\nconnect_burst = 3\nban_secs = 10\n",
        ));
        let t0 = Instant::now();
        let flapper = ip("10.0.0.9");
        for _ in 0..3 {
            drop(a.admit(flapper, t0).expect("within the burst"));
        }
        assert_eq!(
            a.admit(flapper, t0).unwrap_err(),
            Refusal::Banned {
                remaining: Duration::from_secs(10)
            }
        );
        assert_eq!(
            a.admit(flapper, t0 + Duration::from_secs(4)).unwrap_err(),
            Refusal::Banned {
                remaining: Duration::from_secs(6)
            }
        );
        let _neighbour = a.admit(ip("10.0.0.10"), t0).expect("a ban is per address");
        // After the ban the bucket has refilled (2/s for 10 s, capped at 3).
        let after = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            drop(a.admit(flapper, after).expect("the ban is over"));
        }
        assert!(matches!(a.admit(flapper, after), Err(Refusal::Banned { .. })));
        // The sustained rate alone is never banned: 2/s for a minute.
        let steady = ip("10.0.0.11");
        for i in 0..120u64 {
            drop(
                a.admit(steady, t0 + Duration::from_millis(500 * i))
                    .expect("at the rate"),
            );
        }
        a.check_invariants(0);
    }

    #[test]
    fn refused_attempts_spend_tokens() {
        let a = Admission::new(&config(
            "max_connections_per_address = 1\nconnect_rate_per_sec = 1\nconnect_burst = 3\n",
        ));
        let now = Instant::now();
        let _held = a.admit(ip("10.0.0.1"), now).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1"), now).unwrap_err(), Refusal::AddressCap);
        assert_eq!(a.admit(ip("10.0.0.1"), now).unwrap_err(), Refusal::AddressCap);
        assert!(matches!(
            a.admit(ip("10.0.0.1"), now),
            Err(Refusal::Banned { .. })
        ));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_addresses() {
        let a = Admission::new(&config(
            "max_tracked_addresses = 64\nconnect_rate_per_sec = 1000\n",
        ));
        let t0 = Instant::now();
        let mut held = Vec::new();
        let mut refused = 0;
        for i in 0..1000u32 {
            match a.admit(IpAddr::V4((0x0A00_0000 + i).into()), t0) {
                Ok(t) => held.push(t),
                Err(Refusal::TableFull) => refused += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        assert!(a.tracked() <= 64, "tracked {}", a.tracked());
        assert!(refused >= 1000 - 64);
        held.clear();
        // Once their connections closed and their buckets refilled, the
        // old addresses make room for new ones.
        let later = t0 + Duration::from_secs(5);
        let fresh = a.admit(ip("11.0.0.1"), later).expect("swept room");
        assert!(a.tracked() <= 64);
        drop(fresh);
        a.check_invariants(0);
    }

    #[test]
    fn ipv6_counts_per_prefix_and_mapped_ipv4_is_ipv4() {
        let a = Admission::new(&config("max_connections_per_address = 1\n"));
        let now = Instant::now();
        let _one = a.admit(ip("2001:db8:1:2::1"), now).unwrap();
        assert_eq!(
            a.admit(ip("2001:db8:1:2::ffff"), now).unwrap_err(),
            Refusal::AddressCap,
            "same /64"
        );
        let _other = a.admit(ip("2001:db8:1:3::1"), now).expect("another /64");
        let _v4 = a.admit(ip("10.1.1.1"), now).unwrap();
        assert_eq!(
            a.admit(ip("::ffff:10.1.1.1"), now).unwrap_err(),
            Refusal::AddressCap
        );
    }

    #[test]
    fn a_ticket_is_small() {
        assert!(std::mem::size_of::<Ticket>() <= 32);
        let a = Admission::new(&config(""));
        let key = a.key(ip("2001:db8:1:2::1")).unwrap();
        let t = a.admit(ip("2001:db8:1:2::1"), Instant::now()).unwrap();
        assert_eq!(t.key, Some([(key >> 64) as u64, key as u64]));
        assert_eq!(a.open_from(ip("2001:db8:1:2::1")), 1);
        drop(t);
        assert_eq!(a.open_from(ip("2001:db8:1:2::1")), 0);
    }

    #[test]
    fn cidrs_parse_and_match() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains(canonical(ip("127.200.3.4"))));
        assert!(!lo.contains(canonical(ip("128.0.0.1"))));
        assert!(Cidr::parse("::1").unwrap().contains(canonical(ip("::1"))));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(canonical(ip("8.8.8.8"))));
        assert!(!Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(canonical(ip("2001:db8::1"))));
        for bad in ["10.0.0.0/33", "fe80::/129", "not-an-ip", "10.0.0.0/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert!(Config::from_toml("[admission]\nexempt = [\"10.0.0.0/99\"]\n").is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit { addr: u8, exempt: bool },
        Release(usize),
        Wait(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, any::<bool>()).prop_map(|(addr, exempt)| Op::Admit { addr, exempt }),
            any::<usize>().prop_map(Op::Release),
            (0u16..3000).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Whatever the order of connects, closes and time, the counts
        /// match the tickets alive, never go negative, and return to zero.
        #[test]
        fn counts_match_tickets_and_return_to_zero(ops in proptest::collection::vec(op(), 1..300)) {
            let mut c = config(
                "max_connections_per_address = 3\nconnect_rate_per_sec = 5\nconnect_burst = 4\nban_secs = 2\nmax_tracked_addresses = 4\n",
            );
            c.limits.max_connections = 8;
            c.admission.exempt = vec!["192.168.0.0/16".into()];
            let a = Admission::new(&c);
            let mut now = Instant::now();
            let mut tickets: Vec<(IpAddr, Ticket)> = Vec::new();
            for op in ops {
                match op {
                    Op::Admit { addr, exempt } => {
                        let ip = if exempt {
                            IpAddr::V4([192, 168, 0, addr].into())
                        } else {
                            IpAddr::V4([10, 0, 0, addr].into())
                        };
                        if let Ok(t) = a.admit(ip, now) {
                            tickets.push((ip, t));
                        }
                    }
                    Op::Release(i) if !tickets.is_empty() => {
                        let i = i % tickets.len();
                        tickets.swap_remove(i);
                    }
                    Op::Release(_) => {}
                    Op::Wait(ms) => now += Duration::from_millis(u64::from(ms)),
                }
                let exempt = tickets.iter().filter(|(ip, _)| ip.to_string().starts_with("192.")).count();
                a.check_invariants(exempt);
                prop_assert!(a.open() <= 8);
                for addr in 0..6u8 {
                    let ip = IpAddr::V4([10, 0, 0, addr].into());
                    let held = tickets.iter().filter(|(t, _)| *t == ip).count();
                    prop_assert_eq!(a.open_from(ip) as usize, held);
                    prop_assert!(held <= 3);
                }
            }
            tickets.clear();
            prop_assert_eq!(a.open(), 0);
            a.check_invariants(0);
        }
    }
}
