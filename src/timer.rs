//! A hashed timer wheel for a shard's deadlines: handshake, idle, ack timeout
//! and message expiry. Insert is O(1); firing visits only the slots the clock
//! passed. Cancellation is lazy: the owner checks on expiry whether the timer
//! still matters (a generation or a lookup), which is cheaper than tracking
//! handles for millions of entries.
//!
//! Entries further away than one rotation wait in an overflow map keyed by
//! segment (1/16 of a rotation) and move into the slots once the whole
//! segment fits in the coming rotation. Slots then only hold entries due
//! within one rotation, which keeps `next_deadline` a scan for the first
//! non-empty slot (measured: scanning far entries in place cost 8% of a
//! loaded shard). Overflow entries are kept in fixed-size chunks and moved a
//! segment at a time: a million message expiries in one growing Vec meant
//! multi-megabyte reallocations that stalled a shard for 17 ms.

use std::collections::BTreeMap;

use std::time::{Duration, Instant};

pub struct TimerWheel<T> {
    start: Instant,
    tick: Duration,
    slots: Vec<Vec<(u64, T)>>,
    /// Entries due beyond the current rotation, by segment number, in
    /// chunks of at most `CHUNK` entries.
    later: BTreeMap<u64, Vec<Vec<(u64, T)>>>,
    /// The first tick not yet fired.
    current: u64,
    /// Entries inserted with a deadline already passed: due on the next
    /// `expire`, whatever its time.
    overdue: Vec<T>,
    len: usize,
}

const CHUNK: usize = 4096;
/// Segments per rotation.
const SEGMENTS: u64 = 16;

impl<T> TimerWheel<T> {
    pub fn new(start: Instant, tick: Duration, slot_count: usize) -> Self {
        assert!(slot_count.is_power_of_two() && !tick.is_zero());
        Self {
            start,
            tick,
            slots: (0..slot_count).map(|_| Vec::new()).collect(),
            later: BTreeMap::new(),
            current: 0,
            overdue: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ticks are rounded up so a timer never fires before its deadline.
    fn tick_of(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.start).as_nanos();
        let tick = self.tick.as_nanos();
        nanos.div_ceil(tick) as u64
    }

    fn instant_of(&self, tick: u64) -> Instant {
        self.start + self.tick * u32::try_from(tick).unwrap_or(u32::MAX)
    }

    pub fn insert(&mut self, deadline: Instant, item: T) {
        let tick = self.tick_of(deadline);
        if tick < self.current {
            self.overdue.push(item);
            self.len += 1;
            return;
        }
        self.len += 1;
        self.place(tick, item);
    }

    /// Puts an entry due at `tick` (>= current) in its slot, or in `later`
    /// when that slot will come round again before the tick.
    fn place(&mut self, tick: u64, item: T) {
        let rotation = self.slots.len() as u64;
        if tick >= self.current + rotation {
            let chunks = self.later.entry(tick / self.segment()).or_default();
            match chunks.last_mut() {
                Some(chunk) if chunk.len() < CHUNK => {
                    // A chunk `retain` shrank grows back to CHUNK at once,
                    // never past it.
                    if chunk.len() == chunk.capacity() {
                        chunk.reserve_exact(CHUNK - chunk.len());
                    }
                    chunk.push((tick, item));
                }
                _ => {
                    let mut chunk = Vec::with_capacity(CHUNK);
                    chunk.push((tick, item));
                    chunks.push(chunk);
                }
            }
        } else {
            let mask = rotation - 1;
            self.slots[(tick & mask) as usize].push((tick, item));
        }
    }

    fn segment(&self) -> u64 {
        (self.slots.len() as u64 / SEGMENTS).max(1)
    }

    /// Moves the segments that now fit within one rotation into the slots.
    fn promote(&mut self) {
        let rotation = self.slots.len() as u64;
        let segment = self.segment();
        while let Some(entry) = self.later.first_entry() {
            if (*entry.key() + 1) * segment > self.current + rotation {
                break;
            }
            for (tick, item) in entry.remove().into_iter().flatten() {
                self.place(tick.max(self.current), item);
            }
        }
    }

    /// Moves every entry due at or before `now` into `out`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<T>) {
        self.len -= self.overdue.len();
        out.append(&mut self.overdue);
        let now_tick = self.tick_of(now);
        // A deadline of exactly `now` rounds to `now_tick`, so fire it too.
        let due_tick = if self.instant_of(now_tick) <= now {
            now_tick
        } else {
            now_tick.saturating_sub(1)
        };
        let mask = self.slots.len() as u64 - 1;
        let rotation = self.slots.len() as u64;
        while self.current <= due_tick {
            // After a long sleep only one rotation of slots needs visiting.
            if due_tick - self.current >= rotation {
                // Everything in the slots is due; later rotations are
                // promoted as their turn comes.
                for slot in &mut self.slots {
                    self.len -= slot.len();
                    out.extend(slot.drain(..).map(|(_, item)| item));
                }
                self.current = (due_tick / rotation) * rotation;
                continue;
            }
            if self.current.is_multiple_of(self.segment()) {
                self.promote();
            }
            let slot = &mut self.slots[(self.current & mask) as usize];
            self.len -= slot.len();
            out.extend(slot.drain(..).map(|(_, item)| item));
            if slot.capacity() > 64 {
                slot.shrink_to(8);
            }
            self.current += 1;
        }
    }

    /// Drops the entries `keep` refuses, wherever they wait, and gives back
    /// the memory they held (slots shrink, `later` segments are repacked
    /// into full chunks). Deadlines and order of the rest are unchanged.
    /// Visits every entry: O(len). Returns how many were dropped.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> usize {
        let before = self.len;
        self.overdue.retain(|item| keep(item));
        shrink_to_half_full(&mut self.overdue);
        for slot in &mut self.slots {
            slot.retain(|(_, item)| keep(item));
            shrink_to_half_full(slot);
        }
        self.later.retain(|_, chunks| {
            let mut packed: Vec<Vec<(u64, T)>> = Vec::new();
            for (tick, item) in chunks.drain(..).flatten() {
                if !keep(&item) {
                    continue;
                }
                match packed.last_mut() {
                    Some(chunk) if chunk.len() < CHUNK => chunk.push((tick, item)),
                    _ => {
                        let mut chunk = Vec::with_capacity(CHUNK);
                        chunk.push((tick, item));
                        packed.push(chunk);
                    }
                }
            }
            if let Some(last) = packed.last_mut() {
                last.shrink_to_fit();
            }
            *chunks = packed;
            !chunks.is_empty()
        });
        self.len = self.overdue.len()
            + self.slots.iter().map(Vec::len).sum::<usize>()
            + self.later.values().flatten().map(Vec::len).sum::<usize>();
        before - self.len
    }

    /// When the earliest timer is due, rounded up to its tick.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        if !self.overdue.is_empty() {
            return Some(self.start);
        }
        let mask = self.slots.len() as u64 - 1;
        let rotation = self.slots.len() as u64;
        let in_slots =
            (self.current..self.current + rotation).find(|t| !self.slots[(t & mask) as usize].is_empty());
        let tick = in_slots.or_else(|| {
            let (&segment, _) = self.later.first_key_value()?;
            // Wake when that segment can be promoted.
            Some(
                ((segment + 1) * self.segment())
                    .saturating_sub(rotation)
                    .max(self.current),
            )
        })?;
        Some(self.instant_of(tick))
    }
}

/// Small vectors keep their capacity: a slot refills within a rotation.
fn shrink_to_half_full<E>(entries: &mut Vec<E>) {
    if entries.capacity() > 64 && entries.len() < entries.capacity() / 2 {
        entries.shrink_to(entries.len().max(8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wheel() -> (Instant, TimerWheel<u32>) {
        let start = Instant::now();
        (start, TimerWheel::new(start, Duration::from_millis(10), 16))
    }

    #[test]
    fn fires_at_or_after_the_deadline_never_before() {
        let (start, mut w) = wheel();
        w.insert(start + Duration::from_millis(25), 1);
        let mut out = Vec::new();
        w.expire(start + Duration::from_millis(24), &mut out);
        assert!(out.is_empty());
        w.expire(start + Duration::from_millis(30), &mut out);
        assert_eq!(out, [1]);
        assert!(w.is_empty());
    }

    #[test]
    fn entries_beyond_one_rotation_wait_their_turn() {
        let (start, mut w) = wheel();
        // 16 slots x 10 ms = 160 ms per rotation.
        w.insert(start + Duration::from_millis(500), 7);
        w.insert(start + Duration::from_millis(20), 8);
        let mut out = Vec::new();
        for ms in (0..=490).step_by(10) {
            w.expire(start + Duration::from_millis(ms), &mut out);
        }
        assert_eq!(out, [8]);
        w.expire(start + Duration::from_millis(500), &mut out);
        assert_eq!(out, [8, 7]);
    }

    #[test]
    fn a_long_sleep_fires_everything_due() {
        let (start, mut w) = wheel();
        for i in 0..100 {
            w.insert(start + Duration::from_millis(i * 37), i as u32);
        }
        let mut out = Vec::new();
        w.expire(start + Duration::from_secs(10), &mut out);
        out.sort_unstable();
        assert_eq!(out, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn next_deadline_is_never_late() {
        let (start, mut w) = wheel();
        assert_eq!(w.next_deadline(), None);
        let at = start + Duration::from_millis(1234);
        w.insert(at, 1);
        // It may wake early (to promote a later rotation), never late.
        let mut out = Vec::new();
        while out.is_empty() {
            let next = w.next_deadline().unwrap();
            assert!(next <= at + Duration::from_millis(10), "{next:?} vs {at:?}");
            w.expire(next, &mut out);
        }
        assert_eq!(out, [1]);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn random_deadlines_fire_in_time_whatever_the_wake_pattern() {
        use proptest::prelude::*;
        proptest!(|(deadlines in prop::collection::vec(0u64..5_000, 1..60), steps in prop::collection::vec(1u64..700, 1..40))| {
            let (start, mut w) = wheel();
            for (i, ms) in deadlines.iter().enumerate() {
                w.insert(start + Duration::from_millis(*ms), i as u32);
            }
            let mut now = start;
            let mut fired = vec![false; deadlines.len()];
            let mut out = Vec::new();
            for step in steps.iter().cycle().take(200) {
                now += Duration::from_millis(*step);
                w.expire(now, &mut out);
                for i in out.drain(..) {
                    let due = start + Duration::from_millis(deadlines[i as usize]);
                    prop_assert!(due <= now, "fired early");
                    fired[i as usize] = true;
                }
                for (i, ms) in deadlines.iter().enumerate() {
                    let due = start + Duration::from_millis(*ms) + Duration::from_millis(10);
                    prop_assert!(fired[i] || due > now, "{} due at {}ms not fired by {:?}", i, ms, now - start);
                }
                if now > start + Duration::from_secs(6) {
                    break;
                }
            }
            prop_assert_eq!(w.len(), fired.iter().filter(|f| !**f).count());
        });
    }

    #[test]
    fn past_deadlines_fire_on_the_next_expire() {
        let (start, mut w) = wheel();
        let mut out = Vec::new();
        w.expire(start + Duration::from_millis(100), &mut out);
        w.insert(start, 3);
        w.expire(start + Duration::from_millis(100), &mut out);
        assert_eq!(out, [3]);
    }

    #[test]
    fn retain_drops_refused_entries_wherever_they_wait_and_keeps_the_rest_on_time() {
        let (start, mut w) = wheel();
        let mut out = Vec::new();
        w.expire(start + Duration::from_millis(100), &mut out);
        // Overdue, in the slots (within 160 ms) and in `later`, over
        // several chunks of one segment.
        w.insert(start, 0);
        w.insert(start, 1);
        for i in 2..100u32 {
            w.insert(start + Duration::from_millis(120 + u64::from(i)), i);
        }
        for i in 100..(100 + 3 * CHUNK as u32) {
            w.insert(start + Duration::from_millis(2_000), i);
        }
        let total = w.len();
        let dropped = w.retain(|i| i % 2 == 0);
        assert_eq!(dropped, total / 2);
        assert_eq!(w.len(), total - dropped);
        let packed: Vec<usize> = w.later.values().flatten().map(Vec::len).collect();
        assert_eq!(packed, [CHUNK, CHUNK / 2], "repacked into full chunks");
        let mut fired = Vec::new();
        let first = start + Duration::from_millis(100);
        let mut now = first;
        while now <= start + Duration::from_millis(2_000) {
            w.expire(now, &mut out);
            for i in out.drain(..) {
                let due = match i {
                    0 | 1 => start,
                    2..100 => start + Duration::from_millis(120 + u64::from(i)),
                    _ => start + Duration::from_millis(2_000),
                };
                let late = now - due.max(first);
                assert!(
                    due <= now && late < Duration::from_millis(20),
                    "{i} fired {late:?} late"
                );
                fired.push(i);
            }
            now += Duration::from_millis(10);
        }
        fired.sort_unstable();
        assert_eq!(
            fired,
            (0..(100 + 3 * CHUNK as u32))
                .filter(|i| i % 2 == 0)
                .collect::<Vec<_>>()
        );
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn a_repacked_chunk_grows_back_to_chunk_size_only() {
        let (start, mut w) = wheel();
        for i in 0..10u32 {
            w.insert(start + Duration::from_secs(2), i);
        }
        w.retain(|i| *i < 3);
        for i in 10..(CHUNK as u32 + 10) {
            w.insert(start + Duration::from_secs(2), i);
        }
        let capacities: Vec<usize> = w.later.values().flatten().map(Vec::capacity).collect();
        assert_eq!(capacities, [CHUNK, CHUNK]);
        assert_eq!(w.len(), CHUNK + 3);
    }
}
