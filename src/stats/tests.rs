//! The bucket math, counting, flushing, replay and merging of statistics,
//! without a core: records go through a Vec standing for the log.

use super::*;
use proptest::prelude::*;

const T0: u64 = 1_700_000_000_000 / DAY_MS * DAY_MS; // a UTC midnight

fn limits() -> Limits {
    Limits {
        minute_retention_ms: 48 * HOUR_MS,
        hour_retention_ms: 90 * DAY_MS,
        max_tasks_per_app: 3,
        max_ttl_ms: 72 * HOUR_MS,
        report_window_ms: 7 * DAY_MS,
        reportable_per_device: 4,
    }
}

fn stats() -> ShardStats {
    ShardStats::new(limits(), 0)
}

/// The shard loop's flush and commit; returns the records written.
fn commit(s: &mut ShardStats, log: &mut Vec<Vec<u8>>) {
    s.take_delta(|payload| log.push(payload.to_vec()));
    s.committed(true);
}

fn query(start_ms: u64, end_ms: u64, granularity: Granularity) -> Query {
    Query {
        start_ms,
        end_ms,
        granularity,
        platform: None,
        push_type: None,
        task_id: None,
    }
}

fn counts(c: [u64; EVENTS]) -> Counts {
    Counts(c)
}

#[test]
fn buckets_are_utc_aligned_and_cover_the_range() {
    let starts: Vec<u64> = bucket_starts(T0 + 90_000, T0 + 3 * MINUTE_MS, Granularity::Minute).collect();
    assert_eq!(starts, [T0 + MINUTE_MS, T0 + 2 * MINUTE_MS]);
    assert_eq!(
        bucket_count(T0 + 90_000, T0 + 3 * MINUTE_MS, Granularity::Minute),
        2
    );
    // The end is exclusive: a range ending on a bucket start excludes it.
    assert_eq!(bucket_count(T0, T0 + DAY_MS, Granularity::Hour), 24);
    assert_eq!(bucket_count(T0, T0 + DAY_MS + 1, Granularity::Hour), 25);
    assert_eq!(bucket_count(T0, T0 + 90 * DAY_MS, Granularity::Day), 90);
    // An empty range still names the bucket it is in.
    assert_eq!(bucket_count(T0 + 5, T0 + 5, Granularity::Day), 1);
    assert_eq!(
        bucket_starts(T0 + 5, T0 + 5, Granularity::Day).collect::<Vec<_>>(),
        [T0]
    );
}

#[test]
fn rates_are_shares_of_arrivals() {
    let c = counts([10, 9, 8, 2, 4]);
    assert_eq!(c.open_rate(), 0.25);
    assert_eq!(c.ignore_rate(), 0.5);
    assert_eq!(Counts::default().open_rate(), 0.0);
}

#[test]
fn events_land_in_their_minute_hour_and_day_with_filters() {
    let mut s = stats();
    let mut log = Vec::new();
    let app: Arc<str> = "demo".into();
    let (simple, _) = s.task(&app, 0, PushType::Simple, "", T0, true);
    let (task, created) = s.task(&app, 42, PushType::Broadcast, "news", T0, true);
    assert!(created);
    s.count(simple, 1, Event::Pushed, T0 + 1_000);
    s.count(simple, 1, Event::Succeeded, T0 + 2_000);
    s.count(task, 2, Event::Pushed, T0 + 3_000);
    // The next minute, and the next hour.
    s.count(simple, 1, Event::Arrived, T0 + MINUTE_MS + 5);
    s.count(task, 2, Event::Arrived, T0 + HOUR_MS + 7);
    commit(&mut s, &mut log);

    let minutes = s.series("demo", &query(T0, T0 + 2 * MINUTE_MS, Granularity::Minute));
    assert_eq!(
        minutes,
        [
            (T0, counts([2, 1, 0, 0, 0])),
            (T0 + MINUTE_MS, counts([0, 0, 1, 0, 0]))
        ]
    );
    let hours = s.series("demo", &query(T0, T0 + DAY_MS, Granularity::Hour));
    assert_eq!(
        hours,
        [
            (T0, counts([2, 1, 1, 0, 0])),
            (T0 + HOUR_MS, counts([0, 0, 1, 0, 0]))
        ]
    );
    let days = s.series("demo", &query(T0, T0 + DAY_MS, Granularity::Day));
    assert_eq!(days, [(T0, counts([2, 1, 2, 0, 0]))]);

    let ios = Query {
        platform: Some(2),
        ..query(T0, T0 + DAY_MS, Granularity::Day)
    };
    assert_eq!(s.series("demo", &ios), [(T0, counts([1, 0, 1, 0, 0]))]);
    let simple_only = Query {
        push_type: Some(PushType::Simple),
        ..query(T0, T0 + DAY_MS, Granularity::Day)
    };
    assert_eq!(s.series("demo", &simple_only), [(T0, counts([1, 1, 1, 0, 0]))]);
    let by_task = Query {
        task_id: Some(42),
        ..query(T0, T0 + DAY_MS, Granularity::Hour)
    };
    assert_eq!(
        s.series("demo", &by_task),
        [
            (T0, counts([1, 0, 0, 0, 0])),
            (T0 + HOUR_MS, counts([0, 0, 1, 0, 0]))
        ]
    );
    assert!(s
        .series("other", &query(T0, T0 + DAY_MS, Granularity::Day))
        .is_empty());
    // Outside the range: nothing.
    assert!(s
        .series("demo", &query(T0 + DAY_MS, T0 + 2 * DAY_MS, Granularity::Hour))
        .is_empty());

    let report = s.task_report("demo", 42).unwrap();
    assert_eq!(
        (&*report.name, report.push_type, report.created_ms),
        ("news", PushType::Broadcast, T0)
    );
    assert_eq!(report.counts, counts([1, 0, 1, 0, 0]));
    assert_eq!(report.last_arrived_ms, T0 + HOUR_MS + 7);
    assert_eq!(s.tasks_of("demo", T0, T0 + 1).len(), 1);
    assert!(s.tasks_of("demo", T0 + 1, T0 + 2).is_empty());
}

#[test]
fn counts_not_yet_in_the_log_are_answered_and_dropped_if_the_log_refuses_them() {
    let mut s = stats();
    let app: Arc<str> = "demo".into();
    let (task, _) = s.task(&app, 0, PushType::Simple, "", T0, true);
    s.count(task, 1, Event::Pushed, T0);
    let day = query(T0, T0 + DAY_MS, Granularity::Day);
    assert_eq!(s.series("demo", &day), [(T0, counts([1, 0, 0, 0, 0]))]);
    let mut log = Vec::new();
    s.take_delta(|p| log.push(p.to_vec()));
    assert_eq!(log.len(), 1);
    s.committed(false);
    assert!(s.series("demo", &day).is_empty(), "withdrawn with its messages");
    assert!(!s.has_unflushed());
}

/// A device's ring of acknowledged messages.
#[derive(Default)]
struct Ring {
    entries: Vec<Reportable>,
    next: u8,
}

impl Ring {
    fn acked(&mut self, s: &ShardStats, task: TaskRef, id: u64, at_ms: u64) -> bool {
        let entry = s.reportable(task, id, at_ms);
        remember(&mut self.entries, &mut self.next, 4, entry)
    }

    fn report(&mut self, s: &mut ShardStats, id: u64, event: Event, at_ms: u64) -> ReportOutcome {
        match self.entries.iter_mut().find(|r| r.message_id == id) {
            Some(entry) => s.report(entry, event, ("demo", "tok", 1), at_ms),
            None => ReportOutcome::Unknown,
        }
    }
}

#[test]
fn a_report_counts_once_and_only_for_an_acknowledged_message() {
    let mut s = stats();
    let mut log = Vec::new();
    let app: Arc<str> = "demo".into();
    let (task, _) = s.task(&app, 7, PushType::Multiple, "batch", T0, true);
    let mut ring = Ring::default();
    ring.acked(&s, task, 1, T0);
    assert_eq!(ring.report(&mut s, 2, Event::Opened, T0), ReportOutcome::Unknown);
    assert_eq!(
        ring.report(&mut s, 1, Event::Opened, T0 + 5),
        ReportOutcome::Counted
    );
    assert_eq!(
        ring.report(&mut s, 1, Event::Opened, T0 + 6),
        ReportOutcome::Duplicate
    );
    assert_eq!(
        ring.report(&mut s, 1, Event::Ignored, T0 + 7),
        ReportOutcome::Duplicate
    );
    ring.acked(&s, task, 3, T0);
    assert_eq!(
        ring.report(&mut s, 3, Event::Ignored, T0 + 8),
        ReportOutcome::Counted
    );
    commit(&mut s, &mut log);
    assert_eq!(s.task_report("demo", 7).unwrap().counts, counts([0, 0, 0, 1, 1]));
    // Past the report window a message can no longer be reported.
    ring.acked(&s, task, 4, T0);
    assert_eq!(
        ring.report(&mut s, 4, Event::Opened, T0 + 7 * DAY_MS + 2 * MINUTE_MS),
        ReportOutcome::Unknown
    );
    // The delta carries the reports by token and message id.
    let reports: Vec<(String, u64, u8)> = log
        .iter()
        .filter_map(|r| match Record::decode(r) {
            Ok(Record::Delta { reports, .. }) => Some(reports),
            _ => None,
        })
        .flatten()
        .map(|(t, id, c)| (t.to_string(), id, c))
        .collect();
    assert_eq!(reports, [("tok".to_string(), 1, 1), ("tok".to_string(), 3, 2)]);
}

#[test]
fn a_device_remembers_its_last_acknowledged_messages() {
    let s = stats();
    let app: Arc<str> = "demo".into();
    let mut s = s;
    let (task, _) = s.task(&app, 0, PushType::Simple, "", T0, true);
    let mut ring = Ring::default();
    let forgot: Vec<bool> = (0..6).map(|id| ring.acked(&s, task, id, T0)).collect();
    assert_eq!(forgot, [false, false, false, false, true, true]);
    assert_eq!(
        ring.report(&mut s, 0, Event::Opened, T0),
        ReportOutcome::Unknown,
        "the oldest went first"
    );
    assert_eq!(ring.report(&mut s, 5, Event::Opened, T0), ReportOutcome::Counted);
    let ids: Vec<u64> = oldest_first(&ring.entries, ring.next)
        .map(|r| r.message_id)
        .collect();
    assert_eq!(ids, [2, 3, 4, 5]);
    // A reported entry overwritten is no loss.
    ring.acked(&s, task, 6, T0);
    ring.acked(&s, task, 7, T0);
    ring.acked(&s, task, 8, T0);
    assert!(!ring.acked(&s, task, 9, T0), "5 was reported");
}

#[test]
fn tasks_are_evicted_oldest_first_only_after_the_longest_ttl() {
    let mut s = stats();
    let app: Arc<str> = "demo".into();
    for id in 1..=3 {
        assert!(s.task(&app, id, PushType::Group, "g", T0 + id, true).1);
    }
    // A fourth, young: the others may still have queued messages.
    let (untracked, created) = s.task(&app, 4, PushType::Group, "g", T0 + 10, true);
    assert!(!created);
    assert_eq!(s.describe(untracked), (0, PushType::Group));
    assert_eq!(s.tasks_of("demo", 0, u64::MAX).len(), 3);
    // Once the oldest is past the longest TTL it makes room.
    let later = T0 + 72 * HOUR_MS + 1;
    assert!(s.task(&app, 5, PushType::Group, "g", later, true).1);
    let ids: Vec<u64> = s
        .tasks_of("demo", 0, u64::MAX)
        .iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(ids, [2, 3, 5]);
    assert!(s.task_report("demo", 1).is_none());
}

#[test]
fn retention_drops_old_minutes_hours_and_tasks() {
    let mut s = stats();
    let mut log = Vec::new();
    let app: Arc<str> = "demo".into();
    let (task, _) = s.task(&app, 9, PushType::Broadcast, "b", T0, true);
    s.count(task, 1, Event::Pushed, T0);
    commit(&mut s, &mut log);
    s.prune(T0 + 48 * HOUR_MS + MINUTE_MS);
    assert!(s
        .series("demo", &query(T0, T0 + MINUTE_MS, Granularity::Minute))
        .is_empty());
    assert_eq!(
        s.series("demo", &query(T0, T0 + HOUR_MS, Granularity::Hour))
            .len(),
        1
    );
    s.prune(T0 + 90 * DAY_MS + HOUR_MS);
    assert!(s
        .series("demo", &query(T0, T0 + HOUR_MS, Granularity::Hour))
        .is_empty());
    assert!(s.task_report("demo", 9).is_none());
}

/// Plays the same events into a stats, flushing after each step, and
/// returns it with its log.
fn played() -> (ShardStats, Vec<Vec<u8>>) {
    let mut s = stats();
    let mut log = Vec::new();
    let app: Arc<str> = "demo".into();
    let (task, created) = s.task(&app, 11, PushType::Multiple, "batch", T0, true);
    assert!(created);
    log.push(s.task_record(task));
    let (user, _) = s.task(&app, 0, PushType::User, "", T0, true);
    for i in 0..5u64 {
        s.count(task, 1, Event::Pushed, T0 + i * 20 * MINUTE_MS);
        s.count(user, 7, Event::Pushed, T0 + i * 20 * MINUTE_MS);
        s.count(task, 1, Event::Succeeded, T0 + i * 20 * MINUTE_MS + 1);
        s.count(task, 1, Event::Arrived, T0 + i * 20 * MINUTE_MS + 2);
        commit(&mut s, &mut log);
    }
    let mut ring = Ring::default();
    ring.acked(&s, task, 0, T0);
    ring.acked(&s, task, 1, T0);
    ring.report(&mut s, 0, Event::Opened, T0 + 2 * HOUR_MS);
    ring.report(&mut s, 1, Event::Ignored, T0 + 2 * HOUR_MS);
    commit(&mut s, &mut log);
    (s, log)
}

fn same_answers(a: &mut ShardStats, b: &mut ShardStats) {
    for g in [Granularity::Minute, Granularity::Hour, Granularity::Day] {
        let q = query(T0, T0 + DAY_MS, g);
        assert_eq!(a.series("demo", &q), b.series("demo", &q), "{g:?}");
    }
    let q = Query {
        task_id: Some(11),
        ..query(T0, T0 + DAY_MS, Granularity::Hour)
    };
    assert_eq!(a.series("demo", &q), b.series("demo", &q));
    assert_eq!(a.tasks_of("demo", 0, u64::MAX), b.tasks_of("demo", 0, u64::MAX));
}

#[test]
fn replaying_the_log_gives_the_same_counts() {
    let (mut live, log) = played();
    let report = live.task_report("demo", 11).unwrap();
    assert_eq!(report.counts, counts([5, 5, 5, 1, 1]));
    let mut replayed = stats();
    let mut reports = Vec::new();
    for record in &log {
        if let ForDevices::Reports(r) = replayed.replay(record).unwrap() {
            reports.extend(r.into_iter().map(|(t, id, c)| (t.to_string(), id, c)));
        }
    }
    assert_eq!(
        reports,
        [("tok".to_string(), 0, 1), ("tok".to_string(), 1, 2)],
        "for the devices"
    );
    same_answers(&mut live, &mut replayed);
}

#[test]
fn a_snapshot_restates_everything_and_replaces_what_came_before() {
    let (live, log) = played();
    let mut snapshot = Vec::new();
    live.write_snapshot(|p| snapshot.push(p.to_vec()));
    // Alone (older segments deleted).
    let mut restored = stats();
    for record in &snapshot {
        restored.replay(record).unwrap();
    }
    same_answers(&mut played().0, &mut restored);
    // After the history it restates (a crash before the older segments
    // were deleted): no double counting.
    let mut both = stats();
    for record in log.iter().chain(&snapshot) {
        both.replay(record).unwrap();
    }
    same_answers(&mut played().0, &mut both);
    // Cut short (a crash during the checkpoint): the history stands.
    let mut cut = stats();
    for record in log.iter().chain(&snapshot[..snapshot.len() - 1]) {
        cut.replay(record).unwrap();
    }
    assert_eq!(
        cut.task_report("demo", 11).unwrap().counts,
        counts([5, 5, 5, 1, 1])
    );
}

#[test]
fn merging_sums_shards_and_fills_empty_buckets() {
    let q = query(T0, T0 + 3 * HOUR_MS, Granularity::Hour);
    let merged = merge_series(
        &q,
        [
            vec![(T0, counts([1, 1, 1, 0, 0]))],
            vec![
                (T0, counts([2, 0, 0, 0, 0])),
                (T0 + 2 * HOUR_MS, counts([0, 0, 0, 1, 0])),
            ],
        ],
    );
    assert_eq!(
        merged,
        [
            (T0, counts([3, 1, 1, 0, 0])),
            (T0 + HOUR_MS, Counts::default()),
            (T0 + 2 * HOUR_MS, counts([0, 0, 0, 1, 0])),
        ]
    );
    let task = |id, created_ms, last_arrived_ms, c| TaskReport {
        task_id: id,
        name: "n".into(),
        push_type: PushType::Broadcast,
        created_ms,
        last_arrived_ms,
        counts: counts(c),
    };
    let tasks = merge_tasks([
        vec![task(1, 5, 9, [1, 1, 1, 0, 0]), task(2, 6, 0, [1, 0, 0, 0, 0])],
        vec![task(1, 4, 7, [2, 2, 1, 1, 0])],
    ]);
    assert_eq!(
        tasks,
        [task(2, 6, 0, [1, 0, 0, 0, 0]), task(1, 4, 9, [3, 3, 2, 1, 0])]
    );
}

#[test]
fn every_record_round_trips() {
    let spill = Spill {
        app: 0,
        push_type: PushType::User,
        task_id: 3,
        minute: 99,
        slot: 2,
        counts: [1, 2, 3, 4, 5],
        last_arrived_ms: 77,
    };
    let records = [
        Record::Task(record::TaskDef {
            app: "a",
            push_type: PushType::Group,
            task_id: 1,
            name: "任务",
            created_ms: 2,
        }),
        Record::Delta {
            spills: vec![("a", spill)],
            reports: vec![("tok", 5, 1), ("tok", 6, 2)],
        },
        Record::SnapshotBegin,
        Record::Buckets {
            app: "a",
            hourly: true,
            buckets: vec![record::Bucket {
                time: 4,
                slot: 1,
                push_type: PushType::Template,
                counts: counts([1, 2, 3, 4, 5]),
            }],
        },
        Record::TaskState(record::TaskState {
            app: "a",
            push_type: PushType::Multiple,
            task_id: 8,
            name: "n",
            created_ms: 9,
            last_arrived_ms: 10,
            totals: [counts([1, 0, 0, 0, 0]); PLATFORM_SLOTS],
            hours: vec![HourPoint {
                hour: 3,
                slot: 0,
                counts: counts([0, 1, 0, 0, 0]),
            }],
        }),
        Record::SnapshotEnd,
        Record::Reportables {
            devices: vec![(
                "tok",
                vec![Reportable {
                    message_id: 1,
                    task_id: 0,
                    push_type: PushType::Simple,
                    reported: 2,
                    acked_minute: 3,
                }],
            )],
        },
    ];
    for r in records {
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(Record::decode(&out).unwrap(), r);
        assert!(Record::decode(&out[..out.len() - 1]).is_err() || out.len() == 1);
    }
}

proptest! {
    #[test]
    fn decoding_garbage_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = Record::decode(&payload);
    }

    #[test]
    fn counting_in_any_order_sums_to_the_events(events in proptest::collection::vec((0u64..3 * DAY_MS, 0usize..5, prop_oneof![Just(1u8), Just(2), Just(7)]), 0..200)) {
        let mut s = stats();
        let mut log = Vec::new();
        let app: Arc<str> = "demo".into();
        let (task, _) = s.task(&app, 5, PushType::Broadcast, "b", T0, true);
        let kinds = [Event::Pushed, Event::Succeeded, Event::Arrived, Event::Opened, Event::Ignored];
        let mut sorted = events.clone();
        sorted.sort_unstable();
        let mut want = Counts::default();
        for &(at, kind, platform) in &sorted {
            s.count(task, platform, kinds[kind], T0 + at);
            want.0[kind] += 1;
            if at % 3 == 0 {
                commit(&mut s, &mut log);
            }
        }
        commit(&mut s, &mut log);
        let days = merge_series(&query(T0, T0 + 3 * DAY_MS, Granularity::Day), [s.series("demo", &query(T0, T0 + 3 * DAY_MS, Granularity::Day))]);
        let mut total = Counts::default();
        for (_, c) in &days {
            total.add(c);
        }
        prop_assert_eq!(total, want);
        prop_assert_eq!(s.task_report("demo", 5).unwrap().counts, want);
        let minutes: u64 = s.series("demo", &query(T0, T0 + 2 * DAY_MS, Granularity::Minute)).iter().map(|(_, c)| c.0.iter().sum::<u64>()).sum();
        let early: u64 = sorted.iter().filter(|e| e.0 < 2 * DAY_MS).count() as u64;
        prop_assert_eq!(minutes, early);
    }
}
